"""Command-line interface: one subcommand per stage, plus ``restore`` and ``demo``.

Each subcommand parses its arguments, builds typed settings and calls one function of
:mod:`selfres.pipeline` (or :mod:`selfres.demo`). Errors meant for users are printed as
one ``ERROR:`` line (no traceback) and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ALLOCATOR_REFUSALS, ConfigError, InputError, NoRoom, SelfresError
from .runlog import RUN_STATUSES
from .settings import DEFAULT_SCALE, DegradationSettings


def _settings(args):
    from .settings import parse_settings

    return parse_settings(args.settings)


def _common(p: argparse.ArgumentParser, *, sample=True, settings=True, compute=False, device=True,
            default_device="auto"):
    if sample:
        p.add_argument("--sample", required=False, default=None, help="sample id (for messages and metadata)")
    if settings:
        p.add_argument("--settings", default=None,
                       help="JSON object of settings, by section as in config.yaml (partial; defaults fill the "
                            "rest), e.g. '{\"train\": {\"max_minutes\": 1}}' or '{\"train.max_minutes\": 1}'")
    if compute:
        if device:
            p.add_argument("--device", default=default_device,
                           help="auto (CUDA if available), cpu or cuda[:N] (default "
                                f"{default_device or 'auto; cpu for --step prepare and gather'})")
        p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (>= 1)")


def _int_at_least(text, least: int):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _positive_int(text):
    return _int_at_least(text, 1)


def _non_negative_int(text):
    return _int_at_least(text, 0)


def _json_object(text: str, option: str) -> dict:
    """``text``, the value of the command-line ``option``, as a JSON object (ConfigError if not)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object, not a {type(value).__name__}")
    return value


def _voxel_size(text):
    from .settings import parse_voxel_size

    try:
        return parse_voxel_size(text, name="value")
    except ConfigError as exc:  # argparse's own one-line error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scale(text):
    from .settings import parse_scale

    try:
        return parse_scale(text, name="value")
    except ConfigError as exc:  # argparse's own one-line error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


_ACQUISITION_HELP = "the acquisition: TIFF / OME-TIFF, OME-Zarr or Zarr (see README, Using your own data)"
_NORMALIZED_HELP = "the sample's normalized.ome.zarr (written by normalise)"
_FOV_HELP = "the sample's train_fov.json (written by crop)"
_MODEL_HELP = "the sample's model/ folder (written by train or adopt)"
_RESTORED_HELP = "the sample's restored.ome.zarr (written by infer)"
_RESULTS_HELP = "the workflow's results folder"
_MODE_HELP = "enhance (finer grid, --scale) or isotropic (z restored to the lateral voxel size); default enhance"
_SCALE_HELP = "enhance: z,y,x integer factors of the output grid (default 2,2,2)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfres",
        description="Self-supervised resolution restoration of 3-D fluorescence stacks.",
    )
    p.add_argument("--version", action="version", version=f"selfres {__version__}")
    levels = dict(type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                  help="how much the log says (default INFO; also after the command)")
    p.add_argument("--log-level", default="INFO", **levels)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="write the built-in demo acquisitions (beads, neurites) and references")
    s.add_argument("outdir", type=Path, help="folder to write the demo's acquisitions and references into")
    s.add_argument("--seed", type=_non_negative_int, default=0, help="random seed of the simulation (default 0)")

    s = sub.add_parser("normalise", help="robust normalisation → normalized.ome.zarr")
    s.add_argument("input", type=Path, help=_ACQUISITION_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="OME-Zarr store to write (NAME.ome.zarr)")
    s.add_argument("--channel", type=int, default=None, help="channel of a multi-channel acquisition (0-based)")
    s.add_argument("--timepoint", type=int, default=None, help="time point of a time series (0-based)")
    s.add_argument("--series", type=int, default=None, help="image of a TIFF holding several (TIFF series number)")
    s.add_argument("--voxel-size", type=_voxel_size, default=None, help="z,y,x in µm (overrides metadata)")
    _common(s)

    s = sub.add_parser("crop", help="choose the training FOV and held-out region → train_fov.json")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write (train_fov.json)")
    s.add_argument("--mode", default="enhance", help=_MODE_HELP)
    s.add_argument("--scale", type=_scale, default=None, help=_SCALE_HELP)
    s.add_argument("--training-fov", default=None, help="z0:z1,y0:y1,x0:x1 in input voxels")
    s.add_argument("--reference", type=Path, default=None,
                   help="the sample's ground truth: fail now, before training, when it is missing or unreadable")
    _common(s)

    s = sub.add_parser("train", help="train the sample's model → model/")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("fov", type=Path, help=_FOV_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="model folder to write (model/)")
    s.add_argument("--mode", default="enhance", help=_MODE_HELP)
    s.add_argument("--scale", type=_scale, default=None, help=_SCALE_HELP)
    _common(s, compute=True)

    s = sub.add_parser("adopt", help="restore a sample with another sample's trained model → model/ "
                       "(judged on this sample's held-out region)")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("fov", type=Path, help=_FOV_HELP)
    s.add_argument("source_model", type=Path, help="the other sample's model/ folder")
    s.add_argument("-o", "--output", type=Path, required=True, help="model folder to write for this sample (model/)")
    s.add_argument("--mode", default="enhance", help=_MODE_HELP + " (must be the model's)")
    s.add_argument("--scale", type=_scale, default=None, help="enhance: z,y,x factors of this sample (the model's)")
    # a CPU step, as its rule asks no GPU: on a workstation's GPU pool it took a GPU's lock
    _common(s, compute=True, default_device="cpu")

    s = sub.add_parser("infer", help="restore the whole FOV → restored.ome.zarr (resumable; scatter with --step)")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("model", type=Path, help=_MODEL_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="OME-Zarr store to write (restored.ome.zarr)")
    s.add_argument("--step", default="all", choices=["all", "prepare", "block", "gather"],
                   help="all (default) or one step of a scattered run: prepare the partial store, write one "
                        "block of tiles, gather (verify, pyramid, move into place)")
    s.add_argument("--block", type=int, default=0, help="with --step block: block index 0..N-1")
    s.add_argument("--blocks", type=int, default=None, help="number of blocks N (overrides infer.blocks)")
    s.add_argument("--done", type=Path, default=None, help="write this JSON marker (stats) on success")
    s.add_argument("--drop-stale-export", action="store_true",
                   help="the workflow's: remove OUTPUT's OME-TIFF export (restored.ome.tif) from an earlier run")
    s.add_argument("--execution", default=None,
                   help="JSON object of the values that change how the job runs, not its output "
                        "(infer.batch_size, infer.gpu_memory_fraction, isotropic.infer_batch), put over --settings; "
                        "the workflow passes them apart, so that changing one reruns nothing")
    _common(s, compute=True, default_device=None)  # auto; cpu for --step prepare and gather

    s = sub.add_parser("qc", help="metrics (self-validation, resolution, reference) → qc/metrics.json")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("restored", type=Path, help=_RESTORED_HELP)
    s.add_argument("model", type=Path, help=_MODEL_HELP)
    s.add_argument("fov", type=Path, help=_FOV_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write (qc/metrics.json)")
    s.add_argument("--reference", type=Path, default=None,
                   help="ground truth on the output grid: the output and the interpolation are scored against it")
    _common(s, compute=True, device=False)  # a CPU step: the held-out re-score is small

    s = sub.add_parser("report", help="per-sample report.html and provenance.json")
    s.add_argument("normalized", type=Path, help=_NORMALIZED_HELP)
    s.add_argument("restored", type=Path, help=_RESTORED_HELP)
    s.add_argument("model", type=Path, help=_MODEL_HELP)
    s.add_argument("fov", type=Path, help=_FOV_HELP)
    s.add_argument("metrics", type=Path, help="the sample's qc/metrics.json (written by qc)")
    s.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write (report.html)")
    s.add_argument("--provenance", type=Path, required=True, help="JSON file to write (provenance.json)")
    s.add_argument("--config", default=None, help="resolved per-sample config (JSON) for provenance")
    s.add_argument("--workflow-dir", type=Path, default=None,
                   help="folder of the Snakefile that ran (provenance records its git commit)")
    s.add_argument("--benchmarks", type=Path, default=None,
                   help="folder of the workflow's benchmark files (rule timings for provenance)")
    s.add_argument("--figures", type=Path, default=None,
                   help="also write the key figures as PNG files into this folder")
    _common(s, settings=False)

    s = sub.add_parser("export", help="copy restored.ome.zarr into an OME-TIFF (Fiji, other TIFF readers); "
                                      "several: one multichannel image or time series")
    s.add_argument("source", type=Path, nargs="+",
                   help="OME-Zarr image, e.g. results/SAMPLE/restored.ome.zarr; several on one grid (the channels "
                        "of one acquisition: results/S_c0/restored.ome.zarr results/S_c1/restored.ome.zarr) become "
                        "the channels of one image, named by their samples")
    s.add_argument("-o", "--output", type=Path, required=True, help="OME-TIFF to write (*.ome.tif)")
    s.add_argument("--level", type=int, default=0,
                   help="pyramid level (0: full resolution; 1, 2…: smaller views for a quick look)")
    s.add_argument("--timepoints", type=_positive_int, default=1,
                   help="the sources are this many time points, each of the same channels in the same order "
                        "(S_t0 S_t1 …, or S_c0_t0 S_c1_t0 S_c0_t1 S_c1_t1 …): one time series (default 1)")
    _common(s, settings=False)

    s = sub.add_parser("summary", help="summary.tsv and summary.html over all samples")
    s.add_argument("results", type=Path, help=_RESULTS_HELP)
    s.add_argument("--samples", required=True, help="comma-separated sample ids")
    s.add_argument("--modes", default=None, help="JSON mapping sample → mode")
    s.add_argument("-o", "--output", type=Path, required=True, help="summary.tsv")
    s.add_argument("--html", type=Path, required=True, help="summary.html")
    s.add_argument("--snakemake-log", type=Path, default=None,
                   help="the ending run's .snakemake/log/*.snakemake.log: its samples with a job that did not "
                        "finish are failed, whatever older outputs lie on disk")
    s.add_argument("--acquisitions", default=None,
                   help="JSON mapping acquisition → its sample ids, for the combined OME-TIFFs of export_tiff: "
                        "those the run did not write are named, with why")
    s.add_argument("--model-sources", default=None,
                   help="JSON mapping sample → the sample whose model it uses (model_from): a sample not restored "
                        "because its source failed says so")
    s.add_argument("--waiting", default=None,
                   help="JSON mapping sample → its inbox acquisition, left for the next run because it is still "
                        "changing: listed as pending (with an earlier run's report, if any)")

    s = sub.add_parser("refused", help="the one job of a sample the workflow refused when it read the sheet or "
                       "the inbox (bad_rows: fail_alone): prints the reason as the sample's ERROR line and fails")
    s.add_argument("--sample", required=True, help="the refused sample's id")
    s.add_argument("--message", required=True, help="why the sample was refused (the run's start says it too)")

    s = sub.add_parser("runlog", help="record of one snakemake run → RESULTS/runs/*.json and runs.tsv")
    s.add_argument("results", type=Path, help=_RESULTS_HELP)
    s.add_argument("--status", required=True, choices=RUN_STATUSES,
                   help="stopped: a run killed before Snakemake's onsuccess/onerror (the next run records those)")
    s.add_argument("--snakemake-log", type=Path, default=None, help=".snakemake/log/*.snakemake.log of the run")
    s.add_argument("--samples", default="", help="comma-separated sample ids of the run")

    s = sub.add_parser("inspect", help="what selfres reads from an acquisition (images, channels, time points, "
                       "shape, voxel size) and the output grid of each mode: check a file before a run")
    s.add_argument("input", type=Path, nargs="+",
                   help=_ACQUISITION_HELP + "; several: each in turn, a file that cannot be read named and passed over")
    s.add_argument("--voxel-size", type=_voxel_size, default=None,
                   help="z,y,x µm as the sample sheet's voxel_size column would give it (overrides the file's)")
    s.add_argument("--scale", type=_scale, default=DEFAULT_SCALE, help="enhance factors z,y,x for the output grid shown")
    s.add_argument("--training-fov", default=None,
                   help="z0:z1,y0:y1,x0:x1 as the sample sheet's training_fov column would give it")
    _common(s, sample=False)

    s = sub.add_parser("psf-sigma", help="Gaussian PSF σ (z,y,x µm) for train.psf_sigma_um: from the optics "
                       "(--na, --wavelength-um, --refractive-index) or measured on a bead stack (--beads)")
    s.add_argument("--beads", type=Path, default=None,
                   help="an image of sparse sub-resolution beads from the same microscope and settings")
    s.add_argument("--voxel-size", type=_voxel_size, default=None,
                   help="with --beads: z,y,x µm when the file does not record it")
    s.add_argument("--channel", type=int, default=None, help="with --beads: channel of a multi-channel file")
    s.add_argument("--timepoint", type=int, default=None, help="with --beads: time point of a time series")
    s.add_argument("--series", type=int, default=None, help="with --beads: image of a TIFF holding several")
    s.add_argument("--na", type=float, default=None, help="numerical aperture of the objective")
    s.add_argument("--wavelength-um", type=float, default=None,
                   help="emission wavelength in µm (two-photon: the excitation wavelength)")
    s.add_argument("--refractive-index", type=float, default=None, help="of the immersion medium")
    s.add_argument("--microscope", default="widefield", choices=["widefield", "confocal", "two_photon"],
                   help="with --na: the kind of microscope, for the PSF formula (default widefield)")

    s = sub.add_parser("restore", help="whole chain for one volume (no Snakemake)")
    s.add_argument("input", type=Path, help=_ACQUISITION_HELP)
    s.add_argument("-o", "--output", type=Path, required=True, help="OUT.ome.zarr")
    s.add_argument("--mode", default="enhance", help=_MODE_HELP)
    s.add_argument("--scale", type=_scale, default=None, help=_SCALE_HELP)
    s.add_argument("--voxel-size", type=_voxel_size, default=None, help="z,y,x in µm (overrides metadata)")
    s.add_argument("--channel", type=int, default=None, help="channel of a multi-channel acquisition (0-based)")
    s.add_argument("--timepoint", type=int, default=None, help="time point of a time series (0-based)")
    s.add_argument("--series", type=int, default=None, help="image of a TIFF holding several (TIFF series number)")
    s.add_argument("--training-fov", default=None,
                   help="z0:z1,y0:y1,x0:x1 in input voxels (default: chosen from the volume's structure)")
    s.add_argument("--keep", type=Path, default=None, help="keep intermediate files (model, metrics, report) here")
    s.add_argument("--model-from", type=Path, default=None,
                   help="restore with this model/ folder (another volume's, kept with --keep; same mode, and the "
                        "same scale or axial factor) instead of training; the guard still judges it on this volume")
    s.add_argument("--reference", type=Path, default=None,
                   help="ground truth on the output grid: QC scores the output and the interpolation against it")
    _common(s, compute=True)
    for command in sub.choices.values():  # `selfres restore … --log-level warning` as well
        command.add_argument("--log-level", default=argparse.SUPPRESS, **levels)
    return p


# the arguments of each command that name files it reads, and those it writes (flag as users type it)
_INPUT_ARGS = ("input", "normalized", "fov", "model", "source_model", "restored", "metrics", "source", "reference",
               "model_from", "results")
_OUTPUT_ARGS = {"output": "-o/--output", "provenance": "--provenance", "html": "--html", "done": "--done",
                "figures": "--figures"}


#: commands whose -o/--output is a file (the others write an OME-Zarr store, a directory)
_FILE_OUTPUT_COMMANDS = ("crop", "qc", "report", "export", "summary")


#: commands whose -o/--output is a folder they replace whole (an OME-Zarr store; train and adopt: a model folder)
_FOLDER_OUTPUT_COMMANDS = ("normalise", "train", "adopt", "infer", "restore")


def _check_replaceable(flag: str, folder: Path, *, model: bool) -> None:
    """Refuse an existing output that selfres did not write: the output is replaced whole, so
    a mistyped ``-o results/`` (another sample's folder, the summary) or ``-o raw.ome.zarr`` (an
    acquisition) would be deleted with exit status 0. An empty folder, or one that selfres
    wrote (a store with its ``"selfres"`` attributes; a model folder with its ``model.json``),
    is replaced as every rerun replaces it."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is an existing file; this output is a folder that selfres writes whole: "
                          "give a new path (the file is left as it is)")
    if model:
        ours = (folder / "model.json").is_file()
    else:
        ours = False
        for name in (".zattrs", "zarr.json"):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                ours = ours or '"selfres"' in (folder / name).read_text(encoding="utf-8")
    entries = sorted(p.name for p in folder.iterdir()) if not ours else []
    if entries:
        what = "a model folder" if model else "an OME-Zarr store"
        raise ConfigError(f"{flag} {folder} exists and is not {what} that selfres wrote (it holds "
                          f"{', '.join(entries[:3])}{' …' if len(entries) > 3 else ''}); selfres replaces its output "
                          "whole: give a new path, or remove that folder yourself if it is to go (it is left as it is)")


#: What else lowers a stage's memory, after "give the job more memory" (an out-of-memory exit)
_MEMORY_ADVICE = {
    "train": ", or lower fov.max_voxels",
    "adopt": ", or lower fov.max_voxels",
    "infer": ", or lower infer.tile_size",
    "restore": ", or lower fov.max_voxels or infer.tile_size",
}


def check_outputs_apart(args) -> None:
    """Refuse, before any work, a command whose output would replace one of its inputs
    (``selfres normalise a.tif -o a.tif``, ``-o data/`` for ``data/a.tif``): outputs are
    replaced whole, so the input would be lost with exit status 0."""
    from .atomic import check_outputs_spare_inputs

    inputs = []
    for name in _INPUT_ARGS:
        value = getattr(args, name, None)
        inputs += value if isinstance(value, list) else [value]
    outputs = {flag: getattr(args, name, None) for name, flag in _OUTPUT_ARGS.items()}
    # the folders the command replaces whole
    folders = {"-o/--output": args.output} if args.command in _FOLDER_OUTPUT_COMMANDS else {}
    if args.command in ("infer", "restore"):  # the model's output when the guard delivers interpolation
        from .pipeline import MODEL_OUTPUT_WHAT, model_output_path, tiff_export_path

        outputs[MODEL_OUTPUT_WHAT] = folders[MODEL_OUTPUT_WHAT] = model_output_path(args.output)
        if getattr(args, "drop_stale_export", False):
            outputs["the output's OME-TIFF export (--drop-stale-export)"] = tiff_export_path(args.output)
    check_outputs_spare_inputs(outputs, inputs)
    if args.command in ("normalise", "infer"):  # restore checks its own, after what it says first
        from .pipeline import check_store_name

        check_store_name(args.output, command=args.command)
    for flag, folder in folders.items():
        _check_replaceable(flag, Path(folder), model=args.command in ("train", "adopt"))
    file_outputs = ["done", "html", "provenance"] + (["output"] if args.command in _FILE_OUTPUT_COMMANDS else [])
    for name in file_outputs:
        value = getattr(args, name, None)
        if value is not None and Path(value).is_dir():
            raise ConfigError(f"{_OUTPUT_ARGS[name]} {value} is a directory; this output is a file: give a file "
                              "name (the directory is left as it is)")


def run(args) -> int:
    cmd = args.command
    check_outputs_apart(args)
    if cmd in ("summary", "runlog"):  # run at the end of every run: without dask, zarr, matplotlib, torch
        return _run_record_or_summary(args)
    if cmd == "refused":
        raise ConfigError(args.message)
    if getattr(args, "mode", None) == "isotropic" and getattr(args, "scale", None) is not None and cmd != "inspect":
        logging.getLogger("selfres").warning(  # as the workflow says of a sheet row's scale
            "--scale %s is not used in isotropic mode (the output grid follows the voxel size: z step / lateral pixel)",
            ",".join(str(f) for f in args.scale))
    if cmd == "export":  # the io layer only: not the pipeline's imports
        from .io import write_ome_tiff

        if not args.output.name.lower().endswith((".ome.tif", ".ome.tiff")):
            raise ConfigError(f"-o/--output {args.output}: name the OME-TIFF *.ome.tif (or *.ome.tiff): Bio-Formats "
                              "(Fiji, napari, QuPath) reads its voxel size and channel names only from such a name")
        if len(args.source) % args.timepoints:
            raise ConfigError(f"--timepoints {args.timepoints}: {len(args.source)} images cannot be that many time "
                              "points of the same channels")
        write_ome_tiff(args.output, args.source[0] if len(args.source) == 1 else args.source, level=args.level,
                       name=args.sample, timepoints=args.timepoints)
        return 0
    from . import pipeline

    sample = _sample_id(args)
    if cmd == "demo":
        from .demo import write_demo

        out = write_demo(args.outdir, seed=args.seed)
        print(json.dumps({k: {kk: str(vv) for kk, vv in v.items()} for k, v in out.items()}, indent=2))
    elif cmd == "normalise":
        st = _settings(args)
        pipeline.stage_normalise(args.input, args.output, sample=sample, channel=args.channel,
                                 timepoint=args.timepoint, series=args.series, voxel_size=args.voxel_size, settings=st.normalise,
                                 ngff_version=st.infer.ngff_version)
    elif cmd == "crop":
        pipeline.stage_crop(args.normalized, args.output, sample=sample, mode=args.mode, scale=args.scale,
                            training_fov=args.training_fov, settings=_settings(args).fov, reference=args.reference)
    elif cmd == "train":
        pipeline.stage_train(args.normalized, args.fov, args.output, sample=sample, mode=args.mode, scale=args.scale,
                             settings=_settings(args), device=args.device, threads=args.threads)
    elif cmd == "adopt":
        pipeline.stage_adopt(args.normalized, args.fov, args.source_model, args.output, sample=sample,
                             mode=args.mode, scale=args.scale, settings=_settings(args), device=args.device, threads=args.threads)
    elif cmd == "infer":
        import dataclasses

        from .settings import merge_execution, parse_settings

        try:
            given = json.loads(args.settings) if args.settings else {}
        except json.JSONDecodeError:
            given = args.settings  # parse_settings says what is wrong
        if args.execution:
            execution = _json_object(args.execution, "--execution")
            if not isinstance(given, dict):
                raise ConfigError("--settings and --execution must each be a JSON object")
            given = merge_execution(given, execution)
            logging.getLogger("selfres").info("how this job runs (--execution, not recorded in provenance.json): %s",
                                              json.dumps(execution, sort_keys=True))
        full = parse_settings(given)
        st = full.infer
        if args.blocks is not None:
            st = dataclasses.replace(st, blocks=args.blocks)
            st.validate()
        # prepare and gather compute with the model only when no prepared store is there (then
        # every tile): their rules ask no GPU, so by default they take none (on a workstation's
        # GPU pool they took a GPU's lock from the jobs that had asked for one)
        device = args.device or ("cpu" if args.step in ("prepare", "gather") else "auto")
        # an isotropic section given: its fusion / infer_batch, else those saved with an older model
        out = pipeline.stage_infer(args.normalized, args.model, args.output, sample=sample, settings=st,
                                   isotropic_settings=full.isotropic if "isotropic" in given else None,
                                   device=device, threads=args.threads, step=args.step, block=args.block)
        if args.drop_stale_export and args.step in ("all", "gather"):
            from . import io

            attrs = io.read_volume(args.normalized, lazy=True).attrs  # which part of its file it is
            pipeline.drop_stale_export(args.output, part=(attrs.get("timepoint"), attrs.get("channel")))
        if args.done:  # a Snakemake output: never half-written
            from .atomic import write_text_atomic

            write_text_atomic(args.done, json.dumps(out | {"step": args.step, "block": args.block,
                                                           "blocks": st.blocks}, default=str) + "\n")
    elif cmd == "qc":
        from .qc import stage_qc

        stage_qc(args.normalized, args.restored, args.model, args.fov, args.output, sample=sample,
                 reference=args.reference, settings=_settings(args).qc, threads=args.threads)
    elif cmd == "report":
        cfg = _json_object(args.config, "--config") if args.config else None
        pipeline.stage_report(args.normalized, args.restored, args.model, args.fov, args.metrics, args.output,
                              args.provenance, sample=sample, resolved_config=cfg, benchmarks_dir=args.benchmarks,
                              figures_dir=args.figures, workflow_dir=args.workflow_dir)
    elif cmd == "inspect":
        return inspect_files(args.input, settings=_settings(args), voxel_size=args.voxel_size, scale=args.scale,
                             training_fov=args.training_fov)
    elif cmd == "psf-sigma":
        sig = _psf_sigma(args)
        print(",".join(f"{v:.4g}" for v in sig))  # µm, ready for a train.psf_sigma_um cell
    elif cmd == "restore":
        m = pipeline.restore(args.input, args.output, mode=args.mode, scale=args.scale, voxel_size=args.voxel_size,
                             channel=args.channel, timepoint=args.timepoint, series=args.series,
                             training_fov=args.training_fov, model_from=args.model_from,
                             settings=_settings(args),
                             device=args.device, threads=args.threads, keep=args.keep, sample=args.sample,
                             reference=args.reference)
        print(json.dumps(m, indent=2))
    return 0


def _sample_id(args) -> str:
    """The sample id of a stage's messages and metadata: ``--sample``, else the one its
    normalised store records (``normalise`` and ``restore``: the acquisition's file name, as
    :func:`selfres.pipeline.restore` takes it), else ``sample``."""
    if getattr(args, "sample", None):
        return args.sample
    if args.command in ("normalise", "restore"):
        return Path(str(args.input).rstrip("/")).name.split(".")[0] or "sample"
    normalized = getattr(args, "normalized", None)
    if normalized is not None:  # read from the store's JSON; the stage says what is wrong with a bad one
        from .provenance import store_attrs

        recorded = store_attrs(normalized).get("sample")
        if isinstance(recorded, str) and recorded:
            return recorded
    return "sample"


def _run_record_or_summary(args) -> int:
    """``selfres summary`` and ``selfres runlog``: the batch's summary and run record."""
    samples = [s for s in args.samples.split(",") if s]
    if args.command == "summary":
        from .summary import stage_summary

        stage_summary(args.results, samples, args.output, args.html,
                      modes=_json_object(args.modes, "--modes") if args.modes else None,
                      snakemake_log=args.snakemake_log,
                      acquisitions=_json_object(args.acquisitions, "--acquisitions") if args.acquisitions else None,
                      model_sources=(_json_object(args.model_sources, "--model-sources") if args.model_sources
                                     else None),
                      waiting=_json_object(args.waiting, "--waiting") if args.waiting else None)
    else:
        from .runlog import write_run_record

        print(write_run_record(args.results, status=args.status, snakemake_log=args.snakemake_log, samples=samples))
    return 0


def _psf_sigma(args) -> tuple[float, ...]:
    """σ z,y,x µm for ``selfres psf-sigma``: measured on ``--beads`` or computed from the optics."""
    optics = (args.na, args.wavelength_um, args.refractive_index)
    if (args.beads is None) == all(v is None for v in optics):
        raise ConfigError("psf-sigma: give either --beads FILE or all of --na, --wavelength-um, --refractive-index")
    if args.beads is None:
        if any(v is None for v in optics):
            raise ConfigError("psf-sigma: --na needs --wavelength-um and --refractive-index too")
        from .degrade import gaussian_sigma_from_optics

        return gaussian_sigma_from_optics(na=args.na, wavelength_um=args.wavelength_um,  # ConfigError if impossible
                                          refractive_index=args.refractive_index, voxel_size=(1.0, 1.0, 1.0),
                                          kind=args.microscope)
    from . import io, metrics

    vol = io.read_volume(args.beads, channel=args.channel, timepoint=args.timepoint, series=args.series,
                         lazy=True)  # searched and fitted in blocks
    voxel_size = args.voxel_size or vol.voxel_size
    if voxel_size is None:
        raise InputError(args.beads, "the file records no voxel size; give --voxel-size z,y,x (µm)")
    try:
        m = metrics.psf_sigma_from_beads(vol.data, voxel_size)
    except ValueError as exc:
        raise InputError(args.beads, str(exc)) from None
    print(f"{m['n_beads']} beads; image FWHM z,y,x {', '.join(f'{v:.3g}' for v in m['fwhm_um'])} µm; "
          f"spread (IQR/median) {', '.join(f'{v:.2f}' for v in m['spread'])}; the σ z,y,x µm for "
          "train.psf_sigma_um (the pixel box taken out laterally) is printed on stdout",
          file=sys.stderr)
    if max(m["spread"]) > 0.25:
        print("warning: the spots differ in width by more than 25 %: sub-resolution beads all have the "
              "PSF's width, so these are probably not (or not only) beads, and σ is not the PSF's", file=sys.stderr)
    return m["sigma_um"]


def inspect_files(paths: Sequence[Path], *, settings, voxel_size=None, scale=DEFAULT_SCALE,
                  training_fov: str | None = None) -> int:
    """``selfres inspect FILE…``: :func:`describe_for_sheet` of each file, a blank line between.
    One file: its error is the command's (one ``ERROR:`` line, status 2). Several (``inbox/*.tif``,
    README "Using your own data": check each file): a file that cannot be read gets its ``ERROR:``
    line and the others are still described; the status is 2 if any could not be read."""
    def describe(path: Path) -> str:
        return describe_for_sheet(path, voxel_size=voxel_size, scale=scale, fov_settings=settings.fov,
                                  training_fov=training_fov, degradation_method=settings.train.degradation.method)

    if len(paths) == 1:
        print(describe(paths[0]))
        return 0
    failed = 0
    for k, path in enumerate(paths):
        if k:
            print()
        try:
            print(describe(path), flush=True)
        except SelfresError as exc:
            failed += 1
            sys.stdout.flush()
            print("ERROR: " + " ".join(str(exc).split("\n")), file=sys.stderr, flush=True)
    if failed:
        print(f"ERROR: {failed} of {len(paths)} files could not be read (named above)", file=sys.stderr)
    return 2 if failed else 0


def describe_for_sheet(path: Path, *, voxel_size=None, scale=DEFAULT_SCALE, fov_settings=None,
                       training_fov: str | None = None,
                       degradation_method: str = DegradationSettings.method) -> str:
    """``selfres inspect``: :func:`selfres.io.describe_acquisition` in words, with the sheet
    columns each image needs and the output grid of each mode (refused as the crop stage
    would refuse it, with ``fov_settings`` and ``training_fov``), and how ``enhance`` makes its
    training inputs (``train.degradation.method``: its held-out check cannot tell a binned
    camera from the default model, so the user is asked here, before any run)."""
    from . import io
    from .errors import InputError
    from .io import describe_acquisition
    from .settings import square_pixels
    from .wording import duration_text
    from .pipeline import check_volume_for_mode, output_grid_shape
    from .settings import voxel_size_problem

    images = describe_acquisition(path)
    lines = [f"{path}: {len(images)} image{'s' if len(images) > 1 else ''}"
             + (" (TIFF series: sheet column series, or all for one sample per image)" if len(images) > 1 else "")]

    def grid(shape):
        return "×".join(str(n) for n in shape)

    for im in images:
        vs = tuple(voxel_size) if voxel_size else im["voxel_size"]
        where = "as given" if voxel_size else ("from the file" if vs else "none usable in the file (a warning above "
                                               "says why where it records some): give the sheet column voxel_size "
                                               "(z,y,x µm)")
        unusable = None if voxel_size or not vs else voxel_size_problem(vs)
        if unusable:  # as normalise takes it: unknown
            where = (f"the file's {', '.join(f'{v:.4g}' for v in vs)} µm is not used: {unusable}; give the sheet "
                     "column voxel_size (z,y,x µm)")
            vs = None
        called = io.series_name(path, im["series"]) if len(images) > 1 else None  # "Pos 3": which position
        head = (f"series {im['series']}" + (f' "{called}"' if called else "") + ": ") if len(images) > 1 else ""
        lines.append(f"{head}{grid(im['shape'])} ZYX, {im['dtype']}, {im['channels']} channel"
                     f"{'s' if im['channels'] > 1 else ''}, {im['timepoints']} time point"
                     f"{'s' if im['timepoints'] > 1 else ''}")
        if im["channels"] > 1:
            names = [io.channel_name(path, c, series=im["series"]) for c in range(im["channels"])]
            named = (" (" + ", ".join(f'{c} "{n}"' for c, n in enumerate(names) if n) + ")") if any(names) else ""
            lines.append(f"  channels{named}: sheet column channel, 0..{im['channels'] - 1} or all (one sample per "
                         "channel)")
        if im["timepoints"] > 1:
            dt = io.time_increment(path, series=im["series"])
            every = f" (one every {duration_text(dt)})" if dt else ""
            lines.append(f"  time points{every}: sheet column timepoint, 0..{im['timepoints'] - 1} or all (one sample "
                         "per time point; model_from first_timepoint trains once)")
        plane = im["shape"][0] == 1  # a single plane has no z step (its z size is only a stand-in)
        shown = slice(1, 3) if plane else slice(0, 3)
        lines.append(f"  voxel size {'y,x' if plane else 'z,y,x'}: "
                     + (", ".join(f"{v:.4g}" for v in vs[shown]) + f" µm ({where})" if vs else where))
        if training_fov:  # as the crop stage parses it: the form, and inside this image
            from .fov import parse_fov

            try:
                parse_fov(training_fov, tuple(im["shape"]))
                lines.append(f"  training_fov {training_fov}: inside the image")
            except ConfigError as exc:
                lines.append(f"  {exc}: the crop stage would refuse it")
        factors = tuple(int(f) for f in scale)
        checks = {"path": str(path), "fov_settings": fov_settings, "training_fov": training_fov}
        try:  # the checks the crop stage makes, before any training
            check_volume_for_mode(im["shape"], vs, mode="enhance", factors=factors, **checks)
            lines.append(f"  enhance {','.join(map(str, factors))}: output "
                         f"{grid(output_grid_shape(im['shape'], mode='enhance', factors=factors))}"
                         + (f", voxel {', '.join(f'{v / f:.4g}' for v, f in list(zip(vs, factors))[shown])} µm"
                            if vs else ""))
            binned = "; a camera that binned pixels: block" if degradation_method == "cubic" else ""
            lines.append(f"    trained on this image downscaled once more: train.degradation.method "
                         f"{degradation_method}{binned}")
        except InputError as exc:
            lines.append(f"  enhance {','.join(map(str, factors))}: not possible — {exc.what}")
        try:
            f = check_volume_for_mode(im["shape"], vs, mode="isotropic", **checks)
            lines.append(f"  isotropic: axial factor {f:.4g} (z step / lateral pixel), output "
                         f"{grid(output_grid_shape(im['shape'], mode='isotropic', axial_factor=f))}, voxel {vs[0] / f:.4g}, {vs[1]:.4g}, "
                         f"{vs[2]:.4g} µm"
                         + ("; the lateral pixels are not square, so z is matched to their mean and the output "
                            "is not isotropic (resample y or x first for that)"
                            if not square_pixels(vs) else ""))
        except InputError as exc:
            lines.append(f"  isotropic: not possible — {exc.what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    sample = getattr(args, "sample", None)
    if args.command == "restore" and not sample:  # the id restore gives the volume: its file name's stem
        sample = _sample_id(args)
    prefix = f"sample {sample!r}: " if sample else ""
    from .allocator import keep_freed_memory

    keep_freed_memory()  # every stage allocates large short-lived arrays (see its docstring)
    previous = _stop_cleanly_on_sigterm()
    try:
        return _run_reporting(args, sample, prefix)
    finally:
        if previous is not None:  # main() called in-process (tests, a caller's script): its handler back
            signal.signal(signal.SIGTERM, previous)


def _run_reporting(args, sample, prefix) -> int:
    """``run(args)``, each failure ending in one ``ERROR:`` line and its exit status."""
    try:
        return run(args)
    except SelfresError as exc:
        if isinstance(exc, InputError) and exc.sample is None and sample:
            exc = exc.for_sample(sample)
        text = str(exc)
        if sample and not isinstance(exc, InputError) and not text.startswith("sample "):
            text = prefix + text
        print("ERROR: " + " ".join(text.split("\n")), file=sys.stderr)  # one line: the summary reads it
        return 4 if isinstance(exc, NoRoom) else 2  # no room: the status of a disk that filled up
    except BrokenPipeError as exc:
        if args.command not in ("inspect", "psf-sigma"):  # a stage's own pipes: an error like any other
            return _unexpected(exc, args, prefix)
        # `selfres inspect … | head`: the reader stopped reading; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, or Snakemake stopping its jobs: one line, not a traceback
        how = ("stopped by SIGTERM (a Slurm time limit, scancel, or the workflow stopping it)"
               if isinstance(exc, Terminated) else "interrupted (Ctrl-C or SIGINT)")
        if args.command == "restore":  # the whole chain in one command: it starts over
            again = ("a rerun starts the chain again" + (f" (a training cut short resumes from its checkpoint in "
                                                           f"{args.keep})" if getattr(args, "keep", None) else "")
                     + "; the workflow, or the stage commands, resume each stage")
        else:
            again = "a rerun resumes a training from its last checkpoint and an inference from its recorded tiles"
        print(f"ERROR: {prefix}selfres {args.command} was {how}; its output was not written, and {again}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except MemoryError as exc:
        why = " ".join(str(exc).split())
        if why and not why.startswith("Unable to allocate"):  # selfres's own: what ran out, and the remedy
            print(f"ERROR: {prefix}out of memory; {why}", file=sys.stderr)
        else:  # numpy's "Unable to allocate 122. MiB for an array with shape …", or nothing
            print(f"ERROR: {prefix}out of memory{f' ({why})' if why else ''}; give the job more memory (the "
                  f"profile's mem_mb, ulimit -v){_MEMORY_ADVICE.get(args.command, '')}", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen input: still one line for the summary
        if isinstance(exc, RuntimeError) and any(what in str(exc).lower() for what in ALLOCATOR_REFUSALS):
            print(f"ERROR: {prefix}out of memory (the allocator refused: {' '.join(str(exc).split())[:200]}); give "
                  "the job more memory (mem_mb, ulimit -v), or reduce infer.tile_size or fov.max_voxels",
                  file=sys.stderr)
            return 3
        # a full disk says so in its own words to some writers only (tifffile: "36864 requested and
        # 31688 written"; torch.save: "unexpected pos"): the output's file system tells
        if _errno_in_chain(exc, (errno.ENOSPC, errno.EDQUOT)):
            print(f"ERROR: {prefix}{_no_space_message(exc, args)}", file=sys.stderr)
            return 4
        # a read-only file system or a closed folder is said as such, however little room it has
        denied = _errno_in_chain(exc, (errno.EROFS, errno.EACCES, errno.EPERM))
        if denied is not None and _is_written_here(denied.filename, args):
            print(f"ERROR: {prefix}{_not_writable_message(denied, args)}", file=sys.stderr)
            return 5
        in_the_way = _file_in_the_way(args) if _errno_in_chain(exc, (errno.EEXIST, errno.ENOTDIR)) else None
        if in_the_way is not None:  # -o afile/out.ome.zarr: no folder can be made where a file is
            output, blocker = in_the_way
            print(f"ERROR: {prefix}cannot write {output}: {blocker} is a file, not a folder; choose another output "
                  "path", file=sys.stderr)
            return 5
        if _output_disk_full(args):  # most likely the cause, but the error itself is said too (a bug is not hidden)
            logging.getLogger("selfres").debug("the failure on a full disk", exc_info=exc)
            print(f"ERROR: {prefix}{_no_space_message(exc, args, said=' '.join(str(exc).split())[:200])}",
                  file=sys.stderr)
            return 4
        too_large = _errno_in_chain(exc, (errno.EFBIG,))
        if too_large is not None:  # a job's file-size limit (ulimit -f, SGE h_fsize), FAT's 4 GiB
            target = too_large.filename or getattr(args, "output", None) or ""
            print(f"ERROR: {prefix}file too large while writing {target}: over this job's file-size limit (ulimit "
                  "-f; a batch system's file-size limit) or the file system's largest file (4 GiB on FAT/exFAT "
                  "drives); raise the limit or write to another file system", file=sys.stderr)
            return 4
        if denied is not None and denied.filename:  # a file this account may not read: the input's fault
            print(f"ERROR: {prefix}{denied.filename}: cannot be read by this account (permission denied); give "
                  "the account that runs selfres read access to it (and its folders)", file=sys.stderr)
            return 2
        return _unexpected(exc, args, prefix)


#: The arguments that name what a command writes
_WRITTEN_ARGS = ("output", "html", "provenance", "done", "keep", "outdir", "figures")
#: ... of them, those that name a folder (a file there is in the way too)
_WRITTEN_FOLDER_ARGS = ("keep", "outdir", "figures")


def _is_written_here(filename, args) -> bool:
    """Whether ``filename`` (of a failed call) is one the command writes: its output, beside it
    (a temporary sibling), or inside it; not one of its inputs."""
    if not filename:
        return True  # unnamed: the writes of zarr and tifffile name none
    path = Path(os.fspath(filename)).absolute()
    for name in _WRITTEN_ARGS:
        out = getattr(args, name, None)
        if not out:
            continue
        out = Path(os.fspath(out)).absolute()
        if path == out or out in path.parents or (path.parent == out.parent and path.name.startswith(f".{out.name}")):
            return True
    return False


def _file_in_the_way(args) -> tuple[str, Path] | None:
    """``(output, file)`` where a folder above one of the command's outputs is an existing
    file (``-o notes.txt/out.ome.zarr``), else None."""
    for name in _WRITTEN_ARGS:
        out = getattr(args, name, None)
        if not out:
            continue
        out_path = Path(os.fspath(out))
        for folder in ((out_path,) if name in _WRITTEN_FOLDER_ARGS else ()) + tuple(out_path.parents):
            if folder.exists():
                if not folder.is_dir():
                    return str(out), folder
                break
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the stage is, so that its cleanup runs as for Ctrl-C (temporary
    outputs removed, one ERROR line): a Slurm time limit sends it before SIGKILL."""


def _stop_cleanly_on_sigterm():
    """Install the SIGTERM handler; returns the one it replaces (None where none can be set)."""
    def stop(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
        return None
    return signal.signal(signal.SIGTERM, stop)


def _errno_in_chain(exc: BaseException, codes: tuple[int, ...]) -> OSError | None:
    """The first ``OSError`` with one of ``codes`` in ``exc`` and its causes, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


#: Free space (bytes) on the output's file system below which a failed write is taken as a full disk
DISK_FULL_BYTES = 16 * 2**20


def _free_bytes(target) -> int | None:
    """Free bytes on the file system of ``target`` (its nearest existing folder), or None."""
    import shutil

    from .atomic import nearest_existing

    probe = nearest_existing(target) if target else None
    try:
        return None if probe is None else shutil.disk_usage(probe).free
    except OSError:
        return None


def _output_disk_full(args) -> bool:
    """Whether the file system of the command's output has (next to) no room left."""
    free = _free_bytes(getattr(args, "output", None) or getattr(args, "html", None))
    return free is not None and free < DISK_FULL_BYTES


def _not_writable_message(exc: OSError, args) -> str:
    """'cannot write FOLDER: read-only file system' (or permission denied): the folder of the
    file the error names, else of the command's output — not a hidden temporary name."""
    target = Path(exc.filename) if exc.filename else Path(getattr(args, "output", None) or ".")
    folder = target.parent
    why = {errno.EROFS: "it is on a read-only file system"}.get(exc.errno, "permission denied")
    return (f"cannot write in {folder} ({why}); give the results a folder this account can write "
            "(config results, or -o)")


def _no_space_message(exc: BaseException, args, said: str = "") -> str:
    """'no space left on device while writing PATH (N GB free on that file system)': the file
    the error names, else the command's output (zarr's writes name none); ``said``, the error's
    own words where it did not say ENOSPC, follows ('the error: …')."""
    target = getattr(exc, "filename", None) or getattr(args, "output", None) or ""
    text = f"no space left on device while writing {target}".rstrip()
    free = _free_bytes(target)
    details = ([f"{free / 1e9:.2g} GB free on that file system"] if free is not None else []) + (
        [f"the error: {said}"] if said else [])
    return text + (f" ({'; '.join(details)})" if details else "") + _kept_partial_stores(args)


def _kept_partial_stores(args) -> str:
    """What an inference stopped by a full disk leaves for its rerun to resume (its partial
    stores, :func:`selfres.atomic.partial_path`), said with their size and how to free it."""
    if args.command not in ("infer", "restore") or not getattr(args, "output", None):
        return ""
    from .atomic import partial_path, tree_bytes
    from .pipeline import model_output_path

    kept = [p for p in (partial_path(model_output_path(args.output)), partial_path(args.output)) if p.exists()]
    if not kept:
        return ""
    stores = ", ".join(f"{p} ({tree_bytes(p) / 1e9:.2g} GB)" for p in kept)
    if args.command == "infer":
        return f"; kept for the rerun to resume: {stores} (delete to free the space instead)"
    # restore trains again, and its new model's inference discards them
    resume = (f"; or, with the room made, resume it from the kept files: selfres infer {args.keep}/normalized.ome.zarr "
              f"{args.keep}/model -o {args.output}" if getattr(args, "keep", None) else "")
    return f"; left on that file system: {stores}: a rerun of restore starts over and discards it, so delete it{resume}"


def _unexpected(exc: BaseException, args, prefix: str) -> int:
    """Log the traceback, then one ``ERROR:`` line (what the summary and the report read)."""
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    inputs = [str(v) for k, v in sorted(vars(args).items()) if k in ("input", "normalized", "source") and v]
    where = f" (input {inputs[0]})" if inputs else ""
    what = " ".join(f"{type(exc).__name__}: {exc}".split())
    print(f"ERROR: {prefix}selfres {args.command} failed unexpectedly{where}: {what}. This is a bug or an input "
          "selfres does not check yet; please report it with this log", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
