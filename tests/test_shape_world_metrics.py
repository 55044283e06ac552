"""Shape-world metrics: detection and shape classification under degradations, and metric definitions."""

import math

import numpy as np
import pytest
import torch

from benchmarks.shape_world import generator as G
from benchmarks.shape_world import metrics as M
from benchmarks.shape_world import vocabulary as V


def _scenes(n, offset=0):
    """1-4 objects of both sizes, every background, half of them rotated by up to 15 degrees."""
    return [
        G.split_scene("eval", 1000 + offset + i, background=V.BACKGROUNDS[i % 3], max_rotation=15.0 * (i % 2))
        for i in range(n)
    ]


def _overlaps(a, b):
    return (a & b).sum() > 0.3 * b.sum()


def _shape_accuracy(scenes, degrade):
    correct = total = 0
    for scene in scenes:
        detections = M.detect_objects(degrade(scene.image))
        for obj, mask in zip(scene.objects, scene.masks, strict=True):
            hits = [d for d in detections if d.colour == obj.colour and _overlaps(d.mask, mask)]
            correct += len(hits) == 1 and hits[0].shape == obj.shape
            total += 1
    return correct / total


def test_pixel_classification_reproduces_generator_masks():
    for scene in _scenes(30):
        labels, _ = M.classify_pixels(scene.image)
        expected = np.full(labels.shape, -1)
        for obj, mask in zip(scene.objects, scene.masks, strict=True):
            expected[mask] = V.COLOUR_NAMES.index(obj.colour)
        assert np.array_equal(labels, expected)


def test_detection_recovers_every_object_exactly():
    for scene in _scenes(40, offset=500):
        detections = M.detect_objects(scene.image)
        assert sorted(d.pair for d in detections) == sorted(scene.pairs)
        for obj, mask in zip(scene.objects, scene.masks, strict=True):
            (d,) = [d for d in detections if d.pair == obj.pair]
            assert np.array_equal(d.mask, mask) and d.box == obj.box and d.area == mask.sum()
    assert M.detect_objects(V.make_background("noise", 128, np.random.default_rng(0))) == []


def test_detection_accepts_float_and_torch_images():
    scene = G.split_scene("eval", 3)
    expected = sorted(d.pair for d in M.detect_objects(scene.image))
    as_float = scene.image.astype(np.float32) / 255
    assert sorted(d.pair for d in M.detect_objects(as_float)) == expected
    assert sorted(d.pair for d in M.detect_objects(torch.from_numpy(as_float))) == expected


@pytest.mark.parametrize(
    "degrade",
    [lambda im: im, lambda im: G.gaussian_blur(im, 1.5), G.down_up],
    ids=["clean", "blur1.5", "down_up8"],
)
def test_shape_classification_is_robust(degrade):
    assert _shape_accuracy(_scenes(200), degrade) >= 0.98


def test_classify_shape_on_binary_masks():
    for shape in V.SHAPES:
        for rotation in (0.0, -13.0, 40.0):
            obj = G.SceneObject("red", shape, "small", (60.5, 66.2), 27.0, rotation)
            assert M.classify_shape(G.render_scene([obj]).masks[0]) == shape


def test_whole_image_success_and_presence():
    scene = G.split_scene("eval", 1, n_objects=3)
    (a, b, c) = scene.objects
    assert M.whole_image_success(scene.image, scene.phrases)
    assert M.whole_image_success(scene.image, [a.pair, (b.colour, b.shape)])  # extra objects are allowed
    assert M.whole_image_success(scene.image, [f"a small {c.colour} {c.shape}"])  # size words are ignored
    assert not M.whole_image_success(scene.image, [a.pair, a.pair])  # requested twice, present once
    missing = next(p for p in V.PAIRS if p not in scene.pairs)
    assert not M.whole_image_success(scene.image, [a.pair, missing])
    detections = M.detect_objects(scene.image)
    assert M.object_present(detections, *a.pair) and not M.object_present(detections, *missing)
    # The same object twice fails a request for it once.
    twin = G.SceneObject(a.colour, a.shape, "small", (20.0, 20.0), 26.0)
    far = G.SceneObject(a.colour, a.shape, "small", (100.0, 100.0), 26.0)
    doubled = G.render_scene([twin, far]).image
    assert M.object_present(doubled, *a.pair) and not M.whole_image_success(doubled, [a.pair])


def test_box_iou_hit_rate_and_mask_iou():
    assert M.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert M.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert M.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert M.box_iou((0, 0, 10, 10), (2, 2, 7, 7)) == pytest.approx(25 / 100)
    assert M.hit_rate([0.2, 0.5, 0.9]) == pytest.approx(2 / 3)
    assert M.hit_rate(np.array([0.6, 0.7]), threshold=0.75) == 0.0
    with pytest.raises(ValueError):
        M.hit_rate([])
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[:4], b[2:6] = True, True
    assert M.mask_iou(a, b) == pytest.approx(16 / 48)
    assert M.mask_iou(a, a) == 1.0 and M.mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_placement_iou():
    task = G.sample_layout("eval", 2)
    for target in task.targets:
        assert M.placement_iou(task.scene.image, target) == 1.0
        assert M.placement_iou(task.scene.image, (target.phrase, target.box)) == 1.0
        x0, y0, x1, y1 = target.box
        shifted = (x0 + (x1 - x0) // 2, y0, x1 + (x1 - x0) // 2, y1)
        assert M.placement_iou(task.scene.image, (target.phrase, shifted)) == pytest.approx(
            M.box_iou(target.box, shifted)
        )
    missing = next(p for p in V.PAIRS if p not in task.scene.pairs)
    assert M.placement_iou(task.scene.image, (V.phrase(*missing), (0, 0, 50, 50))) == 0.0


def test_placement_size_ratio_is_the_log_of_object_over_box_extent():
    import dataclasses
    import math

    task = G.sample_layout("eval", 2)
    for target in task.targets:
        assert M.placement_size_ratio(task.scene.image, target) == pytest.approx(0.0)
        x0, y0, x1, y1 = target.box
        doubled = dataclasses.replace(target, box=(x0, y0, x0 + 2 * (x1 - x0), y0 + 2 * (y1 - y0)))
        assert M.placement_size_ratio(task.scene.image, doubled) == pytest.approx(-math.log(2))
    colour, shape = next(p for p in V.PAIRS if p not in task.scene.pairs)
    missing = dataclasses.replace(task.targets[0], colour=colour, shape=shape)
    assert M.placement_size_ratio(task.scene.image, missing) is None


def test_local_accuracy():
    scene = G.split_scene("eval", 4, n_objects=3)
    a, b = scene.objects[:2]
    ma, mb = scene.masks[:2]
    assert M.local_accuracy(scene.image, ma, a.colour, a.shape)
    assert not M.local_accuracy(scene.image, mb, a.colour, a.shape)
    wrong_shape = next(s for s in V.SHAPES if s != a.shape)
    assert not M.local_accuracy(scene.image, ma, a.colour, wrong_shape)
    # A region holding the left columns of the object: success iff at least half of the object is inside.
    x0, y0, x1, y1 = a.box
    cumulative = np.cumsum(ma.sum(axis=0)) / ma.sum()
    for share, expected in ((0.3, False), (0.7, True)):
        region = np.zeros_like(ma)
        region[y0:y1, x0 : int(np.searchsorted(cumulative, share)) + 1] = True
        assert M.local_accuracy(scene.image, region, a.colour, a.shape) == expected


def test_psnr_definitions():
    a = np.zeros((16, 16, 3), np.float32)
    assert M.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert M.psnr(a, a) == math.inf
    u = np.full((16, 16, 3), 100, np.uint8)
    assert M.psnr(u, u + 10) == pytest.approx(20 * math.log10(255 / 10))
    noise = np.random.default_rng(0).normal(0, 0.05, a.shape).astype(np.float32)
    assert M.psnr(a, noise) == pytest.approx(-10 * math.log10(float((noise.astype(np.float64) ** 2).mean())))
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    b = a.copy()
    b[mask] = 0.5
    assert M.psnr(a, b, mask) == pytest.approx(10 * math.log10(1 / 0.25))
    assert M.psnr_outside(b, a, mask) == math.inf
    with pytest.raises(ValueError):
        M.psnr(a, b, np.zeros((16, 16), bool))


def test_attention_localisation():
    mask = np.zeros((128, 128), bool)
    mask[32:64, 16:80] = True
    share = mask.mean()
    assert M.attention_localisation(np.ones((16, 16)), mask) == pytest.approx(1.0)
    assert M.attention_localisation(torch.ones(1, 24, 24), mask) == pytest.approx(1.0)  # non-integer ratio
    inside = M.area_resize(mask, (16, 16))
    expected = float((inside**2).sum() / inside.sum() / share)
    assert M.attention_localisation(inside, mask) == pytest.approx(expected)
    hard = np.zeros((16, 16))
    hard[4:8, 2:10] = 1.0
    assert M.attention_localisation(hard, mask) == pytest.approx(1 / share)
    assert M.attention_localisation(torch.from_numpy(hard).flatten(), mask) == pytest.approx(1 / share)
    assert M.attention_localisation(1.0 - hard, mask) == 0.0
    assert M.area_resize(mask, (24, 40)).mean() == pytest.approx(share)
    with pytest.raises(ValueError):
        M.attention_localisation(-np.ones((4, 4)), mask)


def test_clip_score():
    x = np.array([1.0, 2.0, 3.0])
    assert M.clip_score(x, 2 * x) == pytest.approx(100.0)
    assert M.clip_score(x, -x) == 0.0
    assert M.clip_score(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(100 / math.sqrt(2))
    batch = M.clip_score(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 0.0]))
    assert np.allclose(batch, [100.0, 0.0])
