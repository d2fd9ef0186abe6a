"""Self-contained HTML quality reports (per sample and for the whole run).

Everything a report needs is embedded in the page: figures (:mod:`selfres.figures`) are PNG
images inlined as base64 ``data:`` URIs, the table sorting of the summary page is a few lines
of inline JavaScript, and styles are inline CSS. A report therefore opens offline, from a
copied folder, or as an e-mail attachment. What the flags mean is :mod:`selfres.flags`; the
paragraph for a methods section, :mod:`selfres.methods_text`.

The module depends on numpy, pandas and matplotlib only (no torch). All text that
comes from users (sample ids, paths, provenance, error messages, flags) is escaped.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
import logging
from typing import Any

import numpy as np
import pandas as pd

from .figures import (DETAIL_MAX_SIDE_PX, KEEP_MIN_GAIN_DB, as_zyx, bead_frames, display_range, fov_bbox,
                      holdout_bbox, kept_steps, log_frame, only_z_resampled, prepare_views, sample_figures)
from .flags import BROKEN_OUTPUT_FLAGS, FLAG_EXPLANATIONS, explain_flag, implausible_isotropy_note, sample_status
from .methods_text import methods_text
from .wording import (baseline_name, duration_text, esc, extras_names, extras_text, fmt, lateral_pixels_text, num,
                      shape_text, stop_text)

log = logging.getLogger(__name__)

__all__ = [
    "render_sample_report",
    "set_stale_banner",
    "SUMMARY_COLUMNS",
    "summary_table",
    "render_summary",
    "render_summary_unwritten",
]


def _img_tag(png: bytes, *, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def _box_words(box: Any) -> Any:
    """``[[z0, z1], [y0, y1], [x0, x1]]`` (train_fov.json's, end excluded) as ``z 0–31, y 0–101,
    x 0–127 (input voxels, first–last, counted from 0)``: first and last, as the caption's planes
    (a walkthrough read "planes 1–44" and "z 1–45 … end excluded" for one box); anything else as it is."""
    try:
        bounds = [(int(a), int(b)) for a, b in box]
    except (TypeError, ValueError):
        return box
    if len(bounds) != 3:
        return box
    return ", ".join(f"{ax} {a}–{b - 1}" for ax, (a, b) in zip("zyx", bounds)) + \
        " (input voxels, first–last, counted from 0)"


def _z_extent_words(train_fov: Any, nz: int) -> str:
    """``. In z, the training field of view: planes 0–31; the held-out region: planes 40–63
    (of the input's 100)``: what the XY projection's boxes cannot show; empty when unknown."""
    spans = [(name, box[0]) for name, box in (("the training field of view", fov_bbox(train_fov)),
                                               ("the held-out region", holdout_bbox(train_fov))) if box]
    if not spans:
        return ""
    words = "; ".join(f"{name}: {'all planes' if (z0, z1) == (0, nz) else f'planes {z0}–{z1 - 1}'}"
                      for name, (z0, z1) in spans)
    return f". In z, {words} (of the input's {nz}, counted from 0)"


def _draw_fov_note(train_fov: Any) -> str:
    """Plain-text description of a training FOV given in any supported form."""
    if train_fov is None:
        return ""
    if isinstance(train_fov, str):
        return train_fov
    if isinstance(train_fov, Mapping):
        parts = []
        for key in ("train", "bbox", "slices", "holdout", "held_out", "source", "reason"):
            if key in train_fov:
                parts.append(f"{key}: {_box_words(train_fov[key])}")
        return "; ".join(parts) if parts else json.dumps(train_fov, default=str)
    for attr in ("train", "bbox", "slices"):
        if hasattr(train_fov, attr):
            return f"{attr}: {getattr(train_fov, attr)}"
    return str(train_fov)


# ----------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1150px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;
padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
.warn{border:2px solid #c0392b;background:#fdecea;padding:.8em 1em;margin:1em 0;border-radius:4px}
.warn h3{margin:.1em 0 .4em 0;color:#922}
.flag{border-left:4px solid #e0a800;background:#fff8e1;padding:.4em .8em;margin:.5em 0}
.status-ok{color:#1a7f37;font-weight:bold}.status-failed{color:#c0392b;font-weight:bold}
.status-fallback_interpolation{color:#b36b00;font-weight:bold}.status-output_broken{color:#c0392b;font-weight:bold}
tr.failed td{background:#fdecea}tr.fallback td{background:#fff8e1}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
.muted{color:#666;font-size:.9em}
.verdict{font-size:1.05em;background:#f4f7fb;border:1px solid #d5dde8;padding:.6em .9em;border-radius:4px}
.toc{font-size:.9em}
blockquote.methods{margin:.5em 0;padding:.6em .9em;border-left:4px solid #9aa7b8;background:#fafafa}
th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" \\2195";color:#999}
"""


def _page(title: str, body: str, *, script: str = "", max_width_px: int | None = None) -> str:
    """An HTML page; ``max_width_px`` widens the body (the summary's table: at the reports' 1150 px
    its last columns, times and errors, scrolled out of sight on a 1400-px window, a walkthrough)."""
    js = f"<script>{script}</script>" if script else ""
    wide = f"body{{max-width:{int(max_width_px)}px}}" if max_width_px else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{_CSS}{wide}</style></head><body>\n"
        f"{body}\n{js}</body></html>\n"
    )


# A sample report whose sample failed a later run says so at its top (summary.stage_summary):
# the banner lies between these markers, so the next summary can replace or remove it.
_STALE_START, _STALE_END = "<!-- selfres:stale -->", "<!-- /selfres:stale -->"


def set_stale_banner(report_html: str | Path, message: str | None) -> bool:
    """Put ``message`` at the top of a written sample report (``None``: take it away).

    The banner says the report no longer shows the sample's current state (its last run
    failed; the report is an earlier run's). The file's modification time is kept: the
    report's age is what marks when the sample last finished (the summary and Snakemake read
    it). Returns whether the file changed.
    """
    path = Path(report_html)
    if message is None:  # the common case, every summary: the banner sits right after <body>
        with open(path, "rb") as fh:
            if _STALE_START.encode() not in fh.read(65536):
                return False
    text = path.read_text(encoding="utf-8")
    start, end = text.find(_STALE_START), text.find(_STALE_END)
    bare = text[:start] + text[end + len(_STALE_END):] if 0 <= start < end else text
    if message is None:
        new = bare
    else:
        banner = (f'{_STALE_START}<div class="warn" id="stale"><h3>This report is out of date</h3>'
                  f"<p>{esc(message)}</p></div>{_STALE_END}")
        at = bare.find("<body>")
        new = bare[:at + len("<body>")] + banner + bare[at + len("<body>"):] if at >= 0 else banner + bare
    if new == text:
        return False
    from .atomic import write_text_atomic

    stat = path.stat()
    write_text_atomic(path, new)  # a full disk leaves the report as it was, and no temporary beside it
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return True


def _voxel_text(voxel_size: Sequence[float] | None) -> str | None:
    """``z × y × x`` to 4 significant digits (the report's 3 decimals printed 0.02249 µm as 0.022)."""
    if not voxel_size:
        return None
    return " × ".join(f"{float(v):.4g}" for v in voxel_size)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class=\"num\">{esc(fmt(c))}</td>" if isinstance(c, (int, float, np.number))
            and not isinstance(c, bool) else f"<td>{esc(fmt(c))}</td>" for c in row
        ) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _diff(a: Any, b: Any) -> float | None:
    a, b = num(a), num(b)
    return None if a is None or b is None else a - b


#: Flags shown as a red warning box, first, with these titles.
_WARNING_TITLES = {
    "restored_not_finite": "the restored volume as written is broken (do not use it)",
    "restored_unlike_input": "the restored volume as written is broken (do not use it)",
    "restored_level_shifted": "the restored volume is not at its input's intensity level",
    "model_worse_than_interpolation": "the guard did not accept the network over interpolation",
    "worse_than_interpolation_on_reference": "against its reference the output is worse than interpolation",
}


#: The flags whose box gives what QC measured: the ``restored_check`` entry and the extreme it names
#: (the demo's beads: 0.41 % of the window, where the README quoted 0.54 % and the flag said only "over 0.1 %")
_MEASURED_SHARES = {"restored_undershoots": ("undershoot", "output_min", "darkest"),
                    "restored_overshoots": ("overshoot", "output_max", "brightest")}


#: isotropic mode's flags whose advice suspects an axial σ estimated too large
_SIGMA_SUSPECTED = ("restored_undershoots", "restored_overshoots", "restored_brighter")


def _flag_sigma_given(flag: str, metrics: Mapping[str, Any] | None) -> str:
    """For an isotropic sample whose axial σ was given (not estimated), a flag's box says so: its advice
    blames an estimate read too large, which a given σ is not (a review's flat sheets in xy, restored with
    their true σ: +1.8 dB over z-cubic against the truth, yet dark halos along z flagged with that advice)."""
    m = metrics or {}
    deg = m.get("isotropic_degradation")
    if flag not in _SIGMA_SUSPECTED or m.get("mode") != "isotropic" or not isinstance(deg, Mapping):
        return ""
    source, sigma = deg.get("sigma_source"), num(deg.get("sigma_px"))
    if not source or source in ("estimated", "unestimated"):
        return ""
    setting = "isotropic.axial_sigma_px" if source == "settings" else str(source)
    at = f": {sigma:.3g} lateral pixels" if sigma is not None else ""
    return (f" The axial σ here was given ({setting}{at}), not estimated: check what you gave there (the extra "
            "axial blur; z,y,x order and units; the optics' numbers). If it is your optics' blur, structures thinner "
            "in z than that σ (sheets or fibres lying flat in xy, sub-resolution points) ring so even with the right "
            "σ, and a training cut short can add to it; measure intensities on the interpolation.")


def _flag_measured(flag: str, metrics: Mapping[str, Any] | None) -> str:
    """What QC measured behind a flag, where the explanation gives only its thresholds (``""`` else), and
    for isotropic mode's σ-suspecting flags whether the σ was given (:func:`_flag_sigma_given`)."""
    return _flag_shares(flag, metrics) + _flag_sigma_given(flag, metrics)


def _flag_shares(flag: str, metrics: Mapping[str, Any] | None) -> str:
    """The share of the QC window QC measured behind an undershoot/overshoot flag (``""`` else)."""
    check = (metrics or {}).get("restored_check") or {}
    if flag not in _MEASURED_SHARES or not isinstance(check, Mapping):
        return ""
    key, extreme_key, extreme = _MEASURED_SHARES[flag]
    shares = check.get(key)
    if not isinstance(shares, Mapping):
        return ""
    out, interp, at = num(shares.get("output")), num(shares.get("interpolation")), num(shares.get(extreme_key))
    if out is None or interp is None:
        return ""
    return (f" Here: {out * 100:.2g} % of the QC window (the interpolation: {interp * 100:.2g} %)"
            + (f"; the {extreme} output voxel at {at:.3g} in normalised units (0 and 1 are the input "
               "intensities at the normalisation percentiles)" if at is not None else "") + ".")


def _flags_html(flags: Sequence[str], metrics: Mapping[str, Any] | None = None) -> str:
    if not flags:
        return "<p>No flags: no problem was detected automatically.</p>"
    out = []
    for flag in flags:
        meaning, todo = explain_flag(flag)
        meaning += _flag_measured(flag, metrics)
        if flag in _WARNING_TITLES:
            out.append(
                f'<div class="warn" id="flag-{esc(flag)}"><h3>Warning: {esc(_WARNING_TITLES[flag])} '
                f"({esc(flag)})</h3><p>{esc(meaning)}</p>"
                f"<p><b>What to do:</b> {esc(todo)}</p></div>")
        else:
            out.append(
                f'<div class="flag" id="flag-{esc(flag)}"><b>{esc(flag)}</b>: '
                f"{esc(meaning)}<br><b>What to do:</b> {esc(todo)}</div>")
    # the prominent warning first
    out.sort(key=lambda s: not s.startswith('<div class="warn"'))
    return "".join(out)


def _bead_summary(bead_table: Any, voxel_units: tuple | None = None) -> pd.DataFrame | None:
    """Median FWHM per axis, input vs output, from a bead table.

    Accepted forms: wide columns ``fwhm_{z,y,x}_{in,out}`` (optionally with ``_um`` or
    ``_px`` after ``fwhm_?``), or long form with a ``stage``/``which``/``volume``
    column valued ``input``/``output`` (or ``in``/``out``) and ``fwhm_{z,y,x}``
    columns. Columns in µm (``fwhm_z_um``…) are preferred over voxel columns (the
    input and output voxels differ in size). A dict is converted with
    :class:`pandas.DataFrame`. ``voxel_units``: :func:`_voxel_sizes` of the two grids; when
    the voxel size is unknown (its unit is not µm), a long table's widths are given in output
    voxels (QC's ``_um`` columns then hold each grid's own voxels, which do not compare).
    """
    if bead_table is None:
        return None
    df = bead_table if isinstance(bead_table, pd.DataFrame) else pd.DataFrame(bead_table)
    if df.empty:
        return None
    frames = bead_frames(df) if voxel_units is not None and voxel_units[2] != "µm" else None
    if frames is not None:
        vin, vout, unit = voxel_units
        common = pd.concat([
            pd.DataFrame({f"fwhm_{a}": pd.to_numeric(t[f"fwhm_{a}"], errors="coerce") * v[i]
                          for i, a in enumerate("zyx")}).assign(volume=name)
            for t, v, name in ((frames[0], vin, "input"), (frames[1], vout, "output"))])
        res = _bead_summary(common)
        if res is not None:
            res.attrs["unit"] = unit
        return res
    cols = {c.lower(): c for c in df.columns}
    out: dict[str, dict[str, float | None]] = {}
    used: set[str] = set()
    stage_col = next((cols[k] for k in ("stage", "which", "volume", "kind") if k in cols), None)
    fitted: dict[str, pd.Series] = {}  # per stage: the rows (beads) whose every axis was fitted
    for axis in "zyx":
        for stage, aliases in (("input", ("in", "input")), ("output", ("out", "output"))):
            val = None
            widths = None
            if stage_col is not None:
                mask = df[stage_col].astype(str).str.lower().isin(aliases)
                for cand in (f"fwhm_{axis}_um", f"fwhm_{axis}", f"fwhm_{axis}_px"):
                    if cand in cols and mask.any():
                        widths = pd.to_numeric(df.loc[mask, cols[cand]], errors="coerce")
                        used.add(cand)
                        break
            else:
                for suf in aliases:
                    for cand in (f"fwhm_{axis}_um_{suf}", f"fwhm_{axis}_{suf}",
                                 f"fwhm_{axis}_px_{suf}", f"{suf}_fwhm_{axis}"):
                        if cand in cols:
                            widths = pd.to_numeric(df[cols[cand]], errors="coerce")
                            used.add(cand)
                            break
                    if widths is not None:
                        break
            if widths is not None:
                val = widths.median()
                ok = widths.notna()
                fitted[stage] = ok if stage not in fitted else fitted[stage] & ok  # the same rows on every axis
            out.setdefault(axis, {})[stage] = num(val)
    res = pd.DataFrame(out).T[["input", "output"]]
    if res.isna().all().all():
        return None
    res.index.name = "axis"
    res.attrs["unit"] = "µm" if any("_um" in c for c in used) else "voxels"
    # the beads the medians rest on: those with every axis fitted (as metrics.bead_fwhm_summary counts;
    # a failed fit, common along a coarse z, leaves that bead out of its axis' median)
    res.attrs["n_beads"] = int(fitted["input"].sum()) if "input" in fitted else 0
    if stage_col is not None:
        res.attrs["n_beads_out"] = int(fitted["output"].sum()) if "output" in fitted else 0
    return res


def _gain_text(a: Any, b: Any, *, digits: int) -> str:
    d = _diff(a, b)
    return "–" if d is None else f"{d:+.{digits}f}"


def _holdout_name(metrics: Mapping[str, Any]) -> str:
    """What the held-out figure scores, for the verdict: isotropic mode scores lateral slices
    made to look axial, with an axial σ the figure cannot check."""
    if metrics.get("mode") != "isotropic":
        return "the held-out region"
    deg = metrics.get("isotropic_degradation") or {}
    sigma = num(deg.get("sigma_px"))
    source = deg.get("sigma_source") or "source not recorded"
    told = (f" (axial σ {lateral_pixels_text(sigma, metrics.get('voxel_size_in'), equals=True)}, {source})"
            if sigma is not None else "")
    return f"held-out lateral slices made to look axial{told}"


NARROW_INTERVAL_DB = 0.5
"""A held-out gain interval across 0 at most this wide (dB) is a measured near-zero gain, not a region
too small to tell: the verdict says so in those words."""

Z_ONLY_EVIDENCE = ("in the project's benchmark (21 real volumes at scale 2,1,1) the network lost to tricubic on "
                   "four, by up to 0.54 dB, while their held-out gains read +0.5 to +2.75 dB")
"""Why an ``enhance`` output upsampled along z alone is worth a look (docs/quality.md,
"Twenty-ninth session": the held-out check's gain at ``2,1,1`` against the truth)."""
Z_ONLY_CAVEAT = (
    "Only z was upsampled here, and at z-only factors the held-out gain is a loose estimate of the true one: "
    "the held-out input is one z scale coarser again, where the network's advantage can be larger than on "
    f"the acquisition ({Z_ONLY_EVIDENCE}). Judge this sample by the XZ pictures below as well; "
    "<code>isotropic</code> mode, which learns z from lateral slices, is the other route for a z stack.")


def _verdict(metrics: Mapping[str, Any], status: str, train_fov: Mapping[str, Any] | None = None) -> str:
    """One-paragraph 'at a glance' summary in plain words (``train_fov``: ``train_fov.json``, for
    how much structure the held-out region holds)."""
    sv = metrics.get("self_validation") or {}
    gain = _diff(sv.get("psnr_model"), sv.get("psnr_interp"))
    subject = "The network" + extras_text(metrics.get("inference_extras"))
    baseline = baseline_name(metrics.get("mode"))
    region = esc(_holdout_name(metrics))
    margin = num(metrics.get("guard_margin_db"))
    flagged = "model_worse_than_interpolation" in (metrics.get("flags") or [])
    # enhance's untrained start (tricubic + back-projection) is held to the confidence test or the margin, a
    # trained network to the margin alone (train.guard_with_extras)
    kept_start = metrics.get("mode") == "enhance" and num(metrics.get("best_step")) == 0
    confidence = num(metrics.get("guard_confidence"))  # the kept start's test
    if confidence is None:  # metrics written before it was recorded: the default then and now
        from .settings import TrainSettings

        confidence = TrainSettings.guard_confidence
    bits = []
    if status == "output_broken":  # said first: the figures below judge the model, not this file
        bits.append("<b class=\"status-failed\">restored.ome.zarr as written is broken: do not use it</b> "
                    f"({esc(', '.join(f for f in metrics.get('flags') or [] if f in BROKEN_OUTPUT_FLAGS))}; "
                    "see the warning below). What follows is about the model on its held-out region, "
                    "not about that file.")
    if status == "failed":
        bits.append("<b class=\"status-failed\">This sample failed.</b>")
    elif gain is None:
        bits.append("No self-validation figure is available for this sample.")
    elif flagged and metrics.get("coarse_scale_failed"):
        # the guard's other test: a learned mapping whose coarse-scale gain was not above 0
        bits.append(f"<b class=\"status-failed\">{esc(subject)} scores {esc(f'{gain:+.2f}')} dB PSNR over "
                    f"{baseline} on {region}, but the guard did not accept it</b>: its gain one scale coarser, "
                    "where training checks that what it learned carries over to a finer grid, was not above 0.")
    elif flagged and margin is not None and gain > margin:  # re-scored here above the guard's own figure
        bits.append(f"<b class=\"status-failed\">{esc(subject)} scores {esc(f'{gain:+.2f}')} dB PSNR over "
                    f"{baseline} on {region} as scored for this report, but the guard, scoring the same region "
                    "when the model was made, did not accept it</b> (a figure this close to the margin, "
                    f"train.guard_margin_db = {esc(fmt(margin))} dB, can move a little between devices).")
    elif flagged and gain >= 0.005 and kept_start:
        rules = ([f"a gain above 0 at {confidence * 100:g} % when its blocks are resampled"] if confidence > 0
                 else []) + ([f"a gain above train.guard_margin_db = {esc(fmt(margin))} dB"] if margin else [])
        bits.append(f"<b class=\"status-failed\">{esc(subject)} beats {baseline} on {region} by "
                    f"only {esc(f'{gain:+.2f}')} dB PSNR</b>, and a model that kept its starting point passes the "
                    f"guard only with {' or '.join(rules) or 'a gain above 0'}"
                    + (" (the guard's interval, taken when the model was made, did not clear 0; one this close to "
                       "0 can move a little between devices)" if confidence > 0 else "") + ".")
    elif flagged and gain >= 0.005 and margin is not None and margin > 0:
        bits.append(f"<b class=\"status-failed\">{esc(subject)} beats {baseline} on {region} by "
                    f"only {esc(f'{gain:+.2f}')} dB PSNR</b>, less than the margin the guard asks of a trained "
                    f"network (train.guard_margin_db = {esc(fmt(margin))} dB): too little to trust that the "
                    "gain carries over to the whole volume.")
    elif flagged or gain <= 0:
        bits.append(f"<b class=\"status-failed\">{esc(subject)} does not beat {baseline}</b> on "
                    f"{region} ({esc(f'{gain:+.2f}')} dB PSNR).")
    else:  # passed the guard: a small gain passes when it is above 0 in every resample of the region
        shown = f"{gain:+.2f}" if gain >= 0.005 else f"{gain:+.2g}"
        bits.append(f"<b class=\"status-ok\">{esc(subject)} beats {baseline}</b> on "
                    f"{region} by {esc(shown)} dB PSNR.")
    interval = metrics.get("holdout_gain_db_interval")
    if gain is not None and isinstance(interval, (list, tuple)) and len(interval) == 2:
        lo, hi = num(interval[0]), num(interval[1])
        if lo is not None and hi is not None:
            nd = 2 if f"{lo:+.2f}" != f"{hi:+.2f}" else 3  # a narrow interval keeps its two ends apart
            # (a coarse-scale failure has its own reason, said above)
            below = (flagged and lo > 0 and margin is not None and gain < margin
                     and not metrics.get("coarse_scale_failed") and not kept_start)
            start_rule = (f" (a gain above 0 at {confidence * 100:g} % is enough only for a model that kept its "
                          "starting point)" if confidence > 0 else "")
            # a wide interval across 0: the region cannot tell; a narrow one: it can, and the gain is about 0
            # (a walkthrough's region full of cells read -0.01 to +0.10 and was called "too uniform")
            unsure = ("; the region is too small or too uniform to tell the two apart." if hi - lo > NARROW_INTERVAL_DB
                      else "; a gain this small cannot be told from 0 on this region.")
            bits.append(f"Resampling blocks of the held-out region puts that gain between {esc(f'{lo:+.{nd}f}')} "
                        f"and {esc(f'{hi:+.{nd}f}')} dB (95 %)"
                        + (unsure if lo < 0 < hi
                           else ": consistent, but a trained network must clear the margin" + start_rule + "."
                           if below else "."))
    scores = (train_fov or {}).get("scores") if isinstance(train_fov, Mapping) else None
    held, whole = (num(scores.get("holdout_structure")), num(scores.get("volume_structure"))) \
        if isinstance(scores, Mapping) else (None, None)
    from .fov import SPARSE_HOLDOUT_SHARE

    if gain is not None and held is not None and whole and whole > 0 and held < SPARSE_HOLDOUT_SHARE * whole:
        bits.append(f"The held-out region holds little structure ({held / whole:.0%} of the volume's average, by the "
                    "structure score that placed it: the cyan box in the projections), so this figure mostly scores "
                    f"background, where a network has little to gain: it leans towards {baseline}. A larger "
                    "fov.holdout_fraction reaches further into the sample; with a training_fov given, the held-out "
                    "region is the largest slab beside it.")
    psf = metrics.get("psf_sigma_um")
    if isinstance(psf, (list, tuple)) and len(psf) == 3:
        bits.append("Training and this held-out score used PSF-scaled targets (the PSF given as "
                    f"train.psf_sigma_um, σ z,y,x = {esc(', '.join(fmt(num(v)) for v in psf))} µm): "
                    "the figure is only as right as that PSF.")
    noise_at = metrics.get("noise_sigma_at")
    from .noise import NOISE_AT

    low, mid = ((num(noise_at.get(NOISE_AT[0])), num(noise_at.get(NOISE_AT[1]))) if isinstance(noise_at, Mapping)
                else (None, None))
    if low is not None and mid is not None and max(low, mid) > 0:
        given = ("The held-out input was given this acquisition's own noise" if metrics.get("adopted_from") else
                 "The training inputs and the held-out input were given the acquisition's own noise")
        bits.append(f"{given} (estimated σ {low:.2g} at 10 % and {mid:.2g} at 50 % of the normalised range), so "
                    "the figure counts what that noise does to the output"
                    + ("; the training inputs were given the noise of the acquisition that trained the model."
                       if metrics.get("adopted_from") else "."))
    elif low is not None and mid is not None:
        bits.append("No noise could be measured in the acquisition (none, too few voxels to tell, or noise that "
                    "the estimate could not tell from fine structure, as on a single plane of fine texture), so "
                    "the training inputs and the held-out input were not given any: if the acquisition is noisy, "
                    "the figure does not count what its noise does to the output.")
    elif metrics.get("mode") == "enhance" and metrics.get("noise_model") not in (None, "match"):
        bits.append(f"Noise matching is off (train.degradation.noise: {esc(str(metrics.get('noise_model')))}): "
                    "the held-out input is cleaner than the acquisition, so on a noisy acquisition this figure "
                    "can favour the network where the whole volume does not.")
    if (kept_start
            and int((metrics.get("inference_extras") or {}).get("back_projection_iterations") or 0) > 0):
        whose = ("the output" if metrics.get("restored_content", "model") == "model"
                 else "the network's output, kept beside,")  # a fall-back delivers the interpolation
        bits.append(f"Training kept its starting point (best step 0): {whose} is tricubic interpolation "
                    "followed by back-projection, not a learned restoration.")
    alone = num(metrics.get("holdout_gain_network_alone_db"))
    extras_words = extras_names(metrics.get("inference_extras"), detail=False)
    if not kept_start and alone is not None and gain is not None and extras_words:
        # how much of the held-out gain the network learned (a walkthrough: +0.88 dB, +0.02 of it the network's)
        bits.append(f"The network alone, without {extras_words}, scores {esc(f'{alone:+.2f}')} dB over {baseline} "
                    f"on that region" + (f": most of the gain is the {extras_words}'s, not the learned network's."
                                         if alone < gain / 2 else "."))
    shapes = metrics.get("input_shape") or (), metrics.get("output_shape") or ()
    if (metrics.get("mode") == "enhance" and metrics.get("restored_content", "model") == "model" and gain is not None
            and only_z_resampled(*shapes)):
        bits.append(Z_ONLY_CAVEAT)
    ref = metrics.get("reference") or {}
    r_out, r_int = num(ref.get("psnr")), num(ref.get("psnr_interp"))
    if r_out is not None and r_int is not None and metrics.get("restored_content", "model") == "model":
        better = r_out > r_int
        # the truth's gain beside the held-out one, where the two tell different stories (a walkthrough: a
        # report opening "+1.25 dB" with a reference at +0.24 dB further down, unremarked)
        overstated = (better and gain is not None and metrics.get("mode") == "enhance"
                      and gain - (r_out - r_int) >= HOLDOUT_OVERSTATES_DB and r_out - r_int < gain / 2)
        bits.append((f"Against the reference given for this sample, restored.ome.zarr scores "
                     f"{esc(fmt(r_out, digits=2))} dB PSNR and {baseline} {esc(fmt(r_int, digits=2))} dB")
                    + (f" (a gain of {esc(f'{r_out - r_int:+.2f}')} dB, less than half the held-out region's: "
                       "the gain measured one scale coarser carried over only in part)." if overstated else
                       "." if better else
                       " — <b class=\"status-failed\">worse than interpolation against the truth</b>, whatever the "
                       "held-out figure says."))
    if metrics.get("restored_content") == "interpolation":
        bits.append(f"<b>restored.ome.zarr holds the {baseline}</b>, not the "
                    "network output.")
    if metrics.get("mode") == "isotropic":  # isotropy is this mode's purpose: always said, with what it is worth
        bits.append(_isotropy_sentence(metrics, baseline))
    flags = metrics.get("flags") or []
    bits.append(f"{len(flags)} flag{'s' if len(flags) != 1 else ''}"
                + (" — see below." if flags else "."))
    return f'<p class="verdict">{" ".join(bits)}</p>'


def _self_validation_caption(metrics: Mapping[str, Any], interp_name: str) -> str:
    """What the held-out figures compare, in the mode's terms (isotropic: lateral slices made
    to look axial, with the axial blur σ that assumption rests on)."""
    chose = ("Training never learned from it, but it chose which checkpoint was kept (so the "
             "figure leans a little optimistic; the guard's margin allows for that). A positive gain "
             "means the model beats interpolation.")
    if metrics.get("mode") == "isotropic":
        deg = metrics.get("isotropic_degradation") or {}
        sigma = num(deg.get("sigma_px"))
        how = ("with the learned generator (Self-Net's CycleGAN) after " if deg.get("method") == "learned" else "")
        source = str(deg.get("sigma_source") or "source not recorded")
        told = (f"blurred along one axis by σ {esc(lateral_pixels_text(sigma, metrics.get('voxel_size_in'), source))}"
                ", subsampled by the axial "
                "factor and brought back by cubic interpolation" if sigma is not None else
                "degraded along one axis as in training")
        return (f"Held-out lateral (XY) slices are made to look axial — {how}{told} (and with isotropic.noise_match, "
                f"on by default, noise topped up to the acquisition's) — and restored by the model and by {interp_name} interpolation; both are "
                "compared with the slices themselves. This checks the model on the task it learned, not the "
                "axial one: a wrong σ cannot be seen here (give it where known: isotropic.axial_sigma_px, or "
                f"train.degradation with the optics or a measured PSF). {chose}")
    target = ("that region seen through the output grid's PSF (train.psf_sigma_um is given)"
              if metrics.get("psf_sigma_um") else "that region as acquired")
    method = metrics.get("degradation_method")
    degraded = "degraded as in training"
    if method:  # the figure scores this model of the acquisition, not the acquisition (a walkthrough: binned)
        degraded += f" (train.degradation.method: {esc(str(method))}, {DEGRADATION_WORDS.get(method, 'as set')})"
    keys = " (Keys cubic, as imresize)" if interp_name == "tricubic" else ""
    return (f"A region of the input held out of training is {degraded} and restored by the "
            f"model and by {interp_name} interpolation{keys}; both are compared with {target}. {chose} "
            f"{HOLDOUT_SCALE_CAVEAT}")


#: What the enhance held-out gain is worth as an estimate of the output's (a walkthrough on a large
#: cellfinder field read +1.25 dB held out for +0.24 dB against its truth, and took it for the latter)
HOLDOUT_SCALE_CAVEAT = (
    "The region is scored one scale coarser than the output (the input degraded once more), so the figure "
    "says whether the network beats interpolation at that scale, not by how much it improves the output: on "
    "the benchmark's 7 files at ×2 the gain against the truth ran from under a tenth of the held-out gain "
    "(cellfinder_stp, psf_beads) to two or three times it, in another order from volume to volume "
    "(docs/quality.md).")


#: A held-out gain this much above the reference's (and over twice it) is said to overstate it
HOLDOUT_OVERSTATES_DB = 0.3

DEGRADATION_WORDS = {
    "cubic": "an antialiased cubic downscale, as MATLAB's imresize; if the camera binned pixels, block models "
             "that acquisition, and this figure cannot see the difference",
    "block": "the block mean, as a binned camera makes it",
    "gaussian": "a Gaussian PSF, then the block mean",
    "psf": "the measured PSF given, then the block mean",
}
"""How ``enhance`` made its held-out input (``train.degradation.method``), in the report's words."""


def _isotropy_sentence(metrics: Mapping[str, Any], baseline: str) -> str:
    """The verdict's isotropy figures (isotropic mode): output against the interpolation on
    the same grid, the input's on its own, and what the estimate is worth on a finer grid."""
    iso_in, iso_out = num(metrics.get("isotropy_in")), num(metrics.get("isotropy_out"))
    iso_interp = num(metrics.get("isotropy_interp"))
    if iso_out is None:
        res = metrics.get("resolution_um") or {}
        unfound = [axis for axis in ("lateral", "axial") if num(res.get(f"{axis}_out")) is None]
        if any(num(v) is not None for v in res.values()) and unfound:
            return (f"Isotropy was not measured: the decorrelation analysis found no {' or '.join(unfound)} "
                    "resolution limit in the output's window (detail that reaches the voxel size, or too little "
                    "signal; see Resolution): judge the XZ/YZ views.")
        return ("Isotropy was not measured ("
                + ("the voxel size is unknown" if "voxel_size_missing" in (metrics.get("flags") or [])
                   else "qc.resolution off, or too small a volume for the estimate")
                + "): judge the XZ/YZ views.")
    return (f"Isotropy estimate (lateral / axial resolution, 1 = isotropic) of the output {esc(fmt(iso_out))}"
            + (f", of {baseline} on the same grid {esc(fmt(iso_interp))}"
               f"{esc(implausible_isotropy_note(iso_interp))}"
               if iso_interp is not None else "")
            + (f", of the input on its own grid {esc(fmt(iso_in))}" if iso_in is not None else
               " (the input's axial figure could not be estimated: too few slices or too coarse a z step)")
            + ". On the finer z grid the estimate also reads interpolated noise as axial detail (z-cubic "
              "interpolation alone raises it), so it is a hint, not a measurement: judge the XZ/YZ views.")


_TOC = [("flags", "Flags"), ("views", "Orthogonal views"), ("mips", "Projections"),
        ("detail", "Detail"), ("training", "Training"), ("self-validation", "Self-validation"),
        ("reference", "Reference"), ("resolution", "Resolution"), ("beads", "Beads"),
        ("methods", "Methods text"), ("timings", "Timings"), ("provenance", "Provenance")]


def _timing_rows(metrics: Mapping[str, Any], provenance: Any) -> list[list[Any]]:
    adopted = metrics.get("adopted_from")  # train_seconds: the time taken to judge the other sample's model
    first = f"adoption (model trained on {adopted}, judged here)" if adopted else "training"
    rows: list[list[Any]] = [[first, num(metrics.get("train_seconds")), None],
                             ["inference", num(metrics.get("infer_seconds")), None]]
    if num(metrics.get("qc_seconds")) is not None:  # metrics written before it was timed: no row
        rows.append(["quality control", num(metrics.get("qc_seconds")), None])
    prov_t = provenance.get("timings") if isinstance(provenance, Mapping) else None
    if isinstance(prov_t, Mapping):
        for k, v in prov_t.items():
            if k in ("train_seconds", "infer_seconds", "qc_seconds"):
                continue
            if isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values()):
                for rule, rec in v.items():  # Snakemake benchmarks: rule -> record
                    rows.append([f"rule {rule}", num(rec.get("seconds", rec.get("s"))),
                                 num(rec.get("max_rss_mb", rec.get("max_rss")))])
            elif isinstance(v, Mapping):
                rows.append([str(k), num(v.get("seconds", v.get("s"))),
                             num(v.get("max_rss_mb", v.get("max_rss")))])
            else:
                rows.append([str(k), num(v), None])
    return rows


def render_sample_report(
    *,
    sample: str,
    metrics: Mapping[str, Any],
    raw: Any,
    interp: Any,
    restored: Any,
    voxel_size_in: Sequence[float] | None,
    voxel_size_out: Sequence[float] | None,
    training_log: Any = None,
    provenance: Mapping[str, Any] | None = None,
    bead_table: Any = None,
    spectra: Mapping[str, Any] | None = None,
    train_fov: Any = None,
    figures: Mapping[str, bytes] | None = None,
    sample_dir: str | Path | None = None,
    origin_voxels: Sequence[float] | None = None,
) -> str:
    """Render the self-contained per-sample quality report.

    Parameters
    ----------
    sample
        Sample id (escaped; may contain anything).
    sample_dir
        The sample's folder of outputs as the workflow names it (``results/S``, or under the
        config's ``results``), for the commands the report suggests; default ``results/S``.
    metrics
        The content of ``qc/metrics.json`` (keys per the contract; missing keys are
        shown as "–"). ``metrics["status"]`` (default ``"ok"``),
        ``metrics["restored_content"]`` and ``metrics["best_step"]`` are used when
        present.
    raw
        Input volume, ZYX (2-D is accepted as Z=1). Any sliceable array works (numpy,
        zarr, :class:`VolumeView`); only planes, slabs and crops are read.
    interp, restored
        Tricubic interpolation and restored volume on the output grid (same shape).
    voxel_size_in, voxel_size_out
        ``(z, y, x)`` in µm, or ``None``.
    origin_voxels
        The acquisition's first voxel centre in its voxel steps (an OME-Zarr input's translation), for the
        views' axes when the figures are drawn here (:func:`selfres.figures.frame_offset`); ``None``: 0.
    training_log
        ``training_log.tsv`` as DataFrame, mapping of columns or path; optional.
    provenance
        Content of ``provenance.json``; shown as JSON, its ``timings`` as a table.
    bead_table
        Per-bead FWHM table (DataFrame or dict); optional. Wide columns
        ``fwhm_{z,y,x}_{in,out}``, or long form with a ``stage``/``volume`` column
        (``input``/``output``) and ``z, y, x, fwhm_{z,y,x}`` columns; medians are
        shown, and for the long form a figure of a typical bead's fitted profiles.
    spectra
        ``{"input": (freq, log10 power), "output": …}`` as `qc` writes them (:func:`selfres.metrics.axial_spectrum`); optional.
    train_fov
        Content of ``train_fov.json`` (or a ``TrainingFov``/string); optional.
    figures
        Figures already made by :func:`sample_figures` (then the volumes are only
        used for shapes and the display range); default: made here.

    Returns
    -------
    str
        A complete HTML page with all figures embedded as base64 PNG.
    """
    metrics = dict(metrics or {})
    mode = metrics.get("mode")
    status = sample_status(metrics)
    flags = [str(f) for f in (metrics.get("flags") or [])]
    raw, interp, restored, vin, vout, unit = prepare_views(
        raw, interp, restored, voxel_size_in, voxel_size_out)
    df = log_frame(training_log)
    best = (kept_steps(df, metrics.get("stage_best_steps") or metrics.get("best_step"))
            if df is not None else None)
    # the training log holds enhance's coarse-scale gains: a checkpoint's score was the smaller of two gains
    coarse_logged = bool(df is not None and "val_coarse_gain" in df.columns
                         and pd.to_numeric(df["val_coarse_gain"], errors="coerce").notna().any())
    if figures is None:
        # the sizes as given, not prepare_views's filled-in ones (axes in voxels read as µm otherwise)
        figures = sample_figures(raw=raw, interp=interp, restored=restored,
                                 voxel_size_in=voxel_size_in, voxel_size_out=voxel_size_out, training_log=df,
                                 best_step=best, bead_table=bead_table, spectra=spectra,
                                 spectra_log10=True, train_fov=train_fov,  # as qc writes them (metrics.axial_spectrum)
                                 margin_db=num(metrics.get("guard_margin_db")),
                                 restored_is_interpolation=metrics.get("restored_content") == "interpolation",
                                 origin_voxels=origin_voxels)
    figures = dict(figures)
    ref = metrics.get("reference")
    beads = _bead_summary(bead_table, (vin, vout, unit))
    skip = {"reference"} if not ref else set()
    if beads is None and "beads" not in figures:
        skip.add("beads")
    parts: list[str] = []
    parts.append(f"<h1>selfres report: {esc(sample)}</h1>")
    parts.append(_verdict(metrics, status, train_fov if isinstance(train_fov, Mapping) else None))
    parts.append('<p class="toc">' + " · ".join(
        f'<a href="#{k}">{esc(v)}</a>' for k, v in _TOC if k not in skip) + "</p>")
    parts.append(_kv_table([
        ("sample", sample),
        *([("input", _input_text(provenance))] if (provenance or {}).get("input") else []),
        ("mode", mode),
        ("status", status),
        ("restored.ome.zarr holds", metrics.get("restored_content") or "model"),
        *([("model", f"sample {metrics['adopted_from']}'s (model_from), judged on this sample's own held-out "
                     "region")] if metrics.get("adopted_from") else []),
        ("input shape (z, y, x)", metrics.get("input_shape") or list(as_zyx(raw.shape))),
        ("output shape (z, y, x)", metrics.get("output_shape") or list(as_zyx(restored.shape))),
        ("voxel size in (µm)", _voxel_text(voxel_size_in) or "unknown (see the flag voxel_size_missing)"),
        *([("voxel size the file records (µm)", _voxel_text(metrics["voxel_size_file"]) + " (the sheet's is used)")]
          if metrics.get("voxel_size_file") and list(metrics["voxel_size_file"]) != list(voxel_size_in or []) else []),
        ("voxel size out (µm)", _voxel_text(voxel_size_out) or "unknown"),
        ("flags", ", ".join(flags) if flags else "none"),
    ]))
    parts.append('<h2 id="flags">Flags</h2>')
    parts.append(_flags_html(flags, metrics))

    # --- images
    fallback = metrics.get("restored_content") == "interpolation"
    interp_name = baseline_name(metrics.get("mode")).split()[0]  # tricubic, or z-cubic
    parts.append('<h2 id="views">Orthogonal views</h2>')
    lo, hi = figures.get("display_range") or display_range(restored)
    parts.append(
        f"<p class=\"muted\">Centre slices of the raw input (on its own grid), the {interp_name} "
        f"interpolation and the restored volume, all shown with the same display range "
        f"{esc(fmt(float(f'{lo:.4g}')))} – {esc(fmt(float(f'{hi:.4g}')))} (0.2–99.8 percentiles of the restored "
        f"volume), at physical aspect ({esc(unit)}); red: NaN or infinite voxels. The restored row should look "
        "sharper than the interpolation, with no structure that the raw data does not "
        "support. Each XY panel is its own grid's centre plane: where z was resampled, the "
        "interpolated and restored planes can lie between two acquired slices (so their structures "
        "differ from the raw plane's), and the XZ/YZ panels show how.</p>")
    if fallback:
        parts.append("<p><b>Note:</b> the restored volume of this sample holds the "
                     "interpolation (see the flags), so its row matches the "
                     "interpolation row.</p>")
    parts.append(_img_tag(figures["orthoviews"], alt="orthogonal centre slices"))
    parts.append('<h2 id="mips">Maximum-intensity projections</h2>')
    parts.append("<p class=\"muted\">Brightest voxel along each viewing axis, matched "
                 "contrast. In the XY projection, red box: the training field of view; cyan "
                 "dashed box: the held-out region used for self-validation (never trained on)"
                 f"{esc(_z_extent_words(train_fov, raw.shape[0]))}.</p>")
    parts.append(_img_tag(figures["projections"], alt="maximum intensity projections"))
    parts.append('<h2 id="detail">Zoomed detail and line profile</h2>')
    if only_z_resampled(raw.shape, restored.shape):
        parts.append("<p class=\"muted\">An XZ crop through the brightest structure (only z was resampled, so an XY crop would show nothing new) and the intensity "
                     "profile along z through it, on the drawn line; the dots are the acquired slices. A "
                     "narrower peak in the restored profile than in the interpolation means a sharper "
                     "structure along z. Undoing a blur along z also raises a thin structure's peak above "
                     "the acquired slices' own values (a walkthrough's synthetic tissue: its truth 1.36× "
                     "them, the isotropic restoration within 0.3 % of it); a peak far above that is "
                     "intensity they do not support (isotropic mode: the flag restored_brighter says so; the "
                     "axial blur σ may be overestimated, see Self-validation).</p>")
    else:
        parts.append("<p class=\"muted\">A zoom around the brightest structure (a quarter of the field, at most "
                     f"{DETAIL_MAX_SIDE_PX} output voxels across: the titles give the zoom), in the acquired "
                     "plane nearest its peak (the raw panel) and the output plane nearest that one (the "
                     "other two; both z positions are in the titles), and an intensity profile along the "
                     "drawn line. "
                     "Narrower peaks in the restored profile than in the interpolation mean sharper "
                     "structures; a sharper peak is also higher, but one far above the input's own "
                     "samples (dots) is intensity the acquisition does not support.</p>")
    parts.append(_img_tag(figures["detail"], alt="zoomed detail and line profile"))
    if train_fov is not None:
        parts.append(f"<p><b>Training field of view:</b> {esc(_draw_fov_note(train_fov))}</p>")

    # --- training
    parts.append('<h2 id="training">Training curves</h2>')
    adopted = metrics.get("adopted_from")
    if adopted:
        parts.append(f"<p><b>Model trained on sample {esc(adopted)}</b> (sample sheet column "
                     "<code>model_from</code>, or <code>selfres restore --model-from</code>); the curves below are "
                     "that training's. This sample did not "
                     "train: the model was judged on this sample's own held-out region (below), as a model "
                     "trained here would be.</p>")
    if df is None or "training_curves" not in figures:
        parts.append("<p>No training log available (no training, or it failed before "
                     "logging).</p>")
    else:
        parts.append(_img_tag(figures["training_curves"], alt="training curves"))
        steps = pd.to_numeric(df["step"], errors="coerce")
        bests = best if isinstance(best, list) else [best]
        n_stages = df["stage"].nunique() if "stage" in df.columns else 1
        note = ""
        if best is not None and steps.notna().any() and all(b is not None and b < steps.min() for b in bests):
            note = (" — before the first logged validation: no later checkpoint scored better than the"
                    " starting model (the score: the smaller of its gains over interpolation, held-out and"
                    " coarse-scale, in the gain panel)")
        kept = (", ".join(f"stage {k} step {fmt(b)}" for k, b in enumerate(bests, 1)) if isinstance(best, list)
                else f"step {fmt(best)}")
        if not note and coarse_logged:
            # the curves' held-out PSNR can rise well past the kept step (demo neurites: kept at step 75,
            # 33.38 dB, later steps up to 33.86) where the coarse-scale gain did not: say what was compared
            note = (" — its score is the smaller of its two gains over interpolation, held-out and coarse-scale"
                    " (the gain panel's two curves), so a later checkpoint with a higher held-out PSNR is not"
                    " kept unless the smaller of its two gains is higher too")
        stop = metrics.get("stop_reason")
        extras = metrics.get("inference_extras") or {}
        with_extras = (metrics.get("mode") != "isotropic"
                       and (extras.get("back_projection_iterations") or extras.get("ensemble")))
        parts.append(f"<p>Kept checkpoint: {esc(kept)}{esc(note)} (a later validation replaces it only when its "
                     f"score is more than {KEEP_MIN_GAIN_DB:g} dB higher); "
                     f"{len(df)} validations logged" + (f" over {n_stages} stages (a serial ×4 model's two "
                                                         "trainings, one after the other)" if n_stages > 1 else "")
                     + (f"; training ended {esc(stop_text(stop))}" if stop else "") + ". "
                     + ("The curves score the network alone; the self-validation table below scores it"
                        f"{esc(extras_text(extras))}, as restored.ome.zarr holds it, so its figures differ."
                        if with_extras else "") + "</p>")

    # --- self-validation
    parts.append('<h2 id="self-validation">Self-validation (held-out region)</h2>')
    sv = metrics.get("self_validation") or {}
    parts.append(f"<p class=\"muted\">{_self_validation_caption(metrics, interp_name)}</p>")
    parts.append(_table(
        ["metric", "model", interp_name, f"gain (model − {interp_name})"],
        [["PSNR (dB)", num(sv.get("psnr_model")), num(sv.get("psnr_interp")),
          _gain_text(sv.get("psnr_model"), sv.get("psnr_interp"), digits=2)],
         ["SSIM", num(sv.get("ssim_model")), num(sv.get("ssim_interp")),
          _gain_text(sv.get("ssim_model"), sv.get("ssim_interp"), digits=4)]]))
    if ref:
        parts.append('<h2 id="reference">Reference metrics</h2>')
        parts.append("<p class=\"muted\">Against the reference volume given in the sample "
                     "sheet (intensities matched by least squares).</p>")
        parts.append(_table(
            ["metric", "restored", interp_name, "gain"],
            [["PSNR (dB)", num(ref.get("psnr")), num(ref.get("psnr_interp")),
              _gain_text(ref.get("psnr"), ref.get("psnr_interp"), digits=2)],
             ["SSIM", num(ref.get("ssim")), num(ref.get("ssim_interp")),
              _gain_text(ref.get("ssim"), ref.get("ssim_interp"), digits=4)]]))

    # --- resolution
    parts.append('<h2 id="resolution">Resolution and isotropy</h2>')
    parts.append("<p class=\"muted\">Image resolution estimated from the data alone "
                 "(decorrelation analysis; smaller is sharper), laterally (in XY planes) "
                 "and axially (in XZ/YZ planes), on the same window of input, "
                 "interpolation and output. Isotropy = lateral / axial; 1 means "
                 "equally sharp in all directions. <b>Only the input column measures "
                 "resolution</b> (on its own grid). On the finer output grid the estimate "
                 "also reads interpolated noise and spectral copies as detail: plain "
                 "interpolation reads about twice as sharp as its input with no new detail, "
                 "and on selfres's synthetic demo the noise-free truth reads blurrier than plain tricubic. "
                 "So the interpolation and output columns are not resolutions, and a "
                 "difference between them proves neither gained nor lost detail: judge detail "
                 "by the views, the held-out PSNR, beads (qc.beads) or a reference.</p>")
    res = metrics.get("resolution_um") or {}
    res_i = metrics.get("resolution_interp_um") or {}
    parts.append(_table(
        ["", "input", "interpolation", "output"],
        [["lateral resolution (µm)", num(res.get("lateral_in")), num(res_i.get("lateral")),
          num(res.get("lateral_out"))],
         ["axial resolution (µm)", num(res.get("axial_in")), num(res_i.get("axial")), num(res.get("axial_out"))],
         ["isotropy (lateral / axial; 1 = isotropic)", num(metrics.get("isotropy_in")),
          num(metrics.get("isotropy_interp")), num(metrics.get("isotropy_out"))]]))
    measured = any(num(v) is not None for v in res.values())
    missing = {axis: [side for side, key in (("the input", "in"), ("the output", "out"))
                      if num(res.get(f"{axis}_{key}")) is None] for axis in ("lateral", "axial")}
    missing = {axis: sides for axis, sides in missing.items() if sides and measured}
    if missing:
        which = "; ".join(f"{axis} for {' or '.join(sides)}" for axis, sides in missing.items())
        parts.append(f"<p>No estimate ({which}): the decorrelation analysis "
                     "found no resolution limit within its sampling — typically an image whose detail reaches "
                     "the voxel size (sampled at or below its resolution: then its resolution is about two "
                     "voxels, the sampling limit), or too little signal in the window (axially, also a window of fewer "
                     "than 8 planes).</p>")
    if all(num(v) is None for v in res.values()):
        parts.append("<p>Not measured: "
                     + ("the voxel size is unknown (flag voxel_size_missing)"
                        if "voxel_size_missing" in (metrics.get("flags") or []) else
                        "qc.resolution is off, or the volume is too small for the estimate") + ".</p>")
    if "spectra" in figures:
        parts.append("<p class=\"muted\">Axial power spectrum: how much of the image varies "
                     "at each spatial frequency along z, on the window of the table above. "
                     "Beyond the input's Nyquist frequency the interpolation (dashed), which adds "
                     "no detail, leaks power too: only output power clearly above the "
                     "interpolation's there can be new axial detail, and a flat plateau is noise."
                     "</p>")
        parts.append(_img_tag(figures["spectra"], alt="axial spectra"))
    if beads is not None or "beads" in figures:
        parts.append('<h2 id="beads">Beads</h2>')
        if beads is not None:
            parts.append(f"<p>Median FWHM (full width at half maximum of a Gaussian fit) per "
                         f"axis ({esc(beads.attrs.get('unit'))}) over "
                         f"{beads.attrs.get('n_beads', '?')} beads of the input"
                         + (f" and {beads.attrs['n_beads_out']} of the output"
                            if beads.attrs.get("n_beads_out") is not None else "")
                         + ". Sub-"
                         "resolution beads show the point-spread function: a smaller output "
                         "FWHM is a sharper PSF.</p>")
            parts.append(_table(["axis", "input", "output", "output / input"],
                                [[a, num(r["input"]), num(r["output"]),
                                  None if num(r["input"]) in (None, 0) or num(r["output"]) is None
                                  else num(r["output"]) / num(r["input"])]
                                 for a, r in beads.iterrows()]))
            psf = metrics.get("psf_sigma_um")
            if (metrics.get("mode") != "isotropic" and isinstance(psf, (list, tuple)) and len(psf) == 3
                    and beads.attrs.get("unit") == "µm" and all(num(v) is not None for v in psf)):
                # the demo's beads, ×4 with their PSF given: z 4.969 → 5.004 µm, which "a smaller output FWHM is a
                # sharper PSF" (and docs/reports.md: "narrower, especially along z") left unexplained
                from .metrics import FWHM_PER_SIGMA

                fwhm = ", ".join(fmt(float(f"{FWHM_PER_SIGMA * num(v):.3g}")) for v in psf)
                parts.append("<p>Training targets were this volume seen through the PSF given (train.psf_sigma_um, "
                             f"σ z,y,x = {esc(', '.join(fmt(num(v)) for v in psf))} µm): the network restores the "
                             "sampling, not that PSF, so a bead's output FWHM tends towards the PSF's own, "
                             f"{esc(fwhm)} µm (z, y, x), not below it; an axis whose input FWHM is already near "
                             "that does not narrow.</p>")
        if "beads" in figures:
            parts.append(_img_tag(figures["beads"], alt="bead profiles and FWHM"))

    # --- a methods section's paragraph
    methods = methods_text(metrics, provenance, scale_checked=coarse_logged and metrics.get("mode") != "isotropic")
    if methods:
        parts.append('<h2 id="methods">Methods text</h2>')
        parts.append("<p>For a paper's methods section: what was done to this sample, with its figures. Check "
                     "it against the sections above, and cite the method's paper and this software.</p>")
        parts.append(f'<blockquote class="methods">{esc(methods)}</blockquote>')

    # --- timings & provenance
    parts.append('<h2 id="timings">Timings</h2>')
    parts.append(_table(["step", "seconds", "max memory (MB)"],
                        _timing_rows(metrics, provenance)))
    parts.append('<h2 id="provenance">Provenance</h2>')
    differ = (provenance or {}).get("settings_not_applied") or {}
    here = Path(sample_dir).as_posix() if sample_dir is not None else f"results/{sample}"
    if differ:
        listed = "; ".join(f"{k}: configured {json.dumps(v.get('config'))}, used {json.dumps(v.get('used'))}"
                           for k, v in sorted(differ.items()))
        parts.append('<div class="warn"><h3>The configuration differs from what made these outputs</h3>'
                     f"<p>{esc(listed)}.</p><p>Snakemake did not rerun the steps for these values (e.g. their "
                     "recorded parameters were cleaned up with <code>--cleanup-metadata</code>, or a run used "
                     "<code>--rerun-triggers mtime</code>): the outputs, model.json and the figures above are "
                     "those of the values used. To apply the configured ones, force the step's output (in "
                     f"the results folder): <code>snakemake --forcerun {esc(here)}/model</code> for "
                     f"training values (train or adopt, and all after), <code>{esc(here)}/restored.ome.zarr"
                     "</code> for inference values (with infer.blocks above 1: "
                     f"<code>{esc(here)}/infer/prepared.json</code>).</p></div>")
    if provenance:
        info = [(k, provenance.get(k)) for k in
                ("selfres_version", "git_commit", "input", "input_checksum", "host",
                 "slurm_job_id", "written") if provenance.get(k) is not None]
        if info:
            parts.append(_kv_table(info))
        text = json.dumps(provenance, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>provenance.json (configuration, software "
                     f"versions, timings)</summary><pre>{esc(text)}</pre></details>")
    else:
        parts.append("<p>No provenance recorded.</p>")
    parts.append("<details><summary>metrics.json</summary><pre>"
                 f"{esc(json.dumps(metrics, indent=2, sort_keys=True, default=str))}</pre>"
                 "</details>")
    return _page(f"selfres report: {sample}", "\n".join(parts))


def _input_text(provenance: Mapping[str, Any]) -> str:
    """The input file, and which part of it the sample is: ``stack.tif (series 2, channel 1 "GFP")``."""
    part = dict(provenance.get("input_part") or {})
    if part.get("channel") is not None and part.get("channel_name"):
        part["channel"] = f"{part['channel']} \"{part['channel_name']}\""
    if part.get("timepoint") is not None and part.get("time_increment_s"):
        part["timepoint"] = f"{part['timepoint']} (one every {duration_text(float(part['time_increment_s']))})"
    words = ", ".join(f"{'time point' if k == 'timepoint' else k} {part[k]}" for k in ("series", "channel", "timepoint")
                      if part.get(k) is not None)
    return f"{provenance['input']}" + (f" ({words})" if words else "")


# ----------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "sample", "status", "mode", "input_shape", "output_shape", "psnr_gain", "reference_gain",
    "isotropy_in", "isotropy_out", "isotropy_interp", "flags", "train_seconds", "infer_seconds", "error",
    "failed_runs", "failing_since", "report", "model_from",
)


def _z_only_text(shape_in: Any, shape_out: Any) -> bool:
    """:func:`only_z_resampled` for the summary table's shape texts (``"15x64x64"``)."""
    try:
        shapes = [tuple(int(v) for v in str(t).split("x")) for t in (shape_in, shape_out)]
    except ValueError:  # a missing shape (NaN, None, "–")
        return False
    return only_z_resampled(*shapes)


#: The summary page's width: its table has 14 or 15 columns (the reports' pages keep 1150 px)
SUMMARY_MAX_WIDTH_PX = 1700

#: Hover texts of the summary table's headers whose column is not what its name alone says.
SUMMARY_HEADER_TITLES = {
    "train (s)": "seconds of training; a sample restored with another sample's model (model_from): of its "
                 "adopt job (the held-out check of that model on this sample), no training",
}


def _text_or_dash(value: Any) -> str:
    """A text cell of the summary, or a dash where there is none (NaN in a failed row)."""
    return value if isinstance(value, str) and value else "–"


def _ordinal(n: int) -> str:
    """``2nd``, ``3rd``, ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per sample with the summary columns.

    Parameters
    ----------
    rows
        One mapping per sample: either already-flat summary values or a
        ``metrics.json`` content plus ``status``/``error``. ``psnr_gain`` is derived
        from ``self_validation`` when absent; ``report`` defaults to
        ``{sample}/report.html``; ``status`` defaults to ``"ok"`` (``"failed"`` when an
        ``error`` is given).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUMMARY_COLUMNS`, shapes as ``"ZxYxX"``, flags joined by ``;``.
    """
    out = []
    for row in rows:
        row = dict(row)
        sample = str(row.get("sample", ""))
        error = row.get("error")
        status = "failed" if error and not row.get("status") else sample_status(row)
        gain = num(row.get("psnr_gain"))
        if gain is None:
            sv = row.get("self_validation") or {}
            gain = _diff(sv.get("psnr_model"), sv.get("psnr_interp"))
        reference_gain = num(row.get("reference_gain"))
        if reference_gain is None:  # the output's PSNR over the interpolation's against a reference given
            ref = row.get("reference") or {}
            reference_gain = _diff(ref.get("psnr"), ref.get("psnr_interp"))
        flags = row.get("flags") or []
        if isinstance(flags, str):
            flags_text = flags
        else:
            flags_text = ";".join(str(f) for f in flags)
        out.append({
            "sample": sample,
            "status": str(status),
            "mode": row.get("mode"),
            "input_shape": shape_text(row.get("input_shape")),
            "output_shape": shape_text(row.get("output_shape")),
            "psnr_gain": gain,
            "reference_gain": reference_gain,
            "isotropy_in": num(row.get("isotropy_in")),
            "isotropy_out": num(row.get("isotropy_out")),
            "isotropy_interp": num(row.get("isotropy_interp")),
            "flags": flags_text,
            "train_seconds": num(row.get("train_seconds")),
            "infer_seconds": num(row.get("infer_seconds")),
            "error": None if error is None else str(error),
            # a failed sample: the runs in a row it failed in, this one included, and the first one's start
            "failed_runs": num(row.get("failed_runs")),
            "failing_since": row.get("failing_since"),
            # an explicit None (e.g. a failed sample) means: no report to link
            "report": row["report"] if "report" in row else f"{sample}/report.html",
            # model_from: the sample whose model restored it (judged here; train_seconds is that judging)
            "model_from": row.get("adopted_from") or None,
        })
    df = pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
    for c in ("psnr_gain", "reference_gain", "isotropy_in", "isotropy_out", "isotropy_interp", "train_seconds",
              "infer_seconds"):
        # rounded for people (-0.0 becomes 0.0)
        digits = 1 if c.endswith("_seconds") else 3
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float).round(digits) + 0.0
    df["failed_runs"] = pd.to_numeric(df["failed_runs"], errors="coerce").astype("Int64")
    return df


_SORT_JS = """
(function(){
  function key(td){var v=td.getAttribute('data-v');if(v===null){v=td.textContent;}
    var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?[0,n]:[1,v.toLowerCase()];}
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('th').forEach(function(th,i){
      th.classList.add('sortable');
      th.addEventListener('click',function(){
        var asc=th.getAttribute('data-dir')!=='asc';
        t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});
        th.setAttribute('data-dir',asc?'asc':'desc');
        var tb=t.tBodies[0],rs=Array.prototype.slice.call(tb.rows);
        rs.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
          var c=x[0]-y[0];if(!c){c=x[1]<y[1]?-1:(x[1]>y[1]?1:0);}return asc?c:-c;});
        rs.forEach(function(r){tb.appendChild(r);});
      });
    });
  });
})();
"""


def render_summary_unwritten(error: BaseException) -> str:
    """A ``summary.html`` for a run whose summary could not be written (a full disk): it
    says so, in place of an earlier run's page that would call outputs since removed "ok"."""
    return _page("selfres summary", '<h1>selfres summary</h1><div class="warn"><h3>This run\'s summary could not '
                 f"be written</h3><p>{esc(str(error))}</p><p>Free space (or fix the results folder), then run "
                 "the workflow again; until then, the run's log says what happened to each sample.</p></div>")


def render_summary(rows: Sequence[Mapping[str, Any]], *,
                   unwritten_exports: Sequence[Mapping[str, Any]] = (),
                   mixed_series: Sequence[Mapping[str, Any]] = (), written: str | None = None) -> str:
    """Render ``summary.html``: counts, and a sortable table linking each report.

    Parameters
    ----------
    rows
        As for :func:`summary_table`.
    mixed_series
        Time series restored partly by the network, partly by interpolation
        (``selfres.summary.mixed_time_series``), said under "What to look at".
    unwritten_exports
        The combined OME-TIFFs the run did not write (``selfres.summary.unwritten_exports``),
        listed under "What to look at".
    written
        When the page is written (shown beside the counts: which night it describes).

    Returns
    -------
    str
        Self-contained HTML page (inline CSS and JavaScript; click a header to sort).
    """
    df = summary_table(rows)
    counts = df["status"].value_counts()
    n_ok = int(counts.get("ok", 0))
    n_fb = int(counts.get("fallback_interpolation", 0))
    n_fail = int(counts.get("failed", 0))
    n_broken = int(counts.get("output_broken", 0))
    n_pending = int(counts.get("pending", 0))
    n_other = len(df) - n_ok - n_fb - n_fail - n_broken - n_pending
    # ok, but holding a network output that lost the held-out check (on_worse_than_interpolation: model)
    n_kept_losing = sum(r["status"] == "ok" and "model_worse_than_interpolation" in str(r["flags"] or "").split(";")
                        for _, r in df.iterrows())
    # against a reference only where one was given (a walkthrough: +4.8 dB against the truth, +2.3 held out,
    # and the summary showed the held-out figure alone)
    with_reference = bool(df["reference_gain"].notna().any())
    gains = ["psnr_gain", "reference_gain"] if with_reference else ["psnr_gain"]
    head = ["sample", "status", "mode", "input shape", "output shape", "held-out PSNR gain (dB)",
            *(["PSNR gain against the reference (dB)"] if with_reference else []),
            "isotropy in", "isotropy out", "isotropy of interpolation", "flags", "train (s)", "infer (s)", "error"]
    body = []
    for _, r in df.iterrows():
        cls = {"failed": "failed", "output_broken": "failed", "fallback_interpolation": "fallback"}.get(r["status"], "")
        link = r["report"]
        has_link = isinstance(link, str) and bool(link)
        cells = [
            (f'<td data-v="{esc(r["sample"])}"><a href="{esc(link)}">'
             f'{esc(r["sample"])}</a></td>') if has_link else
            f'<td data-v="{esc(r["sample"])}">{esc(r["sample"])}</td>',
            f'<td class="status-{esc(r["status"])}">{esc(r["status"])}</td>',
            f"<td>{esc(_text_or_dash(r['mode']))}"
            + (f" · model of {esc(r['model_from'])}" if isinstance(r.get("model_from"), str) and r["model_from"]
               else "") + "</td>",
            f"<td>{esc(_text_or_dash(r['input_shape']))}</td>",
            f"<td>{esc(_text_or_dash(r['output_shape']))}</td>",
        ]
        for c in (*gains, "isotropy_in", "isotropy_out", "isotropy_interp"):
            v = num(r[c])
            # a gain reads as one, in dB to two decimals as the reports give it: +1.57, +1.20 (not +1.568, +1.2)
            shown = fmt(v) if c not in gains or v is None else f"{v:+.2f}" if round(v, 2) else "0.00"
            cells.append(f'<td class="num" data-v="{"" if v is None else repr(v)}">{esc(shown)}</td>')
        flags = [f for f in str(r["flags"] or "").split(";") if f]
        flag_html = ", ".join(
            f'<span title="{esc(" ".join(explain_flag(f)))}">{esc(f)}</span>' for f in flags)
        cells.append(f"<td>{flag_html}</td>")
        for c in ("train_seconds", "infer_seconds"):
            v = num(r[c])
            cells.append(f'<td class="num" data-v="{"" if v is None else repr(v)}">'
                         f"{esc(fmt(v, digits=1))}</td>")
        err = r["error"]
        cells.append(f"<td>{'' if err is None or err != err else esc(err)}</td>")
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    counts_html = (
        f'<p><span class="status-ok">{n_ok} ok</span>'
        + (f" ({n_kept_losing} of them holding a network output that lost to interpolation on the held-out "
           "region: infer.on_worse_than_interpolation is model)" if n_kept_losing else "") + " · "
        f'<span class="status-fallback_interpolation">{n_fb} fallback to interpolation</span>'
        f' · <span class="status-failed">{n_fail} failed</span>'
        + (f' · <span class="status-failed">{n_broken} output broken</span>' if n_broken else "")
        + (f" · {n_pending} pending" if n_pending else "")
        + (f" · {n_other} other" if n_other else "") + f" · {len(df)} samples"
        + (f" · written {esc(written)}" if written else "") + "</p>")
    table = ('<div style="overflow-x:auto"><table class="sortable"><thead><tr>'  # wide: scrolls, not off the page
             + "".join(f'<th title="{esc(SUMMARY_HEADER_TITLES[h])}">{esc(h)}</th>' if h in SUMMARY_HEADER_TITLES
                       else f"<th>{esc(h)}</th>" for h in head)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")
    legend = "".join(
        f"<li><b>{esc(k)}</b>: {esc(v[0])} <i>{esc(v[1])}</i></li>"
        for k, v in FLAG_EXPLANATIONS.items()
        if any(k in str(f).split(";") for f in df["flags"]))
    attention = []
    for _, r in df.iterrows():
        name = esc(r["sample"])
        if isinstance(r["report"], str) and r["report"]:
            name = f'<a href="{esc(r["report"])}">{name}</a>'
        err = r["error"]
        if r["status"] == "failed":
            runs, since = r.get("failed_runs"), r.get("failing_since")
            again = (f" — the {_ordinal(int(runs))} run in a row that failed it"
                     + (f", since the run of {esc(str(since).replace('T', ' ')[:16])}" if isinstance(since, str) else "")
                     if not pd.isna(runs) and int(runs) > 1 else "")
            attention.append(f"<li>{name}: <b>failed</b>"
                             + (f" — {esc(err)}" if isinstance(err, str) and err else
                                " (see its logs/ folder)") + again + "</li>")
        elif r["status"] == "output_broken":
            attention.append(f"<li>{name}: <b>restored.ome.zarr is broken — do not use it</b> (flags "
                             f"{esc(str(r['flags']).replace(';', ', '))}; its report says what to do).</li>")
        elif r["status"] == "fallback_interpolation":
            others = [f for f in str(r["flags"] or "").split(";") if f and f != "model_worse_than_interpolation"]
            attention.append(f"<li>{name}: the guard found no clear gain over {baseline_name(r.get('mode'))} "
                             "on the held-out region (its report says by how much, and whether the network "
                             "learned anything); restored.ome.zarr holds the interpolation"
                             + (f"; also flags {esc(', '.join(others))}" if others else "") + ".</li>")
        elif r["status"] not in ("ok",):
            attention.append(f"<li>{name}: status {esc(r['status'])}.</li>")
        elif r["flags"]:
            attention.append(f"<li>{name}: flags {esc(str(r['flags']).replace(';', ', '))}."
                             "</li>")
    z_only = [f'<a href="{esc(r["report"])}">{esc(r["sample"])}</a>' if isinstance(r["report"], str) and r["report"]
              else esc(r["sample"]) for _, r in df.iterrows()
              if r["status"] == "ok" and r["mode"] == "enhance" and _z_only_text(r["input_shape"], r["output_shape"])]
    if z_only:
        attention.append(f"<li>{', '.join(z_only)}: upsampled along z alone, where the held-out gain is a loose "
                         f"estimate ({esc(Z_ONLY_EVIDENCE)}): look at the XZ pictures in "
                         f"{'their reports' if len(z_only) > 1 else 'its report'} before trusting the gain.</li>")
    for x in unwritten_exports:
        attention.append(
            f"<li>{esc(x['file'])} (the {esc(x.get('parts', 'parts'))} of {esc(x['acquisition'])} as one "
            f"OME-TIFF): <b>not written</b> — {esc(x['reason'])}"
            + ("; the file there is an earlier run's" if x.get("on_disk") else "")
            + ". It is written once every part is restored; each part's own restored.ome.tif is "
            "in its folder.</li>")
    for x in mixed_series:
        k = len(x["interpolated"])
        attention.append(
            f"<li>Time series {esc(x['series'])}: {k} of its {esc(x['of'])} time points "
            f"({esc(', '.join(x['interpolated']))}) hold the interpolation, the guard's fall-back where the "
            "network lost on their held-out regions, the others the network's output: the series changes in "
            "sharpness and peak intensity where it switches. Compare the views in their reports; for one "
            "method throughout, set <code>infer.on_worse_than_interpolation: model</code> on its row (each "
            "network output is then kept, its held-out loss said in its report).</li>")
    look_html = ("<h2>What to look at</h2><ul>" + "".join(attention) + "</ul>" if attention
                 else "<p class=\"status-ok\">Every sample restored without flags.</p>")
    body_html = (
        "<h1>selfres summary</h1>" + counts_html + look_html
        + "<p class=\"muted\">Click a column header to sort. PSNR gain = model − interpolation "
        "on the held-out self-validation region: in enhance mode over tricubic, on that region degraded "
        "once more (one scale coarser than the output); in isotropic mode over z-cubic, on held-out "
        "lateral slices made to look axial. The two modes score different tasks, so their figures do "
        "not rank against each other (sorting the column mixes them), and neither is the output's own "
        "gain. Isotropy = "
        "lateral / axial resolution (1: isotropic), a decorrelation estimate that measures the "
        "input on its own grid; on a finer grid (<i>out</i>, <i>of interpolation</i>) it also reads "
        "interpolated noise as detail, so those two columns are hints, not measurements. Click a "
        "sample for its report.</p>"
        + table + (f"<h2>Flags in this run</h2><ul>{legend}</ul>" if legend else ""))
    return _page("selfres summary", body_html, script=_SORT_JS, max_width_px=SUMMARY_MAX_WIDTH_PX)
