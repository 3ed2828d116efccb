"""Caption policies (spec 1.7) and TargetPad (spec 2.3), checked by hand."""
from __future__ import annotations

import random

import pytest
from PIL import Image

from opencir.data.captions import CAPTION_POLICIES, apply_caption_policy, normalise_text
from opencir.data.transforms import TRANSFORMS, build_transform, target_pad
from opencir.registry import UnknownNameError

CAPS = ("is red, ", " has long sleeves.")


def test_clip4cir_eval_is_c1_and_c2():
    assert apply_caption_policy("clip4cir", CAPS, train=False) == "Is red and has long sleeves"


def test_clip4cir_train_draws_four_variants_uniformly():
    rng = random.Random(0)
    seen = {}
    for _ in range(4000):
        text = apply_caption_policy("clip4cir", CAPS, True, rng)
        seen[text] = seen.get(text, 0) + 1
    assert set(seen) == {"Is red and has long sleeves", "Has long sleeves and is red", "Is red", "Has long sleeves"}
    assert all(800 < count < 1200 for count in seen.values())


def test_other_policies():
    assert apply_caption_policy("reversed", CAPS, False) == "has long sleeves and is red"
    assert apply_caption_policy("tgcir", ("Is RED, shiny!", "longer"), False) == "is red shiny and longer"
    assert normalise_text("Is  blu-e", {"blu": "blue"}) == "is blue e"
    with pytest.raises(UnknownNameError, match="valid caption policys|valid caption policy"):
        apply_caption_policy("nope", CAPS, False)
    assert "first" in CAPTION_POLICIES


def test_target_pad_by_hand():
    # 100x50: aspect 2 >= 1.25 -> s = 100/1.25 = 80; vertical pad floor((80-50)/2)=15 each side
    assert target_pad(Image.new("RGB", (100, 50)), 1.25).size == (100, 80)
    # 100x90: aspect 1.11 < 1.25 -> unchanged
    assert target_pad(Image.new("RGB", (100, 90)), 1.25).size == (100, 90)
    # squarepad of 40x100: s = 100 -> horizontal pad 30 each side
    padded = target_pad(Image.new("RGB", (40, 100), (255, 255, 255)), 1.0)
    assert padded.size == (100, 100) and padded.getpixel((0, 50)) == (0, 0, 0)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_gives_normalised_square_tensor(name):
    t = build_transform(name, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = t(Image.new("RGB", (80, 40), (255, 255, 255)))
    assert tuple(x.shape) == (3, 32, 32)
    assert float(x.max()) <= 1.0 + 1e-6
