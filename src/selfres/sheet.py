"""The sample sheet (``config/samples.tsv``): reading, validation, path safety.

``workflow/rules/common.smk`` calls :func:`read_sample_sheet` and
:func:`check_results_dirs`; keeping the logic here makes it testable without
Snakemake. Every problem raises :class:`~selfres.errors.ConfigError` with a message
naming the sheet, the row / sample, the column and what is allowed.
"""

from __future__ import annotations

import codecs
import copy
import csv
import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from io import StringIO
from pathlib import Path

import pandas as pd

from . import __version__
from .errors import ConfigError
from .settings import DEFAULT_SCALE, Settings, merge_settings, parse_scale

__all__ = ["SAMPLE_ID", "FileCounts", "check_model_sources", "check_results_dirs", "check_sample_id", "check_sample_row",
           "expand_channels", "expand_series", "expand_timepoints", "inbox_table", "merge_settings",
           "not_an_option", "read_sample_sheet", "resolve_first_timepoint", "sample_overrides"]

#: Sample ids (contract): they become folder names under ``results/``.
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REQUIRED = ("sample", "path")
#: columns naming a file, resolved against the sheet's folder (a measured PSF too: the same
#: ``psf_path`` in config.yaml is relative to the working directory, as every config path is)
PATH_COLUMNS = ("path", "reference", "train.degradation.psf_path")
#: cells that the settings read as YAML null (no file), left as they are
_NULL_CELLS = ("null", "Null", "NULL", "~")


#: Sample ids longer than this are refused: ``{id}.ome.tif`` written through its temporary
#: sibling (``.{id}.ome.tif.tmp-`` and 8 hex digits) must stay under the 255 bytes of a file name
MAX_SAMPLE_ID_LENGTH = 200
#: an id ending in one part repeated 20 times or more (``img_00000000000000000000``), which
#: Snakemake refuses as a wildcard value (its PeriodicityDetector: 20 to 100 repeats)
_PERIODIC_END = re.compile(r"(.+?)\1{19,}$")


def check_sample_id(sample: str, *, where: str = "") -> str:
    """Return ``sample`` if it is a safe folder name, else raise :class:`ConfigError`.

    Safe: letters, digits, ``_ . -``, starting with a letter or digit (so no ``/``,
    no ``..`` component, no absolute path, nothing a shell would interpret).
    """
    if not isinstance(sample, str) or not SAMPLE_ID.fullmatch(sample):
        raise ConfigError(
            f"{where}sample id {sample!r} is not allowed: use letters, digits, '_', '.', '-', "
            f"starting with a letter or digit (pattern {SAMPLE_ID.pattern}); it becomes a folder "
            "name under results/"
        )
    return sample


def _load_schema(schema: str | os.PathLike | Mapping | None) -> Mapping | None:
    if schema is None or isinstance(schema, Mapping):
        return schema
    return copy.deepcopy(_schema_file(os.fspath(schema), os.stat(schema).st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _schema_file(path: str, mtime_ns: int) -> Mapping:
    """A schema file, parsed once per workflow start (per version of the file); libyaml's
    loader where PyYAML has it (the pure-Python one took ~0.2 s a schema)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _expected_form(err) -> str:
    """What a value failing a schema ``pattern`` should look like, in words: the property's
    ``title`` (else its description, else the pattern itself)."""
    said = str(err.schema.get("title") or err.schema.get("description") or "").strip().rstrip(".")
    if not said:
        return f"of the form {err.validator_value}"
    return "of the form: " + (said if len(said) <= 120 else said[:117] + "...")


#: the config sections a sheet column may override (``train.steps``…): those of :class:`selfres.settings.Settings`
OVERRIDE_SECTIONS = tuple(f.name for f in dataclasses.fields(Settings))


def _schema_message(err) -> str:
    """A one-line account of a jsonschema error: column, value, what is allowed."""
    col = err.path[-1] if err.path else None
    v = err.validator
    if v == "enum":
        allowed = ", ".join(repr(a) for a in err.validator_value if a != "")
        return f"column {col!r}: {err.instance!r} is not allowed; allowed values: {allowed} (or empty)"
    if v == "pattern":
        return f"column {col!r}: {err.instance!r} is not {_expected_form(err)}"
    if v == "additionalProperties":
        # the columns neither named nor per-sample overrides (train.steps…): those are allowed,
        # and naming them here sent users after columns that were right
        import difflib

        known = list(err.schema.get("properties", {}))
        patterns = [re.compile(p) for p in err.schema.get("patternProperties", {})]
        extra = sorted(e for e in set(err.instance) - set(known) if not any(p.search(e) for p in patterns))

        def named(column):
            head, dot, rest = column.partition(".")
            if not dot:
                close = difflib.get_close_matches(column, known, n=1)
            else:  # a mistyped section (trian.steps); a key of a section is checked as the jobs read it
                close = [] if head in OVERRIDE_SECTIONS else difflib.get_close_matches(head, OVERRIDE_SECTIONS, n=1)
            return repr(column) + (f" (did you mean {(close[0] + dot + rest)!r}?)" if close else "")

        return (f"unknown column(s) {', '.join(named(e) for e in extra)}; allowed: "
                f"{', '.join(known)} and per-sample overrides like train.steps")
    if v == "required":
        return f"{err.message}"
    if v == "minLength":
        return f"column {col!r} is empty"
    return f"column {col!r}: {err.message}" if col else err.message


_SCHEMA_TYPES = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                 "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                 "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
                 "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}


def _number(text: str) -> int | float | None:
    """``'70'`` → 70, ``'1e-4'`` → 0.0001 (YAML 1.1 reads that as a string), ``'010'`` → 10
    (not octal); None when the text is no number."""
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return None


def coerce_command_line_strings(config: dict, *, schema: str | os.PathLike | Mapping) -> dict:
    """Turn strings the schema does not take as strings into the values they write, in place.

    ``snakemake --config 'isotropic={"steps": 70}'`` hands a nested value over as the string
    ``'70'`` (Snakemake reads it with YAML's base loader), which the schema then refused
    (``'70' is not of type 'integer'``). A string where the schema wants a number, a boolean,
    null or a list is read as YAML and kept only when it has such a type; a string the
    schema allows stays a string. A number where the schema wants one of a list of strings
    (``infer.ngff_version: 0.5`` written without quotes) becomes that string.
    """
    import yaml

    def coerce(value, sch):
        if not isinstance(sch, Mapping):
            return value
        if isinstance(value, dict):
            props = sch.get("properties") or {}
            for key in list(value):
                if key in props:
                    value[key] = coerce(value[key], props[key])
            return value
        if isinstance(value, list):
            return [coerce(v, sch.get("items")) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and sch.get("type") == "string":
            # YAML reads `ngff_version: 0.5` as a number; the schema's choices are its text
            return str(value) if str(value) in (sch.get("enum") or ()) else value
        if not isinstance(value, str):
            return value
        types = sch.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if "null" in types and value.strip() in ("null", "~", "None", ""):
            return None
        if not types or "string" in types:
            return value
        parsed = _number(value) if {"integer", "number"} & set(types) else None
        if parsed is None:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        if isinstance(parsed, (dict, list)):
            parsed = coerce(parsed, sch)
        return parsed if any(_SCHEMA_TYPES.get(t, lambda v: False)(parsed) for t in types) else value

    return coerce(config, _load_schema(schema))


def check_config(config: Mapping, *, schema: str | os.PathLike | Mapping) -> None:
    """Refuse a config its schema does not allow with one line per problem (at most five),
    naming the key, the value and what is allowed.

    Run before Snakemake's own ``validate`` (which fills the defaults), whose message for
    one mistyped key prints the whole schema: over a thousand lines.

    Raises
    ------
    ConfigError
    """
    import jsonschema

    def non_finite(node, path=()):  # YAML's .nan and .inf: every bound compares false with nan
        if isinstance(node, Mapping):
            for k, v in node.items():
                yield from non_finite(v, (*path, str(k)))
        elif isinstance(node, (list, tuple)):
            for v in node:
                yield from non_finite(v, path)
        elif isinstance(node, float) and not math.isfinite(node):
            yield ".".join(path), node

    for key, value in non_finite(config):
        raise ConfigError(f"config: {key}: expected a finite number, got {value!r}")
    schema_d = _load_schema(schema)
    validator = jsonschema.validators.validator_for(schema_d)(schema_d)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: [str(p) for p in e.path])
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError("config: " + "; ".join(_config_message(e) for e in errors[:5]) + more)
    # The rules between values (method psf needs psf_path, infer.shards needs chunks and
    # NGFF 0.5…) are checked per sample, on the config merged with its sheet row
    # (check_sample_row): a sheet column may give what the config leaves out.
    problem = snakemake_pattern_problem(config.get("results") or "")
    if problem:  # it is part of every job's output: Snakemake stopped in planning, naming no key
        raise ConfigError(f"config: results: {problem}")
    try:
        if config.get("scale"):  # what a pattern cannot say clearly: 1,1,1 restores nothing
            parse_scale(config["scale"], name="scale")
    except ConfigError as exc:
        raise ConfigError(f"config: {exc}") from None


def _config_message(err) -> str:
    """A one-line account of a jsonschema error in the config: dotted key, value, what is allowed."""
    import difflib

    key = ".".join(str(p) for p in err.path)
    value = repr(err.instance)
    value = value if len(value) <= 80 else value[:77] + "..."
    if err.validator == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        parts = []
        for extra in sorted(set(err.instance) - set(known)):
            name = f"{key}.{extra}" if key else extra
            close = difflib.get_close_matches(extra, known, n=1)
            parts.append(f"unknown key {name!r}" + (f" (did you mean {(key + '.' if key else '') + close[0]!r}?)"
                                                   if close else ""))
        return "; ".join(parts) + f"; allowed{' in ' + key if key else ''}: {', '.join(known)}"
    if err.validator == "enum":
        return f"{key}: {value} is not allowed; allowed values: {', '.join(repr(a) for a in err.validator_value)}"
    if err.validator == "pattern":
        return f"{key}: {value} is not {_expected_form(err)}"
    message = err.message if len(err.message) <= 200 else err.message[:197] + "..."
    if err.validator == "type" and key and err.instance is None:  # `infer:` with every key under it commented out
        message = ("empty (every key under it commented out?): delete the line, or indent a key under it"
                   if err.schema.get("type") == "object" else
                   f"no value given: delete the line for the default, or give one{_written_like(err.schema)}")
    elif err.validator == "type" and key:  # a list where text goes (scale: [1, 2, 2]) or text where a list goes
        message += _written_like(err.schema)
    elif err.validator in ("minItems", "maxItems") and err.schema.get("minItems") == err.schema.get("maxItems"):
        n = err.schema["minItems"]  # psf_sigma_um: [2, 0.5] "is too short" said neither how many nor which
        message += f" (give {n} values{', z,y,x' if n == 3 else ''})"
    return f"{key}: {message}" if key else message


def _written_like(spec: Mapping) -> str:
    """How a value of the config key ``spec`` is written: its default's YAML (``"2,2,2"``,
    ``[32, 128, 128]``), or for an empty or null default the shape it takes; ``""`` if neither."""
    types = [t for t in (spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")])
             if t != "null"]
    if len(types) != 1:  # (inbox_columns' cells: text, a number, true or false, a list)
        return ""
    default = spec.get("default")
    if isinstance(default, str) or (default not in (None, [], {}) and not isinstance(default, dict)):
        return f" (write it like {json.dumps(default)})"
    if "array" in types:
        n = spec.get("minItems")
        return f" (write it as a list in brackets{f' of {n} values' if n else ''}, e.g. [a, b{', c' if n == 3 else ''}])"
    if "object" in types:
        return " (write it as keys indented under it, or as {key: value})"
    return ""


def sample_overrides(row: Mapping[str, str]) -> dict:
    """A row's per-sample override columns (``train.steps``, ``train.degradation.method``…)
    as nested settings sections, values read as YAML (``50`` → 50, ``true`` → True).

    Numbers are read as written, as ``--config`` reads them: YAML 1.1 read ``0042`` as octal
    (34) and ``1:30`` as base 60 (90), without a word; ``1:30`` stays text, which the settings'
    check then refuses where a number is wanted, naming the key."""
    import math

    import yaml

    out: dict = {}
    for col, value in row.items():
        value = str(value).strip()
        if "." not in str(col) or not value:
            continue
        node = out
        *parents, leaf = str(col).split(".")
        for p in parents:
            node = node.setdefault(p, {})
        number = _number(value)
        if number is not None and math.isfinite(number):
            node[leaf] = number
        elif _SEXAGESIMAL.fullmatch(value):
            node[leaf] = value
        else:
            try:
                node[leaf] = yaml.safe_load(value)
            except yaml.YAMLError:
                node[leaf] = value  # the settings' own check names the key and what is allowed
    return out


#: what YAML 1.1 reads as a base-60 number (``1:30`` → 90)
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


def _resolve(p: str, base: str) -> str:
    """Sample paths: relative to the sheet's folder (``~``: the home folder); inside the
    working directory they stay relative (also when spelled through a link to it, so that
    another spelling of the same sheet reruns nothing). ``..`` goes up from where a folder
    really is, as the file system does: through a sheet folder that is a link, to its
    target's parent."""
    p = os.path.expanduser(p)
    joined = p if os.path.isabs(p) else os.path.join(base, p)
    full = os.path.normpath(joined)
    if ".." in Path(p).parts:  # a lexical '..' would drop a linked folder's real parent
        head, name = os.path.split(joined)
        full = os.path.join(os.path.realpath(head), name)
    rel = os.path.relpath(full)
    if not rel.startswith(".."):
        return not_an_option(rel)
    real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    rel = os.path.relpath(real, os.path.realpath(os.getcwd()))  # the file itself may be a link: kept
    return full if rel.startswith("..") else not_an_option(rel)


def not_an_option(path: str) -> str:
    """``path`` as a command-line argument: a relative path that starts with ``-`` (``-scan.tif``)
    is made absolute, which no command reads as an option (``./-scan.tif`` would do too, but
    Snakemake discourages a leading ``./`` in its file paths)."""
    return os.path.abspath(path) if str(path).startswith("-") else path


#: byte-order marks of the Unicode encodings a sheet may come in (UTF-32 first: its
#: little-endian mark begins with UTF-16's)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _sheet_text(path: str) -> str:
    """The sheet's text: UTF-8 (with or without a byte-order mark), or UTF-16 / UTF-32 with one
    (Excel's "Unicode Text" export is UTF-16). Any other encoding is refused, naming the line and
    the byte, rather than guessed: a code page read as another turns ``Müller`` into a path that
    does not exist."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"sample sheet {path} cannot be read ({exc.strerror or exc})") from None
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8-sig")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8-sig":
            raise ConfigError(f"sample sheet {path} starts with a {encoding.upper()} byte-order mark but is "
                              f"not {encoding.upper()} text ({exc.reason} at byte {exc.start})") from None
        line_no = data.count(b"\n", 0, exc.start) + 1
        line = data.split(b"\n")[line_no - 1].rstrip(b"\r")
        shown = line.decode("utf-8", errors="backslashreplace").replace("\t", "\\t")[:80]
        raise ConfigError(
            f"sample sheet {path}, line {line_no}: not UTF-8 text (byte 0x{data[exc.start]:02x} in \"{shown}\"); "
            f"a spreadsheet's 'Text (Tab delimited)' is written in the computer's code page: save the sheet "
            f"as 'Unicode Text' (Excel) or as tab-separated UTF-8 (LibreOffice: Text CSV, character set "
            f"UTF-8, field delimiter {{Tab}})") from None
    if "\x00" in text:  # UTF-16 without its byte-order mark reads as UTF-8 with a NUL after each letter
        line_no = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"sample sheet {path}, line {line_no}: holds NUL bytes: not a text file, or UTF-16 text "
                          f"without a byte-order mark; save it as tab-separated UTF-8 or as Excel's 'Unicode Text'")
    return text


def _read_table(path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """The sheet's header, its rows and each row's line number (1-based, in the file).

    A line whose first cell starts with ``#`` is a comment (before the header too); a ``#``
    anywhere else is text (``../data/run#3.tif``). Blank lines and lines of empty cells are
    skipped. Empty cells after the last column (trailing tabs, as spreadsheets export them)
    are dropped, from the header as well; a row with a non-empty cell beyond the header's
    columns is refused, naming its line, rather than shifting or losing a value.
    """
    text = _sheet_text(path)
    try:
        records = []
        reader = csv.reader(StringIO(text, newline=""), delimiter="\t", strict=True)  # unbalanced quote: error
        start = 1
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1
    except (csv.Error, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"sample sheet {path}, line {start}: cannot be read as a tab-separated table ({first}); "
                          'a cell that starts with a double quote is read as quoted text: write such a name '
                          'in quotes with its quotes doubled ("""best"" scan.tif")') from None
    records = [(n, c) for n, c in records if any(x.strip() for x in c) and not c[0].strip().startswith("#")]
    if not records:
        raise ConfigError(f"sample sheet {path} is empty; it needs a header line with "
                          f"the columns {', '.join(REQUIRED)}")
    (_, header), body = records[0], records[1:]
    header = [c.strip() for c in header]
    while header and not header[-1]:
        header.pop()
    rows, lines = [], []
    for n, cells in body:
        quoted = next((c for c in cells if "\n" in c or "\r" in c or "\t" in c), None)
        if quoted is not None:
            raise ConfigError(f"sample sheet {path}, line {n}: a quoted value spans a tab or a line break "
                              f"({quoted[:40]!r}...): an unbalanced quote (\")? Sheet values need no quotes")
        extra = [c.strip() for c in cells[len(header):]]
        if any(extra):
            value = next(c for c in extra if c)
            raise ConfigError(
                f"sample sheet {path}, line {n}: {len(cells)} tab-separated fields, but the header has "
                f"{len(header)} columns ({', '.join(header)}); field {len(header) + extra.index(value) + 1} "
                f"{value!r} has no column (a tab inside a value, or a column name missing from the header?)")
        rows.append(cells[: len(header)] + [""] * (len(header) - len(cells)))
        lines.append(n)
    return header, rows, lines


#: Said where two ids differ only in case: one folder on macOS or an SMB share
CASE_NOTE = (" (ids that differ only in case share one results folder on a case-insensitive file system, as "
             "macOS's or a Windows share's)")


def clashing_ids(ids) -> list[list[str]]:
    """The sample ids that another id equals, letter case aside, as groups of their spellings (each
    sorted, the groups by their first): on a case-insensitive file system (macOS by default, an SMB
    share) ``Scan1`` and ``scan1`` write one ``results/scan1``; a group of one spelling is a repeat."""
    counts: dict[str, int] = {}
    spellings: dict[str, set[str]] = {}
    for sid in map(str, ids):
        counts[sid.casefold()] = counts.get(sid.casefold(), 0) + 1
        spellings.setdefault(sid.casefold(), set()).add(sid)
    return sorted(sorted(spellings[key]) for key, n in counts.items() if n > 1)


def read_sample_sheet(path: str | os.PathLike, *, schema: str | os.PathLike | Mapping | None = None,
                      config_settings: Mapping | None = None,
                      refused: dict[str, str] | None = None) -> pd.DataFrame:
    """Read and validate the sample sheet.

    Parameters
    ----------
    path
        Tab-separated sheet; a line whose first cell starts with ``#`` is a comment (a ``#``
        elsewhere is text, as in ``run#3.tif``); empty cells become ``""``; trailing
        empty cells are ignored.
    schema
        JSON schema of one row (``workflow/schemas/samples.schema.yaml``), as a path
        or a mapping; ``None`` checks only the required columns and sample ids.
    config_settings
        The config's stage sections (``train``, ``infer``…): each row's overrides are
        checked merged into them, as its jobs will read them (:func:`check_sample_row`).
    refused
        Given (config ``bad_rows: fail_alone``), a row that fails the schema or its checks,
        and every row of a duplicated id, is left out of the table and its message stored
        here under its sample id, instead of raised; the caller fails that sample alone.
        Their acquisitions' paths are in the table's ``attrs["refused_paths"]`` (an inbox
        scan leaves those files to their rows). What no sample can own still raises: an
        unreadable sheet, its header, an id that cannot be a folder name, a mistake of the
        config itself.

    Returns
    -------
    pandas.DataFrame
        All cells are stripped strings; ``path``, ``reference`` and
        ``train.degradation.psf_path`` are resolved against the sheet's folder (kept
        relative when inside the working directory).

    Raises
    ------
    ConfigError
        Missing or unreadable sheet, missing columns, a row with more fields than the
        header, a row that fails the schema, an unsafe or duplicate sample id (without
        ``refused``: the first of these).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise ConfigError(f"sample sheet {path} does not exist (config key 'samples')")
    header, rows, lines = _read_table(path)
    dup_cols = sorted({c for c in header if c and header.count(c) > 1})
    if dup_cols or "" in header:
        empty = [f"column {i + 1} has no name" for i, c in enumerate(header) if not c]
        raise ConfigError(f"sample sheet {path}: duplicate or empty column names "
                          f"{'; '.join([*(repr(c) for c in dup_cols), *empty])}")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        joined = len(header) == 1 and any(sep in header[0] for sep in (",", ";", " "))
        raise ConfigError(f"sample sheet {path}: missing required column(s) {', '.join(missing)} "
                          f"(found: {', '.join(header) or 'none'})"
                          + ("; the sheet must be tab-separated, and this header has no tab: save it as "
                             "tab-separated text (spreadsheets: 'Text (tab delimited)' or .tsv)" if joined else ""))
    sheet = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    sheet = sheet.fillna("").astype(str)
    for c in sheet.columns:
        sheet[c] = sheet[c].str.strip()
    if "scale" in sheet:  # '2, 2, 2' as voxel_size takes it (a helper's was refused), written as '2,2,2'
        sheet["scale"] = sheet["scale"].str.replace(r"\s+", "", regex=True)
    validator, bounds = _row_validator(schema), _config_schema_beside(schema)
    # a column the sheet cannot have is the header's mistake, not a row's: it stops the run as a missing
    # column does, with bad_rows: fail_alone too (a walkthrough: 'trian.steps' refused every row, each
    # "fails alone, the others run" while none ran)
    unknown = [e for e in (validator.iter_errors({c: "" for c in header}) if validator is not None else ())
               if e.validator == "additionalProperties"]
    if unknown:
        raise ConfigError(f"sample sheet {path}: {_schema_message(unknown[0])}")
    for i, row in zip(lines, sheet.to_dict(orient="records")):
        where = f"sample sheet {path}, line {i}: "
        if refused is not None:
            check_sample_id(row["sample"], where=where)  # no folder to fail in: stops the run
        try:
            check_sample_row(row, validator=validator, where=where, config_settings=config_settings,
                             config_schema=bounds)
        except ConfigError as exc:
            if refused is None or str(exc).startswith("config: "):  # "config:": every sample's mistake
                raise
            refused.setdefault(row["sample"], str(exc))
    groups = clashing_ids(sheet["sample"])  # Scan1 / scan1 named together, beside an exact repeat
    if groups and refused is None:
        raise ConfigError(f"sample sheet {path}: duplicate sample id(s): "
                          f"{', '.join(' / '.join(g) for g in groups)}; ids must be unique"
                          + CASE_NOTE * any(len(g) > 1 for g in groups))
    for group in groups:  # which row was meant? neither runs
        at = ", ".join(str(i) for i, s in zip(lines, sheet["sample"]) if s.casefold() == group[0].casefold())
        for sid in group:
            refused[sid] = (f"sample sheet {path}, lines {at}: sample {sid!r}: duplicate sample id; ids must be "
                            "unique" + CASE_NOTE * (len(group) > 1))
    base = os.path.dirname(os.path.abspath(path))
    for col in PATH_COLUMNS:
        if col in sheet:
            sheet[col] = [_resolve(p, base) if p and p not in _NULL_CELLS else p for p in sheet[col]]
    sheet.attrs["row_ids"] = list(sheet["sample"])  # every row's id in line order, refused ones too
    if refused:
        gone = sheet["sample"].isin(list(refused))
        paths = [p for p in sheet.loc[gone, "path"] if p]
        sheet = sheet[~gone].reset_index(drop=True)
        sheet.attrs["refused_paths"] = paths  # an inbox scan leaves these files to their (refused) rows
    return sheet


def _config_schema_beside(schema: str | os.PathLike | Mapping | None) -> Mapping | None:
    """The config schema (``config.schema.yaml``) beside the sheet's row schema file, whose
    bounds a sheet's override columns must keep as the config's values do; ``None`` when the
    row schema is not a file there."""
    if schema is None or isinstance(schema, Mapping):
        return None
    path = os.path.join(os.path.dirname(os.fspath(schema)), "config.schema.yaml")
    return _load_schema(path) if os.path.isfile(path) else None


def _override_bound_problem(overrides: Mapping, parsed: Mapping, config_schema: Mapping) -> str | None:
    """The first override (``train.learning_rate``…) whose value, as the jobs will read it
    (``parsed``: the settings after coercion), the config schema's bounds refuse: a sheet cell
    is text, so its row schema cannot hold the ranges the config's values are checked against."""
    import jsonschema

    def leaves(node, path=()):
        for key, value in node.items():
            if isinstance(value, Mapping):
                yield from leaves(value, (*path, key))
            else:
                yield (*path, key)

    for path in leaves(overrides):
        sub, value = config_schema, parsed
        for part in path:
            sub = (sub.get("properties") or {}).get(part) if isinstance(sub, Mapping) else None
            value = value.get(part) if isinstance(value, Mapping) else None
            if sub is None:
                break
        if sub is None:
            continue
        value = json.loads(json.dumps(value))  # tuples as lists, as YAML gives them
        for err in jsonschema.validators.validator_for(config_schema)(sub).iter_errors(value):
            return f"{'.'.join(path)}: {err.message}"
    return None


def _row_validator(schema: str | os.PathLike | Mapping | None):
    """A jsonschema validator of one sheet row, or ``None`` without a schema."""
    schema_d = _load_schema(schema)
    if schema_d is None:
        return None
    import jsonschema

    return jsonschema.validators.validator_for(schema_d)(schema_d)


#: What Snakemake reads in a job's input path: ``{name}`` a wildcard, ``<name>`` a path variable
#: (Snakemake 9). A file so named cannot be a job's input: the run would stop while its jobs
#: are planned, for every sample, with Snakemake's message naming none.
_SNAKEMAKE_PATTERN = re.compile(r"[{}]|<[a-z][a-z0-9_]*>")


def snakemake_pattern_problem(path: str) -> str | None:
    """Why ``path`` cannot be a Snakemake job's input (``scan{2}.tif``, ``scan<run2>.tif``), or ``None``."""
    found = _SNAKEMAKE_PATTERN.search(str(path))
    if found is None:
        return None
    return (f"{path}: its name holds {found.group()!r}, which Snakemake reads as a wildcard or path variable "
            "in a job's input; rename the file (or folder) without '{', '}' and '<name>'")


def periodic_end(sample_id: str) -> bool:
    """Whether an id ends in one part repeated 20 times or more, which Snakemake's wildcard
    matching refuses for every sample of the run (``PeriodicWildcardError``)."""
    return bool(_PERIODIC_END.search(sample_id))


def check_sample_row(row: Mapping[str, str], *, validator=None, where: str = "", who: str | None = None,
                     config_settings: Mapping | None = None, config_schema: Mapping | None = None) -> None:
    """Refuse one sample row (sheet line or inbox acquisition) that would fail its jobs.

    Checks the id, the row schema (``validator``, from :func:`_row_validator`), a non-empty
    ``path``, and parses ``voxel_size``, ``scale`` and the per-sample overrides as the jobs
    will — merged into ``config_settings`` (the config's stage sections) when given, so that
    a value that needs another (``infer.shards`` and the config's ``ngff_version``) is judged
    with it — so that a bad value stops the run before any job, as the same value in
    config.yaml does; with ``config_schema`` the overrides must also keep its bounds
    (``train.learning_rate`` above 0…), as the config's own values must.

    Raises
    ------
    ConfigError
        Starting with ``where`` and ``who`` (default: the sample's id), naming the column.
    """
    check_sample_id(row["sample"], where=where)
    where += f"sample {row['sample']!r}: " if who is None else who
    if len(row["sample"]) > MAX_SAMPLE_ID_LENGTH:
        raise ConfigError(f"{where}the sample id is {len(row['sample'])} characters long; at most "
                          f"{MAX_SAMPLE_ID_LENGTH} are allowed (the files written for it add to its length, and a "
                          "file name has at most 255 bytes): give it a shorter id")
    if periodic_end(row["sample"]):
        raise ConfigError(f"{where}the sample id ends in one part repeated 20 times or more, which Snakemake "
                          "refuses for every sample of the run (PeriodicWildcardError): give it another id")
    if validator is not None:
        errors = sorted(validator.iter_errors(dict(row)), key=lambda e: list(e.path))
        if errors:
            raise ConfigError(f"{where}{_schema_message(errors[0])}")
    if not row.get("path"):
        raise ConfigError(f"{where}column 'path' is empty")
    for column in PATH_COLUMNS:
        problem = snakemake_pattern_problem(row.get(column) or "")
        if problem:
            raise ConfigError(f"{where}column {column!r}: {problem}")
    try:
        from .settings import parse_scale, parse_settings, parse_voxel_size

        parse_voxel_size(row.get("voxel_size", ""), name="column 'voxel_size':")
        if row.get("mode") != "isotropic":  # scale is enhance's (an isotropic row ignores it)
            parse_scale(row.get("scale", ""), name="column 'scale':")
        overrides = sample_overrides(row)
        parsed = parse_settings(merge_settings(json.loads(json.dumps(config_settings)), overrides) if config_settings
                                else overrides)
        if config_schema is not None:
            from .settings import to_dict

            problem = _override_bound_problem(overrides, to_dict(parsed), config_schema)
            if problem:
                raise ConfigError(problem)
    except ConfigError as exc:
        if config_settings and _fails_alone(config_settings, str(exc)):  # the config's own mistake
            raise ConfigError(f"config: {exc}") from None
        raise ConfigError(f"{where}{exc}") from None


def _fails_alone(config_settings: Mapping, message: str) -> bool:
    """Whether the config's stage sections alone fail with ``message`` (a row that gives
    none of the values involved is not at fault)."""
    from .settings import parse_settings

    try:
        parse_settings(json.loads(json.dumps(config_settings)))
    except ConfigError as exc:
        return str(exc) == message
    return False


#: sheet columns that name one acquisition's own files or region: never shared by all inbox rows
INBOX_OWN_COLUMNS = ("sample", "path", "reference", "training_fov")


def _cell_text(value) -> str:
    """A config value as the sheet cell that says the same (``true``, ``1,2,2``, ``50``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell_text(v) for v in value)
    return "" if value is None else str(value).strip()


def inbox_table(rows: Iterable[Mapping[str, str]], columns: Mapping | None = None, *,
                schema: str | os.PathLike | Mapping | None = None, config_settings: Mapping | None = None
                ) -> pd.DataFrame:
    """The inbox's acquisitions (:func:`selfres.inbox.scan_inbox`'s rows) as sheet rows, each
    given the config's ``inbox_columns``: sheet columns shared by every acquisition the inbox
    finds (``channel: all``, ``timepoint: all``, ``series: all``, ``mode``, ``scale``,
    ``voxel_size``, or a per-sample override such as ``train.steps``).

    The columns are checked like a sheet's (``schema``: the row schema), once for all rows
    (so a bad value stops even a night whose inbox is empty) and again per acquisition.

    Raises
    ------
    ConfigError
        Naming ``inbox_columns``, the column and what is allowed; or the acquisition.
    """
    columns = {str(k).strip(): _cell_text(v) for k, v in (columns or {}).items()}
    own = [c for c in columns if c in INBOX_OWN_COLUMNS]
    if own:
        raise ConfigError(f"config inbox_columns: {', '.join(repr(c) for c in own)} cannot be shared by all inbox "
                          "acquisitions (the sample id and path come from each file; a reference or training "
                          "FOV belongs to one acquisition: give it its own sample sheet row)")
    validator, bounds = _row_validator(schema), _config_schema_beside(schema)
    check_sample_row({"sample": "inbox", "path": "inbox", **columns}, validator=validator,
                     where="config inbox_columns: ", who="", config_settings=config_settings, config_schema=bounds)
    if columns.get("model_from") == FIRST_TIMEPOINT and columns.get("timepoint") != "all":
        raise ConfigError(f"config inbox_columns: model_from {FIRST_TIMEPOINT} names time point 0 of each "
                          "acquisition's series, so it needs timepoint: all beside it")
    out = []
    for row in rows:
        full = {**columns, **{k: str(v) for k, v in row.items()}}
        check_sample_row(full, validator=validator, where=f"inbox acquisition {row.get('path', '')}: ",
                         config_settings=config_settings, config_schema=bounds)
        out.append(full)
    return pd.DataFrame(out, columns=["sample", "path", *columns], dtype=str).fillna("")


class FileCounts:
    """What the ``all`` expansions read from acquisition headers (series numbers, channel and
    time-point counts), kept in a JSON file between evaluations of the Snakefile.

    Snakemake evaluates the Snakefile once per job; reading a large OME-TIFF's header takes
    seconds (measured: 0.4 s for its series, 1.3 s for its channels and 1.0 s for its time
    points on 20,000 pages), which every job of every sample of that file would pay again.
    An entry is used only while its file has the same size and modification time; Zarr
    stores (folders, cheap to read) are not cached. Only the run's main process writes the
    file (:meth:`save`), atomically; a missing or unreadable file is an empty cache.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.entries: dict = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            import json

            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def get(self, kind: str, path: str, series: int | None, compute):
        """``compute()``, or its value recorded for this ``path`` as it is now."""
        try:
            st = os.stat(path)
        except OSError:
            return compute()
        if not os.path.isfile(path):
            return compute()
        key = f"{kind}|{os.path.realpath(path)}|{series}|{__version__}"  # a new reader may count otherwise
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return hit["value"]
        value = compute()
        self.entries[key] = {"stamp": stamp, "value": value if value is None or isinstance(value, int) else list(value)}
        self.changed = True
        return value

    def save(self) -> None:
        """Write the cache when something was added (atomically; a failure is only logged)."""
        if self.path is None or not self.changed:
            return
        import json
        import logging

        from .atomic import write_text_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.entries))
            self.changed = False
        except OSError as exc:
            logging.getLogger("selfres").warning("file counts cache %s not written: %s", self.path, exc)


def _counted(counts: "FileCounts | None", kind: str, path: str, series: int | None, compute):
    return compute() if counts is None else counts.get(kind, path, series, compute)


def _io_reader(name: str):
    """The reader ``selfres.io.<name>``, imported at its first call: zarr and dask take about a
    second to import, which every workflow start (and every Slurm job's) paid for sheets that
    ask no file for its series, channels or time points."""
    def read(*args, **kwargs):
        from . import io

        return getattr(io, name)(*args, **kwargs)

    return read


def expand_series(sheet: pd.DataFrame, counts: FileCounts | None = None, *,
                  refused: dict[str, str] | None = None, made: set[str] | None = None) -> pd.DataFrame:
    """Rows with ``series = all`` become one sample per image of their TIFF (its series
    numbers: an OME-TIFF's positions, say): ``{sample}_s0``, ``{sample}_s1``… with ``series``
    0, 1… (one model each). Expanded before channels and time points, which are counted in the
    chosen image. A file that cannot be read keeps its row, whose first job then fails with the
    reader's message.

    Raises
    ------
    ConfigError
        When an expanded id is already a sample of the sheet (without ``refused``, as in
        :func:`expand_channels`).
    """
    series_numbers = _io_reader("series_numbers")
    return _expand_all(sheet, "series", lambda row: _counted(counts, "series", row["path"], None,
                                                            lambda: series_numbers(row["path"])), "s", refused,
                       made)


def expand_channels(sheet: pd.DataFrame, counts: FileCounts | None = None, *,
                    refused: dict[str, str] | None = None, made: set[str] | None = None) -> pd.DataFrame:
    """Rows with ``channel = all`` become one sample per channel of their file:
    ``{sample}_c0``, ``{sample}_c1``… with ``channel`` 0, 1… (one model each, as every
    sample has). A file that cannot be read keeps its row, whose first job then fails
    with the reader's message.

    ``refused`` (config ``bad_rows: fail_alone``: the ids :func:`read_sample_sheet` refused,
    with their messages): an expanded id that another row has too, or that is refused, fails
    alone — all rows of it are left out and the message stored here — instead of raising.
    The same holds for :func:`expand_series` and :func:`expand_timepoints`.

    Raises
    ------
    ConfigError
        When an expanded id is already a sample of the sheet (without ``refused``).
    """
    channel_count = _io_reader("channel_count")
    return _expand_all(sheet, "channel", lambda row: range(_counted(
        counts, "channels", row["path"], _series_of(row), lambda: channel_count(row["path"], series=_series_of(row)))),
        "c", refused, made)


def expand_timepoints(sheet: pd.DataFrame, counts: FileCounts | None = None, *,
                      refused: dict[str, str] | None = None, made: set[str] | None = None) -> pd.DataFrame:
    """Rows with ``timepoint = all`` become one sample per time point of their file:
    ``{sample}_t0``, ``{sample}_t1``… with ``timepoint`` 0, 1… (one model each: every time
    point is trained on itself). After :func:`expand_channels`, a row with both ``all``
    gives ``{sample}_c0_t0``… A file that cannot be read keeps its row, whose first job then
    fails with the reader's message.

    Raises
    ------
    ConfigError
        When an expanded id is already a sample of the sheet (without ``refused``, as in
        :func:`expand_channels`).
    """
    timepoint_count = _io_reader("timepoint_count")
    return _expand_all(sheet, "timepoint", lambda row: range(_counted(
        counts, "timepoints", row["path"], _series_of(row),
        lambda: timepoint_count(row["path"], series=_series_of(row)))), "t", refused, made)


def choice_problems(sheet: pd.DataFrame, counts: FileCounts | None = None) -> dict[str, str]:
    """``{sample: problem}`` for the rows whose image, channel or time point the sample's
    normalise would refuse, found from the file's header (through ``counts``, as the ``all``
    expansions count them): one that the file does not have (``"channel 3 is out of range:
    the file has 2 channels (allowed 0..1)"``), or none chosen where the file holds several
    (``"has 2 channels; choose one with channel=0..1 (…)"``), in the reader's words and in its
    order (image, time point, channel). The workflow says these when a run starts (a dry run
    too), where the sample's first job would find them only later; and so is a file there that
    cannot be read (``"is truncated or corrupt (…)"``, the reader's words). A file that is not
    there yet (the demo's, before its rule runs) is left to its job."""
    from .errors import (ChannelNotChosen, InputError, SelfresError, SeriesNotChosen, TimepointNotChosen,
                         out_of_range, series_out_of_range)

    series_numbers, channel_count = _io_reader("series_numbers"), _io_reader("channel_count")
    columns = (("timepoint", "timepoints", "time point", _io_reader("timepoint_count"), TimepointNotChosen),
               ("channel", "channels", "channel", channel_count, ChannelNotChosen))
    problems = {}
    for row in sheet.to_dict(orient="records"):
        path, series = row.get("path") or "", _series_of(row)
        try:
            numbers = _counted(counts, "series", path, None, lambda: series_numbers(path))
            if series is None and len(numbers) > 1:
                try:  # any read without a series: the reader's message, which lists the images
                    channel_count(path)
                except SeriesNotChosen as exc:
                    problems[row["sample"]] = exc.what
                continue
            if series is not None and series not in numbers:
                problems[row["sample"]] = series_out_of_range(series, numbers)
                continue
            for column, kind, noun, count, not_chosen in columns:
                value = str(row.get(column) or "").strip()
                if value and not value.isdigit():
                    continue
                n = _counted(counts, kind, path, series, lambda: count(path, series=series))
                if not value and n > 1:
                    problems[row["sample"]] = not_chosen(path, n).what
                elif value and int(value) >= n:
                    problems[row["sample"]] = out_of_range(noun, int(value), n)
                else:
                    continue
                break
        except InputError as exc:  # the header cannot be read: normalise will say the same
            if os.path.exists(path):
                problems[row["sample"]] = exc.what
        except PermissionError:  # the microscope's account owns it, not the one that runs selfres
            problems[row["sample"]] = ("cannot be read by this account (permission denied); give the account that "
                                       "runs selfres read access to it (and its folders)")
        except (SelfresError, OSError, ValueError):
            continue  # its job reads the file and says what is wrong
    return problems


def voxel_size_slips(sheet: pd.DataFrame, counts: FileCounts | None = None) -> dict[str, str]:
    """``{sample: warning}`` for the rows whose ``voxel_size`` cell is
    :data:`~selfres.settings.VOXEL_SIZE_SLIP_RATIO` times or more unlike the voxel size their
    file records, on an axis (a unit slip: nm typed for µm), read from the file's header
    (through ``counts``, as :func:`choice_problems` reads it). The workflow says these when a run
    starts (a dry run too): the sample's qc flags it only after its training. Rows of a later
    image of a file (``series`` above 0), files not there or unreadable, and cells that do not
    parse are left to the sample's jobs."""
    from .settings import parse_triple, voxel_size_slip_text, voxel_size_unlike_file

    read_voxel_size, describe = _io_reader("read_voxel_size"), _io_reader("describe_acquisition")
    slips = {}
    for row in sheet.to_dict(orient="records"):
        path, cell = row.get("path") or "", str(row.get("voxel_size") or "").strip()
        if not cell or (_series_of(row) or 0) > 0 or not os.path.isfile(path) and not os.path.isdir(path):
            continue
        try:
            given = parse_triple(cell, name="voxel_size", kind=float)
            recorded = _counted(counts, "voxel_size", path, None, lambda: read_voxel_size(path))
        except Exception:  # noqa: BLE001 - a hint: the sample's normalise says what is wrong in its own words
            continue
        if not voxel_size_unlike_file(given, recorded):
            continue
        if not voxel_size_unlike_file((recorded[0], *given[1:]), recorded):  # unlike on z alone
            # a single plane's recorded z is its y pixel standing in (io reads no z step there): the given
            # z is not compared with it, as normalise and qc do not (they do not flag it)
            try:
                if _row_shape(counts, path, row, describe)[:1] == (1,):
                    continue
            except Exception:  # noqa: BLE001 - as above
                pass
        slips[row["sample"]] = voxel_size_slip_text(given, recorded)
    return slips


def _row_shape(counts: FileCounts | None, path: str, row: dict, describe) -> tuple[int, ...]:
    """The ZYX shape of ``row``'s image of ``path`` (its series; the file's only one), from the
    header (``describe``: :func:`selfres.io.describe_acquisition`, through ``counts``); ``()`` where
    the file has no such image. Raises as the reader does."""
    shapes = _counted(counts, "shapes", path, None,
                      lambda: [int(n) for d in describe(path) for n in (d["series"], *d["shape"])])
    by_series = {shapes[i]: tuple(shapes[i + 1:i + 4]) for i in range(0, len(shapes), 4)}
    return (by_series.get(_series_of(row) or 0, ()) if len(by_series) > 1
            else next(iter(by_series.values()), ()))


def isotropic_voxel_problems(sheet: pd.DataFrame, counts: FileCounts | None = None, *,
                             default_mode: str = "enhance") -> dict[str, str]:
    """``{sample: problem}`` for the ``isotropic`` rows whose voxel size — the sheet's
    ``voxel_size`` cell, else the file's header (through ``counts``, as :func:`voxel_size_slips`
    reads it) — gives no anisotropy factor isotropic mode accepts: none known, z finer than the
    lateral pixel, a factor under :data:`~selfres.settings.MIN_ISOTROPIC_FACTOR` or over
    :data:`~selfres.settings.MAX_ISOTROPIC_FACTOR` (the crop step's own words,
    :func:`~selfres.settings.isotropic_factor`). The workflow says these when a run starts (a dry
    run too); the sample's crop step refuses it after its normalise (a walkthrough: found only
    then). Rows of a later image of a file, files not there or unreadable, and cells that do not
    parse are left to the sample's jobs."""
    from .errors import InputError
    from .settings import isotropic_factor, parse_triple

    read_voxel_size = _io_reader("read_voxel_size")
    problems = {}
    for row in sheet.to_dict(orient="records"):
        path, cell = row.get("path") or "", str(row.get("voxel_size") or "").strip()
        if (str(row.get("mode") or "").strip() or default_mode) != "isotropic" or (_series_of(row) or 0) > 0 \
                or not os.path.isfile(path) and not os.path.isdir(path):
            continue
        try:
            voxel = (parse_triple(cell, name="voxel_size", kind=float) if cell else
                     _counted(counts, "voxel_size", path, None, lambda: read_voxel_size(path)))
        except Exception:  # noqa: BLE001 - a hint: the sample's normalise says what is wrong in its own words
            continue
        try:
            isotropic_factor(voxel, path=path, sample=row["sample"], warn=False)
        except InputError as exc:
            problems[row["sample"]] = exc.what
    return problems


def enhance_shape_problems(sheet: pd.DataFrame, counts: FileCounts | None = None, *, default_mode: str = "enhance",
                           default_scale: str = "2,2,2") -> dict[str, str]:
    """``{sample: problem}`` for the ``enhance`` rows whose image, as its file's header gives its
    shape (through ``counts``), cannot take the row's scale: a 2-D image (one z slice) scaled
    along z, or too few voxels along a scaled axis for the training pairs (the crop step's own
    words, :func:`~selfres.pipeline.check_volume_for_mode`). The workflow says these when a run
    starts (a dry run too) and tries that crop once; the sample's crop step refuses it after its
    normalise (a walkthrough: a 2-D image at the default 2,2,2 went through a dry run unsaid).
    Files not there or unreadable, and cells that do not parse, are left to the sample's jobs."""
    from .errors import InputError
    from .settings import MIN_LOWRES_VOXELS, parse_scale

    describe = _io_reader("describe_acquisition")
    problems = {}
    for row in sheet.to_dict(orient="records"):
        path = row.get("path") or ""
        if (str(row.get("mode") or "").strip() or default_mode) != "enhance" \
                or not os.path.isfile(path) and not os.path.isdir(path):
            continue
        try:
            factors = parse_scale(str(row.get("scale") or "").strip() or default_scale)
            shape = _row_shape(counts, path, row, describe) or None
        except Exception:  # noqa: BLE001 - a hint: the sample's jobs say what is wrong in their own words
            continue
        if shape is None or all(f == 1 or n >= MIN_LOWRES_VOXELS * f for n, f in zip(shape, factors)):
            continue  # (pipeline imports zarr and dask, which a workflow start does not pay for without need)
        from .pipeline import FOV_ALREADY_CHOSEN, check_volume_for_mode

        try:
            check_volume_for_mode(shape, None, mode="enhance", factors=factors, path=path, sample=row["sample"],
                                  training_fov=FOV_ALREADY_CHOSEN)
        except InputError as exc:
            problems[row["sample"]] = exc.what
    return problems


def _series_of(row: dict) -> int | None:
    value = str(row.get("series") or "").strip()
    return int(value) if value.isdigit() else None


def _expand_all(sheet: pd.DataFrame, column: str, choices, suffix: str,
                refused: dict[str, str] | None = None, made: set[str] | None = None) -> pd.DataFrame:
    """Rows with ``column = all``: one row per value of ``choices(row)``, the sample id
    suffixed ``_{suffix}{value}``. An id made twice (by this and another row, or a refused
    row's id) raises, or with ``refused`` (see :func:`expand_channels`) fails alone.
    ``made`` collects every id an expansion made, also those then refused (a combined export
    of the acquisition must then wait for them)."""
    from .errors import SelfresError

    if column not in sheet or not (sheet[column] == "all").any():
        return sheet
    rows, made_by = [], {}
    for row in sheet.to_dict(orient="records"):
        if row.get(column) != "all":
            rows.append(row)
            continue
        try:
            values = list(choices(row))
        except (SelfresError, OSError):
            rows.append(row)
            continue
        for i in values:
            made_by.setdefault(f"{row['sample']}_{suffix}{i}", row["sample"])
            if made is not None:
                made.add(f"{row['sample']}_{suffix}{i}")
            rows.append(row | {"sample": f"{row['sample']}_{suffix}{i}", column: str(i)})
    out = pd.DataFrame(rows, columns=sheet.columns)
    ids = out["sample"]
    taken = {sid.casefold() for sid in refused or ()}
    dup = sorted({sid for group in clashing_ids(ids) for sid in group}
                 | {sid for sid in made_by if sid.casefold() in taken})
    if dup and refused is None:
        raise ConfigError(f"sample sheet: {column}=all makes sample id(s) {', '.join(dup)} that are already taken; "
                          "rename the sample")
    makers = {made.casefold(): base for made, base in made_by.items()}  # Scan_c0 clashes with scan_c0 (made)
    for sid in dup:  # which row was meant? neither runs
        maker = f"{column}=all of sample {makers.get(sid.casefold(), sid)!r}"
        others = sorted({v for v in [*ids, *(refused or ())] if v.casefold() == sid.casefold() and v != sid})
        spelled = (f" (as {', '.join(map(repr, others))}: ids that differ only in case share one results folder)"
                   if others else "")
        refused[sid] = (f"{refused[sid]}; also, {maker} makes this id too{spelled}; rename one of them"
                        if sid in refused else
                        f"sample sheet: sample {sid!r}: a row has this id, and {maker} makes it too{spelled}; "
                        "rename one of them")
    return out[~ids.isin(dup)].reset_index(drop=True) if dup else out


#: an id an `all` expansion made from another: ``{base}_s{i}``, ``_c{i}``, ``_t{i}``
_EXPANDED_ID = re.compile(r"^(?P<base>.+)_[sct][0-9]+$")


def in_sheet_order(ids: Sequence[str], row_ids: Sequence[str]) -> list[str]:
    """``ids`` in the order of the sheet rows they come from (``row_ids``, the sheet's ids in
    line order): an expanded id (``cells_c1``) at its row (``cells``); ids of no row (the
    inbox's) after the sheet's, in their own order. Refused samples are thus listed where
    their rows are, not after the others. Stable: ids of one row keep their order."""
    rank: dict[str, int] = {}
    for i, sid in enumerate(row_ids):
        rank.setdefault(sid, i)

    def row_of(sid: str) -> int:
        while sid not in rank:
            m = _EXPANDED_ID.match(sid)
            if m is None:
                return len(rank)
            sid = m["base"]
        return rank[sid]

    return sorted(ids, key=row_of)


_PART_ID = re.compile(r"^(?P<stem>.+?)(?:_c(?P<c>[0-9]+))?(?:_t(?P<t>[0-9]+))?$")


def part_of(sample_id: str) -> tuple[str, int | None, int | None] | None:
    """``(acquisition, time point, channel)`` of an id that :func:`expand_channels` and
    :func:`expand_timepoints` make — ``cells_c1`` → ``("cells", None, 1)``, ``lapse_t3`` →
    ``("lapse", 3, None)``, ``lapse_c0_t3`` → ``("lapse", 3, 0)`` — else ``None``. With
    ``export_tiff`` the workflow writes an acquisition's channels and time points as one
    ``{results}/{acquisition}.ome.tif``."""
    m = _PART_ID.match(sample_id)
    if m is None or (m["c"] is None and m["t"] is None):
        return None
    return m["stem"], None if m["t"] is None else int(m["t"]), None if m["c"] is None else int(m["c"])


#: ``model_from`` value of a ``timepoint = all`` row: every time point uses the model of its
#: series' time point 0 (channel by channel with ``channel = all``).
FIRST_TIMEPOINT = "first_timepoint"
_TIMEPOINT_ID = re.compile(r"^(?P<stem>.+)_t(?P<t>[0-9]+)$")


def resolve_first_timepoint(sheet: pd.DataFrame, refused: dict[str, str] | None = None) -> pd.DataFrame:
    """``model_from = first_timepoint`` (after :func:`expand_timepoints`): each row names its
    own series' time point 0 — ``lapse_t7`` → ``lapse_t0``, ``lapse_c1_t7`` → ``lapse_c1_t0``
    (time point 0 itself then trains). The value is resolved per row, so it also works as
    an ``inbox_columns`` entry for time series dropped into the inbox.

    Raises
    ------
    ConfigError
        On a row that is not a time point of a ``timepoint = all`` expansion; with ``refused``
        (``bad_rows: fail_alone``) that row goes there instead and the others stay.
    """
    if "model_from" not in sheet or not (sheet["model_from"] == FIRST_TIMEPOINT).any():
        return sheet
    out = sheet.reset_index(drop=True)  # one label per row (a concatenated sheet repeats them)
    bad = []
    for i, row in out.iterrows():
        if row["model_from"] != FIRST_TIMEPOINT:
            continue
        if str(row.get("timepoint", "")).strip() == "all":  # its file could not be read: its first job says why
            out.at[i, "model_from"] = ""
            continue
        m = _TIMEPOINT_ID.match(str(row["sample"]))
        if m is None or str(row.get("timepoint", "")).strip() != m["t"]:
            problem = (f"sample sheet: sample {row['sample']!r}, column 'model_from': {FIRST_TIMEPOINT} names time "
                       "point 0 of the same series, so it needs timepoint=all on the row (or a file with a single "
                       "time point: leave model_from empty)")
            if refused is None:
                raise ConfigError(problem)
            refused[str(row["sample"])] = problem
            bad.append(i)
            continue
        out.at[i, "model_from"] = f"{m['stem']}_t0"
    return out.drop(index=bad).reset_index(drop=True) if bad else out


#: the id suffix each ``all`` column adds, in the order the expansions run
_EXPANSION_SUFFIXES = (("series", "s"), ("channel", "c"), ("timepoint", "t"))


def resolve_unexpanded_sources(sheet: pd.DataFrame) -> pd.DataFrame:
    """``model_from`` naming an expanded id (``lapse_t0``) of a row whose file could not be
    read, so that it was not expanded (its ``series``/``channel``/``timepoint`` is still
    ``all``): the cell is pointed at that row. That row's first job fails with the reader's
    message and the samples waiting for its model are not run, while every other sample goes
    on (``--keep-going``, as the profiles set) — instead of the whole run stopping on "not a
    sample of the sheet". Only the suffixes that row's ``all`` columns would have added count
    (``_s<n>``, ``_c<n>``, ``_t<n>``, in that order): ``lapse_c3`` of a ``timepoint = all`` row is
    still refused.
    """
    if "model_from" not in sheet:
        return sheet
    ids = set(sheet["sample"])
    suffixes = {}  # unexpanded row -> the pattern of the ids its expansion would have made
    for r in sheet.to_dict(orient="records"):
        parts = [rf"_{letter}[0-9]+" for column, letter in _EXPANSION_SUFFIXES if str(r.get(column, "")).strip() == "all"]
        if parts:
            suffixes[r["sample"]] = re.compile("".join(parts))
    if not suffixes:
        return sheet
    out = sheet.copy()
    for i, row in out.iterrows():
        src = str(row["model_from"] or "").strip()
        if not src or src in ids:
            continue
        stem = next((u for u in sorted(suffixes, key=len, reverse=True)
                     if src.startswith(u + "_") and suffixes[u].fullmatch(src[len(u):])), None)
        if stem is not None:
            out.at[i, "model_from"] = stem
    return out


def check_model_sources(sheet: pd.DataFrame, *, default_mode: str = "enhance",
                        default_scale: str = ",".join(map(str, DEFAULT_SCALE)),
                        refused: dict[str, str] | None = None) -> pd.DataFrame:
    """Refuse ``model_from`` cells (after ``all`` expansion) that no job could honour.

    A sample whose ``model_from`` names another sample is restored with that sample's
    trained model (:mod:`selfres.adopt`). The other sample must be in the sheet and train
    its own model (no chains), in the same mode; ``enhance`` samples of the same ``scale``.
    (An ``isotropic`` pair's axial factors come from the files: compared by the job.)
    A cell naming the sample itself means "train" (so ``timepoint=all`` with
    ``model_from={sample}_t0`` trains time point 0 and lends its model to the others).

    ``refused`` (config ``bad_rows: fail_alone``): the samples already refused, ``{id:
    message}``; a sample whose ``model_from`` cell fails, or names one of them, joins them
    instead of raising.

    Returns
    -------
    pandas.DataFrame
        ``sheet``, without the rows refused here.

    Raises
    ------
    ConfigError
        Naming the sample, the column and what is wrong (without ``refused``).
    """
    if "model_from" not in sheet:
        return sheet
    rows = {r["sample"]: r for r in sheet.to_dict(orient="records")}
    problems: dict[str, str] = {}

    def mode(r):
        return str(r.get("mode") or "").strip() or default_mode

    def scale(r):  # as numbers: "1, 2, 2" and "1,2,2" are one scale
        text = str(r.get("scale") or "").strip() or default_scale
        return ",".join(map(str, parse_scale(text, sample=r["sample"])))

    for sid, row in rows.items():
        src = str(row.get("model_from") or "").strip()
        if not src or src == sid:
            continue
        where = f"sample sheet: sample {sid!r}, column 'model_from': "
        if refused is not None and src in refused:
            problems[sid] = f"sample {sid!r}: its model_from sample {src!r} was refused: {refused[src]}"
            continue
        if src not in rows:
            close = sorted(rows)[:8]
            problem = (f"{where}{src!r} is not a sample of the sheet (samples: {', '.join(close)}"
                       f"{', …' if len(rows) > 8 else ''}); with channel/timepoint/series 'all', name an "
                       "expanded id such as {sample}_t0")
        elif (other := str(rows[src].get("model_from") or "").strip()) and other != src:
            problem = (f"{where}{src!r} itself uses the model of {other!r}; name the sample that trains ({other!r})"
                       if other in rows else
                       f"{where}{src!r} itself uses the model of {other!r}, which is not a sample of the sheet; "
                       f"name a sample that trains (mend {src!r}'s model_from first)")
        elif mode(row) != mode(rows[src]):
            problem = (f"{where}this sample is in {mode(row)} mode, {src!r} in {mode(rows[src])} mode; a model "
                       "restores in the mode it was trained for")
        elif mode(row) == "enhance" and scale(row) != scale(rows[src]):
            def whose(r):  # a scale taken from the config is said so (a helper read "'neurites''s 1,2,2")
                return "" if str(r.get("scale") or "").strip() else " (the config's scale)"

            problem = (f"{where}its scale {scale(row)}{whose(row)} differs from the scale of {src!r}, "
                       f"{scale(rows[src])}{whose(rows[src])}; a model restores by the factors it was trained for")
        else:
            continue
        if refused is None:
            raise ConfigError(problem)
        problems[sid] = problem
    if not problems:
        return sheet
    refused.update(problems)
    return sheet[~sheet["sample"].isin(list(problems))].reset_index(drop=True)


#: What the workflow writes at the top of ``results/`` beside the sample folders: no sample may
#: be named so (a sample ``summary.tsv`` would make a folder where the summary file goes).
RESULTS_ROOT_NAMES = ("summary.tsv", "summary.html", "logs", "runs")


def results_root_name(sample: str, root_files: Iterable[str] = ()) -> str | None:
    """The name among :data:`RESULTS_ROOT_NAMES` and ``root_files`` that ``sample`` would clash
    with, compared regardless of case (macOS and Windows file systems), or ``None``."""
    return next((n for n in (*RESULTS_ROOT_NAMES, *root_files) if n.casefold() == sample.casefold()), None)


def check_results_dirs(results: str | os.PathLike, samples: Iterable[str], *,
                       root_files: Iterable[str] = ()) -> None:
    """Refuse samples whose results folder would lie outside ``results``, or on a name the
    workflow writes at the top of it.

    A sample id is checked again (:func:`check_sample_id`); it must not be one of
    :data:`RESULTS_ROOT_NAMES` or ``root_files`` (with ``export_tiff``, each acquisition's
    ``{acquisition}.ome.tif``), compared regardless of case (macOS and Windows file
    systems); and an existing ``results/<sample>`` (or any path above a file the pipeline
    writes) must not be a symbolic link leading out of the results root.

    Raises
    ------
    ConfigError
        Naming the sample and the folder.
    """
    root = Path(os.path.realpath(results))
    root_files = tuple(root_files)
    for s in samples:
        check_sample_id(s)
        if taken := results_root_name(s, root_files):
            raise ConfigError(
                f"sample id {s!r} is not allowed: the workflow writes {taken!r} at the top of the "
                f"results folder ({Path(results) / taken}), where this sample's folder would go; rename the sample"
            )
        d = Path(results) / s
        if d.is_symlink() or d.exists():
            real = Path(os.path.realpath(d))
            if real != root / s and root not in real.parents:
                raise ConfigError(
                    f"sample {s!r}: results folder {d} is a link to {real}, outside the results root "
                    f"{root}; refusing to write there (remove the link)"
                )
            if d.is_symlink():
                raise ConfigError(f"sample {s!r}: results folder {d} is a symbolic link; refusing to "
                                  "write through it (remove the link)")
        if d.is_dir():
            for sub in d.iterdir():
                if sub.is_symlink():
                    real = Path(os.path.realpath(sub))
                    if root not in real.parents:
                        raise ConfigError(
                            f"sample {s!r}: {sub} is a link to {real}, outside the results root {root}; "
                            "refusing to write there (remove the link)"
                        )
