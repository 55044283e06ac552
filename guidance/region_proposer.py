"""Region proposal for text-driven editing: Learnable Regions (Lin et al., arXiv 2311.16432), with a
gradient path from the losses to the region network.

Anchor points come from a self-supervised ViT's [CLS] attention (``anchors.py``); around each anchor,
square candidate boxes of several sizes. The user's model edits every candidate once (``edit``: masked
denoising, so any checkpoint works) and each edit is pasted into the image inside its box. The region
generation network (``models.region_generator``) scores the candidates from the ViT's RoI features and is
trained on this image alone: a straight-through Gumbel-softmax picks one candidate per iteration, the
composite is the probability-weighted mix of the pasted edits (exactly the picked one in the forward
pass), and the losses on it reach the network's parameters through the mixture weights. In the released
code the choice is made outside the graph, so the loss never reaches the network.

Losses, computed by an image-text scorer (the pack's ShapeCLIP, or a real CLIP) on a crop around the box:
- guidance: the edited crop should match the target text;
- direction: the crop's change should point from the source text to the target text;
- relevance: the crop before the edit should show the source text (the region is about what the
  instruction names; our addition, as the edit of a region that holds nothing of the source can look
  as good as the right one);
- structure: the image should change as little as the edit allows (mean absolute change).
The chosen box is finally tightened to where its edit changed the image.

The network does not learn from these losses one candidate at a time but from their consensus (our
addition): a candidate's loss is one minus its mean overlap with the candidates, each weighted by a
softmax of its own loss. The scorer is tolerant to partial views, so a lone region that caught a
piece of the object (an edit that added a bump to its edge) can score a little better than the whole
object, which many anchors' boxes agree on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.nn import functional as F

from .edit_text import EditRequest
from .regions import crop_boxes, mask_box


class BudgetError(ValueError):
    """The time budget ran out before the region network's first step (the trial edits took it all)."""


class ImageTextScorer(Protocol):
    """CLIP-like: unit-norm features of images ``[n, 3, H, W]`` in [0, 1] and of texts, comparable by dot
    product; ``encode_image`` must be differentiable."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class ProposerSettings:
    anchors: int = 9
    anchor_map: str = "cls"  # "cls": the [CLS] attention (the paper); "degree": patch-feature degree (LOST)
    box_sizes: tuple[float, ...] = (0.16, 0.24, 0.32, 0.42, 0.54, 0.7)  # box side / image side
    iterations: int = 100
    lr: float = 5e-3  # the paper's Adam rate
    temperature: float = 1.0
    # Weights measured on train-split edit tasks (docs/region_proposer.md): the relevance term ranks
    # regions best; guidance and direction add a little for recolouring and cost more beyond 0.1. The
    # structure term is off: it rewards an edit that changed only part of the object (a region is
    # where its edit changed the image), which cost region IoU at every weight tried.
    guidance_weight: float = 0.1
    direction_weight: float = 0.1
    relevance_weight: float = 1.0
    structure_weight: float = 0.0
    crop_margin: float = 0.15  # of the box side, each way, for the scorer's crops
    edit_growth: float = 1.6  # side of the edited box / side of the candidate box
    change_threshold: float = 0.15  # max channel change (0-1) that counts as edited, for the tight box
    background_text: str = ""  # what "remove" asks the region to show
    # Below this cosine between the chosen region (before the edit) and the source text, the image is
    # taken to hold nothing the text names. It depends on the scorer: with the pack's ShapeCLIP every
    # named object scored >= 0.63 and a third of absent ones < 0.6 (docs/region_proposer.md).
    min_relevance: float = 0.6
    # The consensus's softmax temperature, in standard deviations of the losses over the candidates
    # (so it does not depend on the scorer's scale); 0: each candidate's own loss. On 192 train-split
    # tasks the chosen region's IoU rose from 0.85 / 0.74 / 0.81 (recolour / reshape / remove) to
    # 0.89 / 0.83 / 0.85 at 0.25 (about the same at 0.5, less beyond), and no task fell by more than
    # 0.3 against the lowest loss (3 at 0.5: a box over two objects; docs/region_proposer.md).
    consensus_temperature: float = 0.25


@dataclass
class Proposal:
    box: tuple[float, float, float, float]  # the chosen region, fractional (x0, y0, x1, y1)
    candidate: int  # index of the chosen candidate
    candidates: torch.Tensor  # [n, 4] each candidate's region (fractional boxes)
    probabilities: torch.Tensor  # [anchors, sizes] the network's final distribution per anchor
    anchors: torch.Tensor  # [k, 2] (x, y) fractions
    edited: torch.Tensor  # [3, H, W] the chosen candidate's composite
    losses: dict[str, torch.Tensor]  # per candidate, [n] each; "consensus": what the network learned from
    history: list[float] = field(default_factory=list)  # loss per iteration
    stopped: str = "iterations"
    relevance: float = 1.0  # cosine of the chosen region (before the edit) with the source text
    found: bool = True  # relevance reached settings.min_relevance (always, without a source text)


def candidate_boxes(points: torch.Tensor, sizes: tuple[float, ...]) -> torch.Tensor:
    """``[k * len(sizes), 4]``: a square of each side fraction centred on each point ``[k, 2]``, shifted
    inside the image (anchor-major order)."""
    side = torch.tensor(sizes, dtype=torch.float32).clamp(max=1.0)
    centre = points.float()[:, None, :].expand(-1, len(sizes), -1)
    half = side[None, :, None].expand_as(centre) / 2
    centre = torch.minimum(torch.maximum(centre, half), 1 - half)
    return torch.cat([centre - half, centre + half], -1).reshape(-1, 4)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[n, 1, height, width]`` coverage of each fractional box (anti-aliased at its edges)."""
    ys = torch.arange(height, dtype=torch.float32)
    xs = torch.arange(width, dtype=torch.float32)
    b = boxes.float()

    def cover(lo, hi, grid, n):
        return (torch.minimum(grid + 1, hi[:, None] * n) - torch.maximum(grid, lo[:, None] * n)).clamp(0, 1)

    cx = cover(b[:, 0], b[:, 2], xs, width)
    cy = cover(b[:, 1], b[:, 3], ys, height)
    return (cy[:, :, None] * cx[:, None, :])[:, None]


def expand_boxes(boxes: torch.Tensor, margin: float) -> torch.Tensor:
    size = boxes[:, 2:] - boxes[:, :2]
    return torch.cat([boxes[:, :2] - margin * size, boxes[:, 2:] + margin * size], 1).clamp(0, 1)


def edit_losses(
    scorer: ImageTextScorer,
    composites: torch.Tensor,
    image: torch.Tensor,
    crops: torch.Tensor,
    request: EditRequest,
    settings: ProposerSettings,
    crop_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Each loss per composite ``[n, 3, H, W]`` of ``image [1, 3, H, W]`` with its crop box ``[n, 4]``.
    A term without its text is zero: guidance and direction without a target (a removal, unless
    ``background_text`` says what should show), direction and relevance without a source."""
    target = request.target or settings.background_text
    zeros = torch.zeros(len(composites), device=composites.device)
    texts = scorer.encode_text([target or request.source, request.source or target])
    after = scorer.encode_image(crop_boxes(composites, crops, crop_size))
    before = scorer.encode_image(crop_boxes(image, crops, crop_size))
    change = F.normalize(after - before, dim=-1, eps=1e-6)
    direction = F.normalize(texts[0] - texts[1], dim=-1, eps=1e-6)
    return {
        "guidance": 1 - after @ texts[0] if target else zeros,
        "direction": 1 - change @ direction if target and request.source else zeros,
        "relevance": 1 - before @ texts[1] if request.source else zeros,
        "structure": (composites - image).abs().mean((1, 2, 3)),
    }


def total_loss(losses: dict[str, torch.Tensor], settings: ProposerSettings) -> torch.Tensor:
    return (
        settings.guidance_weight * losses["guidance"]
        + settings.direction_weight * losses["direction"]
        + settings.relevance_weight * losses["relevance"]
        + settings.structure_weight * losses["structure"]
    )


def consensus_losses(regions: torch.Tensor, losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[n]``: one minus each region's mean IoU with the ``regions [n, 4]``, each weighted by the softmax
    of its standardised loss over ``temperature``; ``losses`` themselves when ``temperature`` is 0."""
    if temperature <= 0:
        return losses
    spread = losses.std() if len(losses) > 1 else losses.new_zeros(())
    standard = (losses - losses.mean()) / spread.clamp_min(1e-8)
    weights = F.softmax(-standard / temperature, 0)
    return 1 - box_overlaps(regions, regions) @ weights


def box_overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` IoU of fractional boxes (0 where both are empty)."""
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def changed_box(edited: torch.Tensor, image: torch.Tensor, box, threshold: float):
    """The tight fractional box of the pixels inside ``box`` whose value changed by more than
    ``threshold`` (in any channel), or None if none did."""
    h, w = image.shape[-2:]
    inside = box_masks(torch.tensor([box]), h, w)[0, 0] > 0.5
    return mask_box((((edited - image).abs().amax(0) > threshold) & inside).float())


def size_distribution(logits: torch.Tensor, anchors: int, temperature: float) -> torch.Tensor:
    """``[anchors, sizes]``: per anchor, the softmax of its candidates' scores (anchor-major order)."""
    return F.softmax(logits.reshape(anchors, -1) / temperature, -1)


def edit_candidates(
    edit: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    boxes: torch.Tensor,
    settings: ProposerSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(regions [n, 4], composites [n, 3, H, W])``: each candidate box grown by ``edit_growth`` and
    edited once; its region is the tight box of what that edit changed (the candidate itself where it
    changed nothing), so a candidate that cut its object off (anchors sit anywhere on an object)
    still ends on the whole object, and the composite is the image with the edit pasted inside the
    grown box."""
    h, w = image.shape[-2:]
    grown = expand_boxes(boxes, (settings.edit_growth - 1) / 2)
    masks = box_masks(grown, h, w)
    composites = masks * edit(masks).float() + (1 - masks) * image
    regions = []
    for box, area, composite in zip(boxes, grown, composites, strict=True):
        tight = changed_box(composite, image[0], tuple(area.tolist()), settings.change_threshold)
        regions.append(tight or tuple(box.tolist()))
    return torch.tensor(regions, dtype=torch.float32), composites


def propose_region(
    image: torch.Tensor,
    points: torch.Tensor,
    features: torch.Tensor,
    edit: Callable[[torch.Tensor], torch.Tensor],
    scorer: ImageTextScorer,
    generator: torch.nn.Module,
    request: EditRequest,
    settings: ProposerSettings,
    budget_seconds: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Proposal:
    """The region to edit in ``image [1, 3, H, W]`` (in [0, 1]).

    ``points [k, 2]``: anchors; ``features [1, D, h, w]``: the ViT's patch features; ``edit(masks)``: the
    editor's output images ``[n, 3, H, W]`` for masks ``[n, 1, H, W]``; ``generator``: a fresh
    ``RegionGenerator`` (seeded by the caller). ``on_step(done, total)`` is called after the edits and
    after each iteration.
    """
    start = time.monotonic()
    candidates = candidate_boxes(points, settings.box_sizes)
    regions, composites = edit_candidates(edit, image, candidates, settings)
    total_steps = settings.iterations + 1
    if on_step is not None:
        on_step(1, total_steps)
    with torch.no_grad():
        crops = expand_boxes(regions, settings.crop_margin)
        losses = edit_losses(scorer, composites, image, crops, request, settings)
    weighted = consensus_losses(regions, total_loss(losses, settings), settings.consensus_temperature)
    weighted = weighted.reshape(len(points), -1)
    optimizer = torch.optim.Adam(generator.parameters(), lr=settings.lr)
    history, stopped = [], "iterations"
    for i in range(settings.iterations):
        if budget_seconds is not None and time.monotonic() - start > budget_seconds:
            if i == 0:
                raise BudgetError(
                    f"{budget_seconds:g} s were spent before the region network's first step (the trial "
                    f"edits took {time.monotonic() - start:.0f} s); raise the budget or lower edit_steps"
                )
            stopped = "budget"
            break
        # Per anchor, a distribution over its box sizes; the loss is its expectation, whose gradient
        # with respect to the scores is exact, as every candidate's loss is known.
        probabilities = size_distribution(generator(features, regions), len(points), settings.temperature)
        loss = (probabilities * weighted).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if on_step is not None:
            on_step(i + 2, total_steps)
    with torch.no_grad():
        probabilities = size_distribution(generator(features, regions), len(points), settings.temperature)
    # Each anchor's most likely box; the anchors are then ranked by the loss, as in the paper.
    picks = torch.arange(len(points)) * probabilities.shape[1] + probabilities.argmax(1)
    chosen = int(picks[weighted.flatten()[picks].argmin()])
    box = tuple(float(v) for v in regions[chosen])
    losses["consensus"] = weighted.flatten()
    relevance = 1 - float(losses["relevance"][chosen])
    found = not request.source or relevance >= settings.min_relevance
    return Proposal(
        box,
        chosen,
        regions,
        probabilities,
        points,
        composites[chosen],
        losses,
        history,
        stopped,
        relevance,
        found,
    )
