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
- ``em``: the defaults (masks re-estimated after every round until stable; the remaining rounds
  train the tokens on the stable masks).

The concepts are learned without names, so each arm's learned concepts are matched to the true
ones by the assignment of highest mean mask IoU (Hungarian) before anything is scored. Figures per
arm: ``mask_iou`` (mean over concepts and images of the IoU of the concept's mask with the true
mask), ``leakage`` (share of a concept's mask area lying on distractor objects), ``fidelity``
(share of "a <concept>" images, several seeds, showing the concept's colour and shape),
``composition`` (sets of 2+ concepts: share of "a <c1> and a <c2>" images showing both),
``seconds_per_set`` and ``peak_ram_gb`` (the process's peak resident memory during the arm's runs);
``first_mask_iou``: the same IoU for the masks the first M-step learned from (co-segmentation's), where
the arm has them.

Each set's figures per arm are kept in ``benchmarks/results/concept_em_sets/``: a run computes only
the records that are missing or were made with other settings, so it resumes where it stopped, and
``python -m benchmarks.bench_concept_em --sets A:B`` fills a slice of them (e.g. two one-thread
processes, ``--sets 0:25`` and ``--sets 25:50``, then ``python -m benchmarks concept_em`` to sum up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from benchmarks.shape_world.generator import sample_concepts
from benchmarks.shape_world.metrics import mask_iou, object_present

RECORDS = Path(__file__).resolve().parent / "results" / "concept_em_sets"  # one file per set and arm
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
    return {"ious": ious, "leaks": leaks, "first_ious": [float(v) for v in first]}


def _distractor_masks(concept_set) -> list[np.ndarray]:
    out = []
    for scene in concept_set.scenes:
        union = np.zeros(scene.image.shape[:2], bool)
        for pair, mask in zip(scene.pairs, scene.masks, strict=True):
            if pair not in concept_set.concepts:
                union |= mask > 0.5
        out.append(union)
    return out


def record_path(i: int, arm: str) -> Path:
    return RECORDS / f"set{i:03d}_{arm}.json"


def set_record(session, i: int, arm: str) -> dict:
    """Learn concept set ``i`` with ``arm`` and score it: its figures as plain lists and numbers."""
    from spatial_control.guidance.backends.comfy_concepts import learn_concepts, save_embedding

    concept_set = concept_set_of(i)
    images = torch.from_numpy(np.stack([s.image for s in concept_set.scenes])).float() / 255
    with torch.inference_mode():
        samples = session.vae.encode(images)
    count = len(concept_set.concepts)
    _reset_peak_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        result = learn_concepts(
            session.model, session.clip, samples, images, count, "object", arm_settings(arm), seed=i
        )
    record = {"settings": repr(arm_settings(arm)), "seconds": time.perf_counter() - start}
    record["ram"] = _peak_rss_gb() or 0.0
    order = matching(concept_set, result.masks)
    record |= _set_figures(concept_set, result, _distractor_masks(concept_set), order)
    names = [f"bench_{arm}_{i}_{c}" for c in range(count)]  # name c: the one matched to concept c
    for c, name in enumerate(names):
        rows = {k: v[order[c]] for k, v in result.embeddings.items()}
        save_embedding(session.embeddings_dir / f"{name}.safetensors", rows, overwrite=True)
    record["fidelity"] = []
    for c, name in enumerate(names):
        generated, _ = session.generate([f"a embedding:{name}"] * SEEDS_PER_PROMPT, seed=SEED_BASE + i)
        record["fidelity"] += [bool(object_present(g, *concept_set.concepts[c])) for g in generated]
    record["composition"] = []
    if count >= 2:
        prompt = f"a embedding:{names[0]} and a embedding:{names[1]}"
        generated, _ = session.generate([prompt] * SEEDS_PER_PROMPT, seed=SEED_BASE + i)
        record["composition"] = [
            bool(all(object_present(g, *pair) for pair in concept_set.concepts[:2])) for g in generated
        ]
    return record


def concept_set_of(i: int):
    return sample_concepts("eval", SEED_BASE + i, k=3 + i % 2)


def fill_records(indices, arms=ARMS, session=None) -> None:
    """Compute and write the records of sets ``indices`` that are missing or were made with other
    settings (arms take turns on each set, so drifts in the machine's speed hit all alike)."""
    if session is None:
        from benchmarks.comfy_generation import DemoModelSession

        session = DemoModelSession()
    RECORDS.mkdir(parents=True, exist_ok=True)
    for i in indices:
        for arm in arms:
            path = record_path(i, arm)
            if path.exists() and json.loads(path.read_text())["settings"] == repr(arm_settings(arm)):
                continue
            record = set_record(session, i, arm)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(record) + "\n")
            temporary.replace(path)


def run(quick: bool = False, arms=ARMS) -> dict:
    n = 6 if quick else 50
    fill_records(range(n), arms)
    figures: dict = {
        "sets": n,
        "concepts": sum(len(concept_set_of(i).concepts) for i in range(n)),
        "arms": {},
    }
    for arm in arms:
        records = [json.loads(record_path(i, arm).read_text()) for i in range(n)]
        keys = ("ious", "leaks", "first_ious", "fidelity", "composition")
        joined = {key: [v for r in records for v in r[key]] for key in keys}
        figures["arms"][arm] = {
            "mask_iou": float(np.mean(joined["ious"])),
            "leakage": float(np.mean(joined["leaks"])),
            "first_mask_iou": float(np.mean(joined["first_ious"])) if joined["first_ious"] else None,
            "fidelity": float(np.mean(joined["fidelity"])),
            "composition": float(np.mean(joined["composition"])) if joined["composition"] else None,
            "seconds_per_set": float(np.mean([r["seconds"] for r in records])),
            "peak_ram_gb": max(r["ram"] for r in records),
        }
    return figures


if __name__ == "__main__":  # fill some sets' records, e.g. in two processes: --sets 0:25 and --sets 25:50
    import argparse
    import os

    parser = argparse.ArgumentParser(description="fill concept_em records of sets A:B")
    parser.add_argument("--sets", required=True, help="A:B")
    first, stop = (int(v) for v in parser.parse_args().sets.split(":"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fill_records(range(first, stop))
