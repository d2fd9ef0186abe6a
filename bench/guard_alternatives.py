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


def held_out_scores(work: Path) -> dict:
    """Held-out PSNR (dB) of tricubic, network + extras and tricubic + extras, and the 95 %
    interval of the network's gain over tricubic + extras, for one kept work folder."""
    import torch

    from selfres import metrics, pipeline
    from selfres.ensemble import wrap_for_inference
    from selfres.fov import TrainingFov, box_slices
    from selfres.infer import CubicUpsampler, predict_array
    from selfres.noise import noise_level_function
    from selfres.settings import DegradationSettings, from_dict
    from selfres.train import (SHARE_PROBE_SHAPE, central_crop, correction_noise_level, holdout_pair,
                               make_degradation)

    vol, _ = pipeline.read_normalized(work / "normalized.ome.zarr")
    fov = TrainingFov.load(work / "train_fov.json", volume_shape=vol.data.shape)
    model, _, meta = pipeline.load_trained(work / "model")
    factors = tuple(meta["factors"])
    deg = make_degradation(from_dict(DegradationSettings, pipeline.trained_degradation(meta)),
                           voxel_size=meta.get("voxel_size_in"))
    target, low, interp = holdout_pair(np.asarray(vol.data[box_slices(fov.holdout)]), factors, deg)
    extras = meta.get("inference_extras") or {}
    tile = tuple(max(8, min(64, n)) for n in low.shape)
    cpu = torch.device("cpu")
    net = wrap_for_inference(model, degradation=deg, noise_level=pipeline.recorded_noise_level(meta), **extras)
    tricubic = CubicUpsampler(factors)
    level = None
    if extras.get("back_projection_shrink"):  # measured for tricubic, as the pipeline does for the network
        acquisition = np.asarray(vol.data[box_slices(fov.train)])
        level = correction_noise_level(tricubic, central_crop(acquisition, SHARE_PROBE_SHAPE),
                                       noise_level_function(acquisition), degradation=deg)
    cubic_bp = wrap_for_inference(tricubic, degradation=deg, noise_level=level, **extras)
    pred_net = predict_array(net, low, factors=factors, tile_size=tile, device=cpu, amp=False)
    pred_cbp = predict_array(cubic_bp, low, factors=factors, tile_size=tile, device=cpu, amp=False)
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
