"""Grounding texts written the ways users write them, for a :class:`GroundingTask`.

The generator's text is one template (``"a large green triangle left of the blue square"``); users
write ``"put a green triangle to the left of the blue square"``, ``"add an orange cross beside the red
circle in the picture"``. :func:`write_grounding_text` draws a verb, politeness, size word, relation
wording (``guidance.grounding_text.RELATION_WORDINGS``) and a place suffix from the task's own rng.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spatial_control.guidance.grounding_text import PLACE_WORDS, RELATION_WORDINGS, VERBS

from .captions import SIZE_SYNONYMS
from .generator import RELATIONS, sample_grounding
from .vocabulary import BACKGROUND_MIX, COLOUR_NAMES, ROTATED_SHARE, SHAPES, phrase


def _with_article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def write_grounding_text(task, rng: np.random.Generator, size_word: bool | None = None) -> str:
    """A text for ``task``: size word of the object with probability 1/2 (or as ``size_word`` says),
    a verb 60% of the time ("please" before it 10%), any of the relation's wordings, an anchor's size
    word 15% of the time, a place suffix 15%."""
    target = task.target
    sized = bool(rng.random() < 0.5) if size_word is None else size_word
    size = str(rng.choice(SIZE_SYNONYMS[target.size])) if sized else None
    words = [_with_article(phrase(target.colour, target.shape, size))]
    if rng.random() < 0.6:
        words.insert(0, str(rng.choice(VERBS)))
        if rng.random() < 0.1:
            words.insert(0, "please")
    words.append(str(rng.choice(RELATION_WORDINGS[task.relation])))
    anchors = []
    pairs = task.full_scene.pairs
    for colour, shape in task.anchors:
        # an anchor the scene lacks (a text that cannot be grounded) never gets a size word
        present = (colour, shape) in pairs
        size = task.full_scene.objects[pairs.index((colour, shape))].size if present else None
        anchors.append("the " + phrase(colour, shape, size if rng.random() < 0.15 else None))
    words.append(" and ".join(anchors))
    if rng.random() < 0.15:
        words.append(str(rng.choice(PLACE_WORDS)))
    return " ".join(words)


def absent_pair(task, rng: np.random.Generator) -> tuple[str, str]:
    """A (colour, shape) that no object of the task's scene has (for texts whose anchor is missing)."""
    present = set(task.full_scene.pairs)
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
    return pairs[int(rng.integers(len(pairs)))]


@dataclasses.dataclass(frozen=True)
class WrittenGrounding:
    task: object  # GroundingTask (with an absent anchor when not ``present``)
    text: str
    present: bool  # False: the text names an anchor the scene lacks


def written_grounding(split: str, index: int, seed: int = 0, absent_share: float = 0.0) -> WrittenGrounding:
    """Grounding task ``index`` of ``split`` with relation ``RELATIONS[index % 6]`` (every relation as
    often), over a background and with rotations drawn from ``(seed, index)``, its text written by
    :func:`write_grounding_text`; with probability ``absent_share`` one anchor is swapped for an object
    the scene lacks."""
    rng = np.random.default_rng([seed, 31, index])
    background = str(rng.choice(list(BACKGROUND_MIX), p=list(BACKGROUND_MIX.values())))
    rotation = 45.0 if rng.random() < ROTATED_SHARE else 0.0
    relation = RELATIONS[index % len(RELATIONS)]
    task = sample_grounding(split, index, relation=relation, background=background, max_rotation=rotation)
    present = not rng.random() < absent_share
    if not present:
        anchors = list(task.anchors)
        anchors[int(rng.integers(len(anchors)))] = absent_pair(task, rng)
        task = dataclasses.replace(task, anchors=tuple(anchors))
    return WrittenGrounding(task, write_grounding_text(task, rng), present)
