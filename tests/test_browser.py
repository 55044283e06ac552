"""Each workflow opens in ComfyUI's real web page (headless Chromium) as a user drops it, with no
missing-node or invalid-link message, and runs from the page's Run button until its images appear;
a screenshot of each is kept in test-artifacts/browser/. Alone: `python -m scripts.browser_check`."""

import json
from pathlib import Path

import pytest

from scripts.build_workflows import WORKFLOWS_DIR
from scripts.workflow_format import ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from scripts.browser_check import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: Path(p).stem)
def test_workflow_loads_and_runs_in_the_page(browser, comfy_server, object_info, path):
    from scripts.browser_check import run_in_page

    graph = json.loads(Path(path).read_text())
    run = run_in_page(browser, comfy_server, Path(path))
    assert run.nodes_on_canvas == len(graph["nodes"])
    assert not run.dialogs, f"the page showed: {run.dialogs}"
    assert not run.console_trouble, run.console_trouble
    ours = ui_to_api(graph, object_info)
    assert sorted(run.page_prompt) == sorted(ours)
    for node_id, node in ours.items():
        assert run.page_prompt[node_id]["class_type"] == node["class_type"]
        assert run.page_prompt[node_id]["inputs"] == node["inputs"], f"node {node_id} ({node['class_type']})"
    assert run.history["status"]["status_str"] == "success", run.history["status"]
    assert run.images_shown and run.screenshot.is_file()


def test_the_page_reports_a_workflow_with_a_missing_node(browser, comfy_server):
    from scripts.browser_check import DROP_FILE, open_page, shown_dialogs

    graph = json.loads(WORKFLOWS[0].read_text())
    graph["nodes"][0]["type"] = "NoSuchNodeAnywhere"
    page = open_page(browser, comfy_server)
    try:
        page.evaluate(DROP_FILE, [json.dumps(graph), "broken.json"])
        page.wait_for_timeout(2500)
        dialogs = shown_dialogs(page)
    finally:
        page.close()
    assert any("NoSuchNodeAnywhere" in d for d in dialogs), dialogs  # what the workflow test checks is absent
