"""Preview images of maps and masks for the UI."""

import torch


def heatmap(maps: torch.Tensor) -> torch.Tensor:
    """``[n, h, w]`` maps in [0, 1] -> ``[n, h, w, 3]`` IMAGE, dark blue (0) through red to yellow (1)."""
    m = maps.clamp(0, 1)
    return torch.stack([(1.6 * m).clamp(0, 1), (2.0 * m - 1.0).clamp(0, 1), 0.35 * (1 - m)], -1)
