-- reserve.lua (stock-reservation): records a checkout's reservation and
-- appends StockReserved in the same script, once every line is held in its
-- product's slot (line.lua: the stock moved there, one line at a time). The
-- record is the checkout-slot view of the reservation that order creation
-- and compensation settle. Its call is built and its reply parsed by
-- workers/lua/reserve.c (the one owner of this layout).
--
-- KEYS: history, bus (the append's), reservation hash (all one slot: the
--       checkout's partition tag).
-- ARGV: the append arguments (StockReserved), then m and the m pairs
--       (product id, quantity) (duplicate lines summed).
-- Returns the append result ({"dup"} / {"conflict"} with nothing done), or
-- {"exists", state} with nothing written when the checkout already has a
-- reservation.
-- (es_check_after: the step's ids derive from its cause and are only ever
-- appended at the cause's seq, so a redelivery's copy can only follow it)
local r, len = es_check_after(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local m = tonumber(ARGV[j])
local resv = KEYS[3]
local state = redis.call('HGET', resv, 'state')
if state then return {'exists', state} end

local fields = {'state', 'held'}
for k = 1, m do
  fields[#fields + 1] = 'p:' .. ARGV[j + 2 * k - 1]
  fields[#fields + 1] = ARGV[j + 2 * k]
end
redis.call('HSET', resv, unpack(fields))
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
