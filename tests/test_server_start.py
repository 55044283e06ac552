"""The pack installs the way users install it: ComfyUI's own server start finds it in custom_nodes/."""

import subprocess
import sys

import pytest

from scripts.comfy_headless import PACK_ROOT, find_comfyui

pytestmark = pytest.mark.comfyui


def test_comfyui_server_start_loads_the_pack_from_custom_nodes(tmp_path):
    comfy_root = find_comfyui()
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "comfyui-spatial-control").symlink_to(PACK_ROOT, target_is_directory=True)
    cmd = [sys.executable, "main.py", "--cpu", "--base-directory", str(tmp_path), "--quick-test-for-ci",
           "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=comfy_root, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    ours = "custom_nodes/comfyui-spatial-control"
    lines = [line for line in log.splitlines() if line.strip().endswith(ours)]
    assert lines, log[-3000:]
    assert "IMPORT FAILED" not in lines[0]
