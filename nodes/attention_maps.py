"""CrossAttentionMaps: where each phrase of a prompt attends in an image, as masks and heatmaps.

A probe of the pack's attention capture: noise the latent to a chosen level, run one forward of
the MODEL with the prompt and average the cross-attention of each phrase's tokens over the chosen
layers (the maps that backward guidance and grounding optimise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..guidance.attention_store import LAYER_PRESETS, select_layers
from ..guidance.backends.comfy import cross_attention_layers, locate_phrases, probe_attention
from ..guidance.errors import PhraseNotFoundError, UnknownTokenizerError, UnsupportedModelError
from .errors import blame_input
from .phrases import parse_phrases
from .previews import heatmap

NODE = "CrossAttentionMaps"


class CrossAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Cross-Attention Maps",
            category="spatial_control/inspect",
            description="Shows where each phrase of the prompt attends in a latent image: one forward pass "
            "of the model at the chosen noise level, cross-attention of the phrase's tokens averaged over "
            "the chosen layers.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x or SDXL UNet)."),
                io.Clip.Input(
                    "clip",
                    tooltip="The CLIP of the same checkpoint: encodes the prompt and locates the phrases.",
                ),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a red circle and a blue square",
                    tooltip="The prompt the image is conditioned on; every phrase must occur in it.",
                ),
                io.String.Input(
                    "phrases",
                    multiline=True,
                    default="red circle\nblue square",
                    tooltip="One phrase per line (or separated by commas); one map per phrase.",
                ),
                io.Latent.Input(
                    "latent", tooltip="The image to probe, as a latent (VAE Encode or a sampler's output)."
                ),
                io.Float.Input(
                    "noise_level",
                    default=0.5,
                    min=0.02,
                    max=1.0,
                    step=0.01,
                    tooltip="How far along the noise schedule to probe: 1.0 = pure noise, small = clean.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise added to the latent.",
                ),
                io.Combo.Input(
                    "layers",
                    options=list(LAYER_PRESETS),
                    default="coarse",
                    tooltip="Which cross-attention layers to average: 'coarse' = mid block and the "
                    "decoder's coarsest levels (layout guidance's choice).",
                ),
            ],
            outputs=[
                io.Mask.Output(
                    display_name="maps",
                    tooltip="One map per latent and phrase (latent-major), scaled to [0, 1].",
                ),
                io.Image.Output(display_name="heatmaps", tooltip="The maps as colour heatmaps."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, prompt, phrases, latent, noise_level, seed, layers) -> io.NodeOutput:
        with blame_input(NODE, "phrases", ValueError):
            phrase_list = parse_phrases(phrases)
        with blame_input(NODE, "model", UnsupportedModelError):
            all_layers = cross_attention_layers(model)
        with blame_input(NODE, "layers", ValueError):
            chosen = select_layers(all_layers, layers)
        with (
            blame_input(NODE, "clip", UnknownTokenizerError),
            blame_input(NODE, "phrases", PhraseNotFoundError),
        ):
            positions = locate_phrases(clip, prompt, phrase_list, first_of_several=True)

        samples = latent["samples"]
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        # [batch, tokens, h, w]
        maps = probe_attention(model, conditioning, samples, chosen, noise_level, seed)
        per_phrase = torch.stack([maps[:, positions[p]].mean(1) for p in phrase_list], 1)
        size = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        masks = F.interpolate(per_phrase.flatten(0, 1)[:, None], size=size, mode="bilinear")[:, 0]
        masks = masks / masks.amax((-2, -1), keepdim=True).clamp_min(1e-8)
        images = heatmap(masks)
        return io.NodeOutput(masks, images, ui=ui.PreviewImage(images, cls=cls))
