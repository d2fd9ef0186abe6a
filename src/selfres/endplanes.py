"""The stack's first and last planes: how much of the network's output to keep there.

A network trained on patches learns mostly from their interiors; at the two ends of z, where
its input lies on one side only, it can lose to plain interpolation while winning everywhere
between. Both modes measure, on their held-out data, a weight ``w`` of the network's output
for each output plane ``k`` from an end (``k < ceil(END_PLANES_PER_FACTOR · f)``, ``f`` the
axial factor), and write ``w · network + (1 − w) · interpolation`` there (``model.json``
``end_weights``). ``isotropic`` fits ``w`` by least squares on every end row
(:func:`selfres.isotropic.end_weights`); ``enhance`` keeps the network wherever it beats
tricubic on those rows of the held-out region (:func:`losing_end_weights`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Output planes at either end of z whose restoration may be blended with the interpolation, per
#: unit of the axial factor (the first two input samples' reach): there the network has its input
#: on one side only
END_PLANES_PER_FACTOR = 2

#: A relative excess of squared error within which the network counts as no worse than the
#: interpolation (0.0004 dB: an untrained network, tricubic itself, differs by float rounding)
SAME_ERROR = 1e-4


def end_rows(factor: float, length: int) -> int:
    """How many rows from each end of an axis of ``length`` output rows may be blended: at most
    ``ceil(END_PLANES_PER_FACTOR · factor)``, and at most half the axis."""
    return min(int(math.ceil(END_PLANES_PER_FACTOR * float(factor))), int(length) // 2)


def least_squares_weights(num: np.ndarray, den: np.ndarray) -> list[float]:
    """``num / den`` (the least-squares weight of the network's change over the interpolation,
    ``Σ d·e / Σ d²``), clipped to 0..1 and rounded as ``model.json`` keeps it; 1 where the network
    changed nothing (``den`` 0)."""
    w = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return [round(float(v), 3) for v in np.clip(w, 0.0, 1.0)]


def losing_end_weights(target: np.ndarray, pred: np.ndarray, interp: np.ndarray, factor: float, *,
                       axis: int = 0) -> list[float]:
    """Per row ``k`` from an end of ``axis`` (rows ``k`` and ``n − 1 − k`` pooled,
    :func:`end_rows`): 1 where the network's output ``pred`` is nearer ``target`` than ``interp``
    is (summed squared error), else the least-squares weight of ``pred`` in
    ``w · pred + (1 − w) · interp`` (0..1).

    A per-row guard, on the held-out region: where the network wins, it stays (a least-squares
    weight there, fitted on a few hundred voxels a row, took 0.2 dB off a benchmark volume's first
    plane); where it loses it is blended down (enhance ×2 of a stack of 4 µm planes: its last
    plane −6.8 dB against tricubic, −0.2 dB blended). Empty when the axis is too short.
    """
    t, p, i = (np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0) for a in (target, pred, interp))
    rows = end_rows(factor, t.shape[0])
    n = t.shape[0]
    weights = []
    for k in range(rows):
        idx = [k, n - 1 - k]
        d, e = p[idx] - i[idx], t[idx] - i[idx]  # the network's change, and the change wanted
        err_net, err_interp = float(np.sum((e - d) ** 2)), float(np.sum(e * e))
        if err_net <= err_interp * (1.0 + SAME_ERROR):
            weights.append(1.0)
        else:
            weights += least_squares_weights(np.array([np.sum(d * e)]), np.array([np.sum(d * d)]))
    return weights


def blend_ends(restored: np.ndarray, interp: np.ndarray, weights: Sequence[float] | None, *,
               axis: int) -> np.ndarray:
    """``restored`` with its first and last ``len(weights)`` rows along ``axis`` blended, in
    place, with ``interp`` (row ``k`` from either end takes weight ``weights[k]``); returned.
    Only those rows are touched (inference calls it on every tile)."""
    if not weights:
        return restored
    out, ref = np.moveaxis(restored, axis, 0), np.moveaxis(interp, axis, 0)  # views
    n = out.shape[0]
    for k, w in enumerate(weights[: n // 2]):
        if w == 1.0:
            continue
        for row in (k, n - 1 - k):
            out[row] = w * out[row] + (1.0 - w) * ref[row]
    return restored


def blended_rows(weights: Sequence[float] | None, n: int) -> dict[int, float]:
    """The rows of an axis of ``n`` output rows that :func:`blend_ends` changes, with their
    weights (rows whose weight is 1 are left out)."""
    rows: dict[int, float] = {}
    for k, w in enumerate((weights or [])[: n // 2]):
        if float(w) != 1.0:
            rows[k] = rows[n - 1 - k] = float(w)
    return rows
