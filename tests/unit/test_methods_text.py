"""The report's paragraph for a paper's methods section (:func:`selfres.methods_text.methods_text`):
what was done to the sample, with the figures that back it, and nothing it did not do."""

from __future__ import annotations

import pytest

from selfres import methods_text, report

PROVENANCE = {
    "selfres_version": "0.1.0", "git_commit": "b720b778e504d3fe",
    "model": {"mode": "enhance", "factors": [2, 2, 2], "best_step": 75, "device": "cpu",
              "ran_on": {"device_name": "AMD EPYC", "torch_threads": 2}, "arch": "resnet3d",
              "residual": "tricubic", "n_parameters": 35569, "degradation": {"method": "cubic"}},
}


def _enhance(**over):
    m = {"mode": "enhance", "input_shape": [32, 128, 128], "output_shape": [64, 256, 256],
         "voxel_size_in": [2.0, 1.0, 1.0], "voxel_size_out": [1.0, 0.5, 0.5], "train_seconds": 11.4,
         "self_validation": {"psnr_model": 34.0147, "psnr_interp": 32.1723}, "best_step": 75,
         "holdout_gain_db_interval": [1.692, 1.982], "noise_model": "match",
         "noise_sigma_at": {"0.1": 0.018, "0.5": 0.037}, "guard_margin_db": 0.2, "restored_content": "model",
         "inference_extras": {"back_projection_iterations": 1, "back_projection_shrink": True, "ensemble": False},
         "flags": []}
    return m | over


def test_an_enhance_sample_is_described_with_its_method_grid_training_and_held_out_figures():
    text = methods_text.methods_text(_enhance(), PROVENANCE)
    for said in ("selfres 0.1.0 (commit b720b778e5) in its enhance mode, after Self-Vision (He et al., Photonics "
                 "Research 11(1):1, 2023",
                 "A 3-D residual network (35,569 parameters) was trained as a correction to tricubic interpolation "
                 "on crops of this volume alone for 11.4 s on CPU (AMD EPYC, 2 threads)",
                 "downscaled ×2,2,2 with an antialiased cubic kernel", "noise added to match the acquisition's own",
                 "its targets the crops as acquired", "The checkpoint kept (step 75)",
                 "32×128×128 voxels (z, y, x) of 2 × 1 × 1 µm, was restored to 64×256×256 voxels (z, y, x) of "
                 "1 × 0.5 × 0.5 µm with back-projection",
                 "On the held-out region, degraded as in training, the network with back-projection scored "
                 "34.01 dB PSNR and tricubic interpolation 32.17 dB (gain +1.84 dB; 95 % interval +1.69 to "
                 "+1.98 dB)"):
        assert said in text, said
    assert "reference" not in text and "is the tricubic" not in text
    one = PROVENANCE | {"model": PROVENANCE["model"] | {"ran_on": {"device_name": "AMD EPYC", "torch_threads": 1}}}
    assert "on CPU (AMD EPYC, 1 thread)" in methods_text.methods_text(_enhance(), one)  # not "1 threads"


def test_what_the_sample_did_not_have_is_not_said_and_a_fall_back_is():
    no_noise = _enhance(noise_model="none", noise_sigma_at=None, restored_content="interpolation",
                        reference={"psnr": 40.5, "psnr_interp": 38.8}, psf_sigma_um=[2.0, 0.5, 0.5])
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"degradation": {"method": "gaussian",
                                                                          "sigma_um": [1.5, 0.4, 0.4]}}}
    text = methods_text.methods_text(no_noise, prov)
    assert "noise added" not in text
    assert "noise added" not in methods_text.methods_text(_enhance(noise_model="none"), PROVENANCE)  # measured, not added
    assert "blurred by a Gaussian (σ z,y,x = 1.5, 0.4, 0.4 µm) and block-averaged ×2,2,2" in text
    assert "its targets the crops seen through the PSF given (σ z,y,x = 2, 0.5, 0.5 µm)" in text
    assert text.endswith("As the network did not beat tricubic interpolation there by the required 0.2 dB, the "
                         "output is the tricubic interpolation, not the network's. Against a reference volume, the "
                         "output scored 40.50 dB PSNR and tricubic interpolation 38.80 dB.")


def test_an_adopted_model_says_whose_volume_trained_it_and_where_and_how_long():
    """The trainer's time and machine, not the adopting sample's judging (a review: 1.89 s, the
    adopter's, for a model trained in 1.79 s elsewhere)."""
    trainer = {"sample": "lapse_t0", "train_seconds": 95.0, "ran_on": {"device": "cuda", "device_name": "A100"}}
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"adopted_from": trainer}}
    text = methods_text.methods_text(_enhance(adopted_from="lapse_t0", train_seconds=1.89), prov)
    assert ("on crops of another acquisition (sample lapse_t0) alone for 1.58 min on a GPU (A100): its inputs"
            in text)
    assert "scored best on a region of that acquisition held out of training. It was applied to this volume " \
           "unchanged." in text
    assert "On a held-out region of this volume, degraded as in training, the network with" in text
    assert "1.89" not in text and "AMD EPYC" not in text


def test_a_network_that_kept_its_starting_point_is_not_credited_with_the_gain():
    """Best step 0: the output is tricubic with back-projection (a review: the text credited a
    network that learned nothing with +0.53 dB)."""
    text = methods_text.methods_text(_enhance(best_step=0), PROVENANCE)
    assert ("No checkpoint beat the starting point on a region of the volume held out of training, so the network "
            "adds nothing: the restoration is tricubic interpolation with back-projection, not a learned one.") in text
    assert ("tricubic interpolation with back-projection scored 34.01 dB PSNR and plain tricubic interpolation "
            "32.17 dB") in text and "The checkpoint kept" not in text and "the network with" not in text
    serial = methods_text.methods_text(_enhance(best_step=1, stage_best_steps=[40, 0]), PROVENANCE)
    assert "The checkpoints kept (steps 40 and 0, of its two ×2 stages)" in serial


def test_a_fall_back_output_is_not_said_to_have_the_network_extras():
    text = methods_text.methods_text(_enhance(restored_content="interpolation"), PROVENANCE)
    assert "was restored to 64×256×256 voxels (z, y, x) of 1 × 0.5 × 0.5 µm. On the held-out" in text


def test_an_isotropic_sample_says_the_axial_blur_it_assumed_and_the_isotropy_measured():
    m = {"mode": "isotropic", "factor": 4.0, "input_shape": [16, 96, 96], "output_shape": [64, 96, 96],
         "voxel_size_in": [2.0, 0.5, 0.5], "voxel_size_out": [0.5, 0.5, 0.5], "train_seconds": 21.3,
         "isotropic_degradation": {"method": "gaussian", "sigma_px": 3.75, "sigma_source": "estimated"},
         "self_validation": {"psnr_model": 29.1, "psnr_interp": 27.4}, "isotropy_in": 0.286, "isotropy_out": 0.669,
         "isotropy_interp": 0.61,
         "flags": []}
    prov = {"model": {"device": "cuda", "ran_on": {"device_name": "NVIDIA H100"}, "arch": "iso2d",
                      "n_parameters": 41985}}
    text = methods_text.methods_text(m, prov)
    for said in ("in its isotropic mode, after Self-Net (Ning et al., Light: Science & Applications 12:204, 2023, "
                 "doi:10.1038/s41377-023-01230-2)",
                 "A 2-D residual network (41,985 parameters) was trained on this volume alone for 21.3 s on a GPU "
                 "(NVIDIA H100) to restore its lateral (XY) slices degraded along one axis by a Gaussian blur of "
                 "σ 3.75 lateral pixels (1.875 µm; estimated), subsampled ×4 and brought back by cubic interpolation",
                 "was brought to 64×96×96 voxels (z, y, x) of 0.5 × 0.5 × 0.5 µm",
                 "the network scored 29.10 dB PSNR and z-cubic interpolation 27.40 dB",
                 "read 0.286 for the input and 0.669 for the output, 0.61 for z-cubic interpolation on the same "
                 "grid; on the finer grid the estimate also reads interpolated noise as axial detail"):
        assert said in text, said
    assert "tricubic" not in text and "not a resolution" not in text
    noisy = methods_text.methods_text(m | {"isotropy_interp": 1.255}, prov)
    assert ("1.255 for z-cubic interpolation on the same grid (above 1.25: finer along z than laterally, which "
            "interpolation cannot be; interpolated noise read as detail, not a resolution); on the finer") in noisy


@pytest.mark.parametrize("metrics", [{"mode": "enhance", "status": "failed"}, {"mode": None}, {}])
def test_a_failed_or_unknown_sample_has_no_methods_text(metrics):
    assert methods_text.methods_text(metrics, PROVENANCE) is None


def test_the_report_shows_it_escaped_in_its_own_section():
    import numpy as np

    raw = np.random.default_rng(0).normal(100, 2, (6, 24, 24)).astype(np.float32)
    up = np.repeat(np.repeat(np.repeat(raw, 2, 0), 2, 1), 2, 2)
    m = _enhance(input_shape=[6, 24, 24], output_shape=[12, 48, 48], adopted_from="<b>a&b</b>")
    page = report.render_sample_report(sample="s", metrics=m, raw=raw, interp=up, restored=up,
                                       voxel_size_in=(2.0, 1.0, 1.0), voxel_size_out=(1.0, 0.5, 0.5),
                                       provenance=PROVENANCE)
    assert '<h2 id="methods">Methods text</h2>' in page and '<a href="#methods">' in page
    assert "(sample &lt;b&gt;a&amp;b&lt;/b&gt;)" in page and "<b>a&b</b>" not in page


def test_the_code_cited_is_the_code_that_made_the_output_and_the_model():
    """A report written again by newer code cited that code's commit (a publishing walkthrough)."""
    prov = PROVENANCE | {"git_commit": "5124633840", "git_dirty": False,
                         "restored_code": {"selfres_version": "0.1.0", "git_commit": "df1877bc96aa", "git_dirty": True,
                                           "source_digest": "50e43e81"},
                         "model_code": {"git_commit": "aaaa1111bbbb", "git_dirty": False, "source_digest": "11"}}
    text = methods_text.methods_text(_enhance(), prov)
    assert text.startswith("The volume was restored with selfres 0.1.0 (commit df1877bc96 with local changes, source "
                           "digest 50e43e81; the model trained at commit aaaa1111bb) in its enhance mode")
    assert "5124633840" not in text
    same = PROVENANCE | {"restored_code": {"git_commit": "df1877bc96aa"}, "model_code": {"git_commit": "df1877bc96aa"}}
    assert "(commit df1877bc96) in its" in methods_text.methods_text(_enhance(), same)


def test_how_training_ran_is_said_with_a_time_budget_stop_and_the_target_blur():
    training = {"steps": 200, "steps_done": 83, "stop_reason": "time_budget", "max_minutes": 0.5, "loss": "l1",
                "learning_rate": 0.001, "lr_schedule": "cosine", "warmup_steps": 25, "batch_size": 4,
                "patch_size": [8, 48, 48], "seed": 0, "augment": True, "blur_augment": 1.0,
                "blur_augment_sigma_px": 1.0}
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"training": training}}
    text = methods_text.methods_text(_enhance(), prov)
    assert ("its targets the crops as acquired, each blurred by a random Gaussian (σ up to 1·√(f²−1) voxels along "
            "each axis scaled by f)") in text
    assert ("Training ran 83 of 200 steps (stopped once its time budget of 0.5 min was spent, so a rerun on another "
            "machine or under another load stops elsewhere): an L1 loss, Adam at a learning rate of 0.001 with a "
            "cosine schedule after 25 warm-up steps, batches of 4 patches of 8×48×48 voxels, random flips and "
            "rotations that keep the axes' scales, seed 0.") in text
    done = methods_text.methods_text(_enhance(), PROVENANCE | {"model": PROVENANCE["model"] | {"training": training | {
        "steps_done": 200, "stop_reason": "steps", "blur_augment": 0.0}}})
    assert "Training ran 200 steps: an L1 loss" in done and "rerun" not in done and "blurred by a random" not in done


def test_an_isotropic_model_says_its_noise_top_up_and_its_blended_ends():
    m = {"mode": "isotropic", "factor": 4.0, "input_shape": [16, 96, 96], "output_shape": [64, 96, 96],
         "self_validation": {"psnr_model": 29.1, "psnr_interp": 27.4}, "flags": []}
    training = {"steps": 1000, "steps_done": 30, "stop_reason": "time_budget", "loss": "l1_fft", "fft_weight": 0.3,
                "batch_size": 8, "patch_size": 64, "noise_match": True, "end_blended": True}
    text = methods_text.methods_text(m, {"model": {"arch": "iso2d", "training": training}})
    assert "The degraded slices were given noise to match the acquisition's own." in text
    assert "Training ran 30 of 1000 steps (stopped once its time budget" in text
    assert "an L1 loss with a Fourier-amplitude term (weight 0.3)" in text and "batches of 8 patches of 64×64" in text
    assert "its first and last planes blended with z-cubic interpolation" in text
    assert "checkpoint kept" not in text  # no best step recorded
    kept = methods_text.methods_text(m | {"best_step": 450}, {"model": {"arch": "iso2d", "training": training}})
    assert "The checkpoint kept (step 450) scored best on lateral slices of the volume held out of training." in kept
    # step 0 is the network's starting point (z-cubic), not a trained checkpoint that won (a mutation review)
    start = methods_text.methods_text(m | {"best_step": 0}, {"model": {"arch": "iso2d", "training": training}})
    assert "checkpoint kept" not in start, start
    adopted = methods_text.methods_text(m | {"best_step": 450, "adopted_from": "t0"},
                                        {"model": {"arch": "iso2d", "training": training}})
    assert "scored best on lateral slices of that acquisition held out of training" in adopted, adopted


def test_the_normalisation_is_said_where_provenance_records_it():
    prov = PROVENANCE | {"resolved_config": {"settings": {"normalise": {"low_percentile": 1.0,
                                                                          "high_percentile": 99.8}}}}
    assert ("Intensities were scaled to 0 and 1 at the volume's percentiles 1 and 99.8 for the network" in
            methods_text.methods_text(_enhance(), prov))


def test_the_normalisation_says_the_values_used_and_a_range_where_the_percentiles_coincided():
    """The walkthrough: the text read the configuration's percentiles, also where they coincided
    and normalisation used the volume's minimum and maximum."""
    asked = {"resolved_config": {"settings": {"normalise": {"low_percentile": 1.0, "high_percentile": 99.8}}}}
    used = {"low": 102.0, "high": 3850.5, "low_percentile": 1.0, "high_percentile": 99.8, "basis": "percentiles"}
    text = methods_text.methods_text(_enhance(), PROVENANCE | asked | {"normalisation": used})
    assert "at the volume's percentiles 1 and 99.8 (102 and 3850.5) for the network" in text
    big = used | {"high": 41234.7}  # a 16-bit camera's: no exponent in a paper's text (a review: 4.123e+04)
    assert "(102 and 41234.7)" in methods_text.methods_text(_enhance(), PROVENANCE | {"normalisation": big})
    flat = used | {"low": 0.0, "high": 7.0, "basis": "range"}
    text = methods_text.methods_text(_enhance(), PROVENANCE | asked | {"normalisation": flat})
    assert ("at the volume's minimum and maximum (0 and 7; its percentiles 1 and 99.8 were equal) for the network"
            in text) and "at the volume's percentiles" not in text
    constant = used | {"low": 5.0, "high": 6.0, "basis": "constant"}
    text = methods_text.methods_text(_enhance(), PROVENANCE | asked | {"normalisation": constant})
    assert "The volume is constant (5); it was shifted to 0 for the network" in text and "percentiles" not in text
    # a store written before the basis was recorded: its values, not a source it cannot know
    old = {k: v for k, v in used.items() if k != "basis"} | {"basis": "unrecorded"}  # as NormParams.from_dict gives
    text = methods_text.methods_text(_enhance(), PROVENANCE | asked | {"normalisation": old})
    assert ("Intensities were scaled to 0 and 1 at 102 and 3850.5, as its normalisation recorded them (the "
            "configuration asked for its percentiles 1 and 99.8) for the network") in text
    # ... and where none are known, no percentiles "asked" (None and None; a mutation review)
    bare = {"low": 102.0, "high": 3850.5, "basis": "unrecorded"}
    text = methods_text.methods_text(_enhance(), PROVENANCE | {"normalisation": bare})
    assert "at 102 and 3850.5, as its normalisation recorded them for the network" in text, text
    # the store's percentiles, not the configuration's, where the two differ (the configuration
    # edited after normalise ran; a mutation review: preferring the configuration failed no test)
    other = used | {"low_percentile": 2.0, "high_percentile": 99.5}
    text = methods_text.methods_text(_enhance(), PROVENANCE | asked | {"normalisation": other})
    assert "at the volume's percentiles 2 and 99.5 (102 and 3850.5)" in text and "percentiles 1 and" not in text


def test_a_warm_up_longer_than_the_training_is_said():
    short = {"steps": 200, "steps_done": 12, "stop_reason": "time_budget", "learning_rate": 0.001,
             "warmup_steps": 25, "max_minutes": 0.1}
    text = methods_text._training_words(short, "enhance")
    assert ("Adam at a learning rate of 0.001, to be reached after 25 warm-up steps (more than the 12 run, so the "
            "rate stayed below it)") in text
    assert "after 25 warm-up steps" in methods_text._training_words(short | {"steps_done": 200}, "enhance")
    # the rate's step 24 is the full rate: 25 steps reached it, 24 did not (a mutation review)
    exactly = methods_text._training_words(short | {"steps_done": 25}, "enhance")
    assert "after 25 warm-up steps" in exactly and "stayed below" not in exactly
    assert "more than the 24 run" in methods_text._training_words(short | {"steps_done": 24}, "enhance")
    # a model that recorded no step count (older, or adopted): the warm-up, without a verdict
    assert methods_text._training_words({"learning_rate": 0.001, "warmup_steps": 25}, "enhance") == (
        "Training used Adam at a learning rate of 0.001 after 25 warm-up steps.")


def test_a_serial_models_warm_up_is_judged_stage_by_stage():
    """Each ×2 stage of a serial ×4 model warms up on its own: 16 + 10 steps (26) did not reach
    a 25-step warm-up, which the text said they had (a mutation review)."""
    serial = {"steps": 200, "steps_done": [16, 10], "stop_reason": ["time_budget"] * 2, "learning_rate": 0.001,
              "warmup_steps": 25, "max_minutes": 1}
    text = methods_text._training_words(serial, "enhance")
    assert ("to be reached after 25 warm-up steps in each stage (more than the 16 and 10 run in both stages, so the "
            "rate stayed below it there)") in text, text
    text = methods_text._training_words(serial | {"steps_done": [200, 10]}, "enhance")
    assert "(more than the 10 run in one stage, so the rate stayed below it there)" in text, text
    text = methods_text._training_words(serial | {"steps_done": [200, 200]}, "enhance")
    assert "after 25 warm-up steps in each stage." in text and "stayed below" not in text, text


def test_the_isotropic_output_layers_learning_rate_is_said_where_recorded():
    m = {"mode": "isotropic", "factor": 4.0, "flags": []}
    training = {"learning_rate": 0.001, "tail_lr_scale": 0.1, "steps": 10, "steps_done": 10}
    text = methods_text.methods_text(m, {"model": {"arch": "iso2d", "training": training}})
    assert "Adam at a learning rate of 0.001 (0.1× that for the output layer)" in text
    text = methods_text.methods_text(m, {"model": {"arch": "iso2d", "training": training | {"tail_lr_scale": 1}}})
    assert "Adam at a learning rate of 0.001" in text and "output layer" not in text


def test_both_methods_are_cited_with_their_doi():
    assert methods_text.METHOD_CITATIONS["enhance"][1].endswith("doi:10.1364/PRJ.469231")
    assert methods_text.METHOD_CITATIONS["isotropic"][1].endswith("12:204, 2023, doi:10.1038/s41377-023-01230-2")


def test_a_time_point_of_the_same_acquisition_is_named_so_and_its_kept_output_explained():
    """A re-check of the time-lapse walkthrough: 'another acquisition (sample shared_t0)' for the
    same file's time point 0, and nothing on why a time point under the margin kept the network."""
    trainer = {"sample": "shared_t0", "train_seconds": 37.5,
               "acquisition": {"source_checksum": "abc", "series": None, "channel": 1, "timepoint": 0}}
    prov = PROVENANCE | {"input_checksum": "abc", "input_part": {"channel": 1, "timepoint": 2},
                         "model": PROVENANCE["model"] | {"adopted_from": trainer}}
    m = _enhance(adopted_from="shared_t0", flags=["below_margin_kept_for_series"])
    text = methods_text.methods_text(m, prov)
    assert "on crops of time point 0 of the same acquisition (sample shared_t0) alone" in text
    assert ("That gain is under the margin the guard asks of a network (0.2 dB), but above 0: the network's output "
            "was kept, as for the time point that trained the model") in text
    other = prov | {"input_part": {"channel": 0, "timepoint": 2}}  # another channel: another series
    assert "another acquisition (sample shared_t0)" in methods_text.methods_text(m, other)


def test_an_adopted_samples_verdict_says_whose_noise_the_training_inputs_had():
    import numpy as np

    raw = np.random.default_rng(0).normal(100, 2, (6, 24, 24)).astype(np.float32)
    up = np.repeat(np.repeat(np.repeat(raw, 2, 0), 2, 1), 2, 2)
    m = _enhance(input_shape=[6, 24, 24], output_shape=[12, 48, 48], adopted_from="shared_t0")
    page = report.render_sample_report(sample="s", metrics=m, raw=raw, interp=up, restored=up,
                                       voxel_size_in=(2.0, 1.0, 1.0), voxel_size_out=(1.0, 0.5, 0.5))
    assert "The held-out input was given this acquisition's own noise (estimated σ 0.018" in page
    assert "the training inputs were given the noise of the acquisition that trained the model." in page
    own = report.render_sample_report(sample="s", metrics=_enhance(input_shape=[6, 24, 24],
                                                                    output_shape=[12, 48, 48]),
                                      raw=raw, interp=up, restored=up, voxel_size_in=(2.0, 1.0, 1.0),
                                      voxel_size_out=(1.0, 0.5, 0.5))
    assert "The training inputs and the held-out input were given the acquisition's own noise" in own


def _training(meta):
    from selfres.pipeline import training_record

    return training_record(meta)


ENHANCE_SETTINGS = {"steps": 200, "loss": "l1", "batch_size": 4, "patch_size": [8, 48, 48], "max_minutes": 3.0,
                    "learning_rate": 0.001, "lr_schedule": "cosine", "warmup_steps": 25, "seed": 0, "augment": True,
                    "blur_augment": 1.0, "blur_augment_sigma_px": 1.0}


def test_the_training_record_is_what_ran_not_what_was_asked():
    """A review: a serial ×4 model's summed steps ('400 of 200'), an early stop left unsaid, a random
    target blur claimed where the PSF was given (none is applied), the patch asked for where the
    training FOV clipped it, noise 'matched' where none was added, ends 'blended' at weight 1."""
    serial = _training({"mode": "enhance", "settings": ENHANCE_SETTINGS, "steps_done": 26,
                        "stop_reason": "time_budget+time_budget", "patch": [4, 16, 16],
                        "serial": {"stage_steps_done": [16, 10], "stage_stop_reasons": ["time_budget", "time_budget"]}})
    text = methods_text._training_words(serial, "enhance")
    assert text.startswith("Training ran 16 and 10 of 200 steps in its two ×2 stages (stopped once its time budget "
                           "was spent (3 min, half to each stage), so a rerun"), text
    assert "patches of 4×16×16 voxels" in text
    early = _training({"mode": "enhance", "settings": ENHANCE_SETTINGS, "steps_done": 20, "stop_reason": "early_stop"})
    assert "Training ran 20 of 200 steps (stopped early, no longer improving)" in methods_text._training_words(early,
                                                                                                       "enhance")
    psf = _training({"mode": "enhance", "settings": ENHANCE_SETTINGS | {"psf_sigma_um": [0.5, 0.12, 0.12]}})
    assert "blur_augment" not in psf and "blur_augment" in _training({"mode": "enhance", "settings": ENHANCE_SETTINGS})
    iso = {"mode": "isotropic", "settings": {"seed": 0}, "isotropic": {"steps": 1000, "noise_match": True,
                                                                       "patch_size": 64},
           "degradation": {"noise_variance": [0.0, 0.0]}, "end_weights": [1.0, 1.0], "patch": [40, 40]}
    record = _training(iso)
    assert "noise_match" not in record and "end_blended" not in record and record["patch_size"] == [40, 40]
    lived = _training(iso | {"degradation": {"noise_variance": [0.0, 2e-5]}, "end_weights": [0.99, 1.0]})
    assert lived["noise_match"] and lived["end_blended"]
    assert _training(iso | {"tail_lr_scale": 0.1})["tail_lr_scale"] == 0.1  # isotropic's own output-layer rate
    assert "tail_lr_scale" not in _training({"mode": "enhance", "settings": ENHANCE_SETTINGS, "tail_lr_scale": 0.1})


def test_each_training_degradation_is_named_as_it_is_computed():
    """``gaussian`` and ``psf`` blur then take the block mean (``degrade.degrade``): the methods text
    says block-averaged, as for ``block``, not subsampled (which would be a different, aliasing
    acquisition model)."""
    words = methods_text._degradation_words
    assert words({"method": "block"}, "1,2,2") == "block-averaged ×1,2,2 (as pixel binning does)"
    assert words({"method": "psf"}, "2,2,2") == "blurred by the measured PSF given and block-averaged ×2,2,2"
    assert words({"method": "gaussian"}, "2,2,2") == ("blurred by a Gaussian from the optics given and "
                                                      "block-averaged ×2,2,2")
    assert words({}, "2,2,2").startswith("downscaled ×2,2,2 with an antialiased cubic kernel")
    assert all("subsampled" not in words({"method": m}, "2,2,2") for m in ("block", "psf", "gaussian", "cubic"))


# --- a mutation review of methods_text (the figures and words a paper's methods section takes) ---

@pytest.mark.parametrize("loss, words", [
    ("l1", "an L1 loss"), ("l2", "a mean squared error loss"), ("mse", "a mean squared error loss"),
    ("charbonnier", "a Charbonnier loss"), ("l1_ssim", "an L1 + SSIM loss"),
    ("l1_fft", "an L1 loss with a Fourier-amplitude term"), ("huber", "the huber loss")])
def test_each_training_loss_is_named_as_it_is(loss, words):
    """The loss is part of the method a paper reports: a Charbonnier or MSE model called an
    "L1 loss" misreports it (a mutation review: only l1 and l1_fft were checked)."""
    text = methods_text._training_words({"loss": loss}, "enhance")
    assert text == f"Training used {words}.", text


def test_a_fourier_weight_is_said_only_for_the_loss_that_has_the_term():
    """``fft_weight`` is recorded whatever the loss; only ``l1_fft`` uses it. An L1 model said
    to have "(weight 0.3)" reads as a weighted loss it did not have."""
    assert methods_text._training_words({"loss": "l1", "fft_weight": 0.3}, "enhance") == "Training used an L1 loss."
    assert "(weight 0.3)" in methods_text._training_words({"loss": "l1_fft", "fft_weight": 0.3}, "enhance")


def test_a_constant_learning_rate_schedule_is_not_called_a_schedule():
    text = methods_text._training_words({"learning_rate": 0.001, "lr_schedule": "constant"}, "enhance")
    assert text == "Training used Adam at a learning rate of 0.001.", text
    assert "with a cosine schedule" in methods_text._training_words({"learning_rate": 0.001, "lr_schedule": "cosine"},
                                                                    "enhance")


def test_a_serial_model_whose_second_stage_stopped_short_says_of_how_many():
    """16 and 200 of 200: one stage short of its steps is not a training that ran them all
    (a mutation review: "all" as "any" failed no test)."""
    serial = {"steps": 200, "steps_done": [200, 16], "stop_reason": ["steps", "early_stop"]}
    text = methods_text._training_words(serial, "enhance")
    assert text.startswith("Training ran 200 and 16 of 200 steps in its two ×2 stages (stopped early"), text
    whole = methods_text._training_words(serial | {"steps_done": [200, 200], "stop_reason": ["steps"] * 2}, "enhance")
    assert whole == "Training ran 200 and 200 steps in its two ×2 stages.", whole


def test_a_diverged_training_says_so():
    """A loss that diverged stops training early; the paragraph must not read as a clean run."""
    text = methods_text._training_words({"steps": 200, "steps_done": 40, "stop_reason": "diverged"}, "enhance")
    assert text == "Training ran 40 of 200 steps (stopped when its loss diverged).", text


def test_a_voxel_size_is_said_to_four_decimals():
    """A 0.1625 µm camera pixel (a 40× objective on a 6.5 µm sensor) is reported as recorded, not
    rounded to 0.163 (a mutation review: the voxel sizes checked were all round)."""
    m = _enhance(voxel_size_in=[0.65, 0.1625, 0.1625], voxel_size_out=[0.325, 0.08125, 0.08125])
    text = methods_text.methods_text(m, PROVENANCE)
    assert "32×128×128 voxels (z, y, x) of 0.65 × 0.1625 × 0.1625 µm" in text, text


def test_a_gpu_recorded_with_its_index_is_said_to_be_a_gpu():
    """A model's device is recorded as ``str(torch.device)``, "cuda:0" on a machine with a
    chosen GPU: the text said nothing of the GPU it ran on (a mutation review)."""
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"device": "cuda:0",
                                                         "ran_on": {"device": "cuda:0", "device_name": "NVIDIA H100"}}}
    assert "for 11.4 s on a GPU (NVIDIA H100): its inputs" in methods_text.methods_text(_enhance(), prov)


def test_an_adopted_model_without_its_trainers_machine_names_no_machine():
    """An adopted model's training ran on the trainer's machine: where that is not recorded, the
    adopting sample's own device is not said in its place."""
    trainer = {"sample": "lapse_t0", "train_seconds": 95.0}
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"adopted_from": trainer}}
    text = methods_text.methods_text(_enhance(adopted_from="lapse_t0"), prov)
    assert "alone for 1.58 min: its inputs" in text, text
    assert "CPU" not in text and "AMD EPYC" not in text


def test_noise_is_said_added_only_where_some_was():
    """``noise_model: match`` on a noiseless acquisition (every σ estimated 0) adds none: the
    text must not claim noise was added to the training inputs."""
    text = methods_text.methods_text(_enhance(noise_sigma_at={"0.1": 0.0, "0.5": 0.0}), PROVENANCE)
    assert "noise added" not in text
    assert "noise added" in methods_text.methods_text(_enhance(noise_sigma_at={"0.1": 0.0, "0.5": 0.01}), PROVENANCE)


def test_a_share_of_blurred_targets_is_said_as_a_percentage():
    training = {"blur_augment": 0.5, "blur_augment_sigma_px": 1.0}
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"training": training}}
    text = methods_text.methods_text(_enhance(), prov)
    assert "its targets the crops as acquired, 50% of them blurred by a random Gaussian" in text, text


ISO = {"mode": "isotropic", "factor": 4.0, "input_shape": [16, 96, 96], "output_shape": [64, 96, 96],
       "self_validation": {"psnr_model": 29.1, "psnr_interp": 27.4}, "flags": []}


def test_an_isotropic_adopted_samples_held_out_slices_are_its_own():
    """An adopted isotropic model is scored on slices of the adopting volume, its own samples on
    their own: "of this volume" is said where it tells them apart, and only there."""
    own = methods_text.methods_text(ISO, {"model": {"arch": "iso2d"}})
    assert "On held-out lateral slices degraded the same way, the network scored 29.10 dB" in own, own
    adopted = methods_text.methods_text(ISO | {"adopted_from": "t0"}, {"model": {"arch": "iso2d"}})
    assert "On held-out lateral slices of this volume degraded the same way, the network scored" in adopted, adopted


def test_an_isotropic_fall_back_is_not_said_to_have_blended_ends():
    """The blended first and last planes are the network's output's: an output that fell back
    to z-cubic interpolation has none (as an enhance fall-back is not said to have its extras)."""
    prov = {"model": {"arch": "iso2d", "training": {"end_blended": True}}}
    text = methods_text.methods_text(ISO | {"restored_content": "interpolation"}, prov)
    assert "was brought to 64×96×96 voxels (z, y, x). " in text and "blended" not in text, text
    assert "its first and last planes blended" in methods_text.methods_text(ISO, prov)


def test_a_single_plane_is_described_as_a_2d_network_on_pixels_without_a_z_size():
    """A walkthrough's 2-D image (enhance 1,2,2) read "A 3-D residual network" and "1×130×133 voxels
    (z, y, x) of 0.5119 × 0.5119 × 0.5119 µm": the network was 2-D, and the z size of a single plane
    (its file's stand-in, the lateral pixel) is no measurement."""
    plane = _enhance(input_shape=[1, 130, 133], output_shape=[1, 260, 266], voxel_size_in=[0.5119, 0.5119, 0.5119],
                     voxel_size_out=[0.5119, 0.25595, 0.25595])
    text = methods_text.methods_text(plane, PROVENANCE)
    assert "A 2-D residual network (35,569 parameters) was trained" in text and "3-D" not in text
    assert ("The whole field of view, 130×133 pixels (y, x) of 0.5119 × 0.5119 µm, was restored to 260×266 pixels "
            "(y, x) of 0.256 × 0.256 µm") in text, text
    assert "voxels (z, y, x)" not in text


def test_the_training_time_is_the_loops_not_the_jobs_with_its_guard():
    """model.json's ``fit_seconds`` (the training loop) is what "trained for" says; a job's
    ``train_seconds`` also holds the guard's re-scoring (a walkthrough: a ×4 job of 67 s, 2 s of it
    training). A model without the figure (written before it) keeps the job's."""
    prov = PROVENANCE | {"model": PROVENANCE["model"] | {"fit_seconds": 2.0}}
    text = methods_text.methods_text(_enhance(train_seconds=67.0), prov)
    assert "on crops of this volume alone for 2 s on CPU" in text and "1.1 min" not in text
    assert "alone for 11.4 s on CPU" in methods_text.methods_text(_enhance(), PROVENANCE)
    trainer = {"sample": "lapse_t0", "train_seconds": 95.0, "fit_seconds": 30.0}
    adopted = PROVENANCE | {"model": PROVENANCE["model"] | {"adopted_from": trainer}}
    assert "(sample lapse_t0) alone for 30 s" in methods_text.methods_text(_enhance(adopted_from="lapse_t0"), adopted)


def test_the_channel_and_time_point_of_the_file_are_named():
    """A ``_c1`` sample's paragraph says which channel of the acquisition it restored (a walkthrough)."""
    part = {"channel": 1, "channel_name": "GFP", "timepoint": 3}
    text = methods_text.methods_text(_enhance(), PROVENANCE | {"input_part": part})
    assert text.startswith('The volume (channel 1, "GFP", time point 3 of the acquisition, indices from 0) was '
                           "restored with")
    assert methods_text.methods_text(_enhance(), PROVENANCE | {"input_part": {"series": 2}}).startswith(
        "The volume (image 2 of the acquisition, indices from 0) was restored")
    only = PROVENANCE | {"input_part": {"channel_name": "DAPI"}}  # a file's only channel: nothing to tell apart
    assert methods_text.methods_text(_enhance(), only).startswith("The volume was restored with")
