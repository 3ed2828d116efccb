"""`opencir masks`: official naming, 8-bit soft masks, the caption -> CLIPSeg pipeline
(a tiny random CLIPSeg built from CLIPSegConfig), resuming, unreadable images, and
adopting released masks."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from opencir.cli import main
from opencir.data import load_dataset
from opencir.data.synthetic import generate_cir_shapes
from opencir.masks import (
    MaskModelError,
    build_captioner,
    build_segmenter,
    import_released,
    official_mask_path,
    plan_masks,
    read_mask,
    require_mask_file,
    save_mask,
    write_masks,
)
from opencir.methods.io import build_method
from opencir.backbones import BackboneSpec
from opencir.encoding.features import ImageFolderDataset, method_transform
from opencir.masks.segmenters import ClipSegSegmenter

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------ fixtures
def _clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer built from open_clip's shipped vocabulary (no download)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory) -> Path:
    """A tiny random CLIPSeg (32 px) saved with its processor like a hub model."""
    folder = tmp_path_factory.mktemp("tiny-clipseg")
    torch.manual_seed(0)
    config = transformers.CLIPSegConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16, reduce_dim=16, extract_layers=[1, 2], decoder_num_attention_heads=2,
        decoder_intermediate_size=20)
    transformers.CLIPSegForImageSegmentation(config).save_pretrained(folder)
    image_processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32},
                                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    transformers.CLIPSegProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer(folder)).save_pretrained(folder)
    return folder


def _shapes(root: Path) -> Path:
    return generate_cir_shapes(root, seed=1, train_triplets=6, val_triplets=3, test_triplets=3, image_size=32, workers=1)


def _splits(root: Path):
    return [load_dataset("cir-shapes", root, split) for split in ("train", "val", "test")]


# --------------------------------------------------------------------- tests
def _fashioniq(root: Path) -> Path:
    """A two-category FashionIQ val split in the flat images/ layout, with placeholder images."""
    for category, ids in (("dress", ["D1", "D2", "D3"]), ("shirt", ["S1", "S2"])):
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "image_splits").mkdir(exist_ok=True)
        triplets = [{"candidate": ids[0], "target": ids[1], "captions": ["is red", "longer"]}]
        (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(triplets))
        (root / "image_splits" / f"split.{category}.val.json").write_text(json.dumps(ids))
        (root / "images").mkdir(exist_ok=True)
        for i in ids:
            Image.new("RGB", (40, 48), (200, 30, 30)).save(root / "images" / f"{i}.png")
    return root


def test_official_mask_names():
    assert official_mask_path("fashioniq", "/d/resized_image/dress/B00X.jpg", "B00X", "/d") == Path(
        "/d/resized_image/dress_segmask/B00X-seg.png")
    assert official_mask_path("fashioniq", "/d/images/B00X.png", "B00X", "/d", "toptee") == Path(
        "/d/toptee_segmask/B00X-seg.png")
    assert official_mask_path("shoes", "/s/womens_boots/0/img_womens_boots_1.jpg", "img_womens_boots_1", "/s") == Path(
        "/s/womens_boots/0/img_womens_boots_1-segmask.jpg")
    assert official_mask_path("cirr", "/c/dev/dev-0-0-img0.png", "dev-0-0-img0", "/c") == Path(
        "/c/dev/dev-0-0-img0-segmask.png")
    assert official_mask_path("cir-shapes", "/x/images/0000001.png", "0000001", "/x") == Path("/x/masks/0000001.png")


def test_masks_are_floor_255_m_in_8_bits(tmp_path):
    mask = torch.tensor([[0.0, 0.5, 0.999], [1.0, 0.25, 0.1]])
    path = save_mask(mask, tmp_path / "a" / "m.png")
    with Image.open(path) as image:
        assert image.mode == "L" and image.format == "PNG"
        assert np.asarray(image).tolist() == [[0, 127, 254], [255, 63, 25]]
    assert torch.allclose(read_mask(path), torch.tensor([[0, 127, 254], [255, 63, 25]]) / 255.0)
    with Image.open(save_mask(mask, tmp_path / "m-segmask.jpg")) as image:
        assert image.format == "JPEG" and image.mode == "L"
    assert not list(tmp_path.rglob(".*partial*"))


def test_pipeline_tiny_clipseg_resumes_and_reports_unreadable(tiny_clipseg, tmp_path):
    root = _shapes(tmp_path / "shapes")
    shutil.rmtree(root / "masks")
    jobs = plan_masks(_splits(root))
    assert len(jobs) == len({j.mask_path for j in jobs}) == len(list((root / "images").iterdir()))
    broken = jobs[2].record.path
    broken.write_bytes(b"not a png")
    segmenter = ClipSegSegmenter.from_pretrained(str(tiny_clipseg))
    captioner = build_captioner("record")

    report = write_masks(jobs[:5], captioner, segmenter, batch_size=2, progress=False)
    assert (report.written, report.skipped) == (4, 0)
    assert [f.path for f in report.failures] == [broken] and "cannot read image" in report.failures[0].reason
    assert str(broken) in report.summary()
    first = jobs[0]
    expected = segmenter([Image.open(first.record.path).convert("RGB")], [first.record.caption])[0]
    with Image.open(first.mask_path) as image:
        assert image.size == (32, 32)  # the segmenter's output size, as released
        assert np.array_equal(np.asarray(image), (expected.numpy() * 255).astype(np.uint8))
    stamp = first.mask_path.stat().st_mtime_ns

    report = write_masks(jobs, captioner, segmenter, batch_size=4, progress=False)  # resumes
    assert (report.written, report.skipped, len(report.failures)) == (len(jobs) - 5, 4, 1)
    assert first.mask_path.stat().st_mtime_ns == stamp
    assert report.captions[jobs[-1].record.image_id] == jobs[-1].record.caption

    resized = write_masks(jobs[:1], captioner, segmenter, overwrite=True, resize_to_image=True, progress=False)
    assert resized.written == 1 and read_mask(first.mask_path).shape == (32, 32)


def test_cli_masks_end_to_end(tiny_clipseg, tmp_path, capsys):
    root = _shapes(tmp_path / "shapes")
    shutil.rmtree(root / "masks")
    captions = tmp_path / "captions.json"
    argv = ["masks", "--dataset", "cir-shapes", "--root", str(root), "--captioner", "fixed", "--prompt", "the shapes",
            "--segmenter-model", str(tiny_clipseg), "--device", "cpu", "--captions-out", str(captions)]
    assert main(argv) == 0
    written = sorted((root / "masks").iterdir())
    assert len(written) == len(list((root / "images").iterdir()))
    assert set(json.loads(captions.read_text()).values()) == {"the shapes"}
    with Image.open(written[0]) as image:
        assert image.mode == "L"
    capsys.readouterr()
    assert main(argv) == 0  # everything present: no model is even loaded
    assert "nothing to do" in capsys.readouterr().out


def test_cli_cir_shapes_ground_truth_needs_no_model(shapes_root, capsys):
    argv = ["masks", "--dataset", "cir-shapes", "--root", str(shapes_root), "--segmenter-model", "/nonexistent/model"]
    assert main(argv) == 0
    assert "all" in capsys.readouterr().out


def test_from_released_validates_and_links(tmp_path, capsys):
    root = _shapes(tmp_path / "shapes")
    released = tmp_path / "release" / "cir-shapes-masks"
    shutil.move(str(root / "masks"), str(released))  # a differently arranged release
    names = sorted(p.name for p in released.iterdir())
    (released / names[0]).write_bytes(b"garbage")
    (released / names[1]).unlink()
    jobs = plan_masks(_splits(root))

    report = import_released(jobs, tmp_path / "release", progress=False)
    assert report.written == len(jobs) - 2
    reasons = {f.path.name: f.reason for f in report.failures}
    assert set(reasons) == {names[0], names[1]}
    assert "cannot read" in reasons[names[0]] and "no released mask" in reasons[names[1]]
    linked = root / "masks" / names[2]
    assert linked.is_symlink() and linked.resolve() == (released / names[2]).resolve()

    code = main(["masks", "--dataset", "cir-shapes", "--root", str(root), "--from-released", str(released),
                 "--link", "copy"])
    assert code == 1  # the two bad masks are still reported
    assert names[0] in capsys.readouterr().err


def test_clear_errors_for_unknown_or_unavailable_models(tmp_path):
    with pytest.raises(KeyError, match="valid segmenters: clipseg"):
        build_segmenter("sam")
    with pytest.raises(MaskModelError, match="cannot load segmentation model"):
        build_segmenter("clipseg", str(tmp_path / "missing-model"))
    with pytest.raises(ValueError, match="needs a prompt"):
        build_captioner("fixed")


def test_blip_captioner_on_a_tiny_random_blip(tmp_path):
    from opencir.masks.captioners import BlipCaptioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "dress"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=transformers.BertTokenizer(str(tmp_path / "vocab.txt")))
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=40,
                         bos_token_id=2, pad_token_id=0, sep_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8))
    captioner = BlipCaptioner(transformers.BlipForConditionalGeneration(config), processor, max_new_tokens=4)
    captions = captioner([Image.new("RGB", (40, 40)), Image.new("RGB", (30, 50), (255, 0, 0))], [None, None])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_fashioniq_masks_reach_the_method(tiny_clipseg, tmp_path):
    """A real dataset reader without mask paths: the official names (per category) are used by
    `opencir masks` and by the data pipeline that feeds OFFSET."""
    root = _fashioniq(tmp_path / "fiq")
    options = ["--option", "category=dress,shirt", "--option", "gallery=val-split"]
    argv = ["masks", "--dataset", "fashioniq", "--root", str(root), "--split", "val", *options,
            "--captioner", "fixed", "--prompt", "a garment", "--segmenter-model", str(tiny_clipseg), "--device", "cpu"]
    dataset = load_dataset("fashioniq", root, "val", category="dress,shirt", gallery="val-split")
    with pytest.raises(FileNotFoundError, match="opencir masks --dataset fashioniq"):
        require_mask_file(dataset, dataset.images["D1"])
    assert main(argv) == 0
    assert sorted(p.name for p in (root / "dress_segmask").iterdir()) == ["D1-seg.png", "D2-seg.png", "D3-seg.png"]
    assert sorted(p.name for p in (root / "shirt_segmask").iterdir()) == ["S1-seg.png", "S2-seg.png"]
    method = build_method("offset", BackboneSpec("tiny-vit"))
    _, transform = method_transform(method)
    item = ImageFolderDataset(dataset, ["S2"], transform, with_masks=True)[0]
    assert item["masks"].shape == item["pixels"].shape == (3, 32, 32)
