"""Gaps a mutation review of :mod:`selfres.formats` found: an image format selfres does not read
is named as what it is, with the advice that converts it, and what selfres does read (a
BigTIFF, a TIFF with a vendor's name, a Zarr store) is not refused as one of them."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import tifffile

from selfres import formats, io
from selfres.formats import other_image_format, tiff_folder_problem, unread_format

VENDOR = formats.CONVERT_ADVICE
FIJI = formats.FIJI_EXPORT_ADVICE


@pytest.mark.parametrize("name, head, what, advice", [
    ("a.bin", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE container (Olympus OIB, Zeiss ZVI …)", VENDOR),
    ("a.bin", b"OLYMPUSRAWFORMAT", "an Olympus OIR file", VENDOR),  # all 16 bytes of its mark
    ("a.bin", b"\x89PNG\r\n\x1a\n", "a PNG image", VENDOR),
    ("a.bin", b"\xff\xd8\xff\xe0", "a JPEG image", VENDOR),
    ("a.bin", b"NRRD0004", "an NRRD file", VENDOR),
    ("a.nd2", b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a Nikon ND2 (JPEG 2000) file", VENDOR),
])
def test_each_header_is_named_with_its_advice(name, head, what, advice):
    """The bytes decide, whatever the name: a renamed file is still named (a mutation review:
    reading fewer than 16 bytes lost the Olympus OIR mark, which no test saw)."""
    assert other_image_format(name, head + bytes(16)) == (what, advice)


@pytest.mark.parametrize("name, what, advice", [
    ("a.lif", "a Leica LIF file", VENDOR), ("a.lof", "a Leica LOF file", VENDOR), ("a.ims", "an Imaris file", VENDOR),
    ("a.ics", "an ICS file", VENDOR), ("a.mrc", "an MRC file", VENDOR), ("a.h5", "an HDF5 file", FIJI),
    ("a.n5", "an N5 container", FIJI), ("a.klb", "a KLB file", FIJI),
    ("dataset.xml", "an XML file (a BigDataViewer dataset?)", FIJI),
    ("SCAN.CZI", "a Zeiss CZI file", VENDOR), ("Scan.Nd2", "a Nikon ND2 file", VENDOR),
])
def test_without_a_known_header_the_name_tells_and_its_case_does_not_matter(name, what, advice):
    """Windows tools write ``SCAN.CZI``; a BigDataViewer ``.xml`` gets Fiji's advice, not a
    Bio-Formats command that does not read it (a mutation review)."""
    assert other_image_format(name, b"\x01\x02\x03\x04 no mark known") == (what, advice)


def test_a_leica_lif_is_told_by_its_0x2a_not_its_first_byte_alone():
    """0x70 0 0 0 then anything also starts files that are no LIF (a mutation review: dropping
    the 0x2A check failed no test)."""
    assert other_image_format("a.raw", b"\x70\x00\x00\x00\x10\x00\x00\x00\x2a" + bytes(7))[0] == "a Leica LIF file"
    assert other_image_format("a.raw", b"\x70\x00\x00\x00\x10\x00\x00\x00\x00" + bytes(7)) is None


def test_the_conversion_commands_name_this_files_outputs(tmp_path):
    """Both commands are pasted as given: ``scan 1.ome.tif`` and ``scan 1.ome.zarr`` beside the
    file, quoted for the shell (only the bfconvert one was checked)."""
    path = tmp_path / "scan 1.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(32))
    message = unread_format(path)
    stem = str(tmp_path / "scan 1")
    assert message.startswith("is a Zeiss CZI file, which selfres does not read; ")
    assert f"`bioformats2raw {shlex.quote(str(path))} {shlex.quote(stem + '.ome.zarr')}`" in message, message


def test_a_tiff_with_a_vendors_name_is_no_unread_format(tmp_path):
    """An inbox pairs ``scan7.czi`` with its conversion by asking which one selfres reads:
    a TIFF is read whatever its name (Zeiss LSM is a TIFF), so it is not refused as a CZI."""
    path = tmp_path / "exported.czi"
    tifffile.imwrite(path, np.ones((3, 8, 8), "uint16"))
    assert unread_format(path) is None


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_a_bigtiff_is_read(tmp_path, byteorder):
    """``bfconvert -bigtiff``, the very command selfres advises, writes a BigTIFF: it must be
    read, not refused as an unrecognised header (a mutation review: no test read one)."""
    path = tmp_path / "converted.ome.tif"
    tifffile.imwrite(path, np.arange(3 * 8 * 8, dtype="uint16").reshape(3, 8, 8), bigtiff=True, byteorder=byteorder,
                     metadata={"axes": "ZYX"})
    assert io.read_volume(path).shape == (3, 8, 8)


def test_an_n5_container_is_named_by_its_attributes_or_its_name(tmp_path):
    """An N5 root holds ``attributes.json`` whatever the folder is called; a ``.n5`` folder is
    one too (the test named only a folder that had both)."""
    bare = tmp_path / "tiles"
    bare.mkdir()
    (bare / "attributes.json").write_text('{"n5": "2.2.0"}')
    named = tmp_path / "other.n5"
    named.mkdir()
    for folder in (bare, named):
        assert unread_format(folder).startswith("is an N5 container, which selfres does not read; "), folder


def test_a_folder_of_tiff_planes_counts_tiff_and_not_macos_shadow_files(tmp_path):
    """``.tiff`` planes count; macOS's ``._name.tif`` AppleDouble files (left on a shared drive)
    are not planes."""
    folder = tmp_path / "scan"
    folder.mkdir()
    for z in range(2):
        tifffile.imwrite(folder / f"z{z}.TIFF", np.ones((8, 8), "uint16"))
        (folder / f"._z{z}.TIFF").write_bytes(b"\x00\x05\x16\x07")
    assert tiff_folder_problem(folder).startswith("is a folder of 2 TIFF files (z0.TIFF … z1.TIFF), not one image")


def test_a_zarr_store_holding_a_tiff_is_no_folder_of_planes(tmp_path):
    store = tmp_path / "a.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    tifffile.imwrite(store / "thumbnail.tif", np.ones((8, 8), "uint16"))
    assert tiff_folder_problem(store) is None


def test_a_renamed_olympus_oir_is_told_by_its_whole_16_byte_mark(tmp_path):
    """``OLYMPUSRAWFORMAT`` is 16 bytes: the file's head must be read that far, or a renamed OIR
    is "unrecognised" (a mutation review: reading 12 bytes failed no test)."""
    path = tmp_path / "export.raw"
    path.write_bytes(b"OLYMPUSRAWFORMAT" + bytes(64))
    assert unread_format(path).startswith("is an Olympus OIR file, which selfres does not read; ")


@pytest.mark.parametrize("name, what", [("photo.jp2", "a JPEG 2000 image"), ("a.j2k.bin", "a JPEG 2000 image"),
                                        ("legacy.nd2", "a Nikon ND2 (JPEG 2000) file"),
                                        ("LEGACY.ND2", "a Nikon ND2 (JPEG 2000) file")])
def test_a_jpeg_2000_file_is_a_nikon_nd2_only_by_its_name(name, what):
    """The JP2 signature box starts every JPEG 2000 file, not only a legacy Nikon ND2: a
    ``photo.jp2`` was called "a Nikon ND2 (JPEG 2000) file", a microscope it never came from."""
    found = other_image_format(name, b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(8))
    assert found == (what, VENDOR), found
