"""Lua scripts and their one typed facade: the only code that changes a recipient's state, atomically.

Every state script gets the keys of worker.keys.script_keys(run, channel), named on entry in the Lua
(K_RUN, K_ROWS, …), and a row record is the JSON array named by the R_* field positions below. Python
reaches every script through `Ops` (named arguments in, named results out) and one caller,
`Scripts` (sync) or `AsyncScripts` (asyncio): `scripts(ops.claim(owner, now, rows))`.

An owner is one delivery of one batch: `TASK:NONCE`, the Celery task ID (kept by a redelivered message)
and a nonce new for every delivery. A row's owner is kept while it is in flight or `uncertain`.

Transitions (statuses in worker.statuses):
    (recorded)  --put-->      pending, or cancelled/aborted when the run stopped while recording
    pending     --claim-->    in_flight (owner, attempts + 1)            [run queuing or running]
    (recorded)  --put-->      waiting, queued in `due` for its time (a scheduled run's start, or the
                 recipient's send window opening)
    retry_wait | waiting --claim--> in_flight, once its due time has come  [run queuing or running]
    pending | due retry_wait/waiting --claim, address on the suppression list--> suppressed
    pending | retry_wait | waiting --claim while paused-->  (parked, unchanged)
    pending | retry_wait | waiting --claim or finalize while stopped--> aborted | cancelled
    in_flight   --claim by another delivery of the same task (redelivery)--> uncertain
    in_flight   --claim by the same delivery (a claim retried after a lost answer)--> in_flight
                 (handed out again: it was never sent)
    in_flight   --finish by its owner--> sent | blacklisted | invalid | failed | aborted | uncertain | retry_wait
                 | waiting (claimed outside its send window: never sent, the attempt given back)
    uncertain   --finish by its owner--> the outcome that arrived late (a certain answer wins; a late
                 retry_wait in a run already completed or stopped ends failed, aborted or cancelled)
    in_flight   --release by its owner (claimed, never sent)--> pending, queued in `due` at once
                 (or parked when paused, or aborted/cancelled when stopped)
    pending     --defer-->    pending, queued in `due` for a given time (batch deadline, 429 hold)
    in_flight   --reconcile, its owner's lease gone--> uncertain
    failed | uncertain | aborted --requeue (operator)--> pending, and the run `running` in the same step

A run completes (state `completed`) only once its recording is closed (`recorded` = 1) and no row is
pending, in_flight, retry_wait or waiting. A run whose `send_at` lies ahead is `scheduled` once recorded
(the sweepers make it `running` when its time comes); its rows wait in `due` until then. Every open
row is, at every moment, in a queued or running batch, in `due` or `parked`, or found again by
reconcile (the sweepers' cure for lost messages and dead owners).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from worker import keys
from worker.outcomes import Outcome

PRELUDE = r"""
local K_RUN, K_ROWS, K_COUNTS, K_DUE, K_PARKED, K_HOLD, K_SUPPRESSED, K_LEASES =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local R_STATUS, R_ATTEMPTS, R_CODE, R_MESSAGE, R_RECIPIENT, R_OWNER, R_DUE = 1, 2, 3, 4, 5, 6, 7
local SUPPRESSED_LATE = 'on the suppression list (added after the run was queued)'
local OWNER_GONE = 'the worker sending this recipient stopped; the request may have been sent'
local function load(row)
  local raw = redis.call('HGET', K_ROWS, row)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(row, rec)
  redis.call('HSET', K_ROWS, row, cjson.encode(rec))
end
local function move(rec, status)
  redis.call('HINCRBY', K_COUNTS, rec[R_STATUS], -1)
  redis.call('HINCRBY', K_COUNTS, status, 1)
  rec[R_STATUS] = status
end
local function task_of(owner)
  return string.match(owner, '^(.*):[^:]*$') or owner
end
local function is_sending(state)
  return state == 'running' or state == 'queuing'
end
local function is_stopped(state)
  return state == 'aborted' or state == 'cancelled'
end
local function is_waiting(status)
  -- open rows that sit in `due` until their time: a retry's backoff, a schedule or a send window
  return status == 'retry_wait' or status == 'waiting'
end
local function touch(now)
  redis.call('HSET', K_RUN, 'touched_at', now)
end
local function is_recorded()
  -- '0' while a producer records rows; '1' once closed; absent: a run made before the flag existed
  local recorded = redis.call('HGET', K_RUN, 'recorded')
  if recorded == false then return redis.call('HGET', K_RUN, 'state') ~= 'queuing' end
  return recorded == '1'
end
local function maybe_complete(now)
  if not is_recorded() then return end
  local c = redis.call('HMGET', K_COUNTS, 'pending', 'in_flight', 'retry_wait', 'waiting')
  local open = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) + (tonumber(c[4]) or 0)
  if open > 0 then return end
  local state = redis.call('HGET', K_RUN, 'state')
  if state == 'running' or state == 'paused' or state == 'queuing' or state == 'scheduled' then
    redis.call('HSET', K_RUN, 'state', 'completed', 'finished_at', now)
  elseif is_stopped(state) and redis.call('HEXISTS', K_RUN, 'finished_at') == 0 then
    redis.call('HSET', K_RUN, 'finished_at', now)
  end
end
local function end_stopped(row, rec, state)
  if state == 'cancelled' then move(rec, 'cancelled') else move(rec, 'aborted') end
  rec[R_OWNER] = ''
  redis.call('ZREM', K_DUE, row)
  redis.call('SREM', K_PARKED, row)
  save(row, rec)
end
local function set_aside(row, rec, state)
  -- an open row that may not be sent now: park it (paused), end it (stopped), or queue it for the
  -- start (scheduled: a worker whose clock ran ahead of the producer's claimed it before the start)
  if state == 'paused' then
    redis.call('SADD', K_PARKED, row)
  elseif is_stopped(state) then
    end_stopped(row, rec, state)
  elseif state == 'scheduled' then
    redis.call('ZADD', K_DUE, tonumber(rec[R_DUE]) or 0, row)
  end
end
local function queue_again(row, rec, state, when)
  -- a pending row no batch holds: into `due` (sending), `parked` (paused), or ended (stopped)
  if is_sending(state) then
    redis.call('ZADD', K_DUE, when, row)
  else
    set_aside(row, rec, state)
  end
end
"""

# ARGV: now, then row, status, record-json triples → rows added, or -1 when recording was closed.
PUT_ROWS = r"""
local now = ARGV[1]
if redis.call('HGET', K_RUN, 'recorded') == '1' then return -1 end
local state = redis.call('HGET', K_RUN, 'state')
local added = 0
for i = 2, #ARGV, 3 do
  local row, status, raw = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', K_ROWS, row, raw) == 1 then
    redis.call('HINCRBY', K_COUNTS, status, 1)
    if (status == 'pending' or status == 'waiting') and is_stopped(state) then
      end_stopped(row, cjson.decode(raw), state)
    elseif status == 'waiting' then
      redis.call('ZADD', K_DUE, cjson.decode(raw)[R_DUE], row)
    end
    added = added + 1
  end
end
touch(now)
return added
"""

# ARGV: now, total → the run's state after its recording closed
CLOSE_RECORDING = r"""
local now, total = ARGV[1], ARGV[2]
redis.call('HSET', K_RUN, 'recorded', '1', 'total', total, 'queued_at', now)
if redis.call('HGET', K_RUN, 'state') == 'queuing' then
  local send_at = tonumber(redis.call('HGET', K_RUN, 'send_at')) or 0
  redis.call('HSET', K_RUN, 'state', send_at > tonumber(now) and 'scheduled' or 'running')
end
touch(now)
maybe_complete(now)
return redis.call('HGET', K_RUN, 'state')
"""

# ARGV: owner, now, rows… → {state, hold_ms, row, recipient, attempts, row, recipient, attempts, …}
CLAIM = r"""
local owner, now = ARGV[1], tonumber(ARGV[2])
local task = task_of(owner)
local state = redis.call('HGET', K_RUN, 'state') or 'missing'
local sending = is_sending(state)
local out = {state, redis.call('PTTL', K_HOLD)}
for i = 3, #ARGV do
  local row = ARGV[i]
  local rec = load(row)
  if rec then
    local status = rec[R_STATUS]
    local ready = status == 'pending' or (is_waiting(status) and (tonumber(rec[R_DUE]) or 0) <= now)
    if status == 'in_flight' and rec[R_OWNER] == owner then
      out[#out + 1] = row
      out[#out + 1] = rec[R_RECIPIENT]
      out[#out + 1] = rec[R_ATTEMPTS]
    elseif status == 'in_flight' and task_of(rec[R_OWNER]) == task then
      move(rec, 'uncertain')
      rec[R_CODE] = 0
      rec[R_MESSAGE] = 'the worker stopped after claiming this recipient; the request may have been sent'
      save(row, rec)
    elseif ready and sending and redis.call('SISMEMBER', K_SUPPRESSED, rec[R_RECIPIENT]) == 1 then
      move(rec, 'suppressed')
      rec[R_CODE] = 0
      rec[R_MESSAGE] = SUPPRESSED_LATE
      rec[R_OWNER] = ''
      redis.call('ZREM', K_DUE, row)
      save(row, rec)
    elseif ready and sending then
      move(rec, 'in_flight')
      rec[R_ATTEMPTS] = rec[R_ATTEMPTS] + 1
      rec[R_OWNER] = owner
      redis.call('ZREM', K_DUE, row)
      redis.call('SREM', K_PARKED, row)
      save(row, rec)
      out[#out + 1] = row
      out[#out + 1] = rec[R_RECIPIENT]
      out[#out + 1] = rec[R_ATTEMPTS]
    elseif (status == 'pending' or is_waiting(status)) and not sending then
      set_aside(row, rec, state)
    end
  end
end
if #out > 2 then touch(now) end
maybe_complete(now)
return out
"""

# ARGV: owner, now, then row, status, code, message, due quintuples → number applied
FINISH = r"""
local owner, now = ARGV[1], ARGV[2]
local state = redis.call('HGET', K_RUN, 'state') or 'missing'
local applied = 0
for i = 3, #ARGV, 5 do
  local row, status = ARGV[i], ARGV[i + 1]
  local rec = load(row)
  if rec and rec[R_OWNER] == owner and (rec[R_STATUS] == 'in_flight' or rec[R_STATUS] == 'uncertain') then
    if is_waiting(status) and rec[R_STATUS] == 'uncertain' and (state == 'completed' or is_stopped(state)) then
      -- a certain "not now" for a row already counted as ended: the run is over, so the row ends too
      if state == 'completed' then status = 'failed' elseif state == 'cancelled' then status = 'cancelled'
      else status = 'aborted' end
    end
    move(rec, status)
    rec[R_CODE] = tonumber(ARGV[i + 2]) or 0
    rec[R_MESSAGE] = ARGV[i + 3]
    rec[R_DUE] = tonumber(ARGV[i + 4]) or 0
    if status == 'waiting' then rec[R_ATTEMPTS] = math.max(0, rec[R_ATTEMPTS] - 1) end
    if is_waiting(status) then
      rec[R_OWNER] = ''
      redis.call('ZADD', K_DUE, rec[R_DUE], row)
    elseif status ~= 'uncertain' then
      rec[R_OWNER] = ''
    end
    if status == 'blacklisted' then
      redis.call('SADD', K_SUPPRESSED, rec[R_RECIPIENT])
    end
    save(row, rec)
    applied = applied + 1
  end
end
if applied > 0 then touch(now) end
maybe_complete(now)
return applied
"""

# ARGV: owner, now, when, rows… → rows released: claimed by this delivery but never sent; queued in
# `due` for `when` (or parked, or ended, by the run's state)
RELEASE = r"""
local owner, now, when = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', K_RUN, 'state') or 'missing'
local released = 0
for i = 4, #ARGV do
  local row = ARGV[i]
  local rec = load(row)
  if rec and rec[R_STATUS] == 'in_flight' and rec[R_OWNER] == owner then
    move(rec, 'pending')
    rec[R_ATTEMPTS] = math.max(0, rec[R_ATTEMPTS] - 1)
    rec[R_OWNER] = ''
    save(row, rec)
    queue_again(row, rec, state, when)
    released = released + 1
  end
end
maybe_complete(now)
return released
"""

# ARGV: now, when, rows… → pending rows queued in `due` for `when` (a batch handing back untried rows)
DEFER = r"""
local now, when = ARGV[1], ARGV[2]
local state = redis.call('HGET', K_RUN, 'state') or 'missing'
local deferred = 0
for i = 3, #ARGV do
  local row = ARGV[i]
  local rec = load(row)
  if rec and rec[R_STATUS] == 'pending' then
    queue_again(row, rec, state, when)
    deferred = deferred + 1
  elseif rec and is_waiting(rec[R_STATUS]) and not is_sending(state) then
    set_aside(row, rec, state)
  end
end
maybe_complete(now)
return deferred
"""

# ARGV: new_state, reason, now → 1 if the run changed state
STOP = r"""
local state = redis.call('HGET', K_RUN, 'state')
if state == 'queuing' or state == 'running' or state == 'paused' or state == 'scheduled' then
  redis.call('HSET', K_RUN, 'state', ARGV[1], 'reason', ARGV[2], 'stopped_at', ARGV[3])
  return 1
end
return 0
"""

# ARGV: now, rows… → rows ended; untried (pending, waiting) rows of a stopped run end aborted/cancelled
FINALIZE = r"""
local state = redis.call('HGET', K_RUN, 'state')
if not is_stopped(state) then return 0 end
local ended = 0
for i = 2, #ARGV do
  local rec = load(ARGV[i])
  if rec and (rec[R_STATUS] == 'pending' or is_waiting(rec[R_STATUS])) then
    end_stopped(ARGV[i], rec, state)
    ended = ended + 1
  end
end
maybe_complete(ARGV[1])
return ended
"""

# ARGV: now, first row, last row → rows to publish again: pending rows no message may hold; in-flight
# rows whose owner's lease is gone end uncertain; waiting rows missing from `due` go back into it.
RECONCILE = r"""
local now = tonumber(ARGV[1])
local state = redis.call('HGET', K_RUN, 'state') or 'missing'
local out = {}
for row = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local rec = load(row)
  if rec then
    local status = rec[R_STATUS]
    if status == 'in_flight' then
      local lease = tonumber(redis.call('ZSCORE', K_LEASES, rec[R_OWNER]))
      if not lease or lease < now then
        move(rec, 'uncertain')
        rec[R_CODE] = 0
        rec[R_MESSAGE] = OWNER_GONE
        save(row, rec)
      end
    elseif status == 'pending' then
      if is_sending(state) then out[#out + 1] = row else set_aside(row, rec, state) end
    elseif is_waiting(status) then
      if not redis.call('ZSCORE', K_DUE, row) then redis.call('ZADD', K_DUE, rec[R_DUE], row) end
      if not is_sending(state) then set_aside(row, rec, state) end
    end
  end
end
maybe_complete(now)
return out
"""

# ARGV: comma-separated statuses, first row, last row, now → rows put back to pending. The run goes
# back to `running` in the same step (never `completed` with pending rows, whatever finishes meanwhile).
REQUEUE = r"""
local wanted = {}
for s in string.gmatch(ARGV[1], '[^,]+') do wanted[s] = true end
local out = {}
for row = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local rec = load(row)
  if rec and wanted[rec[R_STATUS]] then
    move(rec, 'pending')
    rec[R_CODE] = 0
    rec[R_MESSAGE] = ''
    rec[R_OWNER] = ''
    save(row, rec)
    out[#out + 1] = row
  end
end
if #out > 0 and not is_sending(redis.call('HGET', K_RUN, 'state')) then
  redis.call('HSET', K_RUN, 'state', 'running', 'reason', '')
  redis.call('HDEL', K_RUN, 'finished_at')
end
if #out > 0 then touch(ARGV[4]) end
return out
"""

# ARGV: now, limit, lease_until → rows whose time has come; leased so one sweeper takes each for a while
POP_DUE = r"""
local rows = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, row in ipairs(rows) do
  redis.call('ZADD', K_DUE, ARGV[3], row)
end
return rows
"""

# ARGV: state_from (comma list), state_to, now → 1 if changed (pause / resume)
TRANSITION = r"""
local state = redis.call('HGET', K_RUN, 'state')
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == state then
    redis.call('HSET', K_RUN, 'state', ARGV[2])
    maybe_complete(ARGV[3])
    return 1
  end
end
return 0
"""

# KEYS[1] bucket; ARGV rate, burst, want → {granted, seconds to wait for more}
TAKE_TOKENS = r"""
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1]) or burst
local stamp = tonumber(b[2]) or now
local slow_until = tonumber(redis.call('HGET', KEYS[1], 'slow_until')) or 0
if now < slow_until then rate = rate / 2 end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
local wait = 0
if granted < want then wait = (math.min(want - granted, burst) - tokens) / rate end
return {granted, tostring(wait)}
"""

# KEYS[1] bucket; ARGV seconds → the bucket runs at half rate for that long (the API said 429)
SLOW_DOWN = r"""
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'slow_until', tostring(tonumber(t[1]) + tonumber(ARGV[1])))
redis.call('PEXPIRE', KEYS[1], 60000 + 1000 * tonumber(ARGV[1]))
return 1
"""

STATE_SCRIPTS = {
    "put_rows": PUT_ROWS, "close_recording": CLOSE_RECORDING, "claim": CLAIM, "finish": FINISH,
    "release": RELEASE, "defer": DEFER, "stop": STOP, "finalize": FINALIZE, "reconcile": RECONCILE,
    "requeue": REQUEUE, "pop_due": POP_DUE, "transition": TRANSITION,
}
BUCKET_SCRIPTS = {"take_tokens": TAKE_TOKENS, "slow_down": SLOW_DOWN}


# -- the row record --------------------------------------------------------------------------------
class Record(NamedTuple):
    """One row as stored: a compact JSON array in this field order (the Lua's R_STATUS … R_DUE)."""

    status: str
    attempts: int = 0
    code: int = 0
    message: str = ""
    recipient: str = ""
    owner: str = ""
    due: float = 0

    def encode(self) -> str:
        return json.dumps(list(self), ensure_ascii=False)

    @classmethod
    def decode(cls, raw: str) -> Record:
        return cls(*json.loads(raw))


# -- named results -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claimed:
    row: int
    recipient: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    state: str  # the run's state as the claim saw it
    hold_ms: int  # how long the run's 429 hold lasts (<= 0: none)
    claimed: list[Claimed]


class Call(NamedTuple):
    """One script call, packed: which script, its keys and arguments, and how to read its answer."""

    script: str
    keys: list[str]
    args: list
    parse: Callable[[Any], Any]


def _int(answer: Any) -> int:
    return int(answer)


def _rows(answer: Any) -> list[int]:
    return [int(r) for r in answer]


def _text(answer: Any) -> str:
    return answer.decode() if isinstance(answer, bytes) else str(answer)


def _claim_answer(answer: list) -> ClaimAnswer:
    claimed = [Claimed(int(answer[i]), _text(answer[i + 1]), int(answer[i + 2]))
               for i in range(2, len(answer), 3)]
    return ClaimAnswer(state=_text(answer[0]), hold_ms=int(answer[1]), claimed=claimed)


def _granted(answer: list) -> tuple[int, float]:
    return int(answer[0]), float(answer[1])


class Ops:
    """The calls on one run's recipient state, with named arguments (the protocol, written once)."""

    def __init__(self, run_id: str, channel: str) -> None:
        self.run_id = run_id
        self.keys = keys.script_keys(run_id, channel)

    def _call(self, script: str, args: list, parse: Callable[[Any], Any] = _int) -> Call:
        return Call(script, self.keys, args, parse)

    def put_rows(self, now: float, rows: list[tuple[int, str, str]]) -> Call:
        """Record rows given as (row, status, encoded record); -1 when the recording was closed."""
        return self._call("put_rows", [now, *(x for triple in rows for x in triple)])

    def close_recording(self, now: float, total: int) -> Call:
        return self._call("close_recording", [now, total], _text)

    def claim(self, owner: str, now: float, rows: list[int]) -> Call:
        return self._call("claim", [owner, now, *rows], _claim_answer)

    def finish(self, owner: str, now: float, outcomes: list[Outcome]) -> Call:
        args: list = [owner, now]
        for o in outcomes:
            args += [o.row, o.status, o.code, o.message, o.due]
        return self._call("finish", args)

    def release(self, owner: str, now: float, when: float, rows: list[int]) -> Call:
        return self._call("release", [owner, now, when, *rows])

    def defer(self, now: float, when: float, rows: list[int]) -> Call:
        return self._call("defer", [now, when, *rows])

    def stop(self, state: str, reason: str, now: float) -> Call:
        return self._call("stop", [state, reason, now])

    def finalize(self, now: float, rows: list[int]) -> Call:
        return self._call("finalize", [now, *rows])

    def reconcile(self, now: float, first: int, last: int) -> Call:
        return self._call("reconcile", [now, first, last], _rows)

    def requeue(self, statuses: list[str], first: int, last: int, now: float) -> Call:
        return self._call("requeue", [",".join(statuses), first, last, now], _rows)

    def pop_due(self, now: float, limit: int, lease_until: float) -> Call:
        return self._call("pop_due", [now, limit, lease_until], _rows)

    def transition(self, from_states: list[str], to_state: str, now: float) -> Call:
        return self._call("transition", [",".join(from_states), to_state, now])

    @staticmethod
    def take_tokens(bucket: str, rate: float, burst: float, want: float) -> Call:
        return Call("take_tokens", [bucket], [rate, burst, want], _granted)

    @staticmethod
    def slow_down(bucket: str, seconds: float) -> Call:
        return Call("slow_down", [bucket], [seconds], _int)


def register(client) -> dict:
    """Script objects for a sync or asyncio redis client, keyed by name."""
    registered = {name: client.register_script(PRELUDE + body) for name, body in STATE_SCRIPTS.items()}
    registered.update({name: client.register_script(body) for name, body in BUCKET_SCRIPTS.items()})
    return registered


class Scripts:
    """Runs packed calls on a synchronous redis client."""

    def __init__(self, client) -> None:
        self.registered = register(client)

    def __call__(self, call: Call, client=None) -> Any:
        return call.parse(self.registered[call.script](keys=call.keys, args=call.args, client=client))


class AsyncScripts:
    """Runs packed calls on an asyncio redis client (or queues them on one of its pipelines)."""

    def __init__(self, client) -> None:
        self.registered = register(client)

    async def __call__(self, call: Call) -> Any:
        return call.parse(await self.registered[call.script](keys=call.keys, args=call.args))

    async def queue(self, call: Call, pipeline) -> None:
        """Add the call to `pipeline` (its answer comes from pipeline.execute(), then call.parse)."""
        await self.registered[call.script](keys=call.keys, args=call.args, client=pipeline)
