"""The users' view of the nodes: generated docs in step with the schemas, the UX audit of every node,
and the metadata the ComfyUI registry and ComfyUI-Manager install the pack from."""

import pytest
import tomllib

from scripts.comfy_headless import PACK_ROOT
from scripts.node_docs import NODES_MD, pack_nodes, render

pytestmark = pytest.mark.comfyui


def test_nodes_md_is_generated_from_the_schemas(object_info):
    assert NODES_MD.read_text() == render(object_info), (
        "docs/NODES.md is stale: run `python -m scripts.node_docs`"
    )


def test_every_node_has_one_category_prefix_and_a_tooltip_on_every_input_and_output(object_info):
    nodes = pack_nodes(object_info)
    assert len(nodes) >= 8
    for name, node in nodes.items():
        assert node["category"].startswith("spatial_control/"), name
        assert node["description"] and node["display_name"] != name, name
        for section in ("required", "optional"):
            for key, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{key} has no tooltip"
        tooltips = node.get("output_tooltips") or []
        assert len(tooltips) == len(node["output"]) and all(tooltips), f"{name} has an output without tooltip"


def test_registry_and_manager_metadata():
    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    meta, comfy = project["project"], project["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "dependencies"):
        assert meta.get(key), f"pyproject [project] needs {key} for the ComfyUI registry"
    assert meta["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "requires-comfyui"):
        assert comfy.get(key), f"pyproject [tool.comfy] needs {key}"
    # ComfyUI-Manager installs requirements.txt: the same dependencies, less torch (ComfyUI's own)
    lines = (PACK_ROOT / "requirements.txt").read_text().splitlines()
    required = sorted(line for line in lines if line and not line.startswith("#"))
    assert required == sorted(d for d in meta["dependencies"] if not d.startswith("torch"))
    assert (PACK_ROOT / "__init__.py").read_text().count("async def comfy_entrypoint") == 1
    assert list((PACK_ROOT / "example_workflows").glob("*.json")), (
        "the templates browser needs example_workflows/"
    )
