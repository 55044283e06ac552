"""RegionProposer in real ComfyUI on the random SD1.5-shaped checkpoint: the node's mask, box, regions
and preview; the same seed gives the same region; its mask feeds the stock inpainting path; bad inputs
name the node and input; an addition takes its place from the grounding network."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.comfy_headless import GraphError
from spatial_control.guidance.grounding import grow_box
from spatial_control.guidance.regions import box_mask

pytestmark = pytest.mark.comfyui

DEFAULT_INPUTS = {
    "edit_text": "make the circle green", "source_text": "", "anchors": 2, "iterations": 3, "edit_steps": 1,
    "edit_strength": 0.5, "cfg": 4.0, "budget_seconds": 0.0, "seed": 3, "min_relevance": 0.0,
    "mask_margin": 0.25,
}  # fmt: skip


def _graph(size: int = 64, **inputs) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x30A050},
        },  # fmt: skip
        "3": {
            "class_type": "RegionProposer",
            "inputs": {
                "image": ["2", 0],
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                **{**DEFAULT_INPUTS, **inputs},
            },  # fmt: skip
        },
    }


def test_node_outputs_mask_box_regions_and_preview(comfy):
    result = comfy.run(_graph(), fresh=True)
    mask, box, regions, preview, prompt, negative = comfy.node_output("3")
    x0, y0, x1, y1 = json.loads(box)
    assert mask.shape == (1, 64, 64) and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    # the mask is the region grown by mask_margin (clipped to the image); REGIONS keep the region itself
    grown = box_mask(grow_box(regions[0].box, DEFAULT_INPUTS["mask_margin"]), 64, 64)
    assert float(mask[0, y0:y1, x0:x1].min()) == 1.0 and torch.allclose(mask[0], grown)
    assert float(regions[0].mask.sum()) == pytest.approx((x1 - x0) * (y1 - y0), abs=1)
    assert len(regions) == 1 and regions[0].phrase == "green circle"
    assert preview.shape == (1, 64, 128, 3) and prompt == "a green circle" and negative == "a circle"
    assert any(node == "3" for node, *_ in result.progress)
    comfy.run(_graph(), fresh=True)
    assert comfy.node_output("3")[1] == box  # same seed, same region


def test_mask_feeds_the_stock_inpainting_path(comfy):
    graph = _graph()
    graph.update({
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "5": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["4", 0], "mask": ["3", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ["3", 4]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 0.6}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "ImageCompositeMasked", "inputs": {
            "destination": ["2", 0], "source": ["9", 0], "x": 0, "y": 0, "resize_source": False,
            "mask": ["3", 0]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    })  # fmt: skip
    comfy.run(graph)
    mask = comfy.node_output("3")[0][0]
    edited, original = comfy.node_output("10")[0][0], comfy.node_output("2")[0][0]
    outside = mask < 0.5
    assert torch.equal(edited[outside], original[outside])
    assert not torch.equal(edited[~outside], original[~outside])


@pytest.mark.parametrize(
    "inputs, blamed, message",
    [
        ({"edit_text": " "}, "edit_text", "empty"),
        ({"edit_text": "a green circle"}, "edit_text", "source_text"),
        ({"edit_text": "add a red square next to the blue circle"}, "edit_text", "found no place"),
        ({"budget_seconds": 0.001}, "budget_seconds", "raise the budget"),
        ({"vit_folder": "/nonexistent/vit"}, "vit_folder", "config.json"),
        ({"min_relevance": 1.0}, "edit_text", "found nothing"),
        ({"size": 32}, "image", "resize it"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_node_and_input(comfy, inputs, blamed, message):
    size = inputs.pop("size", 64)
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(size, **inputs))
    assert f"RegionProposer: input '{blamed}'" in str(err.value) and message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_an_addition_takes_its_place_from_the_grounding_network(comfy, sd15):
    import numpy as np
    from PIL import Image

    from scripts.comfy_server import EXAMPLE_INPUTS

    pixels = np.array(Image.open(EXAMPLE_INPUTS / "grounding_example.png").convert("RGB"))
    image = torch.from_numpy(pixels).float()[None] / 255
    text = "a blue circle on the right of the yellow square"
    inputs = {**DEFAULT_INPUTS, "edit_text": f"add {text}"}
    proposer = comfy.node_classes["RegionProposer"].execute(
        image, model=sd15[0], clip=sd15[1], vae=sd15[2], **inputs
    )
    mask, box, regions, preview, prompt, negative = proposer.result
    grounding = comfy.node_classes["TextGroundingMap"].execute(image, text, 0.5, 0.25).result
    assert box == grounding[2] and regions[0].box == grounding[3][0].box  # the network's place
    assert regions[0].phrase == "blue circle" and prompt == "a blue circle" and negative == ""
    grown = box_mask(grow_box(regions[0].box, DEFAULT_INPUTS["mask_margin"]), *image.shape[1:3])
    height, width = image.shape[1:3]
    assert torch.equal(mask[0], grown) and preview.shape == (1, height, 2 * width, 3)
