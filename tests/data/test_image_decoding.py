"""One decoder for every reader: EXIF orientation, 16-bit greys, alpha, palettes, CMYK, animations.

Expected pixel values are written by hand from how each file was made.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from opencir.data.images import decode_image, load_image, normalise_image


def _png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    # a 4x2 (wide) JPEG whose EXIF says "rotate 90 CW to display" (orientation 6): shown 2x4 (tall)
    image = Image.new("RGB", (4, 2), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (2, 4)
    # a plain file is left as it is
    image.save(tmp_path / "plain.jpg")
    assert load_image(tmp_path / "plain.jpg").size == (4, 2)


def test_sixteen_bit_grey_png_is_scaled_not_white():
    grey = np.full((4, 4), 32896, dtype=np.uint16)  # 32896 / 257 = 128 exactly
    grey[0, 0] = 65535
    grey[0, 1] = 0
    image = decode_image(_png(Image.fromarray(grey)), "grey16.png")
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels[2, 2].tolist() == [128, 128, 128]
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [0, 0, 0]


def test_float_greys_in_zero_one_are_scaled():
    image = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F")
    assert np.asarray(normalise_image(image))[0, 0].tolist() == [128, 128, 128]


def test_transparency_is_composited_on_white_for_every_format():
    """A fully transparent pixel reads as white whether the file is RGBA, LA or a palette PNG."""
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))  # hidden colour under alpha 0
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    la = Image.new("LA", (2, 1), (40, 0))
    la.putpixel((1, 0), (40, 255))
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 90, 60, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    for name, data in [("rgba", _png(rgba)), ("la", _png(la)), ("palette", _png(palette, transparency=0))]:
        pixels = np.asarray(decode_image(data, f"{name}.png"))
        assert pixels[0, 0].tolist() == [255, 255, 255], name
    assert np.asarray(decode_image(_png(rgba), "rgba.png"))[0, 1].tolist() == [10, 20, 30]
    assert np.asarray(decode_image(_png(la), "la.png"))[0, 1].tolist() == [40, 40, 40]
    assert np.asarray(decode_image(_png(palette, transparency=0), "p.png"))[0, 1].tolist() == [90, 60, 30]
    # half transparency: 50 % of black over white
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert np.asarray(decode_image(_png(half), "half.png"))[0, 0].tolist() == [127, 127, 127]


def test_cmyk_and_palette_without_transparency_convert_like_pil():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    pixels = np.asarray(decode_image(_png(cmyk, format="JPEG", quality=100), "cmyk.jpg"))
    assert np.abs(pixels.astype(int) - [255, 0, 0]).max() <= 3
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([12, 34, 56] + [0] * 765)
    assert np.asarray(decode_image(_png(palette), "p.png"))[0, 0].tolist() == [12, 34, 56]


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255, 0, 0]


def test_in_memory_images_follow_the_same_rules():
    """PIL images handed to the Python API go through the same normalisation as files."""
    rgba = Image.new("RGBA", (1, 1), (5, 5, 5, 0))
    assert np.asarray(normalise_image(rgba))[0, 0].tolist() == [255, 255, 255]
    assert rgba.mode == "RGBA"  # the caller's image is not modified
    grey = Image.fromarray(np.full((1, 1), 65535, dtype=np.uint16))
    assert np.asarray(normalise_image(grey, "L"))[0, 0] == 255
