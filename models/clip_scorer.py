"""A real CLIP (a transformers ``CLIPModel`` folder on local disk) as an image-text scorer, for methods
that score images against text (``guidance.region_proposer``) on checkpoints beyond the shape world."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.nn import functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPScorer:
    """Unit image and text features of a transformers CLIP; ``encode_image`` takes ``[n, 3, H, W]`` in
    [0, 1] (resized to the model's size) and is differentiable."""

    def __init__(self, model, tokenizer, mean=OPENAI_MEAN, std=OPENAI_STD):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.size = int(model.config.vision_config.image_size)
        self.mean = torch.tensor(mean).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std).reshape(1, 3, 1, 1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        features = _features(self.model.get_image_features(pixel_values=(x - self.mean) / self.std))
        return F.normalize(features, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        features = _features(self.model.get_text_features(**tokens))
        return F.normalize(features, dim=-1)


def load_clip_folder(folder: Path) -> CLIPScorer:
    """The CLIP in ``folder`` (``config.json``, ``model.safetensors``, tokenizer files; the mean and std
    of ``preprocessor_config.json`` if there is one). FileNotFoundError says what is missing."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder)
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CLIP folder {folder} lacks {' and '.join(missing)}; give a folder holding a transformers "
            "CLIPModel saved with save_pretrained (e.g. a downloaded openai/clip-vit-base-patch32)"
        )
    preprocessor = folder / "preprocessor_config.json"
    stats = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
    return CLIPScorer(
        CLIPModel.from_pretrained(str(folder)),
        CLIPTokenizer.from_pretrained(str(folder)),
        stats.get("image_mean", OPENAI_MEAN),
        stats.get("image_std", OPENAI_STD),
    )
