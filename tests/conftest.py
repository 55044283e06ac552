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
def sd15(comfy):
    """(MODEL, CLIP, VAE) of the random SD1.5-shaped checkpoint, through the stock loader."""
    import torch

    loader = comfy.node_classes["CheckpointLoaderSimple"]()
    with torch.inference_mode():
        return loader.load_checkpoint(RANDOM_SD15)[:3]
