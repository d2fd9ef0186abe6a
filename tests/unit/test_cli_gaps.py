"""Gaps a mutation review of :mod:`selfres.cli` found: behaviour of the ``selfres`` command
(argument limits and defaults, exit statuses, the one ``ERROR:`` line, which outputs are
refused before any work) that no other test pinned down. Each test runs in-process and fast:
the stage functions are replaced where the test is about the command, not the stage."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from selfres import cli, pipeline
from selfres.errors import ConfigError


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- argument limits, defaults
def test_seed_zero_is_allowed_and_negative_seeds_and_zero_time_points_are_refused(capsys):
    """``--seed 0`` is the documented default seed, so typing it must work (a `< least` turned
    `<=` refused it); a negative seed and ``--timepoints 0`` are argparse errors (exit 2, one
    line), never a crash deep in numpy or a division by zero in export."""
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "out", "--seed", "0"]).seed == 0
    assert parser.parse_args(["export", "a.ome.zarr", "-o", "a.ome.tif", "--timepoints", "1"]).timepoints == 1
    for argv, said in ((["demo", "out", "--seed", "-1"], "must be >= 0, got -1"),
                       (["export", "a.ome.zarr", "-o", "a.ome.tif", "--timepoints", "0"], "must be >= 1, got 0"),
                       (["demo", "out", "--seed", "x"], "'x' is not an integer")):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
        assert said in capsys.readouterr().err


def test_the_demo_seed_defaults_to_zero():
    """``selfres demo OUT`` writes the data the README's figures and numbers describe: those
    of seed 0, the default its help states."""
    assert cli.build_parser().parse_args(["demo", "out"]).seed == 0


# --------------------------------------------------------------------------- which files a failure names
def test_a_failed_write_counts_as_the_commands_own_only_for_its_outputs(tmp_path):
    """A permission error is said as 'cannot write in FOLDER' (exit 5) only where it is about
    what the command writes: its output, a file inside the output folder, the output's hidden
    temporary sibling, or an unnamed file (zarr's and tifffile's writes name none). A file it
    only reads is the input's problem (exit 2, 'cannot be read')."""
    out = tmp_path / "res" / "out.ome.zarr"
    args = SimpleNamespace(output=out, html=None, provenance=None, done=None, keep=None, outdir=None, figures=None)
    assert cli._is_written_here(None, args)
    assert cli._is_written_here(str(out), args)
    assert cli._is_written_here(out / "0" / "c" / "0", args)
    assert cli._is_written_here(out.parent / ".out.ome.zarr.tmp-1a2b", args)
    assert not cli._is_written_here(tmp_path / "data" / "raw.tif", args)
    assert not cli._is_written_here(out.parent / "other.ome.zarr", args)


def test_a_full_disk_said_in_an_implicit_context_is_still_found():
    """A writer that fails while handling ENOSPC (``raise`` inside ``except``, no ``from``)
    keeps the disk error as ``__context__``: it is still a full disk (exit 4), not a bug."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("flush failed")  # noqa: B904 - the implicit chain is the point
    except RuntimeError as exc:
        found = cli._errno_in_chain(exc, (errno.ENOSPC,))
    assert found is not None and found.errno == errno.ENOSPC


# --------------------------------------------------------------------------- outputs refused before any work
def test_adopt_may_replace_a_model_folder_that_selfres_wrote(tmp_path):
    """``selfres adopt … -o model/`` again (a rerun) replaces the model folder it wrote before
    (it has model.json), as train does; a folder holding other things is refused."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    (model / "weights.pt").write_bytes(b"")
    argv = ["adopt", str(tmp_path / "n.ome.zarr"), str(tmp_path / "train_fov.json"), str(tmp_path / "src_model"),
            "-o", str(model)]
    cli.check_outputs_apart(cli.build_parser().parse_args(argv))  # no error
    (model / "model.json").unlink()
    with pytest.raises(ConfigError, match="exists and is not a model folder that selfres wrote"):
        cli.check_outputs_apart(cli.build_parser().parse_args(argv))


def test_an_output_store_given_as_an_existing_file_is_refused_and_kept(tmp_path, capsys):
    """``-o notes.ome.zarr`` where that is a file: one ERROR line (exit 2) and the file left as
    it is, not a traceback from listing a file as a folder."""
    blocker = tmp_path / "notes.ome.zarr"
    blocker.write_text("my notes")
    rc = cli.main(["normalise", str(tmp_path / "in.tif"), "-o", str(blocker), "--sample", "s"])
    assert rc == 2
    assert "is an existing file; this output is a folder that selfres writes whole" in _error_line(
        capsys.readouterr().err)
    assert blocker.read_text() == "my notes"


# --------------------------------------------------------------------------- export
def test_export_accepts_the_ome_tiff_long_suffix(tmp_path, monkeypatch):
    """Bio-Formats reads both ``*.ome.tif`` and ``*.ome.tiff``: both are accepted."""
    from selfres import io

    written = []
    monkeypatch.setattr(io, "write_ome_tiff", lambda out, src, **kw: written.append(out))
    for name in ("a.ome.tiff", "b.OME.TIF"):
        assert cli.main(["export", str(tmp_path / "r.ome.zarr"), "-o", str(tmp_path / name)]) == 0
    assert [p.name for p in written] == ["a.ome.tiff", "b.OME.TIF"]


# --------------------------------------------------------------------------- sample ids in messages
def test_the_sample_id_of_normalise_and_restore_is_the_file_name_before_its_first_dot():
    """``cells.ome.tif`` is sample ``cells`` (as restore names it), not ``cells.ome``; a store
    given with a trailing slash is named by its folder."""
    parser = cli.build_parser()
    assert cli._sample_id(parser.parse_args(["normalise", "data/cells.ome.tif", "-o", "n.ome.zarr"])) == "cells"
    assert cli._sample_id(parser.parse_args(["restore", "data/x.ome.zarr/", "-o", "o.ome.zarr"])) == "x"


def test_a_multi_line_error_is_said_on_one_line(tmp_path, monkeypatch, capsys):
    """The summary and the workflow's report read each failed job's one ``ERROR:`` line: a
    message with a line break in it is joined, not cut at its first line."""
    def fail(*a, **k):
        raise ConfigError("first part\nsecond part")

    monkeypatch.setattr(pipeline, "restore", fail)
    assert cli.main(["restore", str(tmp_path / "cells.tif"), "-o", str(tmp_path / "out.ome.zarr")]) == 2
    err = capsys.readouterr().err
    assert _error_line(err) == "ERROR: sample 'cells': first part second part"
    assert "second part" not in err.replace(_error_line(err), "")


# --------------------------------------------------------------------------- infer's steps
@pytest.mark.parametrize("step, dropped", [("all", True), ("gather", True), ("block", False), ("prepare", False)])
def test_a_stale_export_is_dropped_by_the_step_that_finishes_the_output(tmp_path, monkeypatch, step, dropped):
    """``--drop-stale-export``: the OME-TIFF of an earlier run goes when the new output is in
    place (all, gather), not at a block or prepare step (then the old export would be gone while
    the old output still stands)."""
    from selfres import io

    calls = []
    monkeypatch.setattr(pipeline, "stage_infer", lambda *a, **k: {})
    monkeypatch.setattr(pipeline, "drop_stale_export", lambda out, part: calls.append((out, part)))
    monkeypatch.setattr(io, "read_volume", lambda *a, **k: SimpleNamespace(attrs={"timepoint": 1, "channel": 0}))
    assert cli.main(["infer", str(tmp_path / "n.ome.zarr"), str(tmp_path / "model"), "-o",
                     str(tmp_path / "r.ome.zarr"), "--sample", "s", "--step", step, "--drop-stale-export"]) == 0
    assert calls == ([(tmp_path / "r.ome.zarr", (1, 0))] if dropped else [])


def test_inspect_describes_each_of_several_files_and_names_the_one_it_cannot_read(tmp_path, capsys):
    """README, "Using your own data": check each file — `selfres inspect inbox/*.tif` was refused by
    the argument parser (a walkthrough). Each file is described in turn; one that cannot be read gets
    its ERROR line, the others are still described, and the status is 2."""
    import numpy as np
    import tifffile



    for name, shape in (("a.tif", (8, 32, 32)), ("c.tif", (6, 40, 40))):
        tifffile.imwrite(tmp_path / name, np.zeros(shape, np.uint16), metadata={"axes": "ZYX"})
    (tmp_path / "b.tif").write_text("not an image")
    rc = cli.main(["inspect", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "c.tif")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert f"{tmp_path / 'a.tif'}: 1 image\n8×32×32 ZYX" in out and f"{tmp_path / 'c.tif'}: 1 image\n6×40×40 ZYX" in out
    assert err.splitlines() == [f"ERROR: {tmp_path / 'b.tif'}: is not a TIFF file (unrecognised header) nor a Zarr "
                                "store; allowed: a TIFF/OME-TIFF file or a Zarr/OME-Zarr directory",
                                "ERROR: 1 of 3 files could not be read (named above)"]
    assert cli.main(["inspect", str(tmp_path / "a.tif"), str(tmp_path / "c.tif")]) == 0
