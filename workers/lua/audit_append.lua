-- audit_append.lua: appends a batch of audit records whose hashes the
-- worker computed from the head it read, only if the head is still that one
-- (compare-and-set): several audit workers thus keep one linear chain.
--
-- The layout of KEYS and ARGV is owned by workers/audit_append.{h,c}
-- (enums wk_aa_key, wk_aa_arg, wk_aa_rec); the constants below mirror them
-- and the module's integration test checks every field lands where named.
--
-- KEYS: log stream, head hash, then the seen-mark key of each aggregate of
-- the batch (chorus:{audit}:seen:<aggregate>:<id>, a string with '1' at each
-- audited seq). All share the {audit} hash tag.
-- ARGV: the head hash the records were chained to ("" = empty log), the
-- worker's key id ("none" = unkeyed), the seen marks' lifetime in seconds,
-- the number of records, then per record: event_id, entry_id, type,
-- aggregate_id, digest, prev, hash, seen (index into KEYS), seq.
--
-- Returns {"moved", current head} when another worker appended first (the
-- caller re-reads and recomputes), {"wrong_key", the chain's key id} when the
-- chain is keyed with another key (or the worker has none and it is keyed),
-- else {"ok", count}. Log, head and seen marks change together, so a record
-- is never written twice for an event while its mark lives.

local K_LOG, K_HEAD = 1, 2
local A_HEAD, A_KEY_ID, A_SEEN_TTL, A_N, A_FIRST = 1, 2, 3, 4, 5
local R_EVENT_ID, R_ENTRY_ID, R_TYPE, R_AGGREGATE_ID, R_DIGEST, R_PREV, R_HASH, R_SEEN, R_SEQ, R_NARGS =
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9

local head = redis.call('HGET', KEYS[K_HEAD], 'hash') or ''
if head ~= ARGV[A_HEAD] then
  return {'moved', head}
end
local chain_key = redis.call('HGET', KEYS[K_HEAD], 'key_id') or 'none'
local my_key = ARGV[A_KEY_ID]
-- an unkeyed chain may become keyed; a keyed one only goes on with its key
if chain_key ~= 'none' and chain_key ~= my_key then
  return {'wrong_key', chain_key}
end
local count = tonumber(redis.call('HGET', KEYS[K_HEAD], 'count') or '0')
local n = tonumber(ARGV[A_N])
local ttl = tonumber(ARGV[A_SEEN_TTL])

-- Guard: the caller read the seen marks after this head, so none of its
-- records can be marked; refuse the whole batch if one is.
for k = 0, n - 1 do
  local b = A_FIRST + k * R_NARGS
  local seq = tonumber(ARGV[b + R_SEQ])
  local key = KEYS[tonumber(ARGV[b + R_SEEN])]
  if redis.call('GETRANGE', key, seq - 1, seq - 1) == '1' then
    return {'moved', head}
  end
end

local last = head
for k = 0, n - 1 do
  local b = A_FIRST + k * R_NARGS
  redis.call('XADD', KEYS[K_LOG], '*', 'event_id', ARGV[b + R_EVENT_ID], 'entry_id', ARGV[b + R_ENTRY_ID],
    'type', ARGV[b + R_TYPE], 'aggregate_id', ARGV[b + R_AGGREGATE_ID], 'digest', ARGV[b + R_DIGEST],
    'prev', ARGV[b + R_PREV], 'hash', ARGV[b + R_HASH])
  redis.call('SETRANGE', KEYS[tonumber(ARGV[b + R_SEEN])], tonumber(ARGV[b + R_SEQ]) - 1, '1')
  last = ARGV[b + R_HASH]
  count = count + 1
end
for i = K_HEAD + 1, #KEYS do
  redis.call('EXPIRE', KEYS[i], ttl)
end
if my_key ~= 'none' then
  redis.call('HSET', KEYS[K_HEAD], 'hash', last, 'count', count, 'key_id', my_key)
else
  redis.call('HSET', KEYS[K_HEAD], 'hash', last, 'count', count)
end
return {'ok', count}
