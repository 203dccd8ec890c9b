"""`dispatch serve`: run the service with uvicorn and print the URL to open once it listens."""
from __future__ import annotations

import asyncio
import sys

import click
import uvicorn

from worker.errors import UsageError
from worker.runs import Publisher
from worker.service.app import create_app
from worker.service.auth import api_token
from worker.settings import Settings


def login_url(host: str, port: int, token: str, generated: bool) -> str:
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    base = f"http://{shown}:{port}/"
    return f"{base}?token={token}" if generated else f"{base} (log in with ?token=DISPATCH_API_TOKEN)"


def serve(settings: Settings, publish: Publisher, host: str, port: int, sandbox_url: str | None = None) -> None:
    """Serve until interrupted; the login URL goes to stdout when the socket is ready. With a
    `sandbox_url`, runs started from the pages and the API go to that sandbox by default."""
    token, generated = api_token(settings)
    app = create_app(settings, publish, token)
    app.state.sandbox_url = sandbox_url
    app.state.service.dispatch.runs.redis.ping()  # the embedded Redis starts now, or a clear error
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, lifespan="off")
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            click.echo(f"Dispatch service ready: {login_url(host, port, token, generated)}")
            sys.stdout.flush()
        await task

    asyncio.run(run())
    if not server.started:
        raise UsageError(f"Cannot listen on {host}:{port} (is another program using that port?).")
