"""Tiled inference equals one pass; the grid convention of the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfres import degrade, io
from selfres.infer import CubicUpsampler, predict_array, predict_single_pass, restore_to_store, tile_grid
from selfres.models import ModelSpec, build_model

from ..conftest import blob_volume


def _random_model(spec: ModelSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(spec)
    with torch.no_grad():  # make the body non-trivial (its last layer starts at zero)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize(
    "arch, factors, shape",
    [
        ("resnet3d", (2, 2, 2), (10, 20, 24)),
        ("resnet3d", (1, 2, 2), (6, 26, 20)),
        ("svision_mini", (2, 1, 1), (9, 18, 18)),
        ("svision_paper", (2, 2, 2), (7, 15, 17)),
        ("resnet3d", (1, 2, 2), (1, 30, 28)),
    ],
)
@pytest.mark.parametrize("tile", [(4, 8, 8), (3, 7, 11), (64, 64, 64)])
def test_tiled_output_equals_single_pass_everywhere(arch, factors, shape, tile):
    spec = ModelSpec(arch=arch, factors=factors, width=8, depth=2, dims=2 if shape[0] == 1 else 3)
    model = _random_model(spec)
    vol = blob_volume(shape, n=30)
    ref = predict_single_pass(model, vol, factors=factors)
    out = predict_array(model, vol, factors=factors, tile_size=tile, batch_size=3)
    assert out.shape == tuple(n * f for n, f in zip(shape, factors))
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_tile_grid_covers_each_voxel_once():
    shape = (7, 20, 33)
    count = np.zeros(shape, int)
    for t in tile_grid(shape, (3, 8, 10)):
        count[tuple(slice(a, b) for a, b in t)] += 1
    assert (count == 1).all()


def test_half_pixel_grid_convention():
    """Output voxel j sits at input coordinate (j + 0.5)/s - 0.5 (a linear ramp stays exact inside)."""
    n, s = 20, 2
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[None, None, :], (4, 4, n)).copy()
    up = CubicUpsampler((1, 1, s))
    out = predict_array(up, ramp, factors=(1, 1, s), tile_size=(4, 4, 7))
    j = np.arange(n * s)
    expected = (j + 0.5) / s - 0.5
    np.testing.assert_allclose(out[0, 0, 4:-4], expected[4:-4], atol=1e-4)
    # the same convention as skimage.transform.resize / align_corners=False interpolation
    lin = torch.nn.functional.interpolate(torch.from_numpy(ramp)[None, None], scale_factor=(1, 1, s),
                                          mode="trilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(out[0, 0, 4:-4], lin[0, 0, 4:-4], atol=1e-4)


def test_cubic_upsampler_matches_degrade_upscale():
    vol = blob_volume((6, 16, 16))
    a = predict_array(CubicUpsampler((2, 2, 2)), vol, factors=(2, 2, 2), tile_size=(3, 5, 7))
    b = np.asarray(degrade.upscale_cubic(vol, (2, 2, 2)))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_streamed_zarr_output_equals_in_memory_and_resume_skips_done_tiles(tmp_path):
    spec = ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)
    model = _random_model(spec)
    vol = blob_volume((6, 24, 24))
    io.write_ome_zarr(tmp_path / "in.ome.zarr", vol, voxel_size=(1, 1, 1))
    src = io.open_ome_zarr_array(tmp_path / "in.ome.zarr")
    dest = io.create_ome_zarr(tmp_path / "out.ome.zarr", shape=(6, 48, 48), dtype="float32",
                              voxel_size=(1, 0.5, 0.5), chunks=(3, 16, 16))
    done: list[int] = []
    stats = restore_to_store(model, src, dest, factors=(1, 2, 2), tile_size=(3, 8, 8), on_tile_done=done.append)
    assert stats["computed"] == stats["tiles"] == len(done)
    ref = predict_array(model, vol, factors=(1, 2, 2), tile_size=(6, 24, 24))
    np.testing.assert_allclose(dest[...], ref, atol=2e-5)
    # resume: nothing left to do when every tile is recorded as done
    again = restore_to_store(model, src, dest, factors=(1, 2, 2), tile_size=(3, 8, 8), done_tiles=set(done))
    assert again["computed"] == 0
