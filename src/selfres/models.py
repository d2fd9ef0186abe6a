"""Network factory, model folders (safetensors + JSON) and device helpers.

Enhance models (Self-Vision mode) map a low-resolution batch ``(B, 1, Z, Y, X)`` to
``(B, 1, Z·fz, Y·fy, X·fx)``; factors may be 1 on any axis. 2-D data is passed as
``Z = 1`` (or as ``(B, 1, Y, X)``, which is given a z axis of length 1); with
``dims=2`` every kernel has size 1 along z, so slices never mix.

Residual learning: ``out = base(x) + body(x)`` where ``base`` is the project's
Keys-cubic ("tricubic", :func:`selfres.degrade.upscale_cubic`) or trilinear
interpolation, always computed in float32 even under autocast. The body's last
convolution starts at zero, so an untrained model *is* the interpolation.

The isotropic model (Self-Net mode, ``"iso2d"``) is a 2-D residual CNN
``(B, 1, H, W) -> (B, 1, H, W)``, ``out = x + body(x)``.

Every model has ``.halo``: input voxels needed on each side, per axis, for tiled
inference to be exact. It is computed from the layers (sum of conv radii at low
resolution, plus the high-resolution conv radii divided by the factor, rounded up;
at least the interpolation's reach: 2 voxels for cubic, 1 for linear).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfres.errors import ConfigError, InputError
from selfres.atomic import permissions_as_umask
from selfres.io import file_checksum
from selfres.modelfile import (DESCRIPTION_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, read_description,
                                with_psf_record)

log = logging.getLogger("selfres.models")

__all__ = [
    "ARCHS",
    "ModelSpec",
    "autocast_context",
    "cuda_autocast_dtype",
    "cpu_has_native_bf16",
    "build_model",
    "count_parameters",
    "load_model",
    "pixel_shuffle_nd",
    "save_model",
    "select_device",
]

ARCHS = ("svision_paper", "svision_mini", "resnet3d", "iso2d")

# Per-architecture defaults: the one place they live (None in ModelSpec -> these).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "svision_paper": {"width": 16, "depth": 4, "dims": 3, "residual": "tricubic",
                      "factors": (2, 2, 2)},
    "svision_mini": {"width": 16, "depth": 4, "dims": 3, "residual": "tricubic",
                     "factors": (2, 2, 2)},
    "resnet3d": {"width": 32, "depth": 4, "dims": 3, "residual": "tricubic",
                 "factors": (2, 2, 2)},
    "iso2d": {"width": 48, "depth": 6, "dims": 2, "residual": "identity",
              "factors": (1, 1, 1)},
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and hyper-parameters of a network (JSON-able).

    Parameters
    ----------
    arch
        ``"svision_paper"`` (Self-Vision paper text), ``"svision_mini"`` (the
        authors' final code variant), ``"resnet3d"`` (selfres default: residual
        blocks at low resolution) or ``"iso2d"`` (2-D net for isotropic mode).
    factors
        Integer upscaling factors ``(z, y, x)`` >= 1; ``(1, 1, 1)`` for ``iso2d``.
        Default ``(2, 2, 2)`` for enhance models.
    width
        Feature channels (``resnet3d``: 32, ``iso2d``: 48). The ``svision_*``
        architectures are fixed and ignore it.
    depth
        Residual blocks (``resnet3d``: 4, ``iso2d``: 6); ignored by ``svision_*``.
    residual
        Base added to the body's output: ``"tricubic"`` (default for enhance),
        ``"trilinear"``, ``"none"``; ``iso2d`` always uses ``"identity"``.
    dims
        3 (default for enhance) or 2 (kernel size 1 along z; requires ``fz == 1``);
        ``iso2d`` is always 2.

    Notes
    -----
    Fields left at None are filled with the architecture's defaults on
    construction, so a stored spec always holds explicit values.
    """

    arch: Literal["svision_paper", "svision_mini", "resnet3d", "iso2d"] = "resnet3d"
    factors: tuple[int, int, int] | None = None
    width: int | None = None
    depth: int | None = None
    residual: Literal["tricubic", "trilinear", "none", "identity"] | None = None
    dims: Literal[2, 3] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model arch must be one of {', '.join(ARCHS)}; "
                              f"received {self.arch!r}")
        d = _DEFAULTS[self.arch]
        for name in ("factors", "width", "depth", "residual", "dims"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, d[name])
        try:
            fs = tuple(self.factors)  # type: ignore[arg-type]
        except TypeError:
            fs = ()
        if (len(fs) != 3 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1
                                for f in fs)):
            raise ConfigError(f"model factors must be three integers >= 1 (z, y, x); "
                              f"received {self.factors!r}")
        object.__setattr__(self, "factors", fs)
        for name, low in (("width", 1), ("depth", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"model {name} must be an integer >= {low}; "
                                  f"received {v!r}")
        if self.dims not in (2, 3):
            raise ConfigError(f"model dims must be 2 or 3; received {self.dims!r}")
        if self.arch == "iso2d":
            if fs != (1, 1, 1):
                raise ConfigError(f"arch 'iso2d' keeps the image size: factors must be "
                                  f"(1, 1, 1); received {fs}")
            if self.residual != "identity" or self.dims != 2:
                raise ConfigError(f"arch 'iso2d' needs residual 'identity' and dims 2; "
                                  f"received residual={self.residual!r}, "
                                  f"dims={self.dims!r}")
        else:
            if self.residual not in ("tricubic", "trilinear", "none"):
                raise ConfigError(f"model residual must be one of tricubic, trilinear, "
                                  f"none for arch {self.arch!r}; received "
                                  f"{self.residual!r}")
            if self.dims == 2 and fs[0] != 1:
                raise ConfigError(f"model dims 2 needs a z factor of 1; received "
                                  f"factors {fs}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (factors as a list)."""
        d = asdict(self)
        d["factors"] = list(self.factors)  # type: ignore[arg-type]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Build a spec from :meth:`to_dict` output; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model spec must be a mapping; received "
                              f"{type(data).__name__}")
        allowed = {"arch", "factors", "width", "depth", "residual", "dims"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown model spec keys {unknown}; allowed: "
                              f"{sorted(allowed)}")
        kw = dict(data)
        if isinstance(kw.get("factors"), list):
            kw["factors"] = tuple(kw["factors"])
        return cls(**kw)


# ----------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int, dims: int, *, groups: int = 1,
          dilation: int = 1) -> nn.Module:
    """'same' Conv3d; kernel size 1 along z when ``dims == 2``."""
    kz = 1 if dims == 2 else k
    dz = 1 if dims == 2 else dilation
    pad = ((kz - 1) // 2 * dz, (k - 1) // 2 * dilation, (k - 1) // 2 * dilation)
    return nn.Conv3d(cin, cout, (kz, k, k), padding=pad, groups=groups,
                     dilation=(dz, dilation, dilation))


def _conv_radius(module: nn.Module, ndim: int) -> tuple[int, ...]:
    """Sum of the conv radii of a chain (identity skips allowed), per axis."""
    r = [0] * ndim
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            for i in range(ndim):
                r[i] += (m.kernel_size[i] - 1) // 2 * m.dilation[i]
    return tuple(r)


def pixel_shuffle_nd(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """3-D sub-pixel shuffle with per-axis factors.

    ``(B, C·fz·fy·fx, Z, Y, X) -> (B, C, Z·fz, Y·fy, X·fx)``.
    """
    b, c, z, y, xx = x.shape
    fz, fy, fx = factors
    r = fz * fy * fx
    if c % r:
        raise ValueError(f"pixel_shuffle_nd: {c} channels are not divisible by "
                         f"fz·fy·fx = {r}")
    x = x.reshape(b, c // r, fz, fy, fx, z, y, xx)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // r, z * fz, y * fy, xx * fx)


class _PixelShuffle(nn.Module):
    def __init__(self, factors: tuple[int, int, int]) -> None:
        super().__init__()
        self.factors = factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_nd(x, self.factors)


class _Nearest(nn.Module):
    def __init__(self, factors: tuple[int, int, int]) -> None:
        super().__init__()
        self.factors = factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dim, f in zip((2, 3, 4), self.factors):
            if f > 1:
                x = x.repeat_interleave(f, dim=dim)
        return x


class _ResBlock(nn.Module):
    """``x + scale · conv(PReLU(conv(x)))``."""

    def __init__(self, width: int, dims: int, *, scale: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width, 3, dims), nn.PReLU(width),
                                  _conv(width, width, 3, dims))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body(x)
        return x + (b if self.scale == 1.0 else self.scale * b)  # scale 1: folded into the conv (inference)


class _Base(nn.Module):
    """Interpolation added to the body's output (float32, autocast off)."""

    def __init__(self, kind: str, factors: tuple[int, int, int]) -> None:
        super().__init__()
        self.kind = kind
        self.factors = factors

    def reach(self) -> tuple[int, int, int]:
        """Input voxels each side that one output voxel depends on, per axis."""
        per = {"tricubic": 2, "trilinear": 1, "none": 0}[self.kind]
        return tuple(per if f > 1 else 0 for f in self.factors)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.kind == "tricubic":
                from selfres.degrade import upscale_cubic

                return upscale_cubic(x, self.factors)
            size = tuple(n * f for n, f in zip(x.shape[2:], self.factors))
            return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class EnhanceNet(nn.Module):
    """LR ``(B, 1, Z, Y, X)`` -> HR: ``base(x) + hr_body(up(lr_body(x)))``.

    Parameters
    ----------
    lr_body
        Layers at low resolution.
    up
        Upsampling module (pixel shuffle or nearest).
    hr_body
        Layers at high resolution; its last module is the output conv.
    factors
        ``(fz, fy, fx)``.
    residual
        ``"tricubic"``, ``"trilinear"`` or ``"none"``.
    """

    def __init__(self, lr_body: nn.Module, up: nn.Module, hr_body: nn.Sequential,
                 factors: tuple[int, int, int], residual: str) -> None:
        super().__init__()
        self.lr_body = lr_body
        self.up = up
        self.hr_body = hr_body
        self.factors = factors
        self.base = _Base(residual, factors)
        if residual != "none":
            last = hr_body[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        r_lr = _conv_radius(lr_body, 3)
        r_hr = _conv_radius(hr_body, 3)
        body = tuple(a + math.ceil(b / f) for a, b, f in zip(r_lr, r_hr, factors))
        self.halo: tuple[int, ...] = tuple(max(a, b) for a, b in zip(body, self.base.reach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 4
        if squeeze:
            if self.factors[0] != 1:
                raise ValueError(f"a 2-D batch {tuple(x.shape)} needs a z factor of 1; "
                                 f"the model has factors {self.factors}")
            x = x[:, :, None]
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected a batch (B, 1, Z, Y, X) or (B, 1, Y, X); "
                             f"received shape {tuple(x.shape)}")
        base = self.base(x)
        if base is None and torch.is_autocast_enabled(x.device.type):
            # no float32 base to add the correction to: the last conv in float32, or mixed
            # precision would quantise the whole output (bf16 keeps ~0.4 %)
            feats = self.hr_body[:-1](self.up(self.lr_body(x)))
            with torch.autocast(device_type=x.device.type, enabled=False):
                y = self.hr_body[-1](feats.float())
        else:
            y = self.hr_body(self.up(self.lr_body(x)))
        if base is not None:  # in place when no graph is recorded (saves one HR float32 array), never
            # into the caller's input: with factors 1,1,1 the "upsampled" base is x itself
            in_place = not torch.is_grad_enabled() and base.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
            y = base.add_(y) if in_place else base + y
        return y[:, :, 0] if squeeze else y


class Iso2dNet(nn.Module):
    """2-D residual CNN ``(B, 1, H, W) -> x + body(x)`` for isotropic mode.

    Parameters
    ----------
    width
        Feature channels.
    depth
        Blocks ``x + conv1x1(PReLU(conv3x3_dilated(x)))``, dilations cycling 1, 2, 4
        (large receptive field for strong axial blur at ~140 k parameters).
    """

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.PReLU(width))
        blocks = []
        for i in range(depth):
            d = (1, 2, 4)[i % 3]
            blocks.append(_Res2d(nn.Sequential(
                nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.PReLU(width),
                nn.Conv2d(width, width, 1))))
        self.blocks = nn.Sequential(*blocks)
        self.tail = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.halo: tuple[int, ...] = _conv_radius(self, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"iso2d expects a batch (B, 1, H, W); received shape "
                             f"{tuple(x.shape)}")
        return x + self.tail(self.blocks(self.head(x)))


class _Res2d(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network described by ``spec``.

    Parameters
    ----------
    spec
        A :class:`ModelSpec`.

    Returns
    -------
    torch.nn.Module
        With attributes ``halo`` (per-axis input voxels needed each side) and, for
        enhance models, ``factors``.

    Notes
    -----
    - ``svision_paper``: Conv(1,16,5)+PReLU, Conv(16,6,3)+PReLU,
      4 × [Conv(6,6,3, groups=2)+PReLU], Conv(6, 16·fz·fy·fx, 3) (sub-pixel conv),
      pixel shuffle, Conv(16,1,5).
    - ``svision_mini``: Conv(1,16,5)+PReLU, Conv(16,12,1)+PReLU,
      4 × [Conv(12,12,3)+PReLU], Conv(12,16,1)+PReLU, nearest upsample,
      Conv(16,1,3); no clamp (18,553 parameters at factors (2, 2, 2)).
    - ``resnet3d``: Conv(1,w,3)+PReLU, ``depth`` × residual block
      (conv3-PReLU-conv3, scaled 0.1), Conv(w,w,3) with a skip from the head,
      nearest upsample, Conv(w,1,3) at high resolution.

    PReLUs have one slope per channel.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model expects a ModelSpec; received {type(spec).__name__}")
    if spec.arch == "iso2d":
        return Iso2dNet(spec.width, spec.depth)  # type: ignore[arg-type]
    fs, dims = spec.factors, spec.dims
    r = fs[0] * fs[1] * fs[2]  # type: ignore[index]
    if spec.arch == "svision_paper":
        lr = nn.Sequential(
            _conv(1, 16, 5, dims), nn.PReLU(16), _conv(16, 6, 3, dims), nn.PReLU(6),
            *[m for _ in range(4) for m in (_conv(6, 6, 3, dims, groups=2), nn.PReLU(6))],
            _conv(6, 16 * r, 3, dims))
        up: nn.Module = _PixelShuffle(fs)  # type: ignore[arg-type]
        hr = nn.Sequential(_conv(16, 1, 5, dims))
    elif spec.arch == "svision_mini":
        lr = nn.Sequential(
            _conv(1, 16, 5, dims), nn.PReLU(16), _conv(16, 12, 1, dims), nn.PReLU(12),
            *[m for _ in range(4) for m in (_conv(12, 12, 3, dims), nn.PReLU(12))],
            _conv(12, 16, 1, dims), nn.PReLU(16))
        up = _Nearest(fs)  # type: ignore[arg-type]
        hr = nn.Sequential(_conv(16, 1, 3, dims))
    else:
        w = spec.width
        lr = _ResNetTrunk(w, spec.depth, dims)  # type: ignore[arg-type]
        up = _Nearest(fs)  # type: ignore[arg-type]
        hr = nn.Sequential(_conv(w, 1, 3, dims))  # type: ignore[arg-type]
    return EnhanceNet(lr, up, hr, fs, spec.residual)  # type: ignore[arg-type]


class _ResNetTrunk(nn.Module):
    def __init__(self, width: int, depth: int, dims: int) -> None:
        super().__init__()
        self.head = nn.Sequential(_conv(1, width, 3, dims), nn.PReLU(width))
        self.blocks = nn.Sequential(*[_ResBlock(width, dims) for _ in range(depth)])
        self.fuse = _conv(width, width, 3, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return h + self.fuse(self.blocks(h))


def lateral_rotations(factors: Sequence[int], voxel_size: Sequence[float] | None) -> bool:
    """Whether 90° rotations in the (y, x) plane keep the task the same: equal y and x
    factors and voxel sizes (unknown: taken as equal). Training augments with them only
    then, and the self-ensemble averages over them only then (a rotation otherwise feeds
    the net data whose y and x sampling it never saw)."""
    if int(factors[1]) != int(factors[2]):
        return False
    return voxel_size is None or abs(float(voxel_size[1]) - float(voxel_size[2])) < 1e-6 * max(float(voxel_size[1]), 1e-9)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------


def save_model(directory: str | Path, model: nn.Module, spec: ModelSpec, *,
               metadata: Mapping[str, Any] | None = None) -> None:
    """Write a model folder: ``weights.safetensors`` and ``model.json``.

    Parameters
    ----------
    directory
        Folder to write (created if missing); existing files are replaced.
    model
        The network (its ``state_dict`` is saved, moved to the CPU).
    spec
        Its :class:`ModelSpec`.
    metadata
        JSON-able extra information (training settings, normalisation, ...); trained with a
        measured PSF (``settings.degradation.method`` ``psf``), the PSF file's path and
        SHA-256 are added as ``psf`` (:func:`selfres.modelfile.with_psf_record`).

    Notes
    -----
    Both files are written under temporary names and renamed, weights first, so a
    reader never sees a ``model.json`` whose checksum does not match its weights
    file unless the weights were damaged afterwards.
    """
    from safetensors.torch import save_file

    import selfres

    from .codeinfo import code_identity

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in model.state_dict().items()}
    w_path, j_path = directory / WEIGHTS_FILE, directory / DESCRIPTION_FILE
    w_tmp = directory / f".{WEIGHTS_FILE}.tmp"
    j_tmp = directory / f".{DESCRIPTION_FILE}.tmp"
    save_file(tensors, str(w_tmp), metadata={"format": "pt"})
    permissions_as_umask(w_tmp)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "n_parameters": count_parameters(model),
        "halo": list(getattr(model, "halo", ())),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": file_checksum(w_tmp),
        "metadata": dict(with_psf_record(metadata)) if metadata is not None else {},  # + the PSF's SHA-256
        "torch_version": torch.__version__,
        "selfres_version": getattr(selfres, "__version__", None),
        "selfres_code": code_identity(),  # which code trained it (the digest also says so for uncommitted code)
    }
    text = json.dumps(info, indent=2, sort_keys=True)  # fails early if not JSON-able
    j_tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(w_tmp, w_path)
    os.replace(j_tmp, j_path)


def load_model(directory: str | Path, *, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load a model folder written by :func:`save_model` (no pickle).

    Parameters
    ----------
    directory
        The model folder.
    device
        Device to put the model on.

    Returns
    -------
    tuple
        ``(model in eval mode, spec, contents of model.json)``. An enhance model's
        ``lateral_rotations`` (whether :class:`selfres.ensemble.SelfEnsemble` may rotate it) is
        set from the factors and voxel size it was trained with, as training set it.

    Raises
    ------
    InputError
        ``model.json`` missing or invalid, weights missing, checksum mismatch, or
        weights not matching the architecture.
    """
    from safetensors.torch import load_file

    info, w_path = read_description(directory)
    try:
        spec = ModelSpec.from_dict(info["spec"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise InputError(Path(directory) / DESCRIPTION_FILE, f"invalid model description ({exc})") from exc
    device = torch.device(device)
    try:
        state = load_file(str(w_path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(w_path, f"cannot read the weights file ({exc}); delete it "
                                 f"to retrain") from exc
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(w_path, f"the weights do not match the architecture in "
                                 f"model.json ({exc})") from exc
    meta = info.get("metadata") or {}
    if meta.get("factors"):  # enhance: the self-ensemble rotates only where a rotation keeps the task the same
        model.lateral_rotations = lateral_rotations(meta["factors"], meta.get("voxel_size_in"))
    return model.to(device).eval(), spec, info


# ----------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------


def keeps_callers_random_state(train):
    """``train`` (a training function with a ``device`` argument, which seeds torch's global
    generator for its weights) run in a fork of that generator: the caller's random stream is
    as it was afterwards (a notebook's draws after each training were the same "random"
    numbers), and the training's own numbers are unchanged. CUDA's generator is forked only
    for a CUDA training (forking it creates a CUDA context)."""
    import inspect

    signature = inspect.signature(train)

    @functools.wraps(train)
    def forked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        device = torch.device(bound.arguments.get("device") or "cpu")
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return train(*args, **kwargs)

    return forked


def gpu_allocated(env: Mapping[str, str] | None = None) -> bool:
    """Whether the job was given a GPU (Slurm, or a user, set ``CUDA_VISIBLE_DEVICES`` to one
    or more devices; empty, ``-1`` or ``NoDevFiles`` mean none)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "").strip()
    return value not in ("", "-1", "NoDevFiles")


def _use_cuda(device: torch.device) -> torch.device:
    """Make ``device`` the current CUDA device: queries such as bf16 support and the memory
    in use then ask that GPU, not GPU 0."""
    if device.index is not None:  # plain "cuda" is the current device already
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def exact_float32_cuda() -> Iterator[None]:
    """TF32 off inside: float32 convolutions and matrix products on a GPU stay float32.
    PyTorch allows TF32 for convolutions by default, which rounds their inputs to 10 bits
    on Ampere and later GPUs — not what a ``cuda/float32`` label, or the noise measured with
    mixed precision off, expects. (Process-wide flags, restored on exit.)"""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


#: The GPU this process claimed (:func:`claim_gpu`): its index and the open lock file that
#: holds the claim until the process exits.
_CLAIMED_GPU: list = []

#: The last device preference :func:`select_device` was given (``ran_on`` records it: a CPU
#: chosen by name is not a GPU left unused).
_REQUESTED: list = []


def claim_gpu(count: int, lock_dir: str | Path | None = None) -> int:
    """Index of a GPU of this machine that no other selfres job holds, claimed until this
    process exits (an exclusive ``flock`` on ``selfres-gpu-N.lock`` in ``lock_dir``:
    ``SELFRES_GPU_LOCK_DIR`` or the temporary folder). Snakemake's local executor runs
    ``--resources gpu=N`` jobs side by side without telling each which GPU is its own, and
    plain ``cuda`` is GPU 0 in every one of them. When every GPU is held (more jobs than
    GPUs), the one with the most free memory as NVML reports it (``nvidia-ml-py``), without a CUDA
    context on each GPU (``torch.cuda.mem_get_info`` made one on every GPU, others' included,
    and fails on a GPU in exclusive-process mode); without NVML, one by the process id. The
    same index for later calls of a process, in both cases.
    """
    if _CLAIMED_GPU:
        return _CLAIMED_GPU[0]
    import tempfile

    try:
        import fcntl
    except ImportError:  # not POSIX: no claim
        return 0
    folder = Path(lock_dir or os.environ.get("SELFRES_GPU_LOCK_DIR") or tempfile.gettempdir())
    for index in range(count):
        path = folder / f"selfres-gpu-{index}.lock"
        try:  # another account's file: opened without O_CREAT (fs.protected_regular refuses that in /tmp)
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
                os.fchmod(fd, 0o666)  # whatever the umask: every account's jobs share the GPUs
            except OSError:
                continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _CLAIMED_GPU[:] = [index, fd]
        return index
    try:  # NVML, through torch: no CUDA context is made
        free = [torch.cuda.get_device_properties(i).total_memory - torch.cuda.device_memory_used(i)
                for i in range(count)]
        index = int(max(range(count), key=free.__getitem__))
    except Exception as exc:  # noqa: BLE001 - no NVML (nvidia-ml-py) or an older driver: spread jobs by process id
        index = os.getpid() % count
        log.debug("every GPU is held; no free memory from NVML (%s): GPU %d by process id", exc, index)
    _CLAIMED_GPU[:] = [index, None]  # shared, not locked: nothing to release
    return index


def select_device(preference: str = "auto") -> torch.device:
    """Choose the compute device.

    Parameters
    ----------
    preference
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        Unknown preference, or CUDA asked for but not available.
    """
    p = str(preference).strip().lower()
    _REQUESTED[:] = [p]
    if p == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if count > 1 and not gpu_allocated():  # a workstation's GPUs, none given to this job
                index = claim_gpu(count)
                log.info("%d GPUs and none assigned to this job (CUDA_VISIBLE_DEVICES unset): using cuda:%d",
                         count, index)
                return _use_cuda(torch.device(f"cuda:{index}"))
            return _use_cuda(torch.device("cuda"))
        if gpu_allocated():
            log.warning("a GPU was allocated to this job (CUDA_VISIBLE_DEVICES=%s) but torch cannot use it (a CPU "
                        "build of torch, or no driver on this node): computing on the CPU; install the CUDA build "
                        "of torch where the GPU jobs run", os.environ.get("CUDA_VISIBLE_DEVICES"))
        return torch.device("cpu")
    if p == "cpu":
        return torch.device("cpu")
    if p == "cuda" or (p.startswith("cuda:") and p[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} requested but CUDA is not "
                              f"available (torch {torch.__version__}); use 'cpu' or "
                              f"'auto'")
        if ":" in p and int(p[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"device {preference!r} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) exist")
        return _use_cuda(torch.device(p))
    raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N; received "
                      f"{preference!r}")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16).

    On such CPUs oneDNN's bf16 convolutions run about twice as fast as float32; on
    others bf16 is emulated and slower, so it is not used. ``SELFRES_CPU_BF16=0`` (or
    ``1``) overrides the detection.
    """
    env = os.environ.get("SELFRES_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cuda_native_bf16() -> bool:
    """The GPU computes bfloat16 natively (Ampere and later); older GPUs only emulate it,
    slowly or not at all for 3-D convolutions, and ``torch.cuda.is_bf16_supported()``
    counts emulation unless told not to."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - a torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def cuda_autocast_dtype(*, training: bool) -> torch.dtype | None:
    """Autocast dtype on CUDA: bfloat16 where native; else float16 for inference, and
    none (float32) for training, which would need loss scaling to train in float16."""
    if cuda_native_bf16():
        return torch.bfloat16
    return None if training else torch.float16


#: CUDA errors that memory running out also raises, under other words: cuDNN tries each
#: convolution algorithm, drops those whose workspace does not fit, and says it found no
#: engine when none is left; cuBLAS cannot create its handle without memory. Each also has
#: another cause (a torch build without kernels for the GPU), so the error that ends the
#: halving names them (:func:`memory_error_cause`).
ALSO_OUT_OF_MEMORY = ("unable to find an engine to execute this computation", "unable to find a valid cudnn algorithm",
                      "cublas_status_not_initialized")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error of the accelerator (CUDA, MPS) or the allocator, and for
    the CUDA errors that memory running out raises under other words (:data:`ALSO_OUT_OF_MEMORY`)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        what in text for what in ("out of memory", "can't allocate memory",
                                  # cuDNN's and cuBLAS's own workspace allocations under memory pressure
                                  "cudnn_status_alloc_failed", "cublas_status_alloc_failed", *ALSO_OUT_OF_MEMORY))


def memory_error_cause(exc: BaseException) -> str:
    """For the error that ends a halving: what the accelerator said, where its words are not
    plainly out of memory (:data:`ALSO_OUT_OF_MEMORY`); else ``""``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not any(what in text.lower() for what in ALSO_OUT_OF_MEMORY):
        return ""
    return (f" The accelerator's error was '{text[:200]}', which CUDA raises when memory runs out and also when "
            "this torch build has no kernels for the GPU: if a small volume fails the same way, check that "
            "torch.cuda.get_arch_list() names the GPU's architecture (nvidia-smi --query-gpu=compute_cap "
            "--format=csv).")


def autocast_context(device: str | torch.device, *, enabled: bool, cpu: bool = False, training: bool = False
                     ) -> contextlib.AbstractContextManager:
    """Mixed-precision context.

    Parameters
    ----------
    device
        The compute device.
    enabled
        False: float32 (exact float32 on CUDA outside training, see below).
    cpu
        Also use bfloat16 on a CPU that computes it natively
        (:func:`cpu_has_native_bf16`). Inference passes True; training keeps float32
        on CPU.
    training
        Training: on a GPU without native bfloat16, float32 (:func:`cuda_autocast_dtype`).

    Returns
    -------
    contextlib.AbstractContextManager
        bf16 autocast on CUDA (fp16 where the GPU has no bf16), bf16 on a capable CPU
        when ``cpu``, else float32. On CUDA outside training, whatever is float32 is exact
        float32 (:func:`exact_float32_cuda`): the whole pass without mixed precision, and
        with it the precision-sensitive parts that switch autocast off inside (the cubic
        base, the back-projection step, a base-less network's last conv). Training keeps
        PyTorch's TF32 default, for speed.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device, enabled=enabled, cpu=cpu, training=training)
    exact = device.type == "cuda" and not training  # the float32 parts of inference too (autocast off inside)
    if dtype is None:
        return exact_float32_cuda() if exact else contextlib.nullcontext()
    if not exact:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return _exact_float32_and_autocast(device.type, dtype)


@contextlib.contextmanager
def _exact_float32_and_autocast(device_type: str, dtype: torch.dtype) -> Iterator[None]:
    with exact_float32_cuda(), torch.autocast(device_type=device_type, dtype=dtype):
        yield


def autocast_dtype(device: str | torch.device, *, enabled: bool, cpu: bool = False, training: bool = False
                   ) -> torch.dtype | None:
    """The reduced precision :func:`autocast_context` computes in (same arguments), or
    ``None`` for float32."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == "cuda":
        return cuda_autocast_dtype(training=training)
    if device.type == "cpu" and cpu and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def ran_on(device: str | torch.device) -> dict[str, Any]:
    """Where a job computes, for provenance: ``device`` (``cuda``, ``cuda:1``, ``cpu``), the
    device's name (the GPU model, e.g. ``NVIDIA A100-SXM4-40GB``; the CPU model), the host,
    and on Slurm the job id and the GPUs it was given (``SLURM_JOB_GPUS``, or inside a job
    step ``SLURM_STEP_GPUS``: the node's GPU indices — the Slurm executor runs each rule in a
    step whose environment keeps only the latter; ``CUDA_VISIBLE_DEVICES``: as the job sees them)."""
    import platform
    import socket

    device = torch.device(device)
    name = None
    if device.type == "cuda":
        try:
            name = torch.cuda.get_device_name(device)
        except Exception:  # noqa: BLE001 - provenance must never fail a job
            name = None
    else:
        name = _cpu_model() or platform.processor() or platform.machine() or None
    return {"device": str(device), "device_name": name, "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            # the node's GPU indices Slurm gave the job (in an srun step: the step's)
            "slurm_job_gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "requested": _REQUESTED[0] if _REQUESTED else None,  # auto, cpu, cuda…: as asked
            "torch_threads": torch.get_num_threads()}  # a CPU's results depend on it (summation order)


def _cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        return None
    return None


def compute_label(device: str | torch.device, *, amp: bool) -> str:
    """How inference computes on ``device``, and with which selfres code, e.g.
    ``cuda/bfloat16 code 1a2b3c4d``: tiles made under different labels can differ, so a
    resumed or scattered store records it per tile, and a block (or a resumed job) recomputes
    the tiles an earlier run made another way — after an update of selfres too."""
    from .codeinfo import source_digest

    device = torch.device(device)
    dtype = autocast_dtype(device, enabled=amp, cpu=True) or torch.float32
    return f"{device.type}/{str(dtype).removeprefix('torch.')} code {source_digest()[:8]}"
