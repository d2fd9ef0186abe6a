"""Outputs that appear complete or not at all: write to a temporary sibling, rename at the end.

Kept apart from :mod:`selfres.io` (which needs dask and zarr) so that light commands, such
as ``selfres summary``, write atomically without importing them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["atomic_output", "check_outputs_spare_inputs", "output_lock", "overwritten_input",
           "remove_stale_siblings", "write_text_atomic"]

#: The output locks this process holds (:func:`output_lock`): lock file -> [descriptor, depth].
_HELD: dict[Path, list[int]] = {}


def overwritten_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> Path | None:
    """The first of ``inputs`` that writing ``output`` would destroy, else ``None``.

    Outputs are replaced whole (:func:`atomic_output`), so an input is lost when it is the
    output itself (the same path, through symbolic links, or a hard link to the same file)
    or lies inside it (``-o data/`` for ``data/a.tif``). An output written *inside* an
    input folder replaces nothing of it and passes.
    """
    out = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        inp = Path(given).resolve()
        if inp == out or out in inp.parents:
            return Path(given)
        try:
            if os.path.samefile(out, inp):
                return Path(given)
        except OSError:  # one of them does not exist yet
            pass
    return None


def check_outputs_spare_inputs(outputs: Mapping[str, str | os.PathLike | None],
                               inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`~selfres.errors.ConfigError` when writing one of ``outputs`` (named by
    what the user gave, e.g. ``"-o/--output"``) would replace or delete one of ``inputs``."""
    inputs = [p for p in inputs if p is not None]
    for what, output in outputs.items():
        if output is None:
            continue
        hit = overwritten_input(output, inputs)
        if hit is not None:
            holds = Path(output).resolve() in Path(hit).resolve().parents
            where = "is a folder holding the input" if holds else "is the input"
            raise ConfigError(f"{what} {output} {where} {hit}: writing it would replace or delete that input, so "
                              "nothing was written; choose another output path")


def permissions_as_umask(path: str | os.PathLike) -> None:
    """Give a file the permissions a plain ``open()`` would (0666 less the umask; a folder:
    ``mkdir``'s 0777 less it): safetensors creates its files 0600, so on a group-readable
    results folder the other accounts of a facility could read ``model.json`` but not the
    weights; a copied folder keeps its source's modes."""
    mask = os.umask(0)
    os.umask(mask)
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~mask)
        return
    # a folder in a group-shared (setgid) one keeps the bit, so its files stay in that group
    shared = os.stat(os.path.dirname(os.path.abspath(path))).st_mode & stat.S_ISGID
    os.chmod(path, (0o777 & ~mask) | shared)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically: a temporary sibling renamed into place, so a
    reader (or a rerun after a kill) sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill leaves no partial file behind
        tmp.unlink(missing_ok=True)
        raise


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    stack = [Path(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path``, or its nearest parent that exists (where a file system's room is asked)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def partial_path(final: str | os.PathLike) -> Path:
    """Where a resumable inference writes ``final`` until it is complete: ``.{name}.partial``
    beside it (:class:`selfres.infer.PartialStore`)."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def _lock_file(final: Path) -> Path:
    return final.parent.resolve() / f".{final.name}.lock"


def _take(lock: Path, final: Path) -> int | None:
    """An exclusive ``flock`` on ``lock`` (created), held by the returned descriptor; ``None``
    where the file system has no locks. The file is re-checked after locking: a holder
    removes it when done, and a lock on a removed file guards nothing."""
    import fcntl
    import socket

    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # left by another account's killed run: a lock is taken on a reading too
            try:
                fd = os.open(lock, os.O_RDONLY)
            except PermissionError:
                raise ConfigError(f"{final}: the lock file {lock} belongs to another account and cannot be read; "
                                  "if no selfres run is writing this output, delete that file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{final}: another selfres run ({holder}) is writing this output now; wait for it to "
                              "end, or give another output (two writers would mix their results)") from None
        except OSError:  # no locks on this file system (some network mounts): go on unguarded
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the holder's line: not on another account's file, nor a full disk
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            return fd
        os.close(fd)
    return None


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created, and removed by its holder when done: what it
    guards is re-checked under the lock, so a waiter on the removed file and a newcomer on a new
    one find it done), waiting for a holder to finish (:func:`output_lock` refuses a second
    holder at once instead); unguarded where the file system has no locks (some network
    mounts)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``path`` for this process's writing: a second selfres writing the same output at
    the same time (two ``selfres restore … -o out.ome.zarr``, or ``infer`` with another model)
    is refused at once, naming the holder, instead of each deleting the other's temporary
    files and committing a store that mixes both runs' tiles. An exclusive lock on
    ``.NAME.lock`` beside it, released (and the file removed) at the end or when the process
    dies; re-entrant within a process (``restore`` holds its output through ``infer``)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_file(final)
    if lock in _HELD:
        _HELD[lock][1] += 1
        try:
            yield
        finally:
            _HELD[lock][1] -= 1
        return
    fd = _take(lock, final)
    if fd is None:
        yield
        return
    _HELD[lock] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[lock]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write to a temporary sibling of ``path`` and move it into place on success.

    Parameters
    ----------
    path
        Final file or directory. An existing one is replaced only once the new
        output is complete; on any error the temporary output is deleted and
        ``path`` is left as it was.

    Yields
    ------
    pathlib.Path
        The temporary path to write (does not exist yet).
    """
    final = Path(path)
    with output_lock(final):
        yield from _atomic_output(final)


def _atomic_output(final: Path) -> Iterator[Path]:
    remove_stale_siblings(final)  # litter of killed writers: a live one holds the output's lock
    token = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.tmp-{token}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp}")
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{token}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def remove_stale_siblings(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``final`` that a killed writer left (``.NAME.tmp-<token>``,
    ``.NAME.old-<token>`` of :func:`atomic_output`, 8 hex digits; ``.NAME.tmp-<pid>`` of :func:`write_text_atomic`):
    a SIGKILL runs no cleanup, and each kill stranded a full-size copy (a normalised volume, an
    OME-TIFF level 0) that no later run removed. One writer per output (Snakemake locks it), so a
    sibling found before writing is litter. Returns what was removed."""
    final = Path(final)
    gone = []
    # (``tmp-stale-<pid>``: the out-of-date banner of selfres before 2026-12-05, left by a full disk)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:tmp-(?:[0-9a-f]{{8}}|[0-9]+|stale-[0-9]+)|old-[0-9a-f]{{8}})$")
    with contextlib.suppress(OSError):
        for p in final.parent.iterdir():
            if pattern.match(p.name):
                _remove(p)
                gone.append(p)
    return gone


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        with contextlib.suppress(OSError):
            p.unlink()
