"""ConceptTokenEM in real ComfyUI (random SD1.5-shaped checkpoint): the embedding it saves is read by
the stock CLIPTextEncode exactly as the node's differentiable twin encodes it, and it steers the stock
KSampler; bad inputs name the node and input."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from scripts.comfy_headless import GraphError

pytestmark = pytest.mark.comfyui


def _sampling(prompt: str, batch: int, steps: int, seed: int) -> dict:
    """Stock nodes 1-6: checkpoint, prompt, empty negative, KSampler, VAE Decode (images at "6")."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": prompt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["2", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },  # fmt: skip
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }


def _graph(concepts: str, seed: int = 0, overwrite: bool = False, **extra) -> dict:
    """ConceptTokenEM on two images sampled from the random checkpoint."""
    graph = _sampling("a red circle", batch=2, steps=2, seed=1)
    graph["7"] = {
        "class_type": "ConceptTokenEM",
        "inputs": {
            "images": ["6", 0], "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
            "concepts": concepts, "init_word": "object", "warmup_steps": 3, "rounds": 1,
            "steps_per_round": 2, "vectors": 2, "learning_rate": 0.01, "budget_seconds": 0.0,
            "seed": seed, "overwrite": overwrite, **extra,
        },
    }  # fmt: skip
    return graph


def _sample(comfy, prompt: str) -> torch.Tensor:
    graph = _sampling(prompt, batch=1, steps=3, seed=2)
    graph["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    comfy.run(graph)
    return comfy.node_output("6")[0]


@pytest.fixture(scope="module")
def learned(comfy):
    result = comfy.run(_graph("sc_probe_a, sc_probe_b"))
    return result, comfy.node_output("7")


def test_node_saves_embeddings_masks_regions_and_preview(comfy, learned):
    result, (masks, regions, preview, prompt) = learned
    folder = comfy.base_dir / "models" / "embeddings"
    for name in ("sc_probe_a", "sc_probe_b"):
        rows = safetensors.torch.load_file(folder / f"{name}.safetensors")
        assert set(rows) == {"clip_l"} and rows["clip_l"].shape == (2, 768)
    assert masks.shape == (4, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert preview.shape == (2, 64, 64, 3)
    assert prompt == "a embedding:sc_probe_a and a embedding:sc_probe_b"
    assert all(r.phrase.startswith("embedding:sc_probe_") for r in regions)
    assert result.outputs["7"]["images"]  # the preview is shown on the node
    assert not list(folder.glob(".*.tmp"))  # the atomic write leaves nothing behind


def test_stock_clip_text_encode_reads_the_embedding_as_the_twin_encodes_it(comfy, sd15, learned):
    from spatial_control.guidance.backends.comfy_concepts import ComfyConceptText

    _, clip, _ = sd15
    folder = comfy.base_dir / "models" / "embeddings"
    rows = torch.stack(
        [safetensors.torch.load_file(folder / f"sc_probe_{c}.safetensors")["clip_l"] for c in "ab"]
    )
    with torch.inference_mode():
        stock = clip.encode_from_tokens_scheduled(clip.tokenize(learned[1][3]))[0][0]
        neutral = clip.encode_from_tokens_scheduled(clip.tokenize("a object object and a object object"))[0][
            0
        ]
    twin, positions = ComfyConceptText(clip, [], "cpu").context(["a", 0, "and a", 1], {"clip_l": rows})
    assert positions == {0: [2, 3], 1: [6, 7]}
    assert torch.allclose(stock.float(), twin.detach(), atol=1e-4)
    assert (stock[0, 2:4] - neutral[0, 2:4]).abs().max() > 1e-3


def test_learned_embedding_steers_the_stock_ksampler_and_its_attention(comfy, sd15, learned):
    from spatial_control.guidance.backends.comfy import cross_attention_layers, probe_attention

    concept = _sample(comfy, "a embedding:sc_probe_a")
    neutral = _sample(comfy, "a object object")
    assert (concept - neutral).abs().max() > 1e-3
    model, clip, _ = sd15
    with torch.inference_mode():
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        maps = []
        for prompt in ("a embedding:sc_probe_a", "a object object"):
            cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
            maps.append(probe_attention(model, cond, latent, cross_attention_layers(model), 0.5, 0)[0, 2:4])
    assert (maps[0] - maps[1]).abs().max() > 1e-4


def test_an_existing_embedding_is_kept_unless_overwrite(comfy, learned):
    path = comfy.base_dir / "models" / "embeddings" / "sc_probe_a.safetensors"
    before = path.read_bytes()
    with pytest.raises(
        GraphError, match="ConceptTokenEM: input 'concepts': an embedding 'sc_probe_a' exists"
    ):
        comfy.run(_graph("sc_probe_a", seed=3))
    assert path.read_bytes() == before
    comfy.run(_graph("sc_probe_a", seed=3, overwrite=True))
    assert path.read_bytes() != before


@pytest.mark.parametrize(
    "concepts, extra, message",
    [
        ("circle", {}, "input 'concepts': 'circle' is already a word"),
        (" , ", {}, "input 'concepts': names no concept"),
        ("sc_x, sc_x", {}, "input 'concepts': names a concept twice"),
        ("sc_bad_init", {"init_word": "photorealistically"}, "input 'init_word'"),
    ],
)
def test_bad_inputs_name_the_node_and_input(comfy, concepts, extra, message):
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(concepts, **extra))
    assert f"ConceptTokenEM: {message}" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_mask_count_must_match_images_times_concepts(comfy):
    graph = _graph("sc_masked_a, sc_masked_b")
    graph["8"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph["7"]["inputs"]["masks"] = ["8", 0]
    with pytest.raises(
        GraphError, match="ConceptTokenEM: input 'masks': has 1 masks for 2 images x 2 concepts"
    ):
        comfy.run(graph)


def test_sdxl_key_layout_is_read_per_encoder_by_comfy(comfy, tmp_path):
    import comfy.sd1_clip as sd1_clip

    from spatial_control.guidance.backends.comfy_concepts import save_embedding

    rows = {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}
    save_embedding(tmp_path / "sc_xl.safetensors", rows)
    for key, width in (("clip_l", 768), ("clip_g", 1280)):
        loaded = sd1_clip.load_embed("sc_xl", [str(tmp_path)], width, key)
        assert torch.equal(loaded, rows[key])


def test_cancel_during_learning_stops_the_run_and_writes_no_embedding(comfy):
    """Cancel as the page's button does (ComfyUI's interrupt flag), while the node reports progress."""
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    from comfy_execution.utils import get_executing_context

    previous = comfy_utils.PROGRESS_BAR_HOOK
    seen = []

    def cancel_once_learning(value, total, preview, prompt_id=None, node_id=None):
        previous(value, total, preview, prompt_id, node_id)
        context = get_executing_context()
        if context is not None and str(context.node_id) == "7":
            seen.append(value)
            model_management.interrupt_current_processing(True)

    graph = _graph("sc_cancelled")
    graph["7"]["inputs"]["warmup_steps"] = 50
    comfy_utils.set_progress_bar_global_hook(cancel_once_learning)
    try:
        with pytest.raises(GraphError):
            comfy.run(graph)
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
        model_management.interrupt_current_processing(False)
    assert seen and max(seen) < 50  # stopped at the next step, not at the end
    assert not (comfy.base_dir / "models" / "embeddings" / "sc_cancelled.safetensors").exists()
