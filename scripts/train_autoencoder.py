"""Train the demo model's autoencoder on shape-world scenes and export it to ``models/weights/``.

    python -m scripts.train_autoencoder [--minutes 60] [--steps N] [--threads 1] [--device cpu|cuda]

Scenes are generated on the fly: training sample ``k`` is ``split_scene("train", k)`` with a background and
rotation drawn from ``k`` alone, so the data stream needs no state and a run is deterministic given its
seed. A checkpoint (model, optimizer, step, RNG) is written atomically to the cache directory every couple
of minutes and a rerun continues from it; every run ends by exporting fp16 weights plus a JSON record.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.shape_world.generator import split_scene
from scripts.training import (
    TrainingLoop,
    load_checkpoint,
    new_record,
    run_arguments,
    save_checkpoint,
    warmup_cosine,
)
from spatial_control.models.autoencoder import (
    DEFAULT_WEIGHTS,
    AutoencoderConfig,
    ShapeAutoencoder,
    save_autoencoder,
)

ARCHITECTURES: dict[str, AutoencoderConfig] = {
    "balanced": AutoencoderConfig(encoder_blocks=(1, 1), decoder_blocks=(2, 2)),
    "base": AutoencoderConfig(),
    "light": AutoencoderConfig(encoder_blocks=(1, 1), decoder_blocks=(1, 2)),
    "wide-decoder": AutoencoderConfig(
        encoder_blocks=(1, 1), decoder_channels=(96, 128), decoder_blocks=(2, 2)
    ),
}
BACKGROUND_MIX = {"plain": 0.8, "noise": 0.1, "gradient": 0.1}
ROTATED_SHARE = 0.25
EVAL_SCENES = 32
STATS_SCENES = 64


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (a checkpoint only resumes the same recipe)."""

    arch: str = "balanced"
    seed: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    beta2: float = 0.99  # faster than 0.999 to follow a growing gradient scale (2e-3 / 0.999 diverged)
    warmup_steps: int = 200
    final_lr_fraction: float = 0.02
    latent_noise: float = 0.05  # std of the noise added to z, relative to z's (detached) batch std
    latent_l2: float = 1e-5
    l1_weight: float = 0.0  # extra L1 term, faded out linearly over the first l1_steps
    l1_steps: int = 0
    grad_clip: float = 1.0


# ------------------------------------------------------------------------------------------------ data
def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> NCHW float in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """NCHW float in [-1, 1] -> NxHxWx3 uint8."""
    return ((x.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def training_image(index: int) -> np.ndarray:
    """Training sample ``index``: 1-4 objects, mostly plain backgrounds, some rotated shapes."""
    rng = np.random.default_rng([9, index])
    background = rng.choice(list(BACKGROUND_MIX), p=list(BACKGROUND_MIX.values()))
    rotation = 45.0 if rng.random() < ROTATED_SHARE else 0.0
    return split_scene("train", index, background=str(background), max_rotation=rotation).image


def eval_scenes(count: int) -> list:
    """The fixed eval set: eval-split scenes with their default (plain) backgrounds."""
    return [split_scene("eval", i) for i in range(count)]


# ------------------------------------------------------------------------------------------- schedule
def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """Linear warmup, then cosine decay to ``final_lr_fraction`` of the peak at ``total_steps``."""
    return warmup_cosine(step, recipe.lr, recipe.warmup_steps, total_steps, recipe.final_lr_fraction)


def psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: ShapeAutoencoder, scenes: list, device: torch.device) -> dict:
    """PSNR (pooled over all pixels, on uint8 reconstructions) on all scenes and on those with 3-4 objects."""
    model.eval()
    originals = np.stack([s.image for s in scenes])
    recon = np.concatenate(
        [
            to_uint8(model(to_tensor(list(originals[i : i + 16])).to(device)))
            for i in range(0, len(scenes), 16)
        ]
    )
    model.train()
    err = ((recon.astype(np.float64) - originals) / 255.0) ** 2
    per_image = err.mean(axis=(1, 2, 3))
    crowded = np.array([len(s.objects) >= 3 for s in scenes])
    return {
        "psnr": psnr_of_mse(per_image.mean()),
        "psnr_3_4_objects": psnr_of_mse(per_image[crowded].mean()),
        "worst_image_psnr": psnr_of_mse(per_image.max()),
    }


@torch.no_grad()
def latent_stats(model: ShapeAutoencoder, scenes: list, device: torch.device) -> dict:
    model.eval()
    z = (
        torch.cat(
            [
                model.encode(to_tensor([s.image for s in scenes[i : i + 16]]).to(device))
                for i in range(0, len(scenes), 16)
            ]
        )
        .float()
        .cpu()
    )
    model.train()
    std = z.std().item()
    return {
        "mean": z.mean().item(),
        "std": std,
        "scale_factor": 1.0 / std,
        "channel_mean": z.mean(dim=(0, 2, 3)).tolist(),
        "channel_std": z.std(dim=(0, 2, 3)).tolist(),
        "measured_on": f"{len(scenes)} eval-split scenes (plain backgrounds, 1-4 objects)",
    }


# -------------------------------------------------------------------------------------------- training
def parse_args(argv=None) -> tuple[argparse.Namespace, Recipe]:
    defaults = Recipe()
    parser = run_arguments(
        __doc__, "autoencoder", steps=3600, minutes=60.0, out=DEFAULT_WEIGHTS, eval_every=250
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch)
    for field in (
        "seed",
        "batch_size",
        "lr",
        "beta2",
        "warmup_steps",
        "final_lr_fraction",
        "latent_noise",
        "latent_l2",
        "l1_weight",
        "l1_steps",
        "grad_clip",
    ):
        value = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = Recipe(**{k: getattr(args, k) for k in asdict(defaults)})
    return args, recipe


def train(args: argparse.Namespace, recipe: Recipe) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    state = None if args.fresh else load_checkpoint(checkpoint_path, asdict(recipe))

    torch.manual_seed(recipe.seed)
    model = ShapeAutoencoder(ARCHITECTURES[recipe.arch]).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~5-10 % faster convolutions on CPU
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=(0.9, recipe.beta2), weight_decay=0.0
    )
    record = new_record()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        record = state["record"]
        print(f"resuming {checkpoint_path} at step {record['step']}", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"arch {recipe.arch} ({n_params / 1e6:.2f} M parameters): {model.config}", flush=True)
    scenes = eval_scenes(EVAL_SCENES)

    def checkpoint() -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "record": record,
                "recipe": asdict(recipe),
            },
        )

    def schedule(step: int) -> float:
        return learning_rate(recipe, step, args.steps)

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, recipe.batch_size)

    def train_step(step: int) -> str:
        first = step * recipe.batch_size
        x = to_tensor([training_image(first + i) for i in range(recipe.batch_size)]).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        z = model.encode(x)
        noisy = z + recipe.latent_noise * z.detach().std() * torch.randn_like(z)
        y = model.decode_unclamped(noisy)
        mse = F.mse_loss(y, x)
        loss = mse + recipe.latent_l2 * z.pow(2).mean()
        if step < recipe.l1_steps:
            loss = loss + recipe.l1_weight * (1 - step / recipe.l1_steps) * F.l1_loss(y, x)
        loop.optimise(loss, model.parameters(), recipe.grad_clip)
        # mse is on [-1, 1] images: divide by 4 for the [0, 1] scale PSNR uses
        return (
            f"loss {loss.item():.3e} train psnr {psnr_of_mse(mse.item() / 4):.2f} dB"
            f" z_std {z.detach().std().item():.3f}"
        )

    def evaluate_now(step: int) -> dict:
        return {k: round(v, 3) for k, v in evaluate(model, scenes, device).items()}

    loop.run(train_step, evaluate_now)
    if not args.no_export:
        export(model, recipe, record, args, scenes, device, n_params)


def export(model, recipe: Recipe, record: dict, args, scenes, device, n_params: int) -> None:
    final = evaluate(model, scenes, device)
    model.latent_stats = latent_stats(model, eval_scenes(STATS_SCENES), device)
    info = {
        "training": {
            "script": "python -m scripts.train_autoencoder",
            "steps": record["step"],
            "target_steps": args.steps,
            "samples_seen": record["step"] * recipe.batch_size,
            "cpu_minutes": round(record["cpu_seconds"] / 60, 1),
            "wall_minutes": round(record["wall_seconds"] / 60, 1),
            "parameters": n_params,
            "final_eval": {k: round(v, 3) for k, v in final.items()},
            "eval_set": f"{EVAL_SCENES} eval-split scenes, plain backgrounds, 1-4 objects; "
            "pooled PSNR on uint8",
            "recipe": asdict(recipe),
            "data": {"backgrounds": BACKGROUND_MIX, "rotated_share": ROTATED_SHARE, "max_rotation": 45.0},
            "history": record["history"],
            "notes": RECIPE_NOTES,
        }
    }
    save_autoencoder(model.to(memory_format=torch.contiguous_format), args.out, info)
    print(
        f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): eval psnr {final['psnr']:.2f} dB,"
        f" latent mean {model.latent_stats['mean']:.3f} std {model.latent_stats['std']:.3f}",
        flush=True,
    )


RECIPE_NOTES = (
    "3-minute trials on 1 CPU thread (batch 16, lr 2e-3, Adam beta2 0.999): 'base' 25.4 dB at 2.0 CPU-min "
    "(~16 samples/s), 'light' 26.0 dB at 2.0 CPU-min (~20 samples/s) then diverged, 'wide-decoder' diverged "
    "at step 125. Chosen: 'balanced' (light encoder, base decoder) with lr 1e-3, beta2 0.99, warmup 200."
)


def main(argv=None) -> None:
    args, recipe = parse_args(argv)
    train(args, recipe)


if __name__ == "__main__":
    main()
