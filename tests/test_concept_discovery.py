"""Co-segmentation of the objects a few images share (the concept EM's first masks), on synthetic
dense features: a background, the shared objects, and distractors that differ between images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spatial_control.guidance.attention_store import AttentionStore
from spatial_control.guidance.concept_discovery import (
    connected_components,
    contrast_saliency,
    discover_concepts,
    object_proposals,
    on_objects,
    shared_groups,
)

DIM, SIZE = 16, 12


def _unit(seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)), dim=0)


def _images(boxes_per_image, noise=0.05, seed=0):
    """Unit features ``[n, DIM, SIZE, SIZE]`` of a shared background with, per image, objects given as
    ``(feature seed, top, left, side)``; and the true masks of each feature seed."""
    generator = torch.Generator().manual_seed(seed)
    background = _unit(1000)
    features, truth = [], {}
    for i, boxes in enumerate(boxes_per_image):
        grid = background[:, None, None].repeat(1, SIZE, SIZE)
        for feature_seed, top, left, side in boxes:
            grid[:, top : top + side, left : left + side] = _unit(feature_seed)[:, None, None]
            mask = torch.zeros(SIZE, SIZE)
            mask[top : top + side, left : left + side] = 1
            truth.setdefault(feature_seed, {})[i] = mask
        features.append(grid + noise * torch.randn(grid.shape, generator=generator))
    return F.normalize(torch.stack(features), dim=1), truth


def test_connected_components_are_eight_connected_and_numbered_in_raster_order():
    mask = torch.tensor(
        [[1, 1, 0, 0, 1], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool
    )
    expected = torch.tensor([[1, 1, 0, 0, 2], [0, 0, 0, 2, 2], [3, 0, 0, 0, 0], [3, 0, 4, 4, 0]])
    assert torch.equal(connected_components(mask), expected)
    assert torch.equal(connected_components(torch.eye(3, dtype=torch.bool)), torch.eye(3, dtype=torch.long))
    assert int(connected_components(torch.zeros(3, 3, dtype=torch.bool)).max()) == 0
    assert torch.equal(
        connected_components(torch.ones(2, 2, dtype=torch.bool)), torch.ones(2, 2, dtype=torch.long)
    )


def test_objects_are_salient_and_become_one_proposal_each():
    features, truth = _images([[(1, 1, 1, 3), (2, 7, 6, 4)]])
    saliency = contrast_saliency(features)
    assert saliency.shape == (1, SIZE, SIZE) and float(saliency.min()) == 0 and float(saliency.max()) == 1
    objects = truth[1][0] + truth[2][0]
    assert saliency[0][objects > 0].min() > saliency[0][objects == 0].max()
    ((masks, descriptors),) = object_proposals(features, saliency)
    assert masks.shape == (2, SIZE, SIZE) and descriptors.shape == (2, DIM)
    assert torch.equal(masks[0], truth[1][0]) and torch.equal(masks[1], truth[2][0])
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(2))
    assert float(descriptors[0] @ _unit(1)) > 0.95


def test_the_shared_object_is_found_among_distractors_that_differ_per_image():
    # concept 1 in every image (at another place each time), a new distractor in each image
    layouts = [[(1, 1, 1, 3), (10 + i, 6 + i % 2, 5, 4)] for i in range(3)]
    layouts[1] = list(reversed(layouts[1]))  # the concept is not always the first proposal
    features, truth = _images(layouts)
    maps = discover_concepts(features, count=1)
    assert maps.shape == (3, 1, SIZE, SIZE)
    for i in range(3):
        assert torch.equal(maps[i, 0] > 0, truth[1][i] > 0)


def test_two_shared_objects_become_two_concepts_and_a_missing_one_is_left_empty():
    layouts = [
        [(1, 1, 1, 3), (2, 6, 6, 4), (20, 1, 8, 2)],
        [(2, 1, 7, 4), (1, 8, 1, 3), (21, 8, 8, 2)],
        [(1, 5, 5, 3), (22, 0, 0, 2)],  # concept 2 is missing here
    ]
    features, truth = _images(layouts)
    maps = discover_concepts(features, count=2)
    found = {}
    for c in range(2):
        first = maps[0, c] > 0
        seed = next(s for s in (1, 2) if torch.equal(first, truth[s][0] > 0))
        found[seed] = c
    assert sorted(found) == [1, 2]
    for i in range(3):
        assert torch.equal(maps[i, found[1]] > 0, truth[1][i] > 0)
    assert torch.equal(maps[1, found[2]] > 0, truth[2][1] > 0)
    assert maps[2, found[2]].sum() == 0  # dropped: its nearest proposal is a distractor, unlike the others


def test_groups_take_distinct_proposals_and_best_agreement_first():
    a, b = _unit(1), _unit(2)
    close_b = F.normalize(b + 0.3 * _unit(3), dim=0)
    descriptors = [torch.stack([a, b]), torch.stack([close_b, a]), torch.stack([a, b])]
    groups = shared_groups(descriptors, count=2)
    assert groups[0] == [0, 1, 0]  # the a's agree exactly
    assert groups[1] == [1, 0, 1]
    first_only = shared_groups([d[:1] for d in descriptors], count=2)
    assert first_only[0] == [0, None, 0]  # close_b is no a: dropped from the a's group
    assert first_only[1] == [None, 0, None]  # what is left


def test_a_single_image_takes_its_most_salient_parts():
    features, truth = _images([[(1, 1, 1, 2), (2, 6, 5, 5)]])
    maps = discover_concepts(features, count=1)
    assert torch.equal(maps[0, 0] > 0, truth[2][0] > 0)  # the larger object holds more saliency


def test_each_concept_keeps_its_attention_on_one_object_of_its_own():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1, 1
    proposals = [(torch.stack([left, right]), torch.zeros(2, DIM))]
    attention = torch.zeros(1, 3, 8, 8)
    attention[0, 0, :, 4:] = 1.0  # concept 0: the right object
    attention[0, 0, :, :4] = 0.6  # ... and a little the left one
    attention[0, 1, :, :4] = 0.9  # concept 1: the left object
    attention[0, 1, :, 4:] = 0.95  # ... though its peak is on the right one, which concept 0 holds more
    attention[0, 2] = 0.5  # concept 2: no object is left for it
    kept = on_objects(attention, proposals)  # regions resized bilinearly: soft at their edge (columns 3, 4)
    assert kept[0, 0, :, :3].sum() == 0 and torch.equal(kept[0, 0, :, 5:], attention[0, 0, :, 5:])
    assert kept[0, 1, :, 5:].sum() == 0 and torch.equal(kept[0, 1, :, :3], attention[0, 1, :, :3])
    assert torch.equal(kept[0, 2], attention[0, 2])  # kept whole


def test_a_token_that_attends_two_objects_alike_takes_the_one_like_its_concept_elsewhere():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1, 1
    purple, blue = _unit(1), _unit(2)
    proposals = [
        (torch.stack([left, right]), torch.stack([purple, blue])),  # the concept is the left object here
        (torch.stack([left, right]), torch.stack([blue, purple])),  # and the right one here
    ]
    attention = torch.zeros(2, 1, 8, 8)
    attention[:, 0, :, :4], attention[:, 0, :, 4:] = 0.95, 1.0  # alike, the peak on the right in both
    previous = torch.zeros(2, 1, 8, 8)
    previous[0, 0, :, :4], previous[1, 0, :, 4:] = 1, 1  # where the concept was: the purple objects
    by_attention = on_objects(attention, proposals)
    assert by_attention[:, 0, :, :3].sum() == 0  # both on the right
    by_appearance = on_objects(attention, proposals, previous)
    assert by_appearance[0, 0, :, 5:].sum() == 0 and by_appearance[0, 0, :, :3].sum() > 0  # image 0: left
    assert by_appearance[1, 0, :, :3].sum() == 0 and by_appearance[1, 0, :, 5:].sum() > 0  # image 1: right


def test_filled_the_map_covers_the_picked_object_at_its_peak_and_nothing_else():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1, 1
    proposals = [(torch.stack([left, right]), torch.zeros(2, DIM))]
    attention = torch.zeros(1, 1, 8, 8)
    attention[0, 0, :2, 6:] = 0.9  # a token that attends to one corner of the right object
    attention[0, 0, :, :2] = 0.3  # ... and a little to the left one
    filled = on_objects(attention, proposals, fill=True)[0, 0]
    assert torch.allclose(filled[:, 5:], torch.full((8, 3), 0.9))  # the whole right object, at the peak
    assert filled[:, :3].sum() == 0
    partial = on_objects(attention, proposals)[0, 0]
    assert partial[4:, 5:].sum() == 0  # unfilled: only the corner the token attends to


def test_store_keeps_queries_as_unit_features_of_the_finer_layers():
    store = AttentionStore(keep_queries=True)
    heads, tokens = 2, 5
    fine_q, coarse_q = torch.randn(1, 16, 6), torch.randn(1, 4, 6)
    store.record(("output", 3, 0), torch.rand(heads, 16, tokens).softmax(-1), heads, (4, 4), queries=fine_q)
    store.record(("middle", 0, 0), torch.rand(heads, 4, tokens).softmax(-1), heads, (4, 4), queries=coarse_q)
    features = store.query_features((8, 8))
    assert features.shape == (1, 6, 8, 8)  # the coarsest layer (middle, 2x2) is left out
    assert torch.allclose(features.norm(dim=1), torch.ones(1, 8, 8), atol=1e-5)
    both = store.query_features((4, 4), skip_coarsest=False)
    assert both.shape == (1, 12, 4, 4)
    expected = F.normalize(fine_q.reshape(1, 4, 4, 6).permute(0, 3, 1, 2), dim=1)
    assert torch.allclose(store.query_features((4, 4)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no queries"):
        store.record(("output", 4, 0), torch.rand(heads, 16, tokens).softmax(-1), heads, (4, 4))
    with pytest.raises(RuntimeError, match="keep_queries"):
        AttentionStore().query_features((4, 4))


def test_an_image_without_objects_keeps_its_maps_and_does_not_disturb_the_others():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1, 1
    empty = (torch.zeros(0, 4, 4), torch.zeros(0, DIM))  # as object_proposals gives for a blank image
    proposals = [(torch.stack([left, right]), torch.stack([_unit(1), _unit(2)])), empty]
    attention = torch.zeros(2, 1, 8, 8)
    attention[:, 0, :, :4], attention[:, 0, :, 4:] = 0.9, 1.0
    previous = torch.zeros(2, 1, 8, 8)
    previous[0, 0, :, :4] = 1
    kept = on_objects(attention, proposals, previous)
    assert torch.equal(kept[1], attention[1])
    # the concept is nowhere else to be seen: the attention's peak (right) decides
    assert kept[0, 0, :, :3].sum() == 0 and kept[0, 0, :, 5:].sum() > 0
