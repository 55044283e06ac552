"""A ComfyUI GUIDER with multi-conditional classifier-free guidance (for SamplerCustomAdvanced).

The spatio-textual conditioning goes in the positive slot and the negative in the negative slot,
evaluated together exactly as the stock CFGGuider evaluates them and combined by ComfyUI's own CFG
at the spatial scale (so the MODEL's pre-/post-CFG and CFG-function patches apply as with the stock
guiders, and its attention masking sees the spatio-textual conditioning as the conditional batch
rows); SpaText's multi-scale form then adds ``global_correction`` with the global prompt's
prediction (``guidance/multi_conditional_cfg.py``). The global prompt is evaluated only when that
correction is not zero: in single-scale mode and for equal scales the guider is plain CFG.
"""

from __future__ import annotations

import comfy.samplers

from ..multi_conditional_cfg import global_correction
from .comfy_guider import host_cfg


class MultiConditionalCFGGuider(comfy.samplers.CFGGuider):
    """``global_scale`` (SpaText's s_global) for the global prompt, ``set_cfg``'s scale (s_full) for
    the spatio-textual conditioning; ``multi_scale`` False: the single-scale form at s_full."""

    def __init__(self, model_patcher, global_scale: float, multi_scale: bool = True):
        super().__init__(model_patcher)
        self.global_scale = global_scale
        self.multi_scale = multi_scale

    def set_conds(self, spatial, global_, negative):
        conds = {"positive": spatial, "negative": negative}
        if self.multi_scale:
            conds["global"] = global_
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options or {}
        names = ["positive", "negative"]
        if self.multi_scale and self.global_scale != self.cfg:
            names.append("global")
        outs = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds.get(n) for n in names], x, timestep, model_options
        )
        out, pair = host_cfg(self, outs[:2], x, timestep, model_options)
        if len(outs) == 2:
            return out
        return out + global_correction(pair[1], outs[2], self.global_scale, self.cfg)
