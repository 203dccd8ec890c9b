"""Fixtures for the sandbox tests: sandboxes running as subprocesses, and a client that talks to them."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.sandbox import running_sandbox

CREDENTIALS = {"X-Client-Id": "sandbox", "X-Client-Secret": "sandbox"}

SCRIPTED = {
    "directories": [{"id": "dir_12345", "name": "Sample directory", "users": 250},
                    {"id": "dir_empty", "name": "Empty", "users": 0},
                    {"id": "dir_one", "name": "One", "users": 1},
                    {"id": "dir_hundred", "name": "Hundred", "users": 100},
                    {"id": "dir_101", "name": "Hundred and one", "users": 101}],
    "rules": [
        {"channel": "sms", "match": {"suffix": "605"}, "steps": [{"error": 605}]},
        {"match": {"exact": "+447911000777"}, "steps": [{"error": 602, "message": "Try later."}]},
        {"channel": "email", "match": {"regex": "^retry"},
         "steps": [{"http": 503}, {"http": 429, "retry_after": 2}, {"ok": True}]},
        {"match": {"regex": "^seq"}, "steps": [{"error": 602}, {"ok": True}]},
        {"match": {"exact": "slow@example.com"}, "steps": [{"delay_ms": 300, "ok": True}]},
        {"match": {"exact": "garbage@example.com"}, "steps": [{"garbage": True}]},
        {"match": {"exact": "drop@example.com"}, "steps": [{"drop": True}]},
    ],
}


class Api:
    """A tiny synchronous caller for one sandbox."""

    def __init__(self, base_url: str, log: Path | None = None) -> None:
        self.base_url = base_url
        self.log = log
        self.client = httpx.Client(timeout=10)

    def post(self, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = CREDENTIALS) -> httpx.Response:
        return self.client.post(f"{self.base_url}/{path}", json=body or {}, headers=headers)

    def sms(self, phone: str, campaign: str = "dir_12345") -> httpx.Response:
        return self.post("send/sms", {"campaign": campaign, "phone": phone})

    def email(self, email: str, campaign: str = "dir_12345") -> httpx.Response:
        return self.post("send/email", {"campaign": campaign, "email": email})


def _api(scenario: dict[str, Any] | None, log: Path | None = None) -> Iterator[Api]:
    with running_sandbox(scenario, log) as url:
        api = Api(url, log)
        yield api
        api.client.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The scripted sandbox, with a request log."""
    yield from _api(SCRIPTED, tmp_path_factory.mktemp("log") / "requests.jsonl")


@pytest.fixture(scope="module")
def mapped_api() -> Iterator[Api]:
    """A sandbox answering list envelopes with mapped HTTP statuses."""
    yield from _api({"error_shape": "list", "error_http_status": "mapped",
                     "rules": [{"match": {"regex": r"^\+4479110006(\d\d)$"}, "steps": [{"error": 602}]},
                               {"match": {"exact": "err301"}, "steps": [{"error": 305}]}]})


@pytest.fixture(scope="module")
def closed_api() -> Iterator[Api]:
    """A sandbox with both integrations off and its own credentials."""
    yield from _api({"integrations": {"sms": False, "email": False},
                     "credentials": {"client_id": "me", "client_secret": "s3cret"}})
