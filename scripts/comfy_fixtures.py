"""Random-weight checkpoints shaped like real ones, built from ComfyUI's own classes into the cache.

They let the tests run the stock loaders (CheckpointLoaderSimple detects them as SD1.5) without
any download. Built once per cache (a few seconds); never committed. Must run after ComfyUI is on
``sys.path`` (see ``comfy_headless.HeadlessComfyUI``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURE_VERSION = 1

# The smallest UNet that ComfyUI's model detection still reads as SD1.5: one level, one res block.
SD15_TINY_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SD_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@torch.no_grad()
def seeded_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic, well-scaled init (ComfyUI's ops skip weight init): 1/sqrt(fan_in) weights,
    unit norms, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        elif leaf == "bias" or "bias" in leaf:
            p.zero_()
        elif leaf in ("weight", "gamma", "scale"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


def _clip_l_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import comfy.sd1_clip
    from transformers import CLIPTextConfig, CLIPTextModel

    config_path = Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")
    config = CLIPTextConfig(**json.loads(config_path.read_text()))
    model = seeded_init(CLIPTextModel(config), seed)
    # transformers 5 drops the `text_model.` prefix that ComfyUI's SD1 keys carry
    sd = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in model.state_dict().items()}
    # embeddings and positions as in a trained CLIP: small, not 1/sqrt(fan_in) of a 1-D "fan"
    gen = torch.Generator().manual_seed(seed + 1)
    for key in (
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
    ):
        sd[key] = torch.randn(sd[key].shape, generator=gen) * 0.02
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def build_random_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """An SD1.5-shaped checkpoint with random weights (fp16 safetensors, ~470 MB)."""
    import comfy.ops
    import safetensors.torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    path = Path(path)
    if path.is_file():
        return path
    unet = seeded_init(UNetModel(**SD15_TINY_UNET, operations=comfy.ops.disable_weight_init), seed)
    vae = seeded_init(AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4), seed + 2)
    sd = {}
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    sd.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in _clip_l_state_dict(seed + 3).items()})
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(sd, str(tmp), metadata={"fixture_version": str(FIXTURE_VERSION)})
    tmp.rename(path)
    return path
