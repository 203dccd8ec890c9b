"""The error catalogue against the spec's table, the HTTP-status classes of envelope-less answers, policy
overrides and their validation, and the class → status table of worker.outcomes.after_error."""
from __future__ import annotations

import datetime
import math
import random
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.catalogue import (CAMPAIGN_301_MESSAGE, CATALOGUE, HTTP_STATUS_CLASS, ErrorClass, default_class,
                              default_message, http_status_class)
from worker.client import read_answer
from worker.errors import (APIError, ConfigError, HTTPStatusError, MaybeSentError, NotSentError,
                           ProtocolError)
from worker.outcomes import after_error
from worker.policy import (HTTP_OVERRIDABLE, Policy, RetryPolicy, load_policy, parse_policy, policy_from_json,
                           policy_to_json)
from worker.statuses import Status

E = ErrorClass
# The spec's table (coupontools-api.md, "Error codes"), written out by hand: code → default class.
SPEC_TABLE = {
    1000: E.ACCOUNT,      # invalid client ID or secret
    101: E.ACCOUNT,       # account has expired
    103: E.ACCOUNT,       # no SMS integration set up
    104: E.ACCOUNT,       # no email integration set up
    200: E.RUN,           # missing parameter
    301: E.INVALID,       # "Phone number not valid" (the campaign 301 is SPEC_301_CAMPAIGN)
    305: E.INVALID,       # email address is not valid
    502: E.RUN,           # directory (or campaign) ID not found
    507: E.RUN,           # directory ID not found (directory endpoints)
    602: E.TEMPORARY,     # SMS not sent
    604: E.TEMPORARY,     # email not sent
    605: E.BLACKLISTED,   # blacklist or opt-out list
}
SPEC_301_CAMPAIGN = E.RUN
# Issue 9, written out by hand: HTTP status of an answer without the envelope → default class.
SPEC_HTTP = {
    408: E.TEMPORARY,     # request timeout: nothing was done
    429: E.TEMPORARY,     # rate limited
    503: E.TEMPORARY,     # unavailable
    500: E.UNCERTAIN,     # internal error: may have acted first
    502: E.UNCERTAIN,     # bad gateway: a server behind it may have acted
    504: E.UNCERTAIN,     # gateway timeout: a server behind it may still act
}
SPEC_UNKNOWN = E.FAILED
STATUS_OF = {E.ACCOUNT: Status.ABORTED, E.RUN: Status.ABORTED, E.INVALID: Status.INVALID,
             E.BLACKLISTED: Status.BLACKLISTED, E.TEMPORARY: Status.RETRY_WAIT, E.FAILED: Status.FAILED,
             E.UNCERTAIN: Status.UNCERTAIN}

# Every documented case as (label, code, message): the API's default text, 301 twice.
DOCUMENTED = [(str(code), code, default_message(code, "+447911000001")) for code in SPEC_TABLE] + [
    ("301-campaign", 301, CAMPAIGN_301_MESSAGE)]
EXPECTED = {**{str(code): cls for code, cls in SPEC_TABLE.items()}, "301-campaign": SPEC_301_CAMPAIGN}


def api_error(code: int, message: str = "", **kwargs) -> APIError:
    return APIError(code, message, **kwargs)


def http_error(status: int) -> HTTPStatusError:
    """The error the client raises for a bare answer with `status`."""
    with pytest.raises(HTTPStatusError) as caught:
        read_answer(status, {}, b"<html>gateway</html>")
    return caught.value


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestCatalogueMatchesSpec:
    def test_documented_codes_are_exactly_the_spec_table(self):
        """The catalogue holds every code of the spec's table and no other."""
        assert set(CATALOGUE) == set(SPEC_TABLE)

    @pytest.mark.parametrize("code", sorted(SPEC_TABLE))
    def test_each_code_has_the_spec_default_class(self, code):
        """Each documented code carries exactly one class, the spec's default."""
        info = CATALOGUE[code]
        assert info.code == code and isinstance(info.error_class, ErrorClass)
        assert info.error_class is SPEC_TABLE[code]
        assert default_class(code, info.message) is SPEC_TABLE[code]

    @pytest.mark.parametrize("label, code, message", DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
    def test_default_policy_classifies_like_the_spec(self, label, code, message):
        """Policy() gives each documented error, with the API's own text, the spec's class."""
        assert Policy().classify(api_error(code, message)) is EXPECTED[label]
        assert api_error(code, message).error_class is EXPECTED[label]

    def test_policy_table_lists_every_documented_code(self):
        """`dispatch policy` shows each documented code with its class, and 301 twice."""
        rows = Policy().table()
        codes = [r[0] for r in rows if r[0].isdigit()]
        assert sorted(set(codes)) == sorted(str(c) for c in SPEC_TABLE)
        assert codes.count("301") == 2
        assert {(r[0], r[2]) for r in rows if r[0] == "301"} == {("301", "invalid"), ("301", "run")}

    def test_default_message_names_the_recipient(self):
        """6xx default texts name the recipient the way the API does."""
        assert "'+447911000001'" in default_message(605, "+447911000001")
        assert "blacklist" in default_message(605)


class Test301:
    @pytest.mark.parametrize("message", [CAMPAIGN_301_MESSAGE, "Invalid character in parameter: campaign",
                                         "HTTP/1.0 422 Unprocessable entity. Invalid character in PARAMETER: "
                                         "Campaign"])
    def test_campaign_301_stops_the_run(self, message):
        """A 301 about the campaign parameter is a run error, in any letter case."""
        assert default_class(301, message) is E.RUN
        assert Policy().classify(api_error(301, message)) is E.RUN

    @pytest.mark.parametrize("message", ["HTTP/1.0 422 Unprocessable entity. Phone number not valid",
                                         "Phone number not valid", "", "Invalid character in parameter: phone"])
    def test_other_301_is_an_invalid_recipient(self, message):
        """Any other 301 (the phone number) is this recipient's problem."""
        assert default_class(301, message) is E.INVALID
        assert Policy().classify(api_error(301, message)) is E.INVALID

    def test_campaign_301_stays_run_whatever_301_is_mapped_to(self, tmp_path):
        """Overriding 301 changes the phone meaning only; the campaign 301 still stops the run."""
        policy = load_policy(write_policy(tmp_path, '[codes]\n301 = "failed"\n'))
        assert policy.classify(api_error(301, "Phone number not valid")) is E.FAILED
        assert policy.classify(api_error(301, CAMPAIGN_301_MESSAGE)) is E.RUN


class TestUnknownCodes:
    @pytest.mark.parametrize("code", [0, 1, 102, 300, 509, 601, 999, 1001, 99999])
    def test_unknown_code_is_failed(self, code):
        """A code the documentation does not list is a permanent failure for that recipient."""
        assert default_class(code) is SPEC_UNKNOWN
        assert Policy().classify(api_error(code, "whatever")) is SPEC_UNKNOWN

    def test_unknown_class_is_configurable(self, tmp_path):
        """`unknown = "temporary"` makes undocumented codes retried, documented ones unchanged."""
        policy = load_policy(write_policy(tmp_path, '[codes]\nunknown = "temporary"\n'))
        assert policy.classify(api_error(999)) is E.TEMPORARY
        assert policy.classify(api_error(605)) is E.BLACKLISTED

    def test_non_api_errors_keep_their_own_class(self):
        """Transport and protocol errors are not touched by code overrides."""
        policy = parse_policy({"codes": {"unknown": "invalid"}})
        assert policy.classify(NotSentError("refused")) is E.TEMPORARY
        assert policy.classify(MaybeSentError("reset")) is E.UNCERTAIN
        assert policy.classify(ProtocolError("html", http_status=200)) is E.UNCERTAIN


class TestPolicyOverrides:
    def test_toml_overrides_change_classes_and_retry(self, tmp_path):
        """A TOML policy file overrides per-code classes and the retry settings."""
        policy = load_policy(write_policy(tmp_path, """
[retry]
max_attempts = 2
base_delay = 0.5
max_delay = 4
[codes]
602 = "failed"
605 = "invalid"
1000 = "temporary"
777 = "blacklisted"
"""))
        assert policy.retry == RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=4.0)
        assert policy.classify(api_error(602)) is E.FAILED
        assert policy.classify(api_error(605)) is E.INVALID
        assert policy.classify(api_error(1000)) is E.TEMPORARY
        assert policy.classify(api_error(777)) is E.BLACKLISTED
        assert policy.classify(api_error(604)) is E.TEMPORARY  # untouched
        assert ("602", "SMS not sent", "failed") in policy.table()

    def test_override_changes_the_outcome(self, tmp_path):
        """With 602 mapped to failed, a 602 ends the recipient at once instead of retry_wait."""
        policy = load_policy(write_policy(tmp_path, '[codes]\n602 = "failed"\n'))
        assert after_error(1, 1, api_error(602), policy).status is Status.FAILED
        assert after_error(1, 1, api_error(602), Policy()).status is Status.RETRY_WAIT

    def test_no_file_means_defaults(self):
        """No policy file: the documented defaults."""
        assert load_policy(None) == Policy()

    def test_policy_survives_json_round_trip(self, tmp_path):
        """The JSON a run stores its policy in gives back the same policy."""
        policy = load_policy(write_policy(tmp_path, '[retry]\nmax_attempts = 7\n[codes]\n602 = "failed"\n'
                                                    'unknown = "temporary"\n'))
        assert policy_from_json(policy_to_json(policy)) == policy


class TestHTTPStatusClasses:
    def test_catalogued_statuses_are_exactly_the_issue_table(self):
        """HTTP_STATUS_CLASS holds 408/429/503 temporary and 500/502/504 uncertain, each with a reason."""
        assert {status: cls for status, (cls, _) in HTTP_STATUS_CLASS.items()} == SPEC_HTTP
        assert all(reason and "\n" not in reason for _, reason in HTTP_STATUS_CLASS.values())

    @pytest.mark.parametrize("status", sorted(SPEC_HTTP))
    def test_default_policy_classes_bare_statuses_like_the_issue(self, status):
        """A bare answer with a catalogued status gets the issue's class from the client and Policy()."""
        error = http_error(status)
        assert error.error_class is SPEC_HTTP[status] and http_status_class(status) is SPEC_HTTP[status]
        assert Policy().classify(error) is SPEC_HTTP[status]

    @pytest.mark.parametrize("status, cls", [(501, E.UNCERTAIN), (599, E.UNCERTAIN), (400, E.RUN),
                                             (404, E.RUN), (499, E.RUN)])
    def test_other_statuses(self, status, cls):
        """Another 5xx is as unsure as a 500 (uncertain); another 4xx is a wrong URL or setup (run)."""
        assert http_status_class(status) is cls and http_error(status).error_class is cls

    def test_http_override_makes_502_temporary(self, tmp_path):
        """`[http] 502 = "temporary"` retries a bare 502 on purpose; 500 and 504 stay uncertain."""
        policy = load_policy(write_policy(tmp_path, '[http]\n502 = "temporary"  # at-least-once on purpose\n'))
        assert policy.http == {502: E.TEMPORARY}
        assert policy.classify(http_error(502)) is E.TEMPORARY
        assert policy.classify(http_error(500)) is E.UNCERTAIN and policy.classify(http_error(504)) is E.UNCERTAIN
        assert after_error(1, 1, http_error(502), policy, now=NOW).status is Status.RETRY_WAIT
        assert after_error(1, 1, http_error(502), Policy(), now=NOW).status is Status.UNCERTAIN

    def test_http_and_codes_sections_do_not_mix(self):
        """HTTP status 502 and API error code 502 are different things: each section changes only its own."""
        by_http = parse_policy({"http": {"502": "temporary"}})
        by_code = parse_policy({"codes": {"502": "failed"}})
        assert by_http.classify(api_error(502, default_message(502))) is E.RUN
        assert by_code.classify(http_error(502)) is E.UNCERTAIN
        assert by_code.classify(api_error(502, default_message(502))) is E.FAILED

    @pytest.mark.parametrize("cls", sorted(HTTP_OVERRIDABLE))
    def test_every_allowed_class_can_be_chosen(self, cls):
        """temporary, uncertain, failed and run are all accepted for a status."""
        assert parse_policy({"http": {"429": str(cls)}}).classify(http_error(429)) is cls

    def test_http_override_does_not_touch_other_errors(self):
        """An [http] entry changes bare answers only, not transport errors or 2xx protocol errors."""
        policy = parse_policy({"http": {"500": "temporary", "502": "failed"}})
        assert policy.classify(MaybeSentError("reset")) is E.UNCERTAIN
        assert policy.classify(ProtocolError("html", http_status=200)) is E.UNCERTAIN
        assert policy.classify(NotSentError("refused")) is E.TEMPORARY

    def test_default_table_lists_the_http_statuses(self):
        """`dispatch policy` shows 429/503/408 temporary and 500/502/504 uncertain, one row each."""
        rows = {r[0]: r[2] for r in Policy().table() if r[0].startswith("HTTP ")}
        for status, cls in SPEC_HTTP.items():
            assert rows[f"HTTP {status}"] == str(cls)
        assert rows["HTTP other 5xx"] == "uncertain" and rows["HTTP other 4xx"] == "run"

    def test_table_shows_overrides(self):
        """An overridden or added status shows its policy class, marked as coming from the policy file."""
        rows = {r[0]: r for r in parse_policy({"http": {"502": "temporary", "418": "failed"}}).table()}
        assert rows["HTTP 502"][2] == "temporary" and "policy file" in rows["HTTP 502"][1]
        assert rows["HTTP 418"][2] == "failed" and "policy file" in rows["HTTP 418"][1]
        assert rows["HTTP 504"][2] == "uncertain" and "policy file" not in rows["HTTP 504"][1]

    def test_http_overrides_survive_json_round_trip(self):
        """A run's stored policy keeps its [http] entries."""
        policy = parse_policy({"http": {"502": "temporary", "404": "failed"}, "codes": {"602": "failed"}})
        assert policy_from_json(policy_to_json(policy)) == policy
        assert policy_from_json(policy_to_json(policy)).http == {502: E.TEMPORARY, 404: E.FAILED}

    def test_json_stored_before_http_existed_still_reads(self):
        """A policy JSON without the "http" key (runs recorded earlier) reads with no HTTP overrides."""
        old = '{"retry": {"max_attempts": 3, "base_delay": 0.2, "max_delay": 1.0}, ' \
              '"codes": {"602": "temporary"}, "unknown": "failed"}'
        policy = policy_from_json(old)
        assert policy.http == {} and policy.codes == {602: E.TEMPORARY}
        assert policy.classify(http_error(502)) is E.UNCERTAIN

    @pytest.mark.parametrize("section, field", [
        ({"502": "account"}, "http.502"), ({"502": "blacklisted"}, "http.502"), ({"502": "invalid"}, "http.502"),
        ({"502": "sometimes"}, "http.502"), ({"502": 1}, "http.502"), ({"200": "temporary"}, "http.200"),
        ({"399": "temporary"}, "http.399"), ({"600": "temporary"}, "http.600"), ({"abc": "failed"}, "http.abc"),
        ({"-502": "failed"}, "http.-502"), ({"5_02": "failed"}, "http.5_02"), ({"502 ": "failed"}, "http.502 "),
        ({"unknown": "failed"}, "http.unknown"), ({True: "failed"}, "http.True"),
    ])
    def test_bad_http_entries_are_one_sentence(self, section, field):
        """A wrong [http] entry is a ConfigError of one sentence naming the entry."""
        with pytest.raises(ConfigError) as caught:
            parse_policy({"http": section})
        message = str(caught.value)
        assert message.startswith(f"policy: {field} ") and message.endswith(".") and "\n" not in message
        assert message.count(". ") == 0 and caught.value.exit_code == 2


HTTP_CLASSES = st.sampled_from(sorted(HTTP_OVERRIDABLE))
HTTP_OVERRIDES = st.dictionaries(st.integers(400, 599), HTTP_CLASSES, max_size=6)


class TestHTTPStatusProperties:
    @settings(max_examples=300, deadline=None)
    @given(status=st.integers(400, 599), overrides=HTTP_OVERRIDES)
    def test_every_status_has_one_class_and_overrides_win(self, status, overrides):
        """Every status 400-599 gets exactly one class, the policy's when it names the status."""
        text = "[http]\n" + "".join(f'{s} = "{c}"\n' for s, c in overrides.items())
        policy = parse_policy(tomllib.loads(text))
        assert policy.http == overrides
        expected = overrides.get(status, http_status_class(status))
        assert policy.classify(http_error(status)) is expected
        rows = [r for r in policy.table() if r[0] == f"HTTP {status}"]
        if status in overrides or status in HTTP_STATUS_CLASS:
            assert [r[2] for r in rows] == [str(expected)]
        else:
            assert rows == []
        assert policy_from_json(policy_to_json(policy)) == policy

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.integers(-5, 1000) | st.text(max_size=5) | st.sampled_from(["502", "429", "600"]),
                           HTTP_CLASSES | st.sampled_from(list(ErrorClass)) | st.integers() | st.text(max_size=6),
                           max_size=4))
    def test_http_section_parses_or_refuses(self, section):
        """Any [http] table gives statuses 400-599 with allowed classes, or a one-sentence ConfigError."""
        try:
            policy = parse_policy({"http": section})
        except ConfigError as error:
            assert str(error).startswith("policy: http.") and str(error).endswith(".")
            return
        assert all(isinstance(s, int) and 400 <= s <= 599 for s in policy.http)
        assert set(policy.http.values()) <= HTTP_OVERRIDABLE


INVALID_POLICIES = [
    ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
    ("[retry]\nmax_attempts = 2.5\n", "retry.max_attempts"),
    ("[retry]\nmax_attempts = true\n", "retry.max_attempts"),
    ("[retry]\nbase_delay = -1\n", "retry.base_delay"),
    ('[retry]\nbase_delay = "fast"\n', "retry.base_delay"),
    ("[retry]\nbase_delay = nan\n", "retry.base_delay"),
    ("[retry]\nmax_delay = inf\n", "retry.max_delay"),
    ("[retry]\nretries = 3\n", "'retries'"),
    ('[codes]\n602 = "sometimes"\n', "codes.602"),
    ('[codes]\n602 = "uncertain"\n', "codes.602"),
    ("[codes]\n602 = 1\n", "codes.602"),
    ('[codes]\nabc = "failed"\n', "codes.abc"),
    ('[codes]\nunknown = "maybe"\n', "codes.unknown"),
    ("retry = 3\n", "[retry]"),
    ("codes = [1, 2]\n", "[codes]"),
    ("[extra]\nx = 1\n", "[extra]"),
    ('[http]\n502 = "account"\n', "http.502"),
    ('[http]\n700 = "temporary"\n', "http.700"),
    ('[http]\ngateway = "temporary"\n', "http.gateway"),
    ("http = 3\n", "[http]"),
    ("[retry\nmax_attempts = 3\n", "not valid TOML"),
]


class TestInvalidPolicies:
    @pytest.mark.parametrize("text, field", INVALID_POLICIES, ids=[f for _, f in INVALID_POLICIES])
    def test_invalid_file_names_the_field(self, tmp_path, text, field):
        """A wrong policy file raises ConfigError (exit 2) naming the offending field and the file."""
        path = write_policy(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_policy(path)
        assert field in str(caught.value) and str(path) in str(caught.value)
        assert caught.value.exit_code == 2

    def test_missing_file(self, tmp_path):
        """A policy path that does not exist is a ConfigError, not an OSError."""
        with pytest.raises(ConfigError, match="Cannot read"):
            load_policy(tmp_path / "nope.toml")

    def test_not_utf8_file(self, tmp_path):
        """A policy file that is not UTF-8 is a ConfigError."""
        path = tmp_path / "policy.toml"
        path.write_bytes(b"[codes]\n602 = \"\xff\"\n")
        with pytest.raises(ConfigError):
            load_policy(path)

    def test_toml_dates_are_refused(self):
        """A TOML date where a number belongs is a ConfigError, not a crash."""
        with pytest.raises(ConfigError, match="retry.max_delay"):
            parse_policy({"retry": {"max_delay": datetime.date(2025, 1, 1)}})

    @pytest.mark.parametrize("data, field", [({1: {}}, "[1]"), ({"codes": {(6, 2): "failed"}}, "codes.(6, 2)"),
                                             ({"retry": {"base_delay": 10 ** 400}}, "retry.base_delay")])
    def test_odd_python_values_are_config_errors(self, data, field):
        """Values no TOML file can hold (non-string keys, huge ints) still give ConfigError."""
        with pytest.raises(ConfigError) as caught:
            parse_policy(data)
        assert field in str(caught.value)


TOML_SCALARS = (st.integers(-(2 ** 63), 2 ** 63 - 1) | st.floats() | st.booleans() | st.text(max_size=12)
                | st.sampled_from([c.value for c in ErrorClass]) | st.dates() | st.datetimes()
                | st.times() | st.sampled_from([str(c) for c in SPEC_TABLE]))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = st.sampled_from(["max_attempts", "base_delay", "max_delay", "unknown", "602", "301", "999", "502",
                        "429", "200"]) \
    | st.text(max_size=6) | st.integers(-5, 2000)
SECTIONS = st.dictionaries(KEYS, TOML_VALUES | st.sampled_from(list(ErrorClass)), max_size=4)
POLICY_DATA = st.dictionaries(st.sampled_from(["retry", "codes", "http"]) | st.text(max_size=6),
                              SECTIONS | TOML_VALUES, max_size=3)


class TestPolicyProperties:
    @settings(max_examples=500, deadline=None)
    @given(POLICY_DATA)
    def test_parse_policy_returns_a_policy_or_raises_config_error(self, data):
        """parse_policy on any TOML-like dict gives a usable Policy or a ConfigError, nothing else."""
        try:
            policy = parse_policy(data)
        except ConfigError as error:
            assert str(error).startswith("policy: ")
            return
        retry = policy.retry
        assert retry.max_attempts >= 1 and isinstance(retry.max_attempts, int)
        assert math.isfinite(retry.base_delay) and math.isfinite(retry.max_delay)
        assert retry.base_delay >= 0 and retry.max_delay >= 0
        assert all(isinstance(c, int) and cls is not E.UNCERTAIN for c, cls in policy.codes.items())
        assert all(400 <= s <= 599 and cls in HTTP_OVERRIDABLE for s, cls in policy.http.items())
        assert policy_from_json(policy_to_json(policy)) == policy


# --- after_error: class → status -------------------------------------------------------------------

NOW = 1_700_000_000.0


class TestAfterError:
    @pytest.mark.parametrize("label, code, message", DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
    def test_first_attempt_status_of_every_documented_code(self, label, code, message):
        """Each documented code's first failure ends in the status its class maps to."""
        cls = EXPECTED[label]
        outcome = after_error(7, 1, api_error(code, message, http_status=422), Policy(), now=NOW,
                              rng=random.Random(1))
        assert outcome.row == 7 and outcome.code == code and outcome.error_class is cls
        assert outcome.status is STATUS_OF[cls]
        assert outcome.stops_run is (cls in (E.ACCOUNT, E.RUN))
        assert str(code) in outcome.message
        if cls is E.TEMPORARY:
            assert NOW < outcome.due <= NOW + Policy().retry.max_delay
        else:
            assert outcome.due == 0.0

    @pytest.mark.parametrize("code", [c for c, cls in SPEC_TABLE.items() if cls is E.TEMPORARY])
    def test_temporary_retries_until_max_attempts_then_fails(self, code):
        """A temporary code waits for a retry on attempts 1..max-1 and is failed at max_attempts."""
        policy = Policy(retry=RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=8.0))
        error = api_error(code, default_message(code))
        statuses = [after_error(1, n, error, policy, now=NOW).status for n in range(1, 6)]
        assert statuses == [Status.RETRY_WAIT] * 3 + [Status.FAILED] * 2
        final = after_error(1, 4, error, policy, now=NOW)
        assert final.due == 0.0 and "gave up after 4 attempts" in final.message and final.code == code
        assert not final.stops_run

    @pytest.mark.parametrize("code", [c for c, cls in SPEC_TABLE.items() if cls in (E.ACCOUNT, E.RUN)])
    def test_account_and_run_codes_abort_and_stop_the_run(self, code):
        """Account and run codes make the row aborted and stop the run, whatever the attempt."""
        for attempts in (1, 5, 50):
            outcome = after_error(1, attempts, api_error(code, default_message(code)), Policy(), now=NOW)
            assert outcome.status is Status.ABORTED and outcome.stops_run

    @settings(max_examples=200, deadline=None)
    @given(attempts=st.integers(1, 4), retry_after=st.floats(0, 10_000), seed=st.integers(0, 2 ** 32))
    def test_retry_after_is_respected(self, attempts, retry_after, seed):
        """A temporary error's retry is never due before now + Retry-After."""
        policy = Policy(retry=RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=2.0))
        error = HTTPStatusError("HTTP 429", http_status=429, retry_after=retry_after, error_class=E.TEMPORARY)
        outcome = after_error(1, attempts, error, policy, now=NOW, rng=random.Random(seed))
        assert outcome.status is Status.RETRY_WAIT and outcome.code == 429
        assert NOW + retry_after <= outcome.due <= NOW + max(retry_after, 2.0)

    def test_api_error_retry_after_is_respected(self):
        """A 602 that came with Retry-After waits at least that long too."""
        error = api_error(602, default_message(602), http_status=429, retry_after=120.0)
        outcome = after_error(1, 1, error, Policy(), now=NOW, rng=random.Random(3))
        assert outcome.status is Status.RETRY_WAIT and outcome.due >= NOW + 120.0

    @pytest.mark.parametrize("error, status, code", [
        (NotSentError("refused"), Status.RETRY_WAIT, 0),
        (MaybeSentError("reset"), Status.UNCERTAIN, 0),
        (ProtocolError("html", http_status=200), Status.UNCERTAIN, 200),
        (HTTPStatusError("HTTP 503", http_status=503, retry_after=None, error_class=E.TEMPORARY),
         Status.RETRY_WAIT, 503),
        (HTTPStatusError("HTTP 502", http_status=502, retry_after=None, error_class=E.UNCERTAIN),
         Status.UNCERTAIN, 502),
        (HTTPStatusError("HTTP 404", http_status=404, retry_after=None, error_class=E.RUN), Status.ABORTED, 404),
    ])
    def test_errors_without_a_code(self, error, status, code):
        """Transport, protocol and bare HTTP errors map by their own class; the HTTP status is the code."""
        outcome = after_error(1, 1, error, Policy(), now=NOW)
        assert outcome.status is status and outcome.code == code

    def test_uncertain_is_never_retried(self):
        """A maybe-sent request stays uncertain on any attempt: never resent automatically."""
        for attempts in (1, 2, 10):
            assert after_error(1, attempts, MaybeSentError("x"), Policy(), now=NOW).status is Status.UNCERTAIN

