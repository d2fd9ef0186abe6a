"""``snakemake --report`` carries each sample's report and key figures, with captions."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from workdir import make_workdir, run_snakemake

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("orthoviews", "projections", "detail", "training_curves")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A night with one sample restored and one that failed (an unreadable inbox file): as most
    nights of a facility's batch, which must still give Snakemake's report of the others."""
    wd = make_workdir(tmp_path_factory.mktemp("snakereport"), samples={"s1": {}},
                      config_overrides={"inbox": ["inbox/*.tif"], "inbox_settle_seconds": 0})
    (wd / "inbox").mkdir()
    (wd / "inbox" / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    proc = run_snakemake(wd, "--keep-going")
    assert proc.returncode != 0 and (wd / "results" / "s1" / "report.html").exists(), proc.stderr[-4000:]
    return wd


def test_report_rule_writes_figures(finished):
    figs = finished / "results" / "s1" / "figures"
    for name in FIGURES:
        data = (figs / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    summary = pd.read_csv(finished / "results" / "summary.tsv", sep="\t")
    row = summary.set_index("sample").loc["s1"]
    assert row["status"] in ("ok", "fallback_interpolation")
    assert row["report"] == "s1/report.html"
    html = (finished / "results" / "summary.html").read_text()
    assert 'href="s1/report.html"' in html


def test_snakemake_report_zip_holds_reports_figures_and_captions(finished):
    proc = run_snakemake(finished, "--report", "report.zip", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]  # broken has no report: left out, not fatal
    with zipfile.ZipFile(finished / "report.zip") as zf:
        names = zf.namelist()
        main = zf.read("report/report.html").decode("utf-8")
        # every per-sample output travels in the zip (under a hashed folder) ...
        for base in ["report.html", "summary.tsv"] + [f"{f}.png" for f in FIGURES]:
            hits = [n for n in names if n.startswith("report/data/") and n.endswith("/" + base)]
            assert hits, f"{base} missing from report.zip: {names}"
        page = zf.read(next(n for n in names if n.endswith("/report.html")
                            and n != "report/report.html")).decode()
        assert "selfres report: s1" in page and "data:image/png;base64," in page
        png = zf.read(next(n for n in names if n.endswith("/orthoviews.png")))
        assert png.startswith(PNG_MAGIC)
    # ... recorded by sample and figure, with its caption rendered for that sample
    for path, label in [("results/s1/report.html", "quality report"),
                        ("results/s1/figures/orthoviews.png", "orthogonal views"),
                        ("results/s1/figures/projections.png", "projections"),
                        ("results/s1/figures/detail.png", "detail and line profile"),
                        ("results/s1/figures/training_curves.png", "training curves")]:
        entry = main[main.index(f'"{path}"'):][:3000]
        assert '"sample": "s1"' in entry and f'"figure": "{label}"' in entry, path
        assert "<strong>s1</strong>" in entry, path  # caption with the sample filled in
    assert "Maximum-intensity projections along z, y and x" in main
    assert "Zoomed detail of sample" in main


def _runs(wd):
    runs = wd / "results" / "runs" / "runs.tsv"
    return runs.read_text().splitlines() if runs.exists() else []


def test_snakemake_9s_own_report_spelling_works_after_a_failed_night_and_is_no_run(finished):
    """`--reporter html --report-html-path FILE` is Snakemake 9's spelling of `--report FILE`: it
    asked for the failed sample's report ('marked for report but does not exist') and recorded
    an 'error' night."""
    before = _runs(finished)
    proc = run_snakemake(finished, "--reporter", "html", "--report-html-path", "r.html", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (finished / "r.html").exists() and _runs(finished) == before


def test_touch_runs_nothing_and_records_no_run(finished):
    """`snakemake --touch` recorded the jobs it touched as run ('success … samples_run …'),
    including a retrain that never happened."""
    before = _runs(finished)
    run_snakemake(finished, "--touch", "--config", 'train={"steps": 5}', timeout=300)
    assert _runs(finished) == before


def test_a_report_without_a_summary_holds_the_samples_reports(finished, tmp_path):
    """A first night killed outright leaves no summary.tsv: the report asked for it and refused
    to be made at all, though a sample's report was complete."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy, symlinks=True)
    for name in ("summary.tsv", "summary.html"):
        (copy / "results" / name).unlink()
    proc = run_snakemake(copy, "--report", "report.zip", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(copy / "report.zip") as zf:
        assert any(n.endswith("/report.html") and n != "report/report.html" for n in zf.namelist())
