"""Region nodes, RegionBackwardGuidance and the guided samplers in real ComfyUI (random SD1.5 shape)."""

import pytest
import torch

from scripts.comfy_headless import GraphError

pytestmark = pytest.mark.comfyui

PROMPT = "a red circle and a blue square"


def _graph(guided: bool = True, batch: int = 1, phrase: str = "red circle", **guidance) -> dict:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "3": {
            "class_type": "RegionFromBox",
            "inputs": {
                "x": 0.0,
                "y": 0.0,
                "width": 0.5,
                "height": 0.5,
                "image_width": 64,
                "image_height": 64,
                "phrase": phrase,
                "weight": 1.0,
            },
        },  # fmt: skip
        "4": {
            "class_type": "RegionFromBox",
            "inputs": {
                "x": 0.5,
                "y": 0.5,
                "width": 0.5,
                "height": 0.5,
                "image_width": 64,
                "image_height": 64,
                "phrase": "blue square",
                "weight": 1.0,
                "regions": ["3", 0],
            },
        },  # fmt: skip
        "5": {
            "class_type": "RegionBackwardGuidance",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "regions": ["4", 0],
                "prompt": PROMPT,
                "strength": 0.2,
                "start_at": 0.0,
                "end_at": 0.5,
                "iterations": 2,
                "threshold": 0.0,
                "target_scale": 0.8,
                "candidates": 1,
                "move_start": True,
                "layers": "all",
                "layout_weight": 1.0,
                "boxdiff_weight": 0.5,
                "presence_weight": 0.5,
                "extent_weight": 0.0,
                "relayout_at": 0.0,
                **guidance,
            },
        },  # fmt: skip
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "8": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["5", 0] if guided else ["1", 0],
                "positive": ["5", 1] if guided else ["7", 0],
                "negative": ["6", 0],
                "latent_image": ["2", 0],
                "seed": 3,
                "steps": 4,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },  # fmt: skip
        "98": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "99": {"class_type": "PreviewImage", "inputs": {"images": ["98", 0]}},
    }
    return graph


def _preview(graph: dict, node: str) -> None:
    """Make ``node``'s LATENT an output of the graph (ComfyUI only runs what reaches an output)."""
    graph[f"{node}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [node, 0], "vae": ["1", 2]}}
    graph[f"{node}_preview"] = {"class_type": "PreviewImage", "inputs": {"images": [f"{node}_decode", 0]}}


def _samples(comfy, graph, fresh=False) -> torch.Tensor:
    comfy.run(graph, fresh=fresh)
    return comfy.node_output("8")[0]["samples"].clone()


def test_guidance_moves_the_sample_and_leaves_the_source_model_alone(comfy):
    plain = _samples(comfy, _graph(guided=False), fresh=True)
    guided = _samples(comfy, _graph())
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3
    assert torch.equal(_samples(comfy, _graph(guided=False)), plain)  # no patch leaked into the MODEL
    assert torch.equal(_samples(comfy, _graph(), fresh=True), guided)  # deterministic, no state kept
    off = _samples(comfy, _graph(strength=0.0))
    assert torch.equal(off, plain)
    assert not torch.equal(_samples(comfy, _graph(target_scale=1.0)), guided)  # the target reaches the energy
    assert not torch.equal(_samples(comfy, _graph(move_start=False)), guided)  # so does moving the start


def test_the_start_is_moved_only_when_sampling_starts_from_noise(comfy):
    def partial(**settings) -> torch.Tensor:  # img2img: the start holds the (empty) image
        graph = _graph(**settings)
        graph["8"]["inputs"]["denoise"] = 0.6
        return _samples(comfy, graph)

    guided = partial(move_start=True)
    assert not torch.equal(guided, partial(guided=False))  # guided, ...
    assert torch.equal(guided, partial(move_start=False))  # ... but the start was left in place


def test_relayout_acts_only_when_sampling_starts_from_noise(comfy):
    guided = _samples(comfy, _graph())
    relaid = _samples(comfy, _graph(relayout_at=0.5))  # step 2 of 4, after the guided steps
    assert torch.isfinite(relaid).all() and not torch.equal(relaid, guided)

    def partial(**settings) -> torch.Tensor:
        graph = _graph(**settings)
        graph["8"]["inputs"]["denoise"] = 0.6
        return _samples(comfy, graph)

    assert torch.equal(partial(relayout_at=0.5), partial())  # img2img: the image's objects stay put


def test_start_candidates_change_the_start_deterministically(comfy):
    guided = _samples(comfy, _graph(batch=2))
    chosen = _samples(comfy, _graph(batch=2, candidates=3))
    assert chosen.shape == guided.shape and torch.isfinite(chosen).all()
    assert not torch.equal(chosen, guided)
    assert torch.equal(_samples(comfy, _graph(batch=2, candidates=3), fresh=True), chosen)
    assert torch.equal(_samples(comfy, _graph(batch=2)), guided)  # nothing of the candidates stays behind


def test_regions_chain_with_masks_and_preview(comfy):
    result = comfy.run(_graph())
    regions, masks, preview = comfy.node_output("4")
    assert [r.phrase for r in regions] == ["red circle", "blue square"]
    assert masks.shape == (2, 64, 64) and masks[0, :32, :32].all() and masks[1, 32:, 32:].all()
    assert masks.sum() == 2 * 32 * 32
    assert preview.shape == (1, 64, 64, 3)
    assert result.outputs["4"]["images"]


def test_batches_are_guided_item_by_item(comfy):
    plain = _samples(comfy, _graph(guided=False, batch=2))
    guided = _samples(comfy, _graph(batch=2))
    assert guided.shape[0] == 2
    assert ((guided - plain).abs().amax((1, 2, 3)) > 1e-3).all()


def test_guidance_composes_with_an_existing_attn2_patch(comfy, sd15):
    from spatial_control.nodes.region_guidance import RegionBackwardGuidance
    from spatial_control.nodes.regions import RegionFromBox

    calls = []

    def existing_patch(q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        calls.append(extra_options["block"])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model, clip, _ = sd15
    patched = model.clone()
    patched.set_model_attn2_replace(existing_patch, "middle", 0, 0)
    regions = RegionFromBox.execute(0.0, 0.0, 0.5, 0.5, 64, 64, "red circle", 1.0).result[0]
    settings = dict(strength=0.2, start_at=0.0, end_at=1.0, iterations=1, threshold=0.0, target_scale=1.0,
                    candidates=1, move_start=False, layers="all", layout_weight=1.0, boxdiff_weight=0.0,
                    presence_weight=0.0, extent_weight=0.0, relayout_at=0.0)  # fmt: skip
    nodes = comfy.node_classes

    def sample(m, positive):
        negative = nodes["CLIPTextEncode"]().encode(clip, "")[0]
        latent = nodes["EmptyLatentImage"]().generate(64, 64, 1)[0]
        return nodes["KSampler"]().sample(m, 0, 2, 5.0, "euler", "normal", positive, negative, latent)[0]

    with torch.inference_mode():
        guided, positive = RegionBackwardGuidance.execute(patched, clip, regions, PROMPT, **settings).result
        plain = sample(patched, positive)["samples"]
        plain_calls = len(calls)
        moved = sample(guided, positive)["samples"]
    assert plain_calls == 2  # one batched cond+uncond forward per step
    assert len(calls) - plain_calls == 2 * 2  # the gradient's forward reaches the patch too
    assert (moved - plain).abs().max() > 1e-3


def test_guided_ksampler_without_guidance_equals_the_stock_ksampler(comfy):
    graph = _graph(guided=False)
    graph["9"] = {
        "class_type": "RegionGuidedKSampler",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "regions": ["4", 0], "prompt": PROMPT,
                   "negative": ["6", 0], "cfg": 5.0, "region_cfg": 0.0, "latent_image": ["2", 0], "seed": 3,
                   "steps": 4, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                   "strength": 0.0, "start_at": 0.0, "end_at": 0.3, "iterations": 1, "threshold": 0.2,
                   "target_scale": 0.8, "candidates": 1, "move_start": True, "layers": "coarse",
                   "layout_weight": 1.0, "boxdiff_weight": 0.0, "presence_weight": 0.0, "extent_weight": 0.0,
                   "relayout_at": 0.0},
    }  # fmt: skip
    _preview(graph, "9")
    comfy.run(graph)
    stock = comfy.node_output("8")[0]["samples"]
    mine = comfy.node_output("9")[0]["samples"]
    assert torch.allclose(mine, stock, atol=1e-5)
    graph["9"]["inputs"].update(region_cfg=2.0, strength=0.2)
    comfy.run(graph)
    assert (comfy.node_output("9")[0]["samples"] - stock).abs().max() > 1e-3


def test_region_guider_drives_sampler_custom_advanced(comfy):
    graph = _graph(guided=False)
    graph.update({
        "10": {
            "class_type": "RegionGuider",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "regions": ["4", 0], "prompt": PROMPT,
                       "negative": ["6", 0], "cfg": 5.0, "region_cfg": 1.0, "strength": 0.2, "start_at": 0.0,
                       "end_at": 0.5, "iterations": 1, "threshold": 0.0, "target_scale": 0.8,
                       "candidates": 2, "move_start": True, "layers": "coarse", "layout_weight": 1.0,
                       "boxdiff_weight": 0.0, "presence_weight": 0.0, "extent_weight": 0.0,
                       "relayout_at": 0.0},
        },
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "13": {"class_type": "BasicScheduler",
               "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}},
        "14": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["11", 0], "guider": ["10", 0], "sampler": ["12", 0], "sigmas": ["13", 0],
                          "latent_image": ["2", 0]}},
    })  # fmt: skip
    _preview(graph, "14")
    comfy.run(graph)
    out = comfy.node_output("14")[0]["samples"]
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"phrase": "green triangle"},
         "RegionBackwardGuidance: input 'regions': phrase 'green triangle' is not in"),
        ({"phrase": "blue square"},
         "RegionBackwardGuidance: input 'regions': several regions have the phrase"),
        ({"phrase": "  "}, "RegionFromBox: input 'phrase': is empty"),
        ({"layout_weight": 0.0, "boxdiff_weight": 0.0, "presence_weight": 0.0},
         "RegionBackwardGuidance: input 'layout_weight': at least one energy weight"),
        ({"start_at": 0.6, "end_at": 0.5},
         "RegionBackwardGuidance: input 'end_at': need 0 <= start_at <= end_at"),
        ({"start_at": 0.1, "candidates": 4},
         "RegionBackwardGuidance: input 'candidates': start candidates are chosen at the first sampling"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_node_and_input(comfy, change, message):
    phrase = change.pop("phrase", "red circle")
    with pytest.raises(GraphError) as err:
        comfy.run(_graph(phrase=phrase, **change))
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_region_from_mask_rejects_a_mask_batch(comfy):
    from spatial_control.guidance.errors import NodeInputError
    from spatial_control.nodes.regions import RegionFromMask

    with pytest.raises(NodeInputError, match="RegionFromMask: input 'mask': got a batch of 2 masks"):
        RegionFromMask.execute(torch.ones(2, 8, 8), "red circle", 1.0)
    with pytest.raises(NodeInputError, match="RegionFromMask: input 'mask': .*empty"):
        RegionFromMask.execute(torch.zeros(1, 8, 8), "red circle", 1.0)
    soft = torch.zeros(1, 8, 8)
    soft[0, 2:4, 2:6] = 0.5
    regions = RegionFromMask.execute(soft, "red circle", 1.0).result[0]
    assert regions[0].box == (0.25, 0.25, 0.75, 0.5) and regions[0].mask.max() == 0.5


def _masked_graph(guided: bool = False, **masking) -> dict:
    graph = _graph()
    graph["20"] = {
        "class_type": "RegionAttentionMasking",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "regions": ["4", 0], "prompt": PROMPT,
                   "start_at": 0.0, "end_at": 0.5, "layers": "all", "region_prompts": False, **masking},
    }  # fmt: skip
    if guided:  # masking's MODEL and positive into backward guidance
        graph["5"]["inputs"].update(model=["20", 0], positive=["20", 1])
    else:
        graph["8"]["inputs"].update(model=["20", 0], positive=["20", 1])
    return graph


def test_attention_masking_node_masks_in_its_steps_and_chains_into_guidance(comfy):
    plain = _samples(comfy, _graph(guided=False), fresh=True)
    masked = _samples(comfy, _masked_graph())
    assert (masked - plain).abs().max() > 1e-3
    assert torch.equal(_samples(comfy, _masked_graph(), fresh=True), masked)  # deterministic
    assert torch.equal(_samples(comfy, _graph(guided=False)), plain)  # the source MODEL is untouched
    assert torch.equal(_samples(comfy, _masked_graph(end_at=0.0)), plain)  # no step in its window
    guided = _samples(comfy, _graph())
    both = _samples(comfy, _masked_graph(guided=True))
    assert (both - guided).abs().max() > 1e-3 and (both - masked).abs().max() > 1e-3


def test_a_region_covering_the_whole_image_leaves_its_phrase_free(comfy):
    whole = _graph(extent_weight=1.0)
    whole["3"]["inputs"].update(width=1.0, height=1.0)
    alone = {**whole, "5": {**whole["5"], "inputs": {**whole["5"]["inputs"], "regions": ["3", 0]}}}
    assert torch.equal(_samples(comfy, alone), _samples(comfy, _graph(guided=False)))  # nothing to place
    only_the_square = _graph(extent_weight=1.0)
    only_the_square["4"]["inputs"].pop("regions")
    only_the_square["5"]["inputs"]["regions"] = ["4", 0]
    assert torch.equal(_samples(comfy, whole), _samples(comfy, only_the_square))


@pytest.mark.parametrize("masking", [False, True])
def test_a_region_of_another_aspect_than_the_latent_is_refused(comfy, masking):
    graph = _masked_graph() if masking else _graph()
    graph["3"]["inputs"].update(image_width=128, image_height=64)
    node = "RegionAttentionMasking" if masking else "RegionBackwardGuidance"
    with pytest.raises(GraphError) as err:
        comfy.run(graph)
    assert f"{node}: input 'regions': region 'red circle' has a 128x64 mask (aspect 2.00)" in str(err.value)
    assert "latent being sampled is 8x8" in str(err.value)


@pytest.mark.parametrize(
    "graph, message",
    [
        (_graph, "RegionBackwardGuidance: input 'regions': phrase 'red circle': the phrase occurs 2"),
        (_masked_graph, "RegionAttentionMasking: input 'regions': phrase 'red circle': the phrase"),
    ],
)  # fmt: skip
def test_a_phrase_repeated_in_the_prompt_is_refused(comfy, graph, message):
    graph = graph()
    for node in graph.values():
        if node["inputs"].get("prompt") == PROMPT:
            node["inputs"]["prompt"] = "a red circle, a blue square and a red circle"
    with pytest.raises(GraphError) as err:
        comfy.run(graph)
    assert message in str(err.value)


def test_an_empty_box_names_its_node_and_input(comfy):
    graph = _graph()
    graph["3"]["inputs"]["width"] = 0.0
    with pytest.raises(GraphError) as err:
        comfy.run(graph)
    assert "RegionFromBox: input 'width':" in str(err.value)


def test_region_prompts_append_each_phrase_and_need_their_own_conditioning(comfy):
    tokens_only = _samples(comfy, _masked_graph())
    couple = _samples(comfy, _masked_graph(region_prompts=True))
    assert (couple - tokens_only).abs().max() > 1e-3
    guided = _samples(comfy, _masked_graph(guided=True, region_prompts=True))  # through guidance's positive
    assert torch.isfinite(guided).all()
    _, positive = comfy.node_output("20")
    assert positive[0][0].shape[1] == 3 * 77  # the prompt, then "red circle" and "blue square" on their own
    wrong = _masked_graph(region_prompts=True)
    wrong["8"]["inputs"]["positive"] = ["7", 0]  # the prompt alone: the phrases' chunks are missing
    with pytest.raises(GraphError) as err:
        comfy.run(wrong)
    assert "RegionAttentionMasking: input 'positive': the conditioning being sampled has 77 tokens" in str(
        err.value
    )
    other = _masked_graph(guided=True)
    other["5"]["inputs"]["positive"] = ["6", 0]  # the empty prompt's encoding
    with pytest.raises(GraphError) as err:
        comfy.run(other)
    assert "RegionBackwardGuidance: input 'positive': does not begin with this node's prompt" in str(
        err.value
    )


def test_guided_ksampler_takes_multi_conditional_cfg(comfy):
    graph = _graph(guided=False)
    inputs = {"model": ["1", 0], "clip": ["1", 1], "regions": ["4", 0], "prompt": PROMPT,
              "negative": ["6", 0], "cfg": 5.0, "region_cfg": 0.0, "latent_image": ["2", 0], "seed": 3,
              "steps": 3, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
              "strength": 0.2, "start_at": 0.0, "end_at": 0.5, "iterations": 1, "threshold": 0.0,
              "target_scale": 0.8, "candidates": 1, "move_start": True, "layers": "coarse",
              "layout_weight": 1.0, "boxdiff_weight": 0.0, "presence_weight": 0.0,
              "extent_weight": 0.0, "relayout_at": 0.0}  # fmt: skip
    graph["9"] = {"class_type": "RegionGuidedKSampler", "inputs": dict(inputs)}
    graph["20"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}}
    graph["21"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a green cross"}}
    graph["22"] = {"class_type": "RegionGuidedKSampler",
                   "inputs": {**inputs, "spatial_positive": ["20", 0], "global_scale": 5.0}}  # fmt: skip
    graph["23"] = {"class_type": "RegionGuidedKSampler",
                   "inputs": {**inputs, "spatial_positive": ["21", 0], "global_scale": 2.0}}  # fmt: skip
    for node in ("9", "22", "23"):
        _preview(graph, node)
    comfy.run(graph)
    plain, same, multi = (comfy.node_output(n)[0]["samples"] for n in ("9", "22", "23"))
    # the prompt's own conditioning at equal scales is the plain guided CFG; another condition is not
    assert torch.allclose(same, plain, atol=1e-5) and (multi - plain).abs().max() > 1e-3
