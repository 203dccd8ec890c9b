"""What every command group shares: the App (settings, backend, the application layer), options and
the summary printout."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import replace
from typing import Protocol

import click

from worker.campaigns import Dispatch
from worker.errors import RunAbortedError, UsageError
from worker.runs import Runs
from worker.settings import Settings
from worker.statuses import RunState, Status


class Backend(Protocol):
    def publish(self, run_id: str, rows: list[int]) -> None: ...
    def run_worker(self, argv: list[str]) -> None: ...


class App:
    """Settings, the backend, and (on first use) the application layer over Redis."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend
        self._dispatch: Dispatch | None = None

    @property
    def dispatch(self) -> Dispatch:
        if self._dispatch is None:
            self._dispatch = Dispatch(self.settings, self.backend.publish)
        return self._dispatch

    @property
    def runs(self) -> Runs:
        return self.dispatch.runs

    def aimed_at(self, api_url: str | None) -> App:
        """This app with the operator's own API URL: their local worker sends there, so it is allowed."""
        if not api_url or api_url.rstrip("/") == self.settings.api_url.rstrip("/"):
            return self
        return App(replace(self.settings, api_url=api_url.rstrip("/")), self.backend)


pass_app = click.make_pass_decorator(App)
CHANNEL = click.option("--channel", type=click.Choice(["sms", "email"]), required=True,
                       help="Send by SMS (phone column) or email (email column).")
REGION = click.option("--region", metavar="CC", help="Country for national numbers (ISO 3166 alpha-2, e.g. GB).")
JSON_OUT = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
WAIT = click.option("--wait", is_flag=True, help="Show progress until every recipient has a final status "
                    "(a local worker runs whenever no worker is consuming).")
RUN_ID = click.argument("run_id", metavar="RUN")


def print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"Run {summary['run']}: {summary['state']}"
               + (f" ({summary['reason']})" if summary.get("reason") else ""))
    for status in Status:
        if summary["counts"].get(status):
            click.echo(f"  {status:<12} {summary['counts'][status]:>8}")
    click.echo(f"  {'total':<12} {summary['total']:>8}")
    if summary.get("send_at"):
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(summary["send_at"]))
        click.echo(f"  send at      {when}")
    if summary.get("note"):
        click.echo(f"  note: {summary['note']}")


def finish(summary: dict, as_json: bool) -> None:
    """Print the summary; an aborted run exits 3."""
    print_summary(summary, as_json)
    if summary["state"] == RunState.ABORTED:
        raise click.exceptions.Exit(RunAbortedError.exit_code)


@contextlib.contextmanager
def output(path: str | None):
    """Standard output, or the file at `path` (a one-sentence error when it cannot be written)."""
    if path is None:
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"Cannot write {path}: {exc.strerror}.") from None
    with handle:
        yield handle
