"""Commands that read and steer runs: status, report, runs, pause, resume, cancel, retry, wait, forget."""
from __future__ import annotations

import json

import click

from worker.cli.common import JSON_OUT, RUN_ID, WAIT, App, finish, output, pass_app, print_summary
from worker.cli.waiting import await_run
from worker.reports import write_csv, write_json
from worker.statuses import Status


@click.command()
@RUN_ID
@JSON_OUT
@pass_app
def status(app: App, run_id: str, as_json: bool) -> None:
    """Show a run's state and its recipients' counts by status."""
    print_summary(app.dispatch.status(run_id), as_json)


@click.command()
@RUN_ID
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--status", "only", type=click.Choice([s.value for s in Status]), help="Only rows of this status.")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False),
              help="File to write (default: standard output).")
@pass_app
def report(app: App, run_id: str, fmt: str, only: str | None, path: str | None) -> None:
    """Write one record per input row: row, recipient, status, error code and message, attempts."""
    rows = app.dispatch.report(run_id, status=only)
    with output(path) as out:
        (write_csv if fmt == "csv" else write_json)(rows, out)
    if path:
        click.echo(f"Report written to {path}.", err=True)


@click.command("runs")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@JSON_OUT
@pass_app
def list_runs(app: App, limit: int, as_json: bool) -> None:
    """List the newest runs."""
    summaries = app.dispatch.list_runs(limit)
    if as_json:
        click.echo(json.dumps(summaries))
        return
    for s in summaries:
        click.echo(f"{s['run']}  {s['state']:<10} {s['channel']:<5} {s['total']:>8} rows  "
                   f"{s['counts'].get('sent', 0):>8} sent")


@click.command()
@RUN_ID
@pass_app
def pause(app: App, run_id: str) -> None:
    """No new sends start; sends already in flight finish."""
    _say_changed(app.dispatch.pause(run_id), run_id, "paused")


@click.command()
@RUN_ID
@WAIT
@JSON_OUT
@pass_app
def resume(app: App, run_id: str, wait: bool, as_json: bool) -> None:
    """Continue a paused run."""
    changed = app.dispatch.resume(run_id)
    sentence = f"Run {run_id} resumed." if changed else _unchanged(run_id, "resumed")
    _answer_then_wait(app, run_id, {"run": run_id, "resumed": changed}, sentence, wait, as_json)


@click.command()
@RUN_ID
@pass_app
def cancel(app: App, run_id: str) -> None:
    """Stop a run for good: recipients not yet tried become `cancelled`."""
    _say_changed(app.dispatch.cancel(run_id), run_id, "cancelled")


@click.command()
@RUN_ID
@click.option("--include-uncertain", is_flag=True,
              help="Also resend `uncertain` recipients (they may have received the message already).")
@WAIT
@JSON_OUT
@pass_app
def retry(app: App, run_id: str, include_uncertain: bool, wait: bool, as_json: bool) -> None:
    """Send `failed` recipients again (and `aborted` ones of an aborted run)."""
    count = app.dispatch.retry(run_id, include_uncertain=include_uncertain)
    _answer_then_wait(app, run_id, {"run": run_id, "queued": count},
                      f"Run {run_id}: {count} recipients queued again.", wait, as_json)


@click.command("wait")
@RUN_ID
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up waiting (exit 1) after this long; the run goes on.")
@JSON_OUT
@pass_app
def wait_run(app: App, run_id: str, timeout: float | None, as_json: bool) -> None:
    """Show progress until every recipient of RUN is final, then the summary (like `send --wait`)."""
    finish(await_run(app, run_id, as_json, timeout), as_json)


@click.command()
@RUN_ID
@pass_app
def forget(app: App, run_id: str) -> None:
    """Delete a finished run's data from Redis (export its report first)."""
    app.dispatch.forget(run_id)
    click.echo(f"Run {run_id} forgotten.")


def _say_changed(changed: bool, run_id: str, verb: str) -> None:
    click.echo(f"Run {run_id} {verb}." if changed else _unchanged(run_id, verb))


def _unchanged(run_id: str, verb: str) -> str:
    return f"Run {run_id}: not {verb} (its state does not allow it; nothing changed)."


def _answer_then_wait(app: App, run_id: str, answer: dict, sentence: str, wait: bool, as_json: bool) -> None:
    """A control command's answer (JSON, or a sentence: on stderr when --wait follows it), then with
    --wait the progress and summary as for `send --wait`."""
    if as_json and not wait:
        click.echo(json.dumps(answer))
    elif not as_json:
        click.echo(sentence, err=wait)
    if wait:
        finish(await_run(app, run_id, as_json), as_json)


COMMANDS = [status, report, list_runs, pause, resume, cancel, retry, wait_run, forget]
