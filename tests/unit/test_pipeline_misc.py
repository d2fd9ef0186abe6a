"""Small pipeline helpers."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

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


@pytest.mark.parametrize("meta, mode", [({"factors": [2, 2, 2]}, "enhance"), ({"factors": [1, 2, 2]}, "enhance"),
                                        ({"factors": [4, 4, 4]}, "enhance"), ({"factor": 2.5}, "isotropic"),
                                        ({"factor": 3.0}, "isotropic")])
def test_interpolation_in_blocks_equals_the_whole_volume_interpolation(meta, mode):
    """Block by block from a lazy input (as QC against a reference reads it), the baseline
    is the whole volume's tricubic / z-cubic, borders included."""
    import dask.array as da

    from selfres.metrics import block_slices

    raw = np.random.default_rng(0).random((7, 13, 11)).astype(np.float32)
    whole = pipeline.interpolation_of(raw, meta, mode)
    block, whole_axes = pipeline.interpolation_blocks(da.from_array(raw, chunks=4), meta, mode)
    assert whole_axes == ((0,) if meta.get("factor") == 2.5 else ())
    blocks = block_slices(whole.shape, 300, whole_axes=whole_axes)
    assert len(blocks) > 4
    for sl in blocks:
        np.testing.assert_allclose(block(sl), whole[sl], atol=1e-6)
