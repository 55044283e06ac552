"""Train the shape-world demo model's UNet and text encoder (the autoencoder is trained before).

    python -m scripts.train_demo_model --minutes 60          # CPU, resumes where it stopped
    python -m scripts.train_demo_model --device cuda --workers 8 --minutes 20
    python -m scripts.train_demo_model --init-from models/weights --steps 5818 --lr 5e-4   # fine-tune

Recipe (chosen for convergence per CPU-second, see docs/demo_model.md): scenes of 1-4 objects
generated on the fly from the train split and encoded by the frozen autoencoder; captions dropped
10% of the time (for classifier-free guidance with the empty prompt); v-prediction on SD's noise
schedule with min-SNR-5 weighting; a token grounding loss on the cross-attention of each object's
words (TokenCompose, Wang et al. 2024, arXiv:2312.03626: ``(1 - attention mass inside the
object's mask)^2``), which teaches binding and localisation that a model this small does not
learn from captions alone; AdamW with warm-up and cosine decay; EMA of the weights, which is
what gets exported. Checkpoints (model, EMA, optimiser, step) go to the cache every few
minutes; at the end the EMA weights are exported as fp16 safetensors into ``models/weights/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import diffusers
import numpy as np
import torch

from benchmarks.shape_world.captions import (
    UNKNOWN_WORD_EXAMPLES,
    WrittenCaption,
    random_style,
    vocabulary_words,
    write_caption,
)
from benchmarks.shape_world.generator import Scene, split_scene
from benchmarks.shape_world.metrics import area_resize
from scripts.comfy_headless import PACK_ROOT, find_comfyui
from scripts.training import (
    TrainingLoop,
    ema_update,
    load_checkpoint,
    new_record,
    run_arguments,
    save_checkpoint,
    warmup_cosine,
)
from spatial_control.guidance.attention_store import AttentionStore
from spatial_control.guidance.backends.diffusers import RecordingCrossAttention, diffusers_layer_keys
from spatial_control.models.autoencoder import load_autoencoder
from spatial_control.models.demo_model import (
    AUTOENCODER_FILE,
    DEMO_TEXT_CONFIG,
    TEXT_ENCODER_FILE,
    UNET_FILE,
    autoencoder_latent_scale,
    fit_latent_preview,
    load_demo_text_encoder_state,
    read_weights,
    save_demo_text_encoder,
    save_demo_unet,
)
from spatial_control.models.demo_unet import DEMO_UNET_CONFIG, build_demo_unet
from spatial_control.models.text_encoder import (
    CONTEXT_LENGTH,
    VOCAB_SIZE,
    build_text_encoder,
    load_clip_tokenizer,
    tokenize,
)

OBJECT_COUNT_PROBS = (0.2, 0.3, 0.25, 0.25)  # 1, 2, 3, 4 objects
GROUNDING_GRID = (16, 16)
TEXTURED_SHARE = 0.1
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
CAPTIONS = "varied (benchmarks/shape_world/captions.py: random_style)"
UNKNOWN_POOL = 2000  # words outside the vocabulary that varied captions may carry (zero embeddings)


def alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def vocabulary_ids(tokenizer) -> list[int]:
    """Token ids of the words captions are written with: the embedding rows the text encoder trains
    and exports (every other row is zero, in training as in the exported file)."""
    return sorted(set(tokenize(tokenizer, [" ".join(vocabulary_words())]).flatten().tolist()))


def unknown_words(tokenizer, count: int = UNKNOWN_POOL, seed: int = 0) -> list[str]:
    """A fixed sample of whole words of the CLIP vocabulary that lie outside the demo model's (and
    outside the benchmark's held-out ``UNKNOWN_WORD_EXAMPLES``)."""
    known = {*vocabulary_words(), *UNKNOWN_WORD_EXAMPLES}
    words = sorted(
        w[:-4] for w in tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6
    )
    words = [w for w in words if w not in known]
    return [words[i] for i in np.random.default_rng(seed).choice(len(words), count, replace=False)]


def grounding_targets(
    tokenizer, caption: WrittenCaption, scene: Scene, grid: tuple[int, int] = GROUNDING_GRID
) -> torch.Tensor:
    """``[77, *grid]``: for each token of an object's phrase in ``caption``, the object's mask
    area-resized to ``grid``; zero rows for every other token."""
    ids = tokenize(tokenizer, [caption.text])[0].tolist()
    targets = torch.zeros(CONTEXT_LENGTH, *grid)
    cursor = 0
    for words, mask in zip(caption.phrases, scene.masks, strict=True):
        phrase = tokenizer(words, add_special_tokens=False)["input_ids"]
        start = next(i for i in range(cursor, len(ids)) if ids[i : i + len(phrase)] == phrase)
        cursor = start + len(phrase)
        targets[start:cursor] = torch.from_numpy(area_resize(mask, grid)).float()
    return targets


def token_grounding_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over grounded tokens of ``(1 - sum(A * m) / sum(A))^2`` (TokenCompose's token loss).

    ``maps``: cross-attention ``[B, 77, h, w]``; ``targets``: soft masks of the same shape, all-zero
    for tokens without an object. Returns 0 (with a graph) when no token is grounded.
    """
    grounded = targets.flatten(2).amax(-1) > 0
    inside = (maps * targets).sum((-1, -2)) / maps.sum((-1, -2)).clamp_min(1e-8)
    return ((1 - inside) ** 2 * grounded).sum() / grounded.sum().clamp_min(1)


def training_scene(rng: np.random.Generator, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` with the training mix: 1-4 objects by ``OBJECT_COUNT_PROBS``, a
    textured background ``TEXTURED_SHARE`` of the time (both drawn from ``rng``)."""
    n = int(rng.choice(4, p=OBJECT_COUNT_PROBS)) + 1
    background = str(rng.choice(["noise", "gradient"])) if rng.random() < TEXTURED_SHARE else "plain"
    return split_scene(split, index, n_objects=n, background=background)


class SceneBatches(torch.utils.data.IterableDataset):
    """Batches ``(images [B,3,128,128] in [-1,1], captions, grounding targets [B,77,16,16])`` of the
    train split from ``first_index``; captions written in random styles (``captions.random_style``)."""

    def __init__(self, batch: int, first_index: int, seed: int = 0, tokenizer=None):
        self.batch, self.first_index, self.seed, self.tokenizer = batch, first_index, seed, tokenizer
        self.unknown = unknown_words(tokenizer, seed=seed) if tokenizer is not None else ()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = worker
        while True:
            start = self.first_index + k * self.batch
            rng = np.random.default_rng([self.seed, start])
            images, captions, targets = [], [], []
            for index in range(start, start + self.batch):
                scene = training_scene(rng, "train", index)
                n = len(scene.objects)
                images.append(scene.image)
                dropped = rng.random() < CAPTION_DROPOUT
                style = random_style(rng, n, self.unknown)
                caption = write_caption(scene.objects, style, rng)
                captions.append("" if dropped else caption.text)
                if dropped or self.tokenizer is None:
                    targets.append(torch.zeros(CONTEXT_LENGTH, *GROUNDING_GRID))
                else:
                    targets.append(grounding_targets(self.tokenizer, caption, scene))
            pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
            yield pixels, captions, torch.stack(targets)
            k += workers


def parse_args(argv=None) -> argparse.Namespace:
    parser = run_arguments(
        __doc__, "demo_model", steps=5000, minutes=60.0, out=PACK_ROOT / "models" / "weights", eval_every=0
    )
    parser.set_defaults(
        threads=int(os.environ.get("OMP_NUM_THREADS", "2")), log_every=20, checkpoint_seconds=300
    )
    parser.add_argument("--workers", type=int, default=0, help="data-generating processes (use on GPU)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument(
        "--grounding-weight", type=float, default=0.01, help="weight of the token grounding loss (0: off)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from",
        type=Path,
        help="without a checkpoint: start from the weights exported in this folder, with a fresh optimiser "
        "and an LR schedule from their step to --steps",
    )
    args = parser.parse_args(argv)
    args.out = Path(args.out)  # the weights folder: the autoencoder is read from it, the export written to it
    return args


def recipe_of(args) -> dict:
    """What determines the trained weights: a checkpoint only resumes the same recipe."""
    return {"batch": args.batch, "lr": args.lr, "ema": args.ema, "grounding_weight": args.grounding_weight,
            "seed": args.seed, "captions": CAPTIONS}  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # The capture kwargs reach the self-attention processors too, which warn on every call.
    diffusers.utils.logging.set_verbosity_error()
    device = torch.device(args.device)
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    state = None if args.fresh else load_checkpoint(checkpoint_path, recipe_of(args))

    autoencoder = load_autoencoder(args.out / AUTOENCODER_FILE).to(device).eval().requires_grad_(False)
    latent_scale = autoencoder_latent_scale(args.out / AUTOENCODER_FILE)
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    unet = build_demo_unet(DEMO_UNET_CONFIG, seed=args.seed).to(device, memory_format=torch.channels_last)
    text_encoder = build_text_encoder(DEMO_TEXT_CONFIG, seed=args.seed + 1).to(device)
    recorders = {name: RecordingCrossAttention(key) for name, key in diffusers_layer_keys(unet).items()}
    unet.set_attn_processor({**unet.attn_processors, **recorders})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    keep = vocabulary_ids(tokenizer)
    outside = torch.ones(VOCAB_SIZE, 1, dtype=torch.bool, device=device)
    outside[keep] = False
    embedding = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embedding.masked_fill_(outside, 0.0)
    # Words outside the vocabulary keep zero embeddings in training, as in the exported file.
    embedding.register_hook(lambda grad: grad.masked_fill(outside, 0.0))
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = (
        copy.deepcopy(unet).requires_grad_(False),
        copy.deepcopy(text_encoder).requires_grad_(False),
    )
    record = {**new_record(), "samples": 0, "schedule_start": 0}
    if state is not None:
        for module, key in ((unet, "unet"), (text_encoder, "text_encoder"), (ema_unet, "ema_unet"),
                            (ema_text, "ema_text"), (optimizer, "optimizer")):  # fmt: skip
            module.load_state_dict(state[key])
        record = state["record"]
        print(
            f"resuming {checkpoint_path} at step {record['step']} ({record['samples']} samples)", flush=True
        )
    elif args.init_from:
        unet_state, unet_meta = read_weights(args.init_from / UNET_FILE)
        text_state, _ = load_demo_text_encoder_state(args.init_from / TEXT_ENCODER_FILE)
        text_keys = text_encoder.state_dict().keys()
        text_state = {
            k if k in text_keys else k.removeprefix("text_model."): v for k, v in text_state.items()
        }
        for model, ema, weights in ((unet, ema_unet, unet_state), (text_encoder, ema_text, text_state)):
            model.load_state_dict(weights, strict=False)
            ema.load_state_dict(weights, strict=False)
        done = unet_meta["training"]
        record.update(step=done["steps"], samples=done["samples"], cpu_seconds=done["cpu_minutes"] * 60)
        record["schedule_start"] = done["steps"]
        print(
            f"warm start from {args.init_from} at step {done['steps']} (fresh optimiser and schedule)",
            flush=True,
        )

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
            "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
            "optimizer": optimizer.state_dict(), "record": record, "recipe": recipe_of(args),
        })  # fmt: skip

    def schedule(step: int) -> float:
        start = record["schedule_start"]
        return warmup_cosine(step - start, args.lr, warmup=200, total=args.steps - start, floor=0.1)

    acp = alphas_cumprod().to(device)
    batches = iter(
        torch.utils.data.DataLoader(
            SceneBatches(args.batch, first_index=record["samples"], seed=args.seed, tokenizer=tokenizer),
            batch_size=None,
            num_workers=args.workers,
        )
    )

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, args.batch)

    def train_step(step: int) -> str:
        pixels, captions, targets = next(batches)
        with torch.no_grad():
            z = autoencoder.encode(pixels.to(device)) * latent_scale
        ids = tokenize(tokenizer, captions).to(device)
        t = torch.randint(0, len(acp), (z.shape[0],), device=device)
        a = acp[t].reshape(-1, 1, 1, 1)
        noise = torch.randn_like(z)
        x_t = (a.sqrt() * z + (1 - a).sqrt() * noise).contiguous(memory_format=torch.channels_last)
        target = a.sqrt() * noise - (1 - a).sqrt() * z
        snr = a / (1 - a)
        weight = snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)
        context = text_encoder(ids).last_hidden_state
        store = AttentionStore()
        capture = {"attention_store": store, "latent_hw": tuple(z.shape[-2:])}
        prediction = unet(x_t, t, context, cross_attention_kwargs=capture).sample
        grounding = token_grounding_loss(store.maps(GROUNDING_GRID), targets.to(device))
        loss = (weight * (prediction.float() - target) ** 2).mean() + args.grounding_weight * grounding
        loop.optimise(loss, params, 1.0)
        decay = min(args.ema, (1 + step) / (10 + step))
        for model, ema in ((unet, ema_unet), (text_encoder, ema_text)):
            ema_update(model, ema, decay)
        record["samples"] += z.shape[0]
        return f"loss {loss.item():.4f} grounding {grounding.item():.3f}"

    loop.run(train_step)
    if args.no_export:
        return
    exported = {
        "steps": record["step"], "samples": record["samples"],
        "cpu_minutes": round(record["cpu_seconds"] / 60, 1),
        "wall_minutes": round(record["wall_seconds"] / 60, 1),
        "batch": args.batch, "lr": args.lr, "ema": args.ema, "prediction": "v",
        "min_snr_gamma": MIN_SNR_GAMMA,
        "caption_dropout": CAPTION_DROPOUT, "object_count_probs": OBJECT_COUNT_PROBS, "threads": args.threads,
        "grounding_weight": args.grounding_weight, "captions": CAPTIONS,
        "schedule_start": record["schedule_start"], "schedule_end": args.steps,
    }  # fmt: skip
    pixels, _, _ = next(iter(SceneBatches(64, first_index=10**9, seed=args.seed)))
    with torch.no_grad():
        preview = fit_latent_preview(autoencoder.encode(pixels.to(device)).cpu() * latent_scale, pixels)
    save_demo_unet(ema_unet, args.out / UNET_FILE, exported, preview)
    save_demo_text_encoder(ema_text, args.out / TEXT_ENCODER_FILE, keep, exported)
    print(
        f"exported {args.out / UNET_FILE} and {args.out / TEXT_ENCODER_FILE}: {json.dumps(exported)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
