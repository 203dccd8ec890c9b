"""Encodings: every way spreadsheets and shops write text, and refusing what cannot be read."""
from __future__ import annotations

import codecs

import pytest

from worker.errors import InputError
from worker.ingest import open_recipient_file
from worker.statuses import Status

from ingest_helpers import SMS

TEXT = "first_name,phone\r\nChloé,07911 200101\r\nZoë Ångström,+44 7911 200202\r\nJosé,0044 7911 200303\r\n"
TAB_TEXT = TEXT.replace(",", "\t")
NAMES = ["Chloé", "Zoë Ångström", "José"]
PHONES = ["+447911200101", "+447911200202", "+447911200303"]


def _read(path):
    recipients = open_recipient_file(path, SMS)
    return recipients, list(recipients.iter_verdicts())


class TestEncodings:
    @pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "latin-1"])
    def test_comma_text_in_8bit_and_utf8_encodings_reads_back_exactly(self, write, encoding):
        """UTF-8 with and without BOM, cp1252 and Latin-1 all give back the same names and numbers."""
        recipients, got = _read(write(TEXT, encoding))
        assert [v.fields["first_name"] for v in got] == NAMES
        assert [v.recipient for v in got] == PHONES
        assert recipients.columns == ["first_name", "phone"]

    @pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
    def test_excel_unicode_text_utf16_tab_separated(self, write, encoding):
        """Excel's 'Unicode text' (UTF-16, tab-separated, with or without BOM) is read."""
        bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
        path = write(bom + TAB_TEXT.encode(encoding))
        recipients, got = _read(path)
        assert recipients.delimiter == "\t"
        assert [v.fields["first_name"] for v in got] == NAMES
        assert [v.recipient for v in got] == PHONES

    def test_utf16_without_bom_is_detected(self, write):
        """A UTF-16 LE file without a BOM is recognised by where its NUL bytes sit."""
        recipients, got = _read(write(TAB_TEXT.encode("utf-16-le")))
        assert recipients.encoding == "utf-16-le"
        assert [v.recipient for v in got] == PHONES

    def test_utf32_with_bom(self, write):
        """A UTF-32 file with a BOM is read."""
        _recipients, got = _read(write(TEXT, "utf-32"))
        assert [v.fields["first_name"] for v in got] == NAMES

    def test_header_bom_does_not_hide_the_first_column(self, write):
        """A BOM before a header whose first column is the phone still finds the phone column."""
        recipients, got = _read(write("phone,name\n07911 200101,Ann\n", "utf-8-sig"))
        assert recipients.address_column == "phone"
        assert got[0].recipient == "+447911200101"

    def test_cp1252_specials_decode(self, write):
        """cp1252's 0x80–0x9F printable characters (€, curly quotes) decode as cp1252, not Latin-1 controls."""
        _recipients, got = _read(write("name,phone\n\u201cBo\u201d €5,07911 200101\n", "cp1252"))
        assert got[0].fields["name"] == "\u201cBo\u201d €5"

    def test_undecodable_file_is_refused_with_the_line(self, write):
        """Bytes that are neither UTF-8 nor cp1252 are refused with InputError naming the line."""
        path = write(b"name,phone\nAnn,07911 200101\nBob\x81,07911 200202\n")
        with pytest.raises(InputError, match="line 3"):
            open_recipient_file(path, SMS)

    def test_mixed_utf8_and_cp1252_is_refused(self, write):
        """A file that is UTF-8 up to some point and cp1252 after it is refused, not mis-decoded."""
        data = "name,phone\nChloé,07911 200101\n".encode() + "José,07911 200202\n".encode("cp1252")
        with pytest.raises(InputError, match="mixes text encodings"):
            open_recipient_file(write(data), SMS)

    def test_bad_byte_at_the_very_end_refuses_before_anything_is_read(self, write):
        """A file whose only bad byte is its last is refused by open, before any verdict."""
        rows = "".join(f"N{i},07911 2{i:05d}\n" for i in range(5000))
        data = ("name,phone\n" + rows).encode("utf-16") + b"\x00"  # odd length: truncated UTF-16
        with pytest.raises(InputError, match="UTF-16"):
            open_recipient_file(write(data), SMS)

    @pytest.mark.parametrize("data, what", [
        (b"PK\x03\x04\x14\x00\x06\x00rest-of-zip", "xlsx"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "xls"),
        (b"name,phone\x00\x01\x02\x00\x00\xff\x00", "binary"),
    ])
    def test_workbooks_and_binary_files_are_refused_with_a_hint(self, write, data, what):
        """Workbooks and binary files are refused with a sentence saying what they look like."""
        with pytest.raises(InputError, match=what):
            open_recipient_file(write(data), SMS)

    def test_nul_characters_in_utf8_text_are_refused(self, write):
        """A NUL character past the first 64 KB is still found and refused."""
        text = "name,phone\n" + "Ann,07911 200101\n" * 5000 + "Bob\x00,07911 200202\n"
        with pytest.raises(InputError, match="NUL"):
            open_recipient_file(write(text), SMS)

    def test_encoding_is_reported(self, write):
        """RecipientFile.encoding names the codec used."""
        assert open_recipient_file(write(TEXT, "cp1252"), SMS).encoding == "cp1252"
        assert open_recipient_file(write(TEXT, "utf-8-sig"), SMS).encoding == "utf-8-sig"
        assert open_recipient_file(write(TEXT, "utf-8"), SMS).encoding == "utf-8"


class TestFileChecks:
    def test_missing_file(self, tmp_path):
        """A path that does not exist is an InputError naming it."""
        with pytest.raises(InputError, match="no file"):
            open_recipient_file(tmp_path / "nope.csv", SMS)

    def test_directory(self, tmp_path):
        """A directory is refused."""
        with pytest.raises(InputError, match="directory"):
            open_recipient_file(tmp_path, SMS)

    def test_empty_file(self, write):
        """An empty file is refused."""
        with pytest.raises(InputError, match="empty"):
            open_recipient_file(write(""), SMS)

    def test_only_blank_lines(self, write):
        """A file of blank lines has no header and is refused."""
        with pytest.raises(InputError, match="no header"):
            open_recipient_file(write("\n\r\n  \n"), SMS)

    def test_header_only_has_no_rows(self, write):
        """A header without rows is a valid, empty list."""
        recipients = open_recipient_file(write("phone,name\n"), SMS)
        assert recipients.rows == 0
        assert list(recipients.iter_verdicts()) == []

    def test_invalid_status_is_the_only_outcome_of_bad_rows(self, write):
        """Rows that fail validation end as Status.INVALID, never as an exception."""
        recipients, got = _read(write("phone\nnonsense\n12\n"))
        assert {v.status for v in got} == {Status.INVALID}
