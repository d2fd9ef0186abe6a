"""Zero margins: does the pipeline hold on a volume whose outer part is exactly 0? (not a test)

Stitched mosaics and cleared-brain light-sheet stacks often carry large regions of exact
zeros beyond the tissue. They weigh on the percentile normalisation, the noise estimate
(``train.degradation.noise: match``), the training-FOV search and the held-out region. For
each volume, the benchmark's protocol (``bench/quality.py``: antialiased cubic ×2 on every
axis, optional shot noise) is run twice: on the volume as it is, and on the volume doubled
in x with the new half exactly 0. Both are scored against the truth on the original extent
only (the zeros would flatter every method alike), next to tricubic.

    python bench/zero_margins.py --lr-noise 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the benchmark's protocol, reused)

VOLUMES = {"nucleus_confocal": "neubias_nucleus_dna_confocal.tif",
           "trailmap_axons": "trailmap_axons_training_volume.tif",
           "nuclei_tissue": "neubias_nuclei_tissue_z4um.tif"}


def run_one(hr: np.ndarray, voxel_size, *, pad: bool, photons: float | None, settings, name: str) -> dict:
    factors = (2, 2, 2)
    volume = np.concatenate([hr, np.zeros_like(hr)], axis=2) if pad else hr
    low = quality.degrade_truth(volume, factors, "cubic")
    if photons:
        low = quality.add_shot_noise(low, photons)
    vs = tuple(v * f for v, f in zip(voxel_size, factors)) if voxel_size else None
    with tempfile.TemporaryDirectory(prefix="selfres-zeros-") as tmp:
        r = quality.run_pipeline(low, Path(tmp), factors=factors, settings=settings, voxel_size=vs, name=name)
    images = {"tricubic": quality.interpolations(low, factors)["tricubic"], "model": r["model"],
              "selfres": r["restored"]}
    extent = tuple(slice(0, n) for n in hr.shape)  # scored on the original extent only
    psnr = {k: v["psnr"] for k, v in quality.scores(hr, {k: v[extent] for k, v in images.items()},
                                                     ssim=False).items()}
    meta = r["meta"]
    sv = meta["self_validation"]
    row = {"volume": name, "zero_margin": pad, **psnr, "held_out_gain": sv["psnr_model"] - sv["psnr_interp"],
           "flags": meta["flags"], "best_step": meta["best_step"], "train_s": r["train_s"],
           "correction_noise": meta.get("correction_noise")}
    row["true_gain"] = row["model"] - row["tricubic"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=quality.DEFAULT_DATA)
    p.add_argument("--lr-noise", type=float, default=None, metavar="PHOTONS",
                   help="shot noise on the LR volume (photons at its 99.9th percentile), as bench/quality.py")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    from selfres import io
    from selfres.settings import parse_settings

    settings = parse_settings({})
    rows = []
    print("| volume | zero margin | tricubic dB | network dB | Δ network | held-out gain | flags | correction noise | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, file in VOLUMES.items():
        vol = io.read_volume(a.data / file)
        hr = np.asarray(vol.data, np.float32)
        hr = hr[tuple(slice(0, (n // 2) * 2) for n in hr.shape)]
        for pad in (False, True):
            r = run_one(hr, vol.voxel_size, pad=pad, photons=a.lr_noise, settings=settings, name=name)
            rows.append(r)
            print(f"| {name} | {'x doubled, half 0' if pad else 'none'} | {r['tricubic']:.2f} | {r['model']:.2f} | "
                  f"{r['true_gain']:+.2f} | {r['held_out_gain']:+.2f} | {', '.join(r['flags']) or '–'} | "
                  f"{r['correction_noise']} | {r['train_s']:.0f} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
