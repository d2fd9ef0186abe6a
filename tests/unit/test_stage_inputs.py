"""A stage run alone (``selfres train|infer|qc|report``) checks the files another stage wrote:
a damaged, edited or mismatched ``train_fov.json``, ``model.json``, ``restored.ome.zarr``
or ``metrics.json`` is refused with one message naming the file, never a traceback or a
silent run on the wrong voxels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from selfres import cli, figures, pipeline, qc
from selfres.errors import ConfigError, InputError
from selfres.fov import TrainingFov
from selfres.settings import Settings, from_dict

from ..conftest import blob_volume, captured_figures

FAST = {"train": {"steps": 2, "width": 4, "depth": 1, "batch_size": 1, "patch_size": [4, 16, 16],
                  "validate_every": 1, "warmup_steps": 1}, "qc": {"resolution": False}}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """One sample restored ×(1,2,2) with its work files kept: ``work/`` and ``out.ome.zarr``."""
    import tifffile

    d = tmp_path_factory.mktemp("stage_inputs")
    tifffile.imwrite(d / "in.tif", (blob_volume((8, 64, 64), n=120, seed=4) * 1000).astype(np.uint16))
    pipeline.restore(d / "in.tif", d / "out.ome.zarr", scale=(1, 2, 2), voxel_size=(1.0, 0.2, 0.2), device="cpu",
                     settings=from_dict(Settings, FAST), keep=d / "work")
    return d


@pytest.fixture
def work(sample, tmp_path) -> Path:
    """A copy of the sample's work folder (tests edit it) with the restored volume in it."""
    w = tmp_path / "work"
    shutil.copytree(sample / "work", w)
    shutil.copytree(sample / "out.ome.zarr", w / "out.ome.zarr")
    return w


def _fov(work: Path) -> dict:
    return json.loads((work / "train_fov.json").read_text())


def _train(work: Path, **kw):
    return pipeline.stage_train(work / "normalized.ome.zarr", work / "train_fov.json", work / "model2", sample="s",
                                scale=(1, 2, 2), settings=from_dict(Settings, FAST), device="cpu", **kw)


def _qc(work: Path):
    return qc.stage_qc(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model",
                             work / "train_fov.json", work / "qc" / "m2.json", sample="s",
                             settings=from_dict(Settings, FAST).qc)


def _edited(d: dict, **changes) -> str:
    return json.dumps(d | changes)


FOV_DAMAGE = {
    "not JSON": (lambda d: "{ not json", "cannot read the training-FOV file"),
    "a list": (lambda d: "[1, 2]", "a JSON object was expected"),
    "no holdout": (lambda d: json.dumps({k: v for k, v in d.items() if k != "holdout"}), "lacks 'holdout'"),
    "string box": (lambda d: _edited(d, train="0:8,0:32,0:32"), "not three [start, end] integer ranges"),
    "two axes": (lambda d: _edited(d, train=d["train"][1:]), "not three [start, end] integer ranges"),
    "float bound": (lambda d: _edited(d, train=[[0, 4.5], *d["train"][1:]]), "not three [start, end] integer"),
    "swapped": (lambda d: _edited(d, train=[list(reversed(a)) for a in d["train"]]), "is empty or outside"),
    "empty holdout": (lambda d: _edited(d, holdout=[[a, a] for a, _ in d["holdout"]]), "is empty or outside"),
    "negative": (lambda d: _edited(d, train=[[-2, 4], *d["train"][1:]]), "is empty or outside"),
    "past the end": (lambda d: _edited(d, train=[*d["train"][:2], [0, 65]]), "x range 0:65 is empty or outside "
                                                                             "the volume (the volume has 64)"),
    "overlap": (lambda d: _edited(d, holdout=d["train"]), "overlaps the training FOV"),
    "other volume": (lambda d: _edited(d, volume_shape=[8, 64, 80]), "made for a volume of shape (8, 64, 80)"),
    "other mode": (lambda d: _edited(d, mode="isotropic"), "made for mode 'isotropic'"),
}


@pytest.mark.parametrize("damage", FOV_DAMAGE, ids=list(FOV_DAMAGE))
def test_a_damaged_or_mismatched_training_fov_file_is_refused_by_train_and_qc(work, damage):
    edit, expected = FOV_DAMAGE[damage]
    (work / "train_fov.json").write_text(edit(_fov(work)))
    for stage in (_train, _qc):
        with pytest.raises(InputError, match="delete it and rerun the crop stage") as exc:
            stage(work)
        assert "train_fov.json" in str(exc.value) and expected in str(exc.value) and exc.value.sample == "s"
    assert not (work / "model2").exists() and not (work / "qc" / "m2.json").exists()


def test_the_training_fov_file_the_crop_stage_wrote_loads_as_it_was_chosen(work):
    d = _fov(work)
    fov = TrainingFov.load(work / "train_fov.json", volume_shape=d["volume_shape"], mode="enhance", sample="s")
    assert [list(a) for a in fov.train] == d["train"] and [list(a) for a in fov.holdout] == d["holdout"]
    with pytest.raises(InputError, match="not found; run the crop stage"):
        TrainingFov.load(work / "missing.json")


def _edit_model(work: Path, **metadata):
    p = work / "model" / "model.json"
    info = json.loads(p.read_text())
    info["metadata"].update(metadata)
    p.write_text(json.dumps(info))


@pytest.mark.parametrize("metadata, expected", [
    ({"mode": "isotropic"}, "an isotropic model's axial factor must be a number > 1"),
    ({"mode": "sharpen"}, 'mode "sharpen" is not enhance or isotropic'),
    ({"factors": [1, 2]}, "factors must be three integers >= 1"),
    ({"factors": [1, 0, 2]}, "factors must be three integers >= 1"),
])
def test_an_edited_model_description_is_refused_before_inference(work, metadata, expected, tmp_path):
    _edit_model(work, **metadata)
    with pytest.raises(InputError, match="invalid model description") as exc:
        pipeline.stage_infer(work / "normalized.ome.zarr", work / "model", tmp_path / "o.ome.zarr", sample="s",
                             device="cpu")
    assert expected in str(exc.value) and "model.json" in str(exc.value)
    assert not (tmp_path / "o.ome.zarr").exists()


def test_a_model_description_whose_factors_are_not_its_networks_is_refused(work, tmp_path):
    _edit_model(work, factors=[2, 2, 2])
    with pytest.raises(InputError, match=r"it says factors \(2, 2, 2\), its network restores by \(1, 2, 2\)"):
        pipeline.stage_infer(work / "normalized.ome.zarr", work / "model", tmp_path / "o.ome.zarr", sample="s",
                             device="cpu")


def test_a_model_description_of_a_newer_format_is_refused(work):
    p = work / "model" / "model.json"
    p.write_text(json.dumps(json.loads(p.read_text()) | {"format_version": 99}))
    with pytest.raises(InputError, match="format_version 99: this selfres reads model descriptions of version 1"):
        pipeline.trained_description(work / "model")


def test_a_model_with_other_factors_cannot_score_or_show_a_restored_volume_on_another_grid(work):
    """A model trained ×2 on every axis, with qc/report given the ×(1,2,2) output: the grids
    differ, so the metrics would compare the wrong voxels."""
    pipeline.stage_train(work / "normalized.ome.zarr", work / "train_fov.json", work / "model222", sample="s",
                         scale=(2, 2, 2), settings=from_dict(Settings, FAST), device="cpu")
    grids = (r"out.ome.zarr: has shape \(8, 128, 128\), but this model \(enhance, factors \(2, 2, 2\)\) restores "
             r"the normalised volume \(8, 64, 64\) onto \(16, 128, 128\).*rerun the infer stage")
    with pytest.raises(InputError, match=grids):
        qc.stage_qc(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model222",
                          work / "train_fov.json", work / "qc" / "m2.json", sample="s")
    with pytest.raises(InputError, match=grids):
        pipeline.stage_report(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model222",
                              work / "train_fov.json", work / "qc" / "metrics.json", work / "r.html",
                              work / "p.json", sample="s")
    assert not (work / "r.html").exists() and not (work / "qc" / "m2.json").exists()


@pytest.mark.parametrize("text, expected", [("{", "cannot read the metrics file"),
                                            ("[]", "holds a JSON list, not an object")])
def test_report_refuses_a_damaged_metrics_file(work, text, expected):
    """... and moves it aside: Snakemake takes a file it finds as done, so a damaged one failed the
    report on every rerun (a helper); gone, the next run redoes the qc."""
    (work / "qc" / "metrics.json").write_text(text)
    with pytest.raises(InputError, match=expected + r".*; it was moved aside to .*metrics\.json\.corrupt-\d{8}T\d{6}: "
                       "rerun the workflow to redo its qc"):
        pipeline.stage_report(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model",
                              work / "train_fov.json", work / "qc" / "metrics.json", work / "r.html",
                              work / "p.json", sample="s")
    assert not (work / "qc" / "metrics.json").exists()
    assert [f.read_text() for f in (work / "qc").glob("metrics.json.corrupt-*")] == [text]
    with pytest.raises(InputError, match="metrics file not found; rerun the qc stage"):  # none: no aside
        pipeline.stage_report(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model",
                              work / "train_fov.json", work / "qc" / "metrics.json", work / "r.html",
                              work / "p.json", sample="s")


def test_inference_refuses_a_batch_of_no_tiles():
    with pytest.raises(ConfigError, match="infer.batch_size must be >= 1, got 0"):
        from_dict(Settings, {"infer": {"batch_size": 0}})


@pytest.mark.parametrize("argv, expected", [
    (["train", "n.ome.zarr", "f.json", "-o", "m", "--threads", "0"], "--threads: must be >= 1, got 0"),
    (["qc", "n", "r", "m", "f", "-o", "q.json", "--threads", "-3"], "must be >= 1, got -3"),
    (["infer", "n", "m", "-o", "o.ome.zarr", "--threads", "two"], "'two' is not an integer"),
])
def test_a_thread_count_below_one_is_a_usage_error(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["summary", "RES", "--samples", "a", "-o", "RES/s.tsv", "--html", "RES/s.html", "--modes", "[1]"],
     "--modes must be a JSON object, not a list"),
    (["summary", "RES", "--samples", "a", "-o", "RES/s.tsv", "--html", "RES/s.html", "--modes", "{a"],
     "--modes is not valid JSON"),
    (["report", "n", "r", "m", "f", "q", "-o", "RES/r.html", "--provenance",
      "RES/p.json", "--config", "7"], "--config must be a JSON object, not a int"),
    (["qc", "n", "r", "m", "f", "-o", "RES"], "-o/--output RES is a directory"),
    (["infer", "n", "m", "-o", "RES/o.ome.zarr", "--done", "RES"], "--done RES is a directory"),
])
def test_command_line_values_of_the_wrong_kind_get_one_line_and_write_nothing(argv, expected, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RES").mkdir()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and expected in err and "Traceback" not in err
    assert list((tmp_path / "RES").iterdir()) == []


def test_qc_refuses_a_restored_volume_another_model_made(work, sample):
    """Same grid, other weights: the model was retrained after inference (here: its record
    changed), so the restored volume's metrics would be filed under a model that did not
    make it."""
    _qc(work)  # as inference left it: scored
    _edit_model(work, best_step=12345)
    with pytest.raises(InputError, match="was restored by another model than .*model.*rerun the infer stage"):
        _qc(work)


def test_qc_refuses_a_restored_volume_of_another_acquisition(work):
    import zarr

    attrs = zarr.open_group(work / "out.ome.zarr", mode="r+").attrs
    record = attrs["selfres"]
    record["fingerprint"]["input"]["source_checksum"] = "0" * 64
    attrs["selfres"] = record
    with pytest.raises(InputError, match="restored from another acquisition than this normalised volume's"):
        _qc(work)


def test_train_refuses_a_training_fov_too_small_for_its_training_pairs(work):
    d = _fov(work)
    (work / "train_fov.json").write_text(_edited(d, train=[[0, 8], [0, 3], [0, 64]]))
    with pytest.raises(InputError, match=r"train_fov.json: the training FOV \(\(0, 8\), \(0, 3\), \(0, 64\)\) has 3 "
                                         r"voxels along y; scale 2 along y needs at least"):
        _train(work)


def test_restore_refuses_a_model_from_that_is_no_model_and_a_keep_that_is_a_file(tmp_path, capsys):
    """Both before any stage runs; the message must not advise deleting the user's folder to
    retrain, as a damaged model's does."""
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", (blob_volume((8, 32, 32)) * 1000).astype(np.uint16))
    (tmp_path / "notes").mkdir()
    (tmp_path / "kf").write_text("x")
    common = [str(tmp_path / "in.tif"), "-o", str(tmp_path / "o.ome.zarr"), "--voxel-size", "1,0.2,0.2"]
    assert cli.main(["restore", *common, "--model-from", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err
    assert "notes: is not a selfres model folder (no model.json)" in err and "delete" not in err
    assert cli.main(["restore", *common, "--keep", str(tmp_path / "kf")]) == 2
    assert "--keep" in capsys.readouterr().err and (tmp_path / "kf").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "kf", "notes"]


@pytest.fixture
def other(work, tmp_path) -> Path:
    """Another acquisition of the same shape and voxel size, normalised, with its own crop."""
    import tifffile

    tifffile.imwrite(tmp_path / "other.tif", (blob_volume((8, 64, 64), n=120, seed=9) * 1000).astype(np.uint16))
    pipeline.stage_normalise(tmp_path / "other.tif", tmp_path / "other.ome.zarr", sample="o",
                             voxel_size=(1.0, 0.2, 0.2))
    pipeline.stage_crop(tmp_path / "other.ome.zarr", tmp_path / "other_fov.json", sample="o", scale=(1, 2, 2))
    return tmp_path / "other.ome.zarr"


def test_another_acquisitions_model_or_training_fov_is_refused_until_adopted(work, other, tmp_path):
    """A model's guard, held-out figures and noise are its training volume's: ``infer``/``qc``/
    ``report`` with another acquisition's model (same grid) ran and filed them under this
    sample, and ``train`` trained on another sample's split. Both are refused; ``adopt``, which
    judges the model on this volume, makes one this volume's stages take."""
    trained_on = rf"was trained on another acquisition \(file checksum [0-9a-f]{{12}}…, sample 'in'\) than {other}"
    with pytest.raises(InputError, match=trained_on + r".*selfres adopt"):
        pipeline.stage_infer(other, work / "model", tmp_path / "o.ome.zarr", sample="o", device="cpu")
    assert not (tmp_path / "o.ome.zarr").exists()
    with pytest.raises(InputError, match=trained_on):
        qc.stage_qc(other, work / "out.ome.zarr", work / "model", tmp_path / "other_fov.json",
                          tmp_path / "m.json", sample="o", settings=from_dict(Settings, FAST).qc)
    with pytest.raises(InputError, match=trained_on):
        pipeline.stage_report(other, work / "out.ome.zarr", work / "model", tmp_path / "other_fov.json",
                              work / "qc" / "metrics.json", tmp_path / "r.html", tmp_path / "p.json", sample="o")
    with pytest.raises(InputError, match=r"train_fov.json: was made for another acquisition \(file checksum .*, sample "
                                         r"'in'\) than the normalised volume's \(file checksum .*\): give this "
                                         r"sample's own train_fov.json, or write one with the crop stage") as refused:
        pipeline.stage_train(other, work / "train_fov.json", tmp_path / "m2", sample="o", scale=(1, 2, 2),
                             settings=from_dict(Settings, FAST), device="cpu")
    assert "delete" not in str(refused.value)  # another sample's valid file, most likely given by mistake
    # adopted: judged on this volume, recorded as this volume's
    meta = pipeline.stage_adopt(other, tmp_path / "other_fov.json", work / "model", tmp_path / "adopted",
                                sample="o", scale=(1, 2, 2), settings=from_dict(Settings, FAST), device="cpu")
    assert meta["acquisition"] == pipeline.normalise.acquisition_of(pipeline.io.read_ome_zarr(other, lazy=True).attrs)
    assert meta["acquisition"] != json.loads((work / "model" / "model.json").read_text())["metadata"]["acquisition"]
    pipeline.stage_infer(other, tmp_path / "adopted", tmp_path / "o.ome.zarr", sample="o", device="cpu")
    # ... and refused, in its own words, beside the volume whose sample trained it
    with pytest.raises(InputError, match=r"model.json: was judged \(adopted from sample 'in'\) on another acquisition "
                                         r"\(file checksum .*, sample 'o'\) than .*normalized.ome.zarr"):
        pipeline.stage_infer(work / "normalized.ome.zarr", tmp_path / "adopted", tmp_path / "x.ome.zarr", sample="s",
                             device="cpu")
    # its own acquisition's model is taken, as is a model that records none (written before the record)
    pipeline.stage_infer(work / "normalized.ome.zarr", work / "model", tmp_path / "own.ome.zarr", sample="s",
                         device="cpu")
    from ..conftest import forget_training_acquisition

    forget_training_acquisition(work / "model")
    pipeline.stage_infer(other, work / "model", tmp_path / "old.ome.zarr", sample="o", device="cpu")


def test_one_channel_of_a_file_is_another_acquisition_than_the_next(tmp_path):
    from selfres.normalise import acquisition_of, acquisition_text

    c0 = {"source_checksum": "ab" * 32, "channel": 0}
    assert acquisition_of(c0) != acquisition_of(c0 | {"channel": 1})
    assert acquisition_of(c0) == acquisition_of(c0 | {"sample": "renamed"})  # what the file and part are
    assert acquisition_of({"sample": "s"}) is None  # a store written before the checksum was kept
    assert acquisition_text(acquisition_of(c0 | {"timepoint": 3})) == "file checksum abababababab…, channel 0, timepoint 3"


def test_report_refuses_metrics_of_another_model_or_restored_volume(work):
    """A stale ``metrics.json`` (an earlier run's, or another sample's) beside this model and
    output made the report state its verdict, "holds the tricubic interpolation", of an output
    that holds the network's."""
    import zarr

    def report(metrics):
        pipeline.stage_report(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model",
                              work / "train_fov.json", metrics, work / "r.html", work / "p.json", sample="s")

    m = _qc(work)
    assert set(m["computed_from"]) == {"model_json", "restored"} and all(m["computed_from"].values())
    report(work / "qc" / "m2.json")  # its own: taken
    assert (work / "r.html").exists()
    (work / "r.html").unlink()
    other_model = m | {"computed_from": m["computed_from"] | {"model_json": "0" * 64}}
    (work / "qc" / "m3.json").write_text(json.dumps(other_model))
    with pytest.raises(InputError, match=r"m3.json: was computed for another model than .*model.*rerun the qc stage"):
        report(work / "qc" / "m3.json")
    # the restored volume made again with other settings (same model and input): its record differs
    attrs = zarr.open_group(work / "out.ome.zarr", mode="r+").attrs
    record = attrs["selfres"]
    record["fingerprint"]["tile_size"] = [4, 4, 4]
    attrs["selfres"] = record
    with pytest.raises(InputError, match=r"m2.json: was computed from another restored volume than .*out.ome.zarr"):
        report(work / "qc" / "m2.json")
    assert not (work / "r.html").exists()
    # a metrics file written before the record was kept: taken as it is
    (work / "qc" / "m4.json").write_text(json.dumps({k: v for k, v in m.items() if k != "computed_from"}))
    report(work / "qc" / "m4.json")


@pytest.mark.parametrize("swap", ["restored_for_normalised", "model_for_normalised", "store_for_model",
                                  "file_for_model"])
def test_stage_arguments_in_the_wrong_order_are_named_as_such(work, swap, capsys):
    """``selfres infer restored.ome.zarr model`` read the raw-unit output as normalised and wrote
    values ~1e9; ``selfres infer model normalized.ome.zarr`` advised deleting the normalised
    volume "to retrain it"."""
    out = work / "new.ome.zarr"
    normalized, model = {
        "restored_for_normalised": (work / "out.ome.zarr", work / "model"),
        "model_for_normalised": (work / "model", work / "normalized.ome.zarr"),
        "store_for_model": (work / "normalized.ome.zarr", work / "out.ome.zarr"),
        "file_for_model": (work / "normalized.ome.zarr", work / "train_fov.json"),
    }[swap]
    assert cli.main(["infer", str(normalized), str(model), "-o", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("ERROR: ") == 1 and "Traceback" not in err and "delete" not in err, err
    assert "arguments in the wrong order?" in err, err
    expected = {"restored_for_normalised": "out.ome.zarr: is a restored volume (content: model), not a normalised "
                                           "store",
                "model_for_normalised": "normalized.ome.zarr: is a Zarr store, not a model folder",  # read first
                "store_for_model": "is a Zarr store, not a model folder",
                "file_for_model": "train_fov.json: is a file, not a model folder"}[swap]
    assert expected in err, err
    assert not out.exists()
    assert (work / "normalized.ome.zarr").exists() and (work / "train_fov.json").exists()


def test_qc_after_an_unfinished_inference_says_to_rerun_it(work, tmp_path):
    (work / ".o.ome.zarr.partial").mkdir()
    with pytest.raises(InputError, match=r"o.ome.zarr: does not exist: its inference did not finish \(its partial "
                                         r"store .*\.o\.ome\.zarr\.partial is there\); rerun the infer stage"):
        qc.stage_qc(work / "normalized.ome.zarr", work / "o.ome.zarr", work / "model", work / "train_fov.json",
                          tmp_path / "m.json", sample="s")


def test_a_stage_run_without_sample_takes_the_id_its_normalised_store_records(work, capsys):
    (work / "train_fov.json").write_text("{")
    assert cli.main(["train", str(work / "normalized.ome.zarr"), str(work / "train_fov.json"), "-o",
                     str(work / "m9")]) == 2
    assert capsys.readouterr().err.startswith("ERROR: sample 'in': ")  # restore named it after in.tif


@pytest.mark.parametrize("argv", [["normalise", "IN", "-o", "{f}/n.ome.zarr"], ["demo", "{f}/demo"], ["demo", "{f}"],
                                  ["restore", "IN", "-o", "x.ome.zarr", "--keep", "{f}/kw"]])
def test_an_output_under_a_file_is_one_line_not_a_traceback(argv, tmp_path, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", (blob_volume((8, 32, 32)) * 1000).astype(np.uint16))
    (tmp_path / "afile").write_text("notes")
    f = str(tmp_path / "afile")
    argv = [a.replace("{f}", f).replace("IN", str(tmp_path / "in.tif")) for a in argv]
    assert cli.main(argv) == 5
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().endswith(f"{f} is a file, not a folder; choose another output path")
    assert (tmp_path / "afile").read_text() == "notes"


def test_a_read_only_output_with_little_room_is_said_to_be_read_only(tmp_path, capsys, monkeypatch):
    """A small read-only file system also has next to no free space: the error's own errno
    (EROFS) decides, not the free-space guess."""
    import errno

    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", (blob_volume((8, 32, 32)) * 1000).astype(np.uint16))
    monkeypatch.setattr(cli, "_free_bytes", lambda target: 1000)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / ".n.ome.zarr.lock"))

    monkeypatch.setattr(pipeline, "stage_normalise", read_only)
    assert cli.main(["normalise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "ro" / "n.ome.zarr")]) == 5
    assert "(it is on a read-only file system)" in capsys.readouterr().err


def test_a_scale_given_in_isotropic_mode_is_said_to_be_unused(work, caplog):
    with caplog.at_level("WARNING", logger="selfres"):
        cli.main(["crop", str(work / "normalized.ome.zarr"), "-o", str(work / "f2.json"), "--mode", "isotropic",
                  "--scale", "2,2,2"])
    assert "--scale 2,2,2 is not used in isotropic mode" in caplog.text


def test_report_figures_under_a_file_is_one_line_not_a_traceback(work, capsys):
    (work / "notes.txt").write_text("notes")
    assert cli.main(["report", *(str(work / n) for n in ("normalized.ome.zarr", "out.ome.zarr", "model",
                                                          "train_fov.json", "qc/metrics.json")),
                     "-o", str(work / "r.html"), "--provenance", str(work / "p.json"),
                     "--figures", str(work / "notes.txt" / "figs")]) == 5
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().endswith("notes.txt is a file, not a folder; choose another "
                                                           "output path")


def test_the_report_of_a_fall_back_reads_its_interpolation_from_the_output_not_computes_it_again(work, monkeypatch):
    """The guard's fall-back writes tricubic into the output: the report's projections computed
    it a second time over the whole field (half of a reviewer's 3-minute report)."""
    import zarr

    seen = {}
    real = figures.sample_figures

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(figures, "sample_figures", spy)
    args = (work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model", work / "train_fov.json",
            work / "qc" / "metrics.json", work / "r.html", work / "p.json")
    content = zarr.open_group(str(work / "out.ome.zarr"), mode="r").attrs["selfres"]["content"]
    pipeline.stage_report(*args, sample="s")
    assert isinstance(seen["interp"], figures.VolumeView) is (content != "interpolation")
    g = zarr.open_group(str(work / "out.ome.zarr"), mode="r+")  # the same store, said to be the interpolation
    g.attrs["selfres"] = {**g.attrs["selfres"], "content": "interpolation" if content == "model" else "model"}
    monkeypatch.setattr(pipeline, "check_restored_origin", lambda *a, **k: None)  # its record's hash: not tested here
    monkeypatch.setattr(pipeline, "check_metrics_origin", lambda *a, **k: None)
    seen.clear()
    pipeline.stage_report(*args, sample="s")
    assert isinstance(seen["interp"], figures.VolumeView) is (content == "interpolation")


def _report_curves(work: Path, monkeypatch, **metrics) -> set[str]:
    """The labels of the lines stage_report draws, with ``metrics`` written into metrics.json."""
    drawn = captured_figures(monkeypatch)
    p = work / "qc" / "metrics.json"
    p.write_text(json.dumps(json.loads(p.read_text()) | metrics))
    pipeline.stage_report(work / "normalized.ome.zarr", work / "out.ome.zarr", work / "model", work / "train_fov.json",
                          p, work / "r.html", work / "p.json", sample="s")
    return {line.get_label() for fig in drawn for ax in fig.axes for line in ax.get_lines()}


@pytest.mark.parametrize("content", ["interpolation", "model"])
def test_the_report_stage_labels_a_fallen_back_outputs_curves_as_the_interpolation(work, monkeypatch, content):
    """The report stage draws its own figures: a fall-back's restored profile and spectrum lay
    under the interpolation's, called "restored" and "output", unseen (metrics.json said the
    output held the interpolation)."""
    (work / "qc" / "spectra.json").write_text(json.dumps({  # as qc writes them (log10 power)
        "input": [[0.1, 0.2], [0.0, -1.0]], "interpolation": [[0.1, 0.2, 0.4], [0.0, -1.0, -2.0]],
        "output": [[0.1, 0.2, 0.4], [0.0, -1.0, -2.0]]}))
    labels = _report_curves(work, monkeypatch, restored_content=content)
    fell = content == "interpolation"
    assert ("restored (= interpolation)" in labels) is fell and ("restored" in labels) is not fell, labels
    assert ("output (= interpolation)" in labels) is fell and ("output" in labels) is not fell, labels


def test_the_report_stage_draws_the_guards_margin_from_metrics(work, monkeypatch):
    """The report stage's training curves showed no guard margin: a held-out gain of +0.1 dB
    above 0 fell back with nothing on the figure saying the guard asks 0.2 dB."""
    assert (work / "model" / "training_log.tsv").exists()
    assert "guard margin 0.2 dB" in _report_curves(work, monkeypatch, guard_margin_db=0.2)


_ORIGINAL = (qc.load_trained, qc.read_restored, qc.read_normalized)


def _stage_qc(d: Path, monkeypatch, tmp_path, *, meta=None, attrs=None, reference=None, scores=(31.0, 30.0),
              source_dtype=None, input_attrs=None) -> dict:
    """QC of the restored sample with the model's metadata and the restored store's attributes
    changed (``meta``, ``attrs``, and its ``source_dtype``: the type it was written in), the
    normalised input's attributes changed (``input_attrs``), its held-out scoring stubbed
    (``scores``: the model's PSNR and tricubic's; by default the model above it). The flags
    stage_qc decides itself need no model of their own (a mutation review of qc.py: each of the
    tests below could change and fail no unit test)."""
    load_trained, read_restored, read_normalized = _ORIGINAL  # not an earlier call's wrappers

    def read_input(*a, **k):
        vol, params = read_normalized(*a, **k)
        vol.attrs.update(input_attrs or {})
        return vol, params

    def loaded(*a, **k):
        model, spec, m = load_trained(*a, **k)
        return model, spec, m | (meta or {})

    def read(*a, **k):
        vol = read_restored(*a, **k)
        vol.attrs.update(attrs or {})
        vol.source_dtype = np.dtype(source_dtype or vol.source_dtype)
        return vol

    monkeypatch.setattr(qc, "load_trained", loaded)
    monkeypatch.setattr(qc, "read_restored", read)
    monkeypatch.setattr(qc, "read_normalized", read_input)
    monkeypatch.setattr(qc, "self_validation", lambda *a, **k: {
        "psnr_model": scores[0], "psnr_interp": scores[1], "ssim_model": None, "ssim_interp": None,
        "gain_db_interval": None, "dead_output": False, "inference_extras": None, "psf_sigma_um": None})
    return qc.stage_qc(d / "work" / "normalized.ome.zarr", d / "out.ome.zarr", d / "work" / "model",
                       d / "work" / "train_fov.json", tmp_path / "qc" / "metrics.json", sample="s",
                       reference=reference, settings=from_dict(Settings, FAST).qc)


def test_qc_flags_a_gpu_job_that_computed_on_the_cpu_but_not_a_cpu_asked_for(sample, monkeypatch, tmp_path):
    """``gpu_unused``: a job given a GPU (CUDA_VISIBLE_DEVICES set) whose training or inference
    ran on the CPU, unless the CPU was asked for by name."""
    given = {"device": "cpu", "cuda_visible_devices": "0"}
    auto, unnamed = given | {"requested": "auto"}, given | {"requested": None}
    assert "gpu_unused" in _stage_qc(sample, monkeypatch, tmp_path, meta={"ran_on": auto})["flags"]
    assert "gpu_unused" in _stage_qc(sample, monkeypatch, tmp_path, attrs={"ran_on": unnamed})["flags"]  # inference
    assert "gpu_unused" not in _stage_qc(sample, monkeypatch, tmp_path,
                                         meta={"ran_on": given | {"requested": "cpu"}})["flags"]


def test_qc_flags_an_adopted_model_whose_own_sample_was_mostly_noise(sample, monkeypatch, tmp_path):
    """``model_trained_on_noise``: only for a model adopted from another sample whose input was
    mostly noise; a sample's own model is not flagged for its own input (``input_mostly_noise`` says it)."""
    noise = {"training_input": {"structure_share": 0.01, "plane_correlation": 0.0}}
    adopted = _stage_qc(sample, monkeypatch, tmp_path, meta=noise | {"adopted_from": {"sample": "a"}})
    assert "model_trained_on_noise" in adopted["flags"] and adopted["adopted_from"] == "a"
    assert "model_trained_on_noise" not in _stage_qc(sample, monkeypatch, tmp_path, meta=noise)["flags"]


def test_qc_scores_against_a_reference_and_flags_a_model_output_below_tricubic_on_it(sample, monkeypatch, tmp_path):
    """A reference equal to the input's tricubic interpolation: the interpolation (on the output
    grid) outranks the output on it, ``worse_than_interpolation_on_reference`` — for a model's
    output only, an interpolated output is no model's claim. The flag follows the PSNR, whatever
    the SSIM says, and each figure is filed under its own name."""
    import tifffile

    from selfres import metrics, normalise
    from selfres.degrade import upscale_cubic

    vol, params = pipeline.read_normalized(sample / "work" / "normalized.ome.zarr")
    tricubic = normalise.undo(np.asarray(upscale_cubic(np.asarray(vol.data), (1, 2, 2))), params)
    tifffile.imwrite(tmp_path / "tricubic.tif", tricubic.astype(np.float32))
    m = _stage_qc(sample, monkeypatch, tmp_path, reference=tmp_path / "tricubic.tif")
    assert m["reference"]["psnr_interp"] > m["reference"]["psnr"] + 3
    assert "worse_than_interpolation_on_reference" in m["flags"]
    m = _stage_qc(sample, monkeypatch, tmp_path, reference=tmp_path / "tricubic.tif",
                  attrs={"content": "interpolation"})
    assert "worse_than_interpolation_on_reference" not in m["flags"]
    for psnr, ssim, flagged in (((30.0, 31.0), (0.9, 0.8), True), ((31.0, 30.0), (0.8, 0.9), False)):
        monkeypatch.setattr(metrics, "compare_to_reference", lambda *a, p=psnr, s=ssim, **k: {
            "psnr_model": p[0], "ssim_model": s[0], "psnr_interp": p[1], "ssim_interp": s[1]})
        m = _stage_qc(sample, monkeypatch, tmp_path, reference=tmp_path / "tricubic.tif")
        assert m["reference"] == {"psnr": psnr[0], "ssim": ssim[0], "psnr_interp": psnr[1], "ssim_interp": ssim[1]}
        assert ("worse_than_interpolation_on_reference" in m["flags"]) is flagged


def test_qc_flags_an_integer_outputs_level_shift_beyond_half_its_step(sample, monkeypatch, tmp_path):
    """``restored_level_shifted`` of an integer output: the allowance is half a step of its type
    in normalised units (0.5 / span: under 0.001 here for uint16), not half the normalised range."""
    from selfres import metrics

    agreement = metrics.restored_agreement

    def shifted(*a, **k):
        return agreement(*a, **k) | {"level": {"input_mean": 0.20, "output_mean": 0.30, "ratio": 1.5}}

    monkeypatch.setattr(metrics, "restored_agreement", shifted)
    assert "restored_level_shifted" in _stage_qc(sample, monkeypatch, tmp_path, source_dtype="uint16")["flags"]


def test_qc_flags_a_model_that_only_ties_tricubic_on_the_held_out_region(sample, monkeypatch, tmp_path):
    """``model_worse_than_interpolation`` means not above tricubic: a tie is flagged too."""
    assert "model_worse_than_interpolation" in _stage_qc(sample, monkeypatch, tmp_path, scores=(30.0, 30.0))["flags"]
    assert "model_worse_than_interpolation" not in _stage_qc(sample, monkeypatch, tmp_path)["flags"]


def test_qc_flags_a_saturated_input_and_a_sheets_voxel_size_unlike_the_files(sample, monkeypatch, tmp_path):
    """What normalise recorded of the input reaches the flags: its saturated share
    (``saturated_input``) and the voxel size the file gave where the sheet gave one 10× its own
    (``voxel_size_unlike_file``: µm typed as a tenth)."""
    m = _stage_qc(sample, monkeypatch, tmp_path, input_attrs={
        "saturated_fraction": 0.01, "voxel_size_source": "sheet", "voxel_size_file": [1.0, 2.0, 2.0]})
    assert {"saturated_input", "voxel_size_unlike_file"} <= set(m["flags"]) and m["voxel_size_file"] == [1.0, 2.0, 2.0]
    assert not {"saturated_input", "voxel_size_unlike_file"} & set(_stage_qc(sample, monkeypatch, tmp_path)["flags"])


def test_metrics_json_carries_the_models_own_account_of_its_training(sample, monkeypatch, tmp_path):
    """What the report states of the training comes through QC: the coarse-scale test failed,
    the later of a serial ×4's two kept steps (0: nothing learned), why training stopped."""
    m = _stage_qc(sample, monkeypatch, tmp_path, meta={
        "coarse_scale_failed": True, "best_step": 0, "serial": {"stage_best_steps": [40, 0]},
        "stop_reason": "time budget"})
    assert m["coarse_scale_failed"] is True and m["best_step"] == 40 and m["stage_best_steps"] == [40, 0]
    assert m["stop_reason"] == "time budget"


def test_qc_measures_undershoot_below_the_acquisitions_darkest_voxel_not_the_windows(sample, monkeypatch, tmp_path):
    """The undershoot floor is the darkest voxel normalise recorded of the whole acquisition
    (``raw_range``), not that of QC's window: here recorded at half the normalised range, so
    most of the window's voxels (output and interpolation alike) lie below it."""
    _, params = pipeline.read_normalized(sample / "work" / "normalized.ome.zarr")
    m = _stage_qc(sample, monkeypatch, tmp_path, input_attrs={"raw_range": [params.low + 0.5 * params.span, 1e9]})
    under = m["restored_check"]["undershoot"]
    assert under["output"] > 0.3 and under["interpolation"] > 0.3, under
