"""Every workflow shipped in workflows/ validates and runs headless in real ComfyUI."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.comfy_headless import PACK_ROOT

pytestmark = pytest.mark.comfyui

WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))


def test_workflows_are_shipped():
    assert WORKFLOWS, "workflows/ holds no workflow"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: Path(p).stem)
def test_workflow_runs_headless_and_saves_images(comfy, path):
    import json

    graph = json.loads(Path(path).read_text())
    result = comfy.run(graph)
    images = result.images(comfy.output_dir)
    assert images, f"{path.name} saved no image"
    for image in images:
        pixels = np.asarray(Image.open(image))
        assert pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.std() > 0
