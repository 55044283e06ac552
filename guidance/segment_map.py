"""Segment maps: a colour-coded IMAGE plus one free-form text per colour, split into region masks.

SpaText (Avrahami et al., "SpaText: Spatio-Textual Representation for Controllable Image
Generation", CVPR 2023, arXiv:2211.14305) lets a user paint the regions of interest of an image and
describe each in its own words; the map is sparse: what is left unpainted (the background) is
described by the global prompt alone.

The texts are lines a user writes by hand, ``#rrggbb: text`` or ``#rgb: text`` (case, spaces and
blank lines free). Each pixel goes to the nearest listed colour or to the background colour, so
the anti-aliased fringe a paint program leaves between two colours is split between them; a colour
that no line lists and that is painted over an area (not only a thin fringe) is refused, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import RegionTextError, SegmentMapError

# Each region adds a 77-token chunk to every cross-attention call (16 regions: 17 times the tokens
# of a plain prompt), and colours twice TOLERANCE apart run out well before RGB does for hand-picked ones.
MAX_REGIONS = 16
# RGB distance (channels in [0, 1]) within which a pixel is the listed colour: JPEG noise and
# slight shading pass, and two listed colours must be twice this apart.
TOLERANCE = 0.1
# Pixels far from every listed colour are anti-aliasing when they lie within this many pixels of
# a well-coloured pixel; an area wider than twice this is a colour painted on purpose.
FRINGE = 2

_LINE = re.compile(r"#\s*([0-9a-f]{6}|[0-9a-f]{3})\s*:(.*)", re.IGNORECASE)
_COLOUR = re.compile(r"#?\s*([0-9a-f]{6}|[0-9a-f]{3})", re.IGNORECASE)

Colour = tuple[int, int, int]  # 0..255 per channel


@dataclass(frozen=True)
class RegionText:
    colour: Colour
    text: str
    line: int  # 1-based line of the region texts it was written on

    @property
    def hex(self) -> str:
        return to_hex(self.colour)


def to_hex(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _digits_to_colour(digits: str) -> Colour:
    if len(digits) == 3:
        digits = "".join(2 * c for c in digits)
    return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))


def parse_colour(text: str) -> Colour:
    """``'#ff0000'``, ``'ff0000'`` or ``'#f00'`` (any case) -> ``(255, 0, 0)``."""
    match = _COLOUR.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a colour: write it as #rrggbb or #rgb, e.g. #000000")
    return _digits_to_colour(match.group(1))


def parse_region_texts(text: str) -> list[RegionText]:
    """One ``RegionText`` per non-blank line ``#rrggbb: text`` of ``text``, in order."""
    entries: list[RegionText] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise RegionTextError(
                f"line {number} ({line!r}) is not of the form '#rrggbb: text', e.g. '#ff0000: a red circle'"
            )
        colour, description = _digits_to_colour(match.group(1)), " ".join(match.group(2).split())
        if not description:
            raise RegionTextError(
                f"colour {to_hex(colour)} (line {number}) has no text: describe what its region shows"
            )
        earlier = next((e for e in entries if e.colour == colour), None)
        if earlier is not None:
            raise RegionTextError(
                f"colour {to_hex(colour)} is listed on lines {earlier.line} and {number}: give each colour "
                "one line (write both descriptions on it)"
            )
        entries.append(RegionText(colour, description, number))
    if not entries:
        raise RegionTextError(
            "lists no region: write one line per painted colour, e.g. '#ff0000: a red circle'"
        )
    if len(entries) > MAX_REGIONS:
        raise RegionTextError(
            f"lists {len(entries)} regions, more than the {MAX_REGIONS} a spatio-textual conditioning takes: "
            "merge regions that share a description into one colour"
        )
    return entries


def _check_palette(entries: list[RegionText], background: Colour) -> None:
    """Listed colours must differ from the background and from each other by twice the tolerance."""
    named = [(e.colour, f"colour {e.hex} (line {e.line})") for e in entries]
    named.append((background, f"the background colour {to_hex(background)}"))
    for i, (a, name_a) in enumerate(named):
        for b, name_b in named[i + 1 :]:
            if torch.dist(torch.tensor(a) / 255.0, torch.tensor(b) / 255.0) < 2 * TOLERANCE:
                raise RegionTextError(
                    f"{name_a} and {name_b} are too close to tell apart in the segment map: paint and "
                    "list colours that differ clearly (e.g. #ff0000 and #0000ff)"
                )


def _most_common(pixels: torch.Tensor, where: torch.Tensor) -> Colour:
    codes = (pixels[where] * 255).round().long()
    values, counts = codes.unique(dim=0, return_counts=True)
    return tuple(int(c) for c in values[counts.argmax()])


def split_segment_map(
    image: torch.Tensor, entries: list[RegionText], background: Colour = (0, 0, 0)
) -> torch.Tensor:
    """``[len(entries), H, W]`` hard masks of the segment map ``image`` ``[H, W, 3]`` (values in
    [0, 1]), one per listed colour; background pixels are in none of them."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise SegmentMapError(f"expected one RGB image [height, width, 3], got shape {tuple(image.shape)}")
    _check_palette(entries, background)
    pixels = image.float().cpu().clamp(0, 1)
    palette = torch.tensor([*(e.colour for e in entries), background], dtype=torch.float32) / 255.0
    distance = (pixels[..., None, :] - palette).norm(dim=-1)  # [H, W, colours]
    nearest_distance, nearest = distance.min(-1)
    far = nearest_distance > TOLERANCE
    # erosion: a far pixel whose whole neighbourhood is far lies inside a painted area
    core = -F.max_pool2d(-far.float()[None, None], 2 * FRINGE + 1, stride=1, padding=FRINGE)[0, 0] > 0.5
    if core.any():
        colour = _most_common(pixels, core)
        count = int((far & ((pixels - torch.tensor(colour) / 255.0).norm(dim=-1) <= TOLERANCE)).sum())
        raise SegmentMapError(
            f"has {count} pixels of {to_hex(colour)}, a colour no line of region_texts lists: add a line for "
            f"it ('{to_hex(colour)}: what it shows') or paint them in the background colour "
            f"{to_hex(background)}"
        )
    for index, entry in enumerate(entries):
        if not ((nearest == index) & ~far).any():
            raise RegionTextError(
                f"colour {entry.hex} (line {entry.line}, {entry.text!r}) is not in the segment map: paint "
                "its region in exactly that colour, or remove the line"
            )
    return torch.stack([(nearest == index).float() for index in range(len(entries))])


# Label colours for regions given as MASKs (previews and the texts' optional colour prefixes).
MASK_PALETTE: tuple[Colour, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (245, 130, 48), (170, 110, 40), (128, 128, 0), (0, 128, 128), (220, 190, 255),
    (128, 0, 0), (170, 255, 195), (0, 0, 128), (255, 250, 200),
)  # fmt: skip


def parse_mask_texts(text: str, count: int) -> list[RegionText]:
    """One ``RegionText`` per non-blank line for ``count`` region MASKs, in the masks' order: each
    line is the text (a ``#rrggbb:`` prefix, as for a segment map, is allowed and ignored; the
    colour given is the mask's preview colour from :data:`MASK_PALETTE`)."""
    if count > MAX_REGIONS:
        raise SegmentMapError(
            f"has {count} masks, more than the {MAX_REGIONS} regions a spatio-textual conditioning takes"
        )
    lines = [(number, raw.strip()) for number, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if len(lines) != count:
        raise RegionTextError(
            f"has {len(lines)} non-blank lines for {count} masks: write one line per mask, in their order"
        )
    entries = []
    for (number, line), colour in zip(lines, MASK_PALETTE, strict=False):
        match = _LINE.fullmatch(line)
        description = " ".join((match.group(2) if match else line).split())
        if not description:
            raise RegionTextError(f"line {number} has no text: describe what mask {len(entries) + 1} shows")
        entries.append(RegionText(colour, description, number))
    return entries
