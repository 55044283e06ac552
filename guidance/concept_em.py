"""Concept tokens and their masks from a few images, by alternating optimisation (EM).

Visual Concept-driven Image Generation with Text-to-Image Diffusion Model (Rahman et al.,
arXiv 2402.11487), with the losses of Break-A-Scene (Avrahami et al., SIGGRAPH Asia 2023):
one new token embedding per concept; the M-step optimises the embeddings (Adam, nothing else
trained) on a masked diffusion loss over random noise levels plus an attention loss (MSE between
each token's max-normalised cross-attention and its current mask), on a random subset of the
concepts at each step (Break-A-Scene's union sampling); the E-step re-estimates each concept's
mask in every image from its token's attention, averaged over several noise levels and
normalised across the concepts and the background; where the images' object proposals are known,
the attention, the concept's likeness elsewhere and the denoiser's likelihood of it pick one
object per concept, whose extent the mask takes. The first masks are the user's, or those of a
co-segmentation on the denoiser's own features (``concept_discovery.py``: the objects the images
share); with ``discover`` off and no masks, the first M-step is textual inversion on the whole
images. E-steps stop when the masks are stable (the remaining steps fit the tokens to them) or the
time budget is spent.

Written against the ``Denoiser`` protocol and a ``ConceptText`` (the backend's text encoder,
differentiable in the new embeddings), so it runs on ComfyUI MODELs and diffusers UNets alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from .attention_store import AttentionStore, CrossAttentionLayer, max_normalised
from .concept_discovery import (
    connected_components,
    contrast_saliency,
    object_proposals,
    on_objects,
    shared_maps,
)
from .latent_gradient import Denoiser, gradients_enabled
from .mask_refinement import CRFSettings, attention_probabilities_with_background, dense_crf, otsu_levels
from .regions import resize_mask

Words = list  # prompt pieces: text and concept indices, e.g. ["a", 0, "and a", 1]


class ConceptText(Protocol):
    """A text encoder with ``count`` placeholder tokens whose input embeddings are free.

    ``initial_embeddings(word, count, vectors)``: per sub-encoder key (``clip_l``, ``clip_g``, ...) a
    ``[count, vectors, dim]`` tensor, every row the input embedding of ``word`` (one token).
    ``encode(words, embeddings)``: the denoiser's cond for a prompt of text pieces and concept
    indices, with each concept index replaced by its ``vectors`` tokens, differentiable in
    ``embeddings``, and the conditioning positions of each concept index.
    """

    def initial_embeddings(self, word: str, count: int, vectors: int = 1) -> dict[str, torch.Tensor]: ...

    def encode(
        self, words: Words, embeddings: dict[str, torch.Tensor]
    ) -> tuple[object, dict[int, list[int]]]: ...


@dataclass(frozen=True)
class ConceptEMSettings:
    warmup_steps: int = 600  # the first M-step: on the first masks (or the whole images, without)
    rounds: int = 3  # masked M-steps after it; an E-step follows every M-step
    steps_per_round: int = 150
    vectors: int = 2  # tokens per concept (multi-vector textual inversion); 2 found more than 1 or 4
    learning_rate: float = 1e-2
    attention_weight: float = 1.0  # Break-A-Scene's lambda is 0.01; here 1.0 kept the masks (train sets)
    use_masks: bool = True  # False: textual inversion (whole-image loss, no attention loss)
    refine_masks: bool = True  # False: masks from the first attention pass only
    discover: bool = True  # first masks by co-segmentation on the denoiser's features (no user masks)
    discovery_noise_level: float = 0.2  # the features are read from the images noised this much
    discovery_draws: int = 2  # noise draws the features are averaged over
    background_level: float | None = None  # fixed level in [0, 1]; None: each map's Otsu level
    attention_power: float = 1.0  # < 1 flattens the max-normalised maps before the labelling
    one_component: bool = True  # keep only each mask's part that holds its attention's peak
    on_objects: bool = True  # E-step: each concept's attention kept on one of the image's objects
    appearance_temperature: float = 0.05  # ... chosen by attention x likeness to the concept elsewhere
    fill_objects: bool = True  # ... and the mask takes that object's extent (the attention only picks it)
    likelihood_temperature: float | None = 0.05  # ... and x the denoiser's likelihood of it; None: off
    likelihood_draws: int = 2  # noise draws per probe noise level for that likelihood
    crf: CRFSettings | None = CRFSettings()  # sharpens the masks to the image's edges; None: off
    probe_noise_levels: tuple[float, ...] = (0.3, 0.5, 0.7)  # fractions of the schedule (1 = noise)
    stable_iou: float = 0.95  # stop when every mask overlaps its previous estimate this much
    init_noise: float = 0.1  # seeded noise on the initial rows (x the embedding's norm), breaks symmetry


@dataclass
class ConceptEMResult:
    embeddings: dict[str, torch.Tensor]  # key -> [concepts, dim], detached
    masks: torch.Tensor  # [images, concepts, H, W] in {0, 1} at image resolution
    attention: torch.Tensor  # [images, concepts, H, W] normalised attention of the last E-step
    first_masks: torch.Tensor | None  # the masks of the first M-step: given or discovered (None: none)
    rounds: int
    stopped: str  # "stable" (E-steps ended, every step trained), "rounds" or "budget" (time)
    history: list[dict] = field(default_factory=list)


def concept_words(concepts: Sequence[int]) -> Words:
    """``["a", 0]``, ``["a", 0, "and a", 1]``, ``["a", 0, ", a", 1, "and a", 2]``, ..."""
    words: Words = []
    for i, c in enumerate(concepts):
        words += ["a" if i == 0 else "and a" if i == len(concepts) - 1 else ", a", int(c)]
    return words


def noise_level_sigma(sigmas: torch.Tensor, level: float) -> torch.Tensor:
    """The schedule's sigma at ``level`` of the way from least (0) to most noise (1)."""
    ordered = sigmas.flatten().sort().values
    return ordered[round(float(level) * (len(ordered) - 1))]


def estimate_masks(
    attention: torch.Tensor,
    images: torch.Tensor,
    settings: ConceptEMSettings,
    objects=None,
    previous=None,
    evidence=None,
) -> torch.Tensor:
    """E-step: ``[n, k, H, W]`` max-normalised attention -> binary masks. Each pixel goes to the
    concept whose attention is highest above its map's background level, or to the background
    where none reaches it; with ``settings.crf`` the labels are refined on ``images``
    ``[n, 3, H, W]``; with ``settings.one_component`` each mask keeps only its connected part that
    holds the attention's peak (a concept is one object in an image; the rest are other objects
    its token also attends to a little). Given ``objects`` (``object_proposals`` of each image),
    each concept's attention is first kept on one object: the one that holds its peak and, given
    the ``previous`` masks, looks like the concept in the other images, times the ``evidence``
    (``ConceptEM.object_likelihoods``) where given (``on_objects``)."""
    s = settings
    if objects is not None:
        attention = on_objects(
            attention, objects, previous, s.appearance_temperature, s.fill_objects, evidence
        )
    temperature = s.crf.temperature if s.crf is not None else 0.05
    scores = attention.clamp_min(0) ** s.attention_power
    level = s.background_level
    if level is None:  # each map's own split into object and rest, whatever its peakiness
        scores, level = scores - otsu_levels(scores)[..., None, None], 0.0
    probabilities = attention_probabilities_with_background(scores, level, temperature)
    if s.crf is not None:
        probabilities = dense_crf(probabilities, images.to(probabilities), s.crf)
    winner = probabilities.argmax(1)
    masks = torch.stack([(winner == c) for c in range(attention.shape[1])], 1).float()
    return peak_components(masks, attention) if s.one_component else masks


def peak_components(masks: torch.Tensor, attention: torch.Tensor, work_size: int = 128) -> torch.Tensor:
    """``masks`` ``[n, k, H, W]`` with only each map's connected part that holds its highest
    ``attention`` kept (the peak, not the most mass: a large object that the token attends to
    weakly would outweigh the small one it attends to most). Parts are found on a copy at most
    ``work_size`` pixels across."""
    h, w = masks.shape[-2:]
    scale = min(1.0, work_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(masks.float(), size=size, mode="area") >= 0.5
    weight = F.interpolate(attention.float().to(masks.device), size=size, mode="area")
    kept = torch.zeros_like(small)
    for i in range(masks.shape[0]):
        for c in range(masks.shape[1]):
            labels = connected_components(small[i, c])
            if int(labels.max()) <= 1:
                kept[i, c] = small[i, c]
                continue
            peak = torch.full((int(labels.max()) + 1,), -1.0).scatter_reduce(
                0, labels.flatten().cpu(), weight[i, c].flatten().cpu(), "amax"
            )
            kept[i, c] = labels == int(peak[1:].argmax()) + 1
    back = F.interpolate(kept.float(), size=(h, w), mode="nearest")
    return masks * back


def concept_maps(maps: torch.Tensor, positions: dict[int, list[int]], concepts) -> torch.Tensor:
    """``[n, len(concepts), h, w]``: the mean of each concept's token maps in ``[n, tokens, h, w]``."""
    return torch.stack([maps[:, positions[c]].float().mean(1) for c in concepts], 1)


def mask_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks ``[..., H, W]`` (1 where both are empty)."""
    inter = (a * b).flatten(-2).sum(-1)
    union = ((a + b) > 0).float().flatten(-2).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


class ConceptEM:
    """One EM run over ``latents`` ``[n, c, h, w]`` (the images in the denoiser's latent space)."""

    def __init__(
        self,
        denoiser: Denoiser,
        text: ConceptText,
        layers: Sequence[CrossAttentionLayer],
        sigmas: torch.Tensor,
        settings: ConceptEMSettings = ConceptEMSettings(),
    ):
        self.denoiser, self.text, self.layers = denoiser, text, list(layers)
        self.sigmas = sigmas.flatten().sort().values
        self.settings = settings

    def run(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        count: int,
        init_word: str,
        seed: int = 0,
        initial_masks: torch.Tensor | None = None,
        budget_seconds: float | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> ConceptEMResult:
        """Learn ``count`` concepts from ``latents`` and the ``images`` ``[n, 3, H, W]`` (in [0, 1])
        they encode, whose resolution the masks take. ``initial_masks`` ``[n, count, H, W]`` replace
        the first, whole-image round's masks; ``on_step(done, total)`` is called after every optimiser step
        (progress, cancellation); past ``budget_seconds`` the run ends with a last E-step (none once the
        masks are stable: their last estimate stands)."""
        with torch.inference_mode(False):  # hosts run under inference mode: work on normal copies
            self.sigmas = self.sigmas.clone()
            x0 = latents.detach().float().clone()
            masks = None if initial_masks is None else (initial_masks.detach().clone() > 0.5).float()
            images = images.detach().float().clone()
            return self._run(x0, images, count, init_word, seed, masks, budget_seconds, on_step)

    def _run(self, x0, images, count, init_word, seed, masks, budget_seconds, on_step):
        s = self.settings
        generator = torch.Generator().manual_seed(int(seed))
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        embeddings = self._initial(init_word, count, generator)
        objects, discover = None, masks is None and s.discover
        if s.use_masks and (discover or s.on_objects):
            features = self.dense_features(x0, embeddings, count, generator)
            saliency = contrast_saliency(features)
            proposals = object_proposals(features, saliency)
            if discover:
                maps = F.interpolate(
                    shared_maps(proposals, saliency, count),
                    size=tuple(images.shape[-2:]),
                    mode="bilinear",
                    align_corners=False,
                )
                masks = estimate_masks(max_normalised(maps.clamp_min(0)), images.cpu(), s).to(x0.device)
            if s.on_objects:
                objects = proposals
        first_masks = None if masks is None else masks.detach().cpu().clone()
        optimiser = torch.optim.Adam(list(embeddings.values()), lr=s.learning_rate)
        total, done, history, stopped = s.warmup_steps + s.rounds * s.steps_per_round, 0, [], "rounds"
        attention, out_of_time = None, False
        for round_index in range(s.rounds + 1):
            losses = []
            for _ in range(s.steps_per_round if round_index else s.warmup_steps):
                losses.append(
                    self._m_step(x0, embeddings, masks if s.use_masks else None, optimiser, generator)
                )
                done += 1
                if on_step is not None:
                    on_step(done, total)
                if deadline is not None and time.monotonic() > deadline:
                    out_of_time = True
                    break
            if stopped == "stable":
                # Tokens and masks agree: no more E-steps; the rest of the steps fit the tokens to the
                # masks (stopping here left the tokens under-trained: fewer good "a <concept>" images).
                history.append({"round": round_index, "loss": sum(losses) / len(losses), "mask_iou": None})
                if out_of_time:
                    break
                continue
            probes = [torch.randn(x0.shape, generator=generator).to(x0.device) for _ in s.probe_noise_levels]
            attention = self.attention(x0, embeddings, count, images.shape[-2:], probes)
            evidence = None
            if objects is not None and s.likelihood_temperature is not None:
                evidence = self.object_likelihoods(x0, embeddings, count, init_word, objects, generator)
            estimate = estimate_masks(attention, images, s, objects, masks, evidence)
            change = None if masks is None else float(mask_overlap(estimate, masks).min())
            history.append({"round": round_index, "loss": sum(losses) / len(losses), "mask_iou": change})
            if round_index == 0 or s.refine_masks:  # the first attention pass always replaces them
                masks = estimate
            if out_of_time:
                stopped = "budget"
                break
            if change is not None and change >= s.stable_iou and s.refine_masks:
                stopped = "stable"
        return ConceptEMResult(
            {k: v.detach().clone() for k, v in embeddings.items()},
            masks,
            attention,
            first_masks,
            len(history),
            stopped,
            history,
        )

    def _initial(self, word: str, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = {}
        for key, start in self.text.initial_embeddings(word, count, self.settings.vectors).items():
            start = start.detach().float()
            scale = float(start.norm(dim=-1).mean().clamp_min(1e-3)) / start.shape[-1] ** 0.5
            noise = torch.randn(start.shape, generator=generator) * scale * self.settings.init_noise
            rows[key] = (start + noise.to(start.device)).requires_grad_(True)
        return rows

    def _m_step(self, x0, embeddings, masks, optimiser, generator) -> float:
        s = self.settings
        n, k = x0.shape[0], next(iter(embeddings.values())).shape[0]
        size = int(torch.randint(1, k + 1, (1,), generator=generator))
        subset = torch.randperm(k, generator=generator)[:size].tolist()
        index = torch.randint(0, len(self.sigmas), (n,), generator=generator)
        sigma = self.sigmas[index].to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        with gradients_enabled():
            cond, positions = self.text.encode(concept_words(subset), embeddings)
            x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
            store = AttentionStore(self.layers) if masks is not None else None
            error = self._noise_error(x, sigma, cond, noise, store)[:, None]
            if masks is None:
                loss = error.mean()
            else:
                target = resize_mask(masks[:, subset].to(x0.device), tuple(x0.shape[-2:]))
                union = target.amax(1, keepdim=True)
                loss = (error * union).sum() / union.sum().clamp_min(1e-6)
                maps = store.maps(size=tuple(x0.shape[-2:]))
                tokens = max_normalised(concept_maps(maps, positions, subset))
                loss = loss + s.attention_weight * (tokens - target).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return float(loss.detach())

    def dense_features(self, x0, embeddings, count: int, generator) -> torch.Tensor:
        """Unit features ``[n, dim, h, w]`` of the images, as the denoiser sees them: its
        cross-attention queries on the images noised to ``discovery_noise_level`` (averaged over
        ``discovery_draws`` noises), for co-segmentation (``concept_discovery``)."""
        s = self.settings
        sigma = noise_level_sigma(self.sigmas, s.discovery_noise_level).to(x0.device)
        features = 0
        with gradients_enabled(), torch.no_grad():
            cond, _ = self.text.encode(concept_words(range(count)), embeddings)
            for _ in range(s.discovery_draws):
                noise = torch.randn(x0.shape, generator=generator).to(x0.device)
                store = AttentionStore(self.layers, keep_queries=True)
                self.denoiser.denoise(x0 + sigma * noise, sigma.reshape(1), cond, store)
                features = features + store.query_features(tuple(x0.shape[-2:]))
        return F.normalize(features, dim=1).cpu()

    def object_likelihoods(self, x0, embeddings, count: int, init_word: str, objects, generator) -> list:
        """Per image ``[count, m]``, a softmax over its ``m`` object proposals (``objects``, on the latent
        grid) at ``likelihood_temperature``: how much the prompt "a <concept>" lowers the denoising
        error on the proposal against "a <init_word>", averaged over its positions and over
        ``likelihood_draws`` noises at each probe noise level. The diffusion model's own evidence of
        which object is the concept (a diffusion classifier: Li et al., ICCV 2023), beside its
        attention, which mixes up objects that share a colour."""
        s = self.settings
        gain = 0
        with gradients_enabled(), torch.no_grad():
            neutral, _ = self.text.encode([f"a {init_word}"], embeddings)
            conds = [self.text.encode(concept_words([c]), embeddings)[0] for c in range(count)]
            for level in s.probe_noise_levels:
                sigma = noise_level_sigma(self.sigmas, level).to(x0.device)
                for _ in range(s.likelihood_draws):
                    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
                    x = x0 + sigma * noise
                    base = self._noise_error(x, sigma.reshape(1), neutral, noise)
                    errors = [self._noise_error(x, sigma.reshape(1), c, noise) for c in conds]
                    gain = gain + torch.stack([base - e for e in errors], 1)
        gain = gain.cpu() / (len(s.probe_noise_levels) * s.likelihood_draws)  # [n, count, h, w]
        out = []
        for image, (masks, _) in enumerate(objects):
            area = masks.flatten(1).sum(-1).clamp_min(1e-6)
            mean = torch.einsum("khw,mhw->km", gain[image], masks.to(gain)) / area
            out.append((mean / s.likelihood_temperature).softmax(-1))
        return out

    def _noise_error(self, x, sigma, cond, noise, store=None) -> torch.Tensor:
        """``[n, h, w]``: the squared error of the denoiser's noise prediction at ``sigma`` (``[n]`` or
        ``[1]``), mean over channels (the M-step's diffusion loss per position)."""
        denoised = self.denoiser.denoise(x, sigma, cond, store).float()
        return ((x - denoised) / sigma.reshape(-1, 1, 1, 1) - noise).pow(2).mean(1)

    def attention(self, x0, embeddings, count: int, image_size, probes: list[torch.Tensor]) -> torch.Tensor:
        """Max-normalised attention ``[n, count, H, W]`` of every concept token on every image,
        averaged over the probe noise levels (``probes``: one noise per level), for the prompt
        naming all the concepts."""
        with gradients_enabled(), torch.no_grad():
            cond, positions = self.text.encode(concept_words(range(count)), embeddings)
            total = 0
            for level, noise in zip(self.settings.probe_noise_levels, probes, strict=True):
                sigma = noise_level_sigma(self.sigmas, level).to(x0.device)
                store = AttentionStore(self.layers, stop_when_complete=False)
                self.denoiser.denoise(x0 + sigma * noise, sigma.reshape(1), cond, store)
                maps = store.maps(size=tuple(x0.shape[-2:]))
                total = total + concept_maps(maps, positions, range(count))
        maps = F.interpolate(total, size=tuple(image_size), mode="bilinear", align_corners=False)
        return max_normalised(maps.clamp_min(0)).cpu()
