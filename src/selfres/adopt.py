"""A sample restored with another sample's trained model (sheet column ``model_from``).

The time points of a series, or the tiles of one acquisition, share a microscope, a
sample and a staining: one model trained on one of them restores all of them alike (no
model-to-model differences between time points, one training instead of many). Nothing
is taken on trust: each adopting sample is judged on *its own* held-out region, with the
acquisition noise measured on *its own* training FOV, by the same guard as a sample that
trained (:func:`selfres.train.guard_with_extras`), and gets its own ``model/`` folder (the
same weights, a ``model.json`` that describes this sample), so that inference, QC and the
report run as for any sample.

Both modes. An ``isotropic`` model is tied to its stack's axial factor, so the two samples
must have the same one (within :data:`ISOTROPIC_FACTOR_TOLERANCE`), and to its degradation:
this sample's held-out lateral slices are degraded as the source's were in training, with
the analytic model or, for ``isotropic.degradation: learned``, with the lateral→axial
generator saved beside the weights (what that generator learned of the source's axial
slices is taken to hold for this sample, as the weights are).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import models, noise
from .infer import predict_array
from .normalise import same_series
from .settings import InferSettings, TrainSettings, from_dict, to_dict
from .train import (
    SHARE_PROBE_SHAPE,
    TrainResult,
    acquisition_noise_given,
    central_crop,
    guard_with_extras,
    holdout_pair,
    inference_extras,
    make_degradation,
    psf_scaled_targets,
    psf_target_blur_px,
    psnr01,
    resolve_noise_match,
)

log = logging.getLogger("selfres.adopt")

__all__ = ["ISOTROPIC_FACTOR_TOLERANCE", "VOXEL_SIZE_TOLERANCE", "adopt_enhance",
           "adopt_isotropic", "keep_model_for_series"]

#: The source's flags that an adopting sample does not take over: its own guard decides
#: ``model_worse_than_interpolation``, and the flags about how the training went (with advice
#: such as more training time) concern the sample that trained; they stay in ``adopted_from``.
NOT_INHERITED_FLAGS = frozenset({"model_worse_than_interpolation", "early_stopped", "stopped_while_improving",
                                 "training_diverged"})


def trained_by(meta: dict, **extra) -> dict:
    """The ``adopted_from`` record of a model adopted from ``meta``'s: the sample that trained it,
    its held-out figures, flags, training seconds, voxel size and machine. A model that was
    itself adopted (``selfres restore --model-from`` of another adopter's folder) keeps its
    trainer's record, with the sample it came through as ``via``: the training is the trainer's."""
    if meta.get("adopted_from"):
        return dict(meta["adopted_from"], via=meta.get("sample"))
    return {"sample": meta.get("sample"), "self_validation": meta.get("self_validation"),
            "flags": meta.get("flags") or [], "train_seconds": meta.get("train_seconds"),
            "fit_seconds": meta.get("fit_seconds"), "voxel_size_in": meta.get("voxel_size_in"), **extra, "ran_on": meta.get("ran_on"),
            # the acquisition it trained on (its file's checksum and part): traceable from the adopter
            "acquisition": meta.get("acquisition")}


def inherited_flags(meta: dict) -> list[str]:
    """The flags of the source model ``meta`` that describe the model itself, for the adopter."""
    return [f for f in meta.get("flags") or [] if f not in NOT_INHERITED_FLAGS]


#: Relative difference of voxel size (per axis) beyond which the log warns that the model
#: was trained at another sampling.
VOXEL_SIZE_TOLERANCE = 0.05
#: Relative difference of the axial factor (voxel_z / voxel_xy) up to which an isotropic
#: model restores another sample (beyond it the model learned another axial blur).
ISOTROPIC_FACTOR_TOLERANCE = 0.01


def model_was_learned(meta: dict) -> bool:
    """Whether a saved enhance model holds a learned mapping (some stage kept a step > 0),
    as the guard asks (:func:`selfres.train.guard_with_extras`): an untrained one is tricubic
    (+ the inference extras) and is judged by the confidence rule, a learned one by the margin.
    A serial ×4 model saved before its stages' steps were recorded counts as learned."""
    serial = meta.get("serial")
    if serial:
        steps = serial.get("stage_best_steps")
        return True if steps is None else any(int(s) > 0 for s in steps)
    return int(meta.get("best_step") or 0) > 0


def adopt_enhance(
    model: torch.nn.Module,
    meta: dict,
    train_volume: np.ndarray,
    holdout_volume: np.ndarray,
    *,
    sample: str,
    voxel_size: Sequence[float] | None,
    guard_margin_db: float,
    guard_confidence: float,
    infer_settings: InferSettings,
    device: torch.device | str = "cpu",
    path: str = "<volume>",
    acquisition: Mapping | None = None,
) -> dict:
    """``model.json`` metadata for ``sample`` restored with ``model`` (trained on another
    sample, whose metadata is ``meta``), judged on this sample's held-out region.

    Parameters
    ----------
    model
        The trained network as inference runs it (a serial ×4 model composed).
    meta
        Its training metadata (``model.json``'s ``metadata``).
    train_volume, holdout_volume
        This sample's normalised training FOV and held-out region.
    voxel_size
        This sample's voxel size (µm), or ``None``.
    guard_margin_db, guard_confidence
        The guard's settings for this sample.
    infer_settings
        This sample's inference settings (the extras the guard scores, ``amp``).
    path
        This sample's file, for messages.
    acquisition
        This sample's part of its file (:func:`selfres.normalise.acquisition_of`), for messages.

    Returns
    -------
    dict
        The metadata: the source's, with ``sample``, ``adopted_from`` (source sample, its own
        held-out figures and training time), ``self_validation``, ``flags``, the noise levels
        and ``voxel_size_in`` of this sample; ``train_seconds`` is the time taken here.
    """
    t0 = time.monotonic()
    factors = tuple(int(f) for f in meta["factors"])
    trained = from_dict(TrainSettings, meta.get("settings") or {})
    # a top-up the source's config set by hand: the level it implies (nothing measured); else this sample's
    given = acquisition_noise_given(train_volume, factors, trained, voxel_size) if meta.get("noise") is None else None
    measured = noise.noise_level_function(train_volume) if given is None else None
    if meta.get("noise") is not None:  # the top-up was estimated on the source: estimate it on this sample
        unresolved = dataclasses.replace(trained.degradation, noise_variance=None)
        trained, noise_info = resolve_noise_match(train_volume, factors,
                                                  dataclasses.replace(trained, degradation=unresolved),
                                                  voxel_size, level=measured)
    else:
        noise_info = None
    trainer = trained_by(meta)
    _warn_if_sampled_otherwise(trainer["voxel_size_in"], voxel_size, sample=sample, source=trainer["sample"],
                               skip_z=np.shape(train_volume)[0] == 1)
    degradation = make_degradation(trained.degradation, voxel_size=voxel_size)
    # the source's PSF (train.psf_sigma_um) needs this sample's voxel size too
    blur = psf_target_blur_px(trained.psf_sigma_um, factors, voxel_size, path=path)
    if blur is not None:
        holdout_volume = psf_scaled_targets(holdout_volume, blur)
    target, low, interp = holdout_pair(holdout_volume, factors, degradation)
    data_range = float(max(target.max() - target.min(), 1e-6))
    tile = tuple(max(8, min(64, n)) for n in low.shape)
    amp = bool(infer_settings.amp)
    network = predict_array(model, low, factors=factors, tile_size=tile, device=device, amp=amp)
    learned = model_was_learned(meta)
    result = TrainResult(
        model=model, spec=None, best_step=int(meta.get("best_step") or 0) if not meta.get("serial") else int(learned),
        steps_done=0, seconds=0.0, stop_reason="adopted", val_psnr_model=psnr01(target, network, data_range),
        val_psnr_interp=psnr01(target, interp, data_range), holdout=(target, low, interp), settings=trained,
        noise=noise_info, acquisition_noise=given or measured.recorded(),
        coarse_scale_failed=bool(meta.get("coarse_scale_failed")),  # the source's training: the same mapping
    )
    if not learned and not meta.get("serial"):
        result.flags.append("model_worse_than_interpolation")  # as train_enhance leaves an untrained net
    elif result.val_psnr_model <= result.val_psnr_interp + guard_margin_db or result.coarse_scale_failed:
        result.flags.append("model_worse_than_interpolation")
    extras = inference_extras(infer_settings)
    psnr_out, flags = guard_with_extras(
        result, factors=factors, degradation=degradation, extras=extras, margin_db=guard_margin_db,
        confidence=guard_confidence, device=device, amp=amp,
        acquisition=central_crop(train_volume, SHARE_PROBE_SHAPE))
    source_flags = inherited_flags(meta)
    out = dict(meta)
    out.update({
        "sample": sample,
        "adopted_from": trained_by(meta),
        "voxel_size_in": list(voxel_size) if voxel_size else None,
        "self_validation": {"psnr_model": psnr_out, "psnr_interp": result.val_psnr_interp,
                            "psnr_network": result.val_psnr_model},
        "flags": list(dict.fromkeys(source_flags + flags)),
        # the guard that judged this sample was its own (its sheet may set another margin): the
        # report quotes these, not the source's
        "settings": to_dict(trained) | {"guard_margin_db": guard_margin_db, "guard_confidence": guard_confidence},
        "train_seconds": time.monotonic() - t0,
        "device": str(device),
        "ran_on": models.ran_on(device),
    })
    for key in ("noise", "acquisition_noise", "correction_noise"):
        out.pop(key, None)
    if noise_info is not None:
        out["noise"] = noise_info
    out["acquisition_noise"] = result.acquisition_noise.as_list()
    if result.correction_noise is not None:
        out["correction_noise"] = result.correction_noise.as_list()
    shrink = bool(extras.get("back_projection_shrink")) and result.correction_noise is not None
    out["inference_extras"] = {**extras, "back_projection_shrink": shrink}
    out["guard_amp"] = amp  # this sample's guard's precision, as QC re-scores it
    log.info("sample %s adopts the model of %s: held-out %.2f dB vs tricubic %.2f dB (network alone %.2f dB)%s",
             named(sample, acquisition), named(meta.get("sample"), meta.get("acquisition")), psnr_out, result.val_psnr_interp, result.val_psnr_model,
             "; flagged model_worse_than_interpolation" if "model_worse_than_interpolation" in out["flags"] else "")
    return out


def named(sample, acquisition: Mapping | None) -> str:
    """A sample in a message, with the part of its file it is (``lapse (time point 3)``): the
    samples of one file's time points share its name where ``selfres restore`` names them."""
    parts = [f"{'time point' if k == 'timepoint' else k} {acquisition[k]}" for k in ("series", "channel", "timepoint")
             if acquisition and acquisition.get(k) is not None]
    return f"{sample}" + (f" ({', '.join(parts)})" if parts else "")


def keep_model_for_series(out: dict, meta: dict, acquisition: Mapping | None, *, sample: str) -> dict:
    """An adopting time point of the series that trained the model keeps the network's output
    where its own held-out gain is above 0 but under the guard's margin: the guard let the
    network through on the time point that trained it, and a series restored partly by the
    network and partly by interpolation jumps in sharpness and peak intensity at the switch
    (a reviewer's filaments: −4.5 % peak and +4.5 % width in one frame). ``out``: the adopter's
    metadata (:func:`adopt_enhance`, :func:`adopt_isotropic`); ``meta``: the model's.
    ``model_worse_than_interpolation`` becomes ``below_margin_kept_for_series``. A loss (gain ≤ 0)
    still falls back, and a model adopted through another sample, or an ``enhance`` model that kept its
    starting point (judged by the guard's confidence test, not its margin), is left to each sample's guard."""
    flags = list(out.get("flags") or [])
    sv = out.get("self_validation") or {}
    if ("model_worse_than_interpolation" not in flags or "model_worse_than_interpolation" in (meta.get("flags") or [])
            or meta.get("adopted_from") or not same_series(meta.get("acquisition"), acquisition)
            # an enhance model that learned nothing is judged by the confidence test, not the margin
            or (meta.get("mode") == "enhance" and not model_was_learned(meta))):
        return out
    gain = float(sv.get("psnr_model", float("nan"))) - float(sv.get("psnr_interp", float("nan")))
    if not gain > 0:
        return out
    flags.remove("model_worse_than_interpolation")
    flags.append("below_margin_kept_for_series")
    log.warning("sample %s: held-out gain %+.2f dB, under the guard's margin but above 0; the network's output is "
                "kept, as for time point %s of the same acquisition, which trained the model, so that the series "
                "is restored one way (flag below_margin_kept_for_series)", sample, gain,
                meta["acquisition"].get("timepoint"))
    return dict(out, flags=flags)


def _warn_if_sampled_otherwise(source_voxel, voxel, *, sample: str, source, skip_z: bool = False) -> None:
    if not source_voxel or not voxel:
        return
    off = [abs(float(a) - float(b)) / max(float(b), 1e-12) for a, b in zip(voxel, source_voxel)][int(skip_z):]
    if max(off) > VOXEL_SIZE_TOLERANCE:
        log.warning("sample %s: voxel size %s µm, but the model of %s was trained at %s µm: it learned another "
                    "sampling (the guard judges it on this sample's held-out region)", sample,
                    tuple(voxel), source, tuple(source_voxel))


def _own_noise_topup(meta: dict, vol, fov, *, sample: str) -> dict:
    """The source's axial degradation (``model.json``'s ``degradation``) with the noise top-up
    of *this* sample: its held-out lateral slices are degraded with the source's σ, and topped
    up to this acquisition's own noise (measured on its training FOV), as the source's were to
    the source's, when the source matched noise (``isotropic.noise_match``)."""
    from .fov import box_slices
    from .isotropic import noise_sigma_at_mean, topup_variance

    d = dict(meta.get("degradation") or {})
    if not (meta.get("isotropic") or {}).get("noise_match", True) or "factor" not in d or "sigma_px" not in d:
        return d
    train_box = np.asarray(vol.data[box_slices(fov.train)], dtype=np.float32)
    level = noise.noise_level_function(train_box)
    d.update({"noise_variance": topup_variance(level, float(d["factor"]), float(d["sigma_px"])),
              "noise_level": level.as_list(), "noise_bins": level.bins,
              "noise_sigma_mean": noise_sigma_at_mean(level, train_box)})
    log.info("sample %s: held-out lateral slices topped up to its own noise (σ %.4f at its mean intensity; the "
             "source's %s)", sample, d["noise_sigma_mean"], _fmt_sigma((meta.get("degradation") or {})
                                                                          .get("noise_sigma_mean")))
    return d


def _fmt_sigma(value) -> str:
    return f"σ {float(value):.4f}" if isinstance(value, (int, float)) else "unknown"


def adopt_isotropic(
    model: torch.nn.Module,
    meta: dict,
    vol,
    fov,
    *,
    sample: str,
    factor: float,
    guard_margin_db: float,
    degrader: torch.nn.Module | None = None,
    device: torch.device | str = "cpu",
    acquisition: Mapping | None = None,
) -> dict:
    """``model.json`` metadata for the isotropic ``sample`` restored with ``model`` (trained on
    another sample, whose metadata is ``meta``), judged on this sample's held-out lateral
    slices degraded as in the model's training (:func:`selfres.isotropic.self_validation`):
    analytically, or with ``degrader``, the learned generator saved with a model of
    ``isotropic.degradation: learned`` (:func:`selfres.isotropic.load_degrader`).

    Parameters
    ----------
    vol, fov
        This sample's normalised volume (:class:`selfres.io.Volume`, lazy is fine) and its
        training FOV / held-out region.
    factor
        This sample's axial factor (voxel_z / voxel_xy): its output grid.
    guard_margin_db
        Gain over z-cubic the model must show on those slices (``train.guard_margin_db``).

    Raises
    ------
    selfres.errors.ConfigError
        The factors differ by more than :data:`ISOTROPIC_FACTOR_TOLERANCE`.
    ValueError
        The model's degradation was learned and ``degrader`` is not given.
    """
    from .errors import ConfigError
    from .isotropic import guard_flags, self_validation

    t0 = time.monotonic()
    source = meta.get("sample")
    if (meta.get("isotropic") or {}).get("degradation") == "learned" and degrader is None:
        raise ValueError("a model of isotropic.degradation learned is judged with its generator: give degrader")
    trained_factor = float(meta["factor"])
    if abs(factor - trained_factor) > ISOTROPIC_FACTOR_TOLERANCE * trained_factor:
        raise ConfigError(f"sample {sample!r}: its axial factor (voxel z / xy) is {factor:.4g}, the model of "
                          f"{source!r} was trained for {trained_factor:.4g}: a model restores the axial blur it "
                          "learned; train this sample")
    # the same axial factor at another pixel size: the axial σ (in pixels) was learned at the source's
    trainer = trained_by(meta)
    _warn_if_sampled_otherwise(trainer["voxel_size_in"], vol.voxel_size, sample=sample, source=trainer["sample"])
    meta = dict(meta, degradation=_own_noise_topup(meta, vol, fov, sample=sample))
    validation = self_validation(vol, fov, model, meta, device=device, degrader=degrader)
    flags = inherited_flags(meta) + guard_flags(validation, guard_margin_db)
    out = dict(meta)
    out.update({
        "sample": sample,
        "factor": float(factor),
        "adopted_from": trained_by(meta, factor=trained_factor),
        "voxel_size_in": list(vol.voxel_size) if vol.voxel_size else None,
        "self_validation": validation,
        "flags": list(dict.fromkeys(flags)),
        "train_seconds": time.monotonic() - t0,
        "device": str(device),
        "ran_on": models.ran_on(device),
    })
    log.info("sample %s adopts the isotropic model of %s: held-out lateral %.2f dB vs input %.2f dB%s",
             named(sample, acquisition), named(source, meta.get("acquisition")), validation["psnr_model"], validation["psnr_interp"],
             "; flagged model_worse_than_interpolation" if "model_worse_than_interpolation" in out["flags"] else "")
    return out
