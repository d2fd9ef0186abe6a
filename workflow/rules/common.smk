# Validation of config and sample sheet, the sample table and input functions.
# All logic beyond this lives in the selfres package.
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

try:
    from selfres import sheet as _sheet
except ImportError:  # snakemake run from an env without the package: use the checkout's src/
    import sys

    sys.path.insert(0, os.path.join(workflow.basedir, "src"))
    from selfres import sheet as _sheet

from selfres.errors import ConfigError as _ConfigError, SelfresError as _SelfresError
from selfres.formats import denied_path as _denied_path, missing_path_hint as _missing_path_hint, unread_format as _unread_format
import selfres.settings as _settings
from selfres.provenance import date_before as _date_before, replaced_by_an_older_file as _replaced_by_an_older_file
from selfres.settings import settings_sections


def _stop_on_bad_config(check, *args, **kwargs):
    """``check(*args, **kwargs)``; a config or sheet mistake (selfres's one-line message, which
    names the file, the sample and the column) stops the run before any job, without a
    Python traceback after it."""
    try:
        return check(*args, **kwargs)
    except _SelfresError as exc:
        print(f"selfres: ERROR: {exc}", file=sys.stderr)
        if workflow.is_main_process and _is_a_run():
            _record_stopped_run(str(exc))
        sys.exit(1)


def _refuse(message):
    raise _ConfigError(message)


def _series_number(sample):
    """The image a sample's row chooses of its file (its `series` cell), None where it chooses none."""
    return int(_cell(sample, "series")) if _cell(sample, "series") not in ("", "all") else None


#: Snakemake options after which a command is not a run of the workflow (its parse of the
#: Snakefile must not be recorded as a stopped run)
_NOT_A_RUN = ("dryrun", "touch", "unlock", "report", "reporter", "lint", "list_changes", "list_input_changes",
              "list_params_changes", "list_code_changes", "summary", "detailed_summary", "dag", "rulegraph",
              "filegraph", "d3dag", "cleanup_metadata", "list_rules", "list_target_rules", "delete_all_output",
              "delete_temp_output", "archive", "containerize", "list_untracked", "conda_create_envs_only",
              "print_compilation", "generate_unit_tests", "cleanup_shadow", "list_conda_envs", "conda_cleanup_envs")


@functools.cache
def _snakemake_args():
    """This snakemake command's options, read with Snakemake's own parser (profiles,
    abbreviations, `--report FILE` and `--reporter html` alike); None when it cannot tell (the
    Python API)."""
    try:
        from snakemake.cli import parse_args

        return parse_args(sys.argv[1:])[1]
    except BaseException:  # noqa: BLE001 - argparse exits on what it cannot read
        return None


def _is_a_run():
    """Whether this snakemake command runs the workflow (not a dry run, --touch, --unlock,
    --report, --list-changes, …); when it cannot tell, not."""
    if getattr(workflow.output_settings, "dryrun", False):
        return False
    args = _snakemake_args()
    if args is None:
        return False
    after_run = getattr(args, "report_after_run", False)  # runs the workflow, then reports
    return not any(getattr(args, name, None) for name in _NOT_A_RUN
                   if not (after_run and name in ("report", "reporter")))


def _record_stopped_run(message):
    """A run stopped before its first job still leaves its line in runs/runs.tsv (status
    error, no jobs; the message in its record): the morning check sees the night that failed."""
    _write_run_record(config.get("results") or "results", "error", extra={"stopped_before_any_job": message})


def _write_run_record(results, status, log=None, samples=(), extra=None, model_sources=None):
    """Append a run's record to {results}/runs/ (selfres.runlog), after those of earlier runs
    that were killed before writing theirs; never fails (nor hides) the run's own outcome."""
    from selfres.runlog import record_stopped_runs, write_run_record

    try:  # first the runs killed since the last record (they wrote none themselves)
        for path in record_stopped_runs(results, log):
            print(f"selfres: record of an earlier run that was stopped: {path}", file=sys.stderr)
    except Exception as exc:
        print(f"selfres: WARNING: earlier stopped runs not recorded: {exc}", file=sys.stderr)
    try:
        path = write_run_record(results, status=status, snakemake_log=log, samples=samples, extra=extra,
                                model_sources=model_sources)
        print(f"selfres: run record {path}", file=sys.stderr)
    except Exception as exc:  # a record must not turn a good run into a failed one
        print(f"selfres: WARNING: no run record written: {exc}", file=sys.stderr)


# nested --config values arrive as strings ('isotropic={"steps": 70}'): read as the schema
# wants; then a short message naming the key first; then snakemake's validation fills the defaults
_CONFIG_SCHEMA = os.path.join(workflow.current_basedir, "..", "schemas", "config.schema.yaml")
_sheet.coerce_command_line_strings(config, schema=_CONFIG_SCHEMA)
_stop_on_bad_config(_sheet.check_config, config, schema=_CONFIG_SCHEMA)
validate(config, schema="../schemas/config.schema.yaml")

# one spelling of the results folder (`results/` and `./results` are `results`; Snakemake
# compares output paths as text)
# ~: the home folder, not a folder named ~; "-out" absolute, or every command would read it as an option
R = _sheet.not_an_option(os.path.normpath(os.path.expanduser(config["results"])))
# torch threads of one train/infer job (snakemake lowers it to --cores): one sample uses
# up to 4 cores, and a larger machine runs more samples side by side; a profile's
# set-threads (profiles/slurm) or --set-threads train=8 overrides it
MAX_THREADS = 4


#: bad_rows: fail_alone — a refused sheet row or inbox acquisition fails its own sample only
FAIL_ALONE = config["bad_rows"] == "fail_alone"


def _read_sheet(path, refused):
    """The sample sheet as a table of strings (selfres.sheet: schema, safe unique ids, paths);
    with bad_rows: fail_alone the rows it refuses go to ``refused`` instead of stopping the run."""
    schema = os.path.join(workflow.current_basedir, "..", "schemas", "samples.schema.yaml")
    return _sheet.read_sample_sheet(path, schema=schema, config_settings=settings_sections(config),
                                    refused=refused if FAIL_ALONE else None)


#: {sample id: path} of the inbox's acquisitions left for the next run (still changing): the
#: summary lists each as pending, so that none vanishes from the morning's page
INBOX_WAITING = {}


def _inbox_rows(sheet, refused, refused_paths):
    """Nightly batches: acquisitions of the config's inbox globs (selfres.inbox has the rules)."""
    from selfres.inbox import scan_inbox

    # the run stops on clashing ids before its first job (bad_rows: fail_alone: those samples
    # fail alone); a job (which re-reads the inbox) leaves them out instead, so a file dropped
    # in during the night fails no other job
    # a refused row still owns its id and its file: the inbox must not take them with other settings;
    # the sheet's ids are those its `all` rows make (cells_c0 of cells.tif), so the sheet wins them too
    scan = scan_inbox(config["inbox"], settle_seconds=config["inbox_settle_seconds"],
                      known_ids=[*sheet["sample"], *refused],
                      known_paths=[*sheet["path"], *refused_paths],
                      on_clash="error" if workflow.is_main_process and not FAIL_ALONE else "skip",
                      exclude=[R, ".snakemake"])  # never the workflow's own outputs
    if FAIL_ALONE:
        refused.update(scan.refusals())
    INBOX_WAITING.update(scan.waiting_ids)
    for line in scan.messages():
        print(line, file=sys.stderr)
    schema = os.path.join(workflow.current_basedir, "..", "schemas", "samples.schema.yaml")
    return _sheet.inbox_table(scan.rows, config["inbox_columns"], schema=schema,
                              config_settings=settings_sections(config))


#: {sample: problem} of the rows whose image, channel or time point their file's header refuses
_CHOICE_PROBLEMS = {}
#: {sample: warning} of the rows whose voxel_size cell is 10 times or more unlike their file's (nm typed for µm?)
_VOXEL_SIZE_SLIPS = {}
#: {sample: problem} of the isotropic rows whose voxel size gives no factor isotropic mode accepts (none known...)
_ISOTROPIC_VOXEL_PROBLEMS = {}
#: {sample: problem} of the enhance rows whose image cannot take their scale (a 2-D image at z factor 2...)
_ENHANCE_SHAPE_PROBLEMS = {}
#: every id an `all` expansion made, refused ones included (their acquisition's export waits on them)
EXPANDED_IDS = set()


#: header counts of the `all` expansions, the start-of-run checks' header reads and checksums, kept between
#: the Snakefile's evaluations (one per job) and the workflow's starts: one cache, read once per evaluation
FILE_COUNTS = _sheet.FileCounts(os.path.join(".snakemake", "selfres", "file_counts.json"))


def _sample_table():
    """The sheet's rows and the inbox's, one per sample: `all` columns expanded, `model_from`
    resolved and checked; and the samples refused with bad_rows: fail_alone, ``{id: message}``."""
    refused = {}
    sheet = _read_sheet(config["samples"], refused)
    row_ids, refused_paths = sheet.attrs["row_ids"], sheet.attrs.get("refused_paths", [])
    counts = FILE_COUNTS
    # an id made twice (or a refused row's id) stops the run, or with fail_alone fails alone
    alone = refused if FAIL_ALONE else None  # where refusals go (None: they stop the run)

    def expand(table):
        # all: one sample (and model) per image of a TIFF (series), per channel, per time point
        table = _sheet.expand_series(table, counts, refused=alone, made=EXPANDED_IDS)
        table = _sheet.expand_channels(table, counts, refused=alone, made=EXPANDED_IDS)
        return _sheet.expand_timepoints(table, counts, refused=alone, made=EXPANDED_IDS)

    sheet = expand(sheet)  # before the inbox: the ids the sheet's rows make are the sheet's
    inbox = _inbox_rows(sheet, refused, refused_paths)
    if len(inbox):  # the inbox's own `all` rows (inbox_columns), checked against every id
        sheet = expand(pd.concat([sheet, inbox], ignore_index=True).fillna(""))
    if workflow.is_main_process:
        # a channel (image, time point) that the file lacks, or none chosen of several: said at the start (below)
        _CHOICE_PROBLEMS.update(_sheet.choice_problems(sheet, counts))
        _VOXEL_SIZE_SLIPS.update(_sheet.voxel_size_slips(sheet, counts))  # said at the start (below)
        _ISOTROPIC_VOXEL_PROBLEMS.update(_sheet.isotropic_voxel_problems(sheet, counts, default_mode=config["mode"]))
        _ENHANCE_SHAPE_PROBLEMS.update(_sheet.enhance_shape_problems(sheet, counts, default_mode=config["mode"],
                                                                     default_scale=config["scale"]))
        counts.save()
    # model_from: a sample restored with another sample's model (same mode; enhance: same scale)
    sheet = _sheet.resolve_first_timepoint(sheet, refused=alone)  # model_from=first_timepoint: {series}_t0's model
    sheet = _sheet.resolve_unexpanded_sources(sheet)  # lapse_t0 of an unreadable lapse.tif: wait on its row
    sheet = _sheet.check_model_sources(sheet, default_mode=config["mode"], default_scale=config["scale"],
                                       refused=alone)
    # every sample of the run, the refused ones included, in the sheet's order (the summary's)
    return sheet, refused, _sheet.in_sheet_order([*sheet["sample"], *refused], row_ids)


#: ALL_SAMPLE_IDS: every sample of the run, the refused ones (bad_rows: fail_alone) included,
#: in sheet order (then the inbox's): the summary lists them so
SHEET, REFUSED, ALL_SAMPLE_IDS = _stop_on_bad_config(_sample_table)
SAMPLES = SHEET.set_index("sample", drop=False)
SAMPLE_IDS = list(SAMPLES.index)
if workflow.is_main_process:
    for _s, _message in ((s, REFUSED[s]) for s in ALL_SAMPLE_IDS if s in REFUSED):
        print(f"selfres: ERROR: {_message}; sample {_s!r} fails alone, the others run (bad_rows: fail_alone)",
              file=sys.stderr)


wildcard_constraints:
    sample="|".join(re.escape(s) for s in ALL_SAMPLE_IDS) or "NO_SAMPLES",


def _cell(sample, col):
    return str(SAMPLES.loc[sample].get(col, "") or "").strip()


def sample_mode(sample):
    return _cell(sample, "mode") or config["mode"]


def sample_scale(sample):
    return _cell(sample, "scale") or config["scale"]


def sample_voxel_size(sample):
    """The sheet's voxel size as its jobs receive it: ``2.0,0.5,0.5`` is ``2,0.5,0.5``; empty for none."""
    return _settings.canonical_triple_text(_cell(sample, "voxel_size"))


def sample_settings(sample):
    """Config stage sections with the sample's own overrides (columns like train.steps)."""
    return _sheet.merge_settings(settings_sections(config), _sheet.sample_overrides(SAMPLES.loc[sample].to_dict()))


def acquisition_groups():
    """The samples that are the channels and time points of one acquisition (``channel: all``:
    ``S_c0``, ``S_c1``…; ``timepoint: all``: ``S_t0``, ``S_t1``…; both: ``S_c0_t0``…),
    ``{acquisition: (ids, time points)}``, the ids time point by time point, each by channel:
    with ``export_tiff`` each group is also written as one OME-TIFF (CZYX, TZYX or TCZYX).
    Only ids of that form whose channel and time point cells are their numbers, every channel
    of every time point, time points 0, 1… without a gap, one file and image, one mode and
    scale (one output grid); at least two samples. Also ``{acquisition: ids}`` of those held
    back because an expansion made a part of them that was refused (bad_rows: fail_alone): no
    file is written from the parts left (it would look whole), and the summary says why."""
    groups = {}
    for s in SAMPLE_IDS:
        found = _sheet.part_of(s)
        if found and all(v is None or _cell(s, col) == str(v) for col, v in zip(("timepoint", "channel"), found[1:])):
            groups.setdefault(found[0], {})[found[1:]] = s

    def grid(s):  # one file and image, one output grid
        return (_cell(s, "path"), _cell(s, "series"), sample_mode(s),
                sample_scale(s) if sample_mode(s) == "enhance" else "", sample_voxel_size(s))

    held = {}
    for s in REFUSED:
        found = _sheet.part_of(s)
        if s in EXPANDED_IDS and found and found[0] in groups:
            held.setdefault(found[0], []).append(s)
    out = {}
    for acquisition, parts in groups.items():
        if acquisition in held:
            continue
        times = sorted({t for t, _ in parts}, key=lambda v: -1 if v is None else v)
        channels = sorted({c for _, c in parts}, key=lambda v: -1 if v is None else v)
        whole = len(parts) == len(times) * len(channels) and times in ([None], list(range(len(times))))
        if len(parts) > 1 and whole and len({grid(s) for s in parts.values()}) == 1:
            out[acquisition] = ([parts[t, c] for t in times for c in channels], len(times))
    return out, {a: sorted([*groups[a].values(), *ids]) for a, ids in held.items()}


ACQUISITION_GROUPS, HELD_ACQUISITIONS = acquisition_groups()
# no id or symlink may lead a write out of results/, nor onto a file or folder the workflow writes there
_stop_on_bad_config(_sheet.check_results_dirs, R, ALL_SAMPLE_IDS,
                    root_files=[f"{a}.ome.tif" for a in ACQUISITION_GROUPS] if config["export_tiff"] else ())


def _q(x):
    return shlex.quote(str(x))


#: the demo acquisitions (they exist only once the demo has run; see demo.smk)
DEMO_FILES = ("demo_data/beads.tif", "demo_data/beads_reference.tif", "demo_data/neurites.tif",
              "demo_data/neurites_reference.tif")


def _declared(path):
    """``path`` as a job input when it exists (or the demo makes it); else nothing. A missing
    acquisition then fails its own sample's first job with selfres's one-line error, and
    ``--keep-going`` runs the others, instead of Snakemake refusing the whole batch."""
    if not path:
        return []
    return [path] if os.path.exists(path) or os.path.normpath(path) in DEMO_FILES else []


@functools.lru_cache(maxsize=None)  # the plan asks per job; the store is read once per evaluation
def _archived(sample):
    """The sample's acquisition is gone but its normalised copy was made from that very path
    (moved away after its night): the path stays declared, and Snakemake judges normalise up
    to date (a job whose input is gone), instead of rerunning it for a changed input set."""
    from selfres.io import made_from  # zarr and dask: imported only for a missing acquisition

    path = _cell(sample, "path")
    return bool(path) and not _declared(path) and made_from(f"{R}/{sample}/normalized.ome.zarr", path)


def get_raw(wildcards):
    s = wildcards.sample
    return _declared(_cell(s, "path")) or ([_cell(s, "path")] if _archived(s) else [])


def raw_path(wildcards):
    return _cell(wildcards.sample, "path")


def get_reference(wildcards):
    return _declared(_cell(wildcards.sample, "reference"))


@functools.lru_cache(maxsize=None)  # asked by every job of the sample; the settings merge once
def sample_psf(sample):
    """The measured PSF file the model of ``sample`` is trained with (its ``model_from``
    source's: the file its model.json names), or "" — also for an isotropic sample whose
    ``isotropic.axial_sigma_px`` is given (its training does not read the PSF)."""
    source = model_source(sample)
    return _settings.psf_file(_stage_sections(source, "train")[0]) or ""  # as the source's train job gets them


@functools.lru_cache(maxsize=None)
def _psf_recorded(sample, path):
    """``path`` is gone, and the sample's model.json names it as the PSF it was made with (moved
    away after training): it stays declared, and Snakemake judges the jobs up to date, as for an
    archived acquisition (_archived), instead of retraining for a changed input set."""
    try:
        with open(f"{R}/{sample}/model/model.json") as fh:
            recorded = (json.load(fh).get("metadata") or {}).get("psf") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, dict) and recorded.get("path") == path


def _psf_input(sample):
    path = sample_psf(sample)
    return _declared(path) or ([path] if path and _psf_recorded(sample, path) else [])


def get_model_psf(wildcards):
    """The PSF as an input of infer and qc of an enhance sample (back-projection and the
    held-out pair re-read it): a replaced file reruns them."""
    return _psf_input(wildcards.sample) if sample_mode(wildcards.sample) == "enhance" else []


def get_training_psf(wildcards):
    """The PSF as an input of train and of an enhance sample's adopt, which read it (an isotropic
    adopt takes the axial σ from the source's model.json): a replaced file reruns them
    (Snakemake's mtime trigger, with its checksum for files under 1 MB)."""
    s = wildcards.sample
    if model_source(s) != s and sample_mode(s) == "isotropic":
        return []
    return _psf_input(s)


def _unused_scales():
    """``{(path, scale): [samples]}`` of the isotropic rows that give a scale (their grid
    follows the voxel size): one warning per sheet row, however many samples it expands to."""
    rows = {}
    for s in SAMPLE_IDS:
        if _cell(s, "scale") and sample_mode(s) == "isotropic":
            rows.setdefault((_cell(s, "path"), _cell(s, "scale")), []).append(s)
    return rows


if workflow.is_main_process and getattr(_snakemake_args(), "executor", None) == "slurm":
    # a cluster without accounting: the executor's default status command (sacct) never sees a
    # job finish, and the run waits without a word (said now; the profile's own settings decide)
    from selfres.runlog import slurm_status_problem as _slurm_status_problem

    _problem = _slurm_status_problem(getattr(_snakemake_args(), "slurm_status_command", None))
    if _problem:
        print(f"selfres: WARNING: {_problem}: the Slurm executor's status command (slurm-status-command: sacct) "
              "would never see a job finish and this run would wait without a word. Set slurm-status-command: "
              "squeue in the profile (and slurm-no-account: true where the cluster has no accounts); see "
              "docs/slurm.md", file=sys.stderr)


#: Samples the start of the run found unable to pass their normalise (the acquisition missing, closed to
#: this account, a vendor's format, an image or channel the file lacks) or their crop (isotropic mode
#: without a usable voxel size; an image that cannot take its scale): such a job fails alike however often
#: it is tried, so it runs once (rules normalise_once, crop_once: retries 0) instead of once more per retry
#: of the profile's (profiles/slurm: 2, each asking more memory and time, each queued again). Worked out by the
#: main process; a job's own evaluation (on a Slurm node) is told its rule by name.
FAILS_AT_NORMALISE, FAILS_AT_CROP = set(), set()


def once_constraint(ids):
    """The ``sample`` wildcard of the stages tried once (restore.smk): ``ids`` (none: a pattern that
    matches nothing); in a job's own evaluation any sample (the main process chose the rule)."""
    if not workflow.is_main_process:
        return ".+"
    return "|".join(re.escape(s) for s in sorted(ids)) or "(?!)"


if workflow.is_main_process:
    for (_path, _scale), _ids in _unused_scales().items():
        _names = ", ".join(repr(i) for i in _ids[:3]) + (f" and {len(_ids) - 3} more" if len(_ids) > 3 else "")
        print(f"selfres: WARNING: sample{'s' if len(_ids) > 1 else ''} {_names}: scale {_scale} is not used in "
              "isotropic mode (the output grid follows the voxel size: z step / lateral pixel)", file=sys.stderr)
    # A missing reference, or one off the output grid, fails only its sample's qc, after its
    # restoration. Said here, at the start: a check in an earlier job would need the file (its
    # existence, its shape) among that job's params, and a reference that appears or changes
    # later would then rerun the whole sample.
    for _s in SAMPLE_IDS:
        # a mistyped or not-yet-copied acquisition: said now, not only in the morning's summary
        if _cell(_s, "path") and not _declared(_cell(_s, "path")):
            _denied = _denied_path(_cell(_s, "path"))  # there, but behind a folder closed to this account
            if _archived(_s):
                print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')} "
                      f"{_denied or 'no longer exists'}; the sample goes on from its normalised copy "
                      f"({R}/{_s}/normalized.ome.zarr): a change of its normalise settings cannot apply, and "
                      "forcing its normalise stops the run, until the file is back", file=sys.stderr)
            elif _denied:
                FAILS_AT_NORMALISE.add(_s)
                print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')} {_denied}; that sample "
                      "fails at normalise; with --keep-going, as the profiles set, the others go on", file=sys.stderr)
            else:
                FAILS_AT_NORMALISE.add(_s)
                print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')} does not exist"
                      f"{_missing_path_hint(_cell(_s, 'path'))}; that "
                      "sample fails at normalise (and so do the samples that use its model); with --keep-going, as "
                      "the profiles set, the others go on", file=sys.stderr)
        elif _cell(_s, "path") and (_problem := _unread_format(_cell(_s, "path"))):
            # a microscope vendor's file (CZI, ND2, LIF …): said now, with the command that converts it
            FAILS_AT_NORMALISE.add(_s)
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')} {_problem}. That sample "
                  "fails at normalise; with --keep-going, as the profiles set, the others go on", file=sys.stderr)
        elif _s in _CHOICE_PROBLEMS:  # a two-channel file without a channel: said now, not after the night
            FAILS_AT_NORMALISE.add(_s)
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')}: {_CHOICE_PROBLEMS[_s]}; that "
                  "sample fails at normalise; with --keep-going, as the profiles set, the others go on",
                  file=sys.stderr)
        elif _declared(_cell(_s, "path")) and (
                _replaced := _replaced_by_an_older_file(f"{R}/{_s}/normalized.ome.zarr", _cell(_s, "path"),
                                                       counts=FILE_COUNTS)):
            # cp -p / rsync -a of an older file: dated before it, the normalised copy is made again
            if not _is_a_run():
                _then = "the next run restores the sample again from the file now there"
            elif _date_before(f"{R}/{_s}/normalized.ome.zarr", os.stat(_cell(_s, "path")).st_mtime_ns):
                _then = "this run restores the sample again from the file now there"
            else:
                _then = (f"it cannot be dated before it here ({R}/{_s}/normalized.ome.zarr is not writable): "
                         f"run with --forcerun {R}/{_s}/normalized.ome.zarr")
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_replaced}; {_then}", file=sys.stderr)
        if _s in _VOXEL_SIZE_SLIPS:  # a unit slip in the sheet: said now, not only in the morning's qc flags
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')}: {_VOXEL_SIZE_SLIPS[_s]}",
                  file=sys.stderr)
        if _s in _ISOTROPIC_VOXEL_PROBLEMS:  # isotropic mode without a usable voxel size: said now, not at crop
            FAILS_AT_CROP.add(_s)
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')}: "
                  f"{_ISOTROPIC_VOXEL_PROBLEMS[_s]}; that sample fails at crop; with --keep-going, as the profiles "
                  "set, the others go on", file=sys.stderr)
        if _s in _ENHANCE_SHAPE_PROBLEMS and _s not in FAILS_AT_NORMALISE:  # a 2-D image at a z factor: said now
            FAILS_AT_CROP.add(_s)
            _what = _ENHANCE_SHAPE_PROBLEMS[_s]
            print(f"selfres: WARNING: sample {_s!r}: its acquisition {_cell(_s, 'path')}"
                  f"{' ' if _what.startswith('is ') else ': '}{_what}; that sample fails at crop; with --keep-going, "
                  "as the profiles set, the others go on", file=sys.stderr)
        if _cell(_s, "reference") and not _declared(_cell(_s, "reference")):
            print(f"selfres: WARNING: sample {_s!r}: its reference {_cell(_s, 'reference')} does not exist"
                  f"{_missing_path_hint(_cell(_s, 'reference'))}; that "
                  "sample is restored, but its qc will fail until the file is there", file=sys.stderr)
        elif _cell(_s, "reference") and _declared(_cell(_s, "path")):
            from selfres.pipeline import reference_grid_problem
            from selfres.settings import parse_scale, parse_triple

            try:  # a hint: whatever goes wrong here, the jobs say it in their own words
                _problem = reference_grid_problem(
                    _cell(_s, "reference"), _cell(_s, "path"), mode=sample_mode(_s),
                    scale=parse_scale(sample_scale(_s)), voxel_size=parse_triple(_cell(_s, "voxel_size") or None,
                                                                                 name="voxel_size"),
                    series=_series_number(_s))
            except Exception:
                _problem = None
            if _problem:
                print(f"selfres: WARNING: sample {_s!r}: {_problem}; that sample is restored, but its qc will fail "
                      "until the reference is mended", file=sys.stderr)
    FILE_COUNTS.save()


@functools.lru_cache(maxsize=None)
def _stage_sections(sample, stage):
    """selfres.settings.stage_settings, split into the values that decide the output and those
    that only decide how the job runs (selfres.settings.EXECUTION_KEYS); worked out once per
    sample and stage (an infer job asks for both halves, the PSF input for the train stage's).
    Callers only read the dicts."""
    return _settings.split_execution(_settings.stage_settings(
        sample_settings(sample), stage=stage, mode=sample_mode(sample), config_sections=settings_sections(config),
        scale=_enhance_scale(sample)))


def _enhance_scale(sample):
    """An enhance sample's factors (what of train.x4_strategy it reads), else None."""
    return _settings.parse_scale(sample_scale(sample)) if sample_mode(sample) == "enhance" else None


def stage_settings(sample, stage):
    """The stage's --settings (selfres.settings.stage_settings: only what it reads, in one
    canonical form, so that a changed value reruns the stages and samples it affects, and the
    same value written otherwise reruns nothing), its execution values given as their defaults
    (infer_execution passes the real ones)."""
    return json.dumps(_stage_sections(sample, stage)[0], sort_keys=True)


def infer_execution(wildcards):
    """An inference job's execution values (tiles or slices per pass, GPU memory share) for
    `selfres infer --execution`: given as a job resource, which Snakemake does not compare
    between runs, so changing one reruns nothing (they do not change the output)."""
    return json.dumps(_stage_sections(wildcards.sample, "infer")[1], sort_keys=True)


def normalise_args(wildcards):
    s = wildcards.sample
    args = ["--sample", s, "--settings", stage_settings(s, "normalise")]
    if _cell(s, "channel") not in ("", "all"):
        args += ["--channel", _cell(s, "channel")]
    if _cell(s, "timepoint") not in ("", "all"):
        args += ["--timepoint", _cell(s, "timepoint")]
    if _cell(s, "series") not in ("", "all"):
        args += ["--series", _cell(s, "series")]
    if sample_voxel_size(s):
        args += [f"--voxel-size={sample_voxel_size(s)}"]
    return " ".join(_q(a) for a in args)


def crop_args(wildcards):
    s = wildcards.sample
    args = ["--sample", s, "--mode", sample_mode(s), "--settings", stage_settings(s, "crop")]
    if sample_mode(s) == "enhance":
        args += ["--scale", sample_scale(s)]
    if _cell(s, "training_fov"):
        args += ["--training-fov", _cell(s, "training_fov")]
    return " ".join(_q(a) for a in args)


def train_args(wildcards):
    s = wildcards.sample
    args = ["--sample", s, "--mode", sample_mode(s), "--settings", stage_settings(s, "train")]
    if sample_mode(s) == "enhance":
        args += ["--scale", sample_scale(s)]
    return " ".join(_q(a) for a in args)


def train_runtime(wildcards, attempt):
    """The train job's walltime (minutes, the `runtime` resource): its sample's time budgets half
    as long again plus an hour (selfres.settings.train_job_minutes), times the attempt."""
    s = wildcards.sample
    return attempt * _settings.train_job_minutes(_settings.parse_settings(sample_settings(s)), sample_mode(s))


def infer_args(wildcards):
    s = wildcards.sample
    return " ".join(_q(a) for a in ["--sample", s, "--settings", stage_settings(s, "infer")])


# Scattered inference (infer.blocks > 1): prepare → one job per block → gather (both modes).
def infer_blocks(sample):
    return int(sample_settings(sample)["infer"].get("blocks", 1))


def _samples_regex(ids):
    return "|".join(re.escape(s) for s in ids) or "(?!)"


# model_from (selfres.adopt): such a sample's model/ comes from rule adopt, not train
def model_source(sample):
    """The sample whose trained model restores ``sample`` (itself unless model_from names another)."""
    return _cell(sample, "model_from") or sample


TRAINING = _samples_regex([s for s in SAMPLE_IDS if model_source(s) == s])
ADOPTING = _samples_regex([s for s in SAMPLE_IDS if model_source(s) != s])


if workflow.is_main_process:  # a missing measured PSF: said now; those samples' training fails until it is there
    _missing_psf = {}
    for _s in SAMPLE_IDS:
        if model_source(_s) == _s and sample_psf(_s) and not _psf_input(_s):  # neither there nor recorded
            _missing_psf.setdefault(sample_psf(_s), []).append(_s)
    for _psf, _ids in _missing_psf.items():
        _names = ", ".join(repr(i) for i in _ids[:3]) + (f" and {len(_ids) - 3} more" if len(_ids) > 3 else "")
        print(f"selfres: WARNING: sample{'s' if len(_ids) > 1 else ''} {_names}: the PSF {_psf} "
              "(train.degradation.psf_path) does not exist; training fails until it is there (a psf_path in the "
              "sample sheet is relative to the sheet's folder, as path and reference are; in config.yaml, to the "
              "working directory)", file=sys.stderr)


def source_model(wildcards):
    return f"{R}/{model_source(wildcards.sample)}/model"


def adopt_args(wildcards):
    s = wildcards.sample
    args = ["--sample", s, "--mode", sample_mode(s), "--settings", stage_settings(s, "adopt")]
    if sample_mode(s) == "enhance":
        args += ["--scale", sample_scale(s)]
    return " ".join(_q(a) for a in args)


SINGLE_INFER = _samples_regex([s for s in SAMPLE_IDS if infer_blocks(s) == 1])
SCATTERED_INFER = _samples_regex([s for s in SAMPLE_IDS if infer_blocks(s) > 1])


def get_infer_blocks(wildcards):
    n = infer_blocks(wildcards.sample)
    return [f"{R}/{wildcards.sample}/infer/block_{i}.json" for i in range(n)]


def infer_step_args(wildcards):
    """Arguments of a scattered step: settings, the block index and count."""
    s = wildcards.sample
    args = ["--sample", s, "--settings", stage_settings(s, "infer"), "--blocks", str(infer_blocks(s))]
    if "block" in wildcards.keys():
        args += ["--block", wildcards.block]
    return " ".join(_q(a) for a in args)


def qc_args(wildcards):
    s = wildcards.sample
    args = ["--sample", s, "--settings", stage_settings(s, "qc")]
    if _cell(s, "reference"):
        args += ["--reference", _cell(s, "reference")]
    return " ".join(_q(a) for a in args)


def resolved_config(sample):
    return {"sample": sample, "path": _cell(sample, "path"), "mode": sample_mode(sample),
            "scale": sample_scale(sample) if sample_mode(sample) == "enhance" else None,  # isotropic: voxel size
            "voxel_size": sample_voxel_size(sample) or None,
            "series": _cell(sample, "series") or None, "channel": _cell(sample, "channel") or None,
            "timepoint": _cell(sample, "timepoint") or None,
            "reference": _cell(sample, "reference") or None,
            "training_fov": _cell(sample, "training_fov") or None,
            "model_from": model_source(sample) if model_source(sample) != sample else None,
            "settings": _applied_settings(sample)}


def _applied_settings(sample):
    """The settings that apply to the sample: those its mode reads (an adopting sample reads
    no training value but the guard's: its row's others are not recorded, the config's are);
    how its infer jobs run given as the defaults (selfres.settings.split_execution)."""
    used = _settings.settings_used_by_mode(sample_settings(sample), sample_mode(sample),
                                           adopting=model_source(sample) != sample,
                                           config_sections=settings_sections(config), scale=_enhance_scale(sample))
    return _settings.split_execution(used)[0]  # how its jobs ran reruns no report (nor is it recorded)


def report_args(wildcards):
    s = wildcards.sample
    return " ".join(_q(a) for a in ["--sample", s, "--config", json.dumps(resolved_config(s), sort_keys=True)])


def model_sources_of_samples():
    """``{sample: the sample whose model it uses}`` for the samples with a ``model_from``."""
    return {s: _cell(s, "model_from") for s in SAMPLE_IDS if _cell(s, "model_from") not in ("", s)}


def summary_cli_args():
    """The samples and their modes, as `selfres summary` takes them (the rule and `onerror`)."""
    exports = ({a: ids for a, (ids, _) in ACQUISITION_GROUPS.items()} | HELD_ACQUISITIONS
               if config["export_tiff"] else {})
    sources = model_sources_of_samples()
    return (["--samples", ",".join(ALL_SAMPLE_IDS), "--modes", json.dumps({s: sample_mode(s) for s in SAMPLE_IDS})]
            + (["--acquisitions", json.dumps(exports)] if exports else [])
            + (["--model-sources", json.dumps(sources, sort_keys=True)] if sources else [])
            + (["--waiting", json.dumps(waiting, sort_keys=True)]
               if (waiting := {s: p for s, p in INBOX_WAITING.items() if s not in ALL_SAMPLE_IDS}) else []))


def summary_args(wildcards):
    return " ".join(_q(a) for a in summary_cli_args())


def results_dir_of(wildcards, output):
    """The results root, derived from the summary's own output path."""
    return os.path.dirname(output.tsv) or "."


def _making_snakemakes_report():
    """`snakemake --report FILE`, or Snakemake 9's `--reporter html --report-html-path FILE` (not
    with `--report-after-run`, which first runs the workflow)."""
    args = _snakemake_args()
    return (args is not None and bool(getattr(args, "report", None) or getattr(args, "reporter", None))
            and not getattr(args, "report_after_run", False))


#: The samples whose outputs the default target asks for. `snakemake --report` refuses the
#: whole report when one file marked for it is missing ("marked for report but does not
#: exist"), and after a night with a failed sample one is: that report is made of the samples
#: whose report job finished (the summary beside them lists every sample).
TARGET_SAMPLES = ([s for s in SAMPLE_IDS if os.path.exists(f"{R}/{s}/report.html")]
                  if _making_snakemakes_report() else SAMPLE_IDS)


def all_outputs():
    if TARGET_SAMPLES != SAMPLE_IDS:  # snakemake --report after a night with a failed sample
        # (and without a summary, after a first night killed outright: the samples' reports alone)
        return (expand(f"{R}/{{sample}}/report.html", sample=TARGET_SAMPLES)
                + [f for f in (f"{R}/summary.tsv",) if os.path.exists(f)])
    # the intermediates too: Snakemake reruns nothing for a missing intermediate whose
    # downstream outputs are present (a retrain killed after its model/ was removed said
    # "Nothing to be done"); requested, it is remade and everything after it reruns
    per_sample = expand(
        [f"{R}/{{sample}}/normalized.ome.zarr", f"{R}/{{sample}}/train_fov.json", f"{R}/{{sample}}/model",
         f"{R}/{{sample}}/restored.ome.zarr", f"{R}/{{sample}}/qc/metrics.json",
         f"{R}/{{sample}}/report.html", f"{R}/{{sample}}/provenance.json"],
        sample=SAMPLE_IDS,
    )
    if config["export_tiff"]:
        per_sample += expand(f"{R}/{{sample}}/restored.ome.tif", sample=SAMPLE_IDS)
        per_sample += expand(f"{R}/{{acquisition}}.ome.tif", acquisition=sorted(ACQUISITION_GROUPS))
    refused = expand(f"{R}/{{sample}}/logs/refused_row", sample=sorted(REFUSED))  # never made: those fail
    return per_sample + refused + [f"{R}/summary.tsv", f"{R}/summary.html"]


def run_record(status, log):
    """Append this run's record to {results}/runs/ (selfres.runlog); never fails the run."""
    _write_run_record(R, status, log, ALL_SAMPLE_IDS, model_sources=model_sources_of_samples())


#: Touched by `onerror` after it writes the summary, and an input of the summary rule once it
#: exists: newer than the summary, it makes the next run rebuild it from that run's samples (after
#: the sheet is mended, a row removed, or another sheet given), as Snakemake keeps no record of a
#: summary written outside the rule. (The summary was dated back instead, which made a failed
#: night's summary look older than the night before's — to a cache, rsync -u, a find -mtime mail.)
SUMMARY_REBUILD_MARKER = f"{R}/runs/.rebuild_summary"


def summary_rebuild_marker(wildcards):
    return [SUMMARY_REBUILD_MARKER] if os.path.exists(SUMMARY_REBUILD_MARKER) else []


def summary_written_outside_the_rule():
    try:
        os.makedirs(os.path.dirname(SUMMARY_REBUILD_MARKER), exist_ok=True)
        Path(SUMMARY_REBUILD_MARKER).touch()
    except OSError:
        pass


onsuccess:
    if _is_a_run():  # not `snakemake --touch`, which ran nothing (it recorded a retrain that never was)
        run_record("success", log)


onerror:
    # A failed sample must still show in the morning summary (with its error; the run's log
    # names jobs that were killed). An argument list, no shell: the JSON of --modes holds
    # braces that shell() would try to format.
    import subprocess
    from selfres.runlog import snakemake_log_file

    if _is_a_run():  # (`snakemake --touch` that found outputs missing ran nothing)
        run_log = snakemake_log_file(log)
        subprocess.run(["selfres", "summary", R, *summary_cli_args(), "-o", f"{R}/summary.tsv", "--html",
                        f"{R}/summary.html"] + (["--snakemake-log", str(run_log)] if run_log else []), check=False)
        summary_written_outside_the_rule()
        run_record("error", log)


if workflow.is_main_process:
    # output chunks (shards) that the sample's tiles cannot write whole: a config mistake, said
    # before any job (the infer job would refuse them after the training), from the header
    for _s in SAMPLE_IDS:
        _infer = _stage_sections(_s, "infer")[0].get("infer", {})
        if sample_mode(_s) == "enhance" and (_infer.get("chunks") or _infer.get("shards")) and \
                _declared(_cell(_s, "path")):
            from selfres.pipeline import chunk_layout_problem

            _problem = chunk_layout_problem(
                _cell(_s, "path"), scale=_enhance_scale(_s), tile_size=_infer["tile_size"],
                chunks=_infer.get("chunks"), shards=_infer.get("shards"),
                series=_series_number(_s))
            if _problem:
                _stop_on_bad_config(_refuse, f"sample {_s!r}: {_problem}")
