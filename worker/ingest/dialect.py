"""Choosing the delimiter (comma, semicolon, tab, pipe) from a sample of the decoded text."""
from __future__ import annotations

import csv
import io
import re

DELIMITERS = (",", ";", "\t", "|")
SAMPLE_CHARS = 64 * 1024
_SEP_LINE = re.compile(r"sep=(.)[ \t]*(\r\n|\n|\r|$)", re.IGNORECASE)


class Dialect(csv.Dialect):
    """The CSV dialect every recipient file is read with; only the delimiter varies."""

    delimiter = ","
    quotechar = '"'
    doublequote = True
    skipinitialspace = True
    lineterminator = "\r\n"
    quoting = csv.QUOTE_MINIMAL
    strict = False


def dialect_for(delimiter: str) -> type[Dialect]:
    return type("RecipientDialect", (Dialect,), {"delimiter": delimiter})


def sep_line(sample: str) -> str | None:
    """The delimiter named by Excel's `sep=;` first line, if the sample starts with one."""
    match = _SEP_LINE.match(sample)
    return match.group(1) if match else None


def sniff(sample: str, complete: bool) -> str:
    """The delimiter that splits the sample's records most consistently into more than one field.

    `complete` says whether the sample is the whole file (else its last, maybe cut, record is dropped).
    A file with a single column reads the same with any of them, and gets a comma.
    """
    best, best_score = ",", (False, 0.0, 0, 0)
    for rank, delimiter in enumerate(DELIMITERS):
        try:
            records = [r for r in csv.reader(io.StringIO(sample, newline=""), dialect_for(delimiter)) if any(c.strip() for c in r)]
        except csv.Error:
            continue
        if not complete and len(records) > 1:
            records.pop()
        if not records:
            continue
        width = len(records[0])
        consistent = sum(1 for r in records if len(r) == width) / len(records)
        score = (width > 1, consistent, width, -rank)
        if score > best_score:
            best, best_score = delimiter, score
    return best
