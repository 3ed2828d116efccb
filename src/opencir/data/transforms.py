"""Image preprocessing, registered by name: plain CLIP, TargetPad/SquarePad, CLIP train crop.

A factory is ``(image_size, mean, std) -> callable(PIL.Image) -> Tensor(3, S, S)``.
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


def _tail(image_size: int, mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
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
    return T.Compose([lambda im: target_pad(im, 1.25), *_tail(image_size, mean, std)])


@TRANSFORMS.register("squarepad")
def squarepad_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """Pad to a square with black (TargetPad with ratio 1), then the CLIP transform."""
    return T.Compose([lambda im: target_pad(im, 1.0), *_tail(image_size, mean, std)])


@TRANSFORMS.register("clip-train")
def clip_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """open_clip's train transform: RandomResizedCrop(scale 0.9-1.0, bicubic), normalise."""
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
