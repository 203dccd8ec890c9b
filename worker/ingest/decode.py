"""Choosing a file's text encoding, strictly: BOM → UTF-16 without BOM → UTF-8 → Windows-1252.

The whole file is decoded once (in chunks, never held in memory) before anything is read from it, so a
file that cannot be decoded is refused up front instead of half-read. Nothing is guessed: a file that is
neither UTF-8 nor Windows-1252 (a superset of the printable Latin-1 range), or that mixes UTF-8 with
something else, is refused with a sentence saying where.
"""
from __future__ import annotations

import codecs
from pathlib import Path

from worker.errors import InputError

CHUNK = 256 * 1024

_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (an .xlsx or .ods workbook?); save it as CSV first"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel workbook (.xls); save it as CSV first"),
    (b"%PDF", "a PDF document, not a CSV file"),
    (b"\x1f\x8b", "a gzip archive; unpack it first"),
)
NAMES = {
    "utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-16-le": "UTF-16",
    "utf-16-be": "UTF-16", "utf-32": "UTF-32", "cp1252": "Windows-1252",
}


def detect_encoding(path: Path, head: bytes) -> str:
    """The codec to read `path` with; InputError if it is not text we can decode without guessing."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise InputError(f"{path.name} looks like {what}.")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            _check(path, encoding)
            return encoding
    if b"\x00" in head:
        encoding = _utf16_without_bom(head)
        if encoding is None:
            raise InputError(f"{path.name} contains NUL bytes: it looks like a binary file, not CSV text.")
        _check(path, encoding)
        return encoding
    if _utf8_or_why(path):
        return "utf-8"
    _check(path, "cp1252")
    return "cp1252"


def _utf16_without_bom(head: bytes) -> str | None:
    """'utf-16-le' / 'utf-16-be' when the NULs sit where ASCII text in UTF-16 puts them."""
    sample = head[: len(head) & ~1]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    half = len(sample) // 2
    if odd.count(0) >= 0.6 * half and even.count(0) <= 0.1 * half:
        return "utf-16-le"
    if even.count(0) >= 0.6 * half and odd.count(0) <= 0.1 * half:
        return "utf-16-be"
    return None


def _position(path: Path, offset: int) -> str:
    """'line N' for a byte offset (counting newlines up to it)."""
    lines = 1
    done = 0
    with path.open("rb") as f:
        while done < offset:
            block = f.read(min(CHUNK, offset - done))
            if not block:
                break
            lines += block.count(b"\n")
            done += len(block)
    return f"line {lines}"


def _check(path: Path, encoding: str) -> None:
    """Decode the whole file strictly with `encoding`; InputError saying where it fails, or on NUL."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    try:
        with path.open("rb") as f:
            while True:
                block = f.read(CHUNK)
                final = not block
                text = decoder.decode(block, final)
                if "\x00" in text:
                    raise InputError(f"{path.name} contains NUL characters: it looks like a binary file, "
                                     f"not CSV text.")
                if final:
                    return
                offset += len(block)
    except UnicodeDecodeError as exc:
        where = _position(path, offset + max(exc.start, 0))
        raise InputError(
            f"{path.name} cannot be read as {NAMES.get(encoding, encoding)} ({where}: {exc.reason}); "
            f"save it as 'CSV UTF-8' and try again."
        ) from None
    except OSError as exc:
        raise InputError(f"{path.name} cannot be read: {exc.strerror or exc}.") from None


def _utf8_or_why(path: Path) -> bool:
    """True if the whole file is UTF-8. False if it is plain 8-bit text to try as Windows-1252.

    InputError if the file is UTF-8 with multi-byte characters up to some point and then not: a mix
    of encodings that no single codec reads correctly.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    seen_multibyte = False
    try:
        with path.open("rb") as f:
            while True:
                block = f.read(CHUNK)
                final = not block
                try:
                    text = decoder.decode(block, final)
                except UnicodeDecodeError as exc:
                    before = block[: max(exc.start, 0)]
                    if seen_multibyte or not before.isascii():
                        good = _position(path, offset + max(exc.start, 0))
                        raise InputError(
                            f"{path.name} mixes text encodings: it has UTF-8 characters, but the bytes at "
                            f"{good} are not UTF-8; save it again as 'CSV UTF-8'."
                        ) from None
                    return False
                if "\x00" in text:
                    raise InputError(f"{path.name} contains NUL characters: it looks like a binary file, "
                                     f"not CSV text.")
                if not seen_multibyte and not block.isascii():
                    seen_multibyte = True
                if final:
                    return True
                offset += len(block)
    except OSError as exc:
        raise InputError(f"{path.name} cannot be read: {exc.strerror or exc}.") from None
