"""Scattered inference through the real ``snakemake`` CLI: blocks=2 equals blocks=1.

Two samples share one tiny acquisition; ``a`` runs as one infer job, ``b`` (sheet column
``infer.blocks`` = 2) as prepare → 2 block jobs → gather. Both use the same trained model
(``b``'s model folder is a copy of ``a``'s), so their restored stores must be identical.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from selfres import io

from workdir import tiny_volume

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN = {"steps": 2, "validate_every": 2, "patch_size": [4, 16, 16], "width": 4, "depth": 1,
              "batch_size": 1, "warmup_steps": 1}

pytestmark = pytest.mark.slow


def _snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise AssertionError(f"snakemake failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-4000:]}")
    return out


def test_blocks_2_run_as_separate_jobs_and_equal_one_job(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    vol = tiny_volume((8, 32, 32))
    tifffile.imwrite(data / "v.tif", vol, imagej=True, metadata={"axes": "ZYX"})
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "samples.tsv").write_text(
        "sample\tpath\tmode\tscale\tinfer.blocks\n"
        "a\t../data/v.tif\tenhance\t1,2,2\t\n"
        "b\t../data/v.tif\tenhance\t1,2,2\t2\n"
    )
    cfg = {"samples": "config/samples.tsv", "results": "results", "train": TINY_TRAIN,
           "infer": {"tile_size": [4, 16, 16]}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "results"

    dry = _snakemake(tmp_path, "-n", "results/a/restored.ome.zarr", "results/b/restored.ome.zarr")
    counts = dict(re.findall(r"^(infer\w*)\s+(\d+)\s*$", dry.stdout, re.M))
    assert counts == {"infer": "1", "infer_prepare": "1", "infer_block": "2", "infer_gather": "1"}, dry.stdout

    _snakemake(tmp_path, "results/a/model", "results/b/normalized.ome.zarr", "results/b/train_fov.json")
    # b gets a's model (fresh mtimes, so snakemake keeps it): both stores must then be equal
    shutil.copytree(res / "a" / "model", res / "b" / "model", copy_function=shutil.copyfile)
    out = _snakemake(tmp_path, "results/a/restored.ome.zarr", "results/b/restored.ome.zarr")
    assert "rule train:" not in out.stdout + out.stderr

    markers = [json.loads((res / "b" / "infer" / f"block_{i}.json").read_text()) for i in range(2)]
    assert [m["block"] for m in markers] == [0, 1]
    n_tiles = 2 * 2 * 2  # (8, 32, 32) in tiles of (4, 16, 16)
    kinds = 2 if markers[0]["content"] == "interpolation" else 1  # model output kept beside tricubic
    assert [m["tiles"] for m in markers] == [n_tiles // 2] * 2
    assert sum(m["computed"] for m in markers) == kinds * n_tiles
    a = io.read_ome_zarr(res / "a" / "restored.ome.zarr")
    b = io.read_ome_zarr(res / "b" / "restored.ome.zarr")
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert b.attrs["blocks"] == 2 and a.attrs["blocks"] == 1
    assert not list((res / "b").glob(".restored*"))  # no partial store or records left
    if kinds == 2:
        np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(res / "a" / "restored_model.ome.zarr").data),
                                      np.asarray(io.read_ome_zarr(res / "b" / "restored_model.ome.zarr").data))


def test_isotropic_blocks_2_run_as_separate_jobs_and_equal_one_job(tmp_path):
    """The same through the real snakemake CLI for isotropic samples (y/x tiles through all of z)."""
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "v.tif", tiny_volume((8, 32, 32)), imagej=True, metadata={"axes": "ZYX"})
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "samples.tsv").write_text(
        "sample\tpath\tmode\tvoxel_size\tinfer.blocks\n"
        "c\t../data/v.tif\tisotropic\t2,1,1\t\n"
        "d\t../data/v.tif\tisotropic\t2,1,1\t2\n"
    )
    # enough steps for the kept network to have learned something (best step > 0, checked below): a
    # network still at its start is z-cubic itself, and a block job that dropped it went unseen
    cfg = {"samples": "config/samples.tsv", "results": "results",
           "train": {"validate_every": 2, "patience": 50, "learning_rate": 1e-2},
           "isotropic": {"steps": 30, "width": 8, "depth": 1, "batch_size": 2, "patch_size": 16},
           "infer": {"tile_size": [4, 16, 16]}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "results"
    _snakemake(tmp_path, "results/c/model", "results/d/normalized.ome.zarr", "results/d/train_fov.json")
    shutil.copytree(res / "c" / "model", res / "d" / "model", copy_function=shutil.copyfile)
    out = _snakemake(tmp_path, "results/c/restored.ome.zarr", "results/d/restored.ome.zarr")
    assert "rule train:" not in out.stdout + out.stderr
    markers = [json.loads((res / "d" / "infer" / f"block_{i}.json").read_text()) for i in range(2)]
    n_tiles = 2 * 2  # 32×32 in y/x tiles of 16×16, each through all of z
    kinds = 2 if markers[0]["content"] == "interpolation" else 1
    assert [m["tiles"] for m in markers] == [n_tiles // 2] * 2 and [m["block"] for m in markers] == [0, 1]
    assert sum(m["computed"] for m in markers) == kinds * n_tiles
    c = io.read_ome_zarr(res / "c" / "restored.ome.zarr")
    d = io.read_ome_zarr(res / "d" / "restored.ome.zarr")
    assert d.data.shape == (16, 32, 32)
    np.testing.assert_array_equal(np.asarray(c.data), np.asarray(d.data))
    assert d.attrs["blocks"] == 2 and c.attrs["blocks"] == 1
    assert json.loads((res / "c" / "model" / "model.json").read_text())["metadata"]["best_step"] > 0
    if kinds == 2:  # the network's output, kept beside z-cubic, is what the blocks must agree on
        np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(res / "c" / "restored_model.ome.zarr").data),
                                      np.asarray(io.read_ome_zarr(res / "d" / "restored_model.ome.zarr").data))
