"""Faults: killed jobs, full disks, damaged or hostile model files.

* ``kill -9`` of ``selfres train`` resumes from the last checkpoint and ends with the
  same weights as an uninterrupted run (CPU, same seed).
* Inference resume: finished tiles are not recomputed (library level, and ``kill -9``
  of a real ``selfres infer``).
* A full disk (``OSError(ENOSPC)``) leaves no output that Snakemake would take as
  complete, and no temporary litter.
* A damaged weights file is refused by checksum; the model folder is moved aside so the
  next run retrains; a hostile pickle placed as ``checkpoint.pt`` or as the weights file is
  never executed.
"""

from __future__ import annotations

import errno
import re
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfres import cli, io, models, pipeline, qc
from selfres.train import load_checkpoint
from workdir import write_tiny_tiff

SAMPLE = "s1"


def _only_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ERROR:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old-" in p.name)


@pytest.fixture
def normalized(tmp_path) -> Path:
    src = write_tiny_tiff(tmp_path / "raw.tif", shape=(8, 48, 48))
    out = tmp_path / "normalized.ome.zarr"
    pipeline.stage_normalise(src, out, sample=SAMPLE)
    return out


# --------------------------------------------------------------------------- full disk
def test_full_disk_while_writing_a_store_leaves_no_output(tmp_path, monkeypatch, capsys):
    src = write_tiny_tiff(tmp_path / "raw.tif")
    out = tmp_path / "res" / "normalized.ome.zarr"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(io, "finalize_ome_zarr", full)  # fails after level 0 was written
    rc = cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 4
    assert re.fullmatch(rf"ERROR: sample '{SAMPLE}': no space left on device while writing {re.escape(str(out))} "
                        r"\([0-9.e+]+ GB free on that file system\)", msg), msg
    assert not out.exists()
    assert _litter(out.parent) == []
    # zarr's writes name no file: the command's output is named instead

    def unnamed(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "finalize_ome_zarr", unnamed)
    assert cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE]) == 4
    assert f"while writing {out} (" in _only_error_line(capsys.readouterr().err)


def test_full_disk_while_writing_json_keeps_the_old_file_and_no_litter(tmp_path, monkeypatch):
    target = tmp_path / "train_fov.json"
    pipeline.write_json(target, {"old": True})
    real_write = Path.write_text

    def half_then_full(self, text, *a, **k):
        real_write(self, text[: len(text) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError) as exc:
        pipeline.write_json(target, {"new": list(range(100))})
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}  # never a half-written JSON
    assert _litter(tmp_path) == []


def test_full_disk_while_saving_a_model_leaves_no_model_json(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    spec = models.ModelSpec(arch="resnet3d", width=4, depth=1)
    with pytest.raises(OSError):
        models.save_model(tmp_path / "model", models.build_model(spec), spec)
    assert not (tmp_path / "model" / "model.json").exists()  # load_model refuses the folder


@pytest.mark.parametrize("failure", [
    OSError("36864 requested and 31688 written"),  # tifffile, writing an OME-TIFF export
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),  # torch.save
])
def test_a_full_disk_that_the_writer_does_not_name_is_still_a_full_disk(tmp_path, monkeypatch, capsys, failure):
    """Some writers fail on a full disk without ENOSPC: the line said 'failed unexpectedly … This
    is a bug', which the summary and the report showed. The output's file system has no room: that
    is what is said."""
    import shutil
    from collections import namedtuple

    src = write_tiny_tiff(tmp_path / "raw.tif")
    out = tmp_path / "res" / "normalized.ome.zarr"

    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr(io, "finalize_ome_zarr", fails)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    assert cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE]) == 4
    msg = _only_error_line(capsys.readouterr().err)
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': no space left on device while writing {out} (4.1e-06 GB free")
    # the writer's own words follow: a bug that struck on a full disk is not hidden by it
    assert msg.endswith(f"; the error: {' '.join(str(failure).split())})"), msg
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**11, 9 * 10**11))  # room: a bug
    assert cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE]) == 1
    assert "failed unexpectedly" in capsys.readouterr().err


@pytest.mark.parametrize("code, why", [(errno.EROFS, "it is on a read-only file system"),
                                       (errno.EACCES, "permission denied")])
def test_an_output_folder_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch, capsys, code, why):
    """A read-only mount or a folder of another account: every stage said 'failed unexpectedly …
    This is a bug', naming a hidden temporary path."""
    src = write_tiny_tiff(tmp_path / "raw.tif")
    out = tmp_path / "res" / "normalized.ome.zarr"

    def denied(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(out.parent / ".normalized.ome.zarr.tmp-1a2b"))

    monkeypatch.setattr(io, "finalize_ome_zarr", denied)
    assert cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE]) == 5
    assert _only_error_line(capsys.readouterr().err) == (
        f"ERROR: sample '{SAMPLE}': cannot write in {out.parent} ({why}); give the results a folder this account "
        "can write (config results, or -o)")
    # an acquisition this account may not read is the input's fault, not the results folder's

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))

    monkeypatch.setattr(io, "finalize_ome_zarr", unreadable)
    assert cli.main(["--log-level", "ERROR", "normalise", str(src), "-o", str(out), "--sample", SAMPLE]) == 2
    assert _only_error_line(capsys.readouterr().err) == (
        f"ERROR: sample '{SAMPLE}': {src}: cannot be read by this account (permission denied); give the account "
        "that runs selfres read access to it (and its folders)")


# --------------------------------------------------------------------------- damaged / hostile model files
def _tiny_model(folder: Path, flags=()) -> Path:
    spec = models.ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)
    models.save_model(folder, models.build_model(spec), spec,
                      metadata={"mode": "enhance", "factors": [1, 2, 2], "flags": list(flags)})
    return folder


def test_corrupt_weights_are_refused_by_checksum_with_advice(normalized, tmp_path, capsys):
    model = _tiny_model(tmp_path / "model")
    w = model / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte in the tensor data: still parses, wrong numbers
    w.write_bytes(bytes(raw))
    out = tmp_path / "restored.ome.zarr"
    rc = cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                   "--sample", SAMPLE, "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 2
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': {w}: checksum mismatch: the weights file is corrupt; "
                          f"the model folder was moved aside to {model}.corrupt-")
    assert msg.endswith("rerun the workflow to retrain it")
    assert not out.exists()
    # the damaged model is out of the way (so the workflow retrains) but kept for inspection
    assert not model.exists()
    assert len(list(tmp_path.glob("model.corrupt-*/weights.safetensors"))) == 1


def test_normalise_out_of_memory_is_said_as_such_not_as_a_bad_file(tmp_path, monkeypatch, capsys):
    """numpy's MemoryError while the acquisition is scanned was caught as a library error and
    reported as "a.tif: cannot read its data (Unable to allocate …)", exit 2: the user was
    sent to a good file. It is the job's memory: exit 3, and what to give it. The eager readers
    (a whole series, a dask array computed) let it through too."""
    import dask
    import tifffile

    raw = write_tiny_tiff(tmp_path / "a.tif")

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 122. MiB for an array with shape (4000, 4000) and data type float64")

    with monkeypatch.context() as m:
        m.setattr(dask, "compute", no_memory)  # the normalise stage's one pass over the volume
        rc = cli.main(["--log-level", "ERROR", "normalise", str(raw), "-o", str(tmp_path / "n.ome.zarr"),
                       "--sample", SAMPLE])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 3, msg
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': out of memory (Unable to allocate 122. MiB"), msg
    assert "give the job more memory" in msg and "cannot read" not in msg
    assert not (tmp_path / "n.ome.zarr").exists()
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_memory)
    with pytest.raises(MemoryError):
        io.read_volume(raw, lazy=False)
    monkeypatch.undo()
    monkeypatch.setattr("dask.array.Array.compute", no_memory)
    with pytest.raises(MemoryError):
        io._finish(str(raw), io.da.zeros((2, 8, 8), dtype="uint16"), lazy=False)


@pytest.mark.parametrize("command, stage, advice", [
    ("infer", "stage_infer", "or lower infer.tile_size"),
    ("train", "stage_train", "or lower fov.max_voxels"),
])
def test_numpys_out_of_memory_in_a_stage_names_that_stages_remedy(tmp_path, monkeypatch, capsys, command, stage,
                                                                   advice):
    """numpy's own words ("Unable to allocate …") in train or infer: exit 3, the job's memory,
    and the setting that makes that stage smaller (only normalise's, which has none, was tested)."""
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.00 GiB for an array with shape (512, 1024, 1024) and data type "
                          "float32")

    monkeypatch.setattr(pipeline, stage, no_memory)
    args = {"infer": ["infer", "n.ome.zarr", "model", "-o", str(tmp_path / "r.ome.zarr")],
            "train": ["train", "n.ome.zarr", "fov.json", "-o", str(tmp_path / "model")]}[command]
    rc = cli.main(["--log-level", "ERROR", *args, "--sample", SAMPLE, "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 3, msg
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': out of memory (Unable to allocate 2.00 GiB"), msg
    assert msg.endswith(f"give the job more memory (the profile's mem_mb, ulimit -v), {advice}"), msg


@pytest.mark.parametrize("stage, error", [
    ("qc", MemoryError("Unable to allocate 119. MiB for an array with shape (1200, 13000) and data type float64")),
    ("report", MemoryError("Unable to allocate 119. MiB for an array with shape (1200, 13000) and data type float64")),
    ("qc", RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")),  # qc's net
])
def test_restore_out_of_memory_after_its_output_names_the_stage_and_the_whole_output(tmp_path, monkeypatch, capsys,
                                                                                     stage, error):
    """A reviewer's restore under ulimit -v: both outputs written, then the report stage ran out
    and the line said "out of memory (…); … or lower fov.max_voxels or infer.tile_size", with no
    sample, no stage, and the remedy of the stages before it."""
    src = write_tiny_tiff(tmp_path / "raw.tif")
    out = tmp_path / "restored.ome.zarr"

    def no_memory(*args, **kwargs):
        raise error

    for name in ("stage_normalise", "stage_crop", "stage_train", "stage_report"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: {})
    monkeypatch.setattr(qc, "stage_qc", lambda *a, **k: {})
    monkeypatch.setattr(pipeline, "stage_infer", lambda *a, **k: out.mkdir())
    monkeypatch.setattr(qc if stage == "qc" else pipeline, f"stage_{stage}", no_memory)
    rc = cli.main(["--log-level", "ERROR", "restore", str(src), "-o", str(out), "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 3 and out.is_dir()
    assert msg.startswith(f"ERROR: sample 'raw': out of memory; the {stage} stage ran out ({str(error)[:20]}"), msg
    assert f"after {out} was written whole (it is kept)" in msg and f"`selfres {stage}` alone" in msg
    assert "fov.max_voxels" not in msg and "infer.tile_size" not in msg


def test_a_bug_in_qc_after_the_output_is_not_called_out_of_memory(tmp_path, monkeypatch, capsys):
    """Only an allocator's refusal after the output is out of memory (exit 3, 'give the command
    more memory'); any other error of qc is a bug, said as one, not hidden behind that advice."""
    src = write_tiny_tiff(tmp_path / "raw.tif")
    out = tmp_path / "restored.ome.zarr"

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch in the qc window")

    for name in ("stage_normalise", "stage_crop", "stage_train", "stage_report"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: {})
    monkeypatch.setattr(pipeline, "stage_infer", lambda *a, **k: out.mkdir())
    monkeypatch.setattr(qc, "stage_qc", bug)
    rc = cli.main(["--log-level", "ERROR", "restore", str(src), "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "failed unexpectedly" in err and "shape mismatch in the qc window" in err
    assert "out of memory" not in err and "ulimit -v" not in err


def test_inference_that_cannot_fit_in_host_memory_is_one_error_line_with_the_remedy(normalized, tmp_path,
                                                                                    monkeypatch, capsys):
    import selfres.infer as infer

    model = _tiny_model(tmp_path / "model")
    monkeypatch.setattr(infer, "host_memory_available", lambda: 1000)  # bytes: a job with no memory to spare
    out = tmp_path / "restored.ome.zarr"
    rc = cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                   "--sample", SAMPLE, "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 3
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': out of memory; a tile of ")
    assert "infer.back_projection_iterations" in msg and "infer.tile_size" in msg
    assert not out.exists() and _litter(tmp_path) == []


@pytest.mark.parametrize("step", [[], ["--step", "prepare", "--blocks", "2"]], ids=["whole", "scattered-prepare"])
def test_an_output_the_disk_has_no_room_for_is_refused_before_the_network_runs(normalized, tmp_path, monkeypatch,
                                                                                capsys, step):
    """A reviewer's 150 MB file system: normalise, training, every network tile and the
    back-projection ran, then 'no space left' at the first tile written, and a 106 MB partial
    store stayed on the full disk. The room is checked first: nothing is computed or written —
    in a scattered run by its prepare step, before any block job starts."""
    import shutil
    from collections import namedtuple

    import selfres.infer as infer

    model = _tiny_model(tmp_path / "model")
    ran = []
    monkeypatch.setattr(infer, "run_tiles", lambda *a, **k: ran.append(1))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 50_000, 50_000))
    out = tmp_path / "restored.ome.zarr"
    rc = cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                   "--sample", SAMPLE, "--device", "cpu", *step])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 4 and not ran
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': restored.ome.zarr (1 × 8×96×96 float32, with its pyramid) need "
                          "about "), msg
    assert "5e-05 GB free" in msg and "nothing was computed" in msg
    assert not out.exists() and not pipeline.partial_path(out).exists() and _litter(tmp_path) == []
    monkeypatch.undo()  # this file system's room
    assert cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                     "--sample", SAMPLE, "--device", "cpu", *step]) == 0


def test_the_fall_back_to_interpolation_is_refused_without_room_for_both_its_stores(normalized, tmp_path,
                                                                                  monkeypatch, capsys):
    """A model that did not beat tricubic writes two stores: its own output beside the
    interpolation that takes the output's name. A disk with room enough to let one store through
    (over half its estimate) but not the two is refused before any tile, naming both."""
    import shutil
    from collections import namedtuple

    import selfres.infer as infer

    model = _tiny_model(tmp_path / "model", flags=["model_worse_than_interpolation"])
    ran = []
    monkeypatch.setattr(infer, "run_tiles", lambda *a, **k: ran.append(1))
    one = pipeline.output_bytes_estimate(
        (8, 96, 96), "float32", (1.0, 0.25, 0.25),
        compression=pipeline.normalised_compression(normalized, io.open_ome_zarr_array(normalized)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, int(0.75 * one)))
    out = tmp_path / "restored.ome.zarr"
    rc = cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                   "--sample", SAMPLE, "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 4 and not ran
    assert msg.startswith(f"ERROR: sample '{SAMPLE}': restored_model.ome.zarr and restored.ome.zarr (2 × 8×96×96 "
                          "float32, with its pyramid) need about "), msg
    assert not out.exists() and not pipeline.model_output_path(out).exists()
    # with room, both are written; a rerun that finds the model output finished by this same job keeps it,
    # and room for the one store left is enough
    monkeypatch.undo()
    args = ["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out), "--sample", SAMPLE,
            "--device", "cpu"]
    assert cli.main(args) == 0 and pipeline.model_output_path(out).is_dir()
    shutil.rmtree(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, int(0.75 * one)))
    assert cli.main(args) == 0 and out.is_dir()


def test_a_disk_that_fills_during_inference_names_the_partial_store_kept_for_the_rerun(normalized, tmp_path,
                                                                                      monkeypatch, capsys):
    """docs/errors.md said no temporary sibling is left; an inference keeps its partial store
    (a rerun resumes from its tiles) — on the full disk, unsaid."""
    import selfres.infer as infer

    model = _tiny_model(tmp_path / "model")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(infer, "run_tiles", full)
    out = tmp_path / "restored.ome.zarr"
    rc = cli.main(["--log-level", "ERROR", "infer", str(normalized), str(model), "-o", str(out),
                   "--sample", SAMPLE, "--device", "cpu"])
    msg = _only_error_line(capsys.readouterr().err)
    assert rc == 4 and pipeline.partial_path(out).is_dir() and not out.exists()
    assert f"; kept for the rerun to resume: {pipeline.partial_path(out)} (" in msg
    assert msg.endswith(" GB) (delete to free the space instead)"), msg


def test_the_room_check_counts_an_unfinished_store_and_the_fall_backs_two_stores(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from selfres.errors import NoRoom

    usage = namedtuple("usage", "total used free")
    need = pipeline.output_bytes_estimate((8, 256, 256), "float32", None, compression=1.0)
    assert need == 4 * (8 * 256 * 256 + 4 * 128 * 128 + 2 * 64 * 64)  # level 0 and the pyramid's levels
    out = tmp_path / "restored.ome.zarr"
    # refused only where it surely cannot fit: under half the estimate (review: outputs came out at
    # 0.60-0.73 of it, and at 1.52)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, int(0.9 * need)))
    pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s")
    with pytest.raises(NoRoom, match=r"restored_model.ome.zarr and restored.ome.zarr \(2 × "):
        pipeline.check_room_for_outputs([pipeline.model_output_path(out), out], (8, 256, 256), "float32", None,
                                        compression=1.0, sample="s")
    # a model output there from another job is written again, and needs its room (it was counted as
    # present until the fifty-eighth session) ...
    pipeline.model_output_path(out).mkdir()
    with pytest.raises(NoRoom, match=r"restored_model.ome.zarr and restored.ome.zarr \(2 × "):
        pipeline.check_room_for_outputs([pipeline.model_output_path(out), out], (8, 256, 256), "float32", None,
                                        compression=1.0, sample="s")
    # ... one finished by this same job, which a resumed fall-back keeps (kept_model_output), needs nothing
    pipeline.check_room_for_outputs([pipeline.model_output_path(out), out], (8, 256, 256), "float32", None,
                                    compression=1.0, sample="s", kept=[pipeline.model_output_path(out)])
    # what an unfinished store holds is room for the rerun that resumes it
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, need // 3))
    with pytest.raises(NoRoom, match="infer.output_dtype: input"):
        pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s",
                                        source_dtype="uint16")
    # an acquisition already float32: writing its own type saves nothing, so it is not advised
    with pytest.raises(NoRoom) as refused:
        pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s",
                                        source_dtype="float32")
    assert "output_dtype" not in str(refused.value)
    # an output already there (a rerun rewrites it) needs its room all the same
    out.mkdir()
    with pytest.raises(NoRoom, match=r"restored.ome.zarr \(1 × "):
        pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s")
    pipeline.partial_path(out).mkdir()
    (pipeline.partial_path(out) / "0").write_bytes(b"\0" * (need // 4))
    pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s")
    # a file system that reports no sizes at all (some FUSE mounts) is not taken as full
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, 0))
    pipeline.check_room_for_outputs([out.with_name("other.ome.zarr")], (8, 256, 256), "float32", None,
                                    compression=1.0, sample="s")
    # an output in folders not made yet: the room is asked of the nearest folder that exists, however
    # many levels up (the file system answers nothing of a missing path)
    def room_of(path):
        if not Path(path).exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return usage(10**9, 0, need // 3)

    monkeypatch.setattr(shutil, "disk_usage", room_of)
    with pytest.raises(NoRoom, match=f"the file system of {tmp_path} has "):
        pipeline.check_room_for_outputs([tmp_path / "a" / "b" / "c" / "restored.ome.zarr"], (8, 256, 256), "float32",
                                        None, compression=1.0, sample="s")


def test_the_room_estimate_takes_the_compression_of_a_mostly_empty_acquisition(tmp_path):
    """Sparse acquisitions (a few cells in a dark field) compress well: their outputs take a small
    share of their array's bytes. Estimated at full size, the room check refused disks that had room."""
    import tifffile

    vol = np.zeros((16, 96, 96), np.uint16)
    vol[4:8, 40:56, 40:56] = 1000
    tifffile.imwrite(tmp_path / "sparse.tif", vol)
    normalized = tmp_path / "normalized.ome.zarr"
    pipeline.stage_normalise(tmp_path / "sparse.tif", normalized, sample=SAMPLE)
    compression = pipeline.normalised_compression(normalized, io.open_ome_zarr_array(normalized))
    assert 0.05 <= compression < 0.3


def test_restores_full_disk_message_says_a_rerun_starts_over_and_how_to_resume_with_keep(tmp_path):
    """restore trains again, and the new model's inference discards the partial store: 'kept for the
    rerun to resume' was untrue of it (a review)."""
    import argparse

    out = tmp_path / "r.ome.zarr"
    pipeline.partial_path(out).mkdir()
    plain = cli._kept_partial_stores(argparse.Namespace(command="restore", output=out, keep=None))
    assert "a rerun of restore starts over and discards it, so delete it" in plain and "resume it" not in plain
    kept = cli._kept_partial_stores(argparse.Namespace(command="restore", output=out, keep=tmp_path / "k"))
    assert f"selfres infer {tmp_path / 'k'}/normalized.ome.zarr {tmp_path / 'k'}/model -o {out}" in kept
    assert "kept for the rerun to resume" in cli._kept_partial_stores(argparse.Namespace(command="infer", output=out))
    # a fall-back's model output, unfinished beside it, is on the same disk: named too, with its size
    model_partial = pipeline.partial_path(pipeline.model_output_path(out))
    model_partial.mkdir()
    (model_partial / "0").write_bytes(b"\0" * 2_000_000)
    assert cli._kept_partial_stores(argparse.Namespace(command="infer", output=out)) == (
        f"; kept for the rerun to resume: {model_partial} (0.002 GB), {pipeline.partial_path(out)} (0 GB) "
        "(delete to free the space instead)")


class _Pwn:
    """A pickle that runs code when unpickled (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_pickle_as_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint.pt"
    with open(ckpt, "wb") as fh:
        pickle.dump({"step": 10, "model": _Pwn(marker)}, fh)
    # an attacker who can write the checkpoint can write its checksum too
    from selfres.io import file_checksum

    Path(str(ckpt) + ".sha256").write_text(file_checksum(ckpt))
    assert load_checkpoint(ckpt) is None  # weights_only=True refuses it: training starts afresh
    assert not marker.exists()
    torch.save({"step": 3, "w": torch.ones(2)}, ckpt)  # a real checkpoint still loads
    Path(str(ckpt) + ".sha256").write_text(file_checksum(ckpt))
    assert load_checkpoint(ckpt)["step"] == 3


def test_hostile_pickle_as_weights_file_is_never_executed(tmp_path):
    model = _tiny_model(tmp_path / "model")
    marker = tmp_path / "pwned"
    w = model / "weights.safetensors"
    w.write_bytes(pickle.dumps(_Pwn(marker)))
    info = json.loads((model / "model.json").read_text())
    info["weights_sha256"] = io.file_checksum(w)  # checksum forged to match
    (model / "model.json").write_text(json.dumps(info))
    with pytest.raises(models.InputError, match="cannot read the weights file"):
        models.load_model(model)
    assert not marker.exists()


# --------------------------------------------------------------------------- inference resume
def test_interrupted_inference_resumes_without_recomputing_finished_tiles():
    from selfres.infer import CubicUpsampler, restore_to_store

    rng = np.random.default_rng(0)
    src = rng.random((4, 32, 32)).astype(np.float32)
    kw = dict(factors=(1, 2, 2), tile_size=(4, 16, 16), device="cpu", amp=False, writers=0)
    full = np.zeros((4, 64, 64), np.float32)
    n = restore_to_store(CubicUpsampler((1, 2, 2)), src, full, **kw)["tiles"]
    assert n >= 4

    class Killed(Exception):
        pass

    dest = np.zeros_like(full)
    done: set[int] = set()

    def record(i):
        done.add(i)
        if len(done) == 2:
            raise Killed  # the job dies after two finished tiles

    with pytest.raises(Killed):
        restore_to_store(CubicUpsampler((1, 2, 2)), src, dest, on_tile_done=record, **kw)
    stats = restore_to_store(CubicUpsampler((1, 2, 2)), src, dest, done_tiles=set(done), **kw)
    assert stats["computed"] == n - len(done)
    np.testing.assert_allclose(dest, full, atol=1e-6)


# --------------------------------------------------------------------------- kill -9 during training
TRAIN_SETTINGS = {"train": {"arch": "resnet3d", "width": 8, "depth": 1, "steps": 40, "validate_every": 5,
                            "warmup_steps": 0, "batch_size": 2, "patch_size": [4, 16, 16], "max_minutes": 30.0,
                            "patience": 100}}


def _train_cmd(normalized: Path, fov: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "selfres.cli", "--log-level", "INFO", "train", str(normalized), str(fov),
            "-o", str(out), "--scale", "1,2,2", "--sample", SAMPLE, "--device", "cpu", "--threads", "1",
            "--settings", json.dumps(TRAIN_SETTINGS)]


def _weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model / "weights.safetensors"))


@pytest.mark.slow
def test_kill_9_during_training_resumes_to_the_same_weights(normalized, tmp_path):
    fov = tmp_path / "fov.json"
    pipeline.stage_crop(normalized, fov, sample=SAMPLE, scale=(1, 2, 2),
                        settings=pipeline.FovSettings(min_holdout_voxels=256))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref" / "model"
    subprocess.run(_train_cmd(normalized, fov, ref), check=True, env=env, timeout=300, capture_output=True)

    out = tmp_path / "run" / "model"
    ckpt = out.with_name("model.work") / "checkpoint.pt"
    proc = subprocess.Popen(_train_cmd(normalized, fov, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # a finish before any checkpoint appeared is a failure, not a skip: with checkpointing broken the
        # training runs to its end, and a skip kept the suite green (an audit); on this 2-core machine a
        # checkpoint appears within seconds of the start
        assert proc.poll() is None, ("training finished without a checkpoint ever appearing (checkpointing "
                                     "broken, or a machine so fast that the test needs more steps)")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # a killed training never leaves a model that looks done
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < TRAIN_SETTINGS["train"]["steps"]
    resumed = subprocess.run(_train_cmd(normalized, fov, out), env=env, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint" in resumed.stderr
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- hostile path strings
@pytest.mark.slow
def test_sample_path_with_shell_metacharacters_is_quoted(tmp_path):
    """A path like ``a b;$(touch pwned).tif`` reaches every command quoted, and runs."""
    from workdir import make_workdir, run_snakemake

    wd = make_workdir(tmp_path, samples={"a": {"path": "../data/a b;$(touch pwned).tif"}})
    write_tiny_tiff(wd / "data" / "a b;$(touch pwned).tif")
    dry = run_snakemake(wd, "-n", "-p", "--forceall", timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "selfres normalise 'data/a b;$(touch pwned).tif' -o results/a/normalized.ome.zarr" in dry.stdout
    real = run_snakemake(wd, "results/a/normalized.ome.zarr", timeout=120)
    assert real.returncode == 0, real.stdout + real.stderr
    assert (wd / "results" / "a" / "normalized.ome.zarr" / "0").exists()
    assert not (wd / "pwned").exists() and not (wd / "results" / "a" / "pwned").exists()


# --------------------------------------------------------------------------- kill -9 during inference
@pytest.mark.slow
def test_kill_9_during_inference_resumes_without_recomputing_finished_tiles(tmp_path):
    src = write_tiny_tiff(tmp_path / "raw.tif", shape=(8, 128, 128))
    norm = tmp_path / "normalized.ome.zarr"
    pipeline.stage_normalise(src, norm, sample=SAMPLE)
    model = tmp_path / "model"
    spec = models.ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)
    torch.manual_seed(0)
    net = models.build_model(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    models.save_model(model, net, spec, metadata={"mode": "enhance", "factors": [1, 2, 2], "flags": []})
    settings = json.dumps({"infer": {"tile_size": [2, 16, 16]}})

    def cmd(out):
        return [sys.executable, "-m", "selfres.cli", "--log-level", "INFO", "infer", str(norm), str(model),
                "-o", str(out), "--sample", SAMPLE, "--device", "cpu", "--threads", "1", "--settings", settings]

    out = tmp_path / "restored.ome.zarr"
    progress = tmp_path / ".restored.ome.zarr.progress"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = sum(len(f.read_text().splitlines()) for f in progress.glob("done-*.jsonl")) if progress.exists() else 0
        if lines >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "inference finished before it could be killed; make the volume larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that looks complete
    done_before = sum(len(f.read_text().splitlines()) for f in progress.glob("done-*.jsonl"))
    rerun = subprocess.run(cmd(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    total = 8 // 2 * (128 // 16) ** 2
    assert f"{total - done_before}/{total} tiles computed" in rerun.stderr, rerun.stderr[-2000:]
    # same result as an uninterrupted run
    ref = tmp_path / "ref.ome.zarr"
    assert subprocess.run(cmd(ref), capture_output=True, timeout=300).returncode == 0
    np.testing.assert_allclose(io.read_ome_zarr(out).data, io.read_ome_zarr(ref).data, atol=1e-5)


# --------------------------------------------------------------------------- SIGTERM, stale temporaries
def test_sigterm_cleans_up_and_says_so_and_a_killed_writers_litter_goes_at_the_next_write(tmp_path):
    """A Slurm time limit sends SIGTERM: the stage died without its cleanup (a full-size
    `.normalized.ome.zarr.tmp-XXXX` stayed for good) and wrote no ERROR line. Now SIGTERM stops it
    like Ctrl-C does; and a SIGKILL's litter is removed by the next write of that output."""
    out = tmp_path / "normalized.ome.zarr"
    ready = tmp_path / "writing"
    script = f"""
import sys, time
from pathlib import Path
from selfres import cli, pipeline
from selfres.atomic import atomic_output

def slow(src, output, **kwargs):
    with atomic_output(output) as tmp:
        tmp.mkdir()
        (tmp / "0").write_bytes(bytes(1000))
        Path({str(ready)!r}).touch()
        time.sleep(60)

pipeline.stage_normalise = slow
sys.exit(cli.main(["normalise", "raw.tif", "-o", {str(out)!r}, "--sample", "s1"]))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "ERROR: sample 's1': selfres normalise was stopped by SIGTERM (a Slurm time limit, scancel, or the workflow "
        "stopping it); its output was not written, and a rerun resumes a training from its last checkpoint and an "
        "inference from its recorded tiles")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writing"]  # no temporary sibling left

    from selfres.atomic import atomic_output

    for name in (".normalized.ome.zarr.tmp-1a2b3c4d", ".normalized.ome.zarr.old-0f0f0f0f"):  # a SIGKILL's
        (tmp_path / name).mkdir()
    (tmp_path / ".normalized.ome.zarr.partial").mkdir()  # an inference's resumable store: not litter
    with atomic_output(out) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".normalized.ome.zarr.partial", "normalized.ome.zarr",
                                                          "writing"]


def test_a_file_size_limit_is_one_error_line_not_a_bug(tmp_path):
    """`ulimit -f` (SGE h_fsize, a FAT drive's 4 GiB) gave a traceback and 'This is a bug', exit 1."""
    import tifffile

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((8, 128, 128)).astype(np.float32))
    out = tmp_path / "n.ome.zarr"
    proc = subprocess.run(["bash", "-c", f"ulimit -f 64; exec {sys.executable} -m selfres.cli normalise {src} "
                                         f"-o {out} --sample {SAMPLE}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr[-2000:]
    line = _only_error_line(proc.stderr)
    assert line.startswith(f"ERROR: sample '{SAMPLE}': file too large while writing ") and "ulimit -f" in line
    assert not out.exists()
