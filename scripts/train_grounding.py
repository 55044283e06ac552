"""Train TextGroundingMap's network (ST-LDM's grounding branches, ``models.grounding_net``) on the shape
world's grounding task and export it.

    python -m scripts.train_grounding [--minutes 60] [--steps N] [--alignment deformable|none]
                                      [--threads 2] [--device cpu|cuda] [--init-from WEIGHTS]

Each sample is a scene with one object removed and a text naming it and where it was, written the ways
users write (``benchmarks.shape_world.grounding_phrasing``); a tenth of the texts name an anchor the
scene lacks, with an empty target, so the map's peak says how sure it is. Every relation is as frequent.
Losses, on every stage's map: focal loss on the placement map (1 at every cell where a box of the removed
object's size would be a valid placement: the relation holds and no object is overlapped; trained on the
removed object's own centre alone, the network learnt to find the hole it left and barely read the
relation), L1 on the object's log width and height at its own cell, focal loss on Gaussians around the named
anchors (the auxiliary map that makes the queries find what the text names); plus L1 reconstruction
for the autoencoder branch. The text transformer starts from the demo model's text encoder. Batch
``k`` is a pure function of ``(seed, k)``, checkpoints are atomic and a rerun resumes; every run ends
by exporting fp16 safetensors and a JSON record. ``--alignment none`` trains the ablation without
deformable alignment (its own weights file).

The evaluation is the benchmark's map accuracy on held-out (eval split) tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.shape_world.captions import SIZE_SYNONYMS
from benchmarks.shape_world.grounding_phrasing import WrittenGrounding, written_grounding
from benchmarks.shape_world.metrics import box_iou, placement_valid, placement_validity_grid
from benchmarks.shape_world.vocabulary import BACKGROUND_MIX, CANVAS, COLOUR_NAMES, ROTATED_SHARE, SHAPES
from scripts.comfy_headless import find_comfyui
from scripts.train_anchor_vit import scene_tensor
from scripts.training import (
    TrainingLoop,
    adamw_matrices_decayed,
    add_init_from,
    load_checkpoint,
    new_record,
    run_arguments,
    save_checkpoint,
    training_record,
    warm_start,
    warmup_cosine,
)
from spatial_control.guidance.grounding import placement_from_map
from spatial_control.guidance.grounding_text import grounding_vocabulary
from spatial_control.models.demo_model import TEXT_ENCODER_FILE, WEIGHTS_DIR, load_demo_text_encoder_state
from spatial_control.models.grounding_net import (
    ABLATION_WEIGHTS,
    DEFAULT_WEIGHTS,
    GroundingConfig,
    build_grounding_net,
    load_grounding_net,
    save_grounding_net,
)
from spatial_control.models.text_encoder import installed_text_keys, load_clip_tokenizer, tokenize

EVAL_TASKS = 200


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (a checkpoint only resumes the same recipe)."""

    seed: int = 0
    alignment: str = "deformable"
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    heat_sigma: float = 1.0  # cells of the map grid
    absent_share: float = 0.1
    size_weight: float = 1.0
    anchor_weight: float = 1.0
    reconstruction_weight: float = 0.5


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Targets:
    heat: (
        torch.Tensor
    )  # [B, m, m] 1 where a box of the object's size centred on the cell is valid (0 if absent)
    size_cell: torch.Tensor  # [B] the removed object's centre cell (flat index), where its size is learnt
    log_size: torch.Tensor  # [B, 2] log width and height as shares of the side
    anchor_heat: torch.Tensor  # [B, m, m] the same around each named anchor the scene has
    present: torch.Tensor  # [B] 1 where every named anchor is in the scene

    def to(self, device) -> Targets:
        return Targets(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def centre_cell(box, size: int) -> tuple[int, int]:
    """(row, column) of the ``size x size`` grid cell holding the pixel box's centre."""
    x0, y0, x1, y1 = box
    return min(int((y0 + y1) / 2 / CANVAS * size), size - 1), min(
        int((x0 + x1) / 2 / CANVAS * size), size - 1
    )


def gaussian_peaks(boxes, size: int, sigma: float) -> torch.Tensor:
    """``[size, size]``: the maximum of Gaussians around the pixel boxes' centres, 1 at their cells."""
    cells = torch.arange(size, dtype=torch.float32) + 0.5
    heat = torch.zeros(size, size)
    for box in boxes:
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2 / CANVAS * size, (y0 + y1) / 2 / CANVAS * size
        d2 = (cells[None, :] - cx) ** 2 + (cells[:, None] - cy) ** 2
        heat = torch.maximum(heat, torch.exp(-d2 / (2 * sigma**2)))
        heat[centre_cell(box, size)] = 1.0
    return heat


def grounding_targets(samples: list[WrittenGrounding], size: int, sigma: float) -> Targets:
    heats, cells, sizes, anchors = [], [], [], []
    for s in samples:
        x0, y0, x1, y1 = s.task.target.box
        valid = (
            placement_validity_grid(s.task, size, x1 - x0, y1 - y0) if s.present else np.zeros((size, size))
        )
        heats.append(torch.from_numpy(valid.astype(np.float32)))
        row, column = centre_cell(s.task.target.box, size)
        cells.append(row * size + column)
        sizes.append(torch.tensor([(x1 - x0) / CANVAS, (y1 - y0) / CANVAS]).log())
        full = s.task.full_scene
        boxes = [full.objects[full.pairs.index(p)].box for p in s.task.anchors if p in full.pairs]
        anchors.append(gaussian_peaks(boxes, size, sigma))
    present = torch.tensor([s.present for s in samples], dtype=torch.float32)
    return Targets(torch.stack(heats), torch.tensor(cells), torch.stack(sizes), torch.stack(anchors), present)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of cells at 1 (at least 1)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    peak = target.eq(1).float()
    pos = -((1 - p) ** 2) * torch.log(p) * peak
    neg = -((1 - target) ** 4) * p**2 * torch.log(1 - p) * (1 - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp_min(1)


def grounding_loss(out, targets: Targets, images, recipe: Recipe) -> tuple[torch.Tensor, dict]:
    """Summed over the stages: focal loss on the placement map and on the anchor heat, L1 on the log size
    at the removed object's cell; plus the autoencoder branch's L1 reconstruction."""
    b, present, peak_index = targets.heat.shape[0], targets.present, targets.size_cell
    total, parts = 0.0, {"focal": 0.0, "size": 0.0, "anchor": 0.0}
    for logits, sizes, anchor in zip(out.heat, out.log_size, out.anchor_heat, strict=True):
        focal = focal_loss(logits, targets.heat)
        anchor_focal = focal_loss(anchor, targets.anchor_heat)
        at_peak = sizes.flatten(2)[torch.arange(b), :, peak_index]  # [B, 2]
        size = F.l1_loss(at_peak, targets.log_size, reduction="none").sum(1)
        size = (size * present).sum() / present.sum().clamp_min(1)
        total = total + focal + recipe.anchor_weight * anchor_focal + recipe.size_weight * size
        for key, value in (("focal", focal), ("size", size), ("anchor", anchor_focal)):
            parts[key] += value.item() / len(out.heat)
    if out.reconstruction is not None:
        recon = F.l1_loss(out.reconstruction, images)
        total = total + recipe.reconstruction_weight * recon
        parts["recon"] = recon.item()
    return total, parts


def batch_tensors(samples: list[WrittenGrounding], tokenizer, device):
    images = scene_tensor([s.task.scene.image for s in samples]).to(device)
    tokens = tokenize(tokenizer, [s.text for s in samples]).to(device)
    return images, tokens


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def grounding_figures(model, tokenizer, seed: int, count: int = EVAL_TASKS) -> dict[str, float]:
    """On held-out tasks (eval split, texts as users write them): ``map_accuracy`` (the decoded box is a
    valid placement), ``pointing`` (a box of the true size at the peak is valid), ``box_iou`` with the
    removed object's box, and the mean confidence with the anchor present and absent."""
    model.eval()
    device = next(model.parameters()).device
    valid = pointing = 0
    ious, present_conf, absent_conf = [], [], []
    for start in range(0, count, 50):
        samples = [written_grounding("eval", i, seed, 0.2) for i in range(start, min(count, start + 50))]
        images, tokens = batch_tensors(samples, tokenizer, device)
        out = model(images, tokens, reconstruct=False)
        for s, heat, size in zip(samples, out.heat[-1].cpu(), out.log_size[-1].cpu(), strict=True):
            p = placement_from_map(heat, size)
            if not s.present:
                absent_conf.append(p.confidence)
                continue
            present_conf.append(p.confidence)
            box = tuple(v * CANVAS for v in p.box)
            valid += placement_valid(box, s.task)
            x0, y0, x1, y1 = s.task.target.box
            cx, cy = p.centre[0] * CANVAS, p.centre[1] * CANVAS
            pointing += placement_valid(
                (cx - (x1 - x0) / 2, cy - (y1 - y0) / 2, cx + (x1 - x0) / 2, cy + (y1 - y0) / 2), s.task
            )
            ious.append(box_iou(box, s.task.target.box))
    n = len(present_conf)
    return {
        "map_accuracy": round(valid / n, 3),
        "pointing": round(pointing / n, 3),
        "box_iou": round(float(np.mean(ious)), 3),
        "confidence_present": round(float(np.mean(present_conf)), 3),
        "confidence_absent": round(float(np.mean(absent_conf)), 3) if absent_conf else None,
    }


def vocabulary_token_ids(tokenizer) -> list[int]:
    """Token ids of every word the training texts use (the exported text encoder keeps these rows)."""
    words = {*grounding_vocabulary(), *COLOUR_NAMES, *SHAPES, *(w for s in SIZE_SYNONYMS.values() for w in s)}
    return sorted({int(i) for i in tokenize(tokenizer, [" ".join(sorted(words))])[0].tolist()})


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = run_arguments(
        __doc__, "grounding", steps=3000, minutes=120.0, out=DEFAULT_WEIGHTS, eval_every=500
    )
    parser.add_argument("--alignment", choices=("deformable", "none"), default=Recipe.alignment)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--eval-tasks", type=int, default=EVAL_TASKS)
    add_init_from(parser, "network")
    args = parser.parse_args(argv)
    if args.alignment == "none":
        if args.out == DEFAULT_WEIGHTS:
            args.out = ABLATION_WEIGHTS
        if args.cache_dir.name == "grounding":
            args.cache_dir = args.cache_dir.with_name("grounding_no_alignment")
    return args, Recipe(alignment=args.alignment, batch_size=args.batch_size)


def train(args, recipe: Recipe) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    config = GroundingConfig(alignment=recipe.alignment)
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    recipe_dict = asdict(recipe)
    state = None if args.fresh else load_checkpoint(checkpoint_path, recipe_dict)
    model = build_grounding_net(config, seed=recipe.seed)
    text_state, _ = load_demo_text_encoder_state(WEIGHTS_DIR / TEXT_ENCODER_FILE)
    model.text.load_state_dict(installed_text_keys(text_state, model.text.state_dict()), strict=False)
    model.to(device)
    params = list(model.parameters())
    optimizer = adamw_matrices_decayed(params, recipe.weight_decay)
    record = new_record()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        record = state["record"]
        print(f"resuming {checkpoint_path} at step {record['step']}", flush=True)
    elif args.init_from:
        exported, meta = load_grounding_net(args.init_from)
        if exported.config != config:
            raise SystemExit(f"{args.init_from} has config {exported.config}, this run {config}")
        model.load_state_dict(exported.state_dict())
        warm_start(record, meta, args.init_from)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
            "recipe": recipe_dict,
        })  # fmt: skip

    def schedule(step: int) -> float:
        return warmup_cosine(step, recipe.lr, warmup=recipe.warmup_steps, total=args.steps, floor=0.05)

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, recipe.batch_size)

    def train_step(step: int) -> str:
        model.train()
        first = step * recipe.batch_size
        samples = [
            written_grounding("train", i, recipe.seed, recipe.absent_share)
            for i in range(first, first + recipe.batch_size)
        ]
        images, tokens = batch_tensors(samples, tokenizer, device)
        targets = grounding_targets(samples, config.map_size, recipe.heat_sigma).to(device)
        out = model(images, tokens)
        loss, parts = grounding_loss(out, targets, images, recipe)
        loop.optimise(loss, params, recipe.grad_clip)
        return f"loss {loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in parts.items())

    def evaluate(step: int) -> dict:
        return grounding_figures(model, tokenizer, recipe.seed, args.eval_tasks)

    loop.run(train_step, evaluate)
    if args.no_export:
        return
    final = (
        record["history"][-1]
        if record["history"] and record["history"][-1]["step"] == record["step"]
        else None
    )
    final = {k: v for k, v in final.items() if k not in ("step", "cpu_minutes")} if final else evaluate(0)
    data = {"backgrounds": BACKGROUND_MIX, "rotated_share": ROTATED_SHARE, "objects": "2-4 uniform"}
    training = training_record(args, record, recipe_dict, recipe.batch_size, final_eval=final, data=data)
    save_grounding_net(model.to("cpu"), args.out, vocabulary_token_ids(tokenizer), training)
    print(f"exported {args.out}: {final}", flush=True)


def main(argv=None) -> None:
    args, recipe = parse_args(argv)
    train(args, recipe)


if __name__ == "__main__":
    main()
