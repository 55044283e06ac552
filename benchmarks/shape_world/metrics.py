"""Metrics on shape-world images: object detection, success rates, IoUs, PSNR, attention localisation.

Images are HxWx3, uint8 or float in [0, 1]. Masks are bool HxW. Boxes are ``(x0, y0, x1, y1)`` with
exclusive ends (see ``generator``). Functions that detect objects also accept a precomputed detection list.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .generator import CENTROID_OFFSET, mask_box, shape_inside
from .vocabulary import CANVAS, COLOUR_NAMES, PALETTE, SHAPES, parse_phrase

_CHROMA = PALETTE.astype(np.float64) - PALETTE.mean(axis=1, keepdims=True)
_CHROMA_NORM = np.linalg.norm(_CHROMA, axis=1)
# Rotational symmetry used to find each shape's orientation, and the phase (degrees) of that angular
# moment at rotation 0: square corners and the triangle's vertices give -1 and +i, cross arms +1.
_FOLD = {"square": 4, "triangle": 3, "cross": 4}
_PHASE0 = {"square": 180.0, "triangle": 90.0, "cross": 0.0}
# Extent of a shape with unit area.
_UNIT_EXTENT = {
    "circle": 2 / math.sqrt(math.pi),
    "square": 1.0,
    "triangle": math.sqrt(4 / math.sqrt(3)),
    "cross": math.sqrt(9 / 5),
}
# Second moment about the centroid (E[x^2 + y^2]) of a unit-area shape.
_TRACE = {"circle": 1 / (2 * math.pi), "square": 1 / 6, "triangle": 1 / (3 * math.sqrt(3)), "cross": 29 / 150}
# Largest distance from the centroid to the outline, per unit extent.
_RADIUS = {"circle": 0.5, "square": math.sqrt(0.5), "triangle": 1 / math.sqrt(3), "cross": math.sqrt(10) / 6}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x)


def _as_float255(image) -> np.ndarray:
    """HxWx3 float64 in [0, 255] from uint8 (as is) or float in [0, 1] (times 255)."""
    img = _to_numpy(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    return img.astype(np.float64) if img.dtype == np.uint8 else img.astype(np.float64) * 255.0


# ------------------------------------------------------------------------------------------ detection
@dataclass(frozen=True, eq=False)
class Detection:
    """A detected object: palette colour, shape, mask, tight box, area (pixels) and shape score (soft IoU
    with the best template, see :func:`shape_scores`)."""

    colour: str
    shape: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    score: float

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape


def _pixel_colours(image, max_angle: float):
    """Per pixel: nearest palette colour by chroma direction, its coverage estimate, angle within bound."""
    img = _as_float255(image).astype(np.float32)
    q = img - img.mean(axis=-1, keepdims=True)
    proj = q @ (_CHROMA / _CHROMA_NORM[:, None]).T.astype(np.float32)
    best = proj.argmax(axis=-1)
    along = np.take_along_axis(proj, best[..., None], axis=-1)[..., 0]
    alpha = along / _CHROMA_NORM[best].astype(np.float32)
    close = along >= math.cos(math.radians(max_angle)) * np.sqrt((q * q).sum(axis=-1))
    return best, alpha, close


def classify_pixels(image, min_coverage: float = 0.5, max_angle: float = 30.0):
    """Per-pixel palette colour index (-1 for background) and estimated coverage.

    A pixel's chroma is its RGB minus its grey level (channel mean). A palette colour blended with
    coverage ``c`` over a neutral background has chroma exactly ``c`` times the colour's chroma ``k``, so
    the pixel gets the colour whose chroma direction is nearest (largest cosine), its coverage estimate is
    ``alpha = <chroma, k> / |k|^2``, and it is foreground iff ``alpha >= min_coverage`` and the angle to
    ``k`` is at most ``max_angle`` degrees. On clean renders (plain or textured background) this
    reproduces the generator's masks (coverage >= 0.5) exactly. Raw RGB distance is not used because a
    blended edge pixel of one colour can be nearer to another (yellow edges to orange); chroma direction
    is unchanged by blending with grey, by blur and by resampling. Returns ``(labels int HxW, alpha)``.
    """
    best, alpha, close = _pixel_colours(image, max_angle)
    return np.where((alpha >= min_coverage) & close, best, -1), alpha


@functools.lru_cache(maxsize=64)
def _freq2(n: int) -> np.ndarray:
    """Squared spatial frequencies of an ``n x n`` grid in rfft2 layout."""
    return (sfft.fftfreq(n)[:, None] ** 2 + sfft.rfftfreq(n)[None, :] ** 2).astype(np.float32)


def _gaussian_transfer(n: int, sigma: float) -> np.ndarray:
    return np.exp(np.float32(-2.0 * (math.pi * sigma) ** 2) * _freq2(n))


def _soft_iou(obs: np.ndarray, templates: np.ndarray) -> np.ndarray:
    return np.minimum(obs, templates).sum(axis=(-2, -1)) / np.maximum(obs, templates).sum(axis=(-2, -1))


def _harmonic(a: np.ndarray, dx: np.ndarray, dy: np.ndarray, k: int) -> complex:
    """``sum(a * (dx + i dy)^k)``: the k-fold angular moment about the centroid."""
    return complex((a * (dx + 1j * dy) ** k).sum())


def shape_scores(mask: np.ndarray, alpha: np.ndarray | None = None, floor: float = 0.1) -> dict[str, float]:
    """Fit of each shape to an object: best soft IoU ``sum(min(a, t)) / sum(max(a, t))`` over templates.

    ``a`` is ``alpha`` (the object's soft coverage map, HxW, values below ``floor`` set to 0) or the
    binary ``mask``. Templates are analysis by synthesis: each shape with ``a``'s mass as area and ``a``'s
    centroid, rasterised on pixel centres, blurred by a Gaussian whose sigma makes the template's second
    moment match ``a``'s (at least 0.4 px, the pixel's own anti-aliasing; also tried at 0.7x and 1.4x),
    then floored like ``a``. Rotations: the phase of ``a``'s k-fold angular moment (k = 4 for squares and
    crosses, 3 for triangles) gives the orientation; it and offsets of +-4 and +-8 degrees are tried.
    Isotropic blur preserves mass, centroid and these angular moments and only adds to the second moment,
    which is what makes the fit robust to it (and, approximately, to area-averaging and resampling).
    """
    a = np.asarray(mask, np.float32) if alpha is None else np.clip(np.asarray(alpha, np.float32), 0, 1)
    a = np.where(a >= floor, a, 0).astype(np.float32)
    ys, xs = np.nonzero(a)
    if ys.size == 0:
        return {s: 0.0 for s in SHAPES}
    w = a[ys, xs].astype(np.float64)
    mass = w.sum()
    cy, cx = (w * (ys + 0.5)).sum() / mass, (w * (xs + 0.5)).sum() / mass
    spread = (w * ((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2)).sum() / mass
    sigmas = {s: max(0.4, math.sqrt(max(0.0, (spread - _TRACE[s] * mass) / 2))) for s in SHAPES}
    half = max(_RADIUS[s] * _UNIT_EXTENT[s] * math.sqrt(mass) + 3 * 1.5 * sigmas[s] for s in SHAPES) + 2
    n = sfft.next_fast_len(2 * math.ceil(half), real=True)
    oy, ox = math.floor(cy) - n // 2, math.floor(cx) - n // 2
    obs = np.zeros((n, n), np.float32)
    r0, r1, c0, c1 = max(oy, 0), min(oy + n, a.shape[0]), max(ox, 0), min(ox + n, a.shape[1])
    obs[r0 - oy : r1 - oy, c0 - ox : c1 - ox] = a[r0:r1, c0:c1]
    dy = (np.arange(oy, oy + n, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(ox, ox + n, dtype=np.float32) + 0.5 - cx)[None, :]
    phases = {k: math.degrees(np.angle(_harmonic(obs, dx, dy, k))) for k in (3, 4)}
    scores = {}
    for shape in SHAPES:
        extent = _UNIT_EXTENT[shape] * math.sqrt(mass)
        if shape == "circle":
            angles = np.zeros(1)
        else:
            k = _FOLD[shape]
            angles = -(phases[k] - _PHASE0[shape]) / k + np.array([0.0, -4.0, 4.0, -8.0, 8.0])
        rad = np.radians(angles).astype(np.float32)[:, None, None]
        c, s = np.cos(rad), np.sin(rad)
        u, v = c * dx - s * dy, s * dx + c * dy + CENTROID_OFFSET[shape] * extent
        spectra = sfft.rfft2(shape_inside(shape, u, v, extent).astype(np.float32))
        best_score, best_k = -1.0, 0
        for factor in (1.0, 0.7, 1.4):
            sigma = max(0.4, factor * sigmas[shape])
            spec = spectra if factor == 1.0 else spectra[best_k : best_k + 1]
            blurred = sfft.irfft2(spec * _gaussian_transfer(n, sigma), s=(n, n))
            blurred = np.where(blurred >= floor, blurred, 0)
            ious = _soft_iou(obs, blurred)
            k = int(ious.argmax())
            if factor == 1.0:
                best_k = k
            best_score = max(best_score, float(ious[k]))
        scores[shape] = best_score
    return scores


def classify_shape(mask: np.ndarray, alpha: np.ndarray | None = None) -> str:
    """The shape whose template fits best (highest :func:`shape_scores`)."""
    scores = shape_scores(mask, alpha)
    return max(scores, key=scores.get)


def detect_objects(
    image,
    min_area: float | None = None,
    min_coverage: float = 0.5,
    max_angle: float = 30.0,
    floor: float = 0.1,
) -> list[Detection]:
    """Objects in an image.

    Pixels are labelled with :func:`classify_pixels`; each palette colour's pixels are split into
    8-connected components (``scipy.ndimage.label``); components smaller than ``min_area`` pixels (default
    40 on a 128x128 canvas, scaled with the image area) are dropped. For the shape, each component gets the
    soft coverage (``alpha >= floor``) of the pixels of its colour whose nearest kept component of that
    colour it is, within 10 px (scaled): :func:`classify_shape` on that map. Ordered by palette colour,
    then by component label (raster order).
    """
    best, alpha, close = _pixel_colours(image, max_angle)
    h, w = best.shape
    scale = math.sqrt(h * w) / CANVAS
    min_area = 40.0 * scale * scale if min_area is None else min_area
    soft_all = np.where(close & (alpha >= floor), np.clip(alpha, 0, 1), 0.0)
    detections = []
    for k, colour in enumerate(COLOUR_NAMES):
        fg = (best == k) & close & (alpha >= min_coverage)
        comps, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        areas = np.bincount(comps.ravel(), minlength=n + 1)
        keep = np.flatnonzero(areas[1:] >= min_area) + 1
        if keep.size == 0:
            continue
        comps = np.where(np.isin(comps, keep), comps, 0)
        dist, (iy, ix) = ndimage.distance_transform_edt(comps == 0, return_indices=True)
        owner = np.where((dist <= 10.0 * scale) & (best == k), comps[iy, ix], 0)
        for i in keep:
            mask = comps == i
            scores = shape_scores(mask, np.where(owner == i, soft_all, 0.0), floor)
            shape = max(scores, key=scores.get)
            detections.append(Detection(colour, shape, mask, mask_box(mask), int(areas[i]), scores[shape]))
    return detections


def _detections(image_or_detections) -> list[Detection]:
    if isinstance(image_or_detections, list | tuple) and all(
        isinstance(d, Detection) for d in image_or_detections
    ):
        return list(image_or_detections)
    return detect_objects(image_or_detections)


def _pair(item) -> tuple[str, str]:
    """(colour, shape) from a pair, a phrase string, or an object with ``colour`` and ``shape``."""
    if isinstance(item, str):
        _, colour, shape = parse_phrase(item)
        return colour, shape
    if hasattr(item, "colour") and hasattr(item, "shape"):
        return item.colour, item.shape
    colour, shape = item
    return colour, shape


# ----------------------------------------------------------------------------------- success metrics
def object_present(image, colour: str, shape: str) -> bool:
    """Whether at least one object of this colour and shape is detected (image or detection list)."""
    return any(d.pair == (colour, shape) for d in _detections(image))


def whole_image_success(image, requested: Sequence) -> bool:
    """Whether the image shows exactly the requested objects, once each.

    ``requested``: (colour, shape) pairs, phrases (``"large red circle"``; size words are ignored) or
    objects with ``colour``/``shape``. Success iff for every distinct requested pair, the number of
    detections with that colour and shape equals the number of times it is requested (so each is present,
    and no requested pair appears an extra time). Detections of pairs that were not requested are allowed.
    """
    wanted: dict[tuple[str, str], int] = {}
    for item in requested:
        p = _pair(item)
        wanted[p] = wanted.get(p, 0) + 1
    found = [d.pair for d in _detections(image)]
    return all(found.count(p) == n for p, n in wanted.items())


def box_iou(a, b) -> float:
    """Intersection over union of boxes ``(x0, y0, x1, y1)``: areas are ``(x1 - x0) * (y1 - y0)``;
    0 if the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def hit_rate(ious, threshold: float = 0.5) -> float:
    """Fraction of IoUs ``>= threshold``; raises on an empty input."""
    ious = np.asarray(_to_numpy(ious), dtype=np.float64).ravel()
    if ious.size == 0:
        raise ValueError("hit_rate of no IoUs")
    return float((ious >= threshold).mean())


def mask_iou(a, b) -> float:
    """``|a & b| / |a | b|`` of boolean masks; 1.0 if both are empty."""
    a, b = np.asarray(_to_numpy(a), bool), np.asarray(_to_numpy(b), bool)
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def placement_iou(image, target) -> float:
    """Box IoU between the target and the detected object of the target's colour and shape.

    ``target``: a ``PhraseTarget`` (or anything with ``colour``, ``shape``, ``box``) or a
    ``(phrase, box, ...)`` tuple. With several matching detections, the highest IoU counts; 0 if none.
    """
    if hasattr(target, "box"):
        pair, box = _pair(target), target.box
    else:
        pair, box = _pair(target[0]), target[1]
    return max((box_iou(d.box, box) for d in _detections(image) if d.pair == pair), default=0.0)


def placement_size_ratio(image, target) -> float | None:
    """``log(object extent / box extent)`` of the detection that :func:`placement_iou` matches
    (extent = square root of the box area), or None if no object of the target's colour and shape
    was detected: 0 when the object fills its box, -0.69 when it is half as wide, +0.69 twice."""
    pair = _pair(target)
    matches = [d for d in _detections(image) if d.pair == pair]
    if not matches:
        return None
    best = max(matches, key=lambda d: box_iou(d.box, target.box))
    return math.log(box_extent(best.box) / box_extent(target.box))


def box_extent(box) -> float:
    """Square root of the area of an ``(x0, y0, x1, y1)`` box."""
    return math.sqrt(max(1e-9, (box[2] - box[0]) * (box[3] - box[1])))


def local_accuracy(image, mask, colour: str, shape: str) -> bool:
    """Whether the requested object is inside the region ``mask``.

    Among detections of ``colour``, take the one whose mask overlaps the region in the most pixels
    (first on ties); success iff that overlap is positive, its shape is ``shape`` and at least half of its
    area lies inside the region.
    """
    region = np.asarray(_to_numpy(mask), bool)
    best, best_overlap = None, 0
    for d in _detections(image):
        overlap = np.count_nonzero(d.mask & region) if d.colour == colour else 0
        if overlap > best_overlap:
            best, best_overlap = d, overlap
    return best is not None and best.shape == shape and 2 * best_overlap >= best.area


# --------------------------------------------------------------------------------------- image metrics
def psnr(a, b, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(1 / MSE)`` on images scaled to [0, 1].

    uint8 images are divided by 255, float images are taken as [0, 1]; the MSE averages all channels of
    the pixels where ``mask`` (HxW) is True, or of all pixels. ``inf`` for identical images; raises if the
    mask is empty.
    """
    x, y = _as_float255(a) / 255.0, _as_float255(b) / 255.0
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    err = (x - y) ** 2
    if mask is not None:
        m = np.asarray(_to_numpy(mask), bool)
        if not m.any():
            raise ValueError("psnr over an empty mask")
        err = err[m]
    mse = float(err.mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def psnr_outside(edited, original, region_mask) -> float:
    """PSNR between the edited and original images outside ``region_mask``."""
    return psnr(edited, original, ~np.asarray(_to_numpy(region_mask), bool))


def area_resize(mask, shape: tuple[int, int]) -> np.ndarray:
    """Resize a mask (or map) to ``shape`` by exact area averaging: each output cell is the mean of the
    input, weighted by how much of each input pixel the cell covers (any size ratio)."""

    def weights(n_out: int, n_in: int) -> np.ndarray:
        edges = np.arange(n_out + 1) * (n_in / n_out)
        lo, hi = edges[:-1, None], edges[1:, None]
        px = np.arange(n_in)[None, :]
        w = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
        return w / w.sum(axis=1, keepdims=True)

    m = np.asarray(_to_numpy(mask), np.float64)
    return weights(shape[0], m.shape[0]) @ m @ weights(shape[1], m.shape[1]).T


def attention_localisation(attn_map, mask) -> float:
    """(Share of the map's mass inside the mask) / (mask's share of the area).

    ``attn_map``: non-negative ``h x w`` (numpy or torch; leading singleton dims are dropped, a flat map
    of a square number of tokens is reshaped to a square). ``mask``: ``H x W``, resized to ``h x w`` by
    :func:`area_resize`, giving a soft mask ``m``. Score ``= (sum(A * m) / sum(A)) / mean(m)``: 1 for a
    uniform map, ``1 / mean(m)`` when all mass is inside a hard mask, 0 when all is outside.
    """
    attn = np.asarray(_to_numpy(attn_map), np.float64)
    while attn.ndim > 2 and attn.shape[0] == 1:
        attn = attn[0]
    if attn.ndim == 1:
        side = math.isqrt(attn.size)
        if side * side != attn.size:
            raise ValueError(f"flat attention map of {attn.size} tokens is not square")
        attn = attn.reshape(side, side)
    if attn.ndim != 2:
        raise ValueError(f"expected a 2-D attention map, got shape {attn.shape}")
    if (attn < 0).any() or attn.sum() <= 0:
        raise ValueError("attention map must be non-negative with positive mass")
    m = area_resize(np.asarray(_to_numpy(mask), bool), attn.shape)
    if m.mean() <= 0:
        raise ValueError("empty mask")
    return float((attn * m).sum() / attn.sum() / m.mean())


def clip_score(image_features, text_features) -> float | np.ndarray:
    """CLIP score ``max(0, 100 * cos(image, text))`` of feature vectors (numpy or torch).

    ``(D,)`` and ``(D,)`` -> float; ``(N, D)`` with ``(N, D)`` or ``(D,)`` -> one score per row.
    """
    x = np.asarray(_to_numpy(image_features), np.float64)
    y = np.asarray(_to_numpy(text_features), np.float64)
    cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    score = np.maximum(100.0 * cos, 0.0)
    return float(score) if score.ndim == 0 else score


__all__ = [
    "Detection",
    "area_resize",
    "attention_localisation",
    "box_iou",
    "classify_pixels",
    "classify_shape",
    "clip_score",
    "detect_objects",
    "hit_rate",
    "local_accuracy",
    "mask_iou",
    "object_present",
    "placement_iou",
    "psnr",
    "psnr_outside",
    "shape_scores",
]


# ----------------------------------------------------------------------------------------- grounding
def object_overlap(box, masks, tolerance: float = 0.01) -> bool:
    """Whether the pixel box ``(x0, y0, x1, y1)`` covers more than ``tolerance`` of its area with the
    pixels of ``masks`` (the existing objects)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    area = max(1, (x1 - x0) * (y1 - y0))
    if not len(masks):
        return False
    union = np.any(np.asarray(masks, bool), axis=0)
    return np.count_nonzero(union[max(0, y0) : y1, max(0, x0) : x1]) > tolerance * area


def placement_valid(box, task) -> bool:
    """A pixel box is a valid placement for a ``GroundingTask``: its relation holds to the anchors'
    boxes (no margin) and it overlaps no object of the scene."""
    from .generator import relation_holds

    scene = task.full_scene
    anchors = [scene.objects[scene.pairs.index(p)].box for p in task.anchors]
    return relation_holds(task.relation, box, anchors) and not object_overlap(box, task.scene.masks)


def placement_validity_grid(task, grid: int, width: float, height: float) -> np.ndarray:
    """``[grid, grid]`` bool: whether a ``width x height`` pixel box centred on each cell centre of a
    ``grid x grid`` partition of the canvas is a valid placement (:func:`placement_valid`), computed
    with an integral image of the objects' union."""
    from .generator import relation_holds

    size = task.scene.image.shape[0]
    union = (
        np.any(np.asarray(task.scene.masks, bool), axis=0)
        if len(task.scene.masks)
        else np.zeros((size, size), bool)
    )
    integral = np.pad(union.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    scene = task.full_scene
    anchors = [scene.objects[scene.pairs.index(p)].box for p in task.anchors]
    valid = np.zeros((grid, grid), bool)
    for iy in range(grid):
        for ix in range(grid):
            cx, cy = (ix + 0.5) * size / grid, (iy + 0.5) * size / grid
            box = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
            x0, y0, x1, y1 = (min(size, max(0, int(round(v)))) for v in box)
            inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            area = max(
                1, (int(round(box[2])) - int(round(box[0]))) * (int(round(box[3])) - int(round(box[1])))
            )
            valid[iy, ix] = inside <= 0.01 * area and relation_holds(task.relation, box, anchors)
    return valid


def valid_place_iou(box, task) -> float:
    """The largest IoU between a pixel box and a box of the task's target size at a valid placement
    (:func:`placement_valid`, centres on the pixel grid): a placement's IoU where many places are
    right ("next to the X"), scored against the right place nearest to it; 0 if none is valid."""
    x0, y0, x1, y1 = task.target.box
    width, height = x1 - x0, y1 - y0
    size = task.scene.image.shape[0]
    valid = placement_validity_grid(task, size, width, height)
    return max(
        (
            box_iou(
                box,
                (cx + 0.5 - width / 2, cy + 0.5 - height / 2, cx + 0.5 + width / 2, cy + 0.5 + height / 2),
            )
            for cy, cx in zip(*np.nonzero(valid), strict=True)
        ),
        default=0.0,
    )


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[n, d]`` (FID's formula,
    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
