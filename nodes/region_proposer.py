"""RegionProposer: the region an edit text is about, with no mask from the user.

Lin et al., "Text-Driven Image Editing via Learnable Regions" (arXiv 2311.16432): anchors from a
self-supervised ViT's [CLS] attention, candidate boxes around them, a region network trained on this
image with CLIP losses on the edited result (``guidance/region_proposer.py``). The editor in the loop is
the connected MODEL (masked denoising), so it works on any checkpoint. The MASK feeds the stock
inpainting path (SetLatentNoiseMask / VAEEncodeForInpaint + KSampler) and RegionBackwardGuidance. An
addition ("add a Y next to the X") has no region to find yet: its place comes from the text grounding
network (ST-LDM, the TextGroundingMap node's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..guidance.backends.comfy_regions import propose_edit_region
from ..guidance.edit_text import parse_edit
from ..guidance.errors import UnsupportedModelError
from ..guidance.grounding import ground_text, grow_box, heat_image
from ..guidance.grounding_text import RELATIONS, parse_grounding
from ..guidance.region_proposer import BudgetError, ProposerSettings
from ..guidance.regions import Region, box_mask
from ..models.anchor_vit import load_anchor_vit, load_vit_folder
from ..models.clip_scorer import load_clip_folder
from ..models.shape_clip import ShapeCLIPScorer, load_shape_clip
from ..models.text_encoder import tokenize
from .errors import blame_input
from .previews import grounding_preview, heatmap, proposal_preview
from .text_grounding import grounding_network
from .tokenizer import comfy_clip_tokenizer
from .types import Regions

NODE = "RegionProposer"
LOG = logging.getLogger(__name__)
# Text Grounding Map's default: flags 0.3% of held-out texts, 62% of those naming an absent object
MIN_GROUNDING_CONFIDENCE = 0.5
DEFAULTS = ProposerSettings()
DEFAULT_MASK_MARGIN = 0.1  # measured on train-split edits (docs/region_proposer.md)
MIN_LATENT_SIDE, MAX_LATENT_SIDE = 8, 512


def _anchor_vit(folder: str):
    if not folder.strip():
        return load_anchor_vit()[0]
    with blame_input(NODE, "vit_folder", FileNotFoundError, ValueError):
        return load_vit_folder(Path(folder.strip()))


def _scorer(folder: str):
    if not folder.strip():
        tokenizer = comfy_clip_tokenizer()
        return ShapeCLIPScorer(load_shape_clip(), tokenizer)
    with blame_input(NODE, "clip_folder", FileNotFoundError, ValueError, OSError):
        return load_clip_folder(Path(folder.strip()))


class RegionProposer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Region Proposer",
            category="spatial_control/editing",
            description="Finds the region that an edit text is about ('make the circle green'), with no "
            "mask: anchor points from a self-supervised ViT, candidate boxes around them, each edited once "
            "by the connected model, and a region network trained on this image with CLIP losses picks one. "
            "Connect the mask to SetLatentNoiseMask + KSampler (or RegionBackwardGuidance) to edit there.",
            inputs=[
                io.Image.Input("image", tooltip="The image to edit (the first of a batch is used)."),
                io.String.Input(
                    "edit_text",
                    default="make the circle green",
                    tooltip="The edit: 'make the circle green', 'turn the red circle into a square', "
                    "'remove the blue cross', 'add a red circle next to the blue square' (the place comes "
                    "from the text grounding network), or a description of the new content ('a green "
                    "circle').",
                ),
                io.Model.Input("model", tooltip="The diffusion model: it edits every candidate region."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint: encodes the edit prompt."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint."),
                io.String.Input(
                    "source_text",
                    default="",
                    tooltip="Optional: what the region shows now ('red circle'); replaces what is read from "
                    "the edit text. Needed for a free description.",
                ),
                io.Int.Input(
                    "anchors",
                    default=DEFAULTS.anchors,
                    min=1,
                    max=32,
                    tooltip="Anchor points taken from the ViT's attention (candidate boxes are centred on "
                    "them).",
                ),  # fmt: skip
                io.Int.Input(
                    "iterations",
                    default=DEFAULTS.iterations,
                    min=1,
                    max=2000,
                    tooltip="Adam steps of the region network on this image.",
                ),  # fmt: skip
                io.Int.Input(
                    "edit_steps",
                    default=8,
                    min=1,
                    max=100,
                    tooltip="Denoising steps of each candidate's trial edit.",
                ),  # fmt: skip
                io.Float.Input(
                    "edit_strength",
                    default=0.55,
                    min=0.05,
                    max=1.0,
                    step=0.05,
                    tooltip="How much of the schedule each trial edit re-noises (like KSampler's denoise): "
                    "about 0.5 keeps the shape and changes colour; reshaping needs more.",
                ),  # fmt: skip
                io.Float.Input(
                    "cfg", default=4.0, min=1.0, max=30.0, step=0.5, tooltip="CFG of the trial edits."
                ),
                io.Float.Input(
                    "budget_seconds",
                    default=120.0,
                    min=0.0,
                    max=3600.0,
                    step=5.0,
                    tooltip="Time limit (0 = none): the trial edits must fit in it; the network's training "
                    "stops when it is spent.",
                ),  # fmt: skip
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=True,
                    tooltip="Seed of the trial edits and of the region network: same seed, same region.",
                ),  # fmt: skip
                io.Float.Input(
                    "min_relevance",
                    default=DEFAULTS.min_relevance,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Below this CLIP similarity between the chosen region and what the text names, "
                    "the node reports that the image holds nothing of it (it depends on the CLIP: about 0.6 "
                    "for the pack's shape-world CLIP, about 0.2 for a real CLIP).",
                ),  # fmt: skip
                io.String.Input(
                    "vit_folder",
                    default="",
                    optional=True,
                    tooltip="Optional folder of a real self-supervised ViT (timm or transformers, "
                    "config.json + model.safetensors, e.g. DINO ViT-B/8). Empty: the pack's shape-world ViT.",
                ),
                io.String.Input(
                    "clip_folder",
                    default="",
                    optional=True,
                    tooltip="Optional folder of a real CLIP (transformers CLIPModel) for the losses. "
                    "Empty: the pack's shape-world CLIP.",
                ),
                # inputs added later come last, so that saved workflows keep their widget values in place
                io.Float.Input(
                    "mask_margin",
                    default=DEFAULT_MASK_MARGIN,
                    optional=True,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="The mask is the region grown by this share of its side on every side: the area "
                    "to inpaint, so that a region a little short of the object still covers it (box and "
                    "REGIONS keep the region itself; 0 = the region).",
                ),
                io.String.Input(
                    "grounding_file",
                    default="",
                    optional=True,
                    tooltip="Optional grounding network file (safetensors) for additions ('add a red "
                    "circle next to the blue square'). Empty: the pack's shape-world network.",
                ),
            ],
            outputs=[
                io.Mask.Output(
                    display_name="mask",
                    tooltip="The chosen region grown by mask_margin (white = edit here): connect it to "
                    "SetLatentNoiseMask and ImageCompositeMasked.",
                ),
                io.String.Output(
                    display_name="box", tooltip="The region as JSON [x0, y0, x1, y1] in pixels."
                ),
                Regions.Output(display_name="regions", tooltip="The region, with the edit's target phrase."),
                io.Image.Output(
                    display_name="preview",
                    tooltip="Anchors (white), each anchor's box (thin) and the chosen region (green), beside "
                    "the trial edit of that region; for an addition, the grounding network's place over "
                    "its heat map, beside the heat map.",
                ),
                io.String.Output(
                    display_name="prompt",
                    tooltip="What to generate in the region ('a green circle'; empty for a removal): connect "
                    "it to the edit's CLIP Text Encode.",
                ),
                io.String.Output(
                    display_name="negative_prompt",
                    tooltip="What must not be generated there: the object as it is now for a removal ('a "
                    "blue cross') or a recolour ('a purple cross'), empty otherwise. Connect it to the "
                    "edit's negative CLIP Text Encode.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, image, edit_text, model, clip, vae, source_text, anchors, iterations, edit_steps, edit_strength,
        cfg, budget_seconds, seed, min_relevance, vit_folder="", clip_folder="",
        mask_margin=DEFAULT_MASK_MARGIN, grounding_file="",
    ) -> io.NodeOutput:  # fmt: skip
        with blame_input(NODE, "edit_text", ValueError):
            request = parse_edit(edit_text, source_text)
            if request.kind == "describe" and not request.source:
                raise ValueError(
                    f"{edit_text!r} does not say what to change; write 'make the <thing> <new look>' or give "
                    "source_text (what the region shows now)"
                )
        if image.shape[0] == 0:
            with blame_input(NODE, "image", ValueError):
                raise ValueError("the batch is empty: connect an image")
        image = image[:1]
        height, width = image.shape[1:3]
        with blame_input(NODE, "image", ValueError):
            check_image_size(vae, height, width)
        if request.kind == "add":
            return grounded_addition(cls, image, request.target, mask_margin, grounding_file or "")
        settings = replace(DEFAULTS, anchors=anchors, iterations=iterations, min_relevance=min_relevance)
        vit, scorer = _anchor_vit(vit_folder or ""), _scorer(clip_folder or "")
        progress = comfy.utils.ProgressBar(anchors * len(settings.box_sizes) + iterations)

        def on_step(done: int, total: int) -> None:
            progress.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        with (
            blame_input(NODE, "model", UnsupportedModelError),
            blame_input(NODE, "budget_seconds", BudgetError),
        ):
            proposal = propose_edit_region(
                model, clip, vae, image, request, vit, scorer, settings, request.prompt, edit_steps,
                edit_strength, cfg, seed, budget_seconds or None, on_step,
            )  # fmt: skip
        preview = proposal_preview(image[0, ..., :3].float().cpu(), proposal)
        if not proposal.found:
            with blame_input(NODE, "edit_text", ValueError):
                raise ValueError(
                    f"found nothing in the image that looks like {request.source!r} (best relevance "
                    f"{proposal.relevance:.2f}, below {settings.min_relevance}); name something the image "
                    "shows"
                )
        phrase = request.target or request.source
        return region_outputs(
            cls, proposal.box, (height, width), phrase, mask_margin, preview, request.prompt, request.negative
        )


def region_outputs(cls, box, size, phrase: str, mask_margin: float, preview, prompt: str, negative: str):
    """The node's outputs for the fractional ``box`` on an image of ``size`` (height, width): the box
    grown by ``mask_margin`` as the MASK, the box in pixels, REGIONS of the box itself."""
    height, width = size
    mask = box_mask(grow_box(box, mask_margin), height, width)
    x0, y0, x1, y1 = box
    pixels = json.dumps([round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)])
    region = Region(phrase, box_mask(box, height, width), 1.0, box)
    return io.NodeOutput(
        mask[None], pixels, (region,), preview, prompt, negative, ui=ui.PreviewImage(preview, cls=cls)
    )


def grounded_addition(cls, image, text: str, mask_margin: float, network_file: str) -> io.NodeOutput:
    """An addition ("add a green triangle next to the blue square"): no region of the image shows the new
    object yet, so its place comes from the text grounding network (Text Grounding Map's), not from trial
    edits."""
    request = parse_grounding(text)
    if request.relation is None:
        LOG.warning(
            "%s: %r names no relation the grounding network knows (%s)", NODE, text, ", ".join(RELATIONS)
        )
    network = grounding_network(network_file, NODE, "grounding_file")[0]
    network.to(comfy.model_management.get_torch_device())
    placement, heat_logits = ground_text(network, image, tokenize(comfy_clip_tokenizer(), [text]))
    height, width = image.shape[1:3]
    heat = heat_image(heat_logits, height, width)
    confident = placement.confidence >= MIN_GROUNDING_CONFIDENCE
    overlay = grounding_preview(image[0, ..., :3].float().cpu(), heat, placement, confident)
    preview = torch.cat([overlay, heatmap(heat[None])], 2)
    if not confident:
        with blame_input(NODE, "edit_text", ValueError):
            raise ValueError(
                f"found no place for {request.prompt!r} (map confidence {placement.confidence:.2f}, below "
                f"{MIN_GROUNDING_CONFIDENCE}): is every object the text names in the image?"
            )
    return region_outputs(
        cls, placement.box, (height, width), request.phrase, mask_margin, preview, request.prompt, ""
    )


def check_image_size(vae, height: int, width: int) -> None:
    """An image whose latent would be tiny or huge is refused (the trial edits would be meaningless or
    take hours)."""
    factor = getattr(vae, "downscale_ratio", 8)
    factor = factor if isinstance(factor, int) else 8
    sides = (height // factor, width // factor)
    if min(sides) < MIN_LATENT_SIDE or max(sides) > MAX_LATENT_SIDE:
        raise ValueError(
            f"is {width}x{height}: its latent would be {sides[1]}x{sides[0]}, outside "
            f"{MIN_LATENT_SIDE}-{MAX_LATENT_SIDE} per side; resize it (ImageScale) near the model's own size"
        )
