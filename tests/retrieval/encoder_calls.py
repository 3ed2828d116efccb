"""Test helper: count the images a method's image encoder is asked to encode."""
from __future__ import annotations


def count_encoder_calls(method) -> list[int]:
    """Count images passed to ``method.encode_images`` (one list entry per call)."""
    calls: list[int] = []
    original = method.encode_images

    def counting(pixels, masks=None):
        calls.append(pixels.shape[0])
        return original(pixels, masks)

    method.encode_images = counting
    return calls
