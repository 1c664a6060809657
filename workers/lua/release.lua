-- release.lua (stock-compensation): gives back what a checkout holds and
-- ends its saga with CheckoutFailed, in one script.
--
-- KEYS: history, bus, reservation hash, saga start zset, then one product
--       hash per held product.
-- ARGV: the append arguments (StockReleased + CheckoutFailed when something
--       is held, CheckoutFailed alone otherwise), then checkout_id, held
--       ("1" or "0": what the caller saw and built the append for), m and the
--       m product ids (in KEYS order).
-- Returns the append result, or {"changed", state} / {"mismatch", product}
-- with nothing written (the caller reads the reservation again).
local r = es_check(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, started = KEYS[3], KEYS[4]
local state = redis.call('HGET', resv, '_state')
local held = state == 'held'
if held ~= (ARGV[j + 1] == '1') then return {'changed', state or ''} end

if held then
  local m = tonumber(ARGV[j + 2])
  local key_of = {}
  for k = 1, m do key_of[ARGV[j + 2 + k]] = KEYS[4 + k] end
  local lines = redis.call('HGETALL', resv)
  for i = 1, #lines, 2 do
    if lines[i] ~= '_state' and not key_of[lines[i]] then return {'mismatch', lines[i]} end
  end
  for i = 1, #lines, 2 do
    local q = tonumber(lines[i + 1])
    if lines[i] ~= '_state' and q then
      redis.call('HINCRBY', key_of[lines[i]], 'available', q)
      redis.call('HINCRBY', key_of[lines[i]], 'reserved', -q)
    end
  end
  redis.call('HSET', resv, '_state', 'released')
end
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1)
