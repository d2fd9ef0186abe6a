"""Helpers for integration tests against the local Slurm test cluster.

Not a conftest: import it from a test module, e.g.::

    from conftest_slurm import (ensure_slurm_cluster, jobs_seen,
                                snakemake_slurm_command)

    def test_pipeline_on_slurm(tmp_path):
        reason = ensure_slurm_cluster()
        if reason:
            pytest.skip(reason)
        cmd = snakemake_slurm_command(workdir=tmp_path)
        subprocess.run(cmd, check=True, cwd=tmp_path, timeout=1800)
        jobs = jobs_seen(workdir=tmp_path)
        assert {j["rule"] for j in jobs} >= {"normalise", "train", "infer"}
        assert all(j["gpus"] == 1 for j in jobs if j["rule"] in {"train", "infer"})
        assert all(j["State"] == "COMPLETED" for j in jobs)

The cluster is the one of ``scripts/slurm-test-cluster.sh`` (needs root and
apt-get, or Slurm already installed); ``MinJobAge=3600`` there keeps finished
jobs visible to ``scontrol show job`` for an hour, which is what
:func:`jobs_seen` reads.  The snakemake slurm executor submits every job with
``--comment rule_<rule>[_wildcards_<wildcards>]`` and ``--job-name <run uuid>``,
so the comment names the rule and the job name identifies the snakemake run.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm-test-cluster.sh"
SITE_PROFILE = REPO_ROOT / "profiles" / "slurm"
TEST_PROFILE = Path(__file__).resolve().parent / "slurm_test_profile"

#: Exit code of the cluster script meaning "cannot run a cluster here".
_IMPOSSIBLE = 3
#: Setting this environment variable to a non-empty value skips Slurm tests.
SKIP_ENV = "SELFRES_SKIP_SLURM"

_COMMENT_RE = re.compile(r"^(?P<kind>rule|group)_(?P<name>.+?)(?:_wildcards_(?P<wildcards>.*))?$")
# A field starts where a space is followed by `Key=`; keys look like
# `JobId`, `AllocNode:Sid`, `ReqB:S:C:T`, `NtasksPerN:B:S:C`.
_FIELD_SPLIT_RE = re.compile(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)")
_GPU_RE = re.compile(r"gres[:/]gpu(?::[A-Za-z0-9_.]+)?[:=](\d+)")
_SUBMITTED_RE = re.compile(r"submitted with SLURM jobid (\d+)")


@functools.cache
def ensure_slurm_cluster(*, timeout: float = 600) -> str | None:
    """Start (or check) the local test cluster.

    Runs ``scripts/slurm-test-cluster.sh start`` once per process.

    Parameters
    ----------
    timeout
        Seconds to allow the script (first run installs packages: ~20 s).

    Returns
    -------
    str or None
        ``None`` when the cluster accepts jobs; otherwise the reason why no
        cluster can run here, suitable for ``pytest.skip``.

    Raises
    ------
    RuntimeError
        If a cluster could be set up here but did not come up (the message
        carries the script's output and the daemon log tails): a real failure,
        not a reason to skip.
    """
    if os.environ.get(SKIP_ENV):
        return f"{SKIP_ENV} is set"
    if not sys.platform.startswith("linux"):
        return f"the Slurm test cluster needs Linux, this is {sys.platform}"
    if shutil.which("bash") is None:
        return "bash not found"
    if not CLUSTER_SCRIPT.is_file():
        return f"{CLUSTER_SCRIPT} is missing"
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "start"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{CLUSTER_SCRIPT} start took longer than {timeout} s") from None
    if proc.returncode == 0:
        return None
    if proc.returncode == _IMPOSSIBLE:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else "Slurm test cluster impossible here"
    raise RuntimeError(
        f"{CLUSTER_SCRIPT} start failed with exit code {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}"
    )


def parse_scontrol_jobs(text: str) -> list[dict]:
    """Parse the output of ``scontrol show job -o`` (one job per line).

    Parameters
    ----------
    text
        Output of ``scontrol -o show job``; ``"No jobs in the system"`` gives
        an empty list.

    Returns
    -------
    list of dict
        One dict per job with every ``Key=Value`` field as a string (e.g.
        ``JobId``, ``JobName``, ``JobState``, ``Comment``, ``Command``,
        ``Partition``, ``TRES``, ``TresPerJob``, ``WorkDir``, ``ExitCode``),
        plus:

        ``State``
            alias of ``JobState`` (``COMPLETED``, ``FAILED``, ``RUNNING``...).
        ``rule``, ``wildcards``
            from the comment ``rule_<rule>[_wildcards_<wc>]`` set by the
            snakemake slurm executor; ``None`` for jobs not from snakemake.
        ``gpus``
            number of GPUs requested (``--gpus``/``--gres``), 0 if none.
    """
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("JobId="):
            continue
        job: dict = {}
        for field in _FIELD_SPLIT_RE.split(line):
            key, _, value = field.partition("=")
            job[key.strip()] = value.strip()
        job["State"] = job.get("JobState")
        match = _COMMENT_RE.match(job.get("Comment", "") or "")
        job["rule"] = match["name"] if match else None
        job["wildcards"] = match["wildcards"] if match else None
        gpus = 0
        for key in ("TresPerJob", "TresPerNode", "TresPerTask", "TresPerSocket", "TRES"):
            found = _GPU_RE.search(job.get(key, "") or "")
            if found:
                gpus = int(found[1])
                break
        job["gpus"] = gpus
        jobs.append(job)
    return jobs


def jobs_seen(
    *,
    workdir: str | os.PathLike | None = None,
    job_ids: "list[int] | set[int] | None" = None,
) -> list[dict]:
    """Jobs the Slurm controller knows about (finished ones for an hour).

    Parameters
    ----------
    workdir
        Keep only jobs whose ``WorkDir`` is this directory (the snakemake
        working directory: the plugin submits with ``-D <workdir>``).
    job_ids
        Keep only these Slurm job ids (see :func:`submitted_job_ids`).

    Returns
    -------
    list of dict
        As :func:`parse_scontrol_jobs`, ordered by job id.
    """
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True
    )
    jobs = parse_scontrol_jobs(proc.stdout)
    if workdir is not None:
        wanted = os.path.realpath(workdir)
        jobs = [j for j in jobs if os.path.realpath(j.get("WorkDir", "")) == wanted]
    if job_ids is not None:
        ids = {int(i) for i in job_ids}
        jobs = [j for j in jobs if int(j["JobId"]) in ids]
    return sorted(jobs, key=lambda j: int(j["JobId"]))


def submitted_job_ids(log_text: str) -> list[int]:
    """Slurm job ids from snakemake's output ("... submitted with SLURM jobid N")."""
    return [int(m) for m in _SUBMITTED_RE.findall(log_text)]


def snakemake_slurm_command(
    *,
    workdir: str | os.PathLike | None = None,
    snakefile: str | os.PathLike | None = None,
    extra: "list[str] | tuple[str, ...]" = (),
) -> list[str]:
    """The snakemake command line that runs the workflow on the test cluster.

    Site profile ``profiles/slurm`` plus the test override
    ``tests/integration/slurm_test_profile`` as workflow profile.

    Parameters
    ----------
    workdir
        Passed as ``--directory``.
    snakefile
        Passed as ``-s``; default ``<repo>/Snakefile``.
    extra
        More arguments (targets, ``--configfile``...), appended.
    """
    cmd = [
        sys.executable, "-m", "snakemake",
        "-s", str(snakefile or REPO_ROOT / "Snakefile"),
        "--profile", str(SITE_PROFILE),
        "--workflow-profile", str(TEST_PROFILE),
    ]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    return cmd + list(extra)
