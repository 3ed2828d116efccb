"""Caption policies: how a triplet's raw caption(s) become the one query text.

Each benchmark ships one or more captions per triplet; each method has its own rule
(spec section 1.7). A policy is ``(captions, train, rng) -> str``, registered by name.
Triplets always keep the raw captions; the official text rule of each method is applied
here, at query time.

TG-CIR and OFFSET also correct spellings with per-benchmark dictionaries
(``correction_dict_<name>.json``, shipped in their repositories): the dataset reader puts
the loaded dictionaries under ``CIRDataset.info[SPELLING_DICTIONARIES_KEY]`` and names the
dictionary a query uses under ``Triplet.extra`` / ``CIRDataset.info[SPELLING_NAME_KEY]``;
:func:`spelling_corrected_text` applies the official rule with them.
"""
from __future__ import annotations

import random
import string
import warnings
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..registry import Registry

if TYPE_CHECKING:
    from .types import CIRDataset, Triplet

CaptionPolicy = Callable[[Sequence[str], bool, random.Random], str]
CAPTION_POLICIES: Registry[CaptionPolicy] = Registry("caption policy")

SPELLING_DICTIONARIES_KEY = "spelling_dictionaries"
"""``CIRDataset.info`` key: {dictionary name: {word: correction}} loaded by the reader."""
SPELLING_NAME_KEY = "spelling_dictionary"
"""``Triplet.extra`` / ``CIRDataset.info`` key: the dictionary name a query's text needs
(FashionIQ: its category; Shoes: ``"shoes"``). Benchmarks without one (CIRR) have none."""

_EDGE_CHARS = ".?, "
_ASCII_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


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


def normalise_text(text: str, corrections: Mapping[str, str] | None = None) -> str:
    """TG-CIR/OFFSET ``correct_text``: lower-case, every ASCII punctuation character
    (Python's ``string.punctuation``, so ``_`` too, but not typographic quotes or dashes)
    becomes a space, split on whitespace, each word replaced by its spelling correction
    when it has one, words joined by single spaces."""
    words = str(text).lower().translate(_ASCII_PUNCTUATION_TO_SPACE).split()
    if corrections:
        words = [corrections[w] if w in corrections else w for w in words]
    return " ".join(words)


def tgcir_text(captions: Sequence[str], corrections: Mapping[str, str] | None = None) -> str:
    """TG-CIR/OFFSET query text: FashionIQ ``concat_text`` "{c1} and {c2}" of the cleaned
    captions; a single caption (Shoes) is cleaned alone."""
    return " and ".join(normalise_text(c, corrections) for c in captions)


@CAPTION_POLICIES.register("tgcir")
def tgcir_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """TG-CIR/OFFSET cleaning without spelling dictionaries (see :func:`spelling_corrected_text`)."""
    return tgcir_text(captions)


@CAPTION_POLICIES.register("reversed")
def reversed_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """"{c2} and {c1}" with each caption stripped of edge ``.?,`` and spaces (not an
    official rule: Pic2Word/Context-I2W use ``"pic2word"``)."""
    return " and ".join(_strip_edges(c) for c in reversed(captions))


@CAPTION_POLICIES.register("pic2word")
def pic2word_captions(captions: Sequence[str], train: bool, rng: random.Random) -> str:
    """Pic2Word/Context-I2W FashionIQ text exactly as their ``src/data.py`` formats it:
    "{c2} and {c1}" from the raw captions, nothing stripped."""
    return " and ".join(reversed(captions))


def apply_caption_policy(name: str, captions: Sequence[str], train: bool, rng: random.Random | None = None) -> str:
    """Apply the registered policy ``name`` to ``captions``."""
    return CAPTION_POLICIES.get(name)(captions, train, rng or random.Random(0))


def spelling_dictionary_name(dataset: "CIRDataset", triplet: "Triplet") -> str | None:
    """The spelling dictionary a query's official TG-CIR/OFFSET text needs, or None."""
    return triplet.extra.get(SPELLING_NAME_KEY) or dataset.info.get(SPELLING_NAME_KEY)


def spelling_corrected_text(
    dataset: "CIRDataset", triplet: "Triplet", method: str, require: bool = True
) -> str | None:
    """The official TG-CIR/OFFSET text of a query on a benchmark with spelling
    dictionaries (FashionIQ, Shoes): :func:`tgcir_text` with the query's dictionary.

    None when the benchmark has no dictionary (CIRR: the raw caption is official). A
    missing dictionary raises a ValueError saying where to put it (``require``), or
    warns that the text will differ from the official one.
    """
    name = spelling_dictionary_name(dataset, triplet)
    if name is None:
        return None
    dictionaries = dataset.info.get(SPELLING_DICTIONARIES_KEY) or {}
    if name not in dictionaries:
        message = (
            f"{method} on {dataset.name}/{dataset.split} needs the official spelling dictionary "
            f"correction_dict_{name}.json (from the official TG-CIR/OFFSET repository) to reproduce the official "
            f"text; put it in the dataset folder ({dataset.root}, or its captions/ folder for FashionIQ) or pass "
            f"--option corrections=DIR"
        )
        if require:
            raise ValueError(message + f"; method_config require_spelling_corrections=false runs without it")
        warnings.warn(message + "; running WITHOUT spelling corrections: the text differs from the official one",
                      stacklevel=2)
    return tgcir_text(triplet.captions, dictionaries.get(name))
