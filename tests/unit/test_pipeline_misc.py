"""Small pipeline helpers."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from selfres import codeinfo, io, pipeline, provenance, qc


def test_git_commit_names_the_checkout_a_path_lies_in_and_none_outside_one(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    repo = tmp_path / "repo"
    (repo / "Snakefile").write_text("rule all:\n")
    subprocess.run(["git", "-C", str(repo), "add", "Snakefile"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert codeinfo.git_commit(repo) == head and codeinfo.git_dirty(repo) is False
    (repo / "Snakefile").write_text("rule all:\n    input: []\n")
    assert codeinfo.git_dirty(repo) is True
    # a checkout's own configuration runs no command (git status would start its fsmonitor)
    marker = tmp_path / "fsmonitor-ran"
    subprocess.run(["git", "-C", str(repo), "config", "core.fsmonitor", f"touch {marker}"], check=True)
    assert codeinfo.git_dirty(repo) is True and not marker.exists()
    if os.geteuid() == 0:  # a checkout another user owns (an install in /opt run by a service account)
        os.chown(repo, 12345, 12345)
        assert codeinfo.git_commit(repo) == head and codeinfo.git_dirty(repo) is True
        assert not marker.exists()
    outside = tmp_path / "plain"
    outside.mkdir()
    assert codeinfo.git_commit(outside) is None and codeinfo.git_dirty(outside) is None


def test_a_repository_that_is_not_selfres_s_is_never_asked(tmp_path, monkeypatch):
    """selfres installed in a virtual environment inside a lab's own repository recorded that
    repository's commit as selfres's, and ran git there with its ownership check overridden, so
    that repository's configuration (a clean filter) ran commands as the user running selfres."""
    lab = tmp_path / "lab"
    subprocess.run(["git", "init", "-q", str(lab)], check=True)
    (lab / "notes.txt").write_text("a\n")
    subprocess.run(["git", "-C", str(lab), "add", "notes.txt"], check=True)
    subprocess.run(["git", "-C", str(lab), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    marker = tmp_path / "filter-ran"
    subprocess.run(["git", "-C", str(lab), "config", "filter.x.clean", f"touch {marker}; cat"], check=True)
    (lab / ".gitattributes").write_text("*.txt filter=x\n")
    (lab / "notes.txt").write_text("b\n")
    installed = lab / ".venv" / "lib" / "site-packages" / "selfres"
    installed.mkdir(parents=True)
    monkeypatch.setattr(codeinfo, "PACKAGE_DIR", installed)
    assert codeinfo.git_commit() is None and codeinfo.git_dirty() is None
    assert codeinfo.git_commit(lab) is None and codeinfo.git_dirty(lab) is None  # a workflow folder: no Snakefile
    assert not marker.exists()
    # an editable install from a checkout: that checkout's commit
    (lab / "src" / "selfres").mkdir(parents=True)
    monkeypatch.setattr(codeinfo, "PACKAGE_DIR", (lab / "src" / "selfres").resolve())
    head = subprocess.run(["git", "-C", str(lab), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert codeinfo.git_commit() == head


@pytest.mark.parametrize("meta, mode", [({"factors": [2, 2, 2]}, "enhance"), ({"factors": [1, 2, 2]}, "enhance"),
                                        ({"factors": [4, 4, 4]}, "enhance"), ({"factor": 2.5}, "isotropic"),
                                        ({"factor": 3.0}, "isotropic")])
def test_interpolation_in_blocks_equals_the_whole_volume_interpolation(meta, mode):
    """Block by block from a lazy input (as QC against a reference reads it), the baseline
    is the whole volume's tricubic / z-cubic, borders included."""
    import dask.array as da

    from selfres.metrics import block_slices

    raw = np.random.default_rng(0).random((7, 13, 11)).astype(np.float32)
    whole = qc.interpolation_of(raw, meta, mode)
    block, whole_axes = qc.interpolation_blocks(da.from_array(raw, chunks=4), meta, mode)
    assert whole_axes == ((0,) if meta.get("factor") == 2.5 else ())
    blocks = block_slices(whole.shape, 300, whole_axes=whole_axes)
    assert len(blocks) > 4
    for sl in blocks:
        np.testing.assert_allclose(block(sl), whole[sl], atol=1e-6)


def _trained_sample(tmp_path, degradation: dict):
    """A tiny enhance sample normalised, cropped and trained (noisy blobs, ×2 laterally)."""
    import tifffile

    from selfres.settings import FovSettings, Settings, TrainSettings, from_dict

    from ..conftest import blob_volume

    rng = np.random.default_rng(3)
    vol = blob_volume((8, 64, 64), n=120, sigma=(1.0, 1.5, 1.5), seed=4)
    vol = (rng.poisson(vol * 200) / 200.0 * 1000).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", vol)
    s = Settings(train=from_dict(TrainSettings, {"steps": 2, "width": 4, "depth": 1, "batch_size": 1,
                                                 "patch_size": [4, 16, 16], "validate_every": 1, "warmup_steps": 1,
                                                 "degradation": degradation}))
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s", voxel_size=(1.0, 0.2, 0.2))
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 2, 2),
                        settings=FovSettings(min_holdout_voxels=256))
    pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 2, 2), settings=s,
                         device="cpu")
    return norm


def test_inference_without_extras_does_not_need_the_training_degradation(tmp_path):
    """With back-projection off (and no ensemble) nothing wraps the network, so a measured PSF
    the model was trained with need not be found again (the report suggests exactly this setting)."""
    import tifffile

    from selfres.settings import InferSettings

    g = np.exp(-0.5 * (np.arange(-2, 3) / 0.8) ** 2)
    tifffile.imwrite(tmp_path / "psf.tif", np.einsum("i,j,k->ijk", g, g, g).astype(np.float32))
    norm = _trained_sample(tmp_path, {"method": "psf", "psf_path": str(tmp_path / "psf.tif")})
    (tmp_path / "psf.tif").unlink()
    info = pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", device="cpu",
                                settings=InferSettings(back_projection_iterations=0))
    assert info["tiles"] >= 1 and (tmp_path / "out.ome.zarr").exists()


def _hot_pixel_sample(tmp_path, shape, *, n):
    """A noisy blob acquisition with 12 hot pixels (the same in every plane), normalised and
    cropped for ×2 laterally: (raw, hot ys, hot xs, tiny training settings, normalised store)."""
    import tifffile

    from selfres.settings import FovSettings, Settings, TrainSettings, from_dict

    from ..conftest import blob_volume

    rng = np.random.default_rng(3)
    raw = blob_volume(shape, n=n, sigma=(1.0, 1.5, 1.5), seed=4)
    raw = (rng.poisson(raw * 200) / 200.0 * 1000).astype(np.float32)
    ys, xs = rng.integers(4, 60, (2, 12))
    raw[:, ys, xs] = rng.uniform(15000, 30000, 12)
    tifffile.imwrite(tmp_path / "in.tif", raw)
    s = Settings(train=from_dict(TrainSettings, {"steps": 2, "width": 4, "depth": 1, "batch_size": 1,
                                                 "patch_size": [4, 16, 16], "validate_every": 1, "warmup_steps": 1}))
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s", voxel_size=(1.0, 0.2, 0.2))
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 2, 2),
                        settings=FovSettings(min_holdout_voxels=256))
    return raw, ys, xs, s, norm


def test_enhance_repairs_hot_pixels_for_its_network_and_writes_them_as_acquired(tmp_path, caplog):
    """Hot pixels (the same in every plane) are repaired in the training FOV and the held-out
    region, and in the network's input at inference; their own output voxels are the
    acquisition's tricubic interpolation, and nothing around them rings or smears them. A model
    trained before the repair existed infers as it did."""
    import json

    import zarr

    from selfres.degrade import upscale_cubic
    from selfres.settings import InferSettings

    raw, ys, xs, s, norm = _hot_pixel_sample(tmp_path, (12, 64, 64), n=150)
    assert pipeline.read_normalized(norm)[1].high < 3000  # the hot pixels are not the intensity range's top
    meta = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 2, 2),
                                settings=s, device="cpu")
    assert meta["sensor_defects_repaired"] >= 1
    model_output = InferSettings(on_worse_than_interpolation="model")  # two steps: the network, whatever the guard
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", device="cpu",
                         settings=model_output)
    out = np.asarray(zarr.open(str(tmp_path / "out.ome.zarr"), mode="r")["0"])
    own = np.zeros((128, 128), bool)
    for y, x in zip(ys, xs):
        own[2 * y:2 * y + 2, 2 * x:2 * x + 2] = True
    beside = ndimage.binary_dilation(own, iterations=2) & ~own
    np.testing.assert_allclose(out[:, own], upscale_cubic(raw, (1, 2, 2))[:, own], rtol=2e-3, atol=2.0)
    assert out[:, beside].max() < 2500  # the scene's brightest is ~1000; a smeared 15000 would be ~3000 beside
    with caplog.at_level("INFO", logger="selfres"):
        m = qc.stage_qc(norm, tmp_path / "out.ome.zarr", tmp_path / "model", tmp_path / "fov.json",
                        tmp_path / "qc" / "metrics.json", sample="s")
    sv = m["self_validation"]  # the log's line of scores is the readable one, not the raw dict
    assert (f"metrics: held-out: model vs interpolation PSNR {sv['psnr_model']:.2f} vs {sv['psnr_interp']:.2f} dB"
            in caplog.text)
    assert m["sensor_defects"] == {"repaired": meta["sensor_defects_repaired"], "not_repaired": None}
    assert m["degradation_method"] == "cubic"  # named in the report's self-validation caption
    assert "sensor_defects_not_repaired" not in m["flags"]
    # a model trained before the repair: as it was (the hot pixels in the network's input)
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    del info["metadata"]["sensor_defects_repaired"]
    (tmp_path / "model" / "model.json").write_text(json.dumps(info))
    # ... whose inference stores are keyed as before (a partial store of an older selfres resumes)
    from selfres.infer import PartialStore

    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "old.ome.zarr", sample="s", device="cpu",
                         settings=model_output, step="prepare")
    assert "repair_sensor_defects" not in PartialStore(tmp_path / "old.ome.zarr").fingerprint()
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "old.ome.zarr", sample="s", device="cpu",
                         settings=model_output)
    old = np.asarray(zarr.open(str(tmp_path / "old.ome.zarr"), mode="r")["0"])
    assert old[:, beside].max() > 2500
    # ... and QC says so, with how many, and what to do (the report)
    m = qc.stage_qc(norm, tmp_path / "old.ome.zarr", tmp_path / "model", tmp_path / "fov.json",
                    tmp_path / "qc" / "metrics.json", sample="s")
    assert "sensor_defects_not_repaired" in m["flags"] and m["sensor_defects"]["not_repaired"] == 12


def test_only_the_workflow_drops_an_export_of_an_older_output(tmp_path):
    """``selfres infer --drop-stale-export`` (what the infer rules run) removes the OME-TIFF of
    the earlier ``restored.ome.zarr``; without it a file of that name is the user's (``selfres
    restore x.ome.tif -o x.ome.zarr``) and is never touched."""
    import json

    from selfres import cli

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    (tmp_path / "in.ome.tif").write_bytes(b"the user's acquisition")
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "in.ome.zarr", sample="s", device="cpu")
    assert (tmp_path / "in.ome.tif").read_bytes() == b"the user's acquisition"
    (tmp_path / "restored.ome.tif").write_bytes(b"exported from an earlier restored.ome.zarr")
    settings = json.dumps({"infer": {"back_projection_iterations": 0}})
    assert cli.main(["infer", str(norm), str(tmp_path / "model"), "-o", str(tmp_path / "restored.ome.zarr"),
                     "--device", "cpu", "--settings", settings, "--drop-stale-export"]) == 0
    assert not (tmp_path / "restored.ome.tif").exists() and (tmp_path / "in.ome.tif").exists()


def test_a_channels_new_restoration_drops_its_acquisitions_multichannel_export(tmp_path):
    """``export_acquisition`` writes ``results/cells.ome.tif`` from ``cells_c0``, ``cells_c1``…
    (``results/lapse.ome.tif`` from ``lapse_t0``… or ``lapse_c0_t0``…): once one channel or time
    point is restored anew that file shows the old one, and with ``export_tiff: false`` nothing
    would replace it."""
    res = tmp_path / "results"
    for folder in ("cells_c1", "lapse_c0_t3", "series_t2", "plain"):
        (res / folder).mkdir(parents=True)
    exports = ["cells.ome.tif", "cells_c1/restored.ome.tif", "lapse.ome.tif", "lapse_t3.ome.tif", "series.ome.tif",
               "plain.ome.tif", "other.ome.tif"]
    for name in exports:
        (res / name).write_bytes(b"an earlier export")
    pipeline.drop_stale_export(res / "cells_c1" / "restored.ome.zarr", part=(None, 1))
    pipeline.drop_stale_export(res / "lapse_c0_t3" / "restored.ome.zarr", part=(3, 0))  # channel 0 of time point 3
    pipeline.drop_stale_export(res / "series_t2" / "restored.ome.zarr", part=(2, None))  # time point 2
    pipeline.drop_stale_export(res / "plain" / "restored.ome.zarr")  # not a part: its own export only
    assert sorted(n for n in exports if (res / n).exists()) == ["lapse_t3.ome.tif", "other.ome.tif", "plain.ome.tif"]


def test_the_infer_rule_drops_an_acquisitions_export_only_for_the_part_it_restored(tmp_path):
    """Through ``selfres infer --drop-stale-export``: channel 1 of ``cells`` restored anew drops
    ``results/cells.ome.tif``; ``mouse_t2``, a whole file of its own, keeps ``results/mouse.ome.tif``."""
    import json

    import tifffile

    from selfres import cli

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    two = np.stack([tifffile.imread(tmp_path / "in.tif")] * 2, axis=1)  # Z C Y X
    tifffile.imwrite(tmp_path / "cells.tif", two, imagej=True, metadata={"axes": "ZCYX"})
    channel_1 = tmp_path / "n1.ome.zarr"
    pipeline.stage_normalise(tmp_path / "cells.tif", channel_1, sample="cells_c1", channel=1,
                             voxel_size=(1.0, 0.2, 0.2))
    res = tmp_path / "results"
    res.mkdir()
    for name in ("cells.ome.tif", "mouse.ome.tif"):
        (res / name).write_bytes(b"an earlier export")
    settings = json.dumps({"infer": {"back_projection_iterations": 0}})
    from ..conftest import forget_training_acquisition

    forget_training_acquisition(tmp_path / "model")  # one model for both volumes: this test is about the export
    for normalized, sample in ((channel_1, "cells_c1"), (norm, "mouse_t2")):
        assert cli.main(["infer", str(normalized), str(tmp_path / "model"), "-o",
                         str(res / sample / "restored.ome.zarr"), "--device", "cpu", "--settings", settings,
                         "--drop-stale-export"]) == 0
    assert not (res / "cells.ome.tif").exists() and (res / "mouse.ome.tif").exists()


def test_a_sample_merely_named_like_a_part_keeps_the_acquisitions_export(tmp_path):
    """``mouse_t2`` (tissue 2: a whole file of its own, no time point read) restored anew is not
    time point 2 of ``mouse``: the combined ``results/mouse.ome.tif`` of that acquisition's
    channels stays, as does a part's export when the id's number is not the part it read."""
    res = tmp_path / "results"
    for folder in ("mouse_t2", "cells_c1"):
        (res / folder).mkdir(parents=True)
    for name in ("mouse.ome.tif", "cells.ome.tif"):
        (res / name).write_bytes(b"an export of another sample's acquisition")
    pipeline.drop_stale_export(res / "mouse_t2" / "restored.ome.zarr", part=(None, None))
    pipeline.drop_stale_export(res / "cells_c1" / "restored.ome.zarr", part=(None, 0))  # a row cells_c1 reading channel 0
    assert (res / "mouse.ome.tif").exists() and (res / "cells.ome.tif").exists()


def test_tiles_written_by_other_code_are_recomputed_and_outputs_name_their_code(tmp_path, monkeypatch, caplog):
    """A job killed before an update of selfres (or an edit of its source) does not mix tiles of
    two codes: the code is part of each tile's compute label, so the rerun (or a block job of a
    scattered run) recomputes the other code's tiles instead of refusing the store. The
    restored store and the model say which code made them."""
    import json

    from selfres import codeinfo
    from selfres.infer import PartialStore
    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    out = tmp_path / "restored.ome.zarr"
    two = InferSettings(blocks=2, tile_size=(8, 16, 16))
    pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="prepare")
    pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="block", block=0)
    before = set(PartialStore(out).computes().values())
    assert len(before) == 1 and next(iter(before)).endswith(f" code {codeinfo.source_digest()[:8]}")
    monkeypatch.setattr(codeinfo, "source_digest", lambda: "0123456789abcdef")
    with caplog.at_level("INFO", logger="selfres"):
        pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="block",
                             block=0)
    assert "were computed as" in caplog.text and "recomputing them" in caplog.text
    assert {c.split(" code ")[1] for c in PartialStore(out).computes().values()} == {"01234567"}
    pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="block", block=1)
    caplog.clear()
    with caplog.at_level("INFO", logger="selfres"):
        pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="gather")
    # the blocks computed every tile: the gather says what it did, not a rate of 0 tiles computed
    assert " tiles gathered and the store finished in " in caplog.text and "tiles computed" not in caplog.text
    attrs = pipeline.io.read_ome_zarr(out, lazy=True).attrs
    assert attrs["code"]["source_digest"] == "0123456789abcdef" and attrs["compute"][0].endswith("code 01234567")
    model_code = json.loads((tmp_path / "model" / "model.json").read_text())["selfres_code"]
    assert len(model_code["source_digest"]) == 16 and model_code["source_digest"] != "0123456789abcdef"
    assert model_code["git_commit"] == codeinfo.git_commit()
    import zarr

    group = zarr.open_group(str(out), mode="r")  # a viewer names the layer after the sample, not "restored"
    name = "s" + (" [tricubic]" if attrs["content"] == "interpolation" else "")  # the guard's fall-back says so
    assert group.attrs["multiscales"][0]["name"] == name and group.attrs["omero"]["channels"][0]["label"] == name
    # ... and the normalised copy after the sample too, said as such (a walkthrough: 'normalized' for every sample)
    assert zarr.open_group(str(norm), mode="r").attrs["multiscales"][0]["name"] == "s [normalised]"


def test_a_model_from_before_the_shrink_infers_without_a_false_retrain_warning(tmp_path, caplog):
    """model.json of an older selfres: no noise levels, extras without ``back_projection_shrink``.
    Its steps are plain whatever the setting says, which is what its guard scored."""
    import json

    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    path = tmp_path / "model" / "model.json"
    doc = json.loads(path.read_text())
    assert doc["metadata"]["correction_noise"]  # this one was measured ...
    for key in ("acquisition_noise", "correction_noise"):  # ... an older model has none
        doc["metadata"].pop(key)
    doc["metadata"]["inference_extras"].pop("back_projection_shrink")
    path.write_text(json.dumps(doc))
    outputs = []
    for shrink in (True, False):
        caplog.clear()
        with caplog.at_level("WARNING", logger="selfres"):
            pipeline.stage_infer(norm, tmp_path / "model", tmp_path / f"out{shrink}.ome.zarr", sample="s",
                                 device="cpu", settings=InferSettings(back_projection_shrink=shrink))
        assert "the guard scored the model with" not in caplog.text
        outputs.append(np.asarray(pipeline.io.read_ome_zarr(tmp_path / f"out{shrink}.ome.zarr").data))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres"):  # a real difference is still named
        pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out2.ome.zarr", sample="s", device="cpu",
                             settings=InferSettings(back_projection_iterations=2))
    assert "the guard scored the model with" in caplog.text


def test_a_2d_image_with_a_pixel_size_is_restored_and_measured_laterally_only(tmp_path):
    """A single plane with its pixel size: QC measures the lateral resolution and skips the
    axial figures (it used to stop on the axial spectrum, which needs two slices)."""
    import tifffile

    from selfres.settings import parse_settings

    from ..conftest import blob_volume

    plane = (blob_volume((1, 64, 64), n=40, sigma=(1.0, 1.5, 1.5), seed=5)[0] * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plane.tif", plane, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    settings = parse_settings({"train": {"steps": 2, "width": 4, "depth": 1, "batch_size": 1, "validate_every": 1,
                                         "warmup_steps": 1, "patch_size": [1, 16, 16]},
                               "fov": {"min_holdout_voxels": 256}})
    m = pipeline.restore(tmp_path / "plane.tif", tmp_path / "out.ome.zarr", scale=(1, 2, 2), settings=settings,
                         device="cpu", keep=tmp_path / "work")
    assert m["output_shape"] == [1, 128, 128]
    assert m["resolution_um"]["lateral_in"] is not None and m["resolution_um"]["axial_in"] is None
    assert not (tmp_path / "work" / "qc" / "spectra.json").exists() and (tmp_path / "work" / "report.html").exists()
    # train called alone with a z factor (crop, which refuses it, was skipped): one clear error
    from selfres.errors import InputError

    with pytest.raises(InputError, match=r"sample 's'.*2-D image.*give the sample scale 1,2,2"):
        pipeline.stage_train(tmp_path / "work" / "normalized.ome.zarr", tmp_path / "work" / "train_fov.json",
                             tmp_path / "m2", sample="s", scale=(2, 2, 2), settings=settings, device="cpu")


@pytest.mark.parametrize("meta, learned", [
    ({"best_step": 0}, False),
    ({"best_step": 150}, True),
    ({"best_step": 0, "serial": {"stage_best_steps": [0, 0]}}, False),  # both stages tricubic
    ({"best_step": 0, "serial": {"stage_best_steps": [75, 0]}}, True),  # stage 1 learned, stage 2 did not
    ({"best_step": 0, "serial": {"factors": [[2, 2, 2], [2, 2, 2]]}}, True),  # saved before steps were kept
])
def test_an_adopted_model_is_judged_as_learned_only_when_a_stage_learned(meta, learned):
    from selfres.adopt import model_was_learned

    assert model_was_learned(meta) is learned


def test_an_adopted_model_gaining_less_than_the_margin_is_flagged_without_extras():
    """With no inference extras the adopting sample's verdict is adopt_enhance's own: dropping
    the margin from it failed no test (a mutation review)."""
    from selfres import adopt
    from selfres.settings import InferSettings, TrainSettings
    from selfres.train import train_enhance
    from ..conftest import blob_volume

    vol = blob_volume((8, 48, 48), n=120, sigma=(1.0, 1.2, 1.2))
    trained = train_enhance(vol[:, :36], vol[:, 36:], factors=(1, 2, 2), settings=TrainSettings(
        steps=60, width=8, depth=1, batch_size=2, patch_size=(4, 16, 16), validate_every=5, warmup_steps=2,
        learning_rate=2e-3, patience=50))
    meta = {"sample": "src", "factors": [1, 2, 2], "best_step": trained.best_step, "flags": [], "settings": {}}
    no_extras = InferSettings(back_projection_iterations=0, ensemble=False)
    verdicts = {}
    for margin in (0.0, 30.0):
        out = adopt.adopt_enhance(trained.model, meta, vol[:, :36], vol[:, 36:], sample="b", voxel_size=None,
                                  guard_margin_db=margin, guard_confidence=0.95, infer_settings=no_extras,
                                  device="cpu")
        verdicts[margin] = "model_worse_than_interpolation" in out["flags"]
        assert out["settings"]["guard_margin_db"] == margin  # the adopter's margin, as the report quotes it
    assert verdicts == {0.0: False, 30.0: True}
    # a source whose kept checkpoint failed the coarse-scale check hands that verdict on (the same
    # mapping), with or without the extras: the margin alone would pass it here
    for extras in (no_extras, InferSettings()):
        out = adopt.adopt_enhance(trained.model, meta | {"coarse_scale_failed": True}, vol[:, :36], vol[:, 36:],
                                  sample="b", voxel_size=None, guard_margin_db=0.0, guard_confidence=0.95,
                                  infer_settings=extras, device="cpu")
        assert "model_worse_than_interpolation" in out["flags"]


@pytest.mark.parametrize("stage_steps, confidence_used", [([0, 0], 0.95), ([75, 0], 0.0)])
def test_adopting_a_serial_model_applies_the_guard_rule_of_what_it_learned(monkeypatch, stage_steps, confidence_used):
    """An untrained serial ×4 source (both stages kept step 0: tricubic ×2 twice, + the extras) is
    judged by the confidence rule, as train_serial's own guard would; a learned one by the margin."""
    from selfres import adopt, train
    from selfres.ensemble import Serial
    from selfres.models import ModelSpec, build_model
    from selfres.settings import InferSettings
    from ..conftest import blob_volume

    seen = []
    real = train.guard_passes

    def spy(*args, confidence, **kwargs):
        seen.append(confidence)
        return real(*args, confidence=confidence, **kwargs)

    monkeypatch.setattr(train, "guard_passes", spy)
    stage = ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=4, depth=1)
    model = Serial(build_model(stage), build_model(stage)).eval()  # untrained stages: tricubic ×2 each
    vol = blob_volume((16, 48, 48), n=30, sigma=(1.0, 1.5, 1.5), seed=3).astype(np.float32)
    source_flags = ["stopped_while_improving", "early_stopped", "saturated_input"]
    meta = {"sample": "src", "factors": [4, 4, 4], "best_step": 0, "flags": source_flags, "settings": {},
            "serial": {"stage2": "stage2", "factors": [[2, 2, 2], [2, 2, 2]], "stage_best_steps": stage_steps}}
    out = adopt.adopt_enhance(model, meta, vol[:, :, :32], vol[:, :, 32:], sample="b", voxel_size=None,
                              guard_margin_db=0.2, guard_confidence=0.95,
                              infer_settings=InferSettings(back_projection_iterations=1), device="cpu")
    assert seen == [confidence_used]
    assert out["sample"] == "b"
    # how the source's training went (with advice about its training time) stays the source's
    assert "saturated_input" in out["flags"]
    assert not {"stopped_while_improving", "early_stopped"} & set(out["flags"])
    assert out["adopted_from"]["flags"] == source_flags
    # adopted again from b's folder (selfres restore --model-from): the training is still src's
    again = adopt.adopt_enhance(model, out, vol[:, :, :32], vol[:, :, 32:], sample="c", voxel_size=None,
                                guard_margin_db=0.2, guard_confidence=0.95,
                                infer_settings=InferSettings(back_projection_iterations=1), device="cpu")
    assert again["adopted_from"]["sample"] == "src" and again["adopted_from"]["via"] == "b"
    assert again["adopted_from"]["flags"] == source_flags


def test_qc_beads_measures_the_same_noisy_beads_in_and_out(tmp_path):
    """`qc.beads`: the beads are found on the output (blurred by one voxel for the search, so
    its noise makes no spots of its own), mapped to the input, and fitted on both; a ×2
    lateral restoration of beads several voxels wide keeps their width in µm."""
    import pandas as pd
    import tifffile

    from selfres.demo import make_beads
    from selfres.settings import QcSettings, Settings, from_dict

    beads = make_beads(shape=(24, 96, 96), n_beads=12, sigma_px=(2.0, 1.5, 1.5), seed=2)
    noisy = beads / beads.max() + np.random.default_rng(0).normal(0, 0.05, beads.shape)
    src = tmp_path / "beads.tif"
    tifffile.imwrite(src, (np.clip(noisy + 0.1, 0, None) * 1000).astype(np.uint16))
    settings = from_dict(Settings, {"train": {"steps": 2, "validate_every": 1}, "qc": {"beads": True}})
    pipeline.restore(src, tmp_path / "out.ome.zarr", scale=(1, 2, 2), voxel_size=(0.4, 0.2, 0.2), device="cpu",
                     settings=settings, keep=tmp_path / "work")
    table = pd.read_csv(tmp_path / "work" / "qc" / "beads.tsv", sep="\t")
    inp, out = table[table.volume == "input"], table[table.volume == "output"]
    # the beads, not noise spots (12 placed, some too near a face or a neighbour; searched on
    # the output as it is, the noise left none isolated); the input is fitted where they are
    assert len(out) >= 5 and inp[["fwhm_y", "fwhm_x"]].notna().all(axis=None)
    for axis in ("y", "x"):
        w_in, w_out = inp[f"fwhm_{axis}_um"].median(), out[f"fwhm_{axis}_um"].median()
        assert w_in == pytest.approx(2.3548 * 1.5 * 0.2, rel=0.15)
        assert w_out == pytest.approx(w_in, rel=0.15)
    # qc rerun with beads and resolution off: the earlier tables go, so no report shows them
    assert (tmp_path / "work" / "qc" / "spectra.json").exists()
    work = tmp_path / "work"
    qc.stage_qc(work / "normalized.ome.zarr", tmp_path / "out.ome.zarr", work / "model", work / "train_fov.json",
                      work / "qc" / "metrics.json", sample="s", settings=QcSettings(beads=False, resolution=False))
    assert not (work / "qc" / "beads.tsv").exists() and not (work / "qc" / "spectra.json").exists()


def test_an_interpolated_isotropic_output_is_judged_by_its_input_not_by_its_reading():
    """The decorrelation estimate on a z-interpolated noisy stack reads interpolated noise as
    axial detail (0.23 in, 0.85 out for a z-cubic bead stack), so `isotropy_not_reached`
    never fired on an output the guard had replaced by z-cubic interpolation."""
    from selfres.qc import isotropy_flags

    assert isotropy_flags(0.23, 0.85, "interpolation") == ["isotropy_not_reached"]
    assert isotropy_flags(0.23, 0.85, "model") == []
    assert isotropy_flags(0.23, 0.6, "model") == ["isotropy_not_reached"]
    assert isotropy_flags(0.9, 0.9, "interpolation") == []  # an input already isotropic
    assert isotropy_flags(None, float("nan"), "model") == [] and isotropy_flags(None, 0.5, "interpolation") == []
    # axial finer than lateral (a 4-slice stack read 2.38): the estimate does not hold there
    assert isotropy_flags(None, 2.38, "model") == ["isotropy_implausible"]
    assert isotropy_flags(0.5, 1.2, "model") == []
    assert isotropy_flags(0.23, 1.4, "interpolation") == ["isotropy_not_reached"]  # judged by its input only


def _clean_check(**over):
    """:func:`qc.qc_flags`' figures of a good restoration, with ``over`` changed."""
    agreement = {"nonfinite_voxels": 0, "correlation_with_input": 0.98, "correlation_ceiling": 1.0,
                 "level": {"input_mean": 0.20, "output_mean": 0.201, "ratio": 1.005},
                 "undershoot": {"output": 0.0, "interpolation": 0.0}, "brightening": {"ratio": 1.05}}
    return agreement | over


def _flags(agreement=None, **kw):
    args = dict(mode="enhance", content="model", structure=0.9, planes_alike=0.8) | kw
    return qc.qc_flags(agreement or _clean_check(), **args)


def test_qc_flags_of_a_good_restoration_are_none_and_each_check_fires_on_its_own():
    """Each QC check on the restored volume and the input decides its flag at its threshold (a
    mutation review: the ceiling's scaling, the interpolation's share of undershoot, the
    plane-correlation exemption, the mode of ``restored_brighter``, the thresholds of
    brightening, undershoot and implausible isotropy, and saturation could all change unseen)."""
    assert _flags() == [] and _flags(mode="isotropic", isotropy_in=0.4, isotropy_out=0.9) == []
    # restored_unlike_input: 0.8 × the correlation the noise allows
    assert "restored_unlike_input" in _flags(_clean_check(correlation_with_input=0.79))
    low_light = _clean_check(correlation_with_input=0.70, correlation_ceiling=0.80)  # 0.70 ≥ 0.8 × 0.80
    assert _flags(low_light) == []
    assert "restored_unlike_input" in _flags(_clean_check(correlation_with_input=0.63, correlation_ceiling=0.80))
    assert "restored_unlike_input" in _flags(_clean_check(correlation_with_input=0.70, correlation_ceiling=None))
    # restored_undershoots: above 0.1 % of the window and above twice the interpolation's share
    assert "restored_undershoots" in _flags(_clean_check(undershoot={"output": 0.0015, "interpolation": 0.0}))
    assert _flags(_clean_check(undershoot={"output": 0.0009, "interpolation": 0.0})) == []
    assert _flags(_clean_check(undershoot={"output": 0.004, "interpolation": 0.003})) == []  # cubic rings too
    assert "restored_undershoots" in _flags(_clean_check(undershoot={"output": 0.007, "interpolation": 0.003}))
    # restored_brighter: isotropic mode only (enhance's sharpened beads may rightly be brighter), above 1.5
    assert _flags(_clean_check(brightening={"ratio": 1.6}), mode="isotropic") == ["restored_brighter"]
    assert _flags(_clean_check(brightening={"ratio": 1.45}), mode="isotropic") == []
    assert _flags(_clean_check(brightening={"ratio": 2.5})) == []
    # restored_overshoots: isotropic mode only, above 0.1 % of the window and twice the interpolation's share
    # (a real nuclei stack 0.57 % against z-cubic's 0.04 %; good restorations 0.002 % or less)
    assert _flags(_clean_check(overshoot={"output": 0.0057, "interpolation": 0.0004}), mode="isotropic") == \
        ["restored_overshoots"]
    assert _flags(_clean_check(overshoot={"output": 0.0009, "interpolation": 0.0}), mode="isotropic") == []
    assert _flags(_clean_check(overshoot={"output": 0.004, "interpolation": 0.003}), mode="isotropic") == []
    assert _flags(_clean_check(overshoot={"output": 0.0057, "interpolation": 0.0})) == []  # enhance: beads rise
    # restored_level_shifted: a fifth off and 2 % of the range (plus an integer dtype's half step)
    shifted = _clean_check(level={"input_mean": 0.20, "output_mean": 0.30, "ratio": 1.5})
    assert _flags(shifted) == ["restored_level_shifted"] and _flags(shifted, level_rounding=0.09) == []
    assert _flags(_clean_check(level={"input_mean": 0.05, "output_mean": 0.065, "ratio": 1.3})) == []  # < 2 %
    assert "restored_not_finite" in _flags(_clean_check(nonfinite_voxels=9))
    # input_mostly_noise: little structure, and nothing carrying over between planes
    assert _flags(structure=0.05, planes_alike=0.02) == ["input_mostly_noise"]
    assert _flags(structure=0.05, planes_alike=None) == ["input_mostly_noise"]  # a single plane
    assert _flags(structure=0.05, planes_alike=0.3) == []  # dense sub-voxel puncta span planes
    assert _flags(structure=0.15, planes_alike=0.02) == []
    # isotropic mode's isotropy, from the figures stage_qc measured
    assert _flags(mode="isotropic", isotropy_in=0.4, isotropy_out=0.6) == ["isotropy_not_reached"]
    assert _flags(mode="isotropic", isotropy_in=0.4, isotropy_out=1.4) == ["isotropy_implausible"]
    assert _flags(isotropy_in=0.4, isotropy_out=0.6) == []  # enhance: no isotropy claim
    assert _flags(voxel_size_known=False) == ["voxel_size_missing"]
    # voxel_size_unlike_file: the sheet's 10 times the file's, or a tenth, on an axis (nm typed for µm)
    file_vs = (4.0, 0.8286, 0.8286)
    assert _flags(voxel_size_given=(4000.0, 828.6, 828.6), voxel_size_file=file_vs) == ["voxel_size_unlike_file"]
    assert _flags(voxel_size_given=(4.0, 0.08286, 0.8286), voxel_size_file=file_vs) == ["voxel_size_unlike_file"]
    assert _flags(voxel_size_given=(4.0, 3.3, 3.3), voxel_size_file=file_vs) == []  # binned 4x: a correction
    assert _flags(voxel_size_given=(4000.0, 828.6, 828.6), voxel_size_file=None) == []
    assert _flags(saturated_fraction=0.05) == ["saturated_input"] and _flags(saturated_fraction=0.0005) == []
    assert _flags(saturated_fraction=0.0029) == ["saturated_input"]  # a review's two clipped objects in four
    # over 0.1 %: a few objects' cores; a camera's hot pixels at its top stay under it
    assert _flags(saturated_fraction=0.0015) == ["saturated_input"] and _flags(saturated_fraction=0.0007) == []
    # restored_clipped: an integer output at its type's largest value where its interpolation is below it
    clip = {"output": 0.0127, "beyond_interpolation": 0.0127, "at": 255}
    assert _flags(_clean_check(clipped=clip)) == ["restored_clipped"]
    assert _flags(_clean_check(clipped=clip | {"beyond_interpolation": 0.0004})) == []  # a stray voxel or two
    assert _flags(_clean_check(clipped=clip | {"beyond_interpolation": 0.0008})) == ["restored_clipped"]  # over 0.05 %
    assert _flags(_clean_check(clipped={"output": 0.03, "beyond_interpolation": 0.0, "at": 65535})) == []  # saturated


def test_an_integer_output_cut_at_its_types_largest_value_is_flagged_by_qc(tmp_path):
    """A review: an isotropic uint8 output with 1.27 % of its voxels cut at 255 (nuclei 1.5–1.8× too
    bright) had no flag at all — the cut hid restored_brighter. QC counts the cut voxels."""
    import tifffile
    import zarr

    from selfres.settings import Settings, from_dict

    rng = np.random.default_rng(0)
    vol = (rng.random((8, 48, 48)) * 200).astype(np.uint8)
    vol[:, 30:44, :] = 255  # saturated cores, a larger share than the cut below (a review: they hid it)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, vol)
    keep, out = tmp_path / "k", tmp_path / "out.ome.zarr"
    fast = {"train": {"steps": 2, "width": 4, "depth": 1, "batch_size": 1, "patch_size": [4, 16, 16],
                      "validate_every": 1, "warmup_steps": 1}, "qc": {"resolution": False},
            "infer": {"output_dtype": "input"}}
    m = pipeline.restore(src, out, scale=(1, 2, 2), device="cpu", keep=keep, settings=from_dict(Settings, fast))
    # the input's saturated cores are at 255 in the output and in its interpolation alike: not a cut
    assert m["restored_check"]["clipped"]["output"] > 0.1
    assert "restored_clipped" not in m["flags"], m["flags"]
    arr = zarr.open_group(str(out), mode="r+")["0"]
    assert arr.dtype == np.uint8
    cut = np.asarray(arr[:])
    cut[:, :20, :] = 255  # as an overshooting restoration written as uint8 is: cut at the type's largest value
    cut[:, 60:88, :] = np.minimum(cut[:, 60:88, :], 250)  # and the saturated cores a little below it
    arr[:] = cut
    m = qc.stage_qc(keep / "normalized.ome.zarr", out, keep / "model", keep / "train_fov.json",
                          tmp_path / "m.json", sample="s", settings=from_dict(Settings, fast).qc)
    assert "restored_clipped" in m["flags"], m["flags"]
    clipped = m["restored_check"]["clipped"]
    assert clipped["at"] == 255 and clipped["beyond_interpolation"] > 0.1


def test_hot_pixels_at_the_types_top_are_not_a_saturated_input(tmp_path):
    """A review: 20 hot pixels at 65535 in a 128×128 field are 0.12 % of every plane, over the
    0.1 % at which saturated_input fires; they are sensor defects, found as such, not a clip."""
    import tifffile
    import zarr

    rng = np.random.default_rng(1)
    vol = rng.normal(1000, 30, size=(16, 128, 128)).astype(np.uint16)
    ys, xs = rng.integers(2, 126, 20), rng.integers(2, 126, 20)
    vol[:, ys, xs] = 65535
    tifffile.imwrite(tmp_path / "hot.tif", vol)
    pipeline.stage_normalise(tmp_path / "hot.tif", tmp_path / "n.ome.zarr", sample="s")
    attrs = zarr.open_group(str(tmp_path / "n.ome.zarr"), mode="r").attrs["selfres"]
    assert attrs["saturated_fraction"] < qc.SATURATED_SHARE, attrs["saturated_fraction"]
    # a clipped object is still one
    vol[:, 40:50, 40:50] = 65535
    tifffile.imwrite(tmp_path / "sat.tif", vol)
    pipeline.stage_normalise(tmp_path / "sat.tif", tmp_path / "s.ome.zarr", sample="s")
    attrs = zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="r").attrs["selfres"]
    assert attrs["saturated_fraction"] == pytest.approx(100 / (128 * 128), rel=0.05)


@pytest.mark.parametrize("top, clipped, expected", [(4095, True, 0.05), (65535, True, 0.05), (3000, False, 0.0)])
def test_saturation_is_found_at_a_camera_s_bit_depth_too(tmp_path, top, clipped, expected):
    """12-bit data stored in uint16 saturate at 4095: only the dtype's 65535 was looked at."""
    import tifffile

    rng = np.random.default_rng(0)
    vol = rng.integers(100, top - 100, size=(8, 40, 40)).astype(np.uint16)
    vol.reshape(-1)[: vol.size // 20] = top if clipped else top - 1
    vol.reshape(-1)[0] = top
    tifffile.imwrite(tmp_path / "in.tif", vol)
    attrs = pipeline.stage_normalise(tmp_path / "in.tif", tmp_path / "n.ome.zarr", sample="s")
    assert attrs["saturated_fraction"] == pytest.approx(expected, abs=1e-3)
    assert pipeline.saturation_levels(np.uint16) == (255, 1023, 4095, 16383, 65535)


def test_a_16_bit_camera_s_saturation_is_found_in_a_32_bit_integer_file(tmp_path):
    """A 16-bit camera's stack saved as uint32 (a conversion's choice) clips at 65535: that is
    its saturation, not the type's 4294967295 (the saturated share read 0)."""
    import tifffile

    rng = np.random.default_rng(0)
    vol = rng.integers(100, 60000, size=(8, 40, 40)).astype(np.uint32)
    vol.reshape(-1)[: vol.size // 20] = 65535
    tifffile.imwrite(tmp_path / "in.tif", vol)
    attrs = pipeline.stage_normalise(tmp_path / "in.tif", tmp_path / "n.ome.zarr", sample="s")
    assert attrs["saturated_fraction"] == pytest.approx(0.05, abs=1e-3)
    assert pipeline.saturation_levels(np.uint32)[-2:] == (65535, 2**32 - 1)


def test_provenance_times_only_the_rules_that_made_the_current_outputs(tmp_path):
    """A sample that stopped adopting, or went back from scattered inference to one job, left
    the old rules' benchmark files; the report's timings leave them out."""
    import os

    def bench(name, t):
        path = tmp_path / f"{name}.tsv"
        path.write_text("s\tmax_rss\n1\t1\n")
        os.utime(path, (t, t))
        return path

    files = [bench("normalise", 1), bench("adopt", 2), bench("train", 3), bench("infer_prepare", 4),
             bench("infer_block_0", 4), bench("infer_block_1", 4), bench("infer_block_2", 4),
             bench("infer_gather", 5), bench("infer", 6), bench("report", 7)]  # the previous report's
    assert [f.stem for f in provenance.current_benchmarks(files, blocks=1)] == ["normalise", "train", "infer"]
    files[1] = bench("adopt", 8)  # adopting now, after training: the train job's file is the old one
    assert [f.stem for f in provenance.current_benchmarks(files, blocks=1)] == ["normalise", "adopt", "infer"]
    files[1] = bench("adopt", 2)
    files[-2] = bench("infer", 1)  # now scattered over 2 blocks, after a run with 3
    assert [f.stem for f in provenance.current_benchmarks(files, blocks=2)] == [
        "normalise", "train", "infer_prepare", "infer_block_0", "infer_block_1", "infer_gather"]
    assert len(provenance.current_benchmarks(files, blocks=None)) == 7  # unknown block count: every block kept
    # an export_tiff benchmark counts only while the export beside the output is as new as it
    restored = tmp_path / "restored.ome.zarr"
    restored.mkdir()
    os.utime(restored, (10, 10))
    export = [bench("export_tiff", 11)]
    assert provenance.current_benchmarks(export, blocks=1, restored=restored) == []
    (tmp_path / "restored.ome.tif").write_bytes(b"")
    assert provenance.current_benchmarks(export, blocks=1, restored=restored) == export
    os.utime(tmp_path / "restored.ome.tif", (9, 9))  # from before the output: an earlier export's
    assert provenance.current_benchmarks(export, blocks=1, restored=restored) == []


def test_a_configuration_that_did_not_make_the_outputs_is_named_in_provenance_and_report():
    """After `--cleanup-metadata`, Snakemake reruns only the report for a changed value; the
    provenance then recorded the new config as if it had made the model."""
    from selfres import report

    meta = {"settings": {"steps": 35, "degradation": {"method": "cubic", "noise_variance": [1e-6, 2e-6]},
                         "patch_size": [8, 64, 64]}}
    attrs = {"fingerprint": {"settings": {"back_projection_iterations": 1, "tile_size": [32, 128, 128]}}}
    same = {"settings": {"train": {"steps": 35, "patch_size": [8, 64, 64],
                                   "degradation": {"method": "cubic", "noise_variance": None}},
                         "infer": {"back_projection_iterations": 1, "blocks": 3}}, "model_from": None}
    assert provenance.settings_not_applied(same, meta, attrs) == {}  # null: left to the data; blocks: no output change
    changed = {"settings": {"train": {"steps": 45, "degradation": {"method": "gaussian"}},
                            "infer": {"back_projection_iterations": 0}}, "model_from": "other"}
    differ = provenance.settings_not_applied(changed, meta, attrs)
    assert differ == {"train.steps": {"config": 45, "used": 35},
                      "train.degradation.method": {"config": "gaussian", "used": "cubic"},
                      "infer.back_projection_iterations": {"config": 0, "used": 1},
                      "model_from": {"config": "other", "used": None}}
    adopted = dict(meta, adopted_from={"sample": "other"})  # its train values are its source's
    assert provenance.settings_not_applied(changed, adopted, attrs) == {
        "infer.back_projection_iterations": {"config": 0, "used": 1}}
    from .test_report import _metrics, _volumes

    raw, interp, restored = _volumes()
    page = report.render_sample_report(sample="s", metrics=_metrics(), raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5),
                                       provenance={"settings_not_applied": differ})
    assert "The configuration differs from what made these outputs" in page and "train.steps: configured 45" in page


def test_configured_values_are_compared_as_the_stages_read_them():
    """A sheet cell is a string until the stages read it: '2.0,0.5,0.5' and '1e-3' made the
    demo's beads report warn that its configuration had not made its outputs."""
    from selfres.settings import parse_settings, to_dict

    given = {"train": {"psf_sigma_um": "2.0,0.5,0.5", "learning_rate": "1e-3", "patch_size": "12,64,64"},
             "infer": {"tile_size": "16,64,64"}}
    used = to_dict(parse_settings(__import__("json").dumps(given)))
    meta, attrs = {"settings": used["train"], "factors": [1, 2, 2]}, {"fingerprint": {"settings": used["infer"]}}
    config = {"settings": given, "mode": "enhance", "scale": "1,2,2", "model_from": None}
    assert provenance.settings_not_applied(config, meta, attrs) == {}
    assert provenance.settings_not_applied(dict(config, scale=(1, 2, 2)), meta, attrs) == {}  # selfres restore's
    assert provenance.settings_not_applied(dict(config, scale="2,2,2"), meta, attrs) == {
        "scale": {"config": "2,2,2", "used": [1, 2, 2]}}
    iso = {"mode": "isotropic", "settings": {}}
    assert provenance.settings_not_applied(dict(config, mode="isotropic"), meta, attrs)["mode"] == {
        "config": "isotropic", "used": "enhance"}
    fused = {"fingerprint": {"settings": {}, "fusion": "mean"}}
    assert provenance.settings_not_applied(dict(iso, settings={"isotropic": {"fusion": "geometric"}}),
                                         {"mode": "isotropic"}, fused) == {
        "isotropic.fusion": {"config": "geometric", "used": "mean"}}


def test_an_adopted_psf_model_keeps_the_record_of_the_psf_that_trained_it(tmp_path):
    """model_from with a measured PSF: the adopt stage judges the source's model with the PSF
    file as it is now, but this sample's model.json names the PSF that trained the weights
    (path and SHA-256 of the file then), not the file's new content."""
    import hashlib
    import json

    import tifffile

    from selfres.settings import FovSettings, Settings, from_dict

    from ..conftest import blob_volume

    def gaussian_psf(sigma):
        zz, yy, xx = np.mgrid[-3:4, -3:4, -3:4]
        return np.exp(-0.5 * ((zz / sigma[0]) ** 2 + (yy / sigma[1]) ** 2 + (xx / sigma[2]) ** 2)).astype(np.float32)

    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, gaussian_psf((1.0, 0.8, 0.8)))
    trained_sha = hashlib.sha256(psf.read_bytes()).hexdigest()
    settings = from_dict(Settings, {"train": {"steps": 2, "validate_every": 1, "width": 4, "depth": 1,
                                              "batch_size": 1, "patch_size": [4, 16, 16], "warmup_steps": 0,
                                              "degradation": {"method": "psf", "psf_path": str(psf)}}})
    for name, seed in (("a", 0), ("b", 1)):
        tifffile.imwrite(tmp_path / f"{name}.tif", (blob_volume((8, 48, 48), seed=seed) * 1000).astype(np.float32))
        pipeline.stage_normalise(tmp_path / f"{name}.tif", tmp_path / f"{name}.ome.zarr", sample=name)
        pipeline.stage_crop(tmp_path / f"{name}.ome.zarr", tmp_path / f"{name}_fov.json", sample=name, scale=(1, 2, 2),
                            settings=FovSettings(min_holdout_voxels=256))
    pipeline.stage_train(tmp_path / "a.ome.zarr", tmp_path / "a_fov.json", tmp_path / "model_a", sample="a",
                         scale=(1, 2, 2), settings=settings, device="cpu")
    source = json.loads((tmp_path / "model_a" / "model.json").read_text())["metadata"]
    assert source["psf"] == {"path": str(psf), "sha256": trained_sha}
    tifffile.imwrite(psf, gaussian_psf((1.5, 1.2, 1.2)))  # replaced after training
    assert hashlib.sha256(psf.read_bytes()).hexdigest() != trained_sha
    pipeline.stage_adopt(tmp_path / "b.ome.zarr", tmp_path / "b_fov.json", tmp_path / "model_a", tmp_path / "model_b",
                         sample="b", scale=(1, 2, 2), settings=settings, device="cpu")
    adopted = json.loads((tmp_path / "model_b" / "model.json").read_text())["metadata"]
    assert adopted["sample"] == "b" and adopted["adopted_from"]["sample"] == "a"
    assert adopted["psf"] == source["psf"]


def test_a_time_points_frame_interval_follows_it_into_the_time_series_export(tmp_path):
    """An ImageJ hyperstack's ``finterval`` (OME ``TimeIncrement`` alike) goes with each time
    point's sample — normalised and restored stores, provenance's ``input_part`` — so that the
    time points exported as one series keep their frame interval (Fiji: Image › Properties)."""
    import tifffile

    from selfres.settings import FovSettings, Settings, TrainSettings, from_dict

    from ..conftest import blob_volume

    frames = np.stack([blob_volume((8, 48, 48), n=80, sigma=(1.0, 1.5, 1.5), seed=t) * 1000 for t in range(2)])
    tifffile.imwrite(tmp_path / "lapse.tif", frames.astype(np.uint16), imagej=True,
                     metadata={"axes": "TZYX", "finterval": 2.0, "tunit": "min",  # and a green LUT
                               "LUTs": [np.stack([np.zeros(256), np.arange(256), np.zeros(256)]).astype(np.uint8)]})
    s = Settings(train=from_dict(TrainSettings, {"steps": 1, "width": 4, "depth": 1, "batch_size": 1,
                                                 "patch_size": [4, 16, 16], "validate_every": 1, "warmup_steps": 1}))
    stores = []
    for t in range(2):
        d = tmp_path / f"lapse_t{t}"
        pipeline.stage_normalise(tmp_path / "lapse.tif", d / "n.ome.zarr", sample=d.name, timepoint=t,
                                 voxel_size=(1.0, 0.2, 0.2))
        assert io.read_ome_zarr(d / "n.ome.zarr", lazy=True).attrs["time_increment_s"] == 120.0
        pipeline.stage_crop(d / "n.ome.zarr", d / "fov.json", sample=d.name, scale=(1, 2, 2),
                            settings=FovSettings(min_holdout_voxels=256))
        pipeline.stage_train(d / "n.ome.zarr", d / "fov.json", d / "model", sample=d.name, scale=(1, 2, 2),
                             settings=s, device="cpu")
        pipeline.stage_infer(d / "n.ome.zarr", d / "model", d / "restored.ome.zarr", sample=d.name, device="cpu")
        assert io.read_ome_zarr(d / "restored.ome.zarr", lazy=True).attrs["time_increment_s"] == 120.0
        assert io.channel_color(d / "restored.ome.zarr", None) == "00FF00"  # the stack's LUT, not grey
        stores.append(d / "restored.ome.zarr")
    io.write_ome_tiff(tmp_path / "lapse.ome.tif", stores, timepoints=2)
    assert io.time_increment(tmp_path / "lapse.ome.tif") == 120.0
    assert io.channel_color(tmp_path / "lapse.ome.tif", None) == "00FF00"
    with tifffile.TiffFile(tmp_path / "lapse.ome.tif") as tif:
        assert tif.series[0].axes == "TZYX"


def test_an_input_whose_metadata_gives_a_voxel_of_centimetres_is_normalised_with_its_voxel_size_unknown(tmp_path,
                                                                                                          caplog):
    """2 cm per z step read from metadata (a unit mistake) passed into the figures' µm arithmetic;
    its own outputs (×4 finer) and pyramid levels are still read with their sizes."""
    import tifffile

    src = tmp_path / "cm.tif"
    tifffile.imwrite(src, np.random.default_rng(0).integers(0, 1000, (6, 16, 16), dtype=np.uint16), imagej=True,
                     resolution=(2.0, 2.0), metadata={"spacing": 2e4, "unit": "um", "axes": "ZYX"})
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "n.ome.zarr", sample="s")
    assert "sample 's': " in caplog.text and "metadata gives a voxel size of 20000, 0.5, 0.5 µm; a voxel size must " \
           "be within 1e-06..10000 µm" in caplog.text
    assert io.read_ome_zarr(tmp_path / "n.ome.zarr").voxel_size is None
    pipeline.stage_normalise(src, tmp_path / "m.ome.zarr", sample="s", voxel_size=(2.0, 0.5, 0.5))  # the sheet's
    assert io.read_ome_zarr(tmp_path / "m.ome.zarr").voxel_size == pytest.approx((2.0, 0.5, 0.5))
    io.write_ome_zarr(tmp_path / "fine.ome.zarr", np.zeros((4, 8, 8), np.float32), voxel_size=(2.5e-7,) * 3)
    assert io.read_ome_zarr(tmp_path / "fine.ome.zarr").voxel_size == pytest.approx((2.5e-7,) * 3)
    # the output grid said at the start of a run (a reference's check) takes it as unknown too:
    # an isotropic grid of 40000 planes was planned from the 2 cm step, while crop refuses the sample
    # (metres written as µm: 1e-6 per z step, 2e-7 per pixel; planned: 5 times as many planes)
    big = tmp_path / "m_big.tif"
    tifffile.imwrite(big, np.random.default_rng(0).integers(0, 1000, (16, 64, 64), dtype=np.uint16), imagej=True,
                     resolution=(5e6, 5e6), metadata={"spacing": 1e-6, "unit": "um", "axes": "ZYX"})
    assert io.describe_acquisition(big)[0]["voxel_size"] == pytest.approx((1e-6, 2e-7, 2e-7))
    assert pipeline.planned_output_shape(big, mode="isotropic") is None
    assert pipeline.planned_output_shape(big, mode="isotropic", voxel_size=(1.0, 0.5, 0.5)) == (32, 64, 64)
    assert pipeline.planned_output_shape(big, mode="enhance", scale=(1, 2, 2)) == (16, 128, 128)


@pytest.mark.parametrize("meta, shape, voxel_size, message", [
    ({"mode": "isotropic", "factor": 4.0}, (16, 32, 32), (1.0, 0.5, 0.5), "trained for 4"),
    ({"mode": "isotropic", "factor": 2.0}, (1, 32, 32), (1.0, 0.5, 0.5), "2-D image"),
    ({"mode": "enhance", "factors": [2, 2, 2]}, (1, 32, 32), None, "scales z by 2"),
])
def test_infer_refuses_a_model_that_cannot_restore_the_volume_on_its_grid(meta, shape, voxel_size, message):
    """``selfres infer`` with another sample's model wrote, with exit 0, an isotropic output
    anisotropic the other way (a model of factor 4 on a stack of factor 2) and z planes made up
    from a single plane."""
    from selfres.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        pipeline.check_model_fits_volume(meta, shape, voxel_size, model_dir="m", normalized="n.ome.zarr", sample="s")
    for fits, shape in (({"mode": "isotropic", "factor": 2.01}, (16, 32, 32)),  # within 1 %
                        ({"mode": "enhance", "factors": [1, 2, 2]}, (1, 32, 32))):
        pipeline.check_model_fits_volume(fits, shape, (1.0, 0.5, 0.5), model_dir="m", normalized="n", sample="s")


@pytest.mark.parametrize("edit", ["no_metadata", "no_mode", "flags_null"])
def test_a_model_description_missing_what_infer_reads_is_named_not_a_crash(tmp_path, edit):
    """A model.json without ``metadata``, without ``metadata.mode`` or with ``flags: null`` passed
    the check and failed as 'a bug' (KeyError 'factors', TypeError)."""
    import json

    from selfres.errors import InputError

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    path = tmp_path / "model" / "model.json"
    info = json.loads(path.read_text())
    if edit == "no_metadata":
        del info["metadata"]
    elif edit == "no_mode":
        del info["metadata"]["mode"]
    else:
        info["metadata"]["flags"] = None
    path.write_text(json.dumps(info))
    with pytest.raises(InputError, match="invalid model description"):
        pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", device="cpu")


def test_a_given_voxel_size_that_is_not_the_files_is_said(tmp_path, caplog):
    """The sheet's voxel_size overrides the file's, as documented, but a factor of 2 between
    them (more often a slip than a correction) went by without a word."""
    import tifffile

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((6, 32, 32)).astype(np.float32), imagej=True,
                     resolution=(2.0, 2.0), metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "same.ome.zarr", sample="s", voxel_size=(1.0, 0.5, 0.5))
    assert "is not the one" not in caplog.text
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "other.ome.zarr", sample="s", voxel_size=(2.0, 1.0, 1.0))
    assert re.search(r"sample 's': the voxel size given \(sheet column voxel_size; selfres: --voxel-size\), 2, 1, 1 "
                     r"µm, is not the one .*a\.tif records, 1, 0\.5, 0\.5 µm; the given one is used$", caplog.text,
                     re.M)
    # ten times or more (nm typed for µm): the log names the qc flag it will raise
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "nm.ome.zarr", sample="s", voxel_size=(1000.0, 500.0, 500.0))
    assert re.search(r"records, 1, 0\.5, 0\.5 µm; the given one is used \(10 times or more on an axis: nm typed "
                     r"for µm\? its qc flags voxel_size_unlike_file\)$", caplog.text, re.M)
    # the file's values in another order (x,y,z typed, a walkthrough): said, with the order
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "xyz.ome.zarr", sample="s", voxel_size=(0.5, 0.5, 1.0))
    assert re.search(r"records, 1, 0\.5, 0\.5 µm; the given one is used \(the file's values in another order: the "
                     r"order is z,y,x\)$", caplog.text, re.M)
    # the file's own is kept beside a given one, for QC's unit-slip flag; none where the sheet gives nothing
    from selfres import io

    assert io.read_volume(tmp_path / "other.ome.zarr").attrs["voxel_size_file"] == [1.0, 0.5, 0.5]
    pipeline.stage_normalise(src, tmp_path / "file.ome.zarr", sample="s")
    assert "voxel_size_file" not in io.read_volume(tmp_path / "file.ome.zarr").attrs


def test_a_single_planes_given_z_size_is_not_compared_with_the_files(tmp_path, caplog):
    """A single plane has no z step (its file's y pixel stands in): a sheet's z for it is no
    disagreement with the file (a walkthrough: "3, 0.5, 0.5 µm is not the one p.tif records, 0.5,
    0.5, 0.5 µm"); its y and x still are, said as the file's y and x."""
    import tifffile

    from selfres import io

    src = tmp_path / "p.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((32, 32)).astype(np.float32), imagej=True,
                     resolution=(2.0, 2.0), metadata={"unit": "um"})
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "z.ome.zarr", sample="s", voxel_size=(3.0, 0.5, 0.5))
    assert "is not the one" not in caplog.text
    assert io.read_volume(tmp_path / "z.ome.zarr").voxel_size == (3.0, 0.5, 0.5)  # as given
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "y.ome.zarr", sample="s", voxel_size=(3.0, 0.25, 0.5))
    assert re.search(r"3, 0\.25, 0\.5 µm, is not the one .*p\.tif records, y, x 0\.5, 0\.5 µm \(a single plane: no z "
                     r"step\); the given one is used$", caplog.text, re.M), caplog.text


def test_the_qc_log_line_gives_the_scores_in_dB_and_the_references_not_a_raw_dict():
    """qc.log printed ``self_validation`` as a dict of 15-digit floats and left out the scores
    against a reference that had been computed (a walkthrough)."""
    from selfres.qc import _scores_text

    m = {"self_validation": {"psnr_model": 30.123456789, "psnr_interp": 29.0, "ssim_model": None,
                             "ssim_interp": None},
         "reference": {"psnr": 38.4, "ssim": 0.97812, "psnr_interp": 32.85, "ssim_interp": 0.92}}
    assert _scores_text(m) == ("held-out: model vs interpolation PSNR 30.12 vs 29.00 dB; reference: output vs "
                               "interpolation PSNR 38.40 vs 32.85 dB, SSIM 0.9781 vs 0.9200")
    assert _scores_text({"self_validation": {}, "reference": None}) == "no scores"


def test_isotropy_not_reached_names_the_time_budget_as_well_as_the_steps():
    """Four isotropic runs that ended at their time budget after ~200 of 1000 steps were told to
    raise isotropic.steps (a walkthrough): the knob there is train.max_minutes."""
    from selfres.flags import FLAG_EXPLANATIONS

    what_to_do = FLAG_EXPLANATIONS["isotropy_not_reached"][1]
    assert "train.max_minutes where it ended at its time budget" in what_to_do
    assert "isotropic.steps where it ended after all its steps" in what_to_do


def test_the_qc_log_line_leaves_out_a_score_pair_with_one_side_missing():
    """A held-out score with its interpolation's missing (or the other way round) is left out of
    the log line, not formatted as None (which raised a TypeError in stage_qc)."""
    from selfres.qc import _scores_text

    m = {"self_validation": {"psnr_model": 30.1, "psnr_interp": None},
         "reference": {"psnr": None, "psnr_interp": 32.85, "ssim": 0.9, "ssim_interp": 0.8}}
    assert _scores_text(m) == "no scores"
    m["self_validation"]["psnr_interp"] = 29.0
    m["self_validation"]["ssim_model"] = 0.95
    assert _scores_text(m) == "held-out: model vs interpolation PSNR 30.10 vs 29.00 dB"


# ------------------------------------------------ mutation review of the guard: what the verdict delivers
def _set_model_flags(model_dir, flags, *, perturb=False):
    """Rewrite a trained model with these guard flags (``perturb``: its weights moved away from
    the tricubic it starts as, so that its output is told apart from the interpolation's)."""
    import torch

    from selfres import models

    net, spec, meta = pipeline.load_trained(model_dir)
    if perturb:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    models.save_model(model_dir, net, spec, metadata=meta | {"flags": list(flags)})


def test_a_flagged_model_delivers_tricubic_keeps_the_network_beside_and_a_passing_one_clears_it(tmp_path):
    """What restored.ome.zarr holds follows the guard: a model flagged model_worse_than_interpolation
    puts tricubic there (content 'interpolation') and its own output in restored_model.ome.zarr;
    infer.on_worse_than_interpolation 'model' delivers the network; once the model passes, the
    network is delivered and the older restored_model.ome.zarr is removed. Writing the network under
    the interpolation's name, or keeping the stale store, failed no unit test (a mutation review)."""
    from selfres import io
    from selfres.degrade import upscale_cubic
    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    model = tmp_path / "model"
    out, beside = tmp_path / "restored.ome.zarr", tmp_path / "restored_model.ome.zarr"
    vol, params = pipeline.read_normalized(norm)
    cubic = upscale_cubic(np.asarray(vol.data, dtype=np.float32), (1, 2, 2))
    plain = InferSettings(back_projection_iterations=0, tile_size=(8, 64, 64))

    def written(path):
        v = io.read_ome_zarr(path)
        return v.attrs["content"], pipeline.normalise.apply(np.asarray(v.data, dtype=np.float32), params)

    _set_model_flags(model, ["model_worse_than_interpolation"], perturb=True)
    pipeline.stage_infer(norm, model, out, sample="s", device="cpu", settings=plain)
    content, data = written(out)
    assert content == "interpolation"
    np.testing.assert_allclose(data, cubic, atol=1e-3)  # restored.ome.zarr: tricubic of the input
    content, network = written(beside)
    assert content == "model" and np.abs(network - cubic).max() > 1e-2  # beside it: the network's own output
    import zarr

    label = zarr.open_group(str(beside), mode="r").attrs["omero"]["channels"][0]["label"]
    assert label == "s [network, lost to tricubic]"
    # asked for the network whatever the guard says: one store, the network's
    asked = tmp_path / "asked.ome.zarr"
    pipeline.stage_infer(norm, model, asked, sample="s", device="cpu",
                         settings=InferSettings(back_projection_iterations=0, tile_size=(8, 64, 64),
                                                on_worse_than_interpolation="model"))
    content, data = written(asked)
    assert content == "model" and not (tmp_path / "asked_model.ome.zarr").exists()
    np.testing.assert_allclose(data, network, atol=1e-4)
    # the model now passes: the network is delivered, and the earlier fall-back's store is gone
    _set_model_flags(model, [])
    pipeline.stage_infer(norm, model, out, sample="s", device="cpu", settings=plain)
    content, data = written(out)
    assert content == "model" and not beside.exists()
    np.testing.assert_allclose(data, network, atol=1e-4)


@pytest.mark.parametrize("scores, dead, flagged", [((29.8, 30.0), False, True), ((30.5, 30.0), False, False),
                                                    ((30.5, 30.0), True, False)])
def test_qc_flags_what_its_own_held_out_scores_show(tmp_path, monkeypatch, scores, dead, flagged):
    """QC re-scores the model on the held-out region: a model training passed that QC finds not
    above tricubic is flagged model_worse_than_interpolation, and a network whose output is
    constant is flagged dead_output. Loosening the first or dropping the second failed no test
    (a mutation review)."""
    from selfres import qc
    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    _set_model_flags(tmp_path / "model", [])
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", device="cpu",
                         settings=InferSettings(back_projection_iterations=0, tile_size=(8, 64, 64)))
    sv = {"psnr_model": scores[0], "psnr_interp": scores[1], "ssim_model": None, "ssim_interp": None,
          "gain_db_interval": None, "dead_output": dead, "inference_extras": None, "psf_sigma_um": None}
    monkeypatch.setattr(qc, "self_validation", lambda *a, **k: dict(sv))
    m = qc.stage_qc(norm, tmp_path / "out.ome.zarr", tmp_path / "model", tmp_path / "fov.json",
                    tmp_path / "qc" / "metrics.json", sample="s")
    assert ("model_worse_than_interpolation" in m["flags"]) is flagged
    assert ("dead_output" in m["flags"]) is dead
    assert m["self_validation"]["psnr_model"] == scores[0]


def test_stage_train_records_the_verdict_the_guard_gave_on_what_inference_writes(tmp_path, monkeypatch):
    """model.json holds the guard's verdict on the network wrapped in the inference extras (its
    flags and held-out score, not training's on the network alone), reached with the configured
    margin and confidence. Passing confidence 0, or recording training's own flags or score,
    failed no unit test (a mutation review)."""
    import json

    from selfres import train
    from selfres.settings import TrainSettings

    asked = {}

    def verdict(result, **kwargs):
        asked.update(kwargs, network=result.val_psnr_model)
        return 33.0, ["model_worse_than_interpolation", "scripted"]

    monkeypatch.setattr(train, "guard_with_extras", verdict)
    _trained_sample(tmp_path, {"method": "cubic"})
    meta = json.loads((tmp_path / "model" / "model.json").read_text())["metadata"]
    default = TrainSettings()
    assert (asked["margin_db"], asked["confidence"]) == (default.guard_margin_db, default.guard_confidence)
    assert asked["extras"]["back_projection_iterations"] == 1  # the inference extras, as configured
    assert meta["flags"] == ["model_worse_than_interpolation", "scripted"]
    assert meta["self_validation"]["psnr_model"] == 33.0
    assert meta["self_validation"]["psnr_network"] == pytest.approx(asked["network"])


def test_a_rerun_that_changes_only_the_guards_extras_takes_the_finished_training_up(tmp_path, monkeypatch,
                                                                                      caplog):
    """Changing ``infer.ensemble`` or back-projection reruns the train job (its guard scores what
    inference writes). The rerun takes the finished training up from ``model.work/`` instead of
    training again: the same weights and training log, the guard re-run on the new extras — as a
    fresh training with those extras gives. Other code trains afresh."""
    import json
    import logging
    import shutil

    import tifffile
    import torch
    from safetensors.torch import load_file

    from selfres.settings import FovSettings, InferSettings, Settings, TrainSettings, from_dict

    from ..conftest import blob_volume

    rng = np.random.default_rng(3)
    vol = blob_volume((8, 64, 64), n=120, sigma=(1.0, 1.5, 1.5), seed=4)
    tifffile.imwrite(tmp_path / "in.tif", (rng.poisson(vol * 200) / 200.0 * 1000).astype(np.float32))
    train = from_dict(TrainSettings, {"steps": 6, "width": 4, "depth": 1, "batch_size": 1, "patch_size": [4, 16, 16],
                                      "validate_every": 2, "warmup_steps": 1, "patience": 100})
    plain = Settings(train=train, infer=InferSettings(ensemble=False, back_projection_iterations=0))
    extras = Settings(train=train, infer=InferSettings(ensemble=True, back_projection_iterations=1))
    norm, fov = tmp_path / "n.ome.zarr", tmp_path / "fov.json"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s", voxel_size=(1.0, 0.2, 0.2))
    pipeline.stage_crop(norm, fov, sample="s", scale=(1, 2, 2), settings=FovSettings(min_holdout_voxels=256))

    def trained(model_dir, settings):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            meta = pipeline.stage_train(norm, fov, model_dir, sample="s", scale=(1, 2, 2), settings=settings,
                                        device="cpu", threads=1)
        return meta, load_file(str(model_dir / "weights.safetensors")), (model_dir / "training_log.tsv").read_text()

    model = tmp_path / "model"
    first, first_weights, first_log = trained(model, plain)
    assert (tmp_path / "model.work" / "checkpoint.pt").is_file(), "the finished training is kept"
    assert "taken up" not in caplog.text
    shutil.rmtree(model)  # as Snakemake removes a job's output before rerunning it
    again, again_weights, again_log = trained(model, extras)
    assert "not trained again" in caplog.text and "step 2/6" not in caplog.text
    assert again_log == first_log
    for k in first_weights:
        torch.testing.assert_close(again_weights[k], first_weights[k], rtol=0, atol=0, msg=k)
    assert again["inference_extras"]["ensemble"] is True and first["inference_extras"]["ensemble"] is False
    assert again["self_validation"]["psnr_network"] == first["self_validation"]["psnr_network"]
    assert again["self_validation"]["psnr_model"] != first["self_validation"]["psnr_model"]  # guarded with extras
    assert again["train_seconds"] >= first["train_seconds"]  # the training's time, not the take-up's alone
    # the loop alone, under the job's (set-up and guard): a take-up's is the loop it took up
    assert 0 < first["fit_seconds"] <= first["train_seconds"] and again["fit_seconds"] >= first["fit_seconds"]
    assert again["training_taken_up"] is True and first["training_taken_up"] is False
    # where the network was trained, and where this job guarded it
    assert again["ran_on"] == first["ran_on"] and again["guard_ran_on"]["torch_threads"] == 1
    assert "guard_ran_on" not in first

    fresh, fresh_weights, _ = trained(tmp_path / "fresh" / "model", extras)
    assert "taken up" not in caplog.text
    for k in first_weights:
        torch.testing.assert_close(fresh_weights[k], first_weights[k], rtol=0, atol=0, msg=k)
    assert (fresh["flags"], fresh["self_validation"]) == (again["flags"], again["self_validation"])
    assert fresh["training_taken_up"] is False
    assert fresh["inference_extras"] == again["inference_extras"]

    shutil.rmtree(model)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # another thread count: not the same weights
    trained(model, extras)
    assert "taken up" not in caplog.text and "step 2/6" in caplog.text and "with 1 CPU thread(s)" in caplog.text
    monkeypatch.undo()

    monkeypatch.setattr(codeinfo, "source_digest", lambda: "other code")
    shutil.rmtree(model)
    trained(model, extras)
    assert "taken up" not in caplog.text and "step 2/6" in caplog.text, "other code trains afresh"
    assert json.loads((model / "model.json").read_text())["metadata"]["inference_extras"]["ensemble"] is True


def test_a_training_its_time_budget_cut_is_taken_up_only_for_a_change_of_the_guards_extras(tmp_path, caplog):
    """Where a training ends by its time budget depends on the machine's load: a rerun with the
    same extras (``--forcerun``, a touched input) trains again; one made for other extras takes the
    same network up, so that an ensemble on/off comparison compares one network."""
    import logging
    import shutil

    import tifffile

    from selfres.settings import FovSettings, InferSettings, Settings, TrainSettings, from_dict

    from ..conftest import blob_volume

    vol = blob_volume((8, 64, 64), n=120, sigma=(1.0, 1.5, 1.5), seed=4) * 1000
    tifffile.imwrite(tmp_path / "in.tif", vol.astype(np.float32))
    train = from_dict(TrainSettings, {"steps": 50, "width": 4, "depth": 1, "batch_size": 1, "patch_size": [4, 16, 16],
                                      "validate_every": 10, "warmup_steps": 1, "max_minutes": 1e-6})
    norm, fov = tmp_path / "n.ome.zarr", tmp_path / "fov.json"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s", voxel_size=(1.0, 0.2, 0.2))
    pipeline.stage_crop(norm, fov, sample="s", scale=(1, 2, 2), settings=FovSettings(min_holdout_voxels=256))
    model = tmp_path / "model"

    def trained(ensemble):
        shutil.rmtree(model, ignore_errors=True)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            return pipeline.stage_train(norm, fov, model, sample="s", scale=(1, 2, 2), device="cpu", threads=1,
                                        settings=Settings(train=train, infer=InferSettings(ensemble=ensemble)))

    work = tmp_path / "model.work"
    assert trained(False)["stop_reason"] == "time_budget"
    assert pipeline.read_guarded_with(work)["inference_extras"]["ensemble"] is False
    first = trained(False)
    assert "cut by its time budget" in caplog.text and "taken up" not in caplog.text
    assert pipeline.read_guarded_with(work)["train_seconds"] == first["train_seconds"]
    again = trained(True)
    assert "ensemble False → True" in caplog.text and "not trained again" in caplog.text
    assert again["stop_reason"] == "time_budget" and again["inference_extras"]["ensemble"] is True
    assert pipeline.read_guarded_with(work)["inference_extras"]["ensemble"] is True
    # the same training, taken up: its time is the completed job's, not this job's guard and set-up
    # plus the loop's (38.5 s read 35.2 s after a rerun that trained nothing)
    assert again["training_taken_up"] and again["train_seconds"] == first["train_seconds"]

    # a job killed in its guard, after its training: the retry takes that training up, as always
    from selfres import train as train_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.rmtree(work)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_module, "guard_with_extras", killed)
        with pytest.raises(KeyboardInterrupt):
            trained(True)
    retried = trained(True)
    assert "no completed train job recorded" in caplog.text and "not trained again" in caplog.text
    assert retried["training_taken_up"] is True and retried["stop_reason"] == "time_budget"
    (work / pipeline.GUARDED_WITH).write_text("{not json")  # as good as none: a killed job's
    trained(True)
    assert "no completed train job recorded" in caplog.text and "not trained again" in caplog.text


def test_a_finished_training_is_taken_up_only_where_training_again_would_give_its_weights():
    """A kept finished training is taken up after its steps or an early stop, on the same kind of
    device and (CPU) thread count; one cut by its time budget, or made on another device or
    thread count, trains again. An unfinished one (a killed run) resumes whatever these are."""
    import json

    import torch

    from selfres.train import retrain_reason

    threads = torch.get_num_threads()
    done = {"step": 200, "device": "cpu", "threads": threads}
    assert retrain_reason(done, steps=200, device="cpu") is None
    assert retrain_reason(dict(done, stopped=json.dumps(["early_stop", ["early_stopped"]])), steps=200,
                          device="cpu") is None
    assert "time budget" in retrain_reason(dict(done, step=120, stopped=json.dumps(["time_budget", []])),
                                           steps=200, device="cpu")
    assert "cuda" in retrain_reason(dict(done, device="cuda"), steps=200, device="cpu")
    assert "CPU thread(s)" in retrain_reason(dict(done, threads=threads + 1), steps=200, device="cpu")
    assert "unrecorded" in retrain_reason({"step": 200}, steps=200, device="cpu")  # written before they were
    assert retrain_reason(dict(done, device="cuda", threads=threads + 1), steps=200, device="cuda") is None
    killed = {"step": 120, "device": "cuda", "threads": threads + 1}
    assert retrain_reason(killed, steps=200, device="cpu") is None


def test_a_checkpoints_key_holds_what_the_weights_depend_on_beyond_the_settings():
    """A measured PSF replaced under the same path, mixed precision, selfres's code and torch's
    version each change a checkpoint's key: a kept (or killed) training is taken up only when
    it would train the same weights."""
    import torch

    from selfres import train
    from selfres.settings import TrainSettings

    s, f, d, v = TrainSettings(), (1, 2, 2), "data", (1.0, 0.2, 0.2)
    psf = np.ones((3, 3, 3), np.float32)
    key = train._settings_hash(s, f, d, v, amp=True, psf=psf)
    assert key == train._settings_hash(s, f, d, v, amp=True, psf=psf.copy())
    assert key != train._settings_hash(s, f, d, v, amp=True, psf=psf * 2)
    assert key != train._settings_hash(s, f, d, v, amp=True, psf=None)
    assert key != train._settings_hash(s, f, d, v, amp=False, psf=psf)
    assert key != train._settings_hash(s, f, d, (1.0, 0.2, 0.3), amp=True, psf=psf)
    real = codeinfo.source_digest
    try:
        codeinfo.source_digest = lambda: "other code"
        assert key != train._settings_hash(s, f, d, v, amp=True, psf=psf)
    finally:
        codeinfo.source_digest = real
    version = torch.__version__
    try:
        torch.__version__ = "0.0.1"
        assert key != train._settings_hash(s, f, d, v, amp=True, psf=psf)
    finally:
        torch.__version__ = version


def test_a_serial_models_record_keeps_a_stages_failed_coarse_scale_check(tmp_path, monkeypatch):
    """Serial ×4: a stage whose kept checkpoint failed the coarse-scale check fails the guard, and
    model.json says so (``coarse_scale_failed``: the report's reason), though the composition
    itself has no such check. Reading the composition's own (always false) failed no unit test
    (a mutation review)."""
    import json

    import tifffile

    from selfres import train
    from selfres.settings import FovSettings, Settings, TrainSettings

    from ..conftest import blob_volume

    real = train.train_serial

    def first_stage_failed(*args, **kwargs):
        r = real(*args, **kwargs)
        r.stages[0].coarse_scale_failed = True
        return r

    monkeypatch.setattr(train, "train_serial", first_stage_failed)
    vol = blob_volume((1, 64, 48), n=40, sigma=(0.5, 1.5, 1.5), seed=7) * 1000  # 2-D input
    tifffile.imwrite(tmp_path / "in.tif", vol.astype(np.float32))
    s = Settings(train=TrainSettings(width=4, depth=1, steps=1, scale_check=False, batch_size=1,
                                     patch_size=(1, 16, 16), validate_every=1, warmup_steps=1, x4_strategy="serial"))
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s")
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 4, 4),
                        settings=FovSettings(min_holdout_voxels=256, holdout_fraction=0.3))
    meta = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 4, 4),
                                settings=s, device="cpu")
    recorded = json.loads((tmp_path / "model" / "model.json").read_text())["metadata"]
    assert meta["serial"] and recorded["coarse_scale_failed"] is True
    assert "model_worse_than_interpolation" in recorded["flags"]


# ------------------------------------------ mutation review of the inference stage: what stage_infer leaves
def test_an_isotropic_model_a_few_percent_off_the_volumes_axial_factor_is_refused():
    """The tolerance is a share of the trained factor (1 %): a stack of factor 2.1 (5 % off) is
    another blur and another grid than a model trained for 2. A tolerance ten times as wide
    failed no unit test (a mutation review)."""
    from selfres.errors import ConfigError

    meta = {"mode": "isotropic", "factor": 2.0}
    with pytest.raises(ConfigError, match="trained for 2"):
        pipeline.check_model_fits_volume(meta, (16, 32, 32), (1.05, 0.5, 0.5), model_dir="m", normalized="n",
                                         sample="s")
    pipeline.check_model_fits_volume(meta, (16, 32, 32), (1.005, 0.5, 0.5), model_dir="m", normalized="n", sample="s")


def test_a_normalised_store_of_an_older_selfres_recording_no_acquisition_is_not_refused():
    """Only where both record their acquisition is a model of another refused: a normalised store
    written before the record (no ``source_checksum``) infers with the model, rather than fail
    comparing against nothing (a mutation review)."""
    from selfres.errors import InputError

    made_from = {"source_checksum": "a" * 64, "series": 0, "channel": None, "timepoint": None}
    meta = {"acquisition": made_from, "sample": "s"}
    pipeline.check_model_acquisition(meta, {}, model_dir="m", normalized="n", sample="s")
    pipeline.check_model_acquisition({"sample": "s"}, {"source_checksum": "b" * 64}, model_dir="m", normalized="n",
                                     sample="s")
    with pytest.raises(InputError, match="was trained on another acquisition"):
        pipeline.check_model_acquisition(meta, {"source_checksum": "b" * 64, "series": 0}, model_dir="m",
                                         normalized="n", sample="s")


def test_a_stale_model_output_is_dropped_with_its_unfinished_store_and_progress(tmp_path):
    """The earlier fall-back's model output beside ``restored.ome.zarr`` goes with its partial
    store and progress folder (a run killed while writing it left them), and nothing else of the
    folder; keeping the partial store failed no unit test (a mutation review)."""
    out = tmp_path / "restored.ome.zarr"
    beside = pipeline.model_output_path(out)
    left = [beside, pipeline.partial_path(beside), beside.with_name(f".{beside.name}.progress")]
    kept = [out, pipeline.partial_path(out), tmp_path / "other_model.ome.zarr"]
    for folder in left + kept:
        (folder / "0").mkdir(parents=True)
    pipeline.drop_stale_model_output(out)
    assert [p for p in left if p.exists()] == [] and all(p.is_dir() for p in kept)


def test_a_scattered_run_of_a_passing_model_drops_the_earlier_fall_backs_model_output_at_gather(tmp_path):
    """A scattered inference (prepare, blocks, gather) of a model that now passes delivers the
    network in ``restored.ome.zarr``, its layer named after the sample alone; the earlier
    fall-back's ``restored_model.ome.zarr`` (an older network beside it, which would mislead)
    goes at gather as it does in one job; the prepare and block jobs leave it to the gather.
    Keeping it, or noting the restoration as 'network, lost to tricubic', failed no unit test
    (a mutation review)."""
    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    _set_model_flags(tmp_path / "model", [])
    out = tmp_path / "restored.ome.zarr"
    beside = pipeline.model_output_path(out)
    (beside / "0").mkdir(parents=True)
    two = InferSettings(back_projection_iterations=0, blocks=2, tile_size=(8, 32, 32))
    pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="prepare")
    for block in (0, 1):
        pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="block",
                             block=block)
    assert beside.is_dir()
    info = pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=two, step="gather")
    assert info["content"] == "model" and io.read_ome_zarr(out, lazy=True).attrs["content"] == "model"
    assert not beside.exists()
    import zarr  # the restoration's layer is named after the sample alone (no note of a fall-back)

    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["multiscales"][0]["name"] == "s" and attrs["omero"]["channels"][0]["label"] == "s"


def test_a_rerun_of_the_fall_back_keeps_the_finished_model_output_and_says_what_it_delivered(tmp_path):
    """A flagged model's job writes two stores; what it returns (the workflow's ``--done`` marker)
    says the output holds the interpolation and counts the tiles of both. Rerun (Snakemake removes
    only the declared output, after a run killed while writing the interpolation), the model output
    finished beside it by this same job is kept, not computed again. Recomputing it, or reporting
    'model' or one store's tiles, failed no unit test (a mutation review)."""
    from selfres.settings import InferSettings

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    _set_model_flags(tmp_path / "model", ["model_worse_than_interpolation"], perturb=True)
    out = tmp_path / "restored.ome.zarr"
    beside = pipeline.model_output_path(out)
    plain = InferSettings(back_projection_iterations=0, tile_size=(8, 32, 32))
    first = pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=plain)
    tiles = first["tiles"]
    assert tiles > 1 and first["content"] == "interpolation"
    assert first["computed"] == 2 * tiles and first["resumed"] == 0  # the network's tiles and the interpolation's
    made = io.read_ome_zarr(beside, lazy=True).attrs
    import shutil

    shutil.rmtree(out)  # Snakemake's removal of the declared output before the rerun
    again = pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu", settings=plain)
    assert again["content"] == "interpolation" and io.read_ome_zarr(out, lazy=True).attrs["content"] == "interpolation"
    assert again["computed"] == tiles and again["resumed"] == tiles  # the interpolation only
    assert io.read_ome_zarr(beside, lazy=True).attrs == made  # the model output as the first run finished it


def test_the_fall_back_delivers_the_acquisitions_tricubic_hot_pixels_and_all(tmp_path):
    """The network reads the input with its hot pixels repaired, as it was trained; the guard's
    fall-back is the tricubic interpolation of the acquisition as it is (the one QC and the report
    compare against), not of the repaired input. Repairing the fall-back's input as well failed no
    unit test (a mutation review)."""

    from selfres.degrade import upscale_cubic
    from selfres.settings import InferSettings

    raw, ys, xs, s, norm = _hot_pixel_sample(tmp_path, (8, 64, 64), n=120)
    meta = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 2, 2),
                                settings=s, device="cpu")
    assert meta["sensor_defects_repaired"] >= 1
    _set_model_flags(tmp_path / "model", ["model_worse_than_interpolation"])
    out = tmp_path / "restored.ome.zarr"
    pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu",
                         settings=InferSettings(back_projection_iterations=0))
    fall_back = io.read_ome_zarr(out)
    assert fall_back.attrs["content"] == "interpolation"
    own = np.zeros((128, 128), bool)
    for y, x in zip(ys, xs):
        own[2 * y:2 * y + 2, 2 * x:2 * x + 2] = True
    beside = ndimage.binary_dilation(own, iterations=2) & ~own
    cubic = upscale_cubic(raw, (1, 2, 2))
    np.testing.assert_allclose(np.asarray(fall_back.data)[:, beside], cubic[:, beside], rtol=2e-3, atol=2.0)


def test_infer_refuses_a_z_scaling_model_for_a_2d_image_before_writing_anything(tmp_path):
    """``selfres infer`` of one z slice with a model that scales z (another sample's) is refused
    before any tile: the check exists (see above), and inference calls it. Without the call the
    output held z planes made up from one, with exit 0 (a mutation review)."""
    import tifffile

    from selfres.errors import ConfigError
    from selfres.models import ModelSpec, build_model, save_model

    from ..conftest import blob_volume

    tifffile.imwrite(tmp_path / "plane.tif", (blob_volume((1, 32, 32), n=20, seed=1) * 1000).astype(np.float32))
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "plane.tif", norm, sample="s")
    spec = ModelSpec(arch="svision_mini", factors=(2, 2, 2))
    save_model(tmp_path / "model", build_model(spec), spec, metadata={"mode": "enhance", "factors": [2, 2, 2]})
    out = tmp_path / "restored.ome.zarr"
    with pytest.raises(ConfigError, match="is a 2-D image .* scales z by 2"):
        pipeline.stage_infer(norm, tmp_path / "model", out, sample="s", device="cpu")
    assert not out.exists() and not pipeline.partial_path(out).exists()


def test_the_default_inference_writes_the_network_back_projected_with_its_recorded_noise(tmp_path):
    """The defaults (``back_projection_iterations: 1``, ``back_projection_shrink``, no ensemble)
    are what the guard scored: the written output is the network back-projected once, its
    correction shrunk by the noise level model.json records; not the bare network, nor plain
    steps. Wrapping only when the ensemble was on as well, or dropping the recorded noise, failed
    no unit test (a mutation review)."""
    from selfres import normalise
    from selfres.ensemble import wrap_for_inference
    from selfres.infer import predict_single_pass
    from selfres.settings import DegradationSettings, InferSettings, from_dict
    from selfres.train import inference_extras, make_degradation

    norm = _trained_sample(tmp_path, {"method": "cubic"})
    settings = InferSettings(on_worse_than_interpolation="model")  # the network, whatever the guard said
    assert settings.back_projection_iterations == 1 and settings.back_projection_shrink and not settings.ensemble
    net, _, meta = pipeline.load_trained(tmp_path / "model")
    noise = pipeline.recorded_noise_level(meta)
    assert noise is not None  # a noisy acquisition: training measured the noise a correction holds
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", device="cpu",
                         settings=settings)
    low, params = pipeline.read_normalized(norm)
    got = normalise.apply(np.asarray(io.read_ome_zarr(tmp_path / "out.ome.zarr").data), params)
    deg = make_degradation(from_dict(DegradationSettings, pipeline.trained_degradation(meta)),
                           voxel_size=meta.get("voxel_size_in"))

    def through(**kw):
        wrapped = wrap_for_inference(net, degradation=deg, **kw)
        return predict_single_pass(wrapped, np.asarray(low.data, dtype=np.float32), factors=(1, 2, 2))

    expect = through(noise_level=noise, **inference_extras(settings))
    np.testing.assert_allclose(got, expect, atol=2e-3)
    for other in (through(), through(noise_level=None, **inference_extras(settings))):  # bare; plain steps
        assert np.abs(got - other).max() > 1e-2


def test_the_room_estimate_scales_with_the_acquisitions_compression():
    """An output's estimated bytes are its array's bytes (level 0 and the pyramid) times the
    compression of the acquisition's normalised copy: a sparse acquisition's outputs were refused
    disks with room for them at full size. Leaving the compression out failed no unit test (the
    room tests compute their own estimate with the same function; a mutation review)."""
    full = pipeline.output_bytes_estimate((8, 256, 256), "float32", None, compression=1.0)
    assert full == 4 * (8 * 256 * 256 + 4 * 128 * 128 + 2 * 64 * 64)
    assert pipeline.output_bytes_estimate((8, 256, 256), "float32", None, compression=0.25) == full // 4
    assert pipeline.output_bytes_estimate((8, 256, 256), "uint16", None, compression=0.5) == full // 4


def test_only_the_workflows_restored_store_of_a_part_drops_its_acquisitions_export(tmp_path):
    """``results/cells_c1/restored.ome.zarr`` (the workflow's own output of channel 1) drops the
    acquisition's ``results/cells.ome.tif``; another store in that folder (``selfres infer -o``
    a name of the user's) drops only its own export. Dropping the acquisition's for any store in a
    part's folder failed no unit test (a mutation review)."""
    res = tmp_path / "results"
    (res / "cells_c1").mkdir(parents=True)
    for name in ("cells.ome.tif", "cells_c1/mine.ome.tif"):
        (res / name).write_bytes(b"an earlier export")
    pipeline.drop_stale_export(res / "cells_c1" / "mine.ome.zarr", part=(None, 1))
    assert (res / "cells.ome.tif").exists() and not (res / "cells_c1" / "mine.ome.tif").exists()
    pipeline.drop_stale_export(res / "cells_c1" / "restored.ome.zarr", part=(None, 1))
    assert not (res / "cells.ome.tif").exists()
