-- Admit one request against every scope at once, or against none (all-or-nothing).
-- Times are milliseconds (floats). One bucket per (scope, dimension) holds its GCRA TAT.
--
-- KEYS: 4 per scope: requests TAT, tokens TAT, gpu-seconds TAT, concurrency lease ZSET
-- ARGV[1] now in ms ('' = Redis TIME, shared by all replicas), ARGV[2] lease id,
-- ARGV[3] lease ttl ms, ARGV[4] reserved tokens, ARGV[5] reserved GPU-seconds (an estimate),
-- then 4 per scope: rpm, tpm, gpu-seconds per minute, concurrency (0 = no limit)
--
-- Returns {1, rq_used, tok_used, ...} with 2 entries per scope ('' where no limit), or
-- {0, scope index (0-based), dimension (1 req, 2 tok, 3 gpu, 4 conc), retry ms or '-1' (never)}.
local PERIOD = 60000.0

-- A bucket is stored as "TAT per-unit-ms". When an operator changes the limit, the units in use
-- are kept (rescaled to the new per-unit time): raising a limit gives headroom at once.
local function load(key, per, now)
  local v = redis.call('GET', key)
  if not v then return now end
  local sp = string.find(v, ' ', 1, true)
  local tat = tonumber(string.sub(v, 1, sp - 1))
  if tat <= now then return now end
  local old = tonumber(string.sub(v, sp + 1))
  if old ~= per then tat = now + (tat - now) * per / old end
  return tat
end

local function store(key, tat, per, now)
  redis.call('SET', key, string.format('%.17g %.17g', tat, per), 'PX', math.ceil(tat - now) + 1000)
end
local EPS = 1e-6
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000.0 + tonumber(t[2]) / 1000.0
else
  now = tonumber(ARGV[1])
end
local lease = ARGV[2]
local ttl = tonumber(ARGV[3])
local reserved = tonumber(ARGV[4])
local reserved_gpu = tonumber(ARGV[5])
local scopes = #KEYS / 4

local sets = {}
local leases = {}
local out = {1}
for i = 0, scopes - 1 do
  local a = 5 + i * 4
  local costs = {1.0, reserved, reserved_gpu}
  for d = 1, 3 do
    local limit = tonumber(ARGV[a + d])
    local used = ''
    if limit > 0 then
      local key = KEYS[i * 4 + d]
      local per = PERIOD / limit
      local start = load(key, per, now)
      local cost = costs[d]
      local new = start + cost * per
      if cost * per > PERIOD + EPS then
        return {0, tostring(i), tostring(d), '-1'}
      end
      if new - now > PERIOD + EPS or (cost == 0 and start - now >= PERIOD) then
        local wait = new - now - PERIOD
        if wait < 1 then wait = 1 end
        return {0, tostring(i), tostring(d), string.format('%.3f', wait)}
      end
      sets[#sets + 1] = {key, new, per}
      used = string.format('%.17g', new - now)
    end
    if d < 3 then out[#out + 1] = used end
  end
  local conc = tonumber(ARGV[a + 4])
  if conc > 0 then
    local key = KEYS[i * 4 + 4]
    -- Leases whose holder stopped renewing them (a crashed sidecar) free their slots here.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= conc then
      return {0, tostring(i), '4', '1000'}
    end
    leases[#leases + 1] = key
  end
end

for _, s in ipairs(sets) do
  store(s[1], s[2], s[3], now)
end
for _, key in ipairs(leases) do
  redis.call('ZADD', key, now + ttl, lease)
  redis.call('PEXPIRE', key, math.ceil(ttl) + 1000)
end
return out
