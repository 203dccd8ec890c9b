"""Lua scripts: the only code that changes a recipient's state, each change atomic inside Redis.

Every script gets the keys of worker.keys.script_keys(run, channel):
    KEYS[1] run hash   KEYS[2] rows   KEYS[3] counts   KEYS[4] due   KEYS[5] parked
    KEYS[6] hold       KEYS[7] suppressed set of the run's channel
A row record is the JSON array [status, attempts, code, message, recipient, owner, due].

Transitions (statuses in worker.statuses):
    pending     --claim-->    in_flight (owner = the batch task ID, attempts + 1)
    retry_wait  --claim-->    in_flight, once its due time has come
    in_flight   --finish-->   sent | blacklisted | invalid | failed | aborted | uncertain | retry_wait
    in_flight   --claim by the same owner (a redelivered batch)--> uncertain
    in_flight   --release-->  pending (claimed but not sent: pause, cancel, deadline)
    uncertain   --finish by its owner--> the outcome that arrived late (never retry_wait)
    pending | retry_wait --stop-->  aborted | cancelled
    failed | uncertain | aborted --requeue (operator)--> pending
"""
from __future__ import annotations

PRELUDE = r"""
local OPEN = {pending = true, in_flight = true, retry_wait = true}
local function load(row)
  local raw = redis.call('HGET', KEYS[2], row)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(row, rec)
  redis.call('HSET', KEYS[2], row, cjson.encode(rec))
end
local function move(rec, status)
  redis.call('HINCRBY', KEYS[3], rec[1], -1)
  redis.call('HINCRBY', KEYS[3], status, 1)
  rec[1] = status
end
local function stop_status(state)
  if state == 'cancelled' then return 'cancelled' end
  return 'aborted'
end
local function maybe_complete(now)
  local c = redis.call('HMGET', KEYS[3], 'pending', 'in_flight', 'retry_wait')
  local open = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0)
  if open > 0 then return end
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == 'running' or state == 'paused' then
    redis.call('HSET', KEYS[1], 'state', 'completed', 'finished_at', now)
  elseif (state == 'aborted' or state == 'cancelled') and redis.call('HEXISTS', KEYS[1], 'finished_at') == 0 then
    redis.call('HSET', KEYS[1], 'finished_at', now)
  end
end
local function set_aside(row, rec, state)
  -- a row that may not be sent now: park it (paused) or end it (stopped)
  if state == 'paused' then
    redis.call('SADD', KEYS[5], row)
  elseif state == 'aborted' or state == 'cancelled' then
    move(rec, stop_status(state))
    rec[6] = ''
    redis.call('ZREM', KEYS[4], row)
    redis.call('SREM', KEYS[5], row)
    save(row, rec)
  end
end
"""

# ARGV: row, status, record-json triples. Rows already present are left alone (idempotent ingest).
PUT_ROWS = r"""
local added = 0
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
    added = added + 1
  end
end
return added
"""

# ARGV: owner, now, rows… → {state, hold_ms, row, recipient, attempts, row, recipient, attempts, …}
CLAIM = r"""
local owner, now = ARGV[1], tonumber(ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state') or 'missing'
local sending = (state == 'running' or state == 'queuing')
local out = {state, redis.call('PTTL', KEYS[6])}
for i = 3, #ARGV do
  local row = ARGV[i]
  local rec = load(row)
  if rec then
    local status = rec[1]
    local ready = status == 'pending' or (status == 'retry_wait' and (tonumber(rec[7]) or 0) <= now)
    if status == 'in_flight' and rec[6] == owner then
      move(rec, 'uncertain')
      rec[3] = 0
      rec[4] = 'the worker stopped after claiming this recipient; the request may have been sent'
      save(row, rec)
    elseif ready and sending then
      move(rec, 'in_flight')
      rec[2] = rec[2] + 1
      rec[6] = owner
      redis.call('ZREM', KEYS[4], row)
      save(row, rec)
      out[#out + 1] = row
      out[#out + 1] = rec[5]
      out[#out + 1] = rec[2]
    elseif (status == 'pending' or status == 'retry_wait') and not sending then
      set_aside(row, rec, state)
    end
  end
end
maybe_complete(now)
return out
"""

# ARGV: owner, now, then row, status, code, message, due quintuples → number applied
FINISH = r"""
local owner, now = ARGV[1], ARGV[2]
local applied = 0
for i = 3, #ARGV, 5 do
  local row, status = ARGV[i], ARGV[i + 1]
  local rec = load(row)
  if rec and rec[6] == owner and (rec[1] == 'in_flight' or (rec[1] == 'uncertain' and status ~= 'retry_wait')) then
    move(rec, status)
    rec[3] = tonumber(ARGV[i + 2]) or 0
    rec[4] = ARGV[i + 3]
    rec[7] = tonumber(ARGV[i + 4]) or 0
    if status == 'retry_wait' then
      redis.call('ZADD', KEYS[4], rec[7], row)
    elseif status == 'blacklisted' then
      redis.call('SADD', KEYS[7], rec[5])
    end
    save(row, rec)
    applied = applied + 1
  end
end
maybe_complete(now)
return applied
"""

# ARGV: owner, now, rows… — claimed rows that were not sent go back (or aside, if the run stopped)
RELEASE = r"""
local owner, now = ARGV[1], ARGV[2]
local state = redis.call('HGET', KEYS[1], 'state') or 'missing'
local released = 0
for i = 3, #ARGV do
  local rec = load(ARGV[i])
  if rec and rec[1] == 'in_flight' and rec[6] == owner then
    move(rec, 'pending')
    rec[2] = math.max(0, rec[2] - 1)
    rec[6] = ''
    save(ARGV[i], rec)
    set_aside(ARGV[i], rec, state)
    released = released + 1
  end
end
maybe_complete(now)
return released
"""

# ARGV: new_state, reason, now → 1 if the run changed state
STOP = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queuing' or state == 'running' or state == 'paused' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'stopped_at', ARGV[3])
  return 1
end
return 0
"""

# ARGV: now, rows… → rows ended; untried (pending, waiting) rows of a stopped run end aborted/cancelled
FINALIZE = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'aborted' and state ~= 'cancelled' then return 0 end
local ended = 0
for i = 2, #ARGV do
  local rec = load(ARGV[i])
  if rec and (rec[1] == 'pending' or rec[1] == 'retry_wait') then
    set_aside(ARGV[i], rec, state)
    ended = ended + 1
  end
end
maybe_complete(ARGV[1])
return ended
"""

# ARGV: comma-separated statuses, first row, last row → rows put back to pending
REQUEUE = r"""
local wanted = {}
for s in string.gmatch(ARGV[1], '[^,]+') do wanted[s] = true end
local out = {}
for row = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local rec = load(row)
  if rec and wanted[rec[1]] then
    move(rec, 'pending')
    rec[3] = 0
    rec[4] = ''
    rec[6] = ''
    save(row, rec)
    out[#out + 1] = row
  end
end
return out
"""

# ARGV: now, limit, lease_until → rows whose retry is due; leased so one sweeper takes each for a while
POP_DUE = r"""
local rows = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, row in ipairs(rows) do
  redis.call('ZADD', KEYS[4], ARGV[3], row)
end
return rows
"""

# ARGV: state_from (comma list), state_to, now → 1 if changed (pause / resume / queued)
TRANSITION = r"""
local state = redis.call('HGET', KEYS[1], 'state')
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == state then
    redis.call('HSET', KEYS[1], 'state', ARGV[2])
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
    "put_rows": PUT_ROWS, "claim": CLAIM, "finish": FINISH, "release": RELEASE, "stop": STOP,
    "finalize": FINALIZE, "requeue": REQUEUE, "pop_due": POP_DUE, "transition": TRANSITION,
}


def register(client) -> dict:
    """Script objects for a sync or asyncio redis client, keyed by name."""
    scripts = {name: client.register_script(PRELUDE + body) for name, body in STATE_SCRIPTS.items()}
    scripts["take_tokens"] = client.register_script(TAKE_TOKENS)
    scripts["slow_down"] = client.register_script(SLOW_DOWN)
    return scripts
