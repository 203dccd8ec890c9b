"""Stateful property test of the recipient state scripts (worker.scripts) against a real Redis.

A hypothesis RuleBasedStateMachine drives one small run (6 sendable rows, row 7 invalid) from the start
of its recording through every operation that changes recipient state, made through the facade
(`Scripts(client)(Ops(...).claim(...))`) or worker.runs:

  * the producer: put_rows for the next rows (the run is `queuing` meanwhile), each pending or, when the
    run's start (send_at) or its send window lies ahead, `waiting` in `due` for its time;
    close_recording (`scheduled` when send_at is still ahead), a late put after the close (refused),
    creating the same run again (continues it, or does nothing);
  * the broker and the engine: queued batch messages are delivered (claim a part, defer the rest for a
    time), delivered again with the same task ID (a new nonce: rows in flight turn `uncertain`), claims
    retried by the same owner, finish (`waiting` included: claimed outside its window, the attempt given
    back), release (at the deadline, with `when`), the end of a batch (release the unsent rows, drop the
    lease), and claims by anyone for anything;
  * the sweepers and the operator: pop_due, a whole sweep (a scheduled run starts once its time has
    come; a stopped run's due and parked rows end), reconcile (after a lease expired: owner gone),
    suppressing an address, stop, finalize_untried, pause/resume (a scheduled run paused before its
    start resumes `scheduled`), retry.

Each example's run has no send_at, one within the logical clock (its sweep starts it), or one far
beyond it (it stays `scheduled`: pause, resume, cancel and reconcile before the start).

A pure-Python model predicts every row record, the run state and the due/parked/suppressed/lease sets;
after each step the stored state must equal the model and the promises must hold on the stored data:

  * the counts hash equals the tally of stored row statuses, and every row has one known status;
  * a row is handed out by claim at most once per epoch. An epoch ends only when the row legitimately
    becomes sendable again: operator requeue (retry), release, or a `retry_wait` or `waiting` outcome. A claim
    retried by the very same owner hands its in-flight row back (same attempt); any other claim,
    a redelivery of the same task included, never gets a row in flight;
  * the run is `completed` exactly when its recording is closed and no row is pending/in_flight/
    retry_wait/waiting (a stopped run gets finished_at under the same condition);
  * in_flight rows name their owner; `due` holds every retry_wait and waiting row and otherwise only
    pending rows (released or deferred ones); `parked` holds only open rows, and nothing once the run
    sends again; a scheduled run has no row in flight;
  * no pending row is lost: each is in `due`, in `parked` or in a batch message still queued.

Times are small integers (a logical clock), so due times and leases are sometimes past, sometimes future
(the producer's clock is never behind: it closes the recording no earlier than its last put or the last
claim that handed a row out).
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from worker import keys
from worker.errors import UsageError
from worker.ingest import Verdict
from worker.runs import Runs, RunSpec, record
from worker.outcomes import Outcome
from worker.plan import Plan
from worker.scripts import Ops, Record, Scripts
from worker.statuses import NOT_FINAL, SENDING_STATES, STOPPED_STATES, RunState, Status

STATUS, ATTEMPTS, CODE, MESSAGE, RECIPIENT, OWNER, DUE = range(7)  # model record fields
RUN = "run_sm"
CHANNEL = "sms"
SPEC = RunSpec(channel=CHANNEL, directory="dir_1")
FAR = 4_000_000_000  # a send_at beyond the logical clock and the real one: the run stays scheduled
SEND_ATS = (0, 10, FAR)  # none, within the logical clock, far ahead
ROWS = (1, 2, 3, 4, 5, 6)
INVALID_ROW = 7
ALL_ROWS = (*ROWS, INVALID_ROW)
OWNERS = ("taskX:1", "taskX:2", "taskY:1")  # two deliveries of one task, and another task
OUTCOMES = (Status.SENT, Status.BLACKLISTED, Status.INVALID, Status.FAILED, Status.ABORTED,
            Status.UNCERTAIN, Status.RETRY_WAIT, Status.WAITING)
WAITS = (Status.RETRY_WAIT, Status.WAITING)  # open rows that sit in `due` until their time
UNTRIED = (Status.PENDING, *WAITS)
TIMES = st.integers(min_value=0, max_value=20)
LEASE = 10  # how long a delivery's lease lasts on the logical clock
REDELIVERED = "the worker stopped after claiming this recipient; the request may have been sent"
OWNER_GONE = "the worker sending this recipient stopped; the request may have been sent"
SUPPRESSED_LATE = "on the suppression list (added after the run was queued)"


def recipient(row: int) -> str:
    return f"+44791100000{row}"


def verdict(row: int) -> Verdict:
    if row == INVALID_ROW:
        return Verdict(row, "nope", "", Status.INVALID, "not a phone number")
    return Verdict(row, recipient(row), recipient(row), Status.PENDING, "")


def task_of(owner: str) -> str:
    return owner.rsplit(":", 1)[0] if ":" in owner else owner


def row_subsets(min_size: int = 1):
    return st.lists(st.sampled_from(ALL_ROWS), unique=True, min_size=min_size, max_size=len(ALL_ROWS)).map(sorted)


class Model:
    """What the stored state must be, computed in Python from the docstring's transitions."""

    def __init__(self, send_at: float = 0) -> None:
        self.send_at = send_at
        self.active = True  # in the sweepers' set
        self.rows: dict[int, list] = {}  # recorded rows: [status, attempts, code, message, recipient, owner, due]
        self.state = RunState.QUEUING
        self.recorded = False
        self.total: int | None = None
        self.finished = False  # finished_at present in the run hash
        self.due: dict[int, float] = {}  # the due ZSET: row -> score
        self.parked: set[int] = set()
        self.suppressed: set[str] = set()
        self.leases: dict[str, int] = {}
        self.epoch = dict.fromkeys(ALL_ROWS, 0)  # bumped whenever a row may be handed out again

    @property
    def sending(self) -> bool:
        return self.state in SENDING_STATES

    def open_rows(self) -> int:
        return sum(1 for rec in self.rows.values() if rec[STATUS] in NOT_FINAL)

    def maybe_complete(self) -> None:
        if not self.recorded or self.open_rows():
            return
        if self.state in (RunState.RUNNING, RunState.PAUSED, RunState.QUEUING, RunState.SCHEDULED):
            self.state = RunState.COMPLETED
            self.finished = True
        elif self.state in STOPPED_STATES:
            self.finished = True

    def end_stopped(self, row: int) -> None:
        rec = self.rows[row]
        rec[STATUS] = Status.CANCELLED if self.state == RunState.CANCELLED else Status.ABORTED
        rec[OWNER] = ""
        self.due.pop(row, None)
        self.parked.discard(row)

    def set_aside(self, row: int) -> None:
        if self.state == RunState.PAUSED:
            self.parked.add(row)
        elif self.state in STOPPED_STATES:
            self.end_stopped(row)
        elif self.state == RunState.SCHEDULED:  # claimed before the start by a clock ahead: queue it
            self.due[row] = self.rows[row][DUE] or 0

    def queue_again(self, row: int, when: int) -> None:
        if self.sending:
            self.due[row] = when
        else:
            self.set_aside(row)

    # -- the scripts ----------------------------------------------------------------------------------
    def put_rows(self, rows: list[tuple[int, str, str]]) -> int:
        if self.recorded:
            return -1
        added = 0
        for row, status, raw in rows:
            if row not in self.rows:
                self.rows[row] = list(json.loads(raw))
                if status in (Status.PENDING, Status.WAITING) and self.state in STOPPED_STATES:
                    self.end_stopped(row)
                elif status == Status.WAITING:
                    self.due[row] = self.rows[row][DUE]
                added += 1
        return added

    def close_recording(self, total: int, now: float) -> str:
        self.recorded, self.total = True, total
        if self.state == RunState.QUEUING:
            self.state = RunState.SCHEDULED if self.send_at > now else RunState.RUNNING
        self.maybe_complete()
        return self.state

    def claim(self, owner: str, now: int, rows: list[int]) -> list[int]:
        out = []
        for row in rows:
            rec = self.rows.get(row)
            if rec is None:
                continue
            ready = rec[STATUS] == Status.PENDING or (rec[STATUS] in WAITS and rec[DUE] <= now)
            if rec[STATUS] == Status.IN_FLIGHT and rec[OWNER] == owner:
                out.append(row)
            elif rec[STATUS] == Status.IN_FLIGHT and task_of(rec[OWNER]) == task_of(owner):
                rec[STATUS], rec[CODE], rec[MESSAGE] = Status.UNCERTAIN, 0, REDELIVERED
            elif ready and self.sending and rec[RECIPIENT] in self.suppressed:
                rec[STATUS], rec[CODE], rec[MESSAGE], rec[OWNER] = Status.SUPPRESSED, 0, SUPPRESSED_LATE, ""
                self.due.pop(row, None)
            elif ready and self.sending:
                rec[STATUS], rec[ATTEMPTS], rec[OWNER] = Status.IN_FLIGHT, rec[ATTEMPTS] + 1, owner
                self.due.pop(row, None)
                self.parked.discard(row)
                out.append(row)
            elif rec[STATUS] in UNTRIED and not self.sending:
                self.set_aside(row)
        self.maybe_complete()
        return out

    def finish(self, owner: str, outcomes: list[Outcome]) -> int:
        applied = 0
        for o in outcomes:
            rec = self.rows.get(o.row)
            if rec and rec[OWNER] == owner and rec[STATUS] in (Status.IN_FLIGHT, Status.UNCERTAIN):
                o = self.late_retry_ends(rec, o)
                rec[STATUS], rec[CODE], rec[MESSAGE], rec[DUE] = o.status, o.code, o.message, o.due
                if o.status == Status.WAITING:  # claimed outside its window: never sent
                    rec[ATTEMPTS] = max(0, rec[ATTEMPTS] - 1)
                if o.status in WAITS:
                    rec[OWNER] = ""
                    self.due[o.row] = o.due
                    self.epoch[o.row] += 1
                elif o.status != Status.UNCERTAIN:
                    rec[OWNER] = ""
                if o.status == Status.BLACKLISTED:
                    self.suppressed.add(rec[RECIPIENT])
                applied += 1
        self.maybe_complete()
        return applied

    def late_retry_ends(self, rec: list, o: Outcome) -> Outcome:
        """A late retry_wait (or waiting) for an uncertain row of a run already completed or stopped ends
        the row."""
        if o.status not in WAITS or rec[STATUS] != Status.UNCERTAIN:
            return o
        if self.state == RunState.COMPLETED:
            return Outcome(o.row, str(Status.FAILED), o.code, o.message, o.due)
        if self.state in STOPPED_STATES:
            ended = Status.CANCELLED if self.state == RunState.CANCELLED else Status.ABORTED
            return Outcome(o.row, str(ended), o.code, o.message, o.due)
        return o

    def release(self, owner: str, when: int, rows: list[int]) -> int:
        released = 0
        for row in rows:
            rec = self.rows.get(row)
            if rec and rec[STATUS] == Status.IN_FLIGHT and rec[OWNER] == owner:
                rec[STATUS], rec[ATTEMPTS], rec[OWNER] = Status.PENDING, max(0, rec[ATTEMPTS] - 1), ""
                self.epoch[row] += 1
                self.queue_again(row, when)
                released += 1
        self.maybe_complete()
        return released

    def defer(self, when: int, rows: list[int]) -> int:
        deferred = 0
        for row in rows:
            rec = self.rows.get(row)
            if rec and rec[STATUS] == Status.PENDING:
                self.queue_again(row, when)
                deferred += 1
            elif rec and rec[STATUS] in WAITS and not self.sending:
                self.set_aside(row)
        self.maybe_complete()
        return deferred

    def stop(self, state: RunState) -> bool:
        if self.state in (RunState.QUEUING, RunState.RUNNING, RunState.PAUSED, RunState.SCHEDULED):
            self.state = state
            return True
        return False

    def finalize_untried(self) -> int:
        if self.state not in STOPPED_STATES:
            return 0
        ended = 0
        for row, rec in self.rows.items():
            if rec[STATUS] in UNTRIED:
                self.end_stopped(row)
                ended += 1
        self.maybe_complete()
        return ended

    def transition(self, from_states: tuple[RunState, ...], to_state: RunState) -> bool:
        if self.state in from_states:
            self.state = to_state
            self.maybe_complete()
            return True
        return False

    def retry(self, include_uncertain: bool) -> list[int]:
        wanted = {Status.FAILED} | ({Status.UNCERTAIN} if include_uncertain else set())
        if self.state == RunState.ABORTED:
            wanted.add(Status.ABORTED)
        requeued = []
        for row in sorted(self.rows):
            rec = self.rows[row]
            if rec[STATUS] in wanted:
                rec[STATUS], rec[CODE], rec[MESSAGE], rec[OWNER] = Status.PENDING, 0, "", ""
                self.epoch[row] += 1
                requeued.append(row)
        if requeued and self.state not in SENDING_STATES:  # atomically with the rows: never completed+pending
            self.state = RunState.RUNNING
            self.finished = False
        self.active = True
        return requeued

    def sweep(self, now: int, limit: int, lease_until: int) -> list[int]:
        """One sweeper pass over the run (worker.runs.Runs._sweep_run); the rows it queues."""
        if not self.active:
            return []
        if self.state == RunState.COMPLETED or (self.state in STOPPED_STATES and self.finished):
            self.active = False
            return []
        if self.state == RunState.SCHEDULED:
            if self.send_at > now:
                return []
            self.transition((RunState.SCHEDULED,), RunState.RUNNING)
        if self.state in STOPPED_STATES:
            waiting = [*self.due, *self.parked]  # in-flight rows that came back to wait, rows parked before
            if waiting:
                for row in waiting:
                    if self.rows[row][STATUS] in UNTRIED:
                        self.end_stopped(row)
                self.maybe_complete()
            return []
        if self.state == RunState.PAUSED:
            return []
        return self.pop_due(now, limit, lease_until)

    def pop_due(self, now: int, limit: int, lease_until: int) -> list[int]:
        ready = sorted((score, str(row)) for row, score in self.due.items() if score <= now)[:limit]
        rows = [int(row) for _, row in ready]
        for row in rows:
            self.due[row] = lease_until
        return rows

    def reconcile(self, now: int) -> list[int]:
        out = []
        for row in sorted(self.rows):
            rec = self.rows[row]
            if rec[STATUS] == Status.IN_FLIGHT:
                lease = self.leases.get(rec[OWNER])
                if lease is None or lease < now:
                    rec[STATUS], rec[CODE], rec[MESSAGE] = Status.UNCERTAIN, 0, OWNER_GONE
            elif rec[STATUS] == Status.PENDING:
                if self.sending:
                    out.append(row)
                else:
                    self.set_aside(row)
            elif rec[STATUS] in WAITS:
                self.due.setdefault(row, rec[DUE])
                if not self.sending:
                    self.set_aside(row)
        self.maybe_complete()
        return out


class RunMachine(RuleBasedStateMachine):
    """One run's rows under random producer, engine, sweeper and operator actions; stored state == model."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        client.flushall()
        self.redis = client
        self.runs = Runs(client, batch_size=4)
        self.scripts = Scripts(client)
        self.ops = Ops(RUN, CHANNEL)
        self.model = Model()
        self.queue: list[tuple[str, list[int]]] = []  # batch messages published, not yet delivered
        self.deliveries: dict[str, tuple[list[int], int]] = {}  # task -> (its rows, deliveries so far)
        self.messages = 0
        self.handed: dict[int, tuple[int, str]] = {}  # row -> (epoch, owner) of its last hand-out
        self.clock = 0  # the latest put or hand-out: the producer closes its recording no earlier
        self.spec = SPEC

    send_ats = SEND_ATS

    @initialize(data=st.data())
    def open_run(self, data):
        """The producer's first step (worker.runs.create), for a run with or without a start time."""
        send_at = data.draw(st.sampled_from(self.send_ats), label="send_at")
        self.spec = RunSpec(channel=CHANNEL, directory="dir_1", send_at=float(send_at))
        self.model.send_at = send_at
        assert self.runs._open_run(RUN, self.spec)

    def publish(self, run_id: str, rows: list[int]) -> None:
        assert run_id == RUN
        self.messages += 1
        self.queue.append((f"msg{self.messages}", list(rows)))

    def queued_rows(self) -> set[int]:
        return {row for _, rows in self.queue for row in rows}

    # -- the producer -------------------------------------------------------------------------------
    @precondition(lambda self: not self.model.recorded and len(self.model.rows) < len(ALL_ROWS))
    @rule(data=st.data(), count=st.integers(min_value=1, max_value=3), now=TIMES)
    def put_rows(self, data, count, now):
        """The producer records its next rows (the suppression list checked as it does) and queues those
        to send now; a row whose time (the run's start, its window's opening) is ahead waits in `due`."""
        first = len(self.model.rows) + 1
        rows, to_send = [], []
        self.clock = max(self.clock, now)
        for row in range(first, min(first + count, len(ALL_ROWS) + 1)):
            v = verdict(row)
            opens = data.draw(st.one_of(st.just(0), TIMES), label=f"window of {row} opens")
            due = max(now, self.model.send_at, opens)  # worker.plan.Plan.record
            if v.status == Status.PENDING and v.recipient in self.model.suppressed:
                rows.append((row, Status.SUPPRESSED, record(Status.SUPPRESSED, v.recipient,
                                                            message="on the suppression list")))
            elif v.status == Status.PENDING and due > now:
                rows.append((row, Status.WAITING, record(Status.WAITING, v.recipient, due=due)))
            elif v.status == Status.PENDING:
                rows.append((row, Status.PENDING, record(Status.PENDING, v.recipient)))
                to_send.append(row)
            else:
                rows.append((row, v.status, record(v.status, v.given, message=v.reason)))
        assert self.scripts(self.ops.put_rows(now, rows)) == self.model.put_rows(rows) == len(rows)
        if to_send:
            self.publish(RUN, to_send)

    @precondition(lambda self: not self.model.recorded)
    @rule(now=TIMES)
    def close_recording(self, now):
        """The producer (or the healer of an abandoned recording) closes the recording at what it has."""
        total = len(self.model.rows)
        now = max(now, self.clock)
        assert self.scripts(self.ops.close_recording(now, total)) == self.model.close_recording(total, now)

    @precondition(lambda self: not self.model.recorded and self.model.rows and self.clock < self.model.send_at <= 20)
    @rule(data=st.data())
    def close_before_the_start(self, data):
        """The producer closes the recording before the run's start: the run is `scheduled`."""
        self.close_recording(data.draw(st.integers(min_value=self.clock, max_value=int(self.model.send_at) - 1),
                                       label="now"))

    @precondition(lambda self: self.model.recorded)
    @rule(now=TIMES, row=st.sampled_from(ALL_ROWS))
    def put_after_close(self, now, row):
        """Rows arriving after the recording closed are refused and change nothing."""
        rows = [(row, Status.PENDING, record(Status.PENDING, recipient(row)))]
        assert self.scripts(self.ops.put_rows(now, rows)) == self.model.put_rows(rows) == -1

    @rule()
    def create_again(self):
        """The producer submits the whole run again: it continues an open recording, or does nothing."""
        plan = Plan(self.spec)  # as worker.campaigns does for a run with a start time (real time, here)
        if self.model.recorded:
            assert self.runs.create(self.spec, [verdict(r) for r in ALL_ROWS], self.publish, run_id=RUN,
                                    plan=plan) == RUN
            return
        queued = len(self.queue)
        missing = [r for r in ALL_ROWS if r not in self.model.rows]
        flags = {r: verdict(r).recipient in self.model.suppressed for r in ALL_ROWS}
        ahead = self.model.send_at == FAR  # the only send_at still ahead of the real clock
        self.runs.create(self.spec, [verdict(r) for r in ALL_ROWS], self.publish, run_id=RUN, plan=plan)
        for row in missing:
            v = verdict(row)
            status = Status.SUPPRESSED if v.status == Status.PENDING and flags[row] else v.status
            if status == Status.PENDING and ahead:
                status = Status.WAITING
            given = v.recipient if v.status == Status.PENDING else v.given
            message = "on the suppression list" if status == Status.SUPPRESSED else v.reason
            due = FAR if status == Status.WAITING else 0
            self.model.put_rows([(row, status, record(status, given, message=message, due=due))])
        self.model.close_recording(len(ALL_ROWS), FAR - 1 if ahead else FAR)
        published = [row for _, rows in self.queue[queued:] for row in rows]
        assert published == [r for r in ROWS if not flags[r] and not ahead]  # duplicates are safe

    # -- the broker and the engine ------------------------------------------------------------------------
    def claim(self, owner, rows, now):
        """A claim through the facade, checked against the model and against the hand-out history."""
        before = {row: list(rec) for row, rec in self.model.rows.items()}
        state_before = self.model.state
        answer = self.scripts(self.ops.claim(owner, now, rows))
        assert answer.state == state_before
        if answer.claimed:
            self.clock = max(self.clock, now)
        handed = [c.row for c in answer.claimed]
        for c in answer.claimed:
            assert c.recipient == recipient(c.row)
            was = before[c.row]
            if was[STATUS] == Status.IN_FLIGHT and was[OWNER] == owner:  # the same delivery asked again
                assert self.handed[c.row] == (self.model.epoch[c.row], owner) and c.attempts == was[ATTEMPTS]
            else:
                assert was[STATUS] in UNTRIED, f"row {c.row} handed out from {was[STATUS]}"
                assert self.handed.get(c.row, (None,))[0] != self.model.epoch[c.row], f"row {c.row} twice"
                self.handed[c.row] = (self.model.epoch[c.row], owner)
        assert handed == self.model.claim(owner, now, rows)
        for c in answer.claimed:
            assert c.attempts == self.model.rows[c.row][ATTEMPTS]
        return handed

    def lease(self, owner, now):
        self.redis.zadd(keys.leases(RUN), {owner: now + LEASE})
        self.model.leases[owner] = now + LEASE

    @precondition(lambda self: self.queue)
    @rule(data=st.data(), now=TIMES, wait=st.integers(min_value=0, max_value=8))
    def deliver(self, data, now, wait):
        """A queued batch is delivered: it claims a part of its rows and defers the rest (deadline, hold)."""
        task, rows = self.queue.pop(data.draw(st.integers(0, len(self.queue) - 1), label="message"))
        owner = f"{task}:1"
        self.deliveries[task] = (rows, 1)
        self.lease(owner, now)
        part = data.draw(st.integers(0, len(rows)), label="claimed part")
        if part:
            self.claim(owner, rows[:part], now)
        if rows[part:]:
            assert self.scripts(self.ops.defer(now, now + wait, rows[part:])) == \
                self.model.defer(now + wait, rows[part:])

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), now=TIMES)
    def redeliver(self, data, now):
        """The broker delivers a batch again (same task ID, new nonce): its rows in flight turn uncertain."""
        task = data.draw(st.sampled_from(sorted(self.deliveries)), label="task")
        rows, delivered = self.deliveries[task]
        self.deliveries[task] = (rows, delivered + 1)
        owner = f"{task}:{delivered + 1}"
        held = {row for row, rec in self.model.rows.items() if rec[STATUS] == Status.IN_FLIGHT
                and task_of(rec[OWNER]) == task}
        self.lease(owner, now)
        handed = self.claim(owner, rows, now)
        assert not held & set(handed), "a redelivered batch got rows in flight again"

    @precondition(lambda self: self.owners_with(Status.IN_FLIGHT))
    @rule(data=st.data(), now=TIMES)
    def claim_again(self, data, now):
        """The same delivery retries a claim whose answer it lost: it gets its own rows back unchanged."""
        owner = data.draw(st.sampled_from(self.owners_with(Status.IN_FLIGHT)), label="owner")
        mine = self.rows_of(owner, Status.IN_FLIGHT)
        own = set(data.draw(st.lists(st.sampled_from(mine), unique=True, min_size=1), label="own"))
        others = set(data.draw(st.lists(st.sampled_from(ALL_ROWS), unique=True), label="others"))
        assert own <= set(self.claim(owner, sorted(own | others), now))

    @rule(owner=st.sampled_from(OWNERS), rows=row_subsets(), now=TIMES)
    def claim_any(self, owner, rows, now):
        """A claim by anyone for any rows (taskX:1 and taskX:2 are two deliveries of one task)."""
        self.claim(owner, rows, now)

    @precondition(lambda self: self.owners_with(Status.IN_FLIGHT, Status.UNCERTAIN))
    @rule(data=st.data(), now=TIMES)
    def finish_own(self, data, now):
        """Outcomes from an owner for rows it holds (in flight, or uncertain: a late outcome)."""
        owner = data.draw(st.sampled_from(self.owners_with(Status.IN_FLIGHT, Status.UNCERTAIN)), label="owner")
        mine = self.rows_of(owner, Status.IN_FLIGHT, Status.UNCERTAIN)
        rows = data.draw(st.lists(st.sampled_from(mine), unique=True, min_size=1), label="rows")
        self.finish(data, owner, rows, now)

    @rule(data=st.data(), owner=st.sampled_from(OWNERS), rows=row_subsets(), now=TIMES)
    def finish_any(self, data, owner, rows, now):
        """Outcomes from any owner for any rows (stale, foreign or duplicate outcomes are ignored)."""
        self.finish(data, owner, rows, now)

    def finish(self, data, owner, rows, now):
        outcomes = []
        for row in rows:
            status = data.draw(st.sampled_from(OUTCOMES), label=f"status of {row}")
            code = 0 if status == Status.SENT else data.draw(st.sampled_from([0, 103, 500]), label="code")
            due = data.draw(TIMES, label="due") if status in WAITS else 0
            outcomes.append(Outcome(row, str(status), code, f"{status} from {owner}", due))
        applied = self.scripts(self.ops.finish(owner, now, outcomes))
        assert applied == self.model.finish(owner, outcomes)

    def owners_with(self, *statuses) -> list[str]:
        return sorted({rec[OWNER] for rec in self.model.rows.values() if rec[STATUS] in statuses and rec[OWNER]})

    def rows_of(self, owner, *statuses) -> list[int]:
        return [row for row, rec in self.model.rows.items() if rec[OWNER] == owner and rec[STATUS] in statuses]

    @rule(data=st.data(), rows=row_subsets(), now=TIMES, wait=st.integers(0, 8))
    def release(self, data, rows, now, wait):
        """A delivery hands back rows it claimed but never sent, for now or later (`when`)."""
        owner = data.draw(st.sampled_from(sorted({*OWNERS, *self.owners_with(Status.IN_FLIGHT)})), label="owner")
        released = self.scripts(self.ops.release(owner, now, now + wait, rows))
        assert released == self.model.release(owner, now + wait, rows)

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data(), now=TIMES)
    def end_batch(self, data, now):
        """A delivery ends at its deadline: its unsent rows go back into `due` at once, its lease goes."""
        owner = data.draw(st.sampled_from(sorted(self.model.leases)), label="owner")
        unsent = self.rows_of(owner, Status.IN_FLIGHT)
        if unsent:
            assert self.scripts(self.ops.release(owner, now, now, unsent)) == \
                self.model.release(owner, now, unsent)
        self.redis.zrem(keys.leases(RUN), owner)
        del self.model.leases[owner]

    @rule(rows=row_subsets(), now=TIMES, when=TIMES)
    def defer(self, rows, now, when):
        """A batch hands back untried rows for a given time (only pending rows are queued)."""
        assert self.scripts(self.ops.defer(now, when, rows)) == self.model.defer(when, rows)

    # -- the sweepers and the operator ------------------------------------------------------------------
    @rule(now=TIMES, limit=st.integers(min_value=1, max_value=4), lease=st.integers(min_value=1, max_value=10))
    def pop_due(self, now, limit, lease):
        """The sweeper leases rows whose time has come and queues a batch of them."""
        rows = self.scripts(self.ops.pop_due(now, limit, now + lease))
        assert rows == self.model.pop_due(now, limit, now + lease)
        if rows:
            self.publish(RUN, sorted(rows))

    @rule(now=TIMES, lease=st.integers(min_value=1, max_value=10))
    def sweep(self, now, lease):
        """A sweeper's whole pass (worker.runs.Runs.sweep): starts a scheduled run whose time has come,
        queues due rows, ends a stopped run's due and parked rows, retires a finished run."""
        queued = len(self.queue)
        expected = self.model.sweep(now, self.runs.batch_size, now + lease)
        assert self.runs.sweep(self.publish, lease=lease, now=now) == len(expected)
        assert self.queue[queued:] == ([(f"msg{self.messages}", sorted(expected))] if expected else [])
        assert self.redis.sismember(keys.ACTIVE, RUN) == self.model.active

    @precondition(lambda self: self.model.state == RunState.SCHEDULED and self.model.send_at <= 20)
    @rule(data=st.data(), lease=st.integers(min_value=1, max_value=10))
    def sweep_at_the_start(self, data, lease):
        """The sweeper's pass once a scheduled run's time has come (exact, or later): it starts sending."""
        self.sweep(data.draw(st.integers(min_value=int(self.model.send_at), max_value=20), label="now"), lease)

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data(), now=TIMES)
    def owner_gone(self, data, now):
        """A delivery dies: its lease runs out, then a sweeper reconciles the run."""
        owner = data.draw(st.sampled_from(sorted(self.model.leases)), label="owner")
        self.redis.zadd(keys.leases(RUN), {owner: now - 1})
        self.model.leases[owner] = now - 1
        self.reconcile(now)

    @rule(now=TIMES)
    def reconcile(self, now):
        """A sweeper reconciles the run: rows of dead owners turn uncertain, pending rows are queued again."""
        rows = self.scripts(self.ops.reconcile(now, 1, len(ALL_ROWS)))
        assert rows == self.model.reconcile(now)
        if rows:
            self.publish(RUN, rows)

    @rule(row=st.sampled_from(ROWS))
    def suppress(self, row):
        """The operator adds a recipient to the suppression list (maybe after its run was recorded)."""
        self.runs.suppress(CHANNEL, [recipient(row)])
        self.model.suppressed.add(recipient(row))

    @rule(state=st.sampled_from([RunState.ABORTED, RunState.CANCELLED]))
    def stop(self, state):
        assert self.runs.stop(RUN, state, f"{state} in the test") == self.model.stop(state)

    @precondition(lambda self: self.model.rows)
    @rule()
    def cancel(self):
        """The operator's `cancel`: the run stops and its untried rows (waiting ones included) end at once."""
        assert self.runs.cancel(RUN) == self.model.stop(RunState.CANCELLED)
        self.model.finalize_untried()

    @rule()
    def finalize_untried(self):
        assert self.runs.finalize_untried(RUN) == self.model.finalize_untried()

    @rule()
    def pause(self):
        assert self.runs.pause(RUN) == self.model.transition(
            (RunState.RUNNING, RunState.QUEUING, RunState.SCHEDULED), RunState.PAUSED)

    @rule()
    def resume(self):
        parked = set(self.model.parked)
        queued = len(self.queue)
        ahead = self.model.send_at == FAR  # Runs.resume compares send_at with the real clock
        assert self.runs.resume(RUN, self.publish) == self.model.transition(
            (RunState.PAUSED,), RunState.SCHEDULED if ahead else RunState.RUNNING)
        republished = [row for _, rows in self.queue[queued:] for row in rows]
        assert sorted(republished) == sorted(parked) and len(republished) == len(set(republished))
        self.model.parked.clear()

    @rule(include_uncertain=st.booleans())
    def retry(self, include_uncertain):
        if not self.model.recorded:
            try:
                self.runs.retry(RUN, self.publish, include_uncertain=include_uncertain)
            except UsageError:
                return
            raise AssertionError("retry was allowed while the run was being recorded")
        parked = set(self.model.parked)
        queued = len(self.queue)
        expected = self.model.retry(include_uncertain)
        assert self.runs.retry(RUN, self.publish, include_uncertain=include_uncertain) == len(expected)
        published = [row for _, rows in self.queue[queued:] for row in rows]
        assert published[:len(expected)] == expected  # the requeued rows, then whatever was parked
        if expected:
            self.model.parked.clear()
            assert sorted(published[len(expected):]) == sorted(parked)
        else:
            assert published == []

    # -- invariants -------------------------------------------------------------------------------------
    @invariant()
    def stored_state_matches_model_and_promises(self):
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.rows(RUN))
        pipe.hgetall(keys.counts(RUN))
        pipe.hgetall(keys.run(RUN))
        pipe.zrange(keys.due(RUN), 0, -1, withscores=True)
        pipe.smembers(keys.parked(RUN))
        pipe.smembers(keys.suppressed(CHANNEL))
        pipe.zrange(keys.leases(RUN), 0, -1, withscores=True)
        raw_rows, raw_counts, meta, raw_due, raw_parked, suppressed, leases = pipe.execute()
        rows = {int(row): Record.decode(raw) for row, raw in raw_rows.items()}
        due = {int(row): score for row, score in raw_due}
        parked = {int(row) for row in raw_parked}

        def having(*statuses) -> set[int]:
            return {row for row, rec in rows.items() if rec.status in statuses}

        # every row has exactly one known status; the counts hash is their tally
        assert all(rec.status in set(Status) for rec in rows.values())
        counts = {status: int(n) for status, n in raw_counts.items()}
        assert all(n >= 0 for n in counts.values()), counts
        assert {s: n for s, n in counts.items() if n} == dict(Counter(rec.status for rec in rows.values()))

        # in_flight rows name their owner; `due` holds every retry_wait row, and otherwise pending rows only
        assert all(rec.owner for rec in rows.values() if rec.status == Status.IN_FLIGHT)
        assert having(*WAITS) <= set(due) <= having(*UNTRIED), due
        assert parked <= having(*UNTRIED), parked
        if meta["state"] == RunState.SCHEDULED:
            assert not having(Status.IN_FLIGHT) and float(meta["send_at"]) > 0, "a scheduled run is sending"

        # completed (or, stopped, finished) exactly when the recording is closed and nothing is open
        closed_and_idle = meta.get("recorded") == "1" and not having(*NOT_FINAL)
        state = meta["state"]
        if state in (RunState.COMPLETED, RunState.RUNNING, RunState.PAUSED, RunState.QUEUING, RunState.SCHEDULED):
            assert (state == RunState.COMPLETED) == closed_and_idle, (state, meta.get("recorded"), counts)
        if state in STOPPED_STATES:
            assert ("finished_at" in meta) == closed_and_idle
        if state == RunState.COMPLETED:
            assert "finished_at" in meta
        # nothing is left parked once the run sends again (parked rows are only republished by resume)
        if state in SENDING_STATES:
            assert not parked, f"{state} run with rows parked and nobody to republish them: {parked}"
        # no pending row is lost: a queued batch, `due` or `parked` holds it
        lost = having(Status.PENDING) - set(due) - parked - self.queued_rows()
        assert not lost, f"pending rows nothing will queue again: {lost}"

        # and everything is as the model predicts
        assert rows == {row: Record(*rec) for row, rec in self.model.rows.items()}
        assert state == self.model.state
        assert (meta.get("recorded") == "1") == self.model.recorded
        if self.model.recorded:
            assert meta["total"] == str(self.model.total)
        assert ("finished_at" in meta) == self.model.finished
        assert due == self.model.due
        assert parked == self.model.parked
        assert suppressed == self.model.suppressed
        assert dict(leases) == self.model.leases


class ScheduledRunMachine(RunMachine):
    """The same, for runs that start at a time the logical clock reaches: scheduled, then started."""

    send_ats = (10,)

    @precondition(lambda self: self.model.recorded)
    @rule()
    def create_again(self):
        """Only after the recording closed: a producer submitting again does not cut the schedule short."""
        super().create_again()


@pytest.mark.parametrize("machine, examples", [(RunMachine, 250), (ScheduledRunMachine, 150)],
                         ids=["any-start", "scheduled"])
def test_recipient_state_machine(redis_url, machine, examples):
    """Random producer/engine/sweeper/operator sequences from the start of the recording keep every promise."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run_state_machine_as_test(
            lambda: machine(client),
            settings=settings(max_examples=examples, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        client.close()
