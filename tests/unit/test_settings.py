"""Settings: one source of defaults, strict parsing, schema agreement."""

from __future__ import annotations

import dataclasses
import re
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from selfres.errors import ConfigError
from selfres.settings import Settings, from_dict, parse_settings, parse_voxel_size, to_dict

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _schema_defaults(props: dict) -> dict:
    out = {}
    for key, spec in props.items():
        if spec.get("type") == "object" and "properties" in spec:
            out[key] = _schema_defaults(spec["properties"])
        else:
            out[key] = spec.get("default")
    return out


def test_schema_defaults_equal_package_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["properties"]
    from_schema = {k: _schema_defaults(props[k]["properties"]) for k in ("normalise", "fov", "train", "infer", "qc", "isotropic")}
    assert from_schema == to_dict(Settings())
    from selfres.settings import DEFAULT_SCALE

    assert props["scale"]["default"] == ",".join(map(str, DEFAULT_SCALE))


def test_every_schema_key_has_a_description_and_default():
    schema = yaml.safe_load(SCHEMA.read_text())

    def walk(props, where):
        for key, spec in props.items():
            assert "description" in spec or spec.get("type") == "object", f"{where}.{key} lacks a description"
            assert "default" in spec, f"{where}.{key} lacks a default"
            if "properties" in spec:
                assert spec.get("additionalProperties") is False, f"{where}.{key} accepts unknown keys"
                walk(spec["properties"], f"{where}.{key}")

    walk(schema["properties"], "config")


def _schema_bound_breaches():
    """``(key, value)`` for each stage setting and each bound the config schema gives it: a value
    just outside it (a triple: that value on every axis)."""
    schema = yaml.safe_load(SCHEMA.read_text())

    def leaves(spec, path):
        for key, sub in spec.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                yield from leaves(sub, (*path, key))
            else:
                yield (*path, key), sub

    out = []
    for section in ("normalise", "fov", "train", "infer", "qc", "isotropic"):
        for path, spec in leaves(schema["properties"][section], (section,)):
            types = spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")]
            triple = "array" in types
            step = 1 if "integer" in types or (spec.get("items") or {}).get("type") == "integer" else 0.5
            bounds = spec.get("items", {}) if triple else spec
            values = ([bounds["minimum"] - step] if "minimum" in bounds else []) + \
                     ([bounds["exclusiveMinimum"]] if "exclusiveMinimum" in bounds else []) + \
                     ([bounds["maximum"] + step] if "maximum" in bounds else [])
            out += [(".".join(path), [v] * spec.get("minItems", 3) if triple else v) for v in values]
    return out


@pytest.mark.parametrize("key, value", _schema_bound_breaches())
def test_a_value_outside_the_config_schema_s_bounds_is_refused_by_the_settings_too(key, value):
    """`selfres restore --settings` (and each stage command) is not checked against the schema: a
    learning rate of -0.001 reached torch's optimiser and failed as 'This is a bug'; a time budget of
    0 minutes stopped training after one step (best step 0: tricubic), logged as info only."""
    *sections, name = key.split(".")
    data = {name: value}
    for section in reversed(sections):
        data = {section: data}
    with pytest.raises(ConfigError, match=re.escape(name)):  # (normalise names both percentiles at once)
        from_dict(Settings, data)


@pytest.mark.parametrize(
    "data, match",
    [
        # a sheet's per-sample column is read here: its typo gets the config's "did you mean" too
        ({"train": {"stepz": 3}}, r"train: unknown key\(s\) stepz \(did you mean 'steps' for 'stepz'\?\); "
                                  r"allowed: .*steps"),
        ({"train": {"loss": "huber"}}, r"train.loss: 'huber' is not allowed; choose one of 'mse'"),
        ({"train": {"steps": 0}}, r"train.steps must be >= 1"),
        ({"train": {"steps": 2.5}}, r"train.steps: expected an integer"),
        ({"train": {"augment": "yes"}}, r"train.augment: expected true or false"),
        ({"train": {"patch_size": [8, 8]}}, r"train.patch_size: expected 3 values"),
        ({"infer": {"ngff_version": "0.3"}}, r"infer.ngff_version: '0.3' is not allowed"),
        ({"fov": {"holdout_fraction": 0.9}}, r"fov.holdout_fraction must be within"),
        ({"train": {"degradation": {"method": "psf"}}}, r"needs train.degradation.psf_path"),
        ({"train": {"degradation": {"method": "gaussian"}}}, r"needs train.degradation.sigma_um"),
        ({"normalise": {"low_percentile": 99, "high_percentile": 1}}, r"low_percentile < high_percentile"),
        ({"normalise": {"low_percentile": 50, "high_percentile": 50}}, r"low_percentile < high_percentile"),
        ({"infer": {"ngff_version": "0.5", "chunks": [8, 8, 8], "shards": [12, 12, 12]}},
         r"must be a multiple of infer.chunks"),
        ({"bogus": {}}, r"unknown key\(s\) bogus"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Settings, data)


def test_partial_settings_fill_defaults_and_round_trip():
    s = parse_settings('{"train": {"steps": 7, "patch_size": [4, 16, 16]}, "infer": {"tile_size": "8,32,32"}}')
    assert s.train.steps == 7 and s.train.patch_size == (4, 16, 16)
    assert s.infer.tile_size == (8, 32, 32)
    assert s.train.loss == Settings().train.loss
    assert from_dict(Settings, to_dict(s)) == s


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_settings("{train: 1")


@pytest.mark.parametrize("text", ["null", "[1]", '"train"', "3"])
def test_settings_that_are_json_but_not_an_object_are_a_config_error(text):
    """``--settings null`` and ``[1]`` failed with a TypeError traceback; ``"train"`` was read
    as the unknown keys t, r, a, i, n."""
    with pytest.raises(ConfigError, match=r"--settings must be a JSON object of sections.*; got " + re.escape(text)):
        parse_settings(text)


@pytest.mark.parametrize("text", ["1e308,1,1", "2,0.5,1e-9", "2e4,1,1"])
def test_a_voxel_size_outside_a_picometre_to_a_centimetre_is_refused(text):
    """1e308 µm passed, trained for minutes, then crashed the report (scale bars overflowed)."""
    with pytest.raises(ConfigError, match=r"sample 'a': column 'voxel_size': .*must be within 1e-06..10000 µm"):
        parse_voxel_size(text, name="column 'voxel_size':", sample="a")
    assert parse_voxel_size("10000,1e-6,0.1", name="x") == (1e4, 1e-6, 0.1)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().train.steps = 3  # type: ignore[misc]


def test_psf_sigma_command_prints_the_optics_sigma_in_um_ready_for_the_sheet(capsys):
    """`selfres psf-sigma` gives σ z,y,x in µm (Zhang et al. widefield, 3-D paraxial: √2/(k NA), 2√6 n/(k NA²), k = 2π/λ),
    parsable as train.psf_sigma_um; impossible optics are one clear error."""
    from selfres.cli import main
    from selfres.settings import parse_settings

    assert main(["psf-sigma", "--na", "1.0", "--wavelength-um", "0.5", "--refractive-index", "1.33"]) == 0
    text = capsys.readouterr().out.strip()
    z, y, x = (float(v) for v in text.split(","))
    k = 2 * math.pi / 0.5
    assert (y, x) == (pytest.approx(math.sqrt(2) / (k * 1.0), rel=1e-3),) * 2
    assert z == pytest.approx(2 * math.sqrt(6) * 1.33 / (k * 1.0**2), rel=1e-3)
    assert parse_settings({"train": {"psf_sigma_um": text}}).train.psf_sigma_um == (z, y, x)
    assert main(["psf-sigma", "--na", "1.6", "--wavelength-um", "0.5", "--refractive-index", "1.518"]) == 2
    assert "na (1.6) must be smaller" in capsys.readouterr().err
    assert main(["psf-sigma", "--na", "1.0"]) == 2
    assert "--na needs --wavelength-um" in capsys.readouterr().err


def test_psf_sigma_command_measures_a_bead_stack(tmp_path, capsys):
    """`selfres psf-sigma --beads FILE` measures σ on the beads (the voxel box removed) and
    prints it ready for the sheet; a file without a voxel size is one error naming it."""
    import tifffile

    from selfres.cli import main
    from selfres.demo import make_beads
    from selfres.settings import parse_settings

    beads = make_beads(shape=(40, 96, 96), n_beads=20, sigma_px=(2.5, 1.5, 1.5), seed=1)
    path = tmp_path / "beads.tif"
    tifffile.imwrite(path, beads, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZYX", "spacing": 0.4, "unit": "micron"})
    assert main(["psf-sigma", "--beads", str(path)]) == 0
    out = capsys.readouterr()
    z, y, x = (float(v) for v in out.out.strip().split(","))
    assert "beads; image FWHM" in out.err
    assert z == pytest.approx(2.5 * 0.4, rel=0.05)  # z: focus steps, no pixel box
    assert y == x == pytest.approx(((1.5 * 0.1) ** 2 - 0.1**2 / 12) ** 0.5, rel=0.05)
    assert parse_settings({"train": {"psf_sigma_um": out.out.strip()}}).train.psf_sigma_um == (z, y, x)
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, beads)
    assert main(["psf-sigma", "--beads", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "bare.tif" in err and "--voxel-size" in err
    assert main(["psf-sigma", "--beads", str(bare), "--voxel-size", "0.4,0.1,0.1"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"{z:.4g},{y:.4g},{x:.4g}" and "warning" not in out.err
    # read lazily (a bead stack larger than memory): a NaN is still one error naming the file
    holed = beads.astype(np.float32)
    holed[20, 50, 50] = np.nan
    tifffile.imwrite(tmp_path / "holed.tif", holed)
    assert main(["psf-sigma", "--beads", str(tmp_path / "holed.tif"), "--voxel-size", "0.4,0.1,0.1"]) == 2
    err = capsys.readouterr().err
    assert "holed.tif" in err and "1 non-finite voxels" in err
    # spots of two widths are not a PSF: the σ comes with a warning
    mixed = beads + make_beads(shape=(40, 96, 96), n_beads=20, sigma_px=(5.0, 3.0, 3.0), seed=2)
    tifffile.imwrite(bare, mixed)
    assert main(["psf-sigma", "--beads", str(bare), "--voxel-size", "0.4,0.1,0.1"]) == 0
    assert "warning: the spots differ in width" in capsys.readouterr().err


@pytest.mark.parametrize("config, expected", [
    ({"results_dir": "x"}, "unknown key 'results_dir' (did you mean 'results'?)"),
    ({"train": {"stepz": 3}}, "unknown key 'train.stepz' (did you mean 'train.steps'?); allowed in train: "),
    ({"train": {"loss": "l3"}}, "train.loss: 'l3' is not allowed; allowed values: 'mse', "),
    ({"infer": {"tile_size": "big"}}, "infer.tile_size: 'big' is not of type"),
    # a list where text goes, text where a list goes, a section with every key commented out: how to write it
    ({"scale": [1, 2, 2]}, "scale: [1, 2, 2] is not of type 'string' (write it like \"2,2,2\")"),
    ({"infer": {"tile_size": "32,128,128"}}, "infer.tile_size: '32,128,128' is not of type 'array' (write it like "
                                             "[32, 128, 128])"),
    ({"train": {"psf_sigma_um": "2,0.5,0.5"}}, "(write it as a list in brackets of 3 values, e.g. [a, b, c])"),
    ({"infer": None}, "infer: empty (every key under it commented out?): delete the line, or indent a key under it"),
    ({"train": {"psf_sigma_um": [2, 0.5]}}, "train.psf_sigma_um: [2, 0.5] is too short (give 3 values, z,y,x)"),
    # YAML's .nan passes every jsonschema bound (nan compares false): a nan guard margin flagged every model
    ({"train": {"guard_margin_db": float("nan")}}, "train.guard_margin_db: expected a finite number, got nan"),
    ({"inbox_settle_seconds": float("inf")}, "inbox_settle_seconds: expected a finite number, got inf"),
])
def test_a_config_mistake_is_one_short_line_naming_the_key(config, expected):
    """Snakemake's own validation prints the whole schema (>1000 lines) for one typo."""
    from selfres.sheet import check_config

    with pytest.raises(ConfigError) as err:
        check_config(config, schema=SCHEMA)
    assert expected in str(err.value)
    assert len(str(err.value)) < 600 and "\n" not in str(err.value)
    check_config({"train": {"steps": 3}, "results": "r"}, schema=SCHEMA)  # a valid config passes


@pytest.mark.parametrize("config, expected", [
    ({"train": {"guard_confidence": 0.3}}, "train.guard_confidence must be 0 (off), or at least 0.5 and below 1"),
    ({"train": {"degradation": {"method": "psf"}}}, "train.degradation.method 'psf' needs train.degradation.psf_path"),
    ({"infer": {"shards": [16, 256, 256]}}, "shards"),
    ({"normalise": {"low_percentile": 99.9, "high_percentile": 99.8}}, "low_percentile < high_percentile"),
])
def test_a_config_value_that_breaks_a_rule_between_values_stops_the_run_before_any_job(tmp_path, config, expected):
    """The schema allows each value alone; the rule between values failed every sample's job.
    Judged per sheet row, merged into the config, when the sheet is read — and named as the
    config's mistake when the row adds nothing to it; a row's own value is the row's."""
    from selfres.sheet import inbox_table, read_sample_sheet

    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tpath\na\ta.tif\n")
    with pytest.raises(ConfigError, match=r"^config: ") as err:
        read_sample_sheet(sheet, schema=SCHEMA.with_name("samples.schema.yaml"), config_settings=config)
    assert expected in str(err.value)
    with pytest.raises(ConfigError, match=r"^config: "):  # a night with an empty sheet and inbox too
        inbox_table([], {}, schema=SCHEMA.with_name("samples.schema.yaml"), config_settings=config)
    sheet.write_text("sample\tpath\ttrain.guard_confidence\na\ta.tif\t0.3\n")
    with pytest.raises(ConfigError, match=r"line 2: sample 'a': train.guard_confidence must be 0"):
        read_sample_sheet(sheet, schema=SCHEMA.with_name("samples.schema.yaml"), config_settings={})


def test_a_sheet_column_may_give_the_value_a_config_rule_needs(tmp_path):
    """method psf in the config, each sample's PSF file in its row: valid (the config alone is not)."""
    from selfres.sheet import check_config, read_sample_sheet

    config = {"train": {"degradation": {"method": "psf"}}}
    check_config(config, schema=SCHEMA)
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tpath\ttrain.degradation.psf_path\na\ta.tif\tpsf_a.tif\n")
    assert read_sample_sheet(sheet, schema=SCHEMA.with_name("samples.schema.yaml"),
                             config_settings=config)["sample"].tolist() == ["a"]


def test_a_sheet_override_is_judged_with_the_config_values_it_needs(tmp_path):
    """infer.shards in a row is valid beside the config's NGFF 0.5 and chunks, not alone."""
    from selfres.sheet import read_sample_sheet

    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tpath\tinfer.shards\na\ta.tif\t16,256,256\n")
    schema = SCHEMA.with_name("samples.schema.yaml")
    with pytest.raises(ConfigError, match=r"line 2: sample 'a': .*shards"):
        read_sample_sheet(sheet, schema=schema, config_settings={"infer": {"ngff_version": "0.4"}})
    ok = {"infer": {"ngff_version": "0.5", "chunks": [16, 128, 128]}}
    assert read_sample_sheet(sheet, schema=schema, config_settings=ok)["sample"].tolist() == ["a"]


def test_a_sheet_cell_that_reads_as_a_number_may_name_a_text_choice(tmp_path):
    """A sheet cell 0.5 is read as YAML (a number); infer.ngff_version's choices are text."""
    from selfres.sheet import read_sample_sheet

    assert parse_settings({"infer": {"ngff_version": 0.5}}).infer.ngff_version == "0.5"
    assert parse_settings({"infer": {"ngff_version": 0.4}}).infer.ngff_version == "0.4"
    with pytest.raises(ConfigError, match="0.6 is not allowed"):
        parse_settings({"infer": {"ngff_version": 0.6}})
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tpath\tinfer.ngff_version\na\ta.tif\t0.5\n")
    assert read_sample_sheet(sheet)["infer.ngff_version"].tolist() == ["0.5"]


def _all_sections():
    from selfres.settings import Settings, to_dict

    return to_dict(Settings())


@pytest.mark.parametrize("stage, mode, sections, absent", [
    ("normalise", "enhance", {"normalise", "infer"}, ()),
    ("crop", "isotropic", {"fov"}, ()),
    ("qc", "enhance", {"qc"}, ()),
    # enhance training: its train values and the inference values the guard scores with; no isotropic
    ("train", "enhance", {"train", "infer"}, ()),
    # isotropic training: only the train values it reads, its isotropic values but fusion/infer_batch, no infer
    ("train", "isotropic", {"train", "isotropic"}, ("train.steps", "train.loss", "isotropic.fusion",
                                                    "isotropic.infer_batch")),
    ("infer", "enhance", {"infer"}, ()),
    # isotropic inference: no self-ensemble or back-projection, of isotropic only fusion and infer_batch
    ("infer", "isotropic", {"infer", "isotropic"}, ("infer.ensemble", "infer.back_projection_iterations",
                                                    "isotropic.steps")),
])
def test_each_stage_receives_only_what_it_reads(stage, mode, sections, absent):
    """What reruns after a change: a stage's --settings holds exactly the values it reads."""
    from selfres.settings import GUARD_INFER_KEYS, stage_settings

    out = stage_settings(_all_sections(), stage=stage, mode=mode)
    assert set(out) == sections
    for dotted in absent:
        section, key = dotted.split(".")
        assert key not in out[section], dotted
    if stage == "normalise":
        assert out["infer"] == {"ngff_version": "0.4"}
    if (stage, mode) == ("train", "enhance"):
        assert set(out["infer"]) == set(GUARD_INFER_KEYS) and "blocks" not in out["infer"]
    if (stage, mode) == ("infer", "isotropic"):
        assert set(out["isotropic"]) == {"fusion", "infer_batch"} and "tile_size" in out["infer"]


@pytest.mark.parametrize("key, value", [("patience", 3), ("seed", 7), ("learning_rate", 5e-4),
                                        ("validate_every", 10), ("max_minutes", 3.0), ("guard_margin_db", 0.5),
                                        ("warmup_steps", 5)])
def test_every_train_value_isotropic_training_reads_reaches_its_job(key, value):
    """A value isotropic training reads and its train job did not receive is silently the
    default there, and changing it retrains nothing (a mutation review: train.patience)."""
    from selfres.settings import stage_settings

    sections = _all_sections()
    assert sections["train"][key] != value
    before = stage_settings(sections, stage="train", mode="isotropic")
    after = stage_settings(_with(sections, **{f"train__{key}": value}), stage="train", mode="isotropic")
    assert after["train"][key] == value and after != before


def test_isotropic_training_reads_the_psf_sigma_only_where_nothing_else_gives_the_axial_sigma():
    """train.psf_sigma_um gives isotropic mode its axial σ unless train.degradation's PSF or
    isotropic.axial_sigma_px does; a sheet without it gives the text it gave before it was read."""
    from selfres.settings import ISOTROPIC_TRAIN_KEYS, stage_settings

    sections = _all_sections()
    assert set(stage_settings(sections, stage="train", mode="isotropic")["train"]) == set(ISOTROPIC_TRAIN_KEYS)
    given = _with(sections, train__psf_sigma_um=[2.0, 0.3, 0.3])
    assert stage_settings(given, stage="train", mode="isotropic")["train"]["psf_sigma_um"] == [2.0, 0.3, 0.3]
    for elsewhere in ({"isotropic__axial_sigma_px": 1.5},
                      {"train__degradation__method": "gaussian", "train__degradation__sigma_um": [1.0, 0.3, 0.3]},
                      {"train__degradation__method": "psf", "train__degradation__psf_path": "beads_psf.tif"}):
        assert "psf_sigma_um" not in stage_settings(_with(given, **elsewhere), stage="train", mode="isotropic")["train"]
    # an adopting sample judges the source's model, with the source's σ: the cell reruns nothing there
    # (the shipped config.yaml has no psf_sigma_um: a sheet cell was kept, a review found)
    shipped = {"train": {k: v for k, v in sections["train"].items() if k != "psf_sigma_um"}}
    assert "psf_sigma_um" not in stage_settings(given, stage="adopt", mode="isotropic",
                                                config_sections=shipped)["train"]


def test_enhance_training_receives_the_precision_its_guard_scores_in():
    """The guard scores what inference writes, in inference's precision: infer.amp is a value
    the enhance train job reads (changing it re-judges the model); isotropic training's is not."""
    from selfres.settings import stage_settings

    sections = _all_sections()
    for mode, reads in (("enhance", True), ("isotropic", False)):
        before = stage_settings(sections, stage="train", mode=mode)
        after = stage_settings(_with(sections, infer__amp=not sections["infer"]["amp"]), stage="train", mode=mode)
        assert (after != before) is reads, mode


def test_a_hand_set_noise_top_up_reaches_training_where_noise_match_reads_it():
    from selfres.settings import stage_settings

    top_up = {"train__degradation__noise_variance": [0.01, 0.001]}
    for noise, reads in (("match", True), ("none", False)):
        base = _with(_shipped_sections(), train__degradation__noise=noise)
        before = stage_settings(base, stage="train", mode="enhance")
        after = stage_settings(_with(base, **top_up), stage="train", mode="enhance")
        assert (after != before) is reads, noise
        if reads:
            assert after["train"]["degradation"]["noise_variance"] == [0.01, 0.001]


def test_only_factors_of_one_two_and_four_with_a_four_read_the_x4_strategy():
    from selfres.settings import reads_x4_strategy

    assert reads_x4_strategy((4, 4, 4)) and reads_x4_strategy((1, 4, 4)) and reads_x4_strategy((4, 2, 1))
    assert not reads_x4_strategy((4, 3, 1)) and not reads_x4_strategy((2, 2, 2)) and not reads_x4_strategy((8, 4, 4))


def test_a_psf_turns_blurred_targets_off_so_their_values_rerun_nothing():
    from selfres.settings import stage_settings

    sections = _all_sections()
    assert "blur_augment" in stage_settings(sections, stage="train", mode="enhance")["train"]
    sections["train"]["psf_sigma_um"] = [2.0, 0.5, 0.5]
    train = stage_settings(sections, stage="train", mode="enhance")["train"]
    assert not [k for k in train if k.startswith("blur_augment")] and train["psf_sigma_um"] == [2.0, 0.5, 0.5]


# ------------------------------------------------ reprocessing: the same value, another spelling


def _shipped_sections():
    """The stage sections of the shipped config/config.yaml as Snakemake validates them
    (schema defaults filled in)."""
    from selfres.settings import settings_sections

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())
    sections = _all_sections()
    for name, values in cfg.items():
        if isinstance(values, dict) and name in sections:
            sections[name].update(values)
    return settings_sections(sections)


STAGES = [("normalise", "enhance"), ("crop", "enhance"), ("train", "enhance"), ("adopt", "enhance"),
          ("infer", "enhance"), ("qc", "enhance"), ("train", "isotropic"), ("adopt", "isotropic"),
          ("infer", "isotropic")]


def test_the_shipped_config_is_already_canonical():
    """An update must not rerun a facility's samples for its own unchanged config: the
    shipped config's values (and every default) are their canonical form, and no value it
    gives is unread, so the parameters' text is what it was before canonical forms."""
    import json

    from selfres.settings import canonical_sections, stage_settings

    sections = _shipped_sections()
    assert json.dumps(canonical_sections(sections)) == json.dumps(sections)
    def given(out, config, where):
        for key, value in out.items():
            if isinstance(value, dict):
                given(value, config[key], f"{where}.{key}")
            else:
                assert value == config[key], f"{where}.{key}"

    for stage, mode in STAGES:  # no value pinned: every stage gets exactly the config's values
        given(stage_settings(sections, stage=stage, mode=mode, config_sections=sections), sections, f"{stage}/{mode}")


def _with(sections, **dotted):
    import copy

    out = copy.deepcopy(sections)
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return out


@pytest.mark.parametrize("a, b", [
    ({"normalise__low_percentile": 1.0}, {"normalise__low_percentile": 1}),
    ({"train__max_minutes": 3}, {"train__max_minutes": 3.0}),  # a sheet cell 3 against 3.0
    ({"train__steps": 50}, {"train__steps": 50.0}),
    ({"train__learning_rate": 0.001}, {"train__learning_rate": "1e-3"}),  # YAML 1.1 reads 1e-3 as text
    ({"train__psf_sigma_um": "2.0,0.5,0.5"}, {"train__psf_sigma_um": "2,0.5, 0.5"}),  # sheet cells
    ({"train__psf_sigma_um": [2.0, 0.5, 0.5]}, {"train__psf_sigma_um": "2,0.5,0.5"}),  # config and sheet
    ({"train__patch_size": [4, 16, 16]}, {"train__patch_size": "4, 16,16"}),
    ({"train__psf_sigma_um": [2.0, 0.5, 0.5]}, {"train__psf_sigma_um": [2, 0.5, 0.5]}),
    ({"infer__tile_size": [8, 32, 32]}, {"infer__tile_size": [8.0, 32, 32]}),
    ({"train__degradation__method": "psf", "train__degradation__psf_path": "extra/psf.tif"},
     {"train__degradation__method": "psf", "train__degradation__psf_path": "./extra//psf.tif"}),
    ({"infer__ngff_version": "0.5"}, {"infer__ngff_version": 0.5}),  # a sheet cell 0.5 is read as a number
])
def test_the_same_value_written_otherwise_gives_every_stage_the_same_settings(a, b):
    import json

    from selfres.settings import stage_settings

    base = _shipped_sections()
    for stage, mode in STAGES:
        left = stage_settings(_with(base, **a), stage=stage, mode=mode, config_sections=base)
        right = stage_settings(_with(base, **b), stage=stage, mode=mode, config_sections=base)
        assert json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True), (stage, mode)


@pytest.mark.parametrize("unread, read", [
    # sigma_um and the optics are read by method gaussian only (the optics when sigma_um is not given)
    ({"train__degradation__sigma_um": [2.0, 0.5, 0.5]}, {"train__degradation__method": "gaussian"}),
    ({"train__degradation__na": 1.2, "train__degradation__wavelength_um": 0.5,
      "train__degradation__refractive_index": 1.33}, {"train__degradation__method": "gaussian"}),
    ({"train__degradation__microscope": "confocal"},
     {"train__degradation__method": "gaussian", "train__degradation__na": 1.2,
      "train__degradation__wavelength_um": 0.5, "train__degradation__refractive_index": 1.33}),
    # the measured PSF by method psf only
    ({"train__degradation__psf_path": "psf.tif"}, {"train__degradation__method": "psf"}),
    # gain and read noise by noise poisson_gaussian only
    ({"train__degradation__gain": 50.0, "train__degradation__read_sigma": 0.01},
     {"train__degradation__noise": "poisson_gaussian"}),
])
@pytest.mark.parametrize("mode", ["enhance", "isotropic"])
def test_a_degradation_value_its_method_or_noise_does_not_read_retrains_nothing(unread, read, mode):
    from selfres.settings import stage_settings

    base = _shipped_sections()
    before = stage_settings(base, stage="train", mode=mode)
    assert stage_settings(_with(base, **unread), stage="train", mode=mode) == before
    noise_only = all(k.endswith(("gain", "read_sigma", "noise")) for k in {**unread, **read})
    if mode == "isotropic" and noise_only:
        return  # isotropic training reads no noise value of train.degradation
    chosen = _with(base, **read)
    assert stage_settings(_with(chosen, **unread), stage="train", mode=mode) != \
        stage_settings(chosen, stage="train", mode=mode)


def test_an_isotropic_sample_given_its_axial_sigma_reads_no_degradation_value():
    """isotropic.axial_sigma_px is the axial σ: train.degradation's method, σ, optics and PSF
    are not read, so changing them neither retrains the sample nor asks for its PSF file."""
    from selfres.settings import psf_file, stage_settings

    base = _with(_shipped_sections(), isotropic__axial_sigma_px=1.5)
    before = stage_settings(base, stage="train", mode="isotropic")
    psf = _with(base, train__degradation__method="psf", train__degradation__psf_path="psf.tif")
    gauss = _with(base, train__degradation__method="gaussian", train__degradation__sigma_um=[2.0, 0.5, 0.5])
    for edited in (psf, gauss):
        assert stage_settings(edited, stage="train", mode="isotropic") == before
    assert psf_file(stage_settings(psf, stage="train", mode="isotropic")) is None
    # without it, the σ comes from the degradation: a change retrains
    unset = _with(gauss, isotropic__axial_sigma_px=None)
    assert stage_settings(unset, stage="train", mode="isotropic") != \
        stage_settings(_with(base, isotropic__axial_sigma_px=None), stage="train", mode="isotropic")


@pytest.mark.parametrize("mode", ["enhance", "isotropic"])
def test_an_adopting_sample_reads_only_the_guard_of_its_train_values(mode):
    """model_from: the model is its source's; adopt judges it with this sample's guard only."""
    from selfres.settings import settings_used_by_mode, stage_settings

    config = _shipped_sections()
    before = stage_settings(config, stage="adopt", mode=mode, config_sections=config)
    row = _with(config, train__steps=7, train__learning_rate=0.0005, train__degradation__method="block",
                train__psf_sigma_um=[1.0, 0.3, 0.3], isotropic__steps=5)
    assert stage_settings(row, stage="adopt", mode=mode, config_sections=config) == before
    assert settings_used_by_mode(row, mode, adopting=True, config_sections=config) == \
        settings_used_by_mode(config, mode, adopting=True, config_sections=config)  # its report's record
    guarded = _with(row, train__guard_margin_db=0.7)
    assert stage_settings(guarded, stage="adopt", mode=mode, config_sections=config)["train"]["guard_margin_db"] == 0.7
    if mode == "enhance":  # the confidence test and the inference extras the guard scores with
        assert stage_settings(_with(row, train__guard_confidence=0.9), stage="adopt", mode=mode,
                              config_sections=config) != before
        assert stage_settings(_with(row, infer__ensemble=True), stage="adopt", mode=mode,
                              config_sections=config) != before


def test_a_voxel_size_is_given_in_one_form():
    from selfres.settings import canonical_triple_text

    assert canonical_triple_text("2,0.5,0.5") == canonical_triple_text("2.0, 0.5,0.50") == "2,0.5,0.5"
    assert canonical_triple_text("0.3,0.1,0.1") == "0.3,0.1,0.1"
    assert canonical_triple_text("2,2,2", kind=int) == canonical_triple_text(" 2, 2,2", kind=int) == "2,2,2"
    assert canonical_triple_text("") == "" and canonical_triple_text(None) == ""
    assert canonical_triple_text(" 2,x,1 ") == "2,x,1"  # its job names the mistake


def test_psf_file_is_the_path_training_reads():
    from selfres.settings import psf_file

    base = _shipped_sections()
    assert psf_file(base) is None
    assert psf_file(_with(base, train__degradation__psf_path="psf.tif")) is None  # method cubic: not read
    assert psf_file(_with(base, train__degradation__method="psf", train__degradation__psf_path="./x/../psf.tif")) \
        == "psf.tif"


def test_execution_values_are_split_off_as_defaults_and_put_back_over_them():
    """How a job runs (tiles or slices per pass, GPU memory share) travels apart from the
    settings that decide its output: those keep the keys, with the defaults' values (the same
    text as before an update); putting the values back gives the settings as given."""
    from selfres.settings import merge_execution, split_execution, without_execution

    given = {"infer": {"batch_size": 4, "gpu_memory_fraction": 0.3, "tile_size": [8, 8, 8]},
             "isotropic": {"fusion": "mean", "infer_batch": 16}, "train": {"steps": 3}}
    decisive, execution = split_execution(given)
    assert decisive == {"infer": {"batch_size": 1, "gpu_memory_fraction": 0.5, "tile_size": [8, 8, 8]},
                        "isotropic": {"fusion": "mean", "infer_batch": 8}, "train": {"steps": 3}}
    assert execution == {"infer": {"batch_size": 4, "gpu_memory_fraction": 0.3}, "isotropic": {"infer_batch": 16}}
    assert merge_execution(decisive, execution) == given
    assert split_execution({"train": {"steps": 3}}) == ({"train": {"steps": 3}}, {})
    assert without_execution(given) == {"infer": {"tile_size": [8, 8, 8]}, "isotropic": {"fusion": "mean"},
                                        "train": {"steps": 3}}
    with pytest.raises(ConfigError, match=r"infer\.tile_size: give it in --settings"):
        merge_execution(decisive, {"infer": {"tile_size": [4, 4, 4]}})


def test_infer_command_puts_execution_values_over_its_settings(monkeypatch, caplog):
    """`selfres infer --execution`: the values reach the stage; a value that changes the output
    is refused there (the workflow would not rerun a job for it)."""
    import logging

    from selfres import cli, pipeline

    caplog.set_level(logging.INFO, logger="selfres")
    seen = {}

    def fake_stage_infer(normalized, model, output, *, settings, isotropic_settings, **kwargs):
        seen.update(settings=settings, isotropic=isotropic_settings)
        return {}

    monkeypatch.setattr(pipeline, "stage_infer", fake_stage_infer)
    argv = ["infer", "n.ome.zarr", "model", "-o", "r.ome.zarr", "--settings",
            '{"infer": {"batch_size": 1, "tile_size": [8, 16, 16]}, "isotropic": {"fusion": "geometric"}}']
    assert cli.main([*argv, "--execution", '{"infer": {"batch_size": 5}, "isotropic": {"infer_batch": 3}}']) == 0
    assert (seen["settings"].batch_size, seen["settings"].tile_size) == (5, (8, 16, 16))
    assert (seen["isotropic"].fusion, seen["isotropic"].infer_batch) == ("geometric", 3)
    assert 'how this job runs (--execution, not recorded in provenance.json): {"infer": {"batch_size": 5}' in caplog.text
    assert cli.main([*argv, "--execution", '{"infer": {"tile_size": [4, 4, 4]}}']) == 2



@pytest.mark.parametrize("mode, stage, unread, read", [
    # the learned degradation's values with the analytic one (the default)
    ("isotropic", "train", {"isotropic__gan_steps": 300, "isotropic__gan_weight": 0.5, "isotropic__cycle_weight": 2.0},
     {"isotropic__degradation": "learned", "isotropic__gan_steps": 300}),
    # fft_weight weighs the l1_fft loss only
    ("isotropic", "train", {"isotropic__loss": "l1", "isotropic__fft_weight": 0.9}, {"isotropic__loss": "l1"}),
    # isotropic inference writes chunks of its own
    ("isotropic", "infer", {"infer__chunks": [3, 3, 3]}, {"infer__fusion": "geometric"}),
    # blurred targets' σ with blurred targets off
    ("enhance", "train", {"train__blur_augment": 0.0, "train__blur_augment_sigma_px": 3.0},
     {"train__blur_augment": 0.0}),
])
def test_a_value_the_samples_choices_leave_unread_reruns_nothing(mode, stage, unread, read):
    """Each changed the job's parameters and so retrained (or re-inferred) a sample that never
    reads it. ``read`` is the same sample's reading choice alone, which does change them."""
    from selfres.settings import stage_settings

    config = _shipped_sections()
    chosen = {k: v for k, v in unread.items() if k in read}  # the choice that leaves the rest unread
    base = stage_settings(_with(config, **chosen), stage=stage, mode=mode)
    assert stage_settings(_with(config, **unread), stage=stage, mode=mode) == base
    if read != chosen:
        assert stage_settings(_with(config, **read), stage=stage, mode=mode) != base


def test_the_x4_strategy_and_the_resnet_shape_are_read_only_where_they_apply():
    """train.x4_strategy retrained samples with no factor of 4, train.width / depth samples
    whose network (the paper's) has a fixed shape."""
    from selfres.settings import stage_settings

    config = _shipped_sections()
    serial = _with(config, train__x4_strategy="serial")
    for scale, read in (((1, 2, 2), False), ((2, 2, 2), False), ((4, 4, 4), True), ((1, 4, 4), True)):
        assert (stage_settings(serial, stage="train", mode="enhance", scale=scale)
                != stage_settings(config, stage="train", mode="enhance", scale=scale)) == read, scale
    paper = _with(config, train__arch="svision_paper")
    assert stage_settings(_with(paper, train__width=32, train__depth=4), stage="train", mode="enhance") == \
        stage_settings(paper, stage="train", mode="enhance")
    assert stage_settings(_with(config, train__width=32), stage="train", mode="enhance") != \
        stage_settings(config, stage="train", mode="enhance")


def test_settings_take_the_dotted_names_of_the_readme_and_the_sheet():
    """``--settings '{"train.steps": 10}'`` (the README's and the sheet's names) was refused as an
    unknown key; nested and dotted keys merge."""
    from selfres.settings import parse_settings

    st = parse_settings('{"train.steps": 10, "train": {"seed": 3}, "train.degradation.method": "block"}')
    assert (st.train.steps, st.train.seed, st.train.degradation.method) == (10, 3, "block")
    deep = parse_settings({"train.degradation.method": "block", "train": {"degradation": {"noise": "none"}}})
    assert (deep.train.degradation.method, deep.train.degradation.noise) == ("block", "none")


def test_the_log_level_is_taken_after_the_command_too_and_in_lower_case():
    from selfres.cli import build_parser

    args = build_parser().parse_args(["restore", "a.tif", "-o", "b.ome.zarr", "--log-level", "warning"])
    assert args.log_level == "WARNING"
    assert build_parser().parse_args(["restore", "a.tif", "-o", "b.ome.zarr"]).log_level == "INFO"


def test_a_train_job_asks_for_its_budgets_half_as_long_again_plus_an_hour():
    from selfres.settings import train_job_minutes

    assert train_job_minutes(parse_settings({}), "enhance") == 66  # 4 min default
    assert train_job_minutes(parse_settings({"train.max_minutes": 300}), "enhance") == 510
    # a fractional budget rounds up, never a minute short: 60 + ceil(3.75), 60 + ceil(0.75)
    assert train_job_minutes(parse_settings({"train.max_minutes": 2.5}), "enhance") == 64
    assert train_job_minutes(parse_settings({"train.max_minutes": 0.5}), "enhance") == 61
    assert train_job_minutes(parse_settings({}), "isotropic") == 66  # analytic: no GAN stage
    learned = parse_settings({"isotropic.degradation": "learned", "isotropic.gan_max_minutes": 10})
    assert train_job_minutes(learned, "isotropic") == 60 + 21
    assert train_job_minutes(learned, "enhance") == 66  # an enhance sample never runs the GAN stage


def test_the_guard_confidence_is_0_or_from_one_half_up_to_but_not_including_1():
    """train.guard_confidence 1 would read the guard's interval off the two most extreme resamples;
    the schema refuses it, and so must the settings themselves (a caller of the Python API).
    Accepting 1 failed no test (a mutation review)."""
    from selfres.settings import TrainSettings

    for fine in (0, 0.5, 0.95, 0.999):
        TrainSettings(guard_confidence=fine).validate()
    for wrong in (1.0, 0.49, -0.1):
        with pytest.raises(ConfigError, match=r"train.guard_confidence must be 0 \(off\), or at least 0.5 and below 1"):
            TrainSettings(guard_confidence=wrong).validate()


# --- from a mutation review of settings.py: what the command line's --scale / --voxel-size /
# --settings take without a schema in front of them ---


@pytest.mark.parametrize("text", ["0,2,2", "1,2,2,2", "2,2"])
def test_a_scale_needs_three_positive_integers(text):
    from selfres.settings import parse_scale

    with pytest.raises(ConfigError, match=r"must be three positive integers z,y,x"):
        parse_scale(text, name="--scale")


@pytest.mark.parametrize("text", ["2,0.5,0.5,0.5", "-2,0.5,0.5"])
def test_a_voxel_size_needs_three_positive_numbers(text):
    from selfres.settings import parse_voxel_size

    with pytest.raises(ConfigError, match=r"must be three positive numbers z,y,x"):
        parse_voxel_size(text, name="--voxel-size")


@pytest.mark.parametrize("patch", [[8, 48, 48, 48], [8, 48]])
def test_a_triple_setting_with_another_number_of_values_is_refused_not_cut(patch):
    """``--settings '{"train": {"patch_size": [8, 48, 48, 48]}}'`` was cut to three values without a word."""
    from selfres.settings import parse_settings

    with pytest.raises(ConfigError, match=r"train\.patch_size: expected 3 values"):
        parse_settings({"train": {"patch_size": patch}})
