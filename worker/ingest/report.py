"""Counting verdicts and writing the `dispatch validate --report` CSV."""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from worker.cells import safe_cell
from worker.errors import UsageError
from worker.ingest.options import Verdict
from worker.statuses import Status

REPORT_COLUMNS = ("row", "input", "recipient", "verdict", "reason")
SUPPRESSED_REASON = "on the suppression list"


def summarize(verdicts: Iterable[Verdict], report_path: str | os.PathLike[str] | None = None,
              is_suppressed: Callable[[str], bool] | None = None) -> dict[str, int]:
    """Consume verdicts, optionally write the validate report, and return the `--json` counts.

    A valid verdict whose recipient `is_suppressed` counts (and is reported) as suppressed, not valid.
    The report is written to a temporary name and renamed when complete.
    """
    counts = {"rows": 0, "valid": 0, "invalid": 0, "duplicates": 0}
    if is_suppressed is not None:
        counts["suppressed"] = 0
    writer = handle = tmp = None
    if report_path is not None:
        target = Path(report_path)
        tmp = target.with_name(f".{target.name}.part")
        try:
            handle = tmp.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise UsageError(f"Cannot write the report to {str(target)!r}: {exc.strerror or exc}.") from None
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
    rows = valid = invalid = duplicates = suppressed = 0
    try:
        for v in verdicts:
            rows += 1
            status = v.status
            reason = v.reason
            if status == Status.PENDING:
                if is_suppressed is not None and is_suppressed(v.recipient):
                    suppressed += 1
                    verdict, reason = "suppressed", SUPPRESSED_REASON
                else:
                    valid += 1
                    verdict = "valid"
            elif status == Status.DUPLICATE:
                duplicates += 1
                verdict = "duplicate"
            elif status == Status.SUPPRESSED:
                suppressed += 1
                verdict = "suppressed"
            else:
                invalid += 1
                verdict = "invalid"
            if writer is not None:
                writer.writerow((v.row, safe_cell(v.given), safe_cell(v.recipient), verdict, safe_cell(reason)))
        if handle is not None:
            handle.close()
            os.replace(tmp, report_path)  # type: ignore[arg-type]
            handle = None
    except OSError as exc:
        raise UsageError(f"Cannot write the report to {str(report_path)!r}: {exc.strerror or exc}.") from None
    finally:
        if handle is not None:
            handle.close()
            try:
                os.unlink(tmp)  # type: ignore[arg-type]
            except OSError:
                pass
    counts.update(rows=rows, valid=valid, invalid=invalid, duplicates=duplicates)
    if suppressed or is_suppressed is not None:
        counts["suppressed"] = suppressed
    return counts
