"""Unit tests of selfres.degrade: cubic matrices, PSFs, degradation, torch twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch

from selfres.degrade import (
    Degradation,
    TorchDegrader,
    add_noise,
    blur,
    degrade,
    downscale_cubic,
    gaussian_sigma_from_optics,
    keys_cubic,
    load_psf,
    resize_axes,
    resize_matrix,
    sigma_um_to_px,
    upscale_cubic,
)
from selfres.errors import ConfigError, InputError


def _keys_direct(d: float) -> float:
    """Keys (1981) cubic, a = -0.5, written out independently."""
    d = abs(d)
    if d <= 1:
        return 1.5 * d**3 - 2.5 * d**2 + 1
    if d < 2:
        return -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
    return 0.0


def _matrix_direct(n_in: int, n_out: int, s: float, antialias: bool) -> np.ndarray:
    """Loop evaluation of MATLAB imresize 'cubic' weights (symmetric borders)."""
    m = np.zeros((n_out, n_in))
    stretch = s if (s < 1 and antialias) else 1.0
    for j in range(n_out):
        u = (j + 0.5) / s - 0.5
        row = {}
        for i in range(math.floor(u - 2 / stretch) - 1, math.ceil(u + 2 / stretch) + 2):
            w = stretch * _keys_direct(stretch * (u - i))
            k = i
            while k < 0 or k >= n_in:  # symmetric: -1 -> 0, n -> n-1
                k = -k - 1 if k < 0 else 2 * n_in - 1 - k
            row[k] = row.get(k, 0.0) + w
        total = sum(row.values())
        for k, w in row.items():
            m[j, k] = w / total
    return m


# ---------------------------------------------------------------- matrices


@pytest.mark.parametrize("d, expected", [(0, 1.0), (0.5, 0.5625), (1, 0.0), (1.5, -0.0625),
                                         (2, 0.0), (-0.25, 0.8671875), (3.0, 0.0)])
def test_keys_kernel_values(d, expected):
    assert keys_cubic(d) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_in, n_out, scale, antialias", [
    (8, 16, None, True), (16, 8, None, True), (16, 8, None, False), (12, 3, None, True),
    (10, 25, 2.5, False), (7, 7, None, True), (5, 11, 2.2, True), (1, 4, None, True),
])
def test_resize_matrix_matches_direct_evaluation(n_in, n_out, scale, antialias):
    m = resize_matrix(n_in, n_out, scale=scale, antialias=antialias)
    s = scale if scale is not None else n_out / n_in
    assert m.shape == (n_out, n_in) and m.dtype == np.float64
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, _matrix_direct(n_in, n_out, s, antialias), atol=1e-12)


def test_resize_matrix_matlab_weights_and_cache():
    # MATLAB imresize(x, 0.5, 'bicubic') interior row: 0.5·keys(0.5·d), d=±0.5..±3.5
    m = resize_matrix(16, 8)
    np.testing.assert_allclose(
        m[3, 3:11], [-0.01171875, -0.03515625, 0.11328125, 0.43359375,
                     0.43359375, 0.11328125, -0.03515625, -0.01171875])
    # symmetric border: index -1 folds onto 0 (first row of a x2 upscale)
    up = resize_matrix(4, 8)
    assert up[0, 0] == pytest.approx(_keys_direct(0.25) + _keys_direct(0.75))  # = 1.09375
    assert up[0, 1] == pytest.approx(_keys_direct(1.25) + _keys_direct(1.75))  # = -0.09375
    np.testing.assert_array_equal(resize_matrix(6, 6), np.eye(6))
    assert resize_matrix(16, 8) is m  # cached
    assert not m.flags.writeable


@pytest.mark.parametrize("kwargs, match", [
    ({"n_in": 0, "n_out": 4}, "n_in must be an integer >= 1"),
    ({"n_in": 4, "n_out": 2.5}, "n_out must be an integer"),
    ({"n_in": 4, "n_out": 8, "scale": -2.0}, "scale must be a finite number > 0"),
])
def test_resize_matrix_rejects_bad_arguments(kwargs, match):
    n_in, n_out = kwargs.pop("n_in"), kwargs.pop("n_out")
    with pytest.raises(ValueError, match=match):
        resize_matrix(n_in, n_out, **kwargs)


def test_antialias_suppresses_frequencies_above_new_nyquist():
    x = np.cos(2 * np.pi * 0.4 * np.arange(64))  # 0.4 cycles/px > 0.25 after /2
    assert np.abs(resize_axes(x, (32,), antialias=True)[4:-4]).max() < 0.05
    assert np.abs(resize_axes(x, (32,), antialias=False)[4:-4]).max() > 0.4


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 1), (4, 4, 4), (1.5, 2, 2.5)])
def test_upscale_preserves_constants_and_ramps(factors):
    shape = (6, 7, 8)
    const = np.full(shape, 3.25, np.float32)
    up = upscale_cubic(const, factors)
    assert up.shape == tuple(int(round(n * f)) for n, f in zip(shape, factors))
    assert up.dtype == np.float32
    np.testing.assert_allclose(up, 3.25, rtol=1e-6)
    # a linear ramp along x is reproduced exactly away from the borders
    ramp = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape)
    up = upscale_cubic(ramp, factors)
    fx = factors[2]
    pos = (np.arange(up.shape[2]) + 0.5) / fx - 0.5
    inner = (pos >= 1) & (pos <= shape[2] - 2)
    np.testing.assert_allclose(up[..., inner], np.broadcast_to(pos[inner], up[..., inner].shape),
                               atol=1e-5)


def test_downscale_of_upscale_is_near_identity_on_smooth_data():
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (8, 12, 12)), indexing="ij")
    lr = (np.sin(2 * z) + np.cos(3 * y) * x).astype(np.float32)
    back = downscale_cubic(upscale_cubic(lr, (2, 2, 2)), (2, 2, 2))
    np.testing.assert_allclose(back[2:-2, 2:-2, 2:-2], lr[2:-2, 2:-2, 2:-2], atol=5e-3)


def test_factor_one_is_identity_and_2d_works():
    rng = np.random.default_rng(0)
    img = rng.random((10, 12)).astype(np.float32)
    np.testing.assert_array_equal(downscale_cubic(img, (1, 1)), img)
    assert downscale_cubic(img, (2, 3)).shape == (5, 4)
    assert upscale_cubic(img[None], (1, 2, 2)).shape == (1, 20, 24)


@pytest.mark.parametrize("call, match", [
    (lambda a: downscale_cubic(a, (2, 2, 3)), r"shape \(4, 6, 8\) is not divisible"),
    (lambda a: downscale_cubic(a, (2, 0, 2)), "integers >= 1"),
    (lambda a: downscale_cubic(a, (1.5, 2, 2)), "integers >= 1"),
    (lambda a: upscale_cubic(a, (0.5, 2, 2)), "numbers >= 1"),
    (lambda a: upscale_cubic(a, (2, 2, 2, 2)), "one entry per axis"),
    (lambda a: resize_axes(a, (2, 2, 2, 2)), "at least 4 axes"),
])
def test_resampling_rejects_bad_factors(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.zeros((4, 6, 8), np.float32))


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2.5, 1, 1)])
def test_resize_axes_numpy_and_torch_agree(factors):
    x = np.random.default_rng(1).random((2, 4, 6, 8)).astype(np.float32)
    t = upscale_cubic(torch.from_numpy(x), factors)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), upscale_cubic(x, factors), atol=1e-6)


# ---------------------------------------------------------------- PSFs


@pytest.mark.parametrize("kind, na, lam, n, vox, expected", [
    # widefield (Zhang et al. 2007, 3-D paraxial): σxy = √2·0.52/(2π·1.4) = 0.0836 µm;
    # σz = 2√6·1.518·0.52/(2π·1.4²) = 0.31401 µm
    ("widefield", 1.4, 0.52, 1.518, (0.2, 0.1, 0.1), (1.5700548, 0.836008, 0.836008)),
    # confocal, λex = λem: widefield / √2
    ("confocal", 1.4, 0.52, 1.518, (0.2, 0.1, 0.1), (1.1101964, 0.5911469, 0.5911469)),
    # two-photon NA > 0.7: ωxy = 0.325·0.92/(√2·0.8^0.91), ωz = 0.532·0.92/√2/(1.33-√(1.33²-0.64)), σ = ω/√2
    ("two_photon", 0.8, 0.92, 1.33, (1.0, 0.5, 0.5), (0.9148311, 0.3663189, 0.3663189)),
    # two-photon NA <= 0.7 in air: ωxy = 0.32·0.92/(√2·0.5) = 0.41634 µm, σ = ω/√2 = 0.2944 µm
    ("two_photon", 0.5, 0.92, 1.0, (1.0, 0.5, 0.5), (1.8266149, 0.5888, 0.5888)),
])
def test_gaussian_sigma_from_optics(kind, na, lam, n, vox, expected):
    got = gaussian_sigma_from_optics(na=na, wavelength_um=lam, refractive_index=n,
                                     voxel_size=vox, kind=kind)
    assert got == pytest.approx(expected, rel=1e-6)


def test_optics_sigmas_agree_with_textbook_widths():
    """Independent checks: a widefield PSF is a little wider than its Airy disc (FWHM 0.51 λ/NA)
    and its axial FWHM near 0.88 λ/(n − √(n² − NA²)); a two-photon PSF is no narrower than the
    one-photon Airy disc at the same wavelength over √2 (squaring a Gaussian narrows it by √2)."""
    fwhm = 2 * math.sqrt(2 * math.log(2))
    sz, sxy, _ = gaussian_sigma_from_optics(na=0.3, wavelength_um=0.5, refractive_index=1.0,
                                            voxel_size=(1, 1, 1), kind="widefield")
    assert 1.0 < fwhm * sxy / (0.51 * 0.5 / 0.3) < 1.1
    assert 0.95 < fwhm * sz / (0.88 * 0.5 / (1 - math.sqrt(1 - 0.09))) < 1.15
    _, s2p, _ = gaussian_sigma_from_optics(na=1.0, wavelength_um=0.8, refractive_index=1.33,
                                           voxel_size=(1, 1, 1), kind="two_photon")
    assert fwhm * s2p >= 0.51 * 0.8 / 1.0 / math.sqrt(2)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "sted"}, "PSF kind must be one of widefield, confocal, two_photon"),
    ({"na": 1.6}, r"na \(1.6\) must be smaller than refractive_index"),
    ({"wavelength_um": 0}, "wavelength_um must be a number > 0"),
    ({"voxel_size": (1, 1)}, "voxel_size must be three numbers"),
])
def test_gaussian_sigma_from_optics_errors(kwargs, match):
    args = dict(na=1.2, wavelength_um=0.5, refractive_index=1.33, voxel_size=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        gaussian_sigma_from_optics(**args)


def test_sigma_um_to_px():
    assert sigma_um_to_px((1.0, 0.2, 0.3), (0.5, 0.1, 0.1)) == pytest.approx((2, 2, 3))
    with pytest.raises(ConfigError, match="sigma_um must be three numbers >= 0"):
        sigma_um_to_px((1.0, -0.2, 0.3), (0.5, 0.1, 0.1))


def test_load_psf_normalises_and_centres(tmp_path):
    psf = np.zeros((4, 6, 6), np.float32)
    psf[1, 2, 3] = 3.0
    psf[1, 2, 2] = 1.0
    psf[0, 0, 0] = -0.5  # background-subtraction residue: clipped
    tifffile.imwrite(tmp_path / "psf.tif", psf, photometric="minisblack")
    got = load_psf(tmp_path / "psf.tif")
    assert all(n % 2 == 1 for n in got.shape)
    assert got.sum() == pytest.approx(1.0, abs=1e-6)
    centre = tuple(n // 2 for n in got.shape)
    assert got[centre] == pytest.approx(0.75)


def test_load_psf_takes_away_a_measured_stacks_background(tmp_path):
    """A bead crop on a camera offset (peak 1000 over 100): the offset is not PSF; kept, it was
    ~97 % of the normalised mass, a near-uniform blur over the crop."""
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2 for n in (15, 21, 21)), indexing="ij")
    bead = np.exp(-(z**2 / (2 * 2.0**2) + (y**2 + x**2) / (2 * 1.2**2)))
    tifffile.imwrite(tmp_path / "clean.tif", (1000 * bead).astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "offset.tif", (1000 * bead + 100).astype(np.float32), photometric="minisblack")
    clean, measured = load_psf(tmp_path / "clean.tif"), load_psf(tmp_path / "offset.tif")
    assert measured.shape == clean.shape
    np.testing.assert_allclose(measured, clean, atol=1e-4)


def test_load_psf_keeps_the_wings_of_a_psf_cropped_inside_them(tmp_path):
    """A computed PSF (no background) cropped at ±1.5σ laterally: the median of its faces is its
    own signal, and taking it away cut 21 % of its mass and 11 % of its lateral width. A noisy
    camera offset is still taken away whole."""
    z, y, x = np.meshgrid(*(np.arange(7) - 3,) * 3, indexing="ij")
    psf = np.exp(-(z**2 / (2 * 2.0**2) + (y**2 + x**2) / (2 * 1.5**2)))
    tifffile.imwrite(tmp_path / "tight.tif", psf.astype(np.float32), photometric="minisblack")

    def lateral_sd(a):
        m = a.sum(axis=(0, 1)) / a.sum()
        c = np.arange(m.size)
        return float(np.sqrt(((c - (c * m).sum()) ** 2 * m).sum()))

    assert lateral_sd(load_psf(tmp_path / "tight.tif")) == pytest.approx(lateral_sd(psf), rel=0.05)
    noisy = 1000 * psf + 100 + np.random.default_rng(0).normal(0, 10, psf.shape)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy.astype(np.float32), photometric="minisblack")
    np.testing.assert_allclose(load_psf(tmp_path / "noisy.tif"), load_psf(tmp_path / "tight.tif"), atol=0.01)
    # a bead stack in low light, cropped wide: faces flat but noisy (read noise 0.6 × the offset)
    # are its background, taken away whole (a test on their spread kept it as a box blur)
    z, y, x = np.meshgrid(*(np.arange(31) - 15,) * 3, indexing="ij")
    core = 2000 * np.exp(-(z**2 / (2 * 4.0**2) + (y**2 + x**2) / (2 * 1.5**2)))
    dim = core + 10 + np.random.default_rng(1).normal(0, 6, core.shape)
    tifffile.imwrite(tmp_path / "dim.tif", dim.astype(np.float32), photometric="minisblack")
    kernel = load_psf(tmp_path / "dim.tif")
    assert kernel[core < 0.01 * core.max()].sum() < 0.25  # the pedestal kept: 0.45


@pytest.mark.parametrize("content, match", [
    (None, "PSF file not found"),
    (b"not a tiff", "cannot read the PSF as a TIFF"),
    (np.zeros((5, 5), np.float32), r"no positive values"),
    (np.zeros((2, 3, 5, 5), np.float32) + 1, "2-D or 3-D"),
])
def test_load_psf_errors(tmp_path, content, match):
    path = tmp_path / "psf.tif"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        tifffile.imwrite(path, content, photometric="minisblack")
    with pytest.raises(InputError, match=match):
        load_psf(path)


def test_blur_with_delta_psf_is_identity_and_gaussian_keeps_constants():
    x = np.random.default_rng(2).random((5, 9, 9)).astype(np.float32)
    delta = np.zeros((3, 3, 3), np.float32)
    delta[1, 1, 1] = 1
    np.testing.assert_allclose(blur(x, psf=delta), x, atol=1e-6)
    np.testing.assert_allclose(blur(np.ones((4, 6, 6)), sigma_px=(1, 2, 3)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one of sigma_px or psf"):
        blur(x)


# ---------------------------------------------------------------- degradation


def _delta_variance(profile: np.ndarray, f: int) -> float:
    centres = np.arange(profile.size) * f + (f - 1) / 2  # LR centres in HR units
    w = profile / profile.sum()
    mean = (w * centres).sum()
    return float((w * (centres - mean) ** 2).sum())


@pytest.mark.parametrize("sigma, factors", [((2.0, 3.0, 1.5), (2, 1, 2)), ((3.0, 2.0, 2.5), (1, 2, 4))])
def test_gaussian_degrade_of_delta_has_expected_width(sigma, factors):
    hr = np.zeros((48, 48, 48), np.float32)
    hr[24, 24, 24] = 1.0
    lr = degrade(hr, factors, Degradation(method="gaussian", sigma_px=sigma))
    assert lr.sum() == pytest.approx(1.0 / np.prod(factors), rel=1e-5)
    for axis, (s, f) in enumerate(zip(sigma, factors)):
        profile = lr.sum(axis=tuple(a for a in range(3) if a != axis))
        # block-mean sampling adds the within-block variance (f² - 1)/12 (Sheppard); an axis
        # with factor 1 is not resampled, so not blurred (the delta stays one voxel wide)
        expected = s**2 + (f**2 - 1) / 12 if f > 1 else 0.0
        assert _delta_variance(profile, f) == pytest.approx(expected, rel=0.01, abs=1e-6)


@pytest.mark.parametrize("method", ["gaussian", "psf"])
def test_degradation_leaves_axes_with_factor_one_unblurred(method):
    """Scale 1,2,2 with a PSF's z blur in the degradation would teach z deconvolution: the
    input of a pair must be as sharp along z as its target (numpy and torch paths alike)."""
    import torch

    zz, yy, xx = np.meshgrid(*(np.arange(-6, 7),) * 3, indexing="ij")
    psf = np.exp(-(zz**2 / (2 * 3.0**2) + (yy**2 + xx**2) / (2 * 1.5**2)))
    deg = (Degradation(method="gaussian", sigma_px=(3.0, 1.5, 1.5)) if method == "gaussian"
           else Degradation(method="psf", psf=psf))
    hr = np.zeros((24, 32, 32), np.float32)
    hr[12, 16, 16] = 1.0
    for lr in (degrade(hr, (1, 2, 2), deg),
               TorchDegrader((1, 2, 2), deg)(torch.from_numpy(hr)[None, None])[0, 0].numpy()):
        z_profile = lr.sum(axis=(1, 2))
        assert z_profile[12] == pytest.approx(z_profile.sum(), rel=1e-5)  # all of it in its own plane
        y_profile = lr.sum(axis=(0, 2))
        assert _delta_variance(y_profile, 2) == pytest.approx(1.5**2 + 3 / 12, rel=0.03)


def test_block_degradation_is_pixel_binning():
    hr = np.random.default_rng(7).random((4, 6, 9)).astype(np.float32)
    got = degrade(hr, (2, 3, 3), Degradation(method="block"))
    np.testing.assert_allclose(got, hr.reshape(2, 2, 2, 3, 3, 3).mean(axis=(1, 3, 5)), atol=1e-6)


def _psf_array() -> np.ndarray:
    g = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
    return np.einsum("i,j,k->ijk", g[1:-1], g, g[::-1] ** 0.5)


@pytest.mark.parametrize("degradation", [
    Degradation(),
    Degradation(method="block"),
    Degradation(method="gaussian", sigma_px=(1.0, 2.0, 0.7)),
    Degradation(method="psf", psf=_psf_array()),
], ids=["cubic", "block", "gaussian", "psf"])
@pytest.mark.parametrize("factors, shape", [
    ((2, 2, 2), (8, 16, 16)), ((1, 2, 2), (6, 16, 12)), ((2, 1, 1), (8, 10, 10)),
    ((4, 4, 4), (8, 16, 16)), ((1, 2, 2), (1, 16, 16)),
])
def test_degrade_numpy_and_torch_agree(degradation, factors, shape):
    hr = np.random.default_rng(3).random((2, *shape)).astype(np.float32)
    ref = degrade(hr, factors, degradation)
    assert ref.shape == (2, *(n // f for n, f in zip(shape, factors)))
    got = TorchDegrader(factors, degradation)(torch.from_numpy(hr)[:, None])
    assert got.shape == (2, 1, *ref.shape[1:])
    np.testing.assert_allclose(got[:, 0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("degradation", [
    Degradation(), Degradation(method="block"), Degradation(method="gaussian", sigma_px=(0.0, 1.0, 1.0)),
    Degradation(method="psf", psf=_psf_array()),
], ids=["cubic", "block", "gaussian", "psf"])
def test_torch_degrader_on_2d_batches(degradation):
    hr = np.random.default_rng(4).random((3, 1, 16, 12)).astype(np.float32)
    ref = degrade(hr[:, 0], (2, 2), degradation)
    got = TorchDegrader((1, 2, 2), degradation)(torch.from_numpy(hr))
    np.testing.assert_allclose(got[:, 0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "bicubic"}, "method must be one of cubic, block, gaussian, psf"),
    ({"method": "block", "sigma_px": (1, 1, 1)}, "only used with method 'gaussian'"),
    ({"method": "gaussian"}, "needs sigma_px"),
    ({"method": "gaussian", "sigma_px": (1, -1, 1)}, "2 or 3 numbers >= 0"),
    ({"sigma_px": (1, 1, 1)}, "only used with method 'gaussian'"),
    ({"method": "psf"}, "needs psf or psf_path"),
    ({"noise": "gaussian"}, "noise must be one of none, poisson_gaussian"),
    ({"gain": 0}, "gain must be > 0"),
    ({"read_sigma": -0.1}, "read_sigma must be >= 0"),
])
def test_degradation_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Degradation(**kwargs)


def test_degrade_rejects_indivisible_shapes():
    with pytest.raises(ValueError, match=r"shape \(5, 8, 8\) is not divisible by factors \(2, 2, 2\)"):
        degrade(np.zeros((5, 8, 8), np.float32), (2, 2, 2), Degradation())
    with pytest.raises(ValueError, match="expected \\(B, 1, Z, Y, X\\)"):
        TorchDegrader((2, 2, 2), Degradation())(torch.zeros(2, 8, 8))


def test_poisson_gaussian_noise_statistics_and_reproducibility():
    x = np.full((64, 64, 16), 0.5, np.float32)
    y = add_noise(x, gain=50.0, read_sigma=0.02, rng=0)
    assert y.mean() == pytest.approx(0.5, abs=0.005)
    assert y.var() == pytest.approx(0.5 / 50 + 0.02**2, rel=0.05)
    np.testing.assert_array_equal(y, add_noise(x, gain=50.0, read_sigma=0.02, rng=0))
    d = Degradation(noise="poisson_gaussian", gain=50.0, read_sigma=0.02)
    t = torch.full((1, 1, 8, 64, 64), 0.5)
    a = TorchDegrader((2, 2, 2), d)(t, generator=torch.Generator().manual_seed(1))
    b = TorchDegrader((2, 2, 2), d)(t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert float(a.var()) == pytest.approx(0.5 / 50 + 0.02**2, rel=0.1)


@pytest.mark.parametrize("pads", [(0, 2, 3), ((1, 0), (0, 5), (7, 2)), (12, 0, 1)])
@pytest.mark.parametrize("edge, mode", [(True, "symmetric"), (False, "reflect")])
def test_mirror_pad_equals_numpy_pad_for_any_pad_on_arrays_and_tensors(pads, edge, mode):
    """Pads wider than the axis (12 on an axis of 4) mirror again, as numpy does."""
    from selfres import degrade as D

    x = np.random.default_rng(0).random((2, 4, 5, 6))
    want = np.pad(x, [(0, 0)] + [(p, p) if np.isscalar(p) else p for p in pads], mode=mode)
    np.testing.assert_array_equal(D.mirror_pad(x, pads, edge=edge), want)
    np.testing.assert_array_equal(D.mirror_pad(torch.from_numpy(x), pads, edge=edge).numpy(), want)


# ---------------------------------------------------------------- found by a mutation review


@pytest.mark.parametrize("noise", [dict(noise="poisson_gaussian", gain=50.0, read_sigma=0.01),
                                   dict(noise="affine_gaussian", noise_variance=(0.004, 1e-4))])
def test_noise_on_normalised_data_below_zero_stays_finite_in_both_paths(noise):
    """Normalised data lies partly below 0 (under the low percentile, cubic ringing): the shot
    noise there has no negative rate, and the affine variance no negative value (a NaN or an
    error otherwise)."""
    hr = np.full((8, 16, 16), 0.3, np.float32)
    hr[:, :, :6] = -0.1
    deg = Degradation(**noise)
    lr = degrade(hr, (2, 2, 2), deg, rng=0)
    batch = TorchDegrader((2, 2, 2), deg)(torch.from_numpy(hr)[None, None], generator=torch.Generator().manual_seed(0))
    for out in (lr, batch[0, 0].numpy()):
        assert np.isfinite(out).all()
        assert abs(float(out[:, :, 4:].mean()) - 0.3) < 0.03  # the bright part keeps its level


def test_torch_read_noise_has_the_given_standard_deviation_where_there_is_no_signal():
    deg = Degradation(noise="poisson_gaussian", gain=100.0, read_sigma=0.02)
    out = TorchDegrader((1, 2, 2), deg)(torch.zeros(4, 1, 8, 64, 64), generator=torch.Generator().manual_seed(1))
    assert float(out.std()) == pytest.approx(0.02, rel=0.05)


def test_add_noise_keeps_the_mean_of_voxels_brighter_than_the_normalised_range():
    """Voxels above 1 (above the high percentile) keep their level under shot noise."""
    out = add_noise(np.full((64, 64), 3.0, np.float32), gain=100.0, read_sigma=0.0, rng=0)
    assert float(out.mean()) == pytest.approx(3.0, rel=0.01)


def _comet_psf() -> np.ndarray:
    """An asymmetric PSF (a comet: brighter and longer on one side in z, y and x)."""
    z, y, x = np.meshgrid(np.arange(9) - 4.0, np.arange(7) - 3.0, np.arange(7) - 3.0, indexing="ij")
    p = np.exp(-0.5 * ((z - 1.0) ** 2 / 2.0 + (y - 0.7) ** 2 + (x + 0.5) ** 2 / 0.6))
    p[z > 2] *= 3.0
    return (p / p.sum()).astype(np.float32)


def test_a_measured_psf_is_convolved_with_mirrored_borders_in_both_paths():
    """An asymmetric PSF (the convolution, not the correlation) and the border mirrored
    without repeating the edge voxel, as scipy's 'mirror': numpy and torch alike."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    hr = rng.random((12, 16, 16)).astype(np.float32)
    hr[:, :, 0] += 5.0  # a bright edge: a border that repeats it differs
    psf = _comet_psf()
    np.testing.assert_allclose(blur(hr, psf=psf), ndimage.convolve(hr, psf.astype(np.float64), mode="mirror"),
                               atol=1e-5)
    deg = Degradation(method="psf", psf=psf)  # the kernel as the degradation keeps it (centred, background off)
    ref = degrade(hr, (2, 2, 2), deg)
    kept = np.asarray(deg.psf, np.float64)
    want = ndimage.convolve(hr, kept, mode="mirror").reshape(6, 2, 8, 2, 8, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(ref, want, atol=1e-5)
    got = TorchDegrader((2, 2, 2), deg)(torch.from_numpy(hr)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_a_non_separable_psf_keeps_its_central_plane_along_an_axis_that_is_not_resampled():
    """Scale 1,2,2: the lateral blur is the PSF's in-focus plane, not its projection (an
    hourglass PSF widens out of focus)."""
    z, y, x = np.meshgrid(np.arange(9) - 4.0, np.arange(13) - 6.0, np.arange(13) - 6.0, indexing="ij")
    width = 1.0 + 0.6 * np.abs(z)
    psf = np.exp(-0.5 * (y**2 + x**2) / width**2) / width**2
    hr = np.zeros((9, 32, 32), np.float32)
    hr[4, 16, 16] = 1.0
    deg = Degradation(method="psf", psf=psf)
    for lr in (degrade(hr, (1, 2, 2), deg),
               TorchDegrader((1, 2, 2), deg)(torch.from_numpy(hr)[None, None])[0, 0].numpy()):
        y_profile = lr.sum(axis=(0, 2))
        assert _delta_variance(y_profile, 2) == pytest.approx(1.0 + 3 / 12, rel=0.05)


@pytest.mark.parametrize("shape, sigma, factors, expected", [
    ((32, 32), (3.0, 1.0, 1.5), (2, 2), (1.0 + 0.25, 2.25 + 0.25)),  # 2-D: the last two of σz, σy, σx
    ((32, 32, 32), (1.5, 2.0), (2, 2, 2), (0.0, 2.25 + 0.25, 4.0 + 0.25)),  # (σy, σx) on a volume: z unblurred
])
def test_gaussian_sigmas_go_to_their_own_axes(shape, sigma, factors, expected):
    hr = np.zeros(shape, np.float32)
    hr[tuple(n // 2 for n in shape)] = 1.0
    deg = Degradation(method="gaussian", sigma_px=sigma)
    lr = degrade(hr, factors, deg)
    for axis, (f, want) in enumerate(zip(factors, expected)):
        profile = lr.sum(axis=tuple(a for a in range(lr.ndim) if a != axis))
        assert _delta_variance(profile, f) == pytest.approx(want, rel=0.02, abs=1e-6), axis


def test_a_non_integer_upscale_puts_each_output_voxel_at_its_own_position():
    """Output voxel j of a factor f sits at input coordinate (j + 0.5) / f − 0.5, also along an
    axis whose length n · f was rounded (7 planes × 1.5 → 10; isotropic mode's factors)."""
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 4, 4)).copy()
    out = np.asarray(upscale_cubic(ramp, (1.5, 1, 1)))
    assert out.shape[0] == round(7 * 1.5)
    pos = (np.arange(out.shape[0]) + 0.5) / 1.5 - 0.5
    inside = (pos >= 1) & (pos <= 5)  # away from the mirrored borders
    np.testing.assert_allclose(out[inside, 0, 0], pos[inside], atol=1e-4)


def test_the_cubic_downscale_suppresses_what_the_coarser_grid_cannot_hold():
    """A pattern of 0.4 cycles per voxel, above the ×2 grid's Nyquist (0.25): anti-aliased,
    it almost vanishes instead of folding back as a coarse pattern."""
    x = np.cos(2 * np.pi * 0.4 * np.arange(64, dtype=np.float32))
    plane = np.broadcast_to(x, (16, 64)).astype(np.float32)
    low = np.asarray(downscale_cubic(plane, (1, 2)))
    assert float(np.abs(low[:, 4:-4]).max()) < 0.1


def test_optics_sigmas_follow_each_lateral_voxel_size():
    """Voxels twice as long in x as in y: the same optical σ is half as many voxels in x."""
    s = gaussian_sigma_from_optics(na=1.0, wavelength_um=0.5, refractive_index=1.33, voxel_size=(0.5, 0.1, 0.2))
    assert s[1] == pytest.approx(2 * s[2], rel=1e-9)


# ---------------------------------------------------------------- found by a second mutation review


def test_a_non_integer_upscale_rounds_the_output_length_to_the_nearest():
    """n · f = 12.6 voxels (7 planes × 1.8) give 13, not 12: the length the pipeline allocates
    for a non-integer factor (``round``), each voxel still at (j + 0.5) / f − 0.5."""
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 3, 3)).copy()
    out = np.asarray(upscale_cubic(ramp, (1.8, 1, 1)))
    assert out.shape == (13, 3, 3)
    pos = (np.arange(13) + 0.5) / 1.8 - 0.5
    inside = (pos >= 1) & (pos <= 5)
    np.testing.assert_allclose(out[inside, 0, 0], pos[inside], atol=1e-4)


@pytest.mark.parametrize("n_in, n_out", [(12, 5), (7, 3)])
def test_an_antialiased_shrink_by_a_non_integer_ratio_keeps_the_mean(n_in, n_out):
    """The stretched kernel's taps sum to 1 only for integer ratios: rows are normalised
    (as MATLAB's imresize does), so a constant stays the same constant."""
    m = resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, _matrix_direct(n_in, n_out, n_out / n_in, True), atol=1e-12)


def test_shot_noise_below_zero_has_no_rate_rather_than_a_mirrored_one():
    """Normalised data under 0 (−0.2 here) has no photons: its shot noise is that of 0, not of
    +0.2 (a rate taken from |x| put the dark part's mean at +0.2 instead of 0)."""
    hr = np.full((8, 32, 32), -0.2, np.float32)
    deg = Degradation(noise="poisson_gaussian", gain=50.0, read_sigma=0.01)
    lr = degrade(hr, (2, 2, 2), deg, rng=0)
    batch = TorchDegrader((2, 2, 2), deg)(torch.from_numpy(hr)[None, None], generator=torch.Generator().manual_seed(0))
    for out in (lr, batch[0, 0].numpy(), add_noise(hr, gain=50.0, read_sigma=0.0, rng=1)):
        assert abs(float(out.mean())) < 0.01


def test_read_noise_has_the_given_standard_deviation_where_there_is_no_signal():
    """The numpy twin of the torch check: at zero signal only the read noise is left, of
    standard deviation ``read_sigma`` (its variance, 4e-4, passed for it unseen where shot
    noise dominated)."""
    out = add_noise(np.zeros((64, 64, 16), np.float32), gain=100.0, read_sigma=0.02, rng=0)
    assert float(out.std()) == pytest.approx(0.02, rel=0.05)
    lr = degrade(np.zeros((8, 64, 64), np.float32), (1, 2, 2),
                 Degradation(noise="poisson_gaussian", gain=100.0, read_sigma=0.02), rng=1)
    assert float(lr.std()) == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("factors, shape", [((1, 2, 2), (6, 16, 16)), ((1, 2, 2), (1, 16, 16)), ((2, 2, 2), (8, 16, 16))])
def test_a_psf_degradation_keeps_the_brightness_also_with_its_central_plane_alone(factors, shape):
    """At 1,2,2 (and on a single plane) a 3-D PSF blurs with its central plane alone, which is
    renormalised: a uniform volume stays uniform at its level (the plane's share of the PSF's
    mass, here about a fifth, darkened every training input otherwise), numpy and torch alike."""
    flat = np.full(shape, 0.6, np.float32)
    deg = Degradation(method="psf", psf=_comet_psf())
    np.testing.assert_allclose(degrade(flat, factors, deg), 0.6, rtol=1e-5)
    got = TorchDegrader(factors, deg)(torch.from_numpy(flat)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, 0.6, rtol=1e-5)


# ---------------------------------------------------------------- found by a third mutation review


def test_a_psf_given_as_an_array_is_centred_so_it_does_not_shift_the_training_input():
    """A PSF array whose mass sits off the middle of its crop (a bead not centred when cut out)
    is centred on construction, as a loaded one is: blurring with it must not move the image
    against its target (a pair that teaches a shift). A delta off-centre is the identity."""
    psf = np.zeros((7, 7, 7), np.float32)
    psf[2, 1, 5] = 4.0  # mass off the crop's centre on every axis; not summing to 1
    deg = Degradation(method="psf", psf=psf)
    assert float(deg.psf.sum()) == pytest.approx(1.0, abs=1e-6)
    hr = np.random.default_rng(5).random((8, 16, 16)).astype(np.float32)
    want = hr.reshape(4, 2, 8, 2, 8, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(degrade(hr, (2, 2, 2), deg), want, atol=1e-5)
    got = TorchDegrader((2, 2, 2), deg)(torch.from_numpy(hr)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("noise", [dict(noise="poisson_gaussian", gain=50.0, read_sigma=0.01),
                                   dict(noise="affine_gaussian", noise_variance=(0.004, 1e-4))])
def test_the_noise_of_a_degradation_follows_its_seed(noise):
    """The validation pair is made with a fixed seed (train: rng 12345): the same seed gives the
    same noisy input, another seed another one."""
    hr = np.full((4, 16, 16), 0.4, np.float32)
    deg = Degradation(**noise)
    a, b = degrade(hr, (1, 2, 2), deg, rng=7), degrade(hr, (1, 2, 2), deg, rng=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, degrade(hr, (1, 2, 2), deg, rng=8))


def test_confocal_sigma_uses_the_excitation_and_emission_wavelengths():
    """Confocal (small pinhole) is the excitation × emission PSF: λ_eff = λex·λem/√(λex² + λem²),
    here 0.488 and 0.52 µm → 0.35584 µm, then the widefield σ of λ_eff."""
    lam = 0.488 * 0.52 / math.sqrt(0.488**2 + 0.52**2)
    k = 2 * math.pi / lam
    got = gaussian_sigma_from_optics(na=1.4, wavelength_um=0.52, refractive_index=1.518,
                                     voxel_size=(0.2, 0.1, 0.1), kind="confocal",
                                     excitation_wavelength_um=0.488)
    want = (2 * math.sqrt(6) * 1.518 / (k * 1.4**2) / 0.2, math.sqrt(2) / (k * 1.4) / 0.1,
            math.sqrt(2) / (k * 1.4) / 0.1)
    assert got == pytest.approx(want, rel=1e-9)
    assert lam == pytest.approx(0.35584, abs=1e-5)


def test_an_objective_whose_na_equals_the_immersion_index_is_refused():
    with pytest.raises(ConfigError, match=r"na \(1.33\) must be smaller than refractive_index"):
        gaussian_sigma_from_optics(na=1.33, wavelength_um=0.5, refractive_index=1.33, voxel_size=(1, 1, 1))


def test_sigma_um_to_px_takes_a_zero_sigma_as_no_blur_along_that_axis():
    assert sigma_um_to_px((0.0, 0.2, 0.3), (0.5, 0.1, 0.1)) == pytest.approx((0.0, 2.0, 3.0))


def test_an_upscale_whose_rounded_length_is_unchanged_still_resamples_at_its_factor():
    """2 planes × 1.2 round to 2: the output voxels still sit at (j + 0.5)/1.2 − 0.5
    (−0.083 and 0.75), not at the input's own planes."""
    ramp = np.broadcast_to(np.array([0.0, 1.0], np.float32)[:, None, None], (2, 3, 3)).copy()
    out = np.asarray(upscale_cubic(ramp, (1.2, 1, 1)))
    assert out.shape == (2, 3, 3)
    m = resize_matrix(2, 2, scale=1.2, antialias=False)
    np.testing.assert_allclose(out[:, 0, 0], m @ np.array([0.0, 1.0]), atol=1e-6)
    assert abs(float(out[1, 0, 0]) - 1.0) > 0.05


def test_a_noisy_camera_offset_under_a_tightly_cropped_psf_is_taken_away():
    """Cropped inside its wings (faces still rising) and on a camera offset: the faces' lowest
    level is taken away, so the kernel keeps the PSF's lateral width (kept, the offset made it
    a box blur about 1.5 times wider)."""
    z, y, x = np.meshgrid(*(np.arange(7) - 3,) * 3, indexing="ij")
    psf = np.exp(-(z**2 / (2 * 2.0**2) + (y**2 + x**2) / (2 * 1.5**2)))
    noisy = 1000 * psf + 100 + np.random.default_rng(0).normal(0, 10, psf.shape)
    kernel = Degradation(method="psf", psf=noisy).psf

    def lateral_sd(a):
        m = a.sum(axis=(0, 1)) / a.sum()
        c = np.arange(m.size)
        return float(np.sqrt(((c - (c * m).sum()) ** 2 * m).sum()))

    assert lateral_sd(kernel) == pytest.approx(lateral_sd(psf), rel=0.1)


def test_a_2d_batch_refuses_a_z_factor_above_one():
    with pytest.raises(ValueError, match="z factor != 1 but the batch is 2-D"):
        TorchDegrader((2, 2, 2), Degradation())(torch.zeros(1, 1, 8, 8))
