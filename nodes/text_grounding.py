"""TextGroundingMap: where a described object belongs in a real image, from the text alone.

ST-LDM (Xu et al., arXiv 2403.10004): a Swin autoencoder branch and a multimodal transformer with
deformable feature alignment turn (image, text) into a spatial guidance map (``models/grounding_net.py``);
its peak and the size predicted there give the object's box (``guidance/grounding.py``). The REGIONS feed
RegionBackwardGuidance (generate the object there), the region mask (the box with a margin) feeds
LatentCompositeMasked, SetLatentNoiseMask and ImageCompositeMasked (blend it in, keep every pixel outside):
text-grounded object generation with stock nodes (workflows/shape_world_text_grounding.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import comfy.model_management
from comfy_api.latest import io, ui

from ..guidance.grounding import ground_text, grow_box, heat_image
from ..guidance.grounding_text import RELATIONS, parse_grounding
from ..guidance.regions import Region, box_mask
from ..models.grounding_net import load_grounding_net
from ..models.text_encoder import tokenize
from .errors import blame_input
from .previews import grounding_preview
from .tokenizer import comfy_clip_tokenizer
from .types import Regions

NODE = "TextGroundingMap"
LOG = logging.getLogger(__name__)
MIN_SIDE = 32


def grounding_network(path: str, node: str = NODE, input_name: str = "network_file"):
    """The grounding network from the file ``path`` (empty: the pack's), its errors blamed on ``node``'s
    ``input_name``."""
    with blame_input(node, input_name, FileNotFoundError, ValueError):
        return load_grounding_net(Path(path.strip())) if path.strip() else load_grounding_net()


class TextGroundingMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Text Grounding Map",
            category="spatial_control/grounding",
            description="Where the object a text describes belongs in the image ('a green triangle left of "
            "the blue square'): a heat map of its centre, its box and REGIONS with its phrase, from ST-LDM's "
            "grounding network. Connect the regions to RegionBackwardGuidance and the region mask to "
            "SetLatentNoiseMask + ImageCompositeMasked to generate it there and keep the rest.",
            inputs=[
                io.Image.Input("image", tooltip="The image to add to (the first of a batch is used)."),
                io.String.Input(
                    "text",
                    default="a green triangle left of the blue square",
                    multiline=True,
                    tooltip="What to add and where, relative to what the image shows: 'put a red circle "
                    "above the blue square', 'an orange cross between the green circle and the red square'. "
                    f"Relations the network knows: {', '.join(RELATIONS)}.",
                ),
                io.Float.Input(
                    "min_confidence",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Below this peak heat the map is flagged as unsure (red box in the preview, a "
                    "warning in the log): the anchor may be missing or the wording unknown to the network. "
                    "0.5 flags 1% of held-out texts whose objects are all there and 71% of those naming one "
                    "the image lacks (the pack's network).",
                ),
                io.Float.Input(
                    "mask_margin",
                    default=0.25,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="region_mask is the box grown by this share of its side on every side: the "
                    "area to regenerate so that the new object blends in (the REGIONS keep the tight box).",
                ),
                io.String.Input(
                    "network_file",
                    default="",
                    optional=True,
                    tooltip="Optional grounding network weights (.safetensors with its .json beside it, as "
                    "scripts/train_grounding.py exports). Empty: the pack's shape-world network.",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="heat_map", tooltip="Where the object's centre belongs (0-1)."),
                io.Mask.Output(
                    display_name="region_mask", tooltip="The object's box (white = generate here)."
                ),
                io.String.Output(display_name="box", tooltip="The box as JSON [x0, y0, x1, y1] in pixels."),
                Regions.Output(display_name="regions", tooltip="The box with the object's phrase."),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The image with the heat map and the box (green; red when unsure) over it.",
                ),
                io.String.Output(
                    display_name="prompt",
                    tooltip="What to generate in the region ('a green triangle'): connect it to the CLIP "
                    "Text Encode of the generation.",
                ),
                io.Float.Output(display_name="confidence", tooltip="The map's peak heat (0-1)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, text, min_confidence, mask_margin, network_file="") -> io.NodeOutput:
        with blame_input(NODE, "text", ValueError):
            request = parse_grounding(text)
            if not request.phrase:
                raise ValueError(f"{text!r} says where but not what to add; write e.g. 'a red circle {text}'")
        if image.shape[0] == 0:
            with blame_input(NODE, "image", ValueError):
                raise ValueError("the batch is empty: connect an image")
        height, width = image.shape[1:3]
        if min(height, width) < MIN_SIDE:
            with blame_input(NODE, "image", ValueError):
                raise ValueError(f"is {width}x{height}; give an image of at least {MIN_SIDE} px per side")
        network, _ = grounding_network(network_file or "")
        network.to(comfy.model_management.get_torch_device())
        size = network.config.image_size
        placement, heat_logits = ground_text(network, image, tokenize(comfy_clip_tokenizer(), [text]))
        confident = placement.confidence >= min_confidence
        if request.relation is None:
            LOG.warning("%s: %r names no relation the network knows (%s)", NODE, text, ", ".join(RELATIONS))
        if not confident:
            LOG.warning(
                "%s: low confidence %.2f (< %.2f) for %r: is every object the text names in the image?",
                NODE, placement.confidence, min_confidence, text,
            )  # fmt: skip
        if (height, width) != (size, size):
            LOG.info("%s: the %dx%d image was resized to %d px for the network", NODE, width, height, size)
        heat = heat_image(heat_logits, height, width)
        region_mask = box_mask(grow_box(placement.box, mask_margin), height, width)
        preview = grounding_preview(image[0, ..., :3].float().cpu(), heat, placement, confident)
        x0, y0, x1, y1 = placement.box
        box = json.dumps([round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)])
        region = Region(request.phrase, box_mask(placement.box, height, width), 1.0, placement.box)
        return io.NodeOutput(
            heat[None], region_mask[None], box, (region,), preview, request.prompt, placement.confidence,
            ui=ui.PreviewImage(preview, cls=cls),
        )  # fmt: skip
