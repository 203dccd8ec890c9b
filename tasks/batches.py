"""The Celery tasks: thin shells that take IDs and plain JSON and call worker/ functions."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import redis
import structlog
from celery import signals

from tasks.app import app
from tasks.runtime import producer_dispatch, runtime
from worker import keys, webhooks
from dataclasses import fields as dataclass_fields

from worker.campaigns import Campaign
from worker.errors import UsageError
from worker.logs import configure

SWEEP_EVERY = 0.5  # seconds between looks for due retries and stopped runs
log = structlog.get_logger("dispatch.tasks")


def publish_batch(run_id: str, rows: list[int]) -> None:
    """Queue one batch of rows of a run (the Publisher that worker.runs is handed)."""
    send_batch.apply_async(args=(run_id, rows))


INFRA_RETRY_DELAY = 5  # seconds; a batch that met a Redis outage goes again (same task ID, same claims)
INFRA_MAX_RETRIES = 60


@app.task(name="dispatch.send_batch", bind=True, max_retries=INFRA_MAX_RETRIES)
def send_batch(self, run_id: str, rows: list[int]) -> dict:
    rt = runtime()
    structlog.contextvars.bind_contextvars(run_id=run_id, task_id=self.request.id)
    try:
        result = rt.loop.run_until_complete(rt.sender.run_batch(run_id, rows, task_id=self.request.id))
        if result.stopped:
            rt.runs.finalize_untried(run_id)
        return result.tally
    except (redis.RedisError, OSError) as exc:
        # Celery keeps the task ID on retry: rows this batch claimed read as uncertain, never resent.
        log.warning("batch met an infrastructure error; retrying", error=f"{type(exc).__name__}: {exc}")
        raise self.retry(exc=exc, countdown=INFRA_RETRY_DELAY) from None
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name="dispatch.submit", bind=True, max_retries=0)
def submit_task(self, *, recipients: list[dict], channel: str, directory: str, body: str = "",
                subject: str = "", region: str | None = None, run_id: str | None = None,
                rate: float = 0.0, **message_options: object) -> str:
    """`app.send_task("dispatch.submit", kwargs=…)`: record and queue a run from a producer's list.

    Without a `run_id` the run is named after the message's task ID, so a redelivered message (the
    worker died while recording) continues the same run instead of creating a second one."""
    return create_run_from_records(recipients, channel=channel, directory=directory, body=body,
                                   subject=subject, region=region, run_id=run_id or f"run_{self.request.id}",
                                   rate=rate, source="celery", **message_options)


def create_run_from_records(recipients, *, source: str = "python", publish=publish_batch,
                            **campaign: object) -> str:
    """`submit()` and the `dispatch.submit` task: the application layer's start_from_records.
    `campaign` holds worker.campaigns.Campaign's fields (channel, directory, body, send_at, …)."""
    run_id = campaign.pop("run_id", None)
    campaign["rate"] = float(campaign["rate"]) if campaign.get("rate") else None
    for name in ("phone_columns", "email_columns"):  # JSON task arguments bring lists
        if isinstance(campaign.get(name), list):
            campaign[name] = tuple(campaign[name])
    unknown = set(campaign) - {f.name for f in dataclass_fields(Campaign)}
    if unknown:
        raise UsageError(f"submit() does not take {', '.join(sorted(unknown))}.")
    dispatch = producer_dispatch().publishing_with(publish)
    return dispatch.start_from_records(Campaign(**campaign), recipients, run_id=run_id, source=source)


@signals.worker_process_init.connect
def _child_logging(**_: object) -> None:
    configure(json_lines=True)


@signals.worker_ready.connect
def _start_sweeper(sender=None, **_: object) -> None:
    configure(json_lines=True)
    name = getattr(sender, "hostname", None) or socket.gethostname()
    threading.Thread(target=_sweep_forever, args=(name,), name="dispatch-sweeper", daemon=True).start()


_shutting_down = threading.Event()  # set once this worker began to stop: no more heartbeats
_heartbeat_lock = threading.Lock()  # a heartbeat is never written after the shutdown removed it
_heartbeats: dict[str, redis.Redis] = {}  # hostname → the client that writes its heartbeat


def _heartbeat(client: redis.Redis, hostname: str) -> None:
    """Say this worker is alive (ZADD dispatch:workers), unless it is shutting down."""
    with _heartbeat_lock:
        if _shutting_down.is_set():
            return
        _heartbeats[hostname] = client
        client.zadd(keys.WORKERS, {hostname: time.time()})


@signals.worker_shutting_down.connect
def _heartbeat_gone_on_shutdown(**_: object) -> None:
    _remove_heartbeat()


@signals.worker_shutdown.connect
def _heartbeat_gone_on_stop(**_: object) -> None:
    _remove_heartbeat()


def _remove_heartbeat() -> None:
    """Stop heartbeats and remove this worker's, so `--wait` sees at once that nobody consumes."""
    with _heartbeat_lock:
        _shutting_down.set()
        beating = list(_heartbeats.items())
    for hostname, client in beating:
        try:
            client.zrem(keys.WORKERS, hostname)
        except redis.RedisError:
            log.warning("could not remove this worker's heartbeat; it ages out by itself")


def _sweep_forever(hostname: str) -> None:
    """Queue due retries, end untried rows of stopped runs, and say this worker is alive."""
    runs = runtime().runs
    while True:
        _stop_if_orphaned()
        try:
            _heartbeat(runs.redis, hostname)
            runs.sweep(publish_batch)
            webhooks.deliver_in_background(runs.redis, runtime().settings)  # one ZRANGEBYSCORE when idle
        except Exception:  # keep sweeping through a Redis restart
            log.exception("sweep failed")
        time.sleep(SWEEP_EVERY)


def _stop_if_orphaned() -> None:
    """A local worker started by `send --wait` shuts down (warmly) when that command is gone."""
    parent = os.environ.get("DISPATCH_STOP_WITH_PID")
    if not parent:
        return
    try:
        os.kill(int(parent), 0)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGTERM)
