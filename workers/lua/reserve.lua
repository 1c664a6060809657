-- reserve.lua (stock-reservation): reserves every line of a checkout or none,
-- and appends StockReserved in the same script, so the reservation and its
-- event are never one without the other. Its call is built and its reply
-- parsed by workers/lua/reserve.c (the one owner of this layout).
--
-- KEYS: history, bus (the append's), reservation hash, then one product hash
--       per line.
-- ARGV: the append arguments (StockReserved), then m and the m pairs
--       (product id, quantity) in KEYS order (duplicate lines summed).
-- Returns the append result ({"dup"} / {"conflict"} with nothing done), or
-- {"short", product_id} / {"unknown", product_id} with nothing written when a
-- line cannot be reserved, or {"exists", state} when the checkout already has
-- a reservation.
local r, len = es_check(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local m = tonumber(ARGV[j])
local resv = KEYS[3]
local state = redis.call('HGET', resv, 'state')
if state then return {'exists', state} end

-- An integer field, nil when absent or not an integer ("0" for an absent
-- reserved counter).
local function int(v, dflt)
  if not v then return dflt end
  if not string.match(v, '^%-?%d+$') then return nil end
  return tonumber(v)
end

-- Check every line first: all or none.
local avail, held = {}, {}
for k = 1, m do
  local pid, q = ARGV[j + 2 * k - 1], tonumber(ARGV[j + 2 * k])
  local v = redis.call('HMGET', KEYS[3 + k], 'available', 'reserved')
  local av, rs = int(v[1], nil), int(v[2], 0)
  if not av or not rs then return {'unknown', pid} end
  if av < q then return {'short', pid} end
  avail[k], held[k] = av, rs
end

local fields = {'state', 'held'}
for k = 1, m do
  local pid, q = ARGV[j + 2 * k - 1], tonumber(ARGV[j + 2 * k])
  redis.call('HSET', KEYS[3 + k], 'available', avail[k] - q, 'reserved', held[k] + q)
  fields[#fields + 1] = 'p:' .. pid
  fields[#fields + 1] = q
end
redis.call('HSET', resv, unpack(fields))
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
