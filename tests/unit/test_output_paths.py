"""Where outputs beside ``restored.ome.zarr`` go."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from selfres import cli
from selfres.atomic import overwritten_input
from selfres.errors import ConfigError
from selfres.pipeline import drop_stale_export, drop_stale_model_output, model_output_path, restore, tiff_export_path


def test_model_output_is_named_after_its_output():
    assert model_output_path("results/a/restored.ome.zarr") == Path("results/a/restored_model.ome.zarr")
    assert model_output_path("out/a.ome.zarr") == Path("out/a_model.ome.zarr")
    assert model_output_path("out/b.zarr") == Path("out/b_model.zarr")
    assert model_output_path("out/c") == Path("out/c_model")


def test_outputs_written_to_one_folder_keep_their_own_model_output(tmp_path):
    """``selfres restore a.tif -o out/a.ome.zarr`` then ``b.tif -o out/b.ome.zarr``: b's run
    (not flagged) removes only a stale model output of its own, never a's."""
    for name in ("a_model.ome.zarr", "b_model.ome.zarr", ".b_model.ome.zarr.partial"):
        (tmp_path / name).mkdir()
    drop_stale_model_output(tmp_path / "b.ome.zarr")
    assert (tmp_path / "a_model.ome.zarr").is_dir()
    assert not (tmp_path / "b_model.ome.zarr").exists() and not (tmp_path / ".b_model.ome.zarr.partial").exists()


def test_tiff_export_is_named_after_its_output_and_only_its_own_is_dropped(tmp_path):
    assert tiff_export_path("results/a/restored.ome.zarr") == Path("results/a/restored.ome.tif")
    assert tiff_export_path("out/b.zarr") == Path("out/b.ome.tif")
    for name in ("a.ome.tif", "b.ome.tif"):
        (tmp_path / name).write_bytes(b"old")
    drop_stale_export(tmp_path / "b.ome.zarr")
    assert (tmp_path / "a.ome.tif").is_file() and not (tmp_path / "b.ome.tif").exists()


def _tiny_tiff(path):
    import numpy as np
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16))
    return path.read_bytes()


@pytest.mark.parametrize("output", ["same", "dotted", "folder", "hard_link", "symlink"])
def test_cli_refuses_an_output_that_would_replace_its_input_and_leaves_the_input_as_it_was(tmp_path, capsys, output):
    """``selfres normalise a.tif -o a.tif`` (or ``-o data/``) would replace the input whole
    and exit 0: it must stop first, with one line naming both paths."""
    src = tmp_path / "data" / "a.tif"
    before = _tiny_tiff(src)
    target = {"same": src, "dotted": tmp_path / "data" / ".." / "data" / "a.tif", "folder": tmp_path / "data",
              "hard_link": tmp_path / "h.tif", "symlink": tmp_path / "s.tif"}[output]
    if output == "hard_link":
        os.link(src, target)
    if output == "symlink":
        target.symlink_to(src)
    assert cli.main(["normalise", str(src), "-o", str(target), "--sample", "a"]) == 2
    err = capsys.readouterr().err
    assert "ERROR: sample 'a': -o/--output" in err and str(src) in err and "choose another output path" in err
    assert src.read_bytes() == before and sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.tif"]


def test_an_output_inside_an_input_folder_or_beside_the_input_is_allowed(tmp_path):
    store = tmp_path / "in.ome.zarr"
    store.mkdir()
    assert overwritten_input(store / "inside.json", [store]) is None
    assert overwritten_input(tmp_path / "b.ome.zarr", [store, None]) is None
    assert overwritten_input(tmp_path, [store]) == store


def test_summary_refuses_to_replace_the_results_folder(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert cli.main(["summary", str(tmp_path / "results"), "--samples", "a", "-o", str(tmp_path / "results"),
                     "--html", str(tmp_path / "s.html")]) == 2
    assert (tmp_path / "results").is_dir() and "is the input" in capsys.readouterr().err


def test_restore_refuses_a_keep_folder_whose_files_would_replace_its_model_from_or_input(tmp_path):
    """``selfres restore b.tif --keep run --model-from run/model`` would write the new model
    over the one it adopts; an input kept as ``run/normalized.ome.zarr`` would be replaced."""
    src = tmp_path / "b.tif"
    _tiny_tiff(src)
    (tmp_path / "run" / "model").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"kept file \(model\).*is the input"):
        restore(src, tmp_path / "out.ome.zarr", keep=tmp_path / "run", model_from=tmp_path / "run" / "model")
    with pytest.raises(ConfigError, match=r"kept file \(normalized.ome.zarr\)"):
        restore(tmp_path / "run" / "normalized.ome.zarr", tmp_path / "out.ome.zarr", keep=tmp_path / "run")
    with pytest.raises(ConfigError, match="model's output"):
        restore(tmp_path / "a_model.ome.zarr", tmp_path / "a.ome.zarr")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]


@pytest.mark.parametrize("output", ["keep", "kept_store", "parent"])
def test_restore_refuses_an_output_over_its_own_keep_folder_before_any_work(tmp_path, output):
    """``-o same.ome.zarr --keep same.ome.zarr`` trained to the end, then deleted its own kept
    files and failed with a misleading message; ``-o work/normalized.ome.zarr --keep work`` wrote
    the restoration over the kept normalised volume."""
    src = tmp_path / "a.tif"
    _tiny_tiff(src)
    keep = tmp_path / "work" / "run.ome.zarr"
    out = {"keep": keep, "kept_store": keep / "normalized.ome.zarr", "parent": tmp_path / "work"}[output]
    with pytest.raises(ConfigError, match="--keep folder"):
        restore(src, out if output != "parent" else tmp_path / "work.ome.zarr", keep=keep if output != "parent"
                else tmp_path / "work.ome.zarr" / "k")
    assert not keep.exists() and not (tmp_path / "work.ome.zarr").exists(), "refused before any work"


@pytest.mark.parametrize("command", ["normalise", "restore"])
def test_an_existing_folder_selfres_did_not_write_is_never_replaced(tmp_path, capsys, command):
    """``selfres normalise a.tif -o results/`` replaced the whole results folder (another sample,
    the summary) with a store, exit 0; ``restore -o other.ome.zarr`` an acquisition's store. A
    store that selfres wrote is replaced as every rerun replaces it."""
    import numpy as np
    import tifffile

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16), imagej=True,
                     metadata={"axes": "ZYX"})
    taken = tmp_path / "other.ome.zarr"  # (`-o results/` is now refused by its name, before this)
    (taken / "b").mkdir(parents=True)
    (taken / "summary.tsv").write_text("another sample's results")
    args = [command, str(src), "-o", str(taken)] + (["--voxel-size", "1,0.5,0.5"] if command == "normalise" else [])
    assert cli.main(args) == 2
    assert "is not a" in capsys.readouterr().err and (taken / "summary.tsv").read_text() == "another sample's results"
    store = tmp_path / "n.ome.zarr"
    for _ in range(2):  # the second run replaces the first's store
        assert cli.main(["normalise", str(src), "-o", str(store)]) == 0
    # a model folder: a training that would run (its inputs all there) is refused for the folder alone
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, (np.random.default_rng(0).random((8, 64, 64)) * 1000).astype(np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    assert cli.main(["normalise", str(big), "-o", str(tmp_path / "big.ome.zarr")]) == 0
    assert cli.main(["crop", str(tmp_path / "big.ome.zarr"), "-o", str(tmp_path / "fov.json"), "--scale", "1,2,2"]) == 0
    capsys.readouterr()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    tiny = '{"train": {"steps": 2, "width": 4, "depth": 1, "batch_size": 1, "patch_size": [4, 8, 8]}}'
    assert cli.main(["train", str(tmp_path / "big.ome.zarr"), str(tmp_path / "fov.json"), "-o",
                     str(tmp_path / "model"), "--scale", "1,2,2", "--settings", tiny]) == 2
    assert "is not a model folder that selfres wrote" in capsys.readouterr().err
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("option, message", [({"device": "cuda:7"}, "device"),
                                              ({"training_fov": "garbage"}, "not of the form")])
def test_restore_refuses_a_wrong_device_or_fov_form_before_reading_the_acquisition(tmp_path, option, message):
    """A typo in --device or --training-fov cost a full normalise pass of a large acquisition first."""
    src = tmp_path / "a.tif"
    _tiny_tiff(src)
    with pytest.raises(ConfigError, match=message):
        restore(src, tmp_path / "out.ome.zarr", keep=tmp_path / "work", **option)
    assert not (tmp_path / "work" / "normalized.ome.zarr").exists()


def test_every_command_line_option_says_what_it_is():
    """`selfres COMMAND --help` is the reference of someone running a stage alone: an option
    listed bare (`-o OUTPUT`, `normalized`) leaves them to read the source."""
    import argparse

    from selfres.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    bare = [f"{name} {action.dest}" for name, command in commands.items() for action in command._actions
            if action.help is None and not isinstance(action, argparse._HelpAction)]
    assert bare == []


@contextlib.contextmanager
def _held_by_another_process(path):
    """Another process holding ``path``'s output lock while the block runs; yields its pid."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom selfres.atomic import output_lock\n"
                               f"with output_lock({str(path)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_of_the_same_output_is_refused_at_once(tmp_path):
    """Two `selfres restore … -o out.ome.zarr` (or infer with another model) at once each
    deleted the other's temporary files, and the one that ended last committed a store holding
    118 of 256 tiles of the other's model, labelled as its own. While one holds the output, the
    other is refused before any work, naming the holder; a killed run's work folder is removed
    by the next."""
    import numpy as np
    import tifffile

    from selfres.atomic import atomic_output, output_lock

    src = tmp_path / "a.tif"
    _tiny_tiff(src)
    out = tmp_path / "out.ome.zarr"
    with _held_by_another_process(out) as pid:
        with pytest.raises(ConfigError, match=rf"out.ome.zarr: another selfres run \(pid {pid} on .*\) is "
                                              "writing this output now"):
            restore(src, out)
        assert not out.exists() and not (tmp_path / ".out.ome.zarr.work").exists(), "refused before any work"
        with pytest.raises(ConfigError, match="another selfres run"), atomic_output(out) as tmp:
            tmp.mkdir()
        from selfres.pipeline import stage_infer

        with pytest.raises(ConfigError, match="another selfres run"):
            stage_infer(tmp_path / "n.ome.zarr", tmp_path / "model", out, sample="s")
    with output_lock(out), output_lock(out):  # the holder died: free again; re-entrant within a process
        pass
    assert not (tmp_path / ".out.ome.zarr.lock").exists(), "released and removed"
    stale = tmp_path / ".out.ome.zarr.work" / "normalized.ome.zarr"  # left by a restore killed with SIGKILL
    stale.mkdir(parents=True)
    from selfres.settings import Settings, from_dict

    fast = from_dict(Settings, {"train": {"arch": "resnet3d", "width": 8, "depth": 1, "steps": 2, "validate_every": 1,
                                          "warmup_steps": 0, "batch_size": 2, "patch_size": [2, 16, 16]},
                                "fov": {"min_holdout_voxels": 64}})
    big = tmp_path / "b.tif"
    tifffile.imwrite(big, np.random.default_rng(0).random((8, 48, 48)).astype(np.float32))
    restore(big, out, scale=(1, 2, 2), settings=fast, device="cpu")
    assert out.is_dir() and not (tmp_path / ".out.ome.zarr.work").exists()


def test_a_second_train_or_adopt_of_one_model_is_refused_before_it_trains(tmp_path):
    """`selfres train` locked its model/ only at the final move: a second run of the same sample
    (two working directories sharing results/, a hand run, a Slurm job resubmitted) resumed
    the first's checkpoint, and the first removed model.work under it ('This is a bug')."""
    from selfres.pipeline import stage_adopt, stage_infer, stage_train

    model = tmp_path / "model"
    with _held_by_another_process(model) as pid:
        for mode in ("enhance", "isotropic"):
            with pytest.raises(ConfigError, match=rf"model: another selfres run \(pid {pid} on .*\) is writing"):
                stage_train(tmp_path / "n.ome.zarr", tmp_path / "fov.json", model, sample="s", mode=mode)
        with pytest.raises(ConfigError, match="another selfres run"):
            stage_adopt(tmp_path / "n.ome.zarr", tmp_path / "fov.json", tmp_path / "other", model_dir=model, sample="s")
        assert not (tmp_path / "model.work").exists(), "refused before any work"
    # the infer steps that hold their output: all but the scattered blocks
    out = tmp_path / "out.ome.zarr"
    with _held_by_another_process(out):
        for step in ("prepare", "gather"):
            with pytest.raises(ConfigError, match="another selfres run"):
                stage_infer(tmp_path / "n.ome.zarr", model, out, sample="s", step=step)
        with pytest.raises(Exception) as block:  # not refused for the lock: it fails on the missing input
            stage_infer(tmp_path / "n.ome.zarr", model, out, sample="s", step="block")
        assert "another selfres run" not in str(block.value)


def test_steps_whose_rules_ask_no_gpu_compute_on_the_cpu(tmp_path, monkeypatch):
    """adopt and infer's prepare / gather ran with --device auto: on a workstation's GPU pool
    (`--resources gpu=2`) a seconds-long adopt took one GPU's lock, and the train and infer
    jobs that started meanwhile both landed on the other."""
    from selfres import pipeline
    from selfres.cli import build_parser

    args = build_parser().parse_args(["adopt", "n.ome.zarr", "fov.json", "other/model", "-o", "model"])
    assert args.device == "cpu"
    assert build_parser().parse_args(["train", "n.ome.zarr", "fov.json", "-o", "model"]).device == "auto"
    asked = []

    def spy(*args, device, step, **kwargs):
        asked.append(device)
        return {}

    monkeypatch.setattr(pipeline, "stage_infer", spy)
    from selfres.cli import main

    for step in ("prepare", "gather", "block", "all"):
        main(["infer", "n.ome.zarr", "model", "-o", str(tmp_path / "out.ome.zarr"), "--step", step])
    # a device given is honoured, also for gather (which computes every tile when nothing was prepared)
    main(["infer", "n.ome.zarr", "model", "-o", str(tmp_path / "out.ome.zarr"), "--step", "gather",
          "--device", "cuda"])
    assert asked == ["cpu", "cpu", "auto", "auto", "cuda"]


def test_a_lock_file_another_account_left_does_not_block_the_output(tmp_path, monkeypatch):
    """A killed run of another account leaves its ``.NAME.lock`` (0644, not this account's to
    write): nobody holds it, so the output is written; before, 'cannot write in <folder>'. One
    this account cannot even read is named, with what to do."""
    from selfres import atomic

    out = tmp_path / "out.ome.zarr"
    lock = tmp_path / ".out.ome.zarr.lock"
    lock.write_text("pid 1 on elsewhere")
    real_open = os.open
    refused = {os.O_RDWR | os.O_CREAT}

    def foreign(path, flags, *args):  # as a file of another account reads to this one (tests run as root)
        if Path(path) == lock and flags in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", foreign)
    with atomic.atomic_output(out) as tmp:
        tmp.write_text("x")
    assert out.read_text() == "x" and not lock.exists()
    lock.write_text("pid 1 on elsewhere")
    refused.add(os.O_RDONLY)
    with pytest.raises(ConfigError, match=r"the lock file .*\.out\.ome\.zarr\.lock belongs to another account"):
        with atomic.atomic_output(out) as tmp:
            tmp.write_text("y")
    assert out.read_text() == "x"


def test_a_read_only_model_copied_for_another_sample_takes_this_accounts_modes(tmp_path):
    """A facility freezes curated models (``chmod -R a-w``); adopting one copied its modes,
    and the copy's own description could then not be written ('cannot write in' the
    results folder, and a read-only temporary folder left that ``rm -rf`` could not delete)."""
    import stat

    from selfres import models
    from selfres.modelfile import copy_with_metadata

    spec = models.ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)
    source = tmp_path / "frozen"
    models.save_model(source, models.build_model(spec), spec, metadata={"mode": "enhance", "factors": [1, 2, 2]})
    (source / "stage2").mkdir()
    (source / "stage2" / "note.txt").write_text("x")
    for p in sorted(source.rglob("*"), reverse=True) + [source]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    old = os.umask(0o027)
    shared = tmp_path / "shared"  # a group-shared results folder: setgid, so its files stay in the group
    shared.mkdir()
    shared.chmod(0o2770)
    try:
        copy_with_metadata(source, tmp_path / "copy", {"mode": "enhance", "factors": [1, 2, 2], "sample": "b"})
        copy_with_metadata(source, shared / "copy", {"mode": "enhance", "factors": [1, 2, 2], "sample": "b"})
    finally:
        os.umask(old)
        for p in [source, *source.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    modes = {p.relative_to(tmp_path / "copy").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "copy", *(tmp_path / "copy").rglob("*")]}
    assert modes.pop(".") == 0o750 and modes.pop("stage2") == 0o750
    assert set(modes.values()) == {0o640}, modes
    for folder in (shared / "copy", shared / "copy" / "stage2"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2750, oct(folder.stat().st_mode)
    assert models.load_model(tmp_path / "copy")[0] is not None


def test_an_older_selfres_s_banner_temporary_is_removed_as_litter(tmp_path):
    from selfres.atomic import remove_stale_siblings

    for name in (".report.html.tmp-stale-4711", ".report.html.tmp-stale-x", ".other.html.tmp-stale-4711"):
        (tmp_path / name).write_text("partial")
    assert [p.name for p in remove_stale_siblings(tmp_path / "report.html")] == [".report.html.tmp-stale-4711"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.html.tmp-stale-4711", ".report.html.tmp-stale-x"]
