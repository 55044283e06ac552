"""Where a phrase's tokens sit in a prompt's conditioning (token index = chunk * 77 + position)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import PhraseNotFoundError


def find_token_positions(prompt_chunks: Sequence[Sequence[int]], phrase_ids: Sequence[int]) -> list[int]:
    """Indices in the flattened conditioning of the first occurrence of ``phrase_ids``.

    ``prompt_chunks`` are the prompt's token ids per 77-token chunk, start and end tokens
    included, exactly as the text encoder sees them; the returned indices count across chunks.
    Raises PhraseNotFoundError if the phrase does not occur (a phrase split across two chunks
    is still found).
    """
    phrase_ids = list(phrase_ids)
    if not phrase_ids:
        raise PhraseNotFoundError("the phrase is empty")
    flat: list[int] = []
    offsets: list[int] = []
    chunk_len = max((len(c) for c in prompt_chunks), default=0)
    for c, chunk in enumerate(prompt_chunks):
        flat.extend(chunk)
        offsets.extend(c * chunk_len + i for i in range(len(chunk)))
    n = len(phrase_ids)
    for start in range(len(flat) - n + 1):
        if flat[start : start + n] == phrase_ids:
            return offsets[start : start + n]
    raise PhraseNotFoundError("the phrase's tokens do not occur in the prompt")
