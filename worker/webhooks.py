"""Announce finished runs to a webhook, at least once, from an outbox in Redis that every worker delivers.

When the sweeper sees a run reach a final state (completed, aborted, cancelled) it calls
`announce_finished`: one Lua script marks the run `announced` (= the finished_at it announced) and
puts the delivery in the outbox (ZSET dispatch:webhooks scored by the next attempt, HASH
dispatch:webhook:ID), so a crash can neither lose nor duplicate the announcement. A run retried and
finished again has a new finished_at, so it is announced again under a new delivery ID.

Every worker's sweeper calls `deliver_in_background(client, settings)` (one ZRANGEBYSCORE when
nothing is due); due deliveries are POSTed by `deliver_due` from a thread of their own, so a slow
receiver never delays the sweeps. A delivery is leased (re-scored to now + LEASE) before its POST:
two workers never POST it at once, and one that dies mid-POST leaves it to be retried after the
lease. 2xx ends it; anything else is retried with backoff (5 s doubling, at most 1 h, jittered) for
24 hours from the first attempt, then recorded in dispatch:webhooks:failed.

The POST: `Content-Type: application/json`, `X-Dispatch-Delivery: ID` (the same on every retry), and
with DISPATCH_WEBHOOK_SECRET `X-Dispatch-Signature: t=UNIX_TIME,v1=HEX`, HEX = HMAC-SHA256(secret,
f"{t}.{body}") over the exact body bytes. The body: {"event": "run.finished", "run", "state",
"reason", "counts", "finished_at"}.

Receivers check a delivery with `verify_signature(secret, header, body, now)` (Python), or by
recomputing the HMAC over f"{t}." + raw body, comparing in constant time and rejecting a `t` more
than 5 minutes away from their clock; the same X-Dispatch-Delivery may arrive more than once.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import redis
import structlog

from worker import keys, metrics
from worker.redis_server import as_text
from worker.settings import Settings

EVENT = "run.finished"
TIMEOUT = 10.0  # seconds for one POST
LEASE = 60.0  # seconds a delivery is reserved for the worker POSTing it
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 3600.0
GIVE_UP_AFTER = 24 * 3600.0  # seconds from the first attempt
PER_PASS = 20  # deliveries taken per pass at most
FAILED_KEPT = 1000  # failed deliveries remembered (dispatch:webhooks:failed)
FAILED_TTL = 7 * 86400  # seconds a failed delivery's hash is kept for inspection
SIGNATURE_TOLERANCE = 300
log = structlog.get_logger("dispatch.webhooks")

ENQUEUE = r"""
-- KEYS: run, outbox, delivery; ARGV: state, finished_at, delivery ID, url, body, now, run ID
local current = redis.call('HMGET', KEYS[1], 'state', 'finished_at', 'announced')
if current[1] ~= ARGV[1] or current[2] ~= ARGV[2] then return -1 end
if current[3] == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'announced', ARGV[2])
redis.call('HSET', KEYS[3], 'url', ARGV[4], 'body', ARGV[5], 'run', ARGV[7], 'attempts', 0, 'first_at', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
return 1
"""

TAKE = r"""
-- KEYS: outbox, delivery; ARGV: delivery ID, now, lease until, lease token
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'lease', ARGV[4])
return redis.call('HMGET', KEYS[2], 'url', 'body', 'first_at', 'attempts', 'run')
"""

SETTLE = r"""
-- KEYS: outbox, delivery, failed, metrics; ARGV: delivery ID, result, lease token, next attempt, now,
-- error, metric field, failed kept, failed TTL
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HEXISTS', KEYS[2], 'failed_at') == 1 then return 0 end
if ARGV[2] ~= 'delivered' and redis.call('HGET', KEYS[2], 'lease') ~= ARGV[3] then return 0 end
redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
if ARGV[2] == 'delivered' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
elseif ARGV[2] == 'retried' then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[4], ARGV[1])
  redis.call('HSET', KEYS[2], 'last_error', ARGV[6], 'last_at', ARGV[5])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], 'last_error', ARGV[6], 'last_at', ARGV[5], 'failed_at', ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[8]) - 1)
end
return 1
"""


@dataclass(frozen=True)
class Taken:
    """A delivery leased for one attempt."""

    id: str
    url: str
    body: str
    first_at: float
    attempts: int
    run: str
    token: str


# -- announcing -------------------------------------------------------------------------------------
def delivery_id(run_id: str, finished_at: str) -> str:
    """Stable for one finish of one run (the same on every retry), new when the run finishes again."""
    return "wh_" + hashlib.sha256(f"{run_id}.{finished_at}".encode()).hexdigest()[:32]


def announcement(run_id: str, meta: dict[str, str], counts: dict[str, int]) -> str:
    return json.dumps({"event": EVENT, "run": run_id, "state": meta.get("state"), "reason": meta.get("reason", ""),
                       "counts": counts, "finished_at": float(meta["finished_at"])}, separators=(",", ":"))


def announce_finished(client: redis.Redis, run_id: str, meta: dict[str, str], default_url: str | None = None,
                      now: float | None = None) -> str | None:
    """Queue the announcement of a finished run once (the sweeper calls it before the run leaves
    dispatch:active); its delivery ID when queued now, else None (no URL applies, or announced before).
    The run's own webhook_url wins over `default_url` (the worker's DISPATCH_WEBHOOK_URL)."""
    finished_at = meta.get("finished_at")
    if not finished_at or meta.get("announced") == finished_at:
        return None
    url = meta.get("webhook_url") or default_url
    if not url:
        return None
    raw = client.hgetall(keys.counts(run_id))
    counts = {as_text(s): int(n) for s, n in raw.items() if int(n) > 0}
    ident = delivery_id(run_id, finished_at)
    queued = client.register_script(ENQUEUE)(
        keys=[keys.run(run_id), keys.WEBHOOKS, keys.webhook(ident)],
        args=[meta.get("state", ""), finished_at, ident, url, announcement(run_id, meta, counts),
              time.time() if now is None else now, run_id])
    if int(queued) != 1:
        return None
    log.info("run finish announcement queued", run_id=run_id, delivery=ident, url=safe_url(url))
    return ident


# -- signing ----------------------------------------------------------------------------------------
def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Dispatch-Signature header value for `body` sent at `timestamp`."""
    return f"t={timestamp},v1={_hmac(secret, timestamp, body)}"


def _hmac(secret: str, timestamp: int | str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, header: str, body: bytes | str, now: float | None = None,
                     tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """Whether `header` (X-Dispatch-Signature) signs `body` (the raw bytes received) with `secret`,
    made within `tolerance` seconds of `now`."""
    body = body.encode() if isinstance(body, str) else body
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _hmac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


# -- delivering -------------------------------------------------------------------------------------
_courier: threading.Thread | None = None
_courier_lock = threading.Lock()
_warned_unsigned = False


def deliver_in_background(client: redis.Redis, settings: Settings) -> bool:
    """What each sweep calls: start a delivery thread when something is due and none runs in this
    process (one ZRANGEBYSCORE when nothing is due). True when a thread was started."""
    global _courier
    with _courier_lock:
        if _courier is not None and _courier.is_alive():
            return False
        if not client.zrangebyscore(keys.WEBHOOKS, "-inf", time.time(), start=0, num=1):
            return False
        _courier = threading.Thread(target=_deliver_quietly, args=(client, settings.webhook_secret),
                                    name="dispatch-webhooks", daemon=True)
        _courier.start()
        return True


def _deliver_quietly(client: redis.Redis, secret: str | None) -> None:
    try:
        deliver_due(client, secret)
    except Exception:  # a Redis outage: the next sweep starts another pass
        log.exception("webhook deliveries failed")


def deliver_due(client: redis.Redis, secret: str | None, *, now: float | None = None,
                http: httpx.Client | None = None, lease: float = LEASE, limit: int = PER_PASS,
                jitter: Callable[[], float] = random.random) -> Counter[str]:
    """POST the deliveries due at `now` (at most `limit`); how many ended delivered, retried, failed."""
    now = time.time() if now is None else now
    results: Counter[str] = Counter()
    due = client.zrangebyscore(keys.WEBHOOKS, "-inf", now, start=0, num=limit)
    if not due:
        return results
    _warn_if_unsigned(secret)
    own = http is None
    http = http or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    try:
        for ident in due:
            taken = take(client, as_text(ident), now, lease)
            if taken is not None:
                results[_attempt(client, http, taken, secret, now, jitter)] += 1
    finally:
        if own:
            http.close()
    return results


def take(client: redis.Redis, ident: str, now: float, lease: float = LEASE) -> Taken | None:
    """Lease one due delivery for an attempt (None when it is not due or another worker has it)."""
    token = secrets.token_hex(8)
    got = client.register_script(TAKE)(keys=[keys.WEBHOOKS, keys.webhook(ident)],
                                       args=[ident, now, now + lease, token])
    if not got:
        return None
    url, body, first_at, attempts, run_id = (as_text(x) if x is not None else "" for x in got)
    return Taken(ident, url, body, float(first_at or now), int(attempts or 1), run_id, token)


def _attempt(client: redis.Redis, http: httpx.Client, taken: Taken, secret: str | None, now: float,
             jitter: Callable[[], float]) -> str:
    body = taken.body.encode()
    headers = {"Content-Type": "application/json", "X-Dispatch-Delivery": taken.id}
    if secret:
        headers["X-Dispatch-Signature"] = sign(secret, body, int(now))
    try:
        answer = http.post(taken.url, content=body, headers=headers)
        error = "" if answer.is_success else f"HTTP {answer.status_code}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    if not error:
        result, next_at = "delivered", now
    elif now - taken.first_at >= GIVE_UP_AFTER:
        result, next_at = "failed", now
    else:
        result, next_at = "retried", now + backoff(taken.attempts, jitter)
    _settle(client, taken, result, next_at, now, error)
    _log_attempt(taken, result, error, next_at - now)
    return result


def backoff(attempts: int, jitter: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 5 s doubling, at most an hour,
    spread by ±20 % so receivers coming back are not hit by every delivery at once."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempts - 1, 20)) * (0.8 + 0.4 * jitter())


def _settle(client: redis.Redis, taken: Taken, result: str, next_at: float, now: float, error: str) -> None:
    client.register_script(SETTLE)(
        keys=[keys.WEBHOOKS, keys.webhook(taken.id), keys.WEBHOOKS_FAILED, keys.METRICS],
        args=[taken.id, result, taken.token, next_at, now, error, metrics.webhook_field(result), FAILED_KEPT,
              FAILED_TTL])


def _log_attempt(taken: Taken, result: str, error: str, retry_in: float) -> None:
    fields = {"delivery": taken.id, "run_id": taken.run, "url": safe_url(taken.url), "attempt": taken.attempts}
    if result == "delivered":
        log.info("webhook delivered", **fields)
    elif result == "retried":
        log.warning("webhook not delivered; will retry", error=error, retry_in=round(retry_in, 1), **fields)
    else:
        log.error("webhook given up after 24 hours", error=error, **fields)


def _warn_if_unsigned(secret: str | None) -> None:
    global _warned_unsigned
    if not secret and not _warned_unsigned:
        _warned_unsigned = True
        log.warning("webhooks are sent unsigned: set DISPATCH_WEBHOOK_SECRET so receivers can verify them")


def safe_url(url: str) -> str:
    """A URL fit for a log line: scheme, host and path only (no credentials, no query)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"

