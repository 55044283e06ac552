"""A MODEL patched by the pack stays a normal MODEL for the stock KSampler, with no state leaking
between runs or into the unpatched MODEL."""

import pytest
import torch

from spatial_control.guidance.latent_gradient import energy_gradient

pytestmark = pytest.mark.comfyui


def _sample(comfy, model, clip, seed=7, steps=4, sampler="euler"):
    encode = comfy.node_classes["CLIPTextEncode"]()
    empty = comfy.node_classes["EmptyLatentImage"]()
    ksampler = comfy.node_classes["KSampler"]()
    with torch.inference_mode():
        positive = encode.encode(clip, "a red circle left of a blue square")[0]
        negative = encode.encode(clip, "")[0]
        latent = empty.generate(64, 64, 1)[0]
        (out,) = ksampler.sample(model, seed, steps, 4.0, sampler, "normal", positive, negative, latent)
    return out["samples"].clone()


def _guided(model, steps_seen):
    from spatial_control.guidance.backends.comfy import (
        cross_attention_layers,
        install_attention_capture,
        with_latent_guidance,
    )

    layers = cross_attention_layers(model)
    target = torch.zeros(8, 8)
    target[:, :4] = 1

    def energy(store, denoised):
        maps = store.maps()[:, 2]  # "red"
        return ((1 - (maps * target).sum((-2, -1)) / maps.sum((-2, -1))) ** 2).sum()

    def guide(denoiser, x, sigma, cond, sample_sigmas, alternatives=None, start_is_noise=True):
        value, grad, _ = energy_gradient(denoiser, x, sigma, cond, layers, energy)
        steps_seen.append(float(value))
        return x - 30 * sigma.reshape(-1, 1, 1, 1) ** 2 * grad

    return with_latent_guidance(install_attention_capture(model, layers), guide)


def test_patched_model_runs_in_the_stock_ksampler_deterministically(comfy, sd15):
    model, clip, _ = sd15
    baseline = _sample(comfy, model, clip)
    seen = []
    guided_model = _guided(model, seen)
    first = _sample(comfy, guided_model, clip)
    assert len(seen) == 4  # one gradient step per sampling step, computed under ComfyUI's inference mode
    second = _sample(comfy, guided_model, clip)
    assert torch.equal(first, second)
    assert not torch.allclose(first, baseline, atol=1e-3)  # the guidance moved the latent
    # the MODEL the patch was made from is untouched: same result as before patching
    assert torch.equal(_sample(comfy, model, clip), baseline)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddim"])
def test_capture_patch_alone_does_not_change_sampling(comfy, sd15, sampler):
    from spatial_control.guidance.backends.comfy import cross_attention_layers, install_attention_capture

    model, clip, _ = sd15
    captured = install_attention_capture(model, cross_attention_layers(model))
    assert torch.allclose(
        _sample(comfy, captured, clip, sampler=sampler),
        _sample(comfy, model, clip, sampler=sampler),
        atol=1e-5,
    )


def test_graph_with_the_stock_nodes_runs_twice_with_identical_images(comfy):
    import numpy as np
    from PIL import Image

    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": 3,
                "steps": 3,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "twice"}},
    }
    first = comfy.run(graph, fresh=True)
    second = comfy.run(graph, fresh=True)
    a = [np.asarray(Image.open(p)) for p in first.images(comfy.output_dir)]
    b = [np.asarray(Image.open(p)) for p in second.images(comfy.output_dir)]
    assert len(a) == 2 and all(x.shape == (64, 64, 3) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(node == "5" for node, *_ in first.progress)  # the KSampler reported progress
