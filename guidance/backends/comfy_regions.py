"""ComfyUI glue of the region proposer: the user's MODEL, CLIP and VAE as the masked editor in its loop."""

from __future__ import annotations

import comfy.samplers
import torch

from ..masked_edit import masked_edit
from ..regions import resize_mask
from .comfy import loaded_denoiser_conds


def encode_prompt(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def edit_schedule(model_patcher, steps: int, strength: float, scheduler: str = "karras") -> torch.Tensor:
    """The last ``steps + 1`` sigmas of a ``steps / strength`` step schedule, as KSampler's denoise does."""
    total = max(steps, int(round(steps / strength)))
    sampling = model_patcher.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(sampling, scheduler, total)[-(steps + 1) :].float()


class ComfyEditor:
    """``edit(masks [n, 1, H, W]) -> images [n, 3, H, W]``: ``image`` regenerated inside each mask with
    ``prompt`` by masked denoising (``masked_edit``) and decoded by the VAE. One noise draw from
    ``seed`` serves every mask, so candidates differ only by their region."""

    def __init__(self, model_patcher, clip, vae, image: torch.Tensor, prompt: str, negative: str = "",
                 steps: int = 12, strength: float = 0.85, cfg: float = 4.0, seed: int = 0,
                 chunk: int = 16, on_chunk=None):  # fmt: skip
        self.model_patcher, self.vae, self.image = model_patcher, vae, image
        self.positive, self.negative = encode_prompt(clip, prompt), encode_prompt(clip, negative)
        self.steps, self.strength, self.cfg, self.seed, self.chunk = steps, strength, cfg, seed, chunk
        self.on_chunk = on_chunk
        self.samples = vae.encode(image[..., :3])

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        patcher = self.model_patcher
        samples = self.samples
        latent_hw = tuple(samples.shape[-2:])
        sigmas = edit_schedule(patcher, self.steps, self.strength)
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(self.seed))
        conditionings = {"positive": self.positive, "negative": self.negative}
        outputs = []
        with loaded_denoiser_conds(patcher, conditionings, samples.shape, self.seed) as (denoiser, conds):
            device = patcher.load_device
            source = patcher.model.process_latent_in(samples.to(device, torch.float32))
            for start in range(0, len(masks), self.chunk):
                part = masks[start : start + self.chunk, 0]
                latent_masks = torch.stack([resize_mask(m, latent_hw) for m in part])[:, None].to(device)
                x = masked_edit(
                    denoiser, source, latent_masks, conds["positive"], conds["negative"],
                    sigmas.to(device), self.cfg, noise.to(device),
                )  # fmt: skip
                outputs.append(patcher.model.process_latent_out(x).cpu())
                if self.on_chunk is not None:
                    self.on_chunk(min(start + self.chunk, len(masks)), len(masks))
        images = self.vae.decode(torch.cat(outputs))
        return images.reshape(-1, *images.shape[-3:])[..., :3].movedim(-1, 1).float().cpu()


def propose_edit_region(
    model_patcher, clip, vae, image: torch.Tensor, request, vit, scorer, settings, prompt: str,
    steps: int, strength: float, cfg: float, seed: int, budget_seconds=None, on_step=None,
):  # fmt: skip
    """Run the region proposer on an IMAGE ``[1, H, W, 3]``: anchors and features from ``vit`` (an
    ``AnchorViT``) at its own resolution, the user's MODEL / CLIP / VAE as the editor of ``prompt``."""
    from ...models.region_generator import RegionGenerator
    from ..anchors import image_anchors
    from ..region_proposer import propose_region

    pixels = image[..., :3].movedim(-1, 1).float().cpu()
    with torch.inference_mode(False), torch.no_grad():
        points, features = image_anchors(vit, pixels, settings.anchors, settings.anchor_map)
    candidates = settings.anchors * len(settings.box_sizes)
    total = candidates + settings.iterations

    def progress(done: int) -> None:
        if on_step is not None:
            on_step(done, total)

    editor = ComfyEditor(
        model_patcher, clip, vae, image, prompt, steps=steps, strength=strength, cfg=cfg, seed=seed,
        on_chunk=lambda done, _: progress(done),
    )  # fmt: skip

    def edit(masks: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return editor(masks).clone()

    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = RegionGenerator(features.shape[1], candidates=candidates)
        return propose_region(
            pixels,
            points[0],
            features.clone(),
            edit,
            scorer,
            generator,
            request,
            settings,
            budget_seconds,
            lambda done, _: progress(candidates + done - 1),
        )
