"""Build the shipped workflows: ``workflows/*.json`` in ComfyUI's UI form (laid out, grouped, with a
note saying what to change) and their copies with thumbnails in ``example_workflows/`` for the
templates browser.

    python -m scripts.build_workflows            # rebuild the JSON (a server gives /object_info)
    python -m scripts.build_workflows --thumbnails   # also run each workflow and save its picture
    python -m scripts.build_workflows --thumbnails --only shape_world_spatio_textual

Widgets a spec does not set take the node's default, so the workflows show the current defaults;
``tests/test_workflows.py`` fails when a committed workflow differs from what this builds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from scripts.comfy_headless import PACK_ROOT
from scripts.comfy_server import EXAMPLE_INPUTS
from scripts.workflow_format import WorkflowSpec

WORKFLOWS_DIR = PACK_ROOT / "workflows"
EXAMPLES_DIR = PACK_ROOT / "example_workflows"
SAMPLING = {"steps": 20, "cfg": 4.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
PROMPT = "a red circle and a blue square"


def _demo_model(w: WorkflowSpec, loader: str = "ShapeWorldDemoModel", title: str = "Shape World Demo Model",
                batch_size: int = 2):  # fmt: skip
    model = w.node(loader, (0, 0), title)
    negative = w.node("CLIPTextEncode", (0, 0), "Negative prompt (empty)", text="", clip=model[1])
    latent = w.node("EmptyLatentImage", (0, 0), "128x128", width=128, height=128, batch_size=batch_size)
    w.group("Model", model, negative, latent)
    return model, negative, latent


def _sampled(w: WorkflowSpec, col: int, model, positive, negative, latent, vae, name: str, title: str):
    """KSampler in ``col``, VAE Decode and Save Image in the next column; the three nodes."""
    sampler = w.node(
        "KSampler", (col, 0), title, model=model, positive=positive, negative=negative, latent_image=latent,
        seed=7, **SAMPLING,
    )  # fmt: skip
    decoded = w.node("VAEDecode", (col + 1, 0), "VAE Decode", samples=sampler[0], vae=vae)
    save = w.node(
        "SaveImage", (col + 1, 0), "Image", images=decoded[0], filename_prefix=f"shape_world/{name}"
    )
    return sampler, decoded, save


def text_to_image() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_text_to_image")
    model, negative, latent = _demo_model(w)
    positive = w.node("CLIPTextEncode", (1, 0), "Prompt", text=PROMPT, clip=model[1])
    nodes = _sampled(
        w, 1, model[0], positive[0], negative[0], latent[0], model[2], "text_to_image", "KSampler"
    )
    w.group("Text to image (stock nodes)", positive, *nodes)
    w.note(
        "The pack's demo model behaves like an SD1.5 checkpoint: MODEL, CLIP and VAE for the stock nodes.\n"
        "Change the prompt: colours red, orange, yellow, green, blue, purple; shapes circle, square, "
        "triangle, cross; sizes small / large if you like.",
        (0, 0),
    )
    return w


def attention_maps() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_attention_maps")
    model, negative, latent = _demo_model(w)
    positive = w.node("CLIPTextEncode", (1, 0), "Prompt", text=PROMPT, clip=model[1])
    sampler, decoded, save = _sampled(
        w, 1, model[0], positive[0], negative[0], latent[0], model[2], "attention_images", "KSampler"
    )
    w.group("Generate", positive, sampler, decoded, save)
    maps = w.node(
        "CrossAttentionMaps", (3, 0), "Where does each phrase attend?", model=model[0], clip=model[1],
        latent=sampler[0], prompt=PROMPT, phrases="red circle\nblue square",
    )  # fmt: skip
    heatmaps = w.node(
        "SaveImage", (3, 0), "Heatmaps", images=maps[1], filename_prefix="shape_world/attention_maps"
    )
    w.group("Probe the cross-attention", maps, heatmaps)
    w.note("Write the phrases to probe, one per line; each must occur in the prompt.", (0, 0))
    return w


def _regions(w: WorkflowSpec, col: int = 1):
    first = w.node(
        "RegionFromBox", (col, 0), "Red circle: top left", x=0.05, y=0.1, width=0.4, height=0.4,
        image_width=128, image_height=128, phrase="red circle",
    )  # fmt: skip
    second = w.node(
        "RegionFromBox", (col, 0), "Blue square: bottom right", x=0.55, y=0.5, width=0.4, height=0.4,
        image_width=128, image_height=128, phrase="blue square", regions=first[0],
    )  # fmt: skip
    preview = w.node(
        "SaveImage", (col, 0), "Regions", images=second[2], filename_prefix="shape_world/regions"
    )
    w.group("Where each phrase goes", first, second, preview)
    return second


def _patched_and_sampled(
    w: WorkflowSpec, node_type: str, title: str, group: str, model, base, regions, name: str, **extra
):
    """A pack node that patches ``model`` (e.g. guidance) for the stock KSampler in column 2, its
    sampler, decoder and saver beside it, grouped; ``base`` is the ``_demo_model`` triple's nodes."""
    demo, negative, latent = base
    patched = w.node(
        node_type, (2, 0), title, model=model, clip=demo[1], regions=regions[0], prompt=PROMPT, **extra
    )
    nodes = _sampled(w, 2, patched[0], patched[1], negative[0], latent[0], demo[2], name, "KSampler")
    w.group(group, patched, *nodes)
    return patched


def region_guidance() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_region_guidance")
    base = model, negative, latent = _demo_model(w)
    regions = _regions(w)
    _patched_and_sampled(
        w, "RegionBackwardGuidance", "Region Backward Guidance", "Backward guidance into the stock KSampler",
        model[0], base, regions, "region_guidance",
    )  # fmt: skip
    w.note(
        "Move the boxes (x, y, width, height as fractions of the image) and change the phrases: each "
        "phrase must occur once in the prompt. Objects take their box's size whatever the prompt says "
        "of size. On your own checkpoint, connect its MODEL and CLIP and set image_width / image_height "
        "to the size of the image you generate.",
        (0, 0),
    )
    w.new_section()
    sampler = w.node(
        "RegionGuidedKSampler", (2, 0), "Region-Guided KSampler", model=model[0], clip=model[1],
        regions=regions[0], prompt=PROMPT, negative=negative[0], latent_image=latent[0], seed=7, **SAMPLING,
    )  # fmt: skip
    decoded = w.node("VAEDecode", (3, 0), "VAE Decode", samples=sampler[0], vae=model[2])
    save = w.node(
        "SaveImage", (3, 0), "Image", images=decoded[0], filename_prefix="shape_world/region_guided_sampler"
    )
    w.group("All in one: guidance + per-region CFG in one sampler", sampler, decoded, save)
    return w


def attention_masking() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_attention_masking")
    base = model, _, _ = _demo_model(w)
    regions = _regions(w)
    masked = _patched_and_sampled(
        w, "RegionAttentionMasking", "Region Attention Masking", "Attention masking (no gradients)",
        model[0], base, regions, "attention_masking",
    )  # fmt: skip
    w.note(
        "Attention masking keeps each phrase's words inside its box in the early steps (what attention-"
        "couple packs do). Its MODEL chains into Region Backward Guidance to combine both (below).",
        (0, 0),
    )
    w.new_section()
    _patched_and_sampled(
        w, "RegionBackwardGuidance", "Region Backward Guidance", "Masking chained into backward guidance",
        masked[0], base, regions, "masking_and_guidance", positive=masked[1],
    )  # fmt: skip
    return w


CONCEPT_IMAGES = tuple(f"concept_example_{i + 1}.png" for i in range(3))


def write_concept_images() -> None:
    """The concept workflow's example images: three held-out shape-world scenes sharing two objects
    (a yellow square and a blue cross), each with other objects beside them."""
    from PIL import Image

    from benchmarks.shape_world.generator import sample_concepts

    concept_set = sample_concepts("test", 1, k=len(CONCEPT_IMAGES), n_concepts=2)
    EXAMPLE_INPUTS.mkdir(parents=True, exist_ok=True)
    for name, scene in zip(CONCEPT_IMAGES, concept_set.scenes, strict=True):
        Image.fromarray(scene.image).save(EXAMPLE_INPUTS / name)


def concepts() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_concepts")
    model, negative, latent = _demo_model(w)
    loaded = [w.node("LoadImage", (1, 0), f"Example {i + 1}", image=n) for i, n in enumerate(CONCEPT_IMAGES)]
    pair = w.node("ImageBatch", (1, 0), "Batch", image1=loaded[0][0], image2=loaded[1][0])
    batch = w.node("ImageBatch", (1, 0), "Batch", image1=pair[0], image2=loaded[2][0])
    w.group("Images that share the concepts", *loaded, pair, batch)
    learn = w.node(
        "ConceptTokenEM", (2, 0), "Concept Token EM", images=batch[0], model=model[0], clip=model[1],
        vae=model[2], concepts="my_shape_a, my_shape_b", overwrite=True,
    )  # fmt: skip
    masks = w.node(
        "SaveImage", (2, 0), "Concept masks", images=learn[2], filename_prefix="shape_world/concept_masks"
    )
    w.group("Learn the concepts (tokens + masks)", learn, masks)
    positive = w.node("CLIPTextEncode", (3, 0), "New prompt with both concepts", text=learn[3], clip=model[1])
    nodes = _sampled(w, 3, model[0], positive[0], negative[0], latent[0], model[2], "concepts", "KSampler")
    w.group("Use them in a prompt (stock nodes)", positive, *nodes)
    w.note(
        "Concept Token EM learns what the example images share: one embedding per concept, saved as "
        "embeddings/<name>.safetensors, and its mask in every image. Write embedding:my_shape_a in any "
        "prompt (the stock CLIP Text Encode reads it), here through the node's prompt output. Load your own "
        "images and rename the concepts; overwrite is on so that the example can run again.",
        (0, 0),
    )
    return w


EDIT_IMAGE = "edit_example.png"
EDIT_TASK = ("test", 0, "recolour")  # sample_edit_task arguments of the region-edit example
RESHAPE_IMAGE = "reshape_example.png"
RESHAPE_TASK = ("test", 2, "reshape")  # sample_edit_task arguments of the region-reshape example


def write_edit_images() -> None:
    """The region-edit workflows' example images: held-out shape-world edit tasks' scenes."""
    from PIL import Image

    from benchmarks.shape_world.generator import sample_edit_task

    EXAMPLE_INPUTS.mkdir(parents=True, exist_ok=True)
    for name, task in ((EDIT_IMAGE, EDIT_TASK), (RESHAPE_IMAGE, RESHAPE_TASK)):
        Image.fromarray(sample_edit_task(*task).scene.image).save(EXAMPLE_INPUTS / name)


def _proposed_region(w: WorkflowSpec, image_name: str, task: tuple):
    """Demo model, the image and the Region Proposer with its preview; the model, image and proposer."""
    from benchmarks.shape_world.generator import sample_edit_task

    model = w.node("ShapeWorldDemoModel", (0, 0), "Shape World Demo Model")
    w.group("Model", model)
    image = w.node("LoadImage", (1, 0), "Image to edit", image=image_name)
    proposer = w.node(
        "RegionProposer", (1, 0), "Region Proposer", image=image[0], model=model[0], clip=model[1],
        vae=model[2], edit_text=sample_edit_task(*task).text,
    )  # fmt: skip
    proposal = w.node(
        "SaveImage", (2, 0), "Proposal", images=proposer[3], filename_prefix="shape_world/region_proposal"
    )
    w.group("Find the region the text is about (no mask drawn)", image, proposer, proposal)
    return model, image, proposer


def region_edit() -> WorkflowSpec:
    from benchmarks.comfy_generation import GUIDANCE_AS_MEASURED  # the settings its benchmark measures

    w = WorkflowSpec("shape_world_region_edit")
    model, image, proposer = _proposed_region(w, EDIT_IMAGE, EDIT_TASK)
    encoded = w.node("VAEEncode", (2, 0), "VAE Encode", pixels=image[0], vae=model[2])
    masked = w.node(
        "SetLatentNoiseMask", (2, 0), "Edit inside the region", samples=encoded[0], mask=proposer[0]
    )
    guidance = w.node(
        "RegionBackwardGuidance", (3, 0), "Region Backward Guidance", model=model[0], clip=model[1],
        regions=proposer[2], prompt=proposer[4], **GUIDANCE_AS_MEASURED,
    )  # fmt: skip
    negative = w.node("CLIPTextEncode", (3, 0), "Negative prompt", text=proposer[5], clip=model[1])
    sampler = w.node(
        "KSampler", (3, 0), "KSampler (denoise 0.6 recolours)", model=guidance[0], positive=guidance[1],
        negative=negative[0], latent_image=masked[0], seed=7, denoise=0.6, **SAMPLING,
    )  # fmt: skip
    decoded = w.node("VAEDecode", (4, 0), "VAE Decode", samples=sampler[0], vae=model[2])
    pasted = w.node(
        "ImageCompositeMasked", (4, 0), "Keep every pixel outside the region", destination=image[0],
        source=decoded[0], x=0, y=0, resize_source=False, mask=proposer[0],
    )  # fmt: skip
    save = w.node("SaveImage", (4, 0), "Edited", images=pasted[0], filename_prefix="shape_world/region_edit")
    w.group(
        "Edit there (stock inpainting nodes)", encoded, masked, guidance, negative, sampler, decoded, pasted,
        save,
    )  # fmt: skip
    w.note(
        "Region Proposer reads the edit text ('make the X Y', 'turn the X into a Y', 'remove the X', 'add a"
        " Y next to the X'), finds the region it is about (anchors from a self-supervised ViT, candidate "
        "boxes edited once each by the model, a region network trained on this image with CLIP losses) and "
        "outputs its mask (the region with a margin), REGIONS, the prompt for it and, for a recolour or a "
        "removal, the object as it is now as the negative prompt. Region Backward Guidance keeps the new "
        "look inside the region; the stock nodes edit only there (denoise 0.6 recolours). A removal has "
        "nothing to guide: connect the model and an encoder of the empty prompt straight to KSampler, at "
        "denoise 1.0. A new shape takes two passes (shape_world_region_reshape). Load your own image and "
        "write your edit.",
        (0, 0),
    )
    return w


def _blend_in(w: WorkflowSpec, model, image, guidance, negative, layout, mask, title: str, name: str):
    """The second pass of a two-pass generation: the laid-out ``layout`` latent pasted into the image's
    latent inside ``mask``, blended in at denoise 0.3 and decoded, every pixel outside kept (columns 4-6)."""
    encoded = w.node("VAEEncode", (4, 0), "VAE Encode", pixels=image[0], vae=model[2])
    pasted = w.node(
        "LatentCompositeMasked", (4, 0), "Paste it into the image", destination=encoded[0], source=layout[0],
        x=0, y=0, resize_source=False, mask=mask,
    )  # fmt: skip
    masked = w.node("SetLatentNoiseMask", (4, 0), "Only around it", samples=pasted[0], mask=mask)
    blend = w.node(
        "KSampler", (5, 0), "KSampler: blend it in (denoise 0.3)", model=guidance[0], positive=guidance[1],
        negative=negative[0], latent_image=masked[0], seed=7, denoise=0.3, **SAMPLING,
    )  # fmt: skip
    decoded = w.node("VAEDecode", (5, 0), "VAE Decode", samples=blend[0], vae=model[2])
    kept = w.node(
        "ImageCompositeMasked", (6, 0), "Keep every pixel outside", destination=image[0], source=decoded[0],
        x=0, y=0, resize_source=False, mask=mask,
    )  # fmt: skip
    save = w.node("SaveImage", (6, 0), title, images=kept[0], filename_prefix=f"shape_world/{name}")
    w.group(
        "Blend it into the image (stock latent masking)", encoded, pasted, masked, blend, decoded, kept, save
    )


def region_reshape() -> WorkflowSpec:
    from benchmarks.comfy_generation import GUIDANCE_AS_MEASURED  # the settings its benchmark measures

    w = WorkflowSpec("shape_world_region_reshape")
    model, image, proposer = _proposed_region(w, RESHAPE_IMAGE, RESHAPE_TASK)
    guidance = w.node(
        "RegionBackwardGuidance", (2, 0), "Region Backward Guidance (target_scale 0.55)", model=model[0],
        clip=model[1], regions=proposer[2], prompt=proposer[4], target_scale=0.55,
        **GUIDANCE_AS_MEASURED,
    )  # fmt: skip
    negative = w.node("CLIPTextEncode", (2, 0), "Negative prompt", text=proposer[5], clip=model[1])
    empty = w.node("EmptyLatentImage", (3, 0), "128x128", width=128, height=128, batch_size=1)
    layout = w.node(
        "KSampler", (3, 0), "KSampler: lay the new shape out", model=guidance[0], positive=guidance[1],
        negative=negative[0], latent_image=empty[0], seed=7, **SAMPLING,
    )  # fmt: skip
    w.group("Generate the new shape in the region", guidance, negative, empty, layout)
    _blend_in(w, model, image, guidance, negative, layout, proposer[0], "Edited", "region_reshape")
    w.note(
        "A new shape ('turn the red circle into a square'): one inpainting pass rarely draws it into the "
        "region, so Region Backward Guidance lays it out in the proposed region from an empty latent "
        "(target_scale 0.55 keeps it inside), the stock nodes paste it into your image's latent, blend it "
        "in at denoise 0.3 and keep every pixel outside the region's margin. Load your own image and write "
        "your edit.",
        (0, 0),
    )
    return w


GROUNDING_IMAGE = "grounding_example.png"
GROUNDING_TASK = ("eval", 7, 1)  # written_grounding arguments of the text-grounding example


def write_grounding_image() -> None:
    """The text-grounding workflow's example image: a held-out grounding task's scene."""
    from PIL import Image

    from benchmarks.shape_world.grounding_phrasing import written_grounding

    EXAMPLE_INPUTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(written_grounding(*GROUNDING_TASK).task.scene.image).save(
        EXAMPLE_INPUTS / GROUNDING_IMAGE
    )


def text_grounding() -> WorkflowSpec:
    from benchmarks.shape_world.grounding_phrasing import written_grounding

    w = WorkflowSpec("shape_world_text_grounding")
    model, negative, empty = _demo_model(w, batch_size=1)
    image = w.node("LoadImage", (1, 0), "Image to add to", image=GROUNDING_IMAGE)
    grounding = w.node(
        "TextGroundingMap", (1, 0), "Text Grounding Map", image=image[0],
        text=written_grounding(*GROUNDING_TASK).text,
    )  # fmt: skip
    preview = w.node(
        "SaveImage", (2, 0), "Map", images=grounding[4], filename_prefix="shape_world/grounding_map"
    )
    w.group("Where the text says the object goes (no box drawn)", image, grounding, preview)
    guidance = w.node(
        "RegionBackwardGuidance", (2, 0), "Region Backward Guidance", model=model[0], clip=model[1],
        regions=grounding[3], prompt=grounding[5],
    )  # fmt: skip
    layout = w.node(
        "KSampler", (3, 0), "KSampler: lay the object out", model=guidance[0], positive=guidance[1],
        negative=negative[0], latent_image=empty[0], seed=7, **SAMPLING,
    )  # fmt: skip
    w.group("Generate it there", guidance, layout)
    _blend_in(w, model, image, guidance, negative, layout, grounding[1], "Result", "text_grounding")
    w.note(
        "Text Grounding Map reads where the text puts the object ('a red circle left of the blue square', "
        "'above', 'below', 'right of', 'between ... and ...', 'next to') and outputs its box, a heat map and "
        "the prompt. Backward guidance generates the object in the box from an empty latent; the stock "
        "nodes paste it into your image's latent, blend it in at denoise 0.3 and keep every pixel outside "
        "the box's margin. Load your own image and write your text; a red box in the map means the "
        "network is unsure (is every object the text names in the image?).",
        (0, 0),
    )
    return w


SEGMENT_MAP_IMAGE = "segment_map_example.png"
# Label colours are only labels: each region's text says what it shows.
SEGMENT_TEXTS = "#ff0000: a yellow circle\n#0000ff: a green triangle\n#00ff00: a purple cross"
SEGMENT_PROMPT = "a yellow circle, a green triangle and a purple cross"


def write_segment_map_image() -> None:
    """The spatio-textual workflow's segment map, painted by hand-like rules: a disc, a triangle and
    a cross in flat label colours on black, at the demo model's 128x128."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (128, 128), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((12, 14, 58, 60), fill=(255, 0, 0))
    draw.polygon([(74, 112), (118, 112), (96, 70)], fill=(0, 0, 255))
    draw.rectangle((30, 78, 44, 118), fill=(0, 255, 0))
    draw.rectangle((17, 91, 57, 105), fill=(0, 255, 0))
    EXAMPLE_INPUTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image)).save(EXAMPLE_INPUTS / SEGMENT_MAP_IMAGE)


def _painted_regions(w: WorkflowSpec, model, **encoder_inputs):
    """The example segment map, its region texts and the global prompt into Spatio-Textual Encoder in
    column 1, with the parsed regions' preview, grouped; the encoder node."""
    segment = w.node("LoadImage", (1, 0), "Segment map (paint your own)", image=SEGMENT_MAP_IMAGE)
    encoder = w.node(
        "SpatioTextualEncoder", (1, 0), "Spatio-Textual Encoder", model=model[0], clip=model[1],
        segment_map=segment[0], region_texts=SEGMENT_TEXTS, global_prompt=SEGMENT_PROMPT, **encoder_inputs,
    )  # fmt: skip
    preview = w.node(
        "SaveImage", (1, 0), "Parsed regions", images=encoder[5], filename_prefix="shape_world/segments"
    )
    w.group("A text for every painted region", segment, encoder, preview)
    return encoder


def spatio_textual() -> WorkflowSpec:
    w = WorkflowSpec("shape_world_spatio_textual")
    model, negative, latent = _demo_model(w, "ShapeWorldSpaTextModel", "Shape World SpaText Model")
    encoder = _painted_regions(w, model, spatext_encoder=model[3])
    nodes = _sampled(
        w, 2, encoder[0], encoder[1], negative[0], latent[0], model[2], "spatio_textual", "KSampler"
    )
    w.group("Stock KSampler (one CFG scale)", *nodes)
    w.note(
        "Paint regions in flat colours (any shapes) and give each colour a line '#rrggbb: what it shows'; "
        "the colours are only labels. The SpaText model reads the map of region embeddings beside the "
        "latent; Multi-Conditional CFG Guider (below) gives the global prompt and the regions their own "
        "scales. For any other checkpoint, leave spatext_encoder unconnected (training-free path).",
        (0, 0),
    )
    w.new_section()
    guider = w.node(
        "MultiConditionalCFGGuider", (2, 0), "Multi-Conditional CFG Guider", model=encoder[0],
        spatial_positive=encoder[1], global_positive=encoder[2], negative=negative[0],
        global_scale=4.0, spatial_scale=6.0,
    )  # fmt: skip
    noise = w.node("RandomNoise", (2, 0), "Noise", noise_seed=7)
    sampler = w.node("KSamplerSelect", (2, 0), "Sampler", sampler_name=SAMPLING["sampler_name"])
    sigmas = w.node(
        "BasicScheduler", (2, 0), "Scheduler", model=encoder[0], scheduler=SAMPLING["scheduler"],
        steps=SAMPLING["steps"], denoise=1.0,
    )  # fmt: skip
    sampled = w.node(
        "SamplerCustomAdvanced", (3, 0), "SamplerCustomAdvanced", noise=noise[0], guider=guider[0],
        sampler=sampler[0], sigmas=sigmas[0], latent_image=latent[0],
    )  # fmt: skip
    decoded = w.node("VAEDecode", (3, 0), "VAE Decode", samples=sampled[0], vae=model[2])
    save = w.node(
        "SaveImage", (3, 0), "Image", images=decoded[0], filename_prefix="shape_world/spatio_textual_mc"
    )
    w.group("Multi-conditional CFG (s_global 4, s_full 6)", guider, noise, sampler, sigmas, sampled,
            decoded, save)  # fmt: skip
    return w


def spatio_textual_training_free() -> WorkflowSpec:
    """The training-free path, as on any checkpoint: the encoder's masked MODEL, positive and REGIONS
    into Region Backward Guidance with the settings docs/spatio_textual.md measured for painted
    regions, then the stock KSampler."""
    from benchmarks.bench_spatext import PAINTED_REGION_GUIDANCE  # the settings its benchmark arm measures

    w = WorkflowSpec("shape_world_spatio_textual_training_free")
    model, negative, latent = _demo_model(w)
    encoder = _painted_regions(w, model)
    guided = w.node(
        "RegionBackwardGuidance", (2, 0), "Region Backward Guidance", model=encoder[0], clip=model[1],
        regions=encoder[3], prompt=SEGMENT_PROMPT, positive=encoder[1], **PAINTED_REGION_GUIDANCE,
    )  # fmt: skip
    nodes = _sampled(
        w, 2, guided[0], guided[1], negative[0], latent[0], model[2], "spatio_textual_training_free",
        "KSampler",
    )  # fmt: skip
    w.group("Backward guidance on the same regions, stock KSampler", guided, *nodes)
    w.note(
        "The training-free path, for any checkpoint (connect its MODEL and CLIP): each region's text is "
        "attended to only inside its region, and Region Backward Guidance moves each region's words of "
        "the global prompt into it. Write every region's text in the global prompt too, and give the "
        "guidance the same prompt. For painted shapes, 4 candidates and end_at 0.3 follow the outlines "
        "more closely than the guidance's defaults (which suit boxes), at about 3x plain sampling.",
        (0, 0),
    )
    return w


SPECS = (
    text_to_image,
    attention_maps,
    region_guidance,
    attention_masking,
    concepts,
    region_edit,
    region_reshape,
    text_grounding,
    spatio_textual,
    spatio_textual_training_free,
)
# The saved image (filename prefix) each workflow shows in the templates browser.
THUMBNAILS = {
    "shape_world_text_to_image": "text_to_image",
    "shape_world_attention_maps": "attention_maps",
    "shape_world_region_guidance": "region_guidance",
    "shape_world_attention_masking": "masking_and_guidance",
    "shape_world_concepts": "concepts",
    "shape_world_region_edit": "region_edit",
    "shape_world_region_reshape": "region_reshape",
    "shape_world_text_grounding": "text_grounding",
    "shape_world_spatio_textual": "spatio_textual",
    "shape_world_spatio_textual_training_free": "spatio_textual_training_free",
}


def build(object_info: dict) -> dict[str, dict]:
    """Workflow name -> UI graph."""
    workflows = [spec() for spec in SPECS]
    return {w.name: w.ui_graph(object_info) for w in workflows}


def write(graphs: dict[str, dict]) -> None:
    EXAMPLES_DIR.mkdir(exist_ok=True)
    for name, graph in graphs.items():
        text = json.dumps(graph, indent=2) + "\n"
        (WORKFLOWS_DIR / f"{name}.json").write_text(text)
        (EXAMPLES_DIR / f"{name}.json").write_text(text)


def main() -> None:
    from PIL import Image

    from scripts.comfy_server import ComfyServer
    from scripts.workflow_format import ui_to_api

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thumbnails", action="store_true", help="run each workflow, save its last image")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="thumbnails of these workflows only")
    args = parser.parse_args()
    write_concept_images()
    write_edit_images()
    write_grounding_image()
    write_segment_map_image()
    with ComfyServer(Path(tempfile.mkdtemp(prefix="build_workflows_"))) as server:
        info = server.object_info()
        graphs = build(info)
        write(graphs)
        print(f"wrote {len(graphs)} workflows to {WORKFLOWS_DIR} and {EXAMPLES_DIR}")
        if args.thumbnails:
            for name, graph in graphs.items():
                if args.only and name not in args.only:
                    continue
                images = server.saved_images(server.run(ui_to_api(graph, info)))
                shown = [p for p in images if p.name.startswith(THUMBNAILS[name] + "_0")]
                thumbnail = Image.open(shown[0]).convert("RGB").resize((256, 256), Image.NEAREST)
                thumbnail.save(EXAMPLES_DIR / f"{name}.jpg", quality=92)
                print(f"thumbnail {name}.jpg from {shown[0].name}")


if __name__ == "__main__":
    main()
