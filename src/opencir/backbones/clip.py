"""CLIP backbone wrapper on open_clip: pooled and token-level features, token injection.

Three ways to build one (``BackboneSpec``):
* ``arch="ViT-B-16", pretrained="openai"``: any open_clip model by name + pretrained tag
  (weights are fetched and cached by open_clip / the Hugging Face hub, like users do);
  ``arch="ViT-B-16/openai"`` (the ``ARCH/TAG`` notation) means the same;
* ``arch="hf-hub:org/name"``: an open_clip model published on the Hugging Face Hub
  (``open_clip_config.json`` + weights), read through the Hub cache;
* ``arch="ViT-L-14", pretrained="/path/to/ckpt.pt"``: an open_clip architecture with a
  local checkpoint file;
* ``arch="small-vit"`` (or ``tiny-vit``, ``tiny-rn``), ``pretrained=None``: a small
  architecture from ``backbones/configs/*.json`` with random weights (tests, offline demo).

Activation: OpenAI CLIP weights were trained with QuickGELU, which open_clip's plain
architecture names (``ViT-B-16``) do not use; loading them into a GELU model runs but
drifts every feature (about 5e-3). ``BackboneSpec.quick_gelu=None`` (default) therefore
switches to QuickGELU whenever the weights are OpenAI's (an open_clip tag whose config
says so, e.g. ``openai``, or a local OpenAI checkpoint file), and records it in the spec
so saved models rebuild with it; ``quick_gelu=False`` with OpenAI weights is refused.

Token-level features follow spec section 1.2: vision tokens before and after ``ln_post``
(ViT only) and text tokens after ``ln_final`` (all 77 positions, padding included).
"""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_DIR = Path(__file__).parent / "configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def list_small_configs() -> list[str]:
    """Names of the small architectures shipped with OpenCIR (random init)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone: open_clip architecture name + pretrained tag or path."""

    arch: str
    pretrained: str | None = None
    cache_dir: str | None = None
    grad_checkpointing: bool = False
    """Recompute transformer blocks in the backward pass (less memory, ~30% more compute)."""
    quick_gelu: bool | None = None
    """MLP activation: None = what the weights need (QuickGELU for OpenAI weights, else the
    architecture's default); True/False force it (False with OpenAI weights is refused)."""

    def __post_init__(self) -> None:
        # ARCH/TAG: the tag in the name wins over ``pretrained`` (whose config default is
        # "openai"); an hf-hub: model carries its own weights, so ``pretrained`` is dropped.
        arch, tag = parse_backbone_name(self.arch)
        object.__setattr__(self, "arch", arch)
        if tag is not None:
            object.__setattr__(self, "pretrained", tag)
        elif arch.startswith(HF_HUB_PREFIX):
            object.__setattr__(self, "pretrained", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HF_HUB_PREFIX = "hf-hub:"


def parse_backbone_name(name: str) -> tuple[str, str | None]:
    """``"ViT-B-16/openai"`` -> ``("ViT-B-16", "openai")``; ``"hf-hub:org/name"`` and plain
    architecture names are returned as they are, with no tag."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.startswith(HF_HUB_PREFIX):
        if name.count("/") != 1 or not all(name[len(HF_HUB_PREFIX):].split("/")):
            raise ValueError(f"backbone {name!r}: an open_clip Hub name is hf-hub:ORG/NAME")
        return name, None
    arch, sep, tag = name.partition("/")
    if not sep:
        return name, None
    if not arch or not tag or "/" in tag:
        raise ValueError(f"backbone {name!r}: use ARCH/TAG (e.g. ViT-B-16/openai) or hf-hub:ORG/NAME")
    return arch, tag


@dataclass(frozen=True)
class TextTokens:
    """Output of the text tower: pooled (B, D) projected feature and ln_final tokens (B, L, W)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    eot_index: torch.Tensor


@dataclass(frozen=True)
class ImageTokens:
    """Output of the ViT tower: pooled (B, D), pre-ln_post and post-ln_post tokens (B, 1+N, W)."""

    pooled: torch.Tensor
    pre_ln_post: torch.Tensor
    post_ln_post: torch.Tensor


OPENAI_STATE_KEYS = (b"input_resolution", b"context_length", b"vocab_size")
"""Entries only OpenAI's released CLIP files hold next to the weights."""


def is_openai_checkpoint(path: str | Path) -> bool:
    """Whether a local file is an OpenAI CLIP release: its pickle (a TorchScript archive,
    OpenAI's format, or a state dict) holds OpenAI's ``input_resolution`` /
    ``context_length`` / ``vocab_size`` entries next to the weights. Only the archive's
    small pickle part is read, never the tensors."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        header = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        return header is not None and all(key in archive.read(header) for key in OPENAI_STATE_KEYS)


def weights_need_quick_gelu(arch: str, pretrained: str | None) -> bool:
    """Whether ``pretrained`` weights were trained with QuickGELU: an open_clip tag whose
    config says so (``openai``...) or a local OpenAI checkpoint file."""
    if not pretrained:
        return False
    if Path(pretrained).expanduser().is_file():
        return is_openai_checkpoint(Path(pretrained).expanduser())
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether the CLIP transformer blocks of ``model`` use QuickGELU."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def set_quick_gelu(model: nn.Module, quick: bool) -> int:
    """Swap the MLP activation of every CLIP transformer block (it has no parameters):
    QuickGELU when ``quick``, else exact GELU. Returns how many were swapped."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    swapped = 0
    for block in model.modules():
        if not isinstance(block, ResidualAttentionBlock):
            continue
        for name, child in list(block.mlp.named_children()):
            if isinstance(child, nn.GELU) and quick:
                setattr(block.mlp, name, QuickGELU())
            elif isinstance(child, QuickGELU) and not quick:
                setattr(block.mlp, name, nn.GELU())
            else:
                continue
            swapped += 1
    return swapped


def _resolve_quick_gelu(spec: BackboneSpec) -> bool | None:
    """The activation to force (None: the architecture's default); refuses a GELU model
    for OpenAI weights."""
    needs = weights_need_quick_gelu(spec.arch, spec.pretrained)
    if needs and spec.quick_gelu is False:
        raise ValueError(
            f"backbone {spec.arch!r} with pretrained {spec.pretrained!r}: these are OpenAI CLIP weights, trained "
            "with QuickGELU; quick_gelu=false would load them into exact GELU and drift every feature. Remove "
            "quick_gelu (automatic) or set it to true"
        )
    return True if needs and spec.quick_gelu is None else spec.quick_gelu


def _build_open_clip(spec: BackboneSpec, load_weights: bool = True) -> tuple[nn.Module, Any, bool | None]:
    """The open_clip model + tokenizer of ``spec`` and the activation forced on it;
    ``load_weights=False`` builds the architecture only (random init), for loading saved
    weights into it."""
    import open_clip

    quick = _resolve_quick_gelu(spec)
    config_file = CONFIG_DIR / f"{spec.arch}.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
        model = open_clip.model.CLIP(**cfg)
        if spec.pretrained and load_weights:
            state = torch.load(spec.pretrained, map_location="cpu", weights_only=True)
            state = dict(state.get("state_dict", state))
            for key in OPENAI_STATE_KEYS:  # OpenAI's files carry these next to the weights
                state.pop(key.decode(), None)
            model.load_state_dict(state)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    elif spec.arch.startswith(HF_HUB_PREFIX):
        # open_clip reads open_clip_config.json + weights through huggingface_hub (its cache,
        # HF_HUB_OFFLINE, HF_TOKEN); a pretrained tag does not apply to Hub models
        model = open_clip.create_model(spec.arch, load_weights=load_weights, cache_dir=spec.cache_dir,
                                       force_quick_gelu=bool(quick))
        tokenizer = open_clip.get_tokenizer(spec.arch, cache_dir=spec.cache_dir)
    else:
        if spec.arch not in open_clip.list_models():
            raise ValueError(
                f"unknown backbone architecture {spec.arch!r}: neither an open_clip model "
                f"(see open_clip.list_models()), an ARCH/TAG name, hf-hub:ORG/NAME, nor a small config "
                f"({', '.join(list_small_configs())})"
            )
        model = open_clip.create_model(spec.arch, pretrained=spec.pretrained if load_weights else None,
                                       cache_dir=spec.cache_dir, force_quick_gelu=bool(quick))
        tokenizer = open_clip.get_tokenizer(spec.arch, cache_dir=spec.cache_dir)
    if quick is not None and uses_quick_gelu(model) != quick:
        set_quick_gelu(model, quick)
    if quick and spec.quick_gelu is None:
        logging.getLogger(__name__).info(
            "backbone %s: %s holds OpenAI CLIP weights; using QuickGELU as they were trained with", spec.arch, spec.pretrained
        )
    return model, tokenizer, quick


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` with start and end tokens, untruncated, for a CLIP-style tokenizer
    called as ``tokenizer([text], context_length=L)`` (zero-padded rows)."""
    ids = tokenizer([text], context_length=len(text.encode("utf-8")) + 8)[0]
    return int(ids.nonzero().max()) + 1  # the end token is the last non-padding one


class ClipBackbone(nn.Module):
    """A CLIP image/text encoder pair with the feature taps CIR methods need."""

    def __init__(self, spec: BackboneSpec, load_weights: bool = True) -> None:
        super().__init__()
        self.model, self.tokenizer, quick = _build_open_clip(spec, load_weights)
        # record a corrected activation, so that a saved model rebuilds with it
        self.spec = replace(spec, quick_gelu=True) if quick and spec.quick_gelu is None else spec
        self.model.float()
        if spec.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size: int = size if isinstance(size, int) else int(size[0])
        self.image_mean: tuple[float, ...] = tuple(cfg.get("mean") or CLIP_MEAN)
        self.image_std: tuple[float, ...] = tuple(cfg.get("std") or CLIP_STD)

    # ----------------------------------------------------------------- sizes
    @property
    def embed_dim(self) -> int:
        """Joint embedding width D of pooled image and text features."""
        proj = self.model.text_projection
        return int(proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features)

    @property
    def text_width(self) -> int:
        """Width W_t of the token embeddings and of ln_final tokens."""
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def vision_width(self) -> int:
        """Width W of the ViT tokens (fails for ResNet backbones)."""
        self._require_vit()
        return int(self.model.visual.conv1.out_channels)

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    @property
    def uses_quick_gelu(self) -> bool:
        """Whether the transformer MLPs use QuickGELU (OpenAI CLIP) rather than exact GELU."""
        return uses_quick_gelu(self.model)

    def set_activation(self, quick_gelu: bool) -> bool:
        """Switch the MLP activation (QuickGELU or GELU) and record it in ``spec``;
        returns whether anything changed."""
        changed = set_quick_gelu(self.model, quick_gelu) > 0
        self.spec = replace(self.spec, quick_gelu=quick_gelu)
        return changed

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model.visual, "conv1") and hasattr(self.model.visual, "class_embedding")

    def _require_vit(self) -> None:
        if not self.is_vit:
            raise ValueError(f"backbone {self.spec.arch!r} is not a ViT: token-level image features need a ViT")

    # ---------------------------------------------------------------- images
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled, projected, unnormalised image features: (B, 3, H, W) -> (B, D)."""
        return self.model.encode_image(pixels)

    def image_tokens(self, pixels: torch.Tensor) -> ImageTokens:
        """ViT features: pooled (B, D), tokens before and after ln_post (B, 1+N, W)."""
        self._require_vit()
        visual = self.model.visual
        z = visual.transformer(visual._embeds(pixels))
        pooled, _ = visual._pool(z)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageTokens(pooled=pooled, pre_ln_post=z, post_ln_post=visual.ln_post(z))

    # ----------------------------------------------------------------- texts
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length); over-long texts are truncated (EOT kept)."""
        return self.tokenizer(texts, context_length=self.context_length)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Pooled, projected, unnormalised text features at EOT: (B, L) -> (B, D).

        Padding after the batch's last EOT is trimmed first (``trim_padding``): the pooled
        output is the same and short texts cost a fraction of the full context."""
        if not self.pads_after_eot:
            return self.model.encode_text(token_ids)
        return self.text_tokens(self.trim_padding(token_ids)).pooled

    @property
    def pads_after_eot(self) -> bool:
        """True when the text tower is causal and pools at EOT (CLIP): slots after the last
        EOT of a batch can be dropped without changing any pooled output."""
        return self.model.attn_mask is not None and getattr(self.model, "text_pool_type", "argmax") == "argmax"

    def trim_padding(self, token_ids: torch.Tensor, spare: int = 0) -> torch.Tensor:
        """Token ids (B, L) cut after the batch's last EOT (+ ``spare`` slots): exact under
        CLIP's causal mask, where EOT never attends to later slots. Token-level methods that
        read padding positions keep the full context and do not call this."""
        if not self.pads_after_eot:
            return token_ids
        keep = min(token_ids.shape[1], int(self.eot_positions(token_ids).max()) + 1 + spare)
        return token_ids[:, :keep]

    def text_tokens(self, token_ids: torch.Tensor) -> TextTokens:
        """Text tower with all ln_final tokens (B, L, W_t) and the pooled feature (B, D)."""
        embeddings = self.model.token_embedding(token_ids)
        eot = self.eot_positions(token_ids)
        return self._text_from_embeddings(embeddings, eot)

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token in each row (the highest id, as CLIP does)."""
        return token_ids.argmax(dim=-1)

    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the token-embedding table for ``token_ids``: (B, L) -> (B, L, W_t)."""
        return self.model.token_embedding(token_ids)

    def encode_text_with_pseudo_tokens(
        self, token_ids: torch.Tensor, pseudo: torch.Tensor, positions: torch.Tensor, insert: bool
    ) -> torch.Tensor:
        """Text features with a pseudo-word vector injected at the token-embedding level.

        token_ids (B, L), pseudo (B, W_t), positions (B,). ``insert=False`` replaces the
        embedding at ``positions`` (evaluation: EOT stays put); ``insert=True`` inserts the
        vector before ``positions``, shifting the rest right by one and dropping the last
        slot (training: "a photo of S*", EOT read at its new index). The injection happens
        before positional embeddings are added (spec 1.2). Returns pooled (B, D).
        """
        embeddings = self.model.token_embedding(token_ids)
        eot = self.eot_positions(token_ids)
        rows = torch.arange(token_ids.shape[0], device=token_ids.device)
        pseudo = pseudo.to(embeddings.dtype)
        if insert:
            length = embeddings.shape[1]
            if bool((eot >= length - 1).any()):
                raise ValueError("cannot insert a pseudo token: a text already fills the whole context")
            index = torch.arange(length, device=token_ids.device).expand(token_ids.shape[0], length)
            shifted_source = torch.where(index > positions[:, None], index - 1, index)
            embeddings = embeddings.gather(1, shifted_source[..., None].expand_as(embeddings)).clone()
            embeddings[rows, positions] = pseudo
            eot = torch.where(eot >= positions, eot + 1, eot)
        else:
            embeddings = embeddings.clone()
            embeddings[rows, positions] = pseudo
        return self._text_from_embeddings(embeddings, eot).pooled

    def _text_from_embeddings(self, embeddings: torch.Tensor, eot: torch.Tensor) -> TextTokens:
        model = self.model
        # Sequences may be shorter than the context (padding trimmed): under the causal
        # mask EOT never attends to later slots, so its output is unchanged.
        length = embeddings.shape[1]
        x = embeddings + model.positional_embedding[:length].to(embeddings.dtype)
        mask = model.attn_mask
        x = model.transformer(x, attn_mask=mask[:length, :length] if mask is not None else None)
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = model.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return TextTokens(pooled=pooled, tokens=x, eot_index=eot)

    # ---------------------------------------------------------------- misc
    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's own (learned) inverse temperature, exp(logit_scale)."""
        return self.model.logit_scale.exp()

    def fingerprint(self) -> str:
        """SHA-256 over architecture and weights: identifies the features this backbone makes.

        Memoised: the hash is recomputed only when a weight tensor was replaced or changed
        in place (torch bumps a tensor's version counter on every in-place write, e.g. an
        optimizer step or ``load_state_dict``), so a frozen backbone is hashed once."""
        state = sorted(self.model.state_dict().items())
        key = (self.spec.arch, self.uses_quick_gelu,
               tuple((name, t.data_ptr(), t._version, t.device.type) for name, t in state))
        memo = self.__dict__.get("_fingerprint_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        digest = hashlib.sha256(json.dumps(self.spec.arch).encode())
        if self.uses_quick_gelu:  # same weights, other activation: other features
            digest.update(b"activation=quick_gelu")
        for name, tensor in state:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        value = digest.hexdigest()[:16]
        self.__dict__["_fingerprint_memo"] = (key, value)
        return value
