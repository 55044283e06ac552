#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the pack (editable, as
# `spatial_control`), its test tools and ComfyUI's own requirements; locates ComfyUI (see README).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
pip_install() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

# torch first and pinned: a CPU-working torch/torchvision pair (plain pip takes it from local disk
# where it lies there); an unpinned torch would pull a multi-GB CUDA build.
if ! "$VPY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  pip_install torch==2.14.1 torchvision==0.29.1
fi

stamp=".venv/.spatial-control-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pip_install -e ".[test]"
  comfy_root=$("$VPY" -c "from scripts.comfy_headless import find_comfyui; print(find_comfyui())")
  # ComfyUI's requirements, less torch (pinned above), torchaudio (audio nodes only) and the
  # optional template and docs packages
  grep -vE '^(torch|torchvision|torchaudio|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
    "$comfy_root/requirements.txt" > .venv/comfyui-requirements.txt
  pip_install -r .venv/comfyui-requirements.txt
  "$VPY" -c "import torch, diffusers, transformers, timm, safetensors, einops, pytest, spatial_control"
  echo "$want" > "$stamp"
fi
# Debian's Chromium for the browser test (tests/test_browser.py); Playwright drives it, nothing is
# downloaded. Installed here when running as root (CI); elsewhere: sudo apt-get install chromium.
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
  else
    echo "warning: no /usr/bin/chromium: the browser test will fail (sudo apt-get install chromium, or set CHROMIUM)"
  fi
fi
echo "setup done: $("$VPY" -c "import torch; print('torch', torch.__version__)"), ComfyUI at $("$VPY" -c "from scripts.comfy_headless import find_comfyui; print(find_comfyui())")"
