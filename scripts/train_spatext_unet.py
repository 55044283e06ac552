"""Fine-tune the demo UNet into SpaText's spatio-textual UNet (the trained path of SpatioTextualEncoder).

    python -m scripts.train_spatext_unet --minutes 90          # CPU, resumes where it stopped
    python -m scripts.train_spatext_unet --device cuda --minutes 20
    python -m scripts.train_spatext_unet --init-from models/weights/spatext_unet.safetensors --steps 6000

SpaText (Avrahami et al., CVPR 2023, arXiv:2211.14305): the UNet's input is widened by the
spatio-textual map's channels (zero-initialised, so training starts from exactly the demo model)
and fine-tuned on scenes whose map holds, over each kept object's mask, the small CLIP's image
embedding of that object alone. Each object is kept in the map with probability 0.8 (sparse maps,
as users paint only some regions); the caption is written in a random user style (as the demo
model's training) and the two conditions are dropped independently for multi-conditional
classifier-free guidance: both kept 75%, caption only 10%, map only 10%, neither 5%. The demo
text encoder and autoencoder stay frozen. v-prediction with min-SNR-5 as the demo model; EMA of
the weights is exported (fp16) to ``models/weights/spatext_unet.safetensors``.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from benchmarks.shape_world.captions import random_style, write_caption
from scripts.comfy_headless import find_comfyui
from scripts.train_demo_model import (
    MIN_SNR_GAMMA,
    alphas_cumprod,
    training_scene,
    unknown_words,
)
from scripts.training import (
    TrainingLoop,
    adamw_matrices_decayed,
    add_init_from,
    ema_update,
    load_checkpoint,
    new_record,
    run_arguments,
    save_checkpoint,
    training_record,
    warm_start,
    warmup_cosine,
)
from spatial_control.guidance.spatio_textual_map import isolate_segments, spatio_textual_map
from spatial_control.models.autoencoder import load_autoencoder
from spatial_control.models.demo_model import (
    AUTOENCODER_FILE,
    DEMO_TEXT_CONFIG,
    TEXT_ENCODER_FILE,
    WEIGHTS_DIR,
    autoencoder_latent_scale,
    load_demo_text_encoder_state,
    read_weights,
    save_demo_unet,
)
from spatial_control.models.demo_model import (
    UNET_FILE as DEMO_UNET_FILE,
)
from spatial_control.models.demo_unet import build_demo_unet
from spatial_control.models.shape_clip import load_shape_clip
from spatial_control.models.spatio_textual import UNET_FILE, widen_unet_input
from spatial_control.models.text_encoder import (
    build_text_encoder,
    installed_text_keys,
    load_clip_tokenizer,
    tokenize,
)

RECIPE = {
    "batch": 64, "lr": 3e-4, "ema": 0.995, "warmup": 100, "weight_decay": 0.01, "seed": 0,
    "keep_object": 0.8, "conditions": {"both": 0.75, "caption": 0.10, "map": 0.10, "neither": 0.05},
}  # fmt: skip
LATENT = (16, 16)


def scene_sample(split: str, index: int, seed: int, unknown, full: bool = False) -> tuple:
    """One sample: (image [3,128,128] in [0,1], caption, masks [R,128,128] of the objects in the map);
    ``full``: every object in the map and the caption kept (evaluation)."""
    rng = np.random.default_rng([seed, index])
    scene = training_scene(rng, split, index)
    n = len(scene.objects)
    caption = write_caption(scene.objects, random_style(rng, n, unknown), rng).text
    names, probs = list(RECIPE["conditions"]), list(RECIPE["conditions"].values())
    condition = "both" if full else names[int(rng.choice(len(names), p=probs))]
    keep = np.ones(n, bool) if full else rng.random(n) < RECIPE["keep_object"]
    if condition in ("caption", "neither"):
        keep[:] = False
    if condition in ("map", "neither"):
        caption = ""
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
    kept = [torch.from_numpy(c).float() for c, k in zip(scene.coverages, keep, strict=True) if k]
    masks = torch.stack(kept) if kept else torch.zeros(0, *image.shape[1:])
    return image, caption, masks


@torch.no_grad()
def segment_maps(clip, images: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """``[B, D, 16, 16]`` maps: each kept object's isolated segment embedded by the small CLIP."""
    segments = [isolate_segments(image, m) for image, m in zip(images, masks, strict=True)]
    flat = torch.cat(segments)
    embeddings = clip.encode_image(flat) if len(flat) else flat.new_zeros(0, clip.config.embed_dim)
    out, start = [], 0
    for m in masks:
        out.append(spatio_textual_map(m, embeddings[start : start + len(m)], LATENT))
        start += len(m)
    return torch.stack(out)


def batch(split: str, first: int, size: int, seed: int, unknown, full: bool = False):
    samples = [scene_sample(split, i, seed, unknown, full) for i in range(first, first + size)]
    images = torch.stack([s[0] for s in samples])
    return images, [s[1] for s in samples], [s[2] for s in samples]


def main(argv=None) -> None:
    parser = run_arguments(__doc__, "spatext_unet", steps=4000, minutes=90.0, out=WEIGHTS_DIR / UNET_FILE,
                           eval_every=250)  # fmt: skip
    parser.set_defaults(threads=int(os.environ.get("OMP_NUM_THREADS", "2")), log_every=20)
    add_init_from(parser, "widened UNet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-scenes", type=int, default=128)
    args = parser.parse_args(argv)
    recipe = {**RECIPE, "batch": args.batch}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = load_clip_tokenizer(find_comfyui() / "comfy" / "sd1_tokenizer")
    unknown = unknown_words(tokenizer, seed=recipe["seed"])
    autoencoder = load_autoencoder(WEIGHTS_DIR / AUTOENCODER_FILE).to(device).eval().requires_grad_(False)
    latent_scale = autoencoder_latent_scale(WEIGHTS_DIR / AUTOENCODER_FILE)
    clip = load_shape_clip(device=device).requires_grad_(False)
    text_encoder = build_text_encoder(DEMO_TEXT_CONFIG).to(device).eval().requires_grad_(False)
    text_state, _ = load_demo_text_encoder_state(WEIGHTS_DIR / TEXT_ENCODER_FILE)
    text_encoder.load_state_dict(installed_text_keys(text_state, text_encoder.state_dict()), strict=False)
    demo_state, demo_meta = read_weights(WEIGHTS_DIR / DEMO_UNET_FILE)
    demo = build_demo_unet(demo_meta["config"])
    demo.load_state_dict(demo_state)
    unet = widen_unet_input(demo, clip.config.embed_dim).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    params = list(unet.parameters())
    optimizer = adamw_matrices_decayed(params, recipe["weight_decay"])
    checkpoint_path = args.cache_dir / "checkpoint.pt"
    state = None if args.fresh else load_checkpoint(checkpoint_path, recipe)
    record = {**new_record(), "samples": 0}
    if state is not None:
        for module, key in ((unet, "unet"), (ema, "ema"), (optimizer, "optimizer")):
            module.load_state_dict(state[key])
        record = state["record"]
        print(f"resuming {checkpoint_path} at step {record['step']}", flush=True)
    elif args.init_from:
        weights, meta = read_weights(args.init_from)
        unet.load_state_dict(weights)
        ema.load_state_dict(weights)
        warm_start(record, meta, args.init_from)
        record["samples"] = record["step"] * recipe["batch"]

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {"unet": unet.state_dict(), "ema": ema.state_dict(),
                                          "optimizer": optimizer.state_dict(), "record": record,
                                          "recipe": recipe})  # fmt: skip

    def schedule(step: int) -> float:
        return warmup_cosine(step, recipe["lr"], recipe["warmup"], args.steps, floor=0.1)

    acp = alphas_cumprod().to(device)

    def denoising_loss(model, images, captions, maps, generator=None):
        with torch.no_grad():
            z = autoencoder.encode(images.to(device) * 2 - 1) * latent_scale
            context = text_encoder(tokenize(tokenizer, captions).to(device)).last_hidden_state
        t = torch.randint(0, len(acp), (len(z),), device=device, generator=generator)
        noise = torch.randn(z.shape, device=device, generator=generator)
        a = acp[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * z + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z
        snr = a / (1 - a)
        weight = snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)
        prediction = model(torch.cat([x_t, maps.to(device)], 1), t, context).sample
        return (weight * (prediction.float() - target) ** 2).mean()

    loop = TrainingLoop(args, optimizer, record, schedule, checkpoint, recipe["batch"])

    def train_step(step: int) -> str:
        images, captions, masks = batch("train", record["samples"], recipe["batch"], recipe["seed"], unknown)
        loss = denoising_loss(unet, images, captions, segment_maps(clip, images.to(device), masks))
        loop.optimise(loss, params, 1.0)
        ema_update(unet, ema, min(recipe["ema"], (1 + step) / (10 + step)))
        record["samples"] += recipe["batch"]
        return f"loss {loss.item():.4f}"

    # validation scenes with every object in the map and the caption kept
    val_images, val_captions, val_masks = batch("eval", 0, args.eval_scenes, recipe["seed"], (), full=True)
    val_maps = segment_maps(clip, val_images.to(device), val_masks)

    @torch.no_grad()
    def evaluate(step: int) -> dict:
        figures = {}
        for name, maps in (("loss_map", val_maps), ("loss_null_map", torch.zeros_like(val_maps))):
            generator = torch.Generator(device).manual_seed(0)
            figures[name] = round(float(denoising_loss(ema, val_images, val_captions, maps, generator)), 5)
        return figures

    loop.run(train_step, evaluate)
    if args.no_export:
        return
    final = evaluate(record["step"])
    extra = {"final_eval": final, "warm_start": f"demo UNet ({DEMO_UNET_FILE}), map channels zero"}
    save_demo_unet(ema.cpu(), args.out, training_record(args, record, recipe, recipe["batch"], **extra),
                   demo_meta.get("latent_preview"))  # fmt: skip
    print(f"exported {args.out}: {final}", flush=True)


if __name__ == "__main__":
    main()
