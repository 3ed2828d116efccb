"""``train.strategy=fsdp`` (FSDP2, ``fully_shard``) as users launch it: ``torchrun`` with
2 gloo ranks on CPU against one process, CLIP4Cir stage 1 (whole tiny-vit backbone trained),
one epoch of 4 steps with validation, ``best/`` and ``last/`` (with the optimizer state
gathered to rank 0) saved; and the same on 2 ranks with ``train.accumulate=2``.

Tolerances: as in test_torchrun.py, two ranks sum in another order (all-gathered similarity
rows, reduce-scattered gradients), so per-step losses agree to LOSS_ATOL and the weights
after AdamW to WEIGHT_ATOL (measured: losses 2.1e-6, weights 3.8e-5).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_torchrun import LOSS_ATOL, METHODS, REPO, WEIGHT_ATOL, _env, _max_weight_difference, _steps, _torchrun, _train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    from opencir.data.synthetic import generate_cir_shapes

    base = tmp_path_factory.mktemp("fsdp")
    root = generate_cir_shapes(base / "shapes", seed=0, train_triplets=32, val_triplets=8, test_triplets=8, image_size=32)
    command = lambda out, *extra: _train(root, out, base / f"cache-{out.name}", *METHODS["clip4cir-stage1"],
                                         "train.strategy=fsdp", *extra)
    two = subprocess.run(_torchrun("-m", "opencir", *command(base / "2rank")), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    one = subprocess.run([sys.executable, "-m", "opencir", *command(base / "1proc")], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    # 2 ranks x 2 micro-batches: each rank runs two sharded forward/backward passes per step
    accumulated = subprocess.run(_torchrun("-m", "opencir", *command(base / "2rank-accumulate", "train.accumulate=2")),
                                 cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    return base, two, one, accumulated


def _assert_same_training(run: Path, reference: Path) -> None:
    """The same 4 logged steps (every value within LOSS_ATOL) and final weights within WEIGHT_ATOL."""
    a, b = _steps(run), _steps(reference)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], abs=LOSS_ATOL), (x["step"], key)
    assert _max_weight_difference(run, reference) <= WEIGHT_ATOL


def test_fsdp_on_two_gloo_ranks_equals_one_process(fsdp_runs):
    base, two, one, _ = fsdp_runs
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    _assert_same_training(base / "2rank", base / "1proc")
    # validation ran on the gathered weights: the same retrieval metrics
    metrics = [json.loads((base / run / "metrics.jsonl").read_text().splitlines()[0]) for run in ("2rank", "1proc")]
    assert {k: v for k, v in metrics[0].items() if k.startswith("val/")} == \
        {k: v for k, v in metrics[1].items() if k.startswith("val/")}
    # the optimizer state reached rank 0's checkpoint whole (keyed by parameter name under FSDP)
    state = torch.load(base / "2rank" / "last" / "trainer_state.pt", weights_only=False)
    assert state["optimizer"]["state"] and all(isinstance(k, str) for k in state["optimizer"]["state"])
    assert (base / "2rank" / "best" / "model.safetensors").is_file()


def test_fsdp_with_accumulation_gives_the_whole_batch_gradient(fsdp_runs):
    """train.accumulate=2 under FSDP on 2 ranks (4 micro-batches of 2 per step) against one
    process on whole batches of 8: the batch-level InfoNCE sees every row of the batch."""
    base, _, one, accumulated = fsdp_runs
    assert one.returncode == 0, one.stderr[-3000:]
    assert accumulated.returncode == 0, accumulated.stderr[-3000:]
    _assert_same_training(base / "2rank-accumulate", base / "1proc")
