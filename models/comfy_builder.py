"""Turn a small diffusers-layout UNet into a standard ComfyUI MODEL, built from ComfyUI's classes.

ComfyUI's detection only knows registered model families, so a small SD-style UNet gets a
``supported_models_base.BASE`` subclass with a hand-written ``unet_config``: the resulting
``ModelPatcher`` is what CheckpointLoaderSimple would return for SD1.5, and every stock node,
sampler and attention patch works with it. Imports ComfyUI: use it from nodes and tests only.
"""

from __future__ import annotations

from collections.abc import Mapping

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import comfy.utils
import torch

from ..guidance.errors import NodeInputError
from ..guidance.spatio_textual_map import resize_map


def comfy_unet_config(config: Mapping) -> dict:
    """ComfyUI ``UNetModel`` kwargs for a diffusers ``UNet2DConditionModel`` config."""
    channels = list(config["block_out_channels"])
    levels = len(channels)
    per_level = config["layers_per_block"]
    per_level = [per_level] * levels if isinstance(per_level, int) else list(per_level)
    depth = config.get("transformer_layers_per_block", 1)
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    heads = config["attention_head_dim"]
    if not isinstance(heads, int):
        if len(set(heads)) != 1:
            raise ValueError("per-level head counts are not supported")
        heads = heads[0]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]][::-1]  # in input-level order
    if "CrossAttn" not in config.get("mid_block_type", "UNetMidBlock2DCrossAttn"):
        raise ValueError("a mid block without cross-attention is not supported")
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "model_channels": channels[0],
        "num_res_blocks": per_level,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [
            depth[lv] if down_attn[lv] else 0 for lv in range(levels) for _ in range(per_level[lv])
        ],
        "transformer_depth_output": [
            depth[lv] if up_attn[lv] else 0 for lv in range(levels) for _ in range(per_level[lv] + 1)
        ],
        "transformer_depth_middle": depth[-1],
        "use_spatial_transformer": True,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "legacy": False,
        "context_dim": config["cross_attention_dim"],
        "num_heads": heads,
        "num_head_channels": -1,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "disable_self_attentions": _disable_self_attentions(config, levels, per_level),
    }


def _disable_self_attentions(config: Mapping, levels: int, per_level: list[int]):
    only_cross = config.get("only_cross_attention", False)
    if isinstance(only_cross, bool):
        return None if not only_cross else [True] * levels
    return list(only_cross)


def diffusers_unet_to_comfy(state_dict: Mapping[str, torch.Tensor], unet_config: dict) -> dict:
    """Rename diffusers UNet keys to ComfyUI's; raises if a key has no ComfyUI name (the map also
    lists optional keys such as shortcut convolutions, so missing weights are caught at loading)."""
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    extra = sorted(set(state_dict) - set(mapping))
    if extra:
        raise ValueError(f"UNet keys do not match its config: unexpected {extra[:5]}")
    return {mapping[k]: v for k, v in state_dict.items()}


def make_latent_format(scale_factor: float, channels: int = 4, rgb_factors=None, rgb_bias=None):
    """A LatentFormat subclass (scale factor, channels, live-preview RGB factors)."""
    attrs = {"scale_factor": scale_factor, "latent_channels": channels}
    if rgb_factors is not None:
        attrs["latent_rgb_factors"] = [list(map(float, row)) for row in rgb_factors]
        attrs["latent_rgb_factors_bias"] = None if rgb_bias is None else list(map(float, rgb_bias))
    return type("SmallLatentFormat", (comfy.latent_formats.LatentFormat,), attrs)


# The conditioning key (CONDITIONING dict entry) that carries a spatio-textual map [1, D, H, W].
MAP_KEY = "spatio_textual_map"


class SpatioTextualModel(comfy.model_base.BaseModel):
    """A BaseModel whose UNet takes the latent and ``map_channels`` more input channels: SpaText's
    spatio-textual map, read from the conditioning's ``spatio_textual_map`` (resized to the latent)
    and passed as ComfyUI's concat conditioning; a conditioning without one (e.g. the negative, or a
    stock CLIPTextEncode) gets the null map, zeros, as in training."""

    map_channels = 0

    def concat_cond(self, **kwargs):
        noise = kwargs["noise"]
        st_map = kwargs.get(MAP_KEY)
        if st_map is None:
            return torch.zeros(noise.shape[0], self.map_channels, *noise.shape[-2:], device=kwargs["device"])
        if st_map.ndim != 4 or st_map.shape[1] != self.map_channels:
            raise NodeInputError(
                "SpatioTextualEncoder", "spatext_encoder", f"this MODEL reads a {self.map_channels}-channel "
                f"map but the conditioning carries one of shape {tuple(st_map.shape)}: use the "
                "spatext_encoder that came with this MODEL's loader",
            )  # fmt: skip
        (h, w), (lh, lw) = st_map.shape[-2:], noise.shape[-2:]
        if abs(w / h - lw / lh) > 0.01 * lw / lh:
            raise NodeInputError(
                "SpatioTextualEncoder", "segment_map", f"the map is {w}x{h} (aspect {w / h:.2f}) but "
                f"the latent being sampled is {lw}x{lh} (aspect {lw / lh:.2f}); paint the map at the image's "
                "width and height (any resolution of that aspect)",
            )  # fmt: skip
        st_map = resize_map(st_map.to(kwargs["device"], torch.float32), (lh, lw))
        return comfy.utils.resize_to_batch_size(st_map, noise.shape[0])


def spatio_textual_channels(model) -> int:
    """The spatio-textual map channels a MODEL takes (0: not a SpaText model)."""
    # by attribute, not isinstance: ComfyUI may import the pack a second time under its folder's name
    return int(getattr(getattr(model, "model", None), "map_channels", 0))


def build_comfy_model(
    diffusers_state_dict: Mapping[str, torch.Tensor],
    diffusers_config: Mapping,
    prediction: str = "eps",
    latent_format=None,
    sampling_settings: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
    map_channels: int = 0,
) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL (``ModelPatcher`` around a ``BaseModel``) for a small diffusers UNet;
    ``map_channels`` > 0: a :class:`SpatioTextualModel` whose UNet's input has that many channels
    beyond the latent's."""
    unet_config = comfy_unet_config(diffusers_config)
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[
        prediction
    ]
    settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    settings.update(sampling_settings or {})

    class SmallSD(comfy.supported_models_base.BASE):
        supported_inference_dtypes = [torch.float32, torch.float16, torch.bfloat16]
        memory_usage_factor = 1.0

        def model_type(self, state_dict, prefix=""):
            return model_type

        def get_model(self, state_dict, prefix="", device=None):
            if not map_channels:
                return super().get_model(state_dict, prefix, device)
            out = SpatioTextualModel(self, model_type=self.model_type(state_dict, prefix), device=device)
            out.map_channels = map_channels
            return out

    SmallSD.unet_config = unet_config
    SmallSD.unet_extra_config = {}
    SmallSD.sampling_settings = settings
    SmallSD.latent_format = latent_format or comfy.latent_formats.SD15

    model_config = SmallSD(unet_config)
    load_device = comfy.model_management.get_torch_device()
    manual_cast = comfy.model_management.unet_manual_cast(
        dtype, load_device, model_config.supported_inference_dtypes
    )
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    comfy_sd = diffusers_unet_to_comfy(diffusers_state_dict, unet_config)
    missing, unexpected = model.diffusion_model.load_state_dict(comfy_sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"UNet weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
    )


def build_comfy_clip(
    text_state_dict: Mapping[str, torch.Tensor], json_config: dict, embedding_directory=None
):
    """A ComfyUI CLIP (SD1 classes: SD1Tokenizer with the bundled CLIP BPE files, SD1ClipModel) for a
    small CLIP text transformer; ``text_state_dict`` has transformers keys with ``text_model.``."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    hidden = json_config["hidden_size"]

    class SmallTokenizer(comfy.sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 (ComfyUI's signature)
            super().__init__(
                embedding_directory=embedding_directory,
                tokenizer_data=tokenizer_data,
                tokenizer=lambda **kw: comfy.sd1_clip.SDTokenizer(embedding_size=hidden, **kw),
            )

    class SmallClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006
            super().__init__(
                device=device,
                dtype=dtype,
                model_options=model_options,
                clip_model=comfy.sd1_clip.SDClipModel,
                textmodel_json_config=dict(json_config),
                **kwargs,
            )

    target = comfy.supported_models_base.ClipTarget(SmallTokenizer, SmallClipModel)
    clip = comfy.sd.CLIP(
        target=target,
        embedding_directory=embedding_directory,
        model_options={"dtype": torch.float32},  # ComfyUI's CPU default (fp16) is 2e-3 off
    )
    state = {f"clip_l.transformer.{k}": v for k, v in text_state_dict.items()}
    # SD1 uses the hidden states, not the projected pooled output: identity projection, CLIP's scale
    state.setdefault("clip_l.transformer.text_projection.weight", torch.eye(hidden))
    state.setdefault("clip_l.logit_scale", torch.tensor(4.6052))
    missing, unexpected = clip.load_sd(state, full_model=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"text encoder weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return clip


# A placeholder config for ComfyUI's VAE constructor; the first stage is replaced right after.
_PLACEHOLDER_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1], "num_res_blocks": 0, "attn_resolutions": [], "dropout": 0.0,
}  # fmt: skip


def build_comfy_vae(autoencoder: torch.nn.Module, downscale: int = 8, latent_channels: int = 4):
    """A ComfyUI VAE whose first stage is ``autoencoder`` (``encode``/``decode`` on [-1, 1] images):
    stock VAEEncode/VAEDecode (tiled too) and latent nodes work with it."""
    import logging

    import comfy.model_management
    import comfy.sd

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the placeholder's empty state dict is reported as missing keys
    try:
        vae = comfy.sd.VAE(
            sd={}, config={"params": {"embed_dim": latent_channels, "ddconfig": _PLACEHOLDER_DDCONFIG}}
        )
    finally:
        root.setLevel(level)
    vae.first_stage_model = autoencoder.eval().requires_grad_(False).to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(
        vae.first_stage_model,
        load_device=vae.device,
        offload_device=comfy.model_management.vae_offload_device(),
    )
    vae.downscale_ratio = vae.upscale_ratio = downscale
    vae.latent_channels = latent_channels
    params = sum(p.numel() for p in autoencoder.parameters())
    # activation memory per output pixel, generous for a small convnet
    vae.memory_used_encode = lambda shape, dtype: (
        64 * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype)
    )
    vae.memory_used_decode = lambda shape, dtype: (
        64 * shape[2] * shape[3] * downscale**2 * comfy.model_management.dtype_size(dtype) + params * 4
    )
    return vae


def load_demo_model(weights_dir, embedding_directory=None, unet_file: str | None = None):
    """(MODEL, CLIP, VAE) of the shape-world demo model from its weights folder; ``unet_file``: another
    UNet of the same family (e.g. the spatio-textual UNet, whose extra input channels make the MODEL
    a :class:`SpatioTextualModel`)."""
    from pathlib import Path

    from .autoencoder import load_autoencoder
    from .demo_model import (
        AUTOENCODER_FILE,
        TEXT_ENCODER_FILE,
        UNET_FILE,
        load_demo_text_encoder_state,
        read_weights,
    )

    weights_dir = Path(weights_dir)
    unet_state, unet_meta = read_weights(weights_dir / (unet_file or UNET_FILE))
    text_state, text_config = load_demo_text_encoder_state(weights_dir / TEXT_ENCODER_FILE)
    _, ae_meta = read_weights(weights_dir / AUTOENCODER_FILE)
    autoencoder = load_autoencoder(weights_dir / AUTOENCODER_FILE)
    preview = unet_meta.get("latent_preview", {})
    latent_format = make_latent_format(
        scale_factor=1.0 / float(ae_meta["latent"]["std"]),
        channels=autoencoder.config.latent_channels,
        rgb_factors=preview.get("rgb_factors"),
        rgb_bias=preview.get("rgb_bias"),
    )
    channels = autoencoder.config.latent_channels
    model = build_comfy_model(
        unet_state, unet_meta["config"], prediction="v", latent_format=latent_format,
        map_channels=int(unet_meta["config"]["in_channels"]) - channels,
    )  # fmt: skip
    clip = build_comfy_clip(text_state, text_config.json_config(), embedding_directory)
    vae = build_comfy_vae(autoencoder, downscale=autoencoder.config.downscale_factor)
    return model, clip, vae
