-- create_order.lua (order-creation): records the order, marks the checkout's
-- held reservation sold and appends OrderCreated + CheckoutSucceeded, in one
-- script in the checkout's slot. The append names the version at
-- StockReserved, so a saga that timed out first answers "conflict" here and
-- no order is ever created for it. The stock itself moves afterwards, line by
-- line in each product's slot (line.lua sell: held -> sold); a redelivery
-- that finds this append done ("dup") sells again, which changes nothing for
-- lines already sold. Its call is built and its reply parsed by
-- workers/lua/create_order.c.
--
-- KEYS: history, bus (the append's), reservation hash, order hash, saga
--       start zset (all one slot: the checkout's partition tag).
-- ARGV: the append arguments (2 events), then checkout_id, order_id,
--       client_id, total_cents, items (JSON), created_at, reservation
--       lifetime in seconds (0: kept), m and the m product ids.
-- Returns the append result, or {"not_held", state} / {"mismatch", product}
-- with nothing written.
-- (es_check_after: the step's ids derive from its cause and are only ever
-- appended at the cause's seq, so a redelivery's copy can only follow it)
local r, len = es_check_after(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, order, started = KEYS[3], KEYS[4], KEYS[5]
local state, lines = resv_read(resv)
if state ~= 'held' then return {'not_held', state or ''} end

-- Every reserved product must be one the caller sells (checked before writing).
local missing = resv_unnamed(lines, tonumber(ARGV[j + 7]), j + 8)
if missing then return {'mismatch', missing} end

redis.call('HSET', resv, 'state', 'sold')
local ttl = tonumber(ARGV[j + 6])
if ttl > 0 then redis.call('EXPIRE', resv, ttl) end
-- (the order id is the key's name: not stored again as a field)
redis.call('HSET', order, 'checkout_id', ARGV[j], 'client_id', ARGV[j + 2],
  'total_cents', ARGV[j + 3], 'items', ARGV[j + 4], 'created_at', ARGV[j + 5])
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
