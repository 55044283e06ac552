"""Per-token cross-attention maps, captured during a denoiser forward pass.

A backend (ComfyUI or diffusers) calls ``AttentionStore.record`` from inside each selected
cross-attention layer with the softmax probabilities of the image queries over the text tokens.
The store keeps them with their autograd graph, so an energy on the maps can be differentiated
with respect to the latent. Layers are named the way ComfyUI names its attention patches. A store
made with ``keep_queries`` also keeps the layers' image queries: dense features of the image, as
the denoiser sees it (``query_features``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COND, UNCOND = 0, 1


@dataclass(frozen=True, order=True)
class CrossAttentionLayer:
    """One cross-attention layer: ComfyUI's (block, block id, transformer index) key plus its
    downscale factor relative to the latent (1 at full latent resolution, 2, 4, ...)."""

    block: str  # "input", "middle" or "output"
    block_id: int
    index: int
    downscale: int = 1

    @property
    def name(self) -> str:
        return f"{self.block}_{self.block_id}.{self.index}"

    @property
    def patch_key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.index)


LAYER_PRESETS = ("coarse", "all", "input", "middle", "output", "encoder")


def select_layers(layers: Iterable[CrossAttentionLayer], spec: str) -> list[CrossAttentionLayer]:
    """Choose layers by a preset or by a comma-separated list of names (e.g. ``middle_0.0,output_3.0``).

    Presets: ``coarse`` = the middle block and the decoder layers at the two coarsest resolutions
    that have cross-attention (layout guidance's choice: SD1.5's mid block at 8x8 and first up
    block at 16x16); ``all``; ``input``/``middle``/``output`` = every layer of that block kind;
    ``encoder`` = ``input`` and ``middle`` (a forward pass that needs only these can stop after
    the middle block).
    """
    layers = sorted(set(layers), key=_unet_order)
    spec = spec.strip()
    if spec == "all":
        chosen = layers
    elif spec in ("input", "middle", "output"):
        chosen = [layer for layer in layers if layer.block == spec]
    elif spec == "encoder":
        chosen = [layer for layer in layers if layer.block in ("input", "middle")]
    elif spec == "coarse":
        coarse = sorted({layer.downscale for layer in layers}, reverse=True)[:2]
        chosen = [
            layer
            for layer in layers
            if layer.block == "middle" or (layer.block == "output" and layer.downscale in coarse)
        ]
    else:
        by_name = {layer.name: layer for layer in layers}
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(
                f"unknown cross-attention layer(s) {unknown}; this model has {sorted(by_name)} "
                f"(or use a preset: {', '.join(LAYER_PRESETS)})"
            )
        chosen = [by_name[n] for n in names]
    if not chosen:
        raise ValueError(f"layer selection {spec!r} matches no cross-attention layer of this model")
    return chosen


def _unet_order(layer: CrossAttentionLayer):
    return ({"input": 0, "middle": 1, "output": 2}.get(layer.block, 3), layer.block_id, layer.index)


def layer_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int, int]:
    """(h, w, downscale) of a layer whose image sequence has ``tokens`` positions, for a latent of
    size ``latent_hw``: stride-2 convolutions with padding 1 give ceil(h / 2) at each level."""
    h, w = latent_hw
    downscale = 1
    while h * w > tokens:
        h, w, downscale = math.ceil(h / 2), math.ceil(w / 2), downscale * 2
    if h * w != tokens:
        raise ValueError(f"{tokens} attention positions do not tile a latent of {latent_hw}")
    return h, w, downscale


class AttentionCaptured(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a store made with ``stop_when_complete`` once every wanted layer has recorded."""


class AttentionStore:
    """Collects the cross-attention maps of one forward pass.

    ``record`` takes probabilities ``[batch * heads, positions, tokens]`` (softmax over tokens) and
    keeps their head mean as ``[batch, tokens, h, w]``; ``chunks`` labels the equal batch chunks as
    COND (0) or UNCOND (1), as ComfyUI's ``cond_or_uncond`` does. A layer that records again in the
    same forward pass (a host that split the batch to fit in memory) appends to its maps.

    With ``stop_when_complete``, recording the last wanted layer raises ``AttentionCaptured`` so
    that the forward pass stops there: an energy on the maps needs nothing after them, and the
    rest of the UNet (for SD, the expensive high-resolution decoder) is neither run nor
    back-propagated through.
    """

    def __init__(
        self,
        layers: Collection[CrossAttentionLayer] | None = None,
        stop_when_complete: bool = False,
        keep_queries: bool = False,
    ):
        if stop_when_complete and layers is None:
            raise ValueError("stop_when_complete needs an explicit list of layers")
        self.stop_when_complete = stop_when_complete
        self.keep_queries = keep_queries
        self._wanted = None if layers is None else {layer.patch_key for layer in layers}
        self.maps_by_layer: dict[CrossAttentionLayer, torch.Tensor] = {}
        self.labels_by_layer: dict[CrossAttentionLayer, torch.Tensor] = {}
        self.queries_by_layer: dict[CrossAttentionLayer, torch.Tensor] = {}

    def wants(self, patch_key: tuple[str, int, int]) -> bool:
        return self._wanted is None or tuple(patch_key) in self._wanted

    def record(
        self,
        patch_key: tuple[str, int, int],
        probs: torch.Tensor,
        heads: int,
        latent_hw: tuple[int, int],
        chunks: list[int] | None = None,
        queries: torch.Tensor | None = None,
    ) -> None:
        """``queries`` ``[batch, positions, dim]``: the layer's image queries, kept if the store
        keeps them."""
        batch_heads, positions, tokens = probs.shape
        batch = batch_heads // heads
        h, w, downscale = layer_grid(latent_hw, positions)
        maps = probs.reshape(batch, heads, h, w, tokens).mean(1).permute(0, 3, 1, 2)
        chunks = chunks or [COND]
        labels = torch.tensor(chunks).repeat_interleave(batch // len(chunks))
        layer = CrossAttentionLayer(patch_key[0], int(patch_key[1]), int(patch_key[2]), downscale)
        if self.keep_queries:
            if queries is None:
                raise ValueError(f"layer {layer.name} recorded no queries into a store that keeps them")
            grid = queries.reshape(batch, h, w, -1).permute(0, 3, 1, 2)
            if layer in self.queries_by_layer:
                grid = torch.cat([self.queries_by_layer[layer], grid])
            self.queries_by_layer[layer] = grid
        if layer in self.maps_by_layer:
            maps = torch.cat([self.maps_by_layer[layer], maps])
            labels = torch.cat([self.labels_by_layer[layer], labels])
        self.maps_by_layer[layer] = maps
        self.labels_by_layer[layer] = labels
        if self.stop_when_complete and len(self.maps_by_layer) == len(self._wanted):
            raise AttentionCaptured

    @property
    def layers(self) -> list[CrossAttentionLayer]:
        return sorted(self.maps_by_layer, key=_unet_order)

    def maps(self, size: tuple[int, int] | None = None, which: int = COND) -> torch.Tensor:
        """Layer-averaged maps ``[batch, tokens, H, W]`` of the COND or UNCOND rows, every layer
        resized bilinearly to ``size`` (default: the finest captured grid) before averaging."""
        if not self.maps_by_layer:
            raise RuntimeError("no cross-attention was captured: the forward pass reached no selected layer")
        if size is None:
            size = max((m.shape[-2:] for m in self.maps_by_layer.values()), key=lambda s: s[0] * s[1])
        total = None
        for layer in self.layers:
            maps = self.maps_by_layer[layer][self.labels_by_layer[layer] == which]
            if tuple(maps.shape[-2:]) != tuple(size):
                maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
            total = maps if total is None else total + maps
        return total / len(self.maps_by_layer)

    def query_features(self, size: tuple[int, int], which: int = COND, skip_coarsest: bool = True):
        """Dense image features ``[batch, dim, *size]``: each kept layer's queries of the COND (or
        UNCOND) rows, unit length per position, resized bilinearly to ``size`` and concatenated,
        unit length again. With ``skip_coarsest``, layers at the coarsest captured grid are left out
        when there are finer ones (on the demo model the middle block's 4x4 queries matched an object
        across images in 0.48 of cases, every finer layer in 0.89-1.0)."""
        if not self.queries_by_layer:
            raise RuntimeError("no queries were kept: make the store with keep_queries=True")
        layers = self.layers
        coarsest = max(layer.downscale for layer in layers)
        if skip_coarsest and any(layer.downscale < coarsest for layer in layers):
            layers = [layer for layer in layers if layer.downscale < coarsest]
        parts = []
        for layer in layers:
            grid = self.queries_by_layer[layer][self.labels_by_layer[layer] == which].float()
            grid = F.interpolate(
                F.normalize(grid, dim=1), size=tuple(size), mode="bilinear", align_corners=False
            )
            parts.append(F.normalize(grid, dim=1))
        return F.normalize(torch.cat(parts, 1), dim=1)


def max_normalised(maps: torch.Tensor) -> torch.Tensor:
    """Each ``[h, w]`` map of ``[..., h, w]`` divided by its maximum."""
    return maps / maps.amax((-1, -2), keepdim=True).clamp_min(1e-8)


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, heads: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) in float32 for ``q [B, N, heads*d]`` and ``k [B, T, heads*d]``
    -> ``[B*heads, N, T]``; ``bias`` ``[B, N, T]`` (the same for every head) or None."""
    b, n, inner = q.shape
    d = inner // heads
    q = q.float().reshape(b, n, heads, d).transpose(1, 2)
    k = k.float().reshape(b, -1, heads, d).transpose(1, 2)
    sim = (q @ k.transpose(-1, -2)) * d**-0.5
    if bias is not None:
        sim = sim + bias.to(sim)[:, None]
    return sim.softmax(-1).reshape(b * heads, n, -1)


def attend(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Apply ``[B*heads, N, T]`` probabilities to ``v [B, T, heads*d]`` -> ``[B, N, heads*d]``."""
    b, t, inner = v.shape
    d = inner // heads
    v = v.reshape(b, t, heads, d).transpose(1, 2).to(probs.dtype)
    out = probs.reshape(b, heads, -1, t) @ v
    return out.transpose(1, 2).reshape(b, -1, inner)
