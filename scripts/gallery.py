"""Make ``docs/gallery.md`` and its pictures (``docs/gallery/``) from the benchmark's own cases: held-out
shape-world layouts from the eval split, the same seeds for every arm, the nodes at their defaults.

    python -m scripts.gallery            # about 2 minutes on 2 CPU cores

Pictures: for layouts of 2-4 objects, written as users write them (no size words), the unguided
image beside attention masking, backward guidance and both, each with the requested boxes drawn;
the cross-attention maps of each phrase; the REGIONS preview. Methods that do not exist yet have
no pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.bench_region_guidance import arm_image, task_regions
from benchmarks.shape_world.captions import PROMPT_FORMS, write_caption
from benchmarks.shape_world.generator import sample_layout
from scripts.comfy_headless import PACK_ROOT

GALLERY = PACK_ROOT / "docs" / "gallery"
GALLERY_MD = PACK_ROOT / "docs" / "gallery.md"
SEED_BASE = 760_000  # eval-split layouts, apart from the benchmark's own 700000-700199
ARMS = {
    "unguided": "unguided",
    "attention_masking": "attention masking",
    "backward_guidance": "backward guidance",
    "masking_and_guidance": "masking + guidance",
}
BOX_COLOURS = ("#ffffff", "#00e5ff", "#ff4fd8", "#ffe600")
SCALE = 2


def _with_boxes(image: np.ndarray, boxes) -> Image.Image:
    picture = Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for box, colour in zip(boxes, BOX_COLOURS, strict=False):
        draw.rectangle([v * SCALE for v in box], outline=colour, width=1)
    return picture


def _grid(rows: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    w, h = rows[0][0].size
    grid = Image.new("RGB", (len(rows[0]) * (w + gap) - gap, len(rows) * (h + gap) - gap), (24, 24, 24))
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            grid.paste(picture, (c * (w + gap), r * (h + gap)))
    return grid


def guidance_grid(session, count: int) -> tuple[Path, list[str]]:
    tasks = [sample_layout("eval", SEED_BASE + i) for i in range(count)]
    rows, prompts = [], []
    for i, task in enumerate(tasks):
        caption = write_caption(task.targets, PROMPT_FORMS["plain"])
        regions = task_regions(task, caption.phrases)
        boxes = [t.box for t in task.targets]
        rows.append([
            _with_boxes(arm_image(session, arm, caption.text, regions, SEED_BASE + i), boxes) for arm in ARMS
        ])  # fmt: skip
        prompts.append(caption.text)
    path = GALLERY / "region_guidance.png"
    _grid(rows).save(path)
    return path, prompts


def attention_maps(session, count: int = 3) -> Path:
    from spatial_control.nodes.previews import heatmap

    tasks = [sample_layout("eval", SEED_BASE + 100 + i, max_objects=2) for i in range(count)]
    rows = []
    for i, task in enumerate(tasks):
        caption = write_caption(task.targets, PROMPT_FORMS["plain"])
        images, latents = session.generate([caption.text], SEED_BASE + 100 + i)
        maps = session.attention([caption.text], latents)[0]
        positions = session.token_positions(caption.text, list(caption.phrases))
        row = [_with_boxes(images[0], [])]
        for phrase in caption.phrases:
            phrase_map = maps[positions[phrase]].mean(0)
            phrase_map = phrase_map / phrase_map.max().clamp_min(1e-8)
            picture = (heatmap(phrase_map[None])[0].numpy() * 255).round().astype(np.uint8)
            row.append(Image.fromarray(picture).resize(row[0].size, Image.BILINEAR))
        rows.append(row + [Image.new("RGB", row[0].size, (24, 24, 24))] * (3 - len(row)))
    path = GALLERY / "attention_maps.png"
    _grid(rows).save(path)
    return path


def regions_preview() -> Path:
    from spatial_control.nodes.regions import RegionFromBox

    first = RegionFromBox.execute(0.05, 0.1, 0.4, 0.4, 128, 128, "red circle", 1.0).result
    second = RegionFromBox.execute(0.55, 0.5, 0.4, 0.4, 128, 128, "blue square", 1.0, first[0]).result
    preview = (second[2][0].numpy() * 255).round().astype(np.uint8)
    path = GALLERY / "regions.png"
    _with_boxes(preview, []).save(path)
    return path


def write_markdown(prompts: list[str]) -> None:
    header = " | ".join(ARMS.values())
    listed = "\n".join(f"{i + 1}. `{p}`" for i, p in enumerate(prompts))
    GALLERY_MD.write_text(f"""# Gallery

Made by `python -m scripts.gallery` on the demo model, from held-out shape-world layouts of the
eval split (never trained on), every arm with the same seed, every node at its defaults. Boxes
show where each object was asked for (first object white, then cyan, magenta, yellow).

## Region guidance: prompts without size words

Columns: {header}. Rows, the prompts:

{listed}

![guided vs unguided](gallery/region_guidance.png)

## Where each phrase attends

Generated image, then the cross-attention of each phrase of its prompt (Cross-Attention Maps node).

![attention maps](gallery/attention_maps.png)

## Regions

The preview that Region from Box gives for a red circle at the top left and a blue square at the
bottom right (the regions of `workflows/shape_world_region_guidance.json`).

![regions](gallery/regions.png)

TextGroundingMap, SpatioTextualEncoder, RegionProposer and ConceptTokenEM get their pictures here
when they land.
""")


def main() -> None:
    from benchmarks.comfy_generation import DemoModelSession

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    GALLERY.mkdir(parents=True, exist_ok=True)
    session = DemoModelSession()
    _, prompts = guidance_grid(session, args.layouts)
    attention_maps(session)
    regions_preview()
    write_markdown(prompts)
    print(f"wrote {GALLERY_MD} and {GALLERY}/")


if __name__ == "__main__":
    main()
