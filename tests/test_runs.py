"""Plain tests of worker.runs and the recipient state scripts (worker.scripts) against a real Redis."""
from __future__ import annotations

import json
import time

import pytest
import redis

from worker import keys
from worker.ingest import Verdict
from worker.runs import SWEEP_CHUNK, Runs, RunSpec
from worker.statuses import RunState, Status

CHANNEL = "sms"
SPEC = RunSpec(channel=CHANNEL, directory="dir_1")


def phone(i: int) -> str:
    return f"+447911{i:06d}"


def verdicts(count: int, invalid: frozenset[int] = frozenset()) -> list[Verdict]:
    return [Verdict(row, "nope", "", Status.INVALID, "not a phone number") if row in invalid
            else Verdict(row, phone(row), phone(row), Status.PENDING, "")
            for row in range(1, count + 1)]


class Recorder:
    """A publisher that only remembers what it was asked to queue."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []

    def __call__(self, run_id: str, rows: list[int]) -> None:
        self.batches.append((run_id, list(rows)))

    def rows(self) -> list[int]:
        return [row for _, batch in self.batches for row in batch]


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(client) -> Runs:
    return Runs(client, batch_size=100)


def create(store: Runs, count: int, run_id: str = "run_1", invalid: frozenset[int] = frozenset(),
           publish: Recorder | None = None) -> str:
    return store.create(SPEC, verdicts(count, invalid), publish or Recorder(), run_id=run_id)


def claim(store: Runs, run_id: str, owner: str, now: float, rows: list[int]) -> list[int]:
    """The rows the claim script hands out for sending."""
    answer = store.scripts["claim"](keys=keys.script_keys(run_id, CHANNEL), args=[owner, now, *rows])
    return [int(answer[i]) for i in range(2, len(answer), 3)]


def finish(store: Runs, run_id: str, owner: str, now: float, *outcomes: tuple[int, str, float]) -> int:
    args: list[object] = [owner, now]
    for row, status, due in outcomes:
        args += [row, status, 0, f"{status} in the test", due]
    return store.scripts["finish"](keys=keys.script_keys(run_id, CHANNEL), args=args)


def pop_due(store: Runs, run_id: str, now: float, lease_until: float) -> list[int]:
    rows = store.scripts["pop_due"](keys=keys.script_keys(run_id, CHANNEL), args=[now, 100, lease_until])
    return sorted(int(r) for r in rows)


def record(client, run_id: str, row: int) -> list:
    return json.loads(client.hget(keys.rows(run_id), row))


def statuses(client, run_id: str) -> dict[int, str]:
    return {int(row): json.loads(raw)[0] for row, raw in client.hgetall(keys.rows(run_id)).items()}


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

    def test_recreate_after_a_crashed_producer_keeps_recorded_rows(self, store, client):
        """Re-creating a run whose producer died while queuing rewrites no recorded row and no count."""
        create(store, 10)
        assert claim(store, "run_1", "a", 100, [1, 2]) == [1, 2]
        assert finish(store, "run_1", "a", 101, (2, Status.SENT, 0)) == 1
        client.hset(keys.run("run_1"), "state", RunState.QUEUING)  # as if the producer never finished
        counts = store.counts("run_1")
        again = Recorder()
        create(store, 10, publish=again)
        assert store.counts("run_1") == counts == {"pending": 8, "in_flight": 1, "sent": 1}
        assert record(client, "run_1", 1)[0] == Status.IN_FLIGHT and record(client, "run_1", 1)[5] == "a"
        assert store.meta("run_1")["state"] == RunState.RUNNING
        assert claim(store, "run_1", "b", 102, again.rows()) == list(range(3, 11))  # duplicates are safe


class TestPaused:
    def test_claim_parks_rows_and_resume_republishes_them(self, store, client):
        """A claim in a paused run hands nothing out and parks the pending rows; resume queues them again."""
        create(store, 5)
        assert store.pause("run_1")
        assert claim(store, "run_1", "a", 100, [1, 2, 3, 4, 5]) == []
        assert {int(r) for r in client.smembers(keys.parked("run_1"))} == {1, 2, 3, 4, 5}
        assert store.counts("run_1") == {"pending": 5}
        published = Recorder()
        assert store.resume("run_1", published)
        assert sorted(published.rows()) == [1, 2, 3, 4, 5]
        assert client.scard(keys.parked("run_1")) == 0 and store.meta("run_1")["state"] == RunState.RUNNING
        assert claim(store, "run_1", "b", 101, published.rows()) == published.rows()

    def test_retry_of_a_paused_run_republishes_its_parked_rows(self, store, client):
        """Retry sets a paused run running, so it must queue the parked rows itself (resume never will)."""
        create(store, 3)
        assert claim(store, "run_1", "a", 100, [1]) == [1]
        assert finish(store, "run_1", "a", 101, (1, Status.FAILED, 0)) == 1
        store.pause("run_1")
        assert claim(store, "run_1", "b", 102, [2, 3]) == []  # parked
        published = Recorder()
        assert store.retry("run_1", published) == 1
        assert sorted(published.rows()) == [1, 2, 3]
        assert client.scard(keys.parked("run_1")) == 0 and store.meta("run_1")["state"] == RunState.RUNNING


class TestCancelled:
    def test_claim_in_a_cancelled_run_ends_pending_rows(self, store, client):
        """A claim in a cancelled run hands nothing out and ends its pending rows `cancelled`."""
        create(store, 4)
        assert claim(store, "run_1", "a", 100, [1]) == [1]
        assert store.stop("run_1", RunState.CANCELLED, "cancelled in the test")
        assert claim(store, "run_1", "b", 101, [1, 2, 3, 4]) == []
        assert statuses(client, "run_1") == {1: "in_flight", 2: "cancelled", 3: "cancelled", 4: "cancelled"}
        assert all(record(client, "run_1", row)[5] == "" for row in (2, 3, 4))
        assert "finished_at" not in store.meta("run_1")  # row 1 is still out
        assert finish(store, "run_1", "a", 102, (1, Status.SENT, 0)) == 1
        meta = store.meta("run_1")
        assert meta["state"] == RunState.CANCELLED and meta["finished_at"] == "102"
        assert store.counts("run_1") == {"sent": 1, "cancelled": 3}


class TestFinalize:
    def test_finalize_untried_over_12000_rows_in_chunks(self, store, client):
        """finalize_untried ends every pending and waiting row of a 12,000-row run, a chunk per call."""
        invalid = frozenset({1, 5000, 5001, 12000})
        create(store, 12_000, invalid=invalid)
        assert claim(store, "run_1", "a", 100, [2, 3, 4]) == [2, 3, 4]
        assert finish(store, "run_1", "a", 101, (4, Status.RETRY_WAIT, 10**10)) == 1
        store.pause("run_1")
        assert claim(store, "run_1", "b", 102, [6, 7]) == []  # parked
        assert store.stop("run_1", RunState.ABORTED, "aborted in the test")
        calls = []
        script = store.scripts["finalize"]
        store.scripts["finalize"] = lambda keys, args: calls.append(args) or script(keys=keys, args=args)
        assert store.finalize_untried("run_1") == 12_000 - len(invalid) - 2
        assert [(int(args[1]), int(args[-1])) for args in calls] == [
            (1, SWEEP_CHUNK), (SWEEP_CHUNK + 1, 2 * SWEEP_CHUNK), (2 * SWEEP_CHUNK + 1, 12_000)]
        assert store.counts("run_1") == {"aborted": 12_000 - len(invalid) - 2, "in_flight": 2, "invalid": 4}
        assert client.exists(keys.due("run_1"), keys.parked("run_1")) == 0
        assert "finished_at" not in store.meta("run_1")
        assert store.finalize_untried("run_1") == 0  # nothing left to end; the in-flight rows stay

    def test_sweeper_ends_rows_that_wait_after_the_stop_without_a_full_pass(self, store, client):
        """A row that comes back to retry_wait after its run stopped is ended by the sweeper from the due set."""
        create(store, 5000)
        assert claim(store, "run_1", "a", 100, [7]) == [7]
        assert store.stop("run_1", RunState.CANCELLED, "cancelled in the test")
        store.finalize_untried("run_1")
        assert finish(store, "run_1", "a", 101, (7, Status.RETRY_WAIT, 10**10)) == 1
        calls = []
        script = store.scripts["finalize"]
        store.scripts["finalize"] = lambda keys, args: calls.append(args) or script(keys=keys, args=args)
        store.sweep(lambda run, rows: None)
        assert [[int(r) for r in args[1:]] for args in calls] == [[7]]
        assert store.counts("run_1") == {"cancelled": 5000}
        assert store.status("run_1")["done"]


class TestRetryWait:
    def test_pop_due_leases_rows(self, store):
        """pop_due hands each due row out once per lease; after the lease runs out it hands it out again."""
        create(store, 3)
        assert claim(store, "run_1", "a", 100, [1, 2, 3]) == [1, 2, 3]
        assert finish(store, "run_1", "a", 101, (1, Status.RETRY_WAIT, 105), (2, Status.RETRY_WAIT, 106),
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
        assert claim(store, "run_1", "a", time.time(), [1, 2]) == [1, 2]
        assert finish(store, "run_1", "a", time.time(), (1, Status.RETRY_WAIT, time.time() - 1)) == 1
        published = Recorder()
        assert store.sweep(published, lease=0.5) == 1 and published.rows() == [1]
        assert store.sweep(published, lease=0.5) == 0
        time.sleep(0.6)
        assert store.sweep(published, lease=0.5) == 1 and published.rows() == [1, 1]

    def test_retry_wait_row_is_not_claimable_before_its_due_time(self, store, client):
        """A retry_wait row is not handed out before its due time, and is (attempt 2) once it has come."""
        create(store, 1)
        assert claim(store, "run_1", "a", 100, [1]) == [1]
        assert finish(store, "run_1", "a", 101, (1, Status.RETRY_WAIT, 150)) == 1
        assert claim(store, "run_1", "b", 149, [1]) == []
        assert record(client, "run_1", 1)[:2] == [Status.RETRY_WAIT, 1]
        assert client.zscore(keys.due("run_1"), 1) == 150
        assert claim(store, "run_1", "b", 150, [1]) == [1]
        assert record(client, "run_1", 1)[:2] == [Status.IN_FLIGHT, 2] and record(client, "run_1", 1)[5] == "b"
        assert client.zcard(keys.due("run_1")) == 0


class TestRedelivery:
    def test_same_owner_claiming_again_makes_the_row_uncertain(self, store, client):
        """A redelivered batch never gets its in-flight row again (it turns `uncertain`); its late outcome wins."""
        create(store, 2)
        assert claim(store, "run_1", "a", 100, [1]) == [1]
        assert claim(store, "run_1", "a", 101, [1, 2]) == [2]
        assert record(client, "run_1", 1)[0] == Status.UNCERTAIN
        assert finish(store, "run_1", "a", 102, (1, Status.RETRY_WAIT, 0)) == 0  # never retry_wait
        assert finish(store, "run_1", "b", 102, (1, Status.SENT, 0)) == 0  # not its owner
        assert finish(store, "run_1", "a", 103, (1, Status.SENT, 0), (2, Status.SENT, 0)) == 2
        assert store.counts("run_1") == {"sent": 2} and store.meta("run_1")["state"] == RunState.COMPLETED


class TestBlacklisted:
    def test_blacklisted_outcome_adds_the_recipient_to_the_suppression_set(self, store, client):
        """A blacklisted outcome suppresses the recipient on its channel, so a later run skips it."""
        create(store, 2)
        assert claim(store, "run_1", "a", 100, [1, 2]) == [1, 2]
        assert finish(store, "run_1", "a", 101, (1, Status.BLACKLISTED, 0), (2, Status.SENT, 0)) == 2
        assert client.smembers(keys.suppressed(CHANNEL)) == {phone(1)}
        assert store.is_suppressed(CHANNEL, phone(1)) and not store.is_suppressed(CHANNEL, phone(2))
        published = Recorder()
        create(store, 2, run_id="run_2", publish=published)
        assert published.rows() == [2] and statuses(client, "run_2") == {1: "suppressed", 2: "pending"}
