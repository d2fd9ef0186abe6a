"""``model_from``: a sample restored with another sample's trained model (:mod:`selfres.adopt`),
judged by the guard on its own held-out region; the real ``snakemake`` CLI on tiny samples."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tifffile
from workdir import TINY_CONFIG, make_workdir, run_snakemake, tiny_volume

from selfres import io
from selfres.errors import ConfigError
from selfres.runlog import parse_snakemake_log

pytestmark = pytest.mark.slow


def _jobs(proc) -> set[tuple[str, str | None]]:
    return {(j["rule"], j["sample"]) for j in parse_snakemake_log(proc.stdout + proc.stderr)["jobs"]}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """``a`` trains; ``b`` (other data) uses a's model; ``strict`` too, with a guard margin no
    model can clear on its own held-out region (and no confidence rule for small gains)."""
    wd = make_workdir(tmp_path_factory.mktemp("model_from"), samples={
        "a": {}, "b": {"model_from": "a"},
        "strict": {"model_from": "a", "train.guard_margin_db": "50", "train.guard_confidence": "0"}})
    proc = run_snakemake(wd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return wd, proc


def test_one_training_serves_the_other_samples(shared):
    wd, proc = shared
    jobs = _jobs(proc)
    assert ("train", "a") in jobs and ("adopt", "b") in jobs and ("adopt", "strict") in jobs
    assert not {("train", "b"), ("train", "strict")} & jobs
    res = wd / "results"
    assert _sha(res / "b" / "model" / "weights.safetensors") == _sha(res / "a" / "model" / "weights.safetensors")
    for s in ("a", "b", "strict"):
        assert (res / s / "restored.ome.zarr").is_dir() and (res / s / "report.html").is_file()


def test_the_adopting_sample_is_judged_on_its_own_held_out_region(shared):
    wd, _ = shared
    res = wd / "results"
    meta_a = json.loads((res / "a" / "model" / "model.json").read_text())["metadata"]
    meta_b = json.loads((res / "b" / "model" / "model.json").read_text())["metadata"]
    assert meta_b["sample"] == "b" and meta_b["adopted_from"]["sample"] == "a"
    assert meta_b["adopted_from"]["self_validation"] == meta_a["self_validation"]
    # the acquisition that trained it, traceable from b's own records (a publishing walkthrough)
    assert meta_b["adopted_from"]["acquisition"] == meta_a["acquisition"]
    assert meta_a["acquisition"]["source_checksum"] == hashlib.sha256((wd / "data" / "a.tif").read_bytes()).hexdigest()
    assert meta_b["self_validation"]["psnr_interp"] != meta_a["self_validation"]["psnr_interp"]  # b's region
    metrics = json.loads((res / "b" / "qc" / "metrics.json").read_text())
    assert metrics["adopted_from"] == "a"
    # QC re-scores b's held-out region as the guard did: the same figure
    assert metrics["self_validation"]["psnr_model"] == pytest.approx(meta_b["self_validation"]["psnr_model"], abs=1e-6)
    page = (res / "b" / "report.html").read_text()
    assert "Model trained on sample a" in page and "adoption (model trained on a, judged here)" in page
    # b's own guard: a margin no model clears makes b fall back to tricubic, whatever a's verdict
    strict = json.loads((res / "strict" / "model" / "model.json").read_text())["metadata"]
    assert "model_worse_than_interpolation" in strict["flags"]
    assert io.read_ome_zarr(res / "strict" / "restored.ome.zarr").attrs["content"] == "interpolation"
    assert (res / "strict" / "restored_model.ome.zarr").is_dir()


def test_retraining_the_source_redoes_the_samples_that_use_its_model(shared):
    wd, _ = shared
    proc = run_snakemake(wd, "-n", "--forcerun", "train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc)
    assert {("train", "a"), ("adopt", "b"), ("adopt", "strict"), ("infer", "b")} <= jobs
    assert not any(rule in ("normalise", "crop") for rule, _ in jobs)


def test_a_model_for_other_factors_is_refused_by_the_stage(shared):
    from selfres import pipeline

    wd, _ = shared
    res = wd / "results"
    with pytest.raises(ConfigError, match=r"restores by \(1, 2, 2\), this sample asks for scale \(2, 2, 2\)"):
        pipeline.stage_adopt(res / "b" / "normalized.ome.zarr", res / "b" / "train_fov.json", res / "a" / "model",
                             wd / "elsewhere", sample="b", scale=(2, 2, 2), device="cpu")
    assert not (wd / "elsewhere").exists()


@pytest.mark.parametrize("value", ["lapse_t0", "first_timepoint"])
def test_time_points_share_the_first_time_points_model(tmp_path, value):
    wd = make_workdir(tmp_path, samples={"lapse": {"path": "../data/t.tif", "timepoint": "all",
                                                   "model_from": value}})
    data = np.stack([tiny_volume(seed=t) for t in range(3)])
    (wd / "data").mkdir(exist_ok=True)
    tifffile.imwrite(wd / "data" / "t.tif", data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "TZYX"})
    proc = run_snakemake(wd, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc)
    assert {s for r, s in jobs if r == "train"} == {"lapse_t0"}
    assert {s for r, s in jobs if r == "adopt"} == {"lapse_t1", "lapse_t2"}
    # a name that is no sample stops the run before any job, naming the cell
    bad = make_workdir(tmp_path, name="bad", samples={"a": {}, "b": {"model_from": "lapse_t9"}})
    proc = run_snakemake(bad, "-n")
    assert proc.returncode != 0
    assert "sample 'b', column 'model_from': 'lapse_t9' is not a sample of the sheet" in proc.stdout + proc.stderr
    # a time series whose file cannot be read is not expanded: the sample naming its time point 0
    # waits on that row (whose normalise will fail with the reader's message); the run goes on
    gone = make_workdir(tmp_path, name="gone", samples={"a": {}, "lost": {"path": "../data/lost.tif",
                                                                          "timepoint": "all"},
                                                        "b": {"model_from": "lost_t0"}})
    proc = run_snakemake(gone, "-n")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = _jobs(proc)
    assert ("train", "lost") in jobs and ("adopt", "b") in jobs and ("train", "a") in jobs


def test_a_later_time_point_under_the_margin_keeps_the_network_output_as_its_series_does(tmp_path):
    """A series whose later time points fell under the guard's margin (still gaining) switched to
    tricubic part-way, and its peaks and widths jumped there (a time-lapse walkthrough). A time
    point of the same file and channel keeps the network's output; another file does not."""
    from selfres import pipeline
    from selfres.settings import Settings, from_dict

    data = np.stack([tiny_volume(seed=t) for t in range(2)])
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "TZYX"})
    tifffile.imwrite(tmp_path / "other.tif", data[1], imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    config = {k: TINY_CONFIG[k] for k in ("train", "infer", "fov", "qc")}
    first = pipeline.restore(tmp_path / "t.tif", tmp_path / "t0.ome.zarr", scale=(1, 2, 2), device="cpu",
                             keep=tmp_path / "w0", settings=from_dict(Settings, config), timepoint=0)
    assert "model_worse_than_interpolation" not in first["flags"]
    # as if training had kept a later step (these tiny volumes leave step 0): a learned model is judged
    # by the guard's margin, which the rule is about
    description = tmp_path / "w0" / "model" / "model.json"
    record = json.loads(description.read_text())
    record["metadata"]["best_step"] = 2
    description.write_text(json.dumps(record))
    # a margin no gain clears, and no confidence rule: each time point gains, under the margin
    strict = from_dict(Settings, config | {"train": config["train"] | {"guard_margin_db": 50.0,
                                                                       "guard_confidence": 0.0}})
    later = pipeline.restore(tmp_path / "t.tif", tmp_path / "t1.ome.zarr", scale=(1, 2, 2), device="cpu",
                             settings=strict, timepoint=1, model_from=tmp_path / "w0" / "model")
    other = pipeline.restore(tmp_path / "other.tif", tmp_path / "o.ome.zarr", scale=(1, 2, 2), device="cpu",
                             settings=strict, model_from=tmp_path / "w0" / "model")
    for m in (later, other):
        assert m["self_validation"]["psnr_model"] > m["self_validation"]["psnr_interp"]
    assert "below_margin_kept_for_series" in later["flags"] and "model_worse_than_interpolation" not in later["flags"]
    assert io.read_ome_zarr(tmp_path / "t1.ome.zarr").attrs["content"] == "model"
    assert "model_worse_than_interpolation" in other["flags"]
    assert io.read_ome_zarr(tmp_path / "o.ome.zarr").attrs["content"] == "interpolation"
    # their layer names say which is the fall-back (a walkthrough: both were 'o'); the restoration has none
    names = {p: json.loads((tmp_path / p / ".zattrs").read_text())["multiscales"][0]["name"]
             for p in ("o.ome.zarr", "o_model.ome.zarr", "t1.ome.zarr")}
    assert names == {"o.ome.zarr": "other [tricubic]", "o_model.ome.zarr": "other [network, lost to tricubic]",
                     "t1.ome.zarr": "t"}, names


def test_a_model_trained_on_noise_is_flagged_in_the_samples_that_adopt_it(tmp_path):
    """A time series whose first frame was empty: its model, learned from noise, blurred the later
    time points, which read ok (a re-check of the time-lapse walkthrough)."""
    from selfres import pipeline
    from selfres.settings import Settings, from_dict

    rng = np.random.default_rng(3)
    data = np.stack([rng.poisson(100, size=tiny_volume().shape).astype(np.uint16), tiny_volume(seed=1)])
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "TZYX"})
    settings = from_dict(Settings, {k: TINY_CONFIG[k] for k in ("train", "infer", "fov", "qc")})
    first = pipeline.restore(tmp_path / "t.tif", tmp_path / "t0.ome.zarr", scale=(1, 2, 2), device="cpu",
                             keep=tmp_path / "w0", settings=settings, timepoint=0)
    meta = json.loads((tmp_path / "w0" / "model" / "model.json").read_text())["metadata"]
    assert meta["training_input"]["structure_share"] < 0.1 and "input_mostly_noise" in first["flags"]
    later = pipeline.restore(tmp_path / "t.tif", tmp_path / "t1.ome.zarr", scale=(1, 2, 2), device="cpu",
                             settings=settings, timepoint=1, model_from=tmp_path / "w0" / "model")
    assert "model_trained_on_noise" in later["flags"] and "input_mostly_noise" not in later["flags"]
    assert "model_trained_on_noise" not in first["flags"]  # its own input says it already
    # a model trained on structure: nothing said
    own = pipeline.restore(tmp_path / "t.tif", tmp_path / "o.ome.zarr", scale=(1, 2, 2), device="cpu",
                           keep=tmp_path / "w1", settings=settings, timepoint=1)
    assert json.loads((tmp_path / "w1" / "model" / "model.json").read_text())["metadata"]["training_input"][
        "structure_share"] > 0.5
    again = pipeline.restore(tmp_path / "t.tif", tmp_path / "a.ome.zarr", scale=(1, 2, 2), device="cpu",
                             settings=settings, timepoint=0, model_from=tmp_path / "w1" / "model")
    assert "model_trained_on_noise" not in again["flags"] and "model_trained_on_noise" not in own["flags"]


def test_restore_without_snakemake_takes_a_model_folder(shared, tmp_path):
    from selfres import pipeline

    wd, _ = shared
    m = pipeline.restore(wd / "data" / "b.tif", tmp_path / "b.ome.zarr", scale=(1, 2, 2), device="cpu",
                         model_from=wd / "results" / "a" / "model", keep=tmp_path / "work")
    assert m["adopted_from"] == "a" and (tmp_path / "b.ome.zarr").is_dir()
    meta = json.loads((tmp_path / "work" / "model" / "model.json").read_text())["metadata"]
    assert meta["adopted_from"]["sample"] == "a" and meta["sample"] == "b"


def test_isotropic_samples_share_a_model_of_the_same_axial_factor(tmp_path):
    """iso_b (same voxel size as iso_a) adopts iso_a's model and is judged on its own held-out
    slices; iso_c (another z step) is refused by its adopt job, naming both factors."""
    samples = {"iso_a": {"mode": "isotropic"}, "iso_b": {"mode": "isotropic", "model_from": "iso_a"},
               "iso_c": {"mode": "isotropic", "model_from": "iso_a", "voxel_size": "1.5,0.5,0.5"}}
    wd = make_workdir(tmp_path, samples=samples, config_overrides={
        "isotropic": {"steps": 6, "width": 8, "depth": 1, "patch_size": 24, "batch_size": 4}})
    # what the test reads (iso_a's own inference, QC and the reports are those of any sample)
    proc = run_snakemake(wd, "--keep-going", "results/iso_b/qc/metrics.json", "results/iso_c/model")
    assert proc.returncode != 0  # iso_c
    jobs = _jobs(proc)
    assert ("train", "iso_a") in jobs and ("adopt", "iso_b") in jobs and ("train", "iso_b") not in jobs
    res = wd / "results"
    meta = json.loads((res / "iso_b" / "model" / "model.json").read_text())["metadata"]
    assert meta["mode"] == "isotropic" and meta["adopted_from"]["sample"] == "iso_a"
    assert set(meta["self_validation"]) >= {"psnr_model", "psnr_interp", "ssim_model", "ssim_interp"}
    metrics = json.loads((res / "iso_b" / "qc" / "metrics.json").read_text())
    assert metrics["adopted_from"] == "iso_a" and metrics["output_shape"] == [16, 48, 48]
    # QC re-scores iso_b's held-out slices as the adopt job did
    assert metrics["self_validation"]["psnr_model"] == pytest.approx(meta["self_validation"]["psnr_model"])
    log = (res / "iso_c" / "logs" / "adopt.log").read_text()
    assert "its axial factor (voxel z / xy) is 3, the model of 'iso_a' was trained for 2" in log
