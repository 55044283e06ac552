"""Where a phrase's tokens sit in a prompt's conditioning (token index = chunk * 77 + position)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import PhraseNotFoundError, RepeatedPhraseError


def find_token_positions(
    prompt_chunks: Sequence[Sequence[int]], phrase_ids: Sequence[int], first_of_several: bool = False
) -> list[int]:
    """Indices in the flattened conditioning of the occurrence of ``phrase_ids``.

    ``prompt_chunks`` are the prompt's token ids per 77-token chunk, start and end tokens
    included, exactly as the text encoder sees them; the returned indices count across chunks.
    Raises PhraseNotFoundError if the phrase does not occur (a phrase split across two chunks
    is still found), and RepeatedPhraseError if it occurs more than once, unless
    ``first_of_several`` asks for the first occurrence.
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
    starts = [start for start in range(len(flat) - n + 1) if flat[start : start + n] == phrase_ids]
    if not starts:
        raise PhraseNotFoundError("the phrase's tokens do not occur in the prompt")
    if len(starts) > 1 and not first_of_several:
        raise RepeatedPhraseError(
            f"the phrase occurs {len(starts)} times in the prompt, so it does not say which object it is"
        )
    return offsets[starts[0] : starts[0] + n]


# Words too common to tie a prompt's token to one region (English function words and punctuation).
STOP_WORDS = ("a", "an", "the", "one", "some", "of", "on", "in", "at", "to", "with", "and", "or", "is",
              "are", "this", "that", ",", ".", "!", ";", ":")  # fmt: skip


def shared_token_positions(
    prompt_chunks: Sequence[Sequence[int]], text_ids: Sequence[int], skip_ids: Sequence[int] = ()
) -> list[int]:
    """Indices in the flattened conditioning of the prompt's tokens that also occur in ``text_ids``
    (e.g. a region's own text), leaving out ``skip_ids`` (start, end and padding tokens, stop words):
    the prompt's words for what that region shows."""
    wanted = set(text_ids) - set(skip_ids)
    chunk_len = max((len(c) for c in prompt_chunks), default=0)
    return [
        c * chunk_len + i for c, chunk in enumerate(prompt_chunks) for i, t in enumerate(chunk) if t in wanted
    ]
