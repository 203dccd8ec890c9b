"""Properties (hypothesis): one verdict per data row, counts add up, only InputError escapes, cells round-trip."""
from __future__ import annotations

import codecs
import csv
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.cells import safe_cell, unsafe_cell
from worker.errors import InputError
from worker.ingest import IngestOptions, open_recipient_file, summarize, validate_records
from worker.ingest.normalize import normalize_email, normalize_phone
from worker.statuses import Status

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
PHONEISH = st.one_of(
    st.sampled_from(["07911 200101", "+447911200101", "0044 7911 200202", "(07911) 200303", "", " ", "abc", "079"]),
    st.from_regex(r"\+?[0-9 ()\-]{0,16}", fullmatch=True),
    TEXT,
)
STATUSES = {Status.PENDING, Status.INVALID, Status.DUPLICATE}


def _check(verdicts, expected_rows: int) -> None:
    assert [v.row for v in verdicts] == list(range(1, expected_rows + 1))
    assert all(v.status in STATUSES for v in verdicts)
    for v in verdicts:
        assert (v.recipient == "") == (v.status is Status.INVALID)
        assert (v.reason == "") == (v.status is Status.PENDING)
        if v.status is Status.DUPLICATE:
            first = verdicts[v.duplicate_of - 1]
            assert first.status is Status.PENDING and first.recipient == v.recipient and first.row < v.row
    counts = summarize(iter(verdicts))
    assert counts["rows"] == expected_rows == counts["valid"] + counts["invalid"] + counts["duplicates"]


@st.composite
def recipient_files(draw):
    """A header with a phone column, rows of the header's width with arbitrary text, blank lines mixed in."""
    width = draw(st.integers(1, 4))
    header = ["phone", "first_name", "note", "city"][:width]
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    rows = draw(st.lists(st.one_of(
        st.tuples(PHONEISH, *[TEXT] * (width - 1)).map(list),
        st.just([]),  # a blank line
    ), max_size=25))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]))
    newline = draw(st.sampled_from(["\r\n", "\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    if newline == "\n":  # csv quotes a field for the line terminator's characters only: keep bare \r out
        rows = [[cell.replace("\r", "\n") for cell in row] for row in rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    writer.writerow(header)
    for row in rows:
        if row:
            writer.writerow(row)
        else:
            buffer.write(newline)
    data = buffer.getvalue().encode(encoding)
    if encoding == "utf-16-le":
        data = codecs.BOM_UTF16_LE + data
    data_rows = [r for r in rows if "".join(r).strip()]
    return data, data_rows, delimiter


def _write(data: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=".csv", delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)


class TestFileProperties:
    @FAST
    @given(recipient_files())
    def test_every_data_row_gets_exactly_one_verdict(self, case):
        """Whatever the cells, encoding and dialect, each non-blank data row ends in exactly one verdict."""
        data, data_rows, delimiter = case
        path = _write(data)
        try:
            recipients = open_recipient_file(path, IngestOptions(channel="sms", region="GB"))
            verdicts = list(recipients.iter_verdicts())
        finally:
            path.unlink()
        assert recipients.delimiter == delimiter or len(recipients.columns) == 1
        assert recipients.rows == len(data_rows)
        _check(verdicts, len(data_rows))

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE,
                                   codecs.BOM_UTF32_LE, b"sep=;\n", b"phone\n", b"email;phone\r\n",
                                   b'phone,"x\n']),
                  st.binary(max_size=300)).map(b"".join),
    ), st.sampled_from(["sms", "email"]))
    def test_arbitrary_bytes_only_ever_raise_input_error(self, data, channel):
        """Any bytes either open and validate completely, or raise InputError: never anything else."""
        path = _write(data)
        try:
            try:
                recipients = open_recipient_file(path, IngestOptions(channel=channel, region="GB", max_rows=1000))
            except InputError:
                return
            verdicts = list(recipients.iter_verdicts())
            _check(verdicts, recipients.rows)
        finally:
            path.unlink()


class TestRecordProperties:
    @FAST
    @given(st.lists(st.one_of(
        st.dictionaries(st.sampled_from(["phone", "Mobile", "name", "country", "x"]),
                        st.one_of(PHONEISH, st.integers(), st.none(), st.sampled_from(["NL", "gb", "??"]))),
        st.none(), st.integers(), TEXT,
    ), max_size=30))
    def test_every_record_gets_exactly_one_verdict(self, records):
        """Any list of records (mappings or not) gives one consistent verdict per record, numbered 1..N."""
        _check(list(validate_records(records, IngestOptions(channel="sms", region="GB"))), len(records))


class TestNormalizeProperties:
    @FAST
    @given(PHONEISH, st.sampled_from([None, "GB", "NL", "US"]))
    def test_phone_normalisation_is_idempotent(self, value, region):
        """A normalised phone number normalises to itself, whatever the region."""
        recipient, reason, key = normalize_phone(value, region)
        if recipient:
            assert normalize_phone(recipient, None) == (recipient, "", key)
        else:
            assert reason and key == 0

    @FAST
    @given(st.one_of(st.emails(), TEXT))
    def test_email_normalisation_is_idempotent(self, value):
        """A normalised email normalises to itself."""
        recipient, reason, key = normalize_email(value)
        if recipient:
            assert normalize_email(recipient) == (recipient, "", key)
        else:
            assert reason


class TestCellProperties:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=4))
    def test_any_string_survives_safe_cell_export(self, values):
        """Any strings written through safe_cell to CSV read back exactly through unsafe_cell."""
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerow([safe_cell(v) for v in values])
        buffer.seek(0)
        (row,) = list(csv.reader(buffer))
        assert [unsafe_cell(c) for c in row] == values

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",))))
    def test_safe_cells_never_start_a_formula(self, value):
        """A safe cell never starts with a formula character, unless it is a plain E.164 number."""
        cell = safe_cell(value)
        assert not cell.startswith(("=", "-", "@", "\t", "\r")) and (not cell.startswith("+") or cell == value)

    @settings(max_examples=50, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",))).map(lambda s: "'" + s))
    def test_leading_apostrophes_round_trip(self, value):
        """Text that itself starts with an apostrophe comes back unchanged."""
        assert unsafe_cell(safe_cell(value)) == value
