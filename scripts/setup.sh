#!/usr/bin/env bash
# Install selfres and what it needs into the current Python (>= 3.11).
#   scripts/setup.sh          the pipeline
#   scripts/setup.sh --test   the pipeline plus the test tools
# When torch is missing it is installed first: on a machine without a GPU (no nvidia-smi)
# the CPU build, from PyTorch's CPU wheel index (it replaces pip's index-url; a configured
# find-links or extra-index-url still counts), so that pip does not pull the multi-GB CUDA
# build that PyPI serves for Linux; with a GPU, PyPI's default (CUDA) build.
# SELFRES_TORCH_BUILD=cuda|cpu decides instead (a cluster's login node has no GPU, but the
# environment it installs serves the GPU jobs: SELFRES_TORCH_BUILD=cuda there).
# Another torch version: SELFRES_TORCH_VERSION=2.x.y. A torch already installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
TORCH="torch==${SELFRES_TORCH_VERSION:-2.13.0}"
case "${SELFRES_TORCH_BUILD:-}" in
    cuda|cpu) BUILD=$SELFRES_TORCH_BUILD ;;
    "") if command -v nvidia-smi >/dev/null 2>&1; then BUILD=cuda; else BUILD=cpu; fi ;;
    *) echo "selfres setup: SELFRES_TORCH_BUILD must be cuda or cpu, got '$SELFRES_TORCH_BUILD'" >&2; exit 2 ;;
esac
if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ "$BUILD" = cuda ]; then
        echo "selfres setup: torch missing; installing $TORCH (PyPI's CUDA build)"
        "$PY" -m pip install "$TORCH"
    elif [ -n "${SELFRES_TORCH_BUILD:-}" ]; then  # cpu asked for: no multi-GB CUDA fall-back
        echo "selfres setup: torch missing; installing the CPU build of $TORCH"
        "$PY" -m pip install "$TORCH" --index-url https://download.pytorch.org/whl/cpu --timeout 30 --retries 1
    else
        echo "selfres setup: torch missing; no GPU here: installing the CPU build of $TORCH" \
             "(SELFRES_TORCH_BUILD=cuda for an environment GPU jobs will use)"
        "$PY" -m pip install "$TORCH" --index-url https://download.pytorch.org/whl/cpu --timeout 30 --retries 1 \
            || { echo "selfres setup: PyTorch's CPU index unreachable; installing $TORCH from pip's own index" \
                      "(on PyPI for Linux: the CUDA build, several GB)"; "$PY" -m pip install "$TORCH"; }
    fi
elif [ "${SELFRES_TORCH_BUILD:-}" = cuda ] && [ "$("$PY" -c 'import torch; print(torch.version.cuda or "")')" = "" ]; then
    echo "selfres setup: WARNING: SELFRES_TORCH_BUILD=cuda, but the torch installed here is a CPU build; GPU jobs" \
         "would compute on the CPU: pip uninstall torch, then run this again" >&2
fi
"$PY" -m pip install -e ".${extras}"
echo "selfres setup: done ($("$PY" -c 'import selfres; print(selfres.__version__)'))"
