"""The one Trainer: resume after a kill, feature cache, outputs, config overrides."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.methods.io import build_method, save_model
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig, load_run_config
from opencir.training.run import run_from_config
from opencir.training.trainer import Trainer


class _Killed(RuntimeError):
    pass


class _TrainerKilledAfterEpoch(Trainer):
    """Dies right after the checkpoint of ``kill_epoch`` is written, like a SIGKILL would."""

    kill_epoch = 0

    def _save_last(self, state):
        super()._save_last(state)
        if state["epoch"] == self.kill_epoch:
            raise _Killed("simulated kill")


def _config(root, out, **train) -> RunConfig:
    options = dict(epochs=3, batch_size=16, lr=1e-3, seed=3, amp=False, schedule="cosine", warmup_steps=2,
                   eval_batch_size=64, select_metrics=("R@1", "R@5"))
    options.update(train)
    return RunConfig(method="clip4cir", method_config={"stage": "combiner", "dropout": 0.2},
                     backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
                     dataset=DatasetConfig(name="cir-shapes", root=str(root)),
                     train=TrainConfig(**options), output_dir=str(out), device="cpu", cache_dir=str(out / "cache"))


def _fresh(root, out, trainer_class=Trainer, **train):
    torch.manual_seed(0)
    cfg = _config(root, out, **train)
    method = build_method("clip4cir", BackboneSpec("tiny-vit"), cfg.method_config)
    train_set = load_dataset("cir-shapes", root, "train")
    val_set = load_dataset("cir-shapes", root, "val")
    return trainer_class(method, cfg, train_set, val_set)


def test_resume_after_kill_equals_uninterrupted_run(shapes_root, tmp_path):
    _fresh(shapes_root, tmp_path / "straight").fit()
    with pytest.raises(_Killed):
        _fresh(shapes_root, tmp_path / "killed", _TrainerKilledAfterEpoch).fit()
    killed_metrics = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(killed_metrics) == 1
    summary = _fresh(shapes_root, tmp_path / "killed").fit(resume=True)
    assert summary["epochs_run"] == 2  # only the remaining epochs ran

    straight = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "last" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    a = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [0, 1, 2]
    assert [r["val/R@1"] for r in a] == [r["val/R@1"] for r in b]


def test_frozen_backbone_trains_on_cached_features(shapes_root, tmp_path):
    trainer = _fresh(shapes_root, tmp_path / "run", epochs=1)
    calls = {"images": 0}
    original = trainer.method.encode_images

    def counting(pixels, masks=None):
        calls["images"] += pixels.shape[0]
        return original(pixels, masks)

    trainer.method.encode_images = counting
    trainer.fit()
    first = calls["images"]
    assert first > 0
    assert any((tmp_path / "run" / "cache").rglob("*.safetensors"))
    calls["images"] = 0
    trainer.config.train.epochs = 2  # a second run over the same images re-uses the disk cache
    trainer.fit(resume=True)
    assert calls["images"] == 0


def test_run_writes_config_metrics_and_best_model(shapes_root, tmp_path):
    out = tmp_path / "run"
    summary = run_from_config(_config(shapes_root, out, epochs=2, early_stop_patience=5))
    assert (out / "config.yaml").is_file() and (out / "best" / "config.json").is_file()
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"train/loss", "val/R@1", "lr"} <= set(records[0])
    best = max(records, key=lambda r: (r["val/R@1"] + r["val/R@5"]) / 2)
    assert summary["best_epoch"] == best["epoch"]
    saved = load_run_config(out / "config.yaml")
    assert saved.train.epochs == 2 and saved.method_config["stage"] == "combiner"


def test_step_schedule_and_grad_clip_run(shapes_root, tmp_path):
    trainer = _fresh(shapes_root, tmp_path / "run", epochs=2, schedule="step", step_epochs=(1,), step_gamma=0.1,
                     grad_clip=1.0)
    trainer.fit()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["lr"] == pytest.approx(records[0]["lr"] * 0.1)


def test_dotted_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: clip4cir\ntrain:\n  epochs: 3\n")
    cfg = load_run_config(path, ["train.lr=0.5", "dataset.options.gallery=val-split", "method_config.stage=combiner"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 3
    assert cfg.dataset.options == {"gallery": "val-split"}
    with pytest.raises(KeyError, match="trian.*valid keys"):
        load_run_config(path, ["trian.epochs=2"])
    with pytest.raises(KeyError, match="lr_max"):
        load_run_config(path, ["train.lr_max=2"])


def test_method_without_trainable_parameters_is_refused(shapes_root, tmp_path):
    cfg = _config(shapes_root, tmp_path)
    method = build_method("sum", BackboneSpec("tiny-vit"))
    train_set = load_dataset("cir-shapes", shapes_root, "train")
    with pytest.raises((ValueError, NotImplementedError)):
        Trainer(method, cfg, train_set, None).fit()


def test_init_from_loads_stage1_backbone(shapes_root, tmp_path):
    stage1 = build_method("clip4cir", BackboneSpec("tiny-vit"), {"stage": "finetune"})
    with torch.no_grad():
        for p in stage1.backbone.parameters():
            p.add_(0.01)
    save_model(stage1, tmp_path / "stage1")
    cfg = _config(shapes_root, tmp_path / "stage2", epochs=1)
    cfg.init_from = str(tmp_path / "stage1")
    run_from_config(cfg)
    from opencir.methods.io import load_model

    stage2 = load_model(tmp_path / "stage2" / "best")
    for (name, a), b in zip(stage1.backbone.state_dict().items(), stage2.backbone.state_dict().values()):
        assert torch.equal(a, b), name
