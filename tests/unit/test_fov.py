from __future__ import annotations

import numpy as np
import pytest

from selfres.errors import ConfigError, InputError
from selfres.fov import TrainingFov, box_shape, boxes_overlap, choose_training_fov, parse_fov

from ..conftest import blob_volume


def _inside(box, shape):
    return all(0 <= a < b <= n for (a, b), n in zip(box, shape))


@pytest.mark.parametrize("shape", [(16, 48, 48), (1, 64, 64), (8, 40, 96), (30, 64, 32)])
@pytest.mark.parametrize("multiple", [(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 4, 4)])
def test_training_fov_and_holdout_are_disjoint_inside_and_multiples(shape, multiple):
    if shape[0] == 1 and multiple[0] > 1:
        pytest.skip("2-D input has no z factor")
    vol = blob_volume(shape, n=80)
    fov = choose_training_fov(vol, multiple=multiple, min_holdout_voxels=256)
    assert _inside(fov.train, shape) and _inside(fov.holdout, shape)
    assert not boxes_overlap(fov.train, fov.holdout)
    for n, m in zip(box_shape(fov.holdout), multiple):
        assert n % m == 0 or n < m


def test_large_volume_gets_the_structure_rich_window():
    vol = np.zeros((16, 200, 200), np.float32) + 0.01
    vol[:, 20:60, 120:170] = blob_volume((16, 40, 50), n=200)  # all structure in one corner
    fov = choose_training_fov(vol, max_voxels=16 * 50 * 50, holdout_fraction=0.2)
    assert np.prod(box_shape(fov.train)) <= 16 * 50 * 50
    (z0, z1), (y0, y1), (x0, x1) = fov.train
    assert y0 < 60 and y1 > 20 and x0 < 170 and x1 > 120  # overlaps the structured corner
    assert "highest mean gradient" in fov.reason


def test_sheet_fov_is_kept_and_holdout_lies_outside():
    vol = blob_volume((16, 64, 64), n=100)
    fov = choose_training_fov(vol, training_fov="0:16,0:40,0:64", min_holdout_voxels=256)
    assert fov.train == ((0, 16), (0, 40), (0, 64))
    assert fov.source == "sample_sheet"
    assert not boxes_overlap(fov.train, fov.holdout)


@pytest.mark.parametrize(
    "text, match",
    [("0:16,0:40", "not of the form"), ("0:16,40:20,0:64", "empty or outside"), ("0:99,0:40,0:64", "outside")],
)
def test_bad_sheet_fov_strings(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_fov(text, (16, 64, 64))


def test_sheet_fov_covering_everything_leaves_no_holdout():
    with pytest.raises(InputError, match="no room for a held-out region"):
        choose_training_fov(blob_volume((16, 64, 64)), training_fov="0:16,0:64,0:64")


def test_too_small_volume_is_a_clear_error():
    with pytest.raises(InputError, match="too small"):
        choose_training_fov(blob_volume((2, 6, 6), n=3), path="tiny.tif")


def test_fov_round_trips_through_json(tmp_path):
    fov = choose_training_fov(blob_volume())
    fov.save(tmp_path / "f.json")
    assert TrainingFov.load(tmp_path / "f.json") == fov
