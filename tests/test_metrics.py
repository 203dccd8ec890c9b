"""Prometheus metrics kept in Redis: a real worker's run counted right, gauges read from live state."""
from __future__ import annotations

import time

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.helpers import SANDBOX_CREDS, phone, send_sms_run, wait_done, wait_for_worker
from worker import keys, metrics
from worker.ingest import Verdict
from worker.runs import Runs, RunSpec
from worker.sandbox import read_request_log, running_sandbox
from worker.statuses import Status

SCENARIO = {
    "directories": [{"id": "dir_12345", "name": "Metrics", "users": 10}],
    "rules": [
        {"channel": "sms", "match": {"suffix": "605"}, "steps": [{"error": 605}]},
        {"channel": "sms", "match": {"suffix": "602"}, "steps": [{"error": 602}, {"ok": True}]},
        {"channel": "sms", "match": {"suffix": "429"}, "steps": [{"http": 429, "retry_after": 0.2}, {"ok": True}]},
    ],
}


def samples(client: redis.Redis) -> dict[str, dict[tuple, float]]:
    """render() parsed: sample name → {sorted label items: value}."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.render(client).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def sends(found: dict, status: str, code: str = "") -> float:
    return found.get("dispatch_sends_total", {}).get((("channel", "sms"), ("code", code), ("status", status)), 0)


class TestFromARealRun:
    def test_sends_latency_holds_and_waits_of_a_run(self, dispatch_env, start_worker, redis_url, tmp_path):
        csv = tmp_path / "r.csv"
        csv.write_text("phone\n" + "".join(f"{phone(i)}\n" for i in (1, 2, 605, 602, 429)))
        log = tmp_path / "requests.log"
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        with running_sandbox(SCENARIO, request_log=log) as url:
            env = {**dispatch_env, **SANDBOX_CREDS, "COUPONTOOLS_API_URL": url}
            start_worker(env=env)
            wait_for_worker(redis_url)
            run_id = send_sms_run(env, csv, url, "--rate", "20")["run"]
            status = wait_done(redis_url, run_id, timeout=60)
        calls = sum(1 for line in read_request_log(log) if line["path"].startswith("/v3/send/"))
        assert status["counts"] == {"sent": 4, "blacklisted": 1} and calls == 7
        histogram = (("channel", "sms"), ("le", "+Inf"))
        found = wait_until(lambda: (f := samples(client)).get("dispatch_api_request_seconds_bucket", {})
                           .get(histogram) == calls and sum(f["dispatch_sends_total"].values()) == calls and f,
                           timeout=15)
        assert sends(found, "sent") == 4
        assert sends(found, "blacklisted", "605") == 1
        assert sends(found, "retry_wait", "602") == 1
        assert found["dispatch_api_request_seconds_count"][(("channel", "sms"),)] == calls
        assert 0 < found["dispatch_api_request_seconds_sum"][(("channel", "sms"),)] < calls * 5
        buckets = [v for labels, v in found["dispatch_api_request_seconds_bucket"].items()]
        assert buckets == sorted(buckets)  # cumulative
        assert found["dispatch_429_holds_total"][()] >= 1
        assert found["dispatch_rate_limiter_waits_total"][()] >= 1
        assert found["dispatch_workers"][()] == 1
        assert found["dispatch_batches_in_flight"][()] >= 0
        assert found["dispatch_webhook_deliveries_total"][(("result", "delivered"),)] == 0


class TestGauges:
    def test_open_rows_live_leases_and_fresh_workers(self, redis_url):
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert samples(client)["dispatch_workers"][()] == 0  # an empty Redis renders and parses
        store = Runs(client)
        for _ in range(2):
            verdicts = [Verdict(1, "nope", "", Status.INVALID, "not a phone number")]
            verdicts += [Verdict(r, phone(r), phone(r), Status.PENDING, "") for r in range(2, 5)]
            run_id = store.create(RunSpec(channel="sms", directory="dir_1"), verdicts, lambda run, rows: None)
        now = time.time()
        client.zadd(keys.leases(run_id), {"taskA:1": now + 60, "taskB:1": now - 1})
        client.zadd(keys.WORKERS, {"alive@host": now, "gone@host": now - 60})
        found = samples(client)
        rows = found["dispatch_rows"]
        assert rows[(("run_state", "open"), ("status", "pending"))] == 6
        assert rows[(("run_state", "open"), ("status", "invalid"))] == 2
        assert found["dispatch_batches_in_flight"][()] == 1
        assert found["dispatch_workers"][()] == 1

    def test_latency_buckets_are_cumulative(self, redis_url):
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        tally = metrics.Tally()
        for seconds in (0.001, 0.2, 0.2, 100.0):
            tally.api_call("email", seconds)
        tally.send("email", "failed", 602)
        with client.pipeline(transaction=False) as pipe:
            tally.queue(pipe)
            pipe.execute()
        found = samples(client)
        bucket = found["dispatch_api_request_seconds_bucket"]
        assert bucket[(("channel", "email"), ("le", "0.005"))] == 1
        assert bucket[(("channel", "email"), ("le", "0.25"))] == 3
        assert bucket[(("channel", "email"), ("le", "30.0"))] == 3
        assert bucket[(("channel", "email"), ("le", "+Inf"))] == 4
        assert abs(found["dispatch_api_request_seconds_sum"][(("channel", "email"),)] - 100.401) < 1e-6
        assert found["dispatch_sends_total"][(("channel", "email"), ("code", "602"), ("status", "failed"))] == 1
