#!/usr/bin/env bash
# Run by Snakemake inside the freshly created envs/selfres.yaml environment: install the
# selfres package from this checkout, editable (code updates apply without rebuilding
# the environment) and without dependencies (envs/selfres.yaml provides them).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python -m pip install --no-deps --no-build-isolation -e "$repo"
