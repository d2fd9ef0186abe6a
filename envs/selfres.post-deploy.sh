#!/usr/bin/env bash
# Run by Snakemake inside the freshly created envs/selfres.yaml environment: install the
# selfres package from this checkout, editable (code updates apply without rebuilding
# the environment) and without dependencies (envs/selfres.yaml provides them).
#
# Snakemake runs a copy of this script kept beside the environment (.snakemake/conda/),
# so its own location says nothing about the checkout: selfres's Snakefile names it in
# SELFRES_CHECKOUT, which this process inherits from Snakemake.
set -euo pipefail
repo=${SELFRES_CHECKOUT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if ! grep -qs '^name = "selfres"' "$repo/pyproject.toml"; then
    echo "selfres post-deploy: $repo is not a selfres checkout (SELFRES_CHECKOUT=${SELFRES_CHECKOUT:-unset});" \
         "create the environment through selfres's Snakefile (snakemake --sdm conda), which sets it" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e "$repo"
