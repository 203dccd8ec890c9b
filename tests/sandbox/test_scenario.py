"""Scenario files: defaults, every field parsed, and one clear ConfigError for anything wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import ConfigError
from worker.sandbox.scenario import (Credentials, Directory, Integrations, Scenario, Step,
                                     load_scenario, parse_scenario)

FULL = {
    "credentials": {"client_id": "id", "client_secret": "secret"},
    "integrations": {"email": False, "sms": True},
    "directories": [{"id": "dir_1", "name": "One", "users": 3}, {"id": "dir_2"}],
    "latency_ms": 5,
    "rate_limit_per_s": 100,
    "error_shape": "list",
    "error_http_status": "mapped",
    "rules": [
        {"channel": "sms", "match": {"suffix": "605"}, "steps": [{"error": 605}]},
        {"match": {"regex": "^retry"},
         "steps": [{"http": 503}, {"http": 429, "retry_after": 2}, {"ok": True}]},
        {"match": {"exact": "+447911123456"}, "steps": [{"delay_ms": 30000, "ok": True}]},
        {"match": {"exact": "x"}, "steps": [{"error": 602, "message": "m"}, {"garbage": True},
                                            {"drop": True}]},
    ],
}


def test_none_gives_the_documented_defaults() -> None:
    """load_scenario(None) is the spec's default scenario."""
    scenario = load_scenario(None)
    assert scenario == parse_scenario({})
    assert scenario.credentials == Credentials("sandbox", "sandbox")
    assert scenario.integrations == Integrations(email=True, sms=True)
    assert scenario.directories == (Directory("dir_12345", "Sample directory", 250),)
    assert (scenario.latency_ms, scenario.rate_limit_per_s, scenario.error_shape,
            scenario.error_http_status, scenario.rules) == (0, None, "scalar", 200, ())


def test_every_field_is_read(tmp_path: Path) -> None:
    """A file using every field loads into the matching dataclasses."""
    path = tmp_path / "scenario.json"
    path.write_text(__import__("json").dumps(FULL))
    scenario = load_scenario(path)
    assert scenario.credentials == Credentials("id", "secret")
    assert scenario.integrations == Integrations(email=False, sms=True)
    assert scenario.directories[1] == Directory("dir_2", "dir_2", 0)
    assert scenario.error_shape == "list" and scenario.error_http_status == "mapped"
    assert scenario.rules[1].steps[1] == Step("http", status=429, retry_after=2)
    assert scenario.rules[2].steps[0] == Step("ok", delay_ms=30000)
    assert [s.kind for s in scenario.rules[3].steps] == ["error", "garbage", "drop"]


def test_rules_match_by_channel_and_kind() -> None:
    """exact, suffix and regex (search) match the recipient; channel filters."""
    suffix, regex, exact, _ = parse_scenario(FULL).rules
    assert suffix.matches("sms", "+44605") and not suffix.matches("email", "a605")
    assert regex.matches("email", "retry@x") and not regex.matches("sms", "a-retry")
    assert exact.matches("email", "+447911123456") and not exact.matches("sms", "+4479111234567")


def test_last_step_repeats() -> None:
    """step_for past the end gives the last step."""
    rule = parse_scenario(FULL).rules[1]
    assert [rule.step_for(i).status for i in range(5)] == [503, 429, None, None, None]


@pytest.mark.parametrize("data, message", [
    ([], "scenario.json: the scenario must be a JSON object."),
    ({"colour": "red"}, "scenario.json: unknown key 'colour'."),
    ({"credentials": {"client_id": 1}}, "scenario.json: credentials.client_id: must be a non-empty string."),
    ({"integrations": {"sms": "yes"}}, "scenario.json: integrations.sms: must be true or false."),
    ({"integrations": {"fax": True}}, "scenario.json: integrations: unknown key 'fax'."),
    ({"directories": {}}, "scenario.json: directories: must be a list of directories."),
    ({"directories": [{"name": "x"}]}, "scenario.json: directories[0]: a directory needs an id."),
    ({"directories": [{"id": "dir-1"}]},
     "scenario.json: directories[0].id: must be a string of letters, digits and underscores."),
    ({"directories": [{"id": "d", "users": 1.5}]},
     "scenario.json: directories[0].users: must be a whole number from 0 to 299999."),
    ({"directories": [{"id": "d"}, {"id": "d"}]}, "scenario.json: directories: directory IDs must be unique."),
    ({"latency_ms": True}, "scenario.json: latency_ms: must be a number of at least 0."),
    ({"rate_limit_per_s": 0}, "scenario.json: rate_limit_per_s: must be null or a positive whole number."),
    ({"error_shape": "dict"}, 'scenario.json: error_shape: must be "scalar" or "list".'),
    ({"error_http_status": 500}, 'scenario.json: error_http_status: must be 200 or "mapped".'),
    ({"rules": [{"match": {}, "steps": [{"ok": True}]}]},
     "scenario.json: rules[0].match: a match needs exactly one of exact, suffix, regex."),
    ({"rules": [{"match": {"exact": "a", "suffix": "b"}, "steps": [{"ok": True}]}]},
     "scenario.json: rules[0].match: a match needs exactly one of exact, suffix, regex."),
    ({"rules": [{"match": {"prefix": "a"}, "steps": [{"ok": True}]}]},
     "scenario.json: rules[0].match: unknown key 'prefix'."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"ok": True}]}, {"match": {"regex": "("}, "steps": [{"ok": True}]}]},
     "scenario.json: rules[1].match.regex: not a valid regular expression"),
    ({"rules": [{"match": {"exact": "a"}, "steps": []}]},
     "scenario.json: rules[0].steps: must be a non-empty list of steps."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"ok": True, "drop": True}]}]},
     "scenario.json: rules[0].steps[0]: a step needs exactly one of ok, error, http, garbage, drop."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"delay_ms": 5}]}]},
     "scenario.json: rules[0].steps[0]: a step needs exactly one of ok, error, http, garbage, drop."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"sleep": 5}]}]},
     "scenario.json: rules[0].steps[0]: unknown key 'sleep'."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"ok": False}]}]},
     "scenario.json: rules[0].steps[0].ok: must be true."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"http": 99}]}]},
     "scenario.json: rules[0].steps[0].http: must be an HTTP status from 200 to 599."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"ok": True, "retry_after": 1}]}]},
     "scenario.json: rules[0].steps[0].retry_after: is only allowed with http."),
    ({"rules": [{"match": {"exact": "a"}, "steps": [{"error": "605"}]}]},
     "scenario.json: rules[0].steps[0].error: must be a positive whole number."),
    ({"rules": [{"channel": "fax", "match": {"exact": "a"}, "steps": [{"ok": True}]}]},
     'scenario.json: rules[0].channel: must be "sms" or "email".'),
])
def test_invalid_fields_are_named(data: Any, message: str) -> None:
    """Each kind of mistake raises ConfigError with one sentence naming the field."""
    with pytest.raises(ConfigError) as raised:
        parse_scenario(data, source="scenario.json")
    assert str(raised.value).startswith(message)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    """A missing file or invalid JSON is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        load_scenario(broken)


json_leaf = st.none() | st.booleans() | st.integers(-5, 1000) | st.floats(allow_nan=True) | \
    st.sampled_from(["sms", "email", "scalar", "list", "mapped", "(", "^a", "dir_1", ""])
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["id", "users", "match", "steps", "exact", "suffix", "regex", "ok", "error",
                     "http", "drop", "garbage", "delay_ms", "retry_after", "message", "channel",
                     "sms", "email", "client_id", "x"]), inner, max_size=4), max_leaves=12)
TOP_KEYS = ["credentials", "integrations", "directories", "latency_ms", "rate_limit_per_s",
            "error_shape", "error_http_status", "rules", "other"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(TOP_KEYS), json_value, max_size=4))
def test_any_json_is_a_scenario_or_a_config_error(data: dict) -> None:
    """parse_scenario never fails with anything but ConfigError."""
    try:
        assert isinstance(parse_scenario(data), Scenario)
    except ConfigError as exc:
        assert str(exc).startswith("scenario") and str(exc).endswith(".")
