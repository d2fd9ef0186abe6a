"""Nightly batches: acquisitions found by the config's ``inbox`` globs become samples.

``workflow/rules/common.smk`` calls :func:`scan_inbox` while it builds the sample table.
Rules (see ``docs/operations.md``):

- every file or Zarr store matched by one of the glob patterns (``**`` allowed;
  relative patterns are relative to the working directory) becomes a sample whose id is
  :func:`safe_id` of its name;
- the sheet wins: an acquisition whose id, or whose path, is already in the sample sheet
  is left to the sheet's row;
- two acquisitions with the same id are an error (naming both), never a silent merge:
  rename one, or give each its own sheet row — except a microscope vendor's file (CZI,
  ND2, LIF … which selfres does not read) beside its conversion (``scan7.czi`` and
  ``scan7.ome.tif``, as the error of the vendor's file advises): the conversion is the sample;
- an acquisition that changed less than ``settle_seconds`` ago is left for the next run.
  "Changed" is the newest ``st_mtime`` *or* ``st_ctime`` of the file, or of any file or
  folder inside a Zarr store: every write moves both, and ``ctime`` also catches copies
  that restore the source's old ``mtime`` (``cp -p``, ``rsync -a``).
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ConfigError
from .formats import VENDOR_SUFFIXES, unread_format

__all__ = ["safe_id", "last_change", "scan_inbox", "InboxScan"]

_EXT_RE = re.compile(r"(\.ome)?\.(tiff?|zarr|n5)$|\.(" + "|".join(s.lstrip(".") for s in VENDOR_SUFFIXES) + ")$",
                     re.IGNORECASE)


def safe_id(name: str) -> str:
    """A sample id (``^[A-Za-z0-9][A-Za-z0-9_.-]*$``) from an acquisition's file name.

    The folder and the extension (``.tif``, ``.tiff``, ``.ome.tif``, ``.zarr``,
    ``.ome.zarr``, or a microscope vendor's: ``.czi``, ``.nd2``, ``.lif`` …) are dropped,
    every run of other characters becomes ``_`` and leading ``.``, ``_``, ``-`` are
    stripped; an empty result becomes ``sample``, and a name the workflow writes at the top
    of ``results/`` (``logs``, ``runs``, ``summary.tsv``, ``summary.html``: see
    :data:`selfres.sheet.RESULTS_ROOT_NAMES`) gets ``_sample`` appended, so that a file
    ``logs.tif`` dropped in the inbox is restored, not a reason to stop every night's run.

    Examples
    --------
    >>> safe_id("/data/2026-11-30 mouse #3.ome.tif")
    '2026-11-30_mouse_3'
    >>> safe_id("/data/Logs.tif")
    'Logs_sample'

    The other ids a sheet's row may not have are made into ones it may, for the same reason: a
    name longer than :data:`selfres.sheet.MAX_SAMPLE_ID_LENGTH` is cut, with 8 hex digits of
    its SHA-1 appended (two long names that differ only at their end stay apart), and one
    ending in a part repeated 20 times or more (which Snakemake refuses for every sample,
    ``img_0000000000000000000000.tif``) gets ``_sample`` appended.
    """
    import hashlib

    from .sheet import MAX_SAMPLE_ID_LENGTH, periodic_end, results_root_name

    stem = _EXT_RE.sub("", os.path.basename(os.path.normpath(name)))
    sid = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("._-") or "sample"
    if results_root_name(sid) or periodic_end(sid):
        sid = f"{sid}_sample"
    if len(sid) > MAX_SAMPLE_ID_LENGTH:
        sid = f"{sid[:MAX_SAMPLE_ID_LENGTH - 9]}_{hashlib.sha1(sid.encode()).hexdigest()[:8]}"
    return sid


def last_change(path: str | os.PathLike) -> float:
    """Newest ``max(st_mtime, st_ctime)`` of ``path`` and, for a folder, of all inside it."""
    st = os.stat(path)
    newest = max(st.st_mtime, st.st_ctime)
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    s = os.lstat(os.path.join(root, name))
                except FileNotFoundError:  # removed while we looked: still being written
                    return time.time()
                newest = max(newest, s.st_mtime, s.st_ctime)
    return newest


#: What to do about acquisitions that map to one sample id.
CLASH_ADVICE = "Rename all but one, or give each its own row (own id) in the sample sheet"


@dataclass
class InboxScan:
    """What one scan of the inbox found.

    Attributes
    ----------
    rows
        New samples: ``{"sample": id, "path": path}``, sorted by id.
    waiting
        ``(path, seconds since its last change)`` of acquisitions left for the next run.
    shadowed
        ``(path, id)`` of acquisitions left to a sheet row of the same id or path.
    clashes
        ``(id, paths)`` left out because several acquisitions map to one id, letter case aside
        (``on_clash="skip"`` only; the id ``'Scan1 / scan1'`` where they differ in case).
    converted
        ``(path, conversion)``: a vendor's file left to its conversion of the same id.
    """

    rows: list[dict] = field(default_factory=list)
    waiting: list[tuple[str, float]] = field(default_factory=list)
    shadowed: list[tuple[str, str]] = field(default_factory=list)
    clashes: list[tuple[str, list[str]]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)
    unusable: list[tuple[str, str, str]] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)
    """``(pattern, why)`` of patterns that matched nothing and cannot have: shell braces, or a
    folder that does not exist (every night silently "nothing to do" otherwise)."""

    @property
    def waiting_ids(self) -> dict[str, str]:
        """``{sample id: path}`` of :attr:`waiting` (the summary gives each a ``pending`` row)."""
        return {safe_id(path): path for path, _ in self.waiting}

    def refusals(self) -> dict[str, str]:
        """``{id: why}`` of the clashing ids and of the acquisitions whose name Snakemake cannot
        take as an input (``unusable``), for a run that fails each alone (``bad_rows:
        fail_alone``); they are then its to report, and leave :meth:`messages`."""
        out = {sid: f"sample {sid!r}: inbox: acquisitions with the same sample id: {', '.join(ps)}. {CLASH_ADVICE}"
               for _, ps in self.clashes for sid in dict.fromkeys(safe_id(p) for p in ps)}  # Scan1 and scan1: each
        out |= {sid: f"sample {sid!r}: inbox: {why}" for sid, _, why in self.unusable}
        self.clashes, self.unusable = [], []
        return out

    def messages(self) -> list[str]:
        """One line per acquisition not taken, for the run's output."""
        out = [f"selfres inbox: {p} changed {age:.0f} s ago; left for the next run" for p, age in self.waiting]
        out += [f"selfres inbox: {p} left to the sample sheet's row {sid!r}" for p, sid in self.shadowed]
        out += [f"selfres inbox: {p} left to its conversion {q}" for p, q in self.converted]
        out += [f"selfres inbox: ERROR: {', '.join(ps)} all map to sample id {sid!r}; left out" for sid, ps in self.clashes]
        out += [f"selfres inbox: ERROR: {why}; left out" for _, _, why in self.unusable]
        out += [f"selfres inbox: WARNING: pattern {pattern!r} matched nothing: {why}" for pattern, why in self.unmatched]
        return out


def _clash_name(paths: list[str]) -> str:
    """The id two or more acquisitions share (``Scan1 / scan1`` where they differ in case alone)."""
    names = list(dict.fromkeys(safe_id(p) for p in paths))
    return " / ".join(names)


def why_nothing_matched(pattern: str) -> str | None:
    """Why glob ``pattern`` (``~`` expanded) can match nothing, or ``None`` when an empty
    folder explains it: shell braces (``*.{tif,tiff}``), which glob reads literally, or a
    folder before its first wildcard that does not exist."""
    if re.search(r"\{[^{}]*,[^{}]*\}", pattern):
        return ("'{a,b}' is shell syntax, which glob reads literally: give one pattern per alternative "
                "(inbox/*.tif and inbox/*.tiff)")
    folder = os.path.dirname(re.split(r"[*?\[]", pattern, maxsplit=1)[0])  # (no wildcard: the pattern's own)
    if folder and not os.path.isdir(folder):
        return f"its folder {folder} does not exist (not mounted, or mistyped?)"
    return None


def scan_inbox(
    patterns: Iterable[str],
    *,
    settle_seconds: float,
    known_ids: Iterable[str] = (),
    known_paths: Iterable[str] = (),
    now: float | None = None,
    on_clash: str = "error",
    exclude: Iterable[str] = (),
) -> InboxScan:
    """Find the acquisitions to add as samples.

    Parameters
    ----------
    patterns
        Glob patterns (config key ``inbox``); ``**`` matches folders recursively; ``~`` is
        the home folder.
    settle_seconds
        Acquisitions changed more recently than this are left for the next run.
    known_ids, known_paths
        Sample ids and paths of the sample sheet (they win).
    now
        Current time (seconds since the epoch); default :func:`time.time`.
    on_clash
        Two acquisitions with one id: ``"error"`` (raise; what a run does before its
        first job) or ``"skip"`` (leave all of them out and say so in
        :meth:`InboxScan.messages`; what a job does, so that a file dropped into the inbox
        during a long run cannot make the night's other jobs fail). The same holds for an
        acquisition whose name Snakemake reads as a pattern (``pos{2}.tif``: ``unusable``).
    exclude
        Folders whose contents are never acquisitions: the results folder (a broad pattern
        such as ``**/*.ome.zarr`` would take the workflow's own stores) and ``.snakemake``.

    Returns
    -------
    InboxScan

    Raises
    ------
    ConfigError
        If two acquisitions map to the same sample id and ``on_clash="error"``.
    """
    from .sheet import not_an_option, snakemake_pattern_problem

    if on_clash not in ("error", "skip"):
        raise ValueError(f"on_clash must be 'error' or 'skip', got {on_clash!r}")
    now = time.time() if now is None else now
    ids: dict[str, str] = {}  # by casefold (Scan1 and scan1: one results folder on macOS or an SMB share)
    for known in known_ids:
        ids.setdefault(known.casefold(), known)
    paths = {os.path.realpath(p) for p in known_paths if p}
    by_id: dict[str, list[str]] = {}  # by the id's casefold: two ids that differ in case alone clash
    scan = InboxScan()
    excluded = [os.path.realpath(os.path.expanduser(e)) for e in exclude]
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not found and (why := why_nothing_matched(os.path.expanduser(pattern))):
            scan.unmatched.append((pattern, why))
        for path in found:
            path = not_an_option(os.path.normpath(path))
            real = os.path.realpath(path)
            if any(real == e or real.startswith(e + os.sep) for e in excluded):
                continue
            sid = safe_id(path)
            if real in paths or sid.casefold() in ids:
                row = ids.get(sid.casefold(), sid)  # the sheet's spelling of the id
                if (path, row) not in scan.shadowed:
                    scan.shadowed.append((path, row))
                continue
            same = by_id.setdefault(sid.casefold(), [])
            if real not in {os.path.realpath(p) for p in same}:
                same.append(path)
    for key, ps in by_id.items():  # scan7.czi beside scan7.ome.tif: the conversion is the sample
        readable = [p for p in ps if unread_format(p) is None] if len(ps) > 1 else ps
        # beside it: a vendor file in another folder (another microscope's sample1.czi) is no conversion
        beside = len(readable) == 1 and all(os.path.dirname(p) == os.path.dirname(readable[0]) for p in ps)
        if beside and len(ps) > 1:
            scan.converted += [(p, readable[0]) for p in ps if p != readable[0]]
            by_id[key] = readable
    for key, ps in list(by_id.items()):
        problems = [why for p in ps if (why := snakemake_pattern_problem(p))]
        if problems and on_clash == "error":
            raise ConfigError(f"inbox: {problems[0]}")
        if problems:
            scan.unusable.append((safe_id(ps[0]), ps[0], problems[0]))
            del by_id[key]
    clashes = {key: ps for key, ps in by_id.items() if len(ps) > 1}
    if clashes and on_clash == "skip":
        for key, ps in sorted(clashes.items()):
            scan.clashes.append((_clash_name(ps), ps))
            del by_id[key]
    elif clashes:
        detail = "; ".join(f"{_clash_name(ps)!r} from {', '.join(ps)}" for key, ps in sorted(clashes.items()))
        raise ConfigError(f"inbox: acquisitions with the same sample id: {detail}. {CLASH_ADVICE}")
    for path, in sorted(by_id.values(), key=lambda ps: safe_id(ps[0])):
        sid = safe_id(path)
        try:
            age = now - last_change(path)
        except FileNotFoundError:
            continue
        if age < settle_seconds:
            scan.waiting.append((path, age))
        else:
            scan.rows.append({"sample": sid, "path": path})
    return scan
