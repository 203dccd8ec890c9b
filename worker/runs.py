"""Runs as the operator sees them: record a run, queue its batches, read its status and report, and
pause, resume, cancel or retry it. Synchronous (CLI, producers, worker housekeeping); the hot send
path lives in worker.engine. Publishing batches is handed in (`Publisher`): worker/ knows no Celery.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any, Protocol

import redis
import structlog

from worker import keys
from worker.errors import ConflictError, UnknownRunError, UsageError
from worker.ingest import Verdict
from worker.scripts import Ops, Record, Scripts
from worker.statuses import FINAL, NOT_FINAL, STOPPED_STATES, RunState, Status
from worker.webhooks import announce_finished

Publisher = Callable[[str, list[int]], None]  # (run_id, rows) → a batch task is queued


class RowPlan(Protocol):
    """What Runs.create asks of worker.plan.Plan (which imports this module)."""

    def record(self, recipient: str, fields: dict[str, str], now: float) -> Any: ...

ROW_CHUNK = 1000  # rows per pipelined write / read
SPREAD = 8  # a run of known size is cut into at least this many batches, so several processes share it
MIN_BATCH = 100
SWEEP_CHUNK = 5000  # rows per finalize / requeue script call
HEAL_LOCK_MS = 60_000  # a sweeper that dies while healing a run blocks other heals this long at most
DUE_LEASE = 60.0  # seconds before a row queued from `due` but never claimed is queued again
log = structlog.get_logger("dispatch.runs")
# A finished run leaves the sweepers' set only if it is still finished (a retry may have reopened it
# since the sweeper looked): KEYS run hash, active set; ARGV run ID.
LEAVE_ACTIVE = """
local state, finished = unpack(redis.call('HMGET', KEYS[1], 'state', 'finished_at'))
if not state or state == 'completed' or ((state == 'aborted' or state == 'cancelled') and finished) then
  return redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
"""
RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class RunSpec:
    """What to send and how; stored with the run so any worker can carry it out."""

    channel: str
    directory: str
    subject: str = ""
    body: str = ""
    region: str = ""
    rate: float = 0.0  # sends/s across all workers; 0: no run limit
    sandbox: bool = False  # use the sandbox credentials instead of the worker's own
    api_url: str = ""  # empty: the worker's configured API URL
    source: str = ""
    policy: str = ""  # JSON (worker.policy.policy_to_json); empty: each worker's own policy
    webhook_url: str = ""  # announce the run's end here (worker.webhooks); empty: the worker's own
    send_at: float = 0.0  # unix time the run starts sending (0: at once)
    window: str = ""  # recipients' local send window, "09:00-20:00" (worker.messages.Window)
    timezone: str = ""  # IANA zone for recipients whose number has none (and emails); empty: UTC
    max_segments: int = 0  # SMS segments a row's message may need (0: no limit)
    fields: str = ""  # comma-separated: the row fields stored for sending (template fields, timezone)
    address_field: str = ""  # the field name of the address column (its value is the recipient)

    def to_hash(self) -> dict[str, str]:
        return {k: str(int(v) if isinstance(v, bool) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> RunSpec:
        return cls(channel=data.get("channel", ""), directory=data.get("directory", ""),
                   subject=data.get("subject", ""), body=data.get("body", ""),
                   region=data.get("region", ""), rate=float(data.get("rate") or 0),
                   sandbox=data.get("sandbox") == "1", api_url=data.get("api_url", ""),
                   source=data.get("source", ""), policy=data.get("policy", ""),
                   webhook_url=data.get("webhook_url", ""), send_at=float(data.get("send_at") or 0),
                   window=data.get("window", ""), timezone=data.get("timezone", ""),
                   max_segments=int(data.get("max_segments") or 0), fields=data.get("fields", ""),
                   address_field=data.get("address_field", ""))


@dataclass(frozen=True)
class ReportRow:
    row: int
    recipient: str
    status: str
    error_code: int | None
    error_message: str
    attempts: int

    FIELDS = ("row", "recipient", "status", "error_code", "error_message", "attempts")


def is_recorded(meta: dict[str, str]) -> bool:
    """Whether every row of the run has been recorded (a run can complete only then). Runs made before
    the `recorded` flag existed count as recorded unless they are still queuing."""
    recorded = meta.get("recorded")
    if recorded is None:
        return bool(meta) and meta.get("state") != RunState.QUEUING
    return recorded == "1"


def new_run_id() -> str:
    return "run_" + time.strftime("%Y%m%d%H%M%S") + "_" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not run_id or len(run_id) > 100 or not set(run_id) <= RUN_ID_CHARS:
        raise UsageError(f"{run_id!r} is not a usable run ID (letters, digits, _ - . only, at most 100).")
    return run_id


def record(status: str, recipient: str, *, attempts: int = 0, code: int = 0, message: str = "",
           due: float = 0.0) -> str:
    """A new row record as the Lua scripts store it (worker.scripts.Record)."""
    return Record(status, attempts, code, message, recipient, "", due).encode()


class Runs:
    """Run bookkeeping over one Redis connection."""

    def __init__(self, client: redis.Redis, *, batch_size: int = 2000, stall_timeout: float = 180.0,
                 webhook_url: str | None = None) -> None:
        self.redis = client
        self.webhook_url = webhook_url  # where finished runs without a webhook_url of their own are announced
        self.batch_size = batch_size
        self.stall_timeout = stall_timeout
        self.scripts = Scripts(client)
        self._leave_active = client.register_script(LEAVE_ACTIVE)

    def ops(self, run_id: str, channel: str | None = None) -> Ops:
        return Ops(run_id, channel or self.meta(run_id)["channel"])

    # -- creating ---------------------------------------------------------------------------
    def create(self, spec: RunSpec, verdicts: Iterable[Verdict], publish: Publisher,
               run_id: str | None = None, expected_rows: int | None = None, plan: RowPlan | None = None) -> str:
        """Record every row and queue the valid ones; idempotent for a producer-given run_id.

        The run reads `queuing` until its recording is closed; it cannot complete before. With a
        `plan` (worker.plan.Plan: template, length limit, schedule, window) each valid row is
        checked against it, and rows that must wait are put in `due` for their time."""
        run_id = check_run_id(run_id) if run_id else new_run_id()
        if not self._open_run(run_id, spec):
            return run_id  # already fully recorded: submitting twice makes one run
        ops = Ops(run_id, spec.channel)
        size = self._batch_size(spec, expected_rows)
        batch: list[int] = []
        total = 0
        for chunk in _chunks(verdicts, ROW_CHUNK):
            total = chunk[-1].row
            batch.extend(self._put_chunk(run_id, ops, spec.channel, chunk, plan))
            while len(batch) >= size:
                publish(run_id, batch[:size])
                batch = batch[size:]
        if batch:
            publish(run_id, batch)
        self.scripts(ops.close_recording(time.time(), total))
        return run_id

    def _open_run(self, run_id: str, spec: RunSpec) -> bool:
        """Create the run hash; False when the run exists and was fully recorded before."""
        if self.redis.hexists(keys.FORGOTTEN, run_id):
            raise ConflictError(f"Run {run_id} was forgotten; its ID is never used again (choose another).")
        created = self.redis.hsetnx(keys.run(run_id), "state", RunState.QUEUING)
        meta = {} if created else self.redis.hgetall(keys.run(run_id))
        if meta.get("abandoned"):
            raise ConflictError(f"Run {run_id} stopped waiting for its recipients ({meta['abandoned']}); "
                             "submit the rest as a new run.")
        if not created and is_recorded(meta):
            return False
        self.redis.hset(keys.run(run_id), "recorded", "0")
        self.redis.hset(keys.run(run_id), mapping=spec.to_hash())
        self.redis.hsetnx(keys.run(run_id), "created_at", time.time())
        self.redis.zadd(keys.RUNS, {run_id: time.time()}, nx=True)
        self.redis.sadd(keys.ACTIVE, run_id)
        return True

    def _put_chunk(self, run_id: str, ops: Ops, channel: str, chunk: list[Verdict],
                   plan: RowPlan | None = None) -> list[int]:
        """Write a chunk of rows (suppression checked in one round trip); the rows to send now."""
        valid = [v for v in chunk if v.status == Status.PENDING]
        suppressed = self._suppressed_flags(channel, [v.recipient for v in valid])
        is_suppressed = {v.row for v, flag in zip(valid, suppressed) if flag}
        rows: list[tuple[int, str, str]] = []
        to_send: list[int] = []
        data: dict[int, str] = {}
        now = time.time()
        for verdict in chunk:
            status, rec = _row_record(verdict, verdict.row in is_suppressed)
            if status == Status.PENDING and plan is not None:
                status, rec, data[verdict.row] = _planned_record(plan, verdict, now)
            rows.append((verdict.row, status, rec))
            if status == Status.PENDING:
                to_send.append(verdict.row)
        stored = {row: value for row, value in data.items() if value is not None}
        if stored:
            self.redis.hset(keys.row_fields(run_id), mapping=stored)
        if self.scripts(ops.put_rows(now, rows)) < 0:
            raise ConflictError(f"Run {run_id} stopped waiting for its recipients (nothing arrived for "
                             f"{self.stall_timeout:.0f}s) and went on with those it had; submit the rest "
                             "as a new run.")
        return to_send

    def _suppressed_flags(self, channel: str, recipients: list[str]) -> list[bool]:
        if not recipients:
            return []
        return [bool(x) for x in self.redis.smismember(keys.suppressed(channel), recipients)]

    def _batch_size(self, spec: RunSpec, expected_rows: int | None = None) -> int:
        """Recipients per task: smaller for a run of known size (spread over processes) and for a
        rate-limited run (a batch takes about 30 s at most)."""
        size = self.batch_size
        if expected_rows:
            size = min(size, max(MIN_BATCH, -(-expected_rows // SPREAD)))
        if spec.rate:
            size = min(size, max(1, int(spec.rate * 30)))
        return size

    # -- reading ----------------------------------------------------------------------------
    def meta(self, run_id: str) -> dict[str, str]:
        data = self.redis.hgetall(keys.run(run_id))
        if not data:
            raise UnknownRunError(run_id)
        return data

    def counts(self, run_id: str) -> dict[str, int]:
        raw = self.redis.hgetall(keys.counts(run_id))
        return {status: int(n) for status, n in raw.items() if int(n) > 0}

    def status(self, run_id: str) -> dict:
        """The run's summary: state, reason, counts by status, whether every row is final. State and
        counts are read in one transaction: a snapshot, never a state from before the last outcome
        beside counts from after it."""
        with self.redis.pipeline(transaction=True) as pipe:
            meta, raw_counts = pipe.hgetall(keys.run(run_id)).hgetall(keys.counts(run_id)).execute()
        if not meta:
            raise UnknownRunError(run_id)
        counts = {status: int(n) for status, n in raw_counts.items() if int(n) > 0}
        open_rows = sum(counts.get(s, 0) for s in NOT_FINAL)
        final_rows = sum(counts.get(s, 0) for s in FINAL)
        return {
            "run": run_id, "state": meta.get("state"), "reason": meta.get("reason", ""),
            "channel": meta.get("channel"), "directory": meta.get("directory"),
            "total": int(meta.get("total", sum(counts.values()))), "counts": counts, "final": final_rows,
            "done": open_rows == 0 and is_recorded(meta),
            "created_at": float(meta.get("created_at", 0)), "finished_at": float(meta.get("finished_at", 0)),
            **({"send_at": float(meta["send_at"])} if float(meta.get("send_at") or 0) else {}),
            **({"note": meta["abandoned"]} if meta.get("abandoned") else {}),
        }

    def iter_report(self, run_id: str) -> Iterator[ReportRow]:
        """Every row in input order, read in chunks (flat memory for a million rows)."""
        total = int(self.meta(run_id).get("total") or self.redis.hlen(keys.rows(run_id)))
        for first, last in _spans(total, ROW_CHUNK):
            rows = list(range(first, last + 1))
            for row, raw in zip(rows, self.redis.hmget(keys.rows(run_id), rows)):
                if raw is not None:
                    yield _report_row(row, raw)

    def list_runs(self, limit: int = 20) -> list[str]:
        return self.redis.zrevrange(keys.RUNS, 0, limit - 1)

    # -- control ----------------------------------------------------------------------------
    def pause(self, run_id: str) -> bool:
        return self._transition(run_id, None, [RunState.RUNNING, RunState.QUEUING, RunState.SCHEDULED],
                                RunState.PAUSED)

    def resume(self, run_id: str, publish: Publisher) -> bool:
        """Paused → running (or scheduled again, when its start time is still ahead)."""
        ahead = float(self.meta(run_id).get("send_at") or 0) > time.time()
        changed = self._transition(run_id, None, [RunState.PAUSED], RunState.SCHEDULED if ahead else RunState.RUNNING)
        self.republish_parked(run_id, publish)
        return changed

    def republish_parked(self, run_id: str, publish: Publisher) -> int:
        """Queue the rows set aside while paused; publish first, forget after (duplicates are safe)."""
        moved = 0
        key = keys.parked(run_id)
        while rows := sorted(int(r) for r in islice(self.redis.sscan_iter(key, count=self.batch_size),
                                                    self.batch_size)):
            publish(run_id, rows)  # in scan order, not at random: the same set gives the same batches
            self.redis.srem(key, *rows)
            moved += len(rows)
        return moved

    def stop(self, run_id: str, state: RunState, reason: str) -> bool:
        """Abort or cancel: the state changes at once; untried rows end by finalize_untried."""
        return bool(self.scripts(self.ops(run_id).stop(state, reason, time.time())))

    def cancel(self, run_id: str) -> bool:
        changed = self.stop(run_id, RunState.CANCELLED, "cancelled by the operator")
        self.finalize_untried(run_id)
        return changed

    def finalize_untried(self, run_id: str) -> int:
        """End every pending or waiting row of a stopped run as aborted or cancelled (one full pass,
        done once by whoever stopped the run; afterwards only due and parked rows can still be open)."""
        meta = self.meta(run_id)
        total = int(meta.get("total") or self.redis.hlen(keys.rows(run_id)))
        return sum(self._finalize(run_id, meta["channel"], list(range(first, last + 1)))
                   for first, last in _spans(total, SWEEP_CHUNK))

    def _finalize(self, run_id: str, channel: str, rows: list) -> int:
        if not rows:
            return 0
        return self.scripts(Ops(run_id, channel).finalize(time.time(), [int(r) for r in rows]))

    def retry(self, run_id: str, publish: Publisher, include_uncertain: bool = False) -> int:
        """Send `failed` rows again (and `uncertain` ones if asked, and `aborted` ones of an aborted run).
        The run goes back to `running` atomically with its first requeued rows."""
        meta = self.meta(run_id)
        if not is_recorded(meta):
            raise ConflictError(f"Run {run_id} is still being recorded; retry it once its recording is done.")
        wanted = [Status.FAILED] + ([Status.UNCERTAIN] if include_uncertain else [])
        if meta.get("state") == RunState.ABORTED:
            wanted.append(Status.ABORTED)
        ops = Ops(run_id, meta["channel"])
        self.redis.sadd(keys.ACTIVE, run_id)
        requeued = 0
        for first, last in _spans(int(meta.get("total") or 0), SWEEP_CHUNK):
            rows = self.scripts(ops.requeue(wanted, first, last, time.time()))
            for batch in _chunks(rows, self.batch_size):
                publish(run_id, batch)
            requeued += len(rows)
        if requeued:
            self.redis.sadd(keys.ACTIVE, run_id)  # again: a sweeper may have retired it before the requeue
            self.republish_parked(run_id, publish)  # a paused run retried runs again: its parked rows too
        return requeued

    def _transition(self, run_id: str, channel: str | None, from_states: list[RunState],
                    to_state: RunState) -> bool:
        return bool(self.scripts(self.ops(run_id, channel).transition(list(from_states), to_state, time.time())))

    def forget(self, run_id: str) -> None:
        """Delete a finished run's data (export its report first); a run still sending is refused.
        A tombstone keeps the ID: submitting it again is refused rather than sending everyone again."""
        if not self.status(run_id)["done"]:
            raise ConflictError(f"Run {run_id} still has recipients to send; cancel it first, then forget it.")
        self.redis.hset(keys.FORGOTTEN, run_id, time.time())
        self.redis.delete(*keys.run_keys(run_id))
        self.redis.zrem(keys.RUNS, run_id)
        self.redis.srem(keys.ACTIVE, run_id)

    # -- housekeeping (run by every worker's sweeper) -----------------------------------------
    def sweep(self, publish: Publisher, lease: float | None = None, now: float | None = None) -> int:
        """Queue rows whose time has come, end untried rows of stopped runs, heal stalled runs;
        returns rows queued. A row queued from `due` is queued again after `lease` seconds unless a
        batch claimed it (its message may have been lost)."""
        lease = min(DUE_LEASE, self.stall_timeout) if lease is None else lease
        queued = 0
        for run_id in self.redis.smembers(keys.ACTIVE):
            queued += self._sweep_run(run_id, publish, lease, time.time() if now is None else now)
        return queued

    def _sweep_run(self, run_id: str, publish: Publisher, lease: float, now: float) -> int:
        meta = self.redis.hgetall(keys.run(run_id))
        state = meta.get("state")
        if not meta or state == RunState.COMPLETED or (state in STOPPED_STATES and meta.get("finished_at")):
            if meta:
                announce_finished(self.redis, run_id, meta, self.webhook_url)  # once per finish, before it leaves
            self._leave_active(keys=[keys.run(run_id), keys.ACTIVE], args=[run_id])
            return 0
        ops = Ops(run_id, meta["channel"])
        queued = 0
        if state == RunState.SCHEDULED:
            if float(meta.get("send_at") or 0) > now:
                return 0  # its rows wait in `due` for the start; nothing to heal
            self._transition(run_id, meta["channel"], [RunState.SCHEDULED], RunState.RUNNING)
            state = RunState.RUNNING
        if state in STOPPED_STATES:  # in-flight rows that came back to wait, or rows parked before the stop
            waiting = self.redis.zrange(keys.due(run_id), 0, -1) + list(self.redis.smembers(keys.parked(run_id)))
            self._finalize(run_id, meta["channel"], waiting)
        elif state != RunState.PAUSED:
            rows = self.scripts(ops.pop_due(now, self.batch_size, now + lease))
            if rows:
                publish(run_id, sorted(rows))
            queued = len(rows)
        return queued + self._heal_if_stalled(run_id, meta, ops, publish, now)

    def _heal_if_stalled(self, run_id: str, meta: dict[str, str], ops: Ops, publish: Publisher,
                         now: float) -> int:
        """A run with open rows, no live batch and no progress for `stall_timeout`: its batch messages
        were lost (a broker restart, a task that failed and was acked) or its producer died while
        recording. Close the recording, queue the open rows again, end rows whose owner is gone."""
        touched = float(meta.get("touched_at") or meta.get("created_at") or 0)
        if now - touched < self.stall_timeout or now < self._heal_after(meta, touched):
            return 0  # progressing, or healed recently and nothing progressed since: back off
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(keys.leases(run_id), "-inf", now)
            _, live, open_rows = pipe.zcard(keys.leases(run_id)).hmget(
                keys.counts(run_id), Status.PENDING, Status.IN_FLIGHT).execute()
        if live:
            return 0  # a batch is working on the run (maybe waiting out a 429 hold)
        if is_recorded(meta) and not any(int(n or 0) for n in open_rows):
            return 0  # only retry_wait rows: they sit in `due`
        if not self.redis.set(keys.reconciling(run_id), now, nx=True, px=HEAL_LOCK_MS):
            return 0  # another sweeper is at it
        try:
            if not is_recorded(meta):
                self._close_abandoned_recording(run_id, ops, now)
            queued = self._reconcile(run_id, ops, now, publish)
            rounds = self._heal_rounds(meta, touched)
            self.redis.hset(keys.run(run_id), mapping={"reconciled_at": now, "reconciles": rounds + 1})
        finally:
            self.redis.delete(keys.reconciling(run_id))
        log.warning("stalled run healed", run_id=run_id, queued_again=queued)
        return queued

    def _heal_rounds(self, meta: dict[str, str], touched: float) -> int:
        """Heals since the run last made progress (progress starts the count again)."""
        return int(meta.get("reconciles") or 0) if float(meta.get("reconciled_at") or 0) >= touched else 0

    def _heal_after(self, meta: dict[str, str], touched: float) -> float:
        """When the run may be healed again: heals back off exponentially while nothing progresses, so
        a long queue backlog is not queued again every stall timeout."""
        rounds = self._heal_rounds(meta, touched)
        if not rounds:
            return 0.0
        return float(meta["reconciled_at"]) + self.stall_timeout * 2 ** min(rounds - 1, 6)

    def _close_abandoned_recording(self, run_id: str, ops: Ops, now: float) -> None:
        recorded = self.redis.hlen(keys.rows(run_id))
        self.redis.hset(keys.run(run_id), "abandoned", f"recording stopped after {recorded} rows: nothing "
                                                       f"arrived for {self.stall_timeout:.0f}s")
        self.scripts(ops.close_recording(now, recorded))

    def _reconcile(self, run_id: str, ops: Ops, now: float, publish: Publisher) -> int:
        total = int(self.redis.hget(keys.run(run_id), "total") or self.redis.hlen(keys.rows(run_id)))
        queued = 0
        for first, last in _spans(total, SWEEP_CHUNK):
            rows = self.scripts(ops.reconcile(now, first, last))
            for batch in _chunks(rows, self.batch_size):
                publish(run_id, batch)
            queued += len(rows)
        return queued

    # -- suppression ------------------------------------------------------------------------
    def suppress(self, channel: str, addresses: Iterable[str]) -> int:
        added = 0
        for chunk in _chunks(addresses, ROW_CHUNK):
            added += self.redis.sadd(keys.suppressed(channel), *chunk)
        return added

    def unsuppress(self, channel: str, addresses: Iterable[str]) -> int:
        removed = 0
        for chunk in _chunks(addresses, ROW_CHUNK):
            removed += self.redis.srem(keys.suppressed(channel), *chunk)
        return removed

    def suppressed(self, channel: str) -> Iterator[str]:
        yield from self.redis.sscan_iter(keys.suppressed(channel), count=1000)

    def is_suppressed(self, channel: str, address: str) -> bool:
        return bool(self.redis.sismember(keys.suppressed(channel), address))


def _planned_record(plan: RowPlan, verdict: Verdict, now: float) -> tuple[str, str, str | None]:
    """A valid row as the run's message plan has it: pending, waiting for its time, or invalid."""
    fate = plan.record(verdict.recipient, verdict.fields, now)
    if fate.status == Status.INVALID:
        return Status.INVALID, record(Status.INVALID, verdict.recipient, message=fate.reason), None
    return fate.status, record(fate.status, verdict.recipient, due=fate.due), fate.data


def _row_record(verdict: Verdict, suppressed: bool) -> tuple[str, str]:
    if verdict.status == Status.PENDING and suppressed:
        return Status.SUPPRESSED, record(Status.SUPPRESSED, verdict.recipient,
                                         message="on the suppression list")
    if verdict.status == Status.PENDING:
        return Status.PENDING, record(Status.PENDING, verdict.recipient)
    shown = verdict.recipient if verdict.status == Status.DUPLICATE else verdict.given
    return verdict.status, record(verdict.status, shown or verdict.given, message=verdict.reason)


def _report_row(row: int, raw: str) -> ReportRow:
    rec = Record.decode(raw)
    return ReportRow(row=row, recipient=rec.recipient, status=rec.status, error_code=int(rec.code) or None,
                     error_message=rec.message, attempts=int(rec.attempts))


def _spans(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(first, last) row numbers covering rows 1..total, `size` rows at a time."""
    for first in range(1, total + 1, size):
        yield first, min(total, first + size - 1)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

