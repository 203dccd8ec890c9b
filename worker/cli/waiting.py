"""Waiting for a run (`send/retry/resume --wait`, `dispatch wait`): progress on stderr, and a local
worker whenever nobody consumes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from worker import keys
from worker.cli.common import App
from worker.errors import DispatchError

WORKER_SEEN_WITHIN = 5.0  # seconds: a heartbeat this recent means a worker is consuming
WORKER_GONE_FOR = 2.0  # seconds of no live worker, while waiting, before a local one is started
LOCAL_WORKER_STARTS = 3  # a local worker that keeps stopping is reported, not restarted forever
POLL_EVERY = 0.2
STOP_GRACE = 130  # seconds a stopping local worker may take: its batches end within the visibility timeout


def await_run(app: App, run_id: str, as_json: bool, timeout: float | None = None) -> dict:
    """The run's summary once it is done; Ctrl-C stops only the waiting, and says so."""
    try:
        return _wait_for(app, run_id, show_progress=not as_json, timeout=timeout)
    except KeyboardInterrupt:
        raise DispatchError(f"Stopped waiting; run {run_id} goes on whenever a worker runs "
                            f"(`dispatch worker`), see `dispatch status {run_id}`.") from None


def _wait_for(app: App, run_id: str, show_progress: bool, timeout: float | None = None) -> dict:
    """Poll until every row is final; whenever no worker has been alive for a while, run a local one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with LocalWorker(app) as local, _progress(show_progress and sys.stderr.isatty()) as show:
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


class LocalWorker:
    """The `dispatch worker` this command runs while no other worker consumes; stopped on exit.

    Liveness is looked at on every poll: a worker that stops (its heartbeat removed) or dies (its
    heartbeat ages out after WORKER_SEEN_WITHIN) is replaced after WORKER_GONE_FOR seconds."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.process: subprocess.Popen | None = None
        self.starts, self.looked = 0, False
        self.nobody_since: float | None = None  # when this command last began to see no live worker

    def __enter__(self) -> LocalWorker:
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
        env = {**os.environ, "DISPATCH_STOP_WITH_PID": str(os.getpid()),  # same Redis and home
               "COUPONTOOLS_API_URL": self.app.settings.api_url}  # where the operator aimed it (--api-url)
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
    stop_process(process, STOP_GRACE)


def stop_process(process: subprocess.Popen, grace: float, *, term_group: bool = False) -> None:
    """SIGTERM (to the process, or its whole group), then SIGKILL to the group after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if term_group else os.kill)(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
