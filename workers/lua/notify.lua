-- notify.lua: records the one notification of a terminal checkout. Its call
-- is built and its reply parsed by workers/lua/notify.c.
--
-- KEYS: the checkout's marker hash, the notification log stream.
-- ARGV: checkout_id, status, detail field ("order_id" or "reason"), its
--       value, event_id of the terminal event, the marker's lifetime in
--       seconds (0: kept), the log's oldest id to keep ("0": keep all).
--
-- The first call writes the log entry and the marker together (entries older
-- than the lifetime leave the log as new ones come); later calls
-- (redeliveries, a second worker copy) only read the marker. Returns
-- {"new"|"dup", webhook_status or ""}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'dup', redis.call('HGET', KEYS[1], 'webhook_status') or ''}
end
local id
if ARGV[7] ~= '0' then
  id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[7], '*', 'checkout_id', ARGV[1], 'status', ARGV[2],
    ARGV[3], ARGV[4], 'event_id', ARGV[5])
else
  id = redis.call('XADD', KEYS[2], '*', 'checkout_id', ARGV[1], 'status', ARGV[2], ARGV[3], ARGV[4],
    'event_id', ARGV[5])
end
-- the marker names the log entry; checkout and event ids are in the key's
-- name and in that entry, not stored a third time
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'log_id', id)
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return {'new', ''}
