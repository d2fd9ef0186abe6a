from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from selfres import normalise


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_apply_then_undo_is_identity(dtype, blobs):
    raw = (blobs * 200).astype(dtype)
    p = normalise.fit_percentiles(raw, low_percentile=1, high_percentile=99.8)
    back = normalise.undo(normalise.apply(raw, p), p)
    np.testing.assert_allclose(back, raw.astype(np.float32), rtol=1e-5, atol=1e-3)


def test_percentiles_map_to_zero_and_one(blobs):
    p = normalise.fit_percentiles(blobs, low_percentile=2, high_percentile=98)
    n = normalise.apply(blobs, p)
    assert np.percentile(n, 2) == pytest.approx(0, abs=1e-5)
    assert np.percentile(n, 98) == pytest.approx(1, abs=1e-5)


def test_outliers_do_not_set_the_range(blobs):
    spiky = blobs.copy()
    spiky[0, 0, 0] = 1e6  # one hot pixel
    p = normalise.fit_percentiles(spiky, low_percentile=1, high_percentile=99.8)
    assert p.high < 10


def test_flat_and_constant_volumes_stay_invertible():
    flat = np.zeros((8, 32, 32), np.float32)
    flat[0, 0, 0] = 5  # percentiles coincide, range falls back to min/max
    p = normalise.fit_percentiles(flat)
    assert p.low == 0 and p.high == 5
    const = np.full((4, 8, 8), 3.0, np.float32)
    p = normalise.fit_percentiles(const)
    assert p.span == 1.0
    np.testing.assert_allclose(normalise.undo(normalise.apply(const, p), p), const)


def test_one_nan_voxel_is_refused_not_turned_into_nan_parameters(blobs):
    """A NaN made both percentiles NaN, and every normalised voxel with them (a notebook's
    array after a registration or a division)."""
    vol = blobs.astype(np.float32).copy()
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="1 of the .* voxels sampled for the percentiles are NaN or infinite"):
        normalise.fit_percentiles(vol)
    vol[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalise.fit_percentiles(vol)


def test_dask_input_and_subsampling_agree_with_numpy(blobs):
    p1 = normalise.fit_percentiles(blobs)
    p2 = normalise.fit_percentiles(da.from_array(blobs, chunks=(8, 16, 16)))
    assert p1 == p2
    p3 = normalise.fit_percentiles(blobs, max_sample_voxels=blobs.size // 8)
    assert p3.high == pytest.approx(p1.high, rel=0.1)


def test_subsampling_keeps_every_plane_of_a_stack_of_few_large_planes():
    """One stride on every axis sampled plane 0 only of a (2, 2048, 2048) stack: a dark
    first plane then set the range, and the sample plane came out ~130 instead of ~1."""
    vol = np.full((2, 2048, 2048), 100.0, np.float32)
    vol[1] += np.linspace(0, 2000, 2048, dtype=np.float32)[None, :]
    p = normalise.fit_percentiles(da.from_array(vol, chunks=(1, 1024, 1024)))
    assert p.high == pytest.approx(np.percentile(vol, 99.8), rel=0.01)
    assert normalise.sample_strides((2, 2048, 2048), 4_000_000) == (1, 2, 2)
    strides = normalise.sample_strides((300, 1000, 1000), 4_000_000)
    assert np.prod([-(-n // s) for n, s in zip((300, 1000, 1000), strides)]) <= 4_000_000


def test_normalising_keeps_the_low_digits_of_an_offset_32_bit_or_float64_volume():
    low = 2_000_000_000
    p = normalise.NormParams(float(low), float(low + 10), 1.0, 99.8)
    for dtype in (np.int64, np.uint32, np.float64):
        x = np.array([low + 3, low + 5], dtype)
        np.testing.assert_allclose(normalise.apply(x, p), [0.3, 0.5], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_an_offset_wide_integer_volume_comes_back_exactly(dtype):
    """Normalised and back into its own dtype (``infer.output_dtype: input``), every value of an
    offset 32/64-bit volume survives: in float32 the way back kept only even values near 2e7."""
    x = (20_000_000 + np.arange(1000)).astype(dtype)
    p = normalise.fit_percentiles(x)
    np.testing.assert_array_equal(normalise.to_dtype(normalise.apply(x, p), p, dtype), x)


def test_an_offset_float64_volume_keeps_its_digits_on_the_way_back():
    x = 1e6 + np.linspace(0, 1, 1000)
    p = normalise.fit_percentiles(x)
    back = normalise.to_dtype(normalise.apply(x, p), p, np.float64)
    assert back.dtype == np.float64 and len(np.unique(back)) == 1000  # float32 left 17 distinct values
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-6)


def test_non_finite_voxels_are_refused_for_an_integer_output_and_kept_in_a_float_one():
    """`infer.output_dtype: input` (uint16): a NaN of the network was written as 0 (numpy's cast,
    with a RuntimeWarning), where no check could see it; a float output keeps it for QC."""
    from selfres.errors import SelfresError

    p = normalise.NormParams(100.0, 1100.0, 0.1, 99.9)
    restored = np.array([0.1, np.nan, 0.5, np.inf], np.float32)
    with pytest.raises(SelfresError, match="holds 2 non-finite voxels .* uint16 .*infer.output_dtype: float32"):
        normalise.to_dtype(restored, p, np.uint16)
    kept = normalise.to_dtype(restored, p, np.float32)
    assert np.isnan(kept[1]) and np.isfinite(kept[[0, 2]]).all()


def test_params_round_trip_through_dict():
    p = normalise.NormParams(1.0, 9.0, 1.0, 99.8)
    assert normalise.NormParams.from_dict(p.to_dict()) == p


def test_cast_to_integer_dtype_rounds_and_clips():
    x = np.array([-3.2, 0.4, 0.6, 300.0], np.float32)
    np.testing.assert_array_equal(normalise.cast_to_dtype(x, np.uint8), [0, 0, 1, 255])


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_cast_to_a_wide_integer_dtype_clips_at_its_limits_without_wrapping(dtype):
    """float32's nearest value to int32's maximum is 2**31, which wrapped to the minimum:
    the brightest voxels came out darkest."""
    info = np.iinfo(dtype)
    x = np.array([1e30, -1e30, 7.6], np.float32)
    out = normalise.cast_to_dtype(x, dtype)
    assert out[0] >= info.max - 1024 and out[1] == info.min and out[2] == 8


def test_cast_to_a_signed_integer_dtype_keeps_negative_values():
    """A signed acquisition's restoration (ringing below 0, an offset-subtracted camera) keeps
    its negative values, rounded, and clips only at the dtype's own limits."""
    out = normalise.cast_to_dtype(np.array([-120.4, 5.6, -40000.0, 40000.0], np.float32), np.int16)
    np.testing.assert_array_equal(out, np.array([-120, 6, -32768, 32767], np.int16))


def test_cast_to_a_narrower_float_dtype_clips_instead_of_overflowing_to_inf():
    """``infer.output_dtype: input`` with a float16 acquisition: values beyond float16's
    range (±65504) became ±Inf in restored.ome.zarr."""
    x = np.array([-1e6, -70000.0, 1.5, 65504.0, 7e4, 1e30, np.nan], np.float32)
    out = normalise.cast_to_dtype(x, np.float16)
    big = float(np.finfo(np.float16).max)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out[:-1], np.array([-big, -big, 1.5, big, big, big], np.float16))
    assert np.isnan(out[-1])
    np.testing.assert_array_equal(normalise.cast_to_dtype(x[:-1], np.float64), x[:-1].astype(np.float64))


@pytest.mark.parametrize("dtype, offset, step", [("uint32", 100_000_000, 1), ("float64", 1e6, 1e-3)])
def test_normalise_stage_keeps_the_levels_of_an_offset_wide_acquisition(tmp_path, dtype, offset, step):
    """The stage reads the file in its own dtype: read as float32 first, uint32 1e8 + 0..999 kept
    126 of its 1000 levels (and float64 1e6 + [0, 1) 17), whatever normalise.apply then did."""
    import tifffile
    import zarr

    from selfres import pipeline

    rng = np.random.default_rng(0)
    raw = (offset + rng.integers(0, 1000, (6, 24, 28)) * step).astype(dtype)
    tifffile.imwrite(tmp_path / "wide.tif", raw, metadata={"axes": "ZYX"})
    pipeline.stage_normalise(tmp_path / "wide.tif", tmp_path / "n.ome.zarr", sample="s")
    store = zarr.open_group(str(tmp_path / "n.ome.zarr"), mode="r")
    assert len(np.unique(store["0"][:])) == len(np.unique(raw))


def test_the_normalise_stage_maps_the_percentiles_it_is_given(tmp_path, blobs):
    """normalise.low_percentile / high_percentile reach the parameters the store records and
    applies: fixing them at the defaults failed no test (a mutation review)."""
    import tifffile

    from selfres import pipeline
    from selfres.pipeline import read_normalized
    from selfres.settings import NormaliseSettings

    raw = (blobs * 1000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", raw, metadata={"axes": "ZYX"})
    pipeline.stage_normalise(tmp_path / "a.tif", tmp_path / "n.ome.zarr", sample="s",
                             settings=NormaliseSettings(low_percentile=2.0, high_percentile=98.0))
    vol, params = read_normalized(tmp_path / "n.ome.zarr")
    assert (params.low_percentile, params.high_percentile) == (2.0, 98.0)
    lo, hi = np.percentile(raw.astype(np.float64), [2.0, 98.0])
    assert params.low == pytest.approx(lo) and params.high == pytest.approx(hi)
    np.testing.assert_allclose(np.asarray(vol.data), (raw - lo) / (hi - lo), atol=1e-5)


def test_hot_camera_pixels_are_left_out_of_the_percentiles():
    """Twelve hot columns (0.3 % of the voxels) took a stack's 99.8th percentile to their values
    and squeezed the sample into a tenth of the range (a restoration then lost 0.46 dB)."""
    from selfres import noise

    rng = np.random.default_rng(0)
    clean = (rng.poisson(100, (16, 64, 64)) + np.linspace(0, 400, 64)[None, None, :]).astype(np.float32)
    hot = clean.copy()
    ys, xs = rng.integers(2, 62, (2, 12))
    hot[:, ys, xs] += 5000.0
    defects = noise.sensor_defect_positions(hot)
    reference = normalise.fit_percentiles(clean)
    assert normalise.fit_percentiles(hot).high > 5 * reference.high  # the problem
    for voxels in (4_000_000, 5000):  # the whole stack, and a strided sample of it
        fitted = normalise.fit_percentiles(hot, exclude=defects, max_sample_voxels=voxels)
        assert fitted.high == pytest.approx(reference.high, rel=0.05) and fitted.low == pytest.approx(reference.low, rel=0.1)
    # planes that are not square, sampled with other strides along y than along x
    wide = np.concatenate([clean] * 4, axis=2)[:, :48]
    wide_hot = wide.copy()
    wide_hot[:, ys % 48, xs + 128] += 5000.0
    strides = normalise.sample_strides(wide.shape, 2500)
    assert strides[1] != strides[2]
    fitted = normalise.fit_percentiles(wide_hot, exclude=noise.sensor_defect_positions(wide_hot),
                                       max_sample_voxels=2500)
    assert fitted.high == pytest.approx(normalise.fit_percentiles(wide, max_sample_voxels=2500).high, rel=0.05)


def test_the_parameters_record_whether_percentiles_or_the_range_gave_them():
    rng = np.random.default_rng(0)
    assert normalise.fit_percentiles(rng.random((4, 16, 16)), low_percentile=1, high_percentile=99).basis == \
        "percentiles"
    sparse = np.zeros((4, 16, 16))
    sparse[0, 0, 0] = 9.0  # the percentiles coincide (0 and 0): the range 0..9
    p = normalise.fit_percentiles(sparse, low_percentile=1, high_percentile=99)
    assert (p.low, p.high, p.basis) == (0.0, 9.0, "range")
    p = normalise.fit_percentiles(np.full((4, 16, 16), 3.0), low_percentile=1, high_percentile=99)
    assert (p.low, p.high, p.basis) == (3.0, 4.0, "constant")
    assert normalise.NormParams.from_dict(p.to_dict()) == p
    old = {k: v for k, v in p.to_dict().items() if k != "basis"}  # a store written before it was recorded
    assert normalise.NormParams.from_dict(old).basis == "unrecorded"


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32])
def test_one_non_finite_voxel_is_refused_for_any_integer_output(dtype):
    """A single NaN of the network, in an unsigned or a signed acquisition's dtype, would be
    cast to 0 (or the type's limit) where nothing downstream could see it (a mutation review:
    only two bad voxels into uint16 were tested)."""
    from selfres.errors import SelfresError

    p = normalise.NormParams(100.0, 1100.0, 0.1, 99.9)
    restored = np.array([[0.1, 0.5], [np.nan, 0.7]], np.float32)
    with pytest.raises(SelfresError, match="holds 1 non-finite voxels"):
        normalise.to_dtype(restored, p, dtype)
    np.testing.assert_array_equal(normalise.to_dtype(restored[0], p, dtype), np.array([200, 600], dtype))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_a_32_bit_integer_output_saturates_at_the_types_own_maximum(dtype):
    """The brightest voxels of an int32 / uint32 output clip at the type's maximum, which float64
    holds exactly: not one level below it (only int64's limit needs stepping down)."""
    info = np.iinfo(dtype)
    out = normalise.cast_to_dtype(np.array([1e30, float(info.max), float(info.max) - 1.0], np.float64), dtype)
    np.testing.assert_array_equal(out, np.array([info.max, info.max, info.max - 1], dtype))


def test_a_volume_of_the_sample_size_is_sampled_whole():
    """'At most max_voxels voxels': a volume of exactly that many keeps every voxel (it was
    strided, and its percentiles taken from a part of it, by a mutation that failed no test)."""
    assert normalise.sample_strides((10, 20, 20), 4000) == (1, 1, 1)
    assert normalise.sample_strides((10, 20, 20), 3999) != (1, 1, 1)
    vol = np.random.default_rng(0).random((10, 20, 20))
    p = normalise.fit_percentiles(vol, low_percentile=3, high_percentile=97, max_sample_voxels=vol.size)
    assert (p.low, p.high) == tuple(np.percentile(vol, [3, 97]))
