"""``load_model(device="cuda")`` on a machine without CUDA fails in one clear line."""
from __future__ import annotations

import pytest
import torch

from opencir.backbones import BackboneSpec
from opencir.methods.io import build_method, load_model, save_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    save_model(build_method("sum", BackboneSpec("tiny-vit")), tmp_path / "m")
    with pytest.raises(ValueError, match="no CUDA device .* use device='cpu'"):
        load_model(tmp_path / "m", device="cuda")
    assert load_model(tmp_path / "m", device="auto").backbone.model.logit_scale.device.type == "cpu"
