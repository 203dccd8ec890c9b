"""Templates, SMS length and send windows (worker.messages): examples from the spec and properties
against independent reference implementations written here."""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import UsageError
from worker.messages import (
    SmsLength, Template, Window, check_timezone, field_name, field_values, phone_zones, recipient_zones,
    row_timezone, segments_reason, sms_length, zones_or_reason,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# ------------------------------------------------------------------------------------------ field names

@pytest.mark.parametrize("header, name", [
    ("First Name", "first_name"), ("E-Mail", "e_mail"), ("Prénom", "prénom"), ("  __Zip  Code__ ", "zip_code"),
    ("first_name", "first_name"), ("a--b__c", "a_b_c"), ("AGE (years)", "age_years"), ("---", ""),
    ("Straße 2", "straße_2"),
])
def test_field_name(header: str, name: str) -> None:
    assert field_name(header) == name


def test_field_values_keys_rows_by_field_name_first_column_wins() -> None:
    assert field_values({"First Name": "Ann", "first_name": "Bob", "E-Mail": "a@b.c"}) == \
        {"first_name": "Ann", "e_mail": "a@b.c"}


# -------------------------------------------------------------------------------------------- templates

def test_parse_and_render_spec_example() -> None:
    template = Template.parse("Hi {first_name}, your coupon:")
    assert template.fields == ("first_name",)
    assert template.has_fields
    assert template.text == "Hi {first_name}, your coupon:"
    assert template.render({"first_name": "Ann"}) == "Hi Ann, your coupon:"


def test_fields_distinct_in_order_normalised_whitespace_ignored() -> None:
    template = Template.parse("{ City }{first_name}{FIRST_NAME|x}{city}{Zip_Code}")
    assert template.fields == ("city", "first_name", "zip_code")


def test_no_fields() -> None:
    template = Template.parse("Plain {{text}}")
    assert not template.has_fields and template.fields == ()
    assert template.render({}) == "Plain {text}"
    assert template.missing({}) is None
    assert Template.parse("").render({}) == ""


def test_fallback_used_for_empty_absent_or_blank_values() -> None:
    template = Template.parse("Hi {first_name|there}!")
    assert template.render({"first_name": "Ann"}) == "Hi Ann!"
    for values in ({}, {"first_name": ""}, {"first_name": "  \t"}):
        assert template.render(values) == "Hi there!"
        assert template.missing(values) is None


def test_fallback_trimmed_may_be_empty_or_hold_bars() -> None:
    assert Template.parse("{a | dear friend }").render({}) == "dear friend"
    assert Template.parse("[{a|}]").render({"a": ""}) == "[]"
    assert Template.parse("{a|x|y}").render({}) == "x|y"
    assert Template.parse("[{a|}]").missing({}) is None


def test_missing_is_the_first_required_field_without_value() -> None:
    template = Template.parse("{a|x} {b} {c} {a}")
    assert template.missing({"a": "1", "b": "2", "c": "3"}) is None
    assert template.missing({"a": "1", "b": " ", "c": ""}) == "b"
    assert template.missing({"b": "2", "c": "3"}) == "a"  # {a} is also used without a fallback
    assert template.missing({"a": "1", "b": "2"}) == "c"


def test_values_are_inserted_verbatim() -> None:
    template = Template.parse("Hi {name}")
    for value in ("{other}", "{{", "}", "{0.__class__}", "%s", "{name}"):
        assert template.render({"name": value, "other": "NO"}) == "Hi " + value


def test_literal_braces() -> None:
    assert Template.parse("{{a}} {{{a}}}").render({"a": "X"}) == "{a} {X}"
    assert Template.parse("}}{{").render({}) == "}{"


@pytest.mark.parametrize("text", ["{x.__class__}", "{0}", "{a[0]}", "{a!r}", "{a:>10}", "{}", "{ }", "{|x}",
                                  "{a b}", "{a.b|c}", "{123}", "{_}"])
def test_not_field_names_are_refused(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        Template.parse("Hi " + text)
    message = str(caught.value)
    assert message.startswith(f"The message has {text}, which is not a field name: ")
    assert message.count(".") <= 1 + text.count(".") and message.endswith(".")


def test_not_field_name_suggests_the_normalised_name() -> None:
    with pytest.raises(UsageError, match=r"such as \{first_name\}\.$"):
        Template.parse("{First Name}")


@pytest.mark.parametrize("text, char, position", [
    ("Hi { there", "{", 4), ("Hi } there", "}", 4), ("{a", "{", 1), ("a}", "}", 2), ("{a {b}", "{", 1),
    ("{{{", "{", 3), ("{a}}", "}", 4), ("{a|{b}}", "{", 1),
])
def test_lone_braces_are_refused_with_position(text: str, char: str, position: int) -> None:
    with pytest.raises(UsageError, match=rf"^The message has a lone \{char} at character {position}: "):
        Template.parse(text)


def test_check_fields_spec_sentence() -> None:
    template = Template.parse("Hi {frist_name}")
    with pytest.raises(UsageError) as caught:
        template.check_fields(["First Name", "E-Mail", "Prénom"])
    assert str(caught.value) == ("The message uses {frist_name}, which no column provides; "
                                 "the columns are: first_name, e_mail, prénom.")
    Template.parse("Hi {first_name} {e_mail}").check_fields(["First Name", "E-Mail"])
    Template.parse("no fields").check_fields([])


def test_check_fields_refuses_unknown_fields_even_with_a_fallback() -> None:
    with pytest.raises(UsageError, match=r"^The message uses \{nick\}, which no column provides; "
                                         r"the columns are: none\.$"):
        Template.parse("{nick|friend}").check_fields([])


def test_template_is_frozen() -> None:
    template = Template.parse("{a}")
    with pytest.raises(AttributeError):
        template.text = "x"  # type: ignore[misc]


# A reference renderer: a regex scan, leftmost match first.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def reference_render(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match[0] in ("{{", "}}"):
            return match[0][0]
        name, bar, fallback = match[1].partition("|")
        value = values.get(name.strip().lower(), "")
        if value.strip() == "":
            return fallback.strip() if bar else value
        return value
    return _TOKEN.sub(one, text)


def reference_missing(text: str, values: dict[str, str]) -> str | None:
    for match in _TOKEN.finditer(text):
        if match[1] is not None and "|" not in match[1]:
            name = match[1].strip().lower()
            if values.get(name, "").strip() == "":
                return name
    return None


NAMES = ["first_name", "City", "zip2", "prénom", "a"]
_plain = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=8)
_field = st.builds(lambda ws1, name, ws2: "{" + ws1 + name + ws2 + "}",
                   st.sampled_from(["", " ", "\t"]), st.sampled_from(NAMES), st.sampled_from(["", " "]))
_fallback = st.builds(lambda name, fb: "{" + name + "|" + fb + "}", st.sampled_from(NAMES), _plain)
_chunks = st.lists(st.one_of(_plain, st.just("{{"), st.just("}}"), _field, _fallback), max_size=12)
_value = st.one_of(st.just(""), st.just("  "), st.text(max_size=6),
                   st.text(alphabet="{}|ab ", max_size=6))
_values = st.dictionaries(st.sampled_from([n.lower() for n in NAMES] + ["other"]), _value)


@FAST
@given(_chunks, _values)
def test_render_matches_reference(chunks: list[str], values: dict[str, str]) -> None:
    text = "".join(chunks)
    template = Template.parse(text)
    assert template.render(values) == reference_render(text, values)
    assert template.missing(values) == reference_missing(text, values)
    assert template.text == text
    used = [m[1].partition("|")[0].strip().lower() for m in _TOKEN.finditer(text) if m[1] is not None]
    assert template.fields == tuple(dict.fromkeys(used))


@FAST
@given(st.text())
def test_parse_raises_only_usage_error(text: str) -> None:
    try:
        Template.parse(text)
    except UsageError as error:
        assert str(error).startswith("The message has ")


_VALID_NAME = re.compile(r"\s*[a-zA-Z0-9_é]*[a-zA-Zé][a-zA-Z0-9_é]*\s*(\|[^{}]*)?")


@FAST
@given(st.text(alphabet="{}|aB_ é.:!0[]\n", max_size=16))
def test_parse_accepts_exactly_the_grammar(text: str) -> None:
    tokens = re.findall(r"\{\{|\}\}|\{([^{}]*)\}|([{}])|[^{}]+", text)
    valid = not any(lone for _, lone in tokens)
    valid = valid and all(_VALID_NAME.fullmatch(m[1]) for m in _TOKEN.finditer(text) if m[1] is not None)
    try:
        Template.parse(text)
        parsed = True
    except UsageError:
        parsed = False
    assert parsed == valid


def test_render_a_million_times_is_cheap() -> None:
    import time
    template = Template.parse("Hi {first_name|there}, your {city} coupon is ready: {{code}}")
    values = {"first_name": "Ann", "city": "Gent"}
    start = time.perf_counter()
    for _ in range(100_000):
        template.render(values)
    assert (time.perf_counter() - start) < 1.0  # ≈ 0.1 s here: 1M renders within seconds


# ------------------------------------------------------------------------------------------- SMS length

# GSM 03.38 default alphabet by code point, row by row (0x00-0x7F); None at 0x1B (ESC).
_GSM_ROWS = [
    [0x40, 0xA3, 0x24, 0xA5, 0xE8, 0xE9, 0xF9, 0xEC, 0xF2, 0xC7, 0x0A, 0xD8, 0xF8, 0x0D, 0xC5, 0xE5],
    [0x394, 0x5F, 0x3A6, 0x393, 0x39B, 0x3A9, 0x3A0, 0x3A8, 0x3A3, 0x398, 0x39E, None, 0xC6, 0xE6, 0xDF, 0xC9],
    [0x20, 0x21, 0x22, 0x23, 0xA4] + list(range(0x25, 0x30)),
    list(range(0x30, 0x40)),
    [0xA1] + list(range(0x41, 0x50)),
    list(range(0x50, 0x5B)) + [0xC4, 0xD6, 0xD1, 0xDC, 0xA7],
    [0xBF] + list(range(0x61, 0x70)),
    list(range(0x70, 0x7B)) + [0xE4, 0xF6, 0xF1, 0xFC, 0xE0],
]
_GSM_EXT = {0x0C: 0x0A, ord("^"): 0x14, ord("{"): 0x28, ord("}"): 0x29, ord("\\"): 0x2F, ord("["): 0x3C,
            ord("~"): 0x3D, ord("]"): 0x3E, ord("|"): 0x40, 0x20AC: 0x65}
GSM_ENCODE = {chr(cp): bytes([16 * r + c]) for r, row in enumerate(_GSM_ROWS) for c, cp in enumerate(row)
              if cp is not None}
GSM_ENCODE.update({chr(cp): bytes([0x1B, code]) for cp, code in _GSM_EXT.items()})


def reference_length(text: str, url_length: int = 30) -> SmsLength:
    url = 1 + url_length if url_length else 0
    if all(c in GSM_ENCODE for c in text):
        units, single, multi, encoding = len(b"".join(GSM_ENCODE[c] for c in text)), 160, 153, "gsm7"
    else:
        units, single, multi, encoding = len(text.encode("utf-16-le")) // 2, 70, 67, "ucs2"
    units += url
    return SmsLength(encoding, units, 1 if units <= single else math.ceil(units / multi))


def test_reference_table_has_127_text_characters() -> None:
    assert sum(len(row) for row in _GSM_ROWS) == 128
    assert len(GSM_ENCODE) == 127 + 10


@pytest.mark.parametrize("text, url, expected", [
    ("", 30, SmsLength("gsm7", 31, 1)),
    ("", 0, SmsLength("gsm7", 0, 1)),
    ("a" * 129, 30, SmsLength("gsm7", 160, 1)),
    ("a" * 130, 30, SmsLength("gsm7", 161, 2)),
    ("a" * 160, 0, SmsLength("gsm7", 160, 1)),
    ("a" * 161, 0, SmsLength("gsm7", 161, 2)),
    ("a" * 306, 0, SmsLength("gsm7", 306, 2)),
    ("a" * 307, 0, SmsLength("gsm7", 307, 3)),
    ("€" * 80, 0, SmsLength("gsm7", 160, 1)),
    ("{}[]~|^\\\f€", 0, SmsLength("gsm7", 20, 1)),
    ("é ß Ø Δ ¥ ¿ à", 0, SmsLength("gsm7", 13, 1)),
    ("ê", 30, SmsLength("ucs2", 32, 1)),
    ("á" * 70, 0, SmsLength("ucs2", 70, 1)),
    ("á" * 71, 0, SmsLength("ucs2", 71, 2)),
    ("😀" * 35, 0, SmsLength("ucs2", 70, 1)),
    ("😀" * 36, 0, SmsLength("ucs2", 72, 2)),
    ("Hi 😀", 30, SmsLength("ucs2", 36, 1)),
    ("中" * 134, 0, SmsLength("ucs2", 134, 2)),
    ("中" * 135, 0, SmsLength("ucs2", 135, 3)),
    ("`", 0, SmsLength("ucs2", 1, 1)),  # the backtick is not GSM
    ("\x1b", 0, SmsLength("ucs2", 1, 1)),  # neither is ESC itself
])
def test_sms_length_examples(text: str, url: int, expected: SmsLength) -> None:
    assert sms_length(text, url) == expected


def test_url_counts_in_the_message_encoding() -> None:
    assert sms_length("a" * 40, 30).units == 71  # GSM: 40 + 1 + 30
    assert sms_length("á" * 40, 30) == SmsLength("ucs2", 71, 2)  # UCS-2: the URL tips it over 70


def test_segments_reason() -> None:
    assert segments_reason(3, 2) == "message needs 3 SMS segments; the limit is 2"
    assert segments_reason(1, 0) == "message needs 1 SMS segment; the limit is 0"


_GSM_TEXT = "".join(GSM_ENCODE)
_mixed = st.text(alphabet=st.one_of(st.sampled_from(_GSM_TEXT), st.sampled_from("^{}\\[~]|€\f"),
                                    st.sampled_from("éßêáç`"), st.sampled_from("😀🎉👍🏽"),
                                    st.sampled_from("中文字日本")), max_size=400)
_mostly_gsm = st.text(alphabet=st.sampled_from(_GSM_TEXT + "€{}"), max_size=400)


@FAST
@given(st.one_of(_mixed, _mostly_gsm, st.text(max_size=200)), st.integers(0, 60))
def test_sms_length_matches_reference(text: str, url: int) -> None:
    assert sms_length(text, url) == reference_length(text, url)


# --------------------------------------------------------------------------------------------- windows

@pytest.mark.parametrize("text, start, end", [
    ("09:00-20:00", 9 * 3600, 20 * 3600), ("9:00-20:00", 9 * 3600, 20 * 3600),
    ("09:00:30-20:00:15", 9 * 3600 + 30, 20 * 3600 + 15), (" 20:00 - 08:00 ", 20 * 3600, 8 * 3600),
    ("00:00-24:00", 0, 86400), ("22:00-00:00", 22 * 3600, 0),
])
def test_window_parse(text: str, start: int, end: int) -> None:
    window = Window.parse(text)
    assert (window.start, window.end) == (start, end)


@pytest.mark.parametrize("text", ["", "9-20", "09:00", "09:00-", "25:00-26:00", "09:60-10:00", "09:00-20:00:99",
                                  "24:00-08:00", "09:00-24:01", "nine-ten", "09.00-20.00", "09:00-20:00-21:00"])
def test_window_parse_refuses_bad_values(text: str) -> None:
    with pytest.raises(UsageError, match=r"^The send window .* is not of the form HH:MM-HH:MM in local time, "
                                         r"such as 09:00-20:00\.$"):
        Window.parse(text)


def test_window_parse_refuses_empty_window() -> None:
    with pytest.raises(UsageError, match="starts and ends at the same time"):
        Window.parse("09:00-09:00:00")


def test_window_str_round_trips() -> None:
    for text in ("09:00-20:00", "20:00-08:30", "09:00:05-20:00"):
        assert str(Window.parse(text)) == text


WORK = Window.parse("09:00-20:00")


def test_is_open_single_zone_bounds() -> None:
    zones = ["Europe/London"]  # GMT in January
    assert not WORK.is_open(zones, utc(2026, 1, 15, 8, 59, 59))
    assert WORK.is_open(zones, utc(2026, 1, 15, 9))  # start inclusive
    assert WORK.is_open(zones, utc(2026, 1, 15, 19, 59, 59))
    assert not WORK.is_open(zones, utc(2026, 1, 15, 20))  # end exclusive
    assert WORK.is_open(zones, utc(2026, 7, 15, 8))  # 09:00 BST
    assert WORK.is_open([], utc(2026, 1, 15, 3))


def test_next_open_now_when_open() -> None:
    now = utc(2026, 1, 15, 12, 0, 0) + 0.25
    assert WORK.next_open(["Europe/London"], now) == now


def test_next_open_two_zones_overlap() -> None:
    zones = ["Europe/London", "Asia/Tokyo"]  # overlap 09:00-11:00 UTC in winter
    assert not WORK.is_open(zones, utc(2026, 1, 15, 12))
    assert WORK.next_open(zones, utc(2026, 1, 15, 12)) == utc(2026, 1, 16, 9)
    assert WORK.next_open(zones, utc(2026, 1, 16, 5)) == utc(2026, 1, 16, 9)
    assert WORK.closes_at(zones, utc(2026, 1, 16, 9)) == utc(2026, 1, 16, 11)
    assert WORK.next_open(zones, utc(2026, 7, 16, 5)) == utc(2026, 7, 16, 8)  # BST: 08:00-11:00 UTC


def test_overnight_window() -> None:
    night = Window.parse("20:00-08:00")
    tokyo = ["Asia/Tokyo"]  # UTC+9
    assert night.is_open(tokyo, utc(2026, 1, 15, 12))  # 21:00
    assert night.is_open(tokyo, utc(2026, 1, 15, 22, 59))  # 07:59
    assert not night.is_open(tokyo, utc(2026, 1, 15, 23))  # 08:00
    assert night.next_open(tokyo, utc(2026, 1, 15, 23)) == utc(2026, 1, 16, 11)
    assert night.closes_at(tokyo, utc(2026, 1, 15, 12)) == utc(2026, 1, 15, 23)


def test_several_zones_of_one_number() -> None:
    zones = phone_zones("+12085551234")  # Idaho: Mountain and Pacific
    assert sorted(zones) == ["America/Boise", "America/Los_Angeles"]
    # 09:00 Pacific (17:00 UTC) to 20:00 Mountain (03:00 UTC) in January
    assert not WORK.is_open(zones, utc(2026, 1, 15, 16, 30))  # 09:30 MST but 08:30 PST
    assert WORK.next_open(zones, utc(2026, 1, 15, 16, 30)) == utc(2026, 1, 15, 17)
    assert WORK.closes_at(zones, utc(2026, 1, 15, 17)) == utc(2026, 1, 16, 3)


def test_never_overlapping_zones() -> None:
    assert Window.parse("09:00-11:00").next_open(["Asia/Tokyo", "America/New_York"], utc(2026, 1, 15)) is None
    assert Window.parse("09:00-10:00").next_open(["Europe/London", "Asia/Tokyo"], utc(2026, 1, 15)) is None


def test_toll_free_number_many_zones_narrow_overlap() -> None:
    toll_free = phone_zones("+18005551234")  # Guam (UTC+10) … St. John's (UTC-3:30)
    assert len(toll_free) > 10
    # 09:00 in Guam is 23:00 UTC; 20:00 in St. John's is 23:30 UTC
    assert WORK.next_open(toll_free, utc(2026, 1, 15)) == utc(2026, 1, 15, 23)
    assert WORK.closes_at(toll_free, utc(2026, 1, 15, 23)) == utc(2026, 1, 15, 23, 30)


def test_dst_spring_forward_start_in_the_gap() -> None:
    # New York 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC; 02:30 never happens that day
    window = Window.parse("02:30-20:00")
    ny = ["America/New_York"]
    assert window.next_open(ny, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7)  # 03:00 EDT: inside the window
    assert window.next_open(ny, utc(2026, 3, 7, 5)) == utc(2026, 3, 7, 7, 30)  # 02:30 EST the day before
    assert WORK.next_open(ny, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 13)  # 09:00 EDT
    assert WORK.next_open(ny, utc(2026, 3, 7, 5)) == utc(2026, 3, 7, 14)  # 09:00 EST
    # London 2026-03-29: 01:00 GMT becomes 02:00 BST
    assert Window.parse("01:30-20:00").next_open(["Europe/London"], utc(2026, 3, 29)) == utc(2026, 3, 29, 1)


def test_dst_fall_back_repeated_hour() -> None:
    # London 2026-10-25: 02:00 BST becomes 01:00 GMT at 01:00 UTC; 01:00-02:00 happens twice
    window = Window.parse("01:30-20:00")
    london = ["Europe/London"]
    assert window.next_open(london, utc(2026, 10, 25)) == utc(2026, 10, 25, 0, 30)  # 01:30 BST
    assert window.closes_at(london, utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1)  # back to 01:00 GMT
    assert window.next_open(london, utc(2026, 10, 25, 1)) == utc(2026, 10, 25, 1, 30)  # 01:30 GMT


def test_lord_howe_half_hour_dst() -> None:
    lord_howe = ["Australia/Lord_Howe"]
    # 2026-04-05 02:00 +11 becomes 01:30 +10:30 at 15:00 UTC the day before
    window = Window.parse("01:45-20:00")
    assert window.is_open(lord_howe, utc(2026, 4, 4, 14, 50))  # 01:50 +11
    assert window.closes_at(lord_howe, utc(2026, 4, 4, 14, 50)) == utc(2026, 4, 4, 15)  # 01:30 +10:30
    assert window.next_open(lord_howe, utc(2026, 4, 4, 15)) == utc(2026, 4, 4, 15, 15)  # 01:45 +10:30
    # 2026-10-04 02:00 +10:30 becomes 02:30 +11 at 15:30 UTC the day before: 02:10 never happens
    window = Window.parse("02:10-20:00")
    assert window.next_open(lord_howe, utc(2026, 10, 3, 14)) == utc(2026, 10, 3, 15, 30)
    assert WORK.next_open(lord_howe, utc(2026, 1, 15, 10)) == utc(2026, 1, 15, 22)  # 09:00 +11


def test_always_open_window() -> None:
    always = Window.parse("00:00-24:00")
    now = utc(2026, 3, 29, 1)
    assert always.is_open(["Europe/London", "Asia/Tokyo"], now)
    assert always.closes_at(["Europe/London"], now) == math.inf


ZONES = ["Europe/London", "Asia/Tokyo", "America/New_York", "Australia/Lord_Howe", "America/Boise",
         "America/Los_Angeles", "Asia/Kolkata"]
TRANSITIONS = [utc(2026, 3, 8, 7), utc(2026, 3, 29, 1), utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30),
               utc(2026, 10, 25, 1), utc(2026, 11, 1, 6), utc(2026, 6, 1)]
_nows = st.builds(lambda base, delta: base + delta, st.sampled_from(TRANSITIONS),
                  st.floats(-2 * 86400, 2 * 86400, allow_nan=False))
_windows = st.tuples(st.integers(0, 47), st.integers(0, 47)).filter(lambda se: se[0] != se[1]).map(
    lambda se: Window(se[0] * 1800, se[1] * 1800))
_zone_sets = st.lists(st.sampled_from(ZONES), min_size=1, max_size=2, unique=True)


@settings(max_examples=40, deadline=None)
@given(_windows, _zone_sets, _nows)
def test_next_open_is_the_first_open_minute(window: Window, zones: list[str], now: float) -> None:
    found = window.next_open(zones, now)
    minute = math.floor(now / 60) * 60 + 60  # every boundary is on a whole minute
    stop = found if found is not None else now + 8 * 86400
    if found is not None:
        assert found >= now and window.is_open(zones, found)
        if found > now:
            assert not window.is_open(zones, now)
            assert found % 60 == 0
    while minute < stop:
        assert not window.is_open(zones, minute), (window, zones, now, found, minute)
        minute += 60


@settings(max_examples=30, deadline=None)
@given(_windows, _zone_sets, _nows)
def test_closes_at_is_the_first_closed_minute(window: Window, zones: list[str], now: float) -> None:
    opened = window.next_open(zones, now)
    if opened is None:
        return
    closes = window.closes_at(zones, opened)
    assert closes > opened and not window.is_open(zones, closes)
    minute = math.floor(opened / 60) * 60 + 60
    while minute < min(closes, opened + 8 * 86400):
        assert window.is_open(zones, minute)
        minute += 60


# ------------------------------------------------------------------------------------------ time zones

def test_phone_zones() -> None:
    assert phone_zones("+442071234567") == ["Europe/London"]
    assert phone_zones("+819012345678") == ["Asia/Tokyo"]
    assert phone_zones("+15555555555") == []  # Etc/Unknown dropped
    assert phone_zones("not a number") == []
    assert "Australia/Lord_Howe" in phone_zones("+61412345678")


@pytest.mark.parametrize("name", ["Europe/London", "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT+5",
                                  " Asia/Tokyo "])
def test_check_timezone_accepts_iana_names(name: str) -> None:
    assert check_timezone(name) == name.strip()


@pytest.mark.parametrize("name", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "Europe/../Europe/London",
                                  "localtime", "posixrules", "right/UTC", "Europe\\London", "Europe/London\x00",
                                  "europe/london_x", "a" * 300])
def test_check_timezone_refuses_other_names(name: str) -> None:
    with pytest.raises(UsageError, match=r"^Unknown time zone .*; use an IANA name such as Europe/London\.$"):
        check_timezone(name)


def test_check_timezone_sentence() -> None:
    with pytest.raises(UsageError) as caught:
        check_timezone("Mars/Base")
    assert str(caught.value) == "Unknown time zone 'Mars/Base'; use an IANA name such as Europe/London."


def test_zones_or_reason() -> None:
    assert zones_or_reason("sms", "+442071234567", "Asia/Tokyo", "UTC") == (["Europe/London"], "")
    assert zones_or_reason("sms", "+15555555555", "Asia/Tokyo", "UTC") == (["Asia/Tokyo"], "")
    assert zones_or_reason("sms", "+15555555555", None, "UTC") == (["UTC"], "")
    assert zones_or_reason("email", "a@b.c", " ", "Europe/Paris") == (["Europe/Paris"], "")
    assert zones_or_reason("email", "a@b.c", "Mars/Base", "UTC") == ([], "unknown time zone 'Mars/Base'")
    assert recipient_zones("email", "a@b.c", "Asia/Tokyo", "UTC") == ["Asia/Tokyo"]
    with pytest.raises(UsageError, match="Mars/Base"):
        recipient_zones("email", "a@b.c", "Mars/Base", "UTC")


def test_row_timezone() -> None:
    assert row_timezone(field_values({"Time Zone": " Asia/Tokyo "})) == "Asia/Tokyo"
    assert row_timezone(field_values({"timezone": "UTC"})) == "UTC"
    assert row_timezone({"timezone": ""}) is None
