"""Text encoding: full 77-token context (the old path) vs padding trimmed after the last EOT.

A ViT-B/32 CLIP text tower (open_clip architecture, random weights: speed does not depend
on the values) encodes batches of real-length modification texts. The reference is
open_clip's own ``model.encode_text`` on the full context, measured in the same run; ours is
``ClipBackbone.encode_text`` (trimmed), once on batches in the given order and once on
length-sorted batches as the evaluator builds them. Outputs are compared (max abs diff).

    OMP_NUM_THREADS=1 python benchmarks/bench_text_encoding.py [--arch ViT-B-32] [--batch 256] [--texts 1024]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from opencir.backbones import BackboneSpec, ClipBackbone

WORDS = "make the dress red with long sleeves and a floral print is shorter darker has no collar".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 3-25 words, the length range of CIR modification texts (FashionIQ, CIRR)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(n)]


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = ClipBackbone(BackboneSpec(args.arch)).eval()
    texts = _texts(args.texts)
    by_length = sorted(texts, key=len, reverse=True)

    def batches(items):
        return [backbone.tokenize(items[i:i + args.batch]) for i in range(0, len(items), args.batch)]

    plain, sorted_ = batches(texts), batches(by_length)
    full = _time(lambda: [backbone.model.encode_text(ids) for ids in plain], args.repeat)
    trimmed = _time(lambda: [backbone.encode_text(ids) for ids in plain], args.repeat)
    trimmed_sorted = _time(lambda: [backbone.encode_text(ids) for ids in sorted_], args.repeat)
    diff = max(float((backbone.encode_text(ids) - backbone.model.encode_text(ids)).abs().max()) for ids in plain[:2])
    n = len(texts)
    print(f"{args.arch} text tower, {n} texts, batch {args.batch}, threads {torch.get_num_threads()}")
    print(f"  full 77-token context (reference): {n / full:8.1f} texts/s")
    print(f"  trimmed after last EOT           : {n / trimmed:8.1f} texts/s  ratio {full / trimmed:5.2f}x")
    print(f"  trimmed, length-sorted batches   : {n / trimmed_sorted:8.1f} texts/s  ratio {full / trimmed_sorted:5.2f}x")
    print(f"  max |trimmed - full| over pooled outputs: {diff:.2e}")


if __name__ == "__main__":
    main()
