"""Train SpaText's prior on the shape world: the small CLIP's text embedding of a region's text ->
the small CLIP's image embedding of that object alone (what the spatio-textual map holds in training).

    python -m scripts.train_spatext_prior                 # CPU, a few minutes, resumes where it stopped
    python -m scripts.train_spatext_prior --device cuda

Pairs are drawn on the fly from train-split scenes: each object isolated on the segment fill
(``guidance.spatio_textual_map.isolate_segments``) and encoded by the frozen small CLIP; its text
written as users write a single region's description (``captions.random_style`` for one object:
size word or not, articles, prefixes). Loss: 1 - cosine. The exported record compares the prior's
cosine on held-out objects with the text embedding's own (no prior).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks.shape_world.captions import random_style, write_caption
from benchmarks.shape_world.generator import split_scene
from scripts.comfy_headless import find_comfyui
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
from spatial_control.guidance.spatio_textual_map import isolate_segments
from spatial_control.models.demo_model import WEIGHTS_DIR
from spatial_control.models.shape_clip import load_shape_clip
from spatial_control.models.spatio_textual import (
    PRIOR_FILE,
    EmbeddingPrior,
    PriorConfig,
    load_prior,
    save_prior,
)
from spatial_control.models.text_encoder import load_clip_tokenizer, tokenize

RECIPE = {"batch": 256, "lr": 1e-3, "weight_decay": 0.01, "warmup": 50, "seed": 0}
EVAL_OBJECTS = 1024


def object_pairs(split: str, first_scene: int, count: int, seed: int):
    """``(texts, segment images [count, 3, 128, 128] in [0, 1])`` of the objects of consecutive scenes."""
    texts, images = [], []
    index = first_scene
    while len(texts) < count:
        rng = np.random.default_rng([seed, index])
        scene = split_scene(split, index, min_objects=1, max_objects=4)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
        masks = torch.from_numpy(np.stack(scene.coverages)).float()
        images.append(isolate_segments(image, masks))
        texts += [write_caption([obj], random_style(rng, 1), rng).text for obj in scene.objects]
        index += 1
    return texts[:count], torch.cat(images)[:count], index


@torch.no_grad()
def image_targets(clip, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([clip.encode_image(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def main(argv=None) -> None:
    parser = run_arguments(__doc__, "spatext_prior", steps=400, minutes=30.0, out=WEIGHTS_DIR / PRIOR_FILE,
                           eval_every=100)  # fmt: skip
    add_init_from(parser, "prior")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eval-objects", type=int, default=EVAL_OBJECTS)
    args = parser.parse_args(argv)
    recipe = {**RECIPE, "batch": args.batch}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    clip = load_shape_clip(device=device).requires_grad_(False)
    prior = EmbeddingPrior(PriorConfig(dim=clip.config.embed_dim)).to(device)
    params = list(prior.parameters())
    optimizer = adamw_matrices_decayed(params, recipe["weight_decay"])
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    state = None if args.fresh else load_checkpoint(checkpoint_path, recipe)
    record = {**new_record(), "next_scene": 0}
    if state is not None:
        prior.load_state_dict(state["prior"])
        optimizer.load_state_dict(state["optimizer"])
        record = state["record"]
        print(f"resuming {checkpoint_path} at step {record['step']}", flush=True)
    elif args.init_from:
        prior.load_state_dict(load_prior(args.init_from).state_dict())
        warm_start(record, json.loads(args.init_from.with_suffix(".json").read_text()), args.init_from)

    eval_texts, eval_images, _ = object_pairs("eval", 0, args.eval_objects, recipe["seed"])
    eval_text = clip.encode_text(tokenize(tokenizer, eval_texts).to(device))
    eval_target = image_targets(clip, eval_images.to(device))

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {"prior": prior.state_dict(), "optimizer": optimizer.state_dict(),
                                          "record": record, "recipe": recipe})  # fmt: skip

    def schedule(step: int) -> float:
        return warmup_cosine(step, recipe["lr"], recipe["warmup"], args.steps, floor=0.05)

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, recipe["batch"])

    def train_step(step: int) -> str:
        texts, images, record["next_scene"] = object_pairs(
            "train", record["next_scene"], recipe["batch"], recipe["seed"]
        )
        with torch.no_grad():
            text = clip.encode_text(tokenize(tokenizer, texts).to(device))
            target = image_targets(clip, images.to(device))
        loss = 1 - (prior(text) * target).sum(-1).mean()
        loop.optimise(loss, params, 1.0)
        return f"loss {loss.item():.4f}"

    @torch.no_grad()
    def evaluate(step: int) -> dict:
        prior.eval()
        out = {"cosine_prior": round(float((prior(eval_text) * eval_target).sum(-1).mean()), 4),
               "cosine_text": round(float((eval_text * eval_target).sum(-1).mean()), 4)}  # fmt: skip
        prior.train()
        return out

    loop.run(train_step, evaluate)
    if args.no_export:
        return
    final = evaluate(record["step"])
    save_prior(
        prior.cpu(), args.out, training_record(args, record, recipe, recipe["batch"], final_eval=final)
    )
    print(f"exported {args.out}: {final}", flush=True)


if __name__ == "__main__":
    main()
