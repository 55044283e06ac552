"""Re-layout of the predicted image: finding each region's object and moving it into its region."""

import pytest
import torch

from spatial_control.guidance.backends.diffusers import DiffusersDenoiser
from spatial_control.guidance.backward_guidance import BackwardGuidance
from spatial_control.guidance.region_energies import RegionTarget
from spatial_control.guidance.regions import box_mask
from spatial_control.guidance.relayout import connected_part, object_box, region_box, relayout
from spatial_control.guidance.schedule import is_step_at
from tests.tiny_models import tiny_unet

BACKGROUND = torch.tensor([0.2, -0.1, 0.3, 0.0])
OBJECT = torch.tensor([1.5, 0.8, -1.0, 0.6])


def _prediction(left: int, top: int, size: int, grid: int = 16) -> torch.Tensor:
    """A [4, grid, grid] prediction: background with a ``size``-cell square object, plus small noise."""
    prediction = BACKGROUND[:, None, None].repeat(1, grid, grid)
    prediction[:, top : top + size, left : left + size] = OBJECT[:, None, None]
    return prediction + 0.02 * torch.randn(prediction.shape, generator=torch.Generator().manual_seed(0))


def _peak_at(row: int, col: int, grid: int = 16) -> torch.Tensor:
    attention = torch.rand(grid, grid, generator=torch.Generator().manual_seed(1)) * 0.1
    attention[row, col] = 1.0
    return attention


def test_connected_part_keeps_the_seeds_component_only():
    candidates = torch.zeros(6, 6, dtype=torch.bool)
    candidates[0:2, 0:2] = True
    candidates[2, 2] = True  # touches diagonally: same part
    candidates[4:, 4:] = True  # apart
    part = connected_part(candidates, (0, 0))
    assert part.sum() == 5 and not part[4:, 4:].any()
    assert not connected_part(candidates, (3, 0)).any()  # a seed outside the candidates: nothing


def test_object_box_finds_the_object_the_attention_points_to():
    prediction = _prediction(left=3, top=5, size=4)
    prediction[:, 12:15, 11:14] = OBJECT[:, None, None] * -1  # another object elsewhere
    assert object_box(prediction, _peak_at(6, 4)) == (3.0, 5.0, 7.0, 9.0)
    # a peak on the background finds a part that covers most of the image: no object
    assert object_box(prediction, _peak_at(0, 15)) is None


def test_region_box_is_the_masks_box_in_latent_cells():
    mask = box_mask((0.25, 0.5, 0.625, 1.0), 128, 128)
    assert region_box(mask, (16, 16)) == (4.0, 8.0, 10.0, 16.0)
    assert region_box(torch.zeros(8, 8), (16, 16)) is None


def test_relayout_moves_and_scales_the_object_into_its_region():
    prediction = _prediction(left=2, top=2, size=4)
    moved = relayout(prediction, [(2.0, 2.0, 6.0, 6.0)], [(8.0, 8.0, 16.0, 16.0)], margin=0.0)
    is_object = (moved - OBJECT[:, None, None]).norm(dim=0) < 0.2
    # the object now fills the larger region (bilinear edges aside) and its old place is background
    assert is_object[9:15, 9:15].all()
    assert not is_object[:8].any() and not is_object[:, :8].any()
    assert (moved[:, 2:6, 2:6] - BACKGROUND[:, None, None]).abs().amax() < 0.1
    # where nothing moved, the prediction is untouched
    assert torch.equal(moved[:, 0, 8:], prediction[:, 0, 8:])


def test_relayout_leaves_a_region_without_object_or_box_alone():
    prediction = _prediction(left=2, top=2, size=4)
    assert torch.equal(relayout(prediction, [None], [(8.0, 8.0, 12.0, 12.0)]), prediction)
    assert torch.equal(relayout(prediction, [(2.0, 2.0, 6.0, 6.0)], [None]), prediction)
    same = relayout(prediction, [(2.0, 2.0, 6.0, 6.0)], [(2.0, 2.0, 6.0, 6.0)], margin=0.0)
    assert torch.allclose(same, prediction, atol=1e-5)  # in place: resampled onto itself


def test_is_step_at_names_one_step_of_the_schedule():
    sigmas = torch.tensor([10.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0])  # 10 steps
    hits = [s for s in sigmas[:-1] if is_step_at(s.reshape(1), sigmas, 0.45)]
    assert hits == [sigmas[5]]  # the first step at or after 45%: step 5 of 10
    assert not is_step_at(torch.tensor([1.2]), sigmas, 0.45)  # between steps (second-order samplers)
    assert not is_step_at(sigmas[5:6], None, 0.45)


@pytest.fixture(scope="module")
def denoiser():
    return DiffusersDenoiser(tiny_unet(seed=3))


def test_backward_guidance_relays_the_prediction_at_its_step_only(denoiser):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=gen) * 2
    cond = torch.randn(2, 77, 32, generator=gen)
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    region = box_mask((0.5, 0.5, 1.0, 1.0), 16, 16)
    layers = tuple(denoiser.layers)
    guide = BackwardGuidance(
        (RegionTarget((1, 2), region),), layers, end_at=0.25, relayout_at=0.5, relayout_regions=(region,)
    )
    assert guide(denoiser, x, sigmas[1:2], cond, sigmas) is None  # neither guided nor re-laid out
    assert guide(denoiser, x, sigmas[2:3], cond, sigmas, start_is_noise=False) is None  # an image's run
    relaid = guide(denoiser, x, sigmas[2:3], cond, sigmas)
    assert relaid.shape == x.shape
    # only the cells of the moved objects change: the rest of the latent, noise included, is kept
    changed = (relaid != x).any(1)
    assert changed.any() and not changed.all()
    with pytest.raises(ValueError, match="0 re-layout regions for 1 targets"):
        BackwardGuidance((RegionTarget((1,), region),), layers, relayout_at=0.5)
    with pytest.raises(ValueError, match=r"relayout_at must be in \[0, 1\)"):
        BackwardGuidance((RegionTarget((1,), region),), layers, relayout_at=1.0, relayout_regions=(region,))
