"""The real CLIP BPE tokenizer from the folder ComfyUI ships it in (``comfy/sd1_tokenizer``), for the
pack's own small models that read text (ShapeCLIP, the grounding network)."""

import os
from pathlib import Path

import comfy.sd1_clip

from ..models.text_encoder import load_clip_tokenizer


def comfy_clip_tokenizer():
    return load_clip_tokenizer(Path(os.path.dirname(comfy.sd1_clip.__file__)) / "sd1_tokenizer")
