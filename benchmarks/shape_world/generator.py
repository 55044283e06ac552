"""Procedural shape-world scenes and the benchmark tasks built on them.

Coordinates: pixel ``(row i, column j)`` covers ``[j, j + 1] x [i, i + 1]`` in continuous ``(x, y)``, so its
centre is ``(j + 0.5, i + 0.5)``; ``y`` points down. Boxes are ``(x0, y0, x1, y1)`` integer pixel bounds with
exclusive ends (the tight box of a mask). Rotations are in degrees, counter-clockwise on screen.

Seeds: every sample is a pure function of ``(split, index)`` (and the task): see :func:`split_rng`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .vocabulary import (
    CANVAS,
    COLOUR_NAMES,
    COLOURS,
    PAIRS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    make_background,
    phrase,
)

SPLIT_IDS: dict[str, int] = {"train": 0, "eval": 1, "test": 2}
STREAM_IDS: dict[str, int] = {
    "scene": 0,
    "layout": 1,
    "grounding": 2,
    "edit": 3,
    "concepts": 4,
    "edit-reshape": 5,
    "edit-remove": 6,
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "between", "next to")
DIRECTIONS: tuple[str, ...] = RELATIONS[:4]
# "next to": one of the four directions with at most this gap (pixels on the 128 canvas) between the boxes.
NEXT_TO_GAP = 16.0

_SQRT3 = math.sqrt(3.0)
_SIGNS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
# Outline vertices of the polygonal shapes for extent 1, local (u, v) coordinates, v down.
_VERTICES = {
    "square": np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]),
    "triangle": np.array([[0.0, -_SQRT3 / 4], [0.5, _SQRT3 / 4], [-0.5, _SQRT3 / 4]]),
    "cross": np.array([[s * a, t * b] for a, b in ((0.5, 1 / 6), (1 / 6, 0.5)) for s, t in _SIGNS]),
}
# Offset of the area centroid from the box centre along local v, per unit extent (triangle only).
CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": _SQRT3 / 12, "cross": 0.0}


def split_rng(split: str, index: int, stream: str = "scene") -> np.random.Generator:
    """The generator for sample ``index`` of ``split`` in a task stream.

    ``np.random.default_rng([SPLIT_IDS[split], STREAM_IDS[stream], index])``: splits differ in the first
    entropy word, so train and eval never share a seed (distinct entropy gives distinct SeedSequence
    states), and the same ``(split, index, stream)`` always gives the same samples.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}")
    if stream not in STREAM_IDS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {tuple(STREAM_IDS)}")
    if int(index) != index or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return np.random.default_rng([SPLIT_IDS[split], STREAM_IDS[stream], int(index)])


# --------------------------------------------------------------------------------------------- geometry
def shape_area(shape: str, extent: float) -> float:
    """Exact area of a shape of the given extent."""
    factor = {"circle": math.pi / 4, "square": 1.0, "triangle": _SQRT3 / 4, "cross": 5 / 9}[shape]
    return factor * extent * extent


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray, extent: float) -> np.ndarray:
    """Whether local points ``(u, v)`` (box centre at the origin, v down) lie inside the shape."""
    half = extent / 2
    if shape == "circle":
        return u * u + v * v <= half * half
    au, av = np.abs(u), np.abs(v)
    if shape == "square":
        return (au <= half) & (av <= half)
    if shape == "triangle":
        h = extent * _SQRT3 / 2
        return (v <= h / 2) & (au * _SQRT3 <= v + h / 2)
    if shape == "cross":
        arm = extent / 6
        return (au <= half) & (av <= half) & ((au <= arm) | (av <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def to_local(dx: np.ndarray, dy: np.ndarray, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """Screen offsets from the shape's box centre -> local shape coordinates (undo the rotation)."""
    if rotation == 0:
        return dx, dy
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return c * dx - s * dy, s * dx + c * dy


def outline_box(shape: str, centre: tuple[float, float], extent: float, rotation: float = 0.0):
    """Exact continuous bounding box ``(x0, y0, x1, y1)`` of the (rotated) shape."""
    cx, cy = centre
    if shape == "circle":
        r = extent / 2
        return cx - r, cy - r, cx + r, cy + r
    uv = _VERTICES[shape] * extent
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    xs = cx + c * uv[:, 0] + s * uv[:, 1]
    ys = cy - s * uv[:, 0] + c * uv[:, 1]
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (exclusive ends) of a boolean mask, or None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneObject:
    """One shape: palette colour, shape, size word, box centre ``(x, y)``, extent (px), rotation (deg).

    ``box`` is the tight box of the rendered mask, filled in by :func:`render_scene`.
    """

    colour: str
    shape: str
    size: str
    centre: tuple[float, float]
    extent: float
    rotation: float = 0.0
    box: tuple[int, int, int, int] | None = None

    @property
    def phrase(self) -> str:
        return phrase(self.colour, self.shape, self.size)

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene: ``image`` (HxWx3 uint8), objects (with boxes), per-object ``masks`` (bool HxW,
    coverage >= 0.5), ``coverages`` (float32 HxW, anti-aliasing coverage in [0, 1]) and the bare
    ``background`` (HxWx3 uint8)."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    masks: tuple[np.ndarray, ...]
    coverages: tuple[np.ndarray, ...]
    background: np.ndarray

    @property
    def caption(self) -> str:
        return make_caption([o.phrase for o in self.objects])

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(o.phrase for o in self.objects)

    @property
    def boxes(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        return tuple(o.box for o in self.objects)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(o.pair for o in self.objects)


def make_caption(phrases: Sequence[str]) -> str:
    """``["large red circle", "small blue square"]`` -> ``"a large red circle and a small blue square"``."""
    items = [f"a {p}" for p in phrases]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def object_coverage(obj: SceneObject, size: int, supersample: int = 5):
    """``(row0, col0, coverage)`` of an object on a ``size x size`` canvas, cropped to its box.

    Coverage is the fraction of ``supersample x supersample`` sub-pixel centres inside the shape (odd by
    default, so never exactly 0.5 and masks are unambiguous); None if the object is outside the canvas.
    """
    x0, y0, x1, y1 = outline_box(obj.shape, obj.centre, obj.extent, obj.rotation)
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(size, math.ceil(x1)), min(size, math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        return None
    n = supersample
    dx = (c0 + (np.arange((c1 - c0) * n, dtype=np.float32) + 0.5) / n - obj.centre[0])[None, :]
    dy = (r0 + (np.arange((r1 - r0) * n, dtype=np.float32) + 0.5) / n - obj.centre[1])[:, None]
    u, v = to_local(dx, dy, obj.rotation)
    inside = shape_inside(obj.shape, u, v, obj.extent)
    inside = np.broadcast_to(inside, (dy.shape[0], dx.shape[1]))
    cov = inside.reshape(r1 - r0, n, c1 - c0, n).sum(axis=(1, 3), dtype=np.float32) / (n * n)
    return r0, c0, cov


def render_scene(
    objects: Sequence[SceneObject],
    size: int = CANVAS,
    background: str | np.ndarray = "plain",
    rng: np.random.Generator | None = None,
    supersample: int = 5,
) -> Scene:
    """Render objects (in order, later on top) over a background.

    ``background``: a kind from ``BACKGROUNDS`` (textures drawn from ``rng``) or an HxWx3 uint8 array.
    Each pixel is ``background + coverage * (colour - background)``, rounded; an object's mask is
    ``coverage >= 0.5`` of its full shape (not cut by later objects) and its box the mask's tight box.
    """
    if isinstance(background, str):
        bg = make_background(background, size, rng)
    else:
        bg = np.asarray(background, dtype=np.uint8)
        if bg.shape != (size, size, 3):
            raise ValueError(f"background must be {(size, size, 3)}, got {bg.shape}")
    image = bg.astype(np.float32)
    placed, masks, coverages = [], [], []
    for obj in objects:
        full = np.zeros((size, size), np.float32)
        crop = object_coverage(obj, size, supersample)
        if crop is not None:
            r0, c0, cov = crop
            h, w = cov.shape
            full[r0 : r0 + h, c0 : c0 + w] = cov
            patch = image[r0 : r0 + h, c0 : c0 + w]
            patch += cov[..., None] * (np.array(COLOURS[obj.colour], np.float32) - patch)
        mask = full >= 0.5
        placed.append(replace(obj, box=mask_box(mask)))
        masks.append(mask)
        coverages.append(full)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image, tuple(placed), tuple(masks), tuple(coverages), bg)


def _separated(a, b, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng, pairs, size, max_rotation, gap, sizes):
    """Random non-overlapping objects (outline boxes at least ``gap`` apart, 2 px from the border)."""
    scale = size / CANVAS
    margin, gap = 2.0 * scale, gap * scale
    for _ in range(200):
        objects, boxes = [], []
        for colour, shape in pairs:
            word = SIZE_WORDS[rng.integers(len(SIZE_WORDS))] if sizes is None else sizes
            extent = float(rng.uniform(*SIZES[word])) * scale
            rotation = float(rng.uniform(-max_rotation, max_rotation)) if max_rotation else 0.0
            hx0, hy0, hx1, hy1 = outline_box(shape, (0.0, 0.0), extent, rotation)
            for _ in range(30):
                cx = float(rng.uniform(margin - hx0, size - margin - hx1))
                cy = float(rng.uniform(margin - hy0, size - margin - hy1))
                box = (cx + hx0, cy + hy0, cx + hx1, cy + hy1)
                if all(_separated(box, b, gap) for b in boxes):
                    break
            else:
                break
            boxes.append(box)
            objects.append(SceneObject(colour, shape, word, (cx, cy), extent, rotation))
        else:
            return objects
    raise RuntimeError(f"could not place {len(pairs)} objects on a {size}px canvas")


def sample_scene(
    rng: np.random.Generator,
    n_objects: int,
    size: int = CANVAS,
    background: str | np.ndarray = "plain",
    max_rotation: float = 0.0,
    gap: float = 6.0,
    pairs: Sequence[tuple[str, str]] = (),
    exclude: Sequence[tuple[str, str]] = (),
    sizes: str | None = None,
) -> Scene:
    """A random scene of ``n_objects`` (1-4 recommended) with distinct (colour, shape) pairs.

    ``pairs`` are forced to appear (the rest are drawn from the pairs not in ``pairs`` or ``exclude``);
    object order is shuffled. Size words are uniform (or all ``sizes``), extents uniform in the word's
    range, rotations uniform in ``[-max_rotation, max_rotation]``; outline boxes are ``gap`` px apart
    (on the 128 px scale).
    """
    forced = list(pairs)
    if len(set(forced)) != len(forced) or n_objects < len(forced):
        raise ValueError("forced pairs must be distinct and at most n_objects")
    pool = [p for p in PAIRS if p not in forced and p not in exclude]
    chosen = forced + [pool[i] for i in rng.choice(len(pool), n_objects - len(forced), replace=False)]
    chosen = [chosen[i] for i in rng.permutation(n_objects)]
    objects = _place(rng, chosen, size, max_rotation, gap, sizes)
    return render_scene(objects, size, background, rng)


def split_scene(
    split: str, index: int, n_objects: int | None = None, min_objects: int = 1, max_objects: int = 4, **kwargs
) -> Scene:
    """Scene ``index`` of ``split``; ``n_objects`` uniform in ``[min_objects, max_objects]`` if not given.

    Extra keyword arguments go to :func:`sample_scene`.
    """
    rng = split_rng(split, index, "scene")
    n = int(rng.integers(min_objects, max_objects + 1)) if n_objects is None else n_objects
    return sample_scene(rng, n, **kwargs)


# ----------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True, eq=False)
class PhraseTarget:
    """A phrase with its object's exact box and mask."""

    phrase: str
    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]
    mask: np.ndarray


def phrase_target(scene: Scene, i: int) -> PhraseTarget:
    """The target of object ``i`` of a scene."""
    o = scene.objects[i]
    return PhraseTarget(o.phrase, o.colour, o.shape, o.size, o.box, scene.masks[i])


@dataclass(frozen=True, eq=False)
class LayoutTask:
    """Layout-to-image: generate ``caption`` with each target phrase inside its box (``scene`` is a
    reference rendering)."""

    caption: str
    targets: tuple[PhraseTarget, ...]
    scene: Scene


def sample_layout(split: str, index: int, min_objects: int = 2, max_objects: int = 4, **kwargs) -> LayoutTask:
    """Layout task ``index`` of ``split`` (2-4 objects); keyword arguments go to :func:`sample_scene`."""
    rng = split_rng(split, index, "layout")
    scene = sample_scene(rng, int(rng.integers(min_objects, max_objects + 1)), **kwargs)
    return LayoutTask(scene.caption, tuple(phrase_target(scene, i) for i in range(len(scene.objects))), scene)


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def relation_holds(relation: str, box, anchors: Sequence, margin: float = 0.0) -> bool:
    """Whether ``box`` stands in ``relation`` to the anchor box(es), with a margin in pixels.

    ``left of B``: ``box.x1 + margin <= B.x0`` and the centres differ at least as much in x as in y
    (``right of``, ``above``, ``below`` likewise); ``next to B``: one of those four with a gap of at most
    ``NEXT_TO_GAP`` between the boxes. ``between B and C``: along x (or y) the boxes are
    ordered B, box, C (or C, box, B) with ``margin`` gaps, and the box centre's other coordinate lies
    within the joint extent of B and C on that axis.
    """
    x0, y0, x1, y1 = box
    cx, cy = _centre(box)
    if relation == "between":
        b, c = anchors
        for lo, hi, mid_lo, mid_hi, other, o_lo, o_hi in (
            (0, 2, x0, x1, cy, 1, 3),
            (1, 3, y0, y1, cx, 0, 2),
        ):
            joint = min(b[o_lo], c[o_lo]) <= other <= max(b[o_hi], c[o_hi])
            for p, q in ((b, c), (c, b)):
                if joint and p[hi] + margin <= mid_lo and mid_hi + margin <= q[lo]:
                    return True
        return False
    (a,) = anchors
    if relation == "next to":
        gap = max(a[0] - x1, x0 - a[2], a[1] - y1, y0 - a[3])
        return gap <= NEXT_TO_GAP and any(relation_holds(d, box, anchors, margin) for d in DIRECTIONS)
    ax, ay = _centre(a)
    dx, dy = abs(cx - ax), abs(cy - ay)
    if relation == "left of":
        return x1 + margin <= a[0] and dx >= dy
    if relation == "right of":
        return a[2] + margin <= x0 and dx >= dy
    if relation == "above":
        return y1 + margin <= a[1] and dy >= dx
    if relation == "below":
        return a[3] + margin <= y0 and dy >= dx
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


@dataclass(frozen=True, eq=False)
class GroundingTask:
    """Grounding: place the object described by ``text`` into ``scene`` (the full scene without it).

    ``target`` holds the removed object's box and mask; ``relation`` holds in ``full_scene`` between the
    target box and the boxes of the objects named by ``anchors`` (their ``(colour, shape)`` pairs).
    """

    text: str
    relation: str
    anchors: tuple[tuple[str, str], ...]
    target: PhraseTarget
    scene: Scene
    full_scene: Scene


def sample_grounding(
    split: str,
    index: int,
    min_objects: int = 2,
    max_objects: int = 4,
    margin: float = 4.0,
    size_in_text: bool = True,
    relation: str | None = None,
    **kwargs,
) -> GroundingTask:
    """Grounding task ``index`` of ``split``.

    Among all (target, relation, anchors) that hold with ``margin`` in a random scene, a relation is
    drawn uniformly, then a candidate. Text: ``"a large green triangle left of the blue square"`` or
    ``"a small red cross between the green circle and the blue square"`` (size word only if
    ``size_in_text``). With ``relation``, scenes are drawn until one holds that relation (balanced sets:
    ``"between"`` needs three aligned objects and is otherwise rare). Keyword arguments go to
    :func:`sample_scene`.
    """
    if relation is not None and relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    rng = split_rng(split, index, "grounding")
    for _ in range(100 if relation is None else 2000):
        full = sample_scene(rng, int(rng.integers(min_objects, max_objects + 1)), **kwargs)
        n, boxes = len(full.objects), full.boxes
        found: dict[str, list] = {}
        for t in range(n):
            others = [j for j in range(n) if j != t]
            for rel in (*DIRECTIONS, "next to"):
                for a in others:
                    if relation_holds(rel, boxes[t], [boxes[a]], margin):
                        found.setdefault(rel, []).append((t, (a,)))
            for i, b in enumerate(others):
                for c in others[i + 1 :]:
                    if relation_holds("between", boxes[t], [boxes[b], boxes[c]], margin):
                        found.setdefault("between", []).append((t, (b, c)))
        if not found or (relation is not None and relation not in found):
            continue
        chosen = relation or sorted(found)[rng.integers(len(found))]
        t, anchors = found[chosen][rng.integers(len(found[chosen]))]
        obj = full.objects[t]
        words = obj.phrase if size_in_text else phrase(obj.colour, obj.shape)
        names = [f"the {phrase(*full.objects[a].pair)}" for a in anchors]
        text = f"a {words} {chosen} " + " and ".join(names)
        rest = [o for j, o in enumerate(full.objects) if j != t]
        scene = render_scene(rest, full.image.shape[0], full.background)
        anchor_pairs = tuple(full.objects[a].pair for a in anchors)
        return GroundingTask(text, chosen, anchor_pairs, phrase_target(full, t), scene, full)
    raise RuntimeError("no scene with a valid relation found")


@dataclass(frozen=True, eq=False)
class EditTask:
    """Region editing: apply ``text`` to ``scene``; ``edited`` is the exact target.

    ``mask`` is the edited object's mask (the region that must change); ``change_mask`` (coverage > 0,
    within 2 px of ``mask``: anti-aliased edges and sharp tips) holds every pixel whose value differs
    between the two images, so ``psnr_outside(edited, original, change_mask)`` is inf for the target.
    """

    text: str
    target: PhraseTarget
    new_colour: str
    mask: np.ndarray
    change_mask: np.ndarray
    scene: Scene
    edited: Scene
    kind: str = "recolour"  # or "reshape" / "remove" (see sample_edit_task)
    new_shape: str = ""  # the shape after the edit ("" for a removal)

    @property
    def edited_image(self) -> np.ndarray:
        return self.edited.image

    @property
    def region_box(self) -> tuple[int, int, int, int] | None:
        """The tight pixel box of everything the edit changes (``mask``)."""
        return mask_box(self.mask)


def sample_edit(split: str, index: int, min_objects: int = 1, max_objects: int = 4, **kwargs) -> EditTask:
    """Recolouring task ``index`` of ``split``: ``"make the circle green"`` / ``"make the red square blue"``.

    The referring expression is the bare shape (half of the time, when that shape is unique in the scene)
    or colour + shape; the new colour differs from the old and gives a (colour, shape) pair not already
    in the scene. Keyword arguments go to :func:`sample_scene`.
    """
    rng = split_rng(split, index, "edit")
    scene = sample_scene(rng, int(rng.integers(min_objects, max_objects + 1)), **kwargs)
    t = int(rng.integers(len(scene.objects)))
    obj = scene.objects[t]
    colours = [c for c in COLOUR_NAMES if (c, obj.shape) not in scene.pairs]
    new = colours[rng.integers(len(colours))]
    unique_shape = sum(o.shape == obj.shape for o in scene.objects) == 1
    ref = obj.shape if unique_shape and rng.random() < 0.5 else phrase(obj.colour, obj.shape)
    objects = list(scene.objects)
    objects[t] = replace(obj, colour=new)
    edited = render_scene(objects, scene.image.shape[0], scene.background)
    text = f"make the {ref} {new}"
    return EditTask(
        text, phrase_target(scene, t), new, scene.masks[t], scene.coverages[t] > 0, scene, edited, "recolour",
        obj.shape,
    )  # fmt: skip


EDIT_KINDS = ("recolour", "reshape", "remove")


def sample_edit_task(split: str, index: int, kind: str, min_objects: int = 1, max_objects: int = 4, **kwargs):
    """Edit task ``index`` of ``split`` of one ``kind``: "recolour" is :func:`sample_edit`; "reshape":
    ``"turn the red circle into a square"`` (same colour, centre and extent; ``mask`` is the union of
    the old and new shapes); "remove": ``"remove the blue cross"`` (the object is left out, the
    background shows; ``mask`` is the object's)."""
    if kind == "recolour":
        return sample_edit(split, index, min_objects, max_objects, **kwargs)
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    rng = split_rng(split, index, f"edit-{kind}")
    scene = sample_scene(rng, int(rng.integers(min_objects, max_objects + 1)), **kwargs)
    t = int(rng.integers(len(scene.objects)))
    obj = scene.objects[t]
    objects = list(scene.objects)
    size = scene.image.shape[0]
    if kind == "reshape":
        shapes = [s for s in SHAPES if s != obj.shape and (obj.colour, s) not in scene.pairs]
        new_shape = shapes[rng.integers(len(shapes))]
        objects[t] = replace(obj, shape=new_shape)
        text = f"turn the {phrase(obj.colour, obj.shape)} into a {new_shape}"
    else:
        new_shape = ""
        del objects[t]
        text = f"remove the {phrase(obj.colour, obj.shape)}"
    edited = render_scene(objects, size, scene.background)
    mask, change = scene.masks[t].copy(), scene.coverages[t] > 0
    if kind == "reshape":
        mask |= edited.masks[t]
        change |= edited.coverages[t] > 0
    return EditTask(text, phrase_target(scene, t), obj.colour, mask, change, scene, edited, kind, new_shape)


@dataclass(frozen=True, eq=False)
class ConceptSet:
    """``k`` scenes sharing ``concepts`` ((colour, shape) pairs); ``masks[s][c]`` is concept ``c``'s mask
    in scene ``s``."""

    concepts: tuple[tuple[str, str], ...]
    scenes: tuple[Scene, ...]
    masks: tuple[tuple[np.ndarray, ...], ...]

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(phrase(c, s) for c, s in self.concepts)


def sample_concepts(
    split: str, index: int, k: int = 4, n_concepts: int | None = None, max_objects: int = 4, **kwargs
) -> ConceptSet:
    """Concept set ``index`` of ``split``: 1-3 concepts (uniform if not given), each present once in each
    of ``k`` scenes at its own position and size, plus 1 to ``max_objects - n_concepts`` distractors per
    scene (pairs other than the concepts). No distractor is in every scene (with ``k`` >= 2): one that
    were would be shared like a concept. Keyword arguments go to :func:`sample_scene`."""
    rng = split_rng(split, index, "concepts")
    n_c = int(rng.integers(1, 4)) if n_concepts is None else n_concepts
    if not 1 <= n_c < max_objects:
        raise ValueError("need 1 <= n_concepts < max_objects")
    concepts = tuple(PAIRS[i] for i in rng.choice(len(PAIRS), n_c, replace=False))
    scenes, masks = [], []
    for s in range(k):
        exclude = ()
        if s == k - 1 and k >= 2:  # the distractors every scene so far has
            exclude = tuple(sorted(set.intersection(*(set(scene.pairs) for scene in scenes)) - set(concepts)))
        n_objects = n_c + int(rng.integers(1, max_objects - n_c + 1))
        scene = sample_scene(rng, n_objects, pairs=concepts, exclude=exclude, **kwargs)
        scenes.append(scene)
        masks.append(tuple(scene.masks[scene.pairs.index(c)] for c in concepts))
    return ConceptSet(concepts, tuple(scenes), tuple(masks))


# -------------------------------------------------------------------------------------- degradations
def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an HxWx3 uint8 image (per channel, reflect borders), rounded to uint8."""
    out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def down_up(image: np.ndarray, factor: int = 8) -> np.ndarray:
    """Area-average downsampling by ``factor`` then bilinear upsampling back (``align_corners=False``,
    edge-clamped), rounded to uint8: a crude stand-in for an autoencoder round trip."""
    h, w, ch = image.shape
    if h % factor or w % factor:
        raise ValueError("image size must be divisible by factor")
    small = image.astype(np.float32).reshape(h // factor, factor, w // factor, factor, ch).mean(axis=(1, 3))

    def weights(n_out: int, n_in: int) -> np.ndarray:
        src = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
        i0 = np.minimum(src.astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        m = np.zeros((n_out, n_in), np.float32)
        np.add.at(m, (np.arange(n_out), i0), 1 - (src - i0))
        np.add.at(m, (np.arange(n_out), i1), src - i0)
        return m

    rows, cols = weights(h, h // factor), weights(w, w // factor)
    out = np.stack([rows @ small[..., c] @ cols.T for c in range(ch)], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


__all__ = [
    "CENTROID_OFFSET",
    "RELATIONS",
    "SHAPES",
    "SPLIT_IDS",
    "STREAM_IDS",
    "ConceptSet",
    "EditTask",
    "GroundingTask",
    "LayoutTask",
    "PhraseTarget",
    "Scene",
    "SceneObject",
    "down_up",
    "gaussian_blur",
    "make_caption",
    "mask_box",
    "object_coverage",
    "outline_box",
    "phrase_target",
    "relation_holds",
    "render_scene",
    "sample_concepts",
    "sample_edit",
    "sample_grounding",
    "sample_layout",
    "sample_scene",
    "shape_area",
    "shape_inside",
    "split_rng",
    "split_scene",
    "to_local",
]
