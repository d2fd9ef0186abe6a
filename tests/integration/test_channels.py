"""``channel = all``: one sample, and one model, per channel of a multichannel acquisition."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr

from selfres import io
from selfres.errors import ConfigError
from selfres.sheet import expand_channels, read_sample_sheet
from workdir import REPO_ROOT, make_workdir, run_snakemake, tiny_volume

SCHEMA = REPO_ROOT / "workflow" / "schemas" / "samples.schema.yaml"


def _two_channel_tiff(path):
    stack = np.stack([tiny_volume((8, 48, 48), seed=1), tiny_volume((8, 48, 48), seed=2)], axis=1)  # ZCYX
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 1.0, "axes": "ZCYX"})
    return stack


def test_channel_all_becomes_one_sample_per_channel(tmp_path):
    stack = _two_channel_tiff(tmp_path / "twoch.tif")
    _two_channel_tiff(tmp_path / "other.tif")
    (tmp_path / "samples.tsv").write_text("sample\tpath\tchannel\tscale\n"
                                          "twoch\ttwoch.tif\tall\t1,2,2\n"
                                          "one\tother.tif\t1\t\n"
                                          "gone\tmissing.tif\tall\t\n")
    sheet = expand_channels(read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA))
    assert list(sheet["sample"]) == ["twoch_c0", "twoch_c1", "one", "gone"]  # unreadable: left to fail its job
    assert list(sheet["channel"]) == ["0", "1", "1", "all"]
    assert list(sheet["scale"]) == ["1,2,2", "1,2,2", "", ""]  # every other column carried over
    for c in (0, 1):  # and each channel reads its own data
        vol = io.read_volume(sheet["path"][c], channel=int(sheet["channel"][c]))
        np.testing.assert_array_equal(vol.data, stack[:, c].astype(np.float32))
    assert io.channel_count(tmp_path / "twoch.tif") == 2
    tifffile.imwrite(tmp_path / "single.tif", tiny_volume((8, 48, 48)), metadata={"axes": "ZYX"})
    assert io.channel_count(tmp_path / "single.tif") == 1


def test_channel_all_may_not_take_an_existing_id(tmp_path):
    _two_channel_tiff(tmp_path / "twoch.tif")
    (tmp_path / "samples.tsv").write_text("sample\tpath\tchannel\n"
                                          "twoch\ttwoch.tif\tall\n"
                                          "twoch_c1\ttwoch.tif\t0\n")
    with pytest.raises(ConfigError, match="channel=all makes sample id.* twoch_c1 .*already taken"):
        expand_channels(read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA))


@pytest.mark.slow
def test_workflow_restores_every_channel(tmp_path):
    wd = make_workdir(tmp_path, samples={"twoch": {"path": "../data/twoch.tif", "channel": "all", "scale": "1,2,2"}})
    # an OME-TIFF that names its channels, as a microscope's export does
    stack = np.stack([tiny_volume((8, 48, 48), seed=1), tiny_volume((8, 48, 48), seed=2)], axis=1)  # ZCYX
    (wd / "data").mkdir(exist_ok=True)
    tifffile.imwrite(wd / "data" / "twoch.tif", stack, ome=True, metadata={
        "axes": "ZCYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5,
        "Channel": {"Name": ["DAPI", "GFP"]}})
    # each channel through training and inference (its QC and report are those of any sample), and
    # with export_tiff both as the channels of one OME-TIFF (results/twoch.ome.tif; Fiji: a composite)
    proc = run_snakemake(wd, *(f"results/twoch_c{c}/restored.ome.zarr" for c in (0, 1)), "results/twoch.ome.tif",
                         timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outs = [io.read_ome_zarr(wd / "results" / f"twoch_c{c}" / "restored.ome.zarr") for c in (0, 1)]
    assert all(o.data.shape == (8, 96, 96) for o in outs)
    assert not np.allclose(np.asarray(outs[0].data), np.asarray(outs[1].data))  # each its own channel
    notes = [" [tricubic]" if o.attrs["content"] == "interpolation" else "" for o in outs]  # a fall-back says so
    for c, name in ((0, "DAPI"), (1, "GFP")):
        exported = io.read_volume(wd / "results" / "twoch.ome.tif", channel=c)
        np.testing.assert_array_equal(exported.data, np.asarray(outs[c].data))
        assert exported.voxel_size == pytest.approx(outs[c].voxel_size)
        assert outs[c].voxel_size == pytest.approx((1.0, 0.25, 0.25))  # the OME-TIFF's voxel size, ×2 laterally
        # the acquisition's channel names follow: the layer name in napari, the channel name in Fiji
        omero = zarr.open_group(str(wd / "results" / f"twoch_c{c}" / "restored.ome.zarr"), mode="r").attrs["omero"]
        assert omero["channels"][0]["label"] == f"twoch_c{c} ({name})" + notes[c]
        # a file without colours: Fiji's composite colours (red, green), not grey for both
        assert omero["channels"][0]["color"] == ("FF0000", "00FF00")[c]
    with tifffile.TiffFile(wd / "results" / "twoch.ome.tif") as tif:
        assert re.findall(r'<Channel [^>]*Name="([^"]+)"', tif.ome_metadata) == [
            "twoch_c0 (DAPI)" + notes[0], "twoch_c1 (GFP)" + notes[1]]
    assert [io.channel_color(wd / "results" / "twoch.ome.tif", c) for c in (0, 1)] == ["FF0000", "00FF00"]
    (wd / "results" / "twoch.ome.tif").unlink()
    plan = run_snakemake(wd, "-n", "--config", "export_tiff=true", timeout=120)  # a whole run asks for it too
    assert re.search(r"^export_acquisition +1$", plan.stdout, flags=re.M), plan.stdout
    for c in (0, 1):
        assert (wd / "results" / f"twoch_c{c}" / "model" / "model.json").exists()
