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
-- turn as if called alone in that order.
--
-- KEYS: product hash, then one mark per line.
-- ARGV: op (hold | undo | sell | release), lifetime in seconds of a settled
--       mark (0: kept), then one quantity per line (used by hold).
-- Returns one {state, qty, changed} per line: the mark after the op ("none"
-- when absent and left so), its quantity, and 1 when this call changed it.
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
  local c = string.find(cur, ':', 1, true)
  local state, q = string.sub(cur, 1, c - 1), tonumber(string.sub(cur, c + 1))
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

local out = {}
for i = 2, #KEYS do
  out[i - 1] = step(KEYS[i], tonumber(ARGV[i + 1]))
end
return out
