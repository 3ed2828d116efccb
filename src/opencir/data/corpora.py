"""Image-caption corpora as users hold them, for image-only training (Pic2Word, Context-I2W).

Registered as the dataset ``image-captions`` (``train_data="images"`` methods read its
``images``: one record per image-caption pair; it has no triplets and no protocol).
Three layouts, chosen by ``format`` or detected from ``source``:

* ``table``: a CSV/TSV file with a header, e.g. Conceptual Captions as Pic2Word ships it
  (tab-separated ``filepath``/``title``). Columns are found by name (``path_column``,
  ``caption_column``; by default the first of ``filepath, path, image, image_path, file,
  filename`` and of ``caption, title, text``). The separator is sniffed from the header
  unless ``sep`` is given. Relative paths are resolved against ``image_root`` (default:
  the table's folder). An image listed twice (e.g. five COCO captions) gets ids
  ``path``, ``path#2``, ...;
* ``folder``: every image file below a folder (recursively, sorted); the caption is the
  text of a sidecar ``<name>.txt`` when there is one;
* ``webdataset``: tar shards (``.tar``, ``.tar.gz``), given as a folder, a glob
  (``cc3m-*.tar``) or a brace range (``cc3m-{00000..00331}.tar``). Files of one sample
  share a key (the name up to the first dot); the image is the first of jpg/jpeg/png/
  webp/..., the caption ``.txt`` or the ``caption``/``text`` field of ``.json``. Shards are
  read in place: each image record's path is the tar member ``<shard.tar>::<member>``
  (see ``opencir.data.images``), which ``load_image`` reads by seeking into the shard, so
  nothing is unpacked and the corpus needs no extra disk. Reading the dataset scans each
  shard's tar headers once (the captions are read, the images are not). In-place reading
  needs uncompressed shards; with ``extract_dir`` set (required for ``.tar.gz`` shards)
  each shard is instead unpacked once there, and a finished shard leaves a
  ``<shard>.done.json`` index and is never read again. ``iter_webdataset`` streams the
  samples' bytes (one shard after the other, with a progress bar).

``source`` (relative to ``root``) defaults to the first existing of ``<split>.tsv``,
``<split>.csv``, ``<split>/`` and ``<split>-*.tar`` under ``root``, or ``root`` itself.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from ..registry import Registry
from .images import ImageLoadError, compression_of, member_path, shard_members
from .registry import DATASETS
from .types import CIRDataset, ImageRecord

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
PATH_COLUMNS = ("filepath", "path", "image", "image_path", "file", "filename")
CAPTION_COLUMNS = ("caption", "title", "text")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
READER_OPTIONS = frozenset({"sep", "path_column", "caption_column", "image_root"})
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")

CorpusReader = Callable[..., Iterator[ImageRecord]]
CORPUS_FORMATS: Registry[CorpusReader] = Registry("corpus format")


# ------------------------------------------------------------------- table
def _pick_column(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise KeyError(f"{path}: no {what} column {wanted!r}; columns are {list(columns)}")
        return wanted
    found = next((c for c in defaults if c in columns), None)
    if found is None and what == "image path":
        raise KeyError(f"{path}: no image path column (looked for {list(defaults)}); columns are {list(columns)}; "
                       f"set the option path_column")
    return found


def _sniff_separator(path: Path, header: str) -> str:
    if path.suffix.lower() == ".tsv" or "\t" in header:
        return "\t"
    return ","


@CORPUS_FORMATS.register("table")
def read_table(source: Path, image_root: str | Path | None = None, sep: str | None = None,
               path_column: str | None = None, caption_column: str | None = None, **_: Any) -> Iterator[ImageRecord]:
    """Records of a CSV/TSV table of (image path, caption) rows, streamed with a progress bar."""
    image_root = Path(image_root).expanduser() if image_root else source.parent
    seen: dict[str, int] = {}
    with source.open(newline="", encoding="utf-8") as f:
        header = f.readline()
        if not header.strip():
            raise ValueError(f"{source}: empty file; expected a header row such as 'filepath<TAB>caption'")
        f.seek(0)
        reader = csv.DictReader(f, delimiter=sep or _sniff_separator(source, header))
        columns = reader.fieldnames or []
        path_key = _pick_column(columns, path_column, PATH_COLUMNS, "image path", source)
        caption_key = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", source)
        for row in tqdm(reader, desc=f"read {source.name}", unit=" rows", disable=None):
            relative = (row.get(path_key) or "").strip()
            if not relative:
                raise ValueError(f"{source}, line {reader.line_num}: empty {path_key!r}")
            count = seen[relative] = seen.get(relative, 0) + 1
            image_id = relative if count == 1 else f"{relative}#{count}"
            caption = (row.get(caption_key) or "").strip() or None if caption_key else None
            path = Path(relative).expanduser()
            yield ImageRecord(image_id, path if path.is_absolute() else image_root / path, caption)


# ------------------------------------------------------------------ folder
def _is_image(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


@CORPUS_FORMATS.register("folder")
def read_folder(source: Path, **_: Any) -> Iterator[ImageRecord]:
    """Every image below ``source`` (sorted); captions from sidecar ``<name>.txt`` files."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and _is_image(p))
    for path in tqdm(files, desc=f"scan {source.name}", unit=" images", disable=None):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() or None if sidecar.is_file() else None
        yield ImageRecord(path.relative_to(source).as_posix(), path, caption)


# -------------------------------------------------------------- webdataset
@dataclass(frozen=True)
class ShardSample:
    """One webdataset sample: its key, image bytes and extension, caption, shard."""

    key: str
    image: bytes
    extension: str
    caption: str | None
    shard: Path


def expand_shards(pattern: str | Path) -> list[Path]:
    """Shard paths of a folder, a glob or a brace range ``name-{000..012}.tar`` (sorted)."""
    text = str(Path(pattern).expanduser())
    if Path(text).is_dir():
        return sorted(p for p in Path(text).iterdir() if p.name.endswith(SHARD_SUFFIXES))
    patterns = [text]
    while any(_BRACE.search(p) for p in patterns):
        expanded = []
        for p in patterns:
            m = _BRACE.search(p)
            if m is None:
                expanded.append(p)
                continue
            lo, hi = m.group(1), m.group(2)
            expanded += [p[: m.start()] + str(i).zfill(len(lo)) + p[m.end():] for i in range(int(lo), int(hi) + 1)]
        patterns = expanded
    shards: list[Path] = []
    for p in patterns:
        shards += sorted(Path(g) for g in glob.glob(p)) if any(ch in p for ch in "*?[") else [Path(p)]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shard not found: {missing[0]} ({len(missing)} of {len(shards)} missing)")
    if not shards:
        raise FileNotFoundError(f"no webdataset shards match {pattern}")
    return shards


def _split_member(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _caption_of(files: dict[str, bytes], where: str) -> str | None:
    if "txt" in files:
        return files["txt"].decode("utf-8").strip() or None
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON: {err}") from err
        text = meta.get("caption") or meta.get("text") if isinstance(meta, dict) else None
        return str(text).strip() or None if text else None
    return None


def _group_by_key(members: Iterator[tuple[str, str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Consecutive ``(key, extension, payload)`` members with the same key form one sample."""
    key, files = None, {}
    for member_key, ext, payload in members:
        if member_key != key and key is not None:
            yield key, files
            files = {}
        key = member_key
        files[ext] = payload
    if key is not None:
        yield key, files


def _image_extension(files: dict[str, Any], shard: Path, key: str) -> str | None:
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        log.warning("%s: sample %r has no image (%s); skipped", shard, key, sorted(files))
    return ext


def _samples_of_shard(shard: Path) -> Iterator[ShardSample]:
    """Stream one shard's samples with their bytes."""
    def members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, bytes]]:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                yield (*_split_member(member.name), handle.read() if handle is not None else b"")

    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for key, files in _group_by_key(members(tar)):
                ext = _image_extension(files, shard, key)
                if ext is not None:
                    yield ShardSample(key, files[ext], ext, _caption_of(files, f"{shard}:{key}"), shard)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"cannot read webdataset shard {shard}: {err}") from err


def _records_in_place(shard: Path) -> Iterator[ImageRecord]:
    """Records of one uncompressed shard whose paths are ``<shard>::<member>`` (nothing unpacked)."""
    compression = compression_of(shard)
    if compression is not None:
        raise ValueError(f"webdataset shard {shard} is {compression}-compressed and cannot be read in place: "
                         f"repack it as a plain .tar or set the option extract_dir to unpack it once")
    try:
        index = shard_members(shard)
    except ImageLoadError as err:
        raise ValueError(f"cannot read webdataset shard {shard}: {err}") from err
    name = _shard_name(shard)
    with shard.open("rb") as handle:
        def text(member: str) -> bytes:
            offset, size = index[member]
            handle.seek(offset)
            return handle.read(size)

        for key, files in _group_by_key((*_split_member(m), m) for m in index):
            ext = _image_extension(files, shard, key)
            if ext is None:
                continue
            texts = {e: text(files[e]) for e in ("txt", "json") if e in files}
            yield ImageRecord(f"{name}/{key}", member_path(shard, files[ext]), _caption_of(texts, f"{shard}:{key}"))


def iter_webdataset(shards: str | Path | Sequence[Path]) -> Iterator[ShardSample]:
    """Stream every sample of the shards in order (progress bar over shards)."""
    paths = expand_shards(shards) if isinstance(shards, (str, Path)) else list(shards)
    for shard in tqdm(paths, desc="read shards", unit=" shard", disable=None):
        yield from _samples_of_shard(shard)


def _shard_name(shard: Path) -> str:
    name = shard.name
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _extract_shard(shard: Path, out: Path) -> list[dict[str, Any]]:
    """Unpack one shard's images under ``out/<shard>/`` once; returns its index rows."""
    name = _shard_name(shard)
    done = out / f"{name}.done.json"
    if done.is_file():
        return json.loads(done.read_text())
    rows = []
    for sample in _samples_of_shard(shard):
        target = out / name / f"{sample.key}.{sample.extension}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.image)
        rows.append({"id": f"{name}/{sample.key}", "path": str(target.relative_to(out)), "caption": sample.caption})
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(done)
    return rows


@CORPUS_FORMATS.register("webdataset")
def read_webdataset(source: str | Path, extract_dir: str | Path | None = None, **_: Any) -> Iterator[ImageRecord]:
    """Records of webdataset shards: tar-member paths read in place, or (with
    ``extract_dir``) files unpacked there shard by shard."""
    shards = expand_shards(source)
    if extract_dir is None:
        for shard in tqdm(shards, desc="index shards", unit=" shard", disable=None):
            yield from _records_in_place(shard)
        return
    out = Path(extract_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for shard in tqdm(shards, desc="unpack shards", unit=" shard", disable=None):
        for row in _extract_shard(shard, out):
            yield ImageRecord(row["id"], out / row["path"], row["caption"])


# ----------------------------------------------------------------- dataset
def detect_format(source: str | Path) -> str:
    """``webdataset`` for shards, ``folder`` for an image folder, ``table`` for a file."""
    text = str(source)
    if _BRACE.search(text) or any(ch in text for ch in "*?[") or text.endswith(SHARD_SUFFIXES):
        return "webdataset"
    path = Path(text)
    if path.is_dir():
        return "webdataset" if any(p.name.endswith(SHARD_SUFFIXES) for p in path.iterdir()) else "folder"
    return "table"


def resolve_source(root: Path, split: str, source: str | None) -> str | Path:
    """The corpus location for ``split``: ``source`` (relative to ``root``) or a default."""
    if source is not None:
        text = str(Path(source).expanduser())
        return text if Path(text).is_absolute() else str(root / text)
    candidates: list[str | Path] = [root / f"{split}.tsv", root / f"{split}.csv", root / split]
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    if glob.glob(str(root / f"{split}-*.tar")):
        return str(root / f"{split}-*.tar")
    if root.is_file() or (root.is_dir() and not (root / split).exists()):
        return root
    raise FileNotFoundError(f"no corpus for split {split!r} under {root}: set the option source")


@DATASETS.register("image-captions")
def load_image_captions(root: Path, split: str, source: str | None = None, format: str | None = None,
                        limit: int | None = None, extract_dir: str | None = None, **options: Any) -> CIRDataset:
    """An image-caption corpus (table, folder or webdataset shards) for image-only training.

    Options: ``source``, ``format`` (table, folder, webdataset), ``sep``, ``path_column``,
    ``caption_column``, ``image_root``, ``extract_dir`` (unpack shards there instead of
    reading them in place), ``limit`` (first N records).
    """
    unknown = sorted(set(options) - READER_OPTIONS)
    if unknown:
        raise KeyError(f"unknown image-captions option(s) {unknown}; valid: "
                       f"{sorted(READER_OPTIONS | {'source', 'format', 'limit', 'extract_dir'})}")
    location = resolve_source(root, split, source)
    fmt = format or detect_format(location)
    reader = CORPUS_FORMATS.get(fmt)
    if fmt != "webdataset" and not Path(location).exists():
        raise FileNotFoundError(f"image-caption corpus not found: {location}")
    images: dict[str, ImageRecord] = {}
    for record in reader(location if fmt == "webdataset" else Path(location), extract_dir=extract_dir, **options):
        if limit is not None and len(images) >= limit:
            break
        images[record.image_id] = record
    if not images:
        raise ValueError(f"image-caption corpus {location} ({fmt}) holds no images")
    captioned = sum(r.caption is not None for r in images.values())
    info = {"source": str(location), "format": fmt, "images": len(images), "captioned": captioned}
    return CIRDataset("image-captions", split, root, [], images, [], None, info=info)


def write_table(records: Sequence[ImageRecord] | Iterator[ImageRecord], path: str | Path,
                extra: Callable[[list[ImageRecord]], dict[str, list[str]]] | None = None, batch_size: int = 1024) -> int:
    """Write records as a TSV (``filepath``, ``caption`` + ``extra`` columns), streamed in
    batches; ``extra(batch)`` returns more columns for a batch. Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = None
        batch: list[ImageRecord] = []

        def flush() -> None:
            nonlocal writer, count
            columns = extra(batch) if extra else {}
            if writer is None:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["filepath", "caption", *columns])
            for i, record in enumerate(batch):
                writer.writerow([str(record.path), _one_line(record.caption or ""), *(_one_line(v[i]) for v in columns.values())])
            count += len(batch)
            batch.clear()

        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                flush()
        if batch or writer is None:
            flush()
    tmp.replace(path)
    return count


def _one_line(text: str) -> str:
    return " ".join(text.split())
