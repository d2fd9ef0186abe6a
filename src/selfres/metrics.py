"""Image-quality metrics: PSNR/SSIM, bead FWHM, resolution by decorrelation, spectra.

Pure numpy / scipy / scikit-image (no torch). Arrays are ZYX; voxel sizes are
``(z, y, x)`` in µm, 2-D pixel sizes ``(rows, cols)`` in µm.

Contents
--------
- :func:`psnr`, :func:`ssim`, :func:`compare` (the contract's ``self_validation`` keys),
  :func:`compare_to_reference` (the same against a ground truth, block by block),
  :func:`psnr_gain_interval` (how sure a PSNR gain is).
- :func:`fit_gaussian_fwhm`, :func:`detect_beads`, :func:`bead_fwhm_table`,
  :func:`bead_fwhm_summary`, :func:`psf_sigma_from_beads` (point-spread analysis on
  bead samples).
- :func:`decorrelation_resolution`, :func:`resolution_lateral_axial`,
  :func:`isotropy` (resolution without ground truth, after Descloux, Grußmayer &
  Radenovic, *Nat. Methods* 16:918, 2019).
- :func:`axial_spectrum` (for reports), :func:`lateral_spectrum`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize
from skimage.metrics import structural_similarity

if TYPE_CHECKING:  # pandas is imported where a table is made: training and QC without beads do without it
    import pandas as pd

__all__ = [
    "FWHM_PER_SIGMA",
    "psnr",
    "ssim",
    "compare",
    "compare_to_reference",
    "psnr_gain_interval",
    "restored_agreement",
    "block_slices",
    "READ_BLOCK_VOXELS",
    "fit_gaussian_fwhm",
    "detect_beads",
    "bead_fwhm_table",
    "bead_fwhm_summary",
    "psf_sigma_from_beads",
    "decorrelation_resolution",
    "resolution_lateral_axial",
    "lateral_window",
    "structure_share",
    "plane_correlation",
    "isotropy",
    "axial_spectrum",
    "lateral_spectrum",
]

#: FWHM of a Gaussian in units of its standard deviation, ``2 sqrt(2 ln 2)``.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# SSIM settings of Wang et al. (2004): Gaussian window sigma 1.5, population
# covariance. skimage truncates the window at 3.5 sigma -> 11 samples per axis.
_SSIM_SIGMA = 1.5
_SSIM_WIN = 2 * int(3.5 * _SSIM_SIGMA + 0.5) + 1


# --------------------------------------------------------------------------- helpers


def _as_pair(value, name: str, ndim: int) -> tuple[float, ...]:
    """Return ``value`` as a tuple of ``ndim`` positive floats (scalar broadcast)."""
    if np.isscalar(value):
        out = (float(value),) * ndim
    else:
        out = tuple(float(v) for v in value)
    if len(out) != ndim or not all(np.isfinite(v) and v > 0 for v in out):
        raise ValueError(
            f"{name} must be a positive number or {ndim} positive numbers; got {value!r}"
        )
    return out


def _check_same_shape(reference: np.ndarray, image: np.ndarray) -> None:
    if reference.shape != image.shape:
        raise ValueError(
            "reference and image must have the same shape; got "
            f"{reference.shape} and {image.shape}"
        )


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(np.max(reference)) - float(np.min(reference))
        if not data_range > 0:
            raise ValueError(
                "data_range could not be derived: the reference is constant "
                f"(max - min = {data_range}); pass data_range explicitly"
            )
        return data_range
    data_range = float(data_range)
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number; got {data_range!r}")
    return data_range


# --------------------------------------------------------------------- PSNR / SSIM


def psnr(reference: np.ndarray, image: np.ndarray, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference``, in dB.

    Parameters
    ----------
    reference, image
        Arrays of the same shape (any dimensionality, any real dtype).
    data_range
        Peak-to-peak range of the signal. Default: ``reference.max() -
        reference.min()``. The pipeline passes a fixed value (the range of the
        normalised reference) so that model and interpolation share it.

    Returns
    -------
    float
        ``10 log10(data_range**2 / MSE)`` with the MSE accumulated in float64;
        ``inf`` when the two arrays are identical.

    Raises
    ------
    ValueError
        Shapes differ, the arrays are empty, or the data range is not positive.
    """
    reference = np.asarray(reference)
    image = np.asarray(image)
    _check_same_shape(reference, image)
    if reference.size == 0:
        raise ValueError("psnr needs non-empty arrays; got shape " f"{reference.shape}")
    data_range = _data_range(reference, data_range)
    diff = reference.astype(np.float64) - image.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return float(10.0 * math.log10(data_range * data_range / mse))


def ssim(reference: np.ndarray, image: np.ndarray, *, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004) of ``image`` against ``reference``.

    Uses :func:`skimage.metrics.structural_similarity` with a Gaussian window of
    sigma 1.5 and population covariance (``use_sample_covariance=False``), the
    settings of the original article. The window spans 11 samples per axis, so:

    - 2-D arrays, and 3-D arrays with every axis >= 11: SSIM in full dimensionality
      (a 3-D window for volumes).
    - 3-D arrays with one axis shorter than 11 (e.g. a thin held-out slab): the
      mean of 2-D SSIM over the slices along that *thinnest* axis (a 3-D array
      with a single slice is thus plain 2-D SSIM).
    - Arrays still too small for the 11-sample window (e.g. 8 × 8 slices or a
      9 × 9 × 9 cube): a reduced window, the largest Gaussian sigma whose
      window fits (sigma ≈ (n - 1) / 7 for a smallest size n >= 3). Values from
      such tiny arrays are not strictly comparable with standard SSIM.

    Parameters
    ----------
    reference, image
        2-D or 3-D arrays of the same shape.
    data_range
        Peak-to-peak signal range; default ``reference.max() - reference.min()``.

    Returns
    -------
    float
        Mean SSIM in [-1, 1]; 1.0 for identical arrays.

    Raises
    ------
    ValueError
        Shapes differ, dimensionality is not 2 or 3, or an axis that must be
        filtered has fewer than 3 samples.
    """
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    _check_same_shape(reference, image)
    if reference.ndim not in (2, 3):
        raise ValueError(f"ssim needs 2-D or 3-D arrays; got shape {reference.shape}")
    data_range = _data_range(reference, data_range)
    kwargs = dict(
        data_range=data_range,
        gaussian_weights=True,
        sigma=_SSIM_SIGMA,
        use_sample_covariance=False,
    )
    sigmas, _ = _ssim_geometry(reference.shape)
    kwargs["sigma"] = max(sigmas)
    thin = [a for a, sg in enumerate(sigmas) if sg == 0]
    if not thin:
        return float(structural_similarity(reference, image, **kwargs))
    pairs = zip(np.moveaxis(reference, thin[0], 0), np.moveaxis(image, thin[0], 0))  # SSIM per slice
    return float(np.mean([structural_similarity(r, i, **kwargs) for r, i in pairs]))


def compare(
    reference: np.ndarray,
    model: np.ndarray,
    interp: np.ndarray,
    *,
    data_range: float,
) -> dict[str, float]:
    """PSNR and SSIM of a model output and of an interpolation against one reference.

    Parameters
    ----------
    reference
        Ground truth (e.g. the held-out region at full resolution).
    model, interp
        The network output and the baseline interpolation, same shape as
        ``reference``.
    data_range
        Fixed peak-to-peak range used for both (from the normalised reference).

    Returns
    -------
    dict
        ``{"psnr_model", "psnr_interp", "ssim_model", "ssim_interp"}`` (floats), the
        ``self_validation`` keys of ``metrics.json``.
    """
    return {
        "psnr_model": psnr(reference, model, data_range=data_range),
        "psnr_interp": psnr(reference, interp, data_range=data_range),
        "ssim_model": ssim(reference, model, data_range=data_range),
        "ssim_interp": ssim(reference, interp, data_range=data_range),
    }


def _ssim_geometry(shape: Sequence[int]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """How :func:`ssim` and :func:`compare_to_reference` filter an array of ``shape``: the
    Gaussian σ along each axis (0: not filtered, SSIM is taken per slice along it) and the
    voxels at each end of each axis that the mean leaves out (the window's radius). A
    reduced window is the largest Gaussian σ whose 3.5-σ window fits."""
    shape = tuple(int(n) for n in shape)
    thin = None
    plane_min = min(shape)
    if plane_min < _SSIM_WIN and len(shape) == 3:
        t = int(np.argmin(shape))
        others = [n for i, n in enumerate(shape) if i != t]
        if min(others) >= _SSIM_WIN or shape[t] < 3:
            thin, plane_min = t, min(others)
    if plane_min < 3:
        raise ValueError("ssim needs at least 3 samples along every axis it filters (11 for the "
                         f"standard window); got shape {shape}")
    sigma = _SSIM_SIGMA if plane_min >= _SSIM_WIN else 0.999 * ((plane_min - 1) // 2) / 3.5
    radius = int(3.5 * sigma + 0.5)  # skimage's window radius (truncate 3.5)
    sigmas = tuple(0.0 if a == thin else sigma for a in range(len(shape)))
    crops = tuple(0 if a == thin else radius for a in range(len(shape)))
    return sigmas, crops


def _ssim_map(ref: np.ndarray, img: np.ndarray, sigmas: Sequence[float], data_range: float) -> np.ndarray:
    """The local SSIM of :func:`skimage.metrics.structural_similarity` (Gaussian weights,
    population covariance, K1 0.01, K2 0.03) with a σ per axis (0: that axis unfiltered)."""
    def filt(a):
        return ndimage.gaussian_filter(a, sigmas, mode="reflect", truncate=3.5)

    ux, uy = filt(ref), filt(img)
    vx = filt(ref * ref) - ux * ux
    vy = filt(img * img) - uy * uy
    vxy = filt(ref * img) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _cubic_blocks(shape: Sequence[int], block_voxels: int, *, whole_axes: Sequence[int] = ()) -> list[tuple[slice, ...]]:
    """Blocks of about ``block_voxels`` voxels covering ``shape``, as near cubes as the axes
    allow (a window around a block then adds least), spanning every axis in ``whole_axes``."""
    shape = [int(n) for n in shape]
    size = list(shape)
    budget = max(1, int(block_voxels)) / math.prod(shape[a] for a in whole_axes)
    free = sorted((a for a in range(len(shape)) if a not in whole_axes), key=lambda a: shape[a])
    for i, a in enumerate(free):
        size[a] = max(1, min(shape[a], int(budget ** (1.0 / (len(free) - i)))))
        budget /= size[a]
    per_axis = [[slice(lo, min(n, lo + st)) for lo in range(0, n, st)] for n, st in zip(shape, size)]
    return [tuple(b) for b in itertools.product(*per_axis)]


def _array_like(volume):
    """``volume`` itself when it can be sliced lazily (numpy, dask, zarr), else as a numpy array."""
    return volume if hasattr(volume, "shape") and hasattr(volume, "__getitem__") else np.asarray(volume)


def _refuse_non_finite(block: np.ndarray, what: str, slices: tuple[slice, ...]) -> None:
    if not np.all(np.isfinite(block)):
        raise ValueError(f"{what} has {int(np.count_nonzero(~np.isfinite(block)))} non-finite voxels in "
                         f"{tuple((s.start, s.stop) for s in slices)}")


def _read_block(source, slices: tuple[slice, ...]) -> np.ndarray:
    block = source(slices) if callable(source) else source[slices]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block, dtype=np.float64)


def compare_to_reference(
    reference,
    model,
    interp,
    *,
    block_voxels: int = 2 * 2**20,
    whole_axes: Sequence[int] = (),
) -> dict[str, float]:
    """PSNR and SSIM of a model output and of an interpolation against a ground truth, each
    first matched to the truth's intensities by least squares (``a·x + b``: the comparison
    does not depend on either's intensity scale), read block by block.

    Equal, to float rounding, to :func:`compare` of ``reference`` and the two matched
    arrays with the truth's peak-to-peak range as ``data_range``; but no whole volume is
    held: every pass reads blocks of about ``block_voxels`` voxels (SSIM's adds the
    window's radius on each side), so a truth and an output larger than memory can be
    scored.

    Parameters
    ----------
    reference, model
        Array-likes of one shape (numpy, dask, zarr).
    interp
        An array-like of that shape, or a function of a tuple of slices that returns that
        block (an interpolation computed where it is read).
    block_voxels
        Voxels read at once, per array.
    whole_axes
        Axes that every block spans whole (e.g. an ``interp`` that can only compute whole
        columns).

    Returns
    -------
    dict
        ``{"psnr_model", "psnr_interp", "ssim_model", "ssim_interp", "match_model",
        "match_interp"}``; the last two are the ``(a, b)`` of each match (a constant image
        is matched to the truth's mean: ``a = 0``).

    Raises
    ------
    ValueError
        Shapes differ, an array has non-finite voxels, or the reference is constant.
    """
    shape = tuple(int(n) for n in reference.shape)
    for name, arr in (("model", model), ("interp", interp)):
        if not callable(arr) and tuple(arr.shape) != shape:
            raise ValueError(f"{name} shape {tuple(arr.shape)} differs from the reference shape {shape}")
    if math.prod(shape) == 0:
        raise ValueError(f"compare_to_reference needs non-empty arrays; got shape {shape}")
    if len(shape) not in (2, 3):
        raise ValueError(f"compare_to_reference needs 2-D or 3-D arrays; got shape {shape}")
    sigmas, crops = _ssim_geometry(shape)
    blocks = _cubic_blocks(shape, block_voxels, whole_axes=whole_axes)
    if len(blocks) == 1:  # small: read (and compute an interpolation) once for both passes
        reference, model, interp = (_read_block(a, blocks[0]) for a in (reference, model, interp))
    images = {"model": model, "interp": interp}

    # pass 1: the truth's range and the least-squares sums of each image against it, about
    # the first block's means (raw sums of an image far from 0 would cancel)
    n = 0
    lo, hi = math.inf, -math.inf
    shift: dict[str, float] = {}
    sr = 0.0
    sums = {k: np.zeros(3) for k in images}  # Σx, Σx², Σx·r of the shifted x and r
    for sl in blocks:
        r = _read_block(reference, sl)
        for k, x in (("reference", r), *((k, _read_block(src, sl)) for k, src in images.items())):
            _refuse_non_finite(x, f"the {k}", sl)
            if k not in shift:
                shift[k] = float(x.mean())
            if k == "reference":
                n += r.size
                lo, hi = min(lo, float(r.min())), max(hi, float(r.max()))
                rs = r - shift["reference"]
                sr += float(rs.sum())
            else:
                xs = (x - shift[k]).ravel()
                sums[k] += (xs.sum(), float(np.dot(xs, xs)), float(np.dot(xs, rs.ravel())))
    if not hi > lo:
        raise ValueError(f"the reference is constant (every voxel is {lo:g}): nothing to compare against")
    data_range = hi - lo
    match = {}
    for k, (sx, sxx, sxr) in sums.items():
        var_x = sxx - sx * sx / n  # n × variance of x; the covariance with r likewise
        # never below 0: an output of inverted contrast is wrong, not matched (−x scored inf dB)
        a = max((sxr - sx * sr / n) / var_x, 0.0) if var_x > 0 else 0.0
        # a·x + b = a·(x - shift_x) + (mean of r) - a·(mean of x - shift_x)
        b = shift["reference"] + sr / n - a * (shift[k] + sx / n)
        match[k] = (float(a), float(b))

    # pass 2: squared errors (each block) and local SSIM (each block and the window's radius)
    se = dict.fromkeys(images, 0.0)
    ssim_sum = dict.fromkeys(images, 0.0)
    ssim_count = 0
    for sl in blocks:
        ext = tuple(slice(max(0, s.start - c), min(m, s.stop + c)) for s, c, m in zip(sl, crops, shape))
        core = tuple(slice(s.start - e.start, s.stop - e.start) for s, e in zip(sl, ext))
        # the voxels of this block that the mean counts: at least the radius from the array's ends
        kept = tuple(slice(max(s.start, c) - s.start, max(max(s.start, c), min(s.stop, m - c)) - s.start)
                     for s, c, m in zip(sl, crops, shape))
        r = _read_block(reference, ext)
        r_core = r[core]
        for k, src in images.items():
            a, b = match[k]
            x = (_read_block(src, ext) * a + b).astype(np.float32).astype(np.float64)
            d = x[core] - r_core
            se[k] += float(np.dot(d.ravel(), d.ravel()))
            s_map = _ssim_map(r, x, sigmas, data_range)[core][kept]
            ssim_sum[k] += float(s_map.sum(dtype=np.float64))
        ssim_count += math.prod(k.stop - k.start for k in kept)
    out: dict = {}
    for k in images:
        mse = se[k] / n
        out[f"psnr_{k}"] = math.inf if mse == 0 else float(10.0 * math.log10(data_range * data_range / mse))
        out[f"ssim_{k}"] = float(ssim_sum[k] / ssim_count)
        out[f"match_{k}"] = match[k]
    return out


def psnr_gain_interval(
    reference: np.ndarray,
    model: np.ndarray,
    interp: np.ndarray,
    *,
    grid: Sequence[int] = (2, 4, 4),
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Bootstrap interval of the PSNR gain of ``model`` over ``interp`` (dB), over blocks.

    The volume is cut into a ``grid`` of blocks (fewer along axes too short for them);
    the gain ``10 log10(Σ SE_interp / Σ SE_model)`` is recomputed on blocks drawn with
    replacement, and the central ``level`` interval of those gains is returned. Blocks,
    not voxels, are resampled because neighbouring errors are correlated. The gain does
    not depend on the data range.

    Returns
    -------
    (low, high) or None
        ``None`` when fewer than 8 blocks fit or either output is exact everywhere. An end is
        ``±inf`` where that share of the resamples drew only blocks on which one of the two
        outputs is exact and the other not (an infinite gain or loss).
    """
    _check_same_shape(reference, model)
    _check_same_shape(reference, interp)
    ref = np.asarray(reference, dtype=np.float64)
    model = np.asarray(model, dtype=np.float64)
    interp = np.asarray(interp, dtype=np.float64)
    if ref.ndim == 2:
        ref, model, interp = ref[None], model[None], interp[None]
    counts = [max(1, min(int(g), n // 2)) for g, n in zip(grid, ref.shape)]
    if int(np.prod(counts)) < 8:
        return None
    edges = [np.linspace(0, n, c + 1).astype(int) for c, n in zip(counts, ref.shape)]
    se_model, se_interp = [], []
    for z0, z1 in zip(edges[0][:-1], edges[0][1:]):
        for y0, y1 in zip(edges[1][:-1], edges[1][1:]):
            for x0, x1 in zip(edges[2][:-1], edges[2][1:]):
                box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
                se_model.append(float(np.sum((model[box] - ref[box]) ** 2)))
                se_interp.append(float(np.sum((interp[box] - ref[box]) ** 2)))
    se_model_a, se_interp_a = np.asarray(se_model), np.asarray(se_interp)
    if not (se_model_a.sum() > 0 and se_interp_a.sum() > 0):
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(se_model_a), size=(int(n_resamples), len(se_model_a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = 10.0 * np.log10(se_interp_a[draws].sum(axis=1) / se_model_a[draws].sum(axis=1))
    # a draw of blocks where both outputs are exact says nothing (0/0); one where only one is exact
    # is an infinite gain or loss, and stays: dropped, the draws of blocks of empty background that
    # the interpolation reproduces exactly and the model not (−∞) would lift the lower end
    gains = gains[~np.isnan(gains)]
    if gains.size == 0:
        return None
    tail = (1.0 - float(level)) / 2.0 * 100.0
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(gains, [tail, 100.0 - tail])
    # interpolating next to an infinite draw gives NaN; there the end is that order statistic (±∞)
    if np.isnan(low):
        low = np.percentile(gains, tail, method="lower")
    if np.isnan(high):
        high = np.percentile(gains, 100.0 - tail, method="higher")
    return float(low), float(high)


# ------------------------------------------------------------------ beads / FWHM


#: Voxels of a lazy volume that the whole-volume QC figures (:func:`restored_agreement`,
#: :func:`axial_spectrum`) read and transform at once: their memory does not grow with
#: the restored volume (64×512×512 input ×2: QC peak 5.0 GB reading it whole, 0.95 GB in
#: blocks; docs/performance.md).
READ_BLOCK_VOXELS = 8 * 2**20

#: Voxels beyond the maximum filter's box that :func:`detect_beads` reads around each block,
#: so that a flat maximum (a saturated bead) up to this far across a block's face is seen whole.
_PLATEAU_HALO = 8


#: How far below the darkest input voxel (share of the normalised range) an output voxel
#: counts as undershoot (:func:`undershoot`)
UNDERSHOOT_DEPTH = 0.05


def undershoot(output: np.ndarray, interpolation: np.ndarray, *, floor: float,
               depth: float = UNDERSHOOT_DEPTH, lowest: float | None = None) -> dict:
    """Shares of ``output`` and ``interpolation`` voxels (normalised units) below ``floor``
    (the darkest input voxel) by more than ``depth``: values no acquisition held, the dark
    halos (ringing) a sharpening restoration leaves next to bright objects.

    ``lowest``: the lowest value the output could be written as (an integer dtype's minimum,
    normalised), at which the interpolation is clipped too; when the threshold is not above
    it (e.g. unsigned data whose darkest voxel is 0), no undershoot can be seen:
    ``detectable`` is False.

    Returns
    -------
    dict
        ``output``, ``interpolation`` (shares, 0..1), ``below`` (the threshold),
        ``output_min`` (the output's darkest voxel), normalised units, and ``detectable``.
    """
    below = float(floor) - float(depth)
    out = np.asarray(output, dtype=np.float32)
    interp = np.asarray(interpolation, dtype=np.float32)
    if lowest is not None:
        interp = np.maximum(interp, np.float32(lowest))
    return {"output": float(np.mean(out < below)) if out.size else 0.0,
            "interpolation": float(np.mean(interp < below)) if interp.size else 0.0,
            "below": below, "output_min": float(out.min()) if out.size else None,
            "detectable": lowest is None or below > float(lowest)}


def overshoot(output: np.ndarray, interpolation: np.ndarray, *, ceiling: float,
              depth: float = UNDERSHOOT_DEPTH) -> dict:
    """Shares of ``output`` and ``interpolation`` voxels (normalised units) above ``ceiling``
    (the brightest input voxel) by more than ``depth``: values no acquisition held, the bright
    rims (ringing) a restoration leaves at the edges of flat-topped objects — :func:`undershoot`'s
    other side.

    Returns
    -------
    dict
        ``output``, ``interpolation`` (shares, 0..1), ``above`` (the threshold) and ``output_max``
        (the output's brightest voxel), normalised units.
    """
    above = float(ceiling) + float(depth)
    out = np.asarray(output, dtype=np.float32)
    interp = np.asarray(interpolation, dtype=np.float32)
    return {"output": float(np.mean(out > above)) if out.size else 0.0,
            "interpolation": float(np.mean(interp > above)) if interp.size else 0.0,
            "above": above, "output_max": float(out.max()) if out.size else None}


#: Least height (normalised units, 1 = the input's 0.2–99.8 percentile range) of the
#: interpolation's brightest structures above its median for :func:`brightening` to be measured
BRIGHT_CONTRAST = 0.02


def brightening(output: np.ndarray, interpolation: np.ndarray, *, background: float | None = None,
                top_percent: float = 1.0) -> dict:
    """How much brighter than the interpolation the output's brightest structures are: the
    median of ``(output − background) / (interpolation − background)`` over the voxels where
    the interpolation is in its top ``top_percent`` (normalised units; ``background``: the
    interpolation's median). Sharpening raises a small structure's peak — the noise-free truth
    of a z-blurred ×4 nucleus stack is 1.19× its z-cubic interpolation there — but far above
    that only where the structures are thinner than the blur the restoration assumed.

    Returns
    -------
    dict
        ``ratio`` (None when the brightest structures stand less than :data:`BRIGHT_CONTRAST`
        above the background) and ``background``.
    """
    out = np.asarray(output, dtype=np.float32)
    interp = np.asarray(interpolation, dtype=np.float32)
    bg = float(np.median(interp)) if background is None else float(background)
    if not interp.size:
        return {"ratio": None, "background": bg}
    cut = float(np.percentile(interp, 100.0 - top_percent))
    if cut - bg < BRIGHT_CONTRAST:  # nothing stands out of the background: a ratio of noise
        return {"ratio": None, "background": bg}
    top = interp >= cut
    above = interp[top] - bg
    keep = above > 1e-6
    return {"ratio": float(np.median((out[top][keep] - bg) / above[keep])), "background": bg}


def restored_agreement(raw: np.ndarray, restored, *, max_samples: int = 1_000_000,
                       block_voxels: int | None = None, noise=None,
                       factors: Sequence[float] | None = None) -> dict:
    """How far the restored volume as written still looks like its input: a check of the
    production path (tiling, device, precision, writing), not of the method.

    Each sampled input voxel is compared with the output voxel nearest its centre (the
    contract's half-pixel-centre grid, any factor per axis). A working restoration of
    either mode agrees closely (its tricubic or z-cubic residual passes through the input
    voxels' centres); a dead network, garbage from a device, misplaced tiles or a constant
    output do not.

    Parameters
    ----------
    raw
        The normalised input (ZYX), numpy or lazy (a strided subsample is read).
    restored
        The restored volume in the same units, on its own finer grid: a numpy array, or
        a lazy one (dask, zarr) that is read block by block (:func:`block_slices`), about
        ``block_voxels`` voxels at a time, so the output never has to fit in memory.
    max_samples
        At most this many input voxels, on a regular stride.
    block_voxels
        Voxels of ``restored`` read at once (default :data:`READ_BLOCK_VOXELS`).
    noise
        The input's noise (:class:`selfres.noise.NoiseLevel`, variance against intensity), or None.
    factors
        Output voxels per input voxel along each axis; default the shapes' ratio. Give it where
        the grid's factor is not that ratio: in ``isotropic`` mode z holds ``round(nz · f)``
        planes, so input plane j sits at output ``(j + 0.5) · f − 0.5``, not at the ratio's.

    Returns
    -------
    dict
        ``nonfinite_voxels`` (in all of ``restored``), ``correlation_with_input`` (Pearson r
        over the samples, finite ones only; 0 for a constant output; ``None`` when the
        input is constant there), and ``correlation_ceiling``: the correlation that the
        noise-free signal itself has with the noisy input, ``sqrt(1 − noise variance /
        input variance)`` over the samples (a restoration that removes the noise cannot
        correlate better; 1 for a clean input; ``None`` without ``noise`` or with nothing
        measured); ``level``: the mean of the sampled input voxels and of the output voxels at
        their centres, and their ratio (the output's intensity level: restoration keeps it,
        a wrong gain or offset on the way to the file does not; ``None`` with no finite sample).
    """
    if raw.ndim != restored.ndim:
        raise ValueError(f"input and output must have the same number of axes; received {raw.shape} and {restored.shape}")
    from .normalise import sample_strides

    strides = sample_strides(raw.shape, max(1, int(max_samples)))  # every plane of a stack of few large ones
    if factors is None:
        factors = [n_out / n_in for n_in, n_out in zip(raw.shape, restored.shape)]
    if len(factors) != raw.ndim:
        raise ValueError(f"factors must give one value per axis of {raw.shape}; received {tuple(factors)}")
    index_in, index_out = [], []
    for n_in, n_out, stride, f in zip(raw.shape, restored.shape, strides, factors):
        j = np.arange(0, n_in, stride)
        index_in.append(j)
        index_out.append(np.clip(np.round((j + 0.5) * float(f) - 0.5).astype(int), 0, n_out - 1))
    a = np.asarray(raw[tuple(slice(None, None, s) for s in strides)], dtype=np.float64)  # = index_in (numpy or lazy)
    b = np.empty(a.shape, dtype=np.float64)
    nonfinite = 0
    block_voxels = block_voxels or READ_BLOCK_VOXELS
    for block in block_slices(restored.shape, block_voxels, chunks=_chunk_shape(restored)):
        part = np.asarray(restored[block])
        nonfinite += int(part.size - np.count_nonzero(np.isfinite(part)))
        # the samples whose output voxel lies in this block (index_out is sorted per axis)
        picks = [np.arange(np.searchsorted(i, sl.start), np.searchsorted(i, sl.stop)) for i, sl in zip(index_out, block)]
        if all(p.size for p in picks):
            b[np.ix_(*picks)] = part[np.ix_(*[i[p] - sl.start for i, p, sl in zip(index_out, picks, block)])]
    a, b = a.ravel(), b.ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    r: float | None
    if a.size < 2 or np.std(a) == 0:
        r = None
    elif np.std(b) == 0:
        r = 0.0
    else:
        r = float(np.corrcoef(a, b)[0, 1])
    ceiling = None
    if noise is not None and getattr(noise, "bins", 1) and r is not None and a.size >= 2:
        noise_var = float(np.mean(noise.variance(a)))
        ceiling = round(float(np.sqrt(max(0.0, 1.0 - noise_var / float(np.var(a))))), 4)
    level = None
    if a.size:
        mean_in, mean_out = float(np.mean(a)), float(np.mean(b))
        level = {"input_mean": round(mean_in, 6), "output_mean": round(mean_out, 6),
                 "ratio": round(mean_out / mean_in, 4) if mean_in > 0 else None}
    return {"nonfinite_voxels": nonfinite, "correlation_with_input": r, "correlation_ceiling": ceiling,
            "level": level}


def _chunk_shape(arr) -> tuple[int, ...] | None:
    """The storage chunk shape of a lazy array (dask ``chunksize``, zarr ``chunks``); ``None``
    for a numpy array."""
    size = getattr(arr, "chunksize", None)
    if size is None and isinstance(arr, np.ndarray):
        return None
    if size is None:
        size = getattr(arr, "chunks", None)
    if size is None or not all(isinstance(c, (int, np.integer)) for c in size):
        return None
    return tuple(int(c) for c in size)


def block_slices(shape: Sequence[int], block_voxels: int, *, chunks: Sequence[int] | None = None,
                 whole_axes: Sequence[int] = ()) -> list[tuple[slice, ...]]:
    """Cover an array of ``shape`` with blocks of about ``block_voxels`` voxels (at least one
    chunk), for reading a volume larger than memory piece by piece.

    Blocks are whole numbers of ``chunks`` (the storage chunks; ``None``: single voxels), so
    that no stored chunk is read twice, and span every axis in ``whole_axes``; they grow
    along the last axes first.
    """
    shape = [int(n) for n in shape]
    base = [n if a in whole_axes else min(n, int(chunks[a]) if chunks else 1) for a, n in enumerate(shape)]
    size = list(base)
    for a in reversed(range(len(shape))):
        if a in whole_axes:
            continue
        others = max(1, math.prod(size) // max(1, size[a]))
        size[a] = min(shape[a], base[a] * max(1, int(block_voxels) // (others * base[a])))
    per_axis = [[slice(lo, min(n, lo + max(1, st))) for lo in range(0, n, max(1, st))] for n, st in zip(shape, size)]
    return [tuple(b) for b in itertools.product(*per_axis)]


def _gauss_offset(x, offset, amp, mu, sigma):
    return offset + amp * np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _fit_gaussian(profile: np.ndarray) -> tuple[float, float] | None:
    """Fit offset + Gaussian to a 1-D profile; return ``(mu, sigma)`` in samples."""
    y = np.asarray(profile, dtype=np.float64)
    n = y.size
    if n < 5 or not np.all(np.isfinite(y)):
        return None
    x = np.arange(n, dtype=np.float64)
    offset0 = float(min(y[0], y[-1], np.percentile(y, 10)))
    peak = int(np.argmax(y))
    amp0 = float(y[peak] - offset0)
    if not amp0 > 0 or peak in (0, n - 1):
        return None  # no maximum inside the profile
    # sigma guess from the width at half maximum (samples above half height)
    above = np.count_nonzero(y - offset0 > 0.5 * amp0)
    sigma0 = max(above / FWHM_PER_SIGMA, 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, _ = optimize.curve_fit(
                _gauss_offset,
                x,
                y,
                p0=(offset0, amp0, float(peak), sigma0),
                bounds=((-np.inf, 0.0, -0.5, 0.05), (np.inf, np.inf, n - 0.5, float(n))),
                maxfev=2000,
            )
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    _, amp, mu, sigma = popt
    if not (np.isfinite(sigma) and 0.05 < sigma < n / 2 and amp > 0 and 0 <= mu <= n - 1):
        return None
    return float(mu), float(sigma)


def fit_gaussian_fwhm(profile: np.ndarray, *, spacing: float = 1.0) -> float:
    """FWHM of a 1-D profile by least-squares fit of offset + Gaussian.

    Initial guesses: offset from the lowest of the end samples and the 10th
    percentile, amplitude from the maximum, centre at the maximum, sigma from the
    number of samples above half height. ``FWHM = 2 sqrt(2 ln 2) sigma``.

    Parameters
    ----------
    profile
        1-D intensity profile through a spot, at least 5 samples.
    spacing
        Sample spacing (e.g. µm); the result is in the same unit.

    Returns
    -------
    float
        The FWHM, or NaN when the fit fails or is implausible (the maximum lies at
        an end of the profile, no positive peak, centre outside the profile, sigma
        not below half the profile length).
    """
    profile = np.asarray(profile)
    if profile.ndim != 1:
        raise ValueError(f"profile must be 1-D; got shape {profile.shape}")
    if not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be a positive number; got {spacing!r}")
    fit = _fit_gaussian(profile)
    if fit is None:
        return math.nan
    return FWHM_PER_SIGMA * fit[1] * float(spacing)


def _as_int3(value, name: str) -> tuple[int, int, int]:
    if np.isscalar(value):
        value = (value,) * 3
    out = tuple(int(v) for v in value)
    if len(out) != 3 or any(v < 0 for v in out):
        raise ValueError(f"{name} must be a non-negative int or 3 of them (z, y, x); got {value!r}")
    return out  # type: ignore[return-value]


def detect_beads(
    volume: np.ndarray,
    *,
    min_distance: int | Sequence[int] = 3,
    threshold_rel: float = 0.2,
    border: int | Sequence[int] | None = None,
    isolation: int | Sequence[int] | None = None,
    smooth: float | Sequence[float] | None = None,
    block_voxels: int = READ_BLOCK_VOXELS,
) -> np.ndarray:
    """Find isolated bright spots (beads) in a ZYX volume.

    A bead is a voxel that is the maximum of its ``(2 min_distance + 1)`` box,
    rises above ``min + threshold_rel (max - min)`` of the volume, lies at least
    ``border`` voxels from every face, and has no other such maximum within the
    box of half-size ``isolation`` (both are then rejected: a neighbour would bias
    the profile fits). With ``smooth`` all of this is done on the volume blurred by a
    Gaussian of that σ (voxels, one value or ``(z, y, x)``): on noisy beads wider than a
    voxel the noise otherwise makes several maxima on each bead's top (rejected as
    neighbours) and on its flanks (fitted as narrow spots).

    The volume is read in blocks of about ``block_voxels`` voxels (with the filter's box,
    :data:`_PLATEAU_HALO` voxels and, with ``smooth``, the Gaussian's reach of 4 σ around
    each, so that each block is blurred as the whole volume would be), so a lazy volume larger than memory can be
    searched; the result does not depend on the blocks, except for a flat maximum wider than
    that halo across a block's face.

    Parameters
    ----------
    volume
        3-D array (ZYX; numpy, dask or zarr). A 2-D array is treated as one slice.
    min_distance
        Half-size of the local-maximum box, in voxels (one int or ``(z, y, x)``).
    threshold_rel
        Detection threshold as a fraction of the volume's intensity range, in [0, 1).
    border
        Minimum distance to the volume faces, voxels; default ``2 * min_distance``.
    isolation
        Half-size of the neighbourhood that must hold no other detected maximum;
        default ``3 * min_distance``.
    smooth
        Gaussian σ in voxels of the blur the search runs on (None: none).
    block_voxels
        Voxels read at once.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` int array of ``z, y, x`` positions, brightest first.

    Raises
    ------
    ValueError
        Not 2-D or 3-D, ``threshold_rel`` outside [0, 1), or non-finite voxels.
    """
    vol = _array_like(volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"detect_beads needs a 2-D or 3-D array; got shape {np.shape(volume)}")
    if not 0 <= threshold_rel < 1:
        raise ValueError(f"threshold_rel must be in [0, 1); got {threshold_rel!r}")
    shape = tuple(int(n) for n in vol.shape)
    md = _as_int3(min_distance, "min_distance")
    md = tuple(m if n > 1 else 0 for m, n in zip(md, shape))
    bd = tuple(2 * m for m in md) if border is None else _as_int3(border, "border")
    iso = tuple(3 * m for m in md) if isolation is None else _as_int3(isolation, "isolation")
    sm = None if smooth is None else tuple(v if n > 1 else 0.0 for v, n in zip(_as_pair(smooth, "smooth", 3), shape))
    # the Gaussian's reach: a block read with it around smooths as the whole volume would
    reach = tuple(int(math.ceil(4 * v)) for v in sm) if sm is not None else (0, 0, 0)
    blocks = _cubic_blocks(shape, block_voxels)

    def searched(ext):
        """The region ``ext`` as the search sees it: read (with the blur's reach) and blurred."""
        if sm is None:
            b = _read_block(vol, ext)
            _refuse_non_finite(b, "detect_beads: the volume", ext)
            return b
        wide = tuple(slice(max(0, e.start - r), min(n, e.stop + r)) for e, r, n in zip(ext, reach, shape))
        b = _read_block(vol, wide).astype(np.float32)
        _refuse_non_finite(b, "detect_beads: the volume", wide)
        b = ndimage.gaussian_filter(b, sm, mode="nearest", truncate=4.0)
        return b[tuple(slice(e.start - w.start, e.stop - w.start) for e, w in zip(ext, wide))]

    # small: the whole volume is one block, read (and blurred) once for both passes
    whole = searched(blocks[0]) if len(blocks) == 1 else None
    lo, hi = math.inf, -math.inf
    for sl in blocks:
        b = whole if whole is not None else searched(sl)
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
    if not hi > lo:
        return np.zeros((0, 3), dtype=int)
    thr = np.float32(lo + threshold_rel * (hi - lo))
    # candidates block by block; the halo holds the maximum filter's box and a flat maximum
    # (e.g. a saturated bead) up to PLATEAU_HALO voxels across a block's face
    halo = tuple(m + _PLATEAU_HALO for m in md)
    found, values = [], []
    for sl in blocks:
        ext = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(sl, halo, shape))
        b = (whole if whole is not None else searched(ext)).astype(np.float32)
        local_max = ndimage.maximum_filter(b, size=tuple(2 * m + 1 for m in md), mode="nearest")
        is_peak = (b == local_max) & (b > thr)
        labels, n = ndimage.label(is_peak, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            continue
        centres = ndimage.center_of_mass(is_peak, labels, index=np.arange(1, n + 1))
        local = np.floor(np.asarray(centres, dtype=np.float64) + 0.5).astype(int).reshape(-1, 3)
        peaks = local + np.array([e.start for e in ext])
        inside = np.all((peaks >= [s.start for s in sl]) & (peaks < [s.stop for s in sl]), axis=1)
        found.append(peaks[inside])
        values.append(b[tuple(local[inside].T)])
    if not found or not sum(len(f) for f in found):
        return np.zeros((0, 3), dtype=int)
    peaks, vals = np.concatenate(found), np.concatenate(values)
    keep_border = np.all((peaks >= bd) & (peaks < np.asarray(shape) - np.asarray(bd)), axis=1)
    # isolation against every candidate (including those near the border): a pair is too
    # near when it is within ``iso`` on every axis (Chebyshev distance < 1 after scaling)
    from scipy.spatial import cKDTree

    scaled = peaks / (np.asarray(iso, dtype=np.float64) + 0.5)  # integer |d| ≤ iso ⇔ scaled |d| < 1
    pairs = cKDTree(scaled).query_pairs(1.0, p=np.inf, output_type="ndarray")
    isolated = np.ones(len(peaks), dtype=bool)
    isolated[pairs.ravel()] = False
    ok = keep_border & isolated
    out, vals = peaks[ok], vals[ok]
    return out[np.lexsort((out[:, 2], out[:, 1], out[:, 0], -vals))].astype(int)


def _beads_and_profile(vol, positions, half_width, min_distance, threshold_rel, max_beads):
    """The beads to fit (``positions``, else :func:`detect_beads`; the first ``max_beads``) and
    the profiles' half-length per axis (``half_width``, else 3 ``min_distance``, at least 4)."""
    if positions is None:
        positions = detect_beads(vol, min_distance=min_distance, threshold_rel=threshold_rel)
    positions = np.asarray(positions, dtype=int).reshape(-1, 3)[: int(max_beads)]
    if half_width is None:
        return positions, tuple(max(4, 3 * md) for md in _as_int3(min_distance, "min_distance"))
    return positions, _as_int3(half_width, "half_width")


def bead_fwhm_table(
    volume: np.ndarray,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    positions: np.ndarray | None = None,
    max_beads: int = 50,
    half_width: int | Sequence[int] | None = None,
    min_distance: int | Sequence[int] = 3,
    threshold_rel: float = 0.2,
    block_voxels: int = READ_BLOCK_VOXELS,
) -> pd.DataFrame:
    """Per-bead FWHM along z, y and x from Gaussian fits to line profiles.

    Each profile runs through the bead's brightest voxel along one axis. For a
    separable (e.g. Gaussian) PSF, an off-centre line only scales the profile, so
    its width is the PSF width; the fitted centres give the sub-voxel position.

    Parameters
    ----------
    volume
        ZYX array (numpy, dask or zarr: only the beads' profiles and, without
        ``positions``, :func:`detect_beads`' blocks are read).
    voxel_size
        ``(z, y, x)`` voxel size in µm.
    positions
        ``(N, 3)`` integer bead positions; default: :func:`detect_beads` with
        ``min_distance`` and ``threshold_rel``.
    max_beads
        Analyse at most this many beads (the brightest).
    half_width
        Profile half-length per axis in voxels; default ``3 * min_distance`` (at
        least 4).
    min_distance, threshold_rel
        Passed to :func:`detect_beads` when ``positions`` is None.
    block_voxels
        The volume is read in blocks of about this many voxels (each with the profiles'
        half-length around it), the beads of each block fitted from one read.

    Returns
    -------
    pandas.DataFrame
        Columns ``z, y, x`` (sub-voxel centre, voxels; the integer position where a
        fit failed), ``fwhm_z, fwhm_y, fwhm_x`` (voxels) and ``fwhm_z_um,
        fwhm_y_um, fwhm_x_um``; NaN where a fit failed. One row per bead.
    """
    vol = _array_like(volume)
    if vol.ndim != 3:
        raise ValueError(f"bead_fwhm_table needs a 3-D ZYX array; got shape {vol.shape}")
    vs = _as_pair(voxel_size, "voxel_size", 3)
    if int(max_beads) < 1:
        raise ValueError(f"max_beads must be >= 1; got {max_beads!r}")
    positions, hw = _beads_and_profile(vol, positions, half_width, min_distance, threshold_rel, max_beads)
    axes = ("z", "y", "x")
    shape = tuple(int(n) for n in vol.shape)
    rows: list[dict[str, float]] = [{} for _ in positions]
    # a few reads, not one per bead (each read of a lazy volume has a fixed cost): the beads
    # are fitted block by block, each block read once with the profiles' half-length around it
    for sl in _cubic_blocks(shape, block_voxels):
        inside = np.flatnonzero(np.all((positions >= [s.start for s in sl]) & (positions < [s.stop for s in sl]),
                                       axis=1)) if len(positions) else []
        if not len(inside):
            continue
        ext = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(sl, hw, shape))
        block = _read_block(vol, ext)
        for i in inside:
            pos = positions[i]
            row = rows[i]
            for a, name in enumerate(axes):
                lo = max(0, pos[a] - hw[a])
                index = [p - e.start for p, e in zip(pos, ext)]
                index[a] = slice(lo - ext[a].start, min(shape[a], pos[a] + hw[a] + 1) - ext[a].start)
                fit = _fit_gaussian(block[tuple(index)])
                if fit is None:
                    row[name] = float(pos[a])
                    row[f"fwhm_{name}"] = math.nan
                else:
                    row[name] = lo + fit[0]
                    row[f"fwhm_{name}"] = FWHM_PER_SIGMA * fit[1]
                row[f"fwhm_{name}_um"] = row[f"fwhm_{name}"] * vs[a]
    import pandas as pd

    columns = [*axes, *(f"fwhm_{a}" for a in axes), *(f"fwhm_{a}_um" for a in axes)]
    return pd.DataFrame(rows, columns=columns)


#: Profiles of :func:`bead_fwhm_table_widened` reach at least this many σ of the beads'
#: median width each side (a profile of ±1.5 σ fits a Gaussian ~35 % too narrow).
PROFILE_SIGMAS = 3.0
#: σ in voxels of the blur the bead search runs on (``psf-sigma --beads``, QC's ``qc.beads``):
#: noise then makes no maxima of its own on a bead's top or flanks
BEAD_SEARCH_SMOOTH = 1.0


def bead_fwhm_table_widened(
    volume: np.ndarray,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    positions: np.ndarray | None = None,
    half_width: int | Sequence[int] | None = None,
    min_distance: int | Sequence[int] = 3,
    threshold_rel: float = 0.2,
    max_beads: int = 50,
    max_passes: int = 3,
    max_half_width: int = 64,
) -> pd.DataFrame:
    """:func:`bead_fwhm_table`, refitted with profiles widened to ±``PROFILE_SIGMAS`` σ of the
    beads' median width until they hold it (at most ``max_passes`` fits; never narrower than
    ``half_width``, at most ``max_half_width`` voxels).

    The default profile (±3 ``min_distance`` voxels) suits beads a few voxels wide; a bead
    stack sampled finely (a PSF measurement, or any volume after upsampling) has beads
    wider than that, which a truncated profile fits too narrow — a tricubic ×2 of beads 9.8
    voxels wide read 12.8 instead of ~19.6 output voxels, i.e. 35 % narrower in µm than its
    input. The beads are those of the first pass (detected once, fitted again).
    """
    vol = _array_like(volume)
    positions, hw = _beads_and_profile(vol, positions, half_width, min_distance, threshold_rel, max_beads)
    table = bead_fwhm_table(vol, voxel_size=voxel_size, positions=positions, max_beads=max_beads, half_width=hw)
    for _ in range(int(max_passes) - 1):
        if table.empty:
            break
        sigma = table[[f"fwhm_{a}" for a in "zyx"]].astype(float).median().to_numpy() / FWHM_PER_SIGMA
        if not np.all(np.isfinite(sigma)):
            break
        want = tuple(min(int(max_half_width), max(h, int(math.ceil(PROFILE_SIGMAS * s))))
                     for h, s in zip(hw, sigma))
        if all(w <= h for w, h in zip(want, hw)):
            break
        hw = want
        table = bead_fwhm_table(vol, voxel_size=voxel_size, positions=positions, max_beads=max_beads,
                                half_width=hw)
    return table


def bead_fwhm_summary(df: pd.DataFrame) -> dict[str, float | int | None]:
    """Median FWHM over beads.

    Parameters
    ----------
    df
        Output of :func:`bead_fwhm_table`.

    Returns
    -------
    dict
        ``n_beads`` (rows with all three fits valid) and the medians
        ``fwhm_z, fwhm_y, fwhm_x`` (voxels) and ``fwhm_z_um, fwhm_y_um, fwhm_x_um``
        over beads whose fit for that axis succeeded; ``None`` (JSON null) when no
        bead has a valid fit.
    """
    cols = [f"fwhm_{a}{u}" for u in ("", "_um") for a in "zyx"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks the columns {missing}; pass the output of bead_fwhm_table")
    out: dict[str, float | int | None] = {
        "n_beads": int(df[cols[:3]].notna().all(axis=1).sum())
    }
    for c in cols:
        values = df[c].dropna()
        out[c] = float(values.median()) if len(values) else None
    return out


def psf_sigma_from_beads(
    volume: np.ndarray,
    voxel_size: Sequence[float],
    *,
    min_beads: int = 3,
    max_beads: int = 200,
    min_distance: int | Sequence[int] = (1, 2, 2),
    threshold_rel: float = 0.2,
    smooth: float | Sequence[float] | None = BEAD_SEARCH_SMOOTH,
) -> dict:
    """The optical PSF as a Gaussian σ (z, y, x, µm), measured on an image of sub-resolution beads.

    Beads are found with :func:`detect_beads` (on the stack blurred by ``smooth`` voxels,
    so that noise makes no maxima of its own; the fits use the stack as it is) and fitted
    with :func:`bead_fwhm_table_widened` (profiles 4 voxels each side, widened to ±3 σ of the
    estimate, in up to 3 passes); the median FWHM per axis, over beads whose fits on all three axes
    succeed, gives ``σ_image = FWHM / 2.355``. Laterally the image of a point is the PSF
    seen through the camera pixel, a box of one voxel (variance ``v²/12``); that is removed,
    ``σ = sqrt(σ_image² − v²/12)`` (0 where the bead is no wider than a voxel), because
    PSF-scaled targets (``train.psf_sigma_um``) need the optical σ: the output grid has
    smaller voxels but the same PSF. Along z a stack samples the PSF at its focus steps
    (points, no box): σz is the image's.

    Parameters
    ----------
    volume
        ZYX image of isolated sub-resolution beads (a PSF stack of the microscope);
        numpy, dask or zarr (read in blocks: :func:`detect_beads`, :func:`bead_fwhm_table`).
    voxel_size
        ``(z, y, x)`` voxel size in µm.
    min_beads
        Fewer beads with three good fits than this raise ``ValueError``.
    max_beads, min_distance, threshold_rel
        As for :func:`detect_beads` and :func:`bead_fwhm_table`.
    smooth
        σ in voxels of the blur the bead search runs on (None: the stack as it is).

    Returns
    -------
    dict
        ``sigma_um`` (z, y, x), ``fwhm_um`` (median image FWHM z, y, x), ``n_beads`` and
        ``spread`` (per-axis interquartile range / median of the FWHMs: large values mean
        the spots are not all the same point-like object).
    """
    vs = _as_pair(voxel_size, "voxel_size", 3)
    vol = _array_like(volume)
    if vol.ndim != 3:
        raise ValueError(f"psf_sigma_from_beads needs a 3-D ZYX array; got shape {vol.shape}")
    pos = detect_beads(vol, min_distance=min_distance, threshold_rel=threshold_rel, smooth=smooth)
    # profiles of ±4 voxels, then widened to ±3 σ of the median estimate (a cut profile fits too narrow)
    table = bead_fwhm_table_widened(vol, voxel_size=vs, positions=pos, max_beads=max_beads, half_width=4)
    good = table[[f"fwhm_{a}" for a in "zyx"]].notna().all(axis=1)
    if int(good.sum()) < min_beads:
        raise ValueError(
            f"found {int(good.sum())} isolated beads with good Gaussian fits on all three axes "
            f"(of {len(pos)} spots), need at least {min_beads}: is this an image of sparse "
            "sub-resolution beads, with more than 8 z-slices?"
        )
    fwhm = table.loc[good, [f"fwhm_{a}_um" for a in "zyx"]].to_numpy()
    q1, med, q3 = np.percentile(fwhm, [25, 50, 75], axis=0)
    sigma_image = med / FWHM_PER_SIGMA
    box = np.asarray(vs, dtype=float) ** 2 / 12.0
    box[0] = 0.0  # z: focus steps are point samples
    sigma = np.sqrt(np.maximum(sigma_image**2 - box, 0.0))
    return {
        "sigma_um": tuple(float(v) for v in sigma),
        "fwhm_um": tuple(float(v) for v in med),
        "n_beads": int(good.sum()),
        "spread": tuple(float(v) for v in (q3 - q1) / med),
    }


# ------------------------------------------------------------ decorrelation analysis

_DCORR_NR = 200  # radial samples in (0, r_max]
_DCORR_NG = 10  # high-pass filters per refinement step
_DCORR_MIN_AMP = 0.05  # peaks of lower amplitude are noise (Descloux et al.)
_DCORR_PROMINENCE = 1e-3  # a peak must exceed the curve's later minimum by this


def _apodise(image: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Subtract the mean and taper the edges with a raised cosine (``fraction`` per edge)."""
    out = image - image.mean()
    for axis, n in enumerate(image.shape):
        w = max(1, int(round(fraction * n)))
        if 2 * w >= n:
            w = max(1, n // 4)
        taper = np.ones(n)
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(w) + 0.5) / w)
        taper[:w] = ramp
        taper[n - w :] = ramp[::-1]
        shape = [1] * image.ndim
        shape[axis] = n
        out = out * taper.reshape(shape)
    return out


def _curve_peak(d: np.ndarray, count: np.ndarray) -> int:
    """Index of the decorrelation peak, or -1 when the curve has none.

    The global maximum is taken; a maximum at the last radius is no peak (the
    curve still rises), so the search continues on shorter prefixes. A candidate
    must exceed the minimum of the curve after it by more than its own
    statistical fluctuation, ``d / sqrt(n)`` for ``n`` Fourier pixels inside the
    radius (the amplitudes of noise have a coefficient of variation ~0.5), and by
    at least ``_DCORR_PROMINENCE``.
    """
    n = d.size
    while n > 1:
        i = int(np.argmax(d[:n]))
        if i == d.size - 1:
            n -= 1
            continue
        margin = max(_DCORR_PROMINENCE, d[i] / math.sqrt(max(int(count[i]), 1)))
        if d[i] - d[i:].min() > margin:
            return i
        n = i  # nothing at or after i can stand out more
    return -1


def _dcorr_kc(
    amp: np.ndarray, k: np.ndarray, r_max: float, extent: float, pixel_min: float
) -> float:
    """Highest valid decorrelation cut-off (same unit as ``k``) or NaN.

    ``amp`` are the Fourier amplitudes |I(k)| of the support pixels (DC removed),
    ``k`` their physical radial frequencies (all <= ``r_max``).
    """
    nr = _DCORR_NR
    bins = np.minimum((k / r_max * nr).astype(np.intp), nr - 1)
    count = np.cumsum(np.bincount(bins, minlength=nr))
    radii = (np.arange(nr) + 1.0) / nr * r_max

    def curve(weights: np.ndarray) -> np.ndarray:
        a = amp * weights
        num = np.cumsum(np.bincount(bins, weights=a, minlength=nr))
        energy = float(np.sum(a * a))
        with np.errstate(invalid="ignore", divide="ignore"):
            d = num / np.sqrt(energy * count)
        return np.nan_to_num(d)

    def peak(weights: np.ndarray) -> tuple[float, float]:
        d = curve(weights)
        i = _curve_peak(d, count)
        if i < 0 or d[i] < _DCORR_MIN_AMP:
            return math.nan, 0.0
        return float(radii[i]), float(d[i])

    k0, _ = peak(np.ones_like(amp))
    # Gaussian high-pass filters 1 - exp(-2 pi^2 s^2 k^2), s (µm) from a coarse
    # scale (the image extent / 4, and 2/(pi k0)) down to 0.1 pixel.
    s_hi = 2.0 / (math.pi * k0) if np.isfinite(k0) else extent / 4
    s_hi = min(s_hi, extent / 4)
    s_lo = 0.1 * pixel_min
    k2 = (2.0 * math.pi**2) * k * k
    sigmas = np.concatenate([[extent / 4], np.geomspace(s_hi, s_lo, _DCORR_NG)])
    kcs = [k0]
    peaks = [peak(1.0 - np.exp(-k2 * s * s))[0] for s in sigmas]
    kcs += peaks
    # refinement: a finer set of filters between the neighbours of the best one
    valid = np.where(np.isfinite(peaks))[0]
    if valid.size:
        best = int(valid[np.argmax(np.asarray(peaks)[valid])])
        lo_i, hi_i = max(best - 1, 0), min(best + 1, len(sigmas) - 1)
        for s in np.geomspace(sigmas[lo_i], sigmas[hi_i], _DCORR_NG):
            kcs.append(peak(1.0 - np.exp(-k2 * s * s))[0])
    kcs_arr = np.asarray(kcs)
    kcs_arr = kcs_arr[np.isfinite(kcs_arr)]
    return float(kcs_arr.max()) if kcs_arr.size else math.nan


def _plane_spectrum(
    img: np.ndarray, p: tuple[float, float], axis: int | None, half_angle: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fourier amplitudes and physical radial frequencies of the analysed band.

    Returns ``(amp, k, r_max)`` for the pixels of the disc (or double sector) of
    radius ``r_max``, DC excluded; pixels of the half-plane stored by ``rfft2``
    whose conjugate partner is implicit are repeated, so sums are full-plane sums.
    """
    spec = np.abs(np.fft.rfft2(_apodise(img)))
    fy = np.fft.fftfreq(img.shape[0], d=p[0])[:, None]
    fx = np.fft.rfftfreq(img.shape[1], d=p[1])[None, :]
    k = np.sqrt(fy * fy + fx * fx)
    nyq = (0.5 / p[0], 0.5 / p[1])
    if axis is None:
        r_max = max(nyq)
        support = k <= r_max
    else:
        r_max = nyq[axis]
        along = np.abs(fy if axis == 0 else fx)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos_t = np.where(k > 0, along / k, 0.0)
        support = (k <= r_max) & (cos_t >= math.cos(math.radians(half_angle)))
    support = np.broadcast_to(support & (k > 0), spec.shape)
    reps = np.full(spec.shape[1], 2, dtype=np.intp)
    reps[0] = 1
    if img.shape[1] % 2 == 0:
        reps[-1] = 1
    reps = np.broadcast_to(reps[None, :], spec.shape)[support]
    amp = np.repeat(spec[support], reps)
    kk = np.repeat(np.broadcast_to(k, spec.shape)[support], reps)
    return amp, kk, r_max


def decorrelation_resolution(
    image2d: np.ndarray,
    *,
    pixel_size: float | Sequence[float] = (1.0, 1.0),
    axis: int | None = None,
    sector_half_angle: float = 22.5,
) -> float:
    """Resolution of a 2-D image by decorrelation analysis, in the unit of ``pixel_size``.

    Method of Descloux, Grußmayer & Radenovic (*Nat. Methods* 16:918, 2019): the
    image is mean-subtracted and edge-apodised (raised cosine over 1/4 of each
    side), Fourier transformed, and the normalised spectrum ``I_n = I/|I|`` is
    correlated with the spectrum itself inside discs of growing radius r::

        d(r) = sum Re(I conj(I_n M_r)) / sqrt(sum |I|^2 * sum |I_n M_r|^2)

    (r sampled at 200 points). The peak (r0, A0) of d marks where the signal
    falls to the noise. The same is done on the image filtered by Gaussian
    high-passes ``1 - exp(-2 pi^2 s^2 k^2)`` (s from a quarter of the image down
    to 0.1 pixel, 10 values, then 10 more between the neighbours of the best);
    the cut-off ``kc`` is the highest r0 among peaks of amplitude >= 0.05 that
    stand out of the curve's later minimum by more than its sampling noise
    (``d / sqrt(n)``, n Fourier pixels inside r0; this keeps small images and
    narrow sectors from reporting noise bumps), and
    the resolution is ``1 / kc``. In the paper's normalised units (1 = Nyquist)
    this is the familiar ``2 pixel / kc``.

    Frequencies are *physical* (cycles per unit of ``pixel_size``), so
    anisotropic pixels (e.g. XZ planes of a confocal stack) need no resampling:
    the discs are circles in physical frequency clipped to the sampled band, with
    r up to the Nyquist frequency of the finer axis (``axis=None``) or of ``axis``.

    Directional variant (``axis=0`` or ``1``): all sums are restricted to the
    double sector of frequencies within ``sector_half_angle`` degrees of that
    axis (a sectorial decorrelation: the image filtered to structures varying
    along ``axis``); this measures the resolution along that axis. For an
    isotropic spectrum the restriction leaves the expected d(r) unchanged, so
    directional and isotropic estimates are comparable; a narrow sector mixes
    in little of the other direction (at 22.5° the effective Gaussian width is
    within ~5 % of the on-axis one for a 2:1 anisotropy).

    A 3-D input is taken as a stack of 2-D images of the same geometry whose
    spectra are *pooled* (all sums run over all images): one estimate that is
    much less noisy than each image alone (used by
    :func:`resolution_lateral_axial`).

    Parameters
    ----------
    image2d
        2-D array of at least 8 × 8, or a stack ``(n, rows, cols)`` of them.
    pixel_size
        ``(rows, cols)`` pixel size (µm), or one number for both.
    axis
        None for the isotropic estimate; 0 (rows) or 1 (columns) for the
        resolution along that axis.
    sector_half_angle
        Half-angle of the directional sector in degrees, in (0, 90).

    Returns
    -------
    float
        Resolution (µm if ``pixel_size`` is in µm); NaN when no valid peak is
        found (e.g. a blank or pure-noise image).
    """
    img = np.asarray(image2d, dtype=np.float64)
    if img.ndim not in (2, 3) or min(img.shape[-2:]) < 8 or img.size == 0:
        raise ValueError(
            "decorrelation_resolution needs a 2-D image of at least 8 x 8 (or a stack "
            f"of them); got shape {img.shape}"
        )
    if axis not in (None, 0, 1):
        raise ValueError(f"axis must be None, 0 or 1; got {axis!r}")
    if not 0 < sector_half_angle < 90:
        raise ValueError(
            f"sector_half_angle must be in (0, 90) degrees; got {sector_half_angle!r}"
        )
    p = _as_pair(pixel_size, "pixel_size", 2)
    if not np.all(np.isfinite(img)):
        raise ValueError("image2d contains NaN or inf values")
    return _pooled_resolution(list(img.reshape(-1, *img.shape[-2:])), p, axis, sector_half_angle)


def _pooled_resolution(
    planes: list[np.ndarray],
    p: tuple[float, float] | list[tuple[float, float]],
    axis: int | None,
    half_angle: float,
) -> float:
    """Decorrelation resolution of planes (one pixel size, or one per plane), pooled."""
    sizes = p if isinstance(p, list) else [p] * len(planes)
    amps, ks, r_maxes, extents = [], [], [], []
    for plane, size in zip(planes, sizes):
        if np.ptp(plane) == 0:
            continue
        amp, k, r_max = _plane_spectrum(plane, size, axis, half_angle)
        amps.append(amp)
        ks.append(k)
        r_maxes.append(r_max)
        extents.append(min(plane.shape[0] * size[0], plane.shape[1] * size[1]))
    if not amps:
        return math.nan
    amp = np.concatenate(amps)
    k = np.concatenate(ks)
    r_max = min(r_maxes)
    keep = k <= r_max
    if np.count_nonzero(keep) < 16:
        return math.nan
    pixel_min = min(min(s) for s in sizes)
    kc = _dcorr_kc(amp[keep], k[keep], r_max, min(extents), pixel_min)
    return 1.0 / kc if np.isfinite(kc) and kc > 0 else math.nan


def _richest(indices_std: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` planes of highest standard deviation, ascending."""
    order = np.argsort(-indices_std, kind="stable")[:n]
    return np.sort(order)


def _crop_window(volume: np.ndarray, max_size: int) -> np.ndarray:
    """Crop y and x to at most ``max_size``, keeping the most contrasted window."""
    y0, y1, x0, x1 = lateral_window(volume, max_size)
    return volume[:, y0:y1, x0:x1]


def lateral_window(volume: np.ndarray, max_size: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the at most ``max_size`` × ``max_size`` lateral window of
    highest contrast (of the maximum projection along z), full z; all of y, x when smaller."""
    nz, ny, nx = volume.shape
    if ny <= max_size and nx <= max_size:
        return 0, ny, 0, nx
    proj = np.asarray(volume.max(axis=0), dtype=np.float64)  # one read of a lazy volume
    wy, wx = min(ny, max_size), min(nx, max_size)
    best, best_pos = -1.0, (0, 0)
    ys = np.unique(np.linspace(0, ny - wy, max(1, 2 * ny // wy)).astype(int))
    xs = np.unique(np.linspace(0, nx - wx, max(1, 2 * nx // wx)).astype(int))
    for y0 in ys:
        for x0 in xs:
            s = float(proj[y0 : y0 + wy : 4, x0 : x0 + wx : 4].std())
            if s > best:
                best, best_pos = s, (y0, x0)
    y0, x0 = best_pos
    return int(y0), int(y0 + wy), int(x0), int(x0 + wx)


def plane_correlation(volume: np.ndarray) -> float | None:
    """Pearson correlation of each plane of ``volume`` (ZYX) with the next, over all of them,
    with the volume clipped at its 99.9th percentile: about 0 for noise that is independent
    from plane to plane, clearly above it for anything the optics spread over neighbouring
    planes. Clipped, so that a few spikes in one plane each (cosmic-ray hits) do not decide it:
    six took a stack of bright cells from 0.86 to 0.02, and flagged it ``input_mostly_noise``
    (a rank correlation, tried, falls to 0.04 for sparse beads on a dark background, whose
    Pearson correlation is 0.41). ``None`` for one plane or a constant volume."""
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3 or vol.shape[0] < 2:
        return None
    finite = vol[np.isfinite(vol)]
    if finite.size:
        vol = np.minimum(vol, np.percentile(finite, 99.9))
    a, b = vol[:-1].ravel(), vol[1:].ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 4)


#: Voxels of the lateral tiles (all of z) of :func:`structure_share`: enough that a tile of pure
#: noise reads within about ±0.02 of 0 (its variance's standard error is ``sqrt(2 / voxels)``)
STRUCTURE_TILE_VOXELS = 16_384


def structure_share(volume: np.ndarray, noise) -> float | None:
    """How much of ``volume`` (ZYX) is more than its noise: the largest, over lateral tiles
    (all of z, :data:`STRUCTURE_TILE_VOXELS` voxels or the whole lateral field), of
    ``1 − mean noise variance / variance`` in the tile.

    1 for a clean image; about 0 (it may read slightly below) for pure noise, however bright,
    and for structure far fainter than the noise; the largest tile, so that a few cells in a
    wide empty field still count (measured, 32×256×256 with Poisson noise: three cells of 20
    photons on a background of 10 read 0.43, pure noise of 1 or 10 photons ≤ 0.014; the
    benchmark's real volumes 0.96–1.0, with Poisson noise of one photon at their 99.9th
    percentile 0.15–0.36). ``noise``: :class:`selfres.noise.NoiseLevel`; ``None`` where it
    measured nothing (``bins`` 0) or the volume is constant.
    """
    if noise is None or not getattr(noise, "bins", 0):
        return None
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 2:
        vol = vol[None]
    nz, ny, nx = vol.shape
    side = max(8, math.ceil(math.sqrt(STRUCTURE_TILE_VOXELS / nz)))
    ty, tx = min(ny, side), min(nx, side)
    best = None
    for y0 in range(0, ny - ty + 1, ty):
        for x0 in range(0, nx - tx + 1, tx):
            tile = vol[:, y0:y0 + ty, x0:x0 + tx]
            tile = tile[np.isfinite(tile)]
            total = float(np.var(tile)) if tile.size >= 2 else 0.0
            if total <= 0:
                continue
            share = 1.0 - float(np.mean(noise.variance(tile))) / total
            best = share if best is None else max(best, share)
    return None if best is None else round(best, 4)


def resolution_lateral_axial(
    volume: np.ndarray,
    *,
    voxel_size: Sequence[float],
    max_slices: int = 16,
    max_size: int = 256,
) -> tuple[float, float]:
    """Lateral and axial resolution of a ZYX volume by decorrelation analysis.

    - Lateral: :func:`decorrelation_resolution` (isotropic discs) on XY planes.
    - Axial: the directional (z-sector) estimate on XZ and YZ planes, with their
      physical pixel sizes ``(voxel_z, voxel_x)`` / ``(voxel_z, voxel_y)``, so no
      resampling is needed on anisotropic grids.

    Each is one estimate from the spectra of up to ``max_slices`` planes of each kind with
    the highest standard deviation (planes rich in signal), pooled (:func:`_pooled_resolution`),
    not a median of per-plane estimates. Large volumes are first
    cropped to the ``max_size`` × ``max_size`` lateral window of highest contrast
    (full z), which keeps a 64×128×128 volume well under a second.

    Parameters
    ----------
    volume
        ZYX array.
    voxel_size
        ``(z, y, x)`` in µm.
    max_slices
        Planes per orientation (XY; XZ; YZ).
    max_size
        Lateral crop size in voxels.

    Returns
    -------
    (float, float)
        ``(lateral, axial)`` in µm. Axial is NaN for volumes with fewer than 8
        slices; either is NaN when no plane gives a valid estimate.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"resolution_lateral_axial needs a ZYX array; got shape {np.shape(volume)}")
    vz, vy, vx = _as_pair(voxel_size, "voxel_size", 3)
    if int(max_slices) < 1:
        raise ValueError(f"max_slices must be >= 1; got {max_slices!r}")
    vol = _crop_window(vol, int(max_size))
    nz, ny, nx = vol.shape

    lateral = math.nan
    if min(ny, nx) >= 8:
        zs = _richest(vol.std(axis=(1, 2)), max_slices)
        lateral = _pooled_resolution([vol[z] for z in zs], (vy, vx), None, 22.5)
    axial = math.nan
    if nz >= 8:
        planes: list[np.ndarray] = []
        sizes: list[tuple[float, float]] = []
        if nx >= 8:
            for y in _richest(vol.std(axis=(0, 2)), max_slices):
                planes.append(vol[:, y, :])
                sizes.append((vz, vx))
        if ny >= 8:
            for x in _richest(vol.std(axis=(0, 1)), max_slices):
                planes.append(vol[:, :, x])
                sizes.append((vz, vy))
        if planes:
            axial = _pooled_resolution(planes, sizes, 0, 22.5)
    return lateral, axial


def isotropy(lateral: float, axial: float) -> float:
    """Isotropy ratio ``lateral / axial`` (1.0 = isotropic; < 1 = worse along z).

    Parameters
    ----------
    lateral, axial
        Resolutions from the same estimator (e.g. :func:`resolution_lateral_axial`).

    Returns
    -------
    float
        The ratio, or NaN when either value is missing, not finite or not positive.
    """
    try:
        lat, ax = float(lateral), float(axial)
    except (TypeError, ValueError):
        return math.nan
    if not (np.isfinite(lat) and np.isfinite(ax) and lat > 0 and ax > 0):
        return math.nan
    return lat / ax


# ------------------------------------------------------------------------ spectra


def _taper(n: int) -> np.ndarray:
    return np.hanning(n) if n >= 3 else np.ones(n)


def axial_spectrum(volume, *, voxel_size: Sequence[float],
                   block_voxels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum along z, averaged over y and x.

    Each z line is mean-subtracted and Hann-tapered; the power ``|FFT|^2`` is
    averaged over all (y, x) lines and returned as ``log10`` of that mean (the
    log of the mean, not the mean of logs, so zeros do not give -inf).

    Parameters
    ----------
    volume
        ZYX array with at least 2 slices: numpy, or lazy (dask, zarr), read in blocks
        of whole z lines (about ``block_voxels`` voxels each), so that a volume larger
        than memory can be measured.
    voxel_size
        ``(z, y, x)`` in µm.
    block_voxels
        Voxels transformed (in float64) at once, default half :data:`READ_BLOCK_VOXELS`;
        reads are whole stored chunks, spanning z.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Frequencies in cycles/µm (0 .. Nyquist along z) and ``log10`` mean power.
    """
    shape = tuple(volume.shape)
    if len(shape) != 3 or shape[0] < 2:
        raise ValueError(f"axial_spectrum needs a ZYX array with >= 2 slices; got shape {shape}")
    vz = _as_pair(voxel_size, "voxel_size", 3)[0]
    block_voxels = block_voxels or READ_BLOCK_VOXELS // 2
    taper = _taper(shape[0])[:, None, None]
    total = np.zeros(shape[0] // 2 + 1, dtype=np.float64)
    for block in block_slices(shape, block_voxels, chunks=_chunk_shape(volume), whole_axes=(0,)):
        stored = np.asarray(volume[block])  # whole stored chunks, once; transformed a few lines at a time
        for piece in block_slices(stored.shape, block_voxels, whole_axes=(0,)):
            vol = stored[piece].astype(np.float64)
            lines = (vol - vol.mean(axis=0, keepdims=True)) * taper
            total += (np.abs(np.fft.rfft(lines, axis=0)) ** 2).reshape(total.size, -1).sum(axis=1)
    mean = total / (shape[1] * shape[2])
    freq = np.fft.rfftfreq(shape[0], d=vz)
    return freq, np.log10(mean + np.finfo(np.float64).tiny)


def lateral_spectrum(
    volume: np.ndarray, *, voxel_size: Sequence[float], n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged lateral (XY) power spectrum, averaged over z.

    Each XY plane is mean-subtracted and Hann-tapered; 2-D power spectra are
    averaged over z, then over rings of physical radial frequency.

    Parameters
    ----------
    volume
        ZYX array (2-D accepted as one plane).
    voxel_size
        ``(z, y, x)`` in µm.
    n_bins
        Number of rings from 0 to the lateral Nyquist frequency of the finer axis;
        default ``min(ny, nx) // 2``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Ring-centre frequencies in cycles/µm and ``log10`` mean power (NaN for
        empty rings).
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or min(vol.shape[1:]) < 2:
        raise ValueError(f"lateral_spectrum needs a ZYX array; got shape {np.shape(volume)}")
    _, vy, vx = _as_pair(voxel_size, "voxel_size", 3)
    ny, nx = vol.shape[1:]
    if n_bins is None:
        n_bins = max(min(ny, nx) // 2, 1)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins!r}")
    n_bins = int(n_bins)
    win = _taper(ny)[:, None] * _taper(nx)[None, :]
    planes = (vol - vol.mean(axis=(1, 2), keepdims=True)) * win
    power = (np.abs(np.fft.fft2(planes)) ** 2).mean(axis=0)
    fy = np.fft.fftfreq(ny, d=vy)[:, None]
    fx = np.fft.fftfreq(nx, d=vx)[None, :]
    k = np.sqrt(fy * fy + fx * fx).ravel()
    k_max = max(0.5 / vy, 0.5 / vx)
    inside = k <= k_max
    bins = np.minimum((k[inside] / k_max * n_bins).astype(np.intp), n_bins - 1)
    sums = np.bincount(bins, weights=power.ravel()[inside], minlength=n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        log_power = np.log10(mean + np.finfo(np.float64).tiny)
    freq = (np.arange(n_bins) + 0.5) / n_bins * k_max
    return freq, log_power
