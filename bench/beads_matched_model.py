"""The bead experiment with the pipeline told the seed's exact acquisition model (not a test).

The seed's bead acquisition is ``skimage.transform.rescale`` (Gaussian prefilter
σ = (f − 1)/2 in voxels of the grid being downsampled, then linear sampling); the
pipeline's default model ``D`` is the antialiased cubic. This diagnostic swaps ``D`` —
for the training pairs, the held-out pair and back-projection alike — for that rescale,
built as per-axis matrices (equal to ``skimage`` to float rounding, checked first), by
patching :func:`selfres.degrade.downscale_cubic` in this process, then runs
``bench/quality.py --no-real --beads`` with the remaining arguments. A scale-relative
prefilter is a simulation convention, not an optical model, so the pipeline does not
offer it as a setting; this only asks what the right ``D`` would change.

    python bench/beads_matched_model.py                                  # defaults otherwise
    python bench/beads_matched_model.py --set infer.back_projection_iterations=10
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


@lru_cache(maxsize=256)
def rescale_matrix(n: int, factor: int) -> np.ndarray:
    """(n // factor, n): mirror-border Gaussian σ = (factor − 1)/2, then linear sampling at
    output centres ``(j + 0.5)·factor − 0.5`` (``skimage`` rescale semantics)."""
    from selfres import degrade

    g = degrade._gaussian_block_matrix(n, (factor - 1) / 2, 1)  # the mirror-border blur alone (no block mean)
    n_out = n // factor
    u = (np.arange(n_out) + 0.5) * factor - 0.5
    i0 = np.floor(u).astype(int)
    t = u - i0
    s = np.zeros((n_out, n))
    s[np.arange(n_out), np.clip(i0, 0, n - 1)] += 1 - t
    s[np.arange(n_out), np.clip(i0 + 1, 0, n - 1)] += t
    return s @ g


def downscale_rescale(x, factors):
    """numpy or torch: ``x`` downscaled by ``factors`` along its last axes (rescale semantics)."""
    import torch

    y = x
    fs = tuple(int(f) for f in factors)
    for i, f in enumerate(fs):
        axis = i - len(fs)
        if f == 1:
            continue
        m = rescale_matrix(int(y.shape[axis]), f)
        if isinstance(y, torch.Tensor):
            mt = torch.tensor(m, dtype=torch.float32, device=y.device)
            y = torch.movedim(torch.tensordot(mt, torch.movedim(y, axis, 0), dims=([1], [0])), 0, axis)
        else:
            a = np.moveaxis(np.asarray(y, np.float32), axis, 0)
            y = np.moveaxis(np.tensordot(m.astype(np.float32), a, axes=([1], [0])), 0, axis)
    return y


def main(argv=None) -> int:
    import quality

    from selfres import degrade, demo

    probe = np.random.default_rng(0).random((12, 40, 40)).astype(np.float32)
    err = float(np.abs(downscale_rescale(probe, (4, 4, 4)) - demo.downsample_acquisition(probe, 4)).max())
    print(f"rescale matrices vs skimage: max difference {err:.1e}")
    if err > 1e-5:
        raise SystemExit("the rescale matrices do not match skimage; not running")
    degrade.downscale_cubic = downscale_rescale  # D everywhere in this process
    return quality.main(["--no-real", "--beads", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
