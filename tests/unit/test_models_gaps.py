"""Gaps in the tests of selfres.models found by a mutation review: behaviour the other tests
left open (sub-pixel order, interpolation reach in the halo, 2-D batches of a z-upscaling
net, rotation tolerance, parameter counting, device and precision decisions, out-of-memory
wording, the caller's random stream)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from selfres import models
from selfres.models import EnhanceNet, ModelSpec, build_model, count_parameters, pixel_shuffle_nd


def test_pixel_shuffle_nd_places_each_channel_at_its_sub_voxel_with_unequal_factors():
    """Channel ``c·r + i·fy·fx + j·fx + k`` goes to sub-voxel ``(i, j, k)`` (torch's order), also for fy != fx."""
    fz, fy, fx = 2, 3, 1
    r = fz * fy * fx
    x = torch.arange(2 * 2 * r * 2 * 3 * 2, dtype=torch.float32).reshape(2, 2 * r, 2, 3, 2)
    got = pixel_shuffle_nd(x, (fz, fy, fx))
    assert got.shape == (2, 2, 2 * fz, 3 * fy, 2 * fx)
    want = torch.empty_like(got)
    for c in range(2):
        for i in range(fz):
            for j in range(fy):
                for k in range(fx):
                    want[:, c, i::fz, j::fy, k::fx] = x[:, c * r + i * fy * fx + j * fx + k]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _shallow(residual: str, factors=(2, 2, 1)) -> EnhanceNet:
    """An enhance net whose body reaches no neighbour: the halo is the interpolation's alone."""
    return EnhanceNet(nn.Sequential(), models._Nearest(factors), nn.Sequential(nn.Conv3d(1, 1, 1)),
                      factors, residual).eval()


@pytest.mark.parametrize("residual, halo", [("tricubic", (2, 2, 0)), ("trilinear", (1, 1, 0)), ("none", (0, 0, 0))])
def test_the_halo_is_at_least_the_interpolations_reach(residual, halo):
    """Halo = max(body reach, base reach): 2 voxels for cubic, 1 for linear, 0 on an axis of factor 1."""
    model = _shallow(residual)
    assert model.halo == halo
    if residual == "none":
        return
    # the reach is real: a change at the halo's distance moves the output, one further does not
    x = torch.rand(1, 1, 9, 9, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        for d, moves in ((halo[0], True), (halo[0] + 1, False)):
            p = x.clone()
            p[0, 0, 4 + d, 4, 1] += 1.0
            change = (model(p) - ref)[0, 0, 8:10, 8:10].abs().max()
            assert bool(change > 0) == moves, (d, change)


def test_a_2d_batch_is_refused_by_a_net_that_upscales_z_by_two():
    """A (B, 1, Y, X) batch needs fz == 1; a z factor of 2 is refused clearly (not silently sliced)."""
    model = build_model(ModelSpec(arch="svision_mini", factors=(2, 2, 2)))
    with pytest.raises(ValueError, match=r"needs a z factor of 1; the model has factors \(2, 2, 2\)"):
        model(torch.rand(1, 1, 6, 6))


def test_lateral_rotations_need_y_and_x_voxel_sizes_equal_to_a_part_per_million():
    """Voxel sizes 0.2 and 0.2002 (0.1 % apart) are not equal: no 90 degree rotations."""
    from selfres.models import lateral_rotations

    assert lateral_rotations((1, 2, 2), (1.0, 0.2, 0.2 * (1 + 1e-7)))
    assert not lateral_rotations((1, 2, 2), (1.0, 0.2, 0.2002))
    assert not lateral_rotations((1, 2, 2), (1.0, 0.2, 0.199))


def test_count_parameters_counts_only_trainable_ones():
    """Frozen parameters are left out of the count."""
    model = build_model(ModelSpec(arch="resnet3d", width=2, depth=0, factors=(1, 2, 2)))
    total = sum(p.numel() for p in model.parameters())
    frozen = model.hr_body[-1].weight
    frozen.requires_grad_(False)
    assert count_parameters(model) == total - frozen.numel()


def test_gpu_allocated_ignores_surrounding_spaces():
    """CUDA_VISIBLE_DEVICES of blanks or ' -1 ' means no GPU; ' 0 ' means one."""
    assert not models.gpu_allocated({"CUDA_VISIBLE_DEVICES": "  "})
    assert not models.gpu_allocated({"CUDA_VISIBLE_DEVICES": " -1 "})
    assert models.gpu_allocated({"CUDA_VISIBLE_DEVICES": " 0 "})


def test_auto_with_a_single_gpu_takes_plain_cuda_and_claims_no_lock(monkeypatch):
    """One visible GPU and none assigned: 'auto' is plain ``cuda``; claim_gpu is for several GPUs only."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(models, "_use_cuda", lambda d: d)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def no_claim(count, lock_dir=None):
        raise AssertionError(f"claim_gpu({count}) called")

    monkeypatch.setattr(models, "claim_gpu", no_claim)
    assert models.select_device("auto") == torch.device("cuda")


def _fake_cpuinfo(monkeypatch, text: str) -> None:
    """Make selfres.models read ``text`` as /proc/cpuinfo."""
    def fake_open(path, *a, **kw):
        assert str(path) == "/proc/cpuinfo"
        return io.StringIO(text)

    monkeypatch.setattr(models, "open", fake_open, raising=False)


@pytest.mark.parametrize("flag, expected", [("amx_bf16", True), ("avx512_bf16", True), ("avx512f", False)])
def test_cpu_bf16_is_detected_from_either_cpu_flag(monkeypatch, flag, expected):
    """Without the override, AVX512-BF16 or AMX-BF16 in the CPU flags means native bfloat16."""
    monkeypatch.delenv("SELFRES_CPU_BF16", raising=False)
    _fake_cpuinfo(monkeypatch, f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flag}\n")
    models.cpu_has_native_bf16.cache_clear()
    assert models.cpu_has_native_bf16() is expected
    models.cpu_has_native_bf16.cache_clear()


def test_cpu_bf16_override_ignores_surrounding_spaces(monkeypatch):
    """SELFRES_CPU_BF16=' 1 ' forces bfloat16 on, ' 0 ' forces it off, whatever the CPU flags say."""
    _fake_cpuinfo(monkeypatch, "flags\t\t: fpu amx_bf16\n")
    for value, expected in ((" 1 ", True), (" 0 ", False)):
        monkeypatch.setenv("SELFRES_CPU_BF16", value)
        models.cpu_has_native_bf16.cache_clear()
        assert models.cpu_has_native_bf16() is expected
    models.cpu_has_native_bf16.cache_clear()


def test_ran_on_names_the_cpu_model_not_its_model_number(monkeypatch):
    """The CPU's name is the ``model name`` line of /proc/cpuinfo, not the ``model`` number before it."""
    _fake_cpuinfo(monkeypatch, "processor\t: 0\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n")
    assert models.ran_on("cpu")["device_name"] == "Intel(R) Xeon(R) Gold 6230"


def test_the_cpu_allocator_refusing_memory_is_out_of_memory():
    """PyTorch's CPU allocator's "can't allocate memory" counts as running out of memory."""
    exc = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 34359738368 bytes. Error code 12 (Cannot allocate memory)")
    assert models.is_out_of_memory(exc)


def test_only_runtime_errors_are_taken_for_out_of_memory():
    """Another error type whose message mentions memory (a ValueError, an OSError) is not out of memory."""
    assert not models.is_out_of_memory(ValueError("out of memory"))
    assert not models.is_out_of_memory(OSError("can't allocate memory"))
    assert models.is_out_of_memory(RuntimeError("CUDA error: out of memory"))


def test_memory_error_cause_quotes_at_most_200_characters_of_the_error():
    """A long accelerator message is quoted cut at 200 characters."""
    said = "cuDNN error: unable to find an engine to execute this computation " + "x" * 400
    cause = models.memory_error_cause(RuntimeError(said))
    assert f"'{said[:200]}'" in cause
    assert said[:201] not in cause


def test_a_training_run_in_a_fork_leaves_the_callers_random_stream_as_it_was():
    """keeps_callers_random_state: the caller's next draws are as without the call; the call's draws unchanged."""
    @models.keeps_callers_random_state
    def train(n, device="cpu"):
        return torch.rand(n)

    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    inside_expected = torch.rand(50)

    torch.manual_seed(123)
    inside = train(50)
    after = torch.rand(3)
    torch.testing.assert_close(after, expected_after, rtol=0, atol=0)
    torch.testing.assert_close(inside, inside_expected, rtol=0, atol=0)


@pytest.mark.parametrize("preference", ["cuda:x", "cuda:", "cuda:-1"])
def test_a_malformed_cuda_device_is_a_config_error_even_with_a_gpu(monkeypatch, preference):
    """'cuda:' followed by anything but a GPU index is refused as an unknown device (not a ValueError)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(models, "_use_cuda", lambda d: d)
    from selfres.errors import ConfigError

    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda, cuda:N"):
        models.select_device(preference)
