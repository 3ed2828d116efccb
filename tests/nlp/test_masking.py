"""Subject masking for Context-I2W contexts: the rule-based fallback and the masker registry."""
from __future__ import annotations

import pytest

from opencir.nlp import MASKERS, build_masker, mask_captions
from opencir.nlp.masking import first_noun_phrase


@pytest.mark.parametrize(
    "caption, masked",
    [
        ("a small red circle at top left and a large blue square at center",
         "<|replace|> at top left and a large blue square at center"),
        ("the dog is running on the beach", "<|replace|> is running on the beach"),
        ("dogs running in a park", "<|replace|> running in a park"),
        ("actor attends the premiere", "<|replace|> attends the premiere"),
        ("in the kitchen, a chef cooks", "in <|replace|>, a chef cooks"),
        ("person, with a hat", "<|replace|>, with a hat"),
        ("", "<|replace|>"),
        ("...", "<|replace|> , ..."),
        ("<|replace|> at top left", "<|replace|> at top left"),
    ],
)
def test_fallback_masks_the_first_noun_phrase(caption, masked):
    assert mask_captions([caption], masker="fallback") == [masked]


def test_phrase_spans_and_limits():
    assert first_noun_phrase("a very big old red wooden car") == (0, 18)  # "a very big old red": 5 words at most
    assert first_noun_phrase("the") is None
    assert first_noun_phrase("and or but") is None


def test_masker_registry():
    assert {"spacy", "fallback"} <= set(MASKERS.names())
    assert build_masker("fallback", placeholder="[X]")(["a cat on a mat"]) == ["[X] on a mat"]
    assert build_masker("auto").placeholder == "<|replace|>"  # spaCy when installed, else the fallback
    with pytest.raises(KeyError, match="unknown caption masker"):
        build_masker("nltk")
