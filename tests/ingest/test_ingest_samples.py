"""The shipped sample files validate as the demo expects."""
from __future__ import annotations

from pathlib import Path

import phonenumbers

from worker.ingest import IngestOptions, open_recipient_file, summarize
from worker.statuses import Status

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class TestSamples:
    def test_recipients_sample_counts(self):
        """samples/recipients.csv: 25 rows, 20 valid, 3 invalid, 2 duplicates."""
        recipients = open_recipient_file(SAMPLES / "recipients.csv", IngestOptions(channel="sms", region="GB"))
        assert summarize(recipients.iter_verdicts()) == {"rows": 25, "valid": 20, "invalid": 3, "duplicates": 2}
        assert "first_name" in recipients.columns

    def test_recipients_sample_has_the_demo_numbers(self):
        """Exactly one valid number each ends in 605, 602 and 503, and every valid one is a GB mobile."""
        verdicts = list(open_recipient_file(SAMPLES / "recipients.csv", IngestOptions("sms", "GB")).iter_verdicts())
        valid = [v.recipient for v in verdicts if v.status is Status.PENDING]
        for ending in ("605", "602", "503"):
            assert sum(r.endswith(ending) for r in valid) == 1, ending
            assert sum(v.given.endswith(ending) for v in verdicts) == 1, ending
        for recipient in valid:
            number = phonenumbers.parse(recipient)
            assert recipient.startswith("+447911")
            assert phonenumbers.region_code_for_number(number) == "GB"
            assert phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE

    def test_recipients_sample_works_without_a_region(self):
        """Without a region only the national-format rows become invalid (the E.164 ones stay valid)."""
        counts = summarize(open_recipient_file(SAMPLES / "recipients.csv", IngestOptions("sms")).iter_verdicts())
        assert counts["rows"] == 25 and counts["valid"] > 5

    def test_emails_sample_counts(self):
        """samples/emails.csv: 10 rows, 4 valid, 4 invalid, 2 duplicates (domain case and IDN)."""
        recipients = open_recipient_file(SAMPLES / "emails.csv", IngestOptions(channel="email"))
        assert summarize(recipients.iter_verdicts()) == {"rows": 10, "valid": 4, "invalid": 4, "duplicates": 2}
