"""Reads and strictly validates a sandbox scenario file (see the sandbox spec) into frozen dataclasses."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError

CHANNELS = ("sms", "email")
MATCH_KINDS = ("exact", "suffix", "regex")
STEP_KINDS = ("ok", "error", "http", "garbage", "drop")
STEP_KEYS = frozenset(STEP_KINDS) | {"delay_ms", "message", "retry_after"}
DIRECTORY_ID = re.compile(r"[A-Za-z0-9_]+")
MAX_USERS = 299_999  # generated phones +447911000001…+447911299999 are all valid UK mobiles


@dataclass(frozen=True)
class Credentials:
    client_id: str = "sandbox"
    client_secret: str = "sandbox"


@dataclass(frozen=True)
class Integrations:
    email: bool = True
    sms: bool = True


@dataclass(frozen=True)
class Directory:
    id: str
    name: str
    users: int


@dataclass(frozen=True)
class Step:
    """One scripted answer: `kind` is one of STEP_KINDS; the other fields belong to that kind."""

    kind: str
    delay_ms: float = 0
    code: int | None = None  # error
    message: str | None = None  # error
    status: int | None = None  # http
    retry_after: float | None = None  # http


@dataclass(frozen=True)
class Rule:
    match_kind: str
    value: str
    steps: tuple[Step, ...]
    channel: str | None = None
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, channel: str, recipient: str) -> bool:
        """Whether this rule applies to a send of `recipient` on `channel`."""
        if self.channel is not None and self.channel != channel:
            return False
        if self.match_kind == "exact":
            return recipient == self.value
        if self.match_kind == "suffix":
            return recipient.endswith(self.value)
        return self.pattern is not None and self.pattern.search(recipient) is not None

    def step_for(self, attempt: int) -> Step:
        """The step for the attempt-th (0-based) request of a recipient; the last step repeats."""
        return self.steps[min(attempt, len(self.steps) - 1)]


DEFAULT_DIRECTORIES = (Directory("dir_12345", "Sample directory", 250),)


@dataclass(frozen=True)
class Scenario:
    credentials: Credentials = Credentials()
    integrations: Integrations = Integrations()
    directories: tuple[Directory, ...] = DEFAULT_DIRECTORIES
    latency_ms: float = 0
    rate_limit_per_s: int | None = None
    error_shape: str = "scalar"  # "scalar" or "list"
    error_http_status: int | str = 200  # 200 or "mapped"
    rules: tuple[Rule, ...] = ()

    def directory(self, directory_id: str) -> Directory | None:
        """The configured directory with that ID, if any."""
        return next((d for d in self.directories if d.id == directory_id), None)


def load_scenario(path: str | Path | None) -> Scenario:
    """The scenario in a JSON file, or all defaults when `path` is None."""
    if path is None:
        return Scenario()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the scenario file ({exc.strerror}).") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the scenario file is not UTF-8 text ({exc.reason}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}).") from None
    return parse_scenario(data, source=str(path))


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """A Scenario from decoded JSON, or ConfigError naming the first bad field."""
    _require(isinstance(data, dict), source, "the scenario must be a JSON object")
    _reject_unknown(data, _TOP_LEVEL, source)
    values = {key: parse(data[key], f"{source}: {key}") for key, parse in _TOP_LEVEL.items()
              if key in data}
    return Scenario(**values)


# --- field parsers: each takes (value, where) and returns the typed value or raises ConfigError ---

def _parse_credentials(value: Any, where: str) -> Credentials:
    _require_object(value, where)
    _reject_unknown(value, ("client_id", "client_secret"), where)
    for key in value:
        _require(isinstance(value[key], str) and value[key] != "", f"{where}.{key}",
                 "must be a non-empty string")
    return Credentials(**value)


def _parse_integrations(value: Any, where: str) -> Integrations:
    _require_object(value, where)
    _reject_unknown(value, CHANNELS, where)
    for key in value:
        _require(isinstance(value[key], bool), f"{where}.{key}", "must be true or false")
    return Integrations(**value)


def _parse_directories(value: Any, where: str) -> tuple[Directory, ...]:
    _require(isinstance(value, list), where, "must be a list of directories")
    directories = tuple(_parse_directory(item, f"{where}[{i}]") for i, item in enumerate(value))
    ids = [d.id for d in directories]
    _require(len(set(ids)) == len(ids), where, "directory IDs must be unique")
    return directories


def _parse_directory(value: Any, where: str) -> Directory:
    _require_object(value, where)
    _reject_unknown(value, ("id", "name", "users"), where)
    _require("id" in value, where, "a directory needs an id")
    directory_id = value["id"]
    _require(isinstance(directory_id, str) and DIRECTORY_ID.fullmatch(directory_id) is not None,
             f"{where}.id", "must be a string of letters, digits and underscores")
    name = value.get("name", directory_id)
    _require(isinstance(name, str), f"{where}.name", "must be a string")
    users = value.get("users", 0)
    _require(_is_int(users) and 0 <= users <= MAX_USERS, f"{where}.users",
             f"must be a whole number from 0 to {MAX_USERS}")
    return Directory(directory_id, name, users)


def _parse_latency(value: Any, where: str) -> float:
    return _non_negative(value, where)


def _parse_rate_limit(value: Any, where: str) -> int | None:
    _require(value is None or (_is_int(value) and value > 0), where,
             "must be null or a positive whole number")
    return value


def _parse_error_shape(value: Any, where: str) -> str:
    _require(value in ("scalar", "list") and isinstance(value, str), where,
             'must be "scalar" or "list"')
    return value


def _parse_error_http_status(value: Any, where: str) -> int | str:
    _require((_is_int(value) and value == 200) or value == "mapped", where,
             'must be 200 or "mapped"')
    return value


def _parse_rules(value: Any, where: str) -> tuple[Rule, ...]:
    _require(isinstance(value, list), where, "must be a list of rules")
    return tuple(_parse_rule(item, f"{where}[{i}]") for i, item in enumerate(value))


def _parse_rule(value: Any, where: str) -> Rule:
    _require_object(value, where)
    _reject_unknown(value, ("channel", "match", "steps"), where)
    channel = value.get("channel")
    _require(channel is None or channel in CHANNELS and isinstance(channel, str),
             f"{where}.channel", 'must be "sms" or "email"')
    match_kind, match_value, pattern = _parse_match(value.get("match"), f"{where}.match")
    steps = value.get("steps")
    _require(isinstance(steps, list) and len(steps) > 0, f"{where}.steps",
             "must be a non-empty list of steps")
    parsed = tuple(_parse_step(step, f"{where}.steps[{i}]") for i, step in enumerate(steps))
    return Rule(match_kind, match_value, parsed, channel, pattern)


def _parse_match(value: Any, where: str) -> tuple[str, str, re.Pattern[str] | None]:
    _require_object(value, where)
    _reject_unknown(value, MATCH_KINDS, where)
    _require(len(value) == 1, where, "a match needs exactly one of exact, suffix, regex")
    kind, text = next(iter(value.items()))
    _require(isinstance(text, str), f"{where}.{kind}", "must be a string")
    return kind, text, _compile(text, f"{where}.{kind}") if kind == "regex" else None


def _compile(text: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(f"{where}: not a valid regular expression ({exc}).") from None


def _parse_step(value: Any, where: str) -> Step:
    _require_object(value, where)
    _reject_unknown(value, STEP_KEYS, where)
    kinds = [kind for kind in STEP_KINDS if kind in value]
    _require(len(kinds) == 1, where, "a step needs exactly one of ok, error, http, garbage, drop")
    kind = kinds[0]
    delay_ms = _non_negative(value.get("delay_ms", 0), f"{where}.delay_ms")
    _require("message" not in value or kind == "error", f"{where}.message",
             "is only allowed with error")
    _require("retry_after" not in value or kind == "http", f"{where}.retry_after",
             "is only allowed with http")
    return _STEP_PARSERS[kind](value, where, delay_ms)


def _flag_step(kind: str) -> Callable[[dict[str, Any], str, float], Step]:
    def parse(value: dict[str, Any], where: str, delay_ms: float) -> Step:
        _require(value[kind] is True, f"{where}.{kind}", "must be true")
        return Step(kind, delay_ms)
    return parse


def _error_step(value: dict[str, Any], where: str, delay_ms: float) -> Step:
    code = value["error"]
    _require(_is_int(code) and code > 0, f"{where}.error", "must be a positive whole number")
    message = value.get("message")
    _require(message is None or isinstance(message, str), f"{where}.message", "must be a string")
    return Step("error", delay_ms, code=code, message=message)


def _http_step(value: dict[str, Any], where: str, delay_ms: float) -> Step:
    status = value["http"]
    _require(_is_int(status) and 200 <= status <= 599, f"{where}.http",
             "must be an HTTP status from 200 to 599")
    retry_after = value.get("retry_after")
    if retry_after is not None:
        retry_after = _non_negative(retry_after, f"{where}.retry_after")
    return Step("http", delay_ms, status=status, retry_after=retry_after)


_STEP_PARSERS: dict[str, Callable[[dict[str, Any], str, float], Step]] = {
    "ok": _flag_step("ok"),
    "garbage": _flag_step("garbage"),
    "drop": _flag_step("drop"),
    "error": _error_step,
    "http": _http_step,
}

_TOP_LEVEL: dict[str, Callable[[Any, str], Any]] = {
    "credentials": _parse_credentials,
    "integrations": _parse_integrations,
    "directories": _parse_directories,
    "latency_ms": _parse_latency,
    "rate_limit_per_s": _parse_rate_limit,
    "error_shape": _parse_error_shape,
    "error_http_status": _parse_error_http_status,
    "rules": _parse_rules,
}


# --- small checks ---

def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {problem}.")


def _require_object(value: Any, where: str) -> None:
    _require(isinstance(value, dict), where, "must be a JSON object")


def _reject_unknown(value: dict[str, Any], known: Any, where: str) -> None:
    unknown = sorted(str(key) for key in value if key not in known)
    _require(not unknown, where, f"unknown key {unknown[0]!r}" if unknown else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _non_negative(value: Any, where: str) -> float:
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    _require(number_ok and 0 <= value < float("inf"), where, "must be a number of at least 0")
    return value
