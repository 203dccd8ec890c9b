"""Commands of the service front doors: `serve` (HTTP API and pages) and `watch` (drop folder)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from worker.cli.common import App, pass_app
from worker.cli.sending import sandbox_for
from worker.cli.waiting import LocalWorker
from worker.errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--sandbox", is_flag=True, help="Start the built-in sandbox API; runs go there unless they name "
              "another API URL (nothing is really sent).")
@click.option("--sandbox-scenario", type=click.Path(dir_okay=False), help="Scenario file for --sandbox.")
@click.option("--local-worker/--no-local-worker", default=None,
              help="Run a local worker whenever no worker consumes (default: on with the embedded Redis, "
                   "off with REDIS_URL, where `dispatch worker` processes do the sending).")
@pass_app
def serve(app: App, host: str, port: int, sandbox: bool, sandbox_scenario: str | None,
          local_worker: bool | None) -> None:
    """Serve the HTTP API and pages (upload, check, send, watch, review); prints the URL to open."""
    try:
        from worker.service.server import serve as run_service
    except ImportError as exc:
        raise UsageError(f"The service needs its web packages ({exc.name}); reinstall coupontools-dispatch.") from None
    app.dispatch.runs  # noqa: B018  (the embedded Redis starts before the socket opens)
    wanted = app.settings.redis_url is None if local_worker is None else local_worker
    with sandbox_for(sandbox, sandbox_scenario, None) as sandbox_url, _standby_worker(app, wanted):
        run_service(app.settings, app.backend.publish, host, port, sandbox_url=sandbox_url)


@contextlib.contextmanager
def _standby_worker(app: App, wanted: bool, every: float = 1.0) -> Iterator[None]:
    """While the service runs, a local worker whenever nobody consumes (stopped warmly at the end)."""
    if not wanted:
        yield
        return
    stop = threading.Event()

    def keep_one(local: LocalWorker) -> None:
        while not stop.wait(every):
            try:
                local.start_if_nobody_consumes()
            except Exception as exc:  # a worker that keeps failing: say so once, stop trying
                click.echo(f"dispatch: {exc}", err=True)
                return

    with LocalWorker(app) as local:
        thread = threading.Thread(target=keep_one, args=(local,), name="standby-worker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--every", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between looks at DIR.")
@click.option("--settle", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a file's size must stay the same before it is picked up.")
@click.option("--sandbox", is_flag=True, help="Start the built-in sandbox API and send every run there.")
@click.option("--sandbox-scenario", type=click.Path(dir_okay=False), help="Scenario file for --sandbox.")
@click.option("--sandbox-log", type=click.Path(dir_okay=False), help="Request log file for --sandbox.")
@click.option("--once", is_flag=True, help="Exit once nothing in DIR is pending or sending (for cron).")
@pass_app
def watch(app: App, directory: str, every: float, settle: float, sandbox: bool, sandbox_scenario: str | None,
          sandbox_log: str | None, once: bool) -> None:
    """Turn recipient files dropped into DIR into runs (settings from NAME.toml or DIR/campaign.toml);
    finished files move to DIR/done/ with their report, unusable ones to DIR/rejected/."""
    from worker.watch import Watcher

    folder = Path(directory)
    if not folder.is_dir():
        raise UsageError(f"The drop folder {directory} does not exist (create it first).")
    app.dispatch.runs  # noqa: B018  (the embedded Redis starts before the first look)
    stop = threading.Event()
    with sandbox_for(sandbox, sandbox_scenario, sandbox_log) as sandbox_url, LocalWorker(app) as local:
        watcher = Watcher(app.dispatch, folder, sandbox_url=sandbox_url, settle_seconds=settle)

        def after_poll(events: list) -> None:
            for event in events:
                click.echo(str(event))
            if watcher.open:
                local.start_if_nobody_consumes()
            if once and watcher.idle:
                stop.set()

        click.echo(f"Watching {folder} (Ctrl-C to stop).", err=True)
        try:
            with _sigterm_as_interrupt():
                watcher.run_forever(stop, every=every, on_poll=after_poll)
        except KeyboardInterrupt:
            click.echo("Stopped watching; open runs go on and are picked up again by the next watch.", err=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager stopping `watch`) ends it as cleanly as Ctrl-C: sandbox and local
    worker stopped."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


COMMANDS: list = [serve, watch]
