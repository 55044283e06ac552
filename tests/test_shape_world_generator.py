"""Shape-world generator: determinism, split disjointness, exact masks and the four task variants."""

import math
import time

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.shape_world import generator as G
from benchmarks.shape_world import vocabulary as V
from benchmarks.shape_world.metrics import classify_pixels, psnr_outside


def _scenes(n, split="eval"):
    """Scenes with every background, with and without rotation."""
    kinds = V.BACKGROUNDS
    return [G.split_scene(split, i, background=kinds[i % 3], max_rotation=15.0 * (i % 2)) for i in range(n)]


def test_palette_is_well_separated():
    p = V.PALETTE.astype(float)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    assert d[~np.eye(len(p), dtype=bool)].min() > 70
    assert np.linalg.norm(p - np.array(V.BACKGROUND_GREY), axis=-1).min() > 100


def test_same_split_index_gives_identical_scene():
    for split, i in (("train", 3), ("eval", 7)):
        a, b = G.split_scene(split, i), G.split_scene(split, i)
        assert np.array_equal(a.image, b.image) and a.objects == b.objects
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    l1, l2 = G.sample_layout("eval", 5), G.sample_layout("eval", 5)
    assert l1.caption == l2.caption and [t.box for t in l1.targets] == [t.box for t in l2.targets]
    c1, c2 = G.sample_concepts("eval", 5), G.sample_concepts("eval", 5)
    assert c1.concepts == c2.concepts and all(
        np.array_equal(a.image, b.image) for a, b in zip(c1.scenes, c2.scenes, strict=True)
    )
    t1, t2 = G.sample_grounding("train", 11), G.sample_grounding("train", 11)
    assert t1.text == t2.text and np.array_equal(t1.scene.image, t2.scene.image)
    e1, e2 = G.sample_edit("train", 4), G.sample_edit("train", 4)
    assert e1.text == e2.text and np.array_equal(e1.edited_image, e2.edited_image)


def test_train_and_eval_never_share_seeds():
    train = {G.split_scene("train", i).image.tobytes() for i in range(200)}
    evals = {G.split_scene("eval", i).image.tobytes() for i in range(200)}
    assert len(train) == 200 and len(evals) == 200 and not train & evals
    draws = {s: G.split_rng(s, 0).integers(0, 2**62, 4).tolist() for s in G.SPLIT_IDS}
    assert len({tuple(d) for d in draws.values()}) == len(G.SPLIT_IDS)
    assert G.split_rng("train", 0, "scene").random() != G.split_rng("train", 0, "edit").random()
    with pytest.raises(ValueError):
        G.split_rng("validation", 0)
    with pytest.raises(ValueError):
        G.split_rng("train", -1)


def test_scene_objects_masks_and_boxes():
    for scene in _scenes(90):
        n = len(scene.objects)
        assert 1 <= n <= 4 and len(set(scene.pairs)) == n
        union = np.zeros(scene.image.shape[:2], bool)
        for obj, mask, cov in zip(scene.objects, scene.masks, scene.coverages, strict=True):
            lo, hi = V.SIZES[obj.size]
            assert lo <= obj.extent <= hi and obj.colour in V.COLOURS and obj.shape in V.SHAPES
            assert obj.box == G.mask_box(mask) and mask.any()
            assert np.array_equal(mask, cov >= 0.5)
            # Fully covered pixels carry the exact palette colour.
            assert (scene.image[cov == 1.0] == np.array(V.COLOURS[obj.colour])).all()
            # Objects are at least a few pixels apart.
            assert not (ndimage.binary_dilation(mask, iterations=3) & union).any()
            union |= mask
        untouched = sum(c > 0 for c in scene.coverages) == 0
        assert np.array_equal(scene.image[untouched], scene.background[untouched])
        assert scene.caption == G.make_caption(scene.phrases)


def test_captions_and_phrases():
    assert G.make_caption(["large red circle"]) == "a large red circle"
    two = G.make_caption(["large red circle", "small blue square"])
    assert two == "a large red circle and a small blue square"
    assert G.make_caption(["small red cross", "large green circle", "small blue square"]) == (
        "a small red cross, a large green circle and a small blue square"
    )
    assert V.parse_phrase("a large red circle") == ("large", "red", "circle")
    assert V.parse_phrase("the blue square") == (None, "blue", "square")
    with pytest.raises(ValueError):
        V.parse_phrase("a huge red circle")


@pytest.mark.parametrize("shape", V.SHAPES)
@pytest.mark.parametrize("rotation", [0.0, 12.0, 45.0])
def test_rendered_area_matches_geometry(shape, rotation):
    obj = G.SceneObject("blue", shape, "large", (63.3, 64.6), 40.0, rotation)
    scene = G.render_scene([obj])
    area = G.shape_area(shape, 40.0)
    assert scene.coverages[0].sum() == pytest.approx(area, rel=0.01)
    assert scene.masks[0].sum() == pytest.approx(area, rel=0.03)
    x0, y0, x1, y1 = G.outline_box(shape, obj.centre, obj.extent, rotation)
    bx0, by0, bx1, by1 = scene.objects[0].box
    assert x0 - 1 <= bx0 and y0 - 1 <= by0 and bx1 <= x1 + 1 and by1 <= y1 + 1
    assert bx1 - bx0 >= x1 - x0 - 2 and by1 - by0 >= y1 - y0 - 2


def test_rotation_turns_counter_clockwise():
    # A triangle's apex points up; rotated by +90 degrees (counter-clockwise on screen) it points left.
    tri = G.render_scene([G.SceneObject("red", "triangle", "large", (64.0, 64.0), 40.0, 90.0)]).masks[0]
    cols = np.flatnonzero(tri.any(axis=0))
    left, right = tri[:, cols[0] + 2].sum(), tri[:, cols[-1] - 2].sum()
    assert left < right


def test_textured_backgrounds_stay_far_from_the_palette():
    rng = np.random.default_rng(0)
    for kind in V.BACKGROUNDS:
        for _ in range(10):
            bg = V.make_background(kind, 128, rng)
            assert bg.shape == (128, 128, 3) and bg.dtype == np.uint8
            assert V.TEXTURE_RANGE[0] - 2 <= bg.min() and bg.max() <= V.TEXTURE_RANGE[1] + 2
            labels, alpha = classify_pixels(bg)
            assert (labels == -1).all() and np.abs(alpha).max() < 0.05
    assert V.make_background("noise", 128, rng).std() > 1.0


def test_scene_generation_is_fast():
    rng = np.random.default_rng(1)
    G.sample_scene(rng, 4)
    start = time.perf_counter()
    for _ in range(40):
        G.sample_scene(rng, 4)
    per_scene = (time.perf_counter() - start) / 40
    assert per_scene < 0.015  # target < 5 ms; generous for a shared CPU


def test_layout_task():
    for i in range(20):
        task = G.sample_layout("eval", i)
        assert 2 <= len(task.targets) <= 4 and task.caption == task.scene.caption
        for t, obj, mask in zip(task.targets, task.scene.objects, task.scene.masks, strict=True):
            assert t.phrase == obj.phrase and t.box == obj.box and np.array_equal(t.mask, mask)
            assert t.phrase in task.caption


def _independent_relation(relation, box, anchors):
    """Centre-based reading of the relations (weaker than the generator's, but independent of it)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]
    if relation == "between":
        (bx, by), (qx, qy) = centres
        return min(bx, qx) < cx < max(bx, qx) or min(by, qy) < cy < max(by, qy)
    ((ax, ay),) = centres
    if relation == "next to":
        return max(abs(cx - ax), abs(cy - ay)) <= 46 + 16  # largest extent + the gap
    return {"left of": cx < ax, "right of": cx > ax, "above": cy < ay, "below": cy > ay}[relation]


def test_grounding_relations_hold_in_the_full_scene():
    seen = set()
    for i in range(80):
        task = G.sample_grounding("eval", i)
        full, scene = task.full_scene, task.scene
        assert len(scene.objects) == len(full.objects) - 1
        t = full.pairs.index((task.target.colour, task.target.shape))
        assert task.target.box == full.objects[t].box and np.array_equal(task.target.mask, full.masks[t])
        assert (task.target.colour, task.target.shape) not in scene.pairs
        anchors = [full.objects[full.pairs.index(p)].box for p in task.anchors]
        assert G.relation_holds(task.relation, task.target.box, anchors, margin=4.0)
        assert _independent_relation(task.relation, task.target.box, anchors)
        assert task.text.startswith(f"a {task.target.phrase} {task.relation} the ")
        for colour, shape in task.anchors:
            assert f"the {colour} {shape}" in task.text
        # Removing the object changes nothing else.
        support = full.coverages[t] > 0
        assert np.array_equal(scene.image[~support], full.image[~support])
        assert np.array_equal(scene.image[support], full.background[support])
        seen.add(task.relation)
    assert seen == set(G.RELATIONS)


def test_relation_definitions():
    a, b = (10, 50, 30, 70), (60, 50, 80, 70)
    assert G.relation_holds("left of", a, [b]) and G.relation_holds("right of", b, [a])
    assert not G.relation_holds("left of", a, [b], margin=31)
    assert G.relation_holds("above", (50, 0, 70, 20), [(50, 40, 70, 60)])
    assert not G.relation_holds("left of", (0, 0, 10, 10), [(12, 100, 20, 110)])  # mostly above
    assert G.relation_holds("between", (40, 50, 50, 70), [a, b])
    assert not G.relation_holds("between", (40, 100, 50, 120), [a, b])
    assert G.relation_holds("next to", (10, 50, 30, 70), [(40, 50, 60, 70)])  # 10 px apart
    assert not G.relation_holds("next to", a, [b])  # 30 px apart
    assert not G.relation_holds("next to", (10, 50, 30, 70), [(20, 60, 40, 80)])  # overlapping


def test_edit_changes_only_the_region():
    for i in range(40):
        task = G.sample_edit("eval", i)
        original, edited = task.scene.image, task.edited_image
        changed = (original != edited).any(axis=-1)
        assert not (changed & ~task.change_mask).any()
        assert changed[task.mask].all()
        near = ndimage.binary_dilation(task.mask, structure=np.ones((3, 3), bool), iterations=2)
        assert not (task.change_mask & ~near).any()
        assert psnr_outside(edited, original, task.change_mask) == math.inf
        assert task.new_colour != task.target.colour
        assert (task.new_colour, task.target.shape) not in task.scene.pairs
        # The referring expression picks out exactly the edited object.
        words = task.text.split()
        assert words[:2] == ["make", "the"] and words[-1] == task.new_colour
        ref = words[2:-1]
        matches = [o for o in task.scene.objects if ref in ([o.shape], [o.colour, o.shape])]
        assert len(matches) == 1 and matches[0].pair == (task.target.colour, task.target.shape)
        t = task.scene.pairs.index((task.target.colour, task.target.shape))
        assert task.edited.objects[t].colour == task.new_colour


def test_concept_sets():
    counts = set()
    for i in range(15):
        cs = G.sample_concepts("eval", i)
        assert len(cs.scenes) == 4 and 1 <= len(cs.concepts) <= 3
        counts.add(len(cs.concepts))
        boxes = []
        for scene, masks in zip(cs.scenes, cs.masks, strict=True):
            assert len(scene.objects) > len(cs.concepts) and len(scene.objects) <= 4
            for c, mask in zip(cs.concepts, masks, strict=True):
                assert scene.pairs.count(c) == 1
                assert np.array_equal(mask, scene.masks[scene.pairs.index(c)])
            boxes.append(scene.objects[scene.pairs.index(cs.concepts[0])].box)
        assert len(set(boxes)) > 1
        shared = set.intersection(*(set(scene.pairs) for scene in cs.scenes))
        assert shared == set(cs.concepts)  # no distractor is shared like a concept
    assert counts == {1, 2, 3}


def test_a_distractor_never_recurs_in_every_scene_of_a_concept_set():
    for i in range(60):
        cs = G.sample_concepts("train", 5000 + i, k=3 + i % 2)
        assert set.intersection(*(set(scene.pairs) for scene in cs.scenes)) == set(cs.concepts)


def test_degradations():
    flat = np.full((128, 128, 3), 77, np.uint8)
    assert np.array_equal(G.down_up(flat), flat) and np.array_equal(G.gaussian_blur(flat, 1.5), flat)
    scene = G.split_scene("eval", 0)
    for out in (G.down_up(scene.image), G.gaussian_blur(scene.image, 1.5)):
        assert out.shape == scene.image.shape and out.dtype == np.uint8
        assert abs(out.astype(float).mean() - scene.image.astype(float).mean()) < 1.0
        assert not np.array_equal(out, scene.image)
