"""Captions as users write them: the prompt forms the demo model is trained and measured on.

The scenes' own caption (``Scene.caption``) is one template, a size word on every object
(``"a large red circle and a small blue square"``). Users write ``"a red circle and a blue square"``,
``"red circle, blue square"``, ``"a picture of an orange cross with a big green circle"``. A
:class:`CaptionStyle` describes one way of writing; :func:`write_caption` renders a scene's objects
in it and says which words of the caption belong to which object (the phrase each object's tokens
are found by), and :func:`random_style` draws one from the grammar below.

The benchmark's fixed forms (:data:`PROMPT_FORMS`) name the ways users write most often; words
outside the demo model's vocabulary (``UNKNOWN_WORD_EXAMPLES``) measure what it does with words it
never saw (their embeddings are zero, see ``models/text_encoder.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .vocabulary import COLOUR_NAMES, SHAPES

# What a size word can be written as: the first is the word the generator uses.
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
ARTICLES = ("a", "an", "the", "one", "")
PREFIXES = (
    "a picture of", "an image of", "a photo of", "a drawing of", "an illustration of", "a render of",
    "picture of", "image of", "there is", "there are", "a scene with", "shapes:",
)  # fmt: skip
SUFFIXES = (".", "on a dark background", "on a grey background", "on a gray background", "in the picture")
JOINERS = (" and ", ", ", ", and ", " with ", " & ", " together with ")
# Adjectives a user might add that the demo model was never trained on (zero embeddings): used by
# the benchmark's ``unknown_words`` form only, never in training.
UNKNOWN_WORD_EXAMPLES = ("shiny", "cute", "flat", "bright", "simple", "nice", "glossy", "neat")


@dataclass(frozen=True)
class CaptionStyle:
    """One way of writing a caption.

    ``sizes``: per object, whether its size word is written (cycled over the objects);
    ``article``: ``"a"`` (``"an"`` before a vowel, as English has it), ``"a!"`` (always ``"a"``),
    another of :data:`ARTICLES`, or ``""``; ``joiner``: between the last two objects, the others
    take ``", "`` unless ``joiner_all``; ``synonyms``: write size words with their synonyms from
    ``rng``; ``prefix``/``suffix``: words around the objects; ``adjectives``: per object, an extra
    word before it (``""`` for none, cycled).
    """

    sizes: tuple[bool, ...] = (True,)
    article: str = "a!"
    joiner: str = " and "
    joiner_all: bool = False
    synonyms: bool = False
    prefix: str = ""
    suffix: str = ""
    adjectives: tuple[str, ...] = ("",)


PROMPT_FORMS: dict[str, CaptionStyle] = {
    # the scenes' own template: "a large red circle, a small blue square and a large green cross"
    "sized": CaptionStyle(),
    # what users type first: "a red circle, a blue square and a green cross"
    "plain": CaptionStyle(sizes=(False,)),
    # size words on some objects, "an", commas: "an orange circle, a large blue square, a green cross"
    "mixed": CaptionStyle(sizes=(False, True), article="a", joiner=", ", joiner_all=True),
    # "a picture of a red circle with a blue square"
    "picture_of": CaptionStyle(sizes=(False,), joiner=" with ", prefix="a picture of"),
    # "red circle, blue square"
    "bare": CaptionStyle(sizes=(False,), article="", joiner=", ", joiner_all=True),
    # words the model never saw: "a shiny red circle and a cute blue square"
    "unknown_words": CaptionStyle(sizes=(False,), adjectives=UNKNOWN_WORD_EXAMPLES[:4]),
}


@dataclass(frozen=True)
class WrittenCaption:
    """A caption and, per object in order, the words of the caption that name it (``"red circle"``,
    ``"big red circle"``): what an object's tokens are located by."""

    text: str
    phrases: tuple[str, ...]


def _article(style: str, next_word: str) -> str:
    if style == "a":
        return "an" if next_word[0] in "aeiou" else "a"
    return "a" if style == "a!" else style


def write_caption(
    objects: Sequence, style: CaptionStyle = CaptionStyle(), rng: np.random.Generator | None = None
) -> WrittenCaption:
    """``objects``: items with ``colour``, ``shape`` and ``size`` (``SceneObject``s, ``PhraseTarget``s)."""
    if style.synonyms and rng is None:
        raise ValueError("a style with synonyms needs an rng")
    items, phrases = [], []
    for i, obj in enumerate(objects):
        words = [obj.colour, obj.shape]
        if style.sizes[i % len(style.sizes)]:
            size = obj.size if not style.synonyms else str(rng.choice(SIZE_SYNONYMS[obj.size]))
            words.insert(0, size)
        phrases.append(" ".join(words))
        adjective = style.adjectives[i % len(style.adjectives)]
        if adjective:
            words.insert(0, adjective)
        article = _article(style.article, words[0])
        items.append(" ".join([article, *words] if article else words))
    if len(items) <= 1:
        body = "".join(items)
    else:
        head = style.joiner if style.joiner_all else ", "
        body = head.join(items[:-1]) + style.joiner + items[-1]
    text = " ".join(part for part in (style.prefix, body) if part)
    if style.suffix:
        text += style.suffix if style.suffix == "." else " " + style.suffix
    return WrittenCaption(text, tuple(phrases))


def random_style(rng: np.random.Generator, n_objects: int, unknown_words: Sequence[str] = ()) -> CaptionStyle:
    """A style drawn from the grammar: each object's size word written with probability 1/2;
    articles, joiners, prefixes and suffixes varied; the scenes' template a quarter of the time.
    With ``unknown_words``, 15% of the styles put one of them before some objects (training on
    words outside the vocabulary teaches the model to pass over them)."""
    if rng.random() < 0.25:
        return CaptionStyle()
    sizes = tuple(bool(b) for b in rng.random(n_objects) < 0.5)
    adjectives: tuple[str, ...] = ("",)
    if len(unknown_words) and rng.random() < 0.15:
        adjectives = tuple(
            str(rng.choice(unknown_words)) if rng.random() < 0.5 else "" for _ in range(n_objects)
        )
    return CaptionStyle(
        sizes=sizes,
        article=str(rng.choice(["a", "a", "a!", "the", "one", ""])),
        joiner=str(rng.choice(JOINERS)),
        joiner_all=bool(rng.random() < 0.3),
        synonyms=bool(rng.random() < 0.3),
        prefix=str(rng.choice(PREFIXES)) if rng.random() < 0.3 else "",
        suffix=str(rng.choice(SUFFIXES)) if rng.random() < 0.2 else "",
        adjectives=adjectives,
    )


def vocabulary_words() -> tuple[str, ...]:
    """Every word the grammar writes (the demo text encoder keeps these embedding rows)."""
    words = {*COLOUR_NAMES, *SHAPES, *(w for s in SIZE_SYNONYMS.values() for w in s)}
    for text in (*ARTICLES, *PREFIXES, *SUFFIXES, *JOINERS):
        words.update(text.replace(",", " , ").replace(".", " . ").replace(":", " : ").split())
    return tuple(sorted(words))
