"""The self-supervised ViT whose [CLS] attention gives RegionProposer its anchor points.

Learnable Regions (arXiv 2311.16432) takes anchors from a DINO ViT-B/8's last-layer [CLS] attention. The
pack ships a narrow ViT built with timm and trained DINO-style on shape-world images
(``python -m scripts.train_anchor_vit``); :func:`load_vit_folder` loads a real ViT (a timm folder or a
transformers ViT/DINOv2 folder with safetensors) from local files instead.

Weights are fp16 safetensors with the config and training record in a JSON beside them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import weights_io

REBUILD_COMMAND = "python -m scripts.train_anchor_vit"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "anchor_vit.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AnchorViTConfig:
    """A timm ``VisionTransformer`` without classifier; ``img_size`` is the size of its position grid
    (other sizes are interpolated: ``dynamic_img_size``)."""

    img_size: int = 128
    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))


class AnchorViT(nn.Module):
    """A ViT that maps images in [0, 1] (``[B, 3, H, W]``, H and W multiples of the patch size) to its
    last-layer [CLS] attention over the patch grid."""

    def __init__(self, backbone: nn.Module, patch_size: int, mean, std):
        super().__init__()
        self.backbone, self.patch_size = backbone, patch_size
        self.image_size = int(backbone.patch_embed.img_size[0])  # the resolution it was trained at
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The [CLS] token's features (``[B, dim]``), as trained."""
        return self.backbone(self.normalise(images))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H / patch, W / patch]``: the last layer's (normed) patch tokens."""
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        tokens = self.backbone.forward_features(self.normalise(images))[:, -h * w :]
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, h, w)

    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, heads, H / patch, W / patch]``: each head's attention from [CLS] to the patches in the
        last block (softmax over all tokens, so register tokens and [CLS] itself take their share)."""
        vit = self.backbone
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = vit.patch_drop(vit._pos_embed(vit.patch_embed(self.normalise(images))))
        x = vit.norm_pre(x)
        for block in vit.blocks[:-1]:
            x = block(x)
        attn = vit.blocks[-1].attn
        b, n, c = x.shape
        qkv = attn.qkv(vit.blocks[-1].norm1(x)).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        weights = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]
        return weights[:, :, -h * w :].reshape(b, attn.num_heads, h, w)


def build_anchor_vit(config: AnchorViTConfig, seed: int | None = None) -> AnchorViT:
    from timm.models.vision_transformer import VisionTransformer

    if seed is not None:
        torch.manual_seed(seed)
    backbone = VisionTransformer(
        img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
        depth=config.depth, num_heads=config.num_heads, num_classes=0, dynamic_img_size=True,
    )  # fmt: skip
    return AnchorViT(backbone, config.patch_size, config.mean, config.std)


def save_anchor_vit(model: AnchorViT, config: AnchorViTConfig, path: Path, training: dict) -> None:
    weights_io.write_weights(
        model.backbone.state_dict(), path, {"config": asdict(config), "training": training}
    )


def load_anchor_vit(path: Path = DEFAULT_WEIGHTS) -> tuple[AnchorViT, dict]:
    """The pack's shape-world ViT (eval mode) and its JSON record."""

    def build(meta: dict) -> nn.Module:
        return build_anchor_vit(AnchorViTConfig(**meta["config"])).backbone

    backbone, meta = weights_io.load_module(path, "anchor ViT", REBUILD_COMMAND, build)
    config = AnchorViTConfig(**meta["config"])
    return AnchorViT(backbone, config.patch_size, config.mean, config.std).eval(), meta


def load_vit_folder(folder: Path) -> AnchorViT:
    """A real ViT from local files: a timm folder (``config.json`` with ``architecture`` and
    ``model.safetensors``, as on the Hugging Face hub) or a transformers ViT / DINOv2 folder.
    Raises FileNotFoundError / ValueError saying what is missing."""
    folder = Path(folder)
    config_file, weights = folder / "config.json", folder / "model.safetensors"
    missing = [p.name for p in (config_file, weights) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"ViT folder {folder} lacks {' and '.join(missing)}; give a folder holding a timm or "
            "transformers ViT saved as config.json + model.safetensors (e.g. facebook/dino-vitb8)"
        )
    config = json.loads(config_file.read_text())
    if "architecture" in config:
        return _timm_folder(config, weights)
    if config.get("model_type") in ("vit", "dinov2"):
        return _transformers_folder(folder, config)
    raise ValueError(
        f"ViT folder {folder}: config.json is neither a timm config (no 'architecture') nor a transformers "
        f"ViT/DINOv2 config (model_type {config.get('model_type')!r})"
    )


def _timm_folder(config: dict, weights: Path) -> AnchorViT:
    import timm
    from safetensors.torch import load_file

    backbone = timm.create_model(
        config["architecture"], pretrained=False, num_classes=0, dynamic_img_size=True,
        **config.get("model_args", {}),
    )  # fmt: skip
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("head.")}
    backbone.load_state_dict(state, strict=False)
    pretrained = config.get("pretrained_cfg", {})
    patch = backbone.patch_embed.patch_size[0]
    mean, std = pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD)
    return AnchorViT(backbone, patch, mean, std).eval()


class _TransformersViT(nn.Module):
    """A transformers ViT / DINOv2 behind the :class:`AnchorViT` interface."""

    def __init__(self, model: nn.Module, patch_size: int, mean, std):
        super().__init__()
        self.model, self.patch_size = model, patch_size
        self.image_size = int(model.config.image_size)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        return self.model(pixel_values=(images - self.mean) / self.std).last_hidden_state[:, 0]

    def patch_features(self, images):
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        tokens = self.model(pixel_values=(images - self.mean) / self.std).last_hidden_state[:, -h * w :]
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, h, w)

    def cls_attention(self, images):
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        out = self.model(pixel_values=(images - self.mean) / self.std, output_attentions=True)
        weights = out.attentions[-1][:, :, 0]
        return weights[:, :, -h * w :].reshape(images.shape[0], -1, h, w)


def _transformers_folder(folder: Path, config: dict) -> AnchorViT:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager", add_pooling_layer=False)
    return _TransformersViT(model.eval(), int(config["patch_size"]), IMAGENET_MEAN, IMAGENET_STD).eval()
