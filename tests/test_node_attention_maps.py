import numpy as np
import pytest
import torch

from scripts.comfy_headless import GraphError

pytestmark = pytest.mark.comfyui


def _graph(phrases="red circle\nblue square", prompt="a red circle and a blue square", layers="coarse"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
        "3": {
            "class_type": "CrossAttentionMaps",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "latent": ["2", 0],
                "prompt": prompt,
                "phrases": phrases,
                "noise_level": 0.5,
                "seed": 1,
                "layers": layers,
            },
        },
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "maps"}},
    }


def test_maps_per_latent_and_phrase_with_previews(comfy):
    result = comfy.run(_graph())
    maps, heatmaps = comfy.node_output("3")
    assert maps.shape == (4, 48, 64)  # 2 latents x 2 phrases, at pixel size
    assert heatmaps.shape == (4, 48, 64, 3)
    assert torch.all((maps >= 0) & (maps <= 1)) and torch.allclose(
        maps.amax((-2, -1)), torch.ones(4), atol=0.02
    )
    assert not torch.allclose(maps[0], maps[1])  # the two phrases attend differently
    assert result.outputs["3"]["images"]  # a preview is shown on the node
    assert len(result.images(comfy.output_dir)) == 4


def test_same_inputs_same_maps_and_no_state_left_on_the_model(comfy):
    comfy.run(_graph(), fresh=True)
    first = comfy.node_output("3")[0].clone()
    comfy.run(_graph(), fresh=True)
    assert torch.equal(first, comfy.node_output("3")[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"phrases": "green triangle"},
            "CrossAttentionMaps: input 'phrases': phrase 'green triangle' is not in the prompt",
        ),
        ({"phrases": " , \n"}, "CrossAttentionMaps: input 'phrases': no phrase given"),
        ({"layers": "input"}, None),
    ],
)
def test_bad_inputs_name_the_node_and_input(comfy, kwargs, message):
    if message is None:
        comfy.run(_graph(**kwargs))  # a valid preset works
        return
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(**kwargs))
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_pack_registers_its_nodes_with_tooltips(comfy):
    from spatial_control.nodes import NODES

    for node in NODES:
        schema = node.define_schema()
        assert schema.node_id in comfy.node_classes
        assert schema.description
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"


def test_heatmap_preview_colours_are_monotone():
    from spatial_control.nodes.previews import heatmap

    ramp = heatmap(torch.linspace(0, 1, 11)[None, None])[0, 0].numpy()
    brightness = ramp.sum(-1)
    assert np.all(np.diff(brightness[2:]) >= 0) and ramp[0, 2] > ramp[-1, 2]
