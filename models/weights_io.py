"""Weights files of the pack's own models: fp16 safetensors with a JSON of config and training
record beside them (``x.safetensors`` + ``x.json``), and errors that name the file and the
command that rebuilds it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def write_weights(state: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    """Floating tensors as fp16 (others as they are), and ``meta`` as JSON beside them."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }
    save_file(state, str(path))
    path.chmod(0o644)
    meta_path(path).write_text(json.dumps(meta, indent=2) + "\n")


def read_weights(path: Path, what: str, rebuild: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(float32 state dict, meta); FileNotFoundError / ValueError naming the file and ``rebuild``."""
    from safetensors.torch import load_file

    path = Path(path)
    for p in (path, meta_path(path)):
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {p} is missing; rebuild it with `{rebuild}`")
    try:
        meta = json.loads(meta_path(path).read_text())
    except ValueError as err:
        raise ValueError(
            f"{what} file {meta_path(path)} is corrupt ({err}); rebuild it with `{rebuild}`"
        ) from None
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors has its own error types for truncated or garbage files
        raise ValueError(f"{what} file {path} is corrupt ({err}); rebuild it with `{rebuild}`") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


def unusable(path: Path, what: str, rebuild: str, reason: str) -> ValueError:
    return ValueError(f"{what} file {path} is unusable ({reason}); rebuild it with `{rebuild}`")


def load_module(
    path: Path, what: str, rebuild: str, build: Callable[[dict], torch.nn.Module]
) -> tuple[torch.nn.Module, dict]:
    """``(module, meta)``: ``build(meta)`` makes the module from the JSON's config and the weights are
    loaded into it; a config or weights that do not fit raise :func:`unusable`."""
    state, meta = read_weights(path, what, rebuild)
    try:
        module = build(meta)
        module.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise unusable(path, what, rebuild, f"weights do not match the config: {err}") from None
    return module, meta
