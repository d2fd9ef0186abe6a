"""Edge cases of :mod:`selfres.provenance` left unpinned (a mutation review)."""

from __future__ import annotations

import os

from selfres import provenance


def test_a_report_written_without_a_configuration_names_no_model_from_difference():
    """``stage_report`` without ``resolved_config`` compares nothing: an adopted model is not a
    'model_from: configured None, used a' the user never configured."""
    adopted = {"adopted_from": {"sample": "a"}, "mode": "enhance", "factors": [1, 2, 2]}
    assert provenance.settings_not_applied(None, adopted, {}) == {}
    assert provenance.settings_not_applied({}, adopted, {}) == {"model_from": {"config": None, "used": "a"}}


def test_an_export_as_new_as_its_output_counts_its_benchmark(tmp_path):
    """'at least as new': a file system of whole-second times stamps the export and the output alike."""
    restored = tmp_path / "restored.ome.zarr"
    restored.mkdir()
    (tmp_path / "restored.ome.tif").write_bytes(b"")
    bench = tmp_path / "export_tiff.tsv"
    bench.write_text("s\n1\n")
    for path in (restored, tmp_path / "restored.ome.tif", bench):
        os.utime(path, (10, 10))
    assert provenance.current_benchmarks([bench], blocks=1, restored=restored) == [bench]


def test_a_store_made_through_a_symlink_names_the_file_by_its_resolved_path_too(tmp_path):
    """The stage was given ``alias/a.tif`` (a symlinked folder); the sheet now names ``data/a.tif``:
    the same acquisition, by the store's ``source_resolved``."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.tif").write_bytes(b"x")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    real, alias = str(tmp_path / "data" / "a.tif"), str(tmp_path / "alias" / "a.tif")
    attrs = {"source": alias, "source_resolved": os.path.realpath(alias)}
    assert provenance.names_source(attrs, real) is True and provenance.names_source(attrs, alias) is True
    assert provenance.names_source(attrs, str(tmp_path / "b.tif")) is False
    assert provenance.names_source({}, real) is None


def test_a_zarr_acquisition_records_no_file_stat(tmp_path):
    """A folder's own time does not follow its chunks: a Zarr acquisition is never compared by size and time."""
    (tmp_path / "a.ome.zarr").mkdir()
    (tmp_path / "a.tif").write_bytes(b"12345")
    assert provenance.file_stat(tmp_path / "a.ome.zarr") is None
    assert provenance.file_stat(tmp_path / "a.tif")["size"] == 5 and provenance.file_stat(tmp_path / "none") is None


def test_a_replacement_as_old_as_the_normalised_copy_is_told_and_a_store_without_a_record_is_not(tmp_path):
    """Snakemake reruns only for an input *newer* than the output: one stamped the same time (a file
    system of whole-second times) is told as replaced; a store that records no size and time says nothing."""
    import json

    raw = tmp_path / "a.tif"
    raw.write_bytes(b"12345")
    made = 1_700_000_000 * 10**9
    os.utime(raw, ns=(made, made))
    stores = {}
    for name, stat in (("n", {"size": 3, "mtime_ns": made - 86400 * 10**9}), ("bare", None)):
        store = tmp_path / f"{name}.ome.zarr"
        store.mkdir()
        attrs = {"source": str(raw), **({"source_stat": stat} if stat else {})}
        (store / ".zattrs").write_text(json.dumps({"selfres": attrs}))
        (store / ".snakemake_timestamp").touch()
        os.utime(store / ".snakemake_timestamp", ns=(made, made))
        stores[name] = store
    told = provenance.replaced_by_an_older_file(stores["n"], raw)
    assert told and told.startswith(f"{raw} is not the file its normalised copy was made from (3 bytes then, 5 now")
    assert provenance.replaced_by_an_older_file(stores["bare"], raw) is None
