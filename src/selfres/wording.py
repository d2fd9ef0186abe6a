"""Figures and settings in words, for the reports and the methods text: numbers, durations,
grids and the inference extras, and HTML escaping of what users wrote."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["esc", "fmt", "num", "duration_text", "shape_text", "baseline_name", "extras_text",
           "lateral_pixels_text"]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, *, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0:  # -0.0 too
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits}g}"
        text = f"{v:.{digits}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        if text in ("0", "-0"):  # 0.02 s at one digit is not nothing
            return f"{v:.{max(digits, 1)}g}"
        if abs(v) < 1 and text in ("1", "-1"):  # an SSIM of 0.9996 is not a perfect 1
            return f"{v:.{digits + 3}g}"
        return text
    if isinstance(value, (list, tuple)):
        return " × ".join(fmt(v, digits=digits) for v in value)
    return str(value)


def lateral_pixels_text(pixels: float, voxel_size: Any = None, note: str | None = None, *,
                        equals: bool = False) -> str:
    """A length in lateral pixels (isotropic mode's axial σ), with its µm where the voxel size is
    known and ``note`` in the same brackets: "4.5 lateral pixels (2.25 µm; estimated)" (a
    walkthrough read the σ in pixels alone); ``equals``, for a text already in brackets:
    "4.5 lateral pixels = 2.25 µm"."""
    try:
        um = float(pixels) * float(voxel_size[-1])
    except (TypeError, ValueError, IndexError):
        um = math.nan
    said = [f"{fmt(um)} µm"] if math.isfinite(um) and um > 0 else []
    if equals:
        return f"{fmt(pixels)} lateral pixels" + "".join(f" = {t}" for t in said) + (f", {note}" if note else "")
    said += [note] if note else []
    return f"{fmt(pixels)} lateral pixels" + (f" ({'; '.join(said)})" if said else "")


def num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def extras_names(extras: Any, *, detail: bool = True) -> str:
    """'back-projection (1 step)', 'self-ensemble and back-projection' … for the inference extras
    the guard scored (``detail`` False: without the steps and the shrink); empty for none."""
    if not isinstance(extras, Mapping):
        return ""
    parts = []
    n = extras.get("back_projection_iterations") or 0
    if extras.get("ensemble"):
        parts.append("self-ensemble")
    if n:
        shrunk = ", its corrections shrunk by the acquisition's noise" if extras.get("back_projection_shrink") else ""
        parts.append(f"back-projection ({n} step{'s' if n != 1 else ''}{shrunk})" if detail else "back-projection")
    return " and ".join(parts)


def extras_text(extras: Any, *, detail: bool = True) -> str:
    """' with back-projection (1 step)' etc. (:func:`extras_names`), or empty for no extras."""
    names = extras_names(extras, detail=detail)
    return f" with {names}" if names else ""


def baseline_name(mode: Any) -> str:
    """The interpolation a sample's model is compared with."""
    return "z-cubic interpolation" if mode == "isotropic" else "tricubic interpolation"


#: how a training ended, by its recorded ``stop_reason``, as "training ended …"
_ENDED = {"steps": "after all its steps", "early_stop": "early, no longer improving on the held-out region",
          "time_budget": "at its time budget (train.max_minutes)", "diverged": "when its loss diverged",
          "interrupted": "when it was interrupted"}


def stop_text(reason: Any) -> str:
    """How a training ended, in words (``"after all its steps"``), from the ``stop_reason`` a
    model records; a serial ×4 model's two stages (a list, or ``"steps+early_stop"``) stage by
    stage; a reason this does not know, as recorded."""
    if isinstance(reason, str) and "+" in reason:
        reason = reason.split("+")
    if isinstance(reason, (list, tuple)):
        return ", ".join(f"stage {k} {stop_text(r)}" for k, r in enumerate(reason, 1))
    return _ENDED.get(str(reason), str(reason))


def duration_text(seconds: float) -> str:
    """``0.25 s``, ``30 s``, ``2 min``, ``1.5 h``: a frame interval for people."""
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def shape_text(shape: Any) -> str | None:
    if shape is None or (isinstance(shape, float) and math.isnan(shape)):
        return None
    if isinstance(shape, str):
        return shape
    return "x".join(str(int(s)) for s in shape)
