"""The real ComfyUI server, as users run it: started on a loopback port with this pack in its
``custom_nodes/``, its web page served by the frontend package from ComfyUI's requirements.

Used by the workflow tests (``/object_info``, ``/prompt``, ``/history``), the browser test and the
workflow builder. The server runs in a subprocess of its own, so it never shares a process with
the in-process harness (``comfy_headless``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from scripts.comfy_headless import PACK_ROOT, find_comfyui

PACK_FOLDER = "comfyui-spatial-control"
EXAMPLE_INPUTS = PACK_ROOT / "workflows" / "inputs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(base_dir) as server:`` a ComfyUI server on ``server.url``; the pack's
    example inputs are copied into its input folder."""

    def __init__(self, base_dir: Path, port: int | None = None, startup_timeout: float = 240.0):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"

    def __enter__(self) -> ComfyServer:
        custom_nodes = self.base_dir / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        link = custom_nodes / PACK_FOLDER
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        inputs = self.base_dir / "input"
        inputs.mkdir(exist_ok=True)
        if EXAMPLE_INPUTS.is_dir():
            for item in EXAMPLE_INPUTS.iterdir():
                shutil.copy(item, inputs / item.name)
        cmd = [
            sys.executable, "main.py", "--cpu", "--base-directory", str(self.base_dir),
            "--listen", "127.0.0.1", "--port", str(self.port), "--disable-api-nodes",
            "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
        ]  # fmt: skip
        with self.log_path.open("w") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(cmd, cwd=find_comfyui(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {self.startup_timeout} s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(
            self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise PromptRejected(json.loads(err.read() or b"{}")) from None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format graph, wait for it and return its history entry (outputs, status);
        a graph the server rejects raises PromptRejected with the server's node errors."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        prompt_id = queued["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") != "success":
                    raise RuntimeError(f"graph failed: {entry['status'].get('messages')}")
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def saved_images(self, entry: dict) -> list[Path]:
        """Files that saving nodes wrote for a history entry (type "output")."""
        return [
            self.base_dir / "output" / image.get("subfolder", "") / image["filename"]
            for out in entry.get("outputs", {}).values()
            for image in out.get("images", [])
            if image.get("type") == "output"
        ]


class PromptRejected(RuntimeError):
    """The server refused a graph (``/prompt`` answered 400): ``details`` holds its node errors."""

    def __init__(self, details: dict):
        self.details = details
        super().__init__(json.dumps(details)[:3000])
