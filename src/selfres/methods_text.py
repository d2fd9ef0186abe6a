"""A paragraph for a paper's methods section, written from a sample's own records
(``qc/metrics.json`` and ``provenance.json``): what was done to it, with the figures that back it,
and nothing it did not do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .flags import implausible_isotropy_note
from .normalise import same_series
from .wording import baseline_name, duration_text, extras_text, fmt, lateral_pixels_text, num, shape_text

__all__ = ["METHOD_CITATIONS", "methods_text"]


#: The methods a mode implements, as a methods section cites them
METHOD_CITATIONS = {
    "enhance": ("Self-Vision", "He et al., Photonics Research 11(1):1, 2023, doi:10.1364/PRJ.469231"),
    "isotropic": ("Self-Net",
                  "Ning et al., Light: Science & Applications 12:204, 2023, doi:10.1038/s41377-023-01230-2"),
}

_ARCH_WORDS = {"resnet3d": "a 3-D residual network", "svision_mini": "the Self-Vision authors' final 3-D network",
               "svision_paper": "the 3-D network of the Self-Vision paper", "iso2d": "a 2-D residual network"}


def _degradation_words(deg: Mapping[str, Any], factors_text: str) -> str:
    """How training inputs were made from the acquisition (enhance), in a methods section's words."""
    method = deg.get("method") or "cubic"
    if method == "block":
        return f"block-averaged ×{factors_text} (as pixel binning does)"
    if method == "psf":
        return f"blurred by the measured PSF given and block-averaged ×{factors_text}"
    if method == "gaussian" and deg.get("sigma_um"):
        sigma = ", ".join(fmt(num(v)) for v in deg["sigma_um"])
        return f"blurred by a Gaussian (σ z,y,x = {sigma} µm) and block-averaged ×{factors_text}"
    if method == "gaussian":
        return f"blurred by a Gaussian from the optics given and block-averaged ×{factors_text}"
    return f"downscaled ×{factors_text} with an antialiased cubic kernel (as MATLAB's imresize)"


def _code_words(prov: Mapping[str, Any]) -> str:
    """``selfres 0.1.0 (commit abc…)`` of the code that made the output (and the model, where
    another commit trained it), not of the code that wrote the report; a checkout with local
    changes says so, with the source digest that tells it apart."""
    def one(code: Any) -> str | None:
        if not isinstance(code, Mapping):
            return None
        commit = str(code.get("git_commit") or "")[:10]
        text = f"commit {commit}" if commit else f"source digest {code.get('source_digest')}"
        if commit and code.get("git_dirty"):
            text += f" with local changes, source digest {code.get('source_digest')}"
        return text if (commit or code.get("source_digest")) else None

    version = (prov.get("restored_code") or {}).get("selfres_version") if isinstance(prov.get("restored_code"),
                                                                                      Mapping) else None
    version = version or prov.get("selfres_version")
    restored, trained = one(prov.get("restored_code")), one(prov.get("model_code"))
    if restored is None:  # an output written before its code was recorded: the report's own
        restored = one({k: prov.get(k) for k in ("git_commit", "git_dirty", "source_digest")})
    where = (f"{restored}; the model trained at {trained}" if trained and restored and trained != restored
             else restored)
    return "selfres" + (f" {version}" if version else "") + (f" ({where})" if where else "")


_STOP_WORDS = {"time_budget": "stopped once its time budget was spent",
               "early_stop": "stopped early, no longer improving",
               "steps": None, "diverged": "stopped when its loss diverged"}


def _training_words(training: Mapping[str, Any], mode: str) -> str:
    """One sentence on how training ran, from ``provenance.json``'s ``model.training``."""
    raw_done, asked = training.get("steps_done"), num(training.get("steps"))
    stages = isinstance(raw_done, (list, tuple))  # a serial ×4 model: per ×2 stage
    done_list = [int(v) for v in (raw_done if stages else [raw_done]) if num(v) is not None]
    reasons = training.get("stop_reason")
    reasons = [str(r) for r in (reasons if isinstance(reasons, (list, tuple)) else [reasons]) if r]
    done = sum(done_list) if done_list else None
    parts = []
    if done_list:
        counts = " and ".join(str(v) for v in done_list)
        whole = asked and all(v == int(asked) for v in done_list)
        steps = counts + ("" if whole or not asked else f" of {int(asked)}") + " steps" + (
            " in its two ×2 stages" if stages else "")
        why = [w for w in dict.fromkeys(_STOP_WORDS.get(r) for r in reasons) if w]
        if "time_budget" in reasons:
            minutes = num(training.get("max_minutes"))
            # "once … spent": the loop stops at the validation after the budget, so its time exceeds the budget
            # (a review: "trained for 1.74 min" beside "stopped at its time budget of 1.5 min")
            budget = f"stopped once its time budget of {fmt(minutes)} min was spent" if minutes and not stages else (
                "stopped once its time budget was spent" + (f" ({fmt(minutes)} min, half to each stage)" if minutes
                                                            else ""))
            why = [budget + ", so a rerun on another machine or under another load stops elsewhere"
                   if w == _STOP_WORDS["time_budget"] else w for w in why]
        parts.append(steps + (f" ({'; '.join(why)})" if why else ""))
    loss = training.get("loss")
    if loss:
        words = {"l1": "an L1 loss", "l2": "a mean squared error loss", "mse": "a mean squared error loss",
                 "charbonnier": "a Charbonnier loss", "l1_ssim": "an L1 + SSIM loss",
                 "l1_fft": "an L1 loss with a Fourier-amplitude term"}.get(str(loss), f"the {loss} loss")
        if loss == "l1_fft" and num(training.get("fft_weight")) is not None:
            words += f" (weight {fmt(num(training.get('fft_weight')))})"
        parts.append(words)
    lr = num(training.get("learning_rate"))
    if lr is not None:
        sched = training.get("lr_schedule")
        warm = num(training.get("warmup_steps"))
        tail = num(training.get("tail_lr_scale"))  # isotropic: the output layer's share of the rate
        parts.append(f"Adam at a learning rate of {lr:g}" + (f" ({tail:g}× that for the output layer)"
                                                            if tail is not None and tail != 1 else "")
                     + (f" with a {sched} schedule" if sched and sched != "constant" else "")
                     + (_warm_up_words(int(warm), done_list if done is not None else [], stages) if warm else ""))
    batch, patch = num(training.get("batch_size")), training.get("patch_size")
    if batch is not None and patch is not None:
        patch_text = ("×".join(str(int(v)) for v in patch) if isinstance(patch, (list, tuple))
                      else f"{int(patch)}×{int(patch)}")
        parts.append(f"batches of {int(batch)} patches of {patch_text} voxels")
    if training.get("augment"):
        parts.append("random flips and rotations that keep the axes' scales" if mode == "enhance"
                     else "random flips and rotations")
    seed = training.get("seed")
    if seed is not None:
        parts.append(f"seed {seed}")
    return ("Training ran " + parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "") + "."
            if parts and done is not None else
            ("Training used " + ", ".join(parts) + "." if parts else ""))


def _warm_up_words(warm: int, done_list: Sequence[int], stages: bool) -> str:
    """The warm-up, and whether training ran long enough to reach the rate: each ×2 stage of a
    serial ×4 model warms up on its own (the rate's step ``warm - 1`` is the full rate)."""
    each = " in each stage" if stages else ""
    short = [d for d in done_list if d < warm]
    if not short:
        return f" after {warm} warm-up steps{each}"
    if not stages:
        return f", to be reached after {warm} warm-up steps (more than the {short[0]} run, so the rate stayed below it)"
    where = "in both stages" if len(short) == len(done_list) else "in one stage"
    return (f", to be reached after {warm} warm-up steps{each} (more than the {' and '.join(map(str, short))} run "
            f"{where}, so the rate stayed below it there)")


def _normalisation_words(prov: Mapping[str, Any]) -> str:
    """How intensities were scaled for the network: as the normalised store records it
    (``provenance.json``'s ``normalisation``: the raw values, and whether the percentiles or,
    where they coincided, the volume's range gave them), else as the configuration asked."""
    used = prov.get("normalisation") if isinstance(prov.get("normalisation"), Mapping) else {}
    asked = ((prov.get("resolved_config") or {}).get("settings") or {}).get("normalise") or {}
    lo_p = num(used.get("low_percentile", asked.get("low_percentile")))
    hi_p = num(used.get("high_percentile", asked.get("high_percentile")))
    lo, hi, basis = num(used.get("low")), num(used.get("high")), used.get("basis")
    back = " for the network, and the output brought back to the acquisition's units."
    if basis == "constant" and lo is not None:
        return f"The volume is constant ({fmt(lo, digits=4)}); it was shifted to 0" + back
    values = f"{fmt(lo, digits=4)} and {fmt(hi, digits=4)}" if lo is not None and hi is not None else None
    if basis == "range" and values:
        return (f"Intensities were scaled to 0 and 1 at the volume's minimum and maximum ({values}; its percentiles "
                f"{fmt(lo_p)} and {fmt(hi_p)} were equal)" + back)
    if basis == "unrecorded" and values:  # a store written before the basis was: the values, not their source
        return (f"Intensities were scaled to 0 and 1 at {values}, as its normalisation recorded them"
                + (f" (the configuration asked for its percentiles {fmt(lo_p)} and {fmt(hi_p)})"
                   if lo_p is not None and hi_p is not None else "") + back)
    if lo_p is None or hi_p is None:
        return ""
    return (f"Intensities were scaled to 0 and 1 at the volume's percentiles {fmt(lo_p)} and {fmt(hi_p)}"
            + (f" ({values})" if values else "") + back)


def _part_words(part: Any) -> str:
    """Which part of its file the sample is, for the methods text's first sentence: `` (channel 1,
    "GFP", time point 3 of the acquisition, indices from 0)``; "" for a file's only image, channel and
    time point (a walkthrough: a ``_c1`` sample's paragraph did not say which channel it restored)."""
    part = part if isinstance(part, Mapping) else {}
    words = []
    if part.get("series") is not None:
        words.append(f"image {part['series']}")
    if part.get("channel") is not None:
        words.append(f"channel {part['channel']}" + (f", \"{part['channel_name']}\"" if part.get("channel_name") else ""))
    if part.get("timepoint") is not None:
        words.append(f"time point {part['timepoint']}")
    return f" ({', '.join(words)} of the acquisition, indices from 0)" if words else ""


def methods_text(metrics: Mapping[str, Any], provenance: Mapping[str, Any] | None, *,
                 scale_checked: bool = False) -> str | None:
    """A paragraph for a paper's methods section: what was done to this sample, with the
    figures that back it (plain text; ``None`` for a failed sample or one without metrics).

    ``scale_checked``: the training log holds enhance's coarse-scale gains, so the kept checkpoint
    is the one whose smaller gain was best, not always the best held-out score (demo neurites: step 75
    kept at 33.38 dB, later steps up to 33.86 dB held out)."""
    mode = metrics.get("mode")
    if mode not in METHOD_CITATIONS or metrics.get("status") == "failed":
        return None
    prov = provenance or {}
    model = prov.get("model") or {}
    name, cite = METHOD_CITATIONS[mode]
    tool = _code_words(prov)
    vin, vout = metrics.get("voxel_size_in"), metrics.get("voxel_size_out")
    sin, sout = shape_text(metrics.get("input_shape")), shape_text(metrics.get("output_shape"))

    # a single plane (2-D input, enhance 1,y,x): a 2-D network on pixels — its z size of 1 and the z
    # scale the output file carries for it are no measurement (a walkthrough: "A 3-D residual network"
    # and "1×130×133 voxels … of 0.5119 × 0.5119 × 0.5119 µm" for a 2-D image)
    plane = isinstance(metrics.get("input_shape"), (list, tuple)) and len(metrics["input_shape"]) == 3 \
        and metrics["input_shape"][0] == 1

    def grid(shape, vs):
        if shape is None:
            return None
        sized = isinstance(vs, (list, tuple)) and len(vs) == 3
        if plane:
            return f"{'×'.join(shape.split('x')[1:])} pixels (y, x)" + (
                f" of {' × '.join(fmt(num(v), digits=4) for v in vs[1:])} µm" if sized else "")
        return f"{shape.replace('x', '×')} voxels (z, y, x)" + (
            f" of {' × '.join(fmt(num(v), digits=4) for v in vs)} µm" if sized else "")

    arch = _ARCH_WORDS.get(str(model.get("arch")), "a network")
    if plane:
        arch = arch.replace("3-D", "2-D")
    n_par = model.get("n_parameters")
    arch += f" ({int(n_par):,} parameters)" if isinstance(n_par, (int, float)) else ""
    arch = arch[0].upper() + arch[1:]
    # an adopted model: its training is the trainer's (time, machine), not this sample's judging
    trainer = model.get("adopted_from") if isinstance(model.get("adopted_from"), Mapping) else None
    adopted = metrics.get("adopted_from") or (trainer or {}).get("sample")
    # the training loop's time where the model records it (a job's also holds its set-up and the
    # guard's re-scoring: "trained for 1.1 min" for a 2-s training, a walkthrough), else the job's
    record = (trainer or {}) if adopted else {"fit_seconds": model.get("fit_seconds"),
                                               "train_seconds": metrics.get("train_seconds")}
    secs = num(record.get("fit_seconds"))
    secs = num(record.get("train_seconds")) if secs is None else secs
    ran_on = (trainer or {}).get("ran_on") if adopted else model.get("ran_on")
    ran_on = ran_on if isinstance(ran_on, Mapping) else {}
    kind = str(ran_on.get("device") or ("" if adopted else model.get("device")))
    device_name = ran_on.get("device_name")
    if kind.startswith("cuda"):
        device = "a GPU" + (f" ({device_name})" if device_name else "")
    elif kind == "cpu":
        threads = ran_on.get("torch_threads")
        what = [str(device_name)] if device_name else []
        what += [f"{threads} thread{'s' if threads != 1 else ''}"] if threads else []
        device = "CPU" + (f" ({', '.join(what)})" if what else "")
    else:
        device = None
    took = (f" for {duration_text(secs)}" if secs else "") + (f" on {device}" if device else "")
    whose = f"another acquisition (sample {adopted})" if adopted else "this volume"
    from_part = (trainer or {}).get("acquisition") if isinstance((trainer or {}).get("acquisition"), Mapping) else {}
    part = prov.get("input_part") or {}
    if adopted and from_part.get("timepoint") is not None and same_series(
            from_part, {"source_checksum": prov.get("input_checksum"), **part}):
        whose = f"time point {from_part['timepoint']} of the same acquisition (sample {adopted})"
    training = model.get("training") if isinstance(model.get("training"), Mapping) else {}
    bits = [f"The volume{_part_words(prov.get('input_part'))} was restored with {tool} in its {mode} mode, after "
            f"{name} ({cite})."]
    extras = metrics.get("inference_extras")
    fell_back = metrics.get("restored_content") == "interpolation"
    unlearned = False
    if mode == "enhance":
        factors = [int(f) for f in (model.get("factors") or [])] or None
        ftext = ",".join(str(f) for f in factors) if factors else "k"
        deg = model.get("degradation") or {}
        noise = (", with noise added to match the acquisition's own" if metrics.get("noise_model") == "match"
                 and any((num(v) or 0) > 0 for v in (metrics.get("noise_sigma_at") or {}).values()) else "")
        psf = metrics.get("psf_sigma_um")
        target = (f"the crops seen through the PSF given (σ z,y,x = {', '.join(fmt(num(v)) for v in psf)} µm)"
                  if isinstance(psf, (list, tuple)) and len(psf) == 3 else "the crops as acquired")
        share, up_to = num(training.get("blur_augment")), num(training.get("blur_augment_sigma_px"))
        if share and up_to:
            target += (f", {'each' if share >= 1 else f'{share:.0%} of them'} blurred by a random Gaussian (σ up "
                       f"to {fmt(up_to)}·√(f²−1) voxels along each axis scaled by f) so that the network does not "
                       "sharpen small objects past their width one scale finer")
        base = (" as a correction to tricubic interpolation" if model.get("residual") == "tricubic" else "")
        bits.append(f"{arch} was trained{base} on crops of {whose} alone{took}: its inputs were the crops "
                    f"{_degradation_words(deg, ftext)}{noise}, its targets {target}.")
        steps = metrics.get("stage_best_steps")
        steps = ([int(x) for x in steps if num(x) is not None] if isinstance(steps, (list, tuple))
                 else [int(x) for x in [num(metrics.get("best_step"))] if x is not None])
        region = "that acquisition" if adopted else "the volume"
        if steps and not any(steps):
            unlearned = True
            bits.append(f"No checkpoint beat the starting point on a region of {region} held out of training, "
                        "so the network adds nothing: the restoration is tricubic interpolation"
                        + (extras_text(extras, detail=False) if not fell_back else "")
                        + ", not a learned one.")
        elif scale_checked and steps:
            kept = (f"checkpoints kept (steps {' and '.join(str(x) for x in steps)}, of its two ×2 stages) each"
                    if len(steps) > 1 else f"checkpoint kept (step {steps[0]})")
            bits.append(f"The {kept} had the best score, the smaller of its gains over tricubic interpolation on a "
                        f"region of {region} held out of training and on {region} one scale coarser.")
        elif len(steps) > 1:
            bits.append(f"The checkpoints kept (steps {' and '.join(str(x) for x in steps)}, of its two ×2 "
                        f"stages) scored best on a region of {region} held out of training.")
        elif steps:
            bits.append(f"The checkpoint kept (step {steps[0]}) scored best on a region of {region} held out "
                        "of training.")
        bits.append(_training_words(training, mode))
        if adopted:
            bits.append("It was applied to this volume unchanged.")
        restored = grid(sout, vout)
        if restored:
            acquired = grid(sin, vin)
            bits.append("The whole field of view" + (f", {acquired}," if acquired else "") + f" was restored to "
                        f"{restored}{'' if fell_back else extras_text(extras)}.")
    else:
        deg = metrics.get("isotropic_degradation") or {}
        sigma = num(deg.get("sigma_px"))
        how = ("with a learned degradation (Self-Net's CycleGAN generator)" if deg.get("method") == "learned" else
               f"by a Gaussian blur of σ {lateral_pixels_text(sigma, vin, deg.get('sigma_source'))}"
               if sigma is not None else "as the axial direction is")
        factor = num(metrics.get("factor")) or num(model.get("factor"))
        ftext = f" subsampled ×{fmt(factor)} and" if factor else ""
        slices = "that acquisition's" if adopted else "its"
        bits.append(f"{arch} was trained on {whose if adopted else 'this volume alone'}{took} to restore {slices} "
                    f"lateral (XY) slices degraded along one axis {how},{ftext} brought back by cubic interpolation; "
                    "it then restored the axial (XZ and YZ) slices of this volume interpolated along z, and the two "
                    "restorations were fused.")
        if training.get("noise_match"):
            bits.append("The degraded slices were given noise to match the acquisition's own.")
        kept = num(metrics.get("best_step"))
        if kept is not None and kept > 0:  # (step 0: the network's starting point, z-cubic, is kept)
            bits.append(f"The checkpoint kept (step {int(kept)}) scored best on lateral slices of "
                        f"{'that acquisition' if adopted else 'the volume'} held out of training.")
        bits.append(_training_words(training, mode))
        restored = grid(sout, vout)
        if restored:
            acquired = grid(sin, vin)
            bits.append("The volume" + (f", {acquired}," if acquired else "") + f" was brought to {restored}"
                        + (", its first and last planes blended with z-cubic interpolation, where the XZ and YZ "
                           "slices end" if training.get("end_blended") and not fell_back else "") + ".")
    bits.append(_normalisation_words(prov))
    sv = metrics.get("self_validation") or {}
    a, b = num(sv.get("psnr_model")), num(sv.get("psnr_interp"))
    baseline = baseline_name(mode)
    if a is not None and b is not None:
        region = (f"held-out lateral slices{' of this volume' if adopted else ''} degraded the same way"
                  if mode == "isotropic" else
                  f"{'a held-out region of this volume' if adopted else 'the held-out region'}, degraded as in "
                  "training")
        short = extras_text(extras, detail=False)
        scored = "the network" + short if not unlearned else f"{baseline}{short or ' through the network'}"
        text = f"On {region}, {scored} scored {a:.2f} dB PSNR and {'plain ' if unlearned else ''}{baseline} {b:.2f} dB"
        interval = metrics.get("holdout_gain_db_interval")
        if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in map(num, interval):
            text += f" (gain {a - b:+.2f} dB; 95 % interval {num(interval[0]):+.2f} to {num(interval[1]):+.2f} dB)"
        bits.append(text + ".")
    if "below_margin_kept_for_series" in (metrics.get("flags") or []):
        margin = num(metrics.get("guard_margin_db"))
        bits.append("That gain is under the margin the guard asks of a network"
                    + (f" ({fmt(margin)} dB)" if margin else "")
                    + ", but above 0: the network's output was kept, as for the time point that trained the model, "
                      "so that the series is restored one way (a time point where the network loses holds "
                      f"{baseline}).")
    if metrics.get("restored_content") == "interpolation":
        margin = num(metrics.get("guard_margin_db"))
        bits.append(f"As the network did not beat {baseline} there"
                    + (f" by the required {fmt(margin)} dB" if margin else "")
                    + f", the output is the {baseline}, not the network's.")
    ref = metrics.get("reference") or {}
    r_out, r_int = num(ref.get("psnr")), num(ref.get("psnr_interp"))
    if r_out is not None and r_int is not None:
        bits.append(f"Against a reference volume, the output scored {r_out:.2f} dB PSNR and {baseline} "
                    f"{r_int:.2f} dB.")
    if mode == "isotropic":
        iso_in, iso_out = num(metrics.get("isotropy_in")), num(metrics.get("isotropy_out"))
        iso_interp = num(metrics.get("isotropy_interp"))
        if iso_in is not None and iso_out is not None:
            bits.append(f"The ratio of lateral to axial resolution estimated by decorrelation analysis (1 is "
                        f"isotropic) read {fmt(iso_in)} for the input and {fmt(iso_out)} for the output"
                        + (f", {fmt(iso_interp)} for z-cubic interpolation on the same grid"
                           f"{implausible_isotropy_note(iso_interp)}" if iso_interp is not None
                           else "")
                        + "; on the finer grid the estimate also reads interpolated noise as axial detail, so these "
                          "two are indications, not measurements.")
    return " ".join(b for b in bits if b)
