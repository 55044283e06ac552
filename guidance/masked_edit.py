"""Masked denoising on the ``Denoiser`` protocol: regenerate a latent inside a mask and keep it outside
(SDEdit-style: noise the source to ``strength`` of the schedule, denoise with classifier-free guidance,
and at every step put the source, noised to the current level, back outside the mask, as ComfyUI's
SetLatentNoiseMask + KSampler does). One call edits a batch of masks of one source at once."""

from __future__ import annotations

import torch

from .latent_gradient import Denoiser


def masked_edit(
    denoiser: Denoiser,
    source: torch.Tensor,
    masks: torch.Tensor,
    cond,
    uncond,
    sigmas: torch.Tensor,
    cfg: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Latents ``[n, C, h, w]``: ``source [1, C, h, w]`` (model space) regenerated inside each of
    ``masks [n, 1, h, w]`` (soft masks are blended) along the descending ``sigmas`` (DDIM / Euler
    steps), starting from ``source + sigmas[0] * noise``; ``noise`` is ``[1 or n, C, h, w]``.
    ``cond`` / ``uncond`` are the denoiser's conds for one latent (reused for the batch)."""
    n = masks.shape[0]
    source = source.expand(n, -1, -1, -1)
    noise = noise.expand(n, -1, -1, -1)
    masks = masks.to(source)
    x = source + sigmas[0] * noise
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        s = sigma.reshape(1).expand(n)
        with torch.no_grad():
            denoised = denoiser.denoise(x, s, cond)
            if cfg != 1.0:
                unconditional = denoiser.denoise(x, s, uncond)
                denoised = unconditional + cfg * (denoised - unconditional)
        x = denoised + (x - denoised) * (nxt / sigma)
        x = masks * x + (1 - masks) * (source + nxt * noise)
    return x
