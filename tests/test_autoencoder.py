"""The demo model's autoencoder: shapes, ranges, save/load, clear errors, and the trained weights' quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.shape_world.generator import split_scene
from benchmarks.shape_world.metrics import detect_objects, psnr, whole_image_success
from spatial_control.models.autoencoder import (
    DEFAULT_WEIGHTS,
    REBUILD_COMMAND,
    AutoencoderConfig,
    ShapeAutoencoder,
    load_autoencoder,
    save_autoencoder,
)
from spatial_control.models.weights_io import meta_path

SMALL = AutoencoderConfig(
    encoder_channels=(32, 32), encoder_blocks=(1, 1), decoder_channels=(32, 32), decoder_blocks=(1, 1)
)


@pytest.fixture(scope="module")
def small_model() -> ShapeAutoencoder:
    torch.manual_seed(0)
    model = ShapeAutoencoder(SMALL).eval()
    for p in model.parameters():  # the zero-initialised residual branches would hide bugs
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_default_config_has_stable_diffusions_latent_geometry():
    config = AutoencoderConfig()
    assert config.downscale_factor == 8
    assert config.latent_channels == 4


@pytest.mark.parametrize("height, width", [(128, 128), (64, 96), (136, 72), (8, 8)])
def test_latent_is_one_eighth_of_the_image(small_model, height, width):
    x = torch.rand(2, 3, height, width) * 2 - 1
    with torch.no_grad():
        z = small_model.encode(x)
        y = small_model.decode(z)
    assert z.shape == (2, 4, height // 8, width // 8)
    assert y.shape == x.shape


def test_default_model_maps_128_to_4x16x16():
    with torch.no_grad():
        z = ShapeAutoencoder().encode(torch.zeros(1, 3, 128, 128))
    assert z.shape == (1, 4, 16, 16)


def test_sizes_not_divisible_by_8_are_rejected(small_model):
    with pytest.raises(ValueError, match="divisible by 8"):
        small_model.encode(torch.zeros(1, 3, 100, 128))


def test_round_trip_of_random_model_is_finite_and_in_range(small_model):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = small_model.encode(x)
        y = small_model(x)
    assert torch.isfinite(z).all()
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1


def test_save_load_round_trip(small_model, tmp_path):
    path = tmp_path / "ae.safetensors"
    small_model.latent_stats = {"mean": 0.1, "std": 2.0}
    save_autoencoder(small_model, path, {"training": {"steps": 3}})
    loaded = load_autoencoder(path)
    assert loaded.config == SMALL
    assert loaded.latent_stats == {"mean": 0.1, "std": 2.0}
    assert json.loads(meta_path(path).read_text())["training"] == {"steps": 3}
    original = small_model.state_dict()
    for name, value in loaded.state_dict().items():  # stored as fp16
        assert torch.equal(value, original[name].half().float()), name
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = small_model(x), loaded(x)
    assert torch.allclose(a, b, atol=2e-2)


def test_missing_file_names_the_file_and_the_rebuild_script(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_autoencoder(path)
    assert "nowhere" in str(err.value) and REBUILD_COMMAND in str(err.value)


@pytest.mark.parametrize("broken", ["weights", "config"])
def test_corrupt_file_names_the_file_and_the_rebuild_script(small_model, tmp_path, broken):
    path = tmp_path / "ae.safetensors"
    save_autoencoder(small_model, path)
    target = path if broken == "weights" else meta_path(path)
    target.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError) as err:
        load_autoencoder(path)
    assert target.name in str(err.value) and REBUILD_COMMAND in str(err.value)


def test_weights_that_do_not_match_the_config_are_rejected(small_model, tmp_path):
    path = tmp_path / "ae.safetensors"
    save_autoencoder(small_model, path)
    meta = json.loads(meta_path(path).read_text())
    meta["config"]["decoder_blocks"] = [2, 2]
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match"):
        load_autoencoder(path)


# ---------------------------------------------------------------------------------- trained weights
@pytest.fixture(scope="module")
def reconstructions():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{DEFAULT_WEIGHTS} not built yet (run `{REBUILD_COMMAND}`)")
    model = load_autoencoder(DEFAULT_WEIGHTS)
    scenes = [split_scene("eval", i) for i in range(8)]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = model(x)
    recon = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return scenes, recon


def test_trained_weights_reconstruct_eval_scenes_above_32_db(reconstructions):
    scenes, recon = reconstructions
    assert any(len(s.objects) >= 3 for s in scenes)
    originals = np.stack([s.image for s in scenes])
    assert psnr(recon.reshape(-1, 128, 3), originals.reshape(-1, 128, 3)) >= 32.0


def test_trained_weights_keep_shapes(reconstructions):
    scenes, recon = reconstructions

    def shape_metrics(images):
        detections = [detect_objects(image) for image in images]
        success = sum(whole_image_success(d, s.objects) for d, s in zip(detections, scenes, strict=True))
        scores = [d.score for found in detections for d in found]
        return success, float(np.mean(scores))

    success, score = shape_metrics(recon)
    success_ref, score_ref = shape_metrics([s.image for s in scenes])
    assert success >= 0.98 * success_ref
    assert score >= 0.98 * score_ref
