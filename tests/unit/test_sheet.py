"""The sample sheet parser (:func:`selfres.sheet.read_sample_sheet`): cells kept as written.

Random and hostile sheets are in ``tests/property/test_readers_fuzz.py``; these are the
cases a facility's sheets actually contain: ``#`` inside a path, trailing tabs from a
spreadsheet export, comment lines.
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

import pytest

from selfres.errors import ConfigError
from selfres.sheet import read_sample_sheet

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "samples.schema.yaml"


def _sheet(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config" / "samples.tsv"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_a_hash_inside_a_cell_is_text_not_a_comment(tmp_path):
    """pandas' ``comment='#'`` cut ``../data/run#3.tif`` to ``../data/run``."""
    p = _sheet(tmp_path, "sample\tpath\treference\n"
                         "a\t../data/run#3.tif\t../data/truth#3.tif\n")
    row = read_sample_sheet(p, schema=SCHEMA).iloc[0]
    assert Path(row["path"]).name == "run#3.tif"
    assert Path(row["reference"]).name == "truth#3.tif"


def test_lines_whose_first_cell_starts_with_a_hash_are_comments(tmp_path):
    p = _sheet(tmp_path, "# facility sheet, night 3\n"
                         "sample\tpath\n"
                         "# b\tb.tif\t(not yet acquired)\n"
                         "a\ta.tif\n"
                         "  #c\tc.tif\n"
                         "\n")
    assert read_sample_sheet(p, schema=SCHEMA)["sample"].tolist() == ["a"]


@pytest.mark.parametrize("encoding, bom", [("utf-8", b""), ("utf-8", codecs.BOM_UTF8),
                                           ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                           ("utf-32-le", codecs.BOM_UTF32_LE)])
def test_a_sheet_in_a_unicode_encoding_with_its_byte_order_mark_reads_as_utf_8_does(tmp_path, encoding, bom):
    """Excel's tab-separated "Unicode Text" is UTF-16 with a byte-order mark and CRLF line ends;
    it was refused as "'utf-8' codec can't decode byte 0xff"."""
    text = "sample\tpath\tmode\r\nm1\tM\u00fcller/a.tif\tenhance\r\nb\tb.tif\r\n"
    p = tmp_path / "samples.tsv"
    p.write_bytes(bom + text.encode(encoding))
    sheet = read_sample_sheet(p, schema=SCHEMA)
    assert sheet["sample"].tolist() == ["m1", "b"]
    assert Path(sheet["path"].iloc[0]).parts[-2:] == ("M\u00fcller", "a.tif")
    assert sheet["mode"].tolist()[0] == "enhance"


def test_utf_16_without_its_byte_order_mark_is_refused_as_such(tmp_path):
    """It decodes as UTF-8 with a NUL after each letter, and was refused only as missing columns."""
    p = tmp_path / "samples.tsv"
    p.write_bytes("sample\tpath\na\ta.tif\n".encode("utf-16-le"))
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 1: holds NUL bytes: .*UTF-16 text without a "
                                          r"byte-order mark"):
        read_sample_sheet(p, schema=SCHEMA)


def test_a_sheet_in_a_code_page_is_refused_naming_the_line_the_byte_and_how_to_save_it(tmp_path):
    """A spreadsheet's "Text (Tab delimited)" is written in the computer's code page (cp1252 for
    Western Europe): the message was only "'utf-8' codec can't decode byte 0xfc in position 27"."""
    p = tmp_path / "samples.tsv"
    p.write_bytes("# night 3\nsample\tpath\na\tM\u00fcller/a.tif\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 3: not UTF-8 text \(byte 0xfc in "
                                          r"\"a\\tM\\xfcller/a\.tif\"\); .*save the sheet as 'Unicode Text' "
                                          r"\(Excel\) or as tab-separated UTF-8"):
        read_sample_sheet(p, schema=SCHEMA)


@pytest.mark.parametrize("sep", [",", ";", " "])
def test_a_sheet_that_is_not_tab_separated_is_named_as_such(tmp_path, sep):
    """A spreadsheet saved as CSV read as one column 'sample,path,mode' and the message only
    said that 'sample' and 'path' were missing."""
    p = _sheet(tmp_path, f"sample{sep}path{sep}mode\na{sep}a.tif{sep}enhance\n")
    with pytest.raises(ConfigError, match=r"missing required column\(s\) sample, path .*the sheet must be "
                                          r"tab-separated, and this header has no tab"):
        read_sample_sheet(p, schema=SCHEMA)


def test_a_row_error_names_the_line_in_the_file_counting_comments(tmp_path):
    p = _sheet(tmp_path, "# comment\nsample\tpath\tmode\na\ta.tif\n# another\nb\tb.tif\tsuperres\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 5: sample 'b': column 'mode'"):
        read_sample_sheet(p, schema=SCHEMA)


@pytest.mark.parametrize("text", [
    "sample\tpath\tmode\na\ta.tif\tenhance\t\n",        # one trailing tab
    "sample\tpath\tmode\na\ta.tif\tenhance\t\t \n",     # several, and a space
    "sample\tpath\tmode\t\na\ta.tif\tenhance\t\n",      # the header too (a spreadsheet export)
    "sample\tpath\tmode\na\ta.tif\tenhance\t\nb\tb.tif\n",  # a trailing tab on the first row only
])
def test_trailing_tabs_are_tolerated_without_shifting_columns(tmp_path, text):
    """Decision: empty fields after the last column carry nothing, so they are dropped.

    pandas took a row with one field more than the header as having an index column:
    every value moved one column left (``path`` became ``enhance``) and the error that
    followed named the wrong thing.
    """
    sheet = read_sample_sheet(_sheet(tmp_path, text), schema=SCHEMA)
    assert list(sheet.columns) == ["sample", "path", "mode"]
    first = sheet.iloc[0]
    assert (first["sample"], Path(first["path"]).name, first["mode"]) == ("a", "a.tif", "enhance")


def test_a_row_with_a_value_beyond_the_header_is_refused_naming_the_line(tmp_path):
    """A non-empty extra field is never dropped or shifted: the line is named."""
    p = _sheet(tmp_path, "sample\tpath\tmode\na\ta.tif\tenhance\nb\tb.tif\tenhance\t2,2,2\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 3: 4 tab-separated fields, but the header has 3 "
                                          r"columns \(sample, path, mode\); field 4 '2,2,2' has no column"):
        read_sample_sheet(p, schema=SCHEMA)


def test_a_column_without_a_name_between_named_ones_is_refused(tmp_path):
    p = _sheet(tmp_path, "sample\t\tpath\na\tx\ta.tif\n")
    with pytest.raises(ConfigError, match=r"duplicate or empty column names column 2 has no name"):
        read_sample_sheet(p, schema=SCHEMA)


def test_short_rows_are_padded_with_empty_cells(tmp_path):
    sheet = read_sample_sheet(_sheet(tmp_path, "sample\tpath\tmode\tscale\na\ta.tif\n"), schema=SCHEMA)
    assert sheet.iloc[0][["mode", "scale"]].tolist() == ["", ""]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_a_sheet_without_a_header_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="is empty; it needs a header line"):
        read_sample_sheet(_sheet(tmp_path, text), schema=SCHEMA)


@pytest.mark.parametrize("text", ["1,1,1", "1, 1 ,1"])
def test_a_scale_of_one_on_every_axis_is_refused_when_the_sheet_is_read(tmp_path, text):
    """enhance with 1,1,1 trained a whole model for the input's own grid (and ended flagged)."""
    p = _sheet(tmp_path, f"sample\tpath\tscale\na\ta.tif\t2,2,2\nb\tb.tif\t{text}\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 3: sample 'b': column 'scale': '1,1,1' "
                                          r"is 1 on every axis: enhance would restore nothing .* e\.g\. 1,2,2"):
        read_sample_sheet(p)  # without the schema too (its pattern allows 1,1,1)
    if text == "1,1,1":
        with pytest.raises(ConfigError, match=r"line 3: sample 'b': column 'scale': '1,1,1' is 1 on every axis"):
            read_sample_sheet(p, schema=SCHEMA)
        # an isotropic row ignores the column
        p.write_text(f"sample\tpath\tmode\tscale\nb\tb.tif\tisotropic\t{text}\n")
        assert read_sample_sheet(p, schema=SCHEMA)["sample"].tolist() == ["b"]


def test_a_scale_written_with_spaces_is_read_as_voxel_size_is(tmp_path):
    """'2, 2, 2' was refused ('is not of the form: integer factors z,y,x') while voxel_size took
    '2, 0.5, 0.5' (a helper's config audit); it is read as 2,2,2, the form the jobs are given."""
    p = _sheet(tmp_path, "sample\tpath\tscale\na\ta.tif\t 1, 2 ,2\n")
    assert read_sample_sheet(p, schema=SCHEMA).loc[0, "scale"] == "1,2,2"


def test_a_config_scale_of_one_on_every_axis_is_refused():
    from selfres.sheet import check_config

    schema = SCHEMA.with_name("config.schema.yaml")
    with pytest.raises(ConfigError, match=r"^config: scale '1,1,1' is 1 on every axis: enhance would restore nothing"):
        check_config({"scale": "1,1,1"}, schema=schema)
    check_config({"scale": "1,2,2"}, schema=schema)
    # a value of the wrong form is described in words, not by the schema's regular expression
    with pytest.raises(ConfigError, match=r"^config: scale: '1.5,2,2' is not of the form: integer factors z,y,x"):
        check_config({"scale": "1.5,2,2"}, schema=schema)


@pytest.mark.parametrize("text, what", [
    ('sample\tpath\tmode\ns1\t"a.tif\tenhance\ns2\tb.tif\tenhance\n', "unexpected end of data"),
    ('sample\tpath\tmode\ns1\t"a.tif\tenhance"\ns2\tb.tif\tenhance\n', "line 2: a quoted value spans a tab"),
    # a name that starts with a quote, deep in a long sheet: the error named no line
    ("sample\tpath\n" + "".join(f"s{i}\ts{i}.tif\n" for i in range(30)) + 'q\t"best" scan.tif\n', "line 32: cannot be read"),
])
def test_an_unbalanced_quote_is_refused_instead_of_swallowing_the_rows_after_it(tmp_path, text, what):
    """An opening quote made the csv reader read on to the file's end: sample s2 vanished."""
    with pytest.raises(ConfigError, match=re.escape(what)):
        read_sample_sheet(_sheet(tmp_path, text), schema=SCHEMA)


# ---------------------------------------------------------------- inbox rows (config inbox_columns)

def test_inbox_columns_are_given_to_every_acquisition_as_sheet_cells():
    from selfres.sheet import inbox_table

    rows = [{"sample": "a", "path": "in/a.tif"}, {"sample": "b", "path": "in/b.tif"}]
    table = inbox_table(rows, {"channel": "all", "timepoint": 0, "scale": "1,2,2", "train.steps": 50,
                               "train.scale_check": False}, schema=SCHEMA)
    assert list(table["sample"]) == ["a", "b"] and list(table["path"]) == ["in/a.tif", "in/b.tif"]
    assert table.to_dict(orient="records")[1] == {"sample": "b", "path": "in/b.tif", "channel": "all",
                                                  "timepoint": "0", "scale": "1,2,2", "train.steps": "50",
                                                  "train.scale_check": "false"}


def test_inbox_without_columns_gives_bare_rows_and_an_empty_inbox_an_empty_table():
    from selfres.sheet import inbox_table

    assert inbox_table([{"sample": "a", "path": "a.tif"}], {}, schema=SCHEMA).to_dict(orient="records") == [
        {"sample": "a", "path": "a.tif"}]
    assert len(inbox_table([], {"channel": "all"}, schema=SCHEMA)) == 0


@pytest.mark.parametrize("columns, message", [
    ({"channel": "first"}, r"config inbox_columns: .*column 'channel': 'first' is not of the form: a channel index"),
    ({"colour": "1"}, r"config inbox_columns: .*unknown column\(s\) 'colour'"),
    ({"train.steps": "many"}, r"config inbox_columns: .*train\.steps"),
    ({"scale": "1,1,1"}, r"config inbox_columns: .*column 'scale'"),
    ({"path": "x.tif"}, r"config inbox_columns: 'path' cannot be shared by all inbox acquisitions"),
    ({"reference": "truth.tif", "sample": "x"}, r"'reference', 'sample' cannot be shared"),
    ({"model_from": "first_timepoint"}, r"config inbox_columns: model_from first_timepoint .*needs timepoint: all"),
])
def test_bad_inbox_columns_are_refused_even_when_the_inbox_is_empty(columns, message):
    from selfres.sheet import inbox_table

    with pytest.raises(ConfigError, match=message):
        inbox_table([], columns, schema=SCHEMA)


# ---------------------------------------------------------------- model_from (another sample's model)

def _model_sheet(rows):
    import pandas as pd

    cols = ["sample", "path", "mode", "scale", "model_from"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols).fillna("")


def test_model_from_accepts_a_training_sample_of_the_same_scale_and_itself():
    from selfres.sheet import check_model_sources

    check_model_sources(_model_sheet([("t0", "x.tif", "", "1,2,2", "t0"), ("t1", "x.tif", "", "1,2,2", "t0"),
                                      ("t2", "x.tif", "enhance", "", "t0")]), default_scale="1,2,2")
    # one scale written two ways
    check_model_sources(_model_sheet([("a", "x.tif", "", "1, 2, 2", ""), ("b", "y.tif", "", "1,2,2", "a")]))
    # isotropic pairs: the scale column is enhance's (their axial factors are compared by the job)
    check_model_sources(_model_sheet([("i0", "x.tif", "isotropic", "", ""), ("i1", "y.tif", "isotropic", "2,2,2", "i0")]))


def test_a_model_from_chain_to_no_sample_names_the_row_to_mend():
    """b uses a's model and a names 'zz', no sample: b's message said 'name the sample that trains
    ('zz')' — a sample that does not exist."""
    from selfres.sheet import check_model_sources

    refused = {}
    check_model_sources(_model_sheet([("a", "a.tif", "", "", "zz"), ("b", "b.tif", "", "", "a")]), refused=refused)
    assert "'zz' is not a sample of the sheet" in refused["a"]
    assert refused["b"].endswith("'a' itself uses the model of 'zz', which is not a sample of the sheet; name a "
                                 "sample that trains (mend 'a''s model_from first)")


@pytest.mark.parametrize("rows, message", [
    ([("a", "a.tif", "", "", "nope")], r"sample 'a', column 'model_from': 'nope' is not a sample of the sheet"),
    ([("a", "a.tif", "", "", ""), ("b", "b.tif", "", "", "a"), ("c", "c.tif", "", "", "b")],
     r"sample 'c'.*'b' itself uses the model of 'a'; name the sample that trains \('a'\)"),
    ([("a", "a.tif", "isotropic", "", ""), ("b", "b.tif", "", "", "a")],
     r"sample 'b'.*this sample is in enhance mode, 'a' in isotropic mode"),
    ([("a", "a.tif", "", "", ""), ("b", "b.tif", "isotropic", "", "a")],
     r"this sample is in isotropic mode, 'a' in enhance mode"),
    ([("a", "a.tif", "", "1,2,2", ""), ("b", "b.tif", "", "", "a")], r"its scale 2,2,2 \(the config's scale\) differs from the scale of 'a', 1,2,2;"),
])
def test_model_from_that_no_job_could_honour_is_refused(rows, message):
    from selfres.sheet import check_model_sources

    with pytest.raises(ConfigError, match=message):
        check_model_sources(_model_sheet(rows))
    # bad_rows: fail_alone: the same message refuses that sample alone; the others stay
    refused = {"z": "sample sheet config/samples.tsv, line 9: sample 'z': column 'scale': …"}
    kept = check_model_sources(_model_sheet([*rows, ("y", "y.tif", "", "", "z")]), refused=refused)
    culprit = rows[-1][0]  # the row whose model_from cell fails
    assert re.search(message, refused.pop(culprit))
    assert refused.pop("y") == f"sample 'y': its model_from sample 'z' was refused: {refused['z']}"
    assert sorted(kept["sample"]) == sorted({r[0] for r in rows} - {culprit})


def test_first_timepoint_names_each_series_own_time_point_zero():
    import pandas as pd

    from selfres.sheet import resolve_first_timepoint

    sheet = pd.DataFrame([
        {"sample": "lapse_t0", "timepoint": "0", "model_from": "first_timepoint"},
        {"sample": "lapse_t12", "timepoint": "12", "model_from": "first_timepoint"},
        {"sample": "two_c1_t3", "timepoint": "3", "model_from": "first_timepoint"},
        {"sample": "unread", "timepoint": "all", "model_from": "first_timepoint"},  # expansion failed
        {"sample": "other", "timepoint": "", "model_from": "lapse_t0"},
    ])
    assert list(resolve_first_timepoint(sheet)["model_from"]) == ["lapse_t0", "lapse_t0", "two_c1_t0", "",
                                                                  "lapse_t0"]
    with pytest.raises(ConfigError, match=r"sample 'still_t1', column 'model_from': first_timepoint .*timepoint=all"):
        resolve_first_timepoint(pd.DataFrame([{"sample": "still_t1", "timepoint": "", "model_from": "first_timepoint"}]))
    # bad_rows: fail_alone: that row fails alone (it stopped the whole night, every night)
    refused = {}
    kept = resolve_first_timepoint(pd.concat([sheet, pd.DataFrame([{"sample": "still_t1", "timepoint": "",
                                                                      "model_from": "first_timepoint"}])]),
                                   refused=refused)
    assert list(kept["sample"]) == list(sheet["sample"]) and list(refused) == ["still_t1"]
    assert "first_timepoint names time point 0 of the same series" in refused["still_t1"]


def test_model_from_an_unexpanded_row_points_at_that_row():
    import pandas as pd

    from selfres.sheet import check_model_sources, resolve_unexpanded_sources

    sheet = pd.DataFrame([
        {"sample": "lapse", "channel": "", "timepoint": "all", "model_from": ""},  # its file could not be read
        {"sample": "two", "channel": "all", "timepoint": "all", "model_from": ""},
        {"sample": "ok_t0", "channel": "", "timepoint": "0", "model_from": ""},
        {"sample": "a", "channel": "", "timepoint": "", "model_from": "lapse_t0"},
        {"sample": "b", "channel": "", "timepoint": "", "model_from": "two_c1_t3"},
        {"sample": "c", "channel": "", "timepoint": "", "model_from": "ok_t0"},
        {"sample": "d", "channel": "", "timepoint": "", "model_from": "lapse_x0"},  # no expansion suffix
        {"sample": "e", "channel": "", "timepoint": "", "model_from": "lapsed_t0"},  # another stem
        {"sample": "f", "channel": "", "timepoint": "", "model_from": "lapse_c3"},  # lapse has no channel=all
        {"sample": "g", "channel": "", "timepoint": "", "model_from": "two_t3_c1"},  # not the expansion's order
    ])
    out = resolve_unexpanded_sources(sheet)
    assert list(out["model_from"]) == ["", "", "", "lapse", "two", "ok_t0", "lapse_x0", "lapsed_t0", "lapse_c3",
                                       "two_t3_c1"]
    check_model_sources(out.iloc[:6])
    with pytest.raises(ConfigError, match="'lapse_x0' is not a sample of the sheet"):
        check_model_sources(out)
    assert resolve_unexpanded_sources(sheet.iloc[2:]).equals(sheet.iloc[2:])  # nothing unexpanded: unchanged


# ---------------------------------------------------------------- header counts kept between evaluations

def test_file_counts_are_read_once_and_again_only_when_the_file_changes(tmp_path):
    import os

    from selfres.sheet import FileCounts

    acq = tmp_path / "a.tif"
    acq.write_bytes(b"x" * 10)
    cache = tmp_path / ".snakemake" / "selfres" / "file_counts.json"
    calls = []

    def count():
        calls.append(1)
        return 3

    first = FileCounts(cache)
    assert first.get("timepoints", str(acq), None, count) == 3
    first.save()
    assert FileCounts(cache).get("timepoints", str(acq), None, count) == 3 and len(calls) == 1  # next evaluation
    assert FileCounts(cache).get("timepoints", str(acq), 1, count) == 3 and len(calls) == 2  # another series
    acq.write_bytes(b"x" * 11)  # rewritten: counted again
    os.utime(acq, ns=(1, 1))
    assert FileCounts(cache).get("timepoints", str(acq), None, count) == 3 and len(calls) == 3
    saved = FileCounts(cache)
    saved.get("timepoints", str(acq), None, count)
    saved.save()
    acq.write_bytes(b"y" * 11)  # overwritten by an acquisition of the same size: its time tells
    os.utime(acq, ns=(2_000_000_000, 2_000_000_000))
    assert FileCounts(cache).get("timepoints", str(acq), None, count) == 3 and len(calls) == 5
    again = FileCounts(cache)
    again.get("timepoints", str(acq), None, count)
    again.save()
    assert FileCounts(cache).get("timepoints", str(acq), None, count) == 3 and len(calls) == 6  # cached
    with pytest.MonkeyPatch.context() as mp:  # counts of another selfres version's reader are not reused
        mp.setattr("selfres.sheet.__version__", "0.0.0+another")
        assert FileCounts(cache).get("timepoints", str(acq), None, count) == 3 and len(calls) == 7
    calls.clear()
    store = tmp_path / "s.zarr"
    store.mkdir()
    fresh = FileCounts(cache)
    fresh.get("channels", str(store), None, count)
    fresh.get("channels", str(store), None, count)
    assert len(calls) == 2 and not fresh.changed  # folders are not cached
    cache.write_text("{not json")
    assert FileCounts(cache).entries == {}  # a damaged cache is an empty one


def test_nested_command_line_strings_become_the_schema_s_types():
    """Snakemake hands `--config 'train={"steps": 70}'` over as strings; a string the schema
    takes as a string stays one, and a string that is not of the wanted type is left for the
    check to refuse with its message."""
    from pathlib import Path

    from selfres.sheet import check_config, coerce_command_line_strings

    schema = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    config = {"isotropic": {"steps": "70", "axial_sigma_px": "null", "fusion": "mean", "gan_max_minutes": "010"},
              "train": {"patch_size": ["8", "32", "32"], "psf_sigma_um": "[1, 0.5, 0.5]"},
              "infer": {"ensemble": "true", "blocks": "two"}, "scale": "2,2,2"}
    config["train"] |= {"learning_rate": "1e-4", "degradation": {"psf_path": "null"}}
    coerce_command_line_strings(config, schema=schema)
    assert config["isotropic"] == {"steps": 70, "axial_sigma_px": None, "fusion": "mean", "gan_max_minutes": 10}
    assert config["train"].pop("learning_rate") == 1e-4 and config["train"].pop("degradation") == {"psf_path": None}
    assert config["train"] == {"patch_size": [8, 32, 32], "psf_sigma_um": [1, 0.5, 0.5]}
    assert config["infer"] == {"ensemble": True, "blocks": "two"} and config["scale"] == "2,2,2"
    with pytest.raises(Exception, match="infer.blocks: 'two'"):
        check_config(config, schema=schema)


def test_a_results_folder_snakemake_reads_as_a_pattern_is_refused_naming_the_key():
    """``results: results_{night}`` stopped the run with a WildcardError from a rule file."""
    from selfres.sheet import check_config

    schema = SCHEMA.with_name("config.schema.yaml")
    with pytest.raises(ConfigError, match=r"^config: results: results_\{night\}: .*wildcard"):
        check_config({"results": "results_{night}"}, schema=schema)
    check_config({"results": "results_night"}, schema=schema)


def test_an_unquoted_ngff_version_in_the_config_is_its_text():
    """YAML reads `ngff_version: 0.5` as a number; it was refused with "0.5 is not of type
    'string'; … is not allowed; allowed values: '0.4', '0.5'". A number outside the choices
    stays one, for the check to refuse."""
    from pathlib import Path

    from selfres.sheet import check_config, coerce_command_line_strings

    schema = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    for written, read in ((0.5, "0.5"), (0.4, "0.4")):
        config = {"infer": {"ngff_version": written}}
        coerce_command_line_strings(config, schema=schema)
        assert config == {"infer": {"ngff_version": read}}
        check_config(config, schema=schema)
    config = {"infer": {"ngff_version": 0.6}}
    coerce_command_line_strings(config, schema=schema)
    assert config == {"infer": {"ngff_version": 0.6}}  # still a number: not made a string the check lets by
    with pytest.raises(ConfigError, match="infer.ngff_version"):
        check_config(config, schema=schema)


def test_a_psf_path_column_is_relative_to_the_sheet_like_path_and_reference(tmp_path, monkeypatch):
    """A sheet's files are found beside it: its measured PSF too (it was read relative to the
    working directory, unlike the acquisition in the same row); ``null`` stays no file."""
    monkeypatch.chdir(tmp_path)
    p = _sheet(tmp_path, "sample\tpath\ttrain.degradation.method\ttrain.degradation.psf_path\n"
                         "a\t../data/a.tif\tpsf\t../optics/psf.tif\n"
                         "b\t../data/b.tif\tpsf\t./psf b.tif\n"
                         "c\t../data/c.tif\t\tnull\n"
                         f"d\t../data/d.tif\tpsf\t{tmp_path / 'abs' / 'psf.tif'}\n")
    sheet = read_sample_sheet(p, schema=SCHEMA).set_index("sample")
    assert sheet.loc["a", "train.degradation.psf_path"] == os.path.join("optics", "psf.tif")
    assert sheet.loc["b", "train.degradation.psf_path"] == os.path.join("config", "psf b.tif")
    assert sheet.loc["c", "train.degradation.psf_path"] == "null"
    assert sheet.loc["d", "train.degradation.psf_path"] == os.path.join("abs", "psf.tif")  # inside the working dir
    assert sheet.loc["a", "path"] == os.path.join("data", "a.tif")


def test_a_sheet_that_asks_no_file_for_all_its_images_does_not_import_the_readers():
    """Every workflow start (and every Slurm job, which starts Snakemake again) reads the sheet:
    the file readers (zarr, dask: about a second) are imported only for a row whose series,
    channel or time point is `all`."""
    import subprocess
    import sys

    code = ("import sys, pandas as pd; from selfres import sheet; "
            "t = pd.DataFrame([{'sample': 'a', 'path': 'a.tif', 'series': '', 'channel': '1', 'timepoint': ''}]); "
            "t = sheet.expand_timepoints(sheet.expand_channels(sheet.expand_series(t))); "
            "print(len(t), 'selfres.io' in sys.modules, 'zarr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]


def test_with_bad_rows_fail_alone_a_refused_row_is_left_out_with_its_message(tmp_path):
    """``bad_rows: fail_alone``: a row that fails its checks, and every row of a duplicated id,
    leaves the table with the message the run would have stopped on; the other rows stay.
    What no one sample owns still stops the run: an id that cannot be a folder name, a
    mistake of the config itself."""
    text = ("sample\tpath\tscale\ttrain.steps\n"
            "good\tg.tif\t1,2,2\t\n"
            "bad\tb.tif\t2x2x2\t\n"
            "dup\td1.tif\t\t\n"
            "steps\ts.tif\t\t-3\n"
            "dup\td2.tif\t\t\n")
    p = _sheet(tmp_path, text)
    with pytest.raises(ConfigError, match=r"line 3: sample 'bad': column 'scale'"):  # the default: stop
        read_sample_sheet(p, schema=SCHEMA)
    refused: dict = {}
    table = read_sample_sheet(p, schema=SCHEMA, refused=refused, config_settings={"train": {"steps": 200}})
    assert table["sample"].tolist() == ["good"]
    assert sorted(refused) == ["bad", "dup", "steps"]
    assert refused["bad"].startswith(f"sample sheet {p}, line 3: sample 'bad': column 'scale': '2x2x2' is not of")
    assert refused["dup"] == f"sample sheet {p}, lines 4, 6: sample 'dup': duplicate sample id; ids must be unique"
    assert refused["steps"].startswith(f"sample sheet {p}, line 5: sample 'steps': ") and "train.steps" in refused["steps"]
    # their files stay theirs: an inbox scan must not take them up as new samples
    assert sorted(Path(f).name for f in table.attrs["refused_paths"]) == ["b.tif", "d1.tif", "d2.tif", "s.tif"]
    assert table.attrs["row_ids"] == ["good", "bad", "dup", "steps", "dup"]  # the summary's order
    # an id that cannot be a folder, and the config's own mistake, stop the run either way
    with pytest.raises(ConfigError, match=r"line 3: sample id '\.\./evil' is not allowed"):
        read_sample_sheet(_sheet(tmp_path, "sample\tpath\ngood\tg.tif\n../evil\te.tif\n"), schema=SCHEMA, refused={})
    with pytest.raises(ConfigError, match=r"^config: "):
        read_sample_sheet(_sheet(tmp_path, "sample\tpath\ngood\tg.tif\n"), schema=SCHEMA, refused={},
                          config_settings={"train": {"guard_confidence": 0.3}})


def test_an_image_channel_or_time_point_the_file_refuses_is_found_from_its_header(tmp_path, monkeypatch):
    """What the sample's normalise would refuse — a channel, time point or image the file
    lacks, or none chosen where it holds several — found when the run starts, in the reader's
    words and order, from a header read once (cached with the `all` expansions' counts); so is
    a file there that cannot be read (the README says a run names it at its start; it was left to
    its job); one that is not there (yet) is left to its job."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres import io
    from selfres.sheet import FileCounts, choice_problems

    lapse = tmp_path / "lapse.tif"  # 3 time points, 2 channels
    tifffile.imwrite(lapse, np.zeros((3, 4, 2, 8, 8), "uint16"), imagej=True, metadata={"axes": "TZCYX"})
    two = tmp_path / "two.ome.tif"  # two positions
    with tifffile.TiffWriter(two, ome=True) as tw:
        for _ in range(2):
            tw.write(np.zeros((4, 8, 8), "uint16"), metadata={"axes": "ZYX"})
    rows = [("ok", lapse, "", "1", "2"), ("c", lapse, "", "2", "0"), ("t", lapse, "", "0", "3"),
            ("s", lapse, "1", "", ""), ("s0", lapse, "0", "1", "0"), ("every", lapse, "", "all", "all"),
            ("no_c", lapse, "", "", "1"), ("no_t", lapse, "", "", ""), ("no_s", two, "", "", ""),
            ("pos1", two, "1", "", ""), ("gone", tmp_path / "gone.tif", "", "5", ""),
            ("czi", tmp_path / "scan.czi", "", "5", "")]
    (tmp_path / "scan.czi").write_bytes(b"ZISRAWFILE" + bytes(100))
    cut = tmp_path / "cut.tif"  # a copy cut short
    cut.write_bytes(lapse.read_bytes()[:600])
    rows.append(("cut", cut, "", "", ""))
    sheet = pd.DataFrame([(sid, str(p), se, c, t) for sid, p, se, c, t in rows],
                         columns=["sample", "path", "series", "channel", "timepoint"])
    counts = FileCounts(tmp_path / "counts.json")
    found = choice_problems(sheet, counts)
    assert sorted(found) == ["c", "cut", "czi", "no_c", "no_s", "no_t", "s", "t"]
    assert "truncated or corrupt" in found["cut"] and "CZI" in found["czi"]
    # a file this account may not read (root reads anything: the reader is made to refuse)
    monkeypatch.setattr(io, "series_numbers", lambda path: (_ for _ in ()).throw(PermissionError(13, "denied", path))
                        if str(path).endswith("two.ome.tif") else [0])
    denied = choice_problems(sheet[sheet["sample"] == "pos1"], FileCounts(tmp_path / "other.json"))
    assert denied == {"pos1": "cannot be read by this account (permission denied); give the account that runs "
                              "selfres read access to it (and its folders)"}
    monkeypatch.undo()
    assert found["c"] == "channel 2 is out of range: the file has 2 channels (allowed 0..1)"
    assert found["t"] == "time point 3 is out of range: the file has 3 time points (allowed 0..2)"
    assert found["s"] == "series 1 is out of range: the file's images are series 0"
    # the reader says the same when the sample's job reads the file
    for sid, kwargs in (("c", {"channel": 2, "timepoint": 0}), ("t", {"channel": 0, "timepoint": 3}),
                        ("no_c", {"timepoint": 1}), ("no_t", {}), ("no_s", {}), ("s", {"series": 1})):
        with pytest.raises(io.InputError) as err:
            io.read_volume(sheet.set_index("sample").loc[sid, "path"], lazy=True, **kwargs)
        assert err.value.what == found[sid], sid
    assert found["no_c"].startswith("has 2 channels; choose one with channel=0..1")
    assert found["no_t"].startswith("has 3 time points; ")  # the time point first, as the reader asks
    assert found["no_s"].startswith("holds 2 images (TIFF series")
    # the header is read once: a second start asks the cache
    counts.save()
    for reader in ("series_numbers", "channel_count", "timepoint_count"):
        monkeypatch.setattr(io, reader, lambda *a, **k: pytest.fail("the header was read again"))
    again = choice_problems(sheet[sheet["path"] == str(lapse)], FileCounts(tmp_path / "counts.json"))
    assert again == {k: v for k, v in found.items() if k not in ("no_s", "cut", "czi")}


def test_a_sheet_voxel_size_unlike_its_files_is_found_from_the_header_once(tmp_path, monkeypatch):
    """A ``voxel_size`` cell 10 times or more unlike what the file records on an axis (nm typed
    for µm) is said when the run starts, from the file's header, read once per file version;
    a correction within that (a binned camera's pixel) is not, nor a row without a cell, a
    file with no recorded size, a file not there, or a later image of a file."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres import io
    from selfres.sheet import FileCounts, voxel_size_slips

    sized = tmp_path / "sized.tif"  # 1 x 0.5 x 0.5 µm
    tifffile.imwrite(sized, np.zeros((4, 8, 8), "uint16"), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    bare = tmp_path / "bare.tif"  # records none
    tifffile.imwrite(bare, np.zeros((4, 8, 8), "uint16"))
    rows = [("nm", sized, "", "1000,500,500"), ("one_axis", sized, "", "1,0.5,5"), ("small", sized, "", "1,0.05,0.5"),
            ("binned", sized, "", "1,2,2"), ("same", sized, "", "1,0.5,0.5"), ("none", sized, "", ""),
            ("bare", bare, "", "1000,500,500"), ("gone", tmp_path / "gone.tif", "", "1000,500,500"),
            ("later", sized, "1", "1000,500,500"), ("typo", sized, "", "1,0.5")]
    sheet = pd.DataFrame([(sid, str(p), se, vs) for sid, p, se, vs in rows],
                         columns=["sample", "path", "series", "voxel_size"])
    counts = FileCounts(tmp_path / "counts.json")
    found = voxel_size_slips(sheet, counts)
    assert sorted(found) == ["nm", "one_axis", "small"]
    assert found["nm"] == ("the sheet's voxel size 1000,500,500 µm (z,y,x) is 10 times or more unlike the 1,0.5,0.5 "
                           "µm its file records (nm typed for µm?); selfres uses the sheet's, and its qc flags "
                           "voxel_size_unlike_file. If the sheet's is right, nothing needs doing")
    # the header is read once: a second start asks the cache (a file that records none too)
    counts.save()
    monkeypatch.setattr(io, "read_voxel_size", lambda *a, **k: pytest.fail("the header was read again"))
    assert voxel_size_slips(sheet, FileCounts(tmp_path / "counts.json")) == found


def test_a_single_plane_s_given_z_is_not_called_a_slip_at_the_run_s_start(tmp_path):
    """A 2-D image records no z step (its y pixel stands in): a sheet's z of 5 µm beside a 0.5-µm
    pixel is no unit slip. Normalise and qc compare y and x alone there (qc flags nothing), and
    the run's start said "10 times or more unlike ... its qc flags voxel_size_unlike_file"."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres.sheet import FileCounts, voxel_size_slips

    plane, stack = tmp_path / "plane.tif", tmp_path / "stack.tif"  # pixels 0.5 x 0.5 µm; the stack's z 0.5 µm
    tifffile.imwrite(plane, np.zeros((8, 8), "uint16"), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    tifffile.imwrite(stack, np.zeros((4, 8, 8), "uint16"), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    rows = [("plane_z", plane, "5,0.5,0.5"), ("plane_nm", plane, "5,500,500"), ("stack_z", stack, "5,0.5,0.5")]
    sheet = pd.DataFrame([(sid, str(p), vs) for sid, p, vs in rows], columns=["sample", "path", "voxel_size"])
    assert sorted(voxel_size_slips(sheet, FileCounts(tmp_path / "counts.json"))) == ["plane_nm", "stack_z"]
    assert sorted(voxel_size_slips(sheet)) == ["plane_nm", "stack_z"]


def test_an_isotropic_row_without_a_usable_voxel_size_is_said_when_the_run_starts(tmp_path, caplog):
    """A walkthrough: an isotropic sample whose file records no voxel size, or whose z step is
    finer than its pixel, was refused only at crop, after its normalise; a dry run said nothing.
    Now the run's start says it in crop's own words; enhance rows, a cell that gives a usable
    size, a later image of a file and a file not there are left alone."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres.sheet import FileCounts, isotropic_voxel_problems

    sized = tmp_path / "sized.tif"  # 1 x 0.5 x 0.5 µm: factor 2
    tifffile.imwrite(sized, np.zeros((4, 8, 8), "uint16"), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    fine_z = tmp_path / "fine_z.tif"  # 0.1 x 0.2 x 0.2 µm
    tifffile.imwrite(fine_z, np.zeros((4, 8, 8), "uint16"), imagej=True, resolution=(5.0, 5.0),
                     metadata={"spacing": 0.1, "unit": "um", "axes": "ZYX"})
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, np.zeros((4, 8, 8), "uint16"))
    from selfres.io import write_ome_zarr

    zarr_fine = tmp_path / "fine.ome.zarr"  # an acquisition that is a folder (a mutation review: untested)
    write_ome_zarr(zarr_fine, np.zeros((4, 8, 8), "uint16"), voxel_size=(0.1, 0.2, 0.2))
    rows = [("ok", sized, "isotropic", "", ""), ("nometa", bare, "isotropic", "", ""),
            ("zfine", fine_z, "", "", ""), ("zarrfine", zarr_fine, "", "", ""),
            ("given", bare, "isotropic", "", "2,0.5,0.5"),
            ("nm", sized, "isotropic", "", "1000,0.5,0.5"), ("enh", bare, "enhance", "", ""),
            ("later", bare, "isotropic", "1", ""), ("gone", tmp_path / "gone.tif", "isotropic", "", "")]
    sheet = pd.DataFrame([(sid, str(p), m, se, vs) for sid, p, m, se, vs in rows],
                         columns=["sample", "path", "mode", "series", "voxel_size"])
    found = isotropic_voxel_problems(sheet, FileCounts(tmp_path / "counts.json"), default_mode="isotropic")
    assert sorted(found) == ["nm", "nometa", "zarrfine", "zfine"]
    assert "the z voxel (0.1 µm) is finer than the lateral pixel (0.2 µm)" in found["zarrfine"]
    assert found["nometa"].startswith("isotropic mode needs the voxel size: give it in the sample sheet column")
    assert "the z voxel (0.1 µm) is finer than the lateral pixel (0.2 µm)" in found["zfine"]
    assert "isotropic mode allows at most 20x" in found["nm"]
    # the config's mode is enhance: a row without a mode is not isotropic
    assert sorted(isotropic_voxel_problems(sheet, None, default_mode="enhance")) == ["nm", "nometa"]
    # non-square pixels: crop's warning is its own, not a bare line at every run's start (a review)
    oblong = pd.DataFrame([("ob", str(sized), "isotropic", "", "1,0.2,0.3")], columns=sheet.columns)
    with caplog.at_level("WARNING"):
        assert isotropic_voxel_problems(oblong, None) == {}
    assert "lateral voxel sizes differ" not in caplog.text


def test_samples_are_listed_in_the_order_of_the_sheet_rows_they_come_from():
    """The summary lists a run's samples as the sheet has them: a refused row where it stands
    (not after the others), an expanded id at the row that made it, the inbox's last."""
    from selfres.sheet import in_sheet_order

    rows = ["good", "bad", "cells", "dup", "lapse", "dup"]  # line order, refused rows too
    ran = ["good", "cells_c0", "cells_c1", "lapse_c0_t0", "lapse_c0_t1", "scan7", "day_b"]  # the table's order
    refused = ["bad", "dup", "lapse_c1_t0", "scan3"]  # in the order they were refused
    assert in_sheet_order([*ran, *refused], rows) == [
        "good", "bad", "cells_c0", "cells_c1", "dup", "lapse_c0_t0", "lapse_c0_t1", "lapse_c1_t0",
        "scan7", "day_b", "scan3"]
    assert in_sheet_order(["b_s1", "a"], ["a", "b"]) == ["a", "b_s1"]
    assert in_sheet_order(["x", "y"], []) == ["x", "y"]  # no sheet rows: as given


def test_an_id_that_an_all_expansion_makes_twice_fails_alone_with_bad_rows_fail_alone(tmp_path):
    """``channel=all`` of ``a`` makes ``a_c0`` and ``a_c1``; a row named ``a_c0`` — valid, or
    itself refused — makes the id twice. By default the run stops; with ``fail_alone`` the id
    fails alone (neither row's meaning is guessed) and ``a_c1`` runs."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres.sheet import expand_channels

    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.zeros((3, 2, 8, 8), "uint16"), imagej=True, metadata={"axes": "ZCYX"})
    sheet = pd.DataFrame({"sample": ["a", "a_c0", "b"], "path": [str(two), "x.tif", "y.tif"],
                          "channel": ["all", "", ""]})
    with pytest.raises(ConfigError, match=r"channel=all makes sample id\(s\) a_c0 that are already taken"):
        expand_channels(sheet)
    refused: dict = {}
    out = expand_channels(sheet, refused=refused)
    assert out["sample"].tolist() == ["a_c1", "b"] and out["channel"].tolist() == ["1", ""]
    assert refused == {"a_c0": "sample sheet: sample 'a_c0': a row has this id, and channel=all of sample 'a' "
                                "makes it too; rename one of them"}
    # the row a_c0 refused already (left out of the sheet): its message gains the clash
    refused = {"a_c0": "sample sheet s.tsv, line 3: sample 'a_c0': column 'scale': ..."}
    out = expand_channels(sheet[sheet["sample"] != "a_c0"], refused=refused)
    assert out["sample"].tolist() == ["a_c1", "b"]
    assert refused["a_c0"] == ("sample sheet s.tsv, line 3: sample 'a_c0': column 'scale': ...; also, channel=all "
                               "of sample 'a' makes this id too; rename one of them")
    # nothing refused, nothing made twice: the table as before
    refused = {}
    assert expand_channels(sheet[sheet["sample"] != "a_c0"], refused=refused)["sample"].tolist() == ["a_c0", "a_c1", "b"]
    assert refused == {}


def test_a_sample_may_not_be_named_after_what_the_workflow_writes_at_the_top_of_results(tmp_path):
    from selfres.sheet import RESULTS_ROOT_NAMES, check_results_dirs

    results = tmp_path / "results"
    check_results_dirs(results, ["a", "summary", "logs_2", "lapse.ome.tif"])  # near misses are fine
    for name in (*RESULTS_ROOT_NAMES, "Summary.HTML", "RUNS"):  # case-insensitive file systems too
        with pytest.raises(ConfigError, match=rf"sample id '{re.escape(name)}' is not allowed: the workflow writes"):
            check_results_dirs(results, ["a", name])
    # with export_tiff, an acquisition's combined OME-TIFF
    with pytest.raises(ConfigError, match=r"writes 'lapse.ome.tif' at the top of the results folder"):
        check_results_dirs(results, ["lapse_t0", "lapse.ome.tif"], root_files=["lapse.ome.tif"])


def test_a_link_inside_a_sample_s_results_folder_leading_out_of_results_is_refused(tmp_path):
    """results/<sample>/normalized.ome.zarr as a link to a folder elsewhere: the pipeline would
    write outside the results root through it; a link that stays inside is fine."""
    from selfres.sheet import check_results_dirs

    results, outside = tmp_path / "results", tmp_path / "outside"
    (results / "a").mkdir(parents=True)
    (results / "elsewhere").mkdir()
    outside.mkdir()
    (results / "a" / "model").symlink_to(results / "elsewhere")
    check_results_dirs(results, ["a"])
    (results / "a" / "normalized.ome.zarr").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"sample 'a': .*normalized\.ome\.zarr is a link to .*outside, outside "
                                          r"the results root"):
        check_results_dirs(results, ["a"])


@pytest.mark.parametrize("column, value, message", [
    ("train.learning_rate", "-0.001", r"train\.learning_rate: -0\.001 is less than or equal to the minimum of 0"),
    ("train.width", "3", r"train\.width: 3 is less than the minimum of"),
    ("train.patience", "0", r"train\.patience: 0 is less than the minimum of 1"),
    ("train.degradation.gain", "0", r"train\.degradation\.gain: 0\.0 is less than or equal to the minimum of 0"),
    ("isotropic.patch_size", "7", r"isotropic\.patch_size: 7 is less than the minimum of"),
    ("train.guard_margin_db", "nan", r"train\.guard_margin_db: expected a finite number, got 'nan'"),
    ("train.max_minutes", "1e400", r"train\.max_minutes: expected a finite number"),
])
def test_a_sheet_override_keeps_the_bounds_the_config_keeps(tmp_path, column, value, message):
    """A sheet cell is text, so its row schema held no ranges: a learning rate of -0.001 passed
    the run's start and failed train with 'this is a bug'; a guard margin of nan threw away a
    network that gained +2.3 dB, flagged model_worse_than_interpolation. The config schema's
    bounds now apply to the cell as the jobs read it, and no number may be nan or infinite."""
    p = _sheet(tmp_path, f"sample\tpath\t{column}\na\ta.tif\t{value}\nb\tb.tif\t\n")
    with pytest.raises(ConfigError, match=rf"line 2: sample 'a': {message}"):
        read_sample_sheet(p, schema=SCHEMA)
    refused = {}
    sheet = read_sample_sheet(p, schema=SCHEMA, refused=refused)  # bad_rows: fail_alone
    assert sheet["sample"].tolist() == ["b"] and list(refused) == ["a"]


@pytest.mark.parametrize("header, named, suggested", [
    ("trian.steps", "'trian.steps'", "'train.steps'"),
    ("refrence", "'refrence'", "'reference'"),
])
def test_an_unknown_column_is_named_alone_not_beside_the_overrides_that_are_right(tmp_path, header, named,
                                                                                   suggested):
    """A mistyped column in a sheet with per-sample overrides named the overrides too ('unknown
    column(s) 'qc.beads', 'train.psf_sigma_um', 'trian.steps'' for the demo sheet plus
    trian.steps): the user was sent to mend the columns that were right."""
    p = _sheet(tmp_path, f"sample\tpath\tqc.beads\ttrain.degradation.noise\t{header}\na\ta.tif\ttrue\tnone\t5\n")
    with pytest.raises(ConfigError) as err:
        read_sample_sheet(p, schema=SCHEMA)
    message = str(err.value)
    assert f"unknown column(s) {named} (did you mean {suggested}?)" in message
    assert "qc.beads" not in message and "train.degradation.noise" not in message
    # the header's mistake stops the run with bad_rows: fail_alone too: no row "fails alone" while none runs
    refused = {}
    with pytest.raises(ConfigError, match=rf"^sample sheet .*: unknown column\(s\) {re.escape(named)}"):
        read_sample_sheet(p, schema=SCHEMA, refused=refused)
    assert refused == {}


def test_a_sheet_override_within_the_bounds_passes_as_the_jobs_read_it(tmp_path):
    p = _sheet(tmp_path, "sample\tpath\ttrain.learning_rate\ttrain.steps\ttrain.psf_sigma_um\n"
                         "a\ta.tif\t1e-3\t1e3\t1,0.5,0.5\n")
    assert read_sample_sheet(p, schema=SCHEMA)["sample"].tolist() == ["a"]


def test_sheet_override_numbers_are_read_as_written_not_as_yaml_1_1_octal_or_base_60():
    """``0042`` was seed 34 (octal), ``0200`` steps 128, and ``1:30`` minutes 90 (base 60),
    without a word; ``--config`` read the same text as 42 and 200."""
    from selfres.sheet import sample_overrides

    got = sample_overrides({"sample": "a", "train.seed": "0042", "train.steps": "0200",
                            "train.learning_rate": "1e-4", "infer.ensemble": "true", "train.patch_size": "[8,48,48]"})
    assert got == {"train": {"seed": 42, "steps": 200, "learning_rate": 1e-4, "patch_size": [8, 48, 48]},
                   "infer": {"ensemble": True}}
    assert sample_overrides({"train.max_minutes": "1:30"}) == {"train": {"max_minutes": "1:30"}}


def test_a_base_60_looking_time_budget_in_the_sheet_is_refused_naming_its_column(tmp_path):
    p = _sheet(tmp_path, "sample\tpath\ttrain.max_minutes\na\ta.tif\t1:30\n")
    with pytest.raises(ConfigError, match=r"line 2: sample 'a': .*train\.max_minutes"):
        read_sample_sheet(p, schema=SCHEMA)


_LONG_ID = "scan_" + "".join(f"{i:04d}" for i in range(60))


@pytest.mark.parametrize("sid, message", [
    ("img_" + "0" * 20, "repeated 20 times"),  # Snakemake's PeriodicWildcardError stopped every sample
    (_LONG_ID[:201], "201 characters long"),  # its combined TIFF's temporary name passed 255 bytes: 'This is a bug'
])
def test_an_id_snakemake_or_the_file_system_cannot_take_fails_its_own_row_naming_its_line(tmp_path, sid, message):
    p = _sheet(tmp_path, f"sample\tpath\ngood\tgood.tif\n{sid}\todd.tif\n")
    with pytest.raises(ConfigError, match=rf"line 3: sample '{sid}': .*{message}"):
        read_sample_sheet(p)
    refused = {}
    assert read_sample_sheet(p, refused=refused)["sample"].tolist() == ["good"] and list(refused) == [sid]
    assert read_sample_sheet(_sheet(tmp_path, f"sample\tpath\n{'img_' + '0' * 19}\ta.tif\n{_LONG_ID[:200]}\tb.tif\n"),
                             )["sample"].str.len().tolist() == [23, 200]


@pytest.mark.parametrize("name", ["pos{2}.tif", "scan<run2>.tif"])
def test_a_path_snakemake_reads_as_a_pattern_fails_its_own_row_only(tmp_path, name):
    """``{2}`` is a wildcard and ``<run2>`` a path variable to Snakemake: such a file as a job's
    input stopped the whole run while the jobs were planned, naming no sample or file."""
    sheet = _sheet(tmp_path, f"sample\tpath\ngood\tgood.tif\nodd\t{name}\n")
    refused = {}
    table = read_sample_sheet(sheet, refused=refused)
    assert list(table["sample"]) == ["good"]
    assert name in refused["odd"] and "column 'path'" in refused["odd"] and "rename" in refused["odd"]
    with pytest.raises(ConfigError, match=re.escape(name)):
        read_sample_sheet(sheet)  # bad_rows: fail_run
    assert read_sample_sheet(_sheet(tmp_path, "sample\tpath\nok\tscan<2>.tif\n"))["path"][0].endswith("scan<2>.tif")


def test_sheet_paths_read_tilde_as_home_and_dotdot_as_the_file_system_does(tmp_path, monkeypatch):
    """``~/x.tif`` is in the home folder (it was joined to the sheet's folder); ``../data`` from a
    sheet folder that is a link goes up from the link's target, where ``ls`` finds the file; and
    the same sheet spelled through a link to the working directory gives the same relative paths
    (another spelling reran every sample)."""
    home, wd = tmp_path / "home", tmp_path / "wd"
    (home / "scope").mkdir(parents=True)
    (tmp_path / "ext" / "deep" / "sub").mkdir(parents=True)
    (tmp_path / "ext" / "deep" / "data").mkdir()
    (wd / "sheets").mkdir(parents=True)
    (wd / "sheets" / "sub").symlink_to(tmp_path / "ext" / "deep" / "sub")
    (tmp_path / "wdlink").symlink_to(wd)
    text = "sample\tpath\nh\t~/scope/a.tif\nup\t../data/a.tif\n"
    (tmp_path / "ext" / "deep" / "sub" / "samples.tsv").write_text(text)
    (wd / "sheets" / "plain.tsv").write_text("sample\tpath\np\tdata/b.tif\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(wd)
    table = read_sample_sheet("sheets/sub/samples.tsv").set_index("sample")["path"]
    assert table["h"] == str(home / "scope" / "a.tif")
    assert table["up"] == str(tmp_path / "ext" / "deep" / "data" / "a.tif")
    via_link = read_sample_sheet(str(tmp_path / "wdlink" / "sheets" / "plain.tsv"))
    assert list(via_link["path"]) == [os.path.join("sheets", "data", "b.tif")]


# --- from a mutation review of sheet.py and settings.py: what a facility's sheet gets wrong ---


@pytest.mark.parametrize("sid", ["..", ".hidden", "_x", "-x"])
def test_an_id_that_does_not_start_with_a_letter_or_digit_is_refused_without_a_schema_too(tmp_path, sid):
    """``..`` would be the results folder's parent, ``.hidden`` a hidden folder, ``-x`` an option
    to every command: the id check itself refuses them (the results check relies on it alone)."""
    from selfres.sheet import check_results_dirs, check_sample_id

    with pytest.raises(ConfigError, match=r"sample id .* is not allowed: use letters, digits"):
        check_sample_id(sid)
    with pytest.raises(ConfigError, match=r"is not allowed"):
        check_results_dirs(tmp_path / "results", [sid])
    p = _sheet(tmp_path, f"sample\tpath\ngood\tg.tif\n{sid}\tb.tif\n")
    with pytest.raises(ConfigError, match=rf"line 3: sample id '{re.escape(sid)}' is not allowed"):
        read_sample_sheet(p)


def test_a_reference_is_found_beside_the_sheet_like_the_acquisition(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _sheet(tmp_path, "sample\tpath\treference\na\t../data/a.tif\t../truth/a.tif\nb\tb.tif\ttruth b.tif\n")
    sheet = read_sample_sheet(p, schema=SCHEMA).set_index("sample")
    assert sheet.loc["a", "reference"] == os.path.join("truth", "a.tif")
    assert sheet.loc["b", "reference"] == os.path.join("config", "truth b.tif")
    assert sheet.loc["b", "path"] == os.path.join("config", "b.tif")


def test_a_file_name_starting_with_a_dash_is_given_as_an_absolute_path(tmp_path, monkeypatch):
    """``selfres normalise -scan.tif`` reads the name as an option: a path inside the working
    directory that would start with ``-`` is made absolute (the integration test runs the
    workflow on one); ``config/-scan.tif`` starts with no dash and stays relative."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples.tsv").write_text("sample\tpath\na\t-scan.tif\nb\t--scan.tif\n", encoding="utf-8")
    got = read_sample_sheet(tmp_path / "samples.tsv", schema=SCHEMA)["path"].tolist()
    assert got == [str(tmp_path / "-scan.tif"), str(tmp_path / "--scan.tif")]
    assert read_sample_sheet(_sheet(tmp_path, "sample\tpath\na\t-scan.tif\n"), schema=SCHEMA)["path"][0] == \
        os.path.join("config", "-scan.tif")


def test_a_cell_after_the_first_that_starts_with_a_hash_is_text(tmp_path):
    p = _sheet(tmp_path, "sample\tpath\treference\na\t#3 scan.tif\t#3 truth.tif\n")
    sheet = read_sample_sheet(p, schema=SCHEMA)
    assert sheet["sample"].tolist() == ["a"]
    assert Path(sheet["path"][0]).name == "#3 scan.tif" and Path(sheet["reference"][0]).name == "#3 truth.tif"


def test_lines_of_only_spaces_and_tabs_are_skipped_as_blank(tmp_path):
    """A spreadsheet export keeps emptied rows as tabs (and a space typed into one)."""
    p = _sheet(tmp_path, "sample\tpath\tmode\na\ta.tif\tenhance\n \t \t\n\t\t\nb\tb.tif\t\n")
    assert read_sample_sheet(p, schema=SCHEMA)["sample"].tolist() == ["a", "b"]


def test_several_trailing_empty_header_cells_are_dropped(tmp_path):
    sheet = read_sample_sheet(_sheet(tmp_path, "sample\tpath\tmode\t\t\t\na\ta.tif\tenhance\n"), schema=SCHEMA)
    assert list(sheet.columns) == ["sample", "path", "mode"]


def test_a_column_named_twice_is_refused_naming_it(tmp_path):
    """Which of two ``scale`` columns was meant? Neither is guessed."""
    p = _sheet(tmp_path, "sample\tpath\tscale\tmode\tscale\na\ta.tif\t1,2,2\t\t2,2,2\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv: duplicate or empty column names 'scale'"):
        read_sample_sheet(p, schema=SCHEMA)


def test_a_duplicate_sample_id_stops_the_run_naming_the_id(tmp_path):
    """By default (``bad_rows: fail_run``) two rows of one id stop the run: both would write
    results/<id>, one over the other."""
    p = _sheet(tmp_path, "sample\tpath\na\ta1.tif\nb\tb.tif\na\ta2.tif\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv: duplicate sample id\(s\): a; ids must be unique"):
        read_sample_sheet(p, schema=SCHEMA)


def test_an_empty_path_is_refused_naming_the_line_and_sample_without_a_schema_too(tmp_path):
    p = _sheet(tmp_path, "sample\tpath\tmode\ngood\tg.tif\t\nnofile\t\tenhance\n")
    with pytest.raises(ConfigError, match=r"samples\.tsv, line 3: sample 'nofile': column 'path' is empty"):
        read_sample_sheet(p)
    refused = {}
    assert read_sample_sheet(p, refused=refused)["sample"].tolist() == ["good"] and list(refused) == ["nofile"]


@pytest.mark.parametrize("column", ["channel", "timepoint", "series"])
def test_an_all_row_whose_file_cannot_be_read_is_kept_for_its_job_to_name(tmp_path, column):
    """The docstring's promise: the row stays (its first job fails with the reader's message);
    dropping it would lose the sample from the run and from the summary without a word."""
    import pandas as pd

    from selfres import sheet as sh

    table = pd.DataFrame({"sample": ["gone", "b"], "path": [str(tmp_path / "gone.tif"), "b.tif"],
                          column: ["all", ""]})
    expand = {"channel": sh.expand_channels, "timepoint": sh.expand_timepoints, "series": sh.expand_series}[column]
    out = expand(table)
    assert out["sample"].tolist() == ["gone", "b"] and out[column].tolist() == ["all", ""]


def test_channel_all_counts_the_channels_of_the_row_s_own_image(tmp_path):
    """A file of two images (positions) with 2 and 3 channels: ``series=1, channel=all`` makes
    one sample per channel of image 1."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres.sheet import expand_channels

    two = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(two, ome=True) as tw:
        tw.write(np.zeros((4, 2, 8, 8), "uint16"), metadata={"axes": "ZCYX"})
        tw.write(np.zeros((4, 3, 8, 8), "uint16"), metadata={"axes": "ZCYX"})
    table = pd.DataFrame({"sample": ["p0", "p1"], "path": [str(two)] * 2, "series": ["0", "1"],
                          "channel": ["all", "all"]})
    out = expand_channels(table)
    assert out["sample"].tolist() == ["p0_c0", "p0_c1", "p1_c0", "p1_c1", "p1_c2"]


def test_ids_that_differ_only_in_case_are_one_results_folder_and_are_refused(tmp_path):
    """``Scan1`` and ``scan1`` write one ``results/scan1`` on a case-insensitive file system (macOS by
    default, an SMB share): accepted, one sample's outputs went over the other's (a mutation review)."""
    import numpy as np
    import pandas as pd
    import tifffile

    from selfres.sheet import expand_channels

    p = _sheet(tmp_path, "sample\tpath\nScan1\ta.tif\nb\tb.tif\nscan1\tc.tif\n")
    with pytest.raises(ConfigError, match=r"duplicate sample id\(s\): Scan1 / scan1; ids must be unique \(ids that "
                                          r"differ only in case share one results folder"):
        read_sample_sheet(p, schema=SCHEMA)
    refused: dict = {}
    assert read_sample_sheet(p, schema=SCHEMA, refused=refused)["sample"].tolist() == ["b"]
    assert sorted(refused) == ["Scan1", "scan1"] and "lines 2, 4" in refused["scan1"] and "in case" in refused["Scan1"]
    mixed = _sheet(tmp_path, "sample\tpath\nScan1\ta.tif\na\tb.tif\nscan1\tc.tif\na\td.tif\n")
    with pytest.raises(ConfigError, match=r"duplicate sample id\(s\): Scan1 / scan1, a; ids must be unique \(ids"):
        read_sample_sheet(mixed, schema=SCHEMA)
    same = _sheet(tmp_path, "sample\tpath\na\ta.tif\na\tc.tif\n")  # the same id twice: no word of case
    with pytest.raises(ConfigError, match=r"duplicate sample id\(s\): a; ids must be unique$"):
        read_sample_sheet(same, schema=SCHEMA)
    two = tmp_path / "two.tif"  # an id an expansion makes, in another case
    tifffile.imwrite(two, np.zeros((3, 2, 8, 8), "uint16"), imagej=True, metadata={"axes": "ZCYX"})
    sheet = pd.DataFrame({"sample": ["a", "A_c0"], "path": [str(two), "x.tif"], "channel": ["all", ""]})
    with pytest.raises(ConfigError, match=r"channel=all makes sample id\(s\) A_c0, a_c0 that are already taken"):
        expand_channels(sheet)
    refused = {}
    assert expand_channels(sheet, refused=refused)["sample"].tolist() == ["a_c1"]
    assert refused["A_c0"] == ("sample sheet: sample 'A_c0': a row has this id, and channel=all of sample 'a' "
                               "makes it too (as 'a_c0': ids that differ only in case share one results folder); "
                               "rename one of them")
    assert "makes it too (as 'A_c0'" in refused["a_c0"]
