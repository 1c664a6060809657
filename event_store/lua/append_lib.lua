-- append_lib.lua: the event store's append, shared by every script that must
-- write events atomically with its own effects (prepended at build time).
--
-- Arguments from index i of argv: expected version (-1: any), n, then for
-- each event: event_id, type, ts, payload_head, payload_tail. With -1 the
-- payload stored is head .. seq .. tail, so the seq is assigned here,
-- atomically. With an expected version the append goes ahead only at that
-- version, so event k's seq is expected + k: the caller sends the whole
-- payload (seq in it) as the head and an empty tail, and the script copies
-- it once instead of building it (es_append_args does both).
-- A history element is "event_id\nbus_id\ntype\nts\npayload".

-- The "dup" result when the first event id of the request is among els (the
-- history's elements from position base + 1 on; len: the history's length),
-- else nil: {"dup", len, seq1, id1, ...}, 0 and "" for an event not found.
local function es_dup(els, base, len, argv, i)
  local n = tonumber(argv[i + 1])
  local first = argv[i + 2]
  local found
  for s = 1, #els do
    if string.sub(els[s], 1, 36) == first then
      found = {}
      for t = 1, #els do found[string.sub(els[t], 1, 36)] = base + t end
      break
    end
  end
  if not found then return nil end
  local out = {'dup', len}
  for k = 0, n - 1 do
    local s = found[argv[i + 2 + k * 5]]
    local id = ''
    if s then
      local el = els[s - base]
      local a = string.find(el, '\n', 1, true)
      local b = string.find(el, '\n', a + 1, true)
      id = string.sub(el, a + 1, b - 1)
    end
    out[#out + 1] = s or 0
    out[#out + 1] = id
  end
  return out
end

-- Returns nil and the current version when the append may go ahead, else
-- the result table: {"dup", version, seq1, id1, ...} when the first event id
-- is already in the history, {"conflict", version} when the expected version
-- does not match. Reads the whole history: an event may be anywhere in it.
local function es_check(hist, argv, i)
  local expected = tonumber(argv[i])
  -- One read gives both the length and the ids (an absent history is {}).
  local els = redis.call('LRANGE', hist, 0, -1)
  local len = #els
  local dup = es_dup(els, 0, len, argv, i)
  if dup then return dup end
  if expected >= 0 and len ~= expected then
    return {'conflict', len}
  end
  return nil, len
end

-- es_check, with the same answers, for a caller whose events, if already
-- appended, can only sit after position `expected`: each event id is its
-- alone, and every append of it names that same expected version (the saga
-- steps: ids derived from the cause event, expected = the cause's seq; the
-- intake: expected 0, the whole history). Reads only the history's length,
-- and the elements after `expected` when there are any (a redelivery, a
-- race): the common case copies no history element into Lua. With -1 (any
-- version) it is es_check.
local function es_check_after(hist, argv, i)
  local expected = tonumber(argv[i])
  if expected < 0 then return es_check(hist, argv, i) end
  local len = redis.call('LLEN', hist)
  if len == expected then return nil, len end
  if len > expected then
    local dup = es_dup(redis.call('LRANGE', hist, expected, -1), expected, len, argv, i)
    if dup then return dup end
  end
  return {'conflict', len}
end

-- Writes the events to the bus and the history; returns {"ok", version, seq1, id1, ...}.
-- len: the history's length if the caller has just read it (es_check's second
-- result; saves a call), else nil. The history gets one RPUSH for all events.
local function es_write(hist, bus, argv, i, len)
  local expected = tonumber(argv[i])
  local n = tonumber(argv[i + 1])
  local version = len or redis.call('LLEN', hist)
  if expected >= 0 and version ~= expected then
    -- the payloads carry seqs from expected: never written at another version
    return redis.error_reply('append_lib: es_write at version ' .. version .. ', expected ' .. expected)
  end
  local out = {'ok', version + n}
  local els = {}
  for k = 0, n - 1 do
    local b = i + 2 + k * 5
    local seq = version + k + 1
    local payload = argv[b + 3]
    if expected < 0 then payload = payload .. seq .. argv[b + 4] end
    local id = redis.call('XADD', bus, '*', 'type', argv[b + 1], 'payload', payload, 'ts', argv[b + 2])
    els[k + 1] = argv[b] .. '\n' .. id .. '\n' .. argv[b + 1] .. '\n' .. argv[b + 2] .. '\n' .. payload
    out[#out + 1] = seq
    out[#out + 1] = id
  end
  redis.call('RPUSH', hist, unpack(els))
  return out
end

-- Check, then write.
local function es_append(hist, bus, argv, i)
  local r, len = es_check(hist, argv, i)
  if r then return r end
  return es_write(hist, bus, argv, i, len)
end

-- es_check_after, then write.
local function es_append_after(hist, bus, argv, i)
  local r, len = es_check_after(hist, argv, i)
  if r then return r end
  return es_write(hist, bus, argv, i, len)
end

-- Number of append arguments starting at i (to find what follows them).
local function es_argc(argv, i)
  return 2 + tonumber(argv[i + 1]) * 5
end
