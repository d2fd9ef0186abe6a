"""Inference throughput and memory: naive single pass vs optimised vs tiled + streamed.

Run from the repository root::

    python bench/throughput.py                      # throughput table (both enhance archs)
    python bench/throughput.py --rss 0.25 1 4       # peak RSS of streamed inference per input size
    python bench/throughput.py --x4                 # x4 of a 38 x 256 x 256 input (to 152 x 1024 x 1024)
    python bench/throughput.py --isotropic          # isotropic mode (iso2d restorer, f = 4)
    python bench/throughput.py --device cuda        # the same on a GPU (mixed precision, fitted passes)

Throughput is output megavoxels per second, all in this process with the same
network and weights (untrained, perturbed: speed does not depend on the values):

- ``naive``: one ``model(x)`` over the whole mirror-padded volume, as written in
  PyTorch without care (contiguous layout, no fusion);
- ``optimised``: the same single pass with :func:`selfres.infer.prepare_model`
  (sub-pixel fusion, channels_last_3d) — untiled, in memory;
- ``tiled``: :func:`selfres.infer.restore_to_store` from an OME-Zarr input to an
  OME-Zarr output (read, infer, write; reader and writer threads);
- ``end_to_end``: :func:`selfres.infer.infer_to_store` (as ``selfres infer``: partial
  store, completion records, pyramid, atomic rename).

``optimised``, ``tiled`` and ``end_to_end`` use ``infer.amp`` (default on: bf16 on CUDA
and on CPUs with native bf16 — AVX512-BF16/AMX; ``--no-amp`` for float32). On CUDA,
``tiled``/``end_to_end`` run neighbouring tiles as one pass fitted to free GPU memory.

Isotropic (``--isotropic``): ``naive`` restores every XZ and YZ slice of the z-cubic
volume one at a time (float32, ``torch.no_grad``); ``optimised`` is
:func:`selfres.isotropic.restore_isotropic` in memory (batched slices, inference mode,
amp); ``tiled`` the same from an OME-Zarr input into an OME-Zarr output.

Peak RSS (``--rss``; both modes: enhance through ``infer_to_store``, isotropic through
``restore_isotropic`` with z-cubic reslicing, f = 2) runs each input size in a fresh subprocess (the input store is
written by another subprocess first) and reads ``ru_maxrss``. It uses an identity
network so that the run measures the streaming machinery, not the network speed.

Timings on a shared machine are noisy: the script prints the load average next to
each table; repeat when the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average n/a"


def _peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM`` (Linux) belongs to the process image: unlike
    ``ru_maxrss``, which survives fork + exec, it does not inherit the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _volume(shape, seed=0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    v = np.zeros(shape, np.float32)
    idx = rng.integers(0, shape, size=(max(10, int(np.prod(shape)) // 2000), 3))
    v[tuple(idx.T)] = 1.0
    v = ndimage.gaussian_filter(v, (1.5, 1.0, 1.0))
    return (v / v.max() + 0.02 + 0.01 * rng.standard_normal(shape)).astype(np.float32)


def _model(arch: str, factors):
    import torch

    from selfres.models import ModelSpec, build_model

    torch.manual_seed(0)
    # the package's default size (selfres.settings.TrainSettings), as the pipeline trains it
    from selfres.settings import TrainSettings

    size = {"width": TrainSettings().width, "depth": TrainSettings().depth} if arch == "resnet3d" else {}
    m = build_model(ModelSpec(arch=arch, factors=tuple(factors), **size))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(arch: str, shape, factors, *, tile, batch, repeat, work: Path, device, amp: bool,
               back_projection: int = 0) -> dict:
    """Mvoxel/s of the four variants for one architecture (and end to end with back-projection)."""
    import copy

    import torch

    from selfres import io
    from selfres.infer import infer_to_store, prepare_model, restore_to_store
    from selfres.models import autocast_context

    vol = _volume(shape)
    model = _model(arch, factors)
    n_out = int(np.prod(shape)) * int(np.prod(factors))
    out = {"arch": arch, "params": sum(p.numel() for p in model.parameters()), "input": list(shape),
           "factors": list(factors), "tile": list(tile), "threads": torch.get_num_threads(),
           "device": str(device), "amp": amp}
    plain = copy.deepcopy(model).to(device)

    def naive():
        h = plain.halo
        padded = np.pad(vol, [(x, x) for x in h], mode="symmetric")
        with torch.no_grad():
            plain(torch.from_numpy(padded)[None, None].to(device)).cpu()
        _sync(device)

    fast = prepare_model(model, device)
    naive()  # warm-up (and cuDNN autotuning on a GPU)
    out["naive"] = n_out / 1e6 / _best(naive, repeat)
    plain = None  # free the copy; naive() is not called again

    def optimised():
        h = fast.halo
        padded = np.pad(vol, [(x, x) for x in h], mode="symmetric")
        x = torch.from_numpy(padded)[None, None].to(device).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), autocast_context(device, enabled=amp, cpu=True):
            fast(x).float().cpu()
        _sync(device)

    optimised()
    out["optimised"] = n_out / 1e6 / _best(optimised, repeat)

    src_path = work / f"in-{arch}.ome.zarr"
    io.write_ome_zarr(src_path, vol, voxel_size=(1.0, 1.0, 1.0), chunks=tile)
    src = io.open_ome_zarr_array(src_path)
    out_shape = tuple(n * f for n, f in zip(shape, factors))
    chunks = tuple(min(t * f, n) for t, f, n in zip(tile, factors, out_shape))

    def tiled():
        dest = io.create_ome_zarr(work / "tiled.ome.zarr", shape=out_shape, dtype="float32",
                                  voxel_size=(1.0, 1.0, 1.0), chunks=chunks)
        st = restore_to_store(fast, src, dest, factors=factors, tile_size=tile, batch_size=batch, device=device,
                              amp=amp)
        out["pass_tile"] = st["pass_tile"]

    out["tiled"] = n_out / 1e6 / _best(tiled, repeat)

    def end_to_end():
        infer_to_store(fast, src, work / "e2e.ome.zarr", factors=factors, tile_size=tile, dtype="float32",
                       voxel_size=(1.0, 0.5, 0.5), fingerprint={"bench": time.time()}, batch_size=batch,
                       device=device, amp=amp)

    out["end_to_end"] = n_out / 1e6 / _best(end_to_end, repeat)
    out["back_projection"] = int(back_projection)
    if back_projection:  # what `selfres infer` runs at that setting: the net wrapped in back-projection
        from selfres.ensemble import BackProjection

        from selfres.noise import NoiseLevel

        def end_to_end_bp(noise_level=None):
            bp = prepare_model(BackProjection(model, iterations=int(back_projection), noise_level=noise_level), device)
            return lambda: infer_to_store(bp, src, work / "e2e-bp.ome.zarr", factors=factors, tile_size=tile,
                                          dtype="float32", voxel_size=(1.0, 0.5, 0.5),
                                          fingerprint={"bench": time.time()}, batch_size=batch, device=device,
                                          amp=amp)

        out["end_to_end_bp"] = n_out / 1e6 / _best(end_to_end_bp(), repeat)
        # with its corrections shrunk by a noise level (infer.back_projection_shrink, the default)
        out["end_to_end_bp_shrink"] = n_out / 1e6 / _best(end_to_end_bp(NoiseLevel(0.002, 1e-5)), repeat)
    out["optimised_over_naive"] = out["optimised"] / out["naive"]
    out["tiled_cost_pct"] = 100.0 * (out["optimised"] / out["tiled"] - 1.0)
    out["end_to_end_cost_pct"] = 100.0 * (out["optimised"] / out["end_to_end"] - 1.0)
    return out


def isotropic_throughput(shape, factor: float, *, tile, repeat, work: Path, device, amp: bool) -> dict:
    """Mvoxel/s (output, isotropic grid) of the isotropic restorer at the package defaults."""
    import torch

    from selfres import io
    from selfres.isotropic import isotropic_shape, reslice, restore_isotropic
    from selfres.models import ModelSpec, build_model
    from selfres.settings import IsotropicSettings

    torch.manual_seed(0)
    iso = IsotropicSettings()
    model = build_model(ModelSpec(arch="iso2d", width=iso.width, depth=iso.depth))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = model.eval().to(device)
    vol = _volume(shape)
    out_shape = isotropic_shape(shape, factor)
    n_out = int(np.prod(out_shape))
    out = {"arch": "iso2d", "params": sum(p.numel() for p in model.parameters()), "input": list(shape),
           "factor": factor, "output": list(out_shape), "tile": list(tile), "device": str(device), "amp": amp,
           "threads": torch.get_num_threads()}

    def naive():
        fine = reslice(vol, factor)
        with torch.no_grad():
            for y in range(fine.shape[1]):
                model(torch.from_numpy(np.ascontiguousarray(fine[:, y, :]))[None, None].to(device)).cpu()
            for x in range(fine.shape[2]):
                model(torch.from_numpy(np.ascontiguousarray(fine[:, :, x]))[None, None].to(device)).cpu()
        _sync(device)

    def optimised():
        restore_isotropic(model, vol, factor=factor, tile=vol.shape[1:], batch=iso.infer_batch, device=device,
                          amp=amp, progress=False)
        _sync(device)

    naive()
    out["naive"] = n_out / 1e6 / _best(naive, repeat)
    optimised()
    out["optimised"] = n_out / 1e6 / _best(optimised, repeat)
    src_path = work / "iso-in.ome.zarr"
    io.write_ome_zarr(src_path, vol, voxel_size=(factor, 1.0, 1.0), chunks=(shape[0], *tile))
    src = io.open_ome_zarr_array(src_path)

    def tiled():
        dest = io.create_ome_zarr(work / "iso-out.ome.zarr", shape=out_shape, dtype="float32",
                                  voxel_size=(1.0, 1.0, 1.0), chunks=(min(64, out_shape[0]), *tile))
        restore_isotropic(model, src, factor=factor, tile=tile, batch=iso.infer_batch, device=device, amp=amp,
                          dest=dest, progress=False)
        _sync(device)

    out["tiled"] = n_out / 1e6 / _best(tiled, repeat)
    out["optimised_over_naive"] = out["optimised"] / out["naive"]
    out["tiled_cost_pct"] = 100.0 * (out["optimised"] / out["tiled"] - 1.0)
    return out


# --------------------------------------------------------------------------- #
# peak RSS: subprocesses
# --------------------------------------------------------------------------- #

def _rss_shape(gib: float) -> tuple[int, int, int]:
    n = gib * 2**30 / 4  # float32 voxels
    yx = 1024 if gib <= 0.5 else 2048
    return (max(1, int(round(n / yx / yx))), yx, yx)


def _make_input(path: str, gib: float, chunk) -> None:
    """Write a float32 OME-Zarr of ``gib`` GiB slab by slab (never whole in memory)."""
    from selfres import io

    shape = _rss_shape(gib)
    arr = io.create_ome_zarr(path, shape=shape, dtype="float32", voxel_size=(1.0, 1.0, 1.0), chunks=chunk)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    base = ((yy // 7 + xx // 5) % 11).astype(np.float32) / 11.0
    for z0 in range(0, shape[0], chunk[0]):
        z1 = min(shape[0], z0 + chunk[0])
        arr[z0:z1] = base[None] * (1.0 + np.arange(z0, z1, dtype=np.float32)[:, None, None] / shape[0])
    io.finalize_ome_zarr(path, voxel_size=(1.0, 1.0, 1.0), max_levels=1)


def _run_streamed(path: str, out: str, tile) -> dict:
    """The infer stage on ``path`` with an identity network; reports time and peak RSS."""
    import torch

    from selfres import io
    from selfres.infer import CubicUpsampler, infer_to_store

    torch.set_num_threads(2)
    src = io.open_ome_zarr_array(path)
    t0 = time.perf_counter()
    st = infer_to_store(CubicUpsampler((1, 1, 1)), src, out, factors=(1, 1, 1), tile_size=tile, dtype="float32",
                        voxel_size=(1.0, 1.0, 1.0), fingerprint={"bench": "rss"})
    return {"shape": list(src.shape), "gib": float(np.prod(src.shape)) * 4 / 2**30,
            "seconds": time.perf_counter() - t0, "tiles": st["tiles"], "peak_rss_mib": _peak_rss_mib()}


def _run_streamed_isotropic(path: str, out: str, tile) -> dict:
    """The isotropic infer path (y/x columns through all of z) on ``path`` with no network
    (z-cubic reslicing, f = 2) into an OME-Zarr store; reports time and peak RSS."""
    import torch

    from selfres import io
    from selfres.infer import keep_freed_memory
    from selfres.isotropic import isotropic_shape, isotropic_tile_grid, restore_isotropic

    torch.set_num_threads(2)
    keep_freed_memory()
    src = io.open_ome_zarr_array(path)
    shape = isotropic_shape(src.shape, 2.0)
    dest = io.create_ome_zarr(out, shape=shape, dtype="float32", voxel_size=(1.0, 1.0, 1.0),
                              chunks=(min(64, shape[0]), tile[1], tile[2]))
    t0 = time.perf_counter()
    restore_isotropic(None, src, factor=2.0, tile=tile[1:], dest=dest, progress=False)
    return {"shape": list(src.shape), "gib": float(np.prod(src.shape)) * 4 / 2**30,
            "seconds": time.perf_counter() - t0, "tiles": len(isotropic_tile_grid(src.shape[1:], tile[1:])),
            "peak_rss_mib": _peak_rss_mib()}


def rss(sizes, *, tile, work: Path, mode: str = "enhance") -> list[dict]:
    rows = []
    for gib in sizes:
        path, out = str(work / f"rss-{gib}.ome.zarr"), str(work / f"rss-{gib}-out.ome.zarr")
        me = [sys.executable, __file__]
        subprocess.run(me + ["--_make", path, str(gib), *map(str, tile)], check=True)
        flag = "--_stream" if mode == "enhance" else "--_stream_iso"
        res = subprocess.run(me + [flag, path, out, *map(str, tile)], check=True,
                             capture_output=True, text=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  input {row['gib']:.2f} GiB {tuple(row['shape'])}: peak RSS {row['peak_rss_mib']:.0f} MiB, "
              f"{row['seconds']:.1f} s, {row['tiles']} tiles", flush=True)
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def x4(*, tile, batch, work: Path, device, amp: bool, archs=("svision_mini", "resnet3d")) -> dict:
    """x4 (4, 4, 4) svision_mini of a 38 x 256 x 256 input, tiled and streamed, end to end.

    Tiles span the whole z range (38 x 128 x 128) so the z halo is paid once; output
    chunks are 38 x 256 x 256 (a divisor of the 152 x 512 x 512 tile output).
    """

    from selfres import io
    from selfres.infer import infer_to_store, prepare_model

    vol = _volume((38, 256, 256))
    src_path = work / "x4-in.ome.zarr"
    io.write_ome_zarr(src_path, vol, voxel_size=(1.0, 1.0, 1.0))
    src = io.open_ome_zarr_array(src_path)
    out = {}
    for arch in archs:
        fast = prepare_model(_model(arch, (4, 4, 4)), device)
        t0 = time.perf_counter()
        infer_to_store(fast, src, work / f"x4-out-{arch}.ome.zarr", factors=(4, 4, 4), tile_size=tile,
                       dtype="float32", voxel_size=(0.25, 0.25, 0.25), fingerprint={"bench": time.time()},
                       batch_size=batch, chunks=(38, 256, 256), device=device, amp=amp)
        secs = time.perf_counter() - t0
        out[arch] = {"seconds": secs, "mvoxel_per_s": 152 * 1024 * 1024 / 1e6 / secs}
        print(f"  x4 {arch}: 38x256x256 -> 152x1024x1024 in {secs:.1f} s "
              f"({out[arch]['mvoxel_per_s']:.2f} Mvoxel/s)", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["svision_mini", "resnet3d"])
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256],
                   help="input z y x (larger than a tile, so tiling and streaming are measured)")
    p.add_argument("--factors", type=int, nargs=3, default=[2, 2, 2])
    p.add_argument("--tile", type=int, nargs=3, default=None, help="core tile (default: infer.tile_size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--rss", type=float, nargs="*", default=None, help="input sizes in GiB")
    p.add_argument("--rss-tile", type=int, nargs=3, default=[32, 256, 256])
    p.add_argument("--x4", action="store_true")
    p.add_argument("--isotropic", action="store_true", help="also the isotropic restorer (f = 4)")
    p.add_argument("--iso-shape", type=int, nargs=3, default=[32, 256, 256])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-amp", action="store_true", help="float32 everywhere (default: infer.amp)")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--back-projection", type=int, default=None,
                   help="also end to end with this many back-projection iterations "
                        "(default: infer.back_projection_iterations, what `selfres infer` runs; 0: skip)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--_make", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--_stream", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--_stream_iso", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._make:
        _make_input(a._make[0], float(a._make[1]), tuple(int(v) for v in a._make[2:]))
        return 0
    if a._stream_iso:
        print(json.dumps(_run_streamed_isotropic(a._stream_iso[0], a._stream_iso[1],
                                                 tuple(int(v) for v in a._stream_iso[2:]))))
        return 0
    if a._stream:
        print(json.dumps(_run_streamed(a._stream[0], a._stream[1], tuple(int(v) for v in a._stream[2:]))))
        return 0

    import torch

    from selfres.infer import keep_freed_memory
    from selfres.models import cpu_has_native_bf16, select_device

    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as the selfres command does (library functions leave the allocator alone)
    if a.tile is None:
        from selfres.settings import InferSettings

        a.tile = list(InferSettings().tile_size)
    if a.back_projection is None:
        from selfres.settings import InferSettings

        a.back_projection = InferSettings().back_projection_iterations
    device = select_device(a.device)
    amp = not a.no_amp
    results: dict = {"host_cpus": os.cpu_count(), "torch_threads": a.threads, "torch": torch.__version__,
                     "device": str(device), "amp": amp, "cpu_native_bf16": cpu_has_native_bf16()}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    precision = ("bf16" if device.type == "cuda" or cpu_has_native_bf16() else "float32 (no native bf16)") \
        if amp else "float32"
    print(f"device {results.get('gpu', device)}; precision of the optimised passes: {precision}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="selfres-bench-"))
    try:
        if not a.no_throughput:
            print(f"throughput, output Mvoxel/s ({_load()}; {a.threads} torch threads)", flush=True)
            print(f"  {'arch':14s} {'params':>8s} {'naive':>7s} {'optim.':>7s} {'tiled':>7s} {'e2e':>7s} "
                  f"{'opt/naive':>9s} {'tiled cost':>10s} {'e2e cost':>9s}")
            results["throughput"] = []
            for arch in a.archs:
                shape = tuple(a.shape)
                r = throughput(arch, shape, tuple(a.factors), tile=tuple(a.tile), batch=a.batch, repeat=a.repeat,
                               work=work, device=device, amp=amp, back_projection=a.back_projection)
                results["throughput"].append(r)
                bp = (f"   e2e with {r['back_projection']} back-projection: {r['end_to_end_bp']:.2f}, shrunk "
                      f"{r['end_to_end_bp_shrink']:.2f}" if r.get("end_to_end_bp") else "")
                print(f"  {arch:14s} {r['params']:8d} {r['naive']:7.2f} {r['optimised']:7.2f} {r['tiled']:7.2f} "
                      f"{r['end_to_end']:7.2f} {r['optimised_over_naive']:8.2f}x {r['tiled_cost_pct']:9.1f}% "
                      f"{r['end_to_end_cost_pct']:8.1f}%{bp}", flush=True)
            print(f"  ({_load()})")
        if a.rss:
            print(f"peak RSS of streamed inference, identity network, tile {tuple(a.rss_tile)} ({_load()})",
                  flush=True)
            results["rss"] = rss(a.rss, tile=tuple(a.rss_tile), work=work)
            print(f"peak RSS of streamed isotropic inference, no network (z-cubic, f = 2), y/x tiles "
                  f"{tuple(a.rss_tile[1:])} through all of z ({_load()})", flush=True)
            results["rss_isotropic"] = rss(a.rss, tile=tuple(a.rss_tile), work=work, mode="isotropic")
        if a.isotropic:
            print(f"isotropic, output Mvoxel/s on the isotropic grid ({_load()})", flush=True)
            r = isotropic_throughput(tuple(a.iso_shape), 4.0, tile=(128, 128), repeat=a.repeat, work=work,
                                     device=device, amp=amp)
            results["isotropic"] = r
            print(f"  iso2d {tuple(r['input'])} -> {tuple(r['output'])}: naive {r['naive']:.2f}, optimised "
                  f"{r['optimised']:.2f}, tiled {r['tiled']:.2f} ({r['optimised_over_naive']:.2f}x naive, tiled "
                  f"cost {r['tiled_cost_pct']:.1f}%)", flush=True)
        if a.x4:
            print(f"x4 end to end ({_load()})", flush=True)
            results["x4"] = x4(tile=(38, 128, 128), batch=a.batch, work=work, device=device, amp=amp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
