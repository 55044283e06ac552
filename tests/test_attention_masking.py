"""Regional cross-attention masking: the score bias, the masked softmax, and both backends' patches."""

import math

import pytest
import torch

from spatial_control.guidance.attention_masking import BLOCKED, RegionAttentionMask
from spatial_control.guidance.attention_store import COND, UNCOND, attention_probabilities
from spatial_control.guidance.region_energies import RegionTarget
from spatial_control.guidance.regions import box_mask

LEFT_HALF = box_mask((0.0, 0.0, 0.5, 1.0), 32, 32)


def _mask(**kwargs) -> RegionAttentionMask:
    return RegionAttentionMask((RegionTarget((2, 3), LEFT_HALF),), **kwargs)


def test_region_tokens_are_blocked_outside_their_region_only():
    bias = _mask().scores_bias(positions=16, latent_hw=(4, 4), tokens=6).reshape(4, 4, 6)
    assert torch.all(bias[:, :2, 2:4] == 0)  # inside the region: free
    assert torch.all(bias[:, 2:, 2:4] == BLOCKED)  # outside: blocked
    assert torch.all(bias[..., [0, 1, 4, 5]] == 0)  # other tokens: untouched everywhere


def test_a_cell_the_region_half_covers_gets_log_one_half():
    third = RegionAttentionMask((RegionTarget((1,), box_mask((0.0, 0.0, 0.25, 1.0), 32, 32)),))
    bias = third.scores_bias(positions=4, latent_hw=(2, 2), tokens=3).reshape(2, 2, 3)
    assert bias[0, 0, 1].item() == pytest.approx(math.log(0.5))
    assert bias[0, 1, 1].item() == BLOCKED


def test_two_regions_sharing_a_token_allow_it_inside_either():
    right = box_mask((0.5, 0.0, 1.0, 1.0), 32, 32)
    masking = RegionAttentionMask((RegionTarget((1, 2), LEFT_HALF), RegionTarget((2,), right)))
    bias = masking.scores_bias(positions=16, latent_hw=(4, 4), tokens=3).reshape(4, 4, 3)
    assert torch.all(bias[..., 2] == 0)
    assert torch.all(bias[:, 2:, 1] == BLOCKED)


def test_only_conditional_rows_are_masked():
    labels = torch.tensor([COND, UNCOND])
    bias = _mask().batch_bias(16, (4, 4), 6, labels)
    assert bias.shape == (2, 16, 6)
    assert bias[0].min() == BLOCKED and torch.all(bias[1] == 0)


def test_masked_attention_puts_no_mass_on_blocked_tokens():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 16, 8, generator=gen), torch.randn(1, 6, 8, generator=gen)
    bias = _mask().batch_bias(16, (4, 4), 6, torch.tensor([COND]))
    probs = attention_probabilities(q, k, heads=2, bias=bias).reshape(2, 4, 4, 6)
    plain = attention_probabilities(q, k, heads=2).reshape(2, 4, 4, 6)
    assert probs[:, :, 2:, 2:4].max() < 1e-10 < plain[:, :, 2:, 2:4].min()
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 4))
    # inside the region, the same scores renormalise over the same tokens: nothing changes there
    assert torch.allclose(probs[:, :, :2], plain[:, :, :2], atol=1e-6)


def test_masking_acts_in_its_steps_only_and_checks_its_settings():
    masking = _mask(start_at=0.0, end_at=0.3)
    assert masking.active(0.0) and masking.active(0.25) and not masking.active(0.3)
    assert masking.active(None)  # a probe outside a sampler
    with pytest.raises(ValueError, match="start_at <= end_at"):
        _mask(start_at=0.5, end_at=0.2)
    with pytest.raises(ValueError, match="at least one region"):
        RegionAttentionMask(())


def test_diffusers_denoiser_masks_and_still_records_unmasked_maps():
    from spatial_control.guidance.attention_store import AttentionStore
    from spatial_control.guidance.backends.diffusers import DiffusersDenoiser
    from tests.tiny_models import tiny_unet

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=gen) * 3
    cond = torch.randn(1, 77, 32, generator=gen)
    sigma = torch.tensor([3.0])
    plain, masked = (
        DiffusersDenoiser(tiny_unet(seed=2)),
        DiffusersDenoiser(tiny_unet(seed=2), masking=_mask()),
    )
    stores = [AttentionStore(), AttentionStore()]
    with torch.no_grad():
        out_plain = plain.denoise(x, sigma, cond, stores[0])
        out_masked = masked.denoise(x, sigma, cond, stores[1])
    assert not torch.allclose(out_plain, out_masked, atol=1e-5)
    first = stores[0].layers[0]  # before any masked output: the same input, the same (unmasked) maps
    assert torch.allclose(stores[0].maps_by_layer[first], stores[1].maps_by_layer[first], atol=1e-6)


def test_the_prompt_words_a_region_text_shares_are_found_across_chunks():
    from spatial_control.guidance.tokens import shared_token_positions

    start, end, a, red, circle, blue = 1, 2, 10, 11, 12, 13
    chunks = [[start, a, red, circle, a, blue, end], [start, red, end, end, end, end, end]]
    assert shared_token_positions(chunks, [a, red, circle], skip_ids=[start, end, a]) == [2, 3, 8]
    assert shared_token_positions(chunks, [blue], skip_ids=[start, end, a]) == [5]
    assert shared_token_positions(chunks, [a], skip_ids=[a]) == []
