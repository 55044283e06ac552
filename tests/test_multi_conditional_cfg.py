"""SpaText's multi-conditional classifier-free guidance on predictions."""

import torch

from spatial_control.guidance.multi_conditional_cfg import (
    global_correction,
    multi_scale_cfg,
    single_scale_cfg,
)


def _predictions(shape=(2, 4, 8, 8)):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) for _ in range(3)]  # uncond, global, joint


def test_equal_scales_are_plain_cfg_bit_for_bit():
    uncond, global_, joint = _predictions()
    for scale in (0.0, 1.0, 4.5, 7.0):
        plain = uncond + (joint - uncond) * scale  # ComfyUI's cfg_function
        assert torch.equal(multi_scale_cfg(uncond, global_, joint, scale, scale), plain)
        assert torch.equal(single_scale_cfg(uncond, joint, scale), plain)


def test_multi_scale_is_the_papers_formula():
    uncond, global_, joint = _predictions()
    s_global, s_full = 3.0, 8.0
    paper = uncond + s_global * (global_ - uncond) + s_full * (joint - global_)
    assert torch.allclose(multi_scale_cfg(uncond, global_, joint, s_global, s_full), paper, atol=1e-5)
    # no spatial guidance beyond the global prompt: CFG towards the global prompt alone
    at_global = multi_scale_cfg(uncond, global_, joint, s_global, 0.0)
    assert torch.allclose(at_global, single_scale_cfg(uncond, global_, s_global), atol=1e-6)
    assert not torch.allclose(at_global, single_scale_cfg(uncond, joint, s_global), atol=1e-3)


def test_the_correction_vanishes_when_the_global_prompt_is_the_uncond():
    uncond, _, joint = _predictions()
    assert torch.equal(global_correction(uncond, uncond, 2.0, 9.0), torch.zeros_like(uncond))
    assert torch.equal(multi_scale_cfg(uncond, uncond, joint, 2.0, 9.0), single_scale_cfg(uncond, joint, 9.0))


def test_scales_broadcast_per_batch_item():
    uncond, global_, joint = _predictions()
    s_global = torch.tensor([1.0, 5.0]).reshape(2, 1, 1, 1)
    out = multi_scale_cfg(uncond, global_, joint, s_global, 7.0)
    assert out.shape == uncond.shape
    for i, s in enumerate((1.0, 5.0)):
        assert torch.allclose(out[i], multi_scale_cfg(uncond[i], global_[i], joint[i], s, 7.0), atol=1e-6)
    flat = multi_scale_cfg(uncond[0, 0, 0], global_[0, 0, 0], joint[0, 0, 0], 2.0, 3.0)  # any shape
    assert flat.shape == (8,)
