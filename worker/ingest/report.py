"""Counting verdicts and writing the `dispatch validate --report` and `--rejects` CSVs."""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from worker.cells import safe_cell
from worker.errors import UsageError
from worker.ingest.options import Verdict
from worker.statuses import Status

REPORT_COLUMNS = ("row", "input", "recipient", "verdict", "reason")
REPORT_COLUMNS_SEVERAL = (*REPORT_COLUMNS, "column")  # with several address columns: which one was used
SUPPRESSED_REASON = "on the suppression list"
REJECT_REASON_COLUMN = "reason"  # `reject_reason` when the file has a column named `reason` already


def summarize(verdicts: Iterable[Verdict], report_path: str | os.PathLike[str] | None = None,
              is_suppressed: Callable[[str], bool] | None = None, with_column: bool = False) -> dict[str, int]:
    """Consume verdicts, optionally write the validate report, and return the `--json` counts.

    A valid verdict whose recipient `is_suppressed` counts (and is reported) as suppressed, not valid.
    `with_column` adds a last `column` column to the report: the header each row's address came from
    (for files with several address columns). The report is written to a temporary name and renamed
    when complete.
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
        writer.writerow(REPORT_COLUMNS_SEVERAL if with_column else REPORT_COLUMNS)
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
                line = [v.row, safe_cell(v.given), safe_cell(v.recipient), verdict, safe_cell(reason)]
                if with_column:
                    line.append(safe_cell(v.column))
                writer.writerow(line)
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


# -- rejects: the rows that will not be sent, as they were, to fix and upload again -----------------------

def is_rejected(v: Verdict) -> bool:
    """Whether a verdict's row goes to the rejects file: it is invalid (duplicates are left out: their
    first row is sent, and uploading them again would message the same person twice)."""
    return v.status == Status.INVALID


def rejects_rows(verdicts: Iterable[Verdict], columns: Sequence[str]) -> Iterator[list[str]]:
    """The rejects CSV as rows of cells: a header (the file's columns, then the reason), then one row
    per rejected verdict with every original column (the address back in the column it came from) and
    the reason. Cells are spreadsheet-safe (worker.cells.safe_cell)."""
    columns = list(columns)
    known = set(columns)
    reason_column = REJECT_REASON_COLUMN if REJECT_REASON_COLUMN not in known else "reject_reason"
    yield [*(safe_cell(c) for c in columns), reason_column]
    for v in verdicts:
        if not is_rejected(v):
            continue
        yield _reject_cells(v, columns, known)


def _reject_cells(v: Verdict, columns: list[str], known: set[str]) -> list[str]:
    fields = v.fields
    # The column the address came from is the one not in fields (a verdict read back from an upload
    # draft has no `column`).
    source = v.column if v.column in known else next((c for c in columns if c not in fields), None)
    return [*(safe_cell(v.given if c == source else fields.get(c, "")) for c in columns), safe_cell(v.reason)]


class RejectsWriter:
    """Writes the rejects CSV while verdicts pass through: `for v in writer.watch(verdicts)`, then
    `writer.close()` (renames the finished file into place; `discard()` if the pass was abandoned)."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.known = set(self.columns)
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.part")
        try:
            self._handle = self._tmp.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(next(rejects_rows((), self.columns)))
        except OSError as exc:
            self.discard()
            raise UsageError(f"Cannot write the rejects to {str(self.path)!r}: {exc.strerror or exc}.") from None

    def watch(self, verdicts: Iterable[Verdict]) -> Iterator[Verdict]:
        write, known, columns = self._writer.writerow, self.known, self.columns
        try:
            for v in verdicts:
                if is_rejected(v):
                    write(_reject_cells(v, columns, known))
                    self.count += 1
                yield v
        except OSError as exc:
            self.discard()
            raise UsageError(f"Cannot write the rejects to {str(self.path)!r}: {exc.strerror or exc}.") from None

    def close(self) -> int:
        """Finish the file; the number of rejected rows written."""
        try:
            self._handle.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.discard()
            raise UsageError(f"Cannot write the rejects to {str(self.path)!r}: {exc.strerror or exc}.") from None
        return self.count

    def discard(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not handle.closed:
            handle.close()
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


def write_rejects(verdicts: Iterable[Verdict], path: str | os.PathLike[str], columns: Sequence[str]) -> int:
    """Write the rejects CSV for these verdicts to `path` (atomically); the number of rejected rows.

    `columns` are the file's columns in order (RecipientFile.columns, or an upload's `fields`)."""
    writer = RejectsWriter(path, columns)
    try:
        for _ in writer.watch(verdicts):
            pass
    except BaseException:
        writer.discard()
        raise
    return writer.close()
