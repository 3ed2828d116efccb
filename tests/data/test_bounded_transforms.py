"""Image transforms bound their work by the output size (issue 12 item 1): a tiny upload
with an extreme aspect ratio must not build a gigabyte canvas, in serving, indexing and
training alike (they all build their transforms from ``data.transforms``)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from opencir.data.transforms import (
    MAX_AMPLIFICATION,
    TRANSFORMS,
    bounded_target_pad,
    build_transform,
    resize_center_crop,
    target_pad,
)

MEAN = STD = (0.5, 0.5, 0.5)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(37, 91), (300, 200), (64, 64), (500, 499), (20, 21), (640, 190)])
@pytest.mark.parametrize("out", [32, 224])
def test_ordinary_images_take_the_official_path_bit_for_bit(size, out):
    image = _noise(*size)
    official = T.CenterCrop(out)(T.Resize(out, interpolation=T.InterpolationMode.BICUBIC)(image))
    assert np.array_equal(np.asarray(resize_center_crop(image, out)), np.asarray(official))
    for ratio in (1.25, 1.0):
        assert bounded_target_pad(image, ratio, out).size == target_pad(image, ratio).size


def test_extreme_images_stay_close_to_the_two_step_result():
    # a smooth 2x1500 strip: the direct box resize equals resize-then-crop up to rounding
    strip = Image.fromarray(np.linspace(0, 255, 1500 * 2 * 3).reshape(1500, 2, 3).astype(np.uint8))
    official = np.asarray(T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(strip)), dtype=int)
    bounded = np.asarray(resize_center_crop(strip, 32), dtype=int)
    assert np.abs(official - bounded).max() <= 2
    padded = np.asarray(resize_center_crop(target_pad(strip, 1.25), 32), dtype=int)
    shrunk = np.asarray(resize_center_crop(bounded_target_pad(strip, 1.25, 32), 32), dtype=int)
    assert np.abs(padded - shrunk).mean() < 3.0  # about 1% of the range, from shrinking before padding
    canvas = bounded_target_pad(strip, 1.25, 32)
    assert canvas.width * canvas.height <= MAX_AMPLIFICATION * max(3000, 32 * 32)


@pytest.mark.parametrize("name", TRANSFORMS.names())
@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (3, 7000)])
def test_every_transform_gives_the_output_size_for_extreme_shapes(name, size):
    tensor = build_transform(name, 32, MEAN, STD)(Image.new("RGB", size, (200, 10, 10)))
    assert tuple(tensor.shape) == (3, 32, 32)


PROBE = textwrap.dedent("""
    import json, resource, sys
    from PIL import Image
    from opencir.data.transforms import TRANSFORMS, build_transform

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    transforms = {n: build_transform(n, 224, (0.5,) * 3, (0.5,) * 3) for n in TRANSFORMS.names()}
    images = [Image.new("RGB", s, (255, 0, 0)) for s in [(1, 20000), (20000, 1), (1, 40000), (40000, 1)]]
    for t in transforms.values():   # warm up: allocator pools, lazy imports
        t(Image.new("RGB", (50, 50)))
    before = peak_mb()
    for name, t in transforms.items():
        for image in images:
            t(image)
    print(json.dumps({"growth_mb": peak_mb() - before}))
""")


def test_extreme_aspect_ratios_cost_bounded_memory():
    """Measured peak RSS growth of a fresh process that runs every transform on 1x20000 and
    1x40000 images (before the fix: about 1 GB for TargetPad at 1x20000, 3 GB for CLIP's
    resize-then-crop)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]
    assert growth < 100, f"peak RSS grew by {growth:.0f} MB"
