"""Image-caption corpora (table, folder, webdataset shards) and image-only training on them."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from opencir.backbones import BackboneSpec
from opencir.cli import main as cli_main
from opencir.data import load_dataset
from opencir.data.corpora import expand_shards, iter_webdataset
from opencir.data.images import load_image
from opencir.methods.io import build_method
from opencir.training.config import DatasetConfig, RunConfig, TrainConfig
from opencir.training.trainer import Trainer


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_png((40 * i, 0, 0)))


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pic2word_style_tsv_table(tmp_path):
    _images(tmp_path / "img", ["a.png", "b.png"])
    (tmp_path / "train.csv").write_text("filepath\ttitle\nimg/a.png\ta red square\nimg/b.png\t\nimg/a.png\tred again\n")
    ds = load_dataset("image-captions", tmp_path, "train")  # finds train.csv, sniffs the tab separator
    assert list(ds.images) == ["img/a.png", "img/b.png", "img/a.png#2"]
    assert [r.caption for r in ds.images.values()] == ["a red square", None, "red again"]
    assert ds.images["img/b.png"].path == tmp_path / "img" / "b.png"
    assert ds.triplets == [] and ds.protocol is None and ds.info["format"] == "table" and ds.info["captioned"] == 2


def test_csv_with_named_columns_and_clear_errors(tmp_path):
    _images(tmp_path / "pics", ["x.png"])
    table = tmp_path / "pairs.csv"
    table.write_text("image,sentence\nx.png,\"a dog, running\"\n")
    ds = load_dataset("image-captions", tmp_path, "train", source="pairs.csv", caption_column="sentence",
                      image_root=str(tmp_path / "pics"))
    assert ds.images["x.png"].caption == "a dog, running" and ds.images["x.png"].path == tmp_path / "pics" / "x.png"
    with pytest.raises(KeyError, match=r"pairs.csv: no caption column 'title'; columns are \['image', 'sentence'\]"):
        load_dataset("image-captions", tmp_path, "train", source="pairs.csv", caption_column="title")
    with pytest.raises(KeyError, match="unknown image-captions option"):
        load_dataset("image-captions", tmp_path, "train", source="pairs.csv", captions="x")
    (tmp_path / "nopath.csv").write_text("name,caption\nx.png,a\n")
    with pytest.raises(KeyError, match="no image path column"):
        load_dataset("image-captions", tmp_path, "train", source="nopath.csv")


def test_image_folder_with_sidecar_captions(tmp_path):
    _images(tmp_path / "train", ["b/two.png", "one.jpg"])
    (tmp_path / "train" / "one.txt").write_text("the first image\n")
    ds = load_dataset("image-captions", tmp_path, "train")
    assert ds.info["format"] == "folder"
    assert {k: r.caption for k, r in ds.images.items()} == {"b/two.png": None, "one.jpg": "the first image"}


def test_webdataset_shards_stream_and_unpack_once(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "cc-000.tar", [("s0.png", _png((1, 2, 3))), ("s0.txt", b"a red circle"),
                                   ("s1.jpg", _png((9, 9, 9))), ("s1.json", json.dumps({"caption": "a cat"}).encode())])
    _shard(shards / "cc-001.tar", [("d/s2.png", _png((5, 5, 5))), ("d/s2.txt", b""), ("meta.json", b"{}")])
    assert expand_shards(str(shards / "cc-{000..001}.tar")) == [shards / "cc-000.tar", shards / "cc-001.tar"]
    samples = list(iter_webdataset(str(shards / "cc-*.tar")))
    assert [(s.key, s.extension, s.caption) for s in samples] == [("s0", "png", "a red circle"), ("s1", "jpg", "a cat"),
                                                                   ("d/s2", "png", None)]
    ds = load_dataset("image-captions", tmp_path, "train", source="shards", extract_dir=str(tmp_path / "unpacked"))
    assert ds.info["format"] == "webdataset"
    assert list(ds.images) == ["cc-000/s0", "cc-000/s1", "cc-001/d/s2"]
    assert ds.images["cc-000/s1"].path.read_bytes() == _png((9, 9, 9))
    assert (tmp_path / "unpacked" / "cc-000.done.json").is_file()
    (tmp_path / "unpacked" / "cc-000" / "s0.png").write_bytes(b"changed")  # a finished shard is not unpacked again
    load_dataset("image-captions", tmp_path, "train", source="shards", extract_dir=str(tmp_path / "unpacked"))
    assert (tmp_path / "unpacked" / "cc-000" / "s0.png").read_bytes() == b"changed"
    (shards / "cc-002.tar").write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="cannot read webdataset shard .*cc-002.tar"):
        list(iter_webdataset(shards))
    with pytest.raises(FileNotFoundError, match="shard not found"):
        expand_shards(str(shards / "cc-{000..005}.tar"))


def test_webdataset_shards_are_read_in_place_by_default(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "cc-000.tar", [("s0.png", _png((1, 2, 3))), ("s0.txt", b"a red circle"),
                                   ("s1.jpg", _png((9, 9, 9))), ("s1.json", json.dumps({"caption": "a cat"}).encode())])
    _shard(shards / "cc-001.tar", [("d/s2.png", _png((5, 5, 5))), ("d/s2.txt", b""), ("meta.json", b"{}")])
    ds = load_dataset("image-captions", tmp_path, "train", source="shards")
    assert list(ds.images) == ["cc-000/s0", "cc-000/s1", "cc-001/d/s2"]
    assert [r.caption for r in ds.images.values()] == ["a red circle", "a cat", None]
    assert [str(r.path) for r in ds.images.values()] == [f"{shards}/cc-000.tar::s0.png", f"{shards}/cc-000.tar::s1.jpg",
                                                          f"{shards}/cc-001.tar::d/s2.png"]
    assert all(r.mask_path is None for r in ds.images.values())
    assert load_image(ds.images["cc-001/d/s2"].path).getpixel((0, 0)) == (5, 5, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # nothing extracted
    with tarfile.open(shards / "cc-002.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("x.png")
        info.size = len(_png((0, 0, 0)))
        tar.addfile(info, io.BytesIO(_png((0, 0, 0))))
    with pytest.raises(ValueError, match="cc-002.tar.gz is gzip-compressed .* set the option extract_dir"):
        load_dataset("image-captions", tmp_path, "train", source="shards")
    assert load_dataset("image-captions", tmp_path, "train", source="shards", extract_dir=str(tmp_path / "x")).info["images"] == 4


def test_pic2word_trains_one_epoch_on_shards_without_extracting(tmp_path):
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    names = ["red", "green", "blue", "yellow", "cyan", "magenta"]
    for part in range(2):
        members = []
        for i in range(3):
            k = 3 * part + i
            members += [(f"{k:04d}.png", _png(colours[k])), (f"{k:04d}.txt", f"a {names[k]} square".encode())]
        _shard(tmp_path / f"train-{part:05d}.tar", members)
    corpus = load_dataset("image-captions", tmp_path, "train")  # finds train-*.tar
    assert corpus.info["format"] == "webdataset" and len(corpus.images) == 6
    assert all("::" in str(r.path) for r in corpus.images.values())
    torch.manual_seed(0)
    method = build_method("pic2word", BackboneSpec("tiny-vit"))
    config = RunConfig(method="pic2word", dataset=DatasetConfig(name="image-captions", root=str(tmp_path), val_split=None),
                       train=TrainConfig(epochs=1, batch_size=3, lr=1e-3, amp=False), output_dir=str(tmp_path / "run"),
                       device="cpu", cache_dir=None)
    before = {n: p.detach().clone() for n, p in method.trainable_parameters()}
    summary = Trainer(method, config, corpus, None).fit()
    assert summary["epochs_run"] == 1 and (tmp_path / "run" / "best" / "config.json").is_file()
    assert any(not torch.equal(p, before[n]) for n, p in method.trainable_parameters())
    assert not (tmp_path / "extracted").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "train-00000.tar", "train-00001.tar"]


def test_mask_captions_command_then_train_context_i2w_on_the_corpus(tmp_path):
    _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    rows = "".join(f"img/{i}.png\ta {c} square on the left\n" for i, c in enumerate(["red", "blue", "green"] * 2))
    (tmp_path / "train.tsv").write_text("filepath\tcaption\n" + rows)
    out = tmp_path / "masked.tsv"
    assert cli_main(["mask-captions", "--root", str(tmp_path), "--out", str(out), "--masker", "fallback"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "filepath\tcaption\tmasked_caption"
    assert lines[1].split("\t")[1:] == ["a red square on the left", "<|replace|> on the left"]

    corpus = load_dataset("image-captions", out, "train", caption_column="masked_caption")
    assert all(r.caption == "<|replace|> on the left" for r in corpus.images.values())
    torch.manual_seed(0)
    method = build_method("context-i2w", BackboneSpec("tiny-vit"),
                          {"depth": 1, "heads": 2, "dim_head": 8, "masker": "none", "cache_image_features": False})
    assert not method.requirements.image_encoder_frozen  # streams pixels with the random-crop train transform
    config = RunConfig(method="context-i2w", dataset=DatasetConfig(name="image-captions", root=str(out), val_split=None),
                       train=TrainConfig(epochs=1, batch_size=3, lr=1e-3, amp=False), output_dir=str(tmp_path / "run"),
                       device="cpu", cache_dir=None)
    before = {n: p.detach().clone() for n, p in method.trainable_parameters()}
    summary = Trainer(method, config, corpus, None).fit()
    assert summary["epochs_run"] == 1 and (tmp_path / "run" / "best" / "config.json").is_file()
    assert any(not torch.equal(p, before[n]) for n, p in method.trainable_parameters())
