"""Multi-conditional classifier-free guidance: one scale for the global prompt, one for the spatial map.

SpaText (Avrahami et al., CVPR 2023, arXiv:2211.14305, section "Multi-Conditional Classifier-Free
Guidance") conditions on a global text ``c_global`` and a spatio-textual representation ``c_ST``
and extends classifier-free guidance to give each its own scale (multi-scale inference, three
model evaluations per step):

    e = e(x | 0, 0) + s_global * (e(x | c_global, 0) - e(x | 0, 0))
                    + s_full   * (e(x | c_global, c_ST) - e(x | c_global, 0))

and, as the faster alternative, one scale for both conditions together (single-scale, two
evaluations, i.e. plain CFG on the joint condition):

    e = e(x | 0, 0) + s * (e(x | c_global, c_ST) - e(x | 0, 0))

``s_global = s_full = s`` turns the first into the second. Here the unconditional prediction is
the negative prompt's, ``e(x | c_global, 0)`` the global prompt's alone and ``e(x | c_global, c_ST)``
the spatio-textual conditioning's (the global prompt with the region texts, attention-masked to
their regions). The multi-scale form is computed as the single-scale one plus a correction,
``(s_global - s_full) * (e_global - e_uncond)``, which is exactly zero for equal scales, so that
case is bit for bit plain CFG. All is linear in the predictions: it holds for noise and
x0-predictions alike.
"""

from __future__ import annotations

import torch

Scale = float | torch.Tensor  # a tensor broadcasts against the predictions, e.g. [batch, 1, 1, 1]


def single_scale_cfg(uncond: torch.Tensor, joint: torch.Tensor, scale: Scale) -> torch.Tensor:
    """``e_uncond + s * (e_joint - e_uncond)`` (ComfyUI's own CFG order of operations)."""
    return uncond + (joint - uncond) * scale


def global_correction(
    uncond: torch.Tensor, global_: torch.Tensor, global_scale: Scale, spatial_scale: Scale
) -> torch.Tensor:
    """What multi-scale guidance adds to single-scale guidance at ``spatial_scale``:
    ``(s_global - s_full) * (e_global - e_uncond)``."""
    return (global_ - uncond) * (global_scale - spatial_scale)


def multi_scale_cfg(
    uncond: torch.Tensor,
    global_: torch.Tensor,
    joint: torch.Tensor,
    global_scale: Scale,
    spatial_scale: Scale,
) -> torch.Tensor:
    """``e_uncond + s_global * (e_global - e_uncond) + s_full * (e_joint - e_global)``."""
    return single_scale_cfg(uncond, joint, spatial_scale) + global_correction(
        uncond, global_, global_scale, spatial_scale
    )
