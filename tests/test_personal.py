"""Personal messages, SMS length, schedules and send windows end to end (../shared/spec/messages.md).

Real worker processes, the real sandbox on a real socket, and its request log as the ground truth for
what each recipient got and when. Where time is the subject, times are chosen relative to now: a run
that starts a few seconds ahead, a window that opens in a few seconds in one zone and is open in another.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import run_dispatch, wait_until
from tests.helpers import (SANDBOX_CREDS, deliveries, parse_json_out, phone, report, runs, wait_done,
                           wait_for_worker)
from worker import keys
from worker.errors import UsageError
from worker.sandbox import read_request_log, running_sandbox
from worker.scripts import Record

LONDON = "+447911000001"  # Europe/London (and its crown dependencies: one offset)
LONDON_2 = "+447911000002"
TOKYO = "+819012345678"  # Asia/Tokyo
TOKYO_FAILS_ONCE = "+819012345679"
NO_ZONE = "+881612345678"  # Iridium: a valid number with no time zone
NO_ZONE_2 = "+881612345679"
MANY_ZONES = "+79161234567"  # a Russian mobile: every Russian zone, Kaliningrad's neighbours to Anadyr
FAIL_ONCE = {"rules": [{"match": {"exact": TOKYO_FAILS_ONCE}, "steps": [{"error": 999}, {"ok": True}]}]}


# -- helpers -----------------------------------------------------------------------------------------
def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def dispatch(env: dict, *args: str) -> dict:
    """A `dispatch` command with --json that must succeed; its printed JSON."""
    result = run_dispatch(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return parse_json_out(result.stdout)


def send(env: dict, csv: Path, url: str, *extra: str, channel: str = "sms") -> str:
    """`dispatch send` (not waiting); the run ID."""
    return dispatch(env, "send", str(csv), "--channel", channel, "--directory", "dir_12345",
                    "--api-url", url, *extra)["run"]


def send_all(env: dict, url: str, *sends: tuple) -> list[str]:
    """Several `dispatch send` commands at once (time-relative tests cannot wait for each in turn)."""
    with ThreadPoolExecutor(len(sends)) as pool:
        return list(pool.map(lambda args: send(env, args[0], url, *args[1], **args[2]), sends))


def texts(log: Path) -> dict[str, list[str]]:
    """What the sandbox received per recipient (SMS body or email subject), in order."""
    got: dict[str, list[str]] = {}
    for line in read_request_log(log):
        if line["path"].startswith("/v3/send/") and line["result"] == "ok":
            got.setdefault(line["recipient"], []).append(line["text"])
    return got


def sent_at(log: Path, recipient: str) -> list[float]:
    return [line["ts"] for line in read_request_log(log)
            if line["path"].startswith("/v3/send/") and line["recipient"] == recipient]


def statuses(redis_url: str, run_id: str) -> dict[str, tuple[str, str]]:
    """recipient → (status, error message) from the run's report."""
    return {row.recipient: (row.status, row.error_message) for row in report(redis_url, run_id)}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def clock(zone: str, ts: float, end: bool = False) -> str:
    """`HH:MM:SS` local wall-clock time in `zone` at `ts` (`24:00:00` for a midnight end)."""
    local = datetime.fromtimestamp(ts, ZoneInfo(zone))
    if end and (local.hour, local.minute, local.second) == (0, 0, 0):
        return "24:00:00"
    return local.strftime("%H:%M:%S")


def window_opening_in(seconds: float, shut: str = "Europe/London", open_: str = "Asia/Tokyo") -> tuple[str, float]:
    """A window that is open now in `open_` (for another hour) and opens `seconds` from now in `shut`
    (London and Tokyo are 8-9 hours apart, so it is shorter than a day); the window and its opening."""
    opening = float(math.ceil(time.time() + seconds))
    return f"{clock(shut, opening)}-{clock(open_, opening + 3600, end=True)}", opening


def wait_status(redis_url: str, run_id: str, predicate, timeout: float = 30) -> dict:
    """The run's status once `predicate` holds for it."""
    store = runs(redis_url)

    def matching() -> dict | None:
        status = store.status(run_id)
        return status if predicate(status) else None

    return wait_until(matching, timeout=timeout)


# -- templates and SMS length ----------------------------------------------------------------------------
class TestTemplates:
    def test_each_recipient_gets_their_own_text(self, dispatch_env, start_worker, redis_url, tmp_path):
        """Fields from CSV columns ("First Name"), fallbacks, `{{ }}` literals, braces in values sent as
        they are; a missing value without a fallback is `invalid` and never sent; an unknown field is
        refused before anything is recorded; --max-segments counts GSM-7/UCS-2 and the URL; email
        subjects are templates too."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        people = write_csv(tmp_path / "people.csv", "Phone,First Name,City", [
            f"{phone(1)},Ann,Leeds", f"{phone(2)},Bea,", f"{phone(3)},{{Bob}},a}}b{{c",
            f"{phone(4)},{{city}},York", f"{phone(5)},,Leeds", f"{phone(6)},   ,Hull"])
        lengths = write_csv(tmp_path / "lengths.csv", "phone,text", [
            f"{phone(11)},{'x' * 129}", f"{phone(12)},{'x' * 130}",  # GSM-7: 129 + 1 + 30 = 160 | 161
            f"{phone(13)},{'я' * 39}", f"{phone(14)},{'я' * 40}",  # UCS-2: 70 | 71
            f"{phone(15)},{'😀' * 19}", f"{phone(16)},{'😀' * 20}",  # surrogate pairs: 38 + 31 = 69 | 71
            f"{phone(17)},{'€' * 64}x", f"{phone(18)},{'€' * 65}",  # extension: 2 each: 160 | 161
            f"{phone(19)},{'я' * 103}", f"{phone(20)},{'я' * 104}"])  # 134 = 2 × 67 | 135: 3 segments
        emails = write_csv(tmp_path / "emails.csv", "E-Mail,Name", ["ann@example.com,Ann", "bo@example.com,"])
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            refused = run_dispatch(env, "send", str(people), "--channel", "sms", "--directory", "dir_12345",
                                   "--api-url", url, "--body", "Hi {frist_name}:")
            assert refused.returncode == 2, refused.stderr
            assert ("The message uses {frist_name}, which no column provides; the columns are: "
                    "phone, first_name, city.") in refused.stderr
            assert "Traceback" not in refused.stderr
            assert dispatch(env, "runs") == []
            personal, limited, mailed = send_all(
                env, url,
                (people, ["--body", "Hi {first_name}, {{VIP}} coupon for {city|you}:"], {}),
                (lengths, ["--body", "{text}", "--max-segments", "1"], {}),
                (emails, ["--subject", "Hi {name|friend}, {{new}}"], {"channel": "email"}))
            for run_id in (personal, limited, mailed):
                wait_done(redis_url, run_id, timeout=30)
        got = texts(log)

        assert statuses(redis_url, personal) == {
            phone(1): ("sent", ""), phone(2): ("sent", ""), phone(3): ("sent", ""), phone(4): ("sent", ""),
            phone(5): ("invalid", "no value for first_name"), phone(6): ("invalid", "no value for first_name")}
        assert got[phone(1)] == ["Hi Ann, {VIP} coupon for Leeds:"]
        assert got[phone(2)] == ["Hi Bea, {VIP} coupon for you:"]
        assert got[phone(3)] == ["Hi {Bob}, {VIP} coupon for a}b{c:"]
        assert got[phone(4)] == ["Hi {city}, {VIP} coupon for York:"]  # a value is never a template
        assert phone(5) not in got and phone(6) not in got

        two, three = "message needs 2 SMS segments; the limit is 1", "message needs 3 SMS segments; the limit is 1"
        assert statuses(redis_url, limited) == {
            phone(11): ("sent", ""), phone(12): ("invalid", two), phone(13): ("sent", ""),
            phone(14): ("invalid", two), phone(15): ("sent", ""), phone(16): ("invalid", two),
            phone(17): ("sent", ""), phone(18): ("invalid", two), phone(19): ("invalid", two),
            phone(20): ("invalid", three)}
        assert got[phone(13)] == ["я" * 39] and got[phone(15)] == ["😀" * 19] and got[phone(17)] == ["€" * 64 + "x"]
        assert not {phone(i) for i in (12, 14, 16, 18, 19, 20)} & set(got)

        assert got["ann@example.com"] == ["Hi Ann, {new}"] and got["bo@example.com"] == ["Hi friend, {new}"]
        assert max(deliveries(log).values()) == 1

    def test_url_length_setting_changes_the_count(self, dispatch_env, redis_url, tmp_path):
        """DISPATCH_SMS_URL_LENGTH=10: a space and 10 characters are counted for the URL, so 149 GSM-7 or
        59 UCS-2 characters fit one segment (checked as the run is recorded: no worker needed)."""
        env = {**dispatch_env, **SANDBOX_CREDS, "DISPATCH_SMS_URL_LENGTH": "10"}
        csv = write_csv(tmp_path / "r.csv", "phone,text", [f"{phone(1)},{'x' * 149}", f"{phone(2)},{'x' * 150}",
                                                           f"{phone(3)},{'я' * 59}", f"{phone(4)},{'я' * 60}"])
        with running_sandbox(None) as url:
            run_id = send(env, csv, url, "--body", "{text}", "--max-segments", "1")
        got = statuses(redis_url, run_id)
        two = "message needs 2 SMS segments; the limit is 1"
        assert got[phone(2)] == got[phone(4)] == ("invalid", two)
        assert got[phone(1)][0] == got[phone(3)][0] == "pending"


# -- producers -------------------------------------------------------------------------------------------
class TestProducers:
    def test_submit_and_send_task_use_record_keys_send_at_and_window(self, dispatch_env, start_worker, redis_url,
                                                                     tmp_path, monkeypatch):
        """`submit()` with a schedule and `dispatch.submit` with a window: texts from the records' keys,
        nobody before their time, an unknown key refused with the spec's sentence."""
        import tasks

        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        monkeypatch.setenv("REDIS_URL", redis_url)
        with running_sandbox(None, request_log=log) as url:
            monkeypatch.setenv("COUPONTOOLS_API_URL", url)
            env["COUPONTOOLS_API_URL"] = url
            start_worker(env=env)
            wait_for_worker(redis_url)
            with pytest.raises(UsageError, match=r"The message uses \{frist_name\}, which no column provides; "
                                                 r"the columns are: phone, first_name\."):
                tasks.submit(recipients=[{"phone": phone(9), "first_name": "X"}], channel="sms",
                             directory="dir_12345", body="Hi {frist_name}")
            start = float(math.ceil(time.time() + 4))
            scheduled = tasks.submit(recipients=[{"phone": phone(101), "first_name": "Ann"},
                                                 {"phone": phone(102), "first_name": ""}, {"phone": phone(103)}],
                                     channel="sms", directory="dir_12345", body="Hi {first_name|there}:",
                                     send_at=iso(start))
            assert runs(redis_url).status(scheduled)["state"] == "scheduled"
            window, opening = window_opening_in(6)
            task_kwargs = {"recipients": [{"phone": LONDON, "first_name": "Liz"}, {"phone": TOKYO, "first_name": "Ken"},
                                          {"phone": NO_ZONE, "first_name": "Ida"}],
                           "channel": "sms", "directory": "dir_12345", "body": "Hello {first_name}",
                           "window": window, "timezone": "Asia/Tokyo", "max_segments": 1}
            tasks.app.send_task("dispatch.submit", kwargs=task_kwargs, task_id="personal-submit")
            windowed = "run_personal-submit"
            wait_until(lambda: runs(redis_url).redis.hget(keys.run(windowed), "recorded") == "1")
            early = wait_status(redis_url, windowed, lambda s: s["counts"].get("sent") == 2)
            assert early["counts"] == {"sent": 2, "waiting": 1} and time.time() < opening
            for run_id in (scheduled, windowed):
                wait_done(redis_url, run_id, timeout=30)
        got = texts(log)
        assert (got[phone(101)], got[phone(102)], got[phone(103)]) == (["Hi Ann:"], ["Hi there:"], ["Hi there:"])
        assert min(ts for i in (101, 102, 103) for ts in sent_at(log, phone(i))) >= start
        assert (got[LONDON], got[TOKYO], got[NO_ZONE]) == (["Hello Liz"], ["Hello Ken"], ["Hello Ida"])
        assert sent_at(log, LONDON)[0] >= opening > sent_at(log, TOKYO)[0]
        assert max(deliveries(log).values()) == 1


# -- schedules -------------------------------------------------------------------------------------------
class TestSchedules:
    def test_scheduled_run_pause_cancel_and_a_replaced_worker(self, dispatch_env, start_worker, redis_url,
                                                             tmp_path):
        """`--send-at` a few seconds ahead: `scheduled` with its send_at and its rows `waiting`; pause and
        resume before the start leave it scheduled; cancel before the start ends every row cancelled and
        sends nothing; a worker SIGKILLed and replaced before the start: each recipient once, on time."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        kept = write_csv(tmp_path / "kept.csv", "phone,first_name", [f"{phone(i)},P{i}" for i in range(1, 6)])
        dropped = write_csv(tmp_path / "dropped.csv", "phone,first_name", [f"{phone(i)},P{i}" for i in range(11, 14)])
        with running_sandbox(None, request_log=log) as url:
            first = start_worker(env=env)
            wait_for_worker(redis_url)
            start = float(math.ceil(time.time() + 8))
            run_id, cancelled = send_all(env, url, (kept, ["--send-at", iso(start), "--body", "Hi {first_name}:"], {}),
                                         (dropped, ["--send-at", iso(start)], {}))
            status = dispatch(env, "status", run_id)
            assert (status["state"], status["send_at"], status["counts"]) == ("scheduled", start, {"waiting": 5})
            assert run_dispatch(env, "pause", run_id).returncode == 0
            assert runs(redis_url).status(run_id)["state"] == "paused"
            assert run_dispatch(env, "resume", run_id).returncode == 0
            assert run_dispatch(env, "cancel", cancelled).returncode == 0
            assert time.time() < start, "too slow to check the run before its start"
            assert runs(redis_url).status(run_id)["state"] == "scheduled"
            first.kill()
            start_worker(env=env)
            assert wait_done(redis_url, cancelled, timeout=10)["counts"] == {"cancelled": 3}
            done = wait_done(redis_url, run_id, timeout=30)
        assert done["state"] == "completed" and done["counts"] == {"sent": 5}
        assert deliveries(log) == {phone(i): 1 for i in range(1, 6)}
        assert min(ts for i in range(1, 6) for ts in sent_at(log, phone(i))) >= start
        assert texts(log)[phone(3)] == ["Hi P3:"]
        assert runs(redis_url).status(cancelled)["state"] == "cancelled"


# -- send windows ----------------------------------------------------------------------------------------
class TestSendWindows:
    def test_recipients_wait_for_their_local_window(self, dispatch_env, start_worker, redis_url, tmp_path):
        """A window open now in Tokyo that opens in a few seconds in London: Tokyo at once, London
        `waiting` then sent at its opening; numbers without a zone and emails use the `timezone` column,
        else --timezone; a number whose zones never share the window is invalid; retry, pause and
        cancel of runs with waiting rows."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        mixed = write_csv(tmp_path / "mixed.csv", "phone,timezone", [
            f"{LONDON},Asia/Tokyo",  # a number's own zones win over the column
            f"{TOKYO},", f"{TOKYO_FAILS_ONCE},", f"{NO_ZONE},Europe/London", f"{NO_ZONE_2},"])
        mails = write_csv(tmp_path / "mails.csv", "email,timezone", [
            "london@example.com,Europe/London", "tokyo@example.com,", "mars@example.com,Mars/Base"])
        paused = write_csv(tmp_path / "paused.csv", "phone", [LONDON_2])
        stopped = write_csv(tmp_path / "stopped.csv", "phone", ["+447911000003", "+447911000004"])
        never = write_csv(tmp_path / "never.csv", "phone", [MANY_ZONES, "+447911000005"])
        with running_sandbox(FAIL_ONCE, request_log=log) as url:
            start_worker(env=env)
            wait_for_worker(redis_url)
            window, opening = window_opening_in(10)
            options = ["--window", window, "--timezone", "Asia/Tokyo"]
            sms, mail, pause_me, cancel_me, narrow = send_all(
                env, url, (mixed, options, {}), (mails, ["--subject", "Hi", *options], {"channel": "email"}),
                (paused, options, {}), (stopped, options, {}), (never, ["--window", "09:00-10:00"], {}))
            assert run_dispatch(env, "pause", pause_me).returncode == 0
            assert run_dispatch(env, "cancel", cancel_me).returncode == 0

            before = wait_status(redis_url, sms, lambda s: s["counts"].get("failed"))
            assert before["counts"] == {"sent": 2, "failed": 1, "waiting": 2}, before
            assert dispatch(env, "retry", sms)["queued"] == 1
            wait_until(lambda: deliveries(log)[TOKYO_FAILS_ONCE] == 1)
            assert time.time() < opening, "too slow to check the run before the window opens"
            assert dispatch(env, "status", sms)["counts"] == {"sent": 3, "waiting": 2}
            assert wait_done(redis_url, cancel_me, timeout=10)["counts"] == {"cancelled": 2}

            done = wait_done(redis_url, sms, timeout=30)
            mailed = wait_done(redis_url, mail, timeout=30)
            held = runs(redis_url).status(pause_me)  # swept past its opening while paused
            assert (held["state"], held["counts"]) == ("paused", {"waiting": 1})
            assert LONDON_2 not in deliveries(log)
            assert run_dispatch(env, "resume", pause_me).returncode == 0
            resumed = wait_done(redis_url, pause_me, timeout=30)

        assert done["state"] == "completed" and done["counts"] == {"sent": 5}
        status, reason = statuses(redis_url, narrow)[MANY_ZONES]  # 09:00-10:00 in zones 10 hours apart
        assert status == "invalid" and "Europe/Moscow" in reason and "Asia/Anadyr" in reason
        assert reason.startswith("the send window never opens in all of the recipient's time zones (")
        assert statuses(redis_url, narrow)["+447911000005"][0] in ("waiting", "pending", "sent")
        for now_rows in (TOKYO, NO_ZONE_2, "tokyo@example.com"):
            assert sent_at(log, now_rows)[0] < opening
        for later in (LONDON, NO_ZONE, "london@example.com", LONDON_2):
            assert sent_at(log, later) and min(sent_at(log, later)) >= opening, later
        assert mailed["counts"] == {"sent": 2, "invalid": 1}
        assert statuses(redis_url, mail)["mars@example.com"] == ("invalid", "unknown time zone 'Mars/Base'")
        assert resumed["state"] == "completed" and resumed["counts"] == {"sent": 1}
        assert "+447911000003" not in deliveries(log) and "+447911000004" not in deliveries(log)
        assert [r.attempts for r in report(redis_url, sms) if r.recipient == LONDON] == [1]
        assert max(deliveries(log).values()) == 1

    def test_window_closed_by_the_time_a_row_is_claimed(self, dispatch_env, start_worker, redis_url, tmp_path):
        """A row queued while its window was open but claimed after it closed (paused over the closing) is
        not sent: it goes back to `waiting` for the next opening, its attempt given back; cancel ends it."""
        env = {**dispatch_env, **SANDBOX_CREDS}
        log = tmp_path / "requests.log"
        csv = write_csv(tmp_path / "r.csv", "phone", [LONDON])
        store = runs(redis_url)
        with running_sandbox(None, request_log=log) as url:
            start_worker(env=env)
            wait_for_worker(redis_url)
            start = float(math.ceil(time.time() + 4))
            closes = start + 2
            window = f"{clock('Europe/London', start - 3600)}-{clock('Europe/London', closes, end=True)}"
            run_id = send(env, csv, url, "--send-at", iso(start), "--window", window)
            assert run_dispatch(env, "pause", run_id).returncode == 0
            assert time.time() < start, "too slow to pause the run before its start"
            wait_until(lambda: time.time() > closes + 0.5, timeout=15)  # time itself is the subject here
            assert run_dispatch(env, "resume", run_id).returncode == 0
            held = wait_until(lambda: (rec := stored_row(store, run_id, 1)).due > closes + 3600 and rec, timeout=15)
            assert (held.status, held.attempts) == ("waiting", 0)
            assert dispatch(env, "status", run_id)["counts"] == {"waiting": 1}
            assert run_dispatch(env, "cancel", run_id).returncode == 0
            assert wait_done(redis_url, run_id, timeout=10)["counts"] == {"cancelled": 1}
        assert not [line for line in read_request_log(log) if line["path"].startswith("/v3/send/")]
        assert closes < held.due <= closes + 86400  # the next opening: the window's start, London time
        assert clock("Europe/London", held.due) == clock("Europe/London", start - 3600)

def stored_row(store, run_id: str, row: int) -> Record:
    """A row's record as the state scripts keep it (its status and due time)."""
    return Record.decode(store.redis.hget(keys.rows(run_id), str(row)))


def test_validate_previews_the_messages_and_their_length(dispatch_env, tmp_path):
    """`validate --body` (messages.md): segments per row, UCS-2 rows and the first three messages in
    --json; --max-segments counts the rows over the limit; a bad window is refused as by send."""
    csv = tmp_path / "people.csv"
    csv.write_text("Phone,First Name\n+447911200101,Ann\n+447911200202,\n+447911200303,Жанна\n"
                   "+447911200404,Bo\n", encoding="utf-8")
    result = run_dispatch(dispatch_env, "validate", str(csv), "--channel", "sms", "--body", "Hi {first_name|there}:",
                          "--max-segments", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["segments"] == {"1": 4} and summary["ucs2"] == 1 and summary["over_limit"] == 0
    assert summary["preview"] == [{"row": 1, "text": "Hi Ann:"}, {"row": 2, "text": "Hi there:"},
                                  {"row": 3, "text": "Hi Жанна:"}]
    refused = run_dispatch(dispatch_env, "validate", str(csv), "--channel", "sms", "--window", "9-5")
    assert refused.returncode == 2 and "HH:MM-HH:MM" in refused.stderr
