"""Region backward guidance on an SDXL-shaped MODEL in real ComfyUI (random weights, tiny widths).

The MODEL is ComfyUI's own ``supported_models.SDXL`` / ``model_base.SDXL`` with a reduced UNet that
keeps SDXL's structure (linear projections in the transformers, 2048-d context, 2816-d ADM vector,
no attention at the first level, two transformer blocks per attention level), so the attention
patches, the ADM conditioning and the sampler run the SDXL code paths. Conditioning is built by
hand as SDXL's text encoders shape it; tokenization uses SDXL's real tokenizers (no weights needed).
"""

import types

import pytest
import torch

pytestmark = pytest.mark.comfyui

PROMPT = "a red circle and a blue square"
LATENT_SHAPE = (2, 4, 8, 8)  # 64 x 64 px, batch 2

# SDXL's UNet structure (supported_models.SDXL.unet_config) at toy widths: 32/64/128 channels,
# one res block per level, two transformer blocks at the two deeper levels and in the middle; with
# SDXL's 64 channels per head that is one head at 64 channels and two at 128.
SDXL_TINY_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 2, 2],
    "transformer_depth_output": [0, 0, 2, 2, 2, 2],
    "transformer_depth_middle": 2,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "context_dim": 2048,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


@pytest.fixture(scope="module")
def sdxl_model(comfy):
    """A ComfyUI MODEL of the SDXL family (``model_base.SDXL``) with seeded random weights, on the CPU."""
    import comfy.model_base as model_base
    import comfy.model_patcher as model_patcher
    import comfy.supported_models as supported_models

    from scripts.comfy_fixtures import seeded_init

    model_config = supported_models.SDXL(SDXL_TINY_UNET)  # adds SDXL's num_head_channels = 64
    model_config.set_inference_dtype(torch.float32, None)
    model = model_base.SDXL(model_config)
    seeded_init(model.diffusion_model, 0)
    cpu = torch.device("cpu")
    return model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _conditioning(seed: int) -> list:
    """CONDITIONING as SDXL's CLIP-L + CLIP-G encoder gives it: 77 x (768 + 1280) tokens, pooled CLIP-G."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, 77, 2048, generator=gen)
    pooled = torch.randn(1, 1280, generator=gen)
    size = {"width": 64, "height": 64, "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}
    return [[tokens, {"pooled_output": pooled, **size}]]


def _guide(layers, strength: float = 0.2, iterations: int = 1):
    from spatial_control.guidance.backward_guidance import BackwardGuidance
    from spatial_control.guidance.region_energies import EnergyWeights, RegionTarget
    from spatial_control.guidance.regions import box_mask

    targets = (
        RegionTarget((2, 3), box_mask((0.0, 0.0, 0.5, 0.5), 64, 64)),
        RegionTarget((6, 7), box_mask((0.5, 0.5, 1.0, 1.0), 64, 64)),
    )
    return BackwardGuidance(
        targets,
        tuple(layers),
        EnergyWeights(1.0, 0.5, 0.5),
        text_tokens=tuple(range(1, 8)),
        strength=strength,
        start_at=0.0,
        end_at=1.0,
        iterations=iterations,
        threshold=0.0,
    )


def _sample(comfy, model) -> torch.Tensor:
    latent = {"samples": torch.zeros(LATENT_SHAPE)}
    sampler = comfy.node_classes["KSampler"]()
    with torch.inference_mode():
        out = sampler.sample(model, 3, 3, 5.0, "euler", "normal", _conditioning(1), _conditioning(2), latent)
    return out[0]["samples"].clone()


def test_layers_of_an_sdxl_shaped_unet(sdxl_model):
    from spatial_control.guidance.attention_store import select_layers
    from spatial_control.guidance.backends.comfy import cross_attention_layers

    assert type(sdxl_model.model).__name__ == "SDXL"
    # the hand-built CONDITIONING carries what SDXL's ADM vector is made of
    assert sdxl_model.model.encode_adm(**_conditioning(0)[0][1]).shape == (1, 2816)
    layers = cross_attention_layers(sdxl_model)
    # SDXL's pattern: no cross-attention at full resolution, two transformer blocks per attention level
    assert [(layer.name, layer.downscale) for layer in layers] == [
        ("input_3.0", 2), ("input_3.1", 2), ("input_5.0", 4), ("input_5.1", 4),
        ("middle_0.0", 4), ("middle_0.1", 4),
        ("output_0.0", 4), ("output_0.1", 4), ("output_1.0", 4), ("output_1.1", 4),
        ("output_2.0", 2), ("output_2.1", 2), ("output_3.0", 2), ("output_3.1", 2),
    ]  # fmt: skip
    coarse = select_layers(layers, "coarse")
    assert [layer.name for layer in coarse] == [layer.name for layer in layers[4:]]  # middle + decoder


def test_guided_ksampler_moves_both_items_and_leaves_the_model_alone(comfy, sdxl_model):
    from spatial_control.guidance.backends.comfy import (
        cross_attention_layers,
        install_attention_capture,
        with_latent_guidance,
    )

    layers = cross_attention_layers(sdxl_model)
    captured = install_attention_capture(sdxl_model, layers)
    plain = _sample(comfy, sdxl_model)
    # the capture patches alone change nothing: they only record when a guidance call asks them to
    assert torch.allclose(_sample(comfy, captured), plain, atol=1e-5)
    guided = _sample(comfy, with_latent_guidance(captured, _guide(layers)))
    assert guided.shape == plain.shape == LATENT_SHAPE
    assert torch.isfinite(guided).all() and torch.isfinite(plain).all()
    assert ((guided - plain).abs().amax((1, 2, 3)) > 1e-3).all()
    assert torch.equal(_sample(comfy, sdxl_model), plain)  # no patch or wrapper leaked into the MODEL
    assert "patches_replace" not in sdxl_model.model_options.get("transformer_options", {})


def test_one_guidance_call_lowers_the_region_energy(comfy, sdxl_model):
    from spatial_control.guidance.backends.comfy import (
        cross_attention_layers,
        install_attention_capture,
        loaded_denoiser,
    )

    layers = cross_attention_layers(sdxl_model)
    guide = _guide(layers, strength=0.1, iterations=1)  # one small step down the gradient
    patched = install_attention_capture(sdxl_model, layers)
    sigma = torch.tensor([2.0])
    x = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0)) * sigma
    with torch.inference_mode(), loaded_denoiser(patched, _conditioning(1), LATENT_SHAPE) as (denoiser, cond):
        before, grad = guide.gradient(denoiser, x, sigma, cond)
        moved = guide(denoiser, x, sigma, cond)
        after, _ = guide.gradient(denoiser, moved, sigma, cond)
    assert grad.shape == LATENT_SHAPE and torch.isfinite(grad).all()
    assert (grad.abs().amax((1, 2, 3)) > 0).all()
    assert moved.shape == LATENT_SHAPE and torch.isfinite(moved).all() and not torch.equal(moved, x)
    assert (after < before - 0.1).all()  # about 0.5 for this seed; over 0.2 for the seeds tried


def test_concept_discovery_reads_the_queries_of_an_sdxl_shaped_unet(sdxl_model):
    from spatial_control.guidance.attention_store import AttentionStore
    from spatial_control.guidance.backends.comfy import (
        cross_attention_layers,
        install_attention_capture,
        loaded_denoiser,
    )
    from spatial_control.guidance.concept_discovery import discover_concepts

    layers = cross_attention_layers(sdxl_model)
    patched = install_attention_capture(sdxl_model, layers)
    sigma = torch.tensor([1.0])
    x = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    store = AttentionStore(layers, keep_queries=True)
    with torch.inference_mode(), loaded_denoiser(patched, _conditioning(1), LATENT_SHAPE) as (denoiser, cond):
        denoiser.denoise(x, sigma, cond, store)
    features = store.query_features(LATENT_SHAPE[-2:])
    # the 6 layers at the finer attention level (downscale 2), 64 channels each; the coarsest is left out
    assert features.shape == (2, 6 * 64, 8, 8)
    assert torch.allclose(features.norm(dim=1), torch.ones(2, 8, 8), atol=1e-4)
    maps = discover_concepts(features, count=2)
    assert maps.shape == (2, 2, 8, 8) and torch.isfinite(maps).all() and maps.min() >= 0


class _TokenizerOnlyClip:
    """The part of a ComfyUI CLIP that phrase location reads, with SDXL's tokenizers and no encoder."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)


def test_sdxl_tokenizer_positions_match_clip_l(comfy):
    from comfy.sdxl_clip import SDXLTokenizer

    from spatial_control.guidance.backends.comfy import _clip_tokenizer, locate_phrases, prompt_text_tokens

    clip = _TokenizerOnlyClip(SDXLTokenizer())
    assert _clip_tokenizer(clip)[0] == "l"
    positions = locate_phrases(clip, PROMPT, ["red circle", "blue square"])
    assert positions == {"red circle": [2, 3], "blue square": [6, 7]}
    assert prompt_text_tokens(clip, PROMPT) == list(range(1, 8))


def test_sdxl_prompt_words_a_region_text_shares(comfy):
    from comfy.sdxl_clip import SDXLTokenizer

    from spatial_control.guidance.backends.comfy import shared_word_positions

    clip = _TokenizerOnlyClip(SDXLTokenizer())
    texts = ["a red circle", "the large blue square", "a cat"]
    assert shared_word_positions(clip, PROMPT, texts) == [[2, 3], [6, 7], []]


def test_clip_g_tokenizer_alone_does_not_count_its_padding(comfy):
    from comfy.sdxl_clip import SDXLClipGTokenizer

    from spatial_control.guidance.backends.comfy import _clip_tokenizer, locate_phrases, prompt_text_tokens

    clip_g = SDXLClipGTokenizer()
    only_g = types.SimpleNamespace(
        clip_g=clip_g, tokenize_with_weights=lambda text: {"g": clip_g.tokenize_with_weights(text)}
    )
    clip = _TokenizerOnlyClip(only_g)
    assert _clip_tokenizer(clip)[0] == "g"
    chunk = clip.tokenize(PROMPT)["g"][0]
    assert chunk[8][0] == clip_g.end_token and chunk[9][0] == 0 != clip_g.end_token  # pads with 0
    assert locate_phrases(clip, PROMPT, ["red circle", "blue square"]) == {
        "red circle": [2, 3],
        "blue square": [6, 7],
    }
    assert prompt_text_tokens(clip, PROMPT) == list(range(1, 8))


class _SDXLShapedClip:
    """A CLIP stand-in that gives SDXL-shaped CONDITIONING (see ``_conditioning``), seeded by the text."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        return _conditioning(sum(map(ord, text)))


class _PoolingVAE:
    """A VAE stand-in with SDXL's 4 latent channels at 1/8 of the side: mean-pooled RGB and grey in,
    nearest upsampling out (the model's code path is what the test is about)."""

    def encode(self, pixels):
        rgb = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1).float(), 8)
        return torch.cat([rgb, rgb.mean(1, keepdim=True)], 1) * 2 - 1

    def decode(self, samples):
        rgb = torch.nn.functional.interpolate((samples[:, :3] + 1) / 2, scale_factor=8, mode="nearest")
        return rgb.clamp(0, 1).movedim(1, -1)


def test_region_proposer_edits_with_an_sdxl_shaped_model(comfy, sdxl_model):
    from scripts.comfy_headless import find_comfyui
    from spatial_control.guidance.backends.comfy_regions import ComfyEditor, propose_edit_region
    from spatial_control.guidance.edit_text import parse_edit
    from spatial_control.guidance.region_proposer import ProposerSettings
    from spatial_control.guidance.regions import box_mask
    from spatial_control.models.anchor_vit import load_anchor_vit
    from spatial_control.models.shape_clip import ShapeCLIPScorer, load_shape_clip
    from spatial_control.models.text_encoder import load_clip_tokenizer

    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    clip, vae = _SDXLShapedClip(), _PoolingVAE()
    # the masked editor on SDXL's cond processing (ADM vector from pooled output and sizes)
    editor = ComfyEditor(sdxl_model, clip, vae, image, "a green circle", steps=2, strength=0.6, seed=1)
    mask = box_mask((0.25, 0.25, 0.75, 0.75), 64, 64)
    with torch.inference_mode():
        edited = editor(mask[None, None])[0]
    before = vae.decode(vae.encode(image))[0].movedim(-1, 0)
    inside = mask.bool()
    assert torch.isfinite(edited).all() and edited.shape == (3, 64, 64)
    assert torch.allclose(edited[:, ~inside], before[:, ~inside], atol=1e-5)  # kept outside the mask
    assert (edited[:, inside] - before[:, inside]).abs().mean() > 1e-3  # regenerated inside

    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    scorer = ShapeCLIPScorer(load_shape_clip(), tokenizer)
    settings = ProposerSettings(anchors=2, iterations=3, min_relevance=0.0)
    request = parse_edit("make the circle green")

    def propose():
        with torch.inference_mode():
            return propose_edit_region(
                sdxl_model, clip, vae, image, request, load_anchor_vit()[0], scorer, settings, request.prompt,
                1, 0.5, 4.0, 3,
            )  # fmt: skip

    proposal = propose()
    x0, y0, x1, y1 = proposal.box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert len(proposal.candidates) == 2 * len(settings.box_sizes)
    assert propose().box == proposal.box  # deterministic under its seed
