"""The JSON API of `dispatch serve` (docs: shared/spec/http.md): thin HTTP over `Dispatch`, which holds
every rule; Redis work runs in the threadpool so the event loop only moves bytes."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields as dataclass_fields
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from worker import metrics, reports
from worker.campaigns import FINISHED_STATES, Campaign
from worker.ingest import rejects_rows
from worker.runs import check_run_id
from worker.service.app import HTTPProblem, Service
from worker.service.receive import check_upload, receive_upload

log = structlog.get_logger("dispatch.service.api")

router = APIRouter(prefix="/api")
metrics_router = APIRouter()

UPLOAD_FIELDS = ("upload", "rows", "valid", "invalid", "duplicates", "suppressed", "column", "columns", "encoding",
                 "delimiter", "fields", "problems", "channel", "region", "filename", "expires_at")
ACTIONS = ("pause", "resume", "cancel", "retry")
EVENT_EVERY = 0.5  # seconds between progress events (the spec asks for at least one a second)
MAX_JSON_BYTES = 512 * 1024 * 1024  # a POST /api/runs body; recipients are also capped at max_rows
PAGE_LIMIT = 500


def service(request: Request) -> Service:
    return request.app.state.service


# -- small request helpers -------------------------------------------------------------------------
def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high], or 400 naming it."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise HTTPProblem(400, f"The parameter {name} must be a whole number from {low} to {high}.")
    return value


def run_param(run: str) -> str:
    """The run ID from the path, checked (400 when it cannot be a run ID)."""
    return check_run_id(run)


async def json_body(request: Request, limit: int = MAX_JSON_BYTES) -> Any:
    """The request's JSON (read with a size cap), or 400; an empty body is None."""
    size, parts = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"The request body is larger than {limit // 1024**2} MB.")
        parts.append(chunk)
    raw = b"".join(parts)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPProblem(400, "The request body is not valid JSON.") from None


def first_problem(exc: ValidationError) -> str:
    """A pydantic validation error as one sentence."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "the body"
    if error.get("type") == "extra_forbidden":
        return f"The field {where} is not known."
    if error.get("type") == "missing":
        return f"The field {where} is required."
    return f"The field {where} is wrong: {error.get('msg', 'invalid value').rstrip('.')}."


# -- uploads ------------------------------------------------------------------------------------------
@router.post("/uploads", status_code=201)
async def create_upload(request: Request) -> JSONResponse:
    """Stream a recipient file in, validate it as the CLI does and keep it for 24 hours."""
    svc = service(request)
    with await receive_upload(request, svc.settings) as received:
        summary = await run_in_threadpool(check_upload, svc, received)
    return JSONResponse({k: summary.get(k) for k in UPLOAD_FIELDS}, status_code=201)


@router.get("/uploads/{upload_id}")
def upload_summary(request: Request, upload_id: str) -> JSONResponse:
    """A checked upload's summary (as POST /api/uploads answered it), while it is kept."""
    summary = service(request).dispatch.uploads.get(upload_id)
    return JSONResponse({k: summary.get(k) for k in UPLOAD_FIELDS})


@router.get("/uploads/{upload_id}/rejects")
def upload_rejects(request: Request, upload_id: str) -> StreamingResponse:
    """The rows of an upload that will not be sent: every original column plus the reason, as CSV
    ready to fix in the CRM and upload again (the same file as `validate --rejects`)."""
    dispatch = service(request).dispatch
    summary = dispatch.uploads.get(upload_id)  # 404 before the first byte
    rows = rejects_rows(dispatch.uploads.verdicts(upload_id), summary.get("fields") or [])
    return StreamingResponse(_csv_lines(rows), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{upload_id}-rejects.csv"'})


def _csv_lines(rows) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for i, row in enumerate(rows, 1):
        writer.writerow(row)
        if i % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# -- starting runs --------------------------------------------------------------------------------------
CAMPAIGN_FIELDS = {f.name for f in dataclass_fields(Campaign)}


class RunRequest(BaseModel):
    """The body of POST /api/runs: an upload ID or a list of recipients, and the campaign."""

    model_config = ConfigDict(extra="forbid")

    upload: str | None = None
    recipients: list[dict[str, Any]] | None = None
    channel: str | None = None
    directory: str
    body: str = ""
    subject: str = ""
    region: str | None = None
    rate: float | None = None
    run_id: str | None = None
    webhook_url: str = ""
    api_url: str | None = None
    sandbox: bool = False
    send_at: str | float | None = None
    window: str = ""
    timezone: str = ""
    max_segments: int | None = None
    phone_columns: list[str] = []
    email_columns: list[str] = []
    allow_landlines: bool = False
    allow_smtputf8: bool = False

    def campaign(self, channel: str) -> Campaign:
        """The request's campaign fields as worker.campaigns.Campaign (empty texts meaning none)."""
        chosen = self.model_dump(include=CAMPAIGN_FIELDS)
        return Campaign(**{**chosen, "channel": channel, "region": self.region or None, "api_url": self.api_url or None,
                           "phone_columns": tuple(self.phone_columns), "email_columns": tuple(self.email_columns)})


def parse_run_request(body: Any, max_rows: int) -> RunRequest:
    if not isinstance(body, dict):
        raise HTTPProblem(400, "Send a JSON object with upload or recipients, channel and directory.")
    try:
        req = RunRequest.model_validate(body)
    except ValidationError as exc:
        raise HTTPProblem(422, first_problem(exc)) from None
    if (req.upload is None) == (req.recipients is None):
        raise HTTPProblem(400, "Send either upload (an upload ID) or recipients (a list), not both or neither.")
    if req.recipients is not None and not req.channel:
        raise HTTPProblem(400, "The field channel is required with recipients (sms or email).")
    if req.recipients is not None and len(req.recipients) > max_rows:
        raise HTTPProblem(413, f"The list has more than {max_rows} recipients (DISPATCH_MAX_ROWS).")
    if req.run_id:
        check_run_id(req.run_id)
    return req


def start_run(svc: Service, req: RunRequest, sandbox_url: str | None = None) -> tuple[dict, int]:
    """Start the run (blocking); its summary and 201, or the existing run's and 200. Under
    `serve --sandbox`, a run that names no API URL goes to that sandbox."""
    dispatch = svc.dispatch
    run_id = req.run_id or (f"run_{req.upload}" if req.upload else None)
    if run_id and dispatch.exists(run_id) and dispatch.is_recorded(run_id):
        return dispatch.status(run_id), 200  # a run whose recording was cut short is carried on below
    if sandbox_url and not req.api_url:
        req = req.model_copy(update={"api_url": sandbox_url, "sandbox": True})
    if req.upload is not None:
        upload = dispatch.uploads.get(req.upload)
        if req.channel and req.channel != upload["channel"]:
            raise HTTPProblem(422, f"The upload was checked for {upload['channel']}, not {req.channel[:20]}.")
        run_id = dispatch.start_from_upload(req.campaign(upload["channel"]), req.upload, run_id=run_id)
    else:
        run_id = dispatch.start_from_records(req.campaign(req.channel), req.recipients, run_id=run_id,
                                             source="api")
    summary = dispatch.status(run_id)
    log.info("run started", run=run_id, channel=summary["channel"], rows=summary["total"], source="api")
    return summary, 201


@router.post("/runs", status_code=201)
async def create_run(request: Request) -> JSONResponse:
    svc = service(request)
    req = parse_run_request(await json_body(request), svc.settings.max_rows)
    summary, status = await run_in_threadpool(start_run, svc, req, getattr(request.app.state, "sandbox_url", None))
    return JSONResponse(summary, status_code=status)


# -- reading runs ---------------------------------------------------------------------------------------
@router.get("/runs")
def list_runs(request: Request) -> JSONResponse:
    """The newest runs first, each the status summary (as `dispatch runs --json`)."""
    limit = int_param(request, "limit", 20, 1, 1000)
    return JSONResponse(service(request).dispatch.list_runs(limit))


@router.get("/runs/{run}")
def run_status(request: Request, run: str) -> JSONResponse:
    return JSONResponse(service(request).dispatch.status(run_param(run)))


@router.get("/runs/{run}/report")
def run_report(request: Request, run: str) -> StreamingResponse:
    """The per-row report as `dispatch report` writes it, streamed (rows read in the threadpool)."""
    run = run_param(run)
    kind = request.query_params.get("format", "csv")
    if kind not in ("csv", "json"):
        raise HTTPProblem(400, "The format must be csv or json.")
    status = reports.check_status(request.query_params.get("status"))
    dispatch = service(request).dispatch
    dispatch.runs.meta(run)  # 404 before the first byte
    rows = dispatch.report(run, status)
    chunks = reports.csv_chunks(rows) if kind == "csv" else _batched(reports.json_chunks(rows))
    media = "text/csv; charset=utf-8" if kind == "csv" else "application/json"
    headers = {"Content-Disposition": f'attachment; filename="{run}.{kind}"', "Cache-Control": "no-store"}
    return StreamingResponse(chunks, media_type=media, headers=headers)


def _batched(pieces, size: int = 64 * 1024):
    """Join small string pieces into writes of about `size` characters."""
    buffer: list[str] = []
    held = 0
    for piece in pieces:
        buffer.append(piece)
        held += len(piece)
        if held >= size:
            yield "".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield "".join(buffer)


@router.get("/runs/{run}/recipients")
def run_recipients(request: Request, run: str) -> JSONResponse:
    """One page of the recipients table: `rows`, where the `next` page starts (or null), `total`."""
    run = run_param(run)
    found = service(request).dispatch.recipients(run, start=int_param(request, "start", 1, 1, 10**9),
                                                 limit=int_param(request, "limit", 50, 1, PAGE_LIMIT),
                                                 status=request.query_params.get("status"),
                                                 query=request.query_params.get("q", "")[:200])
    return JSONResponse({"rows": [reports.row_dict(r) for r in found.rows], "next": found.next_row,
                         "total": found.total})


# -- live progress --------------------------------------------------------------------------------------
def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def is_closed(summary: dict) -> bool:
    """Completed, aborted or cancelled: no more progress to report (a retry reopens it)."""
    return summary.get("state") in FINISHED_STATES


@router.get("/runs/{run}/events")
async def run_events(request: Request, run: str) -> StreamingResponse:
    """Server-sent events: `progress` with the status summary while the run is open, then `done`."""
    run = run_param(run)
    dispatch = service(request).dispatch
    first = await run_in_threadpool(dispatch.status, run)  # 404 before the stream opens
    return StreamingResponse(_progress(request, run, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _progress(request: Request, run: str, summary: dict) -> AsyncIterator[str]:
    dispatch = service(request).dispatch
    try:
        while not is_closed(summary):
            yield sse("progress", summary)
            if await _disconnected_within(request, EVENT_EVERY):
                return
            summary = await run_in_threadpool(dispatch.status, run)
        yield sse("done", summary)
    finally:  # also when Starlette cancels the stream because the client left
        log.debug("events stream closed", run=run, state=summary.get("state"))


async def _disconnected_within(request: Request, seconds: float) -> bool:
    """Wait `seconds`, returning early (True) when the client has gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return True
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return await request.is_disconnected()


# -- control ---------------------------------------------------------------------------------------------
@router.post("/runs/{run}/{action}")
async def control_run(request: Request, run: str, action: str) -> JSONResponse:
    """pause, resume, cancel or retry (`{"include_uncertain": bool}`): `{"run", "changed", "state"}`."""
    if action not in ACTIONS:
        raise HTTPProblem(404, f"There is no action {action[:40]!r}; use one of {', '.join(ACTIONS)}.")
    run = run_param(run)
    body = await json_body(request, limit=64 * 1024) if action == "retry" else None
    include_uncertain = _include_uncertain(body)
    answer = await run_in_threadpool(service(request).dispatch.control, run, action, include_uncertain)
    log.info("run controlled", run=run, action=action, changed=answer["changed"])
    return JSONResponse(answer)


def _include_uncertain(body: Any) -> bool:
    if body is None:
        return False
    if not isinstance(body, dict) or set(body) - {"include_uncertain"}:
        raise HTTPProblem(400, 'The retry body is {"include_uncertain": true|false}.')
    value = body.get("include_uncertain", False)
    if not isinstance(value, bool):
        raise HTTPProblem(400, "include_uncertain must be true or false.")
    return value


# -- metrics ---------------------------------------------------------------------------------------------
@metrics_router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    """The Prometheus text exposition, from the counters every worker keeps in Redis."""
    return Response(metrics.render(service(request).dispatch.runs.redis), media_type=metrics.CONTENT_TYPE)
