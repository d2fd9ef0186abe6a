"""Resampling and degradation: Keys cubic matrices, PSF blur, noise.

Everything here works on the *last* axes of an array, in ZYX order (2-D data is
``(Y, X)`` or ``Z = 1``). The grid convention is the contract's half-pixel-centre
one: output voxel ``j`` of an axis with scale ``s`` sits at input coordinate
``(j + 0.5)/s - 0.5``.

Resampling is done with dense per-axis matrices (separable), built once and cached.
This makes the numpy path and the torch path (for batched training on CPU or GPU)
the same arithmetic, so they agree to float32 rounding. The cubic kernel is Keys'
(a = -0.5), as in MATLAB ``imresize(..., 'cubic')``: when shrinking, the kernel is
stretched by ``1/s`` (anti-aliasing) and borders are mirrored with the edge voxel
repeated (MATLAB ``'symmetric'``). This cubic is "tricubic interpolation" throughout
selfres; it is *not* the spline of ``skimage.transform.resize(order=3)``.

Blur and padding conventions: Gaussian blur and measured-PSF convolution use
``'mirror'`` borders (``d c b | a b c d | c b a``, scipy ``mode='mirror'`` and torch
``'reflect'`` padding), extended periodically when the padding exceeds the axis.

torch is imported lazily inside the torch functions; numpy users never pay for it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from selfres.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "Degradation",
    "TorchDegrader",
    "add_noise",
    "blur",
    "degrade",
    "downscale_cubic",
    "gaussian_sigma_from_optics",
    "keys_cubic",
    "load_psf",
    "mirror_indices",
    "mirror_pad",
    "resize_axes",
    "resize_matrix",
    "sigma_um_to_px",
    "upscale_cubic",
]

_KEYS_A = -0.5
_GAUSS_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default
_METHODS = ("cubic", "block", "gaussian", "psf")
_NOISES = ("none", "poisson_gaussian", "affine_gaussian")
_PSF_KINDS = ("widefield", "confocal", "two_photon")


# ----------------------------------------------------------------------------------
# Kernels, index helpers and matrices
# ----------------------------------------------------------------------------------


def keys_cubic(d: np.ndarray | float, *, a: float = _KEYS_A) -> np.ndarray:
    """Evaluate the Keys cubic convolution kernel.

    Parameters
    ----------
    d
        Distance(s) in input voxels.
    a
        Keys' free parameter; -0.5 (MATLAB ``imresize`` 'cubic') by default.

    Returns
    -------
    numpy.ndarray
        Kernel weights, float64, same shape as ``d``; zero for ``|d| >= 2``.
    """
    x = np.abs(np.asarray(d, dtype=np.float64))
    x2, x3 = x * x, x * x * x
    inner = (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
    outer = a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
    return np.where(x <= 1.0, inner, np.where(x < 2.0, outer, 0.0))


def mirror_indices(idx: np.ndarray, n: int, *, edge: bool) -> np.ndarray:
    """Map any integer indices into ``[0, n)`` by mirroring at the borders.

    Parameters
    ----------
    idx
        Integer indices, possibly outside ``[0, n)``.
    n
        Axis length (>= 1).
    edge
        True: the edge voxel is repeated (MATLAB 'symmetric', numpy 'symmetric':
        ``-1 -> 0``, ``n -> n-1``). False: it is not (scipy 'mirror', torch
        'reflect': ``-1 -> 1``, ``n -> n-2``).

    Returns
    -------
    numpy.ndarray
        Indices in ``[0, n)``, int64.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    if edge:
        period = 2 * n
        m = np.mod(idx, period)
        return np.where(m >= n, period - 1 - m, m)
    period = 2 * n - 2
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def _check_length(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1; received {n!r}")
    return int(n)


@lru_cache(maxsize=512)
def _resize_matrix_cached(n_in: int, n_out: int, s: float, antialias: bool) -> np.ndarray:
    j = np.arange(n_out, dtype=np.float64)
    u = (j + 0.5) / s - 0.5  # input coordinate of each output voxel
    if s < 1.0 and antialias:
        width = 4.0 / s

        def kernel(d: np.ndarray) -> np.ndarray:
            return s * keys_cubic(s * d)
    else:
        width = 4.0
        kernel = keys_cubic
    taps = int(math.ceil(width)) + 2
    left = np.floor(u - width / 2.0).astype(np.int64)
    idx = left[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    cols = mirror_indices(idx, n_in, edge=True)
    rows = np.broadcast_to(np.arange(n_out)[:, None], idx.shape)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (rows, cols), w)
    m.setflags(write=False)
    return m


def resize_matrix(
    n_in: int, n_out: int, *, scale: float | None = None, antialias: bool = True
) -> np.ndarray:
    """Keys-cubic resampling matrix of one axis.

    Parameters
    ----------
    n_in, n_out
        Input and output axis lengths.
    scale
        Scale factor ``s``; default ``n_out / n_in``. Give it for non-integer
        factors where ``n_out = round(n_in * s)``; output voxel ``j`` then sits at
        input coordinate ``(j + 0.5)/s - 0.5`` exactly.
    antialias
        When ``s < 1``: stretch the kernel by ``1/s`` (support ``4/s``) and scale
        its weights by ``s`` (MATLAB ``imresize`` anti-aliasing).

    Returns
    -------
    numpy.ndarray
        float64 ``(n_out, n_in)``, read-only (cached); rows sum to 1. Borders are
        mirrored with the edge repeated (index -1 -> 0, n -> n-1).
    """
    n_in = _check_length("n_in", n_in)
    n_out = _check_length("n_out", n_out)
    s = float(scale) if scale is not None else n_out / n_in
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a finite number > 0; received {scale!r}")
    return _resize_matrix_cached(n_in, n_out, s, bool(antialias))


@lru_cache(maxsize=256)
def _gaussian_kernel1d(sigma: float) -> np.ndarray:
    radius = int(_GAUSS_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@lru_cache(maxsize=256)
def _gaussian_block_matrix(n: int, sigma: float, factor: int) -> np.ndarray:
    """(n // factor, n) matrix: mirror-border Gaussian blur then block mean."""
    if sigma > 0:
        k = _gaussian_kernel1d(sigma)
        r = (k.size - 1) // 2
        idx = np.arange(n)[:, None] + np.arange(-r, r + 1)[None, :]
        g = np.zeros((n, n), dtype=np.float64)
        np.add.at(g, (np.broadcast_to(np.arange(n)[:, None], idx.shape),
                      mirror_indices(idx, n, edge=False)), np.broadcast_to(k, idx.shape))
    else:
        g = np.eye(n)
    block = np.kron(np.eye(n // factor), np.full((1, factor), 1.0 / factor))
    m = block @ g
    m.setflags(write=False)
    return m


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


@lru_cache(maxsize=256)
def _torch_matrix(key: tuple, device: str, dtype: Any) -> Any:
    import torch

    kind, args = key[0], key[1:]
    m = _resize_matrix_cached(*args) if kind == "resize" else _gaussian_block_matrix(*args)
    # a normal tensor even when first built under inference_mode, so that a cached matrix
    # can later take part in autograd (training after a validation pass)
    with torch.inference_mode(False):
        return torch.tensor(np.array(m), dtype=dtype, device=device)


def _apply_along(x: Any, axis: int, key: tuple) -> Any:
    """Multiply axis ``axis`` (negative) of ``x`` by the cached matrix ``key``.

    The array is viewed as ``(prefix, n, suffix)`` and multiplied from the left,
    which keeps memory access contiguous for every axis.
    """
    if _is_tensor(x):
        import torch

        dtype = x.dtype if x.is_floating_point() else torch.float32
        return _apply_matrix(x.to(dtype), axis, _torch_matrix(key, str(x.device), dtype))
    kind, args = key[0], key[1:]
    m = _resize_matrix_cached(*args) if kind == "resize" else _gaussian_block_matrix(*args)
    return _apply_matrix(x, axis, m.astype(np.float32))


def _apply_matrix(x: Any, axis: int, m: Any) -> Any:
    """Multiply axis ``axis`` (negative) of ``x`` (numpy or torch, ``m``'s kind) by ``m``."""
    shape = tuple(x.shape)
    a = len(shape) + axis
    prefix = int(np.prod(shape[:a], dtype=np.int64))
    suffix = int(np.prod(shape[a + 1:], dtype=np.int64))
    xc = x.contiguous() if _is_tensor(x) else np.ascontiguousarray(x)
    if suffix == 1:  # last axis: one (prefix × n) @ (n × n_out) GEMM, not prefix matrix-vector products
        y = xc.reshape(prefix, shape[a]) @ m.T
    else:
        y = m @ xc.reshape(prefix, shape[a], suffix)
    return y.reshape(shape[:a] + (m.shape[0],) + shape[a + 1:])


def _as_float32(x: Any) -> Any:
    if _is_tensor(x):
        import torch

        return x if x.dtype == torch.float32 else x.to(torch.float32)
    return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------


def resize_axes(
    x: Any,
    out_shape: Sequence[int],
    *,
    scale: Sequence[float | None] | None = None,
    antialias: bool = True,
) -> Any:
    """Separable Keys-cubic resampling of the last ``len(out_shape)`` axes.

    Parameters
    ----------
    x
        numpy array or torch tensor with at least ``len(out_shape)`` axes.
    out_shape
        Output lengths of the last axes.
    scale
        Per-axis scale factors (entries may be None: ``n_out / n_in``). Needed for
        non-integer factors with rounded output lengths.
    antialias
        Anti-alias when shrinking (see :func:`resize_matrix`).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        numpy input: float32 array. Tensor input: tensor on the same device, in its
        floating dtype (float32 for integer tensors). Axes whose length and scale
        are unchanged are passed through.
    """
    out_shape = tuple(int(n) for n in out_shape)
    k = len(out_shape)
    if k == 0 or x.ndim < k:
        raise ValueError(
            f"resize_axes: out_shape {out_shape} needs an input with at least {k} "
            f"axes; received shape {tuple(x.shape)}"
        )
    if scale is None:
        scale = (None,) * k
    scale = tuple(scale)
    if len(scale) != k:
        raise ValueError(
            f"resize_axes: scale {scale} must have one entry per resized axis ({k})"
        )
    y = _as_float32(x)
    for i, (n_out, s) in enumerate(zip(out_shape, scale)):
        axis = i - k
        n_in = int(y.shape[axis])
        if n_in == n_out and (s is None or float(s) == 1.0):
            continue
        resize_matrix(n_in, n_out, scale=s, antialias=antialias)  # validates, caches
        s_eff = float(s) if s is not None else n_out / n_in
        y = _apply_along(y, axis, ("resize", n_in, n_out, s_eff, bool(antialias)))
    return y


def _check_factors(factors: Any, *, integer: bool, name: str) -> tuple:
    try:
        fs = tuple(factors)
    except TypeError:
        raise ValueError(f"{name}: factors must be a sequence of numbers per axis "
                         f"(z, y, x) or (y, x); received {factors!r}") from None
    if len(fs) not in (1, 2, 3):
        raise ValueError(f"{name}: factors must have one entry per axis (1 to 3); received {fs}")
    out = []
    for f in fs:
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: factors must be numbers; received {fs}")
        if integer:
            if float(f) != int(f) or int(f) < 1:
                raise ValueError(f"{name}: factors must be integers >= 1; received {fs}")
            out.append(int(f))
        else:
            if not math.isfinite(float(f)) or float(f) < 1:
                raise ValueError(f"{name}: factors must be numbers >= 1; received {fs}")
            out.append(int(f) if float(f) == int(f) else float(f))
    return tuple(out)


def _check_divisible(shape: tuple, factors: tuple, name: str) -> None:
    k = len(factors)
    for n, f in zip(shape[-k:], factors):
        if n % f:
            raise ValueError(
                f"{name}: shape {tuple(shape)} is not divisible by factors {factors} "
                f"on its last {k} axes; crop the volume to multiples of the factors"
            )


def downscale_cubic(x: Any, factors: Sequence[int]) -> Any:
    """Anti-aliased Keys-cubic downscale by integer factors (MATLAB ``imresize``).

    Parameters
    ----------
    x
        numpy array or torch tensor; the last ``len(factors)`` axes are resized.
    factors
        Integer factors per axis, ``(z, y, x)`` or ``(y, x)``; 1 leaves an axis as is.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Output lengths ``n // f``.

    Raises
    ------
    ValueError
        A resized axis is not a multiple of its factor.
    """
    fs = _check_factors(factors, integer=True, name="downscale_cubic")
    if x.ndim < len(fs):
        raise ValueError(f"downscale_cubic: {len(fs)} factors need at least "
                         f"{len(fs)} axes; received shape {tuple(x.shape)}")
    _check_divisible(tuple(x.shape), fs, "downscale_cubic")
    out = tuple(n // f for n, f in zip(x.shape[-len(fs):], fs))
    return resize_axes(x, out, scale=tuple(1.0 / f for f in fs), antialias=True)


def upscale_cubic(x: Any, factors: Sequence[float]) -> Any:
    """Keys-cubic ("tricubic") upscale by factors >= 1.

    Parameters
    ----------
    x
        numpy array or torch tensor; the last ``len(factors)`` axes are resized.
    factors
        Per-axis factors >= 1. Integers give ``n * f``; non-integers give
        ``round(n * f)`` with the position ``(j + 0.5)/f - 0.5`` using ``f`` exactly.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The upscaled array (no anti-aliasing; factor-1 axes unchanged).
    """
    fs = _check_factors(factors, integer=False, name="upscale_cubic")
    if x.ndim < len(fs):
        raise ValueError(f"upscale_cubic: {len(fs)} factors need at least "
                         f"{len(fs)} axes; received shape {tuple(x.shape)}")
    out = tuple(int(round(n * f)) for n, f in zip(x.shape[-len(fs):], fs))
    return resize_axes(x, out, scale=tuple(float(f) for f in fs), antialias=False)



# ----------------------------------------------------------------------------------
# PSFs
# ----------------------------------------------------------------------------------


def _check_voxel_size(voxel_size: Any) -> tuple[float, float, float]:
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ConfigError(f"voxel_size must be three numbers (z, y, x) in µm; "
                          f"received {voxel_size!r}") from None
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ConfigError(f"voxel_size must be three numbers > 0 (z, y, x) in µm; "
                          f"received {voxel_size!r}")
    return vs  # type: ignore[return-value]


def gaussian_sigma_from_optics(
    *,
    na: float,
    wavelength_um: float,
    refractive_index: float,
    voxel_size: Sequence[float],
    kind: Literal["widefield", "confocal", "two_photon"] = "widefield",
    excitation_wavelength_um: float | None = None,
) -> tuple[float, float, float]:
    """Gaussian approximation of a microscope PSF, as σ in voxels (z, y, x).

    Parameters
    ----------
    na
        Numerical aperture of the objective (0 < na < refractive_index).
    wavelength_um
        Emission wavelength in µm; for ``"two_photon"`` the *excitation* wavelength.
    refractive_index
        Refractive index of the immersion medium.
    voxel_size
        ``(z, y, x)`` voxel size in µm.
    kind
        ``"widefield"``, ``"confocal"`` (pinhole small) or ``"two_photon"``.
    excitation_wavelength_um
        Confocal only: excitation wavelength; default equal to ``wavelength_um``.

    Returns
    -------
    tuple of float
        ``(σz, σy, σx)`` in voxels.

    Notes
    -----
    Widefield and confocal follow the 3-D paraxial least-squares Gaussians of Zhang,
    Zerubia & Olivo-Marin, "Gaussian approximations of fluorescence microscope
    point-spread function models", Appl. Opt. 46(10):1819-1829 (2007), with k = 2π/λ:

    - widefield: σxy = √2/(k NA) ≈ 0.225 λ/NA, σz = 2√6 n/(k NA²) ≈ 0.780 λ n/NA²
      (the 2-D Airy-disc fit, 0.21 λ/NA, is narrower than the 3-D PSF's lateral σ);
    - confocal (small pinhole: excitation × emission PSF): the same with λ replaced by
      λex λem / sqrt(λex² + λem²), i.e. a factor 1/√2 when λex = λem.

    Two-photon follows Zipfel, Williams & Webb, Nat. Biotechnol. 21:1369 (2003),
    1/e radii of the squared illumination PSF: ωxy = 0.320 λ/(√2 NA) for NA <= 0.7,
    0.325 λ/(√2 NA^0.91) above; ωz = 0.532 λ/√2 · 1/(n - sqrt(n² - NA²)). The
    profile ``exp(-r²/ω²)`` is a Gaussian with σ = ω/√2 (its FWHM 2√(ln 2) ω; at NA 1.0
    and 800 nm 0.31 µm, the one-photon Airy FWHM at 800 nm over √2, as squaring asks).
    """
    if kind not in _PSF_KINDS:
        raise ConfigError(f"PSF kind must be one of {', '.join(_PSF_KINDS)}; "
                          f"received {kind!r}")
    for name, v in (("na", na), ("wavelength_um", wavelength_um),
                    ("refractive_index", refractive_index)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{name} must be a number > 0; received {v!r}")
    if na >= refractive_index:
        raise ConfigError(f"na ({na}) must be smaller than refractive_index "
                          f"({refractive_index})")
    vz, vy, vx = _check_voxel_size(voxel_size)
    lam, n = float(wavelength_um), float(refractive_index)
    if kind in ("widefield", "confocal"):
        if kind == "confocal":
            lex = lam if excitation_wavelength_um is None else float(excitation_wavelength_um)
            if not math.isfinite(lex) or lex <= 0:
                raise ConfigError(f"excitation_wavelength_um must be > 0; received "
                                  f"{excitation_wavelength_um!r}")
            lam = lex * lam / math.sqrt(lex**2 + lam**2)
        k = 2.0 * math.pi / lam
        s_xy, s_z = math.sqrt(2.0) / (k * na), 2.0 * math.sqrt(6.0) * n / (k * na**2)
    else:
        if na <= 0.7:
            w_xy = 0.320 * lam / (math.sqrt(2.0) * na)
        else:
            w_xy = 0.325 * lam / (math.sqrt(2.0) * na**0.91)
        w_z = 0.532 * lam / math.sqrt(2.0) / (n - math.sqrt(n**2 - na**2))
        s_xy, s_z = w_xy / math.sqrt(2.0), w_z / math.sqrt(2.0)
    return (s_z / vz, s_xy / vy, s_xy / vx)


def sigma_um_to_px(sigma_um: Sequence[float], voxel_size: Sequence[float]) -> tuple[float, ...]:
    """Convert σ in µm (z, y, x) to voxels.

    Parameters
    ----------
    sigma_um
        Three standard deviations in µm, each >= 0.
    voxel_size
        ``(z, y, x)`` voxel size in µm.

    Returns
    -------
    tuple of float
        σ in voxels.
    """
    vs = _check_voxel_size(voxel_size)
    try:
        s = tuple(float(v) for v in sigma_um)
    except (TypeError, ValueError):
        raise ConfigError(f"sigma_um must be three numbers (z, y, x); received "
                          f"{sigma_um!r}") from None
    if len(s) != 3 or not all(math.isfinite(v) and v >= 0 for v in s):
        raise ConfigError(f"sigma_um must be three numbers >= 0 (z, y, x); received "
                          f"{sigma_um!r}")
    return tuple(a / b for a, b in zip(s, vs))


def _border_level(a: np.ndarray) -> tuple[float, bool]:
    """A measured PSF's background from its outermost voxels (its faces), and whether they are
    flat: the median of the faces where the shell one voxel further in is no brighter (a
    camera's offset and background light, however noisy), else their 10th percentile (a PSF
    cropped inside its own wings, e.g. a computed one at ±2σ, which still rises inwards: the
    median of its faces is the PSF's signal, and taking it away cut a fifth of a 7³ Gaussian's
    mass). Told apart by that slope, not by the faces' spread, which noise alone makes wide."""
    def faces_of(box: np.ndarray) -> np.ndarray:
        return np.concatenate([np.take(box, idx, axis=ax).ravel() for ax in range(box.ndim) for idx in (0, -1)])

    faces = faces_of(a)
    median = float(np.median(faces))
    if min(a.shape) < 3:
        return median, True
    inner = faces_of(a[tuple(slice(1, -1) for _ in range(a.ndim))])
    noise = 1.4826 * float(np.median(np.abs(faces - median)))
    rise = float(np.median(inner)) - median
    # a rise beyond what the medians' own noise allows, and worth a part of the peak
    if median <= 0 or rise <= max(5 * 1.2533 * noise / math.sqrt(faces.size), 0.002 * float(a.max())):
        return median, True
    return max(float(np.percentile(faces, 10)), 0.0), False


def _normalise_psf(psf: np.ndarray, source: str | Path) -> np.ndarray:
    """Take away the background (the median of the border voxels: a camera's offset and the
    background light of a measured bead stack, which would otherwise weigh as a flat blur over
    the whole crop), clip negatives, pad to odd sizes centred on the centroid, sum to 1."""
    a = np.asarray(psf, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim not in (2, 3):
        raise InputError(source, f"a PSF must be a 2-D or 3-D image; received shape "
                                 f"{tuple(np.shape(psf))}")
    if not np.all(np.isfinite(a)):
        raise InputError(source, "the PSF contains NaN or infinite values")
    background, flat = _border_level(a)
    if not flat:
        log.warning("%s: the PSF's border is not flat (its faces hold the PSF's own wings: cropped tighter than "
                    "the PSF); only its lowest level, %.4g, is taken away as background. Crop it wider for a "
                    "truer kernel", source, background)
    if background > 0:
        if flat and background > 0.01 * a.max():
            log.info("%s: took away the PSF's background, %.4g (%.1f %% of its peak; the median of its border "
                     "voxels)", source, background, 100 * background / a.max())
        a = a - background
    a = np.clip(a, 0.0, None)
    total = a.sum()
    if total <= 0:
        raise InputError(source, "the PSF has no positive values (sum <= 0)")
    a = a / total
    pads = []
    for ax, n in enumerate(a.shape):
        coords = np.arange(n, dtype=np.float64)
        marginal = a.sum(axis=tuple(i for i in range(a.ndim) if i != ax))
        c = int(round(float((coords * marginal).sum())))
        r = max(c, n - 1 - c)
        pads.append((r - c, r - (n - 1 - c)))
    a = np.pad(a, pads)
    out = a.astype(np.float32)
    out /= out.sum()
    out.setflags(write=False)
    return out


def load_psf(path: str | Path) -> np.ndarray:
    """Read a measured PSF from a TIFF file.

    Parameters
    ----------
    path
        TIFF file holding a 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)`` PSF image.

    Returns
    -------
    numpy.ndarray
        float32, negatives clipped to 0, padded with zeros to odd sizes centred on
        the intensity centroid, normalised to sum 1; read-only.

    Raises
    ------
    InputError
        The file is missing, not a readable TIFF, not 2-D/3-D, non-finite or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "PSF file not found")
    try:
        import tifffile

        data = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for bad files
        raise InputError(path, f"cannot read the PSF as a TIFF image ({exc})") from exc
    return _normalise_psf(data, path)


def _psf_for(shape: tuple, psf: np.ndarray, k: int, factors: Sequence[int] | None = None) -> np.ndarray:
    """Align ``psf`` with the last ``k`` axes of data of ``shape``.

    A 3-D PSF applied to single-plane data (z length 1) is reduced to its central
    plane, renormalised: the same thing a Gaussian does on a single plane. So is every
    axis whose factor (``factors``, when given) is 1: the degradation leaves an axis that
    is not resampled as it was (see :func:`sigma_on_resampled_axes`).
    """
    p = np.asarray(psf, dtype=np.float64)
    while p.ndim > k:
        if p.shape[0] != 1:
            p = p[p.shape[0] // 2]
        else:
            p = p[0]
    while p.ndim < k:
        p = p[None]
    for ax in range(k):
        not_resampled = factors is not None and int(factors[ax]) == 1
        if (shape[len(shape) - k + ax] == 1 or not_resampled) and p.shape[ax] > 1:
            p = np.take(p, [p.shape[ax] // 2], axis=ax)
    return p / p.sum()


def mirror_pad(x: Any, pads: Sequence, *, edge: bool) -> Any:
    """Mirror-pad the last ``len(pads)`` axes of an array or tensor by ``pads[i]`` voxels at
    both ends, or by ``(low, high)``; any pad, however large (:func:`mirror_indices`, whose
    ``edge`` says whether the border voxel repeats: True = numpy/MATLAB 'symmetric')."""
    k = len(pads)
    for i, p in enumerate(pads):
        lo, hi = (int(p), int(p)) if np.isscalar(p) else (int(p[0]), int(p[1]))
        if lo == 0 and hi == 0:
            continue
        axis = x.ndim - k + i
        n = x.shape[axis]
        idx = mirror_indices(np.arange(-lo, n + hi), n, edge=edge)
        if _is_tensor(x):
            import torch

            x = torch.index_select(x, axis, torch.as_tensor(idx, device=x.device))
        else:
            x = np.take(x, idx, axis=axis)
    return x


def _psf_convolve_numpy(x: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Mirror-padded FFT convolution over the last ``psf.ndim`` axes ('same' size)."""
    from scipy import fft as sfft

    k = psf.ndim
    p = _psf_for(x.shape, psf, k)
    half = [s // 2 for s in p.shape]
    xp = mirror_pad(np.asarray(x, dtype=np.float64), half, edge=False)
    axes = tuple(range(x.ndim - k, x.ndim))
    size = [sfft.next_fast_len(xp.shape[a], real=True) for a in axes]
    spec = sfft.rfftn(xp, s=size, axes=axes) * sfft.rfftn(p, s=size)
    full = sfft.irfftn(spec, s=size, axes=axes)
    # 'valid' part of the full convolution: starts at psf size - 1 on each axis
    sl = tuple(slice(None) for _ in range(x.ndim - k)) + tuple(
        slice(s - 1, s - 1 + n) for s, n in zip(p.shape, x.shape[x.ndim - k:]))
    return full[sl]


def blur(
    x: Any,
    *,
    sigma_px: Sequence[float] | None = None,
    psf: np.ndarray | None = None,
) -> Any:
    """Blur with a Gaussian or a measured PSF (mirror borders).

    Parameters
    ----------
    x
        numpy array — or, with ``sigma_px``, a torch tensor (blurred on its device, with
        the same mirrored, truncated kernel); the last ``len(sigma_px)`` (or ``psf.ndim``)
        axes are blurred.
    sigma_px
        Gaussian standard deviations in voxels, one per blurred axis (>= 0).
    psf
        Measured PSF (see :func:`load_psf`), convolved via FFT.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``x``.
    """
    if (sigma_px is None) == (psf is None):
        raise ValueError("blur: give exactly one of sigma_px or psf")
    if not _is_tensor(x):
        x = np.asarray(x, dtype=np.float32)
    if psf is not None:
        return _psf_convolve_numpy(x, psf).astype(np.float32)
    sig = tuple(float(s) for s in sigma_px)
    if len(sig) > x.ndim or not all(math.isfinite(s) and s >= 0 for s in sig):
        raise ValueError(f"blur: sigma_px must be numbers >= 0, at most one per axis "
                         f"of shape {tuple(x.shape)}; received {tuple(sigma_px)}")
    if _is_tensor(x):  # the Gaussian matrices of the torch degradation, with factor 1
        import torch

        dtype = x.dtype if x.is_floating_point() else torch.float32
        for axis, s in zip(range(-len(sig), 0), sig):
            if s > 0:
                # built, not cached: a σ drawn at random per patch (train.blur_targets) would only
                # evict the degradation's own matrices from the cache, to be rebuilt every step
                m = _gaussian_block_matrix.__wrapped__(int(x.shape[axis]), s, 1)
                x = _apply_matrix(x.to(dtype), axis, torch.tensor(m, dtype=dtype, device=x.device))
        return x
    from scipy.ndimage import gaussian_filter

    full = (0.0,) * (x.ndim - len(sig)) + sig
    return gaussian_filter(x, full, mode="mirror", truncate=_GAUSS_TRUNCATE)


def _block_mean(x: Any, factors: tuple) -> Any:
    k = len(factors)
    lead = tuple(x.shape[: x.ndim - k])
    shape = list(lead)
    for n, f in zip(x.shape[x.ndim - k:], factors):
        shape += [n // f, f]
    y = x.reshape(tuple(shape))
    red = tuple(len(lead) + 2 * i + 1 for i in range(k))
    if _is_tensor(x):
        return y.mean(dim=red)
    return y.mean(axis=red, dtype=np.float64).astype(np.float32)


# ----------------------------------------------------------------------------------
# Degradation model
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Degradation:
    """How a high-resolution patch is turned into a low-resolution input.

    Parameters
    ----------
    method
        ``"cubic"``: anti-aliased Keys-cubic downscale (Self-Vision's default).
        ``"block"``: the block mean, i.e. pixel binning (a camera binning f × f pixels, or
        pixels f times larger that integrate the light over their area).
        ``"gaussian"``: Gaussian blur with ``sigma_px`` (σ in HR voxels, on the axes
        with a factor above 1 only), then block-mean decimation.
        ``"psf"``: measured PSF blur (its central plane along axes with factor 1), then
        block-mean decimation.
    sigma_px
        ``(σz, σy, σx)`` (or ``(σy, σx)``) in voxels; only for ``"gaussian"``.
    psf
        PSF array for ``"psf"`` (normalised on construction).
    psf_path
        TIFF file to load the PSF from, instead of ``psf``.
    noise
        ``"none"``; ``"poisson_gaussian"`` (see :func:`add_noise`); or ``"affine_gaussian"``:
        Gaussian noise of variance ``noise_variance[0]·y + noise_variance[1]`` (never below
        0) on each degraded voxel ``y`` — the top-up that makes a degraded input as noisy as
        the acquisition (:mod:`selfres.noise`).
    gain
        Photons per unit of normalised intensity (Poisson part); > 0.
    read_sigma
        Standard deviation of the Gaussian read noise, in normalised units; >= 0.
    noise_variance
        ``(slope, floor)`` of ``"affine_gaussian"``, normalised units.
    """

    method: Literal["cubic", "block", "gaussian", "psf"] = "cubic"
    sigma_px: tuple[float, ...] | None = None
    psf: np.ndarray | None = field(default=None, compare=False, repr=False)
    psf_path: str | None = None
    noise: Literal["none", "poisson_gaussian", "affine_gaussian"] = "none"
    gain: float = 100.0
    read_sigma: float = 0.0
    noise_variance: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ConfigError(f"degradation method must be one of "
                              f"{', '.join(_METHODS)}; received {self.method!r}")
        if self.noise not in _NOISES:
            raise ConfigError(f"degradation noise must be one of {', '.join(_NOISES)}; "
                              f"received {self.noise!r}")
        if self.method == "gaussian":
            if self.sigma_px is None:
                raise ConfigError("degradation method 'gaussian' needs sigma_px "
                                  "(σ per axis z, y, x in voxels)")
            try:
                sig = tuple(float(s) for s in self.sigma_px)
            except (TypeError, ValueError):
                sig = ()
            if len(sig) not in (2, 3) or not all(math.isfinite(s) and s >= 0 for s in sig):
                raise ConfigError(f"sigma_px must be 2 or 3 numbers >= 0; received "
                                  f"{self.sigma_px!r}")
            object.__setattr__(self, "sigma_px", sig)
        elif self.sigma_px is not None:
            raise ConfigError(f"sigma_px is only used with method 'gaussian'; "
                              f"received it with method {self.method!r}")
        if self.method == "psf":
            if self.psf is None and self.psf_path is None:
                raise ConfigError("degradation method 'psf' needs psf or psf_path")
            if self.psf is not None and self.psf_path is not None:
                raise ConfigError("give psf or psf_path, not both")
            if self.psf is None:
                object.__setattr__(self, "psf", load_psf(self.psf_path))
            else:
                object.__setattr__(self, "psf", _normalise_psf(self.psf, "<psf array>"))
        elif self.psf is not None or self.psf_path is not None:
            raise ConfigError(f"psf/psf_path are only used with method 'psf'; "
                              f"received them with method {self.method!r}")
        for name in ("gain", "read_sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a number; received {v!r}")
        if self.gain <= 0:
            raise ConfigError(f"gain must be > 0; received {self.gain!r}")
        if self.read_sigma < 0:
            raise ConfigError(f"read_sigma must be >= 0; received {self.read_sigma!r}")
        try:
            nv = tuple(float(v) for v in self.noise_variance)
        except (TypeError, ValueError):
            nv = ()
        if len(nv) != 2 or not all(math.isfinite(v) for v in nv):
            raise ConfigError(f"noise_variance must be two numbers (slope, floor); received {self.noise_variance!r}")
        object.__setattr__(self, "noise_variance", nv)


def _sigma_for(sigma: tuple, k: int) -> tuple:
    if len(sigma) == k:
        return sigma
    if len(sigma) == 3 and k == 2:
        return sigma[1:]
    if len(sigma) == 2 and k == 3:
        return (0.0,) + sigma
    raise ValueError(f"sigma_px {sigma} does not match {k} factors")


def sigma_on_resampled_axes(sigma: tuple, factors: Sequence[int]) -> tuple:
    """The Gaussian degradation's σ (voxels) for ``factors``: 0 on every axis with factor 1.

    A pair whose input is blurred along an axis the output grid does not refine teaches the
    net to deconvolve along it (scale 1,2,2 with the PSF's z: output sharper along z than the
    acquisition, with negative ringing; back-projection then deconvolves it further).
    """
    sig = _sigma_for(tuple(sigma), len(factors))
    return tuple(0.0 if int(f) == 1 else float(s) for s, f in zip(sig, factors))


def add_noise(x: np.ndarray, *, gain: float, read_sigma: float,
              rng: np.random.Generator | int | None) -> np.ndarray:
    """Poisson-Gaussian noise on normalised intensities.

    ``y = Poisson(max(x, 0) * gain) / gain + N(0, read_sigma²)``.

    Parameters
    ----------
    x
        Normalised intensities (about 0..1).
    gain
        Photons per unit intensity (> 0); larger means less shot noise.
    read_sigma
        Read-noise standard deviation in normalised units (>= 0).
    rng
        numpy Generator or seed (None: fresh, not reproducible).

    Returns
    -------
    numpy.ndarray
        float32 noisy copy.
    """
    if not gain > 0 or not read_sigma >= 0:
        raise ValueError(f"add_noise: need gain > 0 and read_sigma >= 0; received "
                         f"gain={gain!r}, read_sigma={read_sigma!r}")
    rng = np.random.default_rng(rng)
    lam = np.clip(np.asarray(x, dtype=np.float64), 0.0, None) * gain
    y = rng.poisson(lam) / gain
    if read_sigma > 0:
        y = y + rng.normal(0.0, read_sigma, size=y.shape)
    return y.astype(np.float32)


def degrade(x: np.ndarray, factors: Sequence[int], degradation: Degradation, *,
            rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Make the low-resolution input of a high-resolution array (numpy).

    Parameters
    ----------
    x
        High-resolution array; the last ``len(factors)`` axes are degraded.
    factors
        Integer factors per axis ``(z, y, x)`` or ``(y, x)``; lengths must divide.
    degradation
        The :class:`Degradation` to apply.
    rng
        Generator or seed for the noise (unused without noise).

    Returns
    -------
    numpy.ndarray
        float32, axis lengths ``n // f``.
    """
    fs = _check_factors(factors, integer=True, name="degrade")
    x = np.asarray(x, dtype=np.float32)
    _check_divisible(x.shape, fs, "degrade")
    if degradation.method == "cubic":
        y = downscale_cubic(x, fs)
    elif degradation.method == "block":
        y = _block_mean(x, fs)
    elif degradation.method == "gaussian":
        y = _block_mean(blur(x, sigma_px=sigma_on_resampled_axes(degradation.sigma_px, fs)), fs)
    else:
        p = _psf_for(x.shape, degradation.psf, len(fs), fs)
        y = _block_mean(blur(x, psf=p), fs)
    if degradation.noise == "poisson_gaussian":
        y = add_noise(y, gain=degradation.gain, read_sigma=degradation.read_sigma, rng=rng)
    elif degradation.noise == "affine_gaussian":
        from .noise import NoiseLevel

        std = np.sqrt(NoiseLevel(*degradation.noise_variance).variance(y))
        y = y + std * np.random.default_rng(rng).standard_normal(np.shape(y))
    return np.asarray(y, dtype=np.float32)



class TorchDegrader:
    """Batched torch twin of :func:`degrade` (CPU or GPU).

    Parameters
    ----------
    factors
        Integer factors ``(z, y, x)``; for 2-D batches ``(B, 1, Y, X)`` give
        ``(y, x)`` or ``(1, y, x)``.
    degradation
        The :class:`Degradation` to apply.
    device
        Device of the PSF kernel (default: moved to each batch's device).

    Notes
    -----
    Cubic and Gaussian paths are per-axis matrix products (the Gaussian matrix is
    the mirror-border blur followed by the block mean, built once per axis length),
    which handles any patch size exactly and equals the numpy path to float32
    rounding. The PSF path mirror-pads and runs ``conv3d``.
    """

    def __init__(self, factors: Sequence[int], degradation: Degradation, *,
                 device: Any = None) -> None:
        self.factors = _check_factors(factors, integer=True, name="TorchDegrader")
        self.degradation = degradation
        self._psf_cache: dict = {}
        self._device = device

    def _factors_for(self, x: Any) -> tuple:
        k = x.ndim - 2
        if x.ndim not in (4, 5) or x.shape[1] != 1:
            raise ValueError(f"TorchDegrader: expected (B, 1, Z, Y, X) or (B, 1, Y, X); "
                             f"received shape {tuple(x.shape)}")
        fs = self.factors
        if len(fs) == 3 and k == 2:
            if fs[0] != 1:
                raise ValueError(f"TorchDegrader: factors {fs} have z factor != 1 but "
                                 f"the batch is 2-D {tuple(x.shape)}")
            fs = fs[1:]
        if len(fs) != k:
            raise ValueError(f"TorchDegrader: factors {self.factors} do not match batch "
                             f"shape {tuple(x.shape)}")
        return fs

    def _psf_tensor(self, shape: tuple, factors: tuple, device: Any) -> Any:
        import torch

        p = _psf_for(shape, self.degradation.psf, 3, factors)
        key = (p.shape, str(device), p.tobytes())
        if key not in self._psf_cache:
            flipped = np.ascontiguousarray(p[::-1, ::-1, ::-1])
            self._psf_cache[key] = torch.as_tensor(
                flipped, dtype=torch.float32, device=device)[None, None]
        return self._psf_cache[key]

    def __call__(self, x: Any, *, generator: Any = None) -> Any:
        """Degrade a batch.

        Parameters
        ----------
        x
            float tensor ``(B, 1, Z, Y, X)`` or ``(B, 1, Y, X)``.
        generator
            ``torch.Generator`` for the noise (on the batch's device).

        Returns
        -------
        torch.Tensor
            float32 ``(B, 1, Z//fz, Y//fy, X//fx)`` (or 2-D).
        """
        import torch
        import torch.nn.functional as F

        fs = self._factors_for(x)
        x = x.to(torch.float32)
        _check_divisible(tuple(x.shape), fs, "TorchDegrader")
        d = self.degradation
        k = len(fs)
        if d.method == "cubic":
            y = downscale_cubic(x, fs)
        elif d.method == "block":
            y = _block_mean(x, fs)
        elif d.method == "gaussian":
            sig = sigma_on_resampled_axes(d.sigma_px, fs)
            y = x
            for i, (f, s) in enumerate(zip(fs, sig)):
                axis = i - k
                n = int(y.shape[axis])
                if f == 1:
                    continue
                y = _apply_along(y, axis, ("gauss", n, float(s), int(f)))
        else:
            x5 = x if k == 3 else x[:, :, None]
            kern = self._psf_tensor(tuple(x5.shape), fs if k == 3 else (1,) + fs, self._device or x.device)
            kern = kern.to(x.device)
            half = [s // 2 for s in kern.shape[2:]]
            y = F.conv3d(mirror_pad(x5, half, edge=False), kern)
            y = _block_mean(y, fs if k == 3 else (1,) + fs)
            if k == 2:
                y = y[:, :, 0]
        if d.noise == "poisson_gaussian":
            lam = y.clamp(min=0) * d.gain
            y = torch.poisson(lam, generator=generator) / d.gain
            if d.read_sigma > 0:
                y = y + d.read_sigma * torch.randn(
                    y.shape, generator=generator, device=y.device, dtype=y.dtype)
        elif d.noise == "affine_gaussian":
            slope, floor = d.noise_variance
            std = (slope * y + floor).clamp(min=0).sqrt()
            y = y + std * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y
