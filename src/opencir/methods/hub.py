"""Models on the Hugging Face Hub: ``load_model("hf-hub:org/name")``, ``save_pretrained``,
``push_to_hub``, through ``huggingface_hub``'s own primitives.

Downloads go through ``huggingface_hub.snapshot_download``: its cache (``HF_HOME`` /
``HF_HUB_CACHE`` or ``cache_dir``), offline mode (``HF_HUB_OFFLINE=1``: the cache only),
revisions (branch, tag or commit) and tokens (``token=`` or ``HF_TOKEN`` / the stored login)
behave exactly as they do for transformers or open_clip users. A Hub repo is a model
directory as ``save_pretrained`` writes it (``config.json``, ``model.safetensors``,
``README.md`` model card); the weight hashes recorded in ``config.json`` are verified on load.

Uploads: ``push_to_hub`` writes a self-contained copy (never a lean checkpoint) and sends
it as one commit of ``huggingface_hub.CommitOperationAdd`` operations (``commit_operations``
builds them; each carries the SHA-256 the Hub checks) with ``HfApi.create_commit``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .card import CARD_FILE, CardInfo
from .io import CONFIG_FILE, WEIGHTS_FILE, load_model as load_model_dir, read_model_config, save_model

if TYPE_CHECKING:
    from .base import CIRMethod

HF_HUB_PREFIX = "hf-hub:"
REPO_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


def split_hub_name(name: str) -> str | None:
    """``"hf-hub:org/name"`` -> ``"org/name"``; None for anything else."""
    if not isinstance(name, str) or not name.startswith(HF_HUB_PREFIX):
        return None
    repo_id = name[len(HF_HUB_PREFIX):].strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{name!r}: a Hub model is named hf-hub:ORG/NAME")
    return repo_id


def download(repo_id: str, revision: str | None = None, token: str | bool | None = None,
             cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """The local snapshot folder of Hub model ``repo_id`` (downloaded, or from the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                   local_files_only=local_files_only, allow_patterns=list(REPO_FILES))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{where} is not in the Hugging Face cache and the Hub cannot be reached (offline, HF_HUB_OFFLINE=1 or "
            f"local_files_only): download it once with network access, or point HF_HUB_CACHE at a cache holding it"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"{where}: the repository has no revision {revision!r}") from None
    except GatedRepoError:
        raise ValueError(f"{where} is gated: accept its terms on the Hub and log in (hf auth login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such model repository (or it is private: pass token= or set HF_TOKEN)") from None
    except EntryNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}") from None
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{where} is not an OpenCIR model: the repository has no {CONFIG_FILE}")
    return folder


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None, token: str | bool | None = None,
                      cache_dir: str | Path | None = None, local_files_only: bool = False,
                      bare_repo_ids: bool = False) -> Path:
    """A local model directory for a path or ``hf-hub:org/name``; with ``bare_repo_ids``
    (``from_pretrained``, as in transformers) also for ``org/name`` that is no local path."""
    repo_id = split_hub_name(name_or_path) if isinstance(name_or_path, str) else None
    if repo_id is None:
        path = Path(name_or_path)
        text = str(name_or_path)
        if path.exists() or not bare_repo_ids or text.count("/") != 1 or text.startswith((".", "/", "~")):
            return path
        repo_id = text
    return download(repo_id, revision, token, cache_dir, local_files_only)


def model_reference(name_or_path: str | Path) -> str:
    """How a model is recorded for later loading (provenance, index manifests): the
    ``hf-hub:`` name as given, or the absolute directory."""
    text = str(name_or_path)
    return text if text.startswith(HF_HUB_PREFIX) else str(Path(text).resolve())


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu", expected_method: str | None = None,
               revision: str | None = None, token: str | bool | None = None, cache_dir: str | Path | None = None,
               local_files_only: bool = False, verify: bool = True, bare_repo_ids: bool = False) -> "CIRMethod":
    """A saved model from a directory or the Hub (``hf-hub:org/name``), hashes verified."""
    directory = resolve_model_dir(name_or_path, revision, token, cache_dir, local_files_only, bare_repo_ids)
    method = load_model_dir(directory, expected_method=expected_method, device=device, verify=verify)
    method.source = str(name_or_path)
    return method


def save_pretrained(method: "CIRMethod", directory: str | Path, card: CardInfo | None = None) -> Path:
    """A self-contained model directory (full weights, config, model card) at ``directory``;
    the card of a loaded model is kept unless ``card`` is given."""
    return save_model(method, directory, extra=getattr(method, "saved_extra", None),
                      card=card if card is not None else getattr(method, "card_info", None))


def commit_operations(directory: str | Path) -> list[Any]:
    """The ``huggingface_hub.CommitOperationAdd`` list that uploads a saved model directory
    (config, weights, card); each operation holds the file's SHA-256 and size."""
    from huggingface_hub import CommitOperationAdd

    directory = Path(directory)
    config = read_model_config(directory)
    if config.get("backbone_weights"):
        raise ValueError(f"{directory} is a lean checkpoint (its frozen backbone lives outside it): push a "
                         f"self-contained copy, e.g. opencir.load_model(DIR).push_to_hub(REPO)")
    missing = [name for name in REPO_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: write it with save_pretrained first")
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(directory / name)) for name in REPO_FILES]


def push_to_hub(method: "CIRMethod", repo_id: str, *, token: str | bool | None = None, revision: str | None = None,
                private: bool | None = None, commit_message: str | None = None, create_pr: bool = False,
                card: CardInfo | None = None) -> Any:
    """Upload ``method`` to the Hub repo ``repo_id`` (created when missing) in one commit;
    returns ``huggingface_hub.CommitInfo``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="opencir-push-") as tmp:
        folder = save_pretrained(method, Path(tmp) / "model", card=card)
        operations = commit_operations(folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {method.name} model",
                                 revision=revision, create_pr=create_pr)
