"""ShapeCLIP: feature shapes and normalisation, file round trip and errors, and (when the trained weights
exist) zero-shot colour+shape accuracy and caption-vs-one-word-changed preference on eval scenes."""

from __future__ import annotations

import pytest
import torch

from spatial_control.models.shape_clip import (
    DEFAULT_WEIGHTS,
    REBUILD_COMMAND,
    ShapeCLIP,
    ShapeCLIPConfig,
    caption_token_ids,
    clip_score,
    load_shape_clip,
    save_shape_clip,
)
from spatial_control.models.text_encoder import tokenize

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    from scripts.train_shape_clip import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="module")
def small_model(tokenizer):
    torch.manual_seed(0)
    config = ShapeCLIPConfig(
        image_channels=(16, 32, 32),
        text_width=32,
        text_layers=1,
        text_heads=2,
        embed_dim=24,
        token_ids=caption_token_ids(tokenizer),
    )
    return ShapeCLIP(config).eval()


@pytest.fixture(scope="module")
def trained():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{DEFAULT_WEIGHTS} not built (run `{REBUILD_COMMAND}`)")
    return load_shape_clip(DEFAULT_WEIGHTS)


def test_features_are_unit_vectors_of_embed_dim(small_model, tokenizer):
    with torch.no_grad():
        for size in (64, 128, 96):
            features = small_model.encode_image(torch.rand(3, 3, size, size))
            assert features.shape == (3, 24)
            torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
        text = small_model.encode_text(tokenize(tokenizer, ["a red circle", "a small blue square and a dog"]))
    assert text.shape == (2, 24)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2))


def test_text_features_ignore_padding_and_unknown_words_share_a_row(small_model, tokenizer):
    tokens = tokenize(tokenizer, ["a red circle", "a red circle", "a zebra", "a giraffe"])
    tokens[1, 6:] = 0  # anything after the first end token
    with torch.no_grad():
        features = small_model.encode_text(tokens)
    torch.testing.assert_close(features[0], features[1])
    torch.testing.assert_close(features[2], features[3])


def test_bad_inputs_are_rejected(small_model):
    with pytest.raises(ValueError, match="divisible by 8"):
        small_model.encode_image(torch.rand(1, 3, 60, 60))
    with pytest.raises(ValueError, match="end token"):
        small_model.encode_text(torch.full((1, 77), 320))


def test_clip_score_is_clipped_cosine_times_100(small_model, tokenizer):
    images = torch.rand(2, 3, 64, 64)
    texts = ["a red circle", "a blue cross"]
    scores = clip_score(small_model, images, texts, tokenizer)
    with torch.no_grad():
        text_features = small_model.encode_text(tokenize(tokenizer, texts))
        cosine = (small_model.encode_image(images) * text_features).sum(dim=1)
    torch.testing.assert_close(scores, (100 * cosine).clamp(min=0))
    with pytest.raises(ValueError):
        clip_score(small_model, images, texts[:1], tokenizer)


def test_save_load_round_trip(small_model, tmp_path, tokenizer):
    path = tmp_path / "clip.safetensors"
    save_shape_clip(small_model, path, {"training": {"steps": 3}})
    loaded = load_shape_clip(path)
    assert loaded.config == small_model.config
    assert loaded.info["training"]["steps"] == 3
    images, tokens = torch.rand(2, 3, 64, 64), tokenize(tokenizer, ["a red circle", "a large green cross"])
    with torch.no_grad():
        pairs = [
            (loaded.encode_image(images), small_model.encode_image(images)),
            (loaded.encode_text(tokens), small_model.encode_text(tokens)),
        ]
    for reloaded, original in pairs:  # fp16 storage: equal to fp16 precision
        torch.testing.assert_close(reloaded, original, atol=3e-3, rtol=0)


def test_missing_and_corrupt_files_name_the_file_and_the_rebuild_command(small_model, tmp_path):
    path = tmp_path / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match="clip.safetensors") as missing:
        load_shape_clip(path)
    assert REBUILD_COMMAND in str(missing.value)

    save_shape_clip(small_model, path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"clip\.json"):
        load_shape_clip(path)

    save_shape_clip(small_model, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="clip.safetensors") as corrupt:
        load_shape_clip(path)
    assert REBUILD_COMMAND in str(corrupt.value)

    save_shape_clip(small_model, path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"clip\.json") as bad_json:
        load_shape_clip(path)
    assert REBUILD_COMMAND in str(bad_json.value)


def test_exported_weights_fit_the_size_budget(trained):
    assert DEFAULT_WEIGHTS.stat().st_size <= 5_000_000
    assert trained.info["training"]["steps"] > 0


def test_trained_zero_shot_colour_and_shape_accuracy(trained, tokenizer):
    from scripts.train_shape_clip import TokenCache, zero_shot_accuracy

    assert zero_shot_accuracy(trained, TokenCache(tokenizer), count=100) >= 0.9


def test_trained_prefers_true_caption_over_one_word_change(trained, tokenizer):
    from scripts.train_shape_clip import TokenCache, multi_object_win_rate

    assert multi_object_win_rate(trained, TokenCache(tokenizer), count=100) >= 0.8
