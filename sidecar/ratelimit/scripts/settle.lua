-- Settle one finished request: move token and GPU-second buckets by the real cost, free its lease.
--
-- KEYS: 3 per scope: tokens TAT, gpu-seconds TAT, concurrency lease ZSET
-- ARGV[1] now in ms ('' = Redis TIME), ARGV[2] lease id, ARGV[3] token delta (real - reserved,
-- negative refunds), ARGV[4] GPU-seconds, then 3 per scope: tpm, gpu-seconds per minute, concurrency
local PERIOD = 60000.0
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000.0 + tonumber(t[2]) / 1000.0
else
  now = tonumber(ARGV[1])
end
local lease = ARGV[2]
local deltas = {tonumber(ARGV[3]), tonumber(ARGV[4])}

for i = 0, #KEYS / 3 - 1 do
  local a = 4 + i * 3
  for d = 1, 2 do
    local limit = tonumber(ARGV[a + d])
    if limit > 0 and deltas[d] ~= 0 then
      local key = KEYS[i * 3 + d]
      local start = tonumber(redis.call('GET', key)) or now
      if start < now then start = now end
      -- A refund never takes a bucket below empty (TAT below now): it can't hold more than L.
      local new = start + deltas[d] * PERIOD / limit
      if new <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.17g', new), 'PX', math.ceil(new - now) + 1000)
      end
    end
  end
  if tonumber(ARGV[a + 3]) > 0 then
    redis.call('ZREM', KEYS[i * 3 + 3], lease)
  end
end
return 1
