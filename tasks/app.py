"""The Celery app, configured from the environment on first use, with delivery settings chosen on purpose.

- `task_acks_late` + `task_reject_on_worker_lost`: a batch whose worker dies is delivered again; the
  per-row claims in Redis (worker.scripts) turn that redelivery into `uncertain`, never a second send.
- `visibility_timeout` (DISPATCH_VISIBILITY_TIMEOUT, default 120 s) is longer than any batch: a batch
  stops claiming after a third of it and hands the rest to a new task; retry waits live in Redis
  (`due` sets) and never in ETA/countdown messages, so no message outlives the timeout.
- `worker_prefetch_multiplier = 1`: a worker holds one spare batch, not dozens that a crash would strand.
- Broker connection retried forever: a Redis restart pauses workers instead of killing them.
"""
from __future__ import annotations

from celery import Celery

from worker.redis_server import resolve_redis_url
from worker.settings import Settings

QUEUE = "dispatch"

app = Celery("dispatch", include=["tasks.batches"])


def celery_config(settings: Settings, broker_url: str) -> dict:
    return {
        "broker_url": broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,  # our structlog JSON lines go to stderr as they are
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
    }


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    settings = Settings.from_env()
    sender.conf.update(celery_config(settings, resolve_redis_url(settings)))
