"""TextGroundingMap in real ComfyUI: its heat map, region mask, box, REGIONS, preview, prompt and confidence
on an image of another size than the network's; the map's regions drive RegionBackwardGuidance on the
random SD1.5-shaped checkpoint; bad inputs name the node and input."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from scripts.comfy_headless import GraphError

pytestmark = pytest.mark.comfyui

TEXT = "put a green triangle to the left of the blue square"


def _graph(size: int = 96, **inputs) -> dict:
    return {
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x282828},
        },  # fmt: skip
        "3": {
            "class_type": "TextGroundingMap",
            "inputs": {
                "image": ["2", 0],
                **{"text": TEXT, "min_confidence": 0.3, "mask_margin": 0.25, **inputs},
            },
        },
    }


def test_node_outputs_map_mask_box_regions_preview_prompt_and_confidence(comfy):
    comfy.run(_graph(), fresh=True)
    heat, region_mask, box, regions, preview, prompt, confidence = comfy.node_output("3")
    x0, y0, x1, y1 = json.loads(box)
    assert heat.shape == region_mask.shape == (1, 96, 96) and 0 <= float(heat.min()) <= float(heat.max()) <= 1
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    assert float(region_mask.sum()) >= (x1 - x0) * (y1 - y0) - 96  # the box grown by the margin
    assert len(regions) == 1 and regions[0].phrase == "green triangle" and prompt == "a green triangle"
    assert float(regions[0].mask.sum()) == pytest.approx((x1 - x0) * (y1 - y0), abs=2 * 96)
    assert preview.shape == (1, 96, 96, 3) and 0.0 <= confidence <= 1.0


def test_an_unsure_map_is_flagged_in_the_log(comfy, caplog):
    with caplog.at_level(logging.WARNING):
        comfy.run(_graph(min_confidence=1.0), fresh=True)
    assert any("low confidence" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING):
        comfy.run(_graph(text="a red circle on top of the blue square"), fresh=True)
    assert any("no relation the network knows" in r.getMessage() for r in caplog.records)


def _defaults(comfy, node_type: str) -> dict:
    schema = comfy.node_classes[node_type].define_schema()
    return {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}


def test_regions_drive_backward_guidance_into_the_stock_sampler(comfy, sd15):
    graph = _graph(64)
    guidance = _defaults(comfy, "RegionBackwardGuidance")
    graph.update({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "4": {"class_type": "RegionBackwardGuidance", "inputs": {
            **guidance, "model": ["1", 0], "clip": ["1", 1], "regions": ["3", 3], "prompt": ["3", 5]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["4", 1], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    })  # fmt: skip
    comfy.run(graph)
    latent = comfy.node_output("7")[0]["samples"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


@pytest.mark.parametrize(
    "inputs, blamed, message",
    [
        ({"text": " "}, "text", "empty"),
        ({"text": "left of the blue square"}, "text", "not what to add"),
        ({"network_file": "/nonexistent/grounding.safetensors"}, "network_file", "scripts.train_grounding"),
        ({"size": 16}, "image", "at least"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_node_and_input(comfy, inputs, blamed, message):
    size = inputs.pop("size", 96)
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(size, **inputs))
    assert f"TextGroundingMap: input '{blamed}'" in str(err.value) and message in str(err.value)
    assert "Traceback" not in str(err.value)
