-- release.lua (stock-compensation): ends a failed saga with CheckoutFailed
-- (after StockReleased when compensation released lines: line.lua already
-- moved their stock back in the products' slots), marks a held reservation
-- record released and takes the saga out of the timeout set, in one script
-- in the checkout's slot. Its call is built and its reply parsed by
-- workers/lua/release.c.
--
-- KEYS: history, bus (the append's), reservation hash, saga start zset (all
--       one slot: the checkout's partition tag).
-- ARGV: the append arguments (StockReleased + CheckoutFailed when released,
--       CheckoutFailed alone otherwise), then checkout_id, released ("1" or
--       "0"), reservation lifetime in seconds (0: kept).
-- Returns the append result, or {"changed", state} with nothing written when
-- the record is held but the caller released nothing (a held record means
-- every line was held before any compensation: they cannot all be gone).
-- (es_check_after: the step's ids derive from its cause and are only ever
-- appended at the cause's seq, so a redelivery's copy can only follow it)
local r, len = es_check_after(KEYS[1], ARGV, 1)
if r then return r end

local j = 1 + es_argc(ARGV, 1)
local resv, started = KEYS[3], KEYS[4]
local state = redis.call('HGET', resv, 'state')
if state == 'held' then
  if ARGV[j + 1] ~= '1' then return {'changed', state} end
  redis.call('HSET', resv, 'state', 'released')
  local ttl = tonumber(ARGV[j + 2])
  if ttl > 0 then redis.call('EXPIRE', resv, ttl) end
end
redis.call('ZREM', started, ARGV[j])
return es_write(KEYS[1], KEYS[2], ARGV, 1, len)
