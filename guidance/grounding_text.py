"""Grounding texts as users write them: ``"put a green triangle to the left of the blue square"`` ->
the object to generate (``"green triangle"``), the relation (``"left of"``) and its anchor phrases.

TextGroundingMap's network reads the whole text; this parser names the phrase to generate (the REGIONS
phrase and the prompt) and says whether the relation is one the network was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Relation -> the ways it is written (the first is the canonical form).
RELATION_WORDINGS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of", "on the left side of"),
    "right of": ("right of", "to the right of", "on the right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "between": ("between",),
    "next to": ("next to", "beside"),
}
RELATIONS = tuple(RELATION_WORDINGS)
VERBS = ("add", "put", "place", "draw", "insert", "generate", "paint", "make")
POLITE = ("please", "can you", "could you")
ARTICLES = ("a", "an", "one", "the", "some")
PLACE_WORDS = ("in the image", "in the picture", "in the scene", "here")


@dataclass(frozen=True)
class GroundingRequest:
    """``phrase``: the object to generate, without article; ``relation``: canonical, or None when the
    text has none the network knows; ``anchors``: the phrases after the relation."""

    text: str
    phrase: str
    relation: str | None
    anchors: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return f"{'an' if self.phrase[:1] in 'aeiou' else 'a'} {self.phrase}" if self.phrase else ""


def _strip_words(text: str, words, leading: bool = True) -> str:
    changed = True
    while changed:
        changed = False
        for w in words:
            if leading and (text == w or text.startswith(w + " ")):
                text, changed = text[len(w) :].strip(), True
            elif not leading and (text == w or text.endswith(" " + w)):
                text, changed = text[: -len(w)].strip(), True
    return text


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def parse_grounding(text: str) -> GroundingRequest:
    """The object, relation and anchors of a grounding text (raises ValueError on an empty text)."""
    clean = _clean(text)
    if not clean:
        raise ValueError(
            "the text is empty; write what to add and where, e.g. 'a red circle left of the blue square'"
        )
    wordings = sorted(((w, r) for r, ws in RELATION_WORDINGS.items() for w in ws), key=lambda x: -len(x[0]))
    best = None
    for wording, relation in wordings:
        match = re.search(rf"(?:^| ){re.escape(wording)}(?: |$)", clean)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), match.end(), relation)
    head, relation, tail = (
        (clean, None, "") if best is None else (clean[: best[0]], best[2], clean[best[1] :])
    )
    head = _strip_words(head.strip(), POLITE)
    head = _strip_words(head, VERBS)
    head = _strip_words(head, ARTICLES)
    anchors: tuple[str, ...] = ()
    if tail.strip():
        tail = _strip_words(tail.strip(), PLACE_WORDS, leading=False)
        parts = [tail] if relation != "between" else re.split(r" and |, ", tail)
        anchors = tuple(_strip_words(p.strip(), ARTICLES) for p in parts if p.strip())
    return GroundingRequest(text, head, relation, anchors)


def grounding_vocabulary() -> tuple[str, ...]:
    """Every word the grounding texts are written with, besides the object words."""
    words: set[str] = {"and"}
    for group in (*RELATION_WORDINGS.values(), VERBS, POLITE, ARTICLES, PLACE_WORDS):
        for item in group:
            words.update(item.split())
    return tuple(sorted(words))
