#!/usr/bin/env bash
# GPU check, run by hand on a CUDA machine from the repository root (one short script, so
# that a lent GPU's minutes go to the checks): the CUDA tests, one sample restored on the
# GPU in each mode, throughput of both modes on the GPU, then the unit suite with CUDA present.
#
#   bash bench/gpu_check.sh [OUTDIR]
#
# Needs torch with CUDA and the package's dependencies importable (pip install -e .);
# where nothing can be installed, wheels in .whl/ are unpacked to /tmp/site first. For a
# machine with no network whose Python has torch, numpy, scipy, scikit-image, tifffile and
# pandas (the lent H200, Python 3.12), make them here with bench/gpu_wheels.sh (~40 MB).
# Figures go to OUTDIR (default: ./gpu-check): at most 7 files (logs, JSON). Each step has
# its own time limit, so that one slow step cannot eat the others' minutes; the whole
# script ends within about 9 minutes.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
# The project's pytest options name a recent pytest-xdist's flags; use only long-standing ones.
pytest_plain=(python3 -m pytest -q -p no:cacheprovider -o addopts= -ra)
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }
work=$(mktemp -d)

step "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
python3 -c "import selfres, zarr, dask, ome_zarr; print('selfres from', selfres.__file__, '| zarr', zarr.__version__, '| dask', dask.__version__)"

step "CUDA tests"
timeout -s INT 90 "${pytest_plain[@]}" tests/unit/test_cuda.py 2>&1 | tee "$out/test_cuda.log" | tail -n 25

step "one sample restored on the GPU (demo neurites, x2, default settings)"
python3 -m selfres.cli demo "$work/demo" >/dev/null
restore() {  # name, extra arguments...
    local name=$1; shift
    /usr/bin/time -v timeout 120 python3 -m selfres.cli restore "$work/demo/neurites.tif" -o "$work/$name.ome.zarr" \
        --keep "$work/$name-work" --device cuda "$@" 2>&1 | tee -a "$out/restore.log" \
        | grep -E "INFO|WARNING|ERROR|Traceback|Error|Elapsed|Maximum resident" | tail -n 30
    cp "$work/$name-work/qc/metrics.json" "$out/metrics_$name.json" 2>/dev/null
    python3 - "$work/$name-work" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
for name in ("qc/metrics.json", "model/model.json"):
    p = work / name
    if p.exists():
        d = json.loads(p.read_text())
        d = d.get("metadata", d)  # model.json keeps the training's figures under "metadata"
        keep = {k: d[k] for k in ("train_seconds", "infer_seconds", "device", "amp", "steps_done", "best_step",
                                  "self_validation", "isotropy_in", "isotropy_out", "flags", "ran_on", "stop_reason") if k in d}
        print(name, json.dumps(keep)[:700])
EOF
}
restore enhance --scale 2,2,2

step "one sample restored in isotropic mode on the GPU (demo neurites declared 4x coarser in z)"
restore isotropic --mode isotropic --voxel-size 1.0,0.25,0.25

step "throughput on the GPU (enhance x2 and x4, isotropic)"
timeout 100 python3 bench/throughput.py --device cuda --threads 8 --repeat 2 --shape 128 512 512 --isotropic \
    --iso-shape 64 512 512 --x4 --json "$out/gpu_throughput.json" 2>&1 | tee "$out/throughput.log"

step "unit and property suites with CUDA present (time-boxed: a test's result is logged as it ends)"
# -rA lists every test's outcome in the summary, so a run cut off by the time limit still
# shows which tests ended ('-q -v' would cancel out and list none).
timeout -s INT 120 "${pytest_plain[@]}" -rA -n 8 --dist loadfile tests/unit tests/property >"$out/test_unit.log" 2>&1
printf 'passed %s, skipped %s, failed or errors %s\n' "$(grep -c '^PASSED ' "$out/test_unit.log")" \
    "$(grep -c '^SKIPPED ' "$out/test_unit.log")" "$(grep -cE '^(FAILED|ERROR) ' "$out/test_unit.log")"
grep -E '^(FAILED|ERROR) |^SKIPPED |^=+ .*(passed|failed|error).* =+$' "$out/test_unit.log" | head -n 20
rm -rf "$work"
step "done"
