"""cir-shapes: a procedurally drawn CIR benchmark that needs no download.

Scenes hold 1-4 objects on a 3x3 grid; each object has a shape, a colour and a size.
A triplet's modification text adds, removes, recolours, resizes or moves exactly one
object ("make the red circle blue"). Objects are named by the shortest referring
expression that is unique in the scene, so every text has exactly one reading and,
because the gallery holds each distinct scene once, exactly one correct target.

Galleries contain hard negatives: scenes one attribute away from the target (the same
edit with another value, or applied to another object) and the reference itself
(``exclude_reference=False``: returning the unmodified reference is a mistake).
Train, val and test scenes are disjoint, and some (shape, colour) combinations
occur only in the test split (``meta.json`` lists them; such triplets carry
``extra["held_out"] = True``). Generation is deterministic given the seed.

Layout under ``root``::

    meta.json                  generator settings, attribute vocabularies, held-out combos
    {train,val,test}.json      {"triplets": [...], "images": {id: caption}, "gallery": [ids]}
    images/<id>.png            RGB scenes
    masks/<id>.png             8-bit ground-truth foreground masks (OFFSET's dominant portion)
"""
from __future__ import annotations

import json
import random
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageDraw

from ..evaluation.protocols import RecallProtocol
from .registry import DATASETS
from .types import CIRDataset, ImageRecord, Triplet

FORMAT_VERSION = 2
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SIZES = {"small": 0.5, "large": 0.9}
POSITIONS = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)
HELD_OUT = (("circle", "green"), ("triangle", "purple"), ("square", "yellow"), ("cross", "red"))
EDITS = ("add", "remove", "recolour", "resize", "move")
SPLITS = ("train", "val", "test")
MAX_OBJECTS = 4
BACKGROUND = (25, 25, 30)


@dataclass(frozen=True, order=True)
class SceneObject:
    """One drawn object; ``cell`` indexes POSITIONS (row-major 3x3 grid)."""

    cell: int
    shape: str
    colour: str
    size: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at {POSITIONS[self.cell]}"


Scene = tuple[SceneObject, ...]  # sorted by cell: the canonical form, one per distinct image


def scene_caption(scene: Scene) -> str:
    """The image-level caption: every object, in grid order."""
    return " and ".join(o.phrase() for o in scene)


def referring_expression(scene: Scene, obj: SceneObject) -> str:
    """The shortest description that picks out ``obj`` alone in ``scene``."""
    candidates = (
        (obj.shape,),
        (obj.colour, obj.shape),
        (obj.size, obj.shape),
        (obj.size, obj.colour, obj.shape),
    )
    for words in candidates:
        matches = [o for o in scene if all(w in (o.shape, o.colour, o.size) for w in words)]
        if matches == [obj]:
            return "the " + " ".join(words)
    return f"the {obj.size} {obj.colour} {obj.shape} at {POSITIONS[obj.cell]}"


def _canonical(objects: list[SceneObject] | Scene) -> Scene:
    return tuple(sorted(objects))


def _has_held_out(scene: Scene) -> bool:
    return any((o.shape, o.colour) in HELD_OUT for o in scene)


@dataclass(frozen=True)
class Edit:
    """A modification: its text, the target scene and one-attribute-away negatives."""

    kind: str
    text: str
    target: Scene
    negatives: tuple[Scene, ...]


def _random_object(rng: random.Random, cell: int, allow_held_out: bool) -> SceneObject:
    while True:
        obj = SceneObject(cell, rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)))
        if allow_held_out or (obj.shape, obj.colour) not in HELD_OUT:
            return obj


def _random_scene(rng: random.Random, allow_held_out: bool) -> Scene:
    count = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(len(POSITIONS)), count)
    return _canonical([_random_object(rng, c, allow_held_out) for c in cells])


def _swap(scene: Scene, old: SceneObject, new: SceneObject) -> Scene:
    return _canonical([new if o == old else o for o in scene])


def _other_values(rng: random.Random, values: list[str], exclude: str, n: int) -> list[str]:
    pool = [v for v in values if v != exclude]
    return rng.sample(pool, min(n, len(pool)))


def _edit(kind: str, scene: Scene, rng: random.Random, allow_held_out: bool) -> Edit | None:
    """Apply edit ``kind`` to a random object of ``scene``; None when it does not apply."""
    free = [c for c in range(len(POSITIONS)) if all(o.cell != c for o in scene)]
    if kind == "add":
        if not free or len(scene) >= MAX_OBJECTS:
            return None
        cell = rng.choice(free)
        new = _random_object(rng, cell, allow_held_out)
        text = f"add {new.phrase()}"
        target = _canonical([*scene, new])
        negatives = [_canonical([*scene, replace(new, colour=c)]) for c in _other_values(rng, list(COLOURS), new.colour, 1)]
        negatives += [_canonical([*scene, replace(new, cell=c)]) for c in rng.sample(free, min(2, len(free))) if c != cell][:1]
        return Edit(kind, text, target, tuple(negatives))
    obj = rng.choice(scene)
    ref = referring_expression(scene, obj)
    others = [o for o in scene if o != obj]
    if kind == "remove":
        if not others:
            return None
        target = _canonical(others)
        negatives = [_canonical([o for o in scene if o != other]) for other in rng.sample(others, 1)]
        return Edit(kind, f"remove {ref}", target, tuple(negatives))
    if kind == "recolour":
        colours = [c for c in _other_values(rng, list(COLOURS), obj.colour, 5)
                   if allow_held_out or (obj.shape, c) not in HELD_OUT]
        if len(colours) < 2:
            return None
        target = _swap(scene, obj, replace(obj, colour=colours[0]))
        negatives = [_swap(scene, obj, replace(obj, colour=colours[1]))]
        negatives += [_swap(scene, o, replace(o, colour=colours[0])) for o in others[:1]
                      if allow_held_out or (o.shape, colours[0]) not in HELD_OUT]
        return Edit(kind, f"make {ref} {colours[0]}", target, tuple(negatives))
    if kind == "resize":
        size = "small" if obj.size == "large" else "large"
        target = _swap(scene, obj, replace(obj, size=size))
        negatives = [_swap(scene, o, replace(o, size="small" if o.size == "large" else "large")) for o in others[:1]]
        negatives += [_swap(scene, obj, replace(obj, colour=c)) for c in _other_values(rng, list(COLOURS), obj.colour, 1)
                      if allow_held_out or (obj.shape, c) not in HELD_OUT]
        return Edit(kind, f"make {ref} {size}", target, tuple(negatives))
    if kind == "move":
        if len(free) < 2:
            return None
        cell, wrong = rng.sample(free, 2)
        target = _swap(scene, obj, replace(obj, cell=cell))
        negatives = [_swap(scene, obj, replace(obj, cell=wrong))]
        return Edit(kind, f"move {ref} to the {POSITIONS[cell]}", target, tuple(negatives))
    raise ValueError(f"unknown edit kind {kind!r}; valid: {', '.join(EDITS)}")


# ----------------------------------------------------------------------------- paraphrases

_PARSE = {
    "add": re.compile(r"^add (?P<obj>a \w+ \w+ \w+) at (?P<pos>.+)$"),
    "remove": re.compile(r"^remove (?P<ref>the .+)$"),
    "recolour": re.compile(rf"^make (?P<ref>the .+) (?P<colour>{'|'.join(COLOURS)})$"),
    "resize": re.compile(rf"^make (?P<ref>the .+) (?P<size>{'|'.join(SIZES)})$"),
    "move": re.compile(r"^move (?P<ref>the .+) to the (?P<pos>.+)$"),
}
_FRAMES = {  # frame 0 is the generator's own wording
    "add": ("add {obj} at {pos}", "put {obj} at the {pos}", "place {obj} in the {pos}", "insert {obj} at the {pos}",
            "there should also be {obj} at the {pos}"),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}", "{ref} should be gone"),
    "recolour": ("make {ref} {colour}", "change {ref} to {colour}", "turn {ref} {colour}", "paint {ref} {colour}",
                 "change the colour of {ref} to {colour}"),
    "resize": ("make {ref} {size}", "change {ref} to {size}", "turn {ref} {size}", "{ref} should be {size}",
               "change the size of {ref} to {size}"),
    "move": ("move {ref} to the {pos}", "put {ref} at the {pos}", "shift {ref} to the {pos}", "place {ref} in the {pos}",
             "{ref} should go to the {pos}"),
}
_OPENERS = ("", "please ", "now ")


def paraphrase_templates(kind: str) -> list[str]:
    """Every paraphrase template of edit ``kind``: the product of sentence frames and
    openers, ordered so that template 0 is the generator's wording and the next ones change
    the frame first (``len(frames) * len(openers)`` templates)."""
    if kind not in _FRAMES:
        raise ValueError(f"unknown edit kind {kind!r}; valid: {', '.join(EDITS)}")
    return [opener + frame for opener in _OPENERS for frame in _FRAMES[kind]]


def paraphrase(kind: str, text: str, template: int) -> str:
    """``text`` (a generated modification of edit ``kind``) reworded with template number
    ``template`` (modulo the number of templates); the slots keep their values."""
    match = _PARSE[kind].match(text) if kind in _PARSE else None
    if match is None:
        raise ValueError(f"{text!r} is not a generated {kind!r} modification text")
    templates = paraphrase_templates(kind)
    return templates[template % len(templates)].format(**match.groupdict())


def paraphrased(dataset: CIRDataset, template: int) -> CIRDataset:
    """A copy of a cir-shapes split whose every modification text uses template ``template``."""
    triplets = [replace(t, captions=(paraphrase(t.extra["edit"], t.captions[0], template),)) for t in dataset.triplets]
    return replace(dataset, triplets=triplets)


class _SceneIds:
    """Gives every distinct scene one id and remembers which split first used it."""

    def __init__(self) -> None:
        self.ids: dict[Scene, str] = {}
        self.split_of: dict[Scene, str] = {}

    def id_of(self, scene: Scene, split: str) -> str:
        if scene not in self.ids:
            self.ids[scene] = f"{len(self.ids):07d}"
            self.split_of[scene] = split
        return self.ids[scene]

    def usable(self, scene: Scene, split: str) -> bool:
        return self.split_of.get(scene, split) == split


def _generate_split(split: str, count: int, rng: random.Random, ids: _SceneIds) -> tuple[list[dict], dict[str, Scene]]:
    """``count`` triplets whose scenes no other split uses; test scenes may use held-out combos."""
    allow_held_out = split == "test"
    triplets: list[dict] = []
    scenes: dict[str, Scene] = {}
    while len(triplets) < count:
        reference = _random_scene(rng, allow_held_out)
        edit = _edit(rng.choice(EDITS), reference, rng, allow_held_out)
        if edit is None or edit.target == reference:
            continue
        negatives = [n for n in dict.fromkeys(edit.negatives) if n not in (edit.target, reference)]
        involved = [reference, edit.target, *negatives]
        if not all(ids.usable(s, split) for s in involved):
            continue
        if not allow_held_out and any(_has_held_out(s) for s in involved):
            continue  # a negative may have drawn a held-out combination: keep them test-only
        if split == "test" and not _has_held_out(reference) and not _has_held_out(edit.target) and rng.random() < 0.5:
            continue  # over-sample held-out combinations so the test split really probes them
        for s in involved:
            scenes[ids.id_of(s, split)] = s
        triplets.append({
            "query_id": f"{split}-{len(triplets):06d}",
            "reference": ids.ids[reference],
            "target": ids.ids[edit.target],
            "caption": edit.text,
            "edit": edit.kind,
            "negatives": [ids.ids[n] for n in negatives],
            "held_out": _has_held_out(reference) or _has_held_out(edit.target),
        })
    return triplets, scenes


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r / 3
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    return None


def render_scene(scene: Scene, size: int) -> tuple[Image.Image, Image.Image]:
    """Draw ``scene`` as an RGB image and its 8-bit foreground mask, both ``size`` x ``size``."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    mask = Image.new("L", (size, size), 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    cell = size / 3
    for obj in scene:
        row, col = divmod(obj.cell, 3)
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        r = SIZES[obj.size] * cell / 2
        colour = COLOURS[obj.colour]
        polygon = _shape_polygon(obj.shape, cx, cy, r)
        for d, fill in ((draw, colour), (mask_draw, 255)):
            if obj.shape == "circle":
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif obj.shape == "square":
                d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
            else:
                d.polygon(polygon, fill=fill)
    return image, mask


def _render_batch(job: tuple[Path, int, list[tuple[str, list[tuple[int, str, str, str]]]]]) -> int:
    root, size, items = job
    for image_id, objects in items:
        image, mask = render_scene(tuple(SceneObject(*o) for o in objects), size)
        image.save(root / "images" / f"{image_id}.png", compress_level=1)
        mask.save(root / "masks" / f"{image_id}.png", compress_level=1)
    return len(items)


def _chunks(items: list, n: int) -> Iterator[list]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


def generate_cir_shapes(
    root: str | Path,
    seed: int = 0,
    train_triplets: int = 20000,
    val_triplets: int = 1000,
    test_triplets: int = 2000,
    image_size: int = 64,
    workers: int = 2,
) -> Path:
    """Write a cir-shapes benchmark under ``root`` (replaced atomically); returns ``root``."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rng = random.Random(seed)
    ids = _SceneIds()
    counts = {"train": train_triplets, "val": val_triplets, "test": test_triplets}
    all_scenes: dict[str, Scene] = {}
    for split in ("test", "val", "train"):  # held-out scenes are claimed by test first
        triplets, scenes = _generate_split(split, counts[split], random.Random(rng.getrandbits(64)), ids)
        all_scenes.update(scenes)
        gallery = sorted(scenes)
        (tmp / f"{split}.json").write_text(json.dumps({
            "triplets": triplets,
            "images": {i: scene_caption(scenes[i]) for i in gallery},
            "gallery": gallery,
        }))
    items = [(i, [(o.cell, o.shape, o.colour, o.size) for o in s]) for i, s in sorted(all_scenes.items())]
    jobs = [(tmp, image_size, chunk) for chunk in _chunks(items, 2000)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_render_batch, jobs))
    else:
        for job in jobs:
            _render_batch(job)
    (tmp / "meta.json").write_text(json.dumps(_meta(seed, counts, image_size), indent=2))
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def _meta(seed: int, counts: dict[str, int], image_size: int) -> dict[str, Any]:
    return {
        "name": "cir-shapes", "format_version": FORMAT_VERSION, "seed": seed, "triplets": counts,
        "image_size": image_size, "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
        "positions": list(POSITIONS), "edits": list(EDITS), "held_out": [list(c) for c in HELD_OUT],
    }


def generate_if_missing(
    root: str | Path, seed: int = 0, train_triplets: int = 20000, val_triplets: int = 1000,
    test_triplets: int = 2000, image_size: int = 64,
) -> Path:
    """Generate under ``root`` unless a benchmark with exactly these settings is already there."""
    root = Path(root)
    wanted = _meta(seed, {"train": train_triplets, "val": val_triplets, "test": test_triplets}, image_size)
    meta = root / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == wanted:
        return root
    return generate_cir_shapes(root, seed, train_triplets, val_triplets, test_triplets, image_size)


@DATASETS.register("cir-shapes")
def load_cir_shapes(root: Path, split: str) -> CIRDataset:
    """A split of a generated cir-shapes folder (``opencir data synth --out DIR``)."""
    if split not in SPLITS:
        raise ValueError(f"cir-shapes has no split {split!r}; valid: {', '.join(SPLITS)}")
    path = root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a cir-shapes folder (create one with `opencir data synth --out {root}`)")
    try:
        data = json.loads(path.read_text())
        images = {i: ImageRecord(i, root / "images" / f"{i}.png", caption, root / "masks" / f"{i}.png")
                  for i, caption in data["images"].items()}
        triplets = [
            Triplet(t["query_id"], t["reference"], (t["caption"],), (t["target"],),
                    extra={"edit": t["edit"], "negatives": tuple(t["negatives"]), "held_out": t["held_out"]})
            for t in data["triplets"]
        ]
        gallery = list(data["gallery"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: malformed cir-shapes split file ({type(err).__name__}: {err})") from err
    meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
    return CIRDataset(
        name="cir-shapes", split=split, root=root, triplets=triplets, images=images, gallery_ids=gallery,
        protocol=RecallProtocol(ks=(1, 5, 10, 50), exclude_reference=False), caption_policy="first",
        info={"meta": meta},
    )
