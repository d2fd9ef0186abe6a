"""Benchmark of ``isotropic`` mode (not a test): semi-synthetic ×4 and real anisotropic stacks.

Semi-synthetic: a near-isotropic real volume is taken as the truth (declared
isotropic at its lateral pixel size), z is blurred (σ 2 slices) and sampled every 4th slice,
the whole selfres chain (``pipeline.restore``) restores it, and the output is compared
with the truth next to z-cubic interpolation of the same degraded input (PSNR/SSIM in
the truth's normalised units; SSIM is the mean 2-D SSIM over XZ and YZ slices).

Real anisotropic: the chain runs on the stack as acquired and the report gives the
isotropy ratio (lateral / axial decorrelation resolution) in → out.

Usage::

    python bench/isotropic.py [--volumes nucleus,trailmap,fibres,cellfinder,nuclei_tissue]
                              [--degradation analytic|learned] [--max-minutes 4] [--steps N]
                              [--threads 2] [--out bench_results/isotropic]

Prints one table row per volume and writes ``results.json`` under ``--out``. The CPU
is shared; wall-clock figures include whatever else runs on the machine (the load
average at the start and end is printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SELFRES_REAL_DATA", "/work/shared/data/real"))

SEMI = {  # name: (file, lateral pixel µm or None); "fibres": made here (synthetic_fibres)
    "nucleus": ("neubias_nucleus_dna_confocal.tif", 0.512),
    "trailmap": ("trailmap_axons_training_volume.tif", None),
    "fibres": (None, None),
}
REAL = {  # name: (file, voxel size z,y,x µm)
    "cellfinder": ("cellfinder_stp_mouse_brain_signal.tif", (5.0, 2.0, 2.0)),
    "nuclei_tissue": ("neubias_nuclei_tissue_z4um.tif", (4.0, 0.829, 0.829)),
}


def synthetic_fibres(shape=(64, 160, 160), *, seed: int = 1) -> np.ndarray:
    """An isotropic truth in photon-like units: 12 thin tubes (three of them running along z,
    the others lateral or oblique) and 25 blobs, blurred by σ 1 voxel on every axis. The tubes
    along z show what a restoration does at the stack's first and last planes (a walkthrough:
    a bright knot and a dark end plane there, forty-ninth session)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    obj = np.zeros(shape, np.float32)
    directions = [(1, 0, 0), (1, 0.15, 0.1), (1, -0.1, 0.2), (0, 1, 0), (0, 0, 1), (0, 1, 1), (0.5, 1, 0),
                  (0.4, 0, 1), (1, 1, 1), (0.3, -1, 0.5)]
    for k in range(12):
        d = np.asarray(directions[k % len(directions)], np.float32)
        d /= np.linalg.norm(d)
        v = grid - np.asarray([rng.uniform(0.2, 0.8) * n for n in shape], np.float32)
        across = v - (v @ d)[..., None] * d
        obj += rng.uniform(0.6, 1.0) * np.exp(-(across**2).sum(-1) / (2 * 0.7**2))
    for _ in range(25):
        centre = np.asarray([rng.uniform(0.1, 0.9) * n for n in shape], np.float32)
        obj += rng.uniform(0.3, 0.7) * (((grid - centre) ** 2).sum(-1) < rng.uniform(2.5, 5) ** 2)
    truth = ndimage.gaussian_filter(obj, 1.0, mode="mirror")
    return (1000.0 * truth / np.percentile(truth, 99.9) + 20.0).astype(np.float32)


def z_running_ratio(truth: np.ndarray, image: np.ndarray, planes: int) -> dict | None:
    """Restored / truth along the structures that run along z (bright columns nearly constant
    through z): per plane over the first and last ``planes``, and the median between them."""
    mean = truth.mean(0)
    columns = (mean > np.percentile(mean, 99.5)) & (truth.std(0) < 0.05 * np.maximum(mean, 1e-6))
    if not columns.any():
        return None
    ratio = image[:, columns].mean(1) / truth[:, columns].mean(1)
    return {"first": [round(float(v), 3) for v in ratio[:planes]],
            "last": [round(float(v), 3) for v in ratio[-planes:]],
            "between": round(float(np.median(ratio[planes:-planes])), 3)}


def degrade_z(volume: np.ndarray, *, sigma: float = 2.0, block: int = 4) -> np.ndarray:
    """The acquisition of a z stack: the object blurred along z by ``sigma`` slices and
    sampled every ``block`` slices, sample ``i`` at ``(i + 0.5)·block − 0.5``.

    Each sample is the Gaussian (continuous, evaluated at the sample's off-grid position;
    mirror borders) applied to the truth's slices: point sampling of the blurred object,
    as a microscope stepping its focus does. Written independently of selfres's own
    degradation (Keys-cubic read of a discretely blurred axis).
    """
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    m = n // block
    radius = int(4 * sigma + 2)
    out = np.empty((m, *v.shape[1:]), np.float32)
    for i in range(m):
        c = (i + 0.5) * block - 0.5
        j = np.arange(int(np.floor(c)) - radius, int(np.ceil(c)) + radius + 1)
        w = np.exp(-0.5 * ((j - c) / sigma) ** 2)
        w /= w.sum()
        j = np.abs(j)  # mirror at 0 (scipy 'mirror')
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)
        out[i] = np.tensordot(w.astype(np.float32), v[j], axes=1)
    return out


def slice_ssim(truth: np.ndarray, image: np.ndarray, data_range: float, *, every: int = 4) -> float:
    """Mean 2-D SSIM over XZ and YZ slices (every ``every``-th)."""
    from selfres import metrics

    vals = [metrics.ssim(truth[:, y, :], image[:, y, :], data_range=data_range)
            for y in range(0, truth.shape[1], every)]
    vals += [metrics.ssim(truth[:, :, x], image[:, :, x], data_range=data_range)
             for x in range(0, truth.shape[2], every)]
    return float(np.mean(vals))


def run_semi(name: str, settings, work: Path, *, threads: int, photons: float | None = None) -> dict:
    """``photons``: shot noise on the ×4 input (its 99.9th percentile that many photons,
    as ``bench/quality.py --lr-noise``); the truth stays as it is."""
    import tifffile

    from selfres import io, isotropic, metrics, normalise, pipeline

    fname, vxy = SEMI[name]
    truth_raw = tifffile.imread(DATA / fname).astype(np.float32) if fname else synthetic_fibres()
    low = degrade_z(truth_raw)
    if photons:
        from quality import add_shot_noise  # bench/quality.py, beside this script

        low = add_shot_noise(low, photons)
    truth_raw = truth_raw[: low.shape[0] * 4]
    vxy = vxy or 1.0
    src = work / f"{name}_z4.tif"
    tifffile.imwrite(src, low)
    out = work / f"{name}_restored.ome.zarr"
    t0 = time.monotonic()
    m = pipeline.restore(src, out, mode="isotropic", voxel_size=(4 * vxy, vxy, vxy), settings=settings,
                         threads=threads, keep=work / f"{name}_work", sample=name, device="cpu")
    wall = time.monotonic() - t0
    restored = np.asarray(io.read_ome_zarr(out).data, dtype=np.float32)
    zcubic = isotropic.reslice(low, 4.0)
    p = normalise.fit_percentiles(truth_raw, low_percentile=1.0, high_percentile=99.8)
    t, r, z = (normalise.apply(a, p) for a in (truth_raw, restored, zcubic))
    dr = float(t.max() - t.min())
    li, ai = metrics.resolution_lateral_axial(t, voxel_size=(vxy, vxy, vxy))
    row = {
        "volume": name, "shape_in": list(low.shape), "shape_out": list(restored.shape),
        "psnr_zcubic": metrics.psnr(t, z, data_range=dr), "psnr_model": metrics.psnr(t, r, data_range=dr),
        "ssim_zcubic": slice_ssim(t, z, dr), "ssim_model": slice_ssim(t, r, dr),
        "isotropy_truth": metrics.isotropy(li, ai), "isotropy_in": m["isotropy_in"],
        "isotropy_out": m["isotropy_out"], "self_validation": m["self_validation"], "flags": m["flags"],
        "restored_content": m.get("restored_content"), "train_seconds": m["train_seconds"],
        "infer_seconds": m["infer_seconds"], "wall_seconds": wall,
    }
    row["gain_db"] = row["psnr_model"] - row["psnr_zcubic"]
    # brighter than any acquired voxel (qc's restored_overshoots; the whole volume here): the truth's share
    # is what a faithful restoration may hold (objects thin in z lose peak height to the axial blur)
    ceiling = float(normalise.apply(np.float32(low.max()), p)) + 0.05
    row["overshoot"] = {"qc_window": (m.get("restored_check") or {}).get("overshoot"),
                        **{k: float(np.mean(a > ceiling)) for k, a in (("truth", t), ("output", r), ("zcubic", z))}}
    # the stack's first and last 2f planes, where an axial slice ends (docs/isotropic.md, "end planes")
    ends = [slice(0, 8), slice(t.shape[0] - 8, t.shape[0])]
    for key, part in zip(("first", "last"), ends):
        row[f"gain_{key}8_db"] = (metrics.psnr(t[part], r[part], data_range=dr)
                                  - metrics.psnr(t[part], z[part], data_range=dr))
    row["z_running_ratio"] = z_running_ratio(t, r, 8)
    meta = json.loads((work / f"{name}_work" / "model" / "model.json").read_text())["metadata"]
    row["end_weights"] = meta.get("end_weights")
    row["degradation"] = meta.get("degradation")
    row["best_step"], row["steps_done"], row["stop_reason"] = meta["best_step"], meta["steps_done"], meta["stop_reason"]
    return row


def run_real(name: str, settings, work: Path, *, threads: int) -> dict:
    from selfres import pipeline

    fname, vs = REAL[name]
    out = work / f"{name}_restored.ome.zarr"
    t0 = time.monotonic()
    m = pipeline.restore(DATA / fname, out, mode="isotropic", voxel_size=vs, settings=settings, threads=threads,
                         keep=work / f"{name}_work", sample=name, device="cpu")
    meta = json.loads((work / f"{name}_work" / "model" / "model.json").read_text())["metadata"]
    return {"volume": name, "shape_in": m["input_shape"], "shape_out": m["output_shape"],
            "isotropy_in": m["isotropy_in"], "isotropy_out": m["isotropy_out"], "resolution_um": m["resolution_um"],
            "self_validation": m["self_validation"], "flags": m["flags"], "restored_content": m.get("restored_content"),
            "train_seconds": m["train_seconds"], "infer_seconds": m["infer_seconds"],
            "wall_seconds": time.monotonic() - t0, "degradation": meta.get("degradation"),
            "overshoot": (m.get("restored_check") or {}).get("overshoot")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", default="nucleus,trailmap,cellfinder,nuclei_tissue")
    ap.add_argument("--degradation", choices=["analytic", "learned"], default="analytic")
    ap.add_argument("--max-minutes", type=float, default=None, help="train.max_minutes (default: package default)")
    ap.add_argument("--steps", type=int, default=None,
                    help="isotropic.steps, the restorer's step limit (default: package default)")
    ap.add_argument("--set", action="append", default=[], help="settings override, e.g. isotropic.width=48")
    ap.add_argument("--gan-minutes", type=float, default=None, help="isotropic.gan_max_minutes")
    ap.add_argument("--axial-sigma", type=float, default=None, help="isotropic.axial_sigma_px (default: estimated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr-noise", type=float, default=None, metavar="PHOTONS",
                    help="shot noise on the semi-synthetic inputs: their 99.9th percentile is PHOTONS photons")
    ap.add_argument("--out", default="bench_results/isotropic")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from selfres.infer import keep_freed_memory
    from selfres.settings import Settings, from_dict

    keep_freed_memory()  # as the selfres command does

    cfg: dict = {"isotropic": {"degradation": a.degradation}}
    if a.max_minutes is not None:
        cfg.setdefault("train", {})["max_minutes"] = a.max_minutes
    if a.steps is not None:
        cfg["isotropic"]["steps"] = a.steps
    for item in a.set:  # "section.key=value" (JSON values)
        key, _, value = item.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        section, _, name = key.partition(".")
        cfg.setdefault(section, {})[name] = value
    if a.gan_minutes is not None:
        cfg["isotropic"]["gan_max_minutes"] = a.gan_minutes
    if a.axial_sigma is not None:
        cfg["isotropic"]["axial_sigma_px"] = a.axial_sigma
    settings = from_dict(Settings, cfg)
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    for name in a.volumes.split(","):
        row = run_semi(name, settings, work, threads=a.threads, photons=a.lr_noise) if name in SEMI else run_real(
            name, settings, work, threads=a.threads)
        rows.append(row)
        print(json.dumps(row, default=str))
        (work / "results.json").write_text(json.dumps({"settings": cfg, "rows": rows}, indent=2, default=str))
    print(f"load average at end: {os.getloadavg()}")
    print("\n| volume | z-cubic PSNR | model PSNR | gain dB | SSIM z-cubic → model | isotropy in → out "
          "| train s | infer s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "psnr_model" in r:
            print(f"| {r['volume']} | {r['psnr_zcubic']:.2f} | {r['psnr_model']:.2f} | {r['gain_db']:+.2f} | "
                  f"{r['ssim_zcubic']:.3f} → {r['ssim_model']:.3f} | {r['isotropy_in']} → {r['isotropy_out']} | "
                  f"{r['train_seconds']:.0f} | {r['infer_seconds']:.0f} |")
        else:
            print(f"| {r['volume']} | – | – | – | – | {r['isotropy_in']} → {r['isotropy_out']} | "
                  f"{r['train_seconds']:.0f} | {r['infer_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
