"""Gaps a mutation review of :mod:`selfres.modelfile` found: a model folder's description is
checked before its network is trusted (format, version, the metadata the stages read by, the
weights' checksum), a PSF record tells which PSF made the model, and a model copied for
another sample is this sample's description over the source's checked files. Torch-free: the
folders are written by hand, as an edited or damaged one would be."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from selfres.errors import InputError
from selfres.modelfile import (DESCRIPTION_FILE, FORMAT, WEIGHTS_FILE, check_file, copy_with_metadata,
                               metadata_problem, read_description, with_psf_record)

ENHANCE = {"mode": "enhance", "factors": [1, 2, 2], "flags": []}


def _folder(path: Path, *, weights: bytes = b"weights", **over) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    name = over.get("weights_file", WEIGHTS_FILE)
    (path / name).write_bytes(weights)
    info = {"format": FORMAT, "format_version": 1, "weights_file": name,
            "weights_sha256": hashlib.sha256(weights).hexdigest(), "metadata": dict(ENHANCE)} | over
    (path / DESCRIPTION_FILE).write_text(json.dumps(info))
    return path


def test_a_sound_folder_reads(tmp_path):
    info, weights = read_description(_folder(tmp_path / "m"))
    assert info["metadata"] == ENHANCE and weights == tmp_path / "m" / WEIGHTS_FILE


def test_a_description_without_a_weights_checksum_is_refused_not_loaded_unchecked(tmp_path):
    """Every model selfres writes records its weights' SHA-256: a description without one was
    edited, and loading its weights unchecked would trust a file nothing vouches for (a mutation
    review: reading the checksum with .get, which skips the check, failed no test)."""
    folder = _folder(tmp_path / "m")
    info = json.loads((folder / DESCRIPTION_FILE).read_text())
    del info["weights_sha256"]
    (folder / DESCRIPTION_FILE).write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"invalid model description \('weights_sha256'\)"):
        read_description(folder)


def test_an_empty_checksum_is_a_mismatch_not_an_unrecorded_one(tmp_path):
    """Only ``None`` (saved before checksums were recorded) skips the check; an empty string is
    a checksum that matches nothing."""
    path = tmp_path / "w.bin"
    path.write_bytes(b"data")
    check_file(path, None, what="weights file")
    check_file(path, hashlib.sha256(b"data").hexdigest(), what="weights file")
    with pytest.raises(InputError, match="checksum mismatch: the weights file is corrupt"):
        check_file(path, "", what="weights file")


def test_the_weights_file_the_description_names_is_the_one_checked(tmp_path):
    """``weights_file`` names the weights: a description naming another file than the default
    is checked (and loaded) by that file, not by a default-named one beside it."""
    folder = _folder(tmp_path / "m", weights_file="stage1.safetensors")
    (folder / WEIGHTS_FILE).write_bytes(b"another network")
    assert read_description(folder)[1] == folder / "stage1.safetensors"
    (folder / "stage1.safetensors").write_bytes(b"damaged")
    with pytest.raises(InputError, match="checksum mismatch"):
        read_description(folder)


def test_a_json_file_of_another_format_is_not_a_model_description(tmp_path):
    folder = _folder(tmp_path / "m", format="bioimage.io")
    with pytest.raises(InputError, match="not a selfres model description \\(expected format 'selfres-model'\\)"):
        read_description(folder)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0, 2])
def test_only_known_format_versions_are_read(tmp_path, version):
    """Version 0 (never written) and ``true`` (JSON's, which Python counts as 1) are edits, not
    a version this selfres wrote (a mutation review)."""
    with pytest.raises(InputError, match=r"format_version .*: this selfres reads model descriptions of version 1\.\.1"):
        read_description(_folder(tmp_path / "m", format_version=version))


@pytest.mark.parametrize("metadata, problem", [
    (ENHANCE | {"flags": ["ok", 3]}, 'flags must be a list of names, not ["ok", 3]'),
    (ENHANCE | {"factors": [True, 2, 2]}, "factors must be three integers >= 1, not [true, 2, 2]"),
    ({"mode": "isotropic", "factor": 1}, "axial factor must be a number > 1, not 1"),
    ({"mode": "isotropic", "factor": float("inf")}, "axial factor must be a number > 1, not Infinity"),
])
def test_metadata_the_stages_read_by_is_checked(metadata, problem):
    """A flag that is not a name, ``true`` as a factor, an axial factor of 1 (nothing to restore)
    or infinity: each would reach the stages as a model they cannot use (a mutation review)."""
    assert problem in (metadata_problem(metadata) or ""), metadata_problem(metadata)


@pytest.mark.parametrize("metadata", [ENHANCE, {"mode": "isotropic", "factor": 1.5}, {"flags": []}])
def test_sound_metadata_has_no_problem(metadata):
    assert metadata_problem(metadata) is None


def test_a_psf_is_recorded_only_for_a_model_trained_with_it(tmp_path):
    """A ``psf_path`` left in the settings of a model trained with another degradation did not
    make it: recording it would name a PSF the model never saw (a mutation review)."""
    psf = tmp_path / "psf.tif"
    psf.write_bytes(b"psf bytes")
    settings = {"degradation": {"method": "gaussian", "psf_path": str(psf)}}
    assert "psf" not in with_psf_record({"settings": settings})
    recorded = with_psf_record({"settings": {"degradation": {"method": "psf", "psf_path": str(psf)}}})
    assert recorded["psf"] == {"path": str(psf), "sha256": hashlib.sha256(b"psf bytes").hexdigest()}


def test_a_psf_already_recorded_is_kept_not_hashed_again(tmp_path):
    """An adopted model keeps its source's record: the file at that path may have been replaced
    since it trained the model."""
    psf = tmp_path / "psf.tif"
    psf.write_bytes(b"a PSF measured later")
    source = {"path": str(psf), "sha256": "the one that trained it"}
    meta = {"settings": {"degradation": {"method": "psf", "psf_path": str(psf)}}, "psf": source}
    assert with_psf_record(meta)["psf"] == source


def test_a_copied_model_takes_this_samples_metadata_in_place_of_the_sources(tmp_path):
    """The source's ``acquisition`` (which the adopting stage drops) must not survive in the
    copy's description: it describes the adopting sample (a mutation review: merging the two
    failed no test)."""
    source = _folder(tmp_path / "src", metadata=ENHANCE | {"acquisition": {"timepoint": 0}, "sample": "t0"})
    copy_with_metadata(source, tmp_path / "dst", ENHANCE | {"sample": "t1"})
    info, weights = read_description(tmp_path / "dst")
    assert info["metadata"] == ENHANCE | {"sample": "t1"}
    assert weights.read_bytes() == b"weights"


def test_a_damaged_source_model_is_not_copied(tmp_path):
    """Copying a model whose weights no longer match would hand the adopting sample a corrupt
    network under a fresh description."""
    source = _folder(tmp_path / "src")
    (source / WEIGHTS_FILE).write_bytes(b"damaged")
    with pytest.raises(InputError, match="checksum mismatch"):
        copy_with_metadata(source, tmp_path / "dst", ENHANCE)
    assert not (tmp_path / "dst").exists()


def test_a_copied_model_leaves_half_written_temporaries_behind(tmp_path):
    source = _folder(tmp_path / "src")
    (source / ".weights.safetensors.tmp123").write_bytes(b"half")
    copy_with_metadata(source, tmp_path / "dst", ENHANCE)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [DESCRIPTION_FILE, WEIGHTS_FILE]
