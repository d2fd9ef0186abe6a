"""``isotropic`` mode (Self-Net family): lateral slices teach the axial ones.

A stack whose z voxel is ``f = voxel_z / voxel_xy`` times its lateral pixel is first
resliced to the isotropic grid of the contract (Keys cubic along z, output z size
``round(nz · f)``, half-pixel centres). Its XZ and YZ slices then look like lateral
slices that were blurred and subsampled along one axis. Lateral (XY) slices of the
same sample are the high-resolution examples: degraded along one axis the way z was
degraded, they give training pairs for a 2-D restoration net, which is then applied to
every XZ and every YZ slice; the two restorations are fused.

Degradation models (``IsotropicSettings.degradation``):

``analytic``
    Gaussian blur of ``axial_sigma_px`` lateral pixels along one axis, point sampling
    every ``f`` (a z stack samples the axially blurred object at its focus steps), optional
    noise top-up so the degraded slice is as noisy as a real z sample, then cubic back
    to the fine grid. σ comes from the settings, else from ``train.degradation``
    (optics or measured PSF), else it is *estimated from the data*: the σ whose
    degraded lateral profiles have the power spectrum of the real z profiles.
``learned``
    Self-Net's unsupervised stage: a small CycleGAN between analytically degraded
    lateral slices and real (resliced) axial slices. The lateral→axial generator
    starts as the identity (so as the analytic model) and learns what the analytic
    model misses; a feedback term (the restorer applied to the generator output,
    against the true lateral slice) keeps its output restorable. The restorer is then
    trained further on the frozen generator's output.

Model selection uses held-out lateral slices (the held-out box of the training FOV),
degraded as in training: the checkpoint with the best PSNR there is kept, and the
model is flagged ``model_worse_than_interpolation`` when it does not beat the
degraded input itself (which is what z-cubic interpolation gives on real axial data) by
``train.guard_margin_db``, as in enhance mode (:func:`guard_flags`).
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import degrade, io, metrics, models, normalise
from .allocator import heap_only
from .atomic import permissions_as_umask
from .errors import InputError
from .fov import TrainingFov, training_boxes
from .settings import (ISOTROPIC_INFERENCE_KEYS, InferSettings, IsotropicSettings, Settings, TrainSettings,
                       isotropic_train_values, to_dict,
                       # the anisotropy factor of a voxel size: there without torch, for a run's start
                       isotropic_factor)
from .wording import stop_text

log = logging.getLogger("selfres.isotropic")

DEGRADER_FILE = "degrader.safetensors"
#: held-out slices per forward pass when validating during training (a fixed value: the
#: training job does not get ``infer_batch``; held-out slices are a few hundred pixels wide)
VALIDATION_BATCH = 8
#: noise seed of the first held-out slice degraded by a learned degradation (slice i: + i)
LEARNED_VALIDATION_SEED = 12345
TAIL_LR_SCALE = 0.1
UNIFORM_SHARE = 0.25  # share of training patches placed uniformly (the rest: foreground)
_LOG_COLUMNS = ["step", "loss", "val_psnr_model", "val_psnr_interp", "lr", "seconds"]


# ----------------------------------------------------------------------------- grid
#: Fewest z slices isotropic mode trains on (refused at crop, before the GPU job).
MIN_ISOTROPIC_SLICES = 4


def isotropic_shape(shape: Sequence[int], factor: float) -> tuple[int, int, int]:
    """Output grid of the contract: ``(round(nz · f), ny, nx)``."""
    nz, ny, nx = (int(n) for n in shape)
    return int(round(nz * factor)), ny, nx


def reslice(volume: np.ndarray, factor: float) -> np.ndarray:
    """Keys-cubic upsampling along z by ``factor`` (the z-cubic baseline), float32."""
    return np.asarray(degrade.upscale_cubic(np.asarray(volume, dtype=np.float32), (float(factor), 1, 1)),
                      dtype=np.float32)


# ---------------------------------------------------------------- axial degradation
def sample_matrix(n_fine: int, n_low: int, factor: float) -> np.ndarray:
    """Point sampling ``(n_low, n_fine)``: low sample ``i`` is the fine signal at ``(i + 0.5)·f − 0.5``.

    A z stack samples the axially blurred object at its focus positions; the
    contract's half-pixel convention puts z sample ``i`` at that fine coordinate.
    Off-grid positions are read by Keys-cubic interpolation (no anti-aliasing: the
    blur before it is the optics'), borders mirrored. Rows sum to 1.
    """
    return np.array(degrade.resize_matrix(int(n_fine), int(n_low), scale=1.0 / float(factor), antialias=False),
                    dtype=np.float64)


def low_length(n_fine: int, factor: float) -> int:
    """Number of z samples ``floor(n / f)`` (at least 2) that a fine axis of ``n`` holds.

    Rounding down keeps every sample inside the axis, as real z samples are (a sample
    past the end would be read from the mirrored border).
    """
    return max(2, int(math.floor(n_fine / float(factor) + 1e-9)))


def axial_down_matrix(n_fine: int, n_low: int, factor: float, sigma: float) -> np.ndarray:
    """``(n_low, n_fine)`` float64: Gaussian blur by ``sigma`` then point sampling by ``f``."""
    return sample_matrix(n_fine, n_low, factor) @ gaussian_matrix(int(n_fine), float(sigma))


def area_matrix(n_fine: int, n_low: int, factor: float) -> np.ndarray:
    """Box (area) sampling ``(n_low, n_fine)``: low sample ``i`` integrates ``[i·f, (i+1)·f)``.

    The degradation of isotropic models trained before the twenty-third session (their
    ``model.json`` records no ``sampling``): kept so that they are judged as they were trained.

    In pixel-edge coordinates of the fine grid, so low sample ``i`` is centred at fine
    coordinate ``(i + 0.5)·f − 0.5`` (the contract's half-pixel convention). Rows sum
    to 1 (boxes overhanging the end are renormalised).
    """
    m = np.zeros((n_low, n_fine), dtype=np.float64)
    for i in range(n_low):
        a, b = i * factor, (i + 1) * factor
        j0, j1 = int(math.floor(a)), min(int(math.ceil(b)), n_fine)
        for j in range(max(j0, 0), j1):
            m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
        s = m[i].sum()
        if s <= 0:  # box entirely past the end: take the last pixel
            m[i, n_fine - 1] = 1.0
        else:
            m[i] /= s
    return m


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` Gaussian blur with mirror borders (scipy ``mode='mirror'``)."""
    if sigma <= 0:
        return np.eye(n)
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    idx = degrade.mirror_indices(np.arange(n)[:, None] + x[None, :].astype(np.int64), n, edge=False)
    g = np.zeros((n, n), dtype=np.float64)
    np.add.at(g, (np.broadcast_to(np.arange(n)[:, None], idx.shape), idx), np.broadcast_to(k, idx.shape))
    return g


@lru_cache(maxsize=128)
def axial_operator(n: int, factor: float, sigma: float, sampling: str = "point") -> tuple[np.ndarray, np.ndarray]:
    """``(down, up)`` matrices degrading an axis of length ``n`` like z was degraded.

    ``down`` (``m × n``, ``m`` from :func:`low_length`) blurs by ``sigma`` and samples
    every ``f`` (:func:`axial_down_matrix`); ``up`` (``n × m``) is the Keys-cubic
    upsampling by ``f`` back to ``n`` (exactly what z-cubic reslicing does to real z
    samples). ``sampling`` ``"box"``: the box average of earlier versions (:func:`area_matrix`,
    ``m = round(n / f)``), for their models. Both are read-only (cached, as
    :func:`selfres.degrade.resize_matrix`'s are).
    """
    if sampling not in ("point", "box"):
        raise ValueError(f"axial sampling must be 'point' or 'box'; received {sampling!r}")
    if sampling == "box":
        m = max(2, int(round(n / factor)))
        down = (area_matrix(n, m, factor) @ gaussian_matrix(n, sigma)).astype(np.float32)
    else:
        m = low_length(n, factor)
        down = axial_down_matrix(n, m, factor, sigma).astype(np.float32)
    up = np.array(degrade.resize_matrix(m, n, scale=factor, antialias=False), dtype=np.float32)
    down.setflags(write=False)  # cached: shared by every later call in the process
    up.setflags(write=False)
    return down, up


@dataclass(frozen=True)
class AxialDegradation:
    """Analytic axial degradation applied along the rows (axis ``-2``) of 2-D slices.

    Parameters
    ----------
    factor
        Anisotropy factor ``f``.
    sigma_px
        Extra axial blur (σ, in lateral pixels) before sampling every ``f``.
    noise_sigma
        Standard deviation of the Gaussian noise added to each low-resolution sample
        (the noise top-up; 0 for none).
    noise_variance
        ``(slope, floor)``: a further top-up of variance ``slope·y + floor`` (never below 0)
        at each low-resolution sample ``y`` — shot noise grows with the signal, so a single
        σ gives bright structure too little and the background too much.
    sampling
        ``"point"`` (z samples read at their positions, :func:`axial_down_matrix`) or
        ``"box"`` (the box average of models trained before point sampling).
    """

    factor: float
    sigma_px: float = 0.0
    noise_sigma: float = 0.0
    noise_variance: tuple[float, float] = (0.0, 0.0)
    sampling: str = "point"

    @property
    def noisy(self) -> bool:
        return self.noise_sigma > 0 or any(v > 0 for v in self.noise_variance)

    def matrices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return axial_operator(int(n), float(self.factor), float(self.sigma_px), self.sampling)

    def topup_std(self, low):
        """Standard deviation of the top-up at each low-resolution sample (numpy or torch)."""
        slope, floor = (float(v) for v in self.noise_variance)
        sigma2 = float(self.noise_sigma) ** 2
        affine = slope * low + floor  # never below 0 on its own; the constant σ² adds to it
        if isinstance(affine, torch.Tensor):
            return (affine.clamp(min=0) + sigma2).sqrt()
        return np.sqrt(np.clip(affine, 0, None) + sigma2)

    def apply_numpy(self, slices: np.ndarray, *, rng: np.random.Generator | int | None = 0) -> np.ndarray:
        """Degrade ``(..., H, W)`` along H (numpy, float32)."""
        x = np.asarray(slices, dtype=np.float32)
        down, up = self.matrices(x.shape[-2])
        low = np.einsum("mh,...hw->...mw", down.astype(np.float32), x)
        if self.noisy:
            noise = np.random.default_rng(rng).standard_normal(low.shape).astype(np.float32)
            low = low + (self.topup_std(low) * noise).astype(np.float32)
        return np.einsum("hm,...mw->...hw", up.astype(np.float32), low).astype(np.float32)

    def apply_torch(self, batch: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Degrade a batch ``(B, 1, H, W)`` along H (torch)."""
        down, up = self.matrices(batch.shape[-2])
        d = torch.tensor(down, dtype=batch.dtype, device=batch.device)
        u = torch.tensor(up, dtype=batch.dtype, device=batch.device)
        low = torch.matmul(d, batch)
        if self.noisy:
            low = low + self.topup_std(low) * torch.randn(low.shape, generator=generator, device=low.device,
                                                           dtype=low.dtype)
        return torch.matmul(u, low)

    def to_dict(self) -> dict:
        return {"factor": float(self.factor), "sigma_px": float(self.sigma_px), "noise_sigma": float(self.noise_sigma),
                "noise_variance": [float(v) for v in self.noise_variance], "sampling": self.sampling}

    @classmethod
    def from_dict(cls, d: dict) -> "AxialDegradation":
        """As :meth:`to_dict` wrote it (``noise_variance`` absent in models of earlier versions;
        ``sampling`` absent before point sampling: those models were trained with box averages)."""
        return cls(factor=float(d["factor"]), sigma_px=float(d["sigma_px"]), noise_sigma=float(d["noise_sigma"]),
                   noise_variance=tuple(float(v) for v in d.get("noise_variance", (0.0, 0.0))),
                   sampling=str(d.get("sampling", "box")))


# ---------------------------------------------------------------------- estimation
def noise_topup(factor: float, sigma_px: float, noise_sigma: float, *, n: int = 64) -> float:
    """σ of the noise to add to degraded lateral samples so they are as noisy as real z samples.

    A real z sample carries the per-plane noise ``noise_sigma``; a degraded lateral
    sample carries ``noise_sigma² · Σ w²`` (its blur and sampling weights average the noise
    down). The top-up is the difference.
    """
    if noise_sigma <= 0:
        return 0.0
    down, _ = axial_operator(max(n, int(4 * factor) + 4), float(factor), float(sigma_px))
    rows = down[1:-1] if down.shape[0] > 2 else down
    kept = float(np.mean(np.sum(rows**2, axis=1)))
    return float(noise_sigma * math.sqrt(max(0.0, 1.0 - kept)))


def _profiles(volume: np.ndarray, length: int, axis: int, max_profiles: int, rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping 1-D windows of ``length`` along ``axis`` of ``volume``: ``(K, length)``."""
    v = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, -1)
    n = v.shape[-1]
    k = n // length
    if k == 0:
        return np.zeros((0, length), np.float32)
    w = v[..., : k * length].reshape(-1, length)
    if w.shape[0] > max_profiles:
        w = w[rng.choice(w.shape[0], max_profiles, replace=False)]
    return w


def _psd(profiles: np.ndarray) -> np.ndarray:
    win = np.hanning(profiles.shape[1] + 2)[1:-1]
    p = profiles - profiles.mean(axis=1, keepdims=True)
    return np.mean(np.abs(np.fft.rfft(p * win, axis=1)) ** 2, axis=0)


def estimate_axial_sigma(
    volume: np.ndarray,
    factor: float,
    *,
    noise_sigma: float = 0.0,
    max_profiles: int = 20000,
    seed: int = 0,
) -> tuple[float, dict]:
    """Estimate the extra axial blur σ (lateral pixels) by matching power spectra.

    Real z profiles (sampled every ``f`` lateral pixels) are compared with lateral
    profiles blurred by a candidate σ, sampled every ``f`` and topped up with noise:
    the σ whose log power spectrum best matches (free overall offset) is returned.
    This assumes the specimen is statistically isotropic; the figure is a starting
    point (``learned`` mode corrects what it misses).

    Returns
    -------
    tuple
        ``(sigma_px, info)``; ``sigma_px`` is 0.0 with ``info["reason"]`` when the
        volume is too thin to estimate it.
    """
    vol = np.asarray(volume, dtype=np.float32)
    nz, ny, nx = vol.shape
    low_len = min(nz, int(min(ny, nx) // factor), 64)
    if low_len < 6:
        return 0.0, {"reason": f"too few samples for a spectrum (z {nz}, lateral {min(ny, nx)}, f {factor:.3g})",
                     "estimated": False}
    fine_len = int(round(low_len * factor))
    rng = np.random.default_rng(seed)
    pz = _psd(_profiles(vol, low_len, 0, max_profiles, rng))
    lat = np.concatenate([_profiles(vol, fine_len, 1, max_profiles // 2, rng),
                          _profiles(vol, fine_len, 2, max_profiles // 2, rng)])
    win2 = float(np.sum(np.hanning(low_len + 2)[1:-1] ** 2))
    bins = slice(1, None)
    best = (float("inf"), 0.0)
    errors = {}
    for sigma in np.arange(0.0, 3.0 * factor + 1e-9, 0.25):
        down = axial_down_matrix(fine_len, low_len, factor, float(sigma))
        q = lat @ down.T.astype(np.float32)
        top = noise_topup(factor, float(sigma), noise_sigma)
        pl = _psd(q) + top**2 * win2
        d = np.log(pz[bins] + 1e-12) - np.log(pl[bins] + 1e-12)
        err = float(np.mean((d - d.mean()) ** 2))
        errors[round(float(sigma), 3)] = err
        if err < best[0]:
            best = (err, float(sigma))
    return best[1], {"reason": "power-spectrum match of z profiles and degraded lateral profiles",
                     "profile_length": low_len, "error": best[0]}


def psf_axis_sigma(psf: np.ndarray, axis: int) -> float:
    """σ (voxels) of a measured PSF along one axis: a Gaussian with offset fitted to the line
    profile through its peak, as a bead's width is measured (``selfres psf-sigma --beads``)
    and as the optics formulas give it.

    Not a projection: every plane of a widefield PSF carries the same light, so its projection
    on z is flat until the defocused disc leaves the crop, and a fit to it measures the crop
    (12 times the profile's σ on a 41-plane Gaussian-beam PSF); the lateral projections sum
    the wide defocused planes. Faint wide tails (a widefield PSF's cone, residual background)
    inflate second moments — a core of σ 3 with a tenth of its mass in a halo of σ 12 reads
    4.7 by moments — and an axial σ read too large is the costly error of isotropic
    restoration. Second moments of the profile only when the fit fails.
    """
    from scipy.ndimage import gaussian_filter

    p = np.asarray(psf, dtype=np.float64)
    # the peak of a copy smoothed by one voxel: a noisy measured PSF's brightest voxel may
    # be a noise spike beside its centre
    peak = np.unravel_index(int(np.argmax(gaussian_filter(p, 1.0))), p.shape)
    line = tuple(slice(None) if i == axis else int(c) for i, c in enumerate(peak))
    prof = p[line]
    fwhm = metrics.fit_gaussian_fwhm(prof)
    if math.isfinite(fwhm) and fwhm > 0:
        return float(fwhm / metrics.FWHM_PER_SIGMA)
    prof = np.clip(prof - prof.min(), 0.0, None)
    if prof.sum() <= 0:
        return 0.0
    prof = prof / prof.sum()
    c = np.arange(prof.size)
    mu = float(np.sum(c * prof))
    return math.sqrt(max(float(np.sum((c - mu) ** 2 * prof)), 0.0))


def sigma_from_settings(train: TrainSettings, voxel_size: Sequence[float]) -> float | None:
    """Extra axial σ (lateral pixels) implied by the settings' PSF, else None.

    The PSF is ``train.degradation``'s (``gaussian``: σ in µm or the optics; ``psf``: a
    measured PSF), else ``train.psf_sigma_um`` (the acquisition's Gaussian σ, z,y,x µm, as
    ``selfres psf-sigma`` prints it). The lateral slices already carry the lateral PSF, so
    the extra blur is ``sqrt(σz² − σxy²)`` (Gaussian approximation; a measured PSF's σ from
    a Gaussian fitted to its profile through the peak along each axis,
    :func:`psf_axis_sigma`). An axial σ narrower than the lateral one gives 0, with a warning
    (z,y,x typed in another order reads so).
    """
    found = sigma_and_source(train, voxel_size)
    return None if found is None else found[0]


def sigma_and_source(train: TrainSettings, voxel_size: Sequence[float]) -> tuple[float, str] | None:
    """:func:`sigma_from_settings` with the setting it came from (``train.psf_sigma_um``…)."""
    given = axial_lateral_sigma_um(train, voxel_size)
    if given is None:
        return None
    sz, sxy, source = given
    vxy = 0.5 * (float(voxel_size[1]) + float(voxel_size[2]))
    if sz < sxy:
        log.warning("isotropic: the axial σ from %s (%.4g µm) is narrower than the lateral one (%.4g µm): no axial "
                    "blur is added to the lateral slices (σ 0), so the output undoes the z sampling but not an "
                    "axial blur. If that is not your microscope's PSF, check the order of the values: z,y,x",
                    source, sz, sxy)
    return float(math.sqrt(max(sz**2 - sxy**2, 0.0)) / vxy), source


def axial_lateral_sigma_um(train: TrainSettings, voxel_size: Sequence[float]) -> tuple[float, float, str] | None:
    """``(σz, σxy, source)`` in µm of the PSF the settings give (:func:`sigma_from_settings`),
    ``source`` naming the setting; None where they give none."""
    d = train.degradation
    vz, vy, vx = (float(v) for v in voxel_size)
    if d.method == "gaussian":
        if d.sigma_um is not None:
            return float(d.sigma_um[0]), 0.5 * float(d.sigma_um[1] + d.sigma_um[2]), "train.degradation.sigma_um"
        px = degrade.gaussian_sigma_from_optics(na=d.na, wavelength_um=d.wavelength_um,
                                                refractive_index=d.refractive_index,
                                                voxel_size=(vz, vy, vx), kind=d.microscope)
        return px[0] * vz, 0.5 * (px[1] * vy + px[2] * vx), "the optics of train.degradation"
    if d.method == "psf":
        psf = degrade.load_psf(d.psf_path)
        if psf.ndim != 3:
            return None
        sig = [psf_axis_sigma(psf, ax) for ax in range(3)]
        return sig[0] * vz, 0.5 * (sig[1] * vy + sig[2] * vx), "train.degradation.psf_path"
    if train.psf_sigma_um is not None:
        sz, sy, sx = (float(v) for v in train.psf_sigma_um)
        return sz, 0.5 * (sy + sx), "train.psf_sigma_um"
    return None


# ------------------------------------------------------------------------ patches
def otsu_threshold(volume: np.ndarray, *, max_voxels: int = 1_000_000) -> float:
    """Foreground threshold derived from the data (Otsu on a subsample)."""
    from skimage.filters import threshold_otsu

    v = np.asarray(volume, dtype=np.float32).ravel()
    if v.size > max_voxels:
        v = v[:: int(math.ceil(v.size / max_voxels))]
    if float(v.max()) == float(v.min()):
        return float(v.min())
    return float(threshold_otsu(v))


class SlicePatchSampler:
    """Random 2-D patches of a stack of slices ``(N, H, W)``, foreground-weighted.

    Three draws in four take a placement whose share of pixels above ``threshold``
    is at least ``foreground_fraction`` (any placement if none qualifies); the
    fourth is uniform, so the net also learns to leave background alone. With
    ``augment``, patches are randomly transposed (when square) and flipped, so the
    degraded axis (rows) is sometimes y and sometimes x. All randomness comes from
    one :class:`torch.Generator`.
    """

    def __init__(self, slices: np.ndarray, patch: tuple[int, int], *, threshold: float,
                 foreground_fraction: float, augment: bool, generator: torch.Generator):
        self.slices = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
        n, h, w = self.slices.shape
        self.patch = (min(int(patch[0]), h), min(int(patch[1]), w))
        self.gen = generator
        self.augment = augment
        ph, pw = self.patch
        fg = (np.asarray(slices) > threshold).astype(np.float64)
        c = np.pad(fg.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
        share = (c[:, ph:, pw:] - c[:, :-ph, pw:] - c[:, ph:, :-pw] + c[:, :-ph, :-pw]) / (ph * pw)
        ok = np.flatnonzero(share.ravel() >= foreground_fraction)
        self.grid = share.shape
        self.candidates = torch.from_numpy(ok if ok.size else np.arange(share.size))
        self.fraction_kept = float(ok.size / share.size) if share.size else 0.0

    def sample(self, batch: int) -> torch.Tensor:
        ph, pw = self.patch
        out = []
        n_all = int(np.prod(self.grid))
        for _ in range(batch):
            if torch.rand(1, generator=self.gen) < UNIFORM_SHARE:  # some background, so it is left alone
                k = int(torch.randint(0, n_all, (1,), generator=self.gen))
            else:
                k = int(self.candidates[int(torch.randint(0, len(self.candidates), (1,), generator=self.gen))])
            i, y, x = np.unravel_index(k, self.grid)
            p = self.slices[i, y : y + ph, x : x + pw]
            if self.augment:
                r = torch.rand(3, generator=self.gen)
                if ph == pw and r[0] < 0.5:
                    p = p.t()
                dims = [d for d in range(2) if r[1 + d] < 0.5]
                if dims:
                    p = torch.flip(p, dims)
            out.append(p)
        return torch.stack(out)[:, None].contiguous()


class AxialPatchSampler:
    """Random patches of real axial (XZ and YZ) slices of a resliced volume ``(NZ, Y, X)``.

    A patch starts on a multiple of ``f`` (fine row ``round(k·f)``) and is never flipped along
    z, so its z samples sit where a degraded lateral patch has them (``(i + 0.5)·f − 0.5`` from its
    first row): otherwise the sampling phase alone would tell the discriminator real from fake.
    """

    def __init__(self, resliced: np.ndarray, patch: tuple[int, int], *, factor: float, generator: torch.Generator):
        self.vol = torch.from_numpy(np.ascontiguousarray(resliced, dtype=np.float32))
        nz, ny, nx = self.vol.shape
        self.patch = (min(int(patch[0]), nz), min(int(patch[1]), ny, nx))
        last = nz - self.patch[0]
        starts = [int(round(k * float(factor))) for k in range(int(last / float(factor)) + 2)]
        self.z_starts = [z for z in starts if z <= last] or [0]
        self.gen = generator

    def _r(self, n: int) -> int:
        return int(torch.randint(0, max(1, n), (1,), generator=self.gen))

    def sample(self, batch: int) -> torch.Tensor:
        ph, pw = self.patch
        nz, ny, nx = self.vol.shape
        out = []
        for _ in range(batch):
            z = self.z_starts[self._r(len(self.z_starts))]
            if torch.rand(1, generator=self.gen) < 0.5:  # XZ slice at a y
                y, x = self._r(ny), self._r(nx - pw + 1)
                p = self.vol[z : z + ph, y, x : x + pw]
            else:  # YZ slice at an x
                x, y = self._r(nx), self._r(ny - pw + 1)
                p = self.vol[z : z + ph, y : y + pw, x]
            out.append(torch.flip(p, [1]) if torch.rand(1, generator=self.gen) < 0.5 else p)
        return torch.stack(out)[:, None].contiguous()


# ----------------------------------------------------------------- validation set
def _spread(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(int))


def holdout_pairs(holdout: np.ndarray, deg: AxialDegradation, *, max_pixels: int = 300_000,
                  seed: int = 12345) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation ``(target, degraded)`` stacks from held-out lateral slices.

    Two groups: slices degraded along y (like YZ slices) and along x (transposed,
    like XZ slices); each capped at ``max_pixels`` by taking evenly spaced slices. The
    noise (if any) is seeded, so the pairs are the same at every validation.
    """
    h = np.asarray(holdout, dtype=np.float32)
    out = []
    for i, stack in enumerate((h, np.swapaxes(h, 1, 2))):
        n, a, b = stack.shape
        if a < 4 or b < 1:
            continue
        keep = _spread(n, max(1, max_pixels // max(1, a * b)))
        target = np.ascontiguousarray(stack[keep])
        out.append((target, deg.apply_numpy(target, rng=seed + i)))
    if not out:
        raise ValueError(f"held-out region {h.shape} is too small for isotropic validation")
    return out


def validation_split(train_volume: np.ndarray, holdout_volume: np.ndarray, threshold: float, *,
                     min_share: float = 0.01, every: int = 4) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Training planes and validation box; falls back to held-out *planes* when the held-out box is empty.

    The held-out box of the training FOV is used as it is when at least ``min_share``
    of its voxels are above the foreground ``threshold``. Otherwise (e.g. a single
    object in the middle of the field, both ends dark) every ``every``-th lateral
    plane of the training FOV is held out of the restorer's training and validates
    instead, so that model selection measures restoration of structure, not of
    background; a stack of fewer than ``2·every`` planes holds out every
    ``max(2, nz // 2)``-th (4 planes: 1 and 3). (The degradation is still estimated on
    the whole training FOV: its axial profile, and the learned degradation's axial
    slices, need the planes in their z order.)

    Returns
    -------
    tuple
        ``(training planes (N, Y, X), validation box (M, Y', X'), note or None)``.
    """
    share = float(np.mean(holdout_volume > threshold)) if holdout_volume.size else 0.0
    nz = train_volume.shape[0]
    if share >= min_share or nz < 3:
        return train_volume, holdout_volume, None
    every = max(2, min(every, nz // 2))  # a thin stack (4-7 planes) still validates on structure
    val = np.arange(every // 2, nz, every)
    keep = np.setdiff1d(np.arange(nz), val)
    note = (f"held-out box has {100 * share:.2f}% foreground (< {100 * min_share:g}%): validating on lateral planes "
            f"{val.tolist()} of the training FOV, which the restorer does not train on")
    return np.ascontiguousarray(train_volume[keep]), np.ascontiguousarray(train_volume[val]), note


class SliceFitter:
    """Run a 2-D model on a batch of slices ``(n, H, W)``, halving the work on out-of-memory.

    A batch that does not fit is cut in two; a single slice that does not fit is cut in two
    along its longer axis, each half with the model's halo (its receptive radius) beyond
    the cut, so the result is unchanged (as :class:`selfres.infer._Fitter` does for 3-D
    tiles). The size that failed is remembered: later batches that large are split first.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, *, amp: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.amp = amp
        self.halo = tuple(int(h) for h in getattr(model, "halo", (0, 0)))[-2:]
        self.limit = math.inf  # pixels per forward call known to fail (exclusive bound)
        self.splits = 0
        self.cause = ""  # the last out-of-memory error's words, where not plainly out of memory

    def _forward(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None].to(self.device)
        with heap_only():  # a pass's activations reused by the next, not faulted in afresh
            return self.model(t)[:, 0].float().cpu().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size < self.limit:
            try:
                return self._forward(x)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not models.is_out_of_memory(exc):
                    raise
                self.cause = models.memory_error_cause(exc)
            self._out_of_memory(x.size)  # out of the except: the failed pass's tensors are freed
        self.splits += 1
        if x.shape[0] > 1:
            half = x.shape[0] // 2
            return np.concatenate([self(x[:half]), self(x[half:])])
        axis = 1 if x.shape[1] >= x.shape[2] else 2
        n, h = x.shape[axis], self.halo[axis - 1]
        mid = n // 2
        if mid + h >= n or mid - h <= 0:
            raise MemoryError(
                f"one slice of {list(x.shape[1:])} pixels does not fit in {self.device} memory even after "
                f"halving (the model reads {h} pixels beyond each cut). Lower infer.tile_size, or use a "
                f"machine with more memory.{self.cause}")
        low = self(np.take(x, range(0, mid + h), axis=axis))
        high = self(np.take(x, range(mid - h, n), axis=axis))
        return np.concatenate([np.take(low, range(0, mid), axis=axis),
                               np.take(high, range(h, high.shape[axis]), axis=axis)], axis=axis)

    def _out_of_memory(self, size: int) -> None:
        self.limit = min(self.limit, size)
        log.warning("out of memory on %s with %d pixels per pass; halving the work and retrying", self.device, size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def predict_slices(model: nn.Module, slices: np.ndarray, *, device: torch.device | str = "cpu",
                   batch: int = 8, amp: bool = False, fitter: SliceFitter | None = None) -> np.ndarray:
    """Apply a 2-D model to a stack ``(N, H, W)`` in batches (inference mode).

    ``amp``: mixed precision (:func:`selfres.models.autocast_context`, CPU included).
    ``fitter``: a :class:`SliceFitter` of this model kept across calls, so that a size
    found not to fit in memory is split at once the next time (one is made otherwise).
    The slices' ends meet the convolutions' zero padding, as the training patches' edges do:
    mirroring them instead was measured and not kept (docs/isotropic.md, "Mirrored slice ends").
    """
    device = torch.device(device)
    fitter = fitter if fitter is not None else SliceFitter(model, device, amp=amp)
    out = np.empty(slices.shape, dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), models.autocast_context(device, enabled=amp, cpu=True):
            for s in range(0, slices.shape[0], batch):
                out[s : s + batch] = fitter(slices[s : s + batch])
    finally:
        model.train(was_training)
    return out


def _psnr_stack(pairs, preds, data_range) -> float:
    err = sum(float(np.sum((t.astype(np.float64) - p) ** 2)) for (t, _), p in zip(pairs, preds))
    n = sum(t.size for t, _ in pairs)
    return float("inf") if err == 0 else 10 * math.log10(data_range**2 / (err / n))


def compare_stacks(pairs, preds, data_range: float) -> dict:
    """PSNR over all pixels and mean per-slice 2-D SSIM, model vs input (interpolation)."""
    ssim_m, ssim_i = [], []
    for (t, low), p in zip(pairs, preds):
        for k in range(t.shape[0]):
            if min(t[k].shape) >= 3:
                c = metrics.compare(t[k], p[k], low[k], data_range=data_range)
                ssim_m.append(c["ssim_model"])
                ssim_i.append(c["ssim_interp"])
    return {
        "psnr_model": _psnr_stack(pairs, preds, data_range),
        "psnr_interp": _psnr_stack(pairs, [low for _, low in pairs], data_range),
        "ssim_model": float(np.mean(ssim_m)) if ssim_m else float("nan"),
        "ssim_interp": float(np.mean(ssim_i)) if ssim_i else float("nan"),
    }


#: Output planes at either end of z whose restoration is blended with z-cubic, per unit of the axial
#: factor (the first two z samples' reach): there the network has its input on one side only
END_PLANES_PER_FACTOR = 2


def end_weights(pairs, preds, factor: float) -> list[float]:
    """Per row ``k`` from an end of the degraded axis (``k < ceil(2 f)``), the weight ``w`` of the
    network's output in ``w · model + (1 − w) · input`` that is closest to the truth on the held-out
    slices (least squares, within 0 and 1), rows counted from the start of each slice, whose first
    z sample lies where a stack's first one does.

    The restorer learns on patches that end on every side, but its loss is mostly their interior:
    at the ends of an axial slice (the stack's first and last planes) it sharpened as in the middle
    and lost to z-cubic there (a review: 4000 puncta, the first and last 8 of 96 planes −0.7 and
    −1.1 dB against z-cubic, +5 dB between them; planes 1.1–1.15 × as bright as the truth; the
    held-out check, scoring whole slices, did not see it). 1 where the network wins outright.
    """
    rows = min(int(math.ceil(END_PLANES_PER_FACTOR * float(factor))),
               min(t.shape[-2] for t, _ in pairs) // 2)
    if rows < 1:
        return []
    num, den = np.zeros(rows), np.zeros(rows)
    for (target, low), pred in zip(pairs, preds):
        d = (pred[..., :rows, :] - low[..., :rows, :]).astype(np.float64)
        e = (target[..., :rows, :] - low[..., :rows, :]).astype(np.float64)
        num += np.einsum("nkw,nkw->k", d, e)
        den += np.einsum("nkw,nkw->k", d, d)
    w = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return [round(float(v), 3) for v in np.clip(w, 0.0, 1.0)]


def blend_ends(restored: np.ndarray, interp: np.ndarray, weights: Sequence[float] | None, *,
               axis: int) -> np.ndarray:
    """``restored`` with its first and last ``len(weights)`` rows along ``axis`` blended, in
    place, with ``interp`` by :func:`end_weights` (row ``k`` from either end takes weight
    ``weights[k]``); returned. Only those rows are touched (inference calls it on every tile)."""
    if not weights:
        return restored
    out, ref = np.moveaxis(restored, axis, 0), np.moveaxis(interp, axis, 0)  # views
    n = out.shape[0]
    for k, w in enumerate(weights[: n // 2]):
        if w == 1.0:  # the network's own rows: nothing to blend
            continue
        for row in (k, n - 1 - k):
            out[row] = w * out[row] + (1.0 - w) * ref[row]
    return restored


# -------------------------------------------------------------- learned (CycleGAN)
class PatchDiscriminator(nn.Module):
    """Small PatchGAN: strided convs → a map of real/fake scores (LSGAN)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.InstanceNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def generator_spec(iso: IsotropicSettings) -> models.ModelSpec:
    """Spec of the CycleGAN generators (residual iso2d nets starting as the identity)."""
    return models.ModelSpec(arch="iso2d", width=iso.gan_width, depth=iso.gan_depth)


def _charb(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + 1e-6).mean()


@dataclass
class DegraderResult:
    """Outcome of :func:`train_degrader`."""

    generator: nn.Module
    restorer_state: dict
    steps_done: int
    seconds: float
    log_rows: list[dict] = field(default_factory=list)


@models.keeps_callers_random_state
def train_degrader(
    lateral: np.ndarray,
    axial_resliced: np.ndarray,
    restorer: nn.Module,
    deg: AxialDegradation,
    *,
    iso: IsotropicSettings,
    patch: tuple[int, int],
    learning_rate: float = 2e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> DegraderResult:
    """Self-Net's unsupervised stage: CycleGAN lateral-degraded ↔ real axial, with feedback.

    Each step trains both generators (LSGAN + cycle + feedback losses), the restorer
    on the lateral→axial generator's output, and both discriminators.

    Parameters
    ----------
    lateral
        Training lateral slices ``(N, H, W)`` (the high-resolution examples).
    axial_resliced
        The training box resliced to the isotropic grid ``(NZ, Y, X)`` (real axial data).
    restorer
        The 2-D restoration net (trained jointly; its state after the stage is returned).
    deg
        Analytic degradation making the generator's input (``xy_lr``).
    """
    device = torch.device(device)
    torch.manual_seed(seed + 7)
    gen = torch.Generator().manual_seed(seed + 7)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 8)
    h = min(patch[0], axial_resliced.shape[0])
    pw = min(patch[1], lateral.shape[1], lateral.shape[2], axial_resliced.shape[1], axial_resliced.shape[2])
    lat = SlicePatchSampler(lateral, (h, pw), threshold=otsu_threshold(lateral),
                            foreground_fraction=iso.foreground_fraction, augment=True, generator=gen)
    ax = AxialPatchSampler(axial_resliced, (h, pw), factor=deg.factor, generator=gen)
    g_ax = models.build_model(generator_spec(iso)).to(device)  # lateral-degraded -> axial-like
    g_lat = models.build_model(generator_spec(iso)).to(device)  # axial -> lateral-degraded-like
    d_ax = PatchDiscriminator(iso.gan_width).to(device)
    d_lat = PatchDiscriminator(iso.gan_width).to(device)
    restorer = restorer.to(device).train()
    betas = (0.5, 0.999)
    opt_g = torch.optim.Adam(list(g_ax.parameters()) + list(g_lat.parameters()), lr=learning_rate, betas=betas)
    opt_d = torch.optim.Adam(list(d_ax.parameters()) + list(d_lat.parameters()), lr=learning_rate, betas=betas)
    opt_r = torch.optim.Adam(restorer.parameters(), lr=learning_rate, betas=betas)
    batch = max(2, iso.batch_size // 2)
    rows: list[dict] = []
    t0 = time.monotonic()
    step = 0
    acc: dict[str, float] = {}
    every = max(1, min(50, iso.gan_steps // 10))
    while step < iso.gan_steps:
        hr = lat.sample(batch).to(device)
        with torch.no_grad():
            a = deg.apply_torch(hr, generator=noise_gen)
        b = ax.sample(batch).to(device)
        # generators
        fake_b = g_ax(a)
        fake_a = g_lat(b)
        pred_fb, pred_fa = d_ax(fake_b), d_lat(fake_a)
        l_gan = F.mse_loss(pred_fb, torch.ones_like(pred_fb)) + F.mse_loss(pred_fa, torch.ones_like(pred_fa))
        l_cyc = F.l1_loss(g_lat(fake_b), a) + F.l1_loss(g_ax(fake_a), b)
        l_fb = _charb(restorer(fake_b), hr)
        loss_g = iso.gan_weight * l_gan + iso.cycle_weight * l_cyc + iso.feedback_weight * l_fb
        opt_g.zero_grad(set_to_none=True)
        opt_r.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # restorer on the (detached) generator output
        opt_r.zero_grad(set_to_none=True)
        l_r = _charb(restorer(fake_b.detach()), hr)
        l_r.backward()
        opt_r.step()
        # discriminators
        def d_loss(d, real, fake):
            pr, pf = d(real), d(fake.detach())
            return 0.5 * (F.mse_loss(pr, torch.ones_like(pr)) + F.mse_loss(pf, torch.zeros_like(pf)))

        l_d = d_loss(d_ax, b, fake_b) + d_loss(d_lat, a, fake_a)
        opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        opt_d.step()
        step += 1
        for k, v in (("gan", l_gan), ("cycle", l_cyc), ("feedback", l_fb), ("restorer", l_r), ("disc", l_d)):
            acc[k] = acc.get(k, 0.0) + float(v.detach())
        el = time.monotonic() - t0
        over = el > iso.gan_max_minutes * 60
        if step % every == 0 or step == iso.gan_steps or over:
            n = step % every or every
            rows.append({"step": step, **{k: v / n for k, v in acc.items()}, "seconds": round(el, 2)})
            acc = {}
            log.info("learned degradation step %d/%d: gan %.4f cycle %.4f feedback %.4f disc %.4f (%.0f s)",
                     step, iso.gan_steps, rows[-1]["gan"], rows[-1]["cycle"], rows[-1]["feedback"],
                     rows[-1]["disc"], el)
            if over:
                log.info("learned stage time budget of %g min reached", iso.gan_max_minutes)
                break
    g_ax.eval()
    r_state = {k: v.detach().clone() for k, v in restorer.state_dict().items()}
    return DegraderResult(generator=g_ax, restorer_state=r_state,
                          steps_done=step, seconds=time.monotonic() - t0, log_rows=rows)


def learned_holdout_pairs(pairs, degradation: "LearnedDegradation") -> list:
    """Held-out ``(true slice, input)`` pairs with each input made by the learned degradation,
    slice ``i`` with the noise seed ``LEARNED_VALIDATION_SEED + i``: in training and when
    :func:`self_validation` judges the model again (another sample's slices, ``model_from``)."""
    return [(t, degradation.apply_numpy(t, rng=LEARNED_VALIDATION_SEED + i)) for i, (t, _) in enumerate(pairs)]


class LearnedDegradation:
    """Analytic degradation followed by the learned lateral→axial generator (frozen)."""

    def __init__(self, analytic: AxialDegradation, generator: nn.Module):
        self.analytic = analytic
        self.generator = generator.eval()

    def apply_torch(self, batch: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(self.analytic.apply_torch(batch, generator=generator))

    def apply_numpy(self, slices: np.ndarray, *, rng: int = 0) -> np.ndarray:
        low = self.analytic.apply_numpy(slices, rng=rng)
        dev = next(self.generator.parameters()).device
        return predict_slices(self.generator, low, device=dev)


def guard_flags(validation: dict, margin_db: float) -> list[str]:
    """``["model_worse_than_interpolation"]`` unless the model beats z-cubic on the held-out
    slices by ``margin_db`` (``train.guard_margin_db``; enhance asks a trained network the
    same); in training and when a sample adopts another's model."""
    if validation["psnr_model"] > validation["psnr_interp"] + float(margin_db):
        return []
    return ["model_worse_than_interpolation"]


# ----------------------------------------------------------------------- training
@dataclass
class IsoTrainResult:
    """Outcome of :func:`train_isotropic`."""

    model: nn.Module
    spec: models.ModelSpec
    best_step: int
    steps_done: int
    seconds: float
    stop_reason: str
    validation: dict
    degradation: dict
    flags: list[str] = field(default_factory=list)
    log_rows: list[dict] = field(default_factory=list)
    degrader: nn.Module | None = None
    degrader_log: list[dict] = field(default_factory=list)
    resumed_seconds: float = 0.0  # as :attr:`selfres.train.TrainResult.resumed_seconds`
    end_weights: list[float] = field(default_factory=list)  # :func:`end_weights`
    patch: tuple[int, int] | None = None  # the lateral training patch, as clipped to the training FOV


def _key(settings: Settings, factor: float, data: str, deg: AxialDegradation) -> str:
    blob = json.dumps({"t": to_dict(settings.train), "i": to_dict(settings.isotropic), "f": factor,
                       "data": data, "d": deg.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_degradation(train_volume: np.ndarray, factor: float, settings: Settings,
                        voxel_size: Sequence[float]) -> tuple[AxialDegradation, dict]:
    """The analytic degradation of a sample: σ (settings → optics/PSF → data) and noise top-up.

    The noise top-up (``isotropic.noise_match``) follows the acquisition's noise level
    against intensity (:func:`selfres.noise.noise_level_function` on the training FOV, as
    ``enhance`` mode estimates it): each degraded lateral sample ``y`` gets Gaussian noise of
    variance ``(slope·y + floor)·(1 − Σw²)``, the share its blur and sampling weights averaged
    away. The axial σ's spectrum match uses the level at the volume's mean intensity.
    """
    from .noise import NoiseLevel, noise_level_function

    iso = settings.isotropic
    if settings.train.degradation.method == "block":  # enhance's binned-camera model: nothing here reads it
        log.warning("isotropic: train.degradation.method block is not used in isotropic mode (its lateral slices are "
                    "degraded by the axial blur and point sampling at the z steps); the axial σ is taken from "
                    "isotropic.axial_sigma_px, train.psf_sigma_um, or estimated from the data")
    if iso.axial_sigma_px is not None:
        sigma, source = float(iso.axial_sigma_px), "settings"
    else:
        found = sigma_and_source(settings.train, voxel_size)
        sigma, source = found if found is not None else (None, "estimated")
    level = noise_level_function(train_volume) if iso.noise_match else NoiseLevel(0.0, 0.0)
    if iso.noise_match and level.bins == 0:
        log.warning("isotropic noise match: the acquisition's noise could not be measured on the training FOV %s "
                    "(too few voxels in planes of at least 8 x 8, or none finite); degraded lateral slices are not "
                    "topped up", tuple(np.shape(train_volume)))
    noise = noise_sigma_at_mean(level, train_volume)
    info: dict[str, Any] = {"sigma_source": source, "noise_sigma_mean": noise, "noise_level": level.as_list(),
                            "noise_bins": level.bins}
    if sigma is None:
        sigma, est = estimate_axial_sigma(train_volume, factor, noise_sigma=noise, seed=settings.train.seed)
        info["estimate"] = est
        if est.get("estimated") is False:  # no σ could be read off the data: say so, not "estimated"
            info["sigma_source"] = "unestimated"
        if est.get("estimated") is False:
            log.warning("isotropic: the extra axial blur could not be estimated from the training FOV %s (%s); "
                        "training assumes none (σ 0), so the output undoes the z sampling but not the axial blur. "
                        "Give it: isotropic.axial_sigma_px (lateral pixels), or train.degradation with the optics "
                        "or a measured PSF", tuple(np.shape(train_volume)), est["reason"])
    deg = AxialDegradation(factor=float(factor), sigma_px=float(sigma),
                           noise_variance=tuple(topup_variance(level, factor, sigma)))
    info.update(deg.to_dict())
    return deg, info


def noise_sigma_at_mean(level, volume: np.ndarray) -> float:
    """The noise σ at the volume's mean intensity (0 where the level could not be measured)."""
    return float(np.sqrt(level.variance(float(np.mean(volume))))) if level.bins else 0.0


def topup_variance(level, factor: float, sigma_px: float) -> list[float]:
    """The noise variance (against intensity) to add to degraded lateral samples: the share of
    the acquisition's noise ``level`` that degrading (σ, sampling by ``factor``) averaged away."""
    return level.scaled(noise_topup(factor, sigma_px, 1.0) ** 2).as_list()


@models.keeps_callers_random_state
def train_isotropic(
    train_volume: np.ndarray,
    holdout_volume: np.ndarray,
    *,
    factor: float,
    settings: Settings,
    voxel_size: Sequence[float],
    work_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    stop_after_steps: int | None = None,
) -> IsoTrainResult:
    """Train the isotropic restorer of one sample (seeded, resumable, validated).

    Parameters
    ----------
    train_volume, holdout_volume
        Normalised training FOV and held-out box (ZYX); their lateral slices are the
        training and validation examples.
    factor
        Anisotropy factor ``f``.
    settings
        All settings (``train`` for the net and loop, ``isotropic`` for the rest).
    voxel_size
        ``(z, y, x)`` µm.
    work_dir
        Where the resumable checkpoint lives (None: no checkpoint).
    stop_after_steps
        Stop (as if killed) after this many restorer steps — for resumption tests.
    """
    from .train import (Checkpointing, Selection, data_digest, load_checkpoint, loss_fn, resume_from_checkpoint,
                        run_steps, save_checkpoint, stopped_run)

    iso = settings.isotropic
    # the 2-D net has its own step limit (isotropic.steps); the rest of the loop is train's
    s = dataclasses.replace(settings.train, steps=iso.steps)
    device = torch.device(device)
    torch.manual_seed(s.seed)
    train_volume = np.asarray(train_volume, dtype=np.float32)
    deg, deg_info = resolve_degradation(train_volume, factor, settings, voxel_size)
    threshold = otsu_threshold(train_volume)
    train_planes, val_volume, split_note = validation_split(train_volume, np.asarray(holdout_volume, np.float32),
                                                            threshold)
    if split_note:
        deg_info["validation"] = split_note
        log.info("%s", split_note)
    spec = models.ModelSpec(arch="iso2d", width=iso.width, depth=iso.depth)
    model = models.build_model(spec).to(device)
    m = min(iso.patch_size, train_volume.shape[1], train_volume.shape[2])
    patch = (m, m)
    ckpt_path = Path(work_dir) / "checkpoint.pt" if work_dir else None
    # (hashing the data only where there is a checkpoint to match)
    key = _key(settings, factor, data_digest(train_volume, holdout_volume), deg) if ckpt_path else ""
    degrader = None
    degrader_log: list[dict] = []
    degradation: Any = deg
    if iso.degradation == "learned":
        gpath = Path(work_dir) / "degrader.pt" if work_dir else None
        g_state = load_checkpoint(gpath) if gpath is not None else None
        degrader = models.build_model(generator_spec(iso)).to(device)
        if g_state is not None and g_state.get("key") == key:
            degrader.load_state_dict(g_state["generator"])
            model.load_state_dict(g_state["restorer"])
            degrader_log = json.loads(g_state["rows"])
            log.info("learned degradation restored from %s", gpath)
        else:
            res = train_degrader(train_planes, reslice(train_volume, factor), model, deg, iso=iso, patch=patch,
                                 learning_rate=2e-4, seed=s.seed, device=device)
            degrader.load_state_dict(res.generator.state_dict())
            model.load_state_dict(res.restorer_state)
            degrader_log = res.log_rows
            if gpath is not None:
                save_checkpoint(gpath, {"key": key, "generator": degrader.state_dict(), "restorer": model.state_dict(),
                                        "rows": json.dumps(degrader_log)})
        degrader.eval()
        for p in degrader.parameters():
            p.requires_grad_(False)
        degradation = LearnedDegradation(deg, degrader)

    gen = torch.Generator().manual_seed(s.seed)
    noise_gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    sampler = SlicePatchSampler(train_planes, patch, threshold=threshold, foreground_fraction=iso.foreground_fraction,
                                augment=s.augment, generator=gen)
    pairs = holdout_pairs(val_volume, deg)
    if degrader is not None:  # validation inputs made by the learned degradation (seeded noise)
        pairs = learned_holdout_pairs(pairs, degradation)
    data_range = float(max(max(float(t.max()) for t, _ in pairs) - min(float(t.min()) for t, _ in pairs), 1e-6))
    val_interp = _psnr_stack(pairs, [low for _, low in pairs], data_range)

    def validate() -> float:
        return _psnr_stack(pairs, [predict_slices(model, low, device=device, batch=VALIDATION_BATCH)
                                   for _, low in pairs], data_range)

    # the output conv starts at zero (the net starts as its input, i.e. as z-cubic); it learns at a tenth of the
    # rate so that Adam's sign-like first steps do not throw the output far from that starting point
    tail = [p for n, p in model.named_parameters() if n.startswith("tail.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("tail.")]
    optimiser = torch.optim.Adam([{"params": body, "scale": 1.0}, {"params": tail, "scale": TAIL_LR_SCALE}],
                                 lr=s.learning_rate)
    step, elapsed_before = 0, 0.0
    start_psnr = validate()
    sel = Selection.start(model, psnr=start_psnr, score=start_psnr, patience=s.patience)
    state = resume_from_checkpoint(ckpt_path, key=key, model=model, optimiser=optimiser, generator=gen,
                                   noise_generator=noise_gen)
    if state is not None:
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        sel.load_state_dict(state)
        log.info("resumed from checkpoint at step %d (best %.2f dB at step %d)", step, sel.best_psnr, sel.best_step)
    log.info("isotropic training: f %.3f, degradation %s (σ %.2f px, noise top-up variance %s·y%+.3g, %s), "
             "%d parameters, "
             "patch %s, %.0f%% of placements above the Otsu threshold %.3f; held-out input %.2f dB, start %.2f dB",
             factor, iso.degradation, deg.sigma_px, f"{deg.noise_variance[0]:.3g}", deg.noise_variance[1],
             deg_info["sigma_source"],
             models.count_parameters(model), patch, 100 * sampler.fraction_kept, threshold, val_interp, sel.best_psnr)
    def batch_loss() -> torch.Tensor:
        target = sampler.sample(iso.batch_size).to(device)
        with torch.no_grad():
            low = degradation.apply_torch(target, generator=noise_gen)
        pred = model(low)
        return loss_fn(iso.loss, pred[:, :, None], target[:, :, None], fft_weight=iso.fft_weight)

    def scored() -> tuple[float, float, dict]:
        val = validate()
        return val, val, {"val_psnr_interp": val_interp}

    def describe(row: dict, eta: float) -> None:
        log.info("step %d/%d loss %.5f held-out %.2f dB (input %.2f, best %.2f @ %d) lr %.2e elapsed %.0fs ETA %.0fs",
                 row["step"], s.steps, row["loss"], row["val_psnr_model"], val_interp, sel.best_psnr, sel.best_step,
                 row["lr"], row["seconds"], eta)

    step, stop_reason, flags, t0 = run_steps(
        model, optimiser, sel, s, step=step, elapsed_before=elapsed_before, batch_loss=batch_loss, validate=scored,
        describe=describe, checkpoint=Checkpointing(ckpt_path, key, gen, noise_gen), stop_after_steps=stop_after_steps,
        stopped=stopped_run(state))
    model.load_state_dict(sel.best_state)
    model.eval()
    preds = [predict_slices(model, low, device=device, batch=VALIDATION_BATCH) for _, low in pairs]
    ends = end_weights(pairs, preds, factor)  # scored as inference delivers it: the ends blended
    validation = compare_stacks(pairs, [blend_ends(p, low, ends, axis=-2) for p, (_, low) in zip(preds, pairs)],
                                data_range)
    log.info("the first and last %d planes blend the network with z-cubic: the network's share %s from the end plane "
             "inwards (1 = the network alone; measured on held-out rows from an end)", len(ends),
             ", ".join(f"{w:.2f}" for w in ends))
    flags += guard_flags(validation, s.guard_margin_db)
    if deg_info.get("estimate", {}).get("estimated") is False:
        flags.append("axial_sigma_unestimated")
    return IsoTrainResult(
        model=model, spec=spec, best_step=sel.best_step, steps_done=step, seconds=time.monotonic() - t0,
        stop_reason=stop_reason, validation=validation, degradation=deg_info, flags=flags, log_rows=sel.rows,
        degrader=degrader, degrader_log=degrader_log, resumed_seconds=elapsed_before, end_weights=ends,
        patch=patch,
    )


# ---------------------------------------------------------------------- inference
def _fuse(a: np.ndarray, b: np.ndarray, fusion: str) -> np.ndarray:
    mean = (0.5 * (a + b)).astype(np.float32)
    if fusion == "geometric":
        # where either view is at or below 0 (normalised background, ~1 % of it below the low
        # percentile), the mean: clipping both to 0 lifted or flattened the background
        both = (a > 0) & (b > 0)
        return np.where(both, np.sqrt(np.where(both, a * b, 0.0)), mean).astype(np.float32)
    return mean


def isotropic_tile_grid(shape_yx: Sequence[int], tile: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Core tiles ``(y0, y1, x0, x1)`` of the y/x plane, row-major; each spans all of z."""
    ny, nx = (int(n) for n in shape_yx)
    ty, tx = (max(1, int(t)) for t in tile)
    return [(y0, min(y0 + ty, ny), x0, min(x0 + tx, nx)) for y0 in range(0, ny, ty) for x0 in range(0, nx, tx)]


def restore_isotropic(
    model: nn.Module | None,
    source,
    *,
    factor: float,
    tile: Sequence[int] = (256, 256),
    batch: int = 8,
    fusion: str = "mean",
    device: torch.device | str = "cpu",
    dest=None,
    transform=None,
    progress: bool = True,
    amp: bool = False,
    tiles: Sequence[int] | None = None,
    on_tile_written=None,
    defects: np.ndarray | None = None,
    end_weights: Sequence[float] | None = None,
) -> np.ndarray | None:
    """Restore a whole normalised volume onto the isotropic grid, tile by tile along y/x.

    Each tile (plus a halo of the model's receptive radius, clipped at the volume
    border) is resliced with z-cubic, every XZ and every YZ slice through it is
    restored (batched, inference mode), the two results are fused and the core is
    written. The result equals a single pass over the whole volume.

    Parameters
    ----------
    model
        2-D restorer, or None for plain z-cubic reslicing.
    source
        ``(nz, ny, nx)`` array-like (numpy, zarr) of normalised intensities.
    tile
        Core tile size ``(y, x)``.
    dest
        Array-like ``(round(nz·f), ny, nx)`` to write into; None returns a new array.
    transform
        Applied to each output block before writing (e.g. undo normalisation).
    amp
        Mixed precision for the network (bf16 on CUDA and on CPUs that compute it
        natively); the reslicing and fusion stay float32.
    tiles, on_tile_written
        Only these indices of :func:`isotropic_tile_grid` (a block of a scattered or
        resumed run); ``on_tile_written(i, block)`` is called once tile ``i`` is written.
    defects
        Lateral positions ``(ny, nx)`` of hot and dead sensor pixels
        (:func:`selfres.noise.sensor_defect_positions`): the network restores the volume with
        them replaced by their neighbours' median (it was trained so, and rang along z around
        each line it had never seen: −18 dB at them), and their own columns are the z-cubic
        reslice of the acquisition, as acquired.
    end_weights
        The model's :func:`end_weights` (``model.json``): the first and last planes blend the
        network's output with z-cubic by them (:func:`blend_ends`); None or empty: none.
    """
    device = torch.device(device)
    nz, ny, nx = (int(n) for n in source.shape)
    out_shape = isotropic_shape(source.shape, factor)
    out = dest if dest is not None else np.empty(out_shape, dtype=np.float32)
    halo = int(getattr(model, "halo", (0, 0))[-1]) if model is not None else 0
    ty, tx = (max(1, int(t)) for t in tile)
    if model is not None:  # a prepared copy: the caller's model (maybe still training) is left as it is
        from .infer import prepare_model

        model = prepare_model(model, device, channels_last_2d=device.type == "cpu")
        fitter = SliceFitter(model, device, amp=amp)
    grid = isotropic_tile_grid((ny, nx), (ty, tx))
    todo = list(range(len(grid))) if tiles is None else list(tiles)
    from .infer import Progress

    ticker = Progress(len(todo), what="isotropic inference: tiles") if progress else None
    for i in todo:
        y0, y1, x0, x1 = grid[i]
        ya, yb, xa, xb = max(0, y0 - halo), min(ny, y1 + halo), max(0, x0 - halo), min(nx, x1 + halo)
        acquired = np.asarray(source[:, ya:yb, xa:xb], dtype=np.float32)
        bad = None if defects is None or model is None else defects[ya:yb, xa:xb]
        if bad is not None and bad.any():
            from .noise import repair_sensor_defects

            block = reslice(repair_sensor_defects(acquired, bad), factor)
        else:
            bad, block = None, reslice(acquired, factor)
        core = block[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        if model is None:
            res = core
        else:
            xz = np.ascontiguousarray(np.transpose(block[:, y0 - ya : y1 - ya, :], (1, 0, 2)))  # (y, Z, x)
            yz = np.ascontiguousarray(np.transpose(block[:, :, x0 - xa : x1 - xa], (2, 0, 1)))  # (x, Z, y)
            r_xz = predict_slices(model, xz, device=device, batch=batch, amp=amp, fitter=fitter)[:, :, x0 - xa : x1 - xa]
            r_yz = predict_slices(model, yz, device=device, batch=batch, amp=amp, fitter=fitter)[:, :, y0 - ya : y1 - ya]
            res = _fuse(np.transpose(r_xz, (1, 0, 2)), np.transpose(r_yz, (1, 2, 0)), fusion)
            res = blend_ends(res, core, end_weights, axis=0)
            if bad is not None:  # the defects' own columns as acquired, resliced
                own = bad[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
                if own.any():
                    columns = reslice(acquired[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa][:, own][:, :, None], factor)
                    res[:, own] = columns[:, :, 0]
        block = transform(res) if transform is not None else res
        out[:, y0:y1, x0:x1] = block
        if on_tile_written is not None:
            on_tile_written(i, block)
        if ticker is not None:  # at most every 10 s, and at the last tile: done, %, elapsed, ETA
            ticker.update()
    return None if dest is not None else out


# ------------------------------------------------------------------ pipeline hooks
def stage_train(vol: io.Volume, fov: TrainingFov, model_dir: str | Path, *,
                sample: str, settings: Settings, device) -> dict:
    """Train the isotropic model of one sample and write ``model/`` atomically."""
    path = str(vol.attrs.get("source", "normalized.ome.zarr"))
    if vol.attrs.get("voxel_size_known") is False or vol.voxel_size is None:
        isotropic_factor(None, path=path, sample=sample)
    factor = isotropic_factor(vol.voxel_size, path=path, sample=sample)
    data = vol.data  # lazy or not: only the training FOV and the held-out region are read
    if data.shape[0] < MIN_ISOTROPIC_SLICES:  # refused at crop already; a second line of defence
        raise InputError(path, f"isotropic mode needs at least {MIN_ISOTROPIC_SLICES} z slices; the volume has "
                         f"{data.shape[0]}", sample=sample)
    model_dir = Path(model_dir)
    work = model_dir.with_name(model_dir.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    train_box, held_box, defects = training_boxes(data, fov)
    if defects:
        log.info("sample %s: %d hot or dead sensor pixels (the same in every plane) replaced by their neighbours' "
                 "median in the training and held-out slices (and in the network's input at inference)", sample,
                 defects)
    res = train_isotropic(train_box, held_box, factor=factor, settings=settings, voxel_size=vol.voxel_size,
                          work_dir=work, device=device)
    from .pipeline import trained_on, training_input_figures

    meta = {
        "sample": sample,
        **trained_on(vol),
        "training_input": training_input_figures(train_box),  # what a sample adopting it learned from
        "patch": list(res.patch) if res.patch else None,  # as trained (clipped to the training FOV)
        "mode": "isotropic",
        "factor": float(factor),
        "voxel_size_in": list(vol.voxel_size),
        "self_validation": res.validation,
        "best_step": res.best_step,
        "steps_done": res.steps_done,
        "stop_reason": res.stop_reason,
        "flags": res.flags,
        "sensor_defects_repaired": defects,
        "train_seconds": time.monotonic() - t0 + res.resumed_seconds,  # with the interrupted runs' time
        "fit_seconds": res.seconds,  # the training loop alone, as enhance's (pipeline.stage_train)
        "settings": isotropic_train_values(to_dict(settings.train)),  # the train values this mode reads
        # the training values: fusion and infer_batch belong to each infer job (iso_settings)
        "isotropic": {k: v for k, v in to_dict(settings.isotropic).items() if k not in ISOTROPIC_INFERENCE_KEYS},
        "degradation": res.degradation,
        "end_weights": res.end_weights,
        "tail_lr_scale": TAIL_LR_SCALE,  # the output layer's learning rate, × train.learning_rate
        "device": str(device),
        "ran_on": models.ran_on(device),
    }
    with io.atomic_output(model_dir) as tmp:  # a kill or an error leaves the old model/ or nothing
        if res.degrader is not None:
            from safetensors.torch import save_file

            tmp.mkdir(parents=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in res.degrader.state_dict().items()},
                      str(tmp / DEGRADER_FILE))
            permissions_as_umask(tmp / DEGRADER_FILE)
            meta["degrader"] = {"file": DEGRADER_FILE, "spec": generator_spec(settings.isotropic).to_dict(),
                                "sha256": io.file_checksum(tmp / DEGRADER_FILE),
                                "steps": res.degrader_log[-1]["step"] if res.degrader_log else 0,
                                "log": res.degrader_log}
        models.save_model(tmp, res.model, res.spec, metadata=meta)
        import pandas as pd

        pd.DataFrame(res.log_rows, columns=_LOG_COLUMNS).to_csv(tmp / "training_log.tsv", sep="\t", index=False)
    shutil.rmtree(work, ignore_errors=True)
    v = res.validation
    log.info("isotropic model saved to %s: held-out lateral %.2f dB vs input (z-cubic-like) %.2f dB; SSIM %.3f vs "
             "%.3f (best step %d, training ended %s, %.0f s)", model_dir, v["psnr_model"], v["psnr_interp"],
             v["ssim_model"], v["ssim_interp"], res.best_step, stop_text(res.stop_reason), meta["train_seconds"])
    return meta


def stage_infer(vol: io.Volume, params: normalise.NormParams, source, model: nn.Module, meta: dict,
                output: str | Path, *, sample: str, settings: InferSettings, device, fingerprint: dict | None = None,
                step: str = "all", block: int = 0, iso_settings: IsotropicSettings | None = None,
                compression: float = 1.0) -> dict:
    """Write ``restored.ome.zarr`` on the isotropic grid (raw units).

    ``vol``/``params`` are the normalised input as :func:`selfres.pipeline.read_normalized`
    gives them and ``source`` its level-0 array (opened once by the caller).
    Resumable and scatterable like enhance (:func:`selfres.infer.scattered_store`): tiles
    are y/x columns spanning all of z (``infer.tile_size`` y, x), each owning whole
    output chunks; ``step``/``block`` split the work over ``settings.blocks`` jobs.
    ``iso_settings`` gives ``fusion`` and ``infer_batch`` (inference choices: a sample that
    changes them, or adopts another sample's model, needs no training); None takes the
    values saved with the model. ``compression``: bytes on disk per byte of array of the
    normalised copy (:func:`selfres.pipeline.normalised_compression`), for the room check.
    """
    from .infer import scattered_store
    from .codeinfo import code_identity
    from .pipeline import CARRIED_ATTRS, at_voxel_size, grid_origin, layer_note, model_output_path, output_dtype

    factor = float(meta["factor"])
    iso = meta.get("isotropic", {})
    fusion = iso_settings.fusion if iso_settings is not None else iso.get("fusion", "mean")
    batch = int(iso_settings.infer_batch if iso_settings is not None else iso.get("infer_batch", 8))
    shape = isotropic_shape(source.shape, factor)
    vs_in = vol.voxel_size or (factor, 1.0, 1.0)
    vs_out = (float(vs_in[0]) / factor, float(vs_in[1]), float(vs_in[2]))
    dtype = output_dtype(settings, vol.attrs.get("source_dtype", "float32"))
    tile = tuple(int(t) for t in settings.tile_size[1:])
    chunks = (min(shape[0], 64), min(tile[0], shape[1]), min(tile[1], shape[2]))
    grid = isotropic_tile_grid(shape[1:], tile)
    use_interp = "model_worse_than_interpolation" in meta.get("flags", []) and (
        settings.on_worse_than_interpolation == "interpolation")
    base_fp = dict(fingerprint or {}) | {"mode": "isotropic", "factor": factor, "fusion": fusion,
                                         "out_shape": list(shape), "chunks": list(chunks), "tile": list(tile),
                                         "dtype": str(np.dtype(dtype)), "ngff_version": settings.ngff_version}

    def region_of(i):
        y0, y1, x0, x1 = grid[i]
        return (slice(None), slice(y0, y1), slice(x0, x1))

    # the network's input has its hot and dead pixels repaired, as in training (found on the
    # whole field, the same in every job of a scattered run, and only by a job that computes
    # tiles); a model trained before this repair existed: its inference as it was
    repair = "sensor_defects_repaired" in meta
    if repair:  # tiles made otherwise are redone (an older model's key stays as it was: its stores resume)
        base_fp["repair_sensor_defects"] = True
    ends = meta.get("end_weights") or None  # a model trained before the ends were blended: none
    if ends:
        base_fp["end_weights"] = list(ends)

    from .noise import defect_positions_once

    defects = defect_positions_once(source) if repair else (lambda: None)

    def write_one(net, path, kind, reuse_finished=False) -> dict:
        def compute(dest, tiles, done, record):
            todo = [i for i in tiles if i not in done]
            t0 = time.monotonic()
            with torch.inference_mode():
                restore_isotropic(net, source, factor=factor, tile=tile, batch=batch, fusion=fusion, device=device,
                                  dest=dest, amp=settings.amp, tiles=todo, on_tile_written=record,
                                  transform=lambda b: normalise.to_dtype(b, params, dtype),
                                  defects=defects() if net is not None else None, end_weights=ends)
            secs = time.monotonic() - t0
            vox = sum(shape[0] * (grid[i][1] - grid[i][0]) * (grid[i][3] - grid[i][2]) for i in todo)
            return {"tiles": len(tiles), "computed": len(todo), "seconds": secs,
                    "mvoxel_per_s": vox / 1e6 / secs if secs > 0 and todo else float("nan")}

        stats = scattered_store(
            path, step=step, block=block, blocks=settings.blocks, fingerprint=base_fp | {"kind": kind},
            n_tiles=len(grid), region_of=region_of,
            create=lambda p: io.create_ome_zarr(p, shape=shape, dtype=dtype, voxel_size=vs_out, chunks=chunks,
                                                ngff_version=settings.ngff_version),
            compute=compute, voxel_size=vs_out, ngff_version=settings.ngff_version,
            contrast_limits=(params.low, params.high),
            origin=grid_origin(vs_in, vs_out, at_voxel_size(vol.origin_voxels, vs_in)),
            attrs={"sample": sample, "content": kind, "factor": factor, "normalisation": params.to_dict(),
                   "fusion": fusion, "ran_on": models.ran_on(device), "code": code_identity(),
                   **layer_note(kind, use_interp, "z-cubic"),
                   # the acquisition's channel name and frame interval (layer names, the time-series export)
                   **{k: vol.attrs[k] for k in CARRIED_ATTRS if vol.attrs.get(k)}},
            compute_kind=models.compute_label(device, amp=settings.amp and net is not None),  # z-cubic: float32
            reuse_finished=reuse_finished)
        log.info("%s (%s) %s: %d/%d tiles computed in %.1f s", kind, step, path, stats["computed"], stats["tiles"],
                 stats["seconds"])
        return stats

    if step in ("all", "prepare"):  # a disk without room for the output: said now, not after the network's work
        from .pipeline import check_room_for_inference

        check_room_for_inference(output, fall_back=use_interp, fingerprint=base_fp, shape=shape, dtype=dtype,
                                 voxel_size=vs_out if vol.voxel_size else None, compression=compression,
                                 sample=sample, source_dtype=vol.attrs.get("source_dtype"))
    runs: list[dict] = []
    if use_interp:
        if step in ("all", "prepare"):
            log.warning("sample %s: the model did not beat z-cubic interpolation on held-out lateral slices; "
                        "%s holds z-cubic, the model output is kept in %s", sample, Path(output).name,
                        model_output_path(output).name)
        # kept when finished by this same job (see selfres.pipeline.stage_infer)
        runs.append(write_one(model, model_output_path(output), "model", reuse_finished=True))
        runs.append(write_one(None, output, "interpolation"))
    else:
        runs.append(write_one(model, output, "model"))
        if step in ("all", "gather"):
            from .pipeline import drop_stale_model_output

            drop_stale_model_output(output)
    return {"sample": sample, "output_shape": list(shape), "voxel_size_out": list(vs_out),
            "infer_seconds": sum(float(r["seconds"] or 0.0) for r in runs),
            "content": "interpolation" if use_interp else "model", "tiles": runs[-1]["tiles"],
            "computed": sum(int(r["computed"]) for r in runs), "resumed": sum(int(r["resumed"]) for r in runs)}


def load_degrader(model_dir: str | Path, meta: dict, *, device: torch.device | str = "cpu") -> nn.Module:
    """The learned lateral→axial generator saved beside an ``isotropic.degradation: learned``
    model (``model.json``'s ``degrader``), frozen, in eval mode.

    Raises
    ------
    InputError
        The generator file is missing, does not match its recorded checksum, or does not
        fit the recorded architecture.
    """
    from safetensors.torch import load_file

    from .modelfile import check_file

    info = meta.get("degrader") or {}
    path = Path(model_dir) / str(info.get("file") or DEGRADER_FILE)
    check_file(path, info.get("sha256"), what="learned degradation's generator file")
    try:
        generator = models.build_model(models.ModelSpec.from_dict(info["spec"]))
        generator.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except Exception as exc:  # a spec or state that does not fit
        raise InputError(path, f"cannot load the learned degradation's generator ({exc}); "
                               "delete the model folder to retrain") from exc
    generator = generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return generator


def self_validation(vol: io.Volume, fov: TrainingFov, model: nn.Module, meta: dict, *,
                    device: torch.device | str = "cpu", degrader: nn.Module | None = None) -> dict:
    """Model vs the degraded input (z-cubic-like) on held-out lateral slices, degraded as in training.

    ``analytic``: recomputed here (the degradation is deterministic and stored in the
    model's metadata). ``learned``: with the learned generator ``degrader``
    (:func:`load_degrader`) recomputed the same way, with the seeds of training; without
    it, the figures stored in the metadata (computed so at the end of training, or when
    another sample adopted the model).
    """
    stored = dict(meta.get("self_validation") or {})
    d = meta.get("degradation") or {}
    learned = (meta.get("isotropic") or {}).get("degradation") == "learned"
    if (learned and degrader is None) or "factor" not in d:
        return {k: stored.get(k) for k in ("psnr_model", "psnr_interp", "ssim_model", "ssim_interp")}
    deg = AxialDegradation.from_dict(d)
    # the two boxes only, as training read them
    train_box, held_box, _ = training_boxes(vol.data, fov, repair="sensor_defects_repaired" in meta)
    _, held, _ = validation_split(train_box, held_box, otsu_threshold(train_box))
    pairs = holdout_pairs(held, deg)
    if learned:  # as in training: the learned degradation of each true slice, with its seed
        degradation = LearnedDegradation(deg, degrader)
        pairs = learned_holdout_pairs(pairs, degradation)
    data_range = float(max(max(float(t.max()) for t, _ in pairs) - min(float(t.min()) for t, _ in pairs), 1e-6))
    ends = meta.get("end_weights") or None  # the ends blended as inference blends them
    preds = [blend_ends(predict_slices(model, low, device=device), low, ends, axis=-2) for _, low in pairs]
    return compare_stacks(pairs, preds, data_range)
