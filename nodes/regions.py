"""Nodes that build REGIONS (phrase + where it goes) from boxes or masks.

Each takes an optional REGIONS input and appends one region, so regions chain node to node. Each
also outputs the regions as a MASK batch (one mask per region) for stock nodes such as
ConditioningSetMask, and a colour preview.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..guidance.regions import Region, box_mask, mask_box, resize_mask
from .errors import blame_input
from .previews import regions_overlay
from .types import Regions


def _chain_inputs() -> list:
    return [
        io.String.Input(
            "phrase",
            default="red circle",
            tooltip="The words of the prompt that this region is for (they must occur in the prompt).",
        ),
        io.Float.Input(
            "weight",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="How much this region counts relative to the others.",
        ),
        Regions.Input("regions", optional=True, tooltip="Regions to add this one to."),
    ]


def _outputs() -> list:
    return [
        Regions.Output(display_name="regions", tooltip="The incoming regions plus this one."),
        io.Mask.Output(display_name="masks", tooltip="One mask per region, for stock mask nodes."),
        io.Image.Output(display_name="preview", tooltip="The regions, one colour each."),
    ]


def _region(node: str, phrase: str, mask: torch.Tensor, weight: float, box) -> Region:
    if not phrase.strip():
        with blame_input(node, "phrase", ValueError):
            raise ValueError("is empty: write the words of the prompt that this region is for")
    with blame_input(node, "mask", ValueError):
        return Region(phrase.strip(), mask, weight, box)


def _append(cls, regions, region: Region) -> io.NodeOutput:
    regions = (*(regions or ()), region)
    size = tuple(regions[0].mask.shape)
    masks = torch.stack([resize_mask(r.mask, size) for r in regions])
    preview = regions_overlay(masks)
    return io.NodeOutput(regions, masks, preview, ui=ui.PreviewImage(preview, cls=cls))


class RegionFromBox(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        def fraction(name: str, default: float, tooltip: str):
            return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)

        return io.Schema(
            node_id="RegionFromBox",
            display_name="Region from Box",
            category="spatial_control/regions",
            description="A region for a phrase of the prompt: a box given as fractions of the image.",
            inputs=[
                fraction("x", 0.1, "Left edge, as a fraction of the image width."),
                fraction("y", 0.1, "Top edge, as a fraction of the image height."),
                fraction("width", 0.4, "Box width, as a fraction of the image width."),
                fraction("height", 0.4, "Box height, as a fraction of the image height."),
                io.Int.Input(
                    "image_width", default=512, min=8, max=16384, step=8, tooltip="Width of the masks."
                ),
                io.Int.Input(
                    "image_height", default=512, min=8, max=16384, step=8, tooltip="Height of the masks."
                ),
                *_chain_inputs(),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, x, y, width, height, image_width, image_height, phrase, weight, regions=None):
        box = (x, y, min(1.0, x + width), min(1.0, y + height))
        with blame_input("RegionFromBox", "width", ValueError):
            mask = box_mask(box, image_height, image_width)
        return _append(cls, regions, _region("RegionFromBox", phrase, mask, weight, box))


class RegionFromMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RegionFromMask",
            display_name="Region from Mask",
            category="spatial_control/regions",
            description="A region for a phrase of the prompt: any MASK (painted, loaded, or from a "
            "segmentation node). Soft masks stay soft.",
            inputs=[
                io.Mask.Input("mask", tooltip="Where the phrase goes: one mask (white = inside)."),
                *_chain_inputs(),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, mask, phrase, weight, regions=None):
        if mask.ndim == 3 and mask.shape[0] != 1:
            with blame_input("RegionFromMask", "mask", ValueError):
                raise ValueError(
                    f"got a batch of {mask.shape[0]} masks; connect one mask per region node "
                    "(e.g. through a mask batch splitter)"
                )
        mask = mask.reshape(mask.shape[-2:]).float().clamp(0, 1).cpu()
        return _append(cls, regions, _region("RegionFromMask", phrase, mask, weight, mask_box(mask)))
