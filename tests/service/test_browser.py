"""The pages in a real browser (Playwright, Debian's Chromium) against `dispatch serve --sandbox` and a
real worker: log in with the printed URL, upload, check, send, watch live progress, filter, download,
pause and resume; screenshots go to $DISPATCH_SCREENSHOTS (else the test's tmp_path)."""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import WorkerProcess
from tests.service.conftest import Served, start_service, stop_service

CHROMIUM = os.environ.get("DISPATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _unavailable(reason: str) -> None:
    """Skip the module with its reason, or fail it when CI says a browser must be there."""
    if os.environ.get("DISPATCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DISPATCH_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    _unavailable("playwright is not installed (pip install playwright)")
if not os.access(CHROMIUM, os.X_OK):
    _unavailable(f"no Chromium at {CHROMIUM} (install chromium or set DISPATCH_CHROMIUM)")

SCENARIO = {
    "directories": [{"id": "dir_12345", "name": "Summer coupons", "users": 250}],
    "rules": [{"channel": "sms", "match": {"suffix": "605"}, "steps": [{"error": 605}]}],
}
WAIT_MS = 30_000


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DISPATCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def sandboxed(service_env: dict[str, str], tmp_path_factory) -> Iterator[Served]:
    """`dispatch serve --sandbox` with a scenario (numbers ending 605 are blacklisted) and one worker."""
    redis.Redis.from_url(service_env["REDIS_URL"]).flushall()
    scenario = tmp_path_factory.mktemp("scenario") / "scenario.json"
    scenario.write_text(json.dumps(SCENARIO))
    env = {k: v for k, v in service_env.items() if k != "DISPATCH_API_TOKEN"}  # generated and printed
    served = start_service(env, "--sandbox", "--sandbox-scenario", str(scenario))
    worker = WorkerProcess({**service_env, "COUPONTOOLS_CLIENT_ID": "sandbox",
                            "COUPONTOOLS_CLIENT_SECRET": "sandbox"})
    yield served
    worker.kill()
    stop_service(served)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, sandboxed: Served) -> Iterator[Page]:
    """A fresh browser context, logged in through the URL `dispatch serve` printed."""
    url = login_url(sandboxed)
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True,
                                  base_url=url.split("?")[0])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    expect(page.get_by_role("heading", name="Send to a list")).to_be_visible()
    yield page
    context.close()


def login_url(served: Served) -> str:
    """The login URL exactly as `dispatch serve` printed it (its token generated on first start)."""
    line = next(line for line in served.output if "ready" in line)
    url = re.search(r"https?://\S+", line).group(0)
    assert "token=" in url, line
    return url


def recipients_csv(folder: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    path = folder / name
    path.write_text("name,phone\n" + "".join(f"{n},{p}\n" for n, p in rows), encoding="utf-8")
    return path


def upload(page: Page, path: Path) -> None:
    page.goto("/")
    page.get_by_label("Recipient file").set_input_files(str(path))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.get_by_role("heading", name=re.compile("^Check"))).to_be_visible()


def screenshot(page: Page, folder: Path, name: str, full_page: bool = True) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.screenshot(path=str(folder / name), full_page=full_page)


# -- the tests ------------------------------------------------------------------------------------
def test_upload_check_send_watch_filter_download(page: Page, shots: Path, tmp_path: Path) -> None:
    people = [("Ann", "+447911000001"), ("Bob", "not a number"), ("Cy", "+44 7911 000001"),
              ("<script>alert(1)</script>", "+447911000002"), ("Di", "")]
    people += [(f"Guest {i}", f"+447911{i:03d}605") for i in range(1, 4)]
    people += [(f"Member {i}", f"+44791120{i:04d}") for i in range(1, 40)]
    upload(page, recipients_csv(tmp_path, "crm-export.csv", people))

    problems = page.locator("table.problems tbody tr")
    expect(problems).to_have_count(3)
    assert [problems.nth(i).locator("td").first.inner_text() for i in range(3)] == ["2", "3", "5"]
    expect(page.get_by_role("button", name="Send to 44 recipients")).to_be_visible()
    page.get_by_label("Directory or coupon ID").fill("dir_12345")
    page.get_by_label(re.compile("Text before the link")).fill("Hi {name|there}, your summer coupon:")
    expect(page.locator("#preview-text")).to_have_text(re.compile(r"^Hi Ann, your summer coupon: https://"))
    expect(page.get_by_role("note")).to_have_text("Sandbox: nothing is really sent")
    page.get_by_role("button", name="Preview the messages").click()  # the server renders them, with segments
    previews = page.locator("table.previews tbody tr")
    expect(previews).to_have_count(3)
    expect(previews.first).to_contain_text("Hi Ann, your summer coupon: https://")
    expect(previews.first.locator("td").last).to_have_text("1")
    screenshot(page, shots, "check-page.png")

    page.get_by_role("button", name="Send to 44 recipients").click()
    expect(page.get_by_role("heading", name=re.compile("^run_"))).to_be_visible()
    origin = page.evaluate("performance.timeOrigin")
    page.evaluate("window.__stillHere = true")
    expect(page.locator("#progress-text")).to_contain_text("100%", timeout=WAIT_MS)
    expect(page.locator("main[data-done=true]")).to_have_count(1)
    expect(page.locator("#state")).to_have_text("completed")
    expect(page.locator("#meta")).to_contain_text("finished")
    assert page.locator("#bar").evaluate("bar => bar.value") == 100
    expect(page.locator("table.recipients .badge.pending")).to_have_count(0)  # the table was refreshed
    assert page.evaluate("performance.timeOrigin") == origin and page.evaluate("window.__stillHere")
    expect(page.locator("#errors")).to_contain_text("605")
    screenshot(page, shots, "run-page.png", full_page=False)
    run_url = page.url

    page.get_by_label("Status", exact=True).select_option("blacklisted")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.recipients tbody tr")
    expect(rows).to_have_count(3)
    assert all(rows.nth(i).inner_text().split("\t")[1].endswith("605") for i in range(3))
    with page.expect_download() as download:
        page.locator("#download-filtered").click()
    with open(download.value.path(), newline="", encoding="utf-8") as handle:
        report = list(csv.DictReader(handle))
    assert [r["status"] for r in report] == ["blacklisted"] * 3
    assert all(r["recipient"].endswith("605") and r["error_code"] == "605" for r in report)

    page.get_by_role("link", name="Coupontools dispatch").click()
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    screenshot(page, shots, "runs-list.png")
    page.set_viewport_size({"width": 375, "height": 812})
    for path, name in (("/", "runs-list-375.png"), (run_url, "run-page-375.png")):
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, f"{path} is wider than 375 px"
        screenshot(page, shots, name)


def test_pause_and_resume_from_the_page(page: Page, tmp_path: Path) -> None:
    people = [(f"Slow {i}", f"+44791121{i:04d}") for i in range(1, 25)]
    upload(page, recipients_csv(tmp_path, "slow.csv", people))
    page.get_by_label("Directory or coupon ID").fill("dir_12345")
    page.get_by_label(re.compile("^Rate")).fill("4")
    page.get_by_role("button", name="Send to 24 recipients").click()
    sent = page.locator('[data-sum="sent"]')
    expect(sent).not_to_have_text("0")  # it is sending, a few a second

    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#state")).to_have_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert "100%" not in page.locator("#progress-text").inner_text()

    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#state")).to_have_text(re.compile("running|completed"))
    expect(page.locator("#progress-text")).to_contain_text("100%", timeout=WAIT_MS)
    expect(page.locator("#state")).to_have_text("completed")
    expect(sent).to_have_text("24")


def test_runs_list_follows_an_open_run_without_reloading(page: Page, tmp_path: Path) -> None:
    people = [(f"Listed {i}", f"+44791122{i:04d}") for i in range(1, 13)]
    upload(page, recipients_csv(tmp_path, "listed.csv", people))
    page.get_by_label("Directory or coupon ID").fill("dir_12345")
    page.get_by_label(re.compile("^Rate")).fill("4")
    page.get_by_role("button", name="Send to 12 recipients").click()
    run_id = page.locator("h1").inner_text().split()[0]
    page.goto("/")
    row = page.locator("table.runs tbody tr", has=page.locator(f'a[href="/runs/{run_id}"]'))
    expect(row.locator(".badge")).to_have_text(re.compile("queuing|running"))
    page.evaluate("window.__notReloaded = true")
    expect(row.locator(".badge")).to_have_text("completed", timeout=WAIT_MS)
    expect(row.locator("progress")).to_have_attribute("value", "100")
    assert page.evaluate("window.__notReloaded === true"), "the runs list reloaded the page"
