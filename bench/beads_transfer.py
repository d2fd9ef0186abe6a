"""Does the ``enhance`` network learn something that transfers one scale finer on beads?

A diagnostic, not a test: the default network and training pairs on the bead experiment
(512×512×60, 500 beads, σ z,y,x = 4,2,2 px, ×4 down to 128×128×15), *without* checkpoint
selection, scored against the bead truth every ``--every`` steps (PSNR on the LR's
normalisation, lateral/axial FWHM in HR pixels), with 1 and 3 back-projection iterations,
next to the held-out PSNR that selection would see.

    python bench/beads_transfer.py                       # pairs from the acquisition alone
    python bench/beads_transfer.py --psf-sigma 1,0.5,0.5 # PSF-scaled targets (σ in LR voxels)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selfres import models
from selfres.degrade import TorchDegrader, upscale_cubic
from selfres.ensemble import wrap_for_inference
from selfres.infer import predict_array
from selfres.settings import TrainSettings
from selfres import train as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import bead_experiment, bead_fwhm  # noqa: E402  (the bead experiment of bench/quality.py)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--psf-sigma", default="", help="PSF σ z,y,x in LR voxels: PSF-scaled targets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bp", default="0,1,3", help="back-projection iterations to score at each report, comma-separated")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    s = TrainSettings()
    fac = (4, 4, 4)
    hr, low, pos = bead_experiment()
    lo, hi = np.percentile(low, [1, 99.8])
    low, truth = (low - lo) / (hi - lo), (hr.astype(np.float32) - lo) / (hi - lo)

    def fwhm(img):
        f = bead_fwhm(img, pos)
        return f["lateral"], f["axial"]

    train_v, hold_v = low[:, :100], low[:, 100:]
    if a.psf_sigma:
        blur = T.psf_target_blur_px([float(v) for v in a.psf_sigma.split(",")], fac, (1.0, 1.0, 1.0))
        train_v, hold_v = T.psf_scaled_targets(train_v, blur), T.psf_scaled_targets(hold_v, blur)
    s, _ = T.resolve_noise_match(train_v, fac, s, None)  # the default noise top-up, as training makes it
    deg = T.make_degradation(s.degradation, voxel_size=None)
    torch.manual_seed(s.seed)
    spec = models.ModelSpec(arch=s.arch, factors=fac, width=s.width, depth=s.depth, residual=s.residual, dims=3)
    model = models.build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    sampler = T.PatchSampler(train_v, T.fit_patch_size(s.patch_size, train_v.shape, fac),
                             structure_weighting=s.structure_weighting, augment=True, rotate=True,
                             generator=torch.Generator().manual_seed(s.seed))
    degrader = TorchDegrader(fac, deg, device="cpu")
    th, lh, ih = T.holdout_pair(hold_v, fac, deg)
    tile = tuple(max(8, min(64, n)) for n in low.shape)
    tri = upscale_cubic(low, fac)
    print(f"tricubic: truth PSNR {T.psnr01(truth, tri, 1.0):.2f} dB, FWHM lateral/axial {fwhm(tri)[0]:.2f}/"
          f"{fwhm(tri)[1]:.2f} px; held-out tricubic {T.psnr01(th, ih, 1.0):.2f} dB", flush=True)

    def report(step):
        model.eval()
        with torch.no_grad():
            ph = predict_array(model, lh, factors=fac, tile_size=tuple(max(8, min(64, n)) for n in lh.shape),
                               device="cpu", amp=False)
            line = [f"step {step:4d}: held-out {T.psnr01(th, ph, 1.0):.2f} dB"]
            for n in bp_list:
                w = wrap_for_inference(model, back_projection_iterations=n, degradation=deg).eval()
                out = predict_array(w, low, factors=fac, tile_size=tile, device="cpu", amp=False)
                lat, ax = fwhm(out)
                line.append(f"BP{n}: truth {T.psnr01(truth, out, 1.0):.2f} dB FWHM {lat:.2f}/{ax:.2f}")
        model.train()
        print(" | ".join(line), flush=True)

    bp_list = [int(v) for v in a.bp.split(",")]
    report(0)
    t0 = time.monotonic()
    for step in range(1, a.steps + 1):
        for g in opt.param_groups:
            g["lr"] = s.learning_rate * 0.5 * (1 + np.cos(np.pi * step / a.steps))
        target = sampler.sample(s.batch_size)
        with torch.no_grad():
            x = degrader(target)
        loss = T.loss_fn(s.loss, model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            print(f"  ({time.monotonic() - t0:.0f} s, loss {loss.item():.4f})", end=" ")
            report(step)


if __name__ == "__main__":
    main()
