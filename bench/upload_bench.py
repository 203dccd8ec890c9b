"""How a 1M-row upload fares through `dispatch serve`: seconds to stream and validate it, the service's
peak memory while it does, and how fast the check page answers afterwards.

    python -m bench.upload_bench [--rows 1000000]

Everything runs under a temporary DISPATCH_HOME with its own embedded Redis (REDIS_URL is ignored);
the service, the Redis and the files are removed afterwards, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.cli.waiting import stop_process  # noqa: E402
from worker.redis_server import EmbeddedRedis  # noqa: E402

INVALID_EVERY = 100_000  # one row in this many is not a phone number
SAMPLE_EVERY = 0.05  # seconds between memory samples


BLOCKS = ("7400", "7500", "7800", "7900", "7912", "7961")  # GB mobile blocks valid for every 6 digits


def phone(i: int) -> str:
    """A distinct valid GB mobile number for every i below six million."""
    return f"+44{BLOCKS[i // 1_000_000]}{i % 1_000_000:06d}"


def write_csv(path: Path, rows: int) -> int:
    """A CRM-like export: phone and name, a few invalid rows; the number of invalid rows."""
    invalid = 0
    with path.open("w", encoding="utf-8", buffering=1024 * 1024) as out:
        out.write("phone,name\n")
        for i in range(rows):
            if i % INVALID_EVERY == INVALID_EVERY - 1:
                out.write(f"not a number,Person {i}\n")
                invalid += 1
            else:
                out.write(f"{phone(i)},Person {i}\n")
    return invalid


# -- memory of a process tree, from /proc ----------------------------------------------------------------
def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(c) for c in handle.read().split()]
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def status_kb(pid: int, name: str) -> int:
    """A `VmRSS:`/`VmHWM:` figure of /proc/PID/status in kB (0 when the process is gone)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    return 0


@dataclass
class MemorySampler:
    """Samples the RSS of a process and its children until stopped; keeps the peaks."""

    pid: int
    peak_tree_kb: int = 0
    peak_hwm_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = tree(self.pid)
        self.peak_tree_kb = max(self.peak_tree_kb, sum(status_kb(p, "VmRSS") for p in pids))
        self.peak_hwm_kb = max([self.peak_hwm_kb] + [status_kb(p, "VmHWM") for p in pids])

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- the service ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(home: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COUPONTOOLS_", "DISPATCH_")) and k != "REDIS_URL"}
    env.update({"DISPATCH_HOME": str(home), "DISPATCH_API_TOKEN": token, "PYTHONPATH": str(ROOT)})
    return env


@contextlib.contextmanager
def running_service(home: Path, token: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dispatch serve` on a free port; stopped (and its embedded Redis shut down) on the way out."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tasks", "serve", "--port", str(port), "--no-local-worker"],
                               env=service_env(home, token), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not any("ready" in line for line in output):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dispatch serve did not start: {''.join(output)[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process
    finally:
        # SIGTERM to the group: an upload still validating in the threadpool would hold uvicorn's shutdown
        stop_process(process, 2.0, term_group=True)
        EmbeddedRedis(home / "redis").stop()


# -- the measurements ---------------------------------------------------------------------------------------
def post_upload(client: httpx.Client, path: Path, channel: str = "sms") -> httpx.Response:
    """POST the file to /api/uploads, streamed from disk by httpx."""
    with path.open("rb") as handle:
        return client.post("/api/uploads", files={"file": (path.name, handle, "text/csv")},
                           data={"channel": channel, "region": "GB"})


def stream_seconds(client: httpx.Client, path: Path) -> float:
    """Seconds to stream the file in alone: a channel the service refuses only after the file is on disk."""
    start = time.perf_counter()
    answer = post_upload(client, path, channel="carrier-pigeon")
    if answer.status_code != 422:
        raise SystemExit(f"Expected 422 for the stream-only upload, got {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - start


def upload_summary(client: httpx.Client, path: Path) -> dict:
    answer = post_upload(client, path)
    if answer.status_code != 201:
        raise SystemExit(f"The upload was refused ({answer.status_code}): {answer.text[:300]}")
    return answer.json()


class HealthProbe:
    """GET /healthz twice a second from another thread: how the service answers while it works."""

    def __init__(self, url: str) -> None:
        self.url, self.took = url, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.wait(0.5):
                start = time.perf_counter()
                client.get("/healthz")
                self.took.append((time.perf_counter() - start) * 1000)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def time_page(client: httpx.Client, path: str, times: int = 5) -> list[float]:
    """Milliseconds of `times` GETs of `path`."""
    took = []
    for _ in range(times):
        start = time.perf_counter()
        answer = client.get(path)
        took.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
    return took


def check_page_latency(client: httpx.Client, upload_id: str) -> tuple[str, list[float]]:
    """The check page's latency, or /api/runs's when there is no check page yet."""
    page = f"/uploads/{upload_id}"
    if client.get(page, headers={"accept": "text/html"}).status_code == 404:
        return "/api/runs (no check page: /uploads/ID answered 404)", time_page(client, "/api/runs")
    return page, time_page(client, page)


def bench(rows: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    try:
        path = work / "recipients.csv"
        start = time.perf_counter()
        invalid = write_csv(path, rows)
        print(f"generated {rows:,} rows ({invalid} invalid) in {time.perf_counter() - start:.1f} s", flush=True)
        token = secrets.token_urlsafe(24)
        with running_service(work / "home", token) as (url, process):
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=1800) as client:
                with MemorySampler(process.pid) as memory, HealthProbe(url) as health:
                    baseline_kb = memory.peak_tree_kb
                    start = time.perf_counter()
                    summary = upload_summary(client, path)
                    seconds = time.perf_counter() - start
                    streaming = stream_seconds(client, path)
                    target, latencies = check_page_latency(client, summary["upload"])
                    start = time.perf_counter()
                    run = client.post("/api/runs", json={"upload": summary["upload"], "directory": "cam_bench"})
                    run.raise_for_status()
                    run_seconds = time.perf_counter() - start
                    run_page = time_page(client, f"/runs/{run.json()['run']}")
        report(rows, path.stat().st_size, seconds, streaming, summary, baseline_kb, memory, target, latencies)
        print(f"start the run (POST /api/runs from the upload): {run_seconds:.1f} s; run state {run.json()['state']}")
        print(f"run page latency:         max {max(run_page):.0f} ms, median {statistics.median(run_page):.0f} ms")
        print(f"/healthz while working:   max {max(health.took):.0f} ms, median "
              f"{statistics.median(health.took):.0f} ms over {len(health.took)} probes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: int, size: int, seconds: float, streaming: float, summary: dict, baseline_kb: int,
           memory: MemorySampler, target: str, latencies: list[float]) -> None:
    print(f"rows:                     {rows:,} (valid {summary['valid']:,}, invalid {summary['invalid']:,}, "
          f"duplicates {summary['duplicates']:,})")
    print(f"file:                     {size / 1024**2:.1f} MB")
    print(f"upload + validate:        {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    print(f"  of which streaming in:  {streaming:.1f} s ({size / 1024**2 / streaming:,.0f} MB/s, measured apart)")
    print(f"serve RSS before:         {baseline_kb / 1024:.0f} MB")
    print(f"serve peak RSS (sampled): {memory.peak_tree_kb / 1024:.0f} MB (serve and its children)")
    print(f"serve peak RSS (VmHWM):   {memory.peak_hwm_kb / 1024:.0f} MB")
    print(f"check page:               {target}")
    print(f"  latency:                max {max(latencies):.0f} ms, median {statistics.median(latencies):.0f} ms "
          f"over {len(latencies)} GETs")


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM cleans up as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        bench(args.rows)
    except KeyboardInterrupt:
        print("interrupted; the service and its Redis were stopped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
