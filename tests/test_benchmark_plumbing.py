"""The shape_world benchmark's code runs end to end (on untrained weights: only the plumbing and
the ranges of the figures are checked here; the figures themselves come from `python -m benchmarks`)."""

import pytest

pytestmark = pytest.mark.comfyui


def test_autoencoder_figures(demo_weights):
    from benchmarks.bench_shape_world import autoencoder_figures

    figures = autoencoder_figures(4, demo_weights)
    assert figures["ae_psnr"] > 0 and 0 <= figures["ae_success_ratio"] <= 1


def test_generation_figures(comfy, demo_weights):
    from benchmarks.bench_shape_world import generation_figures
    from benchmarks.comfy_generation import DemoModelSession

    figures = generation_figures(DemoModelSession(demo_weights, comfy=comfy), n=2)
    for k in (1, 2, 3, 4):
        assert 0 <= figures[f"success_{k}obj"] <= 1
    assert 0 <= figures["floor_success_1obj"] <= 1
    assert figures["placement_unguided"]["objects"] >= 4
    assert 0 <= figures["placement_unguided"]["hit_rate"] <= 1
