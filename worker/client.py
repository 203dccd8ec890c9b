"""The Coupontools v3 API client: the one boundary where HTTP, aiohttp and JSON errors become ours.

Underneath, a request goes through one of two posters:
- `AiohttpPoster` (the default): aiohttp directly. Measured on 2 cores against the sandbox at 100 in
  flight (bench/client_bench.py): 3,650 req/s and 165 µs of client CPU a request, against 1,900 req/s
  and 487 µs for the same calls through httpx over the httpx-aiohttp transport, and ~330 req/s for
  httpx's own pool. At thousands of sends a second the client's CPU is the worker's budget.
- `HttpxPoster`: any `httpx.AsyncBaseTransport` (tests inject `httpx.MockTransport` for what the sandbox
  cannot produce; `httpx_aiohttp.AiohttpTransport` or httpx's own pool work too).

Reading an answer (`read_answer`) is a pure function of status, headers and body, so both error
envelopes, every HTTP status and every malformed body are tested without a socket.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

from worker.catalogue import HTTP_STATUS_CLASS, ErrorClass, http_status_class
from worker.errors import (APIError, CoupontoolsError, HTTPStatusError, MaybeSentError, NotSentError,
                           ProtocolError)

USERS_PER_PAGE = 100
MAX_DIRECTORY_PAGES = 100_000  # a guard against an API that never returns a short page


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"X-Client-Id": self.client_id, "X-Client-Secret": self.client_secret}


class AiohttpPoster:
    """POSTs JSON over one aiohttp session: keep-alive, at most `max_connections` sockets."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: httpx.Timeout,
                 max_connections: int) -> None:
        self.base_url = base_url
        self.headers = headers
        # total: a server that trickles bytes cannot hold a request (and its batch) past connect + read
        self.timeout = aiohttp.ClientTimeout(total=timeout.connect + timeout.read, sock_connect=timeout.connect,
                                             sock_read=timeout.read)
        self.max_connections = max_connections
        self.session: aiohttp.ClientSession | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        if self.session is None:  # created inside the running loop
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30)
            self.session = aiohttp.ClientSession(connector=connector, headers=self.headers,
                                                 timeout=self.timeout, json_serialize=json.dumps)
        async with self.session.post(self.base_url + path, json=payload, allow_redirects=False) as response:
            return response.status, response.headers, await response.read()

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


class HttpxPoster:
    """POSTs JSON through an httpx transport (MockTransport in tests, or any other)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: httpx.Timeout,
                 transport: httpx.AsyncBaseTransport) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        response = await self.http.post(path, json=payload)
        return response.status_code, response.headers, response.content

    async def aclose(self) -> None:
        await self.http.aclose()


class CoupontoolsClient:
    """One long-lived client per process (or per command): keep-alive, bounded connections."""

    def __init__(self, *, base_url: str, credentials: Credentials, timeout: httpx.Timeout | None = None,
                 max_connections: int = 100, transport: httpx.AsyncBaseTransport | None = None) -> None:
        base_url = base_url.rstrip("/") + "/"
        headers = {**credentials.headers(), "Accept": "application/json"}
        timeout = timeout or httpx.Timeout(30.0, connect=5.0)
        self._poster: AiohttpPoster | HttpxPoster = (
            HttpxPoster(base_url, headers, timeout, transport) if transport is not None
            else AiohttpPoster(base_url, headers, timeout, max_connections))

    async def __aenter__(self) -> CoupontoolsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._poster.aclose()

    async def call(self, endpoint: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST `payload` to `endpoint`; the success envelope as a dict, or a CoupontoolsError."""
        try:
            status, headers, body = await self._poster.post(endpoint.lstrip("/"), dict(payload))
        except (httpx.HTTPError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise transport_error(exc) from exc
        return read_answer(status, headers, body)

    async def send_sms(self, campaign: str, phone: str, body: str | None = None) -> dict[str, Any]:
        payload = {"campaign": campaign, "phone": phone}
        if body:
            payload["body"] = body
        return await self.call("send/sms", payload)

    async def send_email(self, campaign: str, email_address: str, subject: str | None = None) -> dict[str, Any]:
        payload = {"campaign": campaign, "email": email_address}
        if subject:
            payload["subject"] = subject
        return await self.call("send/email", payload)

    async def list_directories(self) -> list[dict[str, str]]:
        answer = await self.call("directory/list", {})
        return [_directory_summary(item) for item in _as_list(answer.get("directories"))]

    async def directory_info(self, directory: str) -> dict[str, Any]:
        answer = await self.call("directory/info", {"directory": directory})
        info = answer.get("directory")
        return info if isinstance(info, dict) else answer

    async def directory_users_page(self, directory: str, page: int) -> list[dict[str, Any]]:
        answer = await self.call("directoryusers/list", {"directory": directory, "page": page})
        return [user for user in _as_list(answer.get("users")) if isinstance(user, dict)]

    async def iter_directory_users(self, directory: str) -> AsyncIterator[dict[str, Any]]:
        """Every registered user, page by page (100 a page); stops on a short or empty page."""
        for page in range(1, MAX_DIRECTORY_PAGES + 1):
            users = await self.directory_users_page(directory, page)
            for user in users:
                yield user
            if len(users) < USERS_PER_PAGE:
                return


def read_answer(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The success envelope, or the right CoupontoolsError for anything else, whatever the status."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    document = _json_or_none(body)
    state = _envelope_state(document)
    if state is None:
        raise _bare_status_error(status, retry_after, body)
    if state.upper() == "OK" and status < 400:
        return document  # type: ignore[return-value]
    code, message = _error_fields(document["status"].get("errors"))  # type: ignore[index]
    if code is None:  # at 429/5xx the HTTP status decides, as if there were no envelope
        if status == 429 or status >= 500:
            raise _bare_status_error(status, retry_after, body)
        raise ProtocolError(f"error envelope without an error code (HTTP {status})", http_status=status,
                            error_class=ErrorClass.FAILED)
    raise APIError(code, message, http_status=status, retry_after=retry_after)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested arrays
        return None


def _envelope_state(document: Any) -> str | None:
    """`status.status` of the envelope, or None when the body is not the API's envelope."""
    if not isinstance(document, dict) or not isinstance(document.get("status"), dict):
        return None
    state = document["status"].get("status")
    return state if isinstance(state, str) and state else None


def _error_fields(errors: Any) -> tuple[int | None, str]:
    """(code, message) from the scalar or the list error envelope."""
    if not isinstance(errors, dict):
        return None, ""
    code = _first(errors.get("error_code"))
    message = " ".join(str(part) for part in (
        _first(errors.get("error_message")), _first(errors.get("error_message_description"))) if part)
    return _lenient_int(code), message


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _lenient_int(value: Any) -> int | None:
    """Numbers arrive as strings too (`"602"`)."""
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _bare_status_error(status: int, retry_after: float | None, body: bytes) -> CoupontoolsError:
    """An answer that is not the envelope: its HTTP status decides what it means (HTTP_STATUS_CLASS)."""
    if 200 <= status < 300:
        # The API may have acted on the request: never resend automatically.
        return ProtocolError(f"HTTP {status} with a body that is not the API's JSON envelope "
                             f"({len(body)} bytes)", http_status=status)
    error_class = http_status_class(status)
    if status in HTTP_STATUS_CLASS or 500 <= status <= 599:
        # 429/503/408: retry later; 500/502/504: a server behind the gateway may have acted, uncertain.
        return HTTPStatusError(f"HTTP {status} from the API", http_status=status, retry_after=retry_after,
                               error_class=error_class)
    return HTTPStatusError(f"HTTP {status} without an API error envelope (is the API URL right?)",
                           http_status=status, retry_after=retry_after, error_class=error_class)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def transport_error(exc: BaseException) -> CoupontoolsError:
    """Split a failed exchange into 'surely not sent' and 'maybe sent'."""
    message = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if _never_left(exc):
        return NotSentError(message)
    return MaybeSentError(message)


def _never_left(exc: BaseException) -> bool:
    """True only when the request cannot have reached the server (no connection was made)."""
    causes = _causes(exc)
    if any(isinstance(c, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)) for c in causes):
        return True
    if any(isinstance(c, aiohttp.ClientError) for c in causes):
        return False  # httpx-aiohttp maps e.g. ServerDisconnectedError to ConnectTimeout: look beneath
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                            httpx.UnsupportedProtocol, httpx.InvalidURL))


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _directory_summary(item: Any) -> dict[str, str]:
    if not isinstance(item, dict):
        return {"id": str(item), "name": ""}
    ident = item.get("ID") or item.get("id") or item.get("directory") or ""
    return {"id": str(ident), "name": str(item.get("name") or item.get("title") or "")}
