"""Masks from coarse attention, sharpened to the image's edges by a dense CRF (mean field).

Cross-attention lives on the latent grid (1/8 to 1/64 of the image), so thresholding it gives
blobs, not objects. As in the attention-segmentation literature (Krähenbühl & Koltun 2011's fully
connected CRF, used on diffusion attention by DiffuMask, DiffSegmenter and others), each pixel's
label (a concept or the background) takes the attention as its unary and is pulled, by a few
mean-field updates, towards the labels of nearby pixels of similar colour. The pairwise term here
is a local window (a truncated Gaussian kernel) on a copy of the image at most ``work_size``
pixels across, which keeps it cheap on large images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CRFSettings:
    iterations: int = 20
    window: int = 15  # kernel width in working-image pixels
    spatial_sigma: float = 10.0  # working-image pixels
    colour_sigma: float = 0.15  # colour distance in [0, 1] RGB
    pairwise_weight: float = 4.0
    temperature: float = 0.3  # unary: softmax of (score / temperature), background at its level
    work_size: int = 128


def attention_probabilities_with_background(
    attention: torch.Tensor, background_level: float, temperature: float
):
    """``[n, k, H, W]`` normalised attention -> ``[n, k + 1, H, W]`` label probabilities (background
    last), softmax of ``attention / temperature`` with the background scoring ``background_level``."""
    n, _, h, w = attention.shape
    background = torch.full(
        (n, 1, h, w), float(background_level), dtype=attention.dtype, device=attention.device
    )
    return (torch.cat([attention, background], 1) / temperature).softmax(1)


def otsu_levels(maps: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Otsu's threshold of each ``[h, w]`` map of ``[..., h, w]`` (values in [0, 1]): the level that
    best splits its values into two classes, whatever the map's peakiness."""
    flat = maps.flatten(-2).clamp(0, 1)
    edges = torch.linspace(0, 1, bins + 1, device=maps.device)
    index = (flat * bins).long().clamp(max=bins - 1)
    counts = torch.zeros(*flat.shape[:-1], bins, device=maps.device).scatter_add_(
        -1, index, torch.ones_like(flat)
    )
    p = counts / counts.sum(-1, keepdim=True)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = p.cumsum(-1)
    m0 = (p * centres).cumsum(-1)
    total = m0[..., -1:]
    between = (total * w0 - m0).pow(2) / (w0 * (1 - w0)).clamp_min(1e-8)
    return edges[1:][between.argmax(-1)]


def _kernel(image: torch.Tensor, s: CRFSettings) -> torch.Tensor:
    """``[n, window**2, H, W]`` affinities of each pixel to its window, zero for itself."""
    n, c, h, w = image.shape
    r = s.window // 2
    patches = F.unfold(F.pad(image, (r, r, r, r), mode="replicate"), s.window).reshape(n, c, -1, h, w)
    colour = (patches - image[:, :, None]).pow(2).sum(1)
    offsets = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
    spatial = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(1, -1, 1, 1)
    kernel = torch.exp(-spatial / (2 * s.spatial_sigma**2) - colour / (2 * s.colour_sigma**2))
    kernel[:, (s.window**2) // 2] = 0
    return kernel


def dense_crf(probabilities: torch.Tensor, image: torch.Tensor, settings: CRFSettings = CRFSettings()):
    """Mean-field refinement of label ``probabilities`` ``[n, L, H, W]`` on ``image`` ``[n, 3, H, W]``
    (values in [0, 1]) with a Potts pairwise term; returns refined probabilities at ``H x W``."""
    s = settings
    n, labels, h, w = probabilities.shape
    scale = min(1.0, s.work_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    unary = F.interpolate(probabilities.float(), size=size, mode="bilinear", align_corners=False)
    unary = unary.clamp_min(1e-6).log()
    guide = F.interpolate(image.float(), size=size, mode="area")
    kernel = _kernel(guide, s)
    r = s.window // 2
    q = unary.softmax(1)
    for _ in range(s.iterations):
        neighbours = F.unfold(F.pad(q, (r, r, r, r), mode="replicate"), s.window)
        neighbours = neighbours.reshape(n, labels, -1, *size)
        message = (neighbours * kernel[:, None]).sum(2)
        q = (unary + s.pairwise_weight * message).softmax(1)
    if size != (h, w):
        q = F.interpolate(q, size=(h, w), mode="bilinear", align_corners=False)
    return q
