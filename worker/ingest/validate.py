"""Reading a recipient file (or records) into per-row verdicts: streaming, deduped, in row order."""
from __future__ import annotations

import csv
import multiprocessing
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from pathlib import Path

from worker.errors import InputError
from worker.ingest import columns as cols
from worker.ingest.decode import detect_encoding
from worker.ingest.dedupe import DedupeTable
from worker.ingest.dialect import DELIMITERS, SAMPLE_CHARS, dialect_for, sep_line, sniff
from worker.ingest.normalize import (
    LENIENT,
    Rules,
    check_channel,
    check_region,
    clean,
    normalize_batch,
    normalizer,
)
from worker.ingest.options import IngestOptions, Verdict, make_verdict
from worker.statuses import Status

CHUNK_ROWS = 2000  # rows per unit of work for the process pool
HEAD_BYTES = 64 * 1024

# One row on its way to a verdict: (row, given, country cell or None, fields, reason it is already invalid
# or '', column). With one address column `given` is its value and `column` its header; with several,
# both are tuples (the row's values and their headers, in the order to try them) and `fields` holds
# every column: the one used is taken out when the verdict is made.
Row = tuple[int, "str | tuple[str, ...]", "str | None", dict[str, str], str, "str | tuple[str, ...]"]

_PENDING, _INVALID, _DUPLICATE = Status.PENDING, Status.INVALID, Status.DUPLICATE


def _checked(options: IngestOptions) -> tuple[str, str | None, tuple[str, ...], Rules]:
    """(channel, default region, explicit columns, rules) after checking the options; InputError if wrong."""
    if not isinstance(options, IngestOptions):
        raise InputError("Ingest options must be an IngestOptions.")
    channel = check_channel(options.channel)
    region = check_region(options.region)
    if not isinstance(options.workers, int) or options.workers < 1:
        raise InputError(f"workers must be a whole number of at least 1, not {options.workers!r}.")
    for name in ("max_bytes", "max_rows"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InputError(f"{name} must be a whole number of at least 0, not {value!r}.")
    try:
        explicit = options.explicit_columns(channel)
    except TypeError as exc:
        what = "phone" if channel == "sms" else "email"
        raise InputError(f"The {what} columns must be given as header names, not {exc.args[0]!r}.") from None
    for name in ("allow_landlines", "allow_smtputf8"):
        if not isinstance(getattr(options, name), bool):
            raise InputError(f"{name} must be True or False, not {getattr(options, name)!r}.")
    return channel, region, explicit, (options.allow_landlines, options.allow_smtputf8)


def human_size(n: int) -> str:
    """A byte count as people read it: 2.0 GB, 97.7 KB, 512 bytes."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover


class RecipientFile:
    """A recipient file that passed every up-front check; `iter_verdicts()` reads it (again) row by row."""

    def __init__(self, path: Path, options: IngestOptions) -> None:
        self.path = path
        self.options = options
        self.channel, self.region, explicit, self.rules = _checked(options)
        self.size = self._stat()
        with self._open_binary() as f:
            head = f.read(HEAD_BYTES)
        self.encoding: str = detect_encoding(path, head)
        sample, complete = self._sample()
        named = sep_line(sample)
        self._skip_first_line = named in DELIMITERS
        self.delimiter: str = named if self._skip_first_line else sniff(sample, complete)  # type: ignore[assignment]
        self._has_header = True
        self.rows: int = 0
        self._scan(explicit)

    # -- up-front checks ------------------------------------------------------------------------------
    def _stat(self) -> int:
        name = self.path.name or str(self.path)
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise InputError(f"There is no file {str(self.path)!r}.") from None
        except OSError as exc:
            raise InputError(f"{name} cannot be read: {exc.strerror or exc}.") from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{str(self.path)!r} is a directory, not a recipient file.")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{str(self.path)!r} is not a regular file.")
        if not os.access(self.path, os.R_OK):
            raise InputError(f"{name} cannot be read: permission denied.")
        limit = self.options.max_bytes
        if limit is not None and st.st_size > limit:
            raise InputError(f"{name} is {human_size(st.st_size)}; the limit is {human_size(limit)}.")
        if st.st_size == 0:
            raise InputError(f"{name} is empty.")
        return st.st_size

    def _open_binary(self):
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise InputError(f"{self.path.name} cannot be read: {exc.strerror or exc}.") from None

    def _open_text(self):
        try:
            return self.path.open("r", encoding=self.encoding, errors="strict", newline="")
        except OSError as exc:
            raise InputError(f"{self.path.name} cannot be read: {exc.strerror or exc}.") from None

    def _sample(self) -> tuple[str, bool]:
        try:
            with self._open_text() as f:
                sample = f.read(SAMPLE_CHARS)
                return sample, f.read(1) == ""
        except UnicodeDecodeError:  # the file changed under us
            raise InputError(f"{self.path.name} changed while it was being read.") from None

    def _scan(self, explicit: tuple[str, ...]) -> None:
        """Find the header and the address column, and count the rows (against max_rows)."""
        records = self._records()
        try:
            header = next(records, None)
            if header is None:
                raise InputError(f"{self.path.name} has no header row: it has no text but blank lines.")
            names = cols.unique_columns(header)
            try:
                self._layout = cols.layout(names, self.channel, explicit)
            except InputError:
                if explicit or not self._headerless(header):
                    raise
                self._has_header = False
                self._layout = cols.layout((cols.WHAT[self.channel],), self.channel, None)
            limit = self.options.max_rows
            rows = 0 if self._has_header else 1
            for _ in records:
                rows += 1
                if limit is not None and rows > limit:
                    raise InputError(f"{self.path.name} has more than {limit:,} rows; the limit is {limit:,}.")
            self.rows = rows
        finally:
            records.close()

    def _headerless(self, header: list[str]) -> bool:
        """A single column whose first cell is itself a usable address: a list without a header."""
        if len(header) != 1:
            return False
        _recipient, reason, _key = normalizer(self.channel, LENIENT)(header[0], self.region)
        return not reason

    def _records(self) -> Iterator[list[str]]:
        """Every non-blank record of the file, the header included."""
        f = self._open_text()
        reader = csv.reader(f, dialect_for(self.delimiter))
        try:
            with f:
                if self._skip_first_line:
                    f.readline()
                for cells in reader:
                    joined = "".join(cells)
                    if joined and not joined.isspace():
                        yield cells
        except csv.Error as exc:
            raise InputError(f"{self.path.name} cannot be read as CSV (line {reader.line_num}): {exc}.") from None
        except UnicodeDecodeError:
            raise InputError(f"{self.path.name} changed while it was being read.") from None
        except OSError as exc:
            raise InputError(f"{self.path.name} cannot be read: {exc.strerror or exc}.") from None

    # -- what others use ------------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return list(self._layout.columns)

    @property
    def address_column(self) -> str:
        """The first address column (the one templates name the recipient by)."""
        return self._layout.address_column

    @property
    def address_columns(self) -> list[str]:
        """Every address column, in the order each row tries them."""
        return list(self._layout.address_columns)

    @property
    def country_column(self) -> str | None:
        index = self._layout.country
        return None if index is None else self._layout.columns[index]

    @property
    def has_header(self) -> bool:
        return self._has_header

    def iter_verdicts(self) -> Iterator[Verdict]:
        """One verdict per data row, in row order; reads the file again on every call."""
        return _verdicts(self._rows(), self.channel, self.region, self.options.workers, expected=self.rows,
                         rules=self.rules)

    __iter__ = iter_verdicts

    def __repr__(self) -> str:
        return (f"RecipientFile({str(self.path)!r}, encoding={self.encoding!r}, delimiter={self.delimiter!r}, "
                f"address_columns={self.address_columns!r}, rows={self.rows})")

    def _rows(self) -> Iterator[Row]:
        layout = self._layout
        if len(layout.address_columns) > 1:
            yield from self._rows_several()
            return
        address, country = layout.address, layout.country
        column = layout.address_column
        others = tuple((layout.columns[i], i) for i in layout.others)
        for row, cells, ragged in self._fitted():
            if ragged:
                n = len(cells)
                given = clean(cells[address]) if address < n else ""
                yield (row, given, None, {name: cells[i].strip() for name, i in others if i < n}, ragged, column)
            else:
                yield (row, clean(cells[address]), None if country is None else cells[country],
                       {name: cells[i].strip() for name, i in others}, "", column)

    def _rows_several(self) -> Iterator[Row]:
        layout = self._layout
        addresses, country = layout.addresses, layout.country
        names = layout.address_columns
        every = tuple(enumerate(layout.columns))
        for row, cells, ragged in self._fitted():
            if ragged:
                n = len(cells)
                given = tuple(clean(cells[i]) if i < n else "" for i in addresses)
                yield (row, given, None, {name: cells[i].strip() for i, name in every if i < n}, ragged, names)
            else:
                yield (row, tuple(clean(cells[i]) for i in addresses), None if country is None else cells[country],
                       {name: cells[i].strip() for i, name in every}, "", names)

    def _fitted(self) -> Iterator[tuple[int, list[str], str]]:
        """(row number, cells, reason the row is ragged or '') for every data record; a record with
        only empty cells past the header's width (a stray delimiter at the line's end) is cut to fit."""
        width = len(self._layout.columns)
        records = self._records()
        if self._has_header:
            next(records, None)
        for row, cells in enumerate(records, 1):
            n = len(cells)
            if n == width:
                yield row, cells, ""
            elif n > width and not "".join(cells[width:]).strip():
                yield row, cells[:width], ""
            else:
                yield row, cells, _ragged(n, width)


def _ragged(n: int, width: int) -> str:
    return f"row has {n} field{'s' if n != 1 else ''}, the header has {width}"


def open_recipient_file(path: str | os.PathLike[str], options: IngestOptions) -> RecipientFile:
    """Check a recipient file up front (readable, size, encoding, dialect, columns, row count).

    Raises InputError, with one sentence saying what is wrong, if the file cannot be used.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"A recipient file must be a path, not {type(path).__name__}.")
    return RecipientFile(Path(path), options)


# -- records from Python ------------------------------------------------------------------------------

def validate_records(records: Iterable[Mapping[str, str]], options: IngestOptions) -> Iterator[Verdict]:
    """Validation and dedupe for records that did not come from a file; rows are numbered 1..N.

    The address is found under the same column aliases as in files ('phone' / 'email' …, or the
    explicit column options), each record falling back through its address keys in order. A Sized input
    longer than max_rows is refused here; an iterator is refused with InputError when it reaches that many.
    """
    channel, region, explicit, rules = _checked(options)
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise InputError("Recipients must be an iterable of mappings such as {'phone': '+44…'}.")
    limit = options.max_rows
    expected = len(records) if isinstance(records, Sized) else 0
    if limit is not None and expected > limit:
        raise InputError(f"There are {expected:,} recipients; the limit is {limit:,}.")
    return _verdicts(_record_rows(records, channel, explicit, limit), channel, region, options.workers,
                     expected=expected, rules=rules)


RecordLayout = tuple[tuple, object]  # (the address keys, in order; the country key or None)


def _record_layout(keys: tuple, channel: str, explicit: tuple[str, ...]) -> RecordLayout:
    names = [str(k) for k in keys]
    try:
        found = cols.find_columns(names, channel, explicit)
    except KeyError:
        found = ()  # the named column is not in this record: it has no address
    if not found:
        return (), None
    country = cols.find_country(names, found) if channel == "sms" else None
    return tuple(keys[i] for i in found), (None if country is None else keys[country])


def _record_rows(records: Iterable[Mapping[str, str]], channel: str, explicit: tuple[str, ...],
                 limit: int | None) -> Iterator[Row]:
    layouts: dict[tuple, RecordLayout] = {}
    row = 0
    for record in records:
        row += 1
        if limit is not None and row > limit:
            raise InputError(f"There are more than {limit:,} recipients; the limit is {limit:,}.")
        if not isinstance(record, Mapping):
            yield row, "", None, {}, "not a record (expected a mapping such as {'phone': '+44…'})", ""
            continue
        try:
            keys = tuple(record.keys())
            found = layouts.get(keys)
            if found is None:
                found = _record_layout(keys, channel, explicit)
                if len(layouts) < 1024:
                    layouts[keys] = found
            addresses, country = found
            country_cell = None if country is None else clean(record.get(country))
            if len(addresses) > 1:
                given: str | tuple[str, ...] = tuple(clean(record.get(k)) for k in addresses)
                column: str | tuple[str, ...] = tuple(str(k) for k in addresses)
                fields = {str(k): clean(v) for k, v in record.items()}
            else:
                address = addresses[0] if addresses else None
                given = clean(record.get(address)) if address is not None else ""
                column = "" if address is None else str(address)
                fields = {str(k): clean(v) for k, v in record.items() if k != address}
        except Exception:  # noqa: BLE001 - a record that cannot be read is an invalid row, not a crash
            yield row, "", None, {}, "this record could not be read", ""
            continue
        yield row, given, country_cell, fields, "", column


# -- the pipeline ---------------------------------------------------------------------------------------

def _batches(rows: Iterator[Row]) -> Iterator[list[Row]]:
    while batch := list(islice(rows, CHUNK_ROWS)):
        yield batch


def _items(batch: list[Row]) -> list[tuple]:
    return [(given, country) for _row, given, country, _fields, pre, _column in batch if not pre]


def _in_process(rows: Iterator[Row], channel: str, region: str | None, rules: Rules):
    for batch in _batches(rows):
        yield batch, normalize_batch(channel, region, _items(batch), rules)


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _pooled(rows: Iterator[Row], channel: str, region: str | None, workers: int, rules: Rules):
    """Batches normalised by a process pool, a bounded number in flight, yielded in order."""
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
    pending: deque[tuple[list[Row], Future | None]] = deque()
    try:
        for batch in _batches(rows):
            items = _items(batch)
            pending.append((batch, executor.submit(normalize_batch, channel, region, items, rules)
                            if items else None))
            if len(pending) > 2 * workers:
                done, future = pending.popleft()
                yield done, (future.result() if future is not None else [])
        while pending:
            done, future = pending.popleft()
            yield done, (future.result() if future is not None else [])
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _chosen(given: tuple[str, ...], names: tuple[str, ...], fields: dict[str, str], index: int,
            reason) -> tuple[str, str, str]:
    """(given, column, reason in words) for a row with several address columns; takes the column used
    out of `fields` (the others stay)."""
    column = names[index] if index >= 0 else names[0]
    fields.pop(column, None)
    if reason.__class__ is tuple:
        reason = "; ".join(f"{names[i]}: {why.rstrip('.')}" for i, why in reason)
    return (given[index] if index >= 0 else ""), column, reason


def _first_given(given: tuple[str, ...]) -> int:
    return next((i for i, value in enumerate(given) if value), -1)


def _verdicts(rows: Iterator[Row], channel: str, region: str | None, workers: int,
              expected: int = 0, rules: Rules = (False, False)) -> Iterator[Verdict]:
    """Normalise (in process or in a pool) and dedupe, in row order.

    Dedupe memory is one compact table of 64-bit keys (E.164 digits, or 8 bytes of blake2b of an
    email) to the first row number: ~24 MB for 1M distinct addresses.
    """
    first_of = DedupeTable(expected).first
    make = make_verdict
    if workers > 1 and multiprocessing.current_process().daemon:
        workers = 1  # a daemonic process (a Celery or pool child) may not start processes of its own
    batches = (_in_process(rows, channel, region, rules) if workers == 1
               else _pooled(rows, channel, region, workers, rules))
    try:
        for batch, results in batches:
            result = iter(results)
            for row, given, _country, fields, pre, column in batch:
                if pre:
                    if given.__class__ is tuple:
                        given, column, pre = _chosen(given, column, fields, _first_given(given), pre)
                    yield make(row, given, "", _INVALID, pre, fields, None, column)
                    continue
                if given.__class__ is tuple:
                    recipient, reason, key, index = next(result)
                    given, column, reason = _chosen(given, column, fields, index, reason)
                else:
                    recipient, reason, key = next(result)
                if reason:
                    yield make(row, given, "", _INVALID, reason, fields, None, column)
                    continue
                first = first_of(key, row)
                if first == row:
                    yield make(row, given, recipient, _PENDING, "", fields, None, column)
                else:
                    yield make(row, given, recipient, _DUPLICATE, f"duplicate of row {first}", fields, first, column)
    finally:
        batches.close()
