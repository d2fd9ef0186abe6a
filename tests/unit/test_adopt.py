"""The time points of one series restored one way (:func:`selfres.adopt.keep_model_for_series`)."""

from __future__ import annotations

import pytest

from selfres.adopt import keep_model_for_series, named
from selfres.normalise import same_series

T0 = {"source_checksum": "abc", "series": None, "channel": 1, "timepoint": 0}


def _adopter(gain: float, flags=("model_worse_than_interpolation",)) -> dict:
    return {"flags": list(flags), "self_validation": {"psnr_model": 30.0 + gain, "psnr_interp": 30.0}}


@pytest.mark.parametrize("other, same", [
    ({"timepoint": 3}, True),
    ({"timepoint": 0}, False),                          # the trained time point itself
    ({"timepoint": 3, "channel": 0}, False),            # another channel's series
    ({"timepoint": 3, "series": 2}, False),             # another image of the file
    ({"timepoint": 3, "source_checksum": "def"}, False),  # another file (a time point per file: not told apart)
])
def test_same_series_is_another_time_point_of_the_same_file_image_and_channel(other, same):
    assert same_series(T0, T0 | other) is same
    assert same_series(None, T0 | other) is False and same_series(T0, None) is False
    # records without a file checksum (a methods text built from a provenance lacking it) are never
    # taken for one series: nothing says they are of one file
    blind = {**T0, "source_checksum": None}
    assert same_series(blind, blind | other) is False


def test_a_time_point_under_the_margin_but_gaining_keeps_the_series_model_output():
    """A reviewer's bleaching filaments: time points 2-5 gained 0.10-0.17 dB held out, under the 0.2 dB
    margin, and switched to tricubic; the series jumped -4.5 % in peak intensity at t2."""
    meta = {"flags": [], "acquisition": T0, "mode": "enhance", "best_step": 40}
    kept = keep_model_for_series(_adopter(0.14, ("dim_input", "model_worse_than_interpolation")), meta,
                                 T0 | {"timepoint": 2}, sample="lapse_c1_t2")
    assert kept["flags"] == ["dim_input", "below_margin_kept_for_series"]


@pytest.mark.parametrize("gain, meta, acquisition", [
    (-0.05, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 2}),  # a loss still falls back
    (0.0, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 2}),
    (0.14, {"flags": ["model_worse_than_interpolation"], "acquisition": T0}, T0 | {"timepoint": 2}),  # t0 fell back
    (0.14, {"flags": [], "acquisition": T0}, T0 | {"source_checksum": "other"}),  # another acquisition
    (0.14, {"flags": [], "acquisition": T0, "adopted_from": {"sample": "x"}}, T0 | {"timepoint": 2}),  # not trained here
    # an enhance model that kept its starting point: its guard is the confidence test, not the margin
    (0.14, {"flags": [], "acquisition": T0, "mode": "enhance", "best_step": 0}, T0 | {"timepoint": 2}),
])
def test_each_other_sample_keeps_its_own_guards_verdict(gain, meta, acquisition):
    out = _adopter(gain)
    assert keep_model_for_series(out, meta, acquisition, sample="s")["flags"] == ["model_worse_than_interpolation"]


def test_a_passing_time_point_is_left_as_it_is():
    out = _adopter(1.0, flags=())
    assert keep_model_for_series(out, {"flags": [], "acquisition": T0}, T0 | {"timepoint": 1}, sample="s") is out


def test_messages_name_the_part_of_the_file_a_sample_is():
    """`selfres restore` names both time points of one file by its stem: 'sample lapse adopts the model
    of lapse' said nothing (a time-lapse walkthrough)."""
    assert named("lapse", T0) == "lapse (channel 1, time point 0)"
    assert named("a", None) == "a" and named("a", {"source_checksum": "x"}) == "a"
