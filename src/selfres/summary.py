"""The batch summary: ``summary.tsv`` and ``summary.html`` over a run's samples, failed ones
included, and the "out of date" box on the older report of a sample that failed later.

Light on purpose (no dask, zarr, matplotlib or torch): it runs at the end of every run, and
again from the workflow's ``onerror`` handler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import report
from .atomic import write_text_atomic
from .flags import sample_status
from .provenance import store_attrs
from .runlog import failing_runs, read_snakemake_log, unfinished_jobs_by_sample
from .sheet import part_of

log = logging.getLogger("selfres.summary")

__all__ = ["SAMPLE_OUTPUTS", "last_error", "mixed_time_series", "stage_summary", "unwritten_exports"]


def last_error(log_dir: Path, *, newer_than: float | None = None) -> str | None:
    """The last ``ERROR:`` line in a sample's logs (what the CLI prints on failure), in logs
    written after ``newer_than`` (a modification time) when given."""
    msgs = []
    if log_dir.is_dir():
        for f in sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            if newer_than is not None and f.stat().st_mtime <= newer_than:
                continue
            msgs += _error_lines(f)
    return msgs[-1] if msgs else None


def _error_lines(log_file: Path) -> list[str]:
    """The ``ERROR:`` lines of one job's log, without the prefix."""
    return [line[len("ERROR:"):].strip() for line in log_file.read_text(errors="replace").splitlines()
            if line.startswith("ERROR:")]


#: What a sample's results folder holds when its last run finished (contract names).
#: Snakemake removes the outputs of a job that fails or is killed, so a sample missing
#: any of them did not finish its last run, whatever an older report says.
SAMPLE_OUTPUTS = ("normalized.ome.zarr", "train_fov.json", "model", "restored.ome.zarr", "qc/metrics.json",
                  "report.html")


def _log_time(stamp: str | None) -> float | None:
    """``2026-11-30 09:02:09`` (a Snakemake log's ``Date``, local time) → seconds since the epoch."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) if stamp else None
    except ValueError:
        return None


def _unfinished_message(jobs: Sequence[dict]) -> str:
    """What a sample's unfinished jobs say without an ``ERROR:`` line of their own: why Slurm
    ended or refused each where the run's log says (:func:`selfres.runlog.parse_snakemake_log`'s
    ``ended_by``), else the likely causes."""
    known, unknown = [], []
    for job in jobs:
        where = f" (Slurm job {job['slurm_jobid']}, log {job['slurm_log']})" if job.get("slurm_jobid") else ""
        if job.get("status") == "stopped":
            known.append(f"its {job['rule']} job{where} was cancelled when the run was interrupted (Ctrl-C or "
                         "SIGINT); the next run goes on with it")
        elif job.get("ended_by"):
            known.append(f"its {job['rule']} job{where}: {job['ended_by']}")
        else:
            unknown.append(f"{job['rule']}{where}")
    out = list(known)
    if unknown:
        jobs_word = "job" if len(unknown) == 1 else "jobs"
        out.append(f"its {', '.join(unknown)} {jobs_word} did not finish in this run and wrote no ERROR line: "
                   "killed (a time or memory limit, or by hand) or stopped with the run")
    return "; ".join(out)


#: The start of the error a sample gets when none of its logs holds an ERROR line
_NO_ERROR_LINE = "no ERROR line in its logs"


def _blame_failed_model_sources(rows: list[dict], model_sources: Mapping[str, str]) -> None:
    """A sample not restored because the sample whose model it uses failed (its adopt job never
    ran, so its logs hold no ERROR line) was said to be 'killed (a time or memory limit, or by
    hand)': it now names its source and the source's error."""
    by_id = {r["sample"]: r for r in rows}
    for row in rows:
        src = model_sources.get(row["sample"])
        source = by_id.get(src) if src and src != row["sample"] else None
        if source is None or source.get("status") != "failed" or row.get("report"):
            continue
        if row.get("error") and not str(row["error"]).startswith(_NO_ERROR_LINE):
            continue  # its own failure, with its own ERROR line
        row.update(status="failed", error=f"not restored: its model comes from {src!r} (model_from), which failed: "
                                          f"{source.get('error') or 'see its logs'}")
        row.setdefault("failed_runs", source.get("failed_runs"))
        row.setdefault("failing_since", source.get("failing_since"))


def _samples_by_source(results: Path) -> dict[str, list[str]]:
    """``{acquisition (resolved path): the samples under results made from it}``, from their
    normalised stores' ``source_resolved``: a multichannel file makes one sample per channel,
    named apart from the file. Read from the stores' JSON, without zarr."""
    found: dict[str, list[str]] = {}
    for store in sorted(results.glob("*/normalized.ome.zarr")):
        source = store_attrs(store).get("source_resolved")
        if source:
            found.setdefault(source, []).append(store.parent.name)
    return found


def _outputs_of_an_earlier_model(sample_dir: Path) -> str | None:
    """Why a sample's metrics and report describe an earlier model than its ``model/`` (the qc
    records the ``model.json`` it scored, since the forty-sixth session): a run stopped after
    training and before inference left the new model beside the old model's outputs, which
    Snakemake reruns next time; ``None`` when they agree or either cannot tell."""
    import hashlib

    try:
        recorded = (json.loads((sample_dir / "qc" / "metrics.json").read_text()).get("computed_from")
                    or {}).get("model_json")
        now = hashlib.sha256((sample_dir / "model" / "model.json").read_bytes()).hexdigest()
    except (OSError, ValueError, AttributeError):
        return None
    if not recorded or recorded == now:
        return None
    return ("its model was made again after restored.ome.zarr, its QC and report (a run stopped before they ran): "
            "they are the earlier model's; the next run remakes them")


def _unreadable_metrics(mfile: Path) -> tuple[dict | None, str | None]:
    """A finished sample's ``metrics.json`` and ``None``, or ``None`` and why it cannot be read
    (damaged by hand, a partial copy of the results): that sample's row then says so, and the
    summary of every other sample is still written (it stopped the whole summary with a traceback).
    Snakemake takes the file as done, so the message names the command that remakes it."""
    try:
        metrics = json.loads(mfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"cannot be read ({' '.join(str(exc).split())})"
    else:
        if isinstance(metrics, dict):
            return metrics, None
        why = f"holds a JSON {type(metrics).__name__}, not an object"
    return None, (f"{mfile}: {why}; its QC figures are lost. A plain rerun takes the file as done: redo its qc "
                  f"and report with the run's command and --forcerun {mfile}")


def _stale_report_message(row: dict, html: Path, run_started: str | None) -> str | None:
    """What a failed sample's older report says at its top (``None`` for a sample that is ok)."""
    if row.get("report"):
        return None
    when = f" (started {run_started})" if run_started else ""
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(html.stat().st_mtime))
    return (f"The latest run{when} did not finish this sample: {row.get('error') or 'see its logs'}. This page "
            f"shows the results of the run that wrote it on {written}; the latest run may have remade or "
            "removed files beside it. summary.html (one folder up) shows the current state; the next run that finishes "
            "this sample writes a new report.")


def stage_summary(results: str | Path, samples: Sequence[str], out_tsv: str | Path, out_html: str | Path,
                  *, modes: dict | None = None, snakemake_log: str | Path | None = None,
                  acquisitions: dict[str, Sequence[str]] | None = None,
                  model_sources: dict[str, str] | None = None,
                  waiting: dict[str, str] | None = None) -> list[dict]:
    """Write ``summary.tsv`` / ``summary.html`` over all samples, failed ones included.

    ``snakemake_log``: the log of the run that ends (the workflow's ``onerror`` passes it).
    A sample with a job that did not finish in that run is ``failed``, even where an
    earlier run's outputs are all still on disk (a killed job leaves no ``ERROR:`` line,
    and Snakemake keeps the outputs of the steps before it).

    ``model_sources``: ``{sample: the sample whose model it uses}`` (``model_from``): a sample
    that was not restored because its source failed says so, with the source's error (its
    own logs hold no ERROR line: its adopt job never ran).

    ``waiting``: ``{sample: acquisition}`` of the inbox's acquisitions left for the next run (still
    changing): each a ``pending`` row saying so, linking an earlier run's report where one is on
    disk (a re-exported file), so that no acquisition vanishes from the page.

    ``acquisitions``: ``{acquisition: sample ids}`` of the combined OME-TIFFs the run asks
    (``export_tiff`` with ``channel: all`` / ``timepoint: all``); those it did not write are
    named on the page (:func:`unwritten_exports`).
    """
    results = Path(results)
    run = read_snakemake_log(snakemake_log)
    unfinished = unfinished_jobs_by_sample(run["jobs"])
    run_started = _log_time(run["header"].get("started")) if unfinished else None
    rows = []
    for s in samples:
        mfile = results / s / "qc" / "metrics.json"
        row = {"sample": s, "mode": (modes or {}).get(s)}
        html = results / s / "report.html"
        complete = all((results / s / p).exists() for p in SAMPLE_OUTPUTS)
        # a job of a later run that failed leaves its ERROR line in a log newer than the report
        failed_since = last_error(results / s / "logs", newer_than=html.stat().st_mtime) if complete else None
        jobs_left = unfinished.get(s)
        outdated = _outputs_of_an_earlier_model(results / s) if complete and failed_since is None else None
        if outdated and not jobs_left:  # the model was remade, the steps after it not yet (a stopped run)
            rows.append(row | {"status": "pending", "error": outdated, "report": None})
            if html.exists():
                try:
                    report.set_stale_banner(html, _stale_report_message(rows[-1], html, run["header"].get("started")))
                except OSError as exc:
                    log.warning("%s: could not mark it as out of date (%s)", html, exc)
            continue
        metrics, unreadable = (_unreadable_metrics(mfile) if complete and failed_since is None and not jobs_left
                               else (None, None))
        if metrics is not None:
            # the summary's columns come from metrics.json (report.summary_table derives them)
            row.update(metrics, sample=s, error=None, report=f"{s}/report.html")
        else:
            logs = results / s / "logs"
            fresh_report = None
            if unreadable:
                err = unreadable
            elif jobs_left:  # this run's ERROR line (a minute's grace: a Slurm node's clock may lag the driver's)
                err = last_error(logs, newer_than=run_started - 60) if run_started else None
                if err:  # an attempt's ERROR line; a retry sbatch refused (memory × attempt...) wrote none
                    err += "".join(f"; its {j['rule']} job's retry did not run: {j['ended_by']}" for j in jobs_left
                                   if str(j.get("ended_by") or "").startswith("sbatch refused"))
                err = err or _unfinished_message(jobs_left)
                if complete and any(j["rule"] == "report" and j["sample"] == s and j["status"] == "finished"
                                    for j in run["jobs"]):
                    # the report is this run's (its job finished in this run; a report's time within the
                    # minute's grace was also the last run's, just before): only a job after it (the
                    # OME-TIFF export) did not finish
                    err += (f"; its {', '.join(sorted({j['rule'] for j in jobs_left}))} did not finish, but "
                            "restored.ome.zarr, its QC and report are this run's")
                    fresh_report = f"{s}/report.html"
                elif complete:
                    err += "; the outputs on disk are from an earlier run"
            else:
                err = failed_since or last_error(logs)
            if err is None and logs.is_dir():  # killed (time or memory limit, by hand) or still running
                newest = max(logs.glob("*.log"), key=lambda q: q.stat().st_mtime, default=None)
                err = (f"{_NO_ERROR_LINE}: the job was killed (a time or memory limit, or by hand) "
                       "or has not finished" + (f"; see {s}/logs/{newest.name}" if newest else ""))
            # every job of it left was cancelled when the run was interrupted: not a failure of the sample
            stopped = bool(jobs_left) and all(j.get("status") == "stopped" for j in jobs_left)
            row.update({"status": "failed" if (err or logs.is_dir()) and not stopped else "pending",
                        "error": err, "report": fresh_report})
            if row["status"] == "failed":  # a failure of the runs before too: an old problem, not last night's
                newest_log = max((q.stat().st_mtime for q in logs.glob("*.log")), default=None)
                before = failing_runs(results, [s], before=newest_log).get(s) if newest_log else None
                row.update(failed_runs=1 + (before[0] if before else 0), failing_since=before and before[1])
        if html.exists():
            try:
                report.set_stale_banner(html, _stale_report_message(row, html, run["header"].get("started")))
            except OSError as exc:  # a read-only or full results folder: the summary still gets written
                log.warning("%s: could not mark or unmark it as out of date (%s)", html, exc)
        rows.append(row)
    made_from = _samples_by_source(results) if waiting else {}
    for sid, path in sorted((waiting or {}).items()):
        # the samples an earlier run made of the file (one per channel / time point / image), else its id
        made = [m for m in made_from.get(str(Path(path).resolve()), []) if m not in samples]
        for s in made or [sid] * (sid not in samples):
            earlier = (results / s / "report.html").exists()
            rows.append({"sample": s, "status": "pending", "report": f"{s}/report.html" if earlier else None,
                         "error": f"inbox: {path} is still changing; left for the next run"
                                  + ("; the report is an earlier run's" if earlier else "")})
    _blame_failed_model_sources(rows, model_sources or {})
    unwritten = unwritten_exports(results, acquisitions or {}, rows,
                                  run_started=_log_time(run["header"].get("started")))
    table = report.summary_table(rows).to_csv(sep="\t", index=False)
    sources = {str(r.get("sample")): store_attrs(results / str(r.get("sample")) / "normalized.ome.zarr").get(
        "source_checksum") for r in rows if part_of(str(r.get("sample")))}
    page = report.render_summary(rows, unwritten_exports=unwritten, mixed_series=mixed_time_series(rows, sources),
                                 written=time.strftime("%Y-%m-%d %H:%M %Z"))
    try:
        write_text_atomic(out_tsv, table)
        write_text_atomic(out_html, page)
    except OSError as exc:  # a full disk: the last run's summary would say "ok" of outputs since removed
        for old in (out_tsv, out_html):
            with contextlib.suppress(OSError):
                Path(old).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            write_text_atomic(out_html, report.render_summary_unwritten(exc))
        raise
    return rows


def mixed_time_series(rows: Sequence[dict], sources: Mapping[str, str | None] | None = None) -> list[dict]:
    """The time series (one acquisition's time points, channel by channel: ids such as
    ``lapse_t3``, ``lapse_c1_t3``) whose restored time points are partly the network's output and
    partly the interpolation, the guard's fall-back: the frames change in sharpness and peak
    intensity where it switches (a time-lapse walkthrough: −4.5 % at one frame).

    ``sources``: ``{sample: its acquisition's file checksum}``; samples of other files are no
    series, whatever their ids (``mouse_t1``, ``mouse_t2`` named by hand).

    Returns ``[{"series", "interpolated", "of"}]``: the series' id (``lapse``, ``lapse_c1``),
    its samples that hold the interpolation in time order, and its number of time points.
    """
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for r in rows:
        part = part_of(str(r.get("sample")))
        if part is not None and part[1] is not None:
            source = (sources or {}).get(str(r.get("sample")))
            groups.setdefault((part[0], part[2], source), []).append((part[1], r))
    out = []
    for (stem, channel, _), members in sorted(groups.items(),
                                              key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0,
                                                              str(kv[0][2]))):
        members.sort(key=lambda m: m[0])
        status = [sample_status(r) for _, r in members]  # a finished row: from its metrics.json
        interpolated = [r["sample"] for (_, r), st in zip(members, status) if st == "fallback_interpolation"]
        if interpolated and "ok" in status:
            out.append({"series": stem + (f"_c{channel}" if channel is not None else ""),
                        "interpolated": interpolated, "of": len(members)})
    return out


def unwritten_exports(results: str | Path, acquisitions: dict[str, Sequence[str]], rows: Sequence[dict],
                      *, run_started: float | None = None) -> list[dict]:
    """The combined OME-TIFFs (``{results}/{acquisition}.ome.tif``) that a run did not write, and why.

    A part (channel or time point) that failed or was not restored holds its file back
    (Snakemake writes it only from every part). With every part restored, a missing file is
    named only in the summary of a run that stopped (``onerror``, which passes the run's
    start as ``run_started``): with its export job's ``ERROR:`` line where that job ran in
    this run (its log is newer than the start, with a minute's grace for a node's clock),
    else as a run that stopped before the export. The summary rule itself runs beside the
    exports (``run_started`` ``None``): there a missing file may just not be written yet.

    Returns ``[{"acquisition", "file", "parts", "reason", "on_disk"}]``; ``parts``: "channels",
    "time points" or both; ``on_disk``: a file that an earlier run wrote is still there, and
    does not hold this run's parts.
    """
    results = Path(results)
    restored = {r["sample"] for r in rows if r.get("report")}  # a failed or pending row links no report
    status = {r["sample"]: r.get("status") for r in rows}
    out = []
    for acquisition, parts in acquisitions.items():
        path = results / f"{acquisition}.ome.tif"
        not_done = [s for s in parts if s not in restored]
        if not_done:
            failed = [s for s in not_done if status.get(s) == "failed"]
            reason = f"{', '.join(failed)} failed" if failed else f"{', '.join(not_done)} not restored yet"
        elif path.exists() or run_started is None:
            continue
        else:
            log_file = results / "logs" / "export_acquisition" / f"{acquisition}.log"
            ran = log_file.is_file() and log_file.stat().st_mtime >= run_started - 60
            errors = _error_lines(log_file) if ran else []
            reason = (f"its export failed: {errors[-1]} (see logs/export_acquisition/{log_file.name})" if errors
                      else "the run stopped before its export")
        found = [part_of(s) or (s, None, None) for s in parts]  # (acquisition, time point, channel)
        what = " and ".join(word for word, i in (("channels", 2), ("time points", 1))
                            if any(f[i] is not None for f in found)) or "parts"
        out.append({"acquisition": acquisition, "file": path.name, "parts": what, "reason": reason,
                    "on_disk": path.exists()})
    return out
