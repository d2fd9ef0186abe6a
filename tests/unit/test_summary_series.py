"""A time series restored partly by the network and partly by interpolation is said in the
summary (:func:`selfres.summary.mixed_time_series`)."""

from __future__ import annotations

from selfres import report
from selfres.flags import sample_status
from selfres.summary import mixed_time_series


def _row(sample, status="ok"):
    return {"sample": sample, "status": status, "mode": "enhance", "report": f"{sample}/report.html", "flags": ""}


def test_a_series_that_switches_to_interpolation_is_named_with_its_time_points_in_order():
    rows = ([_row(f"lapse_c1_t{t}", "fallback_interpolation" if t in (2, 10) else "ok") for t in (0, 1, 2, 10)]
            + [_row(f"lapse_c0_t{t}") for t in range(3)]  # the other channel: one method
            + [_row(f"all_t{t}", "fallback_interpolation") for t in range(2)]  # interpolation throughout
            + [_row("cells_c1", "fallback_interpolation"), _row("cells_c0"), _row("a")])  # channels, no time
    assert mixed_time_series(rows) == [{"series": "lapse_c1", "interpolated": ["lapse_c1_t2", "lapse_c1_t10"],
                                        "of": 4}]
    # ids that look like a series, of two files: no series
    by_hand = [_row("mouse_t1"), _row("mouse_t2", "fallback_interpolation")]
    assert mixed_time_series(by_hand, {"mouse_t1": "aaa", "mouse_t2": "bbb"}) == []
    assert mixed_time_series(by_hand, {"mouse_t1": "aaa", "mouse_t2": "aaa"})[0]["series"] == "mouse"
    failed = [_row("x_t0"), _row("x_t1", "failed"), _row("x_t2", "fallback_interpolation")]
    assert mixed_time_series(failed) == [{"series": "x", "interpolated": ["x_t2"], "of": 3}]


def test_the_summary_page_says_it_with_the_remedy():
    rows = [_row("lapse_t0"), _row("lapse_t1", "fallback_interpolation")]
    for r in rows:
        r.update(psnr_gain_db=0.1, input_shape="4x32x32", output_shape="4x64x64")
    page = report.render_summary(rows, mixed_series=mixed_time_series(rows))
    assert "Time series lapse: 1 of its 2 time points (lapse_t1) hold the interpolation" in page
    assert "infer.on_worse_than_interpolation: model" in page
    assert "Time series" not in report.render_summary(rows)


def test_stage_summary_says_it_of_the_samples_results(tmp_path):
    import json

    from selfres import summary

    for t, content in ((0, "model"), (1, "interpolation")):
        d = tmp_path / f"lapse_t{t}"
        for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
            (d / sub).mkdir(parents=True)
        (d / "normalized.ome.zarr" / ".zattrs").write_text(json.dumps({"selfres": {"source_checksum": "abc"}}))
        (d / "train_fov.json").write_text("{}")
        flags = ["model_worse_than_interpolation"] if content == "interpolation" else []
        (d / "qc" / "metrics.json").write_text(json.dumps({
            "sample": d.name, "mode": "enhance", "input_shape": [4, 32, 32], "output_shape": [4, 64, 64],
            "self_validation": {"psnr_model": 30.1, "psnr_interp": 30.0}, "restored_content": content,
            "flags": flags}))
        (d / "report.html").write_text("<html></html>")
    rows = summary.stage_summary(tmp_path, ["lapse_t0", "lapse_t1"], tmp_path / "summary.tsv",
                                 tmp_path / "summary.html")
    assert [sample_status(r) for r in rows] == ["ok", "fallback_interpolation"]
    assert "Time series lapse: 1 of its 2 time points (lapse_t1)" in (tmp_path / "summary.html").read_text()


def test_stage_summary_does_not_call_samples_of_two_files_a_series(tmp_path):
    import json

    from selfres import summary

    for t, content, checksum in ((1, "model", "aaa"), (2, "interpolation", "bbb")):
        d = tmp_path / f"mouse_t{t}"
        for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
            (d / sub).mkdir(parents=True)
        (d / "normalized.ome.zarr" / ".zattrs").write_text(json.dumps({"selfres": {"source_checksum": checksum}}))
        (d / "train_fov.json").write_text("{}")
        (d / "qc" / "metrics.json").write_text(json.dumps({
            "sample": d.name, "mode": "enhance", "input_shape": [4, 32, 32], "output_shape": [4, 64, 64],
            "self_validation": {"psnr_model": 30.1, "psnr_interp": 30.0}, "restored_content": content,
            "flags": ["model_worse_than_interpolation"] if content == "interpolation" else []}))
        (d / "report.html").write_text("<html></html>")
    summary.stage_summary(tmp_path, ["mouse_t1", "mouse_t2"], tmp_path / "summary.tsv", tmp_path / "summary.html")
    assert "Time series" not in (tmp_path / "summary.html").read_text()


def test_the_summary_tables_train_seconds_header_says_what_an_adopting_samples_figure_is():
    """A walkthrough read an adopting sample's 2 s under "train (s)": the header's hover text says a
    model_from sample's figure is its adopt job's, no training."""
    page = report.render_summary([_row("a")])
    assert ('<th title="seconds of training; a sample restored with another sample&#x27;s model (model_from): of '
            'its adopt job') in page, page[page.find("<thead>"):page.find("</thead>")]
