"""Pic2Word's ImageNet domain conversion (zero-shot protocol, spec 1.6) [CODE].

Layout (Pic2Word's ``data/`` folder; ``root`` may be ``data/`` or ``data/imgnet/``)::

    root/imgnet/
      imgnet_real_query.txt    10,000 lines "imgnet/real/<wnid>/<file>.JPEG <class>"
      imgnet_targets.txt       16,983 lines "imgnet/<real|imagenet-r>/<wnid>/<file> <label>"
      real/<wnid>/*.JPEG       ImageNet val images
      imagenet-r/<wnid>/*.jpg  ImageNet-R images

List paths are relative to the folder holding ``imgnet/``; image ids are those paths.
A target's label is class + 1000 * domain (cartoon 0, origami 1, toy 2, sculpture 3);
real images (the 10,000 queries themselves) are distractors labelled 6000 + class.

Each domain d is one evaluation part (``"cartoon"`` ...): every query image once, with
query id ``"<domain>/<line index>"``, relevant ids = the targets labelled class + 1000*d
and the domain name as caption. The Pic2Word prompt ``"a {d} of *"`` is the template
``info["zero_shot_prompt"] = "a {text} of {placeholder}"`` that the pseudo-word methods
fill (``methods/pseudo_word.py``); other methods see the bare domain name (Pic2Word's
own text-only baseline encodes ``"a {d} of "``). The reference is not removed (it is a
real distractor).
Metric: R@10/R@50 as (#relevant in top k) / (#relevant + 1e-5), averaged over all
10,000 queries per domain; a class without images in a domain scores 0 there (as in the
official code); ``avg/R@k`` is the mean over domains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..evaluation.protocols import FractionRecallProtocol
from .check import SPLITS, AnnotationError, find_dir, find_file, read_lines, require_folder, resolve_split, select_names
from .registry import DATASETS
from .types import ZERO_SHOT_PROMPT_KEY, CIRDataset, ImageRecord, Triplet

DOMAINS = ("cartoon", "origami", "toy", "sculpture")
DISTRACTOR_OFFSET = 6000
DOMAIN_STRIDE = 1000
SPLITS.register("imagenet-r")(("test",))
PROMPT = "a {text} of {placeholder}"
"""Pic2Word's "a {domain} of *" (spec 4.1.4) as a template for the pseudo-word methods."""


def imagenet_protocol() -> FractionRecallProtocol:
    """Fraction-of-relevant R@10/R@50, reference kept, epsilon 1e-5 as in Pic2Word."""
    return FractionRecallProtocol(ks=(10, 50), exclude_reference=False, epsilon=1e-5)


def read_label_list(path: Path) -> list[tuple[str, int]]:
    """``"<relative path> <int label>"`` lines (trailing spaces allowed), checked."""
    out = []
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise AnnotationError(f"{path}: line {number} must be '<image path> <integer label>', got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out


@DATASETS.register("imagenet-r")
def load_imagenet_r(
    root: Path, split: str = "test", domains: str | Sequence[str] = "all", require_images: bool = True
) -> CIRDataset:
    """The domain-conversion benchmark; one part per domain in ``domains``."""
    split = resolve_split(split, ("test",), {"val": "test"}, "imagenet-r")
    selected = select_names(domains, DOMAINS, "domain", "imagenet-r")
    list_dir = find_dir([root / "imgnet", root]) or root
    query_path = find_file([list_dir / "imgnet_real_query.txt", root / "imgnet_real_query.txt"], "Pic2Word query list")
    target_path = find_file([query_path.parent / "imgnet_targets.txt"], "Pic2Word target list")
    queries = read_label_list(query_path)
    targets = read_label_list(target_path)
    bases = list(dict.fromkeys([query_path.parent.parent, root, query_path.parent]))
    probe = Path(targets[0][0]).parent if targets else Path(".")
    found = find_dir([b / probe for b in bases])
    base = bases[[b / probe for b in bases].index(found)] if found else None
    base = require_folder(base, [b / probe for b in bases], "ImageNet / ImageNet-R image folders", require_images, bases[0])
    by_label: dict[int, list[str]] = {}
    for image_id, label in targets:
        by_label.setdefault(label, []).append(image_id)
    relevant = {label: tuple(ids) for label, ids in by_label.items()}
    images = {i: ImageRecord(i, base / i) for i, _ in [*targets, *queries]}
    gallery = list(dict.fromkeys(i for i, _ in targets))
    protocol = imagenet_protocol()
    parts = {}
    for domain in selected:
        d = DOMAINS.index(domain)
        triplets = [
            Triplet(
                f"{domain}/{row}",
                image_id,
                (domain,),
                relevant.get(label + DOMAIN_STRIDE * d, ()),
                (),
                {"domain": domain, "label": label + DOMAIN_STRIDE * d},
            )
            for row, (image_id, label) in enumerate(queries)
        ]
        parts[domain] = CIRDataset(
            "imagenet-r", split, root, triplets, images, gallery, protocol, "first",
            info={"domain": domain, ZERO_SHOT_PROMPT_KEY: PROMPT},
        )
    if len(parts) == 1:
        return next(iter(parts.values()))
    return CIRDataset(
        name="imagenet-r",
        split=split,
        root=root,
        triplets=[t for part in parts.values() for t in part.triplets],
        images=images,
        gallery_ids=gallery,
        protocol=protocol,
        caption_policy="first",
        parts=parts,
        info={"domains": list(parts), "query_file": str(query_path), "target_file": str(target_path),
              ZERO_SHOT_PROMPT_KEY: PROMPT},
    )
