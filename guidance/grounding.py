"""From the grounding network's map to a placement: the centre heat map's peak (refined to sub-cell
precision by the heat-weighted mean of its 3x3 neighbourhood), the size predicted at that cell, and the
box they make, moved inside the image whole rather than clipped. The peak's heat is the map's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .regions import Box


@dataclass(frozen=True)
class Placement:
    box: Box  # fractions of the image side
    centre: tuple[float, float]
    confidence: float  # the centre heat at the peak, in [0, 1]


def placement_from_map(heat_logits: torch.Tensor, log_size: torch.Tensor) -> Placement:
    """``heat_logits [h, w]``, ``log_size [2, h, w]`` (log width and height as shares of the side)."""
    prob = heat_logits.detach().float().sigmoid()
    h, w = prob.shape
    iy, ix = divmod(int(prob.argmax()), w)
    window = prob[max(0, iy - 1) : iy + 2, max(0, ix - 1) : ix + 2]
    ys = torch.arange(max(0, iy - 1), min(h, iy + 2), dtype=prob.dtype)
    xs = torch.arange(max(0, ix - 1), min(w, ix + 2), dtype=prob.dtype)
    cy = float((window.sum(1) * ys).sum() / window.sum() + 0.5) / h
    cx = float((window.sum(0) * xs).sum() / window.sum() + 0.5) / w
    bw, bh = (min(1.0, float(v)) for v in log_size[:, iy, ix].detach().float().exp())
    x0 = min(max(cx - bw / 2, 0.0), 1.0 - bw)
    y0 = min(max(cy - bh / 2, 0.0), 1.0 - bh)
    return Placement((x0, y0, x0 + bw, y0 + bh), (cx, cy), float(prob[iy, ix]))


def heat_image(heat_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[height, width]`` centre heat in [0, 1], bilinearly upsampled."""
    prob = heat_logits.detach().float().sigmoid()[None, None]
    return F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def grow_box(box: Box, margin: float) -> Box:
    """``box`` with ``margin`` times its width (height) added on the left and right (top and bottom),
    clipped to the image: the area to regenerate around an object so that it blends in."""
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy))


def network_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[1, H, W, C]`` IMAGE -> ``[1, 3, size, size]`` (antialiased resize; the network's boxes are
    fractions of the side, so they map back onto the image as they are)."""
    pixels = image[:1, ..., :3].movedim(-1, 1).float()
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.inference_mode()
def ground_text(network, image: torch.Tensor, token_ids: torch.Tensor) -> tuple[Placement, torch.Tensor]:
    """The grounding network (``models.grounding_net``) on the first image of an IMAGE ``[n, H, W, C]``
    and one text's ``token_ids [1, 77]``: the placement and the last stage's centre heat logits
    ``[h, w]`` (on the CPU)."""
    device = next(network.parameters()).device
    pixels = network_input(image, network.config.image_size).to(device)
    out = network(pixels, token_ids.to(device), False)
    heat_logits = out.heat[-1][0].float().cpu()
    return placement_from_map(heat_logits, out.log_size[-1][0].float().cpu()), heat_logits
