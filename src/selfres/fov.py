"""Choice of the training field of view (FOV) and of a held-out region.

Training sees only the training FOV; self-validation uses the held-out region, which
is disjoint from it, so the "does the model beat tricubic?" figure is honest.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import ConfigError, InputError

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

_FOV_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class TrainingFov:
    """Training FOV and held-out region, as ``((z0, z1), (y0, y1), (x0, x1))`` in input voxels."""

    train: Box
    holdout: Box
    source: str
    reason: str
    scores: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = [list(a) for a in self.train]
        d["holdout"] = [list(a) for a in self.holdout]
        d["train_shape"] = box_shape(self.train)
        d["holdout_shape"] = box_shape(self.holdout)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingFov":
        return cls(
            train=tuple(tuple(int(v) for v in a) for a in d["train"]),
            holdout=tuple(tuple(int(v) for v in a) for a in d["holdout"]),
            source=d["source"],
            reason=d["reason"],
            scores=d.get("scores", {}),
        )

    def save(self, path: str | Path) -> None:
        from .io import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainingFov":
        return cls.from_dict(json.loads(Path(path).read_text()))


def box_shape(box: Box) -> list[int]:
    return [b - a for a, b in box]


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in box)


def boxes_overlap(a: Box, b: Box) -> bool:
    return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(a, b))


def parse_fov(text: str, shape: tuple[int, int, int]) -> Box:
    """Parse ``"z0:z1,y0:y1,x0:x1"`` (input voxels, end exclusive) and check it fits ``shape``."""
    m = _FOV_RE.match(str(text))
    if not m:
        raise ConfigError(f"training_fov {text!r} is not of the form z0:z1,y0:y1,x0:x1 (integers)")
    v = [int(g) for g in m.groups()]
    box = ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))
    for (a, b), n, name in zip(box, shape, "zyx"):
        if not 0 <= a < b <= n:
            raise ConfigError(
                f"training_fov {text!r}: {name} range {a}:{b} is empty or outside the volume (size {n})"
            )
    return box


def structure_map(volume: np.ndarray) -> np.ndarray:
    """Per-voxel structure score: gradient magnitude of the lightly smoothed volume.

    ``volume`` may be lazy (dask, zarr): it is read, and the score computed, a slab of z
    at a time with enough neighbouring slices that every value is the one a single pass
    over the whole volume gives, so memory holds the float32 score and one slab's work
    (a single pass held ~23 bytes per voxel).
    """
    shape = tuple(int(n) for n in volume.shape)
    sig = [1.0 if n > 3 else 0.0 for n in shape]
    # z neighbours a slab needs: the Gaussian's radius (truncate 4 σ) plus one for the gradient
    halo = (int(4.0 * sig[0] + 0.5) + 1) if shape[0] > 1 else 0
    step = max(1, STRUCTURE_SLAB_VOXELS // max(1, shape[1] * shape[2]))
    out = np.empty(shape, dtype=np.float32)
    for z0 in range(0, shape[0], step):
        z1 = min(shape[0], z0 + step)
        a, b = max(0, z0 - halo), min(shape[0], z1 + halo)
        v = np.asarray(volume[a:b], dtype=np.float32)
        # exact in the slab's core: its halo holds the neighbours; at the volume's own ends the
        # slab ends there too, so mirroring and one-sided differences are the whole pass's
        sm = ndimage.gaussian_filter(v, sig, mode="mirror")
        grads = [np.gradient(sm, axis=ax) for ax in range(3) if shape[ax] > 1]
        out[z0:z1] = np.sqrt(sum(g * g for g in grads))[z0 - a:z1 - a]
    return out


#: Voxels of one slab of :func:`structure_map` (its work holds ~23 bytes per voxel).
STRUCTURE_SLAB_VOXELS = 4 * 2**20


def _window_means(score: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Mean of ``score`` over every placement of ``window`` (valid placements only)."""
    c = np.pad(score.astype(np.float64), [(1, 0)] * 3).cumsum(0).cumsum(1).cumsum(2)
    wz, wy, wx = window
    s = (
        c[wz:, wy:, wx:] - c[:-wz, wy:, wx:] - c[wz:, :-wy, wx:] - c[wz:, wy:, :-wx]
        + c[:-wz, :-wy, wx:] + c[:-wz, wy:, :-wx] + c[wz:, :-wy, :-wx] - c[:-wz, :-wy, :-wx]
    )
    return s / float(wz * wy * wx)


#: Regions of more voxels than this are searched with windows placed every
#: :data:`WINDOW_STRIDE` voxels in y and x (every voxel in z): the search then holds ~2-4
#: bytes per region voxel instead of the ~16 of every placement.
STRIDED_SEARCH_VOXELS = 32 * 2**20
WINDOW_STRIDE = 4


def _strided_window_means(score: np.ndarray, window: tuple[int, int, int], stride: int) -> np.ndarray:
    """Mean of ``score`` over ``window`` placed at every z and every ``stride``-th y and x
    (placement ``[i, j, k]`` starts at ``(i, j * stride, k * stride)``), one axis at a time,
    summing in float64 a slab of z at a time."""
    wz, wy, wx = window
    nz, ny, nx = score.shape
    xs = np.arange(0, nx - wx + 1, stride)
    ys = np.arange(0, ny - wy + 1, stride)
    sx = np.empty((nz, ny, xs.size), dtype=np.float64)
    zstep = max(1, (8 * 2**20) // max(1, ny * nx))
    for z0 in range(0, nz, zstep):
        c = np.zeros((min(nz, z0 + zstep) - z0, ny, nx + 1), dtype=np.float64)
        np.cumsum(score[z0:z0 + zstep], axis=2, dtype=np.float64, out=c[:, :, 1:])
        sx[z0:z0 + zstep] = c[:, :, xs + wx] - c[:, :, xs]
    c = np.zeros((nz, ny + 1, xs.size), dtype=np.float64)
    np.cumsum(sx, axis=1, out=c[:, 1:])
    del sx
    sxy = c[:, ys + wy] - c[:, ys]
    del c
    c = np.zeros((nz + 1, ys.size, xs.size), dtype=np.float64)
    np.cumsum(sxy, axis=0, out=c[1:])
    return (c[wz:] - c[:-wz]) / float(wz * wy * wx)


def _best_window(score: np.ndarray, region: Box, max_voxels: int, multiple: tuple[int, int, int]) -> tuple[Box, float]:
    """Richest window of at most ``max_voxels`` inside ``region`` (sizes multiples of ``multiple``);
    placed at every voxel, or every :data:`WINDOW_STRIDE` in y and x in a region of more than
    :data:`STRIDED_SEARCH_VOXELS`."""
    shape = box_shape(region)
    win = list(shape)
    if np.prod(win) > max_voxels:
        if win[0] > 64:
            win[0] = 64
        if np.prod(win) > max_voxels:
            s = np.sqrt(max_voxels / float(np.prod(win)))
            win[1] = max(1, int(win[1] * s))
            win[2] = max(1, int(win[2] * s))
    win = [max(m, (w // m) * m) if n >= m else n for w, m, n in zip(win, multiple, shape)]
    sub = score[box_slices(region)]
    stride = WINDOW_STRIDE if sub.size > STRIDED_SEARCH_VOXELS else 1
    means = (_window_means(sub, tuple(win)) if stride == 1
             else _strided_window_means(sub, tuple(win), stride))
    idx = np.unravel_index(int(np.argmax(means)), means.shape)
    start = (idx[0], idx[1] * stride, idx[2] * stride)
    box = tuple((int(r[0] + i), int(r[0] + i + w)) for r, i, w in zip(region, start, win))
    return box, float(means[idx])


def choose_training_fov(
    volume: np.ndarray,
    *,
    max_voxels: int = 2_000_000,
    holdout_fraction: float = 0.2,
    min_holdout_voxels: int = 4096,
    multiple: tuple[int, int, int] = (1, 1, 1),
    training_fov: str | None = None,
    path: str = "<volume>",
    min_holdout_shape: tuple[int, int, int] = (1, 1, 1),
) -> TrainingFov:
    """Choose a structure-rich training FOV and a disjoint held-out region.

    Parameters
    ----------
    volume
        Normalised ZYX volume (or a strided preview; boxes are in its voxels); numpy or
        lazy (dask, zarr), read a slab at a time (:func:`structure_map`).
    max_voxels
        Largest training FOV (input voxels); larger volumes get the window of
        that size with the highest mean gradient magnitude.
    holdout_fraction
        Fraction of the longest lateral axis kept out of training (one end slab).
    min_holdout_voxels
        Smallest acceptable held-out region.
    multiple
        Box sizes are rounded down to multiples of these (the scale factors), so that
        held-out targets degrade exactly.
    training_fov
        ``"z0:z1,y0:y1,x0:x1"`` from the sample sheet, or ``None`` for automatic.
    min_holdout_shape
        Smallest held-out extent per axis (e.g. enough voxels to degrade by the factor):
        a slab left by ``training_fov`` that is thinner is not used.

    Raises
    ------
    InputError
        When the volume is too small to hold a training FOV and a held-out region.
    """
    shape = tuple(int(n) for n in volume.shape)
    score = structure_map(volume)
    total_mean = float(score.mean())
    full: Box = tuple((0, n) for n in shape)

    if training_fov:
        train = parse_fov(training_fov, shape)
        candidates = []
        for ax in range(3):
            (a, b) = train[ax]
            for lo, hi in ((0, a), (b, shape[ax])):
                if hi - lo > 0:
                    region = list(full)
                    region[ax] = (lo, hi)
                    candidates.append(tuple(region))
        candidates = [c for c in candidates if np.prod(box_shape(c)) >= min_holdout_voxels
                      and all(n >= m for n, m in zip(box_shape(c), min_holdout_shape))]
        if not candidates:
            least = " x ".join(f"{m} {a}" for a, m in zip("zyx", min_holdout_shape))
            raise InputError(
                path,
                f"training_fov {training_fov} leaves no room for a held-out region (a slab of the volume "
                f"outside it, at least {min_holdout_voxels} voxels and {least}); choose a smaller "
                f"training_fov, or leave the column empty to let selfres choose",
            )
        region = max(candidates, key=lambda c: np.prod(box_shape(c)))
        holdout, hscore = _best_window(score, region, max(max_voxels // 4, min_holdout_voxels), multiple)
        tscore = float(score[box_slices(train)].mean())
        return TrainingFov(
            train=train,
            holdout=holdout,
            source="sample_sheet",
            reason="training_fov given in the sample sheet; held-out region taken from the largest slab outside it",
            scores={"train_structure": tscore, "holdout_structure": hscore, "volume_structure": total_mean},
        )

    ax = 1 if shape[1] >= shape[2] else 2
    n = shape[ax]
    other = int(np.prod(shape)) // n
    hold_len = max(int(round(n * holdout_fraction)), int(np.ceil(min_holdout_voxels / other)), multiple[ax] * 4)
    hold_len = int(np.ceil(hold_len / multiple[ax]) * multiple[ax])
    if n - hold_len < max(8, 4 * multiple[ax]) or hold_len * other < min_holdout_voxels:
        raise InputError(
            path,
            f"volume of shape {shape} is too small to split into a training FOV and a held-out "
            f"region (needs at least {min_holdout_voxels} held-out voxels plus a training part)",
        )
    ends = []
    for lo, hi in ((0, hold_len), (n - hold_len, n)):
        region = list(full)
        region[ax] = (lo, hi)
        ends.append((float(score[box_slices(tuple(region))].mean()), tuple(region)))
    # held-out slab: the end with more structure, so that validation measures something
    ends.sort(key=lambda e: e[0], reverse=True)
    hold_region = ends[0][1]
    rest = list(full)
    rest[ax] = (hold_region[ax][1], n) if hold_region[ax][0] == 0 else (0, hold_region[ax][0])
    rest = tuple(rest)
    train, tscore = _best_window(score, rest, max_voxels, multiple)
    holdout, hscore = _best_window(score, hold_region, max(max_voxels // 4, min_holdout_voxels), multiple)
    cropped = np.prod(box_shape(train)) < np.prod(box_shape(rest))
    reason = (
        f"held-out slab: {hold_len} of {n} voxels ({hold_len / n:.0%}) of axis {'zyx'[ax]} at the end with more "
        "structure; "
        + (
            f"training FOV: the {box_shape(train)} window with the highest mean gradient magnitude "
            f"(limit {max_voxels} voxels)"
            if cropped
            else "training FOV: all of the rest"
        )
    )
    return TrainingFov(
        train=train,
        holdout=holdout,
        source="auto",
        reason=reason,
        scores={"train_structure": tscore, "holdout_structure": hscore, "volume_structure": total_mean},
    )
