"""The exact query text each method's official code builds, on real annotation records.

Every expected string below was written by hand: the raw record was read from the JSON
files in ../shared/data/annotations and the official rule applied on paper:

* Pic2Word / Context-I2W ``src/data.py``: ``'a photo of * , {} and {}'.format(cap2, cap1)``
  on the raw FashionIQ captions (Context-I2W writes ``<|replace|>`` for ``*``); CIRR:
  ``'a photo of * , {}'.format(caption)``.
* TG-CIR / OFFSET ``datasets.py`` ``correct_text``: ``str(text).lower()``, every character
  of ``string.punctuation`` -> space, ``split()``, each word replaced by its spelling
  correction, joined by spaces; FashionIQ ``concat_text`` = "{c1} and {c2}"; Shoes the one
  caption (after ``strip()``); CIRR captions raw.
* CLIP4Cir eval: "C1 and c2", each stripped of ``.?,`` and spaces, the first ``capitalize()``d.

The spelling dictionaries used here are small hand-written test dictionaries (the
official ones are not redistributed): they check that the dictionary is applied word by
word after cleaning, exactly where the official code applies it.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.data.captions import normalise_text
from opencir.data.check import write_placeholder_images
from opencir.evaluation.protocols import evaluate_rankings
from opencir.methods.io import build_method

ANNOTATIONS = Path(os.environ.get("OPENCIR_ANNOTATIONS", Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"))
RNG = random.Random(0)

# test dictionaries (word -> correction), in the official file format
DICTIONARIES = {
    "dress": {},
    "shirt": {"alighter": "a lighter"},
    "toptee": {"coverups": "cover ups"},
    "shoes": {"lucite": "acrylic"},
}


@pytest.fixture(scope="module")
def methods():
    torch.manual_seed(0)
    spec = BackboneSpec("tiny-vit")
    small = {"depth": 1, "heads": 2, "dim_head": 8, "middle_dim": 16}
    return {
        "pic2word": build_method("pic2word", spec),
        "context-i2w": build_method("context-i2w", spec, small),
        "tg-cir": build_method("tg-cir", spec),
        "offset": build_method("offset", spec),
        "clip4cir": build_method("clip4cir", spec),
    }


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory) -> Path:
    """The official layout over the real files, with placeholder images for every val id
    (as the other FashionIQ tests do) and the test dictionaries in their own folder."""
    root = tmp_path_factory.mktemp("fashioniq-text")
    (root / "captions").symlink_to(ANNOTATIONS / "fashioniq" / "captions")
    (root / "image_splits").symlink_to(ANNOTATIONS / "fashioniq" / "image_splits")
    (root / "dictionaries").mkdir()
    for name in ("dress", "shirt", "toptee"):
        (root / "dictionaries" / f"correction_dict_{name}.json").write_text(json.dumps(DICTIONARIES[name]))
    dataset = load_dataset("fashioniq", root, "val", require_images=False)
    write_placeholder_images(r.path for r in dataset.images.values())
    return root


def _query(dataset, query_id: str):
    part = dataset.parts.get(query_id.split("/")[0], dataset) if dataset.parts else dataset
    return part, next(t for t in part.triplets if t.query_id == query_id)


def _text(method, dataset, query_id: str) -> str:
    part, triplet = _query(dataset, query_id)
    return method.query_text(part, triplet, False, RNG)


# ------------------------------------------------------------------- FashionIQ
def test_zero_shot_prompts_use_the_raw_captions(fiq_root, methods):
    ds = load_dataset("fashioniq", fiq_root, "val")
    # dress val 24: ["Is lighter with a floral pattern.", "is blue with straps"]
    assert _text(methods["pic2word"], ds, "dress/24") == "a photo of * , is blue with straps and Is lighter with a floral pattern."
    # shirt val 33: ["Is lighter colored and depicts animals.", "is alighter color with round neck ."]
    assert _text(methods["pic2word"], ds, "shirt/33") == (
        "a photo of * , is alighter color with round neck . and Is lighter colored and depicts animals.")
    # toptee val 192: ["The silicone coverUps are pink in color.", "They’re coverup cutlets & not clothes"]
    assert _text(methods["context-i2w"], ds, "toptee/192") == (
        "a photo of <|replace|> , They’re coverup cutlets & not clothes and The silicone coverUps are pink in color.")
    assert _text(methods["context-i2w"], ds, "dress/24") == (
        "a photo of <|replace|> , is blue with straps and Is lighter with a floral pattern.")


def test_raw_captions_change_the_tokens_of_264_201_430_val_queries(fiq_root, methods):
    """The issue's count: the old policy (edge ``.?,`` and spaces stripped) tokenised these
    many val queries differently from the official prompt."""
    pic2word = methods["pic2word"]
    ds = load_dataset("fashioniq", fiq_root, "val")
    changed = {}
    for name, part in ds.parts.items():
        official = [pic2word.query_text(part, t, False, RNG) for t in part.triplets]
        stripped = ["a photo of * , " + " and ".join(c.strip(".?, ") for c in reversed(t.captions)) for t in part.triplets]
        changed[name] = int((pic2word.tokenize(official) != pic2word.tokenize(stripped)).any(dim=1).sum())
    assert changed == {"dress": 264, "shirt": 201, "toptee": 430}


def test_tgcir_and_offset_clean_and_correct_as_the_official_code(fiq_root, methods):
    ds = load_dataset("fashioniq", fiq_root, "val", corrections=str(fiq_root / "dictionaries"))
    expected = {
        "dress/24": "is lighter with a floral pattern and is blue with straps",
        # "alighter" -> "a lighter" (test dictionary); the lone "." becomes a space
        "shirt/33": "is lighter colored and depicts animals and is a lighter color with round neck",
        "shirt/60": "has led zeppelin in red letters and is less colorful",
        # string.punctuation only: "&" goes, the typographic apostrophe of "They’re" stays
        "toptee/192": "the silicone cover ups are pink in color and they’re coverup cutlets not clothes",
    }
    for name in ("tg-cir", "offset"):
        assert {q: _text(methods[name], ds, q) for q in expected} == expected
    # the raw captions are kept: other methods see them unchanged
    assert _query(ds, "toptee/192")[1].captions == ("The silicone coverUps are pink in color.", "They’re coverup cutlets & not clothes")
    # CLIP4Cir eval: "C1 and c2", edges stripped, capitalize() lower-cases the rest of c1
    assert _text(methods["clip4cir"], ds, "shirt/60") == "Has led zeppelin in red letters and is less colorful"
    assert _text(methods["clip4cir"], ds, "dress/24") == "Is lighter with a floral pattern and is blue with straps"


def test_tgcir_and_offset_refuse_without_the_dictionaries(fiq_root, methods):
    ds = load_dataset("fashioniq", fiq_root, "val", corrections="none")
    for name in ("tg-cir", "offset"):
        with pytest.raises(ValueError, match=r"correction_dict_dress\.json .*require_spelling_corrections=false"):
            _text(methods[name], ds, "dress/24")
    lenient = build_method("tg-cir", BackboneSpec("tiny-vit"), {"require_spelling_corrections": False})
    with pytest.warns(UserWarning, match="WITHOUT spelling corrections"):
        assert _text(lenient, ds, "shirt/33") == "is lighter colored and depicts animals and is alighter color with round neck"


def test_official_punctuation_rule_by_hand():
    # "_" is ASCII punctuation (removed); typographic dashes and quotes are not (kept)
    assert normalise_text("Snake_Print — “Bold”!") == "snake print — “bold”"
    # a correction is inserted verbatim (the official code does not clean it again)
    assert normalise_text("Blu, please.", {"blu": "Navy-Blue"}) == "Navy-Blue please"


# ------------------------------------------------------------------------ Shoes
@pytest.fixture(scope="module")
def shoes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shoes-text")
    for name in ("relative_captions_shoes.json", "train_im_names.txt", "eval_im_names.txt"):
        (root / name).symlink_to(ANNOTATIONS / "shoes" / name)
    (root / "correction_dict_shoes.json").write_text(json.dumps(DICTIONARIES["shoes"]))  # where the official code reads it
    return root


def test_shoes_text_is_cleaned_and_corrected(shoes_root, methods):
    ds = load_dataset("shoes", shoes_root, "test", require_images=False)
    expected = {
        "863": "are black with a t strap",  # raw "are black with a T-strap"
        "1968": "have a tall clear acrylic sole",  # raw "have a tall, clear Lucite sole"; lucite -> acrylic
        "46": "has a fur texture and doesn t light up",  # raw "has a fur texture and doesn't light up"
    }
    for name in ("tg-cir", "offset"):
        assert {q: _text(methods[name], ds, q) for q in expected} == expected
    assert _query(ds, "863")[1].captions == ("are black with a T-strap",)
    bare = load_dataset("shoes", shoes_root, "test", require_images=False, corrections="none")
    with pytest.raises(ValueError, match=r"correction_dict_shoes\.json"):
        _text(methods["offset"], bare, "863")


# ------------------------------------------------------------------------- CIRR
def test_cirr_captions_are_used_raw(tmp_path, methods):
    root = tmp_path / "cirr"
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").symlink_to(ANNOTATIONS / "cirr" / "image_splits")
    (root / "cirr" / "captions" / "cap.rc2.val.json").symlink_to(ANNOTATIONS / "cirr" / "captions" / "cap.rc2.val.json")
    ds = load_dataset("cirr", root, "val", require_images=False)
    # val pairid 12062: "Fewer paper towels per pack"
    for name in ("tg-cir", "offset", "clip4cir"):
        assert _text(methods[name], ds, "12062") == "Fewer paper towels per pack"
    assert _text(methods["pic2word"], ds, "12062") == "a photo of * , Fewer paper towels per pack"
    assert _text(methods["context-i2w"], ds, "12062") == "a photo of <|replace|> , Fewer paper towels per pack"


# ----------------------------------------------------------- gallery conventions
def test_three_gallery_conventions_build_the_official_galleries(fiq_root):
    sizes = {}
    for convention in ("full-val", "full-val-no-reference", "original-split", "val-split"):
        ds = load_dataset("fashioniq", fiq_root, "val", gallery=convention)  # images required: placeholders
        sizes[convention] = {c: len(p.gallery_ids) for c, p in ds.parts.items()}
        for part in ds.parts.values():
            assert all(part.image_path(i).is_file() for i in part.gallery_ids[:50])
        excluded = {c: p.protocol.exclude_reference for c, p in ds.parts.items()}
        assert set(excluded.values()) == {convention != "full-val"}
    # lines of split.<cat>.val.json, and the distinct candidate/target ids of the val triplets
    assert sizes["full-val"] == sizes["full-val-no-reference"] == {"dress": 3817, "shirt": 6346, "toptee": 5373}
    assert sizes["original-split"] == sizes["full-val-no-reference"]  # OFFSET's name for it
    assert sizes["val-split"] == {"dress": 2628, "shirt": 3089, "toptee": 2902}


def test_metrics_name_the_convention_and_it_matters(fiq_root):
    """The same rankings (reference first, target second) score differently: the target is
    2nd when the reference is kept (full-val), 1st when it is removed."""
    scores = {}
    for convention in ("full-val", "full-val-no-reference", "val-split"):
        ds = load_dataset("fashioniq", fiq_root, "val", category="dress", gallery=convention)
        rankings = {}
        for t in ds.triplets:
            rest = [i for i in ds.gallery_ids[:62] if i not in (t.reference_id, t.target_id)][:60]
            rankings[t.query_id] = [t.reference_id, t.target_id, *rest]
        scores[convention] = evaluate_rankings(ds, rankings)
    assert {c: (m["R@1"], m["R@10"], m["gallery_convention"]) for c, m in scores.items()} == {
        "full-val": (0.0, 100.0, "full-val"),
        "full-val-no-reference": (100.0, 100.0, "full-val-no-reference"),
        "val-split": (100.0, 100.0, "val-split"),
    }
