"""bf16 vs fp32 on the CPU: image-encoding throughput and retrieval-metric parity.

Throughput: a ViT-B/32 image tower (open_clip architecture, random weights) encodes the same
batches in fp32 (reference) and under bf16 autocast, in the same run; the ratio is what
counts. Parity: with ``--model DIR --root CIR_SHAPES_ROOT`` (e.g. a model trained by
``opencir demo``) the test split is evaluated in both precisions and the metrics printed side
by side, with the mean cosine between fp32 and bf16 query embeddings.

    OMP_NUM_THREADS=2 python benchmarks/bench_precision.py [--arch ViT-B-32] [--batch 32] [--batches 4]
        [--model opencir-demo/runs/clip4cir-stage2/best --root opencir-demo/cir-shapes]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from opencir.backbones import BackboneSpec, ClipBackbone
from opencir.encoding.precision import autocast, cpu_has_native_bf16


def _images_per_second(backbone: ClipBackbone, pixels: torch.Tensor, precision: str, batches: int, repeat: int) -> float:
    with torch.no_grad(), autocast(precision, "cpu"):
        backbone.encode_image(pixels)  # warm-up (oneDNN primitive creation)
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(batches):
                backbone.encode_image(pixels)
            runs.append(time.perf_counter() - start)
    return batches * pixels.shape[0] / statistics.median(runs)


def _parity(model_dir: str, root: str) -> None:
    from opencir.data import load_dataset
    from opencir.evaluation.evaluator import embed_part, evaluate
    from opencir.methods import load_model

    method = load_model(model_dir).eval()
    part = load_dataset("cir-shapes", root, "test")
    a = embed_part(method, part, 128)
    b = embed_part(method, part, 128, precision="bf16")
    cosine = (a.queries * b.queries).sum(dim=1)
    fp32 = evaluate(method, part, 128).metrics
    bf16 = evaluate(method, part, 128, precision="bf16").metrics
    print(f"parity on cir-shapes test ({len(part.triplets)} queries), {model_dir}:")
    print(f"  query cosine fp32 vs bf16: mean {float(cosine.mean()):.5f}, min {float(cosine.min()):.5f}")
    for key in fp32:
        print(f"  {key:8s} fp32 {fp32[key]:6.2f}  bf16 {bf16[key]:6.2f}  diff {bf16[key] - fp32[key]:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model")
    parser.add_argument("--root")
    args = parser.parse_args()
    print(f"CPU native bf16 (oneDNN): {cpu_has_native_bf16()}; threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    backbone = ClipBackbone(BackboneSpec(args.arch)).eval()
    pixels = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size)
    fp32 = _images_per_second(backbone, pixels, "fp32", args.batches, args.repeat)
    bf16 = _images_per_second(backbone, pixels, "bf16", args.batches, args.repeat)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(backbone.encode_image(pixels), dim=-1)
        with autocast("bf16", "cpu"):
            low = torch.nn.functional.normalize(backbone.encode_image(pixels).float(), dim=-1)
    print(f"{args.arch} image tower, batch {args.batch}:")
    print(f"  fp32 (reference): {fp32:7.1f} images/s")
    print(f"  bf16 autocast   : {bf16:7.1f} images/s  ratio {bf16 / fp32:.2f}x")
    print(f"  cosine bf16 vs fp32 features: min {float((ref * low).sum(dim=1).min()):.5f}")
    if args.model and args.root:
        _parity(args.model, args.root)


if __name__ == "__main__":
    main()
