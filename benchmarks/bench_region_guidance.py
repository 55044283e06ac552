"""Benchmark ``region_guidance``: does each phrase land in its box?

Layout prompts of 2-4 objects from the shape world's eval split (never used in training), each
object with its box; every arm samples the same prompts with the same seeds (demo model, 20 steps
of DPM++ 2M Karras, CFG 4, one image at a time so times compare):

- ``unguided``: the prompt alone.
- ``conditioning_set_mask``: ComfyUI core masked regional prompting: the prompt everywhere plus,
  per object, "a <phrase>" through ConditioningSetMask on its box.
- ``backward_guidance``: RegionBackwardGuidance with its default settings (the start moved into the
  regions, then gradient steps).
- ``guidance_start_not_moved``: the same with ``move_start`` off (gradient steps alone).
- ``guidance_8_candidates``: the same with 8 start candidates (not a default: it costs more).
- ``guidance_regional_cfg``: the RegionGuidedKSampler (backward guidance plus per-region CFG).

Per arm: ``hit_rate`` (share of objects whose detection has IoU >= 0.5 with its box),
``mean_iou``, ``fidelity`` (whole-image success: every requested colour+shape present once) and
``time_ratio`` (seconds per image / the unguided arm's, measured in the same run, the arms taking
turns on each task).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.shape_world.generator import sample_layout
from benchmarks.shape_world.metrics import hit_rate, placement_iou, whole_image_success

SEED_BASE = 700_000
CANVAS = 128
ARMS = (
    "unguided",
    "conditioning_set_mask",
    "backward_guidance",
    "guidance_start_not_moved",
    "guidance_8_candidates",
    "guidance_regional_cfg",
)


def task_regions(task):
    """REGIONS of a layout task, built by the pack's RegionFromBox node (one per object)."""
    from spatial_control.nodes.regions import RegionFromBox

    regions = None
    for target in task.targets:
        x0, y0, x1, y1 = (v / CANVAS for v in target.box)
        box = (x0, y0, x1 - x0, y1 - y0)
        regions = RegionFromBox.execute(*box, CANVAS, CANVAS, target.phrase, 1.0, regions)[0]
    return regions


def _defaults(node) -> dict:
    """The default value of each widget input of a node that has one."""
    return {
        i.id: i.default
        for i in node.define_schema().inputs
        if getattr(i, "default", None) is not None and i.id not in ("prompt", "seed")
    }


def _arm_image(session, arm: str, task, seed: int) -> np.ndarray:
    from spatial_control.nodes.guided_sampler import RegionGuidedKSampler
    from spatial_control.nodes.region_guidance import RegionBackwardGuidance

    nodes = session.nodes
    if arm == "unguided":
        return session.generate([task.caption], seed)[0][0]
    regions = task_regions(task)
    if arm == "conditioning_set_mask":
        with torch.inference_mode():
            positive = session.encode([task.caption])
            for region in regions:
                phrase_cond = session.encode([f"a {region.phrase}"])
                mask = region.mask[None]
                masked = nodes["ConditioningSetMask"]().append(phrase_cond, mask, "default", 1.0)[0]
                positive = nodes["ConditioningCombine"]().combine(positive, masked)[0]
        return session.generate([task.caption], seed, positive=positive)[0][0]
    if arm in ("backward_guidance", "guidance_start_not_moved", "guidance_8_candidates"):
        settings = _defaults(RegionBackwardGuidance)
        if arm == "guidance_start_not_moved":
            settings["move_start"] = False
        if arm == "guidance_8_candidates":
            settings["candidates"] = 8
        with torch.inference_mode():
            model, positive = RegionBackwardGuidance.execute(
                session.model, session.clip, regions, task.caption, **settings
            ).result
        return session.generate([task.caption], seed, model=model, positive=positive)[0][0]
    if arm == "guidance_regional_cfg":
        settings = _defaults(RegionGuidedKSampler)
        settings.update(steps=20, cfg=4.0, sampler_name="dpmpp_2m", scheduler="karras")
        with torch.inference_mode():
            negative = session.encode([""])
            latent = nodes["EmptyLatentImage"]().generate(CANVAS, CANVAS, 1)[0]
            (out,) = RegionGuidedKSampler.execute(
                model=session.model, clip=session.clip, regions=regions, prompt=task.caption,
                negative=negative, latent_image=latent, seed=seed, **settings,
            ).result  # fmt: skip
            images = nodes["VAEDecode"]().decode(session.vae, out)[0]
        return (images.numpy() * 255).round().astype(np.uint8)[0]
    raise ValueError(f"unknown arm {arm!r}")


def run(quick: bool = False, arms=ARMS) -> dict:
    from benchmarks.comfy_generation import DemoModelSession

    n = 24 if quick else 200
    tasks = [sample_layout("eval", SEED_BASE + i) for i in range(n)]
    session = DemoModelSession()
    _arm_image(session, "unguided", tasks[0], 0)  # warm-up: first-call costs out of the timings
    figures: dict = {"tasks": n, "objects": sum(len(t.targets) for t in tasks), "arms": {}}
    ious = {arm: [] for arm in arms}
    fidelity = {arm: [] for arm in arms}
    seconds = dict.fromkeys(arms, 0.0)
    for i, task in enumerate(tasks):
        for arm in arms:  # arms take turns on each task, so drifts in the machine's speed hit all alike
            start = time.perf_counter()
            image = _arm_image(session, arm, task, SEED_BASE + i)
            seconds[arm] += time.perf_counter() - start
            ious[arm].extend(placement_iou(image, target) for target in task.targets)
            fidelity[arm].append(whole_image_success(image, [t.phrase for t in task.targets]))
    for arm in arms:
        figures["arms"][arm] = {
            "hit_rate": hit_rate(ious[arm]),
            "mean_iou": float(np.mean(ious[arm])),
            "fidelity": float(np.mean(fidelity[arm])),
            "seconds_per_image": seconds[arm] / n,
        }
    plain = figures["arms"]["unguided"]["seconds_per_image"] if "unguided" in arms else None
    for arm_figures in figures["arms"].values():
        arm_figures["time_ratio"] = arm_figures["seconds_per_image"] / plain if plain else None
    return figures
