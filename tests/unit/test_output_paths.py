"""Where outputs beside ``restored.ome.zarr`` go."""

from __future__ import annotations

from pathlib import Path

from selfres.pipeline import drop_stale_export, drop_stale_model_output, model_output_path, tiff_export_path


def test_model_output_is_named_after_its_output():
    assert model_output_path("results/a/restored.ome.zarr") == Path("results/a/restored_model.ome.zarr")
    assert model_output_path("out/a.ome.zarr") == Path("out/a_model.ome.zarr")
    assert model_output_path("out/b.zarr") == Path("out/b_model.zarr")
    assert model_output_path("out/c") == Path("out/c_model")


def test_outputs_written_to_one_folder_keep_their_own_model_output(tmp_path):
    """``selfres restore a.tif -o out/a.ome.zarr`` then ``b.tif -o out/b.ome.zarr``: b's run
    (not flagged) removes only a stale model output of its own, never a's."""
    for name in ("a_model.ome.zarr", "b_model.ome.zarr", ".b_model.ome.zarr.partial"):
        (tmp_path / name).mkdir()
    drop_stale_model_output(tmp_path / "b.ome.zarr")
    assert (tmp_path / "a_model.ome.zarr").is_dir()
    assert not (tmp_path / "b_model.ome.zarr").exists() and not (tmp_path / ".b_model.ome.zarr.partial").exists()


def test_tiff_export_is_named_after_its_output_and_only_its_own_is_dropped(tmp_path):
    assert tiff_export_path("results/a/restored.ome.zarr") == Path("results/a/restored.ome.tif")
    assert tiff_export_path("out/b.zarr") == Path("out/b.ome.tif")
    for name in ("a.ome.tif", "b.ome.tif"):
        (tmp_path / name).write_bytes(b"old")
    drop_stale_export(tmp_path / "b.ome.zarr")
    assert (tmp_path / "a.ome.tif").is_file() and not (tmp_path / "b.ome.tif").exists()
