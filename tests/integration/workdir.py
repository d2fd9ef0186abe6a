"""A tiny, self-contained workflow working directory for integration tests.

Import it from a test module (``tests/integration`` is on ``sys.path`` under pytest's
default rootdir-relative import mode)::

    from workdir import make_workdir, run_snakemake

    def test_something(tmp_path):
        wd = make_workdir(tmp_path, samples={"a": {}, "b": {"train.steps": 2}})
        proc = run_snakemake(wd, "-n")
        assert proc.returncode == 0, proc.stderr

:func:`make_workdir` writes ``config/config.yaml``, ``config/samples.tsv`` and one
tiny seeded TIFF per sample under ``data/``; the default configuration is small enough
that a whole ``snakemake --cores 2`` run on two samples takes well under a minute on
two CPU cores (measured: see the tests that use it).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import yaml
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO_ROOT / "Snakefile"

#: Volume shape (z, y, x) of the tiny acquisitions.
TINY_SHAPE = (8, 48, 48)

#: The test configuration: every heavy knob turned down (config.yaml of the workdir).
TINY_CONFIG: dict = {
    "samples": "config/samples.tsv",
    "results": "results",
    "mode": "enhance",
    "scale": "1,2,2",
    "train": {
        "arch": "resnet3d",
        "width": 8,
        "depth": 1,
        "steps": 4,
        "validate_every": 2,
        "warmup_steps": 0,
        "batch_size": 2,
        "patch_size": [4, 16, 16],
        "max_minutes": 1.0,
    },
    "infer": {"tile_size": [8, 32, 32], "amp": False},
    "fov": {"min_holdout_voxels": 256},
    "qc": {"resolution": False, "max_resolution_slices": 2},
}


def tiny_volume(shape=TINY_SHAPE, *, seed: int = 0) -> np.ndarray:
    """Seeded blurred points on a faint background, as uint16 (like a camera)."""
    rng = np.random.default_rng(seed)
    v = np.zeros(shape, np.float32)
    idx = rng.integers(0, shape, size=(40, 3))
    v[tuple(idx.T)] = 1.0
    v = ndimage.gaussian_filter(v, (1.0, 1.2, 1.2))
    v = v / v.max() * 3000 + 100 + rng.normal(0, 5, shape)
    return np.clip(v, 0, 65535).astype(np.uint16)


def write_tiny_tiff(path: str | os.PathLike, *, seed: int = 0, shape=TINY_SHAPE) -> Path:
    """Write one tiny acquisition (ImageJ TIFF, voxel size 1 × 0.5 × 0.5 µm)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, tiny_volume(shape, seed=seed), imagej=True,
                     resolution=(2.0, 2.0), metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    return path


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_workdir(
    tmp_path: str | os.PathLike,
    *,
    samples: "dict[str, dict] | None" = None,
    config_overrides: "dict | None" = None,
    name: str = "wd",
) -> Path:
    """Create a workflow working directory with a tiny config, sheet and data.

    Parameters
    ----------
    tmp_path
        Parent folder (pytest's ``tmp_path``).
    samples
        ``{sample_id: {column: value}}``; each sample gets ``data/<id>.tif`` (seeded
        by its position) unless its columns give a ``path``. Extra columns (``mode``,
        ``scale``, ``train.steps`` ...) go into the sheet as written; missing cells
        stay empty. Default: one sample ``a``. An empty dict writes a header-only sheet
        (useful with ``inbox``).
    config_overrides
        Merged (recursively) into :data:`TINY_CONFIG`.
    name
        Name of the working directory inside ``tmp_path``.

    Returns
    -------
    Path
        The working directory (pass it as ``--directory``).
    """
    wd = Path(tmp_path) / name
    (wd / "config").mkdir(parents=True, exist_ok=True)
    samples = {"a": {}} if samples is None else samples
    cols = ["sample", "path"]
    rows = []
    for i, (sid, extra) in enumerate(samples.items()):
        row = {"sample": sid, **{k: str(v) for k, v in extra.items()}}
        if "path" not in extra:
            write_tiny_tiff(wd / "data" / f"{sid}.tif", seed=i)
            row["path"] = f"../data/{sid}.tif"
        cols += [c for c in row if c not in cols]
        rows.append(row)
    lines = ["\t".join(cols)] + ["\t".join(r.get(c, "") for c in cols) for r in rows]
    (wd / "config" / "samples.tsv").write_text("\n".join(lines) + "\n")
    cfg = _merge(TINY_CONFIG, config_overrides or {})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return wd


def snakemake_command(workdir: str | os.PathLike, *args: str, cores: int = 2) -> list[str]:
    """``python -m snakemake -s <repo>/Snakefile --directory WORKDIR --cores N ARGS``."""
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
            "--cores", str(cores), *args]


def run_snakemake(workdir: str | os.PathLike, *args: str, cores: int = 2, timeout: float = 600,
                  env: "dict | None" = None) -> subprocess.CompletedProcess:
    """Run snakemake on ``workdir`` (text output captured, never raises on failure)."""
    return subprocess.run(snakemake_command(workdir, *args, cores=cores), capture_output=True, text=True,
                          timeout=timeout, cwd=workdir, env=env)
