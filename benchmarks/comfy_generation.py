"""Generation with the demo model through real ComfyUI (the code path users run), for benchmarks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from scripts.comfy_headless import HeadlessComfyUI, quiet_comfy_logging

# Region Backward Guidance's defaults before re-layout of the prediction became one (2026-12-07): the
# region edits' recolour and reshape figures were measured with these, so that benchmark and its
# workflows keep them until re-measured (docs/region_guidance.md, seventh round). Text-grounded
# generation, additions and painted regions were re-measured with the defaults.
GUIDANCE_AS_MEASURED = {"relayout_at": 0.0, "threshold": 0.1}


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

    def guided_model(self, prompt: str, phrase: str, mask: torch.Tensor, box, **settings):
        """The MODEL patched by RegionBackwardGuidance (its defaults, but for ``settings``, e.g.
        ``target_scale=0.6``) to put ``phrase`` in the region (``mask [1, H, W]``, fractional ``box``)."""
        from spatial_control.guidance.regions import Region

        node = self.nodes["RegionBackwardGuidance"]
        defaults = {
            i.id: i.default
            for i in node.define_schema().inputs
            if i.id != "prompt" and getattr(i, "default", None) is not None
        }
        region = Region(phrase, mask[0], 1.0, tuple(box))
        return node.execute(self.model, self.clip, (region,), prompt, **(defaults | settings)).result[0]

    def masked_generation(
        self, image: torch.Tensor, box, prompt: str, phrase: str | None, denoise: float, seed: int,
        area=None, negative: str = "", **guidance,
    ) -> np.ndarray:  # fmt: skip
        """Stock inpainting in a fractional ``area`` (default: ``box``) of ``image [1, H, W, 3]``: VAEEncode,
        SetLatentNoiseMask, KSampler (20 steps DPM++ 2M Karras, CFG 4, ``negative`` prompt) with the model
        guided by RegionBackwardGuidance to put ``phrase`` in ``box`` (unguided without a phrase),
        VAEDecode, ImageCompositeMasked into the original: uint8 ``[H, W, 3]``. ``guidance``:
        RegionBackwardGuidance settings other than its defaults."""
        from spatial_control.guidance.regions import box_mask

        nodes = self.nodes
        h, w = image.shape[1:3]
        mask = box_mask(area or box, h, w)[None]
        with torch.inference_mode():
            model = self.model
            if phrase:
                model = self.guided_model(prompt, phrase, box_mask(box, h, w)[None], box, **guidance)
            (latent,) = nodes["VAEEncode"]().encode(self.vae, image)
            (latent,) = nodes["SetLatentNoiseMask"]().set_mask(latent, mask)
            positive, negative = self.encode([prompt]), self.encode([negative])
            (out,) = nodes["KSampler"]().sample(
                model, seed, 20, 4.0, "dpmpp_2m", "karras", positive, negative, latent, denoise=denoise
            )
            (decoded,) = nodes["VAEDecode"]().decode(self.vae, out)
            (composite,) = nodes["ImageCompositeMasked"]().composite(image, decoded, 0, 0, False, mask)
        return (composite[0].numpy() * 255).round().astype(np.uint8)

    def grounded_generation(
        self, image: torch.Tensor, box, area, prompt: str, phrase: str, seed: int, harmonise: float = 0.3,
        **guidance,
    ) -> np.ndarray:  # fmt: skip
        """Text-grounded object generation in two stock passes, the model guided by RegionBackwardGuidance
        to put ``phrase`` in the fractional ``box``: KSampler from an empty latent lays the object out;
        LatentCompositeMasked pastes the ``area`` around it into the image's latent, SetLatentNoiseMask +
        KSampler (denoise ``harmonise``) blends it in; VAEDecode, ImageCompositeMasked keeps every pixel
        outside ``area``. ``guidance``: RegionBackwardGuidance settings other than its defaults. uint8
        ``[H, W, 3]``."""
        from spatial_control.guidance.regions import box_mask

        nodes = self.nodes
        h, w = image.shape[1:3]
        mask = box_mask(area, h, w)[None]
        with torch.inference_mode():
            model = self.guided_model(prompt, phrase, box_mask(box, h, w)[None], box, **guidance)
            positive, negative = self.encode([prompt]), self.encode([""])
            (source,) = nodes["VAEEncode"]().encode(self.vae, image)
            empty = nodes["EmptyLatentImage"]().generate(w, h, 1)[0]
            sampler = nodes["KSampler"]()
            (layout,) = sampler.sample(model, seed, 20, 4.0, "dpmpp_2m", "karras", positive, negative, empty)
            (latent,) = nodes["LatentCompositeMasked"]().composite(source, layout, 0, 0, False, mask)
            (latent,) = nodes["SetLatentNoiseMask"]().set_mask(latent, mask)
            (out,) = sampler.sample(
                model, seed, 20, 4.0, "dpmpp_2m", "karras", positive, negative, latent, denoise=harmonise
            )
            (decoded,) = nodes["VAEDecode"]().decode(self.vae, out)
            (composite,) = nodes["ImageCompositeMasked"]().composite(image, decoded, 0, 0, False, mask)
        return (composite[0].numpy() * 255).round().astype(np.uint8)
