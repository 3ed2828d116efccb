"""Image loading with errors that name the file, and the size guard shared by all readers.

An image is a file path, or a member of an uncompressed tar shard written
``<shard.tar>::<member name>`` (e.g. ``/data/cc3m-00012.tar::000123.jpg``), which is read
in place by seeking to the member's data: no unpacking. Each shard's member index
(name -> (data offset, size)) is built once per process from the tar headers and kept in a
small LRU keyed by the shard's path, mtime and size. Everything decodes through
:func:`decode_image`, so the missing/corrupt/oversized checks are identical for files,
tar members and uploaded bytes.

Decoding is also *normalised* the same way for every reader (indexing, evaluation,
training, uploads, thumbnails; see :func:`normalise_image`): the first frame of animated
files, EXIF orientation applied, 16-bit and float greys scaled to 8 bits (not clipped to
white), and transparency (RGBA, LA, palette images with a transparent colour) composited
onto a white background, so a transparent pixel looks the same whatever the file format.
For plain 8-bit RGB/L/CMYK images without an EXIF rotation this equals PIL's
``Image.open(path).convert("RGB")`` that the official research code uses.
"""
from __future__ import annotations

import io
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb default, made explicit
MEMBER_SEPARATOR = "::"
SHARD_INDEX_CACHE = 1024  # shards whose member index a process keeps (about 150 bytes per member)
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, whatever the format
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class ImageLoadError(ValueError):
    """An image could not be read; the message says which file and why.

    ``reason`` is one of ``missing``, ``empty``, ``not_an_image``, ``corrupt``, ``too_large``,
    ``unreadable`` (the file exists but cannot be opened: permissions, I/O error).
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------- decoding
def decode_image(data: bytes | BinaryIO, source: str, mode: str = "RGB",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``data`` (bytes or a binary file) fully into a ``mode`` image.

    The pixel count is checked from the header before any pixel data is decoded.
    ``source`` names the image in errors. Raises ImageLoadError (see its ``reason``).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not len(data):
            raise ImageLoadError(f"cannot read image {source}: the file is empty", "empty")
        data = io.BytesIO(data)
    try:
        with Image.open(data) as image:
            if image.width * image.height > max_pixels:
                raise ImageLoadError(f"image too large: {source} is {image.width}x{image.height} pixels "
                                     f"(limit {max_pixels})", "too_large")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF / WebP / APNG: the first frame
            image.load()
            return normalise_image(image, mode)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"cannot read image {source}: not an image file "
                             f"(JPEG, PNG, WebP, GIF, BMP or TIFF)", "not_an_image") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"image too large: {source}: {err}", "too_large") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"cannot read image {source}: {err}", "corrupt") from err


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float greys as 8-bit ``L`` (scaled, not clipped)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0  # 0..1 floats, else 0..255
        values = np.nan_to_num(values) * scale
    else:  # 16-bit range (PNG/TIFF 16-bit greys decode to I;16 or I)
        values = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def normalise_image(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """``image`` (already opened) as ``mode`` with the shared decoding rules: EXIF
    orientation applied, high bit depths scaled, transparency composited onto
    ``ALPHA_BACKGROUND``. Used for files, tar members, uploads and in-memory PIL images."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        image = _to_eight_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(canvas, rgba).convert("RGB")
    elif image.mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(canvas, image).convert("RGB")
    return image if image.mode == mode else image.convert(mode)


# -------------------------------------------------------------- tar members
def member_path(shard: str | Path, member: str) -> Path:
    """The image path of ``member`` inside the tar ``shard``: ``<shard>::<member>``."""
    return Path(f"{shard}{MEMBER_SEPARATOR}{member}")


def split_member_path(path: str | Path) -> tuple[Path, str] | None:
    """``(shard, member)`` of a ``<shard>::<member>`` path, else None (split at the first ``::``)."""
    shard, sep, member = str(path).partition(MEMBER_SEPARATOR)
    return (Path(shard), member) if sep and shard and member else None


def _normal_member(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def compression_of(path: str | Path) -> str | None:
    """``gzip``/``bzip2``/``xz``/``zstd`` when the file starts with that magic, else None."""
    with Path(path).open("rb") as f:
        head = f.read(6)
    return next((name for magic, name in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


@lru_cache(maxsize=SHARD_INDEX_CACHE)
def _scan_shard(shard: str, mtime_ns: int, size: int) -> Mapping[str, tuple[int, int]]:
    """Member name -> (data offset, size) of the regular files of an uncompressed tar, in tar order."""
    del mtime_ns, size  # part of the cache key only: a rewritten shard is scanned again
    compression = compression_of(shard)
    if compression is not None:
        raise ImageLoadError(f"cannot read tar shard {shard} in place: it is {compression}-compressed "
                             f"(repack it as a plain .tar, or unpack it with extract_dir)", "corrupt")
    index: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                if info.isfile() and not info.issparse():
                    index[_normal_member(info.name)] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImageLoadError(f"cannot read tar shard {shard}: {err}", "corrupt") from err
    return MappingProxyType(index)


def shard_members(shard: str | Path) -> Mapping[str, tuple[int, int]]:
    """The member index of ``shard`` (name -> (data offset, size), tar order), cached per process."""
    path = Path(shard)
    try:
        stat = path.stat()
    except OSError:
        raise ImageLoadError(f"tar shard not found: {path}", "missing") from None
    return _scan_shard(str(path), stat.st_mtime_ns, stat.st_size)


def read_member(shard: str | Path, member: str) -> bytes:
    """The bytes of ``member`` of the tar ``shard``, read by seeking to its data offset."""
    shard, source = Path(shard), f"{shard}{MEMBER_SEPARATOR}{member}"
    if not shard.is_file():
        raise ImageLoadError(f"image not found: {source} (no tar shard {shard})", "missing")
    index = shard_members(shard)
    entry = index.get(_normal_member(member))
    if entry is None:
        raise ImageLoadError(f"image not found: {source} (tar shard {shard} has no member {member!r})", "missing")
    offset, size = entry
    try:
        with shard.open("rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as err:
        raise ImageLoadError(f"cannot read image {source}: {err}", "corrupt") from err
    if len(data) != size:
        raise ImageLoadError(f"cannot read image {source}: shard truncated ({len(data)} of {size} bytes)", "corrupt")
    return data


def image_exists(path: str | Path) -> bool:
    """Whether ``path`` is a file or a member of an existing tar shard (no decoding)."""
    if Path(path).is_file():
        return True
    parts = split_member_path(path)
    if parts is None or not parts[0].is_file():
        return False
    try:
        return _normal_member(parts[1]) in shard_members(parts[0])
    except ImageLoadError:
        return False


# ------------------------------------------------------------------ loading
def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open ``path`` (a file or ``<shard.tar>::<member>``) fully and convert it to ``mode``.

    Raises ImageLoadError for a missing, truncated, corrupt or oversized image.
    """
    path = Path(path)
    parts = split_member_path(path)
    if parts is not None and not path.is_file():
        return decode_image(read_member(*parts), str(path), mode)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}", "missing")
    try:
        handle = path.open("rb")
    except OSError as err:
        raise ImageLoadError(f"cannot read image {path}: {err.strerror or err}", "unreadable") from err
    with handle:
        if not os.fstat(handle.fileno()).st_size:
            raise ImageLoadError(f"cannot read image {path}: the file is empty", "empty")
        return decode_image(handle, str(path), mode)
