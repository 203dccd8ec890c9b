"""Retry policy as configuration: which class each error code gets, how often and how late to retry.

A TOML file (`--policy FILE` or DISPATCH_POLICY) overrides the documented defaults:

    [retry]
    max_attempts = 3        # attempts in all, the first one included
    base_delay = 0.1        # seconds; exponential backoff with full jitter
    max_delay = 1.0
    [codes]
    602 = "temporary"       # account, run, invalid, blacklisted, temporary, failed
    unknown = "failed"      # the class of codes the documentation does not list
    [http]                  # answers without the API's envelope, by HTTP status (400-599)
    502 = "temporary"       # at-least-once on purpose: temporary, uncertain, failed, run

Without an [http] entry, 429/503/408 are temporary and 500/502/504 uncertain (a server behind the gateway
may have acted on the request, so it is never resent automatically); see worker.catalogue.HTTP_STATUS_CLASS.
"""
from __future__ import annotations

import json
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from worker.catalogue import (CATALOGUE, CAMPAIGN_301_MARKER, HTTP_STATUS_CLASS, OTHER_5XX_CLASS,
                              OTHER_STATUS_CLASS, UNKNOWN_CODE_CLASS, ErrorClass, default_class,
                              http_status_class)
from worker.errors import APIError, ConfigError, CoupontoolsError, HTTPStatusError

OVERRIDABLE = frozenset(ErrorClass) - {ErrorClass.UNCERTAIN}
# Classes an [http] entry may choose: an envelope-less answer names no recipient or account problem.
HTTP_OVERRIDABLE = frozenset({ErrorClass.TEMPORARY, ErrorClass.UNCERTAIN, ErrorClass.FAILED, ErrorClass.RUN})
HTTP_STATUSES = range(400, 600)  # the statuses an [http] entry may name


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 30.0
    max_delay: float = 900.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds before attempt `attempt + 1`: full jitter, never earlier than Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)


@dataclass(frozen=True)
class Policy:
    retry: RetryPolicy = RetryPolicy()
    codes: dict[int, ErrorClass] = field(default_factory=dict)
    unknown: ErrorClass = UNKNOWN_CODE_CLASS
    http: dict[int, ErrorClass] = field(default_factory=dict)  # HTTP status → class, envelope-less answers

    def classify(self, error: CoupontoolsError) -> ErrorClass:
        """The class that decides what happens to a recipient after `error`."""
        if isinstance(error, HTTPStatusError):
            return self.http.get(error.http_status, error.error_class)  # type: ignore[arg-type]
        if not isinstance(error, APIError):
            return error.error_class
        if error.code == 301 and CAMPAIGN_301_MARKER in error.message.lower():
            return ErrorClass.RUN  # a campaign problem stays a run problem whatever 301 is mapped to
        if error.code in self.codes:
            return self.codes[error.code]
        if error.code in CATALOGUE:
            return default_class(error.code, error.message)
        return self.unknown

    def table(self) -> list[tuple[str, str, str]]:
        """(code, meaning, class) rows of the effective table, for `dispatch policy`."""
        rows = []
        for code, info in sorted(CATALOGUE.items()):
            cls = self.codes.get(code, info.error_class)
            rows.append((str(code), info.meaning, str(cls)))
            if code == 301:
                rows.append(("301", "…'Invalid character in parameter: campaign'", str(ErrorClass.RUN)))
        rows.extend((str(code), "(not documented)", str(cls))
                    for code, cls in sorted(self.codes.items()) if code not in CATALOGUE)
        rows.append(("other codes", "not documented", str(self.unknown)))
        for status in sorted(set(HTTP_STATUS_CLASS) | set(self.http)):
            default, reason = HTTP_STATUS_CLASS.get(status, (http_status_class(status), "without the API's envelope"))
            cls = self.http.get(status, default)
            rows.append((f"HTTP {status}", reason + (" (policy file)" if status in self.http else ""), str(cls)))
        rows.append(("HTTP other 5xx", "without the API's envelope: may have been acted on", str(OTHER_5XX_CLASS)))
        rows.append(("HTTP other 4xx", "without the API's envelope: wrong API URL or setup",
                     str(OTHER_STATUS_CLASS)))
        rows.append(("connect refused, connect timeout", "surely not sent", str(ErrorClass.TEMPORARY)))
        rows.append(("read timeout, dropped connection, garbage 2xx", "maybe sent", str(ErrorClass.UNCERTAIN)))
        return rows


def policy_to_json(policy: Policy) -> str:
    """The policy as JSON, stored with a run so every worker applies the policy it was sent with."""
    return json.dumps({"retry": vars(policy.retry), "codes": {str(k): str(v) for k, v in policy.codes.items()},
                       "unknown": str(policy.unknown), "http": {str(k): str(v) for k, v in policy.http.items()}})


def policy_from_json(text: str) -> Policy:
    """The policy a run was sent with; JSON stored before [http] existed has no "http" key."""
    data = json.loads(text)
    return Policy(retry=RetryPolicy(**data["retry"]),
                  codes={int(k): ErrorClass(v) for k, v in data["codes"].items()},
                  unknown=ErrorClass(data["unknown"]),
                  http={int(k): ErrorClass(v) for k, v in data.get("http", {}).items()})


def load_policy(path: Path | str | None) -> Policy:
    """The policy in a TOML file, or the defaults when no file is given."""
    if path is None:
        return Policy()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the policy file {path}: {exc.strerror}.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The policy file {path} is not valid TOML: {exc}.") from None
    return parse_policy(data, str(path))


def parse_policy(data: dict, origin: str = "policy") -> Policy:
    unknown_sections = set(data) - {"retry", "codes", "http"}
    if unknown_sections:
        raise ConfigError(f"{origin}: unknown section [{sorted(map(str, unknown_sections))[0]}].")
    retry = _parse_retry(data.get("retry", {}), origin)
    codes, unknown = _parse_codes(data.get("codes", {}), origin)
    http = _parse_http(data.get("http", {}), origin)
    return Policy(retry=retry, codes=codes, unknown=unknown, http=http)


def _parse_retry(section: object, origin: str) -> RetryPolicy:
    if not isinstance(section, dict):
        raise ConfigError(f"{origin}: [retry] must be a table.")
    known = {"max_attempts": int, "base_delay": float, "max_delay": float}
    values = {}
    for key, value in section.items():
        kind = known.get(key)
        if kind is None:
            raise ConfigError(f"{origin}: [retry] has an unknown key {key!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or \
                value < 0 or (kind is int and (not isinstance(value, int) or value < 1)):
            raise ConfigError(f"{origin}: retry.{key} must be a positive {kind.__name__}, not {value!r}.")
        values[key] = kind(value)
    return RetryPolicy(**values)


def _finite(value: int | float) -> bool:
    """False for nan, inf (TOML allows both) and numbers too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _parse_codes(section: object, origin: str) -> tuple[dict[int, ErrorClass], ErrorClass]:
    if not isinstance(section, dict):
        raise ConfigError(f"{origin}: [codes] must be a table.")
    codes: dict[int, ErrorClass] = {}
    unknown = UNKNOWN_CODE_CLASS
    for key, value in section.items():
        cls = _error_class(value, f"{origin}: codes.{key}")
        if key == "unknown":
            unknown = cls
            continue
        try:
            codes[int(key)] = cls
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: codes.{key} is not an error code (a number, or 'unknown').") from None
    return codes, unknown


def _parse_http(section: object, origin: str) -> dict[int, ErrorClass]:
    if not isinstance(section, dict):
        raise ConfigError(f"{origin}: [http] must be a table.")
    http: dict[int, ErrorClass] = {}
    for key, value in section.items():
        status = _http_status(key)
        if status is None:
            raise ConfigError(f"{origin}: http.{key} is not an HTTP status from 400 to 599.")
        http[status] = _error_class(value, f"{origin}: http.{key}", HTTP_OVERRIDABLE)
    return http


def _http_status(key: object) -> int | None:
    """The status a [http] key names (`"502"`, or 502 from Python), or None when it names none."""
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool) and key in HTTP_STATUSES:
        return key
    return None


def _error_class(value: object, where: str, allowed: frozenset[ErrorClass] = OVERRIDABLE) -> ErrorClass:
    if isinstance(value, str) and value in allowed:
        return ErrorClass(value)
    choices = ", ".join(sorted(allowed))
    raise ConfigError(f"{where} must be one of {choices}, not {value!r}.")
