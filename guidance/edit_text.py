"""Edit instructions as users type them, split into what the region shows now and what it should show.

"make the circle green" -> source "circle", target "green circle"; "turn the red circle into a square" ->
"red circle" -> "red square"; "remove the blue cross" -> "blue cross" -> "" (background); "add a green
triangle next to the blue square" is recognised as an addition (kind "add"); anything else is taken as the
target description itself ("a green circle"), with the source from the node's optional source text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ARTICLE = r"(?:(?:a|an|the)\s+)?"
_NOUN_ARTICLE = r"(?:a|an)\s+"  # "into a square": a new thing; "to green": a new look of the same thing
_RECOLOUR_VERBS = r"(?:make|paint|colou?r|recolou?r|turn|change)"
_PATTERNS = (
    # A new object beside what is there ("add a green triangle next to the blue square"): no region of the
    # image shows it yet, so this is text grounding's task (TextGroundingMap), not a region to edit.
    ("add", re.compile(r"^(?:add|insert|put|place|draw)\s+(?P<new>.+)$")),
    (
        "remove",
        re.compile(
            rf"^(?:remove|delete|erase|get\s+rid\s+of|take\s+(?:away|out))\s+{_ARTICLE}(?P<source>.+)$"
        ),
    ),
    (
        "replace",
        re.compile(
            rf"^(?:turn|change)\s+{_ARTICLE}(?P<source>.+?)\s+(?:into|to)\s+{_NOUN_ARTICLE}(?P<new>.+)$"
        ),
    ),
    ("recolour", re.compile(rf"^(?:turn|change)\s+{_ARTICLE}(?P<source>.+?)\s+(?:into|to)\s+(?P<new>\S+)$")),
    ("replace", re.compile(rf"^replace\s+{_ARTICLE}(?P<source>.+?)\s+(?:with|by)\s+{_ARTICLE}(?P<new>.+)$")),
    ("replace", re.compile(rf"^make\s+{_ARTICLE}(?P<source>.+?)\s+{_NOUN_ARTICLE}(?P<new>.+)$")),
    ("recolour", re.compile(rf"^{_RECOLOUR_VERBS}\s+{_ARTICLE}(?P<source>.+?)\s+(?P<new>\S+)$")),
)
# Politeness around the instruction: "please ...", "can you ...?", "... please".
_POLITE = re.compile(r"^(?:(?:please|can\s+you|could\s+you|would\s+you),?\s+)+|(?:[\s,]+please)+$")


@dataclass(frozen=True)
class EditRequest:
    """``kind`` is "recolour" / "replace" / "remove" / "add" / "describe" (free text); ``source`` is the
    phrase of what is there now ("" if unknown), ``target`` what the region should show ("" for
    background; for "add", the new object and where it goes)."""

    kind: str
    source: str
    target: str

    @property
    def prompt(self) -> str:
        """What an editor generates in the region: the target with an article ("a green circle"), the
        user's own words for a free description, nothing (background) for a removal."""
        if self.kind in ("describe", "add") or not self.target:
            return self.target
        return f"a {self.target}"

    @property
    def negative(self) -> str:
        """The negative prompt of the edit: the object as it is now for a removal ("a blue cross"; an
        empty positive prompt alone often leaves it in place) and for a recolour (it steers the edit away
        from the old colour, where an edit with an empty negative often erased the object;
        docs/region_proposer.md), nothing otherwise."""
        return f"a {self.source}" if self.kind in ("remove", "recolour") and self.source else ""


def parse_edit(text: str, source_text: str = "") -> EditRequest:
    """The edit request of ``text``; a non-empty ``source_text`` replaces the parsed source phrase.
    Raises ValueError on an empty text."""
    clean = " ".join(text.strip().rstrip(".!?").split())
    instruction = _POLITE.sub("", clean.lower()).strip()
    if not instruction:
        raise ValueError("the edit text is empty; write what to change, e.g. 'make the circle green'")
    for kind, pattern in _PATTERNS:
        match = pattern.match(instruction)
        if match is None:
            continue
        if kind == "add":
            return EditRequest(kind, "", match["new"])
        source = match["source"]
        if kind == "remove":
            target = ""
        elif kind == "recolour":
            target = f"{match['new']} {source.split()[-1]}"
        else:
            new = match["new"]
            target = " ".join(source.split()[:-1] + [new]) if len(new.split()) == 1 else new
        return EditRequest(kind, source_text.strip() or source, target)
    return EditRequest("describe", source_text.strip(), clean)
