"""The sandbox: a local, scriptable stand-in for the Coupontools v3 API, and helpers to run it."""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from worker.errors import ConfigError
from worker.sandbox.scenario import Scenario, load_scenario, parse_scenario
from worker.sandbox.server import build_app, serve

__all__ = ["Scenario", "build_app", "load_scenario", "parse_scenario", "read_request_log",
           "running_sandbox", "serve"]

STARTUP_TIMEOUT_S = 15.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_sandbox(scenario: dict[str, Any] | Path | None = None, request_log: Path | None = None,
                    *, python: str = sys.executable) -> Iterator[str]:
    """Run the sandbox in a subprocess on a free port and yield its base URL (…/v3)."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sandbox-")))
        command = [python, "-m", "worker.sandbox", "--port", "0"]
        if scenario is not None:
            command += ["--scenario", str(_scenario_file(scenario, workdir))]
        if request_log is not None:
            command += ["--request-log", str(Path(request_log).resolve())]
        stderr = stack.enter_context(open(workdir / "stderr.txt", "w+b"))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                   env=_child_env(), cwd=workdir)
        stack.callback(_stop, process)
        yield _wait_for_url(process, stderr)


def read_request_log(path: str | Path) -> list[dict[str, Any]]:
    """The request log's lines, decoded, oldest first ([] when there is no log yet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _scenario_file(scenario: dict[str, Any] | Path, workdir: Path) -> Path:
    if isinstance(scenario, dict):
        path = workdir / "scenario.json"
        path.write_text(json.dumps(scenario), encoding="utf-8")
        return path
    return Path(scenario).resolve()


def _child_env() -> dict[str, str]:
    """The environment with this project importable, whatever the child's working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def _wait_for_url(process: subprocess.Popen[bytes], stderr: IO[bytes]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = process.stdout.readline().decode().strip()
                if line.startswith("http"):
                    return line
                if not line:  # end of output: the process is exiting
                    break
    raise _startup_failure(process, stderr)


def _startup_failure(process: subprocess.Popen[bytes], stderr: IO[bytes]) -> Exception:
    """Why the sandbox printed no URL: ConfigError for a bad scenario (exit 2), else RuntimeError."""
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return RuntimeError(f"The sandbox printed no URL within {STARTUP_TIMEOUT_S:.0f} s.")
    stderr.seek(0)
    message = stderr.read().decode(errors="replace").strip()
    if code == 2:
        return ConfigError(message)
    return RuntimeError(f"The sandbox exited with status {code}: {message}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
