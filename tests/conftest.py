"""Shared fixtures: real ComfyUI in-process with this pack loaded, and cached random checkpoints."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

RANDOM_SD15 = "random_sd15.safetensors"


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI started headless in this process with the pack loaded (one per test session)."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from scripts.comfy_fixtures import FIXTURE_VERSION, build_random_sd15_checkpoint
    from scripts.comfy_headless import HeadlessComfyUI, cache_dir, quiet_comfy_logging

    quiet_comfy_logging()
    harness = HeadlessComfyUI(base_dir=tmp_path_factory.mktemp("comfy_base"))
    checkpoint = build_random_sd15_checkpoint(
        cache_dir() / "checkpoints" / f"random_sd15_v{FIXTURE_VERSION}.safetensors"
    )
    (harness.base_dir / "models" / "checkpoints" / RANDOM_SD15).symlink_to(checkpoint)
    return harness


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """The real ComfyUI server on a loopback port with the pack in custom_nodes/ (one per session)."""
    from scripts.comfy_server import ComfyServer

    with ComfyServer(tmp_path_factory.mktemp("comfy_server")) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def sd15(comfy):
    """(MODEL, CLIP, VAE) of the random SD1.5-shaped checkpoint, through the stock loader."""
    import torch

    loader = comfy.node_classes["CheckpointLoaderSimple"]()
    with torch.inference_mode():
        return loader.load_checkpoint(RANDOM_SD15)[:3]


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory):
    """Untrained demo-model weights in the committed file formats (loading tests need no training)."""
    from spatial_control.models.autoencoder import ShapeAutoencoder, save_autoencoder
    from spatial_control.models.demo_model import (
        AUTOENCODER_FILE,
        DEMO_TEXT_CONFIG,
        TEXT_ENCODER_FILE,
        UNET_FILE,
        save_demo_text_encoder,
        save_demo_unet,
    )
    from spatial_control.models.demo_unet import build_demo_unet
    from spatial_control.models.text_encoder import build_text_encoder

    folder = tmp_path_factory.mktemp("demo_weights")
    autoencoder = ShapeAutoencoder()
    autoencoder.latent_stats = {"mean": 0.0, "std": 0.5}
    save_autoencoder(autoencoder, folder / AUTOENCODER_FILE)
    preview = {"rgb_factors": [[0.1, 0.2, 0.3]] * 4, "rgb_bias": [0.0, 0.0, 0.0]}
    save_demo_unet(build_demo_unet(seed=1), folder / UNET_FILE, {"steps": 0}, preview)
    text = build_text_encoder(DEMO_TEXT_CONFIG, seed=2)
    save_demo_text_encoder(text, folder / TEXT_ENCODER_FILE, [49406, 49407, 320, 736, 2866], {"steps": 0})
    return folder


@pytest.fixture(scope="session")
def demo(comfy, demo_weights):
    """(MODEL, CLIP, VAE) of the untrained demo model, loaded as the pack's loader node does."""
    import torch

    from spatial_control.models.comfy_builder import load_demo_model

    with torch.inference_mode():
        return load_demo_model(demo_weights, [str(comfy.base_dir / "models" / "embeddings")])
