"""Which downscale made the Self-Vision authors' own low-resolution bead file? (not a test)

The authors publish a simulated bead pair (``svision_sim_beads_low_density_hr.tif``,
20×512×512, and ``…_lr.tif``, 5×128×128, "4× downsampled by the authors"). Their paper's
Methods say the bead experiment's acquisition was ``skimage.transform.rescale`` (Gaussian
prefilter σ = 1.5 HR px, then linear sampling); their code's default degradation is the
antialiased cubic (MATLAB ``imresize``). This script degrades their HR file by each
candidate and compares with their LR file: correlation, the least-squares intensity scale
and residual, and the beads' lateral and axial FWHM (× 4, pixels of the HR grid).

    python bench/svision_pair.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "real"


def candidates(hr: np.ndarray) -> dict[str, np.ndarray]:
    from quality import degrade_truth  # the benchmark's own LR degradations
    from skimage.transform import rescale

    def lr(how):
        return np.asarray(degrade_truth(hr, (4, 4, 4), how), np.float64)

    return {
        "antialiased cubic (imresize; selfres default D)": lr("cubic"),
        "skimage rescale (Gaussian σ 1.5 + linear; the paper's Methods)": lr("gaussian"),
        "skimage rescale, no anti-aliasing": rescale(hr, 0.25, anti_aliasing=False, order=1, preserve_range=True),
        "block mean (binning)": lr("block"),
    }


def lr_fwhm(img: np.ndarray, positions: np.ndarray) -> tuple[float, float]:
    from selfres import metrics

    t = metrics.bead_fwhm_table(img, positions=positions, max_beads=100, half_width=(2, 3, 3))
    with warnings.catch_warnings():  # no fit at all (an aliased candidate): nan, said in the table
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(np.r_[t["fwhm_y"], t["fwhm_x"]]) * 4), float(np.nanmedian(t["fwhm_z"]) * 4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real volumes")
    a = p.parse_args(argv)
    import tifffile

    from selfres import metrics

    hr = tifffile.imread(a.data / "svision_sim_beads_low_density_hr.tif").astype(np.float64)
    lr = tifffile.imread(a.data / "svision_sim_beads_low_density_lr.tif").astype(np.float64)
    pos = metrics.detect_beads(hr, min_distance=(4, 4, 4))
    pos_lr = np.clip(np.round((pos + 0.5) / 4 - 0.5).astype(int), 0, np.array(lr.shape) - 1)
    t = metrics.bead_fwhm_table(hr, positions=pos, max_beads=100, half_width=(6, 10, 10))
    print(f"HR {hr.shape}, {len(pos)} beads; HR FWHM lateral {np.nanmedian(np.r_[t['fwhm_y'], t['fwhm_x']]):.2f} px, "
          f"axial {np.nanmedian(t['fwhm_z']):.2f} px")
    lat, ax = lr_fwhm(lr, pos_lr)
    print("\n| candidate | corr. with their LR | LS scale | RMS residual | bead FWHM lateral / axial (×4) |")
    print("|---|---|---|---|---|")
    print(f"| their LR file | 1 | 1 | 0 | {lat:.2f} / {ax:.2f} |")
    b = lr.ravel()
    for name, v in candidates(hr).items():
        x = v.ravel()
        scale = float(x @ b / (x @ x))
        lat, ax = lr_fwhm(v, pos_lr)
        print(f"| {name} | {np.corrcoef(x, b)[0, 1]:.5f} | {scale:.3f} | "
              f"{np.sqrt(np.mean((scale * x - b) ** 2)):.3f} | {lat:.2f} / {ax:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
