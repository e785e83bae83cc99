-- zt_policy's limits on a Redis-protocol store (Redis 7, Valkey): issue 18's script,
-- in progress (not yet called by the module). One call checks and charges every
-- cluster-scoped limit and cap a request touches, atomically, with the GCRA of
-- rust/core/src/limits.rs (the same arithmetic, in microseconds).
--
-- Keys: every key of one call shares the request's hash tag, `ztp:{<identity>}:…`, so
-- a Redis Cluster holds them in one slot. Every key gets a TTL: a bucket's key lives
-- until its bucket is full again (then it is indistinguishable from a missing one); a
-- cap's key lives as long as its longest lease.
--
-- ARGV[1] = now in microseconds, or "0": the store's own clock (TIME), the one clock
--           every replica shares. Tests give their own.
-- ARGV[2] = the operation:
--   "take"   then per limit (KEYS[i]): period_us, tau_us, cost. All or nothing: if one
--            limit refuses, none is charged. Returns {1, remaining_1, reset_us_1, …}
--            or {0, i, retry_after_us} (i: the 1-based limit that refused).
--   "refund" then per limit: period_us, cells. Gives cells back, never past full.
--            Returns the cells given back, per limit.
--   "charge" then per limit: period_us, tau_us, cells. Takes cells after the fact,
--            never past empty, never refused. Returns the cells taken, per limit.
--   "acquire" KEYS[1] = the cap's set; then max, lease id, lease ttl_us. Takes a slot
--            unless `max` unexpired leases hold them: {1, open} or {0, max}. A lease
--            that is never released expires (a crashed replica's slots come back).
--   "release" KEYS[1] = the cap's set; then the lease id. Returns 1 if it was held.
-- Numbers are Lua doubles: microseconds since 1970 (about 1.8e15) stay exact below
-- 2^53, so periods under a microsecond are refused before a limit is cluster-scoped.

local function now_us()
  local given = tonumber(ARGV[1])
  if given and given > 0 then
    return given
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A key whose bucket is full again at `tat` lives until then (at least 1 ms).
local function store_tat(key, tat, now)
  local ttl_ms = math.max(1, math.ceil((tat - now) / 1000))
  redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl_ms)
end

local function tat_of(key, now)
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then
    return now
  end
  return v
end

local now = now_us()
local op = ARGV[2]

if op == 'take' then
  local news = {}
  local out = {1}
  for i = 1, #KEYS do
    local period = tonumber(ARGV[3 * i])
    local tau = tonumber(ARGV[3 * i + 1])
    local cost = tonumber(ARGV[3 * i + 2])
    local from = tat_of(KEYS[i], now)
    local new = from + cost * period
    if new - now > tau then
      return {0, i, new - now - tau}
    end
    news[i] = new
    out[2 * i] = math.floor((tau - (new - now)) / period)
    out[2 * i + 1] = new - now
  end
  for i = 1, #KEYS do
    if tonumber(ARGV[3 * i + 2]) > 0 then
      store_tat(KEYS[i], news[i], now)
    end
  end
  return out
elseif op == 'refund' then
  local out = {}
  for i = 1, #KEYS do
    local period = tonumber(ARGV[2 * i + 1])
    local cells = tonumber(ARGV[2 * i + 2])
    local v = tonumber(redis.call('GET', KEYS[i]))
    local back = 0
    if v ~= nil and v > now then
      back = math.min(v - now, cells * period)
      if v - back > now then
        store_tat(KEYS[i], v - back, now)
      else
        redis.call('DEL', KEYS[i])
      end
    end
    out[i] = math.floor(back / period)
  end
  return out
elseif op == 'charge' then
  local out = {}
  for i = 1, #KEYS do
    local period = tonumber(ARGV[3 * i])
    local tau = tonumber(ARGV[3 * i + 1])
    local cells = tonumber(ARGV[3 * i + 2])
    local from = tat_of(KEYS[i], now)
    local room = math.max(0, now + tau - from)
    local taken = math.floor(math.min(cells * period, room) / period)
    if taken > 0 then
      store_tat(KEYS[i], from + taken * period, now)
    end
    out[i] = taken
  end
  return out
elseif op == 'acquire' then
  local max = tonumber(ARGV[3])
  local lease = ARGV[4]
  local ttl = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
  local open = redis.call('ZCARD', KEYS[1])
  if open >= max then
    return {0, max}
  end
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), lease)
  -- The set lives as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) / 1000)))
  return {1, open + 1}
elseif op == 'release' then
  return redis.call('ZREM', KEYS[1], ARGV[3])
end
return redis.error_reply('zt_policy limits script: unknown operation ' .. tostring(op))
