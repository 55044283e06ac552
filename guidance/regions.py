"""REGIONS: the one currency between the pack's methods.

A region says *where* a phrase of the prompt belongs: a soft mask at image resolution (values in
[0, 1]), a weight, and the box it came from, if any. Nodes that find regions (grounding, region
proposal) emit them; nodes that place things (backward guidance, the guided sampler) consume them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import RegionShapeError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the width and height


@dataclass(frozen=True, eq=False)
class Region:
    phrase: str
    mask: torch.Tensor  # [H, W] float in [0, 1], image resolution
    weight: float = 1.0
    box: Box | None = None

    def __post_init__(self):
        if not self.phrase.strip():
            raise ValueError("a region needs a phrase")
        if self.mask.ndim != 2:
            raise ValueError(f"a region mask is [height, width], got shape {tuple(self.mask.shape)}")
        if float(self.mask.max()) <= 0:
            raise ValueError(f"the mask of region {self.phrase!r} is empty")


Regions = tuple[Region, ...]


def box_mask(box: Box, height: int, width: int) -> torch.Tensor:
    """Hard ``[height, width]`` mask of a fractional box; every pixel the box touches by at least
    half is inside."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"box {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / width
    inside_y = (ys >= y0) & (ys <= y1)
    inside_x = (xs >= x0) & (xs <= x1)
    mask = (inside_y[:, None] & inside_x[None, :]).float()
    if mask.sum() == 0:  # a box thinner than a pixel still marks its nearest pixel
        mask[min(int((y0 + y1) / 2 * height), height - 1), min(int((x0 + x1) / 2 * width), width - 1)] = 1
    return mask


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> Box | None:
    """Fractional bounding box of ``mask >= threshold`` (None if nothing reaches it)."""
    rows = (mask >= threshold).any(1).nonzero()
    cols = (mask >= threshold).any(0).nonzero()
    if len(rows) == 0:
        return None
    h, w = mask.shape
    return (cols[0].item() / w, rows[0].item() / h, (cols[-1].item() + 1) / w, (rows[-1].item() + 1) / h)


def crop_boxes(
    images: torch.Tensor, boxes: torch.Tensor, size: int, padding_mode: str = "border"
) -> torch.Tensor:
    """Bilinear ``size x size`` samples of ``images [n or 1, C, H, W]`` at the bin centres of each
    fractional box of ``boxes [n, 4]`` (RoIAlign with one sample per bin; differentiable in both)."""
    steps = (torch.arange(size, dtype=images.dtype, device=images.device) + 0.5) / size
    boxes = boxes.to(images.device, images.dtype)
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), -1) * 2 - 1
    return F.grid_sample(
        images.expand(len(boxes), -1, -1, -1), grid, align_corners=False, padding_mode=padding_mode
    )


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[..., H, W]`` mask to ``size`` by adaptive average pooling (the exact area average
    when the sizes divide): soft edges where a cell is partly inside."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.float()
    lead = mask.shape[:-2]
    flat = mask.float().reshape(-1, 1, *mask.shape[-2:])
    return F.interpolate(flat, size=tuple(size), mode="area").reshape(*lead, *size)


def covers_whole_image(mask: torch.Tensor) -> bool:
    """Whether every pixel is at least half inside: such a region places nothing."""
    return bool(mask.min() >= 0.5)


def check_aspect(
    phrase: str, mask: torch.Tensor, latent_hw: tuple[int, int], tolerance: float = 0.05
) -> None:
    """Raise RegionShapeError if ``mask`` ``[H, W]`` has another aspect ratio than a latent of
    ``latent_hw`` (beyond ``tolerance`` in log ratio, for latent sizes rounded from the image's):
    resized to the latent, such a mask would be squashed and point elsewhere than the user drew."""
    h, w = mask.shape[-2:]
    lh, lw = latent_hw
    if abs(math.log((w / h) / (lw / lh))) > tolerance:
        raise RegionShapeError(
            f"region {phrase!r} has a {w}x{h} mask (aspect {w / h:.2f}) but the latent being sampled is "
            f"{lw}x{lh} (aspect {lw / lh:.2f}); make the region with the image's width and height "
            "(Region from Box: image_width / image_height; Region from Mask: a mask of the image's size)"
        )


def scale_mask(mask: torch.Tensor, factor: float) -> torch.Tensor:
    """``[H, W]`` mask scaled by ``factor`` about its centre of mass (bilinear): 0.8 shrinks a box
    to 80% of its width and height around the same centre. ``factor`` 1 returns the mask."""
    if not 0 < factor <= 1:
        raise ValueError(f"the scale factor must be in (0, 1], got {factor}")
    if factor == 1:
        return mask
    h, w = mask.shape
    weights = mask.float()
    total = weights.sum().clamp_min(1e-12)
    # centre of mass in grid_sample's normalised coordinates (pixel centres, align_corners=False)
    cy = ((torch.arange(h, device=mask.device) + 0.5) / h * 2 - 1) @ weights.sum(1) / total
    cx = ((torch.arange(w, device=mask.device) + 0.5) / w * 2 - 1) @ weights.sum(0) / total
    # output point p reads the input at c + (p - c) / factor
    shift = 1 - 1 / factor
    theta = torch.tensor(
        [[1 / factor, 0, float(cx) * shift], [0, 1 / factor, float(cy) * shift]], device=mask.device
    )
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    scaled = F.grid_sample(weights[None, None], grid, mode="bilinear", align_corners=False)
    return scaled[0, 0].to(mask.dtype)
