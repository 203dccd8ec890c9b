"""The sandbox server over a real socket: every documented behaviour, as a client sees it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import phonenumbers
import pytest

from worker.catalogue import CAMPAIGN_301_MESSAGE, default_message
from worker.errors import ConfigError
from worker.sandbox import read_request_log, running_sandbox

from .conftest import Api


def error_of(response: httpx.Response) -> tuple[int, str]:
    errors = response.json()["status"]["errors"]
    assert response.json()["status"]["status"] == "failed"
    return errors["error_code"], errors["error_message"]


def log_lines(api: Api, recipient: str) -> list[dict]:
    assert api.log is not None
    return [line for line in read_request_log(api.log) if line["recipient"] == recipient]


# --- credentials, parameters, integrations, campaigns ---

@pytest.mark.parametrize("headers", [None, {"X-Client-Id": "sandbox", "X-Client-Secret": "nope"},
                                     {"X-Client-Id": "sandbox"}])
def test_bad_or_missing_credentials_answer_1000(api: Api, headers: dict | None) -> None:
    """Missing or wrong credentials get error 1000 with the catalogue message."""
    response = api.post("send/sms", {"campaign": "dir_12345", "phone": "+447911000001"}, headers)
    assert error_of(response) == (1000, default_message(1000))


def test_credentials_in_the_body_are_accepted(api: Api) -> None:
    """client_id / client_secret inside the body work like the headers."""
    body = {"campaign": "dir_12345", "phone": "+447911000002",
            "client_id": "sandbox", "client_secret": "sandbox"}
    assert api.post("send/sms", body, headers=None).json()["status"]["status"] == "OK"


def test_directory_endpoints_check_credentials(api: Api) -> None:
    """Directory endpoints answer 1000 without credentials too."""
    assert error_of(api.post("directory/list", {}, headers=None))[0] == 1000


def test_scenario_credentials_replace_the_default(closed_api: Api) -> None:
    """A scenario's own credentials are required; the default ones are refused."""
    assert error_of(closed_api.sms("+447911000001"))[0] == 1000


def test_integrations_off_answer_103_and_104(closed_api: Api) -> None:
    """With integrations off, sms answers 103 and email answers 104."""
    headers = {"X-Client-Id": "me", "X-Client-Secret": "s3cret"}
    sms = closed_api.post("send/sms", {"campaign": "dir_12345", "phone": "+447911000001"}, headers)
    email = closed_api.post("send/email", {"campaign": "dir_12345", "email": "a@example.com"}, headers)
    assert error_of(sms) == (103, default_message(103))
    assert error_of(email) == (104, default_message(104))


@pytest.mark.parametrize("path, body", [
    ("send/sms", {"phone": "+447911000001"}),
    ("send/sms", {"campaign": "dir_12345"}),
    ("send/email", {"campaign": "dir_12345"}),
    ("send/email", {"campaign": "", "email": "a@example.com"}),
])
def test_missing_parameters_answer_200(api: Api, path: str, body: dict) -> None:
    """A send without campaign, phone or email answers error 200."""
    code, message = error_of(api.post(path, body))
    assert code == 200 and "Missing parameter" in message


def test_campaign_with_bad_characters_answers_301(api: Api) -> None:
    """A campaign with characters outside [A-Za-z0-9_] answers 301 naming the campaign parameter."""
    assert error_of(api.sms("+447911000001", campaign="dir-12345")) == (301, CAMPAIGN_301_MESSAGE)


def test_unknown_campaign_answers_502_and_coupons_are_accepted(api: Api) -> None:
    """An unknown directory ID answers 502 while any cam_ coupon ID is accepted."""
    assert error_of(api.sms("+447911000001", campaign="dir_nope"))[0] == 502
    assert api.sms("+447911000001", campaign="cam_anything").json()["status"]["status"] == "OK"


def test_successful_sms_echoes_strings_without_plus(api: Api) -> None:
    """A successful send/sms answers OK with campaign, message and the phone without '+'."""
    body = api.sms("+447911000003").json()
    assert body["status"] == {"status": "OK"}
    assert body["campaign"] == "dir_12345" and body["phone"] == "447911000003"
    assert isinstance(body["message"], str)


# --- envelopes and HTTP statuses ---

def test_scalar_envelope_by_default(api: Api) -> None:
    """The default error envelope has a scalar code and message, with HTTP 200."""
    response = api.sms("+447911000777")
    assert response.status_code == 200
    assert response.json()["status"]["errors"] == {"error_code": 602, "error_message": "Try later."}


def test_list_envelope(mapped_api: Api) -> None:
    """error_shape list gives a status line, a description list and a code list."""
    errors = mapped_api.sms("+447911000001", campaign="dir-x").json()["status"]["errors"]
    assert errors["error_code"] == [301]
    assert errors["error_message"] == "HTTP/1.0 422 Unprocessable entity."
    assert errors["error_message_description"] == ["Invalid character in parameter: campaign"]


@pytest.mark.parametrize("call, status", [
    (lambda a: a.post("send/sms", {"campaign": "dir_12345", "phone": "1"}, None), 401),
    (lambda a: a.post("send/sms", {"phone": "+447911000001"}), 422),
    (lambda a: a.sms("+447911000001", campaign="bad-id"), 422),
    (lambda a: a.email("err301"), 422),
    (lambda a: a.sms("+447911000001", campaign="dir_nope"), 404),
    (lambda a: a.post("directory/info", {"directory": "dir_nope"}), 404),
    (lambda a: a.sms("+447911000601"), 422),
    (lambda a: a.sms("+447911000001"), 200),
])
def test_mapped_http_statuses(mapped_api: Api, call, status: int) -> None:
    """error_http_status mapped: 1000→401, 2xx/3xx→422, 5xx→404, 6xx→422, success 200."""
    assert call(mapped_api).status_code == status


# --- rules and steps ---

def test_suffix_rule_applies_only_to_its_channel(api: Api) -> None:
    """An sms-only suffix rule answers 605 for sms and leaves a matching email alone."""
    code, message = error_of(api.sms("+447911000605"))
    assert code == 605 and "'+447911000605'" in message
    assert api.email("x605").json()["status"]["status"] == "OK"


def test_exact_rule_with_a_custom_message(api: Api) -> None:
    """An exact rule matches only that recipient and uses the scripted message."""
    assert error_of(api.email("+447911000777")) == (602, "Try later.")
    assert api.sms("+4479110007770").json()["status"]["status"] == "OK"


def test_regex_rule_steps_then_last_step_repeats(api: Api) -> None:
    """A recipient walks through the steps in order, then the last step repeats."""
    first, second = api.email("retry1@example.com"), api.email("retry1@example.com")
    assert first.status_code == 503 and "Retry-After" not in first.headers
    assert second.status_code == 429 and second.headers["Retry-After"] == "2"
    with pytest.raises(json.JSONDecodeError):
        json.loads(second.text)
    for _ in range(2):
        assert api.email("retry1@example.com").json()["status"]["status"] == "OK"
    assert api.sms("retry1").json()["status"]["status"] == "OK"  # email-only rule


def test_steps_are_counted_per_recipient(api: Api) -> None:
    """Two recipients matching one rule each start at its first step."""
    assert error_of(api.sms("seq-a"))[0] == 602
    assert error_of(api.sms("seq-b"))[0] == 602
    assert api.sms("seq-a").json()["status"]["status"] == "OK"


def test_step_delay(api: Api) -> None:
    """A step's delay_ms holds the answer back."""
    started = time.monotonic()
    assert api.email("slow@example.com").json()["status"]["status"] == "OK"
    assert time.monotonic() - started >= 0.3


def test_garbage_is_a_200_that_is_not_json(api: Api) -> None:
    """A garbage step answers HTTP 200 with a body that is not JSON."""
    response = api.email("garbage@example.com")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert log_lines(api, "garbage@example.com")[-1]["result"] == "garbage"


def test_drop_closes_the_connection_and_logs_a_delivery(api: Api) -> None:
    """A drop step closes the connection unanswered; the log records it as a drop."""
    with httpx.Client() as fresh, pytest.raises(httpx.RemoteProtocolError):
        fresh.post(f"{api.base_url}/send/email", headers={"X-Client-Id": "sandbox",
                   "X-Client-Secret": "sandbox"},
                   json={"campaign": "dir_12345", "email": "drop@example.com"})
    assert log_lines(api, "drop@example.com")[-1]["result"] == "drop"
    assert api.sms("+447911000004").json()["status"]["status"] == "OK"  # still serving


# --- directories ---

def test_directory_list_and_info(api: Api) -> None:
    """directory/list lists every directory; directory/info describes one with string numbers."""
    directories = api.post("directory/list").json()["directories"]
    assert directories[0] == {"ID": "dir_12345", "name": "Sample directory", "amount_of_users": "250"}
    assert len(directories) == 5
    info = api.post("directory/info", {"directory": "dir_101"}).json()
    assert info["directory"] == {"ID": "dir_101", "name": "Hundred and one", "amount_of_users": "101"}


def test_unknown_or_missing_directory(api: Api) -> None:
    """Directory endpoints answer 507 for an unknown directory and 200 without one."""
    assert error_of(api.post("directory/info", {"directory": "dir_nope"}))[0] == 507
    assert error_of(api.post("directoryusers/list", {"directory": "dir_nope"}))[0] == 507
    assert error_of(api.post("directoryusers/list", {}))[0] == 200


@pytest.mark.parametrize("directory, page, expected", [
    ("dir_empty", 1, []), ("dir_one", 1, [1]), ("dir_hundred", 1, list(range(1, 101))),
    ("dir_hundred", 2, []), ("dir_101", 2, [101]), ("dir_12345", 1, list(range(1, 101))),
    ("dir_12345", "3", list(range(201, 251))), ("dir_12345", 4, []),
])
def test_directory_users_are_paged_newest_first(api: Api, directory: str, page, expected) -> None:
    """directoryusers/list pages users 100 at a time, reg_00001 first, empty past the end."""
    body = api.post("directoryusers/list", {"directory": directory, "page": page}).json()
    assert [user["ID"] for user in body["users"]] == [f"reg_{i:05d}" for i in expected]
    assert body["page"] == str(page) and body["directory"] == directory


def test_directory_users_have_valid_string_fields(api: Api) -> None:
    """Generated users have string fields, a valid email and a valid E.164 mobile, deterministically."""
    first = api.post("directoryusers/list", {"directory": "dir_12345"}).json()
    again = api.post("directoryusers/list", {"directory": "dir_12345", "page": 1}).json()
    assert first == again and first["amount_of_users"] == "250"
    for user in first["users"]:
        assert all(isinstance(value, str) for value in user.values())
        assert user["email"] == f"user{user['ID'][4:]}@example.com"
        assert phonenumbers.is_valid_number(phonenumbers.parse(user["phone"]))


def test_bad_page_answers_300(api: Api) -> None:
    """A page that is not a positive whole number is an incorrect value."""
    assert error_of(api.post("directoryusers/list", {"directory": "dir_one", "page": "x"}))[0] == 300


# --- request log ---

def test_request_log_records_every_request_before_answering(api: Api) -> None:
    """Each request, refused ones included, is a JSON line in the log by the time its answer arrives."""
    api.sms("+447911000010")
    api.post("send/sms", {"campaign": "dir_12345", "phone": "+447911000011"}, headers=None)
    api.post("directory/info", {"directory": "dir_one"})
    lines = read_request_log(api.log)
    assert lines[-3]["result"] == "ok" and lines[-3]["recipient"] == "+447911000010"
    assert lines[-3]["path"] == "/v3/send/sms" and lines[-3]["campaign"] == "dir_12345"
    assert lines[-2]["result"] == 1000
    assert lines[-1] | {"ts": 0} == {"ts": 0, "path": "/v3/directory/info", "campaign": "dir_one",
                                     "recipient": None, "result": "ok"}
    assert lines[-3]["ts"] <= lines[-1]["ts"] <= time.time()


# --- whole-sandbox settings ---

def test_rate_limit_answers_429_with_retry_after() -> None:
    """Past rate_limit_per_s requests in a second, the sandbox answers 429 with Retry-After: 1."""
    with running_sandbox({"rate_limit_per_s": 5}) as url, httpx.Client() as client:
        responses = [client.post(f"{url}/directory/list", headers={"X-Client-Id": "sandbox",
                                 "X-Client-Secret": "sandbox"}) for _ in range(20)]
    limited = [r for r in responses if r.status_code == 429]
    assert 10 <= len(limited) <= 15
    assert all(r.headers["Retry-After"] == "1" for r in limited)


def test_latency_is_added_to_every_answer(tmp_path: Path) -> None:
    """latency_ms delays answers, refusals included."""
    with running_sandbox({"latency_ms": 200}) as url, httpx.Client() as client:
        client.post(f"{url}/directory/list")  # warm the connection
        started = time.monotonic()
        client.post(f"{url}/directory/list")
        assert time.monotonic() - started >= 0.2


def test_invalid_scenario_refuses_to_start() -> None:
    """running_sandbox raises ConfigError with the sandbox's one-sentence message."""
    with pytest.raises(ConfigError, match=r"rules\[0\]\.steps\[0\]"):
        with running_sandbox({"rules": [{"match": {"exact": "a"}, "steps": [{}]}]}):
            pass


def test_command_line_bad_scenario_exits_2_without_traceback(tmp_path: Path) -> None:
    """python -m worker.sandbox with a bad scenario prints one line on stderr and exits 2."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text('{"latency_ms": -1}')
    done = subprocess.run([sys.executable, "-m", "worker.sandbox", "--scenario", str(scenario)],
                          capture_output=True, text=True, timeout=15)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"{scenario}: latency_ms: must be a number of at least 0."]


def test_command_line_stops_cleanly_on_sigterm() -> None:
    """The sandbox prints its base URL, then exits 0 on SIGTERM."""
    process = subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip().endswith("/v3")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()
