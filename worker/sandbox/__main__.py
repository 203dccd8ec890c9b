"""`python -m worker.sandbox`: run the sandbox from a shell (the `dispatch sandbox` CLI calls serve too)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from worker.errors import ConfigError
from worker.sandbox.scenario import load_scenario
from worker.sandbox.server import serve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox",
                                     description="A local stand-in for the Coupontools v3 API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--scenario", type=Path, help="scenario JSON file")
    parser.add_argument("--request-log", type=Path, help="append one JSON line per request here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped; 2 for a bad scenario, 1 when the address cannot be listened on."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_cleanly)  # until the server's own handlers take over
    try:
        scenario = load_scenario(args.scenario)
        serve(args.host, args.port, scenario, args.request_log)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"The sandbox cannot listen on {args.host}:{args.port} ({exc.strerror or exc}).",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
