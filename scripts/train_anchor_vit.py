"""Train the anchor ViT self-supervised (DINO, Caron et al. 2021) on shape-world images and export it.

    python -m scripts.train_anchor_vit [--minutes 60] [--steps N] [--threads 1] [--device cpu|cuda]

A student and an EMA teacher (the same timm ViT, each with a projection head onto cosine prototypes)
see different crops of one scene: the teacher two global crops, the student those and several local
crops; the student is trained to predict the teacher's centred, sharpened distribution over the
prototypes for every other crop. Nothing is labelled: anchors come from the exported teacher's
last-layer [CLS] attention. Training batch ``k`` is a pure function of ``(seed, k)`` (scenes and
crops), so a resumed run sees the data an uninterrupted one would. A checkpoint (both networks,
optimiser, centre, step) is written atomically every couple of minutes and a rerun continues from it;
every run ends by exporting the teacher as fp16 safetensors plus a JSON record.

The evaluation measures what RegionProposer needs: on held-out scenes, the share of objects hit by one
of the 9 anchors and the share of images whose strongest anchor lies on an object.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.shape_world.generator import render_scene, split_scene
from benchmarks.shape_world.vocabulary import BACKGROUND_MIX, ROTATED_SHARE
from scripts.training import (
    TrainingLoop,
    adamw_matrices_decayed,
    add_init_from,
    ema_update,
    load_checkpoint,
    new_record,
    run_arguments,
    save_checkpoint,
    training_record,
    warm_start,
    warmup_cosine,
)
from spatial_control.guidance.anchors import anchor_points, attention_map
from spatial_control.models.anchor_vit import (
    DEFAULT_WEIGHTS,
    AnchorViTConfig,
    build_anchor_vit,
    load_anchor_vit,
    save_anchor_vit,
)

EVAL_SCENES = 100
ANCHORS = 9


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (a checkpoint only resumes the same recipe)."""

    seed: int = 0
    batch_size: int = 32
    global_size: int = 96
    local_size: int = 48
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.08, 0.4)
    prototypes: int = 1024
    # DINO's weight-normed last layer gives cosine logits (scale 1); with 1024 prototypes and batches
    # of 32 that head stayed uniform (loss log K) for 100+ steps, so the cosines are scaled up.
    logit_scale: float = 10.0
    swap_backgrounds: bool = True  # see background_swapped
    head_hidden: int = 512
    bottleneck: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    centre_momentum: float = 0.9
    teacher_momentum: float = 0.996
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.04
    grad_clip: float = 3.0


class ProjectionHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, L2-normalised, then cosine similarity to the prototypes."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int, logit_scale: float):
        super().__init__()
        self.logit_scale = logit_scale
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))
        return cosine * self.logit_scale


# ------------------------------------------------------------------------------------------------ data
def training_scene(seed: int, index: int, split: str = "train"):
    """Scene ``index`` of ``split``: 1-4 objects, background kind and rotations drawn from its seed."""
    rng = np.random.default_rng([seed, 23, index])
    background = str(rng.choice(list(BACKGROUND_MIX), p=list(BACKGROUND_MIX.values())))
    rotation = 45.0 if rng.random() < ROTATED_SHARE else 0.0
    return split_scene(split, index, background=background, max_rotation=rotation)


def training_scenes(seed: int, first: int, count: int, split: str = "train") -> list:
    return [training_scene(seed, i, split) for i in range(first, first + count)]


def scene_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """``[n, 3, H, W]`` in [0, 1] from HxWx3 uint8 images."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def background_swapped(seed: int, first: int, scenes: list) -> torch.Tensor:
    """``[n, 3, 128, 128]``: ``scenes`` (scene ``first`` onwards) with the same objects over another
    background drawn per scene. DINO matches views of one image; views sharing the background let it
    match them by the background's texture, and its [CLS] attention left the objects (anchor recall
    fell from 0.86 to 0.70 between steps 300 and 500), so the two global views show the objects over
    different backgrounds."""
    images = []
    for index, scene in enumerate(scenes, start=first):
        rng = np.random.default_rng([seed, 29, index])
        background = str(rng.choice(list(BACKGROUND_MIX), p=list(BACKGROUND_MIX.values())))
        images.append(render_scene(scene.objects, background=background, rng=rng).image)
    return scene_tensor(images)


def random_crops(
    images: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """One random resized crop per image (area share in ``scale``, aspect 3/4..4/3), then a random
    flip, channel permutation (colour invariance), brightness/contrast jitter and, at times, grey."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=g) * h * w
    aspect = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    cw = (area * aspect).sqrt().clamp(8, w)
    ch = (area / aspect).sqrt().clamp(8, h)
    x0 = torch.rand(n, generator=g) * (w - cw)
    y0 = torch.rand(n, generator=g) * (h - ch)
    boxes = torch.stack([torch.arange(n).float(), x0, y0, x0 + cw, y0 + ch], 1)
    crops = roi_align(images, boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(n, generator=g) < 0.5
    crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    order = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])
    crops = torch.gather(crops, 1, order[:, :, None, None].expand_as(crops))
    grey = (torch.rand(n, generator=g) < 0.2)[:, None, None, None]
    crops = torch.where(grey, crops.mean(1, keepdim=True).expand_as(crops), crops)
    brightness = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
    mean = crops.mean((1, 2, 3), keepdim=True)
    return ((crops - mean) * contrast + mean * brightness).clamp(0, 1)


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def anchor_figures(model, seed: int, count: int = EVAL_SCENES) -> dict[str, float]:
    """On held-out scenes: ``object_recall`` (share of objects with one of the 9 anchors on their mask),
    ``top_anchor_on_object`` (share of images whose strongest anchor lies on an object) and, for
    reference, ``object_area`` (the share of pixels objects cover: a random point's hit rate)."""
    hits = objects = top = 0
    area = 0.0
    model.eval()
    for start in range(0, count, 25):
        scenes = training_scenes(seed, 50_000 + start, min(25, count - start), split="eval")
        images = scene_tensor([scene.image for scene in scenes])
        points, _ = anchor_points(attention_map(model.cls_attention(images)), ANCHORS)
        for i, scene in enumerate(scenes):
            pix = (points[i] * 128).long().clamp(0, 127)
            union = np.any(scene.masks, axis=0)
            area += union.mean()
            top += bool(union[pix[0, 1], pix[0, 0]])
            for mask in scene.masks:
                objects += 1
                hits += bool(mask[pix[:, 1], pix[:, 0]].any())
    return {
        "object_recall": round(hits / objects, 3),
        "top_anchor_on_object": round(top / count, 3),
        "object_area": round(area / count, 3),
    }


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = run_arguments(
        __doc__, "anchor_vit", steps=1200, minutes=100.0, out=DEFAULT_WEIGHTS, eval_every=200
    )
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--eval-scenes", type=int, default=EVAL_SCENES)
    add_init_from(parser, "ViT")
    args = parser.parse_args(argv)
    return args, Recipe(batch_size=args.batch_size)


def dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, centre: torch.Tensor, recipe: Recipe, globals_: int
):
    """Cross-entropy from each teacher view's sharpened, centred distribution to every other student
    view. ``student [views, B, K]`` (the first ``globals_`` are the teacher's views), ``teacher
    [globals_, B, K]``."""
    targets = F.softmax((teacher - centre) / recipe.teacher_temp, dim=-1)
    logp = F.log_softmax(student / recipe.student_temp, dim=-1)
    total, terms = 0.0, 0
    for t in range(globals_):
        for s in range(len(student)):
            if s != t:
                total = total + (-targets[t] * logp[s]).sum(-1).mean()
                terms += 1
    return total / terms


def train(args, recipe: Recipe) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = AnchorViTConfig()
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    recipe_dict = asdict(recipe)
    state = None if args.fresh else load_checkpoint(checkpoint_path, recipe_dict)
    student = build_anchor_vit(config, seed=recipe.seed).to(device)
    student_head = ProjectionHead(
        config.embed_dim, recipe.head_hidden, recipe.bottleneck, recipe.prototypes, recipe.logit_scale
    ).to(device)
    teacher, teacher_head = (
        copy.deepcopy(student).requires_grad_(False),
        copy.deepcopy(student_head).requires_grad_(False),
    )
    params = list(student.parameters()) + list(student_head.parameters())
    optimizer = adamw_matrices_decayed(params, recipe.weight_decay)
    centre = torch.zeros(1, recipe.prototypes, device=device)
    record = new_record()
    if state is not None:
        for module, key in ((student, "student"), (student_head, "student_head"), (teacher, "teacher"),
                            (teacher_head, "teacher_head"), (optimizer, "optimizer")):  # fmt: skip
            module.load_state_dict(state[key])
        centre, record = state["centre"].to(device), state["record"]
        print(f"resuming {checkpoint_path} at step {record['step']}", flush=True)
    elif args.init_from:
        exported, meta = load_anchor_vit(args.init_from)
        for module in (student, teacher):
            module.backbone.load_state_dict(exported.backbone.state_dict())
        warm_start(record, meta, args.init_from)  # the projection heads start fresh too

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "student": student.state_dict(), "student_head": student_head.state_dict(),
            "teacher": teacher.state_dict(), "teacher_head": teacher_head.state_dict(),
            "optimizer": optimizer.state_dict(), "centre": centre, "record": record, "recipe": recipe_dict,
        })  # fmt: skip

    def schedule(step: int) -> float:
        return warmup_cosine(step, recipe.lr, warmup=recipe.warmup_steps, total=args.steps, floor=0.05)

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, recipe.batch_size)

    def train_step(step: int) -> str:
        nonlocal centre
        student.train()
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        first = step * recipe.batch_size
        scenes = training_scenes(recipe.seed, first, recipe.batch_size)
        images = scene_tensor([scene.image for scene in scenes])
        other = background_swapped(recipe.seed, first, scenes) if recipe.swap_backgrounds else images
        views = (images, other)
        globals_ = [random_crops(view, recipe.global_size, recipe.global_scale, g) for view in views]
        locals_ = [
            random_crops(views[k % 2], recipe.local_size, recipe.local_scale, g)
            for k in range(recipe.local_crops)
        ]
        big = torch.cat(globals_).to(device)
        with torch.no_grad():
            teacher_out = teacher_head(teacher(big)).reshape(2, recipe.batch_size, -1)
        student_out = [student_head(student(big))]
        if locals_:
            student_out.append(student_head(student(torch.cat(locals_).to(device))))
        student_out = torch.cat(student_out).reshape(2 + recipe.local_crops, recipe.batch_size, -1)
        loss = dino_loss(student_out, teacher_out, centre, recipe, 2)
        loop.optimise(loss, params, recipe.grad_clip)
        momentum = 1 - (1 - recipe.teacher_momentum) * (math.cos(math.pi * step / args.steps) + 1) / 2
        for src, dst in ((student, teacher), (student_head, teacher_head)):
            ema_update(src, dst, momentum)
        with torch.no_grad():
            batch_centre = teacher_out.reshape(-1, teacher_out.shape[-1]).mean(0, keepdim=True)
            centre = centre * recipe.centre_momentum + batch_centre * (1 - recipe.centre_momentum)
            mean_target = F.softmax((teacher_out - centre) / recipe.teacher_temp, -1).mean((0, 1))
            entropy = -(mean_target * mean_target.clamp_min(1e-12).log()).sum()
        return f"loss {loss.item():.4f} teacher batch entropy {entropy.item():.2f}"

    def evaluate(step: int) -> dict:
        return anchor_figures(copy.deepcopy(teacher).to("cpu"), recipe.seed, args.eval_scenes)

    loop.run(train_step, evaluate)
    if args.no_export:
        return
    final = anchor_figures(copy.deepcopy(teacher).to("cpu"), recipe.seed, args.eval_scenes)
    untrained = anchor_figures(build_anchor_vit(config, seed=recipe.seed), recipe.seed, args.eval_scenes)
    data = {"backgrounds": BACKGROUND_MIX, "rotated_share": ROTATED_SHARE, "objects": "1-4 uniform"}
    training = training_record(
        args, record, recipe_dict, recipe.batch_size, final_eval=final, untrained_eval=untrained, data=data
    )
    save_anchor_vit(teacher.to("cpu"), config, args.out, training)
    print(f"exported {args.out}: {final}", flush=True)


def main(argv=None) -> None:
    args, recipe = parse_args(argv)
    train(args, recipe)


if __name__ == "__main__":
    main()
