"""SpatioTextualEncoder and MultiConditionalCFGGuider in real ComfyUI (random SD1.5 shape, 64x64)."""

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.comfy_headless import GraphError

pytestmark = pytest.mark.comfyui

GLOBAL = "a red circle and a blue square"
TEXTS = "#ff0000: red circle\n#0000ff: blue square"


def _segment_map(comfy, name: str, width: int = 64, height: int = 64, extra=None) -> str:
    """A black map with a red top-left and a blue bottom-right block, saved to ComfyUI's input folder."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (255, 0, 0)
    image[height // 2 :, width // 2 :] = (0, 0, 255)
    if extra is not None:
        extra(image)
    Image.fromarray(image).save(comfy.base_dir / "input" / name)
    return name


def _graph(comfy, segment: str = "", **encoder) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "LoadImage", "inputs": {"image": segment or _segment_map(comfy, "segment.png")}},
        "4": {
            "class_type": "SpatioTextualEncoder",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "segment_map": ["3", 0], "region_texts": TEXTS,
                       "global_prompt": GLOBAL, "background": "#000000", "start_at": 0.0, "end_at": 1.0,
                       "layers": "all", **encoder},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {
            "class_type": "KSampler",
            "inputs": {"model": ["4", 0], "positive": ["4", 1], "negative": ["6", 0],
                       "latent_image": ["2", 0], "seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
                       "scheduler": "normal", "denoise": 1.0},
        },
        "98": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "99": {"class_type": "PreviewImage", "inputs": {"images": ["98", 0]}},
    }  # fmt: skip


def _ksampler(comfy, graph: dict) -> torch.Tensor:
    comfy.run(graph)
    return comfy.node_output("8")[0]["samples"].clone()


def test_encoder_outputs_regions_conditioning_and_preview(comfy):
    comfy.run(_graph(comfy))
    model, positive, global_positive, regions, masks, preview = comfy.node_output("4")
    assert positive[0][0].shape[1] == 3 * 77  # the global prompt, then each region's text on its own
    assert torch.equal(positive[0][0][:, :77], global_positive[0][0])
    assert [r.phrase for r in regions] == ["red circle", "blue square"]
    assert masks.shape == (2, 64, 64) and masks[0, :32, :32].all() and masks[0].sum() == 32 * 32
    assert masks[1, 32:, 32:].all() and masks[1].sum() == 32 * 32
    assert preview.shape == (1, 64, 128, 3)
    assert torch.allclose(preview[0, 0, 64], torch.tensor([1.0, 0.0, 0.0]))  # the parsed red region
    assert preview[0, 0, 127].max() < 0.6  # the background: grey checkerboard
    assert torch.equal(regions[0].mask, masks[0])


def test_stock_ksampler_samples_with_the_masked_model(comfy):
    masked = _ksampler(comfy, _graph(comfy))
    assert masked.shape == (1, 4, 8, 8) and torch.isfinite(masked).all()
    unmasked_graph = _graph(comfy)
    unmasked_graph["8"]["inputs"]["model"] = ["1", 0]  # the same conditioning, region texts everywhere
    unmasked = _ksampler(comfy, unmasked_graph)
    assert (masked - unmasked).abs().max() > 1e-3
    assert torch.equal(_ksampler(comfy, unmasked_graph), unmasked)  # the source MODEL is untouched
    assert torch.equal(_ksampler(comfy, _graph(comfy, end_at=0.0)), unmasked)  # no step in the window


def _custom(graph: dict, node: str, guider: dict, steps: int = 3) -> None:
    """``guider`` (a node) driving SamplerCustomAdvanced as node ``node``, its LATENT an output."""
    graph.update({
        f"{node}_guider": guider,
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "13": {"class_type": "BasicScheduler",
               "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": steps, "denoise": 1.0}},
        node: {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["11", 0], "guider": [f"{node}_guider", 0], "sampler": ["12", 0],
                          "sigmas": ["13", 0], "latent_image": ["2", 0]}},
        f"{node}_decode": {"class_type": "VAEDecode", "inputs": {"samples": [node, 0], "vae": ["1", 2]}},
        f"{node}_preview": {"class_type": "PreviewImage", "inputs": {"images": [f"{node}_decode", 0]}},
    })  # fmt: skip


def test_prompt_words_shared_with_a_region_are_masked_too(comfy):
    graph = _graph(comfy)  # GLOBAL names both regions' objects: "a red circle and a blue square"
    shared = _ksampler(comfy, graph)
    chunks_only = _ksampler(comfy, _graph(comfy, mask_prompt_words=False))
    assert (shared - chunks_only).abs().max() > 1e-3
    elsewhere = _graph(comfy, mask_prompt_words=True)
    elsewhere["4"]["inputs"]["global_prompt"] = "a picture"  # shares no word with the region texts
    assert torch.equal(
        _ksampler(comfy, elsewhere),
        _ksampler(comfy, {**elsewhere, "4": {**elsewhere["4"], "inputs": {**elsewhere["4"]["inputs"],
                                                                        "mask_prompt_words": False}}}),
    )  # fmt: skip


def _multi(global_scale: float, spatial_scale: float, mode: str = "multi-scale") -> dict:
    return {
        "class_type": "MultiConditionalCFGGuider",
        "inputs": {"model": ["4", 0], "spatial_positive": ["4", 1], "global_positive": ["4", 2],
                   "negative": ["6", 0], "global_scale": global_scale, "spatial_scale": spatial_scale,
                   "mode": mode},
    }  # fmt: skip


def _cfg(model: list, positive: list, cfg: float) -> dict:
    return {
        "class_type": "CFGGuider",
        "inputs": {"model": model, "positive": positive, "negative": ["6", 0], "cfg": cfg},
    }


def _sampled(comfy, comfy_guider: dict, steps: int = 3, output: int = 0) -> torch.Tensor:
    graph = _graph(comfy)
    _custom(graph, "14", comfy_guider, steps)
    comfy.run(graph)
    return comfy.node_output("14")[output]["samples"].clone()


def test_equal_scales_are_exactly_the_stock_cfg_guider(comfy):
    stock = _sampled(comfy, _cfg(["4", 0], ["4", 1], 5.0))
    assert torch.equal(_sampled(comfy, _multi(5.0, 5.0)), stock)
    assert torch.equal(_sampled(comfy, _multi(2.0, 5.0, "single-scale")), stock)  # global_scale unused
    multi = _sampled(comfy, _multi(2.0, 5.0))
    assert torch.isfinite(multi).all() and (multi - stock).abs().max() > 1e-3


def test_multi_scale_combines_the_three_predictions_as_the_paper_says(comfy):
    # one euler step from pure noise: SamplerCustomAdvanced's denoised output is the guided prediction
    def prediction(guider: dict) -> torch.Tensor:
        return _sampled(comfy, guider, steps=1, output=1)

    uncond = prediction(_cfg(["1", 0], ["6", 0], 1.0))  # cfg 1: the positive's prediction alone
    global_ = prediction(_cfg(["1", 0], ["4", 2], 1.0))
    joint = prediction(_cfg(["4", 0], ["4", 1], 1.0))
    paper = uncond + 2.0 * (global_ - uncond) + 6.0 * (joint - global_)
    mine = prediction(_multi(2.0, 6.0))
    assert (mine - paper).abs().max() < 1e-3 * paper.abs().max()
    assert (paper - (uncond + 6.0 * (joint - uncond))).abs().max() > 0.05 * paper.abs().max()


def test_regions_chain_into_backward_guidance(comfy):
    masked = _ksampler(comfy, _graph(comfy))
    graph = _graph(comfy)
    graph["5"] = {
        "class_type": "RegionBackwardGuidance",
        "inputs": {"model": ["4", 0], "clip": ["1", 1], "regions": ["4", 3], "prompt": GLOBAL,
                   "positive": ["4", 1], "strength": 0.2, "start_at": 0.0, "end_at": 0.5, "iterations": 1,
                   "threshold": 0.0, "target_scale": 0.8, "candidates": 1, "move_start": False,
                   "layers": "coarse", "layout_weight": 1.0, "boxdiff_weight": 0.0, "presence_weight": 0.0,
                   "extent_weight": 0.0, "relayout_at": 0.0},
    }  # fmt: skip
    graph["8"]["inputs"].update(model=["5", 0], positive=["5", 1])
    both = _ksampler(comfy, graph)
    assert torch.isfinite(both).all() and (both - masked).abs().max() > 1e-3


def _green_patch(image: np.ndarray) -> None:
    image[40:50, 4:14] = (0, 255, 0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"region_texts": TEXTS + "\n#00ff00: a green triangle"},
         "SpatioTextualEncoder: input 'region_texts': colour #00ff00 (line 3, 'a green triangle') is not in"),
        ({"region_texts": "#ff0000: red circle\nblue square"},
         "SpatioTextualEncoder: input 'region_texts': line 2 ('blue square') is not of the form"),
        ({"region_texts": "#ff0000: red circle\n#0000ff:"},
         "SpatioTextualEncoder: input 'region_texts': colour #0000ff (line 2) has no text"),
        ({"background": "none"}, "SpatioTextualEncoder: input 'background': 'none' is not a colour"),
        ({"segment": "green.png"},
         "SpatioTextualEncoder: input 'segment_map': has 100 pixels of #00ff00, a colour no line"),
        ({"start_at": 0.6, "end_at": 0.5},
         "SpatioTextualEncoder: input 'end_at': need 0 <= start_at <= end_at"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_node_and_input(comfy, change, message):
    segment = change.pop("segment", "")
    if segment:
        _segment_map(comfy, segment, extra=_green_patch)
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(comfy, segment, **change))
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_a_map_of_another_aspect_is_refused_when_sampling(comfy):
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(comfy, _segment_map(comfy, "wide.png", width=128, height=64)))
    message = str(err.value)
    assert "SpatioTextualEncoder: input 'segment_map': region 'red circle' has a 128x64 mask" in message
    assert "latent being sampled is 8x8" in message


def test_the_guider_needs_the_spatio_textual_conditioning(comfy):
    graph = _graph(comfy)
    swapped = _multi(2.0, 5.0)
    swapped["inputs"]["spatial_positive"] = ["4", 2]  # the global prompt alone: no region tokens
    _custom(graph, "14", swapped)
    with pytest.raises(GraphError) as err:
        comfy.run(graph)
    assert "SpatioTextualEncoder: input 'positive': the conditioning being sampled has 77 tokens" in str(
        err.value
    )


def _execute(comfy, sd15, **inputs):
    node = comfy.node_classes["SpatioTextualEncoder"]
    settings = {"region_texts": TEXTS, "global_prompt": GLOBAL, "background": "#000000", "start_at": 0.0,
                "end_at": 1.0, "layers": "all", **inputs}  # fmt: skip
    with torch.inference_mode():
        return node.execute(sd15[0], sd15[1], **settings).result


def _block_masks() -> torch.Tensor:
    masks = torch.zeros(2, 64, 64)
    masks[0, :32, :32] = 1
    masks[1, 32:, 32:] = 1
    return masks


def test_region_masks_stand_in_for_a_painted_map(comfy, sd15):
    painted = torch.tensor(np.asarray(Image.open(comfy.base_dir / "input" / _segment_map(comfy, "s.png"))))
    from_map = _execute(comfy, sd15, segment_map=painted[None].float() / 255)
    from_masks = _execute(comfy, sd15, masks=_block_masks(), region_texts="red circle\n#0000ff: blue square")
    assert torch.equal(from_map[4], from_masks[4]) and torch.equal(from_map[1][0][0], from_masks[1][0][0])
    assert [r.phrase for r in from_masks[3]] == ["red circle", "blue square"]
    assert from_masks[5].shape == (1, 64, 128, 3)


def test_overlapping_masks_go_to_the_later_one(comfy, sd15):
    masks = _block_masks()
    masks[1, 16:, 16:] = 1  # overlaps the first mask's bottom-right quarter
    out = _execute(comfy, sd15, masks=masks, region_texts="red circle\nblue square")[4]
    assert out[0, 20, 20] == 0 and out[1, 20, 20] == 1 and out[0, 5, 5] == 1 and (out.sum(0) <= 1).all()


@pytest.mark.parametrize(
    "inputs, message",
    [({}, "input 'segment_map': connect either a segment map"),
     ({"masks": "both"}, "not both"),
     ({"masks": "one", "region_texts": "red circle"},
      "input 'region_texts': has 1 non-blank lines for 2 masks"),
     ({"masks": "empty"}, "input 'masks': mask 2 is empty")],
)  # fmt: skip
def test_bad_mask_inputs_name_the_node_and_input(comfy, sd15, inputs, message):
    masks = _block_masks()
    kind = inputs.pop("masks", None)
    if kind == "both":
        inputs.update(masks=masks, segment_map=torch.zeros(1, 64, 64, 3))
    elif kind == "empty":
        masks[1] = 0
        inputs["masks"] = masks
    elif kind == "one":
        inputs["masks"] = masks
    with pytest.raises(ValueError, match=message):
        _execute(comfy, sd15, **inputs)
