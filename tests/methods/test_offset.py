"""OFFSET (spec 5): shapes, hand-checked modules, the detached KL teacher, training with
masks through the Trainer, save/load, and official checkpoint layouts."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.methods.io import build_method, load_model, save_model
from opencir.methods.offset import (
    OFFICIAL_PREFIXES,
    BidirectionalCrossAttention,
    FocusMapping,
    FocusRevision,
    Offset,
)
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig
from opencir.training.trainer import Trainer

B, P, D = 4, 4, 32  # tiny-vit: joint width 32, ViT width 32, 4x4 patches


@pytest.fixture()
def offset() -> Offset:
    torch.manual_seed(0)
    return build_method("offset", BackboneSpec("tiny-vit"))


def _batch(method: Offset, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    pixels = lambda: torch.randn(B, 3, 32, 32, generator=g)  # noqa: E731
    return {
        "reference": method.encode_images(pixels(), pixels()),
        "target": method.encode_images(pixels(), pixels()),
        "text": method.encode_texts(["make it red", "add a circle", "remove the square", "move it left"]),
    }


def test_shapes_and_gradients_through_the_registry(offset):
    batch = _batch(offset)
    assert batch["reference"]["tokens"].shape == (B, 2 * P, D)
    assert batch["reference"]["mask_pooled"].shape == (B, D)
    assert batch["text"]["local"].shape == (B, P, D)
    query = offset.compose(batch["reference"], batch["text"])
    assert torch.allclose(query.norm(dim=-1), torch.ones(B), atol=1e-5)
    losses = offset.loss(batch)
    assert set(losses) >= {"loss", "infonce", "kl"}
    losses["loss"].backward()
    for name in ("backbone.model.visual.conv1.weight", "backbone.model.visual.proj", "backbone.model.token_embedding.weight",
                 "seg_attention.qkv_a.weight", "seg_attention.qkv_b.weight", "seg_fusion.weight", "image_focus.hidden.weight",
                 "text_seg_attention.out_b.weight", "text_seg_fusion.weight", "text_focus.scores.weight",
                 "revision.mlp.2.weight", "logit_scale"):
        grad = dict(offset.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_masks_are_required_and_used(offset):
    pixels = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="opencir masks"):
        offset.encode_images(pixels)
    a = offset.encode_images(pixels, torch.zeros_like(pixels))
    b = offset.encode_images(pixels, torch.ones_like(pixels))
    assert not torch.allclose(a["tokens"], b["tokens"])
    assert offset.requirements.needs_masks and offset.requirements.train_image_transform == "clip-train"


def test_kl_teacher_is_detached(offset):
    """The loss gradient w.r.t. the target tokens must equal the one of a hand-written loss
    whose teacher distribution P is a constant; w (token weights) gets no gradient."""
    batch = _batch(offset)
    tokens = batch["target"]["tokens"].detach().requires_grad_(True)
    batch["target"] = {"tokens": tokens, "mask_pooled": batch["target"]["mask_pooled"].detach()}
    loss = offset.loss(batch)["loss"]
    loss.backward()
    assert offset.token_weights.grad is None

    manual_tokens = tokens.detach().clone().requires_grad_(True)
    query = offset.compose(batch["reference"], batch["text"]).detach()
    target = nn.functional.normalize(manual_tokens.mean(dim=1), dim=-1)
    with torch.no_grad():
        teacher = nn.functional.normalize(nn.functional.normalize(manual_tokens, dim=-1).flatten(1), dim=-1)
        p = torch.softmax(teacher @ teacher.t() / 0.1, dim=1)
    logits = query @ target.t()
    rank = nn.functional.cross_entropy(10.0 * logits, torch.arange(B))
    kl = (p * (p.log() - torch.log_softmax(logits / 0.1, dim=1))).sum() / B
    manual = rank + 0.5 * kl
    manual.backward()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert torch.allclose(tokens.grad, manual_tokens.grad, atol=1e-6)


def test_cross_attention_matches_the_per_head_formula():
    torch.manual_seed(0)
    c, heads, n = 16, 4, 5
    module = BidirectionalCrossAttention(c, heads, norm_groups=4)
    nn.init.normal_(module.norm_a.weight)
    nn.init.normal_(module.norm_b.bias)
    a, b = torch.randn(2, n, c), torch.randn(2, n, c)
    out_a, out_b = module(a, b)

    def gn(norm, x):
        return nn.functional.group_norm(x.transpose(1, 2), 4, norm.weight, norm.bias).transpose(1, 2)

    an, bn = gn(module.norm_a, a), gn(module.norm_b, b)
    qkv_a, qkv_b = an @ module.qkv_a.weight.t(), bn @ module.qkv_b.weight.t()
    d = c // heads

    def head(qkv, h, which):  # official layout: head h owns channels [3hd, 3(h+1)d) = q | k | v
        return qkv[..., 3 * h * d + which * d: 3 * h * d + (which + 1) * d]

    mixed_a = torch.cat([torch.softmax(head(qkv_b, h, 0) @ head(qkv_a, h, 1).transpose(1, 2) / math.sqrt(c), -1)
                         @ head(qkv_a, h, 2) for h in range(heads)], dim=-1)
    mixed_b = torch.cat([torch.softmax(head(qkv_a, h, 0) @ head(qkv_b, h, 1).transpose(1, 2) / math.sqrt(c), -1)
                         @ head(qkv_b, h, 2) for h in range(heads)], dim=-1)
    assert torch.allclose(out_a, module.out_a(mixed_a) + an, atol=1e-5)
    assert torch.allclose(out_b, module.out_b(mixed_b) + bn, atol=1e-5)


def test_focus_mapping_is_a_softmax_over_tokens():
    torch.manual_seed(0)
    mapping = FocusMapping(8, 3)
    same = torch.randn(2, 1, 8).expand(2, 6, 8)
    assert torch.allclose(mapping(same), same[:, :3], atol=1e-6)  # convex mix of equal tokens
    x = torch.randn(2, 6, 8)
    weights = torch.softmax(mapping.scores(torch.tanh(mapping.hidden(x))), dim=1)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, 3))
    assert torch.allclose(mapping(x), weights.transpose(1, 2) @ x)


def test_focus_revision_uses_the_official_row_split():
    torch.manual_seed(0)
    revision = FocusRevision(4)
    v, m = torch.randn(2, 6, 4), torch.randn(2, 6, 4)  # 2P = 6 tokens
    out = revision.mlp(torch.cat([v, m], dim=-1))  # (2, 6, 8)
    gamma, beta = revision.gates(v, m)
    for j in range(6):  # gamma_j = half (j mod 2) of token j // 2; beta_j the same of token P + j // 2
        half = slice((j % 2) * 4, (j % 2 + 1) * 4)
        assert torch.equal(gamma[:, j], out[:, j // 2, half])
        assert torch.equal(beta[:, j], out[:, 3 + j // 2, half])
    assert torch.allclose(revision(v, m), gamma * v + beta * m)


def test_trainer_fit_with_masks_then_save_and_load(shapes_root, tmp_path):
    torch.manual_seed(0)
    method = build_method("offset", BackboneSpec("tiny-vit"), {"backbone_lr": 1e-4})
    train = load_dataset("cir-shapes", shapes_root, "train")
    val = load_dataset("cir-shapes", shapes_root, "val")
    train.triplets, val.triplets = train.triplets[:48], val.triplets[:12]  # keep the test quick
    val.gallery_ids = sorted({i for t in val.triplets for i in (t.reference_id, *t.target_ids, *t.extra["negatives"])})
    config = RunConfig(
        method="offset", backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
        dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
        train=TrainConfig(epochs=1, batch_size=16, lr=1e-4, seed=0, amp=False, drop_last=False, eval_batch_size=64),
        output_dir=str(tmp_path / "run"), device="cpu", cache_dir=None)
    groups = method.parameter_groups(1e-3, 0.01)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]  # CLIP group, then the rest
    before = method.revision.mlp[0].weight.detach().clone()
    summary = Trainer(method, config, train, val).fit(resume=False)
    assert summary["epochs_run"] == 1 and "R@1" in summary["best_metrics"]
    assert not torch.equal(before, method.revision.mlp[0].weight)
    assert torch.equal(method.token_weights.detach(), torch.ones(2 * P))  # no gradient ever reaches w

    method.eval()
    batch = _batch(method, seed=3)
    expected = method.compose(batch["reference"], batch["text"])
    loaded = load_model(tmp_path / "run" / "best", expected_method="offset")
    again = _batch(loaded, seed=3)
    assert torch.allclose(loaded.compose(again["reference"], again["text"]), expected, atol=1e-5)
    with pytest.raises(ValueError, match="holds a 'offset' model, not a 'clip4cir' model"):
        load_model(tmp_path / "run" / "best", expected_method="clip4cir")


def test_config_checks():
    with pytest.raises(ValueError, match="focus_channels"):
        build_method("offset", BackboneSpec("tiny-vit"), {"focus_channels": 0})
    with pytest.raises(ValueError, match="needs a ViT"):
        build_method("offset", BackboneSpec("tiny-rn"))
    with pytest.raises(KeyError, match="unknown OffsetConfig keys"):
        build_method("offset", BackboneSpec("tiny-vit"), {"Q": 8})


# ------------------------------------------------------- official checkpoints
CONV2D = ("backbone.cross_attention.", "backbone.seg_fusion.")
CONV1D = ("backbone.chanel_score", "backbone.cross_attention_text.", "backbone.segText_fusion.", "affine.MLP.")


def _official_state(method: Offset) -> dict[str, torch.Tensor]:
    """``method``'s weights under the official names and shapes (1x1 conv kernels),
    plus the official modules that are never used."""
    inverse = {ours: theirs for theirs, ours in OFFICIAL_PREFIXES.items()}
    state = {}
    for key, value in method.state_dict().items():
        prefix = next(p for p in sorted(inverse, key=len, reverse=True) if key.startswith(p) or key == p.rstrip("."))
        name = inverse[prefix] + key[len(prefix):]
        if name.endswith("weight") and value.dim() == 2 and name.startswith(CONV2D):
            value = value[:, :, None, None]
        elif name.endswith("weight") and value.dim() == 2 and name.startswith(CONV1D):
            value = value[:, :, None]
        state[name] = value.clone()
    width = method.backbone.vision_width
    state.update({
        "backbone.attention_spatial.qkv.weight": torch.randn(3 * width, width, 1, 1),
        "backbone.cross_attention_text.norm_A.weight": torch.ones(D),
        "affine.cross_attention_text.qkv_A.weight": torch.randn(3 * 512, 512, 1),
    })
    return state


def _outputs(method: Offset) -> torch.Tensor:
    method.eval()
    with torch.no_grad():
        batch = _batch(method, seed=5)
        return method.compose(batch["reference"], batch["text"])


def test_official_state_dict_loads(offset, tmp_path):
    path = tmp_path / "official.pt"
    torch.save({f"module.{k}": v for k, v in _official_state(offset).items()}, path)  # DataParallel prefix
    torch.manual_seed(1)
    fresh = build_method("offset", BackboneSpec("tiny-vit"))
    report = fresh.load_official_checkpoint(path)
    assert len(report["ignored"]) == 3
    assert torch.allclose(_outputs(fresh), _outputs(offset), atol=1e-6)


def test_official_pickled_model_loads_without_the_official_code(offset, tmp_path, monkeypatch):
    """The official train.py saves ``torch.save(model)``: read it without importing its classes."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "model_OFFSET_fake.py").write_text("from torch import nn\n\nclass Node(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    import model_OFFSET_fake  # type: ignore[import-not-found]

    root = model_OFFSET_fake.Node()
    for key, value in _official_state(offset).items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, model_OFFSET_fake.Node())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value))
    node.register_buffer("scratch", torch.zeros(1), persistent=False)
    path = tmp_path / "best_model.pt"
    torch.save(root, path)
    monkeypatch.delitem(sys.modules, "model_OFFSET_fake")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(code)])
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)  # what a plain load of the official file needs

    torch.manual_seed(1)
    fresh = build_method("offset", BackboneSpec("tiny-vit"))
    fresh.load_official_checkpoint(path)
    assert torch.allclose(_outputs(fresh), _outputs(offset), atol=1e-6)


def test_official_checkpoint_errors(offset, tmp_path):
    clip4cir = tmp_path / "clip4cir.pt"
    torch.save({"Combiner": {"output_layer.weight": torch.zeros(2, 2)}}, clip4cir)
    with pytest.raises(ValueError, match="not an OFFSET checkpoint.*CLIP4Cir"):
        offset.load_official_checkpoint(clip4cir)

    tgcir = tmp_path / "tgcir.pt"
    torch.save({"backbone.masks.weight": torch.ones(4, D), "loss_T": torch.ones(1)}, tgcir)
    with pytest.raises(ValueError, match="TG-CIR checkpoint .*load it with method tg-cir$"):
        offset.load_official_checkpoint(tgcir)

    state = _official_state(offset)
    q_not_p = tmp_path / "q8.pt"
    torch.save({**state, "local_weight": torch.ones(4 + 8)}, q_not_p)
    with pytest.raises(ValueError, match="Q != --P"):
        offset.load_official_checkpoint(q_not_p)

    p3 = build_method("offset", BackboneSpec("tiny-vit"), {"focus_channels": 3})
    good = tmp_path / "good.pt"
    torch.save(state, good)
    with pytest.raises(ValueError, match="focus_channels=4"):
        p3.load_official_checkpoint(good)

    save_model(offset, tmp_path / "opencir-dir")
    with pytest.raises(ValueError, match="load_model"):
        offset.load_official_checkpoint(tmp_path / "opencir-dir")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        offset.load_official_checkpoint(tmp_path / "junk.pt")
