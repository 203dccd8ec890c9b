"""The per-recipient report: streamed whole (CSV, JSON) or read a page at a time for the service's
table, filtered by status and searched, without ever holding a million rows in memory."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from worker import keys
from worker.cells import safe_cell
from worker.errors import UsageError
from worker.runs import ROW_CHUNK, ReportRow, Runs, _report_row
from worker.statuses import Status

MAX_SCAN = 200_000  # rows one page request may look through for a filter or search before it pauses


def check_status(status: str | None) -> str | None:
    """A status filter, or UsageError naming the ones there are."""
    if status and status not in {s.value for s in Status}:
        raise UsageError(f"There is no status {status!r}; use one of {', '.join(s.value for s in Status)}.")
    return status or None


def iter_report(runs: Runs, run_id: str, status: str | None = None) -> Iterator[ReportRow]:
    """Every row in input order (only those of `status` when given), read in chunks."""
    status = check_status(status)
    for row in runs.iter_report(run_id):
        if status is None or row.status == status:
            yield row


@dataclass(frozen=True)
class Page:
    """One page of the recipients table. `next_row` is where the next page's scan starts (None at the
    end); when a filter met no `limit` rows within MAX_SCAN rows, `rows` is short and `next_row` set."""

    rows: list[ReportRow]
    start: int
    next_row: int | None
    total: int


def page(runs: Runs, run_id: str, *, start: int = 1, limit: int = 50, status: str | None = None,
         query: str = "", max_scan: int = MAX_SCAN) -> Page:
    """Rows from `start` on that match the status and the search text (in the recipient, the error
    message, the error code or the row number), at most `limit` of them."""
    status = check_status(status)
    needle = query.strip().lower()
    total = int(runs.meta(run_id).get("total") or runs.redis.hlen(keys.rows(run_id)))
    start, found, row = max(1, start), [], max(1, start)
    while row <= total and len(found) < limit and row - start < max_scan:
        last = min(total, row + ROW_CHUNK - 1)
        numbers = list(range(row, last + 1))
        for number, raw in zip(numbers, runs.redis.hmget(keys.rows(run_id), numbers)):
            if raw is None:
                continue
            r = _report_row(number, raw)
            if (status is None or r.status == status) and (not needle or _matches(r, needle)):
                found.append(r)
                if len(found) == limit:
                    return Page(found, start, number + 1 if number < total else None, total)
        row = last + 1
    return Page(found, start, row if row <= total else None, total)


def _matches(row: ReportRow, needle: str) -> bool:
    return (needle in row.recipient.lower() or needle in row.error_message.lower()
            or needle == str(row.row) or needle == str(row.error_code or ""))


def write_csv(rows: Iterable[ReportRow], out: TextIO) -> None:
    """The report as CSV, every cell spreadsheet-safe."""
    for chunk in csv_chunks(rows):
        out.write(chunk)


def csv_cells(r: ReportRow) -> list:
    return [r.row, safe_cell(r.recipient), r.status, r.error_code or "", safe_cell(r.error_message), r.attempts]


def write_json(rows: Iterable[ReportRow], out: TextIO) -> None:
    """The report as one JSON array, written row by row."""
    for chunk in json_chunks(rows):
        out.write(chunk)


def json_chunks(rows: Iterable[ReportRow]) -> Iterator[str]:
    yield "["
    for i, r in enumerate(rows):
        yield ("," if i else "") + "\n" + json.dumps(row_dict(r), ensure_ascii=False)
    yield "\n]\n"


def row_dict(r: ReportRow) -> dict:
    return {f: getattr(r, f) for f in ReportRow.FIELDS}


def csv_chunks(rows: Iterable[ReportRow], rows_per_chunk: int = ROW_CHUNK) -> Iterator[str]:
    """The CSV report in pieces of about `rows_per_chunk` rows (for a streamed HTTP answer)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ReportRow.FIELDS)
    for i, r in enumerate(rows, 1):
        writer.writerow(csv_cells(r))
        if i % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
