"""Columns: finding the address by header alias or by name, the country column, and the other fields."""
from __future__ import annotations

import pytest

from worker.errors import InputError
from worker.ingest import IngestOptions, open_recipient_file
from worker.statuses import Status

from ingest_helpers import EMAIL, SMS

PHONE_HEADERS = ["phone", "Mobile", "MOBILE NUMBER", "cell", "msisdn", "Telephone", "tel", "Phone Number",
                 "phone_number", "Mobile-Number", " mobile  number ", "Téléphone"]
EMAIL_HEADERS = ["email", "E-mail", "E-Mail Address", "email_address", "Email Address", "MAIL", "e_mail"]


class TestAliases:
    @pytest.mark.parametrize("header", PHONE_HEADERS)
    def test_phone_aliases(self, write, header):
        """Every phone alias is found whatever its case, spacing, underscores or hyphens."""
        recipients = open_recipient_file(write(f"name,{header}\nAnn,07911 200101\n"), SMS)
        assert recipients.address_column == header.strip()
        assert [v.recipient for v in recipients.iter_verdicts()] == ["+447911200101"]

    @pytest.mark.parametrize("header", EMAIL_HEADERS)
    def test_email_aliases(self, write, header):
        """Every email alias is found whatever its case, spacing, underscores or hyphens."""
        recipients = open_recipient_file(write(f"{header},name\nann@Example.COM,Ann\n"), EMAIL)
        assert recipients.address_column == header.strip()
        assert [v.recipient for v in recipients.iter_verdicts()] == ["ann@example.com"]

    def test_mobile_is_preferred_over_phone_for_sms(self, write):
        """With both a landline 'phone' and a 'mobile' column, SMS goes to the mobile one."""
        recipients = open_recipient_file(write("phone,mobile\n020 7946 0000,07911 200101\n"), SMS)
        assert recipients.address_column == "mobile"
        assert list(recipients.iter_verdicts())[0].fields == {"phone": "020 7946 0000"}

    def test_explicit_column(self, write):
        """phone_column picks a column no alias would find, matched case- and spacing-insensitively."""
        options = IngestOptions(channel="sms", region="GB", phone_column="contact no")
        recipients = open_recipient_file(write("Name,Contact_No,phone\nAnn,07911 200101,x\n"), options)
        assert recipients.address_column == "Contact_No"
        assert list(recipients.iter_verdicts())[0].recipient == "+447911200101"

    def test_explicit_column_missing_names_the_columns(self, write):
        """An explicit column that is not there is an InputError listing the columns seen."""
        options = IngestOptions(channel="email", email_column="courriel2")
        with pytest.raises(InputError, match=r"'courriel2'.*'Name', 'Address'"):
            open_recipient_file(write("Name,Address\nAnn,x@example.com\n"), options)

    def test_no_usable_column_names_the_columns_it_saw(self, write):
        """A file without a phone column is refused with one sentence naming the columns it has."""
        with pytest.raises(InputError) as caught:
            open_recipient_file(write("Name,Number,City\nAnn,07911 200101,York\n"), SMS)
        message = str(caught.value)
        assert "No phone column" in message and "'Name', 'Number', 'City'" in message
        assert "\n" not in message

    def test_email_channel_on_a_phone_file(self, write):
        """Asking for email on a file with only phones is refused with the columns seen."""
        with pytest.raises(InputError, match="No email column.*'phone'"):
            open_recipient_file(write("phone\n07911 200101\n"), EMAIL)


class TestFields:
    def test_other_columns_are_kept_as_fields(self, write):
        """Every column but the address is kept per recipient under its header text."""
        got = list(open_recipient_file(write("First Name,phone,Voucher Code\nAnn,07911 200101,X1\n"),
                                       SMS).iter_verdicts())
        assert got[0].fields == {"First Name": "Ann", "Voucher Code": "X1"}

    def test_duplicate_and_empty_header_names_are_made_unique(self, write):
        """Repeated header names get _2 suffixes and empty ones column_N, so no field is lost."""
        recipients = open_recipient_file(write("name,phone,name,\nAnn,07911 200101,Smith,x\n"), SMS)
        assert recipients.columns == ["name", "phone", "name_2", "column_4"]
        assert list(recipients.iter_verdicts())[0].fields == {"name": "Ann", "name_2": "Smith", "column_4": "x"}

    def test_headerless_single_column_list(self, write):
        """A bare list of numbers without a header is read, its first line being row 1."""
        recipients = open_recipient_file(write("07911 200101\n07911 200202\n"), SMS)
        got = list(recipients.iter_verdicts())
        assert not recipients.has_header and recipients.rows == 2
        assert [(v.row, v.recipient) for v in got] == [(1, "+447911200101"), (2, "+447911200202")]


class TestCountryColumn:
    def test_row_country_overrides_the_region_option(self, write):
        """A row's country column decides how its national number is read."""
        text = "phone,country\n07911 200101,GB\n0612345678,NL\n06 12 34 56 78,fr\n07911 200202,\n"
        got = list(open_recipient_file(write(text), SMS).iter_verdicts())
        assert [v.recipient for v in got] == ["+447911200101", "+31612345678", "+33612345678", "+447911200202"]

    @pytest.mark.parametrize("header", ["country", "Country Code", "country_code", "REGION"])
    def test_country_aliases(self, write, header):
        """country, country_code and region headers are all recognised."""
        recipients = open_recipient_file(write(f"phone,{header}\n0612345678,NL\n"), SMS)
        assert recipients.country_column == header
        assert list(recipients.iter_verdicts())[0].recipient == "+31612345678"

    def test_country_works_without_a_default_region(self, write):
        """With no region option, the country column alone makes national numbers readable."""
        options = IngestOptions(channel="sms")
        got = list(open_recipient_file(write("phone,country\n0612345678,NL\n0612345678,\n"), options)
                   .iter_verdicts())
        assert got[0].recipient == "+31612345678"
        assert got[1].status is Status.INVALID and "no country code" in got[1].reason

    def test_unknown_country_makes_a_national_number_invalid(self, write):
        """An unknown country code is not silently replaced by the default region."""
        got = list(open_recipient_file(write("phone,country\n07911 200101,Narnia\n+447911200202,Narnia\n"), SMS)
                   .iter_verdicts())
        assert got[0].status is Status.INVALID and "Narnia" in got[0].reason
        assert got[1].recipient == "+447911200202"

    def test_uk_means_gb(self, write):
        """'UK', though not ISO 3166, is read as GB."""
        got = list(open_recipient_file(write("phone,country\n07911 200101,uk\n"), IngestOptions("sms"))
                   .iter_verdicts())
        assert got[0].recipient == "+447911200101"
