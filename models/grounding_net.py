"""The grounding network of ST-LDM (arXiv 2403.10004): (image, text) -> spatial guidance map of where the
described object belongs.

Two branches share a Swin Transformer encoder (timm): an autoencoder branch (patch-expanding decoder
back to the image, the paper's compression branch; here it is trained as an auxiliary reconstruction)
and a multimodal transformer whose queries, one per cell of the 1/8-resolution grid, read the text
(a CLIP text transformer fed by the real CLIP tokenizer; its pooled feature also FiLM-modulates the image
features) and align to the image features by deformable
sampling over all Swin levels (``models.deformable_alignment``), refined over several stages. Each stage
predicts a map: a centre heat map (where the object's centre goes), the object's log size at each
cell, and a heat map of the anchor objects the text names (an auxiliary output that teaches the queries
to find what the text refers to); later stages see the earlier stage's map and each cell's position
relative to the anchors that map found (so "left of" becomes a matter of the sign of an offset).
``alignment="none"`` drops the deformable sampling (the ablation). ``guidance.grounding`` turns the
last map into a box.

Weights are fp16 safetensors with the config and training record in a JSON beside them; the text
encoder keeps only the embedding rows of the words it was trained on (zeros elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import weights_io
from .deformable_alignment import DeformableAlignment
from .text_encoder import (
    END_TOKEN,
    TextEncoderConfig,
    canonical_text_keys,
    compact_token_rows,
    expand_token_rows,
    installed_text_keys,
)

REBUILD_COMMAND = "python -m scripts.train_grounding"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "grounding_net.safetensors"
# The ablation without deformable alignment (``--alignment none``), for the benchmark.
ABLATION_WEIGHTS = DEFAULT_WEIGHTS.with_name("grounding_net_no_alignment.safetensors")
EMBEDDING_KEY = "text.text_model.embeddings.token_embedding.weight"  # as stored (canonical_text_keys)
ROWS_KEY = "text_token_rows"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALIGNMENTS = ("deformable", "none")
MAP_CHANNELS = 4  # centre heat, log width, log height, anchor heat


@dataclass(frozen=True)
class GroundingConfig:
    image_size: int = 128
    patch_size: int = 4
    swin_dim: int = 32
    swin_depths: tuple[int, ...] = (2, 2, 2)
    swin_heads: tuple[int, ...] = (2, 4, 8)
    window_size: int = 8
    dim: int = 96
    heads: int = 4
    stages: int = 3
    points: int = 4
    text_length: int = 32
    alignment: str = "deformable"
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def __post_init__(self):
        for name in ("swin_depths", "swin_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextEncoderConfig(**self.text))
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")

    @property
    def map_size(self) -> int:
        """Side of the query grid and of the output map: the second Swin level."""
        return self.image_size // (self.patch_size * 2)

    def to_dict(self) -> dict:
        return {
            f.name: asdict(self.text) if f.name == "text" else getattr(self, f.name) for f in fields(self)
        }


@dataclass(frozen=True)
class GroundingOutput:
    """Per stage: ``heat [B, h, w]`` logits of the object's centre, ``log_size [B, 2, h, w]`` (log of width
    and height as a share of the image side), ``anchor_heat [B, h, w]`` logits of the named anchors'
    centres; ``reconstruction [B, 3, H, W]`` from the autoencoder branch."""

    heat: list[torch.Tensor]
    log_size: list[torch.Tensor]
    anchor_heat: list[torch.Tensor]
    reconstruction: torch.Tensor | None


def sine_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """``[h * w, dim]`` 2D sine-cosine embedding of the cell centres (half the channels for x, half for y)."""
    quarter = dim // 4
    freq = torch.exp(-math.log(1000.0) * torch.arange(quarter) / quarter)
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angle = coord[:, None] * freq[None] * 2 * math.pi * 8
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, 1)


def cell_centres(h: int, w: int) -> torch.Tensor:
    """``[h * w, 2]`` (x, y) in [0, 1]."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


def anchor_offsets(anchor_logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[B, N, 2]``: each cell's position relative to where the anchor map puts the named anchors (its
    softmax-weighted mean position over the cells; between two anchors, their midpoint)."""
    weights = anchor_logits.softmax(-1)  # [B, N]
    centre = (weights[..., None] * reference).sum(1, keepdim=True)  # [B, 1, 2]
    return reference - centre


class PatchExpand(nn.Module):
    """Swin-Unet's patch expanding layer: a linear layer, then each token becomes ``factor x factor``."""

    def __init__(self, dim: int, out_dim: int, factor: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, out_dim * factor * factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> [B, out, h*f, w*f]
        x = self.expand(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return F.pixel_shuffle(x, self.factor)


class AutoencoderDecoder(nn.Module):
    """Deepest Swin features back to the image by patch expansion (the autoencoder branch)."""

    def __init__(self, config: GroundingConfig):
        super().__init__()
        dims = [config.swin_dim * 2**i for i in range(len(config.swin_depths))][::-1]
        self.expands = nn.ModuleList(PatchExpand(a, b, 2) for a, b in zip(dims, dims[1:], strict=False))
        self.to_image = PatchExpand(dims[-1], 3, config.patch_size)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        x = deepest
        for expand in self.expands:
            x = F.gelu(expand(x))
        return torch.sigmoid(self.to_image(x))


class GroundingStage(nn.Module):
    """Self-attention over the queries, cross-attention to the text, deformable alignment to the image
    features, a feed-forward layer, and the stage's map head."""

    def __init__(self, config: GroundingConfig, levels: int):
        super().__init__()
        d = config.dim
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(5))
        self.self_attention = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.text_attention = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.alignment = (
            DeformableAlignment(d, config.heads, levels, config.points)
            if config.alignment == "deformable"
            else None
        )
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, MAP_CHANNELS)
        nn.init.zeros_(self.head.weight)
        self.head.bias.data.copy_(torch.tensor([-4.0, math.log(0.28), math.log(0.28), -4.0]))

    def forward(self, q, pos, reference, values, text, text_pad):
        n0, n1, n2, n3, n4 = self.norms
        x = n0(q) + pos
        q = q + self.self_attention(x, x, n0(q), need_weights=False)[0]
        q = q + self.text_attention(n1(q) + pos, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        if self.alignment is not None:
            q = q + self.alignment(n2(q) + pos, reference, values)
        q = q + self.ffn(n3(q))
        return q, self.head(n4(q))


class GroundingNet(nn.Module):
    """``forward(images [B, 3, S, S] in [0, 1] at the config's size, tokens [B, L]) -> GroundingOutput``."""

    def __init__(self, config: GroundingConfig):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer
        from transformers import CLIPTextModel

        self.config = config
        self.swin = SwinTransformer(
            img_size=config.image_size, patch_size=config.patch_size, num_classes=0,
            embed_dim=config.swin_dim, depths=config.swin_depths, num_heads=config.swin_heads,
            window_size=config.window_size, drop_path_rate=0.0,
        )  # fmt: skip
        self.decoder = AutoencoderDecoder(config)
        self.text = CLIPTextModel(config.text.transformers_config())
        levels = len(config.swin_depths)
        d = config.dim
        self.level_proj = nn.ModuleList(nn.Conv2d(config.swin_dim * 2**i, d, 1) for i in range(levels))
        self.level_embed = nn.Parameter(torch.zeros(levels, d))
        self.text_proj = nn.Linear(config.text.hidden_size, d)
        self.text_film = nn.Linear(config.text.hidden_size, 2 * levels * d)
        nn.init.zeros_(self.text_film.weight)
        nn.init.zeros_(self.text_film.bias)
        self.map_embed = nn.Linear(MAP_CHANNELS, d)
        self.relative_embed = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
        self.stages = nn.ModuleList(GroundingStage(config, levels) for _ in range(config.stages))
        m = config.map_size
        self.register_buffer("pos", sine_positions(m, m, d), persistent=False)
        self.register_buffer("reference", cell_centres(m, m), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected token features ``[B, L, D]``, the padding mask (True after the first end token) and
        the pooled text ``[B, hidden]`` (the first end token's feature, as CLIP pools)."""
        tokens = tokens[:, : self.config.text_length]
        hidden = self.text(input_ids=tokens).last_hidden_state
        is_end = (tokens == END_TOKEN).long()
        after_end = (is_end.cumsum(1) - is_end) > 0
        first_end = (is_end.cumsum(1) == 1) & is_end.bool()
        pooled = (hidden * first_end[..., None]).sum(1)
        return self.text_proj(hidden), after_end, pooled

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, reconstruct: bool = True
    ) -> GroundingOutput:
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"GroundingNet takes {size}x{size} images, got {tuple(images.shape[-2:])}")
        feats = self.swin.forward_intermediates((images - self.mean) / self.std, intermediates_only=True)
        text, text_pad, pooled = self.encode_text(tokens)
        # FiLM: the pooled text scales and shifts every level's channels, so a cell's features say at
        # once how well it matches what the text names (the queries and the deformable sampling read these).
        scale, shift = self.text_film(pooled).view(-1, 2, len(feats), self.config.dim).unbind(1)
        values = [
            (proj(f) + e[None, :, None, None]) * (1 + scale[:, i, :, None, None]) + shift[:, i, :, None, None]
            for i, (proj, f, e) in enumerate(zip(self.level_proj, feats, self.level_embed, strict=True))
        ]
        b, m = images.shape[0], self.config.map_size
        q = values[1].flatten(2).transpose(1, 2)
        pos = self.pos[None].expand(b, -1, -1)
        reference = self.reference[None].expand(b, -1, -1)
        heats, sizes, anchors, previous = [], [], [], None
        for stage in self.stages:
            if previous is not None:
                q = (
                    q
                    + self.map_embed(previous)
                    + self.relative_embed(anchor_offsets(previous[..., 3], reference))
                )
            q, out = stage(q, pos, reference, values, text, text_pad)
            previous = out
            grid = out.transpose(1, 2).reshape(b, MAP_CHANNELS, m, m)
            heats.append(grid[:, 0])
            sizes.append(grid[:, 1:3])
            anchors.append(grid[:, 3])
        reconstruction = self.decoder(feats[-1]) if reconstruct else None
        return GroundingOutput(heats, sizes, anchors, reconstruction)


def build_grounding_net(config: GroundingConfig, seed: int | None = None) -> GroundingNet:
    if seed is not None:
        torch.manual_seed(seed)
    return GroundingNet(config)


def save_grounding_net(model: GroundingNet, path: Path, keep_token_ids, training: dict) -> None:
    """fp16 weights (text embedding rows of ``keep_token_ids`` only) and the JSON record."""
    state = canonical_text_keys(model.state_dict(), "text.")
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    state[EMBEDDING_KEY], state[ROWS_KEY] = compact_token_rows(state[EMBEDDING_KEY], keep_token_ids)
    weights_io.write_weights(state, path, {"config": model.config.to_dict(), "training": training})


def load_grounding_net(path: Path = DEFAULT_WEIGHTS) -> tuple[GroundingNet, dict]:
    """The trained network (eval mode) and its JSON record; errors name the file and the rebuild command."""
    state, meta = weights_io.read_weights(path, "grounding network", REBUILD_COMMAND)
    try:
        model = GroundingNet(GroundingConfig(**meta["config"]))
        state[EMBEDDING_KEY] = expand_token_rows(state[EMBEDDING_KEY], state.pop(ROWS_KEY))
        state = installed_text_keys(state, model.state_dict(), "text.")
        result = model.load_state_dict(state, strict=False)  # position_ids may be a buffer or not
        misfit = [k for k in result.missing_keys if not k.endswith("position_ids")] + result.unexpected_keys
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise weights_io.unusable(
            path, "grounding network", REBUILD_COMMAND, f"weights do not fit: {err}"
        ) from None
    if misfit:
        raise weights_io.unusable(
            path, "grounding network", REBUILD_COMMAND, f"keys do not fit: {misfit[:3]}"
        )
    return model.eval(), meta
