"""Tiled inference equals one pass; the grid convention of the contract."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from selfres import degrade, io, normalise
from selfres.codeinfo import source_digest
from selfres.infer import (
    CubicUpsampler, output_slices, predict_array, predict_single_pass, prepare_model, restore_to_store, run_tiles,
    tile_grid,
)
from selfres.models import ModelSpec, build_model

from ..conftest import blob_volume

#: the code part of a compute label (:func:`selfres.models.compute_label`)
CODE = f"code {source_digest()[:8]}"


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


@pytest.mark.parametrize("factors, tile", [((2, 2, 2), (5, 7, 9)), ((1, 2, 2), (12, 30, 30)), ((2, 1, 1), (4, 5, 8))])
def test_hot_pixels_are_repaired_in_the_networks_input_and_written_as_acquired(tmp_path, factors, tile):
    """A network trained on a repaired training FOV sees each hot pixel as a spike it never
    learned: 20 of them on a reviewer's stack rang to −846 counts beside each (tricubic −244)
    and cost 0.8 dB away from them. The network now reads the volume repaired, tile by tile
    as over the whole volume, and the defects' own output voxels are the acquisition's
    tricubic interpolation."""
    from selfres import noise
    from selfres.infer import SensorRepaired

    spec = ModelSpec(arch="resnet3d", factors=factors, width=8, depth=2)
    model = _random_model(spec)
    rng = np.random.default_rng(1)
    vol = blob_volume((12, 22, 20), n=20) + rng.normal(0, 0.01, (12, 22, 20)).astype(np.float32)
    ys, xs = np.array([3, 12, 0, 21]), np.array([4, 15, 9, 19])  # two on the border
    hot = vol.copy()
    hot[:, ys, xs] = rng.uniform(3.0, 8.0, 4)
    defects = noise.sensor_defect_positions(hot)
    assert defects is not None and set(zip(*np.nonzero(defects))) == set(zip(ys, xs))
    repaired = noise.repair_sensor_defects(hot, defects)
    view = SensorRepaired(hot, defects)
    np.testing.assert_array_equal(view[2:5, 10:14, 3:6], repaired[2:5, 10:14, 3:6])  # a box reads as the whole
    np.testing.assert_array_equal(view[:, 0:1, 8:11], repaired[:, 0:1, 8:11])
    dest = np.zeros(tuple(n * f for n, f in zip(hot.shape, factors)), np.float32)
    restore_to_store(model, hot, dest, factors=factors, tile_size=tile, defects=defects)
    own = np.kron(defects, np.ones(factors[1:], bool))  # each defect's output columns
    expected = predict_single_pass(model, repaired, factors=factors)
    np.testing.assert_allclose(dest[:, ~own], expected[:, ~own], atol=2e-5)
    np.testing.assert_allclose(dest[:, own], degrade.upscale_cubic(hot, factors)[:, own], atol=2e-4)
    assert dest.max() > 2.5  # the hot pixels are still there, as acquired
    # no defects given: the volume as it is
    plain = np.zeros_like(dest)
    restore_to_store(model, hot, plain, factors=factors, tile_size=tile)
    np.testing.assert_allclose(plain, predict_single_pass(model, hot, factors=factors), atol=2e-5)


# --------------------------------------------------------------------------- #
# out-of-memory fitting, blocks, resume, store layout
# --------------------------------------------------------------------------- #


class _OomAbove(torch.nn.Module):
    """Wraps a model; raises a CUDA out-of-memory error for inputs above ``limit`` voxels."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.halo, self.sizes = inner, limit, inner.halo, []

    def forward(self, x):
        if x.numel() > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.sizes.append(x.numel())
        return self.inner(x)


def test_out_of_memory_halves_the_work_and_output_is_unchanged():
    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((6, 20, 20))
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    halo = model.halo
    one_tile = np.prod([n + 2 * h for n, h in zip(vol.shape, halo)])
    oom = _OomAbove(model, limit=one_tile // 2)
    out = predict_array(oom, vol, factors=(1, 2, 2), tile_size=(6, 20, 20), batch_size=2)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert max(oom.sizes) <= one_tile // 2 and len(oom.sizes) >= 2  # split, each part fits


def test_a_gpu_pass_is_held_to_what_the_host_can_take_of_its_output():
    from selfres.infer import gpu_pass_host_limit

    gib = 2**30
    assert gpu_pass_host_limit((4, 4, 4), available=16 * gib) == 8 * 2**20  # a 16 GB job at ×4: 8 M voxels
    assert gpu_pass_host_limit((4, 4, 4), available=4 * gib) == 2 * 2**20
    assert gpu_pass_host_limit((2, 2, 2), available=None) == float("inf")


def test_cudnn_and_cublas_allocation_failures_count_as_out_of_memory():
    from selfres.infer import _is_oom
    from selfres.models import memory_error_cause

    assert _is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert _is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not _is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"))
    # a review: cuDNN, left with no algorithm whose workspace fits, and cuBLAS without memory
    # for its handle, say so in other words; the job crashed where halving would have run
    for said in ("GET was unable to find an engine to execute this computation",
                 "FIND was unable to find an engine to execute this computation",
                 "Unable to find a valid cuDNN algorithm to run convolution",
                 "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`"):
        assert _is_oom(RuntimeError(said)), said
        # ... and the error that ends a halving quotes each whole, with its other cause (a mutation
        # review: the case of the words, and CUDA's second line, lost the hint unseen)
        cause = memory_error_cause(RuntimeError(said + "\nCUDA kernel errors might be asynchronously reported"))
        assert f"The accelerator's error was '{said}'" in cause and "get_arch_list" in cause, cause
    assert memory_error_cause(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) == ""


class _NoEngineAbove(_OomAbove):
    """cuDNN's words for a convolution whose every algorithm ran out of memory."""

    def forward(self, x):
        if x.numel() > self.limit:
            raise RuntimeError("GET was unable to find an engine to execute this computation")
        self.sizes.append(x.numel())
        return self.inner(x)


def test_cudnn_finding_no_engine_halves_the_work_and_the_last_error_names_its_other_cause():
    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((6, 20, 20))
    one_tile = np.prod([n + 2 * h for n, h in zip(vol.shape, model.halo)])
    out = predict_array(_NoEngineAbove(model, limit=one_tile // 2), vol, factors=(1, 2, 2), tile_size=(6, 20, 20))
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    with pytest.raises(MemoryError) as caught:  # nothing fits: a torch build without the GPU's kernels, maybe
        predict_array(_NoEngineAbove(model, limit=0), vol, factors=(1, 2, 2), tile_size=(6, 20, 20))
    assert "even after halving" in str(caught.value) and "more memory. The accelerator's error was" in str(caught.value)
    assert "'GET was unable to find an engine" in str(caught.value) and "torch.cuda.get_arch_list()" in str(caught.value)
    with pytest.raises(MemoryError) as plain:  # plainly out of memory: no such note
        predict_array(_OomAbove(model, limit=0), vol, factors=(1, 2, 2), tile_size=(6, 20, 20))
    assert "get_arch_list" not in str(plain.value)


def test_out_of_memory_on_a_batch_falls_back_to_single_tiles_and_other_errors_propagate():
    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((4, 16, 32))
    tile = (4, 16, 16)
    per_tile = np.prod([t + 2 * h for t, h in zip(tile, model.halo)])
    oom = _OomAbove(model, limit=per_tile)  # one tile fits, a batch of two does not
    out = predict_array(oom, vol, factors=(1, 2, 2), tile_size=tile, batch_size=2)
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    assert oom.sizes == [per_tile, per_tile]

    class Broken(torch.nn.Module):
        halo = (0, 0, 0)

        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_array(Broken(), vol, factors=(1, 1, 1), tile_size=tile)


def test_cpu_pass_that_would_not_fit_in_host_memory_is_split_before_it_runs(monkeypatch, caplog):
    import selfres.infer as infer

    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((6, 20, 20))
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    one_tile = int(np.prod([n + 2 * h for n, h in zip(vol.shape, model.halo)]))
    # room for half a padded tile: the bytes that cpu_pass_limit turns into one_tile / 2 voxels
    widest = infer.widest_per_input_voxel(model, vol.shape, model.halo)
    spare = one_tile / 2 * infer.cpu_pass_bytes_per_input_voxel((1, 2, 2), widest) / 0.8
    monkeypatch.setattr(infer, "host_memory_available", lambda: int(spare))
    counted = _OomAbove(model, limit=10**12)  # never raises: records what each forward got
    fitters = []
    with caplog.at_level("WARNING", logger="selfres.infer"):
        out = np.empty((6, 40, 40), np.float32)
        for _, t, block in run_tiles(counted, vol, factors=(1, 2, 2), tile_size=(6, 20, 20), fitter_out=fitters):
            out[tuple(slice(a * f, b * f) for (a, b), f in zip(t, (1, 2, 2)))] = block
    sizes = counted.sizes
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert max(sizes) < one_tile / 2 and len(sizes) >= 2 and fitters[0].splits >= 1
    assert "host memory" in caplog.text and "cut into pieces" in caplog.text


def test_the_memory_probe_of_a_self_ensemble_runs_one_member_and_reads_the_networks_width():
    """A self-ensemble runs its members one after another, so its widest activation is one
    member's: the probe runs the network once, not 16 times (the ensemble's guard at x4 spent
    most of its minute in probes), and reads what the network alone reads."""
    import selfres.infer as infer
    from selfres.ensemble import BackProjection, SelfEnsemble

    class Counted(torch.nn.Module):
        forwards = []  # a class attribute: the probe runs a copy of the model

        def __init__(self, inner):
            super().__init__()
            self.inner, self.halo, self.factors = inner, inner.halo, inner.factors

        def forward(self, x):
            Counted.forwards.append(tuple(x.shape))
            return self.inner(x)

    model = _random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1))
    wrapped = BackProjection(SelfEnsemble(model), iterations=1)
    probed = BackProjection(SelfEnsemble(Counted(model)), iterations=1)
    tile = (6, 12, 10)  # not square: a rotated member has y and x swapped
    widest = infer.widest_per_input_voxel(probed, tile, wrapped.halo)
    assert len(Counted.forwards) == 1
    assert widest == infer.widest_per_input_voxel(wrapped, tile, wrapped.halo)
    plain = infer.widest_per_input_voxel(model, tile, wrapped.halo)
    assert widest == pytest.approx(plain)
    assert len(probed.model.members) == 16, "the caller's ensemble keeps its members"


@pytest.mark.parametrize("arch, factors, width, measured", [
    ("resnet3d", (2, 1, 1), 16, 210 * 2),   # a reviewer's VmHWM of one pass: bytes per padded input voxel
    ("resnet3d", (1, 2, 2), 16, 106 * 4),
    ("resnet3d", (2, 2, 2), 64, 219 * 8),
    ("resnet3d", (2, 2, 2), 16, 58 * 8),
])
def test_the_cpu_pass_limit_follows_the_network_not_a_constant_per_output_voxel(monkeypatch, arch, factors, width,
                                                                                measured):
    """48 bytes per output voxel was 1.2-4.5x too low for factors of small product and for wider
    networks: at 2,1,1 a pass the planner judged safe peaked at 3x the memory it had been told
    was left. The limit now comes from the network's widest activation."""
    import selfres.infer as infer

    model = prepare_model(_random_model(ModelSpec(arch=arch, factors=factors, width=width, depth=2)), "cpu")
    monkeypatch.setattr(infer, "host_memory_available", lambda: 100 * 2**20)
    fitters = []
    vol = blob_volume((4, 12, 12))
    list(run_tiles(model, vol, factors=factors, tile_size=(4, 12, 12), fitter_out=fitters))
    assert fitters[0].limit <= 0.8 * 100 * 2**20 / measured  # never more voxels than the measured cost allows
    assert fitters[0].limit >= 0.8 * 100 * 2**20 / (3 * measured)  # nor needlessly few


def test_back_projection_where_the_hosts_free_memory_cannot_be_read(monkeypatch):
    """Off Linux host_memory_available gives None: the whole-volume back-projection compared
    None with its need and raised a TypeError; it now runs in the tiles, with the same output."""
    import selfres.infer as infer
    from selfres.ensemble import BackProjection

    bp = BackProjection(infer.CubicUpsampler((1, 2, 2)), iterations=1)
    vol = blob_volume((4, 16, 16))
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    monkeypatch.setattr(infer, "host_memory_available", lambda *a, **k: None)
    out = predict_array(bp, vol, factors=(1, 2, 2), tile_size=(4, 8, 8))
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_cpu_pass_that_cannot_fit_at_all_says_what_to_change(monkeypatch):
    import selfres.infer as infer
    from selfres.ensemble import BackProjection

    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    bp = BackProjection(model, iterations=4)
    monkeypatch.setattr(infer, "host_memory_available", lambda: 10_000)  # bytes: not even one padded voxel row
    with pytest.raises(MemoryError, match=r"halo of \[.*\] input voxels per side.*back_projection_iterations \(4 now"):
        predict_array(bp, blob_volume((4, 16, 16)), factors=(1, 2, 2), tile_size=(4, 16, 16))
    # a bare network has no back-projection to lower: the advice does not name it
    with pytest.raises(MemoryError, match=r"halo of \[.*\]") as bare:
        predict_array(model, blob_volume((4, 16, 16)), factors=(1, 2, 2), tile_size=(4, 16, 16))
    assert "back_projection" not in str(bare.value) and "infer.tile_size" in str(bare.value)


def test_a_halo_much_larger_than_the_tile_is_reported_when_restoring(caplog):
    from selfres.ensemble import BackProjection

    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((16, 48, 48))
    n_tiles = len(tile_grid(vol.shape, (16, 24, 24)))
    # a scattered block keeps back-projection inside each tile: its halo grows with the iterations
    for iterations, tiles, warned in ((1, [0], False), (6, [0], True), (6, None, False)):
        caplog.clear()
        dest = np.zeros((16, 96, 96), np.float32)
        with caplog.at_level("WARNING", logger="selfres.infer"):
            restore_to_store(BackProjection(model, iterations=iterations), vol, dest, factors=(1, 2, 2),
                             tile_size=(16, 24, 24), tiles=tiles)
        assert ("padded input" in caplog.text and "back_projection_iterations" in caplog.text) is warned
        assert np.abs(dest).max() > 0  # and it restored
    assert n_tiles == 4  # (the whole run above had tiles to spread the halo over)


def test_host_memory_available_takes_the_tightest_cgroup_limit(tmp_path):
    from selfres.infer import host_memory_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    root = tmp_path / "cg"
    job = root / "system.slice" / "slurmstepd.scope" / "job_7"
    job.mkdir(parents=True)
    (root / "system.slice" / "memory.max").write_text("max\n")
    (root / "system.slice" / "memory.current").write_text("5\n")
    (job / "memory.max").write_text(str(4 * 2**30) + "\n")  # sbatch --mem=4G
    (job / "memory.current").write_text(str(2 * 2**30) + "\n")
    (job / "memory.stat").write_text(f"anon 1\nfile 9\ninactive_file {2**30}\nactive_file 5\n")  # reclaimable
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/slurmstepd.scope/job_7\n")
    assert host_memory_available(meminfo=meminfo, cgroup_root=root, proc_cgroup=proc) == 3 * 2**30
    proc.write_text("0::/\n")  # no limit anywhere: what the kernel says is available
    assert host_memory_available(meminfo=meminfo, cgroup_root=root, proc_cgroup=proc) == 20000000 * 1024
    assert host_memory_available(meminfo=tmp_path / "none", cgroup_root=root, proc_cgroup=tmp_path / "none") is None
    # cgroup v1 (memory controller in its own hierarchy), as on hosts that have not moved to v2
    v1 = root / "memory" / "slurm" / "uid_0" / "job_8"
    v1.mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (root / "memory" / "memory.usage_in_bytes").write_text("7\n")
    (v1 / "memory.limit_in_bytes").write_text(str(2 * 2**30) + "\n")
    (v1 / "memory.usage_in_bytes").write_text(str(2**30) + "\n")
    (v1 / "memory.stat").write_text(f"cache 3\ntotal_inactive_file {2**29}\n")
    proc.write_text("4:memory:/slurm/uid_0/job_8\n1:cpu:/\n0::/\n")
    assert host_memory_available(meminfo=meminfo, cgroup_root=root, proc_cgroup=proc) == 2**30 + 2**29


@pytest.mark.parametrize("n, blocks", [(10, 3), (7, 7), (5, 1), (3, 5)])
def test_block_tiles_partition_the_grid(n, blocks):
    from selfres.infer import block_tiles

    parts = [list(block_tiles(n, block=b, blocks=blocks)) for b in range(blocks)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_block_index_out_of_range_is_a_config_error():
    from selfres.errors import ConfigError
    from selfres.infer import block_tiles

    with pytest.raises(ConfigError, match=r"block must be an integer in 0..2"):
        block_tiles(10, block=3, blocks=3)


@pytest.mark.parametrize(
    "chunks, shards, ok",
    [(None, None, True), ((4, 8, 8), None, True), ((3, 8, 8), None, False),
     ((2, 8, 8), (4, 16, 16), True), ((2, 8, 8), (4, 24, 16), False)],
)
def test_store_layout_requires_tiles_to_own_whole_write_units(chunks, shards, ok):
    from selfres.errors import ConfigError
    from selfres.infer import store_layout

    args = dict(factors=(1, 2, 2), tile_size=(4, 8, 8), chunks=chunks, shards=shards)
    if ok:
        shape, ch, sh = store_layout((8, 32, 32), **args)
        assert shape == (8, 64, 64) and ch == (chunks or (4, 16, 16))
    else:
        with pytest.raises(ConfigError, match=r"infer\.(chunks|shards) .* must divide infer.tile_size x scale"):
            store_layout((8, 32, 32), **args)


@pytest.mark.parametrize(
    "shape_in, factors, itemsize, chunks",
    [((100, 1000, 1000), (2, 2, 2), 4, (64, 128, 128)),  # the tile × scale: 64×256×256, 16 MiB
     ((100, 1000, 1000), (4, 4, 4), 4, (64, 128, 128)),  # 128×512×512, 128 MiB
     ((100, 1000, 1000), (2, 2, 2), 2, (64, 128, 256)),
     ((100, 1000, 1000), (1, 2, 2), 1, (32, 256, 256)),  # 2 MiB: kept whole
     ((10, 60, 60), (2, 2, 2), 4, (20, 120, 120))],      # a small volume: one chunk
)
def test_default_output_chunks_are_a_few_mib_that_tiles_own_whole(shape_in, factors, itemsize, chunks):
    """Viewers read a chunk whole: without infer.chunks an output chunk is the tile × scale cut to
    at most 4 MiB, by divisors, so that tiles still own whole chunks (an interoperability
    walkthrough: 128 MiB chunks at ×4)."""
    from selfres.infer import DEFAULT_CHUNK_BYTES, store_layout

    tile = (32, 128, 128)
    shape, got, _ = store_layout(shape_in, factors=factors, tile_size=tile, itemsize=itemsize)
    assert got == chunks
    assert math.prod(got) * itemsize <= DEFAULT_CHUNK_BYTES
    assert all(min(t, n) * f % c == 0 for t, n, f, c in zip(tile, shape_in, factors, got))


def test_default_output_chunks_leave_an_axis_without_a_large_divisor_whole():
    from selfres.infer import default_output_chunks

    assert default_output_chunks((74, 256, 256), (300, 999, 999), 4) == (74, 64, 128)  # 37 would do as well
    assert default_output_chunks((67, 67, 67), (200, 200, 200), 32) == (67, 67, 67)  # primes: no divisor
    assert default_output_chunks((64, 256, 256), (64, 256, 256), 4, max_bytes=2**30) == (64, 256, 256)


def test_a_single_tile_along_an_axis_needs_no_chunk_dividing_it():
    """z holds one tile (the whole of z): its chunks need not divide the tile (a mutation review)."""
    from selfres.infer import store_layout

    shape, chunks, _ = store_layout((10, 256, 256), factors=(2, 2, 2), tile_size=(32, 128, 128), chunks=(8, 128, 128))
    assert shape == (20, 512, 512) and chunks == (8, 128, 128)


def _job(tmp_path, model, vol, final, *, tile_size=(3, 8, 8), **kw):
    from selfres.infer import infer_to_store

    return infer_to_store(model, vol, final, factors=(1, 2, 2), tile_size=tile_size, dtype="float32",
                          voxel_size=(1.0, 0.5, 0.5), fingerprint={"model": "m1"}, **kw)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_scattered_blocks_equal_one_run_and_store_appears_atomically(tmp_path, ngff):
    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 20, 24))
    one = tmp_path / "one.ome.zarr"
    _job(tmp_path, model, vol, one, ngff_version=ngff)
    many = tmp_path / "many.ome.zarr"
    _job(tmp_path, model, vol, many, step="prepare", blocks=3, ngff_version=ngff)
    for b in (2, 0):
        _job(tmp_path, model, vol, many, step="block", block=b, blocks=3, ngff_version=ngff)
    from selfres.errors import SelfresError

    with pytest.raises(SelfresError, match=r"tiles are not written .* rerun block\(s\) 1 of 3"):
        _job(tmp_path, model, vol, many, step="gather", blocks=3, ngff_version=ngff)
    assert not many.exists()
    _job(tmp_path, model, vol, many, step="block", block=1, blocks=3, ngff_version=ngff)
    _job(tmp_path, model, vol, many, step="gather", blocks=3, ngff_version=ngff)
    assert many.exists() and not (tmp_path / ".many.ome.zarr.partial").exists()
    a, b = io.read_ome_zarr(one), io.read_ome_zarr(many)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    np.testing.assert_allclose(np.asarray(b.data), ref, atol=2e-5)
    assert not (tmp_path / ".many.ome.zarr.progress").exists()


@pytest.mark.parametrize("dtype, chunks", [("float32", (3, 8, 8)), ("uint16", (3, 8, 16))])
def test_default_chunks_smaller_than_a_tile_keep_scattered_blocks_exact(tmp_path, monkeypatch, dtype, chunks):
    """Several chunks per tile, sized by the output type: three block jobs writing beside each
    other give the one run's output, voxel for voxel."""
    from selfres import infer

    monkeypatch.setattr(infer, "DEFAULT_CHUNK_BYTES", 3 * 8 * 16 * 2)  # the tile's output: 3×16×16
    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 20, 24))
    params = normalise.NormParams(0.0, 1000.0, 0.1, 99.9)
    kw = dict(dtype=dtype, transform=lambda b: normalise.to_dtype(b, params, dtype))
    one, many = tmp_path / "one.ome.zarr", tmp_path / "many.ome.zarr"
    infer.infer_to_store(model, vol, one, factors=(1, 2, 2), tile_size=(3, 8, 8), voxel_size=(1.0, 0.5, 0.5),
                         fingerprint={"model": "m1"}, **kw)
    for step, b in (("prepare", 0), ("block", 2), ("block", 0), ("block", 1), ("gather", 0)):
        infer.infer_to_store(model, vol, many, factors=(1, 2, 2), tile_size=(3, 8, 8), voxel_size=(1.0, 0.5, 0.5),
                             fingerprint={"model": "m1"}, step=step, block=b, blocks=3, **kw)
    import zarr

    assert zarr.open_group(str(many), mode="r")["0"].chunks == chunks
    np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(one).data), np.asarray(io.read_ome_zarr(many).data))


def test_a_partial_store_begun_with_the_old_default_chunks_resumes(tmp_path, monkeypatch):
    """A scattered run stopped before the default chunks were cut: its prepare step is done and not
    rerun, so its block jobs must take the store as it is, not refuse it (a review)."""
    from selfres import infer

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 20, 24))
    many, one = tmp_path / "many.ome.zarr", tmp_path / "one.ome.zarr"
    _job(tmp_path, model, vol, one)
    _job(tmp_path, model, vol, many, step="prepare", blocks=3, chunks=(3, 16, 16))  # the tile × scale, as before
    _job(tmp_path, model, vol, many, step="block", block=0, blocks=3, chunks=(3, 16, 16))
    monkeypatch.setattr(infer, "DEFAULT_CHUNK_BYTES", 3 * 8 * 8 * 4)  # today's default: smaller
    for b in (1, 2):
        _job(tmp_path, model, vol, many, step="block", block=b, blocks=3)
    stats = _job(tmp_path, model, vol, many, step="gather", blocks=3)
    import zarr

    assert zarr.open_group(str(many), mode="r")["0"].chunks == (3, 16, 16) and stats["tiles"] == 18
    np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(one).data), np.asarray(io.read_ome_zarr(many).data))
    # another job (another model): the store is not kept for its chunks' sake
    _job(tmp_path, model, vol, tmp_path / "other.ome.zarr", step="prepare", blocks=3, chunks=(3, 16, 16))
    from selfres.infer import infer_to_store

    infer_to_store(model, vol, tmp_path / "other.ome.zarr", factors=(1, 2, 2), tile_size=(3, 8, 8), dtype="float32",
                   voxel_size=(1.0, 0.5, 0.5), fingerprint={"model": "m2"}, step="prepare", blocks=3)
    assert zarr.open_group(str(infer.partial_path(tmp_path / "other.ome.zarr")), mode="r")["0"].chunks == (3, 8, 8)


def test_a_finished_store_of_the_same_job_is_kept_when_asked(tmp_path):
    """The model output kept beside a fallen-back sample's interpolation is not a declared
    output, so a rerun killed after it found it in place and recomputed it (74 s of network
    work for 3 interpolation tiles): with reuse_finished a store of the same job is kept."""
    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 20, 24))
    out = tmp_path / "restored_model.ome.zarr"
    first = _job(tmp_path, model, vol, out)
    assert first["computed"] == first["tiles"]
    before = np.asarray(io.read_ome_zarr(out).data)
    dead = _DiesAfter(model, 0)  # any network call fails: nothing may be computed
    (tmp_path / ".restored_model.ome.zarr.partial").mkdir()  # left by an earlier killed run
    for step in ("all", "prepare", "block", "gather"):
        kept = _job(tmp_path, dead, vol, out, step=step, reuse_finished=True)
        assert kept["computed"] == 0 and kept["resumed"] == kept["tiles"]
    np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(out).data), before)
    assert not (tmp_path / ".restored_model.ome.zarr.partial").exists()  # and no litter is left
    from selfres.infer import infer_to_store

    with pytest.raises(_Killed):  # another job (fingerprint) is computed again, and so is any job without reuse
        infer_to_store(dead, vol, out, factors=(1, 2, 2), tile_size=(3, 8, 8), dtype="float32",
                       voxel_size=(1.0, 0.5, 0.5), fingerprint={"model": "m2"}, reuse_finished=True)
    with pytest.raises(_Killed):
        _job(tmp_path, dead, vol, out)


def test_the_room_check_is_told_of_a_model_output_only_where_this_same_job_finished_it(tmp_path):
    """`kept_model_output`: the fall-back's model output counts as kept (no room needed) only when
    finished by this job — its fingerprint holds the job's, the store's layout added — not when
    another job made it or it is unfinished, since those are written again."""
    from selfres.infer import infer_to_store
    from selfres.pipeline import kept_model_output

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 20, 24))
    out = tmp_path / "restored.ome.zarr"
    model_out = tmp_path / "restored_model.ome.zarr"
    job = {"model": "m1", "settings": {"tile": 8}}
    assert kept_model_output(out, job) == []  # not there
    infer_to_store(model, vol, model_out, factors=(1, 2, 2), tile_size=(3, 8, 8), dtype="float32",
                   voxel_size=(1.0, 0.5, 0.5), fingerprint=job | {"kind": "model"}, step="prepare")
    assert kept_model_output(out, job) == []  # begun, not finished
    infer_to_store(model, vol, model_out, factors=(1, 2, 2), tile_size=(3, 8, 8), dtype="float32",
                   voxel_size=(1.0, 0.5, 0.5), fingerprint=job | {"kind": "model"})
    assert kept_model_output(out, job) == [model_out]
    assert kept_model_output(out, job | {"model": "m2"}) == []  # another model's job
    assert kept_model_output(out, job | {"settings": {"tile": 16}}) == []


class _Killed(Exception):
    pass


class _DiesAfter(torch.nn.Module):
    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls, self.halo, self.seen = inner, calls, inner.halo, 0

    def forward(self, x):
        self.seen += 1
        if self.seen > self.calls:
            raise _Killed()
        return self.inner(x)


def test_a_gather_computing_the_tiles_itself_resumes_after_a_kill(tmp_path):
    """A gather that finds no prepared store computes every tile itself (resumably, its log
    says); stopped by a time limit, its retry found a store whose tiles no block had written and
    asked for the blocks' rerun — on every retry and every later night (a self-check)."""
    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))  # 12 tiles
    final = tmp_path / "out.ome.zarr"
    with pytest.raises(_Killed):
        _job(tmp_path, _DiesAfter(model, 5), vol, final, step="gather", blocks=2)
    counting = _DiesAfter(model, 10**6)
    stats = _job(tmp_path, counting, vol, final, step="gather", blocks=2)
    assert stats["resumed"] == 5 and counting.seen == 7
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    np.testing.assert_allclose(np.asarray(io.read_ome_zarr(final).data), ref, atol=2e-5)


def test_killed_run_resumes_from_verified_tiles_only(tmp_path):
    from selfres.infer import PartialStore

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))  # grid 2 x 2 x 3 = 12 tiles
    final = tmp_path / "out.ome.zarr"
    with pytest.raises(_Killed):
        _job(tmp_path, _DiesAfter(model, 5), vol, final)
    store = PartialStore(final)
    assert not final.exists() and store.path.exists()
    recorded = store.records()
    assert len(recorded) == 5
    # damage one recorded tile (as a torn write would) and add a torn record line
    import zarr

    arr = zarr.open_array(str(store.path / "0"), mode="r+")
    arr[0:3, 0:16, 0:16] = -1.0
    with open(store.meta / "done-all.jsonl", "a") as fh:
        fh.write('{"tile": 11, "cr')
    counting = _DiesAfter(model, 10**6)
    stats = _job(tmp_path, counting, vol, final)
    assert stats["resumed"] == 4 and stats["computed"] == 12 - 4 == counting.seen
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    np.testing.assert_allclose(np.asarray(io.read_ome_zarr(final).data), ref, atol=2e-5)
    # another model: the partial store is not reused
    with pytest.raises(_Killed):
        _job(tmp_path, _DiesAfter(model, 2), vol, final)
    again = _DiesAfter(model, 10**6)
    from selfres.infer import infer_to_store

    out = infer_to_store(again, vol, final, factors=(1, 2, 2), tile_size=(3, 8, 8), dtype="float32",
                         voxel_size=(1.0, 0.5, 0.5), fingerprint={"model": "m2"})
    assert out["resumed"] == 0 and again.seen == 12


def test_tiles_made_another_way_are_recomputed_and_mixed_blocks_are_recorded(tmp_path, monkeypatch, caplog):
    """A scattered block resumed on another kind of device (or precision) recomputes the
    tiles an earlier run made, so a block is never a mix; gather records every kind used."""
    import json as _json

    from selfres import infer as I

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))  # 12 tiles
    final = tmp_path / "out.ome.zarr"
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cuda/bfloat16")
    _job(tmp_path, model, vol, final, step="prepare", blocks=2)
    with pytest.raises(_Killed):  # block 0 dies half-way on the "GPU"
        _job(tmp_path, _DiesAfter(model, 3), vol, final, step="block", block=0, blocks=2)
    _job(tmp_path, model, vol, final, step="block", block=1, blocks=2)
    store = I.PartialStore(final)
    assert set(store.computes().values()) == {"cuda/bfloat16"} and len(store.records()) == 3 + 6
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cpu/float32")
    counting = _DiesAfter(model, 10**6)
    stats = _job(tmp_path, counting, vol, final, step="block", block=0, blocks=2)
    assert stats["resumed"] == 0 and counting.seen == 6  # the 3 "GPU" tiles of block 0 were redone
    assert "recomputing them so that the block is not a mix" in caplog.text
    kinds = store.computes()
    assert {kinds[i] for i in I.block_tiles(12, block=0, blocks=2)} == {"cpu/float32"}
    assert {kinds[i] for i in I.block_tiles(12, block=1, blocks=2)} == {"cuda/bfloat16"}
    _job(tmp_path, model, vol, final, step="gather", blocks=2)
    assert "the blocks were computed in different ways (cpu/float32, cuda/bfloat16)" in caplog.text
    attrs = _json.loads((final / ".zattrs").read_text())
    assert attrs["selfres"]["compute"] == ["cpu/float32", "cuda/bfloat16"]


def test_changing_blocks_and_device_keeps_the_newest_record_of_each_tile(tmp_path, monkeypatch):
    """The store is kept when infer.blocks changes; tiles recomputed under the new split
    are recorded in another file than their old records, and the newest must win (else
    gather fails for ever, or the labels lie)."""
    import json as _json

    from selfres import infer as I

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))  # 12 tiles
    final = tmp_path / "out.ome.zarr"
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cuda/bfloat16")
    _job(tmp_path, model, vol, final, step="prepare", blocks=2)
    _job(tmp_path, model, vol, final, step="block", block=1, blocks=2)
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cpu/float32")
    counting = _DiesAfter(model, 10**6)
    _job(tmp_path, counting, vol, final, step="prepare", blocks=1)
    stats = _job(tmp_path, counting, vol, final, step="block", block=0, blocks=1)
    assert counting.seen == 12 and stats["resumed"] == 0
    _job(tmp_path, model, vol, final, step="gather", blocks=1)
    assert _json.loads((final / ".zattrs").read_text())["selfres"]["compute"] == ["cpu/float32"]
    ref = predict_single_pass(model, vol, factors=(1, 2, 2))
    np.testing.assert_allclose(np.asarray(io.read_ome_zarr(final).data), ref, atol=2e-5)


def test_interpolation_tiles_are_labelled_float32_whatever_amp_says(tmp_path, monkeypatch):
    import json as _json

    from selfres import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    for net, name, want in ((CubicUpsampler((1, 2, 2)), "interp", "cpu/float32"),
                            (prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8,
                                                                   depth=1)), "cpu"), "net", "cpu/bfloat16")):
        final = tmp_path / f"{name}.ome.zarr"
        _job(tmp_path, net, blob_volume((6, 16, 24)), final, amp=True)
        assert _json.loads((final / ".zattrs").read_text())["selfres"]["compute"] == [f"{want} {CODE}"]


def test_compute_label_names_the_device_the_precision_and_the_code(monkeypatch):
    from selfres import codeinfo, models

    assert models.compute_label("cpu", amp=False) == f"cpu/float32 {CODE}"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.compute_label("cpu", amp=True) == f"cpu/bfloat16 {CODE}"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.compute_label("cpu", amp=True) == f"cpu/float32 {CODE}"
    monkeypatch.setattr(models, "cuda_native_bf16", lambda: False)
    assert models.compute_label("cuda", amp=True) == f"cuda/float16 {CODE}"
    assert models.compute_label("cuda:1", amp=False) == f"cuda/float32 {CODE}"
    monkeypatch.setattr(codeinfo, "source_digest", lambda: "0123456789abcdef")  # another code: another label
    assert models.compute_label("cpu", amp=False) == "cpu/float32 code 01234567"


@pytest.mark.parametrize("ngff, shards", [("0.4", None), ("0.5", (4, 16, 16))])
def test_output_opens_with_the_ome_zarr_reader(tmp_path, ngff, shards):
    """What napari's OME-Zarr plugin uses (ome-zarr's Reader) sees the image and its pyramid."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    model = CubicUpsampler((1, 2, 2))  # the format is under test, not the network
    vol = blob_volume((4, 64, 72), n=20)
    final = tmp_path / "r.ome.zarr"
    _job(tmp_path, model, vol, final, ngff_version=ngff, chunks=(2, 16, 16) if shards else None, shards=shards,
         tile_size=(4, 32, 32))
    nodes = list(Reader(parse_url(str(final)))())
    image = nodes[0]
    assert image.metadata["axes"][0]["name"] == "z"
    levels = image.data
    assert tuple(levels[0].shape) == (4, 128, 144) and len(levels) >= 2
    np.testing.assert_allclose(np.asarray(levels[0]), predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    import json

    if ngff == "0.4":
        assert json.loads((final / ".zattrs").read_text())["multiscales"][0]["version"] == "0.4"
    else:
        assert json.loads((final / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    if shards:  # few large files: one per shard, holding several chunks
        meta = json.loads((final / "0" / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == list(shards)


@pytest.mark.parametrize(
    "arch, factors, dims",
    [("svision_mini", (2, 2, 2), 3), ("svision_mini", (1, 2, 2), 3), ("resnet3d", (4, 4, 4), 3),
     ("resnet3d", (1, 3, 2), 3), ("resnet3d", (1, 2, 2), 2)],
)
def test_fused_subpixel_model_equals_the_trained_one_everywhere(arch, factors, dims):
    """Sub-pixel conv and banded cubic base: tiled output of the fused net equals the trained net's."""
    from selfres.infer import SubpixelConv, fuse_for_inference

    model = _random_model(ModelSpec(arch=arch, factors=factors, width=8, depth=1, dims=dims))
    fused = fuse_for_inference(model)
    assert any(isinstance(m, SubpixelConv) for m in fused.modules())
    assert not any(isinstance(m, SubpixelConv) for m in model.modules())  # the original is untouched
    x = torch.from_numpy(blob_volume((5, 9, 11), n=10))[None, None]
    with torch.inference_mode():
        a, b = fused(x).numpy(), model(x).numpy()
    # equal wherever tiled inference keeps the output (the halo of >= 2 voxels is cropped)
    keep = (slice(None), slice(None)) + tuple(slice(h * f, -h * f or None) for h, f in zip(model.halo, factors))
    np.testing.assert_allclose(a[keep], b[keep], atol=2e-6)
    vol = blob_volume((6, 10, 12), n=10)
    np.testing.assert_allclose(predict_array(fused, vol, factors=factors, tile_size=(4, 5, 7)),
                               predict_single_pass(model, vol, factors=factors), atol=2e-5)
    if arch == "svision_mini":  # its 12-channel convs are widened to 16 (zero weights) for oneDNN
        convs = [m for m in fused.lr_body.modules() if isinstance(m, torch.nn.Conv3d)]
        assert all(c.out_channels % 8 == 0 for c in convs)
    paper = _random_model(ModelSpec(arch="svision_paper", factors=(2, 2, 2), width=8, depth=1))
    assert fuse_for_inference(paper) is paper  # pixel-shuffle nets have nothing to fuse


def test_gather_without_its_prepared_store_computes_the_tiles_itself(tmp_path, caplog):
    """A run stopped after gather had moved the store into place: Snakemake removes the output as
    incomplete and reruns gather alone, whose prepare and block markers are up to date. Gather
    refused ('no prepared inference store') at that run and every later one, until someone
    deleted the markers by hand; it now computes the tiles itself (resumable), the same output."""
    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))
    final = tmp_path / "out.ome.zarr"
    _job(tmp_path, model, vol, final, step="prepare", blocks=2)
    for b in (0, 1):
        _job(tmp_path, model, vol, final, step="block", block=b, blocks=2)
    _job(tmp_path, model, vol, final, step="gather", blocks=2)
    first = np.asarray(io.read_ome_zarr(final).data)
    shutil.rmtree(final)  # --rerun-incomplete removes it; no partial store is left
    with caplog.at_level("WARNING", logger="selfres.infer"):
        out = _job(tmp_path, model, vol, final, step="gather", blocks=2)
    assert "no prepared store with the block jobs' tiles" in caplog.text and out["computed"] == out["tiles"]
    np.testing.assert_array_equal(np.asarray(io.read_ome_zarr(final).data), first)
    assert not (tmp_path / ".out.ome.zarr.partial").exists()


def test_a_block_without_a_prepared_store_prepares_it_and_a_stale_one_is_refused(tmp_path, caplog):
    """After an update of selfres changed the block jobs' command (not prepare's), Snakemake
    reran the blocks alone: the last run's gather had moved the store into place, and every
    block failed ('no prepared inference store'), every scattered sample with them, for a
    night; the next run then kept the old output. A block with no store prepares it (one at a
    time) and computes its own tiles; the gather after them finds every tile. (Leaving the
    tiles to the gather, tried first, put the whole volume on one CPU job whose retry after a
    time limit then failed for good: a self-check.)"""
    import zarr

    from selfres.errors import SelfresError
    from selfres.infer import infer_to_store

    model = CubicUpsampler((1, 2, 2))
    vol = blob_volume((4, 8, 8), n=5)
    with caplog.at_level("WARNING", logger="selfres.infer"):
        first = _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="block", block=1, blocks=2,
                     tile_size=(2, 8, 8))
    second = _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="block", block=0, blocks=2, tile_size=(2, 8, 8))
    assert first["computed"] == second["computed"] == 1 and "block 1 prepares it" in caplog.text
    gathered = _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="gather", blocks=2, tile_size=(2, 8, 8))
    assert gathered["computed"] == 0
    np.testing.assert_allclose(zarr.open(str(tmp_path / "o.ome.zarr"), mode="r")["0"][...],
                               degrade.upscale_cubic(vol, (1, 2, 2)), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.zarr"], "no store, record or lock left beside it"
    shutil.rmtree(tmp_path / "o.ome.zarr")
    _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="prepare", blocks=2)
    with pytest.raises(SelfresError, match=r"prepared for other settings.*differs in model"):
        infer_to_store(model, vol, tmp_path / "o.ome.zarr", step="block", blocks=2, factors=(1, 2, 2),
                       tile_size=(3, 8, 8), dtype="float32", voxel_size=None, fingerprint={"model": "other"})


# --------------------------------------------------------------------------- #
# CPU bfloat16 inference (infer.amp on a CPU with native bf16)
# --------------------------------------------------------------------------- #

def test_cpu_bf16_detection_follows_the_override(monkeypatch):
    from selfres.models import autocast_context, cpu_has_native_bf16

    for value, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("SELFRES_CPU_BF16", value)
        cpu_has_native_bf16.cache_clear()
        assert cpu_has_native_bf16() is expected
        with autocast_context("cpu", enabled=True, cpu=True):
            assert torch.is_autocast_enabled("cpu") is expected
        with autocast_context("cpu", enabled=True):  # training: float32 on CPU always
            assert not torch.is_autocast_enabled("cpu")
        with autocast_context("cpu", enabled=False, cpu=True):
            assert not torch.is_autocast_enabled("cpu")
    cpu_has_native_bf16.cache_clear()


@pytest.mark.cpu_bf16
def test_cpu_bf16_inference_stays_close_to_float32_and_the_reference_stays_exact():
    spec = ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=8, depth=2)
    model = _random_model(spec)
    vol = blob_volume((8, 20, 20))
    fp32 = predict_array(model, vol, factors=(2, 2, 2), tile_size=(4, 10, 10), amp=False)
    bf16 = predict_array(model, vol, factors=(2, 2, 2), tile_size=(4, 10, 10), amp=True)
    err = np.abs(bf16 - fp32)
    assert bf16.dtype == np.float32
    assert err.max() > 0  # bf16 really ran
    # the body runs in bf16 (8-bit mantissa); the tricubic base it is added to is float32
    assert err.mean() < 2e-3 * float(np.abs(fp32).mean()) + 1e-4 and err.max() < 3e-2
    # tricubic interpolation (the guard's reference) is never computed in bf16
    cubic = predict_array(CubicUpsampler((2, 2, 2)), vol, factors=(2, 2, 2), tile_size=(3, 5, 7), amp=True)
    np.testing.assert_allclose(cubic, np.asarray(degrade.upscale_cubic(vol, (2, 2, 2))), atol=1e-5)


@pytest.mark.cpu_bf16
def test_cpu_bf16_isotropic_slices_stay_close_to_float32():
    from selfres.isotropic import predict_slices

    spec = ModelSpec(arch="iso2d", width=8, depth=2)
    model = _random_model(spec)
    slices = blob_volume((4, 24, 32))
    fp32 = predict_slices(model, slices, amp=False)
    bf16 = predict_slices(model, slices, amp=True)
    err = np.abs(bf16 - fp32)
    # random weights make the body as large as the input: bf16's 8-bit mantissa shows (~0.4 %)
    assert err.max() > 0 and err.mean() < 5e-3 * float(np.abs(fp32).mean())


def test_float16_inference_of_a_gpu_without_bf16_stays_close_and_keeps_the_float32_parts(monkeypatch):
    """A GPU without native bfloat16 (V100, T4, P100…) infers in float16 (a ``cuda/float16``
    label); its arithmetic, run here on the CPU's float16 autocast: the network body is
    rounded, the parts that switch autocast off — the tricubic base, back-projection, the
    reference interpolation, a base-less network's last conv — stay float32."""
    from selfres import models
    from selfres.ensemble import wrap_for_inference
    from selfres.isotropic import predict_slices

    vol = blob_volume((8, 20, 20))

    def both(model, factors, tile):
        fp32 = predict_array(model, vol, factors=factors, tile_size=tile, amp=False)
        with monkeypatch.context() as m:
            m.setattr(models, "autocast_dtype", lambda device, *, enabled, **k: torch.float16 if enabled else None)
            fp16 = predict_array(model, vol, factors=factors, tile_size=tile, amp=True)
        return fp32, fp16

    from selfres.noise import NoiseLevel

    # as inference runs them: prepared (banded cubic base, fused layers), back-projection shrunk by the noise
    net = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=8, depth=2)), "cpu")
    wrapped = wrap_for_inference(net, back_projection_iterations=1, back_projection_shrink=True,
                                 degradation=degrade.Degradation(), noise_level=NoiseLevel(slope=0.01, floor=1e-4))
    for model in (net, wrapped):
        fp32, fp16 = both(model, (2, 2, 2), (4, 10, 10))
        err = np.abs(fp16 - fp32)
        assert fp16.dtype == np.float32 and np.isfinite(fp16).all()
        assert err.max() > 0  # float16 really ran
        assert err.mean() < 1e-3 * float(np.abs(fp32).mean()) and err.max() < 1e-2
    # an untrained network (its correction 0) returns its float32 tricubic base exactly, and
    # the reference interpolation is float32: rounded to float16 they would be off by ~1e-4;
    # back-projection after it (tricubic + back-projection) is float32 too
    untrained = build_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=8, depth=2)).eval()
    tri = np.asarray(degrade.upscale_cubic(vol, (2, 2, 2)))
    for model in (untrained, prepare_model(untrained, "cpu"), CubicUpsampler((2, 2, 2))):
        np.testing.assert_allclose(both(model, (2, 2, 2), (4, 10, 10))[1], tri, atol=2e-6)
    fp32, fp16 = both(wrap_for_inference(prepare_model(untrained, "cpu"), back_projection_iterations=1,
                                         back_projection_shrink=True, degradation=degrade.Degradation(),
                                         noise_level=NoiseLevel(slope=0.01, floor=1e-4)), (2, 2, 2), (4, 10, 10))
    assert np.abs(fp32 - tri).max() > 1e-3  # back-projection changed the output
    np.testing.assert_allclose(fp16, fp32, atol=2e-6)
    # a network without a base: its last conv in float32, so the output is not float16-rounded
    bare = _random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1, residual="none"))
    fp32, fp16 = both(bare, (1, 2, 2), (4, 10, 10))
    assert len(np.unique(fp16)) > len(np.unique(fp16.astype(np.float16)))
    # isotropic slices
    iso = _random_model(ModelSpec(arch="iso2d", width=8, depth=2))
    slices = blob_volume((4, 24, 32))
    ref = predict_slices(iso, slices, amp=False)
    monkeypatch.setattr(models, "autocast_dtype", lambda device, *, enabled, **k: torch.float16 if enabled else None)
    half = predict_slices(iso, slices, amp=True)
    err = np.abs(half - ref)
    assert np.isfinite(half).all() and err.max() > 0 and err.mean() < 1e-3 * float(np.abs(ref).mean())


# --------------------------------------------------------------------------- #
# GPU passes fitted to memory (the arithmetic and the merged-pass path run on CPU)
# --------------------------------------------------------------------------- #

def test_pass_tile_for_budget_is_the_largest_union_of_tiles_that_fits():
    from selfres.infer import pass_tile_for_budget

    tile, shape, halo = (8, 16, 16), (40, 100, 90), (3, 3, 3)

    def padded(p):
        return int(np.prod([n + 2 * h for n, h in zip(p, halo)]))

    assert pass_tile_for_budget(tile, shape, halo, 0) == tile  # never less than one tile
    assert pass_tile_for_budget(tile, shape, halo, padded(shape)) == shape  # everything fits: the volume
    budget = 40 * padded(tile)
    p = pass_tile_for_budget(tile, shape, halo, budget)
    assert padded(p) <= budget
    assert all(n % t == 0 or n == s for n, t, s in zip(p, tile, shape))  # whole tiles (or the volume's end)
    for ax in range(3):  # maximal: one more tile along any axis would not fit (or the axis is full)
        if p[ax] < shape[ax]:
            bigger = list(p)
            bigger[ax] = min(p[ax] + tile[ax], shape[ax])
            assert padded(bigger) > budget
    # the shortest side grows first (least halo per voxel); y and x before z on a tie
    assert pass_tile_for_budget((4, 16, 16), (64, 64, 64), (0, 0, 0), 16 * 16 * 16) == (16, 16, 16)
    assert pass_tile_for_budget((16, 16, 16), (64, 64, 64), (0, 0, 0), 16 * 32 * 32) == (16, 32, 32)


@pytest.mark.parametrize("skip_some", [False, True])
def test_merged_passes_equal_one_pass_and_keep_the_grid(monkeypatch, skip_some):
    import selfres.infer as infer_mod
    from selfres.infer import run_tiles

    model = _random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=8, depth=1))
    vol = blob_volume((7, 22, 26))
    tile = (3, 8, 8)
    monkeypatch.setattr(infer_mod, "fit_pass_tile", lambda *a, **k: (6, 16, 24))  # as a GPU would
    ref = predict_single_pass(model, vol, factors=(2, 2, 2))
    grid = tile_grid(vol.shape, tile)
    skip = (lambda i: i % 3 == 0) if skip_some else None
    fitters: list = []
    got = {i: (t, out) for i, t, out in run_tiles(model, vol, factors=(2, 2, 2), tile_size=tile, skip=skip,
                                                   fitter_out=fitters)}
    expected = [i for i in range(len(grid)) if not (skip and skip(i))]
    assert sorted(got) == expected  # every wanted grid tile once, none of the skipped
    assert fitters[0].pass_tile == (6, 16, 24)
    for i, (t, out) in got.items():
        assert t == grid[i]
        np.testing.assert_allclose(out, ref[tuple(slice(a * 2, b * 2) for a, b in t)], atol=2e-5)


def test_a_batch_above_the_gpu_caps_runs_tile_by_tile(monkeypatch):
    """The activation and host caps hold a batch of tiles (a pass is never smaller than one
    tile, and one tile runs whole): above them the tiles run one by one, the output unchanged."""
    import selfres.infer as infer_mod
    from selfres.infer import run_tiles

    model = _random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((4, 24, 32))
    tile = (4, 12, 16)
    padded = int(np.prod([t + 2 * h for t, h in zip(tile, model.halo)]))

    def fitted(*args, limit_out=None, **kwargs):  # as on a GPU whose caps hold one padded tile, not two
        limit_out.append(1.5 * padded)
        return tile

    monkeypatch.setattr(infer_mod, "fit_pass_tile", fitted)
    seen = _OomAbove(model, limit=10**9)  # records each forward's input size
    fitters: list = []
    out = infer_mod._assemble(run_tiles(seen, vol, factors=(1, 2, 2), tile_size=tile, batch_size=2,
                                        fitter_out=fitters), vol.shape, (1, 2, 2))
    assert max(seen.sizes) == padded and len(seen.sizes) == 4 and fitters[0].splits == 0
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    # without the caps the same tiles go two at a time
    monkeypatch.setattr(infer_mod, "fit_pass_tile", lambda *a, **k: tile)
    seen.sizes.clear()
    list(run_tiles(seen, vol, factors=(1, 2, 2), tile_size=tile, batch_size=2))
    assert max(seen.sizes) == 2 * padded


def test_an_out_of_memory_merged_pass_is_halved_and_the_output_is_unchanged(monkeypatch):
    import selfres.infer as infer_mod

    model = _random_model(ModelSpec(arch="svision_mini", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((4, 24, 24))
    tile = (4, 8, 8)
    monkeypatch.setattr(infer_mod, "fit_pass_tile", lambda *a, **k: (4, 24, 24))
    per_tile = np.prod([t + 2 * h for t, h in zip(tile, model.halo)])
    oom = _OomAbove(model, limit=2 * per_tile)
    out = predict_array(oom, vol, factors=(1, 2, 2), tile_size=tile)
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    assert max(oom.sizes) <= 2 * per_tile and min(oom.sizes) > 0


def test_fit_pass_tile_is_one_tile_off_cuda():
    from selfres.infer import fit_pass_tile

    model = _random_model(ModelSpec(arch="svision_mini", factors=(2, 2, 2)))
    assert fit_pass_tile(model, tile_size=(32, 128, 128), shape=(10, 300, 60), device=torch.device("cpu"),
                         amp=True) == (10, 128, 60)


def test_a_fitted_gpu_pass_stays_under_the_hosts_share_and_the_activation_cap(monkeypatch):
    """Planned without a GPU: the probe's figures are in the model's cache and the free GPU
    memory is faked (60 GiB). A job of 1 GiB (Slurm --mem) holds a pass's output on the host:
    the pass stays under what it can take, and under the activation cap whatever the budget."""
    import selfres.infer as infer_mod

    model = _random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=16, depth=2))
    tile, shape, cuda = (32, 128, 128), (256, 1024, 1024), torch.device("cuda")
    padded = tuple(t + 2 * h for t, h in zip(tile, model.halo))
    monkeypatch.setattr(infer_mod, "gpu_memory_budget", lambda device, fraction: 60 * 2**30)
    model.__dict__["_selfres_pass_bytes"] = {(padded, False, str(cuda)): (400.0, 64.0)}  # bytes, widest per voxel

    def padded_voxels(p):
        return math.prod(a + 2 * h for a, h in zip(p, model.halo))

    host = infer_mod.gpu_pass_host_limit((2, 2, 2), available=2**30)
    small = infer_mod.fit_pass_tile(model, tile_size=tile, shape=shape, device=cuda, amp=False, host_voxels=host)
    assert padded_voxels(small) <= host
    roomy = infer_mod.fit_pass_tile(model, tile_size=tile, shape=shape, device=cuda, amp=False)
    assert padded_voxels(roomy) <= infer_mod.pass_voxel_cap(64.0) < padded_voxels(shape)


def test_a_wide_network_gets_smaller_gpu_passes():
    """The paper's net at ×4 holds 1024 channels per input voxel before its pixel shuffle: an
    8 M-voxel pass would hold 2³³ elements, past the 32-bit indexing some kernels use."""
    from selfres.infer import MAX_PASS_VOXELS, pass_voxel_cap, widest_activation

    model = _random_model(ModelSpec(arch="svision_paper", factors=(4, 4, 4))).eval()
    x = torch.zeros(1, 1, 6, 8, 8)
    with torch.no_grad(), widest_activation(model) as widest:
        model(x)
    per_voxel = widest[0] / x.numel()
    assert per_voxel >= 1024
    assert pass_voxel_cap(per_voxel) * per_voxel < 2**31 and pass_voxel_cap(per_voxel) < MAX_PASS_VOXELS
    assert pass_voxel_cap(64) == MAX_PASS_VOXELS  # the default nets keep the fixed cap
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_split_prelu_equals_prelu_and_prepare_model_keeps_the_output():
    from selfres.infer import SplitPReLU, split_prelus

    torch.manual_seed(1)
    for shape, fmt in (((2, 6, 5, 7, 9), torch.channels_last_3d), ((3, 6, 11, 13), torch.channels_last)):
        prelu = torch.nn.PReLU(6)
        with torch.no_grad():
            prelu.weight.uniform_(-0.5, 0.5)
        x = torch.randn(shape).contiguous(memory_format=fmt)
        with torch.no_grad():
            torch.testing.assert_close(SplitPReLU(prelu)(x), prelu(x), rtol=0, atol=0)
    seq = split_prelus(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.PReLU(4),
                                           torch.nn.Sequential(torch.nn.PReLU())))
    assert [type(m).__name__ for m in seq.modules()].count("SplitPReLU") == 2
    for arch in ("resnet3d", "svision_mini"):
        model = _random_model(ModelSpec(arch=arch, factors=(2, 2, 2), width=8, depth=2))
        fast = prepare_model(model, torch.device("cpu"))
        assert any(isinstance(m, SplitPReLU) for m in fast.modules())
        assert not any(isinstance(m, SplitPReLU) for m in model.modules())  # the original is untouched
        vol = blob_volume((8, 20, 20))
        np.testing.assert_allclose(predict_single_pass(fast, vol, factors=(2, 2, 2)),
                                   predict_single_pass(model, vol, factors=(2, 2, 2)), atol=2e-5)


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    from selfres.infer import keep_freed_memory

    keep_freed_memory.cache_clear()
    monkeypatch.setenv("SELFRES_MALLOC_TUNE", "0")
    assert keep_freed_memory() is False
    keep_freed_memory.cache_clear()
    monkeypatch.delenv("SELFRES_MALLOC_TUNE")
    assert isinstance(keep_freed_memory(), bool)
    keep_freed_memory.cache_clear()


def test_only_the_command_sets_the_process_allocator(tmp_path, monkeypatch):
    """keep_freed_memory changes the whole process's malloc: a library call (infer_to_store)
    must not make it, the selfres command makes it once per run."""
    import selfres.allocator as allocator_module
    import selfres.infer as infer_module
    from selfres import cli

    calls = []
    monkeypatch.setattr(infer_module, "keep_freed_memory", lambda: calls.append("infer") or True)
    monkeypatch.setattr(allocator_module, "keep_freed_memory", lambda: calls.append(1) or True)
    _job(tmp_path, CubicUpsampler((1, 2, 2)), blob_volume((6, 16, 16)), tmp_path / "o.ome.zarr")
    assert calls == []
    assert cli.main(["psf-sigma", "--na", "1.0", "--wavelength-um", "0.5", "--refractive-index", "1.33"]) == 0
    assert calls == [1]


# --------------------------------------------------------------------------- #
# back-projection over the whole volume
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("factors, iterations, shape", [
    ((1, 2, 2), 1, (5, 30, 26)),
    ((2, 2, 2), 3, (9, 30, 26)),
    ((4, 4, 4), 1, (9, 21, 26)),
    ((1, 2, 2), 2, (1, 30, 26)),  # 2-D
])
def test_whole_volume_back_projection_equals_one_pass_and_is_taken(factors, iterations, shape, caplog):
    from selfres.ensemble import BackProjection

    bp = BackProjection(_random_model(ModelSpec(arch="resnet3d", factors=factors, width=8, depth=1)),
                        iterations=iterations)
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    ref = predict_single_pass(bp, vol, factors=factors)
    dest = np.zeros(ref.shape, np.float32)
    with caplog.at_level("INFO", logger="selfres.infer"):
        restore_to_store(bp, vol, dest, factors=factors, tile_size=(4, 16, 16), amp=False)
    assert f"({iterations} iteration{'' if iterations == 1 else 's'}) over the whole volume" in caplog.text
    np.testing.assert_allclose(dest, ref, atol=1e-5)


def test_whole_volume_back_projection_falls_back_to_tiles_without_memory_and_for_a_block(monkeypatch, caplog):
    import selfres.infer as infer
    from selfres.ensemble import BackProjection

    bp = BackProjection(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)),
                        iterations=2)
    vol = np.random.default_rng(1).random((6, 40, 36)).astype(np.float32)
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    assert infer.whole_volume_back_projection(bp, vol.shape, (1, 2, 2)) is bp
    assert infer.whole_volume_back_projection(bp, vol.shape, (1, 2, 2), whole_run=False) is None
    assert infer.whole_volume_back_projection(bp, vol.shape, (1, 2, 2), device="cuda") is None
    assert infer.whole_volume_back_projection(bp.model, vol.shape, (1, 2, 2)) is None  # nothing to project
    need = math.prod((n + 2 * r) * f for n, r, f in zip(vol.shape, bp.step_reach, (1, 2, 2)))
    need *= infer.WHOLE_VOLUME_BP_BYTES_PER_OUTPUT_VOXEL
    assert infer.whole_volume_back_projection(bp, vol.shape, (1, 2, 2), available=2 * need) is bp
    assert infer.whole_volume_back_projection(bp, vol.shape, (1, 2, 2), available=2 * need - 1) is None
    # shrunk corrections hold more buffers on the input grid: the same memory no longer suffices
    from selfres.noise import NoiseLevel

    shrunk = BackProjection(bp.model, iterations=2, noise_level=NoiseLevel(0.01, 0.001))
    inputs = math.prod(n + 2 * r for n, r in zip(vol.shape, shrunk.step_reach))
    need_shrunk = inputs * (4 * infer.WHOLE_VOLUME_BP_BYTES_PER_OUTPUT_VOXEL
                            + infer.WHOLE_VOLUME_SHRINK_BYTES_PER_INPUT_VOXEL)
    assert infer.whole_volume_back_projection(shrunk, vol.shape, (1, 2, 2), available=2 * need_shrunk) is shrunk
    assert infer.whole_volume_back_projection(shrunk, vol.shape, (1, 2, 2), available=2 * need_shrunk - 1) is None
    monkeypatch.setattr(infer, "host_memory_available", lambda: 2 * need - 1)
    monkeypatch.setattr(infer, "cpu_pass_limit", lambda *a, **k: math.inf)  # tiles themselves still fit
    dest = np.zeros(ref.shape, np.float32)
    with caplog.at_level("INFO", logger="selfres.infer"):
        restore_to_store(bp, vol, dest, factors=(1, 2, 2), tile_size=(3, 16, 16), amp=False)
    assert "runs inside each tile" in caplog.text and ") over the whole volume" not in caplog.text
    np.testing.assert_allclose(dest, ref, atol=1e-5)


def test_whole_volume_back_projection_resumes_only_the_missing_tiles():
    from selfres.ensemble import BackProjection

    bp = BackProjection(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)),
                        iterations=1)
    vol = np.random.default_rng(2).random((4, 32, 32)).astype(np.float32)
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    grid = tile_grid(vol.shape, (4, 16, 16))
    dest = np.full(ref.shape, -7.0, np.float32)
    done = {0, 3}
    written: list[int] = []
    stats = restore_to_store(bp, vol, dest, factors=(1, 2, 2), tile_size=(4, 16, 16), amp=False,
                             done_tiles=done, on_tile_done=written.append)
    assert sorted(written) == [1, 2] and stats["computed"] == 2
    for i, t in enumerate(grid):
        block = dest[tuple(slice(a * f, b * f) for (a, b), f in zip(t, (1, 2, 2)))]
        if i in done:
            assert (block == -7.0).all()  # not touched
        else:
            np.testing.assert_allclose(block, ref[tuple(slice(a * f, b * f) for (a, b), f in zip(t, (1, 2, 2)))],
                                       atol=1e-5)
    # every tile done: nothing is computed at all
    assert restore_to_store(bp, vol, dest, factors=(1, 2, 2), tile_size=(4, 16, 16),
                            done_tiles=set(range(len(grid))))["computed"] == 0


@pytest.mark.parametrize("lo, hi", [
    ((-3, 0, 0), (9, 30, 26)),
    ((-5, -7, 2), (12, 33, 30)),
    ((2, 3, 4), (5, 6, 7)),
    ((-9, -30, -26), (18, 60, 52)),  # pads as large as the array
    ((-30, 0, 0), (39, 30, 26)),     # pads larger than the array: repeated mirrors
])
def test_read_padded_mirrors_like_numpy_symmetric_pad(lo, hi):
    from selfres.infer import read_padded

    vol = np.random.default_rng(3).random((9, 30, 26)).astype(np.float32)
    pads = [(max(0, -a), max(0, b - n)) for a, b, n in zip(lo, hi, vol.shape)]
    core = vol[tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, vol.shape))]
    np.testing.assert_array_equal(read_padded(vol, lo, hi), np.pad(core, pads, mode="symmetric"))


def test_read_padded_wholly_outside():
    from selfres.infer import read_padded

    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    # wholly before the array: z = -3..-1 mirror to 2, 1, 0
    np.testing.assert_array_equal(read_padded(vol, (-3, 0, 0), (0, 5, 6)), vol[[2, 1, 0]])
    # wholly after it: z = 5..6 mirror to 2, 1
    np.testing.assert_array_equal(read_padded(vol, (5, 0, 0), (7, 5, 6)), vol[[2, 1]])


@pytest.mark.parametrize("factors, iterations, shape, tile, batch, shrink", [
    ((1, 2, 2), 2, (6, 30, 26), (3, 7, 9), 1, False),
    ((2, 2, 2), 1, (7, 19, 22), (2, 5, 6), 4, False),   # tiles far smaller than the steps' border, batched
    ((1, 2, 2), 3, (1, 24, 20), (1, 8, 8), 2, False),   # 2-D
    ((1, 2, 2), 2, (6, 30, 26), (3, 7, 9), 1, True),    # corrections shrunk by a noise level: a wider reach
    ((2, 2, 2), 1, (7, 19, 22), (2, 5, 6), 4, True),
    ((1, 2, 2), 2, (1, 24, 20), (1, 8, 8), 2, True),
])
def test_back_projection_in_tiles_equals_the_whole_volume(factors, iterations, shape, tile, batch, shrink):
    """In a tile the steps see the network's output mirrored about the volume's border,
    as over the whole volume, however small the tile (so a scattered or GPU run writes
    what a whole CPU run writes)."""
    import selfres.infer as infer
    from selfres.ensemble import BackProjection
    from selfres.noise import NoiseLevel

    bp = BackProjection(_random_model(ModelSpec(arch="resnet3d", factors=factors, width=8, depth=1)),
                        iterations=iterations, noise_level=NoiseLevel(0.02, 0.002) if shrink else None)
    if shrink:  # the shrink's window widens each step's reach by one voxel on every scaled axis
        plain = BackProjection(bp.model, iterations=iterations)
        assert bp.step_reach == tuple(r + (f > 1) for r, f in zip(plain.step_reach, factors))
    vol = np.random.default_rng(4).random(shape).astype(np.float32)
    whole = infer._whole_volume_back_projected(bp, vol, factors=factors, tile_size=(8, 16, 16), amp=False)
    ref = predict_single_pass(bp, vol, factors=factors)
    tiled = infer._assemble(run_tiles(bp, vol, factors=factors, tile_size=tile, amp=False, batch_size=batch),
                            vol.shape, factors)  # the tile path: steps inside every (batched) tile
    dest = np.zeros(ref.shape, np.float32)
    n = len(tile_grid(shape, tile))
    restore_to_store(bp, vol, dest, factors=factors, tile_size=tile, amp=False, batch_size=batch,
                     tiles=list(range(n - 1)))  # a block of a scattered run: the tile path too
    np.testing.assert_allclose(whole, ref, atol=1e-5)
    np.testing.assert_allclose(tiled, ref, atol=1e-5)
    for t in tile_grid(shape, tile)[: n - 1]:
        np.testing.assert_allclose(dest[output_slices(t, factors)], ref[output_slices(t, factors)], atol=1e-5)
    # the network alone near the border is not what the steps see: the rule matters here
    bare = BackProjection(bp.model, iterations=iterations, noise_level=bp.noise_level)
    bare.mirrors_outside = False
    assert np.abs(predict_single_pass(bare, vol, factors=factors) - ref).max() > 1e-3


def test_back_projection_in_pieces_of_a_tile_split_for_memory_equals_the_whole_volume(monkeypatch):
    import selfres.infer as infer
    from selfres.ensemble import BackProjection

    bp = BackProjection(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)),
                        iterations=2)
    vol = np.random.default_rng(5).random((5, 28, 24)).astype(np.float32)
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    padded = [n + 2 * h for n, h in zip((5, 14, 12), bp.halo)]
    monkeypatch.setattr(infer, "cpu_pass_limit", lambda *a, **k: math.prod(padded) * 0.7)  # force splits
    fitters: list = []
    out = infer._assemble(run_tiles(bp, vol, factors=(1, 2, 2), tile_size=(5, 14, 12), amp=False, fitter_out=fitters),
                          vol.shape, (1, 2, 2))
    assert fitters[0].splits >= 2
    np.testing.assert_allclose(out, ref, atol=1e-5)




def test_a_commit_replaces_the_old_store_and_clears_what_a_killed_commit_left(tmp_path):
    from selfres.infer import PartialStore

    final = tmp_path / "restored.ome.zarr"
    final.mkdir()
    (final / "old").write_text("the previous output")
    killed = tmp_path / ".restored.ome.zarr.old-0123"  # a commit killed while removing the old store
    killed.mkdir()
    store = PartialStore(final)
    store.path.mkdir()
    (store.path / "new").write_text("this output")
    store.meta.mkdir()
    store.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored.ome.zarr"]
    assert [p.name for p in final.iterdir()] == ["new"]


def test_gpu_io_threads_follow_the_jobs_cores_not_the_nodes(monkeypatch):
    """A GPU job given 4 of a 64-core node's cores reads with 1 thread, not 4 (io_threads)."""
    from selfres import infer

    monkeypatch.setattr(infer.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(infer.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert infer.job_cores() == 4
    assert infer.io_threads("cuda") == 1 and infer.io_threads("cpu") == 1
    monkeypatch.setattr(infer.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(infer.torch, "get_num_threads", lambda: 16)
    assert infer.io_threads("cuda") == 4
    monkeypatch.setattr(infer.torch, "get_num_threads", lambda: 4)  # --threads 4 on a workstation: no CPU set
    assert infer.io_threads("cuda") == 1


def test_gather_counts_the_work_and_hosts_of_the_tiles_the_store_holds(tmp_path, monkeypatch):
    """The store is kept when infer.blocks changes and a block's rerun overwrites its stats:
    gather summed every stats file, so tiles recomputed under a new split were counted twice and
    the hosts whose tiles were replaced stayed in ``tiles_ran_on``; a rerun that only kept tiles
    replaced the host that made them. Each tile's record now says where and at what cost."""
    import json as _json

    from selfres import infer as I

    model = prepare_model(_random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1)), "cpu")
    vol = blob_volume((6, 16, 24))  # 12 tiles

    def job(final, host, **kw):
        return _job(tmp_path, model, vol, final, attrs={"ran_on": {"host": host}}, **kw)

    def selfres_attrs(final):
        return _json.loads((final / ".zattrs").read_text())["selfres"]

    # blocks 2 -> 1, every tile recomputed (another device): only the new job's host and time count
    a = tmp_path / "a.ome.zarr"
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cuda/bfloat16")
    job(a, "old-0", step="prepare", blocks=2)
    job(a, "old-0", step="block", block=0, blocks=2)
    job(a, "old-1", step="block", block=1, blocks=2)
    monkeypatch.setattr(I, "compute_label", lambda device, amp: "cpu/float32")
    job(a, "new", step="prepare", blocks=1)
    new = job(a, "new", step="block", block=0, blocks=1)
    job(a, "new", step="gather", blocks=1)
    got = selfres_attrs(a)
    assert got["tiles_ran_on"] == [{"host": "new"}]
    assert got["infer_seconds"] == pytest.approx(new["seconds"], rel=0.25, abs=0.05)

    # blocks 2 -> 1, every tile kept: the hosts that made them, not the one that kept them
    b = tmp_path / "b.ome.zarr"
    job(b, "old-0", step="prepare", blocks=2)
    first = job(b, "old-0", step="block", block=0, blocks=2)["seconds"]
    first += job(b, "old-1", step="block", block=1, blocks=2)["seconds"]
    job(b, "keeper", step="prepare", blocks=1)
    kept = job(b, "keeper", step="block", block=0, blocks=1)
    assert kept["computed"] == 0
    job(b, "keeper", step="gather", blocks=1)
    got = selfres_attrs(b)
    assert got["tiles_ran_on"] == [{"host": "old-0"}, {"host": "old-1"}]
    assert got["infer_seconds"] == pytest.approx(first, rel=0.25, abs=0.05)


def test_host_memory_available_keeps_to_an_address_space_limit():
    """Under ``ulimit -v`` (SGE's h_vmem, shared nodes) a whole-volume back-projection judged
    to fit in MemAvailable failed in torch's allocator, after all of the network's work."""
    import subprocess
    import sys

    code = ("import resource, re\n"
            "from selfres.infer import host_memory_available\n"
            "vm = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))\n"
            "print(host_memory_available())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 200 * 2**20 < int(out) <= 300 * 2**20


def test_torchs_allocator_refusing_memory_is_the_out_of_memory_exit_not_a_bug(monkeypatch, capsys):
    from selfres import cli

    def refuse(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 140582912 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(cli, "run", refuse)
    assert cli.main(["infer", "n.ome.zarr", "model", "-o", "out.ome.zarr", "--sample", "s"]) == 3
    err = capsys.readouterr().err
    assert "ERROR: sample 's': out of memory" in err and "This is a bug" not in err


def test_a_network_pass_takes_its_large_blocks_from_the_heap_and_only_the_pass():
    """Activations of a float32 pass of the default tile (~60 MiB) are above glibc's largest
    mmap threshold: mapped afresh for every tile, they cost ~40 % of CPU inference in page
    faults. Inside :func:`heap_only` they come from the heap (reused by the next pass);
    outside it large arrays are mapped again (a whole volume's back-projection kept in the
    heap took a job's peak from 5.9 to 8.7 GB). In a child process: it changes the allocator."""
    import subprocess
    import sys

    code = '''
import ctypes, numpy as np
from selfres.allocator import keep_freed_memory, heap_only
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped(size):
    before = libc.mallinfo2().hblks
    block = np.ones(size // 8)
    return libc.mallinfo2().hblks - before
assert keep_freed_memory()
outside = mapped(64 * 2**20)
with heap_only():
    inside = mapped(64 * 2**20)
print(outside, inside, mapped(512 * 2**20))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode and "mallinfo2" in out.stderr:
        pytest.skip("glibc without mallinfo2")
    assert out.stdout.split() == ["1", "0", "1"], out.stderr


def test_a_gather_refuses_a_tile_damaged_after_its_block_recorded_it(tmp_path):
    """A block wrote and recorded its tiles; one was overwritten afterwards (a torn chunk, another
    job writing there): the gather checks each tile against its record and refuses, rather than
    commit a store holding it (a mutation review: trusting the records committed 768 voxels of -1)."""
    import zarr

    from selfres.errors import SelfresError

    model = build_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)).eval()
    vol = blob_volume((6, 20, 24))
    final = tmp_path / "many.ome.zarr"
    _job(tmp_path, model, vol, final, step="prepare", blocks=3)
    for b in range(3):
        _job(tmp_path, model, vol, final, step="block", block=b, blocks=3)
    zarr.open_array(str(tmp_path / ".many.ome.zarr.partial" / "0"), mode="r+")[0:3, 0:16, 0:16] = -1.0
    with pytest.raises(SelfresError, match=r"1 of 18 tiles are not written \(or damaged\); rerun block\(s\) 0 of 3"):
        _job(tmp_path, model, vol, final, step="gather", blocks=3)
    assert not final.exists()


def test_a_prepared_run_whose_partial_store_was_removed_starts_it_again(tmp_path):
    """The progress records are there, the partial store is not (a scratch purge): the next run
    makes the store again and finishes, instead of failing on every rerun (a mutation review)."""
    model = build_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=4, depth=1)).eval()
    vol = blob_volume((6, 20, 24))
    final = tmp_path / "r.ome.zarr"
    _job(tmp_path, model, vol, final, step="prepare")
    shutil.rmtree(tmp_path / ".r.ome.zarr.partial")
    _job(tmp_path, model, vol, final, step="all")
    expected = predict_array(model, vol, factors=(1, 2, 2), tile_size=(3, 8, 8))
    np.testing.assert_allclose(np.asarray(io.read_ome_zarr(final).data), expected, atol=1e-5)


def test_a_cpu_pass_of_a_narrow_network_still_counts_its_output_buffers():
    """The bytes a CPU pass takes per padded input voxel: the widest activation's copies, never
    below the output and back-projection buffers' 48 bytes per output voxel (an interpolation-like
    net of 2 elements per voxel was planned at 184 bytes without that floor; a mutation review)."""
    from selfres.infer import CPU_ACTIVATION_COPIES, CPU_PASS_BYTES_PER_OUTPUT_VOXEL, cpu_pass_bytes_per_input_voxel

    assert cpu_pass_bytes_per_input_voxel((2, 2, 2), 2.0) == CPU_PASS_BYTES_PER_OUTPUT_VOXEL * 8
    assert cpu_pass_bytes_per_input_voxel((2, 2, 2), None) == CPU_PASS_BYTES_PER_OUTPUT_VOXEL * 8
    assert cpu_pass_bytes_per_input_voxel((1, 2, 2), 64.0) == CPU_ACTIVATION_COPIES * 4 * 64 + 16 * 4


def test_progress_eta_follows_the_rate_after_the_first_units_warm_up(monkeypatch, caplog):
    """The first tile carries the start's one-off costs: an ETA from the whole elapsed time
    stayed about twice the time left for a quarter of a reviewer's 192 tiles."""
    import selfres.infer as infer

    clock = iter([0.0, 10.0] + [10.0 + i for i in range(1, 10)])  # start; tile 1 at 10 s; then 1 s a tile
    monkeypatch.setattr(infer.time, "monotonic", lambda: next(clock))
    progress = infer.Progress(10, what="tiles", every_s=0.0)
    with caplog.at_level("INFO", logger="selfres.infer"):
        for _ in range(5):
            progress.update()
    last = caplog.records[-1].getMessage()
    assert "tiles 5/10" in last and "ETA 5.0s" in last, last  # 1 s a tile after the first (was 14 s)
    assert "ETA 90.0s" in caplog.records[0].getMessage()  # the first update: only the rate from the start


def test_a_box_read_repaired_equals_the_whole_volume_repaired_wherever_it_starts_or_ends():
    """A tile's padded read may begin or end on a defect's row or column: its repair still takes
    the neighbours outside the box (each read takes one voxel more around it), or the tile's input
    differs from the whole volume's there and a seam follows (a mutation review: no box of the
    tests began or ended at a defect)."""
    from selfres import noise
    from selfres.infer import SensorRepaired

    rng = np.random.default_rng(2)
    vol = rng.normal(1.0, 0.1, (3, 16, 18)).astype(np.float32)
    defects = np.zeros((16, 18), bool)
    defects[[5, 9, 12], [7, 11, 3]] = True
    vol[:, defects] = 9.0
    repaired = noise.repair_sensor_defects(vol, defects)
    view = SensorRepaired(vol, defects)
    for y, x in zip(*np.nonzero(defects)):
        for ys in (slice(y, y + 3), slice(y - 2, y + 1), slice(y, y + 1)):
            for xs in (slice(x, x + 4), slice(x - 3, x + 1), slice(x, x + 1)):
                np.testing.assert_array_equal(view[:, ys, xs], repaired[:, ys, xs], err_msg=f"{ys} {xs}")


def test_merged_passes_are_aligned_unions_of_tiles_no_larger_than_the_fitted_pass(monkeypatch):
    """A pass is the grid tiles of one cell of the pass grid: its padded block is the fitted pass
    (what the GPU's memory was measured to hold), never more, and tiles are merged where the pass
    grows along some axes only (a mutation review: passes grouped off the pass grid, or merged only
    when grown along every axis, failed no test)."""
    import selfres.infer as infer_mod
    from selfres.infer import run_tiles

    model = _random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1))
    vol = blob_volume((6, 40, 40))
    tile, pass_tile = (6, 8, 8), (6, 16, 16)  # z is one tile: the pass grows along y and x only
    monkeypatch.setattr(infer_mod, "fit_pass_tile", lambda *a, **k: pass_tile)
    seen = _OomAbove(model, limit=10**9)  # records each forward's input size
    out = infer_mod._assemble(run_tiles(seen, vol, factors=(1, 2, 2), tile_size=tile), vol.shape, (1, 2, 2))
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=2e-5)
    padded = math.prod(p + 2 * h for p, h in zip(pass_tile, model.halo))
    assert max(seen.sizes) == padded  # whole passes where the volume holds them
    assert len(seen.sizes) == math.prod(math.ceil(n / p) for n, p in zip(vol.shape, pass_tile))  # 1 x 3 x 3


def test_host_memory_available_takes_an_ancestor_cgroups_tighter_limit(tmp_path):
    """A job step's own cgroup may allow more than the job's (or a user slice's) above it: the
    tightest limit on the way to the root is what the kernel enforces."""
    from selfres.infer import host_memory_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    root = tmp_path / "cg"
    step = root / "job_7" / "step_0"
    step.mkdir(parents=True)
    (root / "job_7" / "memory.max").write_text(str(3 * 2**30) + "\n")  # the job: --mem=3G
    (root / "job_7" / "memory.current").write_text(str(2**30) + "\n")
    (step / "memory.max").write_text(str(8 * 2**30) + "\n")  # the step: looser
    (step / "memory.current").write_text(str(2**30) + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job_7/step_0\n")
    assert host_memory_available(meminfo=meminfo, cgroup_root=root, proc_cgroup=proc) == 2 * 2**30


def test_default_output_chunks_take_a_divisor_down_to_a_quarter_of_the_axis():
    """111 = 3 x 37: its largest divisor, 37, is a third of it, over the quarter that is still cut."""
    from selfres.infer import default_output_chunks

    assert default_output_chunks((2, 111, 111), (999, 9999, 9999), 4, max_bytes=2**16) == (2, 37, 111)


def test_a_two_voxel_tile_that_does_not_fit_is_halved_into_single_voxels():
    """Halving goes down to one voxel of core: a tile of two that does not fit is split, not refused."""
    model = CubicUpsampler((1, 2, 2))
    vol = blob_volume((1, 4, 6), n=3)
    piece = math.prod(n + 2 * h for n, h in zip((1, 1, 1), model.halo))
    oom = _OomAbove(model, limit=piece)  # a padded 1x1x2 tile is over, a 1x1x1 one fits
    out = predict_array(oom, vol, factors=(1, 2, 2), tile_size=(1, 1, 2), batch_size=1)
    np.testing.assert_allclose(out, predict_single_pass(model, vol, factors=(1, 2, 2)), atol=1e-5)
    assert max(oom.sizes) == piece


def test_a_block_of_a_store_prepared_for_another_tile_size_is_refused(tmp_path):
    """The tile grid numbers the completion records: a store prepared for one tile size is not
    written by a block job of another (chunks that divide both tiles, so that only it differs)."""
    from selfres.errors import SelfresError

    model = CubicUpsampler((1, 2, 2))
    vol = blob_volume((4, 8, 8), n=5)
    _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="prepare", blocks=2, tile_size=(2, 8, 8),
         chunks=(1, 16, 16))
    with pytest.raises(SelfresError, match=r"prepared for other settings.*differs in tile_size"):
        _job(tmp_path, model, vol, tmp_path / "o.ome.zarr", step="block", block=0, blocks=2, tile_size=(4, 8, 8),
             chunks=(1, 16, 16))
