"""SpaText's trained path on the demo model: the text-to-image-embedding prior and the widened UNet.

SpaText (Avrahami et al., CVPR 2023, arXiv:2211.14305): the spatio-textual map (one image embedding
of the pack's small CLIP per pixel of a region, ``guidance/spatio_textual_map.py``) is concatenated
to the noisy latent, so the UNet gets ``latent + embed_dim`` input channels; the new input weights
start at zero, so the widened UNet begins as exactly the demo UNet. At inference the region texts'
CLIP text embeddings become image embeddings through :class:`EmbeddingPrior` (SpaText uses DALL-E 2's
prior; a small residual MLP on the shape world, trained by ``scripts.train_spatext_prior``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_io
from .demo_model import WEIGHTS_DIR

PRIOR_FILE = "spatext_prior.safetensors"
UNET_FILE = "spatext_unet.safetensors"
REBUILD = {
    PRIOR_FILE: "python -m scripts.train_spatext_prior",
    UNET_FILE: "python -m scripts.train_spatext_unet",
}


@dataclass(frozen=True)
class PriorConfig:
    dim: int = 128
    hidden: int = 512
    blocks: int = 2


class EmbeddingPrior(nn.Module):
    """Unit CLIP text embedding ``[N, dim]`` -> unit CLIP image embedding ``[N, dim]`` (residual MLP
    on top of the identity: the text embedding is already close to its image's)."""

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        self.config = config or PriorConfig()
        d, h = self.config.dim, self.config.hidden
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
            for _ in range(self.config.blocks)
        )
        for block in self.blocks:  # starts as the identity
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        x = text_embeddings
        for block in self.blocks:
            x = x + block(x)
        return F.normalize(x, dim=-1)


def save_prior(prior: EmbeddingPrior, path: Path, record: dict) -> None:
    weights_io.write_weights(
        prior.state_dict(), Path(path), {"config": asdict(prior.config), "training": record}
    )


def load_prior(path: Path = WEIGHTS_DIR / PRIOR_FILE) -> EmbeddingPrior:
    prior, _ = weights_io.load_module(
        Path(path), "SpaText prior", REBUILD[PRIOR_FILE],
        lambda meta: EmbeddingPrior(PriorConfig(**meta["config"])),
    )  # fmt: skip
    return prior.eval().requires_grad_(False)


def widen_unet_input(unet, extra_channels: int):
    """A copy of the diffusers ``UNet2DConditionModel`` ``unet`` with ``extra_channels`` more input
    channels whose ``conv_in`` weights are zero: its output equals the original's for any map."""
    from diffusers import UNet2DConditionModel

    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + extra_channels
    wide = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    extra = weight.new_zeros(weight.shape[0], extra_channels, *weight.shape[2:])
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    wide.load_state_dict(state)
    return wide.to(weight.device, weight.dtype)


def map_channels(unet_config: dict, latent_channels: int = 4) -> int:
    """How many spatio-textual channels a widened UNet's config takes (0: a plain UNet)."""
    return int(unet_config["in_channels"]) - latent_channels


class RegionTextEncoder:
    """What the trained path embeds each region's text with: the pack's small CLIP text encoder, then
    the prior into its image-embedding space (``encode(texts) -> [R, dim]`` unit vectors)."""

    def __init__(self, clip, prior: EmbeddingPrior, tokenizer, use_prior: bool = True):
        self.clip, self.prior, self.tokenizer, self.use_prior = clip, prior, tokenizer, use_prior

    @property
    def dim(self) -> int:
        return self.prior.config.dim

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        from .text_encoder import tokenize

        text = self.clip.encode_text(tokenize(self.tokenizer, list(texts)))
        return self.prior(text) if self.use_prior else text
