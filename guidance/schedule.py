"""Where a sampling step lies in its schedule, for methods that act in some steps only."""

from __future__ import annotations

import math

import torch


def step_fraction(sigma: torch.Tensor, sample_sigmas: torch.Tensor | None) -> float | None:
    """Where ``sigma`` lies in the sampling schedule: 0 at the first step, 1 at the last (None if
    the schedule is unknown)."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return None
    s = float(sigma.reshape(-1)[0])
    index = int((sample_sigmas.float().cpu() - s).abs().argmin())
    return index / (len(sample_sigmas) - 1)


def in_window(fraction: float | None, start_at: float, end_at: float) -> bool:
    """Whether a step at ``fraction`` (``step_fraction``) lies in ``[start_at, end_at)``; a call
    outside a sampler's schedule (a probe, None) counts as inside."""
    return fraction is None or start_at <= fraction < end_at


def is_step_at(sigma: torch.Tensor, sample_sigmas: torch.Tensor | None, at: float) -> bool:
    """Whether ``sigma`` starts the schedule's first step at or after fraction ``at`` of the steps:
    exactly that step's sigma, so a second-order sampler's evaluations between steps never count."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return False
    steps = len(sample_sigmas) - 1
    index = math.ceil(at * steps - 1e-9)
    return index < steps and float(sigma.reshape(-1)[0]) == float(sample_sigmas[index])
