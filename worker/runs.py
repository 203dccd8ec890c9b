"""Runs as the operator sees them: record a run, queue its batches, read its status and report, and
pause, resume, cancel or retry it. Synchronous (CLI, producers, worker housekeeping); the hot send
path lives in worker.engine. Publishing batches is handed in (`Publisher`): worker/ knows no Celery.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import redis

from worker import keys, scripts
from worker.errors import UnknownRunError, UsageError
from worker.ingest import Verdict
from worker.statuses import FINAL, NOT_FINAL, STOPPED_STATES, RunState, Status

Publisher = Callable[[str, list[int]], None]  # (run_id, rows) → a batch task is queued

ROW_CHUNK = 1000  # rows per pipelined write / read
SPREAD = 8  # a run of known size is cut into at least this many batches, so several processes share it
MIN_BATCH = 100
SWEEP_CHUNK = 5000  # rows per finalize / requeue script call
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

    def to_hash(self) -> dict[str, str]:
        return {k: str(int(v) if isinstance(v, bool) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> RunSpec:
        return cls(channel=data.get("channel", ""), directory=data.get("directory", ""),
                   subject=data.get("subject", ""), body=data.get("body", ""),
                   region=data.get("region", ""), rate=float(data.get("rate") or 0),
                   sandbox=data.get("sandbox") == "1", api_url=data.get("api_url", ""),
                   source=data.get("source", ""), policy=data.get("policy", ""))


@dataclass(frozen=True)
class ReportRow:
    row: int
    recipient: str
    status: str
    error_code: int | None
    error_message: str
    attempts: int

    FIELDS = ("row", "recipient", "status", "error_code", "error_message", "attempts")


def new_run_id() -> str:
    return "run_" + time.strftime("%Y%m%d%H%M%S") + "_" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not run_id or len(run_id) > 100 or not set(run_id) <= RUN_ID_CHARS:
        raise UsageError(f"{run_id!r} is not a usable run ID (letters, digits, _ - . only, at most 100).")
    return run_id


def record(status: str, recipient: str, *, attempts: int = 0, code: int = 0, message: str = "") -> str:
    """A row record as the Lua scripts store it (see worker.scripts)."""
    return json.dumps([status, attempts, code, message, recipient, "", 0], ensure_ascii=False)


class Runs:
    """Run bookkeeping over one Redis connection."""

    def __init__(self, client: redis.Redis, *, batch_size: int = 2000) -> None:
        self.redis = client
        self.batch_size = batch_size
        self.scripts = scripts.register(client)

    # -- creating ---------------------------------------------------------------------------
    def create(self, spec: RunSpec, verdicts: Iterable[Verdict], publish: Publisher,
               run_id: str | None = None, expected_rows: int | None = None) -> str:
        """Record every row and queue the valid ones; idempotent for a producer-given run_id."""
        run_id = check_run_id(run_id) if run_id else new_run_id()
        if not self._open_run(run_id, spec):
            return run_id  # already fully recorded: submitting twice makes one run
        size = self._batch_size(spec, expected_rows)
        batch: list[int] = []
        total = 0
        for chunk in _chunks(verdicts, ROW_CHUNK):
            total = chunk[-1].row
            batch.extend(self._put_chunk(run_id, spec.channel, chunk))
            while len(batch) >= size:
                publish(run_id, batch[:size])
                batch = batch[size:]
        if batch:
            publish(run_id, batch)
        self.redis.hset(keys.run(run_id), mapping={"total": total, "queued_at": time.time()})
        self._transition(run_id, spec.channel, [RunState.QUEUING], RunState.RUNNING)
        return run_id

    def _open_run(self, run_id: str, spec: RunSpec) -> bool:
        """Create the run hash; False when the run exists and was fully recorded before."""
        created = self.redis.hsetnx(keys.run(run_id), "state", RunState.QUEUING)
        if not created and self.redis.hget(keys.run(run_id), "state") != RunState.QUEUING:
            return False
        self.redis.hset(keys.run(run_id), mapping=spec.to_hash())
        self.redis.hsetnx(keys.run(run_id), "created_at", time.time())
        self.redis.zadd(keys.RUNS, {run_id: time.time()}, nx=True)
        self.redis.sadd(keys.ACTIVE, run_id)
        return True

    def _put_chunk(self, run_id: str, channel: str, chunk: list[Verdict]) -> list[int]:
        """Write a chunk of rows (suppression checked in one round trip); the rows to send."""
        valid = [v for v in chunk if v.status == Status.PENDING]
        suppressed = self._suppressed_flags(channel, [v.recipient for v in valid])
        is_suppressed = {v.row for v, flag in zip(valid, suppressed) if flag}
        args: list[object] = []
        to_send: list[int] = []
        for verdict in chunk:
            status, rec = _row_record(verdict, verdict.row in is_suppressed)
            args += [verdict.row, status, rec]
            if status == Status.PENDING:
                to_send.append(verdict.row)
        self.scripts["put_rows"](keys=keys.script_keys(run_id, channel), args=args)
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
        """The run's summary: state, reason, counts by status, whether every row is final."""
        meta = self.meta(run_id)
        counts = self.counts(run_id)
        open_rows = sum(counts.get(s, 0) for s in NOT_FINAL)
        final_rows = sum(counts.get(s, 0) for s in FINAL)
        return {
            "run": run_id, "state": meta.get("state"), "reason": meta.get("reason", ""),
            "channel": meta.get("channel"), "directory": meta.get("directory"),
            "total": int(meta.get("total", sum(counts.values()))), "counts": counts, "final": final_rows,
            "done": open_rows == 0 and meta.get("state") != RunState.QUEUING,
            "created_at": float(meta.get("created_at", 0)), "finished_at": float(meta.get("finished_at", 0)),
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
        return self._transition(run_id, None, [RunState.RUNNING, RunState.QUEUING], RunState.PAUSED)

    def resume(self, run_id: str, publish: Publisher) -> bool:
        changed = self._transition(run_id, None, [RunState.PAUSED], RunState.RUNNING)
        self.republish_parked(run_id, publish)
        return changed

    def republish_parked(self, run_id: str, publish: Publisher) -> int:
        """Queue the rows set aside while paused; publish first, forget after (duplicates are safe)."""
        moved = 0
        while rows := [int(r) for r in self.redis.srandmember(keys.parked(run_id), self.batch_size)]:
            publish(run_id, sorted(rows))
            self.redis.srem(keys.parked(run_id), *rows)
            moved += len(rows)
        return moved

    def stop(self, run_id: str, state: RunState, reason: str) -> bool:
        """Abort or cancel: the state changes at once; untried rows end by finalize_untried."""
        return bool(self.scripts["stop"](keys=keys.script_keys(run_id, self.meta(run_id)["channel"]),
                                         args=[state, reason, time.time()]))

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
        return self.scripts["finalize"](keys=keys.script_keys(run_id, channel), args=[time.time(), *rows])

    def retry(self, run_id: str, publish: Publisher, include_uncertain: bool = False) -> int:
        """Send `failed` rows again (and `uncertain` ones if asked, and `aborted` ones of an aborted run)."""
        meta = self.meta(run_id)
        wanted = [Status.FAILED] + ([Status.UNCERTAIN] if include_uncertain else [])
        if meta.get("state") == RunState.ABORTED:
            wanted.append(Status.ABORTED)
        script_keys = keys.script_keys(run_id, meta["channel"])
        self.redis.hset(keys.run(run_id), mapping={"state": RunState.RUNNING, "reason": ""})
        self.redis.hdel(keys.run(run_id), "finished_at")
        self.redis.sadd(keys.ACTIVE, run_id)
        requeued = 0
        for first, last in _spans(int(meta.get("total") or 0), SWEEP_CHUNK):
            rows = self.scripts["requeue"](keys=script_keys, args=[",".join(wanted), first, last])
            for batch in _chunks(rows, self.batch_size):
                publish(run_id, [int(r) for r in batch])
            requeued += len(rows)
        self.republish_parked(run_id, publish)  # rows set aside while paused: nobody else queues them now
        self._transition(run_id, meta["channel"], [RunState.RUNNING], RunState.RUNNING)  # completes if nothing
        return requeued

    def _transition(self, run_id: str, channel: str | None, from_states: list[RunState],
                    to_state: RunState) -> bool:
        channel = channel or self.meta(run_id)["channel"]
        return bool(self.scripts["transition"](keys=keys.script_keys(run_id, channel), args=[
            ",".join(from_states), to_state, time.time()]))

    def forget(self, run_id: str) -> None:
        """Delete a finished run's data (export its report first); a run still sending is refused."""
        if not self.status(run_id)["done"]:
            raise UsageError(f"Run {run_id} still has recipients to send; cancel it first, then forget it.")
        self.redis.delete(keys.run(run_id), keys.rows(run_id), keys.counts(run_id), keys.due(run_id),
                          keys.parked(run_id), keys.deliveries(run_id), keys.hold(run_id), keys.rate(run_id))
        self.redis.zrem(keys.RUNS, run_id)
        self.redis.srem(keys.ACTIVE, run_id)

    # -- housekeeping (run by every worker's sweeper) -----------------------------------------
    def sweep(self, publish: Publisher, lease: float = 60.0) -> int:
        """Queue retries that are due, end untried rows of stopped runs; returns rows queued."""
        queued = 0
        for run_id in self.redis.smembers(keys.ACTIVE):
            queued += self._sweep_run(run_id, publish, lease)
        return queued

    def _sweep_run(self, run_id: str, publish: Publisher, lease: float) -> int:
        meta = self.redis.hgetall(keys.run(run_id))
        state = meta.get("state")
        if not meta or state == RunState.COMPLETED or (state in STOPPED_STATES and meta.get("finished_at")):
            self.redis.srem(keys.ACTIVE, run_id)
            return 0
        if state in STOPPED_STATES:  # in-flight rows that came back to wait, or rows parked before the stop
            waiting = self.redis.zrange(keys.due(run_id), 0, -1) + list(self.redis.smembers(keys.parked(run_id)))
            self._finalize(run_id, meta["channel"], waiting)
            return 0
        if state == RunState.PAUSED:
            return 0
        now = time.time()
        rows = self.scripts["pop_due"](keys=keys.script_keys(run_id, meta["channel"]),
                                       args=[now, self.batch_size, now + lease])
        if rows:
            publish(run_id, sorted(int(r) for r in rows))
        return len(rows)

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


def _row_record(verdict: Verdict, suppressed: bool) -> tuple[str, str]:
    if verdict.status == Status.PENDING and suppressed:
        return Status.SUPPRESSED, record(Status.SUPPRESSED, verdict.recipient,
                                         message="on the suppression list")
    if verdict.status == Status.PENDING:
        return Status.PENDING, record(Status.PENDING, verdict.recipient)
    shown = verdict.recipient if verdict.status == Status.DUPLICATE else verdict.given
    return verdict.status, record(verdict.status, shown or verdict.given, message=verdict.reason)


def _report_row(row: int, raw: str) -> ReportRow:
    status, attempts, code, message, recipient, _owner, _due = json.loads(raw)
    return ReportRow(row=row, recipient=recipient, status=status, error_code=int(code) or None,
                     error_message=message, attempts=int(attempts))


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

