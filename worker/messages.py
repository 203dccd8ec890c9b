"""Personal messages (templates), SMS length and send windows: pure rules, no Redis, no I/O.

Templates (see ../shared/spec/messages.md):
    `{field}` and `{field|fallback}` are placeholders; `{{` and `}}` are literal braces; nothing else is
    interpreted. A field name is letters, digits and `_` (whitespace around it ignored), with at least one
    letter, normalised by `field_name` (so `{First_Name}` is `first_name`). Anything else between braces
    (`{x.__class__}`, `{0}`, `{a[0]}`, `{a!r}`, `{a:>10}`, `{}`) is refused with a UsageError, as is a
    lone `{` or `}` (naming its 1-based character position). The fallback is the text after the first
    `|`, trimmed; it may be empty (`{nickname|}`: an empty value is then allowed) but has no braces.
    A value counts as empty when it is absent, '' or whitespace only. Values are inserted verbatim.

SMS length: GSM-7 (GSM 03.38 default alphabet + extension table, extension characters count two) or
    UCS-2 (UTF-16 code units); the URL Coupontools appends counts as a space and `url_length` characters
    (url_length 0: nothing appended). 160/70 units in one message, else segments of 153/67 (ceil).

Send windows: `HH:MM-HH:MM` (or with seconds) in the recipient's local wall-clock time, start
    inclusive, end exclusive; end before start is an overnight window; `24:00` is allowed as an end.
    With several zones the window must hold in all of them at the same instant.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

from worker.errors import UsageError

__all__ = [
    "field_name", "field_values", "Template",
    "GSM7_BASIC", "GSM7_EXTENSION", "SmsLength", "sms_length", "segments_reason",
    "Window", "phone_zones", "check_timezone", "zones_or_reason", "recipient_zones", "row_timezone",
]

# ---------------------------------------------------------------------------------------------- names


def field_name(header: str) -> str:
    """`First Name` → `first_name`: lower case, runs of non-alphanumerics → `_`, trimmed of `_`."""
    out: list[str] = []
    gap = False
    for char in header.lower():
        if char.isalnum():
            if gap and out:
                out.append("_")
            gap = False
            out.append(char)
        else:
            gap = True
    return "".join(out)


def field_values(fields: Mapping[str, str]) -> dict[str, str]:
    """A row's columns (keyed by raw header) keyed by field name; the first column wins a clash."""
    values: dict[str, str] = {}
    for header, value in fields.items():
        values.setdefault(field_name(header), value)
    return values


def _describe_columns(names: Iterable[str]) -> str:
    shown = list(dict.fromkeys(n for n in (field_name(name) for name in names) if n))
    return ", ".join(shown) if shown else "none"


# ------------------------------------------------------------------------------------------ templates


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    fallback: str | None  # None: no fallback, the value is required


_Part = str | _Field


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lone(char: str, index: int) -> UsageError:
    hint = "write {{ for a literal brace or close the field with }" if char == "{" \
        else "write }} for a literal brace"
    return UsageError(f"The message has a lone {char} at character {index + 1}: {hint}.")


def _placeholder(inner: str) -> _Field:
    """`{inner}` as a field, or UsageError when it is not `name` or `name|fallback`."""
    name, bar, fallback = inner.partition("|")
    name = name.strip()
    shown = _shorten("{" + inner + "}")
    if not name or not all(c.isalnum() or c == "_" for c in name):
        plain = all(c.isalnum() or c in "_ -" for c in name) and any(c.isalpha() for c in name)
        example = field_name(name) if plain else "first_name"
        raise UsageError(f"The message has {shown}, which is not a field name: "
                         f"use letters, digits and _ only, such as {{{example}}}.")
    if not any(c.isalpha() for c in name):
        raise UsageError(f"The message has {shown}, which is not a field name: "
                         "a field name needs a letter, such as {first_name}.")
    return _Field(field_name(name), fallback.strip() if bar else None)


def _parse_parts(text: str) -> list[_Part]:
    """The template as literal strings (adjacent ones merged) and fields."""
    parts: list[_Part] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = min((k for k in (text.find("{", i), text.find("}", i)) if k >= 0), default=n)
        literal.append(text[i:j])
        if j == n:
            break
        if text.startswith("{{", j) or text.startswith("}}", j):
            literal.append(text[j])
            i = j + 2
            continue
        if text[j] == "}":
            raise _lone("}", j)
        close, reopen = text.find("}", j + 1), text.find("{", j + 1)
        if close < 0 or 0 <= reopen < close:
            raise _lone("{", j)
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_placeholder(text[j + 1:close]))
        i = close + 1
    if literal and "".join(literal):
        parts.append("".join(literal))
    return [p for p in parts if p != ""]


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed message: parse once with `Template.parse`, then `render` per recipient."""

    text: str
    fields: tuple[str, ...]  # distinct field names, in order of first use
    _parts: tuple[_Part, ...] = field(repr=False, compare=False)
    _required: tuple[str, ...] = field(repr=False, compare=False)  # fields used without a fallback

    @classmethod
    def parse(cls, text: str) -> Template:
        parts = _parse_parts(text)
        used = [p for p in parts if isinstance(p, _Field)]
        fields = tuple(dict.fromkeys(p.name for p in used))
        required = tuple(dict.fromkeys(p.name for p in used if p.fallback is None))
        return cls(text, fields, tuple(parts), required)

    @property
    def has_fields(self) -> bool:
        return bool(self.fields)

    def check_fields(self, available: Iterable[str]) -> None:
        """UsageError naming the first field no column provides (a fallback does not excuse a typo)."""
        available = list(available)
        names = {field_name(name) for name in available}
        for name in self.fields:
            if name not in names:
                raise UsageError(f"The message uses {{{name}}}, which no column provides; "
                                 f"the columns are: {_describe_columns(available)}.")

    def missing(self, values: Mapping[str, str]) -> str | None:
        """The first field used without a fallback whose value is absent, empty or whitespace only."""
        for name in self._required:
            value = values.get(name)
            if not value or value.isspace():
                return name
        return None

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one recipient (values keyed by field name, inserted verbatim)."""
        if not self.fields:
            return self._parts[0] if self._parts else ""
        out: list[str] = []
        append, get = out.append, values.get
        for part in self._parts:
            if part.__class__ is str:
                append(part)
                continue
            value = get(part.name)
            if not value or value.isspace():
                value = part.fallback if part.fallback is not None else (value or "")
            append(value)
        return "".join(out)


# ---------------------------------------------------------------------------------------- SMS length

# GSM 03.38 default alphabet by code 0x00-0x7F; 0x1B is ESC (the extension table), not text.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC) == 128 and len(set(GSM7_BASIC)) == 128
GSM7_EXTENSION = "\f^{}\\[~]|€"  # each sent as ESC + code: two units

_GSM_ONE = frozenset(GSM7_BASIC) - {"\x1b"}
_GSM_TWO = frozenset(GSM7_EXTENSION)
_GSM_ALL = _GSM_ONE | _GSM_TWO
_LIMITS = {"gsm7": (160, 153), "ucs2": (70, 67)}


@dataclass(frozen=True, slots=True)
class SmsLength:
    encoding: str  # "gsm7" or "ucs2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2), the appended URL included
    segments: int


def sms_length(text: str, url_length: int = 30) -> SmsLength:
    """How the SMS `text` (plus the URL Coupontools appends) is encoded and how many segments it takes."""
    url = 1 + url_length if url_length > 0 else 0
    chars = set(text)
    if chars <= _GSM_ALL:
        encoding = "gsm7"
        units = len(text) + sum(text.count(c) for c in chars & _GSM_TWO) + url
    else:
        encoding = "ucs2"
        units = len(text.encode("utf-16-le")) // 2 + url
    single, multi = _LIMITS[encoding]
    segments = 1 if units <= single else -(-units // multi)
    return SmsLength(encoding, units, segments)


def segments_reason(needed: int, limit: int) -> str:
    """`message needs 3 SMS segments; the limit is 2`"""
    return f"message needs {needed} SMS segment{'' if needed == 1 else 's'}; the limit is {limit}"


# ------------------------------------------------------------------------------------------ time zones

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")
_NOT_ZONES = frozenset({"posix", "right", "localtime", "posixrules", "Factory"})  # files, not zones


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    """The zone, or None for a name that is not an IANA zone (path tricks included)."""
    if len(name) > 64 or not _ZONE_NAME.fullmatch(name) or name.split("/")[0] in _NOT_ZONES:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        return None


def _tz(name: str) -> ZoneInfo:
    zone = _zone(name)
    if zone is None:
        raise UsageError(f"Unknown time zone {_shorten(name)!r}; use an IANA name such as Europe/London.")
    return zone


def check_timezone(name: str) -> str:
    """The IANA zone name (trimmed), or UsageError for one zoneinfo does not know."""
    name = name.strip()
    _tz(name)
    return name


def phone_zones(e164: str) -> list[str]:
    """The time zones of a phone number (phonenumbers' data); [] when none is known."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return []
    return [z for z in phone_timezone.time_zones_for_number(number)
            if z != "Etc/Unknown" and _zone(z) is not None]


def row_timezone(values: Mapping[str, str]) -> str | None:
    """The row's `timezone` (or `time_zone`) column value, keyed by field name; None when empty."""
    for name in ("timezone", "time_zone"):
        value = (values.get(name) or "").strip()
        if value:
            return value
    return None


def zones_or_reason(channel: str, recipient: str, row_timezone: str | None,
                    default: str) -> tuple[list[str], str]:
    """(zones, '') for a recipient, or ([], "unknown time zone 'X'") for a bad row time zone.

    A phone's zones come from its number; otherwise the row's time zone, else `default` (which the
    caller has checked with check_timezone)."""
    if channel == "sms":
        zones = phone_zones(recipient)
        if zones:
            return zones, ""
    name = (row_timezone or "").strip()
    if not name:
        return [default], ""
    if _zone(name) is None:
        return [], f"unknown time zone {_shorten(name)!r}"
    return [name], ""


def recipient_zones(channel: str, recipient: str, row_timezone: str | None, default: str) -> list[str]:
    """zones_or_reason, raising UsageError for a bad row time zone."""
    zones, reason = zones_or_reason(channel, recipient, row_timezone, default)
    if reason:
        _tz((row_timezone or "").strip())
    return zones


# --------------------------------------------------------------------------------------- send windows

_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DAY = 86400
_HORIZON = 8 * _DAY


def _clock(text: str, end: bool) -> int | None:
    """Seconds after midnight for HH:MM[:SS] (24:00 only as an end), or None."""
    match = _CLOCK.fullmatch(text.strip())
    if not match:
        return None
    h, m, s = int(match[1]), int(match[2]), int(match[3] or 0)
    seconds = h * 3600 + m * 60 + s
    if m > 59 or s > 59 or seconds > (_DAY if end else _DAY - 1):
        return None
    return seconds


def _seconds_of_day(moment: datetime) -> float:
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


@lru_cache(maxsize=4096)
def _transitions(name: str, day: int) -> tuple[int, ...]:
    """Instants (whole seconds) in [day*86400, day*86400 + 86400) when the zone's UTC offset changes."""
    zone = _tz(name)

    def offset(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, zone).utcoffset()

    out: list[int] = []
    lo = day * _DAY
    for step in range(4):  # 6-hour steps: offsets never change twice within one
        a, b = lo + step * 21600, lo + (step + 1) * 21600
        if offset(a) == offset(b):
            continue
        while b - a > 1:  # offset(a) != offset(b); find the first second with offset(b)
            mid = (a + b) // 2
            a, b = (mid, b) if offset(mid) == offset(a) else (a, mid)
        out.append(b)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Window:
    """A daily send window in local time: open when start <= local time < end (overnight if end < start)."""

    start: int  # seconds after local midnight
    end: int  # seconds after local midnight; 86400 for 24:00

    @classmethod
    def parse(cls, text: str) -> Window:
        first, dash, second = text.partition("-")
        start = _clock(first, end=False) if dash else None
        end = _clock(second, end=True) if dash else None
        if start is None or end is None:
            raise UsageError(f"The send window {_shorten(text)!r} is not of the form HH:MM-HH:MM "
                             "in local time, such as 09:00-20:00.")
        if start == end:
            raise UsageError(f"The send window {_shorten(text)!r} starts and ends at the same time; "
                             "give a window such as 09:00-20:00.")
        return cls(start, end)

    def __str__(self) -> str:
        def clock(seconds: int) -> str:
            h, rest = divmod(seconds, 3600)
            m, s = divmod(rest, 60)
            return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")
        return f"{clock(self.start)}-{clock(self.end)}"

    def _holds(self, seconds: float) -> bool:
        if self.start < self.end:
            return self.start <= seconds < self.end
        return seconds >= self.start or seconds < self.end

    def is_open(self, zones: Sequence[str], now: float) -> bool:
        """Whether the window holds in every zone at the instant `now` (True for no zones)."""
        return all(self._holds(_seconds_of_day(datetime.fromtimestamp(now, _tz(z)))) for z in zones)

    def _candidates(self, zones: Sequence[str], now: float, clock: int) -> list[float]:
        """Instants in (now, now + 8 days] when some zone's local time reaches `clock` or jumps."""
        found: set[float] = set()
        limit = now + _HORIZON
        wall = time(clock // 3600, clock // 60 % 60, clock % 60) if clock < _DAY else time(0)
        for name in zones:
            zone = _tz(name)
            first = datetime.fromtimestamp(now, zone).date() - timedelta(days=1)
            for offset in range(11):
                day = first + timedelta(days=offset)
                for fold in (0, 1):
                    found.add(datetime.combine(day, wall, zone).replace(fold=fold).timestamp())
            for day in range(int(now // _DAY), int(limit // _DAY) + 1):
                found.update(_transitions(name, day))
        return sorted(c for c in found if now < c <= limit)

    def next_open(self, zones: Sequence[str], now: float) -> float | None:
        """`now` if open, else the first instant within 8 days when it is open in all zones; or None."""
        if self.is_open(zones, now):
            return now
        for candidate in self._candidates(zones, now, self.start):
            if self.is_open(zones, candidate):
                return candidate
        return None

    def closes_at(self, zones: Sequence[str], now: float) -> float:
        """The first instant from `now` when the window no longer holds in some zone (`now` if shut;
        inf if it never shuts within 8 days, e.g. 00:00-24:00)."""
        if not self.is_open(zones, now):
            return now
        for candidate in self._candidates(zones, now, self.end):
            if not self.is_open(zones, candidate):
                return candidate
        return math.inf
