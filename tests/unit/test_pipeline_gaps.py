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
