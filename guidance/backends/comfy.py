"""ComfyUI backend: attention capture through attn2 patches and a differentiable denoiser.

The only module of ``guidance/`` that touches ComfyUI internals. Capture patches are installed on
a ``model.clone()`` and wrap whatever attn2 replace patch was already there (IPAdapter, attention
couple, ...); they do nothing unless a call passes an ``AttentionStore`` through
``transformer_options``, so no state lives on the (cached, shared) MODEL between runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..attention_masking import RegionAttentionMask
from ..attention_store import COND, AttentionStore, CrossAttentionLayer, attend, attention_probabilities
from ..errors import (
    PhraseNotFoundError,
    RegionShapeError,
    RepeatedPhraseError,
    ShortConditioningError,
    UnknownTokenizerError,
    UnsupportedModelError,
    blame_input,
)
from ..schedule import step_fraction
from ..tokens import STOP_WORDS, find_token_positions, shared_token_positions

STORE_KEY = "spatial_control_attention_store"


class RegionCrossAttention:
    """The pack's attn2 replace patch: records per-token maps into the call's AttentionStore and,
    with a ``masking``, masks the attention towards region tokens outside their regions in its
    steps (``RegionAttentionMask``). The store sees the unmasked maps: an energy reads where the
    model would put a phrase, the image is made from the masked attention.

    ``inner`` is the patch that held the slot before (IPAdapter, attention couple, ...): it computes
    the output whenever no masking is active. Masking computes the attention itself, so it is never
    installed over a foreign patch (``install_attention_masking`` refuses).
    """

    def __init__(
        self,
        patch_key: tuple[str, int, int],
        inner=None,
        masking: RegionAttentionMask | None = None,
        owner: str = "RegionAttentionMasking",
        mask_input: str = "regions",
    ):
        self.patch_key = patch_key
        self.inner = inner
        self.masking = masking
        self.owner = owner  # the node that asked for the masking, named in errors
        self.mask_input = mask_input  # its input the masks came from, named in errors

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        store: AttentionStore | None = extra_options.get(STORE_KEY)
        recording = store is not None and store.wants(self.patch_key)
        bias = self._masking_bias(q, k, extra_options)
        if not recording and bias is None:
            return self._attention(q, k, v, extra_options)
        probs = None
        if recording:  # the store gets the unmasked maps
            probs = attention_probabilities(q, k, heads)
            latent_hw = tuple(extra_options["original_shape"][-2:])
            chunks = extra_options.get("cond_or_uncond")
            store.record(self.patch_key, probs, heads, latent_hw, chunks=chunks, queries=q)
        if bias is not None:
            return attend(attention_probabilities(q, k, heads, bias), v, heads).to(q.dtype)
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return attend(probs, v, heads).to(q.dtype)

    def _masking_bias(self, q, k, extra_options) -> torch.Tensor | None:
        if self.masking is None:
            return None
        sigma = extra_options.get("sigmas")
        fraction = None if sigma is None else step_fraction(sigma, extra_options.get("sample_sigmas"))
        if not self.masking.active(fraction):
            return None
        chunks = extra_options.get("cond_or_uncond") or [COND]
        if COND not in chunks:  # an unconditional pass (the host ran it apart): nothing to mask
            return None
        labels = torch.tensor(chunks).repeat_interleave(q.shape[0] // len(chunks))
        latent_hw = tuple(extra_options["original_shape"][-2:])
        with (
            blame_input(self.owner, self.mask_input, RegionShapeError),
            blame_input(self.owner, "positive", ShortConditioningError),
        ):
            return self.masking.batch_bias(q.shape[1], latent_hw, k.shape[1], labels).to(q.device)

    def _attention(self, q, k, v, extra_options):
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision")
        )


def diffusion_unet(model_patcher) -> UNetModel:
    """The model's UNet, or an error saying why this MODEL cannot be guided."""
    diffusion_model = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if diffusion_model is None:
        raise UnsupportedModelError(
            "expected a diffusion MODEL (from a checkpoint or UNet loader), "
            f"got {type(model_patcher).__name__}"
        )
    if not isinstance(diffusion_model, UNetModel):
        raise UnsupportedModelError(
            f"the {type(diffusion_model).__name__} architecture is not supported (cross-attention guidance "
            "needs an SD1.x/SD2.x/SDXL-style UNet); connect such a model"
        )
    return diffusion_model


def cross_attention_layers(model_patcher) -> list[CrossAttentionLayer]:
    """Every text cross-attention layer of the MODEL's UNet, with its downscale factor."""
    unet = diffusion_unet(model_patcher)
    config = getattr(model_patcher.model, "model_config", None)
    if config is not None and config.unet_config.get("context_dim") is None:
        raise UnsupportedModelError(
            "this MODEL's UNet has no text cross-attention (context_dim is None); "
            "connect a text-to-image model"
        )
    layers: list[CrossAttentionLayer] = []
    downscale = 1

    def collect(block_name: str, block_id: int, block) -> None:
        for module in block:
            for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                if (
                    getattr(transformer, "attn2", None) is not None
                    and not transformer.switch_temporal_ca_to_sa
                ):
                    layers.append(CrossAttentionLayer(block_name, block_id, index, downscale))

    for block_id, block in enumerate(unet.input_blocks):
        collect("input", block_id, block)
        if any(isinstance(m, Downsample) for m in block):
            downscale *= 2
    collect("middle", 0, unet.middle_block)
    for block_id, block in enumerate(unet.output_blocks):
        collect("output", block_id, block)
        if any(isinstance(m, Upsample) for m in block):
            downscale //= 2
    if not layers:
        raise UnsupportedModelError(
            "this MODEL has no text cross-attention layers; connect a text-to-image model"
        )
    return layers


def _attn2_slots(model_patcher) -> dict:
    return (
        model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    )


def install_attention_capture(model_patcher, layers: list[CrossAttentionLayer]):
    """Return ``model_patcher.clone()`` with capture patches on ``layers``, wrapping existing patches."""
    m = model_patcher.clone()
    replace = _attn2_slots(m)
    for layer in layers:
        key = layer.patch_key
        inner = replace.get(key, replace.get(key[:2]))
        if isinstance(inner, RegionCrossAttention):
            continue
        m.set_model_attn2_replace(RegionCrossAttention(key, inner), layer.block, layer.block_id, layer.index)
    return m


def install_attention_masking(
    model_patcher,
    layers: list[CrossAttentionLayer],
    masking: RegionAttentionMask,
    owner: str = "RegionAttentionMasking",
    mask_input: str = "regions",
):
    """Return ``model_patcher.clone()`` whose ``layers`` mask region tokens outside their regions;
    errors at sampling time name ``owner`` and its input ``mask_input``.

    A slot that holds the pack's own patch keeps its capture and gains the masking (the latest
    masking replaces an earlier one); a slot held by another pack's patch is refused, since masking
    computes the attention itself and would silently drop that patch's effect."""
    m = model_patcher.clone()
    replace = _attn2_slots(m)
    for layer in layers:
        key = layer.patch_key
        held = replace.get(key, replace.get(key[:2]))
        if held is not None and not isinstance(held, RegionCrossAttention):
            raise UnsupportedModelError(
                f"cross-attention layer {layer.name} already has another node's attention patch "
                f"({type(held).__name__}); attention masking computes that attention itself and would drop "
                "it: connect the MODEL before that node, or turn attention masking off"
            )
        inner = held.inner if held is not None else None
        patch = RegionCrossAttention(key, inner, masking, owner, mask_input)
        m.set_model_attn2_replace(patch, layer.block, layer.block_id, layer.index)
    return m


def make_weights_differentiable(module: torch.nn.Module) -> None:
    """Replace inference-mode parameters/buffers by normal tensors with the same values.

    ComfyUI loads (and re-patches, e.g. for LoRAs) weights inside ``torch.inference_mode``;
    autograd cannot save such tensors for backward. Values, devices and dtypes are unchanged, so
    this is invisible to every other user of the model. ``ComfyDenoiser`` re-checks at the first
    gradient pass of each sampling step, because the ModelPatcher may swap weights between runs.
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                if p.is_inference():
                    setattr(sub, name, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
            for name, b in list(sub.named_buffers(recurse=False)):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.detach().clone()


class ComfyDenoiser:
    """Differentiable x0-prediction of a loaded ComfyUI model (``comfy.model_base.BaseModel``).

    ``cond`` is a list of processed cond dicts, as a CFGGuider holds them in ``conds["positive"]``;
    masks, areas, ControlNets and other patches of the MODEL apply exactly as in sampling.
    """

    def __init__(self, model, model_options: dict):
        self.model = model
        self.model_options = model_options
        self._weights_checked = False  # a denoiser lives for one sampling step: check once, when used

    def denoise(self, x, sigma, cond, store: AttentionStore | None = None):
        options = comfy.model_patcher.create_model_options_clone(self.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        transformer_options[STORE_KEY] = store
        options["transformer_options"] = transformer_options
        if not self._weights_checked:
            make_weights_differentiable(self.model.diffusion_model)
            self._weights_checked = True
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        return comfy.samplers.calc_cond_batch(self.model, [cond], x, sigma, options)[0]


GUIDANCE_WRAPPER_KEY = "spatial_control_latent_guidance"
START_CANDIDATES_KEY = "spatial_control_start_candidates"


class LatentGuidanceWrapper:
    """PREDICT_NOISE wrapper that lets ``guide`` move the latent before each model evaluation.

    ``guide(denoiser, x, sigma, cond, sample_sigmas, alternatives, start_is_noise)`` returns the
    updated latent (or None to leave it). The update is written into the sampler's own latent
    tensor, so first-order samplers (Euler, DDIM, DPM++ 2M, ...) continue from the moved latent, as
    backward guidance requires; the model then predicts for the moved latent. At the first step
    of a run with start candidates, ``alternatives`` holds the other starting latents that
    ``StartCandidatesWrapper`` put in this run's options (else it is None); ``start_is_noise`` says
    whether the run started from pure noise (``starts_from_noise``). Holds no per-run state.
    """

    def __init__(self, guide, owner: str = "RegionBackwardGuidance"):
        self.guide = guide
        self.owner = owner  # the node that set up the guidance, named in errors

    def __call__(self, executor, x, timestep, model_options, seed):
        guider = executor.class_obj
        positive = guider.conds.get("positive")
        transformer_options = model_options.get("transformer_options", {})
        sample_sigmas = transformer_options.get("sample_sigmas")
        if positive:
            alternatives = transformer_options.get(START_CANDIDATES_KEY)
            first_step = sample_sigmas is not None and float(timestep.flatten()[0]) == float(sample_sigmas[0])
            with blame_input(self.owner, "regions", RegionShapeError):
                moved = self.guide(
                    ComfyDenoiser(guider.inner_model, model_options),
                    x,
                    timestep,
                    positive,
                    sample_sigmas,
                    alternatives=alternatives if first_step else None,
                    start_is_noise=starts_from_noise(guider, sample_sigmas),
                )
            if moved is not None:
                x.copy_(moved.to(x.dtype))
        return executor(x, timestep, model_options, seed)


def starts_from_noise(guider, sample_sigmas: torch.Tensor | None) -> bool:
    """Whether the schedule starts at the model's maximum noise level: ComfyUI's own test
    (``Sampler.max_denoise``) for scaling the start as pure noise. Not with denoise < 1 or a sampler
    continuing another's steps, whose start holds an image."""
    return sample_sigmas is not None and comfy.samplers.Sampler().max_denoise(guider, sample_sigmas)


class StartCandidatesWrapper:
    """SAMPLER_SAMPLE wrapper that makes ``count - 1`` other starting latents for the guide's first
    step: the sampler's own noise scaling of seeded noise (the run's seed) on the run's latent,
    so they are starts the sampler could have drawn itself. They travel in this run's options."""

    def __init__(self, count: int):
        self.count = count

    def __call__(self, executor, guider, sigmas, extra_args, callback, noise, latent_image, *rest):
        max_denoise = getattr(executor.class_obj, "max_denoise", None)
        if max_denoise is None:
            sampler = type(executor.class_obj).__name__
            raise UnsupportedModelError(f"start candidates need a ComfyUI k-diffusion sampler, not {sampler}")
        generator = torch.Generator().manual_seed(int(extra_args.get("seed") or 0) + 1)
        shape = (self.count - 1, *noise.shape)
        others = torch.randn(shape, generator=generator, dtype=torch.float32).to(noise.device, noise.dtype)
        latent = latent_image.to(noise.device).expand(shape)
        model_sampling = guider.inner_model.model_sampling
        starts = model_sampling.noise_scaling(
            sigmas[0], others.flatten(0, 1), latent.flatten(0, 1), max_denoise(guider, sigmas)
        ).reshape(shape)
        options = dict(extra_args["model_options"])
        transformer_options = {**options.get("transformer_options", {}), START_CANDIDATES_KEY: starts}
        extra_args = {**extra_args, "model_options": {**options, "transformer_options": transformer_options}}
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, *rest)


def with_latent_guidance(
    model_patcher, guide, start_candidates: int = 1, owner: str = "RegionBackwardGuidance"
):
    """``model_patcher.clone()`` whose sampling runs ``guide`` before every model evaluation, with
    ``start_candidates - 1`` other starts offered at the first step; errors name ``owner``."""
    m = model_patcher.clone()
    m.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
        GUIDANCE_WRAPPER_KEY,
        LatentGuidanceWrapper(guide, owner),
    )
    if start_candidates > 1:
        m.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
            GUIDANCE_WRAPPER_KEY,
            StartCandidatesWrapper(start_candidates),
        )
    return m


@contextmanager
def loaded_denoiser(model_patcher, conditioning, latent_shape, seed: int = 0):
    """For use outside a sampler: load the MODEL, process CONDITIONING for a latent of
    ``latent_shape`` and yield ``(denoiser, cond)``; unloads additional models afterwards."""
    with loaded_denoiser_conds(model_patcher, {"positive": conditioning}, latent_shape, seed) as (
        denoiser,
        conds,
    ):
        yield denoiser, conds["positive"]


@contextmanager
def loaded_denoiser_conds(model_patcher, conditionings: dict, latent_shape, seed: int = 0):
    """``loaded_denoiser`` for several CONDITIONINGs (e.g. ``{"positive": ..., "negative": ...}``):
    yields ``(denoiser, {name: cond})``."""
    conds = {name: comfy.sampler_helpers.convert_cond(c) for name, c in conditionings.items()}
    model_options = model_patcher.model_options
    real_model, conds, loaded = comfy.sampler_helpers.prepare_sampling(
        model_patcher, latent_shape, conds, model_options
    )
    try:
        model_patcher.pre_run()
        device = model_patcher.load_device
        noise = torch.zeros(latent_shape, device=device)
        conds = comfy.samplers.process_conds(real_model, noise, conds, device, None, None, seed)
        yield ComfyDenoiser(real_model, model_options), conds
    finally:
        model_patcher.cleanup()
        comfy.sampler_helpers.cleanup_models(conds, loaded)


def probe_attention(
    model_patcher, conditioning, samples, layers, noise_level: float, seed: int
) -> torch.Tensor:
    """Cross-attention maps ``[batch, tokens, h, w]`` of ``layers`` for latent ``samples`` (as VAE
    Encode or a sampler gives them) noised to ``noise_level`` of the schedule (1 = pure noise)."""
    patched = install_attention_capture(model_patcher, layers)
    model_sampling = model_patcher.get_model_object("model_sampling")
    sigma = max(model_sampling.percent_to_sigma(1.0 - noise_level), float(model_sampling.sigma_min))
    with loaded_denoiser(patched, conditioning, samples.shape) as (denoiser, cond):
        x0 = model_patcher.model.process_latent_in(samples.to(model_patcher.load_device, torch.float32))
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
        sigma = torch.tensor([sigma], device=x0.device)
        store = AttentionStore(layers)
        denoiser.denoise(x0 + sigma * noise, sigma, cond, store)
    return store.maps().float().cpu()


def _clip_tokenizer(clip):
    """(key, SDTokenizer) of a CLIP-BPE text encoder of a ComfyUI CLIP, or a clear error."""
    tokenizer = getattr(clip, "tokenizer", None)
    for key in ("l", "g"):
        sd_tokenizer = getattr(tokenizer, f"clip_{key}", None)
        if sd_tokenizer is not None and hasattr(
            getattr(sd_tokenizer, "tokenizer", None), "convert_tokens_to_ids"
        ):
            return key, sd_tokenizer
    raise UnknownTokenizerError(
        f"the connected CLIP ({type(tokenizer).__name__}) has no CLIP-BPE tokenizer (clip_l / clip_g); "
        "connect the CLIP output of an SD1.x, SD2.x or SDXL checkpoint loader"
    )


def locate_phrases(
    clip, prompt: str, phrases: list[str], first_of_several: bool = False
) -> dict[str, list[int]]:
    """Conditioning token indices of each phrase in ``prompt``, as the CLIP text encoder sees it.
    A phrase that occurs several times is an error, unless ``first_of_several`` takes the first."""
    key, sd_tokenizer = _clip_tokenizer(clip)
    chunks = [
        [tok if isinstance(tok, int) else -1 for tok, *_ in chunk] for chunk in clip.tokenize(prompt)[key]
    ]
    positions = {}
    for phrase in phrases:
        ids = sd_tokenizer.tokenizer(phrase)["input_ids"][1:-1]
        try:
            positions[phrase] = find_token_positions(chunks, ids, first_of_several)
        except RepeatedPhraseError as err:
            raise RepeatedPhraseError(
                f"phrase {phrase!r}: {err} {prompt!r}; give each object its own words (e.g. 'large red "
                "circle' and 'small red circle') and use those as the phrases"
            ) from None
        except PhraseNotFoundError as err:
            raise PhraseNotFoundError(
                f"phrase {phrase!r} is not in the prompt {prompt!r} ({err}); "
                "write it in the prompt or change the phrase"
            ) from None
    return positions


def shared_word_positions(clip, prompt: str, texts: list[str]) -> list[list[int]]:
    """Per text, the conditioning indices of the prompt's tokens that the text also has (stop words
    and special tokens left out): where the global prompt names what a region's text describes."""
    key, sd_tokenizer = _clip_tokenizer(clip)
    chunks = [
        [tok if isinstance(tok, int) else -1 for tok, *_ in chunk] for chunk in clip.tokenize(prompt)[key]
    ]
    tokenizer = sd_tokenizer.tokenizer
    skip = {sd_tokenizer.start_token, sd_tokenizer.end_token, getattr(sd_tokenizer, "pad_token", None), -1}
    skip.update(i for word in STOP_WORDS for i in tokenizer(word)["input_ids"][1:-1])
    return [shared_token_positions(chunks, tokenizer(t)["input_ids"][1:-1], skip) for t in texts]


def prompt_text_tokens(clip, prompt: str) -> list[int]:
    """Conditioning indices of the prompt's own tokens: in each 77-token chunk, those after the start
    token and before the first end token (padding differs between CLIP-L and CLIP-G)."""
    key, sd_tokenizer = _clip_tokenizer(clip)
    positions = []
    for c, chunk in enumerate(clip.tokenize(prompt)[key]):
        for i, (tok, *_) in enumerate(chunk):
            if isinstance(tok, int) and tok == sd_tokenizer.end_token:
                break
            if i == 0 and isinstance(tok, int) and tok == sd_tokenizer.start_token:
                continue
            positions.append(c * len(chunk) + i)
    return positions
