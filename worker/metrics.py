"""Prometheus metrics shared by every worker process on every machine: counters live in Redis.

Writers accumulate in memory (`Tally`, one per batch) and add their counts to the HASH
`dispatch:metrics` in one pipelined call beside the batch's outcome writes, never a round trip per
send. `render(client)` reads that hash and the live state of open runs and returns the Prometheus
text exposition (`CONTENT_TYPE` is its media type) for the web service's `/metrics`.

Field names in the hash (`|`-separated; an empty code is "no error code"):
    sends|CHANNEL|STATUS|CODE         outcomes of API calls        dispatch_sends_total
    api|CHANNEL|le|BOUND, api|CHANNEL|sum, api|CHANNEL|count        dispatch_api_request_seconds
    rate_limiter_waits, holds_429                                    the two counters of those names
    webhooks|RESULT                   delivered, retried, failed   dispatch_webhook_deliveries_total
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import keys
from worker.redis_server import as_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds; +Inf implied
WORKER_FRESH = 5.0  # seconds: a heartbeat newer than this counts as a live worker
RESULTS = ("delivered", "retried", "failed")


# -- field names (the one place that spells them) ---------------------------------------------------
def sends_field(channel: str, status: str, code: int | None) -> str:
    return f"sends|{channel}|{status}|{code or ''}"


def webhook_field(result: str) -> str:
    return f"webhooks|{result}"


RATE_WAITS = "rate_limiter_waits"
HOLDS_429 = "holds_429"


def _bucket_of(seconds: float) -> str:
    for bound in BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


# -- writing ----------------------------------------------------------------------------------------
class Tally:
    """Counts of one batch, kept in memory until `flush` adds them to Redis."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sums: defaultdict[str, float] = defaultdict(float)

    def __bool__(self) -> bool:
        return bool(self.counts) or bool(self.sums)

    def send(self, channel: str, status: str, code: int | None) -> None:
        self.counts[sends_field(channel, status, code)] += 1

    def api_call(self, channel: str, seconds: float) -> None:
        self.counts[f"api|{channel}|le|{_bucket_of(seconds)}"] += 1
        self.counts[f"api|{channel}|count"] += 1
        self.sums[f"api|{channel}|sum"] += seconds

    def rate_wait(self) -> None:
        self.counts[RATE_WAITS] += 1

    def hold_429(self) -> None:
        self.counts[HOLDS_429] += 1

    def take(self) -> Tally:
        """The counts so far, leaving this tally empty."""
        taken = Tally()
        taken.counts, taken.sums = self.counts, self.sums
        self.counts, self.sums = Counter(), defaultdict(float)
        return taken

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        for name, value in other.sums.items():
            self.sums[name] += value

    def queue(self, pipe) -> None:
        """Add the increments to a (sync or asyncio) pipeline."""
        for name, n in self.counts.items():
            pipe.hincrby(keys.METRICS, name, n)
        for name, value in self.sums.items():
            pipe.hincrbyfloat(keys.METRICS, name, value)

    async def flush(self, client) -> None:
        """Add what was counted to Redis in one round trip (an asyncio client); kept on failure."""
        if not self:
            return
        taken = self.take()
        try:
            async with client.pipeline(transaction=False) as pipe:
                taken.queue(pipe)
                await pipe.execute()
        except BaseException:
            self.merge(taken)
            raise


# -- reading ----------------------------------------------------------------------------------------
def render(client: redis.Redis, now: float | None = None) -> bytes:
    """The Prometheus text exposition of every worker's counters and the open runs' gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(*_read(client, time.time() if now is None else now)))
    return generate_latest(registry)


def _read(client: redis.Redis, now: float) -> tuple[dict[str, str], Counter[str], int, int]:
    """Counters, open rows by status, live batch leases, live workers (two round trips)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS).smembers(keys.ACTIVE).zcount(keys.WORKERS, now - WORKER_FRESH, "+inf")
        counters, active, workers = pipe.execute()
    rows: Counter[str] = Counter()
    leases = 0
    if active:
        with client.pipeline(transaction=False) as pipe:
            for run_id in active:
                pipe.hgetall(keys.counts(as_text(run_id))).zcount(keys.leases(as_text(run_id)), f"({now}", "+inf")
            answers = pipe.execute()
        for counts, live in zip(answers[0::2], answers[1::2]):
            rows.update({as_text(status): int(n) for status, n in counts.items()})
            leases += int(live)
    return {as_text(k): as_text(v) for k, v in counters.items()}, rows, leases, int(workers)


class _Snapshot(Collector):
    """Metric families built from values read once (a fresh one per scrape)."""

    def __init__(self, counters: dict[str, str], rows: Counter[str], leases: int, workers: int) -> None:
        self.counters, self.rows, self.leases, self.workers = counters, rows, leases, workers

    def collect(self) -> Iterator[Metric]:
        yield self._sends()
        yield self._latency()
        yield self._single(RATE_WAITS, "dispatch_rate_limiter_waits", "Times a batch waited for a rate token.")
        yield self._single(HOLDS_429, "dispatch_429_holds", "Times the API answered 429 and a run was held.")
        yield self._webhooks()
        rows = GaugeMetricFamily("dispatch_rows", "Rows of open runs (in dispatch:active) by status.",
                                 labels=["run_state", "status"])
        for status, n in sorted(self.rows.items()):
            rows.add_metric(["open", status], n)
        yield rows
        yield GaugeMetricFamily("dispatch_batches_in_flight", "Batch deliveries holding a live lease.",
                                value=self.leases)
        yield GaugeMetricFamily("dispatch_workers", f"Workers whose heartbeat is newer than {WORKER_FRESH:g} s.",
                                value=self.workers)

    def _sends(self) -> CounterMetricFamily:
        family = CounterMetricFamily("dispatch_sends", "API calls by channel, outcome status and error code.",
                                     labels=["channel", "status", "code"])
        for name, value in sorted(self.counters.items()):
            parts = name.split("|")
            if parts[0] == "sends" and len(parts) == 4:
                family.add_metric(parts[1:], float(value))
        return family

    def _latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("dispatch_api_request_seconds", "Coupontools API call latency.",
                                       labels=["channel"])
        channels = sorted({name.split("|")[1] for name in self.counters if name.startswith("api|")})
        for channel in channels:
            running, buckets = 0.0, []
            for bound in [*map(repr, BUCKETS), "+Inf"]:
                running += float(self.counters.get(f"api|{channel}|le|{bound}", 0))
                buckets.append((bound, running))
            family.add_metric([channel], buckets, float(self.counters.get(f"api|{channel}|sum", 0)))
        return family

    def _single(self, field: str, name: str, documentation: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, documentation, value=float(self.counters.get(field, 0)))

    def _webhooks(self) -> CounterMetricFamily:
        family = CounterMetricFamily("dispatch_webhook_deliveries", "Webhook delivery attempts by result.",
                                     labels=["result"])
        for result in RESULTS:
            family.add_metric([result], float(self.counters.get(webhook_field(result), 0)))
        return family
