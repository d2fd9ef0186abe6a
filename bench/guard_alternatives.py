"""Could the held-out region judge the network against tricubic + back-projection? (not a test)

The guard compares what inference writes (network + back-projection, by default) with plain
tricubic. At z-only factors (``2,1,1``) that verdict failed silently on 4 of 21 benchmark
volumes, and on every one of them tricubic + the same back-projection, no network, beat the
network against the truth (docs/quality.md, "Twenty-ninth session"). This script reads the
work folders ``bench/quality.py --keep DIR`` kept and, on each sample's held-out region
degraded exactly as the guard does (:func:`selfres.qc.self_validation`), scores

- the network + its inference extras (what the guard scores),
- tricubic + the same extras (back-projection with its noise shrink measured for tricubic),

against the held-out target, next to the true figures the benchmark measured against the
full-resolution volume (``--json`` of the same run). Nothing in the pipeline changes.

    python bench/quality.py --factors 2,1,1 --variants --keep /tmp/k --json /tmp/q.json
    python bench/guard_alternatives.py /tmp/k --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def kept_sample(work: Path) -> dict:
    """What a kept work folder holds for a re-scoring: the normalised volume, its training FOV,
    the network alone and wrapped in its inference extras, tricubic + the same extras (the
    back-projection noise shrink measured for tricubic on the training FOV, as the pipeline
    measures it for the network), the training degradation and the factors."""
    from selfres import pipeline
    from selfres.ensemble import wrap_for_inference
    from selfres.fov import TrainingFov, box_slices
    from selfres.infer import CubicUpsampler
    from selfres.noise import noise_level_function
    from selfres.settings import DegradationSettings, from_dict
    from selfres.train import SHARE_PROBE_SHAPE, central_crop, correction_noise_level, make_degradation

    vol, _ = pipeline.read_normalized(work / "normalized.ome.zarr")
    fov = TrainingFov.load(work / "train_fov.json", volume_shape=vol.data.shape)
    model, _, meta = pipeline.load_trained(work / "model")
    factors = tuple(meta["factors"])
    deg = make_degradation(from_dict(DegradationSettings, pipeline.trained_degradation(meta)),
                           voxel_size=meta.get("voxel_size_in"))
    extras = meta.get("inference_extras") or {}
    net = wrap_for_inference(model, degradation=deg, noise_level=pipeline.recorded_noise_level(meta), **extras)
    tricubic = CubicUpsampler(factors)
    level = None
    if extras.get("back_projection_shrink"):
        acquisition = np.asarray(vol.data[box_slices(fov.train)])
        level = correction_noise_level(tricubic, central_crop(acquisition, SHARE_PROBE_SHAPE),
                                       noise_level_function(acquisition), degradation=deg)
    cubic_bp = wrap_for_inference(tricubic, degradation=deg, noise_level=level, **extras)
    return {"volume": vol, "fov": fov, "meta": meta, "factors": factors, "degradation": deg,
            "network_alone": model, "network": net, "tricubic_bp": cubic_bp}


def predict(module, low: np.ndarray, factors) -> np.ndarray:
    """``module`` applied to ``low`` on the CPU, in tiles of at most 64 voxels a side."""
    import torch

    from selfres.infer import predict_array

    tile = tuple(max(8, min(64, n)) for n in low.shape)
    return predict_array(module, low, factors=factors, tile_size=tile, device=torch.device("cpu"), amp=False)


def held_out_scores(work: Path) -> dict:
    """Held-out PSNR (dB) of tricubic, network + extras and tricubic + extras, and the 95 %
    interval of the network's gain over tricubic + extras, for one kept work folder."""
    from selfres import metrics
    from selfres.fov import box_slices
    from selfres.train import holdout_pair

    k = kept_sample(work)
    vol, fov, meta, factors = k["volume"], k["fov"], k["meta"], k["factors"]
    target, low, interp = holdout_pair(np.asarray(vol.data[box_slices(fov.holdout)]), factors, k["degradation"])
    pred_net = predict(k["network"], low, factors)
    pred_cbp = predict(k["tricubic_bp"], low, factors)
    rng = float(max(target.max() - target.min(), 1e-6))
    psnr = {k: metrics.psnr(target, v, data_range=rng) for k, v in
            (("tricubic", interp), ("network", pred_net), ("tricubic_bp", pred_cbp))}
    interval = metrics.psnr_gain_interval(target, pred_net, pred_cbp)
    return {"psnr": psnr, "net_vs_cbp_interval": list(interval) if interval else None,
            "flags": meta.get("flags", []), "best_step": meta.get("best_step")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("keep", type=Path, help="the --keep folder of bench/quality.py")
    p.add_argument("--json", type=Path, required=True, help="the --json of the same bench/quality.py run")
    p.add_argument("--markdown", type=Path, default=None)
    a = p.parse_args(argv)
    runs = json.loads(a.json.read_text())["rows"]
    rows = ["| volume | held-out: net+BP − tricubic | tricubic+BP − tricubic | net+BP − tricubic+BP [95 %] "
            "| true: net+BP − tricubic | tricubic+BP − tricubic | net+BP − tricubic+BP | guard | would choose |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        work = a.keep / f"{r['volume']}_x{r['factor']}"
        if not (work / "model").is_dir():
            continue
        h = held_out_scores(work)
        s = r["scores"]
        true_net = s["model"]["psnr"] - s["tricubic"]["psnr"]
        true_cbp = s["tricubic_bp"]["psnr"] - s["tricubic"]["psnr"] if "tricubic_bp" in s else float("nan")
        hp = h["psnr"]
        iv = h["net_vs_cbp_interval"]
        choose = "net" if iv and iv[0] > 0 else "tricubic+BP"
        truth_best = "net" if true_net >= true_cbp else "tricubic+BP"
        rows.append(f"| {r['volume']} | {hp['network'] - hp['tricubic']:+.2f} | {hp['tricubic_bp'] - hp['tricubic']:+.2f} "
                    f"| {hp['network'] - hp['tricubic_bp']:+.2f} "
                    + (f"[{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "[–]")
                    + f" | {true_net:+.2f} | {true_cbp:+.2f} | {true_net - true_cbp:+.2f} | {r['guard']} "
                    f"| {choose} ({'right' if choose == truth_best else 'WRONG'}) |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if a.markdown:
        a.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
