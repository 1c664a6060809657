-- dlq_retry.lua: move dead letters back to their group's redelivery stream.
-- KEYS: dead-letter stream, redelivery stream.
-- ARGV: an entry id, or "*" with a count to move the oldest count entries.
-- Returns the number of entries moved (0 when the id is not there).
local function move(e)
  local f = e[2]
  local fields = {}
  for k = 1, #f, 2 do fields[f[k]] = f[k + 1] end
  if fields['type'] == nil or fields['payload'] == nil then
    return 0
  end
  redis.call('XADD', KEYS[2], '*', 'type', fields['type'], 'payload', fields['payload'],
             'ts', fields['ts'] or '0', 'origin', fields['entry_id'] or '', 'dead_letter', e[1])
  redis.call('XDEL', KEYS[1], e[1])
  return 1
end

local entries
if ARGV[1] == '*' then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
end
local moved = 0
for _, e in ipairs(entries) do
  moved = moved + move(e)
end
return moved
