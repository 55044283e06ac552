"""Text grounding without ComfyUI: deformable alignment, the grounding network and its weights files,
decoding the map into a box, grounding texts as users write them, and the grounding metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.bench_grounding import centred
from benchmarks.shape_world.generator import RELATIONS, sample_grounding
from benchmarks.shape_world.grounding_phrasing import written_grounding
from benchmarks.shape_world.metrics import (
    object_overlap,
    placement_valid,
    placement_validity_grid,
    valid_place_iou,
)
from spatial_control.guidance.grounding import grow_box, heat_image, placement_from_map
from spatial_control.guidance.grounding_text import parse_grounding
from spatial_control.models.deformable_alignment import DeformableAlignment
from spatial_control.models.grounding_net import (
    GroundingConfig,
    build_grounding_net,
    load_grounding_net,
    save_grounding_net,
)
from spatial_control.models.text_encoder import TextEncoderConfig

TINY = GroundingConfig(
    image_size=64, swin_dim=8, swin_heads=(1, 2, 2), window_size=4, dim=16, heads=2, stages=2, points=2,
    text=TextEncoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32),
)  # fmt: skip


def test_deformable_alignment_without_offsets_reads_the_reference_cell():
    torch.manual_seed(0)
    module = DeformableAlignment(dim=8, heads=2, levels=1, points=3)
    torch.nn.init.zeros_(module.offsets.bias)  # every point on its reference
    value = torch.randn(1, 8, 4, 4)
    reference = torch.tensor([[[0.125, 0.125], [0.625, 0.875]]])  # cell centres (0, 0) and (x 2, y 3)
    out = module(torch.randn(1, 2, 8), reference, [value])
    projected = module.value(value.flatten(2).transpose(1, 2)).reshape(4, 4, 8)
    expected = module.out(torch.stack([projected[0, 0], projected[3, 2]]))
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_deformable_alignment_offsets_move_the_samples_and_get_gradients():
    torch.manual_seed(0)
    module = DeformableAlignment(dim=8, heads=2, levels=2, points=2)
    queries = torch.randn(1, 3, 8, requires_grad=True)
    values = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    reference = torch.rand(1, 3, 2)
    out = module(queries, reference, values)
    out.square().sum().backward()
    # Offsets and modulation start independent of the query (zero weights) and learn from the loss.
    assert module.offsets.weight.grad.abs().sum() > 0 and module.weights.weight.grad.abs().sum() > 0
    with torch.no_grad():
        module.offsets.bias.add_(1.5)
    assert not torch.allclose(module(queries, reference, values), out)
    with pytest.raises(ValueError, match="value maps"):
        module(queries, reference, values[:1])


def test_grounding_net_outputs_every_stage_map_and_round_trips_its_file(tmp_path):
    model = build_grounding_net(TINY, seed=0).eval()
    images, tokens = torch.rand(2, 3, 64, 64), torch.full((2, 32), 49407)
    tokens[:, 0], tokens[:, 1:4] = 49406, torch.tensor([320, 736, 2866])
    with torch.no_grad():
        out = model(images, tokens)
    m = TINY.map_size
    assert len(out.heat) == len(out.log_size) == len(out.anchor_heat) == TINY.stages
    assert out.heat[0].shape == (2, m, m) and out.log_size[0].shape == (2, 2, m, m)
    assert out.reconstruction.shape == (2, 3, 64, 64)
    path = tmp_path / "g.safetensors"
    save_grounding_net(model, path, [49406, 49407, 320, 736, 2866], {"steps": 0})
    loaded, meta = load_grounding_net(path)
    assert loaded.config == TINY and meta["training"] == {"steps": 0}
    with torch.no_grad():
        again = loaded(images, tokens, reconstruct=False)
    assert again.reconstruction is None
    assert torch.allclose(again.heat[-1], out.heat[-1], atol=5e-2)  # fp16 weights
    with pytest.raises(ValueError, match="takes 64x64"):
        loaded(torch.rand(1, 3, 32, 32), tokens[:1])
    ablation = build_grounding_net(GroundingConfig(**{**TINY.to_dict(), "alignment": "none"}))
    assert all(stage.alignment is None for stage in ablation.stages)


def test_a_broken_weights_file_names_the_rebuild_command(tmp_path):
    path = tmp_path / "g.safetensors"
    save_grounding_net(build_grounding_net(TINY, seed=0), path, [49406, 49407], {})
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="scripts.train_grounding"):
        load_grounding_net(path)
    with pytest.raises(FileNotFoundError, match="scripts.train_grounding"):
        load_grounding_net(tmp_path / "missing.safetensors")


def test_placement_from_map_takes_the_peak_its_size_and_stays_inside():
    heat = torch.full((8, 8), -8.0)
    heat[2, 5] = 3.0
    log_size = torch.full((2, 8, 8), float(np.log(0.25)))
    p = placement_from_map(heat, log_size)
    assert p.centre == pytest.approx(((5 + 0.5) / 8, (2 + 0.5) / 8), abs=0.01)
    assert p.box == pytest.approx((0.5625, 0.1875, 0.8125, 0.4375), abs=0.01)
    assert p.confidence == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    heat[0, 7], heat[2, 5] = 4.0, -8.0  # at the corner: the box moves in whole, keeping its size
    corner = placement_from_map(heat, log_size)
    x0, y0, x1, y1 = corner.box
    assert x1 == pytest.approx(1.0) and y0 == pytest.approx(0.0) and x1 - x0 == pytest.approx(0.25)
    upsampled = heat_image(heat, 32, 32)
    assert upsampled.shape == (32, 32) and int(upsampled.argmax()) in (30, 31)  # the top-right corner
    assert grow_box((0.4, 0.4, 0.6, 0.6), 0.25) == pytest.approx((0.35, 0.35, 0.65, 0.65))
    assert grow_box((0.0, 0.9, 0.2, 1.0), 1.0) == pytest.approx((0.0, 0.8, 0.4, 1.0))


@pytest.mark.parametrize(
    "text, phrase, relation, anchors",
    [
        ("a green triangle left of the blue square", "green triangle", "left of", ("blue square",)),
        ("Put a red circle to the LEFT of the blue square.", "red circle", "left of", ("blue square",)),
        ("please add an orange cross under the green circle", "orange cross", "below", ("green circle",)),
        ("draw a big yellow square beside the red cross in the picture", "big yellow square", "next to",
         ("red cross",)),
        ("a purple circle between the red square and the green cross", "purple circle", "between",
         ("red square", "green cross")),
        ("can you place a blue circle on the right side of the red cross", "blue circle", "right of",
         ("red cross",)),
        ("a red circle", "red circle", None, ()),
        ("a red circle on top of the cube", "red circle on top of the cube", None, ()),
    ],
)  # fmt: skip
def test_grounding_texts_as_users_write_them(text, phrase, relation, anchors):
    request = parse_grounding(text)
    assert (request.phrase, request.relation, request.anchors) == (phrase, relation, anchors)


def test_written_texts_parse_back_to_their_task_and_every_relation_is_drawn():
    seen = set()
    for i in range(60):
        sample = written_grounding("eval", i, seed=2)
        task = sample.task
        request = parse_grounding(sample.text)
        assert request.relation == task.relation and task.relation == RELATIONS[i % len(RELATIONS)]
        assert request.phrase.endswith(f"{task.target.colour} {task.target.shape}")
        assert len(request.anchors) == len(task.anchors)
        seen.add(task.relation)
    assert seen == set(RELATIONS)
    absent = written_grounding("eval", 0, seed=2, absent_share=1.0)
    assert not absent.present and any(p not in absent.task.full_scene.pairs for p in absent.task.anchors)
    with pytest.raises(ValueError, match="unknown relation"):
        sample_grounding("eval", 0, relation="inside")


def test_the_removed_object_is_a_valid_placement_and_an_overlapping_box_is_not():
    for i in range(20):
        task = written_grounding("eval", i, seed=4).task
        assert placement_valid(task.target.box, task)
        if task.scene.objects:
            assert object_overlap(task.scene.objects[0].box, task.scene.masks)
            assert not placement_valid(task.scene.objects[0].box, task)


def test_valid_place_iou_scores_a_placement_against_the_right_place_nearest_to_it():
    for i in range(6):
        task = sample_grounding("test", i, relation="next to", size_in_text=False)
        x0, y0, x1, y1 = task.target.box
        assert valid_place_iou(task.target.box, task) > 0.9
        assert valid_place_iou((x0, y0, x0 + 2 * (x1 - x0), y1), task) < 0.6  # twice as wide
        anchor = task.full_scene.objects[task.full_scene.pairs.index(task.anchors[0])].box
        assert valid_place_iou(anchor, task) < valid_place_iou(task.target.box, task)  # on the anchor itself


def test_the_training_targets_validity_grid_agrees_with_placement_valid_cell_by_cell():
    grid = 16
    for i in range(6):
        task = written_grounding("eval", i, seed=4).task
        x0, y0, x1, y1 = task.target.box
        width, height = x1 - x0, y1 - y0
        fast = placement_validity_grid(task, grid, width, height)
        side = task.scene.image.shape[0] / grid
        slow = np.array([
            [placement_valid(centred((ix + 0.5) * side, (iy + 0.5) * side, width, height), task)
             for ix in range(grid)]
            for iy in range(grid)
        ])  # fmt: skip
        assert fast.any() and not fast.all()
        np.testing.assert_array_equal(fast, slow)


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty"):
        parse_grounding("  !? ")
