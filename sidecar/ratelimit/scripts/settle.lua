-- Settle one finished request: move its buckets by real - reserved cost, free its lease.
-- A request released before it ran (a later guard refused it) gets its request unit back too.
--
-- KEYS: 4 per scope: requests TAT, tokens TAT, gpu-seconds TAT, concurrency lease ZSET
-- ARGV[1] now in ms ('' = Redis TIME), ARGV[2] lease id, ARGV[3] request delta (0 or -1),
-- ARGV[4] token delta, ARGV[5] GPU-seconds delta (negative deltas refund),
-- then 4 per scope: rpm, tpm, gpu-seconds per minute, concurrency (0 = no limit)
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
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000.0 + tonumber(t[2]) / 1000.0
else
  now = tonumber(ARGV[1])
end
local lease = ARGV[2]
local deltas = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}

for i = 0, #KEYS / 4 - 1 do
  local a = 5 + i * 4
  for d = 1, 3 do
    local limit = tonumber(ARGV[a + d])
    if limit > 0 and deltas[d] ~= 0 then
      local key = KEYS[i * 4 + d]
      local per = PERIOD / limit
      -- A refund never takes a bucket below empty (TAT below now): it can't hold more than L.
      local new = load(key, per, now) + deltas[d] * per
      if new <= now then
        redis.call('DEL', key)
      else
        store(key, new, per, now)
      end
    end
  end
  if tonumber(ARGV[a + 4]) > 0 then
    redis.call('ZREM', KEYS[i * 4 + 4], lease)
  end
end
return 1
