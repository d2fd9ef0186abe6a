"""Held-out end slabs: how much structure each end of each lateral axis holds (not a test)

Crop holds out an end slab of the longer lateral axis, the end with more structure (mean
gradient magnitude, ``fov.StructureScore``); where that end holds less than
``fov.SPARSE_HOLDOUT_SHARE`` of the volume's mean, the ends of the other axis are tried too.
For each real volume (the benchmark's ×2 and ``1,2,2`` inputs, and the file as acquired at
``1,2,2``), this prints each end's structure as a share of the volume's mean, and the held-out
box crop takes.

    python bench/holdout_ends.py --data ../shared/data/real
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the benchmark's protocol, reused)


def end_shares(volume: np.ndarray, factors) -> tuple[list[str], tuple]:
    """Each lateral end slab's structure / the volume's mean, and crop's held-out box."""
    from selfres import fov, normalise

    v = np.asarray(normalise.apply(volume, normalise.fit_percentiles(volume)), np.float32)
    score = fov.StructureScore(v)
    full = tuple((0, n) for n in v.shape)
    total = score.mean(full)
    out = []
    for ax in (1, 2):
        try:
            _, length = fov.automatic_holdout_slab(v.shape, multiple=factors, axis=ax)
        except Exception:  # noqa: BLE001 - too small along this axis
            out.append(f"{'zyx'[ax]}: -")
            continue
        for lo, hi in ((0, length), (v.shape[ax] - length, v.shape[ax])):
            region = list(full)
            region[ax] = (lo, hi)
            out.append(f"{'zyx'[ax]}{'+' if lo else '-'} {score.mean(tuple(region)) / total:.2f}")
    chosen = fov.choose_training_fov(v, multiple=factors)
    return out, chosen.holdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    args = ap.parse_args(argv)
    from selfres import io

    for path in sorted(args.data.glob("*.tif")):
        if path.stem.endswith("_lr"):  # the authors' own low-resolution file
            continue
        hr = np.asarray(io.read_volume(path).data, np.float32)
        cases = []
        for factors in ((2, 2, 2), (1, 2, 2)):
            h = hr[tuple(slice(0, (n // f) * f) for n, f in zip(hr.shape, factors))]
            if h.shape[0] >= 8 * factors[0]:
                cases.append((f"x{''.join(map(str, factors))}", quality.degrade_truth(h, factors, "cubic"), factors))
        cases.append(("as acquired, 1,2,2", hr, (1, 2, 2)))
        for label, low, factors in cases:
            ends, holdout = end_shares(low, factors)
            print(f"{path.stem[:24]:24s} {label:20s} {str(low.shape):16s} {' | '.join(ends)} -> held out {holdout}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
