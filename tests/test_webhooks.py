"""The run.finished webhook against a real Redis and a real HTTP receiver: once per finish, signed,
retried with backoff (injected clock), given up after 24 hours, and end to end from a worker process."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from tests.conftest import wait_until
from tests.helpers import SANDBOX_CREDS, send_sms_run, wait_done, wait_for_worker, write_phones
from worker import keys, metrics, webhooks
from worker.ingest import Verdict
from worker.outcomes import Outcome
from worker.runs import Runs, RunSpec
from worker.sandbox import running_sandbox
from worker.statuses import RunState, Status
from worker.webhooks import GIVE_UP_AFTER, deliver_due, verify_signature

SECRET = "s3cret-for-tests"
BODY_FIELDS = {"event", "run", "state", "reason", "counts", "finished_at"}


class Receiver:
    """A local HTTP endpoint: answers `answers` in turn (then 200) and keeps every request."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/dispatch?token=not-logged"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(*answers: int) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def phone(i: int) -> str:
    return f"+447911{i:06d}"


def new_run(client: redis.Redis, rows: int = 2, webhook_url: str = "") -> tuple[Runs, str]:
    store = Runs(client)
    verdicts = [Verdict(r, phone(r), phone(r), Status.PENDING, "") for r in range(1, rows + 1)]
    run_id = store.create(RunSpec(channel="sms", directory="dir_1", webhook_url=webhook_url), verdicts,
                          lambda run, batch: None)
    return store, run_id


def complete(store: Runs, run_id: str, rows: int = 2) -> None:
    """Claim and send every row, as a batch would: the run completes."""
    ops = store.ops(run_id)
    claimed = store.scripts(ops.claim("taskA:1", time.time(), list(range(1, rows + 1)))).claimed
    store.scripts(ops.finish("taskA:1", time.time(), [Outcome(c.row, Status.SENT) for c in claimed]))


def abort(store: Runs, run_id: str) -> None:
    store.stop(run_id, RunState.ABORTED, "error 999: test")
    store.finalize_untried(run_id)


def outbox(client: redis.Redis) -> list[str]:
    return client.zrange(keys.WEBHOOKS, 0, -1)


def signature_ok(headers: dict[str, str], body: bytes) -> bool:
    """Checked twice: with verify_signature, and by recomputing the HMAC as any receiver would."""
    header = headers["x-dispatch-signature"]
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return verify_signature(SECRET, header, body, now=int(t)) and hmac.compare_digest(expected, v1)


class TestAnnouncing:
    def test_announced_once_however_often_the_sweep_runs(self, client, receiver):
        store, run_id = new_run(client, webhook_url=receiver().url)
        complete(store, run_id)
        stale = client.hgetall(keys.run(run_id))  # what a slower sweeper read before the first announced
        store.sweep(lambda run, rows: None)
        client.sadd(keys.ACTIVE, run_id)  # the run seen again by another sweeper
        store.sweep(lambda run, rows: None)
        assert webhooks.announce_finished(client, run_id, stale) is None
        meta = client.hgetall(keys.run(run_id))
        assert outbox(client) == [webhooks.delivery_id(run_id, meta["finished_at"])]
        assert meta["announced"] == meta["finished_at"] and not client.sismember(keys.ACTIVE, run_id)
        entry = client.hgetall(keys.webhook(outbox(client)[0]))
        body = json.loads(entry["body"])
        assert set(body) == BODY_FIELDS and entry["attempts"] == "0" and entry["run"] == run_id
        assert body == {"event": "run.finished", "run": run_id, "state": "completed", "reason": "",
                        "counts": {"sent": 2}, "finished_at": float(meta["finished_at"])}

    def test_a_run_retried_and_finished_again_is_announced_again(self, client, receiver):
        store, run_id = new_run(client, webhook_url=receiver().url)
        abort(store, run_id)
        store.sweep(lambda run, rows: None)
        [first] = outbox(client)
        assert store.retry(run_id, lambda run, rows: None) == 2
        abort(store, run_id)
        store.sweep(lambda run, rows: None)
        assert len(outbox(client)) == 2
        [second] = set(outbox(client)) - {first}
        body = json.loads(client.hget(keys.webhook(second), "body"))
        assert body["state"] == "aborted" and body["reason"] == "error 999: test"
        assert body["counts"] == {"aborted": 2}

    def test_no_url_no_announcement_and_the_workers_url_by_default(self, client, receiver):
        store, quiet = new_run(client)
        complete(store, quiet)
        store.sweep(lambda run, rows: None)
        assert outbox(client) == [] and not client.sismember(keys.ACTIVE, quiet)
        url = receiver().url
        store.webhook_url = url  # the worker's DISPATCH_WEBHOOK_URL (tasks.runtime hands it to Runs)
        _, loud = new_run(client)
        complete(store, loud)
        store.sweep(lambda run, rows: None)
        [ident] = outbox(client)
        assert client.hget(keys.webhook(ident), "url") == url


class TestDelivering:
    def test_retried_until_2xx_same_id_valid_signature(self, client, receiver):
        hook = receiver(500, 500)
        store, run_id = new_run(client, webhook_url=hook.url)
        complete(store, run_id)
        store.sweep(lambda run, rows: None)
        [ident] = outbox(client)
        t0 = time.time()
        assert deliver_due(client, SECRET, now=t0) == {"retried": 1}
        first_retry = client.zscore(keys.WEBHOOKS, ident)
        assert t0 + 4 <= first_retry <= t0 + 6  # 5 s ± 20 %
        assert deliver_due(client, SECRET, now=first_retry - 0.01) == {}  # not due yet: no POST
        assert deliver_due(client, SECRET, now=first_retry) == {"retried": 1}
        second_retry = client.zscore(keys.WEBHOOKS, ident)
        assert first_retry + 8 <= second_retry <= first_retry + 12  # doubled
        assert deliver_due(client, SECRET, now=second_retry) == {"delivered": 1}
        assert outbox(client) == [] and not client.exists(keys.webhook(ident))
        assert len(hook.requests) == 3
        for headers, body in hook.requests:
            assert headers["x-dispatch-delivery"] == ident
            assert headers["content-type"] == "application/json"
            assert signature_ok(headers, body)
            assert json.loads(body)["run"] == run_id and set(json.loads(body)) == BODY_FIELDS
        headers, body = hook.requests[-1]
        tampered = body.replace(b'"sent":2', b'"sent":3')
        assert tampered != body and not verify_signature(SECRET, headers["x-dispatch-signature"], tampered,
                                                         now=second_retry)
        counters = client.hgetall(keys.METRICS)
        assert counters["webhooks|retried"] == "2" and counters["webhooks|delivered"] == "1"

    def test_given_up_after_24_hours_counts_as_failed(self, client, receiver):
        hook = receiver(*[500] * 10)
        store, run_id = new_run(client, webhook_url=hook.url)
        complete(store, run_id)
        store.sweep(lambda run, rows: None)
        [ident] = outbox(client)
        first_at = float(client.hget(keys.webhook(ident), "first_at"))
        assert deliver_due(client, SECRET, now=first_at + 1) == {"retried": 1}
        assert deliver_due(client, SECRET, now=first_at + GIVE_UP_AFTER - 1) == {"retried": 1}
        last = client.zscore(keys.WEBHOOKS, ident)
        assert last > first_at + GIVE_UP_AFTER  # the next attempt is the last
        assert deliver_due(client, SECRET, now=last) == {"failed": 1}
        assert outbox(client) == [] and len(hook.requests) == 3
        assert client.zrange(keys.WEBHOOKS_FAILED, 0, -1) == [ident]
        assert client.hget(keys.webhook(ident), "last_error") == "HTTP 500"
        assert deliver_due(client, SECRET, now=first_at + 2 * GIVE_UP_AFTER) == {}
        text = metrics.render(client).decode()
        assert 'dispatch_webhook_deliveries_total{result="failed"} 1.0' in text
        assert 'dispatch_webhook_deliveries_total{result="retried"} 2.0' in text

    def test_a_delivery_leased_by_a_dead_worker_goes_after_the_lease(self, client, receiver):
        hook = receiver()
        store, run_id = new_run(client, webhook_url=hook.url)
        complete(store, run_id)
        store.sweep(lambda run, rows: None)
        [ident] = outbox(client)
        t0 = time.time()
        assert webhooks.take(client, ident, t0, lease=60) is not None  # its worker dies before the POST
        assert webhooks.take(client, ident, t0 + 1, lease=60) is None  # nobody else may take it meanwhile
        assert deliver_due(client, SECRET, now=t0 + 59) == {} and hook.requests == []
        assert deliver_due(client, SECRET, now=t0 + 60) == {"delivered": 1}
        assert len(hook.requests) == 1 and outbox(client) == []

    def test_unsigned_without_a_secret_and_an_unreachable_receiver_is_retried(self, client, receiver):
        hook = receiver()
        store, run_id = new_run(client, webhook_url=hook.url)
        complete(store, run_id)
        store.sweep(lambda run, rows: None)
        [ident] = outbox(client)
        client.hset(keys.webhook(ident), "url", "http://127.0.0.1:1/nobody-listens")
        t0 = time.time()
        assert deliver_due(client, None, now=t0) == {"retried": 1}
        assert client.hget(keys.webhook(ident), "last_error") == "ConnectError"
        client.hset(keys.webhook(ident), "url", hook.url)
        assert deliver_due(client, None, now=t0 + 3600) == {"delivered": 1}
        [(headers, _)] = hook.requests
        assert "x-dispatch-signature" not in headers and headers["x-dispatch-delivery"] == ident


class TestSignature:
    def test_verify_signature_rejects_what_it_should(self):
        body = b'{"event":"run.finished"}'
        header = webhooks.sign(SECRET, body, 1_000_000)
        assert verify_signature(SECRET, header, body, now=1_000_000 + 300)
        assert verify_signature(SECRET, header, body.decode(), now=1_000_000)
        assert not verify_signature(SECRET, header, body, now=1_000_000 + 301)  # too old (replay)
        assert not verify_signature("other", header, body, now=1_000_000)
        assert not verify_signature(SECRET, header + "0", body, now=1_000_000)
        assert not verify_signature(SECRET, "garbage", body, now=1_000_000)
        assert not verify_signature(SECRET, "", body, now=1_000_000)


class TestEndToEnd:
    def test_a_worker_announces_a_finished_run_through_a_first_500(self, dispatch_env, start_worker, redis_url,
                                                                   receiver, tmp_path):
        hook = receiver(500)
        with running_sandbox() as url:
            env = {**dispatch_env, **SANDBOX_CREDS, "COUPONTOOLS_API_URL": url,
                   "DISPATCH_WEBHOOK_URL": hook.url, "DISPATCH_WEBHOOK_SECRET": SECRET}
            start_worker(env=env)
            wait_for_worker(redis_url)
            run_id = send_sms_run(env, write_phones(tmp_path / "r.csv", 3), url)["run"]
            status = wait_done(redis_url, run_id, timeout=60)
        wait_until(lambda: len(hook.requests) >= 2, timeout=30)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        wait_until(lambda: not client.zcard(keys.WEBHOOKS), timeout=10)
        assert len(hook.requests) == 2
        (first, _), (headers, body) = hook.requests
        assert first["x-dispatch-delivery"] == headers["x-dispatch-delivery"]
        assert signature_ok(headers, body)
        announced = json.loads(body)
        assert announced["run"] == run_id and announced["state"] == "completed"
        assert announced["counts"] == {"sent": 3} == status["counts"]
        assert announced["finished_at"] == status["finished_at"]
