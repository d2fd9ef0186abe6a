"""What each QC flag means and what to do about it, and the status a sample's flags give it.

The plain words of the reports (``report.html``, ``summary.html``);
no numpy, so the batch summary and the CLI read them without the report's figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FLAG_EXPLANATIONS", "GENERIC_FLAG_HINT", "explain_flag", "BROKEN_OUTPUT_FLAGS", "sample_status",
           "ISOTROPY_REACHED", "implausible_isotropy_note"]


#: Isotropy (lateral / axial) below which an isotropic-mode output is flagged ``isotropy_not_reached``
#: (above its inverse, ``isotropy_implausible``; :func:`selfres.qc.isotropy_flags`)
ISOTROPY_REACHED = 0.8


def implausible_isotropy_note(value: float) -> str:
    """What to add to the interpolation's isotropy estimate (isotropic mode): that it is noise where it reads an
    axial resolution finer than the lateral (above ``1 / ISOTROPY_REACHED``, what the output would
    be flagged ``isotropy_implausible`` for): interpolation adds no axial detail, yet on a noisy
    stack's finer z grid the estimate read 1.255 where the restoration, +4.8 dB against the truth,
    read 0.70 (a walkthrough)."""
    if value <= 1.0 / ISOTROPY_REACHED:
        return ""
    return (f" (above {1.0 / ISOTROPY_REACHED:g}: finer along z than laterally, which interpolation cannot be; "
            "interpolated noise read as detail, not a resolution)")


#: Flag → (what it means in plain words, what to do about it).
#: How a broken output's advice reruns its inference: Snakemake takes the written store as done
#: (a helper: "rerun the infer step", and a plain rerun did nothing)
_FORCE_INFER = "snakemake --forcerun results/SAMPLE/restored.ome.zarr: a plain rerun takes the written output as done"

FLAG_EXPLANATIONS: dict[str, tuple[str, str]] = {
    "model_worse_than_interpolation": (
        "The network did not beat plain interpolation (tricubic; z-cubic in isotropic mode) "
        "on the held-out region of the input that training never saw, or beat it by less "
        "than the margin the guard asks of a trained network "
        "(train.guard_margin_db), or (enhance) what it learned did not gain one scale coarser, "
        "the check that it carries over to a finer grid. Unless the configuration says "
        "otherwise, restored.ome.zarr holds the interpolation, not the network output.",
        "Look at the held-out region (the cyan box in the projections): if it is mostly "
        "background, where the acquisition's noise outweighs structure, the verdict errs on "
        "the safe side; a larger fov.holdout_fraction gives it more of the sample. In enhance "
        "mode on a noisy acquisition, back-projection amplifies the noise: try "
        "infer.back_projection_iterations: 0 for the sample. Otherwise check that the training "
        "field of view holds structure, and: in enhance mode, give the acquisition's blur "
        "(train.psf_sigma_um) or accept the interpolation (more training steps measured worse "
        "on the benchmark); in isotropic mode, give the axial blur (isotropic.axial_sigma_px) "
        "and, where training stopped at its time budget (Training, below), give it more "
        "(train.max_minutes) or a GPU: more steps measured better there.",
    ),
    "below_margin_kept_for_series": (
        "This time point adopted the model trained on another time point of the same acquisition "
        "(model_from), and on its own held-out region the network beat interpolation by less than "
        "the guard's margin (train.guard_margin_db), though by more than 0. restored.ome.zarr "
        "holds the network's output all the same, as for the time point that trained the model: a "
        "series restored partly by the network and partly by interpolation jumps in sharpness and "
        "peak intensity where it switches. A time point where the network loses (a gain of 0 or "
        "below) still holds the interpolation.",
        "Compare this time point's views with its neighbours', and the held-out gains of all "
        "the series' time points in summary.html: a gain this small says the network adds little "
        "here.",
    ),
    "training_diverged": (
        "The training loss became non-finite (NaN or infinite); the weights from before the "
        "divergence (if any) were kept.",
        "Lower the learning rate, check the input for NaN/Inf or extreme outliers, and "
        "rerun the training.",
    ),
    "early_stopped": (
        "Training stopped before the configured number of steps because the "
        "validation metric stopped improving.",
        "Usually nothing to do. If the validation curve was still rising, raise the "
        "patience or the number of steps.",
    ),
    "stopped_while_improving": (
        "Training reached its time budget (train.max_minutes) while the score on the "
        "held-out region was still rising: the kept model came at one of the last two "
        "validations, so more training would likely have given a better one. The model "
        "was judged and used as usual.",
        "Raise train.max_minutes for this sample (a sample-sheet column, e.g. "
        "train.max_minutes 10), run its training on a GPU (the slurm profile), or choose a "
        "smaller training field of view; the report's training curves show the trend.",
    ),
    "dead_output": (
        "The network output is constant (the same value everywhere): the model "
        "learned nothing useful.",
        "Check the normalisation and the training field of view (it may be empty "
        "background), lower the learning rate, and retrain.",
    ),
    "saturated_input": (
        "Over 0.1 % of input voxels sit at the maximum value of the data "
        "type, or of a camera's bit depth (4095 for 12-bit data stored in 16 bits): clipped; "
        "detail in those regions is lost and cannot be restored, and their intensities are not measurements "
        "(a float output may exceed the clip there; normalized.ome.zarr records the share: saturated_fraction).",
        "Reacquire with lower gain/laser power if possible; otherwise treat bright "
        "regions with caution.",
    ),
    "input_mostly_noise": (
        "Almost nothing in the input stands clear of its noise: in its most contrasted "
        "window, even the most structured part is less than 10 % structure by variance "
        "(qc/metrics.json, input_structure_share; a clean image reads near 1), and nothing "
        "carries over from one plane to the next (input_plane_correlation below 0.1). An empty "
        "field, a wrong channel, a closed shutter or an acquisition far too dim; or planes that "
        "are not z planes: a time series whose file labels its T and Z axes the wrong way round "
        "(moving objects then barely correlate from one 'plane' to the next). A network "
        "trained on it learns to smooth noise, which the held-out figures can score as a "
        "gain; it is not a resolution gain.",
        "Look at the input's views below. If the sample is really there, acquire with more "
        "light or longer exposure, or denoise first; otherwise check the position and the "
        "channel of this acquisition, and with selfres inspect that its z planes and time points "
        "are counted the right way round (resave the file with its axes set right).",
    ),
    "model_trained_on_noise": (
        "This sample uses a model another sample trained (model_from), and that sample's "
        "training field of view was almost all noise: its structure share and plane-to-plane "
        "correlation were as low as those that flag an input input_mostly_noise. A model "
        "that learned from noise learns to smooth it: here it can score a held-out gain and "
        "still blur the structure (a time series whose first time point was an empty "
        "frame: the later time points read ok, with outputs blurrier than their inputs).",
        "Look at the sample that trained the model (its report's views and flags). Train on a "
        "time point or sample that holds the structure (model_from another one), or let this "
        "sample train on its own input.",
    ),
    "voxel_size_missing": (
        "The input file holds no voxel size and none was given in the sample sheet; "
        "physical units, aspect ratios and resolution values may be wrong.",
        "Add a voxel_size column (z,y,x in µm) to the sample sheet for this sample.",
    ),
    "voxel_size_unlike_file": (
        "The voxel size given in the sample sheet is 10 times the one the input file records, or more "
        "(or as much smaller), on at least one axis; the sheet's was used. That is more often a unit slip "
        "(nm typed for µm is 1000 times) than a correction, and it sets the physical units, the aspect "
        "ratios, a PSF or optics given in µm, and in isotropic mode the output grid "
        "(the table at the top gives both).",
        "Check the sample sheet's voxel_size (z,y,x in µm). If the file's metadata is what is wrong, "
        "the sheet's value stands and this flag can be ignored; otherwise correct it and rerun the sample.",
    ),
    "restored_not_finite": (
        "The restored volume holds NaN or infinite voxels: something failed while it was "
        "computed or written (qc/metrics.json, restored_check, gives the count).",
        "Do not use this output. Rerun the infer step (on another node or on the CPU if "
        f"it ran on a GPU; {_FORCE_INFER}) and report it with the infer log if it happens again.",
    ),
    "restored_unlike_input": (
        "The restored volume as written does not look like its input: at the input "
        "voxels' centres the two barely correlate (qc/metrics.json, restored_check: "
        "below 0.8 × the correlation the input's own noise allows), which a working "
        "restoration always does. The output is broken (e.g. a dead "
        "network, a device or precision failure, or a damaged store), whatever the "
        "held-out figures say.",
        "Do not use this output. Look at the orthoviews below, rerun the infer step (on "
        f"the CPU, or with infer.amp off, if it ran on a GPU; {_FORCE_INFER}) and report it with the infer "
        "log if it happens again. In isotropic mode an axial blur estimated far too large "
        "does this too (structure running along z reads as blur; the network then breaks "
        "it into beads): compare model.json's degradation sigma_px with your optics, and "
        "give isotropic.axial_sigma_px or the optics, then retrain.",
    ),
    "sensor_defects_not_repaired": (
        "The acquisition has hot or dead camera pixels (single pixels far brighter or darker than "
        "their neighbours in every plane; qc/metrics.json, sensor_defects.not_repaired), and its "
        "model was trained by a selfres that did not repair them: its network learned them as "
        "structure and may ring beside each one, and an enhance model trained before 2026-12-05 "
        "may have read them as noise and buried its training in it.",
        "Retrain the sample (snakemake --forcerun results/SAMPLE/model): selfres now repairs such "
        "pixels in what the network sees and writes them as acquired.",
    ),
    "restored_level_shifted": (
        "The restored volume as written is not at its input's intensity level: at the input "
        "voxels' centres its mean is below 0.8 or above 1.25 times the input's (qc/metrics.json, "
        "restored_check.level), which a restoration keeps to within 2 % on every volume measured. "
        "Most likely a wrong gain or offset on the way to the file (e.g. values written in "
        "normalised units) or a damaged store, which the correlation with the input cannot see; "
        "in a very dim acquisition (a photon or less per voxel) it can also be the network "
        "pushing the background towards its most common value, 0.",
        "Do not use this output for intensities until you have compared it with the input (the "
        f"views below, or both files in a viewer). Rerun the infer step ({_FORCE_INFER}); if it stays, report it "
        "with the infer log and restored.ome.zarr's attributes (normalisation).",
    ),
    "worse_than_interpolation_on_reference": (
        "Against the reference given for this sample (its ground truth), the restored "
        "volume scores a lower PSNR than plain interpolation, whatever the held-out "
        "self-validation said. The held-out region is scored one scale "
        "coarser and made with the training degradation: when the acquisition was blurred "
        "or sampled otherwise, the two can disagree, and the reference is the one to trust.",
        "In enhance mode try infer.back_projection_iterations: 0 for the sample "
        "(back-projection holds the output to the training degradation; on the demo's neurites "
        "this turned -0.06 dB into +1.36 dB against the truth). If the camera binned pixels (or "
        "each pixel integrates the light of f x f finer ones), set train.degradation.method: block. "
        "Give the acquisition's blur (train.psf_sigma_um, or train.degradation.method gaussian/psf), "
        "then compare again; or use the interpolation for such samples.",
    ),
    "restored_clipped": (
        "Part of the output (over 0.05 % of the QC window, where its interpolation stays below it) sits at the "
        "largest value of its integer type: the restoration went past the type's range there and was cut "
        "(infer.output_dtype: input). Its brightest objects are then brighter than the input's, and the cut hides "
        "by how much from the other checks (restored_brighter reads the clipped values). metrics.json: "
        "restored_check.clipped.",
        "Do not measure intensities on this output. Write it as float32 (infer.output_dtype: float32, the default) "
        "to see and judge the overshoot; measure intensities on the interpolation, or on the float output where "
        "its other checks pass."),
    "restored_undershoots": (
        "Part of the output (over 0.1 % of the QC window, and over twice the interpolation's share) "
        "lies more than 5 % of the intensity range below the darkest input voxel: dark halos "
        "(ringing) next to bright objects, which sharpening adds: the network's, or back-projection's "
        "(in enhance mode, on by default; with best step 0 the network kept tricubic and the halos are "
        "back-projection's alone). No acquisition held such values (metrics.json: "
        "restored_check.undershoot).",
        "Look at the views around bright objects. In enhance mode infer.back_projection_iterations: 0 "
        "removes back-projection's part (compare the two outputs). In isotropic mode one cause is an axial blur σ "
        "larger than the acquisition's (the estimate can read a specimen's own extent in z as blur; "
        "Self-validation gives the σ used): if you know the axial blur, give it "
        "(isotropic.axial_sigma_px, the extra axial blur in lateral pixels, or train.degradation "
        "with the optics or a bead-measured PSF) and compare; a training cut short (its flags and "
        "curves) can leave them too, with the σ right. For intensity measurements clip the output at "
        "the input's minimum, or measure on the interpolation; judge the output by its views, "
        "beads or a reference rather than by the held-out figure alone.",
    ),
    "gpu_unused": (
        "A job of this sample was given a GPU (CUDA_VISIBLE_DEVICES was set) but computed on the "
        "CPU: torch could not use the GPU there (a CPU build of torch, or no driver on the node). "
        "The results are right, only slower, and the GPU was held for nothing.",
        "Install the CUDA build of torch in the environment the GPU jobs run in: pip uninstall torch, "
        "then SELFRES_TORCH_BUILD=cuda scripts/setup.sh (docs/slurm.md, step 1); provenance.json "
        "names the jobs and hosts (model.ran_on: training; inference_ran_on and tiles_ran_on: inference).",
    ),
    "restored_overshoots": (
        "Part of the output (over 0.1 % of the QC window, and over twice the z-cubic interpolation's share) is "
        "brighter than the brightest input voxel by more than 5 % of the intensity range: bright rims (ringing) "
        "at the edges of objects larger than the axial blur, often with a dip inside them. No acquisition held "
        "such values (metrics.json: restored_check.overshoot). Measured: a real stack of 12-µm nuclei at 4-µm z "
        "steps 0.57 %, its rims 1.4 times the nuclei's flat tops; good restorations of test stacks 0.002 % or "
        "less. isotropic mode only.",
        "Do not measure intensities on this output: measure on the interpolation or the input. Look at the detail "
        "profile and the XZ/YZ views at the objects' edges. One cause is an axial blur σ larger than the "
        "acquisition's (the estimate can read a specimen's own extent in z as blur; Self-validation gives the σ "
        "used): if you know the axial blur, give it (isotropic.axial_sigma_px, the extra axial blur in lateral "
        "pixels, or train.degradation with the optics or a bead-measured PSF) and compare.",
    ),
    "restored_brighter": (
        "The output's brightest structures are over 1.5 times as bright as in the z-cubic "
        "interpolation of the acquisition (metrics.json: restored_check.brightening; a good "
        "restoration of a z-blurred nucleus stack measured 1.18, its truth 1.19). Restoring z "
        "raises peaks that much only for structures thinner in z than the axial blur σ assumed "
        "(Self-validation gives it): with larger structures it means σ was overestimated — the "
        "estimate can read a specimen's own length in z as blur — and the intensities are not "
        "the specimen's.",
        "Unless your structures are thinner in z than that σ (sub-resolution beads, thin "
        "fibres lying flat), give the axial blur you know and rerun: isotropic.axial_sigma_px "
        "(the extra axial blur, in lateral pixels), or train.degradation with the optics or a "
        "bead-measured PSF (selfres psf-sigma --beads); meanwhile measure intensities on the "
        "interpolation.",
    ),
    "axial_sigma_unestimated": (
        "The stack has too few z slices (or too small a lateral field) to estimate its extra axial "
        "blur, and none was given, so the model was trained for a blur of 0: it undoes the z "
        "sampling, not the blur, and the output stays about as soft in z as the interpolation.",
        "Give the axial blur and rerun: isotropic.axial_sigma_px (the extra axial blur, in lateral "
        "pixels), or train.degradation with the optics (NA, wavelength, immersion) or a bead-measured "
        "PSF (selfres psf-sigma --beads).",
    ),
    "isotropy_implausible": (
        "By the decorrelation estimate the restored volume's axial resolution reads well finer "
        "than its lateral one (isotropy above 1.25): more than the acquisition can give, so the "
        "estimate does not hold on this volume (few slices, or noise read as detail) and says "
        "nothing of how isotropic the output is.",
        "Judge the output by the XZ/YZ views and the axial detail against the interpolation, and by "
        "the held-out figure in Self-validation.",
    ),
    "isotropy_not_reached": (
        "By the decorrelation estimate the restored volume still looks clearly anisotropic: its "
        "axial resolution reads well below its lateral one (isotropy below 0.8), or it holds the "
        "z interpolation of an input that read so (interpolation adds no axial detail, whatever "
        "the estimate reads on its finer grid). The estimate is a hint, not a measurement (see "
        "Resolution): it can read interpolated noise as detail, and an output below 0.8 need "
        "not have gained nothing.",
        "Compare the XZ/YZ views and the axial detail with the interpolation. Check the voxel "
        "size (the anisotropy factor comes from it) and the axial σ in Self-validation; a "
        "training cut short may gain from a longer one: train.max_minutes where it ended at its time budget "
        "(the flag stopped_while_improving; Training says how it ended), isotropic.steps where it ended after all "
        "its steps.",
    ),
}

#: Hint shown for flags that :data:`FLAG_EXPLANATIONS` does not know.
GENERIC_FLAG_HINT = (
    "No explanation is recorded for this flag.",
    "Look at the log of this sample and at the figures below; ask the pipeline "
    "maintainers if unsure.",
)


def explain_flag(flag: str) -> tuple[str, str]:
    """Return ``(meaning, what to do)`` for a flag, with a generic hint if unknown.

    Parameters
    ----------
    flag
        Flag name as found in ``metrics.json``.

    Returns
    -------
    tuple of str
        Plain-words meaning and suggested action.
    """
    return FLAG_EXPLANATIONS.get(str(flag), GENERIC_FLAG_HINT)


#: Flags that say ``restored.ome.zarr`` as written is broken, whatever it holds (the network's
#: output or the interpolation): such a sample's status is ``output_broken``, not ``ok``.
BROKEN_OUTPUT_FLAGS = ("restored_not_finite", "restored_unlike_input")


def sample_status(metrics: Mapping[str, Any]) -> str:
    """``metrics["status"]``, else ``output_broken`` when a flag says the restored volume as
    written is broken (:data:`BROKEN_OUTPUT_FLAGS`), else ``fallback_interpolation`` when it
    holds the interpolation (``restored_content == "interpolation"``), else ``ok``."""
    if metrics.get("status"):
        return str(metrics["status"])
    flags = metrics.get("flags")
    if isinstance(flags, str):  # a summary row's "a;b"
        flags = [f for f in flags.split(";") if f]
    elif not isinstance(flags, (list, tuple)):  # None, or a table's NaN
        flags = []
    if any(f in BROKEN_OUTPUT_FLAGS for f in flags):
        return "output_broken"
    if metrics.get("restored_content") == "interpolation":
        return "fallback_interpolation"
    return "ok"
