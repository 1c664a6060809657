-- create_order.lua (order-creation): turns a checkout's held reservation into
-- a sale, records the order and appends OrderCreated + CheckoutSucceeded, in
-- one script. The append names the version at StockReserved, so a saga that
-- timed out first answers "conflict" here and no order is ever created for it.
--
-- KEYS: history, bus, reservation hash, order hash chorus:order:<order_id>,
--       saga start zset, then one product hash per reserved product.
-- ARGV: the append arguments (2 events), then checkout_id, order_id,
--       client_id, total_cents, items (JSON), created_at, m and the m product
--       ids (in KEYS order).
-- Returns the append result, or {"not_held", state} / {"mismatch", product}
-- with nothing written.
local r = es_check(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, order, started = KEYS[3], KEYS[4], KEYS[5]
local state = redis.call('HGET', resv, '_state')
if state ~= 'held' then return {'not_held', state or ''} end

-- Every reserved product must have its key in KEYS (checked before writing).
local m = tonumber(ARGV[j + 6])
local key_of = {}
for k = 1, m do key_of[ARGV[j + 6 + k]] = KEYS[5 + k] end
local held = redis.call('HGETALL', resv)
for i = 1, #held, 2 do
  if held[i] ~= '_state' and not key_of[held[i]] then return {'mismatch', held[i]} end
end

for i = 1, #held, 2 do
  local q = tonumber(held[i + 1])
  if held[i] ~= '_state' and q then
    redis.call('HINCRBY', key_of[held[i]], 'reserved', -q)
    redis.call('HINCRBY', key_of[held[i]], 'sold', q)
  end
end
redis.call('HSET', resv, '_state', 'sold')
redis.call('HSET', order, 'order_id', ARGV[j + 1], 'checkout_id', ARGV[j], 'client_id', ARGV[j + 2],
  'total_cents', ARGV[j + 3], 'items', ARGV[j + 4], 'created_at', ARGV[j + 5])
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1)
