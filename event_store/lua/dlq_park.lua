-- dlq_park.lua: parks an entry of a stream in its group's dead-letter
-- stream and acknowledges it, in one script (one slot: both streams carry
-- the bus's hash tag). Its call is built in event_store/deadletter.c.
--
-- KEYS: dead-letter stream, the stream the entry was read from.
-- ARGV: group, the entry's id, then the dead letter's field/value pairs.
--
-- A park is written once per entry: when one of the dead-letter stream's
-- newest RECENT entries already names this stream and entry id, nothing is
-- added (the ack is still sent). That is what a resend looks like: the
-- cluster client sends a command again when its connection broke after it
-- was written, and the first one may have run. Returns {added, acked}.
local RECENT = 16
local dlq, src, group, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2]

local function names_it(f)
  local stream, entry
  for k = 1, #f, 2 do
    if f[k] == 'stream' then stream = f[k + 1] elseif f[k] == 'entry_id' then entry = f[k + 1] end
  end
  return stream == src and entry == id
end

local added = 1
for _, e in ipairs(redis.call('XREVRANGE', dlq, '+', '-', 'COUNT', RECENT)) do
  if names_it(e[2]) then
    added = 0
    break
  end
end
if added == 1 then
  redis.call('XADD', dlq, '*', unpack(ARGV, 3))
end
return {added, redis.call('XACK', src, group, id)}
