"""Gaps in the tests of selfres.train found by a mutation review: small, direct checks of the
schedule, the losses, patch sampling and fitting, the checks' pairs, the guard, checkpoint
selection and checkpoint files."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from selfres import degrade
from selfres.settings import TrainSettings
from selfres.train import (
    PatchSampler,
    Selection,
    _ssim_torch,
    blur_targets,
    coarse_pair,
    crop_to_multiple,
    fit_patch_size,
    guard_passes,
    learning_rate,
    loss_fn,
)

from ..conftest import blob_volume


# --- learning-rate schedule -------------------------------------------------------------------

def test_constant_schedule_holds_the_learning_rate_after_warm_up():
    """``lr_schedule: constant`` keeps the full rate after warm-up, with no cosine decay."""
    s = TrainSettings(steps=100, warmup_steps=10, learning_rate=1e-3, lr_schedule="constant")
    assert learning_rate(5, s) == pytest.approx(6e-4)  # warm-up still applies
    for step in (10, 50, 99):
        assert learning_rate(step, s) == pytest.approx(1e-3)


def test_cosine_schedule_ends_at_five_percent_and_stays_there():
    """The cosine decay reaches 5 % of the rate at the step limit and never rises after it."""
    s = TrainSettings(steps=100, warmup_steps=10, learning_rate=1e-3)
    assert learning_rate(55, s) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # halfway
    assert learning_rate(100, s) == pytest.approx(5e-5)
    assert learning_rate(150, s) == pytest.approx(5e-5)  # past the end: not a second cosine lobe


# --- losses -----------------------------------------------------------------------------------

def test_ssim_of_flat_images_is_the_luminance_term_and_never_above_one():
    """SSIM follows its formula: flat images give the luminance term alone; any pair scores <= 1."""
    c1 = 0.01**2
    a, b = 0.3, 0.6
    x = torch.full((1, 1, 4, 8, 8), a)
    y = torch.full((1, 1, 4, 8, 8), b)
    assert _ssim_torch(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        p = torch.rand(2, 1, 4, 8, 8, generator=g)
        q = torch.rand(2, 1, 4, 8, 8, generator=g)
        assert _ssim_torch(p, q).item() <= 1.0 + 1e-6
    assert _ssim_torch(p, p).item() == pytest.approx(1.0, abs=1e-5)


def test_charbonnier_ssim_adds_a_tenth_of_the_ssim_loss_to_charbonnier():
    """``charbonnier_ssim`` = Charbonnier + 0.1·(1 − SSIM): a structural difference costs extra."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 4, 8, 8, generator=g)
    y = torch.rand(2, 1, 4, 8, 8, generator=g)
    extra = loss_fn("charbonnier_ssim", x, y) - loss_fn("charbonnier", x, y)
    assert extra.item() == pytest.approx(0.1 * (1 - _ssim_torch(x, y).item()), rel=1e-5)
    assert extra.item() > 0.01


# --- patch sampling ---------------------------------------------------------------------------

def _index_volume(shape):
    """A volume whose every voxel holds its own flat index (so a patch tells where it came from)."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_augmentation_flips_every_axis_including_z():
    """Augmented patches are flipped along z, y and x, each in about half of the draws."""
    vol = _index_volume((4, 8, 8))
    s = PatchSampler(vol, (4, 8, 8), structure_weighting=0.0, augment=True, rotate=False,
                     generator=torch.Generator().manual_seed(0))
    b = s.sample(200)[:, 0]
    flipped = [(b[:, -1, 0, 0] < b[:, 0, 0, 0]).float().mean().item(),   # z runs backwards
               (b[:, 0, -1, 0] < b[:, 0, 0, 0]).float().mean().item(),   # y
               (b[:, 0, 0, -1] < b[:, 0, 0, 0]).float().mean().item()]   # x
    assert all(0.3 < f < 0.7 for f in flipped), flipped


def test_without_rotation_y_stays_y_and_with_it_y_and_x_swap():
    """``rotate=False`` never turns a patch's y into x (unequal lateral factors); ``rotate=True`` does."""
    vol = _index_volume((2, 8, 8))  # index steps by 8 along y, by 1 along x

    def swapped(rotate):
        s = PatchSampler(vol, (2, 8, 8), structure_weighting=0.0, augment=True, rotate=rotate,
                         generator=torch.Generator().manual_seed(0))
        b = s.sample(100)[:, 0]
        return ((b[:, 0, 0, 1] - b[:, 0, 0, 0]).abs() == 8).float().mean().item()  # x steps like y

    assert swapped(False) == 0.0
    assert 0.3 < swapped(True) < 0.7


def test_structure_weighted_origins_reach_every_placement_not_only_the_coarse_grid():
    """Structure-weighted draws jitter within the stride, so origins off the coarse grid occur."""
    shape = (4, 32, 32)
    vol = _index_volume(shape)  # even structure everywhere
    s = PatchSampler(vol, (4, 8, 8), structure_weighting=1.0, augment=False, rotate=False,
                     generator=torch.Generator().manual_seed(0))
    first = s.sample(300)[:, 0, 0, 0, 0].numpy().astype(int)
    _, y, x = np.unravel_index(first, shape)
    assert (y % s.stride[1] != 0).any() and (x % s.stride[2] != 0).any()
    assert y.max() <= 32 - 8 and x.max() <= 32 - 8


def test_structure_weighting_sets_the_share_of_structure_picked_patches():
    """With ``structure_weighting`` 1 nearly every patch lands on the only structure; with 0 few do."""
    vol = np.zeros((4, 64, 64), np.float32)
    vol[:, :12, :12] = blob_volume((4, 12, 12), n=20, sigma=(1.0, 1.0, 1.0))

    def share(w):
        s = PatchSampler(vol, (4, 8, 8), structure_weighting=w, augment=False, rotate=False,
                         generator=torch.Generator().manual_seed(0))
        return (s.sample(200).flatten(1).abs().amax(1) > 0).float().mean().item()

    assert share(1.0) > 0.85
    assert share(0.0) < 0.2


# --- patch fitting and cropping ---------------------------------------------------------------

def test_patch_size_is_never_below_one_factor_and_square_needs_equal_lateral_factors():
    """A patch side below its factor grows to the factor; square patches refuse unequal y, x factors."""
    assert fit_patch_size((1, 2, 2), (1, 80, 80), (1, 4, 4)) == (1, 4, 4)
    with pytest.raises(ValueError, match="equal y and x factors"):
        fit_patch_size((4, 16, 32), (8, 64, 64), (1, 2, 4))
    assert fit_patch_size((4, 16, 32), (8, 64, 64), (1, 2, 4), square=False) == (4, 16, 32)


def test_crop_to_multiple_keeps_the_start_of_each_axis():
    """Cropping to multiples of the factors drops the end of each axis, not its start."""
    vol = _index_volume((5, 7, 9))
    out = crop_to_multiple(vol, (2, 3, 4))
    assert out.shape == (4, 6, 8)
    np.testing.assert_array_equal(out, vol[:4, :6, :8])


# --- the scale-transfer check's pair ----------------------------------------------------------

def test_coarse_pair_needs_four_coarse_voxels_only_on_scaled_axes():
    """An axis of factor 1 may be thin (a 2-plane stack, factors 1, 2, 2): the coarse pair is still made."""
    vol = blob_volume((2, 40, 36), n=30, sigma=(1.0, 1.0, 1.0))
    pair = coarse_pair(vol, (1, 2, 2), degrade.Degradation())
    assert pair is not None
    assert pair[0].shape == (2, 20, 18) and pair[1].shape == (2, 10, 9)
    assert coarse_pair(vol[:, :16, :16], (1, 2, 2), degrade.Degradation()) is not None  # exactly 4 coarse voxels


# --- the guard's rule -------------------------------------------------------------------------

def _guard_arrays(step_toward_target: float):
    """(target, pred, interp): ``pred`` is ``interp`` moved the same share toward the target everywhere,
    so its PSNR gain is the same in every block."""
    rng = np.random.default_rng(0)
    target = rng.random((8, 32, 32))
    interp = target + 0.05 * rng.standard_normal(target.shape)
    pred = interp + step_toward_target * (target - interp)
    return target, pred, interp


def test_a_gain_equal_to_the_margin_does_not_pass():
    """The margin must be exceeded: a gain of exactly ``margin_db`` fails the guard."""
    target, pred, interp = _guard_arrays(0.1)
    _, gain, _ = guard_passes(target, pred, interp, margin_db=0.0, confidence=0.0)
    assert gain > 0.5
    ok, _, interval = guard_passes(target, pred, interp, margin_db=gain, confidence=0.0)
    assert not ok and interval is None
    assert guard_passes(target, pred, interp, margin_db=gain - 1e-6, confidence=0.0)[0]


def test_confidence_zero_means_the_margin_alone():
    """``confidence`` 0 computes no interval, so a small consistent gain below the margin fails."""
    eps = 1 - 10 ** (-0.02 / 20)  # a gain of 0.02 dB in every block
    target, pred, interp = _guard_arrays(eps)
    ok, gain, interval = guard_passes(target, pred, interp, margin_db=0.1, confidence=0.0)
    assert gain == pytest.approx(0.02, abs=1e-4)
    assert not ok and interval is None
    assert guard_passes(target, pred, interp, margin_db=0.1, confidence=0.9)[0]  # the interval lets it pass


def test_a_consistent_gain_within_float_rounding_does_not_pass():
    """A gain above 0 in every resample but below 1e-3 dB (float rounding of tricubic) is no gain."""
    eps = 1 - 10 ** (-5e-4 / 20)  # 0.0005 dB in every block
    target, pred, interp = _guard_arrays(eps)
    ok, gain, interval = guard_passes(target, pred, interp, margin_db=0.1, confidence=0.9)
    assert 0 < interval[0] < 1e-3 and gain == pytest.approx(5e-4, abs=1e-5)
    assert not ok


# --- target blur ------------------------------------------------------------------------------

def test_blur_targets_blurs_about_the_asked_fraction():
    """``fraction`` is the share of targets blurred (0.2: about a fifth, not four fifths)."""
    t = torch.rand(200, 1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    out = blur_targets(t, (1, 2, 2), fraction=0.2, max_sigma_px=1.0, generator=torch.Generator().manual_seed(1))
    changed = sum((out[i] - t[i]).abs().max().item() > 1e-6 for i in range(200))
    assert 20 < changed < 60


def test_psf_target_blur_is_the_psf_in_voxels_times_sqrt_f2_minus_1():
    """σ per axis = PSF σ / voxel size · sqrt(f² − 1): 0 on factor-1 axes, ``s·sqrt(3)`` at ×2."""
    from selfres.train import psf_target_blur_px

    blur = psf_target_blur_px((0.6, 0.2, 0.3), (1, 2, 4), (0.5, 0.1, 0.1))
    assert blur == pytest.approx((0.0, 2 * math.sqrt(3), 3 * math.sqrt(15)))
    assert psf_target_blur_px(None, (1, 2, 2), None) is None


# --- checkpoint selection ---------------------------------------------------------------------

def test_an_improvement_resets_the_patience_count():
    """Patience counts validations without improvement *in a row*: an improvement starts it again."""
    net = torch.nn.Linear(2, 1)
    sel = Selection.start(net, psnr=30.0, score=0.0, patience=2)
    assert not sel.observe(net, step=5, psnr=29.0, score=-0.5, row={})
    assert sel.observe(net, step=10, psnr=31.0, score=0.5, row={})
    assert sel.bad_validations == 0
    assert not sel.observe(net, step=15, psnr=30.0, score=0.2, row={})
    assert not sel.exhausted
    assert not sel.observe(net, step=20, psnr=30.0, score=0.2, row={})
    assert sel.exhausted


def test_still_improving_means_the_best_came_at_one_of_the_last_two_validations():
    """A budget stop one validation after the best is still 'while improving'; two after is not;
    the untrained start never is."""
    net = torch.nn.Linear(2, 1)
    sel = Selection.start(net, psnr=30.0, score=0.0, patience=10)
    assert not sel.still_improving  # best is the start (step 0)
    sel.observe(net, step=5, psnr=31.0, score=1.0, row={})
    assert sel.still_improving
    sel.observe(net, step=10, psnr=30.5, score=0.5, row={})
    assert sel.still_improving and sel.budget_stop_flags(1.0) == ["stopped_while_improving"]
    sel.observe(net, step=15, psnr=30.5, score=0.5, row={})
    assert not sel.still_improving and sel.budget_stop_flags(1.0) == []


# --- finished trainings and checkpoint files --------------------------------------------------

def test_a_checkpoint_at_exactly_its_step_limit_is_finished():
    """A checkpoint at the step limit, or one that recorded a stop, is of a finished training."""
    from selfres.train import finished_training

    assert finished_training({"step": 200}, 200)
    assert not finished_training({"step": 199}, 200)
    assert finished_training({"step": 50, "stopped": "[]"}, 200)


def test_central_crop_takes_the_middle_of_the_last_three_axes():
    """``central_crop`` centres the box on each axis and keeps axes shorter than the box whole."""
    from selfres.train import central_crop

    vol = _index_volume((2, 6, 20, 9))
    out = central_crop(vol, (4, 10, 16))
    assert out.shape == (2, 4, 10, 9)
    np.testing.assert_array_equal(out, vol[:, 1:5, 5:15, :])


def test_serial_split_scales_factor_2_axes_in_the_first_stage_only():
    """×(2, 4, 4) splits into (2, 2, 2) then (1, 2, 2): the ×2 axis is done in stage 1."""
    from selfres.train import serial_split

    assert serial_split((2, 4, 4)) == ((2, 2, 2), (1, 2, 2))
    assert serial_split((1, 4, 4)) == ((1, 2, 2), (1, 2, 2))


# --- the shared loop --------------------------------------------------------------------------

def test_each_parameter_group_gets_its_scale_times_the_scheduled_rate():
    """``run_steps`` sets every group's rate to ``learning_rate(step) × group["scale"]`` (isotropic's tail)."""
    from selfres.train import Checkpointing, run_steps

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam([{"params": [net.weight], "scale": 1.0}, {"params": [net.bias], "scale": 0.25}])
    s = dataclasses.replace(TrainSettings(), steps=4, warmup_steps=2, learning_rate=1e-2, validate_every=2,
                            patience=10, max_minutes=5)
    seen = []

    def batch_loss():
        seen.append([g["lr"] for g in opt.param_groups])
        return net(torch.ones(2, 3)).pow(2).mean()

    sel = Selection.start(net, psnr=0.0, score=0.0, patience=10)
    gen = torch.Generator().manual_seed(0)
    step, reason, flags, _ = run_steps(net, opt, sel, s, step=0, elapsed_before=0.0, batch_loss=batch_loss,
                                       validate=lambda: (0.0, 0.0, {}), describe=lambda row, eta: None,
                                       checkpoint=Checkpointing(None, "", gen, gen))
    assert (step, reason) == (4, "steps")
    for k, (lr_w, lr_b) in enumerate(seen):
        assert lr_w == pytest.approx(learning_rate(k, s))
        assert lr_b == pytest.approx(0.25 * learning_rate(k, s))
