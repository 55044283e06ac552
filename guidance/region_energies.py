"""Energies on cross-attention maps that are low when each region's phrase attends inside its region.

All take layer-averaged maps ``[batch, tokens, h, w]`` (softmax over the tokens, as the
AttentionStore gives them) and return one energy per batch item, so each item's gradient is its
own. Three families, combinable with weights:

- ``layout``: Chen et al., "Training-Free Layout Control with Cross-Attention Guidance" (WACV 2024):
  per region, mean over its tokens of ``(1 - sum(A * m) / sum(A))^2``.
- ``boxdiff``: Xie et al., "BoxDiff" (ICCV 2023): inner (the strongest responses inside the region
  are high), outer (the strongest outside are low) and corner terms; the corner term is written
  here as the L1 distance between the max-projections of the map and of the mask on both axes.
- ``presence``: Chefer et al., "Attend-and-Excite" (SIGGRAPH 2023): text-token maps re-softmaxed
  at temperature 100, Gaussian-smoothed; ``1 - max`` of each token's map, restricted to its
  region, and the worst token counts.
- ``extent``: BoxDiff's corner constraint on its own: the max-projections of each token's
  max-normalised map on both axes match the region's, so the phrase spans its region's width and
  height, not only lies inside it (the layout energy is as low for a small object centred in a
  large region as for one that fills it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention_store import max_normalised
from .regions import resize_mask


@dataclass(frozen=True, eq=False)
class RegionTarget:
    """Where the conditioning tokens ``tokens`` should attend: ``mask`` ``[H, W]`` (any resolution);
    ``phrase`` names the region in errors."""

    tokens: tuple[int, ...]
    mask: torch.Tensor
    weight: float = 1.0
    phrase: str = ""


def _token_maps(maps: torch.Tensor, target: RegionTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """``([batch, k, h, w] maps of the target's tokens, [h, w] mask at the maps' grid)``."""
    mask = resize_mask(target.mask.to(maps.device), maps.shape[-2:]).to(maps.dtype)
    return maps[:, list(target.tokens)], mask


def layout_energy(maps: torch.Tensor, targets: Sequence[RegionTarget]) -> torch.Tensor:
    total = maps.new_zeros(maps.shape[0])
    for target in targets:
        a, m = _token_maps(maps, target)
        inside = (a * m).sum((-1, -2)) / a.sum((-1, -2)).clamp_min(1e-8)
        total = total + target.weight * ((1 - inside) ** 2).mean(1)
    return total


def _top_mean(values: torch.Tensor, where: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the ``fraction`` largest of ``values [..., n]`` among positions with ``where [n]``."""
    count = int(where.sum())
    if count == 0:
        return values.new_zeros(values.shape[:-1])
    k = max(1, math.ceil(fraction * count))
    return values[..., where].topk(k, dim=-1).values.mean(-1)


def _projection_distance(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """L1 distance between the max-projections of max-normalised maps ``a [batch, k, h, w]`` and of
    the mask ``m [h, w]`` on both axes: BoxDiff's corner constraint, which holds when the map spans
    the mask's rows and columns and no others, i.e. has the region's extent (a triangle's map spans
    its box as a square's does)."""
    return (a.amax(-2) - m.amax(-2)).abs().mean(-1) + (a.amax(-1) - m.amax(-1)).abs().mean(-1)


def boxdiff_energy(
    maps: torch.Tensor, targets: Sequence[RegionTarget], top_fraction: float = 0.2
) -> torch.Tensor:
    total = maps.new_zeros(maps.shape[0])
    for target in targets:
        a, m = _token_maps(maps, target)
        a = max_normalised(a)
        flat = a.flatten(-2)
        inside = m.flatten() >= 0.5
        inner = 1 - _top_mean(flat, inside, top_fraction)
        outer = _top_mean(flat, ~inside, top_fraction)
        total = total + target.weight * (inner + outer + _projection_distance(a, m)).mean(1)
    return total


def extent_energy(maps: torch.Tensor, targets: Sequence[RegionTarget]) -> torch.Tensor:
    """Per region, mean over its tokens of the projection distance (``_projection_distance``): low when
    each token's map spans exactly its region's rows and columns, so it asks for the region's size
    whatever the prompt says (or does not say) of it."""
    total = maps.new_zeros(maps.shape[0])
    for target in targets:
        a, m = _token_maps(maps, target)
        total = total + target.weight * _projection_distance(max_normalised(a), m).mean(1)
    return total


def _gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5, size: int = 3) -> torch.Tensor:
    x = torch.arange(size, device=maps.device, dtype=maps.dtype) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(maps.shape[1], 1, size, size)
    padded = F.pad(maps, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel2d, groups=maps.shape[1])


def presence_energy(
    maps: torch.Tensor,
    targets: Sequence[RegionTarget],
    text_tokens: Sequence[int],
    temperature: float = 100.0,
) -> torch.Tensor:
    """``text_tokens``: the prompt's own tokens (no start, end or padding tokens)."""
    text_tokens = list(text_tokens)
    text = (maps[:, text_tokens] * temperature).softmax(1)
    text = _gaussian_smooth(text)
    column = {token: i for i, token in enumerate(text_tokens)}
    worst = []
    for target in targets:
        missing = [t for t in target.tokens if t not in column]
        if missing:
            raise ValueError(f"tokens {missing} are not among the prompt's text tokens")
        a = text[:, [column[t] for t in target.tokens]]
        m = resize_mask(target.mask.to(maps.device), maps.shape[-2:]).to(maps.dtype)
        worst.append(target.weight * (1 - (a * m).amax((-1, -2))).amax(1))
    return torch.stack(worst, 1).amax(1)


@dataclass(frozen=True)
class EnergyWeights:
    layout: float = 1.0
    boxdiff: float = 0.0
    presence: float = 0.0
    extent: float = 0.0

    def __post_init__(self):
        if min(self.layout, self.boxdiff, self.presence, self.extent) < 0:
            raise ValueError("energy weights must be >= 0")
        if self.layout == self.boxdiff == self.presence == self.extent == 0:
            raise ValueError("at least one energy weight must be > 0")


def region_energy(
    maps: torch.Tensor,
    targets: Sequence[RegionTarget],
    weights: EnergyWeights,
    text_tokens: Sequence[int] = (),
) -> torch.Tensor:
    """Weighted sum of the selected energies, one value per batch item."""
    total = maps.new_zeros(maps.shape[0])
    if weights.layout:
        total = total + weights.layout * layout_energy(maps, targets)
    if weights.boxdiff:
        total = total + weights.boxdiff * boxdiff_energy(maps, targets)
    if weights.presence:
        total = total + weights.presence * presence_energy(maps, targets, text_tokens)
    if weights.extent:
        total = total + weights.extent * extent_energy(maps, targets)
    return total
