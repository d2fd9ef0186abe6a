"""Gaps a mutation review of :mod:`selfres.wording` and :mod:`selfres.demo` found.

``wording`` writes the figures and settings users read in report.html, the summary and the
methods text: a flag shown as ``1``, a missing value as an empty cell, or an unescaped quote
in a sample name misleads or breaks the page. ``demo`` makes the built-in data the README
walks through: its argument checks must refuse nonsense with a ValueError that says so."""

from __future__ import annotations

import numpy as np
import pytest

from selfres import demo, io, wording


# --------------------------------------------------------------------------- wording
def test_fmt_keeps_flags_and_missing_values_recognisable():
    """A boolean setting (ensemble: True) is shown as True, not as the integer 1; a missing
    figure is an en dash, not an empty cell that reads like a rendering fault."""
    assert wording.fmt(True) == "True" and wording.fmt(False) == "False"
    assert wording.fmt(None) == "–"
    assert wording.fmt(np.int64(7)) == "7"


def test_fmt_switches_to_exponent_notation_from_1e5():
    """Large figures (voxel counts) switch to 3 significant digits at 1e5, below it they are
    written out."""
    assert wording.fmt(1e5) == "1e+05" and wording.fmt(99999.0) == "99999"
    assert wording.fmt(2e-4) == "0.0002" and wording.fmt(0.0) == "0"


def test_num_treats_infinite_values_as_missing():
    """A metric that came out infinite (PSNR of identical images) or NaN is no number to show
    or compare: None, as a missing one."""
    assert wording.num(float("inf")) is None and wording.num("nan") is None and wording.num("x") is None
    assert wording.num("2.5") == 2.5


def test_esc_escapes_quotes_for_html_attributes():
    """Sample names and paths go into HTML attributes (title=…): a quote in one must not end
    the attribute and break the page."""
    assert wording.esc('a"b\'<c>&') == "a&quot;b&#x27;&lt;c&gt;&amp;"


def test_inference_extras_are_named_with_their_step_count():
    """The report says which extras the guard scored: the ensemble only when on, and the
    back-projection's steps in the right number."""
    assert wording.extras_text({}) == ""
    assert wording.extras_text({"ensemble": False}) == ""
    assert wording.extras_text({"ensemble": True}) == " with self-ensemble"
    assert wording.extras_text({"back_projection_iterations": 1}) == " with back-projection (1 step)"
    assert wording.extras_text({"ensemble": True, "back_projection_iterations": 2}) == (
        " with self-ensemble and back-projection (2 steps)")
    assert wording.extras_text({"back_projection_iterations": 2}, detail=False) == " with back-projection"


def test_durations_change_unit_at_a_whole_minute_and_hour():
    """A frame interval of exactly 60 s reads '1 min', of 3600 s '1 h'."""
    assert wording.duration_text(0.25) == "0.25 s" and wording.duration_text(59) == "59 s"
    assert wording.duration_text(60) == "1 min" and wording.duration_text(3600) == "1 h"
    assert wording.duration_text(5400) == "1.5 h"


def test_shape_text_and_lateral_pixels_text():
    """Shapes in the summary's input_shape / output_shape columns are '8x64x64' (a plain ASCII
    x: summary.tsv is read by scripts); a length in lateral pixels gets its µm only when that is
    a positive length."""
    assert wording.shape_text((8, 64, 64)) == "8x64x64" and wording.shape_text(None) is None
    assert wording.lateral_pixels_text(4.5, (1.0, 0.5, 0.5)) == "4.5 lateral pixels (2.25 µm)"
    assert wording.lateral_pixels_text(0, (1.0, 0.5, 0.5)) == "0 lateral pixels"
    assert wording.lateral_pixels_text(4.5, None, "estimated") == "4.5 lateral pixels (estimated)"


# --------------------------------------------------------------------------- demo
def test_a_zero_psf_width_is_refused_with_its_name():
    """σ = 0 is no PSF (a division by zero in the kernel): refused as sigma_px, not NaNs."""
    with pytest.raises(ValueError, match="sigma_px must be 3 positive numbers"):
        demo.make_beads(shape=(4, 8, 8), n_beads=1, sigma_px=(0.0, 1.0, 1.0))


def test_every_voxel_may_hold_a_bead():
    """n_beads up to the number of voxels is allowed (distinct voxels); one more is refused."""
    pos = demo.bead_positions(shape=(1, 2, 2), n_beads=4, seed=0)
    assert sorted(map(tuple, pos.tolist())) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    with pytest.raises(ValueError, match="n_beads must be an integer in 0..4"):
        demo.bead_positions(shape=(1, 2, 2), n_beads=5)


def test_a_bead_at_the_far_border_keeps_its_clipped_psf():
    """A bead on the last voxel of an axis is stamped up to that last voxel: the truth must not
    lose the border plane (an off-by-one in the clipping dropped it)."""
    out = np.zeros((5, 5, 5))
    demo._stamp(out, np.array([[4, 4, 4]]), np.ones((3, 3, 3)), np.ones(1))
    assert out.sum() == 8 and out[4, 4, 4] == 1 and out[3:, 3:, 3:].min() == 1


def test_one_demo_sample_may_be_named_as_a_string(tmp_path, monkeypatch):
    """``write_demo(out, samples="beads")`` writes the beads, not a refusal of 'b', 'e', …"""
    monkeypatch.setitem(demo.DEMO_SAMPLES, "beads", {
        "shape": (8, 32, 32), "voxel_size": (0.5, 0.25, 0.25), "factor": (4, 4, 4), "n_beads": 5})
    out = demo.write_demo(tmp_path, samples="beads")
    assert list(out) == ["beads"] and io.read_volume(out["beads"]["acquisition"]).shape == (2, 8, 8)


def test_downsampling_refuses_a_boolean_factor():
    """``True`` is an int to Python but no factor a user means: refused."""
    with pytest.raises(ValueError, match="integer >= 1"):
        demo.downsample_acquisition(np.zeros((4, 4)), True)


def test_fmt_never_shows_a_nonzero_value_as_zero_nor_zero_with_a_sign():
    """A 0.02 s inference in the batch summary (one digit) read "0" while 0.0009 kept its digits;
    -0.0 read "-0"."""
    from selfres.wording import fmt

    assert fmt(0.02, digits=1) == "0.02"
    assert fmt(0.004, digits=2) == "0.004"
    assert fmt(-0.004, digits=2) == "-0.004"
    assert fmt(-0.0) == "0" and fmt(0.0) == "0"
    assert fmt(0.25, digits=1) == "0.2" and fmt(12.34, digits=1) == "12.3"
