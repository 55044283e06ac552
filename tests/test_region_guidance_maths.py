"""Regions, region energies, per-region CFG and the backward-guidance update (plain torch)."""

import pytest
import torch

from spatial_control.guidance.attention_store import CrossAttentionLayer
from spatial_control.guidance.backends.diffusers import DiffusersDenoiser
from spatial_control.guidance.backward_guidance import BackwardGuidance
from spatial_control.guidance.region_energies import (
    EnergyWeights,
    RegionTarget,
    boxdiff_energy,
    extent_energy,
    layout_energy,
    presence_energy,
    region_energy,
)
from spatial_control.guidance.regional_cfg import region_guidance_term
from spatial_control.guidance.regions import Region, box_mask, mask_box, resize_mask, scale_mask
from spatial_control.guidance.schedule import step_fraction
from tests.tiny_models import tiny_unet


def test_box_mask_and_its_box_round_trip():
    mask = box_mask((0.25, 0.5, 0.75, 1.0), 8, 16)
    assert mask.shape == (8, 16)
    assert mask[4:, 4:12].all() and mask.sum() == 4 * 8
    assert mask_box(mask) == (0.25, 0.5, 0.75, 1.0)
    assert box_mask((0.5, 0.5, 0.51, 0.51), 4, 4).sum() == 1  # thinner than a pixel: one pixel
    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 1"):
        box_mask((0.5, 0.2, 0.4, 0.6), 8, 8)


def test_resize_mask_averages_area():
    mask = box_mask((0.0, 0.0, 0.5, 0.5), 64, 64)
    small = resize_mask(mask, (4, 4))
    assert torch.equal(small, torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    odd = resize_mask(box_mask((0.0, 0.0, 0.3, 1.0), 3, 3), (2, 2))  # sizes that do not divide
    assert odd[0, 0] == 0.5 and odd[0, 1] == 0


def test_scale_mask_shrinks_about_the_centre_of_mass():
    box = box_mask((0.25, 0.25, 0.75, 0.75), 64, 64)
    assert mask_box(scale_mask(box, 0.5)) == (0.375, 0.375, 0.625, 0.625)
    off_centre = box_mask((0.0, 0.5, 0.5, 1.0), 64, 64)
    shrunk = scale_mask(off_centre, 0.8)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def centre(m):
        return float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())

    assert centre(shrunk) == pytest.approx(centre(off_centre), abs=0.05)
    assert float(shrunk.sum()) == pytest.approx(0.64 * float(off_centre.sum()), rel=0.03)
    assert scale_mask(off_centre, 1.0) is off_centre
    with pytest.raises(ValueError, match="scale factor"):
        scale_mask(off_centre, 0.0)


def test_region_rejects_empty_masks_and_phrases():
    with pytest.raises(ValueError, match="empty"):
        Region("red circle", torch.zeros(4, 4))
    with pytest.raises(ValueError, match="phrase"):
        Region("  ", torch.ones(4, 4))


def _maps(inside: float, batch: int = 1) -> tuple[torch.Tensor, RegionTarget]:
    """Maps [batch, 4 tokens, 4, 4] where token 1 puts ``inside`` of its mass in the left half."""
    maps = torch.full((batch, 4, 4, 4), 1 / 16)
    maps[:, 1, :, :2] = inside / 8
    maps[:, 1, :, 2:] = (1 - inside) / 8
    mask = box_mask((0.0, 0.0, 0.5, 1.0), 32, 32)
    return maps, RegionTarget((1,), mask)


@pytest.mark.parametrize("inside, expected", [(1.0, 0.0), (0.5, 0.25), (0.0, 1.0)])
def test_layout_energy_is_squared_share_outside(inside, expected):
    maps, target = _maps(inside)
    assert layout_energy(maps, [target]).item() == pytest.approx(expected)


def test_energies_fall_as_attention_moves_into_the_region():
    targets = lambda m: [m[1]]  # noqa: E731
    for energy in (layout_energy, boxdiff_energy):
        values = [energy(_maps(s)[0], targets(_maps(s))).item() for s in (0.1, 0.5, 0.9)]
        assert values[0] > values[1] > values[2], energy.__name__
    values = [presence_energy(_maps(s)[0], targets(_maps(s)), text_tokens=[1, 2]).item() for s in (0.1, 0.9)]
    assert values[0] > values[1]


def test_energies_are_per_batch_item_and_weighted():
    maps, target = _maps(0.5, batch=3)
    maps[1, 1] = maps[0, 1].flip(-1)  # item 1 puts 50% inside too; item 2 becomes fully inside
    maps[2, 1, :, :2], maps[2, 1, :, 2:] = 1 / 8, 0
    weights = EnergyWeights(layout=2.0, boxdiff=1.0)
    energies = region_energy(maps, [target], weights)
    assert energies.shape == (3,)
    assert energies[2] < energies[0]
    expected = 2.0 * layout_energy(maps, [target]) + boxdiff_energy(maps, [target])
    assert torch.allclose(energies, expected)
    heavy = RegionTarget(target.tokens, target.mask, weight=3.0)
    assert torch.allclose(layout_energy(maps, [heavy]), 3 * layout_energy(maps, [target]))
    with pytest.raises(ValueError, match="at least one"):
        EnergyWeights(0, 0, 0)


def test_region_guidance_term_acts_inside_masks_only():
    uncond = torch.zeros(1, 4, 4, 4)
    region_prediction = torch.ones(1, 4, 4, 4)
    masks = box_mask((0.0, 0.0, 0.5, 1.0), 4, 4)[None]
    term = region_guidance_term(uncond, [region_prediction], masks, [2.5])
    assert torch.all(term[..., :2] == 2.5) and torch.all(term[..., 2:] == 0)
    with pytest.raises(ValueError, match="one prediction"):
        region_guidance_term(uncond, [region_prediction], masks, [1.0, 2.0])


def test_step_fraction_follows_the_schedule():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    assert step_fraction(torch.tensor([10.0]), sigmas) == 0
    assert step_fraction(torch.tensor([2.0]), sigmas) == 0.5
    assert step_fraction(torch.tensor([2.0]), None) is None


@pytest.fixture(scope="module")
def denoiser():
    return DiffusersDenoiser(tiny_unet(seed=3))


def _guidance(denoiser, **kwargs) -> BackwardGuidance:
    layers = tuple(layer for layer in denoiser.layers if layer.block != "input")
    targets = (RegionTarget((1, 2), box_mask((0.0, 0.0, 0.5, 0.5), 16, 16)),)
    return BackwardGuidance(targets, layers, **kwargs)


def test_backward_guidance_lowers_the_energy(denoiser):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen) * 5
    cond = torch.randn(2, 77, 32, generator=gen)
    sigma = torch.tensor([5.0, 5.0])
    guide = _guidance(denoiser, strength=0.1, iterations=3, threshold=0.0)
    before, _ = guide.gradient(denoiser, x, sigma, cond)
    moved = guide(denoiser, x, sigma, cond)
    after, _ = guide.gradient(denoiser, moved, sigma, cond)
    assert torch.all(after < before)
    assert not torch.equal(moved, x)


def test_backward_guidance_only_in_its_step_range_and_stops_below_threshold(denoiser):
    x = torch.randn(1, 4, 16, 16)
    cond = torch.randn(1, 77, 32)
    sigmas = torch.linspace(10, 0, 11)
    guide = _guidance(denoiser, start_at=0.2, end_at=0.5)
    assert guide(denoiser, x, sigmas[1:2], cond, sigmas) is None
    assert guide(denoiser, x, sigmas[2:3], cond, sigmas) is not None
    assert guide(denoiser, x, sigmas[5:6], cond, sigmas) is None
    satisfied = _guidance(denoiser, threshold=10.0)  # the energy is below 10 already: no move
    assert torch.equal(satisfied(denoiser, x, sigmas[0:1], cond, sigmas), x)


def test_backward_guidance_validates_its_settings():
    layer = CrossAttentionLayer("middle", 0, 0, 4)
    target = RegionTarget((1,), torch.ones(2, 2))
    with pytest.raises(ValueError, match="start_at <= end_at"):
        BackwardGuidance((target,), (layer,), start_at=0.6, end_at=0.5)
    with pytest.raises(ValueError, match="at least one region"):
        BackwardGuidance((), (layer,))


def test_stopping_after_the_last_wanted_layer_gives_the_same_gradient(denoiser):
    from spatial_control.guidance.latent_gradient import energy_gradient

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 3
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    guide = _guidance(denoiser)
    seen = []

    def energy(store, denoised):
        seen.append(denoised)
        return guide.energy(store, denoised).sum()

    args = (denoiser, x, torch.tensor([3.0]), cond, guide.layers, energy)
    full_energy, full_grad, full_denoised = energy_gradient(*args)
    early_energy, early_grad, early_denoised = energy_gradient(*args, needs_prediction=False)
    assert full_denoised is not None and early_denoised is None and seen[1] is None
    assert torch.allclose(early_energy, full_energy) and torch.allclose(early_grad, full_grad, atol=1e-7)
    with pytest.raises(ValueError, match="explicit list of layers"):
        energy_gradient(denoiser, x, torch.tensor([3.0]), cond, None, energy, needs_prediction=False)


def test_backward_guidance_refuses_a_partial_batch(denoiser):
    class FirstItemOnly:  # a host whose forward saw only part of the batch
        def denoise(self, x, sigma, cond, store=None):
            return denoiser.denoise(x[:1], sigma[:1], cond[:1], store)

    x = torch.randn(2, 4, 16, 16)
    cond = torch.randn(2, 77, 32)
    with pytest.raises(RuntimeError, match="saw attention for 1 of 2 images"):
        _guidance(denoiser).gradient(FirstItemOnly(), x, torch.tensor([3.0, 3.0]), cond)


def test_the_step_is_measured_in_noise_units_whatever_the_energy_scale(denoiser):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4)) * 5
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([5.0])
    mask = box_mask((0.0, 0.0, 0.5, 0.5), 16, 16)
    layers = tuple(denoiser.layers)
    moves = []
    for weight in (1.0, 10.0):
        guide = BackwardGuidance(
            (RegionTarget((1, 2), mask, weight),), layers, strength=0.1, iterations=1, threshold=0
        )
        moves.append(guide(denoiser, x, sigma, cond) - x)
    assert torch.allclose(moves[0], moves[1], atol=1e-5)
    rms = moves[0].pow(2).mean().sqrt()
    assert rms.item() == pytest.approx(0.1 * 5.0, rel=1e-4)  # strength x sigma


def test_start_candidates_keep_each_images_lowest_energy_start(denoiser):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 16, 16, generator=gen) * 5
    alternatives = torch.randn(3, 2, 4, 16, 16, generator=gen) * 5
    cond = torch.randn(2, 77, 32, generator=gen)
    sigma = torch.tensor([5.0, 5.0])
    still = _guidance(denoiser, strength=0.0, iterations=1)  # no move: the choice alone shows
    starts = torch.cat([x[None], alternatives])
    energies = torch.stack([still.gradient(denoiser, start, sigma, cond)[0] for start in starts])
    best = energies.argmin(0)
    assert best.tolist() != [0, 0]  # the seed's own start is not the best for both images
    chosen = still(denoiser, x, sigma, cond, alternatives=alternatives)
    assert torch.allclose(chosen, starts[best, torch.arange(2)], atol=1e-5)
    moving = _guidance(denoiser, strength=0.1, iterations=2, threshold=0.0)
    moved = moving(denoiser, x, sigma, cond, alternatives=alternatives)
    assert moved.shape == x.shape
    assert all((moved - start).abs().amax() > 1e-3 for start in starts)  # the chosen start was moved
    with pytest.raises(ValueError, match=r"alternatives must be \[k, \*latent shape\]"):
        still(denoiser, x, sigma, cond, alternatives=alternatives[:, :1])


def test_moving_the_start_rearranges_the_noise_at_the_first_step_only(denoiser):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 16, 16, generator=gen) * 5
    cond = torch.randn(2, 77, 32, generator=gen)
    sigmas = torch.tensor([5.0, 2.0, 0.0])
    layers = tuple(layer for layer in denoiser.layers if layer.block != "input")
    region = box_mask((0.5, 0.5, 1.0, 1.0), 16, 16)
    guide = BackwardGuidance(
        (RegionTarget((1, 2), region),), layers, strength=0.0, end_at=1.0, start_regions=(region,)
    )
    moved = guide(denoiser, x, sigmas[:1], cond, sigmas)  # strength 0: the move alone shows
    assert not torch.equal(moved, x)
    for item, start in zip(moved, x, strict=True):  # the sampler's own noise, rearranged
        assert torch.equal(item.flatten(1).sort(1).values, start.flatten(1).sort(1).values)
    assert torch.equal(guide(denoiser, x, sigmas[1:2], cond, sigmas), x)  # later steps keep their latent
    alternatives = torch.randn(2, 2, 4, 16, 16, generator=gen) * 5
    chosen = guide(denoiser, x, sigmas[:1], cond, sigmas, alternatives=alternatives)
    starts = torch.cat([x[None], alternatives])
    assert all(not torch.equal(chosen, start) for start in starts)  # candidates are moved too
    image_start = guide(denoiser, x, sigmas[:1], cond, sigmas, start_is_noise=False)
    assert torch.equal(image_start, x)  # a start that holds an image stays in place
    with pytest.raises(ValueError, match="1 start regions for 2 targets"):
        BackwardGuidance(
            (RegionTarget((1,), region), RegionTarget((2,), region)), layers, start_regions=(region,)
        )


def test_the_start_is_placed_by_the_start_layers_attention(denoiser):
    class Recording:  # which layers each forward pass recorded
        def __init__(self):
            self.recorded = []

        def denoise(self, x, sigma, cond, store=None):
            try:
                return denoiser.denoise(x, sigma, cond, store)
            finally:
                self.recorded.append(set(store.maps_by_layer))

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(8)) * 5
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(9))
    region = box_mask((0.5, 0.0, 1.0, 0.5), 16, 16)
    layers = tuple(denoiser.layers)
    encoder = tuple(layer for layer in layers if layer.block != "output")
    moves = {}
    for start_layers in (encoder, ()):
        guide = BackwardGuidance(
            (RegionTarget((1, 2), region),), layers, start_regions=(region,), start_layers=start_layers
        )
        recording = Recording()
        moves[start_layers] = guide.moved_start(recording, x, torch.tensor([5.0]), cond)
        assert recording.recorded == [set(start_layers or layers)]
    assert not torch.equal(moves[encoder], moves[()])


def _blob(size: int, centre: int = 8, grid: int = 16) -> torch.Tensor:
    """Maps [1, 3 tokens, grid, grid]: token 1 a uniform square of ``size`` cells about ``centre``."""
    maps = torch.full((1, 3, grid, grid), 1e-5)
    maps[:, 0] = 1.0  # a start token that takes the rest
    lo = centre - size // 2
    maps[:, 1, lo : lo + size, lo : lo + size] = 1.0
    return maps / maps.sum(1, keepdim=True)


def test_extent_energy_asks_for_the_regions_size_where_the_layout_energy_is_blind_to_it():
    region = RegionTarget((1,), box_mask((0.25, 0.25, 0.75, 0.75), 16, 16))  # 8x8 cells about the centre
    small, fitting, large = _blob(4), _blob(8), _blob(12)
    assert layout_energy(small, [region]) < 1e-3 and layout_energy(fitting, [region]) < 1e-3  # both inside
    extent = [extent_energy(m, [region]).item() for m in (small, fitting, large)]
    assert extent[1] < 1e-3 < extent[0] and extent[1] < extent[2]
    weights = EnergyWeights(layout=1.0, extent=0.5)
    assert torch.allclose(
        region_energy(small, [region], weights),
        layout_energy(small, [region]) + 0.5 * extent_energy(small, [region]),
    )


def _attention_extent(denoiser, guide, x, sigma, cond) -> float:
    """Extent (cells) of the guided tokens' layer-averaged attention: the square root of the product
    of its max-projections' widths."""
    from spatial_control.guidance.attention_store import AttentionStore

    store = AttentionStore(guide.layers)
    with torch.no_grad():
        denoiser.denoise(x, sigma, cond, store)
    a = store.maps()[0, list(guide.targets[0].tokens)].mean(0)
    a = a / a.max()
    return float((a.amax(0).sum() * a.amax(1).sum()).sqrt())


def test_with_the_extent_energy_attention_grows_towards_a_larger_region(denoiser):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen) * 5
    cond = torch.randn(1, 77, 32, generator=gen)
    sigma = torch.tensor([5.0])
    layers = tuple(denoiser.layers)
    extents = {}
    for name, box in (("small", (0.375, 0.375, 0.625, 0.625)), ("large", (0.125, 0.125, 0.875, 0.875))):
        for weights in (EnergyWeights(layout=1.0), EnergyWeights(layout=1.0, extent=1.0)):
            guide = BackwardGuidance(
                (RegionTarget((1, 2), box_mask(box, 16, 16)),), layers, weights, strength=0.1, iterations=10,
                threshold=0,
            )  # fmt: skip
            extents[name, weights.extent] = _attention_extent(
                denoiser, guide, guide(denoiser, x, sigma, cond), sigma, cond
            )
    assert extents["large", 1.0] > extents["large", 0.0]  # the extent term grows what layout alone does not
    assert extents["large", 1.0] > extents["small", 1.0] + 2  # and the extent follows the region's
