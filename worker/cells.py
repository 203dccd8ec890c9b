"""Spreadsheet-safe cells: text that a spreadsheet will show as text, never run as a formula."""
from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def safe_cell(value: object) -> str:
    """The value as text, prefixed with a quote when a spreadsheet would read it as a formula.

    A plain E.164 number (`+447911123456`) is left alone: it is the normalised recipient, and a
    spreadsheet shows it as a number or text, never runs it.
    """
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_E164.fullmatch(text):
        return "'" + text
    return text


def unsafe_cell(text: str) -> str:
    """The original value of a cell written by safe_cell (for reading reports back)."""
    if text.startswith("'") and text[1:].startswith(_FORMULA_START) and not _PLAIN_E164.fullmatch(text[1:]):
        return text[1:]
    return text
