"""Run control with real workers: abort on account errors, pause, resume, cancel, retry, shared rate."""
from __future__ import annotations

from tests.conftest import run_dispatch, wait_until
from tests.helpers import SANDBOX_CREDS, deliveries, parse_json_out, report, runs, wait_done, write_phones
from worker import keys
from worker.sandbox import read_request_log, running_sandbox


def _all_parked_or_sent(store, run_id: str, total: int) -> bool:
    """A paused run at rest: nothing in flight, every row either sent or parked (set aside)."""
    counts = store.counts(run_id)
    parked = store.redis.scard(keys.parked(run_id))
    return not counts.get("in_flight") and counts.get("sent", 0) + parked == total


def send(env, csv, url, *extra):
    result = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "dir_12345",
                          "--api-url", url, "--json", *extra)
    return result


class TestAbort:
    def test_missing_integration_aborts_with_exit_3(self, dispatch_env, start_worker, redis_url, tmp_path):
        """An account without SMS integration (103) stops the run: every row aborted, exit 3, few calls."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_CONCURRENCY": "10"}
        csv = write_phones(tmp_path / "r.csv", 500)
        log = tmp_path / "requests.log"
        with running_sandbox({"integrations": {"sms": False}, "latency_ms": 5}, request_log=log) as url:
            start_worker(env=env)
            result = send(env, csv, url, "--wait")
        assert result.returncode == 3, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["state"] == "aborted" and "103" in summary["reason"]
        assert summary["counts"] == {"aborted": 500}
        sends = [line for line in read_request_log(log) if line["path"] == "/v3/send/sms"]
        assert len(sends) <= 10 + 10  # bounded by what was in flight when the first answer came

    def test_bad_credentials_abort(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Wrong credentials (1000) abort the run with the API's reason."""
        env = {**dispatch_env, "COUPONTOOLS_CLIENT_ID": "wrong", "COUPONTOOLS_CLIENT_SECRET": "wrong"}
        csv = write_phones(tmp_path / "r.csv", 20)
        with running_sandbox(None) as url:
            env["COUPONTOOLS_API_URL"] = url  # the operator aims their worker: its credentials may go there
            start_worker(env=env)
            result = send(env, csv, url, "--wait")
        assert result.returncode == 3
        assert "1000" in parse_json_out(result.stdout)["reason"]

    def test_worker_keeps_its_secret_from_other_urls(self, dispatch_env, start_worker, redis_url, tmp_path):
        """A run naming an API URL the worker is not configured for is aborted before any request: the
        worker's real credentials never reach that URL."""
        env = {**dispatch_env, "COUPONTOOLS_CLIENT_ID": "real-id", "COUPONTOOLS_CLIENT_SECRET": "real-secret"}
        csv = write_phones(tmp_path / "r.csv", 5)
        log = tmp_path / "requests.jsonl"
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)  # configured for the default API URL, not this one
            result = send(env, csv, url)
            run_id = parse_json_out(result.stdout)["run"]
            summary = wait_done(redis_url, run_id)
        assert summary["state"] == "aborted" and "may not be sent" in summary["reason"]
        assert not [line for line in read_request_log(log) if line["path"].startswith("/v3/send/")]

    def test_unknown_directory_is_refused_before_queueing(self, dispatch_env, redis_url, tmp_path):
        """`send` to a directory the API does not know exits 2 and records no run."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 3)
        with running_sandbox(None) as url:
            result = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "dir_nope",
                                  "--api-url", url)
        assert result.returncode == 2
        assert "dir_nope" in result.stderr and "Traceback" not in result.stderr
        assert runs(redis_url).list_runs() == []


class TestOperatorControl:
    def test_pause_resume_cancel(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Pause stops new sends (every untried row is parked), resume continues, cancel ends the rest.

        The run is slow on purpose (--rate 20: 30 s for 600 rows), and every step waits on a condition."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_CONCURRENCY": "5"}
        csv = write_phones(tmp_path / "r.csv", 600)
        log = tmp_path / "requests.log"
        store = runs(redis_url)
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            run_id = parse_json_out(send(env, csv, url, "--rate", "20").stdout)["run"]
            wait_until(lambda: sum(deliveries(log).values()) >= 50)
            assert run_dispatch(env, "pause", run_id).returncode == 0
            assert store.status(run_id)["state"] == "paused"
            wait_until(lambda: _all_parked_or_sent(store, run_id, 600))
            paused_at = sum(deliveries(log).values())
            assert paused_at == store.counts(run_id)["sent"]  # nothing sent that is not recorded as sent
            assert run_dispatch(env, "resume", run_id).returncode == 0
            wait_until(lambda: sum(deliveries(log).values()) >= paused_at + 50)
            assert run_dispatch(env, "cancel", run_id).returncode == 0
            status = wait_done(redis_url, run_id, timeout=30)
        assert status["state"] == "cancelled"
        counts = status["counts"]
        assert counts["cancelled"] > 0 and counts["sent"] >= paused_at + 50
        assert sum(counts.values()) == 600 and set(counts) <= {"sent", "cancelled"}
        assert max(deliveries(log).values()) == 1

    def test_retry_resends_only_failed(self, dispatch_env, start_worker, redis_url, tmp_path):
        """`retry RUN` sends `failed` rows again and leaves sent ones alone."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 10)
        log = tmp_path / "requests.log"
        scenario = {"rules": [{"match": {"suffix": "7"}, "steps": [{"error": 999}, {"ok": True}]}]}
        with running_sandbox(scenario, request_log=log) as url:
            start_worker(env=env)
            summary = parse_json_out(send(env, csv, url, "--wait").stdout)
            assert summary["counts"] == {"sent": 9, "failed": 1}
            assert run_dispatch(env, "retry", summary["run"]).returncode == 0
            status = wait_done(redis_url, summary["run"])
        assert status["counts"] == {"sent": 10} and status["state"] == "completed"
        assert max(deliveries(log).values()) == 1
        failed_row = [r for r in report(redis_url, summary["run"]) if r.recipient.endswith("7")][0]
        assert failed_row.attempts == 2

    def test_status_and_report_of_unknown_run_exit_2(self, dispatch_env, redis_url):
        """An unknown run ID is a usage error with one sentence, not a traceback."""
        for command in ("status", "report", "pause", "cancel"):
            result = run_dispatch(dispatch_env, command, "run_missing")
            assert result.returncode == 2 and "run_missing" in result.stderr
            assert "Traceback" not in result.stderr


class TestRetryPolicy:
    def test_temporary_errors_give_up_after_max_attempts(self, dispatch_env, start_worker, redis_url, tmp_path):
        """A recipient that keeps answering 602 ends `failed` after max_attempts (3 in the test policy)."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 2)
        log = tmp_path / "requests.log"
        scenario = {"rules": [{"match": {"suffix": "1"}, "steps": [{"error": 602}]}]}
        with running_sandbox(scenario, request_log=log) as url:
            start_worker(env=env)
            summary = parse_json_out(send(env, csv, url, "--wait").stdout)
        rows = {r.recipient[-1]: r for r in report(redis_url, summary["run"])}
        assert rows["1"].status == "failed" and rows["1"].attempts == 3 and rows["1"].error_code == 602
        assert rows["0"].status == "sent"
        attempts = [l for l in read_request_log(log) if l["recipient"] and l["recipient"].endswith("1")]
        assert len(attempts) == 3

    def test_429_retry_after_is_honoured(self, dispatch_env, start_worker, redis_url, tmp_path):
        """After a 429 with Retry-After: 1 the next attempt comes no sooner than a second later."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 1)
        log = tmp_path / "requests.log"
        scenario = {"rules": [{"match": {"suffix": "0"}, "steps": [{"http": 429, "retry_after": 1}, {"ok": True}]}]}
        with running_sandbox(scenario, request_log=log) as url:
            start_worker(env=env)
            summary = parse_json_out(send(env, csv, url, "--wait").stdout)
        assert summary["counts"] == {"sent": 1}
        first, second = [l for l in read_request_log(log) if l["path"] == "/v3/send/sms"]
        assert second["ts"] - first["ts"] >= 1.0


class TestSharedRate:
    def test_rate_is_shared_by_workers(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Two worker processes with --rate 50 send no more than ~50 in any second."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 200)
        log = tmp_path / "requests.log"
        with running_sandbox(None, request_log=log) as url:
            start_worker("--concurrency", "1", env=env)
            start_worker("--concurrency", "1", env=env)
            summary = parse_json_out(send(env, csv, url, "--wait", "--rate", "50").stdout)
        assert summary["counts"] == {"sent": 200}
        stamps = sorted(l["ts"] for l in read_request_log(log) if l["path"] == "/v3/send/sms")
        worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
        assert worst <= 50 * 1.05 + 3
        assert (stamps[-1] - stamps[0]) >= 200 / 50 * 0.85


def test_send_api_url_wait_aims_the_local_worker_it_starts(dispatch_env, redis_url, tmp_path):
    """An operator's own credentials and API URL: `send --api-url URL --wait` starts a local worker
    configured for URL, so the run is sent there (not refused as a foreign URL)."""
    env = {**dispatch_env, "COUPONTOOLS_CLIENT_ID": "own-id", "COUPONTOOLS_CLIENT_SECRET": "own-secret"}
    csv = write_phones(tmp_path / "r.csv", 5)
    scenario = {"credentials": {"client_id": "own-id", "client_secret": "own-secret"}}
    with running_sandbox(scenario) as url:
        result = send(env, csv, url, "--wait")
    assert result.returncode == 0, result.stderr
    summary = parse_json_out(result.stdout)
    assert summary["state"] == "completed" and summary["counts"] == {"sent": 5}
