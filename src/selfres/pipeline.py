"""Stage functions on files: what the CLI, the Snakemake rules and ``selfres restore`` call.

Each stage reads its inputs, calls the pure array functions of the other modules, and
writes its outputs atomically (temporary path, renamed at the end), so an interrupted
stage never leaves an output that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import io, normalise, wording
from .codeinfo import code_identity, git_commit, git_dirty, software_versions
from .provenance import current_benchmarks, settings_not_applied
from .atomic import check_outputs_spare_inputs, nearest_existing, overwritten_input, partial_path, tree_bytes
from .errors import ConfigError, InputError
from .fov import TrainingFov, choose_training_fov, training_boxes
from .settings import (DEFAULT_SCALE, EXECUTION_KEYS, FovSettings, InferSettings, IsotropicSettings, NormaliseSettings,
                       MIN_LOWRES_VOXELS, Settings, VOXEL_SIZE_SLIP_RATIO, to_dict, voxel_size_problem,
                       voxel_size_reordered, voxel_size_unlike_file)

log = logging.getLogger("selfres")

MODES = ("enhance", "isotropic")


# --------------------------------------------------------------------------- helpers
def check_store_name(output: str | Path, *, command: str) -> None:
    """Refuse an OME-Zarr output not named as one (``-o out.tif`` would be a folder named
    like a TIFF, which no TIFF reader opens and the workflow's stages do not recognise)."""
    if not str(output).rstrip("/").endswith(".zarr"):
        raise ConfigError(f"{command} writes an OME-Zarr store, a folder: name the output like NAME.ome.zarr "
                          f"(got {output})")


def check_mode(mode: str, *, sample: str | None = None) -> str:
    if mode not in MODES:
        prefix = f"sample {sample!r}: " if sample else ""
        raise ConfigError(f"{prefix}unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _check_size_for_factors(shape, factors, *, what: str, path, sample: str, hint: str) -> None:
    """Refuse a volume / training FOV too small for training pairs at ``factors``."""
    for ax, n, f in zip("zyx", shape, factors):
        need = MIN_LOWRES_VOXELS * f
        if f > 1 and n < need:
            unit = "slices" if ax == "z" else f"voxels along {ax}"
            raise InputError(
                path,
                f"{what} has {n} {unit}; scale {f} along {ax} needs at least {need} "
                f"({MIN_LOWRES_VOXELS} low-resolution voxels x factor {f}) to make training pairs; {hint}",
                sample=sample,
            )


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    io.write_text_atomic(path, json.dumps(data, indent=2, default=_json_default, allow_nan=False))


def read_json_object(path: str | Path, *, what: str, sample: str | None = None, remedy: str) -> dict:
    """The JSON object in ``path`` (a stage's own output read by a later stage, e.g. ``what``
    ``"metrics file"``).

    Raises
    ------
    InputError
        Missing, unreadable, not JSON or not an object; the message ends with ``remedy``.
    """
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, f"{what} not found; {remedy}", sample=sample) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the {what} ({exc}); {remedy}", sample=sample) from None
    if not isinstance(d, dict):
        raise InputError(path, f"the {what} holds a JSON {type(d).__name__}, not an object; {remedy}", sample=sample)
    return d


def read_metrics_for_report(metrics_json: str | Path, *, sample: str | None = None) -> dict:
    """``qc/metrics.json`` for the report. Snakemake takes a file it finds as done, so a damaged
    one (not JSON, not an object: a copy cut short) is moved aside (kept for inspection) and the
    next run redoes the qc: a helper's damaged metrics.json failed the report on every rerun,
    each failure removing the report that had been good."""
    try:
        return read_json_object(metrics_json, what="metrics file", sample=sample, remedy="rerun the qc stage")
    except InputError as exc:
        if not Path(metrics_json).is_file():
            raise
        aside = Path(metrics_json).with_name(f"{Path(metrics_json).name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(metrics_json, aside)
        except OSError:
            raise exc from None
        raise InputError(exc.path, exc.what.replace("; rerun the qc stage", "") + f"; it was moved aside to {aside}: "
                         "rerun the workflow to redo its qc", sample=exc.sample) from None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def clean_floats(obj):
    """Replace NaN/inf floats by None, recursively (metrics.json holds numbers or null)."""
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def read_normalized(path: str | Path, *, lazy: bool = False) -> tuple[io.Volume, normalise.NormParams]:
    """A normalised store (``normalized.ome.zarr``) and its normalisation, refusing what is
    not one: a model folder, or a restored volume (its values are raw intensities, which would
    be scaled back a second time) given in its place (arguments in the wrong order?).

    Raises
    ------
    InputError
    """
    if (Path(path) / "model.json").is_file():
        raise InputError(path, "is a model folder, not a normalised store (normalized.ome.zarr, written by selfres "
                         "normalise): arguments in the wrong order?")
    vol = io.read_ome_zarr(path, lazy=lazy)
    if vol.attrs.get("content"):  # infer's output: raw intensities, on the output grid
        raise InputError(path, f"is a restored volume (content: {vol.attrs['content']}), not a normalised store "
                         "(normalized.ome.zarr, written by selfres normalise): arguments in the wrong order?")
    try:
        params = normalise.NormParams.from_dict(vol.attrs["normalisation"])
    except (KeyError, TypeError) as exc:
        raise InputError(path, f"not a selfres normalised store (missing normalisation attributes: {exc})") from None
    return vol, params


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def saturation_levels(dtype) -> tuple[int, ...]:
    """Values at which an integer acquisition of ``dtype`` saturates: its own largest value
    and each smaller camera bit depth's (2**k − 1 for 8, 10, 12, 14 and 16 bits: a 16-bit
    camera's images stored as 32-bit integers saturate at 65535)."""
    top = int(np.iinfo(dtype).max)
    return tuple(v for v in (255, 1023, 4095, 16383, 65535) if v < top) + (top,)


# --------------------------------------------------------------------------- stages
def _file_identity(path: str | Path) -> tuple | None:
    """What changes when a file is replaced or written to: device, inode, size, modification
    time (of a directory store: its top folder's)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stage_normalise(
    input_path: str | Path,
    output: str | Path,
    *,
    sample: str,
    channel: int | None = None,
    voxel_size: Sequence[float] | None = None,
    settings: NormaliseSettings | None = None,
    ngff_version: str = "0.4",
    timepoint: int | None = None,
    series: int | None = None,
) -> dict:
    """Read the acquisition (its ``series``, ``channel`` and ``timepoint`` where it has several),
    normalise it robustly and write ``normalized.ome.zarr``."""
    settings = settings or NormaliseSettings()
    before = _file_identity(input_path)
    try:
        # lazy (dask): streamed chunk by chunk, so memory does not grow with the volume; in the
        # file's own dtype, so that 32/64-bit data are normalised in float64 (normalise.apply):
        # float32 would keep 7 digits of a large offset's values (uint32 1e8 + 0..999: 126 levels)
        vol = io.read_volume(input_path, channel=channel, timepoint=timepoint, series=series, lazy=True,
                             cast=False)
        io.warn_absent_chunks(input_path, series=series)
    except InputError as exc:
        raise exc.for_sample(sample) from None
    data = vol.data
    metadata_problem = None if voxel_size or vol.voxel_size is None else voxel_size_problem(vol.voxel_size)
    if metadata_problem:  # a unit mistake: the figures' µm arithmetic would overflow
        log.warning("sample %r: %s: its metadata gives a voxel size of %s µm; %s; the voxel size is taken as unknown. "
                    "Give it in the sample sheet column voxel_size (z,y,x in µm; selfres: --voxel-size)", sample,
                    input_path, ", ".join(f"{v:g}" for v in vol.voxel_size), metadata_problem)
        vol = dataclasses.replace(vol, voxel_size=None)
    vs = tuple(voxel_size) if voxel_size else vol.voxel_size
    if voxel_size and vol.voxel_size and data.shape[0] == 1:
        # a single plane's z size is the file's y pixel standing in (io reads no z step there): only y and
        # x are the file's to compare (a walkthrough: "3, 0.5, 0.5 µm is not the one p.tif records, 0.5, 0.5, 0.5")
        vol = dataclasses.replace(vol, voxel_size=(float(voxel_size[0]), *vol.voxel_size[1:]))
    if voxel_size and vol.voxel_size and any(abs(g - f) > 0.01 * f for g, f in zip(voxel_size, vol.voxel_size)):
        # the sheet wins, as documented; a factor between them is more often a slip than a correction
        recorded = (f"y, x {', '.join(f'{v:g}' for v in vol.voxel_size[1:])} µm (a single plane: no z step)"
                    if data.shape[0] == 1 else f"{', '.join(f'{v:g}' for v in vol.voxel_size)} µm")
        log.warning("sample %r: the voxel size given (sheet column voxel_size; selfres: --voxel-size), %s µm, is not "
                    "the one %s records, %s; the given one is used%s", sample,
                    ", ".join(f"{v:g}" for v in voxel_size), input_path, recorded,
                    f" ({VOXEL_SIZE_SLIP_RATIO:g} times or more on an axis: nm typed for µm? its qc flags "
                    "voxel_size_unlike_file)" if voxel_size_unlike_file(voxel_size, vol.voxel_size) else
                    " (the file's values in another order: the order is z,y,x)"
                    if voxel_size_reordered(voxel_size, vol.voxel_size) else "")
    if data.size == 0:
        raise InputError(input_path, "the volume is empty (zero voxels)", sample=sample)
    import dask

    integer = np.issubdtype(vol.source_dtype, np.integer)
    # saturation: the share of voxels at the dtype's top, or at a camera's (12-bit data in
    # uint16 saturate at 4095), whichever the volume's maximum turns out to be
    levels = saturation_levels(vol.source_dtype) if integer else ()
    sat_lazy = [(data >= level).mean() for level in levels] if integer else None
    bad_lazy = None if integer else ((~np.isfinite(data)).sum(), np.isnan(data).sum())
    over_lazy = None
    if vol.source_dtype.kind == "f" and vol.source_dtype.itemsize > 4:  # float64: beyond what float32 holds?
        over = np.isfinite(data) & (abs(data) > float(np.finfo(np.float32).max))
        over_lazy = (over.sum(), np.where(over, abs(data), 0).max())  # dask, as data is
    try:  # one pass over the input, chunk by chunk
        vmin, vmax, sat_value, bad, beyond = dask.compute(data.min(), data.max(), sat_lazy, bad_lazy, over_lazy)
    except MemoryError:  # the job's memory, not the file: said as such (cli: exit 3)
        raise
    except Exception as exc:  # noqa: BLE001 - library errors become InputError
        raise InputError(input_path, f"cannot read its data ({exc})", sample=sample) from exc
    if beyond is not None and int(beyond[0]):  # finite in the file, past what the float32 stages hold
        raise io.beyond_float32(str(input_path), int(beyond[0]), float(beyond[1]), data.size).for_sample(sample)
    if bad is not None and int(bad[0]):
        n_bad, n_nan = int(bad[0]), int(bad[1])
        raise InputError(input_path, f"contains {n_bad} non-finite voxels ({n_nan} NaN, {n_bad - n_nan} Inf) out of "
                         f"{data.size}; replace them (e.g. by 0) before restoring", sample=sample)
    vmin, vmax = float(vmin), float(vmax)
    if vmin == vmax:
        raise InputError(
            input_path, f"the volume is constant (every voxel is {vmin:g}): there is nothing to restore", sample=sample
        )
    from .noise import sensor_defect_positions

    defects = sensor_defect_positions(data) if data.ndim == 3 else None  # not in the intensity range
    params = normalise.fit_percentiles(
        data, low_percentile=settings.low_percentile, high_percentile=settings.high_percentile,
        max_sample_voxels=settings.max_sample_voxels, exclude=defects,
    )
    reach = max(abs(vmax - params.low), abs(vmin - params.low)) / params.span
    if reach > normalise.MAX_NORMALISED:
        raise InputError(input_path, f"its values reach {vmin:.3g}..{vmax:.3g}, up to {reach:.2g} times the range "
                         f"between its {params.low_percentile:g} and {params.high_percentile:g} percentiles "
                         f"({params.low:.4g}..{params.high:.4g}): selfres computes in float32 and cannot train on or "
                         "score such voxels (corrupted values?); clip or replace them before restoring", sample=sample)
    norm = normalise.apply(data, params)
    saturated = None if sat_value is None else next(
        (float(share) for level, share in zip(levels, sat_value) if vmax == level), 0.0)
    if saturated and defects is not None and defects.any():  # a camera's hot pixels at its top: not a clip
        plane = np.asarray(data[data.shape[0] // 2])  # hot columns are the same in every plane
        saturated = max(0.0, saturated - float(np.sum(plane[defects] >= vmax)) * data.shape[0] / data.size)
    attrs = {
        "sample": sample,
        "normalisation": params.to_dict(),
        "source": str(input_path),
        "source_resolved": str(Path(input_path).resolve()),  # as given is relative to where the job ran
        "source_dtype": str(vol.source_dtype),
        "source_checksum": io.file_checksum(input_path),
        # a replacement not newer than this store is found by these, not by Snakemake's mtimes
        **({"source_stat": {"size": before[2], "mtime_ns": before[3]}} if before and Path(input_path).is_file() else {}),
        **{k: v for k, v in (("series", series), ("channel", channel), ("timepoint", timepoint)) if v is not None},
        # the acquisition's own name of the channel (OME: "DAPI"), for the outputs' layer and channel names
        # (a file's only channel too)
        **({"channel_name": name} if (name := io.channel_name(input_path, channel, series=series)) else {}),
        # its colour (the file's; for a channel of a file of several that gives none, Fiji's for that channel;
        # a one-channel file's, as Fiji shows it, grey, even where the sheet names its channel 0)
        **({"channel_color": color} if (color := io.channel_color(input_path, channel, series=series) or (
            None if channel is None or io.channel_count(input_path, series=series) < 2
            else io.COMPOSITE_COLORS[channel % len(io.COMPOSITE_COLORS)])) else {}),
        # a time point's series' frame interval, for the time-series export
        **({"time_increment_s": dt} if timepoint is not None and (dt := io.time_increment(input_path,
                                                                                          series=series)) else {}),
        "voxel_size_source": "sheet" if voxel_size else ("metadata" if vol.voxel_size else None),
        # what the file records where the sheet gives another: QC flags a unit slip (voxel_size_unlike_file)
        **({"voxel_size_file": [float(v) for v in vol.voxel_size]} if voxel_size and vol.voxel_size else {}),
        "saturated_fraction": saturated,
        "raw_range": [vmin, vmax],
    }
    # an unknown voxel size is written as such (scale in voxels, no unit), never as an invented 1 µm
    # an OME-Zarr's translation carries on (a crop or a tile of a mosaic stays in place), in
    # voxel steps times the voxel size used (the sheet's when it gives one), or in voxel steps
    origin = at_voxel_size(vol.origin_voxels, vs)
    io.write_ome_zarr(output, norm, voxel_size=vs, ngff_version=ngff_version, origin=origin,
                      contrast_limits=(0.0, 1.0), attrs=attrs | {"voxel_size_known": vs is not None},
                      # a viewer's layer: the sample's, not 'normalized' for every sample
                      name=io.channel_label(sample, attrs.get("channel_name"), "normalised"))
    if _file_identity(input_path) != before:
        shutil.rmtree(output, ignore_errors=True)
        raise InputError(input_path, "changed while it was being read (replaced, or still being written): its "
                         "normalised copy and checksum would not be of one file, and the newer file would never be "
                         "read (it is older than the output); run again once it is complete", sample=sample)
    log.info("normalised %s: shape %s, %s → [0,1] from percentiles %s (%s)", input_path, data.shape,
             (params.low, params.high), (params.low_percentile, params.high_percentile), vol.source_dtype)
    return attrs


def check_reference(reference: str | Path, *, sample: str, output_shape: Sequence[int] | None = None) -> None:
    """Refuse a reference that is missing or cannot be read, or (``output_shape``: the
    output grid, ZYX) whose shape is not the output's, before any model work.

    Raises
    ------
    InputError
        Naming the sample and the reference, as a bad ``path`` is named at ``normalise``.
    """
    try:
        ref = io.read_volume(reference, lazy=True)  # as qc reads it: metadata and shape only
    except InputError as exc:
        raise InputError(exc.path, f"{exc.what}; it is the sample's reference (sheet column 'reference'; selfres "
                         "restore: --reference), checked before training", sample=sample) from None
    if output_shape is not None and ref.shape != tuple(int(n) for n in output_shape):
        raise InputError(reference, f"reference shape {ref.shape} does not match the output grid "
                         f"{tuple(int(n) for n in output_shape)} (a reference must have the shape of "
                         "restored.ome.zarr); checked before training", sample=sample)


def planned_output_shape(path: str | Path, *, mode: str, scale: Sequence[int] = (1, 1, 1),
                         voxel_size: Sequence[float] | None = None, series: int | None = None
                         ) -> tuple[int, int, int] | None:
    """The output grid (ZYX) a sample will get, from its acquisition's header: what
    :func:`check_reference` compares a reference with, said before any job runs. ``None``
    when the header cannot be read or the volume cannot be restored in ``mode`` (normalise
    or crop then fail with their own message)."""
    image = header_image(path, series)
    if image is None:
        return None
    try:
        vs = tuple(voxel_size) if voxel_size else image["voxel_size"]
        if not voxel_size and vs is not None and voxel_size_problem(vs):
            vs = None  # a unit mistake in the metadata: taken as unknown, as stage_normalise does
        factors = tuple(int(f) for f in scale)
        factor = check_volume_for_mode(image["shape"], vs, mode=mode, factors=factors, path=str(path))
    except (InputError, ConfigError, ValueError):
        return None
    return output_grid_shape(image["shape"], mode=mode, factors=factors, axial_factor=factor)


def header_image(path: str | Path, series: int | None = None) -> dict | None:
    """The acquisition's image ``series`` as its header describes it (:func:`selfres.io.describe_acquisition`:
    shape, voxel size …), or ``None`` where the header cannot tell (the jobs then say why)."""
    try:
        return next(im for im in io.describe_acquisition(path) if series is None or int(im["series"]) == int(series))
    except (InputError, StopIteration, ValueError, OSError):
        return None


def output_grid_shape(shape: Sequence[int], *, mode: str, factors: Sequence[int] = (1, 1, 1),
                      axial_factor: float | None = None) -> tuple[int, int, int]:
    """The output grid (ZYX) of an input ``shape``: ``factors`` finer per axis (enhance),
    or z resliced by ``axial_factor`` (isotropic, from :func:`check_volume_for_mode`)."""
    shape = tuple(int(n) for n in shape)
    if mode == "isotropic":
        from .isotropic import isotropic_shape  # torch: only for isotropic samples

        return tuple(int(n) for n in isotropic_shape(shape, axial_factor))
    return tuple(n * int(f) for n, f in zip(shape, factors))


def read_restored(restored: str | Path, *, sample: str) -> io.Volume:
    """The restored volume (lazy), or, where it is missing but an unfinished inference left
    its partial store beside it (killed, out of time), an error that says so.

    Raises
    ------
    InputError
    """
    final, partial = Path(restored), partial_path(restored)
    if not final.exists() and partial.exists():
        raise InputError(restored, f"does not exist: its inference did not finish (its partial store {partial} is "
                         "there); rerun the infer stage, which resumes from the tiles it recorded", sample=sample)
    return io.read_ome_zarr(restored, lazy=True)


def check_restored_grid(restored: str | Path, restored_shape: Sequence[int], volume_shape: Sequence[int],
                        meta: dict, *, sample: str) -> None:
    """Refuse a restored volume that is not on the output grid of this model (``meta``: its
    training metadata) and this normalised volume: one restored by another model, or from
    another acquisition, cannot be scored or shown against them.

    Raises
    ------
    InputError
        Naming ``restored``, the two grids and the fix.
    """
    def zyx(shape):
        shape = tuple(int(n) for n in shape)
        return (1,) * (3 - len(shape)) + shape[-3:]

    mode = meta.get("mode", "enhance")
    expected = output_grid_shape(zyx(volume_shape), mode=mode, factors=meta.get("factors") or (1, 1, 1),
                                 axial_factor=meta.get("factor"))
    if zyx(restored_shape) != expected:
        raise InputError(restored, f"has shape {zyx(restored_shape)}, but this model ({mode}, "
                         + (f"axial factor {meta.get('factor'):.4g}" if mode == "isotropic"
                            else f"factors {tuple(meta.get('factors') or ())}")
                         + f") restores the normalised volume {zyx(volume_shape)} onto {expected}: it was restored by "
                         "another model or from another acquisition; rerun the infer stage", sample=sample)


def check_restored_origin(restored: str | Path, restored_attrs: dict, model_dir: str | Path, normalized_attrs: dict,
                          *, sample: str) -> None:
    """Refuse a restored volume whose record (the ``fingerprint`` infer writes) names another
    ``model.json`` than ``model_dir``'s, or another acquisition than the normalised volume's:
    its metrics would be filed under a model or an input that did not make it. A store
    without that record (written before it was kept) passes.

    Raises
    ------
    InputError
        Naming ``restored`` and the fix.
    """
    fp = restored_attrs.get("fingerprint")
    if not isinstance(fp, dict):
        return
    made_by = fp.get("model")
    if made_by and made_by != io.file_checksum(Path(model_dir) / "model.json"):
        raise InputError(restored, f"was restored by another model than {model_dir} (its model.json differs from the "
                         "one inference recorded: retrained or replaced since); rerun the infer stage", sample=sample)
    made_from = (fp.get("input") or {}).get("source_checksum")
    ours = normalized_attrs.get("source_checksum")
    if made_from and ours and made_from != ours:
        raise InputError(restored, "was restored from another acquisition than this normalised volume's (their "
                         "source checksums differ); rerun the infer stage", sample=sample)


def metrics_origin(model_dir: str | Path, restored_attrs: dict) -> dict:
    """What a sample's ``metrics.json`` was computed from: the checksum of the model's
    ``model.json`` and of the record infer wrote into the restored volume (its
    ``fingerprint``: model, input, settings and content; ``None`` for a store without one)."""
    fp = restored_attrs.get("fingerprint")
    return {"model_json": io.file_checksum(Path(model_dir) / "model.json"),
            "restored": (hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
                         if isinstance(fp, dict) else None)}


def check_metrics_origin(metrics_json: str | Path, metrics: dict, model_dir: str | Path, restored: str | Path,
                         restored_attrs: dict, *, sample: str) -> None:
    """Refuse a ``metrics.json`` computed from another model or another restored volume than
    those given (an earlier run's, another sample's): the report would state its figures and
    its verdict of outputs they do not describe. A file without that record (written before
    it was kept) passes.

    Raises
    ------
    InputError
        Naming ``metrics_json`` and the fix.
    """
    recorded = metrics.get("computed_from")
    if not isinstance(recorded, dict):
        return
    now = metrics_origin(model_dir, restored_attrs)
    if recorded.get("model_json") and recorded["model_json"] != now["model_json"]:
        raise InputError(metrics_json, f"was computed for another model than {model_dir} (another sample's, or one "
                         "retrained since); rerun the qc stage", sample=sample)
    if recorded.get("restored") and now["restored"] and recorded["restored"] != now["restored"]:
        raise InputError(metrics_json, f"was computed from another restored volume than {restored} (another "
                         "sample's, or one restored again since); rerun the qc stage", sample=sample)


def reference_grid_problem(reference: str | Path, path: str | Path, *, mode: str, scale: Sequence[int] = (1, 1, 1),
                           voxel_size: Sequence[float] | None = None, series: int | None = None) -> str | None:
    """Why ``reference`` cannot be scored against the sample's output, read from the two
    headers before any job (``None``: it fits, or either header cannot tell)."""
    planned = planned_output_shape(path, mode=mode, scale=scale, voxel_size=voxel_size, series=series)
    if planned is None:
        return None
    try:
        shape = tuple(io.read_volume(reference, lazy=True).shape)
    except (InputError, OSError, ValueError):
        return None
    if shape == planned:
        return None
    return (f"its reference {reference} has shape {shape}, the output grid is {planned} (a reference must have "
            "the shape of restored.ome.zarr)")


def chunk_layout_problem(path: str | Path, *, scale: Sequence[int], tile_size: Sequence[int],
                         chunks: Sequence[int] | None, shards: Sequence[int] | None,
                         series: int | None = None) -> str | None:
    """Why an ``enhance`` sample's ``infer.chunks`` / ``infer.shards`` cannot be written by its
    tiles (:func:`selfres.infer.store_layout`), read from the acquisition's header before any job
    (``None``: they fit, none is set, or the header cannot tell): found otherwise only when the
    infer job starts, after the training."""
    if chunks is None and shards is None:
        return None
    image = header_image(path, series)
    if image is None:
        return None
    from .infer import store_layout

    try:
        store_layout(tuple(image["shape"]), factors=tuple(int(f) for f in scale), tile_size=tile_size,
                     chunks=chunks, shards=shards)
    except ConfigError as exc:
        return str(exc)
    return None


def voxel_size_of(vol: io.Volume) -> tuple[float, float, float] | None:
    return tuple(vol.voxel_size) if vol.attrs.get("voxel_size_known", True) and vol.voxel_size else None


def stage_crop(
    normalized: str | Path,
    output_json: str | Path,
    *,
    sample: str,
    mode: str = "enhance",
    scale: Sequence[int] | None = None,
    training_fov: str | None = None,
    settings: FovSettings | None = None,
    reference: str | Path | None = None,
) -> TrainingFov:
    """Choose the training FOV and held-out region; write ``train_fov.json``.

    ``reference``: the sample's ground truth, when it is to be checked here: a missing or
    unreadable one fails the sample now, before training, instead of at ``qc``.
    """
    settings = settings or FovSettings()
    check_mode(mode, sample=sample)
    vol, _ = read_normalized(normalized, lazy=True)  # the structure map reads it a slab at a time
    factors = tuple(scale or DEFAULT_SCALE) if mode == "enhance" else (1, 1, 1)
    if mode == "enhance":  # the sheet, the config and the CLI refuse it already; a library call too
        from .settings import parse_scale

        parse_scale(factors, sample=sample)
    source = vol.attrs.get("source") or str(normalized)
    iso_factor = check_volume_for_mode(vol.data.shape, voxel_size_of(vol), mode=mode, factors=factors, path=source,
                                       sample=sample, fov_settings=settings, training_fov=training_fov)
    # refused here, not at train: before the GPU job is queued; so is a reference that is
    # missing, unreadable or off the output grid
    if reference:
        from .isotropic import isotropic_shape

        check_reference(reference, sample=sample, output_shape=isotropic_shape(vol.data.shape, iso_factor)
                        if mode == "isotropic" else tuple(n * f for n, f in zip(vol.data.shape, factors)))
    try:
        fov = choose_training_fov(
            vol.data, max_voxels=settings.max_voxels, holdout_fraction=settings.holdout_fraction,
            min_holdout_voxels=settings.min_holdout_voxels, multiple=factors, training_fov=training_fov,
            path=source,  # the user's acquisition, not our intermediate
            min_holdout_shape=min_holdout_shape(factors),
            inner_holdout=mode == "enhance",
        )
    except InputError as exc:
        raise exc.for_sample(sample) from None
    if mode == "enhance":
        check_boxes_for_factors(fov, factors, path=source, sample=sample)
    d = fov.to_dict() | {"sample": sample, "volume_shape": list(vol.data.shape), "mode": mode}
    if (acquisition := normalise.acquisition_of(vol.attrs)) is not None:  # train and adopt refuse another's
        d["acquisition"] = acquisition
    write_json(output_json, d)
    log.info("training FOV %s, held-out %s: %s", fov.train, fov.holdout, fov.reason)
    return fov


def check_boxes_for_factors(fov: TrainingFov, factors: Sequence[int], *, path, sample: str) -> None:
    """Refuse a training FOV or held-out region too small to make enhance's training pairs
    at ``factors`` (crop chose or was given it; train and adopt check the file again)."""
    from .fov import box_shape

    _check_size_for_factors(box_shape(fov.train), factors, what=f"the training FOV {fov.train}",
                            path=path, sample=sample, hint="choose a larger training_fov")
    _check_size_for_factors(box_shape(fov.holdout), factors, what=f"the held-out region {fov.holdout}",
                            path=path, sample=sample, hint="choose a training_fov that leaves a thicker "
                            "slab of the volume outside it")


def min_holdout_shape(factors: Sequence[int]) -> tuple[int, ...]:
    """The smallest held-out region per axis that still degrades by ``factors`` into pairs."""
    return tuple(MIN_LOWRES_VOXELS * int(f) if int(f) > 1 else 1 for f in factors)


#: ``training_fov`` of :func:`check_volume_for_mode` for a stage whose training FOV crop has
#: chosen already (train, adopt): the FOV checks are left to that file's own
FOV_ALREADY_CHOSEN = "<chosen by crop>"


def trained_on(vol: io.Volume) -> dict:
    """``{"acquisition": …}`` for a model's metadata: the acquisition of the normalised volume
    ``vol`` it was trained on or judged on (:func:`selfres.normalise.acquisition_of`; empty
    where the store records none)."""
    acquisition = normalise.acquisition_of(vol.attrs)
    return {"acquisition": acquisition} if acquisition is not None else {}


def training_input_figures(train_volume: np.ndarray) -> dict:
    """How much structure the training FOV held, for a model's metadata: the
    :func:`selfres.metrics.structure_share` and :func:`selfres.metrics.plane_correlation` that flag
    an input ``input_mostly_noise`` at QC. A sample that adopts the model is not trained on its
    own input: its QC reads these to say when the model learned from noise (a re-check of a
    time-lapse walkthrough: a first time point of pure noise trained the series' model, and the
    later time points read ``ok``, their outputs blurrier than their inputs)."""
    from . import metrics
    from .noise import noise_level_function

    volume = np.asarray(train_volume, dtype=np.float32)
    structure = metrics.structure_share(volume, noise_level_function(volume))
    planes = metrics.plane_correlation(volume)
    return {"structure_share": None if structure is None else round(float(structure), 4),
            "plane_correlation": None if planes is None else round(float(planes), 4)}


#: :func:`selfres.metrics.structure_share` of the input's QC window below which a sample is
#: flagged ``input_mostly_noise``: nothing in it stands clear of the noise (pure noise reads about
#: 0; the benchmark's real volumes 0.96–1.0, and 0.15–0.36 with one photon of Poisson noise at
#: their 99.9th percentile)
INPUT_MIN_STRUCTURE_SHARE = 0.1
#: ... and :func:`selfres.metrics.plane_correlation` below which (or one plane): nothing carries
#: over from plane to plane (pure noise ±0.01; dense sub-voxel puncta, whose texture the noise
#: estimate reads as noise, 0.3–0.6; cells of 2 photons 0.08 — their structure share is 0.13)
INPUT_MAX_PLANE_CORRELATION = 0.1


def mostly_noise(structure: float | None, planes_alike: float | None) -> bool:
    """The ``input_mostly_noise`` test: structure share and plane correlation both low."""
    return (structure is not None and structure < INPUT_MIN_STRUCTURE_SHARE
            and (planes_alike is None or planes_alike < INPUT_MAX_PLANE_CORRELATION))


def check_model_acquisition(meta: dict, normalized_attrs: dict, *, model_dir, normalized, sample: str) -> None:
    """Refuse a model trained (or, adopted, judged) on another acquisition than the normalised
    volume's, when both record theirs: its guard, its held-out figures and its noise level
    are that acquisition's, and would be filed under this sample. Another sample's model is
    judged on this one by ``selfres adopt`` (the sheet's ``model_from``).

    Raises
    ------
    InputError
        Naming the model's ``model.json``, both acquisitions and the fix.
    """
    made_from, ours = meta.get("acquisition"), normalise.acquisition_of(normalized_attrs)
    if not isinstance(made_from, dict) or ours is None or made_from == ours:
        return
    source = (meta.get("adopted_from") or {}).get("sample")
    how = (f"was judged (adopted from sample {source!r}) on another acquisition" if meta.get("adopted_from")
           else "was trained on another acquisition")
    raise InputError(Path(model_dir) / "model.json", f"{how} ({normalise.acquisition_text(made_from)}, sample "
                     f"{meta.get('sample')!r}) than {normalized} ({normalise.acquisition_text(ours)}): its guard "
                     "judged it on that one only. Judge it on this one with selfres adopt (the sheet's model_from; "
                     "selfres restore --model-from), or train this sample's own model", sample=sample)


def check_model_fits_volume(meta: dict, shape, voxel_size, *, model_dir, normalized, sample: str) -> None:
    """Refuse, before any work, a model that cannot restore this volume on the contract's grid
    (``selfres infer`` with another sample's model): an isotropic model trained for another
    axial factor (its output would be anisotropic the other way), either mode's z scaling of a
    2-D image (planes made up from one).

    Raises
    ------
    ConfigError
        Naming the sample, the model folder and what differs.
    """
    nz = int(shape[0])
    if meta.get("mode") == "isotropic":
        from .adopt import ISOTROPIC_FACTOR_TOLERANCE
        from .isotropic import isotropic_factor

        if nz < 2:
            raise ConfigError(f"sample {sample!r}: {normalized} is a 2-D image (one z slice); the isotropic model "
                              f"{model_dir} restores the z axis of a 3-D stack")
        factor, trained = isotropic_factor(voxel_size, path=str(normalized), sample=sample), float(meta["factor"])
        if abs(factor - trained) > ISOTROPIC_FACTOR_TOLERANCE * trained:
            raise ConfigError(f"sample {sample!r}: the axial factor (voxel z / xy) of {normalized} is {factor:.4g}, "
                              f"the model {model_dir} was trained for {trained:.4g}: a model restores the axial blur "
                              "it learned, on its own grid; train one for this volume")
    elif nz == 1 and int(meta["factors"][0]) > 1:
        raise ConfigError(f"sample {sample!r}: {normalized} is a 2-D image (one z slice); the model {model_dir} "
                          f"scales z by {meta['factors'][0]}: use a model trained with scale 1,y,x")


def check_volume_for_mode(shape, voxel_size, *, mode: str, factors=(1, 1, 1), path, sample: str | None = None,
                          fov_settings: FovSettings | None = None, training_fov: str | None = None
                          ) -> float | None:
    """Refuse a volume of ``shape`` (ZYX) and ``voxel_size`` that ``mode`` cannot restore (at
    ``factors``, enhance): a 2-D image or too few slices for isotropic mode, or no usable
    voxel size; too few voxels along a scaled axis for enhance's training pairs; without a
    ``training_fov``, too few voxels to hold a region out (``fov_settings``, default the
    defaults). Returns the isotropic axial factor (None for enhance).

    Raises
    ------
    InputError
        Naming the file, the sample and what to do instead.
    """
    shape = tuple(int(n) for n in shape)
    if mode == "isotropic":
        from .isotropic import MIN_ISOTROPIC_SLICES, isotropic_factor

        if shape[0] < 2:
            raise InputError(path, f"isotropic mode restores the z axis of a 3-D stack; this is a 2-D image (shape "
                             f"{shape}, one z slice): use mode enhance with scale 1,y,x", sample=sample)
        if shape[0] < MIN_ISOTROPIC_SLICES:
            raise InputError(path, f"isotropic mode needs at least {MIN_ISOTROPIC_SLICES} z slices; the volume "
                             f"(shape {shape}) has {shape[0]}: acquire more slices (mode enhance with scale 1,y,x "
                             "can still refine x and y, but not z)", sample=sample)
        factor = isotropic_factor(voxel_size, path=path, sample=sample)
        factors = (1, 1, 1)
    else:
        factor = None
        if shape[0] == 1 and factors[0] > 1:
            raise InputError(path, f"is a 2-D image (shape {shape}, one z slice): it cannot be scaled along z (scale "
                             f"{','.join(map(str, factors))}); give the sample scale 1,{factors[1]},{factors[2]} "
                             "(sheet column 'scale'; --scale for the selfres commands)", sample=sample)
        _check_size_for_factors(shape, factors, what=f"the volume (shape {shape})", path=path, sample=sample,
                                hint="use a smaller factor on that axis (sheet column 'scale', e.g. 1,2,2; "
                                     "--scale for the selfres commands) or a larger acquisition")
    fs = fov_settings or FovSettings()
    if not training_fov:
        from .fov import automatic_holdout_slab

        try:
            automatic_holdout_slab(shape, holdout_fraction=fs.holdout_fraction,
                                   min_holdout_voxels=fs.min_holdout_voxels, multiple=factors, path=path)
        except InputError as exc:
            raise exc.for_sample(sample) if sample else exc from None
    elif training_fov != FOV_ALREADY_CHOSEN:  # crop's checks of a given FOV, from the shapes: it leaves a held-out
        # region, both large enough
        from .fov import box_shape, held_out_window_shape, holdout_region_beside, parse_fov

        try:
            train = parse_fov(training_fov, shape)
        except ConfigError as exc:
            raise InputError(path, str(exc), sample=sample) from None
        try:
            region = holdout_region_beside(
                shape, train, training_fov=training_fov, min_holdout_voxels=fs.min_holdout_voxels, path=path,
                min_holdout_shape=min_holdout_shape(factors), multiple=factors)
        except InputError as exc:
            raise exc.for_sample(sample) if sample else exc from None
        if mode == "enhance":
            _check_size_for_factors(box_shape(train), factors, what=f"the training FOV {train}", path=path,
                                    sample=sample, hint="choose a larger training_fov")
            window = held_out_window_shape(region, max_voxels=fs.max_voxels, min_holdout_voxels=fs.min_holdout_voxels,
                                           multiple=factors)
            _check_size_for_factors(window, factors, what=f"the held-out region of shape {window}", path=path,
                                    sample=sample, hint="choose a training_fov that leaves a thicker slab of the "
                                                        "volume outside it")
    return factor


def _model_stage_inputs(normalized, fov_json, *, sample, mode, settings, device, threads):
    """What the train and adopt stages start from: settings (defaults when None), the device,
    the normalised volume (lazy: only the training FOV and held-out region are read), its
    normalisation and the training FOV."""
    from . import models

    check_mode(mode, sample=sample)
    set_threads(threads)
    vol, params = read_normalized(normalized, lazy=True)
    fov = TrainingFov.load(fov_json, volume_shape=vol.data.shape, mode=mode, sample=sample,
                           acquisition=normalise.acquisition_of(vol.attrs))
    return settings or Settings(), models.select_device(device), vol, params, fov


def _holding(output_parameter: str):
    """The stage holding its output, the argument named ``output_parameter``, from its start
    (:func:`selfres.atomic.output_lock`): a second writer of the same output is refused at
    once, before it trains or computes anything — an infer stage for every step but
    ``"block"``, whose jobs share the partial store by design. (Taken only at the final move,
    a second ``train`` resumed the first's checkpoint, and one removed the other's work
    folder under it.)"""
    def wrap(stage):
        signature = inspect.signature(stage)

        @functools.wraps(stage)
        def held(*args, **kwargs):
            from .atomic import output_lock

            bound = signature.bind(*args, **kwargs)
            step = bound.arguments.get("step", "all")
            with contextlib.nullcontext() if step == "block" else output_lock(bound.arguments[output_parameter]):
                return stage(*args, **kwargs)

        return held

    return wrap


@_holding("model_dir")
def stage_train(
    normalized: str | Path,
    fov_json: str | Path,
    model_dir: str | Path,
    *,
    sample: str,
    mode: str = "enhance",
    scale: Sequence[int] | None = None,
    settings: Settings | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Train the sample's model; write ``model/`` (weights, model.json, training_log.tsv)."""
    from . import models
    from .train import guard_with_extras, inference_extras, make_degradation, psf_target_blur_px, train_enhance

    settings, dev, vol, params, fov = _model_stage_inputs(normalized, fov_json, sample=sample, mode=mode,
                                                          settings=settings, device=device, threads=threads)
    data = vol.data
    if mode == "isotropic":
        from . import isotropic

        return isotropic.stage_train(vol, fov, model_dir, sample=sample, settings=settings, device=dev)
    factors = tuple(scale or DEFAULT_SCALE)
    # crop checked the volume already; a second line of defence for a stage called alone
    check_volume_for_mode(data.shape, None, mode="enhance", factors=factors, path=normalized, sample=sample,
                          training_fov=FOV_ALREADY_CHOSEN)
    check_boxes_for_factors(fov, factors, path=fov_json, sample=sample)
    model_dir = Path(model_dir)
    work = model_dir.with_name(model_dir.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    vs_known = voxel_size_of(vol)
    # a PSF without a voxel size: fail now, naming the file, not after minutes of set-up
    psf_target_blur_px(settings.train.psf_sigma_um, factors, vs_known, path=str(normalized))
    t0 = time.monotonic()
    completed = read_guarded_with(work)  # the record of the job whose training may be taken up below
    train_volume, held_volume, defects = training_boxes(data, fov)
    if defects:
        log.info("sample %s: %d hot or dead sensor pixels (the same in every plane) replaced by their neighbours' "
                 "median in the training FOV and the held-out region (and in the network's input at inference)",
                 sample, defects)
    # the guard judges what inference writes: the network wrapped in the inference extras
    extras = inference_extras(settings.infer)
    result = train_enhance(
        train_volume, held_volume, factors=factors,
        settings=settings.train,
        voxel_size=vs_known, work_dir=work, device=dev, amp=settings.infer.amp,
        take_up_any_finished=take_up_any_finished(work, extras),
    )
    trained = result.settings  # as trained: with the noise top-up estimated from the data
    kept = kept_checkpoints(work)  # the training's, as guarded_with.json records them (taken up: unchanged)
    psnr_out, flags = guard_with_extras(
        result, factors=factors, extras=extras,
        degradation=make_degradation(trained.degradation, voxel_size=vs_known),
        margin_db=settings.train.guard_margin_db, confidence=settings.train.guard_confidence, device=dev,
        amp=settings.infer.amp, acquisition=train_volume)
    meta = {
        "sample": sample,
        **trained_on(vol),
        "mode": mode,
        "factors": list(factors),
        "voxel_size_in": list(vs_known) if vs_known else None,
        "self_validation": {"psnr_model": psnr_out, "psnr_interp": result.val_psnr_interp,
                            "psnr_network": result.val_psnr_model},
        "inference_extras": extras,
        "guard_amp": bool(settings.infer.amp),  # QC re-scores the held-out region in the guard's precision
        "best_step": result.best_step,
        "steps_done": result.steps_done,
        "stop_reason": result.stop_reason,
        "flags": flags,
        # the guard's other test (not the margin): what the learned mapping gained one scale coarser
        "coarse_scale_failed": any(r.coarse_scale_failed for r in (result.stages or [result])),
        "sensor_defects_repaired": defects,
        "training_input": training_input_figures(train_volume),  # what a sample adopting it learned from
        "patch": list((result.stages[0] if result.stages else result).patch or []) or None,  # as trained
        **training_seconds(result, completed, time.monotonic() - t0, kept),
        # taken up from model.work/: the training had finished in an earlier run (train_seconds includes its loop)
        "training_taken_up": result.taken_up,
        "settings": to_dict(trained),
        # where the network was trained: a taken-up training's own machine (this job's: guard_ran_on)
        "device": (result.trained_ran_on or {}).get("device") or str(dev),
        "ran_on": result.trained_ran_on or models.ran_on(dev),
        **({"guard_ran_on": models.ran_on(dev)} if result.trained_ran_on else {}),
    }
    if result.noise is not None:
        meta["noise"] = result.noise
    if result.acquisition_noise is not None:
        meta["acquisition_noise"] = result.acquisition_noise.as_list()
    if result.correction_noise is not None:
        meta["correction_noise"] = result.correction_noise.as_list()
    meta["inference_extras"] = effective_extras(extras, meta)  # as they acted: no shrink without a level
    with io.atomic_output(model_dir) as tmp:  # a kill or an error leaves the old model/ or nothing
        if result.stages:  # serial ×4: stage 1 in model/, stage 2 in model/stage2/
            first, second = result.stages
            meta["serial"] = {"stage2": "stage2", "factors": [list(first.spec.factors), list(second.spec.factors)],
                              "stage_gains": [r.val_psnr_model - r.val_psnr_interp for r in result.stages],
                              "stage_best_steps": [int(r.best_step) for r in result.stages],
                              "stage_steps_done": [int(r.steps_done) for r in result.stages],
                              "stage_stop_reasons": [str(r.stop_reason) for r in result.stages]}
            models.save_model(tmp, first.model, first.spec, metadata=meta)
            models.save_model(tmp / "stage2", second.model, second.spec, metadata={"serial_stage": 2})
        else:
            models.save_model(tmp, result.model, result.spec, metadata=meta)
        import pandas as pd

        cols = ["step", "loss", "val_psnr_model", "val_psnr_interp", "lr", "seconds"]
        cols += [c for c in ("val_coarse_gain", "stage") if any(c in r for r in result.log_rows)]
        pd.DataFrame(result.log_rows, columns=cols).to_csv(tmp / "training_log.tsv", sep="\t", index=False)
    # work/ (the finished training's checkpoint) stays: a rerun that changes only what the guard
    # reads (infer.ensemble, infer.back_projection_*) takes the training up from it and re-runs the guard
    write_json(work / GUARDED_WITH, {"inference_extras": extras, "checkpoints": kept,
                                     "train_seconds": meta["train_seconds"], "fit_seconds": meta["fit_seconds"]})
    # the held-out figure the guard judged and the summary shows (with the inference extras), not
    # the network's alone (a walkthrough read two figures for one sample in train.log)
    log.info("model saved to %s: held-out %.2f dB vs tricubic %.2f dB as inference writes it%s%s (best step %d, "
             "training ended %s, %.0f s)", model_dir, psnr_out, result.val_psnr_interp,
             f"; the network alone {result.val_psnr_model:.2f} dB" if psnr_out != result.val_psnr_model else "",
             "; flagged model_worse_than_interpolation" if "model_worse_than_interpolation" in flags else "",
             result.best_step, wording.stop_text(result.stop_reason), meta["train_seconds"])
    return meta


#: In an ``enhance`` training's work folder (``model.work/``), written by a completed train job:
#: the inference extras its training was guarded with and the SHA-256 of the checkpoints it
#: kept (:func:`take_up_any_finished`).
GUARDED_WITH = "guarded_with.json"


def kept_checkpoints(work: Path) -> dict[str, str]:
    """SHA-256 of each training checkpoint in ``work`` (serial ×4: one per stage), by path."""
    from .train import CHECKPOINT

    return {c.relative_to(work).as_posix(): io.file_checksum(c) for c in sorted(Path(work).rglob(CHECKPOINT))}


def read_guarded_with(work: Path) -> dict | None:
    """The record a completed train job left in ``work`` (:data:`GUARDED_WITH`), or None (none,
    or unreadable)."""
    try:
        record = json.loads((work / GUARDED_WITH).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and isinstance(record.get("inference_extras"), dict)
          and isinstance(record.get("checkpoints"), dict))
    return record if ok else None


def training_seconds(result, completed: dict | None, job_seconds: float, kept: dict[str, str]) -> dict[str, float]:
    """The model's training times, as ``model.json`` records them: ``train_seconds`` (the summary's
    ``train (s)``), this job's with the loop time of the interrupted runs it resumed, and
    ``fit_seconds`` (the methods text's "trained for"), the training loop alone, without the
    set-up and the guard's re-scoring, which can take most of a ×4 job. Where this job took up
    the very training a completed job recorded (``completed``: :func:`read_guarded_with`, whose
    checkpoints are still ``kept``, :func:`kept_checkpoints`: a rerun for the guard's extras),
    that job's figures — the same training read 38.5 s, then 35.2 s after a rerun that trained
    nothing (a walkthrough)."""
    times = {"train_seconds": job_seconds + result.resumed_seconds,  # with the interrupted runs' time
             "fit_seconds": result.seconds}
    if result.taken_up and completed and completed["checkpoints"] == kept:
        times |= {k: float(v) for k in times if isinstance(v := completed.get(k), (int, float))
                  and not isinstance(v, bool)}
    return times


def take_up_any_finished(work: Path, extras: dict) -> bool:
    """Whether a finished training in ``work`` is taken up however it ended
    (:func:`selfres.train.train_enhance`): yes when the checkpoints there are not those a
    completed train job recorded (a job killed after its training, in its guard: taken up as
    always), or when they are but its guard's inference extras were others than ``extras`` (this
    rerun was made for them alone: another guard, the same network). Else — ``--forcerun``, a
    touched input — only where training again would give its weights."""
    record = read_guarded_with(work)
    kept = kept_checkpoints(work)
    if record is None or record["checkpoints"] != kept:
        if kept:
            log.info("%s holds a checkpoint no completed train job recorded (a job killed after or during its "
                     "training): resumed, or taken up if finished", work)
        return True
    before = record["inference_extras"]
    if before != extras:
        log.info("the inference extras the guard reads changed since the training kept in %s (%s): that finished "
                 "training is taken up however it ended, if its data, settings and code are the same", work,
                 ", ".join(f"{k} {before.get(k)} → {v}" for k, v in extras.items() if before.get(k) != v))
        return True
    return False


@_holding("model_dir")
def stage_adopt(
    normalized: str | Path,
    fov_json: str | Path,
    source_model: str | Path,
    model_dir: str | Path,
    *,
    sample: str,
    mode: str = "enhance",
    scale: Sequence[int] | None = None,
    settings: Settings | None = None,
    device: str = "auto",
    threads: int | None = None,
    source_is_output: bool = True,
) -> dict:
    """Restore ``sample`` with the model another sample trained (sheet column ``model_from``):
    judge it on this sample's held-out region (:func:`selfres.adopt.adopt_enhance`,
    :func:`selfres.adopt.adopt_isotropic`) and write this sample's ``model/`` — the same
    weights, a ``model.json`` describing this sample, the source's ``training_log.tsv`` — so
    that infer, qc and report run as for any sample. ``source_is_output``: the source is a
    workflow output (moved aside when damaged, so the run retrains it), not a folder the user
    gave (``selfres restore --model-from``: refused, left where it is)."""
    from .adopt import adopt_enhance, adopt_isotropic

    check_model_source(source_model, sample=sample)
    settings, dev, vol, _, fov = _model_stage_inputs(normalized, fov_json, sample=sample, mode=mode,
                                                     settings=settings, device=device, threads=threads)
    model, _, meta = load_trained(source_model, move_damaged_aside=source_is_output)
    source = meta.get("sample") or str(source_model)
    if meta.get("mode") != mode:
        raise ConfigError(f"sample {sample!r}: model_from {source!r} is an {meta.get('mode')} model, this sample is "
                          f"restored in {mode} mode: give both the same mode")
    path = str(vol.attrs.get("source") or normalized)  # the user's acquisition, for messages
    acquisition = normalise.acquisition_of(vol.attrs)  # this sample's part of its file
    if mode == "isotropic":
        from .isotropic import isotropic_factor, load_degrader

        factor = isotropic_factor(voxel_size_of(vol), path=path, sample=sample)
        degrader = None
        if (meta.get("isotropic") or {}).get("degradation") == "learned":
            degrader = _checked_model_folder(source_model, lambda d: load_degrader(d, meta, device=dev),
                                             move_aside=source_is_output)
        new_meta = adopt_isotropic(model.to(dev), meta, vol, fov, sample=sample, factor=factor,
                                   guard_margin_db=settings.train.guard_margin_db, degrader=degrader, device=dev,
                                   acquisition=acquisition)
    else:
        factors = tuple(int(f) for f in (scale or DEFAULT_SCALE))
        if tuple(meta.get("factors") or ()) != factors:
            raise ConfigError(f"sample {sample!r}: model_from {source!r} restores by "
                              f"{tuple(meta.get('factors') or ())}, this sample asks for scale {factors}: give both "
                              "the same scale")
        check_volume_for_mode(vol.data.shape, None, mode="enhance", factors=factors, path=normalized, sample=sample,
                              training_fov=FOV_ALREADY_CHOSEN)
        check_boxes_for_factors(fov, factors, path=fov_json, sample=sample)
        from . import models

        # as load_trained will read the adopted model: rotated only if both samples allow it
        model.lateral_rotations = (getattr(model, "lateral_rotations", True)
                                   and models.lateral_rotations(factors, voxel_size_of(vol)))
        # repaired as the source's training was (its inference repairs this sample's input too)
        repair = "sensor_defects_repaired" in meta
        train_box, held_box, defects = training_boxes(vol.data, fov, repair=repair)
        new_meta = adopt_enhance(
            model.to(dev), meta, train_box, held_box, sample=sample, voxel_size=voxel_size_of(vol),
            guard_margin_db=settings.train.guard_margin_db, guard_confidence=settings.train.guard_confidence,
            infer_settings=settings.infer, device=dev, path=path, acquisition=acquisition)
        if repair:
            new_meta["sensor_defects_repaired"] = defects  # this sample's
    # another time point of the series that trained the model: restored the same way where it does not lose
    from .adopt import keep_model_for_series

    new_meta = keep_model_for_series(new_meta, meta, acquisition, sample=sample)
    new_meta.pop("acquisition", None)  # the source's: this model.json describes this sample, judged on its volume
    new_meta.update(trained_on(vol))
    from .modelfile import copy_with_metadata

    with io.atomic_output(model_dir) as tmp:  # the source's files as they are, this sample's model.json
        copy_with_metadata(source_model, tmp, new_meta)
    return new_meta


def check_model_source(source_model: str | Path, *, sample: str) -> None:
    """Refuse a ``model_from`` that is not a model folder at all (no ``model.json``), naming it
    as the user gave it: the model-folder errors of :func:`load_trained` advise deleting the
    folder to retrain, which is wrong for a folder that is not a model.

    Raises
    ------
    InputError
    """
    from .modelfile import DESCRIPTION_FILE

    if not (Path(source_model) / DESCRIPTION_FILE).is_file():
        raise InputError(source_model, f"is not a selfres model folder (no {DESCRIPTION_FILE}): model_from takes the "
                         "model/ folder of a sample restored before (the workflow: results/<sample>/model; selfres "
                         "restore --keep DIR: DIR/model)", sample=sample)


def _checked_model_folder(model_dir: str | Path, read, *, move_aside: bool = True):
    """``read(model_dir)``, its model-folder errors told in the workflow's terms.

    A damaged model is never loaded. Snakemake takes ``model/`` as done while it exists, so
    a folder whose weights fail their checksum is moved aside (kept for inspection): the
    next run retrains. Not with ``move_aside`` False: a folder the user gave as an input
    (``selfres restore --model-from``) is only refused."""
    path = Path(model_dir)
    if path.is_file() or any((path / marker).is_file() for marker in (".zattrs", ".zgroup", "zarr.json")):
        raise InputError(model_dir, f"is {'a file' if path.is_file() else 'a Zarr store'}, not a model folder "
                         "(model/, written by selfres train or adopt): arguments in the wrong order?")
    try:
        return read(model_dir)
    except InputError as exc:
        what = exc.what.split("; delete")[0]
        if "checksum mismatch" in what and not move_aside:
            raise InputError(exc.path, f"{what}; the model folder {model_dir} is damaged: give another model, or "
                                       "retrain it", sample=exc.sample) from None
        if "checksum mismatch" in what:
            aside = Path(model_dir).with_name(f"{Path(model_dir).name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                os.replace(model_dir, aside)
            except OSError:
                aside = None
            if aside is not None:
                raise InputError(exc.path, f"{what}; the model folder was moved aside to {aside}; "
                                 "rerun the workflow to retrain it", sample=exc.sample) from None
        raise InputError(exc.path, f"{what}; delete the model folder {model_dir} and rerun to retrain it",
                         sample=exc.sample) from None


def trained_description(model_dir: str | Path) -> dict:
    """A sample model's ``model.json`` (spec, ``metadata``, ``selfres_code``), its weights
    checked against their checksum but not loaded: no torch needed."""
    from . import modelfile

    info, _ = _checked_model_folder(model_dir, modelfile.read_description)
    return info


def load_trained(model_dir: str | Path, *, move_damaged_aside: bool = True):
    """(model, spec, metadata) of a trained sample model (``move_damaged_aside``: see
    :func:`_checked_model_folder`)."""
    from . import models

    model, spec, info = _checked_model_folder(model_dir, models.load_model, move_aside=move_damaged_aside)
    meta = info.get("metadata", {})
    if "mode" not in meta:  # only a serial model's second stage has none, read through its first
        raise InputError(Path(model_dir) / "model.json", "invalid model description: its metadata names no mode "
                         f"(enhance or isotropic); delete the model folder {model_dir} and rerun to retrain it")
    if meta.get("serial"):  # serial ×4: compose the two ×2 stages (a damaged second stage is the folder's too)
        from .ensemble import Serial

        second, _, _ = _checked_model_folder(model_dir, lambda d: models.load_model(Path(d) / meta["serial"]["stage2"]),
                                             move_aside=move_damaged_aside)
        model = Serial(model, second).eval()
    net_factors = getattr(model, "factors", None)
    if meta.get("mode") == "enhance" and net_factors is not None and tuple(net_factors) != tuple(meta["factors"]):
        raise InputError(Path(model_dir) / "model.json", f"invalid model description: it says factors "
                         f"{tuple(meta['factors'])}, its network restores by {tuple(net_factors)}; delete the model "
                         f"folder {model_dir} and rerun to retrain it")
    if meta.get("factors"):  # enhance: the self-ensemble rotates only where a rotation keeps the task (and did in training)
        model.lateral_rotations = all(
            models.lateral_rotations(meta["factors"], vs)
            for vs in (meta.get("voxel_size_in"), (meta.get("adopted_from") or {}).get("voxel_size_in")))
    return model, spec, meta


def output_dtype(settings: InferSettings, source_dtype: str):
    return np.dtype(source_dtype) if settings.output_dtype == "input" else np.dtype("float32")


@_holding("output")
def stage_infer(
    normalized: str | Path,
    model_dir: str | Path,
    output: str | Path,
    *,
    sample: str,
    settings: InferSettings | None = None,
    isotropic_settings: IsotropicSettings | None = None,
    device: str = "auto",
    threads: int | None = None,
    step: str = "all",
    block: int = 0,
) -> dict:
    """Restore the whole FOV into ``restored.ome.zarr`` (raw intensity units).

    ``isotropic_settings`` (an ``isotropic``-mode model only): its inference values
    (``fusion``, ``infer_batch``) for this sample; None takes those saved with the model.

    ``step`` splits the work for scattered runs (see :func:`selfres.infer.infer_to_store`):
    ``"prepare"`` creates (or keeps, when it matches) the partial store next to
    ``output``; ``"block"`` writes block ``block`` of ``settings.blocks``; ``"gather"``
    verifies every tile, builds the pyramid and moves the store into place. ``"all"``
    does the three in one process. A killed run resumes from the tiles it recorded (on a
    CPU's whole-volume back-projection path, recorded only once the whole volume is computed).
    Every step but ``"block"`` (whose jobs share the partial store by design) holds
    ``output`` (:func:`selfres.atomic.output_lock`): a second writer is refused.
    """
    settings = settings or InferSettings()
    set_threads(threads)
    from . import models
    from .infer import CubicUpsampler, infer_to_store, prepare_model

    dev = models.select_device(device)
    model, _, meta = load_trained(model_dir)
    vol, params = read_normalized(normalized, lazy=True)
    source = io.open_ome_zarr_array(normalized)
    # identity of the job: a partial store is resumed only when all of this matches
    check_model_fits_volume(meta, source.shape, vol.voxel_size, model_dir=model_dir, normalized=normalized,
                            sample=sample)
    check_model_acquisition(meta, vol.attrs, model_dir=model_dir, normalized=normalized, sample=sample)
    fingerprint = {"model": io.file_checksum(Path(model_dir) / "model.json"),
                   "input": {k: vol.attrs.get(k) for k in ("normalisation", "source_checksum")}
                   | {"shape": list(source.shape)},
                   "settings": {k: v for k, v in to_dict(settings).items()
                                if k not in ("blocks", *EXECUTION_KEYS["infer"])}}
    if meta.get("mode") == "isotropic":
        from . import isotropic
        from .settings import ENHANCE_ONLY_INFER_KEYS

        fingerprint["settings"] = {k: v for k, v in fingerprint["settings"].items()
                                   if k not in ENHANCE_ONLY_INFER_KEYS}
        return isotropic.stage_infer(vol, params, source, model, meta, output, sample=sample, settings=settings,
                                     iso_settings=isotropic_settings, device=dev, fingerprint=fingerprint, step=step,
                                     block=block, compression=(normalised_compression(normalized, source)
                                                               if step in ("all", "prepare") else 1.0))
    factors = tuple(meta["factors"])
    use_interp = "model_worse_than_interpolation" in meta.get("flags", []) and (
        settings.on_worse_than_interpolation == "interpolation"
    )
    dtype = output_dtype(settings, vol.attrs.get("source_dtype", "float32"))
    vs_in = voxel_size_of(vol)
    # unknown: the output is scaled in input voxels with no unit (and says so), so that it
    # still overlays its input in a viewer, rather than invent micrometres
    vs_grid = tuple(v / f for v, f in zip(vs_in or (1.0, 1.0, 1.0), factors))
    origin = grid_origin(vs_in or (1.0, 1.0, 1.0), vs_grid, at_voxel_size(vol.origin_voxels, vs_in))

    runs: list[dict] = []
    # the network reads the volume with its hot and dead pixels repaired, as in training (found
    # on the whole field, the same in every job of a scattered run, and only by a job that
    # computes tiles); a model trained before this repair existed: its inference as it was
    repair = "sensor_defects_repaired" in meta
    if repair:  # tiles made otherwise are redone (an older model's key stays as it was: its stores resume)
        fingerprint["repair_sensor_defects"] = True

    from .noise import defect_positions_once

    defects = defect_positions_once(source)

    def write_one(net, path, kind, reuse_finished=False):
        net = prepare_model(net, dev)
        stats = infer_to_store(
            net, source, path, step=step, block=block, blocks=settings.blocks, factors=factors,
            tile_size=settings.tile_size, dtype=dtype, voxel_size=vs_grid, unit="micrometer" if vs_in else None,
            fingerprint=fingerprint | {"kind": kind},
            chunks=settings.chunks, shards=settings.shards, ngff_version=settings.ngff_version,
            transform=lambda b: normalise.to_dtype(b, params, dtype),
            attrs={"sample": sample, "content": kind, "factors": list(factors), "normalisation": params.to_dict(),
                   "code": code_identity(), **layer_note(kind, use_interp, "tricubic"),
                   **{k: vol.attrs[k] for k in CARRIED_ATTRS if vol.attrs.get(k)},
                   "voxel_size_known": vs_in is not None, "ran_on": models.ran_on(dev)},
            contrast_limits=(params.low, params.high), device=dev, amp=settings.amp, batch_size=settings.batch_size,
            memory_fraction=settings.gpu_memory_fraction, origin=origin, reuse_finished=reuse_finished,
            defects=defects if repair and kind == "model" else None,
        )
        if step == "gather" and not stats["computed"]:  # the blocks computed them: no rate of nothing computed
            log.info("%s (gather) %s: the blocks' %d tiles gathered and the store finished in %.1f s", kind, path,
                     stats["tiles"], stats["seconds"])
        else:
            log.info("%s (%s) %s: %d/%d tiles computed in %.1f s (%s Mvoxel/s)", kind, step, path,
                     stats["computed"], stats["tiles"], stats["seconds"], _rate_text(stats["mvoxel_per_s"]))
        runs.append(stats)
        return stats["seconds"]

    from .train import inference_extras

    extras = inference_extras(settings)
    guarded = meta.get("inference_extras")
    if guarded is not None and effective_extras(guarded, meta) != effective_extras(extras, meta):
        log.warning("sample %s: the guard scored the model with %s, but inference runs with %s; retrain (or "
                    "run the workflow, which does) for a verdict on this output", sample, guarded, extras)
    model_out = model
    if extras["ensemble"] or extras["back_projection_iterations"]:
        from .ensemble import wrap_for_inference
        from .settings import DegradationSettings, from_dict
        from .train import make_degradation

        deg = make_degradation(from_dict(DegradationSettings, trained_degradation(meta)),
                               voxel_size=meta.get("voxel_size_in"))
        model_out = wrap_for_inference(model, degradation=deg, noise_level=recorded_noise_level(meta), **extras)
    if step in ("all", "prepare"):  # a disk without room for the output: said now, not after the network's work
        check_room_for_inference(output, fall_back=use_interp, fingerprint=fingerprint,
                                 shape=[n * f for n, f in zip(source.shape, factors)], dtype=dtype,
                                 voxel_size=vs_grid if vs_in else None,
                                 compression=normalised_compression(normalized, source), sample=sample,
                                 source_dtype=vol.attrs.get("source_dtype"))
    if use_interp:
        model_path = model_output_path(output)
        log.warning("sample %s: the model did not beat tricubic on the held-out region; %s holds tricubic "
                    "interpolation, the model output is kept in %s", sample, Path(output).name, model_path.name)
        # kept when finished by this same job (a run killed while writing the interpolation after it):
        # Snakemake removes the rule's declared output before a rerun, not this one
        secs = write_one(model_out, model_path, "model", reuse_finished=True)
        secs += write_one(CubicUpsampler(factors), output, "interpolation")
    else:
        secs = write_one(model_out, output, "model")
        if step in ("all", "gather"):
            drop_stale_model_output(output)
    return {"infer_seconds": secs, "content": "interpolation" if use_interp else "model",
            "tiles": runs[-1]["tiles"], "computed": sum(r["computed"] for r in runs),
            "resumed": sum(r["resumed"] for r in runs)}


#: An output is refused before any work when the free space of its file system (plus what an
#: unfinished store of it already holds) is below this share of its estimated size
#: (:func:`check_room_for_outputs`): one that surely cannot fit. The estimate takes the
#: compression of the float32 normalised copy; a review measured outputs at 0.60–0.73 of it
#: (16-bit outputs, a smooth z-cubic fall-back: refused wrongly at 0.8) and at 1.52 of it (a
#: float32 output of an 8-bit acquisition, whose normalised copy compresses like its integers):
#: a disk short by less than that is found when it fills, its partial store kept
ROOM_SHARE_REFUSED = 0.5


def output_bytes_estimate(shape: Sequence[int], dtype, voxel_size: Sequence[float] | None, *,
                          compression: float) -> int:
    """The bytes an output store of ``shape`` and ``dtype`` takes on disk: its level 0 and the
    pyramid levels below it (:func:`selfres.io.plan_levels`), times ``compression`` (bytes on
    disk per byte of array)."""
    voxels = math.prod(int(n) for n in shape)
    voxels += sum(math.prod(level_shape) for _, level_shape in io.plan_levels(tuple(shape), voxel_size, None))
    return int(voxels * np.dtype(dtype).itemsize * compression)


def normalised_compression(normalized: str | Path, source) -> float:
    """Bytes on disk per byte of array of the normalised copy's level 0 (``source``, its open
    array), between 0.05 and 1: how well this acquisition's content compresses."""
    raw = math.prod(int(n) for n in source.shape) * np.dtype(source.dtype).itemsize
    on_disk = tree_bytes(Path(normalized) / "0")
    return float(min(1.0, max(0.05, on_disk / raw))) if raw and on_disk else 1.0


def check_room_for_outputs(stores: Sequence[str | Path], shape: Sequence[int], dtype, voxel_size, *,
                           compression: float, sample: str, source_dtype=None,
                           kept: Sequence[str | Path] = ()) -> None:
    """Refuse, before any computation, output stores their file system has no room for.

    ``stores`` are written in full, each of ``shape`` and ``dtype`` (the guard's fall-back
    writes two), an existing one too (a rerun replaces it only once its new store is finished);
    those in ``kept`` need nothing: finished by this same job, they are kept as they are (a
    resumed fall-back's model output, :func:`kept_model_output`). Their estimated size
    (:func:`output_bytes_estimate`) is set against the free space of the file system of the
    first, to which an unfinished store of each adds what it holds (a resumed run rewrites its
    tiles in place); below :data:`ROOM_SHARE_REFUSED` of it
    the run would surely fail at a write after the network's work, so
    :class:`~selfres.errors.NoRoom` is raised now."""
    from .errors import NoRoom

    stores = [Path(s) for s in stores]
    kept = {Path(k) for k in kept}
    todo = [s for s in stores if s not in kept]
    if not todo:
        return
    need = len(todo) * output_bytes_estimate(shape, dtype, voxel_size, compression=compression)
    probe = nearest_existing(stores[0].parent)
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return
    if usage.total <= 0:  # a file system that reports no sizes (some FUSE mounts): nothing to go by
        return
    free = usage.free
    held = sum(tree_bytes(partial_path(s)) for s in todo)
    if free + held >= ROOM_SHARE_REFUSED * need:
        return
    names = " and ".join(s.name for s in todo)
    shape_text = "×".join(str(int(n)) for n in shape)
    raise NoRoom(f"sample {sample!r}: {names} ({len(todo)} × {shape_text} {np.dtype(dtype).name}, with its "
                 f"pyramid) need about {need / 1e9:.3g} GB at this acquisition's compression, and the file system "
                 f"of {probe} has {free / 1e9:.3g} GB free{f' (+{held / 1e9:.3g} GB in unfinished stores)' if held else ''}"
                 "; nothing was computed. Free space there, or give the output another place (config results, -o)"
                 + ("; or write the acquisition's own type (infer.output_dtype: input)"
                    if source_dtype is not None and np.dtype(source_dtype).itemsize < np.dtype(dtype).itemsize
                    else ""))


def kept_model_output(output: str | Path, fingerprint: dict) -> list[Path]:
    """The model output beside ``output`` when a fall-back's rerun keeps it — finished by this
    same job (``fingerprint``, the job's before the store's layout is added:
    :func:`selfres.infer.finished_store_attrs`): a list of it, or empty (not there, unfinished,
    or made by another job and so written again)."""
    from .infer import finished_store_attrs

    path = model_output_path(output)
    return [path] if finished_store_attrs(path, fingerprint | {"kind": "model"}, within=True) is not None else []


def check_room_for_inference(output: str | Path, *, fall_back: bool, fingerprint: dict, shape: Sequence[int], dtype,
                             voxel_size, compression: float, sample: str, source_dtype=None) -> None:
    """:func:`check_room_for_outputs` for an inference job (either mode): its ``output``, and with
    the guard's ``fall_back`` the model output beside it too, unless this same job (``fingerprint``)
    finished that one (:func:`kept_model_output`)."""
    stores = [model_output_path(output), output] if fall_back else [output]
    check_room_for_outputs(stores, shape, dtype, voxel_size, compression=compression, sample=sample,
                           source_dtype=source_dtype,
                           kept=kept_model_output(output, fingerprint) if fall_back else ())


def _rate_text(mvoxel_per_s) -> str:
    """Throughput for the log: three significant digits, or "–" when nothing was computed."""
    try:
        rate = float(mvoxel_per_s)
    except (TypeError, ValueError):
        return "–"
    return f"{rate:.3g}" if math.isfinite(rate) else "–"


def at_voxel_size(origin_voxels, voxel_size) -> tuple[float, ...] | None:
    """A position in voxel steps (:attr:`selfres.io.Volume.origin_voxels`) in the unit of
    ``voxel_size`` (µm), or still in voxel steps when the voxel size is unknown."""
    if origin_voxels is None:
        return None
    return tuple(float(o) * float(v) for o, v in zip(origin_voxels, voxel_size or (1.0, 1.0, 1.0)))


def grid_origin(vs_in, vs_out, origin_in=None) -> tuple[float, ...] | None:
    """Where the first output voxel's centre sits (µm) when the input's sits at
    ``origin_in`` (default 0): the contract's half-pixel-centre grid, output voxel ``j`` at
    input coordinate ``(j + 0.5) / s − 0.5``, i.e. ``origin_in + (v_out − v_in) / 2`` per
    axis; ``None`` when the voxel size is unknown (the store's scales are then plain voxel
    steps)."""
    if not vs_in or not vs_out:
        return None
    return tuple(float(o0) + (float(o) - float(i)) / 2.0
                 for i, o, o0 in zip(vs_in, vs_out, origin_in or (0.0, 0.0, 0.0)))


def trained_degradation(meta: dict) -> dict:
    """The degradation settings the model was trained with (``model.json``); the default
    degradation for a model saved without them (hand-made, or from an older selfres)."""
    deg = (meta.get("settings") or {}).get("degradation")
    if deg is None:
        from .settings import DegradationSettings

        log.info("model.json records no training degradation; back-projection uses the default (%s)",
                 DegradationSettings().method)
        return to_dict(DegradationSettings())
    return deg


def effective_extras(extras: dict, meta: dict) -> dict:
    """Inference extras as they act on this model: the shrink only where ``model.json``
    records a noise level for it (a model trained before the shrink, or on an acquisition
    with no measurable noise, takes plain steps either way)."""
    shrink = bool(extras.get("back_projection_shrink")) and recorded_noise_level(meta) is not None
    return {**extras, "back_projection_shrink": shrink}


def recorded_noise_level(meta: dict):
    """The noise a back-projection correction holds, as training measured it (``model.json``
    ``correction_noise``, :func:`selfres.train.correction_noise`), a
    :class:`selfres.noise.NoiseLevel`; ``None`` when none was recorded (back-projection then
    takes plain steps)."""
    from .noise import NoiseLevel

    level = meta.get("correction_noise")
    if level is None:
        return None
    return NoiseLevel(float(level[0]), float(level[1]))


MODEL_OUTPUT_WHAT = "the model's output (written beside the output when the guard delivers interpolation)"


#: what a restored store keeps of its normalised input's attributes: the acquisition's channel name and
#: colour (layer names, display colours) and frame interval (the time-series export)
CARRIED_ATTRS = ("channel_name", "channel_color", "time_increment_s")


def layer_note(kind: str, use_interp: bool, interpolation: str) -> dict:
    """``{"layer_note": …}`` for a store that holds something else than the restoration
    (:func:`selfres.io.channel_label` puts it in the layer and channel names): the guard's
    fall-back (``interpolation``: ``tricubic``, ``z-cubic``), and the network's output kept
    beside it; ``{}`` for the restoration."""
    if kind == "interpolation":
        return {"layer_note": interpolation}
    return {"layer_note": f"network, lost to {interpolation}"} if use_interp else {}


def model_output_path(output: str | Path) -> Path:
    """Where the model's output goes beside ``output`` when the guard put interpolation in
    ``output``: ``restored.ome.zarr`` → ``restored_model.ome.zarr``, ``a.ome.zarr`` →
    ``a_model.ome.zarr`` (so outputs written to one folder keep their own)."""
    out = Path(output)
    name = out.name.rstrip("/")
    for ext in (".ome.zarr", ".zarr"):
        if name.endswith(ext):
            return out.with_name(f"{name[: -len(ext)]}_model{ext}")
    return out.with_name(f"{name}_model")


def drop_stale_model_output(output: str | Path) -> None:
    """Remove the model output (:func:`model_output_path`, and its partial store) left beside
    ``output`` by an earlier run whose model was flagged: now that ``output`` holds the model
    output, a second, older model output would only mislead."""
    stale = model_output_path(output)
    for p in (stale, partial_path(stale), stale.with_name(f".{stale.name}.progress")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s from an earlier run (the model is no longer flagged)", p)


def tiff_export_path(output: str | Path) -> Path:
    """Where ``export_tiff`` (``selfres export``) puts the OME-TIFF of ``output``:
    ``restored.ome.zarr`` → ``restored.ome.tif`` beside it (and a channel's or time point's,
    ``export_acquisition``, the acquisition's ``{results}/{acquisition}.ome.tif``: see
    :func:`drop_stale_export`)."""
    output = Path(output)
    name = output.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(f"{name}.ome.tif")


def drop_stale_export(output: str | Path, *, part: tuple[int | None, int | None] = (None, None)) -> None:
    """Remove the OME-TIFF export (:func:`tiff_export_path`; for a channel or time point of an
    acquisition, ``results/S_c1/restored.ome.zarr``, also the acquisition's ``results/S.ome.tif``) of an earlier ``output``: once
    ``output`` is rewritten it shows the old restoration, and with ``export_tiff: false`` no
    job would ever replace it. Only the workflow's infer rules ask for this (``selfres infer
    --drop-stale-export``), where that path is the workflow's own export: next to an output
    named by a user it may be any file (``selfres restore x.ome.tif -o x.ome.zarr``).

    ``part`` is ``(time point, channel)`` of the file that the restored input was read from
    (its normalised store's attributes): the acquisition's export is dropped only when the
    sample's id names that part, as the workflow groups parts (``cells_c1`` read as channel 1).
    A sample merely named like a part (``mouse_t2``, the whole of another file) is not one."""
    stale = [tiff_export_path(output)]
    output = Path(output)
    if output.name == "restored.ome.zarr" and ("_c" in output.parent.name or "_t" in output.parent.name):
        from .sheet import part_of  # pandas: only for the channels and time points of an acquisition

        found = part_of(output.parent.name)  # results/S_c1_t2/restored.ome.zarr: a part of results/S.ome.tif
        if found and found[1:] == tuple(part):
            stale.append(output.parent.parent / f"{found[0]}.ome.tif")
    for path in stale:
        if path.is_file():
            path.unlink()
            log.info("removed %s: it was exported from the earlier %s", path, output.name)


def stage_report(
    normalized: str | Path,
    restored: str | Path,
    model_dir: str | Path,
    fov_json: str | Path,
    metrics_json: str | Path,
    report_html: str | Path,
    provenance_json: str | Path,
    *,
    sample: str,
    resolved_config: dict | None = None,
    benchmarks_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    workflow_dir: str | Path | None = None,
) -> None:
    """Render ``report.html`` and write ``provenance.json`` (and figure PNGs to ``figures_dir``).

    ``workflow_dir``: the folder of the Snakefile that ran; provenance then records its
    checkout's commit too (``workflow``), which differs from the package's (``git_commit``)
    when selfres is installed from elsewhere.

    Volumes are read lazily: the figures read centre planes, slab-wise projections and
    small crops; the interpolation is computed only where a figure reads it.
    """
    import pandas as pd

    from . import degrade, figures, report

    vol, params = read_normalized(normalized, lazy=True)
    out = read_restored(restored, sample=sample)
    model_description = trained_description(model_dir)
    meta = model_description.get("metadata", {})
    check_restored_grid(restored, out.shape, vol.data.shape, meta, sample=sample)
    check_model_acquisition(meta, vol.attrs, model_dir=model_dir, normalized=normalized, sample=sample)
    check_restored_origin(restored, out.attrs, model_dir, vol.attrs, sample=sample)
    metrics_d = read_metrics_for_report(metrics_json, sample=sample)
    check_metrics_origin(metrics_json, metrics_d, model_dir, restored, out.attrs, sample=sample)
    fov = TrainingFov.load(fov_json, volume_shape=vol.data.shape, mode=meta.get("mode"), sample=sample,
                           acquisition=normalise.acquisition_of(vol.attrs)).to_dict()
    # raw units: normalise.undo is x * span + low, applied where read
    raw = figures.VolumeView(vol.data, scale=params.span, offset=params.low)
    shape_in = tuple(vol.data.shape)[-3:] if vol.data.ndim >= 3 else (1, *vol.data.shape)
    factors = ((float(meta["factor"]), 1.0, 1.0) if meta.get("mode") == "isotropic"
               else tuple(float(f) for f in meta["factors"]))
    mats = [None if f == 1 else degrade.resize_matrix(n, int(round(n * f)), scale=f, antialias=False)
            for n, f in zip(shape_in, factors)]  # = interpolation_of, computed where read
    interp = figures.VolumeView(vol.data, matrices=mats, scale=params.span, offset=params.low)
    restored_arr = out.data
    if out.attrs.get("content") == "interpolation":  # the guard's fall-back: the store is that interpolation,
        interp = restored_arr  # read, not computed again (half of a large field's report: its projections)
    log_path = Path(model_dir) / "training_log.tsv"
    training_log = pd.read_csv(log_path, sep="\t") if log_path.exists() else None
    qc_dir = Path(metrics_json).parent
    spectra = None
    if (qc_dir / "spectra.json").exists():
        s = json.loads((qc_dir / "spectra.json").read_text())
        spectra = {k: v if k == "nyquist_in" else (np.asarray(v[0], float), np.asarray(v[1], float))
                   for k, v in s.items()}
    beads = pd.read_csv(qc_dir / "beads.tsv", sep="\t") if (qc_dir / "beads.tsv").exists() else None
    timings = {}
    if benchmarks_dir and Path(benchmarks_dir).is_dir():
        for f in current_benchmarks(sorted(Path(benchmarks_dir).glob("*.tsv")), blocks=out.attrs.get("blocks"),
                                    restored=restored):
            try:
                b = pd.read_csv(f, sep="\t")
                timings[f.stem] = {"seconds": float(b["s"].iloc[-1]), "max_rss_mb": float(b["max_rss"].iloc[-1])}
            except (KeyError, ValueError, IndexError, pd.errors.ParserError):
                continue
    prov = {
        "sample": sample,
        **code_identity(),  # of the code that wrote this report; the model's and the output's:
        "model_code": model_description.get("selfres_code"),
        "restored_code": out.attrs.get("code"),
        "workflow": ({"dir": str(Path(workflow_dir).resolve()), "git_commit": git_commit(workflow_dir),
                      "git_dirty": git_dirty(workflow_dir)} if workflow_dir is not None else None),
        "input": vol.attrs.get("source"),
        # as given (a sheet's paths are relative to the working directory), and resolved where normalise ran
        "input_resolved": vol.attrs.get("source_resolved") or (str(Path(vol.attrs["source"]).resolve())
                                                                if vol.attrs.get("source") else None),
        "input_checksum": vol.attrs.get("source_checksum"),
        # the intensities mapped to 0 and 1 for the network (raw units), and what they were read from
        "normalisation": params.to_dict(),
        # which image, channel and time point of the file this sample is (none: the file's only one)
        "input_part": {k: vol.attrs[k] for k in ("series", "channel", "channel_name", "timepoint", "time_increment_s")
                       if vol.attrs.get(k) is not None},
        # less how the jobs ran (tiles per pass...): the workflow does not rerun a report for those
        "resolved_config": _without_execution(resolved_config or {}),
        # config values that did not make these outputs (a step not rerun for a change): see the report
        "settings_not_applied": settings_not_applied(resolved_config, meta, out.attrs),
        "model": model_record(model_description),
        "timings": {"train_seconds": metrics_d.get("train_seconds"), "infer_seconds": metrics_d.get("infer_seconds"),
                    "qc_seconds": metrics_d.get("qc_seconds"), "rules": timings},
        "inference_compute": out.attrs.get("compute"),  # device/precision of the restored tiles
        "inference_ran_on": out.attrs.get("ran_on"),  # host, GPU and Slurm job of the job that wrote it
        "tiles_ran_on": out.attrs.get("tiles_ran_on"),  # ... of the jobs that computed tiles (each block's)
        "software": software_versions(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    vs_in = metrics_d.get("voxel_size_in")  # None: unknown (figures then measure in voxels)
    vs_out = metrics_d.get("voxel_size_out")
    drawn = figures.sample_figures(
        raw=raw, interp=interp, restored=restored_arr, voxel_size_in=vs_in, voxel_size_out=vs_out,
        training_log=training_log, bead_table=beads,
        # a serial ×4 model: each stage's kept step (its log's steps restart with stage 2)
        best_step=metrics_d.get("stage_best_steps") or metrics_d.get("best_step"),
        spectra=spectra, spectra_log10=True, train_fov=fov, margin_db=wording.num(metrics_d.get("guard_margin_db")),
        restored_is_interpolation=metrics_d.get("restored_content") == "interpolation",
        origin_voxels=vol.origin_voxels)  # the axes read the stores' coordinates (an OME-Zarr input's translation)
    html = report.render_sample_report(
        sample=sample, metrics=metrics_d, raw=raw, interp=interp, restored=restored_arr,
        voxel_size_in=vs_in, voxel_size_out=vs_out,
        training_log=training_log, provenance=prov, bead_table=beads, spectra=spectra, train_fov=fov,
        figures=drawn, sample_dir=Path(report_html).parent,  # as the rule names it: a --forcerun target
    )
    if figures_dir is not None:
        figures.write_report_figures(figures_dir, figures=drawn, names=figures.REPORT_FIGURES)
    io.write_text_atomic(report_html, html)  # a full disk or a kill leaves no temporary file behind
    write_json(provenance_json, clean_floats(prov))


def model_record(description: dict) -> dict:
    """``provenance.json``'s ``model``: from a model's ``model.json`` (``description``), what made
    it and how — mode, factors, kept step, device — and, for the report's methods text, the
    network, the sample that trained it (an adopted model), how its training inputs were made
    (isotropic mode: the axial degradation it learned; enhance's setting does not apply) and
    :func:`training_record`."""
    meta = description.get("metadata", {})
    spec = description.get("spec") or {}
    if meta.get("mode") == "isotropic":
        degradation = {"method": (meta.get("isotropic") or {}).get("degradation"),
                       **{k: v for k, v in (meta.get("degradation") or {}).items()
                          if k in ("sigma_px", "sigma_source", "factor", "noise_variance")}}
    else:
        degradation = {k: v for k, v in ((meta.get("settings") or {}).get("degradation") or {}).items()
                       if k in ("method", "sigma_um", "na", "wavelength_um", "psf_path")}
    return ({k: meta.get(k) for k in ("mode", "factors", "factor", "best_step", "stop_reason", "device", "ran_on",
                                      "fit_seconds")}
            | ({"psf": meta["psf"]} if meta.get("psf") else {})
            | {"arch": spec.get("arch"), "residual": spec.get("residual"),
               "n_parameters": description.get("n_parameters"), "adopted_from": meta.get("adopted_from"),
               "degradation": degradation, "training": training_record(meta)})


def training_record(meta: dict) -> dict:
    """How a model's training ran, from its ``model.json`` metadata, for the report's methods
    text: steps asked and run (a serial ×4 model's per stage), why it stopped, loss, optimiser
    schedule, batches, the patch as trained, seed and augmentations (``isotropic``: steps, loss,
    batches and noise matching are its own settings; noise matched only where a level was added;
    ends blended only where a weight is under 1; the output layer's share of the learning rate)."""
    train = meta.get("settings") or {}
    iso = meta.get("mode") == "isotropic"
    own = (meta.get("isotropic") or {}) if iso else train
    serial = meta.get("serial") or {}
    degradation = meta.get("degradation") or {}
    record = {
        **{k: own.get(k) for k in ("steps", "loss", "batch_size", "fft_weight")},
        **{k: train.get(k) for k in ("max_minutes", "learning_rate", "lr_schedule", "warmup_steps", "seed",
                                     "augment")},
        # no random blur where the PSF was given: the targets are the PSF-scaled crops
        **({k: train.get(k) for k in ("blur_augment", "blur_augment_sigma_px")} if not train.get("psf_sigma_um")
           else {}),
        "patch_size": meta.get("patch") or own.get("patch_size"),
        "steps_done": serial.get("stage_steps_done") or meta.get("steps_done"),
        "stop_reason": serial.get("stage_stop_reasons") or meta.get("stop_reason"),
        "noise_match": (bool(own.get("noise_match")) and any(float(v or 0) > 0 for v in
                                                             degradation.get("noise_variance") or [])) or None
        if iso else None,
        "end_blended": any(float(w) < 1 for w in meta.get("end_weights") or []) or None,
        "tail_lr_scale": meta.get("tail_lr_scale") if iso else None,
    }
    return {k: v for k, v in record.items() if v is not None}


def _without_execution(resolved_config: dict) -> dict:
    """A resolved configuration without the settings that decide how its jobs ran
    (:data:`selfres.settings.EXECUTION_KEYS`)."""
    from .settings import without_execution

    settings = resolved_config.get("settings")
    if not isinstance(settings, dict):
        return resolved_config
    return resolved_config | {"settings": without_execution(settings)}


KEPT_FILES = ("normalized.ome.zarr", "train_fov.json", "model", "qc", "report.html", "provenance.json")
"""What :func:`restore` writes into its ``keep`` folder."""


@contextlib.contextmanager
def _after_the_output(output: str | Path, stage: str):
    """A stage of :func:`restore` after ``output`` was written: running out of memory there is
    said with the stage's name and the output's state (the remedy of the stages before it —
    a smaller training FOV or tile — does not apply; a reviewer's report stage under
    ``ulimit -v`` failed so, with that advice, while the output was whole)."""
    from .errors import ALLOCATOR_REFUSALS

    try:
        yield
    except (MemoryError, RuntimeError) as exc:  # numpy's, or torch's allocator (qc runs the network)
        if isinstance(exc, RuntimeError) and not any(w in str(exc).lower() for w in ALLOCATOR_REFUSALS):
            raise
        why = " ".join(str(exc).split())[:300] or "no detail"
        raise MemoryError(f"the {stage} stage ran out ({why}) after {output} was written whole (it is kept); give "
                          "the command more memory (ulimit -v), or rerun with --keep DIR and then run "
                          f"`selfres {stage}` alone on the kept files, in a process of its own") from exc


def restore(
    input_path: str | Path,
    output: str | Path,
    *,
    mode: str = "enhance",
    scale: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    channel: int | None = None,
    training_fov: str | None = None,
    settings: Settings | None = None,
    device: str = "auto",
    threads: int | None = None,
    keep: str | Path | None = None,
    sample: str | None = None,
    reference: str | Path | None = None,
    timepoint: int | None = None,
    series: int | None = None,
    model_from: str | Path | None = None,
) -> dict:
    """Whole chain for one volume, no Snakemake: normalise → crop → train → infer → qc → report.

    Intermediate files go to ``keep`` (kept) or a temporary folder (removed). ``reference``:
    a ground truth on the output grid, scored by QC as the sheet's ``reference`` column is.
    ``model_from``: another volume's ``model/`` folder (same mode; ``enhance``: same scale;
    ``isotropic``: same axial factor), judged on this volume's held-out region instead of
    training (:func:`stage_adopt`).
    """
    settings = settings or Settings()
    sample = sample or Path(str(input_path).rstrip("/")).name.split(".")[0]
    check_mode(mode, sample=sample)
    # what needs no data, before the normalise stage reads a large acquisition
    from .fov import fov_bounds
    from .models import select_device
    from .qc import stage_qc  # not at the top: qc imports this module

    if str(device).strip().lower() != "auto":  # auto always finds one (and says so when training starts)
        select_device(device)
    if training_fov is not None:
        fov_bounds(training_fov)
    check_store_name(output, command="restore")
    if keep and Path(keep).exists() and not Path(keep).is_dir():
        raise ConfigError(f"--keep {keep} is a file; it names the folder the intermediate files are kept in")
    kept = KEPT_FILES if keep else ()
    check_outputs_spare_inputs({"the output": output, MODEL_OUTPUT_WHAT: model_output_path(output)}
                               | {f"the kept file ({name})": Path(keep) / name for name in kept},
                               [input_path, reference, model_from])
    if keep:  # nor the kept files that the later stages read back, nor their folder
        for what, out in (("the output", output), (MODEL_OUTPUT_WHAT, model_output_path(output))):
            hit = overwritten_input(out, [keep, *(Path(keep) / name for name in kept)])
            if hit is not None:
                raise ConfigError(f"{what} {out} would replace the --keep folder or its {hit}, which restore writes "
                                  "and reads back: give the output a path beside that folder or inside it under "
                                  f"another name (the kept files are {', '.join(kept)})")
    if model_from is not None:  # before the normalise and crop stages, not after them
        check_model_source(model_from, sample=sample)
    if not keep:
        log.info("intermediate files (model, metrics, report) go to %s beside the output and are removed at the "
                 "end; --keep DIR keeps them", f".{Path(output).name}.work")
    from .atomic import output_lock

    with output_lock(output):  # a second restore to this output is refused, before any work
        # without --keep: beside the output (its disk, not /tmp's), and a killed run's is
        # removed by the next (the lock says no live run uses it)
        work = Path(keep) if keep else Path(output).with_name(f".{Path(output).name}.work")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        try:
            norm = work / "normalized.ome.zarr"
            stage_normalise(input_path, norm, sample=sample, channel=channel, timepoint=timepoint, series=series,
                            voxel_size=voxel_size,
                            settings=settings.normalise, ngff_version=settings.infer.ngff_version)
            stage_crop(norm, work / "train_fov.json", sample=sample, mode=mode, scale=scale,
                       training_fov=training_fov, settings=settings.fov, reference=reference)
            if model_from is not None:
                stage_adopt(norm, work / "train_fov.json", model_from, work / "model", sample=sample, mode=mode,
                            scale=scale, settings=settings, device=device, threads=threads, source_is_output=False)
            else:
                stage_train(norm, work / "train_fov.json", work / "model", sample=sample, mode=mode, scale=scale,
                            settings=settings, device=device, threads=threads)
            stage_infer(norm, work / "model", output, sample=sample, settings=settings.infer,
                        isotropic_settings=settings.isotropic, device=device, threads=threads)
            with _after_the_output(output, "qc"):
                m = stage_qc(norm, output, work / "model", work / "train_fov.json", work / "qc" / "metrics.json",
                             sample=sample, reference=reference, settings=settings.qc)
            with _after_the_output(output, "report"):
                stage_report(norm, output, work / "model", work / "train_fov.json", work / "qc" / "metrics.json",
                             work / "report.html", work / "provenance.json", sample=sample,
                             resolved_config={"mode": mode, "scale": scale, "settings": to_dict(settings),
                                              # as the workflow's (the sheet's cells): the voxel size given
                                              # overrides the file's, so a record without it cannot say
                                              # which grid the output's micrometres came from
                                              "voxel_size": [float(v) for v in voxel_size] if voxel_size else None,
                                              "series": series, "channel": channel, "timepoint": timepoint,
                                              "training_fov": training_fov,
                                              "reference": str(reference) if reference else None,
                                              "model_from": str(model_from) if model_from is not None else None})
            return m
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
