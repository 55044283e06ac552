"""ConceptTokenEM: learn the concepts that a few images share, as embeddings usable in any prompt.

Rahman et al., "Visual Concept-driven Image Generation with Text-to-Image Diffusion Model"
(arXiv 2402.11487): token optimisation and mask estimation alternate (``guidance/concept_em.py``).
Each concept is saved as an embedding file in ComfyUI's embeddings folder, so the stock
CLIPTextEncode reads ``embedding:<name>`` in any prompt; its masks in every image come out too.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..guidance.backends.comfy_concepts import clip_encoders, find_embedding, learn_concepts, save_embedding
from ..guidance.concept_em import ConceptEMSettings
from ..guidance.errors import UnknownTokenizerError, UnsupportedModelError
from ..guidance.regions import Region
from .errors import blame_input
from .previews import regions_overlay
from .types import Regions

NODE = "ConceptTokenEM"
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
DEFAULTS = ConceptEMSettings()


def parse_concept_names(text: str) -> list[str]:
    """Names separated by commas or new lines; a plain number ``n`` means ``concept_1 .. concept_n``."""
    text = text.strip()
    if text.isdigit():
        return [f"concept_{i + 1}" for i in range(int(text))]
    return [name.strip() for name in re.split(r"[,\n]", text) if name.strip()]


def check_init_word(encoders, word: str) -> None:
    for key, _, tokenizer in encoders:
        pieces = tokenizer.tokenizer.tokenize(word)
        if len(pieces) != 1:
            with blame_input(NODE, "init_word", ValueError):
                raise ValueError(
                    f"{word!r} is {len(pieces)} tokens for CLIP-{key.upper()} ({pieces}); use one neutral "
                    "word that is a single token, e.g. 'object', 'thing' or 'shape'"
                )


def check_concept_names(encoders, names: list[str], directories: list[str], overwrite: bool) -> None:
    with blame_input(NODE, "concepts", ValueError):
        if not names:
            raise ValueError(
                "names no concept: write one name per concept, e.g. 'my_cat, my_hat', or a count"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"names a concept twice ({names}); give each concept its own name")
        for name in names:
            if not NAME_PATTERN.match(name):
                raise ValueError(
                    f"{name!r} is not a usable embedding name: start with a letter, then letters, digits, "
                    "'_' or '-'"
                )
            for _, _, tokenizer in encoders:
                if f"{name.lower()}</w>" in tokenizer.tokenizer.get_vocab():
                    raise ValueError(
                        f"{name!r} is already a word of the text encoder; a concept needs a name of its own "
                        f"(e.g. 'my_{name}')"
                    )
            existing = find_embedding(name, directories)
            if existing is not None and not overwrite:
                raise ValueError(
                    f"an embedding {name!r} exists already ({existing}); choose another name or set "
                    "overwrite to true"
                )


def _setting(name: str, low: int, high: int, tooltip: str):
    """An integer input whose default is the method's (``ConceptEMSettings``)."""
    return io.Int.Input(name, default=getattr(DEFAULTS, name), min=low, max=high, tooltip=tooltip)


class ConceptTokenEM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Concept Token EM",
            category="spatial_control/concepts",
            description="Learns the visual concepts that a few images share: one embedding per concept "
            "(saved to the embeddings folder, write embedding:<name> in any prompt) and each concept's mask "
            "in every image. The first masks are the objects the images share (co-segmentation on the "
            "model's features), then token optimisation and mask estimation from the tokens' "
            "cross-attention alternate. Optimises only the new embeddings; the MODEL and CLIP stay as "
            "they are.",
            inputs=[
                io.Image.Input("images", tooltip="A batch of images that share the concepts (one size)."),
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x or SDXL UNet)."),
                io.Clip.Input(
                    "clip", tooltip="The CLIP of the same checkpoint (CLIP-L, and CLIP-G for SDXL)."
                ),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint: encodes the images."),
                io.String.Input(
                    "concepts",
                    default="my_concept_a, my_concept_b",
                    tooltip="Names of the concepts to learn, separated by commas (or a number of concepts). "
                    "Each becomes the embedding file <name>.safetensors: write embedding:<name> in prompts.",
                ),
                io.String.Input(
                    "init_word",
                    default="object",
                    tooltip="A neutral one-token word every concept token starts from (never the concept's "
                    "own words, so nothing is given away).",
                ),
                _setting(
                    "warmup_steps",
                    1,
                    20000,
                    "Optimiser steps of the first round, on the first masks (connected, or found "
                    "by co-segmentation).",
                ),
                _setting(
                    "rounds",
                    0,
                    50,
                    "EM rounds after it: masked token optimisation, then new masks from the "
                    "tokens' attention. Once the masks are stable the remaining rounds only train the "
                    "tokens on them.",
                ),
                _setting("steps_per_round", 1, 20000, "Optimiser steps in each EM round."),
                _setting(
                    "vectors",
                    1,
                    8,
                    "Tokens per concept. More tokens hold more detail but compose less readily.",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=DEFAULTS.learning_rate,
                    min=1e-5,
                    max=1.0,
                    step=1e-4,
                    tooltip="Adam learning rate of the embeddings.",
                ),
                io.Float.Input(
                    "budget_seconds",
                    default=300.0,
                    min=0.0,
                    max=36000.0,
                    step=10.0,
                    tooltip="Time limit: past it the run stops after a last mask estimate (0 = no limit).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=True,
                    tooltip="Seed of the token initialisation, the noise and the steps: same seed, same "
                    "result.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing embedding file of the same name (else the node refuses).",
                ),
                io.Mask.Input(
                    "masks",
                    optional=True,
                    tooltip="Optional first masks, image by image and concept by concept (image 1 concept 1, "
                    "image 1 concept 2, ...); else the first masks are the objects the images share, found "
                    "by co-segmentation on the model's own features.",
                ),
            ],
            outputs=[
                io.Mask.Output(
                    display_name="masks",
                    tooltip="Each concept's mask in each image, in the order image 1 concept 1, image 1 "
                    "concept 2, ...",
                ),
                Regions.Output(display_name="regions", tooltip="The concepts' regions in the first image."),
                io.Image.Output(
                    display_name="preview", tooltip="Each image with its concepts' masks in colour."
                ),
                io.String.Output(
                    display_name="prompt",
                    tooltip="A prompt naming every learned concept (embedding:<name>), to start from.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, images, model, clip, vae, concepts, init_word, warmup_steps, rounds, steps_per_round, vectors,
        learning_rate, budget_seconds, seed, overwrite, masks=None,
    ) -> io.NodeOutput:  # fmt: skip
        directories = folder_paths.get_folder_paths("embeddings")
        names = parse_concept_names(concepts)
        with blame_input(NODE, "clip", UnknownTokenizerError):
            encoders = clip_encoders(clip)
        check_concept_names(encoders, names, directories, overwrite)
        check_init_word(encoders, init_word.strip())
        n, height, width = images.shape[0], images.shape[1], images.shape[2]
        if n == 0:
            with blame_input(NODE, "images", ValueError):
                raise ValueError("the batch is empty: connect at least one image (3-4 work best)")
        if masks is not None:
            masks = masks.reshape(-1, *masks.shape[-2:])
            with blame_input(NODE, "masks", ValueError):
                if masks.shape[0] != n * len(names):
                    raise ValueError(
                        f"has {masks.shape[0]} masks for {n} images x {len(names)} concepts; connect "
                        f"{n * len(names)} masks (image by image, concept by concept) or none"
                    )
                if tuple(masks.shape[-2:]) != (height, width):
                    raise ValueError(
                        f"masks are {masks.shape[-1]}x{masks.shape[-2]}, the images {width}x{height}; "
                        "resize them to the images' size"
                    )
            masks = masks.reshape(n, len(names), height, width)
        settings = replace(
            DEFAULTS, warmup_steps=warmup_steps, rounds=rounds, steps_per_round=steps_per_round,
            vectors=vectors, learning_rate=learning_rate,
        )  # fmt: skip
        progress = comfy.utils.ProgressBar(warmup_steps + rounds * steps_per_round)

        def on_step(done: int, total: int) -> None:
            progress.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        samples = vae.encode(images[..., :3])
        with blame_input(NODE, "model", UnsupportedModelError):
            result = learn_concepts(
                model, clip, samples, images, len(names), init_word.strip(), settings, seed, masks,
                budget_seconds or None, on_step,
            )  # fmt: skip
        for c, name in enumerate(names):
            save_embedding(
                Path(directories[0]) / f"{name}.safetensors",
                {k: v[c] for k, v in result.embeddings.items()},
                overwrite=overwrite,
            )
        learned = result.masks.float().cpu()
        regions = tuple(
            Region(f"embedding:{name}", learned[0, c])
            for c, name in enumerate(names)
            if learned[0, c].max() > 0
        )
        preview = torch.cat([regions_overlay(learned[i], images[i, ..., :3]) for i in range(n)])
        prompt = " and ".join(f"a embedding:{name}" for name in names)
        return io.NodeOutput(
            learned.reshape(-1, height, width), regions, preview, prompt, ui=ui.PreviewImage(preview, cls=cls)
        )
