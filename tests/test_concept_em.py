"""Concept EM maths on tiny seeded models (no ComfyUI): the placeholder text encoder, the E-step's
mask estimation and refinement, and the EM loop's contract (determinism, budget, progress)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spatial_control.guidance.backends.diffusers import DiffusersDenoiser, discrete_sigmas
from spatial_control.guidance.concept_em import (
    ConceptEM,
    ConceptEMSettings,
    concept_words,
    estimate_masks,
    mask_overlap,
)
from spatial_control.guidance.concept_text import PlaceholderClip, TokenLayout
from spatial_control.guidance.mask_refinement import CRFSettings, dense_crf, otsu_levels

from .tiny_models import tiny_unet


@pytest.fixture(scope="module")
def text_model():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        max_position_embeddings=77, eos_token_id=49407, hidden_act="quick_gelu",
    )  # fmt: skip
    return CLIPTextModel(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokenizer():
    from scripts.comfy_headless import find_comfyui
    from spatial_control.models.text_encoder import load_clip_tokenizer

    return load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")


def _reference(text_model, ids, layer_index, norm):
    out = text_model(input_ids=ids, output_hidden_states=True)
    if layer_index is None:
        return out.last_hidden_state
    hidden = out.hidden_states[layer_index + 1 if layer_index >= 0 else layer_index]
    return text_model.final_layer_norm(hidden) if norm else hidden


@pytest.mark.parametrize("layer_index, norm", [(None, True), (-2, False), (1, True)])
def test_placeholder_with_a_words_embedding_encodes_like_the_word(text_model, tokenizer, layer_index, norm):
    clip = PlaceholderClip(text_model, tokenizer, TokenLayout(layer_index=layer_index, norm_hidden=norm))
    rows = torch.stack([clip.initial_row("circle"), clip.initial_row("square")])[:, None]
    hidden, positions = clip.encode(["a red", 0, "and a blue", 1], rows)
    ids, _ = clip.token_ids(["a red circle and a blue square"])
    assert positions == {0: [3], 1: [7]}
    assert torch.allclose(hidden, _reference(text_model, ids, layer_index, norm), atol=1e-5)


def test_placeholder_rows_receive_gradients_and_change_the_encoding(text_model, tokenizer):
    clip = PlaceholderClip(text_model, tokenizer)
    rows = clip.initial_row("object").repeat(1, 2, 1).clone().requires_grad_(True)
    hidden, positions = clip.encode(concept_words([0]), rows)
    assert positions == {0: [2, 3]}
    (hidden[0, 3] * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    moved, _ = clip.encode(concept_words([0]), rows.detach() + 1.0)
    assert not torch.allclose(moved[:, 2:], hidden[:, 2:].detach())
    assert torch.allclose(moved[:, :2], hidden[:, :2].detach())  # causal: earlier tokens unchanged


def test_multi_token_init_word_is_refused(text_model, tokenizer):
    with pytest.raises(ValueError, match="one token"):
        PlaceholderClip(text_model, tokenizer).initial_row("photorealistically")


def _scene(n=2, size=32):
    """Images with a bright square (concept 0) and a dim disc (concept 1) per image, and the coarse,
    blurred attention a latent grid would give them."""
    images = torch.full((n, 3, size, size), 0.15)
    truth = torch.zeros(n, 2, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        x0 = 4 + 3 * i
        truth[i, 0, 4:14, x0 : x0 + 10] = 1
        truth[i, 1] = (((yy - 22) ** 2 + (xx - 20 + i) ** 2) < 36).float()
    images = images + truth[:, :1] * torch.tensor([0.8, 0.1, 0.1])[:, None, None]
    images = images + truth[:, 1:] * torch.tensor([0.1, 0.1, 0.7])[:, None, None]
    coarse = torch.nn.functional.avg_pool2d(truth, 8)
    attention = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    attention = attention / attention.flatten(-2).amax(-1)[..., None, None]
    return images.clamp(0, 1), truth, attention


def test_masks_follow_attention_and_the_crf_snaps_them_to_the_image():
    images, truth, attention = _scene()
    plain = estimate_masks(attention, images, ConceptEMSettings(crf=None))
    refined = estimate_masks(attention, images, ConceptEMSettings())
    assert refined.shape == truth.shape and set(refined.unique().tolist()) <= {0.0, 1.0}
    assert (refined.sum(1) <= 1).all()  # one label per pixel
    assert mask_overlap(plain, truth).min() > 0.3
    assert mask_overlap(refined, truth).mean() > mask_overlap(plain, truth).mean() + 0.05
    assert mask_overlap(refined, truth).mean() > 0.75


def test_otsu_level_splits_a_bimodal_map():
    values = torch.cat([torch.full((90,), 0.1), torch.full((10,), 0.8)]).reshape(1, 10, 10)
    assert 0.1 < float(otsu_levels(values)) <= 0.8


def test_dense_crf_keeps_probabilities_normalised_and_works_below_full_size():
    images, truth, attention = _scene(size=48)
    probabilities = torch.cat([attention, torch.full_like(attention[:, :1], 0.5)], 1).softmax(1)
    q = dense_crf(probabilities, images, CRFSettings(work_size=24, iterations=3))
    assert q.shape == probabilities.shape
    assert torch.allclose(q.sum(1), torch.ones_like(q[:, 0]), atol=1e-4)


class _TinyText:
    """ConceptText over a tiny transformers CLIP, for the diffusers denoiser."""

    def __init__(self, text_model, tokenizer):
        self.clip = PlaceholderClip(text_model, tokenizer)

    def initial_embeddings(self, word, count, vectors=1):
        return {"clip_l": self.clip.initial_row(word).repeat(count, vectors, 1)}

    def encode(self, words, embeddings):
        return self.clip.encode(words, embeddings["clip_l"])


@pytest.fixture(scope="module")
def em_parts(text_model, tokenizer):
    unet = tiny_unet(seed=3).requires_grad_(False)
    denoiser = DiffusersDenoiser(unet)
    images, truth, _ = _scene(n=2, size=64)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return denoiser, _TinyText(text_model, tokenizer), latents, images, truth


def _em(parts, **settings):
    denoiser, text, *_ = parts
    small = ConceptEMSettings(warmup_steps=3, rounds=2, steps_per_round=2, vectors=2)
    return ConceptEM(
        denoiser, text, denoiser.layers, discrete_sigmas(), dataclasses.replace(small, **settings)
    )


def test_em_is_deterministic_under_its_seed_and_reports_progress(em_parts):
    _, _, latents, images, _ = em_parts
    calls = []
    first = _em(em_parts).run(latents, images, 2, "object", seed=5, on_step=lambda d, t: calls.append((d, t)))
    second = _em(em_parts).run(latents, images, 2, "object", seed=5)
    other = _em(em_parts).run(latents, images, 2, "object", seed=6)
    assert first.embeddings["clip_l"].shape == (2, 2, 32)
    assert torch.equal(first.embeddings["clip_l"], second.embeddings["clip_l"])
    assert not torch.equal(first.embeddings["clip_l"], other.embeddings["clip_l"])
    assert first.masks.shape == (2, 2, 64, 64) and first.attention.shape == (2, 2, 64, 64)
    assert calls[0] == (1, 7) and all(total == 7 for _, total in calls)
    assert first.history[0]["mask_iou"] is not None  # compared with the discovered first masks
    assert first.stopped in ("rounds", "stable")


def test_once_the_masks_are_stable_the_remaining_steps_train_the_tokens_without_new_masks(em_parts):
    _, _, latents, images, _ = em_parts
    calls = []
    stable = _em(em_parts, stable_iou=0.0, rounds=3).run(
        latents, images, 2, "object", seed=5, on_step=lambda d, t: calls.append(d)
    )
    assert stable.stopped == "stable"
    assert calls[-1] == 3 + 3 * 2  # every step of the budget trained
    assert [h["mask_iou"] is None for h in stable.history] == [False, True, True, True]  # E-steps ended
    never = _em(em_parts, stable_iou=1.01, rounds=3).run(latents, images, 2, "object", seed=5)
    assert never.stopped == "rounds" and all(h["mask_iou"] is not None for h in never.history)
    assert not torch.equal(stable.embeddings["clip_l"], never.embeddings["clip_l"])


def test_without_discovery_the_first_round_is_textual_inversion(em_parts):
    _, _, latents, images, _ = em_parts
    result = _em(em_parts, discover=False).run(latents, images, 2, "object", seed=5)
    assert result.history[0]["mask_iou"] is None  # no masks before the first E-step
    assert result.masks.shape == (2, 2, 64, 64)


def test_em_moves_the_embeddings_from_the_init_word(em_parts):
    denoiser, text, latents, images, _ = em_parts
    start = text.initial_embeddings("object", 2, 2)["clip_l"]
    result = _em(em_parts, init_noise=0.0, learning_rate=0.05).run(latents, images, 2, "object")
    assert (result.embeddings["clip_l"] - start).norm() > 0.1


def test_budget_ends_the_run_after_a_last_mask_estimate(em_parts):
    _, _, latents, images, _ = em_parts
    result = _em(em_parts, warmup_steps=50).run(latents, images, 2, "object", budget_seconds=0.0)
    assert result.stopped == "budget" and result.rounds == 1 and result.masks.shape == (2, 2, 64, 64)


def test_without_refinement_the_first_attention_pass_is_kept(em_parts):
    _, _, latents, images, truth = em_parts
    first_pass = _em(em_parts, rounds=0).run(latents, images, 2, "object", seed=1, initial_masks=truth)
    kept = _em(em_parts, refine_masks=False).run(latents, images, 2, "object", seed=1, initial_masks=truth)
    assert all(h["mask_iou"] is not None for h in kept.history)  # every round compared with masks
    assert kept.rounds == 3 and torch.equal(kept.masks, first_pass.masks)


def test_a_mask_keeps_only_its_part_that_holds_the_attention_peak():
    images, truth, attention = _scene()
    stray = attention.clone()
    stray[:, 0, 22:32, :] = 0.8  # concept 0's token also attends, less, to a larger patch elsewhere
    loose = estimate_masks(stray, images, ConceptEMSettings(one_component=False, crf=None))
    kept = estimate_masks(stray, images, ConceptEMSettings(crf=None))
    assert (loose[:, 0, 22:32].sum((1, 2)) > truth[:, 0].sum((1, 2))).all()  # larger than the square
    assert kept[:, 0, 22:32].sum() == 0
    assert torch.equal(kept[:, 0, :16], loose[:, 0, :16])  # the square itself is untouched


class _OneObjectDenoiser:
    """Predicts the clean latent exactly on ``region`` when the prompt names concept 0, and nothing
    (the noisy input) elsewhere or for any other prompt: concept 0 explains that object only."""

    def __init__(self, x0, region):
        self.x0, self.region = x0, region

    def denoise(self, x, sigma, cond, store=None):
        return torch.where(self.region.bool() & (0 in cond), self.x0, x)


class _WordsText:
    def encode(self, words, embeddings):
        return list(words), {}


def test_object_likelihoods_favour_the_object_whose_denoising_the_concept_prompt_improves():
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    left, right = torch.zeros(8, 8), torch.zeros(8, 8)
    left[:, :4], right[:, 4:] = 1, 1
    em = ConceptEM(_OneObjectDenoiser(x0, right), _WordsText(), [], discrete_sigmas())
    objects = [(torch.stack([left, right]), torch.zeros(2, 3))]
    evidence = em.object_likelihoods(x0, {}, 2, "object", objects, torch.Generator().manual_seed(0))
    assert evidence[0].shape == (2, 2)
    assert torch.allclose(evidence[0].sum(-1), torch.ones(2))
    assert evidence[0][0, 1] > 0.99  # concept 0: the right object
    assert torch.allclose(evidence[0][1], torch.full((2,), 0.5))  # concept 1 explains nothing: no preference
