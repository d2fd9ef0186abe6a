"""Tests of selfres.demo: synthetic phantoms and the demo writer."""

from __future__ import annotations

import numpy as np
import pytest

from selfres import demo, io


def test_beads_peak_positions_and_determinism():
    shape = (20, 64, 64)
    vol = demo.make_beads(shape=shape, n_beads=5, sigma_px=(2.0, 1.0, 1.0), seed=3)
    pos = demo.bead_positions(shape=shape, n_beads=5, seed=3)
    assert vol.dtype == np.float32 and vol.shape == shape and pos.shape == (5, 3)
    # every bead sits on a local maximum of about 1 (sparse: little overlap)
    assert np.all(vol[tuple(pos.T)] >= 0.999)
    assert vol.max() < 1.2
    np.testing.assert_array_equal(
        vol, demo.make_beads(shape=shape, n_beads=5, sigma_px=(2.0, 1.0, 1.0), seed=3))
    assert not np.array_equal(
        vol, demo.make_beads(shape=shape, n_beads=5, sigma_px=(2.0, 1.0, 1.0), seed=4))


def test_bead_psf_is_anisotropic():
    vol = demo.make_beads(shape=(41, 41, 41), n_beads=1, sigma_px=(4.0, 2.0, 2.0), seed=0)
    z, y, x = (int(v) for v in demo.bead_positions(shape=(41, 41, 41), n_beads=1, seed=0)[0])
    # one sigma away from the centre the profile is exp(-1/2) of the peak
    for offset in ((4, 0, 0), (-4, 0, 0), (0, 2, 0), (0, 0, -2)):
        q = (z + offset[0], y + offset[1], x + offset[2])
        if all(0 <= v < 41 for v in q):
            assert vol[q] == pytest.approx(np.exp(-0.5), rel=1e-3)


def test_neurites_phantom_properties():
    vol = demo.make_neurites(shape=(16, 64, 64), n_filaments=6, seed=1)
    assert vol.dtype == np.float32 and vol.shape == (16, 64, 64)
    assert vol.min() == pytest.approx(0.02, abs=1e-3)  # low background
    assert vol.max() == pytest.approx(1.02, abs=1e-3)
    assert 0.01 < (vol > 0.2).mean() < 0.5  # sparse structures, not empty
    np.testing.assert_array_equal(vol, demo.make_neurites(shape=(16, 64, 64),
                                                          n_filaments=6, seed=1))
    assert not np.array_equal(vol, demo.make_neurites(shape=(16, 64, 64),
                                                      n_filaments=6, seed=2))


@pytest.mark.parametrize("shape, factor, expected", [
    ((8, 16, 16), 2, (4, 8, 8)),
    ((9, 17, 16), (1, 2, 4), (9, 8, 4)),
    ((16, 20), 4, (4, 5)),
])
def test_downsample_shapes_and_mean(shape, factor, expected):
    hr = np.full(shape, 3.0, np.float32)
    lr = demo.downsample_acquisition(hr, factor)
    assert lr.shape == expected and lr.dtype == np.float32
    np.testing.assert_allclose(lr, 3.0, rtol=1e-5)  # constant stays constant


def test_downsample_is_antialiased():
    hr = np.zeros((1, 32, 32), np.float32)
    hr[0, :, ::2] = 1.0  # Nyquist stripes along x
    lr = demo.downsample_acquisition(hr, (1, 1, 4))
    assert np.ptp(lr[0, 5]) < 0.2 and lr.mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("factor, match", [
    (0, "integer >= 1"), (1.5, "integer >= 1"), ((2, 2), "one per axis"), (64, "larger"),
])
def test_downsample_bad_factor(factor, match):
    with pytest.raises(ValueError, match=match):
        demo.downsample_acquisition(np.zeros((8, 16, 16)), factor)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4, 4)}, "shape must be 3"),
    ({"shape": (4, 4, 0)}, "shape must be 3"),
    ({"n_beads": -1}, "n_beads must be"),
    ({"sigma_px": (1, 1)}, "sigma_px must be"),
])
def test_make_beads_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.make_beads(**{"shape": (4, 8, 8), **kwargs})


def test_demo_table_matches_the_specification():
    beads, neur = demo.DEMO_SAMPLES["beads"], demo.DEMO_SAMPLES["neurites"]
    assert beads["shape"] == (60, 512, 512) and beads["voxel_size"] == (0.5, 0.25, 0.25)
    assert neur["shape"] == (64, 256, 256) and neur["voxel_size"] == (1.0, 0.5, 0.5)
    for spec, acq_shape in ((beads, (15, 128, 128)), (neur, (32, 128, 128))):
        assert tuple(n // f for n, f in zip(spec["shape"], spec["factor"])) == acq_shape
        assert tuple(v * f for v, f in zip(spec["voxel_size"], spec["factor"])) == (2, 1, 1)


@pytest.fixture
def small_demo(monkeypatch):
    """The demo table with small volumes so the writer can be tested quickly."""
    monkeypatch.setitem(demo.DEMO_SAMPLES, "beads", {
        "shape": (12, 64, 64), "voxel_size": (0.5, 0.25, 0.25), "factor": (4, 4, 4),
        "n_beads": 20})
    monkeypatch.setitem(demo.DEMO_SAMPLES, "neurites", {
        "shape": (16, 64, 64), "voxel_size": (1.0, 0.5, 0.5), "factor": (2, 2, 2),
        "n_filaments": 6})


def test_write_demo_files_units_and_noise(tmp_path, small_demo):
    out = demo.write_demo(tmp_path, seed=0)
    assert set(out) == {"beads", "neurites"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "beads.tif", "beads_reference.tif", "neurites.tif", "neurites_reference.tif"]
    acq = io.read_volume(out["neurites"]["acquisition"])
    ref = io.read_volume(out["neurites"]["reference"])
    assert acq.shape == (8, 32, 32) and acq.voxel_size == pytest.approx((2.0, 1.0, 1.0))
    assert ref.shape == (16, 64, 64) and ref.voxel_size == pytest.approx((1.0, 0.5, 0.5))
    assert acq.source_dtype == np.uint16 == ref.source_dtype
    assert ref.data.max() == pytest.approx(0.9 * 65535, abs=1)
    assert acq.data.max() > 0.5 * 65535
    # same intensity units: the acquisition is a noisy downsampled reference
    down = demo.downsample_acquisition(ref.data, 2)
    assert np.corrcoef(down.ravel(), acq.data.ravel())[0, 1] > 0.95
    assert 0 < np.abs(down - acq.data).mean() < 0.05 * down.max()
    bead_acq = io.read_volume(out["beads"]["acquisition"])
    assert bead_acq.shape == (3, 16, 16) and bead_acq.voxel_size == pytest.approx((2, 1, 1))


def test_write_demo_is_deterministic_by_seed(tmp_path, small_demo):
    def acquisition(folder, seed):
        path = demo.write_demo(tmp_path / folder, samples=("beads",), seed=seed)["beads"]
        return io.read_volume(path["acquisition"]).data

    first = acquisition("a", 0)
    np.testing.assert_array_equal(first, acquisition("b", 0))
    assert not np.array_equal(first, acquisition("c", 1))


def test_a_demo_sample_is_the_same_written_alone_or_with_the_others(tmp_path, small_demo):
    """The noise was seeded by the sample's position in the request: neurites written alone
    got the beads' noise stream, another acquisition than the one the demo's figures describe."""
    both = demo.write_demo(tmp_path / "both", seed=0)
    for name in ("neurites", "beads"):
        alone = demo.write_demo(tmp_path / name, samples=(name,), seed=0)[name]
        np.testing.assert_array_equal(io.read_volume(alone["acquisition"]).data,
                                      io.read_volume(both[name]["acquisition"]).data)


def test_write_demo_unknown_sample(tmp_path):
    with pytest.raises(ValueError, match="unknown demo sample.*allowed: \\['beads', 'neurites'\\]"):
        demo.write_demo(tmp_path, samples=("cells",))
