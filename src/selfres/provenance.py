"""What made a sample's outputs, for its report and ``provenance.json``: the configured values
that did not (a step Snakemake did not rerun for a change), and the benchmark files of the
rules that did. Pure functions of the recorded files; no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .settings import Settings, from_dict, parse_triple, to_dict


def settings_not_applied(resolved_config: dict | None, model_meta: dict, store_attrs: dict) -> dict:
    """Values of the configuration a report is written with that differ from those that made
    its outputs: ``{"train.steps": {"config": 45, "used": 35}, …}`` — the train (and isotropic
    training) values against ``model.json``, the inference values against the restored store's
    fingerprint (isotropic ``fusion`` too), ``mode`` and ``scale`` against the model, whether
    ``model_from`` is set against whether the model was adopted. Values are compared as the
    stages read them (a sheet cell ``2.0,0.5,0.5`` is a list). Empty when they agree; they differ
    only when Snakemake did not rerun a step for a change (its recorded parameters were
    cleaned up, ``--cleanup-metadata``). A value the config leaves to the data (null) is not
    compared; nor are an adopting sample's train values (its model is its source's)."""
    raw = (resolved_config or {}).get("settings") or {}
    try:  # read as the stages read them (a sheet cell "2.0,0.5,0.5" is a list, "1e-3" a number)
        typed = to_dict(from_dict(Settings, raw))
    except (ConfigError, TypeError, ValueError):
        typed = raw
    # only the values the configuration gives (the typed copy fills in every default)
    cfg = {section: _given(values, typed.get(section) or {}) for section, values in raw.items()
           if isinstance(values, dict)}
    used_infer = ((store_attrs.get("fingerprint") or {}).get("settings")) or {}
    adopted = (model_meta.get("adopted_from") or {}).get("sample")
    pairs = [("infer", cfg.get("infer") or {}, used_infer)]
    if adopted is None:
        pairs += [("train", cfg.get("train") or {}, model_meta.get("settings") or {}),
                  ("isotropic", cfg.get("isotropic") or {}, model_meta.get("isotropic") or {})]
    out: dict = {}

    def compare(prefix: str, given: dict, used: dict) -> None:
        for key, value in given.items():
            if key not in used or value is None:
                continue
            if isinstance(value, dict) and isinstance(used[key], dict):
                compare(f"{prefix}.{key}", value, used[key])
            elif json.loads(json.dumps(value)) != json.loads(json.dumps(used[key])):
                out[f"{prefix}.{key}"] = {"config": value, "used": used[key]}

    for section, given, used in pairs:
        compare(section, given, used)
    fp = store_attrs.get("fingerprint") or {}
    if "fusion" in fp:  # isotropic inference's fusion sits beside its settings
        compare("isotropic", {k: v for k, v in (cfg.get("isotropic") or {}).items() if k == "fusion"},
                {"fusion": fp["fusion"]})
    rc = resolved_config or {}
    if rc.get("mode") and rc["mode"] != model_meta.get("mode", "enhance"):
        out["mode"] = {"config": rc["mode"], "used": model_meta.get("mode", "enhance")}
    elif rc.get("scale") and model_meta.get("factors") is not None:
        try:  # "1,2,2" from the sheet, a tuple from `selfres restore`
            scale = list(parse_triple(rc["scale"], name="scale", kind=int))
        except ConfigError:
            scale = None
        if scale is not None and scale != [int(f) for f in model_meta["factors"]]:
            out["scale"] = {"config": rc["scale"], "used": list(model_meta["factors"])}
    wanted = rc.get("model_from")
    if resolved_config is not None and (wanted is None) != (adopted is None):  # (a path in `selfres restore`)
        out["model_from"] = {"config": wanted, "used": adopted}
    return out


def _given(raw: dict, typed: dict) -> dict:
    """``typed``'s values of the keys ``raw`` has (nested)."""
    return {k: (_given(v, typed.get(k) or {}) if isinstance(v, dict) else typed.get(k, v)) for k, v in raw.items()}


def current_benchmarks(files: Sequence[Path], *, blocks: int | None, restored: str | Path | None = None
                       ) -> list[Path]:
    """The rules' benchmark files of the chain that made the current outputs: of ``train`` and
    ``adopt`` the newer (a sample that stopped adopting left its ``adopt.tsv``), of ``infer``
    and the scattered ``infer_prepare`` / ``infer_block_*`` / ``infer_gather`` the newer kind,
    and blocks only below ``blocks`` (a run with fewer blocks left the others); not ``report``,
    nor ``export_tiff`` unless ``restored``'s export beside it is at least as new."""
    by = {Path(f).stem: Path(f) for f in files}

    def age(names) -> float:
        return max((by[n].stat().st_mtime for n in names if n in by), default=-1.0)

    scattered = [n for n in by if n.startswith("infer_block_")] + ["infer_prepare", "infer_gather"]
    # the report job cannot time itself: report.tsv is the previous report's
    stale = {"report", "adopt" if age(["train"]) >= age(["adopt"]) else "train"}
    exported = Path(restored).with_name("restored.ome.tif") if restored is not None else None
    if exported is None or not exported.exists() or exported.stat().st_mtime < Path(restored).stat().st_mtime:
        stale.add("export_tiff")  # an earlier export_tiff's
    if age(["infer"]) >= age(scattered):
        stale |= set(scattered)
    else:
        stale.add("infer")
        stale |= {n for n in scattered if n.startswith("infer_block_") and blocks
                  and int(n.removeprefix("infer_block_")) >= int(blocks)}
    return [Path(f) for f in files if Path(f).stem not in stale]


def store_attrs(store: str | Path) -> dict:
    """The ``"selfres"`` attributes of one of selfres's OME-Zarr stores (NGFF 0.4 ``.zattrs`` or
    0.5 ``zarr.json``), read from its JSON without zarr; empty when there are none."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            attrs = json.loads((Path(store) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found = (attrs.get(key) or {}) if key else attrs
        return (found.get("selfres") or {}) if isinstance(found, dict) else {}
    return {}


def file_stat(path: str | Path) -> dict | None:
    """What a normalised store records of the acquisition it was made from (``source_stat``): a
    file's size and modification time (ns); None for a Zarr store (a folder, whose own time does
    not follow its chunks) or a path that cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns} if os.path.isfile(path) else None


def output_mtime_ns(folder: str | Path) -> int | None:
    """A folder output's time as Snakemake reads it: its ``.snakemake_timestamp``, else the folder's."""
    for path in (Path(folder) / ".snakemake_timestamp", Path(folder)):
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            continue
    return None


def names_source(attrs: dict, source: str | os.PathLike) -> bool | None:
    """Whether a normalised store's ``attrs`` say it was made from ``source``: the path its stage
    was given (``source``), or the same file by its resolved path (``source_resolved``: another
    spelling, a symlinked folder). None where they record neither."""
    recorded = [p for p in (attrs.get("source"), attrs.get("source_resolved")) if p]
    if not recorded:
        return None
    return str(source) in recorded or os.path.realpath(source) in recorded


def replaced_by_an_older_file(store: str | Path, source: str | Path, *, counts=None) -> str | None:
    """Why ``source`` is no longer the acquisition the normalised ``store`` was made from while
    Snakemake would rerun nothing: its size or modification time differ from the store's
    ``source_stat``, yet it is not newer than the store (``cp -p`` or ``rsync -a`` of a file made
    before the last run). None when it is the same file, newer (Snakemake reruns it anyway), gone
    (an archived acquisition), a Zarr store, another path than the one the store was made from
    (the sheet's row changed: Snakemake reruns it for its changed parameter), or the store records
    nothing (made before the forty-first session).

    ``counts`` (a :class:`selfres.sheet.FileCounts`): keeps the checksum comparison of a file of the
    same size between the workflow's starts, for as long as the file keeps its size and time: a
    copy back keeps its older time, so every start (a dry run too) read the whole acquisition again."""
    attrs = store_attrs(store)
    recorded = attrs.get("source_stat")
    if names_source(attrs, source) is False:
        # two rows' files swapped (a walkthrough): the warning told of a replacement that was not
        return None
    now = file_stat(source)
    made = output_mtime_ns(store)
    if not recorded or now is None or made is None or now == recorded or now["mtime_ns"] > made:
        return None
    if now["size"] == recorded["size"] and attrs.get("source_checksum"):
        # the same bytes given a time again (a copy back, a time set to the microsecond): no replacement
        def same_bytes() -> int:
            from .io import file_checksum

            return int(file_checksum(source) == attrs["source_checksum"])

        try:
            if (same_bytes() if counts is None else
                    counts.get(f"same_bytes|{attrs['source_checksum']}", str(source), None, same_bytes)):
                return None
        except OSError:
            pass
    # to the second where that tells them apart, else to the microsecond (a copy made within the same
    # second), else to the nanosecond (a helper read "16:10:19.231047 then, 16:10:19.231047 now")
    digits = next(d for d in (0, 6, 9) if d == 9 or recorded["mtime_ns"] // 10 ** (9 - d) != now["mtime_ns"] // 10 ** (9 - d))
    return (f"{source} is not the file its normalised copy was made from ({recorded['size']} bytes then, "
            f"{now['size']} now; modified {_when(recorded['mtime_ns'], digits)} then, {_when(now['mtime_ns'], digits)} "
            "now), and it is not newer than that copy, so Snakemake would not see the change")


def _when(ns: int, digits: int = 0) -> str:
    """A file time as local date and time, with ``digits`` decimals of its second."""
    import time

    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 10**9))
    return text + (f".{ns % 10**9:09d}"[:digits + 1] if digits else "")


def date_before(folder: str | Path, mtime_ns: int) -> bool:
    """Date a folder output (its ``.snakemake_timestamp``, made if missing) one second before
    ``mtime_ns``, so that Snakemake reruns the job that writes it and every job after it; False
    where it cannot (another account's folder, a read-only file system)."""
    stamp = Path(folder) / ".snakemake_timestamp"
    when = mtime_ns - 1_000_000_000
    try:
        stamp.touch()
        os.utime(stamp, ns=(when, when))
    except OSError:
        return False
    return True
