"""Image preprocessing, registered by name: plain CLIP, TargetPad/SquarePad, CLIP train crop.

A factory is ``(image_size, mean, std) -> callable(PIL.Image) -> Tensor(3, S, S)``.

Work is bounded by the *output* size, whatever the input's shape: no transform builds an
intermediate image larger than ``MAX_AMPLIFICATION`` times the larger of the input and the
output (a 118-byte 1x20000 PNG once cost a gigabyte through TargetPad's canvas and three
through CLIP's resize-then-crop). Ordinary images take the official path bit for bit;
an extreme aspect ratio resizes only the source region that lands in the centre crop
(:func:`resize_center_crop`) and shrinks before it pads (:func:`bounded_target_pad`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..registry import Registry

ImageTransform = Callable[[Image.Image], torch.Tensor]
TransformFactory = Callable[[int, Sequence[float], Sequence[float]], ImageTransform]
TRANSFORMS: Registry[TransformFactory] = Registry("image transform")

MAX_AMPLIFICATION = 4
"""An intermediate image has at most this many times the pixels of the input or the output."""


def target_pad(image: Image.Image, ratio: float) -> Image.Image:
    """CLIP4Cir TargetPad (spec 2.3): pad the short side with black only if the aspect
    ratio max/min is >= ``ratio``, until it is about long/ratio. ratio=1 is SquarePad."""
    w, h = image.size
    aspect = max(w, h) / min(w, h)
    if aspect < ratio:
        return image
    s = max(w, h) / ratio
    pad_w = max(int((s - w) / 2), 0)
    pad_h = max(int((s - h) / 2), 0)
    return TF.pad(image, [pad_w, pad_h, pad_w, pad_h], fill=0, padding_mode="constant")


def bounded_target_pad(image: Image.Image, ratio: float, size: int) -> Image.Image:
    """:func:`target_pad` for an output of ``size`` pixels a side, without a canvas larger
    than ``MAX_AMPLIFICATION`` x max(input, output) pixels.

    Ordinary images (the canvas within that bound) are padded exactly as the official
    transform does. An extreme aspect ratio (e.g. 1x20000) is first shrunk (bicubic) so
    the canvas's short side is ``2 * size``, still twice what the final resize keeps."""
    w, h = image.size
    long, short = max(w, h), min(w, h)
    canvas = long * (long / ratio)
    if long / short < ratio or canvas <= MAX_AMPLIFICATION * max(w * h, size * size):
        return target_pad(image, ratio)
    scale = 2 * size * ratio / long
    if scale >= 1:
        return target_pad(image, ratio)
    shrunk = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return target_pad(shrunk, ratio)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size, bicubic)`` then ``CenterCrop(size)``.

    When the resized intermediate would exceed ``MAX_AMPLIFICATION`` x max(input, output)
    pixels (224 x 4.5M for a 1x20000 image), it is skipped: one PIL resize of the source box
    that lands in the crop, on the same sampling grid and filter support (PIL's resampling
    reads pixels outside the box), equal to the two-step result up to the rounding of
    PIL's intermediate pass. Every other image takes torchvision's path, bit for bit."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision's output-size rule
    if new_short * new_long <= MAX_AMPLIFICATION * max(w * h, size * size):
        return TF.center_crop(TF.resize(image, size, interpolation=T.InterpolationMode.BICUBIC), size)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))  # CenterCrop's offsets
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), Image.BICUBIC, box=box)


def _tail(image_size: int, mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        lambda im: resize_center_crop(im, image_size),
        lambda im: im.convert("RGB"),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]


@TRANSFORMS.register("clip")
def clip_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """Resize the shorter side (bicubic), centre-crop, normalise: CLIP's eval transform."""
    return T.Compose(_tail(image_size, mean, std))


@TRANSFORMS.register("targetpad")
def targetpad_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """CLIP4Cir's TargetPad with ratio 1.25, then the CLIP transform."""
    return T.Compose([lambda im: bounded_target_pad(im, 1.25, image_size), *_tail(image_size, mean, std)])


@TRANSFORMS.register("squarepad")
def squarepad_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """Pad to a square with black (TargetPad with ratio 1), then the CLIP transform."""
    return T.Compose([lambda im: bounded_target_pad(im, 1.0, image_size), *_tail(image_size, mean, std)])


@TRANSFORMS.register("clip-train")
def clip_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """open_clip's train transform: RandomResizedCrop(scale 0.9-1.0, bicubic), normalise.
    Bounded already: the crop lies inside the input and is resized straight to the output."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def build_transform(name: str, image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """The registered transform ``name`` for a backbone's size and normalisation."""
    return TRANSFORMS.get(name)(image_size, mean, std)
