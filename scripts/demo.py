"""The main demo, headless: a text-to-image graph in real ComfyUI plus the pack's attention maps.

Until the shape-world demo model lands, the graph runs on a random-weight SD1.5-shaped
checkpoint (built once into the cache), so the images are noise-like: the demo shows that the
pack installs, loads and runs end to end. Images are written to ``output/demo/``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from scripts.comfy_fixtures import FIXTURE_VERSION, build_random_sd15_checkpoint
from scripts.comfy_headless import PACK_ROOT, HeadlessComfyUI, cache_dir, quiet_comfy_logging

CHECKPOINT = "random_sd15.safetensors"


def demo_graph(prompt: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": 8,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "demo/image"}},
        "8": {
            "class_type": "CrossAttentionMaps",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "latent": ["5", 0],
                "prompt": prompt,
                "phrases": "red circle\nblue square",
                "noise_level": 0.5,
                "seed": seed,
                "layers": "coarse",
            },
        },
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "demo/attention"}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red circle left of a blue square")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PACK_ROOT / "output" / "demo")
    args = parser.parse_args()

    quiet_comfy_logging()
    base = cache_dir() / "demo_comfy_base"
    shutil.rmtree(base / "output", ignore_errors=True)
    comfy = HeadlessComfyUI(base_dir=base)
    checkpoint = build_random_sd15_checkpoint(
        cache_dir() / "checkpoints" / f"random_sd15_v{FIXTURE_VERSION}.safetensors"
    )
    link = comfy.base_dir / "models" / "checkpoints" / CHECKPOINT
    if not link.exists():
        link.symlink_to(checkpoint)

    start = time.perf_counter()
    result = comfy.run(demo_graph(args.prompt, args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    for image in result.images(comfy.output_dir):
        shutil.copy(image, args.out / image.name)
        print(f"saved {args.out / image.name}")
    print(f"demo graph ran in {time.perf_counter() - start:.1f} s (ComfyUI at {comfy.comfy_root})")


if __name__ == "__main__":
    main()
