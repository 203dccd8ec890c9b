"""Issue 12 through every front door: `dispatch validate` / `send`, submit()'s records, the service's
upload, all reading the HubSpot-shaped export (several phone columns, a landline, an extension…)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_dispatch
from tests.helpers import SANDBOX_CREDS, parse_json_out
from worker.campaigns import Campaign, Dispatch
from worker.settings import Settings

HUBSPOT = Path(__file__).resolve().parent / "exports" / "hubspot_contacts.csv"
SALESFORCE = Path(__file__).resolve().parent / "exports" / "salesforce_contacts.csv"


class TestValidateCommand:
    def test_fallback_counts_report_column_and_rejects(self, dispatch_env, tmp_path):
        """`validate` falls back through the phone columns, says which column each number came from,
        and `--rejects` writes the invalid rows with every column plus the reason."""
        report, rejects = tmp_path / "report.csv", tmp_path / "rejects.csv"
        result = run_dispatch(dispatch_env, "validate", str(HUBSPOT), "--channel", "sms", "--region", "GB",
                              "--report", str(report), "--rejects", str(rejects))
        assert result.returncode == 0, result.stderr
        assert "3 rows that will not be sent written to" in result.stdout
        rows = list(csv.DictReader(report.open(encoding="utf-8")))
        assert [r["column"] for r in rows] == ["Mobile Phone Number", "Phone Number", "Phone Number",
                                               "Mobile Phone Number", "Phone Number", "Mobile Phone Number",
                                               "Mobile Phone Number", "Mobile Phone Number"]
        assert rows[2]["reason"] == "a landline cannot receive SMS"
        written = list(csv.DictReader(rejects.open(encoding="utf-8")))
        assert [(r["Record ID"], r["reason"]) for r in written] == [
            ("103", "a landline cannot receive SMS"), ("104", "no phone number"),
            ("106", "Mobile Phone Number: a premium-rate number cannot receive SMS; "
                    "Phone Number: has an extension: an SMS cannot reach one")]
        assert written[0]["Phone Number"] == "'+44 20 7946 0991"  # spreadsheet-safe, as every report

    @pytest.mark.parametrize("args, counts", [
        ((), {"rows": 8, "valid": 4, "invalid": 3, "duplicates": 1}),
        (("--allow-landlines",), {"rows": 8, "valid": 5, "invalid": 2, "duplicates": 1}),
        (("--phone-column", "Phone Number"), {"rows": 8, "valid": 3, "invalid": 5, "duplicates": 0}),
        (("--phone-column", "phone number", "--phone-column", "Mobile Phone Number", "--workers", "2"),
         {"rows": 8, "valid": 4, "invalid": 3, "duplicates": 1}),
    ])
    def test_options(self, dispatch_env, args, counts):
        result = run_dispatch(dispatch_env, "validate", str(HUBSPOT), "--channel", "sms", "--region", "GB",
                              "--json", *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == counts

    def test_smtputf8_flag(self, dispatch_env):
        strict = run_dispatch(dispatch_env, "validate", str(SALESFORCE), "--channel", "email", "--json")
        lenient = run_dispatch(dispatch_env, "validate", str(SALESFORCE), "--channel", "email", "--json",
                               "--allow-smtputf8")
        assert json.loads(strict.stdout)["invalid"] == 3 and json.loads(lenient.stdout)["invalid"] == 1

    def test_a_missing_column_and_an_unwritable_rejects_file_are_one_sentence(self, dispatch_env, tmp_path):
        missing = run_dispatch(dispatch_env, "validate", str(HUBSPOT), "--channel", "sms", "--phone-column",
                               "Mobile Phone Number", "--phone-column", "Pager")
        nowhere = run_dispatch(dispatch_env, "validate", str(HUBSPOT), "--channel", "sms", "--region", "GB",
                               "--rejects", str(tmp_path / "no" / "such" / "dir" / "r.csv"))
        for result in (missing, nowhere):
            assert result.returncode == 2 and "Traceback" not in result.stderr
            assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "'Pager'" in missing.stderr and "Cannot write the rejects" in nowhere.stderr
        assert not (tmp_path / "no").exists()


def test_send_uses_the_same_rules(dispatch_env, tmp_path):
    """`send --phone-column … --allow-landlines`: the run records what validate said."""
    from worker.sandbox import running_sandbox

    env = {**dispatch_env, **SANDBOX_CREDS}
    with running_sandbox(None) as url:
        result = run_dispatch(env, "send", str(HUBSPOT), "--channel", "sms", "--region", "GB", "--directory",
                              "dir_12345", "--api-url", url, "--phone-column", "Phone Number",
                              "--allow-landlines", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    # Phone Number only, landlines allowed: rows 1, 2, 3, 5, 7 sent; 4 empty, 6 extension, 8 empty
    assert parse_json_out(result.stdout)["counts"] == {"sent": 5, "invalid": 3}


@pytest.fixture
def dispatch(dispatch_env, monkeypatch) -> Dispatch:
    monkeypatch.setenv("REDIS_URL", dispatch_env["REDIS_URL"])
    return Dispatch(Settings.from_env(dispatch_env), lambda run_id, rows: None)


def _statuses(dispatch: Dispatch, run_id: str) -> list[tuple[str, str]]:
    return [(r.status, r.recipient) for r in dispatch.report(run_id)]


def test_campaign_fields_reach_the_file_run(dispatch):
    """Campaign(phone_columns=…, allow_landlines=…) → Dispatch.ingest_options → the recorded run."""
    campaign = Campaign(channel="sms", directory="cam_1", region="GB", phone_columns=("Phone Number",),
                        allow_landlines=True)
    options = dispatch.ingest_options(campaign)
    assert (options.phone_columns, options.allow_landlines, options.allow_smtputf8) == (("Phone Number",), True, False)
    run = dispatch.start_from_file(campaign, HUBSPOT)
    statuses = _statuses(dispatch, run)
    assert [s for s, _ in statuses].count("invalid") == 3 and statuses[0] == ("pending", "+441174960860")
    one_header = Campaign(channel="sms", directory="cam_1", region="GB", phone_columns="Phone Number")
    assert dispatch.ingest_options(one_header).explicit_columns("sms") == ("Phone Number",)


def test_submit_records_fall_back_and_refuse_landlines(dispatch_env, monkeypatch):
    """submit() (create_run_from_records): a record's `mobile` then `phone`; landlines and curly quotes refused."""
    monkeypatch.setenv("REDIS_URL", dispatch_env["REDIS_URL"])
    from tasks.batches import create_run_from_records

    records = [{"phone": "0117 496 0860", "mobile": "07911 200101"}, {"phone": "07911 200202", "mobile": ""},
               {"phone": "0117 496 0860"}, {"phone": "+1 (202) 555-0104 ext. 12"}]
    run = create_run_from_records(records, channel="sms", directory="cam_1", region="GB",
                                  publish=lambda run_id, rows: None)
    dispatch = Dispatch(Settings.from_env(dispatch_env), lambda run_id, rows: None)
    assert _statuses(dispatch, run) == [("pending", "+447911200101"), ("pending", "+447911200202"),
                                        ("invalid", "0117 496 0860"), ("invalid", "+1 (202) 555-0104 ext. 12")]
    report = {r.row: r.error_message for r in dispatch.report(run)}
    assert report[3] == "a landline cannot receive SMS" and report[4] == "has an extension: an SMS cannot reach one"
    emails = create_run_from_records([{"email": "o’brien@example.ie"}, {"email": "bob@MÜNCHEN.de"}],
                                     channel="email", directory="cam_1", publish=lambda run_id, rows: None)
    assert _statuses(dispatch, emails) == [("invalid", "o’brien@example.ie"), ("pending", "bob@xn--mnchen-3ya.de")]


def test_service_upload_checks_the_same_way(dispatch):
    """The service's upload (Uploads.create with the form's campaign): fallback, reasons, counts."""
    from worker.service.receive import campaign_of

    options = dispatch.ingest_options(campaign_of({"channel": "sms", "region": "GB"}))
    summary = dispatch.uploads.create(HUBSPOT, options, "hubspot_contacts.csv")
    assert {k: summary[k] for k in ("rows", "valid", "invalid", "duplicates")} == \
        {"rows": 8, "valid": 4, "invalid": 3, "duplicates": 1}
    assert summary["column"] == "Mobile Phone Number"
    assert [p["reason"] for p in summary["problems"]][:2] == ["a landline cannot receive SMS",
                                                              "no phone number"]
    from worker.ingest import rejects_rows

    rejected = list(rejects_rows(dispatch.uploads.verdicts(summary["upload"]), summary["fields"]))
    assert [r[0] for r in rejected[1:]] == ["103", "104", "106"]
    assert rejected[1][summary["fields"].index("Phone Number")] == "'+44 20 7946 0991"
