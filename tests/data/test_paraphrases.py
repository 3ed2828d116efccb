"""cir-shapes paraphrases: generated templates per edit type that keep every slot's value."""
from __future__ import annotations

import pytest

from opencir.data import load_dataset
from opencir.data.synthetic import EDITS, paraphrase, paraphrase_templates, paraphrased


def test_templates_are_generated_per_edit_type_and_template_zero_is_the_original(shapes_root):
    for kind in EDITS:
        templates = paraphrase_templates(kind)
        assert len(templates) == len(set(templates)) == 15
    test = load_dataset("cir-shapes", shapes_root, "test")
    assert [t.captions for t in paraphrased(test, 0).triplets] == [t.captions for t in test.triplets]
    for j in (1, 2, 7):
        reworded = paraphrased(test, j)
        assert [t.query_id for t in reworded.triplets] == [t.query_id for t in test.triplets]
        assert all(a.captions != b.captions for a, b in zip(reworded.triplets, test.triplets))


def test_paraphrases_keep_the_slot_values():
    assert paraphrase("recolour", "make the red circle blue", 4) == "change the colour of the red circle to blue"
    assert paraphrase("move", "move the small square to the top left", 5) == "please move the small square to the top left"
    assert paraphrase("add", "add a small red circle at top left", 1) == "put a small red circle at the top left"
    assert paraphrase("remove", "remove the cross", 3) == "get rid of the cross"
    assert paraphrase("resize", "make the large triangle small", 13) == "now the large triangle should be small"


def test_a_text_that_is_not_generated_is_refused():
    with pytest.raises(ValueError, match="not a generated 'recolour' modification text"):
        paraphrase("recolour", "make it pop", 1)
