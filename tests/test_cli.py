"""The command line as a user meets it: exit codes, one-sentence errors, JSON shapes, safe reports."""
from __future__ import annotations

import csv
import io
import json

from tests.conftest import ROOT, run_dispatch
from tests.helpers import SANDBOX_CREDS, parse_json_out, write_phones
from worker.sandbox import running_sandbox

SAMPLE = str(ROOT / "samples" / "recipients.csv")


class TestValidate:
    def test_sample_counts_as_json(self, dispatch_env):
        """`validate --json` prints the counts object of cli.md."""
        result = run_dispatch(dispatch_env, "validate", SAMPLE, "--channel", "sms", "--region", "GB", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"rows": 25, "valid": 20, "invalid": 3, "duplicates": 2}

    def test_report_has_one_line_per_row(self, dispatch_env, tmp_path):
        """`validate --report` writes a verdict for every input row."""
        out = tmp_path / "verdicts.csv"
        result = run_dispatch(dispatch_env, "validate", SAMPLE, "--channel", "sms", "--region", "GB",
                              "--report", str(out))
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(out.open()))
        assert [int(r["row"]) for r in rows] == list(range(1, 26))

    def test_unusable_inputs_exit_2_with_one_sentence(self, dispatch_env, tmp_path):
        """A missing file, a file without an address column, and a bad region are usage errors."""
        no_column = tmp_path / "names.csv"
        no_column.write_text("name,city\nAnn,Leeds\n")
        cases = [("validate", str(tmp_path / "missing.csv"), "--channel", "sms"),
                 ("validate", str(no_column), "--channel", "sms"),
                 ("validate", SAMPLE, "--channel", "email"),
                 ("validate", SAMPLE, "--channel", "fax")]
        for args in cases:
            result = run_dispatch(dispatch_env, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") <= 3
        assert "name" in run_dispatch(dispatch_env, *cases[1]).stderr

    def test_send_needs_exactly_one_source(self, dispatch_env):
        """`send` with both a FILE and --from-directory-users is refused."""
        result = run_dispatch(dispatch_env, "send", SAMPLE, "--from-directory-users", "--channel", "sms",
                              "--directory", "dir_12345")
        assert result.returncode == 2 and "either" in result.stderr


class TestSuppression:
    def test_add_list_remove_and_respected_by_send(self, dispatch_env, redis_url, tmp_path):
        """Suppressed numbers are listed, removable, and marked `suppressed` in a run without a send."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        listed = write_phones(tmp_path / "stop.csv", 2)
        assert run_dispatch(env, "suppress", "add", str(listed), "--channel", "sms").returncode == 0
        shown = run_dispatch(env, "suppress", "list", "--channel", "sms").stdout.split()
        assert sorted(shown) == ["+447911000000", "+447911000001"]
        assert run_dispatch(env, "suppress", "remove", "07911 000001", "--channel", "sms", "--region",
                            "GB").returncode == 0
        assert run_dispatch(env, "suppress", "list", "--channel", "sms").stdout.split() == ["+447911000000"]
        with running_sandbox(None) as url:
            result = run_dispatch(env, "send", str(write_phones(tmp_path / "r.csv", 3)), "--channel", "sms",
                                  "--directory", "dir_12345", "--api-url", url, "--wait", "--json")
        assert parse_json_out(result.stdout)["counts"] == {"suppressed": 1, "sent": 2}


class TestPolicyCommand:
    def test_effective_table_lists_every_documented_code(self, dispatch_env):
        """`dispatch policy --json` shows each documented code with its class."""
        result = run_dispatch(dispatch_env, "policy", "--json")
        assert result.returncode == 0
        codes = {row["code"] for row in json.loads(result.stdout)["codes"]}
        assert {"1000", "101", "103", "104", "200", "301", "305", "502", "507", "602", "604", "605"} <= codes

    def test_bad_policy_file_exit_2(self, dispatch_env, tmp_path):
        """A policy file with an unknown class is refused with a sentence naming the field."""
        bad = tmp_path / "bad.toml"
        bad.write_text('[codes]\n602 = "sometimes"\n')
        result = run_dispatch(dispatch_env, "--policy", str(bad), "policy")
        assert result.returncode == 2 and "codes.602" in result.stderr


class TestReport:
    def test_report_cells_are_spreadsheet_safe(self, dispatch_env, start_worker, redis_url, tmp_path):
        """An input that looks like a formula comes back quoted in the CSV report, plain in JSON."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        source = tmp_path / "r.csv"
        source.write_text('phone\n+447911000001\n"=HYPERLINK(""http://x"")"\n')
        with running_sandbox(None) as url:
            start_worker(env=env)
            sent = run_dispatch(env, "send", str(source), "--channel", "sms", "--directory", "dir_12345",
                                "--api-url", url, "--wait", "--json")
        run_id = parse_json_out(sent.stdout)["run"]
        rows = list(csv.DictReader(io.StringIO(run_dispatch(env, "report", run_id).stdout)))
        assert rows[0]["recipient"] == "+447911000001" and rows[0]["status"] == "sent"
        assert rows[1]["recipient"].startswith("'=") and rows[1]["status"] == "invalid"
        as_json = json.loads(run_dispatch(env, "report", run_id, "--format", "json").stdout)
        assert as_json[1]["recipient"].startswith("=HYPERLINK")
        assert set(as_json[0]) >= {"row", "recipient", "status", "error_code", "error_message", "attempts"}


class TestLogs:
    def test_worker_logs_are_json_without_full_addresses(self, dispatch_env, tmp_path):
        """The local worker's log lines are JSON with the run ID, and no phone number appears whole."""
        env = {**dispatch_env, "DISPATCH_DEBUG": "1"}  # the local worker's stderr reaches ours
        result = run_dispatch(env, "send", SAMPLE, "--channel", "sms", "--directory", "dir_12345",
                              "--region", "GB", "--sandbox", "--sandbox-scenario",
                              str(ROOT / "samples" / "scenario.json"), "--json")
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        failed = [line for line in lines if line["event"] == "send failed"]
        assert failed and all(line["run_id"] == parse_json_out(result.stdout)["run"] for line in failed)
        assert all("row" in line for line in failed)
        assert "+447911200605" not in result.stderr and "7911200605" not in result.stderr


class TestForget:
    def test_forget_deletes_a_finished_run_only(self, dispatch_env, redis_url, tmp_path):
        """`forget` refuses a run that is still sending and deletes every key of a finished one."""
        from tests.helpers import runs
        from worker.runs import RunSpec

        store = runs(redis_url)
        open_run = store.create(RunSpec(channel="sms", directory="dir_1"),
                                [_verdict(1)], lambda run, rows: None)
        assert run_dispatch(dispatch_env, "forget", open_run).returncode == 2
        store.cancel(open_run)
        assert run_dispatch(dispatch_env, "forget", open_run).returncode == 0
        assert not [k for k in store.redis.keys("*") if open_run in k]
        assert run_dispatch(dispatch_env, "status", open_run).returncode == 2


def _verdict(row: int):
    from worker.ingest import Verdict
    from worker.statuses import Status

    return Verdict(row=row, given="+447911000001", recipient="+447911000001", status=Status.PENDING,
                   reason="", fields={})
