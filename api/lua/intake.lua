-- intake.lua: accept a checkout in one atomic step, in one slot (prefixed
-- with append_lib.lua): check the idempotency key, append CheckoutInitiated
-- and store the key's record. Its call is built and its reply parsed by
-- api/lua/intake.c (the one owner of this layout); the event arrives whole,
-- priced by the caller from the catalog it read just before this call.
--
-- KEYS: idempotency record (without a key: the history again, never read),
--       the checkout's history, the bus. On a cluster all three carry the
--       checkout's partition tag: one slot.
-- ARGV: has_key ("1"/"0"), body hash, what the record keeps
--       ("<checkout_id>\n<route letter>"), record TTL in seconds, refused
--       line (0: none; i: line i's product cannot be priced, nothing is to
--       be appended), then the append arguments (absent when refused).
--
-- Returns, writing nothing:
--   {"replay", "<hash>\n<checkout_id>\n<route letter>"} when the key is recorded
--     (the caller compares hashes: same body replays, another is 409);
--   {"refused", i} when line i was refused by the caller (it knows why);
-- else the append's result table (see append_lib.lua).
local has_key = ARGV[1] == '1'
if has_key then
  local rec = redis.call('GET', KEYS[1])
  if rec then
    return {'replay', rec}
  end
end

local refused = tonumber(ARGV[5])
if refused ~= 0 then
  return {'refused', refused}
end

local r = es_append(KEYS[2], KEYS[3], ARGV, 6)
if has_key and r[1] == 'ok' then
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return r
