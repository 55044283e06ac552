"""The demo-model training script trains, checkpoints, resumes and exports (a few tiny steps)."""

import os
import shutil
import subprocess
import sys

from scripts.comfy_headless import PACK_ROOT


def test_train_demo_model_checkpoints_resumes_and_exports(demo_weights, tmp_path):
    out, work = tmp_path / "weights", tmp_path / "work"
    shutil.copytree(demo_weights, out)
    cmd = [sys.executable, "-m", "scripts.train_demo_model", "--threads", "1", "--batch", "4",
           "--log-every", "2",
           "--checkpoint-minutes", "0", "--out", str(out),
           "--workdir", str(work)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [*cmd, "--minutes", "0.02"], cwd=PACK_ROOT, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert (work / "checkpoint.pt").is_file() and "exported" in first.stdout
    second = subprocess.run(
        [*cmd, "--minutes", "0.01"], cwd=PACK_ROOT, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed at step" in second.stdout
