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
from worker.messages import field_values, sms_length
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
            "created": _when(summary.get("created_at")), "finished": _when(summary.get("finished_at")),
            "starts": _when(summary.get("send_at"))}


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
    if state in ("queuing", "running", "scheduled"):
        return ["pause", "cancel"]
    if state == "paused":
        return ["resume", "cancel"]
    retryable = (Status.FAILED, Status.UNCERTAIN, Status.ABORTED)  # what Runs.retry requeues
    if state in FINISHED_STATES and any(summary.get("counts", {}).get(s) for s in retryable):
        return ["retry"]
    return []


def message_preview(svc: Service, summary: dict, form: dict) -> dict:
    """The messages of the first recipients as they will get them (the run's own template rules), with
    their SMS length; or the sentence saying why the message cannot be used."""
    channel = summary.get("channel")
    campaign = Campaign(channel=channel, directory="", body=form.get("body", ""), subject=form.get("subject", ""))
    try:
        stats = svc.dispatch.message_stats(campaign, summary.get("fields") or [], summary.get("column", ""))
    except UsageError as exc:
        return {"error": str(exc), "rows": [], "to": "", "text": "", "fields": {}}
    rows = [preview_row(svc, stats, item, channel) for item in summary.get("preview") or []]
    first = rows[0] if rows else {"to": "", "text": "", "fields": {}}
    return {"error": "", "rows": rows, "to": first["to"], "text": first["text"], "fields": first["fields"]}


def preview_row(svc: Service, stats, item: dict, channel: str) -> dict:
    """One recipient's message: text (with the sample link for SMS), segments and encoding."""
    fields = field_values(item.get("fields") or {})
    row = {"row": item["row"], "to": item["recipient"], "fields": fields, "segments": 0, "encoding": ""}
    if stats is None and channel == "sms":
        length = sms_length("", svc.settings.sms_url_length)
        return {**row, "text": SAMPLE_URL, "segments": length.segments, "encoding": length.encoding}
    if stats is None:
        return {**row, "text": ""}
    values = stats.plan.values(item["recipient"], item.get("fields") or {})
    missing = stats.plan.template.missing(values)
    if missing:
        return {**row, "text": f"(no value for {missing}: this row would end invalid)"}
    text = stats.plan.template.render(values)
    if channel != "sms":
        return {**row, "text": text}
    length = sms_length(text, svc.settings.sms_url_length)
    return {**row, "text": f"{text} {SAMPLE_URL}".strip(), "segments": length.segments, "encoding": length.encoding}


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
    preview = message_preview(service(request), summary, form)
    return render(request, "check.html", {"u": summary, "form": form, "error": error, "preview": preview,
                                          "sample_url": SAMPLE_URL, "delimiter": DELIMITERS.get(
                                              summary.get("delimiter", ""), summary.get("delimiter", ""))}, status)


@router.post("/uploads/{upload_id}/send")
async def send(request: Request, upload_id: str) -> Response:
    svc = service(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    check_csrf(request, form.get("csrf"))
    summary = await run_in_threadpool(svc.dispatch.uploads.get, upload_id)
    if form.get("action") == "preview":
        return check_render(request, summary, form)
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
                    rate=rate_of(form.get("rate", "")), api_url=sandbox, sandbox=bool(sandbox),
                    send_at=form.get("send_at", "").strip() or None, window=form.get("window", "").strip(),
                    timezone=form.get("timezone", "").strip(),
                    max_segments=segments_of(form.get("max_segments", "")) if channel == "sms" else None)


def segments_of(text: str) -> int | None:
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise UsageError(f"The segment limit must be a whole number, not {text[:20]!r}.")
    return int(text)


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
