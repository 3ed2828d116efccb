"""Compute precision: resolution rules, bf16 parity with fp32 on cir-shapes, bf16 training on CPU."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.encoding.features import feature_cache_key, method_transform
from opencir.encoding.precision import cpu_has_native_bf16, resolve_precision, resolve_training_precision
from opencir.evaluation.evaluator import embed_part, evaluate
from opencir.methods.io import build_method


def test_resolution_rules():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32"  # published numbers are fp32: opt in on GPUs
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'half'; choose one of auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")
    assert resolve_training_precision("auto", True, "cpu") == "fp32"
    assert resolve_training_precision("auto", True, "cuda") == "fp16"
    assert resolve_training_precision("auto", False, "cuda") == "fp32"
    assert resolve_training_precision("bf16", True, "cpu") == "bf16"


def test_cache_keys_separate_precisions():
    method = build_method("clip4cir", BackboneSpec("tiny-vit"))
    name, _ = method_transform(method)
    assert feature_cache_key(method, name) == feature_cache_key(method, name, "fp32")
    assert feature_cache_key(method, name, "bf16") != feature_cache_key(method, name, "fp32")


@torch.no_grad()
def test_bf16_embeddings_and_metrics_track_fp32(shapes_root):
    torch.manual_seed(0)
    method = build_method("sum", BackboneSpec("tiny-vit")).eval()
    part = load_dataset("cir-shapes", shapes_root, "test")
    fp32 = embed_part(method, part, batch_size=16)
    bf16 = embed_part(method, part, batch_size=16, precision="bf16")
    assert fp32.queries.dtype == bf16.queries.dtype == torch.float32
    cosine = (fp32.queries * bf16.queries).sum(dim=1)
    assert float(cosine.min()) > 0.99  # bf16 keeps 8 bits of mantissa: direction barely moves
    assert float((fp32.gallery * bf16.gallery).sum(dim=1).min()) > 0.99
    assert not torch.equal(fp32.queries, bf16.queries)  # bf16 really ran
    a = evaluate(method, part, batch_size=16).metrics
    b = evaluate(method, part, batch_size=16, precision="bf16").metrics
    assert a.keys() == b.keys()
    assert abs(a["R@10"] - b["R@10"]) <= 10.0  # 40 queries: one query is 2.5 points


def test_bf16_training_step_on_cpu(shapes_root, tmp_path):
    from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
    from opencir.training.trainer import Trainer

    config = RunConfig(
        method="clip4cir", backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
        dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
        train=TrainConfig(epochs=1, batch_size=32, lr=1e-4, precision="bf16", val_every=1, save_last=False),
        output_dir=str(tmp_path / "run"), cache_dir=None,
    )
    torch.manual_seed(0)
    method = build_method("clip4cir", BackboneSpec("tiny-vit"))
    train = load_dataset("cir-shapes", shapes_root, "train")
    val = load_dataset("cir-shapes", shapes_root, "val")
    trainer = Trainer(method, config, train, val)
    assert trainer.precision == "bf16" and not trainer.use_amp
    summary = trainer.fit()
    assert summary["epochs_run"] == 1
    assert all(torch.isfinite(p).all() for p in method.parameters())
