"""TG-CIR: attribute tokens, student/teacher detach rules, losses, training, checkpoints."""
from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from opencir.backbones import BackboneSpec
from opencir.data import load_dataset
from opencir.methods.io import build_method, load_model, save_model
from opencir.methods.tgcir import TgCir, TgCirConfig, TokenLearner, initial_masks, matching_degree_kl
from opencir.training.config import BackboneConfig, DatasetConfig, RunConfig, TrainConfig, load_run_config
from opencir.training.trainer import Trainer

from opencir.recipes import RECIPE_DIR as RECIPES
TEXTS = ["make the red circle blue", "remove the square", "add a small cross", "move the diamond to the center"]


def _method(**config) -> TgCir:
    torch.manual_seed(0)
    return build_method("tg-cir", BackboneSpec("tiny-vit"), config)


def _batch(method: TgCir, requires_grad: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Reference/text/target tokens of 4 random triplets; as grad leaves when asked."""
    torch.manual_seed(1)
    batch = {
        "reference": method.encode_images(torch.randn(4, 3, 32, 32)),
        "text": method.encode_texts(TEXTS),
        "target": method.encode_images(torch.randn(4, 3, 32, 32)),
    }
    if requires_grad:
        batch = {k: {"tokens": v["tokens"].detach().clone().requires_grad_(True)} for k, v in batch.items()}
    return batch


def _grad(term: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(term, tensors, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def _mlp_params(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters())


# ------------------------------------------------------------------ features
def test_mask_table_initialisation_by_hand():
    # P=3, D=8: block = 2 channels; channels 6,7 keep 0.1 (official int(D/P) blocks)
    expected = torch.tensor([
        [1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        [0.1, 0.1, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 0.1, 0.1],
    ])
    assert torch.equal(initial_masks(3, 8), expected)


def test_token_learner_is_mean_of_sigmoid_gated_tokens_by_hand():
    learner = TokenLearner(dim=2, num_tokens=1)
    with torch.no_grad():
        learner.attention.weight.copy_(torch.tensor([[1.0, 0.0]]))
        learner.attention.bias.zero_()
    # tokens (0,2) and (0,4): gates sigmoid(0)=0.5 each -> mean over L=2 of 0.5*x = (0, 1.5)
    # (a weighted average normalised by the gates would give (0, 3))
    out = learner(torch.tensor([[[0.0, 2.0], [0.0, 4.0]]]))
    assert torch.allclose(out, torch.tensor([[[0.0, 1.5]]]))


def test_attribute_tokens_follow_the_spec():
    method = _method(global_tokens=2, local_tokens=3)
    method.eval()
    backbone = method.backbone
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = method.encode_images(pixels)["tokens"]
        out = backbone.image_tokens(pixels)
        masks = torch.relu(method.global_masks)
        assert tokens.shape == (2, 5, backbone.embed_dim)
        # global token p = pooled * relu(M_p); local tokens from pre-ln_post tokens, CLS included
        assert torch.allclose(tokens[:, 1], out.pooled * masks[1], atol=1e-6)
        assert torch.allclose(tokens[:, 2:], method.token_learner(method.image_fc(out.pre_ln_post)), atol=1e-6)
        # text: the same mask table and TokenLearner, over all context_length rows (padding included)
        text = method.encode_texts(TEXTS[:2])["tokens"]
        ids = backbone.tokenize(TEXTS[:2])
        words = backbone.text_tokens(ids)
        assert words.tokens.shape[1] == backbone.context_length
        gates = torch.sigmoid(method.token_learner.attention(method.text_fc(words.tokens)))
        by_hand = (gates[..., 0:1] * method.text_fc(words.tokens)).sum(dim=1) / backbone.context_length
        assert torch.allclose(text[:, 0], words.pooled * masks[0], atol=1e-6)
        assert torch.allclose(text[:, 2], by_hand, atol=1e-6)


def test_query_and_target_are_normalised_means():
    method = _method().eval()
    batch = _batch(method)
    with torch.no_grad():
        query = method.compose(batch["reference"], batch["text"])
        target = method.embed_targets(batch["target"])
        alpha = method.student_remain(torch.cat([batch["reference"]["tokens"], batch["text"]["tokens"]], dim=-1))
        fused = alpha * batch["reference"]["tokens"] + (1 - alpha) * batch["text"]["tokens"]
    assert query.shape == (4, method.backbone.embed_dim)
    assert torch.allclose(query, nn.functional.normalize(fused.mean(1), dim=-1), atol=1e-6)
    assert torch.allclose(target.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_rejects_a_resnet_backbone():
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        build_method("tg-cir", BackboneSpec("tiny-rn"))


# -------------------------------------------------------------------- losses
def test_loss_is_the_weighted_sum_and_reaches_every_parameter():
    method = _method(orthogonal_weight=0.3, distill_weight=2.0, kl_weight=0.7, teacher_weight=0.5, gate_weight=1.5)
    method.train()
    losses = method.loss(_batch(method))
    w = {"student": 1.0, "teacher": 0.5, "gate": 1.5, "orthogonal": 0.3, "distill": 2.0, "kl": 0.7}
    expected = sum(w[k] * float(losses[k]) for k in w)
    assert float(losses["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(losses["scale"]) == 10.0
    losses["loss"].backward()
    no_grad = [n for n, p in method.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
               and "logit_scale" not in n]
    assert no_grad == []


def test_scale_is_learnable_and_starts_at_10():
    method = _method(init_scale=10.0)
    assert method.scale.requires_grad and method.scale.tolist() == [10.0]
    terms = method.loss_terms(_batch(method))
    (g,) = _grad(terms["student"], [method.scale])
    assert g.abs().sum() > 0


def test_teacher_sees_detached_reference_and_text_but_live_target():
    method = _method()
    batch = _batch(method, requires_grad=True)
    terms = method.loss_terms(batch)
    ref, txt, tgt = (batch[k]["tokens"] for k in ("reference", "text", "target"))
    for name in ("teacher", "gate"):
        g_ref, g_txt, g_tgt = _grad(terms[name], [ref, txt, tgt])
        assert g_ref.abs().sum() == 0 and g_txt.abs().sum() == 0, f"{name} leaks gradient into reference/text"
        assert g_tgt.abs().sum() > 0, f"{name} gives the target no gradient"
        teacher = _mlp_params(method.teacher_remain) + _mlp_params(method.teacher_replace)
        assert sum(g.abs().sum() for g in _grad(terms[name], teacher)) > 0
    # the student term does train the reference and text paths
    g_ref, g_txt = _grad(terms["student"], [ref, txt])
    assert g_ref.abs().sum() > 0 and g_txt.abs().sum() > 0


def test_distillation_uses_detached_teacher_gates():
    method = _method()
    terms = method.loss_terms(_batch(method))
    teacher = _mlp_params(method.teacher_remain) + _mlp_params(method.teacher_replace)
    assert sum(g.abs().sum() for g in _grad(terms["distill"], teacher)) == 0
    assert sum(g.abs().sum() for g in _grad(terms["distill"], _mlp_params(method.student_remain))) > 0


def test_kl_teacher_distribution_is_detached():
    method = _method()
    batch = _batch(method, requires_grad=True)
    terms = method.loss_terms(batch)
    # token weights appear only in the teacher distribution P: no gradient may reach them
    (g_w,) = _grad(terms["kl"], [method.token_weights])
    assert g_w.abs().sum() == 0
    # the student side Q trains the student gate and the query/target tokens
    assert sum(g.abs().sum() for g in _grad(terms["kl"], _mlp_params(method.student_remain))) > 0
    assert _grad(terms["kl"], [batch["reference"]["tokens"]])[0].abs().sum() > 0


def test_matching_degree_kl_by_hand():
    # B=2, identical teacher rows -> P uniform (0.5, 0.5); Q from logits (1, 0)/tau and (0, 1)/tau, tau=1
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p_log_q = torch.log_softmax(torch.tensor([1.0, 0.0]), dim=0)
    # KL per row = sum_j 0.5 (log 0.5 - log q_j); both rows equal by symmetry; batchmean -> same value
    expected = float(0.5 * ((torch.log(torch.tensor(0.5)) - p_log_q).sum()))
    assert float(matching_degree_kl(q, q, teacher, 1.0)) == pytest.approx(expected, rel=1e-6)


def test_parameter_groups_two_learning_rates():
    method = _method(backbone_lr=1e-5)
    groups = method.parameter_groups(lr=1e-4, weight_decay=0.01)
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    backbone_ids = {id(p) for p in method.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == backbone_ids
    assert id(method.scale) in {id(p) for p in groups[1]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(method.trainable_parameters())


def test_grad_checkpointing_gives_the_same_gradients():
    def grads(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        method = build_method("tg-cir", BackboneSpec("tiny-vit", grad_checkpointing=checkpointing))
        loss = method.loss(_batch(method))["loss"]
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}

    loss_a, a = grads(False)
    loss_b, b = grads(True)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert build_method("tg-cir", BackboneSpec("tiny-vit", grad_checkpointing=True)).backbone.model.visual.transformer.grad_checkpointing


# ----------------------------------------------------------------- training
def test_trains_with_the_trainer_and_round_trips(shapes_root, tmp_path):
    method = _method()
    config = RunConfig(
        method="tg-cir", backbone=BackboneConfig(arch="tiny-vit", pretrained=None),
        dataset=DatasetConfig(name="cir-shapes", root=str(shapes_root)),
        train=TrainConfig(epochs=2, batch_size=16, lr=1e-4, seed=0, amp=False, eval_batch_size=64,
                          schedule="step", step_epochs=(1,), step_gamma=0.1),
        output_dir=str(tmp_path / "run"), device="cpu", cache_dir=None)
    before = method.student_remain[0].weight.detach().clone()
    summary = Trainer(method, config, load_dataset("cir-shapes", shapes_root, "train"),
                      load_dataset("cir-shapes", shapes_root, "val")).fit()
    assert summary["epochs_run"] == 2
    assert not torch.equal(before, method.student_remain[0].weight)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[1]["lr"] == pytest.approx(0.1 * 1e-5)  # backbone group, decayed at epoch 1
    assert {"train/student", "train/teacher", "train/kl", "train/distill"} <= set(records[0])

    method.eval()
    batch = _batch(method)
    loaded = load_model(tmp_path / "run" / "last", expected_method="tg-cir")
    with torch.no_grad():
        assert torch.allclose(method.compose(batch["reference"], batch["text"]),
                              loaded.compose(batch["reference"], batch["text"]), atol=1e-6)
    assert torch.allclose(loaded.scale, method.scale)
    with pytest.raises(ValueError, match="holds a 'tg-cir' model, not a 'clip4cir' model"):
        load_model(tmp_path / "run" / "last", expected_method="clip4cir")


@pytest.mark.parametrize("name", ["fashioniq", "shoes", "cirr", "cirshapes"])
def test_recipes_load(name):
    config = load_run_config(RECIPES / f"tg-cir-{name}.yaml")
    assert config.method == "tg-cir"
    cfg = TgCirConfig.from_dict(config.method_config)
    assert cfg.backbone_lr == 1e-5 or name == "cirshapes"
    assert config.train.schedule == "step" and config.train.step_gamma == 0.1
    if name != "cirshapes":
        assert config.backbone.arch == "ViT-B-16-quickgelu" and config.backbone.pretrained == "openai"
        assert config.train.lr == 1e-4 and config.train.batch_size == 64 and config.train.step_epochs == (4, 9)
        assert config.train.epochs == 30 and config.train.early_stop_patience == 9
    expected = {"fashioniq": (0.1, 10, 0.5, 0.1, 4, 8), "shoes": (0.05, 5, 0.5, 0.1, 3, 6), "cirr": (0.1, 1, 0.1, 0.05, 4, 8)}
    if name in expected:
        got = (cfg.orthogonal_weight, cfg.distill_weight, cfg.kl_weight, cfg.kl_temperature, cfg.global_tokens, cfg.local_tokens)
        assert got == expected[name]


# ------------------------------------------------------ official checkpoints
def _official_like(method: TgCir) -> nn.Module:
    """A module tree with the key layout of the official ``VCG_CIR`` (random weights)."""
    cfg, dim = method.config, method.backbone.embed_dim

    def head() -> nn.Module:
        h = nn.Module()
        h.conv = nn.Sequential(nn.Conv1d(dim, 1, kernel_size=1), nn.Sigmoid())
        return h

    def gate() -> nn.Sequential:
        return nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1), nn.Sigmoid())

    backbone = nn.Module()
    backbone.clip = copy.deepcopy(method.backbone.model)
    backbone.image_backbone = backbone.clip.visual
    backbone.tokenlearn = nn.Module()
    backbone.tokenlearn.tokenizers = nn.ModuleList([head() for _ in range(cfg.local_tokens)])
    backbone.fc = nn.Linear(method.backbone.vision_width, dim)
    backbone.text_fc = nn.Linear(method.backbone.text_width, dim)
    backbone.masks = nn.Embedding(cfg.global_tokens, dim)
    official = nn.Module()
    official.backbone = backbone
    official.loss_T = nn.Parameter(torch.tensor([7.5]))
    official.local_weight = nn.Parameter(torch.rand(cfg.global_tokens + cfg.local_tokens))
    official.s_remain_map, official.t_remain_map, official.t_replace_map = gate(), gate(), gate()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in official.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return official


def _assert_loaded(method: TgCir, official: nn.Module) -> None:
    assert torch.equal(method.scale, official.loss_T)
    assert torch.equal(method.token_weights, official.local_weight)
    assert torch.equal(method.global_masks, official.backbone.masks.weight)
    assert torch.equal(method.teacher_replace[2].weight, official.t_replace_map[2].weight)
    assert torch.equal(method.backbone.model.visual.conv1.weight, official.backbone.clip.visual.conv1.weight)
    # TokenLearner: our Q-row linear layer reproduces the Q official 1x1-conv heads
    x = torch.randn(2, 7, method.backbone.embed_dim)
    with torch.no_grad():
        heads = [(h.conv(x.transpose(1, 2)) * x.transpose(1, 2)).mean(-1) for h in official.backbone.tokenlearn.tokenizers]
        assert torch.allclose(method.token_learner(x), torch.stack(heads, 1), atol=1e-6)


def test_official_state_dict_loads(tmp_path):
    method = _method(global_tokens=2, local_tokens=3)
    official = _official_like(method)
    torch.save({f"module.{k}": v for k, v in official.state_dict().items()}, tmp_path / "official.pt")
    report = method.load_official_checkpoint(tmp_path / "official.pt")
    assert report["ignored"] and all(k.startswith("backbone.image_backbone.") for k in report["ignored"])
    _assert_loaded(method, official)


def test_official_pickled_whole_module_loads_without_the_official_code(tmp_path):
    method = _method(global_tokens=2, local_tokens=3)
    official = _official_like(method)
    # the official train.py pickles the whole VCG_CIR object (module ``model``)
    fake = types.ModuleType("model")
    fake.VCG_CIR = type("VCG_CIR", (nn.Module,), {"__module__": "model"})
    official.__class__ = fake.VCG_CIR
    sys.modules["model"] = fake
    try:
        torch.save(official, tmp_path / "best_model.pt")
    finally:
        del sys.modules["model"]
    method.load_official_checkpoint(tmp_path / "best_model.pt")
    _assert_loaded(method, official)


class _Payload:
    """Unpickling this calls ``exec``: a checkpoint that runs code when loaded unrestricted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_official_reader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not an official TG-CIR"):
        _method(global_tokens=2, local_tokens=3).load_official_checkpoint(tmp_path / "evil.pt")
    torch.save(_Payload(marker), tmp_path / "evil2.pt")
    with pytest.raises(ValueError, match="without module parameters"):
        _method(global_tokens=2, local_tokens=3).load_official_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_official_checkpoint_errors(tmp_path):
    method = _method(global_tokens=2, local_tokens=3)
    torch.save({"CLIP": {"a": torch.zeros(1)}}, tmp_path / "clip4cir.pt")
    with pytest.raises(ValueError, match="not an official TG-CIR .*CLIP4Cir checkpoint"):
        method.load_official_checkpoint(tmp_path / "clip4cir.pt")
    torch.save(_official_like(method).state_dict(), tmp_path / "official.pt")
    with pytest.raises(ValueError, match="P=2 global and Q=3 local .*global_tokens=2, local_tokens=3"):
        _method(global_tokens=4, local_tokens=3).load_official_checkpoint(tmp_path / "official.pt")
    save_model(build_method("sum", BackboneSpec("tiny-vit")), tmp_path / "ours")
    with pytest.raises(ValueError, match="OpenCIR model directory"):
        method.load_official_checkpoint(tmp_path / "ours")
    with pytest.raises(FileNotFoundError):
        method.load_official_checkpoint(tmp_path / "missing.pt")
