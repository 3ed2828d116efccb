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
