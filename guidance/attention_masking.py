"""Regional cross-attention masking: each region's tokens are attended to only inside its region.

The training-free way regional prompting is done in ComfyUI today (attention-couple packs,
DenseDiffusion, Kim et al. ICCV 2023, which modulates the same scores softly): in the early
sampling steps, the cross-attention scores of image positions outside a region towards that
region's tokens get ``log(coverage)`` added (``-inf`` in effect where the region does not reach,
``log(0.5)`` on a cell it half covers at a coarse layer), so the phrase's words only shape the
image inside it; inside, positions attend to the region's words, the prompt's other words and the
padding as before. No gradients, no extra model passes: the cost is that of a masked softmax.

Only the conditional branch's rows are masked (the unconditional prompt has no region tokens).
Written once for the pack (the SpatioTextualEncoder's training-free path is to reuse it); the
backends add :meth:`RegionAttentionMask.batch_bias` to the scores inside their cross-attention
(``backends/comfy.py``, ``backends/diffusers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention_store import COND, layer_grid
from .errors import ShortConditioningError
from .region_energies import RegionTarget
from .regions import check_aspect, resize_mask
from .schedule import in_window

# The score added where a region does not reach at all: exp(-30) ~ 1e-13, a hard mask, but finite
# so a row whose every token were masked (never the case with start and padding tokens) stays defined.
BLOCKED = -30.0


@dataclass(frozen=True, eq=False)
class RegionAttentionMask:
    """Mask the attention towards ``targets``' tokens outside their masks while the sampling step
    lies in ``[start_at, end_at)`` of the schedule."""

    targets: tuple[RegionTarget, ...]
    start_at: float = 0.0
    end_at: float = 0.3

    def __post_init__(self):
        if not self.targets:
            raise ValueError("attention masking needs at least one region")
        if not 0 <= self.start_at <= self.end_at <= 1:
            raise ValueError(f"need 0 <= start_at <= end_at <= 1, got {self.start_at}, {self.end_at}")

    def active(self, fraction: float | None) -> bool:
        return in_window(fraction, self.start_at, self.end_at)

    def scores_bias(self, positions: int, latent_hw: tuple[int, int], tokens: int) -> torch.Tensor:
        """``[positions, tokens]``: what to add to the attention scores of one conditional image at a
        layer with ``positions`` image positions (its grid found from ``latent_hw``)."""
        h, w, _ = layer_grid(latent_hw, positions)
        needed = 1 + max(max(t.tokens) for t in self.targets)
        if tokens < needed:
            raise ShortConditioningError(
                f"the conditioning being sampled has {tokens} tokens, but the region prompts it was set up "
                f"with need {needed}: connect this node's own positive output to the sampler (or to Region "
                "Backward Guidance's positive input)"
            )
        for target in self.targets:
            check_aspect(target.phrase, target.mask, latent_hw)
        device = self.targets[0].mask.device
        allowed = torch.ones(positions, tokens, device=device)
        region_tokens = torch.zeros(tokens, dtype=torch.bool, device=device)
        coverage = torch.zeros(positions, tokens, device=device)
        for target in self.targets:
            cols = list(target.tokens)
            cover = resize_mask(target.mask.to(device), (h, w)).flatten().clamp(0, 1)
            region_tokens[cols] = True
            # a token of two regions (overlapping phrases) may be attended to inside either
            coverage[:, cols] = torch.maximum(coverage[:, cols], cover[:, None])
        allowed = torch.where(region_tokens, coverage, allowed)
        return allowed.clamp_min(1e-30).log().clamp_min(BLOCKED)

    def batch_bias(
        self, positions: int, latent_hw: tuple[int, int], tokens: int, labels: torch.Tensor
    ) -> torch.Tensor:
        """``[batch, positions, tokens]`` for a batch whose rows are labelled COND/UNCOND
        (``labels`` ``[batch]``): the conditional rows masked, the others zero."""
        bias = self.scores_bias(positions, latent_hw, tokens)
        return bias[None] * (labels.to(bias.device) == COND).to(bias.dtype)[:, None, None]
