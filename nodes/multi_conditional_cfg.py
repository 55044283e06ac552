"""MultiConditionalCFGGuider: SpaText's multi-conditional classifier-free guidance as a GUIDER.

One scale for the global prompt and one for the spatio-textual conditioning (the paper's
multi-scale inference), or the single-scale form to compare with; equal scales are plain CFG.
The maths is in ``guidance/multi_conditional_cfg.py``, the GUIDER in
``guidance/backends/comfy_multi_cfg.py``.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..guidance.backends.comfy_multi_cfg import MultiConditionalCFGGuider as Guider

MODES = ["multi-scale", "single-scale"]


def _scale(name: str, tooltip: str):
    return io.Float.Input(name, default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tooltip)


class MultiConditionalCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MultiConditionalCFGGuider",
            display_name="Multi-Conditional CFG Guider",
            category="spatial_control/conditioning",
            description="A GUIDER for SamplerCustomAdvanced with SpaText's multi-conditional "
            "classifier-free guidance: the global prompt and the spatio-textual conditioning each get "
            "their own scale. Equal scales give plain CFG on the spatio-textual conditioning.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="Spatio-Textual Encoder's MODEL (its attention masking keeps each region's "
                    "text in its region).",
                ),
                io.Conditioning.Input(
                    "spatial_positive",
                    tooltip="Spatio-Textual Encoder's positive: the global prompt with the region texts.",
                ),
                io.Conditioning.Input(
                    "global_positive",
                    tooltip="Spatio-Textual Encoder's global_positive: the global prompt alone (unused in "
                    "single-scale mode).",
                ),
                io.Conditioning.Input(
                    "negative", tooltip="The negative conditioning (e.g. an empty prompt)."
                ),
                _scale(
                    "global_scale",
                    "s_global: guidance towards the global prompt, from the negative (multi-scale only).",
                ),
                _scale(
                    "spatial_scale",
                    "s_full: guidance towards the region texts on top of the global prompt; in "
                    "single-scale mode the one CFG scale, from the negative to the spatio-textual "
                    "conditioning.",
                ),
                io.Combo.Input(
                    "mode",
                    options=MODES,
                    default=MODES[0],
                    tooltip="multi-scale: e_neg + s_global (e_global - e_neg) + s_full (e_spatial - "
                    "e_global), three model evaluations per step (two when the scales are equal). "
                    "single-scale: e_neg + s_full (e_spatial - e_neg), i.e. plain CFG, two evaluations.",
                ),
            ],
            outputs=[
                io.Guider.Output(
                    display_name="guider",
                    tooltip="To SamplerCustomAdvanced (with noise, sampler and sigmas).",
                )
            ],
        )

    @classmethod
    def execute(
        cls, model, spatial_positive, global_positive, negative, global_scale, spatial_scale, mode
    ) -> io.NodeOutput:
        guider = Guider(model, global_scale, multi_scale=mode == "multi-scale")
        guider.set_conds(spatial_positive, global_positive, negative)
        guider.set_cfg(spatial_scale)
        return io.NodeOutput(guider)
