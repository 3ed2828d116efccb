"""Composed queries beyond one image and one sentence, defined once for CLI, Python and HTTP.

A :class:`QuerySpec` holds weighted **references** (gallery ids, image files or PIL
images), weighted modification **texts** and weighted **negative texts** ("not
striped"). It is compiled to one query vector by the method (:func:`combine`):

* every (reference r_i, text t_j) pair is composed by the method itself,
  ``q_ij = method.compose(encode_images(r_i), encode_texts(t_j))`` (unit vectors);
* the positive query is ``q+ = norm(sum_ij a_i b_j q_ij)`` with the reference weights
  ``a`` and text weights ``b`` each scaled to sum to 1 (one reference and one text give
  exactly the method's plain query);
* each negative text n_k with weight c_k subtracts its unit text embedding in the gallery
  space: ``q = norm(q+ - sum_k c_k e(n_k))``, so an image x ranks by
  ``q+ . x - sum_k c_k e(n_k) . x``: its similarity to the query minus ``c_k`` times its
  similarity to the negative text.

Negative texts need a text embedding that lives in the same space as the gallery
vectors; :data:`NEGATIVE_TEXT_SPACES` registers the methods that have one (CLIP's joint
space). Other methods refuse a negative text with an error that names the ones that can.

The JSON form (HTTP bodies, ``opencir search --query``, lines of ``--queries q.jsonl``)::

    {"references": ["shoes/red_01", {"id": "shoes/red_02", "weight": 0.5}, {"image": "ref.jpg"}],
     "texts": ["make it blue", {"text": "with laces", "weight": 0.3}],
     "negative_texts": [{"text": "striped", "weight": 0.5}]}

with the shorthands ``ref_id`` / ``image`` (one reference) and ``text`` (one text).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import torch
from PIL import Image

from ..backbones.clip import count_tokens
from ..data.images import ImageLoadError
from ..registry import Registry

if TYPE_CHECKING:
    from ..methods.base import CIRMethod

Reference = Union[str, Path, Image.Image]

MAX_REFERENCES = 8
MAX_TEXTS = 8
DEFAULT_NEGATIVE_WEIGHT = 0.5


class InvalidText(ValueError):
    """A modification or negative text that is not a non-empty string within the limits."""


class TextTooLong(InvalidText):
    """A text has more tokens than the method's text encoder reads: it would be cut."""


class UnknownReference(KeyError):
    """A reference id that is not in the index."""

    def __init__(self, image_id: str, message: str) -> None:
        super().__init__(message)
        self.image_id = image_id

    def __str__(self) -> str:
        return str(self.args[0])


class UnreadableReference(ImageLoadError):
    """An indexed reference whose image file cannot be read on this machine."""

    def __init__(self, image_id: str, error: ImageLoadError) -> None:
        super().__init__(str(error), error.reason)
        self.image_id = image_id


class QueryFailed(ValueError):
    """Query number ``position`` (0-based) of a batch failed with ``error``."""

    def __init__(self, position: int, error: Exception) -> None:
        self.position, self.error = position, error
        message = error.args[0] if error.args else str(error)
        super().__init__(f"query {position + 1}: {message}")


@dataclass(frozen=True)
class Weighted:
    """One reference or text with its weight."""

    value: Any
    weight: float = 1.0


@dataclass(frozen=True)
class QuerySpec:
    """Weighted references, texts and negative texts of one composed query."""

    references: tuple[Weighted, ...]
    texts: tuple[Weighted, ...]
    negative_texts: tuple[Weighted, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.references:
            raise ValueError("a query needs at least one reference image (a gallery id or an image)")
        if not self.texts:
            raise ValueError("a query needs at least one modification text")
        for name, items, limit in (("references", self.references, MAX_REFERENCES), ("texts", self.texts, MAX_TEXTS),
                                   ("negative_texts", self.negative_texts, MAX_TEXTS)):
            if len(items) > limit:
                raise ValueError(f"a query has at most {limit} {name}, got {len(items)}")
            for item in items:
                weight = item.weight
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
                        or weight == float("inf"):
                    raise ValueError(f"{name}: weights must be positive finite numbers, got {weight!r}")
        for item in (*self.texts, *self.negative_texts):
            check_text(item.value)
        for item in self.references:
            if not isinstance(item.value, (str, Path, Image.Image)) or (isinstance(item.value, str) and not item.value):
                raise ValueError(f"a reference is a gallery id (str), an image file (Path) or a PIL image, "
                                 f"got {item.value!r}")

    @classmethod
    def simple(cls, reference: Reference, text: str) -> "QuerySpec":
        """One reference and one text: the plain composed query."""
        return cls((Weighted(reference),), (Weighted(check_text(text)),))

    @property
    def is_simple(self) -> bool:
        return len(self.references) == 1 and len(self.texts) == 1 and not self.negative_texts

    @property
    def reference_ids(self) -> list[str]:
        """Gallery ids among the references (excluded from the results by default)."""
        return [r.value for r in self.references if isinstance(r.value, str)]

    def describe(self) -> str:
        """The texts as one line (what responses echo back)."""
        text = " + ".join(t.value for t in self.texts)
        return text + "".join(f" - not {n.value}" for n in self.negative_texts)


def check_text(text: object, max_chars: int | None = None) -> str:
    """The stripped modification text; ValueError when not a non-empty string (or too long)."""
    if not isinstance(text, str):
        raise InvalidText(f"text must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise InvalidText("text must not be empty: describe how the results should differ from the reference")
    if max_chars is not None and len(text) > max_chars:
        raise InvalidText(f"text is {len(text)} characters long; the limit is {max_chars}")
    return text


# ------------------------------------------------------------------ parsing
def _weighted(item: Any, key: str, where: str) -> Weighted:
    if isinstance(item, Mapping):
        unknown = set(item) - {key, "weight"}
        if unknown or key not in item:
            raise ValueError(f"{where}: expected {{{key!r}: ..., 'weight': w}}, got keys {sorted(item)}")
        return Weighted(item[key], item.get("weight", 1.0))
    return Weighted(item)


def _reference(item: Any, where: str, resolve_image: Callable[[str], Reference]) -> Weighted:
    if isinstance(item, str):
        return Weighted(item)
    if isinstance(item, Mapping):
        keys = set(item) - {"weight"}
        if keys == {"id"} or keys == {"ref_id"}:
            return Weighted(str(item[keys.pop()]), item.get("weight", 1.0))
        if keys == {"image"}:
            return Weighted(resolve_image(str(item["image"])), item.get("weight", 1.0))
    raise ValueError(f"{where}: a reference is a gallery id, {{'id': ..., 'weight': w}} or {{'image': file, 'weight': w}}")


def _as_list(value: Any, where: str) -> list:
    if isinstance(value, (str, Mapping)):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"{where}: expected a list, got {type(value).__name__}")


SPEC_KEYS = {"ref_id", "image", "references", "text", "texts", "negative_texts", "negative_text"}


def spec_from_dict(payload: Mapping[str, Any], resolve_image: Callable[[str], Reference] = Path,
                   where: str = "query") -> QuerySpec:
    """A QuerySpec from its JSON form (see the module docstring); ``resolve_image`` turns an
    ``image`` entry into a reference (a Path by default; the server refuses them)."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"{where}: a query is a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; a query has {sorted(SPEC_KEYS)}")
    refs: list[Weighted] = []
    if "ref_id" in payload:
        refs.append(_reference(str(payload["ref_id"]), where, resolve_image))
    if "image" in payload:
        refs.append(Weighted(resolve_image(str(payload["image"]))))
    for n, item in enumerate(_as_list(payload.get("references", []), f"{where}.references")):
        refs.append(_reference(item, f"{where}.references[{n}]", resolve_image))
    texts = [Weighted(payload["text"])] if "text" in payload else []
    texts += [_weighted(t, "text", f"{where}.texts[{n}]") for n, t in enumerate(_as_list(payload.get("texts", []), f"{where}.texts"))]
    negatives_raw = _as_list(payload.get("negative_texts", []), f"{where}.negative_texts")
    if "negative_text" in payload:
        negatives_raw = [payload["negative_text"], *negatives_raw]
    negatives = []
    for n, item in enumerate(negatives_raw):
        entry = _weighted(item, "text", f"{where}.negative_texts[{n}]")
        negatives.append(entry if isinstance(item, Mapping) and "weight" in item else Weighted(entry.value, DEFAULT_NEGATIVE_WEIGHT))
    try:
        return QuerySpec(tuple(refs), tuple(Weighted(check_text(t.value), t.weight) for t in texts),
                         tuple(Weighted(check_text(t.value), t.weight) for t in negatives))
    except ValueError as err:
        raise type(err)(f"{where}: {err}") from None


# ------------------------------------------------------------ text length
def text_token_count(method: "CIRMethod", text: str) -> int:
    """Tokens ``text`` takes in the method's text encoder, start and end tokens included
    (what ``method.encode_texts`` feeds it, prompt templates included)."""
    length = getattr(method, "text_token_count", None)  # methods that wrap texts in a prompt
    if callable(length):
        return int(length(text))
    return count_tokens(method.backbone.tokenizer, text)


def check_text_length(method: "CIRMethod", text: str) -> None:
    """TextTooLong when the text encoder would cut ``text`` (CLIP reads 77 tokens); the
    message says after which word the cut would fall."""
    limit = method.backbone.context_length
    count = text_token_count(method, text)
    if count <= limit:
        return
    words = text.split()
    fits, low, high = 0, 0, len(words)  # the most leading words that still fit
    while low <= high:
        middle = (low + high) // 2
        if middle == 0 or text_token_count(method, " ".join(words[:middle])) <= limit:
            fits, low = middle, middle + 1
        else:
            high = middle - 1
    kept = " ".join(words[max(fits - 4, 0) : fits])
    raise TextTooLong(f"text is {count} tokens long but model {method.name!r} reads at most {limit} "
                      f"(start and end tokens included): everything after word {fits} ({kept!r}) would be "
                      f"ignored; shorten the text")


# --------------------------------------------------------------- negatives
NegativeTextSpace = Callable[["CIRMethod", Sequence[str]], torch.Tensor]
NEGATIVE_TEXT_SPACES: Registry[NegativeTextSpace] = Registry("negative-text space")


def clip_text_embedding(method: "CIRMethod", texts: Sequence[str]) -> torch.Tensor:
    """(N, D) unit CLIP text embeddings: the gallery space of methods that index CLIP's
    normalised image embedding (``embed_targets`` = norm(pooled image feature))."""
    backbone = method.backbone
    device = next(backbone.parameters()).device
    return torch.nn.functional.normalize(backbone.encode_text(backbone.tokenize(list(texts)).to(device)).float(), dim=-1)


for _name in ("image-only", "text-only", "sum", "pic2word", "context-i2w"):
    NEGATIVE_TEXT_SPACES.register(_name)(clip_text_embedding)


def negative_text_embedding(method: "CIRMethod", texts: Sequence[str]) -> torch.Tensor:
    """Unit embeddings of negative texts in the method's gallery space; ValueError for a
    method whose gallery space has no text embedding."""
    if method.name not in NEGATIVE_TEXT_SPACES:
        raise ValueError(f"method {method.name!r} cannot express a negative text: its gallery vectors live in a "
                         f"learned space with no text embedding; methods that can: {sorted(NEGATIVE_TEXT_SPACES)}")
    return NEGATIVE_TEXT_SPACES.get(method.name)(method, texts)


def combine(spec: QuerySpec, pair_queries: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
    """The (D,) query of ``spec`` from its composed pairs (R*T, D), reference-major, and the
    unit embeddings (N, D) of its negative texts (see the module docstring)."""
    if spec.is_simple:
        return pair_queries[0]
    a = torch.tensor([r.weight for r in spec.references], dtype=torch.float32)
    b = torch.tensor([t.weight for t in spec.texts], dtype=torch.float32)
    weights = (a[:, None] / a.sum() * (b[None, :] / b.sum())).reshape(-1, 1).to(pair_queries.device)
    query = torch.nn.functional.normalize((weights * pair_queries.float()).sum(0), dim=-1)
    if negatives is not None and len(negatives):
        c = torch.tensor([n.weight for n in spec.negative_texts], dtype=torch.float32, device=query.device)
        query = torch.nn.functional.normalize(query - (c[:, None] * negatives.float()).sum(0), dim=-1)
    return query
