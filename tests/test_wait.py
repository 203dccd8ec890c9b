"""Waiting for a run (`send/retry/resume --wait`, `dispatch wait`) with real workers that come and go."""
from __future__ import annotations

import subprocess
import sys

import redis

from tests.conftest import ROOT, run_dispatch, wait_until
from tests.helpers import (SANDBOX_CREDS, deliveries, parse_json_out, runs, wait_for_worker,
                           write_phones)
from worker import keys
from worker.sandbox import running_sandbox
from worker.statuses import FINAL

# Small batches, and batches that stop claiming after 3 s: a stopping worker finishes what it holds soon.
SLOW_ENV = {**SANDBOX_CREDS, "DISPATCH_CONCURRENCY": "4", "DISPATCH_BATCH_SIZE": "25",
            "DISPATCH_VISIBILITY_TIMEOUT": "9"}


def queue(env, csv, url, *extra):
    """`dispatch send` without waiting: the run ID."""
    result = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "dir_12345",
                          "--api-url", url, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return parse_json_out(result.stdout)["run"]


def still_running(process: subprocess.Popen) -> bool:
    assert process.poll() is None, process.communicate()[1]
    return True


def heartbeats(redis_url: str) -> list[str]:
    return redis.Redis.from_url(redis_url, decode_responses=True).zrange(keys.WORKERS, 0, -1)


def test_graceful_stop_removes_the_heartbeat(dispatch_env, start_worker, redis_url):
    """A worker that is stopped (SIGTERM) takes its heartbeat with it instead of leaving it to age out."""
    worker = start_worker()
    [name] = wait_until(lambda: heartbeats(redis_url))
    worker.stop()
    assert worker.process.returncode is not None
    assert redis.Redis.from_url(redis_url).zscore(keys.WORKERS, name) is None


def test_send_wait_outlives_the_worker_it_saw(dispatch_env, start_worker, redis_url, tmp_path):
    """`send --wait` whose worker is stopped mid-run starts a local worker and still ends every row."""
    summary, log = send_wait_and_lose_the_worker(dispatch_env, start_worker, redis_url, tmp_path, "stop")
    assert summary["counts"] == {"sent": 400}  # a warm shutdown finishes its batches: nothing uncertain
    assert max(deliveries(log).values()) == 1
    assert heartbeats(redis_url) == []  # the local worker was stopped, and said so


def test_send_wait_outlives_a_killed_worker(dispatch_env, start_worker, redis_url, tmp_path):
    """A worker SIGKILLed mid-run keeps its heartbeat until it ages out; then `--wait` takes over."""
    summary, log = send_wait_and_lose_the_worker(dispatch_env, start_worker, redis_url, tmp_path, "kill")
    assert max(deliveries(log).values()) == 1


def send_wait_and_lose_the_worker(dispatch_env, start_worker, redis_url, tmp_path, how: str):
    """Run `send --wait` of 400 slow rows while a worker consumes, stop or kill that worker mid-run;
    the command's summary (every row final) and the sandbox's request log."""
    env = {**dispatch_env, **SLOW_ENV}
    csv = write_phones(tmp_path / "r.csv", 400)
    log = tmp_path / "requests.log"
    with running_sandbox({"latency_ms": 100}, request_log=log) as url:
        worker = start_worker(env=env)
        wait_for_worker(redis_url)
        waiting = subprocess.Popen([sys.executable, "-m", "tasks", "send", str(csv), "--channel", "sms",
                                    "--directory", "dir_12345", "--api-url", url, "--run-id", "outlived",
                                    "--wait", "--json"], env=env, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: still_running(waiting) and log.exists() and sum(deliveries(log).values()) >= 20)
            getattr(worker, how)()
            assert not runs(redis_url).status("outlived")["done"]  # the lost worker left work behind
            out, err = waiting.communicate(timeout=120)
        finally:
            waiting.kill()
    assert waiting.returncode == 0, err
    summary = parse_json_out(out)
    assert summary["state"] == "completed" and set(summary["counts"]) <= set(FINAL)
    assert sum(summary["counts"].values()) == 400
    return summary, log


def test_wait_command_runs_a_queued_run_to_the_end(dispatch_env, redis_url, tmp_path):
    """`dispatch wait RUN` with no worker anywhere starts one, prints the summary, exits 0."""
    env = {**dispatch_env, **SANDBOX_CREDS}
    with running_sandbox(None) as url:
        run_id = queue(env, write_phones(tmp_path / "r.csv", 30), url)
        result = run_dispatch(env, "wait", run_id, "--json")
    assert result.returncode == 0, result.stderr
    summary = parse_json_out(result.stdout)
    assert summary["run"] == run_id and summary["state"] == "completed" and summary["counts"] == {"sent": 30}
    assert heartbeats(redis_url) == []


def test_wait_command_timeout_and_unknown_run(dispatch_env, redis_url, tmp_path):
    """`dispatch wait --timeout` on a paused run exits 1 with one sentence; an unknown run exits 2."""
    env = {**dispatch_env, **SANDBOX_CREDS}
    with running_sandbox(None) as url:
        run_id = queue(env, write_phones(tmp_path / "r.csv", 5), url)
        assert run_dispatch(env, "pause", run_id).returncode == 0
        result = run_dispatch(env, "wait", run_id, "--timeout", "1")
    assert result.returncode == 1 and "not done after 1 s" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    unknown = run_dispatch(env, "wait", "run_missing")
    assert unknown.returncode == 2 and "run_missing" in unknown.stderr


def test_resume_wait_prints_the_summary(dispatch_env, redis_url, tmp_path):
    """`resume RUN --wait` continues a paused run and shows the same summary as `send --wait`."""
    env = {**dispatch_env, **SANDBOX_CREDS}
    with running_sandbox(None) as url:
        run_id = queue(env, write_phones(tmp_path / "r.csv", 12), url)
        assert run_dispatch(env, "pause", run_id).returncode == 0
        result = run_dispatch(env, "resume", run_id, "--wait")
        as_json = run_dispatch(env, "resume", run_id, "--wait", "--json")
    assert result.returncode == 0, result.stderr
    assert f"Run {run_id} resumed." in result.stderr
    assert f"Run {run_id}: completed" in result.stdout and "sent" in result.stdout
    assert as_json.returncode == 0 and parse_json_out(as_json.stdout)["counts"] == {"sent": 12}


def test_retry_wait_resends_failed_and_prints_the_summary(dispatch_env, redis_url, tmp_path):
    """`retry RUN --wait --json` sends the failed row again and prints the finished summary."""
    env = {**dispatch_env, **SANDBOX_CREDS}
    log = tmp_path / "requests.log"
    scenario = {"rules": [{"match": {"suffix": "7"}, "steps": [{"error": 999}, {"ok": True}]}]}
    with running_sandbox(scenario, request_log=log) as url:
        first = run_dispatch(env, "send", str(write_phones(tmp_path / "r.csv", 10)), "--channel", "sms",
                             "--directory", "dir_12345", "--api-url", url, "--wait", "--json")
        assert parse_json_out(first.stdout)["counts"] == {"sent": 9, "failed": 1}
        run_id = parse_json_out(first.stdout)["run"]
        result = run_dispatch(env, "retry", run_id, "--wait", "--json")
    assert result.returncode == 0, result.stderr
    summary = parse_json_out(result.stdout)
    assert summary["state"] == "completed" and summary["counts"] == {"sent": 10}
    assert max(deliveries(log).values()) == 1
