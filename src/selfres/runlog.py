"""Run records: what one ``snakemake`` run did, written when it ends.

The workflow's ``onsuccess`` / ``onerror`` handlers (``workflow/rules/common.smk``) call
:func:`write_run_record` with Snakemake's own log of the run. The record lands in
``{results}/runs/{started}_{status}.json`` and one line is appended to
``{results}/runs/runs.tsv`` (the run history at a glance). ``selfres runlog`` does the
same from the command line, e.g. for the log of a run that was killed.

What a record holds: when the run started and ended, its status, the host, user,
working directory and command line, the Snakemake workflow id and config MD5, the
versions of selfres (and its git commit) and of the main libraries, the samples of the
run, and every job: rule, sample, why it ran, when it started, whether it finished, and
its Slurm job id and log when it ran on Slurm.

No torch import: versions come from the installed package metadata.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from .codeinfo import code_identity, software_versions

__all__ = ["parse_snakemake_log", "read_snakemake_log", "record_stopped_runs", "snakemake_log_file",
           "unfinished_jobs_by_sample", "waiting_on_failed_sources", "write_run_record", "RUN_STATUSES", "RUNS_TSV_COLUMNS"]

#: A run's ``status``: Snakemake's ``onsuccess`` / ``onerror`` ran, or neither did (the
#: driver was killed; recorded by a later run, :func:`record_stopped_runs`).
RUN_STATUSES = ("success", "error", "stopped")

#: Columns of ``runs/runs.tsv`` (one line per run).
RUNS_TSV_COLUMNS = ("started", "finished", "status", "host", "user", "jobs", "failed_jobs",
                    "samples_run", "failed_samples", "record")

_HEADER_RE = re.compile(r"^\s{2}(?P<key>[A-Za-z][A-Za-z0-9 ()]*?):\s(?P<value>.*)$")
_STAMP_RE = re.compile(r"^\[(?P<stamp>[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE_RE = re.compile(r"^(?:local)?(?:checkpoint|rule) (?P<rule>[A-Za-z_][A-Za-z0-9_]*):$")
_FIELD_RE = re.compile(r"^\s{4}(?P<key>[a-z_]+): (?P<value>.*)$")
_FINISHED_RE = re.compile(r"^Finished jobid: (?P<jobid>\d+)")
_ERROR_RE = re.compile(r"^Error in rule (?P<rule>[A-Za-z_][A-Za-z0-9_]*):$")
_SLURM_RE = re.compile(r"^Job (?P<jobid>\d+) has been submitted with SLURM jobid (?P<slurm>\d+)"
                       r"(?: \(log: (?P<log>[^)]*)\))?")
_HEADER_KEYS = {"Date": "started", "Workflow ID": "workflow_id", "Host": "host", "User": "user",
                "Snakemake version": "snakemake_version", "Command": "command",
                "Snakefile": "snakefile", "Working directory": "workdir", "Config file(s)": "config_files",
                "Config MD5": "config_md5"}


#: The query the check below asks ``sacct`` (as the Slurm executor's default status command asks it)
SACCT_PROBE = ("sacct", "-X", "-n", "--parsable2", "--format=JobIdRaw,State", "--starttime", "now-1hours",
               "--endtime", "now")


def slurm_status_problem(status_command: str | None, *, timeout: float = 10.0) -> str | None:
    """Why a Slurm run with ``status_command`` (the executor's ``slurm-status-command``; not a
    string: its default, sacct) would never see its jobs finish: ``sacct`` fails on a cluster without
    accounting (``Slurm accounting storage is disabled``), and the run then waits without a
    word. None where the command is squeue, sacct answers, or it cannot tell (no answer in
    ``timeout`` seconds)."""
    import subprocess

    if isinstance(status_command, str) and status_command not in ("", "sacct"):  # not a str: the plugin's default
        return None
    try:
        done = subprocess.run(SACCT_PROBE, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return "sacct is not installed on this machine"
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode == 0:
        return None
    said = " ".join((done.stderr or done.stdout or "").split())[:200] or f"exit status {done.returncode}"
    return f"sacct fails here ({said})"


def snakemake_log_file(log: "str | os.PathLike | Sequence[str | os.PathLike] | None") -> "str | os.PathLike | None":
    """The run's ``*.snakemake.log`` out of what Snakemake 9 hands its ``onsuccess`` /
    ``onerror`` handlers (a list of log files), or the one path given."""
    if isinstance(log, (list, tuple)):
        return next((f for f in log if str(f).endswith(".snakemake.log")), log[0] if log else None)
    return log


def read_snakemake_log(path: "str | os.PathLike | None") -> dict:
    """:func:`parse_snakemake_log` of a file; no header and no jobs without one."""
    if path and Path(path).is_file():
        return parse_snakemake_log(Path(path).read_text(errors="replace"))
    return {"header": {}, "jobs": []}


def unfinished_jobs_by_sample(jobs: Sequence[dict], *, stopped: bool = True) -> dict[str, list[dict]]:
    """The jobs of a run (:func:`parse_snakemake_log`'s ``jobs``) that did not finish
    (failed, or still running when the run ended), by sample: what the morning summary
    marks failed whatever older outputs lie on disk — or pending, where every one of a
    sample's was cancelled when the run was interrupted (status ``stopped``: Ctrl-C);
    ``stopped=False`` leaves those out (a run record's failed samples)."""
    out: dict[str, list[dict]] = {}
    for job in jobs:
        if job["sample"] and job["status"] != "finished" and (stopped or job["status"] != "stopped"):
            out.setdefault(job["sample"], []).append(job)
    return out


#: The jobs that make a sample's ``model/`` (and those before them; a ``_once`` rule is its stage tried
#: once, workflow/rules/restore.smk): one of them unfinished,
#: a sample restored by that model (``model_from``) cannot have run this time.
_MODEL_CHAIN_RULES = frozenset({"normalise", "normalise_once", "crop", "crop_once", "train", "adopt"})


def waiting_on_failed_sources(unfinished: dict[str, list[dict]], model_sources: dict[str, str]) -> set[str]:
    """Samples of ``model_sources`` (``{sample: source}``) whose source left a job of its model's
    chain unfinished in this run (``unfinished``: :func:`unfinished_jobs_by_sample`): Snakemake
    never started their own ``adopt`` job (it waits on the source's model, which the run then
    did not make), so the log holds no job of theirs that failed, yet they were not restored."""
    broken = {s for s, js in unfinished.items() if any(j["rule"] in _MODEL_CHAIN_RULES for j in js)}
    return {s for s, src in model_sources.items() if src != s and src in broken}


def _iso(stamp: str) -> str:
    """``Mon Nov 30 08:59:52 2026`` (Snakemake's job stamp) → ``2026-11-30T08:59:52``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.strptime(" ".join(stamp.split()), "%a %b %d %H:%M:%S %Y"))


def _attempt(stamp: str | None) -> dict:
    return {"started": stamp, "status": "incomplete", "slurm_jobid": None, "slurm_log": None, "ended_by": None}


#: What Slurm's states say of a job it ended, in a facility's words (the executor's
#: "SLURM status is: 'TIMEOUT'")
_SLURM_STATES = {
    "TIMEOUT": "Slurm ended it at its time limit (runtime)",
    "OUT_OF_MEMORY": "Slurm ended it at its memory limit (mem_mb)",
    "CANCELLED": "it was cancelled (scancel, or Slurm)",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "it was preempted",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "Slurm ended it at its deadline",
}


#: What Snakemake logs when it is sent SIGTERM (a cron ``timeout``, ``kill``, a time limit on the
#: job running it): it finishes the running jobs, starts no other, and ends through ``onerror``
_GRACEFUL_STOP = "Will exit after finishing currently running jobs"

#: What Snakemake logs when it is interrupted (Ctrl-C, SIGINT): it cancels its running jobs
#: (each exits 130 with selfres's "interrupted" line) and ends through ``onerror``
_USER_INTERRUPT = "Terminating processes on user request"

#: The run record's ``stopped`` of such a run, whose ``runs.tsv`` status is ``stopped``, not ``error``
STOP_REQUESTED = ("snakemake was sent SIGTERM (a cron timeout, kill, or a time limit on the job running it): it "
                  "finished its running jobs and started no others; the samples it did not reach are pending, and "
                  "the next run goes on with them")
#: ... where the signal reached its running jobs too (sent to the process group: GNU timeout, a Slurm
#: time limit on the job running snakemake, systemd): they stopped, and are pending, not failed
STOP_REQUESTED_JOBS_TOO = ("snakemake and its running jobs were sent SIGTERM (a cron timeout, kill of the process "
                           "group, or a time limit on the job running it): the jobs stopped and no others started; "
                           "the samples it did not finish are pending, and the next run goes on with them (a "
                           "training cut short resumes from its last checkpoint, an inference from its written tiles)")
#: A failed job's "died with <Signals.SIGTERM: 15>" (its shell was signalled, with snakemake)
_SIGNALLED = re.compile(r"died with <Signals\.(SIGTERM|SIGINT)\b")
#: ... and of an interrupted run: the jobs it cut short are pending too, not failed
INTERRUPTED = ("snakemake was interrupted (Ctrl-C or SIGINT): it stopped its running jobs and started no others; "
               "the samples it did not finish are pending, and the next run goes on with them (a training cut short "
               "resumes from its last checkpoint, an inference from its written tiles)")


def _ended_by(message: str) -> str | None:
    """Why a failed job ended, from the first line of its error block's ``message:``: sbatch's
    refusal (``sbatch: error: invalid partition specified: x``) or the Slurm state that ended it;
    ``None`` for anything else (a job's own failure, whose log has selfres's ERROR line)."""
    m = re.search(r"SLURM sbatch failed\. The error message was '(?P<why>[^']*)", message)
    if m:
        why = re.sub(r"^sbatch: error: ", "", m["why"].strip())
        return f"sbatch refused to submit it ({why})"
    m = re.search(r"SLURM status is: '(?P<state>[A-Z_]+)'", message)
    if m and m["state"] != "FAILED":
        return _SLURM_STATES.get(m["state"], f"Slurm ended it ({m['state']})")
    return None


def _set_status(job: dict, status: str) -> None:
    """The job's status is its last attempt's."""
    job["status"] = job["attempts"][-1]["status"] = status


def parse_snakemake_log(text: str) -> dict:
    """Read the header and the jobs out of a Snakemake (9.x) run log.

    Parameters
    ----------
    text
        Contents of ``.snakemake/log/<timestamp>.snakemake.log``.

    Returns
    -------
    dict
        ``header`` (started, workflow_id, host, user, snakemake_version, command,
        snakefile, workdir, config_files, config_md5 — those present) and ``jobs``:
        one dict per job with ``jobid``, ``rule``, ``sample`` (or ``None``),
        ``wildcards``, ``reason``, ``output`` (the job's output files as Snakemake prints them,
        comma-separated), ``started``, ``status`` (``finished``, ``failed``,
        ``incomplete``, or ``stopped``: cancelled by Snakemake when it was interrupted),
        ``slurm_jobid`` and ``slurm_log`` (``None`` off Slurm), ``ended_by``
        (why Slurm ended or refused it, e.g. ``Slurm ended it at its time limit (runtime)``;
        ``None`` otherwise) — all of its last attempt — and ``attempts``: one dict per try
        (``started``, ``status``, ``slurm_jobid``, ``slurm_log``, ``ended_by``), more than one when Snakemake retried the job
        (``retries``). Jobs of the target rule ``all`` are left out.
    """
    header: dict = {}
    jobs: dict[int, dict] = {}
    stamp = None
    current = None  # the job block being read
    in_error = None  # the job id of an "Error in rule" block
    error_message = None  # its "message:" (before its jobid)
    quoted = None  # a failed job's log file copied in (show-failed-logs): None, "opening" or "inside"
    failed_before_stop: set[int] = set()  # the jobs that had failed when the run was told to stop
    signalled = False  # a job's shell died of SIGTERM or SIGINT: the next "Error in rule" block is its
    signalled_jobs: set[int] = set()
    for line in text.splitlines():
        # "Logfile <path>:", a rule of "=", the file, a rule of "=": on Slurm the file is the job's
        # own Snakemake output, whose job (jobid 0) is not one of this run's
        rule_line = len(line) >= 20 and set(line) == {"="}
        if quoted == "opening":
            quoted = "inside" if rule_line else None
            if quoted:
                continue
        elif quoted == "inside":
            if rule_line:
                quoted = None
            continue
        if line.startswith("Logfile ") and line.rstrip().endswith(":"):
            quoted = "opening"
            continue
        if not jobs and current is None:
            m = _HEADER_RE.match(line)
            if m and m["key"] in _HEADER_KEYS:
                header[_HEADER_KEYS[m["key"]]] = m["value"].strip()
                continue
        m = _STAMP_RE.match(line.strip())
        if m:
            stamp = _iso(m["stamp"])
            current = in_error = None
            continue
        m = _RULE_RE.match(line)
        if m:
            current = {"jobid": None, "rule": m["rule"], "sample": None, "wildcards": None, "reason": None,
                       "output": None, "started": stamp, "status": "incomplete", "slurm_jobid": None,
                       "slurm_log": None, "ended_by": None, "attempts": [_attempt(stamp)]}
            in_error = None
            continue
        m = _ERROR_RE.match(line)
        if m:
            current, in_error, error_message = None, -1, None
            continue
        m = _FIELD_RE.match(line)
        if m and (current is not None or in_error is not None):
            key, value = m["key"], m["value"].strip()
            if in_error is not None:
                if key == "message" and in_error == -1:
                    error_message = value
                elif key == "jobid" and value.isdigit():
                    in_error = int(value)
                    if signalled:
                        signalled_jobs.add(in_error)
                        signalled = False
                    if in_error in jobs:
                        _set_status(jobs[in_error], "failed")
                        why = _ended_by(error_message or "")
                        jobs[in_error]["ended_by"] = jobs[in_error]["attempts"][-1]["ended_by"] = why
                continue
            if key == "jobid" and value.isdigit():
                jid = int(value)
                if jid in jobs:  # a retry ("Trying to restart job N."): the same job, one more attempt
                    current = jobs[jid]
                    current["status"], current["ended_by"] = "incomplete", None
                    current["attempts"].append(_attempt(stamp))
                else:
                    current["jobid"] = jid
                    jobs[jid] = current
            elif key == "wildcards":
                current["wildcards"] = value
                wc = dict(part.split("=", 1) for part in value.split(", ") if "=" in part)
                current["sample"] = wc.get("sample")
            elif key in ("reason", "output"):
                current[key] = value
            continue
        m = _FINISHED_RE.match(line)
        if m and int(m["jobid"]) in jobs:
            _set_status(jobs[int(m["jobid"])], "finished")
            continue
        if _SIGNALLED.search(line):
            signalled = True
            continue
        interrupt = line.startswith(_USER_INTERRUPT)
        if interrupt or line.startswith(_GRACEFUL_STOP):
            # the jobs that had failed before it: not the stop's doing; an interrupt after a SIGTERM
            # (its jobs cancelled, not let finish) is counted from the interrupt
            if not header.get("stop_requested") or interrupt and header["stop_requested"] != "interrupt":
                header["stop_requested"] = "interrupt" if interrupt else "sigterm"
                failed_before_stop = {jid for jid, j in jobs.items() if j["status"] == "failed"}
                header["failed_before_stop"] = len(failed_before_stop)
            continue
        m = _SLURM_RE.match(line)
        if m and int(m["jobid"]) in jobs:
            job = jobs[int(m["jobid"])]
            job["slurm_jobid"], job["slurm_log"] = int(m["slurm"]), m["log"]
            job["attempts"][-1].update(slurm_jobid=job["slurm_jobid"], slurm_log=job["slurm_log"])
    if header.get("stop_requested") == "interrupt":
        # the jobs Snakemake cancelled did not fail: they were stopped (after SIGTERM the running
        # jobs go on to their end, and one that fails then fails on its own)
        for jid, job in jobs.items():
            if job["status"] != "finished" and jid not in failed_before_stop:
                _set_status(job, "stopped")
    elif header.get("stop_requested") == "sigterm":
        # ... unless the signal reached them too (sent to the process group): those died of it, stopped
        # by the stop as an interrupted run's are, not failed (a helper: a timeout's SIGTERM marked the
        # sample failed and started its failure streak)
        for jid in signalled_jobs - failed_before_stop:
            if jid in jobs and jobs[jid]["status"] == "failed":
                _set_status(jobs[jid], "stopped")
                header["stopped_jobs_too"] = True
    ordered = sorted(jobs.values(), key=lambda j: (j["started"] or "", j["jobid"]))
    return {"header": header, "jobs": [j for j in ordered if j["rule"] != "all"]}


def _as_list(text: str | None) -> list | None:
    """Snakemake writes the config files as a Python list literal."""
    import ast

    if not text:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return list(value) if isinstance(value, (list, tuple)) else [str(value)]


def write_run_record(
    results: str | os.PathLike,
    *,
    status: str,
    snakemake_log: "str | os.PathLike | Sequence[str | os.PathLike] | None" = None,
    samples: Sequence[str] = (),
    extra: dict | None = None,
    finished: str | None = None,
    model_sources: dict[str, str] | None = None,
) -> Path:
    """Write the record of one run and append its line to ``runs/runs.tsv``.

    Parameters
    ----------
    results
        The results root (config key ``results``).
    status
        ``success`` or ``error``; ``stopped`` for a run that ended without either
        (:func:`record_stopped_runs`).
    snakemake_log
        Snakemake's log of this run (or the list of log files Snakemake hands its
        ``onsuccess``/``onerror`` handlers); without it the record has no job list.
    samples
        Sample ids of the run (sheet rows and inbox acquisitions).
    extra
        More fields to store as they are (e.g. ``inbox`` waiting files).
    finished
        When the run ended (``YYYY-MM-DDTHH:MM:SS``); default now.
    model_sources
        ``{sample: the sample whose model it uses}`` (``model_from``): a sample whose source
        did not make its model in this run never ran its own model job (Snakemake holds it
        back, nothing in the log) and counts among the failed samples too.

    Returns
    -------
    Path
        The JSON record written.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    snakemake_log = snakemake_log_file(snakemake_log)
    parsed = read_snakemake_log(snakemake_log)
    header = parsed["header"]
    jobs = parsed["jobs"]
    if status == "error" and header.get("stop_requested") and not header.get("failed_before_stop"):
        # no job had failed when the run was told to stop (those the stop ended are the stop's)
        why = (INTERRUPTED if header["stop_requested"] == "interrupt" else
               STOP_REQUESTED_JOBS_TOO if header.get("stopped_jobs_too") else STOP_REQUESTED)
        status, extra = "stopped", {"stopped": why, **(extra or {})}
    finished = finished or time.strftime("%Y-%m-%dT%H:%M:%S")
    started = (header.get("started") or finished).replace(" ", "T")
    # a sample whose job the run cut short ran to no verdict: neither among the samples run nor the
    # failed ones, so that a failure streak (:func:`failing_runs`) neither starts nor ends with it
    cut_short = {j["sample"] for j in jobs if j["sample"] and j["status"] == "stopped"}
    ran = sorted({j["sample"] for j in jobs if j["sample"]} - cut_short)
    unfinished = unfinished_jobs_by_sample(jobs, stopped=False)
    failed = sorted(set(unfinished) | waiting_on_failed_sources(unfinished, model_sources or {}))
    record = {
        "started": started,
        "finished": finished,
        "status": status,
        "host": header.get("host") or socket.gethostname(),
        "user": header.get("user") or getpass.getuser(),
        "workdir": header.get("workdir") or os.getcwd(),
        "command": header.get("command") or " ".join(sys.argv),
        "workflow_id": header.get("workflow_id"),
        "config_files": _as_list(header.get("config_files")),
        "config_md5": header.get("config_md5"),
        "snakemake_log": str(snakemake_log) if snakemake_log else None,
        **code_identity(),  # selfres_version, source_digest, git_commit, git_dirty
        "software": software_versions(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "samples": list(samples),
        "samples_run": ran,
        "failed_samples": failed,
        "job_counts": dict(Counter(j["rule"] for j in jobs)),
        "jobs": jobs,
    }
    if extra:
        record.update(extra)
    runs = Path(results) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = f"{started.replace(':', '').replace('-', '')}_{status}"
    path = runs / f"{base}.json"
    n = 1
    while path.exists():
        n += 1
        path = runs / f"{base}-{n}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    tsv = runs / "runs.tsv"
    line = [started, finished, status, record["host"], record["user"], str(len(jobs)),
            str(sum(j["status"] not in ("finished", "stopped") for j in jobs)), ",".join(ran), ",".join(failed),
            path.name]
    with open(tsv, "a", encoding="utf-8") as fh:
        if fh.tell() == 0:
            fh.write("\t".join(RUNS_TSV_COLUMNS) + "\n")
        fh.write("\t".join(line) + "\n")
    return path


def failing_runs(results: str | os.PathLike, samples: Sequence[str], *,
                 before: float | None = None) -> dict[str, tuple[int, str]]:
    """``{sample: (runs, since)}`` for the ``samples`` that failed in the runs just before:
    how many recorded runs in a row (``runs/runs.tsv``, newest first) list the sample among
    their failed samples, and when the first of them started (``YYYY-MM-DDTHH:MM:SS``). The
    count stops at the newest run that ran the sample and did not fail it; a run that did
    not run it (nothing to do, or another sheet) leaves the count alone. ``before``: only
    runs that finished before this time (seconds since the epoch), so that the run being
    summarised does not count itself once its own record is written. A missing or unreadable
    ``runs.tsv`` gives ``{}``."""
    try:
        lines = (Path(results) / "runs" / "runs.tsv").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    runs = []
    for line in lines[1:]:
        cells = dict(zip(RUNS_TSV_COLUMNS, line.split("\t")))
        try:
            finished = time.mktime(time.strptime(cells["finished"], "%Y-%m-%dT%H:%M:%S"))
        except (KeyError, ValueError):
            continue
        if before is None or finished < before:
            runs.append((cells["started"], set(filter(None, cells.get("samples_run", "").split(","))),
                         set(filter(None, cells.get("failed_samples", "").split(",")))))
    runs.sort(key=lambda r: r[0], reverse=True)
    out = {}
    for s in samples:
        n, since = 0, None
        for started, ran, failed in runs:
            if s in failed:
                n, since = n + 1, started
            elif s in ran:
                break
        if n:
            out[s] = (n, since)
    return out


def _recorded_starts(runs: Path) -> set[str]:
    """The ``started`` of every run in ``runs/runs.tsv``."""
    try:
        lines = (runs / "runs.tsv").read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return set()
    return {line.split("\t", 1)[0] for line in lines if line.strip()}


def _other_runs_hold_locks(workdir: Path) -> bool:
    """More than one Snakemake run's locks in ``.snakemake/locks`` (``0.input.lock``,
    ``0.output.lock``, ``1.input.lock``…): another run in this working directory is going."""
    held = {p.name.split(".", 1)[0] for p in (workdir / ".snakemake" / "locks").glob("*.lock")}
    return len(held) > 1


def _ended(log: Path) -> bool:
    """Snakemake closes the log of a run that ended (after ``onsuccess``/``onerror``, also on
    SIGTERM) with ``Complete log(s): …``; a killed run's log stops wherever it was."""
    with open(log, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 2048))
        tail = fh.read().decode("utf-8", errors="replace").splitlines()
    return any(line.startswith("Complete log") for line in tail[-4:])


def _writes_under(job: dict, results: Path, workdir: Path) -> bool:
    root = os.path.abspath(results)
    for out in (job.get("output") or "").split(", "):
        path = os.path.abspath(os.path.join(workdir, out.strip())) if out.strip() else ""
        if path == root or path.startswith(root + os.sep):
            return True
    return False


#: What a stopped run's record cannot know (the code and environment of the run that
#: records it are not those of the stopped run); its sample list is its jobs' (``samples_run``).
_UNKNOWN_FOR_STOPPED_RUNS = {"selfres_version": None, "source_digest": None, "git_commit": None, "git_dirty": None,
                             "software": None, "slurm_job_id": None}


def record_stopped_runs(results: str | os.PathLike, current_log: "str | os.PathLike | Sequence | None"
                        ) -> list[Path]:
    """Write the records of runs that ended without ``onsuccess`` / ``onerror``.

    A Snakemake run whose driver is killed (``kill -9``, a node failure, a Slurm time limit
    on the job that runs ``snakemake``) leaves its log in ``.snakemake/log/`` but writes no
    record. The next run calls this before writing its own record: every log beside
    ``current_log`` that Snakemake did not close (:func:`_ended`), whose start is not a line of
    ``runs/runs.tsv`` yet is after its first (an earlier one predates the records), and that ran
    a job writing under ``results`` (not another results folder's run, nor a run stopped by a
    lock or a config mistake before any job) gets a record with status ``stopped``: its end is
    the log's last write, jobs still running then count as not finished. Nothing is written
    while another run holds locks in the working directory (its log is not closed yet either).
    A log without ``output:`` lines (``--quiet rules``) shows no job writing anywhere and is
    never recorded.

    Returns the records written, oldest first.
    """
    current = snakemake_log_file(current_log)
    if not current:
        return []
    current = Path(current)
    log_dir = current.parent
    workdir = log_dir.parent.parent  # <workdir>/.snakemake/log
    if _other_runs_hold_locks(workdir):
        return []
    recorded = _recorded_starts(Path(results) / "runs")
    first = min(recorded, default=None)
    written = []
    for log in sorted(log_dir.glob("*.snakemake.log")):
        if log.resolve() == current.resolve() or _ended(log):
            continue
        parsed = read_snakemake_log(log)
        started = (parsed["header"].get("started") or "").replace(" ", "T")
        if not started or started in recorded or (first is not None and started < first):
            continue
        wd = Path(parsed["header"].get("workdir") or workdir)
        if not any(_writes_under(job, Path(results), wd) for job in parsed["jobs"]):
            continue
        ended = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(log.stat().st_mtime))
        written.append(write_run_record(
            results, status="stopped", snakemake_log=log, finished=ended,
            extra={**_UNKNOWN_FOR_STOPPED_RUNS,
                   "stopped": "the run ended without Snakemake's onsuccess or onerror (its driver was "
                              "killed: kill -9, a node failure or a time limit on the job running snakemake); "
                              "recorded by the next run. 'finished' is the last write to its log; jobs still "
                              "running then are not finished"}))
    return written
