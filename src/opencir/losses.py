"""Contrastive objectives on (query, target) embedding pairs, chosen by name (``loss:``).

Every loss in ``LOSSES`` is an ``nn.Module`` whose ``forward(query, target, scale)`` takes
L2-normalised (B, D) query and target rows and returns a ``LossOutput``. Row i of the
two matrices is a positive pair; every other target of the batch is a negative for
query i (spec 1.4; duplicate targets in a batch are negatives, as in every official code).

* ``infonce``: in-batch cross entropy CE(scale * Q T^T, diag), optionally symmetric.
* ``nsfse``: the negative-sensitive adaptive-boundary loss. **Reconstruction**
  (spec 6.3, [INFERRED]): the NSFSE paper (Wang et al., IEEE TMM 2024) has no public
  code and only its abstract was available, so this is a design in the paper's spirit,
  not the authors' exact loss.

A loss may hold state (the ``nsfse`` EMA of similarity moments is a registered buffer),
so a method owns its loss as a submodule and the state is saved with the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import torch
from torch import nn

from .registry import Registry

__all__ = [
    "GATHER_KEY",
    "LOSSES",
    "BatchGather",
    "ContrastiveLoss",
    "InfoNCE",
    "InfoNCEOptions",
    "LossOutput",
    "NegativeSensitiveLoss",
    "NegativeSensitiveOptions",
    "SimilarityMoments",
    "adaptive_threshold",
    "batch_gather",
    "boundary_loss",
    "build_loss",
    "info_nce",
    "similarity_moments",
    "validate_loss_options",
]


class LossOutput(NamedTuple):
    """``loss``: the scalar to minimise; ``logs``: detached named scalars for the run log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


BatchGather = Callable[..., tuple[torch.Tensor, ...]]
"""``gather(*rows) -> rows of the whole global batch``: each (b, ...) tensor of per-sample
rows becomes the (B, ...) rows of every rank's (and micro-batch's) share, in batch order,
with gradients flowing back to this process's rows (``opencir.training.distributed``)."""
GATHER_KEY = "gather"
"""The batch key under which the trainer passes the step's ``BatchGather``."""


def _local_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensors


def batch_gather(batch: Mapping[str, Any]) -> BatchGather:
    """The gatherer of a training batch; the identity for a batch of one process.

    Methods pass the per-sample rows that feed batch-level terms (in-batch contrastive
    losses, similarity regularisers, loss statistics) through it, so those terms see the
    global batch under data parallelism and gradient accumulation; terms that are means
    of per-sample values stay on the local rows. Only pass rows computed from this
    process's samples (not from already gathered rows)."""
    return batch.get(GATHER_KEY, _local_batch)


class ContrastiveLoss(nn.Module):
    """Base of the registered losses: ``options_class`` holds the loss's hyper-parameters."""

    options_class: ClassVar[type] = object

    def __init__(self, options: Any) -> None:
        super().__init__()
        self.options = options

    def forward(self, query: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor) -> LossOutput:
        """query, target: normalised (B, D); scale: inverse temperature of the logits."""
        raise NotImplementedError


LOSSES: Registry[type[ContrastiveLoss]] = Registry("loss function")


def validate_loss_options(name: str, options: Mapping[str, Any] | None) -> Any:
    """The options dataclass of loss ``name`` built from ``options``; clear errors for
    an unknown loss name, unknown keys or invalid values."""
    cls = LOSSES.get(name)
    options = dict(options or {})
    known = {f.name for f in fields(cls.options_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise KeyError(f"unknown loss_options {unknown} for loss {name!r}; valid keys: {sorted(known)}")
    return cls.options_class(**options)


def build_loss(name: str, options: Mapping[str, Any] | None = None) -> ContrastiveLoss:
    """Instantiate the registered loss ``name`` with ``options`` (a mapping of its options)."""
    return LOSSES.get(name)(validate_loss_options(name, options))


def _similarities(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine matrix (B, B) in float32 (also under autocast), rows = queries."""
    if query.shape != target.shape or query.dim() != 2:
        raise ValueError(f"query and target must both be (B, D); got {tuple(query.shape)} and {tuple(target.shape)}")
    with torch.autocast(query.device.type, enabled=False):  # fp32 even inside an AMP region
        return query.float() @ target.float().t()


# ---------------------------------------------------------------- InfoNCE
def info_nce(similarity: torch.Tensor, scale: float | torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """CE(scale * S, diag) over rows of the (B, B) similarity ``S``; ``symmetric`` also
    averages in the column direction (target -> query), as Pic2Word does."""
    logits = scale * similarity
    labels = torch.arange(similarity.shape[0], device=similarity.device)
    loss = nn.functional.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + nn.functional.cross_entropy(logits.t(), labels)) / 2
    return loss


@dataclass
class InfoNCEOptions:
    """``symmetric``: average query->target and target->query cross entropies."""

    symmetric: bool = False


@LOSSES.register("infonce")
class InfoNCE(ContrastiveLoss):
    """In-batch InfoNCE: CE(scale * Q T^T, diag) (spec 1.4). Stateless."""

    options_class = InfoNCEOptions

    def forward(self, query: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor) -> LossOutput:
        loss = info_nce(_similarities(query, target), scale, self.options.symmetric)
        return LossOutput(loss, {"infonce": loss.detach()})


# ------------------------------------------------- negative-sensitive loss
class SimilarityMoments(NamedTuple):
    """Mean and (population) standard deviation of the positive and negative similarities."""

    mu_pos: torch.Tensor
    sigma_pos: torch.Tensor
    mu_neg: torch.Tensor
    sigma_neg: torch.Tensor

    def stacked(self) -> torch.Tensor:
        return torch.stack(list(self))


def _negatives_mask(size: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(size, dtype=torch.bool, device=device)


def similarity_moments(similarity: torch.Tensor) -> SimilarityMoments:
    """Detached moments of the diagonal (positives) and off-diagonal (negatives) of a
    (B, B) similarity matrix, B >= 2."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape[0] < 2:
        raise ValueError(f"similarity_moments needs a square (B, B) matrix with B >= 2, got {tuple(similarity.shape)}")
    s = similarity.detach().float()
    pos = s.diagonal()
    neg = s[_negatives_mask(s.shape[0], s.device)]
    return SimilarityMoments(pos.mean(), pos.std(unbiased=False), neg.mean(), neg.std(unbiased=False))


def adaptive_threshold(moments: SimilarityMoments, eps: float = 1e-6) -> torch.Tensor:
    """theta = (mu_p sigma_n + mu_n sigma_p) / (sigma_p + sigma_n): the point equally many
    standard deviations away from both means, (mu_p - theta)/sigma_p = (theta - mu_n)/sigma_n.
    It lies between mu_n and mu_p, closer to the tighter distribution; ``eps`` keeps it
    finite (the midpoint) when both spreads are 0. (4,) moments -> scalar."""
    mu_p, sigma_p, mu_n, sigma_n = moments
    return (mu_p * sigma_n + mu_n * sigma_p + eps * (mu_p + mu_n) / 2) / (sigma_p + sigma_n + eps)


def boundary_loss(
    similarity: torch.Tensor,
    threshold: torch.Tensor | float,
    margin: float,
    alpha: float,
    beta: float,
    hard_negative_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two adaptive-boundary terms of a (B, B) similarity matrix (spec 6.3 (c)):

    positive = mean_i softplus(alpha (theta + m - S_ii)),
    negative = mean_i sum_{j != i} w_ij softplus(beta (S_ij - theta + m)),
    w_ij = softmax_{j != i}(h S_ij) (detached; h = ``hard_negative_scale``, 0 = uniform),
    i.e. a per-query weighted mean that up-weights hard negatives. Returns (positive, negative).
    """
    size = similarity.shape[0]
    s = similarity.float()
    positive = nn.functional.softplus(alpha * (threshold + margin - s.diagonal())).mean()
    if size < 2:
        return positive, s.new_zeros(())
    mask = _negatives_mask(size, s.device)
    neg = s[mask].view(size, size - 1)
    weights = torch.softmax(hard_negative_scale * neg.detach(), dim=1)
    negative = (weights * nn.functional.softplus(beta * (neg - threshold + margin))).sum(dim=1).mean()
    return positive, negative


@dataclass
class NegativeSensitiveOptions:
    """Hyper-parameters of the negative-sensitive loss (spec 6.3 (c); all [INFERRED]).

    margin m, sharpness ``alpha`` (positives) and ``beta`` (negatives), hard-negative
    weighting scale h (0 = uniform), ``ema_momentum`` for the running similarity moments
    (0 = this batch only), the weights of the boundary and InfoNCE terms, and whether the
    InfoNCE term is symmetric. The spec's starting values are beta = h = 40; with those the
    negative push outweighs the positive pull and the NSFSE composer collapsed on cir-shapes
    (docs/methods/nsfse.md), so the defaults use beta = alpha = 10 and h = 10 (the better of the two settings tried,
    chosen on cir-shapes val).
    """

    margin: float = 0.05
    alpha: float = 10.0
    beta: float = 10.0
    hard_negative_scale: float = 10.0
    ema_momentum: float = 0.9
    boundary_weight: float = 1.0
    infonce_weight: float = 1.0
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"loss_options.ema_momentum must be in [0, 1), got {self.ema_momentum}")
        for key in ("alpha", "beta"):
            if not getattr(self, key) > 0:
                raise ValueError(f"loss_options.{key} must be > 0, got {getattr(self, key)}")
        for key in ("hard_negative_scale", "boundary_weight", "infonce_weight"):
            value = getattr(self, key)
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"loss_options.{key} must be a finite number >= 0, got {value}")


@LOSSES.register("nsfse")
class NegativeSensitiveLoss(ContrastiveLoss):
    """Negative-sensitive adaptive-boundary loss + in-batch InfoNCE ([INFERRED], spec 6.3).

    The threshold theta separating matched from mismatched pairs is re-estimated from
    the positive/negative similarity distributions (stop-gradient moments), optionally
    smoothed by an EMA kept in the buffer ``running_moments`` (mu_p, sigma_p, mu_n,
    sigma_n) with ``num_updates`` counting the batches seen; both are saved with the
    model. Only training-mode calls update the EMA.
    """

    options_class = NegativeSensitiveOptions

    def __init__(self, options: NegativeSensitiveOptions) -> None:
        super().__init__(options)
        self.register_buffer("running_moments", torch.zeros(4))
        self.register_buffer("num_updates", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _update(self, batch: SimilarityMoments) -> SimilarityMoments:
        """Fold this batch's moments into the EMA (train mode) and return the moments to use."""
        new = batch.stacked().to(self.running_moments)
        if self.training:
            if int(self.num_updates) == 0 or self.options.ema_momentum == 0:
                self.running_moments.copy_(new)
            else:
                self.running_moments.mul_(self.options.ema_momentum).add_(new, alpha=1 - self.options.ema_momentum)
            self.num_updates += 1
            return SimilarityMoments(*self.running_moments.clone())
        if int(self.num_updates) > 0 and self.options.ema_momentum > 0:
            return SimilarityMoments(*self.running_moments.clone())
        return batch

    def threshold(self) -> torch.Tensor:
        """The current EMA threshold (meaningful after at least one training batch)."""
        return adaptive_threshold(SimilarityMoments(*self.running_moments))

    def forward(self, query: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor) -> LossOutput:
        o = self.options
        similarity = _similarities(query, target)
        contrastive = info_nce(similarity, scale, o.symmetric)
        if similarity.shape[0] < 2:  # no negatives: no distribution to separate
            return LossOutput(o.infonce_weight * contrastive, {"infonce": contrastive.detach()})
        moments = self._update(similarity_moments(similarity))
        theta = adaptive_threshold(moments)
        positive, negative = boundary_loss(similarity, theta, o.margin, o.alpha, o.beta, o.hard_negative_scale)
        total = o.infonce_weight * contrastive + o.boundary_weight * (positive + negative)
        logs = {
            "infonce": contrastive.detach(),
            "boundary_pos": positive.detach(),
            "boundary_neg": negative.detach(),
            "threshold": theta.detach(),
            "mu_pos": moments.mu_pos.detach(),
            "mu_neg": moments.mu_neg.detach(),
        }
        return LossOutput(total, logs)
