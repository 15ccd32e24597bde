#!/usr/bin/env bash
# Install autounet and its test tools into the current Python environment.
# On a machine without an NVIDIA GPU, install the CPU build of torch first so that pip does
# not pull several GB of CUDA wheels; with a GPU, pyproject's normal torch range applies.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing torch with CUDA support"
  elif [ -d /opt/wheels ] && ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --find-links /opt/wheels "torch==2.13.0"
  else
    "$PY" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# Keep the torch chosen above: a test-only dependency (dynamic-network-architectures -> timm ->
# torchvision) would otherwise let pip replace it with the newest (CUDA) build.
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
"$PY" -m pip install -e ".[test]" "torch==$TORCH_VERSION"
