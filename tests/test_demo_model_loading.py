"""The demo model's MODEL/CLIP/VAE behave like an SD1.5 checkpoint's to the stock nodes.

Runs on freshly initialised weights saved in the committed formats (no training here)."""

import json

import pytest
import torch

pytestmark = pytest.mark.comfyui


def test_stock_text_to_image_nodes(comfy, demo):
    model, clip, vae = demo
    nodes = comfy.node_classes
    with torch.inference_mode():
        positive = nodes["CLIPTextEncode"]().encode(clip, "a large red circle")[0]
        negative = nodes["CLIPTextEncode"]().encode(clip, "")[0]
        latent = nodes["EmptyLatentImage"]().generate(128, 96, 2)[0]
        assert latent["samples"].shape == (2, 4, 12, 16)
        out = nodes["KSampler"]().sample(model, 1, 3, 3.0, "dpmpp_2m", "karras", positive, negative, latent)[
            0
        ]
        image = nodes["VAEDecode"]().decode(vae, out)[0]
        again = nodes["VAEEncode"]().encode(vae, image)[0]
        upscaled = nodes["LatentUpscaleBy"]().upscale(out, "nearest-exact", 2.0)[0]
        big = nodes["VAEDecode"]().decode(vae, upscaled)[0]
    assert image.shape == (2, 96, 128, 3) and image.min() >= 0 and image.max() <= 1
    assert again["samples"].shape == (2, 4, 12, 16)
    assert big.shape == (2, 192, 256, 3)
    assert positive[0][0].shape == (1, 77, 64)


def test_clip_matches_the_transformers_text_encoder(comfy, demo, demo_weights):
    from scripts.comfy_headless import find_comfyui
    from spatial_control.models.demo_model import TEXT_ENCODER_FILE, load_demo_text_encoder_state
    from spatial_control.models.text_encoder import build_text_encoder, load_clip_tokenizer, tokenize

    _, clip, _ = demo
    state, config = load_demo_text_encoder_state(demo_weights / TEXT_ENCODER_FILE)
    encoder = build_text_encoder(config)
    keys = encoder.state_dict().keys()
    encoder.load_state_dict({k if k in keys else k.removeprefix("text_model."): v for k, v in state.items()})
    prompt = "a large red circle and a small blue square"
    ids = tokenize(load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer"), [prompt])
    with torch.inference_mode():
        reference = encoder(ids).last_hidden_state
        ours = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]
    assert torch.allclose(reference, ours, atol=1e-5)


def test_embeddings_and_attention_patches_work(comfy, demo):
    from safetensors.torch import save_file

    from spatial_control.guidance.backends.comfy import cross_attention_layers

    model, clip, _ = demo
    save_file(
        {"clip_l": torch.randn(2, 64)}, str(comfy.base_dir / "models" / "embeddings" / "shapes.safetensors")
    )
    with torch.inference_mode():
        plain = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle"))[0][0]
        embedded = clip.encode_from_tokens_scheduled(clip.tokenize("a red embedding:shapes"))[0][0]
    assert not torch.allclose(plain, embedded)
    layers = [(layer.name, layer.downscale) for layer in cross_attention_layers(model)]
    assert layers == [
        ("input_1.0", 1), ("input_3.0", 2), ("middle_0.0", 4),
        ("output_2.0", 2), ("output_3.0", 2), ("output_4.0", 1), ("output_5.0", 1),
    ]  # fmt: skip


def test_comfy_unet_equals_the_diffusers_unet_it_was_converted_from(comfy, demo, demo_weights):
    from spatial_control.guidance.backends.comfy import loaded_denoiser
    from spatial_control.guidance.backends.diffusers import DiffusersDenoiser
    from spatial_control.models.demo_model import UNET_FILE, read_weights
    from spatial_control.models.demo_unet import build_demo_unet

    model, _, _ = demo
    state, meta = read_weights(demo_weights / UNET_FILE)
    unet = build_demo_unet(meta["config"])
    unet.load_state_dict(state)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    context = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([3.0])
    with torch.inference_mode():
        with loaded_denoiser(model, [[context, {}]], x.shape) as (denoiser, cond):
            ours = denoiser.denoise(x, sigma, cond)
        reference = DiffusersDenoiser(unet.eval(), prediction_type="v_prediction").denoise(x, sigma, context)
    assert torch.allclose(ours, reference, atol=1e-4)


def test_live_preview_factors_and_latent_format(demo):
    model, _, _ = demo
    latent_format = model.model.latent_format
    assert latent_format.scale_factor == pytest.approx(2.0)
    assert torch.tensor(latent_format.latent_rgb_factors).shape == (4, 3)


def test_latent_preview_fit_recovers_a_linear_map():
    from spatial_control.models.demo_model import fit_latent_preview

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 4, 4, generator=gen)
    factors, bias = torch.randn(4, 3, generator=gen), torch.tensor([0.1, -0.2, 0.3])
    cells = latents.movedim(1, -1) @ factors + bias
    pixels = cells.movedim(-1, 1).repeat_interleave(8, -1).repeat_interleave(8, -2)
    fit = fit_latent_preview(latents, pixels)
    assert torch.allclose(torch.tensor(fit["rgb_factors"]), factors, atol=1e-4)
    assert torch.allclose(torch.tensor(fit["rgb_bias"]), bias, atol=1e-4)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_weights_name_the_file_and_the_rebuild_script(
    comfy, demo_weights, tmp_path, damage
):
    import shutil

    from spatial_control.models.comfy_builder import load_demo_model
    from spatial_control.models.demo_model import UNET_FILE

    for f in demo_weights.iterdir():
        shutil.copy(f, tmp_path / f.name)
    if damage == "missing":
        (tmp_path / UNET_FILE).unlink()
    else:
        (tmp_path / UNET_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        load_demo_model(tmp_path)
    assert UNET_FILE in str(err.value) and "python -m scripts.train_demo_model" in str(err.value)
    json.loads((tmp_path / UNET_FILE.replace(".safetensors", ".json")).read_text())  # meta still fine
