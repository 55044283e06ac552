"""Every workflow shipped in workflows/ is in ComfyUI's UI form, in step with its builder, and runs on
the real server: turned into the API graph as the page does, validated against /object_info and
executed on the demo model."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.build_workflows import EXAMPLES_DIR, WORKFLOWS_DIR, build
from scripts.workflow_format import ui_to_api

pytestmark = pytest.mark.comfyui

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))


def test_workflows_are_shipped_in_ui_form_with_template_copies():
    assert WORKFLOWS, "workflows/ holds no workflow"
    for path in WORKFLOWS:
        graph = json.loads(path.read_text())
        assert {"nodes", "links", "groups", "version"} <= set(graph), f"{path.name} is not a UI-form workflow"
        assert any(n["type"] == "Note" for n in graph["nodes"]), f"{path.name} has no note for the user"
        assert graph["groups"], f"{path.name} has no groups"
        copy = EXAMPLES_DIR / path.name
        assert copy.is_file() and copy.read_text() == path.read_text(), (
            f"example_workflows/{path.name} is stale"
        )
        assert copy.with_suffix(".jpg").is_file(), f"example_workflows/{path.stem}.jpg (thumbnail) is missing"


def test_committed_workflows_match_their_builder(object_info):
    built = build(object_info)
    assert sorted(built) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        assert json.loads(path.read_text()) == built[path.stem], (
            f"{path.name} differs from what scripts/build_workflows.py builds for these nodes: "
            "run `python -m scripts.build_workflows`"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: Path(p).stem)
def test_workflow_runs_on_the_real_server(comfy_server, object_info, path):
    prompt = ui_to_api(json.loads(Path(path).read_text()), object_info)
    entry = comfy_server.run(prompt)
    saves = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    assert saves and all(entry["outputs"].get(i, {}).get("images") for i in saves), entry["outputs"]
    for image in comfy_server.saved_images(entry):
        pixels = np.asarray(Image.open(image))
        assert pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.std() > 0
