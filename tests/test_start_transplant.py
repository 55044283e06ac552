"""Moving the starting noise into the regions (plain torch)."""

import pytest
import torch

from spatial_control.guidance.regions import box_mask
from spatial_control.guidance.start_transplant import latent_box, strongest_window, transplant


def _start() -> torch.Tensor:
    return torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))


def _attention(top: int, left: int, height: int, width: int) -> torch.Tensor:
    attention = torch.full((8, 8), 0.01)
    attention[top : top + height, left : left + width] = 1.0
    return attention


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.flatten(1).sort(1).values, b.flatten(1).sort(1).values)


def test_latent_box_and_strongest_window():
    assert latent_box(box_mask((0.25, 0.5, 0.75, 1.0), 64, 64), (8, 8)) == (4, 2, 4, 4)
    assert latent_box(torch.zeros(64, 64), (8, 8)) is None
    assert strongest_window(_attention(5, 1, 3, 2), 3, 2) == (5, 1)
    assert strongest_window(_attention(5, 1, 3, 2), 2, 2) in {(5, 1), (6, 1)}
    assert strongest_window(_attention(3, 4, 1, 1), 3, 3) == (2, 3)  # a small blob lands in the centre
    assert strongest_window(_attention(2, 2, 2, 2), 4, 4) == (1, 1)


def test_transplant_moves_the_attended_window_into_the_box():
    x = _start()
    moved = transplant(x, _attention(5, 5, 2, 2)[None], [(0, 0, 2, 2)])
    assert torch.equal(moved[:, :2, :2], x[:, 5:7, 5:7])
    assert torch.equal(moved[:, 5:7, 5:7], x[:, :2, :2])  # the vacated window takes what was overwritten
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[:2, :2] = untouched[5:7, 5:7] = False
    assert torch.equal(moved[:, untouched], x[:, untouched])
    assert _same_values(moved, x)


def test_transplant_is_a_rearrangement_when_window_and_box_overlap():
    x = _start()
    moved = transplant(x, _attention(2, 2, 3, 3)[None], [(1, 1, 3, 3)])
    assert torch.equal(moved[:, 1:4, 1:4], x[:, 2:5, 2:5])
    assert _same_values(moved, x)
    assert torch.equal(transplant(x, _attention(1, 1, 3, 3)[None], [(1, 1, 3, 3)]), x)  # already there


def test_transplant_of_several_regions():
    x = _start()
    attention = torch.stack([_attention(6, 6, 2, 2), _attention(0, 6, 2, 2), _attention(3, 3, 1, 1)])
    moved = transplant(x, attention, [(0, 0, 2, 2), (1, 1, 2, 2), None])
    assert torch.equal(moved[:, 1:3, 1:3], x[:, 0:2, 6:8])  # the later region wins where boxes overlap
    assert torch.equal(moved[:, 0, :2], x[:, 6, 6:8])
    assert torch.equal(moved[:, 3:6, 3:6], x[:, 3:6, 3:6])  # a region without a box moves nothing
    with pytest.raises(ValueError, match="2 boxes for attention maps of 3 regions"):
        transplant(x, attention, [(0, 0, 2, 2), None])
