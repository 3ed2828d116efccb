"""CLIP4Cir stage 2 (Combiner) training speed: cached features vs re-encoding every step.

The official code passes every reference and target image through the frozen CLIP at
every step; OpenCIR encodes each image once into the feature cache and trains the
Combiner on cached features. Both runs use the same Trainer, data, model and batches,
measured in the same process; the script prints epochs/s for each and their ratio.

    python benchmarks/bench_stage2_cache.py [--triplets 2000] [--arch small-vit] [--epochs 10]

The ratio grows with the backbone (encoding cost per image) and with the batch size
(the optimizer step over the Combiner's weights is amortised over more samples; the
official recipe uses batch 4096). Try ``--arch ViT-B-32 --triplets 1024 --batch-size 512``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.data.synthetic import generate_cir_shapes
from opencir.methods.base import Requirements
from opencir.methods.clip4cir import Clip4Cir, Clip4CirConfig
from opencir.backbones import ClipBackbone
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
from opencir.training.trainer import Trainer


class ReencodingClip4Cir(Clip4Cir):
    """The same Combiner model, but declaring its (frozen) image encoder as not cacheable,
    so the trainer re-encodes pixels at every step, as the official training loop does."""

    @property
    def requirements(self) -> Requirements:
        req = super().requirements
        return Requirements(image_encoder_frozen=False, text_encoder_frozen=req.text_encoder_frozen,
                            image_transform=req.image_transform, caption_policy=req.caption_policy)


def _config(root: Path, out: Path, epochs: int, batch: int) -> RunConfig:
    return RunConfig(method="clip4cir", method_config={"stage": "combiner"},
                     backbone=BackboneConfig(arch="small-vit", pretrained=None),
                     dataset=DatasetConfig(name="cir-shapes", root=str(root), val_split=None),
                     train=TrainConfig(epochs=epochs, batch_size=batch, lr=2e-4, optimizer="adam", amp=True,
                                       save_last=False, seed=0),
                     output_dir=str(out), device="auto", cache_dir=str(out / "cache"))


def _epoch_seconds(method_class: type[Clip4Cir], arch: str, root: Path, out: Path, epochs: int, batch: int) -> float:
    """Marginal seconds per epoch: fit(1 + epochs) minus fit(1), both after a warm-up run,
    so one-time work (building the model, encoding texts, reading the cache) cancels out."""
    train = load_dataset("cir-shapes", root, "train")
    seconds = []
    # with a feature cache, a first untimed run fills it; re-encoding has nothing to warm
    runs = (1, 1, 1 + epochs) if method_class is Clip4Cir else (1, 1 + epochs)
    for n in runs:
        torch.manual_seed(0)
        method = method_class(ClipBackbone(BackboneSpec(arch)), Clip4CirConfig(stage="combiner"))
        start = time.perf_counter()
        Trainer(method, _config(root, out, n, batch), train, None).fit(resume=False)
        seconds.append(time.perf_counter() - start)
    return (seconds[-1] - seconds[-2]) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplets", type=int, default=2000)
    parser.add_argument("--arch", default="small-vit")
    parser.add_argument("--epochs", type=int, default=10, help="epochs timed on cached features")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate_cir_shapes(tmp / "data", seed=0, train_triplets=args.triplets, val_triplets=10,
                                   test_triplets=10, image_size=64)
        cached = _epoch_seconds(Clip4Cir, args.arch, root, tmp / "cached", args.epochs, args.batch_size)
        reencode = _epoch_seconds(ReencodingClip4Cir, args.arch, root, tmp / "reencode", 1, args.batch_size)
    print(f"CLIP4Cir stage 2 on {args.triplets} cir-shapes triplets, {args.arch}, batch {args.batch_size}")
    print(f"  cached features : {1 / cached:8.2f} epochs/s")
    print(f"  re-encoding     : {1 / reencode:8.2f} epochs/s")
    print(f"  speed-up        : {reencode / cached:8.1f}x  (goal >= 20x)")


if __name__ == "__main__":
    main()
