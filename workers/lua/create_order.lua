-- create_order.lua (order-creation): turns a checkout's held reservation into
-- a sale, records the order and appends OrderCreated + CheckoutSucceeded, in
-- one script. The append names the version at StockReserved, so a saga that
-- timed out first answers "conflict" here and no order is ever created for it.
-- Its call is built and its reply parsed by workers/lua/create_order.c.
--
-- KEYS: history, bus (the append's), reservation hash, order hash, saga
--       start zset, then one product hash per reserved product.
-- ARGV: the append arguments (2 events), then checkout_id, order_id,
--       client_id, total_cents, items (JSON), created_at, reservation
--       lifetime in seconds (0: kept), m and the m product ids (KEYS order).
-- Returns the append result, or {"not_held", state} / {"mismatch", product}
-- with nothing written.
local r, len = es_check(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, order, started = KEYS[3], KEYS[4], KEYS[5]
local state, lines = resv_read(resv)
if state ~= 'held' then return {'not_held', state or ''} end

-- Every reserved product must have its key in KEYS (checked before writing).
local key_of, missing = resv_keys(lines, tonumber(ARGV[j + 7]), j + 8, 6)
if not key_of then return {'mismatch', missing} end

for _, l in ipairs(lines) do
  if l[2] then
    redis.call('HINCRBY', key_of[l[1]], 'reserved', -l[2])
    redis.call('HINCRBY', key_of[l[1]], 'sold', l[2])
  end
end
redis.call('HSET', resv, 'state', 'sold')
local ttl = tonumber(ARGV[j + 6])
if ttl > 0 then redis.call('EXPIRE', resv, ttl) end
-- (the order id is the key's name: not stored again as a field)
redis.call('HSET', order, 'checkout_id', ARGV[j], 'client_id', ARGV[j + 2],
  'total_cents', ARGV[j + 3], 'items', ARGV[j + 4], 'created_at', ARGV[j + 5])
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
