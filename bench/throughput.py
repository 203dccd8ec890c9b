"""Throughput benchmark: prints figures, asserts nothing. Everything runs on this machine.

    python bench/throughput.py                      # the whole set (a few minutes)
    python bench/throughput.py --only e2e --recipients 10000 --latency 0

Sections: e2e (sends/s end to end, by recipients and sandbox latency), naive (one task per recipient,
the tutorial pattern, same Redis and sandbox), rate (accuracy of --rate 200 shared by 3 workers),
queue (time to record and queue 1,000,000 validated recipients). Every e2e run is checked against the
sandbox's request log: nobody delivered twice, every row final.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.ingest import Verdict  # noqa: E402
from worker.redis_server import EmbeddedRedis, connect  # noqa: E402
from worker.runs import Runs, RunSpec  # noqa: E402
from worker.sandbox import read_request_log, running_sandbox  # noqa: E402
from worker.statuses import Status  # noqa: E402


def phone(i: int) -> str:
    return f"+4479{i:08d}"


def verdicts(count: int):
    for i in range(count):
        yield Verdict(row=i + 1, given=phone(i), recipient=phone(i), status=Status.PENDING, reason="", fields={})


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis_server = EmbeddedRedis(workdir / "redis")
        self.redis_url = self.redis_server.url()
        os.environ["REDIS_URL"] = self.redis_url
        self.redis = connect(self.redis_url)
        from tasks.batches import publish_batch

        self.publish = publish_batch

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT),
               "COUPONTOOLS_CLIENT_ID": "sandbox", "COUPONTOOLS_CLIENT_SECRET": "sandbox",
               "DISPATCH_HOME": str(self.workdir / "home")}
        env.update(extra)
        return env

    @contextlib.contextmanager
    def workers(self, count: int, processes: int, **env: str):
        procs = [subprocess.Popen([sys.executable, "-m", "tasks", "worker", "--loglevel", "WARNING",
                                   "--concurrency", str(processes), "-n", f"bench{i}@%h"],
                                  env=self.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, cwd=ROOT) for i in range(count)]
        try:
            self._wait_workers(count)
            yield procs
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                p.wait()
            self.redis.delete("dispatch:workers")

    def _wait_workers(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while self.redis.zcard("dispatch:workers") < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)

    def run(self, count: int, rate: float = 0.0) -> tuple[str, float]:
        """Queue `count` recipients; seconds from the first queued batch until every row is final."""
        runs = Runs(self.redis, batch_size=int(os.environ.get("DISPATCH_BATCH_SIZE", 2000)))
        spec = RunSpec(channel="sms", directory="dir_12345", rate=rate, sandbox=True,
                       api_url=self.api_url, source="bench")
        start = time.perf_counter()
        run_id = runs.create(spec, verdicts(count), self.publish, expected_rows=count)
        while not runs.status(run_id)["done"]:
            time.sleep(0.05)
        return run_id, time.perf_counter() - start


def check_log(log: Path, runs: Runs, run_id: str, count: int) -> str:
    lines = [l for l in read_request_log(log) if l["path"] == "/v3/send/sms"]
    delivered = collections.Counter(l["recipient"] for l in lines if l["result"] in ("ok", "drop"))
    counts = runs.status(run_id)["counts"]
    twice = sum(1 for n in delivered.values() if n > 1)
    return f"delivered {len(delivered)}, twice {twice}, counts {counts}" + (
        "" if twice == 0 and sum(counts.values()) == count else "  <-- PROBLEM")


def section_e2e(bench: Bench, sizes: list[int], latencies: list[int], processes: int, concurrency: int) -> None:
    print(f"\n== end to end: 1 worker, {processes} processes, {concurrency} in flight per process ==")
    for latency in latencies:
        log = bench.workdir / f"requests-{latency}.log"
        with running_sandbox({"latency_ms": latency}, request_log=log) as url:
            bench.api_url = url
            with bench.workers(1, processes, DISPATCH_CONCURRENCY=str(concurrency)) as procs:
                for size in sizes:
                    log.write_text("")
                    run_id, seconds = bench.run(size)
                    rss = peak_rss_mb(procs)
                    print(f"latency {latency:>3} ms  {size:>7} recipients  {seconds:7.2f} s  "
                          f"{size / seconds:8.0f} sends/s  worker peak RSS {rss}")
                    print("   ", check_log(log, Runs(bench.redis), run_id, size))


def section_naive(bench: Bench, size: int, processes: int) -> None:
    print(f"\n== naive peer: one Celery task per recipient, httpx sync, {processes} processes ==")
    with running_sandbox({"latency_ms": 0}) as url:
        env = bench.env()
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.naive_tasks", "worker",
                                 "--loglevel", "WARNING", "--concurrency", str(processes), "-Q", "naive"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            from bench.naive_tasks import send

            time.sleep(3)
            bench.redis.delete("naive:done")
            start = time.perf_counter()
            for i in range(size):
                send.apply_async(args=(url, phone(i), "naive:done"))
            while int(bench.redis.get("naive:done") or 0) < size:
                time.sleep(0.05)
            seconds = time.perf_counter() - start
            print(f"latency   0 ms  {size:>7} recipients  {seconds:7.2f} s  {size / seconds:8.0f} sends/s")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


def section_rate(bench: Bench, rate: float, size: int) -> None:
    print(f"\n== shared rate limit: --rate {rate:g}, 3 workers, {size} recipients ==")
    log = bench.workdir / "requests-rate.log"
    with running_sandbox({"latency_ms": 0}, request_log=log) as url:
        bench.api_url = url
        with bench.workers(3, 1):
            run_id, seconds = bench.run(size, rate=rate)
    stamps = sorted(l["ts"] for l in read_request_log(log) if l["path"] == "/v3/send/sms")
    windows = [sum(1 for t in stamps if s <= t < s + 1) for s in stamps]
    whole = [sum(1 for t in stamps if s <= t < s + 1) for s in range(int(stamps[0]), int(stamps[-1]))]
    print(f"max sends in any 1 s window {max(windows)}, average {len(stamps) / (stamps[-1] - stamps[0]):.1f}/s, "
          f"whole seconds min/max {min(whole)}/{max(whole)}")
    print("   ", check_log(log, Runs(bench.redis), run_id, size))


def section_queue(bench: Bench, size: int) -> None:
    print(f"\n== queueing {size} validated recipients (no worker) ==")
    runs = Runs(bench.redis)
    spec = RunSpec(channel="sms", directory="dir_12345", sandbox=True, source="bench")
    start = time.perf_counter()
    runs.create(spec, verdicts(size), bench.publish)
    seconds = time.perf_counter() - start
    memory = bench.redis.info("memory")["used_memory_human"]
    print(f"{size} recipients recorded and queued in {seconds:.1f} s ({size / seconds:,.0f}/s); "
          f"Redis memory {memory}")
    bench.redis.flushall()


def peak_rss_mb(procs: list[subprocess.Popen]) -> str:
    """Peak RSS (VmHWM) of each process in the workers' process groups."""
    peaks = []
    for proc in procs:
        for pid in _group(proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM"):
                        peaks.append(int(line.split()[1]) // 1024)
    return "/".join(f"{p} MB" for p in sorted(peaks, reverse=True))


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["e2e", "naive", "rate", "queue"], action="append")
    parser.add_argument("--recipients", type=int, action="append", help="e2e sizes (default 10000 100000)")
    parser.add_argument("--latency", type=int, action="append", help="sandbox latencies in ms (default 0 200)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=250, help="in flight per worker process")
    parser.add_argument("--naive-recipients", type=int, default=5000)
    parser.add_argument("--queue-recipients", type=int, default=1_000_000)
    parser.add_argument("--appendfsync", choices=["always", "everysec"],
                        help="override the embedded Redis's fsync policy (the cost of durable claims: "
                             "`always` is the default, `everysec` makes claims losable in a crash)")
    args = parser.parse_args()
    sections = args.only or ["e2e", "naive", "rate", "queue"]
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        bench = Bench(Path(tmp))
        if args.appendfsync:
            bench.redis.config_set("appendfsync", args.appendfsync)
        print(f"redis appendfsync: {bench.redis.config_get('appendfsync')['appendfsync']}")
        try:
            if "e2e" in sections:
                section_e2e(bench, args.recipients or [10_000, 100_000], args.latency or [0, 200],
                            args.processes, args.concurrency)
            if "naive" in sections:
                section_naive(bench, args.naive_recipients, args.processes)
            if "rate" in sections:
                section_rate(bench, 200, 2000)
            if "queue" in sections:
                section_queue(bench, args.queue_recipients)
        finally:
            bench.redis_server.stop()


if __name__ == "__main__":
    main()
