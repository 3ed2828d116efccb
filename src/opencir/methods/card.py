"""Model cards: the ``README.md`` every saved model directory carries.

The card is a Hugging Face Hub model card: YAML metadata (``library_name: opencir``, tags,
datasets, and the evaluation metrics in the Hub's ``model-index`` form, written by
``huggingface_hub.ModelCardData``) followed by a Markdown body with what a reader needs
to trust and reuse the weights: method, backbone and its pretrained tag, the training
config, dataset + split + gallery convention, metrics, training time, the OpenCIR version
and the SHA-256 of every weight file. The machine-checked copy of the hashes is in
``config.json`` (``files``); loading verifies them (``methods.io.verify_files``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

CARD_FILE = "README.md"
TASK_TYPE = "image-retrieval"
TASK_NAME = "Composed Image Retrieval"


@dataclass
class CardInfo:
    """What a run knows about a model beyond its weights (all optional)."""

    dataset: str | None = None
    split: str | None = None
    gallery: dict[str, Any] = field(default_factory=dict)
    """The gallery convention: size, whether the reference is excluded, gallery option."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Evaluation metrics in percent, e.g. ``{"R@1": 22.0}``."""
    training_seconds: float | None = None
    training_config: dict[str, Any] = field(default_factory=dict)
    """The resolved run config (method_config, train, dataset) the model came from."""
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CardInfo":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


def _backbone_line(backbone: Mapping[str, Any]) -> str:
    arch, tag = backbone.get("arch"), backbone.get("pretrained")
    if tag is None:
        return f"`{arch}` (weights in this directory)"
    if "/" in str(tag) or str(tag).endswith((".pt", ".bin", ".safetensors")):
        return f"`{arch}` initialised from a local checkpoint `{Path(str(tag)).name}`"
    return f"`{arch}/{tag}`"


def card_metadata(config: Mapping[str, Any], info: CardInfo) -> Any:
    """The card's YAML metadata as a ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    method = config["method"]
    backbone = config["backbone"]
    name = f"opencir-{method}-{backbone['arch'].replace('hf-hub:', '').replace('/', '-')}"
    results = []
    if info.dataset and info.metrics:
        for metric, value in sorted(info.metrics.items()):
            results.append(EvalResult(
                task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=info.dataset, dataset_name=info.dataset,
                dataset_split=info.split, metric_type=metric.lower(), metric_name=metric, metric_value=round(float(value), 4)))
    return ModelCardData(
        library_name="opencir",
        license="apache-2.0",
        tags=["opencir", "composed-image-retrieval", method, "clip"],
        datasets=[info.dataset] if info.dataset else None,
        pipeline_tag=TASK_TYPE,
        model_name=name,
        eval_results=results or None,
    )


def render_card(config: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]], info: CardInfo) -> str:
    """The full ``README.md`` text (YAML front matter + body) of a model directory."""
    from .. import __version__

    meta = card_metadata(config, info)
    lines = [f"# OpenCIR `{config['method']}` model", "",
             "A composed image retrieval model (reference image + modification text -> target image) "
             "saved by [OpenCIR](https://pypi.org/project/opencir/).", "",
             "| field | value |", "|---|---|",
             f"| method | `{config['method']}` |",
             f"| backbone | {_backbone_line(config['backbone'])} |",
             f"| backbone fingerprint | `{config.get('backbone_fingerprint', '-')}` |"]
    if info.recipe:
        lines.append(f"| recipe | `{info.recipe}` |")
    if info.dataset:
        lines.append(f"| dataset | `{info.dataset}` split `{info.split}` |")
    if info.gallery:
        lines.append(f"| gallery convention | {', '.join(f'{k}: {v}' for k, v in info.gallery.items())} |")
    if "epoch" in config:
        lines.append(f"| epoch | {config['epoch']} |")
    if info.training_seconds is not None:
        lines.append(f"| training time | {info.training_seconds:.1f} s |")
    lines.append(f"| opencir version | {config.get('opencir_version', __version__)} |")
    if info.metrics:
        lines += ["", f"## Evaluation ({info.dataset} {info.split})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {float(v):.2f} |" for k, v in sorted(info.metrics.items())]
    lines += ["", "## Weight files", "", "Loading verifies these hashes (`config.json` holds the same list).", "",
              "| file | bytes | SHA-256 |", "|---|---|---|"]
    lines += [f"| `{name}` | {entry['size']} | `{entry['sha256']}` |" for name, entry in sorted(files.items())]
    reference = config.get("backbone_weights")
    if reference:
        lines.append(f"| `{reference['path']}` (frozen backbone, referenced) | {reference['size']} | `{reference['sha256']}` |")
    lines += ["", "## Use", "", "```python", "import opencir", "",
              'model = opencir.load_model("path/to/this/directory")   # or "hf-hub:ORG/NAME"',
              'queries = model.encode_queries(["ref.jpg"], ["same but in red"])   # (1, D) float32, L2-normalised',
              'gallery = model.encode_gallery(["a.jpg", "b.jpg"])', "```"]
    config_view = {k: config[k] for k in ("method_config",) if k in config}
    if info.training_config:
        config_view["training"] = info.training_config
    lines += ["", "## Configuration", "", "```json", json.dumps(config_view, indent=2, sort_keys=True, default=str), "```", ""]
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(lines)


def read_card_metadata(directory: str | Path) -> dict[str, Any]:
    """The YAML metadata of a directory's model card (``{}`` when there is no card)."""
    from huggingface_hub import ModelCard

    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return {}
    return ModelCard.load(path).data.to_dict()
