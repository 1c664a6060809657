-- line.lua (stock-reservation, order-creation, stock-compensation): one line
-- of a checkout, in its product's slot. The mark (cm_key_hold: one per
-- product and checkout, hashed with the product key) records where the line
-- stands; each transition moves stock between the product's counters in the
-- same script, so `available + reserved + sold` never changes here and no
-- counter goes below zero. Every op is idempotent: an op that finds the mark
-- already past it changes nothing and answers the mark as it is. Its call is
-- built and its reply parsed by workers/lua/line.c.
--
-- Mark states ("<state>:<qty>"):
--   held      the quantity is in `reserved` (no expiry while held)
--   sold      moved from `reserved` to `sold` (order created)
--   released  given back by compensation
--   undone    given back by stock-reservation itself after another line of
--             the checkout was refused (not a compensation's release)
--   short / unknown   refused: not enough `available` / no valid product
--   void      compensation came first: a later hold finds it and holds nothing
-- Every state but held expires after the lifetime given (0: kept).
--
-- One call takes every line of one product that a batch moves with one op
-- (several checkouts' lines: the marks share the product's slot), each in
-- turn as if called alone in that order (the marks and counters read once
-- and written once: the fast path below).
--
-- KEYS: product hash, then one mark per line.
-- ARGV: op (hold | undo | sell | release), lifetime in seconds of a settled
--       mark (0: kept), then one quantity per line (used by hold).
-- Returns state, qty, changed for each line, flat (3 values per line, not a
-- table each: Redis converts a nested table much more slowly): the mark
-- after the op ("none" when absent and left so), its quantity, and 1 when
-- this call changed it; a line whose mark's key holds something else (a
-- value that is no mark, a mark without a number, or, while the counters
-- are plain integers, a key of another type) answers a nil quantity and
-- changes nothing: it fails alone, whatever the op.
local product, op, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
if op ~= 'hold' and op ~= 'undo' and op ~= 'sell' and op ~= 'release' then
  return redis.error_reply('line.lua: unknown op ' .. tostring(op))
end

local function settle(mark, state, qty)
  if ttl > 0 then
    redis.call('SET', mark, state .. ':' .. qty, 'EX', ttl)
  else
    redis.call('SET', mark, state .. ':' .. qty)
  end
  return {state, qty, 1}
end

-- A stored mark's state and quantity; nil when it is no mark ("<state>:<n>"):
-- its line then fails alone.
local function parse_mark(m)
  local x = string.find(m, ':', 1, true)
  local q = x and tonumber(string.sub(m, x + 1))
  if not q then return nil end
  return string.sub(m, 1, x - 1), q
end

-- An integer field, nil when absent or not an integer (dflt when absent).
local function int(v, dflt)
  if not v then return dflt end
  if not string.match(v, '^%-?%d+$') then return nil end
  return tonumber(v)
end

local function step(mark, hold_qty)
  local cur = redis.call('GET', mark)
  if not cur then
    if op == 'release' then return settle(mark, 'void', 0) end
    if op ~= 'hold' then return {'none', 0, 0} end
    local q = hold_qty
    local v = redis.call('HMGET', product, 'available', 'reserved')
    local av, rs = int(v[1], nil), int(v[2], 0)
    if not av or not rs then return settle(mark, 'unknown', q) end
    if av < q then return settle(mark, 'short', q) end
    redis.call('HSET', product, 'available', av - q, 'reserved', rs + q)
    redis.call('SET', mark, 'held:' .. q)
    return {'held', q, 1}
  end
  local state, q = parse_mark(cur)
  if not state then return {cur, false, 0} end
  if state ~= 'held' or op == 'hold' then return {state, q, 0} end
  if op == 'sell' then
    redis.call('HINCRBY', product, 'reserved', -q)
    redis.call('HINCRBY', product, 'sold', q)
    return settle(mark, 'sold', q)
  end
  -- undo or release: back to available
  redis.call('HINCRBY', product, 'reserved', -q)
  redis.call('HINCRBY', product, 'available', q)
  return settle(mark, op == 'undo' and 'undone' or 'released', q)
end

-- Appends one line's {state, qty, changed} to the flat reply out.
local function answer(out, r)
  out[#out + 1] = r[1]
  -- a mark whose quantity is not a number answers nil for that line alone
  -- (false: a nil in a Lua table would shift every later line)
  out[#out + 1] = r[2] or false
  out[#out + 1] = r[3]
end

-- The fast path: the same steps on the marks and counters read once (MGET,
-- HMGET) and written once at the end (MSET / SET EX per settled mark, one
-- HSET of the counters that moved), so a call costs a few commands whatever
-- its number of lines. It runs only when every counter is absent or a plain
-- integer (what HINCRBY and int() read alike); else the steps above, one
-- line at a time, answer exactly as they always have.
local CHUNK = 500   -- keys per MGET / MSET (unpack's stack stays small)

local function plain(v)
  return not v or v == '0' or (#v <= 16 and string.match(v, '^%-?[1-9]%d*$') ~= nil)
end

local function fast(v)
  -- available, reserved, sold (nil: absent)
  local c = {v[1] and tonumber(v[1]) or nil, v[2] and tonumber(v[2]) or nil, v[3] and tonumber(v[3]) or nil}
  local moved = {false, false, false}
  local function add(f, d) c[f] = (c[f] or 0) + d; moved[f] = true end
  local cur, order, keep, expiring = {}, {}, {}, {}
  local absent = {}
  for a = 2, #KEYS, CHUNK do
    local b = math.min(#KEYS, a + CHUNK - 1)
    local got = redis.call('MGET', unpack(KEYS, a, b))
    for k = a, b do
      if cur[KEYS[k]] == nil then
        cur[KEYS[k]] = got[k - a + 1]
        if not got[k - a + 1] then absent[#absent + 1] = KEYS[k] end
      end
    end
  end
  -- MGET answers nil for a key of another type as for no key: such a key is
  -- no mark (someone else wrote it), so its line fails alone and it is left
  -- as it is. One EXISTS over the nil ones says whether there is any.
  local foreign = {}
  local there = 0
  for a = 1, #absent, CHUNK do
    there = there + redis.call('EXISTS', unpack(absent, a, math.min(#absent, a + CHUNK - 1)))
  end
  if there > 0 then
    for _, k in ipairs(absent) do
      if redis.call('EXISTS', k) == 1 then foreign[k] = true end
    end
  end
  local function put(mark, v, settled)
    if not keep[mark] then order[#order + 1] = mark end
    cur[mark] = v
    keep[mark] = true
    expiring[mark] = settled and ttl > 0
  end
  local function settle2(mark, state, qty)
    put(mark, state .. ':' .. qty, true)
    return {state, qty, 1}
  end
  local function step2(mark, hold_qty)
    if foreign[mark] then return {'foreign', false, 0} end
    local m = cur[mark]
    if not m then
      if op == 'release' then return settle2(mark, 'void', 0) end
      if op ~= 'hold' then return {'none', 0, 0} end
      local q = hold_qty
      local av, rs = c[1], c[2] or 0
      if not av then return settle2(mark, 'unknown', q) end
      if av < q then return settle2(mark, 'short', q) end
      add(1, -q)
      add(2, q)
      put(mark, 'held:' .. q, false)
      return {'held', q, 1}
    end
    local state, q = parse_mark(m)
    if not state then return {m, false, 0} end
    if state ~= 'held' or op == 'hold' then return {state, q, 0} end
    add(2, -q)
    if op == 'sell' then
      add(3, q)
      return settle2(mark, 'sold', q)
    end
    add(1, q)
    return settle2(mark, op == 'undo' and 'undone' or 'released', q)
  end
  local out = {}
  for i = 2, #KEYS do
    answer(out, step2(KEYS[i], tonumber(ARGV[i + 1])))
  end
  local fields, names = {}, {'available', 'reserved', 'sold'}
  for f = 1, 3 do
    if moved[f] then
      fields[#fields + 1] = names[f]
      fields[#fields + 1] = c[f]
    end
  end
  if #fields > 0 then redis.call('HSET', product, unpack(fields)) end
  local plainset = {}
  for _, mark in ipairs(order) do
    if expiring[mark] then
      redis.call('SET', mark, cur[mark], 'EX', ttl)
    else
      plainset[#plainset + 1] = mark
      plainset[#plainset + 1] = cur[mark]
      if #plainset >= 2 * CHUNK then
        redis.call('MSET', unpack(plainset))
        plainset = {}
      end
    end
  end
  if #plainset > 0 then redis.call('MSET', unpack(plainset)) end
  return out
end

local v = redis.call('HMGET', product, 'available', 'reserved', 'sold')
if plain(v[1]) and plain(v[2]) and plain(v[3]) then return fast(v) end

local out = {}
for i = 2, #KEYS do
  answer(out, step(KEYS[i], tonumber(ARGV[i + 1])))
end
return out
