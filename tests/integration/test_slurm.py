"""The pipeline on a real Slurm: `snakemake --profile profiles/slurm` and `--profile slurm`.

Needs the one-node test cluster of ``scripts/slurm-test-cluster.sh`` (root + apt-get, or
Slurm already installed); skipped with the reason otherwise. Each run submits every job
with ``sbatch`` and the tests read the controller's record of those jobs
(``scontrol show job``), so "ran as a Slurm job" is what Slurm says, not what Snakemake
prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest_slurm import (SITE_PROFILE, TEST_PROFILE, ensure_slurm_cluster, jobs_seen,
                            snakemake_slurm_command, submitted_job_ids)
from workdir import SNAKEFILE, make_workdir, write_tiny_tiff

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GPU_RULES = {"train", "infer", "infer_block"}  # infer_block: infer.blocks > 1
CORE_RULES = {"normalise", "crop", "train", "infer", "qc", "report"}
#: rules that run in the Snakemake process itself, never submitted (summary: a job re-reads the inbox)
LOCAL_RULES = {"all", "summary"}


@pytest.fixture(scope="module")
def cluster():
    reason = ensure_slurm_cluster()
    if reason:
        pytest.skip(f"no Slurm test cluster here: {reason}")


def _run(cmd, wd, env=None, timeout=1500):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=wd, env=env, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """One full run of a one-sample workdir with the repository's slurm profile."""
    wd = make_workdir(tmp_path_factory.mktemp("slurm"), samples={"a": {}})
    out = _run(snakemake_slurm_command(workdir=wd), wd)
    return wd, out


def test_every_rule_ran_as_a_completed_slurm_job(slurm_run):
    wd, out = slurm_run
    ids = submitted_job_ids(out)
    jobs = jobs_seen(job_ids=ids)
    assert len(jobs) == len(ids), "some submitted jobs are unknown to the controller"
    ran = {j["rule"] for j in jobs}
    assert CORE_RULES <= ran, f"rules missing from Slurm: {CORE_RULES - ran}"
    assert all(j["State"] == "COMPLETED" for j in jobs), [(j["rule"], j["State"]) for j in jobs]
    assert all(os.path.realpath(j["WorkDir"]) == os.path.realpath(wd) for j in jobs)
    # nothing but the target rule `all` and the summary ran inside the Snakemake process itself
    assert set(re.findall(r"^localrule (\w+):", out, flags=re.M)) <= LOCAL_RULES
    # Snakemake's own job count (without the target `all`) equals what Slurm saw
    # one run record, written by the main process (spawned jobs run with --no-hooks)
    (record_file,) = (wd / "results" / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    submitted = [j for j in record["jobs"] if j["rule"] not in LOCAL_RULES]
    assert len(submitted) == len(jobs)
    assert {j["slurm_jobid"] for j in submitted} == set(ids)


def test_only_train_and_infer_request_the_gpu(slurm_run):
    wd, out = slurm_run
    jobs = jobs_seen(job_ids=submitted_job_ids(out))
    for j in jobs:
        if j["rule"] in GPU_RULES:
            assert j["gpus"] == 1 and j["Partition"] == "gpu", (j["rule"], j["gpus"], j["Partition"])
        else:
            assert j["gpus"] == 0 and j["Partition"] == "cpu", (j["rule"], j["gpus"], j["Partition"])
    assert {j["rule"] for j in jobs if j["gpus"]} >= {"train", "infer"}
    # cpus_per_gpu: threads — a GPU job's cores are its rule's threads (set-threads train: 2), so
    # torch's threads never exceed what Slurm granted (a literal cpus_per_gpu lowered as the docs
    # advised for pending jobs left train running 4 threads on 1 core)
    assert {int(j["NumCPUs"]) for j in jobs if j["rule"] == "train"} == {2}
    assert {int(j["NumCPUs"]) for j in jobs if j["rule"] == "infer"} == {1}


def test_train_asks_for_its_samples_time_budget(slurm_run):
    """Neither profile sets train's runtime: the rule asks for the sample's budget (TINY_CONFIG:
    train.max_minutes 1) half as long again plus an hour, 62 min; infer keeps the profile's."""
    wd, out = slurm_run
    jobs = jobs_seen(job_ids=submitted_job_ids(out))
    assert {j["TimeLimit"] for j in jobs if j["rule"] == "train"} == {"01:02:00"}
    assert {j["TimeLimit"] for j in jobs if j["rule"] == "infer"} == {"00:20:00"}


def test_outputs_are_complete(slurm_run):
    wd, _ = slurm_run
    res = wd / "results"
    for rel in ("a/normalized.ome.zarr", "a/restored.ome.zarr", "a/model", "a/train_fov.json",
                "a/qc/metrics.json", "a/report.html", "a/provenance.json", "summary.tsv", "summary.html"):
        assert (res / rel).exists(), rel
    for rule in ("normalise", "crop", "train", "infer", "qc", "report"):
        assert (res / "a" / "benchmarks" / f"{rule}.tsv").is_file(), rule
    metrics = json.loads((res / "a/qc/metrics.json").read_text())
    assert metrics["output_shape"] == [8, 96, 96]  # scale 1,2,2 on 8x48x48
    prov = json.loads((res / "a/provenance.json").read_text())
    assert prov["slurm_job_id"], "the report job should know its Slurm job id"
    summary = (res / "summary.tsv").read_text().splitlines()
    assert summary[1].split("\t")[1] in ("ok", "fallback_interpolation"), summary
    # a second run at once submits nothing
    proc = subprocess.run(snakemake_slurm_command(workdir=wd, extra=["-n"]), capture_output=True, text=True,
                          cwd=wd, timeout=300)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_named_profile_from_home_config(cluster, tmp_path):
    """`snakemake --profile slurm` with the profile copied to ~/.config/snakemake/slurm (README)."""
    home = tmp_path / "home"
    shutil.copytree(SITE_PROFILE, home / ".config" / "snakemake" / "slurm")
    wd = make_workdir(tmp_path, samples={"n": {}})
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(home)
    cmd = ["snakemake", "--profile", "slurm", "--workflow-profile", str(TEST_PROFILE),
           "-s", str(SNAKEFILE), "--directory", str(wd), "results/n/train_fov.json"]
    if shutil.which("snakemake") is None:
        pytest.skip("the snakemake console script is not on PATH")
    out = _run(cmd, wd, env=env, timeout=600)
    jobs = jobs_seen(job_ids=submitted_job_ids(out))
    assert {j["rule"] for j in jobs} == {"normalise", "crop"}
    assert all(j["State"] == "COMPLETED" and j["Partition"] == "cpu" for j in jobs)
    assert (wd / "results/n/train_fov.json").is_file()
    assert (wd / "logs" / "slurm").is_dir(), "slurm-logdir of the installed profile"


def test_an_inbox_file_that_settles_during_the_night_does_not_fail_the_summary(cluster, tmp_path):
    """An acquisition still being written when the run starts is left for the next run; by the
    time the summary runs it has settled. A summary submitted as a Slurm job re-read the inbox
    there, found one more sample and waited for its report.html: `Missing files after … seconds`,
    every retry alike, the night `error` (an operator's walkthrough). The summary runs in the
    Snakemake process, with the run's own plan."""
    wd = make_workdir(tmp_path, samples={}, config_overrides={
        "inbox": ["inbox/*.tif"], "inbox_settle_seconds": 8})
    write_tiny_tiff(wd / "inbox" / "late.tif")  # written now: young when the run starts
    # a summary job (the old way) starts 15 s after its submission, when late.tif has settled
    cmd = snakemake_slurm_command(workdir=wd, extra=[
        "--set-resources", "summary:slurm_extra='--begin=now+15'"])
    out = _run(cmd, wd, timeout=600)
    assert "inbox/late.tif changed" in out and "left for the next run" in out, out[-3000:]
    assert re.search(r"^localrule summary:", out, flags=re.MULTILINE), out[-3000:]
    rows = [line.split("\t") for line in (wd / "results" / "summary.tsv").read_text().splitlines()]
    assert [(r[0], r[1]) for r in rows[1:]] == [("late", "pending")], rows
