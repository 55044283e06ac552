"""The UI -> API conversion of workflows, as the page's graphToPrompt does it, on a hand-made graph."""

import pytest

from scripts.workflow_format import WorkflowSpec, ui_to_api, widget_slots

INFO = {
    "Loader": {"input": {"required": {}}, "output": ["MODEL"], "output_name": ["MODEL"]},
    "Sampler": {
        "input": {"required": {
            "model": ["MODEL", {}],
            "seed": ["INT", {"default": 0, "control_after_generate": True}],
            "mode": [["a", "b"], {}],
            "strength": ["FLOAT", {"default": 0.5}],
        }},
        "input_order": {"required": ["model", "seed", "mode", "strength"]},
        "output": ["LATENT"], "output_name": ["LATENT"],
    },
    "Image": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "output": ["IMAGE"],
              "output_name": ["IMAGE"]},
    "Pass": {"input": {"required": {"model": ["MODEL", {}]}}, "output": ["MODEL"], "output_name": ["MODEL"]},
}  # fmt: skip


def test_widget_slots_add_the_values_the_page_adds():
    assert [name for name, _ in widget_slots(INFO["Sampler"])] == ["seed", None, "mode", "strength"]
    assert [name for name, _ in widget_slots(INFO["Image"])] == ["image", None]


def _spec() -> WorkflowSpec:
    w = WorkflowSpec("t")
    loader = w.node("Loader", (0, 0))
    passed = w.node("Pass", (1, 0), model=loader[0])
    w.node("Sampler", (2, 0), "My sampler", model=passed[0], seed=7, mode="b")
    w.node("Image", (0, 5))
    w.note("change the seed", (3, 0))
    return w


def test_a_built_graph_converts_back_to_its_api_graph():
    graph = _spec().ui_graph(INFO)
    sampler = next(n for n in graph["nodes"] if n["type"] == "Sampler")
    assert sampler["widgets_values"] == [7, "fixed", "b", 0.5]  # unset widgets take their defaults
    assert next(n for n in graph["nodes"] if n["type"] == "Image")["widgets_values"] == ["x.png", "image"]
    api = ui_to_api(graph, INFO)
    assert api["3"] == {"inputs": {"seed": 7, "mode": "b", "strength": 0.5, "model": ["2", 0]},
                        "class_type": "Sampler", "_meta": {"title": "My sampler"}}  # fmt: skip
    assert "5" not in api  # the note is the page's only


def test_bypassed_nodes_pass_through_and_muted_ones_drop_out():
    graph = _spec().ui_graph(INFO)
    next(n for n in graph["nodes"] if n["type"] == "Pass")["mode"] = 4  # bypass
    api = ui_to_api(graph, INFO)
    assert "2" not in api and api["3"]["inputs"]["model"] == ["1", 0]
    next(n for n in graph["nodes"] if n["type"] == "Pass")["mode"] = 2  # mute
    api = ui_to_api(graph, INFO)
    assert "2" not in api and "model" not in api["3"]["inputs"]


def test_stale_widget_values_and_unknown_nodes_are_named():
    graph = _spec().ui_graph(INFO)
    next(n for n in graph["nodes"] if n["type"] == "Sampler")["widgets_values"].pop()
    with pytest.raises(ValueError, match=r"node 3 \(Sampler\): 3 widget values for 4 widgets"):
        ui_to_api(graph, INFO)
    with pytest.raises(KeyError, match="no node type 'Sampler'"):
        ui_to_api(_spec().ui_graph(INFO), {k: v for k, v in INFO.items() if k != "Sampler"})
    with pytest.raises(KeyError, match="Sampler has no input"):
        bad = _spec()
        bad.nodes[2].values["nonsense"] = 1
        bad.ui_graph(INFO)
