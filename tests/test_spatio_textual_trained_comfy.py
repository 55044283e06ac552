"""SpatioTextualEncoder's trained path in real ComfyUI: the spatio-textual UNet as a MODEL whose map
rides in the conditioning (ComfyUI's concat conditioning), driven by the stock KSampler."""

import shutil

import pytest
import torch

pytestmark = pytest.mark.comfyui

TEXTS = "#ff0000: a red circle\n#0000ff: a blue square"
GLOBAL = "a red circle and a blue square"


def _widened(folder, demo_weights, map_weight_std: float):
    from spatial_control.models.demo_model import UNET_FILE as DEMO_UNET
    from spatial_control.models.demo_model import read_weights, save_demo_unet
    from spatial_control.models.demo_unet import build_demo_unet
    from spatial_control.models.spatio_textual import UNET_FILE, widen_unet_input

    state, meta = read_weights(demo_weights / DEMO_UNET)
    demo = build_demo_unet(meta["config"])
    demo.load_state_dict(state)
    wide = widen_unet_input(demo, 128)
    with torch.no_grad():
        wide.conv_in.weight[:, 4:].normal_(0, map_weight_std, generator=torch.Generator().manual_seed(0))
    folder.mkdir()
    for item in demo_weights.iterdir():
        shutil.copy(item, folder / item.name)
    save_demo_unet(wide, folder / UNET_FILE, {"steps": 0}, meta["latent_preview"])
    return folder


@pytest.fixture(scope="module")
def spatext(comfy, demo_weights, tmp_path_factory):
    """{name: (MODEL, CLIP, VAE)} for a widened demo UNet with random map weights ('reads') and with
    the zero map weights it starts from ('zero'), and the region text encoder."""
    from scripts.comfy_headless import find_comfyui
    from spatial_control.models.comfy_builder import load_demo_model
    from spatial_control.models.shape_clip import load_shape_clip
    from spatial_control.models.spatio_textual import (
        UNET_FILE,
        EmbeddingPrior,
        PriorConfig,
        RegionTextEncoder,
    )
    from spatial_control.models.text_encoder import load_clip_tokenizer

    base = tmp_path_factory.mktemp("spatext")
    models = {}
    with torch.inference_mode():
        for name, std in (("reads", 0.05), ("zero", 0.0)):
            folder = _widened(base / name, demo_weights, std)
            models[name] = load_demo_model(folder, [], unet_file=UNET_FILE)
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    encoder = RegionTextEncoder(load_shape_clip(), EmbeddingPrior(PriorConfig(dim=128)), tokenizer)
    return models, encoder


def _segment_map(width: int = 128, height: int = 128) -> torch.Tensor:
    image = torch.zeros(1, height, width, 3)
    image[0, : height // 2, : width // 2, 0] = 1
    image[0, height // 2 :, width // 2 :, 2] = 1
    return image


def _encode(comfy, model, clip, encoder, segment=None):
    node = comfy.node_classes["SpatioTextualEncoder"]
    with torch.inference_mode():
        return node.execute(
            model, clip, TEXTS, GLOBAL, "#000000", 0.0, 1.0, "all",
            segment_map=_segment_map() if segment is None else segment, spatext_encoder=encoder,
        ).result  # fmt: skip


def _sample(comfy, model, clip, positive) -> torch.Tensor:
    with torch.inference_mode():
        negative = comfy.node_classes["CLIPTextEncode"]().encode(clip, "")[0]
        latent = comfy.node_classes["EmptyLatentImage"]().generate(128, 128, 1)[0]
        (out,) = comfy.node_classes["KSampler"]().sample(
            model, 3, 3, 4.0, "euler", "normal", positive, negative, latent
        )
    return out["samples"].clone()


def test_the_widened_unet_loads_as_a_model_that_reads_a_map(spatext, demo):
    from spatial_control.models.comfy_builder import spatio_textual_channels

    models, _ = spatext
    assert spatio_textual_channels(models["reads"][0]) == 128 and spatio_textual_channels(demo[0]) == 0


def test_the_map_rides_in_the_positive_and_steers_the_stock_ksampler(comfy, spatext):
    from spatial_control.models.comfy_builder import MAP_KEY

    models, encoder = spatext
    model, clip, _ = models["reads"]
    out_model, positive, global_positive, regions, masks, _ = _encode(comfy, model, clip, encoder)
    assert out_model is model  # the trained path masks no attention
    st_map = positive[0][1][MAP_KEY]
    assert st_map.shape == (1, 128, 128, 128) and positive[0][0].shape[1] == 77  # the global prompt only
    assert st_map[0, :, 100, 10].abs().max() == 0 and st_map[0, :, 10, 10].abs().max() > 0
    assert MAP_KEY not in global_positive[0][1]
    with_map, without = (_sample(comfy, model, clip, p) for p in (positive, global_positive))
    assert torch.isfinite(with_map).all() and (with_map - without).abs().max() > 1e-3
    # the map's channels start at zero: then the map changes nothing (a missing map is the null map)
    zero_model, zero_clip, _ = models["zero"]
    zero_positive = _encode(comfy, zero_model, zero_clip, encoder)[1]
    assert torch.allclose(_sample(comfy, zero_model, zero_clip, zero_positive), without, atol=1e-5)


def test_the_trained_path_needs_the_spatext_model(comfy, spatext, demo):
    _, encoder = spatext
    with pytest.raises(ValueError, match="SpatioTextualEncoder: input 'model': the trained path needs"):
        _encode(comfy, demo[0], demo[1], encoder)


def test_a_map_of_another_aspect_is_refused_when_sampling(comfy, spatext):
    models, encoder = spatext
    model, clip, _ = models["reads"]
    positive = _encode(comfy, model, clip, encoder, _segment_map(width=256, height=128))[1]
    with pytest.raises(ValueError, match="input 'segment_map': the map is 256x128"):
        _sample(comfy, model, clip, positive)


def test_a_map_of_another_width_is_refused_when_sampling(comfy, spatext):
    from spatial_control.models.comfy_builder import MAP_KEY

    models, encoder = spatext
    model, clip, _ = models["reads"]
    positive = _encode(comfy, model, clip, encoder)[1]
    narrow = [[t, {**d, MAP_KEY: d[MAP_KEY][:, :8]}] for t, d in positive]
    with pytest.raises(ValueError, match="input 'spatext_encoder': this MODEL reads a 128-channel map"):
        _sample(comfy, model, clip, narrow)
