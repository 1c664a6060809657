-- dlq_retry.lua: move dead letters back to their group's redelivery stream.
-- KEYS: dead-letter stream, redelivery stream.
-- ARGV: an entry id, or "*" with a count to move the oldest count entries.
-- Returns the number of entries moved (0 when the id is not there).
-- An entry without a type or payload (parked because it could not be
-- decoded) can never be re-delivered: it stays, and "*" reads past it, so
-- the good entries behind it still move.
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

local moved = 0
if ARGV[1] ~= '*' then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])) do
    moved = moved + move(e)
  end
  return moved
end
local want, from = tonumber(ARGV[2]), '-'
local scanned, limit = 0, 10 * tonumber(ARGV[2]) + 100   -- bounds the time past unmovable entries
while moved < want and scanned < limit do
  local page = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', want - moved)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    moved = moved + move(e)
    scanned = scanned + 1
  end
  from = '(' .. page[#page][1]
end
return moved
