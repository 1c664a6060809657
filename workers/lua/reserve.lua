-- reserve.lua (stock-reservation): reserves every line of a checkout or none,
-- and appends StockReserved in the same script, so the reservation and its
-- event are never one without the other.
--
-- KEYS: history, bus, reservation hash chorus:resv:<checkout>, then one
--       product hash per line.
-- ARGV: the append arguments (StockReserved), then m, the m product ids and
--       the m quantities (duplicate lines already summed).
-- Returns the append result ({"dup"} / {"conflict"} with nothing done), or
-- {"short", product_id} / {"unknown", product_id} with nothing written when a
-- line cannot be reserved, or {"exists", state} when the checkout already has
-- a reservation.
local r = es_check(KEYS[1], ARGV, 1)
if r then return r end

-- The integer value of a hash field, nil when absent or not an integer (so a
-- HINCRBY on it could fail half-way through the script).
local function int_field(key, f)
  local v = redis.call('HGET', key, f)
  if not v or not string.match(v, '^%-?%d+$') then return nil end
  return tonumber(v)
end

local j = 1 + es_argc(ARGV, 1)
local m = tonumber(ARGV[j])
local state = redis.call('HGET', KEYS[3], '_state')
if state then return {'exists', state} end

-- Check every line first: all or none.
for k = 1, m do
  local av = int_field(KEYS[3 + k], 'available')
  local rs = redis.call('HEXISTS', KEYS[3 + k], 'reserved') == 0 or int_field(KEYS[3 + k], 'reserved')
  if not av or not rs then return {'unknown', ARGV[j + k]} end
  if av < tonumber(ARGV[j + m + k]) then return {'short', ARGV[j + k]} end
end

for k = 1, m do
  local q = tonumber(ARGV[j + m + k])
  redis.call('HINCRBY', KEYS[3 + k], 'available', -q)
  redis.call('HINCRBY', KEYS[3 + k], 'reserved', q)
  redis.call('HSET', KEYS[3], ARGV[j + k], q)
end
redis.call('HSET', KEYS[3], '_state', 'held')
return es_write(KEYS[1], KEYS[2], ARGV, 1)
