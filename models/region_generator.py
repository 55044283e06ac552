"""The region generation network of Learnable Regions (arXiv 2311.16432, Sec. 3.2): RoI features of each
candidate box (pooled from a ViT's patch features) through 1x1 convolutions to one score per candidate.
It is trained per image (``guidance.region_proposer``); its last layer starts at zero, so every candidate
starts equally likely.

With ``candidates`` > 0 each of that many candidates also has a free logit of its own, beside the score
from its features. The feature score is one function of every anchor's boxes, and it could not rank each
anchor's sizes as that anchor's losses do: on eval-split edit tasks the region it chose had IoU 0.80
(recolour) and 0.74 (reshape) where the lowest-loss candidate had 0.86 and 0.80; with the free logits,
0.82 and 0.77 (docs/region_proposer.md)."""

from __future__ import annotations

import torch
from torch import nn

from ..guidance.regions import crop_boxes


def roi_features(features: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``features [1, D, h, w]`` pooled in each fractional box of ``boxes [n, 4]`` on a ``size x size``
    grid -> ``[n, D, size, size]`` (RoIAlign with one sample per bin, zeros outside the map)."""
    return crop_boxes(features, boxes, size, padding_mode="zeros")


class RegionGenerator(nn.Module):
    """``forward(features [1, D, h, w], boxes [n, 4]) -> logits [n]``."""

    def __init__(self, feature_dim: int, hidden: int = 64, roi_size: int = 4, candidates: int = 0):
        super().__init__()
        self.roi_size = roi_size
        self.convs = nn.Sequential(
            nn.Conv2d(feature_dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU()
        )
        # The box's own geometry (centre, log width, log height) joins the pooled features. No bias: a
        # softmax over candidates ignores a shift common to all of them.
        self.score = nn.Linear(hidden + 4, 1, bias=False)
        nn.init.zeros_(self.score.weight)
        self.offsets = nn.Parameter(torch.zeros(candidates))

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        pooled = self.convs(roi_features(features, boxes, self.roi_size)).mean((2, 3))
        size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-3)
        centre = (boxes[:, 2:] + boxes[:, :2]) / 2
        logits = self.score(torch.cat([pooled, centre, size.log()], 1)).squeeze(-1)
        if not len(self.offsets):
            return logits
        if len(self.offsets) != len(boxes):
            built, given = len(self.offsets), len(boxes)
            raise ValueError(f"region network built for {built} candidates, given {given} boxes")
        return logits + self.offsets
