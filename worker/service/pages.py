"""The server-rendered pages (runs list and upload, check page, run page): every action goes through
`Dispatch`, so the pages hold no rule of their own; they work without JavaScript."""
from __future__ import annotations

import time
from collections import Counter
from itertools import islice
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from worker import reports
from worker.campaigns import FINISHED_STATES, Campaign
from worker.catalogue import CATALOGUE
from worker.errors import DispatchError, UsageError
from worker.service.app import HTTPProblem, Service, service
from worker.service.receive import check_upload, receive_upload
from worker.statuses import Status

router = APIRouter(include_in_schema=False)

PAGE_ROWS = 50
PAGE_SCAN = 50_000  # rows a filtered page looks through before it offers "next page" (about 0.25 s)
RUNS_SHOWN = 50
ERROR_SCAN = 20_000  # rows read to count error codes on the run page (a bounded scan, said on the page)
ACTIONS = ("pause", "resume", "cancel", "retry")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
FAILED = (Status.FAILED, Status.BLACKLISTED, Status.ABORTED, Status.CANCELLED)  # tried or meant, not sent
SAMPLE_URL = "https://cpn.to/dir_12345"  # stands for the directory URL Coupontools appends to an SMS
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
STATUS_NAMES = [s.value for s in Status]


# -- helpers ------------------------------------------------------------------------------------
def sandbox_url(request: Request) -> str | None:
    return getattr(request.app.state, "sandbox_url", None)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page with what every template needs: the CSRF value and whether this is the sandbox."""
    svc = service(request)
    base = {"csrf": svc.guard.csrf_value, "sandbox": bool(sandbox_url(request)), "statuses": STATUS_NAMES}
    response = svc.templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def check_csrf(request: Request, submitted: str | None) -> None:
    if not service(request).guard.csrf_ok(submitted):
        raise HTTPProblem(403, "This form has expired or did not come from this page; reload the page and "
                               "try again.")


def progress(summary: dict) -> dict:
    """What the list and the run page show of a status summary: percent done, sent, failed."""
    counts, total = summary.get("counts", {}), summary.get("total") or 0
    final = summary.get("final", 0)
    percent = 100 if summary.get("done") else (int(final * 100 / total) if total else 0)
    return {"percent": min(percent, 100), "sent": counts.get(Status.SENT, 0),
            "failed": sum(counts.get(s, 0) for s in FAILED), "final": final, "total": total,
            "created": _when(summary.get("created_at")), "finished": _when(summary.get("finished_at"))}


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp)) if timestamp else ""


def bars(counts: dict[str, int], total: int) -> list[dict]:
    """Chart rows: every status (zero ones hidden, so the live update can show them) with its width."""
    scale = max(total, 1)
    return [{"key": s, "label": s.replace("_", " "), "n": counts.get(s, 0),
             "width": round(counts.get(s, 0) * 100 / scale, 2)} for s in STATUS_NAMES]


def error_codes(svc: Service, run_id: str, total: int) -> dict:
    """Counts by error code over at most ERROR_SCAN rows (a generator: rows are never all held). Each
    code is explained by the catalogue, not by a row's message, which may name a recipient."""
    found: Counter[int] = Counter(row.error_code for row in islice(svc.dispatch.report(run_id), ERROR_SCAN)
                                  if row.error_code)
    biggest = max(found.values(), default=1)
    rows = [{"code": code, "n": n, "message": meaning(code), "width": round(n * 100 / biggest, 2)}
            for code, n in found.most_common()]
    return {"rows": rows, "scanned": min(total, ERROR_SCAN), "partial": total > ERROR_SCAN}


def meaning(code: int) -> str:
    info = CATALOGUE.get(code)
    return info.meaning if info else ("HTTP status" if 100 <= code <= 599 else "not in the catalogue")


def controls(state: str | None, summary: dict) -> list[str]:
    """The buttons that make sense in this state."""
    if state in ("queuing", "running"):
        return ["pause", "cancel"]
    if state == "paused":
        return ["resume", "cancel"]
    retryable = (Status.FAILED, Status.UNCERTAIN, Status.ABORTED)  # what Runs.retry requeues
    if state in FINISHED_STATES and any(summary.get("counts", {}).get(s) for s in retryable):
        return ["retry"]
    return []


def message_preview(summary: dict, body: str, subject: str) -> dict:
    """The message as the first recipient will see it (fields filled from that recipient)."""
    first = (summary.get("preview") or [{}])[0]
    fields = first.get("fields") or {}
    if summary.get("channel") == "email":
        return {"to": first.get("recipient", ""), "text": fill(subject, fields)}
    return {"to": first.get("recipient", ""), "text": (fill(body, fields) + " " + SAMPLE_URL).strip()}


def fill(template: str, fields: dict[str, str]) -> str:
    """`{field}` and `{field|fallback}` from one recipient's fields, for the preview only."""
    out, i = [], 0
    while i < len(template):
        end = template.find("}", i)
        if template[i] == "{" and end > i and "{" not in template[i + 1:end]:
            name, _, fallback = template[i + 1:end].partition("|")
            out.append(str(fields.get(name.strip(), "")) or fallback)
            i = end + 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


# -- / : runs and the upload form ----------------------------------------------------------------
@router.get("/")
async def home(request: Request) -> Response:
    return await home_page(request)


async def home_page(request: Request, error: str = "", status: int = 200, form: dict | None = None) -> Response:
    runs = await run_in_threadpool(service(request).dispatch.list_runs, RUNS_SHOWN)
    shown = [{**run, **progress(run)} for run in runs]
    return render(request, "index.html", {"runs": shown, "error": error, "form": form or {}}, status)


@router.post("/uploads")
async def upload(request: Request) -> Response:
    svc = service(request)
    try:
        with await receive_upload(request, svc.settings) as received:
            check_csrf(request, received.fields.get("csrf"))
            summary = await run_in_threadpool(check_upload, svc, received)
    except HTTPProblem as exc:
        if exc.status == 403:
            raise
        return await home_page(request, exc.message, exc.status)
    except UsageError as exc:
        return await home_page(request, str(exc), exc.http_status)
    return see_other(f"/uploads/{summary['upload']}")


# -- /uploads/{id}: the check page ---------------------------------------------------------------
@router.get("/uploads/{upload_id}")
async def check_page(request: Request, upload_id: str) -> Response:
    summary = await run_in_threadpool(service(request).dispatch.uploads.get, upload_id)
    return check_render(request, summary, {})


def check_render(request: Request, summary: dict, form: dict, error: str = "", status: int = 200) -> Response:
    preview = message_preview(summary, form.get("body", ""), form.get("subject", ""))
    return render(request, "check.html", {"u": summary, "form": form, "error": error, "preview": preview,
                                          "sample_url": SAMPLE_URL, "delimiter": DELIMITERS.get(
                                              summary.get("delimiter", ""), summary.get("delimiter", ""))}, status)


@router.post("/uploads/{upload_id}/send")
async def send(request: Request, upload_id: str) -> Response:
    svc = service(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    check_csrf(request, form.get("csrf"))
    summary = await run_in_threadpool(svc.dispatch.uploads.get, upload_id)
    try:
        campaign = campaign_from_form(request, summary, form)
        run_id = await run_in_threadpool(svc.dispatch.start_from_upload, campaign, upload_id)
    except UsageError as exc:
        return check_render(request, summary, form, str(exc), exc.http_status)
    return see_other(f"/runs/{run_id}")


def campaign_from_form(request: Request, summary: dict, form: dict[str, str]) -> Campaign:
    channel = summary["channel"]
    sandbox = sandbox_url(request)
    return Campaign(channel=channel, directory=form.get("directory", "").strip(),
                    body=form.get("body", "").strip() if channel == "sms" else "",
                    subject=form.get("subject", "").strip() if channel == "email" else "",
                    rate=rate_of(form.get("rate", "")), api_url=sandbox, sandbox=bool(sandbox))


def rate_of(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"The rate must be a number of messages per second, not {text[:20]!r}.") from None


# -- /runs/{id}: progress, chart, controls, recipients -------------------------------------------
@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str, status: str = "", q: str = "", start: str = "1") -> Response:
    return await run_render(request, run_id, status, q[:200], int(start) if start.isdigit() else 1)


async def run_render(request: Request, run_id: str, status: str = "", q: str = "", start: int = 1,
                     error: str = "", code: int = 200) -> Response:
    context = await run_in_threadpool(run_context, service(request), run_id, status, q, start)
    return render(request, "run.html", {**context, "error": error}, code)


def run_context(svc: Service, run_id: str, status: str, q: str, start: int) -> dict:
    summary = svc.dispatch.status(run_id)
    try:
        table = svc.dispatch.recipients(run_id, start=start, limit=PAGE_ROWS, status=status, query=q,
                                        max_scan=PAGE_SCAN)
        table_error = ""
    except UsageError as exc:
        table, table_error, status = reports.Page([], 1, None, summary["total"]), str(exc), ""
    return {"run": summary, "p": progress(summary), "bars": bars(summary["counts"], summary["total"]),
            "errors": error_codes(svc, run_id, summary["total"]), "controls": controls(summary["state"], summary),
            "table": table, "table_error": table_error, "status": status, "q": q, "start": max(1, start)}


@router.post("/runs/{run_id}/{action}")
async def control(request: Request, run_id: str, action: str) -> Response:
    form = await request.form()
    check_csrf(request, form.get("csrf") if isinstance(form.get("csrf"), str) else None)
    if action not in ACTIONS:
        raise HTTPProblem(404, f"There is no action {action[:20]!r}; use pause, resume, cancel or retry.")
    include_uncertain = form.get("include_uncertain") == "1"
    try:
        await run_in_threadpool(service(request).dispatch.control, run_id, action, include_uncertain)
    except DispatchError as exc:
        if getattr(exc, "http_status", 503) == 404:
            raise
        return await run_render(request, run_id, error=str(exc), code=exc.http_status)
    return see_other(f"/runs/{run_id}")
