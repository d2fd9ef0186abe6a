"""Typed settings of every stage, with their defaults in one place.

The package never reads ``config.yaml``. The workflow passes each stage its settings
as a JSON object (``--settings``), which is parsed here into frozen dataclasses; unknown
keys and out-of-range values are refused with a message naming them. The workflow's
JSON schema (``workflow/schemas/config.schema.yaml``) repeats these defaults for
documentation and validation; a test checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import typing
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Literal, Sequence

from .errors import ConfigError, InputError


#: ``enhance``'s output grid when no scale is given: ×2 on every axis (the config's ``scale``
#: default; a test checks that the schema agrees).
DEFAULT_SCALE = (2, 2, 2)


def parse_triple(text, *, name: str, kind=float, sample: str | None = None) -> tuple | None:
    """Parse ``"a,b,c"`` (or a sequence) into a 3-tuple of positive, finite ``kind``;
    ``None``/empty → None."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() in ("", "nan", "None"):
        return None
    who = f"sample {sample!r}: " if sample else ""
    parts = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        vals = tuple(kind(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{who}{name} {text!r} must be three {'integers' if kind is int else 'numbers'} z,y,x") from None
    if len(vals) != 3 or not all(0 < v < math.inf for v in vals):
        raise ConfigError(f"{who}{name} {text!r} must be three positive {'integers' if kind is int else 'numbers'} "
                          "z,y,x")
    return vals


#: A validation counts as an improvement (a new kept checkpoint) when its score beats the best by
#: more than this, dB (training's selection; the report says so beside the training curves)
MIN_GAIN_DB = 0.01


VOXEL_SIZE_RANGE_UM = (1e-6, 1e4)
"""Voxel sizes selfres accepts, in µm: 1 pm to 1 cm. Outside it a size is a unit mistake
(metres or nanometres read as µm), and its arithmetic (the figures' scale bars, resolution
in µm) overflows: a voxel size of 1e308 µm crashed the report after the whole training."""


STORED_VOXEL_SIZE_RANGE_UM = (1e-9, 1e7)
"""Voxel sizes the readers take from metadata, in µm: 1000 times wider each way than
:data:`VOXEL_SIZE_RANGE_UM`, for selfres's own outputs (×4 finer) and pyramid levels (2ⁿ coarser)."""


def voxel_size_problem(values, *, limits: tuple[float, float] = VOXEL_SIZE_RANGE_UM) -> str | None:
    """Why the voxel size ``values`` (z,y,x µm, positive) is outside ``limits``, else ``None``."""
    low, high = limits
    if all(low <= v <= high for v in values):
        return None
    return f"a voxel size must be within {low:g}..{high:g} µm on each axis (given in another unit?)"


#: A voxel size given in the sheet that is this many times the file's own (or less by as much) on
#: an axis is flagged ``voxel_size_unlike_file``: a unit slip (nm typed for µm: 1000×) more often
#: than a correction; a binned acquisition whose metadata kept the camera's pixel differs by 2-4×
VOXEL_SIZE_SLIP_RATIO = 10.0


# isotropic mode's grid: the anisotropy factor a voxel size gives (here, without torch, so that a
# run's start can check the sample sheet's isotropic rows)
#: Smallest anisotropy factor isotropic mode accepts: below it z is sampled (nearly) as
#: finely as x/y, and the output grid would gain less than 10 % of slices (none at all
#: while round(nz · f) == nz, i.e. f < 1 + 0.5 / nz): nothing to restore on the grid.
MIN_ISOTROPIC_FACTOR = 1.1
#: Largest anisotropy factor isotropic mode accepts. Beyond it more than 95 % of the output
#: slices are invented and the output is f times the input's size; such a factor almost
#: always comes from a unit mix-up (a z step in nm, a lateral pixel in mm), e.g.
#: ``500,0.2,0.2`` for 0.5 µm z steps: f = 2500, a training and output without end.
MAX_ISOTROPIC_FACTOR = 20.0


def square_pixels(voxel_size: Sequence[float]) -> bool:
    """The lateral pixel sizes (y, x of ``voxel_size`` z,y,x) agree within 5 %: z can be matched
    to both (otherwise to their mean, and the output is not isotropic)."""
    vy, vx = float(voxel_size[1]), float(voxel_size[2])
    return abs(vy - vx) <= 0.05 * max(vy, vx)


def isotropic_factor(voxel_size: Sequence[float] | None, *, path: str = "<volume>",
                     sample: str | None = None, warn: bool = True) -> float:
    """Anisotropy factor ``f = voxel_z / voxel_xy`` (may be non-integer).

    Raises
    ------
    InputError
        Voxel size unknown; z finer than the lateral pixel; ``f`` below
        :data:`MIN_ISOTROPIC_FACTOR` (already isotropic: nothing to restore) or above
        :data:`MAX_ISOTROPIC_FACTOR` (implausible: most likely a unit mix-up).
    """
    if voxel_size is None:
        raise InputError(path, "isotropic mode needs the voxel size: give it in the sample sheet column "
                               "voxel_size (z,y,x in µm; selfres restore: --voxel-size; config inbox_columns for "
                               "inbox acquisitions) or in the file metadata",
                         sample=sample)
    vz, vy, vx = (float(v) for v in voxel_size)
    vxy = 0.5 * (vy + vx)
    f = vz / vxy
    given = f"voxel size z,y,x {vz:g}, {vy:g}, {vx:g} µm"
    if f < 1.0 - 1e-6:
        lateral = f"{vxy:g} µm" if square_pixels(voxel_size) else f"y {vy:g}, x {vx:g} µm: mean {vxy:g}"
        raise InputError(path, f"{given}: the z voxel ({vz:g} µm) is finer than the lateral pixel ({lateral}); isotropic "
                               "mode restores stacks whose z spacing is coarser than x/y (check the voxel size's "
                               "order: z,y,x; for a finer lateral grid use mode enhance with scale 1,2,2)",
                         sample=sample)
    if f < MIN_ISOTROPIC_FACTOR * (1 - 1e-9):  # 0.22 / 0.2 is 1.0999999999999999: 1.1 is allowed
        raise InputError(path, f"{given}: the z step is {f:.3g}x the lateral pixel, so the stack is already "
                               f"(nearly) isotropic and there is nothing to restore on the z grid; isotropic mode "
                               f"needs a z step of at least {MIN_ISOTROPIC_FACTOR:g}x the lateral pixel (for a finer "
                               "grid on every axis use mode enhance)", sample=sample)
    if f > MAX_ISOTROPIC_FACTOR * (1 + 1e-9):
        raise InputError(path, f"{given}: the z step is {f:.4g}x the lateral pixel; isotropic mode allows at most "
                               f"{MAX_ISOTROPIC_FACTOR:g}x. Check the units: voxel sizes are in µm, and a z step "
                               "written in nm (or a lateral pixel in mm) gives such a factor; correct it in the sample "
                               "sheet column voxel_size (selfres restore: --voxel-size), which overrides the file "
                               "metadata", sample=sample)
    # said only for a voxel size the mode takes (not at a run's start: the sample's own crop says it); a
    # refused one's error says what is wrong (a walkthrough: x,y,z typed read this warning first)
    if warn and not square_pixels(voxel_size):
        logging.getLogger("selfres.isotropic").warning(
            "lateral voxel sizes differ (y %.4g, x %.4g µm); using their mean", vy, vx)
    return f


def voxel_size_unlike_file(given: Sequence[float] | None, recorded: Sequence[float] | None) -> bool:
    """Whether the voxel size ``given`` (sheet) is :data:`VOXEL_SIZE_SLIP_RATIO` times or more
    the file's ``recorded`` one, or as much less, on any axis (``False`` when either is missing)."""
    if not given or not recorded:
        return False
    return any(max(g / f, f / g) >= VOXEL_SIZE_SLIP_RATIO for g, f in zip(given, recorded) if g > 0 and f > 0)


def voxel_size_reordered(given: Sequence[float] | None, recorded: Sequence[float] | None) -> bool:
    """Whether the voxel size ``given`` is the file's ``recorded`` one in another order (within
    1 % each): x,y,z typed for z,y,x, say (``False`` when either is missing, or they are equal)."""
    if not given or not recorded or len(given) != len(recorded):
        return False

    def close(a, b):
        return abs(a - b) <= 0.01 * max(abs(a), abs(b))

    same = all(close(g, f) for g, f in zip(given, recorded))
    return not same and all(close(g, f) for g, f in zip(sorted(given), sorted(recorded)))


def voxel_size_slip_text(given: Sequence[float], recorded: Sequence[float]) -> str:
    """The warning for a voxel size ``given`` unlike the file's ``recorded`` one
    (:func:`voxel_size_unlike_file`): both, z,y,x µm, and what selfres does with them."""
    def text(v):
        return ",".join(f"{x:.4g}" for x in v)

    return (f"the sheet's voxel size {text(given)} µm (z,y,x) is {VOXEL_SIZE_SLIP_RATIO:g} times or more unlike the "
            f"{text(recorded)} µm its file records (nm typed for µm?); selfres uses the sheet's, and its qc flags "
            "voxel_size_unlike_file. If the sheet's is right, nothing needs doing")


def parse_voxel_size(text, *, name: str, sample: str | None = None) -> tuple[float, float, float] | None:
    """Parse a voxel size ``"z,y,x"`` in µm (:func:`parse_triple`), within :data:`VOXEL_SIZE_RANGE_UM`."""
    vals = parse_triple(text, name=name, kind=float, sample=sample)
    problem = None if vals is None else voxel_size_problem(vals)
    if problem:
        who = f"sample {sample!r}: " if sample else ""
        raise ConfigError(f"{who}{name} {text!r}: {problem}")
    return vals


#: Fewest low-resolution voxels a training pair needs along an axis scaled by f > 1:
#: the training input is the training FOV downscaled once more by f.
MIN_LOWRES_VOXELS = 2


def parse_scale(text, *, name: str = "scale", sample: str | None = None) -> tuple[int, int, int] | None:
    """Parse an ``enhance`` scale ``"z,y,x"`` (:func:`parse_triple` of integers); ``None``/empty → None.

    Raises
    ------
    ConfigError
        Not three positive integers, or 1 on every axis: that output is the input's own grid,
        yet a whole model would be trained (and judged against a tricubic that is the input).
    """
    vals = parse_triple(text, name=name, kind=int, sample=sample)
    if vals == (1, 1, 1):
        who = f"sample {sample!r}: " if sample else ""
        raise ConfigError(f"{who}{name} {text if isinstance(text, str) else ','.join(map(str, text))!r} is 1 on "
                          "every axis: enhance would restore nothing (the output grid is the input's); give a factor "
                          "of 2 or more on at least one axis z,y,x, e.g. 1,2,2 (lateral only) or 2,2,2")
    return vals


def _within_schema(key: str, value: Any, *, minimum: float | None = None, exclusive_minimum: float | None = None,
                   maximum: float | None = None) -> None:
    """Refuse ``value`` of the setting ``key`` (a number, or each number of a triple) outside the bounds
    the config schema gives it, in the schema check's words: ``selfres restore --settings`` and the
    stage commands are not checked against the schema (a learning rate of -0.001 failed training
    with 'this is a bug'). ``None`` passes (an optional value not given)."""
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
        if v is None:
            continue
        if minimum is not None and v < minimum:
            raise ConfigError(f"{key}: {v!r} is less than the minimum of {minimum!r}")
        if exclusive_minimum is not None and v <= exclusive_minimum:
            raise ConfigError(f"{key}: {v!r} is less than or equal to the minimum of {exclusive_minimum!r}")
        if maximum is not None and v > maximum:
            raise ConfigError(f"{key}: {v!r} is greater than the maximum of {maximum!r}")


@dataclass(frozen=True)
class NormaliseSettings:
    """Robust percentile normalisation (values map ``low → 0``, ``high → 1``)."""

    low_percentile: float = 1.0
    high_percentile: float = 99.8
    max_sample_voxels: int = 4_000_000

    def validate(self) -> None:
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError(
                "normalise: need 0 <= low_percentile < high_percentile <= 100, got "
                f"{self.low_percentile} and {self.high_percentile}"
            )
        _within_schema("normalise.max_sample_voxels", self.max_sample_voxels, minimum=1000)


@dataclass(frozen=True)
class FovSettings:
    """Choice of the training field of view and the held-out region."""

    max_voxels: int = 2_000_000
    holdout_fraction: float = 0.2
    min_holdout_voxels: int = 4096

    def validate(self) -> None:
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise ConfigError(
                f"fov.holdout_fraction must be within 0.05..0.5, got {self.holdout_fraction}"
            )
        if self.max_voxels < 4096:
            raise ConfigError(f"fov.max_voxels must be >= 4096, got {self.max_voxels}")
        _within_schema("fov.min_holdout_voxels", self.min_holdout_voxels, minimum=64)


@dataclass(frozen=True)
class DegradationSettings:
    """How training inputs are made from targets (see :mod:`selfres.degrade`)."""

    method: Literal["cubic", "block", "gaussian", "psf"] = "cubic"
    """``cubic``: antialiased Keys cubic (MATLAB ``imresize``); ``block``: the block mean (pixel
    binning); ``gaussian``: a Gaussian PSF, then the block mean; ``psf``: a measured PSF, then
    the block mean."""
    sigma_um: tuple[float, float, float] | None = None
    na: float | None = None
    wavelength_um: float | None = None
    refractive_index: float | None = None
    microscope: Literal["widefield", "confocal", "two_photon"] = "widefield"
    psf_path: str | None = None
    noise: Literal["none", "poisson_gaussian", "match"] = "match"
    """``match``: top up every degraded input's noise to the acquisition's own level, estimated
    from the training FOV (:mod:`selfres.noise`); ``poisson_gaussian``: fixed ``gain`` and
    ``read_sigma``."""
    gain: float = 100.0
    read_sigma: float = 0.0
    noise_variance: tuple[float, float] | None = None
    """With ``noise: match``: the top-up's variance ``slope·intensity + floor`` (normalised
    units). Training fills it in from the data (recorded in ``model.json``); a value given
    here is used as it is."""

    def validate(self) -> None:
        if self.noise_variance is not None:
            if self.noise != "match":
                raise ConfigError(f"train.degradation.noise_variance is used only with noise 'match'; received it with "
                                  f"noise {self.noise!r}")
            if len(self.noise_variance) != 2 or min(self.noise_variance) < 0:
                raise ConfigError(f"train.degradation.noise_variance must be two numbers >= 0 (slope, floor); received "
                                  f"{list(self.noise_variance)}")
        if self.method == "psf" and not self.psf_path:
            raise ConfigError("train.degradation.method 'psf' needs train.degradation.psf_path")
        if self.method == "gaussian" and self.sigma_um is None and self.na is None:
            raise ConfigError(
                "train.degradation.method 'gaussian' needs train.degradation.sigma_um or "
                "train.degradation.na + wavelength_um + refractive_index"
            )
        if self.na is not None and (self.wavelength_um is None or self.refractive_index is None):
            raise ConfigError("train.degradation.na needs wavelength_um and refractive_index too")
        _within_schema("train.degradation.sigma_um", self.sigma_um, minimum=0)
        for name in ("na", "wavelength_um", "refractive_index", "gain"):
            _within_schema(f"train.degradation.{name}", getattr(self, name), exclusive_minimum=0)
        _within_schema("train.degradation.read_sigma", self.read_sigma, minimum=0)


@dataclass(frozen=True)
class TrainSettings:
    """Per-sample training of the restoration network."""

    arch: Literal["resnet3d", "svision_mini", "svision_paper"] = "resnet3d"
    width: int = 16
    depth: int = 2
    residual: Literal["tricubic", "trilinear", "none"] = "tricubic"
    x4_strategy: Literal["direct", "serial"] = "direct"
    loss: Literal["mse", "l1", "l1_fft", "charbonnier", "charbonnier_ssim"] = "l1"
    steps: int = 200
    max_minutes: float = 4.0
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (8, 48, 48)
    learning_rate: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 25
    validate_every: int = 25
    patience: int = 8
    guard_margin_db: float = 0.2
    guard_confidence: float = 0.95
    """When nothing was learned (best step 0: the output is tricubic + back-projection /
    self-ensemble), it also passes the guard when its held-out gain is above 0 at this
    confidence (block bootstrap, :func:`selfres.metrics.psnr_gain_interval`), however small;
    0 turns that off (the margin alone decides). Learned networks always need the margin."""
    scale_check: bool = True
    blur_augment: float = 1.0
    """Fraction of training patches whose target is first blurred by a random Gaussian (σ drawn
    uniformly up to ``blur_augment_sigma_px``·sqrt(f² − 1) voxels on each axis with a factor
    f > 1): the network also sees the blur-to-voxel ratios of the finer grid it is applied to,
    and sharpens point-like objects less past their width there
    (:func:`selfres.train.blur_targets`). 0: off. Not used with ``psf_sigma_um``, whose
    PSF-scaled targets already have the output grid's ratio."""
    blur_augment_sigma_px: float = 1.0
    structure_weighting: float = 0.5
    augment: bool = True
    seed: int = 0
    degradation: DegradationSettings = field(default_factory=DegradationSettings)
    psf_sigma_um: tuple[float, float, float] | None = None
    """The acquisition's PSF as a Gaussian σ (z, y, x, µm). When given, training targets are
    blurred so that their blur-to-voxel ratio is that of the output grid (PSF-scaled targets,
    :func:`selfres.train.psf_scaled_targets`); for PSF-limited, point-like samples."""

    def validate(self) -> None:
        if self.psf_sigma_um is not None and (
            len(self.psf_sigma_um) != 3 or any(not (v >= 0) for v in self.psf_sigma_um)
        ):
            raise ConfigError(f"train.psf_sigma_um must be three sigmas z,y,x >= 0 in µm, got {self.psf_sigma_um}")
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if any(p < 1 for p in self.patch_size) or len(self.patch_size) != 3:
            raise ConfigError(f"train.patch_size must be three positive ints z,y,x, got {self.patch_size}")
        if not 0 <= self.blur_augment <= 1:
            raise ConfigError(f"train.blur_augment must be within 0..1, got {self.blur_augment}")
        if not self.blur_augment_sigma_px > 0:
            raise ConfigError(f"train.blur_augment_sigma_px must be > 0, got {self.blur_augment_sigma_px}")
        if not 0 <= self.structure_weighting <= 1:
            raise ConfigError(
                f"train.structure_weighting must be within 0..1, got {self.structure_weighting}"
            )
        if self.validate_every < 1:
            raise ConfigError(f"train.validate_every must be >= 1, got {self.validate_every}")
        if self.guard_margin_db < 0:
            raise ConfigError(f"train.guard_margin_db must be >= 0, got {self.guard_margin_db}")
        if not (self.guard_confidence == 0 or 0.5 <= self.guard_confidence < 1):
            raise ConfigError(f"train.guard_confidence must be 0 (off), or at least 0.5 and below 1, "
                              f"got {self.guard_confidence}")
        _within_schema("train.width", self.width, minimum=4, maximum=256)
        _within_schema("train.depth", self.depth, minimum=1, maximum=32)
        _within_schema("train.max_minutes", self.max_minutes, exclusive_minimum=0)
        _within_schema("train.learning_rate", self.learning_rate, exclusive_minimum=0)
        _within_schema("train.warmup_steps", self.warmup_steps, minimum=0)
        _within_schema("train.patience", self.patience, minimum=1)
        self.degradation.validate()


@dataclass(frozen=True)
class InferSettings:
    """Whole-FOV inference."""

    tile_size: tuple[int, int, int] = (32, 128, 128)
    batch_size: int = 1
    gpu_memory_fraction: float = 0.5
    ensemble: bool = False
    back_projection_iterations: int = 1
    back_projection_shrink: bool = True
    amp: bool = True
    on_worse_than_interpolation: Literal["interpolation", "model"] = "interpolation"
    output_dtype: Literal["float32", "input"] = "float32"
    ngff_version: Literal["0.4", "0.5"] = "0.4"
    blocks: int = 1
    chunks: tuple[int, int, int] | None = None
    shards: tuple[int, int, int] | None = None

    def validate(self) -> None:
        if any(t < 1 for t in self.tile_size):
            raise ConfigError(f"infer.tile_size must be positive, got {self.tile_size}")
        if self.blocks < 1:
            raise ConfigError(f"infer.blocks must be >= 1, got {self.blocks}")
        if self.batch_size < 1:
            raise ConfigError(f"infer.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.gpu_memory_fraction <= 0.95:
            raise ConfigError(f"infer.gpu_memory_fraction must be in [0, 0.95], got {self.gpu_memory_fraction}")
        if self.back_projection_iterations < 0:
            raise ConfigError(
                f"infer.back_projection_iterations must be >= 0, got {self.back_projection_iterations}")
        for name in ("chunks", "shards"):
            v = getattr(self, name)
            if v is not None and any(c < 1 for c in v):
                raise ConfigError(f"infer.{name} must be three positive ints z,y,x or null, got {v}")
        if self.shards is not None:
            if self.ngff_version != "0.5":
                raise ConfigError("infer.shards needs infer.ngff_version '0.5' (Zarr v3); "
                                  f"got ngff_version {self.ngff_version!r}")
            if self.chunks is None or any(s % c for s, c in zip(self.shards, self.chunks)):
                raise ConfigError(f"infer.shards {self.shards} must be a multiple of infer.chunks "
                                  f"{self.chunks} (set both)")


@dataclass(frozen=True)
class QcSettings:
    """Quality control and metrics."""

    beads: bool = False
    resolution: bool = True
    max_resolution_slices: int = 16

    def validate(self) -> None:
        _within_schema("qc.max_resolution_slices", self.max_resolution_slices, minimum=1)


#: the ``train`` values isotropic mode reads (its restorer has its own net, loss, steps and
#: patches in ``isotropic``; of ``train.degradation`` only the optics / PSF that give the
#: axial σ; ``psf_sigma_um`` too, where given: :func:`isotropic_train_values`): the workflow
#: passes an isotropic sample these alone, so that changing another neither retrains it nor
#: is recorded for it
ISOTROPIC_TRAIN_KEYS = ("seed", "augment", "learning_rate", "lr_schedule", "warmup_steps", "max_minutes",
                        "patience", "validate_every", "guard_margin_db", "degradation")
ISOTROPIC_DEGRADATION_KEYS = ("method", "sigma_um", "na", "wavelength_um", "refractive_index", "microscope",
                              "psf_path")


def isotropic_train_values(train: dict) -> dict:
    """The values of a ``train`` section (a dict) that isotropic mode reads; ``psf_sigma_um``
    only where given (the axial σ's last source before the estimate), so that the text of a
    train section without it is as before it was read."""
    out = {k: v for k, v in train.items() if k in ISOTROPIC_TRAIN_KEYS}
    if train.get("psf_sigma_um") is not None:
        out["psf_sigma_um"] = train["psf_sigma_um"]
    if "degradation" in out:
        out["degradation"] = {k: v for k, v in out["degradation"].items() if k in ISOTROPIC_DEGRADATION_KEYS}
    return out


#: ``InferSettings`` keys only enhance mode reads (isotropic inference has no self-ensemble or
#: back-projection): left out of an isotropic sample's settings, its job's fingerprint and provenance
ENHANCE_ONLY_INFER_KEYS = ("ensemble", "back_projection_iterations", "back_projection_shrink")

#: ``IsotropicSettings`` keys read by inference only: each infer job's values apply (changing
#: them re-infers, never retrains), not those of the sample that trained the model
ISOTROPIC_INFERENCE_KEYS = ("fusion", "infer_batch")

#: Inference values that decide how a job runs, not what it writes: tiles per forward pass,
#: the share of free GPU memory a pass may fill, 2-D slices per pass of isotropic inference.
#: The workflow gives them to a job apart from its ``--settings`` (``selfres infer
#: --execution``, from a job resource, which Snakemake does not compare between runs), so that
#: changing one reruns nothing (:func:`split_execution`). The restored store's fingerprint and
#: ``provenance.json`` leave them out.
EXECUTION_KEYS = {"infer": ("batch_size", "gpu_memory_fraction"), "isotropic": ("infer_batch",)}


def split_execution(sections: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``sections`` (settings as dicts) as two: the same with every :data:`EXECUTION_KEYS`
    value given as its default — the same keys as before, so that a configuration that did not
    change gives the same text, and reruns nothing, after an update — and those values as
    given (sections without one left out)."""
    defaults = _default_sections()
    decisive: dict[str, Any] = dict(sections)
    execution: dict[str, Any] = {}
    for section, keys in EXECUTION_KEYS.items():
        values = sections.get(section)
        if isinstance(values, Mapping) and any(k in values for k in keys):
            decisive[section] = _pinned(values, defaults[section], [k for k in values if k not in keys])
            execution[section] = {k: values[k] for k in keys if k in values}
    return decisive, execution


def without_execution(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``sections`` (settings as dicts) without their :data:`EXECUTION_KEYS` values."""
    return {name: ({k: v for k, v in values.items() if k not in EXECUTION_KEYS.get(name, ())}
                   if isinstance(values, Mapping) else values) for name, values in sections.items()}


def merge_execution(given: Mapping[str, Any], execution: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` settings (dicts) with the :data:`EXECUTION_KEYS` values of ``execution`` put in
    (:func:`split_execution` undone); any other value in ``execution`` is a :class:`ConfigError`,
    since the workflow would not rerun a job for it."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in given.items()}
    allowed = ", ".join(f"{s}.{k}" for s, ks in EXECUTION_KEYS.items() for k in ks)
    for section, values in execution.items():
        if not isinstance(values, Mapping) or not isinstance(out.get(section, {}), dict):
            raise ConfigError(f"settings section {section!r} must be a mapping")
        other = [k for k in values if k not in EXECUTION_KEYS.get(section, ())]
        if other:
            raise ConfigError(f"--execution takes only values that do not change the output ({allowed}); "
                              f"got {section}.{other[0]}: give it in --settings")
        out[section] = {**out.get(section, {}), **values}
    return out


#: The settings sections each workflow stage receives: changing one value reruns exactly
#: the stages (and samples) that read it (:func:`stage_settings`).
STAGE_SECTIONS = {
    "normalise": ("normalise",),
    "crop": ("fov",),
    "train": ("train", "isotropic"),
    "infer": ("infer", "isotropic"),
    "qc": ("qc",),
    "adopt": ("train", "isotropic"),
}

#: ``infer`` values an ``enhance`` training reads: the guard scores the model with the
#: inference extras, with mixed precision or not.
GUARD_INFER_KEYS = ("amp", *ENHANCE_ONLY_INFER_KEYS)


def reads_x4_strategy(factors: Sequence[int]) -> bool:
    """Whether ``train.x4_strategy`` applies to these factors: a factor of 4, the others 1, 2 or
    4 (``serial`` then trains two ×2 stages); other factors always train directly."""
    fs = tuple(int(f) for f in factors)
    return 4 in fs and all(f in (1, 2, 4) for f in fs)


#: the ``train`` values of the ``resnet3d`` network's shape, which the paper's fixed networks ignore
RESNET_SHAPE_KEYS = ("width", "depth")


def settings_used_by_mode(sections: Mapping[str, Any], mode: str, *, adopting: bool = False,
                          config_sections: Mapping[str, Any] | None = None,
                          scale: Sequence[int] | None = None) -> dict[str, Any]:
    """``sections`` (a sample's settings, as dicts) in canonical form (:func:`canonical_sections`)
    without the values its mode does not read, so that changing one neither reruns nor is
    recorded for samples it cannot affect: no ``isotropic`` section for ``enhance``; for
    ``isotropic`` only the ``train`` values it reads (none of ``train.degradation`` when
    ``isotropic.axial_sigma_px`` gives the axial σ) and no self-ensemble or back-projection;
    with a PSF given, no blurred targets. The ``train.degradation`` values its method and noise
    leave unread (:func:`degradation_keys_read`) are given as their defaults, as are the other
    values a sample's choices leave unread: the learned degradation's with ``isotropic.degradation``
    analytic, ``isotropic.fft_weight`` without the ``l1_fft`` loss, ``train.blur_augment_sigma_px``
    with ``train.blur_augment`` 0, ``train.width`` / ``depth`` with the paper's fixed networks,
    ``train.x4_strategy`` where the ``enhance`` sample's ``scale`` (when given) has no factor of 4,
    and ``infer.chunks`` / ``infer.shards`` in isotropic mode. A sample that is
    ``adopting`` another sample's model (``model_from``) reads of ``train`` only the guard's
    values (:data:`ADOPT_TRAIN_KEYS`), and no ``isotropic`` training value: the others are given
    as ``config_sections`` (the config's own sections, without the sample's sheet columns; None:
    the defaults) has them. Given, not left out: the same keys as before, so that a config that
    did not change gives the same text (and reruns nothing) after an update."""
    out = canonical_sections(sections)
    defaults = _default_sections()
    if mode != "isotropic":
        out.pop("isotropic", None)
    if adopting:
        base = canonical_sections(config_sections) if config_sections is not None else {}
        if "train" in out:
            out["train"] = _pinned(out["train"], base.get("train") or defaults["train"], ADOPT_TRAIN_KEYS[mode])
        if "isotropic" in out:
            out["isotropic"] = _pinned(out["isotropic"], base.get("isotropic") or defaults["isotropic"],
                                       ISOTROPIC_INFERENCE_KEYS)
    if "train" in out:
        train = out["train"]
        # isotropic with the axial σ given reads no degradation value (isotropic.resolve_degradation)
        sigma_given = mode == "isotropic" and (out.get("isotropic") or {}).get("axial_sigma_px") is not None
        if mode == "isotropic":
            train = isotropic_train_values(train)
            method = (train.get("degradation") or {}).get("method", defaults["train"]["degradation"]["method"])
            if sigma_given or adopting or method in ("gaussian", "psf"):  # the axial σ comes from elsewhere
                train.pop("psf_sigma_um", None)  # (an adopted model brings its own)
        elif train.get("psf_sigma_um") is not None:  # blurred targets are off with a PSF
            train = {k: v for k, v in train.items() if not k.startswith("blur_augment")}
        if isinstance(train.get("degradation"), dict):
            deg = train["degradation"]
            train = {**train, "degradation": _pinned(deg, defaults["train"]["degradation"],
                                                     () if sigma_given else degradation_keys_read(deg))}
        out["train"] = train
    if mode == "isotropic" and "infer" in out:
        infer = {k: v for k, v in out["infer"].items() if k not in ENHANCE_ONLY_INFER_KEYS}
        # isotropic inference writes chunks of its own (one per slice tile)
        out["infer"] = _pinned(infer, defaults["infer"], set(infer) - {"chunks", "shards"})
    if isinstance(out.get("isotropic"), dict):
        iso = out["isotropic"]
        unread = set()
        if iso.get("degradation") != "learned":
            unread |= set(ISOTROPIC_LEARNED_DEGRADATION_KEYS)
        if iso.get("loss") != "l1_fft":
            unread.add("fft_weight")
        out["isotropic"] = _pinned(iso, defaults["isotropic"], set(iso) - unread)
    train = out.get("train")
    if mode != "isotropic" and isinstance(train, dict):
        unread = set()
        if train.get("blur_augment") == 0:
            unread.add("blur_augment_sigma_px")
        if train.get("arch", defaults["train"]["arch"]) != "resnet3d":
            unread |= set(RESNET_SHAPE_KEYS)
        if scale is not None and not reads_x4_strategy(scale):
            unread.add("x4_strategy")
        out["train"] = _pinned(train, defaults["train"], set(train) - unread)
    return out


#: ``isotropic`` values read only with ``isotropic.degradation: learned`` (the generator's training)
ISOTROPIC_LEARNED_DEGRADATION_KEYS = ("gan_steps", "gan_max_minutes", "gan_width", "gan_depth", "gan_weight",
                                      "cycle_weight", "feedback_weight")


#: the ``train`` values an adopting sample (``model_from``) reads: the guard's, which judge the
#: source's model on this sample's held-out region (isotropic mode has no confidence test)
ADOPT_TRAIN_KEYS = {"enhance": ("guard_margin_db", "guard_confidence"), "isotropic": ("guard_margin_db",)}


def degradation_keys_read(degradation: Mapping[str, Any]) -> set[str]:
    """The ``train.degradation`` keys read for its ``method`` and ``noise``: ``sigma_um`` for
    ``gaussian``, the optics (``na``, ``wavelength_um``, ``refractive_index``, ``microscope``)
    for ``gaussian`` without ``sigma_um``, ``psf_path`` for ``psf``; ``gain`` and
    ``read_sigma`` for noise ``poisson_gaussian``, ``noise_variance`` for ``match``."""
    default = DegradationSettings()
    method = degradation.get("method", default.method)
    noise = degradation.get("noise", default.noise)
    read = {"method", "noise"}
    if method == "gaussian":
        read.add("sigma_um")
        if degradation.get("sigma_um") is None:
            read |= {"na", "wavelength_um", "refractive_index", "microscope"}
    elif method == "psf":
        read.add("psf_path")
    if noise == "poisson_gaussian":
        read |= {"gain", "read_sigma"}
    elif noise == "match":
        read.add("noise_variance")
    return read


@functools.lru_cache(maxsize=1)
def _default_sections() -> dict[str, Any]:
    """``to_dict(Settings())``, built once (read, never changed: :func:`_pinned` copies)."""
    return to_dict(Settings())


def _pinned(values: Mapping[str, Any], defaults: Mapping[str, Any], read) -> dict[str, Any]:
    """``values`` with those of keys not in ``read`` replaced by their ``defaults`` (same keys)."""
    return {k: (v if k in read or k not in defaults else defaults[k]) for k, v in values.items()}


def psf_file(sections: Mapping[str, Any]) -> str | None:
    """The measured PSF a sample's training reads (``train.degradation.psf_path`` with method
    ``psf``, as its train job receives it), else None."""
    deg = canonical_sections({"train": (sections.get("train") or {})}).get("train", {}).get("degradation") or {}
    if deg.get("method") == "psf" and isinstance(deg.get("psf_path"), str) and deg["psf_path"]:
        return deg["psf_path"]
    return None


def stage_settings(sections: Mapping[str, Any], *, stage: str, mode: str,
                   config_sections: Mapping[str, Any] | None = None,
                   scale: Sequence[int] | None = None) -> dict[str, Any]:
    """The settings one workflow stage of a sample receives (its ``--settings``), in canonical
    form (:func:`canonical_sections`: the same values written otherwise give the same text):
    the sections of :data:`STAGE_SECTIONS` that its mode reads (:func:`settings_used_by_mode`);
    isotropic training never reads :data:`ISOTROPIC_INFERENCE_KEYS`, isotropic inference
    nothing else; ``normalise`` gets the output's NGFF version, an ``enhance`` training (and
    ``adopt``, whose ``train`` values but the guard's are ``config_sections``'s) the
    :data:`GUARD_INFER_KEYS`."""
    out = settings_used_by_mode({k: sections[k] for k in STAGE_SECTIONS[stage] if k in sections}, mode,
                                adopting=stage == "adopt", config_sections=config_sections, scale=scale)
    if "isotropic" in out:
        keep = (lambda k: k in ISOTROPIC_INFERENCE_KEYS) if stage == "infer" else (lambda k: k not in ISOTROPIC_INFERENCE_KEYS)
        out["isotropic"] = {k: v for k, v in out["isotropic"].items() if keep(k)}
    infer = canonical_sections({"infer": sections["infer"]})["infer"] if "infer" in sections else {}
    if stage == "normalise":
        out["infer"] = {"ngff_version": infer["ngff_version"]}
    if stage in ("train", "adopt") and mode == "enhance":
        out["infer"] = {k: infer[k] for k in GUARD_INFER_KEYS}
    return out


def _canonical(tp: Any, value: Any, key: str) -> Any:
    """``value`` of a setting of type ``tp`` in canonical form (:func:`canonical_values`)."""
    if dataclasses.is_dataclass(tp):
        return canonical_values(tp, value, prefix=key) if isinstance(value, Mapping) else value
    typed = _coerce(tp, value, key)
    if key.rsplit(".", 1)[-1] in PATH_KEYS and isinstance(typed, str) and typed:
        return os.path.normpath(typed)
    return json.loads(json.dumps(typed))


#: settings that name a file: canonical with :func:`os.path.normpath` (``./psf.tif`` is ``psf.tif``)
PATH_KEYS = ("psf_path",)


def canonical_values(cls: type, values: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """The values of a (partial) section of the settings dataclass ``cls``, same keys, each in
    one canonical form: read as the stage reads it (:func:`from_dict`), then written as JSON —
    a number of a float setting as a float (``1`` and ``1.0`` are ``1.0``, ``1e-3`` is
    ``0.001``), of an integer setting as an integer; a triple as a list of such numbers (a sheet
    cell ``2,0.5, 0.5`` and config.yaml's ``[2.0, 0.5, 0.5]`` are ``[2.0, 0.5, 0.5]``); a file path
    normalised (``./psf.tif`` is ``psf.tif``). A value that does not read (unknown key, wrong
    type) is kept as it is: the stage names it."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        try:
            out[k] = _canonical(hints[k], v, key) if k in hints else v
        except ConfigError:
            out[k] = v
    return out


def canonical_sections(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Stage sections (``train``, ``infer``…, as dicts) in canonical form (:func:`canonical_values`):
    the same values written otherwise (``1`` / ``1.0``, ``./psf.tif`` / ``psf.tif``) give the
    same JSON, so that rewriting a value reruns nothing."""
    hints = typing.get_type_hints(Settings)
    return {k: (canonical_values(hints[k], v, prefix=k) if k in hints and isinstance(v, Mapping) else v)
            for k, v in sections.items()}


def canonical_triple_text(text: Any, *, kind=float) -> str:
    """A sheet's ``voxel_size`` (or, ``kind=int``, ``scale``) as the text its jobs receive: the
    three numbers in their shortest form, comma-separated (``2.0, 0.5,0.5`` is ``2,0.5,0.5``);
    empty for none; text that does not read as three numbers is returned stripped (its job
    names the mistake)."""
    try:
        vals = parse_triple(text, name="", kind=kind)
    except ConfigError:
        return str(text).strip()
    if vals is None:
        return ""
    return ",".join(_shortest(v) for v in vals)


def _shortest(v: float) -> str:
    r = repr(v)
    return r[:-2] if r.endswith(".0") else r


@dataclass(frozen=True)
class IsotropicSettings:
    """``isotropic`` mode (Self-Net): how lateral slices teach the axial ones.

    ``train`` settings (max_minutes, learning rate and schedule, validation, patience,
    augment, seed) apply to the 2-D restoration net too; these add what is specific to
    isotropic restoration, including the 2-D net's own step limit, loss, width, depth and
    (square) patch size (see ``docs/isotropic.md``).
    """

    degradation: Literal["analytic", "learned"] = "analytic"
    steps: int = 1000
    loss: Literal["mse", "l1", "l1_fft", "charbonnier", "charbonnier_ssim"] = "l1_fft"
    fft_weight: float = 0.3
    width: int = 32
    depth: int = 4
    patch_size: int = 64
    axial_sigma_px: float | None = None
    noise_match: bool = True
    fusion: Literal["mean", "geometric"] = "mean"
    batch_size: int = 8
    foreground_fraction: float = 0.05
    infer_batch: int = 8
    gan_steps: int = 600
    gan_max_minutes: float = 8.0
    gan_width: int = 16
    gan_depth: int = 3
    gan_weight: float = 0.1
    cycle_weight: float = 1.0
    feedback_weight: float = 1.0

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"isotropic.steps must be >= 1, got {self.steps}")
        if self.fft_weight < 0:
            raise ConfigError(f"isotropic.fft_weight must be >= 0, got {self.fft_weight}")
        if self.axial_sigma_px is not None and not 0 <= self.axial_sigma_px <= 50:
            raise ConfigError(f"isotropic.axial_sigma_px must be within 0..50 (or null: estimated), "
                              f"got {self.axial_sigma_px}")
        for name in ("width", "depth", "batch_size", "infer_batch", "gan_steps", "gan_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"isotropic.{name} must be >= 1, got {getattr(self, name)}")
        if self.gan_depth < 0:
            raise ConfigError(f"isotropic.gan_depth must be >= 0, got {self.gan_depth}")
        if not 0 <= self.foreground_fraction <= 1:
            raise ConfigError(f"isotropic.foreground_fraction must be within 0..1, got {self.foreground_fraction}")
        if self.gan_max_minutes <= 0:
            raise ConfigError(f"isotropic.gan_max_minutes must be > 0, got {self.gan_max_minutes}")
        for name in ("gan_weight", "cycle_weight", "feedback_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"isotropic.{name} must be >= 0, got {getattr(self, name)}")
        _within_schema("isotropic.width", self.width, maximum=256)
        _within_schema("isotropic.depth", self.depth, maximum=32)
        _within_schema("isotropic.patch_size", self.patch_size, minimum=8)


@dataclass(frozen=True)
class Settings:
    """All stage settings of one sample."""

    normalise: NormaliseSettings = field(default_factory=NormaliseSettings)
    fov: FovSettings = field(default_factory=FovSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    infer: InferSettings = field(default_factory=InferSettings)
    qc: QcSettings = field(default_factory=QcSettings)
    isotropic: IsotropicSettings = field(default_factory=IsotropicSettings)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            part = getattr(self, f.name)
            if hasattr(part, "validate"):
                part.validate()


#: Minutes a train job asks of a cluster beyond its time budgets (reading the volume, the noise
#: and defect search, the final checks, a slow node's start) — :func:`train_job_minutes`
TRAIN_JOB_SLACK_MINUTES = 60


def train_job_minutes(settings: Settings, mode: str) -> int:
    """The walltime (minutes) a train job needs at most: its time budgets — ``train.max_minutes``,
    in ``isotropic`` mode with the ``learned`` degradation also ``isotropic.gan_max_minutes``,
    which runs before it — half as long again (a step and a validation may start just before
    the budget ends), plus :data:`TRAIN_JOB_SLACK_MINUTES`. The ``train`` rule's ``runtime``
    (× the attempt), so that a cluster neither kills a long budget nor books four hours for a
    few minutes' training (a short request is scheduled sooner)."""
    budget = settings.train.max_minutes
    if mode == "isotropic" and settings.isotropic.degradation == "learned":
        budget += settings.isotropic.gan_max_minutes
    return TRAIN_JOB_SLACK_MINUTES + int(math.ceil(1.5 * budget))


def settings_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """The stage sections of a workflow config (``normalise``, ``fov``, ``train``, ``infer``,
    ``qc``, ``isotropic``: the fields of :class:`Settings`), copied."""
    return {f.name: json.loads(json.dumps(config[f.name])) for f in dataclasses.fields(Settings) if f.name in config}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Coerce a JSON value to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if (value not in args and isinstance(value, (int, float)) and not isinstance(value, bool)
                and str(value) in args):
            value = str(value)  # a sheet cell 0.5 is read as a number; the choice is the text "0.5"
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if not math.isfinite(number):  # nan compares false with every bound, so no bound catches it
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        if tp is int:
            if not number.is_integer():
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            return int(number) if not isinstance(value, int) else value
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a (partial) mapping; missing keys take defaults.

    Raises
    ------
    ConfigError
        For unknown keys (named) and values of the wrong type or outside the choices.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        where = prefix or cls.__name__
        close = {u: difflib.get_close_matches(u, sorted(names), n=1) for u in unknown}
        hints_text = "".join(f" (did you mean {c[0]!r} for {u!r}?)" for u, c in close.items() if c)
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}{hints_text}; allowed: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-able dict of a settings dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def parse_settings(text: str | dict | None) -> Settings:
    """Parse the JSON given to ``--settings`` (partial; defaults fill the rest)."""
    if text is None or text == "":
        return Settings()
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings is not valid JSON: {exc}") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise ConfigError(f"--settings must be a JSON object of sections, e.g. '{{\"train\": {{\"steps\": 500}}}}'; "
                          f"got {json.dumps(data)[:80]}")
    return from_dict(Settings, _nested(data))


def _nested(data: dict) -> dict:
    """``{"train.steps": 10}`` (the README's and the sheet's dotted names) as ``{"train": {"steps": 10}}``,
    merged with the nested keys given beside it (:func:`merge_settings`)."""
    out: dict = {}
    for key, value in data.items():
        *path, last = str(key).split(".")
        item = {last: _nested(value) if isinstance(value, dict) else value}
        for part in reversed(path):
            item = {part: item}
        merge_settings(out, item)
    return out


def merge_settings(base: dict, overrides: dict) -> dict:
    """``base`` (config sections) with ``overrides`` (a sheet row's, :func:`selfres.sheet.sample_overrides`)
    merged in, nested sections key by key; ``base`` is changed and returned."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_settings(base[key], value)
        else:
            base[key] = value
    return base
