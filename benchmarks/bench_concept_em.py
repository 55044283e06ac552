"""Benchmark ``concept_em``: learn the concepts a few images share, then use them in prompts.

Concept sets of the shape world's eval split (never used in training): 1-3 concepts (colour +
shape pairs) shared by 3 or 4 images, each image with 1-3 distractor objects that a concept must
not absorb (none of them in every image). Every arm learns the same sets with the same seeds on the
demo model through the pack's ComfyUI path (``learn_concepts``, as the node runs it), saves the
embeddings and generates with them through the stock sampler (``embedding:<name>``, 20 steps
DPM++ 2M Karras, CFG 4):

- ``textual_inversion``: one token set per concept, whole-image loss, no masks, no attention loss.
- ``first_pass``: the first masks (co-segmentation, as in ``em``), one M-step, then the masks of
  the first attention pass, kept for the remaining rounds (no EM iterations).
- ``em``: the defaults (masks re-estimated after every round until stable).

The concepts are learned without names, so each arm's learned concepts are matched to the true
ones by the assignment of highest mean mask IoU (Hungarian) before anything is scored. Figures per
arm: ``mask_iou`` (mean over concepts and images of the IoU of the concept's mask with the true
mask), ``leakage`` (share of a concept's mask area lying on distractor objects), ``fidelity``
(share of "a <concept>" images, several seeds, showing the concept's colour and shape),
``composition`` (sets of 2+ concepts: share of "a <c1> and a <c2>" images showing both),
``seconds_per_set`` and ``peak_ram_gb`` (the process's peak resident memory during the arm's runs);
``first_mask_iou``: the same IoU for the masks the first M-step learned from (co-segmentation's), where
the arm has them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from benchmarks.shape_world.generator import sample_concepts
from benchmarks.shape_world.metrics import mask_iou, object_present

SEED_BASE = 900_000
SEEDS_PER_PROMPT = 4
ARMS = ("textual_inversion", "first_pass", "em")


def arm_settings(arm: str):
    from spatial_control.guidance.concept_em import ConceptEMSettings

    defaults = ConceptEMSettings()
    return {
        "textual_inversion": dataclasses.replace(defaults, use_masks=False),
        "first_pass": dataclasses.replace(defaults, refine_masks=False),
        "em": defaults,
    }[arm]


def _peak_rss_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _mean_ious(concept_set, masks) -> np.ndarray:
    """``[true concept, learned concept]`` mean IoU over the images of learned ``masks`` ``[n, k, H, W]``."""
    k = len(concept_set.concepts)
    table = np.zeros((k, k))
    for c in range(k):
        for g in range(k):
            per_image = [
                mask_iou(masks[s, g].numpy() > 0.5, truth[c] > 0.5)
                for s, truth in enumerate(concept_set.masks)
            ]
            table[c, g] = np.mean(per_image)
    return table


def matching(concept_set, masks) -> list[int]:
    """For each true concept, the learned concept it is matched to (highest total mean IoU)."""
    rows, cols = linear_sum_assignment(-_mean_ious(concept_set, masks))
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def _set_figures(concept_set, result, distractors, order: list[int]) -> dict:
    ious, leaks = [], []
    for s, scene_masks in enumerate(concept_set.masks):
        for c, truth in enumerate(scene_masks):
            mask = result.masks[s, order[c]].numpy() > 0.5
            ious.append(mask_iou(mask, truth > 0.5))
            leaks.append(float((mask & distractors[s]).sum()) / max(int(mask.sum()), 1))
    first = []
    if result.first_masks is not None:
        first = list(_mean_ious(concept_set, result.first_masks).max(1))  # each concept's best first mask
    return {"ious": ious, "leaks": leaks, "first_ious": first}


def _distractor_masks(concept_set) -> list[np.ndarray]:
    out = []
    for scene in concept_set.scenes:
        union = np.zeros(scene.image.shape[:2], bool)
        for pair, mask in zip(scene.pairs, scene.masks, strict=True):
            if pair not in concept_set.concepts:
                union |= mask > 0.5
        out.append(union)
    return out


def run(quick: bool = False, arms=ARMS) -> dict:
    from benchmarks.comfy_generation import DemoModelSession

    session = DemoModelSession()
    from spatial_control.guidance.backends.comfy_concepts import learn_concepts, save_embedding

    embeddings = session.embeddings_dir
    n = 6 if quick else 50
    sets = [sample_concepts("eval", SEED_BASE + i, k=3 + i % 2) for i in range(n)]
    records = {
        arm: {
            "ious": [],
            "leaks": [],
            "first_ious": [],
            "fidelity": [],
            "composition": [],
            "seconds": 0.0,
            "ram": 0.0,
        }
        for arm in arms
    }
    for i, concept_set in enumerate(sets):
        images = torch.from_numpy(np.stack([s.image for s in concept_set.scenes])).float() / 255
        with torch.inference_mode():
            samples = session.vae.encode(images)
        distractors = _distractor_masks(concept_set)
        count = len(concept_set.concepts)
        for arm in arms:  # arms take turns on each set, so drifts in the machine's speed hit all alike
            _reset_peak_rss()
            start = time.perf_counter()
            with torch.inference_mode():
                result = learn_concepts(
                    session.model, session.clip, samples, images, count, "object", arm_settings(arm), seed=i
                )
            record = records[arm]
            record["seconds"] += time.perf_counter() - start
            record["ram"] = max(record["ram"], _peak_rss_gb() or 0.0)
            order = matching(concept_set, result.masks)
            figures = _set_figures(concept_set, result, distractors, order)
            for key in ("ious", "leaks", "first_ious"):
                record[key] += figures[key]
            names = [f"bench_{arm}_{i}_{c}" for c in range(count)]  # name c: the one matched to concept c
            for c, name in enumerate(names):
                rows = {k: v[order[c]] for k, v in result.embeddings.items()}
                save_embedding(embeddings / f"{name}.safetensors", rows, overwrite=True)
            for c, name in enumerate(names):
                generated, _ = session.generate(
                    [f"a embedding:{name}"] * SEEDS_PER_PROMPT, seed=SEED_BASE + i
                )
                record["fidelity"] += [object_present(g, *concept_set.concepts[c]) for g in generated]
            if count >= 2:
                prompt = f"a embedding:{names[0]} and a embedding:{names[1]}"
                generated, _ = session.generate([prompt] * SEEDS_PER_PROMPT, seed=SEED_BASE + i)
                record["composition"] += [
                    all(object_present(g, *pair) for pair in concept_set.concepts[:2]) for g in generated
                ]
    figures: dict = {"sets": n, "concepts": sum(len(s.concepts) for s in sets), "arms": {}}
    for arm, record in records.items():
        figures["arms"][arm] = {
            "mask_iou": float(np.mean(record["ious"])),
            "leakage": float(np.mean(record["leaks"])),
            "first_mask_iou": float(np.mean(record["first_ious"])) if record["first_ious"] else None,
            "fidelity": float(np.mean(record["fidelity"])),
            "composition": float(np.mean(record["composition"])) if record["composition"] else None,
            "seconds_per_set": record["seconds"] / n,
            "peak_ram_gb": record["ram"],
        }
    return figures
