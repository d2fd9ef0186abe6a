"""Tiled, streamed whole-FOV inference.

A volume is cut into core tiles; each tile is read with a halo of ``model.halo`` input
voxels (mirror-padded where it leaves the volume), passed through the network, and the
halo is cropped from the output. Because the halo covers the network's receptive field,
the tiled result equals one pass over the mirror-padded volume, for any tile size.
Input is read and output written tile by tile, so memory depends on the tile size, not
on the volume. Back-projection around the network is the exception where memory allows:
on a CPU its steps run over the whole volume after the network's tiles
(:func:`whole_volume_back_projection`), instead of widening every tile's halo by their
reach; the output is the same (every step sees the current estimate mirrored about the
volume's border, in tiles as over the whole volume: :func:`selfres.ensemble.mirror_outside`).
"""

from __future__ import annotations

import collections
import copy
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import degrade
from .degrade import mirror_indices
from .allocator import heap_only, keep_freed_memory  # noqa: F401 - keep_freed_memory re-exported
from .atomic import partial_path, waiting_lock
from .errors import SelfresError
from .models import autocast_context, compute_label
from .models import is_out_of_memory as _is_oom
from .models import memory_error_cause

log = logging.getLogger("selfres.infer")


class CubicUpsampler(nn.Module):
    """Tricubic interpolation (the project's reference) as a module with a halo."""

    computes_in_float32 = True  # whatever infer.amp says (its tiles are labelled so)

    def __init__(self, factors: Sequence[int]):
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        self.halo = tuple(2 if f > 1 else 0 for f in self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, Z, Y, X)
        with torch.autocast(device_type=x.device.type, enabled=False):  # the reference stays float32
            return degrade.upscale_cubic(x.float(), self.factors)


def read_padded(source, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Read ``source[lo:hi]`` as float32, mirror-padding (symmetric) outside the array,
    for any range (a pad wider than the array, or a range wholly outside, mirrors again).

    ``source`` is anything with ``shape`` and basic slicing (numpy, zarr, dask).
    """
    shape = source.shape
    # source index of every wanted index: the symmetric mirror, repeated (period 2n)
    index = [mirror_indices(np.arange(a, b), n, edge=True) for a, b, n in zip(lo, hi, shape)]
    clo = [int(i.min()) if i.size else 0 for i in index]
    chi = [int(i.max()) + 1 if i.size else 0 for i in index]
    block = source[tuple(slice(a, b) for a, b in zip(clo, chi))]
    if hasattr(block, "compute"):
        block = block.compute()
    block = np.asarray(block, dtype=np.float32)
    for ax, (i, a, l, h) in enumerate(zip(index, clo, lo, hi)):
        if int(l) < 0 or int(h) > shape[ax]:  # inside the source the slice is already the block
            block = np.take(block, i - a, axis=ax)
    return block


class SensorRepaired:
    """A read-only view of a ``(Z, Y, X)`` source whose hot and dead sensor pixels (the
    lateral ``positions``, :func:`selfres.noise.sensor_defect_positions`) read as the median of
    their neighbours (:func:`selfres.noise.repair_sensor_defects`), as the network was trained;
    each read takes one more voxel around it, so a tile reads what the whole volume would."""

    def __init__(self, source, positions: np.ndarray):
        self.source, self.positions = source, np.asarray(positions, dtype=bool)
        self.shape = tuple(int(n) for n in source.shape)
        self.ndim, self.dtype = 3, np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        from .noise import repair_sensor_defects

        z, y, x = (range(*k.indices(n)) for k, n in zip(key, self.shape))
        if z.step != 1 or y.step != 1 or x.step != 1:
            raise ValueError("SensorRepaired reads boxes (slices of step 1)")
        ya, yb = max(0, y.start - 1), min(self.shape[1], y.stop + 1)
        xa, xb = max(0, x.start - 1), min(self.shape[2], x.stop + 1)
        block = self.source[z.start:z.stop, ya:yb, xa:xb]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=np.float32)
        block = repair_sensor_defects(block, self.positions[ya:yb, xa:xb])
        return block[:, y.start - ya:y.stop - ya, x.start - xa:x.stop - xa]


def write_defects_as_acquired(block: np.ndarray, tile, acquired, positions: np.ndarray,
                              factors: Sequence[int]) -> np.ndarray:
    """``block`` (the output of core ``tile``) with the output voxels of each sensor defect in
    it (the ``fy × fx`` columns nearest each position) set to the tricubic interpolation of
    the ``acquired`` source there: the network restored the repaired input, and the output
    keeps the defect as acquired rather than invent what it hid."""
    (z0, z1), (y0, y1), (x0, x1) = tile
    ys, xs = np.nonzero(positions[y0:y1, x0:x1])
    if ys.size == 0:
        return block
    fz, fy, fx = (int(f) for f in factors)
    # each defect's 5×5 window through the tile's planes, with the reach of the cubic kernel (2)
    region = read_padded(acquired, (z0 - 2, y0 - 2, x0 - 2), (z1 + 2, y1 + 3, x1 + 3))
    windows = np.stack([region[:, y:y + 5, x:x + 5] for y, x in zip(ys, xs)])  # (n, z + 4, 5, 5)
    upscaled = np.asarray(degrade.upscale_cubic(windows, (fz, fy, fx)))
    own = upscaled[:, 2 * fz:upscaled.shape[1] - 2 * fz, 2 * fy:3 * fy, 2 * fx:3 * fx]
    block = np.array(block, dtype=np.float32, copy=True)
    for k, (y, x) in enumerate(zip(ys, xs)):
        block[:, y * fy:(y + 1) * fy, x * fx:(x + 1) * fx] = own[k]
    return block


def output_slices(tile, factors: Sequence[int]) -> tuple[slice, ...]:
    """The output-grid slices of the core tile ``((z0, z1), (y0, y1), (x0, x1))``."""
    return tuple(slice(a * f, b * f) for (a, b), f in zip(tile, factors))


def _assemble(blocks, shape: Sequence[int], factors: Sequence[int], progress: "Progress | None" = None) -> np.ndarray:
    """The output array (float32) of a source of ``shape``, from :func:`run_tiles`' blocks."""
    out = np.empty(out_shape(shape, factors), dtype=np.float32)
    for _, t, block in blocks:
        out[output_slices(t, factors)] = block
        if progress is not None:
            progress.update()
    return out


def tile_grid(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[tuple[int, int], ...]]:
    """Core tiles ``((z0, z1), (y0, y1), (x0, x1))`` covering ``shape``, in C order."""
    tile = [max(1, min(int(t), int(n))) for t, n in zip(tile, shape)]
    ranges = [[(s, min(s + t, n)) for s in range(0, n, t)] for n, t in zip(shape, tile)]
    return [tuple(r) for r in itertools.product(*ranges)]


class SubpixelConv(nn.Module):
    """Nearest upsampling by ``factors`` followed by a 'same' convolution, computed at low resolution.

    ``conv(nearest_up(x))`` equals ``pixel_shuffle(conv'(x))`` where ``conv'`` has one
    output channel per sub-pixel phase: output voxel ``J = f·j + p`` of an axis reads
    ``up[J + t] = x[j + floor((p + t) / f)]``, so tap ``t`` of the original kernel lands at
    low-resolution offset ``floor((p + t) / f)`` of phase ``p``. Zero padding agrees too
    (``J + t`` is outside the high-resolution grid exactly when ``j + floor((p + t)/f)``
    is outside the low-resolution one), so the result is the same everywhere, without
    the ``f³``-times larger upsampled feature map.

    Parameters
    ----------
    conv
        The high-resolution ``nn.Conv3d`` (groups 1, dilation 1, stride 1, odd kernel).
    factors
        Nearest-upsampling factors ``(fz, fy, fx)``.
    """

    def __init__(self, conv: nn.Conv3d, factors: Sequence[int]):
        super().__init__()
        from .models import pixel_shuffle_nd

        self._shuffle = pixel_shuffle_nd
        self.factors = tuple(int(f) for f in factors)
        w = conv.weight.detach().cpu()  # (cout, cin, kz, ky, kx); built on CPU, moved with the module
        cout, cin = w.shape[:2]
        radii = [(k - 1) // 2 for k in w.shape[2:]]
        lo = [math.floor((0 - r) / f) for r, f in zip(radii, self.factors)]
        hi = [math.floor((f - 1 + r) / f) for r, f in zip(radii, self.factors)]
        rad = [max(-a, b) for a, b in zip(lo, hi)]
        phases = list(itertools.product(*[range(f) for f in self.factors]))
        new = torch.zeros((cout, len(phases), cin, *[2 * r + 1 for r in rad]), dtype=w.dtype)
        for k, ph in enumerate(phases):
            for taps in itertools.product(*[range(-r, r + 1) for r in radii]):
                d = [math.floor((p + t) / f) + R for p, t, f, R in zip(ph, taps, self.factors, rad)]
                src = [t + r for t, r in zip(taps, radii)]
                new[:, k, :, d[0], d[1], d[2]] += w[:, :, src[0], src[1], src[2]]
        self.conv = nn.Conv3d(cin, cout * len(phases), tuple(2 * r + 1 for r in rad), padding=tuple(rad),
                              bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(new.reshape(cout * len(phases), cin, *new.shape[3:]))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().repeat_interleave(len(phases)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shuffle(self.conv(x), self.factors)


class BandedCubic(nn.Module):
    """Keys-cubic upscaling by integer factors as 5-tap convolutions, one axis at a time.

    Per axis of factor ``f``, output phase ``p`` is a 5-tap filter of the input
    (weights ``keys_cubic((p + 0.5)/f - 0.5 - d)``, ``d = -2..2``) and the phases are
    interleaved, which is what :func:`selfres.degrade.upscale_cubic` computes, without its
    dense per-axis resampling matrices. Borders are zero-padded, so the outermost 2 input
    voxels per side differ from ``upscale_cubic``'s mirrored border; tiled inference crops
    a halo of at least 2 voxels (``model.halo``), so results are unchanged there.

    Parameters
    ----------
    factors
        Integer factors ``(fz, fy, fx)``.
    """

    def __init__(self, factors: Sequence[int]):
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        for ax, f in enumerate(self.factors):
            w = torch.zeros(f, 1, 5)
            for p in range(f):
                delta = (p + 0.5) / f - 0.5
                for k, d in enumerate(range(-2, 3)):
                    w[p, 0, k] = float(degrade.keys_cubic(delta - d))
            self.register_buffer(f"w{ax}", w, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # five shifted multiply-adds per phase: ~9x faster on CPU than a 1-channel conv3d
        # with a 5x1x1 kernel (oneDNN falls back to a slow path for it), same result
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().contiguous()
            for ax, f in enumerate(self.factors):
                if f == 1:
                    continue
                w = getattr(self, f"w{ax}")[:, 0, :].tolist()  # (f, 5)
                dim = 2 + ax
                n = x.shape[dim]
                pad = [0, 0, 0, 0, 0, 0]
                pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = 2
                xp = F.pad(x, pad)
                phases = []
                for p in range(f):
                    acc = xp.narrow(dim, 0, n) * w[p][0]
                    for k in range(1, 5):
                        acc.add_(xp.narrow(dim, k, n), alpha=w[p][k])
                    phases.append(acc)
                shape = list(x.shape)
                shape[dim] = n * f
                x = torch.stack(phases, dim=dim + 1).reshape(shape)  # interleave the phases
            return x


def _pad_conv(conv: nn.Conv3d, *, cin: int, cout: int) -> nn.Conv3d:
    """``conv`` with zero weights for extra input and output channels (zero bias)."""
    new = nn.Conv3d(cin, cout, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: conv.out_channels, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[: conv.out_channels] = conv.bias
    return new


def pad_channels(seq: nn.Sequential, *, multiple: int = 8) -> int:
    """Widen ``Conv → [PReLU] → Conv`` links of ``seq`` to a multiple of ``multiple`` channels.

    The extra channels have zero weights and bias, so they carry zeros (PReLU keeps 0)
    and the next convolution ignores them: the output is unchanged. oneDNN runs 3-D
    convolutions whose channel counts are multiples of 8 several times faster (12 → 16
    channels: 0.30 s → 0.05 s for a 20 × 80 × 80 map here). Returns the links widened.
    """
    mods = list(seq)
    n = 0
    for i, a in enumerate(mods):
        if not (isinstance(a, nn.Conv3d) and a.groups == 1 and a.out_channels % multiple):
            continue
        j = i + 1
        if j < len(mods) and isinstance(mods[j], nn.PReLU):
            j += 1
        if not (j < len(mods) and isinstance(mods[j], nn.Conv3d) and mods[j].groups == 1):
            continue
        width = -(-a.out_channels // multiple) * multiple
        seq[i] = mods[i] = _pad_conv(a, cin=a.in_channels, cout=width)
        if j == i + 2 and mods[i + 1].num_parameters > 1:
            act = nn.PReLU(width)
            with torch.no_grad():
                act.weight.fill_(1.0)
                act.weight[: mods[i + 1].num_parameters] = mods[i + 1].weight
            seq[i + 1] = mods[i + 1] = act
        seq[j] = mods[j] = _pad_conv(mods[j], cin=width, cout=mods[j].out_channels)
        n += 1
    return n


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` rewritten for fast inference, same output once halos are cropped.

    Each nearest-upsample + conv pair runs as :class:`SubpixelConv` (exact everywhere)
    and the tricubic residual base as :class:`BandedCubic` (exact except within 2 input
    voxels of the array border, which tiled inference crops). Applies to enhance networks
    (``svision_mini``, ``resnet3d``) whose high-resolution body is one plain convolution;
    anything else is returned unchanged (not copied).
    """
    import copy

    from .models import EnhanceNet, _Nearest, _ResBlock

    def fusable(m):
        if not (isinstance(m, EnhanceNet) and isinstance(m.up, _Nearest) and len(m.hr_body) == 1):
            return False
        c = m.hr_body[0]
        return (isinstance(c, nn.Conv3d) and c.groups == 1 and c.stride == (1, 1, 1)
                and c.dilation == (1, 1, 1) and all(k % 2 for k in c.kernel_size)
                and tuple(c.padding) == tuple((k - 1) // 2 for k in c.kernel_size))

    if not any(fusable(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if fusable(m):
            m.hr_body = nn.Sequential(SubpixelConv(m.hr_body[0], m.up.factors))
            m.up = nn.Identity()
            if isinstance(m.lr_body, nn.Sequential):
                pad_channels(m.lr_body)
            if getattr(m.base, "kind", None) == "tricubic" and all(
                    h >= 2 for h, f in zip(m.halo, m.factors) if f > 1):  # the border band is cropped
                m.base = BandedCubic(m.factors)
    for m in model.modules():  # residual scales folded into the block's last conv
        if isinstance(m, _ResBlock) and m.scale != 1.0 and isinstance(m.body[-1], (nn.Conv2d, nn.Conv3d)):
            with torch.no_grad():
                m.body[-1].weight.mul_(m.scale)
                if m.body[-1].bias is not None:
                    m.body[-1].bias.mul_(m.scale)
            m.scale = 1.0
    return model


class SplitPReLU(nn.Module):
    """PReLU as ``max(x, 0) + a·min(x, 0)`` in the input's dtype (same values as PReLU).

    On CPU, PyTorch's PReLU on channels-last bf16 tensors is computed in float32 with
    layout copies (~7x slower than these two clamps, measured); this keeps it in bf16.
    """

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.to(x.dtype)
        a = a.view(1, -1, *([1] * (x.dim() - 2))) if a.numel() > 1 else a
        return torch.clamp_min(x, 0) + a * torch.clamp_max(x, 0)


def split_prelus(model: nn.Module) -> nn.Module:
    """Replace every ``nn.PReLU`` of ``model`` (in place) by :class:`SplitPReLU`."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.PReLU):
            setattr(model, name, SplitPReLU(child))
        else:
            split_prelus(child)
    return model


def prepare_model(model: nn.Module, device: torch.device | str, *, fuse: bool = True,
                  channels_last_2d: bool = False) -> nn.Module:
    """A copy of ``model`` ready for inference on ``device``; the model passed in is never
    modified (it may still be training).

    Eval mode; on CPU every PReLU computed as two clamps (:class:`SplitPReLU`); 3-D nets
    in channels_last_3d memory format (faster 3-D convs). With ``fuse`` (default),
    nearest-upsample + conv pairs are computed at low resolution (:func:`fuse_for_inference`;
    same output, less memory traffic). ``channels_last_2d``: 2-D nets in channels_last
    format (~2x faster 2-D convs with oneDNN on CPU, measured for the isotropic
    restorer; not measured faster on CUDA).
    """
    import copy

    device = torch.device(device)
    prepared = fuse_for_inference(model) if fuse else model
    if prepared is model:
        prepared = copy.deepcopy(model)
    if device.type == "cpu":
        split_prelus(prepared)
    prepared = prepared.to(device).eval()
    if any(isinstance(m, nn.Conv3d) for m in prepared.modules()):
        try:
            prepared = prepared.to(memory_format=torch.channels_last_3d)
        except (RuntimeError, TypeError):  # pragma: no cover - 4-D weights beside the 3-D ones
            pass
    elif channels_last_2d:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


def back_projection_iterations(model: nn.Module) -> int:
    """Back-projection steps inside ``model`` (0 when it is a bare network): wrappers are
    followed through their ``.model``."""
    seen = 0
    while model is not None and seen < 16:
        if hasattr(model, "iterations") and hasattr(model, "step_reach"):
            return int(model.iterations)
        model, seen = getattr(model, "model", None), seen + 1
    return 0


def _halo_advice(model: nn.Module) -> str:
    """What to change when a padded tile does not fit: the back-projection iterations only
    where the model has some (they are most of a large halo)."""
    n = back_projection_iterations(model)
    bp = (f"Lower infer.back_projection_iterations ({n} now; each iteration adds ~5 voxels of halo) or "
          if n else "Lower ")
    return f"{bp}infer.tile_size, or use a machine with more memory"


class _Fitter:
    """Run the network on mirror-padded input blocks, halving the work on out-of-memory.

    A block that does not fit is cut in two along its longest core axis; each half keeps
    its halo (sliced from the padded block itself), so the result is unchanged. The size
    that failed is remembered: later blocks that large are split before trying.

    ``outside`` (per block, per axis ``(low, high)``: input voxels at each end of the padded
    block that lie outside the volume) is passed on to a model that asks for it
    (``mirrors_outside``: back-projection, :func:`selfres.ensemble.mirror_outside`).
    """

    def __init__(self, model: nn.Module, *, halo, factors, device: torch.device, amp: bool,
                 min_core: int = 1):
        self.model = model
        self.halo = tuple(int(h) for h in halo)
        self.factors = tuple(int(f) for f in factors)
        self.device = device
        self.amp = amp
        self.min_core = min_core
        self.limit = math.inf  # input voxels per forward call known to fail (exclusive bound)
        self.batch_limit = math.inf  # input voxels a batch of tiles may hold (GPU caps; one tile always runs)
        self.splits = 0
        self.cause = ""  # the last out-of-memory error's words, where not plainly out of memory
        self.pass_tile: tuple[int, ...] | None = None  # set by run_tiles

    def _forward(self, x: np.ndarray, outside: list | None = None) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        t = t.contiguous(memory_format=torch.channels_last_3d)
        with heap_only(), autocast_context(self.device, enabled=self.amp, cpu=True):
            y = self.model(t) if outside is None else self.model(t, outside=outside)
        return y.float().cpu().numpy()[:, 0]

    def _crop(self, out: np.ndarray) -> np.ndarray:
        return out[(slice(None),) + tuple(
            slice(h * f, out.shape[ax + 1] - h * f)
            for ax, (h, f) in enumerate(zip(self.halo, self.factors)))]

    def batch(self, blocks: list[np.ndarray], outside: list | None = None) -> list[np.ndarray]:
        """Outputs (halo cropped) of equally shaped padded blocks."""
        if len(blocks) > 1 and len(blocks) * blocks[0].size < min(self.limit, self.batch_limit):
            try:
                return list(self._crop(self._forward(np.stack(blocks)[:, None], outside)))
            except Exception as exc:  # noqa: BLE001 - only OOM is handled
                if not _is_oom(exc):
                    raise
                self.cause = memory_error_cause(exc)
            self._oom(len(blocks) * blocks[0].size)  # out of the except: the failed pass's tensors are freed
        return [self.single(b, None if outside is None else outside[k]) for k, b in enumerate(blocks)]

    def single(self, block: np.ndarray, outside: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """Output (halo cropped) of one padded block, split as needed to fit."""
        if block.size < self.limit:
            try:
                return self._crop(self._forward(block[None, None], None if outside is None else [outside]))[0]
            except Exception as exc:  # noqa: BLE001 - only OOM is handled
                if not _is_oom(exc):
                    raise
                self.cause = memory_error_cause(exc)
            self._oom(block.size)  # out of the except: the failed pass's tensors are freed
        core = [n - 2 * h for n, h in zip(block.shape, self.halo)]
        ax = int(np.argmax(core))
        if core[ax] < 2 * self.min_core:
            raise MemoryError(
                f"a tile of {core} input voxels does not fit in {self.device} memory even after "
                f"halving: every piece is read with a halo of {list(self.halo)} input voxels per side "
                f"({block.size:,} padded input voxels here). {_halo_advice(self.model)}.{self.cause}")
        self.splits += 1
        mid = core[ax] // 2
        h = self.halo[ax]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, mid + 2 * h)
        hi[ax] = slice(mid, None)
        n = block.shape[ax]
        return np.concatenate([self.single(block[tuple(lo)], _outside_of_part(outside, ax, 0, mid + 2 * h, n)),
                               self.single(block[tuple(hi)], _outside_of_part(outside, ax, mid, n, n))], axis=ax)

    def _oom(self, size: int) -> None:
        self.limit = min(self.limit, size)
        log.warning("out of memory on %s with %d input voxels per pass; halving the work and retrying",
                    self.device, size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _halo_box(t, halo):
    return [a - h for (a, _), h in zip(t, halo)], [b + h for (_, b), h in zip(t, halo)]


def _outside(box, halo, shape) -> list[tuple[int, int]]:
    """Per axis ``(low, high)``: input voxels of the core ``box`` read with ``halo`` that lie
    outside a volume of ``shape``."""
    lo, hi = _halo_box(box, halo)
    return [(max(0, -a), max(0, b - int(n))) for a, b, n in zip(lo, hi, shape)]


def _outside_of_part(outside, ax: int, start: int, stop: int, length: int):
    """``outside`` of the part ``[start, stop)`` along ``ax`` of a padded block ``length`` long."""
    if outside is None:
        return None
    part = list(outside)
    low, high = part[ax]
    part[ax] = (max(0, low - start), max(0, high - (length - stop)))
    return part


def _read_group(source, group, halo):
    return [read_padded(source, *_halo_box(t, halo)) for _, t in group]


def job_cores() -> int:
    """The cores this process may run on (a Slurm job's or a container's CPU set), not the node's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def io_threads(device: torch.device | str) -> int:
    """Reader (and writer) threads: 1 on CPU, where the cores compute; on CUDA a quarter of
    the job's cores, 1 to 4, so that decompression and compression keep up with the GPU (the
    job's cores: its CPU set, or fewer where ``--threads`` gave torch fewer)."""
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(4, min(job_cores(), torch.get_num_threads()) // 4))


#: Host bytes a CPU pass takes per output voxel of its padded block, at least: 20–45 measured
#: for the default network with 0–10 back-projection iterations at ×2 and ×4 (activations at low
#: resolution, output and back-projection buffers at high resolution); the network's own
#: activations set more where they need it (:func:`cpu_pass_bytes_per_input_voxel`).
CPU_PASS_BYTES_PER_OUTPUT_VOXEL = 48


def _stat_bytes(node: Path, key: str) -> int:
    try:
        for line in (node / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


#: cgroup v2 and v1 files: (controller folder, limit, usage, reclaimable page cache in memory.stat)
_CGROUP_MEMORY_FILES = {
    "v2": ("", "memory.max", "memory.current", "inactive_file"),
    "v1": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def _cgroup_memory_left(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process and its ancestors
    (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``: a Slurm job's ``--mem``), or None
    where there is no such limit. Inactive page cache counts as free (the kernel drops it
    before it kills)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    left = None
    for line in lines:
        hierarchy, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            kind = "v2"
        elif "memory" in controllers.split(","):
            kind = "v1"
        else:
            continue
        folder, limit_file, usage_file, cache_key = _CGROUP_MEMORY_FILES[kind]
        top = cgroup_root / folder if folder else cgroup_root
        node = top / rel.strip().lstrip("/")
        while True:
            try:
                limit = (node / limit_file).read_text().strip()
                if limit != "max" and int(limit) < 2**60:  # v1 writes "no limit" as ~2**63
                    used = int((node / usage_file).read_text().strip()) - _stat_bytes(node, cache_key)
                    rest = max(0, int(limit) - max(0, used))
                    left = rest if left is None else min(left, rest)
            except (OSError, ValueError):
                pass
            if node == top or node.parent == node:
                break
            node = node.parent
    return left


def _address_space_left() -> int | None:
    """The address-space limit (``RLIMIT_AS``) less what this process has mapped (``VmSize``);
    None without a limit or where it cannot be read."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def host_memory_available(*, meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                          proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes this process can still allocate: ``MemAvailable`` of ``/proc/meminfo``, capped
    by its cgroup's memory limit (under Slurm the job's ``--mem``, not the node's RAM) and by
    its address-space limit (``ulimit -v``, SGE's ``h_vmem``: the limit less the address space
    already mapped). None where none can be read (not Linux)."""
    avail = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for left in (_cgroup_memory_left(cgroup_root, proc_cgroup), _address_space_left()):
        if left is not None:
            avail = left if avail is None else min(avail, left)
    return avail


#: Live copies of the widest activation a CPU forward holds at its peak (its input and output,
#: oneDNN's reordered copies, a residual sum): 6.6–6.8 measured for resnet3d of width 16 and
#: 64 at 2,2,2 and 2,1,1 (a reviewer's /proc VmHWM of one pass, thirty-sixth session)
CPU_ACTIVATION_COPIES = 7

#: Probes larger than this (padded input voxels) are not run: the constant bound is used
CPU_PROBE_MAX_VOXELS = 200_000


def cpu_pass_bytes_per_input_voxel(factors: Sequence[int], widest_per_voxel: float | None) -> float:
    """Host bytes a CPU pass takes per padded input voxel: the network's widest activation
    (``widest_per_voxel`` elements per input voxel, :func:`widest_per_input_voxel`) times
    :data:`CPU_ACTIVATION_COPIES` float32 copies, plus 16 bytes per output voxel (the output and
    back-projection buffers); never below :data:`CPU_PASS_BYTES_PER_OUTPUT_VOXEL` per output
    voxel. A constant per output voxel alone was 1.2–4.5× too low for factors of small product
    (1,2,2; 2,1,1) and for wider networks: a pass it judged safe peaked at 3× the memory left."""
    n_out = math.prod(int(f) for f in factors)
    floor = CPU_PASS_BYTES_PER_OUTPUT_VOXEL * n_out
    if widest_per_voxel is None:
        return floor
    return max(floor, CPU_ACTIVATION_COPIES * 4 * float(widest_per_voxel) + 16 * n_out)


def widest_per_input_voxel(model: nn.Module, tile: Sequence[int], halo: Sequence[int]) -> float | None:
    """Elements of ``model``'s widest activation per padded input voxel, from one forward of a
    small block (up to 8 voxels of core per axis, with the halo), on the CPU in float32; None
    where that block would be large (a wide halo) or the forward fails. Kept on the model (its
    shape does not change with its weights): training validates with the same net many times."""
    probe = tuple(min(int(t), 8) + 2 * int(h) for t, h in zip(tile, halo))
    if math.prod(probe) > CPU_PROBE_MAX_VOXELS:
        return None
    known = model.__dict__.setdefault("_selfres_widest_per_voxel", {})
    if probe not in known:
        from .ensemble import SelfEnsemble

        try:
            twin = copy.deepcopy(model)  # not the model itself: a forward of a caller's model is a tile to it
            for part in twin.modules():  # a self-ensemble runs its members one after another: one tells
                if isinstance(part, SelfEnsemble):  # the widest activation (a rotation keeps its size)
                    part.members = part.members[:1]
            x = torch.zeros((1, 1, *probe))
            with torch.inference_mode(), widest_activation(twin) as widest:
                twin(x)
        except Exception:  # noqa: BLE001 - an estimate: the constant bound stands in
            return None
        known[probe] = widest[0] / math.prod(probe) if widest[0] else None
    return known[probe]


def cpu_pass_limit(factors: Sequence[int], *, available: int | None, fraction: float = 0.8,
                   widest_per_voxel: float | None = None) -> float:
    """Padded input voxels one CPU pass may hold: ``fraction`` of ``available`` bytes at
    :func:`cpu_pass_bytes_per_input_voxel` (inf where memory is unknown)."""
    if available is None:
        return math.inf
    return fraction * available / cpu_pass_bytes_per_input_voxel(factors, widest_per_voxel)


#: Host bytes a GPU pass's output takes per output voxel, an estimate: the float32 copy
#: from the device, the halo-cropped copies of its tiles and the blocks queued for writing.
GPU_PASS_HOST_BYTES_PER_OUTPUT_VOXEL = 16


def gpu_pass_host_limit(factors: Sequence[int], *, available: int | None, fraction: float = 0.5) -> float:
    """Padded input voxels whose output a GPU pass may bring to the host: ``fraction`` of
    ``available`` bytes at :data:`GPU_PASS_HOST_BYTES_PER_OUTPUT_VOXEL` (inf where memory is
    unknown). A Slurm GPU job with a small ``--mem`` would otherwise be killed at ×4."""
    if available is None:
        return math.inf
    return fraction * available / (GPU_PASS_HOST_BYTES_PER_OUTPUT_VOXEL * math.prod(int(f) for f in factors))


#: A GPU pass is kept under this many padded input voxels, so that the widest activation
#: (up to 256 channels) stays below 2³¹ elements (32-bit indexing in some kernels); a
#: wider network gets less (:func:`pass_voxel_cap`).
MAX_PASS_VOXELS = 8 * 2**20


def pass_tile_for_budget(tile_size: Sequence[int], shape: Sequence[int], halo: Sequence[int],
                         budget_voxels: float) -> tuple[int, int, int]:
    """Largest pass made of whole grid tiles whose padded box holds ≤ ``budget_voxels``.

    The pass is a per-axis multiple of ``tile_size`` (capped at the volume), so passes
    are unions of grid tiles and the grid, its records and its blocks do not change.
    It grows one tile at a time along the axis where the pass is shortest (y and x
    before z on a tie): square-ish passes waste the least on halos. Never smaller than
    one tile (out-of-memory halving handles a tile that does not fit).
    """
    tile = [max(1, min(int(t), int(n))) for t, n in zip(tile_size, shape)]
    n_tiles = [math.ceil(int(n) / t) for n, t in zip(shape, tile)]
    mult = [1, 1, 1]

    def extent(m, ax):
        return min(m[ax] * tile[ax], int(shape[ax]))

    def padded(m):
        return math.prod(extent(m, ax) + 2 * int(halo[ax]) for ax in range(3))

    while True:
        grow = []
        for ax in range(3):
            if mult[ax] < n_tiles[ax]:
                cand = list(mult)
                cand[ax] += 1
                if padded(cand) <= budget_voxels:
                    grow.append(ax)
        if not grow:
            break
        ax = min(grow, key=lambda a: (extent(mult, a), a == 0))
        mult[ax] += 1
    return tuple(extent(mult, ax) for ax in range(3))  # type: ignore[return-value]


def gpu_memory_budget(device: torch.device, fraction: float) -> int:
    """Bytes a pass may use: ``fraction`` of the free device memory, counting blocks the
    caching allocator holds but does not use as free."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(fraction * (free + max(0, cached)))


@contextlib.contextmanager
def widest_activation(model: nn.Module) -> Iterator[list[int]]:
    """Record the element count of the largest tensor any submodule of ``model`` returns
    while the block runs (one forward pass): ``[n]``."""
    widest = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            widest[0] = max(widest[0], output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield widest
    finally:
        for h in handles:
            h.remove()


def measure_pass_bytes(model: nn.Module, padded_shape: Sequence[int], *, device: torch.device,
                       amp: bool) -> tuple[float, float]:
    """Peak device bytes, and elements of the widest activation, per padded input voxel of
    one forward pass (CUDA)."""
    x = torch.zeros((1, 1, *[int(n) for n in padded_shape]), device=device)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast_context(device, enabled=amp, cpu=True), widest_activation(model) as widest:
        y = model(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del x, y
    voxels = math.prod(int(n) for n in padded_shape)
    return max(1.0, peak / voxels), max(1.0, widest[0] / voxels)


def pass_voxel_cap(widest_per_voxel: float) -> float:
    """Padded input voxels a GPU pass may hold: :data:`MAX_PASS_VOXELS`, less where the
    network's widest activation (``widest_per_voxel`` elements per input voxel: 1024 for the
    paper's net at ×4) would reach 2³¹ elements."""
    return min(MAX_PASS_VOXELS, 0.9 * 2**31 / max(1.0, widest_per_voxel))


def fit_pass_tile(model: nn.Module, *, tile_size: Sequence[int], shape: Sequence[int], device: torch.device,
                  amp: bool, memory_fraction: float = 0.5, host_voxels: float = math.inf,
                  limit_out: list | None = None) -> tuple[int, int, int]:
    """The pass size for ``device``: on CUDA fitted to free memory, elsewhere one tile.

    On CUDA one grid tile is run once to measure the peak memory per padded voxel, and
    the pass grows (whole tiles, :func:`pass_tile_for_budget`) until it would use
    ``memory_fraction`` of the free memory, :func:`pass_voxel_cap` or ``host_voxels``
    (what the host can hold of a pass's output: :func:`gpu_pass_host_limit`). An
    out-of-memory error still halves a pass and retries (:class:`_Fitter`). ``limit_out``:
    a list the two hard caps together (activation size and host memory, in padded input
    voxels) are appended to, for the fitter to run a batch above them tile by tile.
    """
    tile = tuple(max(1, min(int(t), int(n))) for t, n in zip(tile_size, shape))
    if device.type != "cuda":
        return tile  # type: ignore[return-value]
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    padded = [t + 2 * h for t, h in zip(tile, halo)]
    cache = model.__dict__.setdefault("_selfres_pass_bytes", {})  # one probe per model, shape and precision
    key = (tuple(padded), bool(amp), str(device))
    if key not in cache:
        try:
            cache[key] = measure_pass_bytes(model, padded, device=device, amp=amp)
        except Exception as exc:  # noqa: BLE001 - an OOM on the probe: one tile per pass, halving as needed
            if not _is_oom(exc):
                raise
        if key not in cache:
            torch.cuda.empty_cache()  # out of the except: the probe's tensors are freed
            return tile  # type: ignore[return-value]
    per_voxel, widest_per_voxel = cache[key]
    budget = gpu_memory_budget(device, memory_fraction)
    hard_cap = min(pass_voxel_cap(widest_per_voxel), host_voxels)
    if limit_out is not None:
        limit_out.append(hard_cap)
    voxels = min(budget / per_voxel, hard_cap)
    pass_tile = pass_tile_for_budget(tile, shape, halo, voxels)
    (log.info if pass_tile != tile else log.debug)("GPU pass fitted to memory: %s input voxels (%d grid tiles of %s), %.0f bytes/voxel, "
             "budget %.1f GiB (%.0f%% of free)", pass_tile,
             math.prod(math.ceil(p / t) for p, t in zip(pass_tile, tile)), tile, per_voxel,
             budget / 2**30, 100 * memory_fraction)
    return pass_tile


def _passes(todo, pass_tile: Sequence[int]) -> list[tuple[tuple[tuple[int, int], ...], list]]:
    """Group grid tiles into passes: ``[(bounding box, [(i, tile), ...]), ...]``."""
    by_pass: dict[tuple[int, ...], list] = {}
    for i, t in todo:
        by_pass.setdefault(tuple(a // p for (a, _), p in zip(t, pass_tile)), []).append((i, t))
    out = []
    for members in by_pass.values():
        box = tuple((min(t[ax][0] for _, t in members), max(t[ax][1] for _, t in members)) for ax in range(3))
        out.append((box, members))
    out.sort(key=lambda u: u[1][0][0])
    return out


def _crop_member(out: np.ndarray, box, t, factors) -> np.ndarray:
    return out[tuple(slice((a - b0) * f, (b - b0) * f) for (a, b), (b0, _), f in zip(t, box, factors))]


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
    tiles: Sequence[int] | None = None,
    prefetch: int = 2,
    fitter_out: list | None = None,
    fit_memory: bool = True,
    memory_fraction: float = 0.5,
    readers: int | None = None,
) -> Iterator[tuple[int, tuple[tuple[int, int], ...], np.ndarray]]:
    """Yield ``(index, core_tile, output_block)`` for every tile of ``source``.

    Parameters
    ----------
    model
        Network with a ``halo`` attribute (input voxels needed on each side per axis).
    source
        ZYX array with basic slicing (numpy, zarr, dask).
    factors
        Output/input size ratio per axis.
    tile_size
        Core tile ``(z, y, x)`` in input voxels; the grid is :func:`tile_grid`.
    device, amp
        Where to run; mixed precision on CUDA.
    batch_size
        Tiles of equal shape per forward pass.
    skip
        Tiles for which ``skip(index)`` is true are not computed (used when resuming).
    tiles
        Only these tile indices (a block of a scattered run); default all.
    prefetch
        Groups of tiles read ahead by a reader thread while the network runs (0: none).
    fitter_out
        If given, the internal out-of-memory fitter is appended (for tests and logs).
    fit_memory, memory_fraction
        On CUDA, run several neighbouring grid tiles as one pass, as large as
        ``memory_fraction`` of the free GPU memory allows (:func:`fit_pass_tile`); the
        grid (and so resume records and scattered blocks) is unchanged. On CPU a pass is
        one tile (larger passes measured slower there), batched by ``batch_size``.
    readers
        Reader threads (default: 1 on CPU, where the cores compute; up to 4 on CUDA).

    Yields
    ------
    tuple
        ``output_block`` covers ``core_tile`` scaled by ``factors`` exactly. On an
        out-of-memory error a batch is run tile by tile and a tile is halved until it
        fits; the output is the same.
    """
    device = torch.device(device)
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    grid = tile_grid(source.shape, tile_size)
    wanted = range(len(grid)) if tiles is None else tiles
    todo = [(i, grid[i]) for i in wanted if not (skip and skip(i))]
    fitter = _Fitter(model, halo=halo, factors=factors, device=device, amp=amp)
    if fitter_out is not None:
        fitter_out.append(fitter)
    if not todo:
        return
    tile = tuple(max(1, min(int(t), int(n))) for t, n in zip(tile_size, source.shape))
    if device.type != "cuda":  # on CUDA an out-of-memory error is caught; on a host the kernel kills instead
        available = host_memory_available()
        widest = widest_per_input_voxel(model, tile, halo) if available is not None else None
        fitter.limit = cpu_pass_limit(factors, available=available, widest_per_voxel=widest)
        padded = [t + 2 * h for t, h in zip(tile, halo)]
        if math.prod(padded) >= fitter.limit:
            gib_per_voxel = cpu_pass_bytes_per_input_voxel(factors, widest) / 2**30
            log.warning("one tile with its halo needs ~%.1f GiB of host memory (%s padded input voxels × %s), "
                        "more than %.1f GiB can be spared: tiles are cut into pieces that fit (same output, "
                        "more work)", math.prod(padded) * gib_per_voxel, padded, list(factors),
                        fitter.limit * gib_per_voxel)
    caps: list[float] = []
    host_voxels = gpu_pass_host_limit(factors, available=host_memory_available()) if device.type == "cuda" else math.inf
    pass_tile = fit_pass_tile(model, tile_size=tile, shape=source.shape, device=device, amp=amp,
                              memory_fraction=memory_fraction, host_voxels=host_voxels,
                              limit_out=caps) if fit_memory else tile
    # a batch of tiles above the caps (activation size, host memory) runs tile by tile; a
    # pass is never smaller than one tile, and one tile runs whole (an out-of-memory error
    # still halves it)
    fitter.batch_limit = min([host_voxels, *caps]) + 1
    fitter.pass_tile = pass_tile
    # a job is ("pass", box, members): one forward over the union of neighbouring tiles,
    # or ("batch", None, members): equally shaped tiles stacked into one forward
    jobs: list[tuple[str, object, list]] = []
    if any(p > t for p, t in zip(pass_tile, tile)):
        jobs = [("pass", box, members) for box, members in _passes(todo, pass_tile)]
    else:
        groups: dict[tuple[int, ...], list] = {}
        for i, t in todo:
            groups.setdefault(tuple(b - a for a, b in t), []).append((i, t))
        step = max(1, int(batch_size))
        for items in groups.values():
            for k in range(0, len(items), step):
                jobs.append(("batch", None, items[k : k + step]))
        jobs.sort(key=lambda j: j[2][0][0])

    def read(job):
        kind, box, members = job
        if kind == "pass":
            return read_padded(source, *_halo_box(box, halo))
        return _read_group(source, members, halo)

    mirrors = bool(getattr(model, "mirrors_outside", False))

    def outside(box):
        return _outside(box, halo, source.shape) if mirrors else None

    if readers is None:
        readers = io_threads(device)
    depth = max(prefetch, readers) if prefetch > 0 else 0
    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="selfres-read") if depth > 0 else None
    try:
        pending: collections.deque = collections.deque()
        nxt = 0

        def submit():
            nonlocal nxt
            job = jobs[nxt]
            nxt += 1
            pending.append((job, pool.submit(read, job) if pool else None))

        for _ in range(max(1, depth)):
            if nxt < len(jobs):
                submit()
        with torch.inference_mode():
            while pending:
                job, fut = pending.popleft()
                data = fut.result() if fut is not None else read(job)
                if nxt < len(jobs):
                    submit()
                kind, box, members = job
                if kind == "pass":
                    out = fitter.single(data, outside(box))
                    for i, t in members:
                        yield i, t, np.ascontiguousarray(_crop_member(out, box, t, factors))
                else:
                    sides = [outside(t) for _, t in members] if mirrors else None
                    for (i, t), out in zip(members, fitter.batch(data, sides)):
                        yield i, t, out
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


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
    """Restore an in-memory ZYX volume; returns the output-grid array (float32).

    Back-projection around the network runs once over the whole volume where
    :func:`whole_volume_back_projection` allows, as in :func:`restore_to_store`."""
    blocks, _ = _output_blocks(model, volume, factors=factors, tile_size=tile_size, quiet=True, device=device,
                               amp=amp, batch_size=batch_size)
    return _assemble(blocks, volume.shape, factors)


def _output_blocks(model: nn.Module, source, *, factors: Sequence[int], tile_size: Sequence[int],
                   tiles: Sequence[int] | None = None, done: set[int] | frozenset = frozenset(), quiet: bool = False,
                   **run_kwargs) -> tuple[Iterator[tuple], nn.Module | None]:
    """The restored output of the grid tiles ``tiles`` (all by default) but ``done``, as
    ``(index, core_tile, output_block)``, and the back-projection that runs once over the
    whole volume (:func:`whole_volume_back_projection`; ``None``: it runs inside every
    tile, or there is none). The one place that chooses between the two paths."""
    n_grid = len(tile_grid(source.shape, tile_size))
    wanted = list(range(n_grid)) if tiles is None else list(tiles)
    bp = whole_volume_back_projection(model, source.shape, factors, device=run_kwargs.get("device", "cpu"),
                                      whole_run=len(set(wanted)) == n_grid, quiet=quiet)
    if bp is not None:
        blocks = _blocks_of_array(
            lambda: _whole_volume_back_projected(bp, source, factors=factors, tile_size=tile_size, quiet=quiet,
                                                 **run_kwargs),
            source.shape, factors=factors, tile_size=tile_size, todo=[i for i in wanted if i not in done])
    else:
        blocks = run_tiles(model, source, factors=factors, tile_size=tile_size, skip=lambda k: k in done,
                           tiles=wanted, **run_kwargs)
    return blocks, bp


def predict_single_pass(model: nn.Module, volume: np.ndarray, *, factors: Sequence[int]) -> np.ndarray:
    """Reference: one pass over the whole mirror-padded volume (for tests and benchmarks)."""
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    padded = np.pad(volume.astype(np.float32), [(h, h) for h in halo], mode="symmetric")
    kwargs = {"outside": [[(h, h) for h in halo]]} if getattr(model, "mirrors_outside", False) else {}
    with torch.inference_mode():
        y = model(torch.from_numpy(padded)[None, None], **kwargs).float().numpy()[0, 0]
    return y[tuple(slice(h * f, y.shape[a] - h * f) for a, (h, f) in enumerate(zip(halo, factors)))]


class Progress:
    """Log progress with rate and ETA at most every ``every_s`` seconds.

    The ETA follows the rate since the first update: the first unit carries the start's
    one-off costs (the model's preparation, thread pools, the first reads), which a rate
    over the whole elapsed time spread over every later estimate (a reviewer's 192 tiles:
    553 s predicted at the first tile, 580 s at the eighth, 298 s taken)."""

    def __init__(self, total: int, *, what: str, every_s: float = 10.0):
        self.total = max(1, total)
        self.what = what
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last = -math.inf
        self.done = 0
        self.first: tuple[float, int] | None = None  # (time, units done) at the first update

    def update(self, n: int = 1, **extra) -> None:
        self.done += n
        now = time.monotonic()
        if self.first is None:
            self.first = (now, self.done)
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            el = now - self.t0
            since, units = now - self.first[0], self.done - self.first[1]
            if units <= 0 or since <= 0:  # only the first update yet: the rate from the start
                since, units = el, self.done
            eta = since / units * (self.total - self.done) if units else float("nan")
            more = " ".join(f"{k} {v}" for k, v in extra.items())
            log.info(
                "%s %d/%d (%.0f%%) elapsed %.1fs ETA %.1fs %s",
                self.what, self.done, self.total, 100.0 * self.done / self.total, el, eta, more,
            )


def warn_if_halo_dominates(model: nn.Module, tile_size: Sequence[int], shape: Sequence[int], *,
                           ratio: float = 8.0) -> bool:
    """Log a warning when each tile's padded input is over ``ratio`` × its core: inference
    then does that much more work than the output needs (a large halo, mostly from many
    back-projection iterations, on small tiles). Returns whether it warned."""
    halo = tuple(int(h) for h in getattr(model, "halo", (0, 0, 0)))
    tile = [max(1, min(int(t), int(n))) for t, n in zip(tile_size, shape)]
    waste = math.prod(t + 2 * h for t, h in zip(tile, halo)) / math.prod(tile)
    if waste <= ratio:
        return False
    n = back_projection_iterations(model)
    fewer = (f"Fewer infer.back_projection_iterations ({n} now, ~5 voxels of halo each) shrink the halo; a "
             if n else "A ")
    log.warning("the halo (%s input voxels per side) makes each tile's padded input %.0f× its core %s: "
                "inference does %.0f× the work its output needs. %slarger infer.tile_size (where the volume "
                "is larger than the tile) spreads it", list(halo), waste, tile, waste, fewer)
    return True


#: Host bytes per output voxel that back-projection over the whole volume holds at its
#: peak, an upper bound: the network's output, its copy widened by one step's reach, the
#: residual's upscale and the sum (4 each), the degraded copy and the input. Measured (peak
#: RSS of one restore_to_store into a memory-mapped output, 96×512×512 ×2, 1 iteration,
#: eighth session): 18.9 bytes per output voxel above the start, 18.2 for the tile path
#: (the output's own mapped pages included in both).
WHOLE_VOLUME_BP_BYTES_PER_OUTPUT_VOXEL = 24
#: ... plus this many per *input* voxel when the corrections are shrunk
#: (``BackProjection.noise_level``), an upper bound: about 12 float32 temporaries on the input
#: grid (the correction, its square, their padded copies and local means, the input's local
#: mean, the noise variance, the gain). Measured (peak RSS, twelfth session's review): +6
#: bytes per output voxel at ×2 (48 per input voxel) and +8 at (2, 1, 1) (16 per input voxel).
WHOLE_VOLUME_SHRINK_BYTES_PER_INPUT_VOXEL = 48


def whole_volume_back_projection(model: nn.Module, shape: Sequence[int], factors: Sequence[int], *,
                                 device: torch.device | str = "cpu", whole_run: bool = True,
                                 available: int | None = None, quiet: bool = False) -> nn.Module | None:
    """The back-projection to run once over the whole volume after tiling only the network
    inside it, or ``None``: the steps then run inside every tile.

    Inside a tile, each step widens the halo by its reach (~5 input voxels per step at ×2),
    so a tile's network runs on a padded block several times its core (2.4× for the
    default tile with 1 step). Over the whole volume the steps cost one pass each and the
    network runs over the volume alone, tiled with its own halo. Taken on CPU when the
    whole volume's buffers (:data:`WHOLE_VOLUME_BP_BYTES_PER_OUTPUT_VOXEL`, and
    :data:`WHOLE_VOLUME_SHRINK_BYTES_PER_INPUT_VOXEL` with the shrink) fit in half the
    host memory still available, for a run over every tile (``whole_run``; a scattered
    block keeps the tile path). Both give the output of :func:`predict_single_pass`: in a
    tile too, every step sees the current estimate mirrored about the volume's border
    (:func:`selfres.ensemble.mirror_outside`). ``quiet``: the fall-back is logged at debug
    level only (small arrays scored many times).
    """
    from .ensemble import BackProjection

    if (not isinstance(model, BackProjection) or model.iterations == 0 or not whole_run
            or torch.device(device).type == "cuda"):
        return None
    inputs = math.prod(int(n) + 2 * int(r) for n, r in zip(shape, model.step_reach))
    need = inputs * math.prod(int(f) for f in factors) * WHOLE_VOLUME_BP_BYTES_PER_OUTPUT_VOXEL
    if model.noise_level is not None:
        need += inputs * WHOLE_VOLUME_SHRINK_BYTES_PER_INPUT_VOXEL
    available = host_memory_available() if available is None else available
    if available is None:  # not Linux: how much memory is free is unknown, and the tile path always fits
        log.debug("back-projection runs inside each tile: the host's free memory cannot be read")
        return None
    if need > available / 2:
        (log.debug if quiet else log.info)(
            "back-projection runs inside each tile: over the whole volume it would need ~%.0f MiB of host "
            "memory, more than half of the %.0f MiB available", need / 2**20, available / 2**20)
        return None
    return model


def _whole_volume_back_projected(bp: nn.Module, source, *, factors: Sequence[int], tile_size: Sequence[int],
                                 quiet: bool = False, **run_kwargs) -> np.ndarray:
    """The output of ``bp`` (a back-projection around a network) over all of ``source``:
    the network tiled over the source with its own halo, then each step once over the
    whole of it, input and estimate mirrored about the source's border by one step's
    reach (as :class:`selfres.ensemble.BackProjection` does in a tile, so the output is
    the tiles'). ``quiet``: log nothing (small arrays, e.g. the held-out region)."""
    from .degrade import mirror_pad

    factors = tuple(int(f) for f in factors)
    reach = tuple(int(r) for r in bp.step_reach)
    y = _assemble(run_tiles(bp.model, source, factors=factors, tile_size=tile_size, **run_kwargs), source.shape,
                  factors, progress=None if quiet else Progress(len(tile_grid(source.shape, tile_size)),
                                                                what="network tiles"))
    x = torch.from_numpy(read_padded(source, [-r for r in reach],
                                     [int(n) + r for n, r in zip(source.shape, reach)]))[None, None]
    y = torch.from_numpy(y)[None, None]
    crop = (slice(None), slice(None)) + tuple(slice(r * f, n + r * f) for n, r, f in zip(y.shape[2:], reach, factors))
    t0 = time.monotonic()
    say = log.debug if quiet else log.info
    # a minute or more on a large volume, with no tile to count: say it started, and each step
    say("back-projection over the whole volume %s: %d iteration(s), no tiles are written until it ends",
        list(y.shape[2:]), bp.iterations)
    with torch.inference_mode():
        noise_variance = bp.noise_variance(x)
        for i in range(bp.iterations):
            y = bp.step(x, mirror_pad(y, [r * f for r, f in zip(reach, factors)], edge=True), noise_variance)[crop]
            if bp.iterations > 1:
                say("back-projection iteration %d/%d done (%.1f s)", i + 1, bp.iterations, time.monotonic() - t0)
    say("back-projection (%d iteration%s) over the whole volume %s: %.1f s", bp.iterations,
        "" if bp.iterations == 1 else "s", list(y.shape[2:]), time.monotonic() - t0)
    return np.ascontiguousarray(y[0, 0].numpy())


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
    on_tile_written: Callable[[int, np.ndarray], None] | None = None,
    tiles: Sequence[int] | None = None,
    prefetch: int = 2,
    writers: int | None = None,
    memory_fraction: float = 0.5,
    defects: np.ndarray | None = None,
) -> dict:
    """Stream ``source`` (LR, normalised) through ``model`` into the array ``dest``.

    A reader thread fetches the next tiles and a writer thread transforms and writes
    finished ones while the network runs, so I/O overlaps compute; at most ``prefetch``
    groups and ``2 * writers`` output blocks wait in memory.

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
    on_tile_written
        Like ``on_tile_done`` but also given the block as written (for checksums).
    tiles
        Only these tile indices of the grid (one block of a scattered run).
    prefetch, writers
        Read-ahead depth and writer threads (0 writers: write in the calling thread;
        default 1 on CPU, up to 4 on CUDA, where compression must keep up with the GPU).
    memory_fraction
        On CUDA, the share of free GPU memory a pass may use (:func:`fit_pass_tile`);
        0 runs one grid tile per pass.
    defects
        Lateral positions ``(Y, X)`` of the source's hot and dead sensor pixels: the network
        reads them repaired (:class:`SensorRepaired`), as it was trained, and their own output
        voxels are the tricubic interpolation of the acquisition
        (:func:`write_defects_as_acquired`).

    Returns
    -------
    dict
        ``{"tiles": n, "computed": m, "seconds": s, "mvoxel_per_s": r, "oom_splits": k,
        "pass_tile": [z, y, x]}``.
    """
    done_tiles = done_tiles or set()
    acquired = source
    if defects is not None and defects.any():
        source = SensorRepaired(source, defects)
    else:
        defects = None
    wanted = list(range(len(tile_grid(source.shape, tile_size)))) if tiles is None else list(tiles)
    fitters: list = []
    blocks, bp = _output_blocks(model, source, factors=factors, tile_size=tile_size, tiles=wanted, done=done_tiles,
                                device=device, amp=amp, batch_size=batch_size, prefetch=prefetch, fitter_out=fitters,
                                fit_memory=memory_fraction > 0, memory_fraction=memory_fraction)
    warn_if_halo_dominates(bp.model if bp is not None else model, tile_size, source.shape)
    if writers is None:
        writers = io_threads(device)
    n_todo = sum(1 for i in wanted if i not in done_tiles)
    # over the whole volume the tiles are written once it is computed ("network tiles" logs that part)
    progress = Progress(n_todo, what="inference tiles" if bp is None else "tiles written")
    t0 = time.monotonic()
    computed = 0
    voxels = 0
    lock = threading.Lock()

    def write(i, t, block):
        if defects is not None:
            block = write_defects_as_acquired(block, t, acquired, defects, factors)
        if transform is not None:
            block = transform(block)
        dest[output_slices(t, factors)] = block
        if on_tile_written:
            on_tile_written(i, block)
        if on_tile_done:
            on_tile_done(i)
        with lock:
            progress.update()

    pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="selfres-write") if writers > 0 else None
    pending: collections.deque = collections.deque()
    try:
        for i, t, block in blocks:
            if computed == 0 and bp is not None:
                progress.t0 = time.monotonic()  # the rate and ETA of writing, not of the computing before it
            computed += 1
            voxels += block.size
            if pool is None:
                write(i, t, block)
                continue
            pending.append(pool.submit(write, i, t, block))
            while len(pending) > 2 * writers:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:  # on an error, blocks already handed to the writer are still written and recorded
        if pool is not None:
            pool.shutdown(wait=True)
    secs = time.monotonic() - t0
    return {
        "tiles": len(wanted),
        "computed": computed,
        "seconds": secs,
        "mvoxel_per_s": voxels / 1e6 / secs if secs > 0 else float("nan"),
        "oom_splits": fitters[0].splits if fitters else 0,
        "pass_tile": list(fitters[0].pass_tile) if fitters and fitters[0].pass_tile else None,
    }


def _blocks_of_array(compute: Callable[[], np.ndarray], shape: Sequence[int], *, factors: Sequence[int],
                     tile_size: Sequence[int], todo: Sequence[int]) -> Iterator[tuple]:
    """``(index, core_tile, output_block)`` of the grid tiles ``todo``, cut from the whole
    output that ``compute()`` returns (called only when there is a tile to yield)."""
    if not todo:
        return
    out = compute()
    grid = tile_grid(shape, tile_size)
    for i in todo:
        t = grid[i]
        yield i, t, np.ascontiguousarray(out[output_slices(t, factors)])


def block_tiles(n_tiles: int, *, block: int, blocks: int) -> range:
    """Tile indices of block ``block`` (0-based) of ``blocks``: contiguous, sizes differ by ≤ 1."""
    from .errors import ConfigError

    if not (isinstance(blocks, int) and blocks >= 1):
        raise ConfigError(f"infer.blocks must be an integer >= 1, got {blocks!r}")
    if not (isinstance(block, int) and 0 <= block < blocks):
        raise ConfigError(f"block must be an integer in 0..{blocks - 1} (infer.blocks {blocks}), got {block!r}")
    return range(block * n_tiles // blocks, (block + 1) * n_tiles // blocks)


def _crc(block: np.ndarray) -> str:
    return format(zlib.crc32(memoryview(np.ascontiguousarray(block)).cast("B")), "08x")


class PartialStore:
    """A resumable output store: a deterministic partial path beside the final one.

    ``.{name}.partial`` (next to ``final``) holds the OME-Zarr being written and
    ``.{name}.progress/`` the job's fingerprint (``job.json``) and completion records
    (``done-*.jsonl``: one JSON line per tile, written after the tile is fully stored,
    with the CRC-32 of its bytes). A restart reuses the store only when the fingerprint
    matches (same model checksum, settings, input) and only the tiles whose record is
    present and whose stored bytes still match the CRC; anything else is recomputed. The
    final store appears by an atomic rename (:meth:`commit`).

    Parameters
    ----------
    final
        The output store path (e.g. ``restored.ome.zarr``).
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.path = partial_path(self.final)
        self.meta = self.final.with_name(f".{self.final.name}.progress")

    def prepare(self, *, fingerprint: dict, create: Callable[[Path], object]) -> bool:
        """Create the partial store with ``create(path)``, or keep one with this fingerprint.

        Returns
        -------
        bool
            True when an existing partial store was kept (a resume).
        """
        if self.fingerprint() == _json_roundtrip(fingerprint) and (self.path / "0").is_dir():
            return True
        if self.path.exists():
            log.info("discarding %s: written with other settings, model or input", self.path)
            shutil.rmtree(self.path)
        shutil.rmtree(self.meta, ignore_errors=True)
        create(self.path)
        self.meta.mkdir(parents=True, exist_ok=True)
        tmp = self.meta / "job.json.tmp"
        tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        os.replace(tmp, self.meta / "job.json")
        return False

    def fingerprint(self) -> dict | None:
        """The recorded fingerprint, or None when there is no usable partial store."""
        try:
            return json.loads((self.meta / "job.json").read_text())
        except (OSError, ValueError):
            return None

    def check(self, fingerprint: dict) -> None:
        """Raise :class:`~selfres.errors.SelfresError` unless the store exists with ``fingerprint``."""
        found = self.fingerprint()
        if found is None:
            raise SelfresError(f"{self.path}: no prepared inference store; run 'selfres infer --step prepare' first")
        if found != _json_roundtrip(fingerprint):
            diff = sorted(k for k in set(found) | set(fingerprint)
                          if found.get(k) != _json_roundtrip(fingerprint).get(k))
            raise SelfresError(f"{self.path}: prepared for other settings, model or input "
                               f"(differs in {', '.join(diff)}); run 'selfres infer --step prepare' again")

    def records(self) -> dict[int, str]:
        """Recorded tiles ``{index: crc}`` from every record file (torn lines ignored)."""
        return {i: rec["crc"] for i, rec in self._records().items()}

    def computes(self) -> dict[int, str | None]:
        """How each recorded tile was computed ``{index: label}`` (:func:`selfres.models.compute_label`;
        None in records that do not say)."""
        return {i: rec.get("compute") for i, rec in self._records().items()}

    def _records(self) -> dict[int, dict]:
        """The newest record of every tile. A tile may be recorded in several files (the
        store is kept when ``infer.blocks`` changes, and a block recomputes tiles made
        another way): each line carries its writing time (``t``, ns since the epoch), and
        the newest wins, then the later line; lines without one count as oldest."""
        out: dict[int, dict] = {}
        order = 0
        for f in sorted(self.meta.glob("done-*.jsonl")):
            for line in f.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    i, new = int(rec["tile"]), {"crc": str(rec["crc"]), "compute": rec.get("compute"),
                                                "key": (int(rec.get("t") or 0), order),
                                                "seconds": None if rec.get("s") is None else float(rec["s"]),
                                                "ran_on": rec.get("ran_on"),
                                                "name": f.name[len("done-"):-len(".jsonl")]}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                order += 1
                if i not in out or new["key"] >= out[i]["key"]:
                    out[i] = new
        return out

    def verified(self, dest, *, region_of: Callable[[int], tuple], n_tiles: int,
                 tiles: Sequence[int] | None = None) -> set[int]:
        """Recorded tiles (among ``tiles``) whose stored bytes match their record.

        ``region_of(i)`` gives the output slices of tile ``i`` (``n_tiles`` in all).
        """
        want = set(range(n_tiles) if tiles is None else tiles)
        good = set()
        for i, crc in self.records().items():
            if i not in want or i >= n_tiles:
                continue
            if _crc(np.asarray(dest[region_of(i)])) == crc:
                good.add(i)
            else:
                # recomputed by a block or single job; gather asks for the block's rerun
                log.warning("tile %d of %s does not match its record (damaged or cut short); it is not used",
                            i, self.path)
        return good

    def recorder(self, name: str, compute: str | None = None,
                 ran_on: dict | None = None) -> Callable[[int, np.ndarray], None]:
        """``on_tile_written`` hook appending to ``done-{name}.jsonl`` (one writer per name);
        ``compute`` labels how the tiles were computed, ``ran_on`` where (host, GPU, Slurm job)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        path = self.meta / f"done-{name}.jsonl"
        lock = threading.Lock()
        last = [time.monotonic()]

        def record(i: int, block: np.ndarray) -> None:
            crc = _crc(block)
            with lock, open(path, "a") as fh:
                # s: the seconds this tile cost the job (since its previous tile, or its start), so
                # that gather can sum the work of the tiles the output holds, whichever jobs made them
                now = time.monotonic()
                seconds, last[0] = now - last[0], now
                rec = {"tile": int(i), "crc": crc, "compute": compute, "t": time.time_ns(), "s": round(seconds, 6)}
                fh.write(json.dumps(rec | ({"ran_on": ran_on} if ran_on else {})) + "\n")
                fh.flush()

        return record

    def missing(self, n_tiles: int) -> list[int]:
        """Tile indices of the grid with no completion record."""
        rec = self.records()
        return [i for i in range(n_tiles) if i not in rec]

    def commit(self) -> None:
        """Move the store into place atomically (replacing ``final``), then drop the records."""
        old = None
        if self.final.exists() or self.final.is_symlink():
            # unique: a leftover of a commit killed in the same place, with the same pid, would
            # make this move fail (a directory is replaced only when empty)
            old = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex}")
            os.replace(self.final, old)
        try:
            os.replace(self.path, self.final)
        except BaseException:
            if old is not None:
                os.replace(old, self.final)
            raise
        # the old store, and any a commit killed while removing it left
        for leftover in self.final.parent.glob(f".{self.final.name}.old-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(self.meta, ignore_errors=True)


#: Largest default output chunk, in bytes. A viewer (BigDataViewer, napari) reads a chunk whole
#: for any view of it: the tile × scale it used to be was 16 MiB of float32 at ×2 and 128 MiB
#: at ×4 (a tile of 32×128×128).
DEFAULT_CHUNK_BYTES = 4 * 2**20


def default_output_chunks(tile_out: Sequence[int], shape: Sequence[int], itemsize: int,
                          max_bytes: int | None = None) -> tuple[int, int, int]:
    """The output chunk when ``infer.chunks`` is not set: the tile's output region ``tile_out``
    (clipped to ``shape``), its longest axis (z first among equals) cut to its largest divisor
    until the chunk holds at most ``max_bytes`` (default :data:`DEFAULT_CHUNK_BYTES`). A
    divisor, so that tiles still own whole chunks; an axis whose largest divisor is under a
    quarter of it (a prime length) is left whole."""
    max_bytes = DEFAULT_CHUNK_BYTES if max_bytes is None else max_bytes
    ch = [max(1, min(int(t), int(n))) for t, n in zip(tile_out, shape)]
    while math.prod(ch) * int(itemsize) > max_bytes:
        for ax in sorted(range(len(ch)), key=lambda a: -ch[a]):
            div = next(d for d in range(ch[ax] // 2, 0, -1) if ch[ax] % d == 0) if ch[ax] > 1 else 0
            if div and 4 * div >= ch[ax]:
                ch[ax] = div
                break
        else:
            break
    return tuple(ch)


def store_layout(shape_in: Sequence[int], *, factors: Sequence[int], tile_size: Sequence[int],
                 chunks: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                 itemsize: int = 4):
    """Output shape, chunks and shards for tiled writing, checked so tiles own whole write units.

    A tile writes the output region ``tile × factors``; the unit of storage written at
    once (the shard if any, else the chunk) must divide it along every axis that has
    more than one tile, so that a tile never shares a file with another tile (block
    jobs write concurrently; a resumed run trusts a tile's files only as a whole).
    Without ``chunks``, :func:`default_output_chunks` for voxels of ``itemsize`` bytes.

    Returns
    -------
    tuple
        ``(out_shape, chunks, shards)``.

    Raises
    ------
    ConfigError
        Naming ``infer.chunks`` / ``infer.shards`` / ``infer.tile_size``.
    """
    from .errors import ConfigError

    shape = out_shape(shape_in, factors)
    tile_out = [min(int(t), int(n)) * int(f) for t, n, f in zip(tile_size, shape_in, factors)]
    ch = ([min(int(c), n) for c, n in zip(chunks, shape)] if chunks
          else list(default_output_chunks(tile_out, shape, itemsize)))
    sh = None if shards is None else [min(int(s), -(-n // c) * c) for s, n, c in zip(shards, shape, ch)]
    unit = sh or ch
    bad = [ax for ax, (u, t, n) in enumerate(zip(unit, tile_out, shape)) if t < n and t % u]
    if bad:
        what = "infer.shards" if sh else "infer.chunks"
        raise ConfigError(
            f"{what} {tuple(unit)} must divide infer.tile_size x scale {tuple(tile_out)} along "
            f"{', '.join('zyx'[a] for a in bad)} so that tiles write whole {'shards' if sh else 'chunks'}; "
            "choose a divisor or change infer.tile_size")
    return shape, tuple(ch), (tuple(sh) if sh else None)


def infer_to_store(
    model: nn.Module,
    source,
    final: str | os.PathLike,
    *,
    step: str = "all",
    block: int = 0,
    blocks: int = 1,
    factors: Sequence[int],
    tile_size: Sequence[int],
    dtype,
    voxel_size,
    fingerprint: dict,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    ngff_version: str = "0.4",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    attrs: dict | None = None,
    contrast_limits: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 1,
    memory_fraction: float = 0.5,
    origin: Sequence[float] | None = None,
    unit: str | None = "micrometer",
    reuse_finished: bool = False,
    defects: Callable[[], np.ndarray | None] | None = None,
) -> dict:
    """Resumable, scatterable whole-FOV inference into the OME-Zarr store ``final``.

    Parameters
    ----------
    step
        ``"all"`` (prepare, every tile, gather), ``"prepare"`` (create the partial store,
        or keep a matching one), ``"block"`` (the tiles of block ``block`` of ``blocks``
        into the prepared store) or ``"gather"`` (verify every tile, build the pyramid
        and metadata, move the store into place).
    fingerprint
        JSON-able identity of the job (model checksum, settings, input): a partial store
        is reused only when it matches.
    attrs, contrast_limits
        Metadata written at gather (``attrs`` gains ``infer_seconds``, ``tiles``,
        ``mvoxel_per_s`` and the job's ``fingerprint``).
    reuse_finished
        Keep ``final`` when it is a finished store of this same job (every step then only
        reports it): for an output the workflow does not declare, which a rerun therefore
        finds in place (the model output kept beside the interpolation).
    defects
        Called, only by a step that computes tiles, for the source's sensor defects
        (``restore_to_store``'s ``defects``).
    Other parameters
        As for :func:`restore_to_store` and :func:`store_layout`.

    Returns
    -------
    dict
        ``seconds`` (network time of this call; at gather, the time the tiles the store holds
        cost, whichever jobs made them),
        ``tiles``, ``computed``, ``mvoxel_per_s``, ``resumed`` (tiles reused).
    """
    from . import io

    shape, ch, sh = store_layout(source.shape, factors=factors, tile_size=tile_size, chunks=chunks, shards=shards,
                                 itemsize=np.dtype(dtype).itemsize)

    def job(ch):
        return dict(fingerprint) | {"out_shape": list(shape), "chunks": list(ch), "shards": sh and list(sh),
                                    "tile_size": [int(t) for t in tile_size], "dtype": str(np.dtype(dtype)),
                                    "ngff_version": ngff_version}

    fp = job(ch)
    if chunks is None and shards is None:
        # a partial store begun with other default chunks (before they were cut to DEFAULT_CHUNK_BYTES), the
        # same job otherwise: its chunks are kept, so that its tiles resume (a scattered run's block jobs
        # would refuse it, while its prepare step, done, is not rerun)
        found = PartialStore(final).fingerprint()
        if isinstance(found, dict) and isinstance(found.get("chunks"), list) and found["chunks"] != list(ch):
            from .errors import ConfigError

            try:
                kept = store_layout(source.shape, factors=factors, tile_size=tile_size, chunks=found["chunks"])[1]
            except ConfigError:
                kept = None
            if kept is not None and list(kept) == found["chunks"] and found == _json_roundtrip(job(kept)):
                log.info("%s: keeping the chunks %s of the partial store begun before (default now %s)",
                         final, tuple(kept), tuple(ch))
                ch, fp = tuple(kept), job(kept)
    grid = tile_grid(source.shape, tile_size)

    def region_of(i):
        return output_slices(grid[i], factors)

    def compute(dest, tiles, done, record):
        return restore_to_store(model, source, dest, factors=factors, tile_size=tile_size, transform=transform,
                                device=device, amp=amp, batch_size=batch_size, done_tiles=done, tiles=tiles,
                                on_tile_written=record, memory_fraction=memory_fraction,
                                defects=defects() if defects is not None else None)

    return scattered_store(
        final, step=step, block=block, blocks=blocks, fingerprint=fp, n_tiles=len(grid), region_of=region_of,
        create=lambda p: io.create_ome_zarr(p, shape=shape, dtype=dtype, voxel_size=voxel_size, chunks=ch,
                                            shards=sh, ngff_version=ngff_version),
        compute=compute, voxel_size=voxel_size, ngff_version=ngff_version, attrs=attrs,
        contrast_limits=contrast_limits, origin=origin, unit=unit, reuse_finished=reuse_finished,
        compute_kind=compute_label(device, amp=amp and not getattr(model, "computes_in_float32", False)))


#: Marks a partial store whose tiles a gather job computes itself (no block job had them)
_GATHER_COMPUTES = "gather-computes"


def scattered_store(
    final: str | os.PathLike,
    *,
    step: str,
    block: int,
    blocks: int,
    fingerprint: dict,
    n_tiles: int,
    region_of: Callable[[int], tuple],
    create: Callable[[Path], object],
    compute: Callable[..., dict],
    voxel_size,
    ngff_version: str = "0.4",
    attrs: dict | None = None,
    contrast_limits: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    compute_kind: str | None = None,
    unit: str | None = "micrometer",
    reuse_finished: bool = False,
) -> dict:
    """The prepare / block / gather protocol over a :class:`PartialStore`, for any tiling.

    Parameters
    ----------
    step, block, blocks, fingerprint, reuse_finished
        As for :func:`infer_to_store`.
    n_tiles, region_of
        The number of tiles and the output slices of tile ``i`` (for verification).
    create
        ``create(path)`` makes the empty OME-Zarr store (level 0 only).
    compute
        ``compute(dest, tiles, done, record) -> stats``: write the tiles in ``tiles`` that
        are not in ``done`` into ``dest`` (level 0), calling ``record(i, block)`` once tile
        ``i`` is completely written; ``stats`` has ``seconds`` and ``mvoxel_per_s``.
    voxel_size, ngff_version, attrs, contrast_limits, origin, unit
        For the pyramid and metadata written at gather (:func:`selfres.io.finalize_ome_zarr`).
    compute_kind
        How this process computes (:func:`selfres.models.compute_label`), recorded with
        every tile. Scattered blocks may run on different nodes, so it is not part of the
        job's fingerprint; instead a block recomputes its own tiles that an earlier run
        made another way (a block is never a mix), and gather records every label used
        (``compute`` in the store's attributes) and warns when blocks differ.
    """
    from . import io

    if step not in ("all", "prepare", "block", "gather"):
        raise ValueError(f"step must be one of all, prepare, block, gather; got {step!r}")
    kept = finished_store_attrs(final, fingerprint) if reuse_finished else None
    if kept is not None:
        secs = float(kept.get("infer_seconds") or 0.0)
        log.info("%s is finished and was made by this same job: kept", final)
        if step in ("all", "gather"):  # a partial store left by an earlier killed run is litter now
            stale = PartialStore(final)
            shutil.rmtree(stale.path, ignore_errors=True)
            shutil.rmtree(stale.meta, ignore_errors=True)
        return {"tiles": n_tiles, "computed": 0, "seconds": secs if step in ("all", "gather") else 0.0,
                "mvoxel_per_s": float("nan"), "resumed": n_tiles}
    store = PartialStore(final)
    out: dict = {"tiles": n_tiles, "computed": 0, "seconds": 0.0, "mvoxel_per_s": float("nan"), "resumed": 0}
    gather_computes = step == "gather" and store.fingerprint() is None
    if gather_computes:
        # the blocks' tiles are gone: a run stopped after this gather had moved the store into place
        # (Snakemake then removes the output as incomplete and reruns gather alone), or gather reran
        # for a changed command, or by --forcerun. Failing here failed every later run too; computing
        # the tiles here (resumable) restores the sample
        log.warning("%s: no prepared store with the block jobs' tiles (removed since, or never made); computing "
                    "all %d tiles in this gather job instead. A killed job resumes from its recorded tiles; to "
                    "compute them in block jobs again, rerun with --forcerun on the sample's infer/prepared.json",
                    store.path, n_tiles)
        step = "all"
    elif step == "gather" and (store.meta / _GATHER_COMPUTES).exists():
        # ... and such a gather was stopped (a time limit): it resumes, rather than ask the blocks for
        # tiles they never had, which failed every retry and every later run
        log.info("%s: resuming the tiles an earlier gather job was computing", store.path)
        step = "all"
    if step == "block" and store.fingerprint() is None:
        # the store was moved into place by an earlier gather, and this block reruns alone (its
        # command changed with an update of selfres, which prepare's did not): refusing failed
        # every scattered sample for a night, and the next run kept the old output. The block
        # prepares the store itself, one block at a time (the others then find it made), and
        # computes its own tiles, as after a prepare job
        with waiting_lock(store.meta.with_name(store.meta.name + ".lock")):
            if store.fingerprint() is None:
                log.warning("%s: no prepared store (an earlier run's gather has used it); block %d prepares it",
                            store.path, block)
                store.prepare(fingerprint=fingerprint, create=create)
    if step in ("all", "prepare"):
        kept = store.prepare(fingerprint=fingerprint, create=create)
        log.info("%s %s", "resuming" if kept else "created", store.path)
        if gather_computes:
            (store.meta / _GATHER_COMPUTES).touch()
    if step in ("all", "block"):
        store.check(fingerprint)
        dest = _open_level0(store.path, ngff_version)
        tiles = range(n_tiles) if step == "all" else block_tiles(n_tiles, block=block, blocks=blocks)
        done = store.verified(dest, region_of=region_of, n_tiles=n_tiles, tiles=tiles)
        other = {i: c for i, c in store.computes().items() if i in done and c != compute_kind}
        if other:
            log.warning("%d written tile(s) of this block were computed as %s, not %s as now; recomputing them "
                        "so that the block is not a mix", len(other), "/".join(sorted({str(c) for c in other.values()})),
                        compute_kind)
            done -= set(other)
        if done:
            log.info("%d of %d tiles already written and verified; computing the rest", len(done), len(tiles))
        name = "all" if step == "all" else f"b{block}"
        stats = compute(dest, tiles, done, store.recorder(name, compute_kind, (attrs or {}).get("ran_on")))
        stats["resumed"] = len(done)
        io.write_text_atomic(store.meta / f"stats-{name}.json",
                             json.dumps(stats | {"ran_on": (attrs or {}).get("ran_on")}))
        out.update(stats)
    if step in ("all", "gather"):
        store.check(fingerprint)
        if step == "gather":  # written by other jobs (maybe other nodes): check the bytes
            good = store.verified(_open_level0(store.path, ngff_version), region_of=region_of, n_tiles=n_tiles)
        else:  # this process verified the reused tiles and wrote the rest
            good = set(store.records())
        missing = sorted(set(range(n_tiles)) - good)
        if missing:
            owners = sorted({next(b for b in range(blocks) if i in block_tiles(n_tiles, block=b, blocks=blocks))
                             for i in missing})
            raise SelfresError(
                f"{store.path}: {len(missing)} of {n_tiles} tiles are not written (or damaged); rerun "
                f"block(s) {', '.join(map(str, owners))} of {blocks}")
        secs, rate, ran_on = _gather_stats(store, n_tiles)
        kinds = sorted({str(c) for c in store.computes().values()})
        if len(kinds) > 1:
            log.warning("%s: the blocks were computed in different ways (%s), e.g. on GPUs of different "
                        "generations or with another selfres code; values may differ where blocks meet (by the "
                        "rounding of the lower precision, when only that differs)",
                        store.path, ", ".join(kinds))
        io.finalize_ome_zarr(store.path, voxel_size=voxel_size, ngff_version=ngff_version, origin=origin, unit=unit,
                             contrast_limits=contrast_limits,
                             # the sample's id: a viewer's layer name (every output is restored.ome.zarr),
                             # with the acquisition's name of its channel where it has one ("cells_c0 (DAPI)"),
                             # and what it holds where not the restoration ("[tricubic]")
                             name=io.channel_label((attrs or {}).get("sample") or Path(final).name.split(".")[0],
                                                   (attrs or {}).get("channel_name"), (attrs or {}).get("layer_note")),
                             attrs=dict(attrs or {}) | {"infer_seconds": secs, "tiles": n_tiles,
                                                        "mvoxel_per_s": rate, "blocks": blocks, "compute": kinds,
                                                        "tiles_ran_on": [ran_on[k] for k in sorted(ran_on)],
                                                        "fingerprint": _json_roundtrip(fingerprint)})
        store.commit()
        if step == "gather":
            out.update(seconds=secs, mvoxel_per_s=rate)
    return out


def _gather_stats(store: PartialStore, n_tiles: int) -> tuple[float, float | None, dict]:
    """Seconds, Mvoxel/s and hosts (``{key: ran_on}``) of the work that made the tiles the store holds.

    The newest record of each tile says which job wrote it, where and at what cost. The store is
    kept when ``infer.blocks`` changes and a rerun of a block overwrites its stats file, so the
    stats files alone counted recomputed tiles twice, named hosts whose tiles were since
    replaced, or lost the hosts of tiles a rerun kept.
    """
    newest = {i: r for i, r in store._records().items() if i < n_tiles}
    per_job: dict[str, list[dict]] = {}
    for rec in newest.values():
        per_job.setdefault(rec["name"], []).append(rec)
    secs, vox, rated, ran_on = 0.0, 0.0, 0.0, {}
    for name, recs in sorted(per_job.items()):
        f = store.meta / f"stats-{name}.json"
        st = json.loads(f.read_text()) if f.is_file() else {}
        for where in {json.dumps(r["ran_on"] or st.get("ran_on"), sort_keys=True) for r in recs} - {"null"}:
            ran_on[where] = json.loads(where)
        r = float(st.get("mvoxel_per_s") or float("nan"))
        if all(rec["seconds"] is not None for rec in recs):  # the tiles' own costs
            sec = float(sum(rec["seconds"] for rec in recs))
        else:  # records of an older selfres: the job's time, in proportion to the tiles kept
            sec = float(st.get("seconds") or 0.0) * len(recs) / max(int(st.get("computed") or 0), len(recs))
        secs += sec
        if math.isfinite(r):  # a job's rate (not known for one that only kept tiles)
            vox, rated = vox + r * sec, rated + sec
    return secs, (vox / rated if rated > 0 else None), ran_on


def finished_store_attrs(final: str | Path, fingerprint: dict, *, within: bool = False) -> dict | None:
    """The attributes of ``final`` when it is a finished store (moved into place by
    :func:`scattered_store`) made for ``fingerprint`` — the same job, whose output need not
    be computed again; else None. ``within``: its fingerprint need only hold every item of
    ``fingerprint`` (a job's before :func:`infer_to_store` adds the store's layout)."""
    from . import io

    if not Path(final).exists():
        return None
    try:
        attrs = io.read_ome_zarr(final, lazy=True).attrs
    except Exception:  # noqa: BLE001 - damaged or not a store: not finished
        return None
    found, wanted = attrs.get("fingerprint"), _json_roundtrip(fingerprint)
    if within:
        return attrs if isinstance(found, dict) and all(found.get(k) == v for k, v in wanted.items()) else None
    return attrs if found == wanted else None


def _open_level0(path: Path, ngff_version: str):
    import zarr

    return zarr.open_array(str(Path(path) / "0"), mode="r+", zarr_format=2 if ngff_version == "0.4" else 3)


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def out_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(n) * int(f) for n, f in zip(shape, factors))


__all__ = [
    "CubicUpsampler", "read_padded", "tile_grid", "prepare_model", "run_tiles", "predict_array",
    "predict_single_pass", "restore_to_store", "Progress", "out_shape",
    "block_tiles", "PartialStore", "SubpixelConv", "SplitPReLU", "split_prelus", "fit_pass_tile",
    "pass_tile_for_budget", "keep_freed_memory", "scattered_store", "BandedCubic", "fuse_for_inference", "pad_channels", "store_layout", "default_output_chunks", "infer_to_store",
]
