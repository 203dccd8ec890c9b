"""The Redis key layout, in one place. Every key of a run shares the `{run}` hash tag (cluster-safe).

    dispatch:runs                       ZSET   run IDs by creation time
    dispatch:run:{ID}                   HASH   run metadata: state, channel, directory, total, reason,
                                               recorded (1 once every row is recorded), touched_at, …
    dispatch:run:{ID}:rows              HASH   row number → JSON [status, attempts, code, message,
                                               recipient, owner, due] (worker.scripts.Record)
    dispatch:run:{ID}:fields            HASH   row number → JSON list of the fields its message uses
    dispatch:run:{ID}:counts            HASH   status → number of rows
    dispatch:run:{ID}:due               ZSET   rows waiting to retry, scored by when they may go
    dispatch:run:{ID}:parked            SET    rows set aside while the run is paused
    dispatch:run:{ID}:deliveries        HASH   batch task ID → deliveries that died unfinished (poison)
    dispatch:run:{ID}:leases            ZSET   live batch deliveries (owner) → lease expiry (unix time)
    dispatch:run:{ID}:reconciling       STRING a sweeper is reconciling the run (lock with a TTL)
    dispatch:run:{ID}:hold              STRING set while the API asked us to slow down (429); TTL
    dispatch:suppressed:{channel}       SET    normalised addresses never to contact
    dispatch:rate:{scope}               HASH   shared token bucket (tokens, stamp)
    dispatch:active                     SET    runs that may still have work for the sweepers
    dispatch:forgotten                  HASH   run ID → when it was forgotten (its ID is never reused)
    dispatch:workers                    ZSET   worker heartbeats (hostname → last seen)
    dispatch:webhooks                   ZSET   webhook outbox: delivery ID → when to POST next (or lease end)
    dispatch:webhook:ID                 HASH   one announcement: url, body, run, attempts, first_at, …
    dispatch:webhooks:failed            ZSET   deliveries given up after 24 h → when (the last 1,000)
    dispatch:metrics                    HASH   Prometheus counters of every worker (worker.metrics)
    dispatch:upload:{ID}                HASH   a checked upload (draft run): summary JSON, channel, …; 24 h
    dispatch:upload:{ID}:rows           LIST   its verdicts in row order (JSON arrays); 24 h

The webhook and metrics keys are global, like dispatch:active: the announcement script spans a run
and the outbox, so it needs one Redis (not a cluster).
"""
from __future__ import annotations

PREFIX = "dispatch"
RUNS = f"{PREFIX}:runs"
WORKERS = f"{PREFIX}:workers"
ACTIVE = f"{PREFIX}:active"
FORGOTTEN = f"{PREFIX}:forgotten"
WEBHOOKS = f"{PREFIX}:webhooks"
WEBHOOKS_FAILED = f"{PREFIX}:webhooks:failed"
METRICS = f"{PREFIX}:metrics"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{{{run_id}}}"


def rows(run_id: str) -> str:
    return f"{run(run_id)}:rows"


def row_fields(run_id: str) -> str:
    """HASH row → JSON list of the values the run's template (and send window) use, in RunSpec.fields
    order; only for runs that need them."""
    return f"{run(run_id)}:fields"


def counts(run_id: str) -> str:
    return f"{run(run_id)}:counts"


def due(run_id: str) -> str:
    return f"{run(run_id)}:due"


def parked(run_id: str) -> str:
    return f"{run(run_id)}:parked"


def deliveries(run_id: str) -> str:
    return f"{run(run_id)}:deliveries"


def hold(run_id: str) -> str:
    return f"{run(run_id)}:hold"


def leases(run_id: str) -> str:
    return f"{run(run_id)}:leases"


def reconciling(run_id: str) -> str:
    return f"{run(run_id)}:reconciling"


def run_keys(run_id: str) -> list[str]:
    """Every key of one run (what `forget` deletes)."""
    return [run(run_id), rows(run_id), row_fields(run_id), counts(run_id), due(run_id), parked(run_id),
            deliveries(run_id), hold(run_id), leases(run_id), reconciling(run_id), rate(run_id)]


def script_keys(run_id: str, channel: str) -> list[str]:
    """The keys the recipient state scripts (worker.scripts) touch, in the order they expect them."""
    return [run(run_id), rows(run_id), counts(run_id), due(run_id), parked(run_id), hold(run_id),
            suppressed(channel), leases(run_id)]


def webhook(delivery_id: str) -> str:
    return f"{PREFIX}:webhook:{delivery_id}"


def suppressed(channel: str) -> str:
    return f"{PREFIX}:suppressed:{channel}"


def rate(scope: str) -> str:
    return f"{PREFIX}:rate:{{{scope}}}"


def upload(upload_id: str) -> str:
    """HASH: a checked upload's summary (JSON), channel, region, filename, rows; expires after a day."""
    return f"{PREFIX}:upload:{{{upload_id}}}"


def upload_rows(upload_id: str) -> str:
    """LIST: the upload's verdicts in row order, one JSON array each (worker.uploads)."""
    return f"{upload(upload_id)}:rows"
