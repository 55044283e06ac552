"""The guided sampler: backward guidance plus per-region classifier-free guidance.

``RegionGuider`` gives a GUIDER for SamplerCustomAdvanced; ``RegionGuidedKSampler`` is the same
as one KSampler-like node. Each region's phrase is encoded on its own and adds CFG towards itself
inside its mask (``guidance/regional_cfg.py``), while backward guidance moves the latent in the
early steps (``nodes/region_guidance.py``). With a spatio-textual conditioning connected
(``spatial_positive``, e.g. from Spatio-Textual Encoder), SpaText's multi-conditional CFG takes the
place of the per-region CFG: ``global_scale`` for the prompt, ``cfg`` for the spatial condition
on top of it (``guidance/multi_conditional_cfg.py``).
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..guidance.backends.comfy_guider import RegionalCFGGuider
from ..guidance.backends.comfy_multi_cfg import MultiConditionalCFGGuider
from .region_guidance import guidance_inputs, make_guidance, placement_inputs


def _multi_conditional_inputs() -> list:
    """Trailing optional inputs (saved workflows keep their widget values): SpaText's guidance."""
    return [
        io.Conditioning.Input(
            "spatial_positive",
            optional=True,
            tooltip="A spatio-textual conditioning (Spatio-Textual Encoder's positive, with its MODEL as "
            "model and its global prompt as prompt): multi-conditional CFG then replaces the per-region CFG "
            "(region_cfg is unused): global_scale towards the prompt, cfg towards the spatial condition "
            "on top of it.",
        ),
        io.Float.Input(
            "global_scale",
            default=7.0,
            min=0.0,
            max=100.0,
            step=0.1,
            round=0.01,
            optional=True,
            tooltip="s_global of multi-conditional CFG (only with spatial_positive); equal to cfg: plain CFG "
            "on spatial_positive.",
        ),
    ]


def _inputs() -> list:
    return [
        *placement_inputs("The CLIP of the same checkpoint: encodes the prompt and the phrases."),
        io.Conditioning.Input("negative", tooltip="The negative conditioning (e.g. an empty prompt)."),
        io.Float.Input(
            "cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="CFG scale of the prompt."
        ),
        io.Float.Input(
            "region_cfg",
            default=1.0,
            min=0.0,
            max=100.0,
            step=0.1,
            round=0.01,
            tooltip="Extra CFG scale towards each region's phrase inside its region (times the region's "
            "weight); 0 = backward guidance only. Costs one more model evaluation per region and step.",
        ),
        *guidance_inputs(),
    ]


def build_guider(
    node: str, model, clip, regions, prompt, negative, cfg, region_cfg, spatial_positive=None,
    global_scale: float = 7.0, **settings,
):  # fmt: skip
    guided = make_guidance(node, model, clip, regions, prompt, **settings)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    if spatial_positive is not None:
        guider = MultiConditionalCFGGuider(guided, global_scale)
        guider.set_conds(spatial_positive, positive, negative)
        guider.set_cfg(cfg)
        return guider
    if region_cfg > 0:
        conds = [clip.encode_from_tokens_scheduled(clip.tokenize(r.phrase)) for r in regions]
        guider = RegionalCFGGuider(
            guided, conds, [r.mask for r in regions], [region_cfg * r.weight for r in regions]
        )
    else:
        guider = comfy.samplers.CFGGuider(guided)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


class RegionGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RegionGuider",
            display_name="Region Guider",
            category="spatial_control/guidance",
            description="A GUIDER for SamplerCustomAdvanced that puts each region's phrase in its region: "
            "backward guidance on the latent plus per-region classifier-free guidance.",
            inputs=[*_inputs(), *_multi_conditional_inputs()],
            outputs=[
                io.Guider.Output(
                    display_name="guider",
                    tooltip="To SamplerCustomAdvanced (with noise, sampler and sigmas).",
                )
            ],
        )

    @classmethod
    def execute(cls, model, clip, regions, prompt, negative, cfg, region_cfg, **settings) -> io.NodeOutput:
        return io.NodeOutput(
            build_guider("RegionGuider", model, clip, regions, prompt, negative, cfg, region_cfg, **settings)
        )


class RegionGuidedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RegionGuidedKSampler",
            display_name="Region-Guided KSampler",
            category="spatial_control/guidance",
            description="KSampler that puts each region's phrase in its region: backward guidance on the "
            "latent plus per-region classifier-free guidance.",
            inputs=[
                *_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (e.g. Empty Latent Image)."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the initial noise.",
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of sampling steps."),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="dpmpp_2m",
                    tooltip="The sampling algorithm (as in KSampler).",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="karras",
                    tooltip="How the noise levels are spaced (as in KSampler).",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="How much of the latent to replace: 1.0 for text-to-image.",
                ),
                *_multi_conditional_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The denoised latent; to VAE Decode.")],
        )

    @classmethod
    def execute(
        cls, model, clip, regions, prompt, negative, cfg, region_cfg, latent_image, seed, steps,
        sampler_name, scheduler, denoise, **settings,
    ) -> io.NodeOutput:  # fmt: skip
        if denoise <= 0:
            return io.NodeOutput(latent_image.copy())
        guider = build_guider(
            "RegionGuidedKSampler", model, clip, regions, prompt, negative, cfg, region_cfg, **settings
        )
        samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
        total = steps if denoise >= 1 else int(steps / denoise)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total)
        sigmas = sigmas[-(steps + 1) :].cpu()
        callback = latent_preview.prepare_callback(model, steps)
        out = guider.sample(
            noise,
            samples,
            comfy.samplers.sampler_object(sampler_name),
            sigmas,
            denoise_mask=latent_image.get("noise_mask"),
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        result = latent_image.copy()
        result["samples"] = out.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(result)
