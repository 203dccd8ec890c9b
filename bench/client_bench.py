"""HTTP stack benchmark: the same send/sms calls through each way the client can post, against the sandbox.

    python bench/client_bench.py [--requests 6000] [--concurrency 100]

Prints requests/s and client-side CPU microseconds per request for: our CoupontoolsClient (aiohttp
poster, the default), httpx over the httpx-aiohttp transport, httpx's own pool, and raw aiohttp.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import uvloop
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.client import CoupontoolsClient, Credentials  # noqa: E402
from worker.sandbox import running_sandbox  # noqa: E402

CREDS = Credentials("sandbox", "sandbox")


async def measure(client: CoupontoolsClient, requests: int, concurrency: int) -> tuple[float, float]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await client.send_sms("dir_12345", f"+4479{i:08d}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    await client.aclose()
    return requests / (time.perf_counter() - wall), (time.process_time() - cpu) / requests * 1e6


def stacks(url: str, concurrency: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return {
        "CoupontoolsClient (aiohttp poster)": lambda: CoupontoolsClient(
            base_url=url, credentials=CREDS, max_connections=concurrency),
        "httpx over httpx-aiohttp transport": lambda: CoupontoolsClient(
            base_url=url, credentials=CREDS, transport=AiohttpTransport(limits=limits)),
        "httpx own async pool": lambda: CoupontoolsClient(
            base_url=url, credentials=CREDS, transport=httpx.AsyncHTTPTransport(limits=limits)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    with running_sandbox(None) as url:
        for name, make in stacks(url, args.concurrency).items():
            rate, cpu = uvloop.run(measure(make(), args.requests, args.concurrency))
            print(f"{name:<38} {rate:7.0f} req/s  {cpu:5.0f} µs client CPU/request")


if __name__ == "__main__":
    main()
