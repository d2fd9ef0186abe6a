"""Gaps a mutation review of ``selfres.pipeline`` found: decisions no other test pinned down.

Each test here failed on a small change to the module (a flipped comparison, a dropped
condition, a constant in the place of an argument) that every existing test let through.
They run on shapes and small synthetic data only, without training a network.
"""

from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import pytest

from selfres import pipeline
from selfres.errors import InputError, NoRoom
from selfres.pipeline import FOV_ALREADY_CHOSEN, check_volume_for_mode
from selfres.settings import FovSettings


def _refused(*args, **kwargs) -> str:
    with pytest.raises(InputError) as exc:
        check_volume_for_mode(*args, **kwargs)
    return str(exc.value)


# ------------------------------------------------------------ enhance: voxels along a scaled axis
def test_a_scaled_axis_of_exactly_two_low_resolution_voxels_is_enough():
    """``MIN_LOWRES_VOXELS`` is the fewest low-resolution voxels a training pair needs: a volume
    with exactly that many (4 voxels along y at scale 2) is restored, one voxel fewer is refused.
    Refusing the boundary case too (``<=`` for ``<``) turned away thin volumes the pipeline can
    train on, and no test sat on the boundary."""
    assert check_volume_for_mode((16, 4, 64), None, mode="enhance", factors=(1, 2, 2), path="s.tif",
                                 training_fov=FOV_ALREADY_CHOSEN) is None
    assert "has 3 voxels along y; scale 2 along y needs at least 4" in _refused(
        (16, 3, 64), None, mode="enhance", factors=(1, 2, 2), path="s.tif", training_fov=FOV_ALREADY_CHOSEN)


# ------------------------------------------------------------ isotropic: slices
def test_isotropic_mode_takes_a_stack_of_exactly_its_fewest_slices():
    """Isotropic mode needs ``MIN_ISOTROPIC_SLICES`` (4) z slices: a 4-slice stack is restored
    (its axial factor returned), a 3-slice one refused. A ``<=`` there refused the smallest stack
    the documentation promises to take."""
    from selfres.isotropic import MIN_ISOTROPIC_SLICES

    n = MIN_ISOTROPIC_SLICES
    assert check_volume_for_mode((n, 64, 64), (2.0, 0.5, 0.5), mode="isotropic", path="s.tif",
                                 training_fov=FOV_ALREADY_CHOSEN) == pytest.approx(4.0)
    assert f"needs at least {n} z slices" in _refused((n - 1, 64, 64), (2.0, 0.5, 0.5), mode="isotropic",
                                                      path="s.tif", training_fov=FOV_ALREADY_CHOSEN)


def test_an_isotropic_samples_scale_does_not_decide_its_held_out_slab(tmp_path):
    """Isotropic mode scales z by the voxel size's axial factor, never by the sheet's ``scale``
    (crop holds out on the unscaled grid). The workflow's start-of-run reference check passes the
    sheet's scale (default 2,2,2) for every sample; were it used to round the held-out slab, a
    (5, 44, 44) stack that crop takes would read as too small, the planned grid come back None and
    a reference off the output grid go unnamed until qc, after the training."""
    import tifffile

    assert check_volume_for_mode((5, 44, 44), (2.0, 0.5, 0.5), mode="isotropic", factors=(2, 2, 2),
                                 path="s.tif") == pytest.approx(4.0)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.random.default_rng(0).integers(0, 1000, (5, 44, 44), dtype=np.uint16))
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, np.zeros((5, 44, 44), np.uint16))  # the input's grid, not the output's
    assert pipeline.planned_output_shape(src, mode="isotropic", scale=(2, 2, 2),
                                         voxel_size=(2.0, 0.5, 0.5)) == (20, 44, 44)
    problem = pipeline.reference_grid_problem(ref, src, mode="isotropic", scale=(2, 2, 2),
                                              voxel_size=(2.0, 0.5, 0.5))
    assert problem is not None and "the output grid is (20, 44, 44)" in problem


# ------------------------------------------------------------ the automatic held-out slab
def test_the_automatic_held_out_slab_is_judged_on_sides_rounded_to_the_factors_before_any_stage():
    """Without a training FOV, the check run before any stage judges the automatic held-out slab
    as crop will: its plane's sides rounded down to the scale factors. A (5, 40, 40) volume at
    scale 2,1,1 keeps only 4 of its 5 planes, so 3500 held-out voxels take 22 of its 40 rows,
    more than the 18 left to train on: crop refuses it, and so must the early check (judged on
    the unrounded shape it passed, and the sample failed only at crop)."""
    from selfres.fov import choose_training_fov

    fs = FovSettings(min_holdout_voxels=3500)
    assert "too small to split into a training FOV and a held-out region" in _refused(
        (5, 40, 40), None, mode="enhance", factors=(2, 1, 1), path="s.tif", fov_settings=fs)
    with pytest.raises(InputError, match="too small to split"):  # crop agrees
        choose_training_fov(np.zeros((5, 40, 40), np.float32), min_holdout_voxels=3500, multiple=(2, 1, 1))
    # the same volume at a z factor of 1 holds all 5 planes: taken
    assert check_volume_for_mode((5, 40, 40), None, mode="enhance", factors=(1, 1, 2), path="s.tif",
                                 fov_settings=fs) is None


# ------------------------------------------------------------ a given training FOV
def test_a_given_training_fov_too_small_for_the_factors_is_refused_before_any_stage():
    """A sheet's ``training_fov`` 3 voxels wide along y cannot make training pairs at scale 2 along
    y: the check run before any stage (the workflow's start, ``selfres inspect``) refuses it, as
    crop does, rather than let the sample queue and fail at crop."""
    msg = _refused((16, 64, 64), None, mode="enhance", factors=(1, 2, 2), path="s.tif",
                   training_fov="0:8,0:3,0:64")
    assert "the training FOV ((0, 8), (0, 3), (0, 64)) has 3 voxels along y" in msg


def test_a_given_training_fovs_held_out_box_too_thin_for_the_factors_is_refused_before_any_stage():
    """The held-out box crop takes in the region a given FOV leaves is at most
    ``fov.max_voxels`` / 4: with a small budget it shrinks in y and x to (64, 4, 4) inside a
    64 x 256 x 256 region, too thin at scale 4 (8 needed). The early check computes that box's
    shape and refuses, as crop would; only the region's own size (256) was checked otherwise."""
    msg = _refused((128, 256, 256), None, mode="enhance", factors=(1, 4, 4), path="s.tif",
                   training_fov="0:64,0:256,0:256", fov_settings=FovSettings(max_voxels=4096, min_holdout_voxels=16))
    assert "the held-out region of shape (64, 4, 4) has 4 voxels along y" in msg


def test_a_2d_image_with_a_given_training_fov_keeps_a_held_out_region_one_plane_thick():
    """A 2-D image (one z slice) at scale 1,2,2: the held-out region beside its given training FOV
    is one plane thick, enough along an unscaled axis (``min_holdout_shape`` asks 1 there, 2 × f
    only along a scaled one). Asking 2 planes along every axis refused every 2-D image given a
    training FOV."""
    assert pipeline.min_holdout_shape((1, 2, 2)) == (1, 4, 4)
    assert check_volume_for_mode((1, 64, 64), None, mode="enhance", factors=(1, 2, 2), path="s.tif",
                                 training_fov="0:1,0:32,0:64", fov_settings=FovSettings(min_holdout_voxels=256)) is None


# ------------------------------------------------------------ room for the output
def test_an_output_with_exactly_the_refusal_share_of_its_estimate_free_is_not_refused(tmp_path, monkeypatch):
    """:data:`ROOM_SHARE_REFUSED` is the share of the estimate *below* which an output is refused
    (the estimate is rough: outputs measured 0.6-1.5 of it). Free space of exactly that share
    passes; one byte less is refused."""
    usage = namedtuple("usage", "total used free")
    need = pipeline.output_bytes_estimate((8, 256, 256), "float32", None, compression=1.0)
    assert need % 2 == 0 and pipeline.ROOM_SHARE_REFUSED == 0.5
    out = tmp_path / "restored.ome.zarr"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, need // 2))
    pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, need // 2 - 1))
    with pytest.raises(NoRoom):
        pipeline.check_room_for_outputs([out], (8, 256, 256), "float32", None, compression=1.0, sample="s")


def test_a_stale_unfinished_copy_of_a_kept_model_output_is_not_counted_as_room(tmp_path, monkeypatch):
    """What an unfinished store holds counts as room only for a store this job writes (its rerun
    rewrites those tiles in place). A model output this same job finished is kept as it is, so a
    stale unfinished copy beside it frees nothing for the restored output and must not lift a
    refusal the free space alone calls for."""
    usage = namedtuple("usage", "total used free")
    need = pipeline.output_bytes_estimate((8, 256, 256), "float32", None, compression=1.0)
    out = tmp_path / "restored.ome.zarr"
    model_out = pipeline.model_output_path(out)
    stale = pipeline.partial_path(model_out)
    stale.mkdir()
    (stale / "0").write_bytes(b"\0" * need)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, need // 4))
    with pytest.raises(NoRoom, match=r"restored.ome.zarr \(1 × .* has [0-9.]+ GB free;"):
        pipeline.check_room_for_outputs([model_out, out], (8, 256, 256), "float32", None, compression=1.0,
                                        sample="s", kept=[model_out])
    # the same bytes in the restored output's own unfinished store are its room
    shutil.move(stale, pipeline.partial_path(out))
    pipeline.check_room_for_outputs([model_out, out], (8, 256, 256), "float32", None, compression=1.0,
                                    sample="s", kept=[model_out])


# ------------------------------------------------------------ taking a finished training up
def test_a_checkpoint_no_completed_train_job_recorded_is_taken_up_whatever_the_extras(tmp_path):
    """``take_up_any_finished``: a work folder whose checkpoint is not the one the last completed
    train job recorded (a later job was killed after or during its training, in its guard) is
    resumed or taken up however it ended, even with the same inference extras; only the very
    checkpoint a completed job recorded, guarded with the same extras, is trained again under
    ``--forcerun``. Comparing only the extras retrained the killed job's finished training."""
    import json

    from selfres.train import CHECKPOINT

    extras = {"ensemble": False, "back_projection_iterations": 2, "back_projection_shrink": True}
    work = tmp_path / "model.work"
    work.mkdir()
    (work / CHECKPOINT).write_bytes(b"the completed job's weights")
    pipeline.write_json(work / pipeline.GUARDED_WITH,
                        {"inference_extras": extras, "checkpoints": pipeline.kept_checkpoints(work)})
    assert pipeline.take_up_any_finished(work, extras) is False  # a --forcerun: trained again where it would differ
    assert pipeline.take_up_any_finished(work, extras | {"ensemble": True}) is True  # a rerun for the extras
    (work / CHECKPOINT).write_bytes(b"a killed job's newer weights")
    assert pipeline.take_up_any_finished(work, extras) is True
    (work / pipeline.GUARDED_WITH).write_text(json.dumps({"inference_extras": extras}))  # no checkpoints: none
    assert pipeline.read_guarded_with(work) is None


# ------------------------------------------------------------ records that older stores lack
def test_a_normalised_store_recording_no_checksum_does_not_refuse_a_restored_volume(tmp_path):
    """``check_restored_origin`` refuses a restored volume made from another acquisition only when
    both sides record their checksum: a normalised store that records none (written by an older
    selfres) cannot tell, and refusing it stopped qc and report of every such sample."""
    restored = {"fingerprint": {"input": {"source_checksum": "a" * 64}}}
    pipeline.check_restored_origin(tmp_path / "r.ome.zarr", restored, tmp_path / "model", {}, sample="s")
    with pytest.raises(InputError, match="another acquisition"):
        pipeline.check_restored_origin(tmp_path / "r.ome.zarr", restored, tmp_path / "model",
                                       {"source_checksum": "b" * 64}, sample="s")


def test_metrics_naming_a_restored_volume_are_not_refused_for_a_store_that_records_none(tmp_path):
    """``check_metrics_origin`` compares the restored volume a metrics file was computed from only
    when the store given records its own (its ``fingerprint``): against a store written before
    that record existed there is nothing to compare, and refusing it stopped its report."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    computed = {"computed_from": pipeline.metrics_origin(model, {"fingerprint": {"model": "m"}})}
    pipeline.check_metrics_origin(tmp_path / "metrics.json", computed, model, tmp_path / "r.ome.zarr", {}, sample="s")
    with pytest.raises(InputError, match="another restored volume"):
        pipeline.check_metrics_origin(tmp_path / "metrics.json", computed, model, tmp_path / "r.ome.zarr",
                                      {"fingerprint": {"model": "other"}}, sample="s")


def test_a_finished_restored_volume_is_read_even_with_a_rerun_s_partial_store_beside_it(tmp_path):
    """``read_restored`` says 'inference did not finish' only where the restored volume is missing
    and its partial store is there. A finished store with a partial beside it (a rerun of infer
    under way, or killed) is still the finished output: refusing it failed qc and report on a
    whole restoration."""
    from selfres import io
    from selfres.atomic import partial_path

    out = tmp_path / "restored.ome.zarr"
    io.write_ome_zarr(out, np.ones((2, 8, 8), np.float32), voxel_size=(1.0, 0.5, 0.5))
    partial_path(out).mkdir()
    assert pipeline.read_restored(out, sample="s").shape == (2, 8, 8)
    shutil.rmtree(out)
    with pytest.raises(InputError, match="its inference did not finish"):
        pipeline.read_restored(out, sample="s")


def test_the_room_estimate_takes_no_compression_where_the_normalised_copy_tells_none(tmp_path):
    """``normalised_compression`` falls back to 1 (no compression: the safe side of the room
    check) where the normalised copy's level 0 takes no bytes on disk to go by; a small figure
    there would let an output the disk cannot hold start, and fail after the network's work."""
    source = np.zeros((4, 16, 16), np.float32)
    assert pipeline.normalised_compression(tmp_path / "missing.ome.zarr", source) == 1.0


def test_the_room_estimate_never_takes_more_than_the_arrays_own_bytes(tmp_path):
    """A normalised copy larger on disk than its array (a small volume in many small chunks, their
    metadata) gives a compression of 1 at most: the estimate never takes an output for larger
    than uncompressed, and a disk with room for the uncompressed output is not refused."""
    source = np.zeros((4, 16, 16), np.float32)
    level0 = tmp_path / "n.ome.zarr" / "0"
    level0.mkdir(parents=True)
    (level0 / "c").write_bytes(b"\0" * (3 * source.nbytes))
    assert pipeline.normalised_compression(tmp_path / "n.ome.zarr", source) == 1.0
    (level0 / "c").write_bytes(b"\0" * (source.nbytes // 4))
    assert pipeline.normalised_compression(tmp_path / "n.ome.zarr", source) == pytest.approx(0.25, rel=0.05)


# ------------------------------------------------------------ output names, voxel sizes
def test_an_output_named_like_any_zarr_store_is_taken():
    """``check_store_name`` refuses an output not named as a Zarr store (``-o out.tif``), but takes
    any ``.zarr`` name, ``.ome.zarr`` or not, with or without a trailing slash."""
    from selfres.errors import ConfigError

    for name in ("out.zarr", "out.ome.zarr", "dir/out.zarr/"):
        pipeline.check_store_name(name, command="restore")
    with pytest.raises(ConfigError, match="name the output like NAME.ome.zarr"):
        pipeline.check_store_name("out.tif", command="restore")


def _tif_with_voxel_size(path, z_um: float, xy_um: float):
    import tifffile

    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 1000, (6, 16, 16), dtype=np.uint16), imagej=True,
                     resolution=(1 / xy_um, 1 / xy_um), metadata={"spacing": z_um, "unit": "um", "axes": "ZYX"})
    return path


def test_a_given_voxel_size_a_few_percent_off_the_files_is_said(tmp_path, caplog):
    """A voxel size given in the sheet that differs from the file's by more than 1 % on an axis is
    said (the sheet's is used): 0.52 for the file's 0.5 µm is a slip or a recalibration the user
    should know of; the same value, or one within 1 %, is not."""
    src = _tif_with_voxel_size(tmp_path / "a.tif", 1.0, 0.5)
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "near.ome.zarr", sample="s", voxel_size=(1.0, 0.502, 0.5))
    assert "is not the one" not in caplog.text
    with caplog.at_level("WARNING", logger="selfres"):
        pipeline.stage_normalise(src, tmp_path / "off.ome.zarr", sample="s", voxel_size=(1.0, 0.52, 0.5))
    assert "the voxel size given (sheet column voxel_size; selfres: --voxel-size), 1, 0.52, 0.5 µm, is not the " \
           "one" in caplog.text


def test_a_voxel_size_given_for_a_file_of_implausible_metadata_keeps_the_files_for_qc(tmp_path, caplog):
    """A file whose metadata gives 2 cm z steps, with the voxel size given in the sheet: the given
    one is used, without the warning that the voxel size is taken as unknown (it is known), and
    the file's own is kept beside it (``voxel_size_file``), which QC's unit-slip flag
    ``voxel_size_unlike_file`` reads."""
    from selfres import io

    src = _tif_with_voxel_size(tmp_path / "cm.tif", 2e4, 0.5)
    with caplog.at_level("WARNING", logger="selfres"):
        attrs = pipeline.stage_normalise(src, tmp_path / "n.ome.zarr", sample="s", voxel_size=(2.0, 0.5, 0.5))
    assert "taken as unknown" not in caplog.text
    assert attrs["voxel_size_source"] == "sheet" and attrs["voxel_size_file"] == pytest.approx([2e4, 0.5, 0.5])
    assert io.read_ome_zarr(tmp_path / "n.ome.zarr").voxel_size == pytest.approx((2.0, 0.5, 0.5))


# ------------------------------------------------------------ a model as loaded
def test_an_adopted_model_rotates_laterally_only_where_both_samples_voxels_allow_it(tmp_path):
    """``load_trained`` lets the self-ensemble rotate in the (y, x) plane only where a rotation keeps
    the task for the model's own sample *and* for the sample it was adopted from: a network trained
    on square pixels and judged on 0.5 x 0.25 µm ones (or the reverse) would otherwise be fed data
    whose y and x sampling it never saw."""
    from selfres import models
    from selfres.models import ModelSpec, build_model

    spec = ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)
    square, oblong = [1.0, 0.5, 0.5], [1.0, 0.5, 0.25]
    for own, source, expected in ((square, square, True), (square, oblong, False), (oblong, square, False)):
        folder = tmp_path / f"m_{len(list(tmp_path.iterdir()))}"
        models.save_model(folder, build_model(spec), spec,
                          metadata={"mode": "enhance", "factors": [1, 2, 2], "voxel_size_in": own,
                                    "adopted_from": {"sample": "a", "voxel_size_in": source}})
        net, _, _ = pipeline.load_trained(folder)
        assert net.lateral_rotations is expected, (own, source)


# ------------------------------------------------------------ who holds the output
@pytest.mark.parametrize("step, held", [("all", True), ("prepare", True), ("gather", True), ("block", False)])
def test_every_infer_step_but_a_block_holds_its_output_from_its_start(tmp_path, monkeypatch, step, held):
    """A second writer of the same output is refused at once (``output_lock``) by every step of a
    scattered inference that creates, moves or removes stores — ``prepare`` and ``gather`` as well
    as ``all`` — and not by a ``block`` step, whose jobs share the partial store by design. The
    lock is taken before anything is read (here a missing model folder fails after it)."""
    import contextlib

    from selfres import atomic

    taken = []

    @contextlib.contextmanager
    def recording(path):
        taken.append(str(path))
        yield

    monkeypatch.setattr(atomic, "output_lock", recording)
    out = tmp_path / "restored.ome.zarr"
    with pytest.raises(InputError):
        pipeline.stage_infer(tmp_path / "n.ome.zarr", tmp_path / "no_model", out, sample="s", device="cpu",
                             step=step, block=0)
    assert taken == ([str(out)] if held else [])


# ------------------------------------------------------------ the output grid a reference is checked on
def test_the_grid_said_before_any_job_is_that_of_the_samples_own_image_of_a_file_of_several(tmp_path):
    """``planned_output_shape`` (the start-of-run reference check) reads the header of the image
    ``series`` the sheet names in a file of several, not the file's first: a reference made for
    series 1 was otherwise said to be off its grid, and one off it went unnamed."""
    import tifffile

    src = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(src, ome=True) as w:
        w.write(np.zeros((8, 64, 64), np.uint16), metadata={"axes": "ZYX"})
        w.write(np.zeros((10, 80, 96), np.uint16), metadata={"axes": "ZYX"})
    assert pipeline.planned_output_shape(src, mode="enhance", scale=(1, 2, 2), series=1) == (10, 160, 192)
    assert pipeline.planned_output_shape(src, mode="enhance", scale=(1, 2, 2), series=0) == (8, 128, 128)
    assert pipeline.header_image(src, 2) is None


def test_crop_checks_a_reference_against_the_enhanced_grid_not_the_input_s(tmp_path):
    """``stage_crop`` refuses, before training, a reference not on the output grid (the input's
    shape times the scale): a reference on the input's own grid is refused, one on the output
    grid taken. Checked on the input's shape, the right reference failed every sample at crop."""
    import tifffile

    from ..conftest import blob_volume

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, (blob_volume((8, 32, 32)) * 1000).astype(np.uint16))
    norm = tmp_path / "normalized.ome.zarr"
    pipeline.stage_normalise(src, norm, sample="s")
    on_output, on_input = tmp_path / "ref_out.tif", tmp_path / "ref_in.tif"
    tifffile.imwrite(on_output, np.zeros((8, 64, 64), np.uint16))
    tifffile.imwrite(on_input, np.zeros((8, 32, 32), np.uint16))
    fs = FovSettings(min_holdout_voxels=256)
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 2, 2), settings=fs, reference=on_output)
    with pytest.raises(InputError, match=r"reference shape \(8, 32, 32\) does not match the output grid \(8, 64, 64\)"):
        pipeline.stage_crop(norm, tmp_path / "fov2.json", sample="s", scale=(1, 2, 2), settings=fs,
                            reference=on_input)


def test_the_train_logs_last_line_gives_the_held_out_figure_the_guard_judged(tmp_path, caplog):
    """train.log's closing line gave the network's held-out PSNR alone, while the guard's line above
    it and the summary give it with the inference extras (back-projection by default): a reader saw
    two figures for one sample. It now gives the guard's, the network's alone beside it."""
    import logging

    import tifffile

    from selfres.settings import InferSettings, Settings, TrainSettings

    from ..conftest import blob_volume

    vol = blob_volume((1, 64, 48), n=40, sigma=(0.5, 1.5, 1.5), seed=7) * 1000
    tifffile.imwrite(tmp_path / "in.tif", vol.astype(np.float32))
    s = Settings(train=TrainSettings(width=4, depth=1, steps=2, scale_check=False, batch_size=1,
                                     patch_size=(1, 16, 16), validate_every=1, warmup_steps=1),
                 infer=InferSettings(back_projection_iterations=1, tile_size=(1, 32, 24)))
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s")
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 2, 2),
                        settings=FovSettings(min_holdout_voxels=256, holdout_fraction=0.3))
    with caplog.at_level(logging.INFO):
        meta = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 2, 2),
                                    settings=s, device="cpu")
    judged = meta["self_validation"]
    assert judged["psnr_model"] != judged["psnr_network"]  # back-projection changed the figure
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model saved to ")]
    assert (f": held-out {judged['psnr_model']:.2f} dB vs tricubic {judged['psnr_interp']:.2f} dB as inference "
            f"writes it; the network alone {judged['psnr_network']:.2f} dB") in line, line


def test_a_scale_the_volume_cannot_take_names_the_sheet_column_and_the_command_line_flag():
    """`selfres restore` on a 2-D image at the default 2,2,2 said only "(sheet column 'scale')"
    (a walkthrough): the command-line flag is named too, as the channel's error names --channel."""
    assert "give the sample scale 1,2,2 (sheet column 'scale'; --scale for the selfres commands)" in _refused(
        (1, 64, 64), None, mode="enhance", factors=(2, 2, 2), path="s.tif")
    assert "(sheet column 'scale', e.g. 1,2,2; --scale for the selfres commands)" in _refused(
        (3, 64, 64), None, mode="enhance", factors=(4, 2, 2), path="s.tif")


def test_a_voxel_size_is_reordered_only_when_it_holds_the_files_values_in_another_order():
    """:func:`selfres.settings.voxel_size_reordered`: x,y,z typed for z,y,x (within 1 %), not the
    same order, not other values, not a missing one."""
    from selfres.settings import voxel_size_reordered

    assert voxel_size_reordered((0.829, 0.829, 4.0), (4.0, 0.8286, 0.8286))
    assert not voxel_size_reordered((4.0, 0.829, 0.829), (4.0, 0.8286, 0.8286))  # the same, within 1 %
    assert not voxel_size_reordered((0.8, 0.8, 4.0), (4.0, 0.8286, 0.8286))  # 3.5 % off: other values
    assert not voxel_size_reordered((2.0, 1.0, 1.0), (1.0, 0.5, 0.5)) and not voxel_size_reordered(None, (1, 1, 1))
