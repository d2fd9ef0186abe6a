"""Inference wrappers for ``enhance`` models: self-ensemble, back-projection, serial ×4.

Each wrapper is an :class:`torch.nn.Module` with the same contract as the model it
wraps — ``.factors`` (z, y, x) and ``.halo`` (input voxels needed on each side, per
axis) — so that tiled inference (:func:`selfres.infer.run_tiles`) stays exact: the
tiled result equals one pass of the wrapper over the mirror-padded volume.

- :class:`SelfEnsemble`: the mean over geometric transforms of the input, each undone
  on the output. Members: the dihedral group of the lateral plane (4 rotations by 90°
  about z, each with and without a y flip; rotations only when the y and x factors are
  equal) times a z flip (3-D input). Every member is inverted on the axes it changed,
  in reverse order (the authors' code flipped the wrong axis for half its members).
- :class:`BackProjection`: iterative back-projection as in the Self-Vision paper,
  ``y ← y + U(x − D(y))`` with ``D`` the training degradation (noise-free) and ``U``
  the Keys-cubic upscale. It is global in principle, but each iteration only spreads
  information by the reach of ``D`` plus that of ``U`` (a few input voxels), so the
  halo grows by that much per iteration and tiles stay exact. Where that border leaves
  the volume, every step sees the current estimate mirrored about the volume's border
  (as it sees the input), not the network run on mirrored input: so the steps can run
  over the whole volume after the network alone, each on the volume widened by one
  step's reach (:mod:`selfres.infer`), with the same output as in tiles. Given the
  acquisition's noise level, each correction ``x − D(y)`` is first shrunk where it is no
  larger than that noise (:func:`shrink_residual`): on a noisy acquisition the plain step
  adds the acquisition's noise back onto the output.
- :class:`Serial`: two models in series (×2 then ×2 for a ×4 factor); the halo is the
  first model's plus the second's, converted to input voxels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import degrade
from .noise import NoiseLevel

__all__ = ["BackProjection", "SelfEnsemble", "Serial", "degradation_reach", "ensemble_members",
           "correction_noise_share", "local_noise_variance", "mirror_outside", "shrink_residual", "wrap_for_inference"]


def _as5d(x: torch.Tensor, factors: Sequence[int]) -> tuple[torch.Tensor, bool]:
    if x.ndim == 4:
        if factors[0] != 1:
            raise ValueError(f"a 2-D batch {tuple(x.shape)} needs a z factor of 1; the model has factors "
                             f"{tuple(factors)}")
        return x[:, :, None], True
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"expected a batch (B, 1, Z, Y, X) or (B, 1, Y, X); received shape {tuple(x.shape)}")
    return x, False


def ensemble_members(factors: Sequence[int], *, z_flips: bool = True,
                     rotations: bool = True) -> list[tuple[int, bool, bool]]:
    """Members ``(k, flip_y, flip_z)`` of the geometric self-ensemble.

    Member ``(k, fy, fz)`` transforms the input by flipping z (``fz``) and y (``fy``),
    then rotating by ``k``·90° in the (y, x) plane. With unequal y and x factors a
    rotation would swap them, so the lateral part becomes the flips of y and x
    (``k`` is then 0 or 2: a rotation by 180° is the flip of both axes); so it does
    without ``rotations`` (unequal y and x voxel sizes: :func:`selfres.models.lateral_rotations`).

    Parameters
    ----------
    factors
        The model's ``(z, y, x)`` factors.
    z_flips
        Include the z-flipped members.

    Returns
    -------
    list of tuple
        8 lateral members (4 without rotations), doubled with ``z_flips``.
    """
    ks = (0, 1, 2, 3) if rotations and int(factors[1]) == int(factors[2]) else (0, 2)
    lateral = [(k, fy) for k in ks for fy in (False, True)]
    zs = (False, True) if z_flips else (False,)
    return [(k, fy, fz) for fz in zs for k, fy in lateral]


class SelfEnsemble(nn.Module):
    """Mean of the model over geometric transforms of the input (see module notes).

    Parameters
    ----------
    model
        An enhance model with ``.factors`` and ``.halo``.
    z_flips
        Also average over z flips (ignored for inputs with one z slice).
    """

    def __init__(self, model: nn.Module, *, z_flips: bool = True) -> None:
        super().__init__()
        self.model = model
        self.factors = tuple(int(f) for f in model.factors)
        # a model trained without 90° rotations (unequal y and x voxel sizes) is not rotated
        self.members = ensemble_members(self.factors, z_flips=z_flips,
                                        rotations=getattr(model, "lateral_rotations", True))
        h = [int(v) for v in model.halo]
        if any(k % 2 for k, _, _ in self.members):  # 90° rotations swap the y and x halos
            h[1] = h[2] = max(h[1], h[2])
        self.halo: tuple[int, ...] = tuple(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x5, squeeze = _as5d(x, self.factors)
        flat = x5.shape[2] == 1
        acc = None
        n = 0
        for k, fy, fz in self.members:
            if fz and flat:
                continue
            dims = [d for d, on in ((2, fz), (3, fy)) if on]
            t = torch.flip(x5, dims) if dims else x5
            t = torch.rot90(t, k, dims=(3, 4)) if k else t
            y = self.model(t)
            y = torch.rot90(y, -k, dims=(3, 4)) if k else y
            y = torch.flip(y, dims) if dims else y
            y = y.float()
            acc = y if acc is None else acc + y
            n += 1
        out = acc / n
        return out[:, :, 0] if squeeze else out


def degradation_reach(degradation: degrade.Degradation, factors: Sequence[int], *, probe: int = 4) -> tuple[int, ...]:
    """Low-resolution voxels each side that one voxel of ``D(y)`` depends on, per axis.

    Measured from the impulse response of the degradation (so it holds for cubic,
    Gaussian and measured-PSF degradations alike), rounded up by one voxel — except on an
    axis it leaves alone (factor 1, no reach): 0.

    Parameters
    ----------
    degradation
        The training degradation (its noise is ignored).
    factors
        Integer factors ``(z, y, x)``.
    probe
        Low-resolution voxels each side of the impulse examined first; doubled while
        the response reaches the edge of the probe.
    """
    fs = tuple(int(f) for f in factors)
    d = _noise_free(degradation)
    while True:
        reach = _impulse_reach(d, fs, probe)
        if max(reach) < probe or probe >= 64:
            # an axis the degradation leaves alone (factor 1, no blur) needs no margin: a 2-D
            # image's tiles were read as 1 + 2 × iterations mirrored copies of their one plane
            return tuple(r + 1 if r > 0 or f > 1 else 0 for r, f in zip(reach, fs))
        probe *= 2


def _impulse_reach(d: degrade.Degradation, fs: tuple, probe: int) -> list[int]:
    n_lo = 2 * probe + 1
    shape = tuple(n_lo * f for f in fs)
    x = np.zeros(shape, np.float32)
    # impulses at the first HR voxel of the centre block and at its last one
    reach = [0, 0, 0]
    for corner in (0, 1):
        x[...] = 0
        x[tuple(probe * f + (f - 1) * corner for f in fs)] = 1.0
        y = np.abs(degrade.degrade(x, fs, d))
        nz = np.argwhere(y > 1e-6 * max(float(y.max()), 1e-30))
        for ax in range(3):
            reach[ax] = max(reach[ax], int(np.max(np.abs(nz[:, ax] - probe))))
    return reach


def _noise_free(d: degrade.Degradation) -> degrade.Degradation:
    if d.noise == "none":
        return d
    return degrade.Degradation(method=d.method, sigma_px=d.sigma_px, psf=d.psf if d.method == "psf" else None)


def _local_mean(t: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """The mean of ``t`` (``(B, 1, Z, Y, X)``) over a ``window`` (odd sizes) around each
    voxel, the border replicated."""
    import torch.nn.functional as F

    win = tuple(int(w) for w in window)
    pad = [p for w in reversed(win) for p in (w // 2, w // 2)]
    return F.avg_pool3d(F.pad(t, pad, mode="replicate") if any(pad) else t, win, stride=1)


def local_noise_variance(low: torch.Tensor, noise_level: NoiseLevel, window: Sequence[int]) -> torch.Tensor:
    """The noise variance ``noise_level`` gives at the local mean intensity of ``low``
    (``(B, 1, Z, Y, X)``) over ``window``: what :func:`shrink_residual` takes. It depends
    on the input alone, so a back-projection computes it once for all its steps."""
    return (float(noise_level.slope) * _local_mean(low, window) + float(noise_level.floor)).clamp_min(0.0)


def shrink_residual(residual: torch.Tensor, noise_variance: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """A back-projection correction with the acquisition's noise shrunk out of it.

    An adaptive (local) Wiener filter about the local mean: in each ``window`` (odd
    sizes, z, y, x) around a voxel, the correction's local mean ``m`` and variance ``v``;
    the voxel keeps ``m + max(0, 1 − σ²/v)·(r − m)``, where ``σ²`` (``noise_variance``, from
    :func:`local_noise_variance`) is the noise variance the correction holds at the local
    mean intensity of the input (the acquisition's level times the share that passes into
    the correction, :func:`correction_noise_share`). Where the correction varies no more
    than the noise, only its local mean is kept; where it is structure (much larger than
    the noise), it is kept whole; with no noise nothing changes. Tensors ``(B, 1, Z, Y,
    X)``, on the input grid; the window's border is replicated (a tile's border lies in
    its halo).
    """
    m = _local_mean(residual, window)
    v = (_local_mean(residual * residual, window) - m * m).clamp_min(1e-30)
    return m + (1.0 - noise_variance / v).clamp(0.0, 1.0) * (residual - m)


#: :func:`correction_noise_share` needs at least this many input voxels along every scaled axis.
SHARE_MIN_LENGTH = 6


def correction_noise_share(model: nn.Module, low: np.ndarray, noise_level: NoiseLevel, *,
                           degradation: degrade.Degradation | None = None, device: torch.device | str = "cpu",
                           seed: int = 0) -> float:
    """The share of an acquisition's noise that a back-projection correction
    ``x − D(model(x))`` holds, measured by perturbing the input.

    Noise ``w`` of the acquisition's level (``noise_level`` at each voxel's intensity) is
    added to ``low`` (an input of the model, e.g. the held-out one); the share is
    ``mean(Δr²) / mean(w²)`` with ``Δr = w − D(model(x + w) − model(x))``, the outermost
    input voxel of each axis left out. Tricubic keeps part of the noise in its output, so
    ``D`` gives that part back and the correction holds about a quarter of it (0.27 at ×2);
    a network that removes the noise leaves all of it in the correction (1). ``nan`` when the
    level is zero or ``low`` is too small to measure: fewer than :data:`SHARE_MIN_LENGTH`
    voxels along an axis with a factor above 1 (the cubic kernels' border would bias the
    share: 0.16–0.19 instead of tricubic's 0.27 on 1–2 voxels, 0.25 on 4).
    """
    from .infer import predict_array

    x = np.asarray(low, dtype=np.float32)
    fs = tuple(int(f) for f in model.factors)
    if any(f > 1 and n < SHARE_MIN_LENGTH for n, f in zip(x.shape[-len(fs):], fs)):
        return float("nan")
    sigma = np.sqrt(noise_level.variance(x)).astype(np.float32)
    if not np.any(sigma > 0):
        return float("nan")
    w = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32) * sigma
    tile = tuple(max(8, min(64, n)) for n in x.shape)
    y0 = predict_array(model, x, factors=fs, tile_size=tile, device=device, amp=False)
    y1 = predict_array(model, x + w, factors=fs, tile_size=tile, device=device, amp=False)
    dy = degrade.degrade(y1 - y0, fs, _noise_free(degradation or degrade.Degradation()))
    inner = tuple(slice(1, -1) if n > 2 else slice(None) for n in x.shape)
    delta = (w - np.asarray(dy, dtype=np.float32))[inner]
    power = float(np.mean(np.square(w[inner], dtype=np.float64)))
    return float(np.mean(np.square(delta, dtype=np.float64)) / power) if power > 0 else float("nan")


#: Window of :func:`shrink_residual` on an axis with a factor above 1 (input voxels).
SHRINK_WINDOW = 3


class BackProjection(nn.Module):
    """Iterative back-projection ``y ← y + U(x − D(y))`` after the model.

    Parameters
    ----------
    model
        An enhance model (or wrapper) with ``.factors`` and ``.halo``.
    iterations
        Number of back-projection steps (0: the model unchanged).
    degradation
        ``D``: the training degradation (default: antialiased cubic); noise is ignored.
    noise_level
        The noise variance a correction holds against intensity (normalised units: the
        acquisition's times :func:`correction_noise_share`): each correction ``x − D(y)``
        is shrunk where it is no larger than that noise
        (:func:`shrink_residual`, a window of :data:`SHRINK_WINDOW` voxels along every axis
        with a factor above 1). ``None`` or zero: the paper's plain step.
    """

    def __init__(self, model: nn.Module, *, iterations: int,
                 degradation: degrade.Degradation | None = None, noise_level: NoiseLevel | None = None) -> None:
        super().__init__()
        if int(iterations) < 0:
            raise ValueError(f"iterations must be >= 0; received {iterations!r}")
        self.model = model
        self.factors = tuple(int(f) for f in model.factors)
        self.iterations = int(iterations)
        self.degradation = _noise_free(degradation or degrade.Degradation())
        self.degrader = degrade.TorchDegrader(self.factors, self.degradation)
        noisy = noise_level is not None and (noise_level.slope > 0 or noise_level.floor > 0)
        self.noise_level = noise_level if noisy else None
        self.shrink_window = tuple(SHRINK_WINDOW if f > 1 and noisy else 1 for f in self.factors)
        d_reach = degradation_reach(self.degradation, self.factors)
        u_reach = tuple(2 if f > 1 else 0 for f in self.factors)
        self.step_reach = tuple(a + b + w // 2 for a, b, w in zip(d_reach, u_reach, self.shrink_window))
        self.halo: tuple[int, ...] = tuple(int(h) + self.iterations * r for h, r in zip(model.halo, self.step_reach))

    #: :func:`selfres.infer.run_tiles` tells :meth:`forward` which parts of a block lie outside the volume
    mirrors_outside = True

    def forward(self, x: torch.Tensor, outside: Sequence[Sequence[tuple[int, int]]] | None = None) -> torch.Tensor:
        """``outside``: for each batch element, per axis ``(low, high)``, the input voxels at
        each end of ``x`` that lie outside the volume (mirror-padded copies). Before every
        step the estimate there is replaced by the mirror of the estimate inside;
        ``None``: all of ``x`` is inside."""
        x5, squeeze = _as5d(x, self.factors)
        x5 = x5.float()
        y = self.refine(x5, self.model(x5), outside=outside)
        return y[:, :, 0] if squeeze else y

    def noise_variance(self, x: torch.Tensor) -> torch.Tensor | None:
        """The noise variance a correction holds about each voxel of the input ``x``
        (:func:`local_noise_variance`); ``None`` without a noise level (plain steps)."""
        if self.noise_level is None:
            return None
        with torch.autocast(device_type=x.device.type, enabled=False):
            return local_noise_variance(x.float(), self.noise_level, self.shrink_window)

    def step(self, x: torch.Tensor, y: torch.Tensor, noise_variance: torch.Tensor | None = None) -> torch.Tensor:
        """One back-projection step ``y + U(x − D(y))`` in float32 (``(B, 1, Z, Y, X)``), the
        correction shrunk by the noise level when one is given. ``noise_variance``: what
        :meth:`noise_variance` gives for ``x``, when the caller has it from an earlier step."""
        x, y = x.float(), y.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            residual = x - self.degrader(y)
            if self.noise_level is not None:
                if noise_variance is None:
                    noise_variance = self.noise_variance(x)
                residual = shrink_residual(residual, noise_variance, self.shrink_window)
            return y + degrade.upscale_cubic(residual, self.factors)

    def refine(self, x: torch.Tensor, y: torch.Tensor, *,
               outside: Sequence[Sequence[tuple[int, int]]] | None = None) -> torch.Tensor:
        """The back-projection steps alone: ``y`` (the model's output for ``x``, both
        ``(B, 1, Z, Y, X)``) refined ``iterations`` times; ``outside`` as in :meth:`forward`."""
        y = y.float()
        noise_variance = self.noise_variance(x) if self.iterations else None
        for _ in range(self.iterations):
            if outside is not None:
                y = mirror_outside(y, outside, factors=self.factors, halo=self.model.halo)
            y = self.step(x, y, noise_variance)
        return y


def mirror_outside(y: torch.Tensor, outside: Sequence[Sequence[tuple[int, int]]], *, factors: Sequence[int],
                   halo: Sequence[int]) -> torch.Tensor:
    """``y`` (estimates on blocks, ``(B, 1, Z, Y, X)``) with the part of each element that
    lies outside the volume replaced by the mirror of the part inside.

    ``outside[b][axis] = (low, high)``: input voxels at each end of element ``b``'s input
    block that lie outside the volume. Nothing is done on an axis where both lie within
    the network's own ``halo`` (output the caller crops, and no step reaches).
    """
    fs = tuple(int(f) for f in factors)

    def needed(sides):
        return any(int(lo) > int(h) or int(hi) > int(h) for (lo, hi), h in zip(sides, halo))

    if not any(needed(sides) for sides in outside):
        return y
    elements = []
    for b, sides in enumerate(outside):
        # output voxels outside, per axis; nothing where both ends lie within the network's halo
        pads = [(0, 0) if int(lo) <= int(h) and int(hi) <= int(h) else (int(lo) * f, int(hi) * f)
                for (lo, hi), h, f in zip(sides, halo, fs)]
        inner = y[b : b + 1][(slice(None), slice(None)) + tuple(slice(lo, n - hi) for (lo, hi), n
                                                               in zip(pads, y.shape[2:]))]
        elements.append(degrade.mirror_pad(inner, pads, edge=True))
    return torch.cat(elements)


class Serial(nn.Module):
    """Two enhance models in series: ``second(first(x))``.

    Parameters
    ----------
    first, second
        Models with ``.factors`` and ``.halo``; the product of their factors is the
        wrapper's.
    """

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second
        f1 = tuple(int(f) for f in first.factors)
        f2 = tuple(int(f) for f in second.factors)
        self.factors = tuple(a * b for a, b in zip(f1, f2))
        self.halo: tuple[int, ...] = tuple(
            int(h1) + math.ceil(int(h2) / a) for h1, h2, a in zip(first.halo, second.halo, f1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def wrap_for_inference(model: nn.Module, *, ensemble: bool = False, back_projection_iterations: int = 0,
                       back_projection_shrink: bool = False, degradation: degrade.Degradation | None = None,
                       noise_level: NoiseLevel | None = None) -> nn.Module:
    """The model, wrapped in a self-ensemble and/or back-projection when asked.

    Back-projection acts on the ensemble mean (once, not per member); with
    ``back_projection_shrink`` its corrections are shrunk by ``noise_level`` (the noise
    a correction holds; ``None``: not known, plain steps).
    """
    if ensemble:
        model = SelfEnsemble(model)
    if back_projection_iterations:
        model = BackProjection(model, iterations=back_projection_iterations, degradation=degradation,
                               noise_level=noise_level if back_projection_shrink else None)
    return model
