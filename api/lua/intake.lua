-- intake.lua: accept a checkout: append CheckoutInitiated and store the
-- idempotency record in one atomic step (prefixed with append_lib.lua).
--
-- KEYS: idempotency key (a dummy when the request had none), the checkout's
--       history, the bus.
-- ARGV: has_key ("1"/"0"), body hash, stored response ("<checkout_id>\n<body>"),
--       record TTL in seconds, then the append arguments (es_append_args).
--
-- When the idempotency key is already recorded nothing is written and
-- {"replay", "<hash>\n<checkout_id>\n<body>"} comes back for the caller to
-- compare hashes; otherwise the append's result table (see append_lib.lua).
-- Two requests with one key run one after the other here, so only one of
-- them appends: one key, one saga.
local has_key = ARGV[1] == '1'
if has_key then
  local rec = redis.call('GET', KEYS[1])
  if rec then
    return {'replay', rec}
  end
end
local r = es_append(KEYS[2], KEYS[3], ARGV, 5)
if has_key and r[1] == 'ok' then
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return r
