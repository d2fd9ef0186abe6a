"""The time points of one series restored one way (:func:`selfres.adopt.keep_model_for_series`)."""

from __future__ import annotations

import pytest

from selfres.adopt import keep_model_for_series, named
from selfres.normalise import same_series

T0 = {"source_checksum": "abc", "series": None, "channel": 1, "timepoint": 0}


def _adopter(gain: float, flags=("model_worse_than_interpolation",)) -> dict:
    return {"flags": list(flags), "self_validation": {"psnr_model": 30.0 + gain, "psnr_interp": 30.0}}


@pytest.mark.parametrize("other, same", [
    ({"timepoint": 3}, True),
    ({"timepoint": 0}, False),                          # the trained time point itself
    ({"timepoint": 3, "channel": 0}, False),            # another channel's series
    ({"timepoint": 3, "series": 2}, False),             # another image of the file
    ({"timepoint": 3, "source_checksum": "def"}, False),  # another file (a time point per file: not told apart)
])
def test_same_series_is_another_time_point_of_the_same_file_image_and_channel(other, same):
    assert same_series(T0, T0 | other) is same
    assert same_series(None, T0 | other) is False and same_series(T0, None) is False
    # records without a file checksum (a methods text built from a provenance lacking it) are never
    # taken for one series: nothing says they are of one file
    blind = {**T0, "source_checksum": None}
    assert same_series(blind, blind | other) is False


def test_a_time_point_under_the_margin_but_gaining_keeps_the_series_model_output():
    """A reviewer's bleaching filaments: time points 2-5 gained 0.10-0.17 dB held out, under the 0.2 dB
    margin, and switched to tricubic; the series jumped -4.5 % in peak intensity at t2."""
    meta = {"flags": [], "acquisition": T0, "mode": "enhance", "best_step": 40}
    kept = keep_model_for_series(_adopter(0.14, ("dim_input", "model_worse_than_interpolation")), meta,
                                 T0 | {"timepoint": 2}, sample="lapse_c1_t2")
    assert kept["flags"] == ["dim_input", "below_margin_kept_for_series"]


@pytest.mark.parametrize("gain, meta, acquisition", [
    (-0.05, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 2}),  # a loss still falls back
    (0.0, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 2}),
    (0.14, {"flags": ["model_worse_than_interpolation"], "acquisition": T0}, T0 | {"timepoint": 2}),  # t0 fell back
    (0.14, {"flags": [], "acquisition": T0}, T0 | {"source_checksum": "other"}),  # another acquisition
    (0.14, {"flags": [], "acquisition": T0, "adopted_from": {"sample": "x"}}, T0 | {"timepoint": 2}),  # not trained here
    # an enhance model that kept its starting point: its guard is the confidence test, not the margin
    (0.14, {"flags": [], "acquisition": T0, "mode": "enhance", "best_step": 0}, T0 | {"timepoint": 2}),
])
def test_each_other_sample_keeps_its_own_guards_verdict(gain, meta, acquisition):
    out = _adopter(gain)
    assert keep_model_for_series(out, meta, acquisition, sample="s")["flags"] == ["model_worse_than_interpolation"]


def test_a_passing_time_point_is_left_as_it_is():
    out = _adopter(1.0, flags=())
    assert keep_model_for_series(out, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 1}, sample="s") is out


def test_messages_name_the_part_of_the_file_a_sample_is():
    """`selfres restore` names both time points of one file by its stem: 'sample lapse adopts the model
    of lapse' said nothing (a time-lapse walkthrough)."""
    assert named("lapse", T0) == "lapse (channel 1, time point 0)"
    assert named("a", None) == "a" and named("a", {"source_checksum": "x"}) == "a"


# ------------------------------------------------- what an adopter's model.json records (a mutation review)
def _untrained_enhance_model():
    import torch

    from selfres.models import ModelSpec, build_model

    torch.manual_seed(0)
    return build_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)).eval()


def _source_meta(**kw) -> dict:
    """A source's model.json metadata as trained on another machine, with its own records."""
    return {"sample": "src", "mode": "enhance", "factors": [1, 2, 2], "best_step": 0, "settings": {},
            "flags": ["saturated_input", "early_stopped"], "self_validation": {"psnr_model": 31.0, "psnr_interp": 30.0},
            "train_seconds": 123.0, "fit_seconds": 120.0, "voxel_size_in": [1.0, 0.2, 0.2], "device": "cuda:0",
            "ran_on": {"device": "cuda:0", "device_name": "NVIDIA A100", "host": "gpu-node-7"},
            "acquisition": T0, "guard_amp": True, "acquisition_noise": [[0.0, 1e-4]],
            "correction_noise": [[0.0, 5e-5]]} | kw


def _adopt(meta, vol, *, voxel_size=(1.0, 0.25, 0.25), model=None, held=None, **infer):
    """``adopt_enhance`` on ``vol``: its first three quarters in y train, the rest (or ``held``) is held out."""
    from selfres import adopt
    from selfres.settings import InferSettings

    ny = vol.shape[1] * 3 // 4
    return adopt.adopt_enhance(model or _untrained_enhance_model(), meta, vol[:, :ny],
                               vol[:, ny:] if held is None else held, sample="b",
                               voxel_size=voxel_size, guard_margin_db=0.2, guard_confidence=0.95,
                               infer_settings=InferSettings(**({"amp": False, "back_projection_iterations": 0} | infer)),
                               device="cpu")


def test_an_adopters_model_json_names_the_trainer_and_this_samples_own_machine_voxel_and_guard(caplog):
    """Provenance of an adopted model: the training (sample, figures, time, voxel size, machine,
    acquisition) is the source's, under ``adopted_from``; the voxel size, machine, device and guard
    precision this sample was judged with are its own. Each was unpinned in the unit tests."""
    from selfres import models

    from ..conftest import blob_volume

    vol = blob_volume((8, 32, 32), n=40, sigma=(1.0, 1.2, 1.2), seed=2)
    meta = _source_meta()
    with caplog.at_level("WARNING", logger="selfres"):
        out = _adopt(meta, vol)
    assert out["adopted_from"] == {"sample": "src", "self_validation": meta["self_validation"],
                                   "flags": ["saturated_input", "early_stopped"], "train_seconds": 123.0,
                                   "fit_seconds": 120.0, "voxel_size_in": [1.0, 0.2, 0.2], "ran_on": meta["ran_on"], "acquisition": T0}
    assert out["sample"] == "b" and out["voxel_size_in"] == [1.0, 0.25, 0.25]
    assert out["device"] == "cpu" and out["ran_on"] == models.ran_on("cpu") != meta["ran_on"]
    assert out["guard_amp"] is False  # this sample's infer.amp, as QC re-scores its guard
    # what describes the model is inherited; how the source's training went is not
    assert "saturated_input" in out["flags"] and "early_stopped" not in out["flags"]
    # no back-projection here: the source's correction noise is not this sample's, and no shrink is claimed
    assert "correction_noise" not in out and out["inference_extras"]["back_projection_shrink"] is False
    assert out["acquisition_noise"] != meta["acquisition_noise"]
    # lateral pixel 0.25 µm against the source's 0.2 µm (z alike): the log says the model learned another sampling
    assert "but the model of src was trained at (1.0, 0.2, 0.2) µm" in caplog.text


def test_a_2d_adopter_is_not_warned_about_the_z_voxel_it_does_not_have(caplog):
    from ..conftest import blob_volume

    img = blob_volume((1, 32, 32), n=20, sigma=(0.5, 1.2, 1.2), seed=4)
    with caplog.at_level("WARNING", logger="selfres"):
        _adopt(_source_meta(), img, voxel_size=(5.0, 0.2, 0.2))  # z differs, x/y alike
    assert "was trained at" not in caplog.text


def test_an_adopter_converts_the_sources_degradation_and_psf_in_um_with_its_own_voxel_size():
    """The source's ``gaussian`` degradation σ and its PSF target (µm) are turned into this sample's
    voxels: the held-out pair does not depend on the source's voxel size, and the PSF changes it."""
    from ..conftest import blob_volume

    vol = blob_volume((8, 32, 32), n=40, sigma=(1.0, 1.2, 1.2), seed=2)
    gaussian = {"degradation": {"method": "gaussian", "sigma_um": [0.0, 0.3, 0.3]}}
    figures = [_adopt(_source_meta(settings=gaussian, voxel_size_in=v), vol)["self_validation"]["psnr_interp"]
               for v in ([1.0, 0.25, 0.25], [1.0, 0.1, 0.1])]
    assert figures[0] == figures[1]
    psf = _adopt(_source_meta(settings={"psf_sigma_um": [0.0, 0.4, 0.4]}), vol)["self_validation"]["psnr_interp"]
    plain = _adopt(_source_meta(), vol)["self_validation"]["psnr_interp"]
    assert psf != pytest.approx(plain, abs=1e-3)


def test_the_guard_of_an_adopter_measures_the_correction_noise_on_its_training_fov():
    """As in training, the share of noise a back-projection correction holds is measured on the
    acquisition's training FOV, not on the held-out region: another held-out region leaves it."""
    import torch

    from ..conftest import blob_volume

    model = _untrained_enhance_model()
    with torch.no_grad():  # a nonlinear mapping (an untrained one is linear: its share does not depend on the input)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    vol = blob_volume((8, 40, 40), n=50, sigma=(1.0, 1.2, 1.2), seed=2)
    other = blob_volume((8, 10, 40), n=10, sigma=(1.0, 1.2, 1.2), seed=9) * 3.0
    runs = [_adopt(_source_meta(best_step=5), vol, voxel_size=None, model=model, held=held,
                   back_projection_iterations=1)  # training FOV: y 0-30
            for held in (vol[:, 30:], other)]
    assert runs[0]["correction_noise"] == runs[1]["correction_noise"]
    assert runs[0]["inference_extras"]["back_projection_shrink"] is True


def test_an_isotropic_adopter_is_refused_beyond_the_relative_factor_tolerance_and_records_its_own_grid(tmp_path):
    """``model_from`` in isotropic mode: an axial factor 2 % off either way is refused, 0.8 % (within
    the relative 1 % of 2.5, beyond an absolute 0.01) is restored on this sample's own factor; the
    record names the source's factor, voxel size and machine under ``adopted_from`` and this sample's
    outside it; a learned degradation needs its generator; the noise top-up is this sample's even
    where the source's record does not say ``noise_match`` (its default is on)."""
    from selfres import io, models, pipeline
    from selfres.adopt import adopt_isotropic
    from selfres.errors import ConfigError
    from selfres.fov import TrainingFov

    from .test_isotropic import _normalised, _tiny

    norm = _normalised(tmp_path)  # voxel 1.25, 0.5, 0.5: factor 2.5
    pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s1", mode="isotropic",
                         settings=_tiny(), device="cpu")
    model, _, meta = pipeline.load_trained(tmp_path / "model")
    iso = {k: v for k, v in meta["isotropic"].items() if k != "noise_match"}
    meta = dict(meta, flags=["saturated_input", "early_stopped"], voxel_size_in=[1.0, 0.4, 0.4], isotropic=iso,
                ran_on={"device": "cuda:0", "host": "gpu-node-7"},
                degradation=dict(meta["degradation"], noise_level=[[0.0, 0.123]]))
    vol, fov = io.read_ome_zarr(norm), TrainingFov.load(tmp_path / "fov.json")
    for factor in (2.5 * 1.02, 2.5 * 0.98):
        with pytest.raises(ConfigError, match="axial factor"):
            adopt_isotropic(model, meta, vol, fov, sample="b", factor=factor, guard_margin_db=0.2)
    with pytest.raises(ValueError, match="give degrader"):
        adopt_isotropic(model, dict(meta, isotropic=dict(iso, degradation="learned")), vol, fov, sample="b",
                        factor=2.5, guard_margin_db=0.2)
    out = adopt_isotropic(model, meta, vol, fov, sample="b", factor=2.52, guard_margin_db=0.2)
    assert out["factor"] == 2.52 and out["adopted_from"]["factor"] == 2.5
    assert out["voxel_size_in"] == [1.25, 0.5, 0.5] and out["adopted_from"]["voxel_size_in"] == [1.0, 0.4, 0.4]
    assert out["ran_on"] == models.ran_on("cpu") and out["adopted_from"]["ran_on"] == meta["ran_on"]
    assert "saturated_input" in out["flags"] and "early_stopped" not in out["flags"]
    assert out["degradation"]["noise_level"] != [[0.0, 0.123]]


def test_the_adopt_stage_refuses_a_model_of_another_mode_or_scale(tmp_path):
    """``model_from`` names a model of another mode, or an enhance model of other factors: refused
    before anything is judged or written (only the slow workflow test pinned the scale)."""
    from selfres import models, pipeline
    from selfres.errors import ConfigError

    from .test_isotropic import _normalised

    norm = _normalised(tmp_path)  # cropped for isotropic: fov.json
    pipeline.stage_crop(norm, tmp_path / "fov_e.json", sample="s1", mode="enhance")
    spec = models.ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)
    models.save_model(tmp_path / "enh", models.build_model(spec), spec,
                      metadata={"sample": "a", "mode": "enhance", "factors": [1, 2, 2], "best_step": 0})
    with pytest.raises(ConfigError, match=r"restores by \(1, 2, 2\), this sample asks for scale \(2, 2, 2\)"):
        pipeline.stage_adopt(norm, tmp_path / "fov_e.json", tmp_path / "enh", tmp_path / "m2", sample="b",
                             mode="enhance", scale=(2, 2, 2), device="cpu")
    with pytest.raises(ConfigError, match="is an enhance model, this sample is restored in isotropic mode"):
        pipeline.stage_adopt(norm, tmp_path / "fov.json", tmp_path / "enh", tmp_path / "m3", sample="b",
                             mode="isotropic", device="cpu")
    assert not any((tmp_path / m).exists() for m in ("m2", "m3"))
