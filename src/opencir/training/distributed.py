"""Data-parallel training and encoding on PyTorch's own engine (``torchrun`` + ``torch.distributed``).

Nothing here launches processes or moves bytes itself: ``torchrun`` starts the ranks and
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``; ``torch.distributed`` (NCCL on
GPUs, gloo on CPU) does every collective; DDP (or FSDP) reduces the gradients. This
module holds the few decisions OpenCIR makes on top (docs/training.md):

* ``init_distributed``: one ``DistributedContext`` per run, with clear errors for NCCL on
  CPU, a rank without a device and (``check_same``) configs that differ across ranks;
* ``micro_batches``: rank r's share of a global batch plan (``train.batch_size`` is the
  global batch, ``train.accumulate`` splits it further into micro-batches);
* ``StepGather``: the batch gatherer the trainer hands to ``method.loss`` so that
  batch-level terms (in-batch contrastive losses, similarity regularisers, NSFSE's
  thresholds) see the whole global batch, with gradients, also under accumulation.

Why the gatherer gives the single-process gradients. Rank r's loss is
L_r = G(gathered rows) + H(local rows): G is a batch-level term (the same value on every
rank), H a mean of per-sample terms. ``all_gather`` with gradients sums the N copies of
dG/dx_r into rank r, and DDP averages the N ranks' gradients, so the update is
dG + mean_r dH_r: exactly the gradient of the global-batch loss (shards are equal). Under
accumulation (k micro-batches) the step runs twice: a no-grad *record* pass collects
every micro-batch's gathered rows, then a *replay* pass per micro-batch recomputes its
rows with gradients, puts them among the recorded ones (scaling their gradient by k) and
back-propagates loss / k; the result is the gradient of the whole global batch again.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")
STRATEGIES = ("ddp", "fsdp")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one rank (torchrun, or a process group)."""
    return _env_int("WORLD_SIZE", 1) > 1 or (dist.is_available() and dist.is_initialized())


@dataclass
class DistributedContext:
    """Rank, world size and device of this process; single-process when ``world_size`` is 1.

    It also satisfies ``opencir.encoding.features.Sharding`` (``rank``, ``world_size``,
    ``all_gather_object``), which the feature cache, the evaluator and ``opencir index``
    take to shard their encoding.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    object_group: Any = None
    """The group object collectives use: a gloo group next to NCCL, else the default group."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.object_group)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled through the CPU group)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.object_group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.object_group)
        return box[0]

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a tensor (float64 on the CPU group, so logs reduce exactly)."""
        if not self.distributed:
            return values
        out = values.detach().double().cpu().clone()
        dist.all_reduce(out, group=self.object_group)
        return out / self.world_size

    def check_same(self, what: str, payload: Any) -> None:
        """Fail on every rank, naming the differing keys, when ``payload`` differs across ranks."""
        if not self.distributed:
            return
        text = json.dumps(payload, sort_keys=True, default=str)
        everyone = self.all_gather_object(text)
        bad = [r for r, other in enumerate(everyone) if other != everyone[0]]
        if bad:
            ours, theirs = json.loads(everyone[0]), json.loads(everyone[bad[0]])
            keys = sorted(_differing_keys(ours, theirs))
            raise ValueError(
                f"the {what} differs across ranks: rank {bad[0]} has other values than rank 0 for {keys[:8]}; "
                f"start every rank with the same config file and overrides"
            )


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in sorted(set(a) | set(b)):
            keys += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return keys
    return [] if a == b else [prefix.rstrip(".") or "<value>"]


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"train.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"train.backend=nccl needs CUDA devices, but this run's device is {device.type!r}"
            f"{'' if torch.cuda.is_available() else ' (no CUDA device is visible)'}: use train.backend=gloo "
            f"(or auto) for CPU runs, or device=cuda on GPU machines"
        )
    return backend


def _rank_device(device_name: str, rank: int, local_rank: int) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` (checked to exist); ``cpu`` as is."""
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device(device_name if device_name != "auto" else "cpu")
    if ":" in device_name:
        raise ValueError(
            f"device={device_name!r} under torchrun: give device=cuda (or auto); each rank uses cuda:LOCAL_RANK"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise ValueError(
            f"rank {rank} (local rank {local_rank} on {socket.gethostname()}) has no CUDA device: {count} visible"
            f"{' (CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'] + ')' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}"
            f"; start torchrun with --nproc_per_node {max(count, 1) if count else 'N'} or fewer, or use device=cpu"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """The context of this process: joins torchrun's process group when ``WORLD_SIZE`` > 1
    (once per process: later calls reuse it; it is destroyed at exit), else a
    single-process context on ``device_name``. Device and backend are checked first."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistributedContext(device=_single_device(device_name))
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _rank_device(device_name, rank, local)
    name = _resolve_backend(backend, device)
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(name, timeout=timedelta(seconds=timeout_s),
                                device_id=device if name == "nccl" else None)
        atexit.register(_destroy)
        log.info("rank %d/%d on %s (%s)", rank, world, device, name)
    elif dist.get_backend() != name:
        raise ValueError(f"this process already joined a {dist.get_backend()!r} process group; train.backend={backend!r} "
                         f"asks for {name!r}")
    rank = dist.get_rank()
    group = dist.new_group(backend="gloo") if name == "nccl" else None
    if rank != 0:  # logs and progress come from rank 0; other ranks report warnings and errors only
        logging.getLogger("opencir").setLevel(logging.WARNING)
    return DistributedContext(rank, world, local, device, name, group)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _single_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------- batch plans
def check_batch_split(batch_size: int, world_size: int, accumulate: int, examples: int, drop_last: bool) -> None:
    """Global batches must split into world_size x accumulate equal shards."""
    if accumulate < 1:
        raise ValueError(f"train.accumulate must be >= 1, got {accumulate}")
    parts = world_size * accumulate
    if batch_size % parts:
        raise ValueError(
            f"train.batch_size={batch_size} (the global batch) does not split into {world_size} rank(s) x "
            f"{accumulate} micro-batch(es): make it a multiple of {parts}"
        )
    last = examples % batch_size if examples >= batch_size else examples
    if last and (not drop_last or examples < batch_size) and last % parts:
        raise ValueError(
            f"the last batch of {last} examples (of {examples}) does not split into {parts} equal shards: set "
            f"train.drop_last=true or choose a batch size for which it does"
        )


def micro_batches(rows: Sequence[int], rank: int, world_size: int, accumulate: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch: chunk m * world_size + rank of the
    batch cut into world_size x accumulate equal contiguous chunks, for m < accumulate
    (so micro-batch m gathered over ranks, then over m, is the batch in its own order)."""
    parts = world_size * accumulate
    size = len(rows) // parts
    return [list(rows[(m * world_size + rank) * size:(m * world_size + rank + 1) * size]) for m in range(accumulate)]


# ------------------------------------------------------------------- gather
class StepGather:
    """The batch gatherer of one optimisation step (``opencir.losses.BatchGather``).

    Modes: ``live`` (accumulate = 1: all-gather with gradients across ranks, identity in
    one process), ``record`` (no-grad pass over the micro-batches: remember the local
    rows of each call and return them) and ``replay`` (micro-batch m's live rows among
    the recorded global rows; their gradient is scaled by the number of micro-batches).
    """

    def __init__(self, context: DistributedContext, accumulate: int) -> None:
        self.context, self.accumulate = context, accumulate
        self.mode = "live" if accumulate == 1 else "record"
        self.micro = 0
        self.call = 0
        self._records: list[list[list[torch.Tensor]]] = [[] for _ in range(accumulate)]
        self._gathered: list[list[torch.Tensor]] = []  # per call, per micro-batch: (world x b, ...) rows

    def start(self, micro: int) -> None:
        """Begin micro-batch ``micro`` of the current pass."""
        self.micro, self.call = micro, 0

    def finish_record(self) -> None:
        """After the record pass: gather every call's rows over ranks, switch to replay."""
        calls = len(self._records[0])
        if any(len(r) != calls for r in self._records):
            raise RuntimeError("method.loss called the batch gatherer a different number of times per micro-batch")
        self._gathered = [[self._all_gather(self._records[m][c], grad=False) for m in range(self.accumulate)]
                          for c in range(calls)]
        self._records = [[] for _ in range(self.accumulate)]
        self.mode = "replay"

    def _all_gather(self, tensor: torch.Tensor, grad: bool) -> torch.Tensor:
        if not self.context.distributed:
            return tensor
        if grad:
            from torch.distributed.nn.functional import all_gather

            with warnings.catch_warnings():  # its deprecation names a private successor only
                warnings.simplefilter("ignore", FutureWarning)
                return torch.cat(all_gather(tensor))
        parts = [torch.empty_like(tensor) for _ in range(self.context.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def _one(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.mode == "live":
            return self._all_gather(tensor, grad=True)
        if self.mode == "record":
            self._records[self.micro].append(tensor.detach())
            return tensor
        k = self.accumulate
        live = tensor + (k - 1) * (tensor - tensor.detach())  # the same values, gradient x k
        stored = self._gathered[self.call]
        self.call += 1
        rows = [stored[m] if m != self.micro else self._all_gather(live, grad=True) for m in range(k)]
        return torch.cat(rows)

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._one(t) for t in tensors)


@contextmanager
def frozen_state(module: nn.Module) -> Iterator[None]:
    """Restore the module's buffers (e.g. nsfse's EMA) and the RNG when the block exits."""
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        restore_buffers(module, buffers)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def restore_buffers(module: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])


# -------------------------------------------------------------------- models
def wrap_model(module: nn.Module, context: DistributedContext, strategy: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP around ``module``; the module itself in one process."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not context.distributed:
        return module
    if strategy == "fsdp":
        return _fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [context.device.index] if context.device.type == "cuda" else None
    # find_unused_parameters: some trainable weights get no gradient by design (OFFSET's
    # token weights behind a detached teacher)
    return DDP(module, device_ids=ids, find_unused_parameters=True)


def _fully_shard(module: nn.Module) -> nn.Module:
    """FSDP2 (``fully_shard``) on the whole module, one unit: every parameter is a DTensor
    sharded over the ranks (dim 0) between forwards; the forward all-gathers them, the
    backward reduce-scatters the gradients. Works with gloo on CPU and NCCL on GPUs.
    Rank 0's weights (e.g. a resumed checkpoint) are broadcast first. Scalar parameters
    (CLIP's ``logit_scale``), which ``fully_shard`` cannot shard, stay whole on every rank;
    their gradients are averaged over the ranks after each backward (a sum, so it also
    holds under accumulation)."""
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
    scalars = {p for p in module.parameters() if p.dim() == 0}

    def average(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(world)

    for p in scalars:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(average)
    return fully_shard(module, ignored_params=scalars or None)


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


def _full_options(**extra: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state (FSDP: gathered to rank 0's CPU, keyed by parameter name;
    other ranks get an empty dict; a collective)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (saved at any world size; FSDP: this rank's shard of a
    state saved under FSDP, which every rank holds)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if state.get("state") and not all(isinstance(k, str) for k in state["state"]):
            raise ValueError("this checkpoint's optimizer state was saved without train.strategy=fsdp; resume it "
                             "with the strategy it was saved with (or start a new output_dir)")
        set_optimizer_state_dict(model, optimizer, state, options=_full_options())
        return
    if state.get("state") and any(isinstance(k, str) for k in state["state"]):
        raise ValueError("this checkpoint's optimizer state was saved under train.strategy=fsdp; resume it with "
                         "train.strategy=fsdp (or start a new output_dir)")
    optimizer.load_state_dict(state)


def grad_scaler(model: nn.Module, enabled: bool):
    """fp16 loss scaling (torch.amp's scaler, which handles FSDP2's DTensor gradients)."""
    return torch.amp.GradScaler("cuda", enabled=enabled)


def no_sync(model: nn.Module, skip: bool):
    """DDP's ``no_sync`` when ``skip`` (all but the last micro-batch), else a no-op (FSDP2
    reduce-scatters every micro-batch's gradients into the sharded ones: the same sum)."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else nullcontext()


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """FSDP: the whole parameters, as plain tensors on every rank, for calls outside the
    training forward (feature caches, evaluation, saving); the shards come back after.
    Every rank enters (a collective); DDP / one process: a no-op."""
    if not _is_fsdp(model):
        yield
        return
    from torch.distributed.tensor import DTensor

    sharded = [(m, name, p) for m in model.modules() for name, p in m._parameters.items() if isinstance(p, DTensor)]
    try:
        for m, name, p in sharded:
            m._parameters[name] = nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
        yield
    finally:
        for m, name, p in sharded:
            m._parameters[name] = p
