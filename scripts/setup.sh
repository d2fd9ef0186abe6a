#!/usr/bin/env bash
# Install selfres and what it needs into the current Python (>= 3.11).
#   scripts/setup.sh          the pipeline
#   scripts/setup.sh --test   the pipeline plus the test tools
# When torch is missing it is installed first: on a machine without a GPU (no nvidia-smi)
# the CPU build, from PyTorch's CPU wheel index (pip's own configured sources, e.g. a
# local wheel folder, still count), so that pip does not pull the multi-GB CUDA build
# that PyPI serves for Linux; with a GPU, the default build (CUDA). Another torch
# version: SELFRES_TORCH_VERSION=2.x.y. A torch already installed is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
TORCH="torch==${SELFRES_TORCH_VERSION:-2.13.0}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "selfres setup: torch missing; a GPU is present: installing $TORCH (PyPI's CUDA build)"
        "$PY" -m pip install "$TORCH"
    else
        echo "selfres setup: torch missing; no GPU: installing the CPU build of $TORCH"
        "$PY" -m pip install "$TORCH" --index-url https://download.pytorch.org/whl/cpu --timeout 30 --retries 1 \
            || "$PY" -m pip install "$TORCH"
    fi
fi
"$PY" -m pip install -e ".${extras}"
echo "selfres setup: done ($("$PY" -c 'import selfres; print(selfres.__version__)'))"
