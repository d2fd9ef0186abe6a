"""The acquisition's noise: estimated from the data, and matched in training inputs.

A self-supervised training input is the acquisition degraded once more (``D``: downscale,
blur). ``D`` averages the acquisition's noise down, so without help the network trains on
inputs much cleaner than the acquisition it is later applied to, and the held-out check
(made the same way) cannot see what the noise does to the output. Matching tops the noise
of every degraded input back up to the acquisition's own level:

1. :func:`noise_level_function` estimates the acquisition's noise variance as a function
   of intensity, ``var(μ) = slope·μ + floor`` (Poisson–Gaussian: shot noise grows with the
   signal, read noise does not), from voxels where the image is locally smooth;
2. :func:`variance_kept` measures the fraction of white-noise variance that survives
   ``D`` (and any target blur before it);
3. the top-up adds Gaussian noise of variance ``(1 − kept)·var(μ)`` to each degraded
   input voxel (``noise = "affine_gaussian"`` of :class:`selfres.degrade.Degradation`).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["NOISE_AT", "NoiseLevel", "immerkaer_residual", "noise_level_function", "repair_sensor_defects",
           "sensor_defect_positions", "sensor_defects", "topup_variance", "variance_kept"]

#: The intensities (fractions of the normalised range) at which a noise level is reported, as
#: the keys of :meth:`NoiseLevel.sigma_at` (``model.json`` ``noise``, ``metrics.json``, the report).
NOISE_AT = ("0.1", "0.5")

# Immerkær's mask cancels locally planar signal; on white noise of σ its response, divided by
# 6, has standard deviation σ.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64) / 6.0
_MAD_TO_SIGMA = 1.4826
# correlation of neighbouring residuals (along y or x) for white noise: the mask's autocorrelation
# at lag 1 over lag 0, -24/36 (its 1-D factor [1, -2, 1]: -4/6)
_WHITE_LAG1 = -2.0 / 3.0
# ... and of residuals two apart: 1/6 (lag 2 of [1, -2, 1] over its lag 0)
_WHITE_LAG2 = 1.0 / 6.0


@dataclass(frozen=True)
class NoiseLevel:
    """Noise variance as a function of intensity: ``slope·μ + floor`` (normalised units)."""

    slope: float
    floor: float
    bins: int = 0
    """Intensity bins the fit used (0: nothing could be measured: too few voxels, or none finite)."""

    def variance(self, mu):
        return np.clip(self.slope * np.asarray(mu, dtype=np.float64) + self.floor, 0.0, None)

    def scaled(self, share: float) -> "NoiseLevel":
        """The level of ``share`` of this noise's variance (e.g. what degrading removes, or
        what passes into a back-projection correction)."""
        return NoiseLevel(self.slope * float(share), self.floor * float(share))

    def sigma_at(self) -> dict[str, float]:
        """The noise σ at each intensity of :data:`NOISE_AT`, keyed as there."""
        return {key: float(np.sqrt(self.variance(float(key)))) for key in NOISE_AT}

    def recorded(self) -> "NoiseLevel":
        """This level as ``model.json`` records it (:meth:`as_list`'s rounding), its bins kept."""
        return NoiseLevel(*self.as_list(), bins=self.bins)

    def as_list(self) -> list[float]:
        """``[slope, floor]`` rounded to 4 significant digits (as recorded and used: the last
        bits of an estimate must not change a checkpoint's fingerprint between machines)."""
        return [float(f"{float(self.slope):.4g}"), float(f"{float(self.floor):.4g}")]


def immerkaer_residual(plane: np.ndarray) -> np.ndarray:
    """The noise residual of a 2-D plane (Immerkær's mask / 6; the plane's border dropped):
    white noise of σ gives a residual of standard deviation σ, planar signal gives 0."""
    from scipy.ndimage import convolve

    return convolve(np.asarray(plane, dtype=np.float64), _IMMERKAER, mode="mirror")[1:-1, 1:-1]


#: A lateral position is a sensor defect (:func:`sensor_defects`) where the mean or the median
#: of its noise residual through z is this many standard errors from 0, the noise's σ taken
#: from the positions around it (pure noise: about 2e-9 of its positions by the mean)
DEFECT_Z = 6.0
#: ... whose median residual is at least this many times that of all but one of its 8
#: neighbours (a one-voxel spike: 4/6 against 2/6; two side by side)
SPIKE_RATIO = 1.5
#: ... whose median residual is this many σ from 0 (a spike 4.5 σ high: one in the noise is
#: left as it is)
PLANE_Z = 3.0
#: ... and whose residual has the sign of its median (beyond :data:`SIGMA_FLOOR`) in at least this
#: share of the planes (a spike 2.25 σ high, the least the mean test finds in 16 planes, has it in
#: 93 % of them)
PERSISTENCE = 0.75
#: The pooled σ is at least this share of the largest residual, and a residual under it has no
#: sign: in a noise-free (simulated or denoised) stack σ is 0, and every smooth tail that kept
#: its sign through z stood 6 σ out
SIGMA_FLOOR = 1e-3
#: Fewer planes cannot tell a defect from a point the optics spread over all of them (blurred
#: points in 6 planes passed every test; in 12, none of 60)
MIN_DEFECT_PLANES = 8


def defect_positions_once(volume) -> Callable[[], np.ndarray | None]:
    """A function giving :func:`sensor_defect_positions` of ``volume``, found at its first call
    and kept: an inference job finds them only when it computes a tile (the same on every job
    of a scattered run, read from the whole field)."""
    return functools.cache(lambda: sensor_defect_positions(volume))


def sensor_defect_positions(volume) -> np.ndarray | None:
    """The lateral positions (a ``(Y, X)`` mask) of ``volume``'s hot and dead sensor pixels
    (:func:`sensor_defects`, without their neighbourhood), judged on up to 16 evenly spaced
    planes, read one at a time from a lazy array, border included; ``None`` when there are
    none, or the volume has fewer than :data:`MIN_DEFECT_PLANES` planes or planes under 8
    pixels a side."""
    from scipy.ndimage import convolve

    if volume.ndim != 3 or volume.shape[0] < MIN_DEFECT_PLANES or min(volume.shape[1:]) < 8:
        return None
    idx = np.unique(np.linspace(0, volume.shape[0] - 1, min(16, volume.shape[0])).astype(int))
    ny, nx = (int(n) for n in volume.shape[1:])
    # in lateral blocks with a margin past every test's reach (a 2048² plane took 2–3 GB in one
    # piece, a stitched 10k² one would not fit): the same positions as the whole plane, where the
    # block's edges are the volume's (mirrored) or ``_DEFECT_MARGIN`` inside it
    found = np.zeros((ny, nx), dtype=bool)
    step = DEFECT_BLOCK
    for y0 in range(0, ny, step):
        ya, yb = max(0, y0 - _DEFECT_MARGIN), min(ny, y0 + step + _DEFECT_MARGIN)
        band = []  # each sampled plane's rows of this band, read once (a TIFF is read by rows)
        for i in idx:
            rows = volume[i, ya:yb, :]
            band.append(np.asarray(rows.compute() if hasattr(rows, "compute") else rows, dtype=np.float32))
        for x0 in range(0, nx, step):
            xa, xb = max(0, x0 - _DEFECT_MARGIN), min(nx, x0 + step + _DEFECT_MARGIN)
            # its border too (mirrored): a defect may sit on it
            planes = [p for p in (b[:, xa:xb].astype(np.float64) for b in band) if np.all(np.isfinite(p))]
            if len(planes) < 3 or min(yb - ya, xb - xa) < 3:
                continue
            residuals = [convolve(plane, _IMMERKAER, mode="mirror") for plane in planes]
            block = _defect_positions(residuals, border=False)
            if block is not None:
                block = _one_pixel_wide(np.stack(planes), block, np.stack(residuals))
            if block is not None:
                found[y0:y0 + step, x0:x0 + step] = block[y0 - ya:y0 - ya + step, x0 - xa:x0 - xa + step]
    return found if found.any() else None


#: Lateral block (pixels a side) in which :func:`sensor_defect_positions` judges a volume, and the
#: margin read around it: beyond the reach of every test (residual 1, pooled σ 2, neighbours and
#: ring 2), so that blocks find what the whole plane would
DEFECT_BLOCK = 512
_DEFECT_MARGIN = 8


#: A defect's four side neighbours stand out from the ring around it (see :func:`_one_pixel_wide`),
#: on average, by at most this share of what the defect does: a sensor's defect is one pixel; the
#: optics spread the smallest punctum (σ 0.5 px, pixel-integrated) over them by 0.23 of its peak
NEIGHBOUR_SHARE = 0.12


def _one_pixel_wide(planes: np.ndarray, candidates: np.ndarray, residuals: np.ndarray) -> np.ndarray | None:
    """The ``candidates`` (a ``(Y, X)`` mask) of :func:`_defect_positions` that are one pixel
    wide in the planes themselves: through z (the median of the planes), each stands out from
    the ring of 16 pixels two away (their median) in the direction of its residual, and its four
    side neighbours, on average (a gradient cancels), by at most :data:`NEIGHBOUR_SHARE` of
    that. A sub-pixel punctum, a bead or a fibre along z spanning a thin stack's planes has a
    spike's residual and its steadiness, and was taken for a defect (a review: 79–142 false
    positions of 100 sharp puncta in 8 planes, and each fibre's tails); so was each clean pixel
    beside a pair of hot ones (the residual of the pair is negative there). A pair of hot
    pixels is not one pixel wide either, and is left as it is."""
    ys, xs = np.nonzero(candidates)
    median = np.pad(np.median(planes, axis=0), 2, mode="reflect")
    ring = np.stack([median[ys + 2 + dy, xs + 2 + dx] for dy in range(-2, 3) for dx in range(-2, 3)
                     if max(abs(dy), abs(dx)) == 2])
    level = np.median(ring, axis=0)
    excess = median[ys + 2, xs + 2] - level
    around = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    beside = np.stack([median[ys + 2 + dy, xs + 2 + dx] - level for dy, dx in around])
    sides = beside[[k for k, (dy, dx) in enumerate(around) if not (dy and dx)]].mean(axis=0)
    own = residuals[:, ys, xs]
    direction = np.sign(np.median(own, axis=0))
    # ... and none of the 8 by more than that share plus 3 σ of a median of the planes (σ from the
    # residuals through z there: white noise of σ gives a residual of σ)
    sigma = 1.2533 * 1.4826 * np.median(np.abs(own - np.median(own, axis=0)), axis=0) / np.sqrt(planes.shape[0])
    keep = (np.sign(excess) == direction) & (direction * sides <= NEIGHBOUR_SHARE * np.abs(excess))
    keep &= (np.abs(beside) <= NEIGHBOUR_SHARE * np.abs(excess) + 3.0 * sigma).all(axis=0)
    if not keep.any():
        return None
    out = np.zeros_like(candidates)
    out[ys[keep], xs[keep]] = True
    return out


def repair_sensor_defects(volume: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """A copy of ``volume`` (ZYX) with the lateral ``positions`` (a ``(Y, X)`` mask, e.g.
    :func:`sensor_defect_positions`) replaced, in every plane, by the median of their
    neighbours that are not among them (a position with none keeps its value)."""
    vol = np.array(volume, dtype=np.float32, copy=True)
    if positions is None or not positions.any():
        return vol
    ys, xs = np.nonzero(positions)
    around = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if not (dy or dx):
                continue
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < vol.shape[1]) & (xx >= 0) & (xx < vol.shape[2])
            yy, xx = np.clip(yy, 0, vol.shape[1] - 1), np.clip(xx, 0, vol.shape[2] - 1)
            usable = inside & ~positions[yy, xx]
            around.append(np.where(usable[None], vol[:, yy, xx], np.nan))
    around = np.stack(around)  # (8, z, defects): NaN where a neighbour is outside or a defect itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(around, axis=0)
    vol[:, ys, xs] = np.where(np.isfinite(median), median, vol[:, ys, xs])
    return vol


def _defect_positions(residuals: Sequence[np.ndarray], *, border: bool = True) -> np.ndarray | None:
    """The defect positions of :func:`sensor_defects` (plane shape), without their neighbourhood.
    ``border``: the residuals leave out the plane's outer voxels (:func:`immerkaer_residual`)."""
    from scipy.ndimage import median_filter

    if len(residuals) < 3:
        return None
    stack = np.stack(residuals)
    n = stack.shape[0]
    sigma = median_filter(stack.std(axis=0, ddof=1), size=5, mode="mirror")
    floor = SIGMA_FLOOR * (float(np.abs(stack).max()) + 1e-300)
    sigma = np.maximum(sigma, floor)
    centre = np.median(stack, axis=0)
    strong = np.abs(stack.mean(axis=0)) * np.sqrt(n) > DEFECT_Z * sigma
    strong |= np.abs(centre) * np.sqrt(n) > DEFECT_Z * 1.2533 * sigma
    # ... and shaped as a one-voxel spike: the residual of a spike is 4/6 of it at the spike,
    # -2/6 beside it; optics blur whatever the sample holds over more than a voxel, whose
    # residual changes little from one voxel to the next (kept: the estimate discounts it)
    # (the second largest of the 8: two hot pixels side by side; beyond the border as the
    # residuals were made: 0 where they leave it out, mirrored where they mirror the plane — a
    # spike next to the border is mirrored to its other side, not a second one to flag)
    padded = np.pad(np.abs(centre), 1) if border else np.pad(np.abs(centre), 1, mode="reflect")
    ranked = np.sort([padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], axis=0)
    around = ranked[-2]
    if not border and min(centre.shape) >= 4:
        # a spike one pixel in from a corner is mirrored thrice about the corner: the corner and its
        # two sides beside the spike read as much as the spike (4/6 of it), so the fourth largest
        # (the hot pixel at (1, 1) was never found)
        for y in (1, centre.shape[0] - 2):
            for x in (1, centre.shape[1] - 2):
                around[y, x] = ranked[-4, y, x]
    strong &= np.abs(centre) > SPIKE_RATIO * around  # strictly: flat, noise-free background is no spike
    # ... and clear of the noise in each plane, not only on average: a dim point spread over most
    # planes passed the mean test, and a defect within the noise matters to nothing downstream
    strong &= np.abs(centre) > PLANE_Z * sigma
    # ... and there in (nearly) every plane, as a sensor's defect is: a bead or a fibre end crossing
    # the position in a few planes is not (noise-free beads read σ 0, and 2374 positions of a
    # simulated bead stack passed the two tests above with a residual of one sign in 1/8 of its planes)
    steady = (np.sign(centre) * stack > floor) & (np.abs(stack - centre) <= 0.5 * np.abs(centre) + 3.0 * sigma)
    strong &= steady.mean(axis=0) >= PERSISTENCE
    if not strong.any():
        return None
    if not border:
        return strong
    full = np.zeros((stack.shape[1] + 2, stack.shape[2] + 2), dtype=bool)
    full[1:-1, 1:-1] = strong
    return full


def sensor_defects(residuals: Sequence[np.ndarray]) -> np.ndarray | None:
    """Lateral positions of a stack (plane shape, the residuals' border included) to leave out
    of the noise estimate: hot or dead sensor pixels and their neighbourhood.

    A hot pixel is a single-voxel spike, which has exactly white noise's signature in the
    residual; but it is there in every plane, where noise averages out. A position whose
    :func:`immerkaer_residual` keeps one sign through the planes — its mean, or its median (a
    defect under structure that crosses it in a few planes), :data:`DEFECT_Z` standard errors
    from 0, with the σ of the residual through z pooled over the 5×5 positions around it (the
    median of theirs: a defect's own does not count, and a few planes give a σ of its own
    too rough to judge by) — and whose median residual is :data:`SPIKE_RATIO` times each of
    its neighbours' but one (a one-voxel spike, or two side by side; blurred structure is
    smoother, and the estimate discounts it as before), and whose residual is steady through z
    (in :data:`PERSISTENCE` of the planes of its sign and within half its median plus 3 σ of
    it: a bead or a fibre end crossing the position in a few planes is not a defect; without
    this, the review stacks' clean control lost 35 positions to its fibres, now none, each
    defect still found) is left out, with every voxel within 3
    of it (the residuals the estimate pairs reach that far). Measured (a review, 16×96×96,
    clean σ 3.7 counts): 5 hot pixels of 700–1600 counts read σ 255, 20 read 1055; with this, the clean figure. Where the 7×7 neighbourhoods
    would take over half of the field (more than ~1.4 % of the pixels defective), each one's
    5×5 goes, or at least its 3×3 (the residuals a spike reaches). Measured (a self-check,
    16×128×128, σ 4.5): 0.2–1 % hot pixels 4.4–4.5, 1.3–2 % 5.2–5.9 (51–56 when all were kept
    instead), 4 % 30: a sensor that bad is beyond it. ``None`` with fewer than 3 planes (one
    plane cannot tell a defect from a bright point) or when nothing stands out.
    """
    from scipy.ndimage import maximum_filter

    full = _defect_positions(residuals)
    if full is None:
        return None
    # many defects (over ~1.4 % of the pixels fill half the field at 7×7): a smaller neighbourhood,
    # down to their 3×3, which holds every residual a spike reaches
    for size in (7, 5):
        around = maximum_filter(full, size, mode="constant")
        if around.mean() <= 0.5:
            return around
    return maximum_filter(full, 3, mode="constant")


#: A voxel whose residual is this many times the noise around it (the 7×7 positions' robust σ,
#: at least half the plane's RMS residual) is a spike of its own (:func:`_spikes_of_plane`)
SPIKE_OUTLIER = 10.0


def _spikes_of_plane(residual: np.ndarray) -> np.ndarray:
    """The voxels of a plane (shape of ``residual``, an :func:`immerkaer_residual` with its
    border) within 3 of a residual :data:`SPIKE_OUTLIER` times the noise around it: spikes
    that are not a sensor's steady defect — a telegraph pixel on in some planes, a cluster of
    hot pixels, a cosmic-ray hit, a bright punctum's peak. The centre of such a spike has a
    smoothed gradient of 0, so it counts among the smoothest voxels of its bin, where its lag
    products dwarf the noise's: a review found 11 telegraph pixels reading σ ×18 and 6
    cosmic-ray hits ×45, and the guard passing outputs 7–12 dB below tricubic, unflagged."""
    from scipy.ndimage import maximum_filter, median_filter

    size = np.abs(residual)
    around = _MAD_TO_SIGMA * median_filter(size, 7, mode="mirror")  # a zero-mean residual: MAD = median |r|
    floor = 0.5 * float(np.sqrt(np.mean(residual * residual)))  # quantised or near-empty planes read 0 around
    spikes = size > SPIKE_OUTLIER * np.maximum(around, floor)
    return maximum_filter(spikes, 7, mode="constant") if spikes.any() else spikes


#: A bin's noise is read through z (:func:`noise_level_function`) where its in-plane reading is
#: below this share of the reading through z: structure a voxel or two wide in the plane (spots,
#: membranes, fibres), which the in-plane lag test subtracts with the noise (a review's dense
#: spots of σ 1 voxel: 0.05 x the true variance at 0.5; membranes, fibres, tubules 0.2 x).
#: Elsewhere the in-plane reading stays: it has less statistical noise, and structure that
#: changes from plane to plane (thick z steps) takes the noise with it through z instead (the
#: benchmark's nuclei_tissue, 4 µm planes: 0 through z), so a lower reading through z never counts
THROUGH_Z_SHARE = 0.5


def _lag_variance(residual: np.ndarray, lag1: np.ndarray, lag2: np.ndarray) -> float:
    """A bin's noise variance from its voxels' residuals and their lag-1 and lag-2 products:
    their mean difference over that of white noise (-2/3 - 1/6), within 0 and the residual's power."""
    power = max(float(np.mean(residual * residual)), 1e-30)
    return min(max((float(np.mean(lag1)) - float(np.mean(lag2))) / (_WHITE_LAG1 - _WHITE_LAG2), 0.0), power)


#: The brightest of :func:`noise_level_function`'s quantile bins starts below this fraction of the
#: normalised range: an empty field around a few bright objects (one nucleus, an organoid, beads);
#: a stack of 2 planes or more.
#: That bin then spans every intensity of the objects, and its smoothest voxels — the ones it
#: measures — are their dim fringe, so the objects' own noise went unread (a review's textured
#: object: 0.3 x the true variance at 0.5; a silent loss of up to 0.4 dB against its truth).
EMPTY_FIELD_TOP = 1.0 / 16.0
#: In an empty field the bright intensities get bins an octave wide, from the top down, at most this many.
OCTAVE_BINS = 10
#: :func:`noise_level_function`'s bins read at intensities closer than this share of the range
#: of local means are read at one intensity (a constant, no slope between them).
MU_APART = 1e-6


def _precision_weighted_line(mu: np.ndarray, var: np.ndarray, counts: np.ndarray, *, rounds: int = 6) -> tuple[float, float]:
    """``slope·μ + floor`` (both >= 0) through bin readings ``var`` at ``mu``, each weighted by its
    precision: a variance read on ``n`` voxels has a standard error of about ``var·sqrt(2/n)``,
    so a row counts ``sqrt(n) / var`` with ``var`` the line's own prediction (refitted ``rounds``
    times). A few bright bins of a hundred voxels then pin the slope without one of them, read
    high by the structure it holds, pulling the whole line."""
    from scipy.optimize import nnls

    if float(np.max(var)) <= 0.0:  # nothing read anywhere
        return 0.0, 0.0
    design = np.c_[mu, np.ones_like(mu)]
    least = 1e-3 * float(np.max(var))  # no row weighs more than at a thousandth of the top reading
    predicted = np.full(var.shape, float(np.average(var, weights=counts)))
    slope = floor = 0.0
    for _ in range(rounds):
        weight = np.sqrt(counts) / np.maximum(predicted, least)
        (slope, floor), _ = nnls(design * weight[:, None], var * weight)
        predicted = slope * mu + floor
    return float(slope), float(floor)


def noise_level_function(volume: np.ndarray, *, max_planes: int = 16, bins: int = 16,
                         smooth_fraction: float = 0.25, min_voxels: int = 64,
                         white_signature: bool = True) -> NoiseLevel:
    """Estimate the noise variance of ``volume`` against intensity (``ZYX`` or ``YX``).

    Per lateral plane (up to ``max_planes``, evenly spaced): the Immerkær residual, the
    local 3×3 mean, and the gradient magnitude of the plane smoothed with σ 1.5 voxels.
    Voxels are binned by local mean (``bins`` quantile bins); in each bin only the
    ``smooth_fraction`` with the smallest smoothed gradient count (edges and curved
    structure leak into the residual; the smoothed gradient, a low-pass measure, hardly
    depends on the noise it selects for). White noise of variance ``w`` gives the residual
    a covariance of ``w·(−2/3)`` between in-plane neighbours and ``w·(1/6)`` between
    residuals two apart; structure that leaks into it is smooth over a voxel or two and
    adds about the same to both, so the bin's noise variance is their difference over
    −5/6 (clipped to the residual's power). A single plane (2-D input) uses the robust
    (MAD) variance of the residual times the smaller share of it that shows either
    correlation (sharp points pass one test more easily than both);
    ``white_signature=False`` counts the whole residual's robust variance. In a volume of 3
    planes or more the same lag test is also made on the residuals' second difference through
    z, ``(r[i-1] - 2 r[i] + r[i+1]) / sqrt(6)``, which keeps independent noise and cancels
    structure that changes little from plane to plane; a bin whose in-plane reading is below
    :data:`THROUGH_Z_SHARE` of that one takes it. In an empty field of 2 planes or more (the brightest
    quantile bin starts below :data:`EMPTY_FIELD_TOP` of the range) the bright objects' intensities get bins an
    octave wide, and the line is fitted with each bin weighted by its precision
    (:func:`_precision_weighted_line`). Voxels within 3
    of a saturated one (the top value, shared by many voxels) are left out, and so are
    non-finite planes. A line ``slope·μ + floor`` is fitted to the bins by weighted least
    squares (weights: voxel counts); a negative slope is refitted as a constant, a negative floor
    as a line through the origin.

    Texture near the sampling limit (in-plane scale below about one voxel) is not smooth
    over two voxels and is subtracted with the noise: on such synthetic scenes with little
    noise the estimate falls towards 0 (docs/quality.md, "Eleventh session").

    On the benchmark's real volumes, downscaled ×2 and given Poisson noise of 200 or 1000
    photons at the 99.9th percentile, the estimate on the training FOV was 0.75–1.10 × the
    added variance (the earlier estimate, the robust variance times the share with the
    lag-1 signature and without correlation between planes: 0.52–1.10); below it is the
    side on which the held-out check sees less noise than the acquisition has.
    """
    from scipy.ndimage import gaussian_gradient_magnitude, maximum_filter, uniform_filter

    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    planar = vol.shape[0] == 1
    idx = np.unique(np.linspace(0, vol.shape[0] - 1, min(max_planes, vol.shape[0])).astype(int))
    # saturated voxels have no noise: leave out every voxel near one, when the top value is
    # shared by more than a few voxels (not the bottom: photon counts of 0 are noise, not a clip)
    hi_v = float(np.nanmax(vol)) if np.isfinite(vol).any() else 0.0
    clip_hi = np.count_nonzero(vol == hi_v) > max(8, vol.size // 10_000)

    @functools.cache
    def readable(i):
        plane = np.asarray(vol[i], dtype=np.float64)
        return plane if min(plane.shape) >= 8 and np.all(np.isfinite(plane)) else None

    @functools.cache
    def residual_of(i):  # a plane's residual, also as a neighbour's through z (all planes sampled: 3 uses)
        return immerkaer_residual(readable(i))

    # hot and dead pixels: judged on the planes sampled over the whole stack, with or without
    # neighbours through z (a stack of 8 or 9 planes keeps its search, which needs 8)
    defects = sensor_defects([residual_of(i) for i in idx if readable(i) is not None])
    # across planes too (3 planes or more): the residuals' second difference through z
    # (r[i-1] - 2 r[i] + r[i+1]) / sqrt(6) keeps independent noise as it is and cancels structure
    # that changes little from plane to plane — spots a voxel or two wide, whose in-plane
    # residual the lag test below subtracts with the noise (a review's dense spots of σ 1 px:
    # 0.05 x the true variance at 0.5 in-plane)
    through_z = vol.shape[0] >= 3 and white_signature  # the lag test's alone
    if through_z:
        idx = np.unique(np.linspace(1, vol.shape[0] - 2, min(max_planes, vol.shape[0] - 2)).astype(int))
    planes, residuals, across = [], [], []
    for i in idx:
        plane = readable(i)
        if plane is None:
            continue
        if through_z and (readable(i - 1) is None or readable(i + 1) is None):
            continue
        planes.append(plane)
        residuals.append(residual_of(i))
        if through_z:
            across.append((residual_of(i - 1) - 2.0 * residuals[-1] + residual_of(i + 1)) / np.sqrt(6.0))

    def lags(r):
        """Each counted voxel's lag-1 and lag-2 products of residual ``r`` (in-plane neighbours)."""
        one = 0.5 * (r[:-1, :-1] * r[:-1, 1:] + r[:-1, :-1] * r[1:, :-1])
        # the residual two to the right and two below; for the last column (row) of the voxels
        # counted, two to the left (above): a voxel is never paired with itself
        right = np.arange(r.shape[1] - 1) + 2
        right[right >= r.shape[1]] -= 4
        below = np.arange(r.shape[0] - 1) + 2
        below[below >= r.shape[0]] -= 4
        two = 0.5 * (r[:-1, :-1] * r[:-1][:, right] + r[:-1, :-1] * r[below][:, :-1])
        return one.ravel(), two.ravel()

    res, lag, lag2, res_z, lag_z, lag2_z, mean, grad, unclipped = [], [], [], [], [], [], [], [], []
    for k, (plane, r) in enumerate(zip(planes, residuals)):
        inner = (slice(1, -2), slice(1, -2))  # voxels whose residual has a right and a lower neighbour
        res.append(r[:-1, :-1].ravel())
        one, two = lags(r)
        lag.append(one)
        lag2.append(two)
        mean.append(uniform_filter(plane, 3, mode="mirror")[inner].ravel())
        grad.append(gaussian_gradient_magnitude(plane, 1.5, mode="mirror")[inner].ravel())
        ok = np.ones(plane.shape, dtype=bool) if defects is None else ~defects
        ok[1:-1, 1:-1] &= ~_spikes_of_plane(r)  # the residual leaves out the plane's border
        if through_z:  # a spike in a plane beside it reaches the second difference
            rz = across[k]
            ok[1:-1, 1:-1] &= ~_spikes_of_plane(rz)
            res_z.append(rz[:-1, :-1].ravel())
            one, two = lags(rz)
            lag_z.append(one)
            lag2_z.append(two)
        if clip_hi:
            ok &= maximum_filter(plane, 7, mode="mirror") < hi_v  # the residuals it pairs reach 3 voxels
        unclipped.append(ok[inner].ravel())
    if not res:
        return NoiseLevel(0.0, 0.0)
    keep = np.concatenate(unclipped)
    r, c, c2 = (np.concatenate(a)[keep] for a in (res, lag, lag2))
    rz_all, cz_all, c2z_all = ((np.concatenate(a)[keep] for a in (res_z, lag_z, lag2_z)) if through_z
                               else (None, None, None))
    m, g = np.concatenate(mean)[keep], np.concatenate(grad)[keep]
    if m.size == 0:
        return NoiseLevel(0.0, 0.0)
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, bins + 1)))
    # (not for a single plane: there the object's texture fails the white-noise signature in its
    # own bins and reads 0, which pinned the line at no slope: σ 0.13 x where the one wide bin read 0.5 x)
    empty_field = not planar and len(edges) >= 3 and edges[-2] < EMPTY_FIELD_TOP < edges[-1]
    if empty_field:  # the bright objects' intensities in bins of their own, an octave wide
        octaves = edges[-1] / 2.0 ** np.arange(1, OCTAVE_BINS + 1)
        edges = np.unique(np.concatenate([edges, octaves[octaves > edges[-2]]]))
    which = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, max(len(edges) - 2, 0))
    mus, variances, variances_z, counts, still = [], [], [], [], []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if sel.sum() < min_voxels:
            continue
        gb = g[sel]
        smooth = gb <= np.quantile(gb, smooth_fraction)
        rb, cb, c2b = r[sel][smooth], c[sel][smooth], c2[sel][smooth]
        if rb.size < min_voxels // 4:
            continue
        power = max(float(np.mean(rb * rb)), 1e-30)
        if not white_signature:
            variance = (_MAD_TO_SIGMA * float(np.median(np.abs(rb - np.median(rb))))) ** 2
        elif planar:
            # white noise's residual has a lag-1 correlation of exactly -2/3 and a lag-2 one of
            # 1/6; a single plane has no other plane to tell sharp points from noise, so both
            # must agree: count the robust variance times the smaller share with that signature
            white = min(max(float(np.mean(cb)) / power / _WHITE_LAG1, 0.0),
                        max(float(np.mean(c2b)) / power / _WHITE_LAG2, 0.0), 1.0)
            variance = (_MAD_TO_SIGMA * float(np.median(np.abs(rb - np.median(rb))))) ** 2 * white
        else:
            # white noise of variance w adds w·(-2/3) to the lag-1 and w·(1/6) to the lag-2
            # covariance of the residual; structure that leaks into it is smooth over a voxel or
            # two and adds about the same to both, so their difference is noise alone
            variance = _lag_variance(rb, cb, c2b)
            if through_z:  # the same test on the residuals' second difference through z
                pick = np.flatnonzero(sel)[smooth]
                variances_z.append(_lag_variance(rz_all[pick], cz_all[pick], c2z_all[pick]))
        mus.append(float(np.median(m[sel])))
        variances.append(variance)
        counts.append(float(rb.size))
        still.append(not np.any(rb))  # a residual of 0: nothing varies here, no noise read as none
    if not mus:
        return NoiseLevel(0.0, 0.0)
    if variances_z:  # bin by bin: where the in-plane reading is below THROUGH_Z_SHARE of it
        variances = [vz if v < THROUGH_Z_SHARE * vz else v for v, vz in zip(variances, variances_z)]
    mu, var, w = np.asarray(mus), np.asarray(variances), np.sqrt(np.asarray(counts))
    # bins whose intensities differ by less than this are at one intensity, and no slope can be read
    # between them: a noise-free field of sparse beads kept only two bins, both of background at 0
    # (local means of -7e-17 and 0, the round-off of the 3x3 mean beside a bead) that read 0 and 1e-10,
    # and the line through them rose 1.5e6 per unit of intensity: noise "matched" at 387 times the range
    # at 0.1, and a silent loss of 6.8 dB (svision_sim_beads__zy at 2,1,1, fifty-eighth session)
    apart = MU_APART * max(float(edges[-1] - edges[0]), 1e-30)
    if empty_field:
        # a bin that reads 0 where its residual is not 0 was not read: structure on its voxels (a
        # bead's steep flank) outweighed the noise in both lag tests, which clip at 0 — a review's
        # small beads had every octave bin at 0, each weighing as much as a bin read right, and the
        # line pinned at no slope (σ 0.14 x). A residual of 0 (a noiseless background) is a reading.
        read = (var > 0) | np.asarray(still)
        if read.sum() >= 2 and np.ptp(mu[read]) > apart:
            slope, floor = _precision_weighted_line(mu[read], var[read], np.asarray(counts)[read])
            return _plausible(NoiseLevel(slope, floor, bins=int(read.sum())), planes, mu, var, w)
    if len(mu) >= 2 and np.ptp(mu) > apart:
        slope, floor = np.linalg.lstsq(np.c_[mu, np.ones_like(mu)] * w[:, None], var * w, rcond=None)[0]
    else:
        slope, floor = 0.0, float(np.median(var))
    if slope < 0:  # noise does not fall with the signal: a constant
        slope, floor = 0.0, float(np.average(var, weights=w))
    elif floor < 0:  # nor is it negative anywhere: a line through the origin (intensity 0)
        pos = np.clip(mu, 0.0, None)
        slope, floor = float(np.sum(w * pos * var) / max(float(np.sum(w * pos * pos)), 1e-30)), 0.0
    return _plausible(NoiseLevel(float(slope), float(floor), bins=len(mus)), planes, mu, var, w)


#: A noise level that gives the planes it was read on more than this many times their own
#: variance (its prediction at their mean intensity) is not a reading (:func:`_plausible`):
#: pure noise gives about 1, anything with structure less.
IMPLAUSIBLE_NOISE_SHARE = 2.0


def _plausible(level: NoiseLevel, planes: Sequence[np.ndarray], mu: np.ndarray, var: np.ndarray,
               weights: np.ndarray) -> NoiseLevel:
    """``level``, or where it predicts more noise than the planes it was read on hold in all
    (:data:`IMPLAUSIBLE_NOISE_SHARE`; a line through readings at nearly one intensity rose 1.5e6
    per unit: noise "matched" at hundreds of times the range), the bins' weighted mean variance as
    a constant, at most the planes' own variance — with a warning: the estimate misread this
    volume, and a noise level set by hand (``train.degradation.noise_variance``) or ``noise: none``
    is the way out."""
    n = sum(p.size for p in planes)
    if n < 2:
        return level
    mean = sum(float(np.sum(p, dtype=np.float64)) for p in planes) / n
    total = sum(float(np.sum((p - mean) ** 2, dtype=np.float64)) for p in planes) / n
    predicted = float(level.variance(mean))
    if predicted <= IMPLAUSIBLE_NOISE_SHARE * total or predicted <= 1e-20:
        return level
    constant = min(float(np.average(var, weights=weights)), total)
    log.warning("the noise estimate read variance %.3g x intensity + %.3g, %.3g times the variance of the planes it "
                "was read on: not a reading; a constant %.3g is used. If this volume has noise of its own, set "
                "train.degradation.noise_variance by hand (or noise: none)", level.slope, level.floor,
                predicted / max(total, 1e-30), constant)
    return NoiseLevel(0.0, constant, bins=level.bins)


def variance_kept(operator: Callable[[np.ndarray], np.ndarray], factors: Sequence[int], *,
                  size: Sequence[int] = (12, 24, 24), seed: int = 0) -> float:
    """Fraction of white-noise variance that survives ``operator`` (a linear map from a
    volume to its ``factors``-times smaller degraded copy), measured on unit white noise of
    ``size × factors`` voxels; the outermost output voxel of every axis is left out
    (mirrored borders)."""
    fs = tuple(int(f) for f in factors)
    shape = tuple(int(s) * f for s, f in zip(size, fs))
    white = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    out = np.asarray(operator(white), dtype=np.float64)
    inner = out[tuple(slice(1, -1) if n > 2 else slice(None) for n in out.shape)]
    return float(min(1.0, np.mean(inner**2)))


def topup_variance(level: NoiseLevel, kept: float) -> NoiseLevel:
    """The noise to add to a degraded input so that it is as noisy as the acquisition: the
    acquisition's level times the fraction ``1 − kept`` that degradation removed."""
    return level.scaled(max(0.0, 1.0 - float(kept)))
