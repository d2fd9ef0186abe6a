"""Robust percentile normalisation, stored so that it can be undone on output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


MAX_NORMALISED = 1e12
"""Largest normalised magnitude a volume may reach (its values ``x``: ``|x - low| / (high - low)``):
sums of squares over millions of voxels stay far inside float32 (1e24 × 1e7 < 3.4e38); a
16-bit volume reaches at most 65535, a 32-bit integer one 4.3e9."""


@dataclass(frozen=True)
class NormParams:
    """Affine normalisation ``(x - low) / (high - low)``.

    ``low`` and ``high`` are the intensities (raw units) at the chosen percentiles; ``basis``
    says where they came from: ``"percentiles"``, ``"range"`` (the percentiles coincided, so the
    sample's minimum and maximum) or ``"constant"`` (a constant volume: ``high = low + 1``).
    """

    low: float
    high: float
    low_percentile: float
    high_percentile: float
    basis: str = "percentiles"

    @property
    def span(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NormParams":
        # stores written before ``basis`` was recorded: unknown, not assumed
        return cls(**{k: float(data[k]) for k in ("low", "high", "low_percentile", "high_percentile")},
                   basis=str(data.get("basis") or "unrecorded"))


#: The attributes of a normalised store that name the part of its file it holds
ACQUISITION_PARTS = ("series", "channel", "timepoint")


def acquisition_of(attrs: dict) -> dict | None:
    """The acquisition a normalised store was made from, as its attributes record it: its
    file's checksum and the image, channel and time point chosen of it (``None`` where the
    store records no checksum). Stored beside what the later stages derive from it (the
    training FOV, the model), so that one made from another acquisition is refused."""
    if not attrs.get("source_checksum"):
        return None
    return {"source_checksum": str(attrs["source_checksum"]), **{k: attrs.get(k) for k in ACQUISITION_PARTS}}


def same_series(trainer: Mapping | None, acquisition: Mapping | None) -> bool:
    """Whether ``acquisition`` is another time point of the image and channel whose time point
    ``trainer`` trained the model (both as :func:`acquisition_of` records
    them): the same file, series and channel."""
    return bool(trainer and acquisition and trainer.get("source_checksum")
                and trainer.get("source_checksum") == acquisition.get("source_checksum")
                and all(trainer.get(k) == acquisition.get(k) for k in ("series", "channel"))
                and trainer.get("timepoint") != acquisition.get("timepoint"))


def acquisition_text(acquisition: dict) -> str:
    """An acquisition of :func:`acquisition_of` in a message: its checksum's start and its part."""
    parts = [f"{k} {acquisition[k]}" for k in ACQUISITION_PARTS if acquisition.get(k) is not None]
    return f"file checksum {str(acquisition.get('source_checksum'))[:12]}…" + "".join(f", {p}" for p in parts)


def sample_strides(shape: Sequence[int], max_voxels: int) -> tuple[int, ...]:
    """Per-axis strides that leave at most ``max_voxels`` voxels of an array of ``shape``,
    taken from the axes with the most samples left first: a stack of a few large planes keeps
    every plane (one stride on every axis skipped whole planes: a (2, 2048, 2048) stack
    sampled plane 0 only)."""
    strides = [1] * len(shape)

    def left(i):
        return -(-int(shape[i]) // strides[i])

    while int(np.prod([left(i) for i in range(len(shape))])) > max_voxels:
        i = max(range(len(shape)), key=left)
        if left(i) <= 1:
            break
        strides[i] += 1
    return tuple(strides)


def _subsample(data, max_voxels: int) -> np.ndarray:
    """A strided subsample of at most about ``max_voxels`` voxels (works on lazy arrays;
    strides from :func:`sample_strides`)."""
    strides = sample_strides(data.shape, max_voxels)
    out = data[tuple(slice(None, None, s) for s in strides)]
    if hasattr(out, "compute"):
        out = out.compute()
    return np.asarray(out)


def fit_percentiles(
    data, *, low_percentile: float = 1.0, high_percentile: float = 99.8, max_sample_voxels: int = 4_000_000,
    exclude: np.ndarray | None = None,
) -> NormParams:
    """Fit normalisation parameters from robust percentiles.

    Parameters
    ----------
    data
        Array-like volume (numpy, dask or zarr); sampled with a stride when larger
        than ``max_sample_voxels``.
    low_percentile, high_percentile
        Percentiles mapped to 0 and 1.
    exclude
        Lateral positions ``(Y, X)`` left out of the percentiles in every plane (hot and dead
        camera pixels, :func:`selfres.noise.sensor_defect_positions`: 12 hot columns, 0.3 % of a
        stack's voxels, took its 99.8th percentile to their values and squeezed the sample into
        a fraction of the range; its restoration fell back to tricubic, +0.93 dB lost).

    Returns
    -------
    NormParams
        When the percentiles coincide (flat images), the full range is used; a truly
        constant volume yields ``high = low + 1`` so that the map stays invertible.

    Raises
    ------
    ValueError
        When the sampled voxels hold NaN or infinite values (one NaN made both parameters
        NaN, and every normalised voxel with them).
    """
    sample = _subsample(data, max_sample_voxels).astype(np.float64, copy=False)
    if exclude is not None and exclude.any() and sample.ndim == 3:
        strides = sample_strides(data.shape, max_sample_voxels)
        keep = ~np.asarray(exclude, dtype=bool)[::strides[1], ::strides[2]]
        if keep.any():
            sample = sample[:, keep]
    if not np.isfinite(sample).all():
        bad = int(np.count_nonzero(~np.isfinite(sample)))
        raise ValueError(f"{bad} of the {sample.size} voxels sampled for the percentiles are NaN or infinite; "
                         "replace them (e.g. by 0) first")
    lo, hi = np.percentile(sample, [low_percentile, high_percentile])
    basis = "percentiles"
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
        basis = "range"
    if hi <= lo:
        hi = lo + 1.0
        basis = "constant"
    return NormParams(float(lo), float(hi), float(low_percentile), float(high_percentile), basis)


def _working_float(dtype) -> type:
    """float64 for 32/64-bit integers and float64 (float32 would take the low digits of a
    large value), float32 for the rest."""
    dt = np.dtype(dtype)
    return np.float64 if dt.itemsize >= 4 and dt != np.float32 else np.float32


def apply(data, params: NormParams):
    """Normalise: ``(x - low) / (high - low)`` as float32 (numpy or dask); 32/64-bit integers
    and float64 subtract ``low`` in float64 (a large offset would take their low digits)."""
    work = _working_float(data.dtype)
    return ((data.astype(work) - work(params.low)) / work(params.span)).astype(np.float32)


def undo(data, params: NormParams, dtype=np.float32):
    """Undo :func:`apply`: back to raw intensity units, as float32 — as float64 when they are
    going to ``dtype`` 32/64-bit integers or float64, whose low digits float32 would lose."""
    work = _working_float(dtype)
    return data.astype(work) * work(params.span) + work(params.low)


def to_dtype(data, params: NormParams, dtype) -> np.ndarray:
    """Normalised ``data`` back in raw units, cast into ``dtype`` (:func:`cast_to_dtype`).

    Raises
    ------
    SelfresError
        ``dtype`` is an integer type and ``data`` holds NaN or infinite voxels (a network that
        overflowed, say): cast, they would become 0 or the type's limit, and nothing downstream
        could tell them from data. A float output keeps them, and QC flags ``restored_not_finite``.
    """
    if np.issubdtype(np.dtype(dtype), np.integer):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            from .errors import SelfresError

            raise SelfresError(
                f"the restoration holds {bad} non-finite voxels (NaN or infinite) in a tile of {np.shape(data)}, "
                f"which the output type {np.dtype(dtype).name} (infer.output_dtype: input) cannot hold: the output is "
                "not written. Set infer.output_dtype: float32 to keep and inspect them (QC then flags "
                "restored_not_finite), or infer.amp: false if they come from mixed precision on a GPU")
    return cast_to_dtype(undo(data, params, dtype), dtype)


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
        if dtype.itemsize < 4:
            return np.clip(np.rint(data), info.min, info.max).astype(dtype)
        # 32/64-bit: bounds in float64, below the limit (float32's int32 max is 2**31, which wraps)
        high = float(info.max)
        if high > info.max:
            high = float(np.nextafter(high, -np.inf))
        return np.clip(np.rint(np.asarray(data, dtype=np.float64)), float(info.min), high).astype(dtype)
    if np.issubdtype(dtype, np.floating) and float(np.finfo(dtype).max) < _float_max(data):
        info = np.finfo(dtype)
        return np.clip(data, info.min, info.max).astype(dtype)
    return data.astype(dtype)
