"""Benchmark ``shape_world``: the instrument itself and the unguided demo model.

Figures (all on the eval split, never used in training):
- ``ae_psnr``: autoencoder reconstruction PSNR (dB); ``ae_success_ratio``: whole-image success on
  reconstructions divided by that on the originals.
- ``success_{k}obj``: whole-image success of generated images for held-out captions with k objects
  (every requested colour+shape present exactly once), captions in the scenes' template (a size
  word per object); ``floor_success_1obj``: the same images judged against a shuffled caption
  (what chance gives).
- ``success_by_form``: the same success for the same scenes and seeds with the captions written in
  each prompt form of ``captions.PROMPT_FORMS`` (``plain``: no size words; ``mixed``, ``picture_of``,
  ``bare``, ``unknown_words``: as users write them).
- ``attention_localisation``: mean over objects found in generated 1-2 object images of (share of
  the colour / shape token's cross-attention inside the object's mask) / (mask's area share).
- ``clip_zero_shot_acc``: the small CLIP's colour+shape accuracy on single-object scenes.
- ``placement_unguided``: hit rate (IoU >= 0.5) and mean IoU of objects generated from layout
  prompts without guidance: the baseline the guidance methods must beat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.shape_world.captions import PROMPT_FORMS, write_caption
from benchmarks.shape_world.generator import sample_layout, split_scene
from benchmarks.shape_world.metrics import (
    attention_localisation,
    detect_objects,
    hit_rate,
    placement_iou,
    psnr,
    whole_image_success,
)
from benchmarks.shape_world.vocabulary import COLOUR_NAMES, SHAPES
from spatial_control.models.demo_model import AUTOENCODER_FILE, WEIGHTS_DIR

BATCH = 25
SEED_BASE = {1: 100_000, 2: 200_000, 3: 300_000, 4: 400_000}


def _mean(values) -> float | None:
    """Mean, or None where nothing was measured (e.g. no requested object was generated)."""
    return float(np.mean(values)) if len(values) else None


def _batches(items, size=BATCH):
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


def autoencoder_figures(n: int, weights_dir: Path = WEIGHTS_DIR) -> dict:
    from spatial_control.models.autoencoder import load_autoencoder

    autoencoder = load_autoencoder(weights_dir / AUTOENCODER_FILE)
    scenes = [split_scene("eval", 900_000 + i, n_objects=1 + i % 4) for i in range(n)]
    psnrs, ok_original, ok_recon = [], [], []
    for _, batch in _batches(scenes):
        pixels = torch.from_numpy(np.stack([s.image for s in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            recon = autoencoder.decode(autoencoder.encode(pixels))
        recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for scene, image in zip(batch, recon, strict=True):
            psnrs.append(psnr(scene.image, image))
            ok_original.append(whole_image_success(scene.image, scene.pairs))
            ok_recon.append(whole_image_success(image, scene.pairs))
    return {
        "ae_psnr": float(np.mean(psnrs)),
        "ae_success_ratio": float(np.mean(ok_recon) / max(1e-9, np.mean(ok_original))),
    }


def clip_zero_shot(n: int) -> float:
    from scripts.comfy_headless import find_comfyui
    from spatial_control.models.shape_clip import load_shape_clip
    from spatial_control.models.text_encoder import load_clip_tokenizer, tokenize

    model = load_shape_clip()
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    with torch.no_grad():
        text = model.encode_text(tokenize(tokenizer, [f"a {c} {s}" for c, s in pairs]))
        correct = 0
        scenes = [split_scene("eval", 800_000 + i, n_objects=1) for i in range(n)]
        for _, batch in _batches(scenes):
            images = torch.from_numpy(np.stack([s.image for s in batch])).permute(0, 3, 1, 2).float() / 255
            best = (model.encode_image(images) @ text.T).argmax(1)
            correct += sum(pairs[int(b)] == s.pairs[0] for b, s in zip(best, batch, strict=True))
    return correct / n


def _object_tokens(session, caption: str, phrase: str) -> tuple[int, int] | None:
    """Token indices of the colour and the shape word of ``phrase`` ("size colour shape") in the
    caption, or None if the words are not one token each."""
    tokens = session.token_positions(caption, [phrase])[phrase]
    return (tokens[1], tokens[2]) if len(tokens) == 3 else None


def generation_figures(session, n: int) -> dict:
    figures: dict = {}
    localisation = {"colour": [], "shape": []}
    for k in (1, 2, 3, 4):
        scenes = [split_scene("eval", SEED_BASE[k] + i, n_objects=k) for i in range(n)]
        captions = [s.caption for s in scenes]
        images, successes = [], []
        for start, batch in _batches(captions):
            imgs, latents = session.generate(batch, seed=SEED_BASE[k] + start)
            images.extend(imgs)
            if k <= 2:
                maps = session.attention(batch, latents)
                for j, (caption, image) in enumerate(zip(batch, imgs, strict=True)):
                    scene = scenes[start + j]
                    detections = detect_objects(image)
                    for obj in scene.objects:
                        hits = [d for d in detections if (d.colour, d.shape) == obj.pair]
                        tokens = _object_tokens(session, caption, obj.phrase)
                        if len(hits) != 1 or tokens is None:
                            continue
                        for word, token in zip(("colour", "shape"), tokens, strict=True):
                            localisation[word].append(attention_localisation(maps[j, token], hits[0].mask))
        successes = [whole_image_success(img, s.pairs) for img, s in zip(images, scenes, strict=True)]
        figures[f"success_{k}obj"] = float(np.mean(successes))
        if k == 1:
            shuffled = scenes[1:] + scenes[:1]
            figures["floor_success_1obj"] = float(
                np.mean([whole_image_success(img, s.pairs) for img, s in zip(images, shuffled, strict=True)])
            )
    figures["success_by_form"] = {"sized": {str(k): figures[f"success_{k}obj"] for k in (1, 2, 3, 4)}}
    for form, style in PROMPT_FORMS.items():
        if form == "sized":
            continue
        figures["success_by_form"][form] = {}
        for k in (1, 2, 3, 4):
            scenes = [split_scene("eval", SEED_BASE[k] + i, n_objects=k) for i in range(n)]
            captions = [write_caption(s.objects, style).text for s in scenes]
            images = []
            for start, batch in _batches(captions):
                images.extend(session.generate(batch, seed=SEED_BASE[k] + start)[0])
            successes = [whole_image_success(img, s.pairs) for img, s in zip(images, scenes, strict=True)]
            figures["success_by_form"][form][str(k)] = float(np.mean(successes))
    figures["attention_localisation"] = _mean(localisation["colour"] + localisation["shape"])
    figures["attention_localisation_by_word"] = {w: _mean(v) for w, v in localisation.items()}
    figures["attention_localisation_objects"] = len(localisation["colour"])

    tasks = [sample_layout("eval", 500_000 + i) for i in range(n)]
    ious = []
    for start, batch in _batches(tasks):
        images, _ = session.generate([t.caption for t in batch], seed=500_000 + start)
        for image, task in zip(images, batch, strict=True):
            ious.extend(placement_iou(image, target) for target in task.targets)
    figures["placement_unguided"] = {
        "hit_rate": hit_rate(ious),
        "mean_iou": float(np.mean(ious)),
        "objects": len(ious),
    }
    return figures


def run(quick: bool = False, device: str = "cpu") -> dict:
    n = 25 if quick else 100
    figures = {"samples_per_count": n}
    figures.update(autoencoder_figures(n))
    figures["clip_zero_shot_acc"] = clip_zero_shot(n)
    from benchmarks.comfy_generation import DemoModelSession

    figures.update(generation_figures(DemoModelSession(device=device), n))
    return figures
