"""Dialects: delimiters, quoting, line endings, blank lines and ragged rows."""
from __future__ import annotations

import pytest

from worker.ingest import open_recipient_file
from worker.statuses import Status

from ingest_helpers import SMS


class TestDelimiters:
    @pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
    def test_each_delimiter_is_detected(self, write, delimiter):
        """Comma, semicolon, tab and pipe files are split on the right delimiter."""
        text = delimiter.join(["first_name", "phone", "city"]) + "\n" + \
            delimiter.join(["Ann", "07911 200101", "York"]) + "\n" + \
            delimiter.join(["Bob", "07911 200202", "Hull"]) + "\n"
        recipients = open_recipient_file(write(text), SMS)
        got = list(recipients.iter_verdicts())
        assert recipients.delimiter == delimiter
        assert [v.fields for v in got] == [{"first_name": "Ann", "city": "York"},
                                           {"first_name": "Bob", "city": "Hull"}]

    def test_european_excel_semicolons_with_decimal_commas(self, write):
        """A semicolon file whose values contain commas is still read as semicolon-separated."""
        text = "phone;amount;name\n07911 200101;1,50;Smith, Ann\n07911 200202;2,75;Jones, Bob\n"
        recipients = open_recipient_file(write(text), SMS)
        got = list(recipients.iter_verdicts())
        assert recipients.delimiter == ";"
        assert got[0].fields == {"amount": "1,50", "name": "Smith, Ann"}

    def test_excel_sep_line(self, write):
        """Excel's `sep=;` first line names the delimiter and is not the header."""
        recipients = open_recipient_file(write("sep=;\nphone;name\n07911 200101;Ann\n"), SMS)
        assert recipients.delimiter == ";"
        assert recipients.columns == ["phone", "name"]
        assert [v.recipient for v in recipients.iter_verdicts()] == ["+447911200101"]

    def test_single_column_file(self, write):
        """A file with only a phone column needs no delimiter."""
        got = list(open_recipient_file(write("phone\n07911 200101\n+447911200202\n"), SMS).iter_verdicts())
        assert [v.recipient for v in got] == ["+447911200101", "+447911200202"]


class TestQuotingAndLines:
    def test_quoted_fields_with_newlines_quotes_and_delimiters(self, write):
        """Quoted fields keep embedded newlines, doubled quotes and delimiters, and count as one row."""
        text = 'phone,note\n07911 200101,"line one\nline two"\n"07911 200202","she said ""hi"", then left"\n'
        got = list(open_recipient_file(write(text), SMS).iter_verdicts())
        assert [v.row for v in got] == [1, 2]
        assert got[0].fields["note"] == "line one\nline two"
        assert got[1].fields["note"] == 'she said "hi", then left'

    @pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
    def test_line_endings(self, write, newline):
        """LF, CRLF and old-Mac CR line endings all read the same."""
        text = newline.join(["phone,name", "07911 200101,Ann", "07911 200202,Bob"]) + newline
        got = list(open_recipient_file(write(text), SMS).iter_verdicts())
        assert [(v.recipient, v.fields["name"]) for v in got] == [("+447911200101", "Ann"), ("+447911200202", "Bob")]

    def test_crlf_inside_quoted_field_is_kept(self, write):
        """A CRLF inside quotes stays in the field and does not end the row."""
        got = list(open_recipient_file(write('phone,note\r\n07911 200101,"a\r\nb"\r\n'), SMS).iter_verdicts())
        assert got[0].fields["note"] == "a\r\nb"

    def test_blank_lines_are_skipped_and_not_counted(self, write):
        """Blank and whitespace-only lines (and all-empty delimiter rows) are skipped and not numbered."""
        text = "\n\nphone,name\n\n07911 200101,Ann\n   \n,\n\r\n07911 200202,Bob\n\n"
        recipients = open_recipient_file(write(text), SMS)
        got = list(recipients.iter_verdicts())
        assert recipients.rows == 2
        assert [(v.row, v.fields["name"]) for v in got] == [(1, "Ann"), (2, "Bob")]

    def test_ragged_rows_are_invalid_with_a_reason(self, write):
        """Rows with more or fewer fields than the header are invalid, and say so."""
        text = "phone,name,city\n07911 200101,Ann,York\n07911 200202,Bob\n07911 200303,Cy,Hull,extra\n"
        got = list(open_recipient_file(write(text), SMS).iter_verdicts())
        assert [v.status for v in got] == [Status.PENDING, Status.INVALID, Status.INVALID]
        assert got[1].reason == "row has 2 fields, the header has 3"
        assert got[2].reason == "row has 4 fields, the header has 3"
        assert got[1].given == "07911 200202" and got[1].recipient == ""

    def test_trailing_empty_cells_are_tolerated(self, write):
        """A stray delimiter at the end of a row (an empty extra cell) does not make the row ragged."""
        got = list(open_recipient_file(write("phone,name\n07911 200101,Ann,\n07911 200202,Bob,,\n"),
                                       SMS).iter_verdicts())
        assert [v.status for v in got] == [Status.PENDING, Status.PENDING]

    def test_whitespace_is_trimmed(self, write):
        """Spaces and non-breaking spaces around values are trimmed, in the address and the fields."""
        got = list(open_recipient_file(write("phone , name\n \u00a007911 200101\u00a0 ,  Ann \n"), SMS).iter_verdicts())
        assert got[0].given == "07911 200101"
        assert got[0].fields == {"name": "Ann"}

    def test_unterminated_quote_is_read_not_crashed(self, write):
        """An unterminated quote swallows the rest of the file into one field instead of crashing."""
        recipients = open_recipient_file(write('phone,note\n07911 200101,"oops\n07911 200202,x\n'), SMS)
        got = list(recipients.iter_verdicts())
        assert len(got) == recipients.rows == 1
