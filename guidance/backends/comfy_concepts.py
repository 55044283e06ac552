"""ComfyUI backend of concept learning: the CLIP's text encoders made differentiable, and the
embedding files that ComfyUI's tokenizer reads as ``embedding:name``.

ComfyUI's own CLIP text model cannot be back-propagated through (in-place residual additions,
inference-mode weights), so each of its CLIP-BPE encoders (``clip_l``, and ``clip_g`` for SDXL) gets
a transformers twin with the same weights, tokenisation, layer choice (CLIP skip included) and
layer norm; ``tests/test_concept_em_comfy.py`` checks the twin against CLIPTextEncode on the
saved embedding. SDXL's pooled text embedding and size conditioning stay those of the prompt with
the initialisation word: only the per-token conditioning follows the learned embeddings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import comfy.clip_model
import comfy.conds
import safetensors.torch
import torch

from ..concept_em import Words
from ..concept_text import PlaceholderClip, TokenLayout
from ..errors import UnknownTokenizerError

ENCODER_KEYS = ("l", "g")  # the order in which SDXL concatenates its encoders' outputs


def _twin(sub, device) -> torch.nn.Module:
    """A transformers ``CLIPTextModel`` with the weights of ComfyUI's ``SDClipModel`` ``sub``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text = sub.transformer.text_model
    layer = text.encoder.layers[0]
    activation = next(k for k, f in comfy.clip_model.ACTIVATIONS.items() if f is layer.mlp.activation)
    vocab, hidden = text.embeddings.token_embedding.weight.shape
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=layer.mlp.fc1.weight.shape[0],
        num_hidden_layers=len(text.encoder.layers),
        num_attention_heads=layer.self_attn.heads,
        max_position_embeddings=text.embeddings.position_embedding.weight.shape[0],
        hidden_act=activation,
        layer_norm_eps=layer.layer_norm1.eps,
        eos_token_id=text.eos_token_id,
    )
    with torch.inference_mode(False):
        model = CLIPTextModel(config)
        state = {k: v.detach().clone().float() for k, v in text.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UnknownTokenizerError(
            f"the CLIP's text model does not map onto CLIPTextModel (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); connect an SD1.x or SDXL CLIP"
        )
    return model.to(device).eval().requires_grad_(False)


def _layout(clip, sub, tokenizer) -> TokenLayout:
    """The hidden state ComfyUI reads for ``sub``: its default, or the CLIP's CLIP-skip setting."""
    layer, index, _ = sub.options_default
    skip = getattr(clip, "layer_idx", None)
    if skip is not None and layer != "all":
        layer, index = ("hidden", skip) if abs(skip) <= sub.num_layers else ("last", None)
    return TokenLayout(
        start=tokenizer.start_token,
        end=tokenizer.end_token,
        pad=tokenizer.end_token if tokenizer.pad_with_end else tokenizer.pad_token,
        length=tokenizer.max_length,
        layer_index=None if layer == "last" else index,
        norm_hidden=sub.layer_norm_hidden_state,
    )


def clip_encoders(clip) -> list[tuple[str, object, object]]:
    """``(key, SDClipModel, SDTokenizer)`` of each CLIP-BPE encoder of a ComfyUI CLIP, in SDXL order."""
    found = []
    for key in ENCODER_KEYS:
        sub = getattr(clip.cond_stage_model, f"clip_{key}", None)
        tokenizer = getattr(clip.tokenizer, f"clip_{key}", None)
        if sub is not None and tokenizer is not None and hasattr(sub, "transformer"):
            found.append((key, sub, tokenizer))
    if not found:
        raise UnknownTokenizerError(
            f"the connected CLIP ({type(clip.cond_stage_model).__name__}) has no CLIP-L/CLIP-G text "
            "encoder; connect the CLIP of an SD1.x or SDXL checkpoint"
        )
    return found


class ComfyConceptText:
    """``ConceptText`` for a ComfyUI CLIP: encodes into copies of ``base_cond`` (the processed
    conds of the prompt with the initialisation word) whose cross-attention context is replaced."""

    def __init__(self, clip, base_cond: list[dict], device):
        self.base_cond = base_cond
        self.encoders = {
            f"clip_{key}": PlaceholderClip(
                _twin(sub, device), tokenizer.tokenizer, _layout(clip, sub, tokenizer)
            )
            for key, sub, tokenizer in clip_encoders(clip)
        }

    def initial_embeddings(self, word: str, count: int, vectors: int = 1) -> dict[str, torch.Tensor]:
        return {
            key: enc.initial_row(word).float().repeat(count, vectors, 1) for key, enc in self.encoders.items()
        }

    def context(self, words: Words, embeddings: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        outputs, positions = [], None
        for key, encoder in self.encoders.items():
            hidden, positions = encoder.encode(words, embeddings[key])
            outputs.append(hidden)
        return torch.cat(outputs, -1), positions

    def encode(self, words: Words, embeddings: dict[str, torch.Tensor]):
        context, positions = self.context(words, embeddings)
        cond = [
            {**c, "model_conds": {**c["model_conds"], "c_crossattn": comfy.conds.CONDCrossAttn(context)}}
            for c in self.base_cond
        ]
        return cond, positions


def find_embedding(name: str, directories: list[str]) -> Path | None:
    """The embedding file ComfyUI would load for ``embedding:name``, if any."""
    for directory in directories:
        for suffix in ("", ".safetensors", ".pt", ".bin"):
            path = Path(directory) / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def save_embedding(path: Path, rows: dict[str, torch.Tensor], overwrite: bool = False) -> Path:
    """Write one concept's ``{"clip_l": [vectors, dim], ...}`` atomically (a temporary file in the same
    folder, then a rename); an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another concept name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().reshape(-1, v.shape[-1]).contiguous() for k, v in rows.items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        safetensors.torch.save_file(tensors, temporary, metadata={"format": "spatial_control.concept"})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def learn_concepts(
    model_patcher, clip, samples: torch.Tensor, images: torch.Tensor, count: int, init_word: str, settings,
    seed: int = 0, initial_masks=None, budget_seconds=None, on_step=None, layers: str = "all",
):  # fmt: skip
    """Run ``ConceptEM`` on VAE latents ``samples`` of ``images`` (an IMAGE batch ``[n, H, W, 3]``)
    with the MODEL and CLIP of a ComfyUI graph."""
    from ..attention_store import select_layers
    from ..concept_em import ConceptEM, concept_words
    from .comfy import cross_attention_layers, install_attention_capture, loaded_denoiser

    chosen = select_layers(cross_attention_layers(model_patcher), layers)
    patched = install_attention_capture(model_patcher, chosen)
    prompt = " ".join(p if isinstance(p, str) else init_word for p in concept_words(range(count)))
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    with loaded_denoiser(patched, conditioning, samples.shape, seed) as (denoiser, cond):
        device = model_patcher.load_device
        text = ComfyConceptText(clip, cond, device)
        x0 = model_patcher.model.process_latent_in(samples.to(device, torch.float32))
        sigmas = model_patcher.get_model_object("model_sampling").sigmas.float().to(device)
        em = ConceptEM(denoiser, text, chosen, sigmas, settings)
        pixels = images[..., :3].movedim(-1, 1).to(device, torch.float32)
        return em.run(x0, pixels, count, init_word, seed, initial_masks, budget_seconds, on_step)
