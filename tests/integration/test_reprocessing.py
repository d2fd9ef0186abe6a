"""Reprocessing from config: a changed value reruns exactly the stages and samples it affects.

One real run of two samples (``a``, ``b``); each case edits the config or the sample sheet
of a copy of that finished working directory and reads the dry-run job list
(``snakemake -n``, default rerun triggers, ``params`` among them).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
import yaml
from workdir import make_workdir, run_snakemake

from selfres.runlog import parse_snakemake_log

pytestmark = pytest.mark.slow

CHAIN = ("normalise", "crop", "train", "infer", "qc", "report")


def _from(stage, *samples):
    """Jobs of ``stage`` and every later stage for ``samples``, plus the batch summary."""
    later = CHAIN[CHAIN.index(stage):]
    return {(r, s) for r in later for s in samples} | {("summary", None)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("reprocess"),
                      samples={"a": {}, "b": {"qc.beads": "false", "voxel_size": "1,0.5,0.5"}})
    proc = run_snakemake(wd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return wd


@pytest.fixture
def wd(finished, tmp_path):
    """A copy of the finished run (mtimes and Snakemake metadata kept) to edit."""
    dst = tmp_path / "wd"
    shutil.copytree(finished, dst, symlinks=True)
    return dst


def _jobs(wd, *args):
    proc = run_snakemake(wd, "-n", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return {(j["rule"], j["sample"]) for j in parse_snakemake_log(out)["jobs"]}


def _edit_config(wd, **sections):
    path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _edit_sheet(wd, sample, column, value):
    path = wd / "config" / "samples.tsv"
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    header = lines[0]
    if column not in header:
        header.append(column)
        for row in lines[1:]:
            row.append("")
    for row in lines[1:]:
        if row[0] == sample:
            row[header.index(column)] = value
    path.write_text("\n".join("\t".join(r) for r in lines) + "\n")


def test_unchanged_config_reruns_nothing(wd):
    assert _jobs(wd) == set()


# (what is changed, how, expected jobs)
CASES = [
    ("config train value", lambda wd: _edit_config(wd, train={"learning_rate": 0.000123}), _from("train", "a", "b")),
    ("sheet train column of one sample", lambda wd: _edit_sheet(wd, "a", "train.steps", "3"), _from("train", "a")),
    ("config infer value", lambda wd: _edit_config(wd, infer={"tile_size": [8, 16, 16]}), _from("infer", "a", "b")),
    # the guard scores the model with the inference extras, so they re-run training's guard too
    ("config back-projection (guarded at training)",
     lambda wd: _edit_config(wd, infer={"back_projection_iterations": 2}), _from("train", "a", "b")),
    ("config qc value", lambda wd: _edit_config(wd, qc={"max_resolution_slices": 3}), _from("qc", "a", "b")),
    ("sheet qc column of one sample", lambda wd: _edit_sheet(wd, "b", "qc.beads", "true"), _from("qc", "b")),
    ("config fov value", lambda wd: _edit_config(wd, fov={"holdout_fraction": 0.33}), _from("crop", "a", "b")),
    ("config normalise value", lambda wd: _edit_config(wd, normalise={"high_percentile": 99.37}),
     _from("normalise", "a", "b")),
    ("sheet scale of one sample", lambda wd: _edit_sheet(wd, "b", "scale", "2,2,2"), _from("crop", "b")),
    ("isotropic value (enhance samples only)", lambda wd: _edit_config(wd, isotropic={"fusion": "geometric"}), set()),
    # how an infer job runs, not what it writes: given apart from its parameters (--execution)
    ("execution values (tiles per pass, GPU memory share)", lambda wd: (
        _edit_config(wd, infer={"batch_size": 3, "gpu_memory_fraction": 0.25}),
        _edit_sheet(wd, "a", "infer.batch_size", "2")), set()),
    ("nightly settle time", lambda wd: _edit_config(wd, inbox_settle_seconds=5), set()),
    # the same values written otherwise: config, sheet columns, voxel size (a scale has one form: the schemas')
    ("same values written otherwise", lambda wd: (
        _edit_config(wd, normalise={"low_percentile": 1}, train={"max_minutes": 1}),
        _edit_sheet(wd, "a", "train.steps", "4.0"), _edit_sheet(wd, "a", "train.learning_rate", "1e-3"),
        _edit_sheet(wd, "a", "train.patch_size", "4, 16,16"),
        _edit_sheet(wd, "b", "voxel_size", "1.0, 0.5,0.50")), set()),
    # values the samples' choices leave unread (method cubic, noise match)
    ("unread degradation values", lambda wd: _edit_config(wd, train={"degradation": {
        "sigma_um": [2.0, 0.5, 0.5], "na": 1.2, "wavelength_um": 0.5, "refractive_index": 1.33,
        "microscope": "confocal", "psf_path": "optics/psf.tif", "gain": 50.0, "read_sigma": 0.01}}), set()),
    ("read degradation value", lambda wd: _edit_config(wd, train={"degradation": {"method": "block"}}),
     _from("train", "a", "b")),
]


@pytest.mark.parametrize("what, change, expected", CASES, ids=[c[0] for c in CASES])
def test_a_change_reruns_exactly_what_it_affects(wd, what, change, expected):
    change(wd)
    assert _jobs(wd) == expected, what


def test_another_path_to_the_checkout_or_to_the_results_folder_reruns_nothing(wd, tmp_path):
    """Every report (and so the summary) reran when the Snakefile was given by another path
    to the same checkout (a symlink, cron's /opt/selfres next to the interactive checkout):
    its folder was among the report's parameters. `results: results/` reran the summary at
    every run (Snakemake compares `results//summary.tsv` as text); `results: ""` wrote every
    sample to the file system's root."""
    import os
    import subprocess
    import sys

    from workdir import REPO_ROOT

    alias = tmp_path / "checkout"
    os.symlink(REPO_ROOT, alias)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(alias / "Snakefile"), "--directory", str(wd),
                           "--cores", "2", "-n"], capture_output=True, text=True, timeout=300, cwd=wd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and parse_snakemake_log(out)["jobs"] == [], out[-3000:]
    _edit_config(wd, results="results/")
    assert _jobs(wd) == set()
    _edit_config(wd, results="")
    proc = run_snakemake(wd, "-n")
    assert proc.returncode != 0 and "results" in proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_params_trigger_alone_finds_the_change(wd):
    """`snakemake -n --rerun-triggers params`: the jobs a parameter change alone reruns.

    (Not `--list-changes params`: Snakemake 9.27.1 lists every output with recorded
    parameters there, changed or not; see docs/operations.md.)
    """
    _edit_sheet(wd, "a", "train.steps", "3")
    assert _jobs(wd, "--rerun-triggers", "params") == _from("train", "a")


@pytest.mark.parametrize("missing, stage", [("model", "train"), ("normalized.ome.zarr", "normalise")])
def test_a_missing_intermediate_reruns_its_step_and_everything_after(wd, missing, stage):
    """A retrain killed after Snakemake removed model/ (or an intermediate deleted to save
    disk) left restored.ome.zarr and the report in place, and the next run said "Nothing to
    be done": the sample's outputs no longer came from any model on disk."""
    shutil.rmtree(wd / "results" / "a" / missing)
    assert _jobs(wd) == _from(stage, "a")


def test_an_acquisition_archived_after_its_night_keeps_its_sample_done(wd):
    """Facilities move raw files away once processed: the sample stays done (said at the start),
    a later training change still retrains it from its normalised copy; it was rerun from
    normalise, which failed, deleted the normalised copy and turned the sample failed."""
    (wd / "data" / "a.tif").rename(wd / "data" / "a.archived.tif")
    proc = run_snakemake(wd, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and {(j["rule"], j["sample"]) for j in parse_snakemake_log(out)["jobs"]} == set()
    assert "sample 'a': its acquisition data/a.tif no longer exists; the sample goes on from its normalised copy" \
        in proc.stderr, proc.stderr[-2000:]
    _edit_config(wd, train={"learning_rate": 0.000123})
    assert _jobs(wd) == _from("train", "a", "b")
    # the sheet naming another file that is not there (a typo, a re-acquisition not yet copied) is
    # not the archived acquisition: that sample fails at normalise, as any missing file does (tried
    # once: normalise_once)
    _edit_sheet(wd, "a", "path", "../data/a_reacquired.tif")
    proc = run_snakemake(wd, "-n")
    assert "sample 'a': its acquisition data/a_reacquired.tif does not exist" in proc.stderr, proc.stderr[-2000:]
    assert ("normalise_once", "a") in {(j["rule"], j["sample"])
                                       for j in parse_snakemake_log(proc.stdout + proc.stderr)["jobs"]}


def test_a_rerun_for_the_guards_extras_takes_the_finished_training_up(wd):
    """A guard's extra (`infer.back_projection_iterations` here; `infer.ensemble` takes the same
    path at the stage level, test_pipeline_misc, and costs 16 forwards) reruns the train jobs (the
    guard scores what inference writes), which take each sample's finished training up from its
    model.work/ instead of training again."""
    import json

    _edit_config(wd, infer={"back_projection_iterations": 2})
    proc = run_snakemake(wd, "--until", "train")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for sample in ("a", "b"):
        log = (wd / "results" / sample / "logs" / "train.log").read_text()
        assert "taken up, not trained again" in log and not re.search(r"step \d+/\d+ loss", log), log[-2000:]
        meta = json.loads((wd / "results" / sample / "model" / "model.json").read_text())["metadata"]
        assert meta["training_taken_up"] is True and meta["inference_extras"]["back_projection_iterations"] == 2


def test_forcerun_reruns_a_stage_for_one_sample(wd):
    jobs = _jobs(wd, "--forcerun", "results/b/qc/metrics.json")
    assert jobs == _from("qc", "b")


def test_forcerun_until_stops_before_qc(wd):
    jobs = _jobs(wd, "--forcerun", "results/b/model", "--until", "infer")
    assert jobs == {("train", "b"), ("infer", "b")}


def _train_command(wd, sample, stage="train"):
    """The shell command of ``sample``'s ``stage`` job in a dry run (``-p``)."""
    return _stage_commands(wd, sample, (stage,))[stage]


def _stage_commands(wd, sample, stages):
    """``{stage: shell command}`` of ``sample``'s jobs of ``stages``, from one dry run."""
    proc = run_snakemake(wd, "-n", "-p", "--forceall")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    commands = {}
    for stage in stages:
        lines = [ln[ln.index(f"selfres {stage} "):] for ln in out.splitlines()
                 if f"selfres {stage} " in ln and f"--sample {sample} " in ln]
        assert len(lines) == 1, out[-4000:]
        commands[stage] = lines[0]
    return commands


def test_an_enhance_only_train_value_does_not_retrain_isotropic_samples(tmp_path):
    """Isotropic mode's restorer has its own net, loss, steps and patches (`isotropic.*`); the
    `train` values it does not read (and the noise model of `train.degradation`) are left out
    of its train job's parameters, so changing them reruns only the enhance samples."""
    wd = make_workdir(tmp_path, samples={"e": {}, "i": {"mode": "isotropic", "voxel_size": "2,0.5,0.5"}})
    before, report_before = _train_command(wd, "i"), _train_command(wd, "i", "report")
    enhance_before = _train_command(wd, "e")
    train = _settings(before)["train"]
    assert not {"steps", "loss", "width", "patch_size"} & set(train), train
    assert train["guard_margin_db"] == 0.2  # the guard's margin is read in both modes
    assert "noise" not in train["degradation"] and train["max_minutes"] == 1.0
    assert "infer" not in _settings(before)  # nor does it read infer.amp
    _edit_config(wd, train={"steps": 7, "loss": "mse", "width": 4, "degradation": {"noise": "none"}})
    assert _train_command(wd, "i") == before
    assert _train_command(wd, "i", "report") == report_before  # its provenance records what it reads
    assert _train_command(wd, "e") != enhance_before  # the enhance sample's does change
    _edit_config(wd, train={"learning_rate": 0.000123})  # the restorer's learning rate: read
    assert _train_command(wd, "i") != before
    _edit_config(wd, train={"guard_margin_db": 0.5})  # and the guard's margin
    assert _settings(_train_command(wd, "i"))["train"]["guard_margin_db"] == 0.5
    _edit_config(wd, train={"degradation": {"noise": "none", "method": "gaussian", "sigma_um": [2.0, 0.5, 0.5]}})
    assert _settings(_train_command(wd, "i"))["train"]["degradation"]["sigma_um"] == [2.0, 0.5, 0.5]  # the axial σ


def _settings(command):
    argv = shlex.split(command.split(" > ")[0])
    return json.loads(argv[argv.index("--settings") + 1])


def test_reordering_the_config_file_reruns_nothing(tmp_path):
    """The report's parameters (the configuration its provenance records) are written with
    sorted keys: the same values in another order are no change."""
    wd = make_workdir(tmp_path, samples={"e": {}})
    before = _train_command(wd, "e", "report")
    path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(cfg.items())}
    path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert path.read_text() != yaml.safe_dump(cfg, sort_keys=False)
    assert _train_command(wd, "e", "report") == before


def _execution(command):
    argv = shlex.split(command.split(" > ")[0])
    return json.loads(argv[argv.index("--execution") + 1])


def test_an_execution_value_reaches_the_infer_job_and_not_its_parameters(tmp_path):
    """Tiles per pass and the GPU memory share decide how an infer job runs, not what it
    writes: the job's --execution carries them (a resource, which Snakemake does not compare
    between runs), while its --settings and the report's configuration keep the defaults' text."""
    wd = make_workdir(tmp_path, samples={"a": {}})
    before = _stage_commands(wd, "a", ("infer", "report"))
    _edit_config(wd, infer={"batch_size": 3, "gpu_memory_fraction": 0.25})
    after = _stage_commands(wd, "a", ("infer", "report"))
    assert _execution(after["infer"]) == {"infer": {"batch_size": 3, "gpu_memory_fraction": 0.25}}
    assert _settings(after["infer"]) == _settings(before["infer"]) and after["report"] == before["report"]
    assert _settings(before["infer"])["infer"]["batch_size"] == 1  # given, as before an update: same text


def test_an_isotropic_inference_value_reinfers_without_retraining(tmp_path):
    """`isotropic.fusion` and `isotropic.infer_batch` are read by inference only: changing them
    leaves the isotropic sample's train job as it was; fusion changes its infer job's settings,
    infer_batch (slices per pass, not the output) only its --execution."""
    wd = make_workdir(tmp_path, samples={"i": {"mode": "isotropic", "voxel_size": "2,0.5,0.5"}})
    before = _stage_commands(wd, "i", ("train", "infer"))
    assert set(_settings(before["infer"])["isotropic"]) == {"fusion", "infer_batch"}
    assert not {"fusion", "infer_batch"} & set(_settings(before["train"])["isotropic"])
    _edit_config(wd, isotropic={"fusion": "geometric", "infer_batch": 2})
    after = _stage_commands(wd, "i", ("train", "infer"))
    assert after["train"] == before["train"]
    assert _settings(after["infer"])["isotropic"] == {"fusion": "geometric", "infer_batch": 8}
    assert _execution(after["infer"])["isotropic"] == {"infer_batch": 2}
    _edit_config(wd, isotropic={"steps": 3})  # a training value: retrains, and does not reach infer
    last = _stage_commands(wd, "i", ("train", "infer"))
    assert last["train"] != before["train"] and last["infer"] == after["infer"]
    # enhance's inference extras are not isotropic inference's: they rerun nothing here
    assert not {"ensemble", "back_projection_iterations", "back_projection_shrink"} & set(_settings(last["infer"])["infer"])
    _edit_config(wd, infer={"back_projection_iterations": 3, "ensemble": True, "back_projection_shrink": False})
    assert _stage_commands(wd, "i", ("train", "infer")) == last


def test_a_scale_on_an_isotropic_row_is_named_as_unused_and_not_recorded(tmp_path):
    """Isotropic mode's grid follows the voxel size: a `scale` in its row is said to be unused
    when the run starts, and its provenance does not record one."""
    wd = make_workdir(tmp_path, samples={"i": {"mode": "isotropic", "voxel_size": "2,0.5,0.5", "scale": "1,2,2"}})
    proc = run_snakemake(wd, "-n", "-p", "--forceall")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample 'i': scale 1,2,2 is not used in isotropic mode" in proc.stderr
    report = [ln[ln.index("selfres report "):] for ln in (proc.stdout + proc.stderr).splitlines()
              if "selfres report " in ln]
    argv = shlex.split(report[0].split(" > ")[0])
    assert json.loads(argv[argv.index("--config") + 1])["scale"] is None


def test_a_nested_command_line_config_value_is_read_as_its_type(tmp_path):
    """`--config 'isotropic={"steps": 70}'` reached selfres as the string '70' (Snakemake reads
    nested values with YAML's base loader) and the run stopped: "'70' is not of type 'integer'"."""
    wd = make_workdir(tmp_path, samples={"i": {"mode": "isotropic", "voxel_size": "2,0.5,0.5"}})
    proc = run_snakemake(wd, "-n", "-p", "--forceall", "--config",
                         'isotropic={"steps": 70, "fusion": "geometric"}', 'train={"patch_size": [8, 32, 32]}')
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    train = [ln for ln in out.splitlines() if "selfres train " in ln and "--sample i " in ln]
    assert len(train) == 1 and _settings(train[0][train[0].index("selfres train "):])["isotropic"]["steps"] == 70


def test_an_adopting_sample_reruns_adopt_only_for_the_train_values_it_reads(tmp_path):
    """model_from: the model is its source's, and adopt reads of `train` only the guard's values;
    the adopting row's other train columns were passed to adopt and reran it (and its report)."""
    wd = make_workdir(tmp_path, samples={"a": {}, "b": {"model_from": "a"}})
    before = _stage_commands(wd, "b", ("adopt", "report"))
    _edit_sheet(wd, "b", "train.steps", "3")
    _edit_sheet(wd, "b", "train.degradation.method", "block")
    assert _stage_commands(wd, "b", ("adopt", "report")) == before
    _edit_sheet(wd, "b", "train.guard_margin_db", "0.5")
    after = _stage_commands(wd, "b", ("adopt", "report"))
    assert after["adopt"] != before["adopt"] and _settings(after["adopt"])["train"]["guard_margin_db"] == 0.5


def _write_psf(path, sigma=(1.0, 0.8, 0.8)):
    import numpy as np
    import tifffile
    from scipy import ndimage

    psf = np.zeros((7, 9, 9), np.float32)
    psf[3, 4, 4] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, ndimage.gaussian_filter(psf, sigma))


def test_a_replaced_psf_file_reruns_the_stages_that_read_it(tmp_path):
    """train.degradation.method psf: the PSF file is an input of train, infer and qc, so a
    replaced file retrains (its path alone was a parameter: nothing reran); model.json records
    its SHA-256; the same file touched, or its path written otherwise, reruns nothing."""
    import hashlib
    import os

    wd = make_workdir(tmp_path, samples={"a": {}},
                      config_overrides={"train": {"degradation": {"method": "psf", "psf_path": "optics/psf.tif"}}})
    psf = wd / "optics" / "psf.tif"
    _write_psf(psf)
    proc = run_snakemake(wd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    model = json.loads((wd / "results" / "a" / "model" / "model.json").read_text())["metadata"]
    assert model["psf"] == {"path": "optics/psf.tif", "sha256": hashlib.sha256(psf.read_bytes()).hexdigest()}
    assert json.loads((wd / "results" / "a" / "provenance.json").read_text())["model"]["psf"] == model["psf"]
    assert _jobs(wd) == set()
    os.utime(psf)  # touched, same contents (a file under 1 MB: Snakemake compares its checksum)
    assert _jobs(wd) == set()
    _edit_config(wd, train={"degradation": {"method": "psf", "psf_path": "./optics//psf.tif"}})
    assert _jobs(wd) == set()
    psf.rename(wd / "psf_archived.tif")  # moved away after training: its model names it, nothing reruns
    assert _jobs(wd) == set()
    (wd / "psf_archived.tif").rename(psf)
    _write_psf(psf, sigma=(2.0, 0.6, 0.6))  # another PSF measured, same name
    assert _jobs(wd) == _from("train", "a")


def _train_runtimes(wd, *args):
    """``{sample: runtime}`` of the train jobs a dry run lists (the rule's `runtime` resource)."""
    proc = run_snakemake(wd, "-n", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    found = {}
    for block in out.split("\n\n"):
        for job in block.split("rule train:")[1:]:
            sample = re.search(r"wildcards: sample=(\S+)", job)[1]
            found[sample] = int(re.search(r"resources: .*\bruntime=(\d+)", job)[1])
    return found


def test_a_train_job_asks_the_cluster_for_its_samples_time_budget(wd):
    """The train rule's `runtime` (Slurm's time limit, minutes) is the sample's budget half as
    long again plus an hour: a sheet column raising train.max_minutes to 100 asks for 210 min
    (a fixed 240 min killed a budget above it on the first attempt, and booked four hours for
    the default's few minutes); changing it reruns that sample's training only."""
    assert _train_runtimes(wd, "--forcerun", "train") == {"a": 62, "b": 62}  # TINY_CONFIG: 1 min
    _edit_sheet(wd, "a", "train.max_minutes", "100")
    assert _jobs(wd) == _from("train", "a")
    assert _train_runtimes(wd, "--forcerun", "train") == {"a": 210, "b": 62}
    _edit_sheet(wd, "b", "mode", "isotropic")
    _edit_sheet(wd, "b", "isotropic.degradation", "learned")  # its GAN stage's 8 min come first
    assert _train_runtimes(wd, "--forcerun", "train")["b"] == 60 + 14


def test_an_acquisition_replaced_by_an_older_file_restores_its_sample_again(wd):
    """`cp -p` or `rsync -a` of a file made before the last run: its time is older than the
    sample's outputs, so Snakemake saw nothing to do and the sample kept the old file's results.
    The workflow compares the file with what its normalised copy recorded, dates that copy
    before the file, and the sample's chain reruns — once."""
    import os

    from workdir import write_tiny_tiff

    from selfres.io import file_checksum, read_ome_zarr

    raw = wd / "data" / "a.tif"
    write_tiny_tiff(raw, seed=7)
    old = (wd / "results" / "a" / "normalized.ome.zarr" / ".snakemake_timestamp").stat().st_mtime_ns - 3600 * 10**9
    os.utime(raw, ns=(old, old))
    dry = run_snakemake(wd, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    assert "sample 'a': its acquisition data/a.tif is not the file its normalised copy was made from" in dry.stderr
    assert "the next run restores the sample again" in dry.stderr
    proc = run_snakemake(wd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "this run restores the sample again from the file now there" in out
    assert {(j["rule"], j["sample"]) for j in parse_snakemake_log(out)["jobs"]} == _from("normalise", "a")
    attrs = read_ome_zarr(wd / "results" / "a" / "normalized.ome.zarr", lazy=True).attrs
    assert attrs["source_checksum"] == file_checksum(raw)
    assert _jobs(wd) == set()
    assert "is not the file" not in run_snakemake(wd, "-n").stderr
