"""The service's ASGI application: authentication in front of everything but /healthz, errors as one
JSON sentence, and the JSON API (worker.service.api) and pages (worker.service.pages) behind it. It
keeps no state outside Redis, so any number of `serve` processes can run side by side."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from worker.campaigns import Dispatch
from worker.errors import DispatchError
from worker.redis_server import resolve_redis_url
from worker.runs import Publisher
from worker.service.auth import COOKIE, Guard
from worker.settings import Settings

HERE = Path(__file__).parent
PUBLIC_PATHS = ("/healthz", "/static/")


@dataclass
class Service:
    """What every request handler reaches through `request.app.state.service`."""

    settings: Settings
    dispatch: Dispatch
    guard: Guard
    templates: Jinja2Templates
    health_client: redis.Redis | None = None


class HTTPProblem(Exception):
    """An error answer: `{"error": message}` with `status` (pages render it as a page)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_app(settings: Settings, publish: Publisher, token: str) -> FastAPI:
    from worker.service import api, pages

    app = FastAPI(title="Coupontools dispatch", version="1", docs_url="/docs", redoc_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # .html templates are autoescaped
    app.state.service = Service(settings, Dispatch(settings, publish), Guard(token), templates)
    app.state.sandbox_url = None  # set by `serve --sandbox`: runs go to that sandbox by default
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.middleware("http")(_authenticate)
    app.middleware("http")(_security_headers)  # outermost: every answer gets them, 401s included
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(DispatchError, _dispatch_error)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.include_router(api.router)
    app.include_router(api.metrics_router)
    app.include_router(pages.router)
    return app


def service(request: Request) -> Service:
    return request.app.state.service


def _ping_redis(svc: Service) -> None:
    """One quick PING on a client of its own (short timeouts, no retries): health checks time out fast."""
    if svc.health_client is None:
        svc.health_client = redis.Redis.from_url(resolve_redis_url(svc.settings), socket_timeout=2,
                                                 socket_connect_timeout=1, retry=None)
    svc.health_client.ping()


async def healthz(request: Request) -> JSONResponse:
    try:
        await run_in_threadpool(_ping_redis, service(request))
    except (redis.RedisError, DispatchError, OSError):
        return JSONResponse({"status": "unavailable", "error": "Redis does not answer."}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _authenticate(request: Request, call_next) -> Response:
    """Bearer token for programs; `?token=` once, then a session cookie, for browsers."""
    path = request.url.path
    svc = service(request)
    if path.startswith(PUBLIC_PATHS) or (path == "/metrics" and svc.settings.metrics_public):
        return await call_next(request)
    guard = svc.guard
    if "token" in request.query_params and not path.startswith("/api/"):
        return _login(request, guard)
    if guard.has_bearer(request):
        return await call_next(request)
    safe = request.method in ("GET", "HEAD")
    if guard.has_session(request) and (safe or not path.startswith("/api/")):
        return await call_next(request)  # page forms check their CSRF token themselves
    if path.startswith("/api/") or path == "/metrics" or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": "A valid token is required (Authorization: Bearer TOKEN)."}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    return svc.templates.TemplateResponse(request, "login.html", {}, status_code=401)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a login URL's ?token= never leaks to another site
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Cache-Control": "no-store",
}
OPENAPI_PATHS = ("/docs", "/openapi.json")


async def _security_headers(request: Request, call_next) -> Response:
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        if name == "Content-Security-Policy" and request.url.path in OPENAPI_PATHS:
            continue  # Swagger UI loads its own scripts
        response.headers.setdefault(name, value)
    return response


def _login(request: Request, guard: Guard) -> Response:
    """Exchange `?token=` for the session cookie and redirect to the same page without it."""
    if not guard.is_token(request.query_params.get("token")):
        if "text/html" in request.headers.get("accept", ""):
            return service(request).templates.TemplateResponse(request, "login.html", {"wrong_token": True},
                                                               status_code=401)
        return JSONResponse({"error": "That token is not valid."}, status_code=401)
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, guard.session_value, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


def _problem(request: Request, exc: HTTPProblem) -> Response:
    return _error(request, exc.message, exc.status)


def _dispatch_error(request: Request, exc: DispatchError) -> Response:
    """The application layer's one-sentence errors, with the status that fits them."""
    return _error(request, str(exc), exc.http_status)


def _error(request: Request, message: str, status: int) -> Response:
    """`{"error": sentence}` for programs; the same sentence and status as a page for a browser."""
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=status)
    return service(request).templates.TemplateResponse(
        request, "error.html", {"message": message, "status": status,
                                "sandbox": bool(getattr(request.app.state, "sandbox_url", None))},
        status_code=status)
