"""Layout validation: the file and record checks every benchmark reader shares, and the
image validation behind ``opencir data check``.

Readers call :func:`read_json`, :func:`get_field`, :func:`find_file` ... so that a wrong
layout, malformed JSON or a record without a field fails with one message naming the
file, the record and what was expected. Readers never open images (galleries are
large); :func:`check_images` does, on demand.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image
from tqdm.auto import tqdm

from ..registry import Registry
from .images import ImageLoadError, image_exists, load_image, split_member_path
from .types import CIRDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPEG", ".JPG", ".PNG", ".webp")

SPLITS: Registry[tuple[str, ...]] = Registry("dataset split list")
"""Per dataset name, the splits ``opencir data check`` validates when no split is given."""


class LayoutError(FileNotFoundError):
    """A file or folder of the official layout is missing; the message says which and where."""


class AnnotationError(ValueError):
    """An annotation file is malformed or a record lacks a field; the message names both."""


# ----------------------------------------------------------------------------- files


def find_file(candidates: Sequence[Path], what: str) -> Path:
    """The first existing file of ``candidates``; otherwise a LayoutError listing them all."""
    for path in candidates:
        if path.is_file():
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    raise LayoutError(f"{what} not found; looked for:\n  {tried}")


def find_dir(candidates: Sequence[Path]) -> Path | None:
    """The first existing folder of ``candidates``, or None."""
    return next((path for path in candidates if path.is_dir()), None)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or malformed JSON raises an error naming the file."""
    if not path.is_file():
        raise LayoutError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err})") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped (list files end lines with spaces)."""
    if not path.is_file():
        raise LayoutError(f"list file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def expect_type(value: Any, kind: type | tuple[type, ...], path: Path, what: str) -> Any:
    """``value`` if it is a ``kind``; otherwise an AnnotationError naming the file."""
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AnnotationError(f"{path}: {what} must be a {names}, got {type(value).__name__}")
    return value


def get_field(
    record: Any, key: str, path: Path, where: str, kind: type | tuple[type, ...] | None = None
) -> Any:
    """``record[key]``, checked; errors read ``<file>: record 12 (pairid 7) has no field 'x'``."""
    if not isinstance(record, Mapping):
        raise AnnotationError(f"{path}: {where} is a {type(record).__name__}, expected an object")
    if key not in record:
        raise AnnotationError(f"{path}: {where} has no field {key!r} (fields: {sorted(record)})")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AnnotationError(f"{path}: {where} field {key!r} must be a {names}, got {type(value).__name__}")
    return value


def resolve_split(split: str, valid: Sequence[str], aliases: Mapping[str, str], dataset: str) -> str:
    """The canonical split name (``aliases`` maps e.g. ``dev`` to ``val``), or a clear error."""
    canonical = aliases.get(split, split)
    if canonical not in valid:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid splits: {', '.join(valid)}")
    return canonical


def select_names(selection: str | Sequence[str], valid: Sequence[str], option: str, dataset: str) -> list[str]:
    """``"all"``, a comma-separated string or a list of names, checked against ``valid``
    (FashionIQ categories, ImageNet-R domains); a clear error lists the valid names."""
    if selection == "all":
        return list(valid)
    names = selection.split(",") if isinstance(selection, str) else list(selection)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(f"{dataset}: unknown {option} {bad or selection!r}; valid: all, {', '.join(valid)}")
    return names


def index_image_folder(folder: Path, recursive: bool = False, key: str = "stem") -> dict[str, Path]:
    """Map image ids to files in ``folder`` by one directory listing (no image is opened).

    ``key="stem"`` indexes ``abc.png`` as ``abc``; ``key="name"`` as ``abc.png``. With
    ``recursive`` the whole tree is listed; the first file found for an id wins.
    """
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    walker: Iterable[tuple[str, list[str], list[str]]]
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for directory, _dirs, files in walker:
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext in IMAGE_EXTENSIONS:
                out.setdefault(stem if key == "stem" else name, Path(directory) / name)
    return out


def require_folder(
    folder: Path | None, candidates: Sequence[Path], what: str, required: bool, default: Path | None = None
) -> Path:
    """``folder`` when found; otherwise a LayoutError (``required``) or ``default`` (the
    first candidate when not given): annotation-only use keeps the conventional paths."""
    if folder is not None:
        return folder
    if required:
        tried = "\n  ".join(str(p) for p in candidates)
        raise LayoutError(
            f"{what} not found; looked for:\n  {tried}\n(pass require_images=False to read annotations only)"
        )
    return default if default is not None else candidates[0]


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageProblem:
    """One image that failed validation."""

    image_id: str
    path: Path
    reason: str


@dataclass
class CheckReport:
    """Result of validating every image a split refers to."""

    dataset: str
    split: str
    checked: int
    missing: list[ImageProblem] = field(default_factory=list)
    unreadable: list[ImageProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable

    def summary(self, examples: int = 5) -> str:
        """A few lines: counts, then the first ``examples`` problems of each kind."""
        lines = [
            f"{self.dataset}/{self.split}: {self.checked} images checked, "
            f"{len(self.missing)} missing, {len(self.unreadable)} unreadable"
        ]
        for title, problems in (("missing", self.missing), ("unreadable", self.unreadable)):
            for problem in problems[:examples]:
                lines.append(f"  {title}: {problem.image_id} -> {problem.path} ({problem.reason})")
            if len(problems) > examples:
                lines.append(f"  ... and {len(problems) - examples} more {title}")
        return "\n".join(lines)


def check_image_file(path: Path, full: bool = False) -> tuple[str, str] | None:
    """None when ``path`` is a readable image, else ``(kind, reason)`` with kind
    ``"missing"`` or ``"unreadable"``. ``full`` decodes all pixels; otherwise the header
    is parsed and the file verified (PNG checksums; cheap for JPEG)."""
    if not image_exists(path):
        return ("missing", "no such file" if split_member_path(path) is None else "no such tar shard member")
    if full or split_member_path(path) is not None:  # tar members are decoded from their bytes
        try:
            load_image(path)
        except ImageLoadError as err:
            return ("unreadable", str(err))
        return None
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # noqa: BLE001  PIL raises many types for corrupt files
        return ("unreadable", f"{type(err).__name__}: {err}")
    return None


def check_images(
    dataset: CIRDataset,
    full: bool = False,
    workers: int = 4,
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> CheckReport:
    """Validate the images of ``dataset`` (:func:`ids_to_check` unless ``ids`` is given)."""
    todo = list(ids) if ids is not None else ids_to_check(dataset)
    report = CheckReport(dataset.name, dataset.split, len(todo))
    paths = [dataset.image_path(i) for i in todo]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda p: check_image_file(p, full), paths, chunksize=64)
        bar = tqdm(results, total=len(todo), desc=f"check {dataset.name}/{dataset.split}", disable=not progress)
        for image_id, path, result in zip(todo, paths, bar):
            if result is not None:
                kind, reason = result
                getattr(report, kind).append(ImageProblem(image_id, path, reason))
    return report


# ----------------------------------------------------------------------------- loading


def load_annotations_only(name: str, root: str | Path, split: str, **options: Any) -> CIRDataset:
    """Load a dataset without requiring its image folders (for scoring rankings files and
    for ``data check``, which reports missing images itself)."""
    import inspect

    from .registry import DATASETS, load_dataset

    from . import _import_all  # noqa: F401  (registers every built-in dataset)

    if "require_images" in inspect.signature(DATASETS.get(name)).parameters:
        options.setdefault("require_images", False)
    return load_dataset(name, root, split, **options)


def dataset_splits(name: str, default: Sequence[str] = ("train", "val", "test")) -> tuple[str, ...]:
    """The splits a dataset registers in :data:`SPLITS` (every built-in dataset imported
    first, so none is missed), or ``default`` for one that registers none."""
    from . import _import_all  # noqa: F401  (readers register their split lists on import)

    return tuple(SPLITS.get(name)) if name in SPLITS else tuple(default)


def ids_to_check(dataset: CIRDataset) -> list[str]:
    """Every image id of ``dataset`` except derived ones (``info["derived_prefix"]``,
    e.g. COCO composition's generated query crops, which are made from gallery images)."""
    prefix = dataset.info.get("derived_prefix")
    return [i for i in dataset.images if not (prefix and i.startswith(prefix))]


def write_placeholder_images(paths: Iterable[Path], size: int = 8, link: bool = True) -> int:
    """Create a tiny PNG at each path (folders made as needed): one real file, the others
    symbolic links to it when ``link`` (fast for tens of thousands of ids). For dry runs
    of a layout from its annotation files alone (tests, ``data check`` rehearsals)."""
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        return 0
    source = paths[0]
    source.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (128, 128, 128)).save(source, format="PNG")
    made_dirs = {source.parent}
    for path in paths[1:]:
        if path.parent not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(path.parent)
        if link:
            os.symlink(source, path)
        else:
            Image.new("RGB", (size, size), (128, 128, 128)).save(path, format="PNG")
    return len(paths)
