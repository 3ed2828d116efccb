"""Checkpoint save time with a frozen backbone: lean (trainable weights + a reference to the
backbone file) vs today's full save, measured in the same run on the same model.

The model is CLIP4Cir stage 2 (Combiner, frozen CLIP) on a randomly initialised open_clip
architecture (no download; weights do not change the cost). Three paths are timed, each
``--repeats`` times, best and median reported:

* ``full, fingerprint re-hashed``: today's save before this change: every weight written,
  the backbone fingerprint (SHA-256 over all backbone weights) recomputed per save;
* ``full, fingerprint memoised``: the same file, the fingerprint computed once;
* ``lean``: only the non-backbone weights written and hashed; the backbone file was
  stored once beforehand (its one-time cost is printed separately).

The script loads the full and the lean directory back and checks that they compute
bit-identical query and gallery vectors.

    python benchmarks/bench_lean_checkpoint.py [--arch ViT-B-32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from opencir.backbones import BackboneSpec
from opencir.methods.io import build_method, load_model, save_model, store_backbone


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _probe(model) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.backbone.image_size
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = model.encode_images(pixels)
        return model.compose(images, model.encode_texts(["a", "make it red", "remove it", "x y z"])), model.embed_targets(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture or small config (default: ViT-B-32)")
    parser.add_argument("--repeats", type=int, default=5, help="saves per path (default: 5)")
    args = parser.parse_args()

    torch.manual_seed(0)
    method = build_method("clip4cir", BackboneSpec(args.arch, None), {"stage": "combiner"}).eval()
    params = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    print(f"{args.arch} CLIP4Cir Combiner: {params / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable")
    work = Path(tempfile.mkdtemp(prefix="bench-lean-"))
    try:
        def full_rehashed() -> None:
            method.backbone.__dict__.pop("_fingerprint_memo", None)  # no memo: hashed every save, as before
            save_model(method, work / "full")

        def full_memoised() -> None:
            save_model(method, work / "full")

        def lean() -> None:
            save_model(method, work / "run" / "best", backbone_store=work / "run")

        start = time.perf_counter()
        store_backbone(method, work / "run")
        once = time.perf_counter() - start
        results = {
            "full, fingerprint re-hashed (today)": _timed(full_rehashed, args.repeats),
            "full, fingerprint memoised": _timed(full_memoised, args.repeats),
            "lean": _timed(lean, args.repeats),
        }
        reference = statistics.median(results["full, fingerprint re-hashed (today)"])
        print(f"one-time backbone store for lean saves: {once:.3f} s")
        print(f"{'path':<38}{'best s':>9}{'median s':>10}{'speed-up':>10}")
        for name, times in results.items():
            median = statistics.median(times)
            print(f"{name:<38}{min(times):9.3f}{median:10.3f}{reference / median:9.1f}x")
        sizes = {name: (work / name / "model.safetensors").stat().st_size for name in ("full", "run/best")}
        print(f"model.safetensors: full {sizes['full'] / 1e6:.1f} MB, lean {sizes['run/best'] / 1e6:.2f} MB")
        full_q, full_g = _probe(load_model(work / "full"))
        lean_q, lean_g = _probe(load_model(work / "run" / "best"))
        same = torch.equal(full_q, lean_q) and torch.equal(full_g, lean_g)
        print(f"lean and full checkpoints give bit-identical vectors: {same}")
        if not same:
            raise SystemExit("outputs differ")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
