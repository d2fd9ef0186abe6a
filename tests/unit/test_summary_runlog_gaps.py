"""Gaps found by mutation testing of :mod:`selfres.summary` and :mod:`selfres.runlog`: what the
batch summary and the run records say of a sample, asserted as a user reads them."""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager

import pandas as pd
import pytest

from selfres import summary

_METRICS = {"mode": "isotropic", "input_shape": [6, 24, 24], "output_shape": [12, 24, 24],
            "self_validation": {"psnr_model": 33.0, "psnr_interp": 30.5, "ssim_model": 0.91, "ssim_interp": 0.88},
            "flags": []}


def _finished(results, sample, when=None):
    """A sample's folder as a finished run leaves it; every file dated ``when`` where given."""
    d = results / sample
    for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
        (d / sub).mkdir(parents=True)
    (d / "train_fov.json").write_text("{}")
    (d / "qc" / "metrics.json").write_text(json.dumps(_METRICS | {"sample": sample}))
    (d / "report.html").write_text("<html></html>")
    if when is not None:
        for p in d.rglob("*"):
            os.utime(p, (when, when))
    return d


@contextmanager
def _local_time(tz="JST-9"):
    """The process's local time zone set to ``tz`` (a POSIX TZ string: no tz database needed), not UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _table(results, samples, **kw):
    summary.stage_summary(results, samples, results / "summary.tsv", results / "summary.html", **kw)
    return pd.read_csv(results / "summary.tsv", sep="\t").set_index("sample")


def _run_log(path, started, body=""):
    path.write_text(f"SNAKEMAKE\n=========\n  Date: {started}\n\n{body}")
    return path


def test_the_error_of_a_failed_sample_is_its_newest_logs_last_error_line(tmp_path):
    """What the CLI printed last: the last ERROR line of the newest log, whatever the logs' names."""
    logs = tmp_path / "s" / "logs"
    logs.mkdir(parents=True)
    (logs / "train.log").write_text("ERROR: an earlier night's out of memory\n")
    (logs / "normalise.log").write_text("ERROR: first complaint\nsome context\nERROR: s.tif: is truncated\n")
    os.utime(logs / "train.log", (1e9, 1e9))
    os.utime(logs / "normalise.log", (2e9, 2e9))
    assert summary.last_error(logs) == "s.tif: is truncated"
    row = _table(tmp_path, ["s"]).loc["s"]
    assert row["status"] == "failed" and row["error"] == "s.tif: is truncated"


def test_a_sample_whose_report_job_did_not_finish_is_failed_not_a_crash(tmp_path):
    """Every output but report.html (its report job was killed; Snakemake removed its output)."""
    d = _finished(tmp_path, "s")
    (d / "report.html").unlink()
    row = _table(tmp_path, ["s"]).loc["s"]
    assert row["status"] == "failed" and "killed" in row["error"]


@pytest.mark.parametrize("text, why", [('{"mode": "enh', "cannot be read (Unterminated string"),
                                       ("[]", "holds a JSON list, not an object")])
def test_a_damaged_metrics_file_fails_its_sample_and_the_others_are_still_summarised(tmp_path, text, why):
    """A finished sample whose qc/metrics.json was damaged after its run (by hand, a partial copy):
    Snakemake takes it as done, and the summary stopped with a JSONDecodeError traceback ("This is
    a bug"), leaving no summary.tsv nor summary.html for any sample, night after night."""
    _finished(tmp_path, "a")
    d = _finished(tmp_path, "b")
    metrics = d / "qc" / "metrics.json"
    metrics.write_text(text)
    table = _table(tmp_path, ["a", "b"])
    assert table.loc["a", "status"] == "ok"
    row = table.loc["b"]
    assert row["status"] == "failed" and f"{metrics}: {why}" in row["error"]
    assert row["error"].endswith(f"--forcerun {metrics}")
    assert "out of date" in (d / "report.html").read_text()


def test_an_error_line_older_than_the_report_does_not_fail_a_finished_sample(tmp_path):
    """A failed attempt followed by a run that finished the sample: its report is newer than the
    old ERROR line, and the sample is ok."""
    d = _finished(tmp_path, "s")
    (d / "logs" / "train.log").write_text("ERROR: sample 's': out of memory (an earlier attempt)\n")
    os.utime(d / "logs" / "train.log", (1e9, 1e9))
    row = _table(tmp_path, ["s"]).loc["s"]
    assert row["status"] == "ok" and pd.isna(row["error"])
    assert "out of date" not in (d / "report.html").read_text()


def test_this_runs_error_line_is_read_in_local_time_and_within_the_first_minute(tmp_path):
    """The run log's Date is local time: a job that failed 30 s after the run started (its log written
    then) gives its own ERROR line, on a machine whose clock is not UTC, not a generic 'killed'."""
    with _local_time():
        earlier = time.time() - 86400
        _finished(tmp_path, "s", when=earlier)
        now = time.time()
        err_log = tmp_path / "s" / "logs" / "train.log"
        err_log.write_text("ERROR: sample 's': CUDA out of memory\n")
        os.utime(err_log, (now, now))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 30))
        log = _run_log(tmp_path / "run.snakemake.log", started,
                       "[Mon Nov 30 09:02:10 2026]\nrule train:\n    jobid: 4\n    wildcards: sample=s\n"
                       "[Mon Nov 30 09:02:40 2026]\nError in rule train:\n    jobid: 4\n")
        row = _table(tmp_path, ["s"], snakemake_log=log).loc["s"]
    assert row["status"] == "failed"
    assert row["error"].startswith("sample 's': CUDA out of memory")
    assert row["error"].endswith("; the outputs on disk are from an earlier run")


def test_another_samples_finished_report_does_not_make_an_old_report_this_runs(tmp_path):
    """Sample a's export failed in this run, and only sample b's report job ran: a's report is
    an earlier run's, its page says so, and the summary does not link it as this run's."""
    earlier = time.time() - 86400
    for s in ("a", "b"):
        _finished(tmp_path, s, when=earlier)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 600))
    log = _run_log(tmp_path / "run.snakemake.log", started,
                   "[Mon Nov 30 09:01:10 2026]\nrule report:\n    jobid: 11\n    wildcards: sample=b\n"
                   "[Mon Nov 30 09:01:40 2026]\nFinished jobid: 11 (Rule: report)\n"
                   "[Mon Nov 30 09:02:10 2026]\nrule export_tiff:\n    jobid: 12\n    wildcards: sample=a\n"
                   "[Mon Nov 30 09:02:12 2026]\nError in rule export_tiff:\n    jobid: 12\n")
    df = _table(tmp_path, ["a", "b"], snakemake_log=log)
    assert df.loc["b", "status"] == "ok"
    assert df.loc["a", "status"] == "failed" and pd.isna(df.loc["a", "report"])
    assert "earlier run" in df.loc["a", "error"] and "this run's" not in df.loc["a", "error"]
    assert "This report is out of date" in (tmp_path / "a" / "report.html").read_text()


def test_a_remade_model_whose_next_job_failed_in_this_run_is_failed_not_pending(tmp_path):
    """The model was trained again and this run's inference of it failed: a failure of the sample,
    not a stopped run's 'the next run remakes them'."""
    d = _finished(tmp_path, "s", when=time.time() - 86400)
    (d / "model" / "model.json").write_text('{"metadata": {"best_step": 100}}')
    metrics = json.loads((d / "qc" / "metrics.json").read_text())
    metrics["computed_from"] = {"model_json": hashlib.sha256(b"an earlier model").hexdigest()}
    (d / "qc" / "metrics.json").write_text(json.dumps(metrics))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 600))
    log = _run_log(tmp_path / "run.snakemake.log", started,
                   "[Mon Nov 30 09:02:10 2026]\nrule infer:\n    jobid: 5\n    wildcards: sample=s\n"
                   "[Mon Nov 30 09:02:40 2026]\nError in rule infer:\n    jobid: 5\n")
    row = _table(tmp_path, ["s"], snakemake_log=log).loc["s"]
    assert row["status"] == "failed" and "infer" in row["error"]


def test_a_model_from_source_that_is_pending_or_a_restored_adopter_are_not_called_failed(tmp_path):
    """model_from: only a source that failed fails the samples that wait on it; one not run yet
    leaves them pending, and a sample already restored stays ok."""
    df = _table(tmp_path, ["src", "t1"], model_sources={"t1": "src"})  # neither has run
    assert df.loc["src", "status"] == "pending" == df.loc["t1", "status"]
    _finished(tmp_path, "t2")
    (tmp_path / "src" / "logs").mkdir(parents=True)
    (tmp_path / "src" / "logs" / "train.log").write_text("ERROR: sample 'src': the volume is constant\n")
    df = _table(tmp_path, ["src", "t2"], model_sources={"t2": "src"})
    assert df.loc["src", "status"] == "failed"
    assert df.loc["t2", "status"] == "ok" and pd.isna(df.loc["t2", "error"])


def test_a_failure_streak_counts_this_run_once_and_the_runs_before_it(tmp_path):
    """Two recorded runs failed the sample before this one; this run's own record (written before
    its summary, finishing after the sample's logs) is not counted twice: the 3rd run in a row."""
    from selfres.runlog import RUNS_TSV_COLUMNS

    logs = tmp_path / "s" / "logs"
    logs.mkdir(parents=True)
    (logs / "train.log").write_text("ERROR: sample 's': out of memory\n")
    now = time.time()
    os.utime(logs / "train.log", (now - 60, now - 60))

    def stamp(t):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

    runs = [(now - 2 * 86400, now - 2 * 86400 + 600), (now - 86400, now - 86400 + 600), (now - 600, now)]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "runs.tsv").write_text("\t".join(RUNS_TSV_COLUMNS) + "\n" + "".join(
        "\t".join([stamp(s), stamp(f), "error", "h", "u", "3", "1", "s", "s", "r.json"]) + "\n" for s, f in runs))
    row = _table(tmp_path, ["s"]).loc["s"]
    assert row["status"] == "failed"
    assert row["failed_runs"] == 3 and row["failing_since"] == stamp(runs[0][0])
    assert "the 3rd run in a row that failed it" in (tmp_path / "summary.html").read_text()


def test_an_inbox_file_left_waiting_under_a_sample_id_of_the_run_makes_no_second_row(tmp_path):
    _finished(tmp_path, "s")
    rows = summary.stage_summary(tmp_path, ["s"], tmp_path / "summary.tsv", tmp_path / "summary.html",
                                 waiting={"s": str(tmp_path / "inbox" / "s.tif")})
    assert [r["sample"] for r in rows] == ["s"]
    table = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert table["sample"].tolist() == ["s"] and table["status"].tolist() == ["ok"]


def test_an_export_that_failed_in_this_run_is_named_with_its_last_error_line(tmp_path):
    for s in ("mc_c0", "mc_c1"):
        _finished(tmp_path, s)
    exports = tmp_path / "logs" / "export_acquisition"
    exports.mkdir(parents=True)
    (exports / "mc.log").write_text("ERROR: a retried write\nERROR: No space left on device\n")
    rows = [{"sample": s, "status": "ok", "report": f"{s}/report.html"} for s in ("mc_c0", "mc_c1")]
    found = summary.unwritten_exports(tmp_path, {"mc": ["mc_c0", "mc_c1"]}, rows, run_started=time.time() - 30)
    assert found == [{"acquisition": "mc", "file": "mc.ome.tif", "parts": "channels", "on_disk": False,
                      "reason": "its export failed: No space left on device (see logs/export_acquisition/mc.log)"}]


def test_a_mixed_series_names_its_interpolated_time_points_in_time_order_whatever_the_row_order():
    """Rows come in the sheet's (or the ids' text) order: lapse_t10 before lapse_t2."""
    rows = [{"sample": f"lapse_t{t}", "status": st, "report": f"lapse_t{t}/report.html"}
            for t, st in ((10, "fallback_interpolation"), (2, "fallback_interpolation"), (0, "ok"))]
    assert summary.mixed_time_series(rows) == [{"series": "lapse", "interpolated": ["lapse_t2", "lapse_t10"], "of": 3}]


_HEADER = "SNAKEMAKE\n=========\n  Date: 2026-11-30 09:02:09\n  Host: vm\n  User: root\n\n"


def _record(tmp_path, body, *, header=_HEADER, **kw):
    """The run record and runs.tsv line written for a snakemake log of ``header`` + ``body``."""
    from selfres.runlog import RUNS_TSV_COLUMNS, write_run_record

    log = tmp_path / "run.snakemake.log"
    log.write_text(header + body)
    results = tmp_path / "results"
    rec = json.loads(write_run_record(results, status="error", snakemake_log=log, **kw).read_text())
    line = (results / "runs" / "runs.tsv").read_text().splitlines()[-1].split("\t")
    return rec, dict(zip(RUNS_TSV_COLUMNS, line))


def test_a_sample_waiting_on_a_model_whose_training_failed_is_a_failed_sample_of_the_run(tmp_path):
    """model_from: a's train job failed, so b's adopt never ran (nothing of b in the log)."""
    rec, line = _record(tmp_path, "[Mon Nov 30 09:02:10 2026]\nrule train:\n    jobid: 3\n    wildcards: sample=a\n"
                                  "[Mon Nov 30 09:05:10 2026]\nError in rule train:\n    jobid: 3\n",
                        samples=["a", "b"], model_sources={"b": "a"})
    assert rec["failed_samples"] == ["a", "b"] and line["failed_samples"] == "a,b"


def test_a_retried_job_still_running_when_the_run_ended_is_not_finished_nor_failed(tmp_path):
    """Its first attempt failed, Snakemake restarted it, and the run ended (interrupted) while the
    retry ran: the retry was cancelled, the sample is pending and the run stopped, not failed."""
    from selfres.runlog import parse_snakemake_log

    body = ("[Mon Nov 30 09:02:10 2026]\nrule train:\n    jobid: 3\n    wildcards: sample=a\n"
            "[Mon Nov 30 09:05:10 2026]\nError in rule train:\n    jobid: 3\n"
            "Trying to restart job 3.\n[Mon Nov 30 09:05:11 2026]\nrule train:\n    jobid: 3\n"
            "    wildcards: sample=a\n")
    (job,) = parse_snakemake_log(_HEADER + body)["jobs"]
    assert job["status"] == "incomplete" and [a["status"] for a in job["attempts"]] == ["failed", "incomplete"]
    rec, line = _record(tmp_path, body + "Terminating processes on user request, this might take some time.\n",
                        samples=["a"])
    assert rec["status"] == "stopped" and rec["failed_samples"] == [] and line["failed_jobs"] == "0"


def test_the_target_rule_all_is_no_job_of_the_runs_record(tmp_path):
    """The run's jobs and failed jobs count the samples' jobs; ``all`` never finishes in a failed run."""
    rec, line = _record(tmp_path, "[Mon Nov 30 09:02:10 2026]\nrule train:\n    jobid: 3\n    wildcards: sample=a\n"
                                  "[Mon Nov 30 09:05:10 2026]\nError in rule train:\n    jobid: 3\n"
                                  "[Mon Nov 30 09:05:11 2026]\nlocalrule all:\n    input: results/summary.tsv\n"
                                  "    jobid: 0\n", samples=["a"])
    assert [j["rule"] for j in rec["jobs"]] == ["train"] and rec["job_counts"] == {"train": 1}
    assert (line["jobs"], line["failed_jobs"], line["failed_samples"]) == ("1", "1", "a")


def test_a_job_that_never_finished_counts_among_the_failed_jobs_and_every_record_is_kept(tmp_path):
    """A job still running when the run ended with an error (killed: no Error block) is a failed job of
    runs.tsv; three records of one start are three files, none written over."""
    body = ("[Mon Nov 30 09:02:10 2026]\nrule normalise:\n    jobid: 2\n    wildcards: sample=a\n"
            "[Mon Nov 30 09:02:40 2026]\nFinished jobid: 2 (Rule: normalise)\n"
            "[Mon Nov 30 09:02:41 2026]\nrule train:\n    jobid: 3\n    wildcards: sample=a\n")
    for _ in range(3):
        rec, line = _record(tmp_path, body, samples=["a"])
        assert rec["status"] == "error"
        assert (line["jobs"], line["failed_jobs"], line["failed_samples"]) == ("2", "1", "a")
    names = sorted(p.name for p in (tmp_path / "results" / "runs").glob("*.json"))
    assert names == ["20261130T090209_error-2.json", "20261130T090209_error-3.json", "20261130T090209_error.json"]
    assert [line.split("\t")[-1] for line in
            (tmp_path / "results" / "runs" / "runs.tsv").read_text().splitlines()[1:]] == [
        "20261130T090209_error.json", "20261130T090209_error-2.json", "20261130T090209_error-3.json"]


def _killed_log(tmp_path, date, out):
    log_dir = tmp_path / ".snakemake" / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{date.replace(' ', 'T').replace(':', '')}.000000.snakemake.log"
    path.write_text(f"SNAKEMAKE\n=========\n  Date: {date}\n\n[Tue Dec  1 09:02:10 2026]\nrule normalise:\n"
                    f"    output: {out}/b/normalized.ome.zarr\n    jobid: 2\n    wildcards: sample=b\n")
    return path


def test_a_killed_run_of_a_results_folder_whose_name_extends_this_ones_is_not_recorded_here(tmp_path):
    from selfres.runlog import record_stopped_runs

    _killed_log(tmp_path, "2026-12-01 09:02:09", "results-old")
    tonight = _killed_log(tmp_path, "2026-12-02 09:00:00", "results")
    assert record_stopped_runs(tmp_path / "results", [str(tonight)]) == []


def test_a_killed_runs_end_is_its_logs_last_write_in_local_time(tmp_path):
    from selfres.runlog import record_stopped_runs

    with _local_time():
        killed = _killed_log(tmp_path, "2026-12-01 09:02:09", "results")
        os.utime(killed, (time.mktime((2026, 12, 1, 9, 5, 0, 0, 0, -1)),) * 2)
        tonight = _killed_log(tmp_path, "2026-12-02 09:00:00", "results")
        (record,) = record_stopped_runs(tmp_path / "results", [str(tonight)])
    rec = json.loads(record.read_text())
    assert (rec["started"], rec["finished"], rec["status"]) == ("2026-12-01T09:02:09", "2026-12-01T09:05:00", "stopped")


def test_the_record_reads_the_snakemake_log_out_of_the_files_snakemake_hands_its_handlers(tmp_path):
    """Snakemake 9 hands onsuccess/onerror a list of log files; the run's own need not be first."""
    from selfres.runlog import write_run_record

    other = tmp_path / "scheduler.log"
    other.write_text("not the run's log\n")
    log = tmp_path / "2026-11-30T090209.000000.snakemake.log"
    log.write_text(_HEADER + "[Mon Nov 30 09:02:10 2026]\nrule train:\n    jobid: 3\n    wildcards: sample=a\n"
                             "[Mon Nov 30 09:05:10 2026]\nError in rule train:\n    jobid: 3\n")
    rec = json.loads(write_run_record(tmp_path / "results", status="error", snakemake_log=[str(other), str(log)])
                     .read_text())
    assert rec["snakemake_log"] == str(log) and rec["started"] == "2026-11-30T09:02:09"
    assert rec["failed_samples"] == ["a"]
