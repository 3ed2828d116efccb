"""Fashion200K (Han et al., ICCV 2017) with the TIRG protocol (Vo et al., CVPR 2019).

Layout (as TIRG reads it)::

    root/
      labels/<category>_{train,test}_detect_all.txt   "<image path>\\t<detection score>\\t<caption>"
      test_queries.txt                                "<source image path> <target image path>"
      women/<category>/<...>/<id>_0.jpeg              images, paths relative to root

Image ids are the relative image paths; the caption of an image is its label line's
caption, stripped. A split's gallery is every image of its label files.

Test (33,480 queries [MEM]): each ``test_queries.txt`` line is a query; its text is
``"replace X with Y"``, X the first source word absent from the target caption and Y
the first target word absent from the source caption (TIRG's rule: when every word is
shared, the last word is used). **A retrieved image is correct when its caption equals
the target caption**, so ``target_ids`` lists every gallery image with that caption.
The source image is excluded; R@1/10/50.

Train: TIRG samples pairs on the fly; here ``pairs_per_image`` fixed pairs per image are
drawn once with ``seed`` [INFERRED]: two captions are a pair when removing one word from
each gives the same text (TIRG's "parent caption"), and both differ by a word.
TIRG also rewrites ``. ? & *`` inside captions for its own vocabulary; that does not
change which captions are equal, and the texts here keep the original characters.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..evaluation.protocols import RecallProtocol
from .check import SPLITS, AnnotationError, LayoutError, find_file, require_folder, resolve_split
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

F200K_SPLITS = ("train", "test")
SPLITS.register("fashion200k")(F200K_SPLITS)


def fashion200k_protocol() -> RecallProtocol:
    """R@1/10/50, source image excluded; hits are caption matches (see ``target_ids``)."""
    return RecallProtocol(ks=(1, 10, 50), exclude_reference=True)


def read_label_files(root: Path, split: str) -> dict[str, str]:
    """Image path -> caption from every ``labels/*_<split>_detect_all.txt`` (first wins)."""
    folder = root / "labels"
    if not folder.is_dir():
        raise LayoutError(f"Fashion200K label folder not found: {folder}")
    files = sorted(folder.glob(f"*_{split}_detect_all.txt"))
    if not files:
        names = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "(empty)"
        raise LayoutError(f"no {folder}/*_{split}_detect_all.txt label files (found: {names})")
    captions: dict[str, str] = {}
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 3 or not fields[0].strip():
                    raise AnnotationError(
                        f"{path}: line {number} must be '<image path>\\t<score>\\t<caption>', got {line.strip()!r}"
                    )
                captions.setdefault(fields[0].strip(), fields[2].strip())
    return captions


def different_words(source: str, target: str) -> tuple[str, str]:
    """TIRG's modification words: first source word not in the target and first target
    word not in the source (the last word when there is none)."""
    src, tgt = source.split(), target.split()
    removed = next((w for w in src if w not in tgt), src[-1] if src else "")
    added = next((w for w in tgt if w not in src), tgt[-1] if tgt else "")
    return removed, added


def modification_text(source: str, target: str) -> str:
    """``"replace X with Y"``."""
    removed, added = different_words(source, target)
    return f"replace {removed} with {added}"


def _by_caption(captions: dict[str, str]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for image_id, caption in captions.items():
        groups.setdefault(caption, []).append(image_id)
    return {c: tuple(ids) for c, ids in groups.items()}


def _test_triplets(root: Path, captions: dict[str, str]) -> list[Triplet]:
    path = find_file([root / "test_queries.txt"], "Fashion200K test queries (TIRG)")
    same = _by_caption(captions)
    triplets = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise AnnotationError(f"{path}: line {number} must be '<source path> <target path>', got {line.strip()!r}")
            source, target = parts
            for image_id in (source, target):
                if image_id not in captions:
                    raise AnnotationError(f"{path}: line {number} names {image_id!r}, absent from the test label files")
            src_caption, tgt_caption = captions[source], captions[target]
            hits = tuple(i for i in same[tgt_caption] if i != source)
            extra = {"target_image": target, "target_caption": tgt_caption, "source_caption": src_caption}
            triplets.append(Triplet(str(len(triplets)), source, (modification_text(src_caption, tgt_caption),), hits, (), extra))
    return triplets


def _train_triplets(captions: dict[str, str], pairs_per_image: int, seed: int) -> list[Triplet]:
    same = _by_caption(captions)
    parents: dict[str, set[str]] = {}
    for caption in same:
        words = caption.split()
        for i in range(len(words)):
            parents.setdefault(" ".join(words[:i] + words[i + 1 :]), set()).add(caption)
    siblings: dict[str, list[str]] = {}
    for children in parents.values():
        if len(children) > 1:
            for caption in children:
                siblings.setdefault(caption, []).extend(c for c in children if c != caption)
    rng = random.Random(seed)
    triplets = []
    for image_id in sorted(captions):
        caption = captions[image_id]
        options = sorted(set(siblings.get(caption, ())))
        options = [o for o in options if set(o.split()) ^ set(caption.split())]
        for _ in range(pairs_per_image if options else 0):
            target_caption = rng.choice(options)
            target = rng.choice(same[target_caption])
            text = modification_text(caption, target_caption)
            triplets.append(Triplet(str(len(triplets)), image_id, (text,), (target,), (), {"target_caption": target_caption}))
    return triplets


@DATASETS.register("fashion200k")
def load_fashion200k(
    root: Path,
    split: str,
    require_images: bool = True,
    caption_policy: str = "first",
    pairs_per_image: int = 1,
    seed: int = 0,
) -> CIRDataset:
    """Fashion200K ``split`` ("train" or "test") from ``root``."""
    split = resolve_split(split, F200K_SPLITS, {"val": "test"}, "fashion200k")
    captions = read_label_files(root, split)
    first = next(iter(captions))
    top = root / Path(first).parts[0]
    require_folder(top if top.is_dir() else None, [top], "Fashion200K image folder", require_images)
    triplets = _test_triplets(root, captions) if split == "test" else _train_triplets(captions, pairs_per_image, seed)
    images = {i: ImageRecord(i, root / i, c) for i, c in captions.items()}
    return CIRDataset(
        name="fashion200k",
        split=split,
        root=root,
        triplets=triplets,
        images=images,
        gallery_ids=list(captions),
        protocol=fashion200k_protocol(),
        caption_policy=caption_policy,
        info={"protocol": "TIRG caption equality"},
    )
