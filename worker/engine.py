"""The send path of one batch: claim rows atomically, send them concurrently, write outcomes in batches.

One `Sender` lives in each worker process, with one event loop, one async Redis client and one HTTP
client per API URL (keep-alive). A batch task hands it (run, rows, owner); the owner is the task ID,
which a redelivered message keeps, so a row this owner claimed but never finished reads as
`uncertain` instead of being sent again (see worker.scripts).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis
import structlog

from worker import keys, scripts
from worker.client import CoupontoolsClient, Credentials
from worker.errors import CoupontoolsError
from worker.faults import crash_point
from worker.logs import mask
from worker.outcomes import Outcome, after_error, sent
from worker.policy import Policy, policy_from_json
from worker.runs import RunSpec
from worker.settings import SANDBOX_CREDENTIALS, Settings
from worker.statuses import SENDING_STATES, RunState, Status

CLAIM_CHUNK = 100  # rows claimed per script call
FLUSH_SIZE = 500  # outcomes written per script call at most
WATCH_EVERY = 0.25  # seconds between looks at the run's state (pause, cancel) and hold (429)
DEFAULT_HOLD = 1.0  # seconds the run waits after a 429 without Retry-After
SLOW_DOWN_FOR = 30  # seconds a shared rate runs at half speed after a 429

log = structlog.get_logger("dispatch.engine")


@dataclass
class BatchResult:
    leftover: list[int] = field(default_factory=list)  # rows not claimed before the deadline
    stopped: bool = False  # this batch aborted the run
    tally: dict[str, int] = field(default_factory=dict)


class SharedRateLimiter:
    """A token bucket in Redis shared by every worker; tokens are fetched a few at a time."""

    def __init__(self, scripts: dict, key: str, rate: float) -> None:
        self.script, self.slow_script, self.key, self.rate = scripts["take_tokens"], scripts["slow_down"], key, rate
        self.burst = max(1.0, rate / 50)  # any 1 s window sees at most rate + burst sends
        self.tokens = 0
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while self.tokens <= 0:
                granted, wait = await self.script(keys=[self.key], args=[self.rate, self.burst, self.burst])
                self.tokens += int(granted)
                if self.tokens <= 0:
                    await asyncio.sleep(max(float(wait), 0.001))
            self.tokens -= 1

    async def slow_down(self) -> None:
        """The API said 429: every worker sharing this bucket runs at half rate for a while."""
        await self.slow_script(keys=[self.key], args=[SLOW_DOWN_FOR])


class Sender:
    """Per-process sending machinery; `run_batch` is what a batch task calls."""

    def __init__(self, settings: Settings, policy: Policy, redis_url: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings, self.policy = settings, policy
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
        self.scripts = scripts.register(self.redis)
        self.transport = transport
        self.clients: dict[tuple[str, str], CoupontoolsClient] = {}
        self.run_policies: dict[str, Policy] = {}

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        await self.redis.aclose()

    async def run_batch(self, run_id: str, rows: list[int], owner: str) -> BatchResult:
        meta = await self.redis.hgetall(keys.run(run_id))
        if not meta:
            log.warning("batch for an unknown run dropped", run_id=run_id, batch=owner)
            return BatchResult()
        batch = _Batch(self, run_id, RunSpec.from_hash(meta), owner, rows)
        deliveries = await self.redis.hincrby(keys.deliveries(run_id), owner, 1)
        await self.redis.expire(keys.deliveries(run_id), 30 * 86400)
        if deliveries > self.settings.max_deliveries:
            return await batch.end_as_poison(deliveries)
        credentials = self.credentials(batch.spec)
        if credentials is None:
            return await batch.abort_run("this worker has no Coupontools credentials: set "
                                         "COUPONTOOLS_CLIENT_ID and COUPONTOOLS_CLIENT_SECRET")
        return await batch.run(self.client(batch.spec, credentials))

    def policy_for(self, spec: RunSpec) -> Policy:
        """The policy the run was sent with, else this worker's."""
        if not spec.policy:
            return self.policy
        if spec.policy not in self.run_policies:
            self.run_policies[spec.policy] = policy_from_json(spec.policy)
        return self.run_policies[spec.policy]

    def credentials(self, spec: RunSpec) -> Credentials | None:
        if spec.sandbox:
            return Credentials(*SANDBOX_CREDENTIALS)
        if self.settings.client_id and self.settings.client_secret:
            return Credentials(self.settings.client_id, self.settings.client_secret)
        return None

    def client(self, spec: RunSpec, credentials: Credentials) -> CoupontoolsClient:
        url = spec.api_url or self.settings.api_url
        key = (url, credentials.client_id)
        if key not in self.clients:
            timeout = httpx.Timeout(self.settings.request_timeout, connect=self.settings.connect_timeout,
                                    pool=None)
            self.clients[key] = CoupontoolsClient(base_url=url, credentials=credentials, timeout=timeout,
                                                  max_connections=self.settings.concurrency,
                                                  transport=self.transport)
        return self.clients[key]

    def limiter(self, run_id: str, spec: RunSpec) -> SharedRateLimiter | None:
        if spec.rate:
            return SharedRateLimiter(self.scripts, keys.rate(run_id), spec.rate)
        if self.settings.account_rate:
            return SharedRateLimiter(self.scripts, keys.rate("account"), self.settings.account_rate)
        return None


class _Batch:
    """One batch being sent: its claimed rows, its outcomes waiting to be written, its run's state."""

    def __init__(self, sender: Sender, run_id: str, spec: RunSpec, owner: str, rows: list[int]) -> None:
        self.sender, self.run_id, self.spec, self.owner, self.rows = sender, run_id, spec, owner, rows
        self.keys = keys.script_keys(run_id, spec.channel)
        self.scripts = sender.scripts
        self.policy = sender.policy_for(spec)
        self.limiter = sender.limiter(run_id, spec)
        self.client: CoupontoolsClient | None = None
        self.state = RunState.RUNNING
        self.hold_until = 0.0
        self.unsent: dict[int, tuple[str, int]] = {}  # claimed rows not yet handed to the API
        self.outcomes: list[Outcome] = []
        self.in_flight: set[asyncio.Task] = set()
        self.semaphore = asyncio.Semaphore(sender.settings.concurrency)
        self.flush_lock = asyncio.Lock()
        self.has_outcomes = asyncio.Event()
        self.closing = False
        self.result = BatchResult()
        self.deadline = time.monotonic() + sender.settings.visibility_timeout / 3
        self.log = log.bind(run_id=run_id, batch=owner)

    @property
    def sending(self) -> bool:
        return self.state in SENDING_STATES

    async def run(self, client: CoupontoolsClient) -> BatchResult:
        self.client = client
        watcher = asyncio.create_task(self._watch())
        flusher = asyncio.create_task(self._flush_continuously())
        try:
            await self._send_all()
            if self.in_flight:
                await asyncio.gather(*self.in_flight, return_exceptions=True)
        finally:
            watcher.cancel()
            await self._release_unsent()
            self.closing = True  # never cancel the flusher: a write it has begun must finish
            self.has_outcomes.set()
            await flusher
        self.log.info("batch done", rows=len(self.rows), leftover=len(self.result.leftover),
                      **self.result.tally)
        return self.result

    async def _send_all(self) -> None:
        chunk = self._claim_chunk()
        for start in range(0, len(self.rows), chunk):
            if time.monotonic() > self.deadline and self.sending:
                self.result.leftover = self.rows[start:]
                return
            claimed = await self._claim(self.rows[start:start + chunk])
            if claimed:
                crash_point("after_claim")
            for row, recipient, attempts in claimed:
                await self.semaphore.acquire()
                if not self.sending:
                    self.semaphore.release()
                    break
                await self._wait_turn()
                if not self.sending:
                    self.semaphore.release()
                    break
                del self.unsent[row]
                task = asyncio.create_task(self._send_one(row, recipient, attempts))
                self.in_flight.add(task)
                task.add_done_callback(self._sent_one)

    def _claim_chunk(self) -> int:
        size = min(CLAIM_CHUNK, self.sender.settings.concurrency)
        if self.spec.rate:
            size = min(size, max(1, int(self.spec.rate / 4)))
        return size

    async def _claim(self, rows: list[int]) -> list[tuple[int, str, int]]:
        answer = await self.scripts["claim"](keys=self.keys, args=[self.owner, time.time(), *rows])
        self.state = answer[0]
        self._note_hold(int(answer[1]))
        claimed = [(int(answer[i]), answer[i + 1], int(answer[i + 2])) for i in range(2, len(answer), 3)]
        for row, recipient, attempts in claimed:
            self.unsent[row] = (recipient, attempts)
        return claimed

    async def _wait_turn(self) -> None:
        """Wait out a 429 hold and the shared rate limit before one send."""
        while (pause := self.hold_until - time.time()) > 0 and self.sending:
            await asyncio.sleep(min(pause, WATCH_EVERY))
        if self.limiter is not None:
            await self.limiter.acquire()

    def _sent_one(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self.semaphore.release()

    async def _send_one(self, row: int, recipient: str, attempts: int) -> None:
        try:
            if self.spec.channel == "sms":
                await self.client.send_sms(self.spec.directory, recipient, self.spec.body or None)
            else:
                await self.client.send_email(self.spec.directory, recipient, self.spec.subject or None)
            crash_point("after_request")
            outcome = sent(row)
        except CoupontoolsError as error:
            outcome = after_error(row, attempts, error, self.policy)
            self._record(outcome)
            await self._after_error(row, recipient, error, outcome)
            return
        except Exception as error:  # a bug of ours after the request may have left: never resend
            self.log.exception("unexpected error while sending", row=row)
            outcome = Outcome(row, Status.UNCERTAIN, 0, f"internal error: {type(error).__name__}")
        self._record(outcome)

    async def _after_error(self, row: int, recipient: str, error: CoupontoolsError, outcome: Outcome) -> None:
        self.log.info("send failed", row=row, recipient=mask(recipient), code=error.code,
                      http_status=error.http_status, error_class=str(outcome.error_class),
                      status=str(outcome.status))
        if error.http_status == 429:
            await self._hold_run(error.retry_after or DEFAULT_HOLD)
            if self.limiter is not None:
                await self.limiter.slow_down()
        if outcome.stops_run and self.sending:
            await self._stop_run(f"error {error.code or error.http_status}: {error.message}")

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.result.tally[outcome.status] = self.result.tally.get(outcome.status, 0) + 1
        self.has_outcomes.set()

    async def _flush(self) -> None:
        async with self.flush_lock:
            if not self.outcomes:
                return
            batch, self.outcomes = self.outcomes[:FLUSH_SIZE], self.outcomes[FLUSH_SIZE:]
            crash_point("before_outcome_write")
            args: list[object] = [self.owner, time.time()]
            for o in batch:
                args += [o.row, o.status, o.code, o.message, o.due]
            await self.scripts["finish"](keys=self.keys, args=args)

    async def _flush_continuously(self) -> None:
        """Group commit: write whatever outcomes arrived while the previous write was under way."""
        while True:
            await self.has_outcomes.wait()
            self.has_outcomes.clear()
            while self.outcomes:
                await self._flush()
            if self.closing:
                return

    async def _watch(self) -> None:
        """Follow the run's state and 429 hold, so pause and cancel act within a second."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            state, hold_ms = await asyncio.gather(self.sender.redis.hget(keys.run(self.run_id), "state"),
                                                  self.sender.redis.pttl(keys.hold(self.run_id)))
            self.state = state or RunState.CANCELLED
            self._note_hold(int(hold_ms))

    def _note_hold(self, hold_ms: int) -> None:
        if hold_ms > 0:
            self.hold_until = max(self.hold_until, time.time() + hold_ms / 1000)

    async def _hold_run(self, seconds: float) -> None:
        """A 429 slows the whole run: every worker waits this long before its next send."""
        self._note_hold(int(seconds * 1000))
        await self.sender.redis.set(keys.hold(self.run_id), "429", px=max(1, int(seconds * 1000)))

    async def _stop_run(self, reason: str) -> None:
        self.state = RunState.ABORTED
        changed = await self.scripts["stop"](keys=self.keys, args=[RunState.ABORTED, reason, time.time()])
        if changed:
            self.result.stopped = True
            self.log.warning("run aborted", reason=reason)

    async def _release_unsent(self) -> None:
        if self.unsent:
            rows, self.unsent = list(self.unsent), {}
            await self.scripts["release"](keys=self.keys, args=[self.owner, time.time(), *rows])

    async def abort_run(self, reason: str) -> BatchResult:
        await self._stop_run(reason)
        await self.scripts["claim"](keys=self.keys, args=[self.owner, time.time(), *self.rows])
        return self.result

    async def end_as_poison(self, deliveries: int) -> BatchResult:
        """A batch whose worker died too often: its unfinished rows end `failed`, never sent again."""
        message = f"the batch was delivered {deliveries} times (its worker kept dying); not sent again"
        for start in range(0, len(self.rows), CLAIM_CHUNK):
            for row, _, _ in await self._claim(self.rows[start:start + CLAIM_CHUNK]):
                del self.unsent[row]
                self.outcomes.append(Outcome(row, Status.FAILED, 0, message))
        while self.outcomes:
            await self._flush()
        self.log.error("poison batch ended", deliveries=deliveries)
        return self.result
