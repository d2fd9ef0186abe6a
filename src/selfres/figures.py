"""The report's figures, drawn with matplotlib's Agg canvas as PNG bytes: orthogonal views,
projections, a detail crop with line profiles, training curves, spectra and beads.

Volumes are ZYX arrays (anything indexable like a numpy array; a zarr array works too, and
:class:`VolumeView` computes raw units or an interpolation where read). Only centre planes, a
slab-wise maximum projection and one small crop are read, so a large volume is never copied as
a whole. matplotlib is imported at the first figure; no torch.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .settings import MIN_GAIN_DB
from .wording import fmt, num

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "VolumeView", "display_range", "figure_orthoviews", "figure_projections", "figure_detail",
    "figure_training_curves", "figure_spectra", "figure_beads", "sample_figures", "fov_bbox", "holdout_bbox",
    "write_report_figures", "REPORT_FIGURES", "KEEP_MIN_GAIN_DB",
]


#: Figures written as files for Snakemake's report (always present; placeholders when a
#: sample has no such figure).
REPORT_FIGURES = ("orthoviews", "projections", "detail", "training_curves")

_DPI = 80
_MAX_PLANE = 512  # largest side of a plane passed to imshow


@functools.cache
def _matplotlib():
    """matplotlib with the submodules the figures use, imported at the first figure, so that
    the batch summary, which draws none, starts without it. No pyplot and no backend switch:
    the figures are :class:`matplotlib.figure.Figure` objects rendered to PNG on their own
    canvas, so a notebook's backend (inline plots) is left as it was."""
    import matplotlib
    import matplotlib.figure
    import matplotlib.patches
    import matplotlib.ticker  # noqa: F401

    return matplotlib


@functools.cache
def _gray():
    """The grey colour map with NaN and infinite voxels in red: on the default map they were
    transparent, i.e. the figure's white, as bright as the brightest signal (a failed tile
    looked saturated)."""
    return _matplotlib().colormaps["gray"].with_extremes(bad="red")


def _new_figure(**kwargs):
    """A figure of its own (not registered with pyplot: nothing to close, no backend touched)."""
    return _matplotlib().figure.Figure(**kwargs)


def _fig_to_png(fig: Figure) -> bytes:
    """Render a figure to compact PNG bytes (palette PNG when Pillow is present)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = buf.getvalue()
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=256).save(out, format="PNG", optimize=True)
    small = out.getvalue()
    return small if len(small) < len(data) else data


def as_zyx(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"expected a ZYX (or YX) volume, got shape {shape}")
    return shape  # type: ignore[return-value]


def _vol3(vol: Any) -> Any:
    """Give a 2-D array a leading Z axis of 1; leave 3-D arrays untouched."""
    if getattr(vol, "ndim", None) == 2:
        return np.asarray(vol)[None]
    return vol


class VolumeView:
    """Read-only ZYX view of a volume, resampled and rescaled only where read.

    ``view[key]`` reads from ``source`` just the input region that the requested
    output region depends on, applies the per-axis resampling matrices (separable,
    so ``out = Mz · My · Mx · source``) and the affine intensity map
    ``value * scale + offset``. A report can thus show the tricubic interpolation of a
    large sample on the output grid, or a normalised store in raw units, without
    computing or holding the whole volume.

    Parameters
    ----------
    source
        ZYX array-like supporting basic slicing (numpy, zarr, dask).
    matrices
        One ``(n_out, n_in)`` matrix per axis, or ``None`` for an axis kept as is.
    scale, offset
        Intensity map applied after resampling (exact for matrices whose rows sum
        to 1 as well as before).

    Notes
    -----
    Keys are tuples of up to three ints and slices (any step); no fancy indexing.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(
        self,
        source: Any,
        *,
        matrices: Sequence[np.ndarray | None] = (None, None, None),
        scale: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        src_shape = as_zyx(source.shape)
        if len(matrices) != 3:
            raise ValueError(f"matrices needs one entry per axis (z, y, x); got {len(matrices)}")
        mats = []
        for axis, m in enumerate(matrices):
            if m is not None:
                m = np.asarray(m, dtype=np.float64)
                if m.ndim != 2 or m.shape[1] != src_shape[axis]:
                    raise ValueError(
                        f"matrix of axis {'zyx'[axis]} has shape {m.shape}; expected "
                        f"(n_out, {src_shape[axis]}) for a source of shape {src_shape}")
            mats.append(m)
        self.source = _vol3(source)
        self.matrices = tuple(mats)
        self.scale = float(scale)
        self.offset = float(offset)
        self.shape = tuple(src_shape[a] if m is None else int(m.shape[0])
                           for a, m in enumerate(self.matrices))

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3 or any(k is Ellipsis or not isinstance(k, (slice, int, np.integer))
                               for k in key):
            raise IndexError(f"VolumeView takes up to three ints or slices; got {key!r}")
        key = tuple(key) + (slice(None),) * (3 - len(key))
        src_key, post, squeeze = [], [], []
        for axis, (k, m) in enumerate(zip(key, self.matrices)):
            n = self.shape[axis]
            if isinstance(k, slice):
                idx = np.arange(n)[k]
            else:
                i = int(k)
                if not -n <= i < n:
                    raise IndexError(f"index {i} out of range for axis {'zyx'[axis]} of size {n}")
                idx = np.array([i % n])
                squeeze.append(axis)
            if m is None:
                src_key.append(k if isinstance(k, slice) else slice(idx[0], idx[0] + 1))
                post.append(None)
                continue
            rows = m[idx]
            used = np.flatnonzero(np.any(rows != 0, axis=0))
            c0, c1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            src_key.append(slice(c0, c1))
            post.append(rows[:, c0:c1])
        data = np.asarray(self.source[tuple(src_key)], dtype=np.float32)
        for axis, m in enumerate(post):
            if m is not None:
                data = np.moveaxis(np.tensordot(m, data, axes=([1], [axis])), 0, axis)
        data = np.asarray(data, dtype=np.float32)
        if self.scale != 1.0 or self.offset != 0.0:
            data = data * np.float32(self.scale) + np.float32(self.offset)
        return data.reshape([s for a, s in enumerate(data.shape) if a not in squeeze])


class _Memo:
    """Wrap a volume so that its projections are computed once per report."""

    def __init__(self, vol: Any) -> None:
        self.vol = vol
        self.shape = tuple(vol.shape)
        self.ndim = vol.ndim
        self.mips: dict[str, np.ndarray] | None = None

    def __getitem__(self, key: Any) -> Any:
        return self.vol[key]


def _voxel_sizes(
    shape_in: tuple[int, int, int],
    shape_out: tuple[int, int, int],
    voxel_size_in: Sequence[float] | None,
    voxel_size_out: Sequence[float] | None,
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Fill in missing voxel sizes; return (vin, vout, unit)."""
    def ok(v: Any) -> bool:
        return v is not None and len(v) == 3 and all(num(x) and float(x) > 0 for x in v)

    ratio = [si / so for si, so in zip(shape_in, shape_out)]
    if ok(voxel_size_in) and ok(voxel_size_out):
        return tuple(map(float, voxel_size_in)), tuple(map(float, voxel_size_out)), "µm"
    if ok(voxel_size_in):
        vin = tuple(map(float, voxel_size_in))
        return vin, tuple(v * r for v, r in zip(vin, ratio)), "µm"
    if ok(voxel_size_out):
        vout = tuple(map(float, voxel_size_out))
        return tuple(v / r for v, r in zip(vout, ratio)), vout, "µm"
    return tuple(1.0 / r for r in ratio), (1.0, 1.0, 1.0), "output voxels"


def _block_max(plane: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Max-pool a 2-D plane by integer factors (edges padded by repetition)."""
    if fy == 1 and fx == 1:
        return plane
    ny, nx = plane.shape
    py, px = (-ny) % fy, (-nx) % fx
    if py or px:
        plane = np.pad(plane, ((0, py), (0, px)), mode="edge")
    h, w = plane.shape
    return plane.reshape(h // fy, fy, w // fx, fx).max(axis=(1, 3))


def _factor(n: int, limit: int = _MAX_PLANE) -> int:
    return max(1, math.ceil(n / limit))


def _stride_plane(plane: np.ndarray) -> np.ndarray:
    """Subsample a plane for display so no side exceeds ``_MAX_PLANE``."""
    fy, fx = _factor(plane.shape[0]), _factor(plane.shape[1])
    return np.asarray(plane[::fy, ::fx], dtype=np.float32)


def _centre_planes(vol: Any) -> dict[str, np.ndarray]:
    """XY, XZ and YZ planes through the volume centre (z, y, x display layout)."""
    nz, ny, nx = as_zyx(vol.shape)
    return {
        "XY": _stride_plane(np.asarray(vol[nz // 2, :, :])),
        "XZ": _stride_plane(np.asarray(vol[:, ny // 2, :])),
        "YZ": _stride_plane(np.asarray(vol[:, :, nx // 2])),
    }


def _projections(vol: Any, *, slab_bytes: int = 64 * 2**20) -> dict[str, np.ndarray]:
    """Maximum-intensity projections along z, y and x, computed slab by slab.

    In-plane sizes are max-pooled so that no projection side exceeds ``_MAX_PLANE``;
    at most one z-slab of the volume is held in memory at a time.
    """
    if isinstance(vol, _Memo):
        if vol.mips is None:
            vol.mips = _projections(vol.vol, slab_bytes=slab_bytes)
        return vol.mips
    nz, ny, nx = as_zyx(vol.shape)
    fy, fx, fz = _factor(ny), _factor(nx), _factor(nz)
    per_z = max(1, ny * nx * 4)
    step = max(1, slab_bytes // per_z)
    mip_xy = None
    rows_xz, rows_yz = [], []
    for z0 in range(0, nz, step):
        slab = np.asarray(vol[z0:min(nz, z0 + step)], dtype=np.float32)
        m = slab.max(axis=0)
        mip_xy = m if mip_xy is None else np.maximum(mip_xy, m)
        rows_xz.append(slab.max(axis=1))  # (dz, nx)
        rows_yz.append(slab.max(axis=2))  # (dz, ny)
    xz = np.concatenate(rows_xz, axis=0)
    yz = np.concatenate(rows_yz, axis=0)
    return {
        "XY": _block_max(mip_xy, fy, fx),
        "XZ": _block_max(xz, fz, fx),
        "YZ": _block_max(yz, fz, fy),
    }


def _sample_values(vol: Any, *, target: int = 2_000_000) -> np.ndarray:
    """A strided subsample of a volume (for percentiles)."""
    nz, ny, nx = as_zyx(vol.shape)
    n = nz * ny * nx
    s = max(1, round((n / target) ** (1 / 3)))
    sub = np.asarray(vol[::s, ::s, ::s], dtype=np.float32)
    return sub[np.isfinite(sub)]


def display_range(
    data: Any, *, low: float = 0.2, high: float = 99.8
) -> tuple[float, float]:
    """Percentile-based display range of an array (strided sample of large volumes).

    Parameters
    ----------
    data
        2-D or 3-D array.
    low, high
        Percentiles (0–100) mapped to black and white.

    Returns
    -------
    tuple of float
        ``(vmin, vmax)`` with ``vmax > vmin`` (a constant input gets a unit range).
    """
    arr = _vol3(data)
    vals = _sample_values(arr) if getattr(arr, "ndim", 0) == 3 else np.asarray(arr).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [low, high]))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _extent(axis_h: int, axis_v: int, shape: tuple[int, ...], vs: Sequence[float],
            offset: Sequence[float] = (0.0, 0.0, 0.0)):
    """imshow extent in physical units for a plane with axes (vertical, horizontal); ``offset``
    (z, y, x) shifts the frame (see :func:`frame_offset`)."""
    w = shape[axis_h] * vs[axis_h]
    h = shape[axis_v] * vs[axis_v]
    return (offset[axis_h], offset[axis_h] + w, offset[axis_v] + h, offset[axis_v])


def frame_offset(vin: Sequence[float], vout: Sequence[float], unit: str,
                 origin_voxels: Sequence[float] | None = None) -> tuple[float, float, float]:
    """Where the views' frame puts the outer corner of the acquisition's first voxel, per axis (z, y, x).

    The figures lay voxel ``i`` of a grid of step ``v`` from ``i·v`` to ``(i+1)·v`` and add this offset,
    so that the axes read the coordinates a viewer shows for the stores: in µm, the acquisition's voxel
    centres at ``(origin + i)·vin`` (OME-Zarr: translation + i·scale, as napari and BigDataViewer place
    them; the calibrated z of Fiji's slice ``i + 1``), and the output's on the half-pixel-centre
    convention at the restored store's translation. Without voxel sizes (axes in output voxels) the
    output's voxel centres read their indices. ``origin_voxels``: the acquisition's first voxel centre in
    its voxel steps (:attr:`selfres.io.Volume.origin_voxels`; ``None``: 0).
    """
    o = tuple(float(v) for v in origin_voxels) if origin_voxels is not None else (0.0, 0.0, 0.0)
    if unit == "µm":
        return tuple((oi - 0.5) * vi for oi, vi in zip(o, vin))
    return tuple(oi * vi - 0.5 * vo for oi, vi, vo in zip(o, vin, vout))


#: Axial (XZ, YZ) panels at most this share as tall as wide are drawn stacked beside the XY one
#: (:func:`_panel_grid`), not in columns of their own: 1.5× as wide at a quarter (a z extent a
#: quarter of the lateral), 1.3× at 0.4, no gain at a half (two stacked panels fill the row)
STACK_AXIAL_BELOW = 0.4
#: ... and only where the XY panel is at least this share as tall as wide: beside a wide, short XY
#: panel the row is too low for two labelled axial panels (a review's 102 × 26 µm region)
STACK_XY_AT_LEAST = 0.5

# plane name -> (vertical axis, horizontal axis) in ZYX numbering
_PLANE_AXES = {"XY": (1, 2), "XZ": (0, 2), "YZ": (0, 1)}


def _panel_grid(
    volumes: Sequence[tuple[str, Any, tuple[float, ...]]],
    planes_of: Any,
    *,
    title: str,
    unit: str,
    vmin: float,
    vmax: float,
    boxes: Sequence[tuple[Sequence[tuple[int, int]], str]] = (),
    offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> bytes:
    """Draw rows = volumes, columns = XY/XZ/YZ at physical aspect (``offset``: :func:`frame_offset`).

    Volumes with a single z plane get one XY panel per volume, side by side.

    ``boxes`` are ``(ZYX bbox in voxels of the first row's volume, colour)`` pairs,
    outlined on the first row.
    """
    shapes = [as_zyx(v.shape) for _, v, _ in volumes]
    is_2d = all(s[0] == 1 for s in shapes)
    stacked = False
    cols = ["XY"] if is_2d else ["XY", "XZ", "YZ"]
    # physical size of each plane from the output-grid volume (last row)
    shp, vs = shapes[-1], volumes[-1][2]
    phys = [shp[i] * vs[i] for i in range(3)]  # z, y, x lengths
    widths = [phys[_PLANE_AXES[c][1]] for c in cols]
    heights = [phys[_PLANE_AXES[c][0]] for c in cols]
    ratio_w = np.array(widths) / max(widths)
    n_vol = len(volumes)
    if is_2d:
        # one XY panel per volume, side by side
        aspect = heights[0] / widths[0]
        panel_w = 3.4
        fig = _new_figure(figsize=(panel_w * n_vol + 0.8,
                                  max(1.5, min(6.0, panel_w * aspect)) + 1.0))
        gs = fig.add_gridspec(1, n_vol, left=0.06, right=0.89, top=0.86, bottom=0.12,
                              wspace=0.25)
        slots = [[gs[0, r]] for r in range(n_vol)]
    elif stacked := (all(heights[i] <= STACK_AXIAL_BELOW * widths[i] for i in (1, 2))
                     and heights[0] >= STACK_XY_AT_LEAST * widths[0]):
        # axial panels much less tall than wide (a stack thinner in z than across, as most are):
        # side by side with XY they were strips in square cells, a quarter of their room used (a
        # walkthrough's 32 × 128 µm slice drawn 210 × 55 px); stacked beside it they share its height
        # and are drawn 1.5× as large
        total_w = 10.5
        ratio_w = np.array([widths[0], max(widths[1], widths[2])]) / max(widths)
        col_w = total_w * ratio_w / ratio_w.sum()
        row_h = max(1.6, min(4.5, heights[0] / widths[0] * col_w[0]))
        fig = _new_figure(figsize=(total_w + 0.8, row_h * n_vol + 0.9))
        gs = fig.add_gridspec(n_vol, 2, width_ratios=list(ratio_w),
                              left=0.07, right=0.89, top=0.92, bottom=0.05,
                              wspace=0.22, hspace=0.3)
        slots = []
        widest = max(widths[1], widths[2])
        for r in range(n_vol):
            side = gs[r, 1].subgridspec(2, 1, height_ratios=[heights[1], heights[2]], hspace=0.55)
            row = [gs[r, 0]]
            for k, w in ((0, widths[1]), (1, widths[2])):  # the narrower one keeps the wider's µm per inch
                row.append(side[k] if w >= widest else side[k].subgridspec(
                    1, 2, width_ratios=[w, widest - w], wspace=0.0)[0])
            slots.append(row)
    else:
        total_w = 10.5
        col_w = total_w * ratio_w / ratio_w.sum()
        row_h = max(1.2, min(4.0, max(h / w * cw for h, w, cw in zip(heights, widths, col_w))))
        fig = _new_figure(figsize=(total_w + 0.8, row_h * n_vol + 0.9))
        gs = fig.add_gridspec(n_vol, len(cols), width_ratios=list(ratio_w),
                              left=0.07, right=0.89, top=0.90, bottom=0.06,
                              wspace=0.25, hspace=0.35)
        slots = [[gs[r, c] for c in range(len(cols))] for r in range(n_vol)]
    im = None
    for r, (name, vol, vsz) in enumerate(volumes):
        planes = planes_of(vol)
        shape = as_zyx(vol.shape)
        for c, pname in enumerate(cols):
            ax = fig.add_subplot(slots[r][c])
            av, ah = _PLANE_AXES[pname]
            im = ax.imshow(planes[pname], cmap=_gray(), vmin=vmin, vmax=vmax,
                           extent=_extent(ah, av, shape, vsz, offset), aspect="equal",
                           interpolation="nearest")
            ax.tick_params(labelsize=7)
            # boxes on the XY panel only (a projection along a slab's own axis covers the whole
            # panel), drawn inside their voxels by a fraction of one and in two styles, so that a
            # box on the image frame or on the other's edge stays visible
            for i, (box, color) in enumerate(boxes if r == 0 and pname == "XY" else ()):
                (b0, b1), (a0, a1) = box[ah], box[av]
                inset = 0.15 + 0.2 * i
                ax.add_patch(_matplotlib().patches.Rectangle(
                    ((b0 + inset) * vsz[ah] + offset[ah], (a0 + inset) * vsz[av] + offset[av]),
                    max(b1 - b0 - 2 * inset, 0.1) * vsz[ah], max(a1 - a0 - 2 * inset, 0.1) * vsz[av],
                    fill=False, edgecolor=color, lw=1.8 if i == 0 else 1.4, ls="-" if i == 0 else "--", zorder=3))
            if is_2d:
                ax.set_title(f"{name} ({pname})", fontsize=9)
                ax.set_ylabel(f"y ({unit})", fontsize=7)
                ax.set_xlabel(f"x ({unit})", fontsize=7)
                continue
            if r == 0 or (stacked and c > 0):  # stacked, each axial panel names its plane
                ax.set_title(pname, fontsize=9 if r == 0 else 8)
            if c == 0:
                ax.set_ylabel(f"{name}\n{'zyx'[av]} ({unit})", fontsize=8)
            else:
                ax.set_ylabel(f"{'zyx'[av]} ({unit})", fontsize=7)
            if r == n_vol - 1 or (stacked and c > 0):
                ax.set_xlabel(f"{'zyx'[ah]} ({unit})", fontsize=7)
    if im is not None:
        cax = fig.add_axes([0.905, 0.2, 0.012, 0.6])  # room to its right for 5-digit ticks and the label
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("intensity (the acquisition's units)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _fig_to_png(fig)


def prepare_views(raw, interp, restored, voxel_size_in, voxel_size_out):
    raw, interp, restored = _vol3(raw), _vol3(interp), _vol3(restored)
    s_in, s_out = as_zyx(raw.shape), as_zyx(restored.shape)
    if as_zyx(interp.shape) != s_out:
        raise ValueError(
            f"interp and restored must share the output grid; got {tuple(interp.shape)} "
            f"and {tuple(restored.shape)}"
        )
    vin, vout, unit = _voxel_sizes(s_in, s_out, voxel_size_in, voxel_size_out)
    return raw, interp, restored, vin, vout, unit


# ----------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------


def figure_orthoviews(
    *,
    raw: Any,
    interp: Any,
    restored: Any,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
    display: tuple[float, float] | None = None,
    origin_voxels: Sequence[float] | None = None,
) -> bytes:
    """Orthogonal centre slices of raw, interpolation and restored, as PNG bytes.

    Parameters
    ----------
    raw
        Input volume, ZYX.
    interp, restored
        Interpolated and restored volumes on the output grid (same shape).
    voxel_size_in, voxel_size_out
        ``(z, y, x)`` voxel sizes in µm, or ``None`` (then output voxels are used as
        unit and the input size is derived from the shape ratio).
    display
        ``(vmin, vmax)`` shared by the three rows; default: the 0.2–99.8 percentiles
        of ``restored``.
    origin_voxels
        The acquisition's first voxel centre in its voxel steps (an OME-Zarr's translation; ``None``:
        0): the axes then read the stores' coordinates (:func:`frame_offset`).

    Returns
    -------
    bytes
        A PNG image. Panels are drawn at physical aspect (z is not squashed).
    """
    raw, interp, restored, vin, vout, unit = prepare_views(
        raw, interp, restored, voxel_size_in, voxel_size_out)
    vmin, vmax = display if display is not None else display_range(restored)
    vols = [("raw", raw, vin), ("interpolation", interp, vout), ("restored", restored, vout)]
    return _panel_grid(vols, _centre_planes, unit=unit, vmin=vmin, vmax=vmax,
                       title="Centre slices (matched contrast, range from restored)",
                       offset=frame_offset(vin, vout, unit, origin_voxels))


def figure_projections(
    *,
    raw: Any,
    interp: Any,
    restored: Any,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
    train_fov: Any = None,
    origin_voxels: Sequence[float] | None = None,
) -> bytes:
    """Maximum-intensity projections of raw, interpolation and restored (PNG bytes).

    The display range is shared by the three rows and taken from the percentiles of
    the restored projections. Parameters are as in :func:`figure_orthoviews`;
    ``train_fov`` (see :func:`fov_bbox`), when given, is outlined in red on the raw
    projections, and its held-out region (``holdout``) in cyan.

    Returns
    -------
    bytes
        A PNG image.
    """
    raw, interp, restored, vin, vout, unit = prepare_views(
        raw, interp, restored, voxel_size_in, voxel_size_out)
    cache: dict[int, dict[str, np.ndarray]] = {}

    def planes(vol):
        key = id(vol)
        if key not in cache:
            cache[key] = _projections(vol)
        return cache[key]

    ref = planes(restored)
    vals = np.concatenate([p.ravel() for p in ref.values()])
    vmin, vmax = display_range(vals)
    vols = [("raw", raw, vin), ("interpolation", interp, vout), ("restored", restored, vout)]
    boxes = []
    title = "Maximum-intensity projections (matched contrast)"
    if (box := fov_bbox(train_fov)) is not None:
        boxes.append((box, "red"))
        title += "; red: training field of view"
    if (hold := holdout_bbox(train_fov)) is not None:
        boxes.append((hold, "cyan"))
        title += "; cyan dashed: held-out region"
    return _panel_grid(vols, planes, unit=unit, vmin=vmin, vmax=vmax, title=title, boxes=boxes,
                       offset=frame_offset(vin, vout, unit, origin_voxels))


def _smooth2d(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(plane, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, padded)
    return out


def _find_structure(restored: Any) -> tuple[int, int, int]:
    """Output-grid voxel (z, y, x) at the brightest smoothed structure, away from the lateral
    edges (a structure cut by the border put its profile line on the panel's frame)."""
    nz, ny, nx = as_zyx(restored.shape)
    mip = _projections(restored)["XY"]
    fy, fx = _factor(ny), _factor(nx)
    sm = _smooth2d(np.nan_to_num(mip), max(1.0, min(mip.shape) / 64))
    for axis, n in enumerate(sm.shape):
        margin = n // 16
        if margin and n > 2 * margin + 1:
            edge = [slice(None)] * 2
            for part in (slice(0, margin), slice(n - margin, n)):
                edge[axis] = part
                sm[tuple(edge)] = -np.inf
    iy, ix = np.unravel_index(int(np.argmax(sm)), sm.shape)
    y = min(ny - 1, iy * fy + fy // 2)
    x = min(nx - 1, ix * fx + fx // 2)
    column = np.nan_to_num(np.asarray(restored[:, y, x], dtype=np.float32))
    z = int(np.argmax(column)) if column.size else 0
    return z, y, x


def _in_index(j: int, n_out: int, n_in: int) -> int:
    """Nearest input index of output index ``j`` (half-pixel-centre convention)."""
    s = n_out / n_in
    return int(min(n_in - 1, max(0, round((j + 0.5) / s - 0.5))))


def _plane_on_acquired(z: int, n_out: int, n_in: int) -> tuple[int, int]:
    """The output plane to show beside an acquired one near output plane ``z``: ``(output
    plane, acquired plane)``, the acquired plane nearest ``z`` and, of the output planes, the one
    whose centre is nearest that plane's (half-pixel-centre convention). At ×s along z the two
    are then at most half an output plane apart, where the output plane at the structure's peak
    could be up to half an acquired plane from the nearest acquired one (a walkthrough's ×4 beads:
    the raw profile came from 0.75 µm away and read half the peak)."""
    iz = _in_index(z, n_out, n_in)
    centre = (iz + 0.5) * n_out / n_in - 0.5  # the acquired plane's centre in output planes
    lo = int(min(n_out - 1, max(0, math.floor(centre))))
    hi = int(min(n_out - 1, max(0, math.ceil(centre))))
    near = min((lo, hi), key=lambda k: (abs(k - centre), abs(k - z)))
    return near, iz


def figure_detail(
    *,
    raw: Any,
    interp: Any,
    restored: Any,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
    zoom: int = 4,
    display: tuple[float, float] | None = None,
    restored_name: str = "restored",
    origin_voxels: Sequence[float] | None = None,
) -> bytes:
    """Zoomed crop around the brightest structure and a line profile across it.

    The crop (``1/zoom`` of the lateral field of view) is centred on the brightest
    region of the smoothed restored projection, near the z plane where that structure
    peaks: the acquired plane nearest it, and the output plane nearest that one
    (:func:`_plane_on_acquired`). The same physical region and the same horizontal line are
    shown for the three volumes; the profiles are plotted together in physical units.

    Parameters
    ----------
    raw, interp, restored, voxel_size_in, voxel_size_out, display, origin_voxels
        As in :func:`figure_orthoviews`.
    zoom
        Zoom factor of the crop (crop side = field side / zoom, at most :data:`DETAIL_MAX_SIDE_PX`
        output voxels: a larger field is shown zoomed further, and the panels' titles say how far).
    restored_name
        What the restored panel and profile are called (``"restored (= interpolation)"`` where the
        output is the interpolation: its curve lies under the interpolation's).

    Returns
    -------
    bytes
        A PNG image.
    """
    raw, interp, restored, vin, vout, unit = prepare_views(
        raw, interp, restored, voxel_size_in, voxel_size_out)
    off = frame_offset(vin, vout, unit, origin_voxels)  # voxel i of step v spans i·v to (i+1)·v, shifted by off
    s_in, s_out = as_zyx(raw.shape), as_zyx(restored.shape)
    z, y, x = _find_structure(restored)
    if only_z_resampled(s_in, s_out):
        # only z resampled (isotropic mode): an XY crop shows nothing new, and where its plane
        # falls on an acquired slice the profiles coincide; the detail is an XZ crop and a z profile
        return _axial_detail(raw, interp, restored, vin, vout, unit, (z, y, x), zoom=zoom, display=display,
                             restored_name=restored_name, offset=off)
    shown = {"restored": restored_name}  # the panels' and profiles' names, where not their own
    hy, hx = (_detail_half_width(n, zoom) for n in s_out[1:])
    zoom_shown = _zoom_shown(s_out[2], hx)
    y0, y1 = _window(y, hy, s_out[1])
    x0, x1 = _window(x, hx, s_out[2])
    # same physical window on the input grid
    fy, fx = s_out[1] / s_in[1], s_out[2] / s_in[2]
    iy0, iy1 = int(math.floor(y0 / fy)), max(int(math.floor(y0 / fy)) + 1, int(math.ceil(y1 / fy)))
    ix0, ix1 = int(math.floor(x0 / fx)), max(int(math.floor(x0 / fx)) + 1, int(math.ceil(x1 / fx)))
    # the output plane nearest the acquired plane the raw crop shows (not the peak's own plane,
    # which may lie between two acquired planes)
    z, iz = _plane_on_acquired(z, s_out[0], s_in[0])
    iyl = _in_index(y, s_out[1], s_in[1])

    crops = {
        "raw": (np.asarray(raw[iz, iy0:iy1, ix0:ix1], dtype=np.float32), vin, iy0, ix0),
        "interpolation": (np.asarray(interp[z, y0:y1, x0:x1], dtype=np.float32), vout, y0, x0),
        "restored": (np.asarray(restored[z, y0:y1, x0:x1], dtype=np.float32), vout, y0, x0),
    }
    if display is None:
        display = display_range(crops["restored"][0], low=0.5, high=99.9)
    vmin, vmax = display
    line_y_phys = (y + 0.5) * vout[1] + off[1]
    fig = _new_figure(figsize=(11.0, 3.4))
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.5], left=0.05, right=0.98,
                          top=0.86, bottom=0.16, wspace=0.3)
    colors = {"raw": "tab:blue", "interpolation": "tab:orange", "restored": "tab:green"}
    for k, (name, (crop, vs, oy, ox)) in enumerate(crops.items()):
        ax = fig.add_subplot(gs[0, k])
        ext = (ox * vs[2] + off[2], (ox + crop.shape[1]) * vs[2] + off[2], (oy + crop.shape[0]) * vs[1] + off[1],
               oy * vs[1] + off[1])
        ax.imshow(crop, cmap=_gray(), vmin=vmin, vmax=vmax, extent=ext, aspect="equal",
                  interpolation="nearest")
        ax.axhline(line_y_phys, color=colors[name], lw=1.0, alpha=0.8)
        ax.set_title(f"{shown.get(name, name)} ({zoom_shown}× zoom)"
                     + (f"\nacquired plane z={(iz + 0.5) * vin[0] + off[0]:.4g} {unit}" if name == "raw" else ""),
                     fontsize=9)
        ax.set_xlabel(f"x ({unit})", fontsize=7)
        if k == 0:
            ax.set_ylabel(f"y ({unit})", fontsize=7)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[0, 3])
    profiles = {
        "raw": (np.asarray(raw[iz, iyl, ix0:ix1], dtype=np.float32), vin[2], ix0),
        "interpolation": (np.asarray(interp[z, y, x0:x1], dtype=np.float32), vout[2], x0),
        "restored": (np.asarray(restored[z, y, x0:x1], dtype=np.float32), vout[2], x0),
    }
    _profile_panel(ax, profiles, colors, labels=shown, xlabel=f"x ({unit})", offset=off[2],
                   # y on a line of its own: on one line a title with 4-digit positions ran past the figure's
                   # right edge ("y=32.63 µ", a walkthrough's confocal nucleus)
                   title=f"line profile at z={(z + 0.5) * vout[0] + off[0]:.4g} {unit} "
                         f"(raw {(iz + 0.5) * vin[0] + off[0]:.4g} "
                         f"{unit}),\ny={line_y_phys:.4g} {unit}")
    return _fig_to_png(fig)


def only_z_resampled(shape_in: Sequence[int], shape_out: Sequence[int]) -> bool:
    """Whether only z was resampled (isotropic mode, enhance ``scale`` n,1,1): the detail
    figure is then an XZ crop and an axial profile. ``False`` when either is not a 2-D or 3-D shape."""
    if not all(len(tuple(s)) in (2, 3) for s in (shape_in, shape_out)):
        return False
    s_in, s_out = as_zyx(shape_in), as_zyx(shape_out)
    return s_out[1:] == s_in[1:] and s_out[0] != s_in[0] and s_in[0] > 1


def _profile_panel(ax, profiles: Mapping[str, tuple], colors: Mapping[str, str], *, xlabel: str, title: str,
                   labels: Mapping[str, str] | None = None, offset: float = 0.0) -> None:
    """The detail figure's profile plot: ``{name: (values, voxel size, first index)}``, each at
    its voxels' centres (µm, shifted by the axis's ``offset``: :func:`frame_offset`); the raw samples as dots."""
    for name, (prof, voxel, first) in profiles.items():
        ax.plot((first + np.arange(prof.size) + 0.5) * voxel + offset, prof, marker="." if name == "raw" else None,
                ms=4, color=colors[name], label=(labels or {}).get(name, name), lw=1.2)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("intensity", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def _window(centre: int, half: int, n: int) -> tuple[int, int]:
    """``[start, end)`` of ``2·half`` voxels around ``centre``, shifted to lie inside ``0..n``
    (a structure at the edge keeps a full-size crop), or all of ``n`` when shorter."""
    start = min(max(0, centre - half), max(0, n - 2 * half))
    return start, min(n, start + 2 * half)


#: The detail's crop is at most this many output voxels across (a walkthrough's 1020×1332 output: a
#: quarter of the field, 255×333 voxels in a 2-inch panel, showed no cell and three overlapping curves)
DETAIL_MAX_SIDE_PX = 128


def _detail_half_width(n: int, zoom: int) -> int:
    """Half the detail crop's side on an axis of ``n`` output voxels: ``1/zoom`` of the field, at most
    :data:`DETAIL_MAX_SIDE_PX` across, at least 2 voxels."""
    return max(2, min(n // (2 * zoom), DETAIL_MAX_SIDE_PX // 2))


def _zoom_shown(n: int, half: int) -> int:
    """The zoom a crop of half-width ``half`` on an axis of ``n`` voxels shows (the field / the crop)."""
    return max(1, round(n / (2 * half)))


def _axial_detail(raw, interp, restored, vin, vout, unit, at, *, zoom: int, display,
                  restored_name: str = "restored", offset: Sequence[float] = (0.0, 0.0, 0.0)) -> bytes:
    """:func:`figure_detail` when only z was resampled: XZ crops through the brightest
    structure (all of z, ``1/zoom`` of x, at most :data:`DETAIL_MAX_SIDE_PX`) and the profiles along z through it."""
    shown = {"restored": restored_name}
    s_in, s_out = as_zyx(raw.shape), as_zyx(restored.shape)
    z, y, x = at
    hx = _detail_half_width(s_out[2], zoom)
    x0, x1 = _window(x, hx, s_out[2])
    hz = max(2, int(round(hx * vout[2] / vout[0])))  # a square in µm
    z0, z1 = _window(z, hz, s_out[0])
    f = s_out[0] / s_in[0]
    iz0, iz1 = int(math.floor(z0 / f)), max(int(math.floor(z0 / f)) + 1, int(math.ceil(z1 / f)))
    crops = {  # (crop, voxel size, first z index)
        "raw": (np.asarray(raw[iz0:iz1, y, x0:x1], dtype=np.float32), vin, iz0),
        "interpolation": (np.asarray(interp[z0:z1, y, x0:x1], dtype=np.float32), vout, z0),
        "restored": (np.asarray(restored[z0:z1, y, x0:x1], dtype=np.float32), vout, z0),
    }
    if display is None:
        display = display_range(crops["restored"][0], low=0.5, high=99.9)
    vmin, vmax = display
    fig = _new_figure(figsize=(11.0, 3.6))
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.5], left=0.06, right=0.98, top=0.86, bottom=0.16,
                          wspace=0.35)
    colors = {"raw": "tab:blue", "interpolation": "tab:orange", "restored": "tab:green"}
    off = offset
    x_phys, y_phys = (x + 0.5) * vout[2] + off[2], (y + 0.5) * vout[1] + off[1]  # the axes' units: voxel centres
    for k, (name, (crop, vs, oz)) in enumerate(crops.items()):
        ax = fig.add_subplot(gs[0, k])
        ax.imshow(crop, cmap=_gray(), vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest",
                  extent=(x0 * vs[2] + off[2], x1 * vs[2] + off[2], (oz + crop.shape[0]) * vs[0] + off[0],
                          oz * vs[0] + off[0]))
        ax.axvline(x_phys, color=colors[name], lw=1.0, alpha=0.8)
        ax.set_title(f"{shown.get(name, name)} (XZ at y={y_phys:.4g} {unit})", fontsize=9)
        ax.set_xlabel(f"x ({unit})", fontsize=7)
        ax.set_ylabel(f"z ({unit})", fontsize=7)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[0, 3])
    _profile_panel(ax, {name: (crop[:, x - x0], vs[0], oz) for name, (crop, vs, oz) in crops.items()}, colors,
                   labels=shown, xlabel=f"z ({unit})", offset=off[0],
                   title=f"axial profile at y={y_phys:.4g}, x={x_phys:.4g} {unit}\n(dots: acquired slices)")
    return _fig_to_png(fig)


def log_frame(training_log: Any) -> pd.DataFrame | None:
    if training_log is None:
        return None
    if isinstance(training_log, pd.DataFrame):
        df = training_log
    elif isinstance(training_log, (str, Path)):
        df = pd.read_csv(training_log, sep="\t")
    else:
        df = pd.DataFrame(training_log)
    if df.empty or "step" not in df.columns:
        return None
    return df


def kept_steps(df: pd.DataFrame, best_step: Any) -> int | list[int] | None:
    """The kept checkpoint's step as given (a list: one per stage of a serial ×4 model), else
    the step of the best validation PSNR."""
    if isinstance(best_step, (list, tuple)) and all(num(b) is not None for b in best_step) and best_step:
        return [int(b) for b in best_step]
    if num(best_step) is not None:
        return int(best_step)
    if "val_psnr_model" in df.columns:
        col = pd.to_numeric(df["val_psnr_model"], errors="coerce")
        if "stage" in df.columns and df["stage"].nunique() > 1:  # each stage's own best (steps restart)
            best = [df.loc[col[df["stage"] == k].idxmax(), "step"] if col[df["stage"] == k].notna().any() else None
                    for k in sorted(df["stage"].unique())]
            return [int(b) for b in best] if all(b is not None for b in best) else None
        if col.notna().any():
            return int(df.loc[col.idxmax(), "step"])
    return None


#: The least rise of a validation score that replaces the kept checkpoint (training's own constant)
KEEP_MIN_GAIN_DB = MIN_GAIN_DB


def figure_training_curves(training_log: Any, *, best_step: int | Sequence[int] | None = None,
                           margin_db: float | None = None) -> bytes:
    """Loss, validation PSNR (model vs interpolation), the kept checkpoint's score and
    learning rate vs step.

    Parameters
    ----------
    training_log
        DataFrame (or mapping of columns, or path of ``training_log.tsv``) with
        columns ``step``, ``loss``, ``val_psnr_model``, ``val_psnr_interp``, ``lr``, and
        ``val_coarse_gain`` (enhance's coarse-scale check) and ``stage`` (a serial ×4
        model's two trainings) where they were logged (missing columns are skipped).
        Stages are drawn one after the other, each in its own colour: their steps restart
        from 0 (drawn on one axis they zig-zagged).
    best_step
        Step of the kept checkpoint (one per stage, as a list, for a serial model);
        default: the row with the largest ``val_psnr_model``. Marked by a dotted line.
    margin_db
        The guard's margin (``train.guard_margin_db``): a dashed line in the gain panel, the
        held-out gain a trained network must exceed.

    Returns
    -------
    bytes
        A PNG image.
    """
    df = log_frame(training_log)
    if df is None:
        raise ValueError("training_log is empty or has no 'step' column")
    step = pd.to_numeric(df["step"], errors="coerce").to_numpy(dtype=float)
    stage = (pd.to_numeric(df["stage"], errors="coerce").fillna(1).astype(int).to_numpy()
             if "stage" in df.columns else np.ones(len(df), dtype=int))
    stages = sorted(set(stage.tolist()))
    offsets, shift = {}, 0.0
    for k in stages:  # each stage starts where the one before ended
        offsets[k] = shift
        shift += float(np.nanmax(step[stage == k])) if np.isfinite(step[stage == k]).any() else 0.0
    x = step + np.array([offsets[k] for k in stage])
    best = kept_steps(df, best_step)
    bests = (best if isinstance(best, list) else [best]) if best is not None else []
    best_x = [b + offsets.get(k, 0.0) for k, b in zip(stages, bests)] if len(stages) > 1 else bests[:1]
    fig = _new_figure(figsize=(12.0, 3.0))
    axes = fig.subplots(1, 4)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.17, top=0.8, wspace=0.32)

    def col(name):
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)

    def per_stage(ax, values, fmt, colour, label, **kw):
        for i, k in enumerate(stages):
            sel = stage == k
            tag = f"{label} (stage {k})" if len(stages) > 1 else label
            ax.plot(x[sel], values[sel], fmt, color=colour, alpha=1.0 if i == len(stages) - 1 else 0.55,
                    label=tag, **kw)

    ax = axes[0]
    if "loss" in df.columns:
        loss = col("loss")
        per_stage(ax, loss, "-", "tab:blue", "loss", lw=1, marker="." if len(step) < 30 else None, ms=3)
        finite = loss[np.isfinite(loss)]
        # log scale only when the loss spans more than a decade (else unreadable ticks)
        if finite.size and np.all(finite > 0) and finite.max() / finite.min() > 10:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(_matplotlib().ticker.NullFormatter())
    ax.set_title("training loss", fontsize=9)
    ax = axes[1]
    if "val_psnr_model" in df.columns:
        per_stage(ax, col("val_psnr_model"), ".-", "tab:green", "model", ms=3, lw=1)
    if "val_psnr_interp" in df.columns:
        per_stage(ax, col("val_psnr_interp"), "--", "tab:orange", "interpolation", lw=1)
    ax.set_title("validation PSNR (dB)", fontsize=9)
    ax.ticklabel_format(axis="y", useOffset=False)  # a flat curve read "+3.2e1" and 0.00045 ticks
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    ax = axes[2]  # what chose the kept checkpoint: its gains over interpolation
    if {"val_psnr_model", "val_psnr_interp"} <= set(df.columns):
        gain = col("val_psnr_model") - col("val_psnr_interp")
        per_stage(ax, gain, ".-", "tab:green", "held-out gain", ms=3, lw=1)
        if "val_coarse_gain" in df.columns and np.isfinite(col("val_coarse_gain")).any():
            per_stage(ax, col("val_coarse_gain"), ".:", "tab:brown", "coarse-scale gain", ms=3, lw=1)
        ax.axhline(0.0, color="0.5", lw=0.8)
        if margin_db is not None and margin_db > 0:  # why a gain under it fell back (a walkthrough: not shown)
            ax.axhline(margin_db, color="tab:red", ls="--", lw=0.9, label=f"guard margin {margin_db:g} dB")
        ax.legend(fontsize=6)
    ax.set_title("gain over interpolation (dB)", fontsize=9)
    ax = axes[3]
    if "lr" in df.columns:
        per_stage(ax, col("lr"), "-", "tab:purple", "lr", lw=1)
    ax.set_title("learning rate", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step" if len(stages) == 1 else "step (stage 2 after stage 1)", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        for b in best_x:
            ax.axvline(b, color="k", ls=":", lw=1)
        for k in stages[1:]:
            ax.axvline(offsets[k], color="0.6", lw=0.8)
    if bests:
        which = (", ".join(f"stage {k} step {b}" for k, b in zip(stages, bests)) if len(stages) > 1
                 else f"step {bests[0]}")
        # isotropic mode has no coarse-scale check: its score is the held-out gain alone (a walkthrough)
        score = ("the smaller of its gains over interpolation (held-out, and coarse-scale where checked)"
                 if "val_coarse_gain" in df.columns else "its held-out gain over interpolation")
        fig.suptitle(f"kept checkpoint: {which} (dotted line): the best score, {score};\na later one replaces it "
                     f"only when more than {KEEP_MIN_GAIN_DB:g} dB higher", fontsize=8.5)
    return _fig_to_png(fig)


def figure_spectra(spectra: Mapping[str, Any], *, log10_power: bool = False, output_name: str = "output") -> bytes:
    """Axial power spectra of input, interpolation and output, each scaled to its own maximum.

    Input and output have different numbers of z samples, so their absolute powers
    are not comparable; each curve is divided by its maximum and the shapes compared.
    The input's Nyquist frequency (highest frequency it can hold) is marked: beyond it the
    interpolation (which adds no detail) leaks power too, so only output power above the
    interpolation's there can be new detail (or noise the restoration invented).

    Parameters
    ----------
    spectra
        ``{"input": (freq, power), "interpolation": …, "output": …}`` (interpolation
        optional); frequencies in cycles/µm (or per voxel); ``nyquist_in`` (optional): the
        input's Nyquist frequency, else its highest frequency bin (below Nyquist for an
        odd number of slices).
    log10_power
        ``power`` is given as ``log10`` of the power (as written by
        :func:`selfres.metrics.axial_spectrum`).

    Returns
    -------
    bytes
        A PNG image.
    """
    fig = _new_figure(figsize=(6.0, 3.4))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.16, top=0.88)
    nyquist_in = spectra.get("nyquist_in")
    for name, color, style in (("input", "tab:blue", "-"), ("interpolation", "tab:orange", "--"),
                               ("output", "tab:green", "-")):
        if name not in spectra or spectra[name] is None:
            continue
        f, p = (np.asarray(a, dtype=float).ravel() for a in spectra[name])
        if log10_power:
            p = np.power(10.0, p)
        good = np.isfinite(f) & np.isfinite(p) & (p > 0) & (f > 0)
        if not good.any():
            continue
        f, p = f[good], p[good]
        ax.semilogy(f, p / p.max(), lw=1.4, color=color, label=output_name if name == "output" else name, ls=style,
                    marker="." if f.size < 40 else None, ms=4)
        if name == "input" and nyquist_in is None:
            nyquist_in = float(f.max())
    if nyquist_in is not None:
        ax.axvline(nyquist_in, color="0.4", ls=":", lw=1)
        ax.text(nyquist_in, 0.98, " input Nyquist", transform=ax.get_xaxis_transform(),
                fontsize=7, va="top", color="0.3")
    ax.set_xlabel("axial frequency (cycles/µm)", fontsize=8)
    ax.set_ylabel("relative power", fontsize=8)
    ax.set_title("axial power spectrum (each curve / its maximum)", fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no spectrum available", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="0.4")
    return _fig_to_png(fig)


_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def bead_frames(bead_table: Any) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Split a long-form bead table into (input, output) rows; ``None`` if not possible."""
    if bead_table is None:
        return None
    df = bead_table if isinstance(bead_table, pd.DataFrame) else pd.DataFrame(bead_table)
    cols = {c.lower(): c for c in df.columns}
    stage = next((cols[k] for k in ("stage", "which", "volume", "kind") if k in cols), None)
    needed = [f"{a}" for a in "zyx"] + [f"fwhm_{a}" for a in "zyx"]
    if df.empty or stage is None or any(c not in cols for c in needed):
        return None
    df = df.rename(columns={cols[c]: c for c in needed})
    kind = df[stage].astype(str).str.lower()
    t_in = df[kind.isin(("in", "input"))].reset_index(drop=True)
    t_out = df[kind.isin(("out", "output"))].reset_index(drop=True)
    return t_in, t_out


def _representative(table: pd.DataFrame) -> int | None:
    """Row of the bead whose widths are closest to the median widths."""
    w = table[[f"fwhm_{a}" for a in "zyx"]].apply(pd.to_numeric, errors="coerce")
    ok = w.notna().all(axis=1).to_numpy()
    if not ok.any():
        return None
    med = w[ok].median()
    dev = (np.abs(w - med) / med.where(med > 0, 1.0)).sum(axis=1).to_numpy(copy=True)
    dev[~ok] = np.inf
    return int(np.argmin(dev))


def _gauss_curve(pos: np.ndarray, prof: np.ndarray, mu: float, sigma: float,
                 fine: np.ndarray) -> np.ndarray:
    """offset + amp·Gaussian(mu, sigma) with offset and amp fitted linearly to prof."""
    g = np.exp(-0.5 * ((pos - mu) / sigma) ** 2)
    a = np.vstack([np.ones_like(g), g]).T
    (off, amp), *_ = np.linalg.lstsq(a, prof.astype(np.float64), rcond=None)
    return off + amp * np.exp(-0.5 * ((fine - mu) / sigma) ** 2)


def figure_beads(
    *,
    raw: Any,
    restored: Any,
    bead_table: Any,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
) -> bytes | None:
    """Profiles of a typical bead along z, y and x, input vs output, with their fits.

    The bead whose fitted widths are closest to the median of the input beads is
    shown: samples through its brightest voxel along each axis (dots: input,
    squares: output) with the Gaussian of the width recorded in the bead table
    (offset and amplitude refitted for display). A fourth panel shows the
    distribution of FWHM per axis over all beads, input vs output.

    Parameters
    ----------
    raw, restored
        Input and restored volumes, ZYX.
    bead_table
        Long-form bead table (``z, y, x, fwhm_z, fwhm_y, fwhm_x`` in voxels of each
        volume's own grid and a ``volume``/``stage`` column ``input``/``output``), as
        written by the qc stage to ``qc/beads.tsv``.
    voxel_size_in, voxel_size_out
        ``(z, y, x)`` in µm, or ``None`` (voxel units, derived from the shapes).

    Returns
    -------
    bytes or None
        A PNG image, or ``None`` when the table holds no usable input bead.
    """
    frames = bead_frames(bead_table)
    if frames is None:
        return None
    t_in, t_out = frames
    i = _representative(t_in)
    if i is None:
        return None
    raw, restored = _vol3(raw), _vol3(restored)
    s_in, s_out = as_zyx(raw.shape), as_zyx(restored.shape)
    vin, vout, unit = _voxel_sizes(s_in, s_out, voxel_size_in, voxel_size_out)
    c_in = np.array([float(t_in.loc[i, a]) for a in "zyx"])
    ratio = np.array(s_out, float) / np.array(s_in, float)
    expect_out = (c_in + 0.5) * ratio - 0.5
    c_out = None
    if len(t_out):
        pos_out = t_out[["z", "y", "x"]].to_numpy(dtype=float)
        d = np.linalg.norm((pos_out - expect_out) / ratio, axis=1)
        j = int(np.nanargmin(d)) if np.isfinite(d).any() else -1
        if j >= 0 and d[j] <= 2.0:  # within two input voxels
            c_out = (pos_out[j], t_out.loc[j])
    fig = _new_figure(figsize=(11.0, 3.2))
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.2], left=0.06, right=0.98,
                          top=0.82, bottom=0.17, wspace=0.32)
    styles = {"input": ("tab:blue", "o", "--"), "output": ("tab:green", "s", "-")}
    for a, name in enumerate("zyx"):
        ax = fig.add_subplot(gs[0, a])
        entries = [("input", raw, c_in, t_in.loc[i], s_in, vin)]
        if c_out is not None:
            entries.append(("output", restored, c_out[0], c_out[1], s_out, vout))
        centre_phys = (c_in[a] + 0.5) * vin[a]
        for label, vol, centre, row, shape, vs in entries:
            idx = [int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(centre, shape)]
            fwhm = num(row.get(f"fwhm_{name}"))
            half = int(max(4, math.ceil(2.5 * (fwhm or 4.0))))
            lo, hi = max(0, idx[a] - half), min(shape[a], idx[a] + half + 1)
            key = list(idx)
            key[a] = slice(lo, hi)
            prof = np.asarray(vol[tuple(key)], dtype=np.float64).ravel()
            pos = (np.arange(lo, hi) + 0.5) * vs[a] - centre_phys
            color, marker, ls = styles[label]
            text = label
            if fwhm is not None and prof.size >= 3:
                mu = (float(centre[a]) + 0.5) * vs[a] - centre_phys
                sigma = fwhm * vs[a] / _FWHM_PER_SIGMA
                fine = np.linspace(pos[0], pos[-1], 200)
                ax.plot(fine, _gauss_curve(pos, prof, mu, sigma, fine), ls=ls, color=color,
                        lw=1.2)
                text += f": FWHM {fmt(fwhm * vs[a])} {unit}"
            ax.plot(pos, prof, marker, ls="none", color=color, ms=3.5, label=text)
        ax.set_title(f"along {name}", fontsize=9)
        ax.set_xlabel(f"{name} − bead centre ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="best")  # upper right hid the peaks the panel compares
        if a == 0:
            ax.set_ylabel("intensity", fontsize=8)
    ax = fig.add_subplot(gs[0, 3])
    data, ticks, colors = [], [], []
    for a, name in enumerate("zyx"):
        for label, tab, vs in (("in", t_in, vin), ("out", t_out, vout)):
            w = pd.to_numeric(tab[f"fwhm_{name}"], errors="coerce").to_numpy() * vs[a]
            data.append(w[np.isfinite(w)])
            ticks.append(f"{name} {label}")
            colors.append("tab:blue" if label == "in" else "tab:green")
    for k, (vals, color) in enumerate(zip(data, colors)):
        if vals.size:
            jitter = (np.random.default_rng(k).random(vals.size) - 0.5) * 0.3
            ax.plot(k + jitter, vals, ".", color=color, ms=3, alpha=0.6)
            ax.plot([k - 0.3, k + 0.3], [np.median(vals)] * 2, color="k", lw=1.5)
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, fontsize=7)
    ax.set_ylabel(f"FWHM ({unit})", fontsize=8)
    ax.set_title(f"all beads (in: {len(t_in)}, out: {len(t_out)});\nno dot: a failed fit; bar: median",
                 fontsize=9)
    ax.tick_params(labelsize=7)
    fig.suptitle("Typical bead (closest to the median width): line profiles through its "
                 "brightest voxel, with Gaussian fits", fontsize=9)
    return _fig_to_png(fig)


def _placeholder_png(text: str) -> bytes:
    """A small PNG saying why a figure is missing (for fixed Snakemake outputs)."""
    fig = _new_figure(figsize=(5.0, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="0.3", wrap=True)
    return _fig_to_png(fig)


def fov_bbox(train_fov: Any) -> tuple[tuple[int, int], ...] | None:
    """ZYX bounding box ``((z0, z1), (y0, y1), (x0, x1))`` of a training FOV.

    Parameters
    ----------
    train_fov
        ``None``; a string ``"z0:z1,y0:y1,x0:x1"``; a mapping with ``train`` or
        ``bbox`` (as written by ``TrainingFov.to_dict``: three
        ``[start, stop]`` pairs, or six numbers z0, z1, y0, y1, x0, x1) or with keys
        ``z0 … x1``; a tuple of three slices or pairs; or an object with a ``bbox``
        ``train`` or ``slices`` attribute (e.g. ``selfres.fov.TrainingFov``).

    Returns
    -------
    tuple or None
        The box, or ``None`` when the form is not understood.
    """
    fov = train_fov
    try:
        if fov is None:
            return None
        if isinstance(fov, str):
            pairs = [p.split(":") for p in fov.split(",")]
            box = tuple((int(a), int(b)) for a, b in pairs)
        elif isinstance(fov, Mapping):
            if all(k in fov for k in ("z0", "z1", "y0", "y1", "x0", "x1")):
                box = tuple((int(fov[f"{a}0"]), int(fov[f"{a}1"])) for a in "zyx")
            else:
                inner = fov.get("bbox", fov.get("train", fov.get("slices")))
                return None if inner is None else fov_bbox(inner)
        elif any(hasattr(fov, a) for a in ("bbox", "train", "slices")):
            return fov_bbox(next(getattr(fov, a) for a in ("bbox", "train", "slices")
                                 if hasattr(fov, a)))
        else:
            items = list(fov)
            if len(items) == 6 and all(num(i) is not None for i in items):
                box = tuple((int(items[2 * i]), int(items[2 * i + 1])) for i in range(3))
            else:
                box = tuple(
                    (int(i.start or 0), int(i.stop)) if isinstance(i, slice)
                    else (int(i[0]), int(i[1])) for i in items)
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if len(box) != 3 or any(b <= a for a, b in box):
        return None
    return box


def holdout_bbox(train_fov: Any) -> tuple[tuple[int, int], ...] | None:
    """Held-out region of a training-FOV record (``holdout`` key or attribute)."""
    if isinstance(train_fov, Mapping):
        inner = train_fov.get("holdout", train_fov.get("held_out"))
    else:
        inner = getattr(train_fov, "holdout", None)
    return None if inner is None else fov_bbox(inner)


def sample_figures(
    *,
    raw: Any,
    interp: Any,
    restored: Any,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
    training_log: Any = None,
    best_step: int | None = None,
    bead_table: Any = None,
    spectra: Mapping[str, Any] | None = None,
    spectra_log10: bool = False,
    train_fov: Any = None,
    margin_db: float | None = None,
    restored_is_interpolation: bool = False,
    origin_voxels: Sequence[float] | None = None,
) -> dict[str, bytes]:
    """All figures of a sample report, as PNG bytes (computed once, reused).

    Parameters
    ----------
    raw, interp, restored, voxel_size_in, voxel_size_out, origin_voxels
        As in :func:`figure_orthoviews`.
    training_log, best_step
        As in :func:`figure_training_curves`; no ``training_curves`` without a log.
    bead_table
        As in :func:`figure_beads`; no ``beads`` figure without usable beads.
    spectra, spectra_log10
        As in :func:`figure_spectra` (``log10_power``); no ``spectra`` without them.
    train_fov
        As in :func:`figure_projections`.
    margin_db
        As in :func:`figure_training_curves`.
    restored_is_interpolation
        The output is the interpolation (the guard's fall-back): the detail and spectra call it
        so, since its curves lie under the interpolation's.

    Returns
    -------
    dict
        Keys among ``orthoviews``, ``projections``, ``detail``, ``training_curves``,
        ``spectra``, ``beads`` (PNG bytes), and ``display_range``: the orthogonal views'
        ``(vmin, vmax)``, which the report's caption gives.
    """
    raw, interp, restored, _, _, _ = prepare_views(raw, interp, restored, voxel_size_in, voxel_size_out)
    raw, interp, restored = _Memo(raw), _Memo(interp), _Memo(restored)
    # the sizes as given: each figure fills in unknown ones itself, and then labels its axes in
    # voxels, not in µm (filled-in sizes passed on looked like micrometres)
    vin, vout = voxel_size_in, voxel_size_out
    kw = dict(raw=raw, interp=interp, restored=restored, voxel_size_in=vin, voxel_size_out=vout,
              origin_voxels=origin_voxels)
    voxels = math.prod(int(n) for n in np.shape(restored))
    # the projections read the whole output and compute the interpolation of the whole input
    # (minutes on a large field): said as each figure is done, so a long report is not a hang
    log.info("drawing the figures of a %.3g Mvoxel output (the projections read all of it)", voxels / 1e6)
    t0 = time.monotonic()
    display = display_range(restored)  # one strided read of the restored volume (it touches every chunk)

    def same(name: str) -> str:  # a fall-back's curves lie under the interpolation's: said in the legend
        return f"{name} (= interpolation)" if restored_is_interpolation else name

    figs = {"display_range": display}
    for name, draw in (("orthoviews", lambda: figure_orthoviews(**kw, display=display)),
                       ("projections", lambda: figure_projections(**kw, train_fov=train_fov)),
                       ("detail", lambda: figure_detail(**kw, restored_name=same("restored")))):
        started = time.monotonic()
        figs[name] = draw()
        log.info("%s drawn in %.1f s", name, time.monotonic() - started)
    df = log_frame(training_log)
    if df is not None:
        figs["training_curves"] = figure_training_curves(df, best_step=kept_steps(df, best_step), margin_db=margin_db)
    if spectra:
        figs["spectra"] = figure_spectra(spectra, log10_power=spectra_log10, output_name=same("output"))
    beads = figure_beads(raw=raw, restored=restored, bead_table=bead_table,
                         voxel_size_in=vin, voxel_size_out=vout)
    if beads is not None:
        figs["beads"] = beads
    log.info("figures drawn in %.1f s", time.monotonic() - t0)
    return figs


# ----------------------------------------------------------------------------------
# figures as files (for Snakemake's report)
# ----------------------------------------------------------------------------------


def write_report_figures(
    outdir: str | Path,
    *,
    figures: Mapping[str, bytes] | None = None,
    names: Sequence[str] | None = None,
    raw: Any = None,
    interp: Any = None,
    restored: Any = None,
    voxel_size_in: Sequence[float] | None = None,
    voxel_size_out: Sequence[float] | None = None,
    training_log: Any = None,
    best_step: int | None = None,
) -> dict[str, Path]:
    """Write report figures as separate PNG files ``{outdir}/{name}.png``.

    Parameters
    ----------
    outdir
        Folder to write into (created if missing).
    figures
        Figures made by :func:`sample_figures`; default: made here from the volumes.
    names
        Figures to write. A named figure that does not exist for this sample (e.g.
        ``training_curves`` without a log) is written as a small placeholder image
        saying so, so that a workflow can declare fixed outputs. Default: every
        figure there is.
    raw, interp, restored, voxel_size_in, voxel_size_out
        As in :func:`figure_orthoviews`; used when ``figures`` is not given.
    training_log, best_step
        As in :func:`figure_training_curves`; used when ``figures`` is not given.

    Returns
    -------
    dict
        Figure name → path written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if figures is None:
        if raw is None or interp is None or restored is None:
            raise ValueError("write_report_figures needs either figures or raw, interp and "
                             "restored volumes")
        figures = sample_figures(raw=raw, interp=interp, restored=restored,
                                 voxel_size_in=voxel_size_in, voxel_size_out=voxel_size_out,
                                 training_log=training_log, best_step=best_step)
    wanted = list(names) if names is not None else [k for k, v in figures.items() if isinstance(v, bytes)]
    written = {}
    for name in wanted:
        png = figures.get(name)
        if png is None:
            png = _placeholder_png(f"no {name.replace('_', ' ')} for this sample")
        path = outdir / f"{name}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(png)
        tmp.replace(path)
        written[name] = path
    return written
