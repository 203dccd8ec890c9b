"""The sandbox HTTP server: answers /v3/... like the Coupontools API, as a Scenario scripts it.

Endpoints (all POST, JSON body; credentials in X-Client-Id / X-Client-Secret or client_id /
client_secret in the body). Success answers, numbers as strings like the real API:

    send/sms             {"status": {"status": "OK"}, "campaign": "dir_12345", "message": "SMS sent.",
                          "phone": "447911123456"}
    send/email           {"status": {"status": "OK"}, "campaign": "dir_12345", "message": "Email sent.",
                          "email": "a@example.com"}
    directory/list       {"status": ..., "directories": [{"ID": "dir_12345", "name": "Sample directory",
                          "amount_of_users": "250"}]}
    directory/info       {"status": ..., "directory": {"ID": "dir_12345", "name": "Sample directory",
                          "amount_of_users": "250"}}
    directoryusers/list  {"status": ..., "directory": "dir_12345", "subaccount": "",
                          "amount_of_users": "250", "page": "1", "users": [...100 at most...]}

Checks run in this order: rate limit (HTTP 429), credentials (1000), parameters (200 missing, 301
campaign characters, 300 bad page), integration (103/104), campaign or directory existence (502/507),
then the scenario's rules. Error envelopes are scalar or list (`error_shape`); in the list form
`error_message` holds the "HTTP/1.0 … ." status line and `error_message_description` the rest of the
message. Every request to an endpoint is appended to the request log before it is answered; for the
directory endpoints `campaign` holds the `directory` parameter and `recipient` is null.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from worker.catalogue import CAMPAIGN_301_MESSAGE, default_message
from worker.sandbox.scenario import Directory, Rule, Scenario, Step, load_scenario

USERS_PER_PAGE = 100
CAMPAIGN_CHARS = re.compile(r"[A-Za-z0-9_]+")
JSON = "application/json"
OK_STATUS = {"status": "OK"}
DROP = None  # the "response" of a dropped request: the connection is closed instead

Answer = tuple[Any, web.Response | None]  # (result for the request log, response or DROP)

HTTP_REASONS = {401: "Unauthorized", 404: "Not Found", 422: "Unprocessable entity"}


class Sandbox:
    """The server's state: the scenario, per-recipient attempt counts, the rate window, the log."""

    def __init__(self, scenario: Scenario, request_log: Path | None) -> None:
        self.scenario = scenario
        self.directories = {d.id: d for d in scenario.directories}
        self.latency_s = scenario.latency_ms / 1000
        self.attempts: dict[str, int] = {}
        self.window = 0
        self.window_count = 0
        self.log_fd = _open_log(request_log) if request_log is not None else None

    # --- handlers ---

    async def send_sms(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, "sms", "phone")

    async def send_email(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, "email", "email")

    async def directory_list(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        answer = self._refusal(request, body) or ("ok", _ok({"directories": [
            _directory_summary(d) for d in self.scenario.directories]}))
        return await self._finish(request, None, None, answer)

    async def directory_info(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        directory_id = _text(body.get("directory"))
        answer = (self._refusal(request, body) or self._directory_refusal(directory_id, 1)
                  or ("ok", _ok({"directory": _directory_summary(self.directories[directory_id])})))
        return await self._finish(request, directory_id, None, answer)

    async def directory_users(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        directory_id = _text(body.get("directory"))
        page = _page_number(body.get("page", 1))
        answer = (self._refusal(request, body) or self._directory_refusal(directory_id, page)
                  or ("ok", _ok(_users_page(self.directories[directory_id], page or 1))))
        return await self._finish(request, directory_id, None, answer)

    # --- the send path ---

    async def _send(self, request: web.Request, channel: str, field: str) -> web.StreamResponse:
        body = await _json_body(request)
        campaign, recipient = _text(body.get("campaign")), _text(body.get(field))
        answer = (self._refusal(request, body)
                  or self._send_refusal(channel, field, campaign, recipient)
                  or await self._scripted(channel, campaign, recipient))
        text = _text(body.get("body" if channel == "sms" else "subject"))
        return await self._finish(request, campaign, recipient, answer, text)

    def _send_refusal(self, channel: str, field: str, campaign: str, recipient: str) -> Answer | None:
        if not campaign:
            return 200, self._error(200, _missing_message("campaign"))
        if not CAMPAIGN_CHARS.fullmatch(campaign):
            return 301, self._error(301, CAMPAIGN_301_MESSAGE)
        if not recipient:
            return 200, self._error(200, _missing_message(field))
        if not getattr(self.scenario.integrations, channel):
            code = 103 if channel == "sms" else 104
            return code, self._error(code)
        if campaign not in self.directories and not campaign.startswith("cam_"):
            return 502, self._error(502)
        return None

    async def _scripted(self, channel: str, campaign: str, recipient: str) -> Answer:
        rule = self._rule_for(channel, recipient)
        if rule is None:
            return "ok", _sent(channel, campaign, recipient)
        step = rule.step_for(self._next_attempt(recipient))
        if step.delay_ms:
            await asyncio.sleep(step.delay_ms / 1000)
        return self._step_answer(step, channel, campaign, recipient)

    def _rule_for(self, channel: str, recipient: str) -> Rule | None:
        return next((r for r in self.scenario.rules if r.matches(channel, recipient)), None)

    def _next_attempt(self, recipient: str) -> int:
        attempt = self.attempts.get(recipient, 0)
        self.attempts[recipient] = attempt + 1
        return attempt

    def _step_answer(self, step: Step, channel: str, campaign: str, recipient: str) -> Answer:
        if step.kind == "ok":
            return "ok", _sent(channel, campaign, recipient)
        if step.kind == "error":
            assert step.code is not None
            return step.code, self._error(step.code, step.message, recipient)
        if step.kind == "http":
            assert step.status is not None
            return f"http_{step.status}", _plain_status(step.status, step.retry_after)
        if step.kind == "garbage":
            return "garbage", web.Response(text="<html><body>Bad gateway</body></html>",
                                           content_type="text/html")
        return "drop", DROP

    # --- checks shared by every endpoint ---

    def _refusal(self, request: web.Request, body: dict[str, Any]) -> Answer | None:
        if self._over_rate_limit():
            return "http_429", _plain_status(429, 1)
        if not self._authorised(request, body):
            return 1000, self._error(1000)
        return None

    def _over_rate_limit(self) -> bool:
        limit = self.scenario.rate_limit_per_s
        if limit is None:
            return False
        second = int(time.monotonic())
        if second != self.window:
            self.window, self.window_count = second, 0
        self.window_count += 1
        return self.window_count > limit

    def _authorised(self, request: web.Request, body: dict[str, Any]) -> bool:
        credentials = self.scenario.credentials
        client_id = request.headers.get("X-Client-Id") or body.get("client_id")
        secret = request.headers.get("X-Client-Secret") or body.get("client_secret")
        return client_id == credentials.client_id and secret == credentials.client_secret

    def _directory_refusal(self, directory_id: str, page: int | None) -> Answer | None:
        if not directory_id:
            return 200, self._error(200, _missing_message("directory"))
        if page is None:
            return 300, self._error(300)
        if directory_id not in self.directories:
            return 507, self._error(507)
        return None

    # --- answers ---

    def _error(self, code: int, message: str | None = None, recipient: str = "X") -> web.Response:
        message = message or default_message(code, recipient)
        status = _mapped_status(code) if self.scenario.error_http_status == "mapped" else 200
        if self.scenario.error_shape == "list":
            errors = _list_errors(code, message, status)
        else:
            errors = {"error_code": code, "error_message": message}
        return _json_response({"status": {"status": "failed", "errors": errors}}, status)

    async def _finish(self, request: web.Request, campaign: str | None, recipient: str | None,
                      answer: Answer, text: str | None = None) -> web.StreamResponse:
        result, response = answer
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        self._log(request.path, campaign, recipient, result, text)
        if response is DROP:
            return _drop(request)
        return response

    def _log(self, path: str, campaign: str | None, recipient: str | None, result: Any,
             text: str | None = None) -> None:
        if self.log_fd is None:
            return
        entry = {"ts": time.time(), "path": path, "campaign": campaign or None, "recipient": recipient or None,
                 "result": result}
        if path.startswith("/v3/send/"):
            entry["text"] = text or None  # the body (SMS) or subject (email) it received
        line = json.dumps(entry, ensure_ascii=False)
        os.write(self.log_fd, line.encode() + b"\n")

    async def close(self, _app: web.Application) -> None:
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None


def build_app(scenario: Scenario | None = None, request_log: Path | None = None) -> web.Application:
    """The aiohttp application serving /v3/... for a scenario (defaults when None)."""
    sandbox = Sandbox(scenario or Scenario(), request_log)
    app = web.Application()
    app.router.add_post("/v3/send/sms", sandbox.send_sms)
    app.router.add_post("/v3/send/email", sandbox.send_email)
    app.router.add_post("/v3/directory/list", sandbox.directory_list)
    app.router.add_post("/v3/directory/info", sandbox.directory_info)
    app.router.add_post("/v3/directoryusers/list", sandbox.directory_users)
    app.on_cleanup.append(sandbox.close)
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, scenario: Scenario | str | Path | None = None,
          request_log: Path | None = None) -> None:
    """Serve until SIGINT/SIGTERM; prints the base URL (real port when `port` is 0) once listening."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    app = build_app(scenario, Path(request_log) if request_log is not None else None)
    _run(_serve_until_stopped(app, host, port))


async def _serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        print(base_url(host, runner.addresses[0][1]), flush=True)
        await stopped.wait()
    finally:
        await runner.cleanup()


def base_url(host: str, port: int) -> str:
    """The URL clients use: http://host:port/v3 (IPv6 hosts bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v3"


def _run(coroutine: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


# --- request and response helpers ---

async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _page_number(value: Any) -> int | None:
    """The page asked for (1-based), or None when it is not a positive whole number."""
    text = _text(value).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        return None
    return int(text) or None


def _missing_message(parameter: str) -> str:
    status_line, _ = default_message(200).rsplit(":", 1)
    return f"{status_line}: {parameter}"


def _json_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type=JSON)


def _ok(fields: dict[str, Any]) -> web.Response:
    return _json_response({"status": OK_STATUS, **fields})


def _sent(channel: str, campaign: str, recipient: str) -> web.Response:
    if channel == "sms":
        return _ok({"campaign": campaign, "message": "SMS sent.", "phone": recipient.lstrip("+")})
    return _ok({"campaign": campaign, "message": "Email sent.", "email": recipient})


def _plain_status(status: int, retry_after: float | None) -> web.Response:
    headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else None
    return web.Response(text=f"{status} sandbox", status=status, headers=headers)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection with no answer; aiohttp then has nothing to write to."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


def _mapped_status(code: int) -> int:
    if code in (1000, 101):
        return 401
    if 500 <= code <= 599:
        return 404
    return 422


def _list_errors(code: int, message: str, status: int) -> dict[str, Any]:
    """The list envelope: the "HTTP/1.0 …." status line apart from the description."""
    head, dot, rest = message.partition(". ")
    if message.startswith("HTTP/") and dot:
        status_line, description = head + ".", rest
    else:
        shown = status if status != 200 else 422
        status_line = f"HTTP/1.0 {shown} {HTTP_REASONS.get(shown, 'Error')}."
        description = message
    return {"error_message": status_line, "error_message_description": [description],
            "error_code": [code]}


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


# --- generated directory users ---

FIRST_NAMES = ("John", "Mary", "Ahmed", "Sofia", "Liam", "Olivia", "Noah", "Emma", "Ravi", "Chloe")
LAST_NAMES = ("Johnson", "Smith", "Khan", "Garcia", "Brown", "Taylor", "Wilson", "Evans", "Patel",
              "Murphy", "Walker", "Wright", "Green")
NEWEST_SEEN = datetime(2025, 1, 1, 13, 48, 22, tzinfo=UTC)


def _directory_summary(directory: Directory) -> dict[str, str]:
    return {"ID": directory.id, "name": directory.name, "amount_of_users": str(directory.users)}


def _users_page(directory: Directory, page: int) -> dict[str, Any]:
    first = (page - 1) * USERS_PER_PAGE + 1
    last = min(page * USERS_PER_PAGE, directory.users)
    return {"directory": directory.id, "subaccount": "", "amount_of_users": str(directory.users),
            "page": str(page), "users": [generated_user(i) for i in range(first, last + 1)]}


def generated_user(i: int) -> dict[str, str]:
    """User number i (1 is the newest) of any directory: same input, same user."""
    seen = NEWEST_SEEN - timedelta(minutes=7 * (i - 1))
    return {
        "ID": f"reg_{i:05d}",
        "last_seen": seen.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "amount_of_logins": str(1 + i % 9),
        "email": f"user{i:05d}@example.com",
        "phone": f"+447911{i:06d}",
        "first_name": FIRST_NAMES[i % len(FIRST_NAMES)],
        "last_name": LAST_NAMES[i % len(LAST_NAMES)],
        "gender": "female" if i % 2 else "male",
        "birthday": f"{1950 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "age_range": str(18 + i % 50),
        "payment_status": "",
        "payment_confirmation_id": "",
        "payment_confirmation_account": "",
    }
