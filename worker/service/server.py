"""`dispatch serve`: run the service with uvicorn and print the URL to open once it listens."""
from __future__ import annotations

import asyncio
import socket
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
    sock = listening_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False,
                            server_header=False, lifespan="off")
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            click.echo(f"Dispatch service ready: {login_url(host, sock.getsockname()[1], token, generated)}")
            sys.stdout.flush()
        await task

    with sock:
        asyncio.run(run())


def listening_socket(host: str, port: int) -> socket.socket:
    """The service's socket, bound here so a taken port is one sentence (uvicorn would exit instead)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    sock.set_inheritable(True)
    return sock
