"""Size follows the region: on the committed demo model, in real ComfyUI, with a prompt that has no
size word, the guided object's extent grows with its region's once the prediction is re-laid out."""

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfyui

PROMPT = "a red circle"
SEEDS = (0, 1, 2)
SIDES = (0.25, 0.45)  # centred boxes of 32 and 58 px: log ratio 0.59


@pytest.fixture(scope="module")
def trained_demo(comfy):
    from spatial_control.models.comfy_builder import load_demo_model
    from spatial_control.models.demo_model import WEIGHTS_DIR

    with torch.inference_mode():
        return load_demo_model(WEIGHTS_DIR, [])


def _extent(comfy, demo_model, side: float, seed: int, relayout_at: float) -> float:
    """Square root of the red circle's box area (pixels) in the image guided into a centred box of
    ``side`` (fraction of the 128 px image); NaN if no red circle is drawn."""
    from benchmarks.bench_region_guidance import _defaults
    from benchmarks.shape_world.metrics import detect_objects
    from spatial_control.nodes.region_guidance import RegionBackwardGuidance
    from spatial_control.nodes.regions import RegionFromBox

    model, clip, vae = demo_model
    nodes = comfy.node_classes
    corner = (1 - side) / 2
    with torch.inference_mode():
        regions = RegionFromBox.execute(corner, corner, side, side, 128, 128, "red circle", 1.0).result[0]
        settings = _defaults(RegionBackwardGuidance) | {"relayout_at": relayout_at}
        guided, positive = RegionBackwardGuidance.execute(model, clip, regions, PROMPT, **settings).result
        negative = nodes["CLIPTextEncode"]().encode(clip, "")[0]
        latent = nodes["EmptyLatentImage"]().generate(128, 128, 1)[0]
        sampler = nodes["KSampler"]()
        out = sampler.sample(guided, seed, 20, 4.0, "dpmpp_2m", "karras", positive, negative, latent)
        image = nodes["VAEDecode"]().decode(vae, out[0])[0][0]
    detections = detect_objects((image.numpy() * 255).round().astype(np.uint8))
    found = [d for d in detections if d.pair == ("red", "circle")]
    if not found:
        return math.nan
    x0, y0, x1, y1 = max(found, key=lambda d: d.area).box
    return math.sqrt((x1 - x0) * (y1 - y0))


def test_a_larger_region_draws_a_larger_object(comfy, trained_demo):
    small, large = SIDES

    def slope(relayout_at: float) -> float:
        def extents(side: float) -> list[float]:
            return [_extent(comfy, trained_demo, side, seed, relayout_at) for seed in SEEDS]

        ratios = [math.log(big / little) for little, big in zip(extents(small), extents(large), strict=True)]
        assert not any(math.isnan(r) for r in ratios), "the red circle was not drawn"
        return float(np.mean(ratios)) / math.log(large / small)

    relaid, fixed = slope(0.45), slope(0.0)
    assert relaid > 0.6  # the object's size follows the region's
    assert relaid > fixed + 0.2  # the re-layout, not the attention energy, makes it follow
