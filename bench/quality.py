"""Quality benchmark of ``enhance`` mode (not a test).

For each real volume in ``shared/data/real/``: crop to a multiple of the factor,
degrade it with the antialiased cubic downscale (:func:`selfres.degrade.downscale_cubic`),
run the pipeline stages (normalise → crop → train → infer) on the degraded volume, and
compare the restored volume with the original next to trilinear and tricubic
interpolation of the same degraded input. The guard's verdict (does the held-out
self-validation say the model beats tricubic?) is compared with the reference verdict
(does the model output beat tricubic against the original?).

Also reproduces the Self-Vision bead experiment (512×512×60, 500 beads, Gaussian PSF
σ x,y,z = 2,2,4 px, ×4 down to 128×128×15) and reports bead FWHM of input, output and
truth. ``--bead-acquisition cubic`` makes that experiment's acquisition with the issue's
protocol (antialiased cubic) instead of the seed's ``skimage`` rescale.

Examples
--------
Quick look at two volumes with a 1-minute budget::

    python bench/quality.py --volumes neubias_nuclei_tissue_z4um,trailmap --minutes 1

Full table at default settings, written to docs/quality.md::

    python bench/quality.py --scales 2 --beads --markdown docs/quality.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "real"
# volumes the benchmark uses (file stem -> short name); the authors' LR bead file is
# already degraded and is left out.
VOLUMES = {
    "neubias_nuclei_tissue_z4um": "nuclei_tissue",
    "neubias_nucleus_dna_confocal": "nucleus_confocal",
    "neubias_nucleus_dna_widefield": "nucleus_widefield",
    "bian_beads_subres": "psf_beads",
    "trailmap_axons_training_volume": "trailmap_axons",
    "cellfinder_stp_mouse_brain_signal": "cellfinder_stp",
    "svision_sim_beads_low_density_hr": "svision_sim_beads",
}


TIE_DB = 0.05


def parse_overrides(items):
    """``["train.width=16", "infer.ensemble=true"]`` -> nested dict (JSON values)."""
    out: dict = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def interpolations(low: np.ndarray, factors) -> dict[str, np.ndarray]:
    """Trilinear and tricubic upscales of ``low`` on the output grid (float32)."""
    import torch
    import torch.nn.functional as F

    from selfres import degrade

    size = tuple(n * f for n, f in zip(low.shape, factors))
    lin = F.interpolate(torch.from_numpy(low)[None, None], size=size, mode="trilinear", align_corners=False)
    return {
        "trilinear": lin[0, 0].numpy(),
        "tricubic": np.asarray(degrade.upscale_cubic(low, tuple(factors)), dtype=np.float32),
    }


def tricubic_back_projected(low: np.ndarray, factors, iterations: int, degradation_settings, voxel_size, *,
                            shrink: bool = True) -> np.ndarray:
    """Tricubic followed by ``iterations`` back-projection steps with the pipeline's degradation
    (no network): what back-projection alone gives, to tell the network's share. ``shrink``:
    the corrections are shrunk by the noise they hold, as ``infer.back_projection_shrink``
    does: the noise level of ``low`` (estimated on all of it; the pipeline estimates it on its
    training FOV) times the share that tricubic's correction holds, measured on ``low``'s centre."""
    import torch

    from selfres.ensemble import BackProjection
    from selfres.infer import CubicUpsampler, predict_array
    from selfres.noise import noise_level_function
    from selfres.train import SHARE_PROBE_SHAPE, central_crop, correction_noise_level, make_degradation

    deg = make_degradation(degradation_settings, voxel_size=voxel_size)
    tricubic = CubicUpsampler(factors)
    level = (correction_noise_level(tricubic, central_crop(low, SHARE_PROBE_SHAPE), noise_level_function(low),
                                    degradation=deg) if shrink else None)
    net = BackProjection(tricubic, iterations=iterations, degradation=deg, noise_level=level)
    return predict_array(net, low, factors=factors, tile_size=(32, 128, 128), device=torch.device("cpu"), amp=False)


def scores(reference: np.ndarray, images: dict[str, np.ndarray], *, ssim: bool) -> dict[str, dict]:
    from selfres import metrics

    rng = float(reference.max() - reference.min())
    out = {}
    for name, img in images.items():
        out[name] = {"psnr": metrics.psnr(reference, img, data_range=rng)}
        if ssim:
            out[name]["ssim"] = metrics.ssim(reference, img, data_range=rng)
    return out


def run_pipeline(low: np.ndarray, work: Path, *, factors, settings, voxel_size=None, name="sample",
                 mode: str = "enhance") -> dict:
    """Normalise → crop → train → infer on the in-memory LR volume ``low`` (raw units).
    ``mode="isotropic"``: the restored volume and the seconds only (``voxel_size`` sets the
    axial factor)."""
    import tifffile

    from selfres import io, pipeline, qc

    src = work / "input.tif"
    tifffile.imwrite(src, low.astype(np.float32))
    norm = work / "normalized.ome.zarr"
    pipeline.stage_normalise(src, norm, sample=name, voxel_size=voxel_size, settings=settings.normalise)
    pipeline.stage_crop(norm, work / "train_fov.json", sample=name, mode=mode, scale=factors,
                        settings=settings.fov)
    t0 = time.monotonic()
    meta = pipeline.stage_train(norm, work / "train_fov.json", work / "model", sample=name, mode=mode,
                                scale=factors, settings=settings, device="cpu")
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    info = pipeline.stage_infer(norm, work / "model", work / "restored.ome.zarr", sample=name,
                                settings=settings.infer, device="cpu")
    infer_s = time.monotonic() - t0
    restored = np.asarray(io.read_ome_zarr(work / "restored.ome.zarr").data, dtype=np.float32)
    if mode == "isotropic":
        return {"restored": restored, "meta": meta, "train_s": train_s, "infer_s": infer_s}
    model_path = work / "restored_model.ome.zarr"
    model_out = (np.asarray(io.read_ome_zarr(model_path).data, dtype=np.float32)
                 if model_path.exists() else restored)
    vol, _ = pipeline.read_normalized(norm)  # the QC self-validation, for its interval of the held-out gain
    model, _, trained = pipeline.load_trained(work / "model")
    sv = qc.self_validation(vol, pipeline.TrainingFov.load(work / "train_fov.json"), model, trained)
    return {"restored": restored, "model": model_out, "meta": meta, "train_s": train_s, "infer_s": infer_s,
            "content": info["content"], "gain_interval": sv["gain_db_interval"]}


LR_DEGRADATIONS = ("cubic", "gaussian", "block")


def degrade_truth(hr: np.ndarray, factors, how: str) -> np.ndarray:
    """The benchmark's LR volume: how the truth ``hr`` is degraded (not the pipeline's model).

    ``cubic``: the antialiased cubic downscale (MATLAB ``imresize``), the issue's protocol and
    also the pipeline's default training degradation (so back-projection inverts exactly the
    benchmark's degradation). ``gaussian``: Gaussian prefilter σ = (f − 1)/2 and linear
    sampling (``skimage.transform.rescale`` semantics, as for the beads). ``block``: the block
    mean (pixel binning, what a camera does when the pixel is f times larger).
    """
    from selfres import degrade, demo

    if how == "cubic":
        return np.asarray(degrade.downscale_cubic(hr, factors), dtype=np.float32)
    if how == "gaussian":
        return demo.downsample_acquisition(hr, tuple(factors))
    if how == "block":
        shape = [s for n, f in zip(hr.shape, factors) for s in (n // f, f)]
        return hr.reshape(shape).mean(axis=tuple(range(1, 2 * hr.ndim, 2))).astype(np.float32)
    raise ValueError(f"unknown LR degradation {how!r}; expected one of {LR_DEGRADATIONS}")


def add_shot_noise(low: np.ndarray, photons: float, *, seed: int = 0) -> np.ndarray:
    """``low`` as a photon-counting camera would record it: scaled so that its 99.9th
    percentile above the minimum is ``photons`` photons, Poisson-sampled, scaled back.

    The benchmark's LR volumes are downscaled from real acquisitions, so most of the
    acquisition's own noise has averaged out; a real acquisition has its noise at its own
    grid. This puts it back (``--lr-noise``)."""
    lo = float(low.min())
    top = float(np.percentile(low, 99.9)) - lo
    if top <= 0:
        return low
    gain = photons / top
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(low - lo, 0, None) * gain)
    return (counts / gain + lo).astype(np.float32)


def axial_over_lateral(volume: np.ndarray, voxel_size) -> float | None:
    """Axial over lateral resolution (decorrelation, µm / µm; voxels where the size is unknown)
    of a volume on the truth's grid: what isotropic mode aims to bring to 1, which a truth
    with an anisotropic PSF is not."""
    from selfres import metrics

    lateral, axial = metrics.resolution_lateral_axial(np.asarray(volume, dtype=np.float32),
                                                      voxel_size=tuple(voxel_size or (1.0, 1.0, 1.0)))
    return axial / lateral if lateral and axial else None


@contextlib.contextmanager
def work_folder(keep: Path | None, label: str):
    """A run's work folder: ``keep/label`` (kept) with ``--keep``, else a temporary one."""
    with tempfile.TemporaryDirectory(prefix="selfres-bench-") as tmp:
        work = Path(keep) / label if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        yield work


def bench_volume(path: Path, factor: "int | tuple[int, int, int]", *, settings, ssim: bool, keep: Path | None,
                 lr_degradation: str = "cubic", unknown_voxel_size=None, lr_photons: float | None = None,
                 variant: str | None = None, isotropic: bool = False) -> dict:
    from selfres import io

    vol = io.read_volume(path)
    factors = tuple(factor) if isinstance(factor, tuple) else (factor,) * 3  # (1, 2, 2): lateral only
    factor = ",".join(map(str, factors)) if isinstance(factor, tuple) else factor
    hr_vs = vol.voxel_size or unknown_voxel_size  # µm of the original (HR) voxels
    hr, hr_vs = volume_variant(np.asarray(vol.data, dtype=np.float32), hr_vs, variant)
    hr = hr[tuple(slice(0, (n // f) * f) for n, f in zip(hr.shape, factors))]
    low = degrade_truth(hr, factors, lr_degradation)
    if lr_photons:
        low = add_shot_noise(low, lr_photons)
    vs = tuple(v * f for v, f in zip(hr_vs, factors)) if hr_vs else None
    name = VOLUMES.get(path.stem, path.stem) + (f"__{variant}" if variant else "")
    with work_folder(keep, f"{name}_x{factor}") as work:
        r = run_pipeline(low, work, factors=factors, settings=settings, voxel_size=vs, name=name)
    images = {"selfres": r["restored"], "model": r["model"], **interpolations(low, factors)}
    iso = None
    if isotropic:  # the other mode on the same LR volume, its axial factor declared as f (z-only factors)
        f = factors[0]
        lateral = hr_vs[1] if hr_vs else 1.0
        with work_folder(keep, f"{name}_x{factor}_isotropic") as work:
            iso = run_pipeline(low, work, factors=None, settings=settings, voxel_size=(f * lateral, lateral, lateral),
                               name=name, mode="isotropic")
        images["isotropic"] = iso["restored"]
        anisotropy = {k: axial_over_lateral(v, hr_vs) for k, v in (("truth", hr), ("selfres", images["selfres"]),
                                                                     ("isotropic", iso["restored"]))}
    bp = settings.infer.back_projection_iterations
    if bp:  # the honest baseline when back-projection is on: tricubic + the same back-projection, no network
        images["tricubic_bp"] = tricubic_back_projected(low, factors, bp, settings.train.degradation, vs,
                                                        shrink=settings.infer.back_projection_shrink)
    s = scores(hr, images, ssim=ssim)
    meta = r["meta"]
    sv = meta["self_validation"]
    guard_model = "model_worse_than_interpolation" not in meta["flags"]
    ref_model = s["model"]["psnr"] > s["tricubic"]["psnr"]
    # a tie (model within TIE_DB of tricubic) makes either verdict right
    tie = abs(s["model"]["psnr"] - s["tricubic"]["psnr"]) < TIE_DB
    return {
        "volume": name, "factor": factor, "lr_shape": list(low.shape), "hr_shape": list(hr.shape),
        "scores": s, "train_s": r["train_s"], "infer_s": r["infer_s"], "steps": meta["steps_done"],
        "best_step": meta["best_step"], "stop": meta["stop_reason"], "flags": meta["flags"],
        "holdout_gain": sv["psnr_model"] - sv["psnr_interp"],
        "guard": "model" if guard_model else "tricubic", "reference_verdict": "model" if ref_model else "tricubic",
        "agree": guard_model == ref_model or tie, "content": r["content"], "gain_interval": r["gain_interval"],
        # the truth's own voxel anisotropy (z / lateral): isotropic mode aims at lateral sharpness along z,
        # which a truth with coarser z voxels does not have
        "truth_anisotropy": hr_vs[0] / hr_vs[1] if hr_vs else None,
        **({"isotropic_train_s": iso["train_s"], "isotropic_flags": iso["meta"].get("flags", []),
            "axial_over_lateral": anisotropy} if iso else {}),
    }


VARIANTS = ("xhalf", "zy")
PLANES = ("plane_q1", "plane_q2", "plane_q3")  # --planes: 2-D images cut from the volumes


def volume_variant(hr: np.ndarray, voxel_size, which: str | None):
    """Another volume made from a real one, for a check that the defaults are not fitted to
    the files: ``xhalf`` — the right half in x of a central band in y (≤ 160 × 160 laterally),
    all of z; ``zy`` — z and y swapped (the axial profile now lies in a lateral axis), the
    middle 48 planes of the new z, x cut to ≤ 160; ``plane_q1``, ``plane_q2``, ``plane_q3`` — the
    z plane at a quarter, half and three quarters of the stack alone, a 2-D image (``--planes``,
    with ``--factors 1,2,2``). ``None``: the volume as it is."""
    if which is None:
        return hr, voxel_size
    if which in PLANES:
        quarter = int(which[-1])
        return np.ascontiguousarray(hr[min(hr.shape[0] - 1, hr.shape[0] * quarter // 4)][None]), voxel_size
    if which == "xhalf":
        _, ny, nx = hr.shape
        return hr[:, ny // 4 : ny // 4 + 160, nx // 2 :][:, :, :160], voxel_size
    if which == "zy":
        swapped = np.swapaxes(hr, 0, 1)
        start = max(0, (swapped.shape[0] - 48) // 2)
        vs = (voxel_size[1], voxel_size[0], voxel_size[2]) if voxel_size else None
        return np.ascontiguousarray(swapped[start : start + 48, :, :160]), vs
    raise ValueError(f"unknown variant {which!r}; known: {VARIANTS + PLANES}")


BEAD_ACQUISITIONS = ("rescale", "cubic")


def bead_experiment(*, n_beads: int = 500, seed: int = 0, acquisition: str = "rescale"):
    """The Self-Vision bead experiment's data: (truth 60×512×512, σ z,y,x = 4,2,2 px; its ×4
    acquisition; the truth's bead positions).

    ``acquisition="rescale"`` is the seed's (``skimage.transform.rescale``: Gaussian prefilter
    σ 1.5 HR px, then linear sampling); ``"cubic"`` the issue's protocol for every other volume
    (antialiased cubic, MATLAB ``imresize``), which adds no width to a bead."""
    from selfres import demo, metrics

    hr = demo.make_beads(shape=(60, 512, 512), n_beads=n_beads, sigma_px=(4.0, 2.0, 2.0), seed=seed)
    low = degrade_truth(hr, (4, 4, 4), {"rescale": "gaussian", "cubic": "cubic"}[acquisition])
    return hr, low, metrics.detect_beads(hr.astype(np.float64), min_distance=(8, 4, 4))


def bead_fwhm(img, positions, scale=1.0) -> dict:
    """Median lateral (y and x pooled) and axial FWHM of the beads at ``positions``, × ``scale``."""
    from selfres import metrics

    t = metrics.bead_fwhm_table(img, positions=positions, max_beads=100, half_width=(16, 10, 10))
    s = metrics.bead_fwhm_summary(t)
    lat = np.nanmedian(np.r_[t["fwhm_y"].to_numpy(), t["fwhm_x"].to_numpy()]) * scale
    return {"lateral": float(lat), "axial": float(s["fwhm_z"] * scale), "n": s["n_beads"]}


def bead_spread(img, positions, *, radius: int = 12, scale: float = 1.0) -> float:
    """Median lateral spread of the isolated beads at ``positions``: 2.355 × the σ of their
    second moment about the centroid (y and x marginals of the bead's plane, ±``radius``),
    × ``scale``. For a Gaussian bead it equals the FWHM; unlike a fitted FWHM it counts the
    tails, so a sharper core with wider tails or ringing does not look narrower."""
    pos = np.asarray(positions, dtype=int)
    coords = np.arange(-radius, radius + 1)
    out = []
    for z, y, x in pos:
        if not (radius <= y < img.shape[1] - radius and radius <= x < img.shape[2] - radius):
            continue
        near = (np.abs(pos[:, 1:] - (y, x)).max(axis=1) <= 2 * radius) & (np.abs(pos[:, 0] - z) <= 2 * radius)
        if near.sum() > 1:  # another bead's light would count as spread
            continue
        w = np.asarray(img[z, y - radius : y + radius + 1, x - radius : x + radius + 1], dtype=np.float64)
        var = []
        for marginal in (w.sum(axis=0), w.sum(axis=1)):
            c = (marginal * coords).sum() / marginal.sum()
            var.append((marginal * (coords - c) ** 2).sum() / marginal.sum())
        out.append(np.sqrt(np.mean(var)))
    return float(2.355 * np.median(out) * scale) if out else float("nan")


def bench_beads(*, settings, keep: Path | None, n_beads: int = 500, seed: int = 0,
                acquisition: str = "rescale") -> dict:
    """The Self-Vision bead experiment: ×4 restoration and bead FWHM (pixels of the HR grid)."""
    from selfres import metrics

    hr, low, pos = bead_experiment(n_beads=n_beads, seed=seed, acquisition=acquisition)
    factors = (4, 4, 4)
    with tempfile.TemporaryDirectory(prefix="selfres-beads-") as tmp:
        work = Path(keep) / "beads_x4" if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = run_pipeline(low, work, factors=factors, settings=settings, name="beads", voxel_size=(1.0, 1.0, 1.0))
    interp = interpolations(low, factors)

    def fwhm(img):
        return {**bead_fwhm(img, pos), "spread": bead_spread(img, pos)}

    pos_lr = np.clip(np.round((pos + 0.5) / 4 - 0.5).astype(int), 0, np.array(low.shape) - 1)
    t_lr = metrics.bead_fwhm_table(low, positions=pos_lr, max_beads=100, half_width=(4, 3, 3))
    lr = {"lateral": float(np.nanmedian(np.r_[t_lr["fwhm_y"], t_lr["fwhm_x"]]) * 4),
          "axial": float(np.nanmedian(t_lr["fwhm_z"]) * 4), "n": int(len(t_lr)),
          "spread": bead_spread(low, pos_lr, radius=3, scale=4)}
    psnr = scores(hr, {"selfres": r["restored"], "model": r["model"], **interp}, ssim=False)
    return {
        "truth": fwhm(hr), "input_lr_x4": lr, "tricubic": fwhm(interp["tricubic"]),
        "selfres": fwhm(r["restored"]), "model": fwhm(r["model"]), "psnr": psnr,
        "train_s": r["train_s"], "infer_s": r["infer_s"], "guard": r["content"],
        "holdout_gain": r["meta"]["self_validation"]["psnr_model"] - r["meta"]["self_validation"]["psnr_interp"],
        "gain_interval": r["gain_interval"], "acquisition": acquisition,
    }


# The paper's bead FWHMs (lateral, axial; px of the HR grid) as printed; None where not given.
PAPER_BEAD_FWHM = {"truth": (6.70, None), "input": (8.43, 14.51), "model": (6.79, 13.32)}


def paper(row: str) -> str:
    """``"as printed | ÷ √2"`` cells of the bead table for ``row`` (see :data:`PAPER_BEAD_FWHM`)."""
    vals = PAPER_BEAD_FWHM[row]
    printed = " / ".join("–" if v is None else f"{v:.2f}" for v in vals)
    fixed = " / ".join("–" if v is None else f"{v / np.sqrt(2):.2f}" for v in vals)
    return f"{printed} | {fixed}"


def gain_text(r: dict) -> str:
    """``+0.52 [+0.31, +0.70]``: the held-out gain and its 95 % block-bootstrap interval."""
    iv = r.get("gain_interval")
    return f"{r['holdout_gain']:+.2f}" + (f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")


def markdown(rows: list[dict], beads: dict | None, *, header: str) -> str:
    lines = [header, ""]
    if rows:
        lines += [
            "| volume | × | LR shape | trilinear dB | tricubic dB | model dB | selfres dB | Δ vs tricubic | "
            "SSIM tricubic / selfres | held-out gain dB [95 %] | guard | reference | agree | train s | infer s | steps (best) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            s = r["scores"]
            ss = (f"{s['tricubic']['ssim']:.4f} / {s['selfres']['ssim']:.4f}" if "ssim" in s["tricubic"] else "–")
            lines.append(
                f"| {r['volume']} | {r['factor']} | {'×'.join(map(str, r['lr_shape']))} | "
                f"{s['trilinear']['psnr']:.2f} | {s['tricubic']['psnr']:.2f} | {s['model']['psnr']:.2f} | "
                f"{s['selfres']['psnr']:.2f} | {s['selfres']['psnr'] - s['tricubic']['psnr']:+.2f} | {ss} | "
                f"{gain_text(r)} | {r['guard']} | {r['reference_verdict']} | "
                f"{'yes' if r['agree'] else 'NO'} | {r['train_s']:.0f} | {r['infer_s']:.0f} | "
                f"{r['steps']} ({r['best_step']}) |"
            )
        iso_rows = [r for r in rows if "isotropic" in r["scores"]]
        if iso_rows:
            lines += ["", "The same LR volumes restored in `isotropic` mode (axial factor declared as the z factor):", "",
                      "| volume | truth voxel z / lateral | tricubic dB | enhance (selfres) dB | isotropic dB | "
                      "isotropic − enhance dB | SSIM enhance / isotropic | axial / lateral resolution: truth · "
                      "enhance · isotropic | isotropic train s | isotropic flags |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in iso_rows:
                s = r["scores"]
                an = f"{r['truth_anisotropy']:.2f}" if r.get("truth_anisotropy") else "unknown"
                ss = (f"{s['selfres']['ssim']:.4f} / {s['isotropic']['ssim']:.4f}" if "ssim" in s["isotropic"] else "–")
                lines.append(f"| {r['volume']} | {an} | {s['tricubic']['psnr']:.2f} | {s['selfres']['psnr']:.2f} | "
                             f"{s['isotropic']['psnr']:.2f} | {s['isotropic']['psnr'] - s['selfres']['psnr']:+.2f} | {ss} | "
                             f"{' · '.join(f'{v:.2f}' if v else '–' for v in r['axial_over_lateral'].values())} | "
                             f"{r['isotropic_train_s']:.0f} | {', '.join(r['isotropic_flags']) or '–'} |")
        for f in sorted({r["factor"] for r in rows}):
            sub = [r for r in rows if r["factor"] == f]
            gains = [r["scores"]["selfres"]["psnr"] - r["scores"]["tricubic"]["psnr"] for r in sub]
            lines.append("")
            lines.append(
                f"×{f}: mean gain of selfres over tricubic {np.mean(gains):+.2f} dB, worst {min(gains):+.2f} dB; "
                f"guard agrees with the reference on {sum(r['agree'] for r in sub)}/{len(sub)} volumes; "
                f"max train {max(r['train_s'] for r in sub):.0f} s."
            )
    if beads:
        b = beads
        lines += [
            "", "Bead experiment (512×512×60, 500 beads, σ z,y,x = 4,2,2 px, ×4 to 128×128×15; acquisition "
            + {"rescale": "`skimage` rescale, the seed's", "cubic": "antialiased cubic, the issue's protocol"}[
                b.get("acquisition", "rescale")]
            + "); median FWHM in pixels of the high-resolution grid:", "",
            "| | lateral px | axial px | lateral spread px | paper lateral / axial, as printed "
            "| paper ÷ √2 (σ units, see below) |",
            "|---|---|---|---|---|---|",
        ]
        for label, key, ref in (("truth", "truth", "truth"), ("input (LR FWHM × 4)", "input_lr_x4", "input"),
                                ("tricubic", "tricubic", None), ("model output", "model", "model"),
                                (f"selfres (after guard: {b['guard']})", "selfres", None)):
            w = b[key]
            cells = paper(ref) if ref else "– | –"
            lines.append(f"| {label} | {w['lateral']:.2f} | {w['axial']:.2f} | {w.get('spread', float('nan')):.2f} "
                         f"| {cells} |")
        lines += [
            "",
            f"PSNR vs truth: tricubic {b['psnr']['tricubic']['psnr']:.2f} dB, model {b['psnr']['model']['psnr']:.2f}"
            f" dB, selfres {b['psnr']['selfres']['psnr']:.2f} dB; held-out gain {gain_text(b)} dB; "
            f"train {b['train_s']:.0f} s, infer {b['infer_s']:.0f} s.",
            "", "The paper fitted MATLAB's `gauss1`, a·exp(−((x−b)/c)²), whose c is √2·σ, and printed "
            "2.355·c: its widths are √2 × the FWHM (its truth 6.70 = √2 × 4.71; its axial output 13.32 = "
            "√2 × 9.42, the axial truth). The last column puts them on this table's footing. "
            "Lateral spread: 2.355 × the σ of the isolated beads' second moment (`bead_spread`); it equals the "
            "FWHM for a Gaussian bead, and unlike the fitted FWHM it counts the tails and ringing.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real volumes (the shared ones by name, then any other *.tif in it)")
    p.add_argument("--volumes", default="", help="comma-separated substrings of file names (default: all)")
    p.add_argument("--scales", default="2", help="comma-separated factors, e.g. 2,4 (the same on every axis)")
    p.add_argument("--factors", default=None, metavar="Z,Y,X",
                   help="one factor per axis instead of --scales, e.g. 1,2,2 (lateral undersampling) or 2,1,1")
    p.add_argument("--minutes", type=float, default=None, help="override train.max_minutes")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--set", action="append", default=[], help="settings override, e.g. train.width=16")
    p.add_argument("--variants", action="store_true",
                   help="also run two variants of each volume (xhalf: another region; zy: z and y swapped), "
                        "a check that the defaults are not fitted to the files")
    p.add_argument("--planes", action="store_true",
                   help="2-D input: the z planes at 1/4, 1/2 and 3/4 of each volume, each alone, instead of "
                        "the volume (with --factors 1,2,2)")
    p.add_argument("--beads", action="store_true", help="also run the bead experiment")
    p.add_argument("--bead-acquisition", choices=BEAD_ACQUISITIONS, default="rescale",
                   help="how the bead experiment's ×4 acquisition is made (default: rescale, the seed's)")
    p.add_argument("--no-real", action="store_true", help="skip the real volumes")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    p.add_argument("--lr-degradation", choices=LR_DEGRADATIONS, default="cubic",
                   help="how the benchmark degrades the real volumes (default: cubic, the issue's protocol)")
    p.add_argument("--lr-noise", type=float, default=None, metavar="PHOTONS",
                   help="add shot noise to each LR volume: its 99.9th percentile is PHOTONS photons "
                        "(default: none, the issue's protocol)")
    p.add_argument("--voxel-size", default=None,
                   help="z,y,x µm of the original voxels for volumes whose files carry none "
                        "(needed with train.psf_sigma_um or a Gaussian degradation)")
    p.add_argument("--isotropic", action="store_true",
                   help="with z-only --factors (e.g. 2,1,1): also restore each LR volume in isotropic mode, its axial "
                        "factor declared as the z factor, and score it against the same truth")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="keep the work folders here")
    p.add_argument("--json", type=Path, default=None, help="write raw results as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the table as Markdown")
    a = p.parse_args(argv)

    import torch

    from selfres.infer import keep_freed_memory
    from selfres.settings import parse_settings

    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as the selfres command does, so infer seconds are the pipeline's
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    over = parse_overrides(a.set)
    if a.minutes is not None:
        over.setdefault("train", {})["max_minutes"] = a.minutes
    if a.steps is not None:
        over.setdefault("train", {})["steps"] = a.steps
    settings = parse_settings(over)
    rows = []
    if not a.no_real:
        wanted = [w for w in a.volumes.split(",") if w]
        # the shared volumes in their usual order, then any other stack in --data (e.g. your own)
        paths = [a.data / f"{stem}.tif" for stem in VOLUMES]
        paths += sorted(q for q in a.data.glob("*.tif") if q not in paths and not q.stem.endswith("_lr"))
        paths = [q for q in paths if q.exists() and (not wanted or any(w in q.stem for w in wanted))]
        variants = PLANES if a.planes else (None,) + (VARIANTS if a.variants else ())
        scales = ([tuple(int(v) for v in a.factors.split(","))] if a.factors
                  else [int(s) for s in a.scales.split(",") if s])
        per_axis = scales[0] if len(scales) == 1 and isinstance(scales[0], tuple) else None  # --factors z,y,x
        if a.planes and not (per_axis and per_axis[0] == 1):
            p.error("--planes needs --factors with 1 along z, e.g. --factors 1,2,2")
        if a.isotropic and not (per_axis and per_axis[1:] == (1, 1)):
            p.error("--isotropic needs z-only --factors, e.g. --factors 2,1,1")
        for f in scales:
            for q, variant in [(q, v) for v in variants for q in paths]:
                t0 = time.monotonic()
                try:
                    r = bench_volume(q, f, settings=settings, ssim=not a.no_ssim, keep=a.keep,
                                     lr_degradation=a.lr_degradation, lr_photons=a.lr_noise,
                                     unknown_voxel_size=tuple(float(v) for v in a.voxel_size.split(","))
                                     if a.voxel_size else None, variant=variant, isotropic=a.isotropic)
                except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
                    print(f"{q.stem}{f'__{variant}' if variant else ''} ×{f}: FAILED {type(exc).__name__}: {exc}",
                          flush=True)
                    continue
                rows.append(r)
                s = r["scores"]
                tbp = f"tricubic+BP {s['tricubic_bp']['psnr']:.2f} " if "tricubic_bp" in s else ""
                tbp += f"isotropic {s['isotropic']['psnr']:.2f} " if "isotropic" in s else ""
                print(f"{r['volume']:18s} ×{r['factor']} tricubic {s['tricubic']['psnr']:.2f} {tbp}model {s['model']['psnr']:.2f} "
                      f"selfres {s['selfres']['psnr']:.2f} (Δ {s['selfres']['psnr'] - s['tricubic']['psnr']:+.2f}) "
                      f"held-out {gain_text(r)} guard {r['guard']} ref {r['reference_verdict']} "
                      f"train {r['train_s']:.0f}s infer {r['infer_s']:.0f}s steps {r['steps']}({r['best_step']}) "
                      f"[{time.monotonic() - t0:.0f}s]", flush=True)
    beads = None
    if a.beads:
        beads = bench_beads(settings=settings, keep=a.keep, acquisition=a.bead_acquisition)
        print(json.dumps({k: beads[k] for k in ("truth", "input_lr_x4", "tricubic", "model", "selfres")}), flush=True)
    header = (f"Settings overrides: `{json.dumps(over)}`; LR degradation {a.lr_degradation}"
              f"{f' + shot noise ({a.lr_noise:g} photons at the 99.9th percentile)' if a.lr_noise else ''}; "
              f"torch threads {a.threads}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    text = markdown(rows, beads, header=header)
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "beads": beads, "overrides": over}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
