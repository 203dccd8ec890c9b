"""Commands that read recipients and start runs: validate, send, directories."""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import click

from worker.campaigns import Campaign, Target
from worker.cli.common import CHANNEL, JSON_OUT, REGION, WAIT, App, finish, pass_app
from worker.cli.waiting import await_run
from worker.client import CoupontoolsClient
from worker.errors import CoupontoolsError, UsageError
from worker.ingest import RejectsWriter, open_recipient_file, summarize


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@CHANNEL
@REGION
@click.option("--phone-column", "phone_columns", multiple=True, metavar="HEADER",
              help="Header of a phone column; repeat to set the order rows try them in (default: every "
                   "phone column found, mobile-like names first).")
@click.option("--email-column", "email_columns", multiple=True, metavar="HEADER",
              help="Header of an email column; repeat to set the order rows try them in (default: every "
                   "email column found).")
@click.option("--allow-landlines", is_flag=True, help="SMS: accept landline numbers (providers that read "
              "texts aloud).")
@click.option("--allow-smtputf8", is_flag=True, help="Email: accept non-ASCII characters before the @.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a verdict per row here.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False),
              help="Write the rows that will not be sent here: every original column plus the reason.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes validating in parallel.")
@click.option("--body", default="", help="SMS text to preview: segments per row, UCS-2 rows, first messages.")
@click.option("--subject", default="", help="Email subject to preview.")
@click.option("--max-segments", type=click.IntRange(min=1), help="Count the SMS rows that would need more segments.")
@click.option("--send-at", metavar="WHEN", help="Checked as for send (preview only).")
@click.option("--window", metavar="HH:MM-HH:MM", default="", help="Checked as for send (preview only).")
@click.option("--timezone", default="", metavar="ZONE", help="Checked as for send (preview only).")
@JSON_OUT
@pass_app
def validate(app: App, file: str, channel: str, region: str | None, phone_columns: tuple[str, ...],
             email_columns: tuple[str, ...], allow_landlines: bool, allow_smtputf8: bool,
             report_path: str | None, rejects_path: str | None, workers: int, body: str, subject: str,
             max_segments: int | None, send_at: str | None, window: str, timezone: str, as_json: bool) -> None:
    """Read and validate FILE without sending anything (with --body/--subject: the messages too)."""
    campaign = Campaign(channel=channel, directory="", region=region, phone_columns=phone_columns,
                        email_columns=email_columns, allow_landlines=allow_landlines,
                        allow_smtputf8=allow_smtputf8, body=body, subject=subject, max_segments=max_segments,
                        send_at=send_at, window=window, timezone=timezone)
    recipients = open_recipient_file(file, app.dispatch.ingest_options(campaign, workers))
    stats = app.dispatch.message_stats(campaign, recipients.columns, recipients.address_column)
    verdicts = stats.watch(recipients.iter_verdicts()) if stats else recipients.iter_verdicts()
    rejects = RejectsWriter(rejects_path, recipients.columns) if rejects_path else None
    try:
        summary = summarize(rejects.watch(verdicts) if rejects else verdicts, report_path=report_path,
                            with_column=len(recipients.address_columns) > 1)
    except BaseException:
        if rejects:
            rejects.discard()
        raise
    rejected = rejects.close() if rejects else 0
    if stats:
        summary.update(stats.as_dict())
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"{file}: {summary['rows']} rows, {summary['valid']} valid, {summary['invalid']} invalid, "
               f"{summary['duplicates']} duplicates ({_columns_said(recipients.address_columns)}, "
               f"{recipients.encoding}, delimiter {recipients.delimiter!r}).")
    if stats:
        _print_messages(summary)
    if report_path:
        click.echo(f"Verdict per row written to {report_path}.")
    if rejects_path:
        click.echo(f"{rejected} row{'s' if rejected != 1 else ''} that will not be sent written to {rejects_path} "
                   "(every column plus the reason; duplicates are left out, their first row is sent).")


def _columns_said(columns: list[str]) -> str:
    if len(columns) == 1:
        return f"column {columns[0]!r}"
    return "columns " + ", then ".join(repr(c) for c in columns)


def _print_messages(summary: dict) -> None:
    if "segments" in summary:
        spread = ", ".join(f"{rows} need {n} segment{'s' if n != '1' else ''}"
                           for n, rows in summary["segments"].items()) or "no valid rows"
        click.echo(f"SMS length: {spread}; {summary['ucs2']} UCS-2.")
        if "over_limit" in summary:
            click.echo(f"{summary['over_limit']} rows need more segments than the limit (they would end invalid).")
    if summary["missing_fields"]:
        click.echo(f"{summary['missing_fields']} valid rows lack a value the message needs (they would end invalid).")
    for item in summary["preview"]:
        click.echo(f"  row {item['row']}: {item['text']}")


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@CHANNEL
@click.option("--directory", required=True, metavar="dir_…", help="Directory (dir_…) or coupon (cam_…) to send.")
@click.option("--subject", default="", help="Email subject.")
@click.option("--body", default="", help="SMS text; Coupontools appends the directory or coupon URL.")
@REGION
@click.option("--phone-column", "phone_columns", multiple=True, metavar="HEADER",
              help="Header of a phone column; repeat to set the order rows try them in.")
@click.option("--email-column", "email_columns", multiple=True, metavar="HEADER",
              help="Header of an email column; repeat to set the order rows try them in.")
@click.option("--allow-landlines", is_flag=True, help="SMS: accept landline numbers (providers that read "
              "texts aloud).")
@click.option("--allow-smtputf8", is_flag=True, help="Email: accept non-ASCII characters before the @.")
@click.option("--from-directory-users", is_flag=True, help="Recipients are the directory's registered users.")
@click.option("--api-url", envvar="COUPONTOOLS_API_URL",
              help="API base URL (the local worker that --wait starts sends there).")
@click.option("--sandbox", is_flag=True, help="Start the built-in sandbox API for this run (implies --wait).")
@click.option("--sandbox-scenario", type=click.Path(dir_okay=False), help="Scenario file for --sandbox.")
@click.option("--sandbox-log", type=click.Path(dir_okay=False), help="Request log file for --sandbox.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Messages per second, all workers together.")
@click.option("--run-id", help="Choose the run ID (submitting the same ID twice creates one run).")
@click.option("--webhook-url", default="", help="POST the run's outcome here when it finishes.")
@click.option("--send-at", metavar="WHEN", help="Start sending then (ISO 8601 with an offset); the run is "
              "`scheduled` until.")
@click.option("--window", metavar="HH:MM-HH:MM", default="", help="Message recipients only inside this window "
              "of their local time (from the number; else --timezone or a timezone column).")
@click.option("--timezone", default="", metavar="ZONE", help="IANA zone for recipients whose number has none "
              "(default UTC).")
@click.option("--max-segments", type=click.IntRange(min=1), help="SMS rows needing more segments end invalid.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Processes validating in parallel.")
@WAIT
@JSON_OUT
@pass_app
def send(app: App, file: str | None, channel: str, directory: str, subject: str, body: str,
         region: str | None, phone_columns: tuple[str, ...], email_columns: tuple[str, ...],
         allow_landlines: bool, allow_smtputf8: bool, from_directory_users: bool,
         api_url: str | None, sandbox: bool, sandbox_scenario: str | None, sandbox_log: str | None,
         rate: float | None, run_id: str | None, webhook_url: str, send_at: str | None, window: str,
         timezone: str, max_segments: int | None, workers: int, wait: bool, as_json: bool) -> None:
    """Validate FILE, record the run and queue it; prints the run ID."""
    if bool(file) == from_directory_users:
        raise UsageError("Give either a FILE or --from-directory-users, not both or neither.")
    app = app if sandbox else app.aimed_at(api_url)
    with sandbox_for(sandbox, sandbox_scenario, sandbox_log) as sandbox_url:
        campaign = Campaign(channel=channel, directory=directory, subject=subject, body=body, region=region,
                            rate=rate, phone_columns=phone_columns, email_columns=email_columns,
                            allow_landlines=allow_landlines, allow_smtputf8=allow_smtputf8,
                            api_url=sandbox_url or api_url, sandbox=sandbox, webhook_url=webhook_url,
                            send_at=send_at, window=window, timezone=timezone, max_segments=max_segments)
        if from_directory_users:
            run_id = app.dispatch.start_from_directory_users(campaign, run_id=run_id)
        else:
            run_id = app.dispatch.start_from_file(campaign, file, run_id=run_id, workers=workers)
        if not (wait or sandbox):
            click.echo(json.dumps({"run": run_id}) if as_json else run_id)
            return
        if not as_json:
            click.echo(f"Run {run_id} queued.", err=True)
        summary = await_run(app, run_id, as_json)
    finish(summary, as_json)


@contextlib.contextmanager
def sandbox_for(sandbox: bool, scenario: str | None, request_log: str | None) -> Iterator[str | None]:
    """The URL of a sandbox started for this command (--sandbox), else None."""
    if not sandbox:
        yield None
        return
    from worker.sandbox import load_scenario, running_sandbox

    if scenario:
        load_scenario(scenario)  # refuse a bad scenario with its own message before starting anything
    with running_sandbox(Path(scenario) if scenario else None,
                         request_log=Path(request_log) if request_log else None) as url:
        yield url


@click.command()
@click.option("--api-url", envvar="COUPONTOOLS_API_URL")
@click.option("--sandbox", is_flag=True, help="Ask the built-in sandbox instead.")
@JSON_OUT
@pass_app
def directories(app: App, api_url: str | None, sandbox: bool, as_json: bool) -> None:
    """List the account's directories (ID and name)."""
    app = app if sandbox else app.aimed_at(api_url)
    with sandbox_for(sandbox, None, None) as sandbox_url:
        target = app.dispatch.target(Campaign(channel="sms", directory="dir_", api_url=sandbox_url or api_url,
                                              sandbox=sandbox))
        if target.credentials is None:
            raise UsageError("Set COUPONTOOLS_CLIENT_ID and COUPONTOOLS_CLIENT_SECRET (or use --sandbox).")
        found = asyncio.run(_list_directories(target))
    if as_json:
        click.echo(json.dumps(found))
        return
    for d in found:
        click.echo(f"{d['id']:<24} {d['name']}")


async def _list_directories(target: Target) -> list[dict]:
    async with CoupontoolsClient(base_url=target.url, credentials=target.credentials) as client:
        try:
            return await client.list_directories()
        except CoupontoolsError as exc:
            raise UsageError(f"Could not list directories: {exc}.") from None
