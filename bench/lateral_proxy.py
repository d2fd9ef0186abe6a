"""Can a lateral axis stand in for z at the real task's scale? (not a test)

At z-only factors (``2,1,1``) the guard's held-out pair is one scale coarser in z than the real
task, and its gain did not carry over on six of the benchmark's 21 volumes (docs/quality.md,
"Fifty-eighth session"). The acquisition's lateral axes are sampled at the output's own step, so
a pair made along one of them — the held-out region with y (or x) swapped into z's place,
degraded along it by the factor — has its target at the real task's scale and known. This
script scores the kept network on such pairs, with and without its inference extras, next to
tricubic + the same extras, against the true figures of the benchmark run. Nothing in the
pipeline changes.

    python bench/quality.py --factors 2,1,1 --variants --keep /tmp/k --json /tmp/q.json
    python bench/lateral_proxy.py /tmp/k --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from guard_alternatives import kept_sample, predict

#: Fewest planes a swapped pair's target needs (shorter axes are left out).
MIN_TARGET_PLANES = 16


def lateral_proxy_gains(work: Path) -> dict[str, dict[str, float] | None]:
    """For y and x of the held-out region swapped into z: the PSNR gain (dB) over tricubic of
    the network + extras, tricubic + extras and the network alone; None where that axis is
    shorter than :data:`MIN_TARGET_PLANES`."""
    from selfres import metrics
    from selfres.fov import box_slices
    from selfres.train import holdout_pair

    k = kept_sample(work)
    factors = k["factors"]
    region = np.asarray(k["volume"].data[box_slices(k["fov"].holdout)])
    gains: dict[str, dict[str, float] | None] = {}
    for axis, name in ((1, "y"), (2, "x")):
        swapped = np.ascontiguousarray(np.swapaxes(region, 0, axis))
        swapped = swapped[: (swapped.shape[0] // factors[0]) * factors[0]]
        if swapped.shape[0] < MIN_TARGET_PLANES:
            gains[name] = None
            continue
        target, low, interp = holdout_pair(swapped, factors, k["degradation"])
        data_range = float(max(target.max() - target.min(), 1e-6))
        base = metrics.psnr(target, interp, data_range=data_range)
        gains[name] = {what: metrics.psnr(target, predict(k[what], low, factors), data_range=data_range) - base
                       for what in ("network", "tricubic_bp", "network_alone")}
    return gains


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("keep", type=Path, help="the --keep folder of bench/quality.py")
    p.add_argument("--json", type=Path, required=True, help="the --json of the same bench/quality.py run")
    a = p.parse_args(argv)
    rows = ["| volume | true: net+BP − tricubic | held-out gain | proxy y: net+BP / tricubic+BP / net alone "
            "| proxy x: net+BP / tricubic+BP / net alone |", "|---|---|---|---|---|"]
    for r in json.loads(a.json.read_text())["rows"]:
        work = a.keep / f"{r['volume']}_x{r['factor']}"
        if not (work / "model").is_dir():
            continue
        g = lateral_proxy_gains(work)
        cells = [" / ".join(f"{v:+.2f}" for v in g[ax].values()) if g[ax] else "–" for ax in ("y", "x")]
        s = r["scores"]
        rows.append(f"| {r['volume']} | {s['model']['psnr'] - s['tricubic']['psnr']:+.2f} | {r['holdout_gain']:+.2f} "
                    f"| {cells[0]} | {cells[1]} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
