"""End to end: the real ``snakemake`` CLI on a tiny synthetic sample, every contract output checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from ..conftest import blob_volume

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN = {"steps": 6, "validate_every": 3, "patch_size": [4, 16, 16], "width": 8, "depth": 1,
              "batch_size": 2, "warmup_steps": 1}

pytestmark = pytest.mark.slow

METRIC_KEYS = {
    "sample", "mode", "input_shape", "output_shape", "voxel_size_in", "voxel_size_out", "train_seconds",
    "infer_seconds", "self_validation", "resolution_um", "isotropy_in", "isotropy_out", "reference", "flags",
}


def _has_key(record: dict, dotted: str) -> bool:
    """``record`` has the key ``a.b`` (``record["a"]["b"]``), whatever its value."""
    *parents, last = dotted.split(".")
    for part in parents:
        record = record.get(part) if isinstance(record, dict) else None
    return isinstance(record, dict) and last in record


def _write_workdir(root: Path) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    vol = (blob_volume((8, 40, 40), n=60) * 3000).astype(np.uint16)
    tifffile.imwrite(data / "tiny one.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    ref = (blob_volume((8, 80, 80), n=60) * 3000).astype(np.uint16)
    tifffile.imwrite(data / "ref.tif", ref, imagej=True, metadata={"axes": "ZYX"})
    (root / "config").mkdir()
    (root / "config" / "samples.tsv").write_text(
        "sample\tpath\tmode\tscale\treference\n"
        "tiny\t../data/tiny one.tif\tenhance\t1,2,2\t../data/ref.tif\n"
        "iso\t../data/tiny one.tif\tisotropic\t\t\n"
    )
    cfg = {"samples": "config/samples.tsv", "results": "results", "export_tiff": True, "train": TINY_TRAIN,
           "infer": {"tile_size": [8, 24, 24]}, "qc": {"max_resolution_slices": 4},
           "isotropic": {"steps": 6, "width": 8, "depth": 1, "patch_size": 24, "batch_size": 4}}
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _snakemake(workdir: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    wd = _write_workdir(tmp_path_factory.mktemp("wf"))
    _snakemake(wd)
    return wd


def test_dry_run_lists_the_dag(tmp_path):
    wd = _write_workdir(tmp_path)
    out = _snakemake(wd, "-n")
    for rule in ("normalise", "crop", "train", "infer", "qc", "report", "summary"):
        assert rule in out.stdout


def test_every_contract_output_exists_and_is_valid(finished_run):
    from selfres import io

    r = finished_run / "results" / "tiny"
    for rel in ("normalized.ome.zarr", "train_fov.json", "model/model.json", "model/training_log.tsv",
                "restored.ome.zarr", "qc/metrics.json", "report.html", "provenance.json"):
        assert (r / rel).exists(), rel
    assert list((r / "model").glob("weights*")), "no weights file"
    for rule in ("normalise", "crop", "train", "infer", "qc", "report"):
        assert (r / "benchmarks" / f"{rule}.tsv").exists(), rule
    assert (finished_run / "results" / "summary.tsv").exists()
    assert (finished_run / "results" / "summary.html").exists()

    m = json.loads((r / "qc" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert m["input_shape"] == [8, 40, 40] and m["output_shape"] == [8, 80, 80]
    assert m["voxel_size_out"] == pytest.approx([1.0, 0.25, 0.25])
    assert set(m["self_validation"]) == {"psnr_model", "psnr_interp", "ssim_model", "ssim_interp"}
    # the network's own held-out gain, without back-projection, as its train job's guard measured it
    sv_model = json.loads((r / "model" / "model.json").read_text())["metadata"]["self_validation"]
    assert m["holdout_gain_network_alone_db"] == pytest.approx(sv_model["psnr_network"] - sv_model["psnr_interp"])
    assert all(isinstance(v, float) for v in m["self_validation"].values())
    lo, hi = m["holdout_gain_db_interval"]  # block bootstrap of the held-out gain, around the gain itself
    gain = m["self_validation"]["psnr_model"] - m["self_validation"]["psnr_interp"]
    assert lo - 0.01 <= gain <= hi + 0.01 and lo < hi
    assert set(m["reference"]) == {"psnr", "ssim", "psnr_interp", "ssim_interp"}

    out = io.read_ome_zarr(r / "restored.ome.zarr")
    assert out.data.shape == (8, 80, 80)
    assert out.voxel_size == pytest.approx((1.0, 0.25, 0.25))
    raw = tifffile.imread(finished_run / "data" / "tiny one.tif").astype(np.float32)
    # restored intensities are in raw units (normalisation undone)
    assert abs(float(np.mean(out.data)) - float(raw.mean())) < 0.1 * float(raw.mean())

    zattrs = json.loads((r / "restored.ome.zarr" / ".zattrs").read_text())
    assert zattrs["multiscales"][0]["version"] == "0.4"

    prov = json.loads((r / "provenance.json").read_text())
    for key in ("resolved_config", "selfres_version", "input_checksum", "software", "timings", "host"):
        assert prov.get(key) is not None, key
    # the keys gpu_unused's advice sends a reader to are there (it named a top-level ran_on, which is not)
    from selfres.flags import explain_flag

    named = re.findall(r"\b((?:[a-z_]+\.)?[a-z_]*ran_on)\b", explain_flag("gpu_unused")[1])
    assert named and all(_has_key(prov, name) for name in named), named
    # what decided the output; how the infer job ran (tiles per pass, GPU memory) is not recorded
    infer_given = prov["resolved_config"]["settings"]["infer"]
    assert "tile_size" in infer_given and not {"batch_size", "gpu_memory_fraction"} & set(infer_given)
    # the network and its training inputs, for the report's methods text
    assert prov["model"]["arch"] == "resnet3d" and prov["model"]["n_parameters"] > 0
    assert prov["model"]["degradation"]["method"] == "cubic"
    assert prov["model"]["training"]["steps_done"] > 0 and prov["model"]["training"]["loss"] == "l1"
    assert prov["normalisation"]["basis"] == "percentiles" and prov["normalisation"]["high"] > \
        prov["normalisation"]["low"]  # the values the methods text quotes
    assert f"(commit {prov['restored_code']['git_commit'][:10]}" in (r / "report.html").read_text() or \
        prov["restored_code"].get("git_commit") is None
    page = (r / "report.html").read_text()
    assert '<h2 id="methods">Methods text</h2>' in page and "×1,2,2 with an antialiased cubic kernel" in page

    fov = json.loads((r / "train_fov.json").read_text())
    assert fov["train"] and fov["holdout"] and fov["reason"]

    summary = (finished_run / "results" / "summary.tsv").read_text().splitlines()
    assert summary[0].startswith("sample") and any(line.startswith("tiny\t") for line in summary[1:])
    assert "tiny/report.html" in (finished_run / "results" / "summary.html").read_text()


def test_isotropic_sample_gets_isotropic_voxels(finished_run):
    from selfres import io

    r = finished_run / "results" / "iso"
    m = json.loads((r / "qc" / "metrics.json").read_text())
    assert m["mode"] == "isotropic"
    # voxel (1.0, 0.5, 0.5) µm from the TIFF: f = 2, z 8 → 16 slices, y and x unchanged
    assert m["input_shape"] == [8, 40, 40] and m["output_shape"] == [16, 40, 40]
    assert m["voxel_size_out"] == pytest.approx([0.5, 0.5, 0.5])
    prov = json.loads((r / "provenance.json").read_text())  # the axial blur it learned, not enhance's setting
    assert prov["model"]["degradation"]["method"] == "analytic" and prov["model"]["degradation"]["sigma_px"] > 0
    assert "Training ran " in (r / "report.html").read_text()
    assert prov["model"]["training"]["tail_lr_scale"] == 0.1  # recorded by training, said by the methods text
    assert set(m["self_validation"]) == {"psnr_model", "psnr_interp", "ssim_model", "ssim_interp"}
    assert m["holdout_gain_network_alone_db"] is None  # enhance's figure: isotropic has no extras to tell apart
    # the isotropy flags are those of the figures QC wrote (here, where the guard keeps z-cubic,
    # the input's 0.33: isotropy_not_reached)
    from selfres.qc import isotropy_flags

    expected = isotropy_flags(m["isotropy_in"], m["isotropy_out"], m["restored_content"])
    assert [f for f in m["flags"] if f.startswith("isotropy_")] == expected
    out = io.read_ome_zarr(r / "restored.ome.zarr")
    assert out.data.shape == (16, 40, 40) and out.voxel_size == pytest.approx((0.5, 0.5, 0.5))
    assert (r / "report.html").exists() and (r / "provenance.json").exists()
    assert "iso/report.html" in (finished_run / "results" / "summary.html").read_text()


@pytest.mark.parametrize("sample, voxel", [("tiny", (1.0, 0.25, 0.25)), ("iso", (0.5, 0.5, 0.5))])
def test_export_tiff_holds_the_restored_volume_with_its_voxel_size(finished_run, sample, voxel):
    """``export_tiff: true``: an OME-TIFF beside restored.ome.zarr, the same voxels and grid."""
    from selfres import io

    r = finished_run / "results" / sample
    restored = io.read_ome_zarr(r / "restored.ome.zarr")
    with tifffile.TiffFile(r / "restored.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), restored.data)
    assert io.read_volume(r / "restored.ome.tif").voxel_size == pytest.approx(voxel)
    assert (r / "benchmarks" / "export_tiff.tsv").exists()


def test_second_run_has_nothing_to_do(finished_run):
    out = _snakemake(finished_run, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_changing_a_training_value_reruns_training_and_downstream_only(finished_run):
    cfg_path = finished_run / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["steps"] = 7
    cfg_path.write_text(yaml.safe_dump(cfg))
    try:
        out = _snakemake(finished_run, "-n", "--quiet", "rules")
        text = out.stdout
        for rule in ("train", "infer", "qc", "report"):
            assert f"\n{rule} " in text or f"{rule}  " in text, text
        for rule in ("normalise", "crop"):
            assert f"\n{rule} " not in text, text
    finally:
        cfg["train"]["steps"] = TINY_TRAIN["steps"]
        cfg_path.write_text(yaml.safe_dump(cfg))


def test_invalid_config_fails_before_any_job_naming_the_key(tmp_path):
    wd = _write_workdir(tmp_path)
    cfg_path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["loss"] = "huber"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = _snakemake(wd, "-n", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "huber" in text and "loss" in text and "charbonnier" in text


def test_lint_passes():
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--lint"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stages_without_a_network_start_without_torch(finished_run, tmp_path):
    """normalise, crop, report and summary never import torch (~2 s of every such job's start
    on a cluster); train, infer and qc run the network and do."""
    res = finished_run / "results" / "tiny"
    stages = {
        "normalise": ["normalise", str(finished_run / "data" / "tiny one.tif"), "-o", str(tmp_path / "n.ome.zarr"),
                      "--sample", "tiny"],
        "crop": ["crop", str(res / "normalized.ome.zarr"), "-o", str(tmp_path / "fov.json"), "--sample", "tiny",
                 "--scale", "1,2,2"],
        "report": ["report", *(str(res / p) for p in ("normalized.ome.zarr", "restored.ome.zarr", "model",
                                                       "train_fov.json", "qc/metrics.json")),
                   "-o", str(tmp_path / "r.html"), "--provenance", str(tmp_path / "p.json"),
                   "--benchmarks", str(res / "benchmarks"), "--figures", str(tmp_path / "figures"),
                   "--sample", "tiny"],
        "summary": ["summary", str(finished_run / "results"), "--samples", "tiny,iso", "-o", str(tmp_path / "s.tsv"),
                    "--html", str(tmp_path / "s.html")],
        "qc (runs the network)": ["qc", *(str(res / p) for p in ("normalized.ome.zarr", "restored.ome.zarr", "model",
                                                                 "train_fov.json")),
                                  "-o", str(tmp_path / "qc" / "metrics.json"), "--sample", "tiny"],
    }
    probe = ("import sys; from selfres.cli import main; rc = main(sys.argv[1:]); "
             "print('torch' in sys.modules); sys.exit(rc)")
    for stage, args in stages.items():
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (stage, out.stderr[-3000:])
        assert out.stdout.split()[-1] == str(stage.startswith("qc")), (stage, out.stdout[-500:])
