"""A sample's model folder on disk: ``model.json`` (the description) beside its weights.

Reading and checking the description needs no torch, so the stages that only read what a
model is (the report) start without importing it; :func:`selfres.models.load_model` builds
the network from what :func:`read_description` has checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .atomic import permissions_as_umask
from .errors import InputError
from .io import file_checksum

WEIGHTS_FILE = "weights.safetensors"
DESCRIPTION_FILE = "model.json"
FORMAT = "selfres-model"
FORMAT_VERSION = 1


def read_description(directory: str | Path) -> tuple[dict[str, Any], Path]:
    """``(contents of model.json, path of the weights file)`` of a model folder, checked.

    The weights file must exist and match the checksum in ``model.json``.

    Raises
    ------
    InputError
        ``model.json`` missing, unreadable or not a selfres model description; the weights
        file missing, unreadable or not matching its checksum.
    """
    directory = Path(directory)
    j_path = directory / DESCRIPTION_FILE
    if not j_path.is_file():
        raise InputError(j_path, "model.json not found; train the model first")
    try:
        info = json.loads(j_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(j_path, f"cannot read model.json ({exc}); delete the model "
                                 f"folder to retrain") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(j_path, f"not a selfres model description (expected "
                                 f"format {FORMAT!r})")
    try:
        expected = str(info["weights_sha256"])
        w_path = directory / str(info.get("weights_file", WEIGHTS_FILE))
    except (KeyError, TypeError) as exc:
        raise InputError(j_path, f"invalid model description ({exc})") from exc
    version = info.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(j_path, f"format_version {version!r}: this selfres reads model descriptions of version "
                                 f"1..{FORMAT_VERSION} (a newer selfres wrote it, or it was edited)")
    problem = metadata_problem(info.get("metadata", {}))
    if problem:
        raise InputError(j_path, f"invalid model description: {problem}")
    check_file(w_path, expected, what="weights file")
    return info, w_path


def metadata_problem(metadata) -> str | None:
    """What is wrong with a model description's ``metadata`` that the stages read it by (None:
    nothing): a mode other than ``enhance`` or ``isotropic``; an enhance model whose
    ``factors`` are not three integers ≥ 1; an isotropic model whose axial ``factor`` is not
    a number > 1. Other keys are the training record, read where shown."""
    if not isinstance(metadata, dict):
        return f"metadata is a {type(metadata).__name__}, not an object"
    flags = metadata.get("flags", [])
    if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        return f"flags must be a list of names, not {json.dumps(flags)}"
    if "mode" not in metadata:  # a serial model's second stage: its first stage's description says
        return None
    mode = metadata["mode"]
    if mode == "enhance":
        f = metadata.get("factors")
        if not (isinstance(f, list) and len(f) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in f)):
            return f"an enhance model's factors must be three integers >= 1, not {json.dumps(f)}"
    elif mode == "isotropic":
        f = metadata.get("factor")
        if not (isinstance(f, (int, float)) and not isinstance(f, bool) and 1 < f < float("inf")):
            return f"an isotropic model's axial factor must be a number > 1, not {json.dumps(f)}"
    else:
        return f"mode {json.dumps(mode)} is not enhance or isotropic"
    return None


def check_file(path: Path, sha256: str | None, *, what: str) -> None:
    """A file of a model folder (``what``, e.g. ``"weights file"``) exists, reads, and matches
    its recorded SHA-256 (not checked when ``sha256`` is None: saved before it was recorded).

    Raises
    ------
    InputError
        Missing, unreadable, or not matching (the message starts ``checksum mismatch``).
    """
    if not path.is_file():
        raise InputError(path, f"{what} not found; delete the model folder to retrain")
    if sha256 is None:
        return
    try:
        actual = file_checksum(path)
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc})") from exc
    if actual != sha256:
        raise InputError(path, f"checksum mismatch: the {what} is corrupt; delete it to retrain")


def with_psf_record(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """``metadata`` (a model's training metadata) with ``psf``: ``{"path", "sha256"}`` of the
    measured PSF file its ``settings`` trained with (``degradation.method`` ``psf``), so that
    ``model.json`` tells which PSF made the model even after the file was replaced (``sha256``
    None when the file can no longer be read). Unchanged for any other method, and when it
    already records one (an adopted model keeps its source's)."""
    deg = ((metadata or {}).get("settings") or {}).get("degradation") or {}
    if not isinstance(deg, dict) or deg.get("method") != "psf" or not deg.get("psf_path") or "psf" in metadata:
        return metadata
    path = str(deg["psf_path"])
    try:
        sha = file_checksum(path)
    except (InputError, OSError):
        sha = None
    return {**metadata, "psf": {"path": path, "sha256": sha}}


def copy_with_metadata(source: str | Path, destination: str | Path, metadata: dict[str, Any]) -> None:
    """Copy the model folder ``source`` (weights, a serial model's second stage, training log)
    to ``destination`` (which must not exist) with ``metadata`` in place of its description's.
    The weights and their checksum stay the source's: the copy loads as the same network.

    Raises
    ------
    InputError
        ``source`` is not a sound model folder (:func:`read_description`).
    """
    info, _ = read_description(source)
    # the data only: the copy is this account's, with the modes its umask gives (a curated,
    # read-only model folder copied with its modes could not take its own description)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(".*"),  # no half-written temporaries
                    copy_function=shutil.copyfile)
    for folder in [Path(destination), *(p for p in Path(destination).rglob("*") if p.is_dir())]:
        permissions_as_umask(folder)
    info["metadata"] = dict(metadata)
    text = json.dumps(info, indent=2, sort_keys=True)  # fails early if not JSON-able
    (Path(destination) / DESCRIPTION_FILE).write_text(text + "\n", encoding="utf-8")
