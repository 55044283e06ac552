"""The same weights in ComfyUI and in diffusers give the same maps and the same latent gradient.

Tolerance (fp32, CPU): maps agree to 1e-5 absolute, gradients to 1e-4 relative to their largest
entry. Both run under ``torch.inference_mode()``, as ComfyUI executes prompts.
"""

import pytest
import torch

from spatial_control.guidance.attention_store import AttentionStore, select_layers
from spatial_control.guidance.backends.diffusers import DiffusersDenoiser, discrete_sigmas, sigma_to_timestep
from spatial_control.guidance.latent_gradient import energy_gradient, gradients_enabled
from tests.tiny_models import tiny_unet

pytestmark = pytest.mark.comfyui


def _energy(token: int, target: torch.Tensor):
    def energy(store, denoised):
        maps = store.maps()[:, token]
        inside = (maps * target).sum((-2, -1)) / maps.sum((-2, -1))
        return ((1 - inside) ** 2).sum()

    return energy


@pytest.fixture(scope="module")
def pair(comfy):
    from spatial_control.guidance.backends.comfy import cross_attention_layers, install_attention_capture
    from spatial_control.models.comfy_builder import build_comfy_model

    unet = tiny_unet(seed=3)
    model = build_comfy_model(unet.state_dict(), unet.config)
    layers = cross_attention_layers(model)
    return unet, install_attention_capture(model, layers), layers


def test_layers_have_the_same_names_and_resolutions(pair):
    unet, model, layers = pair
    assert sorted(DiffusersDenoiser(unet).layers) == sorted(layers)
    # the mid block (4x down) and the decoder's first cross-attention level (2x down)
    assert [layer.name for layer in select_layers(layers, "coarse")] == [
        "middle_0.0",
        "output_2.0",
        "output_3.0",
    ]


def test_timesteps_match_comfy_model_sampling(pair):
    _, model, _ = pair
    sigmas = torch.tensor([0.03, 0.5, 1.0, 3.7, 14.0])
    comfy_t = model.model.model_sampling.timestep(sigmas)
    assert torch.allclose(sigma_to_timestep(sigmas, discrete_sigmas()), comfy_t.float())


@pytest.mark.parametrize("sigma", [0.8, 6.0])
def test_same_maps_and_latent_gradient(pair, sigma):
    from spatial_control.guidance.backends.comfy import loaded_denoiser

    unet, model, layers = pair
    gen = torch.Generator().manual_seed(1)
    context = torch.randn(1, 77, 32, generator=gen)
    x = torch.randn(1, 4, 16, 16, generator=gen) * sigma
    target = torch.zeros(16, 16)
    target[2:9, 4:12] = 1
    energy = _energy(token=5, target=target)
    sigma_t = torch.tensor([sigma])
    with torch.inference_mode():
        with loaded_denoiser(model, [[context, {}]], x.shape) as (comfy_denoiser, cond):
            e_c, g_c, d_c = energy_gradient(comfy_denoiser, x, sigma_t, cond, layers, energy)
            with gradients_enabled():
                comfy_store = AttentionStore(layers)
                comfy_denoiser.denoise(x.clone(), sigma_t, cond, comfy_store)
        diffusers_denoiser = DiffusersDenoiser(unet)
        e_d, g_d, d_d = energy_gradient(diffusers_denoiser, x, sigma_t, context, layers, energy)
        with gradients_enabled():
            diffusers_store = AttentionStore(layers)
            diffusers_denoiser.denoise(x.clone(), sigma_t, context, diffusers_store)

    assert set(comfy_store.maps_by_layer) == set(diffusers_store.maps_by_layer) == set(layers)
    for layer in layers:
        a, b = comfy_store.maps_by_layer[layer], diffusers_store.maps_by_layer[layer]
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), layer.name
    assert torch.allclose(d_c, d_d, atol=1e-4)
    assert torch.allclose(e_c, e_d, atol=1e-5)
    assert g_c.abs().max() > 0 and torch.isfinite(g_c).all()
    assert (g_c - g_d).abs().max() <= 1e-4 * g_d.abs().max()
