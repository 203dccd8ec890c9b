"""The drop folder (`dispatch watch`): real files, real Redis, the real sandbox and real workers."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import structlog

from tests.conftest import ROOT, run_dispatch, wait_until
from tests.helpers import SANDBOX_CREDS, deliveries, phone, runs, write_phones
from worker.campaigns import Dispatch
from worker.sandbox import running_sandbox
from worker.settings import Settings
from worker.watch import UNEXPECTED, Event, Watcher

CAMPAIGN = 'channel = "sms"\ndirectory = "dir_12345"\nregion = "GB"\n'
NOWHERE = "http://127.0.0.1:9/v3"  # a sandbox URL nothing listens on: runs are recorded, never sent


@pytest.fixture
def dispatch(dispatch_env, monkeypatch) -> Dispatch:
    """The application layer in this process, queueing through Celery to the test's Redis."""
    monkeypatch.setenv("REDIS_URL", dispatch_env["REDIS_URL"])
    from tasks.batches import publish_batch

    return Dispatch(Settings.from_env(dispatch_env), publish_batch)


@pytest.fixture
def drop(tmp_path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "campaign.toml").write_text(CAMPAIGN)
    return folder


@pytest.fixture
def sandbox(tmp_path):
    """A running sandbox and its request log."""
    log = tmp_path / "sandbox.jsonl"
    with running_sandbox(None, request_log=log) as url:
        yield url, log


@pytest.fixture
def worker(dispatch_env, start_worker):
    return start_worker(env={**dispatch_env, **SANDBOX_CREDS})


class Clock:
    """Injected time for `poll_once`: each poll is `settle` seconds after the one before."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher, self.now = watcher, 0.0

    def poll(self, advance: float | None = None) -> list[Event]:
        self.now += self.watcher.settle_seconds if advance is None else advance
        return self.watcher.poll_once(now=self.now)

    def until(self, kind: str, timeout: float = 30) -> list[Event]:
        """Poll (really waiting between polls) until an event of `kind` happens; all events seen."""
        seen: list[Event] = []

        def happened() -> bool:
            seen.extend(self.poll())
            return any(e.kind == kind for e in seen)

        wait_until(happened, timeout=timeout, every=0.1)
        return seen


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in events]


def report_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_growing_file_is_not_picked_up_until_it_settles(dispatch, drop):
    """A file whose size or mtime changed since the last poll, or that has looked the same for less than
    the settle time, stays where it is; two polls `settle` apart with no change pick it up."""
    watcher = Watcher(dispatch, drop, sandbox_url=NOWHERE, settle_seconds=5)
    path = write_phones(drop / "big.csv", 3)
    (drop / ".hidden.csv").write_text("phone\n+447911000001\n")
    (drop / "upload.csv.part").write_text("phone\n+447911000001\n")
    assert watcher.poll_once(now=0) == []
    with path.open("a") as handle:
        handle.write(f"{phone(3)},P3\n")
    assert watcher.poll_once(now=10) == []  # it grew: the settle time starts again
    assert watcher.poll_once(now=14.9) == []  # the same, but not for 5 s yet
    events = watcher.poll_once(now=15)
    assert kinds(events) == [("picked_up", "big.csv"), ("started", "big.csv")]
    assert events[1].run_id.startswith("drop_") and len(events[1].run_id) == 25
    assert dispatch.status(events[1].run_id)["total"] == 4  # the whole file, not the first 3 rows
    assert path.exists() and not (drop / "done").exists()  # the file stays while its run is open
    assert watcher.poll_once(now=100) == [] and (drop / ".hidden.csv").exists()


def test_dropped_file_becomes_one_run_however_often_it_is_dropped(dispatch, drop, sandbox, worker, redis_url):
    """A CSV with campaign.toml becomes a run and ends in done/ with its report; the same content again,
    under another name or the same one after it was done, makes no second run and sends nobody twice."""
    url, log = sandbox
    clock = Clock(Watcher(dispatch, drop, sandbox_url=url, settle_seconds=0.5))
    write_phones(drop / "list.csv", 5)
    shutil.copy(drop / "list.csv", drop / "copy.csv")  # dropped twice at once, under two names
    clock.poll()
    started = [e for e in clock.poll() if e.kind == "started"]
    assert [e.name for e in started] == ["copy.csv", "list.csv"]
    assert started[0].run_id == started[1].run_id
    run_id = started[0].run_id
    done = clock.until("done")
    while len([e for e in done if e.kind == "done"]) < 2:
        done += clock.until("done")
    assert not (drop / "list.csv").exists() and (drop / "done" / "list.csv").exists()
    rows = report_rows(drop / "done" / "list.report.csv")
    assert [(r["row"], r["recipient"], r["status"]) for r in rows] == [
        (str(i + 1), phone(i), "sent") for i in range(5)]
    assert report_rows(drop / "done" / "copy.report.csv") == rows

    shutil.copy(drop / "done" / "list.csv", drop / "list.csv")  # again, after the run is done
    clock.poll()
    again = clock.until("done")
    assert {e.run_id for e in again if e.run_id} == {run_id}
    assert (drop / "done" / "list.2.csv").exists() and (drop / "done" / "list.2.report.csv").exists()
    assert runs(redis_url).list_runs() == [run_id]
    assert sorted(deliveries(log).values()) == [1] * 5


def test_own_toml_wins_over_campaign_toml(dispatch, drop):
    """NAME.toml beside the file gives its settings (and so another run ID); it moves to done/ with it."""
    (drop / "vip.toml").write_text('channel = "sms"\ndirectory = "dir_777"\nbody = "Hi"\n')
    write_phones(drop / "vip.csv", 2)
    write_phones(drop / "all.csv", 2)  # same bytes, campaign.toml's settings
    clock = Clock(Watcher(dispatch, drop, sandbox_url=NOWHERE, settle_seconds=1))
    clock.poll()
    started = {e.name: e.run_id for e in clock.poll() if e.kind == "started"}
    assert dispatch.status(started["vip.csv"])["directory"] == "dir_777"
    assert dispatch.status(started["all.csv"])["directory"] == "dir_12345"
    assert started["vip.csv"] != started["all.csv"]
    dispatch.cancel(started["vip.csv"])  # ends every row at once: the run is done
    assert kinds(clock.poll()) == [("done", "vip.csv")]
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["vip.csv", "vip.report.csv", "vip.toml"]
    assert (drop / "campaign.toml").exists() and (drop / "all.csv").exists()


@pytest.mark.parametrize("name, content, settings, reason", [
    ("nophone.csv", "name,city\nAnn,York\n", None, "No phone column"),
    ("empty.csv", "", None, "empty"),
    ("badtoml.csv", "phone\n+447911000001\n", 'channel = "sms\n', "badtoml.toml is not valid TOML"),
    ("extra.csv", "phone\n+447911000001\n", CAMPAIGN + "colour = 'red'\n", "unknown settings (colour)"),
    ("nodir.csv", "phone\n+447911000001\n", 'channel = "sms"\n', "has no directory"),
    ("rate.csv", "phone\n+447911000001\n", CAMPAIGN + 'rate = "fast"\n', "rate must be a number"),
    ("fax.csv", "phone\n+447911000001\n", 'channel = "fax"\ndirectory = "dir_1"\n', "sms or email"),
])
def test_unusable_files_are_rejected_with_one_sentence(dispatch, drop, name, content, settings, reason):
    """An unusable file moves to rejected/ (with its TOML) beside NAME.error.txt: one sentence, one line."""
    (drop / name).write_text(content)
    stem = name.removesuffix(".csv")
    if settings is not None:
        (drop / f"{stem}.toml").write_text(settings)
    clock = Clock(Watcher(dispatch, drop, sandbox_url=NOWHERE, settle_seconds=1))
    clock.poll()
    [picked, rejected] = clock.poll()
    assert (picked.kind, rejected.kind) == ("picked_up", "rejected") and reason in rejected.detail
    error = (drop / "rejected" / f"{stem}.error.txt").read_text()
    assert reason in error and error.endswith(".\n") and error.count("\n") == 1
    assert (drop / "rejected" / name).exists() and not (drop / name).exists()
    assert (drop / "rejected" / f"{stem}.toml").exists() == (settings is not None)
    assert runs(dispatch.settings.redis_url).list_runs() == []


def test_an_unexpected_error_rejects_the_file_and_the_watcher_goes_on(dispatch, drop, monkeypatch):
    """A bug while starting a run rejects that file with a generic sentence, logs no address, and the
    next file is still handled; a second reject of the same name gets a suffix."""
    real_start = dispatch.start_from_file

    def broken(campaign, path, **kwargs):
        if Path(path).name == "boom.csv":
            raise RuntimeError(f"cannot handle {phone(1)}")
        return real_start(campaign, path, **kwargs)

    monkeypatch.setattr(dispatch, "start_from_file", broken)
    (drop / "rejected").mkdir()
    (drop / "rejected" / "boom.csv").write_text("an earlier reject\n")
    write_phones(drop / "boom.csv", 2)
    write_phones(drop / "fine.csv", 3, start=10)
    clock = Clock(Watcher(dispatch, drop, sandbox_url=NOWHERE, settle_seconds=1))
    clock.poll()
    with structlog.testing.capture_logs() as logged:
        events = clock.poll()
    assert kinds(events) == [("picked_up", "boom.csv"), ("rejected", "boom.csv"),
                             ("picked_up", "fine.csv"), ("started", "fine.csv")]
    assert (drop / "rejected" / "boom.2.error.txt").read_text() == UNEXPECTED + "\n"
    assert (drop / "rejected" / "boom.csv").read_text() == "an earlier reject\n"
    assert phone(1)[4:] not in repr(logged) and any(e["event"].startswith("unexpected") for e in logged)


def test_restarted_watcher_finishes_the_open_run(dispatch, drop, sandbox, start_worker, dispatch_env, redis_url):
    """A watcher stopped mid-run leaves the file in place; a new one finds the same run (no second run,
    nobody sent twice) and files it in done/ once every row is final."""
    url, log = sandbox
    (drop / "slow.toml").write_text(CAMPAIGN + "rate = 10\n")
    write_phones(drop / "slow.csv", 30)
    first = Clock(Watcher(dispatch, drop, sandbox_url=url, settle_seconds=0.5))
    first.poll()
    [run_id] = [e.run_id for e in first.poll() if e.kind == "started"]
    start_worker(env={**dispatch_env, **SANDBOX_CREDS})
    wait_until(lambda: 0 < dispatch.status(run_id)["final"] < 30, timeout=30, every=0.05)
    del first  # the watcher is gone mid-run; its state was in the files and in Redis only

    second = Clock(Watcher(dispatch, drop, sandbox_url=url, settle_seconds=0.5))
    second.poll()
    restarted = [e for e in second.poll() if e.kind == "started"]
    assert [e.run_id for e in restarted] == [run_id] and "existing run" in restarted[0].detail
    second.until("done")
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["slow.csv", "slow.report.csv", "slow.toml"]
    assert [r["status"] for r in report_rows(drop / "done" / "slow.report.csv")] == ["sent"] * 30
    assert runs(redis_url).list_runs() == [run_id]
    assert sorted(deliveries(log).values()) == [1] * 30


def test_watch_command_once_with_the_sandbox(dispatch_env, tmp_path):
    """`dispatch watch DIR --once --sandbox` starts the sandbox and a local worker, sends the dropped
    file, files it with its report, rejects the unusable one, prints a line per event and exits 0."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "campaign.toml").write_text(CAMPAIGN)
    shutil.copy(ROOT / "samples" / "recipients.csv", drop / "recipients.csv")
    (drop / "names.csv").write_text("name\nAnn\n")
    log = tmp_path / "sandbox.jsonl"
    result = run_dispatch(dispatch_env, "watch", str(drop), "--once", "--sandbox", "--sandbox-scenario",
                          str(ROOT / "samples" / "scenario.json"), "--sandbox-log", str(log),
                          "--every", "0.2", "--settle", "0.2", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "picked up names.csv" and out[1].startswith("rejected names.csv: No phone column")
    assert out[2] == "picked up recipients.csv" and out[3].startswith("started run drop_")
    assert out[4].startswith("done recipients.csv: run drop_") and "completed" in out[4]
    statuses = [r["status"] for r in report_rows(drop / "done" / "recipients.report.csv")]
    assert len(statuses) == 25 and statuses.count("sent") == 19 and statuses.count("blacklisted") == 1
    assert (drop / "rejected" / "names.error.txt").exists()
    assert max(deliveries(log).values()) == 1

    missing = run_dispatch(dispatch_env, "watch", str(tmp_path / "nothere"), "--once")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
