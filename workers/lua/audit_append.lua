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
-- audited seq), each once. All share the {audit} hash tag.
-- ARGV: the head hash the records were chained to ("" = empty log), the
-- worker's key id ("none" = unkeyed), the seen marks' lifetime in seconds,
-- the number of records, the number of runs, then per record: event_id,
-- entry_id, type, aggregate_id, digest, hash; then per run of consecutive
-- seqs the records cover in one aggregate: seen (index into KEYS), first
-- seq, last seq. A record's `prev` is not sent: the script writes the hash
-- before it (the head for the first, 64 '0' on an empty log), so every
-- stored link is the chain's real one.
--
-- Returns {"moved", current head} when another worker appended first (the
-- caller re-reads and recomputes) or a seq of a run is already marked (or
-- named twice), {"wrong_key", the chain's key id} when the chain is keyed
-- with another key (or the worker has none and it is keyed), else
-- {"ok", count}. Log, head and seen marks change together, so a record is
-- never written twice for an event while its mark lives.
--
-- Cost: one XADD per record; one GET and one SET (with the lifetime) per
-- aggregate; one HMGET and one HSET per call.

local K_LOG, K_HEAD, K_FIRST_SEEN = 1, 2, 3
local A_HEAD, A_KEY_ID, A_SEEN_TTL, A_N, A_NRUNS, A_FIRST = 1, 2, 3, 4, 5, 6
local R_EVENT_ID, R_ENTRY_ID, R_TYPE, R_AGGREGATE_ID, R_DIGEST, R_HASH, R_NARGS = 0, 1, 2, 3, 4, 5, 6
local U_SEEN, U_FIRST, U_LAST, U_NARGS = 0, 1, 2, 3
local GENESIS = string.rep('0', 64)

local h = redis.call('HMGET', KEYS[K_HEAD], 'hash', 'key_id', 'count')
local head = h[1] or ''
if head ~= ARGV[A_HEAD] then
  return {'moved', head}
end
local chain_key = h[2] or 'none'
local my_key = ARGV[A_KEY_ID]
-- an unkeyed chain may become keyed; a keyed one only goes on with its key
if chain_key ~= 'none' and chain_key ~= my_key then
  return {'wrong_key', chain_key}
end
local count = tonumber(h[3] or '0')
local n = tonumber(ARGV[A_N])
local nruns = tonumber(ARGV[A_NRUNS])
local ttl = tonumber(ARGV[A_SEEN_TTL])

-- Guard: the caller read the seen marks after this head (or assumed none),
-- so no seq of its runs can be marked; refuse the whole batch if one is.
-- Each aggregate's mark is read once and its new value built here ('\0'
-- fills a gap, as SETRANGE would).
local marks = {}
for r = 0, nruns - 1 do
  local b = A_FIRST + n * R_NARGS + r * U_NARGS
  local k, first, last = tonumber(ARGV[b + U_SEEN]), tonumber(ARGV[b + U_FIRST]), tonumber(ARGV[b + U_LAST])
  if not (k and first and last and k >= K_FIRST_SEEN and k <= #KEYS and first >= 1 and last >= first) then
    return redis.error_reply('audit_append.lua: run ' .. r .. ' is not a seen key and 1 <= first <= last')
  end
  local m = marks[k] or redis.call('GET', KEYS[k]) or ''
  if string.find(string.sub(m, first, last), '1', 1, true) then
    return {'moved', head}
  end
  if #m < first - 1 then
    m = m .. string.rep('\0', first - 1 - #m)
  end
  marks[k] = string.sub(m, 1, first - 1) .. string.rep('1', last - first + 1) .. string.sub(m, last + 1)
end

local last = head ~= '' and head or GENESIS
for k = 0, n - 1 do
  local b = A_FIRST + k * R_NARGS
  redis.call('XADD', KEYS[K_LOG], '*', 'event_id', ARGV[b + R_EVENT_ID], 'entry_id', ARGV[b + R_ENTRY_ID],
    'type', ARGV[b + R_TYPE], 'aggregate_id', ARGV[b + R_AGGREGATE_ID], 'digest', ARGV[b + R_DIGEST],
    'prev', last, 'hash', ARGV[b + R_HASH])
  last = ARGV[b + R_HASH]
  count = count + 1
end

for k = K_FIRST_SEEN, #KEYS do
  if marks[k] then
    redis.call('SET', KEYS[k], marks[k], 'EX', ttl)
  end
end
if my_key ~= 'none' then
  redis.call('HSET', KEYS[K_HEAD], 'hash', last, 'count', count, 'key_id', my_key)
else
  redis.call('HSET', KEYS[K_HEAD], 'hash', last, 'count', count)
end
return {'ok', count}
