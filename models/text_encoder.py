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


def compact_token_rows(weight: torch.Tensor, keep_token_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, ids)``: only the embedding rows of ``keep_token_ids`` (the words a model was trained on;
    the other 49k rows of a small model never were), to store; :func:`expand_token_rows` undoes it."""
    ids = torch.tensor(sorted(set(int(i) for i in keep_token_ids)), dtype=torch.long)
    return weight[ids], ids


def expand_token_rows(rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The full ``[VOCAB_SIZE, hidden]`` embedding: ``rows`` at ``ids``, zeros elsewhere."""
    full = torch.zeros(VOCAB_SIZE, rows.shape[1], dtype=rows.dtype)
    full[ids.long()] = rows
    return full


def canonical_text_keys(state: dict, prefix: str = "") -> dict:
    """Keys under ``prefix`` written with ``text_model.`` (ComfyUI's SD1 and transformers 4 names;
    transformers 5 drops it), so a weights file reads the same whichever transformers wrote it."""
    inner = prefix + "text_model."
    return {k if not k.startswith(prefix) or k.startswith(inner) else inner + k[len(prefix):]: v
            for k, v in state.items()}  # fmt: skip


def installed_text_keys(state: dict, expected_keys, prefix: str = "") -> dict:
    """Inverse of :func:`canonical_text_keys` for the installed transformers: each key as the module
    names it (``expected_keys``)."""
    expected = set(expected_keys)
    inner = prefix + "text_model."
    return {
        k if k in expected or not k.startswith(inner) else prefix + k[len(inner) :]: v
        for k, v in state.items()
    }
