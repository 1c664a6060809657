-- audit_append.lua: appends a batch of audit records whose hashes the
-- worker computed from the head it read, only if the head is still that one
-- (compare-and-set): several audit workers thus keep one linear chain.
--
-- KEYS[1] log stream   KEYS[2] head hash   KEYS[3] seen hash
-- ARGV[1] the head hash the records were chained to ("" = empty log)
-- ARGV[2] n, then per record: event_id, entry_id, type, aggregate_id,
-- digest, prev, hash, seen field ("<aggregate>:<aggregate_id>"), seq.
--
-- Returns {"moved", current head} when another worker appended first (the
-- caller re-reads and recomputes), else {"ok", count}. Log, head and seen
-- marks change together, so a record is never written twice for an event.

local head = redis.call('HGET', KEYS[2], 'hash') or ''
if head ~= ARGV[1] then
  return {'moved', head}
end
local count = tonumber(redis.call('HGET', KEYS[2], 'count') or '0')
local n = tonumber(ARGV[2])
local last = head

-- Guard: the caller read the seen marks after this head, so none of its
-- records can be marked; refuse the whole batch if one is.
for k = 0, n - 1 do
  local b = 3 + k * 9
  local seq = tonumber(ARGV[b + 8])
  local s = redis.call('HGET', KEYS[3], ARGV[b + 7]) or ''
  if string.sub(s, seq, seq) == '1' then
    return {'moved', head}
  end
end

for k = 0, n - 1 do
  local b = 3 + k * 9
  redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[b], 'entry_id', ARGV[b + 1], 'type', ARGV[b + 2],
    'aggregate_id', ARGV[b + 3], 'digest', ARGV[b + 4], 'prev', ARGV[b + 5], 'hash', ARGV[b + 6])
  local field, seq = ARGV[b + 7], tonumber(ARGV[b + 8])
  local s = redis.call('HGET', KEYS[3], field) or ''
  if #s < seq then s = s .. string.rep('0', seq - #s) end
  s = string.sub(s, 1, seq - 1) .. '1' .. string.sub(s, seq + 1)
  redis.call('HSET', KEYS[3], field, s)
  last = ARGV[b + 6]
  count = count + 1
end
redis.call('HSET', KEYS[2], 'hash', last, 'count', count)
return {'ok', count}
