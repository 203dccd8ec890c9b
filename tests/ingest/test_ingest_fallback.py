"""Falling back through several address columns: properties (hypothesis) over every fallback order, and
the same verdicts from files, records and the process pool."""
from __future__ import annotations

import csv
import io
import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.ingest import IngestOptions, open_recipient_file, validate_records
from worker.ingest.normalize import normalize_phone
from worker.statuses import Status

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PHONE_COLUMNS = ("mobile", "phone", "home phone")
VALUES = st.sampled_from([
    "", "", "07911 200101", "+44 7911 200101", "07911 200202", "07911 200303", "0117 496 0860",
    "0900 123 4567", "0800 123 4567", "abc", "07911 200101 ext. 4", "079", "+33 6 12 34 56 78", " ",
])


@st.composite
def exports(draw):
    """Rows with 1-3 phone columns (and a name), and an order to try them in (None: automatic)."""
    columns = draw(st.lists(st.sampled_from(PHONE_COLUMNS), min_size=1, max_size=3, unique=True))
    header = ["name", *columns]
    rows = draw(st.lists(st.fixed_dictionaries({c: VALUES for c in columns}), max_size=20))
    records = [{"name": f"n{i}", **row} for i, row in enumerate(rows)]
    order = draw(st.one_of(st.none(), st.permutations(columns)))
    return header, records, order


def _order(header: list[str], order) -> list[str]:
    if order is not None:
        return list(order)
    return [c for c in PHONE_COLUMNS if c in header]  # mobile-like first, then the others


def _check(records: list[dict], verdicts: list, order: list[str]) -> None:
    assert [v.row for v in verdicts] == list(range(1, len(records) + 1))  # every row, once
    pending: dict[str, int] = {}
    for record, v in zip(records, verdicts):
        assert isinstance(v.recipient, str)  # at most one recipient per row
        assert v.column in order
        assert v.fields == {k: x.strip() for k, x in record.items() if k != v.column}
        if v.status is Status.INVALID:
            assert v.recipient == "" and v.reason
            assert all(normalize_phone(record[c], "GB")[1] for c in order)  # nothing usable anywhere
            continue
        used = order.index(v.column)
        assert normalize_phone(record[v.column], "GB")[0] == v.recipient != ""
        assert all(normalize_phone(record[c], "GB")[1] for c in order[:used])  # the first usable one
        if v.status is Status.PENDING:
            assert v.recipient not in pending
            pending[v.recipient] = v.row
        else:
            assert v.status is Status.DUPLICATE and v.duplicate_of == pending[v.recipient]


@FAST
@given(exports())
def test_every_fallback_order_gives_each_row_at_most_one_recipient(export):
    """Whatever the columns and their order: one verdict per row, from the first usable column in
    that order, its other columns kept as fields; each recipient valid once, later rows duplicates."""
    header, records, order = export
    options = IngestOptions("sms", "GB", phone_columns=tuple(order or ()))
    verdicts = list(validate_records(records, options))
    _check(records, verdicts, _order(header, order))
    # the same rows as a file give the same verdicts
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        from_file = list(open_recipient_file(path, options).iter_verdicts()) if records else []
    if records:
        assert [(v.status, v.recipient, v.column, v.reason, v.given) for v in from_file] == \
            [(v.status, v.recipient, v.column, v.reason, v.given) for v in verdicts]


def test_every_order_of_three_columns_on_one_row():
    """Each of the six orders picks the first usable value in that order."""
    record = {"mobile": "0117 496 0860", "phone": "07911 200101", "home phone": "07911 200202"}
    for order in itertools.permutations(PHONE_COLUMNS):
        (v,) = validate_records([record], IngestOptions("sms", "GB", phone_columns=order))
        usable = [c for c in order if c != "mobile"][0]
        assert (v.column, v.recipient) == (usable, normalize_phone(record[usable], "GB")[0])


def test_the_pool_gives_identical_verdicts_with_several_columns(write):
    """workers=2 over many chunks, several columns, ragged rows: the same verdicts as in process."""
    lines = ["name,mobile,phone,email"]
    for i in range(5000):
        mobile = ("", "0117 496 0860", f"07911 2{i % 700:05d}", "abc")[i % 4]
        phone = ("", f"07911 2{i % 900:05d}", "0900 123 4567")[i % 3]
        lines.append(f"n{i},{mobile},{phone},x{i}@example.com" + (",extra" if i % 997 == 0 else ""))
    path = write("\n".join(lines) + "\n")
    one = list(open_recipient_file(path, IngestOptions("sms", "GB")).iter_verdicts())
    two = list(open_recipient_file(path, IngestOptions("sms", "GB", workers=2)).iter_verdicts())
    assert one == two
    assert {v.column for v in one} == {"mobile", "phone"}
    ragged = [v for v in one if v.reason.startswith("row has")]
    assert ragged and all(v.column in ("mobile", "phone") and v.column not in v.fields for v in ragged)


def test_one_column_files_keep_their_shape(write):
    """With one phone column nothing changes but the new `column`: fields are the other columns."""
    got = list(open_recipient_file(write("name,phone\nAnn,07911 200101\n"), IngestOptions("sms", "GB"))
               .iter_verdicts())
    assert (got[0].column, got[0].fields) == ("phone", {"name": "Ann"})


def test_numbered_duplicates_of_a_header_are_fallbacks(write):
    """`Phone, Phone` (made `Phone`, `Phone_2`) and `Email 2` are tried after the plain ones."""
    got = list(open_recipient_file(write("Phone,Phone\n,07911 200101\n"), IngestOptions("sms", "GB"))
               .iter_verdicts())
    assert (got[0].column, got[0].recipient) == ("Phone_2", "+447911200101")
    recipients = open_recipient_file(write("Email 2,Email\na@example.com,b@example.com\n"), IngestOptions("email"))
    assert recipients.address_columns == ["Email", "Email 2"]
