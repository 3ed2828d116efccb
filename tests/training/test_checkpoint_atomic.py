"""Issue 12.10: a kill or a full disk while ``last/`` is written never loses the previous checkpoint.

A forked child trains 2 epochs and is SIGKILLed at one point of the epoch-1 checkpoint
write (before each file-system call of ``opencir.training.checkpoint``, and in the middle
of writing the trainer state); the parent then resumes, as ``opencir train`` would, and
must end with the weights and log of an uninterrupted run. A full disk (ENOSPC) in the
middle of the write must fail clearly and leave the epoch-0 checkpoint in place.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import time
import types

import pytest
import torch
from safetensors.torch import load_file

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.data.synthetic import generate_cir_shapes
from opencir.methods.io import build_method
from opencir.training import checkpoint
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
from opencir.training.trainer import Trainer

WRAPPED = {"os": ("replace", "fsync", "open"), "shutil": ("rmtree",), "torch": ("save",)}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_cir_shapes(tmp_path_factory.mktemp("ckpt") / "shapes", seed=0, train_triplets=32, val_triplets=8,
                               test_triplets=8, image_size=32)


def _trainer(root, out) -> Trainer:
    torch.manual_seed(0)
    config = RunConfig(method="clip4cir", method_config={"stage": "combiner", "dropout": 0.0},
                       backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
                       dataset=DatasetConfig(name="cir-shapes", root=str(root), val_split=None),
                       train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0, amp=False),
                       output_dir=str(out), device="cpu", cache_dir=str(out.parent / "cache"))
    method = build_method("clip4cir", BackboneSpec("tiny-vit"), config.method_config)
    return Trainer(method, config, load_dataset("cir-shapes", root, "train"), None)


def _instrument(events: list[str], kill_at: int | None, torn_state: bool, disk_full_at: int | None) -> None:
    """Wrap the checkpoint module's file-system calls (in this process only): record each
    call's name; SIGKILL before call ``kill_at``; tear the state file or raise ENOSPC."""

    def wrap(name: str, function):
        def wrapped(*args, **kwargs):
            number = len(events)
            events.append(name)
            if number == disk_full_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            if number == kill_at:
                if torn_state and name == "torch.save":  # half the state on disk, then the kill
                    buffer = io.BytesIO()
                    function(args[0], buffer)
                    args[1].write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    args[1].flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return wrapped

    for module_name, names in WRAPPED.items():
        module = getattr(checkpoint, module_name)
        proxy = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
        for name in names:
            setattr(proxy, name, wrap(f"{module_name}.{name}", getattr(module, name)))
        setattr(checkpoint, module_name, proxy)
    checkpoint.save_model = wrap("save_model", checkpoint.save_model)


def _in_child(function, timeout_s: float = 120.0) -> int:
    """Run ``function`` in a forked child; returns minus its killing signal, or its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            torch.set_num_threads(1)  # the parent's OpenMP thread team does not survive fork
            function()
        except BaseException:
            code = 3
        os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"the forked child did not finish within {timeout_s} s")
        time.sleep(0.05)


def _events_per_write(root, tmp_path) -> tuple[int, list[str]]:
    """(index of the first call of the epoch-1 write, the names of that write's calls)."""
    log_file = tmp_path / "events.json"

    def dry_run():
        events: list[str] = []
        _instrument(events, None, False, None)
        _trainer(root, tmp_path / "dry").fit()
        log_file.write_text(json.dumps(events))

    assert _in_child(dry_run) == 0
    events = json.loads(log_file.read_text())
    saves = [i for i, name in enumerate(events) if name == "save_model"]
    assert len(saves) == 2 and events[saves[1] - 1] == "shutil.rmtree"  # each write starts by clearing staging
    return saves[1] - 1, events[saves[1] - 1:]


@pytest.fixture(scope="module")
def reference(small_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    _trainer(small_root, out).fit()
    return out


def test_kill_at_every_point_of_the_write_then_resume(small_root, tmp_path, reference):
    start, per_write = _events_per_write(small_root, tmp_path)
    assert {"save_model", "torch.save", "os.replace", "os.fsync"} <= set(per_write)
    points = [(i, False) for i in range(len(per_write) + 1)] + [(per_write.index("torch.save"), True)]
    straight = load_file(str(reference / "last" / "model.safetensors"))
    for point, torn in points:
        out = tmp_path / f"kill-{point}{'-torn' if torn else ''}"

        def killed_run():
            _instrument([], start + point, torn, None)  # a point of the epoch-1 write
            _trainer(small_root, out).fit()

        status = _in_child(killed_run)
        if point < len(per_write):
            assert status == -signal.SIGKILL, (point, per_write[point])
        survivors = [d for d in (out / "last", out / ".last.new", out / ".last.old") if checkpoint.is_complete(d)]
        assert survivors, f"no complete checkpoint left after a kill before {per_write[point:point + 1]}"

        summary = _trainer(small_root, out).fit(resume=True)
        assert summary["epochs_run"] in (0, 1)
        resumed = load_file(str(out / "last" / "model.safetensors"))
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), (point, torn)
        epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1], (point, epochs)
        assert not (out / ".last.new").exists() and not (out / ".last.old").exists()


@pytest.mark.parametrize("where", ["save_model", "torch.save"])
def test_full_disk_keeps_the_previous_checkpoint(small_root, tmp_path, where):
    start, per_write = _events_per_write(small_root, tmp_path)
    out = tmp_path / "full"
    message = tmp_path / "message.txt"

    def run_out_of_space():
        _instrument([], None, False, start + per_write.index(where))
        try:
            _trainer(small_root, out).fit()
        except OSError as err:
            message.write_text(str(err))
            raise

    assert _in_child(run_out_of_space) == 3
    text = message.read_text()
    assert "the disk is full" in text and "previous checkpoint" in text and "intact" in text
    assert checkpoint.is_complete(out / "last") and not (out / ".last.new").exists()
    state = torch.load(out / "last" / checkpoint.STATE_FILE, weights_only=False)
    assert state["epoch"] == 0
