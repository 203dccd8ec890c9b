"""One address at a time: phone numbers to E.164, email addresses to their normalised form.

Everything here is pure and picklable by reference, so the process pool can run `normalize_batch`.
A result is `(recipient, reason, key)`: `recipient` is the normalised address ('' when invalid),
`reason` says why it is invalid ('' when valid) and `key` is a 64-bit int used for dedupe
(the E.164 digits for a phone, 8 bytes of blake2b for an email).

For SMS a number must be able to take a text: landlines (where the numbering plan tells them from
mobiles), premium-rate, toll-free, shared-cost, UAN, voicemail and pager numbers are refused, and so is a
number with an extension (`allow_landlines` lifts the landline rule only). For email, a non-ASCII local
part is refused unless `allow_smtputf8` (most are a word processor's curly quote); internationalised
domains are kept in their ASCII (punycode) form, which is what is sent.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from hashlib import blake2b

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, ValidationResult

from worker.errors import InputError

CHANNELS = ("sms", "email")

Result = tuple[str, str, int]
_INVALID_KEY = 0

# Characters that surround addresses in exports but are never part of them.
_JUNK = " \t\r\n\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
        "\u2028\u2029\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff\u200e\u200f"
_DROP_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u00ad\u202a\u202b"
                                       "\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_LETTERS = re.compile(r"[^\W\d_]")  # any letter, in any script
_PLAIN_PHONE = re.compile(r"[0-9 +()\-./]+")  # the usual case: nothing to look at twice
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
# An extension written after the number ("ext. 12", "x12", "#12", ";ext=12"); only looked for in text
# that is not a plain number already.
_EXTENSION = re.compile(r"[\s,;]*(?:e?xt(?:ension|n)?\.?|x\.?|#|;?ext=)\s*:?\s*[0-9]{1,7}#?$", re.IGNORECASE)
EXTENSION_REASON = "has an extension: an SMS cannot reach one"
# Number types that cannot receive a text. FIXED_LINE is only returned where the plan tells landlines
# from mobiles (elsewhere it is FIXED_LINE_OR_MOBILE, which passes, as do MOBILE, VOIP and PERSONAL_NUMBER).
LANDLINE_REASON = "a landline cannot receive SMS"
NOT_SMS_CAPABLE = {
    PhoneNumberType.FIXED_LINE: LANDLINE_REASON,
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number cannot receive SMS",
    PhoneNumberType.TOLL_FREE: "a toll-free number cannot receive SMS",
    PhoneNumberType.SHARED_COST: "a shared-cost number cannot receive SMS",
    PhoneNumberType.UAN: "a UAN (universal access number) cannot receive SMS",
    PhoneNumberType.VOICEMAIL: "a voicemail access number cannot receive SMS",
    PhoneNumberType.PAGER: "a pager number cannot receive SMS",
}
_UNKNOWN = PhoneNumberType.UNKNOWN
_number_type = phonenumbers.number_type
_E164 = PhoneNumberFormat.E164
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


def normalize_phone(value: object, region: str | None = None, country: str | None = None,
                    allow_landlines: bool = False) -> Result:
    """A phone number as `(E.164, '', key)`, or `('', reason, 0)` when it cannot be used for SMS.

    `region` is the default region (already checked); `country` is the row's own country cell, which
    overrides it when not empty. Numbers that cannot receive a text end with a reason saying so
    (`allow_landlines`: fixed lines pass, for providers that read texts aloud).
    """
    text = clean(value)
    if not text:
        return "", "no phone number", _INVALID_KEY
    if len(text) > 64:
        return "", "not a phone number (too long)", _INVALID_KEY
    if _PLAIN_PHONE.fullmatch(text) is None:
        text = text.translate(_DROP_INVISIBLE)  # zero-width spaces, BOMs, soft hyphens inside the number
        if _SCIENTIFIC.fullmatch(text):
            return "", "not a phone number (a spreadsheet turned it into scientific notation)", _INVALID_KEY
        if _LETTERS.search(text):
            found = _EXTENSION.search(text)
            if found is None or _LETTERS.search(text, 0, found.start()) or normalize_phone(
                    text[:found.start()], region, country, True)[1]:
                return "", "not a phone number (contains letters)", _INVALID_KEY
            return "", EXTENSION_REASON, _INVALID_KEY  # a whole number, then "ext. 12"
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
        # number_type is UNKNOWN exactly when is_valid_number is False (both look the number up in the
        # metadata of region_code_for_number): one lookup gives validity and type.
        kind = _number_type(number)
        if kind == _UNKNOWN:
            name = _region_name(number)
            possible = phonenumbers.is_possible_number_with_reason(number)
            if possible == ValidationResult.TOO_SHORT:
                return "", f"not a valid number for {name} (too short)", _INVALID_KEY
            if possible == ValidationResult.TOO_LONG:
                return "", f"not a valid number for {name} (too long)", _INVALID_KEY
            if possible == ValidationResult.INVALID_COUNTRY_CODE:
                return "", f"unknown country code +{number.country_code}", _INVALID_KEY
            return "", f"not a valid number for {name}", _INVALID_KEY
        if number.extension:
            return "", EXTENSION_REASON, _INVALID_KEY
        if kind in NOT_SMS_CAPABLE and not (allow_landlines and kind == PhoneNumberType.FIXED_LINE):
            return "", NOT_SMS_CAPABLE[kind], _INVALID_KEY
        e164 = phonenumbers.format_number(number, _E164)
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


# Characters a word processor puts in place of the ASCII ones people typed ("smart quotes", dashes).
_PASTED = {
    "\u2018": "a curly apostrophe", "\u2019": "a curly apostrophe", "\u201a": "a curly apostrophe",
    "\u201b": "a curly apostrophe", "\u2032": "a prime sign",
    "\u201c": "a curly quote", "\u201d": "a curly quote", "\u201e": "a curly quote", "\u201f": "a curly quote",
    "\u00ab": "a guillemet", "\u00bb": "a guillemet",
    "\u2010": "a Unicode hyphen", "\u2011": "a non-breaking hyphen", "\u2012": "a figure dash",
    "\u2013": "an en dash", "\u2014": "an em dash", "\u2212": "a minus sign",
    "\u2026": "an ellipsis", "\u00a0": "a non-breaking space",
}
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u00ad")


def _non_ascii_local_reason(local: str) -> str:
    """Why a local part with a non-ASCII character is refused, naming the (first) character."""
    ch = next(c for c in local if not c.isascii())
    if ch in _PASTED:
        return f"{ch} is {_PASTED[ch]}: probably pasted from a word processor"
    if ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
        name = unicodedata.name(ch, "").lower() or "an invisible character"
        return f"U+{ord(ch):04X} ({name}) is an invisible character: probably pasted from a word processor"
    return f"{ch} is not an ASCII character: most mail servers refuse it before the @-sign"


def normalize_email(value: object, region: str | None = None, country: str | None = None,
                    allow_smtputf8: bool = False) -> Result:
    """An email address as `(normalised, '', key)`, or `('', reason, 0)` when it cannot be used.

    The domain is kept in its ASCII (punycode) form. A non-ASCII local part is refused with a reason
    naming the character unless `allow_smtputf8`.
    """
    text = clean(value)
    if not text:
        return "", "no email address", _INVALID_KEY
    if text[:7].lower() == "mailto:":
        text = text[7:].strip(_JUNK)
    if len(text) > 512:
        return "", "not an email address (too long)", _INVALID_KEY
    if not allow_smtputf8 and not text.isascii():
        at = text.rfind("@")
        if at > 0 and not text[:at].isascii():
            return "", _non_ascii_local_reason(text[:at]), _INVALID_KEY
    try:
        checked = validate_email(text, check_deliverability=False)
        # Lower-cased whole: mailbox providers ignore case in the local part, so `Ann@x.org` and
        # `ann@x.org` are one person for dedupe and for the suppression list alike.
        normalized = (checked.ascii_email or f"{checked.local_part}@{checked.ascii_domain}").lower()
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

# The rules beyond the address's own form, as one picklable value for the process pool.
Rules = tuple[bool, bool]  # (allow_landlines, allow_smtputf8)
STRICT: Rules = (False, False)
LENIENT: Rules = (True, True)


def normalizer(channel: str, rules: Rules = STRICT) -> Callable[..., Result]:
    """The channel's normaliser with these rules: `f(value, region, country) -> Result`."""
    allow_landlines, allow_smtputf8 = rules
    if channel == "sms":
        if not allow_landlines:
            return normalize_phone
        return lambda value, region=None, country=None: normalize_phone(value, region, country, True)
    if not allow_smtputf8:
        return normalize_email
    return lambda value, region=None, country=None: normalize_email(value, region, country, True)


# A row with several address columns gets a `Choice`: `(recipient, reason, key, index)` where index is
# the position of the value used (the first usable one; else the first non-empty one tried, or -1 when
# every value is empty). When several non-empty values fail, `reason` is a tuple of (index, reason)
# pairs, turned into words with the column names by the caller.
Choice = tuple[str, "str | tuple[tuple[int, str], ...]", int, int]


def first_usable(normalize: Callable[..., Result], values: Sequence[str], region: str | None,
                 country: str | None) -> Choice:
    """The first of a row's address values that can be used, in order (see `Choice`)."""
    failures: list[tuple[int, str]] = []
    for index, value in enumerate(values):
        if not value:
            continue
        recipient, reason, key = normalize(value, region, country)
        if not reason:
            return recipient, "", key, index
        failures.append((index, reason))
    if not failures:
        return "", normalize("", region, country)[1], _INVALID_KEY, -1
    if len(failures) == 1:
        index, reason = failures[0]
        return "", reason, _INVALID_KEY, index
    return "", tuple(failures), _INVALID_KEY, failures[0][0]


def normalize_batch(channel: str, region: str | None, items: Sequence[tuple], rules: Rules = STRICT) -> list:
    """Normalise `(value, country)` pairs in order (the unit of work of the process pool).

    A value that is a tuple (a row's values of several address columns) gets a `Choice`, a string a
    `Result`.
    """
    normalize = normalizer(channel, rules)
    return [normalize(value, region, country) if value.__class__ is str
            else first_usable(normalize, value, region, country) for value, country in items]


def normalize_address(channel: str, value: str, region: str | None = None, *,
                      allow_landlines: bool = True, allow_smtputf8: bool = True) -> str:
    """The normalised address (E.164 or normalised email); InputError with the reason if it is unusable.

    Lenient by default (a landline or a non-ASCII local part is still an address, e.g. to suppress).
    """
    check_channel(channel)
    region = check_region(region)
    recipient, reason, _key = normalizer(channel, (allow_landlines, allow_smtputf8))(value, region)
    if reason:
        raise InputError(f"{clean(value)!r} cannot be used: {reason}.")
    return recipient


def fold_name(name: str) -> str:
    """A column name folded for matching: case, accents, spaces, underscores, hyphens and dots ignored."""
    text = unicodedata.normalize("NFKD", clean(name)).casefold()
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[\s_\-.·/]+", "", text)
