"""The send path of one batch: claim rows atomically, send them at once, write outcomes in batches.

One `Sender` lives in each worker process, with one event loop, one async Redis client and one HTTP
client per API URL (keep-alive). A batch task hands it (run, rows, task ID). Each delivery of a batch
is an owner `TASK:NONCE` (worker.scripts): a row an earlier delivery of the same task claimed but never
finished reads as `uncertain` instead of being sent again.

Why a batch never outlives the broker's visibility timeout (so Celery never redelivers a live batch):
- the rate token, the free connection slot and any 429 hold are waited for *before* a row is claimed,
  so a claimed row is on the wire at once;
- a batch claims for a third of the visibility timeout, then hands its untried rows back to the run's
  `due` set (the sweepers queue them again), and each request is cut off after `send_timeout`;
- writes that meet a Redis outage are retried for a bounded time; while outcomes cannot be written no
  new row is claimed.
A claim is made durable before its send when the deployment asks for it (worker.durability).
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from worker import keys
from worker.client import CoupontoolsClient, Credentials
from worker.durability import Durability, detect_durability
from worker.errors import CoupontoolsError
from worker.faults import crash_point
from worker.logs import mask
from worker.metrics import Tally
from worker.outcomes import Outcome, after_error, sent
from worker.plan import Plan
from worker.policy import Policy, policy_from_json
from worker.runs import RunSpec
from worker.scripts import AsyncScripts, Call, ClaimAnswer, Claimed, Ops
from worker.settings import SANDBOX_CREDENTIALS, Settings, is_allowed_api_url
from worker.statuses import SENDING_STATES, RunState, Status

CLAIM_CHUNK = 100  # rows claimed per script call at most
FLUSH_SIZE = 500  # outcomes written per script call at most
WATCH_EVERY = 0.25  # seconds between looks at the run's state (pause, cancel) and hold (429)
DEFAULT_HOLD = 1.0  # seconds the run waits after a 429 without Retry-After
SLOW_DOWN_FOR = 30  # seconds a shared rate runs at half speed after a 429
UNCONFIRMED_BACKOFF = 5.0  # seconds before rows whose claim could not be made durable go again
REDIS_TROUBLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                 redis.exceptions.ReadOnlyError, OSError)

log = structlog.get_logger("dispatch.engine")
T = TypeVar("T")


@dataclass
class BatchResult:
    stopped: bool = False  # this batch aborted the run
    tally: dict[str, int] = field(default_factory=dict)


class ClaimNotDurable(Exception):
    """Redis could not confirm a claim on disk or on enough replicas in time."""


class SharedRateLimiter:
    """A token bucket in Redis shared by every worker; tokens are fetched a few at a time."""

    def __init__(self, scripts: AsyncScripts, key: str, rate: float) -> None:
        self.scripts, self.key, self.rate = scripts, key, rate
        self.burst = max(1.0, rate / 50)  # any 1 s window sees at most rate + burst sends
        self.tokens = 0
        self.lock = asyncio.Lock()
        self.on_wait: Callable[[], None] | None = None  # told each time a take() has to wait (metrics)

    async def take(self, want: int, deadline: float) -> int:
        """Between 1 and `want` tokens, waiting for the first; 0 if `deadline` (monotonic) comes first."""
        async with self.lock:
            waited = False
            while self.tokens <= 0:
                granted, wait = await self.scripts(Ops.take_tokens(self.key, self.rate, self.burst, self.burst))
                self.tokens += granted
                if self.tokens > 0:
                    break
                if time.monotonic() + wait > deadline:
                    return 0
                if not waited and self.on_wait is not None:
                    self.on_wait()
                waited = True
                await asyncio.sleep(max(wait, 0.001))
            given = min(want, self.tokens)
            self.tokens -= given
            return given

    async def slow_down(self) -> None:
        """The API said 429: every worker sharing this bucket runs at half rate for a while."""
        await self.scripts(Ops.slow_down(self.key, SLOW_DOWN_FOR))


class Sender:
    """Per-process sending machinery; `run_batch` is what a batch task calls."""

    def __init__(self, settings: Settings, policy: Policy, redis_url: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings, self.policy = settings, policy
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
        self.scripts = AsyncScripts(self.redis)
        self.transport = transport
        self.clients: dict[tuple[str, str], CoupontoolsClient] = {}
        self.run_policies: dict[str, Policy] = {}
        self.plans: dict[tuple, Plan] = {}
        self.durability: Durability | None = None

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        await self.redis.aclose()

    async def run_batch(self, run_id: str, rows: list[int], task_id: str) -> BatchResult:
        meta = await self.redis.hgetall(keys.run(run_id))
        if not meta:
            log.warning("batch for an unknown run dropped", run_id=run_id, batch=task_id)
            return BatchResult()
        if self.durability is None:
            self.durability = await detect_durability(self.redis, self.settings.min_replicas)
        owner = f"{task_id}:{secrets.token_hex(4)}"
        batch = _Batch(self, run_id, RunSpec.from_hash(meta), owner, list(dict.fromkeys(rows)))
        died_before = await self.redis.hincrby(keys.deliveries(run_id), task_id, 1) - 1
        await self.redis.expire(keys.deliveries(run_id), 30 * 86400)
        try:
            if died_before >= self.settings.max_deliveries:
                return await batch.end_as_poison(died_before)
            if not batch.spec.sandbox and batch.spec.api_url and not is_allowed_api_url(self.settings,
                                                                                      batch.spec.api_url):
                return await batch.abort_run(f"the run names the API URL {batch.spec.api_url}, which this "
                                             "worker's credentials may not be sent to (COUPONTOOLS_API_URL, "
                                             "DISPATCH_ALLOWED_API_URLS)")
            credentials = self.credentials(batch.spec)
            if credentials is None:
                return await batch.abort_run("this worker has no Coupontools credentials: set "
                                             "COUPONTOOLS_CLIENT_ID and COUPONTOOLS_CLIENT_SECRET")
            return await batch.run(self.client(batch.spec, credentials))
        finally:  # only a delivery that died (no finally) stays counted towards the poison limit
            await _quietly(self.redis.hincrby(keys.deliveries(run_id), task_id, -1))

    def plan_for(self, spec: RunSpec) -> Plan:
        """The run's message plan (template, window), parsed once per process."""
        key = (spec.body, spec.subject, spec.channel, spec.window, spec.timezone, spec.fields, spec.address_field)
        if key not in self.plans:
            self.plans[key] = Plan(spec, self.settings.sms_url_length)
        return self.plans[key]

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
            connect = min(self.settings.connect_timeout, self.settings.send_timeout / 2)
            read = min(self.settings.request_timeout, self.settings.send_timeout - connect)
            timeout = httpx.Timeout(read, connect=connect, pool=None)
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
    """One delivery of a batch: its claimed rows, its outcomes waiting to be written, its run's state."""

    def __init__(self, sender: Sender, run_id: str, spec: RunSpec, owner: str, rows: list[int]) -> None:
        settings = sender.settings
        self.sender, self.run_id, self.spec, self.owner, self.rows = sender, run_id, spec, owner, rows
        self.ops = Ops(run_id, spec.channel)
        self.scripts = sender.scripts
        self.policy = sender.policy_for(spec)
        self.plan = sender.plan_for(spec)
        self.static_text = self.plan.static_text  # the message when it is the same for every row
        self.limiter = sender.limiter(run_id, spec)
        self.tally = Tally()  # metrics of this batch, added to Redis with its outcome writes
        if self.limiter is not None:
            self.limiter.on_wait = self.tally.rate_wait
        self.client: CoupontoolsClient | None = None
        self.state = RunState.RUNNING
        self.hold_until = 0.0
        self.unsent: set[int] = set()  # claimed rows not yet handed to the API
        self.outcomes: list[Outcome] = []
        self.in_flight: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.flush_lock = asyncio.Lock()
        self.has_outcomes = asyncio.Event()
        self.closing = False
        self.redis_down = False  # the last write met a Redis outage: claim nothing until one succeeds
        self.result = BatchResult()
        self.deadline = time.monotonic() + settings.claim_window
        self.patience = settings.visibility_timeout / 6  # seconds a write is retried through an outage
        self.lease_for = float(settings.visibility_timeout)
        self.log = log.bind(run_id=run_id, batch=owner)

    @property
    def sending(self) -> bool:
        return self.state in SENDING_STATES

    # -- the batch's life -------------------------------------------------------------------------
    async def run(self, client: CoupontoolsClient) -> BatchResult:
        self.client = client
        await self._patiently(self._renew_lease)
        watcher = asyncio.create_task(self._watch())
        flusher = asyncio.create_task(self._flush_continuously())
        try:
            await self._send_all()
        finally:
            await self._drain_sends()  # every request made gets its outcome recorded
            watcher.cancel()
            await _quietly(self._patiently(self._release_unsent))
            self.closing = True  # never cancel the flusher: a write it has begun must finish
            self.has_outcomes.set()
            await flusher
            await _quietly(self.tally.flush(self.sender.redis))
            await _quietly(self.sender.redis.zrem(keys.leases(self.run_id), self.owner))
        self.log.info("batch done", rows=len(self.rows), **self.result.tally)
        return self.result

    async def _send_all(self) -> None:
        position = 0
        while position < len(self.rows):
            if not await self._ready_to_claim():
                await self._defer(self.rows[position:], max(time.time(), self.hold_until))
                return
            size = await self._take_capacity(min(self._claim_chunk(), len(self.rows) - position))
            if size == 0:
                await self._defer(self.rows[position:], time.time())
                return
            part = self.rows[position:position + size]
            try:
                claimed = await self._claim(part)
            except ClaimNotDurable:
                self._give_back(size)
                await self._defer(self.rows[position + size:], time.time() + UNCONFIRMED_BACKOFF)
                return
            position += size
            self._give_back(size - len(claimed))
            if claimed:
                crash_point("after_claim")
            texts = await self._texts(claimed)
            for item in claimed:
                text = texts.get(item.row, self.static_text)
                if text is None:
                    self._give_back(1)  # held back: it waits for its window, or cannot be sent
                else:
                    self._start_send(item, text)

    def _claim_chunk(self) -> int:
        size = min(CLAIM_CHUNK, self.sender.settings.concurrency)
        if self.spec.rate:
            size = min(size, max(1, int(self.spec.rate / 4)))
        return size

    async def _ready_to_claim(self) -> bool:
        """Wait out a 429 hold and a Redis outage before claiming; False once the claim window ends."""
        while True:
            now = time.monotonic()
            if now > self.deadline:
                return False
            if not self.sending:
                return True  # the claim sets the rows aside (paused) or ends them (stopped)
            hold = self.hold_until - time.time()
            if hold > 0 and now + hold > self.deadline:
                return False  # the hold outlasts this batch: hand the rows back for when it ends
            if hold <= 0 and not self.redis_down:
                return True
            await asyncio.sleep(min(max(hold, 0.05), WATCH_EVERY))

    async def _take_capacity(self, want: int) -> int:
        """Connection slots (and rate tokens) for up to `want` sends: at least one, or 0 at the deadline."""
        await self.slots.acquire()
        taken = 1
        while taken < want and not self.slots.locked():
            await self.slots.acquire()
            taken += 1
        if self.limiter is not None and self.sending:
            granted = await self.limiter.take(taken, self.deadline)
            self._give_back(taken - granted)
            taken = granted
        return taken

    def _give_back(self, slots: int) -> None:
        for _ in range(slots):
            self.slots.release()

    async def _texts(self, claimed: list[Claimed]) -> dict[int, str | None]:
        """Each claimed row's message, rendered from its stored fields; a row outside its send window
        (it closed since the row was queued) is finished as `waiting` until it opens again."""
        if not claimed or (self.static_text is not None and self.plan.window is None):
            return {}
        stored = [None] * len(claimed)
        if self.plan.needs_fields:
            stored = await self._patiently(lambda: self.sender.redis.hmget(keys.row_fields(self.run_id),
                                                                           [c.row for c in claimed]))
        now, texts = time.time(), {}
        for item, data in zip(claimed, stored):
            fate = self.plan.at_send(item.recipient, data, now)
            texts[item.row] = fate.text
            if fate.text is None:
                self.unsent.discard(item.row)
                held = (Outcome(item.row, Status.INVALID, 0, fate.invalid) if fate.invalid
                        else Outcome(item.row, Status.WAITING, 0, "", fate.due))
                self.outcomes.append(held)
                self.has_outcomes.set()
        return texts

    def _start_send(self, item: Claimed, text: str) -> None:
        self.unsent.discard(item.row)
        task = asyncio.create_task(self._send_one(item.row, item.recipient, item.attempts, text))
        self.in_flight.add(task)
        task.add_done_callback(self._sent_one)

    def _sent_one(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self.slots.release()

    async def _drain_sends(self) -> None:
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)

    # -- claiming ---------------------------------------------------------------------------------
    async def _claim(self, rows: list[int]) -> list[Claimed]:
        """Claim rows (a claim retried after a lost answer hands back what it took: same owner)."""
        call = self.ops.claim(self.owner, time.time(), rows)
        answer, waited = await self._patiently(lambda: self._claim_durably(call))
        self.state = answer.state
        self._note_hold(answer.hold_ms)
        self.unsent.update(item.row for item in answer.claimed)
        if answer.claimed and not self._confirmed(waited):
            await self._patiently(lambda: self._release([c.row for c in answer.claimed],
                                                        time.time() + UNCONFIRMED_BACKOFF))
            raise ClaimNotDurable()
        return answer.claimed

    async def _claim_durably(self, call: Call) -> tuple[ClaimAnswer, object]:
        """The claim, followed on the same connection by the wait that makes it durable, if any."""
        durability = self.sender.durability
        if durability is None or not durability.needs_wait:
            return await self.scripts(call), None
        async with self.sender.redis.pipeline(transaction=False) as pipe:
            await self.scripts.queue(call, pipe)
            durability.queue_wait(pipe)
            raw, waited = await pipe.execute()
        return call.parse(raw), waited

    def _confirmed(self, waited: object) -> bool:
        durability = self.sender.durability
        if waited is None or durability is None or durability.confirms(waited):
            return True
        self.log.warning("claim not confirmed durable; its rows go again later", wanted=durability.describe(),
                         got=str(waited))
        return False

    # -- sending ----------------------------------------------------------------------------------
    async def _send_one(self, row: int, recipient: str, attempts: int, text: str) -> None:
        try:
            await self._call_api(recipient, text)
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

    async def _call_api(self, recipient: str, text: str) -> None:
        started = time.perf_counter()
        try:
            if self.spec.channel == "sms":
                await self.client.send_sms(self.spec.directory, recipient, text or None)
            else:
                await self.client.send_email(self.spec.directory, recipient, text or None)
        finally:
            self.tally.api_call(self.spec.channel, time.perf_counter() - started)

    async def _after_error(self, row: int, recipient: str, error: CoupontoolsError, outcome: Outcome) -> None:
        self.log.info("send failed", row=row, recipient=mask(recipient), code=error.code,
                      http_status=error.http_status, error_class=str(outcome.error_class),
                      status=str(outcome.status))
        try:
            if error.http_status == 429:
                await self._hold_run(error.retry_after or DEFAULT_HOLD)
                if self.limiter is not None:
                    await self.limiter.slow_down()
            if outcome.stops_run and self.sending:
                await self._stop_run(f"error {error.code or error.http_status}: {error.message}")
        except REDIS_TROUBLE as exc:  # the outcome itself is recorded; the flusher writes it later
            self.log.warning("could not tell the run about an error", error=f"{type(exc).__name__}")

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.tally.send(self.spec.channel, outcome.status, outcome.code)
        self.result.tally[outcome.status] = self.result.tally.get(outcome.status, 0) + 1
        self.has_outcomes.set()

    # -- writing ----------------------------------------------------------------------------------
    async def _flush(self) -> None:
        async with self.flush_lock:
            if not self.outcomes:
                return
            batch = self.outcomes[:FLUSH_SIZE]
            crash_point("before_outcome_write")
            await self._patiently(lambda: self.scripts(self.ops.finish(self.owner, time.time(), batch)))
            del self.outcomes[:len(batch)]
            await _quietly(self.tally.flush(self.sender.redis))  # one pipelined call beside the outcomes

    async def _flush_continuously(self) -> None:
        """Group commit: write whatever outcomes arrived while the previous write was under way."""
        while True:
            await self.has_outcomes.wait()
            self.has_outcomes.clear()
            try:
                while self.outcomes:
                    await self._flush()
            except REDIS_TROUBLE:
                self.log.error("outcomes could not be written; their rows will read uncertain",
                               rows=len(self.outcomes))
                if self.closing:
                    return
                continue
            if self.closing:
                return

    async def _patiently(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write()`, retried through a Redis outage for a bounded time (every caller is idempotent)."""
        give_up = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                result = await write()
            except REDIS_TROUBLE as exc:
                self.redis_down = True
                if time.monotonic() + delay > give_up:
                    raise
                self.log.warning("Redis did not answer; trying again", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                self.redis_down = False
                return result

    async def _release(self, rows: list[int], when: float) -> None:
        await self.scripts(self.ops.release(self.owner, time.time(), when, rows))
        self.unsent.difference_update(rows)

    async def _release_unsent(self) -> None:
        if self.unsent:
            await self._release(sorted(self.unsent), time.time())

    async def _defer(self, rows: list[int], when: float) -> None:
        """Hand untried rows back to the run's `due` set (the sweepers queue them again at `when`)."""
        if rows:
            await self._patiently(lambda: self.scripts(self.ops.defer(time.time(), when, rows)))

    # -- following the run ------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Follow the run's state and 429 hold (pause and cancel act within a second); renew the lease."""
        renew_every = self.lease_for / 6
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                state, hold_ms = await asyncio.gather(
                    self.sender.redis.hget(keys.run(self.run_id), "state"),
                    self.sender.redis.pttl(keys.hold(self.run_id)))
                self.state = state or RunState.CANCELLED
                self._note_hold(int(hold_ms))
                if time.monotonic() - renewed > renew_every:
                    await self._renew_lease()
                    renewed = time.monotonic()
            except REDIS_TROUBLE:
                continue

    async def _renew_lease(self) -> None:
        await self.sender.redis.zadd(keys.leases(self.run_id), {self.owner: time.time() + self.lease_for})

    def _note_hold(self, hold_ms: int) -> None:
        if hold_ms > 0:
            self.hold_until = max(self.hold_until, time.time() + hold_ms / 1000)

    async def _hold_run(self, seconds: float) -> None:
        """A 429 slows the whole run: every worker waits this long before its next claim."""
        self._note_hold(int(seconds * 1000))
        self.tally.hold_429()
        await self.sender.redis.set(keys.hold(self.run_id), "429", px=max(1, int(seconds * 1000)))

    async def _stop_run(self, reason: str) -> None:
        self.state = RunState.ABORTED
        changed = await self.scripts(self.ops.stop(RunState.ABORTED, reason, time.time()))
        if changed:
            self.result.stopped = True
            self.log.warning("run aborted", reason=reason)

    # -- batches that send nothing ------------------------------------------------------------------
    async def abort_run(self, reason: str) -> BatchResult:
        await self._stop_run(reason)
        await self.scripts(self.ops.claim(self.owner, time.time(), self.rows))
        return self.result

    async def end_as_poison(self, died: int) -> BatchResult:
        """A batch whose deliveries kept dying: its untried rows end `failed`, never sent again."""
        message = f"the batch's worker died {died} times while sending it; not sent again"
        for start in range(0, len(self.rows), CLAIM_CHUNK):
            answer = await self.scripts(self.ops.claim(self.owner, time.time(),
                                                       self.rows[start:start + CLAIM_CHUNK]))
            self.outcomes.extend(Outcome(c.row, Status.FAILED, 0, message) for c in answer.claimed)
        while self.outcomes:
            await self._flush()
        self.log.error("poison batch ended", died=died)
        return self.result


async def _quietly(awaitable: Awaitable) -> None:
    """Best effort: bookkeeping that may fail during a Redis outage without harm."""
    try:
        await awaitable
    except REDIS_TROUBLE:
        pass
