"""Benchmark ``spatext``: does each painted region get what its own text describes, in its shape?

Held-out segment maps from the shape world's test split (1-4 objects per scene, never used in
training): each object's exact mask is a region (circles, triangles, crosses: free-form shapes,
not boxes), described by its own text written as users write it (``captions.random_style`` for one
object: "a red circle", "large red circle", "the blue square"), with a global prompt for the scene
in a user style too. The demo model samples every arm with the same seeds (20 steps of DPM++ 2M
Karras, CFG 4, one image at a time so times compare):

- ``plain``: the global prompt alone.
- ``conditioning_set_mask``: ComfyUI core: the global prompt everywhere plus each region's text
  through ConditioningSetMask on its mask.
- ``training_free``: SpatioTextualEncoder without a spatext encoder, its defaults (each region's
  text, and the global prompt's words it shares, attended to only inside its region, every step).
- ``training_free_guided``: the training-free path's MODEL and positive into Region Backward
  Guidance, given the global prompt and, per region, its mask with the prompt's own words for that
  object (the chain the node's tooltip describes), with the settings docs/spatio_textual.md gives
  for painted regions (``PAINTED_REGION_GUIDANCE``: 4 start candidates, guided to 0.3 of the steps;
  chosen on eval-split maps, never these).
- ``training_free_guided_node_defaults`` (optional): the same chain with Region Backward Guidance's
  own defaults (tuned for boxes: 1 candidate, 0.1 of the steps).
- ``training_free_chunks_only`` (optional, not in the default run): the same with
  ``mask_prompt_words`` off (only the appended region texts masked: the global prompt's words for
  each object act everywhere).
- ``trained``: SpatioTextualEncoder's trained path with Shape World SpaText Model (the
  spatio-textual map of prior image embeddings concatenated to the latent).
- ``trained_no_prior``: the same with the region texts' CLIP text embeddings in the map (ablation).
- ``..._mc``: the same conditioning through Multi-Conditional CFG Guider, multi-scale, with
  s_global = 4 (the global prompt) and s_full = 6 (the spatial condition on top of it); the arms
  without ``_mc`` are single-scale CFG 4 through the stock KSampler.

Figures per arm: ``local_iou`` (per region: IoU of the detected object of the region's colour that
overlaps the region most, 0 if none), ``local_fidelity`` (``metrics.local_accuracy``: the right
colour and shape, at least half inside the region), ``global_fidelity`` (every requested object
present once), ``frechet_distance`` (of the small CLIP's image features, generated vs the real
scenes of the same maps) and seconds per image; local figures also by object count.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.shape_world.captions import random_style, write_caption
from benchmarks.shape_world.generator import split_scene
from benchmarks.shape_world.metrics import (
    detect_objects,
    frechet_distance,
    local_accuracy,
    mask_iou,
    whole_image_success,
)

SEED_BASE = 800_000
CFG = 4.0
MC_SCALES = {"global_scale": 4.0, "spatial_scale": 6.0}
ARMS = (
    "plain", "conditioning_set_mask", "training_free", "training_free_guided", "trained", "trained_no_prior",
    "conditioning_set_mask_mc", "training_free_mc", "trained_mc",
)  # fmt: skip
# Not in the default run (run(arms=...)): chunks_only gave the same images as training_free on the demo
# model; node_defaults is the guided chain at Region Backward Guidance's own defaults, for comparison.
OPTIONAL_ARMS = ("training_free_chunks_only", "training_free_guided_node_defaults")
# A painted outline asks for the object's exact extent, not only its place: more guided steps and
# start candidates close more of the gap (eval-split maps; docs/spatio_textual.md).
PAINTED_REGION_GUIDANCE = {"candidates": 4, "end_at": 0.3}
LABEL_COLOURS = ("#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ff00ff", "#00ffff")


class MapTask:
    """One held-out scene as a segment-map task: its masks, region texts, global prompt and map."""

    def __init__(self, index: int):
        rng = np.random.default_rng([SEED_BASE, index])
        self.scene = split_scene("test", SEED_BASE + index)
        objects = self.scene.objects
        written = write_caption(objects, random_style(rng, len(objects)), rng)
        self.global_prompt, self.prompt_phrases = written.text, written.phrases
        self.texts = [write_caption([o], random_style(rng, 1), rng).text for o in objects]
        self.masks = [torch.from_numpy(m) for m in self.scene.masks]
        segment = torch.zeros(1, *self.scene.image.shape[:2], 3)
        for mask, colour in zip(self.masks, LABEL_COLOURS, strict=False):
            segment[0][mask] = torch.tensor([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        self.segment_map = segment
        self.region_texts = "\n".join(f"{c}: {t}" for c, t in zip(LABEL_COLOURS, self.texts, strict=False))


def _defaults(node) -> dict:
    return {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}


class Arms:
    """The demo model and the SpaText model in one ComfyUI session, and each arm's sampling."""

    def __init__(self, device: str = "cpu"):
        from benchmarks.comfy_generation import DemoModelSession

        self.session = DemoModelSession(device=device)  # puts ComfyUI on the path: nodes import after it
        from spatial_control.nodes.demo_model import ShapeWorldSpaTextModel

        with torch.inference_mode():
            self.spatext = {prior: ShapeWorldSpaTextModel.execute(prior).result for prior in (True, False)}

    def conditioning(self, arm: str, task: MapTask):
        """(model, spatial positive, global positive, clip) of an arm."""
        from spatial_control.nodes.spatio_textual import SpatioTextualEncoder

        s = self.session
        base = arm.removesuffix("_mc")
        if base == "plain":
            positive = s.encode([task.global_prompt])
            return s.model, positive, positive, s.clip
        if base == "conditioning_set_mask":
            positive = s.encode([task.global_prompt])
            spatial = positive
            for text, mask in zip(task.texts, task.masks, strict=True):
                masked = s.nodes["ConditioningSetMask"]().append(
                    s.encode([text]), mask[None].float(), "default", 1.0
                )
                spatial = s.nodes["ConditioningCombine"]().combine(spatial, masked[0])[0]
            return s.model, spatial, positive, s.clip
        settings = _defaults(SpatioTextualEncoder)
        settings.update(region_texts=task.region_texts, global_prompt=task.global_prompt)
        if base.startswith("training_free"):
            model, clip = s.model, s.clip
            settings["mask_prompt_words"] = base != "training_free_chunks_only"
        else:
            model, clip, _, encoder = self.spatext[base == "trained"]
            settings["spatext_encoder"] = encoder
        settings["segment_map"] = task.segment_map
        model, spatial, global_, *_ = SpatioTextualEncoder.execute(model, clip, **settings).result
        if base.startswith("training_free_guided"):
            overrides = {} if base.endswith("node_defaults") else PAINTED_REGION_GUIDANCE
            model, spatial = self.guided(task, model, spatial, overrides)
        return model, spatial, global_, clip

    def guided(self, task: MapTask, model, positive, overrides: dict):
        from spatial_control.guidance.regions import Region
        from spatial_control.nodes.region_guidance import RegionBackwardGuidance

        regions = tuple(Region(p, m.float()) for p, m in zip(task.prompt_phrases, task.masks, strict=True))
        settings = {k: v for k, v in _defaults(RegionBackwardGuidance).items() if k != "prompt"} | overrides
        return RegionBackwardGuidance.execute(
            model, self.session.clip, regions, task.global_prompt, positive=positive, **settings
        ).result

    def image(self, arm: str, task: MapTask, seed: int) -> np.ndarray:
        s = self.session
        with torch.inference_mode():
            model, spatial, global_, clip = self.conditioning(arm, task)
            negative = s.encode([""])
            latent = s.nodes["EmptyLatentImage"]().generate(128, 128, 1)[0]
            if arm.endswith("_mc"):
                from spatial_control.guidance.backends.comfy_multi_cfg import MultiConditionalCFGGuider

                guider = MultiConditionalCFGGuider(model, MC_SCALES["global_scale"])
                guider.set_conds(spatial, global_, negative)
                guider.set_cfg(MC_SCALES["spatial_scale"])
                noise = s.nodes["RandomNoise"]().get_noise(seed)[0]
                sampler = s.nodes["KSamplerSelect"]().get_sampler("dpmpp_2m")[0]
                sigmas = s.nodes["BasicScheduler"]().get_sigmas(model, "karras", 20, 1.0)[0]
                out = s.nodes["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, latent)[0]
            else:
                (out,) = s.nodes["KSampler"]().sample(
                    model, seed, 20, CFG, "dpmpp_2m", "karras", spatial, negative, latent
                )
            image = s.nodes["VAEDecode"]().decode(s.vae, out)[0]
        return (image[0].numpy() * 255).round().astype(np.uint8)


def region_iou(detections, mask: np.ndarray, colour: str) -> float:
    """IoU of the region with the detection of ``colour`` overlapping it most (0 if none does)."""
    best, overlap = None, 0
    for d in detections:
        inside = np.count_nonzero(d.mask & mask) if d.colour == colour else 0
        if inside > overlap:
            best, overlap = d, inside
    return mask_iou(best.mask, mask) if best is not None else 0.0


def image_features(images: list[np.ndarray]) -> np.ndarray:
    from spatial_control.models.shape_clip import load_shape_clip

    clip = load_shape_clip()
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return torch.cat([clip.encode_image(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]).numpy()


def _figures(records: list[dict], images: list[np.ndarray], reference: np.ndarray, seconds: float) -> dict:
    regions = [r for rec in records for r in rec["regions"]]
    figures = {
        "local_iou": float(np.mean([r["iou"] for r in regions])),
        "local_fidelity": float(np.mean([r["accurate"] for r in regions])),
        "global_fidelity": float(np.mean([rec["success"] for rec in records])),
        "frechet_distance": frechet_distance(image_features(images), reference),
        "seconds_per_image": seconds / len(records),
        "by_objects": {},
    }
    for k in sorted({len(rec["regions"]) for rec in records}):
        subset = [r for rec in records if len(rec["regions"]) == k for r in rec["regions"]]
        figures["by_objects"][str(k)] = {
            "maps": sum(len(rec["regions"]) == k for rec in records),
            "local_iou": float(np.mean([r["iou"] for r in subset])),
            "local_fidelity": float(np.mean([r["accurate"] for r in subset])),
        }
    return figures


def run(quick: bool = False, arms=ARMS, device: str = "cpu") -> dict:
    n = 24 if quick else 200
    tasks = [MapTask(i) for i in range(n)]
    runner = Arms(device)
    runner.image("plain", tasks[0], 0)  # warm-up: first-call costs out of the timings
    records = {arm: [] for arm in arms}
    images = {arm: [] for arm in arms}
    seconds = dict.fromkeys(arms, 0.0)
    for i, task in enumerate(tasks):
        for arm in arms:  # arms take turns on each task, so drifts in the machine's speed hit all alike
            start = time.perf_counter()
            image = runner.image(arm, task, SEED_BASE + i)
            seconds[arm] += time.perf_counter() - start
            detections = detect_objects(image)
            records[arm].append({
                "regions": [
                    {"iou": region_iou(detections, mask.numpy(), o.colour),
                     "accurate": local_accuracy(detections, mask.numpy(), o.colour, o.shape)}
                    for o, mask in zip(task.scene.objects, task.masks, strict=True)
                ],
                "success": whole_image_success(detections, task.scene.objects),
            })  # fmt: skip
            images[arm].append(image)
    reference = image_features([t.scene.image for t in tasks])
    return {
        "maps": n,
        "regions": sum(len(t.masks) for t in tasks),
        "example": {"global_prompt": tasks[0].global_prompt, "region_texts": tasks[0].region_texts},
        "mc_scales": MC_SCALES,
        "cfg": CFG,
        "arms": {arm: _figures(records[arm], images[arm], reference, seconds[arm]) for arm in arms},
    }
