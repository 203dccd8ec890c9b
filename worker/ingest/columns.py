"""Finding the address columns (and the per-row country column) by header, with aliases.

A file may have several address columns (a CRM export's `Mobile` and `Phone`): every one found is
tried per row, in order: explicitly named ones in the order given, else by alias, mobile-like names
first (PHONE_ALIASES' order), then numbered variants (`Phone 2`, `email_2`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import InputError
from worker.ingest.normalize import fold_name

# In order of preference: for SMS a "mobile" column beats a generic "phone" one.
MOBILE_ALIASES = (
    "mobile", "mobilenumber", "mobilephone", "mobilephonenumber", "mobileno",
    "cell", "cellphone", "cellnumber", "cellphonenumber",
    "msisdn", "sms", "smsnumber",
    "gsm", "gsmnummer", "mobiel", "mobielnummer", "handy", "handynummer", "portable",
    "numerodeportable", "movil", "celular",
)
OTHER_PHONE_ALIASES = (
    "phone", "phonenumber", "phoneno",
    "telephone", "telephonenumber", "tel", "telno",
    "telefoon", "telefoonnummer", "telefon", "telefonnummer", "numerodetelephone", "telefono",
    "homephone", "homephonenumber", "workphone", "workphonenumber", "businessphone", "otherphone",
    "personalphone",
)
PHONE_ALIASES = MOBILE_ALIASES + OTHER_PHONE_ALIASES
EMAIL_ALIASES = (
    "email", "emailaddress", "mail", "emailadres", "emailadresse", "mailadres", "mailaddress",
    "courriel", "adressemail", "adresseemail", "correo", "correoelectronico",
    "personalemail", "workemail", "businessemail", "secondaryemail", "otheremail", "alternateemail",
    "additionalemail",
)
COUNTRY_ALIASES = ("country", "countrycode", "region", "countryiso", "countryisocode", "iso2")

ALIASES = {"sms": PHONE_ALIASES, "email": EMAIL_ALIASES}
WHAT = {"sms": "phone", "email": "email"}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are in a row: the address, the country, and the other columns kept as fields."""

    columns: tuple[str, ...]
    address: int  # the first address column
    country: int | None
    others: tuple[int, ...]  # every column but `address` (the other address columns included)
    addresses: tuple[int, ...] = ()  # every address column, in the order rows try them

    @property
    def address_column(self) -> str:
        return self.columns[self.address]

    @property
    def address_columns(self) -> tuple[str, ...]:
        return tuple(self.columns[i] for i in self.addresses or (self.address,))


def unique_columns(header: Sequence[str]) -> tuple[str, ...]:
    """Header cells trimmed, empty ones named `column_N`, repeated ones suffixed `_2`, `_3`…"""
    out: list[str] = []
    seen: set[str] = set()
    for index, cell in enumerate(header, start=1):
        name = cell.strip().lstrip("\ufeff").strip() or f"column_{index}"
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return tuple(out)


def describe(columns: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:20])
    if len(columns) > 20:
        shown += f" and {len(columns) - 20} more"
    return shown or "none"


def find_column(columns: Sequence[str], channel: str, explicit: str | None) -> int | None:
    """Index of the (first) address column, by explicit name or by alias; None if there is none."""
    found = find_columns(columns, channel, () if explicit is None else (explicit,))
    return found[0] if found else None


def _named(columns: Sequence[str], folded: Sequence[str], name: str) -> int | None:
    if name in columns:
        return list(columns).index(name)
    want = fold_name(name)
    return folded.index(want) if want in folded else None


def _numbered(name: str, aliases: Sequence[str]) -> bool:
    """`phone2`, `email3`: an alias followed by a number (also what `unique_columns` makes of repeats)."""
    stem = name.rstrip("0123456789")
    return stem != name and stem in aliases


def find_columns(columns: Sequence[str], channel: str, explicit: Sequence[str] = ()) -> tuple[int, ...]:
    """Indexes of the address columns in the order rows try them; () if there is none.

    With explicit names: those columns in that order (KeyError naming the first one missing);
    else every column named by an alias (PHONE_ALIASES' order: mobile-like first), then numbered ones.
    """
    folded = [fold_name(c) for c in columns]
    if explicit:
        out: list[int] = []
        for name in explicit:
            index = _named(columns, folded, name)
            if index is None:
                raise KeyError(name)
            if index not in out:
                out.append(index)
        return tuple(out)
    aliases = ALIASES[channel]
    out = []
    for alias in aliases:
        out.extend(i for i, name in enumerate(folded) if name == alias and i not in out)
    out.extend(i for i, name in enumerate(folded) if i not in out and _numbered(name, aliases))
    return tuple(out)


def find_country(columns: Sequence[str], skip: int | Sequence[int]) -> int | None:
    folded = [fold_name(c) for c in columns]
    skipped = (skip,) if isinstance(skip, int) else tuple(skip)
    for alias in COUNTRY_ALIASES:
        for index, name in enumerate(folded):
            if name == alias and index not in skipped:
                return index
    return None


def layout(columns: Sequence[str], channel: str, explicit: str | Sequence[str] | None) -> Layout:
    """The layout for these columns, or InputError naming the columns that were seen."""
    columns = tuple(columns)
    names = () if explicit is None else (explicit,) if isinstance(explicit, str) else tuple(explicit)
    try:
        addresses = find_columns(columns, channel, names)
    except KeyError as exc:
        raise InputError(f"There is no column named {exc.args[0]!r}; the columns are: {describe(columns)}.") \
            from None
    if not addresses:
        what = WHAT[channel]
        suggestion = "'phone' or 'mobile'" if channel == "sms" else "'email'"
        raise InputError(
            f"No {what} column found; the columns are: {describe(columns)}. "
            f"Name the {what} column {suggestion}, or choose it with --{what}-column."
        )
    address = addresses[0]
    country = find_country(columns, addresses) if channel == "sms" else None
    others = tuple(i for i in range(len(columns)) if i != address)
    return Layout(columns, address, country, others, addresses)
