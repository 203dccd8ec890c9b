"""Spreadsheet-safe cells: text that a spreadsheet will show as text, never run as a formula."""
from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def safe_cell(value: object) -> str:
    """The value as text, prefixed with a quote when a spreadsheet would read it as a formula.

    A plain E.164 number (`+447911123456`) is left alone: it is the normalised recipient, and a
    spreadsheet shows it as a number or text, never runs it. Text that itself starts with a quote gets
    one more, so that `unsafe_cell` gives back exactly what was written.
    """
    text = "" if value is None else str(value)
    if text.startswith("'") or text.startswith(_FORMULA_START) and not _PLAIN_E164.fullmatch(text):
        return "'" + text
    return text


def unsafe_cell(text: str) -> str:
    """The original value of a cell written by safe_cell (for reading reports back)."""
    rest = text[1:]
    if text.startswith("'") and (rest.startswith("'") or rest.startswith(_FORMULA_START)
                                 and not _PLAIN_E164.fullmatch(rest)):
        return rest
    return text
