"""Masking the subject noun phrase of a caption with ``<|replace|>`` (Context-I2W, spec 4.2.4).

Context-I2W trains on captions whose object/subject name is replaced by the placeholder
token; the authors did not release the masking tool, so the procedure here is
[INFERRED] (spec 4.2.4 suggests spaCy noun chunks). Two maskers are registered:

* ``"spacy"`` (the ``nlp`` extra plus an English pipeline such as ``en_core_web_sm``):
  the noun chunk whose head is the sentence root (verbless captions: "a dog on the
  beach" -> "a dog"), else the chunk that is the root's subject ("a dog runs ..."),
  else the first noun chunk, is replaced as a whole;
* ``"fallback"`` (no dependency): a rule-based first-noun-phrase finder. The phrase
  starts at a leading determiner/quantifier (or at the first content word) and runs
  until a boundary word (preposition, conjunction, auxiliary or common verb, an
  ``-ing``/``-ed`` form, another determiner) or punctuation, at most 5 words. It
  matches spaCy on simple "det adj* noun ..." captions and is cruder elsewhere.

``"auto"`` picks spaCy when it and its pipeline load, else the fallback. A caption in
which no phrase is found becomes ``"<|replace|> , <caption>"``; an empty caption
becomes ``"<|replace|>"``.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Protocol, Sequence

from ..registry import Registry

log = logging.getLogger(__name__)

PLACEHOLDER = "<|replace|>"
MAX_PHRASE_WORDS = 5

DETERMINERS = frozenset(
    "a an the this that these those some any each every my your his her its our their one two three "
    "four five six seven eight nine ten several many few no another".split()
)
BOUNDARY_WORDS = frozenset(
    # prepositions
    "at in on of with near by from to for into onto over under above below behind beside besides between "
    "inside outside around along across against through during after before without within next toward "
    "towards upon as like about off up down out "
    # conjunctions and relative words
    "and or but nor while when where which who whom whose because so than then if "
    # auxiliaries and frequent caption verbs
    "is are was were be been being am has have had do does did can could will would may might should must "
    "sits sit stands stand lies lie holds hold looks look wears wear walks walk runs run plays play poses "
    "pose rides ride shows show gets get makes make takes take attends attend performs perform waits wait "
    "flies fly eats eat drinks drink stays stay goes go comes come".split()
)
_WORD = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")


class CaptionMasker(Protocol):
    """Replaces the subject noun phrase of each caption by ``placeholder``."""

    placeholder: str

    def __call__(self, captions: Sequence[str]) -> list[str]:
        ...


MaskerFactory = Callable[..., CaptionMasker]
MASKERS: Registry[MaskerFactory] = Registry("caption masker")


def _replace_span(caption: str, start: int, end: int, placeholder: str) -> str:
    return f"{caption[:start]}{placeholder}{caption[end:]}"


def _unmasked(caption: str, placeholder: str) -> str:
    """What a caption without a detectable phrase becomes."""
    caption = caption.strip()
    return f"{placeholder} , {caption}" if caption else placeholder


def _is_boundary(word: str) -> bool:
    lower = word.lower()
    if not word[0].isalnum():
        return True
    if lower in BOUNDARY_WORDS or lower in DETERMINERS:
        return True
    return (lower.endswith("ing") and len(lower) > 5) or (lower.endswith("ed") and len(lower) > 4)


def first_noun_phrase(caption: str) -> tuple[int, int] | None:
    """Character span ``(start, end)`` of the rule-based first noun phrase, or None."""
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(caption)]
    start = next((i for i, (w, _, _) in enumerate(words) if w[0].isalnum()), None)
    if start is None:
        return None
    if words[start][0].lower() not in DETERMINERS and _is_boundary(words[start][0]):
        # A leading preposition or verb ("close up of a dog"): the phrase starts at the
        # next determiner, else at the next content word.
        rest = range(start + 1, len(words))
        start = next((i for i in rest if words[i][0].lower() in DETERMINERS), None)
        if start is None:
            start = next((i for i in rest if not _is_boundary(words[i][0])), None)
        if start is None:
            return None
    end = start + 1
    while end < len(words) and end - start < MAX_PHRASE_WORDS and not _is_boundary(words[end][0]):
        end += 1
    if words[start][0].lower() in DETERMINERS and end == start + 1:
        return None  # a bare determiner is no phrase
    return words[start][1], words[end - 1][2]


@MASKERS.register("fallback")
class RuleMasker:
    """Dependency-free first-noun-phrase masker (see the module docstring)."""

    name = "fallback"

    def __init__(self, placeholder: str = PLACEHOLDER, **_: object) -> None:
        self.placeholder = placeholder

    def mask_one(self, caption: str) -> str:
        if self.placeholder in caption:
            return caption
        span = first_noun_phrase(caption)
        if span is None:
            return _unmasked(caption, self.placeholder)
        return _replace_span(caption, span[0], span[1], self.placeholder)

    def __call__(self, captions: Sequence[str]) -> list[str]:
        return [self.mask_one(c) for c in captions]


@MASKERS.register("spacy")
class SpacyMasker:
    """spaCy noun-chunk masker: root chunk, else the root's subject, else the first chunk."""

    name = "spacy"

    def __init__(self, placeholder: str = PLACEHOLDER, spacy_model: str = "en_core_web_sm", batch_size: int = 256,
                 **_: object) -> None:
        try:
            import spacy
        except ImportError as err:
            raise ImportError("the 'spacy' masker needs spaCy: pip install 'opencir[nlp]'") from err
        try:
            self.nlp = spacy.load(spacy_model, disable=["ner", "lemmatizer"])
        except OSError as err:
            raise OSError(
                f"spaCy pipeline {spacy_model!r} is not installed: python -m spacy download {spacy_model} "
                f"(or use the 'fallback' masker)"
            ) from err
        if not self.nlp.has_pipe("parser"):
            raise ValueError(f"spaCy pipeline {spacy_model!r} has no dependency parser; noun chunks need one")
        self.placeholder, self.batch_size = placeholder, batch_size
        self._fallback = RuleMasker(placeholder)

    def _chunk(self, doc):  # -> spacy Span | None
        chunks = list(doc.noun_chunks)
        if not chunks:
            return None
        for chunk in chunks:
            if chunk.root.dep_ == "ROOT":
                return chunk
        for chunk in chunks:
            if chunk.root.dep_ in ("nsubj", "nsubjpass") and chunk.root.head.dep_ == "ROOT":
                return chunk
        return chunks[0]

    def __call__(self, captions: Sequence[str]) -> list[str]:
        out = []
        for caption, doc in zip(captions, self.nlp.pipe(captions, batch_size=self.batch_size)):
            if self.placeholder in caption:
                out.append(caption)
                continue
            chunk = self._chunk(doc)
            out.append(self._fallback.mask_one(caption) if chunk is None
                       else _replace_span(caption, chunk.start_char, chunk.end_char, self.placeholder))
        return out


def build_masker(name: str = "auto", placeholder: str = PLACEHOLDER, spacy_model: str = "en_core_web_sm") -> CaptionMasker:
    """A registered masker by name; ``"auto"`` = spaCy when it loads, else the fallback."""
    if name != "auto":
        return MASKERS.get(name)(placeholder=placeholder, spacy_model=spacy_model)
    try:
        return SpacyMasker(placeholder, spacy_model)
    except (ImportError, OSError, ValueError) as err:
        log.info("caption masking: spaCy unavailable (%s); using the rule-based fallback", str(err).splitlines()[0])
        return RuleMasker(placeholder)


def mask_captions(captions: Sequence[str], masker: str = "auto", placeholder: str = PLACEHOLDER) -> list[str]:
    """Mask the subject noun phrase of each caption (convenience over ``build_masker``)."""
    return build_masker(masker, placeholder)(captions)
