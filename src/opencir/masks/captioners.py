"""Captioners name each image's dominant subject: the text prompt of the segmenter.

A captioner is ``(images: list[PIL.Image], records: list[ImageRecord]) -> list[str]``;
``CAPTIONERS`` maps a name to a factory ``(model, device, prompt) -> Captioner``:

* ``blip``: a BLIP captioning model from ``transformers`` (``model``: a hub name such as
  ``Salesforce/blip-image-captioning-base`` or a local folder; ``prompt``: optional text
  the caption continues). The paper only says "a VLM"; its model and prompt are not
  released (spec 5.2, [unverified]).
* ``record``: the image-level caption the dataset ships (cir-shapes; Shoes' single-image
  captions), or ``prompt`` where a record has none.
* ``fixed``: the same ``prompt`` for every image (e.g. "dress").
"""
from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image

from ..data.types import ImageRecord
from ..registry import Registry

Captioner = Callable[[Sequence[Image.Image], Sequence[ImageRecord]], list[str]]
CaptionerFactory = Callable[[str | None, str, str | None], Captioner]
CAPTIONERS: Registry[CaptionerFactory] = Registry("captioner")

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


class MaskModelError(ValueError):
    """A captioning or segmentation model could not be loaded; the message says how to fix it."""


def _load_error(kind: str, name: str, err: Exception) -> MaskModelError:
    return MaskModelError(
        f"cannot load {kind} model {name!r}: {type(err).__name__}: {err}. Hub names need the model in the "
        f"Hugging Face cache or internet access; otherwise pass a local folder saved with save_pretrained()"
    )


def require_transformers(kind: str) -> None:
    """Fail clearly when the optional ``transformers`` package is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise MaskModelError(f"the {kind} needs the 'transformers' package: pip install transformers") from err


@CAPTIONERS.register("fixed")
def fixed_captioner(model: str | None = None, device: str = "cpu", prompt: str | None = None) -> Captioner:
    """Every image gets ``prompt``."""
    if not prompt:
        raise ValueError("the 'fixed' captioner needs a prompt (--prompt TEXT)")

    def caption(images: Sequence[Image.Image], records: Sequence[ImageRecord]) -> list[str]:
        return [prompt] * len(images)

    return caption


@CAPTIONERS.register("record")
def record_captioner(model: str | None = None, device: str = "cpu", prompt: str | None = None) -> Captioner:
    """The dataset's own image caption; ``prompt`` for records without one."""

    def caption(images: Sequence[Image.Image], records: Sequence[ImageRecord]) -> list[str]:
        texts = []
        for record in records:
            text = record.caption or prompt
            if not text:
                raise ValueError(f"image {record.image_id!r} has no caption; give --prompt as a fallback")
            texts.append(text)
        return texts

    return caption


class BlipCaptioner:
    """Image captioning with a ``transformers`` BLIP model (greedy decoding)."""

    def __init__(self, model, processor, device: str = "cpu", prompt: str | None = None, max_new_tokens: int = 20) -> None:
        self.model, self.processor, self.device = model.to(device).eval(), processor, device
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    @classmethod
    def from_pretrained(cls, name: str, device: str = "cpu", prompt: str | None = None) -> "BlipCaptioner":
        require_transformers("BLIP captioner")
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            processor = BlipProcessor.from_pretrained(name)
            model = BlipForConditionalGeneration.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise _load_error("captioning", name, err) from err
        return cls(model, processor, device, prompt)

    def __call__(self, images: Sequence[Image.Image], records: Sequence[ImageRecord]) -> list[str]:
        import torch

        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=list(images), text=text, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


@CAPTIONERS.register("blip")
def blip_captioner(model: str | None = None, device: str = "cpu", prompt: str | None = None) -> Captioner:
    """BLIP from ``transformers`` (default ``Salesforce/blip-image-captioning-base``)."""
    return BlipCaptioner.from_pretrained(model or DEFAULT_BLIP, device, prompt)


def build_captioner(name: str, model: str | None = None, device: str = "cpu", prompt: str | None = None) -> Captioner:
    """The registered captioner ``name``."""
    return CAPTIONERS.get(name)(model, device, prompt)
