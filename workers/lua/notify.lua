-- notify.lua: records the one notification of a terminal checkout.
--
-- KEYS[1] chorus:notify:<checkout_id> (marker hash)   KEYS[2] chorus:notify:log
-- ARGV: checkout_id, status, detail field ("order_id" or "reason"), its
-- value, event_id of the terminal event.
--
-- The first call writes the log entry and the marker together; later calls
-- (redeliveries, a second worker copy) only read the marker. Returns
-- {"new"|"dup", webhook_status or ""}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'dup', redis.call('HGET', KEYS[1], 'webhook_status') or ''}
end
local id = redis.call('XADD', KEYS[2], '*', 'checkout_id', ARGV[1], 'status', ARGV[2], ARGV[3], ARGV[4],
  'event_id', ARGV[5])
redis.call('HSET', KEYS[1], 'checkout_id', ARGV[1], 'status', ARGV[2], 'event_id', ARGV[5], 'log_id', id)
return {'new', ''}
