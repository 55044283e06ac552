"""Deformable feature alignment (ST-LDM, arXiv 2403.10004; the sampling of Deformable DETR, arXiv
2010.04159), written in plain torch with ``grid_sample`` instead of a compiled kernel.

Each query predicts, per head, level and point, an offset from its reference point and a modulation
scalar (softmax over the levels and points of a head); the value maps are sampled bilinearly at the
shifted points and summed with those weights. Queries thus move their attention towards the image
regions the text asks about, and stage after stage the guidance map sharpens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class DeformableAlignment(nn.Module):
    """``forward(queries [B, N, D], reference [B, N, 2] in [0, 1] (x, y), values: list of [B, D, h, w])
    -> [B, N, D]``."""

    def __init__(self, dim: int, heads: int, levels: int, points: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's start: point k of head h sits k + 1 cells away in direction 2 pi h / heads,
        # every modulation scalar equal.
        nn.init.zeros_(self.offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        rings = torch.arange(1, self.points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * rings[None, None, :, None]
        self.offsets.bias.data.copy_(grid.expand(self.heads, self.levels, self.points, 2).flatten())
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        for layer in (self.value, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sampling_points(self, queries: torch.Tensor, reference: torch.Tensor, sizes) -> torch.Tensor:
        """``[B, N, heads, levels, points, 2]`` in [0, 1]: offsets are in cells of each level's grid."""
        b, n, _ = queries.shape
        offsets = self.offsets(queries).view(b, n, self.heads, self.levels, self.points, 2)
        cells = torch.tensor([[w, h] for h, w in sizes], dtype=queries.dtype, device=queries.device)
        return reference[:, :, None, None, None, :] + offsets / cells[None, None, None, :, None, :]

    def forward(self, queries: torch.Tensor, reference: torch.Tensor, values: list[torch.Tensor]):
        if len(values) != self.levels:
            raise ValueError(f"expected {self.levels} value maps, got {len(values)}")
        b, n, d = queries.shape
        heads, head_dim = self.heads, d // self.heads
        sizes = [v.shape[-2:] for v in values]
        points = self.sampling_points(queries, reference, sizes)
        weights = self.weights(queries).view(b, n, heads, self.levels * self.points).softmax(-1)
        sampled = []
        for level, value in enumerate(values):
            h, w = value.shape[-2:]
            v = self.value(value.flatten(2).transpose(1, 2))  # [B, h*w, D]
            v = v.transpose(1, 2).reshape(b * heads, head_dim, h, w)
            grid = points[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(b * heads, n, self.points, 2)
            # align_corners=False: coordinate 0 is the left edge of the first cell, 1 the right edge
            # of the last, matching the reference points' cell centres ((i + 0.5) / w).
            s = F.grid_sample(v, grid * 2 - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled.append(s)  # [B*heads, head_dim, N, points]
        sampled = torch.cat(sampled, -1)  # [B*heads, head_dim, N, levels*points]
        weights = weights.permute(0, 2, 1, 3).reshape(b * heads, 1, n, self.levels * self.points)
        mixed = (sampled * weights).sum(-1).view(b, heads, head_dim, n)
        return self.out(mixed.permute(0, 3, 1, 2).reshape(b, n, d))
