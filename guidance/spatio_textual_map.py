"""SpaText's spatio-textual representation: at every pixel of a region, the CLIP embedding of its text.

SpaText (Avrahami et al., CVPR 2023, arXiv:2211.14305, section 3.1): a sparse map with one CLIP
embedding channel vector per pixel; in training the embedding is CLIP's image embedding of the
segment (the pixels of that object alone), at inference a prior maps the region's text embedding
to an image embedding. Pixels of no region are zero, which is also the null condition that
classifier-free guidance drops the map to. The same functions build the map in training and in the
node, so the two cannot drift apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Segments are shown to the image encoder on this plain grey, every other pixel replaced.
SEGMENT_FILL = 0.5


def isolate_segments(image: torch.Tensor, masks: torch.Tensor, fill: float = SEGMENT_FILL) -> torch.Tensor:
    """``[R, 3, H, W]``: ``image`` (``[3, H, W]`` in [0, 1]) with only region r's pixels kept, the rest
    ``fill``; ``masks`` ``[R, H, W]`` soft or hard in [0, 1] (soft edges blend into the fill)."""
    if image.ndim != 3 or masks.ndim != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"image [3, H, W] and masks [R, H, W] of one size, got {tuple(image.shape)} "
                         f"and {tuple(masks.shape)}")  # fmt: skip
    m = masks.to(image.dtype)[:, None]
    return image[None] * m + fill * (1 - m)


def embedding_scale(dim: int) -> float:
    """Unit embeddings times ``sqrt(dim)``: each channel of the map then has unit mean square inside
    a region, the range the UNet's input convolution sees for the latent channels."""
    return math.sqrt(dim)


def spatio_textual_map(masks: torch.Tensor, embeddings: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[D, h, w]``: sum over regions of the region's mask, area-resized to ``size``, times its unit
    embedding scaled by :func:`embedding_scale` (``masks [R, H, W]``, ``embeddings [R, D]``).

    Area resizing is linear, so building the map at full resolution and resizing it gives the same.
    An empty region list gives the all-zero (null) map.
    """
    if masks.ndim != 3 or embeddings.ndim != 2 or len(masks) != len(embeddings):
        raise ValueError(f"masks [R, H, W] and embeddings [R, D] with the same R, got {tuple(masks.shape)} "
                         f"and {tuple(embeddings.shape)}")  # fmt: skip
    dim = embeddings.shape[1]
    if len(masks) == 0:
        return embeddings.new_zeros(dim, *size)
    small = F.interpolate(masks[:, None].to(embeddings.dtype), size=size, mode="area")[:, 0]
    unit = F.normalize(embeddings, dim=-1) * embedding_scale(dim)
    return torch.einsum("rhw,rd->dhw", small, unit)


def resize_map(st_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map ``[B, D, H, W]`` area-resized (down) or bilinearly resized (up) to ``size``."""
    if tuple(st_map.shape[-2:]) == tuple(size):
        return st_map
    down = st_map.shape[-2] >= size[0] and st_map.shape[-1] >= size[1]
    if down:
        return F.interpolate(st_map, size=size, mode="area")
    return F.interpolate(st_map, size=size, mode="bilinear", align_corners=False)
