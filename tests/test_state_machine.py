"""Stateful property test of the recipient state scripts (worker.scripts) against a real Redis.

A hypothesis RuleBasedStateMachine drives one small run (6 sendable rows and 1 invalid row) through
every operation that changes recipient state: claim, finish, release (the engine's calls, made here
directly through the scripts), stop, finalize_untried, pause/resume, retry (operator requeue), pop_due
and creating the same run again (worker.runs). A pure-Python model predicts every row record, the run
state, the due/parked/suppressed sets; after each step the stored state must equal the model and the
promises must hold on the stored data itself:

  * the counts hash equals the tally of stored row statuses, and every row has one known status;
  * a row is handed out by claim at most once per epoch. An epoch ends only when the row legitimately
    becomes sendable again: operator requeue (retry), release (claimed but never sent) or a
    `retry_wait` outcome (the docstring's transitions); a redelivered claim by the same owner never
    hands the row out again, it makes it `uncertain`;
  * the run is `completed` exactly when no row is pending/in_flight/retry_wait and it was
    running/paused (never completed with open rows, never running/paused without them);
  * in_flight rows always name their owner; the due set holds exactly the retry_wait rows.

Times are small integers (a logical clock), so due times are sometimes past and sometimes future.
"""
from __future__ import annotations

import json
from collections import Counter

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from worker import keys, scripts
from worker.ingest import Verdict
from worker.runs import Runs, RunSpec
from worker.statuses import NOT_FINAL, STOPPED_STATES, RunState, Status

RUN = "run_sm"
CHANNEL = "sms"
ROWS = (1, 2, 3, 4, 5, 6)
INVALID_ROW = 7
OWNERS = ("batch-a", "batch-b", "batch-c")
OUTCOMES = (Status.SENT, Status.BLACKLISTED, Status.INVALID, Status.FAILED, Status.ABORTED,
            Status.UNCERTAIN, Status.RETRY_WAIT)
TIMES = st.integers(min_value=0, max_value=20)
UNCERTAIN_MESSAGE = "the worker stopped after claiming this recipient; the request may have been sent"
S, ATTEMPTS, CODE, MESSAGE, RECIPIENT, OWNER, DUE = range(7)  # row record fields


def recipient(row: int) -> str:
    return f"+44791100000{row}"


def verdicts() -> list[Verdict]:
    rows = [Verdict(row, recipient(row), recipient(row), Status.PENDING, "") for row in ROWS]
    return rows + [Verdict(INVALID_ROW, "nope", "", Status.INVALID, "not a phone number")]


def row_subsets(min_size: int = 1):
    return st.lists(st.sampled_from(ROWS), unique=True, min_size=min_size, max_size=len(ROWS)).map(sorted)


class Model:
    """What the stored state must be, computed in Python from the docstring's transitions."""

    def __init__(self) -> None:
        self.rows = {row: [Status.PENDING, 0, 0, "", recipient(row), "", 0] for row in ROWS}
        self.rows[INVALID_ROW] = [Status.INVALID, 0, 0, "not a phone number", "nope", "", 0]
        self.state = RunState.RUNNING
        self.finished = False  # finished_at present in the run hash
        self.due: dict[int, float] = {}  # the due ZSET: row -> score
        self.parked: set[int] = set()
        self.suppressed: set[str] = set()
        self.epoch = dict.fromkeys(self.rows, 0)  # bumped whenever a row may be handed out again
        self.handed_in: dict[int, int] = {}  # row -> epoch in which claim last handed it out

    def open_rows(self) -> int:
        return sum(1 for rec in self.rows.values() if rec[S] in NOT_FINAL)

    def move(self, row: int, status: str) -> None:
        self.rows[row][S] = status

    def maybe_complete(self) -> None:
        if self.open_rows():
            return
        if self.state in (RunState.RUNNING, RunState.PAUSED):
            self.state = RunState.COMPLETED
            self.finished = True
        elif self.state in STOPPED_STATES:
            self.finished = True

    def set_aside(self, row: int) -> None:
        if self.state == RunState.PAUSED:
            self.parked.add(row)
        elif self.state in STOPPED_STATES:
            rec = self.rows[row]
            rec[S] = Status.CANCELLED if self.state == RunState.CANCELLED else Status.ABORTED
            rec[OWNER] = ""
            self.due.pop(row, None)
            self.parked.discard(row)

    def claim(self, owner: str, now: int, rows: list[int]) -> list[int]:
        sending = self.state in (RunState.RUNNING, RunState.QUEUING)
        out = []
        for row in rows:
            rec = self.rows[row]
            ready = rec[S] == Status.PENDING or (rec[S] == Status.RETRY_WAIT and rec[DUE] <= now)
            if rec[S] == Status.IN_FLIGHT and rec[OWNER] == owner:
                rec[S], rec[CODE], rec[MESSAGE] = Status.UNCERTAIN, 0, UNCERTAIN_MESSAGE
            elif ready and sending:
                rec[S] = Status.IN_FLIGHT
                rec[ATTEMPTS] += 1
                rec[OWNER] = owner
                self.due.pop(row, None)
                out.append(row)
            elif rec[S] in (Status.PENDING, Status.RETRY_WAIT) and not sending:
                self.set_aside(row)
        self.maybe_complete()
        return out

    def finish(self, owner: str, outcomes: list[tuple[int, str, int, str, int]]) -> int:
        applied = 0
        for row, status, code, message, due in outcomes:
            rec = self.rows[row]
            if rec[OWNER] == owner and (rec[S] == Status.IN_FLIGHT
                                        or (rec[S] == Status.UNCERTAIN and status != Status.RETRY_WAIT)):
                rec[S], rec[CODE], rec[MESSAGE], rec[DUE] = status, code, message, due
                if status == Status.RETRY_WAIT:
                    self.due[row] = due
                    self.epoch[row] += 1
                elif status == Status.BLACKLISTED:
                    self.suppressed.add(rec[RECIPIENT])
                applied += 1
        self.maybe_complete()
        return applied

    def release(self, owner: str, rows: list[int]) -> int:
        released = 0
        for row in rows:
            rec = self.rows[row]
            if rec[S] == Status.IN_FLIGHT and rec[OWNER] == owner:
                rec[S] = Status.PENDING
                rec[ATTEMPTS] = max(0, rec[ATTEMPTS] - 1)
                rec[OWNER] = ""
                self.epoch[row] += 1
                self.set_aside(row)
                released += 1
        self.maybe_complete()
        return released

    def stop(self, state: RunState) -> bool:
        if self.state in (RunState.QUEUING, RunState.RUNNING, RunState.PAUSED):
            self.state = state
            return True
        return False

    def finalize_untried(self) -> int:
        if self.state not in STOPPED_STATES:
            return 0
        ended = 0
        for row, rec in self.rows.items():
            if rec[S] in (Status.PENDING, Status.RETRY_WAIT):
                self.set_aside(row)
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
        self.state = RunState.RUNNING
        self.finished = False
        self.parked.clear()  # republished by retry
        requeued = []
        for row, rec in self.rows.items():
            if rec[S] in wanted:
                rec[S], rec[CODE], rec[MESSAGE], rec[OWNER] = Status.PENDING, 0, "", ""
                self.epoch[row] += 1
                requeued.append(row)
        self.transition((RunState.RUNNING,), RunState.RUNNING)
        return requeued

    def pop_due(self, now: int, limit: int, lease_until: int) -> list[int]:
        ready = sorted((score, str(row)) for row, score in self.due.items() if score <= now)[:limit]
        rows = [int(row) for _, row in ready]
        for row in rows:
            self.due[row] = lease_until
        return rows


class RunMachine(RuleBasedStateMachine):
    """One run's rows under random engine, sweeper and operator actions; stored state == model."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        client.flushall()
        self.redis = client
        self.runs = Runs(client, batch_size=4)
        self.scripts = scripts.register(client)
        self.keys = keys.script_keys(RUN, CHANNEL)
        self.published: list[tuple[str, list[int]]] = []
        self.runs.create(RunSpec(channel=CHANNEL, directory="dir_1"), verdicts(), self.publish, run_id=RUN)
        assert self.published == [(RUN, [1, 2, 3, 4]), (RUN, [5, 6])]
        self.published.clear()
        self.model = Model()

    def publish(self, run_id: str, rows: list[int]) -> None:
        self.published.append((run_id, rows))

    def take_published(self) -> list[int]:
        rows = [row for run_id, batch in self.published for row in batch]
        assert all(run_id == RUN for run_id, _ in self.published)
        self.published.clear()
        return rows

    # -- the engine's calls -------------------------------------------------------------------
    @rule(owner=st.sampled_from(OWNERS), rows=row_subsets(), now=TIMES)
    def claim_batch(self, owner, rows, now):
        """A batch task claims some rows."""
        self.claim(owner, rows, now)

    def claim(self, owner, rows, now):
        state_before = self.model.state
        redelivered = {row for row in rows if self.model.rows[row][S] == Status.IN_FLIGHT
                       and self.model.rows[row][OWNER] == owner}
        answer = self.scripts["claim"](keys=self.keys, args=[owner, now, *rows])
        assert answer[0] == state_before
        handed = [int(answer[i]) for i in range(2, len(answer), 3)]
        for i in range(2, len(answer), 3):
            row = int(answer[i])
            assert answer[i + 1] == recipient(row)
        for row in handed:  # the promise itself, checked against the history, not the model
            assert self.model.handed_in.get(row) != self.model.epoch[row], f"row {row} handed out twice"
            self.model.handed_in[row] = self.model.epoch[row]
        assert not redelivered & set(handed), "a redelivered batch got its in-flight rows again"
        expected = self.model.claim(owner, now, rows)
        assert handed == expected
        for i, row in zip(range(2, len(answer), 3), handed, strict=True):
            assert int(answer[i + 2]) == self.model.rows[row][ATTEMPTS]

    @precondition(lambda self: self.owners_with(Status.IN_FLIGHT))
    @rule(data=st.data(), now=TIMES)
    def claim_redelivered(self, data, now):
        """The same batch (owner) delivered again: it claims its own in-flight rows (and maybe others)."""
        owner = data.draw(st.sampled_from(self.owners_with(Status.IN_FLIGHT)), label="owner")
        mine = self.rows_of(owner, Status.IN_FLIGHT)
        rows = sorted(set(data.draw(st.lists(st.sampled_from(mine), unique=True, min_size=1), label="own"))
                      | set(data.draw(st.lists(st.sampled_from(ROWS), unique=True), label="others")))
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
            status = data.draw(st.sampled_from(OUTCOMES + (Status.RETRY_WAIT,)), label=f"status of {row}")
            code = 0 if status == Status.SENT else data.draw(st.sampled_from([0, 103, 500]), label="code")
            due = data.draw(TIMES, label="due") if status == Status.RETRY_WAIT else 0
            outcomes.append((row, str(status), code, f"{status} from {owner}", due))
        args: list[object] = [owner, now]
        for outcome in outcomes:
            args += list(outcome)
        applied = self.scripts["finish"](keys=self.keys, args=args)
        assert applied == self.model.finish(owner, outcomes)

    def owners_with(self, *statuses) -> list[str]:
        return sorted({rec[OWNER] for rec in self.model.rows.values() if rec[S] in statuses and rec[OWNER]})

    def rows_of(self, owner, *statuses) -> list[int]:
        return [row for row, rec in self.model.rows.items() if rec[OWNER] == owner and rec[S] in statuses]

    @rule(owner=st.sampled_from(OWNERS), rows=row_subsets(), now=TIMES)
    def release(self, owner, rows, now):
        released = self.scripts["release"](keys=self.keys, args=[owner, now, *rows])
        assert released == self.model.release(owner, rows)

    # -- the operator's and sweeper's calls (worker.runs) ---------------------------------------
    @rule(state=st.sampled_from([RunState.ABORTED, RunState.CANCELLED]))
    def stop(self, state):
        assert self.runs.stop(RUN, state, f"{state} in the test") == self.model.stop(state)

    @rule()
    def finalize_untried(self):
        assert self.runs.finalize_untried(RUN) == self.model.finalize_untried()

    @rule()
    def pause(self):
        assert self.runs.pause(RUN) == self.model.transition((RunState.RUNNING, RunState.QUEUING),
                                                             RunState.PAUSED)

    @rule()
    def resume(self):
        parked = set(self.model.parked)
        assert self.runs.resume(RUN, self.publish) == self.model.transition((RunState.PAUSED,),
                                                                            RunState.RUNNING)
        republished = self.take_published()
        assert sorted(republished) == sorted(parked) and len(republished) == len(set(republished))
        self.model.parked.clear()

    @rule(include_uncertain=st.booleans())
    def retry(self, include_uncertain):
        parked = set(self.model.parked)
        expected = self.model.retry(include_uncertain)
        assert self.runs.retry(RUN, self.publish, include_uncertain=include_uncertain) == len(expected)
        published = self.take_published()
        assert published[:len(expected)] == expected  # the requeued rows, then whatever was parked
        assert sorted(published[len(expected):]) == sorted(parked)

    @rule(now=TIMES, limit=st.integers(min_value=1, max_value=4), lease=st.integers(min_value=1, max_value=10),
          owner=st.sampled_from((None, *OWNERS)))
    def pop_due(self, now, limit, lease, owner):
        """The sweeper leases due retries; the batch it queues (owner) may claim them at once."""
        rows = [int(r) for r in self.scripts["pop_due"](keys=self.keys, args=[now, limit, now + lease])]
        assert rows == self.model.pop_due(now, limit, now + lease)
        if rows and owner:
            self.claim(owner, sorted(rows), now)

    @rule()
    def create_again(self):
        assert self.runs.create(RunSpec(channel=CHANNEL, directory="dir_1"), verdicts(), self.publish,
                                run_id=RUN) == RUN
        assert self.take_published() == []

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def stored_state_matches_model_and_promises(self):
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.rows(RUN))
        pipe.hgetall(keys.counts(RUN))
        pipe.hgetall(keys.run(RUN))
        pipe.zrange(keys.due(RUN), 0, -1, withscores=True)
        pipe.smembers(keys.parked(RUN))
        pipe.smembers(keys.suppressed(CHANNEL))
        raw_rows, raw_counts, meta, due, parked, suppressed = pipe.execute()
        rows = {int(row): json.loads(raw) for row, raw in raw_rows.items()}

        # every row has exactly one known status; the counts hash is their tally
        assert set(rows) == set(self.model.rows)
        assert all(rec[S] in set(Status) for rec in rows.values())
        counts = {status: int(n) for status, n in raw_counts.items()}
        assert all(n >= 0 for n in counts.values()), counts
        assert {s: n for s, n in counts.items() if n} == dict(Counter(rec[S] for rec in rows.values()))

        # in_flight rows name their owner; the due set is exactly the retry_wait rows
        assert all(rec[OWNER] for rec in rows.values() if rec[S] == Status.IN_FLIGHT)
        assert {int(r) for r, _ in due} == {row for row, rec in rows.items() if rec[S] == Status.RETRY_WAIT}

        # completed exactly when nothing is open and the run was running/paused
        open_rows = sum(1 for rec in rows.values() if rec[S] in NOT_FINAL)
        state = meta["state"]
        if state == RunState.COMPLETED:
            assert open_rows == 0 and "finished_at" in meta
        if state in (RunState.RUNNING, RunState.PAUSED):
            assert open_rows > 0, f"{state} with no open rows"
        if state in STOPPED_STATES:
            assert ("finished_at" in meta) == (open_rows == 0)
        # nothing is left parked once the run sends again (parked rows are only republished by resume)
        if state in (RunState.RUNNING, RunState.QUEUING):
            assert not parked, f"{state} run with rows parked and nobody to republish them: {parked}"

        # and everything is as the model predicts
        assert rows == {row: [str(rec[0]), *rec[1:]] for row, rec in self.model.rows.items()}
        assert state == self.model.state
        assert ("finished_at" in meta) == self.model.finished
        assert {int(r): s for r, s in due} == self.model.due
        assert {int(r) for r in parked} == self.model.parked
        assert suppressed == self.model.suppressed


def test_recipient_state_machine(redis_url):
    """Random claim/finish/release/stop/finalize/pause/resume/retry/pop_due sequences keep every promise."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run_state_machine_as_test(
            lambda: RunMachine(client),
            settings=settings(max_examples=250, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        client.close()
