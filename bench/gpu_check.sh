#!/usr/bin/env bash
# GPU check, run by hand on a CUDA machine from the repository root (one short script, so
# that a lent GPU's minutes go to the checks): the CUDA tests, the unit suite with CUDA
# present, throughput of both modes on the GPU, and one sample restored on the GPU.
#
#   bash bench/gpu_check.sh [OUTDIR]
#
# Needs torch with CUDA and the package's dependencies importable (pip install -e .);
# where nothing can be installed, wheels in .whl/ are unpacked to /tmp/site first.
# Figures go to OUTDIR (default: ./gpu-check) as JSON and logs.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"

step "CUDA tests"
python3 -m pytest -q -p no:cacheprovider -ra tests/unit/test_cuda.py 2>&1 | tee "$out/test_cuda.log" | tail -n 25

step "unit and property suites with CUDA present"
timeout 300 python3 -m pytest -q -p no:cacheprovider -ra tests/unit tests/property 2>&1 | tee "$out/test_unit.log" | tail -n 25

step "throughput on the GPU (enhance x2 and x4, isotropic)"
python3 bench/throughput.py --device cuda --threads 8 --repeat 3 --shape 128 512 512 --isotropic \
    --iso-shape 64 512 512 --x4 --json "$out/gpu_throughput.json" 2>&1 | tee "$out/throughput.log"

step "one sample restored on the GPU (demo neurites, x2, default settings)"
python3 -m selfres.cli demo "$out/demo" >/dev/null && \
/usr/bin/time -v python3 -m selfres.cli restore "$out/demo/neurites.tif" -o "$out/neurites.ome.zarr" --scale 2,2,2 \
    --keep "$out/neurites-work" --device cuda 2>&1 | grep -E "INFO|ERROR|Elapsed|Maximum resident" | tail -n 25
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1]) / "neurites-work"
for name in ("qc/metrics.json", "model/model.json"):
    p = work / name
    if p.exists():
        d = json.loads(p.read_text())
        keep = {k: d[k] for k in ("train_seconds", "infer_seconds", "device", "steps_done", "best_step",
                                  "self_validation", "flags") if k in d}
        print(name, json.dumps(keep)[:600])
EOF
step "one sample restored in isotropic mode on the GPU (demo neurites declared 4x coarser in z)"
/usr/bin/time -v python3 -m selfres.cli restore "$out/demo/neurites.tif" -o "$out/neurites-iso.ome.zarr" --mode isotropic \
    --voxel-size 1.0,0.25,0.25 --keep "$out/neurites-iso-work" --device cuda 2>&1 | grep -E "INFO|ERROR|Elapsed|Maximum resident" | tail -n 25
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d[k] for k in ('train_seconds','infer_seconds','self_validation','isotropy_in','isotropy_out','flags','best_step') if k in d})[:600])" \
    "$out/neurites-iso-work/qc/metrics.json" 2>&1 | tail -n 2
rm -rf "$out/demo" "$out/neurites.ome.zarr" "$out/neurites-work" "$out/neurites-iso.ome.zarr" "$out/neurites-iso-work"
step "done"
