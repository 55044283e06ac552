"""The main demo, headless: every shape-world workflow in ``workflows/`` run in real ComfyUI.

The workflows use the pack's demo model (``models/weights/``), so nothing is downloaded: text to
image through stock nodes, and where each phrase of the prompt attends. Images are copied to
``output/demo/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from scripts.comfy_headless import PACK_ROOT, HeadlessComfyUI, quiet_comfy_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="default: workflows/shape_world_*.json")
    parser.add_argument("--out", type=Path, default=PACK_ROOT / "output" / "demo")
    args = parser.parse_args()
    workflows = args.workflows or sorted((PACK_ROOT / "workflows").glob("shape_world_*.json"))

    quiet_comfy_logging()
    comfy = HeadlessComfyUI(base_dir=Path(tempfile.mkdtemp(prefix="spatial_control_demo_")))
    args.out.mkdir(parents=True, exist_ok=True)
    for workflow in workflows:
        start = time.perf_counter()
        result = comfy.run(json.loads(workflow.read_text()))
        for image in result.images(comfy.output_dir):
            target = args.out / f"{workflow.stem}__{image.name}"
            shutil.copy(image, target)
            print(f"saved {target}")
        print(f"{workflow.name} ran in {time.perf_counter() - start:.1f} s")
    print(f"ComfyUI {comfy.comfy_root}")


if __name__ == "__main__":
    main()
