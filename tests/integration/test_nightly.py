"""Nightly batches from the config's ``inbox``; provenance per sample and per run.

The fast tests drive :func:`selfres.inbox.scan_inbox` on files; the slow ones run the
real ``snakemake`` CLI on a working directory whose sample sheet is empty, so that every
sample comes from the inbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from workdir import make_workdir, run_snakemake, snakemake_command, write_tiny_tiff

from selfres.errors import ConfigError
from selfres.inbox import last_change, safe_id, scan_inbox
from selfres.runlog import RUNS_TSV_COLUMNS, parse_snakemake_log, write_run_record

PER_SAMPLE_RULES = {"normalise", "crop", "train", "infer", "qc", "report"}


# ---------------------------------------------------------------- inbox rules (fast)

@pytest.mark.parametrize(
    "name, sid",
    [
        ("beads.tif", "beads"),
        ("/data/in/beads.TIFF", "beads"),
        ("2026-11-30 mouse #3.ome.tif", "2026-11-30_mouse_3"),
        ("stack.ome.zarr/", "stack"),
        ("run.zarr", "run"),
        ("_hidden.tif", "hidden"),
        ("v1.2_cell.tif", "v1.2_cell"),
        ("###.tif", "sample"),
        ("Ärger.tif", "rger"),
        ("scan7.czi", "scan7"),  # a vendor's file gets the id its conversion (scan7.ome.tif) will have
        ("/in/cells.ND2", "cells"),
        ("notes.txt", "notes.txt"),
        ("/in/logs.tif", "logs_sample"),  # what the workflow writes at the top of results/ (any case)
        ("/in/RUNS.ome.tif", "RUNS_sample"),
        ("/in/summary.tsv.tif", "summary.tsv_sample"),
        ("/in/logs2.tif", "logs2"),
    ],
)
def test_safe_id(name, sid):
    assert safe_id(name) == sid
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", safe_id(name))


@pytest.mark.parametrize("name", ["img_" + "0" * 25 + ".tif", "run" + "ab" * 30 + ".tif", "x" * 210 + ".tif",
                                  "y" * 300 + "_0001.ome.tif", "z" * 193 + "0" * 20 + ".tif"],
                         ids=["periodic", "periodic-pairs", "long", "longer", "long-and-periodic"])
def test_an_inbox_file_name_always_makes_an_id_a_sheet_row_may_have(name):
    """A file name of 200 characters and more, or ending in one part repeated 20 times (which
    Snakemake refuses for every sample): its inbox row was refused, and that stopped every
    night's run, fail_alone or not, until someone renamed the file."""
    from selfres.sheet import MAX_SAMPLE_ID_LENGTH, inbox_table, periodic_end

    sid = safe_id(name)
    assert len(sid) <= MAX_SAMPLE_ID_LENGTH and not periodic_end(sid)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sid)
    assert list(inbox_table([{"sample": sid, "path": f"/in/{name}"}], {})["sample"]) == [sid]


@pytest.mark.parametrize("length", [200, 201])
def test_an_inbox_id_is_cut_only_past_the_longest_a_sheet_takes(length):
    """A name of exactly 200 characters (not periodic) is its own id; one of 201 is cut to 200
    with a checksum, which the sheet takes (an id of 201 stopped the night)."""
    from selfres.sheet import MAX_SAMPLE_ID_LENGTH, inbox_table

    stem = "".join("abcdefghij"[(i * 7 + i // 10) % 10] for i in range(length))
    sid = safe_id(stem + ".tif")
    assert (sid == stem) == (length <= MAX_SAMPLE_ID_LENGTH) and len(sid) <= MAX_SAMPLE_ID_LENGTH
    assert list(inbox_table([{"sample": sid, "path": f"/in/{stem}.tif"}], {})["sample"]) == [sid]


def test_long_inbox_file_names_that_differ_only_at_their_end_make_two_ids():
    first, second = safe_id("cell_" + "a" * 250 + "_t1.tif"), safe_id("cell_" + "a" * 250 + "_t2.tif")
    assert first != second and first[:190] == second[:190]


def _later(seconds=10_000):
    return time.time() + seconds


def test_scan_takes_settled_files_and_leaves_young_ones(tmp_path):
    write_tiny_tiff(tmp_path / "a.tif")
    pattern = str(tmp_path / "*.tif")
    young = scan_inbox([pattern], settle_seconds=600)
    assert young.rows == [] and [p for p, _ in young.waiting] == [str(tmp_path / "a.tif")]
    assert "left for the next run" in young.messages()[0]
    settled = scan_inbox([pattern], settle_seconds=600, now=_later())
    assert settled.rows == [{"sample": "a", "path": str(tmp_path / "a.tif")}] and not settled.waiting


def test_inbox_leaves_out_the_results_folder_and_names_snakemake_patterns(tmp_path, monkeypatch):
    """A broad pattern (``**/*.ome.zarr``) took the workflow's own stores under ``results/`` as
    new acquisitions; ``pos{2}.tif`` stopped the whole night in Snakemake's planning (a wildcard
    in an input): it is left out (fails alone) with its name; ``~`` is the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "results" / "a").mkdir(parents=True)
    write_tiny_tiff(tmp_path / "results" / "a" / "restored.tif")
    write_tiny_tiff(tmp_path / "new.tif")
    write_tiny_tiff(tmp_path / "pos{2}.tif")
    skip = scan_inbox(["~/**/*.tif"], settle_seconds=0, on_clash="skip", exclude=[str(tmp_path / "results")])
    assert skip.rows == [{"sample": "new", "path": str(tmp_path / "new.tif")}]
    assert any("pos{2}.tif" in m and "left out" in m for m in skip.messages())
    alone = skip.refusals()
    assert list(alone) == ["pos_2_"] and "rename" in alone["pos_2_"] and not skip.messages()
    with pytest.raises(ConfigError, match=re.escape("pos{2}.tif")):
        scan_inbox(["~/*.tif"], settle_seconds=0)


def test_an_inbox_pattern_that_cannot_match_is_named_not_silently_empty(tmp_path):
    """``inbox/*.{tif,tiff}`` (shell braces, read literally by glob) and a folder that is not
    mounted gave every night "nothing to do", without a word."""
    write_tiny_tiff(tmp_path / "inbox" / "a.tif")
    (tmp_path / "empty").mkdir()
    scan = scan_inbox([str(tmp_path / "inbox" / "*.{tif,tiff}"), str(tmp_path / "mnt" / "scope" / "*.tif"),
                       str(tmp_path / "empty" / "*.tif"), str(tmp_path / "inbox" / "*.tif")], settle_seconds=0)
    assert [r["sample"] for r in scan.rows] == ["a"]
    lines = [m for m in scan.messages() if "matched nothing" in m]
    assert len(lines) == 2, lines  # an empty folder is no mistake
    assert "{a,b}" in lines[0] and "does not exist" in lines[1] and str(tmp_path / "mnt" / "scope") in lines[1]


def test_copy_that_restores_an_old_mtime_still_waits(tmp_path):
    """cp -p / rsync -a set the source's old mtime; the ctime still says 'just written'."""
    f = write_tiny_tiff(tmp_path / "a.tif")
    os.utime(f, (time.time() - 86_400, time.time() - 86_400))
    scan = scan_inbox([str(tmp_path / "*.tif")], settle_seconds=600)
    assert scan.rows == [] and scan.waiting


def test_zarr_store_with_a_fresh_chunk_waits(tmp_path):
    store = tmp_path / "in" / "s.ome.zarr"
    (store / "0" / "0").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    t0 = last_change(store)
    time.sleep(0.05)
    (store / "0" / "0" / "c1").write_bytes(b"x")
    assert last_change(store) > t0
    scan = scan_inbox([str(tmp_path / "in" / "*.zarr")], settle_seconds=600, now=last_change(store) + 1)
    assert scan.rows == [] and scan.waiting


def test_sheet_rows_win_by_id_and_by_path(tmp_path):
    write_tiny_tiff(tmp_path / "a.tif")
    write_tiny_tiff(tmp_path / "b.tif")
    write_tiny_tiff(tmp_path / "c.tif")
    scan = scan_inbox([str(tmp_path / "*.tif")], settle_seconds=0, known_ids=["a"],
                      known_paths=[str(tmp_path / "b.tif")], now=_later())
    assert [r["sample"] for r in scan.rows] == ["c"]
    assert sorted(sid for _, sid in scan.shadowed) == ["a", "b"]


def test_a_sheet_path_spelt_otherwise_still_shadows_the_inbox_file(tmp_path, monkeypatch):
    """The sheet keeps a relative path (inbox/scan1.tif) that the scan finds by an absolute
    pattern, and a link: the same acquisition, not a second sample under another id."""
    write_tiny_tiff(tmp_path / "inbox" / "scan1.tif")
    write_tiny_tiff(tmp_path / "inbox" / "scan2.tif")
    (tmp_path / "alias").symlink_to(tmp_path / "inbox")
    monkeypatch.chdir(tmp_path)
    scan = scan_inbox([str(tmp_path / "inbox" / "*.tif")], settle_seconds=0, known_ids=["day1", "day2"],
                      known_paths=["inbox/scan1.tif", "alias/scan2.tif"], now=_later())
    assert scan.rows == [] and sorted(sid for _, sid in scan.shadowed) == ["scan1", "scan2"]


def test_a_folder_named_like_the_results_folder_is_not_taken_for_it(tmp_path):
    """Only files inside an excluded folder are left out, not those of a sibling whose name
    starts with it (results_raw/ beside results/)."""
    write_tiny_tiff(tmp_path / "results" / "a" / "x.tif")
    write_tiny_tiff(tmp_path / "results_raw" / "scan2.tif")
    scan = scan_inbox([str(tmp_path / "*" / "*.tif"), str(tmp_path / "results" / "*" / "*.tif")],
                      settle_seconds=0, now=_later(), exclude=[str(tmp_path / "results")])
    assert [r["sample"] for r in scan.rows] == ["scan2"]


def test_two_files_with_one_id_are_an_error_naming_both(tmp_path):
    write_tiny_tiff(tmp_path / "d1" / "stack.tif")
    write_tiny_tiff(tmp_path / "d2" / "stack.ome.tif")
    with pytest.raises(ConfigError, match=r"'stack' from .*d1/stack\.tif, .*d2/stack\.ome\.tif"):
        scan_inbox([str(tmp_path / "**" / "*.tif")], settle_seconds=0, now=_later())


def test_inside_a_job_clashing_files_are_left_out_not_fatal(tmp_path):
    write_tiny_tiff(tmp_path / "d1" / "stack.tif")
    write_tiny_tiff(tmp_path / "d2" / "stack.tif")
    write_tiny_tiff(tmp_path / "d2" / "other.tif")
    scan = scan_inbox([str(tmp_path / "**" / "*.tif")], settle_seconds=0, now=_later(), on_clash="skip")
    assert [r["sample"] for r in scan.rows] == ["other"]
    assert scan.clashes[0][0] == "stack" and "ERROR" in scan.messages()[0]


def test_a_vendors_file_beside_its_conversion_is_left_to_it(tmp_path):
    """The error of ``scan7.czi`` gives ``bfconvert … scan7.ome.tif``, which writes beside it:
    the next night the conversion is sample ``scan7``, not a clash of two files."""
    (tmp_path / "scan7.czi").write_bytes(b"ZISRAWFILE" + bytes(64))
    alone = scan_inbox([str(tmp_path / "*")], settle_seconds=0, now=_later())
    assert alone.rows == [{"sample": "scan7", "path": str(tmp_path / "scan7.czi")}]  # fails, with the advice
    write_tiny_tiff(tmp_path / "scan7.ome.tif")
    for on_clash in ("error", "skip"):
        scan = scan_inbox([str(tmp_path / "*")], settle_seconds=0, now=_later(), on_clash=on_clash)
        assert scan.rows == [{"sample": "scan7", "path": str(tmp_path / "scan7.ome.tif")}]
        assert scan.messages() == [f"selfres inbox: {tmp_path / 'scan7.czi'} left to its conversion "
                                   f"{tmp_path / 'scan7.ome.tif'}"]
    write_tiny_tiff(tmp_path / "scan7.tif")  # two readable files of one id: a clash as ever
    with pytest.raises(ConfigError, match="acquisitions with the same sample id"):
        scan_inbox([str(tmp_path / "*")], settle_seconds=0, now=_later())


def test_a_vendors_file_is_not_left_to_a_file_of_its_name_in_another_folder(tmp_path):
    """Two microscopes, two folders, one file name: zeiss/sample1.czi was dropped as 'left to its
    conversion leica/sample1.ome.tif' and never processed or reported. It is a clash."""
    (tmp_path / "zeiss").mkdir()
    (tmp_path / "zeiss" / "sample1.czi").write_bytes(b"ZISRAWFILE" + bytes(64))
    write_tiny_tiff(tmp_path / "leica" / "sample1.ome.tif")
    scan = scan_inbox([str(tmp_path / "**" / "*.czi"), str(tmp_path / "**" / "*.tif")], settle_seconds=0,
                      now=_later(), on_clash="skip")
    assert scan.converted == [] and scan.rows == []
    assert [sid for sid, _ in scan.clashes] == ["sample1"]


def test_one_file_matched_by_two_patterns_is_one_sample(tmp_path):
    write_tiny_tiff(tmp_path / "a.tif")
    scan = scan_inbox([str(tmp_path / "*.tif"), str(tmp_path / "a.*")], settle_seconds=0, now=_later())
    assert scan.rows == [{"sample": "a", "path": str(tmp_path / "a.tif")}]


SLURM_LOG = """\
SNAKEMAKE
=========
  Date: 2026-11-30 09:02:09
  Workflow ID: 84d84b32-53b4-48d4-9a05-6b024578962c
  Host: vm
  User: root
  Snakemake version: 9.27.1
  Command: snakemake --profile slurm
  Config file(s): ['config/config.yaml']
  Config MD5: 618c7ef1079572f1a196ca1277ccf588

[Mon Nov 30 09:02:10 2026]
rule normalise:
    input: data/a.tif
    output: results/a/normalized.ome.zarr
    jobid: 2
    reason: Missing output files: results/a/normalized.ome.zarr
    wildcards: sample=a
Job 2 has been submitted with SLURM jobid 18 (log: /w/logs/slurm/rule_normalise/a/18.log).
[Mon Nov 30 09:02:46 2026]
Finished jobid: 2 (Rule: normalise)
[Mon Nov 30 09:02:46 2026]
rule crop:
    jobid: 4
    wildcards: sample=a
Job 4 has been submitted with SLURM jobid 19 (log: /w/logs/slurm/rule_crop/a/19.log).
[Mon Nov 30 09:03:00 2026]
Error in rule crop:
    message: SLURM-job '19' failed
    jobid: 4
"""


def test_run_log_parser_reads_slurm_jobs_and_failures():
    parsed = parse_snakemake_log(SLURM_LOG)
    assert parsed["header"]["workflow_id"].startswith("84d84b32") and parsed["header"]["host"] == "vm"
    assert parsed["header"]["started"] == "2026-11-30 09:02:09"
    (norm, crop) = parsed["jobs"]
    assert norm == {"jobid": 2, "rule": "normalise", "sample": "a", "wildcards": "sample=a",
                    "reason": "Missing output files: results/a/normalized.ome.zarr",
                    "output": "results/a/normalized.ome.zarr", "started": "2026-11-30T09:02:10", "status": "finished", "slurm_jobid": 18,
                    "slurm_log": "/w/logs/slurm/rule_normalise/a/18.log", "ended_by": None,
                    "attempts": [{"started": "2026-11-30T09:02:10", "status": "finished", "slurm_jobid": 18,
                                  "slurm_log": "/w/logs/slurm/rule_normalise/a/18.log", "ended_by": None}]}
    assert crop["status"] == "failed" and crop["slurm_jobid"] == 19
    # show-failed-logs copies the failed Slurm job's log, its own Snakemake output, into the run's log:
    # its job (jobid 0, "Forced execution") is not one of this run's
    quoted = SLURM_LOG + """    log: results/a/logs/crop.log, /w/logs/slurm/rule_crop/a/19.log (check log file(s) for error details)
Logfile /w/logs/slurm/rule_crop/a/19.log:
================================================================================
SNAKEMAKE
=========
  Command: snakemake --target-jobs crop:sample=a --mode remote
[Mon Nov 30 09:02:50 2026]
rule crop:
    jobid: 0
    reason: Forced execution
    wildcards: sample=a
[Mon Nov 30 09:02:51 2026]
Error in rule crop:
    jobid: 0
================================================================================
[Mon Nov 30 09:03:10 2026]
rule qc:
    jobid: 5
    wildcards: sample=b
"""
    assert [(j["rule"], j["jobid"], j["status"]) for j in parse_snakemake_log(quoted)["jobs"]] == [
        ("normalise", 2, "finished"), ("crop", 4, "failed"), ("qc", 5, "incomplete")]


def test_why_slurm_ended_or_refused_a_job_reaches_the_summary():
    """sbatch's refusal (a mistyped partition) and the Slurm state that ended a job (TIMEOUT)
    are in the run's log, but the summary said 'killed (a time or memory limit, or by hand)' for
    both: a facility raised runtime and mem_mb for a partition typo."""
    from selfres.summary import _unfinished_message

    log = """[Sat Dec  5 01:20:01 2026]
rule normalise:
    jobid: 1
    wildcards: sample=b
[Sat Dec  5 01:20:02 2026]
Error in rule normalise:
    message: SLURM sbatch failed. The error message was 'sbatch: error: invalid partition specified: nosuch
sbatch: error: Batch job submission failed: Invalid partition name specified'.
    sbatch call:
        sbatch --parsable -p nosuch
For further error details see the cluster/cloud log and the log files of the involved rule(s).
    jobid: 1
    log: results/b/logs/normalise.log (check log file(s) for error details)
[Sat Dec  5 01:20:03 2026]
rule train:
    jobid: 6
    wildcards: sample=a
Job 6 has been submitted with SLURM jobid 187 (log: /w/logs/slurm/rule_train/a/187.log).
[Sat Dec  5 01:21:10 2026]
Error in rule train:
    message: SLURM-job '187' failed, SLURM status is: 'TIMEOUT'. Detailed failure reason unavailable.
    jobid: 6
    external_jobid: 187
Logfile results/a/logs/train.log:
================================================================================
Error in rule train:
    message: None
    jobid: 0
================================================================================
"""
    norm, train = parse_snakemake_log(log)["jobs"]
    assert norm["ended_by"] == "sbatch refused to submit it (invalid partition specified: nosuch)"
    assert train["ended_by"] == "Slurm ended it at its time limit (runtime)" and train["status"] == "failed"
    assert _unfinished_message([norm]) == "its normalise job: sbatch refused to submit it (invalid partition " \
                                          "specified: nosuch)"
    both = _unfinished_message([train, {"rule": "qc", "slurm_jobid": None}])
    assert both.startswith("its train job (Slurm job 187, log /w/logs/slurm/rule_train/a/187.log): Slurm ended it "
                           "at its time limit (runtime); its qc job did not finish in this run and wrote no ERROR")


def test_run_log_parser_keeps_every_attempt_of_a_retried_job():
    # Snakemake's retries ("Trying to restart job N."): the same job id, a new rule block and submission
    retried = SLURM_LOG + """Trying to restart job 4.
[Mon Nov 30 09:03:05 2026]
rule crop:
    jobid: 4
    wildcards: sample=a
    resources: mem_mb=8000
Job 4 has been submitted with SLURM jobid 20 (log: /w/logs/slurm/rule_crop/a/20.log).
[Mon Nov 30 09:03:30 2026]
Finished jobid: 4 (Rule: crop)
"""
    (_, crop) = parse_snakemake_log(retried)["jobs"]
    assert crop["status"] == "finished" and crop["slurm_jobid"] == 20 and crop["started"] == "2026-11-30T09:02:46"
    assert [(a["started"], a["status"], a["slurm_jobid"]) for a in crop["attempts"]] == [
        ("2026-11-30T09:02:46", "failed", 19), ("2026-11-30T09:03:05", "finished", 20)]
    # a retry that fails again: the job failed, both attempts on record
    twice = retried.replace("Finished jobid: 4 (Rule: crop)", "Error in rule crop:\n    jobid: 4")
    (_, crop) = parse_snakemake_log(twice)["jobs"]
    assert crop["status"] == "failed" and [a["status"] for a in crop["attempts"]] == ["failed", "failed"]


def test_runlog_command_writes_a_record_and_a_history_line(tmp_path, capsys):
    from selfres.cli import main

    log = tmp_path / "run.snakemake.log"
    log.write_text(SLURM_LOG)
    for _ in range(2):
        assert main(["runlog", str(tmp_path / "results"), "--status", "error", "--snakemake-log", str(log),
                     "--samples", "a,b"]) == 0
    records = sorted((tmp_path / "results" / "runs").glob("*.json"))
    assert [r.name for r in records] == ["20261130T090209_error-2.json", "20261130T090209_error.json"]
    rec = json.loads(records[1].read_text())
    assert rec["samples"] == ["a", "b"] and rec["failed_samples"] == ["a"] and rec["config_files"] == [
        "config/config.yaml"]
    lines = (tmp_path / "results" / "runs" / "runs.tsv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].split("\t")[2] == "error"


def test_a_sample_whose_model_source_failed_is_a_failed_sample_of_the_run(tmp_path):
    """``b`` restores with ``a``'s model (``model_from``); ``a``'s crop failed, so ``b``'s adopt job
    never started and nothing of ``b`` is in the log: ``runs.tsv`` still lists it as failed (the
    count of nights in a row a sample failed reads that column). ``c`` uses the model of ``d``,
    which failed after its model (QC): ``c`` was not held back."""
    log = tmp_path / "run.snakemake.log"
    qc_failed = """[Mon Nov 30 09:03:10 2026]
rule qc:
    jobid: 9
    wildcards: sample=d
Job 9 has been submitted with SLURM jobid 20 (log: /w/logs/slurm/rule_qc/d/20.log).
[Mon Nov 30 09:03:30 2026]
Error in rule qc:
    message: SLURM-job '20' failed
    jobid: 9
"""
    log.write_text(SLURM_LOG + qc_failed)
    path = write_run_record(tmp_path / "results", status="error", snakemake_log=log, samples=["a", "b", "c", "d"],
                            model_sources={"b": "a", "c": "d"})
    assert json.loads(path.read_text())["failed_samples"] == ["a", "b", "d"]
    line = (tmp_path / "results" / "runs" / "runs.tsv").read_text().splitlines()[1].split("\t")
    assert line[RUNS_TSV_COLUMNS.index("failed_samples")] == "a,b,d"


def test_a_run_sent_sigterm_is_recorded_as_stopped_with_why(tmp_path):
    """A reviewer's `kill -TERM` of snakemake: it finished its running job and ended through
    onerror; runs.tsv said `error` with no failed job and the record no reason."""
    from selfres.runlog import STOP_REQUESTED

    log = tmp_path / "run.snakemake.log"
    finished_job = """[Mon Nov 30 09:03:10 2026]
rule train:
    output: results/a/model
    jobid: 9
    wildcards: sample=a
Will exit after finishing currently running jobs (scheduler).
[Mon Nov 30 09:04:10 2026]
Finished jobid: 9 (Rule: train)
Will exit after finishing currently running jobs (scheduler).
"""
    log.write_text(SLURM_LOG.split("[Mon")[0] + finished_job)
    path = write_run_record(tmp_path / "results", status="error", snakemake_log=log, samples=["a"])
    rec = json.loads(path.read_text())
    assert path.name.endswith("_stopped.json") and rec["status"] == "stopped" and rec["stopped"] == STOP_REQUESTED
    line = (tmp_path / "results" / "runs" / "runs.tsv").read_text().splitlines()[1].split("\t")
    assert line[RUNS_TSV_COLUMNS.index("status")] == "stopped"
    # a running job the stop killed (its error between the stop and Snakemake's last line): stopped still
    killed_by_the_stop = finished_job.replace("Finished jobid: 9 (Rule: train)",
                                              "Error in rule train:\n    message: killed by SIGTERM\n    jobid: 9")
    log.write_text(SLURM_LOG.split("[Mon")[0] + killed_by_the_stop)
    rec = json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=log, samples=["a"])
                     .read_text())
    assert rec["status"] == "stopped" and rec["stopped"] == STOP_REQUESTED
    # ... but the job itself failed: Snakemake lets running jobs finish after a SIGTERM (unlike the jobs
    # a Ctrl-C cancels), so its failure is its own and its sample failed (a mutant called it stopped)
    assert [j["status"] for j in rec["jobs"] if j.get("jobid") == 9] == ["failed"], rec["jobs"]
    assert rec["failed_samples"] == ["a"]
    # ... unless the signal reached the job too (sent to the process group: GNU timeout, a Slurm time limit
    # on the job running snakemake): its shell "died with <Signals.SIGTERM: 15>", stopped, not failed, and
    # its sample is pending (a helper: the sample read failed and started its failure streak)
    from selfres.runlog import STOP_REQUESTED_JOBS_TOO

    signalled = killed_by_the_stop.replace(
        "Error in rule train:", "RuleException:\nCalledProcessError in file \"/w/restore.smk\", line 155:\n"
        "Command 'set -euo pipefail;  selfres train …' died with <Signals.SIGTERM: 15>.\n"
        "[Mon Nov 30 09:04:11 2026]\nError in rule train:")
    log.write_text(SLURM_LOG.split("[Mon")[0] + signalled)
    rec = json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=log, samples=["a"])
                     .read_text())
    assert [j["status"] for j in rec["jobs"] if j.get("jobid") == 9] == ["stopped"], rec["jobs"]
    assert rec["status"] == "stopped" and rec["stopped"] == STOP_REQUESTED_JOBS_TOO and rec["failed_samples"] == []
    # a job that died of the signal with no stop logged (killed alone): its own failure
    log.write_text(SLURM_LOG.split("[Mon")[0] + signalled.replace(
        "Will exit after finishing currently running jobs (scheduler).\n", ""))
    rec = json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=log, samples=["a"])
                     .read_text())
    assert rec["status"] == "error" and rec["failed_samples"] == ["a"]
    # a job that had failed before the stop: an error still (its own failure, not the stop's)
    failed_first = finished_job.replace("rule train:", "rule crop:\n    jobid: 8\n    wildcards: sample=b\n"
                                        "[Mon Nov 30 09:03:20 2026]\nError in rule crop:\n    message: x\n"
                                        "    jobid: 8\n[Mon Nov 30 09:03:30 2026]\nrule train:", 1)
    log.write_text(SLURM_LOG.split("[Mon")[0] + failed_first)
    rec = json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=log).read_text())
    assert rec["status"] == "error" and rec["failed_samples"] == ["b"], rec["failed_samples"]
    # a run that failed without being told to stop stays an error
    log.write_text(SLURM_LOG)
    assert json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=log)
                      .read_text())["status"] == "error"


INTERRUPTED_LOG = """\
SNAKEMAKE
=========
  Date: 2026-11-30 09:02:09

[Mon Nov 30 09:02:10 2026]
rule train:
    output: results/a/model
    jobid: 9
    wildcards: sample=a
[Mon Nov 30 09:02:11 2026]
rule train:
    output: results/b/model
    jobid: 12
    wildcards: sample=b
Terminating processes on user request, this might take some time.
[Mon Nov 30 09:03:19 2026]
Error in rule train:
    message: None
    jobid: 9
    output: results/a/model
[Mon Nov 30 09:03:19 2026]
Error in rule train:
    message: None
    jobid: 12
    output: results/b/model
"""


def test_a_run_interrupted_with_ctrl_c_is_stopped_and_its_cut_short_samples_pending(tmp_path):
    """A walkthrough's Ctrl-C during a training: the run was recorded as an error, the sample as
    failed, and the summary began its failure streak; a `kill` (SIGTERM) was recorded as stopped."""
    from selfres.runlog import INTERRUPTED
    from selfres.summary import stage_summary

    log = tmp_path / "run.snakemake.log"
    log.write_text(INTERRUPTED_LOG)
    results = tmp_path / "results"
    path = write_run_record(results, status="error", snakemake_log=log, samples=["a", "b"])
    rec = json.loads(path.read_text())
    assert rec["status"] == "stopped" and rec["stopped"] == INTERRUPTED and rec["failed_samples"] == []
    assert [j["status"] for j in rec["jobs"]] == ["stopped", "stopped"]
    line = dict(zip(RUNS_TSV_COLUMNS, (results / "runs" / "runs.tsv").read_text().splitlines()[1].split("\t")))
    assert line["status"] == "stopped" and line["failed_jobs"] == "0" and line["failed_samples"] == ""
    # the morning summary: pending, with the job's own line (a rerun resumes), no failure streak
    logs = results / "a" / "logs"
    logs.mkdir(parents=True)
    said = ("sample 'a': selfres train was interrupted (Ctrl-C or SIGINT); its output was not written, and a rerun "
            "resumes a training from its last checkpoint and an inference from its recorded tiles")
    (logs / "train.log").write_text(f"ERROR: {said}\n")
    rows = {r["sample"]: r for r in stage_summary(results, ["a", "b"], results / "summary.tsv",
                                                   results / "summary.html", snakemake_log=log)}
    assert rows["a"]["status"] == "pending" and rows["a"]["error"] == said, rows["a"]
    assert not rows["a"].get("failed_runs")
    assert rows["b"]["status"] == "pending" and "cancelled when the run was interrupted" in rows["b"]["error"]
    # a job that had failed before the interrupt is a failure still, and the run an error
    failed_first = INTERRUPTED_LOG.replace("Terminating processes", "[Mon Nov 30 09:02:50 2026]\nError in rule "
                                           "train:\n    message: x\n    jobid: 12\nTerminating processes", 1)
    log.write_text(failed_first)
    rec = json.loads(write_run_record(results, status="error", snakemake_log=log).read_text())
    assert rec["status"] == "error" and rec["failed_samples"] == ["b"], rec
    assert {j["jobid"]: j["status"] for j in rec["jobs"]} == {9: "stopped", 12: "failed"}
    # ... also where another job of that sample was cancelled (a scattered inference block): failed,
    # not pending (a mutant read one cancelled job as the whole sample's story)
    log.write_text(failed_first.replace("Terminating processes", "[Mon Nov 30 09:02:55 2026]\nrule infer_block:\n"
                                        "    output: results/b/blocks/1\n    jobid: 13\n    wildcards: sample=b, "
                                        "block=1\nTerminating processes", 1))
    rec = json.loads(write_run_record(results, status="error", snakemake_log=log).read_text())
    assert {j["jobid"]: j["status"] for j in rec["jobs"]} == {9: "stopped", 12: "failed", 13: "stopped"}
    rows = {r["sample"]: r for r in stage_summary(results, ["a", "b"], results / "summary.tsv",
                                                   results / "summary.html", snakemake_log=log)}
    assert rows["b"]["status"] == "failed" and rows["a"]["status"] == "pending", rows
    # a SIGTERM, then Ctrl-C (the jobs the first let run, the second cancelled): stopped too (a review)
    log.write_text(INTERRUPTED_LOG.replace("Terminating processes", "Will exit after finishing currently running "
                                           "jobs (scheduler).\nTerminating processes", 1))
    rec = json.loads(write_run_record(results, status="error", snakemake_log=log).read_text())
    assert rec["status"] == "stopped" and rec["stopped"] == INTERRUPTED and rec["failed_samples"] == [], rec


def test_an_interrupted_night_neither_starts_nor_ends_a_samples_failure_streak(tmp_path):
    """A review: b failed on nights 1 and 3, night 2 was stopped with Ctrl-C while b ran; the
    summary said 'failed 1 run' (night 2 read as b run without failing, ending the streak)."""
    from selfres.runlog import failing_runs

    results = tmp_path / "results"
    failed = INTERRUPTED_LOG.replace("Terminating processes on user request, this might take some time.\n", "")
    for night, text in ((1, failed), (2, INTERRUPTED_LOG), (3, failed)):
        log = tmp_path / f"night{night}.snakemake.log"
        log.write_text(text.replace("2026-11-30 09:02:09", f"2026-11-{night:02d} 01:00:00"))
        write_run_record(results, status="error", snakemake_log=log, finished=f"2026-11-{night:02d}T02:00:00")
    rows = [dict(zip(RUNS_TSV_COLUMNS, line.split("\t")))
            for line in (results / "runs" / "runs.tsv").read_text().splitlines()[1:]]
    assert [(r["status"], r["samples_run"], r["failed_samples"]) for r in rows] == [
        ("error", "a,b", "a,b"), ("stopped", "", ""), ("error", "a,b", "a,b")]
    assert failing_runs(results, ["b"]) == {"b": (2, "2026-11-01T01:00:00")}


def _night_log(log_dir: Path, date: str, body: str, closed: bool) -> Path:
    """A Snakemake log of a run started at ``date`` (``YYYY-MM-DD HH:MM:SS``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{date.replace(' ', 'T').replace(':', '')}.000000.snakemake.log"
    text = SLURM_LOG.split("[Mon")[0].replace("2026-11-30 09:02:09", date) + body
    path.write_text(text + (f"Complete log(s): {path}\nElapsed time: 0:01:00\n" if closed else ""))
    return path


KILLED_MID_JOB = """[Tue Dec  1 09:02:10 2026]
rule normalise:
    output: results/b/normalized.ome.zarr
    jobid: 2
    wildcards: sample=b
Job 2 has been submitted with SLURM jobid 31 (log: /w/logs/slurm/rule_normalise/b/31.log).
"""


def test_a_killed_run_is_recorded_by_the_next_run(tmp_path):
    from selfres.runlog import record_stopped_runs

    results, logs = tmp_path / "results", tmp_path / ".snakemake" / "log"
    night1 = _night_log(logs, "2026-11-30 09:02:09", SLURM_LOG.split("Config MD5")[1].split("\n", 1)[1], True)
    write_run_record(results, status="error", snakemake_log=night1)
    killed = _night_log(logs, "2026-12-01 09:02:09", KILLED_MID_JOB, False)
    os.utime(killed, (time.mktime((2026, 12, 1, 9, 5, 0, 0, 0, -1)),) * 2)
    # not this results folder's run, a run stopped by a stale lock (no job), and a run that ended
    _night_log(logs, "2026-12-01 10:00:00", KILLED_MID_JOB.replace("results/", "other/"), False)
    _night_log(logs, "2026-12-02 08:00:00", "LockException:\nError: Directory cannot be locked.\n", False)
    _night_log(logs, "2026-12-02 08:30:00", KILLED_MID_JOB.replace("sample=b", "sample=c"), True)
    tonight = _night_log(logs, "2026-12-02 09:00:00", KILLED_MID_JOB, False)

    (locks := tmp_path / ".snakemake" / "locks").mkdir()
    for name in ("0.input.lock", "1.input.lock"):  # another run is going: its log is not closed either
        (locks / name).touch()
    assert record_stopped_runs(results, [str(tonight)]) == []
    (locks / "1.input.lock").unlink()

    # a later run stopped by a config mistake (recorded now, no log) does not hide the killed one
    write_run_record(results, status="error", extra={"stopped_before_any_job": "a typo in the sheet"})
    (record,) = record_stopped_runs(results, [str(tonight)])
    rec = json.loads(record.read_text())
    assert rec["status"] == "stopped" and rec["snakemake_log"] == str(killed)
    assert (rec["started"], rec["finished"]) == ("2026-12-01T09:02:09", "2026-12-01T09:05:00")
    assert rec["failed_samples"] == ["b"] and rec["jobs"][0]["slurm_jobid"] == 31
    assert rec["software"] is None and rec["source_digest"] is None, "the recording run's code is not the killed run's"
    lines = (results / "runs" / "runs.tsv").read_text().splitlines()
    assert [line.split("\t")[2] for line in lines[1:]] == ["error", "error", "stopped"]
    assert record_stopped_runs(results, [str(tonight)]) == [], "recorded once"
    # a folder whose records were deleted: only the runs that did not end are written again
    import shutil

    shutil.rmtree(results / "runs")
    assert [json.loads(p.read_text())["snakemake_log"] for p in record_stopped_runs(results, str(tonight))] == [
        str(killed)]


@pytest.mark.slow
def test_a_night_killed_with_kill_9_gets_its_runs_tsv_line_from_the_next_night(tmp_path):
    wd = make_workdir(tmp_path, samples={"a": {}})
    driver = subprocess.Popen(snakemake_command(wd), cwd=wd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        logs = wd / ".snakemake" / "log"
        while time.time() < deadline and driver.poll() is None and not any(
                "rule normalise:" in p.read_text() for p in logs.glob("*.snakemake.log")):
            time.sleep(0.05)
        assert driver.poll() is None, "the run ended before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its jobs: a node lost, no handler runs
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert not (wd / "results" / "runs").exists()
    assert run_snakemake(wd, "--unlock").returncode == 0
    nxt = run_snakemake(wd, "--rerun-incomplete", "results/a/train_fov.json", timeout=300)
    assert nxt.returncode == 0, nxt.stderr[-3000:]
    rows = [line.split("\t") for line in (wd / "results" / "runs" / "runs.tsv").read_text().splitlines()[1:]]
    assert [(r[2], r[8]) for r in rows] == [("stopped", "a"), ("success", "")], rows
    assert "record of an earlier run that was stopped" in nxt.stderr


# ---------------------------------------------------------------- nights (snakemake)

def _jobs(out: str) -> set[tuple[str, str | None]]:
    """(rule, sample) of every job in a snakemake (dry-)run output."""
    return {(j["rule"], j["sample"]) for j in parse_snakemake_log(out)["jobs"]}


def _dry(wd, *args):
    proc = run_snakemake(wd, "-n", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _tree_stamps(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def night1(tmp_path_factory):
    """First night: one settled acquisition in the inbox, empty sample sheet."""
    wd = make_workdir(tmp_path_factory.mktemp("nightly"), samples={},
                      config_overrides={"inbox": ["inbox/*.tif"], "inbox_settle_seconds": 0})
    write_tiny_tiff(wd / "inbox" / "night1.tif", seed=1)
    # an acquisition younger than the settle time is not a sample yet
    out = _dry(wd, "--config", "inbox_settle_seconds=3600")
    assert "inbox/night1.tif changed" in out and "left for the next run" in out
    assert not {s for _, s in _jobs(out)} - {None}
    proc = run_snakemake(wd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return wd


def test_first_night_processes_the_inbox(night1):
    res = night1 / "results"
    assert (res / "night1" / "restored.ome.zarr").is_dir()
    assert (res / "night1" / "report.html").is_file()
    rows = (res / "summary.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("night1\t")


def test_a_failed_rerun_marks_the_older_report_out_of_date(night1, tmp_path):
    import shutil

    wd = tmp_path / "copy"
    shutil.copytree(night1, wd, symlinks=True)
    report = wd / "results" / "night1" / "report.html"
    age = report.stat().st_mtime
    assert "out of date" not in report.read_text()
    time.sleep(1.1)
    good = (wd / "inbox" / "night1.tif").read_bytes()
    (wd / "inbox" / "night1.tif").write_bytes(good[: len(good) // 3])  # re-acquired, and broken
    assert run_snakemake(wd, "--keep-going").returncode != 0
    page = report.read_text()
    assert "This report is out of date" in page and "is truncated" in page
    assert report.stat().st_mtime == age  # its age still marks when the sample last finished


def test_inbox_acquisitions_left_for_the_next_run_are_pending_rows_of_the_summary(night1, tmp_path):
    """An acquisition still changing was named only in the run's terminal output: the summary
    (what the operator reads) lost a re-exported sample's row, and never listed a new one."""
    import shutil

    import pandas as pd

    wd = tmp_path / "copy"
    shutil.copytree(night1, wd, symlinks=True)
    (wd / "inbox" / "night1.tif").touch()  # re-exported this minute
    write_tiny_tiff(wd / "inbox" / "night2.tif", seed=2)  # still being copied
    proc = run_snakemake(wd, "--config", "inbox_settle_seconds=3600")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = pd.read_csv(wd / "results" / "summary.tsv", sep="\t").set_index("sample")
    assert set(table.index) == {"night1", "night2"} and set(table["status"]) == {"pending"}
    assert table.loc["night2", "error"] == "inbox: inbox/night2.tif is still changing; left for the next run"
    assert table.loc["night1", "error"].endswith("; the report is an earlier run's")
    page = (wd / "results" / "summary.html").read_text()
    assert " · 2 pending · 2 samples" in page and 'href="night1/report.html"' in page


def test_a_waiting_multichannel_file_keeps_the_rows_of_the_samples_it_made(tmp_path):
    """A re-exported two-channel file (inbox_columns channel: all) made samples plate_c0 and
    plate_c1; while it waits, the summary listed one row under the file's id, linking nothing,
    and the channels' rows vanished."""
    import numpy as np

    from selfres import io
    from selfres.summary import stage_summary

    results = tmp_path / "results"
    acquisition = tmp_path / "inbox" / "plate.tif"
    acquisition.parent.mkdir()
    acquisition.write_bytes(b"")
    for s in ("plate_c0", "plate_c1", "other"):
        io.write_ome_zarr(results / s / "normalized.ome.zarr", np.zeros((2, 4, 4), np.float32), voxel_size=None,
                          attrs={"source_resolved": str(acquisition.resolve() if s != "other" else tmp_path)})
        (results / s / "report.html").write_text("<html></html>")
    rows = stage_summary(results, [], results / "summary.tsv", results / "summary.html",
                         waiting={"plate": str(acquisition)})
    assert [(r["sample"], r["status"], r["report"]) for r in rows] == [
        ("plate_c0", "pending", "plate_c0/report.html"), ("plate_c1", "pending", "plate_c1/report.html")]


def test_second_run_at_once_does_nothing(night1):
    before = _tree_stamps(night1 / "results")
    out = _dry(night1)
    assert "Nothing to be done" in out
    proc = run_snakemake(night1)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    assert _tree_stamps(night1 / "results") == before


def test_provenance_per_sample_is_complete(night1):
    prov = json.loads((night1 / "results" / "night1" / "provenance.json").read_text())
    raw = night1 / "inbox" / "night1.tif"
    assert prov["sample"] == "night1"
    assert prov["input_checksum"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    cfg = prov["resolved_config"]
    assert cfg["path"] == "inbox/night1.tif" and cfg["mode"] == "enhance" and cfg["scale"] == "1,2,2"
    assert cfg["settings"]["train"]["steps"] == 4  # the workdir's config, not the defaults
    assert prov["selfres_version"] and re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"] or "")
    assert prov["git_dirty"] in (True, False)  # a run from a modified checkout says so
    # and which code made the model and the output (the same code here)
    assert prov["model_code"] == prov["restored_code"] and prov["model_code"]["git_commit"] == prov["git_commit"]
    assert prov["restored_code"]["source_digest"] == prov["source_digest"]
    assert prov["settings_not_applied"] == {}  # the config is what made the outputs
    assert Path(prov["input_resolved"]) == raw.resolve()  # the sheet's path is relative to the work folder
    # the workflow that ran (its Snakefile's checkout), which need not be where the package is installed from
    from workdir import SNAKEFILE

    head = subprocess.run(["git", "-C", str(SNAKEFILE.parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert prov["workflow"]["dir"] == str(SNAKEFILE.parent.resolve())
    assert prov["workflow"]["git_commit"] == head and prov["workflow"]["git_dirty"] in (True, False)
    for pkg in ("python", "torch", "numpy", "zarr", "snakemake"):
        assert prov["software"][pkg], pkg
    assert prov["host"] and prov["written"]
    assert prov["timings"]["train_seconds"] > 0 and prov["timings"]["infer_seconds"] >= 0
    assert prov["timings"]["qc_seconds"] > 0  # a long qc is seen in the report, not guessed from the log
    assert {"normalise", "crop", "train", "infer", "qc"} <= set(prov["timings"]["rules"])


def test_run_record_says_what_ran(night1):
    runs = night1 / "results" / "runs"
    records = sorted(runs.glob("*_success.json"))
    assert len(records) == 1, "one record per run that did something (the no-op run writes none)"
    rec = json.loads(records[0].read_text())
    assert rec["status"] == "success" and rec["samples_run"] == ["night1"] and rec["failed_samples"] == []
    assert {(j["rule"], j["sample"]) for j in rec["jobs"]} == {(r, "night1") for r in PER_SAMPLE_RULES} | {
        ("summary", None)}
    assert all(j["status"] == "finished" and j["started"] for j in rec["jobs"])
    assert rec["host"] and rec["config_md5"] and rec["workflow_id"] and rec["software"]["snakemake"]
    assert rec["started"] <= rec["finished"]
    lines = (runs / "runs.tsv").read_text().splitlines()
    assert lines[0].startswith("started\tfinished\tstatus") and len(lines) == 2


def test_changed_or_clashing_acquisitions(night1, tmp_path):
    import shutil

    wd = tmp_path / "copy"
    shutil.copytree(night1, wd, symlinks=True)
    # a re-acquired (rewritten) file reruns its whole chain, nothing else
    time.sleep(1.1)
    write_tiny_tiff(wd / "inbox" / "night1.tif", seed=7)
    assert _jobs(_dry(wd)) == {(r, "night1") for r in PER_SAMPLE_RULES} | {("summary", None)}
    # two inbox files with the same id: a clear error, before any job
    write_tiny_tiff(wd / "inbox" / "night1.ome.tif", seed=8)
    proc = run_snakemake(wd, "-n")
    assert proc.returncode != 0
    assert re.search(r"same sample id: 'night1' from inbox/night1\.ome\.tif, inbox/night1\.tif", proc.stdout + proc.stderr)


def test_new_night_runs_only_the_new_sample_and_overlapping_runs_are_locked_out(night1):
    before = _tree_stamps(night1 / "results" / "night1")
    write_tiny_tiff(night1 / "inbox" / "night2.tif", seed=2)
    assert _jobs(_dry(night1)) == {(r, "night2") for r in PER_SAMPLE_RULES} | {("summary", None)}
    first = subprocess.Popen(snakemake_command(night1), cwd=night1, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        locks = night1 / ".snakemake" / "locks"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not any(locks.glob("*")):
            time.sleep(0.2)
        assert any(locks.glob("*")), "the first run never took its lock"
        # hold the first run where it is (its lock taken, its outputs unfinished), so that it
        # cannot finish before the overlapping runs below start, however loaded the machine
        os.kill(first.pid, signal.SIGSTOP)
        try:
            # the profiles' rerun-incomplete would redo the first run's unfinished outputs,
            # but Snakemake's lock on those outputs stops the second run before any job
            second = run_snakemake(night1, "--rerun-incomplete", timeout=300)
            assert second.returncode != 0
            assert "cannot be locked" in second.stdout + second.stderr
            # without it, the first run's unfinished outputs stop it already
            third = run_snakemake(night1, timeout=300)
            assert third.returncode != 0
            assert re.search(r"cannot be locked|Incomplete files", third.stdout + third.stderr)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-6000:]
    assert _tree_stamps(night1 / "results" / "night1") == before, "a finished sample was touched"
    assert (night1 / "results" / "night2" / "report.html").is_file()
    rows = [r.split("\t")[0] for r in (night1 / "results" / "summary.tsv").read_text().splitlines()[1:]]
    assert rows == ["night1", "night2"]


def test_a_failed_run_leaves_an_error_record_and_a_summary(tmp_path):
    wd = make_workdir(tmp_path, samples={}, config_overrides={"inbox": ["inbox/*.tif"], "inbox_settle_seconds": 0})
    (wd / "inbox").mkdir()
    (wd / "inbox" / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    proc = run_snakemake(wd, "--keep-going")
    assert proc.returncode != 0
    (record,) = (wd / "results" / "runs").glob("*_error.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "error" and rec["failed_samples"] == ["broken"]
    # found unreadable at the start: its normalise is tried once, whatever the profile's retries
    (failed,) = [j for j in rec["jobs"] if j["rule"] == "normalise_once"]
    assert failed["status"] == "failed" and failed["sample"] == "broken"
    summary = (wd / "results" / "summary.tsv").read_text().splitlines()
    assert summary[1].startswith("broken\tfailed")
    # the next night fails it again: the summary says it is an old failure, not a new one
    assert run_snakemake(wd, "--keep-going").returncode != 0
    table = pd.read_csv(wd / "results" / "summary.tsv", sep="\t").set_index("sample")
    assert table.loc["broken", "failed_runs"] == 2 and table.loc["broken", "failing_since"] == rec["started"]
    html = (wd / "results" / "summary.html").read_text()
    assert f"the 2nd run in a row that failed it, since the run of {rec['started'].replace('T', ' ')[:16]}" in html


def _hyperstack(path: Path, *, n_t: int = 2, n_c: int = 2) -> None:
    """An ImageJ hyperstack TZCYX of tiny stacks, each its own data."""
    import numpy as np
    import tifffile
    from workdir import tiny_volume

    data = np.stack([np.stack([tiny_volume((8, 48, 48), seed=10 * t + c) for c in range(n_c)], axis=1)
                     for t in range(n_t)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "TZCYX"})


def test_inbox_columns_choose_channels_and_time_points_of_every_acquisition(tmp_path):
    """A facility whose microscopes write hyperstacks says once, in the config, what to restore of
    each file the inbox finds; without it such a file fails its own sample, and the message says
    where the choice goes."""
    inbox = {"inbox": ["inbox/*.tif"], "inbox_settle_seconds": 0}
    chosen = make_workdir(tmp_path, samples={}, name="chosen",
                          config_overrides={**inbox, "inbox_columns": {"channel": "all", "timepoint": "all",
                                                                       "scale": "1,2,2",
                                                                       "model_from": "first_timepoint"}})
    _hyperstack(chosen / "inbox" / "lapse.tif")
    expected = {f"lapse_c{c}_t{t}" for c in (0, 1) for t in (0, 1)}
    jobs = _jobs(_dry(chosen))
    assert {s for r, s in jobs if r == "normalise"} == expected
    # each channel trains on its time point 0; the later time points use that model
    assert {s for r, s in jobs if r == "train"} == {"lapse_c0_t0", "lapse_c1_t0"}
    assert {s for r, s in jobs if r == "adopt"} == {"lapse_c0_t1", "lapse_c1_t1"}
    # a bad value stops the run before any job, naming the key
    proc = run_snakemake(chosen, "-n", "--config", "inbox_columns={'channel': 'first'}")
    assert proc.returncode != 0
    assert "config inbox_columns: column 'channel': 'first' is not of the form: a channel index" in proc.stderr

    unchosen = make_workdir(tmp_path, samples={}, name="unchosen", config_overrides=inbox)
    _hyperstack(unchosen / "inbox" / "lapse.tif")
    proc = run_snakemake(unchosen, "--keep-going", "results/lapse/normalized.ome.zarr")
    assert proc.returncode != 0
    log = (unchosen / "results" / "lapse" / "logs" / "normalise.log").read_text()
    assert "has 2 time points" in log and "config inbox_columns for inbox acquisitions" in log


def test_an_inbox_file_named_like_an_id_a_sheet_row_makes_is_left_to_the_sheet(tmp_path):
    """The sheet wins ids: also those its `all` rows make. An inbox file ``cells_c0.tif`` beside a
    sheet row ``cells`` with ``channel: all`` stopped the run with 'channel=all makes sample id(s)
    cells_c0 that are already taken', naming no inbox file (with fail_alone the sheet's own
    cells_c0 failed too); it is left to the sheet's row, as a file of a sheet id is."""
    wd = make_workdir(tmp_path, samples={"cells": {"path": "../data/cells.tif", "channel": "all"}},
                      config_overrides={"inbox": ["inbox/*.tif"], "inbox_settle_seconds": 0})
    _hyperstack(wd / "data" / "cells.tif", n_t=1)
    write_tiny_tiff(wd / "inbox" / "cells_c0.tif", seed=5)
    write_tiny_tiff(wd / "inbox" / "other.tif", seed=6)
    for bad_rows in ("stop", "fail_alone"):
        out = _dry(wd, "--config", f"bad_rows={bad_rows}")
        assert "inbox/cells_c0.tif left to the sample sheet's row 'cells_c0'" in out
        assert {s for r, s in _jobs(out) if r == "normalise"} == {"cells_c0", "cells_c1", "other"}
