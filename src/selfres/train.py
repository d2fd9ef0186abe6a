"""Per-sample self-supervised training (``enhance`` mode).

Targets are patches of the training FOV of the acquisition itself; inputs are the same
patches degraded by the scale factors (the same degradation that makes the
self-validation pairs). The network is residual over tricubic interpolation and starts
as exactly that interpolation. Every ``validate_every`` steps the model is scored on
the held-out region (never seen in training) against tricubic, and — the scale check —
one scale coarser (the training FOV degraded once as target, twice as input, a scale
never trained on). The checkpoint's score is the smaller of the two gains over tricubic;
the best checkpoint by that score is kept, training stops early when it no longer
improves (or when the time budget, checked every step, runs out), and a resumable
checkpoint is written at each validation. The sample is flagged
``model_worse_than_interpolation`` unless the best checkpoint beats tricubic on the
held-out region by ``guard_margin_db`` and on the coarse scale at all (with inference
extras, :func:`guard_with_extras` decides again on what inference writes). ``x4_strategy
= "serial"`` trains two ×2 models in series (:func:`train_serial`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import degrade, models, noise
from .noise import NOISE_AT
from .io import file_checksum, write_text_atomic
from .fov import _window_means, structure_map
from .infer import predict_array
from .settings import MIN_GAIN_DB, DegradationSettings, TrainSettings, reads_x4_strategy, to_dict

log = logging.getLogger("selfres.train")

#: The resumable checkpoint in a training's work folder (``model.work/``). The ``enhance`` train
#: stage keeps the folder once training has finished: a rerun under the same key
#: (:func:`_settings_hash`) — one that changes only what the guard reads, such as
#: ``infer.ensemble`` — takes the finished training up instead of training again.
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """Outcome of :func:`train_enhance`."""

    model: torch.nn.Module
    spec: models.ModelSpec
    best_step: int
    steps_done: int
    seconds: float
    stop_reason: str
    val_psnr_model: float
    val_psnr_interp: float
    flags: list[str] = field(default_factory=list)
    log_rows: list[dict] = field(default_factory=list)
    stages: list["TrainResult"] = field(default_factory=list)
    """For a serial ×4 model: the two ×2 stages (``model`` is then their composition)."""
    holdout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """The held-out pair the model was scored on, ``(target, degraded input, its tricubic)`` as
    :func:`holdout_pair` made it — PSF-scaled when ``train.psf_sigma_um`` is set — so that the
    guard re-scores on exactly that pair."""
    patch: tuple[int, ...] | None = None
    """The training patch (z, y, x) as fitted to the training FOV (:func:`fit_patch_size`)."""
    resumed_seconds: float = 0.0
    """Training time of earlier, interrupted runs that this one resumed from their checkpoint
    (included in ``seconds``; a caller timing this run adds it to its own clock)."""
    settings: TrainSettings | None = None
    """The settings as trained (set by :func:`train_enhance` and :func:`train_serial`): with
    ``degradation.noise = "match"``, ``noise_variance`` is the top-up estimated from the data
    (what ``model.json`` records, so that the QC re-makes the same held-out pair)."""
    noise: dict | None = None
    """With ``noise = "match"``: the acquisition's noise estimate and the top-up
    (:func:`resolve_noise_match`)."""
    correction_noise: noise.NoiseLevel | None = None
    """The noise a back-projection correction holds (:func:`correction_noise`), set by
    :func:`guard_with_extras` when back-projection shrinks its corrections."""
    coarse_scale_failed: bool = False
    """The kept checkpoint was learned (step > 0) but its score — the smaller of its held-out and
    coarse-scale gains — was not above 0: what it learned is not trusted to carry over to the
    finer grid, whatever the held-out gain (flagged; :func:`guard_with_extras` keeps the flag)."""
    acquisition_noise: noise.NoiseLevel | None = None
    """The acquisition's noise level (:func:`selfres.noise.noise_level_function` on the
    training FOV, whatever ``degradation.noise`` says), rounded as ``model.json`` records it;
    :func:`correction_noise` scales it to the noise a back-projection correction holds."""
    taken_up: bool = False
    """The training had finished in an earlier run (its checkpoint kept under the same key) and
    was taken up, not trained again (for a serial ×4 model: both stages were)."""
    trained_ran_on: dict | None = None
    """Where a taken-up training ran (:func:`selfres.models.ran_on`, as its checkpoint recorded it;
    for a serial ×4 model the first stage's); None when trained in this run or not recorded."""


def make_degradation(
    settings: DegradationSettings, *, voxel_size: Sequence[float] | None, path: str = "<config>"
) -> degrade.Degradation:
    """Turn degradation settings (µm, optics) into a :class:`degrade.Degradation` in voxels."""
    if settings.method in ("cubic", "block"):
        sigma_px = None
    elif settings.method == "gaussian":
        if voxel_size is None:
            from .errors import InputError

            raise InputError(path, "degradation 'gaussian' needs the voxel size (file metadata or sheet voxel_size)")
        if settings.sigma_um is not None:
            sigma_px = tuple(s / v for s, v in zip(settings.sigma_um, voxel_size))
        else:
            sigma_px = degrade.gaussian_sigma_from_optics(
                na=settings.na,
                wavelength_um=settings.wavelength_um,
                refractive_index=settings.refractive_index,
                voxel_size=tuple(voxel_size),
                kind=settings.microscope,
            )
    else:
        sigma_px = None
    psf = degrade.load_psf(settings.psf_path) if settings.method == "psf" else None
    noise_kind, variance = settings.noise, (0.0, 0.0)
    if noise_kind == "match":  # the top-up training estimated; not yet estimated: no noise (back-projection ignores it)
        noise_kind, variance = (("affine_gaussian", settings.noise_variance) if settings.noise_variance
                                else ("none", variance))
    return degrade.Degradation(
        method=settings.method,
        sigma_px=None if sigma_px is None else tuple(float(s) for s in sigma_px),
        psf=psf,
        noise=noise_kind,
        gain=settings.gain,
        read_sigma=settings.read_sigma,
        noise_variance=tuple(variance),
    )


def noise_kept(train_volume: np.ndarray, factors: Sequence[int], settings: TrainSettings,
               voxel_size: Sequence[float] | None) -> float:
    """The fraction of white-noise variance that making a training input keeps (PSF-scaled
    target blur, then ``D``): :func:`selfres.noise.variance_kept` of that operator."""
    import dataclasses

    fs = tuple(int(f) for f in factors)
    clean = make_degradation(dataclasses.replace(settings.degradation, noise="none"), voxel_size=voxel_size)
    blur = psf_target_blur_px(settings.psf_sigma_um, fs, voxel_size)
    size = (12, 24, 24) if np.asarray(train_volume).shape[0] > 1 else (1, 64, 64)
    return noise.variance_kept(lambda v: degrade.degrade(psf_scaled_targets(v, blur), fs, clean), fs, size=size)


def acquisition_noise_given(train_volume: np.ndarray, factors: Sequence[int], settings: TrainSettings,
                            voxel_size: Sequence[float] | None) -> noise.NoiseLevel | None:
    """The acquisition's noise level a hand-set top-up implies (``degradation.noise: match`` with
    ``noise_variance`` given: the top-up over the share ``1 − kept`` that making an input
    removes), so that back-projection's shrink holds it too; ``None`` when none is given."""
    deg = settings.degradation
    if deg.noise != "match" or deg.noise_variance is None:
        return None
    removed = 1.0 - noise_kept(train_volume, factors, settings, voxel_size)
    slope, floor = (float(v) / max(removed, 1e-6) for v in deg.noise_variance)
    return noise.NoiseLevel(slope, floor).recorded()


def resolve_noise_match(train_volume: np.ndarray, factors: Sequence[int], settings: TrainSettings,
                        voxel_size: Sequence[float] | None, *,
                        level: noise.NoiseLevel | None = None) -> tuple[TrainSettings, dict | None]:
    """``settings`` with the noise top-up of ``degradation.noise = "match"`` filled in from the
    data, and what was estimated (``None`` when there is nothing to estimate).

    The acquisition's noise level (:func:`selfres.noise.noise_level_function` on the
    training FOV, as acquired; ``level`` when the caller has it) times the fraction of
    white-noise variance that making a training input removes (PSF-scaled target blur, then
    ``D``): added to every degraded input, it makes that input as noisy as the acquisition
    the network will be applied to.
    """
    import dataclasses

    deg = settings.degradation
    if deg.noise != "match" or deg.noise_variance is not None:
        return settings, None
    level = noise.noise_level_function(train_volume) if level is None else level
    kept = noise_kept(train_volume, factors, settings, voxel_size)
    top = noise.topup_variance(level, kept)
    # the level itself is model.json's ``acquisition_noise``, recorded whatever the noise setting
    info = {"kept": round(kept, 4), "topup": top.as_list(), "bins": level.bins, "sigma_at": level.sigma_at()}
    if level.bins == 0:
        log.warning("noise match: the acquisition's noise could not be measured on the training FOV %s (too few "
                    "voxels in planes of at least 8 x 8, or none finite); training inputs are not topped up",
                    tuple(np.asarray(train_volume).shape))
    else:
        log.info("noise match: acquisition noise σ %.4f at 0.1 and %.4f at 0.5 of the normalised range "
                 "(variance %.3g·μ %+.3g); making an input keeps %.0f %% of it, so each is topped up",
                 info["sigma_at"][NOISE_AT[0]], info["sigma_at"][NOISE_AT[1]], level.slope, level.floor, 100 * kept)
    resolved = dataclasses.replace(deg, noise_variance=tuple(top.as_list()))
    return dataclasses.replace(settings, degradation=resolved), info


def crop_to_multiple(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Crop the end of each axis so that its length is a multiple of its factor."""
    return volume[tuple(slice(0, (n // f) * f) for n, f in zip(volume.shape, factors))]


def fit_patch_size(patch: Sequence[int], shape: Sequence[int], factors: Sequence[int], *,
                   square: bool = True) -> tuple[int, int, int]:
    """Patch size clipped to ``shape`` and rounded down to multiples of ``factors``; with
    ``square`` (training augments with 90° rotations in y, x, which needs equal y and x
    factors) the lateral sides are made equal, the shorter one kept."""
    out = []
    for p, n, f in zip(patch, shape, factors):
        p = min(int(p), int(n))
        p = (p // f) * f
        out.append(max(p, f))
    if square and out[1] != out[2]:
        if int(factors[1]) != int(factors[2]):
            raise ValueError(f"square lateral patches need equal y and x factors, not {tuple(factors)}")
        out[1] = out[2] = min(out[1], out[2])
    return tuple(out)


class PatchSampler:
    """Random target patches from the training FOV, weighted by structure.

    A fraction ``structure_weighting`` of draws picks placements with probability
    proportional to their mean gradient magnitude; the rest are uniform. All randomness
    comes from one :class:`torch.Generator`, so a checkpoint of its state resumes exactly.
    """

    def __init__(self, volume: np.ndarray, patch: Sequence[int], *, structure_weighting: float,
                 augment: bool, rotate: bool, generator: torch.Generator):
        self.volume = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        self.patch = tuple(int(p) for p in patch)
        self.gen = generator
        self.augment = augment
        self.rotate = rotate
        self.weighting = float(structure_weighting)
        n_pos = [n - p + 1 for n, p in zip(volume.shape, self.patch)]
        self.n_pos = n_pos
        self.stride = [max(1, p // 4) for p in self.patch]
        if self.weighting > 0:
            means = _window_means(structure_map(volume), self.patch)
            coarse = means[:: self.stride[0], :: self.stride[1], :: self.stride[2]]
            w = coarse.ravel().astype(np.float64) + 1e-12
            self.coarse_shape = coarse.shape
            self.weights = torch.from_numpy(w / w.sum())
        else:
            self.weights = None

    def _origin(self) -> list[int]:
        use_struct = self.weights is not None and torch.rand(1, generator=self.gen).item() < self.weighting
        if use_struct:
            k = int(torch.multinomial(self.weights, 1, generator=self.gen).item())
            idx = np.unravel_index(k, self.coarse_shape)
            origin = []
            for i, s, n in zip(idx, self.stride, self.n_pos):
                j = int(torch.randint(0, s, (1,), generator=self.gen).item())
                origin.append(min(i * s + j, n - 1))
            return origin
        return [int(torch.randint(0, n, (1,), generator=self.gen).item()) for n in self.n_pos]

    def sample(self, batch: int) -> torch.Tensor:
        out = []
        for _ in range(batch):
            z, y, x = self._origin()
            pz, py, px = self.patch
            p = self.volume[z : z + pz, y : y + py, x : x + px]
            if self.augment:
                flips = torch.rand(3, generator=self.gen) < 0.5
                dims = [d for d in range(3) if flips[d]]
                if dims:
                    p = torch.flip(p, dims)
                if self.rotate:
                    k = int(torch.randint(0, 4, (1,), generator=self.gen).item())
                    if k:
                        p = torch.rot90(p, k, dims=(1, 2))
            out.append(p)
        return torch.stack(out)[:, None].contiguous()


def _ssim_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of 5-D batches with a 3-voxel box window (for the training loss)."""
    c1, c2 = 0.01**2, 0.03**2
    k = (1 if x.shape[2] < 3 else 3, 3, 3)
    pad = tuple(v // 2 for v in k)

    def mean(t):
        return F.avg_pool3d(t, k, stride=1, padding=pad, count_include_pad=False)

    mx, my = mean(x), mean(y)
    vx = mean(x * x) - mx * mx
    vy = mean(y * y) - my * my
    cxy = mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


FFT_LOSS_WEIGHT = 0.3
"""Weight of the Fourier-amplitude term of the ``l1_fft`` loss (measured in docs/isotropic.md)."""


def loss_fn(name: str, pred: torch.Tensor, target: torch.Tensor, *, fft_weight: float = FFT_LOSS_WEIGHT) -> torch.Tensor:
    """Training loss by name: mse, l1, l1_fft, charbonnier, charbonnier_ssim.

    ``l1_fft`` is L1 plus ``fft_weight`` times the L1 distance between the Fourier
    *amplitudes* of prediction and target over the spatial axes (orthonormal FFT, so the
    two terms have the same scale). A pixel loss alone is minimised by the conditional
    mean, which damps the fine detail the input cannot pin down; the amplitude term charges
    for missing spectral energy whatever its phase (a Fourier-space loss as in Fuoli et al.,
    ICCV 2021).
    """
    if name == "mse":
        return F.mse_loss(pred, target)
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "l1_fft":
        dims = tuple(range(2, pred.ndim))
        amp_pred = torch.fft.rfftn(pred.float(), dim=dims, norm="ortho").abs()
        amp_target = torch.fft.rfftn(target.float(), dim=dims, norm="ortho").abs()
        return F.l1_loss(pred, target) + fft_weight * F.l1_loss(amp_pred, amp_target)
    charb = torch.sqrt((pred - target) ** 2 + 1e-6).mean()
    if name == "charbonnier":
        return charb
    if name == "charbonnier_ssim":
        return charb + 0.1 * (1 - _ssim_torch(pred, target))
    raise ValueError(f"unknown loss {name!r}; choose mse, l1, l1_fft, charbonnier or charbonnier_ssim")


def optimisation_step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """One optimiser step with gradients clipped to norm 1.

    Returns False, changing nothing, when the loss is not finite (divergence).
    """
    if not torch.isfinite(loss):
        return False
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return True


def learning_rate(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 5 % (or constant)."""
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    if s.lr_schedule == "constant":
        return s.learning_rate
    t = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def coarse_pair(volume: np.ndarray, factors: Sequence[int], degradation: degrade.Degradation):
    """Scale-transfer check: (target, input, tricubic) one scale coarser than training.

    The training pairs are (volume degraded once → volume). Here the volume is degraded
    once to make the target and twice to make the input: a scale the model never
    trained on. A model that only learned the texture of one scale fails this check,
    which is what the held-out pair (same scale as training) cannot see. Returns
    ``None`` when the volume is too small (an axis with a factor > 1 would get fewer
    than 4 voxels in the coarse input).
    """
    fs = tuple(int(f) for f in factors)
    ff = tuple(f * f for f in fs)
    v = crop_to_multiple(np.asarray(volume, dtype=np.float32), ff)
    if any(f > 1 and n // ffi < 4 for f, n, ffi in zip(fs, v.shape, ff)):
        return None
    rng = np.random.default_rng(54321)
    target = degrade.degrade(v, fs, degradation, rng=rng)
    low = degrade.degrade(target, fs, degradation, rng=rng)
    interp = degrade.upscale_cubic(low, fs)
    return np.asarray(target, np.float32), np.asarray(low, np.float32), np.asarray(interp, np.float32)


def psnr01(reference: np.ndarray, image: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


def holdout_pair(holdout: np.ndarray, factors: Sequence[int], degradation: degrade.Degradation):
    """(target, degraded input, tricubic of the input) of the held-out region."""
    target = crop_to_multiple(np.asarray(holdout, dtype=np.float32), factors)
    low = degrade.degrade(target, tuple(factors), degradation, rng=np.random.default_rng(12345))
    interp = degrade.upscale_cubic(low, tuple(factors))
    return target, np.asarray(low, dtype=np.float32), np.asarray(interp, dtype=np.float32)


# A gain must clear this to count (float rounding of an output equal to tricubic stays below it).
_NO_GAIN_DB = 1e-3


def guard_passes(target: np.ndarray, pred: np.ndarray, interp: np.ndarray, *, margin_db: float,
                 confidence: float) -> tuple[bool, float, tuple[float, float] | None]:
    """The guard's rule: does ``pred`` beat ``interp`` on the held-out ``target``?

    Yes when the PSNR gain exceeds ``margin_db``, or — a smaller gain — when the lower end
    of its ``confidence`` interval (:func:`selfres.metrics.psnr_gain_interval`, blocks of the
    held-out region resampled) is above 0; ``confidence`` 0: the margin alone.

    Returns
    -------
    (bool, float, interval or None)
        The verdict, the gain in dB and the interval (None when not computed or too few blocks).
    """
    from .metrics import psnr_gain_interval

    data_range = float(max(target.max() - target.min(), 1e-6))
    gain = psnr01(target, pred, data_range) - psnr01(target, interp, data_range)
    interval = psnr_gain_interval(target, pred, interp, level=confidence) if confidence > 0 else None
    consistent = interval is not None and interval[0] > _NO_GAIN_DB
    return bool(gain > margin_db or consistent), float(gain), interval


def psf_target_blur_px(psf_sigma_um: Sequence[float] | None, factors: Sequence[int],
                       voxel_size: Sequence[float] | None, *, path: str = "<config>") -> tuple[float, ...] | None:
    """σ (voxels, z, y, x) of the Gaussian that makes PSF-scaled targets, or ``None`` when no PSF is given.

    With the PSF's σ ``s`` voxels of the acquisition, the output grid sees it as ``f·s``
    voxels; blurring the acquisition by ``s·sqrt(f² − 1)`` gives it that blur-to-voxel
    ratio. Axes with factor 1 are left alone.
    """
    if psf_sigma_um is None:
        return None
    if voxel_size is None:
        from .errors import InputError

        raise InputError(path, "train.psf_sigma_um needs the voxel size (file metadata or sheet voxel_size)")
    return tuple(float(s) / float(v) * math.sqrt(int(f) ** 2 - 1)
                 for s, v, f in zip(psf_sigma_um, voxel_size, factors))


def psf_scaled_targets(volume: np.ndarray, blur_px: Sequence[float] | None) -> np.ndarray:
    """The volume as the output grid would see it: blurred by ``blur_px`` (see :func:`psf_target_blur_px`).

    Self-supervised pairs (acquisition degraded by ``f`` → acquisition) carry the PSF at
    ``1/f`` of the blur-to-voxel ratio that the real task (acquisition → ``f``× finer
    grid) has: a point source is sub-voxel in the training input but spans voxels in the
    real input, and a net trained on such pairs sharpens points far beyond the PSF when
    applied one scale finer (measured on the bead experiment: lateral FWHM 1.3–4 px
    against a truth of 4.71 px). Training on the acquisition seen through an ``f``×
    wider PSF gives the pairs the real task's ratios on both sides. Both the training
    targets and the held-out targets (guard, QC self-validation) go through this, so the
    model is scored on the task it learned. ``None`` or all zeros: the volume unchanged.
    """
    if blur_px is None or not any(b > 0 for b in blur_px):
        return volume
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(volume, dtype=np.float32), sigma=tuple(blur_px), mode="reflect")


def blur_targets(targets: torch.Tensor, factors: Sequence[int], *, fraction: float, max_sigma_px: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Training targets (``(B, 1, Z, Y, X)``), a random ``fraction`` of them blurred.

    Self-supervised pairs carry the acquisition's blur at ``1/f`` of the blur-to-voxel ratio of
    the real task (see :func:`psf_scaled_targets`): a network trained on them alone sharpens
    point-like objects past their true width on the finer grid. A blurred target is the
    acquisition seen through a wider PSF; with σ drawn uniformly up to
    ``max_sigma_px·sqrt(f² − 1)`` voxels (the same draw, scaled, on every axis with a factor
    ``f`` > 1) the pairs span the ratios from the training scale's to the output grid's for a
    PSF of up to ``max_sigma_px`` voxels, without the PSF being known.
    """
    if fraction <= 0:
        return targets
    draws = torch.rand(targets.shape[0], 2, generator=generator)
    out = []
    for i in range(targets.shape[0]):
        t = targets[i : i + 1]
        if draws[i, 0].item() < fraction:
            u = float(draws[i, 1].item()) * float(max_sigma_px)
            t = degrade.blur(t, sigma_px=[u * math.sqrt(int(f) ** 2 - 1) for f in factors])
        out.append(t)
    return torch.cat(out)


def data_digest(*arrays: np.ndarray) -> str:
    """A digest of the arrays' shapes, types and voxels: part of a checkpoint's key, so that
    a run resumes only on the data it was trained on (a sample whose image, voxel size or
    training FOV changed after a killed run starts afresh)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.data)
    return h.hexdigest()[:16]


def _settings_hash(settings: TrainSettings, factors, data: str, voxel_size, *, amp: bool = True,
                   psf: np.ndarray | None = None) -> str:
    """A checkpoint's key: everything a training's weights depend on — its settings, factors, data
    (:func:`data_digest`), voxel size, mixed precision, the measured PSF's voxels (a file replaced
    under the same path is another PSF), selfres's source (:func:`selfres.codeinfo.source_digest`)
    and torch's version. A checkpoint resumes, or a finished training is taken up again
    (:data:`CHECKPOINT`), only under the same key."""
    from .codeinfo import source_digest

    blob = json.dumps({"s": to_dict(settings), "f": list(factors), "data": data,
                       "voxel": None if voxel_size is None else [float(v) for v in voxel_size],
                       "amp": bool(amp), "psf": None if psf is None else data_digest(np.asarray(psf)),
                       "code": source_digest(), "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic checkpoint with a sha256 side file (loaded with ``weights_only=True``).

    The side file lists the digests a checkpoint may have: while the new checkpoint replaces
    the old one it lists both, so a kill at any moment leaves a checkpoint that its side file
    accepts (the old or the new one), never a good checkpoint without its digest."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    digest = file_checksum(tmp)
    side = Path(str(path) + ".sha256")
    old = _checkpoint_digests(side) if path.exists() else []
    write_text_atomic(side, "\n".join([*old, digest]))
    os.replace(tmp, path)
    write_text_atomic(side, digest)


def _checkpoint_digests(side: Path) -> list[str]:
    try:
        return [line.strip() for line in side.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def load_checkpoint(path: Path) -> dict | None:
    """Load a checkpoint if present and intact; a corrupt one is reported and ignored."""
    side = Path(str(path) + ".sha256")
    if not path.exists() or not side.exists():
        return None
    if file_checksum(path) not in _checkpoint_digests(side):
        log.warning("checkpoint %s fails its checksum; it is ignored and training starts afresh", path)
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded
        log.warning("checkpoint %s cannot be read (%s); training starts afresh", path, exc)
        return None


def finished_training(state: dict, steps: int) -> bool:
    """Whether a checkpoint is of a training that ended: a stop it recorded (early stop, time
    budget, divergence) or its step limit reached."""
    return "stopped" in state or int(state["step"]) >= steps


def retrain_reason(state: dict, *, steps: int, device: torch.device | str) -> str | None:
    """Why a *finished* training's checkpoint, kept by a completed ``enhance`` train job, is not
    taken up by another run of that job — training again would not give its weights — or None:
    it ended by its steps, an early stop or a divergence, on the same kind of device and, on a
    CPU, with as many threads (:meth:`Checkpointing.save` records both). A
    training its time budget cut is trained again: where it stops depends on how busy the
    machine was (a rerun is often asked for just that) — unless the rerun was made for the
    guard's inference extras alone (:func:`train_enhance`'s ``take_up_any_finished``). A
    checkpoint a killed job left — unfinished, or finished with the job killed in its guard — is
    resumed or taken up whatever these are, as it always was."""
    if not finished_training(state, steps):
        return None
    stopped = stopped_run(state)
    if stopped is not None and stopped[0] == "time_budget":
        return "it was cut by its time budget (train.max_minutes)"
    dev = torch.device(device)
    if state.get("device") != dev.type:
        return f"it ran on {state.get('device') or 'an unrecorded device'}, this run on {dev.type}"
    threads = torch.get_num_threads()
    if dev.type == "cpu" and state.get("threads") != threads:
        return f"it ran with {state.get('threads') or 'an unrecorded number of'} CPU thread(s), this run with {threads}"
    return None


def resume_from_checkpoint(path: Path | None, *, key: str, model: torch.nn.Module, optimiser,
                           generator: torch.Generator, noise_generator: torch.Generator,
                           steps: int | None = None) -> dict | None:
    """Load the training checkpoint at ``path`` into the model, optimiser and generators
    when it belongs to this run (``key``: settings, factors, data shape). With ``steps`` (the
    run's step limit), a finished training is loaded only when training again would give its
    weights (:func:`retrain_reason`).

    Returns
    -------
    dict or None
        The checkpoint (for the caller's counters: step, rows, best, …), or None when
        there is none, it is damaged, or it belongs to other settings or data.
    """
    if path is None:
        return None
    state = load_checkpoint(path)
    if state is None:
        return None
    if state.get("key") != key:
        log.info("checkpoint belongs to other settings, data, PSF, infer.amp, or selfres or torch version; "
                 "training starts afresh")
        return None
    why = None if steps is None else retrain_reason(state, steps=steps, device=noise_generator.device)
    if why is not None:
        log.info("a finished training with the same data, settings and code is kept in %s, but %s: training "
                 "starts afresh", path.parent, why)
        return None
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    generator.set_state(state["generator"])
    saved_noise = state["noise_generator"]
    if saved_noise.numel() == noise_generator.get_state().numel():
        noise_generator.set_state(saved_noise)
    else:  # the noise generator lives on the training device: a CPU run resumed on a GPU, or back
        noise_generator.manual_seed(noise_generator.initial_seed() + int(state["step"]))
        log.warning("checkpoint written on another kind of device: its weights and step are resumed, the noise "
                    "draws start anew (the weights will not be bit-identical to an uninterrupted run)")
    return state


def _state_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Selection:
    """Checkpoint selection by a validation score, early stop, and their part of the
    resumable checkpoint — the bookkeeping shared by the enhance and isotropic loops.

    ``score`` decides (enhance: the smaller of the held-out and coarse-scale gains;
    isotropic: the held-out PSNR); ``psnr`` is the held-out PSNR reported with it.
    """

    patience: int
    best_psnr: float
    best_score: float
    best_state: dict
    best_step: int = 0
    bad_validations: int = 0
    rows: list = field(default_factory=list)

    @classmethod
    def start(cls, model: torch.nn.Module, *, psnr: float, score: float, patience: int) -> "Selection":
        """The untrained model (step 0) is the first candidate."""
        return cls(patience=int(patience), best_psnr=float(psnr), best_score=float(score),
                   best_state=_state_copy(model))

    def observe(self, model: torch.nn.Module, *, step: int, psnr: float, score: float, row: dict) -> bool:
        """Record a validation (``row`` for the training log); keep the model when it improved."""
        self.rows.append(row)
        if score > self.best_score + MIN_GAIN_DB:
            self.best_psnr, self.best_score, self.best_step = float(psnr), float(score), int(step)
            self.best_state = _state_copy(model)
            self.bad_validations = 0
            return True
        self.bad_validations += 1
        return False

    @property
    def exhausted(self) -> bool:
        """``patience`` validations in a row without improvement."""
        return self.bad_validations >= self.patience

    @property
    def still_improving(self) -> bool:
        """The best model came at one of the last two validations (and after the start): a
        stop now (the time budget) cuts short a training that was still gaining."""
        return self.best_step > 0 and self.bad_validations <= 1

    def budget_stop_flags(self, max_minutes: float) -> list[str]:
        """Log a stop by the time budget (before the step limit); ``["stopped_while_improving"]``
        when the held-out score was still rising, else none."""
        log.info("time budget of %g min reached", max_minutes)
        if not self.still_improving:
            return []
        log.warning("training stopped by its time budget (train.max_minutes %g) while the held-out score was "
                    "still improving", max_minutes)
        return ["stopped_while_improving"]

    def state_dict(self) -> dict:
        return {"rows": json.dumps(self.rows), "best_psnr": self.best_psnr, "best_step": self.best_step,
                "best_score": self.best_score, "best_state": self.best_state,
                "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict, *, score_of_psnr=lambda psnr: psnr) -> None:
        """Restore from a checkpoint (one written before ``best_score`` existed scores its
        best PSNR with ``score_of_psnr``)."""
        self.rows = json.loads(state["rows"])
        self.best_psnr, self.best_step = float(state["best_psnr"]), int(state["best_step"])
        self.best_score = float(state.get("best_score", score_of_psnr(self.best_psnr)))
        self.best_state = state["best_state"]
        self.bad_validations = int(state["bad_validations"])


@dataclass
class Checkpointing:
    """Where and with what a training loop saves its resumable checkpoint (``path`` None: never)."""

    path: Path | None
    key: str
    generator: torch.Generator
    noise_generator: torch.Generator

    def save(self, model: torch.nn.Module, optimiser, sel: "Selection", *, step: int, elapsed: float,
             stopped: tuple[str, list[str]] | None = None) -> None:
        """``stopped``: the reason and flags of a run that ends at this validation before its
        step limit (early stop, time budget): a resume then ends where the run ended."""
        if self.path is not None:
            save_checkpoint(self.path, {
                "key": self.key, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "generator": self.generator.get_state(), "noise_generator": self.noise_generator.get_state(),
                "step": step, "elapsed": elapsed, **sel.state_dict(),
                # what a finished training must share with a rerun to be taken up (retrain_reason),
                # and where it ran (a taken-up model's provenance)
                "device": self.noise_generator.device.type, "threads": torch.get_num_threads(),
                "ran_on": json.dumps(models.ran_on(self.noise_generator.device)),
                **({} if stopped is None else {"stopped": json.dumps(list(stopped))}),
            })


def stopped_run(state: dict | None) -> tuple[str, list[str]] | None:
    """The stop (reason, flags) a resumed checkpoint recorded, or None for a run to go on."""
    if state is None or "stopped" not in state:
        return None
    reason, flags = json.loads(state["stopped"])
    return str(reason), [str(f) for f in flags]


def run_steps(model: torch.nn.Module, optimiser, sel: "Selection", settings, *, step: int, elapsed_before: float,
              batch_loss, validate, describe, checkpoint: Checkpointing, stop_after_steps: int | None = None,
              stopped: tuple[str, list[str]] | None = None) -> tuple[int, str, list[str], float]:
    """The optimisation loop both modes share: learning-rate schedule (each parameter group's
    ``scale`` times :func:`learning_rate`), one step per batch, validation every
    ``settings.validate_every`` steps, at the last step and when the time budget is spent
    (checked every step), checkpoint selection (``sel``), a resumable checkpoint at every
    validation, and the stops: divergence, early stop (patience), time budget, the step limit.

    ``batch_loss()``: the loss of one fresh batch; ``validate()``: ``(psnr, score, extra log
    columns such as val_psnr_interp)`` of the current weights; ``describe(row, eta_seconds)``: logs one validation.
    Returns ``(steps done, stop reason, flags, t0)`` (``t0``: the monotonic clock's start,
    earlier runs' time included); the caller loads ``sel.best_state``. ``stopped``: the stop a
    resumed checkpoint recorded (:func:`stopped_run`); the loop does not run again.
    """
    t0 = time.monotonic() - elapsed_before
    if stopped is not None:
        log.info("the resumed run had stopped at step %d (%s): not trained further", step, stopped[0])
        return step, stopped[0], list(stopped[1]), t0
    stop_reason, flags = "steps", []
    running, n_running = 0.0, 0
    model.train()
    while step < settings.steps:
        lr = learning_rate(step, settings)
        for g in optimiser.param_groups:
            g["lr"] = lr * g.get("scale", 1.0)
        loss = batch_loss()
        if not optimisation_step(model, optimiser, loss):
            flags.append("training_diverged")
            stop_reason = "diverged"
            log.warning("loss became %s at step %d; keeping the best checkpoint", loss.item(), step)
            # recorded as a stop, so that a rerun does not train the dead run's weights on
            checkpoint.save(model, optimiser, sel, step=step, elapsed=time.monotonic() - t0,
                            stopped=(stop_reason, ["training_diverged"]))
            break
        step += 1
        running += float(loss.item())
        n_running += 1
        over_budget = time.monotonic() - t0 > settings.max_minutes * 60
        if step % settings.validate_every == 0 or step == settings.steps or over_budget:
            val, score, extra = validate()
            el = time.monotonic() - t0
            row = {"step": step, "loss": running / n_running, "val_psnr_model": val, **extra, "lr": lr,
                   "seconds": round(el, 2)}
            sel.observe(model, step=step, psnr=val, score=score, row=row)
            running, n_running = 0.0, 0
            rate = step / max(el, 1e-9)
            eta = (settings.steps - step) / rate if rate > 0 else float("nan")
            describe(sel.rows[-1], max(0.0, min(eta, settings.max_minutes * 60 - el)))  # 0 once the budget is spent
            stop = None
            if sel.exhausted and step < settings.steps:  # at the last step it is not early
                log.info("no held-out improvement in %d validations: early stop", settings.patience)
                stop = ("early_stop", ["early_stopped"])
            elif el > settings.max_minutes * 60 and step < settings.steps:
                stop = ("time_budget", sel.budget_stop_flags(settings.max_minutes))
            checkpoint.save(model, optimiser, sel, step=step, elapsed=el, stopped=stop)
            if stop is not None:
                stop_reason = stop[0]
                flags += stop[1]
                break
        if stop_after_steps is not None and step >= stop_after_steps:
            stop_reason = "interrupted"
            break
    return step, stop_reason, flags, t0


@models.keeps_callers_random_state
def train_enhance(
    train_volume: np.ndarray,
    holdout_volume: np.ndarray,
    *,
    factors: Sequence[int],
    settings: TrainSettings,
    voxel_size: Sequence[float] | None = None,
    work_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    amp: bool = True,
    stop_after_steps: int | None = None,
    take_up_any_finished: bool = False,
) -> TrainResult:
    """Train an ``enhance`` model on one sample.

    Parameters
    ----------
    train_volume
        Normalised training FOV (ZYX float32); patches are drawn from it.
    holdout_volume
        Normalised held-out region, disjoint from the training FOV.
    factors
        Integer scale factors (z, y, x).
    settings
        Training settings.
    work_dir
        Where the resumable checkpoint lives; ``None`` disables checkpoints.
    stop_after_steps
        Stop (as if killed) after this many steps — for tests of resumption.
    take_up_any_finished
        A finished training in ``work_dir`` under the same key is taken up however it ended (a
        rerun made for the guard's inference extras alone: another guard is asked for, not another
        network; or a checkpoint a killed job left); else, for a training a completed job kept,
        only where training again would give its weights (:func:`retrain_reason`).
    """
    factors = tuple(int(f) for f in factors)
    # a top-up set by hand (a level the estimate misses): back-projection's shrink holds it too,
    # and nothing is measured; else the estimate, as model.json records it
    acquisition_noise = acquisition_noise_given(train_volume, factors, settings, voxel_size)
    measured = noise.noise_level_function(train_volume) if acquisition_noise is None else None
    acquisition_noise = acquisition_noise or measured.recorded()
    settings, noise_info = resolve_noise_match(train_volume, factors, settings, voxel_size, level=measured)
    if settings.x4_strategy == "serial" and serial_split(factors) is not None:
        result = train_serial(train_volume, holdout_volume, factors=factors, settings=settings,
                              voxel_size=voxel_size, work_dir=work_dir, device=device, amp=amp,
                              take_up_any_finished=take_up_any_finished)
        result.settings, result.noise, result.acquisition_noise = settings, noise_info, acquisition_noise
        return result
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    degradation = make_degradation(settings.degradation, voxel_size=voxel_size)
    blur = psf_target_blur_px(settings.psf_sigma_um, factors, voxel_size)
    if blur is not None:
        log.info("PSF-scaled targets: training and held-out targets blurred by σ %s voxels (z, y, x)",
                 tuple(round(b, 2) for b in blur))
        train_volume = psf_scaled_targets(train_volume, blur)
        holdout_volume = psf_scaled_targets(holdout_volume, blur)
    # PSF-scaled targets already have the output grid's blur-to-voxel ratio: blurring them
    # more would teach ratios beyond it
    blur_fraction = settings.blur_augment if blur is None else 0.0
    lateral_iso = models.lateral_rotations(factors, voxel_size)
    patch = fit_patch_size(settings.patch_size, train_volume.shape, factors, square=lateral_iso)
    spec = models.ModelSpec(
        arch=settings.arch, factors=factors, width=settings.width, depth=settings.depth,
        residual=settings.residual, dims=2 if train_volume.shape[0] == 1 else 3,
    )
    model = models.build_model(spec).to(device)
    model.lateral_rotations = lateral_iso  # the self-ensemble rotates only where a rotation keeps the task the same
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    gen = torch.Generator().manual_seed(settings.seed)
    sampler = PatchSampler(
        train_volume, patch, structure_weighting=settings.structure_weighting, augment=settings.augment,
        rotate=lateral_iso, generator=gen,
    )
    degrader = degrade.TorchDegrader(factors, degradation, device=device)
    noise_gen = torch.Generator(device=device).manual_seed(settings.seed + 1)

    target_h, low_h, interp_h = holdout_pair(holdout_volume, factors, degradation)
    data_range = float(max(target_h.max() - target_h.min(), 1e-6))
    val_interp = psnr01(target_h, interp_h, data_range)

    tile = tuple(max(8, min(64, n)) for n in low_h.shape)

    coarse = coarse_pair(train_volume, factors, degradation) if settings.scale_check else None
    if coarse is not None:
        coarse_range = float(max(coarse[0].max() - coarse[0].min(), 1e-6))
        coarse_interp = psnr01(coarse[0], coarse[2], coarse_range)
        coarse_tile = tuple(max(8, min(64, n)) for n in coarse[1].shape)

    def validate() -> float:
        """Held-out PSNR; also sets ``last["coarse_gain"]`` and ``last["score"]``."""
        model.eval()
        pred = predict_array(model, low_h, factors=factors, tile_size=tile, device=device, amp=amp)
        val = psnr01(target_h, pred, data_range)
        gain = val - val_interp
        if coarse is not None:
            pc = predict_array(model, coarse[1], factors=factors, tile_size=coarse_tile, device=device, amp=amp)
            last["coarse_gain"] = psnr01(coarse[0], pc, coarse_range) - coarse_interp
            last["score"] = min(gain, last["coarse_gain"])
        else:
            last["coarse_gain"] = float("nan")
            last["score"] = gain
        model.train()
        return val

    last: dict[str, float] = {}

    ckpt_path = Path(work_dir) / CHECKPOINT if work_dir else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    # (hashing the data only where there is a checkpoint to match)
    key = (_settings_hash(settings, factors, data_digest(train_volume, holdout_volume), voxel_size, amp=amp,
                          psf=degradation.psf) if ckpt_path else "")
    step = 0
    start_psnr = validate()
    sel = Selection.start(model, psnr=start_psnr, score=last["score"], patience=settings.patience)
    elapsed_before = 0.0
    state = resume_from_checkpoint(ckpt_path, key=key, model=model, optimiser=optimiser, generator=gen,
                                   noise_generator=noise_gen,
                                   steps=None if take_up_any_finished else settings.steps)
    taken_up = state is not None and finished_training(state, settings.steps)  # kept by the train stage
    if state is not None:
        step = int(state["step"])
        sel.load_state_dict(state, score_of_psnr=lambda psnr: psnr - val_interp)
        elapsed_before = float(state["elapsed"])
        if not taken_up:  # a finished training is logged below
            log.info("resumed from checkpoint at step %d (best %.2f dB at step %d)", step, sel.best_psnr,
                     sel.best_step)
    log.info(
        "training %s (%d parameters) on FOV %s, patch %s, factors %s; held-out %s: tricubic %.2f dB, start %.2f dB",
        spec.arch, models.count_parameters(model), tuple(train_volume.shape), patch, factors,
        tuple(target_h.shape), val_interp, sel.best_psnr,
    )
    trained_ran_on = json.loads(state["ran_on"]) if taken_up and "ran_on" in state else None
    if taken_up:
        log.info("training had finished in an earlier run on the same data, settings and code (step %d, best "
                 "%.2f dB at step %d; %s): taken up, not trained again — delete that folder to train afresh",
                 step, sel.best_psnr, sel.best_step, ckpt_path.parent)

    def batch_loss() -> torch.Tensor:
        # blurred on the device (a GPU does it in no time); the draws come from the CPU generator
        target = blur_targets(sampler.sample(settings.batch_size).to(device), factors, fraction=blur_fraction,
                              max_sigma_px=settings.blur_augment_sigma_px, generator=gen)
        with torch.no_grad():
            low = degrader(target, generator=noise_gen)
        with models.autocast_context(device, enabled=amp, training=True):
            pred = model(low)
        return loss_fn(settings.loss, pred.float(), target)

    def scored() -> tuple[float, float, dict]:
        val = validate()
        return val, last["score"], {"val_coarse_gain": last["coarse_gain"], "val_psnr_interp": val_interp}

    def describe(row: dict, eta: float) -> None:
        # the kept checkpoint is the best by the smaller of the held-out and coarse-scale gains:
        # a better held-out figure whose coarse-scale gain fell is not kept, and the log says why
        scale_checked = math.isfinite(row["val_coarse_gain"])
        log.info(
            "step %d/%d loss %.5f held-out %.2f dB (tricubic %.2f%s) kept %.2f @ %d%s lr %.2e elapsed %.0fs "
            "ETA %.0fs", row["step"], settings.steps, row["loss"], row["val_psnr_model"], val_interp,
            f", coarse-scale gain {row['val_coarse_gain']:+.2f} dB" if scale_checked else "", sel.best_psnr,
            sel.best_step, " (by the smaller of the held-out and coarse-scale gains)" if scale_checked else "",
            row["lr"], row["seconds"], eta,
        )

    step, stop_reason, flags, t0 = run_steps(
        model, optimiser, sel, settings, step=step, elapsed_before=elapsed_before, batch_loss=batch_loss,
        validate=scored, describe=describe, checkpoint=Checkpointing(ckpt_path, key, gen, noise_gen),
        stop_after_steps=stop_after_steps, stopped=stopped_run(state))
    model.load_state_dict(sel.best_state)
    model.eval()
    seconds = time.monotonic() - t0
    coarse_scale_failed = sel.best_step > 0 and sel.best_score <= 0
    if sel.best_step == 0 or sel.best_psnr <= val_interp + settings.guard_margin_db or coarse_scale_failed:
        # a small held-out gain of a learned mapping does not carry over to the finer scale reliably
        flags.append("model_worse_than_interpolation")
    return TrainResult(
        model=model, spec=spec, best_step=sel.best_step, steps_done=step, seconds=seconds,
        stop_reason=stop_reason, val_psnr_model=sel.best_psnr, val_psnr_interp=val_interp,
        flags=flags, log_rows=sel.rows, holdout=(target_h, low_h, interp_h), resumed_seconds=elapsed_before,
        settings=settings, noise=noise_info, acquisition_noise=acquisition_noise, patch=tuple(int(v) for v in patch),
        coarse_scale_failed=coarse_scale_failed, taken_up=taken_up, trained_ran_on=trained_ran_on,
    )


def inference_extras(infer_settings) -> dict:
    """The inference extras that change what the user gets, as keyword arguments of
    :func:`selfres.ensemble.wrap_for_inference`: ``ensemble``, ``back_projection_iterations``,
    ``back_projection_shrink``."""
    return {"ensemble": bool(infer_settings.ensemble),
            "back_projection_iterations": int(infer_settings.back_projection_iterations),
            "back_projection_shrink": bool(infer_settings.back_projection_shrink)}


def guard_with_extras(
    result: TrainResult,
    *,
    factors: Sequence[int],
    degradation: degrade.Degradation,
    extras: dict,
    margin_db: float,
    confidence: float,
    device: torch.device | str = "cpu",
    amp: bool = True,
    acquisition: np.ndarray | None = None,
) -> tuple[float, list[str]]:
    """Score what inference will write — the model wrapped in the inference ``extras``
    (self-ensemble, back-projection) — against tricubic on the held-out region, and redo the
    guard on that score.

    The network alone was selected and guarded by :func:`train_enhance`; with extras, the
    output the user gets is not the network's, so the verdict must be about the wrapped
    model: flagged ``model_worse_than_interpolation`` unless it beats tricubic on the
    held-out region — on the held-out pair training scored (``result.holdout``, PSF-scaled
    when training was) — by ``margin_db``. When nothing was learned (every stage kept
    step 0: the network *is* tricubic, and the output is tricubic + the extras, e.g.
    back-projection) a smaller gain also passes if it is above 0 at ``confidence``
    (:func:`guard_passes`). The margin stays for learned mappings: their small held-out
    gains came with true losses (+0.07 dB held out, −0.54 dB true; docs/quality.md), the
    failure of a mapping learned one scale coarser; a classical step has no learned
    mapping to carry over, and at ×4 its small but consistent held-out gains (+0.04–0.05
    dB, above 0 in every resample) went with +0.5 dB against the truth. Without extras
    the result's own figures are returned. ``acquisition``: the training FOV as acquired,
    on which the share of noise a back-projection correction holds is measured
    (:func:`correction_noise`; ``None``: on the held-out input).

    Returns
    -------
    (float, list of str)
        The held-out PSNR of the wrapped model and the flags.
    """
    from .ensemble import wrap_for_inference

    flags = list(result.flags)
    target, low, interp = result.holdout
    probe = low if acquisition is None else central_crop(acquisition, SHARE_PROBE_SHAPE)
    result.correction_noise = correction_noise(result, probe, degradation=degradation, extras=extras, device=device)
    wrapped = wrap_for_inference(result.model, degradation=degradation, noise_level=result.correction_noise,
                                 **extras)
    if wrapped is result.model:  # no extras: the network is what inference writes
        return result.val_psnr_model, flags
    factors = tuple(int(f) for f in factors)
    pred = predict_array(wrapped, low, factors=factors, tile_size=tuple(max(8, min(64, n)) for n in low.shape),
                         device=device, amp=amp)
    stages = result.stages or [result]
    learned = any(r.best_step > 0 for r in stages)
    passes, gain, interval = guard_passes(target, pred, interp, margin_db=margin_db,
                                          confidence=0.0 if learned else confidence)
    psnr = result.val_psnr_interp + gain  # val_psnr_interp was scored on this same (target, interp)
    flags = [f for f in flags if f != "model_worse_than_interpolation"]
    if not passes or any(r.coarse_scale_failed for r in stages):  # the extras do not mend the coarse-scale check
        flags.append("model_worse_than_interpolation")
    log.info("guard on the inference output (%s): held-out %.2f dB vs tricubic %.2f dB (network alone %.2f dB)%s%s",
             ", ".join(f"{k} {v}" for k, v in extras.items()), psnr, result.val_psnr_interp, result.val_psnr_model,
             f"; gain {confidence:.0%} interval {interval[0]:+.3f}..{interval[1]:+.3f} dB" if interval else "",
             "; flagged model_worse_than_interpolation" if "model_worse_than_interpolation" in flags else "")
    return psnr, flags


#: The largest central part of the training FOV (input voxels, z, y, x) on which
#: :func:`correction_noise` measures the share of noise a correction holds.
SHARE_PROBE_SHAPE = (16, 64, 64)


def central_crop(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The central ``shape`` (at most) of ``volume``'s last three axes."""
    v = np.asarray(volume)
    box = tuple(slice(max(0, (n - int(s)) // 2), max(0, (n - int(s)) // 2) + min(n, int(s)))
                for n, s in zip(v.shape[-3:], shape))
    return v[(Ellipsis,) + box]


def correction_noise(result: TrainResult, low: np.ndarray, *, degradation: degrade.Degradation, extras: dict,
                     device: torch.device | str = "cpu") -> noise.NoiseLevel | None:
    """The noise a back-projection correction of ``result.model`` holds: the acquisition's
    level times the share that passes into the correction through the model (as inference
    wraps it: the self-ensemble when ``extras`` asks for it), measured on the model input
    ``low`` (part of the acquisition, or the held-out input;
    :func:`selfres.ensemble.correction_noise_share`); rounded as ``model.json`` records it.
    ``None`` when back-projection does not shrink (``extras``) or nothing could be measured
    (back-projection then takes plain steps)."""
    from .ensemble import SelfEnsemble

    level = result.acquisition_noise
    if (not extras.get("back_projection_iterations") or not extras.get("back_projection_shrink")
            or level is None or (level.slope <= 0 and level.floor <= 0)):
        return None
    model = SelfEnsemble(result.model) if extras.get("ensemble") else result.model
    return correction_noise_level(model, low, level, degradation=degradation, device=device)


def correction_noise_level(model: torch.nn.Module, low: np.ndarray, level: noise.NoiseLevel, *,
                           degradation: degrade.Degradation, device: torch.device | str = "cpu"
                           ) -> noise.NoiseLevel | None:
    """``level`` (an acquisition's noise) times the share that passes into a back-projection
    correction through ``model``, measured on its input ``low``
    (:func:`selfres.ensemble.correction_noise_share`), rounded as ``model.json`` records it;
    ``None`` when ``low`` is too small to measure it."""
    from .ensemble import correction_noise_share

    share = correction_noise_share(model, low, level, degradation=degradation, device=device)
    if not math.isfinite(share):
        log.info("back-projection shrink: the input %s is too small to measure the noise a correction holds; "
                 "back-projection takes plain steps", tuple(np.shape(low)))
        return None
    share = float(f"{share:.4g}")
    log.info("back-projection shrink: a correction holds %.0f %% of the acquisition's noise", 100 * share)
    return noise.NoiseLevel(*level.scaled(share).as_list())


def serial_split(factors: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Split factors with a 4 into two stages, e.g. ``(4, 4, 4) -> (2, 2, 2), (2, 2, 2)``.

    Returns ``None`` when no factor is 4 or a factor is not 1, 2 or 4 (those train
    directly). Axes of factor 2 are scaled in the first stage, axes of factor 4 in both.
    """
    fs = tuple(int(f) for f in factors)
    if not reads_x4_strategy(fs):
        return None
    first = tuple(2 if f in (2, 4) else 1 for f in fs)
    second = tuple(2 if f == 4 else 1 for f in fs)
    return first, second  # type: ignore[return-value]


def train_serial(
    train_volume: np.ndarray,
    holdout_volume: np.ndarray,
    *,
    factors: Sequence[int],
    settings: TrainSettings,
    voxel_size: Sequence[float] | None = None,
    work_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    amp: bool = True,
    take_up_any_finished: bool = False,
) -> TrainResult:
    """Serial ×4 (the Self-Vision authors' recipe): train ×2, apply, train a fresh ×2 on the output.

    Stage 1 learns ``factors / 2`` on the acquisition; it is applied to the training FOV
    and to the held-out region; stage 2 learns the remaining ×2 on those outputs (its
    own held-out validation runs on the stage-1 output of the held-out region). Each
    stage gets half of ``settings.max_minutes``. The composed model is then scored on
    the original held-out region degraded by the full factors against tricubic, and
    flagged ``model_worse_than_interpolation`` when it does not beat it.

    Parameters
    ----------
    train_volume, holdout_volume, factors, settings, voxel_size, work_dir, device, amp, take_up_any_finished
        As for :func:`train_enhance`.

    Returns
    -------
    TrainResult
        ``model`` is a :class:`selfres.ensemble.Serial`; ``stages`` holds both stages.
    """
    import dataclasses

    from .ensemble import Serial

    split = serial_split(factors)
    if split is None:
        raise ValueError(f"serial training needs a factor of 4 (and only 1, 2, 4); received {tuple(factors)}")
    f1, f2 = split
    device = torch.device(device)
    half = dataclasses.replace(settings, x4_strategy="direct", max_minutes=settings.max_minutes / 2)
    if settings.degradation.noise == "match":
        # each stage tops up its own inputs: stage 1 to the acquisition's noise through its own ×2,
        # stage 2 to the noise of stage 1's output, which is what it is applied to
        half = dataclasses.replace(half, degradation=dataclasses.replace(settings.degradation, noise_variance=None))
    wd = Path(work_dir) if work_dir else None
    if wd:
        for sub in ("stage1", "stage2"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r1 = train_enhance(train_volume, holdout_volume, factors=f1, settings=half, voxel_size=voxel_size,
                       work_dir=wd / "stage1" if wd else None, device=device, amp=amp,
                       take_up_any_finished=take_up_any_finished)
    tile = (32, 96, 96)
    up_train = predict_array(r1.model, train_volume, factors=f1, tile_size=tile, device=device, amp=amp)
    up_hold = predict_array(r1.model, holdout_volume, factors=f1, tile_size=tile, device=device, amp=amp)
    vs2 = None if voxel_size is None else tuple(v / f for v, f in zip(voxel_size, f1))
    r2 = train_enhance(up_train, up_hold, factors=f2, settings=half, voxel_size=vs2,
                       work_dir=wd / "stage2" if wd else None, device=device, amp=amp,
                       take_up_any_finished=take_up_any_finished)
    model = Serial(r1.model, r2.model).eval()
    model.lateral_rotations = r1.model.lateral_rotations and r2.model.lateral_rotations
    degradation = make_degradation(settings.degradation, voxel_size=voxel_size)
    blur = psf_target_blur_px(settings.psf_sigma_um, factors, voxel_size)
    target_h, low_h, interp_h = holdout_pair(psf_scaled_targets(holdout_volume, blur), factors, degradation)
    data_range = float(max(target_h.max() - target_h.min(), 1e-6))
    pred = predict_array(model, low_h, factors=factors, tile_size=tuple(max(8, min(64, n)) for n in low_h.shape),
                         device=device, amp=amp)
    val_model = psnr01(target_h, pred, data_range)
    val_interp = psnr01(target_h, interp_h, data_range)
    flags = [f for f in dict.fromkeys(r1.flags + r2.flags) if f != "model_worse_than_interpolation"]
    if not val_model > val_interp + settings.guard_margin_db or r1.coarse_scale_failed or r2.coarse_scale_failed:
        flags.append("model_worse_than_interpolation")
    log.info("serial ×%s: held-out %.2f dB vs tricubic %.2f dB (stage gains %+.2f, %+.2f dB)", factors, val_model,
             val_interp, r1.val_psnr_model - r1.val_psnr_interp, r2.val_psnr_model - r2.val_psnr_interp)
    rows = [dict(r, stage=1) for r in r1.log_rows] + [dict(r, stage=2) for r in r2.log_rows]
    return TrainResult(
        model=model, spec=r1.spec, best_step=r2.best_step, steps_done=r1.steps_done + r2.steps_done,
        seconds=time.monotonic() - t0 + r1.resumed_seconds + r2.resumed_seconds,
        resumed_seconds=r1.resumed_seconds + r2.resumed_seconds, stop_reason=f"{r1.stop_reason}+{r2.stop_reason}",
        val_psnr_model=val_model, val_psnr_interp=val_interp, flags=flags, log_rows=rows, stages=[r1, r2],
        holdout=(target_h, low_h, interp_h), settings=settings, taken_up=r1.taken_up and r2.taken_up,
        trained_ran_on=r1.trained_ran_on if r1.taken_up and r2.taken_up else None,
    )
