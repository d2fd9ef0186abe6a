"""Training: the model starts as tricubic, learns, keeps the best checkpoint, resumes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from selfres import degrade
from selfres.settings import TrainSettings
from selfres.train import PatchSampler, fit_patch_size, learning_rate, loss_fn, train_enhance

from ..conftest import blob_volume, weights_at_each_validation

TINY = dict(width=8, depth=1, batch_size=2, patch_size=(4, 16, 16), validate_every=5, warmup_steps=2,
            learning_rate=2e-3, patience=50, max_minutes=5)


def _data():
    vol = blob_volume((8, 48, 48), n=120, sigma=(1.0, 1.2, 1.2))
    return vol[:, :36], vol[:, 36:]


def test_untrained_model_equals_tricubic_and_is_flagged_when_it_cannot_improve():
    train, held = _data()
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=1, **TINY | {"validate_every": 1,
                      "learning_rate": 1e-9}))
    assert r.val_psnr_model == pytest.approx(r.val_psnr_interp, abs=1e-3)
    assert "model_worse_than_interpolation" in r.flags


def test_patience_running_out_at_the_last_step_is_not_an_early_stop():
    """Out of patience at the last validation, training has run every step: the flag
    early_stopped ('stopped before the configured number of steps') was false there."""
    train, held = _data()
    settings = TrainSettings(steps=4, **TINY | {"validate_every": 1, "patience": 4, "learning_rate": 1e-12})
    r = train_enhance(train, held, factors=(1, 2, 2), settings=settings)
    assert r.steps_done == 4 and r.stop_reason == "steps" and "early_stopped" not in r.flags
    r = train_enhance(train, held, factors=(1, 2, 2), settings=dataclasses.replace(settings, steps=6))
    assert r.steps_done == 4 and r.stop_reason == "early_stop" and "early_stopped" in r.flags


def test_training_beats_tricubic_on_the_held_out_region():
    train, held = _data()
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=60, **TINY))
    assert r.val_psnr_model > r.val_psnr_interp + 0.2, (r.val_psnr_model, r.val_psnr_interp)
    assert "model_worse_than_interpolation" not in r.flags
    assert r.best_step > 0 and r.log_rows[-1]["step"] == 60
    assert {"step", "loss", "val_psnr_model", "val_psnr_interp", "lr", "seconds"} <= set(r.log_rows[0])


def test_a_gain_below_the_guard_margin_is_flagged_by_training_itself():
    """Without inference extras (no back-projection, no ensemble) training's own verdict is the
    guard's: dropping the margin from it failed no test (a mutation review)."""
    train, held = _data()
    gained = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=60, **TINY))
    gain = gained.val_psnr_model - gained.val_psnr_interp
    assert gain > 0.2 and "model_worse_than_interpolation" not in gained.flags
    margin = dataclasses.replace(TrainSettings(steps=60, **TINY), guard_margin_db=gain + 0.5)
    held_back = train_enhance(train, held, factors=(1, 2, 2), settings=margin)
    assert held_back.best_step > 0 and "model_worse_than_interpolation" in held_back.flags


def test_training_leaves_the_callers_random_stream_as_it_was_and_is_still_seeded():
    """train_enhance seeded torch's global generator: in a notebook every draw after a training
    was the same "random" numbers."""
    train, held = _data()
    s = TrainSettings(steps=2, **TINY)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = train_enhance(train, held, factors=(1, 2, 2), settings=s)
    torch.testing.assert_close(torch.rand(3), expected)
    again = train_enhance(train, held, factors=(1, 2, 2), settings=s)  # the training's own seed still rules
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_killed_training_resumes_to_identical_weights(tmp_path):
    train, held = _data()
    s = TrainSettings(steps=20, seed=3, **TINY)
    full = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path / "a")
    part = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path / "b", stop_after_steps=10)
    assert part.steps_done == 10
    resumed = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path / "b")
    assert resumed.steps_done == 20
    # the interrupted run's training time counts (train_seconds in model.json adds it)
    assert full.resumed_seconds == 0 and 0 < resumed.resumed_seconds <= resumed.seconds
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_a_checkpoint_from_another_kind_of_device_resumes_its_weights(tmp_path, caplog):
    """The noise generator lives on the training device (a CUDA generator's state is 16 bytes,
    a CPU one's 5056): a train job killed on a GPU and rerun on a CPU node, or back, failed
    at every rerun; now its weights and step resume and the noise draws start anew."""
    from selfres.train import resume_from_checkpoint, save_checkpoint

    model = torch.nn.Conv3d(1, 1, 3)
    optimiser = torch.optim.Adam(model.parameters())
    gen, noise_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    saved = {k: v + 1 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "checkpoint.pt", {
        "key": "k", "model": saved, "optimiser": optimiser.state_dict(), "generator": gen.get_state(),
        "noise_generator": torch.zeros(16, dtype=torch.uint8), "step": 40})  # as a CUDA generator's
    with caplog.at_level("WARNING", logger="selfres"):
        state = resume_from_checkpoint(tmp_path / "checkpoint.pt", key="k", model=model, optimiser=optimiser,
                                       generator=gen, noise_generator=noise_gen)
    assert state["step"] == 40 and "another kind of device" in caplog.text
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k])


def test_a_checkpoint_resumes_only_on_its_own_data_and_voxel_size(tmp_path):
    """A train job killed, then rerun after the sample changed (another image of the same
    shape, a corrected voxel size) trained on: before, the key held the settings and the
    shape only, so the rerun went on from the old run's weights and best score."""
    train, held = _data()
    s = TrainSettings(steps=10, **TINY)
    s = dataclasses.replace(s, degradation=dataclasses.replace(TrainSettings().degradation, method="gaussian",
                                                                sigma_um=(1.0, 0.5, 0.5), noise="none"))
    kw = dict(factors=(1, 2, 2), settings=s, work_dir=tmp_path)
    assert train_enhance(train, held, voxel_size=(1.0, 0.5, 0.5), stop_after_steps=5, **kw).steps_done == 5
    other = blob_volume((8, 48, 48), n=120, sigma=(1.0, 1.2, 1.2), seed=7)
    assert train_enhance(other[:, :36], other[:, 36:], voxel_size=(1.0, 0.5, 0.5), **kw).resumed_seconds == 0
    assert train_enhance(train, held, voxel_size=(1.0, 0.5, 0.5), stop_after_steps=5, **kw).resumed_seconds == 0
    assert train_enhance(train, held, voxel_size=(1.0, 0.25, 0.25), **kw).resumed_seconds == 0
    # the same data and voxel size do resume
    train_enhance(train, held, voxel_size=(1.0, 0.5, 0.5), stop_after_steps=5, **kw)
    assert train_enhance(train, held, voxel_size=(1.0, 0.5, 0.5), **kw).resumed_seconds > 0


def test_a_run_that_stopped_early_is_not_trained_further_on_resume(tmp_path):
    """The job is killed after training stopped early but before the model was written (the
    guard with extras runs then): the rerun must give the same model, not go on training
    from the early-stop checkpoint (before: 4 steps, then 10 steps and another best step)."""
    train, held = _data()
    s = TrainSettings(steps=10, **TINY | {"validate_every": 1, "patience": 2, "learning_rate": 1e-12})
    first = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path)
    assert first.stop_reason == "early_stop" and first.steps_done < 10
    again = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path)
    assert (again.stop_reason, again.steps_done, again.best_step, again.flags) == \
        (first.stop_reason, first.steps_done, first.best_step, first.flags)
    assert again.resumed_seconds > 0
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_unequal_lateral_factors_train_on_patches_that_are_multiples_of_them():
    """Factors 1,1,2 with a y side shorter than the patch: the patch was squared to
    41×41 (x not a multiple of 2) and the degradation refused it."""
    assert fit_patch_size((16, 64, 64), (20, 41, 480), (1, 1, 2), square=False) == (16, 41, 64)
    with pytest.raises(ValueError, match="equal y and x factors"):
        fit_patch_size((16, 64, 64), (20, 41, 480), (1, 1, 2))
    vol = blob_volume((8, 41, 128), n=80, sigma=(1.0, 1.2, 1.2))
    r = train_enhance(vol[:, :, :96], vol[:, :, 96:], factors=(1, 1, 2),
                      settings=TrainSettings(steps=2, **TINY | {"patch_size": (4, 64, 64), "validate_every": 1}))
    assert r.steps_done == 2


def test_corrupt_checkpoint_is_ignored(tmp_path):
    train, held = _data()
    s = TrainSettings(steps=10, **TINY)
    train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path, stop_after_steps=5)
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:-10] + b"0123456789")
    r = train_enhance(train, held, factors=(1, 2, 2), settings=s, work_dir=tmp_path)
    assert r.steps_done == 10  # started afresh, did not load the tampered file


def test_patch_sampler_prefers_structure_and_respects_shapes():
    vol = np.zeros((8, 64, 64), np.float32)
    vol[:, :16, :16] = blob_volume((8, 16, 16), n=40)
    g = torch.Generator().manual_seed(0)
    s = PatchSampler(vol, (4, 16, 16), structure_weighting=1.0, augment=True, rotate=True, generator=g)
    batch = s.sample(32)
    assert batch.shape == (32, 1, 4, 16, 16)
    assert (batch.flatten(1).std(1) > 0).float().mean() > 0.8  # most patches hold structure


@pytest.mark.parametrize(
    "patch, shape, factors, expected",
    [((16, 64, 64), (10, 100, 50), (2, 2, 2), (10, 50, 50)), ((16, 64, 64), (1, 80, 80), (1, 4, 4), (1, 64, 64)),
     ((5, 33, 33), (20, 40, 40), (2, 4, 4), (4, 32, 32))],
)
def test_patch_size_fits_volume_and_factors(patch, shape, factors, expected):
    assert fit_patch_size(patch, shape, factors) == expected


def test_learning_rate_schedule_warms_up_and_decays():
    s = TrainSettings(steps=100, warmup_steps=10, learning_rate=1e-3)
    assert learning_rate(0, s) == pytest.approx(1e-4)
    assert learning_rate(10, s) == pytest.approx(1e-3)
    assert learning_rate(99, s) < 1e-4


@pytest.mark.parametrize("name", ["mse", "l1", "charbonnier", "charbonnier_ssim"])
def test_losses_are_zero_only_for_equal_inputs(name):
    x = torch.rand(2, 1, 4, 8, 8)
    assert loss_fn(name, x, x).item() == pytest.approx(0, abs=2e-3)
    assert loss_fn(name, x, x + 0.1).item() > 0.01


def test_torch_degrader_matches_the_numpy_degradation_used_for_validation():
    vol = blob_volume((8, 16, 16))
    d = degrade.Degradation()
    a = degrade.degrade(vol, (2, 2, 2), d)
    b = degrade.TorchDegrader((2, 2, 2), d)(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "factors, split",
    [((4, 4, 4), ((2, 2, 2), (2, 2, 2))), ((1, 4, 4), ((1, 2, 2), (1, 2, 2))), ((2, 4, 4), ((2, 2, 2), (1, 2, 2))),
     ((2, 2, 2), None), ((1, 3, 3), None), ((4, 8, 8), None)],
)
def test_serial_split_of_factors(factors, split):
    from selfres.train import serial_split

    assert serial_split(factors) == split


def test_serial_x4_trains_two_x2_stages_and_scores_their_composition():
    vol = blob_volume((4, 64, 64), n=150, sigma=(1.0, 1.5, 1.5), seed=1)
    s = TrainSettings(steps=4, x4_strategy="serial", **TINY | {"validate_every": 2})
    r = train_enhance(vol[:, :48], vol[:, 48:], factors=(1, 4, 4), settings=s)
    assert [st.spec.factors for st in r.stages] == [(1, 2, 2), (1, 2, 2)]
    assert r.model.factors == (1, 4, 4)
    out = r.model(torch.from_numpy(vol[:, :8, :8].copy())[None, None])
    assert out.shape == (1, 1, 4, 32, 32)
    # the guard compares the composition with tricubic ×4 on the held-out region
    from selfres.train import holdout_pair, make_degradation, psnr01

    # made with the degradation as trained (the default noise top-up, estimated from the data)
    target, low, interp = holdout_pair(vol[:, 48:], (1, 4, 4), make_degradation(r.settings.degradation, voxel_size=None))

    rng = float(target.max() - target.min())
    assert r.val_psnr_interp == pytest.approx(psnr01(target, interp, rng), abs=1e-4)
    # the held-out figure is the composition's own, scored on that pair (not a sum of the stages' gains)
    from selfres.infer import predict_array

    composed = predict_array(r.model, low, factors=(1, 4, 4), tile_size=(8, 64, 64), device="cpu", amp=True)
    assert r.val_psnr_model == pytest.approx(psnr01(target, composed, rng), abs=1e-3)
    assert ("model_worse_than_interpolation" in r.flags) == (not r.val_psnr_model > r.val_psnr_interp + 0.2)


def test_time_budget_stops_between_validations():
    train, held = _data()
    s = TrainSettings(steps=10_000, **TINY | {"validate_every": 10_000, "max_minutes": 1e-9})
    r = train_enhance(train, held, factors=(1, 2, 2), settings=s)
    assert r.stop_reason == "time_budget" and r.steps_done == 1
    assert len(r.log_rows) == 1  # the budget stop is validated, so the best checkpoint is still chosen


def test_a_time_budget_stop_while_the_held_out_score_rises_is_flagged(caplog):
    """`stopped_while_improving`: the budget ended a training whose kept model came at one of
    its last two validations (not the untrained start); a plateau or no gain is not flagged."""
    from selfres.train import Selection

    model = torch.nn.Linear(1, 1)
    sel = Selection.start(model, psnr=30.0, score=30.0, patience=8)
    assert not sel.still_improving  # nothing learned yet
    for step, psnr in ((5, 31.0), (10, 31.0)):
        sel.observe(model, step=step, psnr=psnr, score=psnr, row={})
    assert sel.still_improving  # best at the last but one
    sel.observe(model, step=15, psnr=30.5, score=30.5, row={})
    assert not sel.still_improving  # two validations without gain: a plateau
    sel.observe(model, step=20, psnr=32.0, score=32.0, row={})
    assert sel.still_improving
    with caplog.at_level("INFO", logger="selfres"):
        assert sel.budget_stop_flags(0.15) == ["stopped_while_improving"]
    said = caplog.text  # the budget as configured, not 0.1
    assert "time budget of 0.15 min reached" in said and "(train.max_minutes 0.15)" in said

    # wired into training: a clock that moves one second each time it is read ends the
    # 30-second budget after a few validations, whatever the machine's speed
    import itertools
    import types

    import selfres.train as train_module

    train, held = _data()
    seen = set()
    for lr in (3e-3, 1e-9):
        clock = itertools.count()
        fake_time = types.SimpleNamespace(monotonic=lambda: float(next(clock)), time=lambda: float(next(clock)))
        s = TrainSettings(steps=10_000, **TINY | {"validate_every": 4, "max_minutes": 0.5, "learning_rate": lr})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_module, "time", fake_time)
            r = train_enhance(train, held, factors=(1, 2, 2), settings=s)
        assert r.stop_reason == "time_budget" and len(r.log_rows) >= 3
        rising = r.best_step > 0 and r.best_step in [row["step"] for row in r.log_rows[-2:]]
        assert ("stopped_while_improving" in r.flags) == rising
        seen.add(rising)
    assert seen == {True, False}


@pytest.mark.parametrize("deg", [
    {"method": "gaussian", "sigma_um": [0.0, 0.2, 0.2]},
    {"method": "gaussian", "na": 0.8, "wavelength_um": 0.52, "refractive_index": 1.33, "noise": "poisson_gaussian",
     "gain": 200.0},
])
def test_degradation_from_settings_reaches_training_and_validation(deg):
    from selfres.errors import InputError
    from selfres.settings import Settings, from_dict
    from selfres.train import holdout_pair, make_degradation, psnr01

    s = from_dict(Settings, {"train": TINY | {"steps": 1, "validate_every": 1, "degradation": deg}}).train
    train, held = _data()
    vs = (0.5, 0.1, 0.1)
    d = make_degradation(s.degradation, voxel_size=vs)
    assert d.method == "gaussian" and d.sigma_px[1] > 1.0 and d.noise == deg.get("noise", "none")
    r = train_enhance(train, held, factors=(1, 2, 2), settings=s, voxel_size=vs)
    target, _, interp = holdout_pair(held, (1, 2, 2), d)
    rng = float(target.max() - target.min())
    assert r.val_psnr_interp == pytest.approx(psnr01(target, interp, rng), abs=1e-4)
    _, _, cubic_interp = holdout_pair(held, (1, 2, 2), degrade.Degradation())
    assert abs(psnr01(target, cubic_interp, rng) - r.val_psnr_interp) > 0.3  # not the cubic default
    with pytest.raises(InputError, match="voxel size"):
        make_degradation(s.degradation, voxel_size=None)


def test_block_degradation_from_settings_needs_no_voxel_size_and_reaches_validation():
    from selfres.settings import Settings, from_dict
    from selfres.train import holdout_pair, make_degradation, psnr01

    s = from_dict(Settings, {"train": TINY | {"steps": 1, "validate_every": 1,
                                              "degradation": {"method": "block", "noise": "none"}}}).train
    d = make_degradation(s.degradation, voxel_size=None)
    assert d.method == "block" and d.sigma_px is None
    train, held = _data()
    r = train_enhance(train, held, factors=(1, 2, 2), settings=s)
    target, low, interp = holdout_pair(held, (1, 2, 2), d)
    np.testing.assert_allclose(low, degrade.degrade(target, (1, 2, 2), degrade.Degradation(method="block")))
    assert r.val_psnr_interp == pytest.approx(psnr01(target, interp, float(target.max() - target.min())), abs=1e-4)


def test_coarse_pair_is_one_scale_coarser_and_skipped_when_too_small():
    from selfres.train import coarse_pair

    vol = blob_volume((8, 40, 36))
    t, lo, it = coarse_pair(vol, (1, 2, 2), degrade.Degradation())
    assert t.shape == (8, 20, 18) and lo.shape == (8, 10, 9) and it.shape == t.shape
    np.testing.assert_allclose(t, degrade.downscale_cubic(vol, (1, 2, 2)), atol=1e-6)
    assert coarse_pair(vol[:, :12], (1, 2, 2), degrade.Degradation()) is None


def test_best_checkpoint_must_beat_tricubic_on_both_scales():
    train, held = _data()
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=30, **TINY))
    gains = [(row["val_psnr_model"] - row["val_psnr_interp"], row["val_coarse_gain"]) for row in r.log_rows]
    assert all(np.isfinite(c) for _, c in gains)
    if r.best_step:
        best = next(g for row, g in zip(r.log_rows, gains) if row["step"] == r.best_step)
        assert min(best) > 0 and min(best) >= max(min(g) for g in gains) - 0.01 - 1e-9  # 0.01 dB hysteresis
    else:
        assert "model_worse_than_interpolation" in r.flags


def _scripted_validation(monkeypatch, module, gains):
    """Make ``module``'s held-out scores follow ``gains`` (one tuple per validation, the start
    included: the gain over the baseline of each scored target, in the order the targets are first
    scored) and record the weights each validation saw, by step (a spy on ``Selection.observe``).
    Training itself runs as it is; only what the validations read is scripted."""
    real_psnr = module.psnr01
    calls: dict[int, int] = {}
    order: list[int] = []

    def psnr01(target, pred, data_range):
        key = id(target)
        if key not in calls:
            order.append(key)
            calls[key] = 0
            return 30.0  # the baseline (tricubic) is each target's first score
        k, which = calls[key], order.index(key)
        calls[key] += 1
        return 30.0 + gains[k][which] if k < len(gains) else real_psnr(target, pred, data_range)

    monkeypatch.setattr(module, "psnr01", psnr01)
    return weights_at_each_validation(monkeypatch)


def test_training_keeps_and_returns_the_checkpoint_best_by_the_smaller_of_its_two_gains(monkeypatch):
    """The kept checkpoint is the one whose smaller gain (held-out, coarse scale) is the highest -
    not the best held-out figure (step 10, whose coarse-scale gain fell) and not the last step -
    and the model returned carries that checkpoint's weights, which the figures describe."""
    from selfres import train as train_mod

    train, held = _data()
    gains = [(0.0, 0.0), (1.0, 2.0), (3.0, 0.5), (2.0, 1.5), (1.2, 1.0), (0.8, 0.8), (0.5, 0.5)]
    seen = _scripted_validation(monkeypatch, train_mod, gains)
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=30, **TINY))
    assert [row["step"] for row in r.log_rows] == [5, 10, 15, 20, 25, 30]
    assert [round(row["val_coarse_gain"], 6) for row in r.log_rows] == [g[1] for g in gains[1:]]
    assert r.best_step == 15 and r.val_psnr_model == pytest.approx(32.0)
    assert "model_worse_than_interpolation" not in r.flags
    kept, last = seen[15], seen[30]
    assert any(not torch.equal(kept[k], last[k]) for k in kept)  # the weights moved after the kept step
    returned = r.model.state_dict()
    assert all(torch.equal(returned[k], kept[k]) for k in kept)


def test_a_kept_checkpoint_whose_coarse_scale_gain_stays_below_zero_is_flagged(monkeypatch):
    """A network that does not start as tricubic can start below it: a later checkpoint that beats
    the start but still loses on the coarse scale is kept, and flagged however large its
    held-out gain (the coarse-scale check is what the held-out figure cannot see)."""
    from selfres import train as train_mod

    train, held = _data()
    gains = [(0.5, -3.0), (2.0, -1.0), (1.5, -2.0), (1.0, -2.5)]
    _scripted_validation(monkeypatch, train_mod, gains)
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=15, **TINY))
    assert r.best_step == 5 and r.val_psnr_model == pytest.approx(32.0)
    assert r.coarse_scale_failed and "model_worse_than_interpolation" in r.flags


# ------------------------------------------------ the guard judges what inference writes
def _untrained(train, held):
    return train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(
        steps=1, **TINY | {"validate_every": 1, "learning_rate": 1e-9}))


def test_guard_with_back_projection_scores_the_wrapped_model():
    """The network alone equals tricubic (flagged); with one back-projection iteration the output
    the user gets is re-scored on the held-out region, beats tricubic there, and is not flagged."""
    from selfres.train import guard_with_extras

    train, held = _data()
    r = _untrained(train, held)
    assert "model_worse_than_interpolation" in r.flags
    psnr, flags = guard_with_extras(r, factors=(1, 2, 2), degradation=degrade.Degradation(),
                                    extras={"ensemble": False, "back_projection_iterations": 1}, margin_db=0.2,
                                    confidence=0.0)
    assert psnr > r.val_psnr_interp + 0.2, (psnr, r.val_psnr_interp)
    assert "model_worse_than_interpolation" not in flags
    # no extras: the training verdict and figure stand as they are
    psnr0, flags0 = guard_with_extras(r, factors=(1, 2, 2), degradation=degrade.Degradation(),
                                      extras={"ensemble": False, "back_projection_iterations": 0}, margin_db=0.2,
                                      confidence=0.95)
    assert psnr0 == r.val_psnr_model and flags0 == r.flags


def test_guard_lets_a_consistent_small_gain_through_only_when_nothing_was_learned():
    """Below the margin, tricubic + back-projection (best step 0) passes on a gain that every
    resample keeps above 0; the same output from a learned network (best step > 0) still needs
    the margin, and confidence 0 is the margin alone for both."""
    from dataclasses import replace

    from selfres.train import guard_with_extras

    train, held = _data()
    r = _untrained(train, held)
    bp = {"ensemble": False, "back_projection_iterations": 1}

    def flagged(result, confidence):
        _, flags = guard_with_extras(result, factors=(1, 2, 2), degradation=degrade.Degradation(), extras=bp,
                                     margin_db=10.0, confidence=confidence)  # a margin no output reaches
        return "model_worse_than_interpolation" in flags

    assert not flagged(r, 0.95)
    assert flagged(replace(r, best_step=50), 0.95)
    assert flagged(r, 0.0)


def test_guard_with_extras_keeps_a_learned_mappings_failed_coarse_scale_check():
    """Back-projection can lift a held-out gain past the margin; it does not mend a learned
    mapping whose gain one scale coarser was not above 0 (training's flag stays)."""
    from dataclasses import replace

    from selfres.train import guard_with_extras

    train, held = _data()
    r = _untrained(train, held)
    bp = {"ensemble": False, "back_projection_iterations": 1}
    learned = replace(r, best_step=50, flags=[])
    _, flags = guard_with_extras(learned, factors=(1, 2, 2), degradation=degrade.Degradation(), extras=bp,
                                 margin_db=0.2, confidence=0.0)
    assert "model_worse_than_interpolation" not in flags  # the wrapped output passes the margin
    _, flags = guard_with_extras(replace(learned, coarse_scale_failed=True), factors=(1, 2, 2),
                                 degradation=degrade.Degradation(), extras=bp, margin_db=0.2, confidence=0.0)
    assert "model_worse_than_interpolation" in flags


def test_guard_with_back_projection_flags_a_wrapped_model_that_does_not_beat_tricubic():
    """A dead network (all zeros) wrapped in one back-projection gives exactly tricubic of the
    input: no gain, so the guard flags it although training had not."""
    from dataclasses import replace

    from selfres.train import guard_with_extras

    train, held = _data()
    r = _untrained(train, held)

    class Zero(torch.nn.Module):
        factors, halo = (1, 2, 2), (0, 0, 0)

        def forward(self, x):
            return torch.zeros(*x.shape[:2], *(n * f for n, f in zip(x.shape[2:], self.factors)))

    dead = replace(r, model=Zero(), flags=[], val_psnr_model=r.val_psnr_interp + 5)
    for confidence in (0.0, 0.95):  # tricubic to float rounding is no "consistent gain" either
        psnr, flags = guard_with_extras(dead, factors=(1, 2, 2), degradation=degrade.Degradation(),
                                        extras={"ensemble": False, "back_projection_iterations": 1}, margin_db=0.2,
                                        confidence=confidence)
        assert psnr == pytest.approx(r.val_psnr_interp, abs=0.05)
        assert "model_worse_than_interpolation" in flags


def test_guard_passes_a_small_gain_only_when_every_resample_keeps_it_above_zero():
    """Below the margin, a gain passes when its bootstrap interval is above 0 (small but
    consistent), not when it straddles 0 (one lucky corner); confidence 0 is the margin alone."""
    from selfres.train import guard_passes

    rng = np.random.default_rng(1)
    target = rng.random((16, 48, 48)).astype(np.float32)
    interp = target + 0.05 * rng.standard_normal(target.shape).astype(np.float32)
    small = target + 0.99 * (interp - target)  # 1 % less error in every voxel: +0.09 dB everywhere
    ok, gain, interval = guard_passes(target, small, interp, margin_db=0.2, confidence=0.95)
    assert 0 < gain < 0.2 and interval[0] > 0 and ok
    assert guard_passes(target, small, interp, margin_db=0.2, confidence=0.0)[0] is False
    lucky = target + 1.003 * (interp - target)  # a little worse everywhere, but perfect in one of 32 blocks
    lucky[:8, :12, :12] = target[:8, :12, :12]
    ok, gain, interval = guard_passes(target, lucky, interp, margin_db=0.2, confidence=0.95)
    assert 0 < gain < 0.2 and interval[0] < 0 < interval[1] and not ok
    big = target + 0.03 * rng.standard_normal(target.shape).astype(np.float32)
    assert guard_passes(target, big, interp, margin_db=0.2, confidence=0.0)[0] is True


def test_l1_fft_loss_charges_missing_spectral_energy_not_phase():
    """The Fourier-amplitude term is blind to a (circular) shift, which only changes phases,
    and charges a blurred prediction, whose fine-detail energy is missing."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 1, 32, 32, generator=g)
    assert loss_fn("l1_fft", target, target).item() == 0.0
    shifted = torch.roll(target, shifts=(3, 5), dims=(3, 4))
    assert loss_fn("l1_fft", shifted, target).item() == pytest.approx(loss_fn("l1", shifted, target).item(), rel=1e-5)
    k = torch.ones(1, 1, 1, 3, 3) / 9
    blurred = torch.nn.functional.conv3d(target, k, padding=(0, 1, 1))
    extra = loss_fn("l1_fft", blurred, target).item() - loss_fn("l1", blurred, target).item()
    assert extra > 0.05 * loss_fn("l1", blurred, target).item()
    assert loss_fn("l1_fft", blurred, target, fft_weight=0.0).item() == pytest.approx(
        loss_fn("l1", blurred, target).item())


def test_qc_self_validation_scores_the_wrapped_model_and_still_sees_a_dead_network():
    """QC re-scores what restored.ome.zarr holds (network + back-projection), and a dead
    network stays visible although back-projection alone would turn its zeros into tricubic."""
    from types import SimpleNamespace

    from selfres import qc
    from selfres.settings import DegradationSettings, to_dict

    train, held = _data()
    vol = SimpleNamespace(data=np.concatenate([train, held], axis=1))
    fov = SimpleNamespace(holdout=((0, 8), (36, 48), (0, 48)))
    meta = {"factors": [1, 2, 2], "settings": {"degradation": to_dict(DegradationSettings())}, "voxel_size_in": None}

    class Zero(torch.nn.Module):
        factors, halo = (1, 2, 2), (0, 0, 0)

        def forward(self, x):
            return torch.zeros(*x.shape[:2], *(n * f for n, f in zip(x.shape[2:], self.factors)))

    plain = qc.self_validation(vol, fov, Zero(), meta)
    assert plain["dead_output"] and plain["inference_extras"] is None
    bp = qc.self_validation(vol, fov, Zero(), meta | {"inference_extras": {
        "ensemble": False, "back_projection_iterations": 1}})
    assert bp["dead_output"], "a dead network must be flagged even when back-projection hides it"
    assert bp["psnr_model"] == pytest.approx(bp["psnr_interp"], abs=0.05)  # zeros + one BP step = tricubic
    assert bp["inference_extras"] == {"ensemble": False, "back_projection_iterations": 1}
    # a held-out region of empty background (one cell in a dark field): nothing to vary, not dead
    dark = SimpleNamespace(data=np.concatenate([train, np.zeros_like(held)], axis=1))
    assert not qc.self_validation(dark, fov, Zero(), meta)["dead_output"]


def test_qc_writes_an_unbounded_end_of_the_gain_interval_as_null(monkeypatch):
    """An end of the held-out gain's interval is infinite where a share of the resamples drew only
    blocks one output reproduces exactly: metrics.json must stay strict JSON (null, not Infinity)."""
    import json
    from types import SimpleNamespace

    from selfres import metrics, qc
    from selfres.settings import DegradationSettings, to_dict

    train, held = _data()
    vol = SimpleNamespace(data=np.concatenate([train, held], axis=1))
    fov = SimpleNamespace(holdout=((0, 8), (36, 48), (0, 48)))
    meta = {"factors": [1, 2, 2], "settings": {"degradation": to_dict(DegradationSettings())}, "voxel_size_in": None}
    monkeypatch.setattr(metrics, "psnr_gain_interval", lambda *a, **k: (0.4321, float("inf")))
    sv = qc.self_validation(vol, fov, torch.nn.Upsample(scale_factor=(1, 2, 2)), meta)
    assert sv["gain_db_interval"] == [0.432, None]
    json.dumps(sv["gain_db_interval"], allow_nan=False)


def test_qc_self_validation_scores_in_the_guards_precision(monkeypatch):
    """`infer.amp: false` turns mixed precision off everywhere: QC's re-score of the held-out
    region took bf16 on any CPU that has it, so its figures (and the flag it derives) changed
    with the node the qc job landed on."""
    from types import SimpleNamespace

    from selfres import infer, qc
    from selfres.settings import DegradationSettings, to_dict

    train, held = _data()
    vol = SimpleNamespace(data=np.concatenate([train, held], axis=1))
    fov = SimpleNamespace(holdout=((0, 8), (36, 48), (0, 48)))
    meta = {"factors": [1, 2, 2], "settings": {"degradation": to_dict(DegradationSettings())}, "voxel_size_in": None}
    asked = []
    real = infer.predict_array
    monkeypatch.setattr(infer, "predict_array", lambda *a, **k: asked.append(k.get("amp", True)) or real(*a, **k))
    net = torch.nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")
    net.factors, net.halo = (1, 2, 2), (0, 0, 0)
    qc.self_validation(vol, fov, net, meta | {"guard_amp": False})
    qc.self_validation(vol, fov, net, meta)  # a model from before guard_amp: as before
    assert asked == [False, True]


def test_selection_keeps_the_best_stops_after_patience_and_round_trips():
    from selfres.train import Selection

    net = torch.nn.Linear(2, 1)
    sel = Selection.start(net, psnr=30.0, score=0.0, patience=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert sel.observe(net, step=5, psnr=31.0, score=0.5, row={"step": 5})
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert not sel.observe(net, step=10, psnr=31.0, score=0.505, row={"step": 10})  # within MIN_GAIN_DB
    assert not sel.exhausted
    assert not sel.observe(net, step=15, psnr=29.0, score=-1.0, row={"step": 15})
    assert sel.exhausted and sel.best_step == 5 and sel.best_psnr == 31.0
    assert torch.all(sel.best_state["weight"] == 1.0)  # a copy taken at step 5, not the live weights
    again = Selection.start(net, psnr=0.0, score=0.0, patience=2)
    again.load_state_dict(sel.state_dict())
    assert (again.best_step, again.best_score, again.bad_validations, again.rows) == (5, 0.5, 2, sel.rows)
    old = {k: v for k, v in sel.state_dict().items() if k != "best_score"}  # a checkpoint from before best_score
    again.load_state_dict(old, score_of_psnr=lambda p: p - 30.0)
    assert again.best_score == 1.0


def test_psf_scaled_targets_have_the_output_grids_blur_to_voxel_ratio():
    """A point seen through a PSF of σ s voxels looks σ f·s voxels wide on the f× finer grid;
    PSF-scaled targets give the acquisition that width (per axis; factor-1 axes untouched)."""
    from selfres.errors import InputError
    from selfres.train import psf_scaled_targets, psf_target_blur_px

    s, v = 1.5, 0.2  # PSF σ in voxels of the acquisition, voxel size µm
    blur = psf_target_blur_px((0.3, s * v, s * v), (1, 2, 4), (1.0, v, v))
    assert blur == pytest.approx((0.0, s * np.sqrt(3), s * np.sqrt(15)))
    vol = np.zeros((9, 97, 97), np.float32)
    vol[4, 48, 48] = 1
    from scipy import ndimage

    vol = ndimage.gaussian_filter(vol, (1.0, s, s))
    out = psf_scaled_targets(vol, blur)

    def width(img, axis):
        prof = img.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.float64)
        x = np.arange(prof.size) - prof.size // 2
        return float(np.sqrt((prof * x**2).sum() / prof.sum()))

    assert width(out, 0) == pytest.approx(width(vol, 0), rel=1e-6)
    assert width(out, 1) == pytest.approx(2 * s, rel=0.02)
    assert width(out, 2) == pytest.approx(4 * s, rel=0.02)
    assert psf_scaled_targets(vol, None) is vol and psf_scaled_targets(vol, (0, 0, 0)) is vol
    assert psf_target_blur_px(None, (2, 2, 2), None) is None
    with pytest.raises(InputError, match="sample.tif.*voxel size"):
        psf_target_blur_px((1, 1, 1), (2, 2, 2), None, path="sample.tif")


def test_psf_scaled_targets_keep_point_sources_from_being_sharpened_past_the_psf():
    """×4 on point sources: pairs made from the acquisition alone teach the net that a sub-voxel
    point becomes a sharp point, so one scale finer it shrinks the beads below the PSF and loses
    to tricubic; with the PSF given, the beads keep the PSF's width, the output is closer to the
    truth than tricubic, and the guard's held-out pair (PSF-scaled too) lets it through."""
    from selfres import demo
    from selfres.train import guard_with_extras

    f = (1, 4, 4)
    hr = demo.make_beads(shape=(6, 192, 192), n_beads=120, sigma_px=(1.0, 2.0, 2.0), seed=1)
    low = demo.downsample_acquisition(hr, f)
    hr = hr[:, : low.shape[1] * 4, : low.shape[2] * 4]
    train, held = low[:, :36], low[:, 36:]
    # noise-free sub-voxel points: the noise estimate of the default top-up would read part of
    # them as noise (docs/quality.md, "Tenth session"); this test is about the PSF alone
    from selfres.settings import DegradationSettings

    settings = dict(TINY, patch_size=(4, 32, 32), learning_rate=3e-3, validate_every=10, patience=50,
                    degradation=DegradationSettings(noise="none"))
    plain = train_enhance(train, held, factors=f, settings=TrainSettings(steps=150, **settings))
    psf = train_enhance(train, held, factors=f, voxel_size=(1.0, 1.0, 1.0),
                        settings=TrainSettings(steps=150, psf_sigma_um=(0.0, 0.5, 0.5), **settings))
    tricubic = degrade.upscale_cubic(low, f)

    def err(model):
        with torch.no_grad():
            out = model(torch.from_numpy(low)[None, None]).numpy()[0, 0]
        return float(np.mean((out - hr) ** 2))

    e_tri = float(np.mean((tricubic - hr) ** 2))
    assert err(psf.model) < 0.95 * e_tri, (err(psf.model), e_tri)  # measured 0.85
    assert "model_worse_than_interpolation" not in psf.flags
    _, flags = guard_with_extras(psf, factors=f, degradation=degrade.Degradation(),
                                 extras={"ensemble": False, "back_projection_iterations": 1}, margin_db=0.2,
                                 confidence=0.95)
    assert "model_worse_than_interpolation" not in flags
    # without the PSF the network's best is no better than tricubic (it over-sharpens), and the guard says so
    assert "model_worse_than_interpolation" in plain.flags
    assert plain.best_step == 0 or err(plain.model) > err(psf.model)


def test_qc_self_validation_scores_psf_scaled_held_out_targets_when_training_used_them():
    """With train.psf_sigma_um set, the QC held-out pair is made from the PSF-scaled held-out
    region, as in training and the guard: the same tricubic figure, not the raw region's."""
    from types import SimpleNamespace

    from selfres import qc
    from selfres.settings import DegradationSettings, to_dict
    from selfres.train import holdout_pair, psf_scaled_targets, psf_target_blur_px, psnr01

    train, held = _data()
    vol = SimpleNamespace(data=np.concatenate([train, held], axis=1))
    fov = SimpleNamespace(holdout=((0, 8), (36, 48), (0, 48)))
    base = {"factors": [1, 2, 2], "voxel_size_in": [1.0, 0.5, 0.5]}
    settings = {"degradation": to_dict(DegradationSettings())}
    identity = _untrained(train, held).model
    raw = qc.self_validation(vol, fov, identity, base | {"settings": settings})
    scaled = qc.self_validation(vol, fov, identity, base | {"settings": settings | {"psf_sigma_um": [0, 0.6, 0.6]}})
    target, _, interp = holdout_pair(psf_scaled_targets(held, psf_target_blur_px((0, 0.6, 0.6), (1, 2, 2), (1, .5, .5))),
                                     (1, 2, 2), degrade.Degradation())
    expected = psnr01(target, interp, float(target.max() - target.min()))
    assert scaled["psnr_interp"] == pytest.approx(expected, abs=1e-6)
    assert abs(scaled["psnr_interp"] - raw["psnr_interp"]) > 1.0


def test_blur_of_a_tensor_equals_scipy_with_mirrored_borders():
    """blur_targets blurs tensors with degrade.blur: the numpy blur's kernel, on the tensor's device."""
    from scipy.ndimage import gaussian_filter

    x = torch.rand(1, 1, 6, 20, 23, generator=torch.Generator().manual_seed(0))
    sigma = (0.0, 1.3, 0.6)
    got = degrade.blur(x, sigma_px=sigma)[0, 0].numpy()
    want = gaussian_filter(x[0, 0].numpy().astype(np.float64), sigma, mode="mirror", truncate=3.0)
    np.testing.assert_allclose(got, want, atol=2e-3)  # scipy's kernel here is cut at 3σ, degrade's at 4σ
    np.testing.assert_allclose(got, degrade.blur(x[0, 0].numpy(), sigma_px=sigma), atol=1e-5)
    assert torch.equal(degrade.blur(x, sigma_px=(0.0, 0.0, 0.0)), x)


def test_blur_targets_blurs_the_chosen_fraction_along_scaled_axes_only():
    from selfres.train import blur_targets

    gen = torch.Generator().manual_seed(0)
    # varies along every axis; factor 1 along z, so no draw may blur along z
    t = torch.rand(64, 1, 4, 16, 16, generator=gen)
    same = blur_targets(t, (1, 2, 2), fraction=0.0, max_sigma_px=1.0, generator=torch.Generator().manual_seed(1))
    assert same is t
    out = blur_targets(t, (1, 2, 2), fraction=0.5, max_sigma_px=1.0, generator=torch.Generator().manual_seed(1))
    again = blur_targets(t, (1, 2, 2), fraction=0.5, max_sigma_px=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # reproducible from the generator
    changed = [(out[i] - t[i]).abs().max().item() > 1e-6 for i in range(64)]
    assert 20 < sum(changed) < 44  # about half
    # targets that vary along z alone come back unchanged: the blur acts within planes only
    z_only = torch.rand(64, 1, 4, 1, 1, generator=gen).expand(64, 1, 4, 16, 16).contiguous()
    kept = blur_targets(z_only, (1, 2, 2), fraction=1.0, max_sigma_px=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(kept, z_only, atol=1e-5, rtol=0)
    # blurring lowers the lateral variation of the targets it touched
    lat = lambda v: (v[..., 1:] - v[..., :-1]).pow(2).mean().item()  # noqa: E731
    assert all(lat(out[i]) < lat(t[i]) for i in range(64) if changed[i])


def test_blur_augment_reaches_training_and_is_validated():
    from selfres.errors import ConfigError

    vol = blob_volume((12, 48, 48), seed=2)
    plain = train_enhance(vol[:, :36], vol[:, 36:], factors=(1, 2, 2), settings=TrainSettings(steps=5, blur_augment=0.0, **TINY))
    aug = train_enhance(vol[:, :36], vol[:, 36:], factors=(1, 2, 2),
                        settings=TrainSettings(steps=5, blur_augment=1.0, **TINY))
    # the same seed and patches: only the blurred targets make the training losses differ
    assert plain.log_rows[0]["loss"] != aug.log_rows[0]["loss"]
    # PSF-scaled targets already have the output grid's blur-to-voxel ratio: no blur on top
    with_psf = [train_enhance(vol[:, :36], vol[:, 36:], factors=(1, 2, 2), voxel_size=(1.0, 1.0, 1.0),
                              settings=TrainSettings(steps=5, blur_augment=b, psf_sigma_um=(0.0, 0.5, 0.5), **TINY))
                for b in (0.0, 1.0)]
    assert with_psf[0].log_rows[0]["loss"] == with_psf[1].log_rows[0]["loss"]
    for bad in ({"blur_augment": 1.5}, {"blur_augment_sigma_px": 0.0}):
        with pytest.raises(ConfigError):
            TrainSettings(**bad).validate()


@pytest.mark.parametrize("killed_at", ["before the rename", "after the rename"])
def test_a_checkpoint_replaced_at_the_moment_of_a_kill_is_still_accepted(tmp_path, monkeypatch, killed_at):
    """Killed while a new checkpoint replaces the old, the folder holds one of the two and its
    side file accepts it (it used to hold the new checkpoint without its digest: training then
    started afresh)."""
    import selfres.train as train_module
    from selfres.train import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    class Killed(Exception):
        pass

    real_replace, real_write = train_module.os.replace, train_module.write_text_atomic
    writes = []

    def replace(src, dst):
        if killed_at == "before the rename":
            raise Killed
        real_replace(src, dst)

    def write(side, text):
        writes.append(text)
        if killed_at == "after the rename" and len(writes) == 2:
            raise Killed
        real_write(side, text)

    monkeypatch.setattr(train_module.os, "replace", replace)
    monkeypatch.setattr(train_module, "write_text_atomic", write)
    with pytest.raises(Killed):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == (1 if killed_at == "before the rename" else 2)
    save_checkpoint(path, {"step": 3})  # and the next save leaves a single digest
    assert load_checkpoint(path)["step"] == 3
    assert len((tmp_path / "checkpoint.pt.sha256").read_text().split()) == 1


# ------------------------------------------------ mutation review of the guard (tests that kill survivors)
def _qc_view(held_part):
    from types import SimpleNamespace

    train, held = _data()
    held = held if held_part is None else held_part
    return (SimpleNamespace(data=np.concatenate([train, held], axis=1)),
            SimpleNamespace(holdout=((0, 8), (36, 36 + held.shape[1]), (0, 48))), held)


def test_qc_self_validation_keeps_the_model_and_the_interpolation_apart():
    """QC's held-out figures say which side won: a network that outputs zeros scores its own
    (low) PSNR as psnr_model, tricubic's as psnr_interp, and its gain interval lies below 0.
    Swapping the two in the comparison or in the interval failed no test (a mutation review)."""
    from selfres import qc
    from selfres.settings import DegradationSettings, to_dict
    from selfres.train import holdout_pair, psnr01

    vol, fov, held = _qc_view(None)
    meta = {"factors": [1, 2, 2], "settings": {"degradation": to_dict(DegradationSettings())}, "voxel_size_in": None}

    class Zero(torch.nn.Module):
        factors, halo = (1, 2, 2), (0, 0, 0)

        def forward(self, x):
            return torch.zeros(*x.shape[:2], *(n * f for n, f in zip(x.shape[2:], self.factors)))

    sv = qc.self_validation(vol, fov, Zero(), meta)
    target, _, interp = holdout_pair(held, (1, 2, 2), degrade.Degradation())
    data_range = float(target.max() - target.min())
    assert sv["psnr_interp"] == pytest.approx(psnr01(target, interp, data_range), abs=1e-4)
    assert sv["psnr_model"] == pytest.approx(psnr01(target, np.zeros_like(target), data_range), abs=1e-4)
    assert sv["psnr_model"] < sv["psnr_interp"] - 3
    lo, hi = sv["gain_db_interval"]
    assert lo <= hi < 0  # the model lost in every resample


def test_qc_self_validation_repairs_the_held_out_region_only_for_a_model_trained_on_repaired_data():
    """A model whose training repaired the hot pixels (model.json records sensor_defects_repaired)
    is scored on the repaired held-out region; one trained before the repair on the region as
    acquired, as its training scored it. Inverting that choice failed no test (a mutation review)."""
    from selfres import qc
    from selfres.fov import repaired_box
    from selfres.settings import DegradationSettings, to_dict
    from selfres.train import holdout_pair, psnr01

    _, held = _data()
    held = held.copy()
    held[:, 5, 7] = 40.0  # a hot pixel, the same in every plane
    held[:, 8, 30] = 25.0
    vol, fov, held = _qc_view(held)
    meta = {"factors": [1, 2, 2], "settings": {"degradation": to_dict(DegradationSettings())}, "voxel_size_in": None}
    identity = torch.nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")
    identity.factors, identity.halo = (1, 2, 2), (0, 0, 0)

    def interp_psnr(region):
        target, _, interp = holdout_pair(region, (1, 2, 2), degrade.Degradation())
        return psnr01(target, interp, float(target.max() - target.min()))

    repaired, n = repaired_box(vol.data, fov.holdout)
    assert n == 2
    as_acquired, as_repaired = interp_psnr(held), interp_psnr(repaired)
    assert abs(as_acquired - as_repaired) > 1.0
    old = qc.self_validation(vol, fov, identity, meta)
    new = qc.self_validation(vol, fov, identity, meta | {"sensor_defects_repaired": 2})
    assert old["psnr_interp"] == pytest.approx(as_acquired, abs=1e-4)
    assert new["psnr_interp"] == pytest.approx(as_repaired, abs=1e-4)


@pytest.mark.parametrize("case", ["passes", "within_margin", "stage1_coarse_failed", "stage2_coarse_failed"])
def test_the_serial_guard_asks_the_margin_of_the_composition_and_keeps_each_stages_coarse_scale_check(
        monkeypatch, case):
    """Serial ×4: the composition is flagged unless it beats tricubic ×4 by train.guard_margin_db,
    and whatever its gain when either stage's kept checkpoint failed the coarse-scale check; a
    stage's own flag does not carry over to a composition that passes. The stages train as they
    are; only the composition's two held-out scores are scripted. Dropping the margin, either
    stage's check or the stages' flag filter failed no test (a mutation review)."""
    from selfres import train as train_mod

    real = train_mod.train_enhance
    stages = []

    def stage(*args, **kwargs):
        r = real(*args, **kwargs)
        if kwargs["settings"].x4_strategy != "direct":  # the serial call itself
            return r
        stages.append(r)
        r = dataclasses.replace(r, flags=list(dict.fromkeys(r.flags + ["model_worse_than_interpolation"])),
                                coarse_scale_failed=case == f"stage{len(stages)}_coarse_failed")
        if len(stages) == 2:  # the composition's scores: the model's, then tricubic's
            scores = iter([30.1 if case == "within_margin" else 40.0, 30.0])
            monkeypatch.setattr(train_mod, "psnr01", lambda *a: next(scores))
        return r

    monkeypatch.setattr(train_mod, "train_enhance", stage)
    vol = blob_volume((4, 64, 64), n=150, sigma=(1.0, 1.5, 1.5), seed=1)
    s = TrainSettings(steps=1, x4_strategy="serial", guard_margin_db=0.2, **TINY | {"validate_every": 1})
    r = train_mod.train_enhance(vol[:, :48], vol[:, 48:], factors=(1, 4, 4), settings=s)
    assert len(stages) == 2 and r.val_psnr_interp == 30.0
    assert ("model_worse_than_interpolation" in r.flags) is (case != "passes"), (case, r.flags)


@pytest.mark.parametrize("gains, best_step, coarse_failed", [
    # nothing beat the start, which (a network that does not start as tricubic) is above tricubic by the margin
    ([(0.5, 0.5), (0.1, 0.1), (0.0, 0.0), (-0.2, -0.2)], 0, False),
    # the kept checkpoint's coarse-scale gain is exactly 0: not above 0, however large its held-out gain
    ([(0.5, -1.0), (1.0, 0.0), (0.5, -2.0), (0.2, -3.0)], 5, True),
])
def test_the_guard_flags_a_start_that_was_never_improved_on_and_a_coarse_scale_gain_of_exactly_zero(
        monkeypatch, gains, best_step, coarse_failed):
    """The guard's two rules beside the margin, at their edges: the start kept as the best (best
    step 0: nothing learned) is flagged even where its held-out score clears the margin, and a kept
    checkpoint whose smaller gain is 0 fails the coarse-scale test ('not above 0'). Dropping the
    first rule or reading the second as 'below 0' failed no test (a mutation review)."""
    from selfres import train as train_mod

    train, held = _data()
    _scripted_validation(monkeypatch, train_mod, gains)
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=15, **TINY))
    assert r.best_step == best_step and r.coarse_scale_failed is coarse_failed
    assert r.val_psnr_model - r.val_psnr_interp >= 0.5  # the held-out gain alone clears the margin (0.2 dB)
    assert "model_worse_than_interpolation" in r.flags


def test_guard_passes_reads_its_interval_at_the_confidence_it_is_given():
    """train.guard_confidence sets how sure the guard must be of a gain below the margin: a gain
    won in half of the blocks and lost (less) in the others clears 0 in the central 50 % of
    resamples but not in 95 %. An interval read at a fixed 95 % failed no test (a mutation review)."""
    from selfres.metrics import psnr_gain_interval
    from selfres.train import guard_passes

    rng = np.random.default_rng(1)
    target = rng.random((16, 48, 48)).astype(np.float32)
    interp = target + 0.05 * rng.standard_normal(target.shape).astype(np.float32)
    share = np.full(target.shape, 0.9, np.float32)  # of tricubic's error; the guard's 2×4×4 blocks alternate
    for z, y, x in np.ndindex(2, 4, 4):
        if (z + y + x) % 2:
            share[z * 8:(z + 1) * 8, y * 12:(y + 1) * 12, x * 12:(x + 1) * 12] = 1.05
    mixed = target + share * (interp - target)
    ok, gain, interval = guard_passes(target, mixed, interp, margin_db=0.5, confidence=0.5)
    assert 0 < gain < 0.5 and interval == psnr_gain_interval(target, mixed, interp, level=0.5)
    assert interval[0] > 0 and ok
    ok, _, interval = guard_passes(target, mixed, interp, margin_db=0.5, confidence=0.95)
    assert interval[0] < 0 < interval[1] and not ok


def test_a_small_gain_is_not_consistent_when_resamples_of_exact_background_lose_it_all():
    """Blocks of empty background that tricubic reproduces exactly and the model not (a faint
    offset) are an infinite loss in every resample that draws only them (here 2 of the 32 blocks
    hold structure: about 13 % of the resamples). Those draws were dropped, and a gain under the
    margin, positive in every other draw, passed as consistent."""
    from selfres.train import guard_passes

    rng = np.random.default_rng(2)
    target = np.zeros((16, 48, 48), np.float32)
    target[:8, :12, :24] = rng.random((8, 12, 24))  # structure in two of the guard's 2×4×4 blocks
    interp = target.copy()
    interp[:8, :12, :24] += 0.05 * rng.standard_normal((8, 12, 24)).astype(np.float32)
    model = target + 0.985 * (interp - target) + 1e-4 * rng.standard_normal(target.shape).astype(np.float32)
    ok, gain, interval = guard_passes(target, model, interp, margin_db=0.2, confidence=0.95)
    assert 0 < gain < 0.2  # under the margin: only a consistent gain would pass
    assert interval[0] == -np.inf and interval[1] > 0 and not ok


def test_guard_with_extras_asks_the_margin_of_a_serial_model_when_either_stage_learned():
    """Serial ×4 with back-projection: the confidence rule (a small but consistent gain) is for a
    composition that learned nothing; one whose first or second stage kept a learned checkpoint
    needs the margin. Asking that of both stages failed no test (a mutation review)."""
    from dataclasses import replace

    from selfres.train import guard_with_extras

    train, held = _data()
    r = _untrained(train, held)

    def flagged(stage_steps):
        serial = replace(r, stages=[replace(r, best_step=s) for s in stage_steps])
        _, flags = guard_with_extras(serial, factors=(1, 2, 2), degradation=degrade.Degradation(),
                                     extras={"ensemble": False, "back_projection_iterations": 1},
                                     margin_db=10.0, confidence=0.95)  # a margin no output reaches
        return "model_worse_than_interpolation" in flags

    assert not flagged((0, 0))  # nothing learned: tricubic + back-projection passes on its consistent gain
    assert flagged((50, 0)) and flagged((0, 50))


def test_the_last_step_is_validated_and_can_be_the_kept_checkpoint_when_it_is_off_the_validation_grid(
        monkeypatch):
    """Steps not a multiple of validate_every: the last step's weights are still scored (and kept
    when they are the best) rather than dropped with the steps after the last validation.
    Validating only on the grid failed no test (a mutation review)."""
    from selfres import train as train_mod

    train, held = _data()
    seen = _scripted_validation(monkeypatch, train_mod, [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
    r = train_enhance(train, held, factors=(1, 2, 2), settings=TrainSettings(steps=7, **TINY))
    assert [row["step"] for row in r.log_rows] == [5, 7] and r.steps_done == 7
    assert r.best_step == 7 and r.val_psnr_model == pytest.approx(31.0)
    returned = r.model.state_dict()
    assert all(torch.equal(returned[k], seen[7][k]) for k in seen[7])


def test_a_diverged_training_is_recorded_as_a_stop_and_taken_up_not_trained_on(tmp_path, monkeypatch):
    """A divergence is a stop its checkpoint records: a rerun of the job takes that training up
    (its best checkpoint, the flag) instead of training the dead run's weights on — which a
    rerun with another thread count did once the train stage kept its checkpoints (a review)."""
    import json

    from selfres import train as train_module
    from selfres.train import CHECKPOINT, load_checkpoint

    real, calls = train_module.optimisation_step, {"n": 0}

    def dies_at_the_fourth_step(model, optimiser, loss):
        calls["n"] += 1
        return real(model, optimiser, loss) if calls["n"] < 4 else False

    monkeypatch.setattr(train_module, "optimisation_step", dies_at_the_fourth_step)
    data, held = _data()
    settings = TrainSettings(steps=10, **TINY | {"validate_every": 2})
    first = train_enhance(data, held, factors=(1, 2, 2), settings=settings, work_dir=tmp_path)
    assert first.stop_reason == "diverged" and "training_diverged" in first.flags and first.steps_done == 3
    assert json.loads(load_checkpoint(tmp_path / CHECKPOINT)["stopped"])[0] == "diverged"
    monkeypatch.undo()
    again = train_enhance(data, held, factors=(1, 2, 2), settings=settings, work_dir=tmp_path)
    assert again.taken_up and (again.stop_reason, again.steps_done) == ("diverged", 3)
    assert "training_diverged" in again.flags and again.best_step == first.best_step
