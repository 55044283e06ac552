"""What the training scripts share: where checkpoints live, atomic checkpoints, the LR schedule, the
command-line options and the main loop."""

from __future__ import annotations

import math
import os
import time
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


@torch.no_grad()
def ema_update(model: torch.nn.Module, ema: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter."""
    for p, e in zip(model.parameters(), ema.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


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


def new_record() -> dict:
    """A run's progress, kept in its checkpoint: optimizer steps, CPU and wall seconds over all its
    invocations, and the evaluations so far."""
    return {"step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0, "history": []}


class TrainingLoop:
    """The main loop every training script shares, around the script's own optimisation step.

    Runs until ``args.steps`` optimizer steps are done, ``args.minutes`` of wall time have passed
    or ``stop()`` says so; sets the learning rate of every param group from ``schedule(step)``
    before each step; logs every ``args.log_every`` steps with the sample rate and CPU time;
    evaluates every ``args.eval_every`` steps and at the last; checkpoints every
    ``args.checkpoint_seconds`` and at the end, through ``save()``. ``record`` (``new_record``) is
    updated in place, so CPU and wall time add up across resumed invocations.
    """

    def __init__(self, args, optimizer, record: dict, schedule, save, batch_size: int):
        self.args, self.optimizer, self.record = args, optimizer, record
        self.schedule, self.save, self.batch_size = schedule, save, batch_size

    def optimise(self, loss, params, grad_clip: float) -> None:
        """One optimizer step on ``loss``, gradients clipped to norm ``grad_clip``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.optimizer.step()

    def run(self, train_step, evaluate=None, stop=lambda: False) -> None:
        """``train_step(step) -> str``: one optimizer step (the LR already set), returning what its
        log line should say; ``evaluate(step) -> dict``: figures appended to the record's history."""
        args, record = self.args, self.record
        wall_start, cpu_start = time.time(), time.process_time()
        wall_base, cpu_base = record["wall_seconds"], record["cpu_seconds"]
        last_checkpoint = last_log = time.time()
        log_step = record["step"]
        while record["step"] < args.steps and time.time() - wall_start < 60 * args.minutes and not stop():
            lr = self.schedule(record["step"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            text = train_step(record["step"])
            record["step"] += 1
            record["wall_seconds"] = wall_base + time.time() - wall_start
            record["cpu_seconds"] = cpu_base + time.process_time() - cpu_start
            step = record["step"]
            if step % args.log_every == 0:
                rate = (step - log_step) * self.batch_size / (time.time() - last_log)
                last_log, log_step = time.time(), step
                print(
                    f"step {step}/{args.steps} {text} lr {lr:.2e} | {rate:.1f} samples/s"
                    f" cpu {record['cpu_seconds'] / 60:.1f} min",
                    flush=True,
                )
            if evaluate is not None and (step % args.eval_every == 0 or step == args.steps):
                figures = evaluate(step)
                record["history"].append(
                    {"step": step, "cpu_minutes": round(record["cpu_seconds"] / 60, 2), **figures}
                )
                print(f"eval step {step}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
            if time.time() - last_checkpoint > args.checkpoint_seconds:
                self.save()
                last_checkpoint = time.time()
        self.save()


def add_init_from(parser, what: str) -> None:
    """``--init-from``: a new machine without the checkpoint continues from the committed weights."""
    parser.add_argument(
        "--init-from",
        type=Path,
        help=f"without a checkpoint: start from this exported {what} (the committed fp16 weights) at its "
        "step, with a fresh optimiser, so a new machine continues the training",
    )


def warm_start(record: dict, meta: dict, source: Path) -> None:
    """Continue ``record`` (``new_record``) from an exported file's training record ``meta``."""
    done = meta["training"]
    record.update(step=done["steps"], cpu_seconds=done["cpu_minutes"] * 60, history=done.get("history", []))
    print(f"warm start from {source} at step {done['steps']} (fresh optimiser)", flush=True)


def training_record(args, record: dict, recipe: dict, batch_size: int, **extra) -> dict:
    """What an exported file's JSON says of its training: steps, samples, CPU and wall minutes, threads,
    device, the recipe, the evaluations so far, and the script's own ``extra`` entries."""
    return {
        "steps": record["step"], "samples_seen": record["step"] * batch_size,
        "cpu_minutes": round(record["cpu_seconds"] / 60, 1),
        "wall_minutes": round(record["wall_seconds"] / 60, 1), "threads": args.threads, "device": args.device,
        **extra, "recipe": recipe, "history": record["history"],
    }  # fmt: skip


def adamw_matrices_decayed(params, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices and none on biases, norms and other vectors."""
    params = list(params)
    return torch.optim.AdamW([
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ])  # fmt: skip
