"""The LOSSES registry: InfoNCE and the negative-sensitive adaptive-boundary loss (NSFSE, [INFERRED])."""
from __future__ import annotations

import math

import pytest
import torch

from opencir.losses import (
    LOSSES,
    NegativeSensitiveLoss,
    SimilarityMoments,
    adaptive_threshold,
    boundary_loss,
    build_loss,
    info_nce,
    similarity_moments,
)
from opencir.methods.base import in_batch_cross_entropy
from opencir.registry import UnknownNameError


def _matrix(positives: list[float], negatives: list[float]) -> torch.Tensor:
    """A (B, B) similarity matrix with the given diagonal and off-diagonal (row-major) values."""
    size = len(positives)
    s = torch.zeros(size, size)
    s[~torch.eye(size, dtype=torch.bool)] = torch.tensor(negatives)
    s[range(size), range(size)] = torch.tensor(positives)
    return s


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_registry_names_and_errors():
    assert {"infonce", "nsfse"} <= set(LOSSES.names())
    with pytest.raises(UnknownNameError, match="valid loss functions: .*infonce"):
        build_loss("triplet")
    with pytest.raises(KeyError, match="unknown loss_options \\['margn'\\] for loss 'nsfse'"):
        build_loss("nsfse", {"margn": 0.1})
    with pytest.raises(ValueError, match="ema_momentum"):
        build_loss("nsfse", {"ema_momentum": 1.0})


def test_infonce_matches_hand_value_and_in_batch_cross_entropy():
    s = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    # each row: -log(e^{10*0.5} / (e^{10*0.5} + e^0)) = log(1 + e^-5)
    assert info_nce(s, 10.0).item() == pytest.approx(math.log1p(math.exp(-5)), abs=1e-6)
    q, t = _unit_rows(6, 8, 0), _unit_rows(6, 8, 1)
    out = build_loss("infonce")(q, t, 100.0)
    assert out.loss.item() == pytest.approx(in_batch_cross_entropy(q, t, 100.0).item(), abs=1e-6)
    sym = build_loss("infonce", {"symmetric": True})(q, t, 100.0).loss
    both = (info_nce(q @ t.t(), 100.0) + info_nce(t @ q.t(), 100.0)) / 2
    assert sym.item() == pytest.approx(both.item(), abs=1e-6)


def test_threshold_golden_value_between_distributions():
    # positives 0.9, 0.7 -> mu 0.8, sigma 0.1; negatives -0.1, 0.5 -> mu 0.2, sigma 0.3
    s = _matrix([0.9, 0.7], [-0.1, 0.5])
    m = similarity_moments(s)
    assert [v.item() for v in m] == pytest.approx([0.8, 0.1, 0.2, 0.3], abs=1e-6)
    # theta = (0.8 * 0.3 + 0.2 * 0.1) / (0.1 + 0.3) = 0.65: 1.5 sigma from both means
    assert adaptive_threshold(m).item() == pytest.approx(0.65, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_separates_constructed_distributions(seed):
    g = torch.Generator().manual_seed(seed)
    size = 16
    positives = (0.75 + 0.03 * torch.randn(size, generator=g)).tolist()
    negatives = (0.20 + 0.10 * torch.randn(size * (size - 1), generator=g)).clamp(max=0.55).tolist()
    s = _matrix(positives, negatives)
    theta = adaptive_threshold(similarity_moments(s)).item()
    assert max(negatives) < theta < min(positives)
    # closer to the tighter (positive) distribution, as the equal-sigma-distance rule says
    assert theta - 0.20 > 0.75 - theta


def test_threshold_equal_spreads_is_midpoint_and_degenerate_is_finite():
    m = SimilarityMoments(torch.tensor(0.8), torch.tensor(0.05), torch.tensor(0.2), torch.tensor(0.05))
    assert adaptive_threshold(m).item() == pytest.approx(0.5, abs=1e-4)
    flat = SimilarityMoments(torch.tensor(0.8), torch.tensor(0.0), torch.tensor(0.2), torch.tensor(0.0))
    assert adaptive_threshold(flat).item() == pytest.approx(0.5, abs=1e-4)


def test_boundary_gradients_push_positives_up_and_negatives_down():
    s = _matrix([0.6, 0.5, 0.7], [0.4, 0.55, 0.3, 0.2, 0.65, 0.1]).requires_grad_(True)
    theta = adaptive_threshold(similarity_moments(s))
    positive, negative = boundary_loss(s, theta, margin=0.05, alpha=10.0, beta=40.0, hard_negative_scale=40.0)
    (positive + negative).backward()
    grad = s.grad
    off = ~torch.eye(3, dtype=torch.bool)
    assert (grad.diagonal() < 0).all()  # descending raises positives
    assert (grad[off] > 0).all()  # descending lowers negatives
    # hard-negative weighting: row 2's harder negative (0.65, col 0) is pushed more than 0.1 (col 1)
    assert grad[2, 0] > 100 * grad[2, 1]


def test_boundary_loss_hand_value_uniform_weights():
    s = _matrix([0.9, 0.7], [-0.1, 0.5])
    pos, neg = boundary_loss(s, torch.tensor(0.65), margin=0.05, alpha=10.0, beta=40.0, hard_negative_scale=0.0)
    sp = torch.nn.functional.softplus
    expected_pos = (sp(torch.tensor(10 * (0.70 - 0.9))) + sp(torch.tensor(10 * (0.70 - 0.7)))) / 2
    expected_neg = (sp(torch.tensor(40 * (-0.1 - 0.60))) + sp(torch.tensor(40 * (0.5 - 0.60)))) / 2
    assert pos.item() == pytest.approx(expected_pos.item(), abs=1e-6)
    assert neg.item() == pytest.approx(expected_neg.item(), abs=1e-6)


def test_training_with_the_loss_separates_pairs_around_the_threshold():
    torch.manual_seed(0)
    loss_fn = build_loss("nsfse", {"infonce_weight": 0.0, "ema_momentum": 0.0})
    query = torch.nn.Parameter(torch.randn(8, 16))
    target = torch.nn.Parameter(torch.randn(8, 16))
    optimizer = torch.optim.Adam([query, target], lr=0.05)
    for _ in range(150):
        out = loss_fn(torch.nn.functional.normalize(query, dim=-1), torch.nn.functional.normalize(target, dim=-1), 10.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        s = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(target, dim=-1).t()
        theta = out.logs["threshold"].item()
    off = ~torch.eye(8, dtype=torch.bool)
    assert s.diagonal().min().item() > theta > s[off].max().item()


def test_ema_buffers_update_in_training_only_and_round_trip():
    loss_fn = build_loss("nsfse", {"ema_momentum": 0.5})
    assert isinstance(loss_fn, NegativeSensitiveLoss)
    first = _matrix([0.9, 0.7], [-0.1, 0.5])  # moments (0.8, 0.1, 0.2, 0.3)
    second = _matrix([0.6, 0.6], [0.0, 0.0])  # moments (0.6, 0.0, 0.0, 0.0)
    q = torch.eye(2)
    loss_fn.train()
    loss_fn(q, first, 10.0)  # target rows = columns of S since q = I: S = I @ first^T
    assert int(loss_fn.num_updates) == 1
    assert loss_fn.running_moments.tolist() == pytest.approx([0.8, 0.1, 0.2, 0.3], abs=1e-6)
    loss_fn(q, second, 10.0)
    assert loss_fn.running_moments.tolist() == pytest.approx([0.7, 0.05, 0.1, 0.15], abs=1e-6)
    loss_fn.eval()
    out = loss_fn(q, first, 10.0)
    assert int(loss_fn.num_updates) == 2  # eval calls read the EMA, never update it
    assert out.logs["threshold"].item() == pytest.approx((0.7 * 0.15 + 0.1 * 0.05) / 0.2, abs=1e-4)

    restored = build_loss("nsfse", {"ema_momentum": 0.5})
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.running_moments.tolist() == loss_fn.running_moments.tolist()
    assert int(restored.num_updates) == 2


def test_nsfse_loss_is_infonce_plus_boundary_terms():
    q, t = _unit_rows(5, 8, 3), _unit_rows(5, 8, 4)
    loss_fn = build_loss("nsfse", {"ema_momentum": 0.0, "boundary_weight": 0.5, "infonce_weight": 2.0})
    out = loss_fn(q, t, 10.0)
    s = q @ t.t()
    pos, neg = boundary_loss(s, adaptive_threshold(similarity_moments(s)), 0.05, 10.0, 10.0, 10.0)
    assert out.loss.item() == pytest.approx(2.0 * info_nce(s, 10.0).item() + 0.5 * (pos + neg).item(), abs=1e-5)
    single = loss_fn(q[:1], t[:1], 10.0)  # one row: no negatives, InfoNCE only (0 here)
    assert single.loss.item() == pytest.approx(0.0, abs=1e-6)
