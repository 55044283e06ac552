"""Vocabulary of the shape world: palette, shapes, size words and backgrounds.

All pixel sizes refer to the reference 128x128 canvas; the generator scales them to other canvas sizes.
"""

from __future__ import annotations

import numpy as np

CANVAS = 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "purple": (150, 60, 200),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.uint8)

# circle: diameter = extent; square: side = extent; triangle: equilateral, side = extent, apex up;
# cross: plus sign inside an extent x extent square, arms extent / 3 wide.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

# Size word -> (min, max) object extent in pixels on the 128x128 canvas.
SIZES: dict[str, tuple[float, float]] = {"small": (26.0, 30.0), "large": (34.0, 46.0)}
SIZE_WORDS: tuple[str, ...] = tuple(SIZES)

PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)

BACKGROUND_GREY = (40, 40, 40)
# The variety the learned components (anchor ViT, grounding network) train on and are measured on:
# background kinds with their shares, and the share of scenes whose objects may be rotated (up to 45).
BACKGROUND_MIX: dict[str, float] = {"plain": 0.5, "noise": 0.25, "gradient": 0.25}
ROTATED_SHARE = 0.3
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "gradient")
# Textured backgrounds stay in this grey range with at most TINT per-channel deviation from neutral,
# so their chroma is tiny and no background pixel is ever close to a palette colour.
TEXTURE_RANGE = (25.0, 75.0)
TINT = 1.0


def phrase(colour: str, shape: str, size: str | None = None) -> str:
    """``"large red circle"`` (or ``"red circle"`` without a size)."""
    return f"{size} {colour} {shape}" if size else f"{colour} {shape}"


def parse_phrase(text: str) -> tuple[str | None, str, str]:
    """Inverse of :func:`phrase`: ``"a large red circle"`` -> ``("large", "red", "circle")``."""
    words = [w for w in text.lower().split() if w not in ("a", "an", "the")]
    size = words[0] if len(words) == 3 else None
    if len(words) not in (2, 3) or words[-2] not in COLOURS or words[-1] not in SHAPES:
        raise ValueError(f"not a shape-world phrase: {text!r}")
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown size word in {text!r}")
    return size, words[-2], words[-1]


def make_background(kind: str, size: int = CANVAS, rng: np.random.Generator | None = None) -> np.ndarray:
    """Background image (``size x size x 3`` uint8).

    ``plain``: constant ``BACKGROUND_GREY``. ``noise``: smooth low-contrast grey noise (8x8 random grid,
    bilinearly upsampled). ``gradient``: linear ramp between two greys in a random direction. Textured
    kinds stay inside ``TEXTURE_RANGE`` with a per-channel tint of at most ``TINT``.
    """
    if kind == "plain":
        return np.broadcast_to(np.array(BACKGROUND_GREY, np.uint8), (size, size, 3)).copy()
    rng = np.random.default_rng(0) if rng is None else rng
    lo, hi = TEXTURE_RANGE
    t = (np.arange(size) + 0.5) / size
    if kind == "noise":
        grid = rng.uniform(0.0, 1.0, (8, 8))
        pos = t * 7.0
        i0 = np.minimum(pos.astype(int), 6)
        f = pos - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        grey = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        base = rng.uniform(lo, hi - 20.0)
        grey = base + 20.0 * grey
    elif kind == "gradient":
        a, b = rng.uniform(lo, hi, 2)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        grey = a + (b - a) * ramp
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    tint = rng.uniform(-TINT, TINT, 3)
    return np.clip(np.rint(grey[..., None] + tint), 0, 255).astype(np.uint8)
