"""Run integrity under faults, end to end with real workers: every run ends, and ends right.

Each test reproduces one hole of issue 9 (numbered as there) against real worker processes, the real
sandbox and a real Redis, and checks the ground truth in the sandbox's request log.
"""
from __future__ import annotations

import pytest

from tests.conftest import run_dispatch, wait_until
from tests.helpers import (SANDBOX_CREDS, send_sms_run as send, deliveries, phone, report, runs, wait_done,
                           wait_for_worker, write_phones)
from tests.servers import LocalRedis
from worker import keys
from worker.ingest import IngestOptions, Verdict, validate_records
from worker.runs import RunSpec
from worker.sandbox import read_request_log, running_sandbox
from worker.statuses import Status


def sent_count(log) -> int:
    return sum(deliveries(log).values())


def verdicts(count: int, start: int = 0):
    return validate_records(({"phone": phone(start + i)} for i in range(count)), IngestOptions(channel="sms"))


class TestPauseResume:
    def test_resume_before_slow_sends_finish_strands_nothing(self, dispatch_env, start_worker, redis_url,
                                                              tmp_path, monkeypatch):
        """Hole 1: pause during a 429 hold while a slow answer is in flight, resume at once: every row
        still ends sent (before, rows claimed during the hold went back to `pending` with nothing
        queuing them, once the slow answer came in after the resume)."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_CONCURRENCY": "5"}
        csv = write_phones(tmp_path / "r.csv", 40)
        log = tmp_path / "requests.log"
        scenario = {"rules": [{"match": {"exact": phone(0)}, "steps": [{"delay_ms": 5000, "ok": True}]},
                              {"match": {"exact": phone(2)}, "steps": [{"http": 429, "retry_after": 4},
                                                                       {"ok": True}]}]}
        store = runs(redis_url)
        monkeypatch.setenv("REDIS_URL", redis_url)
        with running_sandbox(scenario, request_log=log) as url:
            start_worker("--concurrency", "1", env=env)
            run_id = send(env, csv, url)["run"]
            wait_until(lambda: any(line["result"] == "http_429" for line in read_request_log(log)))
            assert store.pause(run_id)
            wait_until(lambda: store.redis.scard(keys.parked(run_id)) > 0)  # the batch saw the pause
            assert store.resume(run_id, _publisher())
            status = wait_done(redis_url, run_id, timeout=60)
        assert status["counts"] == {"sent": 40} and status["state"] == "completed"
        assert max(deliveries(log).values()) == 1 and len(deliveries(log)) == 40


class TestRecording:
    def test_pause_while_recording_cannot_complete_the_run(self, dispatch_env, start_worker, redis_url,
                                                           tmp_path, monkeypatch):
        """Hole 2: a pause during recording, when every row recorded so far is final, does not complete
        the run; the rows recorded afterwards are sent once it resumes."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        store = runs(redis_url)
        store.batch_size = 500  # the first 1,000 rows go out while the producer is still recording
        monkeypatch.setenv("REDIS_URL", redis_url)
        from tasks.batches import publish_batch

        def producer():
            yield from (Verdict(i, phone(i), phone(i), Status.PENDING, "") for i in range(1, 1001))
            wait_until(lambda: store.counts("run_rec").get("sent") == 1000)  # all recorded so far final
            store.pause("run_rec")
            assert store.status("run_rec")["state"] == "paused"
            store.resume("run_rec", publish_batch)
            yield from (Verdict(i, phone(i), phone(i), Status.PENDING, "") for i in range(1001, 2501))

        with running_sandbox(None, request_log=log) as url:
            env["COUPONTOOLS_API_URL"] = url
            start_worker(env=env)
            wait_for_worker(redis_url)
            store.create(RunSpec(channel="sms", directory="dir_12345"), producer(), publish_batch,
                         run_id="run_rec")
            status = wait_done(redis_url, "run_rec", timeout=60)
        assert status["counts"] == {"sent": 2500} and status["state"] == "completed"
        assert max(deliveries(log).values()) == 1

    def test_redelivered_submit_task_without_run_id_makes_one_run(self, dispatch_env, start_worker, redis_url,
                                                                 tmp_path, monkeypatch):
        """Hole 5: a `dispatch.submit` message delivered twice (same task ID) without a run_id is one run."""
        from tasks import app

        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        monkeypatch.setenv("REDIS_URL", redis_url)
        kwargs = {"recipients": [{"phone": phone(i)} for i in range(30)], "channel": "sms",
                  "directory": "dir_12345"}
        with running_sandbox(None, request_log=log) as url:
            env["COUPONTOOLS_API_URL"] = url
            app.send_task("dispatch.submit", kwargs=kwargs, task_id="submit-once")
            app.send_task("dispatch.submit", kwargs=kwargs, task_id="submit-once")  # the redelivery
            start_worker(env=env)
            wait_until(lambda: runs(redis_url).redis.hget(keys.run("run_submit-once"), "recorded"))
            status = wait_done(redis_url, "run_submit-once")
        assert runs(redis_url).list_runs() == ["run_submit-once"]
        assert status["counts"] == {"sent": 30}
        assert len(deliveries(log)) == 30 and max(deliveries(log).values()) == 1


class TestLateSuppression:
    def test_address_suppressed_after_queueing_is_not_messaged(self, dispatch_env, start_worker, redis_url,
                                                              tmp_path):
        """Hole 3: an opt-out that arrives while the run is sending is honoured at claim: `suppressed`."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 60)
        log = tmp_path / "requests.log"
        store = runs(redis_url)
        late = [phone(i) for i in range(50, 60)]
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            run_id = send(env, csv, url, "--rate", "10")["run"]  # 6 s for 60 rows: slow on purpose
            wait_until(lambda: sent_count(log) >= 5)
            store.suppress("sms", late)
            status = wait_done(redis_url, run_id, timeout=60)
        rows = {r.recipient: r for r in report(redis_url, run_id)}
        assert status["state"] == "completed"
        assert all(rows[p].status == "suppressed" and "after the run was queued" in rows[p].error_message
                   for p in late)
        assert not set(late) & set(deliveries(log))
        assert status["counts"] == {"sent": 50, "suppressed": 10}


class TestBatchLife:
    def test_long_429_hold_never_makes_rows_uncertain(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Hole 4: a 429 whose Retry-After (15 s) far outlasts the visibility timeout (4 s): no batch is
        redelivered while it runs, no row ends uncertain, nobody is messaged twice."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_VISIBILITY_TIMEOUT": "4", "DISPATCH_CONCURRENCY": "4"}
        csv = write_phones(tmp_path / "r.csv", 60)
        log = tmp_path / "requests.log"
        scenario = {"latency_ms": 10, "rules": [{"match": {"exact": phone(5)},
                                                 "steps": [{"http": 429, "retry_after": 15}, {"ok": True}]}]}
        with running_sandbox(scenario, request_log=log) as url:
            start_worker("--concurrency", "2", env=env)
            summary = send(env, csv, url, "--wait")
        assert summary["counts"] == {"sent": 60}
        assert max(deliveries(log).values()) == 1 and len(deliveries(log)) == 60
        stamps = [line["ts"] for line in read_request_log(log) if line["recipient"] == phone(5)]
        assert len(stamps) == 2 and stamps[1] - stamps[0] >= 15

    def test_slow_rate_batch_hands_rows_back_instead_of_outliving_the_timeout(self, dispatch_env, start_worker,
                                                                            redis_url, tmp_path):
        """Hole 4 (a regression guard): a run whose rate makes its batch (50 rows at 5/s: 10 s) longer
        than the visibility timeout (4 s) ends with every row sent once and none uncertain: the batch
        hands back what it could not claim in its window."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_VISIBILITY_TIMEOUT": "4"}
        csv = write_phones(tmp_path / "r.csv", 50)
        log = tmp_path / "requests.log"
        with running_sandbox(None, request_log=log) as url:
            start_worker("--concurrency", "2", env=env)
            summary = send(env, csv, url, "--rate", "5", "--wait")
        assert summary["counts"] == {"sent": 50}
        assert max(deliveries(log).values()) == 1


class TestRedisOutage:
    def test_outcomes_survive_a_redis_restart_mid_run(self, dispatch_env, start_worker, tmp_path):
        """Hole 6: Redis killed (SIGKILL) and restarted while answers arrive: the outcomes already received
        are written once Redis answers again; no row ends uncertain, nobody is messaged twice."""
        log = tmp_path / "requests.log"
        with LocalRedis(tmp_path / "own-redis") as server:
            env = {**dispatch_env, **SANDBOX_CREDS, "REDIS_URL": server.url, "DISPATCH_CONCURRENCY": "10"}
            csv = write_phones(tmp_path / "r.csv", 300)
            with running_sandbox({"latency_ms": 150}, request_log=log) as url:
                start_worker("--concurrency", "1", env=env)
                wait_for_worker(server.url)
                run_id = send(env, csv, url)["run"]
                wait_until(lambda: sent_count(log) >= 40)
                before = sent_count(log)
                server.kill()
                # answers to requests already on the wire arrive while Redis is down (the sandbox logs
                # each just before it answers): their outcomes must wait for Redis, not be lost
                wait_until(lambda: sent_count(log) > before, timeout=30)
                server.start()
                status = wait_done(server.url, run_id, timeout=120)
        assert status["counts"] == {"sent": 300}
        assert max(deliveries(log).values()) == 1 and len(deliveries(log)) == 300


class TestLostMessages:
    def test_run_whose_batch_message_was_lost_is_healed(self, dispatch_env, start_worker, redis_url, tmp_path,
                                                        monkeypatch):
        """Hole 7: a batch message that never reaches a worker: after the stall timeout a sweeper queues
        the open rows again and the run completes, each recipient messaged once."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_STALL_TIMEOUT": "2"}
        log = tmp_path / "requests.log"
        store = runs(redis_url)
        store.batch_size = 100
        monkeypatch.setenv("REDIS_URL", redis_url)
        from tasks.batches import publish_batch

        published: list[list[int]] = []

        def lossy(run_id: str, rows: list[int]) -> None:
            published.append(rows)
            if len(published) != 2:  # the second batch is lost on its way to the broker
                publish_batch(run_id, rows)

        with running_sandbox(None, request_log=log) as url:
            env["COUPONTOOLS_API_URL"] = url
            start_worker(env=env)
            run_id = store.create(RunSpec(channel="sms", directory="dir_12345", api_url=url, sandbox=True),
                                  verdicts(300), lossy)
            status = wait_done(redis_url, run_id, timeout=60)
        assert len(published) >= 3
        assert status["counts"] == {"sent": 300}
        assert max(deliveries(log).values()) == 1

    def test_producer_killed_while_recording_is_healed(self, dispatch_env, start_worker, redis_url, tmp_path,
                                                       monkeypatch):
        """Hole 7: a producer that dies mid-recording: the run closes its recording after the stall
        timeout (saying so), sends the rows it has, and completes."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_STALL_TIMEOUT": "2"}
        log = tmp_path / "requests.log"
        store = runs(redis_url)
        monkeypatch.setenv("REDIS_URL", redis_url)
        from tasks.batches import publish_batch

        def dying_producer():
            yield from verdicts(1500)
            raise KeyboardInterrupt  # the producer's process is gone from here on

        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            with pytest.raises(KeyboardInterrupt):
                store.create(RunSpec(channel="sms", directory="dir_12345", api_url=url, sandbox=True),
                             dying_producer(), publish_batch, run_id="run_dead_producer")
            status = wait_done(redis_url, "run_dead_producer", timeout=60)
        # the first 1,000 rows were recorded; the 500 of the unfinished chunk died with the producer
        assert status["counts"] == {"sent": 1000} and status["state"] == "completed"
        assert status["total"] == 1000 and "after 1000 rows" in status["note"]
        assert max(deliveries(log).values()) == 1


class TestDurableClaims:
    def test_claims_wait_for_a_replica_and_nothing_is_sent_without_one(self, dispatch_env, start_worker,
                                                                       tmp_path):
        """Hole 8: with DISPATCH_MIN_REPLICAS=1 a claim is sent only once a replica holds it: with the
        replica down nothing is sent; once it is back the run completes, each recipient once."""
        log = tmp_path / "requests.log"
        with LocalRedis(tmp_path / "primary") as primary:
            replica = LocalRedis(tmp_path / "replica", replica_of=primary).start()
            wait_until(lambda: primary.client().info("replication")["connected_slaves"] == 1)
            env = {**dispatch_env, **SANDBOX_CREDS, "REDIS_URL": primary.url, "DISPATCH_MIN_REPLICAS": "1"}
            with running_sandbox({"latency_ms": 5}, request_log=log) as url:
                start_worker(env=env)
                first = send(env, write_phones(tmp_path / "a.csv", 50), url, "--wait")
                assert first["counts"] == {"sent": 50}
                replica.kill()
                wait_until(lambda: primary.client().info("replication")["connected_slaves"] == 0)
                run_id = send(env, write_phones(tmp_path / "b.csv", 50, start=100), url)["run"]
                store = runs(primary.url)
                wait_until(lambda: store.redis.zcard(keys.due(run_id)) > 0)  # released: not confirmed
                assert not set(deliveries(log)) & {phone(100 + i) for i in range(50)}
                replica.start()
                status = wait_done(primary.url, run_id, timeout=90)
            replica.kill()
        assert status["counts"] == {"sent": 50}
        assert max(deliveries(log).values()) == 1 and len(deliveries(log)) == 100


class TestForget:
    def test_forgotten_run_id_is_refused(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Hole 10: after `forget`, sending with the same --run-id exits 2 and messages nobody again."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 5)
        log = tmp_path / "requests.log"
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            assert send(env, csv, url, "--run-id", "run_once", "--wait")["counts"] == {"sent": 5}
            assert run_dispatch(env, "forget", "run_once").returncode == 0
            again = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "dir_12345",
                                 "--api-url", url, "--run-id", "run_once", "--wait")
        assert again.returncode == 2 and "forgotten" in again.stderr and "Traceback" not in again.stderr
        assert len(deliveries(log)) == 5 and max(deliveries(log).values()) == 1


def _publisher():
    from tasks.batches import publish_batch

    return publish_batch
