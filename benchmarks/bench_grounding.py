"""Benchmark ``grounding``: where a described object belongs in an image, then generating it there (TOG).

Grounding tasks of the shape world's test split (never used in training or tuning): a scene with one
object removed and a text naming it and where it was, written the ways users write
(``benchmarks.shape_world.grounding_phrasing``: verbs, relation wordings, size words optional), every
relation ("left of", "right of", "above", "below", "between", "next to") as often.

Map arms (each gives one box):

- ``centre_prior``: a box of the training objects' mean size at the image centre.
- ``random_valid_box``: that box at a random place where it overlaps no object (the relation ignored).
- ``no_alignment``: the grounding network trained without deformable alignment (the ablation, same
  recipe and steps).
- ``ours``: the TextGroundingMap network.

Figures, overall and per relation: ``map_accuracy`` (the box satisfies the relation to the anchors and
overlaps no object: ``metrics.placement_valid``), ``pointing`` (a box of the true size centred on the
arm's point is valid), ``box_iou`` with the removed object's box. For ``ours`` also the map's
confidence on these texts and on texts whose anchor the image lacks, and the share of each flagged
below the node's default ``min_confidence``.

TOG on the first ``tog_tasks`` tasks, through stock nodes on the demo model as the workflow
``shape_world_text_grounding`` runs them (``DemoModelSession.grounded_generation``: the model guided by
RegionBackwardGuidance with its defaults (re-layout included) to put the phrase in the box; KSampler
20 steps DPM++ 2M Karras, CFG 4 from an empty latent lays the object out;
LatentCompositeMasked pastes the box grown by a quarter of its side per side into the image's latent;
SetLatentNoiseMask + KSampler at denoise 0.3 blends it in; ImageCompositeMasked keeps every pixel
outside): ``ours`` (the predicted box), ``true_box`` (the removed object's own box: guidance with the
ground-truth placement) and ``whole_image`` (plain inpainting with a whole-image mask, unguided, the
user's text as the prompt). ``tog_success``: an object of the right colour and shape is detected whose box
is a valid placement; ``psnr_outside``: dB outside the generated object's box (grown 2 px; when nothing
was generated, outside the regenerated area, or outside the true box for ``whole_image``), capped at 60.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.shape_world.generator import RELATIONS
from benchmarks.shape_world.grounding_phrasing import written_grounding
from benchmarks.shape_world.metrics import box_iou, detect_objects, placement_valid, psnr_outside
from benchmarks.shape_world.vocabulary import CANVAS, SIZES

MAP_ARMS = ("centre_prior", "random_valid_box", "no_alignment", "ours")
TOG_ARMS = ("ours", "true_box", "whole_image")
BENCH_SEED = 5
PSNR_CAP = 60.0
MIN_CONFIDENCE = 0.5  # TextGroundingMap's defaults
MASK_MARGIN = 0.25
MEAN_EXTENT = float(np.mean([np.mean(v) for v in SIZES.values()]))


def centred(cx: float, cy: float, w: float, h: float):
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def random_free_box(task, rng: np.random.Generator, side: float = MEAN_EXTENT, tries: int = 200):
    """A ``side``-square pixel box at a uniform place that overlaps no object of the scene."""
    from benchmarks.shape_world.metrics import object_overlap

    box = None
    for _ in range(tries):
        x0, y0 = rng.uniform(0, CANVAS - side, 2)
        box = (x0, y0, x0 + side, y0 + side)
        if not object_overlap(box, task.scene.masks):
            return box
    return box


class Grounders:
    """The map arms' boxes (pixels on the 128 canvas) and centres for one task."""

    def __init__(self, device: str = "cpu"):
        import comfy.sd1_clip  # noqa: F401  (importable once the session exists)

        from scripts.comfy_headless import find_comfyui
        from spatial_control.models.grounding_net import ABLATION_WEIGHTS, load_grounding_net
        from spatial_control.models.text_encoder import load_clip_tokenizer

        self.device = device
        self.networks = {
            "ours": load_grounding_net()[0].to(device),
            "no_alignment": load_grounding_net(ABLATION_WEIGHTS)[0].to(device),
        }
        self.tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")

    @torch.inference_mode()
    def network(self, arm: str, image: torch.Tensor, text: str):
        """(pixel box, pixel centre, confidence) from the network's last map on an IMAGE ``[1, H, W, 3]``."""
        from spatial_control.guidance.grounding import ground_text
        from spatial_control.models.text_encoder import tokenize

        p, _ = ground_text(self.networks[arm], image, tokenize(self.tokenizer, [text]))
        return tuple(v * CANVAS for v in p.box), (p.centre[0] * CANVAS, p.centre[1] * CANVAS), p.confidence

    def box(self, arm: str, sample, image: torch.Tensor, rng: np.random.Generator):
        if arm in self.networks:
            return self.network(arm, image, sample.text)
        if arm == "centre_prior":
            box = centred(CANVAS / 2, CANVAS / 2, MEAN_EXTENT, MEAN_EXTENT)
        else:
            box = random_free_box(sample.task, rng)
        return box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), None


def map_record(sample, box, centre) -> dict:
    task = sample.task
    x0, y0, x1, y1 = task.target.box
    return {
        "relation": task.relation,
        "map_accuracy": bool(placement_valid(box, task)),
        "pointing": bool(placement_valid(centred(*centre, x1 - x0, y1 - y0), task)),
        "box_iou": float(box_iou(box, task.target.box)),
    }


def tog_record(session, sample, image: torch.Tensor, box, arm: str, seed: int) -> dict:
    """Generate the object in ``box`` (pixels; the whole image for ``whole_image``) and score it."""
    from spatial_control.guidance.grounding import grow_box
    from spatial_control.guidance.grounding_text import parse_grounding

    request = parse_grounding(sample.text)
    task = sample.task
    if arm == "whole_image":
        edited = session.masked_generation(image, (0.0, 0.0, 1.0, 1.0), sample.text, None, 1.0, seed)
        fallback = task.target.box
    else:
        fraction = tuple(min(1.0, max(0.0, v / CANVAS)) for v in box)
        area = grow_box(fraction, MASK_MARGIN)
        edited = session.grounded_generation(image, fraction, area, request.prompt, request.phrase, seed)
        fallback = tuple(int(round(v * CANVAS)) for v in area)
    return {"relation": task.relation, **addition_figures(task, edited, fallback)}


def addition_figures(task, edited: np.ndarray, fallback) -> dict:
    """Score ``edited`` (uint8 ``[H, W, 3]``), into which the ``GroundingTask``'s object was to be added:
    ``tog_success`` (an object of its colour and shape is detected at a valid place), ``object_generated``
    and ``psnr_outside`` the made object's box grown 2 px (when none was made, outside the pixel box
    ``fallback``), capped at 60."""
    pair = (task.target.colour, task.target.shape)
    found = [d for d in detect_objects(edited) if d.pair == pair]
    valid = [d for d in found if placement_valid(d.box, task)]
    made = (valid or found or [None])[0]
    x0, y0, x1, y1 = (
        fallback if made is None else (made.box[0] - 2, made.box[1] - 2, made.box[2] + 2, made.box[3] + 2)
    )
    keep_out = np.zeros((CANVAS, CANVAS), bool)
    keep_out[max(0, y0) : y1, max(0, x0) : x1] = True
    return {
        "tog_success": bool(valid),
        "object_generated": bool(found),
        "psnr_outside": float(min(PSNR_CAP, psnr_outside(edited, task.scene.image, keep_out))),
    }


def mean(rows: list[dict], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 3)


def summarise(rows: list[dict], keys: tuple[str, ...]) -> dict:
    out = {k: mean(rows, k) for k in keys}
    for relation in RELATIONS:
        subset = [r for r in rows if r["relation"] == relation]
        if subset:
            out[relation] = {k: mean(subset, k) for k in keys}
    return out


def run(quick: bool = False, device: str = "cpu") -> dict:
    from benchmarks.comfy_generation import DemoModelSession

    count, absent_count, tog_count = (24, 12, 6) if quick else (300, 60, 300)
    session = DemoModelSession(device=device)
    grounders = Grounders(device)
    maps = {arm: [] for arm in MAP_ARMS}
    tog = {arm: [] for arm in TOG_ARMS}
    confidence, seconds = [], []
    for i in range(count):
        sample = written_grounding("test", i, BENCH_SEED)
        image = torch.from_numpy(sample.task.scene.image).float()[None] / 255
        rng = np.random.default_rng([BENCH_SEED, 7, i])
        boxes = {}
        for arm in MAP_ARMS:
            start = time.perf_counter()
            box, centre, conf = grounders.box(arm, sample, image, rng)
            if arm == "ours":
                seconds.append(time.perf_counter() - start)
                confidence.append(conf)
            boxes[arm] = box
            maps[arm].append({"task": i, "text": sample.text, **map_record(sample, box, centre)})
        if i < tog_count:
            seed = 900_000 + i
            arm_boxes = {"ours": boxes["ours"], "true_box": sample.task.target.box, "whole_image": None}
            for arm, box in arm_boxes.items():
                tog[arm].append({"task": i, **tog_record(session, sample, image, box, arm, seed)})
    absent = []
    for i in range(absent_count):
        sample = written_grounding("test", count + i, BENCH_SEED, absent_share=1.0)
        image = torch.from_numpy(sample.task.scene.image).float()[None] / 255
        absent.append(grounders.network("ours", image, sample.text)[2])
    map_keys = ("map_accuracy", "pointing", "box_iou")
    figures = {
        "tasks": count,
        "map": {arm: summarise(rows, map_keys) for arm, rows in maps.items()},
        "confidence": {
            "present_mean": round(float(np.mean(confidence)), 3),
            "absent_anchor_mean": round(float(np.mean(absent)), 3),
            "present_flagged": round(float(np.mean([c < MIN_CONFIDENCE for c in confidence])), 3),
            "absent_anchor_flagged": round(float(np.mean([c < MIN_CONFIDENCE for c in absent])), 3),
            "absent_tasks": absent_count,
        },
        "seconds_per_map": round(float(np.mean(seconds)), 4),
        "tog_tasks": tog_count,
        "tog": {
            arm: summarise(rows, ("tog_success", "object_generated", "psnr_outside"))
            for arm, rows in tog.items()
        },
        "records": {"map": maps, "tog": tog},
    }
    return figures
