"""Unit tests of selfres.metrics (seeded synthetic data, no torch)."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from selfres import metrics as m

# ----------------------------------------------------------------- synthetic data


def random_structure(sigma, *, shape=(48, 96, 96), noise=0.02, density=0.003, seed=0):
    """Sparse random points of random brightness, Gaussian blur ``sigma`` (voxels), noise.

    Normalised to a maximum of 1 before additive Gaussian noise of std ``noise``.
    """
    rng = np.random.default_rng(seed)
    points = (rng.random(shape) < density) * rng.uniform(0.5, 1.0, shape)
    vol = ndimage.gaussian_filter(points.astype(np.float32), sigma)
    vol /= vol.max()
    vol += noise * rng.standard_normal(shape).astype(np.float32)
    return vol


def bead_lattice(sigma, *, per_axis=(2, 3, 3), noise=0.0, seed=0, background=0.05):
    """Gaussian beads of std ``sigma`` (z, y, x voxels) on a jittered lattice.

    Beads are sampled analytically at sub-voxel centres (jitter ±0.5 voxel),
    spaced 8 sigma + 2 voxels apart. Returns the volume and the true centres.
    """
    rng = np.random.default_rng(seed)
    spacing = [int(math.ceil(8 * s)) + 2 for s in sigma]
    shape = tuple(n * sp for n, sp in zip(per_axis, spacing))
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    vol = np.full(shape, background)
    centres = []
    for idx in itertools.product(*[range(n) for n in per_axis]):
        c = np.array([(i + 0.5) * sp for i, sp in zip(idx, spacing)]) + rng.uniform(-0.5, 0.5, 3)
        centres.append(c)
        r2 = sum(((g - cc) / s) ** 2 for g, cc, s in zip(grids, c, sigma))
        vol += rng.uniform(0.7, 1.0) * np.exp(-0.5 * r2)
    vol += noise * rng.standard_normal(shape)
    return vol.astype(np.float32), np.array(centres)


# -------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16])
def test_psnr_agrees_with_skimage(dtype):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 200, (8, 16, 16)).astype(dtype)
    img = np.clip(ref.astype(np.float64) + rng.normal(0, 5, ref.shape), 0, 255).astype(dtype)
    expected = peak_signal_noise_ratio(ref, img, data_range=255)
    assert m.psnr(ref, img, data_range=255) == pytest.approx(expected, rel=1e-9)


def test_psnr_reference_value_and_default_range():
    ref = np.linspace(0.0, 1.0, 100).reshape(10, 10)
    # constant error 0.1 -> MSE 0.01 -> 20 dB exactly for a range of 1
    assert m.psnr(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert m.psnr(ref, ref + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    assert m.psnr(ref, ref) == math.inf


@pytest.mark.parametrize(
    "ref, img, kwargs, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), {}, "same shape"),
        (np.ones((4, 4)), np.zeros((4, 4)), {}, "constant"),
        (np.arange(16.0).reshape(4, 4), np.zeros((4, 4)), {"data_range": 0}, "positive"),
        (np.arange(16.0).reshape(4, 4), np.zeros((4, 4)), {"data_range": -1.0}, "positive"),
    ],
)
def test_psnr_errors(ref, img, kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.psnr(ref, img, **kwargs)


# -------------------------------------------------------------------------- SSIM

_SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


@pytest.mark.parametrize("shape", [(32, 32), (12, 24, 24), (16, 16, 40)])
def test_ssim_agrees_with_skimage(shape):
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.random(shape), 1.0)
    img = ref + rng.normal(0, 0.02, shape)
    expected = structural_similarity(ref, img, data_range=1.0, **_SK)
    assert m.ssim(ref, img, data_range=1.0) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("thin_axis, n", [(0, 1), (0, 5), (2, 6), (1, 10)])
def test_ssim_thin_volume_is_mean_of_slices(thin_axis, n):
    shape = [24, 24, 24]
    shape[thin_axis] = n
    rng = np.random.default_rng(3)
    ref = rng.random(shape)
    img = ref + rng.normal(0, 0.05, shape)
    expected = np.mean(
        [
            structural_similarity(r, i, data_range=1.0, **_SK)
            for r, i in zip(np.moveaxis(ref, thin_axis, 0), np.moveaxis(img, thin_axis, 0))
        ]
    )
    assert m.ssim(ref, img, data_range=1.0) == pytest.approx(expected, rel=1e-9)


def test_ssim_orders_by_quality_and_identity_is_one():
    rng = np.random.default_rng(4)
    ref = ndimage.gaussian_filter(rng.random((16, 32, 32)), 1.0)
    values = [m.ssim(ref, ref + rng.normal(0, s, ref.shape), data_range=1.0) for s in (0.0, 0.01, 0.05)]
    assert values[0] == pytest.approx(1.0)
    assert values[0] > values[1] > values[2]


@pytest.mark.parametrize("shape", [(9, 9, 9), (4, 8, 30), (6, 6)])
def test_ssim_tiny_arrays_use_reduced_window(shape):
    rng = np.random.default_rng(6)
    ref = ndimage.gaussian_filter(rng.random(shape), 1.0)
    noisy = [m.ssim(ref, ref + rng.normal(0, s, shape), data_range=1.0) for s in (0.0, 0.01, 0.1)]
    assert noisy[0] == pytest.approx(1.0) and noisy[0] > noisy[1] > noisy[2]


@pytest.mark.parametrize(
    "shape, match",
    [((2, 2, 40), "at least 3"), ((40,), "2-D or 3-D"), ((2, 3, 4, 5), "2-D or 3-D")],
)
def test_ssim_errors(shape, match):
    ref = np.random.default_rng(0).random(shape)
    with pytest.raises(ValueError, match=match):
        m.ssim(ref, ref, data_range=1.0)


def test_compare_returns_contract_keys():
    rng = np.random.default_rng(5)
    ref = ndimage.gaussian_filter(rng.random((8, 32, 32)), 1.0)
    good = ref + rng.normal(0, 0.005, ref.shape)
    bad = ref + rng.normal(0, 0.05, ref.shape)
    out = m.compare(ref, good, bad, data_range=1.0)
    assert set(out) == {"psnr_model", "psnr_interp", "ssim_model", "ssim_interp"}
    assert out["psnr_model"] > out["psnr_interp"] and out["ssim_model"] > out["ssim_interp"]
    assert out["psnr_model"] == pytest.approx(m.psnr(ref, good, data_range=1.0))


def _least_squares_matched(x, ref):
    a = np.vstack([x.ravel(), np.ones(x.size)]).T
    coef, *_ = np.linalg.lstsq(a, ref.ravel().astype(np.float64), rcond=None)
    return (x * coef[0] + coef[1]).astype(np.float32)


class _RecordingArray:
    """An array that records how many voxels each read asks for."""

    def __init__(self, data):
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, slices):
        block = self.data[slices]
        self.reads.append(block.size)
        return block


@pytest.mark.parametrize("shape", [(20, 30, 40),  # 3-D window
                                   (5, 40, 40),  # SSIM per z-slice
                                   (9, 9, 30),  # reduced 3-D window
                                   (2, 30, 8),  # per slice, reduced window
                                   (12, 5, 40),  # a thin lateral axis
                                   (30, 40)])
def test_compare_to_reference_in_blocks_equals_the_whole_volume_comparison(shape):
    """Block by block, with the least-squares intensity match, the figures are those of
    `compare` on the matched whole arrays, for every SSIM window `ssim` chooses."""
    rng = np.random.default_rng(1)
    ref = ndimage.gaussian_filter(rng.random(shape), 1).astype(np.float32)
    model = (ref * 2 + 0.1 + 0.02 * rng.standard_normal(shape)).astype(np.float32)  # another intensity scale
    interp = (ref * 0.5 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    want = m.compare(ref, _least_squares_matched(model, ref), _least_squares_matched(interp, ref),
                     data_range=float(ref.max() - ref.min()))
    got = m.compare_to_reference(ref, model, lambda sl: interp[sl], block_voxels=500)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    assert got["match_model"][0] == pytest.approx(0.5, rel=0.05)  # the model's scale is undone
    assert got["psnr_model"] > got["psnr_interp"] + 10


def test_compare_to_reference_never_reads_a_whole_volume():
    """Each read is a block and SSIM's 5-voxel window around it, a fraction of the volume."""
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.random((40, 64, 64)), 1).astype(np.float32)
    arrays = [_RecordingArray(ref), _RecordingArray(ref + 0.01), _RecordingArray(ref * 0.9)]
    got = m.compare_to_reference(*arrays, block_voxels=8192)
    assert got["psnr_model"] > 100 and got["psnr_interp"] > 100  # both are the truth, rescaled
    for a in arrays:
        assert len(a.reads) > 2 * 10 and max(a.reads) <= 8192 * 3 < ref.size / 4


@pytest.mark.parametrize("offset, dtype", [(3000, np.float32), (1e7, np.float64)])
def test_compare_to_reference_does_not_depend_on_an_output_offset(offset, dtype):
    """An output far from 0 (raw camera counts, an offset) is matched as well as one near it:
    the match is solved in closed form from sums taken about the first block's means (raw
    sums cancel; a least-squares solver's cut-off dropped the slope at 3000)."""
    rng = np.random.default_rng(4)
    ref = ndimage.gaussian_filter(rng.random((20, 30, 40)), 1).astype(np.float32)
    model = (ref * 2 + 0.02 * rng.standard_normal(ref.shape)).astype(dtype)
    near = m.compare_to_reference(ref, model, ref, block_voxels=500)
    far = m.compare_to_reference(ref, model + dtype(offset), ref, block_voxels=500)
    assert far["psnr_model"] == pytest.approx(near["psnr_model"], abs=1e-3)
    assert far["ssim_model"] == pytest.approx(near["ssim_model"], abs=1e-5)
    assert far["match_model"][0] == pytest.approx(near["match_model"][0], rel=1e-4)


def test_an_output_of_inverted_contrast_is_not_matched_to_the_reference():
    """The least-squares scale was unconstrained: −reference matched it exactly (scale −1) and
    scored inf dB, which metrics.json wrote as null, and no flag followed."""
    ref = ndimage.gaussian_filter(np.random.default_rng(5).random((12, 24, 24)), 1).astype(np.float32)
    got = m.compare_to_reference(ref, -ref, ref * 0.9, block_voxels=500)
    assert got["match_model"][0] == 0.0 and np.isfinite(got["psnr_model"])
    assert got["psnr_model"] < got["psnr_interp"] - 20


def test_compare_to_reference_refuses_non_finite_and_constant_arrays():
    ref = ndimage.gaussian_filter(np.random.default_rng(0).random((8, 16, 16)), 1).astype(np.float32)
    bad = ref.copy()
    bad[7, 15, 15] = np.nan
    with pytest.raises(ValueError, match="the reference has 1 non-finite voxels"):
        m.compare_to_reference(bad, ref, ref, block_voxels=300)
    with pytest.raises(ValueError, match="the model has 1 non-finite voxels"):
        m.compare_to_reference(ref, bad, ref, block_voxels=300)
    with pytest.raises(ValueError, match="the reference is constant"):
        m.compare_to_reference(np.ones_like(ref), ref, ref)


def test_compare_to_reference_refuses_arrays_of_other_shapes():
    ref = np.zeros((4, 16, 16), np.float32)
    with pytest.raises(ValueError, match="model shape"):
        m.compare_to_reference(ref, np.zeros((4, 16, 15), np.float32), ref)


# ------------------------------------------------------------------- FWHM / beads


@pytest.mark.parametrize(
    "sigma, centre, offset, spacing",
    [(0.8, 15.3, 0.0, 1.0), (1.5, 14.0, 0.2, 0.1), (3.0, 16.7, 5.0, 0.5), (2.2, 12.5, -1.0, 2.0)],
)
def test_fit_gaussian_fwhm_exact_profiles(sigma, centre, offset, spacing):
    x = np.arange(31.0)
    profile = offset + 3.0 * np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    expected = 2 * math.sqrt(2 * math.log(2)) * sigma * spacing
    assert m.fit_gaussian_fwhm(profile, spacing=spacing) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "profile", [np.zeros(21), -np.hanning(21), np.full(21, np.nan), np.ones(3)]
)
def test_fit_gaussian_fwhm_nan_when_no_peak(profile):
    assert math.isnan(m.fit_gaussian_fwhm(profile))


def test_fit_gaussian_fwhm_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        m.fit_gaussian_fwhm(np.zeros((3, 3)))


def test_detect_beads_isolated_plateau_and_border():
    vol = np.zeros((24, 40, 40), np.float32)
    vol[12, 20, 20] = 1.0  # isolated
    vol[12, 8, 8] = 0.9  # close pair: both rejected
    vol[12, 8, 11] = 0.8
    vol[5:7, 30:32, 30:32] = 0.7  # flat (saturated) maximum: one bead
    vol[12, 20, 1] = 1.0  # too near the border
    found = m.detect_beads(vol, min_distance=1, threshold_rel=0.2, border=2, isolation=4)
    assert found.tolist() == [[12, 20, 20], [6, 31, 31]]


def test_detect_beads_in_blocks_finds_what_one_pass_finds():
    """Small blocks of a lazy volume give the single block's beads, in the same order: a
    flat maximum across a block face, a close pair split by one, and beads on the faces."""
    import dask.array as da

    rng = np.random.default_rng(3)
    spots = np.zeros((30, 90, 90), np.float32)
    idx = rng.integers(0, [30, 90, 90], size=(120, 3))
    spots[tuple(idx.T)] = rng.uniform(0.3, 1.0, len(idx))
    spots[7:24, 37:54, 37:54] = 0  # room for the flat bead below
    vol = ndimage.gaussian_filter(spots, 1.0) + 0.002 * rng.random(spots.shape).astype(np.float32)
    vol[12:17, 40:47, 40:47] = vol.max()  # a flat, saturated bead across block faces
    whole = m.detect_beads(vol, min_distance=2, threshold_rel=0.1)
    assert len(whole) > 15 and [14, 43, 43] in whole.tolist()
    for block_voxels in (4000, 20_000):  # blocks of 16³ and 27³: many faces cross beads
        blocks = m.detect_beads(da.from_array(vol, chunks=16), min_distance=2, threshold_rel=0.1,
                                block_voxels=block_voxels)
        np.testing.assert_array_equal(blocks, whole)
    # the table reads only the beads' profiles from a lazy volume, with the same fits
    t_lazy = m.bead_fwhm_table(da.from_array(vol, chunks=16), positions=whole, max_beads=10, block_voxels=4000)
    t_mem = m.bead_fwhm_table(vol, positions=whole, max_beads=10)
    pd.testing.assert_frame_equal(t_lazy, t_mem)


def test_detect_beads_rejects_a_pair_exactly_the_isolation_apart_and_non_finite_volumes():
    vol = np.zeros((41, 41, 41), np.float32)
    vol[20, 20, 12] = vol[20, 20, 21] = 1.0  # 9 apart = the default isolation (3 × min_distance 3)
    vol[20, 20, 33] = 0.5  # 12 from the nearer: isolated
    assert m.detect_beads(vol).tolist() == [[20, 20, 33]]
    vol[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite voxels"):
        m.detect_beads(vol)


@pytest.mark.parametrize("noise", [0.0, 0.02])
@pytest.mark.parametrize(
    "sigma", [(2.0, 1.2, 1.2), (1.0, 1.5, 1.5), (3.0, 2.0, 1.5), (0.8, 0.8, 0.8)]
)
def test_bead_fwhm_median_within_3_percent(sigma, noise):
    vol, centres = bead_lattice(sigma, noise=noise, seed=7)
    md = tuple(max(1, round(s)) for s in sigma)
    df = m.bead_fwhm_table(vol, voxel_size=(0.5, 0.1, 0.1), min_distance=md)
    summary = m.bead_fwhm_summary(df)
    assert summary["n_beads"] == len(centres)
    for axis, s, vs in zip("zyx", sigma, (0.5, 0.1, 0.1)):
        truth = m.FWHM_PER_SIGMA * s
        assert summary[f"fwhm_{axis}"] == pytest.approx(truth, rel=0.03)
        assert summary[f"fwhm_{axis}_um"] == pytest.approx(summary[f"fwhm_{axis}"] * vs)
    # sub-voxel centres are recovered
    got = np.sort(df[["z", "y", "x"]].to_numpy(), axis=0)
    assert np.abs(got - np.sort(centres, axis=0)).max() < 0.2


def test_widened_profiles_fit_finely_sampled_beads_that_the_default_profile_cuts():
    """Beads 19 voxels wide (a PSF stack sampled finely, or an upsampled output) outgrow the
    default ±9-voxel profile, which fits them too narrow; the widened table does not."""
    sigma = (3.0, 8.0, 8.0)
    vol, _ = bead_lattice(sigma, per_axis=(2, 2, 2), noise=0.03, seed=3)  # noise: a cut profile misfits
    plain = m.bead_fwhm_summary(m.bead_fwhm_table(vol))
    wide = m.bead_fwhm_summary(m.bead_fwhm_table_widened(vol))
    assert wide["n_beads"] >= plain["n_beads"] >= 4  # (the cut profiles also lose fits: 8 against 6)
    for axis, s in zip("zyx", sigma):
        truth = m.FWHM_PER_SIGMA * s
        assert wide[f"fwhm_{axis}"] == pytest.approx(truth, rel=0.03), axis
    assert plain["fwhm_y"] < 0.92 * m.FWHM_PER_SIGMA * 8.0  # what QC reported before (0.89 of the truth)
    # narrow beads keep the default profile: the same table
    small, _ = bead_lattice((2.0, 2.0, 2.0), per_axis=(2, 2, 2), seed=1)
    table = m.bead_fwhm_table(small)
    assert len(table) == 8
    pd.testing.assert_frame_equal(m.bead_fwhm_table_widened(small), table)


def test_bead_table_positions_and_empty_summary():
    vol, centres = bead_lattice((1.0, 1.0, 1.0), per_axis=(1, 1, 2))
    df = m.bead_fwhm_table(vol, positions=np.rint(centres[:1]).astype(int), max_beads=5)
    assert len(df) == 1
    empty = m.bead_fwhm_summary(m.bead_fwhm_table(np.zeros((16, 16, 16)), positions=np.zeros((0, 3))))
    assert empty["n_beads"] == 0 and empty["fwhm_x"] is None
    with pytest.raises(ValueError, match="columns"):
        m.bead_fwhm_summary(pd.DataFrame({"a": [1]}))


def test_psnr_gain_interval_brackets_the_gain_and_says_when_it_cannot_tell():
    rng = np.random.default_rng(0)
    ref = rng.random((16, 48, 48))
    interp = ref + 0.05 * rng.standard_normal(ref.shape)
    better = ref + 0.03 * rng.standard_normal(ref.shape)  # +4.4 dB everywhere
    gain = m.psnr(ref, better, data_range=1.0) - m.psnr(ref, interp, data_range=1.0)
    lo, hi = m.psnr_gain_interval(ref, better, interp)
    assert 0 < lo < gain < hi and hi - lo < 0.5
    # an equally good, different output: better in some blocks, worse in others
    same = ref + 0.05 * rng.standard_normal(ref.shape)
    lo, hi = m.psnr_gain_interval(ref, same, interp)
    assert lo < 0 < hi
    # better in one corner only: the blocks disagree, the interval widens and still brackets
    corner = interp.copy()
    corner[:8, :12, :12] = better[:8, :12, :12]
    lo, hi = m.psnr_gain_interval(ref, corner, interp)
    g = m.psnr(ref, corner, data_range=1.0) - m.psnr(ref, interp, data_range=1.0)
    assert lo < g < hi and hi - lo > 0.1
    assert m.psnr_gain_interval(ref[:2, :4, :4], better[:2, :4, :4], interp[:2, :4, :4]) is None
    assert m.psnr_gain_interval(ref, ref, interp) is None  # exact output: no ratio to resample
    # the "95 %" interval is the 2.5th and 97.5th percentiles of the gains over resampled blocks
    # (2 × 4 × 4 blocks of 8 × 12 × 12 here), not a narrower one
    blocks = [(slice(z, z + 8), slice(y, y + 12), slice(x, x + 12))
              for z in (0, 8) for y in range(0, 48, 12) for x in range(0, 48, 12)]
    se_c = np.array([np.sum((corner[b] - ref[b]) ** 2) for b in blocks])
    se_i = np.array([np.sum((interp[b] - ref[b]) ** 2) for b in blocks])
    draws = np.random.default_rng(0).integers(0, 32, size=(2000, 32))
    gains = 10 * np.log10(se_i[draws].sum(axis=1) / se_c[draws].sum(axis=1))
    np.testing.assert_allclose(m.psnr_gain_interval(ref, corner, interp), np.percentile(gains, [2.5, 97.5]))
    np.testing.assert_allclose(m.psnr_gain_interval(ref, corner, interp, level=0.5), np.percentile(gains, [25, 75]))


def test_psf_sigma_from_beads_removes_the_voxel_box_and_refuses_too_few_beads():
    """The measured σ is the optical one: the image FWHM / 2.355 with the camera pixel's box
    (variance v²/12) taken out laterally, within 3 % on noisy beads; along z, where a stack
    samples the PSF at its focus steps, the image's σ as it is; too few beads is one clear error."""
    sigma_px, vs = (2.0, 1.2, 1.2), (0.5, 0.1, 0.1)
    vol, centres = bead_lattice(sigma_px, noise=0.02, seed=3)
    got = m.psf_sigma_from_beads(vol, vs)
    assert got["n_beads"] == len(centres)
    for s, v, g, box in zip(sigma_px, vs, got["sigma_um"], (0, 1, 1)):
        assert g == pytest.approx(math.sqrt((s * v) ** 2 - box * v**2 / 12), rel=0.03)
    # a coarse z step (σz 1.5 µm at 2 µm steps): a box taken out along z would read 1.385 µm
    coarse = m.psf_sigma_from_beads(bead_lattice((0.75, 1.5, 1.5), seed=3)[0], (2.0, 0.1, 0.1))["sigma_um"]
    assert coarse[0] == pytest.approx(1.5, rel=0.02)
    assert max(got["spread"]) < 0.1  # identical points
    # the spread is relative (interquartile range / median): the same beads at ten times the voxel size
    coarser = m.psf_sigma_from_beads(vol, tuple(10 * v for v in vs))
    np.testing.assert_allclose(coarser["spread"], got["spread"], rtol=1e-6, atol=1e-9)
    small = m.psf_sigma_from_beads(bead_lattice((1.0, 0.8, 0.8), seed=3)[0], (1.0, 1.0, 1.0))["sigma_um"]
    assert small[1] == pytest.approx(math.sqrt(0.8**2 - 1 / 12), rel=0.02)  # 7 % below the image's 0.8
    one, _ = bead_lattice(sigma_px, per_axis=(1, 1, 2))
    with pytest.raises(ValueError, match="found 2 isolated beads.*need at least 3"):
        m.psf_sigma_from_beads(one, vs)


def test_bead_search_on_a_blurred_copy_finds_noisy_beads_wider_than_a_voxel():
    """On noisy beads a few voxels wide, the noise makes several maxima on each top (rejected
    as neighbours) and on the flanks (spots that fit narrow). Searching the volume blurred by
    one voxel finds every bead at its centre, whatever the blocks; the PSF measurement then
    reads the true σ where it used to read noise."""
    sigma_px = (4.0, 1.5, 1.5)
    vol, centres = bead_lattice(sigma_px, noise=0.05, seed=3)
    assert len(m.detect_beads(vol, min_distance=(1, 2, 2))) < len(centres) // 2
    found = m.detect_beads(vol, min_distance=(1, 2, 2), smooth=1.0)
    assert len(found) == len(centres)
    nearest = np.abs(found[:, None, :] - centres[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() <= 1.5
    np.testing.assert_array_equal(m.detect_beads(vol, min_distance=(1, 2, 2), smooth=1.0, block_voxels=4000), found)
    got = m.psf_sigma_from_beads(vol, (1.0, 1.0, 1.0))
    assert got["n_beads"] >= len(centres) - 2
    for s, g, box in zip(sigma_px, got["sigma_um"], (0, 1, 1)):
        assert g == pytest.approx(math.sqrt(s**2 - box / 12), rel=0.05)
    wide, _ = bead_lattice((8.0, 6.0, 6.0), noise=0.02, seed=3)  # a finely sampled PSF stack
    for s, g, box in zip((8.0, 6.0, 6.0), m.psf_sigma_from_beads(wide, (1.0, 1.0, 1.0))["sigma_um"], (0, 1, 1)):
        assert g == pytest.approx(math.sqrt(s**2 - box / 12), rel=0.03)  # read 0.6–0.7 px laterally before


# --------------------------------------------------------- decorrelation analysis


def test_resolution_monotonic_and_proportional_to_blur():
    sigmas = (1.5, 2.0, 3.0, 4.0)
    lateral = [
        m.resolution_lateral_axial(random_structure(s, noise=0.01), voxel_size=(1, 1, 1))[0]
        for s in sigmas
    ]
    assert all(np.isfinite(lateral))
    assert all(b > a for a, b in zip(lateral, lateral[1:])), lateral
    ratio = np.asarray(lateral) / np.asarray(sigmas)
    # measured: resolution ~ 2.4-2.5 sigma (~1.05 FWHM) at this noise level
    assert 2.0 < ratio.min() and ratio.max() < 3.0, ratio
    assert ratio.max() / ratio.min() < 1.15, ratio


def test_decorrelation_2d_in_physical_units_and_directional():
    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter((rng.random((128, 128)) < 0.01).astype(float), (4.0, 2.0))
    img = img / img.max() + 0.01 * rng.standard_normal(img.shape)
    iso = m.decorrelation_resolution(img)
    rows = m.decorrelation_resolution(img, axis=0)
    cols = m.decorrelation_resolution(img, axis=1)
    assert cols < iso < rows
    assert rows / cols == pytest.approx(2.0, abs=0.3)
    # physical units: resolution scales with the pixel size
    assert m.decorrelation_resolution(img, pixel_size=0.2) == pytest.approx(0.2 * iso)


@pytest.mark.parametrize(
    "sigma_vox, voxel_size, expected",
    [
        ((2.0, 2.0, 2.0), (1.0, 1.0, 1.0), 1.0),  # isotropic blur, isotropic grid
        ((3.0, 3.0, 3.0), (1.0, 1.0, 1.0), 1.0),
        ((4.0, 2.0, 2.0), (1.0, 1.0, 1.0), 0.5),  # z blurred 2x more
        ((3.0, 1.5, 1.5), (1.0, 1.0, 1.0), 0.5),
        ((1.5, 3.0, 3.0), (2.0, 1.0, 1.0), 1.0),  # 3 µm blur on a 2:1 grid
        ((2.0, 2.0, 2.0), (2.0, 1.0, 1.0), 0.5),  # 4 µm axial vs 2 µm lateral
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_isotropy_of_known_blur(sigma_vox, voxel_size, expected, seed):
    vol = random_structure(sigma_vox, noise=0.02, seed=seed)
    lateral, axial = m.resolution_lateral_axial(vol, voxel_size=voxel_size)
    assert m.isotropy(lateral, axial) == pytest.approx(expected, abs=0.15)
    # lateral in µm follows the lateral blur in µm (~2.4 sigma)
    assert lateral / (sigma_vox[2] * voxel_size[2]) == pytest.approx(2.5, rel=0.25)


@pytest.mark.parametrize(
    "image, kwargs",
    [
        (np.zeros((32, 32)), {}),  # blank
        (np.random.default_rng(0).standard_normal((128, 128)), {}),  # pure noise
        (np.random.default_rng(1).standard_normal((64, 128)), {"axis": 0}),
        (np.random.default_rng(2).standard_normal((8, 64, 64)), {}),  # pooled stack
    ],
)
def test_decorrelation_nan_without_structure(image, kwargs):
    assert math.isnan(m.decorrelation_resolution(image, **kwargs))


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros(64), {}, "2-D"),
        (np.zeros((4, 64)), {}, "8 x 8"),
        (np.zeros((32, 32)), {"axis": 2}, "axis"),
        (np.zeros((32, 32)), {"pixel_size": (1.0, 0.0)}, "pixel_size"),
        (np.zeros((32, 32)), {"sector_half_angle": 90}, "sector_half_angle"),
        (np.full((32, 32), np.nan), {}, "NaN"),
    ],
)
def test_decorrelation_errors(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.decorrelation_resolution(image, **kwargs)


def test_resolution_thin_volume_and_speed():
    vol = random_structure(2.0, shape=(64, 128, 128), noise=0.02)
    start = time.perf_counter()
    lateral, axial = m.resolution_lateral_axial(vol, voxel_size=(1, 1, 1))
    assert time.perf_counter() - start < 1.0
    assert np.isfinite(lateral) and np.isfinite(axial)
    lat2, ax2 = m.resolution_lateral_axial(vol[:4], voxel_size=(1, 1, 1))
    assert np.isfinite(lat2) and math.isnan(ax2)


@pytest.mark.parametrize(
    "lateral, axial, expected",
    [(1.0, 2.0, 0.5), (0.3, 0.3, 1.0), (math.nan, 1.0, math.nan), (1.0, 0.0, math.nan), (None, 1.0, math.nan)],
)
def test_isotropy(lateral, axial, expected):
    got = m.isotropy(lateral, axial)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


# ----------------------------------------------------------------------- spectra


def test_axial_and_lateral_spectrum_peak_at_known_frequency():
    vz, vy, vx = 0.5, 0.2, 0.2
    z, y, x = np.meshgrid(np.arange(32), np.arange(40), np.arange(40), indexing="ij")
    f_z, f_x = 0.25, 1.25  # cycles/µm: 8 periods along z, 10 along x
    vol = np.sin(2 * np.pi * f_z * z * vz) + np.sin(2 * np.pi * f_x * x * vx)
    freq, logp = m.axial_spectrum(vol, voxel_size=(vz, vy, vx))
    assert freq[-1] == pytest.approx(1 / (2 * vz)) and freq.shape == logp.shape
    assert freq[np.argmax(logp)] == pytest.approx(f_z)
    freq, logp = m.lateral_spectrum(vol, voxel_size=(vz, vy, vx))
    assert freq[-1] < 1 / (2 * vx) and np.all(np.diff(freq) > 0)
    assert freq[np.nanargmax(logp)] == pytest.approx(f_x, abs=freq[1] - freq[0])


@pytest.mark.parametrize("shape, chunks, whole", [
    ((7, 13, 10), None, ()),
    ((7, 13, 10), (3, 5, 4), ()),
    ((7, 13, 10), (3, 5, 4), (0,)),
    ((9, 8), (4, 3), (1,)),
])
@pytest.mark.parametrize("block_voxels", [1, 40, 10**6])
def test_block_slices_cover_every_voxel_once_in_whole_chunks(shape, chunks, whole, block_voxels):
    count = np.zeros(shape, dtype=int)
    blocks = m.block_slices(shape, block_voxels, chunks=chunks, whole_axes=whole)
    one_chunk = math.prod(n if a in whole else (chunks[a] if chunks else 1) for a, n in enumerate(shape))
    for b in blocks:
        count[b] += 1
        size = [sl.stop - sl.start for sl in b]
        assert math.prod(size) <= max(block_voxels, one_chunk)
        for a, sl in enumerate(b):
            if a in whole:
                assert size[a] == shape[a]
            elif chunks:  # starts on a chunk boundary, ends on one or at the edge
                assert sl.start % chunks[a] == 0 and (sl.stop % chunks[a] == 0 or sl.stop == shape[a])
    assert np.all(count == 1)
    if block_voxels >= math.prod(shape):
        assert len(blocks) == 1


def test_whole_volume_qc_figures_read_a_lazy_volume_in_blocks_with_the_same_result():
    """restored_agreement and axial_spectrum of a dask volume equal the in-memory figures,
    and no computed piece is the whole volume (QC memory must not grow with the output)."""
    import dask.array as da
    from dask.callbacks import Callback

    rng = np.random.default_rng(1)
    raw = ndimage.gaussian_filter(rng.random((10, 30, 34)), 1.0).astype(np.float32)
    up = ndimage.zoom(raw, 2, order=1).astype(np.float32)
    up[3, 5, 7:9] = np.nan
    lazy = da.from_array(up, chunks=(4, 16, 16))
    largest = []

    class Largest(Callback):
        def _posttask(self, key, result, dsk, state, id):
            largest.append(getattr(result, "nbytes", 0))

    with Largest():
        got = m.restored_agreement(raw, lazy, block_voxels=2000)
        f_lazy, p_lazy = m.axial_spectrum(np.nan_to_num(lazy), voxel_size=(0.5, 0.2, 0.2), block_voxels=2000)
    assert got == m.restored_agreement(raw, up)
    assert got == m.restored_agreement(da.from_array(raw, chunks=(3, 8, 8)), lazy, block_voxels=2000)  # lazy input
    assert m.lateral_window(da.from_array(raw, chunks=(3, 8, 8)), 16) == m.lateral_window(raw, 16)
    assert got["nonfinite_voxels"] == 2
    f, p = m.axial_spectrum(np.nan_to_num(up), voxel_size=(0.5, 0.2, 0.2))
    np.testing.assert_array_equal(f_lazy, f)
    np.testing.assert_allclose(p_lazy, p, rtol=1e-12)
    assert 0 < max(largest) <= up.nbytes / 8


def test_restored_agreement_tells_a_restoration_from_a_broken_output():
    import torch

    from selfres import degrade

    rng = np.random.default_rng(0)
    raw = ndimage.gaussian_filter(rng.random((12, 40, 44)), 1.5).astype(np.float32)
    up = degrade.upscale_cubic(torch.from_numpy(raw)[None, None], (2, 2, 2))[0, 0].numpy()
    ok = m.restored_agreement(raw, up)
    assert ok["correlation_with_input"] > 0.97 and ok["nonfinite_voxels"] == 0
    assert m.restored_agreement(raw, np.roll(up, 20, axis=2))["correlation_with_input"] < 0.5
    assert m.restored_agreement(raw, np.full_like(up, 0.2))["correlation_with_input"] == 0.0
    assert abs(m.restored_agreement(raw, rng.random(up.shape))["correlation_with_input"]) < 0.2
    bad = up.copy()
    bad[1, 2, :5] = np.nan
    bad[3, 3, 3] = np.inf
    assert m.restored_agreement(raw, bad)["nonfinite_voxels"] == 6
    assert m.restored_agreement(np.ones_like(raw), up)["correlation_with_input"] is None  # nothing to compare
    # a non-integer factor along z (isotropic mode): nearest output voxel to each input centre
    zs = np.linspace(0, 11, 31)
    iso = np.stack([raw[int(round(z))] for z in zs])
    assert m.restored_agreement(raw, iso)["correlation_with_input"] > 0.95
    # a subsample of a large volume still decides
    assert m.restored_agreement(raw, up, max_samples=500)["correlation_with_input"] > 0.95


def test_restored_agreement_reads_a_non_integer_z_factor_on_the_contracts_grid():
    """Isotropic mode with f = 2.6: 24 planes → round(24 · 2.6) = 62, whose ratio (2.583) is not
    f. Input plane j sits at output (j + 0.5) · f − 0.5; the shapes' ratio compared some
    input planes with their neighbours' output planes."""
    rng = np.random.default_rng(1)
    raw = rng.random((24, 16, 16))
    f = 2.6
    out = rng.random((round(24 * f), 16, 16))  # planes unlike the input's, but at their centres:
    out[np.round((np.arange(24) + 0.5) * f - 0.5).astype(int)] = raw  # the contract's grid
    assert m.restored_agreement(raw, out, factors=(f, 1, 1))["correlation_with_input"] == pytest.approx(1.0)
    assert m.restored_agreement(raw, out)["correlation_with_input"] < 0.9


def test_a_denoised_restoration_of_a_noisy_input_is_judged_against_what_noise_allows():
    """A restoration that removes the noise cannot correlate with a noisy input better than
    the noise-free signal does: a low-light sample restored better than tricubic (0.70) was
    flagged as a broken output at a flat 0.8. The ceiling comes from the input's own noise."""
    import torch

    from selfres import degrade
    from selfres.noise import noise_level_function
    from selfres.qc import RESTORED_MIN_CORRELATION

    rng = np.random.default_rng(1)
    signal = ndimage.gaussian_filter(rng.random((16, 64, 64)), 2.0).astype(np.float32)
    signal = (signal - signal.min()) / (signal.max() - signal.min())
    noisy = (signal + rng.normal(0, 0.2, signal.shape)).astype(np.float32)  # sd of the signal ~0.16
    level = noise_level_function(noisy)
    clean_up = degrade.upscale_cubic(torch.from_numpy(signal)[None, None], (2, 2, 2))[0, 0].numpy()
    good = m.restored_agreement(noisy, clean_up, noise=level)
    assert good["correlation_with_input"] < RESTORED_MIN_CORRELATION  # flagged before
    assert 0.4 < good["correlation_ceiling"] < 0.9
    assert good["correlation_with_input"] > RESTORED_MIN_CORRELATION * good["correlation_ceiling"]
    for broken in (np.roll(clean_up, 30, axis=2), np.full_like(clean_up, 0.3), rng.random(clean_up.shape)):
        got = m.restored_agreement(noisy, broken, noise=level)
        assert got["correlation_with_input"] < RESTORED_MIN_CORRELATION * got["correlation_ceiling"]
    clean = m.restored_agreement(signal, clean_up, noise=noise_level_function(signal))
    assert clean["correlation_ceiling"] > 0.97  # a clean input keeps the flat threshold
    assert m.restored_agreement(signal, clean_up)["correlation_ceiling"] is None


def test_undershoot_counts_values_below_the_darkest_input_and_says_when_it_cannot_see_them():
    from selfres.metrics import undershoot

    out = np.array([0.5, -0.1, -0.2, 0.0], np.float32)
    interp = np.array([0.5, -0.1, 0.0, 0.0], np.float32)
    u = undershoot(out, interp, floor=0.0)
    assert u["output"] == 0.5 and u["interpolation"] == 0.25 and u["detectable"] and u["output_min"] == pytest.approx(-0.2)
    # uint16 output whose darkest input voxel was 0: clipped at 0, so nothing can fall below it;
    # the interpolation is clipped the same way, and the check says it is blind
    blind = undershoot(np.clip(out, 0, None), interp, floor=0.0, lowest=0.0)
    assert blind["output"] == blind["interpolation"] == 0.0 and not blind["detectable"]


def test_overshoot_counts_values_above_the_brightest_input_by_more_than_the_depth():
    """restored_overshoots' measure (isotropic qc): only values more than the depth (0.05) above the
    brightest input voxel count; values within it (a restoration's own rounding) do not."""
    from selfres.metrics import overshoot

    out = np.array([1.0, 1.04, 1.2, 1.5], np.float32)
    interp = np.array([1.0, 1.0, 1.1, 0.9], np.float32)
    o = overshoot(out, interp, ceiling=1.0)
    assert o["output"] == 0.5 and o["interpolation"] == 0.25 and o["above"] == pytest.approx(1.05)
    assert o["output_max"] == pytest.approx(1.5)
    assert overshoot(np.full(4, 1.04, np.float32), interp, ceiling=1.0)["output"] == 0.0
    assert overshoot(np.zeros(0, np.float32), np.zeros(0, np.float32), ceiling=1.0)["output_max"] is None


def test_brightening_is_the_ratio_of_the_brightest_structures_and_none_without_any():
    from selfres.metrics import brightening

    rng = np.random.default_rng(0)
    interp = np.full((4, 32, 32), 0.1, np.float32)
    interp[:, 10:14, 10:14] = 0.9  # bright structures, 6 % of the voxels
    assert brightening(1.5 * (interp - 0.1) + 0.1, interp)["ratio"] == pytest.approx(1.5, rel=1e-4)
    flat = (0.1 + 0.001 * rng.standard_normal((4, 32, 32))).astype(np.float32)  # only noise: no ratio
    assert brightening(flat * 3, flat)["ratio"] is None
    # a few hot voxels among the brightest do not decide it (the median of the ratios, not their mean)
    hot = 1.2 * (interp - 0.1) + 0.1
    hot[0, 10, 10:14] = 40.0
    assert brightening(hot, interp)["ratio"] == pytest.approx(1.2, rel=1e-4)


def test_scoring_without_a_bead_table_does_not_import_pandas():
    """Every train and qc job imports the metrics: pandas (about half a second per job) is
    imported only where a bead table is made."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from selfres import metrics; "
            "a = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32); metrics.psnr(a, a * 0.9); "
            "print('pandas' in sys.modules, type(metrics.bead_fwhm_table(np.zeros((9, 9, 9), np.float32))).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "DataFrame"]


def test_structure_share_tells_pure_noise_from_a_few_cells_in_a_wide_empty_field():
    """An acquisition of pure noise (an empty field, a closed shutter) came out `ok`: the network
    smooths noise and the held-out figures score it as a gain. Its structure share is about 0,
    however bright the noise; a few cells in a wide noisy field are not (the largest tile counts)."""
    from selfres.noise import noise_level_function
    from selfres.pipeline import INPUT_MIN_STRUCTURE_SHARE

    rng = np.random.default_rng(1)

    def share(expected):
        counts = rng.poisson(expected).astype(np.float32)
        return m.structure_share(counts, noise_level_function(counts))

    for background in (1.0, 10.0, 200.0):  # pure noise, dim to bright
        assert abs(share(np.full((24, 128, 128), background))) < 0.05
    cells = np.zeros((24, 128, 128))
    cells[12, [30, 90, 60], [40, 100, 20]] = 1.0
    cells = ndimage.gaussian_filter(cells, (3, 5, 5))
    cells = 10.0 + 20.0 * cells / cells.max()  # three cells of 20 photons on 10 of background
    assert share(cells) > 3 * INPUT_MIN_STRUCTURE_SHARE
    clean = ndimage.gaussian_filter(rng.random((12, 40, 44)), 1.5)
    assert m.structure_share(clean, noise_level_function(clean)) > 0.9
    assert m.structure_share(clean[0], noise_level_function(clean[0])) > 0.9  # one plane (2-D input)
    from selfres.noise import NoiseLevel

    assert m.structure_share(clean, NoiseLevel(0.0, 0.0)) is None  # nothing measured: no figure
    # what carries over from plane to plane: nothing for noise, much for anything the optics spread
    assert abs(m.plane_correlation(rng.poisson(5.0, (12, 64, 64)))) < 0.03
    assert m.plane_correlation(clean) > 0.3 and m.plane_correlation(clean[:1]) is None
    spiked = clean.copy()  # six cosmic-ray hits, one plane each: the cells still carry over
    for z, y, x in ((1, 5, 5), (3, 20, 30), (5, 33, 9), (7, 12, 40), (9, 30, 22), (11, 2, 17)):
        spiked[z, y, x] = 1000.0
    assert m.plane_correlation(spiked) > 0.9 * m.plane_correlation(clean)
    assert m.structure_share(np.ones((4, 16, 16)), NoiseLevel(0.0, 1e-3, bins=3)) is None  # constant
