"""Caption policies: how a triplet's raw caption(s) become the one query text.

Each benchmark ships one or more captions per triplet; each method has its own rule
(spec section 1.7). A policy is ``(captions, train, rng) -> str``, registered by name.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Sequence

from ..registry import Registry

CaptionPolicy = Callable[[Sequence[str], bool, random.Random], str]
CAPTION_POLICIES: Registry[CaptionPolicy] = Registry("caption policy")

_EDGE_CHARS = ".?, "


def _strip_edges(text: str) -> str:
    return text.strip(_EDGE_CHARS)


@CAPTION_POLICIES.register("first")
def first_caption(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """The first caption as is (single-caption benchmarks: CIRR, Shoes, cir-shapes)."""
    return captions[0]


@CAPTION_POLICIES.register("join")
def join_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """All captions joined with " and ", stripped, in their original order."""
    return " and ".join(_strip_edges(c) for c in captions)


@CAPTION_POLICIES.register("clip4cir")
def clip4cir_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """CLIP4Cir's FashionIQ rule: random 4-way choice in training, "C1 and c2" in eval.

    Captions are stripped of leading/trailing ``.?,`` and spaces; the first part is
    ``capitalize()``d. Single-caption inputs are returned stripped and unchanged.
    """
    if len(captions) < 2:
        return captions[0]
    c1, c2 = _strip_edges(captions[0]), _strip_edges(captions[1])
    if not train:
        return f"{c1.capitalize()} and {c2}"
    u = rng.random()
    if u < 0.25:
        return f"{c1.capitalize()} and {c2}"
    if u < 0.5:
        return f"{c2.capitalize()} and {c1}"
    if u < 0.75:
        return c1.capitalize()
    return c2.capitalize()


_PUNCT = re.compile(r"[^\w\s]")


def normalise_text(text: str, corrections: dict[str, str] | None = None) -> str:
    """TG-CIR/OFFSET text cleaning: lower-case, punctuation to spaces, re-split, spell-fix."""
    words = _PUNCT.sub(" ", text.lower()).split()
    if corrections:
        words = [corrections.get(w, w) for w in words]
    return " ".join(words)


@CAPTION_POLICIES.register("tgcir")
def tgcir_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """TG-CIR/OFFSET: fixed "c1 and c2", each normalised (spelling dictionaries are
    applied by the dataset reader, which knows the category)."""
    return " and ".join(normalise_text(c) for c in captions)


@CAPTION_POLICIES.register("reversed")
def reversed_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """Pic2Word/Context-I2W FashionIQ order: "{c2} and {c1}" (second caption first)."""
    return " and ".join(_strip_edges(c) for c in reversed(captions))


def apply_caption_policy(name: str, captions: Sequence[str], train: bool, rng: random.Random | None = None) -> str:
    """Apply the registered policy ``name`` to ``captions``."""
    return CAPTION_POLICIES.get(name)(captions, train, rng or random.Random(0))


@CAPTION_POLICIES.register("pic2word")
def pic2word_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """Pic2Word/Context-I2W FashionIQ text exactly as their code formats it: "{c2} and {c1}"
    from the raw captions, nothing stripped (``"reversed"`` strips edge punctuation)."""
    return " and ".join(reversed(captions))
