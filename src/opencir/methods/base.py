"""The method interface every CIR method implements, and the method registry.

Data flows one way (architecture.md): images/texts -> backbone features -> method ->
L2-normalised query and target embeddings. A method splits its work in cacheable steps:

* ``encode_images(pixels, masks)`` -> ``Features`` (what the method needs of an image);
  cached per image id by the trainer/evaluator when ``requirements.image_encoder_frozen``;
* ``encode_texts(texts)`` -> ``Features``; cached per string when ``text_encoder_frozen``;
* ``compose(reference, text)`` -> (B, D) normalised query embeddings;
* ``embed_targets(target)`` -> (B, D) normalised gallery embeddings;
* ``loss(batch)`` -> dict of named scalar tensors with the total under ``"loss"``.

The encoder API on top of these steps, for vectors out (``methods.encoder``):
``model.preprocess`` (PIL image -> tensor, the method's own preprocessing),
``model.encode_gallery(images)`` and ``model.encode_queries(images, texts)`` -> float32
numpy, L2-normalised, in input order, equal to what ``opencir index`` stores.

Trainable methods whose config derives from ``ContrastiveConfig`` pick their in-batch
contrastive loss by name (``loss: infonce`` or ``loss: nsfse``, see ``opencir.losses``)
and call ``self.contrastive_loss(query, target, scale)``.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones import ClipBackbone
from ..data.captions import apply_caption_policy
from ..data.transforms import ImageTransform, build_transform
from ..losses import ContrastiveLoss, LossOutput, build_loss, info_nce, validate_loss_options
from ..registry import Registry

if TYPE_CHECKING:
    from ..data.types import CIRDataset, Triplet
    from ..retrieval.catalogue import Catalogue
    from .encoder import ImageInput

Features = dict[str, torch.Tensor]
"""Named per-sample tensors; the first dimension is the batch."""


@dataclass(frozen=True)
class Requirements:
    """What a method needs from the data pipeline and the trainer."""

    train_data: Literal["triplets", "images"] = "triplets"
    image_encoder_frozen: bool = False
    text_encoder_frozen: bool = False
    needs_masks: bool = False
    image_transform: str = "clip"
    train_image_transform: str | None = None
    caption_policy: str | None = None
    """Overrides the dataset's caption policy for multi-caption benchmarks (FashionIQ)."""


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameter dataclass (JSON/YAML serialisable)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MethodConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


@dataclass
class ContrastiveConfig(MethodConfig):
    """Base config of methods trained with an in-batch contrastive loss chosen by name:
    ``loss`` is a key of ``opencir.losses.LOSSES``, ``loss_options`` that loss's options.
    Saved configs without these keys load with the defaults (plain InfoNCE)."""

    loss: str = "infonce"
    loss_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_loss_options(self.loss, self.loss_options)


class CIRMethod(nn.Module):
    """Base class: subclasses set ``name`` and ``config_class`` and implement the steps."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    checkpoint_format: ClassVar[str] = ""
    """A short tag stored in saved model dirs, checked on load."""
    official_quick_gelu: ClassVar[bool | None] = None
    """Activation of the CLIP the official code runs: True = OpenAI CLIP (QuickGELU),
    False = OpenCLIP/LAION (exact GELU), None = no official checkpoints. Official
    checkpoints get this activation (``official.match_official_activation``)."""
    official_arch: ClassVar[str] = ""
    """The backbone of the released checkpoints (``opencir import-checkpoint`` default)."""

    def __init__(self, backbone: ClipBackbone, config: MethodConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        # The loss is a submodule: stateful losses (nsfse's EMA) are saved with the model.
        self.criterion: ContrastiveLoss | None = (
            build_loss(config.loss, config.loss_options) if isinstance(config, ContrastiveConfig) else None
        )

    # ------------------------------------------------------------- contract
    def query_text(self, dataset: "CIRDataset", triplet: "Triplet", train: bool, rng: random.Random) -> str:
        """The text fed to ``encode_texts`` for a query: the dataset's caption policy, or the
        method's own policy for multi-caption benchmarks (FashionIQ, spec 1.7)."""
        policy = self.requirements.caption_policy
        if policy is None or len(triplet.captions) < 2:
            policy = dataset.caption_policy
        return apply_caption_policy(policy, triplet.captions, train, rng)

    @property
    def requirements(self) -> Requirements:
        return Requirements()

    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """Default: pooled, raw (unnormalised) backbone features under key ``"pooled"``."""
        return {"pooled": self.backbone.encode_image(pixels)}

    def encode_texts(self, texts: Sequence[str]) -> Features:
        """Default: pooled, raw backbone text features under key ``"pooled"``."""
        device = next(self.backbone.parameters()).device
        return {"pooled": self.backbone.encode_text(self.backbone.tokenize(list(texts)).to(device))}

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        raise NotImplementedError

    def embed_targets(self, target: Features) -> torch.Tensor:
        """Default: L2-normalised pooled image feature."""
        return nn.functional.normalize(target["pooled"].float(), dim=-1)

    def loss(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        """Training losses for a batch with keys ``reference``, ``text``, ``target``."""
        raise NotImplementedError(f"method {self.name!r} has no training loss (it is not trainable)")

    def contrastive_loss(self, query: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor) -> LossOutput:
        """The configured contrastive loss on normalised (B, D) query/target rows (row i is
        the positive pair); in-batch InfoNCE when the config has no ``loss`` field."""
        if self.criterion is None:
            loss = in_batch_cross_entropy(query, target, scale)
            return LossOutput(loss, {"infonce": loss.detach()})
        return self.criterion(query, target, scale)

    # --------------------------------------------------------- encoder API
    def image_preprocessing(self, train: bool = False) -> tuple[str, ImageTransform]:
        """The (name, callable) preprocessing this method asks for, at its backbone's size."""
        req = self.requirements
        name = (req.train_image_transform or req.image_transform) if train else req.image_transform
        b = self.backbone
        return name, build_transform(name, b.image_size, b.image_mean, b.image_std)

    @property
    def preprocess(self) -> ImageTransform:
        """The evaluation preprocessing: ``PIL.Image -> Tensor(3, S, S)`` (as open_clip's)."""
        return self.image_preprocessing()[1]

    def encode_gallery(self, images: Sequence["ImageInput"], *, masks: Sequence["ImageInput | None"] | None = None,
                       catalogue: "Catalogue | None" = None, batch_size: int = 32,
                       device: torch.device | str | None = None, progress: bool = False,
                       convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Gallery vectors (N, D) float32, L2-normalised, in input order: what ``opencir index``
        stores. ``images``: paths, PIL images, or ids of ``catalogue``; ``masks`` for methods
        that need them; ``device`` moves the model there; ``convert_to_numpy=False`` -> tensor."""
        from .encoder import encode_gallery

        return encode_gallery(self, images, masks=masks, catalogue=catalogue, batch_size=batch_size, device=device,
                              progress=progress, convert_to_numpy=convert_to_numpy)

    def encode_queries(self, images: Sequence["ImageInput"], texts: Sequence[str], *,
                       masks: Sequence["ImageInput | None"] | None = None, catalogue: "Catalogue | None" = None,
                       batch_size: int = 32, device: torch.device | str | None = None, progress: bool = False,
                       convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Composed query vectors (N, D) of (reference image i, modification text i), float32,
        L2-normalised, in input order: what ``Retriever`` searches with. Arguments as for
        ``encode_gallery``."""
        from .encoder import encode_queries

        return encode_queries(self, images, texts, masks=masks, catalogue=catalogue, batch_size=batch_size,
                              device=device, progress=progress, convert_to_numpy=convert_to_numpy)

    # ----------------------------------------------------------- the Hub
    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | torch.device = "cpu", revision: str | None = None,
                        token: str | bool | None = None, cache_dir: str | None = None,
                        local_files_only: bool = False) -> "CIRMethod":
        """A saved model from a directory, ``org/name`` or ``hf-hub:org/name`` on the Hugging
        Face Hub (cache, ``HF_HUB_OFFLINE``, revision and token as huggingface_hub has them).
        On a method class (``Clip4Cir.from_pretrained``) a model of another method is refused."""
        from .hub import load_model

        return load_model(name_or_path, device=device, expected_method=cls.name or None, revision=revision,
                          token=token, cache_dir=cache_dir, local_files_only=local_files_only, bare_repo_ids=True)

    def save_pretrained(self, directory: str, card: Any = None) -> Any:
        """Write a self-contained model directory (weights, config.json, README.md model card)."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, card)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model to the Hub repo ``repo_id`` in one commit (see ``methods.hub.push_to_hub``)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------ training
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters that receive gradients, honouring frozen encoders."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; methods with per-part rates override this."""
        params = [p for _, p in self.trainable_parameters()]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def train(self, mode: bool = True) -> "CIRMethod":
        super().train(mode)
        # Frozen encoders stay in eval mode (frozen BN statistics, no dropout).
        req = self.requirements
        if req.image_encoder_frozen and req.text_encoder_frozen:
            self.backbone.eval()
        return self

    # ------------------------------------------------------ official weights
    @classmethod
    def official_config(cls, paths: Sequence[str | Path]) -> dict[str, Any]:
        """Method-config keys a set of released checkpoint files implies (e.g. CLIP4Cir's
        Combiner file means ``stage: combiner``); default none."""
        return {}

    def import_official(self, paths: Sequence[str | Path]) -> dict[str, Any]:
        """Load released official checkpoint files into this model, one report per file
        (``opencir import-checkpoint``). Methods without official checkpoints refuse."""
        loader = getattr(self, "load_official_checkpoint", None)
        if loader is None:
            raise ValueError(f"method {self.name!r} has no official checkpoint format to import")
        return {str(path): loader(path) for path in paths}

    def freeze_backbone(self, image: bool, text: bool) -> None:
        """Stop gradients into the image tower and/or the text tower."""
        visual = self.backbone.model.visual
        visual_ids = {id(p) for p in visual.parameters()}
        for p in self.backbone.parameters():
            if id(p) in visual_ids:
                p.requires_grad_(not image)
            elif p is not self.backbone.model.logit_scale:
                p.requires_grad_(not text)
        self.backbone.model.logit_scale.requires_grad_(False)


METHODS: Registry[type[CIRMethod]] = Registry("method")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2 normalisation along the last dimension (float32)."""
    return nn.functional.normalize(x.float(), dim=-1)


def in_batch_cross_entropy(query: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """CE(scale * Q T^T, diag) for normalised (B, D) query and target rows (spec 1.4)."""
    return info_nce(query @ target.t(), scale)
