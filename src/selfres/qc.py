"""Quality control of a restored sample: the held-out comparison, the flags, ``metrics.json``.

:func:`stage_qc` is the ``qc`` stage: it reads the normalised input, the restored store and the
model, scores the model against the interpolation on the held-out region
(:func:`self_validation`), measures the output against its input, and writes the sample's
``metrics.json`` with its flags (:func:`qc_flags`). The thresholds of the flags are the
constants below, each with what it was measured on.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import io, normalise
from .errors import InputError
from .flags import ISOTROPY_REACHED
from .fov import TrainingFov, repaired_box
from .pipeline import (check_model_acquisition, check_restored_grid, check_restored_origin, clean_floats, load_trained,
                       metrics_origin, model_output_path, mostly_noise, read_normalized, read_restored,
                       recorded_noise_level, set_threads, trained_degradation, voxel_size_of, write_json)
from .settings import QcSettings, voxel_size_unlike_file

log = logging.getLogger("selfres")


def network_alone_gain(meta: dict) -> float | None:
    """The trained network's held-out gain over tricubic without the inference extras (model.json
    ``self_validation``: ``psnr_network`` − ``psnr_interp``, as the train job's guard scored
    them), or None where not recorded."""
    from .wording import num

    sv = meta.get("self_validation") or {}
    network, interp = num(sv.get("psnr_network")), num(sv.get("psnr_interp"))
    return network - interp if network is not None and interp is not None else None


def self_validation(normalized_vol: io.Volume, fov: TrainingFov, model, meta: dict, *, device="cpu") -> dict:
    """Model vs tricubic on the held-out region, degraded exactly as in training.

    The model is wrapped in the inference extras the guard scored (``meta["inference_extras"]``:
    self-ensemble, back-projection), with the guard's mixed-precision setting (``meta["guard_amp"]``:
    ``infer.amp``; a model without it, on), so the figures are those of what ``restored.ome.zarr``
    holds, to the precision of ``device``: QC runs on the CPU, where mixed precision is bfloat16 only
    on a CPU with native bfloat16, else float32, while a guard on a GPU scored in bfloat16 (float16
    before Ampere). Measured by a review on CPU, float32 against bfloat16: held-out gains 2.0345 and
    2.0350 dB, far inside ``train.guard_margin_db``.
    """
    from . import metrics
    from .infer import predict_array
    from .settings import DegradationSettings, from_dict
    from .train import holdout_pair, make_degradation, psf_scaled_targets, psf_target_blur_px

    factors = tuple(meta["factors"])
    deg = make_degradation(from_dict(DegradationSettings, trained_degradation(meta)),
                           voxel_size=meta.get("voxel_size_in"))
    # repaired as training's was (a model trained before the repair: as it was)
    held = repaired_box(normalized_vol.data, fov.holdout, repair="sensor_defects_repaired" in meta)[0]
    psf_sigma_um = (meta.get("settings") or {}).get("psf_sigma_um")  # PSF-scaled targets: score what was learned
    held = psf_scaled_targets(held, psf_target_blur_px(psf_sigma_um, factors, meta.get("voxel_size_in")))
    target, low, interp = holdout_pair(held, factors, deg)
    from .ensemble import wrap_for_inference

    tile = tuple(max(8, min(64, n)) for n in low.shape)
    amp = bool(meta.get("guard_amp", True))
    pred = predict_array(model, low, factors=factors, tile_size=tile, device=device, amp=amp)
    # the network's own output (back-projection would hide a dead net), constant where its input
    # is not: on a held-out region of empty background a constant output is the right one
    dead = bool(np.std(pred) < 1e-6 and np.std(low) >= 1e-6)
    extras = meta.get("inference_extras") or {}
    wrapped = wrap_for_inference(model, degradation=deg, noise_level=recorded_noise_level(meta), **extras)
    if wrapped is not model:
        pred = predict_array(wrapped, low, factors=factors, tile_size=tile, device=device, amp=amp)
    data_range = float(max(target.max() - target.min(), 1e-6))
    out = metrics.compare(target, pred, interp, data_range=data_range)
    interval = metrics.psnr_gain_interval(target, pred, interp)
    # an infinite end (resamples of blocks only one output gets exact) is written null: strict JSON
    out["gain_db_interval"] = [round(v, 3) if np.isfinite(v) else None for v in interval] if interval else None
    out["dead_output"] = dead
    out["inference_extras"] = dict(extras) if wrapped is not model else None
    out["psf_sigma_um"] = [float(v) for v in psf_sigma_um] if psf_sigma_um is not None else None
    return out


#: Below this correlation between the input and the restored volume at the input voxels'
#: centres (:func:`selfres.metrics.restored_agreement`) the output is flagged
#: ``restored_unlike_input``. Measured: 0.94–0.998 for the restorations of the real volumes
#: (×2, ×4, tricubic fall-backs included; 0.93 for tricubic of 5-slice sparse beads);
#: 0–0.42 for a constant, random or shifted output (0.46–0.86 when only half is lost).
#: Scaled by the correlation a noise-free output could reach with a noisy input
#: (``correlation_ceiling``): a reviewer's neurites at ~1.5 photons, restored better than
#: tricubic against their truth, measured 0.70 and were flagged as broken at a flat 0.8.
RESTORED_MIN_CORRELATION = 0.8

#: The output's mean over the input's at the input voxels' centres (normalised units,
#: :func:`selfres.metrics.restored_agreement` ``level``) outside this range, by more than
#: :data:`RESTORED_MAX_LEVEL_SHIFT` of the normalised range, flags ``restored_level_shifted``:
#: a wrong gain or offset on the way to the file (e.g. written in normalised units), which
#: the correlation cannot see. Measured: 0.995–1.02 on 189 restorations of real and synthetic
#: volumes, both modes (1.05 for a z-cubic fall-back whose mean moved by 0.001 of the range)
RESTORED_LEVEL_RATIO = (0.8, 1.25)
RESTORED_MAX_LEVEL_SHIFT = 0.02


#: Share of the QC window's output voxels below the darkest input voxel by more than
#: :data:`selfres.metrics.UNDERSHOOT_DEPTH` above which (and above twice the interpolation's
#: share) a sample is flagged ``restored_undershoots``: dark halos next to bright objects
#: (the demo's beads: 0.54 % in the fifty-first session, 0.41-0.46 % before; tricubic 0 %; its neurites 0 %)
UNDERSHOOT_SHARE = 0.001

#: Share of the QC window's output voxels above the brightest input voxel by more than
#: :data:`selfres.metrics.UNDERSHOOT_DEPTH` above which (and above twice the interpolation's share)
#: an isotropic sample is flagged ``restored_overshoots``: bright rims (ringing) at the edges of
#: objects larger than the axial blur. Measured (``bench/isotropic.py``, sixty-first session): a
#: real stack of 12-µm nuclei at 4-µm z steps 0.57 % (z-cubic 0.04 %; rims 1.4× the nuclei's flat
#: tops, a helper's walkthrough, and restored_brighter read 1.05); good restorations of three
#: semi-synthetic stacks 0.002 % or less, their truths 0.012 % or less, z-cubic 0; enhance mode is
#: not flagged (sub-voxel objects restored ×2–4 rise above the acquisition's brightest voxel, beads)
OVERSHOOT_SHARE = 0.001

#: Share of the QC window's voxels of an integer output at its type's largest value where its
#: interpolation is below it (an input's saturated cores are at the top in both), above which
#: the output is flagged
#: ``restored_clipped``: the restoration went past the type's range and was cut. A review's
#: isotropic uint8 output of dense nuclei: 1.27 % at 255 (the input's maximum 245), nuclei
#: 1.5–1.8× their input's total, and the clipping had hidden ``restored_brighter`` (1.08
#: read on the clipped volume, 1.81 on the float32 one); a 16-bit confocal nucleus at 1,2,2: one
#: voxel, 0.0001 % (harmless, not flagged)
CLIPPED_SHARE = 0.0005

#: Ratio of the brightest structures of an isotropic-mode output to those of its z-cubic
#: interpolation (:func:`selfres.metrics.brightening`, QC window) above which it is flagged
#: ``restored_brighter``. Measured: 1.18 for a good ×4 restoration of a z-blurred nucleus stack
#: (its truth: 1.19), 1.01–1.06 on real stacks; 1.76 for sparse cells longer in z than the
#: PSF whose axial σ was estimated from that length (1.7× the input at the acquired slices,
#: 23 dB below z-cubic against the truth) — a walkthrough, nineteenth session
BRIGHTENING_RATIO = 1.5


#: Isotropy below which an isotropic-mode output is flagged ``isotropy_not_reached`` (above its
#: inverse, ``isotropy_implausible``): :data:`selfres.flags.ISOTROPY_REACHED`


#: Share of saturated input voxels (``saturated_fraction`` of the normalised volume) above which
#: a sample is flagged ``saturated_input``: a few objects' clipped cores (a review: 2 of 4 objects
#: clipped, 0.29 % of the volume, were not flagged at the earlier 1 %), not a camera's hot pixels
#: at its largest value (tens of them in a stack: under 0.01 %)
SATURATED_SHARE = 0.001


def _scores_text(m: dict) -> str:
    """The log's line of scores: self-validation (PSNR dB, SSIM where measured) and, where a
    reference was given, against it (a walkthrough read a raw dict of 15-digit floats, without
    the reference's)."""
    def pair(scores, model, interp, unit, digits):
        a, b = scores.get(model), scores.get(interp)
        return None if a is None or b is None else f"{a:.{digits}f} vs {b:.{digits}f}{unit}"

    parts = []
    for label, scores, model in (("held-out: model", m.get("self_validation") or {}, "psnr_model"),
                                 ("reference: output", m.get("reference") or {}, "psnr")):
        psnr = pair(scores, model, "psnr_interp", " dB", 2)
        ssim = pair(scores, model.replace("psnr", "ssim"), "ssim_interp", "", 4)
        if psnr:
            parts.append(f"{label} vs interpolation PSNR {psnr}" + (f", SSIM {ssim}" if ssim else ""))
    return "; ".join(parts) or "no scores"


def qc_flags(agreement: dict, *, mode: str, content: str, structure: float | None, planes_alike: float | None,
             level_rounding: float = 0.0, isotropy_in: float | None = None, isotropy_out: float | None = None,
             voxel_size_known: bool = True, saturated_fraction: float | None = None,
             voxel_size_given: Sequence[float] | None = None,
             voxel_size_file: Sequence[float] | None = None) -> list[str]:
    """The QC flags that the figures of the input and of the restored volume as written decide
    (:func:`stage_qc` measures them; the model's own flags come from ``model.json``), in the
    order the report lists them.

    Parameters
    ----------
    agreement
        :func:`selfres.metrics.restored_agreement` with ``undershoot`` and ``brightening``
        added (:func:`selfres.metrics.undershoot`, :func:`selfres.metrics.brightening`).
    content
        What ``restored.ome.zarr`` holds: ``model`` or ``interpolation``.
    structure, planes_alike
        :func:`selfres.metrics.structure_share` and :func:`selfres.metrics.plane_correlation`
        of the input's QC window.
    level_rounding
        Half a step of an integer output dtype, in normalised units (0 for float outputs).
    isotropy_in, isotropy_out
        The input's and the output's isotropy (``isotropic`` mode: :func:`isotropy_flags`).
    voxel_size_given, voxel_size_file
        The voxel size the sheet gave (µm) and the one the file records, where both exist
        (:func:`voxel_size_unlike_file`).
    """
    flags: list[str] = []
    if mostly_noise(structure, planes_alike):
        flags.append("input_mostly_noise")
    if agreement.get("nonfinite_voxels"):
        flags.append("restored_not_finite")
    r, ceiling = agreement.get("correlation_with_input"), agreement.get("correlation_ceiling")
    if r is not None and r < RESTORED_MIN_CORRELATION * (1.0 if ceiling is None else ceiling):
        flags.append("restored_unlike_input")
    level = agreement.get("level")
    if level and abs(level["output_mean"] - level["input_mean"]) > RESTORED_MAX_LEVEL_SHIFT + level_rounding and not (
            level["ratio"] is not None and RESTORED_LEVEL_RATIO[0] <= level["ratio"] <= RESTORED_LEVEL_RATIO[1]):
        flags.append("restored_level_shifted")
    under = agreement.get("undershoot") or {}
    if under and under["output"] > UNDERSHOOT_SHARE and under["output"] > 2 * under["interpolation"]:
        flags.append("restored_undershoots")
    clipped = agreement.get("clipped") or {}
    if clipped and clipped["beyond_interpolation"] > CLIPPED_SHARE:
        flags.append("restored_clipped")
    if mode == "isotropic":
        brighter = (agreement.get("brightening") or {}).get("ratio")
        if brighter is not None and brighter > BRIGHTENING_RATIO:
            flags.append("restored_brighter")  # an interpolated output is its own interpolation: 1
        over = agreement.get("overshoot") or {}
        if over and over["output"] > OVERSHOOT_SHARE and over["output"] > 2 * over["interpolation"]:
            flags.append("restored_overshoots")
        flags += isotropy_flags(isotropy_in, isotropy_out, content)
    if not voxel_size_known:
        flags.append("voxel_size_missing")
    elif voxel_size_unlike_file(voxel_size_given, voxel_size_file):
        flags.append("voxel_size_unlike_file")
    if saturated_fraction is not None and saturated_fraction > SATURATED_SHARE:
        flags.append("saturated_input")
    return flags


def isotropy_flags(iso_in: float | None, iso_out: float | None, content: str) -> list[str]:
    """The flags of an isotropic-mode output's isotropy estimate (lateral / axial).

    ``isotropy_not_reached``: still clearly anisotropic, its own figure below
    :data:`ISOTROPY_REACHED`, or it holds the z interpolation (the guard kept it) of an input
    below it. Interpolation adds no axial detail, yet the decorrelation estimate on its finer z
    grid reads interpolated noise as detail (a noisy bead stack: 0.23 in, 0.85 as z-cubic); so
    an interpolated output is judged by its input's figure. ``isotropy_implausible``: its own
    figure above ``1 / ISOTROPY_REACHED``, an axial resolution finer than the lateral, which
    the acquisition cannot give (a 4-slice stack read 2.38): the estimate does not hold there.
    """
    def known(value):
        return value is not None and np.isfinite(value)

    judged = iso_in if content == "interpolation" else iso_out
    flags: list[str] = []
    if known(judged) and judged < ISOTROPY_REACHED:
        flags.append("isotropy_not_reached")
    if content != "interpolation" and known(iso_out) and iso_out > 1 / ISOTROPY_REACHED:
        flags.append("isotropy_implausible")  # (an interpolated output is judged by its input's figure)
    return flags


def stage_qc(
    normalized: str | Path,
    restored: str | Path,
    model_dir: str | Path,
    fov_json: str | Path,
    metrics_json: str | Path,
    *,
    sample: str,
    reference: str | Path | None = None,
    settings: QcSettings | None = None,
    threads: int | None = None,
) -> dict:
    """Compute ``qc/metrics.json`` (contract keys) and side tables (beads, spectra)."""
    started = time.monotonic()
    settings = settings or QcSettings()
    set_threads(threads)
    from . import metrics
    from .models import gpu_allocated

    ref = None
    if reference:  # fail fast, before any model work, on a reference off the output grid
        try:
            out_shape = read_restored(restored, sample=sample).shape
            ref = io.read_volume(reference, lazy=True)
            ref_shape = ref.shape
        except InputError as exc:
            raise exc.for_sample(sample) from None
        if ref_shape != out_shape:
            raise InputError(reference, f"reference shape {ref_shape} does not match the output grid {out_shape} "
                             "(a reference must have the shape of restored.ome.zarr)", sample=sample)
    vol, params = read_normalized(normalized, lazy=True)  # read where needed: two boxes, a window, samples
    model, _, meta = load_trained(model_dir)
    check_model_acquisition(meta, vol.attrs, model_dir=model_dir, normalized=normalized, sample=sample)
    fov = TrainingFov.load(fov_json, volume_shape=vol.data.shape, mode=meta.get("mode"), sample=sample,
                           acquisition=normalise.acquisition_of(vol.attrs))
    out = read_restored(restored, sample=sample)  # lazy: read below without refusing NaN (checked and flagged)
    check_restored_grid(restored, out.shape, vol.data.shape, meta, sample=sample)
    restored_attrs = out.attrs
    check_restored_origin(restored, restored_attrs, model_dir, vol.attrs, sample=sample)
    mode = meta.get("mode", "enhance")
    flags = list(dict.fromkeys(meta.get("flags", [])))
    sv = meta.get("self_validation", {})
    if mode == "enhance":
        sv = self_validation(vol, fov, model, meta)
        if sv.pop("dead_output"):
            flags.append("dead_output")
        if not (sv["psnr_model"] > sv["psnr_interp"]) and "model_worse_than_interpolation" not in flags:
            flags.append("model_worse_than_interpolation")
    elif mode == "isotropic":
        from . import isotropic

        sv = isotropic.self_validation(vol, fov, model, meta)
    vs_in = voxel_size_of(vol)
    vs_out = tuple(out.voxel_size) if vs_in else None
    raw_norm = vol.data
    # input and output stay lazy: the checks and the spectra read them block by block, the
    # resolution figures one window, a reference comparison and the bead search blocks, the bead fits profiles
    restored_norm = normalise.apply(out.data, params)
    ratio = [o / i for o, i in zip(restored_norm.shape, raw_norm.shape)]  # output voxels per input voxel
    if mode == "isotropic" and meta.get("factor"):  # z: round(nz·f) / nz is f only to within 0.5 / nz
        ratio[0] = float(meta["factor"])
    # one window (the most contrasted, full z) of input, output and interpolation baseline: for
    # the input's noise, the undershoot check, the decorrelation estimate (upsampling alone reads
    # as sharper) and spectra
    y0, y1, x0, x1 = metrics.lateral_window(raw_norm, max(8, int(256 / max(ratio[1:]))))
    raw_w = np.asarray(raw_norm[:, y0:y1, x0:x1])
    from .noise import noise_level_function

    noise_w = noise_level_function(raw_w)
    agreement = metrics.restored_agreement(raw_norm, restored_norm, noise=noise_w, factors=ratio)
    structure = metrics.structure_share(raw_w, noise_w)
    # and nothing carries over from plane to plane (the noise estimate reads texture at the
    # sampling limit, sub-voxel puncta, as noise; the optics spread those over planes)
    planes_alike = metrics.plane_correlation(raw_w)
    if agreement["nonfinite_voxels"]:  # flagged; the figures below still run, with non-finite voxels read as 0
        restored_norm = restored_norm.map_blocks(np.nan_to_num, nan=0.0, posinf=0.0, neginf=0.0)
    out_dtype = np.dtype(out.source_dtype)  # an integer output is rounded, and clipped at its dtype's lowest value
    res = {"lateral_in": None, "axial_in": None, "lateral_out": None, "axial_out": None}
    iso_in = iso_out = None
    qc_dir = Path(metrics_json).parent
    qc_dir.mkdir(parents=True, exist_ok=True)
    for side in ("spectra.json", "beads.tsv"):  # an earlier run's, made with other settings or of another output
        (qc_dir / side).unlink(missing_ok=True)
    res_interp = {"lateral": None, "axial": None}
    iso_interp = None
    out_w = np.asarray(restored_norm[:, round(y0 * ratio[1]):round(y1 * ratio[1]),
                                     round(x0 * ratio[2]):round(x1 * ratio[2])])
    interp_w = interpolation_of(raw_w, meta, mode)
    raw_min = (vol.attrs.get("raw_range") or [None])[0]
    lowest = ((float(np.iinfo(out_dtype).min) - params.low) / params.span
              if np.issubdtype(out_dtype, np.integer) else None)
    agreement["undershoot"] = metrics.undershoot(
        out_w, interp_w, floor=float(raw_w.min()) if raw_min is None else (float(raw_min) - params.low) / params.span,
        lowest=lowest)
    agreement["brightening"] = metrics.brightening(out_w, interp_w)
    raw_max = (vol.attrs.get("raw_range") or [None, None])[1]
    agreement["overshoot"] = metrics.overshoot(
        out_w, interp_w, ceiling=float(raw_w.max()) if raw_max is None else (float(raw_max) - params.low) / params.span)
    if np.issubdtype(out_dtype, np.integer):  # values past the type's largest were cut when written
        top = (float(np.iinfo(out_dtype).max) - params.low) / params.span - 0.5 / params.span
        at_top = out_w >= top
        # voxel by voxel, where the interpolation stays below it: an input's saturated cores are at
        # the top in both, and their share would hide clipping elsewhere (a review)
        agreement["clipped"] = {"output": float(np.mean(at_top)),
                                "beyond_interpolation": float(np.mean(at_top & (interp_w < top))),
                                "at": int(np.iinfo(out_dtype).max)}
    if settings.resolution and vs_in is not None:
        est = functools.partial(metrics.resolution_lateral_axial, max_slices=settings.max_resolution_slices)
        li, ai = est(raw_w, voxel_size=vs_in)
        lo, ao = est(out_w, voxel_size=vs_out)
        lt, at = est(interp_w, voxel_size=vs_out)
        res = {"lateral_in": li, "axial_in": ai, "lateral_out": lo, "axial_out": ao}
        res_interp = {"lateral": lt, "axial": at}
        iso_in, iso_out, iso_interp = metrics.isotropy(li, ai), metrics.isotropy(lo, ao), metrics.isotropy(lt, at)
        if raw_norm.shape[0] >= 2:  # a 2-D image (one slice) has no axial spectrum
            # the same window of input, interpolation and output: power beyond the input's
            # Nyquist is new detail only where the output holds more than the interpolation
            # (which adds none, yet leaks power there)
            spectra = {name: list(metrics.axial_spectrum(a, voxel_size=v))
                       for name, a, v in (("input", raw_w, vs_in), ("interpolation", interp_w, vs_out),
                                          ("output", out_w, vs_out))}
            write_json(qc_dir / "spectra.json", clean_floats(spectra | {"nyquist_in": 0.5 / vs_in[0]}))
    learned_from = meta.get("training_input") if meta.get("adopted_from") else None
    if isinstance(learned_from, dict) and mostly_noise(learned_from.get("structure_share"),
                                                       learned_from.get("plane_correlation")):
        flags.append("model_trained_on_noise")  # the sample that trained it: its own QC says input_mostly_noise
    flags += qc_flags(agreement, mode=mode, content=restored_attrs.get("content", "model"), structure=structure,
                      planes_alike=planes_alike,
                      # half a step of an integer dtype, in normalised units, is no shift (a dim uint8
                      # stack's denoised background of 0.4 counts is written as 0)
                      level_rounding=0.5 / params.span if np.issubdtype(out_dtype, np.integer) else 0.0,
                      isotropy_in=iso_in, isotropy_out=iso_out, voxel_size_known=vs_in is not None,
                      saturated_fraction=vol.attrs.get("saturated_fraction"),
                      voxel_size_given=vs_in if vol.attrs.get("voxel_size_source") == "sheet" else None,
                      voxel_size_file=vol.attrs.get("voxel_size_file"))
    # a job given a GPU that computed on the CPU (a CPU build of torch on the GPU nodes): hours of a GPU held;
    # not a CPU asked for by name (--device cpu on a GPU node)
    ran = [meta.get("ran_on"), restored_attrs.get("ran_on"), *(restored_attrs.get("tiles_ran_on") or [])]
    if any(isinstance(r, dict) and r.get("device") == "cpu" and r.get("requested") != "cpu" and gpu_allocated(
            {"CUDA_VISIBLE_DEVICES": r.get("cuda_visible_devices") or ""}) for r in ran):
        flags.append("gpu_unused")
    ref_metrics = None
    if ref is not None:
        # block by block (metrics.compare_to_reference): a truth and an output larger than memory can be scored
        try:
            rparams = normalise.fit_percentiles(ref.data, low_percentile=params.low_percentile,
                                                high_percentile=params.high_percentile)
        except ValueError:
            raise InputError(reference, "the reference has non-finite voxels (NaN or Inf): cannot score against it",
                             sample=sample) from None
        interp_blocks, whole_axes = interpolation_blocks(raw_norm, meta, mode)
        ref_n = normalise.apply(ref.data, rparams)
        try:
            c = metrics.compare_to_reference(ref_n, restored_norm, interp_blocks, whole_axes=whole_axes)
        except ValueError as exc:  # a reference with NaN/Inf or a constant one (the output was made finite above)
            raise InputError(reference, f"cannot score against this reference: {exc}", sample=sample) from None
        ref_metrics = {"psnr": c["psnr_model"], "ssim": c["ssim_model"], "psnr_interp": c["psnr_interp"],
                       "ssim_interp": c["ssim_interp"]}
        if (restored_attrs.get("content", "model") == "model"
                and not ref_metrics["psnr"] > ref_metrics["psnr_interp"]):
            flags.append("worse_than_interpolation_on_reference")  # the truth outranks the held-out figure
    # hot and dead camera pixels: repaired for the network since the fortieth session; a model
    # trained before restores the acquisition with them as its network learned them
    defects = {"repaired": meta.get("sensor_defects_repaired"), "not_repaired": None}
    if defects["repaired"] is None:
        from .noise import sensor_defect_positions

        found = sensor_defect_positions(raw_norm)
        defects["not_repaired"] = 0 if found is None else int(found.sum())
        if defects["not_repaired"]:
            flags.append("sensor_defects_not_repaired")
    if settings.beads:
        import pandas as pd

        # the same beads in and out: found on the finer output grid (blurred by one voxel, so
        # that noise makes no maxima of its own), each centre mapped to input voxels with the
        # contract's grid convention; profiles widened to the beads' width (finely sampled
        # beads, and any upsampled output, are wider than the default profile)
        pos_out = metrics.detect_beads(restored_norm, smooth=metrics.BEAD_SEARCH_SMOOTH)
        t_out = metrics.bead_fwhm_table_widened(restored_norm, voxel_size=vs_out or (1, 1, 1), positions=pos_out)
        pos_in = np.array([[int(round((c + 0.5) / r - 0.5)) for c, r in zip(row, ratio)]
                           for row in t_out[["z", "y", "x"]].to_numpy()], dtype=int).reshape(-1, 3)
        pos_in = np.clip(pos_in, 0, np.array(raw_norm.shape) - 1)
        hw_in = tuple(max(3, int(np.ceil(9 / r))) for r in ratio)
        t_in = metrics.bead_fwhm_table_widened(raw_norm, voxel_size=vs_in or (1, 1, 1), positions=pos_in,
                                               half_width=hw_in)
        io.write_text_atomic(qc_dir / "beads.tsv", pd.concat(
            [t_in.assign(volume="input"), t_out.assign(volume="output")]).to_csv(sep="\t", index=False))
    trained = meta.get("settings") or {}  # the settings the model was trained (an adopted one: judged) with
    recorded_degradation = (trained.get("degradation") or {}) if mode == "enhance" else {}
    m = {
        "sample": sample,
        "mode": mode,
        "input_shape": list(raw_norm.shape),
        "output_shape": list(out.data.shape),
        "voxel_size_in": list(vs_in) if vs_in else None,
        "voxel_size_out": list(vs_out) if vs_out else None,
        # the file's own, where the sheet gave another (normalise keeps it): the report shows both
        **({"voxel_size_file": list(vol.attrs["voxel_size_file"])} if vol.attrs.get("voxel_size_file") else {}),
        "train_seconds": meta.get("train_seconds"),
        "infer_seconds": _infer_seconds(restored, restored_attrs),
        "qc_seconds": time.monotonic() - started,  # up to here: writing the file is not timed
        "self_validation": {k: sv.get(k) for k in ("psnr_model", "psnr_interp", "ssim_model", "ssim_interp")},
        "resolution_um": res,
        "isotropy_in": iso_in,
        "isotropy_out": iso_out,
        "resolution_interp_um": res_interp,
        "isotropy_interp": iso_interp,
        "reference": ref_metrics,
        "flags": list(dict.fromkeys(flags)),
        "restored_content": restored_attrs.get("content", "model"),
        "inference_extras": sv.get("inference_extras"),
        "psf_sigma_um": sv.get("psf_sigma_um"),
        # enhance with train.degradation.noise "match": the acquisition's noise σ at two intensities,
        # to which every training input and the held-out input were topped up
        "noise_sigma_at": (meta.get("noise") or {}).get("sigma_at") if mode == "enhance" else None,
        "noise_model": recorded_degradation.get("noise"),
        # how the training and held-out inputs were made from the acquisition (the report names it:
        # an acquisition sampled otherwise, e.g. binned on the camera, is not what the figure scores)
        "degradation_method": recorded_degradation.get("method"),
        "holdout_gain_db_interval": sv.get("gain_db_interval"),
        # the network's own held-out gain without the inference extras, as its guard measured it: the
        # report says how much of the gain is the network's (a walkthrough: +0.88 dB, +0.02 of it learned)
        "holdout_gain_network_alone_db": network_alone_gain(meta) if mode == "enhance" else None,
        # the gain the guard asks of a trained network, and whether its coarse-scale test failed
        "guard_margin_db": trained.get("guard_margin_db"),
        "guard_confidence": trained.get("guard_confidence"),
        "coarse_scale_failed": bool(meta.get("coarse_scale_failed")),
        # isotropic: how lateral slices were made to look axial (the held-out check's assumption)
        "isotropic_degradation": ({k: (meta.get("degradation") or {}).get(k)
                                   for k in ("sigma_px", "sigma_source", "noise_sigma_mean")}
                                  | {"method": (meta.get("isotropic") or {}).get("degradation")}
                                  if mode == "isotropic" else None),
        "restored_check": agreement,
        # the most structured lateral tile of the input's QC window: 1 − noise variance / variance
        "input_structure_share": structure,
        "input_plane_correlation": planes_alike,  # each plane with the next (clipped): ~0 for noise alone
        # hot and dead camera pixels: repaired for the network (model.json), or found and not
        # (a model trained before the repair existed)
        "sensor_defects": defects,
        # serial ×4: the later step of the two stages (meta's own is stage 2's), so 0 means nothing was learned
        "best_step": (max((meta.get("serial") or {}).get("stage_best_steps") or [meta.get("best_step") or 0])
                      if meta.get("serial") else meta.get("best_step")),
        # serial ×4: each stage's kept step (the report marks both on the training curves)
        "stage_best_steps": (meta.get("serial") or {}).get("stage_best_steps"),
        "stop_reason": meta.get("stop_reason"),
        # model_from: the sample that trained the model (judged on this sample's held-out region)
        "adopted_from": (meta.get("adopted_from") or {}).get("sample"),
        # what these figures were computed from: the report refuses them beside another model or output
        "computed_from": metrics_origin(model_dir, restored_attrs),
    }
    m = clean_floats(m)
    write_json(metrics_json, m)
    log.info("metrics: %s; flags: %s", _scores_text(m), ", ".join(m["flags"]) or "none")
    return m


def _infer_seconds(restored, restored_attrs: dict) -> float | None:
    """The inference time of a sample: its restored store's, plus that of the model output
    kept beside it when the guard put the interpolation in ``restored`` (alone, the summary
    gave a fallen-back sample's 10 s of interpolation for a 230 s job)."""
    secs = restored_attrs.get("infer_seconds")
    beside = model_output_path(restored)
    if restored_attrs.get("content") != "interpolation" or not beside.exists():
        return secs
    try:
        extra = io.read_ome_zarr(beside, lazy=True).attrs.get("infer_seconds")
    except InputError:
        return secs
    return None if secs is None and extra is None else float(secs or 0.0) + float(extra or 0.0)


def interpolation_of(raw_norm: np.ndarray, meta: dict, mode: str) -> np.ndarray:
    """The interpolation baseline on the output grid (tricubic, or z-cubic for isotropic)."""
    from . import degrade

    if mode == "isotropic":
        f = float(meta["factor"])
        return _zcubic(raw_norm, f)
    return np.asarray(degrade.upscale_cubic(raw_norm, tuple(meta["factors"])), dtype=np.float32)


def interpolation_blocks(raw_norm, meta: dict, mode: str) -> tuple[Callable[[tuple[slice, ...]], np.ndarray],
                                                                   tuple[int, ...]]:
    """:func:`interpolation_of` a block at a time: a function of output-grid slices that
    returns that block (float32; equal to the slice of :func:`interpolation_of` to float
    rounding), reading the input block with the 2-voxel mirrored halo of the cubic kernel;
    and the axes every block must span whole (a non-integer factor: isotropic's z)."""
    from . import degrade
    from .infer import read_padded

    factors = (float(meta["factor"]), 1.0, 1.0) if mode == "isotropic" else tuple(float(f) for f in meta["factors"])
    whole = tuple(a for a, f in enumerate(factors) if not f.is_integer())

    def block(slices: tuple[slice, ...]) -> np.ndarray:
        lo, hi, crop = [], [], []
        for ax, (s, f, n) in enumerate(zip(slices, factors, raw_norm.shape)):
            if ax in whole:
                lo.append(0), hi.append(n), crop.append(s)
            else:
                f = int(f)
                a, b = s.start // f - (2 if f > 1 else 0), -(-s.stop // f) + (2 if f > 1 else 0)
                lo.append(a), hi.append(b), crop.append(slice(s.start - a * f, s.stop - a * f))
        up = degrade.upscale_cubic(read_padded(raw_norm, lo, hi), factors)
        return np.asarray(up, dtype=np.float32)[tuple(crop)]

    return block, whole


def _zcubic(raw_norm: np.ndarray, f: float) -> np.ndarray:
    from . import degrade

    return np.asarray(degrade.upscale_cubic(raw_norm, (f, 1, 1)), dtype=np.float32)
