"""Preview images of maps and masks for the UI."""

import torch


def heatmap(maps: torch.Tensor) -> torch.Tensor:
    """``[n, h, w]`` maps in [0, 1] -> ``[n, h, w, 3]`` IMAGE, dark blue (0) through red to yellow (1)."""
    m = maps.clamp(0, 1)
    return torch.stack([(1.6 * m).clamp(0, 1), (2.0 * m - 1.0).clamp(0, 1), 0.35 * (1 - m)], -1)


REGION_COLOURS = torch.tensor(
    [[0.9, 0.2, 0.2], [0.2, 0.5, 0.95], [0.2, 0.8, 0.3], [0.95, 0.8, 0.15], [0.7, 0.3, 0.9], [0.1, 0.8, 0.8]]
)


def regions_overlay(masks: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, h, w]`` region masks -> one ``[1, h, w, 3]`` IMAGE, each region in its own colour, over
    ``image`` ``[h, w, 3]`` (dimmed) or black."""
    base = torch.zeros(*masks.shape[-2:], 3) if image is None else 0.4 * image.float().cpu()
    out = base
    for i, mask in enumerate(masks.float().cpu()):
        colour = REGION_COLOURS[i % len(REGION_COLOURS)]
        alpha = 0.75 * mask[..., None]
        out = out * (1 - alpha) + colour * alpha
    return out.clamp(0, 1)[None]


def _outline(image: torch.Tensor, box, colour, width: int) -> None:
    """Draw the fractional ``box`` into ``image [H, W, 3]`` in place."""
    h, w = image.shape[:2]
    x0, y0 = int(box[0] * w), int(box[1] * h)
    x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
    c = torch.tensor(colour, dtype=image.dtype)
    image[y0 : min(y0 + width, y1), x0:x1] = c
    image[max(y1 - width, y0) : y1, x0:x1] = c
    image[y0:y1, x0 : min(x0 + width, x1)] = c
    image[y0:y1, max(x1 - width, x0) : x1] = c


def proposal_preview(image: torch.Tensor, proposal) -> torch.Tensor:
    """``[1, H, 2W, 3]``: ``image [H, W, 3]`` with the proposal's anchors (white dots), each anchor's most
    likely region (thin, grey) and the chosen region (green, or red when nothing relevant was found),
    beside the chosen region's trial edit."""
    h, w = image.shape[:2]
    left = image.clone()
    thin = max(1, min(h, w) // 128)
    sizes = proposal.probabilities.shape[1]
    for a, s in enumerate(proposal.probabilities.argmax(1).tolist()):
        _outline(left, proposal.candidates[a * sizes + s].tolist(), (0.6, 0.6, 0.6), thin)
    _outline(left, proposal.box, (0.1, 0.9, 0.2) if proposal.found else (0.95, 0.1, 0.1), 2 * thin)
    for x, y in proposal.anchors.tolist():
        cx, cy = min(int(x * w), w - 1), min(int(y * h), h - 1)
        left[max(cy - thin, 0) : cy + thin + 1, max(cx - thin, 0) : cx + thin + 1] = 1.0
    edited = proposal.edited.movedim(0, -1).float().cpu()
    return torch.cat([left, edited], 1).clamp(0, 1)[None]


def grounding_preview(image: torch.Tensor, heat: torch.Tensor, placement, confident: bool) -> torch.Tensor:
    """``[1, H, W, 3]``: ``image [H, W, 3]`` under the centre heat map ``heat [H, W]`` (alpha follows the
    heat), with the placement's box in green, or red when the map is unsure, and a white dot at its centre."""
    h, w = image.shape[:2]
    alpha = 0.6 * heat.clamp(0, 1)[..., None]
    out = image * (1 - alpha) + heatmap(heat[None])[0] * alpha
    thin = max(1, min(h, w) // 128)
    _outline(out, placement.box, (0.1, 0.9, 0.2) if confident else (0.95, 0.1, 0.1), 2 * thin)
    cx, cy = min(int(placement.centre[0] * w), w - 1), min(int(placement.centre[1] * h), h - 1)
    out[max(cy - thin, 0) : cy + thin + 1, max(cx - thin, 0) : cx + thin + 1] = 1.0
    return out.clamp(0, 1)[None]


def segment_preview(segment_map: torch.Tensor, masks: torch.Tensor, colours: list[tuple[int, int, int]]):
    """``[1, H, 2W, 3]``: the segment map ``[H, W, 3]`` beside the regions it was parsed into, each
    filled with its listed colour (anti-aliased edges resolved) over a grey checkerboard where no
    region is (the background, described by the global prompt alone)."""
    h, w = masks.shape[-2:]
    cell = max(4, min(h, w) // 16)
    ys, xs = torch.arange(h)[:, None] // cell, torch.arange(w)[None, :] // cell
    parsed = (0.35 + 0.15 * ((ys + xs) % 2).float())[..., None].expand(h, w, 3).clone()
    for mask, colour in zip(masks.cpu(), colours, strict=True):
        parsed[mask > 0.5] = torch.tensor(colour, dtype=torch.float32) / 255.0
    return torch.cat([segment_map.float().cpu(), parsed], 1).clamp(0, 1)[None]
