"""The `dispatch` command line: a thin shell over worker.runs, worker.ingest and the sandbox.

Celery is handed in as a `backend` (tasks.cli), so this module never imports tasks/. User errors are
DispatchError subclasses with their exit codes; `run` turns them into one sentence on stderr.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import click

from worker import keys
from worker.cells import safe_cell
from worker.client import CoupontoolsClient, Credentials
from worker.errors import APIError, ConfigError, CoupontoolsError, DispatchError, RunAbortedError, UsageError
from worker.ingest import IngestOptions, open_recipient_file, summarize, validate_records, normalize_address
from worker.logs import configure
from worker.policy import load_policy, policy_to_json
from worker.redis_server import connect, resolve_redis_url
from worker.runs import ReportRow, Runs, RunSpec
from worker.settings import SANDBOX_CREDENTIALS, Settings
from worker.statuses import RunState, Status

WORKER_SEEN_WITHIN = 5.0  # seconds: a heartbeat this recent means a worker is consuming
WORKER_GONE_FOR = 2.0  # seconds of no live worker, while waiting, before a local one is started
LOCAL_WORKER_STARTS = 3  # a local worker that keeps stopping is reported, not restarted forever
POLL_EVERY = 0.2
STOP_GRACE = 130  # seconds a stopping local worker may take: its batches end within the visibility timeout


class Backend(Protocol):
    def publish(self, run_id: str, rows: list[int]) -> None: ...
    def run_worker(self, argv: list[str]) -> None: ...


class App:
    """What every command shares: settings, the backend, and (on first use) Redis and the run store."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend
        self._runs: Runs | None = None

    @property
    def runs(self) -> Runs:
        if self._runs is None:
            self._runs = Runs(connect(resolve_redis_url(self.settings)), batch_size=self.settings.batch_size,
                              stall_timeout=self.settings.stall_timeout)
        return self._runs


pass_app = click.make_pass_decorator(App)
CHANNEL = click.option("--channel", type=click.Choice(["sms", "email"]), required=True,
                       help="Send by SMS (phone column) or email (email column).")
REGION = click.option("--region", metavar="CC", help="Country for national numbers (ISO 3166 alpha-2, e.g. GB).")
JSON_OUT = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
WAIT = click.option("--wait", is_flag=True, help="Show progress until every recipient has a final status "
                    "(a local worker runs whenever no worker is consuming).")


def run(argv: list[str] | None, backend: Backend) -> int:
    """Run the CLI; the exit code. No traceback reaches the user unless DISPATCH_DEBUG is set."""
    try:
        code = cli.main(args=argv, prog_name="dispatch", standalone_mode=False, obj=backend)
        return code if isinstance(code, int) else 0  # click returns Exit codes when not standalone
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.Abort:
        click.echo("Interrupted.", err=True)
        return 130
    except DispatchError as exc:
        click.echo(f"dispatch: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # a bug: say so in one line, keep the traceback for DISPATCH_DEBUG
        if os.environ.get("DISPATCH_DEBUG"):
            raise
        click.echo(f"dispatch: unexpected error ({type(exc).__name__}: {exc}); "
                   "set DISPATCH_DEBUG=1 for details.", err=True)
        return 1


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policy", type=click.Path(dir_okay=False), envvar="DISPATCH_POLICY",
              help="Retry policy TOML file.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def cli(ctx: click.Context, policy: str | None, verbose: bool) -> None:
    """Send Coupontools directories and coupons by SMS or email to large lists, exactly once each."""
    configure(json_lines=False, level=10 if verbose else 30)
    settings = Settings.from_env(policy_file=Path(policy) if policy else None)
    ctx.obj = App(settings, ctx.obj)


# -- validate -------------------------------------------------------------------------------------
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@CHANNEL
@REGION
@click.option("--phone-column", help="Header of the phone column (found automatically otherwise).")
@click.option("--email-column", help="Header of the email column (found automatically otherwise).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a verdict per row here.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes validating in parallel.")
@JSON_OUT
@pass_app
def validate(app: App, file: str, channel: str, region: str | None, phone_column: str | None,
             email_column: str | None, report_path: str | None, workers: int, as_json: bool) -> None:
    """Read and validate FILE without sending anything."""
    options = _ingest_options(app.settings, channel, region, phone_column, email_column, workers)
    recipients = open_recipient_file(file, options)
    summary = summarize(recipients.iter_verdicts(), report_path=report_path)
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{file}: {summary['rows']} rows, {summary['valid']} valid, {summary['invalid']} invalid, "
               f"{summary['duplicates']} duplicates (column {recipients.address_column!r}, "
               f"{recipients.encoding}, delimiter {recipients.delimiter!r}).")
    if report_path:
        click.echo(f"Verdict per row written to {report_path}.")


def _ingest_options(settings: Settings, channel: str, region: str | None, phone_column: str | None = None,
                    email_column: str | None = None, workers: int = 1) -> IngestOptions:
    return IngestOptions(channel=channel, region=region,
                         phone_column=phone_column, email_column=email_column,
                         max_bytes=settings.max_file_bytes, max_rows=settings.max_rows, workers=workers)


# -- send -----------------------------------------------------------------------------------------
@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@CHANNEL
@click.option("--directory", required=True, metavar="dir_…", help="Directory (dir_…) or coupon (cam_…) to send.")
@click.option("--subject", default="", help="Email subject.")
@click.option("--body", default="", help="SMS text; Coupontools appends the directory or coupon URL.")
@REGION
@click.option("--phone-column")
@click.option("--email-column")
@click.option("--from-directory-users", is_flag=True, help="Recipients are the directory's registered users.")
@click.option("--api-url", envvar="COUPONTOOLS_API_URL", help="API base URL.")
@click.option("--sandbox", is_flag=True, help="Start the built-in sandbox API for this run (implies --wait).")
@click.option("--sandbox-scenario", type=click.Path(dir_okay=False), help="Scenario file for --sandbox.")
@click.option("--sandbox-log", type=click.Path(dir_okay=False), help="Request log file for --sandbox.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Messages per second, all workers together.")
@click.option("--run-id", help="Choose the run ID (submitting the same ID twice creates one run).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Processes validating in parallel.")
@WAIT
@JSON_OUT
@pass_app
def send(app: App, file: str | None, channel: str, directory: str, subject: str, body: str,
         region: str | None, phone_column: str | None, email_column: str | None, from_directory_users: bool,
         api_url: str | None, sandbox: bool, sandbox_scenario: str | None, sandbox_log: str | None,
         rate: float | None, run_id: str | None, workers: int, wait: bool, as_json: bool) -> None:
    """Validate FILE, record the run and queue it; prints the run ID."""
    if bool(file) == from_directory_users:
        raise UsageError("Give either a FILE or --from-directory-users, not both or neither.")
    with _api_target(app, api_url, sandbox, sandbox_scenario, sandbox_log) as (url, credentials):
        spec = RunSpec(channel=channel, directory=directory, subject=subject, body=body,
                       region=region or "", rate=rate or 0.0, sandbox=sandbox,
                       api_url=url if (sandbox or api_url) else "",
                       source="directory-users" if from_directory_users else f"file:{Path(file).name}",
                       policy=policy_to_json(load_policy(app.settings.policy_file)) if app.settings.policy_file else "")
        _check_directory(url, credentials, directory)
        if from_directory_users:
            verdicts, expected = _directory_verdicts(url, credentials, directory, spec), None
        else:
            recipients = open_recipient_file(file, _ingest_options(app.settings, channel, region, phone_column,
                                                                   email_column, workers))
            verdicts, expected = recipients.iter_verdicts(), recipients.rows
        run_id = app.runs.create(spec, verdicts, app.backend.publish, run_id=run_id, expected_rows=expected)
        if not (wait or sandbox):
            click.echo(json.dumps({"run": run_id}) if as_json else run_id)
            return
        if not as_json:
            click.echo(f"Run {run_id} queued.", err=True)
        summary = _await_run(app, run_id, as_json)
    _finish(summary, as_json)


@contextlib.contextmanager
def _api_target(app: App, api_url: str | None, sandbox: bool, scenario: str | None,
                request_log: str | None) -> Iterator[tuple[str, Credentials | None]]:
    """The API URL and credentials for this command (a sandbox started for it with --sandbox)."""
    if not sandbox:
        creds = (Credentials(app.settings.client_id, app.settings.client_secret)
                 if app.settings.client_id and app.settings.client_secret else None)
        yield (api_url or app.settings.api_url), creds
        return
    from worker.sandbox import load_scenario, running_sandbox

    if scenario:
        load_scenario(scenario)  # refuse a bad scenario with its own message before starting anything
    with running_sandbox(Path(scenario) if scenario else None,
                         request_log=Path(request_log) if request_log else None) as url:
        yield url, Credentials(*SANDBOX_CREDENTIALS)


def _check_directory(url: str, credentials: Credentials | None, directory: str) -> None:
    """Refuse an unknown directory before anything is queued (one directory/info call)."""
    if not directory.startswith(("dir_", "cam_")):
        raise UsageError(f"{directory!r} is not a directory (dir_…) or coupon (cam_…) ID.")
    if directory.startswith("cam_") or credentials is None:
        return  # coupons have no info endpoint; without credentials the workers' own are used
    try:
        asyncio.run(_directory_info(url, credentials, directory))
    except APIError as exc:
        if exc.code in (502, 507):
            raise UsageError(f"Coupontools does not know the directory {directory} (error {exc.code}).") from None
    except CoupontoolsError:
        pass  # account and transport problems are recorded by the run itself, row by row


async def _directory_info(url: str, credentials: Credentials, directory: str) -> dict:
    async with CoupontoolsClient(base_url=url, credentials=credentials) as client:
        return await client.directory_info(directory)


def _directory_verdicts(url: str, credentials: Credentials | None, directory: str, spec: RunSpec):
    if credentials is None:
        raise UsageError("--from-directory-users needs COUPONTOOLS_CLIENT_ID and COUPONTOOLS_CLIENT_SECRET "
                         "(or --sandbox).")
    users = asyncio.run(_fetch_directory_users(url, credentials, directory))
    records = ({"phone": u.get("phone", ""), "email": u.get("email", ""),
                "first_name": u.get("first_name", ""), "last_name": u.get("last_name", ""),
                "registration": u.get("ID", "")} for u in users)
    return validate_records(records, IngestOptions(channel=spec.channel, region=spec.region or None))


async def _fetch_directory_users(url: str, credentials: Credentials, directory: str) -> list[dict]:
    async with CoupontoolsClient(base_url=url, credentials=credentials) as client:
        try:
            return [user async for user in client.iter_directory_users(directory)]
        except CoupontoolsError as exc:
            raise UsageError(f"Could not list the users of {directory}: {exc}.") from None


# -- waiting (send/retry/resume --wait, dispatch wait) ----------------------------------------------
def _await_run(app: App, run_id: str, as_json: bool, timeout: float | None = None) -> dict:
    """The run's summary once it is done; Ctrl-C stops only the waiting, and says so."""
    try:
        return _wait_for(app, run_id, show_progress=not as_json, timeout=timeout)
    except KeyboardInterrupt:
        raise DispatchError(f"Stopped waiting; run {run_id} goes on whenever a worker runs "
                            f"(`dispatch worker`), see `dispatch status {run_id}`.") from None


def _finish(summary: dict, as_json: bool) -> None:
    """Print the summary; an aborted run exits 3."""
    _print_summary(summary, as_json)
    if summary["state"] == RunState.ABORTED:
        raise click.exceptions.Exit(RunAbortedError.exit_code)


def _wait_for(app: App, run_id: str, show_progress: bool, timeout: float | None = None) -> dict:
    """Poll until every row is final; whenever no worker has been alive for a while, run a local one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _LocalWorker(app) as local, _progress(show_progress and sys.stderr.isatty()) as show:
        while not (summary := app.runs.status(run_id))["done"]:
            show(summary)
            if deadline is not None and time.monotonic() >= deadline:
                raise DispatchError(f"Run {run_id} is not done after {timeout:g} s ({summary['final']} of "
                                    f"{summary['total']} rows final); it goes on, see `dispatch status {run_id}`.")
            local.start_if_nobody_consumes()
            time.sleep(POLL_EVERY)
        return summary


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[dict], None]]:
    """A function that shows a run's summary as a progress bar on stderr (or does nothing)."""
    if not enabled:
        yield lambda summary: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("sending", total=None)
        yield lambda s: progress.update(bar, total=s["total"] or None, completed=s["final"],
                                        description=f"{s['state']} ({s['counts'].get('sent', 0)} sent)")


class _LocalWorker:
    """The `dispatch worker` this command runs while no other worker consumes; stopped on exit.

    Liveness is looked at on every poll: a worker that stops (its heartbeat removed) or dies (its
    heartbeat ages out after WORKER_SEEN_WITHIN) is replaced after WORKER_GONE_FOR seconds."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.process: subprocess.Popen | None = None
        self.starts, self.looked = 0, False
        self.nobody_since: float | None = None  # when this command last began to see no live worker

    def __enter__(self) -> _LocalWorker:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            _stop_local_worker(self.process)

    def start_if_nobody_consumes(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return  # ours runs (its heartbeat follows once it has started)
        first_look, self.looked = not self.looked, True
        if _worker_alive(self.app):
            self.nobody_since = None
            return
        now = time.monotonic()
        self.nobody_since = self.nobody_since or now
        if first_look or now - self.nobody_since >= WORKER_GONE_FOR:
            self._start()

    def _start(self) -> None:
        if self.starts >= LOCAL_WORKER_STARTS:
            raise DispatchError(f"The local worker stopped {self.starts} times (last exit code "
                                f"{self.process.returncode}); run `dispatch worker` to see why.")
        env = {**os.environ, "DISPATCH_STOP_WITH_PID": str(os.getpid())}  # same Redis and home
        command = [sys.executable, "-m", "tasks", "worker", "--loglevel", "WARNING"]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=None if os.environ.get("DISPATCH_DEBUG") else subprocess.DEVNULL,
                                        start_new_session=True)
        self.starts, self.nobody_since = self.starts + 1, None


def _worker_alive(app: App) -> bool:
    newest = app.runs.redis.zrevrange(keys.WORKERS, 0, 0, withscores=True)
    return bool(newest) and time.time() - newest[0][1] < WORKER_SEEN_WITHIN


def _stop_local_worker(process: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM to the main process: batches in hand finish, so nothing ends uncertain);
    the whole group is killed only if that takes longer than a batch can live."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"Run {summary['run']}: {summary['state']}"
               + (f" ({summary['reason']})" if summary.get("reason") else ""))
    for status in Status:
        if summary["counts"].get(status):
            click.echo(f"  {status:<12} {summary['counts'][status]:>8}")
    click.echo(f"  {'total':<12} {summary['total']:>8}")
    if summary.get("note"):
        click.echo(f"  note: {summary['note']}")


# -- status, report, runs -------------------------------------------------------------------------
@cli.command()
@click.argument("run_id", metavar="RUN")
@JSON_OUT
@pass_app
def status(app: App, run_id: str, as_json: bool) -> None:
    """Show a run's state and its recipients' counts by status."""
    _print_summary(app.runs.status(run_id), as_json)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: standard output).")
@pass_app
def report(app: App, run_id: str, fmt: str, output: str | None) -> None:
    """Write one record per input row: row, recipient, status, error code and message, attempts."""
    rows = app.runs.iter_report(run_id)
    with _output(output) as out:
        (write_csv_report if fmt == "csv" else write_json_report)(rows, out)
    if output:
        click.echo(f"Report written to {output}.", err=True)


@contextlib.contextmanager
def _output(path: str | None):
    if path is None:
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"Cannot write {path}: {exc.strerror}.") from None
    with handle:
        yield handle


def write_csv_report(rows: Iterator[ReportRow], out) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ReportRow.FIELDS)
    for r in rows:
        writer.writerow([r.row, safe_cell(r.recipient), r.status, r.error_code or "", safe_cell(r.error_message),
                         r.attempts])


def write_json_report(rows: Iterator[ReportRow], out) -> None:
    out.write("[")
    for i, r in enumerate(rows):
        out.write(("," if i else "") + "\n" + json.dumps({f: getattr(r, f) for f in ReportRow.FIELDS},
                                                         ensure_ascii=False))
    out.write("\n]\n")


@cli.command("runs")
@click.option("--limit", type=int, default=20, show_default=True)
@JSON_OUT
@pass_app
def list_runs(app: App, limit: int, as_json: bool) -> None:
    """List the newest runs."""
    summaries = [app.runs.status(r) for r in app.runs.list_runs(limit)]
    if as_json:
        click.echo(json.dumps(summaries))
        return
    for s in summaries:
        click.echo(f"{s['run']}  {s['state']:<10} {s['channel']:<5} {s['total']:>8} rows  "
                   f"{s['counts'].get('sent', 0):>8} sent")


# -- run control ----------------------------------------------------------------------------------
@cli.command()
@click.argument("run_id", metavar="RUN")
@pass_app
def pause(app: App, run_id: str) -> None:
    """No new sends start; sends already in flight finish."""
    _say_changed(app.runs.pause(run_id), run_id, "paused")


@cli.command()
@click.argument("run_id", metavar="RUN")
@WAIT
@JSON_OUT
@pass_app
def resume(app: App, run_id: str, wait: bool, as_json: bool) -> None:
    """Continue a paused run."""
    changed = app.runs.resume(run_id, app.backend.publish)
    if as_json and not wait:
        click.echo(json.dumps({"run": run_id, "resumed": changed}))
    elif not as_json:
        _say_changed(changed, run_id, "resumed", err=wait)
    if wait:
        _finish(_await_run(app, run_id, as_json), as_json)


@cli.command()
@click.argument("run_id", metavar="RUN")
@pass_app
def cancel(app: App, run_id: str) -> None:
    """Stop a run for good: recipients not yet tried become `cancelled`."""
    _say_changed(app.runs.cancel(run_id), run_id, "cancelled")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--include-uncertain", is_flag=True,
              help="Also resend `uncertain` recipients (they may have received the message already).")
@WAIT
@JSON_OUT
@pass_app
def retry(app: App, run_id: str, include_uncertain: bool, wait: bool, as_json: bool) -> None:
    """Send `failed` recipients again (and `aborted` ones of an aborted run)."""
    count = app.runs.retry(run_id, app.backend.publish, include_uncertain=include_uncertain)
    if as_json and not wait:
        click.echo(json.dumps({"run": run_id, "queued": count}))
    elif not as_json:
        click.echo(f"Run {run_id}: {count} recipients queued again.", err=wait)
    if wait:
        _finish(_await_run(app, run_id, as_json), as_json)


@cli.command("wait")
@click.argument("run_id", metavar="RUN")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up waiting (exit 1) after this long; the run goes on.")
@JSON_OUT
@pass_app
def wait_run(app: App, run_id: str, timeout: float | None, as_json: bool) -> None:
    """Show progress until every recipient of RUN is final, then the summary (like `send --wait`)."""
    _finish(_await_run(app, run_id, as_json, timeout), as_json)


@cli.command()
@click.argument("run_id", metavar="RUN")
@pass_app
def forget(app: App, run_id: str) -> None:
    """Delete a finished run's data from Redis (export its report first)."""
    app.runs.forget(run_id)
    click.echo(f"Run {run_id} forgotten.")


def _say_changed(changed: bool, run_id: str, verb: str, err: bool = False) -> None:
    if changed:
        click.echo(f"Run {run_id} {verb}.", err=err)
    else:
        click.echo(f"Run {run_id}: not {verb} (its state does not allow it; nothing changed).", err=err)


# -- suppression ----------------------------------------------------------------------------------
@cli.group()
def suppress() -> None:
    """The suppression list: addresses never to contact (605 answers join it automatically)."""


@suppress.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@CHANNEL
@REGION
@pass_app
def suppress_add(app: App, file: str, channel: str, region: str | None) -> None:
    """Add every valid address of FILE (a recipient file) to the list."""
    verdicts = open_recipient_file(file, _ingest_options(app.settings, channel, region)).iter_verdicts()
    added = app.runs.suppress(channel, (v.recipient for v in verdicts if v.recipient))
    click.echo(f"{added} addresses added to the {channel} suppression list.")


@suppress.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@CHANNEL
@REGION
@pass_app
def suppress_remove(app: App, addresses: tuple[str, ...], channel: str, region: str | None) -> None:
    """Remove ADDRESSES from the list."""
    normalized = [normalize_address(channel, a, region) for a in addresses]
    click.echo(f"{app.runs.unsuppress(channel, normalized)} addresses removed.")


@suppress.command("list")
@CHANNEL
@pass_app
def suppress_list(app: App, channel: str) -> None:
    """Print the list, one address a line."""
    for address in app.runs.suppressed(channel):
        click.echo(address)


# -- policy, directories, worker, sandbox ------------------------------------------------------------
@cli.command()
@JSON_OUT
@pass_app
def policy(app: App, as_json: bool) -> None:
    """Print the effective retry policy and error-code table."""
    effective = load_policy(app.settings.policy_file)
    if as_json:
        click.echo(json.dumps({"retry": vars(effective.retry),
                               "codes": [dict(zip(("code", "meaning", "class"), r)) for r in effective.table()]}))
        return
    r = effective.retry
    click.echo(f"retry: max_attempts={r.max_attempts} base_delay={r.base_delay}s max_delay={r.max_delay}s "
               "(exponential backoff, full jitter, never before Retry-After)")
    for code, meaning, cls in effective.table():
        click.echo(f"  {code:<32} {cls:<12} {meaning}")


@cli.command()
@click.option("--api-url", envvar="COUPONTOOLS_API_URL")
@click.option("--sandbox", is_flag=True, help="Ask the built-in sandbox instead.")
@JSON_OUT
@pass_app
def directories(app: App, api_url: str | None, sandbox: bool, as_json: bool) -> None:
    """List the account's directories (ID and name)."""
    with _api_target(app, api_url, sandbox, None, None) as (url, credentials):
        if credentials is None:
            raise UsageError("Set COUPONTOOLS_CLIENT_ID and COUPONTOOLS_CLIENT_SECRET (or use --sandbox).")
        found = asyncio.run(_list_directories(url, credentials))
    if as_json:
        click.echo(json.dumps(found))
        return
    for d in found:
        click.echo(f"{d['id']:<24} {d['name']}")


async def _list_directories(url: str, credentials: Credentials) -> list[dict]:
    async with CoupontoolsClient(base_url=url, credentials=credentials) as client:
        try:
            return await client.list_directories()
        except CoupontoolsError as exc:
            raise UsageError(f"Could not list directories: {exc}.") from None


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=int, help="Worker processes (default: one per core).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def worker(app: App, concurrency: int | None, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker that sends queued batches (extra arguments go to Celery)."""
    _wait_for_redis(app)  # start the embedded Redis and refuse one that evicts, before Celery starts
    argv = ["--loglevel", loglevel, *(["--concurrency", str(concurrency)] if concurrency else []), *celery_args]
    app.backend.run_worker(argv)


def _wait_for_redis(app: App) -> None:
    """A worker started while Redis restarts waits for it (as Celery does for its broker) instead of
    exiting; a Redis that could evict keys is still refused at once."""
    said = False
    while True:
        try:
            app.runs  # noqa: B018
            return
        except ConfigError:
            raise
        except DispatchError as exc:
            if not said:
                click.echo(f"dispatch: {exc} Waiting for it (Ctrl-C to stop).", err=True)
                said = True
            time.sleep(1.0)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--scenario", type=click.Path(dir_okay=False), help="Scenario JSON file.")
@click.option("--request-log", type=click.Path(dir_okay=False), help="Append one JSON line per request here.")
def sandbox(host: str, port: int, scenario: str | None, request_log: str | None) -> None:
    """Serve a local stand-in for the Coupontools API (prints its base URL)."""
    from worker.sandbox import load_scenario, serve

    serve(host=host, port=port, scenario=load_scenario(scenario),
          request_log=Path(request_log) if request_log else None)

