import pytest
import torch
import torch.nn.functional as F

from spatial_control.guidance.attention_store import (
    COND,
    UNCOND,
    AttentionStore,
    CrossAttentionLayer,
    attend,
    attention_probabilities,
    layer_grid,
    select_layers,
)
from spatial_control.guidance.errors import PhraseNotFoundError
from spatial_control.guidance.tokens import find_token_positions


def test_layer_grid_follows_strided_convolutions():
    assert layer_grid((16, 16), 256) == (16, 16, 1)
    assert layer_grid((16, 16), 16) == (4, 4, 4)
    assert layer_grid((9, 13), 5 * 7) == (5, 7, 2)  # ceil(9/2), ceil(13/2)
    with pytest.raises(ValueError):
        layer_grid((16, 16), 100)


def test_probabilities_and_attend_match_scaled_dot_product_attention():
    torch.manual_seed(0)
    b, n, t, heads, d = 2, 12, 7, 3, 8
    q, k, v = torch.randn(b, n, heads * d), torch.randn(b, t, heads * d), torch.randn(b, t, heads * d)
    probs = attention_probabilities(q, k, heads)
    assert probs.shape == (b * heads, n, t)
    assert torch.allclose(probs.sum(-1), torch.ones(b * heads, n))
    split = lambda z: z.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    ref = (
        F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, heads * d)
    )
    assert torch.allclose(attend(probs, v, heads), ref, atol=1e-5)


def test_store_averages_heads_splits_cond_uncond_and_normalises_resolution():
    store = AttentionStore()
    heads, tokens = 2, 5
    fine = torch.rand(2 * heads, 16, tokens).softmax(-1)  # batch 2: chunk 0 uncond, chunk 1 cond
    coarse = torch.rand(2 * heads, 4, tokens).softmax(-1)
    store.record(("output", 3, 0), fine, heads, (4, 4), chunks=[UNCOND, COND])
    store.record(("middle", 0, 0), coarse, heads, (4, 4), chunks=[UNCOND, COND])
    assert [layer.name for layer in store.layers] == ["middle_0.0", "output_3.0"]
    assert [layer.downscale for layer in store.layers] == [2, 1]
    cond = store.maps(which=COND)
    assert cond.shape == (1, tokens, 4, 4)
    expected_fine = fine.reshape(2, heads, 4, 4, tokens).mean(1).permute(0, 3, 1, 2)[1:]
    expected_coarse = coarse.reshape(2, heads, 2, 2, tokens).mean(1).permute(0, 3, 1, 2)[1:]
    expected = (expected_fine + F.interpolate(expected_coarse, size=(4, 4), mode="bilinear")) / 2
    assert torch.allclose(cond, expected, atol=1e-6)
    assert not torch.allclose(store.maps(which=UNCOND), cond)


def test_store_only_wants_selected_layers():
    store = AttentionStore([CrossAttentionLayer("middle", 0, 0, 8)])
    assert store.wants(("middle", 0, 0)) and not store.wants(("output", 3, 0))
    with pytest.raises(RuntimeError, match="no cross-attention"):
        store.maps()


def test_select_layers_presets_and_names():
    layers = [
        CrossAttentionLayer("input", 1, 0, 1),
        CrossAttentionLayer("input", 4, 0, 2),
        CrossAttentionLayer("middle", 0, 0, 4),
        CrossAttentionLayer("output", 3, 0, 4),
        CrossAttentionLayer("output", 6, 0, 2),
        CrossAttentionLayer("output", 9, 0, 1),
    ]
    names = lambda ls: [layer.name for layer in ls]  # noqa: E731
    assert names(select_layers(layers, "coarse")) == ["middle_0.0", "output_3.0", "output_6.0"]
    assert names(select_layers(layers, "input")) == ["input_1.0", "input_4.0"]
    assert names(select_layers(layers, "encoder")) == ["input_1.0", "input_4.0", "middle_0.0"]
    assert len(select_layers(layers, "all")) == 6
    assert names(select_layers(layers, "output_9.0, middle_0.0")) == ["output_9.0", "middle_0.0"]
    with pytest.raises(ValueError, match="output_7.0"):
        select_layers(layers, "output_7.0")


def test_find_token_positions_counts_across_chunks():
    chunks = [[49406, 1, 2, 3, 49407], [49406, 4, 5, 6, 49407]]
    assert find_token_positions(chunks, [2, 3]) == [2, 3]
    assert find_token_positions(chunks, [5]) == [7]
    with pytest.raises(PhraseNotFoundError):
        find_token_positions(chunks, [3, 4, 9])


def test_a_layer_recorded_twice_in_one_pass_appends_the_batch():
    store = AttentionStore()
    heads = 2
    first = torch.rand(1 * heads, 16, 5).softmax(-1)
    second = torch.rand(2 * heads, 16, 5).softmax(-1)
    store.record(("output", 3, 0), first, heads, (4, 4))
    store.record(("output", 3, 0), second, heads, (4, 4), chunks=[UNCOND, COND])
    assert store.maps(which=COND).shape == (2, 5, 4, 4)
    assert store.maps(which=UNCOND).shape == (1, 5, 4, 4)
