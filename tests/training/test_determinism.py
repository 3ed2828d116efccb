"""Same seed, same thread count: `opencir train` and `opencir pretrain-clip` give bit-identical
weights on CPU (issue 12 item 11: the method used to be built before the seed was set)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from opencir.cli import main


def _train(shapes_root, out, seed: int = 5) -> dict[str, torch.Tensor]:
    """CLIP4Cir stage 1 from a randomly initialised tiny backbone: the initialisation, the
    shuffling and the dropout all depend on the seed."""
    assert main(["train", "method=clip4cir", "method_config.stage=finetune", "backbone.arch=tiny-vit",
                 "backbone.pretrained=null", "dataset.name=cir-shapes", f"dataset.root={shapes_root}",
                 "train.epochs=1", "train.batch_size=32", "train.amp=false", f"train.seed={seed}", "device=cpu",
                 f"output_dir={out}", "cache_dir=null"]) == 0
    return load_file(str(out / "best" / "model.safetensors"))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_twice_with_the_same_seed_gives_identical_weights(shapes_root, tmp_path):
    torch.manual_seed(123)  # whatever ran before in this process must not matter
    first = _train(shapes_root, tmp_path / "a")
    torch.rand(1000)
    second = _train(shapes_root, tmp_path / "b")
    assert _equal(first, second)
    assert not _equal(first, _train(shapes_root, tmp_path / "c", seed=6))  # the seed is really used


def test_pretrain_clip_twice_gives_identical_checkpoints(shapes_root, tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.pt"
        torch.rand(7)
        assert main(["pretrain-clip", "--data", str(shapes_root), "--out", str(path), "--arch", "tiny-vit",
                     "--epochs", "1", "--batch-size", "32", "--seed", "3", "--warmup-steps", "2",
                     "--run-dir", str(tmp_path / f"run-{name}")]) == 0
        paths.append(path)
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert _equal(a, b)


def test_train_with_seeds_repeats_the_run_and_reports_mean_and_std(shapes_root, tmp_path, capsys):
    """`opencir train --seeds 2`: runs seed-5 and seed-6 under OUTPUT_DIR, the seed-5 run is
    the plain seed-5 run bit for bit, and seeds.json holds their best validation metrics
    with mean and sample std (computed here from each run's own metrics.jsonl)."""
    import json
    import statistics

    out = tmp_path / "multi"
    assert main(["train", "method=clip4cir", "method_config.stage=finetune", "backbone.arch=tiny-vit",
                 "backbone.pretrained=null", "dataset.name=cir-shapes", f"dataset.root={shapes_root}",
                 "train.epochs=1", "train.batch_size=32", "train.amp=false", "train.seed=5", "device=cpu",
                 f"output_dir={out}", "cache_dir=null", "--seeds", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "seeds.json").read_text())
    assert record["seeds"] == printed["seeds"] == [5, 6]
    assert _equal(load_file(str(out / "seed-5" / "best" / "model.safetensors")), _train(shapes_root, tmp_path / "one"))
    best = {seed: json.loads((out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()[-1]) for seed in (5, 6)}
    for metric in ("R@1", "R@5", "R@10", "R@50"):
        values = [best[5][f"val/{metric}"], best[6][f"val/{metric}"]]
        assert [record["per_seed"][s][metric] for s in ("5", "6")] == values
        assert record["mean"][metric] == statistics.fmean(values)
        assert record["std"][metric] == statistics.stdev(values)
