"""Synthetic acquisitions for the built-in demo and for tests.

Two phantoms, each a high-resolution (HR) "truth" and an undersampled acquisition
made from it:

* ``beads`` — the Self-Vision seed experiment: 500 point sources in a
  60×512×512 volume blurred by an anisotropic Gaussian PSF σ = (4, 2, 2) px
  (z, y, x), acquired 4× coarser on every axis (15×128×128).
* ``neurites`` — smooth random 3-D filaments (thin tubes, radius ~1–2 px, varying
  brightness) and a few soma blobs, blurred by an anisotropic PSF (σz > σxy), on a
  low background; acquired 2× coarser (32×128×128).

Only numpy, scipy and scikit-image are used; everything is seeded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize

__all__ = [
    "DEMO_SAMPLES",
    "bead_positions",
    "downsample_acquisition",
    "make_beads",
    "make_neurites",
    "write_demo",
]

#: Per sample: HR shape, HR voxel size (z, y, x) µm, acquisition factor per axis,
#: phantom size.
DEMO_SAMPLES: dict[str, dict] = {
    "beads": {"shape": (60, 512, 512), "voxel_size": (0.5, 0.25, 0.25), "factor": (4, 4, 4),
              "n_beads": 500},
    "neurites": {"shape": (64, 256, 256), "voxel_size": (1.0, 0.5, 0.5), "factor": (2, 2, 2),
                 "n_filaments": 40},
}

_PEAK_PHOTONS = 1000.0  # mild Poisson noise: SNR ~ 30 at the brightest voxel
_FILL = 0.9  # fraction of the uint16 range used by the brightest HR voxel


def _check_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int, int]:
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name} must be 3 positive integers (z, y, x), got {shape!r}")
    return out


def _gaussian_kernel(sigma: Sequence[float], *, truncate: float = 4.0) -> np.ndarray:
    """Separable 3-D Gaussian sampled on integer offsets, peak = 1."""
    axes = []
    for s in sigma:
        r = max(1, int(math.ceil(truncate * s)))
        x = np.arange(-r, r + 1, dtype=np.float64)
        axes.append(np.exp(-0.5 * (x / s) ** 2))
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :])


def bead_positions(*, shape: Sequence[int] = (60, 512, 512), n_beads: int = 500,
                   seed: int = 0) -> np.ndarray:
    """Integer voxel positions of the beads drawn by :func:`make_beads`.

    Parameters
    ----------
    shape
        Volume shape ``(z, y, x)``.
    n_beads
        Number of beads (distinct voxels).
    seed
        Random seed; the same seed gives the same positions as :func:`make_beads`.

    Returns
    -------
    numpy.ndarray
        ``(n_beads, 3)`` int array of ``(z, y, x)`` positions, sorted.
    """
    shape = _check_shape(shape)
    n_vox = int(np.prod(shape))
    if not isinstance(n_beads, (int, np.integer)) or not 0 <= n_beads <= n_vox:
        raise ValueError(f"n_beads must be an integer in 0..{n_vox}, got {n_beads!r}")
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(n_vox, size=int(n_beads), replace=False))
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


def make_beads(*, shape: Sequence[int] = (60, 512, 512), n_beads: int = 500,
               sigma_px: Sequence[float] = (4.0, 2.0, 2.0), seed: int = 0) -> np.ndarray:
    """Random point sources blurred by an anisotropic Gaussian PSF.

    Each bead is one voxel convolved with a Gaussian of standard deviation
    ``sigma_px``; an isolated bead peaks at exactly 1 (overlapping beads add up).
    The positions are those of :func:`bead_positions` with the same arguments.

    Parameters
    ----------
    shape
        Volume shape ``(z, y, x)``.
    n_beads
        Number of beads.
    sigma_px
        PSF standard deviation ``(z, y, x)`` in voxels (Self-Vision: 4, 2, 2).
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
        ``float32`` volume of ``shape``.
    """
    shape = _check_shape(shape)
    sigma = tuple(float(s) for s in sigma_px) if len(sigma_px) == 3 else ()
    if len(sigma) != 3 or min(sigma) <= 0:
        raise ValueError(f"sigma_px must be 3 positive numbers (z, y, x), got {sigma_px!r}")
    pos = bead_positions(shape=shape, n_beads=n_beads, seed=seed)
    kernel = _gaussian_kernel(sigma)
    out = np.zeros(shape, dtype=np.float64)
    _stamp(out, pos, kernel, np.ones(len(pos)))
    return out.astype(np.float32)


def _stamp(out: np.ndarray, centres: np.ndarray, kernel: np.ndarray,
           weights: np.ndarray) -> None:
    """Add ``weights[i] * kernel`` centred on each integer centre, clipped to ``out``."""
    half = [k // 2 for k in kernel.shape]
    for c, w in zip(centres, weights):
        dst, src = [], []
        for ci, hi, n, k in zip(c, half, out.shape, kernel.shape):
            lo = int(ci) - hi
            a, b = max(lo, 0), min(lo + k, n)
            dst.append(slice(a, b))
            src.append(slice(a - lo, b - lo))
        out[tuple(dst)] += w * kernel[tuple(src)]


def _random_walk(rng: np.random.Generator, start: np.ndarray, n_steps: int,
                 shape: np.ndarray, *, step: float, turn: float,
                 z_bias: float) -> np.ndarray:
    """Persistent random walk (smooth curve), reflected at the borders."""
    d = rng.normal(size=3)
    d[0] *= z_bias
    d /= np.linalg.norm(d)
    noise = rng.normal(scale=turn, size=(n_steps, 3))
    noise[:, 0] *= z_bias
    hi = [float(n) - 1.0 for n in shape]
    p = [float(v) for v in start]
    dz, dy, dx = (float(v) for v in d)
    pts = np.empty((n_steps, 3))
    for i in range(n_steps):
        pts[i] = p
        nz, ny, nx = noise[i]
        dz, dy, dx = dz + nz, dy + ny, dx + nx
        norm = math.sqrt(dz * dz + dy * dy + dx * dx) or 1.0
        d3 = [dz / norm, dy / norm, dx / norm]
        for ax in range(3):
            p[ax] += step * d3[ax]
            if p[ax] < 0.0 or p[ax] > hi[ax]:  # reflect at the walls
                d3[ax] = -d3[ax]
                p[ax] = min(max(p[ax], 0.0), hi[ax])
        dz, dy, dx = d3
    return pts


def make_neurites(*, shape: Sequence[int] = (64, 256, 256), n_filaments: int = 40,
                  seed: int = 0) -> np.ndarray:
    """Filament (neurite) phantom with a few somata, blurred by an anisotropic PSF.

    Filaments are persistent random walks (smooth 3-D curves, mostly lateral),
    drawn as tubes with a Gaussian cross-section of radius 1–2 voxels and a
    brightness of 0.3–1 each; about one soma per ten filaments (soft balls of radius
    4–6 voxels), the first filaments starting from them. The whole is blurred by a
    Gaussian PSF σ = (1.5, 0.7, 0.7) voxels (z, y, x) and sits on a background of
    0.02. The brightest voxel is about 1.

    Parameters
    ----------
    shape
        Volume shape ``(z, y, x)``.
    n_filaments
        Number of filaments (``>= 0``).
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
        ``float32`` volume of ``shape``.
    """
    shape = _check_shape(shape)
    if not isinstance(n_filaments, (int, np.integer)) or n_filaments < 0:
        raise ValueError(f"n_filaments must be an integer >= 0, got {n_filaments!r}")
    rng = np.random.default_rng(seed)
    shp = np.array(shape, dtype=np.float64)
    psf = np.array([1.5, 0.7, 0.7])
    out = np.zeros(shape, dtype=np.float64)

    # somata
    n_soma = max(1, n_filaments // 10) if n_filaments else 1
    somata = rng.uniform(0.15, 0.85, size=(n_soma, 3)) * (shp - 1)
    soma_img = np.zeros(shape, dtype=np.float64)
    for c in somata:
        r = rng.uniform(4.0, 6.0)
        b = rng.uniform(0.6, 1.0)
        lo = np.maximum(np.floor(c - r - 3), 0).astype(int)
        hi = np.minimum(np.ceil(c + r + 4), shp).astype(int)
        zz, yy, xx = np.meshgrid(*[np.arange(a, e) for a, e in zip(lo, hi)], indexing="ij")
        dist = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        ball = b / (1.0 + np.exp((dist - r) / 0.7))
        region = tuple(slice(a, e) for a, e in zip(lo, hi))
        soma_img[region] = np.maximum(soma_img[region], ball)
    out += ndimage.gaussian_filter(soma_img, psf, mode="constant")

    # filaments, rendered per radius class: points splatted, then one Gaussian blur
    radii = (1.0, 1.5, 2.0)
    lines = [np.zeros(shape, dtype=np.float32) for _ in radii]
    step = 0.5
    diag = float(np.linalg.norm(shp[1:]))
    for i in range(int(n_filaments)):
        start = somata[i % n_soma] if i < 2 * n_soma else rng.uniform(0, 1, 3) * (shp - 1)
        n_steps = int(rng.uniform(0.4, 1.0) * diag / step)
        pts = _random_walk(rng, start, n_steps, shp, step=step, turn=0.12, z_bias=0.3)
        k = int(rng.integers(len(radii)))
        bright = rng.uniform(0.3, 1.0)
        idx = np.clip(np.rint(pts).astype(int), 0, shp.astype(int) - 1)
        np.add.at(lines[k], tuple(idx.T), bright * step)
    for r, img in zip(radii, lines):
        sig = np.sqrt(r ** 2 + psf ** 2)
        # a straight line of unit density has cross-section peak 1/(2*pi*s_a*s_b)
        norm = 2.0 * np.pi * sig[1] * math.sqrt(sig[1] * sig[0])
        out += norm * ndimage.gaussian_filter(img, sig, mode="constant")

    peak = float(out.max())
    if peak > 0:
        out /= peak
    out += 0.02
    return out.astype(np.float32)


def downsample_acquisition(hr: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """Antialiased downsampling by an integer factor per axis.

    Same semantics as ``skimage.transform.rescale(hr, 1/factor,
    anti_aliasing=True)`` (Gaussian prefilter σ = (factor − 1)/2, then linear
    interpolation with half-pixel centres), after cropping ``hr`` to a multiple of
    ``factor`` so the output shape is exactly ``hr.shape // factor``.

    Parameters
    ----------
    hr
        2-D or 3-D array.
    factor
        One integer ``>= 1`` for every axis, or one per axis.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``hr.shape // factor``.
    """
    hr = np.asarray(hr)
    fac = (factor,) * hr.ndim if np.isscalar(factor) else tuple(factor)
    if len(fac) != hr.ndim or not all(
        isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 1 for f in fac
    ):
        raise ValueError(
            f"factor must be an integer >= 1 or {hr.ndim} of them (one per axis), "
            f"got {factor!r}"
        )
    out_shape = tuple(n // f for n, f in zip(hr.shape, fac))
    if min(out_shape) < 1:
        raise ValueError(f"factor {factor!r} is larger than the shape {hr.shape}")
    crop = hr[tuple(slice(0, n * f) for n, f in zip(out_shape, fac))].astype(np.float32)
    return resize(
        crop, out_shape, order=1, mode="reflect", anti_aliasing=True, preserve_range=True
    ).astype(np.float32)


def _write_imagej(path: Path, data: np.ndarray, voxel_size: Sequence[float]) -> None:
    import tifffile

    from selfres.io import atomic_output

    vz, vy, vx = (float(v) for v in voxel_size)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp, data, imagej=True, resolution=(1.0 / vx, 1.0 / vy),
            metadata={"spacing": vz, "unit": "micron", "axes": "ZYX"},
        )


def write_demo(outdir: str | os.PathLike, *, samples: Sequence[str] = ("beads", "neurites"),
               seed: int = 0) -> dict[str, dict[str, Path]]:
    """Write the demo acquisitions and their high-resolution references.

    For each sample, ``{sample}.tif`` is the acquisition (uint16 ImageJ hyperstack,
    voxel size in µm, mild Poisson noise) and ``{sample}_reference.tif`` the
    noise-free truth on the output grid of ``enhance`` mode (the HR grid), in the
    same intensity units. The brightest reference voxel uses 90 % of the uint16
    range.

    ============  =================  ==================  ==========  ==========
    sample        reference shape    reference voxel µm  factor      acquisition
    ============  =================  ==================  ==========  ==========
    beads         60×512×512         0.5, 0.25, 0.25     4, 4, 4     15×128×128, 2, 1, 1 µm
    neurites      64×256×256         1.0, 0.5, 0.5       2, 2, 2     32×128×128, 2, 1, 1 µm
    ============  =================  ==================  ==========  ==========

    Parameters
    ----------
    outdir
        Output folder (created if needed).
    samples
        Which of ``"beads"``, ``"neurites"`` to write.
    seed
        Random seed (phantom and noise).

    Returns
    -------
    dict
        ``{sample: {"acquisition": Path, "reference": Path}}``.
    """
    if isinstance(samples, str):
        samples = (samples,)
    unknown = [s for s in samples if s not in DEMO_SAMPLES]
    if unknown:
        raise ValueError(f"unknown demo sample(s) {unknown}; allowed: {sorted(DEMO_SAMPLES)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for name in samples:
        spec = DEMO_SAMPLES[name]
        k = list(DEMO_SAMPLES).index(name)  # the sample's own noise, whichever others are written with it
        if name == "beads":
            hr = make_beads(shape=spec["shape"], n_beads=spec["n_beads"], seed=seed)
        else:
            hr = make_neurites(shape=spec["shape"], n_filaments=spec["n_filaments"], seed=seed)
        acq = downsample_acquisition(hr, spec["factor"])
        scale = _FILL * 65535.0 / max(float(hr.max()), float(acq.max()), 1e-12)
        rng = np.random.default_rng([seed, k, 1])
        counts = rng.poisson(np.clip(acq, 0, None).astype(np.float64) * _PEAK_PHOTONS)
        acq_u16 = np.clip(np.rint(counts * (scale / _PEAK_PHOTONS)), 0, 65535).astype(np.uint16)
        ref_u16 = np.clip(np.rint(hr.astype(np.float64) * scale), 0, 65535).astype(np.uint16)
        hr_vox = spec["voxel_size"]
        acq_vox = tuple(v * f for v, f in zip(hr_vox, spec["factor"]))
        paths = {"acquisition": outdir / f"{name}.tif",
                 "reference": outdir / f"{name}_reference.tif"}
        _write_imagej(paths["acquisition"], acq_u16, acq_vox)
        _write_imagej(paths["reference"], ref_u16, hr_vox)
        written[name] = paths
    return written
