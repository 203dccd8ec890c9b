"""One address at a time: phone numbers to E.164, email addresses to their normalised form.

Everything here is pure and picklable by reference, so the process pool can run `normalize_batch`.
A result is `(recipient, reason, key)`: `recipient` is the normalised address ('' when invalid),
`reason` says why it is invalid ('' when valid) and `key` is a 64-bit int used for dedupe
(the E.164 digits for a phone, 8 bytes of blake2b for an email).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from hashlib import blake2b

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from worker.errors import InputError

CHANNELS = ("sms", "email")

Result = tuple[str, str, int]
_INVALID_KEY = 0

# Characters that surround addresses in exports but are never part of them.
_JUNK = " \t\r\n\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
        "\u2028\u2029\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff\u200e\u200f"
_LETTERS = re.compile(r"[^\W\d_]")  # any letter, in any script
_PLAIN_PHONE = re.compile(r"[0-9 +()\-./]+")  # the usual case: nothing to look at twice
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_REGION_ALIASES = {"UK": "GB", "EL": "GR"}
_SUPPORTED_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


def clean(value: object) -> str:
    """The value as text with surrounding whitespace (including zero-width and BOM) trimmed."""
    if value is None:
        return ""
    return (value if isinstance(value, str) else str(value)).strip(_JUNK)


def resolve_region(value: str | None) -> str | None:
    """An ISO 3166 alpha-2 region phonenumbers knows ('uk' → 'GB'), or None if it is not one."""
    if value is None:
        return None
    code = clean(value).upper()
    code = _REGION_ALIASES.get(code, code)
    return code if code in _SUPPORTED_REGIONS else None


def check_channel(channel: object) -> str:
    """The channel, or InputError if it is not one we send on."""
    if channel not in CHANNELS:
        raise InputError(f"Unknown channel {channel!r}; use 'sms' or 'email'.")
    return channel  # type: ignore[return-value]


def check_region(region: object) -> str | None:
    """The default region, upper-cased, or InputError if it is not an ISO 3166 alpha-2 code."""
    if region is None or region == "":
        return None
    if not isinstance(region, str) or resolve_region(region) is None:
        raise InputError(f"Unknown region {region!r}; give an ISO 3166 alpha-2 country code such as 'GB'.")
    return resolve_region(region)


def _region_name(number: phonenumbers.PhoneNumber) -> str:
    region = phonenumbers.region_code_for_country_code(number.country_code)
    if region in (None, "ZZ"):
        return f"+{number.country_code}"
    if region == "001":  # non-geographic numbering plans
        return f"+{number.country_code}"
    return region


def normalize_phone(value: object, region: str | None = None, country: str | None = None) -> Result:
    """A phone number as `(E.164, '', key)`, or `('', reason, 0)` when it cannot be used.

    `region` is the default region (already checked); `country` is the row's own country cell, which
    overrides it when not empty.
    """
    text = clean(value)
    if not text:
        return "", "no phone number", _INVALID_KEY
    if len(text) > 64:
        return "", "not a phone number (too long)", _INVALID_KEY
    if _PLAIN_PHONE.fullmatch(text) is None:
        if _SCIENTIFIC.fullmatch(text):
            return "", "not a phone number (a spreadsheet turned it into scientific notation)", _INVALID_KEY
        if _LETTERS.search(text):
            return "", "not a phone number (contains letters)", _INVALID_KEY
    bad_country = ""
    if country is not None:
        country_text = clean(country)
        if country_text:
            resolved = resolve_region(country_text)
            if resolved is None:
                bad_country = country_text
                region = None
            else:
                region = resolved
    if region is None and text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return "", _parse_reason(exc, region, bad_country, text), _INVALID_KEY
    except Exception:  # noqa: BLE001 - bad content never escapes as anything but a reason
        return "", "not a phone number", _INVALID_KEY
    try:
        if not phonenumbers.is_valid_number(number):
            name = _region_name(number)
            possible = phonenumbers.is_possible_number_with_reason(number)
            if possible == ValidationResult.TOO_SHORT:
                return "", f"not a valid number for {name} (too short)", _INVALID_KEY
            if possible == ValidationResult.TOO_LONG:
                return "", f"not a valid number for {name} (too long)", _INVALID_KEY
            if possible == ValidationResult.INVALID_COUNTRY_CODE:
                return "", f"unknown country code +{number.country_code}", _INVALID_KEY
            return "", f"not a valid number for {name}", _INVALID_KEY
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        return e164, "", int(e164[1:])
    except Exception:  # noqa: BLE001
        return "", "not a phone number", _INVALID_KEY


def _parse_reason(exc: NumberParseException, region: str | None, bad_country: str, text: str) -> str:
    kind = exc.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        if bad_country:
            return f"unknown country {bad_country!r} for a national number"
        if region is None and not text.startswith("+"):
            return "no country code (write it as +CC… or give a default region)"
        return "unknown country code"
    if kind in (NumberParseException.TOO_SHORT_AFTER_IDD, NumberParseException.TOO_SHORT_NSN):
        return "not a phone number (too short)"
    if kind == NumberParseException.TOO_LONG:
        return "not a phone number (too long)"
    return "not a phone number"


def normalize_email(value: object, region: str | None = None, country: str | None = None) -> Result:
    """An email address as `(normalised, '', key)`, or `('', reason, 0)` when it cannot be used."""
    text = clean(value)
    if not text:
        return "", "no email address", _INVALID_KEY
    if text[:7].lower() == "mailto:":
        text = text[7:].strip(_JUNK)
    if len(text) > 512:
        return "", "not an email address (too long)", _INVALID_KEY
    try:
        # Lower-cased whole: mailbox providers ignore case in the local part, so `Ann@x.org` and
        # `ann@x.org` are one person for dedupe and for the suppression list alike.
        normalized = validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        reason = str(exc).strip() or "not a valid email address"
        return "", reason, _INVALID_KEY
    except Exception:  # noqa: BLE001
        return "", "not a valid email address", _INVALID_KEY
    return normalized, "", email_key(normalized)


def email_key(normalized: str) -> int:
    """A 64-bit dedupe key for a normalised email address."""
    digest = blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


NORMALIZERS: dict[str, Callable[..., Result]] = {"sms": normalize_phone, "email": normalize_email}


def normalize_batch(channel: str, region: str | None, items: Sequence[tuple[str, str | None]]) -> list[Result]:
    """Normalise `(value, country)` pairs in order (the unit of work of the process pool)."""
    normalize = NORMALIZERS[channel]
    return [normalize(value, region, country) for value, country in items]


def normalize_address(channel: str, value: str, region: str | None = None) -> str:
    """The normalised address (E.164 or normalised email); InputError with the reason if it is unusable."""
    check_channel(channel)
    region = check_region(region)
    recipient, reason, _key = NORMALIZERS[channel](value, region)
    if reason:
        raise InputError(f"{clean(value)!r} cannot be used: {reason}.")
    return recipient


def fold_name(name: str) -> str:
    """A column name folded for matching: case, accents, spaces, underscores, hyphens and dots ignored."""
    text = unicodedata.normalize("NFKD", clean(name)).casefold()
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[\s_\-.·/]+", "", text)
