"""Typed config overrides: every field is checked for type and range before any work starts.

Expected values and messages are written by hand from the dataclass declarations in
opencir/training/config.py (e.g. ``TrainConfig.batch_size: int``, at least 1).
"""
from __future__ import annotations

import time

import pytest
import torch

from opencir.cli import main
from opencir.training.config import RunConfig, TrainConfig, load_run_config
from opencir.typed import ConfigError, bounds, build_dataclass

RECIPE = "clip4cir-cirshapes-stage1"


def test_yaml_strings_that_are_numbers_become_floats():
    config = load_run_config(RECIPE, ["train.lr=1e-4", "train.weight_decay=0", "train.grad_clip=none"])
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert config.train.weight_decay == 0.0 and isinstance(config.train.weight_decay, float)
    assert config.train.grad_clip is None


def test_lists_become_tuples_and_one_value_fills_a_variable_length_tuple():
    config = load_run_config(RECIPE, ["train.betas=[0.8, 0.9]", "train.select_metrics=R@5", "train.step_epochs=[2,4]"])
    assert config.train.betas == (0.8, 0.9) and config.train.select_metrics == ("R@5",)
    assert config.train.step_epochs == (2, 4)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=three", "config key 'train.epochs': got 'three', expected an integer (e.g. train.epochs=10)"),
    ("train.batch_size=-4", "config key 'train.batch_size': got -4, must be at least 1"),
    ("train.batch_size=0", "config key 'train.batch_size': got 0, must be at least 1"),
    ("train.lr=fast", "config key 'train.lr': got 'fast', expected a number (e.g. train.lr=2e-06)"),
    ("train.lr=0", "config key 'train.lr': got 0.0, must be greater than 0"),
    ("train.epochs=2.5", "config key 'train.epochs': got 2.5, expected an integer (e.g. train.epochs=10)"),
    ("train.amp=maybe", "config key 'train.amp': got 'maybe', expected true or false (e.g. train.amp=true)"),
    ("train.betas=[0.9]", "config key 'train.betas': got [0.9], expected a list of 2 values"),
    ("train.betas=[0.9, 2]", "config key 'train.betas': got (0.9, 2.0), must be at most 1"),
    ("train.step_epochs=[1, x]", "config key 'train.step_epochs[1]': got 'x', expected an integer"),
    ("train.optimizer=lion", "config key 'train.optimizer': unknown name 'lion'; valid: adam, adamw, sgd"),
    ("train.schedule=linear", "config key 'train.schedule': unknown name 'linear'; valid: cosine, none, step"),
    ("train.num_workers=-1", "config key 'train.num_workers': got -1, must be at least 0"),
    ("method_config.dropout=high", "config key 'method_config.dropout': got 'high', expected a number"),
    ("backbone.grad_checkpointing=2", "config key 'backbone.grad_checkpointing': got 2, expected true or false"),
    ("dataset.options=3", "config key 'dataset.options': got 3, expected a mapping"),
    ("train=5", "config key 'train': got 5, expected a mapping of TrainConfig keys"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(RECIPE, [override])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["train.epochs=three", "train.batch_size=-4", "train.batch_size=0",
                                      "train.lr=fast"])
def test_train_refuses_nonsense_before_any_work(shapes_root, tmp_path, capsys, override):
    out = tmp_path / "run"
    started = time.perf_counter()
    code = main(["train", "--config", RECIPE, f"dataset.root={shapes_root}", f"output_dir={out}", "device=cpu",
                 "backbone.arch=tiny-vit", "backbone.pretrained=null", override])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"opencir: error: config key '{override.split('=')[0]}'") and err.count("\n") == 1
    assert not out.exists(), "nothing may be written before the config is valid"
    assert elapsed < 60  # generous: no model is built, no data is read (a bound, not a benchmark)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_fails_at_config_time():
    with pytest.raises(ConfigError, match="config key 'device': device 'cuda' asked for, but this machine has no CUDA device"):
        load_run_config(RECIPE, ["device=cuda"])


def test_same_checks_apply_to_configs_built_in_python():
    with pytest.raises(ConfigError, match="'TrainConfig.batch_size': got 0, must be at least 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="'TrainConfig.lr': got 'fast'"):
        TrainConfig(lr="fast")
    assert TrainConfig(lr="3e-4").lr == 3e-4
    assert RunConfig(train={"epochs": 2}).train == TrainConfig(epochs=2)  # a mapping for a section is built


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(KeyError, match=r"unknown config key\(s\) \['train.epoch'\]; valid keys under train: .*'epochs'"):
        load_run_config(RECIPE, ["train.epoch=3"])


def test_bounds_metadata_on_any_dataclass():
    from dataclasses import dataclass, field

    @dataclass
    class Options:
        k: int = field(default=10, metadata=bounds(min=1, max=100))
        mode: str = field(default="a", metadata=bounds(choices=("a", "b")))
        ratio: float | None = None

    assert build_dataclass(Options, {"k": 5, "mode": "b", "ratio": "0.5"}) == Options(5, "b", 0.5)
    with pytest.raises(ConfigError, match="'k': got 101, must be at most 100"):
        build_dataclass(Options, {"k": 101})
    with pytest.raises(ConfigError, match="'mode': got 'c', expected one of 'a', 'b'"):
        build_dataclass(Options, {"mode": "c"})
    with pytest.raises(ConfigError, match="'ratio': got True"):
        build_dataclass(Options, {"ratio": True})


def test_every_shipped_recipe_passes_the_typed_checks():
    from opencir.recipes import list_recipes

    for name in list_recipes():
        load_run_config(name)  # raises on any type or range error


def test_train_with_lr_1e_4_runs_and_prints_only_json(shapes_root, tmp_path, capsys):
    import json

    import yaml

    out = tmp_path / "run"
    assert main(["train", "--config", RECIPE, f"dataset.root={shapes_root}", f"output_dir={out}", "device=cpu",
                 "backbone.arch=tiny-vit", "backbone.pretrained=null", "train.epochs=1", "train.lr=1e-4",
                 "train.batch_size=32", "train.eval_batch_size=64", f"cache_dir={tmp_path / 'cache'}"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is the summary JSON and nothing else
    assert summary["best_model"] == str(out / "best")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-4 and isinstance(saved["train"]["lr"], float)
