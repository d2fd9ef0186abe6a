"""The stack's first and last planes: enhance keeps the network there only where it wins."""

from __future__ import annotations

import numpy as np
import pytest

from selfres import degrade, endplanes
from selfres.infer import CubicUpsampler, blend_end_planes, restore_to_store, tile_grid, output_slices

from ..conftest import blob_volume


def _rows(n, values):
    """A (n, 4, 4) stack whose row k is the constant values[k]."""
    return np.broadcast_to(np.asarray(values, np.float64)[:, None, None], (n, 4, 4)).copy()


def test_losing_end_weights_keep_a_winning_row_and_fit_a_losing_one():
    n = 10
    target = _rows(n, [1.0] * n)
    interp = _rows(n, [0.0] * n)
    # row 0 / 9: the network overshoots to 3 (loses: error 4 against 1) -> LS weight 1/3
    # row 1 / 8: it reaches 0.8 (wins) -> kept whole, though 1.25 would fit the held-out rows better
    # row 2 / 7: it loses at one end (-1) and wins at the other (1): pooled it loses (4 > 2) -> 0
    # row 3 / 6: the network equals the interpolation (changed nothing) -> 1
    pred = _rows(n, [3.0, 0.8, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.8, 3.0])
    w = endplanes.losing_end_weights(target, pred, interp, 2.0)  # ceil(2 · 2) = 4 rows
    assert w == [0.333, 1.0, 0.0, 1.0]
    # the axis is any; and never more than half of it
    assert endplanes.losing_end_weights(np.moveaxis(target, 0, 2), np.moveaxis(pred, 0, 2),
                                        np.moveaxis(interp, 0, 2), 2.0, axis=2) == w
    assert len(endplanes.losing_end_weights(target[:5], pred[:5], interp[:5], 4.0)) == 2
    assert endplanes.losing_end_weights(target[:1], pred[:1], interp[:1], 2.0) == []  # a single plane


def test_blended_rows_name_both_ends_and_skip_weights_of_one():
    assert endplanes.blended_rows([0.2, 1.0, 0.5], 10) == {0: 0.2, 9: 0.2, 2: 0.5, 7: 0.5}
    assert endplanes.blended_rows([0.2, 0.3], 3) == {0: 0.2, 2: 0.2}  # half of 3 planes: one from each end
    assert endplanes.blended_rows(None, 10) == {} and endplanes.blended_rows([0.5], 1) == {}


@pytest.mark.parametrize("factors, shape, tile", [((2, 2, 2), (9, 14, 12), (4, 8, 5)),
                                                 ((1, 2, 2), (7, 10, 9), (3, 4, 4)),
                                                 ((4, 1, 1), (5, 6, 7), (1, 6, 7))])
def test_tiles_blend_their_end_planes_as_the_whole_volume_would(factors, shape, tile):
    """Each tile's share of the first and last planes, blended with the tricubic of the source
    read around the tile, equals the whole output blended with the whole volume's tricubic;
    planes between are untouched."""
    src = blob_volume(shape, n=12, seed=2)
    out_shape = tuple(n * f for n, f in zip(shape, factors))
    net = np.random.default_rng(0).normal(size=out_shape).astype(np.float32)
    weights = [0.0, 0.25, 1.0, 0.75, 0.5][: endplanes.end_rows(factors[0], out_shape[0])]
    expected = endplanes.blend_ends(net.copy(), np.asarray(degrade.upscale_cubic(src, factors)), weights, axis=0)
    got = np.empty_like(net)
    for t in tile_grid(shape, tile):
        sl = output_slices(t, factors)
        got[sl] = blend_end_planes(net[sl].copy(), t, src, weights, factors)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got[0], net[0]) and np.array_equal(got[len(weights):-len(weights)],
                                                              net[len(weights):-len(weights)])


def test_restore_to_store_writes_the_blended_end_planes():
    """Inference's writer blends the planes (before the output's transform)."""
    factors, shape = (2, 2, 2), (6, 12, 10)
    src = blob_volume(shape, n=10, seed=5)
    model = CubicUpsampler(factors)
    bright = lambda b: b + 1.0  # noqa: E731 - the network's stand-in: tricubic + 1
    plain = np.zeros(tuple(n * f for n, f in zip(shape, factors)), np.float32)
    restore_to_store(model, src, plain, factors=factors, tile_size=(4, 8, 8), transform=bright, writers=0)
    ends = np.zeros_like(plain)
    restore_to_store(model, src, ends, factors=factors, tile_size=(4, 8, 8), transform=bright, writers=0,
                     end_weights=[0.0, 0.5])
    # blended with tricubic (= the model's own output here) before the transform: unchanged
    np.testing.assert_allclose(ends, plain, atol=1e-5)
    shifted = np.zeros_like(plain)

    class Plus2(CubicUpsampler):
        def forward(self, x):
            return super().forward(x) + 2.0

    restore_to_store(Plus2(factors), src, shifted, factors=factors, tile_size=(4, 8, 8), writers=0,
                     end_weights=[0.0, 0.5])
    tri = np.asarray(degrade.upscale_cubic(src, factors))
    np.testing.assert_allclose(shifted[[0, -1]], tri[[0, -1]], atol=1e-5)
    np.testing.assert_allclose(shifted[[1, -2]], tri[[1, -2]] + 1.0, atol=1e-5)
    np.testing.assert_allclose(shifted[2:-2], tri[2:-2] + 2.0, atol=1e-5)
