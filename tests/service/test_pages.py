"""The server-rendered pages over a real `dispatch serve`, at the HTML level: login, CSRF, the upload →
check → send flow, the run page's table parameters and escaping of whatever the user supplied."""
from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import TOKEN, Served

HTML = {"Accept": "text/html,application/xhtml+xml"}
SCRIPT = "<script>alert(1)</script>"


def csv_upload(rows: list[tuple[str, str]]) -> bytes:
    return ("name,phone\n" + "".join(f"{n},{p}\n" for n, p in rows)).encode()


MESSY = csv_upload([("Ann", "+447911000001"), ("Bob", "not a number"), ("Cy", "+44 7911 000001"),
                    (SCRIPT, "+447911000002"), ("Di", ""), ("Eve", SCRIPT), ("Fay", "+447911000605")])


@pytest.fixture
def browser(service: Served, redis_url: str) -> Iterator[httpx.Client]:
    """A client that logged in like a browser: `?token=` once, then the session cookie."""
    with httpx.Client(base_url=service.url, headers=HTML, timeout=60) as client:
        assert client.get(f"/?token={TOKEN}").status_code == 303
        yield client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def upload(client: httpx.Client, body: bytes, csrf: str | None = None, **fields: str) -> httpx.Response:
    csrf = csrf if csrf is not None else csrf_of(client.get("/").text)
    return client.post("/uploads", data={"csrf": csrf, "channel": "sms"} | fields,
                       files={"file": ("list.csv", body, "text/csv")})


def send(client: httpx.Client, check_url: str, **fields: str) -> httpx.Response:
    csrf = csrf_of(client.get(check_url).text)
    return client.post(f"{check_url}/send", data={"csrf": csrf, **fields})


def started_run(client: httpx.Client, body: bytes) -> str:
    """Upload, check and send; the run page's path."""
    checked = upload(client, body)
    assert checked.status_code == 303, checked.text
    sent = send(client, checked.headers["location"], directory="cam_1")
    assert sent.status_code == 303, sent.text
    return sent.headers["location"]


# -- authentication ---------------------------------------------------------------------------------
def test_a_page_without_a_session_is_the_login_page(service: Served) -> None:
    answer = service.anonymous().get("/", headers=HTML)
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("text/html")
    assert "dispatch serve" in answer.text and "?token=" in answer.text


def test_the_token_in_the_url_becomes_a_session_cookie(service: Served) -> None:
    with service.anonymous() as client:
        answer = client.get(f"/runs/x?status=sent&token={TOKEN}", headers=HTML)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/runs/x?status=sent"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN not in cookie
        assert client.get("/", headers=HTML).status_code == 200  # the cookie alone is enough now


def test_a_wrong_token_is_refused(service: Served) -> None:
    answer = service.anonymous().get("/?token=not-the-token", headers=HTML)
    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert service.anonymous().get("/", headers=HTML).status_code == 401


# -- CSRF -------------------------------------------------------------------------------------------
def test_forms_without_the_csrf_token_are_refused(browser: httpx.Client) -> None:
    for csrf in ("", "0" * 64):
        answer = upload(browser, MESSY, csrf=csrf)
        assert answer.status_code == 403
        assert answer.headers["content-type"].startswith("text/html")
        assert "reload the page" in answer.text
    run = started_run(browser, MESSY)
    assert browser.post(f"{run}/pause", data={"csrf": "nope"}).status_code == 403
    checked = upload(browser, MESSY).headers["location"]
    assert browser.post(f"{checked}/send", data={"directory": "cam_1"}).status_code == 403


# -- upload, check, send ----------------------------------------------------------------------------
def test_the_check_page_lists_the_problems_with_row_numbers_and_escapes_them(browser: httpx.Client) -> None:
    answer = upload(browser, MESSY)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/uploads/up_")
    page = browser.get(answer.headers["location"])
    assert page.status_code == 200
    html = page.text
    assert "Send to 3 recipients" in html
    problems = re.search(r'<table class="problems">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r'<td class="num">(\d+)</td><td class="mono">(.*?)</td>', problems)
    assert [n for n, _ in rows] == ["2", "3", "5", "6"]
    assert ("6", "&lt;script&gt;alert(1)&lt;/script&gt;") in rows
    assert SCRIPT not in html


def test_an_unusable_file_is_refused_on_the_form_page(browser: httpx.Client) -> None:
    answer = upload(browser, b"name,city\nAnn,Leeds\n")
    assert answer.status_code == 422
    sentence = re.search(r'id="upload-error">(.*?)</p>', answer.text).group(1)
    assert sentence.endswith(".") and 'action="/uploads"' in answer.text


def test_the_preview_fills_fields_from_the_first_recipient_escaped(browser: httpx.Client) -> None:
    body = csv_upload([(SCRIPT, "+447911000010"), ("Bo", "+447911000011")])
    check = upload(browser, body).headers["location"]
    answer = send(browser, check, directory="nonsense", body="Hi {name|there}")
    assert answer.status_code == 400
    assert "is not a directory" in answer.text
    preview = re.search(r'<p id="preview-text"(.*?)</p>', answer.text, re.S).group(1)
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt; https://" in preview
    assert SCRIPT not in answer.text


def test_sending_opens_the_run_page(browser: httpx.Client) -> None:
    run = started_run(browser, MESSY)
    assert re.fullmatch(r"/runs/run_up_[0-9a-f]+", run)
    page = browser.get(run)
    assert page.status_code == 200
    assert 'data-events="/api/runs/' in page.text and 'aria-live="polite"' in page.text
    assert "/report?format=csv" in page.text and 'id="status-chart"' in page.text
    assert 'action="' + run + '/pause"' in page.text or 'action="' + run + '/cancel"' in page.text
    assert "Content-Security-Policy" in page.headers
    listed = browser.get("/").text
    assert f'href="{run}"' in listed


# -- the run page's table ---------------------------------------------------------------------------
def table_rows(html: str) -> list[tuple[str, str, str]]:
    body = re.search(r'<table class="recipients">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return re.findall(r'<tr><td class="num">(\d+)</td><td class="mono">(.*?)</td><td><span class="badge (\w+)"',
                      body)


def test_the_table_filters_searches_and_pages(browser: httpx.Client) -> None:
    people = [(f"P{i}", f"+447911{i:06d}") for i in range(1, 121)] + [("X", "nonsense")]
    run = started_run(browser, csv_upload(people))
    first = browser.get(run).text
    rows = table_rows(first)
    assert [int(r[0]) for r in rows] == list(range(1, 51))
    assert f'href="{run}?status=&amp;q=&amp;start=51"' in first
    second = browser.get(run, params={"start": "51"}).text
    assert [int(r[0]) for r in table_rows(second)] == list(range(51, 101))
    assert "First page" in second and "First page" not in first
    invalid = browser.get(run, params={"status": "invalid"}).text
    assert [(r[0], r[2]) for r in table_rows(invalid)] == [("121", "invalid")]
    assert '<option value="invalid" selected>' in invalid
    assert "report?format=csv&amp;status=invalid" in invalid
    found = browser.get(run, params={"q": "911000077"}).text
    assert [r[1] for r in table_rows(found)] == ["+447911000077"]
    wrong = browser.get(run, params={"status": "bogus"})
    assert wrong.status_code == 200 and "There is no status" in wrong.text


def test_a_recipient_named_script_is_text_on_the_run_page(browser: httpx.Client) -> None:
    run = started_run(browser, MESSY)
    html = browser.get(run, params={"status": "invalid"}).text
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_errors_are_pages_for_browsers_and_json_for_programs(browser: httpx.Client, service: Served) -> None:
    page = browser.get("/runs/run_nope")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "run_nope" in page.text and "Back to the runs" in page.text
    missing = browser.get("/uploads/up_0000")
    assert missing.status_code == 404 and "kept for 24 hours" in missing.text
    api = service.client().get("/api/runs/run_nope")
    assert api.status_code == 404 and "error" in api.json()


def test_an_email_list_asks_for_a_subject(browser: httpx.Client) -> None:
    answer = upload(browser, b"email,first name\nann@example.com,Ann\nnot-an-email,Bo\n", channel="email")
    assert answer.status_code == 303, answer.text
    html = browser.get(answer.headers["location"]).text
    assert 'name="subject"' in html and 'name="body"' not in html
    assert 'data-url=""' in html and "Send to 1 recipient<" in html


def test_preview_shows_the_first_messages_with_their_sms_segments(browser: httpx.Client) -> None:
    """The check page's Preview renders the first recipients' messages with the run's own template
    rules (fallbacks, normalised field names) and counts their SMS segments (UCS-2 marked)."""
    body = ("First Name,phone\nAnn,+447911000020\n,+447911000021\nЖанна,+447911000022\n").encode()
    check = upload(browser, body).headers["location"]
    answer = send(browser, check, action="preview", directory="dir_12345", body="Hi {first_name|there}:")
    assert answer.status_code == 200
    table = re.search(r'<table class="previews">(.*?)</table>', answer.text, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table, re.S)
    assert [c.strip() for c in cells[1::3]] == ["Hi Ann: https://cpn.to/dir_12345", "Hi there: https://cpn.to/dir_12345",
                                                "Hi Жанна: https://cpn.to/dir_12345"]
    assert cells[2].strip() == "1" and "UCS-2" in cells[8]
    assert "run_" not in answer.headers.get("location", "")  # a preview starts nothing


def test_an_unknown_field_is_refused_on_the_check_page(browser: httpx.Client) -> None:
    check = upload(browser, csv_upload([("Ann", "+447911000030")])).headers["location"]
    answer = send(browser, check, action="send", directory="dir_12345", body="Hi {frist_name}")
    assert answer.status_code == 422
    assert "The message uses {frist_name}, which no column provides; the columns are: name, phone." in answer.text


def test_the_send_form_takes_a_schedule_a_window_and_a_segment_limit(browser: httpx.Client) -> None:
    check = upload(browser, csv_upload([("Ann", "+447911000040")])).headers["location"]
    answer = send(browser, check, action="send", directory="dir_12345", body="Hi {name}",
                  send_at="2999-01-01T09:00:00+01:00", window="09:00-20:00", timezone="Europe/London",
                  max_segments="2")
    assert answer.status_code == 303, answer.text
    run = answer.headers["location"].rsplit("/", 1)[1]
    summary = browser.get(f"/api/runs/{run}").json()
    assert summary["state"] == "scheduled" and summary["counts"] == {"waiting": 1}
    assert browser.post(f"/runs/{run}/cancel", data={"csrf": csrf_of(browser.get("/").text)}).status_code == 303
    assert browser.get(f"/api/runs/{run}").json()["counts"] == {"cancelled": 1}


def test_the_check_page_offers_the_rejected_rows_to_fix_in_the_crm(browser: httpx.Client) -> None:
    """CRM exports: several phone columns fall back per row, a landline is refused for SMS, and the
    check page links the rejects CSV (every original column plus the reason)."""
    body = ("Name,Phone,Mobile\nAnn,,+447911000050\nBob,+447911000051,\nCy,0117 496 0860,\n").encode()
    check = upload(browser, body, region="GB").headers["location"]
    page = browser.get(check).text
    assert "a landline cannot receive SMS" in page
    link = re.search(r'href="(/api/uploads/up_[0-9a-f]+/rejects)"', page).group(1)
    rejects = browser.get(link)
    assert rejects.status_code == 200 and rejects.headers["content-type"].startswith("text/csv")
    assert rejects.text.splitlines() == ["Name,Phone,Mobile,reason", "Cy,0117 496 0860,,a landline cannot receive SMS"]
    landlines_ok = upload(browser, body, region="GB", allow_landlines="1").headers["location"]
    assert "a landline cannot receive SMS" not in browser.get(landlines_ok).text
