"""A CLIP text transformer whose placeholder tokens take free input embeddings, differentiably.

The text side of concept learning (``concept_em``): a prompt is a list of text pieces and concept
indices; each concept index becomes one token whose input embedding is a row of a tensor being
optimised, everything else is the model's own. It reproduces what a host computes for the same
prompt with the learned embedding written in (ComfyUI's ``embedding:name``), so the tokens learned
here mean the same in users' prompts. Works on a transformers ``CLIPTextModel`` (or anything with
its ``embeddings`` / ``encoder.layers`` / ``final_layer_norm`` layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .concept_em import Words


@dataclass(frozen=True)
class TokenLayout:
    """How a host tokenises: special tokens, padding, length, and which hidden state it reads
    (``layer_index`` None: the final layer norm of the last layer's output; else the output of layer
    ``layer_index``, counted from 0 or from the end like ComfyUI's CLIP skip, with the final layer
    norm applied if ``norm_hidden``)."""

    start: int = 49406
    end: int = 49407
    pad: int = 49407
    length: int = 77
    layer_index: int | None = None
    norm_hidden: bool = True


class PlaceholderClip:
    def __init__(self, text_model, tokenizer, layout: TokenLayout = TokenLayout()):
        self.model = text_model
        self.tokenizer = tokenizer  # a transformers CLIPTokenizer (BPE)
        self.layout = layout
        self.vocab = text_model.embeddings.token_embedding.num_embeddings

    def word_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def initial_row(self, word: str) -> torch.Tensor:
        """The input embedding of ``word``, which must be a single token."""
        ids = self.word_ids(word)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"{word!r} is {len(ids)} tokens {pieces}; use a word that is one token")
        return self.model.embeddings.token_embedding.weight[ids[0]].detach().clone()

    def token_ids(self, words: Words, vectors: int = 1) -> tuple[torch.Tensor, dict[int, list[int]]]:
        """``[1, length]`` ids and each concept's positions: concept ``c`` is ``vectors`` tokens,
        placeholder ids ``vocab + c * vectors + j``."""
        ids, positions = [self.layout.start], {}
        for piece in words:
            if isinstance(piece, str):
                ids += self.word_ids(piece)
            else:
                c = int(piece)
                positions[c] = list(range(len(ids), len(ids) + vectors))
                ids += [self.vocab + c * vectors + j for j in range(vectors)]
        ids.append(self.layout.end)
        if len(ids) > self.layout.length:
            raise ValueError(f"the prompt is {len(ids)} tokens, more than {self.layout.length}")
        ids += [self.layout.pad] * (self.layout.length - len(ids))
        return torch.tensor([ids]), positions

    def encode(self, words: Words, rows: torch.Tensor) -> tuple[torch.Tensor, dict[int, list[int]]]:
        """Hidden states ``[1, length, dim]`` as the host reads them, differentiable in ``rows``
        ``[concepts, vectors, dim]``, and the positions of each concept index."""
        ids, positions = self.token_ids(words, rows.shape[1])
        rows = rows.reshape(-1, rows.shape[-1])
        model = self.model
        weight = model.embeddings.token_embedding.weight
        ids = ids.to(weight.device)
        placeholder = ids >= self.vocab
        known = model.embeddings.token_embedding(ids.clamp(max=self.vocab - 1)).float()
        free = rows.float().to(weight.device)[(ids - self.vocab).clamp(0, len(rows) - 1)]
        embeds = torch.where(placeholder[..., None], free, known).to(weight.dtype)
        hidden = model.embeddings(inputs_embeds=embeds)
        n = hidden.shape[1]
        causal = torch.full((n, n), torch.finfo(hidden.dtype).min, device=hidden.device).triu(1)[None, None]
        states = [hidden]
        for layer in model.encoder.layers:
            hidden = layer(hidden, causal)
            states.append(hidden)
        index = self.layout.layer_index
        if index is None:
            return model.final_layer_norm(hidden).float(), positions
        chosen = states[index + 1] if index >= 0 else states[index]
        return (model.final_layer_norm(chosen) if self.layout.norm_hidden else chosen).float(), positions
