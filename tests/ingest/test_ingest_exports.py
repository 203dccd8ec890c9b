"""CRM exports (HubSpot- and Salesforce-shaped files in exports/): several phone and email columns,
numbers that cannot take a text, addresses typed in a word processor, and the rejects file.

Each export carries its expected verdicts in `expect …` columns: per channel the verdict (valid,
invalid, duplicate), the column the address came from, and the recipient (valid/duplicate) or a
fragment of the reason (invalid).
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from worker.errors import InputError
from worker.ingest import IngestOptions, open_recipient_file, validate_records, write_rejects
from worker.statuses import Status

EXPORTS = Path(__file__).resolve().parent / "exports"
HUBSPOT, SALESFORCE = EXPORTS / "hubspot_contacts.csv", EXPORTS / "salesforce_contacts.csv"
VERDICT = {"valid": Status.PENDING, "invalid": Status.INVALID, "duplicate": Status.DUPLICATE}


def _original(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=";" if "salesforce" in path.name else ","))


@pytest.mark.parametrize("path", [HUBSPOT, SALESFORCE], ids=["hubspot", "salesforce"])
@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("workers", [1, 2])
def test_export_rows_get_the_expected_verdicts(path, channel, workers):
    """Every row of the export ends as its `expect` columns say, through the file path and the pool."""
    rows = _original(path)
    recipients = open_recipient_file(path, IngestOptions(channel, "GB", workers=workers))
    got = list(recipients.iter_verdicts())
    assert len(got) == len(rows)
    for expected, verdict in zip(rows, got):
        status = VERDICT[expected[f"expect {channel}"]]
        detail = expected[f"expect {channel} detail"]
        assert verdict.status is status, (verdict.row, verdict.reason)
        assert verdict.column == expected[f"expect {channel} column"], verdict.row
        if status is Status.INVALID:
            assert detail in verdict.reason, (verdict.row, verdict.reason)
        else:
            assert verdict.recipient == detail
        # the address's own column is not a field; every other column (other phone columns too) is
        assert set(verdict.fields) == set(recipients.columns) - {verdict.column}
        if verdict.given:
            assert verdict.given == expected[verdict.column].strip().strip("\u200b")


def test_columns_found_and_their_order():
    """Mobile-like headers first, then the others; Fax and country-ish columns are not phone columns."""
    assert open_recipient_file(HUBSPOT, IngestOptions("sms", "GB")).address_columns == \
        ["Mobile Phone Number", "Phone Number"]
    assert open_recipient_file(SALESFORCE, IngestOptions("sms", "GB")).address_columns == \
        ["Mobile", "Phone", "Home Phone", "Other Phone"]
    assert open_recipient_file(HUBSPOT, IngestOptions("email")).address_columns == ["Email", "Work email"]
    single = open_recipient_file(HUBSPOT, IngestOptions("sms", "GB", phone_column="Phone Number"))
    assert single.address_columns == ["Phone Number"] and single.address_column == "Phone Number"


def test_explicit_columns_set_the_order_and_the_set():
    """phone_columns names the columns tried and their order; phone_column alone still works."""
    options = IngestOptions("sms", "GB", phone_columns=("phone number", "MOBILE PHONE NUMBER"))
    got = list(open_recipient_file(HUBSPOT, options).iter_verdicts())
    assert (got[6].recipient, got[6].column) == ("+447911200303", "Phone Number")
    assert (got[0].status, got[0].column, got[0].reason) == (
        Status.PENDING, "Mobile Phone Number", "")  # its Phone Number is a landline: falls back to the mobile
    only_phone = list(open_recipient_file(HUBSPOT, IngestOptions("sms", "GB", phone_column="Phone Number"))
                      .iter_verdicts())
    assert only_phone[0].reason == "a landline cannot receive SMS"
    assert only_phone[0].fields["Mobile Phone Number"] == "07911 200101"
    both = IngestOptions("sms", "GB", phone_column="Home Phone", phone_columns=("Mobile", "Home Phone"))
    assert open_recipient_file(SALESFORCE, both).address_columns == ["Home Phone", "Mobile"]


def test_a_missing_explicit_column_is_one_sentence():
    with pytest.raises(InputError) as caught:
        open_recipient_file(HUBSPOT, IngestOptions("sms", "GB", phone_columns=("Mobile Phone Number", "Pager")))
    assert str(caught.value).startswith("There is no column named 'Pager'; the columns are: 'Record ID'")
    with pytest.raises(InputError, match="header names"):
        open_recipient_file(HUBSPOT, IngestOptions("sms", "GB", phone_columns=(3,)))


def test_allow_landlines_lifts_only_the_landline_rule():
    """With allow_landlines the Salesforce `Phone` landline is used (it comes before `Home Phone`); a
    toll-free number stays invalid."""
    got = list(open_recipient_file(SALESFORCE, IngestOptions("sms", "GB", allow_landlines=True)).iter_verdicts())
    assert (got[0].recipient, got[0].column) == ("+442079460991", "Phone")
    assert got[3].reason == "a toll-free number cannot receive SMS"


def test_allow_smtputf8_accepts_non_ascii_local_parts():
    got = list(open_recipient_file(SALESFORCE, IngestOptions("email", allow_smtputf8=True)).iter_verdicts())
    assert got[1].recipient == "local-with-’-apostrophe@domain.com"
    assert got[2].recipient == "pound-sign-in-local£@domain.com"


def test_records_fall_back_through_their_keys_too():
    """submit()'s records: per record, 'mobile' then 'phone'; the column is the key the address came from."""
    records = [{"phone": "0117 496 0860", "mobile": "07911 200101", "name": "Ann"},
               {"phone": "07911 200202", "mobile": "", "name": "Bob"},
               {"phone": "07911 200303", "name": "Cy"},
               {"name": "Di"}]
    got = list(validate_records(records, IngestOptions("sms", "GB")))
    assert [(v.recipient, v.column) for v in got] == [
        ("+447911200101", "mobile"), ("+447911200202", "phone"), ("+447911200303", "phone"), ("", "")]
    assert got[0].fields == {"phone": "0117 496 0860", "name": "Ann"}
    assert got[1].fields == {"mobile": "", "name": "Bob"}
    assert got[3].reason == "no phone number"
    explicit = list(validate_records(records[:1], IngestOptions("sms", "GB", phone_columns=("phone",),
                                                                  allow_landlines=True)))
    assert explicit[0].recipient == "+441174960860"


class TestRejects:
    @pytest.mark.parametrize("path", [HUBSPOT, SALESFORCE], ids=["hubspot", "salesforce"])
    def test_rejects_are_the_invalid_rows_as_they_were_plus_the_reason(self, path, tmp_path):
        """Only the rows that will not be sent (invalid ones), every original cell, then the reason."""
        recipients = open_recipient_file(path, IngestOptions("sms", "GB"))
        verdicts = list(recipients.iter_verdicts())
        out = tmp_path / "rejects.csv"
        count = write_rejects(verdicts, out, recipients.columns)
        with out.open(encoding="utf-8", newline="") as f:
            written = list(csv.reader(f))
        assert written[0] == [*recipients.columns, "reason"]
        invalid = [v for v in verdicts if v.status is Status.INVALID]
        assert count == len(invalid) == len(written) - 1
        original = _original(path)
        for v, line in zip(invalid, written[1:]):
            cells = dict(zip(written[0], line))
            assert cells.pop("reason") == v.reason
            want = original[v.row - 1]
            assert {k: c.lstrip("'") for k, c in cells.items()} == {k: x.strip() for k, x in want.items()}

    def test_rejects_can_be_uploaded_again(self, tmp_path):
        """The rejects file is itself a recipient file, giving the same reasons (spreadsheet-safe cells too)."""
        recipients = open_recipient_file(HUBSPOT, IngestOptions("sms", "GB"))
        verdicts = list(recipients.iter_verdicts())
        out = tmp_path / "rejects.csv"
        write_rejects(verdicts, out, recipients.columns)
        again = list(open_recipient_file(out, IngestOptions("sms", "GB")).iter_verdicts())
        assert [v.reason for v in again] == [v.reason for v in verdicts if v.status is Status.INVALID]

    def test_a_column_named_reason_is_kept(self, tmp_path, write):
        path = write("phone,reason\n0117 496 0860,moved\n07911 200101,ok\n")
        recipients = open_recipient_file(path, IngestOptions("sms", "GB"))
        out = tmp_path / "rejects.csv"
        assert write_rejects(recipients.iter_verdicts(), out, recipients.columns) == 1
        assert out.read_text().splitlines() == ["phone,reason,reject_reason",
                                                "0117 496 0860,moved,a landline cannot receive SMS"]

    def test_verdicts_read_back_without_column_still_place_the_address(self, tmp_path):
        """An upload draft's verdicts carry no `column`: the address goes where the fields lack one."""
        from worker.ingest.options import make_verdict

        v = make_verdict(1, "0117 496 0860", "", Status.INVALID, "a landline cannot receive SMS",
                         {"name": "Ann", "mobile": ""})
        out = tmp_path / "rejects.csv"
        write_rejects([v], out, ["name", "phone", "mobile"])
        assert out.read_text().splitlines()[1] == "Ann,0117 496 0860,,a landline cannot receive SMS"

    def test_an_unwritable_rejects_path_is_one_sentence(self, tmp_path):
        from worker.errors import UsageError

        with pytest.raises(UsageError, match="^Cannot write the rejects to"):
            write_rejects([], tmp_path / "missing" / "rejects.csv", ["phone"])
