"""Benchmark ``region_proposer``: edit only what the text is about, with no mask from the user.

Edit tasks of the shape world's test split (never used in training or tuning), the same number of each kind:
recolour ("make the circle green"), reshape ("turn the red circle into a square"), remove ("remove the blue
cross") and add ("add a green triangle next to the blue square": a grounding task of the relation "next to",
no size words). Every arm proposes a region on the demo model; then the same stock edit runs for every arm
(``final_edit``; the area edited is the region grown by 0.1 of its side, the node's ``mask_margin``):
recolour, one inpainting pass (VAEEncode, SetLatentNoiseMask, KSampler 20 steps DPM++ 2M Karras, CFG 4,
denoise 0.6, VAEDecode, ImageCompositeMasked), the model guided by RegionBackwardGuidance to put the target
phrase in the region, the object as it is now ("a purple cross") as the negative prompt; reshape and add, two
passes as text-grounded generation runs them (the guided model lays the object out from an empty latent,
LatentCompositeMasked pastes it in, a pass at denoise 0.3 blends it; RegionBackwardGuidance's target_scale
0.55 for a new shape, its defaults but 4 start candidates for an addition); remove, one pass at denoise 1 with
an empty prompt and the object as the negative prompt.

- ``whole_image``: the whole image is the region (no proposal).
- ``random_rerank``: what the released Learnable Regions code does in effect: one random box size per
  anchor, each edited, the best by the same CLIP losses.
- ``cross_attention``: training-free: the demo model's cross-attention of the edited phrase (the source;
  for an addition, the new object) on the image (noise level 0.5), thresholded at half its maximum, boxed.
- ``ours``: the RegionProposer node's path with its defaults (for an addition: the text grounding
  network's place, as the node takes it).

Figures per arm and per kind: ``region_iou`` (box IoU with the true edit region: the edited object, the
union of its old and new shapes, or the removed object's place for an addition, one of many valid ones;
for additions also ``region_valid``: the region is next to its anchor and overlaps no object),
``region_iou_any_valid_place`` (the same, but an addition's region scored against the valid place of the
removed object's size nearest to it, ``metrics.valid_place_iou``: "next to the X" has many right places),
``edit_success`` (recolour / reshape: the metrics module finds the new colour and shape inside the true
region; remove: the object is gone; add: the object is made at a valid place), ``psnr_outside`` (dB outside
the true region, for an addition outside the made object, capped at 60; ``share_30db``: share of tasks at
30 dB or more) and ``seconds_per_image`` (the proposal alone).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.comfy_generation import GUIDANCE_AS_MEASURED
from benchmarks.shape_world.generator import EDIT_KINDS, sample_edit_task, sample_grounding
from benchmarks.shape_world.metrics import (
    box_iou,
    local_accuracy,
    object_present,
    placement_valid,
    psnr_outside,
    valid_place_iou,
)
from spatial_control.guidance.grounding import grow_box
from spatial_control.guidance.grounding_text import parse_grounding

KINDS = (*EDIT_KINDS, "add")

ARMS = ("whole_image", "random_rerank", "cross_attention", "ours")
# The final (stock) edit, per kind (chosen on train-split tasks with proposed regions, docs): the area
# inpainted is the region grown by EDIT_MARGIN (the node's mask_margin), so a region a little short of the
# object still covers it.
EDIT_MARGIN = 0.1
RECOLOUR_DENOISE = 0.6  # enough to recolour while keeping the shape
RESHAPE_TARGET_SCALE = 0.55  # RegionBackwardGuidance's target_scale for a new shape (default 0.8)
# RegionBackwardGuidance's start candidates for an addition (default 1): a new object on an empty latent
# is drawn more often from the best of 4 starts (train-split additions, docs); a recolour or reshape gains
# nothing from them.
ADD_CANDIDATES = 4
PSNR_CAP = 60.0
SEED_BASE = 700_000


class Proposers:
    """The four arms' regions for one task, on one ComfyUI session."""

    def __init__(self, session):
        import comfy.sd1_clip  # noqa: F401  (ComfyUI is importable once the session exists)

        from scripts.comfy_headless import find_comfyui
        from spatial_control.guidance.region_proposer import ProposerSettings
        from spatial_control.models.anchor_vit import load_anchor_vit
        from spatial_control.models.grounding_net import load_grounding_net
        from spatial_control.models.shape_clip import ShapeCLIPScorer, load_shape_clip
        from spatial_control.models.text_encoder import load_clip_tokenizer

        self.session = session
        self.vit = load_anchor_vit()[0]
        tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
        self.scorer = ShapeCLIPScorer(load_shape_clip(), tokenizer)
        self.settings = ProposerSettings()
        self.tokenizer = tokenizer
        self.grounding = load_grounding_net()[0]

    def grounded(self, image, text: str):
        from spatial_control.guidance.grounding import ground_text
        from spatial_control.models.text_encoder import tokenize

        return ground_text(self.grounding, image, tokenize(self.tokenizer, [text]))[0].box

    def ours(self, image, request, seed):
        from spatial_control.guidance.backends.comfy_regions import propose_edit_region

        if request.kind == "add":  # the node's path: the text grounding network's place
            return self.grounded(image, request.target)

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

        if request.kind == "add":  # the new object's phrase: the image does not show it yet
            added = parse_grounding(request.target)
            caption, words = added.prompt, added.phrase
        else:
            caption = request.prompt if request.kind == "describe" else f"a {request.source}"
            words = request.source if request.kind != "describe" else request.target
        samples = self.session.vae.encode(image[..., :3])
        maps = self.session.attention([caption], samples, 0.5, seed)
        positions = self.session.token_positions(caption, [words])[words]
        heat = maps[0, positions].mean(0)
        heat = torch.nn.functional.interpolate(heat[None, None], size=image.shape[1:3], mode="bilinear")[0, 0]
        return mask_box(heat / heat.max().clamp_min(1e-12), 0.5) or (0.0, 0.0, 1.0, 1.0)

    def whole_image(self, image, request, seed):
        return (0.0, 0.0, 1.0, 1.0)


def final_edit(session, image, box, request, seed: int) -> np.ndarray:
    """The stock edit of the region's ``box``, per kind: uint8 ``[H, W, 3]``.

    - recolour: one inpainting pass (denoise 0.6), the model guided to put the target phrase in the box,
      the object as it is now as the negative prompt;
    - replace (a new shape): two passes, the object laid out from an empty latent by the guided model
      (target_scale 0.55), pasted into the image's latent and blended in (denoise 0.3), as text-grounded
      generation does; one inpainting pass rarely draws a new shape into a box (docs);
    - remove: one inpainting pass at denoise 1, empty prompt, the object as the negative prompt;
    - add: the two passes of a new shape, RegionBackwardGuidance's defaults but ``ADD_CANDIDATES`` start
      candidates (text-grounded generation).

    The guided passes of a recolour and a reshape take ``GUIDANCE_AS_MEASURED`` (re-layout off,
    threshold 0.1: measured so; in a reshape re-layout would override target_scale); an addition's,
    the node's defaults (re-layout included: re-measured 2026-12-07).
    """
    area = grow_box(box, EDIT_MARGIN)
    if request.kind == "add":
        added = parse_grounding(request.target)
        return session.grounded_generation(
            image,
            box,
            area,
            added.prompt,
            added.phrase,
            seed,
            candidates=ADD_CANDIDATES,
        )
    if request.kind == "remove":
        return session.masked_generation(
            image, box, "", None, 1.0, seed, area=area, negative=request.negative
        )
    if request.kind == "replace":
        return session.grounded_generation(
            image,
            box,
            area,
            request.prompt,
            request.target,
            seed,
            target_scale=RESHAPE_TARGET_SCALE,
            **GUIDANCE_AS_MEASURED,
        )
    negative = request.negative  # the object as it is now: steers the edit away from the old colour
    return session.masked_generation(
        image,
        box,
        request.prompt,
        request.target,
        RECOLOUR_DENOISE,
        seed,
        area=area,
        negative=negative,
        **GUIDANCE_AS_MEASURED,
    )


def edit_succeeded(task, edited: np.ndarray) -> bool:
    if task.kind == "remove":
        return not object_present(edited, task.target.colour, task.target.shape)
    return local_accuracy(edited, task.mask, task.new_colour, task.new_shape)


def sample_task(kind: str, index: int):
    """(task, edit text, true region box in pixels) of the test split. An addition is a grounding task
    of the relation "next to" without size words: "add a green triangle next to the blue square"."""
    if kind == "add":
        task = sample_grounding("test", index, relation="next to", size_in_text=False)
        return task, f"add {task.text}", task.target.box
    task = sample_edit_task("test", index, kind)
    return task, task.text, task.region_box


def score(kind: str, task, edited: np.ndarray, box) -> dict:
    """``edit_success`` and ``psnr_outside`` of an edit; for an addition also ``region_valid`` (the
    region is a valid placement: next to its anchor, overlapping no object), success being the object
    made at a valid place and PSNR outside the made object (``bench_grounding.addition_figures``)."""
    if kind == "add":
        from benchmarks.bench_grounding import addition_figures

        area = tuple(int(round(v * 128)) for v in grow_box(box, EDIT_MARGIN))
        if area == (0, 0, 128, 128):  # nothing made: nothing outside a whole-image area; the true place
            area = task.target.box
        figures = addition_figures(task, edited, area)
        pixel_box = tuple(v * 128 for v in box)
        return {
            "edit_success": figures["tog_success"], "psnr_outside": figures["psnr_outside"],
            "region_valid": bool(placement_valid(pixel_box, task)),
            "valid_place_iou": valid_place_iou(pixel_box, task),
        }  # fmt: skip
    return {
        "edit_success": bool(edit_succeeded(task, edited)),
        "psnr_outside": float(min(PSNR_CAP, psnr_outside(edited, task.scene.image, task.mask))),
    }


def run(quick: bool = False, device: str = "cpu", kinds: tuple[str, ...] = KINDS, arms=ARMS) -> dict:
    """``arms`` on ``per_kind`` tasks of each of ``kinds`` (all by default; fewer to re-measure some into
    an earlier run's records, the tasks and seeds being the same)."""
    from benchmarks.comfy_generation import DemoModelSession
    from spatial_control.guidance.edit_text import parse_edit

    per_kind = 4 if quick else 50
    session = DemoModelSession(device=device)
    proposers = Proposers(session)
    records = {arm: [] for arm in arms}
    for kind in kinds:
        for i in range(per_kind):
            task, text, true_box = sample_task(kind, i)
            image = torch.from_numpy(task.scene.image).float()[None] / 255
            request = parse_edit(text)
            seed = SEED_BASE + 1000 * KINDS.index(kind) + i
            for arm in arms:
                start = time.perf_counter()
                with torch.inference_mode():
                    box = getattr(proposers, arm)(image, request, seed)
                seconds = time.perf_counter() - start
                with torch.inference_mode():
                    edited = final_edit(session, image, box, request, seed)
                records[arm].append({
                    "kind": kind, "task": i, "text": text, "box": [round(v, 4) for v in box],
                    "region_iou": float(box_iou(box, tuple(v / 128 for v in true_box))),
                    **score(kind, task, edited, box), "seconds": seconds,
                })  # fmt: skip
    arms = {arm: summarise(rows) for arm, rows in records.items()}
    return {"tasks": len(kinds) * per_kind, "per_kind": per_kind, "arms": arms, "records": records}


def summarise(rows: list[dict]) -> dict:
    def figures(subset):
        return {
            "region_iou": round(float(np.mean([r["region_iou"] for r in subset])), 3),
            "region_iou_any_valid_place": round(
                float(np.mean([r.get("valid_place_iou", r["region_iou"]) for r in subset])), 3
            ),
            "edit_success": round(float(np.mean([r["edit_success"] for r in subset])), 3),
            "psnr_outside": round(float(np.mean([r["psnr_outside"] for r in subset])), 2),
            "share_30db": round(float(np.mean([r["psnr_outside"] >= 30 for r in subset])), 3),
            "seconds_per_image": round(float(np.mean([r["seconds"] for r in subset])), 2),
        }

    out = figures(rows)
    for kind in KINDS:
        subset = [r for r in rows if r["kind"] == kind]
        if subset:
            out[kind] = figures(subset)
            if kind == "add":
                out[kind]["region_valid"] = round(float(np.mean([r["region_valid"] for r in subset])), 3)
    return out
