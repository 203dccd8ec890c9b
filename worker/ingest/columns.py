"""Finding the address column (and the per-row country column) by header, with aliases."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import InputError
from worker.ingest.normalize import fold_name

# In order of preference: for SMS a "mobile" column beats a generic "phone" one.
PHONE_ALIASES = (
    "mobile", "mobilenumber", "mobilephone", "mobilephonenumber", "mobileno",
    "cell", "cellphone", "cellnumber", "cellphonenumber",
    "msisdn", "sms", "smsnumber",
    "phone", "phonenumber", "phoneno",
    "telephone", "telephonenumber", "tel", "telno",
    "gsm", "gsmnummer", "mobiel", "mobielnummer", "telefoon", "telefoonnummer",
    "handy", "handynummer", "telefon", "telefonnummer", "portable", "numerodetelephone",
)
EMAIL_ALIASES = (
    "email", "emailaddress", "mail", "emailadres", "emailadresse", "mailadres", "mailaddress",
    "courriel", "adressemail", "adresseemail", "correo", "correoelectronico",
)
COUNTRY_ALIASES = ("country", "countrycode", "region", "countryiso", "countryisocode", "iso2")

ALIASES = {"sms": PHONE_ALIASES, "email": EMAIL_ALIASES}
WHAT = {"sms": "phone", "email": "email"}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are in a row: the address, the country, and the other columns kept as fields."""

    columns: tuple[str, ...]
    address: int
    country: int | None
    others: tuple[int, ...]

    @property
    def address_column(self) -> str:
        return self.columns[self.address]


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
    """Index of the address column, by explicit name or by alias; None if there is none."""
    folded = [fold_name(c) for c in columns]
    if explicit is not None:
        want = fold_name(explicit)
        if explicit in columns:
            return list(columns).index(explicit)
        return folded.index(want) if want in folded else None
    for alias in ALIASES[channel]:
        if alias in folded:
            return folded.index(alias)
    return None


def find_country(columns: Sequence[str], skip: int) -> int | None:
    folded = [fold_name(c) for c in columns]
    for alias in COUNTRY_ALIASES:
        for index, name in enumerate(folded):
            if name == alias and index != skip:
                return index
    return None


def layout(columns: Sequence[str], channel: str, explicit: str | None) -> Layout:
    """The layout for these columns, or InputError naming the columns that were seen."""
    columns = tuple(columns)
    address = find_column(columns, channel, explicit)
    if address is None:
        what = WHAT[channel]
        if explicit is not None:
            raise InputError(f"There is no column named {explicit!r}; the columns are: {describe(columns)}.")
        suggestion = "'phone' or 'mobile'" if channel == "sms" else "'email'"
        raise InputError(
            f"No {what} column found; the columns are: {describe(columns)}. "
            f"Name the {what} column {suggestion}, or choose it with --{what}-column."
        )
    country = find_country(columns, address) if channel == "sms" else None
    others = tuple(i for i in range(len(columns)) if i != address)
    return Layout(columns, address, country, others)
