#!/usr/bin/env bash
# Install selfres and what it needs into the current Python (>= 3.11).
#   scripts/setup.sh          the pipeline
#   scripts/setup.sh --test   the pipeline plus the test tools
# A CPU build of torch is installed first when torch is missing, so that pip does not
# pull the multi-GB CUDA build on machines without a GPU. On a GPU node install the
# CUDA build of torch yourself before running this (see README, "The two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "selfres setup: torch missing; installing the CPU build torch==${SELFRES_TORCH_VERSION:-2.13.0}"
    "$PY" -m pip install "torch==${SELFRES_TORCH_VERSION:-2.13.0}" \
        || "$PY" -m pip install "torch==${SELFRES_TORCH_VERSION:-2.13.0}" --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -e ".${extras}"
echo "selfres setup: done ($("$PY" -c 'import selfres; print(selfres.__version__)'))"
