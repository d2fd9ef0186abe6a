"""Gaps found by mutation testing of :mod:`selfres.codeinfo` (which code made a model, an
output, a run record) and :mod:`selfres.allocator` (the process-wide malloc tuning that the
``selfres`` command makes once): what a user reads in a record, and what the allocator asks glibc."""

from __future__ import annotations

import ctypes
import os
import subprocess

import pytest

from selfres import allocator, codeinfo


def _commit(repo, name="f.txt"):
    subprocess.run(["git", "-C", str(repo), "add", name], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def no_git_above(tmp_path, monkeypatch):
    """git looks no higher than ``tmp_path`` for a repository."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


def test_a_workflow_in_snakemakes_standard_layout_gets_its_commit(no_git_above):
    """A workflow deployed the way Snakemake documents it keeps its Snakefile in ``workflow/``:
    that folder is a workflow checkout too, and its records name its commit (not None)."""
    repo = no_git_above / "deployed"
    (repo / "workflow").mkdir(parents=True)
    (repo / "workflow" / "Snakefile").write_text("rule all:\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    head = _commit(repo, "workflow/Snakefile")
    assert codeinfo.git_commit(repo) == head and codeinfo.git_dirty(repo) is False


def test_untracked_files_in_a_workflow_folder_do_not_make_it_dirty(no_git_above):
    """A workflow folder holds its results, sheets and data, untracked: git_dirty says whether the
    *tracked* code changed. Counting untracked files would mark every record dirty and the flag
    would tell a reader nothing."""
    repo = no_git_above / "wf"
    repo.mkdir()
    (repo / "Snakefile").write_text("rule all:\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _commit(repo, "Snakefile")
    (repo / "results").mkdir()
    (repo / "results" / "summary.tsv").write_text("sample\n")
    assert codeinfo.git_dirty(repo) is False


def test_a_checkout_git_cannot_read_has_no_dirty_flag_rather_than_a_clean_one(no_git_above):
    """git failing in the folder (a broken ``.git``) says nothing of the code: ``None``
    ("cannot tell"), not ``False`` ("no uncommitted changes"), which a reader would trust."""
    wf = no_git_above / "wf"
    (wf / ".git").mkdir(parents=True)
    (wf / "Snakefile").write_text("rule all:\n")
    assert codeinfo.git_commit(wf) is None and codeinfo.git_dirty(wf) is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_the_package_of_a_checkout_another_user_owns_still_names_its_commit(no_git_above, monkeypatch):
    """An install in /opt run by a service account: the package (``<checkout>/src/selfres``, a
    folder below the checkout's top) is asked with the checkout's top trusted, so the record
    names the commit instead of None ("dubious ownership")."""
    repo = no_git_above / "opt-selfres"
    (repo / "src" / "selfres").mkdir(parents=True)
    (repo / "f.txt").write_text("a\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    head = _commit(repo)
    for p in (repo, *repo.rglob("*")):
        os.lchown(p, 12345, 12345)
    monkeypatch.setattr(codeinfo, "PACKAGE_DIR", (repo / "src" / "selfres").resolve())
    assert codeinfo.git_commit() == head and codeinfo.git_dirty() is False


def test_a_run_record_keeps_the_dirty_flag_of_the_checkout(monkeypatch):
    """``git_dirty`` is what tells a reader that the commit alone does not say which code ran."""
    for commit, dirty in (("abc123", True), ("abc123", False), (None, None)):
        monkeypatch.setattr(codeinfo, "_own_checkout", lambda c=commit, d=dirty: (c, d))
        ident = codeinfo.code_identity()
        assert (ident["git_commit"], ident["git_dirty"]) == (commit, dirty)


def test_the_source_digest_tells_a_renamed_module_from_the_old_one(tmp_path, monkeypatch):
    """The digest says which code ran where version and commit cannot (a wheel): the same
    contents under other module names is other code."""
    def digest(names):
        pkg = tmp_path / "-".join(names)
        pkg.mkdir()
        for name, text in zip(names, ("x = 1\n", "y = 2\n")):
            (pkg / name).write_text(text)
        monkeypatch.setattr(codeinfo, "PACKAGE_DIR", pkg)
        codeinfo.source_digest.cache_clear()
        try:
            return codeinfo.source_digest()
        finally:
            codeinfo.source_digest.cache_clear()

    assert digest(["a.py", "b.py"]) != digest(["a.py", "c.py"])


def test_software_versions_name_every_main_library_also_one_not_installed(monkeypatch):
    """A record's ``software`` lists each main library, ``None`` for one not installed: a reader
    comparing two runs sees that torch was missing, not a list that silently lacks it."""
    import importlib.metadata as md

    real = md.version

    def version(pkg):
        if pkg == "torch":
            raise md.PackageNotFoundError(pkg)
        return real(pkg)

    monkeypatch.setattr(md, "version", version)
    found = codeinfo.software_versions()
    assert "torch" in found and found["torch"] is None
    assert {"python", "selfres", "numpy", "snakemake"} <= set(found)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


class _FakeLibc:
    """Records the mallopt calls; answers ``answer`` (glibc: 1 on success, 0 on error)."""

    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def fake_libc(monkeypatch):
    def use(answer=1):
        libc = _FakeLibc(answer)
        monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
        return libc

    monkeypatch.delenv("SELFRES_MALLOC_TUNE", raising=False)
    monkeypatch.setattr(allocator, "_LIBC", None)
    allocator.keep_freed_memory.cache_clear()
    yield use
    allocator.keep_freed_memory.cache_clear()


def test_the_allocator_keeps_blocks_up_to_32_mib_and_trims_only_above_256_mib(fake_libc):
    """Both thresholds are set (the mmap one at glibc's largest, 32 MiB; the trim one high enough
    that freed tiles are not handed back): that is what saved 15-30 % of CPU inference."""
    libc = fake_libc()
    assert allocator.keep_freed_memory() is True
    assert libc.calls == [(M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 256 * 2**20)]


def test_a_network_pass_maps_no_block_and_mapping_comes_back_after_it_even_on_error(fake_libc):
    libc = fake_libc()
    assert allocator.keep_freed_memory()
    del libc.calls[:]
    with pytest.raises(RuntimeError), allocator.heap_only():
        assert libc.calls == [(M_MMAP_MAX, 0)]
        raise RuntimeError("the pass failed")
    assert libc.calls == [(M_MMAP_MAX, 0), (M_MMAP_MAX, 65536)]


def test_where_glibc_refused_the_thresholds_a_network_pass_leaves_the_allocator_alone(fake_libc):
    """Without the raised thresholds, keeping every block in the heap during a pass only raises the
    job's peak memory: heap_only then does nothing."""
    libc = fake_libc(answer=0)
    assert allocator.keep_freed_memory() is False
    del libc.calls[:]
    with allocator.heap_only():
        pass
    assert libc.calls == []
