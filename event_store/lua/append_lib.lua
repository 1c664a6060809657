-- append_lib.lua: the event store's append, shared by every script that must
-- write events atomically with its own effects (prepended at build time).
--
-- Arguments from index i of argv: expected version (-1: any), n, then for
-- each event: event_id, type, ts, payload_head, payload_tail. The payload
-- stored is head .. seq .. tail, so the seq is assigned here, atomically.
-- A history element is "event_id\nbus_id\ntype\nts\npayload".

-- Returns nil and the current version when the append may go ahead, else
-- the result table: {"dup", version, seq1, id1, ...} when the first event id
-- is already in the history, {"conflict", version} when the expected version
-- does not match.
local function es_check(hist, argv, i)
  local expected = tonumber(argv[i])
  local n = tonumber(argv[i + 1])
  local first = argv[i + 2]
  -- One read gives both the length and the ids (an absent history is {}).
  local els = redis.call('LRANGE', hist, 0, -1)
  local len = #els
  local found
  for s = 1, len do
    if string.sub(els[s], 1, 36) == first then
      found = {}
      for t = 1, len do found[string.sub(els[t], 1, 36)] = t end
      break
    end
  end
  if found then
    local out = {'dup', len}
    for k = 0, n - 1 do
      local s = found[argv[i + 2 + k * 5]]
      local id = ''
      if s then
        local el = els[s]
        local a = string.find(el, '\n', 1, true)
        local b = string.find(el, '\n', a + 1, true)
        id = string.sub(el, a + 1, b - 1)
      end
      out[#out + 1] = s or 0
      out[#out + 1] = id
    end
    return out
  end
  if expected >= 0 and len ~= expected then
    return {'conflict', len}
  end
  return nil, len
end

-- Writes the events to the bus and the history; returns {"ok", version, seq1, id1, ...}.
-- len: the history's length if the caller has just read it (es_check's second
-- result; saves a call), else nil. The history gets one RPUSH for all events.
local function es_write(hist, bus, argv, i, len)
  local n = tonumber(argv[i + 1])
  local version = len or redis.call('LLEN', hist)
  local out = {'ok', version + n}
  local els = {}
  for k = 0, n - 1 do
    local b = i + 2 + k * 5
    local seq = version + k + 1
    local payload = argv[b + 3] .. seq .. argv[b + 4]
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

-- Number of append arguments starting at i (to find what follows them).
local function es_argc(argv, i)
  return 2 + tonumber(argv[i + 1]) * 5
end
