"""Move the starting noise that a phrase attends to into the phrase's region.

After Mao, Wang and Aizawa, "Guided Image Synthesis via Initial Image Editing in Diffusion Model"
(ACM MM 2023): where an object appears is largely decided by the starting noise. The patch of noise
on which a phrase's cross-attention concentrates at the first step tends to grow into that object,
and copying the patch elsewhere moves the object with it. Here, per region, the box-sized window of
the start with the most attention for the region's phrase (weighted towards the window's centre) is
copied into the region's bounding box. The cells that a copy vacated and no region covers take the
noise that the copies overwrote, so the moved start is a rearrangement of the sampler's own noise
and keeps its statistics.

Backward guidance then only has to refine placements that start near their regions, rather than
drag an object across the image in the few steps in which the layout forms
(docs/region_guidance.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .regions import resize_mask

LatentBox = tuple[int, int, int, int]  # top, left, height, width, in latent cells


def latent_box(mask: torch.Tensor, size: tuple[int, int]) -> LatentBox | None:
    """Bounding box of the cells that are at least half inside ``mask`` once it is resized to the
    latent grid ``size`` (None if no cell is)."""
    inside = resize_mask(mask, size) >= 0.5
    rows, cols = inside.any(1).nonzero(), inside.any(0).nonzero()
    if len(rows) == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


def strongest_window(attention: torch.Tensor, height: int, width: int) -> tuple[int, int]:
    """``(top, left)`` of the ``height x width`` window of ``attention [h, w]`` with the most mass,
    weighted by a tent that peaks at the window's centre. Without the weighting, every window that
    holds a compact blob would score alike, and the first of them puts the blob in a corner."""
    tent_y, tent_x = _tent(height).to(attention.device), _tent(width).to(attention.device)
    kernel = torch.outer(tent_y, tent_x)[None, None]
    mass = F.conv2d(attention[None, None].float(), kernel)[0, 0]
    top, left = divmod(int(mass.flatten().argmax()), mass.shape[-1])
    return top, left


def _tent(n: int) -> torch.Tensor:
    """``n`` weights falling linearly from the centre, all positive."""
    offsets = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2).abs()
    return 1 - offsets / ((n + 1) / 2)


def transplant(x: torch.Tensor, attention: torch.Tensor, boxes: Sequence[LatentBox | None]) -> torch.Tensor:
    """The start ``x [channels, h, w]`` with, for each region ``r``, the window under which
    ``attention[r] [h, w]`` is strongest copied into ``boxes[r]`` (later regions win where boxes
    overlap; a None box moves nothing). Vacated cells take, in raster order, the values that the
    copies overwrote, repeated if there are fewer of them (if there are none, which needs the
    boxes to lie inside the windows, they keep their own)."""
    if len(boxes) != attention.shape[0]:
        raise ValueError(f"{len(boxes)} boxes for attention maps of {attention.shape[0]} regions")
    moved = x.clone()
    sources = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    targets = torch.zeros_like(sources)
    for region_attention, box in zip(attention, boxes, strict=True):
        if box is None:
            continue
        top, left, height, width = box
        source_top, source_left = strongest_window(region_attention, height, width)
        window = x[:, source_top : source_top + height, source_left : source_left + width]
        moved[:, top : top + height, left : left + width] = window
        sources[source_top : source_top + height, source_left : source_left + width] = True
        targets[top : top + height, left : left + width] = True
    vacated = sources & ~targets
    overwritten = x[:, targets & ~sources]
    if vacated.any() and overwritten.shape[-1] > 0:
        count = int(vacated.sum())
        repeats = -(-count // overwritten.shape[-1])
        moved[:, vacated] = overwritten.repeat(1, repeats)[:, :count]
    return moved
