"""The ComfyUI backend on a random-weight SD1.5-shaped checkpoint loaded by the stock loader."""

import pytest
import torch

from spatial_control.guidance.attention_store import AttentionStore, select_layers
from spatial_control.guidance.errors import (
    PhraseNotFoundError,
    RepeatedPhraseError,
    UnknownTokenizerError,
    UnsupportedModelError,
)
from spatial_control.guidance.latent_gradient import energy_gradient, gradients_enabled

pytestmark = pytest.mark.comfyui


def _encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def test_layers_of_an_sd15_shaped_unet(sd15):
    from spatial_control.guidance.backends.comfy import cross_attention_layers

    model, _, _ = sd15
    layers = cross_attention_layers(model)
    assert [layer.name for layer in layers] == ["input_1.0", "middle_0.0", "output_0.0", "output_1.0"]
    assert {layer.downscale for layer in layers} == {1}


def test_phrases_are_located_through_the_clip_tokenizer(sd15):
    from spatial_control.guidance.backends.comfy import locate_phrases

    _, clip, _ = sd15
    prompt = "a photo of a (red circle:1.2) left of a blue square"
    positions = locate_phrases(clip, prompt, ["red circle", "blue square", "square"])
    assert positions["red circle"] == [5, 6]  # start token, a, photo, of, a, red, circle
    assert positions["blue square"] == [10, 11]
    assert positions["square"] == [11]
    with pytest.raises(PhraseNotFoundError, match="'green triangle' is not in the prompt"):
        locate_phrases(clip, prompt, ["green triangle"])
    twice = "a red circle and a red circle"
    with pytest.raises(RepeatedPhraseError, match="'red circle': the phrase occurs 2 times"):
        locate_phrases(clip, twice, ["red circle"])
    assert locate_phrases(clip, twice, ["red circle"], first_of_several=True)["red circle"] == [2, 3]


def test_latent_gradient_through_a_stock_loaded_model_in_inference_mode(sd15):
    from spatial_control.guidance.backends.comfy import (
        cross_attention_layers,
        install_attention_capture,
        loaded_denoiser,
    )

    model, clip, _ = sd15
    layers = cross_attention_layers(model)
    patched = install_attention_capture(model, layers)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5

    def energy(store, denoised):
        return store.maps()[:, 2, :4].sum()

    with torch.inference_mode():
        positive = _encode(clip, "a red circle")
        with loaded_denoiser(patched, positive, x.shape) as (denoiser, cond):
            value, grad, denoised = energy_gradient(denoiser, x, torch.tensor([5.0]), cond, layers, energy)
            with gradients_enabled():
                store = AttentionStore(select_layers(layers, "coarse"))
                denoiser.denoise(x.clone(), torch.tensor([5.0]), cond, store)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not grad.is_inference()
    assert denoised.shape == x.shape
    assert [layer.name for layer in store.layers] == ["middle_0.0", "output_0.0", "output_1.0"]
    assert store.maps().shape == (2, 77, 8, 8)
    # each position's distribution over the 77 tokens sums to one
    assert torch.allclose(store.maps().sum(1), torch.ones(2, 8, 8), atol=1e-4)


def test_capture_wraps_an_existing_attn2_patch_and_keeps_its_output(sd15):
    from spatial_control.guidance.backends.comfy import (
        RegionCrossAttention,
        cross_attention_layers,
        install_attention_capture,
        loaded_denoiser,
    )

    model, clip, _ = sd15
    calls = []

    def zero_attention(q, k, v, extra_options):  # another pack's patch on the same slot
        calls.append(extra_options["block"])
        return torch.zeros_like(q)

    other = model.clone()
    other.set_model_attn2_replace(zero_attention, "middle", 0)
    layers = cross_attention_layers(other)
    patched = install_attention_capture(other, layers)
    slot = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    assert isinstance(slot, RegionCrossAttention) and slot.inner is zero_attention
    # installing twice does not stack a second capture (clone() deep-copies the patch object)
    again = install_attention_capture(patched, layers)
    again_slot = again.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    assert isinstance(again_slot, RegionCrossAttention) and again_slot.inner is zero_attention
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        positive = _encode(clip, "a red circle")
        with loaded_denoiser(patched, positive, x.shape) as (denoiser, cond), gradients_enabled():
            store = AttentionStore(layers)
            out_patched = denoiser.denoise(x, torch.tensor([2.0]), cond, store)
        with loaded_denoiser(other, positive, x.shape) as (denoiser, cond):
            out_other = denoiser.denoise(x, torch.tensor([2.0]), cond)
    assert ("middle", 0) in calls
    assert len(store.layers) == 4
    assert torch.allclose(out_patched, out_other, atol=1e-5)
    # the original MODEL was not touched by either clone
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_clear_errors_for_unusable_models_and_tokenizers(sd15):
    from spatial_control.guidance.backends.comfy import cross_attention_layers, locate_phrases

    model, clip, vae = sd15
    with pytest.raises(UnsupportedModelError, match="expected a diffusion MODEL"):
        cross_attention_layers(vae)

    class FakeDiT(torch.nn.Module):
        pass

    dit = model.clone()
    dit.model = type("M", (), {"diffusion_model": FakeDiT(), "model_config": model.model.model_config})()
    with pytest.raises(UnsupportedModelError, match="FakeDiT architecture is not supported"):
        cross_attention_layers(dit)

    class NoTextConfig:
        unet_config = {"context_dim": None}

    unconditional = model.clone()
    unconditional.model = type(
        "M", (), {"diffusion_model": model.model.diffusion_model, "model_config": NoTextConfig}
    )()
    with pytest.raises(UnsupportedModelError, match="no text cross-attention"):
        cross_attention_layers(unconditional)

    class T5Like:
        tokenizer = object()

    with pytest.raises(UnknownTokenizerError, match="no CLIP-BPE tokenizer"):
        locate_phrases(T5Like(), "a red circle", ["red circle"])


def test_attention_masking_patch_keeps_capture_and_refuses_foreign_patches(sd15):
    from spatial_control.guidance.attention_masking import RegionAttentionMask
    from spatial_control.guidance.backends.comfy import (
        RegionCrossAttention,
        cross_attention_layers,
        install_attention_capture,
        install_attention_masking,
        loaded_denoiser,
    )
    from spatial_control.guidance.errors import UnsupportedModelError
    from spatial_control.guidance.region_energies import RegionTarget
    from spatial_control.guidance.regions import box_mask

    model, clip, _ = sd15
    layers = cross_attention_layers(model)
    masking = RegionAttentionMask((RegionTarget((2, 3), box_mask((0.0, 0.0, 0.5, 1.0), 64, 64)),))
    captured = install_attention_capture(model, layers)
    masked = install_attention_masking(captured, layers, masking)
    slots = masked.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(isinstance(p, RegionCrossAttention) and p.masking is not None for p in slots.values())
    # masking first, capture second: the capture keeps the masking (one patch per slot)
    both = install_attention_capture(install_attention_masking(model, layers, masking), layers)
    assert all(
        p.masking is not None
        for p in both.model_options["transformer_options"]["patches_replace"]["attn2"].values()
    )
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        positive = _encode(clip, "a red circle and a blue square")
        outs, maps = [], []
        for patched in (captured, masked):
            with loaded_denoiser(patched, positive, x.shape) as (denoiser, cond), gradients_enabled():
                store = AttentionStore(layers)
                outs.append(denoiser.denoise(x, torch.tensor([2.0]), cond, store))
                maps.append(store.maps_by_layer[store.layers[0]])
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)  # masking changed the prediction
    assert torch.allclose(maps[0], maps[1], atol=1e-5)  # and the store still saw the unmasked maps
    foreign = model.clone()
    foreign.set_model_attn2_replace(lambda q, k, v, extra: q, "middle", 0)
    with pytest.raises(UnsupportedModelError, match="middle_0.0 already has another node's attention patch"):
        install_attention_masking(foreign, layers, masking)
