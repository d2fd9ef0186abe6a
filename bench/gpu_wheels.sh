#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on a GPU machine with no network (run here, from the
# repository root; .whl/ is git-ignored): the packages selfres imports that such an image
# lacks, for its Python (default 3.12, x86-64 Linux). Carry .whl/ with the working tree.
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]
#
# `names` below is what the lent H200 image lacked in the thirty-third session (zarr 3,
# dask, ome-zarr and jsonschema with the dependencies that image does not have).
set -euo pipefail
py=${1:-3.12}
names="zarr numcodecs crc32c google-crc32c donfig dask partd locket ome-zarr ome-zarr-models pydantic
pydantic-core pydantic-zarr annotated-types typing-inspection typing-extensions deprecated lazy-importer
jsonschema referencing rpds-py jsonschema-specifications imagecodecs importlib-metadata rangehttpserver"
# The versions installed here (those the CPU suite ran with), so that pairs such as
# pydantic / pydantic-core match; a name not installed here takes the newest.
mapfile -t reqs < <(python3 - $names <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
mkdir -p .whl
pip download -q --no-deps --only-binary=:all: --python-version "$py" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d .whl "${reqs[@]}"
du -sh .whl
