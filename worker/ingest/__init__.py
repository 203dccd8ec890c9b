"""Ingest: recipient files (any encoding and dialect spreadsheets and shops export) into per-row verdicts.

    open_recipient_file(path, options) -> RecipientFile   every up-front check; InputError if unusable
    RecipientFile.iter_verdicts() -> Iterator[Verdict]     streaming, deduped, in row order
    validate_records(records, options) -> Iterator[Verdict] the same for Python records
    summarize(verdicts, report_path=None, is_suppressed=None) -> dict   `validate --json` counts (+ report)
    write_rejects(verdicts, path, columns) -> int          `validate --rejects`: invalid rows as they were
    rejects_rows(verdicts, columns) -> Iterator[list[str]]  the same as rows of cells (to stream)
    normalize_address(channel, value, region=None) -> str  one address; InputError if unusable
"""
from __future__ import annotations

from worker.ingest.normalize import normalize_address
from worker.ingest.options import IngestOptions, Verdict
from worker.ingest.report import REPORT_COLUMNS, RejectsWriter, rejects_rows, summarize, write_rejects
from worker.ingest.validate import RecipientFile, open_recipient_file, validate_records

__all__ = [
    "REPORT_COLUMNS",
    "IngestOptions",
    "RecipientFile",
    "RejectsWriter",
    "Verdict",
    "normalize_address",
    "open_recipient_file",
    "rejects_rows",
    "summarize",
    "validate_records",
    "write_rejects",
]
