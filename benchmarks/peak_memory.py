"""Peak host memory of one TG-CIR training step, with and without gradient checkpointing.

Each configuration runs in a fresh subprocess (``ru_maxrss`` is a per-process high-water
mark): build TG-CIR on an open_clip architecture with random weights, record the resident
memory, run one step (encode reference, target and text, loss, backward, AdamW step) on
random pixels, and record the peak. Prints a table and the ratio of the step's extra
memory without / with checkpointing. CPU only; keep ``OMP_NUM_THREADS`` small.

    OMP_NUM_THREADS=1 python benchmarks/peak_memory.py --arch ViT-B-16 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TEXTS = ("make the red circle blue", "remove the small square", "add a cross at the top left",
         "is longer and has short sleeves", "move the diamond to the center")


def _rss_mib() -> float:
    """Current resident set size (MiB) from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _peak_mib() -> float:
    """Peak resident set size of this process so far (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_step(arch: str, batch_size: int, checkpointing: bool, seed: int = 0) -> dict[str, Any]:
    """One training step in this process; returns memory (MiB) and time (s)."""
    import gc

    import torch

    from opencir.backbones import BackboneSpec
    from opencir.methods.io import build_method

    torch.manual_seed(seed)
    method = build_method("tg-cir", BackboneSpec(arch, None, grad_checkpointing=checkpointing)).train()
    optimizer = torch.optim.AdamW(method.parameter_groups(1e-4, 0.01))
    size = method.backbone.image_size
    reference, target = torch.randn(batch_size, 3, size, size), torch.randn(batch_size, 3, size, size)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch_size)]
    gc.collect()
    rss_before, peak_before = _rss_mib(), _peak_mib()
    start = time.perf_counter()
    batch = {"reference": method.encode_images(reference), "target": method.encode_images(target),
             "text": method.encode_texts(texts)}
    loss = method.loss(batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    peak_backward = _peak_mib()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    return {
        "arch": arch, "batch_size": batch_size, "grad_checkpointing": checkpointing,
        "parameters_m": sum(p.numel() for p in method.parameters()) / 1e6,
        "rss_before_step_mib": round(rss_before, 1), "peak_before_step_mib": round(peak_before, 1),
        "peak_forward_backward_mib": round(peak_backward, 1),
        "forward_backward_extra_mib": round(peak_backward - rss_before, 1),
        "peak_mib": round(peak, 1), "step_extra_mib": round(peak - rss_before, 1),
        "step_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
    }


def _run_worker(arch: str, batch_size: int, checkpointing: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--arch", arch, "--batch-size", str(batch_size)]
    if checkpointing:
        cmd.append("--checkpointing")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random weights)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpointing", action="store_true", help="worker: enable gradient checkpointing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure_step(args.arch, args.batch_size, args.checkpointing)))
        return []
    rows = [_run_worker(args.arch, args.batch_size, flag) for flag in (False, True)]
    print(f"TG-CIR, one training step, {args.arch} (random weights), batch {args.batch_size}, CPU")
    print(f"{'checkpointing':>14} {'RSS before':>11} {'peak fwd+bwd':>13} {'peak step':>10} {'fwd+bwd extra':>14} "
          f"{'seconds':>8}")
    for r in rows:
        print(f"{str(r['grad_checkpointing']):>14} {r['rss_before_step_mib']:>7.0f} MiB {r['peak_forward_backward_mib']:>9.0f} MiB "
              f"{r['peak_mib']:>6.0f} MiB {r['forward_backward_extra_mib']:>10.0f} MiB {r['step_seconds']:>8.1f}")
    off, on = rows
    print(f"peak of the step without / with checkpointing: {off['peak_mib'] / on['peak_mib']:.2f}x; "
          f"forward+backward extra: {off['forward_backward_extra_mib'] / on['forward_backward_extra_mib']:.2f}x; "
          f"time with / without: {on['step_seconds'] / off['step_seconds']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
