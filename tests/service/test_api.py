"""The JSON API over a real socket: a real `dispatch serve`, real Redis, a real worker and the real
sandbox; uploads, runs, reports, events, control, paging, metrics, and the refusals around them."""
from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, WorkerProcess, wait_until
from tests.service.conftest import Served, start_service, stop_service
from worker import keys
from worker.ingest import IngestOptions, open_recipient_file
from worker.errors import InputError
from worker.redis_server import EmbeddedRedis, connect
from worker.runs import Runs
from worker.sandbox import running_sandbox

SECRET = "very-secret-client-secret-4242"


class Receiver:
    """A local HTTP endpoint that keeps every request it gets (it must get none)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v3"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def phone(i: int) -> str:
    return f"+447911{i:06d}"


def new_id(prefix: str = "run_api") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(service_env: dict[str, str], redis_server: str) -> Iterator[WorkerProcess]:
    """One real worker for the module, alive before the first run is posted."""
    process = WorkerProcess(service_env)
    try:
        client = connect(redis_server)
        wait_until(lambda: client.zcard(keys.WORKERS) or process.process.poll() is not None, timeout=30)
        assert process.process.poll() is None, process.process.stderr.read().decode()[-2000:]
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def scenario_url() -> Iterator[str]:
    """A sandbox where numbers ending 605 are blacklisted (samples/scenario.json)."""
    scenario = json.loads((ROOT / "samples" / "scenario.json").read_text())
    with running_sandbox(scenario) as url:
        yield url


@pytest.fixture(scope="module")
def api(service: Served) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def post_run(api: httpx.Client, url: str, **fields) -> httpx.Response:
    body = {"channel": "sms", "directory": "dir_12345", "region": "GB", "body": "Your coupon:",
            "api_url": url, "sandbox": True, **fields}
    return api.post("/api/runs", json=body)


def wait_finished(api: httpx.Client, run: str, timeout: float = 30) -> dict:
    def finished() -> dict | None:
        status = api.get(f"/api/runs/{run}").json()
        return status if status["done"] and status["state"] == "completed" else None
    return wait_until(finished, timeout=timeout, every=0.1)


def finished_run(api: httpx.Client, url: str, recipients: list[dict], **fields) -> str:
    answer = post_run(api, url, recipients=recipients, run_id=new_id(), **fields)
    assert answer.status_code == 201, answer.text
    wait_finished(api, answer.json()["run"])
    return answer.json()["run"]


# -- authentication, health, metrics ------------------------------------------------------------------------
def test_api_needs_the_token_but_healthz_does_not(service: Served):
    with service.anonymous() as anon:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {service.token}"}):
            answer = anon.get("/api/runs", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json()["error"].endswith(".")
        assert anon.post("/api/runs", json={}).status_code == 401
        assert anon.get("/healthz").json() == {"status": "ok"}


def test_metrics_needs_the_token_and_speaks_prometheus(service: Served, api: httpx.Client):
    with service.anonymous() as anon:
        assert anon.get("/metrics").status_code == 401
    answer = api.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE dispatch_sends_total counter" in answer.text


def test_healthz_is_503_when_redis_does_not_answer(service_env: dict[str, str], tmp_path: Path):
    redis = EmbeddedRedis(tmp_path / "redis")
    served = start_service({**service_env, "REDIS_URL": redis.url(), "DISPATCH_HOME": str(tmp_path)})
    try:
        with served.anonymous() as anon:
            assert anon.get("/healthz").status_code == 200
            redis.stop()
            answer = anon.get("/healthz")
            assert answer.status_code == 503
            assert answer.json()["status"] != "ok" and answer.json()["error"]
    finally:
        stop_service(served)
        redis.stop()


# -- uploads --------------------------------------------------------------------------------------------------
def upload(api: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return api.post("/api/uploads", files={"file": (path.name, handle, "text/csv")},
                        data={"channel": "sms", "region": "GB", **fields})


def test_upload_of_the_messy_csv_reports_every_problem_by_row(api: httpx.Client, messy_csv: Path):
    answer = upload(api, messy_csv)
    assert answer.status_code == 201, answer.text
    summary = answer.json()
    assert summary["upload"].startswith("up_")
    # the fixture's +447700900xxx numbers are Ofcom's drama range: not valid GB numbers
    assert {k: summary[k] for k in ("rows", "valid", "invalid", "duplicates", "suppressed")} == \
        {"rows": 6, "valid": 0, "invalid": 6, "duplicates": 0, "suppressed": 0}
    assert (summary["column"], summary["encoding"], summary["delimiter"]) == ("phone", "utf-8", ",")
    assert summary["fields"] == ["name", "phone"]
    problems = {p["row"]: p for p in summary["problems"]}
    assert sorted(problems) == [1, 2, 3, 4, 5, 6]
    assert problems[2] == {"row": 2, "input": "not a number", "reason": "not a phone number (contains letters)"}
    assert problems[5]["reason"] == "no phone number"


def test_upload_counts_valid_duplicate_and_invalid_rows(api: httpx.Client, tmp_path: Path):
    path = tmp_path / "crm.csv"
    path.write_text(f"name,phone\nAnn,{phone(1)}\nBob,not a number\nCy,+44 7911 000001\n"
                    f"<b>Di</b>,{phone(2)}\n=HYPERLINK(\"x\"),=1+2\n", encoding="utf-8")
    summary = upload(api, path).json()
    assert {k: summary[k] for k in ("rows", "valid", "invalid", "duplicates")} == \
        {"rows": 5, "valid": 2, "invalid": 2, "duplicates": 1}
    assert [(p["row"], p["input"]) for p in summary["problems"]] == \
        [(2, "not a number"), (3, "+44 7911 000001"), (5, "=1+2")]
    assert summary["filename"] == "crm.csv"


def test_upload_refuses_a_form_without_file_or_channel(api: httpx.Client, messy_csv: Path):
    no_file = api.post("/api/uploads", files={"channel": (None, "sms")})
    assert no_file.status_code == 400 and "file" in no_file.json()["error"]
    no_channel = upload(api, messy_csv, channel="")
    assert no_channel.status_code == 400 and "channel" in no_channel.json()["error"]
    fax = upload(api, messy_csv, channel="fax")
    assert fax.status_code == 422 and "'fax'" in fax.json()["error"]
    not_a_form = api.post("/api/uploads", content=b"phone\n+447911000001\n", headers={"content-type": "text/csv"})
    assert not_a_form.status_code == 400


def test_upload_of_an_unusable_file_is_422_with_the_cli_sentence(api: httpx.Client, tmp_path: Path):
    path = tmp_path / "cities.csv"
    path.write_text("name,city\nAnn,Paris\n")
    with pytest.raises(InputError) as cli:
        open_recipient_file(path, IngestOptions(channel="sms", region="GB"))
    answer = upload(api, path)
    assert answer.status_code == 422
    assert answer.json() == {"error": str(cli.value)}


def test_upload_over_the_size_limit_is_413_and_leaves_no_file(service_env: dict[str, str], tmp_path: Path):
    home = tmp_path / "home"
    served = start_service({**service_env, "DISPATCH_MAX_FILE_BYTES": "2000", "DISPATCH_HOME": str(home)})
    try:
        big = tmp_path / "big.csv"
        big.write_text("phone\n" + "".join(f"{phone(i)}\n" for i in range(3000)))  # about 42 KB
        with served.client() as client:
            answer = upload(client, big)
            assert answer.status_code == 413
            assert answer.json()["error"] == ("The file is larger than the limit of 2.0 KB "
                                              "(DISPATCH_MAX_FILE_BYTES).")

            def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
                boundary = b"--XyZ\r\n"
                yield boundary + b'Content-Disposition: form-data; name="channel"\r\n\r\nsms\r\n'
                yield boundary + b'Content-Disposition: form-data; name="file"; filename="b.csv"\r\n\r\n'
                for _ in range(10):
                    yield b"+447911000001\n" * 100
                yield b"\r\n--XyZ--\r\n"
            streamed = client.post("/api/uploads", content=chunks(),
                                   headers={"content-type": "multipart/form-data; boundary=XyZ"})
            assert streamed.status_code == 413
            small = tmp_path / "small.csv"
            small.write_text(f"phone\n{phone(1)}\n")
            assert upload(client, small).status_code == 201
        leftovers = list((home / "uploads").iterdir())
        assert leftovers == [] and oct((home / "uploads").stat().st_mode & 0o777) == "0o700"
    finally:
        stop_service(served)


# -- starting runs ---------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("worker")
def test_run_from_an_upload_is_idempotent(api: httpx.Client, sandbox_url: str, tmp_path: Path):
    path = tmp_path / "list.csv"
    path.write_text("name,phone\n" + "".join(f"P{i},{phone(100 + i)}\n" for i in range(5)))
    upload_id = upload(api, path).json()["upload"]
    run = new_id()
    first = post_run(api, sandbox_url, upload=upload_id, run_id=run)
    assert first.status_code == 201, first.text
    assert first.json()["run"] == run and first.json()["state"]
    again = post_run(api, sandbox_url, upload=upload_id, run_id=run)
    assert again.status_code == 200 and again.json()["run"] == run
    assert [r["run"] for r in api.get("/api/runs", params={"limit": 1000}).json()].count(run) == 1
    assert wait_finished(api, run)["counts"] == {"sent": 5}

    default = post_run(api, sandbox_url, upload=upload_id)  # without run_id: one run per upload
    assert default.status_code == 201 and default.json()["run"] == f"run_{upload_id}"
    assert post_run(api, sandbox_url, upload=upload_id).status_code == 200


@pytest.mark.usefixtures("worker")
def test_run_from_recipients_json(api: httpx.Client, sandbox_url: str):
    recipients = [{"phone": phone(200 + i), "name": f"R{i}"} for i in range(3)] + [{"phone": "nope"}]
    answer = post_run(api, sandbox_url, recipients=recipients, run_id=new_id())
    assert answer.status_code == 201, answer.text
    status = wait_finished(api, answer.json()["run"])
    assert status["counts"] == {"sent": 3, "invalid": 1} and status["total"] == 4


def test_run_requests_that_are_refused(api: httpx.Client, sandbox_url: str, tmp_path: Path):
    one = [{"phone": phone(300)}]
    assert post_run(api, sandbox_url, recipients=one, directory="dir_99999").status_code == 422
    unknown_upload = post_run(api, sandbox_url, upload="up_0000000000000000")
    assert unknown_upload.status_code == 404
    both = post_run(api, sandbox_url, recipients=one, upload="up_x")
    assert both.status_code == 400
    extra = post_run(api, sandbox_url, recipients=one, colour="blue")
    assert extra.status_code == 422 and "colour" in extra.json()["error"]
    bad_id = post_run(api, sandbox_url, recipients=one, run_id="no spaces!")
    assert bad_id.status_code == 400
    not_json = api.post("/api/runs", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"].endswith(".")


@pytest.mark.usefixtures("worker")
def test_a_forgotten_run_id_is_409(api: httpx.Client, sandbox_url: str, redis_server: str):
    run = finished_run(api, sandbox_url, [{"phone": phone(310)}])
    Runs(connect(redis_server)).forget(run)
    answer = post_run(api, sandbox_url, recipients=[{"phone": phone(310)}], run_id=run)
    assert answer.status_code == 409 and "forgotten" in answer.json()["error"]


def test_an_api_url_that_is_not_allowed_is_422_and_the_secret_never_leaves(service_env: dict[str, str],
                                                                          api: httpx.Client):
    receiver = Receiver()
    served = start_service({**service_env, "COUPONTOOLS_CLIENT_ID": "client-1",
                            "COUPONTOOLS_CLIENT_SECRET": SECRET})
    try:
        body = {"channel": "sms", "directory": "dir_12345", "recipients": [{"phone": phone(400)}],
                "api_url": receiver.url}
        for client in (api, served.client()):
            answer = client.post("/api/runs", json=body)
            assert answer.status_code == 422
            assert "not allowed" in answer.json()["error"] and SECRET not in answer.text
        assert receiver.requests == []  # not even the directory check reached it
    finally:
        stop_service(served)
        receiver.close()
    assert SECRET not in "".join(served.output)


# -- reading runs -------------------------------------------------------------------------------------------------
def test_status_and_list(api: httpx.Client, sandbox_url: str):
    runs = [post_run(api, sandbox_url, recipients=[{"phone": phone(500 + i)}], run_id=new_id()).json()["run"]
            for i in range(2)]
    listed = api.get("/api/runs", params={"limit": 2}).json()
    assert [r["run"] for r in listed] == runs[::-1]
    assert set(listed[0]) >= {"run", "state", "counts", "total", "done"}
    assert api.get(f"/api/runs/{runs[0]}").json()["run"] == runs[0]
    assert api.get("/api/runs/run_never_was").status_code == 404
    assert api.get("/api/runs/bad%20id").status_code == 400
    assert api.get("/api/runs", params={"limit": 0}).status_code == 400


@pytest.mark.usefixtures("worker")
def test_reports_stream_filtered_and_spreadsheet_safe(api: httpx.Client, scenario_url: str):
    # a blacklisted number is suppressed afterwards: each test blacklists a number of its own
    recipients = [{"phone": phone(600)}, {"phone": phone(1605)}, {"phone": "=1+2"}, {"phone": phone(601)}]
    run = finished_run(api, scenario_url, recipients)
    answer = api.get(f"/api/runs/{run}/report", params={"format": "csv"})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == f'attachment; filename="{run}.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["status"] for r in rows] == ["sent", "blacklisted", "invalid", "sent"]
    assert rows[2]["recipient"] == "'=1+2" and rows[1]["error_code"] == "605"

    blacklisted = api.get(f"/api/runs/{run}/report", params={"format": "json", "status": "blacklisted"})
    assert blacklisted.headers["content-disposition"] == f'attachment; filename="{run}.json"'
    assert [(r["row"], r["recipient"], r["error_code"]) for r in blacklisted.json()] == \
        [(2, phone(1605), 605)]
    invalid = api.get(f"/api/runs/{run}/report", params={"format": "csv", "status": "invalid"}).text
    assert invalid.splitlines()[1].startswith("3,'=1+2,invalid")
    bad = api.get(f"/api/runs/{run}/report", params={"status": "lost"})
    assert bad.status_code == 400 and "'lost'" in bad.json()["error"]
    assert api.get(f"/api/runs/{run}/report", params={"format": "xls"}).status_code == 400
    assert api.get("/api/runs/run_never_was/report").status_code == 404


@pytest.mark.usefixtures("worker")
def test_recipients_pages_filter_and_search(api: httpx.Client, scenario_url: str):
    recipients = [{"phone": phone(700 + i)} for i in range(11)] + [{"phone": phone(2605)}]
    run = finished_run(api, scenario_url, recipients)
    first = api.get(f"/api/runs/{run}/recipients", params={"limit": 5}).json()
    assert [r["row"] for r in first["rows"]] == [1, 2, 3, 4, 5] and first["next"] == 6 and first["total"] == 12
    second = api.get(f"/api/runs/{run}/recipients", params={"limit": 5, "start": first["next"]}).json()
    assert [r["row"] for r in second["rows"]] == [6, 7, 8, 9, 10]
    last = api.get(f"/api/runs/{run}/recipients", params={"limit": 5, "start": 11}).json()
    assert [r["row"] for r in last["rows"]] == [11, 12] and last["next"] is None
    blacklisted = api.get(f"/api/runs/{run}/recipients", params={"status": "blacklisted"}).json()
    assert [r["row"] for r in blacklisted["rows"]] == [12] and blacklisted["rows"][0]["error_code"] == 605
    found = api.get(f"/api/runs/{run}/recipients", params={"q": phone(703)[-6:]}).json()
    assert [r["recipient"] for r in found["rows"]] == [phone(703)]
    assert api.get(f"/api/runs/{run}/recipients", params={"status": "nope"}).status_code == 400
    assert api.get(f"/api/runs/{run}/recipients", params={"limit": 10_000}).status_code == 400


# -- live progress and control ------------------------------------------------------------------------------------
def read_events(api: httpx.Client, run: str, timeout: float = 30) -> list[tuple[str, dict]]:
    """Every server-sent event of the run's stream, until `done`."""
    events: list[tuple[str, dict]] = []
    name = ""
    with api.stream("GET", f"/api/runs/{run}/events", timeout=timeout) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                if name == "done":
                    break
    return events


@pytest.mark.usefixtures("worker")
def test_events_stream_progress_until_done(api: httpx.Client, sandbox_url: str):
    recipients = [{"phone": phone(800 + i)} for i in range(8)]
    answer = post_run(api, sandbox_url, recipients=recipients, run_id=new_id(), rate=5)  # about 1.6 s
    run = answer.json()["run"]
    events = read_events(api, run)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"} and len(names) >= 3
    assert events[-1][1]["state"] == "completed" and events[-1][1]["counts"] == {"sent": 8}
    assert all(data["run"] == run for _, data in events)
    assert [name for name, _ in read_events(api, run)] == ["done"]  # a finished run: done at once
    assert api.get("/api/runs/run_never_was/events").status_code == 404


def test_events_stop_when_the_client_leaves(api: httpx.Client, sandbox_url: str):
    recipients = [{"phone": phone(850 + i)} for i in range(20)]
    run = post_run(api, sandbox_url, recipients=recipients, run_id=new_id(), rate=1).json()["run"]
    api.post(f"/api/runs/{run}/pause")
    for _ in range(3):  # a stream left early must not keep the service from answering
        with api.stream("GET", f"/api/runs/{run}/events") as stream:
            assert next(stream.iter_lines()).startswith("event: progress")
    assert api.get(f"/api/runs/{run}").json()["state"] == "paused"
    api.post(f"/api/runs/{run}/cancel")


@pytest.mark.usefixtures("worker")
def test_pause_resume_cancel_retry(api: httpx.Client, sandbox_url: str):
    recipients = [{"phone": phone(900 + i)} for i in range(40)]
    run = post_run(api, sandbox_url, recipients=recipients, run_id=new_id(), rate=2).json()["run"]
    paused = api.post(f"/api/runs/{run}/pause")
    assert paused.status_code == 200 and paused.json() == {"run": run, "changed": True, "state": "paused"}
    assert api.post(f"/api/runs/{run}/pause").json()["changed"] is False
    assert api.post(f"/api/runs/{run}/resume").json() == {"run": run, "changed": True, "state": "running"}
    cancelled = api.post(f"/api/runs/{run}/cancel").json()
    assert cancelled == {"run": run, "changed": True, "state": "cancelled"}

    done = finished_run(api, sandbox_url, [{"phone": phone(950)}])
    retried = api.post(f"/api/runs/{done}/retry", json={"include_uncertain": True})
    assert retried.status_code == 200 and retried.json() == {"run": done, "changed": False, "state": "completed"}
    assert api.post(f"/api/runs/{done}/retry").json()["changed"] is False  # the body is optional
    assert api.post(f"/api/runs/{done}/retry", json={"include_uncertain": "yes"}).status_code == 400
    assert api.post(f"/api/runs/{done}/explode").status_code == 404
    assert api.post("/api/runs/run_never_was/pause").status_code == 404


def test_runs_take_the_message_options(api: httpx.Client, sandbox_url: str):
    """Templates, schedules, windows and segment limits over HTTP, as at the CLI (messages.md)."""
    unknown = post_run(api, sandbox_url, recipients=[{"phone": phone(300), "name": "A"}], body="Hi {frist}")
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "The message uses {frist}, which no column provides; the columns are: phone, name."
    bad_window = post_run(api, sandbox_url, recipients=[{"phone": phone(301), "name": "A"}], window="9-5")
    assert bad_window.status_code == 422 and "09:00-20:00" in bad_window.json()["error"]
    later = post_run(api, sandbox_url, recipients=[{"phone": phone(302), "name": "A"}], run_id=new_id(),
                     send_at="2999-01-01T09:00:00Z", window="09:00-20:00", timezone="Europe/London",
                     max_segments=1)
    assert later.status_code == 201, later.text
    assert later.json()["state"] == "scheduled" and later.json()["counts"] == {"waiting": 1}
    assert later.json()["send_at"] == 32472176400.0
    assert api.post(f"/api/runs/{later.json()['run']}/cancel").json()["changed"] is True
