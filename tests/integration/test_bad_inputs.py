"""Bad inputs: one clear error per case, naming the sample, the file and the problem.

One parametrised table (:data:`CASES`). Stage cases run the ``selfres`` CLI in-process
(``cli.main``: the same code as the console command, without the start-up cost) and
check exit status 2, exactly one ``ERROR:`` line naming the sample, the file and what
is wrong, and no traceback. Sheet and config cases run ``snakemake -n`` on a tiny
working directory and check the message names the key / column and what is allowed.
The end-to-end test runs ``snakemake --keep-going`` on a good and a broken sample.
The messages are copied into ``docs/errors.md``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
import yaml

from selfres import cli, io, pipeline
from selfres.errors import InputError
from selfres.runlog import parse_snakemake_log
from workdir import make_workdir, run_snakemake, tiny_volume, write_tiny_tiff

SAMPLE = "s1"


# --------------------------------------------------------------------------- builders
# Each builder writes its bad input under ``d`` and returns (argv, file named, problem regex).
def _tif(d: Path, name: str, data, **kw) -> Path:
    # axes named: tifffile reads an unnamed 3- or 4-plane stack as RGB(A) channels
    p = d / name
    if data.ndim == 3:
        kw.setdefault("metadata", {"axes": "ZYX"})
    tifffile.imwrite(p, data, **kw)
    return p


def _norm(d: Path, shape=(8, 64, 64), *, voxel=True, seed=0) -> tuple[Path, Path]:
    """A normalised store made by the real normalise stage from a seeded volume."""
    kw = {"imagej": True, "resolution": (2.0, 2.0), "metadata": {"spacing": 1.0, "unit": "um", "axes": "ZYX"}} \
        if voxel else {"metadata": {"axes": "ZYX"}}
    src = _tif(d, "raw.tif", tiny_volume(shape, seed=seed), **kw)
    out = d / "normalized.ome.zarr"
    pipeline.stage_normalise(src, out, sample=SAMPLE)
    return src, out


def _normalise_argv(p: Path) -> list[str]:
    return ["normalise", str(p), "-o", str(p.parent / "out.ome.zarr"), "--sample", SAMPLE]


def b_missing(d):
    p = d / "missing.tif"
    return _normalise_argv(p), p.name, r"does not exist"


def b_zero_byte(d):
    p = d / "zero.tif"
    p.write_bytes(b"")
    return _normalise_argv(p), p.name, r"is empty \(0 bytes\)"


def b_truncated(d):
    good = _tif(d, "good.tif", tiny_volume((8, 48, 48)))
    p = d / "truncated.tif"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return _normalise_argv(p), p.name, r"truncated or corrupt"


def b_vendor_file(d):
    p = d / "scan.czi"
    p.write_bytes(b"ZISRAWFILE" + bytes(100))  # a Zeiss CZI file's first segment id
    return _normalise_argv(p), p.name, (r"scan\.czi: is a Zeiss CZI file, which selfres does not read; selfres reads "
                                        r"TIFF/OME-TIFF .* `bfconvert -bigtiff \S+scan\.czi \S+scan\.ome\.tif`")


def b_corrupt_zarr(d):
    p = d / "corrupt.zarr"
    p.mkdir()
    (p / ".zarray").write_text("{not json")
    return _normalise_argv(p), p.name, r"corrupt Zarr store"


def b_one_d(d):
    p = d / "line.zarr"
    zarr.save_array(str(p), np.arange(10.0), zarr_format=2)
    return _normalise_argv(p), p.name, r"is 1-D .*allowed: a 2-D YX image or a 3-D ZYX stack"


def b_four_d_tiff(d):
    p = _tif(d, "fourd.tif", np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32))
    return _normalise_argv(p), p.name, r"axis order .* cannot be interpreted"


def b_five_d_zarr(d):
    p = d / "fived.zarr"
    zarr.save_array(str(p), np.random.default_rng(0).random((2, 3, 8, 16, 16)), zarr_format=2)
    return _normalise_argv(p), p.name, r"5-D array .* without axis names"


def b_multi_series(d):
    p = d / "multi.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:  # two images: series 0 used to be read silently
        tw.write(tiny_volume((8, 64, 64)), photometric="minisblack", metadata={"axes": "ZYX"})
        tw.write(tiny_volume((4, 32, 32)), photometric="minisblack", metadata={"axes": "ZYX"})
    return _normalise_argv(p), p.name, r"holds 2 images \(TIFF series of different shapes: series 0: 8x64x64 ZYX " \
                                       r"'Image0'; series 1: 4x32x32 ZYX 'Image1'\); selfres will not guess which " \
                                       r"to restore: choose one with series=N \(sample sheet column 'series'"


def b_complex(d):
    p = _tif(d, "complex.tif", np.ones((4, 16, 16), np.complex64))
    return _normalise_argv(p), p.name, r"data type complex64 .*allowed: integer"


def b_bool(d):
    p = _tif(d, "mask.tif", np.random.default_rng(0).random((4, 16, 16)) > 0.5)
    return _normalise_argv(p), p.name, r"data type bool"


def b_object(d):
    p = d / "strings.zarr"
    p.mkdir()
    (p / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2, 8, 8], "chunks": [2, 8, 8], "dtype": "|O", "compressor": None,
        "fill_value": 0, "order": "C", "filters": [{"id": "vlen-utf8"}]}))
    return _normalise_argv(p), p.name, r"has data type .* which selfres cannot use"


def b_nan_inf(d):
    v = tiny_volume((4, 16, 16)).astype(np.float32)
    v[0, 0, :3] = np.nan
    v[1, 1, 1] = np.inf
    p = _tif(d, "nan.tif", v)
    return _normalise_argv(p), p.name, r"4 non-finite voxels \(3 NaN, 1 Inf\)"


def b_beyond_float32(d):
    # finite in the file, Inf once read as float32: it used to be reported as "2 non-finite voxels"
    v = tiny_volume((4, 16, 16)).astype(np.float64)
    v[0, 0, :2] = [1e39, -1e300]
    p = _tif(d, "wide.tif", v)
    return _normalise_argv(p), p.name, r"has 2 voxels beyond the float32 range \(\|value\| > 3.4e\+38; largest 1e\+300\) " \
                                       r"out of 1024; selfres computes in float32: rescale the data"


def b_corrupt_outlier(d):
    # one voxel of 1e25 in float32 data: normalised to ~1e25, its gradient squared overflowed float32 at crop
    v = tiny_volume((4, 16, 16)).astype(np.float32)
    v[2, 3, 4] = 1e25
    p = _tif(d, "outlier.tif", v)
    return _normalise_argv(p), p.name, r"its values reach .*1e\+25, up to .* times the range between its 1 and " \
                                       r"99.8 percentiles .*clip or replace them before restoring"


def b_constant(d):
    p = _tif(d, "blank.tif", np.full((4, 16, 16), 7, np.uint16))
    return _normalise_argv(p), p.name, r"constant \(every voxel is 7\)"


def b_smaller_than_fov(d):
    src, norm = _norm(d, shape=(4, 8, 8))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "1,2,2", "--sample", SAMPLE], \
        src.name, r"too small to split into a training FOV and a held-out region"


def b_fov_smaller_than_patch(d):
    src, norm = _norm(d)
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "1,2,2", "--training-fov", "0:8,0:3,0:64",
            "--sample", SAMPLE], src.name, r"training FOV .* has 3 voxels along y; scale 2 along y needs at least 4"


def b_fov_outside_the_volume(d):
    # it named neither the file nor, in the CLI, anything but the sample
    src, norm = _norm(d)
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--training-fov", "0:100,0:10,0:10", "--sample", SAMPLE], \
        src.name, r"training_fov '0:100,0:10,0:10': z range 0:100 is empty or outside the volume \(size 8\)"


def b_holdout_thinner_than_factor(d):
    # the only slab outside the given training FOV is 3 slices: too thin for a factor 4 along z
    src, norm = _norm(d, shape=(16, 64, 64))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "4,2,2", "--training-fov", "0:13,0:64,0:64",
            "--sample", SAMPLE], src.name, r"training_fov 0:13,0:64,0:64 leaves no room for a held-out region .*8 z"


def b_too_few_slices(d):
    src, norm = _norm(d, shape=(3, 64, 64))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "4,2,2", "--sample", SAMPLE], \
        src.name, r"has 3 slices; scale 4 along z needs at least 8"


def b_voxel_missing_isotropic(d):
    src, norm = _norm(d, shape=(8, 40, 40), voxel=False)
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "isotropic", "--sample", SAMPLE], \
        src.name, r"isotropic mode needs .*voxel"


def b_two_d_isotropic(d):
    src, norm = _norm(d, shape=(1, 96, 96))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "isotropic", "--sample", SAMPLE], \
        src.name, r"isotropic mode restores the z axis of a 3-D stack; this is a 2-D image"


def b_too_few_slices_isotropic(d):
    # used to be refused only by the (GPU) train job, after the queue
    src, norm = _norm(d, shape=(3, 64, 64))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "isotropic", "--sample", SAMPLE], \
        src.name, r"isotropic mode needs at least 4 z slices; the volume \(shape \(3, 64, 64\)\) has 3"


def _norm_with_voxel(d: Path, voxel_size) -> tuple[Path, Path]:
    src = _tif(d, "raw.tif", tiny_volume((8, 64, 64)))
    out = d / "normalized.ome.zarr"
    pipeline.stage_normalise(src, out, sample=SAMPLE, voxel_size=voxel_size)
    return src, out


def b_isotropic_factor_implausible(d):
    # 0.5 µm z steps typed in nm: f = 2500 trained and inferred without end
    src, norm = _norm_with_voxel(d, (500.0, 0.2, 0.2))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "isotropic", "--sample", SAMPLE], \
        src.name, r"voxel size z,y,x 500, 0.2, 0.2 µm: the z step is 2500x the lateral pixel; isotropic mode " \
                  r"allows at most 20x\. Check the units"


def b_already_isotropic(d):
    src, norm = _norm_with_voxel(d, (0.2, 0.2, 0.2))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "isotropic", "--sample", SAMPLE], \
        src.name, r"the z step is 1x the lateral pixel, so the stack is already \(nearly\) isotropic"


def b_unknown_mode_cli(d):
    src, norm = _norm(d)
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--mode", "superres", "--sample", SAMPLE], \
        "", r"unknown mode 'superres'; choose one of enhance, isotropic"


def b_reference_shape(d):
    src, norm = _norm(d, shape=(8, 32, 32))
    restored = d / "restored.ome.zarr"
    io.write_ome_zarr(restored, np.zeros((8, 64, 64), np.float32), voxel_size=(1.0, 0.25, 0.25))
    ref = _tif(d, "reference.tif", tiny_volume((8, 48, 48)))
    return ["qc", str(norm), str(restored), str(d / "model"), str(d / "fov.json"), "-o", str(d / "m.json"),
            "--reference", str(ref), "--sample", SAMPLE], \
        ref.name, r"reference shape \(8, 48, 48\) does not match the output grid \(8, 64, 64\)"


def b_reference_shape_at_crop(d):
    # found at qc only, after training and inference (`selfres restore --reference` too)
    src, norm = _norm(d, shape=(8, 32, 32))
    ref = _tif(d, "truth.tif", tiny_volume((8, 62, 64)))
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "1,2,2", "--reference", str(ref),
            "--sample", SAMPLE], ref.name, \
        r"reference shape \(8, 62, 64\) does not match the output grid \(8, 64, 64\).*checked before training"


def b_reference_missing(d):
    # used to be found only at qc, after training and inference
    src, norm = _norm(d)
    ref = d / "truth.tif"
    return ["crop", str(norm), "-o", str(d / "fov.json"), "--scale", "1,2,2", "--reference", str(ref),
            "--sample", SAMPLE], ref.name, r"truth\.tif: does not exist \(no such file or store\); it is the " \
                                             r"sample's reference \(sheet column 'reference'.*checked before training"


CLI_CASES = {
    "missing_file": b_missing,
    "zero_byte_tiff": b_zero_byte,
    "truncated_tiff": b_truncated,
    "corrupt_zarr": b_corrupt_zarr,
    "vendor_file": b_vendor_file,
    "one_d": b_one_d,
    "four_d_tiff_unknown_axes": b_four_d_tiff,
    "five_d_zarr_no_axis_names": b_five_d_zarr,
    "multi_series_tiff": b_multi_series,
    "complex_dtype": b_complex,
    "bool_dtype": b_bool,
    "object_dtype": b_object,
    "nan_inf_voxels": b_nan_inf,
    "beyond_float32": b_beyond_float32,
    "corrupt_outlier": b_corrupt_outlier,
    "constant_volume": b_constant,
    "smaller_than_fov": b_smaller_than_fov,
    "fov_smaller_than_patch": b_fov_smaller_than_patch,
    "fov_outside_the_volume": b_fov_outside_the_volume,
    "too_few_slices_for_factor": b_too_few_slices,
    "holdout_thinner_than_factor": b_holdout_thinner_than_factor,
    "voxel_size_missing_isotropic": b_voxel_missing_isotropic,
    "two_d_isotropic": b_two_d_isotropic,
    "too_few_slices_isotropic": b_too_few_slices_isotropic,
    "isotropic_factor_implausible": b_isotropic_factor_implausible,
    "already_isotropic": b_already_isotropic,
    "unknown_mode_cli": b_unknown_mode_cli,
    "reference_shape_mismatch": b_reference_shape,
    "reference_missing": b_reference_missing,
    "reference_shape_at_crop": b_reference_shape_at_crop,
}


# --------------------------------------------------------------------------- sheet / config cases
def s_duplicate_id(tmp):
    wd = make_workdir(tmp, samples={"a": {}, "b": {}})
    sheet = wd / "config" / "samples.tsv"
    sheet.write_text(sheet.read_text().replace("\nb\t", "\na\t"))
    return wd, r"duplicate sample id\(s\): a; ids must be unique"


def s_dotdot_id(tmp):
    wd = make_workdir(tmp, samples={"a": {}, "../evil": {"path": "../data/a.tif"}})
    return wd, r"sample id '\.\./evil' is not allowed: use letters, digits"


def s_absolute_id(tmp):
    wd = make_workdir(tmp, samples={"a": {}, "/tmp/evil": {"path": "../data/a.tif"}})
    return wd, r"sample id '/tmp/evil' is not allowed"


def s_unknown_mode_sheet(tmp):
    wd = make_workdir(tmp, samples={"a": {"mode": "superres"}})
    return wd, r"sample 'a': column 'mode': 'superres' is not allowed; allowed values: 'enhance', 'isotropic'"


def s_bad_config_value(tmp):
    wd = make_workdir(tmp, config_overrides={"train": {"loss": "l3"}})
    return wd, r"config: train.loss: 'l3' is not allowed; allowed values: 'mse', 'l1', 'l1_fft', 'charbonnier', 'charbonnier_ssim'"


def s_unknown_config_key(tmp):
    wd = make_workdir(tmp, config_overrides={"train": {"stpes": 3}})
    return wd, r"config: unknown key 'train.stpes' \(did you mean 'train.steps'\?\); allowed in train: arch, "


def s_symlinked_results(tmp):
    wd = make_workdir(tmp)
    outside = tmp / "outside"
    outside.mkdir()
    (wd / "results").mkdir()
    (wd / "results" / "a").symlink_to(outside, target_is_directory=True)
    return wd, r"sample 'a': results folder results/a is a link to .*outside, outside the results root"


def s_id_on_a_results_file(tmp):
    wd = make_workdir(tmp, samples={"a": {}, "summary.tsv": {"path": "../data/a.tif"}})
    return wd, (r"sample id 'summary.tsv' is not allowed: the workflow writes 'summary.tsv' at the top of the results "
                r"folder \(results/summary.tsv\)")


SHEET_CASES = {
    "duplicate_sample_id": s_duplicate_id,
    "id_on_a_results_file": s_id_on_a_results_file,
    "unsafe_id_dotdot": s_dotdot_id,
    "unsafe_id_absolute": s_absolute_id,
    "unknown_mode_sheet": s_unknown_mode_sheet,
    "invalid_config_value": s_bad_config_value,
    "unknown_config_key": s_unknown_config_key,
    "symlinked_results_folder": s_symlinked_results,
}

CASES = [pytest.param("cli", name, id=name) for name in CLI_CASES] + [
    pytest.param("snakemake", name, id=name, marks=pytest.mark.slow) for name in SHEET_CASES
]


@pytest.mark.parametrize(("runner", "case"), CASES)
def test_bad_input(runner, case, tmp_path, capsys):
    if runner == "cli":
        argv, fname, problem = CLI_CASES[case](tmp_path)
        capsys.readouterr()
        rc = cli.main(["--log-level", "WARNING", *argv])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
        assert rc == 2, err
        assert len(errors) == 1, err
        assert "Traceback" not in err
        msg = errors[0]
        assert msg.startswith(f"ERROR: sample '{SAMPLE}': "), msg
        assert fname in msg, msg
        assert re.search(problem, msg), msg
        print(msg)  # shown with -s; copied into docs/errors.md
    else:
        wd, problem = SHEET_CASES[case](tmp_path)
        proc = run_snakemake(wd, "-n", timeout=120)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert re.search(problem, out), out
        assert len(out.splitlines()) < 40, out  # the message, not a dump of the schema
        assert 'File "' not in out and "Traceback" not in out, out  # nor a Python traceback after it
        assert not (wd / "results" / "runs").exists()  # a dry run records no run
        assert not (wd / "results" / "a" / "normalized.ome.zarr").exists()
        assert not (tmp_path / "evil").exists()


@pytest.mark.slow
def test_a_run_stopped_by_a_sheet_mistake_leaves_its_line_in_runs_tsv(tmp_path):
    """A night that stops before its first job is not a quiet night in the morning's files:
    runs.tsv has an error line with no jobs, its record the message."""
    wd, problem = s_unknown_mode_sheet(tmp_path)
    assert run_snakemake(wd, "--unlock", timeout=120).returncode == 1  # not a run: no record
    assert not (wd / "results" / "runs").exists()
    proc = run_snakemake(wd, timeout=120)
    assert proc.returncode == 1 and re.search(problem, proc.stderr), proc.stderr[-2000:]
    lines = (wd / "results" / "runs" / "runs.tsv").read_text().splitlines()
    assert len(lines) == 2 and "\terror\t" in lines[1]
    (record,) = (wd / "results" / "runs").glob("*_error.json")
    rec = json.loads(record.read_text())
    assert rec["jobs"] == [] and re.search(problem, rec["stopped_before_any_job"])


def test_console_command_prints_one_line_and_exits_2(tmp_path):
    """The installed ``selfres`` command, not just ``cli.main``: one line, status 2."""
    missing = tmp_path / "no such file.tif"
    proc = subprocess.run([sys.executable, "-m", "selfres.cli", "normalise", str(missing), "-o",
                           str(tmp_path / "o.ome.zarr"), "--sample", "night-3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: sample 'night-3': {missing}: does not exist (no such file or store)"]


def test_a_refused_samples_job_fails_with_its_reason_as_the_error_line(capsys):
    """`selfres refused` (the job of a sample refused with bad_rows: fail_alone): exit 2 and
    one ERROR line, the sample named once."""
    why = "sample sheet config/samples.tsv, line 4: sample 'a': column 'scale': '2x2x2' is not of the form: …"
    assert cli.main(["refused", "--sample", "a", "--message", why]) == 2
    assert capsys.readouterr().err == f"ERROR: {why}\n"
    assert cli.main(["refused", "--sample", "b", "--message", "inbox: two files"]) == 2
    assert capsys.readouterr().err == "ERROR: sample 'b': inbox: two files\n"


def test_an_unforeseen_failure_still_ends_in_one_error_line(tmp_path, capsys, monkeypatch):
    """An exception selfres does not anticipate (a bug) keeps its traceback in the log but
    still ends with one ``ERROR:`` line naming the sample, the command and the input —
    the line the summary and the report show — and a non-zero status."""
    src, norm = _norm(tmp_path)

    def broken(*args, **kwargs):
        raise ValueError("n_in must be an integer >= 1; received 0")

    monkeypatch.setattr(pipeline, "stage_crop", broken)
    capsys.readouterr()
    rc = cli.main(["--log-level", "WARNING", "crop", str(norm), "-o", str(tmp_path / "fov.json"), "--sample", SAMPLE])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert rc == 1 and "Traceback" in err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"ERROR: sample '{SAMPLE}': selfres crop failed unexpectedly (input {norm})"), errors
    assert "ValueError: n_in must be an integer >= 1" in errors[0]


def test_an_interrupted_stage_ends_with_one_error_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or Snakemake stopping its jobs with SIGINT): the stage's log ends with one
    ERROR line the summary reads, as for every other failure."""
    from selfres import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "stage_crop", interrupted)
    rc = cli.main(["crop", str(tmp_path / "n.ome.zarr"), "-o", str(tmp_path / "fov.json"), "--sample", SAMPLE])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert err.strip().splitlines() == [f"ERROR: sample '{SAMPLE}': selfres crop was interrupted (Ctrl-C or SIGINT); "
                                        "its output was not written, and a rerun resumes a training from its last "
                                        "checkpoint and an inference from its recorded tiles"]
    # restore is the whole chain: its rerun starts over (it promised a resume it does not make)
    monkeypatch.setattr(pipeline, "restore", interrupted)
    rc = cli.main(["restore", str(tmp_path / "a.tif"), "-o", str(tmp_path / "a.ome.zarr"), "--keep",
                   str(tmp_path / "work")])
    assert rc == 130 and capsys.readouterr().err.strip().endswith(
        "selfres restore was interrupted (Ctrl-C or SIGINT); its output was not written, and a rerun starts the "
        f"chain again (a training cut short resumes from its checkpoint in {tmp_path / 'work'}); the workflow, or "
        "the stage commands, resume each stage")


@pytest.mark.slow
@pytest.mark.parametrize("broken, problem", [
    ("truncated", r"is truncated or corrupt .*"),
    ("missing", r"does not exist \(no such file or store\)"),  # deleted before the night: not a whole-batch stop
])
def test_keep_going_one_bad_sample_does_not_cost_the_other(tmp_path, broken, problem):
    """A broken or missing acquisition fails only its own sample; summary.tsv lists it with its error.

    The same run has ``bad_rows: fail_alone`` (nightly batches) and four samples selfres refuses
    when it reads the sheet and the inbox: a row with a bad value, a duplicated id, a sample
    restored with a refused sample's model, and two inbox files with one id. Each fails alone
    too — said at the start (also by a dry run), as its sample's ERROR line and in the summary,
    and in the run's record — instead of stopping the night before any job (the default)."""
    wd = make_workdir(tmp_path, samples={"good": {}, "bad": {"path": "../data/bad.tif"}}, config_overrides={
        "bad_rows": "fail_alone", "inbox": ["inbox/**/*.tif"], "inbox_settle_seconds": 0})
    (wd / "config" / "samples.tsv").write_text("".join("\t".join(row) + "\n" for row in [
        ("sample", "path", "scale", "model_from"),
        ("good", "../data/good.tif", "", ""),
        ("bad", "../data/bad.tif", "", ""),
        ("wrong_scale", "../inbox/wrong_scale.tif", "2x2x2", ""),  # line 4; its file is in the inbox too
        ("uses_wrong", "../data/good.tif", "", "wrong_scale"),
        ("dup", "../data/good.tif", "", ""),
        ("dup", "../data/good.tif", "", "")]))
    for day in ("day1", "day2"):
        write_tiny_tiff(wd / "inbox" / day / "stack.tif")
    write_tiny_tiff(wd / "inbox" / "wrong_scale.tif")  # a refused row keeps its file from the inbox's defaults
    refused = {
        "wrong_scale": "sample sheet config/samples.tsv, line 4: sample 'wrong_scale': column 'scale': '2x2x2' is not "
                       "of the form: integer factors z,y,x, e.g. 1,2,2 (at least one above 1)",
        "dup": "sample sheet config/samples.tsv, lines 6, 7: sample 'dup': duplicate sample id; ids must be unique",
        "stack": "sample 'stack': inbox: acquisitions with the same sample id: inbox/day1/stack.tif, "
                 "inbox/day2/stack.tif. Rename all but one, or give each its own row (own id) in the sample sheet",
    }
    refused["uses_wrong"] = f"sample 'uses_wrong': its model_from sample 'wrong_scale' was refused: {refused['wrong_scale']}"
    good = (wd / "data" / "good.tif").read_bytes()
    if broken == "truncated":
        (wd / "data" / "bad.tif").write_bytes(good[: len(good) // 3])
    else:
        (wd / "data" / "bad.tif").unlink(missing_ok=True)
        plan = run_snakemake(wd, "-n", timeout=120)
        assert plan.returncode == 0  # the plan stands, and names the missing file at once
        assert "sample 'bad': its acquisition data/bad.tif does not exist" in plan.stderr, plan.stderr[-2000:]
        assert "sample 'good'" not in plan.stderr
        for sid, message in refused.items():
            assert (f"selfres: ERROR: {message}; sample {sid!r} fails alone, the others run (bad_rows: fail_alone)"
                    in plan.stderr), (sid, plan.stderr[-3000:])
    # the profile's retries (profiles/slurm: 2): an acquisition found missing or unreadable at the
    # start fails alike on every try, so its job (normalise_once) is tried once, as is each refused
    # row's; the good sample's jobs keep the retries (an out-of-memory or a node lost is worth one)
    proc = run_snakemake(wd, "--keep-going", "--retries", "2", timeout=300)
    assert proc.returncode != 0  # the night had a failure, and says so
    jobs = parse_snakemake_log(proc.stdout + proc.stderr)["jobs"]
    assert [j["rule"] for j in jobs if j["sample"] == "bad"] == ["normalise_once"], jobs
    assert [j["rule"] for j in jobs if j["sample"] == "good" and j["rule"].startswith("normalise")] == ["normalise"]
    assert "Trying to restart job" not in proc.stdout + proc.stderr
    res = wd / "results"
    for f in ("restored.ome.zarr", "qc/metrics.json", "report.html", "provenance.json"):
        assert (res / "good" / f).exists(), f
    assert not (res / "bad" / "normalized.ome.zarr").exists()
    table = pd.read_csv(res / "summary.tsv", sep="\t").set_index("sample")
    # in the sheet's order, refused rows where they stand, then the inbox's
    assert list(table.index) == ["good", "bad", "wrong_scale", "uses_wrong", "dup", "stack"]
    assert table.loc["good", "status"] in ("ok", "fallback_interpolation")
    assert table.loc["bad", "status"] == "failed"
    assert re.fullmatch(r"sample 'bad': data/bad\.tif: " + problem, table.loc["bad", "error"]), table.loc["bad", "error"]
    assert (res / "summary.html").exists()
    log = (res / "bad" / "logs" / "normalise.log").read_text()
    assert [ln for ln in log.splitlines() if ln.startswith("ERROR:")] == ["ERROR: " + table.loc["bad", "error"]]
    for sid, message in refused.items():
        assert table.loc[sid, "status"] == "failed" and table.loc[sid, "error"] == message, sid
        assert (res / sid / "logs" / "refused_row.log").read_text() == f"ERROR: {message}\n"
        assert not (res / sid / "normalized.ome.zarr").exists()
    (record,) = (res / "runs").glob("*_error.json")
    assert sorted(json.loads(record.read_text())["failed_samples"]) == sorted(["bad", *refused])


@pytest.mark.slow
def test_a_vendor_file_or_a_channel_its_file_lacks_is_named_at_the_start(tmp_path):
    """A CZI in the sheet (or the inbox) does not stop the night; the plan says at once what it
    is and how to convert it, and leaves the TIFF beside it alone. So does a channel or time
    point that the sample's file does not have, or a two-channel file without a channel, in
    the words its normalise would fail with; and a voxel size typed in another unit."""
    wd = make_workdir(tmp_path, samples={"good": {}, "scan": {"path": "../data/scan.czi"},
                                         "far": {"path": "../data/good.tif", "channel": 2},
                                         "late": {"path": "../data/good.tif", "timepoint": 1},
                                         "two": {"path": "../data/two.tif"},
                                         "slip": {"path": "../data/good.tif", "voxel_size": "1000,500,500"}})
    (wd / "data" / "scan.czi").write_bytes(b"ZISRAWFILE" + bytes(100))
    tifffile.imwrite(wd / "data" / "two.tif", np.zeros((4, 2, 16, 16), "uint16"), imagej=True,
                     metadata={"axes": "ZCYX"})
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    warnings = [ln for ln in plan.stderr.splitlines() if ln.startswith("selfres: WARNING: sample")]
    assert warnings[3].startswith("selfres: WARNING: sample 'two': its acquisition data/two.tif: has 2 channels; "
                                  "choose one with channel=0..1 (sample sheet column 'channel'"), warnings
    assert warnings[1:3] == [
        "selfres: WARNING: sample 'far': its acquisition data/good.tif: channel 2 is out of range: the file has 1 "
        "channel (allowed 0); that sample fails at normalise; with --keep-going, as the profiles set, the others go on",
        "selfres: WARNING: sample 'late': its acquisition data/good.tif: time point 1 is out of range: the file has 1 "
        "time point (allowed 0); that sample fails at normalise; with --keep-going, as the profiles set, the others "
        "go on"], plan.stderr[-3000:]
    # a voxel size typed in nm: said now, where its qc flag would say it after the training
    assert warnings[4] == ("selfres: WARNING: sample 'slip': its acquisition data/good.tif: the sheet's voxel size "
                           "1000,500,500 µm (z,y,x) is 10 times or more unlike the 1,0.5,0.5 µm its file records (nm "
                           "typed for µm?); selfres uses the sheet's, and its qc flags voxel_size_unlike_file. If the "
                           "sheet's is right, nothing needs doing"), plan.stderr[-3000:]
    assert len(warnings) == 5 and warnings[0].startswith(
        "selfres: WARNING: sample 'scan': its acquisition data/scan.czi is a Zeiss CZI file, which selfres does "
        "not read; "), plan.stderr[-2000:]
    assert "`bfconvert -bigtiff data/scan.czi data/scan.ome.tif`" in warnings[0]
    assert warnings[0].endswith("That sample fails at normalise; with --keep-going, as the profiles set, the "
                                "others go on")


@pytest.mark.slow
def test_a_missing_reference_is_named_at_the_start_and_fails_only_its_samples_qc(tmp_path):
    """The plan stands and says at once which reference is missing; the other sample finishes;
    the sample with the missing reference is restored and fails at qc, naming the file. No
    earlier job checks it: the file's existence would have to be among that job's params, and
    a reference that appeared later would rerun the whole sample."""
    wd = make_workdir(tmp_path, samples={"good": {}, "bad": {"reference": "../data/no_truth.tif"}})
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0  # the plan stands
    assert "sample 'bad': its reference data/no_truth.tif does not exist" in plan.stderr
    assert "sample 'good'" not in plan.stderr
    proc = run_snakemake(wd, "--keep-going", timeout=300)
    assert proc.returncode != 0
    res = wd / "results"
    assert (res / "good" / "restored.ome.zarr").exists()
    assert (res / "bad" / "restored.ome.zarr").exists() and not (res / "bad" / "qc" / "metrics.json").exists()
    table = pd.read_csv(res / "summary.tsv", sep="\t").set_index("sample")
    assert table.loc["bad", "status"] == "failed"
    assert "no_truth.tif" in table.loc["bad", "error"] and "does not exist" in table.loc["bad", "error"], \
        table.loc["bad", "error"]
    # dated when written, and says when: it was dated back before every report, so a failed
    # night's summary looked older than the night before's (to a cache, rsync -u, find -mtime)
    assert (res / "summary.html").stat().st_mtime >= (res / "good" / "report.html").stat().st_mtime
    assert re.search(r" · written 20\d\d-\d\d-\d\d \d\d:\d\d", (res / "summary.html").read_text())
    # the row taken out of the sheet: the next run rebuilds the summary (written outside
    # Snakemake's records by the failed run) from the samples left, and does nothing else
    sheet = wd / "config" / "samples.tsv"
    sheet.write_text("".join(ln for ln in sheet.read_text().splitlines(keepends=True) if not ln.startswith("bad\t")))
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0 and {j["rule"] for j in parse_snakemake_log(plan.stdout + plan.stderr)["jobs"]} \
        == {"summary"}, plan.stdout[-3000:]


def test_a_reference_off_the_output_grid_is_named_at_the_start(tmp_path):
    """Read from the two headers before any job (a check in crop would put the reference among
    its params: one added later would rerun the sample): the acquisition's own grid is not the
    output's at scale 1,2,2; the right grid passes quietly."""
    wd = make_workdir(tmp_path, samples={"off": {"reference": "../data/off_truth.tif"},
                                         "fits": {"reference": "../data/fits_truth.tif"}})
    write_tiny_tiff(wd / "data" / "off_truth.tif")  # 8×48×48: the input's grid
    write_tiny_tiff(wd / "data" / "fits_truth.tif", shape=(8, 96, 96))
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert ("sample 'off': its reference data/off_truth.tif has shape (8, 48, 48), the output grid is (8, 96, 96)"
            in plan.stderr), plan.stderr[-3000:]
    assert "sample 'fits'" not in plan.stderr


def test_an_isotropic_sample_without_a_usable_voxel_size_is_named_at_the_start(tmp_path):
    """A walkthrough: a dry run said nothing, and the sample failed at crop after its normalise."""
    wd = make_workdir(tmp_path, samples={"zfine": {"mode": "isotropic", "voxel_size": "0.4,0.5,0.5"},
                                         "fine": {"mode": "isotropic"}})  # the file's 1 × 0.5 × 0.5 µm: f = 2
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert ("sample 'zfine': its acquisition data/zfine.tif: voxel size z,y,x 0.4, 0.5, 0.5 µm: the z voxel (0.4 µm) "
            "is finer than the lateral pixel (0.5 µm)" in plan.stderr), plan.stderr[-3000:]
    assert "that sample fails at crop; with --keep-going" in plan.stderr
    assert "sample 'fine'" not in plan.stderr
    # its crop is tried once, whatever the profile's retries: it would fail alike on each
    crops = {j["sample"]: j["rule"] for j in parse_snakemake_log(plan.stdout + plan.stderr)["jobs"]
             if j["rule"].startswith("crop")}
    assert crops == {"zfine": "crop_once", "fine": "crop"}, crops


def test_an_image_that_cannot_take_its_scale_is_named_at_the_start(tmp_path):
    """A walkthrough: a 2-D image at the default scale 2,2,2 went through a dry run unsaid (``selfres
    inspect`` says it) and failed at crop after its normalise. Now said at the start, with the crop
    step's words, and its crop tried once; a stack too thin for its z factor alike."""
    wd = make_workdir(tmp_path, samples={"plane": {"path": "../data/plane.tif"}, "thin": {"path": "../data/thin.tif"},
                                         "flat": {"path": "../data/flat.tif", "scale": "1,2,2"}, "fine": {}})
    rng = np.random.default_rng(0)
    for name, shape in (("plane", (48, 48)), ("thin", (3, 48, 48)), ("flat", (48, 48))):
        tifffile.imwrite(wd / "data" / f"{name}.tif", rng.integers(0, 200, shape, dtype=np.uint16), imagej=True,
                         metadata={"axes": "ZYX"[-len(shape):]})
    plan = run_snakemake(wd, "-n", "--config", "scale=2,2,2", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert ("sample 'plane': its acquisition data/plane.tif is a 2-D image (shape (1, 48, 48), one z slice): it "
            "cannot be scaled along z (scale 2,2,2); give the sample scale 1,2,2" in plan.stderr), plan.stderr[-3000:]
    assert ("sample 'thin': its acquisition data/thin.tif: the volume (shape (3, 48, 48)) has 3 slices; scale 2 "
            "along z needs at least 4" in plan.stderr), plan.stderr[-3000:]
    assert plan.stderr.count("that sample fails at crop; with --keep-going") == 2
    assert "sample 'flat'" not in plan.stderr and "sample 'fine'" not in plan.stderr
    crops = {j["sample"]: j["rule"] for j in parse_snakemake_log(plan.stdout + plan.stderr)["jobs"]
             if j["rule"].startswith("crop")}
    assert crops == {"plane": "crop_once", "thin": "crop_once", "flat": "crop", "fine": "crop"}, crops


def test_write_tiny_tiff_is_valid(tmp_path):
    """Guard for the builders: the good tiny acquisition itself reads cleanly."""
    p = write_tiny_tiff(tmp_path / "ok.tif")
    vol = io.read_volume(p)
    assert vol.shape == (8, 48, 48) and vol.voxel_size == pytest.approx((1.0, 0.5, 0.5))
    assert os.path.getsize(p) > 0


@pytest.mark.parametrize("argv, what", [
    (["restore", "x.tif", "-o", "y.ome.zarr", "--scale", "2,2"], "argument --scale: value '2,2' must be three"),
    (["normalise", "x.tif", "-o", "y.ome.zarr", "--voxel-size=0,0.1,0.1"], "argument --voxel-size: value"),
    (["demo", "dd", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),  # was numpy's traceback
])
def test_a_bad_command_line_value_is_argparses_one_line_not_a_traceback(argv, what, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.main(argv)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and what in err and "Traceback" not in err


def test_restore_refuses_an_output_that_is_not_a_zarr_store(tmp_path, capsys):
    """`-o out.tif` used to write an OME-Zarr folder named out.tif."""
    rc = cli.main(["restore", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and "name the output like NAME.ome.zarr" in err
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("command", [["normalise", "in.tif"], ["infer", "n.ome.zarr", "model"]])
def test_normalise_and_infer_refuse_an_output_that_is_not_a_zarr_store(command, tmp_path, monkeypatch, capsys):
    """`selfres normalise a.tif -o a_norm.tif` wrote an OME-Zarr folder named like a TIFF."""
    monkeypatch.chdir(tmp_path)
    rc = cli.main([*command, "-o", "out.tif"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{command[0]} writes an OME-Zarr store, a folder: name the output like NAME.ome.zarr" in err
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("argv", [
    ["restore", "x.tif", "-o", "y.ome.zarr", "--scale", "1,1,1"],
    ["crop", "n.ome.zarr", "-o", "fov.json", "--scale", "1,1,1"],
    ["train", "n.ome.zarr", "fov.json", "-o", "model", "--scale", "1,1,1"],
])
def test_a_scale_of_one_on_every_axis_is_refused_on_the_command_line(argv, capsys):
    """enhance with 1,1,1 trained a whole model for the input's own grid (and ended flagged)."""
    with pytest.raises(SystemExit) as ex:
        cli.main(argv)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err
    assert "argument --scale: value '1,1,1' is 1 on every axis: enhance would restore nothing" in err


def test_a_library_call_with_a_scale_of_one_on_every_axis_is_refused_at_crop(tmp_path):
    from selfres.errors import ConfigError

    _, norm = _norm(tmp_path)
    with pytest.raises(ConfigError, match=r"sample 's1': scale '1,1,1' is 1 on every axis"):
        pipeline.stage_crop(norm, tmp_path / "fov.json", sample=SAMPLE, scale=(1, 1, 1))
    assert not (tmp_path / "fov.json").exists()


def test_output_chunks_the_tiles_cannot_write_whole_stop_the_run_before_any_job(tmp_path):
    """`infer.chunks` is checked against each enhance sample's tile × scale from its header at
    the start: it passed the start and failed the infer job, after the training. Chunks that
    fit (here a's own sheet value) pass."""
    wd = make_workdir(tmp_path, samples={"a": {"infer.chunks": "4,32,32"}, "b": {}},
                      config_overrides={"infer": {"chunks": [3, 3, 3]}})
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode != 0
    assert ("selfres: ERROR: sample 'b': infer.chunks (3, 3, 3) must divide infer.tile_size x scale (8, 64, 64) "
            "along y, x") in plan.stderr, plan.stderr[-3000:]
    assert "sample 'a'" not in plan.stderr
    cfg = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    cfg["infer"]["chunks"] = None
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = run_snakemake(wd, "-n", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]


def test_an_acquisition_replaced_while_it_is_normalised_fails_and_leaves_no_output(tmp_path, monkeypatch):
    """A re-acquisition saved under the same name while normalise read the old one: the data
    were the old file's, the checksum the new one's, and the output (newer than the new file)
    meant the new one was never read."""
    import os

    src = _tif(tmp_path, "raw.tif", tiny_volume((8, 64, 64), seed=0), metadata={"axes": "ZYX"})
    newer = _tif(tmp_path, "newer.tif", tiny_volume((8, 64, 64), seed=1), metadata={"axes": "ZYX"})
    checksum = io.file_checksum

    def replaced_meanwhile(path):
        os.replace(newer, src)  # the writer's rename lands while the old file is being read
        return checksum(path)

    monkeypatch.setattr(io, "file_checksum", replaced_meanwhile)
    out = tmp_path / "normalized.ome.zarr"
    with pytest.raises(InputError, match=r"raw.tif: changed while it was being read \(replaced, or still being "
                                         r"written\)"):
        pipeline.stage_normalise(src, out, sample=SAMPLE)
    assert not out.exists()
