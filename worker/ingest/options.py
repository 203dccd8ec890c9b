"""What ingest is asked to do (IngestOptions) and what it says about each row (Verdict)."""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.statuses import Status


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """How to read and validate one recipient list."""

    channel: str  # "sms" or "email"
    region: str | None = None  # default region for national numbers, ISO alpha-2
    phone_column: str | None = None  # one column by name (or, leniently, a sequence of names)
    email_column: str | None = None
    max_bytes: int | None = None
    max_rows: int | None = None
    workers: int = 1  # 1: in-process; >1: a process pool over chunks, results still in row order
    # The address columns to try per row, in order (after phone_column/email_column if that is given
    # too); empty: every column whose header is a known alias, mobile-like names first.
    phone_columns: tuple[str, ...] = ()
    email_columns: tuple[str, ...] = ()
    allow_landlines: bool = False  # SMS: fixed-line numbers pass (providers that read texts aloud)
    allow_smtputf8: bool = False  # email: non-ASCII local parts pass

    def explicit_columns(self, channel: str) -> tuple[str, ...]:
        """The address columns named for `channel` (single and plural options), in order, no repeats;
        TypeError when one is not a string."""
        single, several = ((self.phone_column, self.phone_columns) if channel == "sms"
                           else (self.email_column, self.email_columns))
        names: list[str] = []
        for given in (single, several):
            if given is None:
                continue
            for name in ((given,) if isinstance(given, str) else tuple(given)):
                if not isinstance(name, str):
                    raise TypeError(name)
                if name.strip() and name not in names:
                    names.append(name)
        return tuple(names)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What validation decided for one input row."""

    row: int  # 1-based record number (header and blank lines not counted)
    given: str  # the address as given, trimmed ('' if missing)
    recipient: str  # normalised (E.164 / normalised email); '' when invalid
    status: Status  # Status.PENDING (valid), Status.INVALID or Status.DUPLICATE
    reason: str  # '' for valid
    fields: dict[str, str] = field(default_factory=dict)  # the other columns of the row
    duplicate_of: int | None = None
    column: str = ""  # the header the address came from (with several address columns: the one used)

    @property
    def valid(self) -> bool:
        return self.status is Status.PENDING


_new = object.__new__
_SETTERS = tuple(Verdict.__dict__[name].__set__
                 for name in ("row", "given", "recipient", "status", "reason", "fields", "duplicate_of", "column"))


def make_verdict(row: int, given: str, recipient: str, status: Status, reason: str, fields: dict[str, str],
                 duplicate_of: int | None = None, column: str = "") -> Verdict:
    """Verdict(...) without the frozen dataclass __init__'s overhead (half the cost; the hot path)."""
    verdict = _new(Verdict)
    s_row, s_given, s_recipient, s_status, s_reason, s_fields, s_duplicate_of, s_column = _SETTERS
    s_row(verdict, row)
    s_given(verdict, given)
    s_recipient(verdict, recipient)
    s_status(verdict, status)
    s_reason(verdict, reason)
    s_fields(verdict, fields)
    s_duplicate_of(verdict, duplicate_of)
    s_column(verdict, column)
    return verdict
