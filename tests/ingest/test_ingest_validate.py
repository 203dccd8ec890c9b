"""Validation end to end: dedupe, limits, the process pool, records from Python, and streaming."""
from __future__ import annotations

import tracemalloc
from itertools import islice

import pytest

from worker.errors import InputError
from worker.ingest import IngestOptions, open_recipient_file, validate_records
from worker.ingest import validate as validate_module
from worker.ingest.dedupe import DedupeTable
from worker.statuses import Status

from ingest_helpers import EMAIL, SMS


def _big_text(rows: int) -> str:
    body = "".join(f"N{i},07911 2{i % 100000:05d},{'x' * (i % 7)}\n" for i in range(rows))
    return "name,phone,note\n" + body


class TestDedupe:
    def test_same_number_in_other_formats_is_a_duplicate_of_the_first_row(self, write):
        """Later rows with the same E.164 number are duplicates pointing at the first row."""
        text = "phone\n07911 200101\n+44 7911 200101\n07911 200202\n0044 (0)7911 200101\n"
        got = list(open_recipient_file(write(text), SMS).iter_verdicts())
        assert [v.status for v in got] == [Status.PENDING, Status.DUPLICATE, Status.PENDING, Status.DUPLICATE]
        assert [v.duplicate_of for v in got] == [None, 1, None, 1]
        assert got[3].reason == "duplicate of row 1"
        assert got[1].recipient == "+447911200101"

    def test_invalid_rows_are_not_deduped(self, write):
        """Two identical invalid rows are both invalid, not a duplicate."""
        got = list(open_recipient_file(write("phone\nabc\nabc\n\n,\n"), SMS).iter_verdicts())
        assert [v.status for v in got] == [Status.INVALID, Status.INVALID]

    def test_emails_dedupe_on_the_normalised_form(self, write):
        """Emails that normalise the same (letter case, IDN) are duplicates."""
        text = "email\nann@example.com\nAnn@EXAMPLE.COM\nbob@münchen.de\nbob@xn--mnchen-3ya.de\n"
        got = list(open_recipient_file(write(text), EMAIL).iter_verdicts())
        assert [v.duplicate_of for v in got] == [None, 1, None, 3]


class TestLimits:
    def test_file_over_max_bytes_is_refused_up_front(self, write):
        """A file larger than max_bytes is refused before it is read."""
        path = write(_big_text(100))
        with pytest.raises(InputError, match="the limit is 1.0 KB"):
            open_recipient_file(path, IngestOptions(channel="sms", region="GB", max_bytes=1024))

    def test_file_over_max_rows_is_refused_up_front(self, write):
        """A file with more than max_rows rows is refused by open, before any verdict."""
        path = write(_big_text(101))
        with pytest.raises(InputError, match="more than 100 rows"):
            open_recipient_file(path, IngestOptions(channel="sms", region="GB", max_rows=100))

    def test_exactly_max_rows_is_fine(self, write):
        """A file with exactly max_rows rows (blank lines not counted) is accepted."""
        path = write(_big_text(100) + "\n\n")
        assert open_recipient_file(path, IngestOptions(channel="sms", region="GB", max_rows=100)).rows == 100

    @pytest.mark.parametrize("options", [
        IngestOptions(channel="fax"),
        IngestOptions(channel="sms", region="XX"),
        IngestOptions(channel="sms", workers=0),
        IngestOptions(channel="sms", max_rows=-1),
    ])
    def test_bad_options_are_input_errors(self, write, options):
        """Unknown channel or region, or nonsense limits, are InputErrors."""
        with pytest.raises(InputError):
            open_recipient_file(write("phone\n+447911200101\n"), options)


class TestWorkers:
    def test_pool_gives_the_same_verdicts_in_row_order(self, write, monkeypatch):
        """workers=2 gives exactly the verdicts of workers=1, in row order, across many chunks."""
        monkeypatch.setattr(validate_module, "CHUNK_ROWS", 97)
        text = _big_text(3000) + "N,abc,\nN,07911 200101,\nN,1,2,3\n"
        path = write(text)
        one = list(open_recipient_file(path, SMS).iter_verdicts())
        two = list(open_recipient_file(path, IngestOptions(channel="sms", region="GB", workers=2)).iter_verdicts())
        assert two == one
        assert [v.row for v in two] == list(range(1, 3004))

    def test_pool_stops_cleanly_when_abandoned(self, write, monkeypatch):
        """Stopping early (closing the iterator) shuts the pool down without error."""
        monkeypatch.setattr(validate_module, "CHUNK_ROWS", 50)
        recipients = open_recipient_file(write(_big_text(2000)), IngestOptions("sms", "GB", workers=2))
        verdicts = recipients.iter_verdicts()
        assert [v.row for v in islice(verdicts, 3)] == [1, 2, 3]
        verdicts.close()

    def test_records_through_the_pool(self, monkeypatch):
        """validate_records uses the pool too, with the same results."""
        monkeypatch.setattr(validate_module, "CHUNK_ROWS", 10)
        records = [{"phone": f"07911 2{i % 40:05d}"} for i in range(100)]
        one = list(validate_records(records, SMS))
        two = list(validate_records(records, IngestOptions("sms", "GB", workers=2)))
        assert one == two and sum(v.status is Status.DUPLICATE for v in two) == 60


class TestValidateRecords:
    def test_records_are_numbered_and_validated(self):
        """Records get rows 1..N, the phone key is the address and other keys become fields."""
        got = list(validate_records([{"phone": "+447911200101", "first_name": "Ann"},
                                     {"phone": "07911 200101", "first_name": "Bob"},
                                     {"phone": "nope"}], SMS))
        assert [(v.row, v.status) for v in got] == [(1, Status.PENDING), (2, Status.DUPLICATE), (3, Status.INVALID)]
        assert got[0].fields == {"first_name": "Ann"}

    def test_aliases_and_mixed_keys(self):
        """Records may use any alias, and different records different keys."""
        got = list(validate_records(iter([{"Mobile Number": "07911 200101"}, {"msisdn": 447911200202},
                                          {"name": "no phone"}]), SMS))
        assert [v.recipient for v in got] == ["+447911200101", "+447911200202", ""]
        assert got[2].reason == "no phone number"

    def test_email_records_and_country_key(self):
        """Email records use the 'email' key; SMS records honour a country key."""
        assert [v.recipient for v in validate_records([{"email": "A@B.COM"}], EMAIL)] == ["a@b.com"]
        assert [v.recipient for v in validate_records([{"phone": "0612345678", "country": "NL"}], SMS)] \
            == ["+31612345678"]

    def test_non_mapping_records_are_invalid_rows(self):
        """Something that is not a mapping is an invalid row, not a crash."""
        got = list(validate_records([{"phone": "+447911200101"}, "+447911200202", None], SMS))
        assert [v.status for v in got] == [Status.PENDING, Status.INVALID, Status.INVALID]

    def test_max_rows_for_lists_is_checked_up_front(self):
        """A list longer than max_rows is refused before any verdict."""
        with pytest.raises(InputError, match="limit is 2"):
            validate_records([{"phone": "+447911200101"}] * 3, IngestOptions("sms", max_rows=2))

    def test_max_rows_for_iterators_is_checked_on_the_way(self):
        """An iterator longer than max_rows is refused when it gets there."""
        verdicts = validate_records(({"phone": "+447911200101"} for _ in range(3)), IngestOptions("sms", max_rows=2))
        with pytest.raises(InputError, match="limit is 2"):
            list(verdicts)


class TestStreaming:
    @staticmethod
    def _peak(path) -> int:
        tracemalloc.start()
        try:
            recipients = open_recipient_file(path, SMS)
            assert len(list(islice(recipients.iter_verdicts(), 10))) == 10
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def test_memory_does_not_grow_with_the_file(self, write):
        """Apart from the presized dedupe table, reading 20k and 200k-row files takes the same memory."""
        small, big = write(_big_text(20_000)), write(_big_text(200_000))
        peak_small = self._peak(small) - DedupeTable(20_000).nbytes
        peak_big = self._peak(big) - DedupeTable(200_000).nbytes
        assert peak_big < 1.3 * peak_small + 100_000, (peak_small, peak_big)
        assert peak_big < big.stat().st_size / 2, (peak_big, big.stat().st_size)


class TestDedupeTable:
    def test_first_row_wins(self):
        """The table returns the first row recorded for a key, and records new keys."""
        table = DedupeTable()
        assert [table.first(k, r) for r, k in enumerate([5, 7, 5, 0, 1, 7], start=1)] == [1, 2, 1, 4, 4, 2]
        assert len(table) == 3  # key 0 is stored as 1

    def test_growth_keeps_every_key(self):
        """Growing past its initial size keeps every key and its first row."""
        table = DedupeTable()
        keys = [447911000000 + 7 * i for i in range(5000)] + [2**64 - 1 - i for i in range(5000)]
        for row, key in enumerate(keys, start=1):
            assert table.first(key, row) == row
        assert all(table.first(key, 0) == row for row, key in enumerate(keys, start=1))

    def test_a_million_keys_fit_in_about_24_mb(self):
        """Presized for 1M rows the table holds 24 MB of arrays, not ~150 MB of int objects."""
        assert DedupeTable(1_000_000).nbytes <= 25 * 2**20

    def test_iter_verdicts_can_be_repeated(self, write):
        """Each call to iter_verdicts reads the file again from the top, with fresh dedupe."""
        recipients = open_recipient_file(write("phone\n07911 200101\n07911 200101\n"), SMS)
        assert list(recipients.iter_verdicts()) == list(recipients.iter_verdicts())


class TestValidateRecordsInput:
    @pytest.mark.parametrize("records", [{"phone": "+447911200101"}, "+447911200101", 42])
    def test_not_a_list_of_records_is_an_input_error(self, records):
        """A single mapping, a string or a number instead of a list of records is an InputError."""
        with pytest.raises(InputError, match="iterable of mappings"):
            validate_records(records, SMS)

    def test_empty_list(self):
        """No records give no verdicts."""
        assert list(validate_records([], SMS)) == []
