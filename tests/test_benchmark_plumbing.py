"""The shape_world benchmark's code runs end to end (on untrained weights: only the plumbing and
the ranges of the figures are checked here; the figures themselves come from `python -m benchmarks`)."""

import pytest

pytestmark = pytest.mark.comfyui


def test_autoencoder_figures(demo_weights):
    from benchmarks.bench_shape_world import autoencoder_figures

    figures = autoencoder_figures(4, demo_weights)
    assert figures["ae_psnr"] > 0 and 0 <= figures["ae_success_ratio"] <= 1


def test_generation_figures(comfy, demo_weights):
    from benchmarks.bench_shape_world import generation_figures
    from benchmarks.comfy_generation import DemoModelSession

    figures = generation_figures(DemoModelSession(demo_weights, comfy=comfy), n=2)
    for k in (1, 2, 3, 4):
        assert 0 <= figures[f"success_{k}obj"] <= 1
    assert 0 <= figures["floor_success_1obj"] <= 1
    assert set(figures["success_by_form"]) == {
        "sized",
        "plain",
        "mixed",
        "picture_of",
        "bare",
        "unknown_words",
    }
    assert all(0 <= v <= 1 for form in figures["success_by_form"].values() for v in form.values())
    assert figures["placement_unguided"]["objects"] >= 4
    assert 0 <= figures["placement_unguided"]["hit_rate"] <= 1


def test_region_guidance_figures_split_by_object_count():
    from benchmarks.bench_region_guidance import _figures

    records = [
        {"ious": [0.9, 0.1], "sizes": [0.1, None], "box_extents": [30, 40], "success": True},
        {"ious": [0.6, 0.7, 0.2], "sizes": [-0.2, 0.3, 0.4], "box_extents": [30, 20, 25], "success": False},
    ]
    figures = _figures(records, seconds=4.0)
    assert figures["hit_rate"] == 3 / 5 and figures["fidelity"] == 0.5 and figures["seconds_per_image"] == 2.0
    assert figures["size_error"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)  # objects not found: left out
    assert figures["by_objects"]["2"] == {
        "tasks": 1, "hit_rate": 0.5, "size_error": 0.1, "size_slope": None, "fidelity": 1.0
    }  # fmt: skip
    assert figures["by_objects"]["3"]["hit_rate"] == 2 / 3


def test_size_slope_is_one_when_objects_follow_their_boxes_and_zero_for_one_size():
    import math

    from benchmarks.bench_region_guidance import _size_figures

    extents = [20, 30, 45, 60]
    follows = [{"sizes": [0.1] * 4, "box_extents": extents}]  # every object 10% larger than its box
    one_size = [{"sizes": [math.log(32 / e) for e in extents], "box_extents": extents}]  # all 32 wide
    assert _size_figures(follows)["size_slope"] == pytest.approx(1.0)
    assert _size_figures(follows)["size_error"] == pytest.approx(0.1)
    assert _size_figures(one_size)["size_slope"] == pytest.approx(0.0, abs=1e-9)


def test_concept_em_figures_match_learned_concepts_and_score_distractor_masks_as_leakage():
    import types

    import numpy as np
    import torch

    from benchmarks.bench_concept_em import _distractor_masks, _set_figures, matching
    from benchmarks.shape_world.generator import sample_concepts

    concept_set = sample_concepts("eval", 3, k=3, n_concepts=2)
    distractors = _distractor_masks(concept_set)
    truth = torch.tensor(np.array([[m > 0.5 for m in masks] for masks in concept_set.masks])).float()
    swapped = truth.flip(1)  # learned without names: concept 0 came out second
    order = matching(concept_set, swapped)
    assert order == [1, 0]
    perfect = _set_figures(
        concept_set, types.SimpleNamespace(masks=swapped, first_masks=truth), distractors, order
    )
    assert np.allclose(perfect["ious"], 1.0) and np.allclose(perfect["leaks"], 0.0)
    assert np.allclose(perfect["first_ious"], 1.0)
    absorbed = torch.tensor(np.array([[d, d] for d in distractors])).float()
    leaky = _set_figures(
        concept_set, types.SimpleNamespace(masks=absorbed, first_masks=None), distractors, [0, 1]
    )
    assert np.allclose(leaky["ious"], 0.0) and np.allclose(leaky["leaks"], 1.0) and leaky["first_ious"] == []


def test_region_proposer_scores_the_true_edit_as_success_and_summarises_per_kind():
    from benchmarks.bench_region_proposer import edit_succeeded, summarise
    from benchmarks.shape_world.generator import EDIT_KINDS, sample_edit_task

    for kind in EDIT_KINDS:
        task = sample_edit_task("test", 2, kind)
        assert edit_succeeded(task, task.edited_image), kind
        assert not edit_succeeded(task, task.scene.image), kind
    figures = {"edit_success": True, "psnr_outside": 40.0, "seconds": 1.0}
    rows = [{"kind": k, "region_iou": 1.0 if k == "remove" else 0.5, **figures} for k in EDIT_KINDS]
    figures = summarise(rows)
    assert figures["remove"]["region_iou"] == 1.0 and figures["region_iou"] == round(2 / 3, 3)
    assert figures["share_30db"] == 1.0


def test_region_proposer_scores_an_addition_by_a_valid_place():
    from benchmarks.bench_region_proposer import sample_task, score

    task, text, box = sample_task("add", 1)
    assert text.startswith("add a ") and " next to the " in text
    fraction = tuple(v / 128 for v in box)
    made = score("add", task, task.full_scene.image, fraction)  # the object back at its true place
    assert made["edit_success"] and made["region_valid"] and made["psnr_outside"] == 60.0
    assert not score("add", task, task.scene.image, fraction)["edit_success"]  # nothing added
    # nothing added over the whole image: PSNR outside the true place, not over an empty mask
    assert score("add", task, task.scene.image, (0.0, 0.0, 1.0, 1.0))["psnr_outside"] == 60.0
    x0, y0, x1, y1 = task.full_scene.boxes[task.full_scene.pairs.index(task.anchors[0])]
    assert not score("add", task, task.full_scene.image, (x0 / 128, y0 / 128, x1 / 128, y1 / 128))[
        "region_valid"
    ]


def test_grounding_map_record_scores_the_true_box_valid_and_summarises_per_relation():
    import numpy as np

    from benchmarks.bench_grounding import centred, map_record, random_free_box, summarise
    from benchmarks.shape_world.grounding_phrasing import written_grounding
    from benchmarks.shape_world.metrics import object_overlap

    rows = []
    for i in range(12):
        sample = written_grounding("eval", i, seed=3)
        x0, y0, x1, y1 = box = sample.task.target.box
        record = map_record(sample, box, ((x0 + x1) / 2, (y0 + y1) / 2))
        assert record["map_accuracy"] and record["pointing"] and record["box_iou"] == 1.0
        rows.append(record)
        free = random_free_box(sample.task, np.random.default_rng(i))
        assert not object_overlap(free, sample.task.scene.masks)
    far = map_record(sample, centred(-100, -100, 10, 10), (-100, -100))
    assert not far["map_accuracy"] and far["box_iou"] == 0.0
    figures = summarise(rows, ("map_accuracy", "box_iou"))
    assert figures["map_accuracy"] == 1.0 and set(figures) >= {"left of", "between", "next to"}


def test_spatext_tasks_paint_maps_that_parse_back_into_their_masks_and_score_the_truth_perfectly():
    import numpy as np
    import torch

    from benchmarks.bench_spatext import MapTask, region_iou
    from benchmarks.shape_world.metrics import detect_objects, frechet_distance
    from spatial_control.guidance.segment_map import parse_region_texts, split_segment_map

    task = MapTask(3)
    masks = split_segment_map(task.segment_map[0], parse_region_texts(task.region_texts))
    assert torch.equal(masks.bool(), torch.stack(task.masks))
    detections = detect_objects(task.scene.image)
    pairs = zip(task.scene.objects, task.masks, strict=True)
    ious = [region_iou(detections, m.numpy(), o.colour) for o, m in pairs]
    assert min(ious) > 0.8  # the real scene fills its own regions
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    assert frechet_distance(a, b) < 0.3 < frechet_distance(a, b + 1.0)


def test_concept_em_records_resume_and_are_redone_when_the_settings_change(monkeypatch, tmp_path):
    import dataclasses

    import benchmarks.bench_concept_em as bench

    calls = []
    monkeypatch.setattr(bench, "RECORDS", tmp_path)
    monkeypatch.setattr(
        bench,
        "set_record",
        lambda session, i, arm: calls.append((i, arm)) or {"settings": repr(bench.arm_settings(arm))},
    )
    bench.fill_records(range(2), ("em", "first_pass"), session=object())
    assert calls == [(0, "em"), (0, "first_pass"), (1, "em"), (1, "first_pass")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "set000_em.json", "set000_first_pass.json", "set001_em.json", "set001_first_pass.json",
    ]  # fmt: skip
    bench.fill_records(range(3), ("em",), session=object())  # resumes: only the missing set
    assert calls[4:] == [(2, "em")]
    changed = dataclasses.replace(bench.arm_settings("em"), rounds=1)
    monkeypatch.setattr(bench, "arm_settings", lambda arm: changed)
    bench.fill_records(range(1), ("em",), session=object())  # made with other settings: redone
    assert calls[5:] == [(0, "em")]
