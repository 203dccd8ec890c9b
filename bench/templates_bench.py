"""What personal messages cost: sends/s and Redis bytes per recipient, plain body vs a 2-field template.

    python -m bench.templates_bench [--recipients 50000] [--memory-recipients 100000]

The same campaign (one CSV with phone, first_name and city) runs end to end twice against the sandbox at
0 ms latency through the application layer (`Dispatch.start_from_file`, as `dispatch send` does): once
with `--body "Your coupon:"`, once with `--body "Hi {first_name}, your {city} coupon:"`. Then each is
recorded (no worker) on an empty Redis and the Redis memory per recipient is measured. Prints figures,
asserts nothing; every end-to-end run is checked against the sandbox's request log (bench.throughput).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import Bench, check_log, phone
from worker import keys
from worker.campaigns import Campaign, Dispatch
from worker.runs import Runs
from worker.sandbox import read_request_log, running_sandbox
from worker.settings import Settings

PLAIN = "Your coupon:"
TEMPLATED = "Hi {first_name}, your {city} coupon:"
CITIES = ("Leeds", "York", "Hull", "Bath", "Ely")


def write_campaign(path: Path, count: int) -> Path:
    """The campaign's CSV: phone and the two fields the template names."""
    with path.open("w", encoding="utf-8") as out:
        out.write("phone,first_name,city\n")
        for i in range(count):
            out.write(f"{phone(i)},Name{i % 997},{CITIES[i % len(CITIES)]}\n")
    return path


def dispatcher(bench: Bench) -> Dispatch:
    """The application layer as `dispatch send` builds it, on the bench's Redis."""
    return Dispatch(Settings.from_env(bench.env()), bench.publish)


def start(bench: Bench, csv: Path, body: str, url: str) -> str:
    campaign = Campaign(channel="sms", directory="dir_12345", body=body, sandbox=True, api_url=url)
    return dispatcher(bench).start_from_file(campaign, csv)


def timed_run(bench: Bench, csv: Path, body: str, url: str) -> tuple[str, float]:
    """Seconds from reading the file until every row is final (recording included, as for a user)."""
    runs = Runs(bench.redis)
    began = time.perf_counter()
    run_id = start(bench, csv, body, url)
    while not runs.status(run_id)["done"]:
        time.sleep(0.05)
    return run_id, time.perf_counter() - began


def texts_seen(log: Path) -> set[str]:
    return {line.get("text") for line in read_request_log(log)[:3] if line["path"] == "/v3/send/sms"}


def section_throughput(bench: Bench, count: int, processes: int, concurrency: int) -> None:
    print(f"\n== end to end, {count} recipients, sandbox 0 ms, 1 worker x {processes} processes ==")
    csv = write_campaign(bench.workdir / "campaign.csv", count)
    log = bench.workdir / "requests.log"
    rates = {}
    with running_sandbox({"latency_ms": 0}, request_log=log) as url:
        with bench.workers(1, processes, DISPATCH_CONCURRENCY=str(concurrency)):
            for name, body in (("plain", PLAIN), ("templated", TEMPLATED)):
                log.write_text("")
                run_id, seconds = timed_run(bench, csv, body, url)
                rates[name] = count / seconds
                print(f"{name:<10} {body!r:<40} {seconds:7.2f} s  {rates[name]:8.0f} sends/s")
                print("   ", check_log(log, Runs(bench.redis), run_id, count), "e.g.", sorted(texts_seen(log)))
    change = (rates["templated"] - rates["plain"]) / rates["plain"] * 100
    print(f"templated vs plain: {change:+.1f}% sends/s")


def run_bytes(bench: Bench, run_id: str) -> int:
    """MEMORY USAGE (every element counted) summed over the run's keys."""
    return sum(bench.redis.memory_usage(key, samples=0) or 0 for key in keys.run_keys(run_id))


def section_memory(bench: Bench, count: int) -> None:
    print(f"\n== Redis memory per recipient, {count} recipients recorded (no worker) ==")
    csv = write_campaign(bench.workdir / "memory.csv", count)
    per_row = {}
    with running_sandbox(None) as url:
        for name, body in (("plain", PLAIN), ("templated", TEMPLATED)):
            bench.redis.flushall()
            before = bench.redis.info("memory")["used_memory"]
            run_id = start(bench, csv, body, url)
            used = bench.redis.info("memory")["used_memory"] - before
            per_row[name] = run_bytes(bench, run_id) / count
            print(f"{name:<10} used_memory +{used / count:6.1f} B/recipient (batch messages included)  "
                  f"run keys {per_row[name]:6.1f} B/recipient  (fields hash: "
                  f"{bench.redis.hlen(keys.row_fields(run_id))} rows)")
    bench.redis.flushall()
    print(f"two template fields cost {per_row['templated'] - per_row['plain']:+.1f} B/recipient in the run's keys")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=50_000, help="end-to-end run size")
    parser.add_argument("--memory-recipients", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=250, help="in flight per worker process")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="dispatch-templates-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            section_throughput(bench, args.recipients, args.processes, args.concurrency)
            section_memory(bench, args.memory_recipients)
        finally:
            bench.redis_server.stop()


if __name__ == "__main__":
    main()
