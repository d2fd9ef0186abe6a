"""Time series: ``timepoint`` chooses one 3-D stack of a T axis; ``timepoint = all`` makes one
sample, and one model, per time point (as ``channel = all`` does per channel)."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import tifffile
import zarr

from selfres import io
from selfres.errors import ConfigError, TimepointNotChosen
from selfres.sheet import expand_channels, expand_timepoints, read_sample_sheet
from workdir import REPO_ROOT, make_workdir, run_snakemake, tiny_volume

SCHEMA = REPO_ROOT / "workflow" / "schemas" / "samples.schema.yaml"


def _time_series(path, *, n_t=3, n_c=0):
    """An ImageJ hyperstack TZYX (TZCYX with ``n_c`` channels), each stack its own data."""
    stacks = [tiny_volume((8, 48, 48), seed=10 * t + c) for t in range(n_t) for c in range(max(n_c, 1))]
    data = np.stack(stacks).reshape(n_t, max(n_c, 1), 8, 48, 48)
    data = data.transpose(0, 2, 1, 3, 4) if n_c else data[:, 0]  # TZCYX or TZYX
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "TZCYX" if n_c else "TZYX"})
    return data


def test_a_time_point_is_read_and_only_it(tmp_path):
    data = _time_series(tmp_path / "t.tif")
    for t in (0, 2):
        for lazy in (False, True):
            vol = io.read_volume(tmp_path / "t.tif", timepoint=t, lazy=lazy)
            np.testing.assert_array_equal(np.asarray(vol.data), data[t].astype(np.float32))
    assert io.read_volume(tmp_path / "t.tif", timepoint=1).voxel_size == pytest.approx((1.0, 0.5, 0.5))
    with pytest.raises(TimepointNotChosen, match="has 3 time points; .*timepoint=0..2 .*sample sheet column "
                                                 "'timepoint', where all makes one sample per time point") as ex:
        io.read_volume(tmp_path / "t.tif")
    assert ex.value.n_timepoints == 3
    with pytest.raises(io.InputError, match="time point 3 is out of range: the file has 3 time points"):
        io.read_volume(tmp_path / "t.tif", timepoint=3)
    tifffile.imwrite(tmp_path / "one.tif", tiny_volume(), metadata={"axes": "ZYX"})
    assert io.read_volume(tmp_path / "one.tif", timepoint=0).data.shape == (8, 48, 48)  # 0 always exists
    with pytest.raises(io.InputError, match="time point 1 is out of range: the file has 1 time point"):
        io.read_volume(tmp_path / "one.tif", timepoint=1)
    assert io.timepoint_count(tmp_path / "t.tif") == 3 and io.timepoint_count(tmp_path / "one.tif") == 1


def test_time_points_and_channels_together(tmp_path):
    data = _time_series(tmp_path / "tc.tif", n_t=2, n_c=2)  # TZCYX
    vol = io.read_volume(tmp_path / "tc.tif", timepoint=1, channel=0)
    np.testing.assert_array_equal(vol.data, data[1, :, 0].astype(np.float32))
    assert io.timepoint_count(tmp_path / "tc.tif") == 2 and io.channel_count(tmp_path / "tc.tif") == 2


def test_ome_zarr_time_axis(tmp_path):
    data = np.stack([tiny_volume((4, 16, 16), seed=s) for s in range(2)]).astype(np.float32)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=data)
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}]}]}]
    np.testing.assert_array_equal(io.read_volume(tmp_path / "t.zarr", timepoint=1).data, data[1])
    assert io.timepoint_count(tmp_path / "t.zarr") == 2


def test_timepoint_all_becomes_one_sample_per_time_point(tmp_path):
    _time_series(tmp_path / "t.tif", n_t=2)
    _time_series(tmp_path / "tc.tif", n_t=2, n_c=2)
    (tmp_path / "samples.tsv").write_text("sample\tpath\tchannel\ttimepoint\tscale\n"
                                          "lapse\tt.tif\t\tall\t1,2,2\n"
                                          "both\ttc.tif\tall\tall\t\n"
                                          "fixed\tt.tif\t\t1\t\n"
                                          "gone\tmissing.tif\t\tall\t\n")
    sheet = expand_timepoints(expand_channels(read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA)))
    assert list(sheet["sample"]) == ["lapse_t0", "lapse_t1", "both_c0_t0", "both_c0_t1", "both_c1_t0", "both_c1_t1",
                                     "fixed", "gone"]  # unreadable: left to fail its job
    assert list(sheet["timepoint"]) == ["0", "1", "0", "1", "0", "1", "1", "all"]
    assert list(sheet["channel"])[2:6] == ["0", "0", "1", "1"]
    assert list(sheet["scale"])[:2] == ["1,2,2", "1,2,2"]  # every other column carried over


def test_timepoint_all_may_not_take_an_existing_id(tmp_path):
    _time_series(tmp_path / "t.tif", n_t=2)
    (tmp_path / "samples.tsv").write_text("sample\tpath\ttimepoint\nlapse\tt.tif\tall\nlapse_t1\tt.tif\t0\n")
    with pytest.raises(ConfigError, match="timepoint=all makes sample id.* lapse_t1 .*already taken"):
        expand_timepoints(read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA))


@pytest.mark.slow
def test_workflow_normalises_each_time_point_and_names_a_missing_choice(tmp_path):
    """The rules pass each sample's time point on (normalise only: the rest of the chain is the
    one every sample runs); a time series without a choice fails its sample, naming the column."""
    wd = make_workdir(tmp_path, samples={"lapse": {"path": "../data/t.tif", "timepoint": "all"},
                                         "unchosen": {"path": "../data/t.tif"}})
    data = _time_series(wd / "data" / "t.tif", n_t=2)
    targets = [f"results/{s}/normalized.ome.zarr" for s in ("lapse_t0", "lapse_t1", "unchosen")]
    proc = run_snakemake(wd, "--keep-going", *targets, timeout=600)
    assert proc.returncode != 0  # `unchosen` fails
    log = (wd / "results" / "unchosen" / "logs" / "normalise.log").read_text()
    assert "has 2 time points; selfres restores one 3-D stack at a time: choose one with timepoint=0..1" in log
    for t in (0, 1):
        out = io.read_ome_zarr(wd / "results" / f"lapse_t{t}" / "normalized.ome.zarr")
        assert out.attrs["timepoint"] == t
        norm = np.asarray(out.data)
        raw = data[t].astype(np.float64)
        # normalisation is affine: the time point's own data, not another's
        assert np.corrcoef(norm.ravel(), raw.ravel())[0, 1] > 0.9999
        assert np.corrcoef(norm.ravel(), data[1 - t].astype(np.float64).ravel())[0, 1] < 0.9


@pytest.mark.slow
def test_with_export_tiff_the_time_points_of_an_acquisition_are_planned_as_one_time_series(tmp_path):
    """``export_tiff: true``: a ``timepoint: all`` row (with ``channel: all``, too) is also
    written as one ``results/{acquisition}.ome.tif``, its stores passed time point by time
    point, each by channel, with their count; a row that is one time point of a file is not."""
    wd = make_workdir(tmp_path, samples={"lapse": {"path": "../data/tc.tif", "timepoint": "all", "channel": "all"},
                                         "solo": {"path": "../data/t.tif", "timepoint": "all"},
                                         "one": {"path": "../data/t.tif", "timepoint": "1"}},
                      config_overrides={"export_tiff": True})
    _time_series(wd / "data" / "tc.tif", n_t=3, n_c=2)
    _time_series(wd / "data" / "t.tif", n_t=2)
    plan = run_snakemake(wd, "-n", "-p", timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert re.search(r"^export_acquisition +2$", plan.stdout, flags=re.M), plan.stdout[-3000:]
    commands = {m[1]: m[0] for m in re.findall(r"^(?:Shell command: )?(selfres export .* -o results/(\w+)\.ome\.tif .*)$",
                                               plan.stdout + plan.stderr, flags=re.M)}
    assert sorted(commands) == ["lapse", "solo"], commands
    stores = " ".join(f"results/lapse_c{c}_t{t}/restored.ome.zarr" for t in range(3) for c in range(2))
    assert commands["lapse"].startswith(f"selfres export {stores} -o results/lapse.ome.tif --sample lapse "
                                        "--timepoints 3 "), commands["lapse"]
    assert "results/solo_t0/restored.ome.zarr results/solo_t1/restored.ome.zarr -o" in commands["solo"]
    assert "--timepoints 2 " in commands["solo"]
    # the summary is told the groups, to name a combined file a failed part holds back
    summary = re.search(r"^(?:Shell command: )?selfres summary .*$", plan.stdout + plan.stderr, flags=re.M)
    assert summary, plan.stdout[-3000:]
    groups = json.loads(shlex.split(summary[0].split("--acquisitions ", 1)[1])[0])
    assert groups == {"lapse": [f"lapse_c{c}_t{t}" for t in range(3) for c in range(2)], "solo": ["solo_t0", "solo_t1"]}


def test_an_acquisition_missing_a_refused_time_point_is_not_exported_as_if_whole(tmp_path):
    """bad_rows: fail_alone, and a row whose id is one the timepoint: all row makes (tz_t2): both
    are refused, and the two time points left were written as a 2-frame tz.ome.tif that looked
    whole, the summary silent. The export waits for every part; the summary is told the group."""
    wd = make_workdir(tmp_path, samples={"tz": {"path": "../data/t.tif", "timepoint": "all"},
                                         "tz_t2": {"path": "../data/other.tif"}},
                      config_overrides={"export_tiff": True, "bad_rows": "fail_alone"})
    _time_series(wd / "data" / "t.tif", n_t=3)
    _time_series(wd / "data" / "other.tif", n_t=1)
    plan = run_snakemake(wd, "-n", "-p", timeout=120)
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0, out[-3000:]
    assert "export_acquisition" not in out
    summary = re.search(r"^(?:Shell command: )?selfres summary .*$", out, flags=re.M)
    groups = json.loads(shlex.split(summary[0].split("--acquisitions ", 1)[1])[0])
    assert groups == {"tz": ["tz_t0", "tz_t1", "tz_t2"]}
