"""Benchmark ``region_guidance``: does each phrase land in its box, at its box's size?

Layout prompts of 2-4 objects from the shape world's eval split (never used in training), each
object with its box, written in two prompt sets (``benchmarks/shape_world/captions.py``):
``sized``, the scenes' own template with a size word per object ("a large red circle and a small
blue square"), and ``plain``, as users first write them ("a red circle and a blue square"); the
regions' phrases are the prompt's words for each object. Every arm samples the same layouts with
the same seeds in both sets (demo model, 20 steps of DPM++ 2M Karras, CFG 4, one image at a time
so times compare):

- ``unguided``: the prompt alone.
- ``conditioning_set_mask``: ComfyUI core masked regional prompting: the prompt everywhere plus,
  per object, "a <phrase>" through ConditioningSetMask on its box.
- ``attention_masking``: RegionAttentionMasking with its defaults (each phrase's tokens attended
  to only inside its box in the early steps; DenseDiffusion-style masking without gradients).
- ``attention_couple``: the same with ``region_prompts`` (each phrase also encoded on its own and
  attended to only inside its box: what attention-couple packs do).
- ``backward_guidance``: RegionBackwardGuidance with its default settings (the start moved into the
  regions, then gradient steps).
- ``masking_and_guidance``: attention masking's MODEL into backward guidance, both at defaults.
- ``guidance_4_candidates``: backward guidance with 4 start candidates (not a default: it costs
  more).

Per set and arm, overall and per object count (2, 3, 4): ``hit_rate`` (share of objects whose
detection has IoU >= 0.5 with its box), ``mean_iou``, ``size_error`` (mean ``|log(object extent /
box extent)|`` over the objects found, ``metrics.placement_size_ratio``), ``size_slope`` (the
least-squares slope of log object extent on log box extent over the objects found: 1 when the
objects' size follows their boxes', 0 when the model draws one size whatever the box), ``fidelity``
(whole-image success: every requested colour+shape present once) and ``time_ratio`` (seconds per
image / the unguided arm's, measured in the same run, the arms taking turns on each task).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from benchmarks.shape_world.captions import PROMPT_FORMS, write_caption
from benchmarks.shape_world.generator import sample_layout
from benchmarks.shape_world.metrics import (
    box_extent,
    hit_rate,
    placement_iou,
    placement_size_ratio,
    whole_image_success,
)

SEED_BASE = 700_000
CANVAS = 128
PROMPT_SETS = ("sized", "plain")
ARMS = (
    "unguided",
    "conditioning_set_mask",
    "attention_masking",
    "attention_couple",
    "backward_guidance",
    "masking_and_guidance",
    "guidance_4_candidates",
)


def task_regions(task, phrases):
    """REGIONS of a layout task, built by the pack's RegionFromBox node (one per object, with the
    prompt's words for it)."""
    from spatial_control.nodes.regions import RegionFromBox

    regions = None
    for target, phrase in zip(task.targets, phrases, strict=True):
        x0, y0, x1, y1 = (v / CANVAS for v in target.box)
        box = (x0, y0, x1 - x0, y1 - y0)
        regions = RegionFromBox.execute(*box, CANVAS, CANVAS, phrase, 1.0, regions)[0]
    return regions


def _defaults(node) -> dict:
    """The default value of each widget input of a node that has one."""
    return {
        i.id: i.default
        for i in node.define_schema().inputs
        if getattr(i, "default", None) is not None and i.id not in ("prompt", "seed")
    }


def arm_image(session, arm: str, caption: str, regions, seed: int) -> np.ndarray:
    from spatial_control.nodes.attention_masking import RegionAttentionMasking
    from spatial_control.nodes.region_guidance import RegionBackwardGuidance

    nodes = session.nodes
    if arm == "unguided":
        return session.generate([caption], seed)[0][0]
    if arm == "conditioning_set_mask":
        with torch.inference_mode():
            positive = session.encode([caption])
            for region in regions:
                phrase_cond = session.encode([f"a {region.phrase}"])
                mask = region.mask[None]
                masked = nodes["ConditioningSetMask"]().append(phrase_cond, mask, "default", 1.0)[0]
                positive = nodes["ConditioningCombine"]().combine(positive, masked)[0]
        return session.generate([caption], seed, positive=positive)[0][0]
    model, positive = session.model, None
    with torch.inference_mode():
        if arm in ("attention_masking", "attention_couple", "masking_and_guidance"):
            settings = _defaults(RegionAttentionMasking)
            settings["region_prompts"] = arm == "attention_couple"
            model, positive = RegionAttentionMasking.execute(
                model, session.clip, regions, caption, **settings
            ).result
        if arm in ("backward_guidance", "masking_and_guidance", "guidance_4_candidates"):
            settings = _defaults(RegionBackwardGuidance)
            if arm == "guidance_4_candidates":
                settings["candidates"] = 4
            model, positive = RegionBackwardGuidance.execute(
                model, session.clip, regions, caption, positive=positive, **settings
            ).result
    if model is session.model:
        raise ValueError(f"unknown arm {arm!r}")
    return session.generate([caption], seed, model=model, positive=positive)[0][0]


def _size_figures(records: list[dict]) -> dict:
    """``size_error`` and ``size_slope`` over the objects found; ``records``: per task, its objects'
    ``sizes`` (log object extent / box extent, None when not found) and ``box_extents``."""
    pairs = [
        (math.log(extent), size)
        for r in records
        for size, extent in zip(r["sizes"], r["box_extents"], strict=True)
        if size is not None
    ]
    if not pairs:
        return {"size_error": None, "size_slope": None}
    boxes, sizes = np.array(pairs).T
    slope = None
    if len(pairs) >= 3 and np.ptp(boxes) > 0:
        slope = float(np.polyfit(boxes, boxes + sizes, 1)[0])
    return {"size_error": float(np.mean(np.abs(sizes))), "size_slope": slope}


def _figures(records: list[dict], seconds: float) -> dict:
    """Figures of one arm on one prompt set; ``records``: per task, its objects' IoUs, size ratios
    and box extents (``_size_figures``) and its whole-image success."""
    ious = [v for r in records for v in r["ious"]]
    figures = {
        "hit_rate": hit_rate(ious),
        "mean_iou": float(np.mean(ious)),
        **_size_figures(records),
        "fidelity": float(np.mean([r["success"] for r in records])),
        "seconds_per_image": seconds / len(records),
        "by_objects": {},
    }
    for k in sorted({len(r["ious"]) for r in records}):
        subset = [r for r in records if len(r["ious"]) == k]
        figures["by_objects"][str(k)] = {
            "tasks": len(subset),
            "hit_rate": hit_rate([v for r in subset for v in r["ious"]]),
            **_size_figures(subset),
            "fidelity": float(np.mean([r["success"] for r in subset])),
        }
    return figures


def run(quick: bool = False, arms=ARMS, prompt_sets=PROMPT_SETS, device: str = "cpu") -> dict:
    from benchmarks.comfy_generation import DemoModelSession

    n = 24 if quick else 200
    tasks = [sample_layout("eval", SEED_BASE + i) for i in range(n)]
    session = DemoModelSession(device=device)
    written = {name: [write_caption(t.targets, PROMPT_FORMS[name]) for t in tasks] for name in prompt_sets}
    warm = written[prompt_sets[0]][0]
    arm_image(session, "unguided", warm.text, None, 0)  # warm-up: first-call costs out of the timings
    figures: dict = {"tasks": n, "objects": sum(len(t.targets) for t in tasks), "device": device, "sets": {}}
    for name in prompt_sets:
        records = {arm: [] for arm in arms}
        seconds = dict.fromkeys(arms, 0.0)
        for i, (task, caption) in enumerate(zip(tasks, written[name], strict=True)):
            regions = task_regions(task, caption.phrases)
            for arm in arms:  # arms take turns on each task, so drifts in the machine's speed hit all alike
                start = time.perf_counter()
                image = arm_image(session, arm, caption.text, regions, SEED_BASE + i)
                seconds[arm] += time.perf_counter() - start
                records[arm].append({
                    "ious": [placement_iou(image, t) for t in task.targets],
                    "sizes": [placement_size_ratio(image, t) for t in task.targets],
                    "box_extents": [box_extent(t.box) for t in task.targets],
                    "success": whole_image_success(image, task.targets),
                })  # fmt: skip
        by_arm = {arm: _figures(records[arm], seconds[arm]) for arm in arms}
        plain = by_arm["unguided"]["seconds_per_image"] if "unguided" in by_arm else None
        for arm_figures in by_arm.values():
            arm_figures["time_ratio"] = arm_figures["seconds_per_image"] / plain if plain else None
        figures["sets"][name] = {"example_prompt": written[name][0].text, "arms": by_arm}
    return figures
