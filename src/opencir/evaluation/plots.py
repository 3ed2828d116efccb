"""Pictures of results: a bar plot of a results table and a retrieval grid."""
from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from ..data.images import load_image
from ..data.types import CIRDataset


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path | IO[bytes], dpi: int) -> str | Path | IO[bytes]:
    """Save and close ``fig`` as PNG to a path or a binary file object (for data URIs)."""
    plt = _pyplot()
    target = Path(path) if isinstance(path, (str, Path)) else path
    fig.savefig(target, dpi=dpi, format="png")
    plt.close(fig)
    return target


def bar_plot(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | Path | IO[bytes],
             title: str = "") -> Path:
    """Grouped bars: one group per metric, one bar per row (model) of ``table``."""
    plt = _pyplot()
    rows = list(table)
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 4))
    for i, row in enumerate(rows):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        values = [table[row].get(metric, 0.0) for metric in metrics]
        bars = ax.bar(xs, values, width, label=row)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path, 120)


def retrieval_grid(
    dataset: CIRDataset,
    rankings: Mapping[str, Sequence[str]],
    query_ids: Sequence[str],
    path: str | Path | IO[bytes],
    top: int = 5,
    texts: Mapping[str, str] | None = None,
) -> Path:
    """One row per query: reference image, modification text, top-``top`` results; the
    ground-truth target is framed in green, other results in grey."""
    plt = _pyplot()
    by_id = {t.query_id: t for t in dataset.triplets}
    fig, axes = plt.subplots(len(query_ids), top + 1, figsize=(1.7 * (top + 1), 1.9 * len(query_ids)), squeeze=False)
    for r, qid in enumerate(query_ids):
        t = by_id[qid]
        ax = axes[r][0]
        ax.imshow(load_image(dataset.image_path(t.reference_id)))
        text = (texts or {}).get(qid, " / ".join(t.captions))
        ax.set_title("query", fontsize=7)
        ax.set_xlabel(text[:60], fontsize=6, wrap=True)
        for c, image_id in enumerate(list(rankings[qid])[:top], start=1):
            ax = axes[r][c]
            ax.imshow(load_image(dataset.image_path(image_id)))
            hit = image_id in t.target_ids
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if hit else "lightgrey")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title(f"#{c}{' target' if hit else ''}", fontsize=7, color="green" if hit else "black")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path, 110)


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path | IO[bytes]) -> Path:
    """Per run (``metrics.jsonl`` records): training losses (left) and validation metrics
    (right) against the epoch."""
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, records in runs.items():
        epochs = [r["epoch"] + 1 for r in records]
        ax_loss.plot(epochs, [r.get("train/loss", float("nan")) for r in records], marker=".", label=name)
        for key in [k for k in (records[0] if records else {}) if k in ("val/R@1", "val/R@10", "val/avg/R@10")]:
            ax_val.plot(epochs, [r.get(key, float("nan")) for r in records], marker=".", label=f"{name} {key[4:]}")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("train loss"), ax_loss.set_title("training loss")
    ax_val.set_xlabel("epoch"), ax_val.set_ylabel("%"), ax_val.set_title("validation")
    for ax in (ax_loss, ax_val):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, 100)
