"""SpatioTextualEncoder: a painted segment map with a free-form text per colour, for any checkpoint.

SpaText's interface (Avrahami et al., CVPR 2023, arXiv:2211.14305): a global prompt for the whole
image and, for each painted region, its own description. Training-free path: each region's text is
encoded on its own and appended to the global prompt's tokens, and the MODEL's cross-attention lets
only the region attend to it (regional attention masking, ``guidance/attention_masking.py``, the
same patch as RegionAttentionMasking). Works with the stock KSampler; the REGIONS also feed Region
Backward Guidance, and Multi-Conditional CFG Guider gives the global prompt its own scale.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..guidance.errors import NodeInputError, RegionTextError, SegmentMapError
from ..guidance.regions import Region
from ..guidance.segment_map import (
    MAX_REGIONS,
    parse_colour,
    parse_mask_texts,
    parse_region_texts,
    split_segment_map,
)
from ..guidance.spatio_textual_map import spatio_textual_map
from ..models.comfy_builder import MAP_KEY, spatio_textual_channels
from .attention_masking import encode, install_masking, masking_inputs, region_prompts_conditioning
from .errors import blame_input
from .previews import segment_preview
from .types import Regions, SpatioTextualTextEncoder

NODE = "SpatioTextualEncoder"


class SpatioTextualEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Spatio-Textual Encoder",
            category="spatial_control/conditioning",
            description="Paint regions in flat colours and describe each in its own words (SpaText): "
            "each region's text shapes the image only inside its region, the global prompt the whole "
            "image. Training-free, for any SD1.x/SD2.x/SDXL checkpoint. Connect the MODEL and positive "
            "to a stock KSampler, or all three conditionings to Multi-Conditional CFG Guider.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x or SDXL UNet)."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint: encodes the texts."),
                io.Image.Input(
                    "segment_map",
                    optional=True,
                    tooltip="The regions, painted in flat colours on the background colour, at the size "
                    "of the image to generate (any resolution of the same aspect ratio). Anti-aliased "
                    "edges are split between the colours they blend. Its aspect ratio must be the "
                    "latent's: this is checked when sampling, and a map of another aspect is refused "
                    "there (it would be squashed onto the latent). Or connect masks instead.",
                ),
                io.String.Input(
                    "region_texts",
                    multiline=True,
                    default="#ff0000: a red circle\n#0000ff: a blue square",
                    tooltip="One line per painted colour: '#rrggbb: what the region shows' (or #rgb). "
                    f"Every painted colour needs a line and every line a painted region; at most "
                    f"{MAX_REGIONS} regions. With masks instead of a segment map: one line per mask, in "
                    "the masks' order (a colour prefix is allowed and ignored).",
                ),
                io.String.Input(
                    "global_prompt",
                    multiline=True,
                    default="a red circle and a blue square on a grey background",
                    tooltip="Describes the whole image, background included. To chain Region Backward "
                    "Guidance, write each region's text in it too and give that node the same prompt.",
                ),
                io.String.Input(
                    "background",
                    default="#000000",
                    tooltip="The colour of the unpainted background (#rrggbb): no region of its own, "
                    "described by the global prompt alone. Need not occur in the map.",
                ),
                *masking_inputs(end_default=1.0, region_prompts=False),
                io.Mask.Input(
                    "masks",
                    optional=True,
                    tooltip="Instead of a segment map: a batch of region MASKs (e.g. from Load Image's mask, "
                    "painted in the mask editor, or a segmentation node), one per line of region_texts, at "
                    "the latent's aspect ratio. Where masks overlap, the later mask wins.",
                ),
                SpatioTextualTextEncoder.Input(
                    "spatext_encoder",
                    optional=True,
                    tooltip="Shape World SpaText Model's spatext_encoder: the trained path. Each region's "
                    "text is embedded and painted over its region into the map that model's UNet reads; "
                    "the positive is then the global prompt with that map, the MODEL passes through "
                    "unmasked and the masking inputs are unused. Leave empty for the training-free path.",
                ),
                io.Boolean.Input(
                    "mask_prompt_words",
                    default=True,
                    optional=True,
                    tooltip="Training-free path: also keep the global prompt's words that a region's text "
                    "shares (e.g. 'red circle' in both) inside that region, so that the global prompt does "
                    "not put the region's object elsewhere too (function words such as 'a', 'and' stay "
                    "free; a word several regions share may go inside any of them).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model",
                    tooltip="The model with each region's text masked to its region; to KSampler or the "
                    "guider (without it, the region texts act everywhere).",
                ),
                io.Conditioning.Output(
                    display_name="positive",
                    tooltip="The global prompt followed by each region's text: the spatio-textual "
                    "conditioning; to KSampler's positive or the guider's spatial_positive.",
                ),
                io.Conditioning.Output(
                    display_name="global_positive",
                    tooltip="The global prompt alone; to Multi-Conditional CFG Guider's global_positive.",
                ),
                Regions.Output(
                    display_name="regions",
                    tooltip="One region per line, its text as phrase and its mask at the map's "
                    "resolution; e.g. to Region Backward Guidance (for painted shapes, 4 candidates and "
                    "end_at 0.3 follow the outlines more closely than its defaults, which suit boxes).",
                ),
                io.Mask.Output(display_name="masks", tooltip="One mask per region, in the lines' order."),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The segment map beside the regions parsed from it, each in its listed "
                    "colour, over a grey checkerboard where the background is.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, region_texts, global_prompt, background, start_at, end_at, layers,
        segment_map=None, masks=None, spatext_encoder=None, mask_prompt_words=True,
    ) -> io.NodeOutput:  # fmt: skip
        if (segment_map is None) == (masks is None):
            which = "both" if masks is not None else "neither"
            raise NodeInputError(
                NODE, "segment_map", "connect either a segment map (an IMAGE painted in flat colours) or a "
                f"batch of region masks (the masks input), not {which}",
            )  # fmt: skip
        masks_input = masks
        if masks is not None:
            entries, masks, segment_image = regions_from_masks(masks, region_texts)
        else:
            entries, masks = regions_from_segment_map(segment_map, region_texts, background)
            segment_image = segment_map[0]
        regions = tuple(Region(e.text, mask) for e, mask in zip(entries, masks, strict=True))
        if spatext_encoder is None:
            positive, targets = region_prompts_conditioning(clip, global_prompt, regions, mask_prompt_words)
            shape_input = "segment_map" if masks_input is None else "masks"
            model = install_masking(NODE, model, targets, start_at, end_at, layers, mask_input=shape_input)
        else:
            positive = trained_path_conditioning(model, clip, spatext_encoder, global_prompt, regions)
        preview = segment_preview(segment_image, masks, [e.colour for e in entries])
        return io.NodeOutput(
            model,
            positive,
            encode(clip, global_prompt),
            regions,
            masks,
            preview,
            ui=ui.PreviewImage(preview, cls=cls),
        )


def trained_path_conditioning(model, clip, spatext_encoder, global_prompt: str, regions) -> list:
    """The global prompt's conditioning carrying the spatio-textual map of ``regions`` (at the segment
    map's resolution; the MODEL resizes it to the latent)."""
    channels = spatio_textual_channels(model)
    if channels != spatext_encoder.dim:
        have = f"a MODEL with {channels} map channels" if channels else "a MODEL without map channels"
        raise NodeInputError(
            NODE, "model", f"the trained path needs the MODEL that came with spatext_encoder (its UNet reads "
            f"a {spatext_encoder.dim}-channel map), got {have}: connect Shape World SpaText Model's MODEL, "
            "or disconnect spatext_encoder for the training-free path",
        )  # fmt: skip
    masks = torch.stack([r.mask for r in regions]).float()
    embeddings = spatext_encoder.encode([r.phrase for r in regions])
    st_map = spatio_textual_map(masks, embeddings, tuple(masks.shape[-2:]))[None]
    return [[t, {**d, MAP_KEY: st_map}] for t, d in encode(clip, global_prompt)]


def regions_from_segment_map(segment_map, region_texts: str, background: str):
    """(entries, masks ``[R, H, W]``) of a painted segment map and its colour lines."""
    with blame_input(NODE, "region_texts", RegionTextError):
        entries = parse_region_texts(region_texts)
    with blame_input(NODE, "background", ValueError):
        background_colour = parse_colour(background)
    if segment_map.shape[0] != 1:
        with blame_input(NODE, "segment_map", SegmentMapError):
            raise SegmentMapError(f"got a batch of {segment_map.shape[0]} images: connect one segment map")
    with (
        blame_input(NODE, "segment_map", SegmentMapError),
        blame_input(NODE, "region_texts", RegionTextError),
    ):
        return entries, split_segment_map(segment_map[0], entries, background_colour)


def regions_from_masks(masks, region_texts: str):
    """(entries, disjoint masks ``[R, H, W]``, a painted image of them ``[H, W, 3]``) of a MASK batch
    and one text line per mask; where masks overlap, the later one wins."""
    masks = masks[None] if masks.ndim == 2 else masks
    with blame_input(NODE, "masks", SegmentMapError), blame_input(NODE, "region_texts", RegionTextError):
        entries = parse_mask_texts(region_texts, masks.shape[0])
    hard = (masks.float().cpu() > 0.5).float()
    if not hard.flatten(1).any(1).all():
        empty = int((~hard.flatten(1).any(1)).nonzero()[0, 0]) + 1
        raise NodeInputError(NODE, "masks", f"mask {empty} is empty: paint its region or remove it")
    later = hard.flip(0).cumsum(0).flip(0) - hard  # how many later masks cover each pixel
    disjoint = hard * (later == 0)
    painted = torch.zeros(*hard.shape[-2:], 3)
    for mask, entry in zip(disjoint, entries, strict=True):
        painted[mask > 0] = torch.tensor(entry.colour, dtype=torch.float32) / 255.0
    return entries, disjoint, painted
