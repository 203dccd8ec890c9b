"""End to end with a real worker: sending to a directory's registered users, listing directories, and the
list-shaped, status-mapped error envelopes reaching the report with the right status."""
from __future__ import annotations

import json

from tests.conftest import run_dispatch
from tests.helpers import SANDBOX_CREDS, deliveries, parse_json_out, report, write_phones
from worker.sandbox import read_request_log, running_sandbox

DIRECTORIES = {"directories": [{"id": "dir_12345", "name": "Sample directory", "users": 250},
                               {"id": "dir_small", "name": "Small one", "users": 3},
                               {"id": "dir_empty", "name": "Nobody yet", "users": 0}]}
LIST_MAPPED = {"error_shape": "list", "error_http_status": "mapped"}


def send_directory_users(env: dict, url: str, channel: str, directory: str = "dir_12345"):
    return run_dispatch(env, "send", "--from-directory-users", "--directory", directory, "--channel", channel,
                        "--api-url", url, "--wait", "--json")


def send_file(env: dict, csv, url: str, channel: str = "sms"):
    return run_dispatch(env, "send", str(csv), "--channel", channel, "--directory", "dir_12345",
                        "--api-url", url, "--wait", "--json")


class TestSendToDirectoryUsers:
    def test_sms_to_250_users_each_exactly_once(self, dispatch_env, start_worker, redis_url, tmp_path):
        """All 250 registered users get one SMS each; the report has 250 sent rows."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        with running_sandbox(DIRECTORIES, request_log=log) as url:
            start_worker(env=env)
            result = send_directory_users(env, url, "sms")
        assert result.returncode == 0, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["state"] == "completed" and summary["counts"] == {"sent": 250}
        expected = {f"+447911{i:06d}" for i in range(1, 251)}
        delivered = deliveries(log)
        assert set(delivered) == expected and set(delivered.values()) == {1}
        rows = report(redis_url, summary["run"])
        assert len(rows) == 250 and {r.recipient for r in rows} == expected
        assert sorted(r.row for r in rows) == list(range(1, 251))
        assert all(r.status == "sent" and r.attempts == 1 for r in rows)
        pages = [l for l in read_request_log(log) if l["path"] == "/v3/directoryusers/list"]
        assert len(pages) == 3

    def test_email_to_250_users_each_exactly_once(self, dispatch_env, start_worker, redis_url, tmp_path):
        """The same directory by email: 250 addresses, each sent once, 250 report rows."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        with running_sandbox(DIRECTORIES, request_log=log) as url:
            start_worker(env=env)
            result = send_directory_users(env, url, "email")
        assert result.returncode == 0, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["counts"] == {"sent": 250}
        expected = {f"user{i:05d}@example.com" for i in range(1, 251)}
        delivered = deliveries(log)
        assert set(delivered) == expected and set(delivered.values()) == {1}
        assert all(l["path"] == "/v3/send/email" for l in read_request_log(log) if l["recipient"])
        rows = report(redis_url, summary["run"])
        assert len(rows) == 250 and {r.recipient for r in rows} == expected

    def test_empty_directory_is_a_completed_run_of_nothing(self, dispatch_env, start_worker, redis_url,
                                                           tmp_path):
        """A directory with no users sends nothing and still ends."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        with running_sandbox(DIRECTORIES, request_log=log) as url:
            start_worker(env=env)
            result = send_directory_users(env, url, "sms", directory="dir_empty")
        assert result.returncode == 0, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["total"] == 0 and sum(summary["counts"].values()) == 0
        assert deliveries(log) == {}


class TestDirectoriesCommand:
    def test_lists_the_scenario_directories(self, dispatch_env, tmp_path):
        """`dispatch directories --json` lists every directory of the account with its name."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        with running_sandbox(DIRECTORIES) as url:
            result = run_dispatch(env, "directories", "--api-url", url, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [{"id": "dir_12345", "name": "Sample directory"},
                                             {"id": "dir_small", "name": "Small one"},
                                             {"id": "dir_empty", "name": "Nobody yet"}]

    def test_wrong_credentials_are_one_sentence(self, dispatch_env, tmp_path):
        """Wrong credentials: exit 2 and the API's 1000, list-shaped under 401, without a traceback."""
        env = {**dispatch_env, "COUPONTOOLS_CLIENT_ID": "sandbox", "COUPONTOOLS_CLIENT_SECRET": "wrong"}
        with running_sandbox({**DIRECTORIES, **LIST_MAPPED}) as url:
            result = run_dispatch(env, "directories", "--api-url", url, "--json")
        assert result.returncode == 2 and "1000" in result.stderr
        assert "Traceback" not in result.stderr


class TestListShapedMappedErrors:
    def test_statuses_from_list_envelopes_under_mapped_http(self, dispatch_env, start_worker, redis_url,
                                                            tmp_path):
        """605 list-shaped under 422 is blacklisted, garbage 200 uncertain (never sent), 602 then ok is sent,
        301 phone invalid, 999 failed; each recipient contacted as scripted."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 6, start=601)  # +447911000601 … +447911000606
        log = tmp_path / "requests.log"
        scenario = {**LIST_MAPPED, "rules": [
            {"channel": "sms", "match": {"suffix": "605"}, "steps": [{"error": 605}]},
            {"match": {"suffix": "602"}, "steps": [{"garbage": True}]},
            {"match": {"suffix": "603"}, "steps": [{"error": 602}, {"ok": True}]},
            {"match": {"suffix": "604"}, "steps": [{"error": 301}]},
            {"match": {"suffix": "606"}, "steps": [{"error": 999}]},
        ]}
        with running_sandbox(scenario, request_log=log) as url:
            start_worker(env=env)
            result = send_file(env, csv, url)
        assert result.returncode == 0, result.stderr
        summary = parse_json_out(result.stdout)
        rows = {r.recipient[-3:]: r for r in report(redis_url, summary["run"])}
        assert {k: r.status for k, r in rows.items()} == {
            "601": "sent", "602": "uncertain", "603": "sent", "604": "invalid", "605": "blacklisted",
            "606": "failed"}
        assert rows["605"].error_code == 605 and "blacklist" in rows["605"].error_message
        assert rows["604"].error_code == 301 and rows["606"].error_code == 999
        assert rows["603"].attempts == 2 and rows["602"].attempts == 1
        results = {}
        for line in read_request_log(log):
            if line["recipient"]:
                results.setdefault(line["recipient"][-3:], []).append(line["result"])
        assert results == {"601": ["ok"], "602": ["garbage"], "603": [602, "ok"], "604": [301],
                           "605": [605], "606": [999]}

    def test_missing_integration_list_shaped_aborts_with_exit_3(self, dispatch_env, start_worker, redis_url,
                                                                 tmp_path):
        """103 in the list envelope under HTTP 422 still aborts the run: exit 3, every row aborted."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 20)
        with running_sandbox({**LIST_MAPPED, "integrations": {"sms": False}}) as url:
            start_worker(env=env)
            result = send_file(env, csv, url)
        assert result.returncode == 3, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["state"] == "aborted" and "103" in summary["reason"]
        assert summary["counts"] == {"aborted": 20}

    def test_campaign_301_list_shaped_aborts(self, dispatch_env, start_worker, redis_url, tmp_path):
        """A campaign 301 (list envelope, HTTP 422) stops the run instead of marking rows invalid."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        csv = write_phones(tmp_path / "r.csv", 5)
        with running_sandbox(LIST_MAPPED) as url:
            start_worker(env=env)
            result = run_dispatch(env, "send", str(csv), "--channel", "sms", "--directory", "cam_bad-id",
                                  "--api-url", url, "--wait", "--json")
        assert result.returncode == 3, result.stderr
        summary = parse_json_out(result.stdout)
        assert summary["state"] == "aborted" and "301" in summary["reason"]
        assert summary["counts"] == {"aborted": 5}
