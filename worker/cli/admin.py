"""Commands around the runs: the suppression list, the policy, the worker and the sandbox."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from worker.campaigns import Campaign
from worker.cli.common import CHANNEL, JSON_OUT, REGION, App, pass_app
from worker.errors import ConfigError, DispatchError
from worker.ingest import normalize_address, open_recipient_file
from worker.policy import load_policy


# -- suppression ----------------------------------------------------------------------------------
@click.group()
def suppress() -> None:
    """The suppression list: addresses never to contact (605 answers join it automatically)."""


@suppress.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@CHANNEL
@REGION
@pass_app
def suppress_add(app: App, file: str, channel: str, region: str | None) -> None:
    """Add every valid address of FILE (a recipient file) to the list."""
    options = app.dispatch.ingest_options(Campaign(channel=channel, directory="", region=region))
    verdicts = open_recipient_file(file, options).iter_verdicts()
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


@click.command()
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


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--scenario", type=click.Path(dir_okay=False), help="Scenario JSON file.")
@click.option("--request-log", type=click.Path(dir_okay=False), help="Append one JSON line per request here.")
def sandbox(host: str, port: int, scenario: str | None, request_log: str | None) -> None:
    """Serve a local stand-in for the Coupontools API (prints its base URL)."""
    from worker.sandbox import load_scenario, serve

    serve(host=host, port=port, scenario=load_scenario(scenario),
          request_log=Path(request_log) if request_log else None)


COMMANDS = [suppress, policy, worker, sandbox]
