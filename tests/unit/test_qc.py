"""QC's flags on both sides of their thresholds (a mutation review of qc.py: each of these
could change and fail no unit test)."""

from __future__ import annotations

from selfres import qc

_GOOD = {"nonfinite_voxels": 0, "correlation_with_input": 0.98, "correlation_ceiling": 1.0,
         "level": {"input_mean": 0.20, "output_mean": 0.201, "ratio": 1.005},
         "undershoot": {"output": 0.0, "interpolation": 0.0}, "brightening": {"ratio": 1.05}}


def _flags(mode="enhance", content="model", **over):
    kw = {k: over.pop(k) for k in ("isotropy_in", "isotropy_out", "saturated_fraction") if k in over}
    return qc.qc_flags(_GOOD | over, mode=mode, content=content, structure=0.9, planes_alike=0.8, **kw)


def test_a_darker_output_or_one_of_a_black_input_is_flagged_level_shifted():
    """``restored_level_shifted`` both ways: an output a third as bright as its input (a wrong
    gain) is as wrong as one 1.5× as bright; and an input whose mean is 0 (no ratio) with an
    output 0.1 of the range above it is shifted too."""
    assert _flags(level={"input_mean": 0.30, "output_mean": 0.10, "ratio": 0.3333}) == ["restored_level_shifted"]
    assert _flags(level={"input_mean": 0.30, "output_mean": 0.21, "ratio": 0.7}) == ["restored_level_shifted"]
    assert _flags(level={"input_mean": 0.30, "output_mean": 0.255, "ratio": 0.85}) == []  # within the ratios
    assert _flags(level={"input_mean": 0.0, "output_mean": 0.10, "ratio": None}) == ["restored_level_shifted"]
    assert _flags(level={"input_mean": 0.0, "output_mean": 0.01, "ratio": None}) == []  # under 2 % of the range


def test_a_figure_exactly_at_its_threshold_is_not_flagged():
    """Each flag is raised beyond its threshold, not at it (the thresholds' documented sides)."""
    assert _flags(correlation_with_input=qc.RESTORED_MIN_CORRELATION, correlation_ceiling=None) == []
    assert _flags(saturated_fraction=qc.SATURATED_SHARE) == []
    assert _flags(mode="isotropic", brightening={"ratio": qc.BRIGHTENING_RATIO}) == []
    assert _flags(undershoot={"output": qc.UNDERSHOOT_SHARE, "interpolation": 0.0}) == []
    assert _flags(clipped={"output": 0.01, "beyond_interpolation": qc.CLIPPED_SHARE, "at": 255}) == []
    assert qc.isotropy_flags(0.8, 0.8, "model") == [] and qc.isotropy_flags(0.8, 1 / 0.8, "model") == []

