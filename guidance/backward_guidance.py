"""Region-wise backward guidance: move the latent down the gradient of a region energy.

ST-LDM (Song et al., arXiv:2403.10004) places an object by back-propagating a region-wise energy on
cross-attention to the latent during sampling, with no training, as layout guidance's backward
variant does (Chen et al., WACV 2024): repeated gradient steps on the latent, up to ``iterations``
per sampling step while the energy is above ``threshold``, in the early steps only (the layout is
decided there; later steps refine appearance).

The step is normalised: ``x <- x - strength * sigma * g / rms(g)`` per batch item, i.e. each step
moves the latent by ``strength`` noise standard deviations (RMS over its elements). Layout
guidance's rule ``x <- x - 30 * sigma^2 * g`` depends on the model's gradient scale: on the demo
model its first step moved the latent by several sigma (off the noise distribution) and later
steps almost not at all, as the attention softmax saturates; at equal cost the normalised step
placed 3x more objects (docs/region_guidance.md).

Moving the start (``start_regions``, after Mao et al., ACM MM 2023; ``start_transplant.py``): at the
first step, before any gradient step, the patch of starting noise on which each region's phrase
attends most is copied into the region's bounding box, so the gradient steps start from a layout
close to the wanted one. The attention that places the start is read from ``start_layers``: on
the demo model, the UNet encoder's layers (input and middle blocks) placed 0.025 more objects
than all layers did, at half a forward pass (docs/region_guidance.md). Only a start of pure noise
is moved (``start_is_noise``): a latent that already holds an image (img2img, a sampler
continuing another's steps) would have image content moved.

Start candidates (after InitNO, Guo et al., CVPR 2024, which optimises and re-samples the initial
noise against an attention score): given ``alternatives``, other starting latents of the same
images, the first guided step descends all of them together, as one batch, and keeps for each
image the one with the lowest energy. Which start the first steps move into place decides much of
the layout (docs/region_guidance.md).

Re-layout (``relayout_at``, ``relayout.py``): at the first step at or after that fraction of the
steps, in a run that started from noise, each region's object in the model's prediction is moved
and scaled into its region's bounding box (one forward pass, no gradient). The gradient steps
place objects roughly; the prediction at mid-sampling shows where each object landed and how
large, which the attention at the first steps does not (docs/region_guidance.md, seventh round).

``BackwardGuidance`` is a ``guide(denoiser, x, sigma, cond, sample_sigmas, alternatives=None,
start_is_noise=True)`` callable for any backend's latent-guidance hook. It holds only its settings:
no state survives from one call (or one run) to the next.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .attention_store import AttentionCaptured, AttentionStore, CrossAttentionLayer
from .latent_gradient import Denoiser, energy_gradient
from .region_energies import EnergyWeights, RegionTarget, region_energy
from .regions import check_aspect
from .relayout import object_box, region_box, relayout
from .schedule import in_window, is_step_at, step_fraction
from .start_transplant import latent_box, transplant


@dataclass(frozen=True, eq=False)
class BackwardGuidance:
    targets: tuple[RegionTarget, ...]
    layers: tuple[CrossAttentionLayer, ...]
    weights: EnergyWeights = EnergyWeights()
    text_tokens: tuple[int, ...] = ()
    strength: float = 0.2
    start_at: float = 0.0
    end_at: float = 0.1
    iterations: int = 3
    threshold: float = 0.2
    start_regions: tuple[torch.Tensor, ...] = ()  # per target, the region its start noise moves into
    start_layers: tuple[CrossAttentionLayer, ...] = ()  # whose attention places the start; () = layers
    relayout_at: float = 0.0  # fraction of the steps at which objects are moved into place; 0 = never
    relayout_regions: tuple[torch.Tensor, ...] = ()  # per target, the region its object is moved into

    def __post_init__(self):
        if not self.targets:
            raise ValueError("backward guidance needs at least one region")
        if not 0 <= self.start_at <= self.end_at <= 1:
            raise ValueError(f"need 0 <= start_at <= end_at <= 1, got {self.start_at}, {self.end_at}")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.start_regions and len(self.start_regions) != len(self.targets):
            raise ValueError(f"{len(self.start_regions)} start regions for {len(self.targets)} targets")
        if not 0 <= self.relayout_at < 1:
            raise ValueError(f"relayout_at must be in [0, 1), got {self.relayout_at}")
        if self.relayout_at > 0 and len(self.relayout_regions) != len(self.targets):
            count = len(self.relayout_regions)
            raise ValueError(f"{count} re-layout regions for {len(self.targets)} targets")

    def active(self, fraction: float | None) -> bool:
        """Whether a step at ``fraction`` of the schedule (``step_fraction``) is guided."""
        return in_window(fraction, self.start_at, self.end_at)

    def energy(self, store: AttentionStore, denoised: torch.Tensor | None) -> torch.Tensor:
        return region_energy(store.maps(), self.targets, self.weights, self.text_tokens)

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond,
        sample_sigmas: torch.Tensor | None = None,
        alternatives: torch.Tensor | None = None,
        start_is_noise: bool = True,
    ) -> torch.Tensor | None:
        """The moved latent (None outside the step range). ``alternatives`` ``[k, *x.shape]``: other
        starts for the same images; the best of ``x`` and them is returned for each image.
        ``start_is_noise``: the schedule starts at the model's maximum noise level, so the first
        step's latent is noise that ``start_regions`` may rearrange."""
        fraction = step_fraction(sigma, sample_sigmas)
        at = self.relayout_at
        relaid = start_is_noise and at > 0 and is_step_at(sigma, sample_sigmas, at)
        if not (self.active(fraction) or relaid):
            return None
        for target in self.targets:
            check_aspect(target.phrase, target.mask, tuple(x.shape[-2:]))
        if relaid:
            x = self.relaid(denoiser, x.float(), sigma.reshape(-1), cond)
            if not self.active(fraction):
                return x
        move_start = fraction == 0 and start_is_noise and bool(self.start_regions)
        if alternatives is None or len(alternatives) == 0:
            x, sigma = x.float(), sigma.reshape(-1)
            if move_start:
                x = self.moved_start(denoiser, x, sigma, cond)
            return self.descend(denoiser, x, sigma, cond)[0]
        if tuple(alternatives.shape[1:]) != tuple(x.shape):
            shapes = f"{tuple(alternatives.shape)} for a latent of {tuple(x.shape)}"
            raise ValueError(f"alternatives must be [k, *latent shape], got {shapes}")
        candidates = torch.cat([x[None], alternatives.to(x)]).float()
        count, batch = candidates.shape[:2]
        sigma = sigma.reshape(-1).to(x.device)
        sigma = sigma.repeat(count) if sigma.numel() == batch else sigma[:1].expand(count * batch)
        starts = candidates.flatten(0, 1)
        if move_start:
            starts = self.moved_start(denoiser, starts, sigma, cond)
        moved, energies = self.descend(denoiser, starts, sigma, cond)
        best = energies.reshape(count, batch).argmin(0)
        return moved.reshape(count, batch, *x.shape[1:])[best, torch.arange(batch)]

    def moved_start(self, denoiser: Denoiser, x, sigma, cond) -> torch.Tensor:
        """``x`` with each region's most attended window of noise copied into the region (one
        forward pass, no gradient)."""
        size = tuple(x.shape[-2:])
        store = AttentionStore(self.start_layers or self.layers, stop_when_complete=True)
        with torch.no_grad(), contextlib.suppress(AttentionCaptured):
            denoiser.denoise(x, sigma, cond, store)
        maps = store.maps(size)
        attention = torch.stack([maps[:, list(t.tokens)].mean(1) for t in self.targets], 1)
        boxes = [latent_box(region, size) for region in self.start_regions]
        return torch.stack(
            [transplant(item, per_region, boxes) for item, per_region in zip(x, attention, strict=True)]
        )

    def relaid(self, denoiser: Denoiser, x, sigma, cond) -> torch.Tensor:
        """``x`` with each region's object, in the model's prediction, moved and scaled into the
        region (``relayout``); the step's noise, ``x`` minus the prediction, is kept."""
        size = tuple(x.shape[-2:])
        store = AttentionStore(self.layers)
        with torch.no_grad():
            prediction = denoiser.denoise(x, sigma, cond, store).float()
        maps = store.maps(size)
        if maps.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"re-layout saw attention for {maps.shape[0]} of {x.shape[0]} images: the host split the "
                "batch to fit in memory; use a smaller batch"
            )
        boxes = [region_box(region, size) for region in self.relayout_regions]
        moved = []
        for item, predicted, item_maps in zip(x, prediction, maps, strict=True):
            objects = [object_box(predicted, item_maps[list(t.tokens)].mean(0)) for t in self.targets]
            moved.append(item - predicted + relayout(predicted, objects, boxes))
        return torch.stack(moved)

    def descend(self, denoiser: Denoiser, x, sigma, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``iterations`` normalised steps down the energy; ``(moved x, energy per item at the
        last gradient evaluation)``."""
        step = self.strength * sigma.reshape(-1, 1, 1, 1).to(x.device, torch.float32)
        for _ in range(self.iterations):
            energies, grad = self.gradient(denoiser, x, sigma, cond)
            unsatisfied = (energies >= self.threshold).reshape(-1, 1, 1, 1).to(x.device)
            if not unsatisfied.any():
                break
            rms = grad.pow(2).mean((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
            x = x - unsatisfied * step * grad / rms
        return x, energies.detach()

    def gradient(self, denoiser: Denoiser, x, sigma, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(energy per batch item, dE/dx)`` at ``x``."""
        energies, grad, _ = energy_gradient(
            denoiser, x, sigma, cond, self.layers, self.energy, needs_prediction=False
        )
        if energies.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"backward guidance saw attention for {energies.shape[0]} of {x.shape[0]} images: the "
                "host split the batch to fit in memory; use a smaller batch or fewer start candidates"
            )
        return energies, grad
