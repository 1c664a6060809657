-- intake.lua: accept a checkout in one atomic step (prefixed with
-- append_lib.lua): check its lines' prices against the catalog, append
-- CheckoutInitiated and store the idempotency record. Its call is built and
-- its reply parsed by api/lua/intake.c (the one owner of this layout); the
-- event arrives whole, priced by the caller from its price cache.
--
-- KEYS: idempotency record (a dummy when the request had none), the
--       checkout's history, the bus, then the n lines' product hashes.
-- ARGV: has_key ("1"/"0"), body hash, what the record keeps
--       ("<checkout_id>\n<route letter>"), record TTL in seconds, n, the n unit
--       prices the event was priced with, then the append arguments.
--
-- Returns, writing nothing:
--   {"replay", "<hash>\n<checkout_id>\n<route letter>"} when the key is recorded
--     (the caller compares hashes: same body replays, another is 409);
--   {"unknown", line index (1-based)} when a line's product has no price;
--   {"prices", p1, ..., pn} when a price differs from the catalog's (the
--     caller re-prices with these and calls again);
--   an error reply when a stored price is not a valid number (corrupt: a
--     permanent failure, answered 500).
-- else the append's result table (see append_lib.lua).
local MAX_PRICE = 1000000000   -- keeps totals exact

local has_key = ARGV[1] == '1'
if has_key then
  local rec = redis.call('GET', KEYS[1])
  if rec then
    return {'replay', rec}
  end
end

local n = tonumber(ARGV[5])
local prices, stale = {}, false
for i = 1, n do
  local p = redis.call('HGET', KEYS[3 + i], 'price_cents')
  if not p then
    return {'unknown', i}
  end
  local price = string.match(p, '^%d+$') and tonumber(p)
  if not price or price > MAX_PRICE then
    -- stored data is broken: a permanent failure (500), not a client error
    return redis.error_reply('ERR corrupt price_cents of ' .. KEYS[3 + i])
  end
  prices[i] = tostring(price)   -- canonical: "0100" is 100, as the API reads it
  if price ~= tonumber(ARGV[5 + i]) then stale = true end
end
if stale then
  return {'prices', unpack(prices)}
end

local r = es_append(KEYS[2], KEYS[3], ARGV, 6 + n)
if has_key and r[1] == 'ok' then
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return r
