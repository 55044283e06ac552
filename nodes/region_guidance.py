"""RegionBackwardGuidance: put each region's phrase where its region says, with the stock KSampler.

Training-free region-wise backward guidance (ST-LDM, arXiv:2403.10004; update rule of layout
guidance, Chen et al. WACV 2024): in the early sampling steps, an energy on the cross-attention of
each region's tokens is differentiated with respect to the latent and the latent is moved down
its gradient before the model predicts. The node patches a clone of the MODEL and encodes the
prompt, so the phrases it guides are exactly the tokens the sampler sees.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.attention_store import LAYER_PRESETS, select_layers
from ..guidance.backends.comfy import (
    cross_attention_layers,
    install_attention_capture,
    locate_phrases,
    prompt_text_tokens,
    with_latent_guidance,
)
from ..guidance.backward_guidance import BackwardGuidance
from ..guidance.errors import PhraseNotFoundError, UnknownTokenizerError, UnsupportedModelError
from ..guidance.region_energies import EnergyWeights, RegionTarget
from ..guidance.regions import covers_whole_image, scale_mask
from .errors import blame_input
from .types import Regions

NODE = "RegionBackwardGuidance"
RELAYOUT_AT = 0.45  # measured on train layouts (docs/region_guidance.md, seventh round)


def placement_inputs(clip_tooltip: str) -> list:
    """MODEL, CLIP, REGIONS and the prompt: what every node that places regions starts with."""
    return [
        io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x or SDXL UNet)."),
        io.Clip.Input("clip", tooltip=clip_tooltip),
        Regions.Input("regions", tooltip="Where each phrase goes (Region from Box / Mask, ...)."),
        io.String.Input(
            "prompt",
            multiline=True,
            default="a red circle and a blue square",
            tooltip="The positive prompt; every region's phrase must occur in it.",
        ),
    ]


def fraction_input(name: str, default: float, tooltip: str):
    """A FLOAT input in [0, 1]: a fraction of the sampling steps."""
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


def guidance_inputs() -> list:
    """The guidance settings, shared with the guided sampler nodes."""

    def weight(name: str, default: float, tooltip: str):
        return io.Float.Input(name, default=default, min=0.0, max=10.0, step=0.05, tooltip=tooltip)

    return [
        io.Float.Input(
            "strength",
            default=0.2,
            min=0.0,
            max=5.0,
            step=0.01,
            tooltip="How far each gradient step moves the latent, in units of the current noise level "
            "(RMS over the latent). 0 turns guidance off.",
        ),
        fraction_input("start_at", 0.0, "First sampling step to guide, as a fraction of the steps."),
        fraction_input(
            "end_at",
            0.1,
            "Guide the steps before this fraction of the steps; the layout is decided in the first steps, "
            "so later ones are left alone (and cost nothing extra).",
        ),
        io.Int.Input(
            "iterations",
            default=3,
            min=1,
            max=20,
            tooltip="Gradient steps per guided sampling step, repeated while the energy is above the "
            "threshold (each costs about one extra forward and backward pass of the model).",
        ),
        io.Float.Input(
            "threshold",
            default=0.2,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="An image whose energy is below this is not moved further.",
        ),
        io.Float.Input(
            "target_scale",
            default=0.8,
            min=0.1,
            max=1.0,
            step=0.05,
            tooltip="The energy aims each phrase's attention at its region scaled by this factor about its "
            "centre. Attention maps spread a little beyond their object, so a smaller target centres the "
            "object in the region; 1 = the region as drawn.",
        ),
        io.Int.Input(
            "candidates",
            default=1,
            min=1,
            max=16,
            tooltip="Starting noises tried at the first step: all are guided together and, per image, the "
            "one whose attention fits the regions best is kept. 1 = the seed's noise only. More candidates "
            "place more objects, more reliably, but each costs about one more image in the first step's "
            "gradient passes (cheap on small models, where batching is nearly free).",
        ),
        io.Boolean.Input(
            "move_start",
            default=True,
            tooltip="At the first step, copy the patch of starting noise that each phrase attends to most "
            "into its region's box before the gradient steps (Mao et al. 2023): objects then start near "
            "their regions. Reads the UNet encoder's attention (half an extra forward pass). Applies when "
            "start_at is 0 and sampling starts from pure noise; skipped by itself on a latent that holds "
            "an image (denoise < 1, or a sampler that continues another's steps).",
        ),
        io.Combo.Input(
            "layers",
            options=list(LAYER_PRESETS),
            default="all",
            tooltip="Cross-attention layers the energy reads: 'all' (default) or 'coarse' = mid block and "
            "the coarsest decoder levels (layout guidance's choice for SD1.5; stops the gradient pass "
            "early, so each step is cheaper); 'input', 'middle', 'output' blocks, or 'encoder' = input "
            "and middle.",
        ),
        weight("layout_weight", 1.0, "Layout-guidance energy: share of each phrase's attention outside it."),
        weight("boxdiff_weight", 0.0, "BoxDiff energy: strong inside, weak outside, edges at the box."),
        weight("presence_weight", 0.0, "Attend-and-Excite energy: each phrase's strongest response, inside."),
        weight(
            "extent_weight",
            0.0,
            "Extent energy (BoxDiff's corner constraint): each phrase's attention spans its region's width "
            "and height, so the object takes the region's size whatever the prompt says of its size.",
        ),
        io.Float.Input(
            "relayout_at",
            default=RELAYOUT_AT,
            min=0.0,
            max=0.95,
            step=0.05,
            tooltip="At this fraction of the steps, each region's object, as the model is drawing it, is "
            "moved and scaled into its region's box (one extra forward pass, no gradient): objects land "
            "in their boxes at their boxes' size. 0 = off. Applies when sampling starts from pure noise.",
        ),
    ]


def region_token_positions(node: str, clip, regions, prompt: str) -> dict[str, list[int]]:
    """Each region's phrase -> its token indices in the prompt's conditioning, after checking that
    there are regions, that their phrases differ and that each occurs exactly once in the prompt."""
    if not regions:
        with blame_input(node, "regions", ValueError):
            raise ValueError("no region connected: build regions with Region from Box or Region from Mask")
    phrases = [r.phrase for r in regions]
    repeated = sorted({p for p in phrases if phrases.count(p) > 1})
    if repeated:
        with blame_input(node, "regions", ValueError):
            raise ValueError(
                f"several regions have the phrase {repeated[0]!r}; a phrase names one thing in the prompt, "
                "so give each region its own words (e.g. 'large red circle', 'small red circle')"
            )
    with blame_input(node, "clip", UnknownTokenizerError), blame_input(node, "regions", PhraseNotFoundError):
        return locate_phrases(clip, prompt, phrases)


def check_prompt_prefix(node: str, own, positive) -> None:
    """A ``positive`` passed through must begin with the prompt's own encoding: the guided token
    indices point into it."""
    ours, theirs = own[0][0], positive[0][0]
    if theirs.shape[1] < ours.shape[1] or not torch.allclose(
        theirs[:, : ours.shape[1]].cpu(), ours.cpu(), atol=1e-4
    ):
        with blame_input(node, "positive", ValueError):
            raise ValueError(
                "does not begin with this node's prompt: connect the positive of a node that encoded the "
                "same prompt (Region Attention Masking), or leave it unconnected"
            )


def make_guidance(
    node: str, model, clip, regions, prompt: str, strength, start_at, end_at, iterations, threshold,
    target_scale, candidates, move_start, layers, layout_weight, boxdiff_weight, presence_weight,
    extent_weight, relayout_at,
):  # fmt: skip
    """Validate the inputs and return the guided MODEL clone (the MODEL itself if strength is 0)."""
    positions = region_token_positions(node, clip, regions, prompt)
    with blame_input(node, "model", UnsupportedModelError):
        all_layers = cross_attention_layers(model)
    with blame_input(node, "layers", ValueError):
        chosen = select_layers(all_layers, layers)
    with blame_input(node, "clip", UnknownTokenizerError):
        text_tokens = prompt_text_tokens(clip, prompt)
    with blame_input(node, "layout_weight", ValueError):
        weights = EnergyWeights(layout_weight, boxdiff_weight, presence_weight, extent_weight)
    # A region that covers the whole image says nothing of where its phrase goes: it stays free.
    placed = [r for r in regions if not covers_whole_image(r.mask)]
    with blame_input(node, "target_scale", ValueError):
        masks = [scale_mask(r.mask, target_scale) for r in placed]
    targets = tuple(
        RegionTarget(tuple(positions[r.phrase]), m, r.weight, r.phrase)
        for r, m in zip(placed, masks, strict=True)
    )
    if not targets:
        return model
    start_layers = []
    if move_start:  # on the demo model the encoder's maps placed the start best (docs, fourth round)
        with blame_input(node, "move_start", ValueError):
            start_layers = select_layers(all_layers, "encoder")
    with blame_input(node, "end_at", ValueError):
        guide = BackwardGuidance(
            targets, tuple(chosen), weights, tuple(text_tokens),
            strength, start_at, end_at, iterations, threshold,
            start_regions=tuple(r.mask for r in placed) if move_start else (),
            start_layers=tuple(start_layers),
            relayout_at=relayout_at,
            relayout_regions=tuple(r.mask for r in placed) if relayout_at > 0 else (),
        )  # fmt: skip
    if candidates > 1 and start_at > 0:
        with blame_input(node, "candidates", ValueError):
            raise ValueError(
                "start candidates are chosen at the first sampling step, which start_at > 0 leaves unguided; "
                "set start_at to 0 or candidates to 1"
            )
    if strength == 0:
        return model
    captured = list(dict.fromkeys([*chosen, *start_layers]))
    return with_latent_guidance(install_attention_capture(model, captured), guide, candidates, owner=node)


class RegionBackwardGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Region Backward Guidance",
            category="spatial_control/guidance",
            description="Training-free placement: while sampling, moves the latent so that each region's "
            "phrase attends inside its region. Connect the MODEL and CONDITIONING outputs to a stock "
            "KSampler (use the same prompt's tokens: this node encodes the prompt for you).",
            inputs=[
                *placement_inputs("The CLIP of the same checkpoint: encodes the prompt."),
                *guidance_inputs(),
                io.Conditioning.Input(
                    "positive",
                    optional=True,
                    tooltip="Pass this conditioning on instead of encoding the prompt: Region Attention "
                    "Masking's positive when its MODEL comes in (it begins with the same prompt's tokens).",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with guidance; to KSampler."),
                io.Conditioning.Output(display_name="positive", tooltip="The encoded prompt; to KSampler."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, regions, prompt, positive=None, **settings) -> io.NodeOutput:
        guided = make_guidance(NODE, model, clip, regions, prompt, **settings)
        own = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        if positive is not None:
            check_prompt_prefix(NODE, own, positive)
        return io.NodeOutput(guided, own if positive is None else positive)
