"""Per-region classifier-free guidance: each region adds guidance towards its own phrase, inside it.

A masked form of composable classifier-free guidance (Liu et al., "Compositional Visual Generation
with Composable Diffusion Models", ECCV 2022; SpaText's multi-conditional guidance likewise has
one scale per condition):

    D = D_uncond + cfg * (D_prompt - D_uncond) + sum_r scale_r * m_r * (D_r - D_uncond)

where ``D_r`` is the prediction conditioned on region r's phrase alone and ``m_r`` its mask at the
latent's size. The combination is linear, so it holds for x0- and noise-predictions alike; this
module gives the sum over regions, which a host adds to its own CFG result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def region_guidance_term(
    uncond: torch.Tensor,
    region_predictions: Sequence[torch.Tensor],
    masks: torch.Tensor,
    scales: Sequence[float],
) -> torch.Tensor:
    """``sum_r scale_r * m_r * (D_r - D_uncond)``; ``masks`` ``[regions, h, w]`` in [0, 1] at the
    predictions' spatial size."""
    if not len(region_predictions) == len(masks) == len(scales):
        raise ValueError("need one prediction, mask and scale per region")
    term = torch.zeros_like(uncond)
    for prediction, mask, scale in zip(region_predictions, masks, scales, strict=True):
        term = term + scale * mask.to(uncond) * (prediction - uncond)
    return term
