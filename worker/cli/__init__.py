"""The `dispatch` command line, one module per command group, each a thin shell over the application
layer (worker.campaigns).

Celery is handed in as a `backend` (tasks.cli), so this package never imports tasks/. User errors are
DispatchError subclasses with their exit codes; `run` turns them into one sentence on stderr.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from worker.cli import admin, control, service
from worker.cli.common import App, Backend
from worker.cli.sending import directories, send, validate
from worker.errors import DispatchError
from worker.logs import configure
from worker.settings import Settings

__all__ = ["App", "Backend", "cli", "run"]


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


for command in [validate, send, directories, *control.COMMANDS, *admin.COMMANDS, *service.COMMANDS]:
    cli.add_command(command)
