"""Data parallelism as users launch it: ``torchrun`` (gloo, CPU, 2 ranks) against one process.

Three launches share one tiny synthetic dataset (32 triplets, global batch 8, 1 epoch):

A. ``torchrun --nproc_per_node 2`` running, one after the other, every trainable method,
   TG-CIR with gradient accumulation and plain SGD, TG-CIR with gradient checkpointing and
   accumulation, ``opencir index``, four mistakes
   (each must fail with one clear line on every rank) and last a 2-epoch run whose rank 1
   is SIGKILLed mid-epoch 1;
B. ``torchrun --nproc_per_node 2 -m opencir train ...``: the killed run, started again;
C. the same commands in one process (no torchrun), plus the killed run resumed there.

Tolerances (why not bit-identical): two ranks sum the same products in another order
(all-gathered similarity rows, DDP's averaged gradients), so float32 values differ in the
last bits; losses per step agree to 1e-5. Weights after AdamW agree to WEIGHT_ATOL: AdamW
divides each coordinate's step by its own gradient scale, so a coordinate whose gradient
is near float32 rounding noise (e.g. attention key biases, whose true gradient is 0) may
move differently by up to lr per step; AdamW's eps is raised to 1e-6 in these runs to damp
that. The SGD run has no such normalisation: its weights agree to 1e-6, which also pins
the gradient *scale* (AdamW would hide a uniform factor such as N x the gradient).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_commands.py")
LOSS_ATOL = 1e-5
WEIGHT_ATOL = 2e-4
SGD_ATOL = 1e-6
METHODS = {
    "clip4cir-stage1": ["method=clip4cir", "method_config.stage=finetune"],
    "clip4cir-stage2": ["method=clip4cir", "method_config.stage=combiner", "method_config.dropout=0.0"],
    "tg-cir": ["method=tg-cir", "method_config.backbone_lr=0.0001"],
    "offset": ["method=offset", "method_config.train_image_transform=clip", "method_config.backbone_lr=0.0001"],
    "nsfse": ["method=nsfse", "method_config.dropout=0.0"],
    "pic2word": ["method=pic2word", "method_config.dropout=0.0", "method_config.middle_dim=32"],
    "context-i2w": ["method=context-i2w", "method_config.dropout=0.0", "method_config.middle_dim=32",
                    "method_config.depth=1", "method_config.heads=2", "method_config.dim_head=8",
                    "method_config.masker=fallback"],
}
ERRORS = {  # extra overrides -> what the one-line error must say
    "batch": (["train.batch_size=7"], "does not split into 2 rank(s)"),
    "mismatch": (["train.seed={RANK}"], "differs across ranks: rank 1 has other values than rank 0 for ['train.seed']"),
    "nccl": (["train.backend=nccl"], "train.backend=nccl needs CUDA devices"),
    "device": (["device=cuda"], "has no CUDA device"),
}
KILL_STEP = 6  # rank 1 dies when it starts step 6 of 8 (epoch 1, step 2)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), CUDA_VISIBLE_DEVICES="")
    env.pop("OPENCIR_TEST_KILL", None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _train(root: Path, out: Path, cache: Path, *overrides: str, epochs: int = 1) -> list[str]:
    return ["train", f"dataset.root={root}", "backbone.arch=tiny-vit", "backbone.pretrained=null", "device=cpu",
            f"train.epochs={epochs}", "train.batch_size=8", "train.lr=0.001", "train.eps=0.000001", "train.amp=false",
            "train.log_steps=true", f"output_dir={out}", f"cache_dir={cache}", *overrides]


def _commands(root: Path, images: Path, out: Path, resume_config: list[str]) -> list[list[str]]:
    cache = out / "cache"
    commands = [_train(root, out / name, cache, *overrides) for name, overrides in METHODS.items()]
    commands.append(_train(root, out / "tg-cir-sgd", cache, *METHODS["tg-cir"], "train.optimizer=sgd",
                           "train.weight_decay=0.0", "train.accumulate=2" if "2rank" in out.name else "train.accumulate=1"))
    if "2rank" in out.name:  # gradient checkpointing under DDP, with accumulation (vs 1proc/tg-cir)
        commands.append(_train(root, out / "tg-cir-checkpointing", cache, *METHODS["tg-cir"],
                               "backbone.grad_checkpointing=true", "train.accumulate=2"))
    commands.append(_train(root, out / "uninterrupted", cache, *resume_config, epochs=2))
    commands.append(["index", "--model", str(out / "clip4cir-stage2" / "best"), "--images", str(images), "--out",
                     str(out / "index"), "--shard-size", "7", "--batch-size", "4", "--device", "cpu"])
    return commands


def _launch(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _results(spec: Path, rank: int = 0) -> list[dict]:
    return json.loads(Path(f"{spec}.rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from opencir.data.synthetic import generate_cir_shapes

    sys.path.insert(0, str(REPO / "tests"))
    from retrieval.conftest import draw_images

    base = tmp_path_factory.mktemp("torchrun")
    root = generate_cir_shapes(base / "shapes", seed=0, train_triplets=32, val_triplets=8, test_triplets=8, image_size=32)
    images = base / "images"
    draw_images(images, 40)
    resume_config = METHODS["clip4cir-stage1"]
    two, one = base / "2rank", base / "1proc"

    # A: everything on 2 ranks in one launch; the killed run goes last (it ends the launch)
    spec_a = base / "a.json"
    errors = [_train(root, two / f"error-{name}", two / "cache", *extra) for name, (extra, _) in ERRORS.items()]
    killed = _train(root, two / "killed", two / "cache", *resume_config, epochs=2)
    spec_a.write_text(json.dumps([*_commands(root, images, two, resume_config), *errors, killed]))
    env_kill = {"OPENCIR_TEST_KILL": f"1:{KILL_STEP}"}
    a = subprocess.run(_torchrun(str(RUNNER), str(spec_a)), cwd=REPO, env={**_env(), **env_kill},
                       capture_output=True, text=True, timeout=900)
    shutil.copytree(two / "killed", one / "killed-on-2-ranks")

    # B: the killed run, started again the way a user would
    b = _launch(_torchrun("-m", "opencir", *killed))

    # C: the same runs in one process, and the killed 2-rank run resumed by one process
    spec_c = base / "c.json"
    resumed_here = _train(root, one / "killed-on-2-ranks", one / "cache", *resume_config, epochs=2)
    spec_c.write_text(json.dumps([*_commands(root, images, one, resume_config), resumed_here]))
    c = _launch([sys.executable, str(RUNNER), str(spec_c)])
    return {"two": two, "one": one, "a": a, "b": b, "c": c, "spec_a": spec_a, "spec_c": spec_c}


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def test_launches_finish(runs):
    finished = _results(runs["spec_a"])  # every command but the killed one, which ended launch A
    assert len(finished) == len(json.loads(runs["spec_a"].read_text())) - 1, runs["a"].stderr[-3000:]
    failed = [r["argv"] for r in finished if r["code"] != 0 and not any("error-" in a for a in r["argv"])]
    assert not failed, (failed, runs["a"].stderr[-3000:])
    assert runs["a"].returncode != 0  # its last run lost rank 1
    assert runs["b"].returncode == 0, runs["b"].stderr[-3000:]
    assert runs["c"].returncode == 0 and all(r["code"] == 0 for r in _results(runs["spec_c"])), runs["c"].stderr[-3000:]


@pytest.mark.parametrize("name", list(METHODS))
def test_two_ranks_equal_one_process(runs, name):
    two, one = _steps(runs["two"] / name), _steps(runs["one"] / name)
    assert len(two) == len(one) >= 4
    for a, b in zip(two, one):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=LOSS_ATOL), (name, a["step"], key)
    assert _max_weight_difference(runs["two"] / name, runs["one"] / name) <= WEIGHT_ATOL


def test_accumulation_on_two_ranks_gives_the_single_process_gradients(runs):
    """TG-CIR (batch-level and per-sample terms) with 2 ranks x 2 micro-batches and plain
    SGD equals one process taking the whole batch at once."""
    two, one = runs["two"] / "tg-cir-sgd", runs["one"] / "tg-cir-sgd"
    for a, b in zip(_steps(two), _steps(one), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_ATOL)
    assert _max_weight_difference(two, one) <= SGD_ATOL


def test_gradient_checkpointing_and_accumulation_under_ddp(runs):
    two, one = _steps(runs["two"] / "tg-cir-checkpointing"), _steps(runs["one"] / "tg-cir")
    for a, b in zip(two, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_ATOL)
    assert _max_weight_difference(runs["two"] / "tg-cir-checkpointing", runs["one"] / "tg-cir") <= WEIGHT_ATOL


def test_sharded_feature_cache_equals_single_process_cache_bit_for_bit(runs):
    two = {p.relative_to(runs["two"] / "cache"): p.read_bytes() for p in (runs["two"] / "cache").rglob("*.safetensors")}
    one = {p.relative_to(runs["one"] / "cache"): p.read_bytes() for p in (runs["one"] / "cache").rglob("*.safetensors")}
    assert len(one) >= 8  # train and val tables of the four frozen-encoder methods
    assert two == one


def test_sharded_index_equals_single_process_index(runs):
    from opencir.retrieval.store import IndexStore

    with IndexStore.open(runs["two"] / "index") as a, IndexStore.open(runs["one"] / "index") as b:
        assert a.ids() == b.ids() and len(a.ids()) == 40
        assert np.array_equal(a.vectors(a.ids()), b.vectors(b.ids()))


@pytest.mark.parametrize("name", list(ERRORS))
def test_mistakes_fail_with_one_clear_line_on_every_rank(runs, name):
    expected = ERRORS[name][1]
    for rank in (0, 1):
        result = next(r for r in _results(runs["spec_a"], rank) if any(f"error-{name}" in a for a in r["argv"]))
        assert result["code"] == 2
        lines = [l for l in result["stderr"].splitlines() if l.startswith("opencir: error:")]
        assert len(lines) == 1 and expected in lines[0], result["stderr"][-2000:]
        assert "Traceback" not in result["stderr"]


def test_killed_rank_then_resume_equals_uninterrupted_run(runs):
    two = runs["two"]
    assert [json.loads(l)["epoch"] for l in (two / "killed" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    a, b = _weights(two / "killed"), _weights(two / "uninterrupted")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same world size: the same computation, bit for bit
    assert [s["loss"] for s in _steps(two / "killed")] == [s["loss"] for s in _steps(two / "uninterrupted")]


def test_killed_two_rank_run_resumes_in_one_process(runs):
    resumed = runs["one"] / "killed-on-2-ranks"
    assert [json.loads(l)["epoch"] for l in (resumed / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert _max_weight_difference(resumed, runs["two"] / "uninterrupted") <= WEIGHT_ATOL
