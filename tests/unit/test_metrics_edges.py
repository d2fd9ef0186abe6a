"""Edge cases of selfres.metrics that the rest of test_metrics.py leaves open (found by
mutation testing): the default data range, window and neighbourhood boundaries, the
bootstrap's edge cases, and anisotropic pixels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from selfres import metrics as m

from .test_metrics import bead_lattice, random_structure

_SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def test_psnr_default_range_is_the_references_not_the_images():
    """The default peak is the reference's range: an output brighter than the truth does not
    raise its own score by widening the range."""
    ref = np.linspace(0.0, 1.0, 100).reshape(10, 10)
    img = 3.0 * ref  # range 3, error 2 ref
    mse = float(np.mean((2.0 * ref) ** 2))
    assert m.psnr(ref, img) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-12)
    assert m.psnr(img, ref) == pytest.approx(10 * math.log10(9.0 / mse), rel=1e-12)


@pytest.mark.parametrize("kwargs, shape, match", [
    ({"data_range": 1.0}, (0, 4), "non-empty"),
    ({"data_range": math.inf}, (4, 4), "positive finite"),
    ({"data_range": math.nan}, (4, 4), "positive finite"),
])
def test_psnr_refuses_empty_arrays_and_a_non_finite_range(kwargs, shape, match):
    ref = np.arange(math.prod(shape), dtype=float).reshape(shape)
    with pytest.raises(ValueError, match=match):
        m.psnr(ref, ref + 1.0, **kwargs)


def test_ssim_window_boundaries_at_eleven_samples():
    """An axis of exactly 11 samples holds the standard window: a (11, 24, 24) volume is
    scored with the 3-D window, and a (5, 11, 24) slab per z-slice with the standard 2-D one."""
    rng = np.random.default_rng(7)
    for shape in [(11, 24, 24), (5, 11, 24)]:
        ref = ndimage.gaussian_filter(rng.random(shape), 1.0)
        img = ref + rng.normal(0, 0.02, shape)
        if min(shape) >= 11:
            want = structural_similarity(ref, img, data_range=1.0, **_SK)
        else:
            want = np.mean([structural_similarity(r, i, data_range=1.0, **_SK) for r, i in zip(ref, img)])
        assert m.ssim(ref, img, data_range=1.0) == pytest.approx(want, rel=1e-9), shape


def test_psnr_gain_interval_edges():
    """Eight blocks are enough; an exact interpolation gives no interval (no ratio); a model
    exact in all blocks but one is exact in every block of a third of the resamples: an
    unbounded gain there, so the upper end is +inf (metrics.json: null) and the lower one a number."""
    rng = np.random.default_rng(0)
    ref = rng.random((4, 4, 4))  # grid (2, 4, 4) fits 2 × 2 × 2 blocks here
    interp = ref + 0.05 * rng.standard_normal(ref.shape)
    model = ref + 0.02 * rng.standard_normal(ref.shape)
    got = m.psnr_gain_interval(ref, model, interp)
    assert got is not None and got[0] < got[1]
    assert m.psnr_gain_interval(ref, model, ref) is None  # the interpolation is exact
    big = rng.random((16, 48, 48))
    interp = big + 0.05 * rng.standard_normal(big.shape)
    nearly = big.copy()
    nearly[:8, :12, :12] = interp[:8, :12, :12]  # wrong in one block of 32 only
    lo, hi = m.psnr_gain_interval(big, nearly, interp)
    assert np.isfinite(lo) and 0 < lo and hi == np.inf


@pytest.mark.parametrize("profile", [
    np.array([0.0, 1.0, 2.0, 0.5]),  # fewer than 5 samples
    np.exp(-0.5 * ((np.arange(21.0) - 20) / 4) ** 2),  # the maximum at the last sample
    0.1 + np.exp(-0.5 * ((np.arange(21.0) - 10) / 12) ** 2),  # σ 12: wider than half the profile
])
def test_fit_gaussian_fwhm_nan_for_profiles_it_cannot_measure(profile):
    assert math.isnan(m.fit_gaussian_fwhm(profile))


def test_bead_table_fits_at_most_max_beads_the_first_given():
    vol, centres = bead_lattice((1.0, 1.0, 1.0), per_axis=(1, 1, 3))
    pos = np.rint(centres).astype(int)
    df = m.bead_fwhm_table(vol, positions=pos, max_beads=2)
    assert len(df) == 2
    np.testing.assert_allclose(df[["z", "y", "x"]].to_numpy(), centres[:2], atol=0.2)
    assert len(m.bead_fwhm_table(vol, positions=pos, max_beads=3)) == 3


def test_detect_beads_default_border_is_twice_min_distance_on_both_ends():
    vol = np.zeros((24, 40, 40), np.float32)
    vol[12, 16, 2] = 1.0  # 2 from the face: kept (border 2 × min_distance 1)
    vol[12, 24, 37] = 0.9  # 2 from the far face (index 37 of 40): kept
    vol[12, 8, 1] = 0.8  # 1 from the face: rejected
    vol[12, 32, 38] = 0.7  # 1 from the far face: rejected
    assert m.detect_beads(vol, min_distance=1).tolist() == [[12, 16, 2], [12, 24, 37]]


def test_detect_beads_keeps_a_pair_one_beyond_the_isolation():
    vol = np.zeros((41, 41, 41), np.float32)
    vol[20, 20, 10] = 1.0
    vol[20, 20, 20] = 0.5  # 10 apart: one more than the default isolation (3 × 3)
    assert m.detect_beads(vol).tolist() == [[20, 20, 10], [20, 20, 20]]


def test_detect_beads_threshold_is_exclusive_and_relative_to_the_darkest_voxel():
    vol = np.zeros((16, 16, 32), np.float32)
    vol[8, 8, 8] = 1.0
    vol[8, 8, 20] = 0.2  # exactly at threshold_rel 0.2 of the range: not above it
    assert m.detect_beads(vol, min_distance=1, threshold_rel=0.2).tolist() == [[8, 8, 8]]
    vol[8, 8, 20] = 0.21
    assert m.detect_beads(vol, min_distance=1, threshold_rel=0.2).tolist() == [[8, 8, 8], [8, 8, 20]]
    # on a camera offset the threshold is a share of the range above the darkest voxel: the
    # flat background is no bead
    vol = np.full((24, 40, 40), 100.0, np.float32)
    vol[12, 10, 10], vol[12, 30, 30] = 101.0, 100.5
    assert m.detect_beads(vol).tolist() == [[12, 10, 10], [12, 30, 30]]


def test_detect_beads_a_bead_is_the_maximum_of_its_whole_box():
    """A spot min_distance from a brighter one, on either side, is not a maximum of its box."""
    for side in (1, -1):
        vol = np.zeros((24, 24, 40), np.float32)
        vol[12, 12, 20] = 0.5
        vol[12, 12, 20 + 2 * side] = 1.0
        got = m.detect_beads(vol, min_distance=2, isolation=0)
        assert got.tolist() == [[12, 12, 20 + 2 * side]], side


def test_detect_beads_on_a_2d_image_and_threshold_range():
    img = np.zeros((40, 40), np.float32)
    img[20, 20] = 1.0
    assert m.detect_beads(img).tolist() == [[0, 20, 20]]
    with pytest.raises(ValueError, match="threshold_rel"):
        m.detect_beads(img, threshold_rel=1.0)


def test_bead_fwhm_summary_is_a_median_and_counts_beads_fitted_on_every_axis():
    nan = math.nan
    df = pd.DataFrame({"fwhm_z": [4.0, 4.0, nan, 4.0], "fwhm_y": [2.0, 2.0, 2.0, nan],
                       "fwhm_x": [2.0, 2.0, 2.0, 20.0]})
    for a, v in zip("zyx", (0.5, 0.1, 0.1)):
        df[f"fwhm_{a}_um"] = df[f"fwhm_{a}"] * v
    got = m.bead_fwhm_summary(df)
    assert got["n_beads"] == 2
    assert got["fwhm_x"] == 2.0 and got["fwhm_x_um"] == pytest.approx(0.2)  # the outlier does not move it
    assert got["fwhm_z"] == 4.0 and got["fwhm_y"] == 2.0


def test_psf_sigma_from_beads_accepts_exactly_min_beads():
    vol, centres = bead_lattice((1.0, 1.2, 1.2), per_axis=(1, 1, 3), seed=2)
    got = m.psf_sigma_from_beads(vol, (0.5, 0.1, 0.1), min_beads=3)
    assert got["n_beads"] == 3


def test_axial_spectrum_is_a_mean_per_line_whatever_the_lateral_size():
    """Input and output spectra are drawn together in QC, and an output is laterally larger:
    the power is a mean over z lines, the same for a volume and for it tiled laterally."""
    vol = np.random.default_rng(0).random((16, 6, 10))
    f1, p1 = m.axial_spectrum(vol, voxel_size=(1.0, 0.2, 0.2))
    f2, p2 = m.axial_spectrum(np.tile(vol, (1, 3, 2)), voxel_size=(1.0, 0.2, 0.2))
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(p1, p2, rtol=1e-9, atol=1e-9)


def test_lateral_spectrum_reaches_the_nyquist_of_the_finer_axis():
    vol = np.random.default_rng(0).random((2, 32, 32))
    freq, _ = m.lateral_spectrum(vol, voxel_size=(1.0, 0.2, 0.1))
    assert freq[-1] == pytest.approx(5.0, rel=0.05)


def test_lateral_resolution_from_the_richest_planes():
    """A stack whose sample fills a few planes (the rest noise) is measured on those planes."""
    rng = np.random.default_rng(0)
    vol = 0.01 * rng.standard_normal((40, 96, 96)).astype(np.float32)
    vol[14:24] += random_structure(2.0, shape=(10, 96, 96), noise=0.0)
    lateral, _ = m.resolution_lateral_axial(vol, voxel_size=(1, 1, 1))
    assert lateral / 2.0 == pytest.approx(2.5, rel=0.25)


def test_resolution_on_anisotropic_lateral_pixels_is_in_micrometres():
    """A blur isotropic in µm sampled on (1, 1, 0.5) µm voxels reads as it does on a cubic grid."""
    cubic = m.resolution_lateral_axial(random_structure((2.0, 2.0, 2.0), seed=3), voxel_size=(1, 1, 1))
    fine_x = m.resolution_lateral_axial(random_structure((2.0, 2.0, 4.0), shape=(48, 96, 192), seed=3),
                                        voxel_size=(1, 1, 0.5))
    np.testing.assert_allclose(fine_x, cubic, rtol=0.1)


def test_axial_resolution_with_eight_slices():
    lateral, axial = m.resolution_lateral_axial(random_structure(1.5, shape=(8, 64, 64)), voxel_size=(1, 1, 1))
    assert np.isfinite(axial)


def test_isotropic_decorrelation_reaches_beyond_the_coarser_axis_nyquist():
    """On rectangular pixels the discs run to the Nyquist frequency of the finer axis: an image
    sharper along its finely sampled columns reads finer than the rows' 2 µm limit."""
    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter((rng.random((128, 256)) < 0.01).astype(float), (1.0, 2.0))  # 1 µm, 0.5 µm
    img = img / img.max() + 0.01 * rng.standard_normal(img.shape)
    iso = m.decorrelation_resolution(img, pixel_size=(1.0, 0.25))
    assert iso < 2.0
    assert iso == pytest.approx(m.decorrelation_resolution(img, pixel_size=(1.0, 0.25), axis=1), rel=0.1)
