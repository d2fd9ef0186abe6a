"""Isotropic mode: gaps found by a mutation review of the grid, the axial degradation, the σ
estimate, the patch samplers, the validation pairs, the end blending, fusion and tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from selfres import isotropic as iso

from ..conftest import blob_volume
from .test_isotropic import _degrade_z, _random_model


# ------------------------------------------------------------------------ grid
@pytest.mark.parametrize("nz, f, out", [(7, 2.3, 16), (5, 2.5, 12), (9, 2.1, 19)])
def test_the_output_grid_rounds_to_the_nearest_plane_and_inference_fills_it(nz, f, out):
    """round(nz · f), not its ceiling (16.1 → 16; 12.5 → 12, Python's round), and the restored
    volume has exactly that many planes (a grid one plane off breaks the write of every tile)."""
    assert iso.isotropic_shape((nz, 5, 4), f) == (out, 5, 4)
    vol = np.random.default_rng(0).random((nz, 5, 4)).astype(np.float32)
    assert iso.restore_isotropic(None, vol, factor=f, progress=False).shape == (out, 5, 4)


# ------------------------------------------------------------ axial degradation
def test_an_axis_shorter_than_two_samples_still_keeps_two():
    """A slice only a few fine rows high (≤ 2 f) is still read at two z samples, so the degraded
    slice keeps a gradient along z instead of one flat value."""
    assert iso.low_length(3, 2.0) == 2
    assert iso.low_length(25, 20.0) == 2
    down, up = iso.axial_operator(25, 20.0, 0.0)
    assert down.shape == (2, 25) and up.shape == (25, 2)
    ramp = np.arange(25, dtype=np.float32)[:, None]
    assert float(np.ptp(up @ (down @ ramp))) > 5.0


@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.8, 1.7])
def test_the_gaussian_matrix_is_scipys_mirror_blur_down_to_small_sigmas(sigma):
    """A small extra axial σ (a fraction of a pixel, as the PSF of a fine z step gives) still blurs;
    the reach is scipy's default (4 σ)."""
    x = np.random.default_rng(1).random(23)
    np.testing.assert_allclose(iso.gaussian_matrix(23, sigma) @ x,
                               ndimage.gaussian_filter1d(x, sigma, mode="mirror"), atol=1e-12)


def test_a_box_degradation_of_an_old_model_takes_round_n_over_f_samples():
    """Models trained before point sampling are judged with box averages of ``round(n / f)`` samples,
    as they were trained (n = 31, f = 4: 8 boxes); point sampling keeps ``floor(n / f)`` (7)."""
    assert iso.AxialDegradation(factor=4.0, sampling="box").matrices(31)[0].shape == (8, 31)
    assert iso.AxialDegradation(factor=4.0).matrices(31)[0].shape == (7, 31)


def test_the_noise_top_up_has_the_asked_level_in_numpy_and_torch():
    """Each low-resolution sample gets noise of σ ``noise_sigma``, carried to the fine grid by the
    cubic upsampling: fine row ``h`` has variance σ² · Σ_m up[h, m]² (numpy and torch alike)."""
    h, w, s = 40, 4000, 0.05
    x = np.zeros((1, h, w), np.float32)
    deg = iso.AxialDegradation(factor=4.0, noise_sigma=s)
    _, up = deg.matrices(h)
    expected = s * np.sqrt(np.sum(up.astype(np.float64) ** 2, axis=1))
    got = deg.apply_numpy(x, rng=0)[0].std(axis=1)
    np.testing.assert_allclose(got, expected, rtol=0.06)
    t = deg.apply_torch(torch.from_numpy(x)[:, None], generator=torch.Generator().manual_seed(0))[0, 0].numpy()
    np.testing.assert_allclose(t.std(axis=1), expected, rtol=0.06)


# ---------------------------------------------------------------------- σ estimate
def test_the_axial_sigma_estimate_models_the_z_samples_noise():
    """Per-plane noise flattens the z profiles' spectrum: matched without it, σ 2 read as 1.25."""
    truth = blob_volume((64, 64, 64), n=300, sigma=(1.0, 1.0, 1.0), seed=1)
    low = _degrade_z(truth, 2.0, 4)
    noisy = low + np.random.default_rng(0).normal(0, 0.05, low.shape).astype(np.float32)
    assert iso.estimate_axial_sigma(noisy, 4.0, noise_sigma=0.05)[0] == pytest.approx(2.0, abs=0.3)


# ------------------------------------------------------------------- patch sampling
def test_augmented_square_patches_are_sometimes_transposed_so_both_lateral_axes_are_degraded():
    """The degraded axis (rows) is sometimes y and sometimes x of a lateral slice: a patch of a
    row ramp comes out with its ramp along columns about half the time; a non-square one never."""
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None], (1, 8, 8)).copy()
    s = iso.SlicePatchSampler(ramp, (8, 8), threshold=-1.0, foreground_fraction=0.0, augment=True,
                              generator=torch.Generator().manual_seed(0))
    p = s.sample(64)[:, 0].numpy()
    along_columns = int(sum(np.all(np.diff(q, axis=0) == 0) for q in p))
    assert 16 <= along_columns <= 48
    wide = iso.SlicePatchSampler(ramp, (8, 6), threshold=-1.0, foreground_fraction=0.0, augment=True,
                                 generator=torch.Generator().manual_seed(0)).sample(16)[:, 0].numpy()
    assert wide.shape == (16, 8, 6) and all(np.all(np.abs(np.diff(q, axis=0)) == 1) for q in wide)


# ---------------------------------------------------------------- validation set
def test_held_out_pairs_degrade_along_y_and_along_x_and_keep_every_slice_under_the_cap():
    """Two groups: the held-out slices degraded along y (like YZ slices) and transposed, degraded
    along x (like XZ slices); all slices while they fit in ``max_pixels``, evenly spaced beyond."""
    h = np.random.default_rng(0).random((5, 12, 9)).astype(np.float32)
    deg = iso.AxialDegradation(factor=2.0, sigma_px=0.5)
    pairs = iso.holdout_pairs(h, deg)
    assert len(pairs) == 2
    np.testing.assert_array_equal(pairs[0][0], h)
    np.testing.assert_array_equal(pairs[1][0], np.swapaxes(h, 1, 2))
    for target, low in pairs:
        np.testing.assert_allclose(low, deg.apply_numpy(target), atol=1e-6)
    capped = iso.holdout_pairs(h, deg, max_pixels=2 * 12 * 9)
    np.testing.assert_array_equal(capped[0][0], h[[0, 4]])


def test_a_held_out_box_with_exactly_the_minimum_foreground_is_used_as_it_is():
    fov = np.random.default_rng(0).random((8, 10, 10)).astype(np.float32)
    box = np.zeros((1, 10, 10), np.float32)
    box[0, 3, 3] = 1.0  # 1 voxel in 100: min_share 1 %
    planes, val, note = iso.validation_split(fov, box, threshold=0.5)
    assert note is None and val is box and planes is fov


# ------------------------------------------------------------------- prediction
def test_predict_slices_is_the_model_on_each_slice_and_leaves_its_mode():
    model = _random_model()
    x = np.random.default_rng(0).random((5, 16, 12)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(iso.predict_slices(model, x, batch=2), ref, atol=1e-5)
    model.train()
    iso.predict_slices(model, x)
    assert model.training
    model.eval()
    iso.predict_slices(model, x)
    assert not model.training


def test_compare_stacks_scores_every_slice_and_every_pixel():
    """PSNR over all pixels of both groups, SSIM the mean over every slice (the first included)."""
    from selfres import metrics

    rng = np.random.default_rng(0)
    pairs, preds = [], []
    for shape in ((3, 12, 10), (2, 10, 12)):
        t = rng.random(shape).astype(np.float32)
        pairs.append((t, (t + 0.2 * rng.standard_normal(shape)).astype(np.float32)))
        grows = np.arange(1, shape[0] + 1)[:, None, None]  # slices of different quality
        preds.append((t + 0.05 * rng.standard_normal(shape) * grows).astype(np.float32))
    got = iso.compare_stacks(pairs, preds, data_range=1.0)
    t_all = np.concatenate([t.ravel() for t, _ in pairs]).astype(np.float64)
    p_all = np.concatenate([p.ravel() for p in preds])
    l_all = np.concatenate([low.ravel() for _, low in pairs])
    assert got["psnr_model"] == pytest.approx(10 * np.log10(1.0 / np.mean((t_all - p_all) ** 2)), rel=1e-9)
    assert got["psnr_interp"] == pytest.approx(10 * np.log10(1.0 / np.mean((t_all - l_all) ** 2)), rel=1e-9)
    per = [metrics.compare(t[k], p[k], low[k], data_range=1.0) for (t, low), p in zip(pairs, preds)
           for k in range(t.shape[0])]
    assert got["ssim_model"] == pytest.approx(np.mean([c["ssim_model"] for c in per]), rel=1e-9)
    assert got["ssim_interp"] == pytest.approx(np.mean([c["ssim_interp"] for c in per]), rel=1e-9)


# ------------------------------------------------------------------- end blending
def test_an_end_row_where_the_network_left_its_input_keeps_the_network():
    """A row whose held-out prediction equals its input gives no evidence against the network:
    weight 1 (nothing blended at inference), not 0 (the network's rows replaced by z-cubic)."""
    rng = np.random.default_rng(0)
    target = rng.random((4, 20, 16)).astype(np.float32)
    low = (target + 0.2 * rng.standard_normal(target.shape)).astype(np.float32)
    pred = low + 0.5 * (target - low)
    pred[:, 0] = low[:, 0]
    assert iso.end_weights([(target, low)], [pred], 2.0) == pytest.approx([1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("f, rows", [(2.3, 5), (1.6, 4), (3.0, 6)])
def test_end_weights_cover_ceil_two_f_rows_from_each_end(f, rows):
    """The first two z samples' reach: ceil(2 f) rows (f = 2.3: 5, not 4)."""
    rng = np.random.default_rng(0)
    target = rng.random((2, 30, 8)).astype(np.float32)
    low = (target + 0.2 * rng.standard_normal(target.shape)).astype(np.float32)
    assert len(iso.end_weights([(target, low)], [target], f)) == rows


def test_the_sigma_estimates_profiles_are_drawn_from_the_whole_volume():
    """Above ``max_profiles`` the profiles are a random draw over the volume, not its first rows."""
    v = np.broadcast_to(np.arange(50, dtype=np.float32)[None, :, None], (8, 50, 4)).copy()  # value = y
    w = iso._profiles(v, 8, 0, 20, np.random.default_rng(0))
    assert w.shape == (20, 8) and float(w.max()) > 25 and float(w.min()) < 25
