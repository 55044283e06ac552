"""The shape-world demo model's files: UNet, text encoder and autoencoder weights with their configs.

Each weights file ``x.safetensors`` (fp16) has ``x.json`` beside it with its config and the record
of the training that produced it. A missing or corrupt file raises an error that names the file
and the script that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import weights_io
from .text_encoder import TextEncoderConfig, compact_token_rows, expand_token_rows

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
AUTOENCODER_FILE = "shape_autoencoder.safetensors"
UNET_FILE = "demo_unet.safetensors"
TEXT_ENCODER_FILE = "demo_text_encoder.safetensors"
DEMO_TEXT_CONFIG = TextEncoderConfig()
REBUILD = {
    AUTOENCODER_FILE: "python -m scripts.train_autoencoder",
    UNET_FILE: "python -m scripts.train_demo_model",
    TEXT_ENCODER_FILE: "python -m scripts.train_demo_model",
}
ROWS_KEY = "token_embedding_rows"
EMBEDDING_KEY = "text_model.embeddings.token_embedding.weight"


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(float32 state dict, meta) of one of the demo model's files."""
    path = Path(path)
    return weights_io.read_weights(path, "demo model", REBUILD.get(path.name, "the training scripts"))


def autoencoder_latent_scale(path: Path) -> float:
    """The latent scale factor (1 / std of the autoencoder's latents on held-out scenes)."""
    _, meta = read_weights(path)
    try:
        return 1.0 / float(meta["latent"]["std"])
    except (KeyError, TypeError, ZeroDivisionError):
        raise weights_io.unusable(
            Path(path), "demo model", REBUILD[AUTOENCODER_FILE], "no latent statistics"
        ) from None


def save_demo_unet(unet, path: Path, record: dict, latent_preview: dict | None = None) -> None:
    meta = {"config": dict(unet.config), "training": record, "latent_preview": latent_preview or {}}
    weights_io.write_weights(unet.state_dict(), Path(path), meta)


def fit_latent_preview(latents: torch.Tensor, pixels: torch.Tensor) -> dict:
    """Least-squares linear map (+ bias) from model-space latents ``[n, c, h, w]`` to the mean
    colour of each latent cell of ``pixels`` ``[n, 3, H, W]`` in [-1, 1]: ComfyUI's Latent2RGB
    live preview."""
    target = torch.nn.functional.adaptive_avg_pool2d(pixels.float(), latents.shape[-2:])
    x = latents.float().movedim(1, -1).reshape(-1, latents.shape[1])
    y = target.movedim(1, -1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(len(x), 1)], 1)
    solution = torch.linalg.lstsq(design, y).solution
    return {"rgb_factors": solution[:-1].tolist(), "rgb_bias": solution[-1].tolist()}


def save_demo_text_encoder(text_encoder, path: Path, keep_token_ids: list[int], record: dict) -> None:
    """Saved with only the embedding rows of ``keep_token_ids`` (the words it was trained on): the
    other 49k rows were never trained, and zero rows load for them."""
    state = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in text_encoder.state_dict().items()
    }
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    state[EMBEDDING_KEY], state[ROWS_KEY] = compact_token_rows(state[EMBEDDING_KEY], keep_token_ids)
    config = {k: getattr(DEMO_TEXT_CONFIG, k) for k in DEMO_TEXT_CONFIG.__dataclass_fields__}
    weights_io.write_weights(state, Path(path), {"config": config, "training": record})


def load_demo_text_encoder_state(path: Path) -> tuple[dict[str, torch.Tensor], TextEncoderConfig]:
    """Full ``text_model.*`` state dict (zero rows for untrained tokens) and its config."""
    state, meta = read_weights(path)
    config = TextEncoderConfig(**meta["config"])
    state[EMBEDDING_KEY] = expand_token_rows(state[EMBEDDING_KEY], state.pop(ROWS_KEY))
    return state, config
