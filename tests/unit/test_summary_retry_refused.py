"""A job whose first attempt failed with an ERROR line and whose retries sbatch refused
(memory × attempt above the nodes', an operator's walkthrough with scancel): the summary said
only the first attempt's line ("… a rerun resumes …"), and not that the retries never ran."""

from __future__ import annotations

import os
import time

from selfres.summary import stage_summary

LOG = """
SNAKEMAKE
=========
  Date: {date}
  Host: vm
  Command: snakemake --profile slurm

Building DAG of jobs...
[Mon Dec  7 18:52:54 2026]
rule train:
    input: results/s/normalized.ome.zarr, results/s/train_fov.json
    output: results/s/model
    log: results/s/logs/train.log
    jobid: 13
    wildcards: sample=s
Job 13 has been submitted with SLURM jobid 257 (log: /w/logs/slurm/rule_train/s/257.log).
[Mon Dec  7 18:53:44 2026]
Error in rule train:
    message: SLURM-job '257' failed, SLURM status is: 'CANCELLED'. Detailed failure reason unavailable.
    jobid: 13
    output: results/s/model
    external_jobid: 257
Trying to restart job 13.
[Mon Dec  7 18:53:45 2026]
rule train:
    output: results/s/model
    log: results/s/logs/train.log
    jobid: 13
    wildcards: sample=s
[Mon Dec  7 18:53:45 2026]
Error in rule train:
    message: SLURM sbatch failed. The error message was 'sbatch: error: Memory specification can not be satisfied
sbatch: error: Batch job submission failed: Requested node configuration is not available'.
    jobid: 13
    output: results/s/model
Exiting because a job execution failed. Look above for error messages
"""


def test_a_retry_sbatch_refused_is_said_beside_the_first_attempts_error(tmp_path):
    results = tmp_path / "results"
    logs = results / "s" / "logs"
    logs.mkdir(parents=True)
    (logs / "train.log").write_text("ERROR: sample 's': selfres train was stopped by SIGTERM (a Slurm time "
                                    "limit, scancel, or the workflow stopping it); a rerun resumes\n")
    started = time.time() - 30
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG.format(date=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))))
    os.utime(logs / "train.log", (started + 20, started + 20))
    (row,) = stage_summary(results, ["s"], results / "summary.tsv", results / "summary.html",
                           modes={"s": "enhance"}, snakemake_log=log)
    assert row["status"] == "failed"
    assert row["error"].startswith("sample 's': selfres train was stopped by SIGTERM"), row["error"]
    assert "its train job's retry did not run: sbatch refused to submit it (Memory specification" in row["error"]
