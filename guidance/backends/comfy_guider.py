"""A ComfyUI GUIDER with per-region classifier-free guidance (for SamplerCustomAdvanced).

Evaluates the prompt, the negative and one conditioning per region in one batched call; the prompt
and negative go through ComfyUI's own CFG (so the MODEL's pre-/post-CFG and CFG-function patches
apply as with the stock guiders) and the regions' term from ``region_guidance_term`` is added.
Backward guidance, if the MODEL carries it, runs before each evaluation through the MODEL's
wrapper.
"""

from __future__ import annotations

import comfy.samplers
import torch

from ..regional_cfg import region_guidance_term
from ..regions import resize_mask


def host_cfg(guider: comfy.samplers.CFGGuider, pair: list, x, timestep, model_options: dict):
    """``(CFG result, predictions)`` of the ``[positive, negative]`` predictions ``pair`` at
    ``guider.cfg`` through ComfyUI's own CFG, as the stock CFGGuider does it: the MODEL's pre-CFG
    functions (which may change the predictions, returned), CFG function and post-CFG functions apply."""
    cond, uncond = guider.conds.get("positive"), guider.conds.get("negative")
    for fn in model_options.get("sampler_pre_cfg_function", []):
        pair = fn({
            "conds": [cond, uncond], "conds_out": pair, "cond_scale": guider.cfg, "timestep": timestep,
            "input": x, "sigma": timestep, "model": guider.inner_model, "model_options": model_options,
        })  # fmt: skip
    out = comfy.samplers.cfg_function(
        guider.inner_model, pair[0], pair[1], guider.cfg, x, timestep, model_options, cond=cond, uncond=uncond
    )
    return out, pair


class RegionalCFGGuider(comfy.samplers.CFGGuider):
    """``region_conds``: one CONDITIONING per region; ``region_masks``: ``[H, W]`` masks (any size);
    ``scales``: one CFG scale per region."""

    def __init__(
        self, model_patcher, region_conds: list, region_masks: list[torch.Tensor], scales: list[float]
    ):
        super().__init__(model_patcher)
        if not len(region_conds) == len(region_masks) == len(scales):
            raise ValueError("need one conditioning, mask and scale per region")
        self.region_conds = region_conds
        self.region_masks = region_masks
        self.scales = scales
        self.region_names = [f"region_{i}" for i in range(len(region_conds))]

    def set_conds(self, positive, negative):
        conds = {"positive": positive, "negative": negative}
        conds.update(zip(self.region_names, self.region_conds, strict=True))
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options or {}
        names = ["positive", "negative", *self.region_names]
        outs = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds.get(n) for n in names], x, timestep, model_options
        )
        out, pair = host_cfg(self, outs[:2], x, timestep, model_options)
        if not self.region_names:
            return out
        masks = torch.stack([resize_mask(m.to(x.device), x.shape[-2:]) for m in self.region_masks])
        return out + region_guidance_term(pair[1], outs[2:], masks, self.scales)
