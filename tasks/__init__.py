"""Celery tasks and the producer API: `from tasks import submit`; task names `dispatch.*`."""
from __future__ import annotations

from tasks.app import app
from tasks.batches import create_run_from_records, publish_batch, send_batch, submit_task

__all__ = ["app", "submit", "send_batch", "submit_task", "publish_batch"]


def submit(*, recipients, channel: str, directory: str, body: str = "", subject: str = "",
           region: str | None = None, run_id: str | None = None, rate: float = 0.0) -> str:
    """Validate `recipients` (dicts with a phone or email), record the run and queue it; its ID.

    A `run_id` chosen by the caller makes this idempotent: submitting it twice creates one run.
    Workers (`dispatch worker`) do the sending.
    """
    return create_run_from_records(recipients, channel=channel, directory=directory,
                                   body=body, subject=subject, region=region, run_id=run_id, rate=rate)
