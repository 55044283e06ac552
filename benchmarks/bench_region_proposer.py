"""Benchmark ``region_proposer``: edit only what the text is about, with no mask from the user.

Edit tasks of the shape world's test split (never used in training or tuning): recolour ("make the
circle green"), reshape ("turn the red circle into a square"), remove ("remove the blue cross"), the
same number of each. Every arm proposes a region on the demo model; then the same edit runs through
stock nodes (VAEEncode, SetLatentNoiseMask with the region's box, KSampler 20 steps DPM++ 2M Karras,
CFG 4, VAEDecode, ImageCompositeMasked into the original), the model guided by RegionBackwardGuidance
(defaults) to put the target phrase in the region (not for a removal):

- ``whole_image``: the whole image is the region (no proposal).
- ``random_rerank``: what the released Learnable Regions code does in effect: one random box size per
  anchor, each edited, the best by the same CLIP losses.
- ``cross_attention``: training-free: the demo model's cross-attention of the source phrase on the
  image (noise level 0.5), thresholded at half its maximum, boxed.
- ``ours``: the RegionProposer node's path with its defaults.

Figures per arm and per kind: ``region_iou`` (box IoU with the true edit region: the edited object, or
the union of its old and new shapes), ``edit_success`` (recolour / reshape: the metrics module finds the
new colour and shape inside the true region; remove: the object is gone), ``psnr_outside`` (dB outside
the true region, capped at 60; ``share_30db``: share of tasks at 30 dB or more) and
``seconds_per_image`` (the proposal alone).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.shape_world.generator import EDIT_KINDS, sample_edit_task
from benchmarks.shape_world.metrics import box_iou, local_accuracy, object_present, psnr_outside

ARMS = ("whole_image", "random_rerank", "cross_attention", "ours")
# The final (stock) edit's denoise: enough to recolour while keeping the shape; reshaping and removing
# need the region regenerated.
FINAL_DENOISE = {"recolour": 0.6, "reshape": 0.8, "remove": 0.9}
PSNR_CAP = 60.0
SEED_BASE = 700_000


class Proposers:
    """The four arms' regions for one task, on one ComfyUI session."""

    def __init__(self, session):
        import comfy.sd1_clip  # noqa: F401  (ComfyUI is importable once the session exists)

        from scripts.comfy_headless import find_comfyui
        from spatial_control.guidance.region_proposer import ProposerSettings
        from spatial_control.models.anchor_vit import load_anchor_vit
        from spatial_control.models.shape_clip import ShapeCLIPScorer, load_shape_clip
        from spatial_control.models.text_encoder import load_clip_tokenizer

        self.session = session
        self.vit = load_anchor_vit()[0]
        tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
        self.scorer = ShapeCLIPScorer(load_shape_clip(), tokenizer)
        self.settings = ProposerSettings()

    def ours(self, image, request, seed):
        from spatial_control.guidance.backends.comfy_regions import propose_edit_region

        proposal = propose_edit_region(
            self.session.model, self.session.clip, self.session.vae, image, request, self.vit, self.scorer,
            self.settings, request.prompt, 8, 0.55, 4.0, seed,
        )  # fmt: skip
        return proposal.box

    def random_rerank(self, image, request, seed):
        from spatial_control.guidance import region_proposer as rp
        from spatial_control.guidance.anchors import image_anchors
        from spatial_control.guidance.backends.comfy_regions import ComfyEditor

        pixels = image[..., :3].movedim(-1, 1).float()
        with torch.inference_mode(False), torch.no_grad():
            points, _ = image_anchors(self.vit, pixels, self.settings.anchors, self.settings.anchor_map)
        rng = np.random.default_rng(seed)
        sizes = self.settings.box_sizes
        boxes = torch.cat(
            [rp.candidate_boxes(p[None], (sizes[rng.integers(len(sizes))],)) for p in points[0]]
        )
        editor = ComfyEditor(
            self.session.model, self.session.clip, self.session.vae, image, request.prompt, steps=8,
            strength=0.55, seed=seed,
        )  # fmt: skip
        regions, composites = rp.edit_candidates(lambda m: editor(m).clone(), pixels, boxes, self.settings)
        crops = rp.expand_boxes(regions, self.settings.crop_margin)
        losses = rp.edit_losses(self.scorer, composites, pixels, crops, request, self.settings)
        return tuple(regions[int(rp.total_loss(losses, self.settings).argmin())].tolist())

    def cross_attention(self, image, request, seed):
        from spatial_control.guidance.regions import mask_box

        caption = request.prompt if request.kind == "describe" else f"a {request.source}"
        samples = self.session.vae.encode(image[..., :3])
        maps = self.session.attention([caption], samples, 0.5, seed)
        words = request.source if request.kind != "describe" else request.target
        positions = self.session.token_positions(caption, [words])[words]
        heat = maps[0, positions].mean(0)
        heat = torch.nn.functional.interpolate(heat[None, None], size=image.shape[1:3], mode="bilinear")[0, 0]
        return mask_box(heat / heat.max().clamp_min(1e-12), 0.5) or (0.0, 0.0, 1.0, 1.0)

    def whole_image(self, image, request, seed):
        return (0.0, 0.0, 1.0, 1.0)


def final_edit(session, image, box, request, denoise: float, seed: int) -> np.ndarray:
    """The stock inpainting path with the region's box, the model guided to put the target phrase
    there (a removal has no phrase): uint8 ``[H, W, 3]``."""
    return session.masked_generation(image, box, request.prompt, request.target, denoise, seed)


def edit_succeeded(task, edited: np.ndarray) -> bool:
    if task.kind == "remove":
        return not object_present(edited, task.target.colour, task.target.shape)
    return local_accuracy(edited, task.mask, task.new_colour, task.new_shape)


def run(quick: bool = False, device: str = "cpu") -> dict:
    from benchmarks.comfy_generation import DemoModelSession
    from spatial_control.guidance.edit_text import parse_edit

    per_kind = 4 if quick else 70
    session = DemoModelSession(device=device)
    proposers = Proposers(session)
    tasks = [(kind, i, sample_edit_task("test", i, kind)) for kind in EDIT_KINDS for i in range(per_kind)]
    records = {arm: [] for arm in ARMS}
    for kind, i, task in tasks:
        image = torch.from_numpy(task.scene.image).float()[None] / 255
        request = parse_edit(task.text)
        seed = SEED_BASE + 1000 * EDIT_KINDS.index(kind) + i
        true_box = tuple(v / 128 for v in task.region_box)
        for arm in ARMS:
            start = time.perf_counter()
            with torch.inference_mode():
                box = getattr(proposers, arm)(image, request, seed)
            seconds = time.perf_counter() - start
            with torch.inference_mode():
                edited = final_edit(session, image, box, request, FINAL_DENOISE[kind], seed)
            records[arm].append({
                "kind": kind, "task": i, "text": task.text, "box": [round(v, 4) for v in box],
                "region_iou": float(box_iou(box, true_box)),
                "edit_success": bool(edit_succeeded(task, edited)),
                "psnr_outside": float(min(PSNR_CAP, psnr_outside(edited, task.scene.image, task.mask))),
                "seconds": seconds,
            })  # fmt: skip
    arms = {arm: summarise(rows) for arm, rows in records.items()}
    return {"tasks": len(tasks), "per_kind": per_kind, "arms": arms, "records": records}


def summarise(rows: list[dict]) -> dict:
    def figures(subset):
        return {
            "region_iou": round(float(np.mean([r["region_iou"] for r in subset])), 3),
            "edit_success": round(float(np.mean([r["edit_success"] for r in subset])), 3),
            "psnr_outside": round(float(np.mean([r["psnr_outside"] for r in subset])), 2),
            "share_30db": round(float(np.mean([r["psnr_outside"] >= 30 for r in subset])), 3),
            "seconds_per_image": round(float(np.mean([r["seconds"] for r in subset])), 2),
        }

    out = figures(rows)
    for kind in EDIT_KINDS:
        subset = [r for r in rows if r["kind"] == kind]
        if subset:
            out[kind] = figures(subset)
    return out
