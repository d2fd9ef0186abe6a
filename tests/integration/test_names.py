"""Names as facility users give them: files and folders that look like command-line options."""

from __future__ import annotations

from workdir import make_workdir, run_snakemake, write_tiny_tiff


def test_files_and_a_results_folder_whose_names_start_with_a_dash_are_read_as_files(tmp_path):
    """``-scan.tif`` reached the commands bare: ``selfres normalise -scan.tif`` read it as an
    option, the job wrote no ERROR line, and the summary called it killed; ``results: -out``
    failed every job and the summary itself."""
    wd = make_workdir(tmp_path, samples={"dash": {"path": "../-scan.tif"}},
                      config_overrides={"results": "-out", "inbox": ["-in*.tif"], "inbox_settle_seconds": 0})
    write_tiny_tiff(wd / "-scan.tif")
    write_tiny_tiff(wd / "-inbox.tif", seed=1)
    out = wd / "-out"
    targets = [str(out / s / "normalized.ome.zarr") for s in ("dash", "inbox")]
    done = run_snakemake(wd, *targets, "--printshellcmds", cores=1)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"selfres normalise {wd / '-scan.tif'}" in log and f"selfres normalise {wd / '-inbox.tif'}" in log
    assert all((out / s / "normalized.ome.zarr").is_dir() for s in ("dash", "inbox"))
