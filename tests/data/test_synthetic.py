"""cir-shapes: determinism, disjoint splits, held-out combinations, one correct target."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from opencir.data import list_datasets, load_dataset
from opencir.data.synthetic import (HELD_OUT, MAX_OBJECTS, SceneObject, generate_cir_shapes, generate_if_missing,
                                    referring_expression, render_scene)


def _objects(caption: str) -> list[tuple[str, ...]]:
    """Parse "a large red circle at top left and ..." into (size, colour, shape, position)."""
    out = []
    for part in caption.split(" and "):
        words = part.split()
        out.append((words[1], words[2], words[3], " ".join(words[5:])))
    return out


def test_registered_like_a_real_benchmark():
    assert "cir-shapes" in list_datasets()


def test_splits_are_disjoint_and_hold_out_combinations(shapes_root):
    splits = {s: load_dataset("cir-shapes", shapes_root, s) for s in ("train", "val", "test")}
    assert [len(splits[s].triplets) for s in ("train", "val", "test")] == [160, 40, 40]
    captions = {s: {d.images[i].caption for i in d.gallery_ids} for s, d in splits.items()}
    assert not captions["train"] & captions["val"] and not captions["train"] & captions["test"]
    assert not captions["val"] & captions["test"]
    held = {(shape, colour) for shape, colour in HELD_OUT}
    for split in ("train", "val"):
        for caption in captions[split]:
            assert not {(o[2], o[1]) for o in _objects(caption)} & held
    test = splits["test"]
    assert any(t.extra["held_out"] for t in test.triplets)


def test_every_query_has_exactly_one_correct_target(shapes_root):
    test = load_dataset("cir-shapes", shapes_root, "test")
    captions = [test.images[i].caption for i in test.gallery_ids]
    assert len(captions) == len(set(captions))  # one image per distinct scene
    for t in test.triplets:
        assert t.target_id in test.gallery_ids and t.reference_id in test.gallery_ids
        assert t.target_id != t.reference_id
        assert all(n in test.gallery_ids and n != t.target_id for n in t.extra["negatives"])
        assert 1 <= len(_objects(test.images[t.reference_id].caption)) <= MAX_OBJECTS
        assert 1 <= len(_objects(test.images[t.target_id].caption)) <= MAX_OBJECTS
    assert test.protocol.exclude_reference is False  # the reference is a hard negative


def test_edit_texts_match_the_target(shapes_root):
    train = load_dataset("cir-shapes", shapes_root, "train")
    kinds = Counter(t.extra["edit"] for t in train.triplets)
    assert set(kinds) == {"add", "remove", "recolour", "resize", "move"}
    for t in train.triplets:
        ref = _objects(train.images[t.reference_id].caption)
        tgt = _objects(train.images[t.target_id].caption)
        text = t.captions[0]
        if t.extra["edit"] == "add":
            assert len(tgt) == len(ref) + 1 and text.startswith("add a ")
            added = (set(tgt) - set(ref)).pop()
            assert text == "add a " + " ".join(added[:3]) + " at " + added[3]
        elif t.extra["edit"] == "remove":
            assert len(tgt) == len(ref) - 1 and text.startswith("remove the ")
        elif t.extra["edit"] == "recolour":
            assert text.split()[-1] in {o[1] for o in tgt}
        elif t.extra["edit"] == "move":
            assert text.split(" to the ")[1] in {o[3] for o in tgt}


def test_referring_expression_is_shortest_unique():
    a = SceneObject(0, "circle", "red", "large")
    b = SceneObject(1, "circle", "blue", "large")
    c = SceneObject(2, "square", "blue", "small")
    scene = (a, b, c)
    assert referring_expression(scene, c) == "the square"
    assert referring_expression(scene, a) == "the red circle"
    d = SceneObject(3, "circle", "red", "large")
    assert referring_expression((a, d), a) == "the large red circle at top left"


def test_generation_is_deterministic(tmp_path):
    a = generate_cir_shapes(tmp_path / "a", seed=5, train_triplets=20, val_triplets=5, test_triplets=5, image_size=32, workers=1)
    b = generate_cir_shapes(tmp_path / "b", seed=5, train_triplets=20, val_triplets=5, test_triplets=5, image_size=32, workers=1)
    for split in ("train", "val", "test"):
        assert (a / f"{split}.json").read_bytes() == (b / f"{split}.json").read_bytes()
    first = sorted((a / "images").iterdir())[0].name
    assert (a / "images" / first).read_bytes() == (b / "images" / first).read_bytes()
    c = generate_cir_shapes(tmp_path / "c", seed=6, train_triplets=20, val_triplets=5, test_triplets=5, image_size=32, workers=1)
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()


def test_generate_if_missing_reuses_matching_folder(tmp_path):
    root = generate_if_missing(tmp_path / "s", seed=1, train_triplets=10, val_triplets=5, test_triplets=5, image_size=32)
    stamp = (root / "train.json").stat().st_mtime_ns
    generate_if_missing(root, seed=1, train_triplets=10, val_triplets=5, test_triplets=5, image_size=32)
    assert (root / "train.json").stat().st_mtime_ns == stamp
    generate_if_missing(root, seed=2, train_triplets=10, val_triplets=5, test_triplets=5, image_size=32)
    assert json.loads((root / "meta.json").read_text())["seed"] == 2


def test_masks_cover_exactly_the_objects():
    scene = (SceneObject(4, "square", "red", "large"),)
    image, mask = render_scene(scene, 60)
    assert mask.getpixel((30, 30)) == 255 and mask.getpixel((2, 2)) == 0
    assert image.getpixel((30, 30)) == (220, 40, 40)


def test_wrong_folder_and_split_give_clear_errors(tmp_path, shapes_root):
    with pytest.raises(FileNotFoundError, match="not a cir-shapes folder"):
        load_dataset("cir-shapes", tmp_path, "train")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_dataset("cir-shapes", shapes_root, "dev")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.json").write_text('{"triplets": [{"query_id": "q"}], "images": {}, "gallery": []}')
    with pytest.raises(ValueError, match="malformed cir-shapes split file"):
        load_dataset("cir-shapes", bad, "train")


def test_images_are_real_pngs(shapes_root):
    train = load_dataset("cir-shapes", shapes_root, "train")
    record = train.images[train.gallery_ids[0]]
    with Image.open(record.path) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    with Image.open(record.mask_path) as mask:
        assert mask.mode == "L"
