"""Kill-recovery figures: a 3,000-recipient run, its worker SIGKILLed (main process and children) mid-way,
a second worker started at once. Prints time to completion after the kill, counts by status, recipients
delivered twice (from the sandbox's request log; must be 0) and the uncertain count.

    python bench/kill_recovery.py [--visibility-timeout 120] [--recipients 3000] [--latency 40]
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.throughput import Bench, verdicts  # noqa: E402
from worker.runs import Runs, RunSpec  # noqa: E402
from worker.sandbox import read_request_log, running_sandbox  # noqa: E402


def delivered(log: Path) -> collections.Counter:
    return collections.Counter(l["recipient"] for l in read_request_log(log)
                               if l["path"] == "/v3/send/sms" and l["result"] in ("ok", "drop"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visibility-timeout", type=int, default=120)
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--latency", type=int, default=40)
    args = parser.parse_args()
    env = {"DISPATCH_VISIBILITY_TIMEOUT": str(args.visibility_timeout), "DISPATCH_CONCURRENCY": "20",
           "DISPATCH_BATCH_SIZE": "500"}
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="dispatch-kill-") as tmp:
        bench = Bench(Path(tmp))
        log = Path(tmp) / "requests.log"
        try:
            with running_sandbox({"latency_ms": args.latency}, request_log=log) as url:
                bench.api_url = url
                runs = Runs(bench.redis, batch_size=500)
                with bench.workers(1, 2, **env) as first:
                    spec = RunSpec(channel="sms", directory="dir_12345", sandbox=True, api_url=url)
                    run_id = runs.create(spec, verdicts(args.recipients), bench.publish)
                    while sum(delivered(log).values()) < args.recipients // 3:
                        time.sleep(0.05)
                    os.killpg(first[0].pid, signal.SIGKILL)
                    killed = time.monotonic()
                    at_kill = sum(delivered(log).values())
                    bench.redis.delete("dispatch:workers")
                    with bench.workers(1, 2, **env):
                        while not runs.status(run_id)["done"]:
                            time.sleep(0.1)
                        recovery = time.monotonic() - killed
            status = runs.status(run_id)
            twice = sum(1 for n in delivered(log).values() if n > 1)
            print(f"visibility timeout {args.visibility_timeout} s, {args.recipients} recipients, "
                  f"killed after {at_kill} deliveries")
            print(f"completed {recovery:.1f} s after the kill; counts {status['counts']}; "
                  f"delivered twice {twice}; uncertain {status['counts'].get('uncertain', 0)}")
        finally:
            bench.redis_server.stop()


if __name__ == "__main__":
    main()
