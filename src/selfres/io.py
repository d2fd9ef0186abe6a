"""Reading and writing volumes.

Reading: TIFF / OME-TIFF / ImageJ hyperstacks (tifffile), plain Zarr arrays and
OME-Zarr images (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3). Every reader returns a
:class:`Volume` whose ``data`` is ``float32`` in **ZYX** order (2-D input becomes
``Z = 1``); the axes are checked once, here, where data enters the package.

Writing: OME-Zarr images with axes ``z, y, x`` in micrometres and a z-aware
multiscale pyramid (block means), written atomically (temporary sibling, renamed
into place at the end).

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from selfres import formats
from selfres.errors import (ChannelNotChosen, ConfigError, InputError, SeriesNotChosen, TimepointNotChosen,
                            out_of_range, series_out_of_range)
from selfres.atomic import atomic_output, write_text_atomic  # noqa: F401 (part of this module's API)
from selfres.settings import STORED_VOXEL_SIZE_RANGE_UM, voxel_size_problem

log = logging.getLogger("selfres.io")

__all__ = [
    "Volume",
    "atomic_output",
    "create_ome_zarr",
    "default_chunks",
    "describe_acquisition",
    "file_checksum",
    "finalize_ome_zarr",
    "open_ome_zarr_array",
    "read_ome_zarr",
    "read_volume",
    "read_voxel_size",
    "write_ome_tiff",
    "write_ome_zarr",
]

#: NGFF versions this module writes, and the Zarr format each uses.
NGFF_VERSIONS = {"0.4": 2, "0.5": 3}
#: A pyramid level is only added while its smaller lateral side is at least this.
MIN_LATERAL_SIZE = 64
#: Key under which selfres stores its own attributes in an OME-Zarr group.
ATTRS_KEY = "selfres"
#: How each pyramid level is made from the one before, as NGFF's multiscales "type" and "metadata"
PYRAMID_TYPE = "mean"
PYRAMID_METADATA = {
    "description": "block mean of the previous level: y and x halved at every level, z halved only while its "
                   "voxel is no coarser than the lateral one; a trailing odd row, column or plane is left out; "
                   "each level's translation puts its voxel centres at its blocks' centres",
    "method": "selfres.io.finalize_ome_zarr",
}
#: Percentiles used for the ``omero`` display window.
WINDOW_PERCENTILES = (0.1, 99.9)
_SUBSAMPLE_VOXELS = 1_000_000

_TIFF_MAGIC = formats.TIFF_MAGIC

# Length units to micrometres (OME, ImageJ and NGFF spellings).
_UNIT_TO_UM = {
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "\\u00b5m": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "pm": 1e-6, "picometer": 1e-6,
    "å": 1e-4, "angstrom": 1e-4,
    "inch": 25400.0, "inches": 25400.0, "in": 25400.0,
}


@dataclass
class Volume:
    """A volume read from disk.

    Attributes
    ----------
    data
        ``float32`` array in ZYX order: numpy, or dask when read lazily.
    voxel_size
        ``(z, y, x)`` in µm, or ``None`` when the file does not say.
    source_dtype
        The dtype stored in the file (before conversion to ``float32``).
    path
        The file or store it was read from.
    attrs
        Extra attributes: for OME-Zarr the custom ``"selfres"`` attributes, for a
        plain Zarr array its attributes, for TIFF an empty dict.
    origin_voxels
        ``(z, y, x)`` position of voxel 0's centre in voxel steps (an OME-Zarr's translation
        divided by its scale: the same whatever the unit, and whether or not the voxel size is
        known or overridden by the sheet); ``None`` when the file gives none (at 0).
    """

    data: Any
    voxel_size: tuple[float, float, float] | None
    source_dtype: np.dtype
    path: str
    attrs: dict = field(default_factory=dict)
    origin_voxels: tuple[float, float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(z, y, x)`` of :attr:`data`."""
        return tuple(int(n) for n in self.data.shape)


# --------------------------------------------------------------------------- #
# helpers shared by the readers
# --------------------------------------------------------------------------- #


def _unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit``; ``None`` when the unit is not a length."""
    if unit is None:
        return None
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def tidy_size(value: float) -> float:
    """``value`` to 10 significant digits, for metadata: a size computed by division
    (isotropic z: 4 µm / (4 / 0.8286)) is written 0.8286, not 0.8285999999999999."""
    return float(f"{float(value):.10g}")


def _make_voxel(z: float | None, y: float | None, x: float | None, nz: int):
    """Build a ``(z, y, x)`` voxel size, or ``None`` when incomplete.

    A single plane (``nz == 1``) has no meaningful z step: its z size is taken
    equal to the y size.
    """
    if y is None or x is None:
        return None
    if z is None:
        if nz > 1:
            return None
        z = y
    vox = (float(z), float(y), float(x))
    if not all(math.isfinite(v) and v > 0 for v in vox):
        return None
    return vox


def _check_dtype(path: str, dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise InputError(
            path,
            f"has data type {dtype} which selfres cannot use; allowed: "
            "integer, unsigned integer or floating-point voxels",
        )
    return dtype


def _to_zyx(arr, axes: str, *, channel: int | None, path: str, axes_known: bool, timepoint: int | None = None):
    """Select the channel / time point and return a ZYX view of ``arr``.

    ``axes`` uses one letter per dimension: T, C (or S, samples), Z, Y, X; any
    other letter means "unknown".
    """
    axes = orig_axes = axes.upper()
    shape = tuple(int(n) for n in arr.shape)
    shape_txt = "x".join(str(n) for n in shape)
    if arr.ndim < 2:
        raise InputError(
            path,
            f"is {arr.ndim}-D (shape {shape_txt}); allowed: a 2-D YX image or a "
            "3-D ZYX stack (4-D/5-D with T and C axes named in the metadata)",
        )
    if len(axes) != arr.ndim:
        raise InputError(path, f"axis names {axes!r} do not match its shape {shape_txt}")
    if 0 in shape:
        named = ", ".join(f"{a if axes_known and a != '?' else i}" for i, (a, n) in enumerate(zip(axes, shape)) if not n)
        raise InputError(path, f"has no voxels: shape {shape_txt} has size 0 along axis {named}")
    if not axes_known:
        # no axis names: leading singleton axes are harmless, then 2-D = YX, 3-D = ZYX
        while arr.ndim > 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim > 3:
            raise InputError(
                path,
                f"is a {len(shape)}-D array (shape {shape_txt}) without axis names; "
                "it cannot be interpreted (which axis is Z, C or T?). Allowed: 2-D "
                "YX, 3-D ZYX, or 4-D/5-D with axis names in the metadata "
                "(OME-TIFF, ImageJ hyperstack, OME-Zarr)",
            )
        axes = "ZYX"[-arr.ndim:]
        shape = tuple(int(n) for n in arr.shape)
    if len(set(axes)) != len(axes) and all(a in "TCZYX" for a in axes):
        raise InputError(path, f"has repeated axis names {axes!r}")
    # samples (RGB) are channels
    if "S" in axes:
        if "C" in axes and shape[axes.index("C")] > 1 and shape[axes.index("S")] > 1:
            raise InputError(
                path, f"has both channels and samples per pixel (axes {axes!r}); "
                "cannot tell which to use"
            )
        if "C" in axes:
            # keep the larger of the two as the channel axis, drop the singleton
            ci, si = axes.index("C"), axes.index("S")
            drop = si if shape[si] == 1 else ci
            arr = arr[tuple(0 if i == drop else slice(None) for i in range(arr.ndim))]
            axes = axes[:drop] + axes[drop + 1:]
            shape = shape[:drop] + shape[drop + 1:]
        axes = axes.replace("S", "C")

    # drop singleton axes other than Y, X, C (C kept to validate `channel`)
    keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if n > 1 or a in "YXC"]
    if len(keep) != len(axes):
        arr = arr[tuple(slice(None) if i in keep else 0 for i in range(len(axes)))]
        axes = "".join(axes[i] for i in keep)
        shape = tuple(shape[i] for i in keep)

    unknown = [a for a in axes if a not in "TCZYX"]
    if unknown:
        if len(axes) == 3 and axes[1:] == "YX":
            axes = "Z" + axes[1:]
        else:
            raise InputError(
                path,
                f"has axis order {orig_axes!r} (shape {shape_txt}); it cannot be "
                f"interpreted (unknown axes {''.join(unknown)!r}). Allowed axes: "
                "T (time points), C (channels), Z, Y, X; save the stack as an "
                "ImageJ hyperstack or OME-TIFF with named axes",
            )
    if "Y" not in axes or "X" not in axes:
        raise InputError(path, f"has axis order {axes!r} without both Y and X axes")

    if "T" in axes:  # more than one time point (a singleton T was dropped above)
        ti = axes.index("T")
        n_t = shape[ti]
        if timepoint is None:
            raise TimepointNotChosen(path, n_t)
        if not isinstance(timepoint, (int, np.integer)) or isinstance(timepoint, bool) or not 0 <= timepoint < n_t:
            raise InputError(path, out_of_range("time point", timepoint, n_t))
        arr = arr[tuple(int(timepoint) if i == ti else slice(None) for i in range(len(axes)))]
        axes = axes.replace("T", "")
        shape = shape[:ti] + shape[ti + 1:]
    elif timepoint not in (None, 0):
        raise InputError(path, out_of_range("time point", timepoint, 1))
    if "C" in axes:
        ci = axes.index("C")
        n_c = shape[ci]
        if channel is None and n_c > 1:
            raise ChannelNotChosen(path, n_c)
        c = 0 if channel is None else channel
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < n_c:
            raise InputError(path, out_of_range("channel", channel, n_c))
        arr = arr[tuple(int(c) if i == ci else slice(None) for i in range(len(axes)))]
        axes = axes.replace("C", "")
    elif channel not in (None, 0):
        raise InputError(path, out_of_range("channel", channel, 1))

    if "Z" not in axes:
        arr = arr[None]
        axes = "Z" + axes
    order = [axes.index(a) for a in "ZYX"]
    if order != [0, 1, 2]:
        arr = arr.transpose(order)
    return arr


def beyond_float32(path: str, n: int, largest: float, size: int) -> InputError:
    """The error for ``n`` finite voxels (of a float64 input) that float32 cannot hold."""
    return InputError(path, f"has {n} voxels beyond the float32 range (|value| > {float(np.finfo(np.float32).max):.3g}; "
                            f"largest {largest:.3g}) out of {size}; selfres computes in float32: rescale the data "
                            "(e.g. divide it by a constant) before restoring")


def _finish(path: str, arr, *, lazy: bool, cast: bool = True) -> tuple[Any, np.dtype]:
    """Convert to float32 (numpy or dask) and check finiteness when eager; ``cast=False``
    (lazy only) keeps the file's own dtype."""
    dtype = _check_dtype(path, arr.dtype)
    if lazy:
        if not isinstance(arr, da.Array):
            arr = da.asarray(arr)
        return (arr.astype(np.float32) if cast else arr), dtype
    if isinstance(arr, da.Array):
        try:
            arr = arr.compute()
        except MemoryError:  # the job's memory, not the file: said as such (cli: exit 3)
            raise
        except Exception as exc:  # noqa: BLE001 - library errors become InputError
            raise InputError(path, f"cannot read its data ({_describe(exc)})") from exc
    with np.errstate(over="ignore"):  # float64 beyond float32's range: reported below
        data = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad and dtype.itemsize > 4:  # finite in the file, beyond float32's range: say so
            over = np.isfinite(arr) & ~np.isfinite(data)
            if over.any():
                raise beyond_float32(path, int(np.count_nonzero(over)), float(np.abs(arr[over]).max()), data.size)
        if n_bad:
            n_nan = int(np.count_nonzero(np.isnan(data)))
            raise InputError(
                path,
                f"contains {n_bad} non-finite voxels ({n_nan} NaN, {n_bad - n_nan} "
                f"Inf) out of {data.size}; replace them (e.g. by 0) before restoring",
            )
    return data, dtype


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _check_exists(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(path, "does not exist (no such file or store)" + formats.missing_path_hint(path))
    if not (p.is_file() or p.is_dir()):  # a FIFO or a device: reading it would block or never end
        raise InputError(path, "is neither a file nor a folder (a pipe, socket or device?); give an image file "
                               "or a Zarr store")
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes)")
    return p


def _kind(path: str) -> str:
    """``"tiff"`` or ``"zarr"``; raises for anything else."""
    p = _check_exists(path)
    if p.is_dir():
        if formats.is_zarr_store(p):
            return "zarr"
        problem = formats.unread_format(p)
        if problem:
            raise InputError(path, problem)
        raise InputError(
            path,
            "is a directory but not a Zarr store (no zarr.json, .zgroup or .zarray); "
            "allowed: a TIFF/OME-TIFF file or a Zarr/OME-Zarr store",
        )
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head in _TIFF_MAGIC:
        return "tiff"
    problem = formats.unread_format(p)
    if problem:
        raise InputError(path, problem)
    raise InputError(
        path,
        "is not a TIFF file (unrecognised header) nor a Zarr store; allowed: a "
        "TIFF/OME-TIFF file or a Zarr/OME-Zarr directory",
    )


# --------------------------------------------------------------------------- #
# TIFF
# --------------------------------------------------------------------------- #


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - trivial
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tiff_log() -> Iterator[_LogCapture]:
    logger = logging.getLogger("tifffile")
    handler = _LogCapture()
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


_CORRUPT_HINTS = ("invalid page offset", "failed to reshape", "corrupt", "truncat")


def _tiff_integrity(path: str, series, log: _LogCapture) -> None:
    for msg in log.messages:
        if any(h in msg.lower() for h in _CORRUPT_HINTS):
            raise InputError(path, f"is truncated or corrupt (tifffile: {msg.strip()})")
    shape = tuple(int(n) for n in getattr(series, "shape", ()) or ())
    if 0 in shape:
        raise InputError(path, f"has no voxels: its image has shape {'x'.join(map(str, shape))}")
    size = os.path.getsize(path)
    end = 0
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        end = int(offset) + int(series.nbytes)
    else:
        for page in series.pages:
            if page is None:
                raise InputError(path, "is truncated or corrupt (a TIFF page is missing)")
            for o, n in zip(page.dataoffsets, page.databytecounts):
                end = max(end, int(o) + int(n))
    if end > size:
        raise InputError(
            path,
            f"is truncated: its data should end at byte {end} but the file has "
            f"{size} bytes",
        )


def _tiff_path(tif) -> str:
    """The open TIFF's path (``filename`` is its base name only: two samples' raw.tif would
    share a warning)."""
    return str(getattr(getattr(tif, "filehandle", None), "path", None) or getattr(tif, "filename", "TIFF"))


@functools.lru_cache(maxsize=256)
def _warn_once(message: str, *args) -> None:
    """A metadata warning, once per process for the same file and values (``selfres inspect``
    reads a file's header several times)."""
    log.warning(message, *args)


#: TIFF resolution tags in inches are read as a pixel size only at this many pixels per inch or more (a pixel of
#: 25.4 µm or less; a microscope's overview at 10 µm is 2540 per inch): 72, 96, 300 and 600 per inch are screens'
#: and printers' defaults, written by software that knows no pixel size (a geometry audit: a 2-D image at 127 000
#: per inch, 0.2 µm pixels, was read with no size and no word)
MICROSCOPE_DPI_AT_LEAST = 1000.0


def _warn_voxel_unknown(path: str, why: str) -> None:
    """Metadata that gives a voxel size selfres cannot use: said once, then read as none."""
    _warn_once("%s: %s; the voxel size is taken as unknown. Give it in the sample sheet column voxel_size "
               "(z,y,x in µm; selfres: --voxel-size)", path, why)


def _lateral_only(lateral, nz: int, where: str, missing: str) -> str:
    """Why a stack whose metadata sizes only its pixels has no voxel size (for the warning)."""
    return (f"{where} the pixel size (y, x: {', '.join(f'{v:g}' for v in lateral)} µm) but {missing} for "
            f"its {nz} planes")


def _number(value) -> float | None:
    """``value`` as a float, ``None`` when it is not a number (``"abc"``, ``None``, a list, ``True``)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _size_problem(name: str, value, unit) -> str | None:
    """Why a metadata voxel size (``value`` in ``unit``, ``None``: the format's default) is
    not one, else ``None``."""
    number = _number(value)
    if number is None:
        return f"{name} is {value!r}, not a number"
    if unit is not None and _unit_factor(unit) is None:
        return f"{name} is in {unit!r}, not a length unit"
    if not (math.isfinite(number) and number > 0):
        return f"{name} is {number:g}, not a voxel size (it must be positive)"
    problem = voxel_size_problem([number * _unit_factor(unit or "µm")], limits=STORED_VOXEL_SIZE_RANGE_UM)
    return f"{name} is {number:g} {unit or 'µm'}: {problem}" if problem else None


def _tiff_voxel(tif, nz: int, series=None, number: int = 0) -> tuple[float, float, float] | None:
    """Voxel size of the TIFF's first image, or of image ``series`` (series ``number``)."""
    # OME-TIFF: the Pixels of the series' Image
    if tif.is_ome and tif.ome_metadata:
        try:
            images = _ome_images(tif)
        except ET.ParseError:
            images = None
        if images is not None:
            if not _images_are_series(images, tif, number):
                _warn_voxel_unknown(_tiff_path(tif), f"its OME metadata describes {len(images)} images and the file "
                                                     f"holds {len(tif.series)} (a multi-file OME-TIFF without all its "
                                                     "files?), so which image's size is this image's is not certain")
                return None
            pixels = _series_pixels(images, tif, number)
            if pixels is not None:
                sizes, problems = [], []
                for ax in "ZYX":
                    val, unit = pixels.get(f"PhysicalSize{ax}"), pixels.get(f"PhysicalSize{ax}Unit")
                    problem = None if val is None else _size_problem(f"PhysicalSize{ax}", val, unit)
                    if not (ax == "Z" and nz == 1):  # a single plane's z size is not used: y's stands for it
                        problems += [problem] if problem else []
                    sizes.append(float(val) * _unit_factor(unit or "µm") if val is not None and not problem else None)
                if problems:
                    _warn_voxel_unknown(_tiff_path(tif), "in its OME metadata, " + "; ".join(problems))
                    return None
                vox = _make_voxel(*sizes, nz)
                if vox is not None:
                    return vox
                if sizes[0] is None and None not in sizes[1:] and not tif.is_imagej:
                    # (an ImageJ description beside the OME-XML, as Micro-Manager writes, may give the z step)
                    _warn_voxel_unknown(_tiff_path(tif), _lateral_only(sizes[1:], nz, "its OME metadata gives",
                                                                       "no PhysicalSizeZ"))
                    return None
    # ImageJ (or a plain TIFF with a physical resolution unit)
    if series is not None and number:
        page = series.keyframe
    else:
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    tags = page.tags
    ij = tif.imagej_metadata or {}
    fac = None
    inches = False
    if tif.is_imagej:
        # ImageJ's unit is x's; y and z have their own (yunit, zunit) where they differ, as
        # ImageJ writes them when a calibration has per-axis units (e.g. from Bio-Formats)
        units = {ax: ij.get(key) or ij.get("unit") for ax, key in (("x", "unit"), ("y", "yunit"), ("z", "zunit"))}
        unknown = sorted({str(u) for u in units.values()
                          if u is not None and str(u).strip().lower() not in ("", "pixel", "pixels")
                          and _unit_factor(u) is None})
        if unknown:
            _warn_voxel_unknown(_tiff_path(tif), "its ImageJ metadata gives the unit " + " and ".join(
                repr(u) for u in unknown) + ", not a length unit")
            return None
        factors = {ax: _unit_factor(u) for ax, u in units.items()}
        if factors["x"] is None or factors["y"] is None:
            spacing = _number(ij.get("spacing"))
            if spacing is not None and spacing != 1 and nz > 1:  # uncalibrated, but its z step says something
                _warn_voxel_unknown(_tiff_path(tif), f"its ImageJ metadata is not calibrated (unit 'pixel'): its z "
                                                     f"spacing of {spacing:g} gives the z step in pixels, not in µm "
                                                     f"(with a pixel of p µm the voxel size is {spacing:g}·p, p, p)")
            return None
        fac, yfac, zfac = factors["x"], factors["y"], factors["z"] or factors["x"]
    elif "ResolutionUnit" in tags:
        # TIFF ResolutionUnit: 2 = inch, 3 = centimetre; tifffile also writes 4 = mm, 5 = µm
        code = int(tags["ResolutionUnit"].value)
        fac = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(code)
        yfac = zfac = fac
        inches = code == 2
    if fac is None:
        return None

    def _res(name: str, factor: float) -> float | None:
        if name not in tags:
            return None
        num, den = tags[name].value
        if not num or not den:
            return None
        return float(den) / float(num) * factor

    if inches:  # a microscope's pixel only at a microscope's density, else a screen or print default
        pixel = (_res("YResolution", fac), _res("XResolution", fac))
        if None in pixel or max(pixel) > 25400 / MICROSCOPE_DPI_AT_LEAST:
            if None not in pixel:
                _warn_voxel_unknown(_tiff_path(tif), (
                    f"its TIFF resolution tags give {', '.join(f'{25400 / v:g}' for v in pixel)} pixels per inch (y, "
                    f"x), a screen or print setting rather than a microscope's pixel (under "
                    f"{MICROSCOPE_DPI_AT_LEAST:g} per inch: {25400 / MICROSCOPE_DPI_AT_LEAST:g} µm or larger)"))
            return None
    z = ij.get("spacing")
    if z is not None and _number(z) is None:
        _warn_voxel_unknown(_tiff_path(tif), f"the ImageJ metadata gives a z spacing of {z!r}, which is not a number")
        return None
    z = float(z) * zfac if z is not None else None
    if z is None and tif.is_imagej and nz > 1 and _res("YResolution", yfac) and _res("XResolution", fac):
        # ImageJ writes no spacing when the z step is 1 unit, and reads none as 1 unit
        z = zfac
        _warn_once("%s: the ImageJ metadata gives the pixel size but no z spacing, which ImageJ writes only "
                   "when the z step is not 1 %s: the z step is taken as 1 %s (%g µm), as ImageJ and Fiji read "
                   "it. If that is wrong, give the voxel size in the sample sheet column voxel_size (z,y,x in "
                   "µm; selfres: --voxel-size)", _tiff_path(tif), ij.get("zunit") or ij.get("unit"),
                   ij.get("zunit") or ij.get("unit"), z)
    if z is not None and nz > 1 and not z > 0:  # dropped below: say so, it is not a missing value
        _warn_once("%s: the ImageJ metadata gives a z spacing of %g µm, which is not a voxel size; the voxel size "
                   "is taken as unknown. Give it in the sample sheet column voxel_size (z,y,x in µm; selfres: "
                   "--voxel-size): for a stack saved in reverse z order, which may carry a negative spacing, "
                   "give the spacing's absolute value", _tiff_path(tif), z)
    lateral = (_res("YResolution", yfac), _res("XResolution", fac))
    vox = _make_voxel(z, *lateral, nz)
    if vox is None and z is None and None not in lateral:
        _warn_voxel_unknown(_tiff_path(tif), _lateral_only(lateral, nz, "its TIFF resolution tags give", "no z step"))
        return None
    problem = None if vox is None else voxel_size_problem(vox, limits=STORED_VOXEL_SIZE_RANGE_UM)
    if problem:
        _warn_voxel_unknown(_tiff_path(tif), f"its ImageJ or TIFF resolution metadata gives a voxel size of "
                                             f"{', '.join(f'{v:g}' for v in vox)} µm; {problem}")
        return None
    return vox


def _open_tiff(path: str):
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot be read as TIFF ({_describe(exc)})") from exc


def _tiff_series(path: str, tif, number: int | None = None):
    """The series to read: the first, or image ``number`` (a series number of
    :func:`_tiff_images`)."""
    try:
        if number in (None, 0):
            series = tif.series[0]
        else:
            images = dict(_tiff_images(tif))
            if number not in images:
                raise InputError(path, series_out_of_range(number, images))
            series = images[number]
        _ = series.axes, series.shape, series.dtype
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"is a corrupt TIFF ({_describe(exc)})") from exc
    return series


def _tiff_codec(path: str, series) -> None:
    """Refuse, with the fix named, a TIFF whose compression cannot be decoded here.

    LZW, zstd, JPEG… need the package ``imagecodecs`` (a selfres dependency); without it
    tifffile's error surfaced as "is truncated or corrupt".
    """
    import tifffile

    try:
        comp = series.keyframe.compression
    except Exception:  # noqa: BLE001 - the read below reports a broken file
        return
    try:
        tifffile.TIFF.DECOMPRESSORS[comp]
    except KeyError as exc:
        name = getattr(comp, "name", None) or str(comp)
        if "imagecodecs" in str(exc):
            how = ("which needs the Python package imagecodecs: install it (pip install imagecodecs, or "
                   "reinstall selfres, which depends on it)")
        else:
            how = "which tifffile cannot decode: save it uncompressed or with LZW, deflate or zstd"
        raise InputError(path, f"is compressed with {name} (TIFF compression {int(comp)}), {how}") from None


def _tiff_images(tif) -> list[tuple[int, object]]:
    """``(series number, series)`` of the images of a TIFF: its series, less the
    reduced-resolution ones (thumbnails, previews: NewSubfileType bit 0, e.g. an LSM file's).
    A pyramid's sub-resolution levels (OME-TIFF SubIFDs) belong to their image's series."""
    return [(i, s) for i, s in enumerate(tif.series) if not (getattr(s.keyframe, "is_reduced", False) and i > 0)]


def _tiff_one_image(path: str, tif) -> None:
    """Refuse a TIFF holding several images (TIFF series) when none was chosen: it would be
    read as its first.

    Any second image (an OME-TIFF of several images or positions, planes written one by one
    as separate series, an unrelated image appended) is refused, naming them all.
    """
    try:
        full = _tiff_images(tif)
        described = [f"series {i}: {'x'.join(str(n) for n in s.shape)} {s.axes}"
                     + (f" {s.name!r}" if getattr(s, "name", "") else "") for i, s in full]
    except Exception:  # noqa: BLE001 - series 0 has been read; a broken extra is reported below
        return
    if len(full) < 2:
        return
    same = len({tuple(s.shape) for _, s in full}) == 1
    planes = same and all(len(s.shape) == 2 or (len(s.shape) == 3 and s.axes[-1] in "SC") for _, s in full)
    shown = "; ".join(described[:6]) + (f"; … ({len(full) - 6} more)" if len(full) > 6 else "")
    raise SeriesNotChosen(
        path,
        f"holds {len(full)} images (TIFF series{', all of the same shape' if same else ' of different shapes'}: "
        f"{shown}); selfres will not guess which to restore: choose one with series=N (sample sheet column "
        "'series', where all makes one sample per image; --series for the selfres commands; config "
        "inbox_columns for inbox acquisitions)"
        + ("; if they are the planes of one z-stack written one by one, each would be a 2-D image: save them "
           "as one stack (Fiji: Image > Stacks > Images to Stack, then save as TIFF)" if planes else ""),
        n_images=len(full),
    )


def _read_tiff(path: str, *, channel: int | None, lazy: bool, cast: bool = True,
               timepoint: int | None = None, series: int | None = None) -> Volume:
    import tifffile

    with _tiff_log() as log:
        tif = _open_tiff(path)
        try:
            number = series
            series = _tiff_series(path, tif, number)
            _tiff_integrity(path, series, log)
            if number is None:
                _tiff_one_image(path, tif)
            _tiff_codec(path, series)
            _check_dtype(path, series.dtype)
            axes = series.axes
            try:
                if lazy:
                    # level 0: a pyramid (SubIFDs) opens as a group of levels otherwise
                    store = tifffile.imread(path, aszarr=True, series=number or 0, level=0)
                    arr = da.from_zarr(_tiff_as_zarr(store))
                else:
                    arr = series.asarray()
            except (ConfigError, MemoryError):  # a MemoryError is the job's memory, not the file
                raise
            except Exception as exc:  # noqa: BLE001
                raise InputError(path, f"is truncated or corrupt ({_describe(exc)})") from exc
            # a shaped series may silently lose planes when IFDs are broken
            if tuple(arr.shape) != tuple(series.shape):
                raise InputError(path, "is truncated or corrupt (fewer planes than declared)")
            _tiff_integrity(path, series, log)
            data = _to_zyx(arr, axes, channel=channel, timepoint=timepoint, path=path, axes_known=True)
            vox = _tiff_voxel(tif, int(data.shape[0]), series, number or 0)
        finally:
            tif.close()
    data, dtype = _finish(path, data, lazy=lazy, cast=cast)
    return Volume(data=data, voxel_size=vox, source_dtype=dtype, path=path, attrs={})


def _tiff_as_zarr(store) -> zarr.Array:
    """tifffile's Zarr view of a TIFF as a zarr array. A pair of tifffile and zarr releases
    that do not fit (zarr 3.1.6 with tifffile 2025.5.10 or older; zarr 3.0 with tifffile 2026)
    fails here with a TypeError for every TIFF: the installation's fault, not the file's."""
    import tifffile

    try:
        return zarr.open_array(store, mode="r")
    except TypeError as exc:
        raise ConfigError(f"tifffile {tifffile.__version__} and zarr {zarr.__version__} do not work together, so no "
                          f"TIFF can be read ({exc}); install tifffile>=2025.5.21 and zarr>=3.1.5 (pip install -U "
                          "tifffile zarr)") from exc


def _tiff_voxel_only(path: str) -> tuple[float, float, float] | None:
    with _tiff_log():
        tif = _open_tiff(path)
        try:
            series = _tiff_series(path, tif)
            axes, shape = series.axes.upper(), series.shape
            nz = shape[axes.index("Z")] if "Z" in axes else (
                shape[0] if len(shape) == 3 and axes[0] not in "TCS" and axes[1:] == "YX" else 1  # not YXS (RGB)
            )
            return _tiff_voxel(tif, int(nz))
        finally:
            tif.close()


# --------------------------------------------------------------------------- #
# Zarr / OME-Zarr
# --------------------------------------------------------------------------- #


def _check_ome_zarr_folder(path: str) -> None:
    """Refuse a file where an OME-Zarr store (a folder) is read: zarr would call it corrupt."""
    if _check_exists(path).is_file():
        raise InputError(path, "is a file, not an OME-Zarr store (a folder such as restored.ome.zarr or "
                               "normalized.ome.zarr)")


def _open_zarr(path: str, *, mode: str = "r"):
    try:
        return zarr.open(path, mode=mode)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"is a corrupt Zarr store ({_describe(exc)})") from exc


def _ome_attrs(group) -> dict:
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), Mapping) else attrs


def _bioformats2raw_series(node) -> list[int] | None:
    """The series of a store in bioformats2raw's layout (a root group marked
    ``bioformats2raw.layout``, one OME-Zarr image per series in groups ``0``, ``1``, …: what
    ``bioformats2raw scan.czi scan.ome.zarr`` writes), or ``None`` for any other store."""
    if not isinstance(node, zarr.Group):
        return None
    attrs = _ome_attrs(node)
    if "bioformats2raw.layout" not in attrs or "multiscales" in attrs:
        return None
    return sorted(int(k) for k in node.group_keys() if k.isdigit())


def _zarr_image(path: str, series: int | None = None):
    """The image of a Zarr store: the store itself, or in bioformats2raw's layout the group
    of series ``series`` (default 0)."""
    node = _open_zarr(path)
    numbers = _bioformats2raw_series(node)
    if numbers is None:
        if series not in (None, 0):
            raise InputError(path, f"series {series!r} is out of range: a Zarr store is read as one image (series "
                                   "0); for a store of several images give the path of the image's own group")
        return node
    if series is None and len(numbers) > 1:
        raise SeriesNotChosen(
            path, f"holds {len(numbers)} images (bioformats2raw series {', '.join(map(str, numbers))}); selfres will "
                  "not guess which to restore: choose one with series=N (sample sheet column 'series', where all "
                  "makes one sample per image; --series for the selfres commands; config inbox_columns for inbox "
                  "acquisitions)", n_images=len(numbers))
    index = series or 0
    if index not in numbers:
        raise InputError(path, f"series {index} is out of range: this bioformats2raw store holds series "
                               f"{', '.join(map(str, numbers)) or 'none'}")
    return node[str(index)]


def _multiscale(path: str, group) -> dict:
    ome = _ome_attrs(group)
    ms = ome.get("multiscales")
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], Mapping):
        names = sorted(group.array_keys())
        raise InputError(
            path,
            "is a Zarr group without OME-Zarr 'multiscales' metadata "
            f"(arrays in it: {names or 'none'}); give the path of the array itself "
            "or an OME-Zarr image",
        )
    return ms[0]


def _axes_letters(path: str, axes) -> tuple[str, list[str | None]]:
    letters, units = "", []
    if not isinstance(axes, list) or not all(isinstance(ax, (str, Mapping)) for ax in axes):
        raise InputError(path, f"has OME-Zarr axes {json.dumps(axes)[:120]}, which cannot be interpreted: NGFF "
                               "gives a list of objects such as {\"name\": \"z\", \"type\": \"space\"}")
    for ax in axes:
        if isinstance(ax, str):
            name, typ, unit = ax, None, None
        else:
            name, typ, unit = ax.get("name", ""), ax.get("type"), ax.get("unit")
        name_l = str(name).lower()
        if typ == "time" or name_l == "t":
            letters += "T"
        elif typ == "channel" or name_l == "c":
            letters += "C"
        elif name_l in ("z", "y", "x"):
            letters += name_l.upper()
        else:
            letters += "?"
        units.append(unit)
    if "?" in letters:
        names = [a if isinstance(a, str) else a.get("name") for a in axes]
        raise InputError(
            path,
            f"has OME-Zarr axes {names} which cannot be interpreted; allowed axis "
            "names: t, c, z, y, x",
        )
    return letters, units


class _BadTransforms(ValueError):
    """OME-Zarr coordinateTransformations that do not say what NGFF allows."""


def _transform(transforms, kind: str, ndim: int, where: str) -> list[float] | None:
    """The values of the first ``scale`` or ``translation`` transformation of a list, one per
    axis; :class:`_BadTransforms` when the list or that transformation is malformed."""
    if transforms is None:
        return None
    if not isinstance(transforms, list) or not all(isinstance(t, Mapping) for t in transforms):
        raise _BadTransforms(f"{where} is {json.dumps(transforms)[:80]}, not a list of objects")
    for t in transforms:
        if t.get("type") == kind and kind in t:
            values = t[kind]
            numbers = [_number(v) for v in values] if isinstance(values, list) else [None]
            if any(v is None for v in numbers) or len(numbers) != ndim:
                raise _BadTransforms(f"the {kind} of {where} is {json.dumps(values)[:80]}, not {ndim} numbers "
                                     f"(one per axis)")
            return numbers
    return None


def _level_translation(ms: Mapping, level: int, ndim: int) -> list[float] | None:
    """Where voxel 0 of a level sits: its dataset's translation, then the multiscale's own
    scale and translation (NGFF applies the dataset's transformations first); ``None``
    when neither translates."""
    ds_t = _transform(ms["datasets"][level].get("coordinateTransformations"), "translation", ndim,
                      f"dataset {level}'s coordinateTransformations")
    glob = ms.get("coordinateTransformations")
    where = "the multiscale's coordinateTransformations"
    glob_s, glob_t = _transform(glob, "scale", ndim, where), _transform(glob, "translation", ndim, where)
    if ds_t is None and glob_t is None:
        return None
    t = ds_t if ds_t is not None else [0.0] * ndim
    if glob_s is not None:
        t = [a * b for a, b in zip(t, glob_s)]
    if glob_t is not None:
        t = [a + b for a, b in zip(t, glob_t)]
    return t


def _level_scale(ms: Mapping, level: int, ndim: int) -> list[float] | None:
    ds_scale = _transform(ms["datasets"][level].get("coordinateTransformations"), "scale", ndim,
                          f"dataset {level}'s coordinateTransformations")
    glob = _transform(ms.get("coordinateTransformations"), "scale", ndim, "the multiscale's coordinateTransformations")
    if ds_scale is None and glob is None:
        return None
    s = ds_scale or [1.0] * ndim
    if glob is not None:
        s = [a * b for a, b in zip(s, glob)]
    return s


def _ome_zarr_level(path: str, group, level: int):
    """Return (zarr array, axes letters, voxel size, origin) of one OME-Zarr level (origin in
    voxel steps: see :attr:`Volume.origin_voxels`)."""
    ms = _multiscale(path, group)
    datasets = ms.get("datasets") or []
    if not isinstance(datasets, list) or not datasets:
        raise InputError(path, f"has OME-Zarr multiscales metadata without images: its datasets are "
                               f"{json.dumps(ms.get('datasets'))[:80]}, not a list of pyramid levels")
    if not isinstance(level, (int, np.integer)) or not 0 <= level < len(datasets):
        raise InputError(
            path,
            f"level {level!r} does not exist: the pyramid has {len(datasets)} "
            f"level{'s' if len(datasets) != 1 else ''} (allowed 0..{len(datasets) - 1})",
        )
    try:
        arr = group[datasets[level]["path"]]
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            path, f"pyramid level {level} cannot be opened ({_describe(exc)})"
        ) from exc
    axes = ms.get("axes")
    if axes is None:  # NGFF 0.1/0.2: always tczyx
        axes = list("tczyx")[-arr.ndim:]
    letters, units = _axes_letters(path, axes)
    if len(letters) != arr.ndim:
        raise InputError(
            path, f"declares {len(letters)} axes but level {level} is {arr.ndim}-D"
        )
    try:
        scale = _level_scale(ms, level, arr.ndim)
        translation = _level_translation(ms, level, arr.ndim)
    except _BadTransforms as exc:
        _warn_voxel_unknown(path, f"its OME-Zarr metadata cannot be read: {exc} (and the image's position is "
                                  "taken as 0)")
        scale = translation = None
    sizes: dict[str, float | None] = {}
    origin: list[float] = []
    problems = []
    for ax in "ZYX":
        i = letters.index(ax) if ax in letters else None
        if i is None or scale is None:
            sizes[ax] = None
        else:
            unit = units[i]
            if unit is None:
                # no unit: micrometres unless the scale is plain pixel steps
                # (the spatial axes' steps: a time or channel step says nothing about them)
                fac = None if all(scale[letters.index(a)] == 1.0 for a in "ZYX" if a in letters) else 1.0
            else:
                fac = _unit_factor(unit)
            nz_here = arr.shape[i] if ax == "Z" else 2
            problem = None if unit is None and fac is None else \
                _size_problem(f"the scale of axis {ax.lower()}", scale[i], unit)
            # an unusable z step of a single plane (often 0) is no voxel size problem: y's stands in, as
            # for an OME-TIFF; a usable one is kept (a plane of a z stack written back out keeps its step)
            problems += [problem] if problem and nz_here > 1 else []
            sizes[ax] = scale[i] * fac if fac is not None and not problem else None
        # in voxel steps: translation / scale (no unit involved; a zero scale places nothing)
        shift = translation[i] if translation is not None and i is not None else 0.0
        step = scale[i] if scale is not None and i is not None else 1.0
        origin.append(shift / step if step else 0.0)
    if problems:
        _warn_voxel_unknown(path, "in its OME-Zarr metadata, " + "; ".join(problems))
        sizes = dict.fromkeys("ZYX")
    unitless = [ax.lower() for ax in "ZYX"
                if ax in letters and sizes[ax] is not None and units[letters.index(ax)] is None]
    ours = ATTRS_KEY in dict(group.attrs)  # selfres writes no unit only for a size it does not know
    if unitless and not ours:
        _warn_once("%s: its OME-Zarr axes %s carry no unit; their scale (%s) is read as µm, which the NGFF format "
                   "leaves open. If the file was written in another unit (nm), give the voxel size in the sample "
                   "sheet column voxel_size (z,y,x in µm; selfres: --voxel-size)", path, ", ".join(unitless),
                   ", ".join(f"{sizes[ax.upper()]:g}" for ax in unitless))
    nz = arr.shape[letters.index("Z")] if "Z" in letters else 1
    vox = _make_voxel(sizes["Z"], sizes["Y"], sizes["X"], int(nz))
    return arr, letters, vox, (tuple(origin) if any(origin) else None)


def _plain_zarr_axes(arr) -> tuple[str, bool]:
    names = getattr(arr.metadata, "dimension_names", None)
    if not names:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    if names and len(names) == arr.ndim and all(n for n in names):
        letters = ""
        for n in names:
            n = str(n).lower()
            letters += {"t": "T", "time": "T", "c": "C", "channel": "C"}.get(
                n, n.upper() if n in ("z", "y", "x") else "?"
            )
        return letters, True
    return "?" * arr.ndim, False


def warn_absent_chunks(path: str | os.PathLike, *, series: int | None = None) -> None:
    """Say when chunks of a Zarr acquisition's image (level 0) are absent: zarr reads each as
    its fill value, so a store whose copy has not finished (rsync writes .zarray first) gave
    blocks of zeros that shifted the whole normalisation, without a word. Not an error: a
    writer may leave out chunks that hold only the fill value. It lists the store's chunks, so
    normalise asks it once, not every reading of a header. Nothing for a TIFF, or a store
    that selfres wrote."""
    path = os.fspath(path)
    if _kind(path) == "tiff":
        return
    node = _zarr_image(path, series)
    if ATTRS_KEY in dict(node.attrs):
        return
    arr = _ome_zarr_level(path, node, 0)[0] if isinstance(node, zarr.Group) else node
    try:
        total, present = int(arr.nchunks), int(arr.nchunks_initialized)
    except Exception:  # noqa: BLE001 - a store that cannot list its chunks: nothing to say
        return
    if present < total:
        _warn_once("%s: %d of its %d chunks are absent and read as the fill value (%s): a copy that has not "
                   "finished, or a writer that leaves out chunks holding only that value (then all is well). If "
                   "the copy is not complete, finish it and run again; touch the store's folder so that Snakemake "
                   "sees it changed", path, total - present, total, arr.fill_value)


def _read_zarr(path: str, *, channel: int | None, lazy: bool, level: int = 0,
               require_ome: bool = False, cast: bool = True, timepoint: int | None = None,
               series: int | None = None) -> Volume:
    node = _zarr_image(path, series)
    if isinstance(node, zarr.Group):
        arr, letters, vox, origin = _ome_zarr_level(path, node, level)
        attrs = dict(node.attrs.get(ATTRS_KEY, {}) or {})
        known = True
    else:
        if require_ome:
            raise InputError(path, "is a plain Zarr array, not an OME-Zarr image")
        arr, attrs = node, {k: v for k, v in node.attrs.items() if k != "_ARRAY_DIMENSIONS"}
        letters, known = _plain_zarr_axes(arr)
        vox = origin = None
    _check_dtype(path, arr.dtype)
    darr = da.from_zarr(arr)
    data = _to_zyx(darr, letters, channel=channel, timepoint=timepoint, path=path, axes_known=known)
    data, dtype = _finish(path, data, lazy=lazy, cast=cast)
    if vox is not None and (not known or attrs.get("voxel_size_known") is False):
        vox = None  # selfres's own store of an input without a voxel size: scaled in its voxels
    return Volume(data=data, voxel_size=vox, source_dtype=dtype, path=path, attrs=attrs, origin_voxels=origin)


# --------------------------------------------------------------------------- #
# public readers
# --------------------------------------------------------------------------- #


def read_volume(path: str | os.PathLike, *, channel: int | None = None,
                lazy: bool = False, timepoint: int | None = None, series: int | None = None,
                cast: bool = True) -> Volume:
    """Read a TIFF / OME-TIFF file or a Zarr / OME-Zarr store as a ZYX volume.

    Parameters
    ----------
    path
        TIFF or OME-TIFF file, plain Zarr array, or OME-Zarr image (level 0 is read).
    channel
        Channel index; required when the file has more than one channel.
    lazy
        Return a dask array instead of reading everything (no finiteness check).
    timepoint
        Time point index; required when the file has more than one (a T axis named in its
        metadata). Lazy reads read only that time point.
    series
        Image of a TIFF holding several (TIFF series: OME-TIFF images or positions), by
        series number; required when it holds more than one. A Zarr store is one image.
    cast
        ``False`` (lazy reads only): keep the file's own dtype, e.g. for normalising 32/64-bit
        data with a large offset in float64 (float32 keeps 7 significant digits).

    Returns
    -------
    Volume
        ``data`` is ``float32`` ZYX (``cast=False``: the file's dtype); a 2-D image becomes shape ``(1, Y, X)``.
        ``voxel_size`` comes from OME metadata, ImageJ metadata (``spacing`` and the
        X/YResolution tags) or OME-Zarr ``coordinateTransformations``, in µm.

    Raises
    ------
    InputError
        Missing, empty, truncated or corrupt file; unsupported dtype (bool, complex,
        object); axes that cannot be interpreted; a missing or out-of-range ``channel``
        or ``timepoint``; NaN/Inf voxels (eager reads only).
    """
    path = os.fspath(path)
    if not cast and not lazy:
        raise ValueError("read_volume(cast=False) needs lazy=True (an eager read is float32)")
    reader = _read_tiff if _kind(path) == "tiff" else _read_zarr
    return reader(path, channel=channel, timepoint=timepoint, series=series, lazy=lazy, cast=cast)


def channel_count(path: str | os.PathLike, *, series: int | None = None) -> int:
    """Number of channels of an acquisition (1 for a single-channel stack), from its
    metadata and shape, without reading its voxels.

    Raises
    ------
    InputError
        As :func:`read_volume` for a file it cannot read.
    """
    try:
        read_volume(path, lazy=True, timepoint=0, series=series)  # every time point has the same channels
    except ChannelNotChosen as exc:
        return exc.n_channels
    return 1


def channel_name(path: str | os.PathLike, channel: int | None, *, series: int | None = None) -> str | None:
    """The name an acquisition gives its channel ``channel`` (``"DAPI"``), or ``None``: an
    OME-TIFF's OME ``Channel Name``, an OME-Zarr's ``omero`` channel ``label``. ``channel``
    ``None``: the name of a file's only channel (none where it lists several). Metadata for
    people (layer and channel names of the outputs): ``None`` whenever it cannot be read."""
    try:
        name = _of_channel(_channel_fields(path, series, zarr_key="label", ome_attr="Name"), channel)
    except Exception:  # noqa: BLE001 - a name is optional; the reader says what is wrong with the file
        return None
    return (str(name).strip() or None) if name is not None else None


def _channel_fields(path: str | os.PathLike, series: int | None, *, zarr_key: str, ome_attr: str) -> list:
    """One field of each channel an acquisition lists: an OME-Zarr's ``omero`` channels'
    ``zarr_key``, an OME-TIFF's OME ``Channel`` elements' ``ome_attr`` (none listed: ``[]``)."""
    path = os.fspath(path)
    if _kind(path) == "zarr":
        return [c.get(zarr_key) for c in _ome_attrs(_zarr_image(path, series)).get("omero", {}).get("channels", [])]
    return [e.get(ome_attr) for e in _ome_tiff_channels(path, series)]


def _of_channel(values: Sequence, channel: int | None):
    """``values[channel]``, ``None`` out of range; ``channel`` ``None``: the only value (none of several)."""
    if channel is None:
        channel = 0 if len(values) == 1 else -1
    return values[channel] if 0 <= channel < len(values) else None


#: Fiji's colours for a composite's channels whose file gives none, in channel order (red, green, blue,
#: grey, cyan, magenta, yellow): a restored channel is shown as Fiji shows its input
COMPOSITE_COLORS = ("FF0000", "00FF00", "0000FF", "FFFFFF", "00FFFF", "FF00FF", "FFFF00")


def channel_color(path: str | os.PathLike, channel: int | None, *, series: int | None = None) -> str | None:
    """The display colour an acquisition gives its channel ``channel``, as ``"RRGGBB"``, or
    ``None``: an OME-TIFF's OME ``Channel Color`` (RGBA), an ImageJ hyperstack's LUT (its
    brightest entry), an OME-Zarr's ``omero`` channel ``color``. ``channel`` ``None``: the
    colour of a file's only channel. Metadata for people (the outputs' ``omero`` colour and the
    exported OME-TIFF's): ``None`` whenever it cannot be read."""
    path = os.fspath(path)
    try:
        colors = _channel_fields(path, series, zarr_key="color", ome_attr="Color")
        if _kind(path) != "zarr":
            colors = [_ome_rgb(c) for c in colors] or _imagej_lut_colors(path)
        color = _of_channel(colors, channel)
        color = str(color).strip().lstrip("#").upper() if color is not None else None
    except Exception:  # noqa: BLE001 - a colour is optional; the reader says what is wrong with the file
        return None
    if color is None or not re.fullmatch(r"[0-9A-F]{6}", color):
        return None
    # black (an OME Color of 0 or 255, an inverted LUT's end) would draw the channel invisible: none given
    return None if max(int(color[k:k + 2], 16) for k in (0, 2, 4)) < 0x40 else color


def _ome_rgb(value: Any) -> str | None:
    """An OME ``Color`` (signed RGBA integer) as ``RRGGBB``; ``None`` where absent, unreadable or
    transparent (alpha 0)."""
    try:
        rgba = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    return None if rgba & 0xFF == 0 else f"{rgba >> 8:06X}"


def _imagej_lut_colors(path: str) -> list:
    """An ImageJ hyperstack's channel colours (``RRGGBB``: each LUT's brightest entry; none
    where it has no LUTs)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        luts = (tif.imagej_metadata or {}).get("LUTs") if tif.is_imagej else None
        if isinstance(luts, np.ndarray) and luts.ndim == 2:  # a one-channel stack's LUT comes alone
            luts = [luts]
        # each LUT's brightest entry (the last, except in an inverted LUT)
        return ["".join(f"{int(v):02X}" for v in lut[:3, int(np.argmax(lut[:3].astype(np.int64).sum(axis=0)))])
                for lut in (np.asarray(t) for t in luts or [])]


def series_name(path: str | os.PathLike, series: int | None) -> str | None:
    """The name a file gives its image (series) ``series`` (a position's ``"Pos 3"``), or
    ``None``: an OME-TIFF's OME ``Image Name``, an OME-Zarr image's ``multiscales`` name. For
    people choosing a series (``selfres inspect``): ``None`` whenever it cannot be read."""
    path = os.fspath(path)
    try:
        if _kind(path) == "zarr":
            name = _multiscale(path, _zarr_image(path, series)).get("name")
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                images = _ome_images(tif)
                name = images[series or 0].get("Name") if images and _images_are_series(images, tif, series) \
                    else None
    except Exception:  # noqa: BLE001 - a name is optional; the reader says what is wrong with the file
        return None
    name = (str(name).strip() or None) if name is not None else None
    # a writer's placeholder ('Image0', tifffile's) names no position
    return None if name is None or re.fullmatch(r"Image:?\d+", name) else name


def _ome_images(tif) -> list | None:
    """The OME ``Image`` elements of an OME-TIFF (``None``: not an OME-TIFF)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    return [e for e in ET.fromstring(tif.ome_metadata) if e.tag.endswith("}Image")]


def _series_pixels(images: list, tif, series: int | None):
    """The ``Pixels`` element of the ``Image`` (among ``images``) of TIFF series ``series``, or
    ``None``: tifffile makes one series per Image, in order, but leaves out an Image whose
    planes are in a file that is not there, so where the counts differ (a multi-file OME-TIFF
    without all its files) which Image is which series is not certain."""
    if not _images_are_series(images, tif, series):
        return None
    pixels = [e for e in images[series or 0] if e.tag.endswith("}Pixels")]
    return pixels[0] if pixels else None


def _images_are_series(images: list, tif, series: int | None) -> bool:
    """Whether the OME ``images`` are the TIFF's series one for one (or the one image is series 0)."""
    return len(images) == len(tif.series) or (len(images) == 1 and not series)


def _ome_pixels(tif, series: int | None):
    """The OME ``Pixels`` element of the ``Image`` of TIFF series ``series`` (:func:`_series_pixels`),
    or ``None`` (not an OME-TIFF, or which Image is which series is not certain)."""
    images = _ome_images(tif)
    return None if images is None else _series_pixels(images, tif, series)


def _ome_tiff_channels(path: str, series: int | None) -> list:
    """The OME ``Channel`` elements of the ``Image`` of TIFF series ``series`` (none: not an OME-TIFF)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pixels = _ome_pixels(tif, series)
        return [e for e in pixels if e.tag.endswith("}Channel")] if pixels is not None else []


#: seconds per unit of a time axis (OME ``TimeIncrementUnit``, ImageJ ``tunit``, NGFF axis ``unit``)
_SECONDS_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "millisecond": 1e-3,
                "µs": 1e-6, "us": 1e-6, "microsecond": 1e-6, "min": 60.0, "minute": 60.0, "minutes": 60.0,
                "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0,
                # the rest of the NGFF / UDUNITS time units an OME-Zarr axis may name
                "ns": 1e-9, "nanosecond": 1e-9, "milliseconds": 1e-3, "microseconds": 1e-6,
                "nanoseconds": 1e-9, "days": 86400.0, "ps": 1e-12, "picosecond": 1e-12}


def time_increment(path: str | os.PathLike, *, series: int | None = None) -> float | None:
    """Seconds between an acquisition's time points, or ``None``: an OME-TIFF's OME
    ``TimeIncrement`` (with its unit), an ImageJ hyperstack's ``finterval`` (``tunit``), an
    OME-Zarr's scale along its ``t`` axis (with its unit). Metadata for people (the time-series
    export's frame interval): ``None`` whenever it cannot be read or is not positive."""
    path = os.fspath(path)
    try:
        if _kind(path) == "zarr":
            ms = _multiscale(path, _zarr_image(path, series))
            axes = [a if isinstance(a, Mapping) else {"name": a} for a in ms.get("axes") or []]
            names = [str(a.get("name", "")).lower() for a in axes]
            scale = _level_scale(ms, 0, len(names)) if "t" in names else None
            value, unit = (scale[names.index("t")], axes[names.index("t")].get("unit")) if scale else (None, None)
            if unit is None and value is not None and float(value) == 1.0:
                return None  # plain frame steps (the writers' default), as for unitless spatial steps
        else:
            value, unit = _tiff_time_increment(path, series)
        seconds = float(value) * _SECONDS_PER[str(unit or "s").strip().lower()]
    except Exception:  # noqa: BLE001 - an interval is optional; the reader says what is wrong with the file
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _tiff_time_increment(path: str, series: int | None) -> tuple[Any, Any]:
    """``(value, unit)`` of a TIFF's time step: OME ``TimeIncrement`` of series ``series``, or
    ImageJ ``finterval`` / ``tunit``."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            pixels = _ome_pixels(tif, series)
            return (None, None) if pixels is None else (pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit"))
        meta = tif.imagej_metadata or {}
        return meta.get("finterval"), meta.get("tunit")


def timepoint_count(path: str | os.PathLike, *, series: int | None = None) -> int:
    """Number of time points of an acquisition (1 without a T axis of more than one), from
    its metadata and shape, without reading its voxels.

    Raises
    ------
    InputError
        As :func:`read_volume` for a file it cannot read.
    """
    try:
        read_volume(path, lazy=True, channel=0, series=series)  # every channel has the same time points
    except TimepointNotChosen as exc:
        return exc.n_timepoints
    return 1


def describe_acquisition(path: str | os.PathLike) -> list[dict]:
    """What selfres reads from an acquisition, image by image, from its metadata (no voxels):
    one dict per image (TIFF series) with ``series``, ``shape`` (ZYX of one channel and
    time point), ``dtype`` (as stored), ``channels``, ``timepoints`` and ``voxel_size``
    (z, y, x µm, or None when the file records none).

    Raises
    ------
    InputError
        As :func:`read_volume` for a file it cannot read.
    """
    numbers = series_numbers(path)
    out = []
    for number in numbers:
        series = number if len(numbers) > 1 else None
        n_c = channel_count(path, series=series)
        n_t = timepoint_count(path, series=series)
        vol = read_volume(path, lazy=True, series=series, channel=0 if n_c > 1 else None,
                          timepoint=0 if n_t > 1 else None)
        out.append({"series": number, "shape": tuple(int(n) for n in vol.data.shape),
                    "dtype": str(np.dtype(vol.source_dtype)), "channels": n_c, "timepoints": n_t,
                    "voxel_size": tuple(float(v) for v in vol.voxel_size) if vol.voxel_size else None})
    return out


def series_numbers(path: str | os.PathLike) -> list[int]:
    """Series numbers of the images of an acquisition: ``[0]`` for a single image or a Zarr
    store, e.g. ``[0, 1, 2]`` for an OME-TIFF of three positions; from its metadata only.

    Raises
    ------
    InputError
        As :func:`read_volume` for a file it cannot read.
    """
    path = os.fspath(path)
    if _kind(path) != "tiff":
        return _bioformats2raw_series(_open_zarr(path)) or [0]
    with _tiff_log():
        tif = _open_tiff(path)
        try:
            _tiff_series(path, tif)
            try:
                return [i for i, _ in _tiff_images(tif)] or [0]
            except Exception as exc:  # noqa: BLE001
                raise InputError(path, f"is a corrupt TIFF ({_describe(exc)})") from exc
        finally:
            tif.close()


def read_voxel_size(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """Voxel size ``(z, y, x)`` in µm from a file's metadata, without its data.

    Parameters
    ----------
    path
        TIFF / OME-TIFF file or Zarr / OME-Zarr store.

    Returns
    -------
    tuple of float or None
        ``None`` when the metadata does not give a complete physical voxel size.
    """
    path = os.fspath(path)
    if _kind(path) == "tiff":
        return _tiff_voxel_only(path)
    node = _zarr_image(path)
    if isinstance(node, zarr.Group):
        return _ome_zarr_level(path, node, 0)[2]
    return None


def read_ome_zarr(path: str | os.PathLike, *, level: int = 0,
                  lazy: bool = False) -> Volume:
    """Read one level of an OME-Zarr image.

    Parameters
    ----------
    path
        OME-Zarr image (NGFF 0.4 or 0.5).
    level
        Pyramid level (0 = full resolution).
    lazy
        Return a dask array instead of reading everything.

    Returns
    -------
    Volume
        ``float32`` ZYX data, the level's voxel size, and ``attrs`` = the custom
        ``"selfres"`` attributes of the image (empty dict when absent).
    """
    path = os.fspath(path)
    _check_ome_zarr_folder(path)
    return _read_zarr(path, channel=None, lazy=lazy, level=level, require_ome=True)


def made_from(store: str | os.PathLike, source: str) -> bool:
    """Whether a selfres store (``normalized.ome.zarr``) was made from the acquisition
    ``source``: the path its stage was given (``source`` attribute), or the same file by
    its resolved path (``source_resolved``: another spelling, a symlinked folder). False
    without such a store."""
    from .provenance import names_source

    try:
        attrs = read_ome_zarr(store, lazy=True).attrs
    except Exception:  # noqa: BLE001 - a missing or damaged store records nothing
        return False
    return names_source(attrs, source) is True


def open_ome_zarr_array(path: str | os.PathLike, *, level: int = 0, mode: str = "r"):
    """Open the zarr array of one level of an OME-Zarr image.

    Parameters
    ----------
    path
        OME-Zarr image.
    level
        Pyramid level.
    mode
        ``"r"`` (read only) or ``"r+"`` (write into the existing array).

    Returns
    -------
    zarr.Array
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = os.fspath(path)
    _check_ome_zarr_folder(path)
    node = _open_zarr(path, mode=mode)
    if not isinstance(node, zarr.Group):
        raise InputError(path, "is a plain Zarr array, not an OME-Zarr image")
    return _ome_zarr_level(path, node, level)[0]


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """Default chunk shape ``(min(z, 32), 256, 256)`` clipped to ``shape``."""
    z, y, x = (int(n) for n in shape)
    return (max(1, min(z, 32)), max(1, min(y, 256)), max(1, min(x, 256)))


def _check_voxel(voxel_size) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    try:
        vox = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"voxel_size must be (z, y, x) positive numbers in µm or None, got {voxel_size!r}"
        ) from None
    if len(vox) != 3 or not all(math.isfinite(v) and v > 0 for v in vox):
        raise ValueError(
            f"voxel_size must be (z, y, x) positive numbers in µm or None, got {voxel_size!r}"
        )
    return vox


def _check_ngff(ngff_version: str) -> int:
    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(
            f"ngff_version must be one of {sorted(NGFF_VERSIONS)}, got {ngff_version!r}"
        )
    return NGFF_VERSIONS[ngff_version]


def _check_chunks(chunks, shape) -> tuple[int, int, int]:
    if chunks is None:
        return default_chunks(shape)
    try:
        c = tuple(int(v) for v in chunks)
    except (TypeError, ValueError):
        c = ()
    if len(c) != 3 or min(c) < 1:
        raise ValueError(f"chunks must be 3 positive integers (z, y, x), got {chunks!r}")
    return tuple(min(ci, max(1, n)) for ci, n in zip(c, shape))


def create_ome_zarr(path: str | os.PathLike, *, shape: Sequence[int], dtype,
                    voxel_size, chunks: Sequence[int] | None,
                    ngff_version: str = "0.4",
                    shards: Sequence[int] | None = None) -> zarr.Array:
    """Create an OME-Zarr group with an empty level-0 array ``"0"`` (fill value 0).

    No multiscale metadata is written yet: fill the array, then call
    :func:`finalize_ome_zarr`.

    Parameters
    ----------
    path
        Store to create. An existing Zarr store there is replaced; any other
        existing path is refused.
    shape
        ``(z, y, x)``.
    dtype
        Voxel dtype (integer or floating point).
    voxel_size
        ``(z, y, x)`` in µm, or ``None``; validated here, written by
        :func:`finalize_ome_zarr`.
    chunks
        Chunk shape ``(z, y, x)``, or ``None`` for :func:`default_chunks`.
    ngff_version
        ``"0.4"`` (Zarr v2, read by Fiji/BigDataViewer) or ``"0.5"`` (Zarr v3).
    shards
        Shard shape (Zarr v3 / NGFF 0.5 only), a multiple of ``chunks``.

    Returns
    -------
    zarr.Array
        The level-0 array, open for writing.
    """
    zarr_format = _check_ngff(ngff_version)
    _check_voxel(voxel_size)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive integers (z, y, x), got {shape!r}")
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"dtype must be an integer or floating-point type, got {dtype}")
    chunks = _check_chunks(chunks, shape)
    if shards is not None and zarr_format == 2:
        raise ValueError("shards need ngff_version='0.5' (Zarr v3); got ngff_version='0.4'")
    p = Path(path)
    if p.exists() and not formats.is_zarr_store(p):
        raise FileExistsError(f"{p} exists and is not a Zarr store; refusing to overwrite it")
    group = zarr.open_group(str(p), mode="w", zarr_format=zarr_format)
    kwargs: dict[str, Any] = {}
    if zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = ("z", "y", "x")
        if shards is not None:
            kwargs["shards"] = tuple(int(s) for s in shards)
    return group.create_array(
        "0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, **kwargs
    )


def plan_levels(shape, voxel, max_levels) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Per extra level: (factor relative to the previous level, shape)."""
    vz, vy, vx = voxel if voxel is not None else (1.0, 1.0, 1.0)
    plan = []
    cur = tuple(shape)
    limit = math.inf if max_levels is None else max_levels - 1
    while len(plan) < limit:
        fz = 2 if (vz <= max(vy, vx) and cur[0] >= 2) else 1
        nxt = (cur[0] // fz, cur[1] // 2, cur[2] // 2)
        if min(nxt[1], nxt[2]) < MIN_LATERAL_SIZE:
            break
        plan.append(((fz, 2, 2), nxt))
        cur = nxt
        vz, vy, vx = vz * fz, vy * 2, vx * 2
    return plan


def _block_mean(block: np.ndarray, *, factors: tuple[int, int, int], out_dtype) -> np.ndarray:
    """Mean over ``factors`` blocks by strided sums (10x faster than a 6-D ``mean``).

    Sums are float32 for float32/float16 data and for integers of at most 16 bits
    (exact there: a sum of ≤ 8 such values needs ≤ 19 bits); float64 otherwise.
    """
    acc_dtype = np.float32 if (block.dtype.kind == "f" and block.dtype.itemsize <= 4) or (
        block.dtype.kind in "iu" and block.dtype.itemsize <= 2) else np.float64
    acc = block
    for ax, f in enumerate(factors):
        if f == 1:
            continue
        n = acc.shape[ax] // f
        out = None
        for k in range(f):
            sl = [slice(None)] * acc.ndim
            sl[ax] = slice(k, n * f, f)
            part = acc[tuple(sl)]
            out = part.astype(acc_dtype) if out is None else np.add(out, part, out=out, dtype=acc_dtype)
        acc = out
    if acc is block:
        acc = block.astype(acc_dtype)
    m = acc * acc_dtype(1.0 / (factors[0] * factors[1] * factors[2]))
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind in "iu":
        from .normalise import cast_to_dtype  # rounded and clipped below a 64-bit integer's limit

        return cast_to_dtype(m, out_dtype)
    return m.astype(out_dtype, copy=False)


def _downsample(src: da.Array, factors, out_shape, out_chunks, dtype) -> da.Array:
    crop = tuple(slice(0, n * f) for n, f in zip(out_shape, factors))
    src = src[crop].rechunk(tuple(c * f for c, f in zip(out_chunks, factors)))
    out_blocks = tuple(tuple(c // f for c in cs) for cs, f in zip(src.chunks, factors))
    return src.map_blocks(
        _block_mean, factors=tuple(factors), out_dtype=dtype, dtype=dtype, chunks=out_blocks,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )


def _window(sample: np.ndarray, dtype, contrast_limits) -> dict[str, float]:
    dtype = np.dtype(dtype)
    sample = np.asarray(sample, dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    lo_v, hi_v = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
    if contrast_limits is not None:
        start, end = (float(v) for v in contrast_limits)
    elif sample.size:
        start, end = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    else:
        start, end = 0.0, 1.0
    if end <= start:
        end = start + 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = min(lo_v, start), max(hi_v, end)
    return {"min": lo, "max": hi, "start": start, "end": end}


def _subsample_view(arr: da.Array) -> da.Array:
    from .normalise import sample_strides

    return arr[tuple(slice(None, None, s) for s in sample_strides(arr.shape, _SUBSAMPLE_VOXELS))]


def _json_safe(obj):
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def finalize_ome_zarr(path: str | os.PathLike, *, voxel_size, ngff_version: str = "0.4",
                      contrast_limits: Sequence[float] | None = None,
                      attrs: Mapping[str, Any] | None = None,
                      max_levels: int | None = None, name: str | None = None,
                      origin: Sequence[float] | None = None, unit: str | None = "micrometer") -> None:
    """Build the pyramid from level 0 and write the OME-Zarr metadata.

    Each level halves y and x; z is halved only when the previous level's z voxel
    size is at most its xy voxel size. Levels stop before the smaller lateral side
    would drop below 64 voxels, or at ``max_levels`` levels in all. Levels are
    block means computed chunk by chunk with dask (level ``k`` from level
    ``k - 1``). Each level gets ``scale`` (µm) and ``translation = origin + (scale_k -
    scale_0) / 2``, the half-pixel-centre position of block means.

    Parameters
    ----------
    path
        Store made by :func:`create_ome_zarr` whose array ``"0"`` is filled.
    voxel_size
        ``(z, y, x)`` of level 0 in µm, or ``None`` (then scales are in voxels and
        the axes carry no unit).
    ngff_version
        Must match the one given to :func:`create_ome_zarr`.
    contrast_limits
        ``(start, end)`` display window; default: 0.1 / 99.9 percentiles of a
        subsample of level 0.
    attrs
        JSON-serialisable custom attributes, stored under ``"selfres"``.
    max_levels
        Most levels in all (``>= 1``); ``None`` = until the 64-voxel limit.
    name
        Image name in the metadata (default: the store's file name).
    origin
        ``(z, y, x)`` translation of level 0 (same unit as ``voxel_size``), default 0: where
        voxel 0's centre sits. A restored grid's level 0 sits at ``(v_out − v_in) / 2`` so
        that it overlays its input (the contract's half-pixel-centre convention).
    unit
        The axes' unit when ``voxel_size`` is given; ``None`` writes none, for scales in
        units of something else (a restored grid of an input whose voxel size is unknown
        is scaled in the input's voxels, so that viewers still overlay the two).
    """
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    zarr_format = _check_ngff(ngff_version)
    vox = _check_voxel(voxel_size)
    if max_levels is not None and (not isinstance(max_levels, int) or max_levels < 1):
        raise ValueError(f"max_levels must be an integer >= 1 or None, got {max_levels!r}")
    if contrast_limits is not None and len(contrast_limits) != 2:
        raise ValueError(f"contrast_limits must be (start, end), got {contrast_limits!r}")
    p = Path(path)
    group = zarr.open_group(str(p), mode="r+", zarr_format=zarr_format)
    level0 = group["0"]
    dtype = level0.dtype
    for key in list(group.array_keys()):  # re-finalising: rebuild lower levels
        if key != "0":
            del group[key]

    plan = plan_levels(level0.shape, vox, max_levels)
    src = da.from_zarr(level0)
    sample_view = _subsample_view(src)
    sample = None
    prev = level0
    base = vox if vox is not None else (1.0, 1.0, 1.0)
    scales = [base]
    kwargs: dict[str, Any] = {}
    if zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = ("z", "y", "x")
    for k, (factors, shape) in enumerate(plan, start=1):
        chunks = tuple(min(c, n) for c, n in zip(level0.chunks, shape))
        out = group.create_array(
            str(k), shape=shape, dtype=dtype, chunks=chunks, fill_value=0, **kwargs
        )
        lazy_level = _downsample(
            src if k == 1 else da.from_zarr(prev), factors, shape, chunks, dtype
        )
        task = da.store(lazy_level, out, lock=False, compute=False)
        if k == 1:  # read level 0 once for both level 1 and the sample
            _, sample = dask.compute(task, sample_view)
        else:
            dask.compute(task)
        prev = out
        scales.append(tuple(s * f for s, f in zip(scales[-1], factors)))
    if sample is None:
        sample = sample_view.compute()

    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [tidy_size(v) for v in s]},
                {"type": "translation",
                 "translation": [tidy_size(o + (a - b) / 2.0) for o, a, b in zip(origin or (0.0, 0.0, 0.0), s,
                                                                                base)]},
            ],
        }
        for k, s in enumerate(scales)
    ]
    unit_d = {"unit": unit} if vox is not None and unit else {}
    axes = [{"name": n, "type": "space", **unit_d} for n in "zyx"]
    base = p.name
    if base.startswith(".") and ".tmp-" in base:  # inside atomic_output
        base = base[1:base.rindex(".tmp-")]
    label = name or base.split(".")[0] or "image"
    # the input channel's colour (its file's, or Fiji's for the channel of a composite): channels
    # restored one store each do not all open grey
    color = (attrs or {}).get("channel_color") or "FFFFFF"
    omero = {
        "channels": [{
            "label": label, "color": color, "active": True,
            "window": _window(sample, dtype, contrast_limits),
        }],
        "rdefs": {"model": "greyscale" if color == "FFFFFF" else "color"},
    }
    fmt = FormatV04() if zarr_format == 2 else FormatV05()
    # start from clean attributes so re-finalising does not keep stale keys
    group.attrs.clear()
    # NGFF 0.4/0.5: a multiscale SHOULD name its downscaling ("type") and describe it ("metadata")
    write_multiscales_metadata(
        group, datasets, fmt=fmt, axes=axes, name=label, metadata={"omero": omero, **PYRAMID_METADATA}
    )
    ome = dict(group.attrs)
    holder = ome["ome"] if "ome" in ome else ome  # 0.5 nests the metadata under "ome"
    holder["multiscales"][0]["type"] = PYRAMID_TYPE
    group.attrs.update(ome)
    group.attrs[ATTRS_KEY] = _json_safe(dict(attrs or {}))


def write_ome_zarr(path: str | os.PathLike, data, *, voxel_size,
                   ngff_version: str = "0.4", chunks: Sequence[int] | None = None,
                   max_levels: int | None = None,
                   contrast_limits: Sequence[float] | None = None,
                   attrs: Mapping[str, Any] | None = None,
                   name: str | None = None, origin: Sequence[float] | None = None) -> None:
    """Write a ZYX volume as an OME-Zarr image with a z-aware pyramid, atomically.

    Parameters
    ----------
    path
        Output store (``*.ome.zarr``); replaced only once the new one is complete.
    data
        2-D (YX) or 3-D (ZYX) numpy or dask array, integer or floating point; the
        dtype is kept.
    voxel_size
        ``(z, y, x)`` in µm, or ``None`` when unknown.
    ngff_version
        ``"0.4"`` (Zarr v2; Fiji/BigDataViewer) or ``"0.5"`` (Zarr v3).
    chunks
        Chunk shape, default :func:`default_chunks`.
    max_levels
        Most pyramid levels in all; see :func:`finalize_ome_zarr`.
    contrast_limits
        ``(start, end)`` display window hint (``omero``).
    attrs
        Custom attributes stored under ``"selfres"``.
    name
        Image name in the metadata.
    origin
        ``(z, y, x)`` position of voxel 0's centre (see :func:`finalize_ome_zarr`).
    """
    if isinstance(data, zarr.Array):
        data = da.from_zarr(data)
    elif not isinstance(data, da.Array):
        data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"data must be 2-D (YX) or 3-D (ZYX), got shape {tuple(data.shape)}")
    if np.dtype(data.dtype).kind not in "iuf":
        raise ValueError(f"data must be integer or floating point, got dtype {data.dtype}")
    _check_ngff(ngff_version)
    _check_voxel(voxel_size)
    with atomic_output(path) as tmp:
        arr = create_ome_zarr(
            tmp, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size,
            chunks=chunks, ngff_version=ngff_version,
        )
        if isinstance(data, da.Array):
            da.store(data.rechunk(arr.chunks), arr, lock=False)
        else:
            arr[...] = data
        finalize_ome_zarr(
            tmp, voxel_size=voxel_size, ngff_version=ngff_version,
            contrast_limits=contrast_limits, attrs=attrs, max_levels=max_levels,
            name=name or Path(path).name.split(".")[0], origin=origin,
        )


#: Largest slab of planes :func:`write_ome_tiff` holds at once (bytes).
_TIFF_SLAB_BYTES = 256 * 2**20
#: Above this many bytes of pixels an OME-TIFF is written as BigTIFF (a classic TIFF
#: addresses at most 4 GiB, and its tags and OME-XML need some of that).
_BIGTIFF_BYTES = 2**32 - 2**25


def write_ome_tiff(path: str | os.PathLike, source: "str | os.PathLike | Sequence[str | os.PathLike]", *,
                   level: int = 0, name: str | None = None, channel_names: Sequence[str] | None = None,
                   timepoints: int = 1) -> Path:
    """Copy one level of an OME-Zarr image — or of several, as the channels and time points
    of one image — into an OME-TIFF, for tools that read TIFF (Fiji's Bio-Formats opens it
    with its voxel size; several channels open as one multichannel composite, several time
    points as one time series).

    ZYX planes (CZYX, TZYX, TCZYX with several sources) keep the stored data type (float32, or the
    input's with ``infer.output_dtype: input``; several types: the smallest that holds
    them all) and the physical voxel size in µm (none when the image has none). Where the
    image has a translation and a voxel size, each plane gets its position in µm (OME
    ``Plane`` ``PositionX/Y/Z``: voxel 0's centre in y, x, the plane's centre in z), so
    that a crop or a tile of a mosaic stays in place in tools that place images by it
    (BigStitcher; napari's and Bio-Formats' metadata views). The image is read a slab of
    planes at a time (at most ~256 MB), so any size fits in memory; BigTIFF above ~4 GB of
    pixels. Written atomically: the file appears complete or not at all.

    Parameters
    ----------
    path
        Output file (``*.ome.tif``).
    source
        OME-Zarr image (``restored.ome.zarr``), or several on one grid — the samples of one
        acquisition's channels (``channel: all``: ``results/a_c0/restored.ome.zarr``,
        ``results/a_c1/…``) — to write as its channels, in this order; with ``timepoints``,
        time point by time point (``a_c0_t0``, ``a_c1_t0``, ``a_c0_t1``…).
    level
        Pyramid level to copy (0 = full resolution; 1, 2… are smaller views).
    name
        Image name in the OME metadata (the sample id); default: the sample's folder for
        ``…/restored.ome.zarr``, else the store's name (several sources: ``path``'s name).
    channel_names
        Names of the channels (several sources); default: each source's, as ``name``, with
        the acquisition's own name of that channel where it had one (``cells_c0 (DAPI)``);
        with several time points, those of the first, less their time point (``lapse_c0``).
    timepoints
        How many time points the sources are (``len(source)`` must be a multiple): each
        ``len(source) / timepoints`` of them are the channels of one time point.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    selfres.errors.InputError
        If a source is not an OME-Zarr image or has no such level, or the sources' grids
        (shape, voxel size, position) differ.
    ValueError
        If the sources cannot be split into ``timepoints`` time points.
    """
    import tifffile

    sources = ([os.fspath(source)] if isinstance(source, (str, os.PathLike))
               else [os.fspath(s) for s in source])
    if not sources:
        raise ValueError("write_ome_tiff needs at least one source")
    nt = int(timepoints)
    if nt < 1 or len(sources) % nt:
        raise ValueError(f"{len(sources)} images cannot be {timepoints} time points of the same channels")
    arrays, images = [], []
    for src in sources:
        arr = open_ome_zarr_array(src, level=level)
        if len(arr.shape) != 3:
            raise InputError(src, f"level {level} has shape {tuple(arr.shape)}; expected z, y, x")
        arrays.append(arr)
        images.append(read_ome_zarr(src, level=level, lazy=True))
    shape = tuple(int(n) for n in arrays[0].shape)
    image = images[0]
    voxel = image.voxel_size
    for src, arr, other in zip(sources[1:], arrays[1:], images[1:]):
        problem = _grid_difference(shape, image, tuple(int(n) for n in arr.shape), other)
        if problem:
            raise InputError(src, f"cannot be a channel or time point beside {sources[0]}: {problem} (level {level}); "
                                  "the channels and time points of one image share one grid")
    nz, ny, nx = shape
    nc = len(sources) // nt
    dtype = np.result_type(*(np.dtype(a.dtype) for a in arrays))
    plane_bytes = ny * nx * dtype.itemsize
    depth = max(1, min(nz, _TIFF_SLAB_BYTES // max(plane_bytes, 1)))
    chunk_z = int(arrays[0].chunks[0])
    if depth >= chunk_z:  # whole stored chunks per read: each is decoded once
        depth -= depth % chunk_z
    # what each channel holds where not the restoration (the guard's fall-back), over its time
    # points: an analyst comparing channels or time points should know which is interpolation
    notes = [_channel_note([images[t * nc + c] for t in range(nt)]) for c in range(nc)]
    for i, (src, img) in enumerate(zip(sources, images)):
        if (img.attrs or {}).get("content") == "interpolation":
            where = []  # what the file calls it: its channel (several), its image and named channel (one)
            if nc == 1:
                where.append(f"its image is named '… [{notes[0]}]'")
            if channel_names is None and (nc > 1 or (images[0].attrs or {}).get("channel_name")):
                where.append(f"its channel is named '… [{notes[i % nc]}]'")
            if nt > 1:
                where.append(f"it is time point {i // nc}")
            log.warning("%s holds %s interpolation, not the network's output (the network did not beat it on the "
                        "held-out region)%s", src, (img.attrs or {}).get("layer_note") or "cubic",
                        f"; in {Path(path).name} " + " and ".join(where) if where else "")
    axes = ("T" if nt > 1 else "") + ("C" if nc > 1 else "") + "ZYX"
    out_shape = (*((nt,) if nt > 1 else ()), *((nc,) if nc > 1 else ()), *shape)
    # one store: named by its sample (the workflow's --sample, else its folder), with what it holds
    # where that is not the network's output ('s1 [tricubic]'; the per-sample export said nothing)
    # a single channel's note (one store, or a one-channel time series) is the whole image's
    default = _image_name(sources[0]) if len(sources) == 1 else Path(path).name.split(".")[0]
    metadata: dict[str, Any] = {"axes": axes, "Name": channel_label(name or default, None,
                                                                    notes[0] if nc == 1 else None)}
    if nc > 1:
        # named by the first time point's samples, less their time point (lapse_c0_t0 → lapse_c0)
        names = (list(channel_names) if channel_names is not None else
                 [channel_label(re.sub(r"_t[0-9]+$", "", _image_name(src)) if nt > 1 else _image_name(src),
                                (img.attrs or {}).get("channel_name"), note)
                  for src, img, note in zip(sources[:nc], images[:nc], notes)])
        if len(names) != nc:
            raise ValueError(f"{len(names)} channel names for {nc} channels")
        metadata["Channel"] = {"Name": names}
    elif channel_names is not None or (images[0].attrs or {}).get("channel_name"):
        # one channel of an acquisition that names its channels (cells_c1 → GFP): the name goes with it
        names = list(channel_names) if channel_names is not None else [
            channel_label(images[0].attrs["channel_name"], None, notes[0])]  # 'GFP [tricubic]' where it fell back
        if len(names) != 1:
            raise ValueError(f"{len(names)} channel names for 1 channel")
        metadata["Channel"] = {"Name": names}
    # each channel's colour from its first time point that has one (a store made before colours were
    # kept has none)
    said = [[(images[t * nc + k].attrs or {}).get("channel_color") for t in range(nt)] for k in range(nc)]
    colors = [next((c for c in per_channel if c), None) for per_channel in said]
    if any(colors):  # the stores' colours (their input's), as OME's signed RGBA; a store without one: white
        metadata.setdefault("Channel", {})["Color"] = [_ome_color(c or "FFFFFF") for c in colors]
    if nt > 1 and (dt := (image.attrs or {}).get("time_increment_s")):  # the acquisition's frame interval
        metadata.update(TimeIncrement=float(dt), TimeIncrementUnit="s")
    if voxel is not None:
        for axis, size in zip("ZYX", voxel):
            metadata[f"PhysicalSize{axis}"] = tidy_size(size)
            metadata[f"PhysicalSize{axis}Unit"] = "µm"
        if image.origin_voxels is not None:  # planes in T, C, Z order: each image's z positions
            metadata["Plane"] = {k: v * len(sources)
                                 for k, v in _plane_positions(image.origin_voxels, voxel, nz).items()}

    def planes() -> Iterator[np.ndarray]:
        for arr in arrays:
            for z0 in range(0, nz, depth):
                slab = np.asarray(arr[z0:min(nz, z0 + depth)]).astype(dtype, copy=False)
                yield from slab

    with atomic_output(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=len(sources) * nz * plane_bytes > _BIGTIFF_BYTES, ome=True) as tif:
            # the pixel size in the TIFF tags too, for readers that ignore the OME-XML (pixels per cm)
            res = {"resolution": (1e4 / voxel[2], 1e4 / voxel[1]), "resolutionunit": "CENTIMETER"} if voxel else {}
            tif.write(planes(), shape=out_shape, dtype=dtype, metadata=metadata, photometric="minisblack", **res)
    return Path(path)


def _ome_color(rgb: str) -> int:
    """``"RRGGBB"`` as an OME ``Color``: RGBA, opaque, read as a signed 32-bit integer."""
    value = int(rgb, 16) << 8 | 0xFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _image_name(source: str) -> str:
    """An exported image's default name: the sample's folder for ``…/restored.ome.zarr`` (and
    ``restored_model.ome.zarr``), else the store's name without its extensions."""
    p = Path(source)
    stem = p.name.split(".")[0]
    return p.parent.name if stem in ("restored", "restored_model") and p.parent.name else stem


def _channel_note(timepoints: Sequence["Volume"]) -> str | None:
    """What one channel of an export holds where not the restoration, over its time points (the
    stores' ``layer_note``): ``tricubic``, or ``tricubic at t1`` / ``tricubic at 2 of 5 time points``
    where only some fell back; ``None`` where all hold the restoration."""
    said = [(t, (img.attrs or {}).get("layer_note")) for t, img in enumerate(timepoints)]
    noted = [(t, n) for t, n in said if n]
    if not noted:
        return None
    kinds = sorted({n for _, n in noted})
    if len(noted) == len(said):
        return kinds[0] if len(kinds) == 1 else ", ".join(kinds)
    where = f"t{noted[0][0]}" if len(noted) == 1 else f"{len(noted)} of {len(said)} time points"
    return f"{', '.join(kinds)} at {where}"


def channel_label(name: str, channel_name: str | None, note: str | None = None) -> str:
    """A sample's name for people, with the acquisition's own name of its channel where it
    has one: ``cells_c0 (DAPI)`` — the restored store's layer name, an export's channel name —
    and what it holds where that is not the restoration (``note``, the store's ``layer_note``:
    ``cells_c1 (GFP) [tricubic]`` for the guard's fall-back, ``[network, lost to tricubic]`` for
    the network's output kept beside it), so that a viewer's layers and an export's channels say
    which is which."""
    return (f"{name} ({channel_name})" if channel_name else name) + (f" [{note}]" if note else "")


def _grid_difference(shape, image: "Volume", other_shape, other: "Volume") -> str | None:
    """How a second image's grid differs from the first's (shape, voxel size, position), or ``None``."""
    if other_shape != shape:
        return f"shape {other_shape}, against {shape}"
    if (image.voxel_size is None) != (other.voxel_size is None) or (
            image.voxel_size is not None and not np.allclose(image.voxel_size, other.voxel_size, rtol=1e-6)):
        return f"voxel size {other.voxel_size}, against {image.voxel_size}"
    if (image.origin_voxels is None) != (other.origin_voxels is None) or (
            image.origin_voxels is not None and not np.allclose(image.origin_voxels, other.origin_voxels, atol=1e-6)):
        return f"position {other.origin_voxels} (voxels), against {image.origin_voxels}"
    return None


def _plane_positions(origin_voxels: Sequence[float], voxel_size: Sequence[float], nz: int) -> dict[str, list]:
    """OME ``Plane`` positions (µm) of ``nz`` planes whose voxel 0 sits at ``origin_voxels``
    (voxel steps) on a grid of ``voxel_size`` (µm)."""
    z0, y0, x0 = (tidy_size(o * s) for o, s in zip(origin_voxels, voxel_size))
    return {
        "PositionX": [x0] * nz, "PositionXUnit": ["µm"] * nz,
        "PositionY": [y0] * nz, "PositionYUnit": ["µm"] * nz,
        "PositionZ": [tidy_size(z0 + k * voxel_size[0]) for k in range(nz)], "PositionZUnit": ["µm"] * nz,
    }


def file_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory store (sorted relative paths + contents).

    Parameters
    ----------
    path
        File or directory.

    Returns
    -------
    str
        Hex digest.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist (no such file or store)")
    h = hashlib.sha256()

    def _feed(f: Path) -> None:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)

    if p.is_file():
        _feed(p)
        return h.hexdigest()
    files = sorted(
        (f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix()
    )
    for f in files:
        rel = f.relative_to(p).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little"))
        h.update(rel)
        h.update(f.stat().st_size.to_bytes(8, "little"))
        _feed(f)
    return h.hexdigest()
