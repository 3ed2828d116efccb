"""TG-CIR (Wen et al., ACM MM 2023): target-guided composition with attribute tokens.

Spec section 3 (and 1.2-1.5). Every image and text becomes K = P + Q attribute tokens of
width D (the CLIP joint width, 512 for ViT-B/16):

* P **global** tokens: the pooled CLIP feature times ReLU(mask row p) of a mask table
  shared by images and texts (row p starts at 0.1 with 1.0 on the p-th block of D/P
  channels);
* Q **local** tokens: a shared TokenLearner over projected token features (image: ViT
  tokens *before* ``ln_post``, CLS included; text: all ``ln_final`` rows, padding
  included). Each head is the **mean** over L of sigmoid-gated tokens.

The *target-free student* mixes reference and text tokens with one gate per token
(alpha, 1 - alpha); the query is norm(mean_k s_k). The *target-based teacher* (training
only) sees the target: beta = MLP([sg(r); t]), gamma = MLP([sg(m); t]) (reference and
text detached, target not). Losses (spec 3.4): student and teacher in-batch
classification with a learnable scale (init 10, unclamped), gate consistency, orthogonal
regularisation, gate distillation (teacher gates detached) and the target-similarity-
guided KL matching-degree regulariser (teacher distribution detached, spec 1.5).

Official checkpoints (``VCG_CIR`` state dicts, or the whole pickled module that the
official ``train.py`` writes as ``best_model.pt``) load with ``load_official_checkpoint``.
"""
from __future__ import annotations

import re
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import ClipBackbone
from ..data.captions import spelling_corrected_text
from ..losses import batch_gather
from .base import METHODS, CIRMethod, ContrastiveConfig, Features, Requirements, in_batch_cross_entropy, normalize
from .official import describe_foreign_checkpoint, match_official_activation, read_official_state_dict

if TYPE_CHECKING:
    from ..data.types import CIRDataset, Triplet


@dataclass
class TgCirConfig(ContrastiveConfig):
    """TG-CIR hyper-parameters. Defaults: the official FashionIQ command (spec 3.4-3.5).

    Official argument names: ``global_tokens`` = P, ``local_tokens`` = Q,
    ``teacher_weight`` = lambda_, ``gate_weight`` = eta_, ``orthogonal_weight`` = mu_,
    ``distill_weight`` = nu_, ``kl_weight`` = kappa_, ``kl_temperature`` = tau_,
    ``init_scale`` = the initial ``loss_T``, ``backbone_lr`` = clip_lr (the training
    config's ``lr`` is the rate of every other parameter).
    """

    global_tokens: int = 4
    local_tokens: int = 8
    teacher_weight: float = 1.0
    gate_weight: float = 1.0
    orthogonal_weight: float = 0.1
    distill_weight: float = 10.0
    kl_weight: float = 0.5
    kl_temperature: float = 0.1
    init_scale: float = 10.0
    backbone_lr: float = 1e-5
    image_transform: str = "clip"
    caption_policy: str = "tgcir"
    """Policy for multi-caption benchmarks without a spelling dictionary; FashionIQ and
    Shoes always get the official text (:func:`official_query_text`)."""
    require_spelling_corrections: bool = True
    """Refuse FashionIQ/Shoes without the official spelling dictionaries (False: warn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.global_tokens < 1 or self.local_tokens < 1:
            raise ValueError(
                f"tg-cir needs global_tokens >= 1 and local_tokens >= 1, got {self.global_tokens}, {self.local_tokens}"
            )
        if self.kl_temperature <= 0:
            raise ValueError(f"tg-cir kl_temperature must be > 0, got {self.kl_temperature}")


def official_query_text(method: CIRMethod, dataset: "CIRDataset", triplet: "Triplet", train: bool,
                        rng: random.Random) -> str:
    """TG-CIR/OFFSET query text as the official ``datasets.py`` prepares it (shared by both).

    FashionIQ: "{c1} and {c2}", Shoes: the caption; each lower-cased, ASCII punctuation
    (``string.punctuation``) replaced by spaces, re-split and spelling-corrected with the
    benchmark's dictionary (``correct_text``); a missing dictionary is refused unless
    ``require_spelling_corrections`` is false. CIRR and other benchmarks: the base rule
    (CIRR captions are used raw)."""
    text = spelling_corrected_text(dataset, triplet, method.name, method.config.require_spelling_corrections)
    return text if text is not None else CIRMethod.query_text(method, dataset, triplet, train, rng)


# ---------------------------------------------------------------------- modules
def initial_masks(num_masks: int, dim: int) -> torch.Tensor:
    """The mask table's start value (P, D): 0.1 everywhere, 1.0 on row p's block of
    floor(D / P) channels (the remainder channels stay 0.1, as in the official code)."""
    masks = torch.full((num_masks, dim), 0.1)
    block = dim // num_masks
    for p in range(num_masks):
        masks[p, p * block : (p + 1) * block] = 1.0
    return masks


class TokenLearner(nn.Module):
    """Q sigmoid spatial-attention heads: (B, L, D) -> (B, Q, D).

    Head q: a_l = sigmoid(w_q . x_l + b_q), u_q = (1/L) sum_l a_l x_l (a mean over all
    L positions, not a weighted average). The Q 1x1 convolutions of the official code
    are stored as the rows of one linear layer.
    """

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.attention = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.attention(tokens))  # (B, L, Q)
        return torch.einsum("blq,bld->bqd", gates, tokens) / tokens.shape[1]


def gate_mlp(dim: int) -> nn.Sequential:
    """Linear(2D -> D) -> ReLU -> Linear(D -> 1) -> Sigmoid: one scalar gate per token."""
    return nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1), nn.Sigmoid())


def orthogonal_regularisation(tokens: torch.Tensor) -> torch.Tensor:
    """mean_{b,i,j} (cos(X_i, X_j) - delta_ij)^2 over each sample's K x K Gram matrix.

    tokens: (B, K, D) -> scalar.
    """
    unit = normalize(tokens)
    gram = unit @ unit.transpose(1, 2)
    eye = torch.eye(tokens.shape[1], device=tokens.device, dtype=gram.dtype)
    return F.mse_loss(gram, eye.expand_as(gram))


def matching_degree_kl(query: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(P || Q) with batch-mean reduction (spec 1.5).

    P = softmax(t_hat t_hat^T / tau) from the **detached**, re-normalised teacher vectors
    (B, K*D); Q = softmax(q t^T / tau) from normalised student query and target (B, D).
    """
    teacher = normalize(teacher.detach())
    p = torch.softmax(teacher @ teacher.t() / temperature, dim=-1)
    log_q = torch.log_softmax(normalize(query) @ normalize(target).t() / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


# ----------------------------------------------------------------------- method
@METHODS.register("tg-cir")
class TgCir(CIRMethod):
    """TG-CIR on a ViT CLIP backbone (both towers fine-tuned)."""

    name = "tg-cir"
    config_class = TgCirConfig
    official_quick_gelu = True  # OpenAI CLIP
    official_arch = "ViT-B-16"
    checkpoint_format = "tg-cir"

    def __init__(self, backbone: ClipBackbone, config: TgCirConfig) -> None:
        super().__init__(backbone, config)
        if not backbone.is_vit:
            raise ValueError(
                f"tg-cir needs a ViT backbone (local tokens come from the ViT before ln_post); "
                f"{backbone.spec.arch!r} is not one"
            )
        dim = backbone.embed_dim
        tokens = config.global_tokens + config.local_tokens
        self.global_masks = nn.Parameter(initial_masks(config.global_tokens, dim))
        self.token_learner = TokenLearner(dim, config.local_tokens)
        self.image_fc = nn.Linear(backbone.vision_width, dim)
        self.text_fc = nn.Linear(backbone.text_width, dim)
        self.student_remain = gate_mlp(dim)
        self.teacher_remain = gate_mlp(dim)
        self.teacher_replace = gate_mlp(dim)
        self.scale = nn.Parameter(torch.tensor([float(config.init_scale)]))
        self.token_weights = nn.Parameter(torch.ones(tokens))

    @property
    def requirements(self) -> Requirements:
        return Requirements(image_transform=self.config.image_transform, caption_policy=self.config.caption_policy)

    def query_text(self, dataset: "CIRDataset", triplet: "Triplet", train: bool, rng: random.Random) -> str:
        """The official TG-CIR text (:func:`official_query_text`)."""
        return official_query_text(self, dataset, triplet, train, rng)

    def train(self, mode: bool = True) -> "TgCir":
        super().train(mode)
        for module in self.modules():  # official: BatchNorm2d layers stay in eval mode
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    # ------------------------------------------------------------- features
    def _attribute_tokens(self, pooled: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """[global (B, P, D); local (B, Q, D)] -> (B, K, D), global tokens first."""
        global_tokens = pooled.float()[:, None, :] * torch.relu(self.global_masks)[None]
        return torch.cat([global_tokens, self.token_learner(projected)], dim=1)

    def encode_images(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """(B, 3, H, W) -> ``tokens`` (B, K, D) from pooled + pre-ln_post ViT tokens."""
        out = self.backbone.image_tokens(pixels)
        return {"tokens": self._attribute_tokens(out.pooled, self.image_fc(out.pre_ln_post.float()))}

    def encode_texts(self, texts: Sequence[str]) -> Features:
        """Texts -> ``tokens`` (B, K, D) from pooled + all ln_final rows (padding included)."""
        device = self.global_masks.device
        out = self.backbone.text_tokens(self.backbone.tokenize(list(texts)).to(device))
        return {"tokens": self._attribute_tokens(out.pooled, self.text_fc(out.tokens.float()))}

    # ---------------------------------------------------------- composition
    def student(self, reference: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-free composition: (B, K, D) x 2 -> fused tokens (B, K, D), remain gate (B, K, 1)."""
        alpha = self.student_remain(torch.cat([reference, text], dim=-1))
        return alpha * reference + (1 - alpha) * text, alpha

    def teacher(
        self, reference: torch.Tensor, text: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Target-based composition with **detached** reference and text tokens.

        Returns fused tokens (B, K, D), remain gate beta and replace gate gamma (B, K, 1).
        """
        reference, text = reference.detach(), text.detach()
        beta = self.teacher_remain(torch.cat([reference, target], dim=-1))
        gamma = self.teacher_replace(torch.cat([text, target], dim=-1))
        return beta * reference + gamma * text, beta, gamma

    def teacher_vector(self, tokens: torch.Tensor) -> torch.Tensor:
        """flatten_k(w_k * norm(x_k)): (B, K, D) -> (B, K*D), not re-normalised."""
        return (normalize(tokens) * self.token_weights[None, :, None]).flatten(1)

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        """Student query norm(mean_k s_k): (B, D)."""
        fused, _ = self.student(reference["tokens"].float(), text["tokens"].float())
        return normalize(fused.mean(dim=1))

    def embed_targets(self, target: Features) -> torch.Tensor:
        """norm(mean_k t_k): (B, D)."""
        return normalize(target["tokens"].float().mean(dim=1))

    # ---------------------------------------------------------------- losses
    def loss_terms(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        """Every unweighted loss term of spec 3.4 (graph attached), by name."""
        cfg = self.config
        ref, txt, tgt = (batch[k]["tokens"].float() for k in ("reference", "text", "target"))
        fused_s, alpha = self.student(ref, txt)
        fused_t, beta, gamma = self.teacher(ref, txt, tgt)
        query, target = normalize(fused_s.mean(dim=1)), normalize(tgt.mean(dim=1))
        # batch-level terms see the global batch; gate, orthogonal and distill are per-sample means
        query, target, teacher_query, teacher_target = batch_gather(batch)(
            query, target, self.teacher_vector(fused_t), self.teacher_vector(tgt))
        return {
            # the configured loss (InfoNCE by default) on the student; the teacher keeps plain
            # InfoNCE so a stateful loss (nsfse's EMA) sees one distribution per step
            "student": self.contrastive_loss(query, target, self.scale).loss,
            "teacher": in_batch_cross_entropy(teacher_query, teacher_target, self.scale),
            "gate": F.mse_loss(beta + gamma, torch.ones_like(beta)),
            "orthogonal": (orthogonal_regularisation(ref) + orthogonal_regularisation(tgt) + orthogonal_regularisation(txt)) / 3,
            "distill": F.mse_loss(alpha, beta.detach()) + F.mse_loss(1 - alpha, gamma.detach()),
            "kl": matching_degree_kl(query, target, teacher_target, cfg.kl_temperature),
        }

    def loss_weights(self) -> dict[str, float]:
        """Weight of each term in the total loss."""
        cfg = self.config
        return {
            "student": 1.0,
            "teacher": cfg.teacher_weight,
            "gate": cfg.gate_weight,
            "orthogonal": cfg.orthogonal_weight,
            "distill": cfg.distill_weight,
            "kl": cfg.kl_weight,
        }

    def loss(self, batch: Mapping[str, Features]) -> dict[str, torch.Tensor]:
        terms = self.loss_terms(batch)
        weights = self.loss_weights()
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **{name: value.detach() for name, value in terms.items()},
                "scale": self.scale.detach().squeeze()}

    # -------------------------------------------------------------- training
    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone (CLIP) parameters at ``backbone_lr``, everything else at ``lr``."""
        backbone, rest = [], []
        for name, param in self.trainable_parameters():
            (backbone if name.startswith("backbone.") else rest).append(param)
        groups = [
            {"params": backbone, "lr": self.config.backbone_lr, "weight_decay": weight_decay},
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]

    # ----------------------------------------------------- official weights
    def load_official_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Load an official ``VCG_CIR`` checkpoint into this model.

        Accepts a state dict (optionally under ``state_dict``/``model``, optionally with a
        DataParallel ``module.`` prefix) or the whole pickled module written by the
        official ``train.py`` (``torch.save(model, 'best_model.pt')``; read by
        ``opencir.methods.official`` with inert stand-in classes, so neither the official
        code nor any other class is imported or run).
        Returns ``{"loaded": n, "ignored": [...]}``.
        """
        state = read_official_state_dict(path, "tg-cir")
        mapped, ignored = official_to_opencir(state, path)
        self._check_official_sizes(mapped, path)
        result = self.load_state_dict(mapped, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("attn_mask")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path}: official TG-CIR weights do not fit this model (backbone {self.backbone.spec.arch!r}): "
                f"missing {missing[:6]}, unexpected {list(result.unexpected_keys)[:6]}"
            )
        match_official_activation(self, path)  # TG-CIR fine-tunes OpenAI CLIP ViT-B/16: QuickGELU
        return {"loaded": len(mapped), "ignored": ignored}

    def _check_official_sizes(self, mapped: Mapping[str, torch.Tensor], path: str | Path) -> None:
        p, d = mapped["global_masks"].shape
        q = mapped["token_learner.attention.weight"].shape[0]
        cfg = self.config
        if (p, q) != (cfg.global_tokens, cfg.local_tokens) or d != self.backbone.embed_dim:
            raise ValueError(
                f"{path} was trained with P={p} global and Q={q} local tokens of width {d}; this model has "
                f"P={cfg.global_tokens}, Q={cfg.local_tokens}, width {self.backbone.embed_dim}: build it with "
                f"method_config global_tokens={p}, local_tokens={q} on a backbone of that width"
            )


# --------------------------------------------------------- official checkpoints
OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.clip.", "backbone.model."),
    ("backbone.masks.weight", "global_masks"),
    ("backbone.fc.", "image_fc."),
    ("backbone.text_fc.", "text_fc."),
    ("loss_T", "scale"),
    ("local_weight", "token_weights"),
    ("s_remain_map.", "student_remain."),
    ("t_remain_map.", "teacher_remain."),
    ("t_replace_map.", "teacher_replace."),
)
"""Official ``VCG_CIR`` key prefix -> OpenCIR key prefix."""
OFFICIAL_ALIASES = ("backbone.image_backbone.",)
"""Official keys that duplicate others (``image_backbone`` is ``clip.visual``)."""
_TOKENIZER_KEY = re.compile(r"^backbone\.tokenlearn\.tokenizers\.(\d+)\.conv\.0\.(weight|bias)$")
_REQUIRED = ("loss_T", "local_weight", "backbone.masks.weight", "s_remain_map.0.weight")


def official_to_opencir(state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official ``VCG_CIR`` state dict to this module's keys.

    The Q TokenLearner convolutions (weights (1, D, 1), biases (1,)) become the rows of
    ``token_learner.attention``. Returns (mapped state, ignored alias keys).
    """
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{source} is not an official TG-CIR (VCG_CIR) checkpoint: missing {missing}; "
                         f"{describe_foreign_checkpoint(state, 'tg-cir')}")
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    heads: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _TOKENIZER_KEY.match(key)
        if match:
            heads.setdefault(int(match.group(1)), {})[match.group(2)] = value
            continue
        if key.startswith(OFFICIAL_ALIASES):
            ignored.append(key)
            continue
        for old, new in OFFICIAL_RENAMES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = value
                break
        else:
            raise ValueError(f"{source}: unexpected key {key!r} in a TG-CIR checkpoint")
    if not heads or sorted(heads) != list(range(len(heads))) or any(len(h) != 2 for h in heads.values()):
        raise ValueError(f"{source}: TokenLearner weights are missing or incomplete (heads {sorted(heads)})")
    mapped["token_learner.attention.weight"] = torch.stack([heads[i]["weight"].reshape(-1) for i in range(len(heads))])
    mapped["token_learner.attention.bias"] = torch.cat([heads[i]["bias"].reshape(-1) for i in range(len(heads))])
    return mapped, ignored
