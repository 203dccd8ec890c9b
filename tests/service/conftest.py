"""Fixtures for the service: a real `dispatch serve` process on a real socket, over the suite's Redis."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_POLICY, ROOT, wait_until
from worker.cli.waiting import stop_process

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running `dispatch serve`: its base URL, token, environment and output so far."""

    url: str
    token: str
    env: dict[str, str]
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client that sends the bearer token."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=60, **kwargs)

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def start_service(env: dict[str, str], *args: str, port: int | None = None) -> Served:
    """Start `dispatch serve [ARGS]` and wait for its 'ready' line (the URL to open)."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "tasks", "serve", "--port", str(port), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", env.get("DISPATCH_API_TOKEN", ""), env, process)
    threading.Thread(target=lambda: served.output.extend(iter(process.stdout.readline, "")), daemon=True).start()
    try:
        wait_until(lambda: any("ready" in line for line in served.output) or process.poll() is not None,
                   timeout=60)
    except AssertionError:
        stop_service(served)
        raise AssertionError(f"dispatch serve did not start: {''.join(served.output)}") from None
    if process.poll() is not None:
        raise AssertionError(f"dispatch serve exited {process.returncode}: {''.join(served.output)}")
    return served


def stop_service(served: Served) -> None:
    stop_process(served.process, 20, term_group=True)


@pytest.fixture(scope="module")
def service_env(redis_server: str, tmp_path_factory) -> dict[str, str]:
    """The environment of the module's service and of the workers its tests start."""
    home = tmp_path_factory.mktemp("service-home")
    policy = home / "policy.toml"
    policy.write_text(FAST_POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUPONTOOLS_", "DISPATCH_"))}
    env.update({"REDIS_URL": redis_server, "DISPATCH_HOME": str(home), "DISPATCH_POLICY": str(policy),
                "PYTHONPATH": str(ROOT), "DISPATCH_API_TOKEN": TOKEN, "DISPATCH_STALL_TIMEOUT": "15"})
    return env


@pytest.fixture(scope="module")
def service(service_env: dict[str, str]) -> Iterator[Served]:
    """One `dispatch serve` for the test module (tests share it; each test flushes Redis itself
    through the `redis_url` fixture when it needs a clean slate)."""
    served = start_service(service_env)
    yield served
    stop_service(served)


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    """The built-in sandbox on a real socket, for the module."""
    from worker.sandbox import running_sandbox

    with running_sandbox() as url:
        yield url


@pytest.fixture
def messy_csv(tmp_path: Path) -> Path:
    """A CRM export with problems: a bad number, a duplicate, an empty cell, a formula and markup."""
    path = tmp_path / "messy.csv"
    path.write_text("name,phone\n"
                    "Ann,+447700900001\n"
                    "Bob,not a number\n"
                    "Cy,+44 7700 900001\n"
                    "<script>alert(1)</script>,+447700900002\n"
                    "Di,\n"
                    "=HYPERLINK(\"x\"),+447700900003\n", encoding="utf-8")
    return path
