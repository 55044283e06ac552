"""Open ComfyUI's real web page in headless Chromium, drop a workflow on it as a user does, and run it
from the page's Run button until its images appear.

Used by ``tests/test_browser.py``; run it alone with ``python -m scripts.browser_check`` (every
workflow in ``workflows/``, screenshots into ``test-artifacts/browser/``). Chromium is Debian's
(``/usr/bin/chromium``, or ``CHROMIUM``), driven by Playwright; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.comfy_headless import PACK_ROOT

ARTIFACTS = PACK_ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
)  # fmt: skip
# What the page says when a workflow does not load cleanly (network fetches that fail, such as a
# thumbnail or a registry lookup this closed machine cannot reach, are not the workflow's doing).
TROUBLE = ("missing", "not found", "invalid link", "failed to", "error loading", "cannot read")
NOT_THE_WORKFLOW = ("Failed to load resource",)

DROP_FILE = """([text, name]) => {
  const file = new File([text], name, {type: "application/json"});
  const transfer = new DataTransfer();
  transfer.items.add(file);
  const canvas = document.querySelector("#graph-canvas");
  for (const type of ["dragenter", "dragover", "drop"]) {
    canvas.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
  }
}"""
SAVE_NODES_SHOW_IMAGES = """(ids) => ids.every((id) => {
  const out = (window.app.nodeOutputs || {})[String(id)];
  return out && out.images && out.images.length > 0;
})"""


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no Chromium at {path}: install Debian's chromium (apt-get install chromium chromium-driver; "
            "scripts/setup.sh does it as root) or set CHROMIUM"
        )
    return path


@dataclass
class PageRun:
    """What happened when a workflow was dropped on the page and run from it."""

    nodes_on_canvas: int
    dialogs: list[str]
    console_trouble: list[str]
    page_prompt: dict  # the API graph the page itself built (graphToPrompt)
    history: dict  # the server's history entry of the page's run
    screenshot: Path
    seconds: float
    images_shown: bool = field(default=False)


def open_page(browser, server, console: list[str] | None = None):
    """A fresh page of the server's UI, ready for a drop (its first-run templates dialog closed);
    console messages are appended to ``console``."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    if console is not None:
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server.url)
    page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    return page


def shown_dialogs(page) -> list[str]:
    """The text of every dialog the page shows (a missing-node report is one)."""
    return page.evaluate(
        "Array.from(document.querySelectorAll('.p-dialog')).map((d) => d.innerText.slice(0, 500))"
    )


def run_in_page(browser, server, workflow_path: Path, timeout: float = 600.0) -> PageRun:
    """Drop ``workflow_path`` on a fresh page of ``server`` and run it with the Run button."""
    start = time.monotonic()
    console: list[str] = []
    page = open_page(browser, server, console)
    try:
        loaded_at = len(console)
        graph = json.loads(workflow_path.read_text())
        page.evaluate(DROP_FILE, [workflow_path.read_text(), workflow_path.name])
        page.wait_for_function(f"window.app.graph.nodes.length === {len(graph['nodes'])}", timeout=30_000)
        page.wait_for_timeout(1000)
        dialogs = shown_dialogs(page)
        trouble = [
            line for line in console[loaded_at:]
            if line.startswith(("error", "warning")) and any(word in line.lower() for word in TROUBLE)
            and not any(benign in line for benign in NOT_THE_WORKFLOW)
        ]  # fmt: skip
        page_prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        before = set(server.get("/history"))
        page.get_by_role("button", name="Run", exact=True).first.click()
        entry = _wait_for_new_history(server, before, timeout)
        save_ids = [n["id"] for n in graph["nodes"] if n["type"] in ("SaveImage", "PreviewImage")]
        page.wait_for_function(SAVE_NODES_SHOW_IMAGES, arg=save_ids, timeout=60_000)
        page.wait_for_timeout(1000)  # the previews paint on the canvas
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{workflow_path.stem}.png"
        page.screenshot(path=str(shot))
        return PageRun(
            nodes_on_canvas=page.evaluate("window.app.graph.nodes.length"),
            dialogs=dialogs,
            console_trouble=trouble,
            page_prompt=page_prompt,
            history=entry,
            screenshot=shot,
            seconds=time.monotonic() - start,
            images_shown=True,
        )
    finally:
        page.close()


def _wait_for_new_history(server, before: set, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get("/history")
        new = [history[k] for k in history if k not in before]
        if new and new[0].get("status", {}).get("completed") is not None:
            return new[0]
        time.sleep(0.5)
    raise TimeoutError(f"the page's run did not finish within {timeout} s")


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS))


def main() -> None:
    import tempfile

    from playwright.sync_api import sync_playwright

    from scripts.comfy_server import ComfyServer

    workflows = sorted((PACK_ROOT / "workflows").glob("*.json"))
    with ComfyServer(Path(tempfile.mkdtemp(prefix="browser_check_"))) as server, sync_playwright() as p:
        browser = launch(p)
        for path in workflows:
            run = run_in_page(browser, server, path)
            status = run.history.get("status", {}).get("status_str")
            print(
                f"{path.name}: {status}, {run.nodes_on_canvas} nodes, dialogs {run.dialogs}, "
                f"trouble {run.console_trouble}, {run.seconds:.0f} s, screenshot {run.screenshot}"
            )
        browser.close()


if __name__ == "__main__":
    main()
