"""One Trainer for every method and dataset.

Per epoch: shuffle (seeded by seed + epoch), build batches, ``method.loss(batch)``, step.
When the method's image encoder is frozen, every image is encoded once into a feature
table (cached on disk) and training runs on cached features. Validation after each
``val_every`` epochs selects the best model by the sum of ``select_metrics``. A ``last``
checkpoint after every epoch lets a killed run resume with the same result as an
uninterrupted one (RNG states, optimizer, schedule and scaler are restored).
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from torch import nn

from ..data.transforms import ImageTransform
from ..devices import resolve_device  # noqa: F401  (re-exported: commands import it from here)
from ..data.types import CIRDataset, Triplet
from ..encoding.features import FeatureTable, TextFeatureCache, encode_image_table, load_pixels, method_transform
from ..evaluation.evaluator import evaluate, select_score
from ..losses import GATHER_KEY, BatchGather
from ..methods.base import CIRMethod, Features
from ..methods.io import load_weights_into, save_model
from .card import run_card
from .checkpoint import STATE_FILE, recover_checkpoint, write_checkpoint
from .config import RunConfig, config_to_dict, save_run_config
from ..encoding.precision import autocast, resolve_training_precision
from .distributed import (DistributedContext, StepGather, check_batch_split, frozen_state, full_parameters,
                          grad_scaler, init_distributed, load_optimizer_state, micro_batches, no_sync,
                          optimizer_state_dict, restore_buffers, wrap_model)
from .optim import OPTIMIZERS, SCHEDULES
from .seeding import loader_generator, seed_everything, seed_worker

log = logging.getLogger(__name__)
STEPS_FILE = "steps.jsonl"


class _PixelPairs(Dataset):
    """Reference/target (or single image) pixels for training with a trainable image encoder."""

    def __init__(self, dataset: CIRDataset, keys: list[tuple[str, ...]], transform: ImageTransform, masks: bool) -> None:
        self.dataset, self.keys, self.transform, self.masks = dataset, keys, transform, masks

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> list[dict[str, torch.Tensor]]:
        return [load_pixels(self.dataset, image_id, self.transform, self.masks) for image_id in self.keys[i]]


def _collate(items: list[list[dict[str, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.stack([item[slot][k] for item in items]) for k in items[0][slot]} for slot in range(len(items[0]))]


@dataclass
class _BatchPlan:
    """Rows of one batch: indices into the training examples."""

    rows: list[int]


class Trainer:
    """Trains ``method`` on ``train_set``; validates on ``val_set``; writes to ``config.output_dir``."""

    def __init__(self, method: CIRMethod, config: RunConfig, train_set: CIRDataset, val_set: CIRDataset | None,
                 dist: DistributedContext | None = None) -> None:
        self.method, self.config, self.train_set, self.val_set = method, config, train_set, val_set
        self.cfg = config.train
        self.dist = dist if dist is not None else init_distributed(config.device, self.cfg.backend)
        self.device = self.dist.device if self.dist.distributed else resolve_device(config.device)
        self.out = Path(config.output_dir)
        self.req = method.requirements
        self.precision = resolve_training_precision(self.cfg.precision, self.cfg.amp, self.device)
        self.use_amp = self.precision == "fp16"  # the grad scaler is for fp16 only
        self._examples_cache: list[Any] = []
        self._started = time.monotonic()

    def _elapsed(self) -> float:
        """Seconds since this trainer was made (the training time written into model cards)."""
        return time.monotonic() - self._started

    @property
    def encode_precision(self) -> str:
        """Precision of the feature cache and validation: bf16 when training in bf16, else
        fp32 (fp16 training on CUDA keeps its fp32 cache, as before precision existed)."""
        return "bf16" if self.precision == "bf16" else "fp32"

    # ------------------------------------------------------------ examples
    def _examples(self) -> list[Any]:
        if self.req.train_data == "triplets":
            examples = [t for t in self.train_set.triplets if t.target_ids]
        else:
            examples = [r for r in self.train_set.images.values()]
        if len(examples) < 2:
            raise ValueError(f"{self.train_set.name}/{self.train_set.split} has {len(examples)} training examples")
        return examples

    def _image_keys(self, example: Any) -> tuple[str, ...]:
        if isinstance(example, Triplet):
            return (example.reference_id, example.target_id)
        return (example.image_id,)

    def _batches(self, n: int, epoch: int) -> list[_BatchPlan]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + epoch)).tolist()
        size = self.cfg.batch_size
        stop = n - n % size if (self.cfg.drop_last and n >= size) else n
        return [_BatchPlan(order[i : min(i + size, stop)]) for i in range(0, stop, size)]

    def _image_batches(
        self, examples: list[Any], plans: list[_BatchPlan], table: FeatureTable | None, epoch: int = 0
    ) -> Iterator[list[Any]]:
        """Per batch, one entry per image slot (reference, target) or (image,): cached
        Features rows when ``table`` is given, else collated pixels (and masks)."""
        if table is not None:
            for plan in plans:
                keys = [self._image_keys(examples[r]) for r in plan.rows]
                yield [table.gather([k[slot] for k in keys], self.device) for slot in range(len(keys[0]))]
            return
        _, transform = method_transform(self.method, train=True)
        flat = [row for plan in plans for row in plan.rows]
        pixels = _PixelPairs(self.train_set, [self._image_keys(examples[r]) for r in flat], transform, self.req.needs_masks)
        sizes = [len(plan.rows) for plan in plans]
        sampler = _ChunkSampler(sizes)
        loader = DataLoader(pixels, batch_sampler=sampler, num_workers=self.cfg.num_workers, collate_fn=_collate,
                            generator=loader_generator(self.cfg.seed + epoch), worker_init_fn=seed_worker)
        yield from loader  # pixel slots; encoded inside the step's autocast (see _encode_slots)

    def _encode_slots(self, slots: list[Any], from_table: bool) -> list[Features]:
        """Image features of each slot: cached rows as they are, or pixels through the encoder."""
        if from_table:
            return slots
        return [self.method.encode_images(s["pixels"].to(self.device), s["masks"].to(self.device) if "masks" in s else None)
                for s in slots]

    # -------------------------------------------------------------- states
    def _state(self, epoch: int, optimizer_state: dict[str, Any], scheduler, scaler, best: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best": best,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "world_size": self.dist.world_size,
        }

    def _save_last(self, state: dict[str, Any]) -> None:
        write_checkpoint(self.method, self.out / "last", state, extra={"epoch": state["epoch"]}, backbone_store=self.out,
                         card=run_card(self.config, self.val_set, state["best"].get("metrics"), self._elapsed()))

    def _read_last(self) -> dict[str, Any] | None:
        """Rank 0 reads ``last/`` (after repairing a kill mid-write) and loads its weights;
        every rank gets the trainer state (DDP then copies rank 0's weights to all)."""
        state = None
        if self.dist.is_main:
            last = recover_checkpoint(self.out / "last")
            if last is not None:
                load_weights_into(self.method, last)
                state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
        return self.dist.broadcast_object(state)

    def _resume_from(self, state: dict[str, Any] | None, model: nn.Module, optimizer, scheduler, scaler
                     ) -> tuple[int, dict[str, Any]]:
        if state is None:
            return 0, {"score": None, "epoch": None, "stale": 0, "metrics": {}}
        load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        if self.dist.is_main:
            for name in ("metrics.jsonl", STEPS_FILE):
                self._truncate_log(name, state["epoch"])
        log.info("resumed from %s after epoch %d (saved by %d rank(s), now %d)", self.out / "last", state["epoch"],
                 state.get("world_size", 1), self.dist.world_size)
        return state["epoch"] + 1, state["best"]

    def _truncate_log(self, name: str, last_epoch: int) -> None:
        path = self.out / name
        if path.is_file():
            lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["epoch"] <= last_epoch]
            path.write_text("".join(l + "\n" for l in lines))

    def _append_log(self, name: str, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with (self.out / name).open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- fit
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train; returns ``{"best_epoch", "best_score", "best_metrics", "epochs_run"}``."""
        cfg, ctx = self.cfg, self.dist
        ctx.check_same("run config", config_to_dict(self.config))
        examples = self._examples_cache = self._examples()
        check_batch_split(cfg.batch_size, ctx.world_size, cfg.accumulate, len(examples), cfg.drop_last)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_run_config(self.config, self.out / "config.yaml")
            if not resume:
                shutil.rmtree(self.out / "last", ignore_errors=True)
                for name in ("metrics.jsonl", STEPS_FILE):
                    (self.out / name).unlink(missing_ok=True)
        seed_everything(cfg.seed)
        method = self.method.to(self.device)
        if not method.parameter_groups(cfg.lr, cfg.weight_decay):
            raise ValueError(f"method {method.name!r} with this config has no trainable parameters")
        state = self._read_last() if resume else None  # rank 0 loads the weights; DDP/FSDP copy them to all
        model = wrap_model(_LossStep(method, self._micro_loss), ctx, cfg.strategy)
        groups = method.parameter_groups(cfg.lr, cfg.weight_decay)  # after wrapping: FSDP's parameter views
        optimizer = OPTIMIZERS.get(cfg.optimizer)(groups, cfg)
        steps_per_epoch = len(self._batches(len(examples), 0))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch))
        scaler = grad_scaler(model, enabled=self.use_amp)
        start_epoch, best = self._resume_from(state, model, optimizer, scheduler, scaler)

        table = None
        if self.req.image_encoder_frozen:
            ids = sorted({k for e in examples for k in self._image_keys(e)})
            with full_parameters(model):  # FSDP: the frozen encoder runs outside the training forward
                table = encode_image_table(method, self.train_set, ids, self.config.cache_dir, cfg.eval_batch_size,
                                           self.device, cfg.num_workers, precision=self.encode_precision, sharding=ctx)
        texts = TextFeatureCache(method, self.device, enabled=self.req.text_encoder_frozen)

        for epoch in range(start_epoch):  # rebuild the text cache exactly as the killed run had it
            with full_parameters(model):
                texts.prefetch([s for strings in self._epoch_texts(examples, self._batches(len(examples), epoch), epoch)
                                for s in strings])
        epochs_run = 0
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            plans = self._batches(len(examples), epoch)
            epoch_texts = self._epoch_texts(examples, plans, epoch)
            with full_parameters(model):  # FSDP: the frozen text encoder runs outside the training forward
                texts.prefetch([s for strings in epoch_texts for s in strings])
            totals: dict[str, float] = {}
            epoch_lr = optimizer.param_groups[0]["lr"]
            local = [[_BatchPlan(rows) for rows in micro_batches(plan.rows, ctx.rank, ctx.world_size, cfg.accumulate)]
                     for plan in plans]
            position = [{row: i for i, row in enumerate(plan.rows)} for plan in plans]
            micro_slots = self._group(self._image_batches(examples, [m for micros in local for m in micros], table, epoch),
                                      cfg.accumulate)
            bar = tqdm(zip(local, micro_slots), total=len(plans), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=None if ctx.is_main else True)
            for step, (micros, slots) in enumerate(bar):
                strings = [[epoch_texts[step][position[step][r]] for r in m.rows] if epoch_texts[step] else []
                           for m in micros]
                optimizer.zero_grad(set_to_none=True)
                logs = self._step(model, method, texts, micros, strings, slots, table is not None, scaler)
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    clip = getattr(model, "clip_grad_norm_", None)
                    if clip is not None:
                        clip(cfg.grad_clip)
                    else:
                        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for name, value in logs.items():
                    totals[name] = totals.get(name, 0.0) + value
                if cfg.log_steps:
                    self._append_log(STEPS_FILE, {"epoch": epoch, "step": step, **logs})
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
            record: dict[str, Any] = {"epoch": epoch, "lr": epoch_lr}
            record.update({f"train/{k}": v / max(1, len(plans)) for k, v in totals.items()})
            if self.val_set is not None and (epoch + 1) % cfg.val_every == 0:
                metrics = self._validate(model, method, texts)
                record.update({f"val/{k}": v for k, v in metrics.items()})
                score = select_score(metrics, cfg.select_metrics)
                if best["score"] is None or score > best["score"]:
                    best = {"score": score, "epoch": epoch, "stale": 0, "metrics": metrics}
                    self._save_best(model, {"epoch": epoch, "select_score": score}, metrics)
                else:
                    best["stale"] += 1
            elif self.val_set is None:
                self._save_best(model, {"epoch": epoch})
                best.update(epoch=epoch)
            self._append_log("metrics.jsonl", record)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
            if cfg.save_last:
                optimizer_state = optimizer_state_dict(model, optimizer)  # FSDP: a collective
                with full_parameters(model):
                    if ctx.is_main:
                        self._save_last(self._state(epoch, optimizer_state, scheduler, scaler, best))
            ctx.barrier()  # nobody runs ahead of rank 0's checkpoint
            epochs_run += 1
            if cfg.early_stop_patience is not None and best["stale"] >= cfg.early_stop_patience:
                log.info("early stop: %d epochs without improvement", best["stale"])
                break
        return {"best_epoch": best["epoch"], "best_score": best["score"], "best_metrics": best["metrics"], "epochs_run": epochs_run}

    @staticmethod
    def _group(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
        """Consecutive groups of ``size`` items (the micro-batches of one step)."""
        group: list[Any] = []
        for item in items:
            group.append(item)
            if len(group) == size:
                yield group
                group = []

    def _micro_loss(self, plan: _BatchPlan, strings: list[str], slots: list[Any], from_table: bool,
                    texts: TextFeatureCache, gather: BatchGather) -> dict[str, torch.Tensor]:
        """One micro-batch: encode its images and texts, assemble, ``method.loss`` (in autocast)."""
        with autocast(self.precision, self.device):
            images = self._encode_slots(slots, from_table)
            batch = self._assemble(self._examples_cache, plan, images, texts(strings) if strings else None)
            batch[GATHER_KEY] = gather
            return self.method.loss(batch)

    def _step(self, model: nn.Module, method: CIRMethod, texts: TextFeatureCache, micros: list[_BatchPlan],
              strings: list[list[str]], slots: list[Any], from_table: bool, scaler) -> dict[str, float]:
        """Gradients of one global batch (accumulated over micro-batches); returns its
        losses averaged over micro-batches and ranks (= the single-process values)."""
        k = len(micros)
        gather = StepGather(self.dist, k)
        if k > 1:  # record pass: every micro-batch's rows for the batch-level terms
            with torch.no_grad(), frozen_state(method):
                for m in range(k):
                    gather.start(m)
                    model(micros[m], strings[m], slots[m], from_table, texts, gather)
            gather.finish_record()
        buffers = {name: b.detach().clone() for name, b in method.named_buffers()}
        rng = torch.get_rng_state()
        sums: dict[str, torch.Tensor] = {}
        for m in range(k):
            if k > 1:
                restore_buffers(method, buffers)  # stateful losses update once per step, from the global batch
                torch.set_rng_state(rng)
            gather.start(m)
            with no_sync(model, skip=m < k - 1):
                losses = model(micros[m], strings[m], slots[m], from_table, texts, gather)
                scaler.scale(losses["loss"] / k if k > 1 else losses["loss"]).backward()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0) + value.detach().double().cpu()
        names = sorted(sums)
        mean = self.dist.all_reduce_mean(torch.stack([sums[n] / k for n in names]))
        return {name: float(v) for name, v in zip(names, mean)}

    def _validate(self, model: nn.Module, method: CIRMethod, texts: TextFeatureCache) -> dict[str, float]:
        """Gallery encoded sharded over ranks, scored on rank 0; every rank gets the metrics."""
        with full_parameters(model):
            result = evaluate(method, self.val_set, self.cfg.eval_batch_size, self.device,
                              self.config.cache_dir if self.req.image_encoder_frozen else None, self.cfg.num_workers,
                              # one process reuses its frozen-text cache; ranks keep theirs identical
                              text_cache=texts if texts.enabled and not self.dist.distributed else None,
                              precision=self.encode_precision,
                              sharding=self.dist)
        return self.dist.broadcast_object(result.metrics if self.dist.is_main else None)

    def _save_best(self, model: nn.Module, extra: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        with full_parameters(model):  # FSDP: every rank takes part in gathering the weights
            if self.dist.is_main:
                card = run_card(self.config, self.val_set if metrics is not None else None, metrics, self._elapsed())
                save_model(self.method, self.out / "best", extra=extra, backbone_store=self.out, card=card)

    def _epoch_texts(self, examples: list[Any], plans: list[_BatchPlan], epoch: int) -> list[list[str]]:
        """Query texts of every batch of ``epoch`` (caption policies may draw at random,
        from a per-epoch seed, so a resumed run sees the same texts)."""
        if self.req.train_data != "triplets":
            return [[] for _ in plans]
        rng = random.Random(self.cfg.seed * 1_000_003 + epoch)
        return [[self.method.query_text(self.train_set, examples[r], True, rng) for r in plan.rows] for plan in plans]

    def _assemble(self, examples: list[Any], plan: _BatchPlan, images: list[Features], text: Features | None) -> dict[str, Any]:
        rows = [examples[r] for r in plan.rows]
        if self.req.train_data == "triplets":
            return {"reference": images[0], "target": images[1], "text": text}
        return {"image": images[0], "captions": [r.caption or "" for r in rows], "ids": [r.image_id for r in rows]}


class _LossStep(nn.Module):
    """The module DDP/FSDP wraps: its forward is one micro-batch's ``method.loss`` (so the
    engine's hooks see every parameter use), its parameters are the method's."""

    def __init__(self, method: CIRMethod, micro_loss) -> None:
        super().__init__()
        self.method = method
        self._micro_loss = micro_loss

    def forward(self, *args: Any) -> dict[str, torch.Tensor]:
        return self._micro_loss(*args)


class _ChunkSampler:
    """Yields consecutive index chunks of the given sizes (the epoch's batch plan, flattened)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        for size in self.sizes:
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return len(self.sizes)
