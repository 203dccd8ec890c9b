"""Normalisation of single addresses: phones to E.164, emails to their normalised form, with reasons."""
from __future__ import annotations

import pytest

from worker.errors import InputError
from worker.ingest import normalize_address
from worker.ingest.normalize import normalize_email, normalize_phone


class TestPhone:
    @pytest.mark.parametrize("given", [
        "+447911200101", "07911 200101", "07911200101", "0044 7911 200101", "(07911) 200101",
        "+44 (0)7911 200101", "+44-7911-200-101", "447911200101", " 07911 200101\u200b", "07911.200.101",
    ])
    def test_gb_formats_to_e164(self, given):
        """The ways people write a GB mobile all become the same E.164 number."""
        assert normalize_phone(given, "GB")[:2] == ("+447911200101", "")

    def test_international_number_needs_no_region(self):
        """A +CC or 00CC number is read without a default region."""
        assert normalize_phone("+33 6 12 34 56 78")[0] == "+33612345678"
        assert normalize_phone("0033 6 12 34 56 78")[0] == "+33612345678"

    @pytest.mark.parametrize("given, reason", [
        ("", "no phone number"),
        ("   ", "no phone number"),
        ("07911 20071", "not a valid number for GB"),
        ("07911 2001011", "not a valid number for GB"),
        ("079", "not a valid number for GB (too short)"),
        ("07911 ABC123", "not a phone number (contains letters)"),
        ("call me", "not a phone number (contains letters)"),
        ("4.47911E+11", "scientific notation"),
        ("+999 1234 5678", "country code"),
        ("---", "not a phone number"),
    ])
    def test_invalid_numbers_have_a_reason(self, given, reason):
        """Unusable numbers give no recipient and a reason saying why."""
        recipient, why, _key = normalize_phone(given, "GB")
        assert recipient == "" and reason in why

    def test_national_number_without_region(self):
        """A national number with no region to read it in is invalid, saying what is missing."""
        assert "no country code" in normalize_phone("07911 200101", None)[1]

    def test_key_is_the_e164_digits(self):
        """The dedupe key is the E.164 number's digits as an int."""
        assert normalize_phone("07911 200101", "GB")[2] == 447911200101


class TestEmail:
    @pytest.mark.parametrize("given, expected", [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@Example.COM ", "ann@example.com"),
        ("bob@xn--mnchen-3ya.de", "bob@xn--mnchen-3ya.de"),
        ("bob@MÜNCHEN.de", "bob@xn--mnchen-3ya.de"),  # sent in ASCII (punycode) form
        ("mailto:cy@example.org", "cy@example.org"),
    ])
    def test_normalised(self, given, expected):
        """Emails are trimmed, lower-cased and IDNs put in their ASCII (punycode) form."""
        assert normalize_email(given)[:2] == (expected, "")

    @pytest.mark.parametrize("given, fragment", [
        ("", "no email address"),
        ("no-at-sign", "@-sign"),
        ("a..b@example.com", "two periods"),
        ("x@localhost", "period"),
        ("x y@example.com", "SPACE"),
    ])
    def test_invalid_emails_have_a_reason(self, given, fragment):
        """Invalid emails give no recipient and email-validator's reason."""
        recipient, reason, _key = normalize_email(given)
        assert recipient == "" and fragment in reason

    def test_keys_match_for_the_same_normalised_address(self):
        """The 64-bit key is the same for two spellings of one normalised address."""
        assert normalize_email("bob@xn--mnchen-3ya.de")[2] == normalize_email("bob@MÜNCHEN.DE")[2] != 0


class TestNormalizeAddress:
    def test_returns_the_normalised_address(self):
        """normalize_address gives E.164 or the normalised email."""
        assert normalize_address("sms", "07911 200101", "GB") == "+447911200101"
        assert normalize_address("email", "Ann@Example.com") == "ann@example.com"

    def test_unusable_address_is_an_input_error(self):
        """An address that cannot be normalised raises InputError with the reason."""
        with pytest.raises(InputError, match="not a valid number for GB"):
            normalize_address("sms", "07911 20071", "GB")

    @pytest.mark.parametrize("channel, region", [("fax", None), ("sms", "Atlantis")])
    def test_bad_channel_or_region(self, channel, region):
        """An unknown channel or region is an InputError."""
        with pytest.raises(InputError):
            normalize_address(channel, "+447911200101", region)


class TestSmsRules:
    def test_normalize_address_is_lenient(self):
        """normalize_address (suppression lists) takes a landline or a non-ASCII local part: it is still
        an address to refuse, even if no SMS or mail could reach it."""
        assert normalize_address("sms", "0117 496 0860", "GB") == "+441174960860"
        assert normalize_address("email", "o’brien@example.ie") == "o’brien@example.ie"
        with pytest.raises(InputError, match="a landline cannot receive SMS"):
            normalize_address("sms", "0117 496 0860", "GB", allow_landlines=False)

    def test_extension_is_checked_before_letters(self):
        """A whole number then `ext.`/`x`/`#` is an extension; letters anywhere else are letters."""
        assert normalize_phone("07911 200101 ext 7", "GB")[1] == "has an extension: an SMS cannot reach one"
        assert normalize_phone("07911 ext 7", "GB")[1] == "not a phone number (contains letters)"
        assert normalize_phone("mobile 07911 200101", "GB")[1] == "not a phone number (contains letters)"
