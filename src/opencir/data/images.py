"""Image loading with errors that name the file, and the size guard shared by all readers."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb default, made explicit


class ImageLoadError(ValueError):
    """An image could not be read; the message says which file and why."""


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open ``path`` fully (not lazily) and convert it to ``mode``.

    Raises ImageLoadError for a missing, truncated, corrupt or oversized file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageLoadError(
                    f"image too large: {path} is {image.width}x{image.height} pixels "
                    f"(limit {MAX_IMAGE_PIXELS})"
                )
            image.load()
            return image.convert(mode)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err
