"""Generation with the demo model through real ComfyUI (the code path users run), for benchmarks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from scripts.comfy_headless import HeadlessComfyUI, quiet_comfy_logging


class DemoModelSession:
    """ComfyUI in-process with the demo model loaded; generates and probes batches of captions."""

    def __init__(
        self, weights_dir: Path | None = None, comfy: HeadlessComfyUI | None = None, device: str = "cpu"
    ):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        quiet_comfy_logging()
        base = Path(tempfile.mkdtemp(prefix="bench_comfy_"))
        self.comfy = comfy or HeadlessComfyUI(base_dir=base, cpu=device == "cpu")
        from spatial_control.models.comfy_builder import load_demo_model
        from spatial_control.models.demo_model import WEIGHTS_DIR

        self.embeddings_dir = self.comfy.base_dir / "models" / "embeddings"  # read by embedding:<name>
        with torch.inference_mode():
            self.model, self.clip, self.vae = load_demo_model(
                weights_dir or WEIGHTS_DIR, [str(self.embeddings_dir)]
            )
        self.nodes = self.comfy.node_classes

    def encode(self, captions: list[str]):
        with torch.inference_mode():
            tensors = [self.clip.encode_from_tokens_scheduled(self.clip.tokenize(c))[0][0] for c in captions]
        return [[torch.cat(tensors), {}]]

    def generate(
        self, captions: list[str], seed: int, steps: int = 20, cfg: float = 4.0, model=None,
        positive=None, sampler: str = "dpmpp_2m", scheduler: str = "karras",
    ) -> tuple[np.ndarray, torch.Tensor]:  # fmt: skip
        """Images ``[n, 128, 128, 3]`` uint8 and their latents for one batch of captions."""
        with torch.inference_mode():
            positive = positive or self.encode(captions)
            negative = self.encode([""])
            latent = self.nodes["EmptyLatentImage"]().generate(128, 128, len(captions))[0]
            (out,) = self.nodes["KSampler"]().sample(
                model or self.model, seed, steps, cfg, sampler, scheduler, positive, negative, latent
            )
            images = self.nodes["VAEDecode"]().decode(self.vae, out)[0]
        return (images.numpy() * 255).round().astype(np.uint8), out["samples"]

    def attention(self, captions: list[str], latents: torch.Tensor, noise_level: float = 0.5, seed: int = 0):
        """Cross-attention maps ``[n, 77, h, w]`` (all layers) of each caption on its latent."""
        from spatial_control.guidance.backends.comfy import cross_attention_layers, probe_attention

        with torch.inference_mode():
            layers = cross_attention_layers(self.model)
            return probe_attention(self.model, self.encode(captions), latents, layers, noise_level, seed)

    def token_positions(self, caption: str, phrases: list[str]) -> dict[str, list[int]]:
        from spatial_control.guidance.backends.comfy import locate_phrases

        return locate_phrases(self.clip, caption, phrases)
