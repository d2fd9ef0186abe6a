"""Benchmark of ``model_from`` (not a test): one sample's model restoring another.

Each real volume is cut in two halves along x — two neighbouring tiles of one acquisition,
the closest stand-in for two time points of one series that the shared data hold. Each half
is degraded ×2 as in ``bench/quality.py`` (antialiased cubic; ``--lr-noise`` adds shot
noise). The left half trains (the pipeline's stages at the defaults); the right half is
restored three ways and scored against its truth:

- **own**: it trains its own model (what a sample without ``model_from`` gets);
- **adopted**: the left half's model, judged on the right half's held-out region
  (``pipeline.stage_adopt``, what ``model_from`` does);
- tricubic.

Printed: PSNR of each against the truth, the guard's verdict on each, train / adopt
seconds. ``--mode isotropic``: the same with the semi-synthetic ×4 axial volumes of
``bench/isotropic.py`` (z blurred σ 2 slices and sampled every 4th slice), z-cubic as the
baseline. Usage::

    python bench/model_from.py [--volumes nuclei,trailmap] [--lr-noise 1000] [--markdown out.md]
    python bench/model_from.py --mode isotropic [--set isotropic.degradation=learned]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (  # noqa: E402
    DEFAULT_DATA,
    VOLUMES,
    add_shot_noise,
    degrade_truth,
    interpolations,
    parse_overrides,
    scores,
)


def _stages(low: np.ndarray, work: Path, *, factors, settings, voxel_size, name: str, source_model: Path | None):
    """normalise → crop → train (or adopt ``source_model``) → infer; (restored, model meta, seconds)."""
    import tifffile

    from selfres import io, pipeline

    work.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(work / "input.tif", low.astype(np.float32))
    norm, fov = work / "normalized.ome.zarr", work / "train_fov.json"
    pipeline.stage_normalise(work / "input.tif", norm, sample=name, voxel_size=voxel_size, settings=settings.normalise)
    pipeline.stage_crop(norm, fov, sample=name, mode="enhance", scale=factors, settings=settings.fov)
    t0 = time.monotonic()
    if source_model is None:
        meta = pipeline.stage_train(norm, fov, work / "model", sample=name, scale=factors, settings=settings,
                                    device="cpu")
    else:
        meta = pipeline.stage_adopt(norm, fov, source_model, work / "model", sample=name, scale=factors,
                                    settings=settings, device="cpu")
    seconds = time.monotonic() - t0
    pipeline.stage_infer(norm, work / "model", work / "restored.ome.zarr", sample=name, settings=settings.infer,
                         device="cpu")
    restored = np.asarray(io.read_ome_zarr(work / "restored.ome.zarr").data, dtype=np.float32)
    return restored, meta, seconds


def bench_volume(path: Path, *, settings, photons: float | None) -> dict:
    from selfres import io

    vol = io.read_volume(path)
    factors = (2, 2, 2)
    hr = np.asarray(vol.data, dtype=np.float32)
    nx = (hr.shape[2] // 4) * 2  # each half a multiple of the factor
    halves = {"left": hr[:, :, :nx], "right": hr[:, :, nx: 2 * nx]}
    halves = {k: v[tuple(slice(0, (n // 2) * 2) for n in v.shape)] for k, v in halves.items()}
    lows = {k: degrade_truth(v, factors, "cubic") for k, v in halves.items()}
    if photons:
        lows = {k: add_shot_noise(v, photons, seed=i) for i, (k, v) in enumerate(lows.items())}
    vs = tuple(v * 2 for v in vol.voxel_size) if vol.voxel_size else None
    name = VOLUMES.get(path.stem, path.stem)
    with tempfile.TemporaryDirectory(prefix="selfres-model-from-") as tmp:
        tmp = Path(tmp)
        _, left_meta, left_s = _stages(lows["left"], tmp / "left", factors=factors, settings=settings,
                                       voxel_size=vs, name=f"{name}_left", source_model=None)
        own, own_meta, own_s = _stages(lows["right"], tmp / "own", factors=factors, settings=settings, voxel_size=vs,
                                       name=f"{name}_right", source_model=None)
        adopted, ad_meta, ad_s = _stages(lows["right"], tmp / "adopted", factors=factors, settings=settings,
                                         voxel_size=vs, name=f"{name}_right", source_model=tmp / "left" / "model")
    images = {"own": own, "adopted": adopted, "tricubic": interpolations(lows["right"], factors)["tricubic"]}
    s = scores(halves["right"], images, ssim=False)

    def verdict(meta):
        return "tricubic" if "model_worse_than_interpolation" in meta["flags"] else "model"

    return {"volume": name, "lr_shape": list(lows["right"].shape), "psnr": {k: v["psnr"] for k, v in s.items()},
            "guard_own": verdict(own_meta), "guard_adopted": verdict(ad_meta), "guard_left": verdict(left_meta),
            "train_left_s": left_s, "train_own_s": own_s, "adopt_s": ad_s}


def bench_isotropic(name: str, *, settings) -> dict:
    """Halves along x of one of ``bench/isotropic.py``'s semi-synthetic volumes."""
    import tifffile
    from isotropic import DATA, SEMI, degrade_z  # bench/isotropic.py, beside this script

    from selfres import io, isotropic, metrics, normalise, pipeline

    fname, vxy = SEMI[name]
    vxy = vxy or 1.0
    truth = tifffile.imread(DATA / fname).astype(np.float32)
    nx = truth.shape[2] // 2
    halves = {"left": truth[:, :, :nx], "right": truth[:, :, nx: 2 * nx]}
    lows = {k: degrade_z(v) for k, v in halves.items()}
    out, seconds, flags = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="selfres-model-from-") as tmp:
        tmp = Path(tmp)
        for run, half, source in (("left", "left", None), ("own", "right", None),
                                  ("adopted", "right", tmp / "left" / "model")):
            src = tmp / f"{run}.tif"
            tifffile.imwrite(src, lows[half])
            m = pipeline.restore(src, tmp / f"{run}.ome.zarr", mode="isotropic", voxel_size=(4 * vxy, vxy, vxy),
                                 settings=settings, keep=tmp / run, sample=f"{name}_{half}", device="cpu",
                                 model_from=source)
            seconds[run] = m["train_seconds"]
            flags[run] = "tricubic" if "model_worse_than_interpolation" in m["flags"] else "model"
            out[run] = np.asarray(io.read_ome_zarr(tmp / f"{run}.ome.zarr").data, dtype=np.float32)
    truth_r = halves["right"][: lows["right"].shape[0] * 4]
    p = normalise.fit_percentiles(truth_r, low_percentile=1.0, high_percentile=99.8)
    t = normalise.apply(truth_r, p)
    dr = float(t.max() - t.min())
    images = {"own": out["own"], "adopted": out["adopted"], "tricubic": isotropic.reslice(lows["right"], 4.0)}
    psnr = {k: metrics.psnr(t, normalise.apply(v, p), data_range=dr) for k, v in images.items()}
    return {"volume": name, "lr_shape": list(lows["right"].shape), "psnr": psnr, "guard_own": flags["own"],
            "guard_adopted": flags["adopted"], "guard_left": flags["left"], "train_left_s": seconds["left"],
            "train_own_s": seconds["own"], "adopt_s": seconds["adopted"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--volumes", default="", help="comma-separated substrings of file names (default: all)")
    p.add_argument("--lr-noise", type=float, default=None, metavar="PHOTONS")
    p.add_argument("--mode", choices=["enhance", "isotropic"], default="enhance",
                   help="isotropic: the semi-synthetic volumes of bench/isotropic.py (z-cubic is the baseline)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[],
                   help="settings override for every run, e.g. isotropic.degradation=learned")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from selfres.settings import Settings, from_dict

    torch.set_num_threads(args.threads)
    settings = from_dict(Settings, parse_overrides(args.set))
    wanted = [w for w in args.volumes.split(",") if w]
    if args.mode == "isotropic":
        from isotropic import SEMI

        runs = [(lambda n=n: bench_isotropic(n, settings=settings)) for n in SEMI if not wanted or n in wanted]
    else:
        paths = [args.data / f"{stem}.tif" for stem in VOLUMES if (args.data / f"{stem}.tif").exists()]
        paths = [q for q in paths if not wanted or any(w in q.stem for w in wanted)]
        runs = [(lambda q=q: bench_volume(q, settings=settings, photons=args.lr_noise)) for q in paths]
    base = "z-cubic" if args.mode == "isotropic" else "tricubic"
    lines = [f"| volume (right half) | LR shape | {base} dB | own model dB (guard) | left half's model dB (guard) | "
             "train s (own) | adopt s |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        r = run()
        ps = r["psnr"]
        lines.append(f"| {r['volume']} | {'×'.join(map(str, r['lr_shape']))} | {ps['tricubic']:.2f} | "
                     f"{ps['own']:.2f} ({ps['own'] - ps['tricubic']:+.2f}; {r['guard_own']}) | "
                     f"{ps['adopted']:.2f} ({ps['adopted'] - ps['tricubic']:+.2f}; {r['guard_adopted']}) | "
                     f"{r['train_own_s']:.1f} | {r['adopt_s']:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
