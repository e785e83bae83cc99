-- zt_policy's cluster-scoped limits on a Redis-protocol store (Redis 7, Valkey): one
-- call admits a request against every cluster-scoped limit and in-flight cap it
-- touches, atomically, with the GCRA of rust/core/src/limits.rs (the same arithmetic,
-- integer nanoseconds); a second call settles what it held when its response ends. The
-- engine (rust/core/src/engine/shared.rs) builds the arguments and reads the replies;
-- rust/store runs this script (EVALSHA) with a timeout.
--
-- Keys: `ztp:{<key value>}:<l|c>:<name>:<definition hash>`. The hash tag is the limit's
-- key value (the identity by default), so a Redis Cluster keeps one identity's keys in
-- one slot; a request whose limits have different key values needs a store that is not
-- a cluster (or one slot). Every key gets a TTL: a bucket's key lives until its bucket is
-- full again (then it is indistinguishable from a missing one); a cap's set lives as long
-- as its longest lease.
--
-- ARGV[1] = now in nanoseconds since 1970 (a decimal string), or "0": the store's own
--           clock (TIME), the one clock every replica shares. Tests give their own.
-- ARGV[2] = the operation, ARGV[3] = the request's lease id (unique across replicas),
-- then four arguments per key (KEYS[i] → ARGV[4i .. 4i+3]): a kind and three numbers.
--
-- "admit": all or nothing: when one key refuses, nothing is written.
--   "l", period_ns, tau_ns, cost   take `cost` cells of a bucket (tau_ns = period_ns ×
--                                  burst, the engine's own numbers)
--   "c", max, ttl_ms, 0            take a slot of an in-flight cap for the lease, unless
--                                  `max` unexpired leases hold them; a lease never
--                                  released expires after ttl_ms (a crashed replica's
--                                  slots come back)
--   Returns {1, a_1, b_1, a_2, b_2, …}: per bucket its cells left and the ns until it is
--   full; per cap the slots now open and 0. Or {0, i, n}: key i refused, n = the ns
--   until the cells are there (a bucket) or the cap's max (a cap).
-- "settle":
--   "r", period_ns, cells, 0       give cells back, never past full
--   "g", period_ns, tau_ns, cells  take cells after the fact, never past empty
--   "x", 0, 0, 0                   release the lease's slot
--   Returns, per key, the cells moved (r, g) or 1/0 (x: whether the lease was held).
-- Exact arithmetic in Lua's doubles: a TAT is stored as "<seconds>:<nanoseconds>" and
-- the script only computes with nanoseconds relative to now, which stay below 2^53 (a
-- cluster-scoped limit refills within 104 days); division and remainder go through
-- fmod, which is exact.

local NS, NN -- now: seconds, nanoseconds
if ARGV[1] ~= '0' then
  NS, NN = tonumber(string.sub(ARGV[1], 1, -10)), tonumber(string.sub(ARGV[1], -9))
else
  local t = redis.call('TIME')
  NS, NN = tonumber(t[1]), tonumber(t[2]) * 1000
end

-- floor(a / b) for whole numbers a ≥ 0, b > 0, exactly.
local function idiv(a, b)
  return (a - math.fmod(a, b)) / b
end

-- How far ahead of now a key's TAT is, in ns (≤ 0: its bucket is full; no key: 0).
local function ahead_of(key)
  local v = redis.call('GET', key)
  if not v then
    return 0
  end
  local s, n = string.match(v, '^(%d+):(%d+)$')
  return (tonumber(s) - NS) * 1e9 + (tonumber(n) - NN)
end

-- Stores a TAT `ahead` ns from now (> 0); the key lives until then (at least 1 ms).
local function store_ahead(key, ahead)
  local total = NN + ahead
  local n = math.fmod(total, 1e9)
  local s = NS + (total - n) / 1e9
  redis.call('SET', key, string.format('%.0f:%09.0f', s, n), 'PX', math.max(1, math.ceil(ahead / 1e6)))
end

local function num(i, j)
  return tonumber(ARGV[4 * i + j])
end

local op = ARGV[2]
local lease = ARGV[3]
local now_s = NS + NN / 1e9

if op == 'admit' then
  local news = {}
  local out = {1}
  for i = 1, #KEYS do
    local kind = ARGV[4 * i]
    if kind == 'l' then
      local period, tau, cost = num(i, 1), num(i, 2), num(i, 3)
      local new = math.max(ahead_of(KEYS[i]), 0) + cost * period
      if new > tau then
        return {0, i, new - tau}
      end
      news[i] = new
      out[2 * i] = idiv(tau - new, period)
      out[2 * i + 1] = new
    elseif kind == 'c' then
      local max = num(i, 1)
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now_s))
      local open = redis.call('ZCARD', KEYS[i])
      if open >= max then
        return {0, i, max}
      end
      out[2 * i] = open + 1
      out[2 * i + 1] = 0
    else
      return redis.error_reply('zt_policy limits script: unknown kind ' .. tostring(kind))
    end
  end
  for i = 1, #KEYS do
    if ARGV[4 * i] == 'l' then
      if num(i, 3) > 0 then
        store_ahead(KEYS[i], news[i])
      end
    else
      local ttl_ms = num(i, 2)
      redis.call('ZADD', KEYS[i], string.format('%.6f', now_s + ttl_ms / 1000), lease)
      -- The set lives as long as its longest lease.
      local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
      redis.call('PEXPIRE', KEYS[i], math.max(1, math.ceil((tonumber(last[2]) - now_s) * 1000)))
    end
  end
  return out
elseif op == 'settle' then
  local out = {}
  for i = 1, #KEYS do
    local kind = ARGV[4 * i]
    if kind == 'r' then
      local period, cells = num(i, 1), num(i, 2)
      local ahead = ahead_of(KEYS[i])
      local back = 0
      if ahead > 0 then
        back = math.min(ahead, cells * period)
        if ahead - back > 0 then
          store_ahead(KEYS[i], ahead - back)
        else
          redis.call('DEL', KEYS[i])
        end
      end
      out[i] = idiv(back, period)
    elseif kind == 'g' then
      local period, tau, cells = num(i, 1), num(i, 2), num(i, 3)
      local from = math.max(ahead_of(KEYS[i]), 0)
      local taken = idiv(math.min(cells * period, math.max(0, tau - from)), period)
      if taken > 0 then
        store_ahead(KEYS[i], from + taken * period)
      end
      out[i] = taken
    elseif kind == 'x' then
      out[i] = redis.call('ZREM', KEYS[i], lease)
    else
      return redis.error_reply('zt_policy limits script: unknown kind ' .. tostring(kind))
    end
  end
  return out
end
return redis.error_reply('zt_policy limits script: unknown operation ' .. tostring(op))
