"""summarize: the validate --json counts and the per-row report CSV."""
from __future__ import annotations

import csv

import pytest

from worker.cells import unsafe_cell
from worker.errors import UsageError
from worker.ingest import REPORT_COLUMNS, open_recipient_file, summarize, validate_records

from ingest_helpers import SMS

TEXT = "phone,name\n07911 200101,Ann\n+44 7911 200101,Bob\n=HYPERLINK(\"x\"),Evil\n\n07911 200202,Cy\n,Di\n"


def _report(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


class TestSummarize:
    def test_counts(self, write):
        """Counts give rows, valid, invalid and duplicates, adding up to rows."""
        counts = summarize(open_recipient_file(write(TEXT), SMS).iter_verdicts())
        assert counts == {"rows": 5, "valid": 2, "invalid": 2, "duplicates": 1}

    def test_report_has_one_line_per_row(self, write, tmp_path):
        """The report has the header and one line per input row, with verdict and reason."""
        out = tmp_path / "report.csv"
        summarize(open_recipient_file(write(TEXT), SMS).iter_verdicts(), out)
        lines = _report(out)
        assert tuple(lines[0]) == REPORT_COLUMNS == ("row", "input", "recipient", "verdict", "reason")
        assert lines[1] == ["1", "07911 200101", "+447911200101", "valid", ""]
        assert lines[2] == ["2", "'+44 7911 200101", "+447911200101", "duplicate", "duplicate of row 1"]
        assert lines[3][0] == "3" and lines[3][3] == "invalid"
        assert lines[5] == ["5", "", "", "invalid", "no phone number"]
        assert len(lines) == 6

    def test_report_cells_are_spreadsheet_safe(self, write, tmp_path):
        """A formula given as input is written quoted, and reads back to the original."""
        out = tmp_path / "report.csv"
        summarize(open_recipient_file(write(TEXT), SMS).iter_verdicts(), out)
        cell = _report(out)[3][1]
        assert cell.startswith("'=") and unsafe_cell(cell) == '=HYPERLINK("x")'

    def test_suppressed(self, write, tmp_path):
        """A valid recipient on the suppression list counts and reports as suppressed, not valid."""
        out = tmp_path / "report.csv"
        counts = summarize(open_recipient_file(write(TEXT), SMS).iter_verdicts(), out,
                           is_suppressed=lambda r: r == "+447911200202")
        assert counts == {"rows": 5, "valid": 1, "invalid": 2, "duplicates": 1, "suppressed": 1}
        assert _report(out)[4][2:] == ["+447911200202", "suppressed", "on the suppression list"]

    def test_suppressed_key_present_even_when_zero(self):
        """With a checker, 'suppressed' is in the counts even when nothing matched."""
        counts = summarize(validate_records([{"phone": "+447911200101"}], SMS), is_suppressed=lambda r: False)
        assert counts["suppressed"] == 0 and counts["valid"] == 1

    def test_unwritable_report_is_a_usage_error(self, tmp_path):
        """A report path in a missing directory is a UsageError (exit 2), not a traceback."""
        with pytest.raises(UsageError):
            summarize(validate_records([{"phone": "+447911200101"}], SMS), tmp_path / "missing" / "r.csv")

    def test_no_partial_report_when_verdicts_fail(self, tmp_path):
        """If the verdicts raise half-way, no report file is left behind."""
        out = tmp_path / "r.csv"

        def broken():
            yield from validate_records([{"phone": "+447911200101"}], SMS)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            summarize(broken(), out)
        assert list(tmp_path.iterdir()) == []
