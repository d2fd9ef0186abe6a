"""Robust percentile normalisation, stored so that it can be undone on output."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class NormParams:
    """Affine normalisation ``(x - low) / (high - low)``.

    ``low`` and ``high`` are the intensities (raw units) at the chosen percentiles.
    """

    low: float
    high: float
    low_percentile: float
    high_percentile: float

    @property
    def span(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NormParams":
        return cls(**{k: float(data[k]) for k in ("low", "high", "low_percentile", "high_percentile")})


def _subsample(data, max_voxels: int) -> np.ndarray:
    """A strided subsample of at most about ``max_voxels`` voxels (works on lazy arrays)."""
    size = int(np.prod(data.shape))
    if size <= max_voxels:
        out = data[...]
    else:
        stride = int(np.ceil((size / max_voxels) ** (1.0 / data.ndim)))
        out = data[tuple(slice(None, None, stride) for _ in data.shape)]
    if hasattr(out, "compute"):
        out = out.compute()
    return np.asarray(out)


def fit_percentiles(
    data, *, low_percentile: float = 1.0, high_percentile: float = 99.8, max_sample_voxels: int = 4_000_000
) -> NormParams:
    """Fit normalisation parameters from robust percentiles.

    Parameters
    ----------
    data
        Array-like volume (numpy, dask or zarr); sampled with a stride when larger
        than ``max_sample_voxels``.
    low_percentile, high_percentile
        Percentiles mapped to 0 and 1.

    Returns
    -------
    NormParams
        When the percentiles coincide (flat images), the full range is used; a truly
        constant volume yields ``high = low + 1`` so that the map stays invertible.
    """
    sample = _subsample(data, max_sample_voxels).astype(np.float64, copy=False)
    lo, hi = np.percentile(sample, [low_percentile, high_percentile])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return NormParams(float(lo), float(hi), float(low_percentile), float(high_percentile))


def apply(data, params: NormParams):
    """Normalise: ``(x - low) / (high - low)`` as float32 (numpy or dask)."""
    return ((data.astype(np.float32) - np.float32(params.low)) / np.float32(params.span)).astype(np.float32)


def undo(data, params: NormParams):
    """Undo :func:`apply`: back to raw intensity units (float32)."""
    return (data.astype(np.float32) * np.float32(params.span) + np.float32(params.low)).astype(np.float32)


def _float_max(data) -> float:
    """Largest value the array's own dtype holds (an integer array's, or float64's when unknown)."""
    dt = np.dtype(getattr(data, "dtype", np.float64))
    return float(np.finfo(dt).max if dt.kind == "f" else np.iinfo(dt).max if dt.kind in "iu" else np.inf)


def cast_to_dtype(data: np.ndarray, dtype) -> np.ndarray:
    """Cast restored intensities into ``dtype``, clipped to its range.

    Integers: rounded, then clipped to ``iinfo``. Floats: clipped to ``finfo`` (a
    float16 input's output otherwise turns values beyond ±65504, e.g. a ringing overshoot
    of a bright spot, into ±Inf); NaN stays NaN.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    if np.issubdtype(dtype, np.floating) and float(np.finfo(dtype).max) < _float_max(data):
        info = np.finfo(dtype)
        return np.clip(data, info.min, info.max).astype(dtype)
    return data.astype(dtype)
