"""Shared machinery of the zero-shot pseudo-word methods Pic2Word and Context-I2W (spec 4).

Both freeze CLIP and train a mapping network f that turns an image into one pseudo-word
vector S* in CLIP's token-embedding space (width W_t):

* training (images only): S* is **inserted** before EOT of "a photo of" (EOT moves +1
  and is read at its new index), and a symmetric InfoNCE with CLIP's frozen scale aligns
  the text feature with the image feature; gradients flow through the frozen text tower;
* evaluation: the query text goes into the benchmark's prompt template, e.g.
  "a photo of * , {text}", and the placeholder token's embedding is **replaced** by S*
  (EOT stays put).

How a dataset chooses its prompt
--------------------------------
A template has two slots, ``{placeholder}`` and ``{text}`` (plain string replacement, so
braces in captions are safe). The template of a query is, first found:

1. ``triplet.extra["zero_shot_prompt"]`` (per-query prompts);
2. ``dataset.info["zero_shot_prompt"]`` (per-benchmark prompts, see ``BENCHMARK_PROMPTS``);
3. the method's ``default_prompt`` (CIRR's "a photo of {placeholder} , {text}").

``{text}`` is the query text from the caption policy, inserted as is (nothing stripped,
as the official ``'a photo of * , {}'.format(...)``); multi-caption benchmarks (FashionIQ)
use the ``"pic2word"`` policy: "{c2} and {c1}" of the raw captions, exactly as both
official ``src/data.py`` build it (spec 1.7). Texts handed to ``encode_texts`` without the
placeholder are wrapped in ``default_prompt``.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..backbones import ClipBackbone
from ..backbones.clip import count_tokens
from ..data.types import ZERO_SHOT_PROMPT_KEY
from ..losses import batch_gather
from .base import CIRMethod, Features, MethodConfig, Requirements, in_batch_cross_entropy, normalize
from .official import match_official_activation, read_official_checkpoint, strip_module_prefix

if TYPE_CHECKING:
    from ..data.types import CIRDataset, Triplet


PLACEHOLDER_SLOT, TEXT_SLOT = "{placeholder}", "{text}"
DEFAULT_PROMPT = "a photo of {placeholder} , {text}"
BENCHMARK_PROMPTS: dict[str, str] = {
    "cirr": "a photo of {placeholder} , {text}",
    "fashioniq": "a photo of {placeholder} , {text}",  # text = "{c2} and {c1}" raw (policy "pic2word")
    "circo": "a photo of {placeholder} , {text}",  # [INFERRED]: neither paper evaluates CIRCO
    "coco-composition": "a photo of {placeholder} and {text}",  # text = "{query class} and {others}"
    "imagenet-r": "a {text} of {placeholder}",  # text = the domain: cartoon, origami, toy, sculpture
}
"""Spec 4.1.4 / 4.2.5 prompts, for dataset loaders to put under ``info["zero_shot_prompt"]``."""
REPLACE_TOKEN = "<|replace|>"
MAX_LOGIT_SCALE = 100.0
NO_DECAY_NAME_PARTS = ("bn", "ln", "bias", "logit_scale")


# ------------------------------------------------------------------ prompts
def render_prompt(template: str, placeholder: str, text: str) -> str:
    """Fill a prompt template: ``render_prompt("a {text} of {placeholder}", "*", "toy")``."""
    if PLACEHOLDER_SLOT not in template:
        raise ValueError(f"zero-shot prompt template {template!r} has no {PLACEHOLDER_SLOT} slot")
    return template.replace(TEXT_SLOT, text).replace(PLACEHOLDER_SLOT, placeholder)


def prompt_template(dataset: "CIRDataset", triplet: "Triplet", default: str) -> str:
    """The template for one query: triplet.extra, then dataset.info, then ``default``."""
    template = triplet.extra.get(ZERO_SHOT_PROMPT_KEY) or dataset.info.get(ZERO_SHOT_PROMPT_KEY) or default
    if not isinstance(template, str):
        raise ValueError(f"{dataset.name}/{dataset.split}: {ZERO_SHOT_PROMPT_KEY!r} must be a string, got {template!r}")
    return template


# ---------------------------------------------------------------- tokenizer
def _require_bpe_tokenizer(tokenizer: Any) -> None:
    if not all(hasattr(tokenizer, a) for a in ("bpe_ranks", "encoder", "decoder", "pat", "cache")):
        raise ValueError(
            f"pseudo-word methods need CLIP's BPE tokenizer (open_clip SimpleTokenizer), got {type(tokenizer).__name__}"
        )


def with_replace_token(tokenizer: Any, token: str = REPLACE_TOKEN) -> Any:
    """A copy of a CLIP BPE tokenizer in which ``token`` is one special token (spec 4.2.2).

    As in Context-I2W: the last BPE merge is dropped and ``token`` takes its id
    (49405 for OpenAI CLIP, = vocab_size - 3); SOT/EOT keep theirs. The embedding row of
    that id is left as is (the dropped merge's vector). The input tokenizer is unchanged.
    """
    _require_bpe_tokenizer(tokenizer)
    if token in tokenizer.encoder:
        return tokenizer
    import regex

    new = copy.copy(tokenizer)
    last = max(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    merged = "".join(last)
    token_id = tokenizer.encoder[merged]
    new.bpe_ranks = {k: v for k, v in tokenizer.bpe_ranks.items() if k != last}
    new.encoder = {k: v for k, v in tokenizer.encoder.items() if k != merged}
    new.encoder[token] = token_id
    new.decoder = {v: k for k, v in new.encoder.items()}
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids] + [token]
    new.cache = {t: t for t in specials}  # cached BPE results may use the dropped merge
    new.pat = regex.compile(regex.escape(token) + "|" + tokenizer.pat.pattern, regex.IGNORECASE)
    new.all_special_ids = [*tokenizer.all_special_ids, token_id]
    return new


def single_token_id(tokenizer: Any, word: str, context_length: int) -> int:
    """The id of ``word``, which must tokenise to exactly one token."""
    ids = tokenizer([word], context_length=context_length)[0]
    body = ids[(ids != 0)][1:-1]
    if body.numel() != 1:
        raise ValueError(f"placeholder {word!r} tokenises to {body.numel()} tokens {body.tolist()}; it must be one token")
    return int(body[0])


# ------------------------------------------------------------ mapping nets
def mlp_layers(in_dim: int, middle_dim: int, n_layer: int, dropout: float) -> nn.Sequential:
    """Pic2Word's hidden blocks [Linear, Dropout, ReLU] x n_layer (official key layout)."""
    blocks, dim = [], in_dim
    for _ in range(n_layer):
        blocks.append(nn.Sequential(nn.Linear(dim, middle_dim), nn.Dropout(dropout), nn.ReLU()))
        dim = middle_dim
    return nn.Sequential(*blocks)


def official_parameter_groups(named: Sequence[tuple[str, nn.Parameter]], lr: float, weight_decay: float
                              ) -> list[dict[str, Any]]:
    """Pic2Word's AdamW groups: names containing bn/ln/bias/logit_scale get no decay."""
    decay = [p for n, p in named if not any(part in n for part in NO_DECAY_NAME_PARTS)]
    no_decay = [p for n, p in named if any(part in n for part in NO_DECAY_NAME_PARTS)]
    groups = [{"params": no_decay, "lr": lr, "weight_decay": 0.0}, {"params": decay, "lr": lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


# ------------------------------------------------------------------ method
@dataclass
class PseudoWordConfig(MethodConfig):
    """Settings shared by Pic2Word and Context-I2W (defaults: the official recipe)."""

    middle_dim: int = 512
    dropout: float = 0.1
    train_prompt: str = "a photo of"
    default_prompt: str = DEFAULT_PROMPT
    image_transform: str = "clip"
    train_image_transform: str = "clip-train"
    cache_image_features: bool = True
    """True: encode every training image once (eval transform) and train on cached
    features; False: encode each batch with the random-resized-crop train transform as
    the official code does (slower; needed when token features do not fit in memory)."""

    def __post_init__(self) -> None:
        render_prompt(self.default_prompt, "*", "")  # validates the template


class PseudoWordMethod(CIRMethod):
    """Base of the pseudo-word methods: prompts, injection, the loss, official weights.

    Subclasses set ``placeholder`` and implement ``pseudo_words`` (evaluation) and
    ``training_pseudo_words``; the mapping network lives under ``self.img2text``.
    """

    placeholder: ClassVar[str] = "*"
    img2text: nn.Module

    def __init__(self, backbone: ClipBackbone, config: PseudoWordConfig) -> None:
        super().__init__(backbone, config)
        self.freeze_backbone(image=True, text=True)
        self.tokenizer = self.build_tokenizer(backbone.tokenizer)
        self.placeholder_id = single_token_id(self.tokenizer, self.placeholder, backbone.context_length)
        if self.placeholder_id >= backbone.model.token_embedding.num_embeddings:
            raise ValueError(f"placeholder id {self.placeholder_id} is outside the token-embedding table")
        self.register_buffer("train_ids", self.tokenizer([config.train_prompt], context_length=backbone.context_length),
                             persistent=False)

    def build_tokenizer(self, tokenizer: Any) -> Any:
        """The tokenizer this method uses (Context-I2W adds ``<|replace|>``)."""
        return tokenizer

    @property
    def requirements(self) -> Requirements:
        cfg = self.config
        return Requirements(
            train_data="images",
            image_encoder_frozen=cfg.cache_image_features,
            text_encoder_frozen=True,
            image_transform=cfg.image_transform,
            train_image_transform=cfg.train_image_transform,
            caption_policy="pic2word",
        )

    def train(self, mode: bool = True) -> "PseudoWordMethod":
        super().train(mode)
        self.backbone.eval()  # CLIP stays frozen and in eval mode (spec 4.1.2)
        return self

    # ---------------------------------------------------------------- texts
    def query_text(self, dataset: "CIRDataset", triplet: "Triplet", train: bool, rng: random.Random) -> str:
        """The benchmark prompt with the placeholder and the caption policy's text."""
        text = super().query_text(dataset, triplet, train, rng)
        return render_prompt(prompt_template(dataset, triplet, self.config.default_prompt), self.placeholder, text)

    @property
    def _device(self) -> torch.device:
        return self.train_ids.device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, L) on the model's device, with this method's tokenizer."""
        return self.tokenizer(list(texts), context_length=self.backbone.context_length).to(self._device)

    def text_token_count(self, text: str) -> int:
        """Tokens of the prompt ``encode_texts`` builds from ``text`` (start and end included),
        untruncated: what the query side checks against the context length."""
        prompt = text if self.placeholder in text else render_prompt(self.config.default_prompt, self.placeholder, text)
        return count_tokens(self.tokenizer, prompt)

    def placeholder_positions(self, token_ids: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Index of the first placeholder token per row (B,); fails naming a text without one."""
        hits = token_ids == self.placeholder_id
        missing = (~hits.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"no {self.placeholder!r} placeholder token left in {texts[missing[0]]!r} "
                             f"(truncated to {token_ids.shape[1]} tokens?)")
        return hits.int().argmax(dim=1)

    def encode_texts(self, texts: Sequence[str]) -> Features:
        """Prompt token ids (B, L) and the placeholder index (B,); texts without the
        placeholder are put into ``default_prompt`` first."""
        texts = [t if self.placeholder in t else render_prompt(self.config.default_prompt, self.placeholder, t)
                 for t in texts]
        ids = self.tokenize(texts)
        return {"token_ids": ids, "placeholder_index": self.placeholder_positions(ids, texts)}

    def encode_plain_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Pooled (B, D) text features of token ids without injection."""
        return self.backbone.encode_text(token_ids)

    def encode_with_pseudo(self, token_ids: torch.Tensor, pseudo: torch.Tensor, positions: torch.Tensor,
                           insert: bool) -> torch.Tensor:
        """Pooled (B, D) text features with S* (B, W_t) injected at ``positions`` (B,)."""
        ids = self.backbone.trim_padding(token_ids, spare=int(insert))
        return self.backbone.encode_text_with_pseudo_tokens(ids, pseudo, positions, insert=insert)

    # ---------------------------------------------------------- composition
    def pseudo_words(self, reference: Features, text: Features) -> torch.Tensor:
        """S* (B, W_t) for evaluation queries."""
        raise NotImplementedError

    def training_pseudo_words(self, image: Features, captions: Sequence[str]) -> torch.Tensor:
        """S* (B, W_t) for a training batch of images and their captions."""
        raise NotImplementedError

    def compose(self, reference: Features, text: Features) -> torch.Tensor:
        pseudo = self.pseudo_words(reference, text)
        query = self.encode_with_pseudo(text["token_ids"], pseudo, text["placeholder_index"], insert=False)
        return normalize(query)

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE between norm(v) and norm(E_T("a photo of S*")), CLIP's frozen scale."""
        image = batch["image"]
        pseudo = self.training_pseudo_words(image, batch["captions"])
        ids = self.train_ids.expand(pseudo.shape[0], -1)
        eot = self.backbone.eot_positions(ids)
        text = normalize(self.encode_with_pseudo(ids, pseudo, eot, insert=True))
        vision = normalize(image["pooled"])
        vision, text = batch_gather(batch)(vision, text)  # the global batch under data parallelism
        scale = self.backbone.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE)
        image_to_text = in_batch_cross_entropy(vision, text, scale)
        text_to_image = in_batch_cross_entropy(text, vision, scale)
        loss = 0.5 * (image_to_text + text_to_image)
        return {"loss": loss, "image_to_text": image_to_text.detach(), "text_to_image": text_to_image.detach()}

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The official AdamW groups over the mapping network's parameter names."""
        named = [(n.removeprefix("img2text."), p) for n, p in self.trainable_parameters()]
        return official_parameter_groups(named, lr, weight_decay)

    # ----------------------------------------------------- official weights
    def import_official(self, paths: Sequence[str | Path]) -> dict[str, Any]:
        """The released file(s); CLIP weights come from the file when it has them, else
        from the backbone's ``pretrained`` weights (the frozen original OpenAI CLIP)."""
        reports = {str(p): self.load_official_checkpoint(p, load_clip=None) for p in paths}
        if not any(r.get("clip") == "loaded" for r in reports.values()) and not self.backbone.spec.pretrained:
            raise ValueError(
                f"the {self.name} file holds no CLIP weights ('state_dict') and no --pretrained backbone was given: "
                "pass --pretrained openai (or the OpenAI CLIP file) for the frozen CLIP"
            )
        return reports

    def load_official_checkpoint(self, path: str | Path, load_clip: bool | None = False) -> dict[str, Any]:
        """Load a released checkpoint: ``{"state_dict_img2text": ..., "state_dict": CLIP}``
        (keys may carry DDP's ``module.``) or a bare mapping-network state dict. CLIP
        weights are loaded only with ``load_clip`` (they are the frozen original CLIP);
        ``load_clip=None`` loads them when the file has them."""
        state = read_official_checkpoint(path, self.name)
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} is not a {self.name} checkpoint: it holds a {type(state).__name__}")
        mapping = state.get("state_dict_img2text", state)
        own = set(self.img2text.state_dict())
        mapping = strip_module_prefix(mapping)
        if set(mapping) != own:
            raise ValueError(
                f"{path} does not hold {self.name} mapping-network weights for this config: missing "
                f"{sorted(own - set(mapping))[:5]}, unexpected {sorted(set(mapping) - own)[:5]}"
            )
        try:
            self.img2text.load_state_dict(mapping)
        except RuntimeError as err:
            raise ValueError(f"{path}: mapping-network shapes do not fit backbone {self.backbone.spec.arch!r}: {err}") from err
        report: dict[str, Any] = {"img2text": "loaded", "epoch": state.get("epoch")}
        if load_clip is None:
            load_clip = isinstance(state.get("state_dict"), Mapping)
        if load_clip:
            if "state_dict" not in state:
                raise ValueError(f"{path} has no 'state_dict' (CLIP weights) to load")
            result = self.backbone.model.load_state_dict(strip_module_prefix(state["state_dict"]), strict=False)
            bad = list(result.unexpected_keys) + [k for k in result.missing_keys if k != "attn_mask"]
            if bad:
                raise ValueError(f"{path}: CLIP weights do not fit backbone {self.backbone.spec.arch!r}: {bad[:5]}")
            report["clip"] = "loaded"
        match_official_activation(self, path)  # the frozen OpenAI CLIP: QuickGELU
        return report
