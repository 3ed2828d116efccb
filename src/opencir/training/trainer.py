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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.transforms import ImageTransform
from ..data.types import CIRDataset, Triplet
from ..evaluation.evaluator import evaluate, select_score
from ..methods.base import CIRMethod, Features
from ..methods.io import load_weights_into, save_model
from .config import RunConfig, save_run_config
from ..encoding.precision import autocast, resolve_training_precision
from ..encoding.features import FeatureTable, TextFeatureCache, encode_image_table, load_pixels, method_transform
from .optim import OPTIMIZERS, SCHEDULES

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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

    def __init__(self, method: CIRMethod, config: RunConfig, train_set: CIRDataset, val_set: CIRDataset | None) -> None:
        self.method, self.config, self.train_set, self.val_set = method, config, train_set, val_set
        self.cfg = config.train
        self.device = resolve_device(config.device)
        self.out = Path(config.output_dir)
        self.req = method.requirements
        self.precision = resolve_training_precision(self.cfg.precision, self.cfg.amp, self.device)
        self.use_amp = self.precision == "fp16"  # the grad scaler is for fp16 only

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
        self, examples: list[Any], plans: list[_BatchPlan], table: FeatureTable | None
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
        loader = DataLoader(pixels, batch_sampler=sampler, num_workers=self.cfg.num_workers, collate_fn=_collate)
        yield from loader  # pixel slots; encoded inside the step's autocast (see _encode_slots)

    def _encode_slots(self, slots: list[Any], from_table: bool) -> list[Features]:
        """Image features of each slot: cached rows as they are, or pixels through the encoder."""
        if from_table:
            return slots
        return [self.method.encode_images(s["pixels"].to(self.device), s["masks"].to(self.device) if "masks" in s else None)
                for s in slots]

    # -------------------------------------------------------------- states
    def _state(self, epoch: int, optimizer, scheduler, scaler, best: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best": best,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
        }

    def _save_last(self, state: dict[str, Any]) -> None:
        last = self.out / "last"
        save_model(self.method, last, extra={"epoch": state["epoch"]})
        tmp = last / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(last / STATE_FILE)

    def _try_resume(self, optimizer, scheduler, scaler) -> tuple[int, dict[str, Any]]:
        state_path = self.out / "last" / STATE_FILE
        if not state_path.is_file():
            return 0, {"score": None, "epoch": None, "stale": 0, "metrics": {}}
        load_weights_into(self.method, self.out / "last")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        self._truncate_metrics(state["epoch"])
        log.info("resumed from %s after epoch %d", state_path, state["epoch"])
        return state["epoch"] + 1, state["best"]

    def _truncate_metrics(self, last_epoch: int) -> None:
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["epoch"] <= last_epoch]
            path.write_text("".join(l + "\n" for l in lines))

    # ----------------------------------------------------------------- fit
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train; returns ``{"best_epoch", "best_score", "best_metrics", "epochs_run"}``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_run_config(self.config, self.out / "config.yaml")
        if not resume:
            shutil.rmtree(self.out / "last", ignore_errors=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        seed_everything(cfg.seed)
        method = self.method.to(self.device)
        groups = method.parameter_groups(cfg.lr, cfg.weight_decay)
        if not groups:
            raise ValueError(f"method {method.name!r} with this config has no trainable parameters")
        optimizer = OPTIMIZERS.get(cfg.optimizer)(groups, cfg)
        examples = self._examples()
        steps_per_epoch = len(self._batches(len(examples), 0))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch))
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        start_epoch, best = self._try_resume(optimizer, scheduler, scaler) if resume else (0, None)
        best = best or {"score": None, "epoch": None, "stale": 0, "metrics": {}}

        table = None
        if self.req.image_encoder_frozen:
            ids = sorted({k for e in examples for k in self._image_keys(e)})
            table = encode_image_table(method, self.train_set, ids, self.config.cache_dir, cfg.eval_batch_size, self.device,
                                       cfg.num_workers, precision=self.encode_precision)
        texts = TextFeatureCache(method, self.device, enabled=self.req.text_encoder_frozen)

        for epoch in range(start_epoch):  # rebuild the text cache exactly as the killed run had it
            texts.prefetch([s for strings in self._epoch_texts(examples, self._batches(len(examples), epoch), epoch)
                            for s in strings])
        epochs_run = 0
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            plans = self._batches(len(examples), epoch)
            epoch_texts = self._epoch_texts(examples, plans, epoch)
            texts.prefetch([s for strings in epoch_texts for s in strings])
            totals: dict[str, float] = {}
            epoch_lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(zip(plans, epoch_texts, self._image_batches(examples, plans, table)), total=len(plans),
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=None)
            for plan, strings, slots in bar:
                with autocast(self.precision, self.device):
                    images = self._encode_slots(slots, from_table=table is not None)
                    batch = self._assemble(examples, plan, images, texts(strings) if strings else None)
                    losses = method.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + float(value.detach())
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
            record: dict[str, Any] = {"epoch": epoch, "lr": epoch_lr}
            record.update({f"train/{k}": v / max(1, len(plans)) for k, v in totals.items()})
            if self.val_set is not None and (epoch + 1) % cfg.val_every == 0:
                result = evaluate(method, self.val_set, cfg.eval_batch_size, self.device,
                                  self.config.cache_dir if self.req.image_encoder_frozen else None, cfg.num_workers,
                                  text_cache=texts if texts.enabled else None, precision=self.encode_precision)
                record.update({f"val/{k}": v for k, v in result.metrics.items()})
                score = select_score(result.metrics, cfg.select_metrics)
                if best["score"] is None or score > best["score"]:
                    best = {"score": score, "epoch": epoch, "stale": 0, "metrics": result.metrics}
                    save_model(method, self.out / "best", extra={"epoch": epoch, "select_score": score})
                else:
                    best["stale"] += 1
            elif self.val_set is None:
                save_model(method, self.out / "best", extra={"epoch": epoch})
                best.update(epoch=epoch)
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
            if cfg.save_last:
                self._save_last(self._state(epoch, optimizer, scheduler, scaler, best))
            epochs_run += 1
            if cfg.early_stop_patience is not None and best["stale"] >= cfg.early_stop_patience:
                log.info("early stop: %d epochs without improvement", best["stale"])
                break
        return {"best_epoch": best["epoch"], "best_score": best["score"], "best_metrics": best["metrics"], "epochs_run": epochs_run}

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
