"""Celery tasks and the producer API: `from tasks import submit`; task names `dispatch.*`."""
from __future__ import annotations

from tasks.app import app
from tasks.batches import create_run_from_records, publish_batch, send_batch, submit_task

__all__ = ["app", "submit", "send_batch", "submit_task", "publish_batch"]


def submit(*, recipients, channel: str, directory: str, body: str = "", subject: str = "",
           region: str | None = None, run_id: str | None = None, rate: float = 0.0,
           send_at: str | float | None = None, window: str = "", timezone: str = "",
           max_segments: int | None = None, phone_columns: tuple[str, ...] = (),
           email_columns: tuple[str, ...] = (), allow_landlines: bool = False,
           allow_smtputf8: bool = False) -> str:
    """Validate `recipients` (dicts with a phone or email), record the run and queue it; its ID.

    A `run_id` chosen by the caller makes this idempotent: submitting it twice creates one run.
    `body`/`subject` may name the records' keys (`Hi {first_name|there}`); `send_at` (ISO 8601 with an
    offset), `window` ("09:00-20:00" in each recipient's local time), `timezone` and `max_segments` as
    for `dispatch send` (../shared/spec/messages.md). `phone_columns`/`email_columns` name the keys to
    try, in order, for each record; `allow_landlines` and `allow_smtputf8` as for `dispatch send`.
    Workers (`dispatch worker`) do the sending.
    """
    return create_run_from_records(
        recipients, channel=channel, directory=directory, body=body, subject=subject, region=region,
        run_id=run_id, rate=rate, send_at=send_at, window=window, timezone=timezone, max_segments=max_segments,
        phone_columns=tuple(phone_columns), email_columns=tuple(email_columns), allow_landlines=allow_landlines,
        allow_smtputf8=allow_smtputf8)
