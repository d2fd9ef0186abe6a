"""TIFFs holding several images (TIFF series, e.g. an OME-TIFF's positions): ``series``
chooses one; ``series = all`` makes one sample, and one model, per image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from selfres import io
from selfres.errors import ConfigError
from selfres.sheet import expand_channels, expand_series, expand_timepoints, read_sample_sheet
from workdir import REPO_ROOT, make_workdir, run_snakemake, tiny_volume

SCHEMA = REPO_ROOT / "workflow" / "schemas" / "samples.schema.yaml"


def _positions(path):
    """An OME-TIFF of two positions: a single-channel ZYX stack, then a two-channel ZCYX one."""
    first = tiny_volume((8, 48, 48), seed=1)
    second = np.stack([tiny_volume((8, 48, 48), seed=2), tiny_volume((8, 48, 48), seed=3)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(first, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeZ": 1.0,
                                                             "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
        tw.write(second, photometric="minisblack", metadata={"axes": "ZCYX", "PhysicalSizeZ": 1.0,
                                                              "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    return first, second


def test_series_all_then_channels_counted_in_each_image(tmp_path):
    _positions(tmp_path / "pos.ome.tif")
    (tmp_path / "samples.tsv").write_text("sample\tpath\tseries\tchannel\n"
                                          "pos\tpos.ome.tif\tall\tall\n"
                                          "second\tpos.ome.tif\t1\t0\n"
                                          "gone\tmissing.tif\tall\t\n")
    sheet = read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA)
    sheet = expand_timepoints(expand_channels(expand_series(sheet)))
    assert list(sheet["sample"]) == ["pos_s0_c0", "pos_s1_c0", "pos_s1_c1", "second", "gone"]
    assert list(sheet["series"]) == ["0", "1", "1", "1", "all"]
    assert list(sheet["channel"]) == ["0", "0", "1", "0", ""]
    assert io.channel_count(tmp_path / "pos.ome.tif", series=0) == 1
    assert io.channel_count(tmp_path / "pos.ome.tif", series=1) == 2


def test_series_all_may_not_take_an_existing_id(tmp_path):
    _positions(tmp_path / "pos.ome.tif")
    (tmp_path / "samples.tsv").write_text("sample\tpath\tseries\tchannel\npos\tpos.ome.tif\tall\t0\n"
                                          "pos_s1\tpos.ome.tif\t0\t\n")
    with pytest.raises(ConfigError, match="series=all makes sample id.* pos_s1 .*already taken"):
        expand_series(read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA))


@pytest.mark.slow
def test_workflow_normalises_each_image_and_names_a_missing_choice(tmp_path):
    wd = make_workdir(tmp_path, samples={"pos": {"path": "../data/pos.ome.tif", "series": "all", "channel": "1"},
                                         "unchosen": {"path": "../data/pos.ome.tif"}})
    first, second = _positions(wd / "data" / "pos.ome.tif")
    targets = [f"results/{s}/normalized.ome.zarr" for s in ("pos_s1", "unchosen")]
    proc = run_snakemake(wd, "--keep-going", *targets, timeout=600)
    assert proc.returncode != 0  # `unchosen` fails
    log = (wd / "results" / "unchosen" / "logs" / "normalise.log").read_text()
    assert "holds 2 images" in log and "choose one with series=N (sample sheet column 'series'" in log
    out = io.read_ome_zarr(wd / "results" / "pos_s1" / "normalized.ome.zarr")
    assert out.attrs["series"] == 1 and out.attrs["channel"] == 1
    norm, raw = np.asarray(out.data).ravel(), second[:, 1].astype(np.float64).ravel()
    assert np.corrcoef(norm, raw)[0, 1] > 0.9999  # series 1's channel 1, normalised (an affine map)
