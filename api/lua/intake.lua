-- intake.lua: accept a checkout in one atomic step (prefixed with
-- append_lib.lua): price its lines from the catalog, append CheckoutInitiated
-- and store the idempotency record.
--
-- KEYS: idempotency key (a dummy when the request had none), the checkout's
--       history, the bus, then the n lines' product hashes.
-- ARGV: has_key ("1"/"0"), body hash, stored response
--       ("<checkout_id>\n<body>"), record TTL in seconds, client_id, number
--       of lines n, then n pairs (product_id, quantity), then the append
--       arguments (es_append_args) whose payload tail ends with "data":
--       (the data object is built here, once prices are known).
--
-- Returns, writing nothing:
--   {"replay", "<hash>\n<checkout_id>\n<body>"} when the key is recorded
--     (the caller compares hashes: same body replays, another is 409);
--   {"unknown", product_id} when a line's product has no price;
--   an error reply when a stored price is not a valid number (corrupt);
-- else the append's result table (see append_lib.lua).
--
-- Ids were validated by the caller ([A-Za-z0-9_-]) and quantities are
-- integers, so the data JSON needs no escaping. Two requests with one key
-- run one after the other here, so only one of them appends: one key, one
-- saga.
local MAX_PRICE = 1000000000   -- keeps the total exact in Lua's doubles

local has_key = ARGV[1] == '1'
if has_key then
  local rec = redis.call('GET', KEYS[1])
  if rec then
    return {'replay', rec}
  end
end

local n = tonumber(ARGV[6])
local parts = {'{"client_id":"', ARGV[5], '","items":['}
local total = 0
for i = 0, n - 1 do
  local pid, qty = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local p = redis.call('HGET', KEYS[4 + i], 'price_cents')
  if not p then
    return {'unknown', pid}
  end
  local price = string.match(p, '^%d+$') and tonumber(p)
  if not price or price > MAX_PRICE then
    -- stored data is broken: a permanent failure (500), not a client error
    return redis.error_reply('ERR corrupt price_cents of product ' .. pid)
  end
  total = total + price * tonumber(qty)
  parts[#parts + 1] = string.format('%s{"product_id":"%s","quantity":%s,"unit_price_cents":%d}',
                                    i > 0 and ',' or '', pid, qty, price)
end
parts[#parts + 1] = string.format('],"total_cents":%d}', total)

local a = 7 + 2 * n   -- first append argument
-- one event: its payload tail is ARGV[a + 6]
ARGV[a + 6] = ARGV[a + 6] .. table.concat(parts) .. '}'
local r = es_append(KEYS[2], KEYS[3], ARGV, a)
if has_key and r[1] == 'ok' then
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return r
