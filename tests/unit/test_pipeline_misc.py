"""Small pipeline helpers."""

from __future__ import annotations

import subprocess

from selfres import pipeline


def test_git_commit_names_the_checkout_a_path_lies_in_and_none_outside_one(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    repo = tmp_path / "repo"
    (repo / "Snakefile").write_text("rule all:\n")
    subprocess.run(["git", "-C", str(repo), "add", "Snakefile"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert pipeline.git_commit(repo) == head and pipeline.git_dirty(repo) is False
    (repo / "Snakefile").write_text("rule all:\n    input: []\n")
    assert pipeline.git_dirty(repo) is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert pipeline.git_commit(outside) is None and pipeline.git_dirty(outside) is None
