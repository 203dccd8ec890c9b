"""Plain tests of worker.runs and the recipient state scripts (worker.scripts) against a real Redis.

Scripts are reached only through the facade (`store.scripts(store.ops(run, CHANNEL).claim(...))`), rows
are read with `Record.decode`. Owners look like real ones: "taskA:1" and "taskA:2" are two deliveries
of one batch task, "taskB:1" is another task. Hole numbers refer to the protocol rewrite's issue.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from worker import keys
from worker import runs as runs_module
from worker.errors import UsageError
from worker.ingest import Verdict
from worker.runs import SWEEP_CHUNK, Runs, RunSpec
from worker.outcomes import Outcome
from worker.scripts import Call, Ops, Record
from worker.statuses import RunState, Status

CHANNEL = "sms"
SPEC = RunSpec(channel=CHANNEL, directory="dir_1")
FAR = 10**10  # a due time that never comes


def phone(i: int) -> str:
    return f"+447911{i:06d}"


def verdicts(count: int, invalid: frozenset[int] = frozenset(), first: int = 1) -> list[Verdict]:
    return [Verdict(row, "nope", "", Status.INVALID, "not a phone number") if row in invalid
            else Verdict(row, phone(row), phone(row), Status.PENDING, "")
            for row in range(first, count + 1)]


class Recorder:
    """A publisher that only remembers what it was asked to queue."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []

    def __call__(self, run_id: str, rows: list[int]) -> None:
        self.batches.append((run_id, list(rows)))

    def rows(self) -> list[int]:
        return [row for _, batch in self.batches for row in batch]

    def take(self) -> list[int]:
        rows = sorted(self.rows())
        self.batches.clear()
        return rows


class CountingScripts:
    """Wraps a Runs' `scripts` caller and remembers every packed call it ran."""

    def __init__(self, inner: Callable) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    def __call__(self, call: Call, client=None):
        self.calls.append(call)
        return self.inner(call, client)

    def args_of(self, script: str) -> list[list]:
        return [call.args for call in self.calls if call.script == script]


class ProducerDied(Exception):
    pass


def producer(rows: list[Verdict], between: Callable[[], None] | None = None, after: int = 0,
             die: bool = False) -> Iterator[Verdict]:
    """Verdicts as a streaming producer yields them: `between()` runs once the first `after` rows were
    handed over (with ROW_CHUNK dividing `after`, they are recorded by then); `die` ends it with an error."""
    for verdict in rows:
        if verdict.row == after + 1 and between is not None:
            between()
        yield verdict
    if len(rows) == after and between is not None:
        between()
    if die:
        raise ProducerDied()


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(client) -> Runs:
    return Runs(client, batch_size=100)


@pytest.fixture
def small_chunks(monkeypatch):
    """Rows are recorded two at a time, so a test can act between two chunks of one create()."""
    monkeypatch.setattr(runs_module, "ROW_CHUNK", 2)


def create(store: Runs, count: int, run_id: str = "run_1", invalid: frozenset[int] = frozenset(),
           publish: Recorder | None = None) -> str:
    return store.create(SPEC, verdicts(count, invalid), publish or Recorder(), run_id=run_id)


def ops(store: Runs, run_id: str) -> Ops:
    return store.ops(run_id, CHANNEL)


def claim(store: Runs, run_id: str, owner: str, now: float, rows: list[int]) -> list[int]:
    """The rows the claim script hands out for sending."""
    return [c.row for c in store.scripts(ops(store, run_id).claim(owner, now, rows)).claimed]


def finish(store: Runs, run_id: str, owner: str, now: float, *outcomes: tuple[int, str, float]) -> int:
    done = [Outcome(row, status, 0, f"{status} in the test", due) for row, status, due in outcomes]
    return store.scripts(ops(store, run_id).finish(owner, now, done))


def release(store: Runs, run_id: str, owner: str, now: float, when: float, rows: list[int]) -> int:
    return store.scripts(ops(store, run_id).release(owner, now, when, rows))


def defer(store: Runs, run_id: str, now: float, when: float, rows: list[int]) -> int:
    return store.scripts(ops(store, run_id).defer(now, when, rows))


def pop_due(store: Runs, run_id: str, now: float, lease_until: float) -> list[int]:
    return sorted(store.scripts(ops(store, run_id).pop_due(now, 100, lease_until)))


def record(client, run_id: str, row: int) -> Record:
    return Record.decode(client.hget(keys.rows(run_id), row))


def statuses(client, run_id: str) -> dict[int, str]:
    return {int(row): Record.decode(raw).status for row, raw in client.hgetall(keys.rows(run_id)).items()}


def due(client, run_id: str) -> dict[int, float]:
    return {int(row): score for row, score in client.zrange(keys.due(run_id), 0, -1, withscores=True)}


def parked(client, run_id: str) -> set[int]:
    return {int(row) for row in client.smembers(keys.parked(run_id))}


class TestCreate:
    def test_same_run_id_twice_is_one_run(self, store):
        """Creating a run with the same run_id twice records one run and leaves its counts as they were."""
        first, second = Recorder(), Recorder()
        create(store, 250, invalid=frozenset({7}), publish=first)
        counts = store.counts("run_1")
        assert counts == {"pending": 249, "invalid": 1}
        assert create(store, 250, invalid=frozenset({7}), publish=second) == "run_1"
        assert store.counts("run_1") == counts
        assert second.batches == [] and sorted(first.rows()) == [r for r in range(1, 251) if r != 7]
        assert store.list_runs() == ["run_1"] and store.meta("run_1")["total"] == "250"
        assert store.meta("run_1")["recorded"] == "1"

    def test_recreate_after_a_crashed_producer_keeps_recorded_rows(self, store, client, small_chunks):
        """Re-creating a run whose recording was never closed continues it and rewrites no recorded row."""
        with pytest.raises(ProducerDied):
            store.create(SPEC, producer(verdicts(10), die=True), Recorder(), run_id="run_1")
        assert store.meta("run_1")["state"] == RunState.QUEUING and store.meta("run_1").get("recorded") != "1"
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]  # batches send while queuing
        assert finish(store, "run_1", "taskA:1", 101, (2, Status.SENT, 0)) == 1
        assert store.counts("run_1") == {"pending": 8, "in_flight": 1, "sent": 1}
        again = Recorder()
        create(store, 12, publish=again)
        assert store.counts("run_1") == {"pending": 10, "in_flight": 1, "sent": 1}
        assert record(client, "run_1", 1).status == Status.IN_FLIGHT and record(client, "run_1", 1).owner == "taskA:1"
        meta = store.meta("run_1")
        assert meta["state"] == RunState.RUNNING and meta["recorded"] == "1" and meta["total"] == "12"
        assert claim(store, "run_1", "taskB:1", 102, again.rows()) == list(range(3, 13))  # duplicates are safe

    def test_recreate_continues_a_run_paused_while_recording(self, store, small_chunks):
        """A run paused before its recording closed is continued by a re-create (the old code took it for done)."""
        with pytest.raises(ProducerDied):
            store.create(SPEC, producer(verdicts(4), die=True), Recorder(), run_id="run_1")
        assert store.pause("run_1")
        create(store, 6)
        meta = store.meta("run_1")
        assert meta["recorded"] == "1" and meta["total"] == "6" and meta["state"] == RunState.PAUSED
        assert store.counts("run_1") == {"pending": 6}

    def test_recreate_of_a_recorded_run_is_a_no_op(self, store):
        """A run whose recording was closed is not touched by a re-create, even with other rows."""
        create(store, 3)
        published = Recorder()
        create(store, 5, publish=published)
        assert published.batches == [] and store.counts("run_1") == {"pending": 3}
        assert store.meta("run_1")["total"] == "3"


class TestPaused:
    def test_claim_parks_rows_and_resume_republishes_them(self, store, client):
        """A claim in a paused run hands nothing out and parks the pending rows; resume queues them again."""
        create(store, 5)
        assert store.pause("run_1")
        assert claim(store, "run_1", "taskA:1", 100, [1, 2, 3, 4, 5]) == []
        assert parked(client, "run_1") == {1, 2, 3, 4, 5}
        assert store.counts("run_1") == {"pending": 5}
        published = Recorder()
        assert store.resume("run_1", published)
        assert sorted(published.rows()) == [1, 2, 3, 4, 5]
        assert client.scard(keys.parked("run_1")) == 0 and store.meta("run_1")["state"] == RunState.RUNNING
        assert claim(store, "run_1", "taskB:1", 101, published.rows()) == published.rows()

    def test_retry_of_a_paused_run_republishes_its_parked_rows(self, store, client):
        """Retry sets a paused run running, so it must queue the parked rows itself (resume never will)."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.FAILED, 0)) == 1
        store.pause("run_1")
        assert claim(store, "run_1", "taskB:1", 102, [2, 3]) == []  # parked
        published = Recorder()
        assert store.retry("run_1", published) == 1
        assert sorted(published.rows()) == [1, 2, 3]
        assert client.scard(keys.parked("run_1")) == 0 and store.meta("run_1")["state"] == RunState.RUNNING


class TestCancelled:
    def test_claim_in_a_cancelled_run_ends_pending_rows(self, store, client):
        """A claim in a cancelled run hands nothing out and ends its pending rows `cancelled`."""
        create(store, 4)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert store.stop("run_1", RunState.CANCELLED, "cancelled in the test")
        assert claim(store, "run_1", "taskB:1", 101, [1, 2, 3, 4]) == []
        assert statuses(client, "run_1") == {1: "in_flight", 2: "cancelled", 3: "cancelled", 4: "cancelled"}
        assert all(record(client, "run_1", row).owner == "" for row in (2, 3, 4))
        assert "finished_at" not in store.meta("run_1")  # row 1 is still out
        assert finish(store, "run_1", "taskA:1", 102, (1, Status.SENT, 0)) == 1
        meta = store.meta("run_1")
        assert meta["state"] == RunState.CANCELLED and meta["finished_at"] == "102"
        assert store.counts("run_1") == {"sent": 1, "cancelled": 3}


class TestFinalize:
    def test_finalize_untried_over_12000_rows_in_chunks(self, store, client):
        """finalize_untried ends every pending and waiting row of a 12,000-row run, a chunk per call."""
        invalid = frozenset({1, 5000, 5001, 12000})
        create(store, 12_000, invalid=invalid)
        assert claim(store, "run_1", "taskA:1", 100, [2, 3, 4]) == [2, 3, 4]
        assert finish(store, "run_1", "taskA:1", 101, (4, Status.RETRY_WAIT, FAR)) == 1
        store.pause("run_1")
        assert claim(store, "run_1", "taskB:1", 102, [6, 7]) == []  # parked
        assert store.stop("run_1", RunState.ABORTED, "aborted in the test")
        store.scripts = counting = CountingScripts(store.scripts)
        assert store.finalize_untried("run_1") == 12_000 - len(invalid) - 2
        assert [(args[1], args[-1]) for args in counting.args_of("finalize")] == [
            (1, SWEEP_CHUNK), (SWEEP_CHUNK + 1, 2 * SWEEP_CHUNK), (2 * SWEEP_CHUNK + 1, 12_000)]
        assert store.counts("run_1") == {"aborted": 12_000 - len(invalid) - 2, "in_flight": 2, "invalid": 4}
        assert client.exists(keys.due("run_1"), keys.parked("run_1")) == 0
        assert "finished_at" not in store.meta("run_1")
        assert store.finalize_untried("run_1") == 0  # nothing left to end; the in-flight rows stay

    def test_sweeper_ends_rows_that_wait_after_the_stop_without_a_full_pass(self, store, client):
        """A row that comes back to retry_wait after its run stopped is ended by the sweeper from the due set."""
        create(store, 5000)
        assert claim(store, "run_1", "taskA:1", 100, [7]) == [7]
        assert store.stop("run_1", RunState.CANCELLED, "cancelled in the test")
        store.finalize_untried("run_1")
        assert finish(store, "run_1", "taskA:1", 101, (7, Status.RETRY_WAIT, FAR)) == 1
        store.scripts = counting = CountingScripts(store.scripts)
        store.sweep(lambda run, rows: None)
        assert [args[1:] for args in counting.args_of("finalize")] == [[7]]
        assert store.counts("run_1") == {"cancelled": 5000}
        assert store.status("run_1")["done"]


class TestRetryWait:
    def test_pop_due_leases_rows(self, store):
        """pop_due hands each due row out once per lease; after the lease runs out it hands it out again."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2, 3]) == [1, 2, 3]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.RETRY_WAIT, 105), (2, Status.RETRY_WAIT, 106),
                      (3, Status.RETRY_WAIT, 200)) == 3
        assert pop_due(store, "run_1", now=104, lease_until=164) == []
        assert pop_due(store, "run_1", now=110, lease_until=170) == [1, 2]
        assert pop_due(store, "run_1", now=111, lease_until=171) == []  # leased to the first sweeper
        assert pop_due(store, "run_1", now=169, lease_until=229) == []
        assert pop_due(store, "run_1", now=170, lease_until=230) == [1, 2]  # lease expired
        assert pop_due(store, "run_1", now=200, lease_until=260) == [3]

    def test_sweep_queues_a_due_retry_once_per_lease(self, store):
        """The sweeper publishes a due retry, not again while leased, and again once the lease runs out."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", time.time(), [1, 2]) == [1, 2]
        assert finish(store, "run_1", "taskA:1", time.time(), (1, Status.RETRY_WAIT, time.time() - 1)) == 1
        published = Recorder()
        now = time.time()
        assert store.sweep(published, lease=0.5, now=now) == 1 and published.rows() == [1]
        assert store.sweep(published, lease=0.5, now=now + 0.4) == 0
        assert store.sweep(published, lease=0.5, now=now + 0.5) == 1 and published.rows() == [1, 1]

    def test_retry_wait_row_is_not_claimable_before_its_due_time(self, store, client):
        """A retry_wait row is not handed out before its due time, and is (attempt 2) once it has come."""
        create(store, 1)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.RETRY_WAIT, 150)) == 1
        assert record(client, "run_1", 1).owner == ""  # a waiting row belongs to no delivery
        assert claim(store, "run_1", "taskB:1", 149, [1]) == []
        assert record(client, "run_1", 1)[:2] == (Status.RETRY_WAIT, 1)
        assert due(client, "run_1") == {1: 150}
        assert claim(store, "run_1", "taskB:1", 150, [1]) == [1]
        rec = record(client, "run_1", 1)
        assert (rec.status, rec.attempts, rec.owner) == (Status.IN_FLIGHT, 2, "taskB:1")
        assert client.zcard(keys.due("run_1")) == 0


class TestRedelivery:
    def test_another_delivery_of_the_same_task_makes_the_row_uncertain(self, store, client):
        """A redelivered batch (same task, new nonce) never gets an in-flight row again: it turns `uncertain`."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert claim(store, "run_1", "taskA:2", 101, [1, 2]) == [2]
        rec = record(client, "run_1", 1)
        assert (rec.status, rec.owner, rec.attempts) == (Status.UNCERTAIN, "taskA:1", 1)
        assert "may have been sent" in rec.message
        assert finish(store, "run_1", "taskA:2", 102, (1, Status.SENT, 0)) == 0  # not its owner
        assert store.counts("run_1") == {"uncertain": 1, "in_flight": 1}

    def test_another_task_leaves_an_in_flight_row_alone(self, store, client):
        """A claim by another task hands out nothing of a row in flight and changes nothing about it."""
        create(store, 1)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        before = record(client, "run_1", 1)
        assert claim(store, "run_1", "taskB:1", 101, [1]) == []
        assert record(client, "run_1", 1) == before

    def test_the_same_owner_claiming_again_gets_its_rows_back(self, store, client):
        """A claim retried by the same delivery (its answer was lost) hands the rows back, attempts unchanged."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        answer = store.scripts(ops(store, "run_1").claim("taskA:1", 101, [1, 2]))
        assert [(c.row, c.recipient, c.attempts) for c in answer.claimed] == [(1, phone(1), 1), (2, phone(2), 1)]
        assert store.counts("run_1") == {"in_flight": 2}
        assert record(client, "run_1", 1).owner == "taskA:1"

    def test_a_late_certain_answer_wins_over_uncertain_even_retry_wait(self, store, client):
        """The owner's late outcome replaces `uncertain`, a 503 (retry_wait) included: the row waits in `due`."""
        create(store, 4)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2, 3]) == [1, 2, 3]
        assert claim(store, "run_1", "taskA:2", 101, [1, 2, 3]) == []
        assert store.counts("run_1") == {"uncertain": 3, "pending": 1}
        assert finish(store, "run_1", "taskA:1", 102, (1, Status.RETRY_WAIT, 150), (2, Status.SENT, 0)) == 2
        rec = record(client, "run_1", 1)
        assert (rec.status, rec.owner, rec.due) == (Status.RETRY_WAIT, "", 150)
        assert due(client, "run_1") == {1: 150}
        assert store.counts("run_1") == {"retry_wait": 1, "sent": 1, "uncertain": 1, "pending": 1}

    def test_finish_clears_the_owner_of_final_rows_and_keeps_it_for_uncertain(self, store, client):
        """Final outcomes leave no owner; an `uncertain` outcome keeps it, so a later certain one still applies."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0), (2, Status.UNCERTAIN, 0)) == 2
        assert record(client, "run_1", 1).owner == "" and record(client, "run_1", 2).owner == "taskA:1"
        assert finish(store, "run_1", "taskA:1", 102, (1, Status.FAILED, 0)) == 0  # final: not reopened
        assert finish(store, "run_1", "taskA:1", 103, (2, Status.SENT, 0)) == 1
        assert record(client, "run_1", 2).owner == ""
        assert store.counts("run_1") == {"sent": 2} and store.meta("run_1")["state"] == RunState.COMPLETED

    def test_a_late_503_after_the_run_completed_leaves_no_open_row(self, store, client):
        """A late retry_wait for an uncertain row of a completed run ends it `failed` (`retry` sends it)."""
        create(store, 1)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert claim(store, "run_1", "taskA:2", 101, [1]) == []
        assert store.meta("run_1")["state"] == RunState.COMPLETED
        assert finish(store, "run_1", "taskA:1", 102, (1, Status.RETRY_WAIT, 150)) == 1
        assert store.status("run_1")["done"] and record(client, "run_1", 1).status == Status.FAILED
        assert client.zcard(keys.due("run_1")) == 0


class TestRelease:
    """Hole 1: rows a batch claimed but never sent go back into `due` (or parked, or end)."""

    def test_rows_released_after_a_pause_and_resume_are_queued_by_the_sweeper(self, store, client):
        """A batch claims, the run is paused and resumed, then the batch releases its unsent rows: they are sent."""
        t0 = time.time()
        create(store, 6)
        assert claim(store, "run_1", "taskA:1", t0, [1, 2, 3, 4]) == [1, 2, 3, 4]
        assert store.pause("run_1")
        assert claim(store, "run_1", "taskA:1", t0, [5, 6]) == []  # the batch's next claim parks the rest
        resumed = Recorder()
        assert store.resume("run_1", resumed) and resumed.take() == [5, 6]
        assert release(store, "run_1", "taskA:1", t0 + 1, t0 + 1, [2, 3, 4]) == 3  # row 1 was sent
        assert store.counts("run_1") == {"pending": 5, "in_flight": 1}
        assert due(client, "run_1") == {2: t0 + 1, 3: t0 + 1, 4: t0 + 1}
        assert (record(client, "run_1", 2).owner, record(client, "run_1", 2).attempts) == ("", 0)
        swept = Recorder()
        assert store.sweep(swept, now=t0 + 2) == 3 and swept.take() == [2, 3, 4]
        assert claim(store, "run_1", "taskC:1", t0 + 3, [2, 3, 4]) == [2, 3, 4]
        assert due(client, "run_1") == {}

    def test_release_with_a_later_time_waits_in_due(self, store, client):
        """Rows released for a later time (the batch's deadline met a hold) are not queued before it."""
        t0 = time.time()
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", t0, [1, 2]) == [1, 2]
        assert release(store, "run_1", "taskA:1", t0, t0 + 30, [1, 2]) == 2
        assert due(client, "run_1") == {1: t0 + 30, 2: t0 + 30}
        swept = Recorder()
        assert store.sweep(swept, now=t0 + 29) == 0
        assert store.sweep(swept, now=t0 + 30) == 2 and swept.take() == [1, 2]

    def test_release_only_touches_rows_the_delivery_holds(self, store, client):
        """Another delivery's rows, or rows already finished, are not released."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        assert claim(store, "run_1", "taskB:1", 100, [3]) == [3]
        assert finish(store, "run_1", "taskA:1", 101, (2, Status.SENT, 0)) == 1
        assert release(store, "run_1", "taskA:2", 102, 102, [1]) == 0
        assert release(store, "run_1", "taskA:1", 102, 102, [1, 2, 3]) == 1
        assert statuses(client, "run_1") == {1: "pending", 2: "sent", 3: "in_flight"}
        assert due(client, "run_1") == {1: 102}

    def test_release_in_a_paused_run_parks_the_rows(self, store, client):
        """Rows released while the run is paused are parked (resume queues them), not put in `due`."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        store.pause("run_1")
        assert release(store, "run_1", "taskA:1", 101, 101, [1, 2]) == 2
        assert parked(client, "run_1") == {1, 2} and due(client, "run_1") == {}
        resumed = Recorder()
        store.resume("run_1", resumed)
        assert resumed.take() == [1, 2]

    def test_release_in_a_stopped_run_ends_the_rows(self, store, client):
        """Rows released after a cancel end `cancelled` at once, and the run finishes."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        store.cancel("run_1")
        assert release(store, "run_1", "taskA:1", 101, 101, [1, 2]) == 2
        assert store.counts("run_1") == {"cancelled": 2}
        assert due(client, "run_1") == {} and parked(client, "run_1") == set()
        assert store.meta("run_1")["finished_at"] == "101" and store.status("run_1")["done"]


class TestDefer:
    """Untried rows a batch hands back (deadline, 429 hold) go into `due` for a given time."""

    def test_pending_rows_deferred_wait_in_due_until_their_time(self, store, client):
        """Deferred pending rows are scored with `when`; pop_due hands them out from then on."""
        create(store, 4)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert defer(store, "run_1", 100, 130, [1, 2, 3]) == 2  # row 1 is in flight: untouched
        assert due(client, "run_1") == {2: 130, 3: 130}
        assert store.counts("run_1") == {"pending": 3, "in_flight": 1}
        assert pop_due(store, "run_1", now=129, lease_until=189) == []
        assert pop_due(store, "run_1", now=130, lease_until=190) == [2, 3]
        assert claim(store, "run_1", "taskB:1", 131, [2, 3]) == [2, 3] and due(client, "run_1") == {}

    def test_defer_in_a_paused_run_parks_the_rows(self, store, client):
        """Rows deferred while the run is paused are parked, waiting rows included."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [3]) == [3]
        assert finish(store, "run_1", "taskA:1", 101, (3, Status.RETRY_WAIT, 150)) == 1
        store.pause("run_1")
        assert defer(store, "run_1", 102, 140, [1, 2, 3]) == 2
        assert parked(client, "run_1") == {1, 2, 3} and due(client, "run_1") == {3: 150}

    def test_defer_in_a_stopped_run_ends_the_rows(self, store, client):
        """Rows deferred after an abort end `aborted` (waiting ones too) and the run finishes."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [3]) == [3]
        assert finish(store, "run_1", "taskA:1", 101, (3, Status.RETRY_WAIT, 150)) == 1
        assert store.stop("run_1", RunState.ABORTED, "aborted in the test")
        assert defer(store, "run_1", 102, 140, [1, 2, 3]) == 2
        assert store.counts("run_1") == {"aborted": 3} and due(client, "run_1") == {}
        assert store.meta("run_1")["finished_at"] == "102"


class TestRecording:
    """Hole 2: a run cannot complete, be retried or take rows as pending before its recording closes."""

    def test_a_run_paused_while_recording_completes_only_after_the_recording_closes(self, store, client,
                                                                                   small_chunks):
        """Every recorded row final and the run paused mid-recording: still paused until create() is done."""
        seen = {}

        def send_then_pause():
            assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
            assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0), (2, Status.SENT, 0)) == 2
            assert store.pause("run_1")
            seen.update(store.status("run_1"))

        store.create(SPEC, producer(verdicts(2), send_then_pause, after=2), Recorder(), run_id="run_1")
        assert seen["state"] == RunState.PAUSED and not seen["done"] and seen["finished_at"] == 0
        status = store.status("run_1")
        assert status["state"] == RunState.COMPLETED and status["done"] and status["total"] == 2

    def test_a_paused_run_with_more_rows_to_record_waits_for_them(self, store, client, small_chunks):
        """Rows recorded after the first ones went final keep the run open until they are final too."""
        def send_then_pause():
            assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
            assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0), (2, Status.SENT, 0)) == 2
            assert store.pause("run_1")

        published = Recorder()
        store.create(SPEC, producer(verdicts(4), send_then_pause, after=2), published, run_id="run_1")
        assert store.status("run_1")["state"] == RunState.PAUSED and not store.status("run_1")["done"]
        store.resume("run_1", published)
        assert claim(store, "run_1", "taskB:1", 102, [3, 4]) == [3, 4]
        assert finish(store, "run_1", "taskB:1", 103, (3, Status.SENT, 0), (4, Status.FAILED, 0)) == 2
        assert store.status("run_1")["state"] == RunState.COMPLETED and store.status("run_1")["done"]

    def test_retry_while_recording_is_refused(self, store, small_chunks):
        """Retry during the recording raises UsageError and changes nothing."""
        errors = []

        def retry_now():
            assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
            assert finish(store, "run_1", "taskA:1", 101, (1, Status.FAILED, 0)) == 1
            with pytest.raises(UsageError, match="still being recorded") as caught:
                store.retry("run_1", Recorder())
            errors.append(caught.value)
            assert store.meta("run_1")["state"] == RunState.QUEUING
            assert store.counts("run_1") == {"failed": 1, "pending": 1}

        store.create(SPEC, producer(verdicts(4), retry_now, after=2), Recorder(), run_id="run_1")
        assert errors and store.counts("run_1") == {"failed": 1, "pending": 3}

    def test_rows_recorded_after_a_cancel_end_cancelled_at_once(self, store, client, small_chunks):
        """A cancel during the recording ends the rows recorded later at once; the run finishes at close."""
        def cancel():
            store.cancel("run_1")
            assert store.counts("run_1") == {"cancelled": 2}
            assert "finished_at" not in store.meta("run_1")  # not before the recording closes

        store.create(SPEC, producer(verdicts(6, invalid=frozenset({5})), cancel, after=2), Recorder(),
                     run_id="run_1")
        assert store.counts("run_1") == {"cancelled": 5, "invalid": 1}
        assert all(record(client, "run_1", row).owner == "" for row in (3, 4, 6))
        meta = store.meta("run_1")
        assert meta["state"] == RunState.CANCELLED and "finished_at" in meta and store.status("run_1")["done"]


class TestLateSuppression:
    """Hole 3: an address suppressed after its run was recorded is never handed out."""

    def test_claim_ends_a_newly_suppressed_row_suppressed(self, store, client):
        """The claim skips the row, ends it `suppressed` saying why, and the counts stay a true tally."""
        create(store, 3)
        assert store.suppress(CHANNEL, [phone(2)]) == 1
        assert claim(store, "run_1", "taskA:1", 100, [1, 2, 3]) == [1, 3]
        rec = record(client, "run_1", 2)
        assert (rec.status, rec.owner, rec.attempts) == (Status.SUPPRESSED, "", 0)
        assert "added after" in rec.message
        assert store.counts("run_1") == {"in_flight": 2, "suppressed": 1}
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0), (3, Status.SENT, 0)) == 2
        assert store.meta("run_1")["state"] == RunState.COMPLETED
        assert store.counts("run_1") == {"sent": 2, "suppressed": 1}

    def test_a_due_retry_of_a_newly_suppressed_row_ends_suppressed(self, store, client):
        """A waiting row whose address was suppressed meanwhile ends `suppressed` when due, and leaves `due`."""
        create(store, 1)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.RETRY_WAIT, 150)) == 1
        store.suppress(CHANNEL, [phone(1)])
        assert claim(store, "run_1", "taskB:1", 149, [1]) == []
        assert record(client, "run_1", 1).status == Status.RETRY_WAIT  # not due yet: untouched
        assert claim(store, "run_1", "taskB:1", 150, [1]) == []
        assert record(client, "run_1", 1).status == Status.SUPPRESSED and due(client, "run_1") == {}
        assert store.counts("run_1") == {"suppressed": 1} and store.status("run_1")["done"]


class TestBlacklisted:
    def test_blacklisted_outcome_adds_the_recipient_to_the_suppression_set(self, store, client):
        """A blacklisted outcome suppresses the recipient on its channel, so a later run skips it."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.BLACKLISTED, 0), (2, Status.SENT, 0)) == 2
        assert client.smembers(keys.suppressed(CHANNEL)) == {phone(1)}
        assert store.is_suppressed(CHANNEL, phone(1)) and not store.is_suppressed(CHANNEL, phone(2))
        published = Recorder()
        create(store, 2, run_id="run_2", publish=published)
        assert published.rows() == [2] and statuses(client, "run_2") == {1: "suppressed", 2: "pending"}


class TestStalledRuns:
    """Hole 7: the sweeper heals a run with no live batch and no progress for `stall_timeout`."""

    STALL = 60.0

    @pytest.fixture
    def healer(self, client) -> Runs:
        return Runs(client, batch_size=100, stall_timeout=self.STALL)

    def test_pending_rows_whose_messages_were_lost_are_published_again(self, healer, client):
        """A recorded run with pending rows, no lease and no progress: the sweep publishes its pending rows."""
        t0 = time.time()
        create(healer, 5)  # the batch messages went nowhere
        assert claim(healer, "run_1", "taskA:1", t0, [1]) == [1]
        assert finish(healer, "run_1", "taskA:1", t0, (1, Status.SENT, 0)) == 1
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + self.STALL - 1) == 0  # not stalled yet
        assert healer.sweep(swept, now=t0 + self.STALL + 1) == 4 and swept.take() == [2, 3, 4, 5]
        assert healer.meta("run_1")["reconciles"] == "1"
        assert healer.counts("run_1") == {"pending": 4, "sent": 1}

    def test_in_flight_rows_of_a_gone_owner_end_uncertain_and_the_run_completes(self, healer, client):
        """In-flight rows whose owner has no lease, or an expired one, end `uncertain` and keep their owner."""
        t0 = time.time()
        create(healer, 3)
        assert claim(healer, "run_1", "taskA:1", t0, [1, 2]) == [1, 2]
        assert claim(healer, "run_1", "taskB:1", t0, [3]) == [3]
        client.zadd(keys.leases("run_1"), {"taskB:1": t0 + 30})  # expired by the time of the sweep
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + self.STALL + 1) == 0 and swept.batches == []
        assert healer.counts("run_1") == {"uncertain": 3}
        rec = record(client, "run_1", 1)
        assert rec.owner == "taskA:1" and "may have been sent" in rec.message
        assert healer.status("run_1")["state"] == RunState.COMPLETED and healer.status("run_1")["done"]

    def test_a_live_lease_keeps_the_run_untouched(self, healer, client):
        """While any delivery holds a live lease, no row is healed and nothing is published."""
        t0 = time.time()
        create(healer, 3)
        assert claim(healer, "run_1", "taskA:1", t0, [1]) == [1]
        assert claim(healer, "run_1", "taskB:1", t0, [2]) == [2]
        client.zadd(keys.leases("run_1"), {"taskA:1": t0 + 10 * self.STALL})  # taskB:1 has none
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + self.STALL + 1) == 0 and swept.batches == []
        assert healer.counts("run_1") == {"in_flight": 2, "pending": 1}
        assert not client.exists(keys.reconciling("run_1"))

    def test_a_recording_abandoned_by_its_producer_is_closed_and_published(self, healer, client, small_chunks):
        """A queuing run whose producer died is closed at the rows it has, noted, and its rows published."""
        t0 = time.time()
        with pytest.raises(ProducerDied):
            healer.create(SPEC, producer(verdicts(4), die=True), Recorder(), run_id="run_1")
        assert healer.meta("run_1")["state"] == RunState.QUEUING
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + self.STALL + 1) == 4 and swept.take() == [1, 2, 3, 4]
        status = healer.status("run_1")
        assert status["state"] == RunState.RUNNING and status["total"] == 4
        assert "recording stopped after 4 rows" in status["note"]
        assert healer.scripts(ops(healer, "run_1").put_rows(t0, [(5, Status.PENDING, runs_module.record(
            Status.PENDING, phone(5)))])) == -1
        assert healer.counts("run_1") == {"pending": 4}

    def test_a_producer_that_comes_back_after_the_heal_is_refused(self, healer, client, small_chunks):
        """A slow producer whose recording was closed by the sweeper gets UsageError at its next rows."""
        t0 = time.time()
        swept = Recorder()

        def stall():
            assert healer.sweep(swept, now=t0 + self.STALL + 1) == 2

        with pytest.raises(UsageError, match="submit the rest as a new run"):
            healer.create(SPEC, producer(verdicts(4), stall, after=2), Recorder(), run_id="run_1")
        assert swept.take() == [1, 2]
        assert healer.counts("run_1") == {"pending": 2} and healer.meta("run_1")["total"] == "2"

    def test_resubmitting_a_run_closed_by_the_sweeper_is_refused(self, healer, client, small_chunks):
        """A fresh create() of a run the sweeper closed for its dead producer must not silently drop rows."""
        t0 = time.time()
        with pytest.raises(ProducerDied):
            healer.create(SPEC, producer(verdicts(4), die=True), Recorder(), run_id="run_1")
        healer.sweep(Recorder(), now=t0 + self.STALL + 1)
        with pytest.raises(UsageError):
            healer.create(SPEC, verdicts(6), Recorder(), run_id="run_1")

    def test_the_heal_backs_off_while_nothing_progresses(self, client):
        """A second sweep right after a heal does nothing; the heal comes again after a backoff that doubles."""
        healer = Runs(client, batch_size=100, stall_timeout=10)
        create(healer, 2)
        swept = Recorder()
        later = time.time() + 100  # the sweepers' clock: long past the stall timeout
        assert healer.sweep(swept, now=later) == 2 and swept.take() == [1, 2]
        assert healer.sweep(swept, now=later + 9) == 0  # round 1 backs off 10 s
        assert healer.sweep(swept, now=later + 10) == 2 and swept.take() == [1, 2]
        assert healer.meta("run_1")["reconciles"] == "2"
        assert healer.sweep(swept, now=later + 29) == 0  # round 2 backs off 20 s
        assert healer.sweep(swept, now=later + 30) == 2 and healer.meta("run_1")["reconciles"] == "3"
        assert not client.exists(keys.reconciling("run_1"))  # the lock is only held while healing

    def test_progress_resets_the_heal(self, healer, client):
        """A claim after a heal is progress: the run is not healed again until it stalls once more."""
        t0 = time.time()
        create(healer, 2)
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + self.STALL + 1) == 2
        assert claim(healer, "run_1", "taskA:1", t0 + self.STALL + 2, [1]) == [1]
        assert healer.sweep(swept, now=t0 + self.STALL + 3) == 0
        assert healer.counts("run_1") == {"in_flight": 1, "pending": 1}

    def test_a_run_with_only_waiting_rows_is_never_reconciled(self, healer, client):
        """Rows in retry_wait sit in `due`: a run with nothing else open is not stalled."""
        t0 = time.time()
        create(healer, 2)
        assert claim(healer, "run_1", "taskA:1", t0, [1, 2]) == [1, 2]
        assert finish(healer, "run_1", "taskA:1", t0, (1, Status.RETRY_WAIT, FAR), (2, Status.RETRY_WAIT, FAR)) == 2
        swept = Recorder()
        assert healer.sweep(swept, now=t0 + 100 * self.STALL) == 0 and swept.batches == []
        assert not client.exists(keys.reconciling("run_1")) and "reconciles" not in healer.meta("run_1")


class TestOperatorRetry:
    def test_retry_reopens_the_run_in_the_same_step_as_its_rows(self, store, client):
        """Retry of a completed run: once a requeue call has made rows pending the run is `running`, so
        an outcome written in between can never complete it with pending rows (seen in bench/chaos)."""
        create(store, 3)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2, 3]) == [1, 2, 3]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.FAILED, 0), (2, Status.SENT, 0),
                      (3, Status.SENT, 0)) == 3
        assert store.meta("run_1")["state"] == RunState.COMPLETED
        seen = []

        def publish(run_id: str, rows: list[int]) -> None:  # runs right after the requeue script
            seen.append((store.meta(run_id)["state"], store.counts(run_id).get("pending"), rows))
            assert finish(store, "run_1", "taskB:1", 102, (2, Status.SENT, 0)) == 0  # any write: no completion

        assert store.retry("run_1", publish) == 1
        assert seen == [(RunState.RUNNING, 1, [1])]
        assert "finished_at" not in store.meta("run_1")

    def test_retry_with_nothing_to_send_leaves_the_run_as_it_was(self, store):
        """A retry that finds no row to send changes nothing: a completed run stays completed."""
        create(store, 1)
        assert claim(store, "run_1", "taskA:1", 100, [1]) == [1]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0)) == 1
        finished_at = store.meta("run_1")["finished_at"]
        assert store.retry("run_1", Recorder()) == 0
        assert store.meta("run_1")["state"] == RunState.COMPLETED
        assert store.meta("run_1")["finished_at"] == finished_at


class TestForget:
    """Hole 10: a forgotten run's ID is never used again."""

    def test_forget_leaves_a_tombstone_and_create_refuses_the_id(self, store, client):
        """create() with a forgotten run_id raises a one-sentence UsageError and records nothing."""
        create(store, 2)
        assert claim(store, "run_1", "taskA:1", 100, [1, 2]) == [1, 2]
        assert finish(store, "run_1", "taskA:1", 101, (1, Status.SENT, 0), (2, Status.SENT, 0)) == 2
        store.forget("run_1")
        assert client.hexists(keys.FORGOTTEN, "run_1")
        assert not any(client.exists(key) for key in keys.run_keys("run_1"))
        published = Recorder()
        with pytest.raises(UsageError, match="forgotten") as caught:
            create(store, 2, publish=published)
        assert re.fullmatch(r"[^.]+\.", str(caught.value).replace("run_1", "RUN")), str(caught.value)
        assert published.batches == [] and not any(client.exists(key) for key in keys.run_keys("run_1"))
        assert store.list_runs() == [] and not client.sismember(keys.ACTIVE, "run_1")

    def test_forget_refuses_a_run_still_sending(self, store, client):
        """A run with open rows cannot be forgotten, and no tombstone is left."""
        create(store, 1)
        with pytest.raises(UsageError):
            store.forget("run_1")
        assert not client.hexists(keys.FORGOTTEN, "run_1") and store.counts("run_1") == {"pending": 1}


def test_a_finished_run_reopened_by_retry_stays_with_the_sweepers(redis_url):
    """The sweeper retires a finished run only if it is still finished when it does: a retry that
    reopened it between the sweeper's look and its SREM keeps it in the active set."""
    store = Runs(redis.Redis.from_url(redis_url, decode_responses=True))
    store.redis.hset(keys.run("r1"), mapping={"state": RunState.RUNNING, "channel": "sms"})
    store.redis.sadd(keys.ACTIVE, "r1")
    assert store._leave_active(keys=[keys.run("r1"), keys.ACTIVE], args=["r1"]) == 0
    assert store.redis.sismember(keys.ACTIVE, "r1")
    store.redis.hset(keys.run("r1"), "state", RunState.COMPLETED)
    assert store._leave_active(keys=[keys.run("r1"), keys.ACTIVE], args=["r1"]) == 1
    store.redis.hset(keys.run("r1"), "state", RunState.CANCELLED)
    store.redis.sadd(keys.ACTIVE, "r1")
    assert store._leave_active(keys=[keys.run("r1"), keys.ACTIVE], args=["r1"]) == 0  # not yet finalized


def test_a_row_claimed_before_the_start_by_a_clock_ahead_is_queued_for_it(redis_url):
    """Clock skew: a worker whose clock passed send_at claims a row before the producer (whose clock
    has not) closes the recording as `scheduled`; a release then puts the row into `due`, never
    nowhere (it would wait for the stall healer)."""
    store = Runs(redis.Redis.from_url(redis_url, decode_responses=True))
    ops = Ops("skew", "sms")
    store.redis.hset(keys.run("skew"), mapping={"state": RunState.QUEUING, "channel": "sms", "recorded": "0",
                                                "send_at": 10})
    store.scripts(ops.put_rows(1, [(1, Status.WAITING, runs_module.record(Status.WAITING, phone(1), due=10))]))
    assert [c.row for c in store.scripts(ops.claim("t:1", 12, [1])).claimed] == [1]
    assert store.scripts(ops.close_recording(5, 1)) == RunState.SCHEDULED
    store.scripts(ops.release("t:1", 13, 13, [1]))
    assert store.redis.zscore(keys.due("skew"), "1") is not None
    assert Record.decode(store.redis.hget(keys.rows("skew"), "1")).status == Status.PENDING
