"""The region generation network of Learnable Regions (arXiv 2311.16432, Sec. 3.2): RoI features of each
candidate box (pooled from a ViT's patch features) through 1x1 convolutions to one score per candidate.
It is trained per image (``guidance.region_proposer``); its last layer starts at zero, so every candidate
starts equally likely."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def roi_features(features: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``features [1, D, h, w]`` bilinearly sampled on a ``size x size`` grid inside each fractional box of
    ``boxes [n, 4]`` (x0, y0, x1, y1) -> ``[n, D, size, size]`` (RoIAlign with one sample per bin)."""
    steps = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # [n, size]
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), -1) * 2 - 1
    return F.grid_sample(
        features.expand(len(boxes), -1, -1, -1), grid.to(features.dtype), align_corners=False, mode="bilinear"
    )


class RegionGenerator(nn.Module):
    """``forward(features [1, D, h, w], boxes [n, 4]) -> logits [n]``."""

    def __init__(self, feature_dim: int, hidden: int = 64, roi_size: int = 4):
        super().__init__()
        self.roi_size = roi_size
        self.convs = nn.Sequential(
            nn.Conv2d(feature_dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU()
        )
        # The box's own geometry (centre, log width, log height) joins the pooled features. No bias: a
        # softmax over candidates ignores a shift common to all of them.
        self.score = nn.Linear(hidden + 4, 1, bias=False)
        nn.init.zeros_(self.score.weight)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        pooled = self.convs(roi_features(features, boxes, self.roi_size)).mean((2, 3))
        size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-3)
        centre = (boxes[:, 2:] + boxes[:, :2]) / 2
        return self.score(torch.cat([pooled, centre, size.log()], 1)).squeeze(-1)
