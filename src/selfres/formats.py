"""Image formats selfres does not read, told apart so that the user learns what to do.

selfres reads TIFF/OME-TIFF files and Zarr/OME-Zarr stores (:mod:`selfres.io`). A
facility's acquisitions often come as a microscope vendor's file (Zeiss CZI, Nikon ND2,
Leica LIF, Imaris, Olympus OIB/OIR …); rather than "unrecognised header", such a file gets
its name and the Bio-Formats command that converts it, with its voxel size, channels and
time points. Light on purpose (no numpy, dask or zarr): the workflow checks every sample's
acquisition with it when a run starts.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

_READS = "selfres reads TIFF/OME-TIFF files and Zarr/OME-Zarr stores"

#: What to do with a microscope vendor's file: Bio-Formats reads them all. ``{src}``,
#: ``{tif}`` and ``{zarr}`` become the file's own names, quoted for the shell.
CONVERT_ADVICE = (f"{_READS}: convert it with Bio-Formats, keeping its voxel size, channels and time "
                  "points — `bfconvert -bigtiff {src} {tif}` or `bioformats2raw {src} {zarr}`, "
                  "or in Fiji File › Import › Bio-Formats, then File › Save As › OME-TIFF — and give selfres "
                  "the converted file instead (in an inbox, a conversion beside it takes its place)")

#: ... and with an N5 container or a BigDataViewer dataset, which Bio-Formats does not read.
FIJI_EXPORT_ADVICE = (f"{_READS}: open it in Fiji (File › Import › HDF5/N5/Zarr/OME-NGFF …, or BigDataViewer "
                      "for its .xml), save it with File › Save As › OME-TIFF, and give selfres that file "
                      "instead")

_VENDOR = CONVERT_ADVICE
_FIJI = FIJI_EXPORT_ADVICE

#: Leading bytes of image formats selfres does not read: what a user would call each, and what to do.
_MAGIC = (
    (b"ZISRAWFILE", "a Zeiss CZI file", _VENDOR),
    (b"\xda\xce\xbe\x0a", "a Nikon ND2 file", _VENDOR),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE container (Olympus OIB, Zeiss ZVI …)", _VENDOR),
    (b"OLYMPUSRAWFORMAT", "an Olympus OIR file", _VENDOR),
    (b"\x89PNG", "a PNG image", _VENDOR),
    (b"\xff\xd8\xff", "a JPEG image", _VENDOR),
    (b"NRRD", "an NRRD file", _VENDOR),
)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_JP2_MAGIC = b"\x00\x00\x00\x0cjP  "  # a JPEG 2000 file's signature box; a legacy ND2 is one too
#: A TIFF's first four bytes (little / big endian; classic TIFF, BigTIFF).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HEAD_BYTES = 16

#: Microscope vendors' file name endings (an inbox id drops them, as it drops ``.tif``).
_VENDOR_FILES = {
    ".czi": "a Zeiss CZI file", ".nd2": "a Nikon ND2 file", ".lif": "a Leica LIF file",
    ".lof": "a Leica LOF file", ".xlef": "a Leica LAS X project", ".ims": "an Imaris file",
    ".oib": "an Olympus OIB file", ".oir": "an Olympus OIR file", ".vsi": "an Olympus VSI file",
    ".sld": "a SlideBook file", ".dv": "a DeltaVision file", ".r3d": "a DeltaVision file",
}
VENDOR_SUFFIXES = tuple(sorted(_VENDOR_FILES))

#: The formats by file name, for those without a distinctive header.
_SUFFIX = {k: (name, _VENDOR) for k, name in _VENDOR_FILES.items()} | {
    ".ics": ("an ICS file", _VENDOR), ".ids": ("an ICS data file", _VENDOR), ".mrc": ("an MRC file", _VENDOR),
    ".png": ("a PNG image", _VENDOR), ".jpg": ("a JPEG image", _VENDOR), ".jpeg": ("a JPEG image", _VENDOR),
    ".h5": ("an HDF5 file", _FIJI), ".hdf5": ("an HDF5 file", _FIJI), ".n5": ("an N5 container", _FIJI),
    ".xml": ("an XML file (a BigDataViewer dataset?)", _FIJI), ".klb": ("a KLB file", _FIJI),
}


def other_image_format(path: str | os.PathLike, head: bytes = b"") -> tuple[str, str] | None:
    """``(what it is, what to do)`` when ``path`` is an image format selfres does not read (a
    microscope vendor's, say); ``None`` when neither its first bytes (``head``) nor its name
    tell. A TIFF-based format (Zeiss LSM, most OME-TIFF writers) is a TIFF: not one of these."""
    suffix = Path(path).suffix.lower()
    for magic, name, advice in _MAGIC:
        if head.startswith(magic):
            return name, advice
    if head.startswith(_JP2_MAGIC):  # a legacy ND2 is a JP2 container: its name tells it from a .jp2
        return ("a Nikon ND2 (JPEG 2000) file" if suffix == ".nd2" else "a JPEG 2000 image"), _VENDOR
    if head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a":  # Leica LIF: 0x70, a size, 0x2A
        return "a Leica LIF file", _VENDOR
    if head.startswith(_HDF5_MAGIC):  # Bio-Formats reads Imaris' HDF5, not BigDataViewer's
        return ("an Imaris file", _VENDOR) if suffix == ".ims" else ("an HDF5 file", _FIJI)
    return _SUFFIX.get(suffix)


def unread_format(path: str | os.PathLike) -> str | None:
    """The message for an existing file or folder that is an image format selfres does not
    read — ``"is a Zeiss CZI file, which selfres does not read; … `bfconvert -bigtiff …`"``,
    the command with this file's names — or ``None`` (a TIFF, a Zarr store, a folder or file
    of no format known here; :mod:`selfres.io` says what is wrong with those)."""
    p = Path(path)
    if p.is_dir():
        if (p / "attributes.json").is_file() or p.suffix.lower() == ".n5":
            return f"is an N5 container, which selfres does not read; {FIJI_EXPORT_ADVICE}"
        return tiff_folder_problem(p)
    try:
        with open(p, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    if head[:4] in TIFF_MAGIC:  # a TIFF (Zeiss LSM too), whatever its name
        return None
    found = other_image_format(p, head)
    if found is None:
        return None
    name, advice = found
    stem = str(p.with_suffix(""))
    advice = advice.format(src=shlex.quote(str(p)), tif=shlex.quote(f"{stem}.ome.tif"),
                           zarr=shlex.quote(f"{stem}.ome.zarr"))
    return f"is {name}, which selfres does not read; {advice}"


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a Zarr v2 or v3 store's root metadata."""
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zarray"))


def tiff_folder_problem(folder: Path) -> str | None:
    """The message for a folder of TIFF files given where one acquisition is expected (many
    microscopes write one TIFF per plane), or ``None`` when it holds none or is a Zarr store."""
    if is_zarr_store(folder):
        return None
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.name.lower().endswith((".tif", ".tiff")) and not e.name.startswith("."))
    except OSError:
        return None
    if not names:
        return None
    if len(names) == 1:
        return f"is a folder, not an image; it holds one TIFF file, {names[0]}: give selfres that file"
    return (f"is a folder of {len(names)} TIFF files ({names[0]} … {names[-1]}), not one image; {_READS}, "
            "one per sample. The planes of one stack: open them in Fiji with File › Import › Image Sequence, "
            "set the voxel size (Image › Properties), save with File › Save As › OME-TIFF and give selfres that "
            "file. Separate acquisitions: one sheet row each, or an inbox glob such as "
            f"{shlex.quote(str(folder / '*.tif'))} (config inbox)")


def _unicode_form_hint(path: str) -> str:
    import unicodedata

    folder, name = os.path.split(path)
    if name.isascii():
        return ""
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return ""
    wanted = unicodedata.normalize("NFC", name)
    same = [e for e in entries if e != name and unicodedata.normalize("NFC", e) == wanted]
    if not same:
        return ""
    form = ("as separate marks (NFD, as macOS writes names)" if same[0] == unicodedata.normalize("NFD", name)
            else "in another Unicode form")
    return (f"; its folder holds {same[0]!r}, the same name with its accents written {form}: they look alike but "
            "are different names to the file system. Rename the file (or retype the name in the sheet by copying "
            "it from the file listing)")


def denied_path(path: str | os.PathLike) -> str | None:
    """Why a path this account cannot see is not missing: a folder on its way is closed to this
    account (``os.path.exists`` says False for it too, and the run started by warning that the
    file "does not exist"); ``None`` when the path is missing, or there."""
    try:
        os.stat(path)
    except PermissionError:
        return ("cannot be reached by this account (permission denied on a folder of its path); give the account "
                "that runs selfres read access to it and its folders")
    except OSError:
        return None
    return None


def missing_path_hint(path: str | os.PathLike) -> str:
    """What a path that does not exist may be instead, for its error: ``""``, or ``"; …"``
    when it has the backslashes of a Windows path (a sheet written on a PC), or when a file of
    its folder has the same name with its accents encoded the other way (macOS writes ``ü`` as
    ``u`` + a combining mark, NFD; a sheet typed elsewhere has one character, NFC: both look
    alike, and ``ls`` shows the very name said not to exist)."""
    text = os.fspath(path)
    if "\\" not in text:
        return _unicode_form_hint(text)
    return ("; it holds a backslash (\\), as a Windows path does: on this machine folders are separated by /, "
            "and the path must be where this machine sees the file (e.g. /mnt/share/run1/a.tif, not "
            "C:\\data\\run1\\a.tif)")
