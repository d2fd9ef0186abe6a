"""Which code runs: selfres's version, a digest of its source files, the commit of its
checkout, and the versions of the main libraries — recorded with each model and output by
the job that made it, and in the run records. No torch import."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
import subprocess
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def _checkout_top(where: Path) -> Path | None:
    """The folder holding the ``.git`` of the checkout ``where`` lies in, found without git."""
    for folder in (where, *where.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _ours(top: Path, *, package: bool) -> bool:
    """Whether the checkout at ``top`` is selfres's: the one its running package was installed
    from (``src/selfres`` is this package: an editable install), or, for a workflow folder, one
    that holds a Snakefile. Any other repository above (a lab project holding the virtual
    environment, a group-writable folder on a shared disk) is not asked: its commit is not
    selfres's, and git would run that repository's configuration (a clean filter) as this user."""
    if package:
        with contextlib.suppress(OSError):
            return (top / "src" / "selfres").resolve() == PACKAGE_DIR
        return False
    return (top / "Snakefile").is_file() or (top / "workflow" / "Snakefile").is_file()


def _git(where: str | Path | None, *args: str) -> str | None:
    """``git args`` run in the checkout ``where`` lies in (default: selfres's own); its
    stdout, or None outside a checkout, in a checkout not selfres's (:func:`_ours`) or on
    failure. That checkout alone is trusted, also
    when another user owns it (an install in /opt run by a service account, which git
    refuses as "dubious ownership"), and with its file-system monitor off, so that a
    checkout's configuration runs no command."""
    here = Path(where).resolve() if where is not None else PACKAGE_DIR
    top = _checkout_top(here)
    if top is None or not _ours(top, package=where is None):
        return None
    try:
        out = subprocess.run(["git", "-c", f"safe.directory={top}", "-c", "core.fsmonitor=false", "-C", str(here),
                              *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(where: str | Path | None = None) -> str | None:
    """The commit checked out where ``where`` lies (default: the selfres package's own
    files); ``None`` outside a git checkout."""
    out = _git(where, "rev-parse", "HEAD")
    return (out.strip() or None) if out is not None else None


def git_dirty(where: str | Path | None = None) -> bool | None:
    """Whether the checkout selfres runs from (or the one ``where`` lies in) has uncommitted
    changes to tracked files (then ``git_commit`` alone does not say which code ran);
    ``None`` outside a checkout."""
    out = _git(where, "status", "--porcelain", "--untracked-files=no")
    return bool(out.strip()) if out is not None else None


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of the selfres package's own source files: which code
    ran, also for an installed wheel or a checkout with uncommitted changes, where the
    version and the commit do not say."""
    digest = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(f.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _own_checkout() -> tuple[str | None, bool | None]:
    """``(git_commit(), git_dirty())`` of selfres's own checkout, asked once per process (a
    job records its code with every model and store it writes)."""
    return git_commit(), git_dirty()


def code_identity() -> dict:
    """Which selfres code runs: version, source digest and the commit of its checkout (None
    outside one; ``git_dirty``: uncommitted changes)."""
    commit, dirty = _own_checkout()
    return {"selfres_version": __version__, "source_digest": source_digest(), "git_commit": commit,
            "git_dirty": dirty}


def software_versions() -> dict:
    """Versions of Python, selfres and the main libraries (from the installed metadata)."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "selfres": __version__}
    for pkg in ("numpy", "scipy", "torch", "zarr", "ome-zarr", "dask", "tifffile", "scikit-image", "snakemake",
                "snakemake-executor-plugin-slurm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
