"""The main demo, headless: every shape-world workflow in ``workflows/`` run on the real ComfyUI server.

The workflows use the pack's demo model (``models/weights/``), so nothing is downloaded: text to
image through stock nodes, where each phrase of the prompt attends, region guidance and attention
masking. Each UI-form workflow is turned into the API graph the page would queue, queued on a
server started on a loopback port, and its images are copied to ``output/demo/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from scripts.comfy_headless import PACK_ROOT
from scripts.comfy_server import ComfyServer
from scripts.workflow_format import ui_to_api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="default: workflows/shape_world_*.json")
    parser.add_argument("--out", type=Path, default=PACK_ROOT / "output" / "demo")
    args = parser.parse_args()
    workflows = args.workflows or sorted((PACK_ROOT / "workflows").glob("shape_world_*.json"))

    args.out.mkdir(parents=True, exist_ok=True)
    with ComfyServer(Path(tempfile.mkdtemp(prefix="spatial_control_demo_"))) as server:
        info = server.object_info()
        for workflow in workflows:
            start = time.perf_counter()
            entry = server.run(ui_to_api(json.loads(workflow.read_text()), info))
            for image in server.saved_images(entry):
                target = args.out / f"{workflow.stem}__{image.name}"
                shutil.copy(image, target)
                print(f"saved {target}")
            print(f"{workflow.name} ran in {time.perf_counter() - start:.1f} s")
        print(f"ComfyUI server log: {server.log_path}")


if __name__ == "__main__":
    main()
