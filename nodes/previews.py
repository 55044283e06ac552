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
