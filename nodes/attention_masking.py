"""RegionAttentionMasking: each region's words shape the image only inside the region.

Training-free regional prompting by cross-attention masking (what attention-couple packs and
DenseDiffusion, Kim et al. ICCV 2023, do): in the early sampling steps, image positions outside a
region do not attend to that region's tokens (``guidance/attention_masking.py``). No gradients and
no extra model passes. Chains with RegionBackwardGuidance (its gradient steps read the unmasked
attention, so they still see where the model would put each phrase).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.attention_masking import RegionAttentionMask
from ..guidance.attention_store import LAYER_PRESETS, select_layers
from ..guidance.backends.comfy import cross_attention_layers, install_attention_masking, shared_word_positions
from ..guidance.errors import UnsupportedModelError
from ..guidance.region_energies import RegionTarget
from .errors import blame_input
from .region_guidance import fraction_input, placement_inputs, region_token_positions

NODE = "RegionAttentionMasking"
DEFAULT_END = 0.3


def masking_inputs(end_default: float = DEFAULT_END, region_prompts: bool = True) -> list:
    """The masking schedule and layers; ``region_prompts`` False leaves out that switch (for a node
    whose regions always have their own prompts)."""
    schedule = [
        fraction_input(
            "start_at", 0.0, "First sampling step whose attention is masked, as a fraction of the steps."
        ),
        fraction_input(
            "end_at",
            end_default,
            "Mask the steps before this fraction of the steps: the layout is decided early, and later steps "
            "left free blend the regions' edges. 1 = every step.",
        ),
    ]
    couple = io.Boolean.Input(
        "region_prompts",
        default=False,
        tooltip="Also encode each region's phrase on its own, appended to the prompt's tokens, and let "
        "only its region attend to it (attention couple). Without it only the phrase's words in the "
        "prompt are masked, and the words after them, which the text encoder let see the phrase, still "
        "carry it everywhere. Off by default: on the demo model it placed nothing more and lowered "
        "fidelity (docs/region_guidance.md).",
    )
    layers = io.Combo.Input(
        "layers",
        options=list(LAYER_PRESETS),
        default="all",
        tooltip="Cross-attention layers to mask: 'all', 'coarse' (mid block and the coarsest decoder "
        "levels), 'input', 'middle', 'output' or 'encoder' (input and middle).",
    )
    return [*schedule, *([couple] if region_prompts else []), layers]


def encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def region_prompts_conditioning(
    clip, prompt: str, regions, prompt_words: bool = False
) -> tuple[list, list[RegionTarget]]:
    """The prompt's conditioning with each region's phrase, encoded on its own, appended to its
    tokens (attention couple's layout); and, per region, a target holding all of its chunk's tokens.
    The prompt's own words for an object reach every later token of the prompt through the text
    encoder's causal attention; the phrase's own encoding reaches nothing else. ``prompt_words``:
    also a target per region for the prompt's tokens that its phrase shares (a word shared by
    several regions may be attended to inside any of them)."""
    positive = encode(clip, prompt)
    targets = []
    if prompt_words:
        shared = shared_word_positions(clip, prompt, [r.phrase for r in regions])
        targets = [
            RegionTarget(tuple(p), r.mask, r.weight, r.phrase)
            for p, r in zip(shared, regions, strict=True)
            if p
        ]
    chunks, offset = [positive[0][0]], positive[0][0].shape[1]
    for region in regions:
        chunk = encode(clip, region.phrase)[0][0]
        targets.append(
            RegionTarget(
                tuple(range(offset, offset + chunk.shape[1])), region.mask, region.weight, region.phrase
            )
        )
        chunks.append(chunk)
        offset += chunk.shape[1]
    return [[torch.cat(chunks, 1), dict(positive[0][1])]], targets


def make_masking(
    node: str,
    model,
    clip,
    regions,
    prompt: str,
    start_at: float,
    end_at: float,
    layers: str,
    region_prompts: bool,
):
    """``(MODEL clone whose chosen layers mask each region's tokens outside its region, positive
    CONDITIONING to sample with)``."""
    positions = region_token_positions(node, clip, regions, prompt)
    targets = [RegionTarget(tuple(positions[r.phrase]), r.mask, r.weight, r.phrase) for r in regions]
    if region_prompts:
        positive, chunk_targets = region_prompts_conditioning(clip, prompt, regions)
        targets += chunk_targets
    else:
        positive = encode(clip, prompt)
    return install_masking(node, model, targets, start_at, end_at, layers), positive


def install_masking(
    node: str, model, targets: list[RegionTarget], start_at, end_at, layers: str, mask_input: str = "regions"
):
    """The MODEL clone whose ``layers`` mask each target's tokens outside its mask in the steps
    ``[start_at, end_at)``; errors at sampling time name ``node`` and its input ``mask_input``."""
    with blame_input(node, "model", UnsupportedModelError):
        all_layers = cross_attention_layers(model)
    with blame_input(node, "layers", ValueError):
        chosen = select_layers(all_layers, layers)
    with blame_input(node, "end_at", ValueError):
        masking = RegionAttentionMask(tuple(targets), start_at, end_at)
    with blame_input(node, "model", UnsupportedModelError):
        return install_attention_masking(model, chosen, masking, owner=node, mask_input=mask_input)


class RegionAttentionMasking(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Region Attention Masking",
            category="spatial_control/guidance",
            description="Training-free regional prompting: in the early steps, each region's phrase is "
            "attended to only inside its region. No gradients, no extra cost. Connect the MODEL and "
            "CONDITIONING outputs to a stock KSampler, or the MODEL to Region Backward Guidance.",
            inputs=[
                *placement_inputs("The CLIP of the same checkpoint: encodes the prompt."),
                *masking_inputs(),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model", tooltip="The model with masked attention; to KSampler."
                ),
                io.Conditioning.Output(display_name="positive", tooltip="The encoded prompt; to KSampler."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, regions, prompt, start_at, end_at, layers, region_prompts) -> io.NodeOutput:
        masked, positive = make_masking(
            NODE, model, clip, regions, prompt, start_at, end_at, layers, region_prompts
        )
        return io.NodeOutput(masked, positive)
