"""Tests of selfres.io: readers, OME-Zarr writer, pyramid, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from selfres import io
from selfres.errors import InputError, SeriesNotChosen

DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]


def _vol(shape=(5, 12, 14), dtype="uint16", seed=0):
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 100, size=shape)
    if np.dtype(dtype).kind == "i":
        data -= 50
    return data.astype(dtype)


def _imagej(path, data, *, voxel=(2.0, 0.25, 0.5), unit="micron", axes="ZYX"):
    vz, vy, vx = voxel
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / vx, 1 / vy),
                     metadata={"spacing": vz, "unit": unit, "axes": axes})
    return path


def test_io_does_not_import_torch():
    src = open(io.__file__, encoding="utf-8").read()
    assert not re.search(r"^\s*(import|from)\s+torch", src, flags=re.M)


# ------------------------------------------------------------------ TIFF ---


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_round_trip_keeps_values_and_dtype(tmp_path, dtype):
    data = _vol(dtype=dtype)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, data, photometric="minisblack")
    vol = io.read_volume(p)
    assert vol.data.dtype == np.float32 and vol.source_dtype == np.dtype(dtype)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    assert vol.voxel_size is None and vol.shape == data.shape


@pytest.mark.parametrize(
    "unit, factor",
    [("micron", 1.0), ("um", 1.0), ("\\u00B5m", 1.0), ("nm", 1e-3), ("mm", 1e3)],
)
def test_imagej_voxel_size_units(tmp_path, unit, factor):
    p = _imagej(tmp_path / "a.tif", _vol(dtype="uint8"), voxel=(2.0, 0.25, 0.5), unit=unit)
    expected = (2.0 * factor, 0.25 * factor, 0.5 * factor)
    assert io.read_volume(p).voxel_size == pytest.approx(expected)
    assert io.read_voxel_size(p) == pytest.approx(expected)


@pytest.mark.parametrize("spacing", [-2.0, 0.0])
def test_a_non_positive_imagej_spacing_is_dropped_with_a_warning(tmp_path, caplog, spacing):
    """It was dropped silently: the user then met 'isotropic mode needs the voxel size' for a
    file that has one in its metadata."""
    p = _imagej(tmp_path / "rev.tif", _vol(dtype="uint8"), voxel=(spacing, 0.25, 0.5))
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    assert re.search(rf"rev\.tif: the ImageJ metadata gives a z spacing of {spacing:g} µm, which is not a voxel size; "
                     r"the voxel size is taken as unknown\. Give it in the sample sheet column voxel_size", caplog.text)


def test_an_imagej_stack_without_spacing_has_imagejs_z_step_of_one_unit(tmp_path, caplog):
    """ImageJ omits ``spacing=`` when the z step is 1 unit and reads a missing one as 1 unit:
    such a stack saved by Fiji with a 1 µm step read as having no voxel size at all."""
    p = tmp_path / "fiji.tif"
    tifffile.imwrite(p, _vol(dtype="uint8"), imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"unit": "nm", "axes": "ZYX"})
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size == pytest.approx((1e-3, 0.25e-3, 0.5e-3))
    assert "gives the pixel size but no z spacing" in caplog.text and "1 nm (0.001 µm)" in caplog.text
    one = tmp_path / "plane.tif"  # a single plane has no z step to guess
    tifffile.imwrite(one, _vol(shape=(12, 14), dtype="uint8"), imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "micron", "axes": "YX"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(one).voxel_size == pytest.approx((0.25, 0.25, 0.5))
    assert "no z spacing" not in caplog.text


def test_imagej_per_axis_units_are_read(tmp_path, caplog):
    """ImageJ writes ``yunit``/``zunit`` where an axis's unit differs from x's (``unit``), and
    reads them back: a z spacing of 500 nm was read as 500 µm."""
    p = tmp_path / "zunit.tif"
    tifffile.imwrite(p, _vol(dtype="uint8"), imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "ZYX", "spacing": 500, "unit": "micron", "zunit": "nm"})
    assert io.read_volume(p).voxel_size == pytest.approx((0.5, 0.2, 0.2))
    assert io.read_voxel_size(p) == pytest.approx((0.5, 0.2, 0.2))
    q = tmp_path / "yunit.tif"
    tifffile.imwrite(q, _vol(dtype="uint8"), imagej=True, resolution=(1 / 0.2, 1 / 200),  # (x, y)
                     metadata={"axes": "ZYX", "spacing": 1.0, "unit": "micron", "yunit": "nm"})
    assert io.read_volume(q).voxel_size == pytest.approx((1.0, 0.2, 0.2))


@pytest.mark.parametrize("units", [{"unit": "furlong"}, {"unit": "micron", "zunit": "sec"}])
def test_an_imagej_unit_that_is_not_a_length_is_named_in_a_warning(tmp_path, caplog, units):
    """The voxel size was dropped silently (the OME-TIFF reader warns), and the user met
    'needs the voxel size' later without knowing why."""
    p = tmp_path / "odd.tif"
    tifffile.imwrite(p, _vol(dtype="uint8"), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.0} | units)
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    bad = units.get("zunit", units["unit"])
    assert f"odd.tif: its ImageJ metadata gives the unit {bad!r}, not a length unit" in caplog.text
    inch = tmp_path / "inch.tif"  # a unit ImageJ knows
    tifffile.imwrite(inch, _vol(dtype="uint8"), imagej=True, resolution=(1 / 0.001, 1 / 0.001),
                     metadata={"axes": "ZYX", "spacing": 0.002, "unit": "inch"})
    assert io.read_volume(inch).voxel_size == pytest.approx((50.8, 25.4, 25.4))


def test_an_uncalibrated_imagej_stack_with_a_z_spacing_says_why_its_voxel_size_is_unknown(tmp_path, caplog):
    """A walkthrough: unit 'pixel' with spacing 4 read as no voxel size, and `selfres inspect`
    pointed to 'a warning above' that was never written. Without a spacing (or 1), nothing to say."""
    p = tmp_path / "pix.tif"
    tifffile.imwrite(p, _vol(), imagej=True, metadata={"axes": "ZYX", "spacing": 4, "unit": "pixel"})
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    assert ("pix.tif: its ImageJ metadata is not calibrated (unit 'pixel'): its z spacing of 4 gives the z step in "
            "pixels, not in µm (with a pixel of p µm the voxel size is 4·p, p, p); the voxel size is taken as "
            "unknown") in caplog.text
    caplog.clear()
    q = tmp_path / "plain.tif"
    tifffile.imwrite(q, _vol(), imagej=True, metadata={"axes": "ZYX", "unit": "pixel"})
    one = tmp_path / "one.tif"  # ImageJ's own default spacing
    tifffile.imwrite(one, _vol(), imagej=True, metadata={"axes": "ZYX", "spacing": 1, "unit": "pixel"})
    plane = tmp_path / "plane.tif"  # one plane: no z step to speak of
    tifffile.imwrite(plane, _vol()[0], imagej=True, metadata={"axes": "YX", "spacing": 4, "unit": "pixel"})
    with caplog.at_level("WARNING", logger="selfres.io"):
        for path in (q, one, plane):
            assert io.read_volume(path).voxel_size is None, path
    assert "not calibrated" not in caplog.text


def test_imagej_without_unit_has_no_voxel_size(tmp_path):
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, _vol(), imagej=True, metadata={"axes": "ZYX"})
    assert io.read_volume(p).voxel_size is None


def test_ome_tiff_voxel_size_with_unit_conversion(tmp_path):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, _vol(), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
        "PhysicalSizeZ": 1500.0, "PhysicalSizeZUnit": "nm"})
    assert io.read_volume(p).voxel_size == pytest.approx((1.5, 0.3, 0.3))


def test_2d_tiff_becomes_single_plane(tmp_path):
    data = _vol(shape=(12, 14))
    p = _imagej(tmp_path / "a.tif", data, axes="YX")
    vol = io.read_volume(p)
    assert vol.shape == (1, 12, 14)
    np.testing.assert_array_equal(vol.data[0], data)
    assert vol.voxel_size == pytest.approx((2.0, 0.25, 0.5))


@pytest.mark.parametrize("writer", ["imagej", "ome"])
@pytest.mark.parametrize("channel", [0, 2])
def test_channel_selection(tmp_path, writer, channel):
    data = _vol(shape=(4, 3, 10, 11))  # Z C Y X
    if writer == "imagej":
        p = _imagej(tmp_path / "a.tif", data, axes="ZCYX")
    else:
        p = tmp_path / "a.ome.tif"
        tifffile.imwrite(p, data, metadata={"axes": "ZCYX"})
    vol = io.read_volume(p, channel=channel)
    np.testing.assert_array_equal(vol.data, data[:, channel])


def test_lazy_tiff_is_dask_and_equal(tmp_path):
    data = _vol()
    p = _imagej(tmp_path / "a.tif", data)
    vol = io.read_volume(p, lazy=True)
    assert isinstance(vol.data, da.Array) and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data.compute(), data)


# ------------------------------------------------------------------ Zarr ---


def _ome_zarr_with(path, **multiscale):
    """An OME-Zarr (voxel 2, 0.5, 0.5 µm) whose multiscale entries are then replaced: what
    another writer, or a hand edit, may leave."""
    io.write_ome_zarr(path, _vol(shape=(6, 12, 14), dtype="float32"), voxel_size=(2.0, 0.5, 0.5))
    g = zarr.open_group(str(path), mode="r+")
    attrs = g.attrs.asdict()
    ms = attrs["multiscales"][0]
    for key, value in multiscale.items():
        if key == "dataset_transforms":
            ms["datasets"][0]["coordinateTransformations"] = value
        else:
            ms[key] = value
    g.attrs.update(attrs)
    return path


@pytest.mark.parametrize("edit, said", [
    ({"dataset_transforms": [{"type": "scale", "scale": [1.0, 2.0]}]}, r"the scale of dataset 0's .* is \[1.0, 2.0\], "
                                                                       r"not 3 numbers"),
    ({"dataset_transforms": [None]}, r"dataset 0's coordinateTransformations is \[null\], not a list of objects"),
    ({"dataset_transforms": {"type": "scale", "scale": [1, 1, 1]}}, r"is \{.*\}, not a list of objects"),
    ({"dataset_transforms": [{"type": "scale", "scale": ["a", "b", "c"]}]}, r"is \[\"a\", \"b\", \"c\"\], not 3"),
    ({"dataset_transforms": [{"type": "scale", "scale": [2, .5, .5]}, {"type": "translation", "translation": None}]},
     r"the translation of dataset 0's coordinateTransformations is null"),
    ({"coordinateTransformations": [{"type": "scale", "scale": [1, 2]}]}, r"the multiscale's .* is \[1, 2\]"),
    ({"dataset_transforms": [{"type": "scale", "scale": [0.0, 0.5, 0.5]}]}, r"the scale of axis z is 0, not a voxel size"),
    ({"dataset_transforms": [{"type": "scale", "scale": [-2.0, 0.5, 0.5]}]}, r"the scale of axis z is -2, not a voxel"),
    ({"axes": [{"name": a, "type": "space", "unit": "furlong"} for a in "zyx"]},
     r"the scale of axis z is in 'furlong', not a length unit"),
])
def test_ome_zarr_transformations_that_give_no_voxel_size_are_named_in_a_warning_not_a_traceback(tmp_path, caplog,
                                                                                                 edit, said):
    """Malformed NGFF coordinateTransformations failed with IndexError, AttributeError or
    ValueError; a zero, negative or unit-less scale was dropped without a word."""
    p = _ome_zarr_with(tmp_path / "img.ome.zarr", **edit)
    with caplog.at_level("WARNING", logger="selfres.io"):
        vol = io.read_volume(p)
    assert vol.voxel_size is None and vol.shape == (6, 12, 14)
    assert re.search(said, caplog.text), caplog.text
    assert "the voxel size is taken as unknown. Give it in the sample sheet column voxel_size" in caplog.text


def test_ome_zarr_axes_that_are_not_names_or_objects_are_refused(tmp_path):
    p = _ome_zarr_with(tmp_path / "img.ome.zarr", axes=[1, 2, 3])
    with pytest.raises(InputError, match=r"img.ome.zarr: has OME-Zarr axes \[1, 2, 3\], which cannot be interpreted"):
        io.read_volume(p)


def test_a_zarr_array_with_no_slices_is_refused_as_having_no_voxels(tmp_path):
    zarr.open(str(tmp_path / "e.zarr"), mode="w", shape=(0, 16, 16), dtype="f4")
    with pytest.raises(InputError, match=r"e.zarr: has no voxels: shape 0x16x16 has size 0 along axis 0"):
        io.read_volume(tmp_path / "e.zarr", lazy=True)
    with pytest.warns(UserWarning):  # tifffile: a zero-size TIFF is nonconformant, yet it writes one
        tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 8, 8), np.uint16))
    with pytest.raises(InputError, match=r"e.tif: has no voxels: its image has shape 0x8x8"):  # was "is truncated"
        io.read_volume(tmp_path / "e.tif")


def test_a_pipe_is_refused_instead_of_read_forever(tmp_path):
    fifo = tmp_path / "stack.tif"
    os.mkfifo(fifo)  # `selfres inspect` on it used to wait forever for a writer
    with pytest.raises(InputError, match=r"stack.tif: is neither a file nor a folder \(a pipe, socket or device\?\)"):
        io.describe_acquisition(fifo)
    with pytest.raises(InputError, match="is neither a file nor a folder"):
        io.read_volume(fifo)


def test_an_ome_zarr_without_pyramid_levels_says_so(tmp_path):
    p = _ome_zarr_with(tmp_path / "img.ome.zarr", datasets=[])  # was "level 0 does not exist … allowed 0..-1"
    with pytest.raises(InputError, match=r"img.ome.zarr: has OME-Zarr multiscales metadata without images: its "
                                         r"datasets are \[\], not a list of pyramid levels"):
        io.read_volume(p)


@pytest.mark.parametrize("metadata, said", [
    ({"PhysicalSizeZ": "abc"}, r"in its OME metadata, PhysicalSizeZ is 'abc', not a number"),
    ({"PhysicalSizeZ": -1}, r"PhysicalSizeZ is -1, not a voxel size"),
    ({"PhysicalSizeZ": 2, "PhysicalSizeZUnit": "furlong"}, r"PhysicalSizeZ is in 'furlong', not a length unit"),
])
def test_ome_tiff_sizes_that_are_not_voxel_sizes_are_named_in_a_warning(tmp_path, caplog, metadata, said):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, _vol(shape=(6, 12, 14)), metadata={"axes": "ZYX", "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5,
                                                           **metadata})
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    assert re.search(said, caplog.text) and "the voxel size is taken as unknown" in caplog.text, caplog.text


def test_a_voxel_size_of_1e300_in_the_metadata_is_named_in_a_warning_and_taken_as_unknown(tmp_path, caplog):
    p = _imagej(tmp_path / "big.tif", _vol(dtype="uint8"), voxel=(1e300, 0.25, 0.5))
    o = tmp_path / "big.ome.tif"
    tifffile.imwrite(o, _vol(), metadata={"axes": "ZYX", "PhysicalSizeZ": 2e7, "PhysicalSizeZUnit": "m",
                                          "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None and io.read_volume(o).voxel_size is None
    assert "big.tif: its ImageJ or TIFF resolution metadata gives a voxel size of 1e+300, 0.25, 0.5 µm; a voxel " \
           "size must be within 1e-09..1e+07 µm" in caplog.text
    assert "PhysicalSizeZ is 2e+07 m: a voxel size must be within" in caplog.text, caplog.text


def test_a_non_numeric_imagej_spacing_is_named_in_a_warning(tmp_path, caplog):
    p = _imagej(tmp_path / "s.tif", _vol(dtype="uint8"), voxel=("abc", 0.25, 0.5))
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    assert "gives a z spacing of 'abc', which is not a number; the voxel size is taken as unknown" in caplog.text



# ------------------------------------------------------- compressed TIFF ---


@pytest.mark.parametrize("compression", ["lzw", "zstd"])
def test_lzw_and_zstd_compressed_tiffs_read(tmp_path, compression):
    """Common microscope exports; tifffile needs imagecodecs (a dependency) for both."""
    pytest.importorskip("imagecodecs", reason="imagecodecs is not installed in this environment (a selfres "
                                              "dependency; tifffile needs it to write and read LZW/zstd)")
    data = _vol(dtype="uint16")
    p = tmp_path / f"{compression}.tif"
    tifffile.imwrite(p, data, compression=compression, photometric="minisblack", metadata={"axes": "ZYX"})
    assert tifffile.TiffFile(p).pages[0].compression != 1
    for lazy in (False, True):
        vol = io.read_volume(p, lazy=lazy)
        np.testing.assert_array_equal(np.asarray(vol.data), data.astype(np.float32))


def _labelled_lzw(path):
    """An uncompressed TIFF whose pages claim LZW (what an LZW file is to a reader without a decoder)."""
    import struct

    tifffile.imwrite(path, _vol(dtype="uint16"), photometric="minisblack", metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as t:
        offsets = [pg.tags["Compression"].valueoffset for pg in t.pages]
    raw = bytearray(path.read_bytes())
    for o in offsets:
        raw[o:o + 2] = struct.pack("<H", 5)
    path.write_bytes(bytes(raw))
    return path


def test_a_tiff_whose_decoder_is_missing_names_imagecodecs_not_corruption(tmp_path, monkeypatch):
    """Without imagecodecs an LZW file was reported as 'truncated or corrupt' (eager) or
    failed with a bare ValueError (lazy)."""

    class NoImagecodecs(dict):
        def __missing__(self, key):
            raise KeyError(f"{tifffile.COMPRESSION(key)!r} requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", NoImagecodecs({1: lambda x, *a, **k: x}))
    p = _labelled_lzw(tmp_path / "lzw.tif")
    for lazy in (False, True):
        with pytest.raises(InputError, match=r"lzw\.tif: is compressed with LZW \(TIFF compression 5\), which needs "
                                             r"the Python package imagecodecs: install it"):
            io.read_volume(p, lazy=lazy)


def test_float64_values_beyond_float32_are_named_as_such_not_as_non_finite(tmp_path):
    data = _vol(dtype="float64")
    data[0, 0, 0], data[1, 1, 1] = 5e38, np.inf
    p = tmp_path / "wide.tif"
    tifffile.imwrite(p, data, photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"wide\.tif: has 1 voxels beyond the float32 range .*largest 5e\+38"):
        io.read_volume(p)
    data[0, 0, 0] = 1.0
    tifffile.imwrite(p, data, photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"1 non-finite voxels \(0 NaN, 1 Inf\)"):  # a real Inf keeps its message
        io.read_volume(p)


# ---------------------------------------------------- TIFF with several images ---


def _two_images(path, first, second, **kw):
    with tifffile.TiffWriter(path, **kw) as tw:
        tw.write(first, photometric="minisblack", metadata={"axes": "ZYX"})
        tw.write(second, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


@pytest.mark.parametrize("name, ome", [("multi.ome.tif", True), ("multi.tif", False)])
@pytest.mark.parametrize("second", [(4, 8, 8), (5, 12, 14)], ids=["different_shape", "same_shape"])
def test_a_tiff_of_several_images_is_refused_naming_them_unless_one_is_chosen(tmp_path, name, ome, second):
    """Series 0 used to be read silently; with several full-resolution images (OME-TIFF
    positions, an appended image, planes written one by one) selfres cannot know which, so
    ``series`` chooses."""
    first, other = _vol(), _vol(shape=second, seed=1)
    p = _two_images(tmp_path / name, first, other, ome=ome)
    shape = "x".join(map(str, second))
    for lazy in (False, True):
        with pytest.raises(SeriesNotChosen, match=rf"{name}: holds 2 images \(TIFF series.*series 0: 5x12x14 ZYX.*; "
                                                  rf"series 1: {shape} ZYX.*choose one with series=N \(sample sheet "
                                                  "column 'series', where all makes one sample per image"):
            io.read_volume(p, lazy=lazy)
        for number, data in enumerate((first, other)):
            np.testing.assert_array_equal(np.asarray(io.read_volume(p, series=number, lazy=lazy).data),
                                          data.astype(np.float32))
    with pytest.raises(InputError, match=r"series 2 is out of range: the file's images are series 0, 1"):
        io.read_volume(p, series=2)
    assert io.series_numbers(p) == [0, 1]
    with pytest.raises(SeriesNotChosen) as stacks:
        io.read_volume(p)
    assert "planes of one z-stack" not in str(stacks.value)  # 3-D images: no such hint


def test_a_z_stack_written_plane_by_plane_is_told_how_to_become_one_stack(tmp_path):
    p = tmp_path / "planes.tif"
    with tifffile.TiffWriter(p) as tw:
        for plane in _vol():
            tw.write(plane, photometric="minisblack")
    with pytest.raises(SeriesNotChosen, match=r"holds 5 images .* if they are the planes of one z-stack written one by "
                                              r"one, each would be a 2-D image: save them as one stack"):
        io.read_volume(p)


def test_each_image_of_an_ome_tiff_keeps_its_own_voxel_size(tmp_path):
    p = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(_vol(), metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
        tw.write(_vol(seed=1), metadata={"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.25,
                                         "PhysicalSizeX": 0.25})
    assert io.read_volume(p, series=0).voxel_size == pytest.approx((2.0, 0.5, 0.5))
    assert io.read_volume(p, series=1, lazy=True).voxel_size == pytest.approx((1.0, 0.25, 0.25))
    store = _zarr(_vol())(tmp_path)
    with pytest.raises(InputError, match="a Zarr store is read as one image"):
        io.read_volume(store, series=1)
    assert io.series_numbers(store) == [0]


def test_an_ome_tiff_pyramid_is_one_image_and_reads_its_full_resolution(tmp_path):
    """Sub-resolution levels (SubIFDs) belong to series 0; they are not other images."""
    data = _vol(shape=(4, 32, 32))
    p = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(data, subifds=2, photometric="minisblack",
                 metadata={"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2})
        tw.write(data[:, ::2, ::2], subfiletype=1, photometric="minisblack")
        tw.write(data[:, ::4, ::4], subfiletype=1, photometric="minisblack")
    assert len(tifffile.TiffFile(p).series) == 1  # the premise: tifffile reads the levels into one series
    vol = io.read_volume(p)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    assert vol.voxel_size == pytest.approx((1.0, 0.2, 0.2))
    # lazily too (how normalise reads it): tifffile's zarr view of a pyramid is a group of levels
    lazy = io.read_volume(p, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data), data.astype(np.float32))


def test_a_reduced_resolution_thumbnail_is_not_another_image(tmp_path):
    """A thumbnail page (NewSubfileType 1), as LSM and some camera files carry, is skipped."""
    data = _vol(shape=(4, 32, 32))
    p = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(data, photometric="minisblack", metadata=None)
        tw.write(data[0, ::4, ::4], subfiletype=1, photometric="minisblack", metadata=None)
    assert len(tifffile.TiffFile(p).series) == 2  # the premise: tifffile lists the thumbnail as a series
    np.testing.assert_array_equal(io.read_volume(p).data, data.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_zarr_round_trip(tmp_path, dtype):
    data = _vol(dtype=dtype)
    p = tmp_path / "a.zarr"
    zarr.save_array(str(p), data)
    vol = io.read_volume(p)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    assert vol.source_dtype == np.dtype(dtype) and vol.voxel_size is None


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ome_zarr_round_trip(tmp_path, ngff, dtype):
    data = _vol(dtype=dtype)
    p = tmp_path / "a.ome.zarr"
    io.write_ome_zarr(p, data, voxel_size=(2.0, 0.3, 0.4), ngff_version=ngff,
                      attrs={"norm": {"low": np.float32(1.5)}})
    vol = io.read_volume(p)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    assert vol.source_dtype == np.dtype(dtype)
    assert vol.voxel_size == pytest.approx((2.0, 0.3, 0.4))
    assert io.read_ome_zarr(p).attrs == {"norm": {"low": 1.5}}
    assert io.read_voxel_size(p) == pytest.approx((2.0, 0.3, 0.4))


def test_ome_zarr_formats_on_disk(tmp_path):
    io.write_ome_zarr(tmp_path / "v4.ome.zarr", _vol(), voxel_size=(1, 1, 1))
    io.write_ome_zarr(tmp_path / "v5.ome.zarr", _vol(), voxel_size=(1, 1, 1), ngff_version="0.5")
    attrs4 = json.loads((tmp_path / "v4.ome.zarr" / ".zattrs").read_text())
    assert attrs4["multiscales"][0]["version"] == "0.4"
    assert json.loads((tmp_path / "v4.ome.zarr" / "0" / ".zarray").read_text())[
        "dimension_separator"] == "/"
    meta5 = json.loads((tmp_path / "v5.ome.zarr" / "zarr.json").read_text())
    assert meta5["zarr_format"] == 3 and meta5["attributes"]["ome"]["version"] == "0.5"


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_the_pyramid_names_its_downscaling_as_ngff_asks(tmp_path, ngff):
    """NGFF 0.4 and 0.5: a multiscales entry SHOULD give the "type" of downscaling and "metadata"
    describing it; the stores gave neither, so a reader could not tell block means from a Gaussian."""
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v05.image import Image as Image05

    p = tmp_path / "t.ome.zarr"
    io.write_ome_zarr(p, _vol(shape=(4, 130, 130)), voxel_size=(2.0, 0.5, 0.5), ngff_version=ngff)
    group = zarr.open_group(str(p), mode="r")
    image = (Image04 if ngff == "0.4" else Image05).from_zarr(group)  # still valid NGFF
    ms = image.ome_attributes.multiscales[0]
    assert ms.type == "mean"
    assert "block mean" in ms.metadata["description"]
    assert io.read_volume(p).voxel_size == pytest.approx((2.0, 0.5, 0.5))


def test_ome_zarr_nanometre_axes_are_converted(tmp_path):
    g = zarr.open_group(str(tmp_path / "n.zarr"), mode="w", zarr_format=2)
    g.create_array("s0", data=_vol())
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"}
                                   for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [500.0, 100.0, 100.0]}]}]}]
    assert io.read_volume(tmp_path / "n.zarr").voxel_size == pytest.approx((0.5, 0.1, 0.1))


def test_an_ome_zarr_scale_without_a_unit_is_read_as_micrometres_with_a_warning(tmp_path, caplog):
    """NGFF leaves a missing unit open: a converter that wrote nm without saying so was read as
    µm without a word (and the outputs stamped micrometer, 1000 times too large). selfres's own
    stores of a sample of unknown voxel size (a scale in output steps, no unit) say nothing."""
    g = zarr.open_group(str(tmp_path / "u.zarr"), mode="w", zarr_format=2)
    g.create_array("s0", data=_vol())
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1500.0, 200.0, 200.0]}]}]}]
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(tmp_path / "u.zarr").voxel_size == pytest.approx((1500.0, 200.0, 200.0))
    assert "u.zarr: its OME-Zarr axes z, y, x carry no unit; their scale (1500, 200, 200) is read as µm" in caplog.text
    caplog.clear()
    ours = tmp_path / "ours.ome.zarr"  # as infer writes a store of unknown voxel size: no unit
    io.write_ome_zarr(ours, _vol(), voxel_size=(0.5, 0.5, 0.5), attrs={"s": 1})
    zattrs = json.loads((ours / ".zattrs").read_text())
    for axis in zattrs["multiscales"][0]["axes"]:
        axis.pop("unit", None)
    (ours / ".zattrs").write_text(json.dumps(zattrs))
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.read_volume(tmp_path / "ours.ome.zarr")
    assert "carry no unit" not in caplog.text


@pytest.mark.parametrize("kind", ["ome", "resolution"])
def test_a_stack_whose_metadata_sizes_only_its_pixels_says_so(tmp_path, caplog, kind):
    """An OME-TIFF with PhysicalSizeY/X and no PhysicalSizeZ (or a TIFF's resolution tags on a
    stack) lost its whole voxel size without a word, and `inspect` said none was recorded."""
    p = tmp_path / "s.tif"
    if kind == "ome":
        tifffile.imwrite(p, _vol(dtype="uint16"), ome=True,
                         metadata={"axes": "ZYX", "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2})
    else:
        tifffile.imwrite(p, _vol(dtype="uint16"), resolution=(5e4, 5e4), resolutionunit="CENTIMETER")
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    where = "its OME metadata gives" if kind == "ome" else "its TIFF resolution tags give"
    missing = "no PhysicalSizeZ" if kind == "ome" else "no z step"
    assert f"{where} the pixel size (y, x: 0.2, 0.2 µm) but {missing} for its 5 planes" in caplog.text


def test_ome_zarr_translation_is_read_as_the_origin_in_micrometres(tmp_path):
    """A crop or a mosaic tile written with its position: the dataset's translation, then the
    multiscale's own scale and translation (NGFF order), in the axes' unit."""
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="w", zarr_format=2)
    g.create_array("s0", data=_vol())
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [500.0, 100.0, 100.0]},
            {"type": "translation", "translation": [1000.0, 2000.0, 3000.0]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]},
                                      {"type": "translation", "translation": [0.0, 0.0, 500.0]}]}]
    vol = io.read_volume(tmp_path / "t.zarr")
    assert vol.voxel_size == pytest.approx((1.0, 0.1, 0.1))
    assert vol.origin_voxels == pytest.approx((2.0, 20.0, 35.0))  # (2, 2, 3.5) µm in voxels of (1, 0.1, 0.1)
    io.write_ome_zarr(tmp_path / "w.ome.zarr", _vol(), voxel_size=(1.0, 0.1, 0.1), origin=(2.0, 2.0, 3.5))
    assert io.read_ome_zarr(tmp_path / "w.ome.zarr").origin_voxels == pytest.approx((2.0, 20.0, 35.0))
    io.write_ome_zarr(tmp_path / "0.ome.zarr", _vol(), voxel_size=(1.0, 0.1, 0.1))
    assert io.read_ome_zarr(tmp_path / "0.ome.zarr").origin_voxels is None
    # a unit that is no length, and a zero scale, read as voxel steps (no error, no unit mixed in)
    ms = g.attrs["multiscales"]
    ms[0]["axes"] = [{"name": n, "type": "space", "unit": "pixel"} for n in "zyx"]
    ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [2000.0, 0.0, 500.0]
    del ms[0]["coordinateTransformations"]
    g.attrs["multiscales"] = ms
    assert io.read_volume(tmp_path / "t.zarr").origin_voxels == pytest.approx((0.5, 0.0, 6.0))


def test_ome_zarr_czyx_channel(tmp_path):
    data = _vol(shape=(2, 3, 8, 9))
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=data)
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}] + [
            {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}]}]}]
    vol = io.read_volume(tmp_path / "c.zarr", channel=1)
    np.testing.assert_array_equal(vol.data, data[1])
    assert vol.voxel_size == pytest.approx((2.0, 0.5, 0.5))


# ------------------------------------------------------------ bad inputs ---


def _missing(tmp_path):
    return tmp_path / "nope.tif"


def _zero(tmp_path):
    (tmp_path / "z.tif").write_bytes(b"")
    return tmp_path / "z.tif"


def _truncated(tmp_path):
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, _vol(shape=(6, 40, 40), dtype="float32"), photometric="minisblack")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return p


def _truncated_compressed(tmp_path):
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, _vol(shape=(6, 40, 40), dtype="float32"),
                     photometric="minisblack", compression="zlib")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return p


def _not_tiff(tmp_path):
    (tmp_path / "x.tif").write_text("hello, I am not an image")
    return tmp_path / "x.tif"


def _corrupt_zarr(tmp_path):
    p = tmp_path / "c.zarr"
    p.mkdir()
    (p / "zarr.json").write_text("{ not json")
    return p


def _corrupt_chunk(tmp_path):
    p = tmp_path / "c.ome.zarr"
    io.write_ome_zarr(p, _vol(), voxel_size=(1, 1, 1), max_levels=1)
    for f in (p / "0").rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            f.write_bytes(b"garbage")
    return p


def _not_a_store(tmp_path):
    (tmp_path / "d").mkdir()
    return tmp_path / "d"


def _tif(data, **kw):
    def make(tmp_path):
        p = tmp_path / "a.tif"
        tifffile.imwrite(p, data, **kw)
        return p
    return make


def _zarr(data):
    def make(tmp_path):
        p = tmp_path / "a.zarr"
        zarr.save_array(str(p), data)
        return p
    return make


def _imagej_axes(data, axes):
    def make(tmp_path):
        return _imagej(tmp_path / "a.tif", data, axes=axes)
    return make


def _with(value, n):
    data = _vol(dtype="float32")
    data.flat[:n] = value
    return data


BAD = [
    (_missing, {}, "does not exist"),
    (_zero, {}, "empty"),
    (_truncated, {}, "truncated"),
    (_truncated_compressed, {}, "truncated"),
    (_not_tiff, {}, "not a TIFF"),
    (_corrupt_zarr, {}, "corrupt Zarr"),
    (_corrupt_chunk, {}, "cannot read its data"),
    (_not_a_store, {}, "not a Zarr store"),
    (_tif(np.arange(10, dtype="uint16")), {}, "1-D"),
    (_zarr(np.zeros(7, "float32")), {}, "1-D"),
    (_tif(np.zeros((3, 4, 8, 8), "uint16"), photometric="minisblack"), {},
     "axis order 'QQYX'.*cannot be interpreted"),
    (_zarr(np.zeros((2, 3, 4, 8, 8), "uint16")), {}, "5-D array .*without axis names"),
    (_zarr(np.zeros((3, 4, 8, 8), "uint16")), {}, "4-D array .*without axis names"),
    (_tif(np.zeros((3, 8, 8), bool), photometric="minisblack"), {}, "data type bool"),
    (_zarr(np.zeros((3, 8, 8), np.complex64)), {}, "data type complex64"),
    (_tif(_with(np.nan, 3), photometric="minisblack"), {}, "3 non-finite voxels \\(3 NaN"),
    (_zarr(_with(np.inf, 2)), {}, "2 non-finite voxels \\(0 NaN, 2 Inf"),
    (_imagej_axes(np.zeros((2, 3, 8, 8), "uint16"), "TZYX"), {}, "2 time points"),
    (_imagej_axes(np.zeros((3, 4, 8, 8), "uint16"), "ZCYX"), {},
     "has 4 channels; choose one with channel=0..3"),
    (_imagej_axes(np.zeros((3, 4, 8, 8), "uint16"), "ZCYX"), {"channel": 4},
     "channel 4 is out of range: the file has 4 channels"),
    (_imagej_axes(np.zeros((3, 4, 8, 8), "uint16"), "ZCYX"), {"channel": -1}, "out of range"),
    (_tif(np.zeros((3, 8, 8), "uint16"), photometric="minisblack"), {"channel": 1},
     "channel 1 is out of range: the file has 1 channel"),
]


@pytest.mark.parametrize("make, kwargs, match", BAD)
def test_bad_inputs_raise_input_error(tmp_path, make, kwargs, match):
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        io.read_volume(path, **kwargs)
    assert str(path) in str(info.value)  # the message names the file


@pytest.mark.parametrize("lazy", [False, True])
def test_a_tiff_cut_short_in_its_data_is_said_to_be_truncated(tmp_path, lazy):
    """A half-copied acquisition whose pixel data end the file (one tiled volumetric page): the
    size check names it. Without the check the eager read said "corrupted tile ... cannot be
    reshaped" and the lazy one let tifffile's own error escape (an audit: the BAD cases above cut
    ImageJ files, whose metadata after the data fails tifffile's reading first)."""
    p = tmp_path / "half.tif"
    tifffile.imwrite(p, _vol(shape=(6, 16, 16), dtype="uint16"), volumetric=True, tile=(16, 16))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(InputError, match=rf"half\.tif: is truncated: its data should end at byte {len(raw)} but the "
                                         rf"file has {len(raw) - 1000} bytes"):
        vol = io.read_volume(p, lazy=lazy)
        np.asarray(vol.data)


@pytest.mark.parametrize("name, head, what, convert_with", [
    ("scan 1.czi", b"ZISRAWFILE\0\0\0\0\0\0", "a Zeiss CZI file", "bfconvert"),
    ("a.nd2", b"\xda\xce\xbe\x0aND2 FILE SIGNATURE", "a Nikon ND2 file", "bfconvert"),
    ("a.lif", b"\x70\x00\x00\x00\x10\x00\x00\x00\x2a", "a Leica LIF file", "bfconvert"),
    ("a.ims", b"\x89HDF\r\n\x1a\n\0\0", "an Imaris file", "bfconvert"),
    ("a.h5", b"\x89HDF\r\n\x1a\n\0\0", "an HDF5 file", "Fiji"),
    ("renamed.tif", b"ZISRAWFILE\0\0\0\0\0\0", "a Zeiss CZI file", "bfconvert"),  # the bytes decide
    ("a.oir", b"\x00\x01\x02\x03 unknown header", "an Olympus OIR file", "bfconvert"),  # else the name
])
def test_a_microscope_vendors_file_is_named_with_the_command_that_converts_it(tmp_path, name, head, what,
                                                                              convert_with):
    path = tmp_path / name
    path.write_bytes(head + bytes(64))
    with pytest.raises(InputError) as info:
        io.read_volume(path)
    message = str(info.value)
    assert f"{path}: is {what}, which selfres does not read" in message
    assert convert_with in message
    if convert_with == "bfconvert":  # a command to paste, with this file's names quoted for the shell
        stem = str(path.with_suffix(""))
        assert f"bfconvert -bigtiff {shlex.quote(str(path))} {shlex.quote(stem + '.ome.tif')}" in message


def test_a_tiff_is_read_as_one_whatever_its_name(tmp_path):
    path = tmp_path / "exported.czi"  # a TIFF with a vendor's suffix (Zeiss LSM files are TIFFs too)
    tifffile.imwrite(path, np.ones((3, 8, 8), "uint16"), metadata={"axes": "ZYX"})
    assert io.read_volume(path).shape == (3, 8, 8)


def test_an_n5_container_is_named_as_one(tmp_path):
    store = tmp_path / "tiles.n5"
    store.mkdir()
    (store / "attributes.json").write_text('{"n5": "2.2.0"}')
    with pytest.raises(InputError, match="is an N5 container, which selfres does not read; .*Fiji"):
        io.read_volume(store)


@pytest.mark.parametrize("n_planes", [1, 3])
def test_a_folder_of_tiff_planes_is_named_as_such_with_what_to_do(tmp_path, n_planes):
    """Many microscopes write one TIFF per plane; the folder was refused only as "a directory but
    not a Zarr store"."""
    folder = tmp_path / "scan"
    folder.mkdir()
    for z in range(n_planes):
        tifffile.imwrite(folder / f"img_z{z:03d}.tif", np.ones((8, 8), "uint16"))
    if n_planes == 1:
        expected = r"is a folder, not an image; it holds one TIFF file, img_z000\.tif: give selfres that file"
    else:
        expected = (r"is a folder of 3 TIFF files \(img_z000\.tif … img_z002\.tif\), not one image; .*"
                    r"File › Import › Image Sequence.*inbox glob such as .*scan/\*\.tif")
    with pytest.raises(InputError, match=expected):
        io.read_volume(folder)


def test_a_missing_windows_path_says_how_this_machine_separates_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    tifffile.imwrite(tmp_path / "data" / "a.tif", np.ones((3, 8, 8), "uint16"))
    with pytest.raises(InputError, match=r"does not exist \(no such file or store\); it holds a backslash .* "
                                         r"folders are separated by /"):
        io.read_volume("data\\a.tif")
    with pytest.raises(InputError, match=r"does not exist \(no such file or store\)$"):
        io.read_volume("data/b.tif")


def test_a_name_whose_accents_are_encoded_the_other_way_is_named(tmp_path, monkeypatch):
    """A file named on a Mac (NFD: u + a combining mark) and a sheet typed elsewhere (NFC: ü)
    look alike: 'does not exist', while ls shows that very name."""
    import unicodedata

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / unicodedata.normalize("NFD", "Müller.tif"), np.ones((3, 8, 8), "uint16"))
    with pytest.raises(InputError, match=r"does not exist \(no such file or store\); its folder holds 'Mu.*ller\.tif', "
                                         r"the same name with its accents written as separate marks \(NFD"):
        io.read_volume(unicodedata.normalize("NFC", "Müller.tif"))
    with pytest.raises(InputError, match=r"does not exist \(no such file or store\)$"):
        io.read_volume("Mahler.tif")


def test_an_empty_folder_is_refused_as_not_a_zarr_store(tmp_path):
    with pytest.raises(InputError, match="is a directory but not a Zarr store"):
        io.read_volume(tmp_path)


def test_lazy_read_skips_finite_check(tmp_path):
    p = tmp_path / "a.zarr"
    zarr.save_array(str(p), _with(np.nan, 1))
    assert np.isnan(io.read_volume(p, lazy=True).data.compute()).sum() == 1


# --------------------------------------------------------------- pyramid ---


@pytest.mark.parametrize(
    "voxel, shape, expected_shapes, expected_scales",
    [
        # z coarse: z is not halved until xy catches up
        ((2.0, 0.5, 0.5), (6, 256, 256), [(6, 256, 256), (6, 128, 128), (6, 64, 64)],
         [(2.0, 0.5, 0.5), (2.0, 1.0, 1.0), (2.0, 2.0, 2.0)]),
        # isotropic: every axis halves
        ((0.5, 0.5, 0.5), (8, 256, 200), [(8, 256, 200), (4, 128, 100)],
         [(0.5, 0.5, 0.5), (1.0, 1.0, 1.0)]),
        # small lateral size: level 0 only
        ((1.0, 1.0, 1.0), (4, 100, 300), [(4, 100, 300)], [(1.0, 1.0, 1.0)]),
    ],
)
def test_pyramid_is_z_aware(tmp_path, voxel, shape, expected_shapes, expected_scales):
    p = tmp_path / "p.ome.zarr"
    io.write_ome_zarr(p, np.zeros(shape, "uint8"), voxel_size=voxel)
    ms = zarr.open_group(str(p), mode="r").attrs["multiscales"][0]
    shapes = [io.open_ome_zarr_array(p, level=k).shape for k in range(len(ms["datasets"]))]
    assert shapes == expected_shapes
    for ds, s in zip(ms["datasets"], expected_scales):
        scale, trans = (t for t in ds["coordinateTransformations"])
        assert scale["scale"] == pytest.approx(s)
        assert trans["translation"] == pytest.approx([(a - b) / 2 for a, b in zip(s, voxel)])


def test_pyramid_levels_are_block_means_and_max_levels(tmp_path):
    data = _vol(shape=(4, 130, 131), dtype="float32")
    p = tmp_path / "p.ome.zarr"
    io.write_ome_zarr(p, data, voxel_size=(1, 1, 1), chunks=(3, 33, 40))
    lvl1 = io.read_ome_zarr(p, level=1)
    expected = data[:4, :130, :130].reshape(2, 2, 65, 2, 65, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(lvl1.data, expected, rtol=1e-6)
    assert lvl1.voxel_size == pytest.approx((2, 2, 2))
    io.write_ome_zarr(p, data, voxel_size=(1, 1, 1), max_levels=1)
    assert len(zarr.open_group(str(p), mode="r").attrs["multiscales"][0]["datasets"]) == 1


def test_integer_levels_round_block_means(tmp_path):
    data = np.zeros((1, 128, 128), "uint8")
    data[0, ::2, ::2] = 3  # block mean 0.75 -> 1
    p = tmp_path / "p.ome.zarr"
    io.write_ome_zarr(p, data, voxel_size=(1, 1, 1))
    lvl1 = io.open_ome_zarr_array(p, level=1)
    assert lvl1.dtype == np.uint8 and (lvl1[:] == 1).all()


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_reader_reads_levels_and_scales(tmp_path, ngff):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    p = tmp_path / "r.ome.zarr"
    io.write_ome_zarr(p, _vol(shape=(4, 256, 256)), voxel_size=(2.0, 0.5, 0.5),
                      ngff_version=ngff)
    node = list(Reader(parse_url(str(p)))())[0]
    assert [tuple(d.shape) for d in node.data] == [(4, 256, 256), (4, 128, 128), (4, 64, 64)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert [a["unit"] for a in node.metadata["axes"]] == ["micrometer"] * 3


def test_omero_window_from_percentiles_or_limits(tmp_path):
    data = np.linspace(0, 1000, 4 * 20 * 20).reshape(4, 20, 20).astype("uint16")
    p = tmp_path / "w.ome.zarr"
    io.write_ome_zarr(p, data, voxel_size=(1, 1, 1))
    win = zarr.open_group(str(p), mode="r").attrs["omero"]["channels"][0]["window"]
    assert win["min"] == 0 and win["max"] == 65535
    assert win["start"] == pytest.approx(1.0, abs=1) and win["end"] == pytest.approx(999, abs=1)
    io.write_ome_zarr(p, data, voxel_size=(1, 1, 1), contrast_limits=(10, 20))
    win = zarr.open_group(str(p), mode="r").attrs["omero"]["channels"][0]["window"]
    assert (win["start"], win["end"]) == (10.0, 20.0)


def test_streaming_create_then_finalize(tmp_path):
    p = tmp_path / "s.ome.zarr"
    arr = io.create_ome_zarr(p, shape=(3, 128, 128), dtype="float32",
                             voxel_size=(1, 0.5, 0.5), chunks=(2, 64, 64), ngff_version="0.5")
    assert arr.shape == (3, 128, 128) and arr.chunks == (2, 64, 64)
    assert (arr[:] == 0).all()  # fill value
    arr[1] = 7.0
    io.finalize_ome_zarr(p, voxel_size=(1, 0.5, 0.5), ngff_version="0.5", attrs={"k": 1})
    vol = io.read_ome_zarr(p)
    assert vol.data[1].min() == 7.0 and vol.attrs == {"k": 1}
    assert io.read_ome_zarr(p, level=1).shape == (3, 64, 64)  # z 1 µm > xy 0.5 µm
    out = io.open_ome_zarr_array(p, mode="r+")
    out[0] = 1.0
    assert io.read_ome_zarr(p).data[0].max() == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"voxel_size": (1, 1)}, "voxel_size must be"),
        ({"voxel_size": (1, 0, 1)}, "voxel_size must be"),
        ({"voxel_size": (1, 1, 1), "ngff_version": "0.3"}, "ngff_version must be one of"),
        ({"voxel_size": (1, 1, 1), "chunks": (0, 4, 4)}, "chunks must be"),
        ({"voxel_size": (1, 1, 1), "max_levels": 0}, "max_levels must be"),
    ],
)
def test_write_ome_zarr_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        io.write_ome_zarr(tmp_path / "x.ome.zarr", _vol(), **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data, match", [
    (np.zeros(5), "2-D \\(YX\\) or 3-D"),
    (np.zeros((2, 2, 4, 4)), "2-D \\(YX\\) or 3-D"),
    (np.zeros((2, 4, 4), bool), "integer or floating point"),
])
def test_write_ome_zarr_bad_data(tmp_path, data, match):
    with pytest.raises(ValueError, match=match):
        io.write_ome_zarr(tmp_path / "x.ome.zarr", data, voxel_size=None)


def test_read_level_out_of_range(tmp_path):
    p = tmp_path / "a.ome.zarr"
    io.write_ome_zarr(p, _vol(), voxel_size=(1, 1, 1))
    with pytest.raises(InputError, match="level 3 does not exist: the pyramid has 1 level"):
        io.read_ome_zarr(p, level=3)


# ---------------------------------------------------------------- atomic ---


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "finalize_ome_zarr", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_ome_zarr(tmp_path / "a.ome.zarr", _vol(), voxel_size=(1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_store(tmp_path, monkeypatch):
    p = tmp_path / "a.ome.zarr"
    old = _vol(seed=1)
    io.write_ome_zarr(p, old, voxel_size=(1, 1, 1))
    monkeypatch.setattr(io, "finalize_ome_zarr", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        io.write_ome_zarr(p, _vol(seed=2), voxel_size=(1, 1, 1))
    np.testing.assert_array_equal(io.read_volume(p).data, old)
    assert [q.name for q in tmp_path.iterdir()] == ["a.ome.zarr"]


def test_successful_write_replaces_existing_store(tmp_path):
    p = tmp_path / "a.ome.zarr"
    io.write_ome_zarr(p, _vol(shape=(2, 200, 200), seed=1), voxel_size=(1, 1, 1))
    new = _vol(seed=2)
    io.write_ome_zarr(p, new, voxel_size=(1, 1, 1))
    np.testing.assert_array_equal(io.read_volume(p).data, new)
    assert not (p / "1").exists()  # old pyramid level gone
    assert [q.name for q in tmp_path.iterdir()] == ["a.ome.zarr"]


def test_atomic_output_for_files(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    with io.atomic_output(p) as tmp:
        assert tmp.parent == p.parent and not tmp.exists()
        tmp.write_text("new")
        assert not p.exists()
    assert p.read_text() == "new"
    with pytest.raises(KeyError), io.atomic_output(p) as tmp:
        tmp.write_text("half")
        raise KeyError("x")
    assert p.read_text() == "new" and len(list(p.parent.iterdir())) == 1


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_failed_final_rename_puts_the_previous_output_back(tmp_path, monkeypatch, kind):
    """The move into place failing (a full or read-only folder, a network file system): the
    previous output is put back; dropping that rollback failed no test (a mutation review),
    and the next write would have deleted the old one as litter."""
    import os

    p = tmp_path / ("f.txt" if kind == "file" else "d.ome.zarr")

    def write(path, text):
        if kind == "file":
            path.write_text(text)
        else:
            path.mkdir()
            (path / "x").write_text(text)

    def read(path):
        return path.read_text() if kind == "file" else (path / "x").read_text()

    with io.atomic_output(p) as tmp:
        write(tmp, "good")
    real = os.replace

    def failing(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"), io.atomic_output(p) as tmp:
        write(tmp, "new")
    monkeypatch.setattr(os, "replace", real)
    assert read(p) == "good"
    assert sorted(q.name for q in tmp_path.iterdir()) == [p.name], "no temporary or old copy left"


# -------------------------------------------------------------- checksum ---


def test_file_checksum_file_and_directory(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc" * 1000)
    assert io.file_checksum(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    d = tmp_path / "d.ome.zarr"
    io.write_ome_zarr(d, _vol(), voxel_size=(1, 1, 1))
    first = io.file_checksum(d)
    assert first == io.file_checksum(d) and len(first) == 64
    io.write_ome_zarr(d, _vol(seed=5), voxel_size=(1, 1, 1))
    assert io.file_checksum(d) != first
    with pytest.raises(InputError, match="does not exist"):
        io.file_checksum(tmp_path / "missing")


@pytest.mark.parametrize("shape, expected", [
    ((100, 1000, 1000), (32, 256, 256)),
    ((5, 100, 300), (5, 100, 256)),
    ((1, 10, 10), (1, 10, 10)),
])
def test_default_chunks(shape, expected):
    assert io.default_chunks(shape) == expected


def test_single_plane_without_z_step_uses_y_size(tmp_path):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, _vol(shape=(12, 14)), metadata={
        "axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3})
    vol = io.read_volume(p)
    assert vol.shape == (1, 12, 14) and vol.voxel_size == pytest.approx((0.3, 0.3, 0.2))


def test_stack_without_z_step_has_no_voxel_size(tmp_path):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, _vol(), metadata={"axes": "ZYX", "PhysicalSizeX": 0.2,
                                          "PhysicalSizeY": 0.2})
    assert io.read_volume(p).voxel_size is None


# ---------------------------------------------------------------- OME-TIFF export (selfres export)

@pytest.mark.parametrize("slab_planes", [1, 3, 5, 64])  # below, between and above the chunk depth of 4
def test_ome_tiff_export_is_the_stored_image_plane_by_plane(tmp_path, monkeypatch, slab_planes):
    import tifffile

    data = (np.random.default_rng(3).random((9, 40, 36)) * 60000).astype(np.uint16)
    io.write_ome_zarr(tmp_path / "r.ome.zarr", data, voxel_size=(0.5, 0.125, 0.125), chunks=(4, 16, 16))
    monkeypatch.setattr(io, "_TIFF_SLAB_BYTES", slab_planes * 40 * 36 * 2)
    out = io.write_ome_tiff(tmp_path / "r.ome.tif", tmp_path / "r.ome.zarr", name="s1")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and not tif.is_bigtiff
        assert tif.series[0].axes == "ZYX" and tif.series[0].dtype == np.uint16  # the stored type is kept
        np.testing.assert_array_equal(tif.asarray(), data)
        assert 'Name="s1"' in tif.ome_metadata
        # the pixel size in the TIFF tags as well, for readers that ignore the OME-XML: 80000 px/cm
        page = tif.pages[0]
        assert page.tags["ResolutionUnit"].value == 3 and page.tags["XResolution"].value == (80000, 1)
    assert io.read_volume(out).voxel_size == pytest.approx((0.5, 0.125, 0.125))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.ome.tif", "r.ome.zarr"]  # no temporary left


def test_ome_tiff_export_of_a_pyramid_level_and_of_an_image_without_voxel_size(tmp_path):
    import tifffile

    data = np.random.default_rng(4).random((4, 256, 256)).astype(np.float32)
    # as selfres writes the restored grid of an input without a voxel size
    io.write_ome_zarr(tmp_path / "r.ome.zarr", data, voxel_size=None, attrs={"voxel_size_known": False})
    io.write_ome_tiff(tmp_path / "l1.ome.tif", tmp_path / "r.ome.zarr", level=1)
    level1 = io.read_ome_zarr(tmp_path / "r.ome.zarr", level=1).data
    with tifffile.TiffFile(tmp_path / "l1.ome.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), level1)
        assert "PhysicalSizeX" not in tif.ome_metadata  # unknown stays unknown, not 1 µm
    assert level1.shape[1] < 256


def _plane_positions(ome_xml: str) -> list[tuple[float, float, float]]:
    import xml.etree.ElementTree as ET

    planes = [e for e in ET.fromstring(ome_xml).iter() if e.tag.endswith("}Plane")]
    assert all(e.get(f"Position{a}Unit") == "µm" for e in planes for a in "XYZ")
    return [tuple(float(e.get(f"Position{a}")) for a in "ZYX") for e in planes]


def test_ome_tiff_export_keeps_where_the_image_sits(tmp_path):
    """A crop or a mosaic tile restored from an OME-Zarr keeps its translation in the export:
    each plane's OME position (µm) is voxel 0's centre in y, x and the plane's centre in z,
    at every pyramid level (a level's voxel 0 sits half a voxel-size change further out)."""
    import tifffile

    data = np.random.default_rng(5).random((6, 256, 256)).astype(np.float32)
    store = tmp_path / "r.ome.zarr"
    io.write_ome_zarr(store, data, voxel_size=(0.5, 0.125, 0.125), origin=(10.0, -2.5, 100.25))
    io.write_ome_tiff(tmp_path / "l0.ome.tif", store)
    with tifffile.TiffFile(tmp_path / "l0.ome.tif") as tif:
        assert _plane_positions(tif.ome_metadata) == [(10.0 + 0.5 * k, -2.5, 100.25) for k in range(6)]
    level1 = io.read_ome_zarr(store, level=1)
    vz, vy, vx = level1.voxel_size
    assert vy == 0.25  # the pyramid halves y and x at level 1
    io.write_ome_tiff(tmp_path / "l1.ome.tif", store, level=1)
    with tifffile.TiffFile(tmp_path / "l1.ome.tif") as tif:
        got = _plane_positions(tif.ome_metadata)
    z1 = 10.0 + (vz - 0.5) / 2
    assert got == pytest.approx([(z1 + vz * k, -2.5 + 0.0625, 100.25 + 0.0625) for k in range(level1.shape[0])])
    # an image at the origin (a TIFF input's restored grid has a half-voxel shift, this has none) and
    # one without a voxel size have no positions to give
    io.write_ome_zarr(tmp_path / "o.ome.zarr", data, voxel_size=(0.5, 0.125, 0.125))
    io.write_ome_zarr(tmp_path / "u.ome.zarr", data, voxel_size=None, attrs={"voxel_size_known": False})
    for name in ("o", "u"):
        io.write_ome_tiff(tmp_path / f"{name}.ome.tif", tmp_path / f"{name}.ome.zarr")
        with tifffile.TiffFile(tmp_path / f"{name}.ome.tif") as tif:
            assert "Position" not in tif.ome_metadata


def test_the_channels_of_one_acquisition_export_as_one_multichannel_ome_tiff(tmp_path, monkeypatch):
    """``channel: all`` restores each channel as its own sample; ``selfres export`` of their
    stores gives one CZYX image (a composite in Fiji), channels named by their samples (and the
    acquisition's own channel names), each plane in place, read back by selfres channel by channel."""
    import tifffile

    from selfres import cli

    rng = np.random.default_rng(6)
    chans = [(rng.random((5, 40, 36)) * 1000).astype(np.float32) for _ in range(2)]
    stores = []
    for c, data in enumerate(chans):
        store = tmp_path / "results" / f"cells_c{c}" / "restored.ome.zarr"
        io.write_ome_zarr(store, data, voxel_size=(0.5, 0.125, 0.125), origin=(1.0, 2.0, 3.0), chunks=(2, 16, 16),
                          attrs={"channel_name": "DAPI"} if c == 0 else None)  # the acquisition named channel 0
        stores.append(store)
    monkeypatch.setattr(io, "_TIFF_SLAB_BYTES", 3 * 40 * 36 * 4)  # slabs across chunks and channels
    out = tmp_path / "cells.ome.tif"
    assert cli.main(["export", *map(str, stores), "-o", str(out)]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "CZYX" and tif.series[0].shape == (2, 5, 40, 36)
        np.testing.assert_array_equal(tif.asarray(), np.stack(chans))
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["cells_c0 (DAPI)", "cells_c1"]
        assert 'Image ID="Image:0" Name="cells"' in tif.ome_metadata
        assert _plane_positions(tif.ome_metadata) == [(1.0 + 0.5 * k, 2.0, 3.0) for k in range(5)] * 2
    for c in (0, 1):
        back = io.read_volume(out, channel=c)
        np.testing.assert_array_equal(back.data, chans[c])
        assert back.voxel_size == pytest.approx((0.5, 0.125, 0.125))
    # one store alone: named by its sample, as before a ZYX image; its channel keeps the acquisition's
    # name for it (a single channel's name was dropped), and a channel the acquisition does not name has none
    io.write_ome_tiff(tmp_path / "c0.ome.tif", stores[0])
    with tifffile.TiffFile(tmp_path / "c0.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and 'Name="cells_c0"' in tif.ome_metadata
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["DAPI"]
    io.write_ome_tiff(tmp_path / "c1.ome.tif", stores[1])
    with tifffile.TiffFile(tmp_path / "c1.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == []


def test_an_exported_ome_tiff_keeps_its_channels_colours(tmp_path):
    """The stores' colours (their input's) become OME ``Channel Color``s, which Fiji's Bio-Formats
    shows the composite in; a store without one is white, and stores without any give none."""
    stores = []
    for c, attrs in enumerate(({"channel_color": "FF0000"}, {}, {"channel_color": "00FFFF"})):
        store = tmp_path / "results" / f"cells_c{c}" / "restored.ome.zarr"
        io.write_ome_zarr(store, np.ones((4, 16, 16), np.float32), voxel_size=(0.5, 0.125, 0.125), attrs=attrs)
        stores.append(store)
    io.write_ome_tiff(tmp_path / "cells.ome.tif", stores)
    with tifffile.TiffFile(tmp_path / "cells.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Color="([^"]+)"', tif.ome_metadata) == ["-16776961", "-1", "16777215"]
    assert [io.channel_color(tmp_path / "cells.ome.tif", c) for c in range(3)] == ["FF0000", "FFFFFF", "00FFFF"]
    io.write_ome_tiff(tmp_path / "c2.ome.tif", stores[2])  # one store alone keeps its colour too
    assert io.channel_color(tmp_path / "c2.ome.tif", None) == "00FFFF"
    io.write_ome_tiff(tmp_path / "c1.ome.tif", stores[1])
    with tifffile.TiffFile(tmp_path / "c1.ome.tif") as tif:
        assert "Color=" not in tif.ome_metadata
    # a time series whose first time point's stores have no colour (made before colours were kept): the
    # later time points' colours, not none
    io.write_ome_tiff(tmp_path / "lapse.ome.tif", [stores[1], stores[1], stores[0], stores[2]], timepoints=2)
    assert [io.channel_color(tmp_path / "lapse.ome.tif", c) for c in (0, 1)] == ["FF0000", "00FFFF"]


def test_an_exported_channel_that_holds_the_fallback_says_so_in_its_name_and_the_log(tmp_path, caplog):
    """A walkthrough: channel 1 of a two-channel acquisition fell back to tricubic; its export's
    channel was named like the network's channel 0, and nothing in the file or the log said so."""
    import tifffile

    stores = []
    for c, attrs in enumerate(({"channel_name": "DAPI", "content": "model"},
                               {"channel_name": "GFP", "content": "interpolation", "layer_note": "tricubic"})):
        store = tmp_path / "results" / f"cells_c{c}" / "restored.ome.zarr"
        io.write_ome_zarr(store, np.ones((4, 16, 16), np.float32), voxel_size=(0.5, 0.125, 0.125), attrs=attrs)
        stores.append(store)
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "cells.ome.tif", stores)
    with tifffile.TiffFile(tmp_path / "cells.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["cells_c0 (DAPI)",
                                                                                "cells_c1 (GFP) [tricubic]"]
    assert (f"{stores[1]} holds tricubic interpolation, not the network's output (the network did not beat it on "
            "the held-out region); in cells.ome.tif its channel is named '… [tricubic]'") in caplog.text
    assert str(stores[0]) not in caplog.text
    io.write_ome_tiff(tmp_path / "c1.ome.tif", stores[1])  # one store alone: its image's name says it
    with tifffile.TiffFile(tmp_path / "c1.ome.tif") as tif:
        assert 'Name="cells_c1 [tricubic]"' in tif.ome_metadata
    # ... also named by its sample as the workflow's export_tiff names it (a walkthrough: its per-sample
    # restored.ome.tif said nothing), its channel too, and the log says what the file calls it
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "s1.ome.tif", stores[1], name="cells_c1")
    with tifffile.TiffFile(tmp_path / "s1.ome.tif") as tif:
        assert 'Image ID="Image:0" Name="cells_c1 [tricubic]"' in tif.ome_metadata
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["GFP [tricubic]"]
    assert ("in s1.ome.tif its image is named '… [tricubic]' and its channel is named '… [tricubic]'"
            in caplog.text)  # the store's channel (GFP) is named: both, as the file shows them
    io.write_ome_tiff(tmp_path / "s0.ome.tif", stores[0], name="cells_c0")  # the network's: no note
    with tifffile.TiffFile(tmp_path / "s0.ome.tif") as tif:
        assert 'Name="cells_c0"' in tif.ome_metadata and re.findall(r'<Channel [^>]*Name="([^"]+)"',
                                                                      tif.ome_metadata) == ["DAPI"]
    # a time series whose channel 1 fell back at time point 1 only (a review: named by time point 0 alone,
    # the channel carried no note while the log said it did)
    def lapse(folder, n_t, fell):  # two channels' stores, time point by time point; fell(c, t): a fall-back
        stores = []
        for t in range(n_t):
            for c in (0, 1):
                store = tmp_path / folder / f"lapse_c{c}_t{t}" / "restored.ome.zarr"
                io.write_ome_zarr(store, np.ones((4, 16, 16), np.float32), voxel_size=(0.5, 0.125, 0.125),
                                  attrs={"content": "interpolation", "layer_note": "tricubic"} if fell(c, t) else None)
                stores.append(store)
        return stores

    series = lapse("ts", 2, lambda c, t: c == 1 and t == 1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "lapse.ome.tif", series, timepoints=2)
    with tifffile.TiffFile(tmp_path / "lapse.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["lapse_c0", "lapse_c1 [tricubic at t1]"]
    assert ("in lapse.ome.tif its channel is named '… [tricubic at t1]' and it is time point 1" in caplog.text
            and caplog.text.count("holds tricubic interpolation") == 1), caplog.text
    # channel 1 fell back at t0 and t2 of three, channel 0 at t1: each channel says how many; the log,
    # which time point (a mutant named t0 for all, or "2 of 2")
    series = lapse("ts3", 3, lambda c, t: (c == 1 and t != 1) or (c == 0 and t == 1))
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "lapse3.ome.tif", series, timepoints=3)
    with tifffile.TiffFile(tmp_path / "lapse3.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == [
            "lapse_c0 [tricubic at t1]", "lapse_c1 [tricubic at 2 of 3 time points]"]
    assert "lapse_c0_t1/restored.ome.zarr holds tricubic interpolation" in caplog.text
    assert "named '… [tricubic at t1]' and it is time point 1" in caplog.text
    assert "named '… [tricubic at 2 of 3 time points]' and it is time point 2" in caplog.text
    # names the caller gives are the file's: the log claims no note in them
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "named.ome.tif", stores, channel_names=["A", "B"])
    with tifffile.TiffFile(tmp_path / "named.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["A", "B"]
    assert "holds tricubic interpolation" in caplog.text and "its channel is named" not in caplog.text
    # a one-channel time series: the image says it (no channel name to carry the note), the log says where
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.write_ome_tiff(tmp_path / "one.ome.tif", series[1::2], timepoints=3)  # lapse_c1 at t0, t1, t2
    with tifffile.TiffFile(tmp_path / "one.ome.tif") as tif:
        assert 'Name="one [tricubic at 2 of 3 time points]"' in tif.ome_metadata
    assert "in one.ome.tif its image is named '… [tricubic at 2 of 3 time points]' and it is time point 2" \
        in caplog.text
    # a channel whose time points hold different stand-ins names them all
    both = [io.read_ome_zarr(stores[1]), io.read_ome_zarr(stores[1])]
    both[0].attrs["layer_note"] = "network, lost to tricubic"
    assert io._channel_note(both) == "network, lost to tricubic, tricubic"


@pytest.mark.parametrize("channels, axes", [(2, "TCZYX"), (1, "TZYX")])
def test_the_time_points_of_one_acquisition_export_as_one_time_series(tmp_path, channels, axes):
    """``timepoint: all`` (and ``channel: all``) restores each time point (and channel) as its
    own sample; ``selfres export --timepoints`` of their stores, time point by time point, gives
    one TZYX or TCZYX image (a hyperstack in Fiji) that selfres reads back time point by time
    point; a count that does not divide the stores is refused before anything is written."""
    import tifffile

    from selfres import cli

    rng = np.random.default_rng(7)
    stores, data = [], {}
    for t in range(3):
        for c in range(channels):
            sid = f"lapse_c{c}_t{t}" if channels > 1 else f"lapse_t{t}"
            data[t, c] = (rng.random((4, 24, 20)) * 100).astype(np.float32)
            store = tmp_path / "results" / sid / "restored.ome.zarr"
            io.write_ome_zarr(store, data[t, c], voxel_size=(0.5, 0.125, 0.125), origin=(1.0, 0.0, 0.0),
                              attrs={"time_increment_s": 90.0})  # normalise's, from the acquisition
            stores.append(store)
    out = tmp_path / "lapse.ome.tif"
    assert cli.main(["export", *map(str, stores), "-o", str(out), "--timepoints", "3"]) == 0
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert series.axes == axes and series.shape == (3, *((channels,) if channels > 1 else ()), 4, 24, 20)
        np.testing.assert_array_equal(tif.asarray().reshape(3, channels, 4, 24, 20),
                                      np.stack([np.stack([data[t, c] for c in range(channels)]) for t in range(3)]))
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == (
            ["lapse_c0", "lapse_c1"] if channels > 1 else [])  # the channels of every time point
        assert _plane_positions(tif.ome_metadata) == [(1.0 + 0.5 * k, 0.0, 0.0) for k in range(4)] * 3 * channels
        assert re.search(r'<Pixels [^>]*TimeIncrement="90.0" TimeIncrementUnit="s"', tif.ome_metadata)
    for t in range(3):
        back = io.read_volume(out, timepoint=t, channel=channels - 1)
        np.testing.assert_array_equal(back.data, data[t, channels - 1])
    assert cli.main(["export", *map(str, stores[:-1]), "-o", str(tmp_path / "x.ome.tif"), "--timepoints", "3"]) == 2
    assert not (tmp_path / "x.ome.tif").exists()


@pytest.mark.parametrize("source, output, expected", [
    ("store", "view.png", "name the OME-TIFF *.ome.tif (or *.ome.tiff)"),
    ("store", "view.tif", "name the OME-TIFF *.ome.tif"),
    ("tiff", "x.ome.tif", "in.tif: is a file, not an OME-Zarr store"),
])
def test_export_refuses_a_name_fiji_would_not_read_as_ome_and_a_file_for_a_store(tmp_path, capsys, source, output,
                                                                                 expected):
    import tifffile

    from selfres import cli

    data = np.ones((2, 8, 8), np.float32)
    io.write_ome_zarr(tmp_path / "r.ome.zarr", data, voxel_size=(1.0, 0.5, 0.5))
    tifffile.imwrite(tmp_path / "in.tif", data)
    given = tmp_path / ("r.ome.zarr" if source == "store" else "in.tif")
    assert cli.main(["export", str(given), "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and expected in err
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("other, problem", [
    (dict(shape=(5, 40, 30)), r"shape \(5, 40, 30\), against \(5, 40, 36\)"),
    (dict(voxel_size=(1.0, 0.125, 0.125)), r"voxel size \(1\.0, 0\.125, 0\.125\), against"),
    (dict(origin=(0.0, 0.0, 8.0)), r"position .* \(voxels\), against"),
])
def test_images_on_other_grids_cannot_be_channels_of_one(tmp_path, other, problem):
    first, second = tmp_path / "a.ome.zarr", tmp_path / "b.ome.zarr"
    io.write_ome_zarr(first, np.zeros((5, 40, 36), np.float32), voxel_size=(0.5, 0.125, 0.125))
    io.write_ome_zarr(second, np.zeros(other.get("shape", (5, 40, 36)), np.float32),
                      voxel_size=other.get("voxel_size", (0.5, 0.125, 0.125)), origin=other.get("origin"))
    with pytest.raises(InputError, match=f"b.ome.zarr: cannot be a channel or time point beside .*a.ome.zarr: {problem}"):
        io.write_ome_tiff(tmp_path / "x.ome.tif", [first, second])
    assert not (tmp_path / "x.ome.tif").exists()


def test_an_acquisitions_frame_interval_is_read_where_it_has_one(tmp_path):
    """OME ``TimeIncrement`` (with its unit), ImageJ ``finterval`` / ``tunit``, an OME-Zarr's
    ``t`` scale: in seconds; none, zero or an unknown unit is ``None``, never an error."""
    data = np.zeros((3, 2, 8, 8), np.uint16)  # TZYX
    ome = tmp_path / "lapse.ome.tif"
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "TZYX", "TimeIncrement": 2.5, "TimeIncrementUnit": "min"})
    assert io.time_increment(ome) == 150.0
    seconds = tmp_path / "s.ome.tif"
    tifffile.imwrite(seconds, data, ome=True, metadata={"axes": "TZYX", "TimeIncrement": 0.5})  # unit: s (OME's default)
    assert io.time_increment(seconds) == 0.5
    imagej = tmp_path / "lapse.tif"
    tifffile.imwrite(imagej, data, imagej=True, metadata={"axes": "TZYX", "finterval": 30.0, "tunit": "sec"})
    assert io.time_increment(imagej) == 30.0
    store = tmp_path / "lapse.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.create_array("0", data=data.astype(np.float32))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time", "unit": "millisecond"}, {"name": "z", "type": "space"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [250.0, 1, 1, 1]}]}]}]
    assert io.time_increment(store) == 0.25
    ms = group.attrs["multiscales"]
    ms[0]["axes"][0]["unit"] = "nanosecond"  # an NGFF unit the table lacked: no interval at all
    group.attrs["multiscales"] = ms
    assert io.time_increment(store) == pytest.approx(250e-9)
    ms[0]["axes"][0]["unit"] = "millisecond"
    group.attrs["multiscales"] = ms
    # no unit and a step of 1: frame steps (ome-zarr-py's default), not "one every 1 s"
    ms = group.attrs["multiscales"]
    del ms[0]["axes"][0]["unit"]
    ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"][0] = 1.0
    group.attrs["multiscales"] = ms
    assert io.time_increment(store) is None
    ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"][0] = 30.0  # no unit, a step: seconds
    group.attrs["multiscales"] = ms
    assert io.time_increment(store) == 30.0
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)
    odd = tmp_path / "odd.ome.tif"
    tifffile.imwrite(odd, data, ome=True, metadata={"axes": "TZYX", "TimeIncrement": 2.0, "TimeIncrementUnit": "fortnight"})
    assert [io.time_increment(p) for p in (plain, odd, tmp_path / "missing.tif")] == [None, None, None]


def test_an_acquisitions_own_channel_names_are_read_where_it_has_them(tmp_path):
    """OME-TIFF ``Channel Name`` and OME-Zarr ``omero`` labels name the outputs' channels; an
    ImageJ stack has none, and a file the reader refuses has none either (never an error)."""
    data = np.zeros((3, 2, 16, 16), np.uint16)  # ZCYX
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    assert [io.channel_name(ome, c) for c in (0, 1, 2)] == ["DAPI", "GFP", None]
    imagej = tmp_path / "cells.tif"
    tifffile.imwrite(imagej, data, imagej=True, metadata={"axes": "ZCYX"})
    assert io.channel_name(imagej, 0) is None
    store = tmp_path / "cells.ome.zarr"
    io.write_ome_zarr(store, np.zeros((3, 16, 16), np.float32), voxel_size=(1, 1, 1), name="Hoechst")
    assert io.channel_name(store, 0) == "Hoechst"
    (tmp_path / "x.czi").write_bytes(b"ZISRAWFILE" + bytes(16))
    assert io.channel_name(tmp_path / "x.czi", 0) is None and io.channel_name(tmp_path / "missing.tif", 0) is None


def test_an_acquisitions_own_channel_colours_are_read_where_it_has_them(tmp_path):
    """OME ``Channel Color`` (signed RGBA), an ImageJ composite's LUTs and OME-Zarr ``omero``
    colours give the outputs' channel colours; a file without them, or one the reader refuses,
    gives none (never an error)."""
    data = np.zeros((3, 2, 16, 16), np.uint16)  # ZCYX
    ome = tmp_path / "cells.ome.tif"
    # Bio-Formats' red and an opaque blue-green: 0xFF0000FF and 0x0080C0FF as signed 32-bit integers
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"],
                                                                                 "Color": [-16776961, 8438015]}})
    assert [io.channel_color(ome, c) for c in (0, 1, 2, None)] == ["FF0000", "0080C0", None, None]
    plain = tmp_path / "plain.ome.tif"
    tifffile.imwrite(plain, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    assert io.channel_color(plain, 0) is None
    luts = [np.zeros((3, 256), np.uint8) for _ in range(2)]
    luts[0][2] = np.arange(256)  # blue
    luts[1][0], luts[1][2] = np.arange(256), np.arange(256)  # magenta
    imagej = tmp_path / "cells.tif"
    tifffile.imwrite(imagej, data, imagej=True, metadata={"axes": "ZCYX", "LUTs": luts})
    assert [io.channel_color(imagej, c) for c in (0, 1)] == ["0000FF", "FF00FF"]
    tifffile.imwrite(tmp_path / "nolut.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    assert io.channel_color(tmp_path / "nolut.tif", 0) is None
    store = tmp_path / "cells.ome.zarr"
    io.write_ome_zarr(store, np.zeros((3, 16, 16), np.float32), voxel_size=(1, 1, 1),
                      attrs={"channel_color": "00FF00"})
    assert io.channel_color(store, None) == "00FF00" and io.channel_color(store, 0) == "00FF00"
    (tmp_path / "x.czi").write_bytes(b"ZISRAWFILE" + bytes(16))
    assert io.channel_color(tmp_path / "x.czi", 0) is None and io.channel_color(tmp_path / "missing.tif", 0) is None
    # a review: black (opaque 255, transparent 0) drew the channel invisible, an inverted grey LUT read black,
    # and one unreadable Color wiped the other channels' colours
    odd = tmp_path / "odd.ome.tif"
    tifffile.imwrite(odd, np.zeros((3, 4, 16, 16), np.uint16), ome=True, metadata={
        "axes": "ZCYX", "Channel": {"Color": [255, 0, "abc", 16711935]}})  # black, transparent, junk, 00FF00 opaque
    assert [io.channel_color(odd, c) for c in range(4)] == [None, None, None, "00FF00"]
    inverted = np.stack([np.arange(255, -1, -1)] * 3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "inv.tif", data, imagej=True, metadata={"axes": "ZCYX", "LUTs": [inverted, luts[1]]})
    assert [io.channel_color(tmp_path / "inv.tif", c) for c in (0, 1)] == ["FFFFFF", "FF00FF"]


def test_a_store_shows_its_channel_in_its_inputs_colour(tmp_path):
    """A walkthrough: every channel of a two-channel acquisition opened grey in napari (``omero``
    colour FFFFFF for all). A store now takes its input channel's colour — the file's, else Fiji's
    composite colour for that channel — and a one-channel input without a colour stays grey."""
    from selfres import pipeline

    rng = np.random.default_rng(3)
    data = (rng.random((6, 2, 32, 32)) * 1000).astype(np.uint16)  # ZCYX
    given = tmp_path / "given.ome.tif"
    tifffile.imwrite(given, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Color": [-16711681, -65281]}})
    plain = tmp_path / "plain.ome.tif"
    tifffile.imwrite(plain, data, ome=True, metadata={"axes": "ZCYX"})
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, data[:, 0], metadata={"axes": "ZYX"})
    for path, channel, expected in ((given, 0, "FF00FF"), (given, 1, "FFFF00"), (plain, 0, "FF0000"),
                                    (plain, 1, "00FF00"), (one, None, "FFFFFF"), (one, 0, "FFFFFF")):
        out = tmp_path / f"{path.name.split('.')[0]}_{channel}.ome.zarr"
        pipeline.stage_normalise(path, out, sample="s", channel=channel)
        omero = zarr.open_group(str(out), mode="r").attrs["omero"]
        assert omero["channels"][0]["color"] == expected
        assert omero["rdefs"]["model"] == ("greyscale" if expected == "FFFFFF" else "color")
    assert io.read_volume(tmp_path / "plain_1.ome.zarr").attrs["channel_color"] == "00FF00"
    assert "channel_color" not in io.read_volume(tmp_path / "one_None.ome.zarr").attrs


def test_a_files_only_channel_is_named_without_a_channel_index(tmp_path):
    """A one-channel acquisition's name reaches the outputs too (an interoperability walkthrough:
    an OME-Zarr labelled "GFP" came out labelled with the sample alone); a file listing several
    channels gives none without an index."""
    one = tmp_path / "one.ome.tif"
    tifffile.imwrite(one, np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16), ome=True,
                     metadata={"axes": "ZYX", "Channel": {"Name": ["GFP"]}})
    two = tmp_path / "two.ome.tif"
    tifffile.imwrite(two, np.zeros((3, 2, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    store = tmp_path / "one.ome.zarr"
    io.write_ome_zarr(store, np.zeros((3, 16, 16), np.float32), voxel_size=(1, 1, 1), name="Hoechst")
    assert [io.channel_name(p, None) for p in (one, two, store)] == ["GFP", None, "Hoechst"]
    from selfres import pipeline

    pipeline.stage_normalise(one, tmp_path / "n.ome.zarr", sample="one")
    assert io.read_volume(tmp_path / "n.ome.zarr").attrs["channel_name"] == "GFP"


def test_ome_tiff_export_of_what_is_not_an_ome_zarr_image_is_one_clear_error(tmp_path):
    io.write_ome_zarr(tmp_path / "r.ome.zarr", np.zeros((2, 64, 64), np.float32), voxel_size=(1, 1, 1))
    with pytest.raises(InputError, match="level 7"):
        io.write_ome_tiff(tmp_path / "x.ome.tif", tmp_path / "r.ome.zarr", level=7)
    with pytest.raises(InputError, match="does not exist"):
        io.write_ome_tiff(tmp_path / "x.ome.tif", tmp_path / "missing.ome.zarr")
    assert not (tmp_path / "x.ome.tif").exists()


def test_inspect_tells_each_image_its_channels_time_points_voxel_size_and_output_grids(tmp_path, capsys):
    """`selfres inspect`: what the sheet needs for each image, from the metadata alone."""
    from selfres import cli

    hyper = tmp_path / "lapse.tif"
    data = np.zeros((3, 6, 2, 48, 60), dtype=np.uint16)  # TZCYX
    tifffile.imwrite(hyper, data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "TZCYX", "finterval": 45.0})
    assert io.describe_acquisition(hyper) == [{"series": 0, "shape": (6, 48, 60), "dtype": "uint16", "channels": 2,
                                               "timepoints": 3, "voxel_size": pytest.approx((2.0, 0.5, 0.5))}]
    assert cli.main(["inspect", str(hyper), "--scale", "1,2,2"]) == 0
    out = capsys.readouterr().out
    assert "6×48×60 ZYX, uint16, 2 channels, 3 time points" in out
    assert "channel, 0..1 or all" in out and "timepoint, 0..2 or all" in out
    assert "  time points (one every 45 s): sheet column timepoint" in out  # the file's frame interval
    assert "  channels: sheet column channel" in out  # an ImageJ hyperstack names no channels
    named = tmp_path / "named.ome.tif"  # a microscope's export names its channels
    tifffile.imwrite(named, np.zeros((4, 2, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    assert cli.main(["inspect", str(named)]) == 0
    assert '  channels (0 "DAPI", 1 "GFP"): sheet column channel, 0..1 or all' in capsys.readouterr().out
    assert "voxel size z,y,x: 2, 0.5, 0.5 µm (from the file)" in out
    assert "enhance 1,2,2: output 6×96×120, voxel 2, 0.25, 0.25 µm" in out
    # the held-out check cannot tell a binned camera from the default model: asked before any run
    assert "    trained on this image downscaled once more: train.degradation.method cubic; a camera that binned " \
           "pixels: block" in out
    assert cli.main(["inspect", str(hyper), "--settings", '{"train.degradation.method": "block"}']) == 0
    said = capsys.readouterr().out
    assert "train.degradation.method block\n" in said and "binned" not in said
    assert "isotropic: axial factor 4 (z step / lateral pixel), output 24×48×60, voxel 0.5, 0.5, 0.5 µm" in out
    assert "not square" not in out
    # pixels that are not square (a resonant scanner's): z follows their mean, and inspect says so
    assert cli.main(["inspect", str(hyper), "--voxel-size", "2,0.5,0.4"]) == 0
    assert ("voxel 0.45, 0.5, 0.4 µm; the lateral pixels are not square, so z is matched to their mean and the "
            "output is not isotropic") in capsys.readouterr().out

    # a metadata size normalise would not use (a unit mistake) is not used here either
    cm = _imagej(tmp_path / "cm.tif", _vol(), voxel=(2e4, 0.5, 0.5))
    assert cli.main(["inspect", str(cm)]) == 0
    out = capsys.readouterr().out
    assert "voxel size z,y,x: the file's 2e+04, 0.5, 0.5 µm is not used: a voxel size must be within" in out
    assert "isotropic: not possible — isotropic mode needs the voxel size" in out

    positions = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(positions, ome=True) as tw:
        tw.write(_vol(), metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
        tw.write(_vol(seed=1), metadata={"axes": "ZYX", "Name": "Pos 3"})  # the microscope names its positions
    assert [d["voxel_size"] for d in io.describe_acquisition(positions)] == [pytest.approx((2.0, 0.5, 0.5)), None]
    assert cli.main(["inspect", str(positions)]) == 0
    out = capsys.readouterr().out
    assert "2 images (TIFF series" in out and 'series 1 "Pos 3": 5×12×14 ZYX' in out  # which series is which
    assert [io.series_name(positions, k) for k in (0, 1, 2)] == [None, "Pos 3", None]  # 0: tifffile's 'Image0'
    assert 'series 0 "' not in out
    assert io.series_name(tmp_path / "missing.tif", 0) is None
    io.write_ome_zarr(tmp_path / "named.ome.zarr", _vol(), voxel_size=(2.0, 0.5, 0.5), name="Pos 4")
    assert io.series_name(tmp_path / "named.ome.zarr", None) == "Pos 4"
    assert "isotropic: not possible — isotropic mode needs the voxel size" in out
    # what the crop stage would refuse is said so, with its reason
    thin = _imagej(tmp_path / "thin.tif", _vol(shape=(3, 12, 14)), voxel=(1.0, 0.4, 0.5))
    assert cli.main(["inspect", str(thin)]) == 0
    out = capsys.readouterr().out
    assert "enhance 2,2,2: not possible — the volume (shape (3, 12, 14)) has 3 slices; scale 2 along z needs" in out
    assert "isotropic: not possible — isotropic mode needs at least 4 z slices" in out
    assert cli.main(["inspect", str(thin), "--scale", "1,2,2"]) == 0  # as the crop stage: too small to hold out
    assert ("enhance 1,2,2: not possible — volume of shape (3, 12, 14) is too small to split into a training FOV "
            "and a held-out region") in capsys.readouterr().out
    # a training FOV given is checked as crop checks it: the slab it leaves (3x12x6) holds too few voxels
    # for the default held-out region (inspect said 'output 3×24×28' for a FOV crop refused) ...
    assert cli.main(["inspect", str(thin), "--scale", "1,2,2", "--training-fov", "0:3,0:12,0:8"]) == 0
    assert ("enhance 1,2,2: not possible — training_fov 0:3,0:12,0:8 leaves no room for a held-out region (a slab "
            "of the volume outside it, at least 4096 voxels once its sides are rounded down to the scale factors, and "
            "1 z x 4 y x 4 x)") in capsys.readouterr().out
    # ... unless the config's fov settings allow a smaller region
    assert cli.main(["inspect", str(thin), "--scale", "1,2,2", "--training-fov", "0:3,0:12,0:8",
                     "--settings", '{"fov": {"min_holdout_voxels": 64}}']) == 0
    assert "enhance 1,2,2: output 3×24×28" in capsys.readouterr().out
    mid = _imagej(tmp_path / "mid.tif", _vol(shape=(3, 30, 40)), voxel=(1.0, 0.4, 0.5))
    assert cli.main(["inspect", str(mid), "--scale", "1,2,2"]) == 0
    assert "enhance 1,2,2: not possible — volume of shape (3, 30, 40) is too small" in capsys.readouterr().out
    assert cli.main(["inspect", str(mid), "--scale", "1,2,2", "--settings", '{"fov": {"min_holdout_voxels": 64}}']) == 0
    assert "enhance 1,2,2: output 3×60×80" in capsys.readouterr().out
    wide = _imagej(tmp_path / "wide.tif", _vol(shape=(3, 48, 60)), voxel=(1.0, 0.4, 0.5))
    assert cli.main(["inspect", str(wide), "--scale", "1,2,2"]) == 0
    assert "enhance 1,2,2: output 3×96×120, voxel 1, 0.2, 0.25 µm" in capsys.readouterr().out
    plane = tmp_path / "plane.tif"  # a single plane records no z step: none is shown
    tifffile.imwrite(plane, _vol(shape=(1, 96, 96))[0], imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                     metadata={"unit": "micron", "axes": "YX"})
    assert cli.main(["inspect", str(plane), "--scale", "1,2,2"]) == 0
    out = capsys.readouterr().out
    assert "voxel size y,x: 0.3, 0.3 µm (from the file)" in out and "voxel 0.15, 0.15 µm" in out
    assert cli.main(["inspect", str(plane)]) == 0  # the default scale 2,2,2: said to be a 2-D image
    assert ("enhance 2,2,2: not possible — is a 2-D image (shape (1, 96, 96), one z slice): it cannot be scaled "
            "along z (scale 2,2,2); give the sample scale 1,2,2") in capsys.readouterr().out
    assert cli.main(["inspect", str(tmp_path / "absent.tif")]) == 2  # one clear error
    assert "absent.tif: does not exist" in capsys.readouterr().err


def test_a_voxel_size_computed_by_division_is_written_as_it_reads(tmp_path):
    """Isotropic output z: 4 µm / (4 / 0.8286) is 0.8285999999999999 in floating point; the
    OME-Zarr scale and the exported OME-TIFF's PhysicalSizeZ say 0.8286."""
    vz = 4.0 / (4.0 / 0.8286)
    assert vz != 0.8286
    store = tmp_path / "o.ome.zarr"
    io.write_ome_zarr(store, _vol().astype(np.float32), voxel_size=(vz, 0.8286, 0.8286))
    assert io.read_ome_zarr(store).voxel_size == (0.8286, 0.8286, 0.8286)
    tif = io.write_ome_tiff(tmp_path / "o.ome.tif", store)
    with tifffile.TiffFile(tif) as t:
        assert 'PhysicalSizeZ="0.8286"' in t.ome_metadata


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    """`selfres inspect … | head`: a closed pipe ended in a traceback and 'This is a bug'."""
    import subprocess
    import sys

    code = ("import sys; from selfres import cli\n"
            "def run(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli.run = run; sys.exit(cli.main(['inspect', 'x.tif']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr == ""


def test_a_normalised_store_knows_the_acquisition_it_was_made_from(tmp_path):
    """The workflow keeps an archived sample done only when its normalised copy was made
    from the path the sheet names: as given, or the same file by another path."""
    import os

    import tifffile

    from selfres import pipeline
    from selfres.io import made_from

    (tmp_path / "data").mkdir()
    tifffile.imwrite(tmp_path / "data" / "a.tif", np.random.default_rng(0).random((4, 16, 16)).astype(np.float32),
                     imagej=True, metadata={"axes": "ZYX"})
    os.symlink(tmp_path / "data", tmp_path / "alias")
    store = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(str(tmp_path / "data" / "a.tif"), store, sample="a", voxel_size=(1.0, 0.5, 0.5))
    (tmp_path / "data" / "a.tif").rename(tmp_path / "data" / "a.archived.tif")  # moved away after its night
    assert made_from(store, str(tmp_path / "data" / "a.tif"))
    assert made_from(store, str(tmp_path / "alias" / "a.tif"))  # the same file through a symlinked folder
    assert not made_from(store, str(tmp_path / "data" / "b.tif"))
    assert not made_from(tmp_path / "missing.ome.zarr", str(tmp_path / "data" / "a.tif"))


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
def test_an_acquisition_replaced_by_an_older_file_is_told_from_the_one_its_copy_was_made_from(tmp_path, ngff_version):
    """`cp -p` / `rsync -a` of a file made before the last run: Snakemake sees no newer input, so
    the normalised copy records the file's size and time and the workflow compares them."""
    import os

    import tifffile

    from selfres import pipeline
    from selfres.provenance import date_before, output_mtime_ns, replaced_by_an_older_file

    raw = tmp_path / "a.tif"
    tifffile.imwrite(raw, np.random.default_rng(0).random((4, 16, 16)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    first_size, first_bytes = os.stat(raw).st_size, raw.read_bytes()
    store = tmp_path / "n.ome.zarr"
    pipeline.stage_normalise(str(raw), store, sample="a", voxel_size=(1.0, 0.5, 0.5), ngff_version=ngff_version)
    (store / ".snakemake_timestamp").touch()  # as Snakemake dates a folder output after its job
    assert replaced_by_an_older_file(store, raw) is None  # the same file
    made = output_mtime_ns(store)
    os.utime(raw, ns=(made + 10**9, made + 10**9))  # touched (newer): Snakemake reruns it itself
    assert replaced_by_an_older_file(store, raw) is None
    tifffile.imwrite(raw, np.random.default_rng(1).random((4, 16, 24)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    os.utime(raw, ns=(made - 86400 * 10**9, made - 86400 * 10**9))  # another file, a day older
    told = replaced_by_an_older_file(store, raw)
    assert told and told.startswith(f"{raw} is not the file its normalised copy was made from")
    # another acquisition of the same size (the same camera and stack), older: told by its time
    tifffile.imwrite(raw, np.random.default_rng(2).random((4, 16, 16)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    assert os.stat(raw).st_size == first_size
    os.utime(raw, ns=(made - 2 * 86400 * 10**9,) * 2)
    assert replaced_by_an_older_file(store, raw)
    # ... within the same second as the first (a copy of the same size, 20 ms apart): the times, to the microsecond
    recorded = pipeline.io.read_volume(store, lazy=True).attrs["source_stat"]["mtime_ns"]
    os.utime(raw, ns=(recorded - 20_000_000,) * 2 if recorded % 10**9 >= 20_000_000 else (recorded + 20_000_000,) * 2)
    assert os.stat(raw).st_mtime_ns < made
    told = replaced_by_an_older_file(store, raw)
    then, now = told.split("modified ")[1].split(" now)")[0].split(" then, ")
    assert then != now and len(then.split(".")[-1]) == 6, told
    # ... 1 µs apart or less: to the nanosecond (a helper read "19.231047 then, 19.231047 now")
    os.utime(raw, ns=(recorded - 1 if recorded % 1000 else recorded + 1,) * 2)
    then, now = replaced_by_an_older_file(store, raw).split("modified ")[1].split(" now)")[0].split(" then, ")
    assert then != now and len(then.split(".")[-1]) == 9
    assert replaced_by_an_older_file(store, tmp_path / "gone.tif") is None  # archived: goes on from its copy
    # the sheet's row now names another, older file: its changed path reruns the sample (Snakemake's
    # parameters); nothing was replaced behind the operator's back
    other = tmp_path / "b.tif"
    tifffile.imwrite(other, np.random.default_rng(3).random((4, 16, 16)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    os.utime(other, ns=(made - 86400 * 10**9,) * 2)
    assert replaced_by_an_older_file(store, other) is None
    assert replaced_by_an_older_file(store, os.path.relpath(raw)) is not None  # the same file, spelt otherwise
    assert replaced_by_an_older_file(tmp_path / "none.ome.zarr", raw) is None
    # the very bytes it was made from, given another, older time (copied back): not a replacement
    raw.write_bytes(first_bytes)
    os.utime(raw, ns=(made - 3 * 86400 * 10**9,) * 2)
    assert replaced_by_an_older_file(store, raw) is None
    # ... read once: the file keeps its older time, and every start (a dry run too) read all of it again
    from selfres.sheet import FileCounts

    counts = FileCounts(tmp_path / "counts.json")
    assert replaced_by_an_older_file(store, raw, counts=counts) is None
    counts.save()
    real_checksum = pipeline.io.file_checksum
    pipeline.io.file_checksum = lambda *a: pytest.fail("the acquisition was read again")
    try:
        assert replaced_by_an_older_file(store, raw, counts=FileCounts(tmp_path / "counts.json")) is None
    finally:
        pipeline.io.file_checksum = real_checksum
    raw.write_bytes(first_bytes[:-1] + bytes([first_bytes[-1] ^ 1]))  # other bytes of that size, another time
    os.utime(raw, ns=(made - 4 * 86400 * 10**9,) * 2)
    assert replaced_by_an_older_file(store, raw, counts=FileCounts(tmp_path / "counts.json"))
    raw.write_bytes(first_bytes)
    os.utime(raw, ns=(made - 3 * 86400 * 10**9,) * 2)
    date_before(store, os.stat(raw).st_mtime_ns)  # what the workflow does: Snakemake then reruns it
    assert output_mtime_ns(store) < os.stat(raw).st_mtime_ns


def test_a_bioformats2raw_store_reads_each_of_its_series(tmp_path):
    """`bioformats2raw scan.czi scan.ome.zarr`, the conversion selfres's own error line gives for
    a vendor file, writes a root group marked bioformats2raw.layout with one OME-Zarr image per
    series in 0/, 1/, …; the root was refused as 'a Zarr group without multiscales metadata'."""
    root = tmp_path / "scan.ome.zarr"
    zarr.open_group(root, mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    first = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    io.write_ome_zarr(root / "0", first, voxel_size=(2.0, 0.5, 0.5))
    io.write_ome_zarr(root / "1", first[:, :8], voxel_size=(1.0, 0.25, 0.25))
    assert io.series_numbers(root) == [0, 1]
    vol = io.read_volume(root, series=0)
    assert vol.shape == (4, 16, 16) and vol.voxel_size == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(vol.data, first)
    second = io.read_volume(root, series=1)
    assert second.shape == (4, 8, 16) and second.voxel_size == (1.0, 0.25, 0.25)
    with pytest.raises(InputError, match="series 2 is out of range: this bioformats2raw store holds series 0, 1"):
        io.read_volume(root, series=2)
    # several images and none chosen: refused as a TIFF of several series is, not series 0 taken
    with pytest.raises(SeriesNotChosen, match=r"holds 2 images \(bioformats2raw series 0, 1\)"):
        io.read_volume(root)
    import shutil

    shutil.rmtree(root / "1")  # one image: read as it is
    assert io.series_numbers(root) == [0] and io.read_voxel_size(root) == (2.0, 0.5, 0.5)
    assert io.read_volume(root).shape == (4, 16, 16)


@pytest.mark.parametrize("z", [{"PhysicalSizeZ": 1.0, "PhysicalSizeZUnit": "pixel"}, {"PhysicalSizeZ": 0.0},
                               {"PhysicalSizeZ": "abc"}])
def test_a_single_plane_ome_tiff_keeps_its_pixel_size_whatever_its_z_size_says(tmp_path, z):
    """A 2-D OME-TIFF's z size is not used; one in pixels or not a number raised a TypeError /
    ValueError (not a selfres error), and 0 threw the valid pixel size away."""
    path = tmp_path / "plane.ome.tif"
    tifffile.imwrite(path, np.ones((40, 50), np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, **z})
    assert io.read_volume(path).voxel_size == (0.2, 0.2, 0.2)


def test_an_ome_tiff_missing_one_of_its_images_files_does_not_lend_another_images_voxel_size(tmp_path, caplog):
    """tifffile leaves out an OME Image whose planes are in a file that is not there, so the
    n-th Pixels element is not the n-th series: image B was read with image A's voxel size."""
    path = tmp_path / "multi.ome.tif"
    planes = np.ones((3, 32, 32), np.uint16)
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(planes, metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.5})
        w.write(planes, metadata={"axes": "ZYX", "PhysicalSizeX": 0.7, "PhysicalSizeY": 0.7, "PhysicalSizeZ": 2.0})
    xml = tifffile.tiffcomment(path)
    i0, i1 = xml.index('<Image ID="Image:0"'), xml.index('<Image ID="Image:1"')
    elsewhere = re.sub(r"<TiffData([^/]*)/>", r'<TiffData\1><UUID FileName="missing.ome.tif">'
                       r"urn:uuid:00000000-0000-0000-0000-000000000000</UUID></TiffData>", xml[i0:i1])
    tifffile.tiffcomment(path, xml[:i0] + elsewhere + xml[i1:])
    with caplog.at_level("WARNING"):
        vol = io.read_volume(path)
    assert vol.voxel_size is None
    assert "describes 2 images and the file holds 1" in caplog.text


@pytest.mark.parametrize("t_step", [1.0, 60.0])
def test_an_ome_zarr_in_pixel_steps_is_not_given_micrometres_by_its_time_step(tmp_path, t_step):
    """Scale 1 on z, y, x and no units: pixel steps, no voxel size — a time step of 60 (s)
    made them 1 µm."""
    g = zarr.open_group(tmp_path / "t.zarr", mode="w", zarr_format=2)
    g.create_array("0", data=np.ones((2, 4, 32, 32), np.float32))
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "z", "type": "space"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [t_step, 1, 1, 1]}]}]}]
    assert io.read_volume(tmp_path / "t.zarr", timepoint=0).voxel_size is None


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_a_pyramid_level_of_64_bit_integers_near_their_limit_does_not_wrap(dtype):
    """The block mean was clipped at the limit as a float (2**63, 2**64: one past it) and wrapped
    to the other end of the range on the cast."""
    block = np.full((2, 2, 2), np.iinfo(dtype).max - 5, dtype)
    mean = io._block_mean(block, factors=(2, 2, 2), out_dtype=dtype)
    assert mean.dtype == dtype and int(mean[0, 0, 0]) > np.iinfo(dtype).max // 2


@pytest.mark.parametrize("ome", [False, True])
def test_read_voxel_size_of_an_rgb_plane_agrees_with_read_volume(tmp_path, ome):
    """Axes YXS: the y size was taken for a z count (ImageJ: a z step of 1 µm and a warning;
    OME: no voxel size at all), where read_volume reads the plane's 0.5 µm."""
    rgb = np.zeros((40, 50, 3), np.uint8)
    path = tmp_path / ("rgb.ome.tif" if ome else "rgb.tif")
    if ome:
        tifffile.imwrite(path, rgb, ome=True, photometric="rgb",
                         metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    else:
        tifffile.imwrite(path, rgb, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"}, photometric="rgb")
    assert io.read_voxel_size(path) == io.read_volume(path, channel=0).voxel_size == (0.5, 0.5, 0.5)


def test_a_tifffile_and_zarr_pair_that_do_not_fit_is_named_not_called_a_corrupt_file(tmp_path, monkeypatch):
    """zarr 3.1.6 with tifffile <= 2025.5.10 fails on every TIFF with a TypeError, which read
    as 'is truncated or corrupt': staff went looking for damaged acquisitions."""
    from selfres.errors import ConfigError

    p = tmp_path / "a.tif"
    tifffile.imwrite(p, _vol(), imagej=True, metadata={"axes": "ZYX"})

    def mismatch(store, mode="r"):
        raise TypeError("Unsupported type for store_like: 'ZarrTiffStore'")

    monkeypatch.setattr(io.zarr, "open_array", mismatch)
    with pytest.raises(ConfigError, match=r"tifffile .* and zarr .* do not work together, so no TIFF can be read"):
        io.read_volume(p, lazy=True)


def test_an_acquisition_store_with_absent_chunks_says_so(tmp_path, caplog):
    """A Zarr acquisition still being copied (rsync writes .zarray first) was read with zeros
    where chunks were missing, without a word; the normalisation shifted with them."""
    arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(8, 16, 16), chunks=(4, 8, 8), dtype="u2",
                          zarr_format=2)
    arr[:] = 1 + np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16)
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.warn_absent_chunks(tmp_path / "a.zarr")
    assert "chunks are absent" not in caplog.text
    (tmp_path / "a.zarr" / "1.1.1").unlink()
    with caplog.at_level("WARNING", logger="selfres.io"):
        io.warn_absent_chunks(tmp_path / "a.zarr")
    assert "a.zarr: 1 of its 8 chunks are absent and read as the fill value (0): a copy that has not finished" \
        in caplog.text
    from selfres import pipeline

    caplog.clear()
    io._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="selfres.io"):  # normalise says it, with the acquisition's name
        pipeline.stage_normalise(tmp_path / "a.zarr", tmp_path / "n.ome.zarr", sample="s")
    assert "chunks are absent" in caplog.text


def test_a_file_behind_a_folder_closed_to_this_account_is_not_called_missing(tmp_path):
    """The run started by warning that such an acquisition 'does not exist' (os.path.exists
    is False for it too), while its job then said the truth: permission denied."""
    import shutil
    import subprocess
    import sys

    from selfres.formats import denied_path

    closed = tmp_path / "microscope"
    closed.mkdir()
    tifffile.imwrite(closed / "a.tif", np.ones((3, 8, 8), "uint16"))
    assert denied_path(closed / "a.tif") is None and denied_path(tmp_path / "missing.tif") is None
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as an account the folder is closed to")
    os.chown(closed, 65534, 65534)  # another account's folder, open to it alone
    closed.chmod(0o700)
    try:  # root without the capabilities that pass by file permissions: an ordinary account
        probe = subprocess.run(
            ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", sys.executable, "-c",
             f"from selfres.formats import denied_path; print(denied_path({str(closed / 'a.tif')!r}))"],
            capture_output=True, text=True, timeout=120)
    finally:
        closed.chmod(0o755)
        os.chown(closed, 0, 0)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("cannot be reached by this account (permission denied"), probe.stdout


def test_store_attributes_are_read_from_its_json_and_an_output_that_cannot_be_dated_says_so(tmp_path, monkeypatch):
    import os

    from selfres.provenance import date_before, store_attrs

    (tmp_path / "odd.ome.zarr").mkdir()
    (tmp_path / "odd.ome.zarr" / ".zattrs").write_text("[1, 2]")  # JSON, but not an object
    assert store_attrs(tmp_path / "odd.ome.zarr") == {}
    (tmp_path / "v3.ome.zarr").mkdir()
    (tmp_path / "v3.ome.zarr" / "zarr.json").write_text('{"attributes": {"selfres": {"sample": "a"}}}')
    assert store_attrs(tmp_path / "v3.ome.zarr") == {"sample": "a"}

    def refused(*args, **kwargs):  # another account's results folder
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "utime", refused)
    assert date_before(tmp_path / "v3.ome.zarr", 10**18) is False  # the run goes on and says what to do


@pytest.mark.parametrize("channel, expected", [(3, "FFFFFF"), (7, "FF0000")])
def test_a_channel_of_many_without_colours_takes_fijis_composite_colour_for_it(tmp_path, channel, expected):
    """Fiji shows a composite's channels without colours red, green, blue, grey, cyan, magenta,
    yellow, then red again: channel 3 of a plain OME-TIFF is grey, channel 7 of eight (past the
    seven colours) red; normalising channel 7 of eight crashed or took the wrong one."""
    from selfres import pipeline

    assert io.COMPOSITE_COLORS == ("FF0000", "00FF00", "0000FF", "FFFFFF", "00FFFF", "FF00FF", "FFFF00")
    data = (np.random.default_rng(0).random((6, 8, 32, 32)) * 1000).astype(np.uint16)  # ZCYX, no colours
    tifffile.imwrite(tmp_path / "eight.ome.tif", data, ome=True, metadata={"axes": "ZCYX"})
    out = tmp_path / f"c{channel}.ome.zarr"
    pipeline.stage_normalise(tmp_path / "eight.ome.tif", out, sample="s", channel=channel)
    assert zarr.open_group(str(out), mode="r").attrs["omero"]["channels"][0]["color"] == expected


def _omero_store(path, channels):
    """A multichannel OME-Zarr (CZYX) whose ``omero`` lists ``channels``, as another tool writes it."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("0", data=np.zeros((len(channels), 3, 8, 9), np.uint16))
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}]}]}]
    g.attrs["omero"] = {"channels": channels}
    return path


def test_each_channel_of_a_multichannel_ome_zarr_gets_its_own_name_and_colour(tmp_path):
    """Only the first ``omero`` channel was read: channel 1 of a DAPI/GFP store came out unnamed
    and grey."""
    store = _omero_store(tmp_path / "c.zarr", [{"label": "DAPI", "color": "0000FF"},
                                               {"label": "GFP", "color": "00FF00"}])
    assert [io.channel_name(store, c) for c in (0, 1)] == ["DAPI", "GFP"]
    assert [io.channel_color(store, c) for c in (0, 1)] == ["0000FF", "00FF00"]


def test_channel_colours_are_read_however_spelt_and_too_dark_or_transparent_ones_are_none(tmp_path):
    """``omero`` colours written "#ff0000" or lower case by other tools were dropped (grey);
    an OME colour darker than 0x40 in every component (0x303030) draws the channel near invisible
    and is none, 0x404040 is kept; opaque-looking red with alpha 0 is transparent, none."""
    store = _omero_store(tmp_path / "c.zarr", [{"label": "a", "color": "#ff0000"}, {"label": "b", "color": "00ff00"},
                                                {"label": "c", "color": "303030"}, {"label": "d", "color": "404040"}])
    assert [io.channel_color(store, c) for c in range(4)] == ["FF0000", "00FF00", None, "404040"]
    ome = tmp_path / "dark.ome.tif"
    tifffile.imwrite(ome, np.zeros((3, 3, 16, 16), np.uint16), ome=True, metadata={
        "axes": "ZCYX", "Channel": {"Color": [0x303030FF, 0x404040FF, 0xFF000000 - (1 << 32)]}})
    assert [io.channel_color(ome, c) for c in range(3)] == [None, "404040", None]
    assert io._ome_rgb(0xFF000000 - (1 << 32)) is None and io._ome_rgb(0xFF0000FF - (1 << 32)) == "FF0000"


def test_a_composite_whose_channel_0_fell_back_names_the_channel_not_the_image(tmp_path):
    """A composite's image is all its channels: only channel 0 held tricubic, yet the whole image
    was named "cells [tricubic]", as if every channel were interpolation."""
    stores = []
    for c, attrs in enumerate(({"content": "interpolation", "layer_note": "tricubic"}, {"content": "model"})):
        store = tmp_path / "results" / f"cells_c{c}" / "restored.ome.zarr"
        io.write_ome_zarr(store, np.ones((4, 16, 16), np.float32), voxel_size=(0.5, 0.125, 0.125), attrs=attrs)
        stores.append(store)
    io.write_ome_tiff(tmp_path / "cells.ome.tif", stores)
    with tifffile.TiffFile(tmp_path / "cells.ome.tif") as tif:
        assert 'Image ID="Image:0" Name="cells"' in tif.ome_metadata
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == ["cells_c0 [tricubic]", "cells_c1"]


def test_a_store_that_records_no_source_is_not_made_from_any_acquisition(tmp_path):
    """A store without ``source`` / ``source_resolved`` (written by other code, or before they were
    recorded) says nothing of its acquisition: it must not count as made from the file the sheet
    names (the workflow would keep an archived sample done on it)."""
    from selfres import io

    store = tmp_path / "bare.ome.zarr"
    io.write_ome_zarr(store, np.zeros((4, 16, 16), np.float32), voxel_size=(1.0, 0.5, 0.5))
    assert not io.made_from(store, str(tmp_path / "a.tif"))


# ------------------------------------------------- gaps found by a mutation review of io and atomic ---


def _ome_zarr_of(path, data, axes, scale=None):
    """An NGFF 0.4 image of ``data`` with the given ``axes`` (another writer's, or a hand-made one)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("0", data=data, chunk_key_encoding={"name": "v2", "separator": "/"})
    transforms = [{"type": "scale", "scale": scale or [1.0] * data.ndim}]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                               "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]
    return path


def test_a_two_plane_ome_tiff_without_a_z_step_has_no_voxel_size_and_a_zero_one_is_named(tmp_path, caplog):
    """Only a single plane takes its y size for z: a 2-plane stack without PhysicalSizeZ is not
    given one, and a PhysicalSizeZ of 0 is named as such, not called missing."""
    p = tmp_path / "two.ome.tif"
    tifffile.imwrite(p, _vol(shape=(2, 16, 16)), metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    assert io.read_volume(p).voxel_size is None and io.read_voxel_size(p) is None
    q = tmp_path / "zero.ome.tif"
    tifffile.imwrite(q, _vol(shape=(2, 16, 16)), metadata={"axes": "ZYX", "PhysicalSizeZ": 0, "PhysicalSizeX": 0.5,
                                                          "PhysicalSizeY": 0.5})
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(q).voxel_size is None
    assert "PhysicalSizeZ is 0, not a voxel size" in caplog.text, caplog.text


def test_a_single_plane_ome_zarr_with_a_zero_z_scale_never_gets_a_zero_voxel_size(tmp_path):
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    p = _ome_zarr_of(tmp_path / "plane.ome.zarr", _vol(shape=(1, 12, 14), dtype="float32"), axes, [0.0, 0.5, 0.5])
    vox = io.read_volume(p).voxel_size
    assert vox == (0.5, 0.5, 0.5), vox  # an unusable z step of a plane: y's stands in, as in an OME-TIFF


def test_a_single_planes_usable_z_step_survives_a_write_and_read_back(tmp_path):
    """A plane of a z stack (2 µm steps) normalised, then read back by every later stage: its z step
    stays 2 (a review: ignoring every single-plane z scale made the output, the report and the methods
    text say 0.5 × 0.5 × 0.5)."""
    io.write_ome_zarr(tmp_path / "plane.ome.zarr", _vol(shape=(1, 12, 14), dtype="float32"),
                      voxel_size=(2.0, 0.5, 0.5))
    assert io.read_volume(tmp_path / "plane.ome.zarr").voxel_size == (2.0, 0.5, 0.5)


def test_repeated_ome_zarr_axes_are_refused_by_name_not_a_traceback(tmp_path):
    axes = [{"name": a, "type": "space"} for a in "zzyx"]
    p = _ome_zarr_of(tmp_path / "zz.ome.zarr", _vol(shape=(2, 3, 12, 14), dtype="float32"), axes)
    with pytest.raises(InputError, match="repeated axis names 'ZZYX'"):
        io.read_volume(p)


@pytest.mark.parametrize("kind", ["ome-zarr", "plain-zarr"])
def test_a_time_axis_named_time_is_read_as_time_points(tmp_path, kind):
    """NGFF names a time axis by its type ({"name": "time", "type": "time"}); xarray's plain Zarr
    arrays call it "time" in _ARRAY_DIMENSIONS."""
    data = _vol(shape=(2, 3, 12, 14), dtype="float32")
    p = tmp_path / f"lapse.{kind}.zarr"
    if kind == "ome-zarr":
        _ome_zarr_of(p, data, [{"name": "time", "type": "time"}] + [{"name": a, "type": "space"} for a in "zyx"])
    else:
        arr = zarr.create_array(str(p), shape=data.shape, dtype=data.dtype, zarr_format=2)
        arr[...] = data
        arr.attrs["_ARRAY_DIMENSIONS"] = ["time", "z", "y", "x"]
    assert io.timepoint_count(p) == 2
    np.testing.assert_array_equal(io.read_volume(p, timepoint=1).data, data[1])


def test_a_unitless_ome_zarr_with_a_z_step_of_one_is_still_read_in_micrometres(tmp_path):
    """Only all spatial steps 1 mean pixel steps: a z step of 1 beside a 0.5 pixel is 1 µm."""
    p = _ome_zarr_with(tmp_path / "img.ome.zarr", axes=[{"name": a, "type": "space"} for a in "zyx"],
                       dataset_transforms=[{"type": "scale", "scale": [1.0, 0.5, 0.5]}])
    assert io.read_volume(p).voxel_size == pytest.approx((1.0, 0.5, 0.5))


@pytest.mark.parametrize("scale, said", [([2.0, 0.5, -0.5], "the scale of axis x is -0.5, not a voxel size"),
                                         ([2.0, 1e12, 0.5], "the scale of axis y is 1e\\+12 micrometer")])
def test_an_ome_zarr_pixel_scale_that_is_not_a_voxel_size_is_named(tmp_path, caplog, scale, said):
    p = _ome_zarr_with(tmp_path / "img.ome.zarr", dataset_transforms=[{"type": "scale", "scale": scale}])
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(p).voxel_size is None
    assert re.search(said, caplog.text), caplog.text


def test_a_tiff_one_byte_short_of_its_data_is_said_to_be_truncated(tmp_path):
    p = tmp_path / "short.tif"
    tifffile.imwrite(p, _vol(shape=(6, 16, 16), dtype="uint16"), volumetric=True, tile=(16, 16))
    raw = p.read_bytes()
    p.write_bytes(raw[:-1])
    with pytest.raises(InputError, match=f"is truncated: its data should end at byte {len(raw)} but the file has "
                                         f"{len(raw) - 1} bytes"):
        io.read_volume(p)


def test_read_voxel_size_of_a_planar_rgb_plane_agrees_with_read_volume(tmp_path):
    """Axes SYX (planar RGB) are one plane, as YXS: its three samples are not z planes."""
    p = tmp_path / "planar.tif"
    tifffile.imwrite(p, np.zeros((3, 40, 50), np.uint8), photometric="rgb", planarconfig="separate",
                     resolution=(2.0, 2.0), resolutionunit="MICROMETER")
    assert tifffile.TiffFile(p).series[0].axes == "SYX"
    assert io.read_voxel_size(p) == io.read_volume(p, channel=0).voxel_size == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("dtype, lo, hi", [("float32", None, None), ("int16", -32768, 32767)])
def test_the_display_window_of_a_constant_image_is_not_empty_and_an_integer_ones_range_is_its_types(tmp_path, dtype,
                                                                                                    lo, hi):
    p = tmp_path / "c.ome.zarr"
    io.write_ome_zarr(p, np.full((2, 16, 16), 7, dtype), voxel_size=(1, 1, 1))
    win = zarr.open_group(str(p), mode="r").attrs["omero"]["channels"][0]["window"]
    assert win["end"] > win["start"], win
    if lo is not None:
        assert (win["min"], win["max"]) == (lo, hi)


def test_an_image_without_a_voxel_size_is_written_without_a_unit(tmp_path):
    """NGFF scales without a unit are voxel steps; "micrometer" would claim 1 µm voxels."""
    p = tmp_path / "u.ome.zarr"
    io.write_ome_zarr(p, _vol(shape=(2, 128, 128)), voxel_size=None)
    axes = zarr.open_group(str(p), mode="r").attrs["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes), axes
    assert io.read_volume(p).voxel_size is None


def test_finalising_again_rebuilds_the_pyramid_and_names_the_image_after_its_final_path(tmp_path):
    p = tmp_path / "restored.ome.zarr"
    with io.atomic_output(p) as tmp:
        arr = io.create_ome_zarr(tmp, shape=(2, 256, 256), dtype="float32", voxel_size=(1, 1, 1), chunks=None)
        arr[...] = 1.0
        io.finalize_ome_zarr(tmp, voxel_size=(1, 1, 1))
        io.finalize_ome_zarr(tmp, voxel_size=(1, 1, 1))  # re-finalising (a rerun of a gather)
        io.finalize_ome_zarr(tmp, voxel_size=(1, 1, 1), max_levels=2)
    g = zarr.open_group(str(p), mode="r")
    assert sorted(g.array_keys()) == ["0", "1"], "the previous pyramid's level 2 is gone"
    assert g.attrs["multiscales"][0]["name"] == "restored"
    assert g.attrs["omero"]["channels"][0]["label"] == "restored"


def test_ome_tiff_export_gives_each_axis_its_own_resolution_tag(tmp_path):
    io.write_ome_zarr(tmp_path / "r.ome.zarr", _vol(shape=(3, 16, 20)), voxel_size=(1.0, 0.25, 0.125))
    out = io.write_ome_tiff(tmp_path / "r.ome.tif", tmp_path / "r.ome.zarr")
    with tifffile.TiffFile(out) as tif:
        tags = tif.pages[0].tags
        assert tags["XResolution"].value == (80000, 1) and tags["YResolution"].value == (40000, 1)


def test_ome_tiff_export_of_a_store_chunked_plane_by_plane_one_plane_at_a_time(tmp_path, monkeypatch):
    data = _vol(shape=(3, 16, 20))
    io.write_ome_zarr(tmp_path / "r.ome.zarr", data, voxel_size=(1.0, 0.5, 0.5), chunks=(1, 16, 20))
    monkeypatch.setattr(io, "_TIFF_SLAB_BYTES", 16 * 20 * 2)
    out = io.write_ome_tiff(tmp_path / "r.ome.tif", tmp_path / "r.ome.zarr")
    np.testing.assert_array_equal(tifffile.imread(out), data)


def test_a_stores_checksum_depends_on_its_file_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, name in ((a, "0.0.0"), (b, "0.0.1")):
        d.mkdir()
        (d / name).write_bytes(b"same")
    assert io.file_checksum(a) != io.file_checksum(b)


def test_an_interrupted_atomic_output_leaves_nothing(tmp_path):
    p = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt), io.atomic_output(p) as tmp:
        tmp.mkdir()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_failed_small_text_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import pathlib

    p = tmp_path / "metrics.json"
    io.write_text_atomic(p, "old")
    real = pathlib.Path.write_text

    def half(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    with pytest.raises(OSError, match="No space"):
        io.write_text_atomic(p, "a new and longer text")
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["metrics.json"]


def test_an_output_in_a_folder_of_its_input_is_said_to_hold_it(tmp_path):
    from selfres.atomic import check_outputs_spare_inputs
    from selfres.errors import ConfigError

    with pytest.raises(ConfigError, match=r"-o/--output .*data is a folder holding the input .*a\.tif"):
        check_outputs_spare_inputs({"-o/--output": tmp_path / "data"}, [tmp_path / "data" / "a.tif"])
    with pytest.raises(ConfigError, match=r"-o/--output .*a\.tif is the input "):
        check_outputs_spare_inputs({"-o/--output": tmp_path / "a.tif"}, [tmp_path / "a.tif"])


def test_an_output_lock_removed_by_its_finishing_holder_is_taken_anew(tmp_path, monkeypatch):
    """A holder that ends between this writer's open and its lock removes the file: a lock on
    the removed file guards nothing (a third writer would create and lock a new one)."""
    from pathlib import Path

    from selfres import atomic

    out = tmp_path / "out.ome.zarr"
    lock = tmp_path / ".out.ome.zarr.lock"
    real_open, calls = os.open, []

    def racing_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if Path(path) == lock and not calls:
            calls.append(path)
            os.unlink(path)  # the previous holder finished just now
        return fd

    monkeypatch.setattr(atomic.os, "open", racing_open)
    with atomic.output_lock(out):
        assert lock.exists(), "held on a file that others can see"
        assert os.stat(lock).st_ino == os.fstat(atomic._HELD[lock.resolve()][0]).st_ino


def test_tiff_resolution_in_inches_is_a_pixel_size_at_a_microscopes_density_and_a_screen_default_is_said(
        tmp_path, caplog):
    """A geometry audit: a 2-D image at 127 000 pixels per inch (0.2 µm pixels) was read with no voxel size and
    no word, while the same image in pixels per cm read 0.2 µm; 72 per inch (a screen default) is no pixel size,
    and now says so."""
    image = (np.arange(64 * 64).reshape(64, 64) % 1000).astype(np.uint16)
    fine, screen, plane = tmp_path / "fine.tif", tmp_path / "screen.tif", tmp_path / "stack.tif"
    tifffile.imwrite(fine, image, resolution=(127000, 127000), resolutionunit="INCH")
    tifffile.imwrite(screen, image, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(plane, np.stack([image] * 5), resolution=(254000, 127000), resolutionunit="INCH")
    assert io.read_volume(fine).voxel_size == pytest.approx((0.2, 0.2, 0.2))  # a plane's z: its y's stand-in
    with caplog.at_level("WARNING", logger="selfres.io"):
        assert io.read_volume(screen).voxel_size is None
        assert io.read_volume(plane).voxel_size is None  # pixels in inches, but no z step for its 5 planes
    assert re.search(r"screen\.tif: its TIFF resolution tags give 72, 72 pixels per inch \(y, x\), a screen or print "
                     r"setting rather than a microscope's pixel", caplog.text)
    assert re.search(r"stack\.tif: its TIFF resolution tags give the pixel size \(y, x: 0\.2, 0\.1 µm\) but no z step",
                     caplog.text)
