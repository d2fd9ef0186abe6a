"""The reports load in a real headless browser (Debian ``chromium``) with every image.

A report page is rendered from seeded tiny volumes, a small checking script is added to
a copy of it, and ``chromium --headless --dump-dom`` prints the DOM after the page has
loaded: the script writes how many ``<img>`` elements finished loading with a non-zero
natural size. The summary page's header-click sorting is exercised the same way.
Skipped, with the reason, where no chromium is installed
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from selfres import report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless browser: install Debian's chromium (apt-get install -y chromium)")

IMG_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var good = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var d = document.createElement('div'); d.id = 'imgcheck';
  d.textContent = 'loaded ' + good.length + ' of ' + imgs.length;
  document.body.appendChild(d);
});
</script>"""

SORT_CHECK = """<script>
window.addEventListener('load', function () {
  var ths = document.querySelectorAll('table.sortable th');
  var col = -1;
  ths.forEach(function (th, i) { if (th.textContent.indexOf('held-out PSNR gain') === 0) { col = i; } });
  ths[col].click();
  var first = [], rows = document.querySelector('table.sortable').tBodies[0].rows;
  for (var i = 0; i < rows.length; i++) { first.push(rows[i].cells[0].textContent); }
  var d = document.createElement('div'); d.id = 'sortcheck';
  d.textContent = 'order ' + first.join(',');
  document.body.appendChild(d);
});
</script>"""


def _chromium(tmp_path, url, *extra):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _page():
    rng = np.random.default_rng(3)
    raw = rng.normal(100, 3, (8, 32, 32)).astype(np.float32)
    for z, y, x in [(4, 10, 12), (3, 20, 22), (5, 16, 6)]:
        raw[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] += 800
    interp = np.repeat(raw, 2, axis=0)
    restored = interp * 1.05
    beads = pd.DataFrame({"volume": ["input"] * 3 + ["output"] * 3,
                          "z": [4, 3, 5, 8.5, 6.5, 10.5], "y": [10, 20, 16] * 2,
                          "x": [12, 22, 6] * 2, "fwhm_z": [2.5, 2.4, 2.6, 4.0, 4.1, 4.2],
                          "fwhm_y": 2.0, "fwhm_x": 2.0})
    log = pd.DataFrame({"step": [0, 5, 10], "loss": [0.3, 0.1, 0.05],
                        "val_psnr_model": [30, 31, 32], "val_psnr_interp": 30.5, "lr": 1e-3})
    return report.render_sample_report(
        sample="browser", metrics={"mode": "enhance", "flags": ["early_stopped"],
                                   "self_validation": {"psnr_model": 32, "psnr_interp": 30.5}},
        raw=raw, interp=interp, restored=restored, voxel_size_in=(1.0, 0.5, 0.5),
        voxel_size_out=(0.5, 0.5, 0.5), training_log=log, bead_table=beads,
        spectra={"input": ([0.1, 0.3, 0.5], [1, 0.1, 0.01]),
                 "output": ([0.1, 0.5, 1.0], [1, 0.2, 0.02])})


def test_sample_report_loads_with_all_images(tmp_path):
    page = _page()
    n_img = page.count("<img ")
    assert n_img >= 6  # orthoviews, projections, detail, training, spectra, beads
    checked = tmp_path / "report.html"
    checked.write_text(page.replace("</body>", IMG_CHECK + "</body>"), encoding="utf-8")
    proc = _chromium(tmp_path, checked.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<div id="imgcheck">loaded (\d+) of (\d+)</div>', proc.stdout)
    assert found, f"check script did not run; stderr: {proc.stderr[-2000:]}"
    assert int(found.group(1)) == int(found.group(2)) == n_img


def test_sample_report_screenshot_is_not_blank(tmp_path):
    (tmp_path / "report.html").write_text(_page(), encoding="utf-8")
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, (tmp_path / "report.html").as_uri(), f"--screenshot={shot}",
                     "--window-size=1200,2000")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (2000, 1200)
    # text, tables and figures: plenty of dark pixels, but far from all dark
    dark = float((img < 128).mean())
    assert 0.01 < dark < 0.6, dark


def test_summary_sorts_in_browser(tmp_path):
    rows = [{"sample": "mid", "self_validation": {"psnr_model": 31, "psnr_interp": 30}},
            {"sample": "low", "self_validation": {"psnr_model": 29, "psnr_interp": 30},
             "status": "fallback_interpolation"},
            {"sample": "high", "self_validation": {"psnr_model": 33, "psnr_interp": 30}},
            {"sample": "broken", "error": "InputError: x.tif: unreadable", "report": None}]
    page = report.render_summary(rows)
    checked = tmp_path / "summary.html"
    checked.write_text(page.replace("</body>", SORT_CHECK + "</body>"), encoding="utf-8")
    proc = _chromium(tmp_path, checked.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<div id="sortcheck">order ([^<]*)</div>', proc.stdout)
    assert found, f"check script did not run; stderr: {proc.stderr[-2000:]}"
    # ascending by PSNR gain; the failed sample (no gain) sorts after the numbers
    assert found.group(1).split(",") == ["low", "mid", "high", "broken"]
