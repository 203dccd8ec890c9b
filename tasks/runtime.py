"""Per-process worker state: settings, Redis, one event loop and one Sender, built after the fork."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from worker.campaigns import Dispatch
from worker.engine import Sender
from worker.policy import Policy, load_policy
from worker.redis_server import connect, resolve_redis_url
from worker.runs import Runs
from worker.settings import Settings

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
    uvloop = None


@dataclass
class Runtime:
    settings: Settings
    policy: Policy
    runs: Runs
    loop: asyncio.AbstractEventLoop
    sender: Sender
    pid: int


_runtime: Runtime | None = None
_producer: tuple[int, Dispatch] | None = None


def producer_dispatch() -> Dispatch:
    """The application layer alone, for producers (`submit`): no event loop, no HTTP client."""
    global _producer
    if _producer is None or _producer[0] != os.getpid():
        _producer = (os.getpid(), Dispatch(Settings.from_env(), _publish))
    return _producer[1]


def _publish(run_id: str, rows: list[int]) -> None:
    from tasks.batches import publish_batch

    publish_batch(run_id, rows)


def _run_store(settings: Settings, url: str) -> Runs:
    return Runs(connect(url), batch_size=settings.batch_size, stall_timeout=settings.stall_timeout,
                webhook_url=settings.webhook_url)


def runtime() -> Runtime:
    """This process's Runtime, created on first use (and again in a forked child)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = _build()
    return _runtime


def _build() -> Runtime:
    settings = Settings.from_env()
    url = resolve_redis_url(settings)
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    policy = load_policy(settings.policy_file)
    return Runtime(settings=settings, policy=policy, runs=_run_store(settings, url),
                   loop=loop, sender=Sender(settings, policy, url), pid=os.getpid())
