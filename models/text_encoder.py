"""The demo model's text encoder: a small CLIP text transformer with the real CLIP BPE tokenizer.

Trained from scratch with the UNet (no pretrained text model exists here). It is a transformers
``CLIPTextModel`` so ComfyUI's own SD1 CLIP classes load it, and it stays differentiable for the
methods that optimise token embeddings. Prompts are tokenised exactly as ComfyUI's SD1 tokenizer
does: start token, BPE tokens, end token, padded with the end token to 77.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

START_TOKEN, END_TOKEN, CONTEXT_LENGTH, VOCAB_SIZE = 49406, 49407, 77, 49408


@dataclass(frozen=True)
class TextEncoderConfig:
    hidden_size: int = 64
    num_hidden_layers: int = 3
    num_attention_heads: int = 2
    intermediate_size: int = 256

    def transformers_config(self):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=CONTEXT_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=END_TOKEN,
            pad_token_id=1,
            **asdict(self),
        )

    def json_config(self) -> dict:
        """The config as ComfyUI's ``SDClipModel(textmodel_json_config=...)`` takes it."""
        return {k: v for k, v in self.transformers_config().to_dict().items() if not k.startswith("_")}


def build_text_encoder(config: TextEncoderConfig, seed: int = 0):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(config.transformers_config())


def load_clip_tokenizer(directory: Path):
    """The CLIP BPE tokenizer from a folder with ``vocab.json`` and ``merges.txt`` (ComfyUI ships
    one in ``comfy/sd1_tokenizer``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(Path(directory) / "vocab.json"), str(Path(directory) / "merges.txt"))


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """``[len(texts), 77]`` token ids: start, tokens, end, padded with the end token; truncated
    to 77 with the end token kept (prompts here are short)."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: CONTEXT_LENGTH - 2]
        ids = [START_TOKEN, *ids, END_TOKEN]
        rows.append(ids + [END_TOKEN] * (CONTEXT_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long)
