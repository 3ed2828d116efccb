"""load_image / decode_image on files, in-memory bytes and tar-shard members (read in place)."""
from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from opencir.data import images
from opencir.data.images import (ImageLoadError, decode_image, image_exists, load_image, member_path,
                                 shard_members, split_member_path)


def _png(colour, size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path, samples, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def shard(tmp_path):
    files = {"a.png": _png((255, 0, 0)), "sub/b.png": _png((0, 9, 200), (5, 7)), "a.txt": b"a red box"}
    for name, data in files.items():
        (tmp_path / "orig" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "orig" / name).write_bytes(data)
    return _shard(tmp_path / "s-000.tar", [*files.items(), ("bad.png", b"\x89PNG\r\n\x1a\n garbage")])


def test_member_paths_read_the_same_pixels_as_the_files(shard, tmp_path):
    ref = member_path(shard, "sub/b.png")
    assert str(ref) == f"{shard}::sub/b.png" and split_member_path(ref) == (shard, "sub/b.png")
    assert split_member_path(tmp_path / "plain.png") is None
    for name in ("a.png", "sub/b.png"):
        from_tar, from_file = load_image(member_path(shard, name)), load_image(tmp_path / "orig" / name)
        assert from_tar.size == from_file.size
        assert np.array_equal(np.asarray(from_tar), np.asarray(from_file))
    assert load_image(f"{shard}::./sub/b.png", mode="L").mode == "L"  # './' prefixes are normalised
    index = shard_members(shard)
    assert list(index) == ["a.png", "sub/b.png", "a.txt", "bad.png"]
    offset, size = index["a.txt"]
    assert shard.read_bytes()[offset:offset + size] == b"a red box"
    assert image_exists(member_path(shard, "a.png")) and not image_exists(member_path(shard, "zz.png"))


def test_missing_and_corrupt_members_name_shard_and_member(shard, tmp_path):
    with pytest.raises(ImageLoadError, match=r"image not found: .*s-000.tar::nope.png \(tar shard .*s-000.tar has no member 'nope.png'\)") as err:
        load_image(member_path(shard, "nope.png"))
    assert err.value.reason == "missing"
    with pytest.raises(ImageLoadError, match=r"image not found: .*gone.tar::a.png \(no tar shard .*gone.tar\)"):
        load_image(member_path(tmp_path / "gone.tar", "a.png"))
    with pytest.raises(ImageLoadError, match=r"cannot read image .*s-000.tar::bad.png") as err:
        load_image(member_path(shard, "bad.png"))
    assert err.value.reason == "corrupt"
    with pytest.raises(ImageLoadError, match="cannot read image .*a.txt: not an image file"):
        load_image(member_path(shard, "a.txt"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ImageLoadError, match="cannot read tar shard .*junk.tar"):
        load_image(member_path(tmp_path / "junk.tar", "a.png"))
    gz = _shard(tmp_path / "z.tar.gz", [("a.png", _png((1, 1, 1)))], mode="w:gz")
    with pytest.raises(ImageLoadError, match="gzip-compressed"):
        load_image(member_path(gz, "a.png"))


def test_a_rewritten_shard_is_indexed_again(tmp_path):
    path = _shard(tmp_path / "s.tar", [("a.png", _png((10, 20, 30)))])
    assert load_image(member_path(path, "a.png")).getpixel((0, 0)) == (10, 20, 30)
    _shard(path, [("x.txt", b"padding" * 100), ("a.png", _png((40, 50, 60)))])
    assert load_image(member_path(path, "a.png")).getpixel((0, 0)) == (40, 50, 60)
    assert images._scan_shard.cache_info().maxsize == images.SHARD_INDEX_CACHE


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (with almost no pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_one_size_guard_for_files_members_and_bytes(tmp_path):
    huge = _huge_png_header(10_000, 10_000)  # 100 M pixels > MAX_IMAGE_PIXELS, refused before decoding
    (tmp_path / "huge.png").write_bytes(huge)
    path = _shard(tmp_path / "huge.tar", [("huge.png", huge)])
    for source in (tmp_path / "huge.png", member_path(path, "huge.png")):
        with pytest.raises(ImageLoadError, match=r"image too large: .*huge.png is 10000x10000 pixels") as err:
            load_image(source)
        assert err.value.reason == "too_large"
    small = _png((0, 0, 0), (5, 5))
    with pytest.raises(ImageLoadError, match=r"image too large: small.png is 5x5 pixels \(limit 24\)"):
        decode_image(small, "small.png", max_pixels=24)
    assert decode_image(small, "ok", max_pixels=25).size == (5, 5)
    with pytest.raises(ImageLoadError, match="the file is empty") as err:
        decode_image(b"", "empty.png")
    assert err.value.reason == "empty"
    with open(tmp_path / "small.png", "wb") as handle:
        handle.write(small)
    with (tmp_path / "small.png").open("rb") as handle:
        assert decode_image(handle, "file").size == (5, 5)
    with pytest.raises(ImageLoadError, match="image not found: .*nothing.png") as err:
        load_image(tmp_path / "nothing.png")
    assert err.value.reason == "missing"
