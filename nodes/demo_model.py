"""ShapeWorldDemoModel: the pack's small text-to-image model of the shape world, as MODEL/CLIP/VAE.

Built from ComfyUI's own classes, so every stock node (CLIPTextEncode, KSampler, VAEDecode,
latent nodes, embeddings, attention patches, live previews) treats it like an SD1.5 checkpoint.
It knows colours (red, orange, yellow, green, blue, purple), shapes (circle, square, triangle,
cross) and sizes (small, large) in captions like "a large red circle and a small blue square";
other words still run but mean nothing to it.
"""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..guidance.errors import NodeInputError
from ..models.comfy_builder import load_demo_model
from ..models.demo_model import WEIGHTS_DIR
from ..models.shape_clip import load_shape_clip
from ..models.spatio_textual import PRIOR_FILE, UNET_FILE, RegionTextEncoder, load_prior
from .tokenizer import comfy_clip_tokenizer
from .types import SpatioTextualTextEncoder

NODE = "ShapeWorldDemoModel"
SPATEXT_NODE = "ShapeWorldSpaTextModel"


class ShapeWorldDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Shape World Demo Model",
            category="spatial_control/loaders",
            description="Loads the pack's small demo text-to-image model (128x128 scenes of coloured "
            "shapes). "
            "Use it to try every node of the pack without downloading a checkpoint; real checkpoints from "
            "the stock loaders connect to the same nodes.",
            inputs=[],
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The UNet, as an SD1.5-like MODEL (v-prediction)."
                ),
                io.Clip.Output(
                    display_name="CLIP", tooltip="Its small CLIP text encoder (CLIP BPE tokenizer)."
                ),
                io.Vae.Output(
                    display_name="VAE", tooltip="Its autoencoder (8x downscale, 4 latent channels)."
                ),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        try:
            model, clip, vae = load_demo_model(WEIGHTS_DIR, folder_paths.get_folder_paths("embeddings"))
        except (FileNotFoundError, ValueError) as err:
            raise NodeInputError(NODE, "weights", str(err)) from None
        return io.NodeOutput(model, clip, vae)


class ShapeWorldSpaTextModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=SPATEXT_NODE,
            display_name="Shape World SpaText Model",
            category="spatial_control/loaders",
            description="Loads the demo model with SpaText's spatio-textual UNet (fine-tuned from the demo "
            "UNet to read a map of region embeddings beside the latent) and the region text encoder that "
            "builds that map. Connect all four to Spatio-Textual Encoder for its trained path; with a "
            "plain prompt the MODEL behaves as the demo model.",
            inputs=[
                io.Boolean.Input(
                    "use_prior",
                    default=True,
                    tooltip="Map each region's text embedding to an image embedding with the trained prior, "
                    "as in SpaText (the UNet was trained on image embeddings of segments). Off: the text "
                    "embedding itself (the ablation).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The spatio-textual UNet as an SD1.5-like MODEL; its map comes in the "
                    "conditioning (zeros without one).",
                ),
                io.Clip.Output(display_name="CLIP", tooltip="The demo model's text encoder (global prompt)."),
                io.Vae.Output(display_name="VAE", tooltip="The demo model's autoencoder."),
                SpatioTextualTextEncoder.Output(
                    display_name="spatext_encoder",
                    tooltip="The small CLIP and prior that embed each region's text; to Spatio-Textual "
                    "Encoder's spatext_encoder.",
                ),
            ],
        )

    @classmethod
    def execute(cls, use_prior: bool) -> io.NodeOutput:
        try:
            model, clip, vae = load_demo_model(
                WEIGHTS_DIR, folder_paths.get_folder_paths("embeddings"), unet_file=UNET_FILE
            )
            encoder = RegionTextEncoder(
                load_shape_clip(), load_prior(WEIGHTS_DIR / PRIOR_FILE), comfy_clip_tokenizer(), use_prior
            )
        except (FileNotFoundError, ValueError) as err:
            raise NodeInputError(SPATEXT_NODE, "weights", str(err)) from None
        return io.NodeOutput(model, clip, vae, encoder)
