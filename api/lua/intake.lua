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
--       be appended), confirm ("1": the caller will WAIT for replicas), then
--       the append arguments (absent when refused).
--
-- Returns, writing nothing:
--   {"replay", "<hash>\n<checkout_id>\n<route letter>"} when the key is recorded
--     (the caller compares hashes: same body replays, another is 409); with
--     confirm, the record's expiry is set again to what it is: a write of
--     this connection that replicates after the record, so the caller's
--     WAIT covers the record even when another connection wrote it (WAIT is
--     documented to cover the connection's own writes; a cluster does not
--     replicate the PUBLISH a single server's WAIT relies on too);
--   {"refused", i} when line i was refused by the caller (it knows why);
-- else the append's result table (see append_lib.lua).
local has_key = ARGV[1] == '1'
if has_key then
  local rec = redis.call('GET', KEYS[1])
  if rec then
    if ARGV[6] == '1' then
      local ttl = redis.call('PTTL', KEYS[1])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
    end
    return {'replay', rec}
  end
end

local refused = tonumber(ARGV[5])
if refused ~= 0 then
  return {'refused', refused}
end

-- (expected 0: es_append_after reads the whole history, as es_append would,
-- but only when it is not empty)
local r = es_append_after(KEYS[2], KEYS[3], ARGV, 7)
if has_key and r[1] == 'ok' then
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return r
