"""Gradients of an attention energy with respect to the latent, for any backend's denoiser.

Hosts run models under ``torch.inference_mode`` / ``no_grad`` (ComfyUI executes every prompt that
way); ``gradients_enabled`` re-enables autograd locally and ``energy_gradient`` works on a normal
(non-inference) copy of the latent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import contextmanager
from typing import Protocol

import torch

from .attention_store import AttentionCaptured, AttentionStore, CrossAttentionLayer


class Denoiser(Protocol):
    """The one protocol every method is written against.

    ``denoise`` returns the x0-prediction ``D(x; sigma, cond)`` for a latent in k-diffusion space
    (``x = x0 + sigma * noise``), differentiable with respect to ``x``; if ``store`` is given, the
    selected cross-attention layers record their maps into it during the call. ``cond`` is opaque
    to the methods: each backend documents what it takes. A batch of latents that is a whole
    multiple of the cond's batch reuses the conds in order (tiled, as ComfyUI does).
    """

    def denoise(
        self, x: torch.Tensor, sigma: torch.Tensor, cond, store: AttentionStore | None = None
    ) -> torch.Tensor: ...


@contextmanager
def gradients_enabled():
    with torch.inference_mode(False), torch.enable_grad():
        yield


def energy_gradient(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond,
    layers: Collection[CrossAttentionLayer] | None,
    energy: Callable[[AttentionStore, torch.Tensor | None], torch.Tensor],
    needs_prediction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One differentiable forward: returns ``(energy, dE/dx, denoised)``, all detached.

    ``energy(store, denoised)`` maps the captured attention (and, if it needs it, the prediction)
    to a scalar or to one value per batch item; the gradient is that of their sum, so each item's
    gradient is its own. With ``needs_prediction=False`` (an energy of the maps alone, on an explicit
    list of ``layers``) the forward stops after the last of ``layers`` and ``denoised`` is None.
    """
    if not needs_prediction and layers is None:
        raise ValueError("an energy without the prediction needs an explicit list of layers")
    with gradients_enabled():
        x = x.detach().clone().requires_grad_(True)
        sigma = sigma.detach().clone()
        store = AttentionStore(layers, stop_when_complete=not needs_prediction)
        try:
            denoised = denoiser.denoise(x, sigma, cond, store)
        except AttentionCaptured:
            denoised = None
        value = energy(store, denoised)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach(), None if denoised is None else denoised.detach()
