"""The demo model's UNet: a small SD-style ``UNet2DConditionModel`` inside ComfyUI's UNet family.

4x16x16 latents (128x128 images through the f8 autoencoder). Levels at 16x16, 8x8 and 4x4 with
cross-attention at 16x16 and 8x8 (1.5M parameters). Measured on one CPU thread, batch 128,
channels_last: 42 samples/s; widths (64, 96, 128) ran at 22 samples/s, and replacing the 16x16
self-attention by cross-attention (ComfyUI's ``disable_self_attentions``) did not speed it up.
Widths are multiples of 32 (ComfyUI's GroupNorm(32)).
"""

from __future__ import annotations

DEMO_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 64,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}


def build_demo_unet(config: dict | None = None, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**(config or DEMO_UNET_CONFIG))
