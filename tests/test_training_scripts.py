"""Each training script trains, checkpoints, resumes where it stopped and exports (a few tiny steps),
through the main loop they share (scripts/training.py)."""

import os
import shutil
import subprocess
import sys

import pytest

from scripts.comfy_headless import PACK_ROOT


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        module,
        "--threads",
        "1",
        "--checkpoint-seconds",
        "0",
        "--log-every",
        "1",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=PACK_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _train_twice(module: str, work, out, *extra: str) -> tuple[str, str]:
    """Train to step 2 (no export), then resume to step 3 and export; both runs' output."""
    common = ["--cache-dir", str(work), "--out", str(out), "--minutes", "10", *extra]
    one = _run(module, *common, "--steps", "2", "--no-export")
    assert (work / "checkpoint.pt").is_file() and "step 2/2" in one.stdout
    two = _run(module, *common, "--steps", "3")
    assert "at step 2" in two.stdout and "step 3/3" in two.stdout
    return one.stdout, two.stdout


def test_train_demo_model_checkpoints_resumes_and_exports(demo_weights, tmp_path):
    out = tmp_path / "weights"
    shutil.copytree(demo_weights, out)
    before = (out / "demo_unet.safetensors").read_bytes()
    _, second = _train_twice("scripts.train_demo_model", tmp_path / "work", out, "--batch", "4")
    assert "exported" in second and (out / "demo_unet.safetensors").read_bytes() != before
    assert '"steps": 3' in second


@pytest.mark.parametrize(
    "module, extra",
    [("scripts.train_autoencoder", ["--batch-size", "2", "--eval-every", "1000"]),
     ("scripts.train_shape_clip", ["--batch-size", "4", "--eval-every", "1000"])],
)  # fmt: skip
def test_train_script_checkpoints_resumes_and_exports(tmp_path, module, extra):
    out = tmp_path / "model.safetensors"
    _, second = _train_twice(module, tmp_path / "work", out, *extra)
    assert out.is_file() and "exported" in second


def test_train_anchor_vit_checkpoints_resumes_and_exports(tmp_path):
    from spatial_control.models.anchor_vit import load_anchor_vit

    out = tmp_path / "anchor_vit.safetensors"
    _, second = _train_twice(
        "scripts.train_anchor_vit", tmp_path / "work", out, "--batch-size", "2", "--eval-scenes", "4"
    )
    assert "exported" in second
    vit, meta = load_anchor_vit(out)
    assert meta["training"]["steps"] == 3 and set(meta["training"]["final_eval"]) >= {"object_recall"}
    # A new machine without the checkpoint continues from the exported fp16 weights and their step.
    common = ["--out", str(tmp_path / "again.safetensors"), "--minutes", "10", "--batch-size", "2"]
    warm = _run("scripts.train_anchor_vit", "--cache-dir", str(tmp_path / "new"), "--init-from", str(out),
                "--steps", "4", "--eval-scenes", "4", *common)  # fmt: skip
    assert "warm start" in warm.stdout and "step 4/4" in warm.stdout


def test_train_grounding_checkpoints_resumes_and_exports(tmp_path):
    from spatial_control.models.grounding_net import load_grounding_net

    out = tmp_path / "grounding.safetensors"
    extra = ("--batch-size", "2", "--eval-tasks", "4")
    _, second = _train_twice("scripts.train_grounding", tmp_path / "work", out, *extra)
    net, meta = load_grounding_net(out)
    assert net.config.alignment == "deformable" and meta["training"]["steps"] == 3
    assert {"map_accuracy", "pointing", "confidence_absent"} <= set(meta["training"]["final_eval"])
    again = ["--out", str(tmp_path / "again.safetensors"), "--steps", "4", "--minutes", "10", *extra]
    warm = _run(
        "scripts.train_grounding", "--cache-dir", str(tmp_path / "new"), "--init-from", str(out), *again
    )
    assert "warm start" in warm.stdout and "step 4/4" in warm.stdout


@pytest.mark.parametrize(
    "module, load, evaluation",
    [("scripts.train_spatext_prior", "prior", "--eval-objects"),
     ("scripts.train_spatext_unet", "unet", "--eval-scenes")],
)  # fmt: skip
def test_train_spatext_checkpoints_resumes_exports_and_warm_starts(tmp_path, module, load, evaluation):
    from spatial_control.models.demo_model import read_weights
    from spatial_control.models.spatio_textual import load_prior, map_channels

    out = tmp_path / f"spatext_{load}.safetensors"
    _, second = _train_twice(module, tmp_path / "work", out, "--batch", "2", evaluation, "8")
    assert "exported" in second
    if load == "prior":
        assert load_prior(out).config.dim == 128
    _, meta = read_weights(out)
    assert meta["training"]["steps"] == 3 and meta["training"]["final_eval"]
    if load == "unet":
        assert map_channels(meta["config"]) == 128
    again = ["--out", str(tmp_path / "again.safetensors"), "--steps", "4", "--minutes", "10", "--batch", "2",
             evaluation, "8"]  # fmt: skip
    warm = _run(module, "--cache-dir", str(tmp_path / "new"), "--init-from", str(out), *again)
    assert "warm start" in warm.stdout and "step 4/4" in warm.stdout
