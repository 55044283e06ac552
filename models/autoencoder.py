"""The demo model's autoencoder: 128x128 RGB <-> 4x16x16 latent (Stable Diffusion's factor 8, 4 channels).

Fully convolutional and cheap at full resolution: the image enters through a pixel-unshuffle
(space-to-depth) stem and leaves through a pixel-shuffle, so every convolution runs at 1/4 or 1/8 of the
image size. Images are NCHW floats in [-1, 1]; latents are unscaled (the JSON beside the weights holds
their mean/std, and a diffusion model should use ``scale_factor = 1 / std``).

Weights are stored as fp16 safetensors with the config (and training record) in a JSON file beside them;
``python -m scripts.train_autoencoder`` rebuilds both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import weights_io

REBUILD_COMMAND = "python -m scripts.train_autoencoder"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shape_autoencoder.safetensors"


@dataclass(frozen=True)
class AutoencoderConfig:
    """All sizes of a :class:`ShapeAutoencoder`.

    ``channels[i]`` is the width at ``1 / (patch_size * 2**i)`` of the image size, so the downscale factor
    is ``patch_size * 2 ** (len(channels) - 1)``. The decoder mirrors the encoder with its own widths and
    block counts (decoding sharp edges needs more capacity than encoding them).
    """

    image_channels: int = 3
    latent_channels: int = 4
    patch_size: int = 4
    encoder_channels: tuple[int, ...] = (64, 128)
    encoder_blocks: tuple[int, ...] = (1, 2)
    decoder_channels: tuple[int, ...] = (64, 128)
    decoder_blocks: tuple[int, ...] = (2, 2)

    def __post_init__(self):
        for name in ("encoder_channels", "encoder_blocks", "decoder_channels", "decoder_blocks"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.encoder_channels)
        if not (len(self.encoder_blocks) == len(self.decoder_channels) == len(self.decoder_blocks) == n >= 1):
            raise ValueError(f"channel and block tuples must all have the same length >= 1: {self}")

    @property
    def downscale_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.encoder_channels) - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> AutoencoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config keys {sorted(unknown)}")
        return cls(**data)


class ResidualBlock(nn.Module):
    """``x + conv(silu(conv(silu(x))))``; the last conv starts at zero, so a fresh block is the identity
    (this keeps the unnormalised network well conditioned)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Downsample(nn.Module):
    """Halve the resolution losslessly (space-to-depth), then mix to ``out_channels`` with a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(4 * in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.pixel_unshuffle(x, 2))


class Upsample(nn.Module):
    """Double the resolution: a 1x1 conv to ``4 * out_channels`` then depth-to-space."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, 4 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(x), 2)


class Encoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        p, widths = config.patch_size, config.encoder_channels
        self.patch_size = p
        self.stem = nn.Conv2d(config.image_channels * p * p, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (width, blocks) in enumerate(zip(widths, config.encoder_blocks, strict=True)):
            if i > 0:
                layers.append(Downsample(widths[i - 1], width))
            layers.extend(ResidualBlock(width) for _ in range(blocks))
        self.body = nn.Sequential(*layers)
        self.to_latent = nn.Conv2d(widths[-1], config.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.stem(F.pixel_unshuffle(x, self.patch_size)))
        return self.to_latent(F.silu(h))


class Decoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        p, widths = config.patch_size, config.decoder_channels
        self.patch_size = p
        self.from_latent = nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1)
        layers: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            layers.extend(ResidualBlock(widths[i]) for _ in range(config.decoder_blocks[i]))
            if i > 0:
                layers.append(Upsample(widths[i], widths[i - 1]))
        self.body = nn.Sequential(*layers)
        self.to_pixels = nn.Conv2d(widths[0], config.image_channels * p * p, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.from_latent(z))
        return F.pixel_shuffle(self.to_pixels(F.silu(h)), self.patch_size)


class ShapeAutoencoder(nn.Module):
    """Deterministic autoencoder; ``encode``: images in [-1, 1] -> latents, ``decode``: latents -> images
    clamped to [-1, 1]. Any H, W divisible by ``config.downscale_factor`` works."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config or AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.latent_stats: dict = {}

    def _check_size(self, height: int, width: int, what: str) -> None:
        f = self.config.downscale_factor
        if height % f or width % f:
            raise ValueError(f"{what} size {height}x{width} must be divisible by {f}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x.shape[-2], x.shape[-1], "image")
        return self.encoder(x)

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (what training fits; may leave [-1, 1] slightly)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def save_autoencoder(model: ShapeAutoencoder, path: str | Path, info: dict | None = None) -> None:
    """Write fp16 weights to ``path`` and, beside it, the JSON ``{"config", "latent", **info}``."""
    meta = {"config": model.config.to_dict(), "latent": model.latent_stats, **(info or {})}
    weights_io.write_weights(model.state_dict(), Path(path), meta)


def load_autoencoder(
    path: str | Path = DEFAULT_WEIGHTS, device: str | torch.device = "cpu"
) -> ShapeAutoencoder:
    """Load a model written by :func:`save_autoencoder` (float32, eval mode).

    Raises FileNotFoundError if the weights or their JSON are missing and ValueError if either is corrupt;
    both messages name the file and the command that rebuilds it.
    """
    model, meta = weights_io.load_module(
        Path(path), "autoencoder", REBUILD_COMMAND,
        lambda meta: ShapeAutoencoder(AutoencoderConfig.from_dict(meta["config"])),
    )  # fmt: skip
    model.latent_stats = dict(meta.get("latent") or {})
    return model.to(device).eval()
