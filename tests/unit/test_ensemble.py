"""Inference wrappers: self-ensemble, back-projection and serial models stay exact under tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from selfres import degrade, models
from selfres.ensemble import (BackProjection, SelfEnsemble, Serial, correction_noise_share, degradation_reach,
                              ensemble_members, local_noise_variance, shrink_residual,
                              wrap_for_inference)
from selfres.infer import CubicUpsampler, predict_array, predict_single_pass

from ..conftest import blob_volume


def _net(factors=(2, 2, 2), seed=0):
    torch.manual_seed(seed)
    m = models.build_model(models.ModelSpec(arch="resnet3d", factors=factors, width=4, depth=1))
    with torch.no_grad():  # a non-trivial body (the last layer starts at zero)
        for p in m.hr_body[-1].parameters():
            p.normal_(0, 0.1)
    return m.eval()


class _Probe(nn.Module):
    """Nearest upsampling of an asymmetric function of the input: not equivariant to flips/rotations."""

    def __init__(self, factors):
        super().__init__()
        self.factors = factors
        self.halo = (1, 1, 1)

    def forward(self, x):
        w = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x) * 0.01
        y = x + w
        for d, f in zip((2, 3, 4), self.factors):
            y = y.repeat_interleave(f, dim=d)
        return y


@pytest.mark.parametrize("factors, n", [((2, 2, 2), 16), ((1, 2, 2), 16), ((2, 1, 1), 16), ((1, 2, 4), 8)])
def test_members_form_the_right_group(factors, n):
    members = ensemble_members(factors)
    assert len(members) == len(set(members)) == n
    if factors[1] != factors[2]:
        assert all(k % 2 == 0 for k, _, _ in members)


def test_a_single_plane_is_not_flipped_through_z_in_the_ensemble():
    """A 2-D image (one z slice) is its own z flip: its 8 lateral members run, not 16 (the z
    flips would double the time for the same output; a mutation review)."""
    calls = []

    class Counting(_Probe):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    ens = SelfEnsemble(Counting((1, 2, 2)))
    with torch.no_grad():
        ens(torch.rand(1, 1, 1, 8, 8))
    assert len(calls) == 8
    calls.clear()
    with torch.no_grad():
        ens(torch.rand(1, 1, 3, 8, 8))
    assert len(calls) == 16


def test_a_model_trained_without_rotations_is_not_rotated_in_the_ensemble():
    """Unequal y and x voxel sizes: training never rotates (the y and x sampling differ), so
    the self-ensemble must not feed the net rotated data either."""
    from selfres.models import lateral_rotations

    assert lateral_rotations((1, 2, 2), (1.0, 0.2, 0.2)) and lateral_rotations((1, 2, 2), None)
    assert not lateral_rotations((1, 2, 2), (1.0, 0.2, 0.3)) and not lateral_rotations((1, 2, 1), (1.0, 0.2, 0.2))
    assert all(k % 2 == 0 for k, _, _ in ensemble_members((1, 2, 2), rotations=False))
    assert len(ensemble_members((1, 2, 2), rotations=False)) == 8
    up = CubicUpsampler((1, 2, 2))
    assert any(k % 2 for k, _, _ in SelfEnsemble(up).members)
    up.lateral_rotations = False
    assert not any(k % 2 for k, _, _ in SelfEnsemble(up).members)


def test_a_model_saved_and_loaded_keeps_whether_the_ensemble_may_rotate_it(tmp_path):
    """models.load_model lost the model's lateral_rotations: the self-ensemble of a reloaded
    model trained on unequal y and x voxel sizes averaged in 16 members instead of 8."""
    from selfres.models import ModelSpec, build_model, load_model, save_model

    spec = ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=4, depth=1)
    for voxel_size, members in (((1.0, 0.5, 0.25), 8), ((1.0, 0.5, 0.5), 16)):
        save_model(tmp_path / str(members), build_model(spec), spec,
                   metadata={"factors": [2, 2, 2], "voxel_size_in": list(voxel_size)})
        loaded, _, _ = load_model(tmp_path / str(members))
        assert len(SelfEnsemble(loaded).members) == members


def test_every_member_is_undone_so_an_equivariant_model_is_unchanged():
    # nearest upsampling commutes with every flip and 90° rotation: the ensemble must equal it exactly
    x = torch.from_numpy(blob_volume((4, 8, 8)))[None, None]
    up = CubicUpsampler((2, 2, 2))
    torch.testing.assert_close(SelfEnsemble(up)(x), up(x), atol=1e-5, rtol=1e-5)
    probe = _Probe((1, 2, 2))
    y = SelfEnsemble(probe)(x)
    # the probe adds 0.01·x-index; the ensemble averages that over the group -> constant mean ramp
    base = x.repeat_interleave(2, 3).repeat_interleave(2, 4)
    resid = (y - base)[0, 0]
    assert torch.allclose(resid, resid.mean().expand_as(resid), atol=1e-5)
    assert resid.mean() == pytest.approx(0.035, abs=1e-5)


def test_ensemble_is_exact_under_tiling_with_unequal_halo():
    vol = blob_volume((4, 14, 16), seed=2)
    ens = SelfEnsemble(_net((1, 2, 2)))
    ref = predict_single_pass(ens, vol, factors=(1, 2, 2))
    tiled = predict_array(ens, vol, factors=(1, 2, 2), tile_size=(4, 7, 9))
    np.testing.assert_allclose(tiled, ref, atol=2e-5)


class _Reach(nn.Module):
    """A ×(1,2,2) net whose output reads exactly ``halo`` input voxels (y, x) each side."""

    factors = (1, 2, 2)

    def __init__(self, hy: int, hx: int):
        super().__init__()
        torch.manual_seed(0)
        self.halo = (0, hy, hx)
        self.conv = nn.Conv3d(1, 1, (1, 2 * hy + 1, 2 * hx + 1), padding=(0, hy, hx), bias=False)

    def forward(self, x):
        return self.conv(x).repeat_interleave(2, 3).repeat_interleave(2, 4)


def test_a_rotating_ensemble_of_a_net_reaching_farther_in_x_than_in_y_tiles_exactly():
    """A 90° member swaps y and x: the ensemble's halo is the larger of the two on both (a
    net of halo (0, 1, 3) tiled with seams of 3e-2 without it; the built-in nets' are equal)."""
    vol = blob_volume((2, 14, 16), seed=2)
    with torch.no_grad():
        ens = SelfEnsemble(_Reach(1, 3))
        assert ens.halo[1] == ens.halo[2] == 3
        ref = predict_single_pass(ens, vol, factors=(1, 2, 2))
        np.testing.assert_allclose(predict_array(ens, vol, factors=(1, 2, 2), tile_size=(2, 7, 8)), ref, atol=1e-5)


def test_ensemble_of_a_trained_like_model_improves_or_matches_the_mean_member():
    # averaging the members cannot be worse than their mean error (convexity of the MSE)
    hr = blob_volume((8, 32, 32), seed=4)
    low = degrade.downscale_cubic(hr, (2, 2, 2))
    net = _net((2, 2, 2), seed=1)
    x = torch.from_numpy(low)[None, None]
    ensemble = SelfEnsemble(net)
    with torch.no_grad():
        ens = ensemble(x)[0, 0].numpy()
        members = []
        for member in list(ensemble.members):  # each member alone, undone as the ensemble undoes it
            one = SelfEnsemble(net)
            one.members = [member]
            members.append(one(x)[0, 0].numpy())
    assert len(members) == 16
    np.testing.assert_allclose(ens, np.mean(members, axis=0), atol=1e-6)
    member_errors = [np.mean((m - hr) ** 2) for m in members]
    assert np.mean((ens - hr) ** 2) < np.mean(member_errors)


def test_back_projection_makes_the_output_consistent_with_the_input():
    hr = blob_volume((8, 32, 32), seed=5)
    low = degrade.downscale_cubic(hr, (2, 2, 2))
    x = torch.from_numpy(low)[None, None]
    up = CubicUpsampler((2, 2, 2))
    with torch.no_grad():
        before = up(x)
        after = BackProjection(up, iterations=10)(x)
    d = degrade.TorchDegrader((2, 2, 2), degrade.Degradation())
    err_before = (d(before) - x).abs().mean().item()
    err_after = (d(after) - x).abs().mean().item()
    assert err_after < 0.3 * err_before
    # and on smooth blobs it moves the estimate towards the truth
    t = torch.from_numpy(hr)[None, None]
    assert (after - t).pow(2).mean() < (before - t).pow(2).mean()


@pytest.mark.parametrize("method", ["block", "gaussian"])
def test_back_projection_makes_the_output_consistent_under_the_models_own_degradation(method):
    """Back-projection must invert the degradation the model was trained with (a binned
    camera's block mean, a PSF), not the default cubic: replacing it with the default failed no
    test (a mutation review), and only this consistency can show it."""
    d = (degrade.Degradation(method=method) if method != "gaussian"
         else degrade.Degradation(method="gaussian", sigma_px=(1.0, 1.5, 1.5)))
    hr = torch.from_numpy(blob_volume((8, 32, 32), seed=5))[None, None]
    down = degrade.TorchDegrader((2, 2, 2), d)
    with torch.no_grad():
        x = down(hr)
        up = CubicUpsampler((2, 2, 2))
        before, after = up(x), BackProjection(up, iterations=10, degradation=d)(x)
        err_before = (down(before) - x).abs().mean().item()
        err_after = (down(after) - x).abs().mean().item()
        cubic_after = (down(BackProjection(up, iterations=10)(x)) - x).abs().mean().item()
    assert err_after < 0.3 * err_before and err_after < 0.5 * cubic_after


@pytest.mark.parametrize("method", ["cubic", "block", "gaussian"])
def test_back_projection_is_exact_under_tiling(method):
    d = (degrade.Degradation(method=method) if method != "gaussian"
         else degrade.Degradation(method="gaussian", sigma_px=(1.0, 1.5, 1.5)))
    vol = blob_volume((4, 16, 18), seed=3)
    bp = BackProjection(_net((1, 2, 2)), iterations=2, degradation=d)
    assert bp.halo[1] > _net((1, 2, 2)).halo[1]
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    tiled = predict_array(bp, vol, factors=(1, 2, 2), tile_size=(4, 8, 9))
    np.testing.assert_allclose(tiled, ref, atol=5e-5)


def _shrunk(residual, low, level, window):
    return shrink_residual(residual, local_noise_variance(low, level, window), window)


def test_shrink_residual_removes_noise_and_keeps_structure():
    from selfres.noise import NoiseLevel

    rng = np.random.default_rng(0)
    sigma = 0.05
    noise = torch.from_numpy(rng.normal(0, sigma, (1, 1, 12, 48, 48)).astype(np.float32))
    low = torch.full_like(noise, 0.5)
    level = NoiseLevel(0.0, sigma**2)
    out = _shrunk(noise, low, level, (3, 3, 3))
    assert out.pow(2).mean() < 0.2 * noise.pow(2).mean()  # noise alone: mostly gone
    # a correction much larger than the noise (an edge the output missed) is kept nearly whole
    edge = torch.zeros_like(noise)
    edge[..., 24:] = 1.0
    kept = _shrunk(edge + noise, low, level, (3, 3, 3))
    near = (..., slice(None), slice(22, 26))
    assert (kept - edge)[near].pow(2).mean() < 0.5 * noise[near].pow(2).mean() + 1e-3
    assert torch.allclose(kept[near].mean(), (edge + noise)[near].mean(), atol=0.02)
    # no noise: the correction unchanged
    torch.testing.assert_close(_shrunk(edge + noise, low, NoiseLevel(0.0, 0.0), (3, 3, 3)), edge + noise,
                               atol=1e-6, rtol=0)
    # the level is looked up at the input's local intensity: shot noise shrinks more where it is bright
    bright = torch.where(torch.arange(48) < 24, 0.05, 1.0).expand_as(noise)
    shot = _shrunk(noise, bright, NoiseLevel(sigma**2, 0.0), (3, 3, 3))
    assert shot[..., 30:].pow(2).mean() < 0.5 * shot[..., :18].pow(2).mean()


def test_back_projection_with_a_noise_level_adds_less_noise_and_is_plain_without_noise():
    from selfres.noise import NoiseLevel

    hr = blob_volume((8, 48, 48), seed=5)
    low = degrade.downscale_cubic(hr, (2, 2, 2))
    noisy = low + np.random.default_rng(1).normal(0, 0.03, low.shape).astype(np.float32)
    up = CubicUpsampler((2, 2, 2))
    plain = BackProjection(up, iterations=1)
    shrunk = BackProjection(up, iterations=1, noise_level=NoiseLevel(0.0, 0.03**2))
    x = torch.from_numpy(noisy)[None, None]
    with torch.no_grad():
        err_plain = (plain(x)[0, 0].numpy() - hr).__pow__(2).mean()
        err_shrunk = (shrunk(x)[0, 0].numpy() - hr).__pow__(2).mean()
        err_tricubic = (up(x)[0, 0].numpy() - hr).__pow__(2).mean()
    assert err_plain > err_tricubic  # the plain step puts the noise back on the output ...
    assert err_shrunk < err_tricubic  # ... the shrunk one does not, and still corrects
    zero = BackProjection(up, iterations=1, noise_level=NoiseLevel(0.0, 0.0))
    assert zero.noise_level is None and zero.step_reach == plain.step_reach
    clean = torch.from_numpy(low)[None, None]
    with torch.no_grad():
        assert torch.equal(zero(clean), plain(clean))


def test_correction_noise_share_of_tricubic_and_of_a_denoiser():
    from selfres.noise import NoiseLevel

    low = degrade.downscale_cubic(blob_volume((16, 48, 48), seed=2), (2, 2, 2))
    level = NoiseLevel(0.0, 0.02**2)
    share = correction_noise_share(CubicUpsampler((2, 2, 2)), low, level)
    assert 0.2 < share < 0.35  # tricubic keeps most of the noise in its output; D gives it back

    class Constant(nn.Module):  # removes everything, noise included: the correction holds all of it
        factors, halo = (2, 2, 2), (0, 0, 0)

        def forward(self, x):
            return torch.zeros(x.shape[:2] + tuple(n * 2 for n in x.shape[2:]))

    assert correction_noise_share(Constant(), low, level) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(correction_noise_share(Constant(), low, NoiseLevel(0.0, 0.0)))
    # too thin along a scaled axis to measure without the kernels' border biasing it: nothing measured
    assert np.isnan(correction_noise_share(CubicUpsampler((2, 2, 2)), low[:3], level))
    # one plane at (1, 2, 2): z is not scaled, so it is measured (two axes of smoothing keep less noise)
    assert 0.1 < correction_noise_share(CubicUpsampler((1, 2, 2)), low[:1], level) < 0.25


def test_wrap_passes_the_noise_level_only_when_shrinking():
    from selfres.noise import NoiseLevel

    level = NoiseLevel(0.0, 1e-3)
    net = _net((2, 2, 2))
    assert wrap_for_inference(net, back_projection_iterations=1, noise_level=level).noise_level is None
    assert wrap_for_inference(net, back_projection_iterations=1, back_projection_shrink=True,
                              noise_level=level).noise_level == level


def test_degradation_reach_matches_the_kernels():
    assert degradation_reach(degrade.Degradation(), (2, 2, 1))[:2] == (3, 3)  # cubic ±2 LR voxels, + 1
    # a factor-1 axis the degradation leaves alone needs no margin: each back-projection step
    # widened a tile by a plane there, so a 2-D image's tiles held 1 + 2 × iterations copies of it
    assert degradation_reach(degrade.Degradation(), (2, 2, 1))[2] == 0
    assert BackProjection(_net((1, 2, 2)), iterations=3).step_reach[0] == 0
    wide = degradation_reach(degrade.Degradation(method="gaussian", sigma_px=(0.0, 4.0, 4.0)), (1, 2, 2))
    assert wide[1] >= 8  # 4σ = 16 HR voxels = 8 LR voxels


def test_serial_models_compose_factors_and_halo_and_tile_exactly():
    a, b = _net((1, 2, 2), seed=1), _net((1, 2, 2), seed=2)
    s = Serial(a, b)
    assert s.factors == (1, 4, 4)
    vol = blob_volume((2, 12, 14), seed=6)
    ref = predict_single_pass(s, vol, factors=(1, 4, 4))
    tiled = predict_array(s, vol, factors=(1, 4, 4), tile_size=(2, 6, 7))
    np.testing.assert_allclose(tiled, ref, atol=5e-5)


def test_a_serial_second_stage_with_a_tight_halo_tiles_exactly():
    """The second stage's halo in the first stage's input voxels rounds up (3 fine voxels at ×2
    are 2 coarse ones, not 1: seams of 0.29 otherwise)."""
    class Nearest(nn.Module):
        factors, halo = (1, 2, 2), (0, 0, 0)

        def forward(self, x):
            return x.repeat_interleave(2, 3).repeat_interleave(2, 4)

    vol = blob_volume((2, 12, 14), seed=6)
    with torch.no_grad():
        s = Serial(Nearest(), _Reach(3, 3))
        assert s.halo == (0, 2, 2)
        ref = predict_single_pass(s, vol, factors=(1, 4, 4))
        np.testing.assert_allclose(predict_array(s, vol, factors=(1, 4, 4), tile_size=(2, 6, 7)), ref, atol=1e-5)


def test_wrap_is_the_model_itself_when_nothing_is_asked_and_handles_2d_batches():
    net = _net((1, 2, 2))
    assert wrap_for_inference(net) is net
    w = wrap_for_inference(net, ensemble=True, back_projection_iterations=1)
    x = torch.rand(2, 1, 12, 12)
    assert w(x).shape == (2, 1, 24, 24)


def test_pipeline_trains_serial_x4_and_infers_through_the_wrappers(tmp_path):
    import tifffile

    from selfres import io, pipeline, qc
    from selfres.infer import predict_single_pass
    from selfres.settings import FovSettings, InferSettings, Settings, TrainSettings

    vol = blob_volume((1, 64, 48), n=40, sigma=(0.5, 1.5, 1.5), seed=7) * 1000  # 2-D input
    tifffile.imwrite(tmp_path / "in.tif", vol.astype(np.float32))
    s = Settings(
        train=TrainSettings(width=4, depth=1, steps=1, scale_check=False, batch_size=1, patch_size=(1, 16, 16), validate_every=1,
                            warmup_steps=1, x4_strategy="serial"),
        infer=InferSettings(ensemble=True, back_projection_iterations=1, tile_size=(1, 32, 24),
                            on_worse_than_interpolation="model"),
    )
    norm = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s")
    pipeline.stage_crop(norm, tmp_path / "fov.json", sample="s", scale=(1, 4, 4),
                        settings=FovSettings(min_holdout_voxels=256, holdout_fraction=0.3))
    meta = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 4, 4),
                                settings=s, device="cpu")
    assert meta["serial"]["factors"] == [[1, 2, 2], [1, 2, 2]]
    # what a sample adopting this model is judged by: each stage's kept step (1 step each: 0 or 1)
    steps = meta["serial"]["stage_best_steps"]
    assert len(steps) == 2 and all(isinstance(v, int) and v in (0, 1) for v in steps)
    model, _, _ = pipeline.load_trained(tmp_path / "model")
    assert isinstance(model, Serial) and model.factors == (1, 4, 4)
    # QC's best_step (below) is the later of the two stages' (model.json's own is stage 2's):
    # stage 1 learned, stage 2 did not — the report must not say that nothing was learned.
    # Recorded before inference: qc refuses an output another model.json made
    import json

    doc = json.loads((tmp_path / "model" / "model.json").read_text())
    doc["metadata"].update(best_step=0, serial=doc["metadata"]["serial"] | {"stage_best_steps": [1, 0]})
    (tmp_path / "model" / "model.json").write_text(json.dumps(doc))
    pipeline.stage_infer(norm, tmp_path / "model", tmp_path / "out.ome.zarr", sample="s", settings=s.infer,
                         device="cpu")
    out = io.read_ome_zarr(tmp_path / "out.ome.zarr")
    assert out.data.shape == (1, 256, 192)
    # the written output is the wrapped model (ensemble, then back-projection), not the bare one
    low, params = pipeline.read_normalized(norm)
    wrapped = wrap_for_inference(model, ensemble=True, back_projection_iterations=1)
    expect = predict_single_pass(wrapped, np.asarray(low.data), factors=(1, 4, 4))
    from selfres import normalise

    got = normalise.apply(np.asarray(out.data), params)
    np.testing.assert_allclose(got, expect, atol=2e-3)
    m = qc.stage_qc(norm, tmp_path / "out.ome.zarr", tmp_path / "model", tmp_path / "fov.json",
                          tmp_path / "qc" / "metrics.json", sample="s")
    assert m["best_step"] == 1
    # a rerun for the extras alone takes both finished stages up (model.work/stage1, stage2)
    import dataclasses
    import shutil

    shutil.rmtree(tmp_path / "model")
    again = pipeline.stage_train(norm, tmp_path / "fov.json", tmp_path / "model", sample="s", scale=(1, 4, 4),
                                 settings=dataclasses.replace(s, infer=InferSettings(ensemble=False)), device="cpu")
    assert again["training_taken_up"] is True and meta["training_taken_up"] is False
    assert again["serial"]["stage_best_steps"] == meta["serial"]["stage_best_steps"]


def test_a_serial_training_its_time_budget_cut_is_taken_up_for_a_change_of_the_extras(tmp_path):
    """Both ×2 stages of a serial ×4 training take the rerun's reason into account: cut by the
    time budget, they are taken up when the rerun is for the guard's extras alone."""
    import dataclasses
    import shutil

    import tifffile

    from selfres import pipeline
    from selfres.settings import FovSettings, InferSettings, Settings, TrainSettings

    vol = blob_volume((1, 64, 48), n=40, sigma=(0.5, 1.5, 1.5), seed=7) * 1000
    tifffile.imwrite(tmp_path / "in.tif", vol.astype(np.float32))
    s = Settings(train=TrainSettings(width=4, depth=1, steps=20, scale_check=False, batch_size=1,
                                     patch_size=(1, 16, 16), validate_every=5, warmup_steps=1, x4_strategy="serial",
                                     max_minutes=1e-6),
                 infer=InferSettings(ensemble=False))
    norm, fov = tmp_path / "n.ome.zarr", tmp_path / "fov.json"
    pipeline.stage_normalise(tmp_path / "in.tif", norm, sample="s")
    pipeline.stage_crop(norm, fov, sample="s", scale=(1, 4, 4),
                        settings=FovSettings(min_holdout_voxels=256, holdout_fraction=0.3))
    first = pipeline.stage_train(norm, fov, tmp_path / "model", sample="s", scale=(1, 4, 4), settings=s, device="cpu")
    assert first["serial"]["stage_stop_reasons"] == ["time_budget", "time_budget"]
    shutil.rmtree(tmp_path / "model")
    again = pipeline.stage_train(norm, fov, tmp_path / "model", sample="s", scale=(1, 4, 4), device="cpu",
                                 settings=dataclasses.replace(s, infer=InferSettings(ensemble=True)))
    assert again["training_taken_up"] is True
    assert again["serial"]["stage_steps_done"] == first["serial"]["stage_steps_done"]


@pytest.mark.parametrize("voxel_size, adopted_from, rotates", [
    ([1.0, 0.2, 0.2], None, True),
    ([1.0, 0.2, 0.3], None, False),
    ([1.0, 0.2, 0.2], {"voxel_size_in": [1.0, 0.2, 0.3]}, False),  # lent by a sample trained without rotations
])
def test_a_loaded_model_knows_whether_it_may_be_rotated(tmp_path, voxel_size, adopted_from, rotates):
    from selfres import models, pipeline

    spec = models.ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)
    meta = {"mode": "enhance", "factors": [1, 2, 2], "voxel_size_in": voxel_size}
    if adopted_from:
        meta["adopted_from"] = adopted_from
    models.save_model(tmp_path / "model", models.build_model(spec), spec, metadata=meta)
    model, _, _ = pipeline.load_trained(tmp_path / "model")
    assert model.lateral_rotations is rotates
    assert any(k % 2 for k, _, _ in SelfEnsemble(model).members) is rotates


# ---------------------------------------------------------------- found by a mutation review (ensemble, degrade)


@pytest.mark.parametrize("shape", [(1, 1, 1, 8, 10), (2, 1, 8, 10)], ids=["one-plane", "2-D batch"])
def test_the_ensemble_of_a_single_plane_keeps_its_brightness(shape):
    """A 2-D image runs 8 members, not 16: their mean divides by the 8 that ran (dividing by
    the 16 members listed halved every 2-D output, and no test saw it)."""
    x = torch.rand(*shape) + 0.5
    up = CubicUpsampler((1, 2, 2))
    with torch.no_grad():
        torch.testing.assert_close(SelfEnsemble(up)(x), up(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("noise", [{"noise": "poisson_gaussian", "gain": 20.0, "read_sigma": 0.05},
                                   {"noise": "affine_gaussian", "noise_variance": (0.01, 1e-3)}])
def test_back_projection_ignores_the_noise_of_a_training_degradation(noise):
    """A model trained with noise added to its inputs hands that degradation to the
    back-projection: its steps must degrade without the noise (the same output as the
    noise-free degradation, run after run), or each step adds fresh noise to the output."""
    from selfres.noise import NoiseLevel

    x = torch.from_numpy(degrade.downscale_cubic(blob_volume((4, 24, 24), seed=7), (1, 2, 2)))[None, None]
    up = CubicUpsampler((1, 2, 2))
    noisy = degrade.Degradation(**noise)
    with torch.no_grad():
        want = BackProjection(up, iterations=2)(x)
        for _ in range(2):
            torch.testing.assert_close(BackProjection(up, iterations=2, degradation=noisy)(x), want, atol=1e-6, rtol=0)
    assert degradation_reach(noisy, (1, 2, 2)) == degradation_reach(degrade.Degradation(), (1, 2, 2))
    level = NoiseLevel(0.0, 0.02**2)
    low = x[0, 0].numpy()
    assert correction_noise_share(up, low, level, degradation=noisy) == pytest.approx(
        correction_noise_share(up, low, level), abs=1e-6)


def test_correction_noise_share_is_measured_away_from_the_border_from_the_smallest_input_up():
    """Tricubic's share at ×2 is 0.27 on a thick input and on one of the fewest voxels
    measured (:data:`SHARE_MIN_LENGTH`); the outermost voxels, where the kernels' mirrored
    border keeps less noise, are left out (counted in, the share fell to 0.23–0.24)."""
    from selfres.ensemble import SHARE_MIN_LENGTH
    from selfres.noise import NoiseLevel

    low = degrade.downscale_cubic(blob_volume((16, 48, 48), seed=2), (2, 2, 2))
    level = NoiseLevel(0.0, 0.02**2)
    up = CubicUpsampler((2, 2, 2))
    assert correction_noise_share(up, low, level) == pytest.approx(0.275, abs=0.015)
    thin = low[:SHARE_MIN_LENGTH, :12, :12]
    assert correction_noise_share(up, thin, level) == pytest.approx(0.275, abs=0.015)
    assert np.isnan(correction_noise_share(up, low[:SHARE_MIN_LENGTH - 1], level))



def test_degradation_reach_covers_a_measured_psf_with_a_one_sided_tail():
    """A PSF whose tail runs 5 HR voxels to one side of its peak (centred on its centroid, the
    peak): an impulse at a block's last HR voxel reaches ceil(5 / 2) = 3 LR voxels, one more
    than at its first (the halo is sized from both), plus the one voxel of rounding up."""
    p = np.zeros((3, 3, 11), np.float32)
    p[1, 1, 5] = 1.0
    p[1, 1, 6:] = 0.01
    d = degrade.Degradation(method="psf", psf=p)
    assert degradation_reach(d, (1, 2, 2)) == (0, 1, 4)


# ---------------------------------------------------------------- found by a mutation review (ensemble, round 2)


class _Kernel(nn.Module):
    """A random 3×3×3 convolution (zero padding), then nearest upsampling: equivariant to no
    flip or rotation, so an ensemble missing a member, or undoing one on the wrong axis,
    symmetrises its kernel differently."""

    def __init__(self, factors, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.factors, self.halo = tuple(factors), (1, 1, 1)
        self.conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x)
        for d, f in zip((2, 3, 4), self.factors):
            y = y.repeat_interleave(f, dim=d)
        return y


def _group(transpose):
    """The ensemble's group written independently: z flip × (y↔x transpose) × y flip × x flip."""
    return [(fz, t, fy, fx) for fz in (0, 1) for t in ((0, 1) if transpose else (0,)) for fy in (0, 1) for fx in (0, 1)]


def _apply(a, g):
    fz, t, fy, fx = g
    a = a.flip(2) if fz else a
    a = a.transpose(3, 4) if t else a
    a = a.flip(3) if fy else a
    return a.flip(4) if fx else a


def _undo(a, g):
    fz, t, fy, fx = g
    a = a.flip(4) if fx else a
    a = a.flip(3) if fy else a
    a = a.transpose(3, 4) if t else a
    return a.flip(2) if fz else a


@pytest.mark.parametrize("factors, shape", [((2, 2, 2), (3, 6, 6)), ((1, 2, 4), (3, 5, 7))])
def test_the_ensemble_is_the_mean_over_the_whole_group_each_member_undone(factors, shape):
    """The self-ensemble of a net equivariant to nothing equals the mean of g⁻¹·net(g·x) over
    the group written independently (16 members with equal y and x factors, 8 flips without):
    a y flip done on z (a member lost, another doubled), a flip done on the input only, or the
    median of the members passed every other test (a mutation review)."""
    net = _Kernel(factors)
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    group = _group(factors[1] == factors[2])
    with torch.no_grad():
        want = torch.stack([_undo(net(_apply(x, g)), g) for g in group]).mean(0)
        ens = SelfEnsemble(net)
        assert len(ens.members) == len(group)
        torch.testing.assert_close(ens(x), want, atol=1e-6, rtol=1e-5)


def test_an_ensemble_without_z_flips_has_the_eight_lateral_members():
    members = ensemble_members((2, 2, 2), z_flips=False)
    assert len(set(members)) == 8 and not any(fz for _, _, fz in members)
    net = _Kernel((2, 2, 2))
    x = torch.rand(1, 1, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = torch.stack([_undo(net(_apply(x, g)), g) for g in _group(True) if not g[0]]).mean(0)
        torch.testing.assert_close(SelfEnsemble(net, z_flips=False)(x), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_back_projection_is_y_plus_u_of_x_minus_d_of_y_with_the_models_degradation(iterations):
    """Each step is exactly ``y ← y + U(x − D(y))`` (numpy's degrade and upscale as the
    reference), with the model's own degradation, ``iterations`` times (0: the model alone).
    Half or one and a half of the step, or one step more, still made the output consistent
    and passed every other test (a mutation review)."""
    fs = (1, 2, 2)
    d = degrade.Degradation(method="gaussian", sigma_px=(1.0, 1.5, 1.5))
    low = degrade.degrade(blob_volume((3, 24, 24), seed=8), fs, d)
    net = _Kernel(fs, seed=3)
    x = torch.from_numpy(low)[None, None]
    with torch.no_grad():
        want = net(x)[0, 0].numpy().astype(np.float64)
        for _ in range(iterations):
            want = want + degrade.upscale_cubic(low - degrade.degrade(want.astype(np.float32), fs, d), fs)
        got = BackProjection(net, iterations=iterations, degradation=d)(x)[0, 0].numpy()
        np.testing.assert_allclose(got, want, atol=2e-5)
        if iterations:  # and the wrapper hands the degradation on
            wrapped = wrap_for_inference(net, back_projection_iterations=iterations, degradation=d)
            np.testing.assert_allclose(wrapped(x)[0, 0].numpy(), want, atol=2e-5)


def test_shrink_residual_is_the_local_wiener_filter_of_the_documented_formula():
    """``local_noise_variance`` is ``slope·mean + floor`` over the window and the shrink keeps
    ``m + max(0, 1 − σ²/v)·(r − m)`` (local mean and variance, the border replicated),
    checked against scipy: shrinking towards 0 instead of the local mean, a doubled threshold,
    σ in place of σ², or a zero-padded border passed every other test (a mutation review)."""
    from scipy.ndimage import uniform_filter

    from selfres.noise import NoiseLevel

    rng = np.random.default_rng(4)
    r = rng.normal(0.3, 1.0, (1, 1, 4, 9, 11))
    low = rng.uniform(0.0, 2.0, r.shape)
    level, window = NoiseLevel(0.2, 0.1), (1, 3, 3)
    size = (1, 1) + window
    nv = local_noise_variance(torch.from_numpy(low).float(), level, window)
    np.testing.assert_allclose(nv.numpy(), 0.2 * uniform_filter(low, size, mode="nearest") + 0.1, atol=1e-6)
    m = uniform_filter(r, size, mode="nearest")
    v = uniform_filter(r * r, size, mode="nearest") - m * m
    want = m + np.clip(1.0 - nv.numpy() / v, 0.0, 1.0) * (r - m)
    gain = np.clip(1.0 - nv.numpy() / v, 0.0, 1.0)
    assert 0.1 < gain.mean() < 0.9  # the test sees partial shrinking, not only all or nothing
    got = shrink_residual(torch.from_numpy(r).float(), nv, window).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a flat correction where the noise is zero (a dark, empty background) is kept, not NaN
    flat = torch.full((1, 1, 2, 5, 5), 0.25)
    torch.testing.assert_close(shrink_residual(flat, torch.zeros_like(flat), window), flat)


def test_serial_runs_the_first_model_then_the_second():
    a, b = _Kernel((1, 2, 2), seed=5), _Kernel((1, 2, 2), seed=6)
    x = torch.rand(1, 1, 2, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(Serial(a, b)(x), b(a(x)))


def test_back_projection_with_shrink_acts_once_on_the_ensemble_mean():
    """With an ensemble and back-projection, the back-projection corrects the ensemble's mean
    (the shrink is not linear: per member it gives another output, at 16 times the cost)."""
    from selfres.noise import NoiseLevel

    net, level = _Kernel((1, 2, 2), seed=7), NoiseLevel(0.0, 0.01)
    w = wrap_for_inference(net, ensemble=True, back_projection_iterations=1, back_projection_shrink=True,
                           noise_level=level)
    assert isinstance(w, BackProjection) and isinstance(w.model, SelfEnsemble)
    x = torch.rand(1, 1, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(w(x), BackProjection(SelfEnsemble(net), iterations=1, noise_level=level)(x))


@pytest.mark.parametrize("method", ["gaussian", "psf"])
def test_back_projection_keeps_the_blur_of_a_noisy_training_degradation(method):
    """Dropping the noise of a Gaussian or PSF training degradation keeps its blur (σ, the
    PSF): the back-projection of a model trained with noise on blurred inputs corrects with
    that blur (dropping σ failed no test; it refused to build instead)."""
    blur = ({"sigma_px": (0.0, 1.5, 1.5)} if method == "gaussian"
            else {"psf": np.outer(np.hanning(7)[1:-1], np.hanning(9)[1:-1])[None].astype(np.float32)})
    noisy = degrade.Degradation(method=method, noise="affine_gaussian", noise_variance=(0.01, 1e-3), **blur)
    clean = degrade.Degradation(method=method, **blur)
    x = torch.from_numpy(degrade.degrade(blob_volume((2, 24, 24), seed=9), (1, 2, 2), clean))[None, None]
    up = CubicUpsampler((1, 2, 2))
    with torch.no_grad():
        torch.testing.assert_close(BackProjection(up, iterations=2, degradation=noisy)(x),
                                   BackProjection(up, iterations=2, degradation=clean)(x), atol=1e-6, rtol=0)
    assert degradation_reach(noisy, (1, 2, 2)) == degradation_reach(clean, (1, 2, 2))


def test_degradation_reach_takes_the_whole_gaussian_kernel():
    """σ = 4 HR voxels, truncated at 4σ = 16 HR voxels = 8 LR voxels each side, + 1: the
    halo covers the kernel's whole support, down to its faintest tail (a threshold of 1e-3
    of the peak instead of 1e-6 cut a voxel off and failed no test)."""
    d = degrade.Degradation(method="gaussian", sigma_px=(0.0, 4.0, 4.0))
    assert degradation_reach(d, (1, 2, 2)) == (0, 9, 9)


def test_the_ensemble_averages_a_half_precision_model_in_float32():
    """Under autocast a network returns bfloat16/float16: the ensemble sums its members in
    float32 (summed in bfloat16, 16 members lose about 3 significant bits)."""

    class Half(nn.Module):
        factors, halo = (1, 2, 2), (0, 0, 0)

        def forward(self, x):
            return x.repeat_interleave(2, 3).repeat_interleave(2, 4).to(torch.bfloat16)

    x = 100.0 + torch.rand(1, 1, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = SelfEnsemble(Half())(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, Half()(x).float(), atol=0, rtol=0)


def test_a_shrinking_back_projection_keeps_the_planes_of_an_unscaled_z_apart():
    """At (1, 2, 2) the shrink's window is 1 along z (:data:`SHRINK_WINDOW` only on a scaled
    axis): each plane is back-projected as it would be alone, and the halo does not grow along
    z (a window of 3 there mixed neighbouring planes and read 1 + 2 × iterations mirrored
    copies of a 2-D image's one plane; it failed no test)."""
    from selfres.noise import NoiseLevel

    level = NoiseLevel(0.0, 4e-4)
    bp = BackProjection(CubicUpsampler((1, 2, 2)), iterations=2, noise_level=level)
    assert bp.shrink_window == (1, 3, 3) and bp.step_reach[0] == 0 and bp.halo[0] == 0
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.uniform(0.0, 1.0, (1, 1, 3, 10, 10)).astype(np.float32))
    with torch.no_grad():
        stack = bp(x)
        for z in range(3):
            torch.testing.assert_close(stack[:, :, z], bp(x[:, :, z]), atol=1e-6, rtol=0)
