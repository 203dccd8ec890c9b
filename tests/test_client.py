"""The Coupontools client: reading answers (a pure function), every documented code over a real socket,
the sent / maybe-sent split of transport failures, credentials in headers only, and directory paging."""
from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.catalogue import CAMPAIGN_301_MESSAGE, ErrorClass, http_status_class
from worker.client import CoupontoolsClient, Credentials, parse_retry_after, read_answer, transport_error
from worker.errors import (APIError, CoupontoolsError, HTTPStatusError, MaybeSentError, NotSentError,
                           ProtocolError)
from worker.policy import Policy, parse_policy
from worker.sandbox import read_request_log, running_sandbox

CREDS = Credentials("sandbox", "sandbox")
STATUSES = (200, 401, 404, 422, 429, 500, 502, 503, 504)
RETRYABLE_STATUSES = (408, 429, 503)  # refused before anything was done: temporary
MAYBE_ACTED_STATUSES = (500, 502, 504)  # a server behind the gateway may have acted: uncertain
OK_BODY = json.dumps({"status": {"status": "OK"}, "campaign": "dir_12345", "phone": "447911000001"}).encode()


def scalar_body(code: Any, message: str = "Something went wrong.") -> bytes:
    return json.dumps({"status": {"status": "failed",
                                  "errors": {"error_code": code, "error_message": message}}}).encode()


def list_body(code: Any, description: str = "Webhook not found.") -> bytes:
    return json.dumps({"status": {"status": "failed", "errors": {
        "error_message": "HTTP/1.0 422 Unprocessable entity.", "error_message_description": [description],
        "error_code": [code]}}}).encode()


def run(coroutine):
    return asyncio.run(coroutine)


async def call_with(url: str, action: Callable[[CoupontoolsClient], Any], credentials: Credentials = CREDS,
                    **options: Any) -> Any:
    async with CoupontoolsClient(base_url=url, credentials=credentials, **options) as client:
        return await action(client)


def raised(url: str, action: Callable[[CoupontoolsClient], Any], **options: Any) -> CoupontoolsError:
    """The CoupontoolsError that `action` raises against `url` (fails the test if it returns)."""
    with pytest.raises(CoupontoolsError) as caught:
        run(call_with(url, action, **options))
    return caught.value


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> CoupontoolsClient:
    return CoupontoolsClient(base_url="http://api.test/v3", credentials=CREDS,
                             transport=httpx.MockTransport(handler), **options)


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- read_answer: a pure function of status, headers and body -------------------------------------

class TestReadAnswer:
    def test_success_envelope_is_returned(self):
        """An OK envelope under 200 comes back as the decoded document."""
        assert read_answer(200, {}, OK_BODY)["phone"] == "447911000001"

    def test_status_ok_is_case_insensitive(self):
        """`"ok"` in lower case is still a success."""
        assert read_answer(200, {}, b'{"status": {"status": "ok"}}') == {"status": {"status": "ok"}}

    @pytest.mark.parametrize("status", STATUSES)
    def test_success_envelope_under_every_status(self, status):
        """An OK envelope is a success only below 400; 429/503 are temporary, 500/502/504 uncertain, other
        4xx permanent."""
        if status < 400:
            assert read_answer(status, {}, OK_BODY)["status"]["status"] == "OK"
            return
        with pytest.raises(CoupontoolsError) as caught:
            read_answer(status, {}, OK_BODY)
        expected = {429: ErrorClass.TEMPORARY, 503: ErrorClass.TEMPORARY, 500: ErrorClass.UNCERTAIN,
                    502: ErrorClass.UNCERTAIN, 504: ErrorClass.UNCERTAIN}.get(status, ErrorClass.FAILED)
        assert caught.value.error_class is expected and caught.value.http_status == status

    @pytest.mark.parametrize("status", STATUSES)
    @pytest.mark.parametrize("shape", [scalar_body, list_body])
    def test_error_envelope_under_every_status(self, shape, status):
        """Both error envelopes give an APIError with the code, whatever the HTTP status."""
        with pytest.raises(APIError) as caught:
            read_answer(status, httpx.Headers({"Retry-After": "7"}), shape(602))
        error = caught.value
        assert error.code == 602 and error.http_status == status and error.retry_after == 7.0
        assert error.error_class is ErrorClass.TEMPORARY

    def test_list_envelope_message_joins_status_line_and_description(self):
        """The list form's message carries both the status line and the first description."""
        with pytest.raises(APIError) as caught:
            read_answer(422, {}, list_body(509, "Webhook not found."))
        assert caught.value.code == 509
        assert caught.value.message == "HTTP/1.0 422 Unprocessable entity. Webhook not found."
        assert caught.value.error_class is ErrorClass.FAILED  # not documented

    @pytest.mark.parametrize("body", [scalar_body("602"), list_body("602"), scalar_body(" 602 "),
                                      list_body(602)])
    def test_codes_as_strings_or_lists(self, body):
        """`"602"`, `[602]` and `["602"]` all read as code 602."""
        with pytest.raises(APIError) as caught:
            read_answer(200, {}, body)
        assert caught.value.code == 602

    def test_list_shaped_campaign_301_is_a_run_error(self):
        """The campaign 301 is recognised when its text sits in the list form's description."""
        with pytest.raises(APIError) as caught:
            read_answer(422, {}, list_body(301, "Invalid character in parameter: campaign"))
        assert Policy().classify(caught.value) is ErrorClass.RUN

    @pytest.mark.parametrize("body", [b"<html><body>Bad gateway</body></html>", b"", b"OK", b"\xff\xfe\x00",
                                      b'{"status": {"status": "OK"}', b'{"status": {"sta', b"[1, 2",
                                      b"[" * 100_000, b'{"a":' * 100_000])
    def test_non_json_or_truncated_200_is_uncertain(self, body):
        """A 200 whose body is not (complete) JSON may have been acted on: ProtocolError, uncertain."""
        with pytest.raises(ProtocolError) as caught:
            read_answer(200, {}, body)
        assert caught.value.error_class is ErrorClass.UNCERTAIN and caught.value.http_status == 200

    @pytest.mark.parametrize("document", [{}, [], 1, "OK", None, {"status": "OK"}, {"status": {}},
                                          {"status": {"status": ""}}, {"status": {"status": None}},
                                          {"status": {"status": 1}}, {"result": "OK"}])
    def test_json_without_status_status_is_a_protocol_error(self, document):
        """JSON that is not the envelope (no string status.status) is never a success."""
        with pytest.raises(ProtocolError) as caught:
            read_answer(200, {}, json.dumps(document).encode())
        assert caught.value.error_class is ErrorClass.UNCERTAIN

    @pytest.mark.parametrize("status", RETRYABLE_STATUSES)
    def test_temporary_status_without_envelope(self, status):
        """429, 503 and 408 with a plain body are temporary and carry Retry-After."""
        with pytest.raises(HTTPStatusError) as caught:
            read_answer(status, httpx.Headers({"Retry-After": "3"}), b"Service Unavailable")
        error = caught.value
        assert error.error_class is ErrorClass.TEMPORARY and error.retry_after == 3.0
        assert error.http_status == status and Policy().classify(error) is ErrorClass.TEMPORARY

    @pytest.mark.parametrize("status", MAYBE_ACTED_STATUSES)
    def test_gateway_error_without_envelope_is_uncertain(self, status):
        """500, 502 and 504 with a plain body may hide a server that acted: uncertain, never resent."""
        with pytest.raises(HTTPStatusError) as caught:
            read_answer(status, httpx.Headers({"Retry-After": "3"}), b"<html>Bad Gateway</html>")
        error = caught.value
        assert error.error_class is ErrorClass.UNCERTAIN and error.http_status == status
        assert Policy().classify(error) is ErrorClass.UNCERTAIN

    @pytest.mark.parametrize("status", MAYBE_ACTED_STATUSES)
    def test_gateway_error_retried_only_when_the_policy_says_so(self, status):
        """An [http] entry makes that one status temporary (at-least-once on purpose), the others stay."""
        policy = parse_policy({"http": {str(status): "temporary"}})
        for other in MAYBE_ACTED_STATUSES:
            with pytest.raises(HTTPStatusError) as caught:
                read_answer(other, {}, b"")
            expected = ErrorClass.TEMPORARY if other == status else ErrorClass.UNCERTAIN
            assert policy.classify(caught.value) is expected

    def test_temporary_status_without_retry_after(self):
        """A bare 503 without Retry-After is temporary with no retry_after."""
        with pytest.raises(HTTPStatusError) as caught:
            read_answer(503, {}, b"")
        assert caught.value.error_class is ErrorClass.TEMPORARY and caught.value.retry_after is None

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422])
    def test_other_4xx_without_envelope_stops_the_run(self, status):
        """A 4xx without the envelope means a wrong URL or setup: class run."""
        with pytest.raises(HTTPStatusError) as caught:
            read_answer(status, {}, b"<html>Not Found</html>")
        assert caught.value.error_class is ErrorClass.RUN

    @pytest.mark.parametrize("errors", [None, {}, {"error_message": "no code"}, {"error_code": "abc"},
                                        {"error_code": []}, {"error_code": True}, [{"error_code": 602}]])
    def test_failed_envelope_without_a_code(self, errors):
        """A failed envelope without a readable code is a permanent protocol error under 200/4xx."""
        body = json.dumps({"status": {"status": "failed", "errors": errors}}).encode()
        with pytest.raises(ProtocolError) as caught:
            read_answer(422, {}, body)
        assert caught.value.error_class is ErrorClass.FAILED
        with pytest.raises(HTTPStatusError) as caught_5xx:
            read_answer(503, {}, body)
        assert caught_5xx.value.error_class is ErrorClass.TEMPORARY

    @pytest.mark.parametrize("status", RETRYABLE_STATUSES[1:] + MAYBE_ACTED_STATUSES)
    def test_codeless_envelope_at_429_and_5xx_follows_the_status(self, status):
        """A failed envelope without a code under 429/5xx is classed exactly like a bare answer."""
        body = json.dumps({"status": {"status": "failed", "errors": {"error_message": "oops"}}}).encode()
        with pytest.raises(HTTPStatusError) as caught:
            read_answer(status, httpx.Headers({"Retry-After": "5"}), body)
        assert caught.value.error_class is http_status_class(status) and caught.value.retry_after == 5.0
        expected = ErrorClass.UNCERTAIN if status in MAYBE_ACTED_STATUSES else ErrorClass.TEMPORARY
        assert caught.value.error_class is expected


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
STATES = st.sampled_from(["OK", "ok", "failed", "", "Ok ", "FAILED"]) | st.text(max_size=5) | JSON_VALUES
ERRORS = st.fixed_dictionaries({}, optional={
    "error_code": st.integers(-5, 2000) | st.text(max_size=5) | st.lists(st.integers(0, 999) | st.text(max_size=4),
                                                                           max_size=2) | JSON_VALUES,
    "error_message": JSON_VALUES, "error_message_description": JSON_VALUES}) | JSON_VALUES
ENVELOPES = st.builds(lambda state, errors, extra: {"status": {"status": state, "errors": errors}, **extra},
                      STATES, ERRORS, st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=2))
BODIES = (st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
          | ENVELOPES.map(lambda v: json.dumps(v).encode())
          | ENVELOPES.map(lambda v: json.dumps(v).encode()[:-3]))
HEADERS = st.dictionaries(st.sampled_from(["retry-after", "content-type"]), st.text(max_size=30), max_size=2)


def is_ok_envelope(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return (isinstance(document, dict) and isinstance(document.get("status"), dict)
            and isinstance(document["status"].get("status"), str)
            and document["status"]["status"].upper() == "OK")


class TestReadAnswerProperties:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(status=st.integers(100, 599) | st.sampled_from(STATUSES), headers=HEADERS, body=BODIES)
    def test_a_dict_only_for_an_ok_envelope_below_400(self, status, headers, body):
        """For any body and status, read_answer returns a dict only for an OK envelope below 400, else a
        CoupontoolsError and nothing else."""
        try:
            answer = read_answer(status, headers, body)
        except CoupontoolsError as error:
            assert not (is_ok_envelope(body) and status < 400)
            assert isinstance(error.error_class, ErrorClass)
            assert error.retry_after is None or error.retry_after >= 0
        else:
            assert isinstance(answer, dict) and is_ok_envelope(body) and status < 400

    @settings(max_examples=300, deadline=None)
    @given(status=st.integers(400, 599), body=st.sampled_from([b"", b"Bad Gateway", b"<html>x</html>",
                                                               b'{"status": {"status": "failed"}}']))
    def test_every_error_status_reads_as_its_one_default_class(self, status, body):
        """Any 4xx/5xx without a code gives an error whose class is the status's one default class."""
        with pytest.raises(CoupontoolsError) as caught:
            read_answer(status, {}, body)
        error = caught.value
        assert error.http_status == status
        if isinstance(error, HTTPStatusError):
            assert error.error_class is http_status_class(status)
            assert Policy().classify(error) is http_status_class(status)
        else:  # a codeless failed envelope under a 4xx other than 429: permanent
            assert isinstance(error, ProtocolError) and status < 500 and error.error_class is ErrorClass.FAILED

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=40))
    def test_parse_retry_after_never_raises(self, value):
        """Any header text gives None or a finite number of seconds, never an exception."""
        seconds = parse_retry_after(value)
        assert seconds is None or (0 <= seconds < float("inf"))


class TestParseRetryAfter:
    @pytest.mark.parametrize("value, expected", [("5", 5.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5)])
    def test_delta_seconds(self, value, expected):
        """Delta-seconds are read as seconds."""
        assert parse_retry_after(value) == expected

    def test_future_http_date(self):
        """An HTTP date in the future is the seconds until then."""
        now = 1_700_000_000.0
        header = email.utils.formatdate(now + 90, usegmt=True)
        assert parse_retry_after(header, now=now) == pytest.approx(90.0)

    def test_past_http_date_is_zero(self):
        """An HTTP date in the past means 'now': zero seconds."""
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-", "Wed, 99 Foo", "inf", "nan", "1e400", "∞",
                                       "Mon, 01 Jan 99999 00:00:00 GMT"])
    def test_garbage_is_none(self, value):
        """Absent, empty, unreadable or non-finite values give None."""
        assert parse_retry_after(value) is None

    def test_negative_seconds_clamp_to_zero(self):
        """A negative delay is treated as 'retry now'."""
        assert parse_retry_after("-5") == 0.0


# --- every documented code over a real socket ----------------------------------------------------

CODES_SCENARIO = {
    "directories": [{"id": "dir_12345", "name": "Sample", "users": 3}],
    "rules": [
        {"match": {"exact": "+447911000101"}, "steps": [{"error": 101}]},
        {"channel": "sms", "match": {"exact": "+447911000301"}, "steps": [{"error": 301}]},
        {"channel": "email", "match": {"exact": "bad305@example.com"}, "steps": [{"error": 305}]},
        {"channel": "sms", "match": {"exact": "+447911000602"}, "steps": [{"error": 602}]},
        {"channel": "email", "match": {"exact": "t604@example.com"}, "steps": [{"error": 604}]},
        {"channel": "sms", "match": {"exact": "+447911000605"}, "steps": [{"error": 605}]},
    ],
}
SHAPES = [("scalar", 200), ("scalar", "mapped"), ("list", 200), ("list", "mapped")]

# name: (call, code, class, HTTP status when mapped, which sandbox, credentials)
CODE_CASES: dict[str, tuple[Callable[[CoupontoolsClient], Any], int, ErrorClass, int, str, Credentials]] = {
    "1000": (lambda c: c.send_sms("dir_12345", "+447911000001"), 1000, ErrorClass.ACCOUNT, 401, "open",
             Credentials("sandbox", "wrong")),
    "101": (lambda c: c.send_sms("dir_12345", "+447911000101"), 101, ErrorClass.ACCOUNT, 401, "open", CREDS),
    "103": (lambda c: c.send_sms("dir_12345", "+447911000001"), 103, ErrorClass.ACCOUNT, 422, "closed", CREDS),
    "104": (lambda c: c.send_email("dir_12345", "a@example.com"), 104, ErrorClass.ACCOUNT, 422, "closed", CREDS),
    "200": (lambda c: c.send_sms("", "+447911000001"), 200, ErrorClass.RUN, 422, "open", CREDS),
    "301-phone": (lambda c: c.send_sms("dir_12345", "+447911000301"), 301, ErrorClass.INVALID, 422, "open", CREDS),
    "301-campaign": (lambda c: c.send_sms("dir_bad!", "+447911000001"), 301, ErrorClass.RUN, 422, "open", CREDS),
    "305": (lambda c: c.send_email("dir_12345", "bad305@example.com"), 305, ErrorClass.INVALID, 422, "open",
            CREDS),
    "502": (lambda c: c.send_sms("dir_nope", "+447911000001"), 502, ErrorClass.RUN, 404, "open", CREDS),
    "507": (lambda c: c.directory_info("dir_nope"), 507, ErrorClass.RUN, 404, "open", CREDS),
    "507-users": (lambda c: c.directory_users_page("dir_nope", 1), 507, ErrorClass.RUN, 404, "open", CREDS),
    "602": (lambda c: c.send_sms("dir_12345", "+447911000602"), 602, ErrorClass.TEMPORARY, 422, "open", CREDS),
    "604": (lambda c: c.send_email("dir_12345", "t604@example.com"), 604, ErrorClass.TEMPORARY, 422, "open",
            CREDS),
    "605": (lambda c: c.send_sms("dir_12345", "+447911000605"), 605, ErrorClass.BLACKLISTED, 422, "open", CREDS),
}


@pytest.fixture(scope="module", params=SHAPES, ids=lambda p: f"{p[0]}-{p[1]}")
def shaped_sandboxes(request):
    """Two sandboxes with one error shape and HTTP status mode: integrations on ("open") and off ("closed")."""
    shape, http_status = request.param
    common = {**CODES_SCENARIO, "error_shape": shape, "error_http_status": http_status}
    with running_sandbox(common) as open_url, \
            running_sandbox({**common, "integrations": {"sms": False, "email": False}}) as closed_url:
        yield {"open": open_url, "closed": closed_url, "mapped": http_status == "mapped"}


class TestDocumentedCodesOverASocket:
    @pytest.mark.parametrize("case", list(CODE_CASES))
    def test_code_reads_with_its_documented_class(self, shaped_sandboxes, case):
        """Each documented code, scalar or list, under 200 or its mapped status, gets its documented class."""
        action, code, cls, mapped_status, which, credentials = CODE_CASES[case]
        error = raised(shaped_sandboxes[which], action, credentials=credentials)
        assert isinstance(error, APIError), error
        assert error.code == code
        assert error.http_status == (mapped_status if shaped_sandboxes["mapped"] else 200)
        assert Policy().classify(error) is cls
        assert error.message  # the API's text is kept for the report

    def test_campaign_301_message_survives_the_envelope(self, shaped_sandboxes):
        """The campaign 301's text reaches the client in either envelope."""
        error = raised(shaped_sandboxes["open"], CODE_CASES["301-campaign"][0])
        assert "parameter: campaign" in error.message.lower()
        assert error.message.replace(" ", "") == CAMPAIGN_301_MESSAGE.replace(" ", "")

    def test_success_is_returned_as_the_envelope(self, shaped_sandboxes):
        """An accepted SMS comes back as the OK envelope with the API's string fields."""
        answer = run(call_with(shaped_sandboxes["open"], lambda c: c.send_sms("dir_12345", "+447911000001")))
        assert answer["status"]["status"] == "OK" and answer["phone"] == "447911000001"


class TestCredentials:
    def test_credentials_travel_in_headers_only(self):
        """X-Client-Id / X-Client-Secret are headers; neither value is in the URL or the JSON body."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, content=OK_BODY)

        credentials = Credentials("client-id-42", "secret-value-17")
        client = CoupontoolsClient(base_url="http://api.test/v3", credentials=credentials,
                                   transport=httpx.MockTransport(handler))
        run(_use(client, lambda c: c.send_sms("dir_12345", "+447911000001", body="Hi")))
        request = seen[0]
        assert request.method == "POST" and request.url.path == "/v3/send/sms"
        assert request.headers["X-Client-Id"] == "client-id-42"
        assert request.headers["X-Client-Secret"] == "secret-value-17"
        assert "client-id-42" not in str(request.url) and "secret-value-17" not in str(request.url)
        body = json.loads(request.content)
        assert body == {"campaign": "dir_12345", "phone": "+447911000001", "body": "Hi"}
        assert b"secret-value-17" not in request.content and b"client-id-42" not in request.content
        assert request.headers["content-type"].startswith("application/json")

    def test_default_poster_sends_credentials_in_headers_only(self):
        """The default (aiohttp) path puts the credentials in headers, not in the URL or body, on the wire."""
        captured: dict[str, bytes] = {}

        async def scenario() -> dict:
            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                captured["head"], captured["body"] = head, await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY))
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            async with server:
                return await call_with(f"http://127.0.0.1:{port}/v3",
                                       lambda c: c.send_email("dir_12345", "a@example.com", "Subj"),
                                       credentials=Credentials("client-id-42", "secret-value-17"))

        answer = run(scenario())
        assert answer["status"]["status"] == "OK"
        request_line, *header_lines = captured["head"].decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if h)}
        assert request_line.startswith("POST /v3/send/email ")
        assert "client-id-42" not in request_line and "secret-value-17" not in request_line
        assert headers["x-client-id"] == "client-id-42" and headers["x-client-secret"] == "secret-value-17"
        assert json.loads(captured["body"]) == {"campaign": "dir_12345", "email": "a@example.com",
                                                "subject": "Subj"}

    def test_secret_is_not_in_repr(self):
        """Credentials never print their secret (logs, tracebacks)."""
        assert "secret-value-17" not in repr(Credentials("id", "secret-value-17"))


async def _use(client: CoupontoolsClient, action: Callable[[CoupontoolsClient], Any]) -> Any:
    async with client:
        return await action(client)


# --- transport failures: surely not sent vs maybe sent -------------------------------------------

TRANSPORT_SCENARIO = {"rules": [
    {"match": {"exact": "+447911000900"}, "steps": [{"drop": True}]},
    {"match": {"exact": "+447911000901"}, "steps": [{"delay_ms": 1500, "ok": True}]},
    {"match": {"exact": "+447911000902"}, "steps": [{"garbage": True}]},
    {"match": {"exact": "+447911000903"}, "steps": [{"http": 503, "retry_after": 4}]},
    {"match": {"exact": "+447911000904"}, "steps": [{"http": 404}]},
    {"match": {"exact": "+447911000905"}, "steps": [{"http": 502}, {"ok": True}]},
]}


@pytest.fixture(scope="module")
def transport_sandbox(tmp_path_factory):
    log = tmp_path_factory.mktemp("transport") / "requests.log"
    with running_sandbox(TRANSPORT_SCENARIO, request_log=log) as url:
        yield url, log


def sms(phone: str) -> Callable[[CoupontoolsClient], Any]:
    return lambda client: client.send_sms("dir_12345", phone)


class TestTransportOverASocket:
    def test_connection_refused_is_not_sent(self):
        """Nobody listening: the request surely never left, NotSentError (temporary)."""
        error = raised(f"http://127.0.0.1:{closed_port()}/v3", sms("+447911000001"))
        assert isinstance(error, NotSentError) and error.error_class is ErrorClass.TEMPORARY

    def test_dropped_connection_is_maybe_sent(self, transport_sandbox):
        """The sandbox delivered then closed the socket: MaybeSentError (uncertain)."""
        url, log = transport_sandbox
        error = raised(url, sms("+447911000900"))
        assert isinstance(error, MaybeSentError) and error.error_class is ErrorClass.UNCERTAIN
        assert [l["result"] for l in read_request_log(log) if l["recipient"] == "+447911000900"] == ["drop"]

    def test_read_timeout_is_maybe_sent(self, transport_sandbox):
        """An answer slower than the read timeout: MaybeSentError, not a retryable error."""
        url, _ = transport_sandbox
        started = time.monotonic()
        error = raised(url, sms("+447911000901"), timeout=httpx.Timeout(0.3, connect=2.0))
        assert isinstance(error, MaybeSentError) and error.error_class is ErrorClass.UNCERTAIN
        assert time.monotonic() - started < 1.4

    def test_garbage_200_is_uncertain(self, transport_sandbox):
        """A 200 whose body is HTML: ProtocolError, uncertain."""
        error = raised(transport_sandbox[0], sms("+447911000902"))
        assert isinstance(error, ProtocolError) and error.error_class is ErrorClass.UNCERTAIN

    def test_bare_503_is_temporary_with_retry_after(self, transport_sandbox):
        """A plain 503 with Retry-After from the server: temporary, 4 seconds."""
        error = raised(transport_sandbox[0], sms("+447911000903"))
        assert isinstance(error, HTTPStatusError) and error.error_class is ErrorClass.TEMPORARY
        assert error.retry_after == 4.0 and error.http_status == 503

    def test_bare_502_is_uncertain_and_sent_once(self, transport_sandbox):
        """A plain 502 from the server: uncertain under the default policy, temporary only by [http]."""
        url, log = transport_sandbox
        error = raised(url, sms("+447911000905"))
        assert isinstance(error, HTTPStatusError) and error.http_status == 502
        assert Policy().classify(error) is ErrorClass.UNCERTAIN
        assert parse_policy({"http": {"502": "temporary"}}).classify(error) is ErrorClass.TEMPORARY
        assert [l["result"] for l in read_request_log(log) if l["recipient"] == "+447911000905"] == ["http_502"]

    def test_bare_404_stops_the_run(self, transport_sandbox):
        """A plain 404 (wrong URL) is a run problem."""
        error = raised(transport_sandbox[0], sms("+447911000904"))
        assert isinstance(error, HTTPStatusError) and error.error_class is ErrorClass.RUN

    def test_wrong_path_prefix_stops_the_run(self, transport_sandbox):
        """An API URL without /v3 hits aiohttp's own 404 page: a run problem, not a success."""
        url = transport_sandbox[0].removesuffix("/v3")
        error = raised(url, sms("+447911000001"))
        assert isinstance(error, HTTPStatusError) and error.error_class is ErrorClass.RUN


class BrokenStream(httpx.AsyncByteStream):
    """A body that yields a first chunk, then fails the way a cut connection does."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def __aiter__(self):
        yield b'{"status": {"sta'
        raise self.exc


class TestTransportWithMocks:
    @pytest.mark.parametrize("exc", [httpx.RemoteProtocolError("peer closed connection without sending "
                                                               "complete message body"),
                                     httpx.ReadError("connection reset"), ConnectionResetError(104, "reset")])
    def test_body_ending_mid_stream_is_maybe_sent(self, exc):
        """Headers came, the body broke off: the API may have acted, MaybeSentError."""
        client = mock_client(lambda request: httpx.Response(200, stream=BrokenStream(exc)))
        with pytest.raises(MaybeSentError):
            run(_use(client, sms("+447911000001")))

    @pytest.mark.parametrize("exc, expected", [
        (httpx.ConnectError("refused"), NotSentError),
        (httpx.ConnectTimeout("connect timed out"), NotSentError),
        (httpx.PoolTimeout("no free connection"), NotSentError),
        (httpx.ReadError("reset by peer"), MaybeSentError),
        (httpx.ReadTimeout("read timed out"), MaybeSentError),
        (httpx.WriteError("broken pipe"), MaybeSentError),
        (httpx.RemoteProtocolError("server disconnected"), MaybeSentError),
        (ConnectionResetError(104, "reset"), MaybeSentError),
    ])
    def test_transport_exceptions_split(self, exc, expected):
        """Errors before a connection exists are not sent; anything later is maybe sent."""
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc

        with pytest.raises(expected) as caught:
            run(_use(mock_client(handler), sms("+447911000001")))
        assert caught.value.__cause__ is exc

    def test_aiohttp_disconnect_beneath_an_httpx_connect_timeout_is_maybe_sent(self):
        """httpx-aiohttp may wrap a server disconnect as ConnectTimeout: the aiohttp cause decides."""
        import aiohttp

        try:
            try:
                raise aiohttp.ServerDisconnectedError()
            except aiohttp.ServerDisconnectedError as inner:
                raise httpx.ConnectTimeout("wrapped") from inner
        except httpx.ConnectTimeout as outer:
            assert isinstance(transport_error(outer), MaybeSentError)

    def test_garbage_200_from_a_mock_is_uncertain(self):
        """The same garbage 200 through the httpx path is a ProtocolError, uncertain."""
        client = mock_client(lambda request: httpx.Response(200, content=b"<html>oops</html>"))
        with pytest.raises(ProtocolError) as caught:
            run(_use(client, sms("+447911000001")))
        assert caught.value.error_class is ErrorClass.UNCERTAIN


# --- paging directory users -----------------------------------------------------------------------

PAGING_SIZES = {"dir_empty": 0, "dir_one": 1, "dir_hundred": 100, "dir_101": 101, "dir_12345": 250}


@pytest.fixture(scope="module")
def directories_sandbox(tmp_path_factory):
    log = tmp_path_factory.mktemp("paging") / "requests.log"
    scenario = {"directories": [{"id": d, "name": d, "users": n} for d, n in PAGING_SIZES.items()]}
    with running_sandbox(scenario, request_log=log) as url:
        yield url, log


async def collect(client: CoupontoolsClient, directory: str) -> list[dict]:
    return [user async for user in client.iter_directory_users(directory)]


class TestDirectoryPaging:
    @pytest.mark.parametrize("directory, pages", [("dir_empty", 1), ("dir_one", 1), ("dir_hundred", 2),
                                                  ("dir_101", 2), ("dir_12345", 3)])
    def test_every_user_once_in_as_few_pages_as_possible(self, directories_sandbox, directory, pages):
        """All users come back once, newest first, stopping at the first short page."""
        url, log = directories_sandbox
        before = len(read_request_log(log))
        users = run(call_with(url, lambda c: collect(c, directory)))
        count = PAGING_SIZES[directory]
        assert [u["ID"] for u in users] == [f"reg_{i:05d}" for i in range(1, count + 1)]
        calls = [l for l in read_request_log(log)[before:] if l["path"] == "/v3/directoryusers/list"]
        assert len(calls) == pages and all(l["campaign"] == directory for l in calls)

    def test_list_directories(self, directories_sandbox):
        """`directory/list` comes back as ID and name pairs."""
        found = run(call_with(directories_sandbox[0], lambda c: c.list_directories()))
        assert found == [{"id": d, "name": d} for d in PAGING_SIZES]

    def test_unknown_directory_raises_507(self, directories_sandbox):
        """Paging an unknown directory raises its 507 at once."""
        error = raised(directories_sandbox[0], lambda c: collect(c, "dir_nope"))
        assert isinstance(error, APIError) and error.code == 507

    def test_string_numbers_and_a_short_page_stop_the_loop(self):
        """Pages whose numbers are strings are read, and a page shorter than 100 is the last one."""
        asked: list[Any] = []

        def handler(request: httpx.Request) -> httpx.Response:
            page = json.loads(request.content)["page"]
            asked.append(page)
            first = (int(page) - 1) * 100
            size = 100 if int(page) < 3 else 42
            users = [{"ID": f"reg_{first + i:05d}", "phone": "", "email": f"u{first + i}@example.com",
                      "amount_of_logins": "1"} for i in range(size)]
            return httpx.Response(200, json={"status": {"status": "OK"}, "directory": "dir_x",
                                             "amount_of_users": "242", "page": str(page), "users": users})

        users = run(_use(mock_client(handler), lambda c: collect(c, "dir_x")))
        assert asked == [1, 2, 3]
        assert len(users) == 242 and len({u["ID"] for u in users}) == 242

    def test_missing_users_field_is_an_empty_page(self):
        """An OK page without a `users` list ends the loop instead of failing."""
        client = mock_client(lambda request: httpx.Response(200, json={"status": {"status": "OK"},
                                                                       "amount_of_users": "0"}))
        assert run(_use(client, lambda c: collect(c, "dir_x"))) == []

    def test_error_on_a_later_page_propagates(self):
        """A 602-style failure on page 2 is raised, not swallowed as the end of the directory."""
        def handler(request: httpx.Request) -> httpx.Response:
            if json.loads(request.content)["page"] == 1:
                users = [{"ID": f"reg_{i:05d}"} for i in range(100)]
                return httpx.Response(200, json={"status": {"status": "OK"}, "users": users})
            return httpx.Response(503, content=b"busy")

        with pytest.raises(HTTPStatusError):
            run(_use(mock_client(handler), lambda c: collect(c, "dir_x")))
