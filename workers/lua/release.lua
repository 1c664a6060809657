-- release.lua (stock-compensation): gives back what a checkout holds and
-- ends its saga with CheckoutFailed, in one script. Its call is built and its
-- reply parsed by workers/lua/release.c.
--
-- KEYS: history, bus (the append's), reservation hash, saga start zset, then
--       one product hash per held product.
-- ARGV: the append arguments (StockReleased + CheckoutFailed when something
--       is held, CheckoutFailed alone otherwise), then checkout_id, held
--       ("1" or "0": what the caller saw and built the append for),
--       reservation lifetime in seconds (0: kept), m and the m product ids
--       (in KEYS order).
-- Returns the append result, or {"changed", state} / {"mismatch", product}
-- with nothing written (the caller reads the reservation again).
local r, len = es_check(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, started = KEYS[3], KEYS[4]
local state, lines = resv_read(resv)
local held = state == 'held'
if held ~= (ARGV[j + 1] == '1') then return {'changed', state or ''} end

if held then
  local key_of, missing = resv_keys(lines, tonumber(ARGV[j + 3]), j + 4, 5)
  if not key_of then return {'mismatch', missing} end
  for _, l in ipairs(lines) do
    if l[2] then
      redis.call('HINCRBY', key_of[l[1]], 'available', l[2])
      redis.call('HINCRBY', key_of[l[1]], 'reserved', -l[2])
    end
  end
  redis.call('HSET', resv, 'state', 'released')
  local ttl = tonumber(ARGV[j + 2])
  if ttl > 0 then redis.call('EXPIRE', resv, ttl) end
end
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
