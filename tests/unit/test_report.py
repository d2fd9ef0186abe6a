"""Tests of selfres.report: self-contained, escaped, complete HTML reports."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest

from selfres import figures, flags, report, wording

from ..conftest import captured_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


def _volumes(shape_in=(6, 24, 24), factor=(2, 1, 1), *, seed=0):
    """Seeded beads: raw on the input grid, interp/restored on the output grid."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(100, 2, shape_in).astype(np.float32)
    raw[shape_in[0] // 2, 10:13, 14:17] += 500
    out = tuple(s * f for s, f in zip(shape_in, factor))
    interp = np.repeat(np.repeat(np.repeat(raw, factor[0], 0), factor[1], 1), factor[2], 2)
    restored = interp.copy()
    restored[out[0] // 2] += 50
    return raw, interp, restored


def _metrics(**over):
    m = {
        "sample": "s1",
        "mode": "isotropic",
        "input_shape": [6, 24, 24],
        "output_shape": [12, 24, 24],
        "voxel_size_in": [1.0, 0.5, 0.5],
        "voxel_size_out": [0.5, 0.5, 0.5],
        "train_seconds": 12.5,
        "infer_seconds": 1.5,
        "self_validation": {"psnr_model": 33.0, "psnr_interp": 30.5,
                            "ssim_model": 0.91, "ssim_interp": 0.88},
        "resolution_um": {"lateral_in": 1.0, "axial_in": 2.0,
                          "lateral_out": 1.0, "axial_out": 1.2},
        "isotropy_in": 0.5,
        "isotropy_out": 0.83,
        "reference": {"psnr": 35.0, "ssim": 0.95, "psnr_interp": 31.0, "ssim_interp": 0.9},
        "flags": [],
    }
    m.update(over)
    return m


def _log():
    step = np.arange(0, 100, 10)
    return pd.DataFrame({
        "step": step, "loss": 1.0 / (step + 1),
        "val_psnr_model": [30, 31, 33, 32, 32, 32, 31, 31, 31, 31],
        "val_psnr_interp": 30.0, "lr": 1e-3, "seconds": step * 0.1,
    })


def _images(page):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.fixture(scope="module")
def full_page():
    raw, interp, restored = _volumes()
    return report.render_sample_report(
        sample=EVIL, metrics=_metrics(flags=list(flags.FLAG_EXPLANATIONS) + ["brand_new"]),
        raw=raw, interp=interp, restored=restored,
        voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5),
        training_log=_log(), provenance={"path": "/data/<x>.tif", "timings": {"train": 12.5},
                                         "input": "/data/<two>.tif",
                                         "input_part": {"channel": 1, "channel_name": "<GFP>", "timepoint": 3,
                                                        "time_increment_s": 150.0}},
        bead_table={"fwhm_z_in": [2.0, 2.2, 9.0], "fwhm_z_out": [1.2, 1.1, 1.3],
                    "fwhm_y_in": [1, 1, 1], "fwhm_y_out": [1, 1, 1],
                    "fwhm_x_in": [1, 1, 1], "fwhm_x_out": [1, 1, 1]},
        spectra={"input": ([0, .5, 1], [1, .1, .01]), "output": ([0, .5, 1], [1, .3, .1])},
        train_fov="0:3,4:20,4:20",
    )


def test_page_self_contained_and_escaped(full_page):
    assert full_page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", full_page)
    assert "http://" not in full_page and "https://" not in full_page
    assert EVIL not in full_page and "&lt;script&gt;alert(1)&lt;/script&gt;" in full_page
    assert "<script" not in full_page  # sample report needs no script at all
    assert "/data/&lt;x&gt;.tif" in full_page
    # which part of a multichannel time series this sample is, in the table at the top
    # (and the acquisition's own name of the channel, and its frame interval)
    assert ("<th>input</th><td>/data/&lt;two&gt;.tif (channel 1 &quot;&lt;GFP&gt;&quot;, time point 3 (one every "
            "2.5 min))</td>") in full_page


def test_page_sections_flags_and_tables(full_page):
    for section in ('id="flags"', 'id="views"', 'id="mips"', 'id="detail"', 'id="training"',
                    'id="self-validation"', 'id="reference"', 'id="resolution"', 'id="beads"',
                    'id="timings"', 'id="provenance"', "<details>"):
        assert section in full_page, section
    import html as _html
    for meaning, todo in flags.FLAG_EXPLANATIONS.values():
        assert _html.escape(meaning) in full_page and _html.escape(todo) in full_page
    assert _html.escape(flags.GENERIC_FLAG_HINT[1]) in full_page
    # the prominent warning box is shown, and first among flags
    flags_part = full_page.split('id="flags"')[1]
    assert flags_part.index('class="warn"') < flags_part.index('class="flag"')
    # self-validation gain 33.0 - 30.5 and reference gain
    assert ">+2.50<" in full_page and ">+4.00<" in full_page
    # bead medians: z in = median(2.0, 2.2, 9.0) = 2.2, out = 1.2
    beads = full_page.split('id="beads"')[1].split("</table>")[0]
    assert ">2.2<" in beads and ">1.2<" in beads
    assert "step 20" in full_page  # best checkpoint = max val_psnr_model


def test_the_display_range_is_given_to_four_significant_digits(full_page):
    """A walkthrough read "-10.79 – 33460.706"."""
    lo, hi = re.search(r"same display range (\S+) – (\S+) ", full_page).groups()
    assert all(len(re.sub(r"[^0-9]", "", v).lstrip("0")) <= 4 for v in (lo, hi)), (lo, hi)


def test_images_are_png_and_size_bounded(full_page):
    imgs = _images(full_page)
    assert len(imgs) == 5  # orthoviews, projections, detail, training, spectra
    assert all(img.startswith(PNG_MAGIC) for img in imgs)
    assert len(full_page.encode()) < 3 * 2**20


def test_best_step_from_metrics_wins():
    png_default = figures.figure_training_curves(_log())
    png_given = figures.figure_training_curves(_log(), best_step=90)
    assert png_default.startswith(PNG_MAGIC) and png_default != png_given


def test_drawing_a_report_leaves_the_callers_matplotlib_backend_alone():
    """The figures switched the whole process to Agg: in a notebook, after one restore() or
    report call, inline plots stopped showing, with no hint why."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; "
            "from selfres import figures; import pandas as pd; "
            "png = figures.figure_training_curves(pd.DataFrame({'step': [1, 2], 'loss': [1.0, 0.5]})); "
            "print(matplotlib.get_backend(), png[:4] == b'\\x89PNG', len(plt.get_fignums()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "True", "0"]


def test_minimal_page_2d_no_optional_parts():
    raw, interp, restored = (v[:1] for v in _volumes(factor=(1, 2, 2)))
    page = report.render_sample_report(
        sample="flat", metrics={"mode": "enhance", "reference": None, "flags": None},
        raw=raw[0], interp=interp, restored=restored, voxel_size_in=None, voxel_size_out=None)
    assert "No training log" in page and 'id="reference"' not in page
    assert 'id="beads"' not in page and "No provenance" in page
    imgs = _images(page)
    assert len(imgs) == 3 and all(i.startswith(PNG_MAGIC) for i in imgs)


def test_mismatched_output_grids_rejected():
    raw, interp, restored = _volumes()
    with pytest.raises(ValueError, match="output grid"):
        figures.figure_orthoviews(raw=raw, interp=interp[:-1], restored=restored)


def test_orthoview_physical_aspect():
    """A 4x anisotropic raw (few z) and its isotropic output draw at the same
    physical height: the raw XZ panel is not squashed."""
    from PIL import Image

    raw, interp, restored = _volumes(shape_in=(4, 16, 16), factor=(4, 1, 1))
    png = figures.figure_orthoviews(raw=raw, interp=interp, restored=restored,
                                   voxel_size_in=(2.0, .5, .5), voxel_size_out=(.5, .5, .5))
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert img.shape[0] > 100 and img.shape[1] > 300
    # rows of the figure that intersect a drawn (non-white) XZ panel of the raw row
    # and of the restored row have equal extent: compare the column through XZ panels
    col = img[:, img.shape[1] // 2]
    dark = col < 200
    runs, start = [], None
    for i, d in enumerate(dark):
        if d and start is None:
            start = i
        elif not d and start is not None:
            runs.append(i - start)
            start = None
    big = [r for r in runs if r > 10]
    assert len(big) >= 3 and max(big) - min(big) <= 3


def test_display_range_and_matched_contrast():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    lo, hi = figures.display_range(vol, low=0, high=100)
    assert (lo, hi) == (0.0, 999.0)
    assert figures.display_range(np.full((2, 3, 3), 7.0)) == (7.0, 8.0)


@pytest.mark.parametrize("fov, box", [
    ("0:3,4:20,5:21", ((0, 3), (4, 20), (5, 21))),
    ({"bbox": [[0, 3], [4, 20], [5, 21]], "reason": "x"}, ((0, 3), (4, 20), (5, 21))),
    ({"z0": 0, "z1": 3, "y0": 4, "y1": 20, "x0": 5, "x1": 21}, ((0, 3), (4, 20), (5, 21))),
    ((slice(0, 3), slice(4, 20), slice(5, 21)), ((0, 3), (4, 20), (5, 21))),
    ("garbage", None),
    (None, None),
    ("3:0,4:20,5:21", None),
])
def test_fov_bbox_forms(fov, box):
    assert figures.fov_bbox(fov) == box


def test_unknown_flag_generic_hint():
    assert flags.explain_flag("nope") == flags.GENERIC_FLAG_HINT
    assert all(len(v) == 2 and all(v) for v in flags.FLAG_EXPLANATIONS.values())


def test_every_flag_the_code_raises_is_explained_and_documented_and_no_other():
    """The flags the stages raise — appended to a flags list, returned as one by a helper
    such as train.Selection.budget_stop_flags, or given with a stop reason (run_steps) — read
    from the source, in the three forms the code uses, are exactly those the report explains
    and docs/reports.md lists."""
    import re
    from pathlib import Path

    src = Path(report.__file__).parent
    raised = set()
    for f in src.glob("*.py"):
        text = f.read_text()
        raised |= set(re.findall(r'flags\.append\("([a-z_]+)"\)', text))
        raised |= set(re.findall(r'return \["([a-z_]+)"\]', text))
        raised |= set(re.findall(r'\("[a-z_]+", \["([a-z_]+)"\]\)', text))  # with a stop: (reason, [flag])
    assert {"dead_output", "gpu_unused", "stopped_while_improving"} <= raised  # both forms are found
    assert set(flags.FLAG_EXPLANATIONS) == raised
    docs = (src.parents[1] / "docs" / "reports.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", docs.split("## Flags")[1].split("\n## ")[0], flags=re.M))
    assert listed == raised


ROWS = [
    {**_metrics(sample="b_ok"), "status": "ok"},
    {"sample": EVIL, "status": "failed", "mode": "enhance",
     "error": "InputError: /x/<y>.tif: no voxel size"},
    {**_metrics(sample="a_fb", flags=["model_worse_than_interpolation"],
                self_validation={"psnr_model": 29.0, "psnr_interp": 30.0}),
     "status": "fallback_interpolation"},
]


def test_summary_table_columns_and_values():
    df = report.summary_table(ROWS)
    assert list(df.columns) == list(report.SUMMARY_COLUMNS)
    assert df["psnr_gain"].tolist()[0] == pytest.approx(2.5)
    assert df["psnr_gain"].tolist()[2] == pytest.approx(-1.0)
    assert np.isnan(df["psnr_gain"].tolist()[1])
    assert df.loc[0, "input_shape"] == "6x24x24" and df.loc[0, "report"] == "b_ok/report.html"
    assert df.loc[2, "flags"] == "model_worse_than_interpolation"
    assert report.summary_table([{"sample": "x", "error": "boom"}]).loc[0, "status"] == "failed"


def test_render_summary():
    page = report.render_summary(ROWS)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert "<script>" in page and "addEventListener('click'" in page  # sorting JS
    assert 'class="sortable"' in page
    assert "1 ok" in page and "1 fallback" in page and "1 failed" in page
    failed_row = re.search(r'<tr class="failed">(.*?)</tr>', page).group(1)
    assert "/x/&lt;y&gt;.tif: no voxel size" in failed_row
    assert 'href="b_ok/report.html"' in page and 'href="a_fb/report.html"' in page
    assert page.count('<tr class="fallback">') == 1
    # what to look at: the fallback, and where to read why (the report), without a reason it may contradict
    assert "the guard found no clear gain over z-cubic interpolation on the held-out region (its report" in page
    assert "1 ok</span> · " in page  # no count of ok samples that lost: there is none
    # a gain reads as one, in dB to two decimals as the reports say it (+2.50 beside -1.00, not +2.5 and -1:
    # a walkthrough read "+1.2" beside "+1.665"), and the wide table scrolls inside a page wider than a report's
    assert '<td class="num" data-v="2.5">+2.50</td>' in page and '<td class="num" data-v="-1.0">-1.00</td>' in page
    assert '<div style="overflow-x:auto"><table class="sortable">' in page
    assert "body{max-width:1700px}</style>" in page and "1700px" not in report._page("a sample's report", "")
    assert "held-out PSNR gain (dB)" in page and "<th>PSNR gain against the reference (dB)</th>" in page
    # an isotropic sample's held-out gain (lateral slices made to look axial: +5.97 dB on a real nuclei stack)
    # is not an enhance sample's (one scale coarser: +1.2 dB) in the one sortable column: the caption says so
    assert "The two modes score different tasks, so their figures do not rank against each other" in page
    unreferenced = report.render_summary([{**r, "reference": None} for r in ROWS])
    assert "against the reference" not in unreferenced  # none was given: no empty column


def test_the_summary_gives_the_gain_against_a_reference_where_one_was_given():
    """A walkthrough's isotropic samples scored +4.8 dB against their truth and +2.3 held out; the
    summary showed the held-out figure alone, and the truer one was in each report."""
    with_ref = {**_metrics(sample="r", reference={"psnr": 35.69, "ssim": 0.95, "psnr_interp": 30.93,
                                                  "ssim_interp": 0.78}), "status": "ok"}
    df = report.summary_table(ROWS + [with_ref])
    assert df["reference_gain"].tolist() == [4.0, pytest.approx(np.nan, nan_ok=True), 4.0, 4.76]
    page = report.render_summary(ROWS + [with_ref])
    row = re.search(r'<tr class="">(<td data-v="r">.*?)</tr>', page).group(1)
    assert '<td class="num" data-v="2.5">+2.50</td><td class="num" data-v="4.76">+4.76</td>' in row
    assert report.summary_table([{"sample": "x", "reference_gain": -0.25}]).loc[0, "reference_gain"] == -0.25


def test_the_summary_counts_say_how_many_ok_samples_kept_a_network_that_lost():
    """A walkthrough with infer.on_worse_than_interpolation: model read '4 ok · 0 fallback to
    interpolation' for two samples whose restored volumes hold a network that lost the check."""
    kept = {**_metrics(sample="c_kept", flags=["model_worse_than_interpolation"],
                       self_validation={"psnr_model": 29.0, "psnr_interp": 30.0}), "status": "ok"}
    page = report.render_summary(ROWS + [kept])
    assert ("2 ok</span> (1 of them holding a network output that lost to interpolation on the held-out region: "
            "infer.on_worse_than_interpolation is model) · ") in page, page[page.find("2 ok"):][:300]


def test_write_report_figures(tmp_path):
    raw, interp, restored = _volumes()
    out = figures.write_report_figures(tmp_path / "figs", raw=raw, interp=interp,
                                      restored=restored, training_log=_log())
    assert set(out) == {"orthoviews", "projections", "detail", "training_curves"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in out.values())


def test_noisy_volume_page_stays_small():
    """Noise compresses worst; a 256x256 lateral field must still give a small page."""
    rng = np.random.default_rng(1)
    raw = rng.normal(100, 20, (4, 256, 256)).astype(np.float32)
    interp = np.repeat(raw, 2, axis=0)
    restored = interp + rng.normal(0, 5, interp.shape).astype(np.float32)
    page = report.render_sample_report(
        sample="noise", metrics=_metrics(), raw=raw, interp=interp, restored=restored,
        voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5), training_log=_log())
    assert len(page.encode()) < 3 * 2**20
    assert all(i.startswith(PNG_MAGIC) for i in _images(page))


def test_pipeline_forms_of_fov_beads_and_status():
    """train_fov.json (train/holdout keys), long-form beads.tsv (volume column, µm
    preferred over voxels) and restored_content → fallback status."""
    fov = {"train": [[0, 3], [4, 20], [5, 21]], "holdout": [[3, 6], [0, 8], [0, 8]],
           "source": "auto", "reason": "most structure"}
    assert figures.fov_bbox(fov) == ((0, 3), (4, 20), (5, 21))
    beads = pd.DataFrame({"volume": ["input", "input", "output", "output"],
                          "fwhm_z": [4.0, 4.0, 4.0, 4.0], "fwhm_z_um": [4.0, 4.4, 2.0, 2.2],
                          "fwhm_y": 2.0, "fwhm_y_um": 1.0, "fwhm_x": 2.0, "fwhm_x_um": 1.0})
    raw, interp, restored = _volumes()
    page = report.render_sample_report(
        sample="p", metrics=_metrics(restored_content="interpolation"), raw=raw,
        interp=interp, restored=restored, voxel_size_in=(1, .5, .5),
        voxel_size_out=(.5, .5, .5), bead_table=beads, train_fov=fov)
    table = page.split('id="beads"')[1].split("</table>")[0]
    assert "µm" in table and ">4.2<" in table and ">2.1<" in table
    assert "fallback_interpolation" in page and "most structure" in page
    assert report.summary_table([{"sample": "q", "restored_content": "interpolation"}]).loc[
        0, "status"] == "fallback_interpolation"


def test_beads_restored_with_their_psf_given_are_told_the_psfs_own_fwhm_as_the_floor():
    """The demo's ×4 beads, their PSF given (σ 2, 0.5, 0.5 µm): z FWHM 4.969 → 5.004 µm, beside "a smaller
    output FWHM is a sharper PSF" and nothing to say that the targets keep the PSF (FWHM 4.71 µm in z)."""
    beads = pd.DataFrame({"volume": ["input", "output"], "fwhm_z": 2.5, "fwhm_z_um": [4.969, 5.004],
                          "fwhm_y": 1.5, "fwhm_y_um": [1.486, 1.388], "fwhm_x": 1.5, "fwhm_x_um": [1.502, 1.37]})
    raw, interp, restored = _volumes()

    def beads_section(**metrics):
        page = report.render_sample_report(
            sample="b", metrics=_metrics(**metrics), raw=raw, interp=interp, restored=restored,
            voxel_size_in=(2, 1, 1), voxel_size_out=(.5, .25, .25), bead_table=beads)
        return page.split('id="beads"')[1].split('id="methods"')[0]

    said = "the network restores the sampling, not that PSF, so a bead's output FWHM tends towards the PSF"
    given = beads_section(mode="enhance", psf_sigma_um=[2.0, 0.5, 0.5])
    assert said in given and "4.71, 1.18, 1.18 µm (z, y, x), not below it" in given, given
    assert said not in beads_section(mode="enhance")  # no PSF given: nothing holds the output to one
    # isotropic mode undoes the axial blur the PSF gives: its beads should narrow along z
    assert said not in beads_section(mode="isotropic", psf_sigma_um=[2.0, 0.5, 0.5])


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2.5, 1, 1), (4, 4, 4)])
def test_volume_view_matches_full_interpolation(factors):
    """Reading a lazy view gives exactly the slice of the whole tricubic volume."""
    from selfres import degrade

    x = np.random.default_rng(0).random((7, 11, 13)).astype(np.float32)
    full = np.asarray(degrade.upscale_cubic(x, factors)) * 3.0 + 5.0
    mats = [None if f == 1 else degrade.resize_matrix(n, int(round(n * f)), scale=f, antialias=False)
            for n, f in zip(x.shape, factors)]
    view = figures.VolumeView(x, matrices=mats, scale=3.0, offset=5.0)
    assert view.shape == full.shape
    for key in [(3,), (slice(None), 5, slice(None)), (slice(None), slice(None), -1),
                (slice(2, 9), slice(3, 20), slice(0, None, 3)), (2, slice(4, 10), slice(1, 8)),
                (slice(None), 6, 7), (slice(None, None, 3),) * 3]:
        np.testing.assert_allclose(view[key], full[key], atol=1e-4, err_msg=str(key))
    with pytest.raises(IndexError):
        view[..., 0]


def test_bead_figure_and_spectra_from_qc_tables(tmp_path):
    raw, interp, restored = _volumes()
    beads = pd.DataFrame({"volume": ["input", "output"], "z": [3.0, 6.5], "y": [11.0, 11.0],
                          "x": [15.0, 15.0], "fwhm_z": [1.5, 3.0], "fwhm_y": [2.0, 2.0],
                          "fwhm_x": [2.0, 2.0]})
    png = figures.figure_beads(raw=raw, restored=restored, bead_table=beads,
                              voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5))
    assert png is not None and png.startswith(PNG_MAGIC)
    assert figures.figure_beads(raw=raw, restored=restored, bead_table=beads.iloc[1:]) is None
    # log10 spectra (as qc writes them) draw curves; an all-negative log is not "no data"
    spectra = {"input": ([0, 0.1, 0.2], [-1.0, -2.0, -3.0]),
               "output": ([0, 0.1, 0.2, 0.4], [-1.0, -2.0, -3.5, -5.0])}
    assert figures.figure_spectra(spectra, log10_power=True) != figures.figure_spectra({})
    # the interpolation's curve is drawn (beyond the input's Nyquist it leaks power too), and
    # the Nyquist line sits where it is given, not at the last bin of an odd slice count
    with_interp = spectra | {"interpolation": ([0, 0.1, 0.2, 0.4], [-1.0, -2.2, -3.4, -5.2])}
    assert figures.figure_spectra(with_interp, log10_power=True) != figures.figure_spectra(spectra, log10_power=True)
    assert (figures.figure_spectra(with_interp | {"nyquist_in": 0.25}, log10_power=True)
            != figures.figure_spectra(with_interp, log10_power=True))
    with pytest.MonkeyPatch.context() as mp:
        drawn = _captured(mp)
        figures.figure_spectra(with_interp | {"nyquist_in": 0.25}, log10_power=True)
        figures.figure_spectra(with_interp, log10_power=True)

    def nyquist_at(fig):  # the dotted vertical line's x
        lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
        assert len(lines) == 1
        return set(np.ravel(lines[0].get_xdata()).astype(float))

    assert [nyquist_at(f) for f in drawn] == [{0.25}, {0.2}]  # given; else the input's last bin
    figs = figures.sample_figures(raw=raw, interp=interp, restored=restored, bead_table=beads,
                                 spectra=spectra, spectra_log10=True)
    assert {"orthoviews", "projections", "detail", "spectra", "beads"} <= set(figs)
    out = figures.write_report_figures(tmp_path, figures=figs, names=figures.REPORT_FIGURES)
    # no training log: a placeholder keeps the declared output
    assert out["training_curves"].read_bytes().startswith(PNG_MAGIC)


def test_summary_failed_sample_has_no_dead_link_and_is_listed():
    rows = [{"sample": "good", "flags": ["early_stopped"]},
            {"sample": "bad", "status": "failed", "error": "InputError: x.tif: unreadable",
             "report": None}]
    page = report.render_summary(rows)
    assert 'href="bad/report.html"' not in page and 'href="good/report.html"' in page
    look = page.split("What to look at")[1]
    assert "bad" in look and "x.tif: unreadable" in look and "early_stopped" in look


def test_stage_summary_flags_and_failed(tmp_path):
    import json

    from selfres import summary

    import os

    def finished(sample):  # what a finished run leaves (summary.SAMPLE_OUTPUTS)
        d = tmp_path / sample
        for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
            (d / sub).mkdir(parents=True)
        (d / "train_fov.json").write_text("{}")
        (d / "logs" / "normalise.log").write_text("normalised\n")
        (d / "qc" / "metrics.json").write_text(json.dumps(
            {**_metrics(sample=sample), "flags": ["early_stopped", "saturated_input"]}))
        (d / "report.html").write_text("<html></html>")
        os.utime(d / "logs" / "normalise.log", (1e9, 1e9))  # written before the report

    finished("a")
    finished("e")  # re-run after its input changed: normalise failed, the old report is still there
    (tmp_path / "e" / "logs" / "normalise.log").write_text("ERROR: sample 'e': e.tif: is truncated\n")
    os.utime(tmp_path / "e" / "logs" / "normalise.log", (2e9, 2e9))
    finished("f")  # re-run killed in training: snakemake removed the job's output
    (tmp_path / "f" / "model").rmdir()
    (tmp_path / "b" / "logs").mkdir(parents=True)
    (tmp_path / "b" / "logs" / "normalise.log").write_text("ERROR: b.tif: not a TIFF\n")
    (tmp_path / "c" / "logs").mkdir(parents=True)  # killed mid-training: no ERROR line
    (tmp_path / "c" / "logs" / "train.log").write_text("step 40/100 loss 0.01\n")
    summary.stage_summary(tmp_path, ["a", "b", "c", "d", "e", "f"], tmp_path / "summary.tsv",
                           tmp_path / "summary.html")
    df = pd.read_csv(tmp_path / "summary.tsv", sep="\t").set_index("sample")
    assert df.loc["a", "flags"] == "early_stopped;saturated_input" and df.loc["a", "status"] == "ok"
    assert df.loc["e", "status"] == "failed" and "e.tif: is truncated" in df.loc["e", "error"]
    assert df.loc["f", "status"] == "failed" and "killed" in df.loc["f", "error"]
    assert df.loc["b", "status"] == "failed" and "not a TIFF" in df.loc["b", "error"]
    assert df.loc["c", "status"] == "failed" and "killed" in df.loc["c", "error"] and "c/logs/train.log" in df.loc["c", "error"]
    assert df.loc["d", "status"] == "pending"
    html = (tmp_path / "summary.html").read_text()
    assert 'title="' in html.split(">early_stopped<")[0][-400:]  # flag explained on hover
    assert 'href="b/report.html"' not in html
    assert ">nan<" not in html  # a failed row's missing shapes are dashes
    assert "isotropy of interpolation" in html and "isotropy_interp" in df.columns
    # the older reports of failed samples say so at their top, and keep their age (it marks when the
    # sample last finished: a second summary still finds e's ERROR line newer than its report)
    for sample in "ef":
        text = (tmp_path / sample / "report.html").read_text()
        assert not text.startswith("<html>") and "This report is out of date" in text
        assert (tmp_path / sample / "report.html").stat().st_mtime < 2e9
    assert "is truncated" in (tmp_path / "e" / "report.html").read_text()
    assert (tmp_path / "a" / "report.html").read_text() == "<html></html>"
    summary.stage_summary(tmp_path, ["a", "b", "c", "d", "e", "f"], tmp_path / "summary.tsv",
                           tmp_path / "summary.html")
    again = pd.read_csv(tmp_path / "summary.tsv", sep="\t").set_index("sample")
    assert again.loc["e", "status"] == "failed"
    assert (tmp_path / "e" / "report.html").read_text().count("This report is out of date") == 1


def test_a_sample_failing_night_after_night_is_told_from_a_new_failure(tmp_path):
    """``runs/runs.tsv``, newest first: the runs in a row that failed a sample, up to the newest
    run that ran it without failing; runs that did not run it leave the count alone; the
    run being summarised (finished after ``before``) does not count itself."""
    import time

    from selfres.runlog import RUNS_TSV_COLUMNS, failing_runs

    rows = [  # started, finished, samples run, failed samples
        ("2026-11-28T01:30:00", "2026-11-28T02:00:00", "a,b,c", "a"),
        ("2026-11-29T01:30:00", "2026-11-29T02:00:00", "a,b", "a,b"),  # b fails: its first night
        ("2026-11-30T01:30:00", "2026-11-30T01:31:00", "x", ""),  # a and b not run (another sheet)
        ("2026-12-01T01:30:00", "2026-12-01T02:00:00", "a,b,c", "b,c"),  # a finished after all
        ("2026-12-02T01:30:00", "2026-12-02T02:00:00", "b,c", "b,c"),
        ("2026-12-03T01:30:00", "2026-12-03T02:00:00", "b", "b"),  # tonight's own record
    ]
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "runs.tsv").write_text("\t".join(RUNS_TSV_COLUMNS) + "\n" + "".join(
        "\t".join([s, f, "error", "host", "user", "9", "1", ran, failed, f"{s}.json"]) + "\n"
        for s, f, ran, failed in rows))
    found = failing_runs(tmp_path, ["a", "b", "c", "d"])
    assert found == {"b": (4, "2026-11-29T01:30:00"), "c": (2, "2026-12-01T01:30:00")}
    tonight = time.mktime(time.strptime("2026-12-03T01:45:00", "%Y-%m-%dT%H:%M:%S"))
    assert failing_runs(tmp_path, ["b", "c"], before=tonight) == {"b": (3, "2026-11-29T01:30:00"),
                                                                  "c": (2, "2026-12-01T01:30:00")}
    assert failing_runs(tmp_path / "elsewhere", ["b"]) == {}
    # the summary: 1 + the runs before this one, and their start; the page says it in words
    table = report.summary_table([{"sample": "b", "status": "failed", "error": "x", "report": None,
                                   "failed_runs": 4, "failing_since": "2026-11-29T01:30:00"},
                                  {"sample": "n", "status": "failed", "error": "y", "report": None, "failed_runs": 1}])
    assert table["failed_runs"].tolist() == [4, 1]
    page = report.render_summary(table.to_dict(orient="records"))
    assert "the 4th run in a row that failed it, since the run of 2026-11-29 01:30" in page
    assert page.count("run in a row") == 1  # a first failure says nothing more


def _finished_sample_folder(results, sample):
    """A sample's results folder as a finished run leaves it (the summary reads its metrics)."""
    import json

    d = results / sample
    for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
        (d / sub).mkdir(parents=True)
    (d / "train_fov.json").write_text("{}")
    (d / "qc" / "metrics.json").write_text(json.dumps(_metrics(sample=sample)))
    (d / "report.html").write_text("<html></html>")


def test_stage_summary_marks_a_sample_whose_job_this_run_did_not_finish(tmp_path):
    """An earlier run's outputs all on disk, this run's job killed with no ERROR line (a Slurm
    time limit on a block of scattered inference): the run's log says the sample failed."""
    from selfres import summary

    import os
    import time

    earlier = time.mktime(time.strptime("2026-11-29 22:00:00", "%Y-%m-%d %H:%M:%S"))  # the night before
    for sample in ("a", "b"):
        _finished_sample_folder(tmp_path, sample)
        for p in (tmp_path / sample).rglob("*"):
            os.utime(p, (earlier, earlier))
    log = tmp_path / "run.snakemake.log"
    log.write_text("""SNAKEMAKE
=========
  Date: 2026-11-30 09:02:09

[Mon Nov 30 09:02:10 2026]
rule infer_block:
    jobid: 7
    wildcards: sample=a, block=1
Job 7 has been submitted with SLURM jobid 31 (log: /w/logs/slurm/rule_infer_block/a/31.log).
[Mon Nov 30 11:02:11 2026]
Error in rule infer_block:
    message: SLURM-job '31' failed
    jobid: 7
[Mon Nov 30 09:02:12 2026]
rule qc:
    jobid: 9
    wildcards: sample=b
[Mon Nov 30 09:02:20 2026]
Finished jobid: 9 (Rule: qc)
""")
    table = tmp_path / "summary.tsv"
    summary.stage_summary(tmp_path, ["a", "b"], table, tmp_path / "summary.html", snakemake_log=log)
    df = pd.read_csv(table, sep="\t").set_index("sample")
    assert df.loc["b", "status"] == "ok"
    assert df.loc["a", "status"] == "failed"
    assert "infer_block (Slurm job 31" in df.loc["a", "error"] and "earlier run" in df.loc["a", "error"]
    stale = (tmp_path / "a" / "report.html").read_text()
    assert "This report is out of date" in stale and "(started 2026-11-30 09:02:09)" in stale
    assert "infer_block (Slurm job 31" in stale and "out of date" not in (tmp_path / "b" / "report.html").read_text()
    # without the run's log (the summary rule of a run that finished) both read as done, the banner goes
    summary.stage_summary(tmp_path, ["a", "b"], table, tmp_path / "summary.html")
    assert set(pd.read_csv(table, sep="\t")["status"]) == {"ok"}
    assert (tmp_path / "a" / "report.html").read_text() == "<html></html>"


def test_a_failed_export_after_this_runs_report_does_not_call_the_report_out_of_date(tmp_path):
    """Only export_tiff failed (a full disk), after the sample's restoration, QC and report of this
    very run: the summary said 'the outputs on disk are from an earlier run' and the fresh report
    got the red 'This report is out of date' box."""
    import time

    from selfres import summary

    _finished_sample_folder(tmp_path, "a")  # written now, after the run started
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 600))
    (tmp_path / "a" / "logs" / "export_tiff.log").write_text(
        "ERROR: sample 'a': no space left on device while writing results/a/restored.ome.tif (0 GB free on that "
        "file system)\n")
    log = tmp_path / "run.snakemake.log"
    log.write_text(f"""SNAKEMAKE
=========
  Date: {started}

[Mon Nov 30 09:01:10 2026]
rule report:
    jobid: 11
    wildcards: sample=a
[Mon Nov 30 09:01:40 2026]
Finished jobid: 11 (Rule: report)

[Mon Nov 30 09:02:10 2026]
rule export_tiff:
    jobid: 12
    wildcards: sample=a
[Mon Nov 30 09:02:12 2026]
Error in rule export_tiff:
    jobid: 12
""")
    table = tmp_path / "summary.tsv"
    without_report = log.read_text().split("[Mon Nov 30 09:01:10 2026]")[0] + "[Mon Nov 30 09:02:10 2026]" + \
        log.read_text().split("[Mon Nov 30 09:02:10 2026]")[1]
    (tmp_path / "before.log").write_text(without_report)  # a rerun right after a run: the report is that run's
    summary.stage_summary(tmp_path, ["a"], table, tmp_path / "summary.html", snakemake_log=tmp_path / "before.log")
    assert pd.read_csv(table, sep="\t").iloc[0]["error"].endswith("; the outputs on disk are from an earlier run")
    summary.stage_summary(tmp_path, ["a"], table, tmp_path / "summary.html", snakemake_log=log)
    row = pd.read_csv(table, sep="\t").iloc[0]
    assert row["status"] == "failed" and row["report"] == "a/report.html"
    assert row["error"].startswith("sample 'a': no space left on device while writing results/a/restored.ome.tif")
    assert row["error"].endswith("; its export_tiff did not finish, but restored.ome.zarr, its QC and report are "
                                 "this run's")
    assert "earlier run" not in row["error"]
    assert "out of date" not in (tmp_path / "a" / "report.html").read_text()


def test_a_sample_whose_model_source_failed_names_it_instead_of_a_kill(tmp_path):
    """model_from first_timepoint: time point 0 failed (a constant volume), so time point 1's adopt
    never ran. Its logs hold no ERROR line and it was said to be 'killed (a time or memory limit,
    or by hand)', sending staff after cluster limits instead of the acquisition."""
    from selfres import summary

    for s_id in ("hb_t0", "hb_t1"):
        (tmp_path / s_id / "logs").mkdir(parents=True)
        (tmp_path / s_id / "logs" / "crop.log").write_text("12:00:00 INFO selfres: training FOV …\n")
    (tmp_path / "hb_t0" / "logs" / "train.log").write_text("ERROR: sample 'hb_t0': a.tif: the volume is constant "
                                                            "(every voxel is 500)\n")
    table = tmp_path / "summary.tsv"
    summary.stage_summary(tmp_path, ["hb_t0", "hb_t1"], table, tmp_path / "summary.html",
                          model_sources={"hb_t1": "hb_t0"})
    df = pd.read_csv(table, sep="\t").set_index("sample")
    assert df.loc["hb_t0", "status"] == "failed" == df.loc["hb_t1", "status"]
    assert df.loc["hb_t1", "error"] == ("not restored: its model comes from 'hb_t0' (model_from), which failed: "
                                       "sample 'hb_t0': a.tif: the volume is constant (every voxel is 500)")


def test_a_combined_export_the_run_did_not_write_is_named_with_why(tmp_path):
    """export_tiff with ``timepoint: all`` / ``channel: all``: an acquisition's one OME-TIFF is
    written from every part. The summary of a run that stopped names those it did not write —
    a part failed, the export itself failed in this run, or the run stopped first — and no
    file that is there; the summary rule (no run log: it runs beside the exports) names only
    a part that holds its file back."""
    import os
    import time

    from selfres import summary

    for s in ("lapse_t0", "mc_c0", "mc_c1", "done_c0", "done_c1", "later_t0", "later_t1", "old_c0", "old_c1"):
        _finished_sample_folder(tmp_path, s)
    (tmp_path / "lapse_t1" / "logs").mkdir(parents=True)
    (tmp_path / "lapse_t1" / "logs" / "train.log").write_text("ERROR: sample 'lapse_t1': out of memory\n")
    (tmp_path / "lapse.ome.tif").write_bytes(b"an earlier run's")
    (tmp_path / "done.ome.tif").write_bytes(b"written")
    exports = tmp_path / "logs" / "export_acquisition"
    exports.mkdir(parents=True)
    (exports / "mc.log").write_text("ERROR: No space left on device\n")
    (exports / "old.log").write_text("ERROR: an earlier night's problem\n")
    started = time.time() - 30
    os.utime(exports / "old.log", (started - 3600, started - 3600))  # that export did not run in this run
    run_log = tmp_path / "run.snakemake.log"
    run_log.write_text("SNAKEMAKE\n=========\n  Date: %s\n" % time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)))
    groups = {"lapse": ["lapse_t0", "lapse_t1", "lapse_t2"], "mc": ["mc_c0", "mc_c1"],
              "done": ["done_c0", "done_c1"], "later": ["later_t0", "later_t1"], "old": ["old_c0", "old_c1"]}
    samples = [s for ids in groups.values() for s in ids]
    rows = summary.stage_summary(tmp_path, samples, tmp_path / "summary.tsv", tmp_path / "summary.html",
                                 snakemake_log=run_log, acquisitions=groups)
    found = {x["acquisition"]: x for x in summary.unwritten_exports(tmp_path, groups, rows, run_started=started)}
    assert set(found) == {"lapse", "mc", "later", "old"}  # done.ome.tif is there
    assert found["lapse"]["reason"] == "lapse_t1 failed" and found["lapse"]["on_disk"]  # lapse_t2 never ran
    assert found["mc"]["reason"] == "its export failed: No space left on device (see logs/export_acquisition/mc.log)"
    assert not found["mc"]["on_disk"]
    assert found["later"]["reason"] == found["old"]["reason"] == "the run stopped before its export"
    assert [x["parts"] for x in found.values()] == ["time points", "channels", "time points", "channels"]
    page = (tmp_path / "summary.html").read_text()
    assert ("lapse.ome.tif (the time points of lapse as one OME-TIFF): <b>not written</b> — "
            "lapse_t1 failed; the file there is an earlier run's.") in page
    assert "mc.ome.tif (the channels of mc as one OME-TIFF)" in page and "done.ome.tif" not in page
    assert "an earlier night" not in page
    # the summary rule (no run log) names only what a part holds back
    rule = summary.unwritten_exports(tmp_path, groups, rows)
    assert [x["acquisition"] for x in rule] == ["lapse"]
    pending = [dict(r, status="pending", report=None) if r["sample"] == "lapse_t1" else r for r in rows]
    assert summary.unwritten_exports(tmp_path, {"lapse": groups["lapse"]}, pending)[0]["reason"] == \
        "lapse_t1, lapse_t2 not restored yet"
    both = summary.unwritten_exports(tmp_path, {"x": ["x_c0_t0", "x_c1_t0"]}, [])
    assert both[0]["parts"] == "channels and time points"
    # without acquisitions (export_tiff off) the page has no such line
    summary.stage_summary(tmp_path, samples, tmp_path / "summary.tsv", tmp_path / "summary.html",
                          snakemake_log=run_log)
    assert "not written" not in (tmp_path / "summary.html").read_text()


def test_verdict_matches_the_guards_reason_and_never_calls_a_delivered_gain_a_loss():
    from selfres import report

    # flagged by the coarse-scale check with a held-out gain past the margin: not "by only … less than"
    coarse = {"self_validation": {"psnr_model": 30.8, "psnr_interp": 30.0}, "guard_margin_db": 0.2,
              "flags": ["model_worse_than_interpolation"], "mode": "enhance", "coarse_scale_failed": True}
    for margin in (0.2, 0.0):
        text = report._verdict(dict(coarse, guard_margin_db=margin), "ok")
        assert "scores +0.80 dB PSNR over tricubic" in text and "one scale coarser" in text
        assert "less than the margin" not in text and "does not beat" not in text
    # the margin missed by the guard's own figure, passed by the report's re-scoring: said as such
    rescored = report._verdict(dict(coarse, coarse_scale_failed=False), "ok")
    assert "as scored for this report, but the guard" in rescored and "one scale coarser" not in rescored
    # a small gain that passed the guard (above 0 in every resample): the output holds it, the words say so
    small = report._verdict({"self_validation": {"psnr_model": 30.003, "psnr_interp": 30.0},
                             "guard_margin_db": 0.2, "mode": "enhance"}, "ok")
    assert "beats tricubic interpolation</b> on the held-out region by +0.003 dB" in small
    tiny = report._verdict({"self_validation": {"psnr_model": 30.0004, "psnr_interp": 30.0}, "mode": "enhance"}, "ok")
    assert "by +0.0004 dB" in tiny
    assert "does not beat" not in small


def test_verdict_says_when_the_held_out_region_is_mostly_background_and_why_a_consistent_gain_fails():
    """A walkthrough: a centred nucleus left both end slabs empty; the verdict read "+0.13 dB … too
    little to trust", then "between +0.07 and +0.18 dB (95 %)" (which passes an untrained model), and
    never said the region held 18 % of the volume's structure."""
    from selfres import report

    m = {"self_validation": {"psnr_model": 30.13, "psnr_interp": 30.0}, "guard_margin_db": 0.2, "mode": "enhance",
         "flags": ["model_worse_than_interpolation"], "holdout_gain_db_interval": [0.07, 0.18]}
    sparse = {"scores": {"holdout_structure": 0.00079, "volume_structure": 0.0043, "train_structure": 0.006}}
    text = report._verdict(m, "fallback_interpolation", sparse)
    assert "holds little structure (18% of the volume's average" in text and "fov.holdout_fraction" in text
    assert "consistent, but a trained network must clear the margin" in text
    dense = {"scores": {"holdout_structure": 0.004, "volume_structure": 0.0043}}
    assert "little structure" not in report._verdict(m, "fallback_interpolation", dense)
    assert "little structure" not in report._verdict(m, "fallback_interpolation")
    # an interval across 0, or a gain that passed: no margin sentence
    assert "must clear" not in report._verdict(m | {"holdout_gain_db_interval": [-0.05, 0.2]}, "x")
    assert "must clear" not in report._verdict(m | {"flags": []}, "ok")
    assert "must clear" not in report._verdict(m | {"coarse_scale_failed": True}, "x")  # its own reason, said


def test_bead_table_of_a_volume_without_voxel_size_compares_widths_on_one_grid():
    """QC writes each grid's own voxels into the _um columns when the voxel size is unknown: the
    report gives both in output voxels (an input bead 2 voxels wide in z at ×4 is 8 output voxels)."""
    from selfres import report

    beads = pd.DataFrame({"z": [5, 20], "y": [5, 20], "x": [5, 20], "fwhm_z": [2.0, 8.0], "fwhm_y": [2.0, 2.0],
                          "fwhm_x": [2.0, 2.0], "fwhm_z_um": [2.0, 8.0], "fwhm_y_um": [2.0, 2.0],
                          "fwhm_x_um": [2.0, 2.0], "volume": ["input", "output"]})
    known = report._bead_summary(beads, ((1.0, 0.5, 0.5), (0.25, 0.5, 0.5), "µm"))
    assert known.attrs["unit"] == "µm" and known.loc["z", "output"] / known.loc["z", "input"] == 4.0
    unknown = report._bead_summary(beads, ((4.0, 1.0, 1.0), (1.0, 1.0, 1.0), "output voxels"))
    assert unknown.attrs["unit"] == "output voxels"
    assert unknown.loc["z"].tolist() == [8.0, 8.0] and unknown.loc["y"].tolist() == [2.0, 2.0]


def test_projection_caption_gives_the_z_planes_of_the_training_and_held_out_boxes():
    from selfres import report

    fov = {"train": [[0, 32], [0, 50], [0, 50]], "holdout": [[40, 64], [0, 20], [0, 20]]}
    assert report._z_extent_words(fov, 100) == (". In z, the training field of view: planes 0–31; the held-out "
                                                "region: planes 40–63 (of the input's 100, counted from 0)")
    assert "all planes" in report._z_extent_words({"train": [[0, 100], [0, 5], [0, 5]]}, 100)
    assert report._z_extent_words(None, 100) == ""


def test_verdict_names_the_inference_extras_the_guard_scored():
    from selfres import report

    sv = {"psnr_model": 30.0, "psnr_interp": 29.0}
    plain = report._verdict({"self_validation": sv, "inference_extras": None}, "ok")
    assert "The network beats tricubic" in plain
    with_bp = report._verdict({"self_validation": sv, "inference_extras": {
        "ensemble": False, "back_projection_iterations": 1}}, "ok")
    assert "The network with back-projection (1 step) beats tricubic" in with_bp
    both = report._verdict({"self_validation": {"psnr_model": 29.0, "psnr_interp": 29.5}, "inference_extras": {
        "ensemble": True, "back_projection_iterations": 2}, "flags": ["model_worse_than_interpolation"]}, "ok")
    assert "with self-ensemble and back-projection (2 steps) does not beat tricubic" in both
    shrunk = report._verdict({"self_validation": sv, "inference_extras": {
        "ensemble": False, "back_projection_iterations": 1, "back_projection_shrink": True}}, "ok")
    assert "back-projection (1 step, its corrections shrunk by the acquisition&#x27;s noise) beats" in shrunk


def test_verdict_says_when_the_held_out_score_used_psf_scaled_targets():
    from selfres import report

    sv = {"psnr_model": 30.0, "psnr_interp": 29.0}
    assert "PSF-scaled" not in report._verdict({"self_validation": sv, "psf_sigma_um": None}, "ok")
    text = report._verdict({"self_validation": sv, "psf_sigma_um": [2.0, 0.5, 0.5]}, "ok")
    assert "PSF-scaled targets" in text and "2, 0.5, 0.5 µm" in text


def test_verdict_gives_the_acquisition_noise_the_held_out_input_was_given():
    from selfres import report

    from selfres.train import NOISE_AT

    sv = {"psnr_model": 30.0, "psnr_interp": 29.0}
    assert "noise" not in report._verdict({"self_validation": sv, "noise_sigma_at": None}, "ok")
    # keyed as training records it (model.json "noise" → metrics.json "noise_sigma_at")
    text = report._verdict({"self_validation": sv, "noise_sigma_at": dict(zip(NOISE_AT, (0.0123, 0.0456)))}, "ok")
    assert "own noise" in text and "σ 0.012 at 10 %" in text and "0.046 at 50 %" in text
    nil = report._verdict({"self_validation": sv, "noise_sigma_at": dict(zip(NOISE_AT, (0.0, 0.0)))}, "ok")
    assert "No noise could be measured" in nil and "own noise" not in nil


def test_verdict_gives_the_held_out_gain_interval_and_says_when_it_cannot_tell():
    from selfres import report

    sv = {"psnr_model": 30.0, "psnr_interp": 29.0}
    assert "Resampling blocks" not in report._verdict({"self_validation": sv}, "ok")
    sure = report._verdict({"self_validation": sv, "holdout_gain_db_interval": [0.6, 1.4]}, "ok")
    assert "between +0.60 and +1.40 dB (95 %)." in sure and "tell the two apart" not in sure
    unsure = report._verdict({"self_validation": {"psnr_model": 30.05, "psnr_interp": 30.0},
                              "holdout_gain_db_interval": [-0.1, 0.2]}, "ok")
    assert "between -0.10 and +0.20 dB" in unsure and "a gain this small cannot be told from 0" in unsure
    passed = report._verdict({"self_validation": {"psnr_model": 30.3, "psnr_interp": 30.0},
                              "holdout_gain_db_interval": [-0.05, 0.40]}, "ok")  # a review: not "about equal"
    assert "cannot be told from 0" in passed and "equally" not in passed
    assert "too small or too uniform" not in unsure  # 0.3 dB wide: measured, and about 0
    wide = report._verdict({"self_validation": {"psnr_model": 30.05, "psnr_interp": 30.0},
                            "holdout_gain_db_interval": [-0.3, 0.4]}, "ok")
    assert "too small or too uniform to tell the two apart" in wide and "cannot be told from 0" not in wide


def test_verdict_holds_a_kept_starting_point_to_the_95_percent_test_not_the_trained_networks_margin():
    """A walkthrough's binned cells kept step 0 (tricubic + back-projection), +0.05 dB [-0.01, +0.10]:
    the verdict cited the margin 'a trained network' must clear, which did not decide it."""
    from selfres import report

    start = {"self_validation": {"psnr_model": 30.05, "psnr_interp": 30.0}, "mode": "enhance", "best_step": 0,
             "flags": ["model_worse_than_interpolation"], "guard_margin_db": 0.2,
             "holdout_gain_db_interval": [-0.01, 0.10]}
    text = report._verdict(start, "ok")
    assert "by only +0.05 dB PSNR</b>, and a model that kept its starting point passes the guard only with " \
           "a gain above 0 at 95 % when its blocks are resampled or a gain above train.guard_margin_db = 0.2 dB" in text
    assert "a trained network" not in text
    # the report's re-scored interval may clear 0 where the guard's did not: not explained as a trained network's
    cleared = report._verdict(start | {"holdout_gain_db_interval": [0.02, 0.18]}, "ok")
    assert "the guard's interval, taken when the model was made, did not clear 0" in cleared
    assert "a trained network must clear the margin" not in cleared
    assert "at 99 % when" in report._verdict(start | {"guard_confidence": 0.99}, "ok")
    margin_only = report._verdict(start | {"guard_confidence": 0.0}, "ok")
    assert "only with a gain above train.guard_margin_db = 0.2 dB." in margin_only and "resampled" not in margin_only
    trained = report._verdict(start | {"best_step": 100}, "ok")
    assert "less than the margin the guard asks of a trained network" in trained and "starting point" not in trained


def test_a_trained_network_below_the_margin_is_told_the_kept_starts_rule_at_the_confidence_set():
    """A mutation review: the sentence always said 95 %, and with train.guard_confidence 0 (that rule
    off) it told of a rule that did not exist."""
    from selfres import report

    m = {"self_validation": {"psnr_model": 30.10, "psnr_interp": 30.0}, "guard_margin_db": 0.2,
         "flags": ["model_worse_than_interpolation"], "mode": "enhance", "best_step": 100,
         "holdout_gain_db_interval": [0.05, 0.15]}
    said = "consistent, but a trained network must clear the margin"
    assert said + " (a gain above 0 at 95 % is enough only for a model that kept its" in report._verdict(m, "ok")
    assert "at 99 % is enough only" in report._verdict(dict(m, guard_confidence=0.99), "ok")
    off = report._verdict(dict(m, guard_confidence=0.0), "ok")
    assert said + "." in off and "is enough only" not in off


def test_a_reference_gain_far_below_the_held_out_one_is_said_beside_it():
    """A walkthrough on a large cellfinder field: the report opened with "+1.25 dB" held out while the
    reference, further down, gave +0.24 dB, unremarked; the two are now set side by side."""
    from selfres import report

    m = {"self_validation": {"psnr_model": 31.25, "psnr_interp": 30.0}, "mode": "enhance", "flags": [],
         "reference": {"psnr": 50.24, "psnr_interp": 50.0}}
    said = "(a gain of +0.24 dB, less than half the held-out region's: the gain measured one scale coarser"
    assert said in report._verdict(m, "ok")
    near = dict(m, reference={"psnr": 50.9, "psnr_interp": 50.0})  # +0.9 of +1.25: within 0.3 dB and over half
    assert "less than half" not in report._verdict(near, "ok") and "scores 50.9 dB PSNR" in report._verdict(near, "ok")
    half = dict(m, self_validation={"psnr_model": 32.0, "psnr_interp": 30.0},
                reference={"psnr": 51.2, "psnr_interp": 50.0})  # +1.2 of +2.0: 0.8 dB below, but over half
    assert "less than half" not in report._verdict(half, "ok")
    small = dict(m, self_validation={"psnr_model": 30.5, "psnr_interp": 30.0},
                 reference={"psnr": 50.24, "psnr_interp": 50.0})  # +0.24 of +0.5: within 0.3 dB
    assert "less than half" not in report._verdict(small, "ok")
    iso = dict(m, mode="isotropic")  # another held-out task: its own caveat
    assert "less than half" not in report._verdict(iso, "ok")
    caption = report._self_validation_caption({"mode": "enhance"}, "tricubic")
    assert "scored one scale coarser than the output" in caption and "under a tenth of the held-out gain" in caption
    assert "one scale coarser" not in report._self_validation_caption({"mode": "isotropic"}, "z-cubic")


def test_self_validation_caption_names_the_degradation_it_scores_and_the_keys_cubic_baseline():
    """A binned acquisition is not what the held-out figure scores with the default cubic model: the
    caption says which model it used and that block is the binned camera's (a walkthrough)."""
    from selfres import report

    cubic = report._self_validation_caption({"mode": "enhance", "degradation_method": "cubic"}, "tricubic")
    assert "(train.degradation.method: cubic, an antialiased cubic downscale" in cubic
    assert "if the camera binned pixels, block models that acquisition" in cubic
    assert "tricubic interpolation (Keys cubic, as imresize)" in cubic
    block = report._self_validation_caption({"mode": "enhance", "degradation_method": "block"}, "tricubic")
    assert "method: block, the block mean, as a binned camera makes it" in block and "binned pixels" not in block
    psf = report._self_validation_caption({"mode": "enhance", "degradation_method": "psf"}, "tricubic")
    assert "method: psf, the measured PSF given, then the block mean)" in psf  # as degrade.degrade makes it
    assert "degraded as in training and" in report._self_validation_caption({"mode": "enhance"}, "tricubic")
    iso = report._self_validation_caption({"mode": "isotropic", "degradation_method": "cubic"}, "z-cubic")
    assert "train.degradation.method" not in iso and "Keys" not in iso


def test_verdict_says_a_small_gain_missed_the_guards_margin_and_names_z_cubic_in_isotropic_mode():
    from selfres import report

    flagged = {"self_validation": {"psnr_model": 30.1, "psnr_interp": 30.0},
               "flags": ["model_worse_than_interpolation"], "guard_margin_db": 0.2, "mode": "enhance"}
    text = report._verdict(flagged, "ok")
    assert "beats tricubic interpolation on the held-out region by only +0.10 dB" in text
    assert "train.guard_margin_db = 0.2 dB" in text and "does not beat" not in text
    worse = dict(flagged, self_validation={"psnr_model": 29.0, "psnr_interp": 30.0})
    assert "does not beat tricubic interpolation" in report._verdict(worse, "ok")
    iso = {"self_validation": {"psnr_model": 31.0, "psnr_interp": 30.0}, "mode": "isotropic",
           "guard_margin_db": 0.0}
    assert "beats z-cubic interpolation" in report._verdict(iso, "ok")
    # ... on what isotropic mode scores, with the σ that figure rests on (and cannot check)
    iso["isotropic_degradation"] = {"sigma_px": 2.5, "sigma_source": "estimated"}
    assert ("beats z-cubic interpolation</b> on held-out lateral slices made to look axial (axial σ 2.5 lateral "
            "pixels, estimated) by +1.00 dB") in report._verdict(iso, "ok")
    iso_worse = dict(iso, self_validation={"psnr_model": 29.0, "psnr_interp": 30.0},
                     flags=["model_worse_than_interpolation"], restored_content="interpolation")
    text = report._verdict(iso_worse, "ok")
    assert "does not beat z-cubic interpolation" in text and "holds the z-cubic interpolation" in text


def test_a_reference_that_ranks_the_output_below_interpolation_is_said_first():
    """The held-out figure is one scale coarser; a reference (the truth) outranks it."""
    from selfres import report

    m = {"self_validation": {"psnr_model": 31.0, "psnr_interp": 28.0}, "mode": "enhance",
         "reference": {"psnr": 42.72, "psnr_interp": 43.04, "ssim": 0.966, "ssim_interp": 0.973},
         "flags": ["worse_than_interpolation_on_reference"]}
    text = report._verdict(m, "ok")
    assert "restored.ome.zarr scores 42.72 dB PSNR and tricubic interpolation 43.04 dB" in text
    assert "worse than interpolation against the truth" in text
    good = dict(m, reference={"psnr": 44.0, "psnr_interp": 43.0}, flags=[])
    assert "worse than interpolation" not in report._verdict(good, "ok")
    fell_back = dict(m, restored_content="interpolation")
    assert "against the truth" not in report._verdict(fell_back, "ok")
    html = report._flags_html(["early_stopped", "worse_than_interpolation_on_reference"])
    assert html.startswith('<div class="warn" id="flag-worse_than_interpolation_on_reference">')
    assert "If the camera binned pixels" in html and "train.degradation.method: block" in html  # a binned acquisition


def test_verdict_says_when_noise_matching_is_off_and_when_training_kept_its_start():
    from selfres import report

    sv = {"psnr_model": 30.0, "psnr_interp": 29.0}
    base = {"self_validation": sv, "mode": "enhance"}
    off = report._verdict(base | {"noise_model": "none"}, "ok")
    assert "Noise matching is off (train.degradation.noise: none)" in off
    assert "Noise matching is off" not in report._verdict(base | {"noise_model": "match"}, "ok")
    assert "Noise matching is off" not in report._verdict(base | {"noise_model": "none", "mode": "isotropic"}, "ok")
    bp = {"ensemble": False, "back_projection_iterations": 1}
    start = report._verdict(base | {"best_step": 0, "inference_extras": bp}, "ok")
    assert "best step 0" in start and "tricubic interpolation followed by back-projection" in start
    assert "best step 0" not in report._verdict(base | {"best_step": 50, "inference_extras": bp}, "ok")


def test_verdict_gives_isotropy_in_isotropic_mode_only_as_a_hint_and_keeps_narrow_intervals_apart():
    """The decorrelation estimate on a finer grid reads interpolated noise as detail (on the
    demo the noise-free truth read blurrier than tricubic): the verdict gives isotropy only in
    isotropic mode, whose purpose it is, and says what the figure is worth."""
    from selfres import report

    m = {"self_validation": {"psnr_model": 30.0, "psnr_interp": 29.0}, "isotropy_in": 0.19, "isotropy_out": 0.09,
         "isotropy_interp": 0.5, "mode": "enhance", "voxel_size_in": [4.0, 0.5, 0.5],
         "voxel_size_out": [2.0, 0.25, 0.25]}
    assert "Isotropy" not in report._verdict(m, "ok")  # enhance: the figures are in the resolution table
    iso = report._verdict(m | {"mode": "isotropic", "isotropy_out": 0.9}, "ok")
    assert ("Isotropy estimate (lateral / axial resolution, 1 = isotropic) of the output 0.9, of z-cubic "
            "interpolation on the same grid 0.5, of the input on its own grid 0.19.") in iso
    assert "a hint, not a measurement: judge the XZ/YZ views" in iso and "noise read as detail, not" not in iso
    # a noisy stack's interpolation read finer along z than laterally (1.255; the restoration 0.70 and +4.8 dB
    # against the truth, a walkthrough): said to be noise, as the output would be flagged for it
    noisy = report._verdict(m | {"mode": "isotropic", "isotropy_out": 0.7, "isotropy_interp": 1.255}, "ok")
    assert ("of z-cubic interpolation on the same grid 1.255 (above 1.25: finer along z than laterally, which "
            "interpolation cannot be; interpolated noise read as detail, not a resolution), of the input") in noisy
    assert "noise read as detail, not" not in report._verdict(m | {"mode": "isotropic", "isotropy_interp": 1.25},
                                                               "ok")
    no_input = report._verdict(m | {"mode": "isotropic", "isotropy_in": None}, "ok")  # z too coarse for it
    assert "the input's axial figure could not be estimated" in no_input
    assert "Isotropy was not measured" in report._verdict(m | {"mode": "isotropic", "isotropy_out": None}, "ok")
    narrow = report._verdict(m | {"holdout_gain_db_interval": [0.101, 0.104]}, "ok")
    assert "between +0.101 and +0.104 dB" in narrow


def test_a_sample_restored_with_another_samples_model_says_so():
    raw, interp, restored = _volumes()
    kw = dict(raw=raw, interp=interp, restored=restored, voxel_size_in=(1.0, 0.5, 0.5),
              voxel_size_out=(0.5, 0.5, 0.5), training_log=_log())
    page = report.render_sample_report(sample="lapse_t3", metrics=_metrics(adopted_from="lapse_t0"), **kw)
    assert "Model trained on sample lapse_t0" in page and "model_from" in page
    # in the table at the top too, beside what restored.ome.zarr holds (it was said only further down)
    top = page.split('<h2 id="flags">')[0]
    assert "sample lapse_t0&#x27;s (model_from), judged on this sample&#x27;s own held-out region" in top or \
        "sample lapse_t0's (model_from), judged on this sample's own held-out region" in top, top[-1500:]
    own = report.render_sample_report(sample="a", metrics=_metrics(), **kw)
    assert "Model trained on sample" not in own and "(model_from)" not in own.split('<h2 id="flags">')[0]


def test_self_validation_caption_says_what_was_compared_in_each_mode():
    """It said 'a region training never saw' (the region chooses the kept checkpoint), and in
    isotropic mode gave neither the lateral-slice task nor the axial σ it rests on."""
    from selfres import report

    iso = report._self_validation_caption({"mode": "isotropic", "isotropic_degradation": {
        "sigma_px": 1.75, "sigma_source": "estimated", "method": "analytic"}}, "z-cubic")
    assert "Held-out lateral (XY) slices are made to look axial" in iso
    assert "σ 1.75 lateral pixels (estimated)" in iso and "a wrong σ cannot be seen here" in iso
    assert "chose which checkpoint was kept" in iso
    # with the voxel size, the σ in µm too (a walkthrough read it in pixels alone)
    sized = report._self_validation_caption({"mode": "isotropic", "voxel_size_in": [2.5, 0.5, 0.5],
                                             "isotropic_degradation": {"sigma_px": 4.5, "sigma_source": "estimated",
                                                                       "method": "analytic"}}, "z-cubic")
    assert "σ 4.5 lateral pixels (2.25 µm; estimated), subsampled" in sized
    assert "(axial σ 4.5 lateral pixels = 2.25 µm, estimated)" in report._holdout_name(
        {"mode": "isotropic", "voxel_size_in": [2.5, 0.5, 0.5],
         "isotropic_degradation": {"sigma_px": 4.5, "sigma_source": "estimated"}})
    learned = report._self_validation_caption({"mode": "isotropic", "isotropic_degradation": {
        "sigma_px": 2.0, "sigma_source": "settings", "method": "learned"}}, "z-cubic")
    assert "with the learned generator" in learned
    enh = report._self_validation_caption({"mode": "enhance"}, "tricubic")
    assert "compared with that region as acquired" in enh and "never saw" not in enh
    assert "output grid's PSF" in report._self_validation_caption({"mode": "enhance", "psf_sigma_um": [1, .5, .5]},
                                                                  "tricubic")


def test_training_fov_is_written_with_axis_names_and_curves_say_what_they_score():
    from selfres import report

    note = report._draw_fov_note({"train": [[0, 32], [0, 102], [0, 128]], "holdout": [[0, 32], [102, 128], [0, 128]]})
    # first–last as the projection's caption gives planes (train_fov.json's ends are excluded)
    assert "train: z 0–31, y 0–101, x 0–127 (input voxels, first–last, counted from 0)" in note and "[[" not in note
    assert report._box_words("z0:z1") == "z0:z1"
    raw, interp, restored = _volumes()

    def page(mode, stop="steps"):
        m = _metrics() | {"mode": mode, "inference_extras": {"back_projection_iterations": 1, "ensemble": False},
                          "stop_reason": stop}
        return report.render_sample_report(sample="s", metrics=m, raw=raw, interp=interp, restored=restored,
                                           voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5),
                                           training_log=_log())
    # enhance: the curves are the network alone, the table network + back-projection
    assert "The curves score the network alone" in page("enhance") and "validations logged" in page("enhance")
    assert "The curves score the network alone" not in page("isotropic")
    # how training ended, in words (a walkthrough read "training stopped: steps")
    assert "training ended after all its steps." in page("isotropic") and "stopped: steps" not in page("isotropic")
    assert "training ended stage 1 after all its steps, stage 2 early, no longer improving on the held-out " \
           "region." in page("enhance", ["steps", "early_stop"])


def test_how_a_training_ended_is_said_in_words():
    assert wording.stop_text("time_budget") == "at its time budget (train.max_minutes)"
    assert wording.stop_text("diverged") == "when its loss diverged"
    assert wording.stop_text("steps+interrupted") == "stage 1 after all its steps, stage 2 when it was interrupted"
    assert wording.stop_text("something_new") == "something_new"  # as recorded, never an error


def test_detail_of_an_output_resampled_along_z_only_is_an_axial_crop(monkeypatch):
    """Isotropic mode: an XY detail shows nothing z restored, and on an acquired plane its
    profiles coincide; the detail is an XZ crop with a profile along z."""
    rng = np.random.default_rng(0)
    raw = rng.random((8, 32, 32)).astype(np.float32)
    up = np.repeat(raw, 2, axis=0) + 0.01
    called = []
    real = figures._axial_detail
    monkeypatch.setattr(figures, "_axial_detail", lambda *a, **k: called.append(a[6]) or real(*a, **k))
    png = figures.figure_detail(raw=raw, interp=up, restored=up, voxel_size_in=(1.0, 0.5, 0.5),
                               voxel_size_out=(0.5, 0.5, 0.5))
    assert png.startswith(PNG_MAGIC) and len(called) == 1
    figures.figure_detail(raw=raw, interp=np.repeat(np.repeat(raw, 2, 1), 2, 2), restored=np.repeat(
        np.repeat(raw, 2, 1), 2, 2), voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(1.0, 0.25, 0.25))
    assert len(called) == 1  # lateral upsampling keeps the XY detail


def test_an_input_resolution_without_estimate_is_explained():
    raw, interp, restored = _volumes()
    m = _metrics() | {"resolution_um": {"lateral_in": None, "axial_in": 24.7, "lateral_out": 2.5, "axial_out": 6.7}}
    page = report.render_sample_report(sample="s", metrics=m, raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(5.0, 2.0, 2.0), voxel_size_out=(2.5, 1.0, 1.0))
    assert "No estimate (lateral for the input): the decorrelation analysis found no resolution limit" in page
    # qc.resolution off: nothing was estimated, so nothing failed to be — said as not measured, once
    off = _metrics() | {"resolution_um": dict.fromkeys(m["resolution_um"])}
    page = report.render_sample_report(sample="s", metrics=off, raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(5.0, 2.0, 2.0), voxel_size_out=(2.5, 1.0, 1.0))
    assert "Not measured: qc.resolution is off" in page and "No estimate (" not in page


def test_the_timings_table_has_the_qc_stage_once_and_the_figures_are_timed_in_the_log(caplog):
    """A reviewer's large field: qc and the report's figures took minutes with no line in the
    log and no row in the report's timings."""
    rows = report._timing_rows({"train_seconds": 2.0, "infer_seconds": 3.0, "qc_seconds": 4.5},
                               {"timings": {"train_seconds": 2.0, "infer_seconds": 3.0, "qc_seconds": 4.5}})
    assert ["quality control", 4.5, None] in rows and sum(r[0] in ("quality control", "qc_seconds") for r in rows) == 1
    assert all(r[0] != "quality control" for r in report._timing_rows({"train_seconds": 2.0}, {}))  # an older file
    raw, interp, restored = _volumes()
    with caplog.at_level("INFO", logger="selfres.figures"):
        figures.sample_figures(raw=raw, interp=interp, restored=restored)
    for line in ("drawing the figures of a", "projections drawn in", "figures drawn in"):
        assert line in caplog.text, line


def test_a_missing_isotropy_names_the_estimate_that_failed_not_settings_that_were_right():
    """A reviewer's cellfinder crop (5, 2, 2 µm): qc.resolution on, the voxel size known, no
    lateral estimate in input or output; the verdict blamed "qc.resolution off, no voxel size,
    or too small a volume" and the Resolution section said nothing."""
    raw, interp, restored = _volumes()
    m = _metrics() | {"mode": "isotropic", "isotropy_in": None, "isotropy_out": None,
                      "resolution_um": {"lateral_in": None, "axial_in": 24.7, "lateral_out": None, "axial_out": 6.6}}
    verdict = report._verdict(m, "ok")
    assert "found no lateral resolution limit in the output's window" in verdict and "qc.resolution off" not in verdict
    page = report.render_sample_report(sample="s", metrics=m, raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(5.0, 2.0, 2.0), voxel_size_out=(2.0, 2.0, 2.0))
    assert "No estimate (lateral for the input or the output)" in page
    # the input's lateral estimate found, the output's not: the output's is the one that failed
    output_only = m | {"resolution_um": m["resolution_um"] | {"lateral_in": 9.8}}
    verdict = report._verdict(output_only, "ok")
    assert "found no lateral resolution limit in the output's window" in verdict and "qc.resolution off" not in verdict
    unknown = report._verdict(m | {"resolution_um": dict.fromkeys(m["resolution_um"]), "flags": ["voxel_size_missing"]},
                              "ok")
    assert "Isotropy was not measured (the voxel size is unknown)" in unknown


def test_detail_structure_is_found_away_from_the_lateral_edges():
    """A nucleus cut by the border (the brightest) put the profile line on the panel's frame
    at x=0; the detail goes to the brightest structure inside."""
    vol = np.zeros((4, 64, 64), np.float32)
    vol[:, 30:34, 0:3] = 2.0  # brightest, touching x = 0
    vol[:, 40:44, 20:24] = 1.0
    z, y, x = figures._find_structure(vol)
    assert 40 <= y < 44 and 20 <= x < 24


@pytest.mark.parametrize("n_in, factor", [(15, 4), (15, 2), (8, 3), (1, 1), (20, 1)])
def test_the_detail_shows_an_output_plane_beside_the_acquired_plane_it_compares_with(n_in, factor):
    """A walkthrough's ×4 beads: the raw crop was the acquired plane nearest the peak's output
    plane, up to 3/8 of an acquired plane away, and read half the peak next to the output's. The
    output plane shown is now the one nearest the acquired plane shown: half an output plane at most."""
    n_out = n_in * factor
    for z in range(n_out):
        k, iz = figures._plane_on_acquired(z, n_out, n_in)
        assert iz == figures._in_index(z, n_out, n_in) and 0 <= k < n_out
        assert abs((k + 0.5) / factor - (iz + 0.5)) <= 0.5 / factor + 1e-9  # in acquired planes
        assert abs(k - z) <= factor  # still at the structure


def test_detail_crop_at_the_edge_keeps_its_full_size():
    assert figures._window(0, 8, 64) == (0, 16) and figures._window(63, 8, 64) == (48, 64)
    assert figures._window(30, 8, 64) == (22, 38) and figures._window(3, 8, 10) == (0, 10)


def test_the_batch_summary_starts_without_the_heavy_libraries(tmp_path):
    """`selfres summary` (and `selfres runlog`) end every run, and the summary again from the
    workflow's onerror: they need json, pandas and the report's HTML, not dask, zarr,
    matplotlib or torch (which took the summary from ~0.7 s to ~3 s)."""
    import subprocess
    import sys

    code = ("import sys; from selfres import cli\n"
            f"assert cli.main(['summary', {str(tmp_path)!r}, '--samples', 'a', '-o', {str(tmp_path / 's.tsv')!r},"
            f" '--html', {str(tmp_path / 's.html')!r}]) == 0\n"
            f"assert cli.main(['runlog', {str(tmp_path)!r}, '--status', 'success', '--samples', 'a']) == 0\n"
            "print(sorted(m for m in ('dask', 'zarr', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert pd.read_csv(tmp_path / "s.tsv", sep="\t").loc[0, "status"] == "pending"


def test_verdict_cautions_that_the_held_out_gain_is_loose_when_only_z_was_upsampled():
    from selfres import report

    sv = {"psnr_model": 31.0, "psnr_interp": 30.0}
    z_only = {"self_validation": sv, "mode": "enhance", "input_shape": [15, 64, 64], "output_shape": [30, 64, 64],
              "restored_content": "model"}
    text = report._verdict(z_only, "ok")
    assert "Only z was upsampled" in text and "loose estimate" in text and "isotropic</code> mode" in text
    # every axis, lateral only, the guard's fallback (tricubic delivered), isotropic mode, no figure: no caution
    for other in (dict(z_only, output_shape=[30, 128, 128]), dict(z_only, output_shape=[15, 128, 128]),
                  dict(z_only, restored_content="interpolation"), dict(z_only, mode="isotropic"),
                  dict(z_only, self_validation={}), dict(z_only, input_shape=None)):
        assert "Only z was upsampled" not in report._verdict(other, "ok")


def test_summary_lists_enhance_samples_upsampled_along_z_alone_under_what_to_look_at():
    sv = {"psnr_model": 31.0, "psnr_interp": 30.0}
    base = {"status": "ok", "mode": "enhance", "self_validation": sv, "input_shape": [15, 64, 64], "flags": []}
    rows = [dict(base, sample="zonly_a", output_shape=[30, 64, 64], report="zonly_a/report.html"),
            dict(base, sample="zonly_b", output_shape=[30, 64, 64]),
            dict(base, sample="every_axis", output_shape=[30, 128, 128]),
            dict(base, sample="zonly_fallback", output_shape=[30, 64, 64], status="fallback_interpolation"),
            dict(base, sample="iso", output_shape=[60, 64, 64], mode="isotropic")]
    page = report.render_summary(rows)
    line = re.search(r"<li>((?:(?!<li>).)*upsampled along z alone.*?)</li>", page).group(1)
    assert ('<a href="zonly_a/report.html">zonly_a</a>, <a href="zonly_b/report.html">zonly_b</a>:' in line
            and "their reports" in line)
    assert "every_axis" not in line and "zonly_fallback" not in line and "iso" not in line.split(":")[0]
    assert "upsampled along z alone" not in report.render_summary(rows[2:])


def test_the_bead_count_is_of_the_beads_the_medians_rest_on():
    """A bead whose fits failed (common along a coarse z) is in the table but not in the
    medians: it was counted ("over 3 beads" for medians of 2)."""
    import pandas as pd

    beads = pd.DataFrame({"fwhm_z_um": [4.0, 4.2, np.nan], "fwhm_y_um": [1.0, 1.05, np.nan],
                          "fwhm_x_um": [1.0, 1.05, np.nan]})
    table = pd.concat([beads.assign(volume="input"), beads.assign(volume="output")])
    summary = report._bead_summary(table)
    assert (summary.attrs["n_beads"], summary.attrs["n_beads_out"]) == (2, 2)
    assert summary.loc["z", "input"] == pytest.approx(4.1)


def test_a_figure_just_below_one_is_not_shown_as_one():
    """An SSIM of 0.9996 read "1" (three decimals, trailing zeros cut) beside a gain of +0.0005."""
    assert wording.fmt(0.99962) == "0.99962" and wording.fmt(0.9991) == "0.999"
    assert wording.fmt(1.0) == "1" and wording.fmt(31.25) == "31.25" and wording.fmt(-0.9999) == "-0.9999"


def test_a_broken_restored_volume_is_not_ok_anywhere():
    """restored_unlike_input / restored_not_finite say 'Do not use this output', yet the sample's
    status stayed ok, its verdict opened with a green 'beats tricubic', the summary counted it
    among the ok ones and its flag box was a plain note; and a fallback's other flags were
    dropped from 'What to look at'."""
    raw, interp, restored = _volumes()
    broken = _metrics(sample="noise", mode="enhance", flags=["restored_unlike_input"], restored_content="model")
    page = report.render_sample_report(
        sample="noise", metrics=broken, raw=raw, interp=interp, restored=restored,
        voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5), training_log=_log())
    verdict = re.search(r'<p class="verdict">(.*?)</p>', page, re.S).group(1)
    assert verdict.startswith('<b class="status-failed">restored.ome.zarr as written is broken: do not use it</b>')
    assert "Warning: the restored volume as written is broken (do not use it) (restored_unlike_input)" in page
    assert "output_broken" in page and ">ok<" not in page
    rows = [{**broken, "report": "noise/report.html"},
            {**_metrics(sample="nan", flags=["restored_not_finite", "model_worse_than_interpolation"]),
             "restored_content": "interpolation"},
            {**_metrics(sample="iso", flags=["model_worse_than_interpolation", "isotropy_not_reached"]),
             "restored_content": "interpolation"},
            _metrics(sample="fine")]
    df = report.summary_table(rows)
    assert df["status"].tolist() == ["output_broken", "output_broken", "fallback_interpolation", "ok"]
    summary = report.render_summary(rows)
    assert "1 ok" in summary and "2 output broken" in summary and "1 fallback" in summary
    assert "restored.ome.zarr is broken — do not use it</b> (flags restored_unlike_input;" in summary
    assert "restored.ome.zarr holds the interpolation; also flags isotropy_not_reached." in summary


def test_the_forcerun_command_a_report_suggests_names_the_configured_results_folder():
    """With ``results: nightly_out`` the box said ``--forcerun results/s/model``, a target no rule
    makes (MissingRuleException); the command now names the sample's folder as the rule does."""
    raw, interp, restored = _volumes()
    prov = {"settings_not_applied": {"train.steps": {"config": 6, "used": 4}}}
    page = report.render_sample_report(
        sample="s", metrics=_metrics(), raw=raw, interp=interp, restored=restored,
        voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5), provenance=prov,
        sample_dir="nightly_out/s")
    assert "snakemake --forcerun nightly_out/s/model" in page and "results/s" not in page


def test_figures_of_a_sample_without_voxel_size_measure_in_voxels_not_micrometres(monkeypatch):
    """Without a voxel size the figures' axes said "µm" over values in output voxels: the filled-in
    sizes were passed on as if known. Each figure now receives the sizes as given (None)."""
    raw, interp, restored = _volumes()
    seen = {}
    real = figures.figure_orthoviews

    def spy(**kw):
        seen.update(vin=kw["voxel_size_in"], vout=kw["voxel_size_out"])
        return real(**kw)

    monkeypatch.setattr(figures, "figure_orthoviews", spy)
    figures.sample_figures(raw=raw, interp=interp, restored=restored, voxel_size_in=None, voxel_size_out=None)
    assert seen == {"vin": None, "vout": None}
    assert figures._voxel_sizes(raw.shape, restored.shape, None, None)[2] != "µm"


def _captured(monkeypatch):
    """The figures a report function draws (their PNG made as usual)."""
    return captured_figures(monkeypatch)


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_a_serial_models_two_trainings_are_drawn_one_after_the_other(monkeypatch):
    """A serial ×4 model's log restarts its steps with stage 2: drawn on one axis each curve
    zig-zagged (2→4, back to 2, →4) and one dotted line stood for both stages' kept steps."""
    drawn = _captured(monkeypatch)
    log = pd.DataFrame({"step": [2, 4, 2, 4], "stage": [1, 1, 2, 2], "loss": [0.5, 0.4, 0.3, 0.2],
                        "val_psnr_model": [42.3, 42.5, 58.8, 58.9], "val_psnr_interp": [42.0, 42.0, 58.0, 58.0],
                        "lr": 1e-3})
    figures.figure_training_curves(log, best_step=[4, 2])
    fig = drawn[-1]
    loss, psnr, gain, lr = fig.axes
    assert list(_line(psnr, "model (stage 1)").get_xdata()) == [2, 4]
    assert list(_line(psnr, "model (stage 2)").get_xdata()) == [6, 8]
    dotted = sorted(line.get_xdata()[0] for line in psnr.get_lines() if line.get_linestyle() == ":"
                    and line.get_label().startswith("_"))
    assert dotted == [4, 6]  # stage 1's step 4, stage 2's step 2 drawn after stage 1
    assert "stage 1 step 4, stage 2 step 2" in fig._suptitle.get_text()
    figures.figure_training_curves(log)  # no kept steps given: each stage's best PSNR, on its own stage
    assert "stage 1 step 4, stage 2 step 4" in drawn[-1]._suptitle.get_text()


def test_the_kept_checkpoints_score_is_drawn_beside_the_psnr(monkeypatch):
    """The kept checkpoint is the best of the smaller of two gains (held-out, coarse-scale), not
    the best PSNR: with only the PSNR drawn the dotted line sat where nothing explained it."""
    drawn = _captured(monkeypatch)
    log = pd.DataFrame({"step": [25, 50, 75], "val_psnr_model": [40.5, 41.0, 40.8], "val_psnr_interp": 40.0,
                        "val_coarse_gain": [0.30, -0.05, 0.20], "loss": [0.3, 0.2, 0.1], "lr": 1e-3})
    figures.figure_training_curves(log, best_step=25)
    gain = drawn[-1].axes[2]
    np.testing.assert_allclose(_line(gain, "held-out gain").get_ydata(), [0.5, 1.0, 0.8])
    np.testing.assert_allclose(_line(gain, "coarse-scale gain").get_ydata(), [0.30, -0.05, 0.20])
    assert "smaller of its gains" in drawn[-1]._suptitle.get_text()
    # a later score higher by less than training's least rise does not replace the kept one: said so
    from selfres.train import MIN_GAIN_DB

    assert figures.KEEP_MIN_GAIN_DB == MIN_GAIN_DB
    assert f"more than {MIN_GAIN_DB:g} dB higher" in drawn[-1]._suptitle.get_text()
    assert not any(line.get_label().startswith("guard margin") for line in gain.get_lines())
    # the guard's margin, which a trained network's held-out gain must exceed (a walkthrough could not
    # see why +0.06 dB fell back)
    figures.figure_training_curves(log, best_step=25, margin_db=0.2)
    np.testing.assert_allclose(_line(drawn[-1].axes[2], "guard margin 0.2 dB").get_ydata(), [0.2, 0.2])
    raw, interp, restored = _volumes()  # ... as a report's figures draw it
    figures.sample_figures(raw=raw, interp=interp, restored=restored, training_log=log, best_step=25, margin_db=0.2)
    curves = next(f for f in reversed(drawn) if f._suptitle is not None and "kept checkpoint" in f._suptitle.get_text())
    assert _line(curves.axes[2], "guard margin 0.2 dB")
    flat = log.assign(val_psnr_model=[32.0391, 32.0392, 32.0393])  # no "+3.2039e1" offset on the axis
    figures.figure_training_curves(flat, best_step=75)
    assert drawn[-1].axes[1].yaxis.get_major_formatter().get_useOffset() is False


def test_a_fallen_back_outputs_curves_say_they_are_the_interpolations(monkeypatch):
    """A figure review: a fall-back's restored curve lay exactly on the interpolation's, which
    the legend listed but nobody could see."""
    drawn = _captured(monkeypatch)
    raw, interp, _ = _volumes(factor=(2, 2, 2))
    spectra = {"input": ([0.1, 0.2], [1.0, 0.5]), "interpolation": ([0.1, 0.2, 0.4], [1.0, 0.5, 0.1]),
               "output": ([0.1, 0.2, 0.4], [1.0, 0.5, 0.1])}
    for fell in (True, False):
        drawn.clear()
        figures.sample_figures(raw=raw, interp=interp, restored=interp, spectra=spectra,
                               restored_is_interpolation=fell)
        labels = {line.get_label() for fig in drawn for ax in fig.axes for line in ax.get_lines()}
        titles = {ax.get_title() for fig in drawn for ax in fig.axes}
        assert ("restored (= interpolation)" in labels and "output (= interpolation)" in labels) is fell, labels
        assert any(t.startswith("restored (= interpolation) (4× zoom)") for t in titles) is fell, titles
        assert ("restored" in labels) is not fell
    drawn.clear()  # a report drawing its own figures reads it from metrics.json
    report.render_sample_report(sample="s", metrics=_metrics(restored_content="interpolation"), raw=raw, interp=interp,
                                restored=interp, voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.25, 0.25))
    assert "restored (= interpolation)" in {line.get_label() for fig in drawn for ax in fig.axes for line in ax.get_lines()}


def test_non_finite_voxels_are_red_not_white_like_the_brightest_signal(monkeypatch):
    drawn = _captured(monkeypatch)
    raw, interp, restored = _volumes(factor=(2, 1, 1))
    restored[:, 2:6, 2:6] = np.nan  # a failed tile
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, voxel_size_in=(2, 1, 1),
                             voxel_size_out=(1, 1, 1))
    images = [im for ax in drawn[-1].axes for im in ax.get_images()]
    assert images and all(tuple(im.get_cmap().get_bad()) == (1.0, 0.0, 0.0, 1.0) for im in images)


def test_a_report_without_voxel_sizes_labels_its_figures_in_voxels(monkeypatch):
    """render_sample_report drew its own figures with the filled-in sizes: axes read 'x (µm)'
    while the caption said output voxels."""
    drawn = _captured(monkeypatch)
    raw, interp, restored = _volumes(factor=(2, 1, 1))
    report.render_sample_report(sample="s", metrics={"mode": "enhance"}, raw=raw, interp=interp,
                                restored=restored, voxel_size_in=None, voxel_size_out=None)
    labels = [ax.get_xlabel() for fig in drawn for ax in fig.axes if ax.get_xlabel()]
    assert labels and not any("µm" in text for text in labels), labels


def test_a_summary_that_cannot_be_written_leaves_no_old_ok_and_no_temporary(tmp_path, monkeypatch):
    """A full disk on the night a sample's outputs were removed for a rerun: the summary
    could not be written and last night's still said "ok", and the report's out-of-date
    banner left a partial copy of the report beside it for good."""
    import errno
    import json

    from selfres import atomic, summary

    d = tmp_path / "a"
    for sub in ("qc", "logs", "model", "normalized.ome.zarr"):  # restored.ome.zarr: removed for the rerun
        (d / sub).mkdir(parents=True)
    (d / "train_fov.json").write_text("{}")
    (d / "qc" / "metrics.json").write_text(json.dumps(_metrics(sample="a")))
    (d / "report.html").write_text("<html><body>old</body></html>")
    (d / "logs" / "infer.log").write_text("ERROR: no space left on device\n")
    (tmp_path / "summary.tsv").write_text("sample\tstatus\na\tok\n")
    (tmp_path / "summary.html").write_text("<html>a ok</html>")
    real = atomic.Path.write_text

    def full(self, *args, **kwargs):
        if ".tmp-" in self.name and not self.name.startswith(".summary.html"):
            real(self, "partial", encoding="utf-8")  # some bytes land before the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(atomic.Path, "write_text", full)
    with pytest.raises(OSError, match="No space"):
        summary.stage_summary(tmp_path, ["a"], tmp_path / "summary.tsv", tmp_path / "summary.html")
    assert not (tmp_path / "summary.tsv").exists()
    page = (tmp_path / "summary.html").read_text()
    assert "could not be written" in page and "No space left" in page and "a ok" not in page
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == [], "no temporary left beside the report"
    assert (d / "report.html").read_text() == "<html><body>old</body></html>"


def test_voxel_sizes_are_printed_to_four_significant_digits():
    """The table printed a 0.02249 µm pixel as 0.022 (2 % off), the output's 0.01124 as 0.011."""
    raw, interp, restored = _volumes()
    page = report.render_sample_report(sample="s", metrics=_metrics(voxel_size_in=[0.5, 0.02249, 0.02249],
                                                                     voxel_size_out=[0.5, 0.01124, 0.01124]),
                                       raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(0.5, 0.02249, 0.02249), voxel_size_out=(0.5, 0.01124, 0.01124))
    assert "0.5 × 0.02249 × 0.02249" in page and "0.5 × 0.01124 × 0.01124" in page
    assert "the file records" not in page
    # a sheet voxel size unlike the file's: both shown (the flag voxel_size_unlike_file points here)
    page = report.render_sample_report(sample="s", metrics=_metrics(voxel_size_in=[500.0, 22.49, 22.49],
                                                                     voxel_size_file=[0.5, 0.02249, 0.02249]),
                                       raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(500.0, 22.49, 22.49), voxel_size_out=(500.0, 11.24, 11.24))
    assert "voxel size the file records (µm)</th><td>0.5 × 0.02249 × 0.02249 (the sheet&#x27;s is used)" in page


def test_the_colour_bar_and_the_zoom_panels_say_what_they_show(monkeypatch):
    """A walkthrough found the orthoviews' colour bar without a label and the detail's zoomed
    crops without a y axis label."""
    drawn = _captured(monkeypatch)
    raw, interp, restored = _volumes()
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, voxel_size_in=(1.0, 0.5, 0.5),
                             voxel_size_out=(0.5, 0.5, 0.5))
    assert "intensity" in drawn[-1].axes[-1].get_ylabel()  # the colour bar's own axes, added last
    raw, interp, restored = _volumes(factor=(1, 2, 2))  # a lateral factor: the lateral detail
    figures.figure_detail(raw=raw, interp=interp, restored=restored, voxel_size_in=(1.0, 0.5, 0.5),
                         voxel_size_out=(1.0, 0.25, 0.25))
    assert drawn[-1].axes[0].get_ylabel() == "y (µm)" and "zoom" in drawn[-1].axes[0].get_title()


def test_the_detail_of_a_large_field_is_a_fixed_size_crop_and_its_title_says_the_zoom(monkeypatch):
    """A large-FOV walkthrough (1020×1332 output): a quarter of the field, 255×333 voxels in one
    panel, showed no cell; the crop is at most DETAIL_MAX_SIDE_PX across and the title gives the zoom."""
    drawn = _captured(monkeypatch)
    rng = np.random.default_rng(0)
    raw = rng.random((4, 300, 400), dtype=np.float32)
    up = np.repeat(np.repeat(raw, 2, 1), 2, 2)  # a 600×800 output
    figures.figure_detail(raw=raw, interp=up, restored=up, voxel_size_in=(1.0, 0.5, 0.5),
                          voxel_size_out=(1.0, 0.25, 0.25))
    panel = drawn[-1].axes[2]  # the restored crop
    (x0, x1), (y1, y0) = panel.get_xlim(), panel.get_ylim()
    assert round((x1 - x0) / 0.25) == figures.DETAIL_MAX_SIDE_PX == round((y1 - y0) / 0.25)
    assert "(6× zoom)" in panel.get_title()  # 800 / 128, not the 4 asked
    wide = rng.random((6, 20, 800), dtype=np.float32)  # only z resampled: the XZ detail is capped too
    deep = np.repeat(wide, 2, 0)
    figures.figure_detail(raw=wide, interp=deep, restored=deep, voxel_size_in=(1.0, 0.5, 0.5),
                          voxel_size_out=(0.5, 0.5, 0.5))
    panel = drawn[-1].axes[2]
    assert round((panel.get_xlim()[1] - panel.get_xlim()[0]) / 0.5) == figures.DETAIL_MAX_SIDE_PX
    small = rng.random((4, 40, 40), dtype=np.float32)
    figures.figure_detail(raw=small, interp=np.repeat(np.repeat(small, 2, 1), 2, 2),
                          restored=np.repeat(np.repeat(small, 2, 1), 2, 2))
    panel = drawn[-1].axes[2]
    assert round(panel.get_xlim()[1] - panel.get_xlim()[0]) == 20 and "(4× zoom)" in panel.get_title()


def test_a_model_made_again_after_its_samples_outputs_makes_the_sample_pending(tmp_path):
    """A run stopped (SIGTERM to snakemake) after a training finished and before its infer, qc
    and report ran: the summary said ``ok`` of outputs the earlier model made. metrics.json
    records the model.json it scored; a model.json that differs since is told."""
    import hashlib
    import json

    from selfres import summary

    d = tmp_path / "s"
    for sub in ("qc", "logs", "model", "normalized.ome.zarr", "restored.ome.zarr"):
        (d / sub).mkdir(parents=True)
    (d / "train_fov.json").write_text("{}")
    (d / "model" / "model.json").write_text('{"metadata": {"best_step": 100}}')
    scored = hashlib.sha256((d / "model" / "model.json").read_bytes()).hexdigest()
    (d / "qc" / "metrics.json").write_text(json.dumps(
        _metrics(sample="s") | {"computed_from": {"model_json": scored, "restored": "ab" * 32}}))
    (d / "report.html").write_text("<html></html>")

    def status():
        summary.stage_summary(tmp_path, ["s"], tmp_path / "summary.tsv", tmp_path / "summary.html")
        return pd.read_csv(tmp_path / "summary.tsv", sep="\t").set_index("sample").loc["s"]

    assert status()["status"] == "ok"
    (d / "model" / "model.json").write_text('{"metadata": {"best_step": 250}}')  # trained again, nothing after
    row = status()
    assert row["status"] == "pending" and row["error"].startswith("its model was made again after restored.ome.zarr")
    assert "This report is out of date" in (d / "report.html").read_text()
    # a metrics file written before the record was kept: as before
    (d / "qc" / "metrics.json").write_text(json.dumps(_metrics(sample="s")))
    (d / "report.html").write_text("<html></html>")
    assert status()["status"] == "ok"


def test_a_cluster_whose_sacct_fails_is_told_before_a_slurm_run_waits_silently(tmp_path, monkeypatch):
    """Without accounting, the Slurm executor's default status command (sacct) never sees a job
    finish: a run waited 13 minutes without a word, and would wait all night. The check asks
    sacct as the executor does; squeue as the status command needs no check."""
    from selfres.runlog import slurm_status_problem

    fake = tmp_path / "bin"
    fake.mkdir()
    sacct = fake / "sacct"
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    sacct.write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    sacct.chmod(0o755)
    assert slurm_status_problem(None) == "sacct fails here (Slurm accounting storage is disabled)"
    assert slurm_status_problem("sacct") == "sacct fails here (Slurm accounting storage is disabled)"
    assert slurm_status_problem("squeue") is None  # the profile chose squeue: nothing to ask
    sacct.write_text("#!/bin/sh\necho '4711|COMPLETED'\nexit 0\n")
    assert slurm_status_problem(None) is None
    sacct.write_text("#!/bin/sh\nsleep 5\n")
    assert slurm_status_problem(None, timeout=0.5) is None  # no answer in time: cannot tell
    sacct.unlink()
    monkeypatch.setenv("PATH", str(fake))
    assert slurm_status_problem(None) == "sacct is not installed on this machine"


def test_the_summary_names_the_sample_whose_model_restored_an_adopting_one():
    """A ``model_from`` sample's row said nothing of it; its ``train (s)`` is the time taken to
    judge the other sample's model."""
    rows = [{**_metrics(sample="lapse_t1", adopted_from="lapse_t0"), "status": "ok"},
            {**_metrics(sample="lapse_t0"), "status": "ok"}]
    df = report.summary_table(rows).set_index("sample")
    assert df.loc["lapse_t1", "model_from"] == "lapse_t0" and pd.isna(df.loc["lapse_t0", "model_from"])
    page = report.render_summary(rows)
    assert "isotropic · model of lapse_t0</td>" in page and page.count("model of") == 1


def test_the_axial_views_of_a_stack_thinner_in_z_than_across_are_stacked_beside_xy_and_drawn_larger(monkeypatch):
    """A 32 × 128 µm axial slice was drawn 210 × 55 px beside a square XY panel, in a cell of its
    own as tall as XY and mostly blank (a walkthrough; the axial views are isotropic mode's point).
    Where both axial panels are at most 0.4 as tall as wide they are stacked beside XY, each with
    its plane named, and drawn larger; a stack as deep as wide keeps its three columns."""
    raw, interp, restored = _volumes(shape_in=(8, 64, 64), factor=(4, 1, 1))

    def panels(**kw):
        drawn = _captured(monkeypatch)
        figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, **kw)
        fig = drawn[-1]
        size = fig.get_size_inches() * fig.dpi
        found = {}
        for ax in fig.axes:
            if ax.get_title():
                pos = ax.get_position()
                found.setdefault(ax.get_title(), []).append((pos.x0 * size[0], pos.width * size[0],
                                                             pos.y0 * size[1], pos.height * size[1]))
        return found

    thin = panels(voxel_size_in=(1.0, .5, .5), voxel_size_out=(.25, .5, .5))  # 8 × 32 × 32 µm
    assert len(thin["XZ"]) == len(thin["YZ"]) == 3  # stacked: each axial panel of each row named
    (xy_x0, xy_w, xy_y0, xy_h), (xz_x0, _, xz_y0, _) = thin["XY"][0], thin["XZ"][0]
    assert xz_x0 > xy_x0 + xy_w and xy_y0 <= xz_y0 <= xy_y0 + xy_h  # beside XY, within its height
    monkeypatch.setattr(figures, "STACK_AXIAL_BELOW", 0.0)  # the three columns, as before
    columns = panels(voxel_size_in=(1.0, .5, .5), voxel_size_out=(.25, .5, .5))
    assert len(columns["XZ"]) == 1 and thin["XZ"][0][1] >= 1.4 * columns["XZ"][0][1], (thin["XZ"], columns["XZ"])
    monkeypatch.undo()
    deep = panels(voxel_size_in=(8.0, .5, .5), voxel_size_out=(2.0, .5, .5))  # 64 × 32 × 32 µm: three columns
    assert len(deep["XZ"]) == 1 and len(deep["YZ"]) == 1
    # beside a wide, short XY the row is too low for two labelled panels (a review's 102 × 26 µm region)
    raw, interp, restored = _volumes(shape_in=(4, 48, 256), factor=(4, 1, 1))  # 4 × 24 × 128 µm
    short = panels(voxel_size_in=(1.0, .5, .5), voxel_size_out=(.25, .5, .5))
    assert len(short["XZ"]) == 1 and len(short["YZ"]) == 1
    # stacked, XZ and YZ keep one scale where x and y differ (µm per pixel alike)
    raw, interp, restored = _volumes(shape_in=(8, 48, 64), factor=(4, 1, 1))
    both = panels(voxel_size_in=(1.0, .5, .5), voxel_size_out=(.25, .5, .5))
    (_, xz_w, _, _), (_, yz_w, _, _) = both["XZ"][0], both["YZ"][0]
    assert len(both["XZ"]) == 3 and yz_w / xz_w == pytest.approx(48 / 64, rel=0.03), (xz_w, yz_w)


def test_a_reports_training_curves_draw_the_guards_margin_its_metrics_give(monkeypatch):
    """The report's own figures left out the guard's margin (``train.guard_margin_db`` in
    metrics.json): a user saw a held-out gain of +0.1 dB above 0 and no line saying why it fell back."""
    drawn = _captured(monkeypatch)
    raw, interp, restored = _volumes()
    report.render_sample_report(sample="s", metrics=_metrics(guard_margin_db=0.2), raw=raw, interp=interp,
                                restored=restored, voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5),
                                training_log=_log())
    curves = [f for f in drawn if f._suptitle is not None and "kept checkpoint" in f._suptitle.get_text()]
    assert curves and _line(curves[-1].axes[2], "guard margin 0.2 dB")
    drawn.clear()  # no margin (0 dB): no line at 0 to be read as one
    report.render_sample_report(sample="s", metrics=_metrics(guard_margin_db=0.0), raw=raw, interp=interp,
                                restored=restored, voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5),
                                training_log=_log())
    assert not any(line.get_label().startswith("guard margin") for f in drawn for ax in f.axes
                   for line in ax.get_lines())


def test_a_reports_verdict_says_its_held_out_region_holds_little_structure_from_the_training_fov_file():
    """The report page dropped the training-FOV file's scores on its way to the verdict: a sample
    whose held-out slab held 18 % of the volume's structure read as a plain loss to tricubic."""
    raw, interp, restored = _volumes()
    fov = {"train": [[0, 4], [0, 24], [0, 24]], "holdout": [[4, 6], [0, 24], [0, 24]],
           "scores": {"holdout_structure": 0.00079, "volume_structure": 0.0043}}
    page = report.render_sample_report(sample="s", metrics=_metrics(), raw=raw, interp=interp, restored=restored,
                                       voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5), train_fov=fov)
    assert "holds little structure (18% of the volume" in page


def test_verdict_never_calls_an_interval_below_zero_consistent():
    """A flagged network whose held-out gain lies between -0.30 and -0.10 dB lost on every
    resample: "consistent, but a trained network must clear the margin" read as a near pass."""
    m = {"self_validation": {"psnr_model": 29.8, "psnr_interp": 30.0}, "guard_margin_db": 0.2, "mode": "enhance",
         "flags": ["model_worse_than_interpolation"], "holdout_gain_db_interval": [-0.3, -0.1]}
    text = report._verdict(m, "fallback_interpolation")
    assert "between -0.30 and -0.10 dB (95 %)." in text
    assert "consistent" not in text and "must clear" not in text


def test_verdict_says_little_structure_below_half_the_volumes_and_only_beside_a_score():
    """The held-out region is called sparse below half the volume's structure (fov's own
    threshold, as the crop stage judged it), at 35 % too; a failed sample without a held-out
    figure gets no sentence about what that figure scored."""
    m = {"self_validation": {"psnr_model": 30.13, "psnr_interp": 30.0}, "guard_margin_db": 0.2, "mode": "enhance",
         "flags": ["model_worse_than_interpolation"], "holdout_gain_db_interval": [0.07, 0.18]}
    third = {"scores": {"holdout_structure": 0.0015, "volume_structure": 0.0043}}  # 35 %
    assert "holds little structure (35% of the volume" in report._verdict(m, "fallback_interpolation", third)
    assert "little structure" not in report._verdict({"flags": []}, "failed", third)


@pytest.mark.parametrize("z, n_out, n_in, expected", [(5, 8, 4, (5, 2)), (4, 8, 4, (4, 2)), (0, 10, 4, (1, 0))])
def test_the_output_plane_shown_is_the_one_centred_nearest_the_acquired_plane_then_nearest_the_peak(
        z, n_out, n_in, expected):
    """×2: the acquired plane 2's centre lies between output planes 4 and 5, and the peak's side
    wins; ×2.5: plane 0's centre is output 0.75, so output plane 1 is shown, not the peak's 0."""
    assert figures._plane_on_acquired(z, n_out, n_in) == expected


def test_the_detail_of_a_bead_peaking_between_acquired_planes_shows_the_output_plane_beside_the_acquired_one(
        monkeypatch):
    """A walkthrough's ×4 beads: the raw crop and profile came from the acquired plane nearest the
    peak, the output's from the peak's own plane, up to 1.5 output planes away (0.375 µm here):
    the profiles compared two heights of the bead. The output plane drawn is within half an
    output plane of the acquired one."""
    drawn = _captured(monkeypatch)
    zz, yy, xx = np.mgrid[0:24, 0:48, 0:48]  # ×(4, 2, 2) of a (6, 24, 24) input
    restored = (100 + 1000 * np.exp(-((zz - 11) ** 2 / (2 * 1.5 ** 2)
                                      + ((yy - 24) ** 2 + (xx - 24) ** 2) / (2 * 2.0 ** 2)))).astype(np.float32)
    raw = restored[1::4, ::2, ::2].copy()
    figures.figure_detail(raw=raw, interp=restored.copy(), restored=restored, voxel_size_in=(1.0, 0.5, 0.5),
                          voxel_size_out=(0.25, 0.25, 0.25))
    profile = drawn[-1].axes[3]
    z_out, z_raw = map(float, re.search(r"at z=([0-9.]+) µm \(raw ([0-9.]+) µm\)", profile.get_title()).groups())
    assert abs(z_out - z_raw) <= 0.25 / 2 + 1e-9, profile.get_title()  # peak plane 11 is at 2.375, raw plane 2 at 2
    k = round((z_out + 0.5) / 0.25 - 0.5)  # input plane i of 1 µm sits at z = i µm; output plane k at (k + 0.5)·0.25 − 0.5
    assert _line(profile, "restored").get_ydata().max() == pytest.approx(restored[k, 24, 24])


def test_summary_signs_only_a_psnr_gain_above_zero():
    """A gain reads as one (+2.50), but isotropy is a ratio: "+0.5" in its columns read as an
    improvement, and a gain of exactly 0 (or one that rounds to it) is no gain ("+0", "-0.00")."""
    row = {**_metrics(sample="a", self_validation={"psnr_model": 30.0, "psnr_interp": 30.0}), "status": "ok"}
    page = report.render_summary([row])
    assert '<td class="num" data-v="0.0">0.00</td>' in page
    tiny = {**_metrics(sample="b", self_validation={"psnr_model": 30.0, "psnr_interp": 30.004}), "status": "ok"}
    assert 'data-v="-0.004">0.00</td>' in report.render_summary([tiny])  # not -0.00
    assert '<td class="num" data-v="0.5">0.5</td>' in page and '<td class="num" data-v="0.83">0.83</td>' in page


def _titled_panels(monkeypatch, raw, interp, restored, **kw):
    drawn = _captured(monkeypatch)
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, **kw)
    found = {}
    for ax in drawn[-1].axes:
        if ax.get_title():
            found[ax.get_title()] = found.get(ax.get_title(), 0) + 1
    return found


def test_only_both_axial_views_thin_stack_them_beside_xy(monkeypatch):
    """XZ thin (20 × 64 µm, 0.31) but YZ not (20 × 40 µm, 0.5): stacked, YZ would be squeezed into
    half a row; the three columns stay (each axial panel titled once, above the first row)."""
    raw, interp, restored = _volumes(shape_in=(20, 80, 128), factor=(4, 1, 1))  # 20 × 40 × 64 µm
    found = _titled_panels(monkeypatch, raw, interp, restored, voxel_size_in=(1.0, .5, .5),
                           voxel_size_out=(.25, .5, .5))
    assert found.get("XZ") == 1 and found.get("YZ") == 1, found


def test_stacked_axial_panels_label_their_axes_in_every_row_and_keep_xys_scale_along_x(monkeypatch):
    """Stacked beside XY, each row's XZ and YZ panel names its horizontal axis (not only the last
    row's, as in columns: the panel below is another plane, not the same axis), and the XZ panel,
    whose x is XY's x, is drawn at XY's µm per inch (a 24 × 32 µm XY beside 8 × 32 µm XZ)."""
    drawn = _captured(monkeypatch)
    raw, interp, restored = _volumes(shape_in=(8, 48, 64), factor=(4, 1, 1))  # 8 × 24 × 32 µm
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, voxel_size_in=(1.0, .5, .5),
                              voxel_size_out=(.25, .5, .5))
    fig = drawn[-1]
    xz = [ax for ax in fig.axes if ax.get_title() == "XZ"]
    yz = [ax for ax in fig.axes if ax.get_title() == "YZ"]
    xy = [ax for ax in fig.axes if ax.get_title() == "XY"]
    assert len(xz) == len(yz) == 3
    assert all(ax.get_xlabel().startswith("x (") for ax in xz), [ax.get_xlabel() for ax in xz]
    assert all(ax.get_xlabel().startswith("y (") for ax in yz), [ax.get_xlabel() for ax in yz]
    fig.canvas.draw()  # aspect="equal" panels take their drawn size

    def inches_per_um_along_x(ax):
        x0, x1 = ax.get_xlim()
        return ax.get_window_extent().width / abs(x1 - x0)

    assert inches_per_um_along_x(xz[0]) == pytest.approx(inches_per_um_along_x(xy[0]), rel=0.05)


def test_a_fallen_back_outputs_axial_detail_says_it_is_the_interpolation(monkeypatch):
    """Isotropic mode's detail (an XZ crop and a z profile, only z resampled) names a fall-back's
    output 'restored (= interpolation)' in its panel title and its profile's legend, as the XY
    detail does."""
    drawn = _captured(monkeypatch)
    rng = np.random.default_rng(0)
    raw = rng.random((8, 32, 32)).astype(np.float32)
    up = np.repeat(raw, 2, axis=0) + 0.01
    figures.figure_detail(raw=raw, interp=up, restored=up, voxel_size_in=(1.0, 0.5, 0.5),
                          voxel_size_out=(0.5, 0.5, 0.5), restored_name="restored (= interpolation)")
    fig = drawn[-1]
    titles = [ax.get_title() for ax in fig.axes]
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert any(t.startswith("restored (= interpolation) (XZ at") for t in titles), titles
    assert "restored (= interpolation)" in labels and "restored" not in labels, labels


def test_the_kept_checkpoints_title_names_no_coarse_scale_check_where_none_was_logged(monkeypatch):
    """Isotropic mode logs no coarse-scale gain: the kept checkpoint's score is its held-out gain
    alone, and the title says so instead of 'the smaller of its gains'."""
    import pandas as pd

    drawn = _captured(monkeypatch)
    log = pd.DataFrame({"step": [25, 50, 75], "val_psnr_model": [40.5, 41.0, 40.8], "val_psnr_interp": 40.0,
                        "loss": [0.3, 0.2, 0.1], "lr": 1e-3})
    figures.figure_training_curves(log, best_step=50)
    title = drawn[-1]._suptitle.get_text()
    assert "its held-out gain over interpolation" in title and "coarse-scale" not in title, title


@pytest.mark.parametrize("flag", ["restored_not_finite", "restored_unlike_input", "restored_level_shifted"])
def test_a_broken_outputs_advice_names_the_rerun_that_remakes_it(flag):
    """'Rerun the infer step', and a plain rerun did nothing: Snakemake takes the written store as
    done (a helper). The advice gives the forcerun."""
    from selfres.flags import explain_flag

    assert "snakemake --forcerun results/SAMPLE/restored.ome.zarr" in explain_flag(flag)[1]
