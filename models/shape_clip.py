"""ShapeCLIP: a small CLIP-style image/text model trained contrastively on shape-world scenes.

Used to score generated images (a CLIP score) and by methods that need CLIP-like image/text features.
Text goes through the real CLIP BPE tokenizer (``models.text_encoder.tokenize``: 77 ids, padded with the end
token); only the token ids listed in the config (the shape-world words) have their own embedding row, every
other id shares one "unknown" row. The text transformer is causal, like CLIP's, and pools at the first end
token, so padding never changes a feature. The image side is a small convnet on a fixed-size resize of the
input, pooled by mean and max over positions.

Weights are stored as fp16 safetensors with the config (and training record) in a JSON file beside them;
``python -m scripts.train_shape_clip`` rebuilds both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import weights_io
from .text_encoder import CONTEXT_LENGTH, END_TOKEN, VOCAB_SIZE, tokenize

REBUILD_COMMAND = "python -m scripts.train_shape_clip"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shape_clip.safetensors"
MAX_LOGIT_SCALE = 100.0
# Every word a shape-world caption uses ("a large red circle, a small blue square and a green cross").
CAPTION_WORDS = (
    "a", "and", ",", "small", "large",
    "red", "orange", "yellow", "green", "blue", "purple",
    "circle", "square", "triangle", "cross",
)  # fmt: skip


@dataclass(frozen=True)
class ShapeCLIPConfig:
    """All sizes of a :class:`ShapeCLIP`.

    ``image_channels[i]`` is the width after the ``i``-th stride-2 stage (each stage: a strided conv and a
    plain conv), so the image side works at ``image_size / 2 ** len(image_channels)`` in its last stage.
    ``token_ids`` are the CLIP BPE ids with their own embedding row (see :func:`caption_token_ids`).
    """

    image_size: int = 64
    image_channels: tuple[int, ...] = (32, 64, 128)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 128
    token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("image_channels", "token_ids"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.image_size % 2 ** len(self.image_channels):
            stages = len(self.image_channels)
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{stages} (one per stage)")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        ids = self.token_ids
        if any(not 0 <= t < VOCAB_SIZE for t in ids) or len(set(ids)) != len(ids):
            raise ValueError("token_ids must be distinct CLIP token ids")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ShapeCLIPConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ShapeCLIP config keys {sorted(unknown)}")
        return cls(**data)


def caption_token_ids(tokenizer, words: Iterable[str] = CAPTION_WORDS) -> tuple[int, ...]:
    """Sorted CLIP ids of the start and end tokens and of every BPE token of ``words``."""
    ids = {int(t) for t in tokenize(tokenizer, list(words)).flatten()}
    return tuple(sorted(ids))


class ConvStage(nn.Module):
    """Halve the resolution: a stride-2 conv then a plain conv, each with GroupNorm and SiLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.down = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(8, out_channels)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.down(x)))
        return F.silu(self.norm2(self.conv(x)))


class ImageEncoder(nn.Module):
    def __init__(self, config: ShapeCLIPConfig):
        super().__init__()
        widths = (3, *config.image_channels)
        self.stages = nn.Sequential(*[ConvStage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.projection = nn.Linear(2 * widths[-1], config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x).flatten(2)
        # Max pooling keeps a small object's response at full strength in a mostly empty scene.
        return self.projection(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


class TextBlock(nn.Module):
    """Pre-norm causal self-attention and MLP block."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(n, length, width))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    def __init__(self, config: ShapeCLIPConfig):
        super().__init__()
        # Row 0 is the shared "unknown" row; token_ids[i] owns row i + 1.
        row_of_token = torch.zeros(VOCAB_SIZE, dtype=torch.long)
        row_of_token[list(config.token_ids)] = torch.arange(1, len(config.token_ids) + 1)
        self.register_buffer("row_of_token", row_of_token, persistent=False)
        self.token_embedding = nn.Embedding(len(config.token_ids) + 1, config.text_width)
        self.position_embedding = nn.Parameter(torch.randn(CONTEXT_LENGTH, config.text_width) * 0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.blocks = nn.Sequential(
            *[TextBlock(config.text_width, config.text_heads) for _ in range(config.text_layers)]
        )
        self.norm = nn.LayerNorm(config.text_width)
        self.projection = nn.Linear(config.text_width, config.embed_dim, bias=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        is_end = token_ids == END_TOKEN
        if not is_end.any(dim=1).all():
            raise ValueError(f"every token row needs an end token ({END_TOKEN})")
        end_position = is_end.int().argmax(dim=1)
        # Causal attention: positions after the first end token never affect it, so cut them off.
        length = int(end_position.max()) + 1
        x = self.token_embedding(self.row_of_token[token_ids[:, :length]]) + self.position_embedding[:length]
        x = self.norm(self.blocks(x))
        return self.projection(x[torch.arange(len(x), device=x.device), end_position])


class ShapeCLIP(nn.Module):
    """``encode_image`` / ``encode_text`` give L2-normalised features; ``logit_scale`` is the learnable log
    temperature (``logits = exp(logit_scale) * cosine``, capped at 100)."""

    def __init__(self, config: ShapeCLIPConfig | None = None):
        super().__init__()
        self.config = config or ShapeCLIPConfig()
        self.image_encoder = ImageEncoder(self.config)
        self.text_encoder = TextEncoder(self.config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """NCHW float images in [0, 1] (sides divisible by 8) -> ``[N, embed_dim]`` unit vectors."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % 8 or images.shape[3] % 8:
            raise ValueError(f"expected NCHW RGB images with sides divisible by 8, got {tuple(images.shape)}")
        size = self.config.image_size
        x = images.to(self.logit_scale.device, self.logit_scale.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.image_encoder((x - 0.5) / 0.25), dim=-1)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``[N, 77]`` CLIP token ids (from ``text_encoder.tokenize``) -> ``[N, embed_dim]`` unit vectors."""
        return F.normalize(self.text_encoder(token_ids.to(self.logit_scale.device)), dim=-1)

    def logit_scale_value(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """``[N_images, N_texts]`` logits."""
        return self.logit_scale_value() * self.encode_image(images) @ self.encode_text(token_ids).T


@torch.no_grad()
def clip_score(model: ShapeCLIP, images: torch.Tensor, texts: list[str], tokenizer) -> torch.Tensor:
    """Per-pair CLIP score ``100 * max(cos(image_i, text_i), 0)`` as a ``[N]`` float tensor."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    device = model.logit_scale.device
    image_features = model.encode_image(images.to(device))
    text_features = model.encode_text(tokenize(tokenizer, list(texts)).to(device))
    return (100.0 * (image_features * text_features).sum(dim=-1)).clamp(min=0.0)


# --------------------------------------------------------------------------------------------- files
def save_shape_clip(model: ShapeCLIP, path: str | Path, info: dict | None = None) -> None:
    """Write fp16 weights to ``path`` and, beside it, the JSON ``{"config", **info}``."""
    weights_io.write_weights(
        model.state_dict(), Path(path), {"config": model.config.to_dict(), **(info or {})}
    )


def load_shape_clip(path: str | Path = DEFAULT_WEIGHTS, device: str | torch.device = "cpu") -> ShapeCLIP:
    """Load a model written by :func:`save_shape_clip` (float32, eval mode; the JSON is in ``model.info``).

    Raises FileNotFoundError if the weights or their JSON are missing and ValueError if either is corrupt;
    both messages name the file and the command that rebuilds it.
    """
    model, meta = weights_io.load_module(
        Path(path), "ShapeCLIP", REBUILD_COMMAND,
        lambda meta: ShapeCLIP(ShapeCLIPConfig.from_dict(meta["config"])),
    )  # fmt: skip
    model.info = meta
    return model.to(device).eval()


class ShapeCLIPScorer:
    """A ShapeCLIP with the CLIP tokenizer behind the image-text scorer protocol of
    ``guidance.region_proposer`` (unit features; ``encode_image`` differentiable)."""

    def __init__(self, model: ShapeCLIP, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(tokenize(self.tokenizer, list(texts)))
