"""The inbox scan alone (the workflow's nightly runs: tests/integration/test_nightly.py)."""

import pytest

from selfres.errors import ConfigError
from selfres.inbox import scan_inbox


def _files(root, *names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"II*\0")
    return root


def test_two_acquisitions_whose_ids_differ_only_in_case_clash_and_a_sheet_id_in_another_case_wins(tmp_path):
    """``a/Scan1.tif`` and ``b/scan1.tif`` would write one ``results/scan1`` on macOS or an SMB share."""
    _files(tmp_path, "a/Scan1.tif", "b/scan1.tif", "a/other.tif")
    pattern = str(tmp_path / "**" / "*.tif")
    with pytest.raises(ConfigError, match=r"same sample id: 'Scan1 / scan1' from .*Scan1\.tif, .*scan1\.tif"):
        scan_inbox([pattern], settle_seconds=0, now=2e9)
    skipped = scan_inbox([pattern], settle_seconds=0, now=2e9, on_clash="skip")
    assert [r["sample"] for r in skipped.rows] == ["other"] and skipped.clashes[0][0] == "Scan1 / scan1"
    # bad_rows: fail_alone: each real id fails alone (a review: the joined name became a sample id, refused
    # as a folder name, and stopped the whole run)
    refused = skipped.refusals()
    assert sorted(refused) == ["Scan1", "scan1"] and all("Scan1.tif, " in why and "scan1.tif." in why
                                                         for why in refused.values())
    sheet_wins = scan_inbox([pattern], settle_seconds=0, now=2e9, known_ids=["SCAN1"])
    assert [r["sample"] for r in sheet_wins.rows] == ["other"]
    assert [sid for _, sid in sheet_wins.shadowed] == ["SCAN1", "SCAN1"]  # the sheet's row, as the sheet spells it
    assert all("left to the sample sheet's row 'SCAN1'" in m for m in sheet_wins.messages())
    one = scan_inbox([str(tmp_path / "a" / "*.tif")], settle_seconds=0, now=2e9)
    assert [r["sample"] for r in one.rows] == ["Scan1", "other"]  # the id keeps its case
