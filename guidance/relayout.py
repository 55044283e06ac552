"""Re-layout of the predicted image: each region's object is moved and scaled into its region.

Backward guidance and the moved start decide where objects grow in the first steps, but only
roughly: on the demo model most misses are objects a fifth to a half of a box width off, and
without size words every object comes out at one size whatever its box (docs/region_guidance.md,
sixth round). By the middle of sampling the model's prediction of the clean latent already shows
each object, so at one step the prediction itself is edited: per region, the object is found
around its phrase's cross-attention peak, the places all found objects held are filled with the
background, and each object is resampled (bilinear) from its own box into its region's bounding
box. The latent becomes the edited prediction plus the step's noise (``x - prediction``, kept as
it was), and sampling goes on from there. After Self-Guidance (Epstein et al., NeurIPS 2023),
which reads an object's position and size from its attention, and Mao et al.'s (ACM MM 2023)
observation that moving content moves the object: here the content moved is the predicted
image, once, with no gradients.

The object, per region: the cells connected to the attention peak whose predicted latent is nearer
the peak's than the background's (the per-channel median over the image), boxed. A region is left
where it is when its phrase's attention peaks on the background (a peak no farther from the
background than twice the median cell) or on a part that covers most of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .concept_discovery import connected_components
from .regions import mask_box

Box = tuple[float, float, float, float]  # left, top, right, bottom in latent cells (continuous)

LARGEST_OBJECT = 0.5  # share of the image beyond which a found part is background, not an object
BACKGROUND_CONTRAST = 2.0  # an object's cell is this many times farther from the background than the median


def region_box(mask: torch.Tensor, size: tuple[int, int]) -> Box | None:
    """Bounding box of ``mask [H, W]`` (pixels at least half inside) in the cells of a latent of
    ``size``, at the mask's own resolution (no rounding to cells); None for an empty mask."""
    box = mask_box(mask)
    if box is None:
        return None
    left, top, right, bottom = box
    return left * size[1], top * size[0], right * size[1], bottom * size[0]


def connected_part(candidates: torch.Tensor, seed: tuple[int, int]) -> torch.Tensor:
    """The 8-connected part of the boolean map ``candidates [h, w]`` that holds ``seed`` (row, col)."""
    if not candidates[seed]:
        return torch.zeros_like(candidates)
    labels = connected_components(candidates)
    return labels == labels[seed]


def object_box(prediction: torch.Tensor, attention: torch.Tensor) -> Box | None:
    """The box of the object that ``attention [h, w]`` points to in ``prediction [C, h, w]``: the
    cells connected to the attention's peak that lie nearer the peak's latent than the background's;
    None if the peak lies on the background or the part covers more than ``LARGEST_OBJECT`` of it."""
    height, width = attention.shape
    seed = divmod(int(attention.flatten().argmax()), width)
    prediction = prediction.float()
    background = prediction.flatten(1).median(1).values[:, None, None]
    to_background = (prediction - background).norm(dim=0)
    if to_background[seed] < BACKGROUND_CONTRAST * to_background.median():
        return None  # the peak lies on the background, not on an object
    to_object = (prediction - prediction[:, seed[0], seed[1], None, None]).norm(dim=0)
    part = connected_part(to_object < to_background, seed)
    if part.float().mean() > LARGEST_OBJECT:
        return None
    rows, cols = part.any(1).nonzero(), part.any(0).nonzero()
    return float(cols[0]), float(rows[0]), float(cols[-1]) + 1, float(rows[-1]) + 1


def grown(box: Box, margin: float) -> Box:
    """``box`` widened by ``margin`` times its width and height on each side."""
    left, top, right, bottom = box
    dx, dy = margin * (right - left), margin * (bottom - top)
    return left - dx, top - dy, right + dx, bottom + dy


def _cells_inside(box: Box, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Cells whose centres (``ys [h, 1]``, ``xs [1, w]``) lie in ``box``."""
    left, top, right, bottom = box
    return (xs >= left) & (xs <= right) & (ys >= top) & (ys <= bottom)


def relayout(
    prediction: torch.Tensor,
    sources: Sequence[Box | None],
    targets: Sequence[Box | None],
    margin: float = 0.25,
) -> torch.Tensor:
    """``prediction [C, h, w]`` with each object resampled from ``sources[r]`` into ``targets[r]``
    (each box grown by ``margin`` to carry the object's edge). Every source's grown box is first
    filled with the background (the median of the cells outside them all); later regions win where
    targets overlap. A region with a None source or target is left as it is."""
    size = tuple(prediction.shape[-2:])
    pairs = [(s, t) for s, t in zip(sources, targets, strict=True) if s is not None and t is not None]
    if not pairs:
        return prediction
    prediction = prediction.float()
    ys = torch.arange(size[0], device=prediction.device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(size[1], device=prediction.device, dtype=torch.float32)[None, :] + 0.5
    vacated = torch.zeros(size, dtype=torch.bool, device=prediction.device)
    for source, _ in pairs:
        vacated |= _cells_inside(grown(source, margin), ys, xs)
    rest = prediction[:, ~vacated] if (~vacated).any() else prediction.flatten(1)
    out = prediction.clone()
    out[:, vacated] = rest.median(1).values[:, None]
    for source, target in pairs:
        # each cell of the target maps to the point of the source at the same relative position
        sx = source[0] + (xs - target[0]) * (source[2] - source[0]) / (target[2] - target[0])
        sy = source[1] + (ys - target[1]) * (source[3] - source[1]) / (target[3] - target[1])
        grid = torch.stack(torch.broadcast_tensors(2 * sx / size[1] - 1, 2 * sy / size[0] - 1), -1)
        sampled = F.grid_sample(
            prediction[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        inside = _cells_inside(grown(target, margin), ys, xs)
        out[:, inside] = sampled[:, inside]
    return out
