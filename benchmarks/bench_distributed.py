"""Data-parallel training speed: 1 process vs N ranks under torchrun, measured in one run.

    python benchmarks/bench_distributed.py [--ranks 2] [--arch tiny-vit] [--batch-size 32] [--steps 12]

Trains CLIP4Cir stage 1 (both CLIP towers fine-tuned: the case data parallelism is for)
with the same global batch on 1 process and on N ranks (``torchrun --standalone``; gloo on
CPU, NCCL on GPUs), times the training steps only (no start-up, no validation), and prints
steps/s, images/s (2 images per triplet), the ratio N ranks / 1 process and the scaling
efficiency ratio / N, plus the communication volume of one step: DDP's gradient
all-reduce (every trainable weight, float32) and the feature all-gather of the in-batch
loss. On CPU each rank gets ``--threads`` threads (the 1-process run too), so the ratio
is what counts. Goal on GPUs: >= 90% efficiency at 8 GPUs for CLIP4Cir stage 1 on ViT-B
(stated as a goal; measured only when such hardware is at hand).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): train ``--steps`` steps, rank 0 writes the timing."""
    import torch

    from opencir.data import load_dataset
    from opencir.methods.io import build_method
    from opencir.backbones import BackboneSpec
    from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
    from opencir.training.distributed import init_distributed
    from opencir.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    config = RunConfig(method="clip4cir", method_config={"stage": "finetune"},
                       backbone=BackboneConfig(arch=args.arch, pretrained=None),
                       dataset=DatasetConfig(name="cir-shapes", root=args.data, val_split=None),
                       train=TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-5, amp=False,
                                         precision="bf16" if args.device != "cpu" else "fp32", save_last=False,
                                         seed=0),
                       output_dir=args.out, device=args.device, cache_dir=None)
    context = init_distributed(args.device)
    torch.manual_seed(0)
    method = build_method("clip4cir", BackboneSpec(args.arch), config.method_config)
    train = load_dataset("cir-shapes", args.data, "train")
    train.triplets = train.triplets[: args.batch_size * (args.steps + args.warmup)]
    trainer = Trainer(method, config, train, None, dist=context)
    times: list[float] = []
    original = Trainer._step

    def timed_step(self, *a, **k):
        if context.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(self, *a, **k)
        if context.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        return out

    Trainer._step = timed_step
    trainer.fit(resume=False)
    steady = times[args.warmup:]
    grad_bytes = sum(p.numel() * 4 for p in method.parameters() if p.requires_grad)
    feature_bytes = 2 * args.batch_size * method.backbone.embed_dim * 4  # query + target rows, float32
    if context.is_main:
        Path(args.result).write_text(json.dumps({
            "ranks": context.world_size, "steps": len(steady), "seconds": sum(steady),
            "steps_per_s": len(steady) / sum(steady), "images_per_s": 2 * args.batch_size * len(steady) / sum(steady),
            "gradient_allreduce_bytes": grad_bytes, "feature_allgather_bytes": feature_bytes,
        }))


def launch(args: argparse.Namespace, ranks: int, data: str, tmp: Path) -> dict:
    result = tmp / f"result-{ranks}.json"
    command = [sys.executable, __file__, "--worker", "--data", data, "--out", str(tmp / f"run-{ranks}"),
               "--result", str(result), "--arch", args.arch, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--device", args.device]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   *command[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO / "src"))
    subprocess.run(command, check=True, env=env, cwd=REPO)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--arch", default="tiny-vit")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--steps", type=int, default=12, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(REPO / "src"))
    from opencir.data.synthetic import generate_cir_shapes

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        triplets = args.batch_size * (args.steps + args.warmup)
        data = str(generate_cir_shapes(tmp / "shapes", seed=0, train_triplets=triplets, val_triplets=8,
                                       test_triplets=8, image_size=args.image_size))
        one = launch(args, 1, data, tmp)
        many = launch(args, args.ranks, data, tmp)
    ratio = many["steps_per_s"] / one["steps_per_s"]
    n = args.ranks
    print(f"CLIP4Cir stage 1, {args.arch}, global batch {args.batch_size}, device {args.device}, "
          f"{args.threads} thread(s) per process")
    for r in (one, many):
        print(f"  {r['ranks']} rank(s): {r['steps_per_s']:.2f} steps/s, {r['images_per_s']:.1f} images/s "
              f"({r['steps']} timed steps)")
    print(f"  ratio {n} ranks / 1 process: {ratio:.2f}x; scaling efficiency {100 * ratio / n:.0f}%")
    grad = many["gradient_allreduce_bytes"]
    print(f"  communication per step: gradient all-reduce {grad / 2**20:.2f} MiB (ring: each rank sends "
          f"{2 * (n - 1) / n * grad / 2**20:.2f} MiB), feature all-gather "
          f"{many['feature_allgather_bytes'] / 2**10:.1f} KiB of rows")
    print("  goal on GPUs: >= 90% efficiency at 8 GPUs for CLIP4Cir stage 1 (ViT-B); not measured here")


if __name__ == "__main__":
    main()
