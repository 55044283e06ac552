"""What the training scripts share: where checkpoints live, atomic checkpoints, the LR schedule."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from scripts.comfy_headless import cache_dir


def train_dir(name: str) -> Path:
    """``<cache>/train/<name>``: a training run's checkpoint folder (never in git)."""
    return cache_dir() / "train" / name


def save_checkpoint(path: Path, state: dict) -> None:
    """Write via a temporary file and rename, so an interrupted write never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, recipe: dict) -> dict | None:
    """The checkpoint at ``path`` (None if there is none); stops if it was made with another recipe."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["recipe"] != recipe:
        raise SystemExit(
            f"checkpoint {path} was made with another recipe:\n  {state['recipe']}\nvs now\n  {recipe}\n"
            "pass --fresh to start over (or the old options to resume)"
        )
    return state


def warmup_cosine(step: int, peak: float, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def run_arguments(description: str, name: str, steps: int, minutes: float, out: Path, eval_every: int):
    """An argument parser with the options every training script has (budget, device, checkpoint
    folder, export path, logging); scripts add their recipe's options to it."""
    import argparse

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=steps, help="target number of optimizer steps")
    parser.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget of this invocation")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache-dir", type=Path, default=train_dir(name))
    parser.add_argument("--out", type=Path, default=out, help="exported .safetensors path")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--checkpoint-seconds", type=float, default=120.0)
    parser.add_argument("--no-export", action="store_true", help="skip the export (trials)")
    return parser
