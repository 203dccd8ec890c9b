"""The one list of recipient statuses and run states, and which of them are final."""
from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What happened to one input row."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRY_WAIT = "retry_wait"
    WAITING = "waiting"  # for the run's start (send_at) or the recipient's send window
    SENT = "sent"
    BLACKLISTED = "blacklisted"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"
    UNCERTAIN = "uncertain"


NOT_FINAL = frozenset({Status.PENDING, Status.IN_FLIGHT, Status.RETRY_WAIT, Status.WAITING})
FINAL = frozenset(Status) - NOT_FINAL


class RunState(StrEnum):
    """Where a whole run stands."""

    QUEUING = "queuing"  # recipients still being recorded; batches may already be sending
    SCHEDULED = "scheduled"  # recorded; starts sending at its send_at
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


# States in which workers may start new sends.
SENDING_STATES = frozenset({RunState.QUEUING, RunState.RUNNING})
# States that end a run for good.
STOPPED_STATES = frozenset({RunState.ABORTED, RunState.CANCELLED})
