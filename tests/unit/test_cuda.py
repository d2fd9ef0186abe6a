"""The CUDA paths on a real GPU: device choice, mixed precision, passes fitted to free
memory, a real out-of-memory error halved and retried, training and isotropic inference.

Skipped without a CUDA GPU (CI has none); `bench/gpu_check.sh` runs them on a lent GPU.
The same logic is tested on CPU elsewhere with a simulated out-of-memory error and a
forced pass size (`test_infer.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfres.infer import fit_pass_tile, predict_array, predict_single_pass, prepare_model, restore_to_store
from selfres.models import ModelSpec, build_model, select_device

from ..conftest import blob_volume

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32(request):
    """TF32 off, so that float32 on the GPU matches the CPU to float rounding; left as it is for
    a test marked ``production_precision`` (training keeps TF32 for its convolutions)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if request.node.get_closest_marker("production_precision") is None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    torch.cuda.empty_cache()


def _random_model(spec: ModelSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(spec)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_auto_picks_the_gpu():
    assert select_device("auto").type == "cuda"


@pytest.mark.parametrize("arch", ["resnet3d", "svision_mini", "svision_paper"])
def test_gpu_tiled_float32_equals_the_cpu_single_pass(arch):
    model = _random_model(ModelSpec(arch=arch, factors=(2, 2, 2), width=8, depth=2))
    vol = blob_volume((10, 40, 44))
    ref = predict_single_pass(model, vol, factors=(2, 2, 2))
    gpu = prepare_model(model, CUDA)
    out = predict_array(gpu, vol, factors=(2, 2, 2), tile_size=(4, 16, 16), device=CUDA, amp=False)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_gpu_mixed_precision_is_close_and_really_reduced():
    model = _random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=16, depth=2))
    vol = blob_volume((12, 48, 48))
    gpu = prepare_model(model, CUDA)
    fp32 = predict_array(gpu, vol, factors=(2, 2, 2), tile_size=(6, 24, 24), device=CUDA, amp=False)
    mixed = predict_array(gpu, vol, factors=(2, 2, 2), tile_size=(6, 24, 24), device=CUDA, amp=True)
    err = np.abs(mixed - fp32)
    assert mixed.dtype == np.float32 and err.max() > 0
    # random weights make the body as large as the output: bf16 activations (8-bit mantissa)
    # show at ~0.6 % (H200, measured); trained models lose ~0.01 dB (docs/performance.md)
    assert err.mean() < 1e-2 * float(np.abs(fp32).mean())


def test_passes_fitted_to_free_memory_are_larger_than_a_tile_and_change_nothing(tmp_path):
    from selfres import io

    model = _random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=8, depth=2))
    vol = blob_volume((16, 96, 96))
    gpu = prepare_model(model, CUDA)
    tile = (4, 16, 16)
    fitted = fit_pass_tile(gpu, tile_size=tile, shape=vol.shape, device=CUDA, amp=False)
    assert fitted == vol.shape  # a small volume fits whole in an empty GPU
    tiny = fit_pass_tile(gpu, tile_size=tile, shape=vol.shape, device=CUDA, amp=False, memory_fraction=1e-6)
    assert tiny == tile
    io.write_ome_zarr(tmp_path / "in.ome.zarr", vol, voxel_size=(1, 1, 1), chunks=tile)
    src = io.open_ome_zarr_array(tmp_path / "in.ome.zarr")
    dest = np.zeros((32, 192, 192), np.float32)
    stats = restore_to_store(gpu, src, dest, factors=(2, 2, 2), tile_size=tile, device=CUDA, amp=False)
    assert stats["pass_tile"] == list(vol.shape) and stats["computed"] == stats["tiles"] == 4 * 6 * 6
    np.testing.assert_allclose(dest, predict_single_pass(model, vol, factors=(2, 2, 2)), atol=1e-4)


def test_a_real_out_of_memory_error_is_halved_and_retried():
    model = _random_model(ModelSpec(arch="resnet3d", factors=(2, 2, 2), width=16, depth=2))
    vol = blob_volume((32, 128, 128))
    gpu = prepare_model(model, CUDA)
    ref = predict_array(gpu, vol, factors=(2, 2, 2), tile_size=(8, 32, 32), device=CUDA, amp=False)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    leave = 48 * 2**20  # one whole-volume pass needs ~60 MiB per activation, several at once
    ballast = torch.empty(max(0, free - leave) // 4, dtype=torch.float32, device=CUDA)
    try:
        fitters: list = []
        from selfres.infer import run_tiles

        blocks = {i: o for i, _, o in run_tiles(gpu, vol, factors=(2, 2, 2), tile_size=vol.shape, device=CUDA,
                                                  amp=False, fit_memory=False, fitter_out=fitters)}
    finally:
        del ballast
        torch.cuda.empty_cache()
    assert fitters[0].splits >= 1  # the pass really ran out of memory and was split
    np.testing.assert_allclose(blocks[0], ref, atol=1e-4)


@pytest.mark.production_precision
def test_training_on_the_gpu_with_mixed_precision_learns_and_loads_on_cpu(tmp_path):
    from selfres.models import load_model, save_model
    from selfres.settings import TrainSettings
    from selfres.train import train_enhance

    vol = blob_volume((8, 48, 48), n=120, sigma=(1.0, 1.2, 1.2))
    s = TrainSettings(steps=60, width=8, depth=1, batch_size=2, patch_size=(4, 16, 16), validate_every=5,
                      warmup_steps=2, learning_rate=2e-3, patience=50, max_minutes=5)
    r = train_enhance(vol[:, :36], vol[:, 36:], factors=(1, 2, 2), settings=s, device=CUDA, amp=True)
    assert r.val_psnr_model > r.val_psnr_interp + 0.2, (r.val_psnr_model, r.val_psnr_interp)
    save_model(tmp_path / "m", r.model, r.spec)
    cpu_model, _, _ = load_model(tmp_path / "m", device="cpu")
    a = predict_array(cpu_model, vol, factors=(1, 2, 2), amp=False)
    b = predict_array(prepare_model(r.model, CUDA), vol, factors=(1, 2, 2), device=CUDA, amp=False)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_isotropic_inference_on_the_gpu_matches_the_cpu():
    from selfres.isotropic import restore_isotropic

    model = _random_model(ModelSpec(arch="iso2d", width=8, depth=2))
    vol = blob_volume((6, 40, 36))
    cpu = restore_isotropic(model, vol, factor=2.5, tile=(16, 16), progress=False)
    gpu = restore_isotropic(model, vol, factor=2.5, tile=(16, 16), device=CUDA, progress=False)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    mixed = restore_isotropic(model, vol, factor=2.5, tile=(16, 16), device=CUDA, amp=True, progress=False)
    err = np.abs(mixed - cpu)
    assert err.max() > 0 and err.mean() < 1e-2 * float(np.abs(cpu).mean())  # 0.7 % measured on an H200


@pytest.mark.parametrize("shrink", [False, True])
def test_gpu_back_projection_in_passes_and_batches_equals_the_cpu_single_pass(shrink):
    """Back-projection (steps inside every tile on a GPU, the border mirrored as over the
    whole volume; with the noise shrink) through passes fitted to no memory (one tile each)
    and batches: the seams and the batch path, which one whole-volume pass never runs."""
    from selfres.ensemble import BackProjection
    from selfres.noise import NoiseLevel

    model = _random_model(ModelSpec(arch="resnet3d", factors=(1, 2, 2), width=8, depth=1))
    bp = BackProjection(model, iterations=2, noise_level=NoiseLevel(0.02, 0.002) if shrink else None)
    vol = np.random.default_rng(4).random((6, 40, 36)).astype(np.float32)
    ref = predict_single_pass(bp, vol, factors=(1, 2, 2))
    gpu = prepare_model(bp, CUDA)
    dest = np.zeros(ref.shape, np.float32)
    restore_to_store(gpu, vol, dest, factors=(1, 2, 2), tile_size=(3, 8, 12), device=CUDA, amp=False,
                     batch_size=4, memory_fraction=0.0)
    np.testing.assert_allclose(dest, ref, atol=1e-4)


def test_a_training_checkpoint_moves_between_cpu_and_gpu(tmp_path, caplog):
    """Killed on one kind of device, resumed on the other: weights and step carry over (the
    noise generator's state does not fit the other device; its draws start anew)."""
    from selfres.settings import TrainSettings
    from selfres.train import train_enhance

    vol = blob_volume((8, 48, 48), n=120, sigma=(1.0, 1.2, 1.2))
    s = TrainSettings(steps=20, width=8, depth=1, batch_size=2, patch_size=(4, 16, 16), validate_every=5,
                      warmup_steps=2, patience=50, max_minutes=5)
    part = train_enhance(vol[:, :, :32], vol[:, :, 32:], factors=(1, 2, 2), settings=s, work_dir=tmp_path,
                         device="cpu", stop_after_steps=10)
    assert part.steps_done == 10
    with caplog.at_level("WARNING", logger="selfres"):
        done = train_enhance(vol[:, :, :32], vol[:, :, 32:], factors=(1, 2, 2), settings=s, work_dir=tmp_path,
                             device=CUDA)
    assert done.steps_done == 20 and "another kind of device" in caplog.text
