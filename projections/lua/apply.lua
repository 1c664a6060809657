-- apply.lua: applies one batch of checkout events to the read models, with
-- the projection checkpoint, in one script (so a crash leaves either all of
-- a batch's effects or none).
--
-- KEYS[1] checkpoint (string)   KEYS[2] bus stream   KEYS[3] rebuild lock
-- ARGV[1] mode: "live" (refuses while a rebuild holds the lock) or "rebuild"
-- ARGV[2] read-model key prefix ("chorus:rm:")   ARGV[3] changed channel
-- ARGV[4..7] the statuses PENDING STOCK_RESERVED SUCCEEDED FAILED
-- then 8 fields per event: bus entry id, type letter, checkout id, seq,
-- emitted_at ("%.6f"), client id (or ""), value (order id for O/S, reason
-- for F, else ""), items ("product:qty,..." for R/L, else "").
--
-- Type letters: I CheckoutInitiated, R StockReserved, X StockReservationFailed,
-- O OrderCreated, Y OrderCreationFailed, L StockReleased, S CheckoutSucceeded,
-- F CheckoutFailed, T CheckoutTimedOut, ? any other type.
--
-- Invariant: every field written is a function of the SET of events applied
-- to a checkout, never of their order. `_t` holds one letter per applied seq
-- ("." for a seq not applied yet): an event whose seq already has a letter is
-- a duplicate and changes nothing; the status is the fold of the letters in
-- seq order (the rules of es_checkout_fold); hashes are rewritten whole in a
-- fixed field order. So copies of the projection applying one checkout's
-- events in different orders, and a rebuild replaying the bus in order, all
-- end with byte-identical keys.
--
-- Returns {"busy"} or {"ok", applied, duplicates, e2e_seconds...} where each
-- e2e value (a string) is a terminal checkout's accept-to-terminal time,
-- reported once: by the batch that completed the pair (initiated, terminal).

local mode, pfx, chan = ARGV[1], ARGV[2], ARGV[3]
local PENDING, RESERVED, SUCCEEDED, FAILED = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local FIRST, NF = 8, 8

if mode == 'live' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'busy'}
end

local co, co_order, old_status = {}, {}, {}
local stock, stock_order = {}, {}

-- The checkout's read model as a table (loaded once per batch).
local function load(id)
  local st = co[id]
  if st then return st end
  local flat = redis.call('HGETALL', pfx .. 'checkout:' .. id)
  st = {}
  for i = 1, #flat, 2 do st[flat[i]] = flat[i + 1] end
  old_status[id] = st.status or ''
  st._dirty = false
  co[id] = st
  co_order[#co_order + 1] = id
  return st
end

-- Adds qty of every item to one counter of the stock view.
local function stock_add(items, which)
  for pid, qty in string.gmatch(items, '([^,:]+):(%d+)') do
    local s = stock[pid]
    if not s then
      s = {reserved = 0, sold = 0, released = 0}
      stock[pid] = s
      stock_order[#stock_order + 1] = pid
    end
    s[which] = s[which] + tonumber(qty)
  end
end

-- es_checkout_fold's status rules, over the letters of the applied seqs.
local function fold_status(t)
  local status, failing, terminal = PENDING, false, false
  for i = 1, #t do
    local c = string.sub(t, i, i)
    if c == 'R' then
      if not terminal and not failing then status = RESERVED end
    elseif c == 'X' or c == 'Y' or c == 'T' then
      failing = true
    elseif c == 'S' then
      terminal = true
      status = SUCCEEDED
    elseif c == 'F' then
      terminal = true
      failing = false
      status = FAILED
    end
  end
  return status
end

-- Orders-by-client: counts every OrderCreated once; "last" is the order with
-- the greatest (emitted_at, checkout id), whatever order they are applied in.
local function client_order(cid, checkout, order_id, em)
  local key = pfx .. 'client:' .. cid
  local cur = redis.call('HMGET', key, 'total_orders', 'last_order_id', 'last_checkout_id', 'last_update_ts')
  local total = (tonumber(cur[1]) or 0) + 1
  local lo, lc, lt = cur[2], cur[3], cur[4]
  local t_new, t_old = tonumber(em), tonumber(lt)
  local newer = not t_old or not lc or t_new > t_old or (t_new == t_old and checkout > lc)
  if newer then lo, lc, lt = order_id, checkout, em end
  redis.call('HSET', key, 'total_orders', total, 'last_order_id', lo, 'last_checkout_id', lc,
    'last_update_ts', lt)
end

local function has(t, letter)
  return string.find(t, letter, 1, true) ~= nil
end

local applied, dups = 0, 0
local e2e = {}
local n = (#ARGV - FIRST + 1) / NF

for k = 0, n - 1 do
  local b = FIRST + k * NF
  local letter, id, seq, em = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), ARGV[b + 4]
  local client, value, items = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local st = load(id)
  local t = st._t or ''
  local at = string.sub(t, seq, seq)
  if at ~= '' and at ~= '.' then
    dups = dups + 1
  else
    applied = applied + 1
    if #t < seq then t = t .. string.rep('.', seq - #t) end
    t = string.sub(t, 1, seq - 1) .. letter .. string.sub(t, seq + 1)
    st._t = t
    st._dirty = true
    st.checkout_id = id
    if client ~= '' and not st.client_id then st.client_id = client end
    if seq > (tonumber(st.seq) or 0) then
      st.seq = seq
      st.updated_at = em
    end
    if letter == 'I' then
      st._init = em
      if client ~= '' then
        -- the client's recent checkouts (names.h CM_KEY_CLIENT_CHECKOUTS, newest 100)
        local ck = pfx .. 'client-checkouts:' .. client
        redis.call('ZADD', ck, em, id)
        redis.call('ZREMRANGEBYRANK', ck, 0, -101)
      end
      if has(t, 'S') or has(t, 'F') then
        e2e[#e2e + 1] = tostring(tonumber(st.updated_at) - tonumber(em))
      end
    elseif letter == 'R' then
      stock_add(items, 'reserved')
      if has(t, 'O') then
        stock_add(items, 'sold')
      elseif not has(t, 'F') and items ~= '' then
        st._items = items
      end
    elseif letter == 'O' then
      st.order_id = value ~= '' and value or st.order_id
      if st._items then
        stock_add(st._items, 'sold')
        st._items = nil
      end
      local cid = client ~= '' and client or st.client_id
      if cid then client_order(cid, id, value, em) end
    elseif letter == 'L' then
      stock_add(items, 'released')
    elseif letter == 'S' or letter == 'F' then
      if letter == 'S' and not st.order_id and value ~= '' then st.order_id = value end
      if letter == 'F' then
        st.reason = value
        st._items = nil
      end
      if st._init then
        e2e[#e2e + 1] = tostring(tonumber(em) - tonumber(st._init))
      end
    end
  end
end

-- Write each touched checkout whole, in one field order, and announce
-- status changes (the API's long-poll waits on the channel).
for _, id in ipairs(co_order) do
  local st = co[id]
  if st._dirty then
    local status = fold_status(st._t)
    local key = pfx .. 'checkout:' .. id
    local a = {'checkout_id', id}
    if st.client_id then a[#a + 1] = 'client_id'; a[#a + 1] = st.client_id end
    a[#a + 1] = 'status'; a[#a + 1] = status
    if st.order_id then a[#a + 1] = 'order_id'; a[#a + 1] = st.order_id end
    if st.reason then a[#a + 1] = 'reason'; a[#a + 1] = st.reason end
    a[#a + 1] = 'updated_at'; a[#a + 1] = st.updated_at
    a[#a + 1] = 'seq'; a[#a + 1] = st.seq
    a[#a + 1] = '_t'; a[#a + 1] = st._t
    if st._init then a[#a + 1] = '_init'; a[#a + 1] = st._init end
    if st._items then a[#a + 1] = '_items'; a[#a + 1] = st._items end
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(a))
    if status ~= old_status[id] then
      redis.call('PUBLISH', chan, id)
    end
  end
end

for _, pid in ipairs(stock_order) do
  local s = stock[pid]
  local key = pfx .. 'stock:' .. pid
  local cur = redis.call('HMGET', key, 'reserved', 'sold', 'released')
  redis.call('HSET', key, 'reserved', (tonumber(cur[1]) or 0) + s.reserved,
    'sold', (tonumber(cur[2]) or 0) + s.sold, 'released', (tonumber(cur[3]) or 0) + s.released)
end

-- Checkpoint: the highest id of this batch that is a bus entry (a batch from
-- the group's redelivery stream carries that stream's ids: they do not count).
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local cp = redis.call('GET', KEYS[1]) or '0-0'
local cands = {}
for k = 0, n - 1 do
  local eid = ARGV[FIRST + k * NF]
  if id_less(cp, eid) then cands[#cands + 1] = eid end
end
table.sort(cands, function(x, y) return id_less(y, x) end)
for _, eid in ipairs(cands) do
  if mode == 'rebuild' or #redis.call('XRANGE', KEYS[2], eid, eid) == 1 then
    redis.call('SET', KEYS[1], eid)
    break
  end
end

local out = {'ok', applied, dups}
for _, v in ipairs(e2e) do out[#out + 1] = v end
return out
