"""Gaps found by mutation testing of :mod:`selfres.runlog`: what a facility reads in the run
records after a nightly batch (``runs/*.json``, ``runs/runs.tsv``): which jobs ran, how each
ended and why, and which samples failed."""

from __future__ import annotations

from selfres.runlog import parse_snakemake_log

from .test_summary_runlog_gaps import _record as record_of_log

_HEADER = ("SNAKEMAKE\n=========\n  Date: 2026-11-30 09:02:09\n  Host: vm\n  User: root\n"
           "  Command: snakemake --profile profiles/local\n\n")


def _record(tmp_path, body, header=_HEADER, **kw):
    return record_of_log(tmp_path, body, header=header, **kw)


def test_a_slurm_job_that_failed_on_its_own_is_not_blamed_on_slurm():
    """Slurm's state ``FAILED`` means the job's command exited non-zero: the job's own failure
    (its log has selfres's ERROR line). Saying "Slurm ended it" would send a facility to raise
    limits or call the cluster admins for a bad input."""
    log = ("[Mon Nov 30 09:02:46 2026]\nrule crop:\n    jobid: 4\n    wildcards: sample=a\n"
           "Job 4 has been submitted with SLURM jobid 19 (log: /w/logs/slurm/rule_crop/a/19.log).\n"
           "[Mon Nov 30 09:03:00 2026]\nError in rule crop:\n"
           "    message: SLURM-job '19' failed, SLURM status is: 'FAILED'. For further error details see the "
           "cluster/cloud log.\n    jobid: 4\n")
    (crop,) = parse_snakemake_log(log)["jobs"]
    assert crop["status"] == "failed" and crop["ended_by"] is None and crop["attempts"][0]["ended_by"] is None
    # an unknown state that ended it is still named
    (crop,) = parse_snakemake_log(log.replace("'FAILED'", "'SPECIAL_EXIT'"))["jobs"]
    assert crop["ended_by"] == "Slurm ended it (SPECIAL_EXIT)"


def test_a_retry_that_ran_again_is_not_said_to_have_been_ended_by_slurm(tmp_path):
    """The first attempt hit its time limit, Snakemake retried it with more runtime, and the retry
    finished (or was still running): the job's ``ended_by`` is its last attempt's (None), the
    first attempt keeps its TIMEOUT."""
    body = ("[Mon Nov 30 09:02:46 2026]\nrule train:\n    jobid: 4\n    wildcards: sample=a\n"
            "Job 4 has been submitted with SLURM jobid 19 (log: /w/19.log).\n"
            "[Mon Nov 30 09:03:00 2026]\nError in rule train:\n"
            "    message: SLURM-job '19' failed, SLURM status is: 'TIMEOUT'.\n    jobid: 4\n"
            "Trying to restart job 4.\n[Mon Nov 30 09:03:05 2026]\nrule train:\n    jobid: 4\n"
            "    wildcards: sample=a\nJob 4 has been submitted with SLURM jobid 20 (log: /w/20.log).\n")
    (train,) = parse_snakemake_log(body)["jobs"]
    assert train["status"] == "incomplete" and train["ended_by"] is None
    assert [a["ended_by"] for a in train["attempts"]] == ["Slurm ended it at its time limit (runtime)", None]
    (train,) = parse_snakemake_log(body + "[Mon Nov 30 09:09:00 2026]\nFinished jobid: 4 (Rule: train)\n")["jobs"]
    assert (train["status"], train["ended_by"], train["slurm_jobid"]) == ("finished", None, 20)


def test_lines_like_the_header_printed_during_the_run_do_not_change_the_runs_header(tmp_path):
    """The run's start, host and command come from Snakemake's header only: output printed later
    (a job's own, indented like the header) neither renames the record nor moves its start."""
    body = ("[Mon Nov 30 09:02:10 2026]\nrule normalise:\n    jobid: 2\n    wildcards: sample=a\n"
            "[Mon Nov 30 09:02:40 2026]\n  Date: 2027-01-01 00:00:00\n  Host: node7\n  Command: bash job.sh\n"
            "Finished jobid: 2 (Rule: normalise)\n")
    header = parse_snakemake_log(_HEADER + body)["header"]
    assert (header["started"], header["host"], header["command"]) == (
        "2026-11-30 09:02:09", "vm", "snakemake --profile profiles/local")
    rec, line = _record(tmp_path, body)
    assert (rec["started"], line["host"]) == ("2026-11-30T09:02:09", "vm")


def test_fields_after_a_time_stamp_belong_to_no_earlier_job():
    """A time stamp opens a new block: fields printed in a block that is no rule block (here a
    group job's error) are not read into the job before the stamp (its sample, or, with its
    job id, a retry that never was)."""
    log = ("[Mon Nov 30 09:02:10 2026]\nrule normalise:\n    jobid: 2\n    wildcards: sample=a\n"
           "[Mon Nov 30 09:02:40 2026]\nFinished jobid: 2 (Rule: normalise)\n"
           "[Mon Nov 30 09:02:41 2026]\nError in group g1:\n    wildcards: sample=z\n    jobid: 2\n")
    (job,) = parse_snakemake_log(log)["jobs"]
    assert (job["sample"], job["status"], len(job["attempts"])) == ("a", "finished", 1)


def test_the_records_jobs_are_in_the_order_they_started_not_by_job_id(tmp_path):
    """Snakemake numbers the jobs when it plans the run, not when they start: the record lists
    them as they ran, the way a facility reads a night back."""
    body = ("[Mon Nov 30 09:02:10 2026]\nrule normalise:\n    jobid: 7\n    wildcards: sample=b\n"
            "[Mon Nov 30 09:02:20 2026]\nrule normalise:\n    jobid: 2\n    wildcards: sample=a\n"
            "[Mon Nov 30 09:02:30 2026]\nrule crop:\n    jobid: 5\n    wildcards: sample=b\n")
    rec, _ = _record(tmp_path, body)
    assert [j["jobid"] for j in rec["jobs"]] == [7, 2, 5]


def test_a_config_file_line_that_is_no_python_list_is_kept_as_the_files_name(tmp_path):
    """``Config file(s)`` as one plain path (not a list literal): the record still names the
    configuration the run used."""
    header = _HEADER.replace("\n\n", "\n  Config file(s): config/night.yaml\n\n")
    rec, _ = _record(tmp_path, "", header=header)
    assert rec["config_files"] == ["config/night.yaml"]
    rec, _ = _record(tmp_path, "", header=_HEADER.replace("\n\n", "\n  Config file(s): ['a.yaml', 'b.yaml']\n\n"))
    assert rec["config_files"] == ["a.yaml", "b.yaml"]


def test_the_runs_tsv_line_puts_each_value_under_its_column(tmp_path):
    """runs.tsv is read by its header (a spreadsheet, ``failing_runs``): host and user, jobs and
    failed jobs, samples run and failed samples each under their own column."""
    body = ("[Mon Nov 30 09:02:10 2026]\nrule normalise:\n    jobid: 2\n    wildcards: sample=a\n"
            "[Mon Nov 30 09:02:40 2026]\nFinished jobid: 2 (Rule: normalise)\n"
            "[Mon Nov 30 09:02:41 2026]\nrule crop:\n    jobid: 3\n    wildcards: sample=b\n"
            "[Mon Nov 30 09:02:50 2026]\nError in rule crop:\n    jobid: 3\n")
    rec, line = _record(tmp_path, body, header=_HEADER.replace("root", "lab-night"),
                        finished="2026-11-30T09:03:00")
    assert line == {"started": "2026-11-30T09:02:09", "finished": "2026-11-30T09:03:00", "status": "error",
                    "host": "vm", "user": "lab-night", "jobs": "2", "failed_jobs": "1", "samples_run": "a,b",
                    "failed_samples": "b", "record": "20261130T090209_error.json"}


def test_an_empty_slurm_status_command_is_the_default_sacct_and_is_checked(tmp_path, monkeypatch):
    """A profile's ``slurm-status-command`` left empty means the executor's default, sacct: on a
    cluster without accounting the run would wait all night without a word, so the check asks
    sacct for it as for no setting at all."""
    from selfres.runlog import slurm_status_problem

    fake = tmp_path / "bin"
    fake.mkdir()
    sacct = fake / "sacct"
    sacct.write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    assert slurm_status_problem("") == "sacct fails here (Slurm accounting storage is disabled)"
    sacct.write_text("#!/bin/sh\nexit 2\n")
    assert slurm_status_problem("") == "sacct fails here (exit status 2)"


def test_a_model_source_whose_once_tried_normalise_or_crop_failed_holds_its_users_back():
    """``normalise_once`` and ``crop_once`` (a job the start of the run found would fail alike on
    every retry, tried once) make a sample's model as ``normalise`` and ``crop`` do: a sample
    restored with that model (``model_from``) never started, and is a failed sample of the run.
    A source that failed after its model (its qc) holds no one back."""
    from selfres.runlog import waiting_on_failed_sources

    unfinished = {"a": [{"rule": "normalise_once"}], "c": [{"rule": "crop_once"}], "e": [{"rule": "qc"}]}
    assert waiting_on_failed_sources(unfinished, {"b": "a", "d": "c", "f": "e", "a": "a"}) == {"b", "d"}
