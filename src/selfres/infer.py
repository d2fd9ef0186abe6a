"""Tiled, streamed whole-FOV inference.

A volume is cut into core tiles; each tile is read with a halo of ``model.halo`` input
voxels (mirror-padded where it leaves the volume), passed through the network, and the
halo is cropped from the output. Because the halo covers the network's receptive field,
the tiled result equals one pass over the mirror-padded volume, for any tile size.
Input is read and output written tile by tile, so memory depends on the tile size, not
on the volume.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import degrade

log = logging.getLogger("selfres.infer")


class CubicUpsampler(nn.Module):
    """Tricubic interpolation (the project's reference) as a module with a halo."""

    def __init__(self, factors: Sequence[int]):
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        self.halo = tuple(2 if f > 1 else 0 for f in self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, Z, Y, X)
        return degrade.upscale_cubic(x, self.factors)


def read_padded(source, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Read ``source[lo:hi]`` as float32, mirror-padding (symmetric) outside the array.

    ``source`` is anything with ``shape`` and basic slicing (numpy, zarr, dask).
    """
    shape = source.shape
    clo = [max(0, int(a)) for a in lo]
    chi = [min(int(n), int(b)) for b, n in zip(hi, shape)]
    block = source[tuple(slice(a, b) for a, b in zip(clo, chi))]
    if hasattr(block, "compute"):
        block = block.compute()
    block = np.asarray(block, dtype=np.float32)
    pads = [(a - l, h - b) for a, b, l, h in zip(clo, chi, lo, hi)]
    if any(p for pair in pads for p in pair):
        block = np.pad(block, pads, mode="symmetric")
    return block


def tile_grid(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[tuple[int, int], ...]]:
    """Core tiles ``((z0, z1), (y0, y1), (x0, x1))`` covering ``shape``, in C order."""
    tile = [max(1, min(int(t), int(n))) for t, n in zip(tile, shape)]
    ranges = [[(s, min(s + t, n)) for s in range(0, n, t)] for n, t in zip(shape, tile)]
    return [tuple(r) for r in itertools.product(*ranges)]


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on ``device``; channels_last_3d memory format (faster 3-D convs on CPU)."""
    model = model.to(device).eval()
    try:
        model = model.to(memory_format=torch.channels_last_3d)
    except (RuntimeError, TypeError):  # pragma: no cover - layers without 5-D weights
        pass
    return model


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def run_tiles(
    model: nn.Module,
    source,
    *,
    factors: Sequence[int],
    tile_size: Sequence[int],
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 1,
    skip: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, tuple[tuple[int, int], ...], np.ndarray]]:
    """Yield ``(index, core_tile, output_block)`` for every tile of ``source``.

    ``output_block`` covers ``core_tile`` scaled by ``factors`` exactly. Tiles for which
    ``skip(index)`` is true are not computed (used when resuming).
    """
    device = torch.device(device)
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    tiles = tile_grid(source.shape, tile_size)
    todo = [(i, t) for i, t in enumerate(tiles) if not (skip and skip(i))]
    # batch tiles of equal shape together
    groups: dict[tuple[int, ...], list] = {}
    for i, t in todo:
        groups.setdefault(tuple(b - a for a, b in t), []).append((i, t))
    ordered = []
    for items in groups.values():
        for k in range(0, len(items), max(1, batch_size)):
            ordered.append(items[k : k + batch_size])
    ordered.sort(key=lambda g: g[0][0])
    with torch.inference_mode():
        for group in ordered:
            blocks = [
                read_padded(source, [a - h for (a, _), h in zip(t, halo)], [b + h for (_, b), h in zip(t, halo)])
                for _, t in group
            ]
            x = torch.from_numpy(np.stack(blocks)[:, None]).to(device)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            with _autocast(device, amp):
                y = model(x)
            y = y.float().cpu().numpy()[:, 0]
            for (i, t), out in zip(group, y):
                crop = tuple(
                    slice(h * f, out.shape[ax] - h * f) for ax, (h, f) in enumerate(zip(halo, factors))
                )
                yield i, t, out[crop]


def predict_array(
    model: nn.Module,
    volume: np.ndarray,
    *,
    factors: Sequence[int],
    tile_size: Sequence[int] = (32, 128, 128),
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 1,
) -> np.ndarray:
    """Restore an in-memory ZYX volume; returns the output-grid array (float32)."""
    out_shape = tuple(int(n) * int(f) for n, f in zip(volume.shape, factors))
    out = np.empty(out_shape, dtype=np.float32)
    for _, t, block in run_tiles(
        model, volume, factors=factors, tile_size=tile_size, device=device, amp=amp, batch_size=batch_size
    ):
        out[tuple(slice(a * f, b * f) for (a, b), f in zip(t, factors))] = block
    return out


def predict_single_pass(model: nn.Module, volume: np.ndarray, *, factors: Sequence[int]) -> np.ndarray:
    """Reference: one pass over the whole mirror-padded volume (for tests and benchmarks)."""
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    padded = np.pad(volume.astype(np.float32), [(h, h) for h in halo], mode="symmetric")
    with torch.inference_mode():
        y = model(torch.from_numpy(padded)[None, None]).float().numpy()[0, 0]
    return y[tuple(slice(h * f, y.shape[a] - h * f) for a, (h, f) in enumerate(zip(halo, factors)))]


class Progress:
    """Log progress with rate and ETA at most every ``every_s`` seconds."""

    def __init__(self, total: int, *, what: str, every_s: float = 10.0):
        self.total = max(1, total)
        self.what = what
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last = -math.inf
        self.done = 0

    def update(self, n: int = 1, **extra) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            el = now - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else float("nan")
            more = " ".join(f"{k} {v}" for k, v in extra.items())
            log.info(
                "%s %d/%d (%.0f%%) elapsed %.1fs ETA %.1fs %s",
                self.what, self.done, self.total, 100.0 * self.done / self.total, el, eta, more,
            )


def restore_to_store(
    model: nn.Module,
    source,
    dest,
    *,
    factors: Sequence[int],
    tile_size: Sequence[int],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 1,
    done_tiles: set[int] | None = None,
    on_tile_done: Callable[[int], None] | None = None,
) -> dict:
    """Stream ``source`` (LR, normalised) through ``model`` into the array ``dest``.

    Parameters
    ----------
    dest
        Writable array of the output shape (zarr array or numpy), best chunked as
        ``tile_size × factors`` so that tiles map onto whole chunks.
    transform
        Applied to each output block before writing (e.g. undo normalisation, cast).
    done_tiles, on_tile_done
        Resume support: tiles in ``done_tiles`` are skipped; ``on_tile_done(i)`` is called
        after tile ``i`` is fully written.

    Returns
    -------
    dict
        ``{"tiles": n, "computed": m, "seconds": s, "mvoxel_per_s": r}``.
    """
    done_tiles = done_tiles or set()
    n_tiles = len(tile_grid(source.shape, tile_size))
    progress = Progress(n_tiles - len(done_tiles), what="inference tiles")
    t0 = time.monotonic()
    computed = 0
    voxels = 0
    for i, t, block in run_tiles(
        model, source, factors=factors, tile_size=tile_size, device=device, amp=amp,
        batch_size=batch_size, skip=lambda k: k in done_tiles,
    ):
        if transform is not None:
            block = transform(block)
        dest[tuple(slice(a * f, b * f) for (a, b), f in zip(t, factors))] = block
        computed += 1
        voxels += block.size
        if on_tile_done:
            on_tile_done(i)
        progress.update()
    secs = time.monotonic() - t0
    return {
        "tiles": n_tiles,
        "computed": computed,
        "seconds": secs,
        "mvoxel_per_s": voxels / 1e6 / secs if secs > 0 else float("nan"),
    }


def out_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(n) * int(f) for n, f in zip(shape, factors))


def default_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


__all__ = [
    "CubicUpsampler", "read_padded", "tile_grid", "prepare_model", "run_tiles", "predict_array",
    "predict_single_pass", "restore_to_store", "Progress", "out_shape", "default_device"
]
