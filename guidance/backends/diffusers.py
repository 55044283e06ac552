"""diffusers backend: the same capture and differentiable denoiser for ``UNet2DConditionModel``.

Layers get ComfyUI's names (``input_4.0``, ``middle_0.0``, ``output_3.0``) so that a method and
its layer choice mean the same thing on both hosts. Sigmas follow k-diffusion / ComfyUI: the
latent is ``x = x0 + sigma * noise`` and the UNet sees ``x / sqrt(sigma^2 + 1)`` at the
timestep whose discrete sigma is nearest.
"""

from __future__ import annotations

import torch

from ..attention_masking import RegionAttentionMask
from ..attention_store import COND, AttentionStore, CrossAttentionLayer, attend, attention_probabilities


def discrete_sigmas(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000, schedule: str = "scaled_linear"
) -> torch.Tensor:
    """The ascending sigmas of a discrete DDPM schedule (SD's is ``scaled_linear``; ComfyUI calls it
    ``linear``)."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta schedule {schedule!r}")
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def sigma_to_timestep(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Timestep of the nearest discrete sigma in log space, as ComfyUI's ``ModelSamplingDiscrete``
    (k-diffusion interpolates instead; matching ComfyUI keeps both backends equal)."""
    dists = sigma.float().log().reshape(1, -1) - sigmas.to(sigma.device).log().reshape(-1, 1)
    return dists.abs().argmin(0).reshape(sigma.shape).float()


def diffusers_layer_keys(unet) -> dict[str, tuple[str, int, int]]:
    """Map each ``...attn2`` processor name of a UNet2DConditionModel to ComfyUI's patch key."""
    per_level = unet.config.layers_per_block
    levels = len(unet.config.block_out_channels)
    per_level = [per_level] * levels if isinstance(per_level, int) else list(per_level)
    keys: dict[str, tuple[str, int, int]] = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        parts = name.split(".")
        index = int(parts[parts.index("transformer_blocks") + 1])
        if parts[0] == "mid_block":
            keys[name] = ("middle", 0, index)
            continue
        level, slot = int(parts[1]), int(parts[3])
        if parts[0] == "down_blocks":
            keys[name] = ("input", 1 + sum(r + 1 for r in per_level[:level]) + slot, index)
        else:
            up_levels = per_level[::-1]
            keys[name] = ("output", sum(r + 1 for r in up_levels[:level]) + slot, index)
    return keys


class RecordingCrossAttention:
    """Attention processor for cross-attention layers: plain attention that also records maps into
    the ``attention_store`` passed through ``cross_attention_kwargs`` and, given a ``masking``
    there, masks region tokens outside their regions (every row is a conditional one here). The
    store gets the unmasked maps, as in the ComfyUI backend."""

    def __init__(self, patch_key: tuple[str, int, int]):
        self.patch_key = patch_key

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        attention_store: AttentionStore | None = None,
        latent_hw: tuple[int, int] | None = None,
        masking: RegionAttentionMask | None = None,
    ):
        if attention_mask is not None or attn.norm_cross or attn.residual_connection or attn.spatial_norm:
            raise NotImplementedError("RecordingCrossAttention supports SD-style cross-attention layers only")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        probs = attention_probabilities(q, k, attn.heads)
        if attention_store is not None and attention_store.wants(self.patch_key):
            attention_store.record(self.patch_key, probs, attn.heads, latent_hw, queries=q)
        if masking is not None:
            labels = torch.full((q.shape[0],), COND)
            bias = masking.batch_bias(q.shape[1], latent_hw, k.shape[1], labels).to(q.device)
            probs = attention_probabilities(q, k, attn.heads, bias)
        out = attend(probs, v, attn.heads).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class DiffusersDenoiser:
    """Differentiable x0-prediction of a diffusers ``UNet2DConditionModel``.

    ``cond`` is the text encoder's hidden states ``[batch, tokens, dim]``. Installs recording
    processors on the UNet's cross-attention layers (other processors are left as they are).
    """

    def __init__(
        self,
        unet,
        sigmas: torch.Tensor | None = None,
        prediction_type: str = "epsilon",
        masking: RegionAttentionMask | None = None,
    ):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.unet = unet
        self.masking = masking  # masks every call: this denoiser knows no sampling schedule
        self.sigmas = discrete_sigmas() if sigmas is None else sigmas
        self.prediction_type = prediction_type
        self.layer_keys = diffusers_layer_keys(unet)
        processors = dict(unet.attn_processors)
        for name, key in self.layer_keys.items():
            processors[name] = RecordingCrossAttention(key)
        unet.set_attn_processor(processors)

    @property
    def layers(self) -> list[CrossAttentionLayer]:
        downscales = self._downscales()
        return [CrossAttentionLayer(*key, downscales[key]) for key in self.layer_keys.values()]

    def _downscales(self) -> dict[tuple[str, int, int], int]:
        levels = len(self.unet.config.block_out_channels)
        out = {}
        for name, key in self.layer_keys.items():
            parts = name.split(".")
            if parts[0] == "mid_block":
                out[key] = 2 ** (levels - 1)
            elif parts[0] == "down_blocks":
                out[key] = 2 ** int(parts[1])
            else:
                out[key] = 2 ** (levels - 1 - int(parts[1]))
        return out

    def denoise(self, x, sigma, cond, store: AttentionStore | None = None):
        sigma = sigma.to(x.device, torch.float32).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        s = sigma.reshape(-1, 1, 1, 1)
        t = sigma_to_timestep(sigma, self.sigmas)
        if cond.shape[0] != x.shape[0]:
            if x.shape[0] % cond.shape[0]:
                raise ValueError(f"a cond batch of {cond.shape[0]} cannot be tiled to {x.shape[0]} latents")
            cond = cond.repeat(x.shape[0] // cond.shape[0], *(1,) * (cond.ndim - 1))
        dtype = self.unet.dtype
        out = self.unet(
            (x / (s**2 + 1) ** 0.5).to(dtype),
            t,
            encoder_hidden_states=cond.to(dtype),
            cross_attention_kwargs={
                "attention_store": store,
                "latent_hw": tuple(x.shape[-2:]),
                "masking": self.masking,
            },
        ).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        return x / (s**2 + 1) - out * s / (s**2 + 1) ** 0.5
