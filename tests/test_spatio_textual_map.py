"""SpaText's trained path, the maths: the spatio-textual map, the widened UNet, the prior."""

import torch

from spatial_control.guidance.spatio_textual_map import (
    embedding_scale,
    isolate_segments,
    resize_map,
    spatio_textual_map,
)
from spatial_control.models.spatio_textual import EmbeddingPrior, PriorConfig, map_channels, widen_unet_input
from tests.tiny_models import tiny_unet


def _masks() -> torch.Tensor:
    masks = torch.zeros(2, 32, 32)
    masks[0, :16, :16] = 1
    masks[1, 16:, 8:] = 1
    return masks


def test_each_region_holds_its_scaled_unit_embedding_and_the_rest_is_null():
    embeddings = torch.randn(2, 8)
    st_map = spatio_textual_map(_masks(), embeddings, (32, 32))
    unit = torch.nn.functional.normalize(embeddings, dim=-1) * embedding_scale(8)
    assert torch.allclose(st_map[:, 3, 3], unit[0]) and torch.allclose(st_map[:, 20, 20], unit[1])
    assert st_map[:, 3, 28].abs().max() == 0  # in no region
    assert torch.allclose(st_map.pow(2).mean(0)[3, 3], torch.tensor(1.0))  # unit mean square per channel
    assert spatio_textual_map(torch.zeros(0, 32, 32), torch.zeros(0, 8), (4, 4)).abs().max() == 0


def test_building_small_equals_resizing_the_full_map():
    embeddings = torch.randn(2, 8)
    small = spatio_textual_map(_masks(), embeddings, (8, 8))
    full = spatio_textual_map(_masks(), embeddings, (32, 32))
    assert torch.allclose(resize_map(full[None], (8, 8))[0], small, atol=1e-6)
    # cells of 16x8 pixels: the first region fills cells (0, 0) and (0, 1), nothing of row 1
    half = spatio_textual_map(_masks()[:1], embeddings[:1], (2, 4))
    assert torch.allclose(half[:, 0, 0], half[:, 0, 1]) and half[:, 1, 0].abs().max() == 0


def test_segments_keep_only_their_pixels():
    image = torch.rand(3, 32, 32)
    segments = isolate_segments(image, _masks(), fill=0.5)
    assert torch.equal(segments[0, :, :16, :16], image[:, :16, :16])
    assert torch.all(segments[0, :, 20:, 20:] == 0.5)
    assert torch.equal(segments[1, :, 20, 20], image[:, 20, 20])


def test_the_widened_unet_starts_as_the_original_for_any_map():
    unet = tiny_unet()
    wide = widen_unet_input(unet, 8).eval()
    assert map_channels(dict(wide.config)) == 8
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        plain = unet(x, t, context).sample
        widened = wide(torch.cat([x, torch.randn(2, 8, 16, 16)], 1), t, context).sample
    assert torch.allclose(plain, widened, atol=1e-5)


def test_the_prior_starts_as_the_identity_and_returns_unit_vectors():
    prior = EmbeddingPrior(PriorConfig(dim=16, hidden=32))
    text = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    assert torch.allclose(prior(text), text, atol=1e-6)
    with torch.no_grad():
        prior.blocks[0][-1].weight.normal_()
    assert torch.allclose(prior(text).norm(dim=-1), torch.ones(5))
