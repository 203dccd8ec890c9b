"""Helpers for tests that drive whole runs: files of recipients, reports, the sandbox's ground truth."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import redis

from tests.conftest import run_dispatch, wait_until
from worker import keys
from worker.redis_server import connect
from worker.runs import Runs
from worker.sandbox import read_request_log

SANDBOX_CREDS = {"COUPONTOOLS_CLIENT_ID": "sandbox", "COUPONTOOLS_CLIENT_SECRET": "sandbox"}


def phone(i: int) -> str:
    """A valid GB mobile number, different for every i below a million."""
    return f"+447911{i:06d}"


def write_phones(path: Path, count: int, start: int = 0) -> Path:
    path.write_text("phone,first_name\n" + "".join(f"{phone(start + i)},P{i}\n" for i in range(count)))
    return path


def runs(redis_url: str) -> Runs:
    return Runs(connect(redis_url))


def report(redis_url: str, run_id: str) -> list:
    return list(runs(redis_url).iter_report(run_id))


def deliveries(log: Path) -> Counter:
    """How many times the sandbox delivered to each recipient (the ground truth for 'never twice')."""
    return Counter(line["recipient"] for line in read_request_log(log)
                   if line["path"].startswith("/v3/send/") and line["result"] in ("ok", "drop"))


def wait_for_worker(redis_url: str, timeout: float = 30) -> None:
    """Until some worker's sweeper has said it is alive."""
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.zcard(keys.WORKERS), timeout=timeout)


def wait_done(redis_url: str, run_id: str, timeout: float = 120) -> dict:
    """The run's status once it is done; on a timeout, the run's stored state is in the failure."""
    store = runs(redis_url)
    try:
        return wait_until(lambda: (status := store.status(run_id))["done"] and status, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"run {run_id} not done within {timeout}s: {run_state(store, run_id)}") from None


def run_state(store: Runs, run_id: str) -> dict:
    """What a stuck run looks like inside Redis (for failure messages)."""
    r = store.redis
    open_rows = [(row, raw) for row, raw in r.hscan_iter(keys.rows(run_id), count=1000)
                 if '"pending"' in raw or '"in_flight"' in raw or '"retry_wait"' in raw]
    return {"meta": {k: v for k, v in r.hgetall(keys.run(run_id)).items() if k not in ("policy", "body")},
            "counts": r.hgetall(keys.counts(run_id)), "due": r.zcard(keys.due(run_id)),
            "parked": r.scard(keys.parked(run_id)), "leases": r.zrange(keys.leases(run_id), 0, -1, withscores=True),
            "deliveries": r.hgetall(keys.deliveries(run_id)), "broker_queue": r.llen("dispatch"),
            "open_rows": open_rows[:5], "now": time.time()}


def parse_json_out(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def send_sms_run(env: dict[str, str], csv: Path, url: str, *extra: str) -> dict:
    """`dispatch send CSV --channel sms … --json` as a user runs it: the printed JSON (run ID, or the
    summary with --wait); exit 0 or 3 (aborted), never anything else."""
    result = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "dir_12345",
                          "--region", "GB", "--api-url", url, "--json", *extra)
    assert result.returncode in (0, 3), result.stderr
    return parse_json_out(result.stdout)
