-- Renew live concurrency leases so they outlive the request but not a crashed sidecar.
-- KEYS: lease ZSETs; ARGV[1] now ms ('' = Redis TIME), ARGV[2] ttl ms, ARGV[2 + i] lease id of KEYS[i]
-- Returns how many leases were gone already (expired while this sidecar stalled).
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000.0 + tonumber(t[2]) / 1000.0
else
  now = tonumber(ARGV[1])
end
local ttl = tonumber(ARGV[2])
local lost = 0
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[2 + i]) == 0 then
    if redis.call('ZSCORE', key, ARGV[2 + i]) == false then lost = lost + 1 end
  end
  redis.call('PEXPIRE', key, math.ceil(ttl) + 1000)
end
return lost
