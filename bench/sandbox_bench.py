"""How many /v3/send/sms requests a second the sandbox answers (it must never be a benchmark's bottleneck).

    python bench/sandbox_bench.py [--seconds 5] [--concurrency 100] [--request-log]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.sandbox import running_sandbox  # noqa: E402

HEADERS = {"X-Client-Id": "sandbox", "X-Client-Secret": "sandbox"}


async def hammer(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    """(answers, failures) from `concurrency` looping senders over `seconds`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        deadline = time.monotonic() + seconds

        async def sender(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                body = {"campaign": "dir_12345", "phone": f"+4479{n:03d}{i:06d}"}
                async with session.post(f"{url}/send/sms", json=body) as response:
                    await response.read()
                    counts[response.status != 200] += 1

        await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--request-log", action="store_true", help="also write the request log")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl" if args.request_log else None
        with running_sandbox(request_log=log) as url:
            asyncio.run(hammer(url, 0.5, args.concurrency))  # warm up
            started = time.monotonic()
            ok, failed = asyncio.run(hammer(url, args.seconds, args.concurrency))
            elapsed = time.monotonic() - started
    print(f"{ok / elapsed:,.0f} requests/s ({ok} answered, {failed} failed, "
          f"{args.concurrency} concurrent, {elapsed:.1f} s, request log {'on' if log else 'off'})")


if __name__ == "__main__":
    main()
