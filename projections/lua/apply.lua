-- apply.lua: applies one batch of checkout events to the read models, with
-- the projection checkpoint, in one script (so a crash leaves either all of
-- a batch's effects or none). projections/apply_script.c alone builds the
-- call and reads the reply; the layout below is its enum, by name.
--
-- KEYS[1] checkpoint (string)   KEYS[2] rebuild lock
-- KEYS[3..] every read-model key of the batch, each once; ARGV refers to
--           them by index (no key name is built here).
-- ARGV[1] layout version ("4"), checked against this script (4: the checkout
--         hash's field order of CO_FIELDS below; ARGV unchanged since 3)
-- ARGV[2] mode: "live" (refuses while a rebuild holds the lock) or "rebuild"
-- ARGV[3] checkpoint candidate: the greatest bus entry id of the call, or ""
--         (events from a group's redelivery stream do not move it)
-- ARGV[4] changed channel   ARGV[5..8] PENDING STOCK_RESERVED SUCCEEDED FAILED
-- ARGV[9] events   ARGV[10] products   ARGV[11] clients
-- ARGV[12] newest checkouts kept per client (client-checkouts zset)
-- ARGV[13] lifetime of closed checkouts' read models and of client indexes,
--          seconds (READ_MODEL_TTL_S; "0": kept)   ARGV[14] now, unix seconds
-- then per event 8 fields (EV_*): type letter, checkout id, KEYS index of
--   its checkout read model, seq, emitted_at ("%.6f"), client id (or ""),
--   value (order id for O/S, reason for F, else ""), items
--   ("product:qty,..." for R/L, else "")
-- then per product 2: product id, KEYS index of its stock view
-- then per client 3: client id, KEYS index of its orders hash, of its
--   checkouts zset
--
-- Type letters: I CheckoutInitiated, R StockReserved, X StockReservationFailed,
-- O OrderCreated, Y OrderCreationFailed, L StockReleased, S CheckoutSucceeded,
-- F CheckoutFailed, T CheckoutTimedOut, ? any other type.
--
-- Invariant: every field written is a function of the SET of events applied
-- to a checkout, never of their order. `_t` holds one letter per applied seq
-- ("." for a seq not applied yet): an event whose seq already has a letter is
-- a duplicate and changes nothing; the status is the fold of the letters in
-- seq order (the rules of es_checkout_fold). A checkout hash always holds its
-- fields in one fixed order (CO_FIELDS): a change that keeps that order
-- (values replaced in place, fields appended at the end, fields removed) is
-- written as HSET/HDEL of what changed; one that would not (a field that
-- belongs before existing ones) rewrites the hash whole. Values longer than
-- SMALL bytes also force the whole rewrite, so the hash's encoding is never
-- one that only its history explains. So copies of the projection applying
-- one checkout's events in different orders, and a rebuild replaying the bus
-- in order, all end with byte-identical keys.
--
-- Keys the batch alone does not name: an OrderCreated turns the units its
-- checkout's StockReserved held (`_items`, written by an earlier batch) into
-- sales, so it needs those products' stock keys; and one without a client id
-- uses the checkout's. When a key the script needs was not passed, it writes
-- NOTHING and answers {"need", kind, id, ...} (kind "product" or "client");
-- the caller passes those keys and calls again.
--
-- Lifetimes (ARGV[13] > 0) are absolute and count from the events' own
-- times, never from when the script runs, so a rebuild sets the same expiry
-- as the live projection did and copies applying in any order agree: a
-- checkout's read model expires at floor(updated_at) + lifetime once its
-- status is SUCCEEDED or FAILED (an open saga keeps its model: `_items`
-- is still needed); a client's checkout index at floor(newest score) +
-- lifetime, moved on by each checkout it gains. A model whose expiry is
-- already past (a late redelivery of a long-closed checkout, or a rebuild
-- replaying old events) is deleted at once rather than resurrected.
--
-- Returns {"busy"}, {"need", ...} or {"ok", applied, duplicates,
-- e2e_seconds...} where each e2e value (a string) is a terminal checkout's
-- accept-to-terminal time, reported once: by the batch that completed the
-- pair (initiated, terminal).

local LAYOUT = '4'
local A_LAYOUT, A_MODE, A_CHECKPOINT, A_CHANNEL = 1, 2, 3, 4
local A_PENDING, A_RESERVED, A_SUCCEEDED, A_FAILED = 5, 6, 7, 8
local A_NEVENTS, A_NPRODUCTS, A_NCLIENTS, A_CLIENT_KEEP, A_TTL, A_NOW, A_FIRST = 9, 10, 11, 12, 13, 14, 15
local EV_TYPE, EV_ID, EV_KEY, EV_SEQ, EV_EMITTED, EV_CLIENT, EV_VALUE, EV_ITEMS, EV_N = 0, 1, 2, 3, 4, 5, 6, 7, 8
local PR_ID, PR_KEY, PR_N = 0, 1, 2
local CL_ID, CL_KEY, CL_CHECKOUTS, CL_N = 0, 1, 2, 3
local K_CHECKPOINT, K_LOCK = 1, 2
local SMALL = 64                  -- Redis's default hash-max-listpack-value

if ARGV[A_LAYOUT] ~= LAYOUT then
  return redis.error_reply('apply.lua: caller speaks layout ' .. tostring(ARGV[A_LAYOUT]) .. ', script ' .. LAYOUT)
end

local mode, chan = ARGV[A_MODE], ARGV[A_CHANNEL]
local PENDING, RESERVED, SUCCEEDED, FAILED = ARGV[A_PENDING], ARGV[A_RESERVED], ARGV[A_SUCCEEDED], ARGV[A_FAILED]
local nev, nprod, ncl = tonumber(ARGV[A_NEVENTS]), tonumber(ARGV[A_NPRODUCTS]), tonumber(ARGV[A_NCLIENTS])
local client_keep = tonumber(ARGV[A_CLIENT_KEEP])
local ttl, now = tonumber(ARGV[A_TTL]), tonumber(ARGV[A_NOW])

if mode == 'live' and redis.call('EXISTS', KEYS[K_LOCK]) == 1 then
  return {'busy'}
end

-- id -> KEYS index tables of the batch's products and clients
local PBASE = A_FIRST + nev * EV_N
local CBASE = PBASE + nprod * PR_N
local pkey, ckey, cckey = {}, {}, {}
for k = 0, nprod - 1 do
  local b = PBASE + k * PR_N
  pkey[ARGV[b + PR_ID]] = tonumber(ARGV[b + PR_KEY])
end
for k = 0, ncl - 1 do
  local b = CBASE + k * CL_N
  ckey[ARGV[b + CL_ID]] = tonumber(ARGV[b + CL_KEY])
  cckey[ARGV[b + CL_ID]] = tonumber(ARGV[b + CL_CHECKOUTS])
end

-- keys the script needs and was not given: {kind, id} pairs, each once
local need, needed = {}, {}
local function want(kind, id)
  local tag = kind .. ':' .. id
  if not needed[tag] then
    needed[tag] = true
    need[#need + 1] = kind
    need[#need + 1] = id
  end
end

local co, co_order = {}, {}
local stock, stock_order = {}, {}
local orders, orders_order = {}, {}     -- per client: OrderCreated applied now
local started, started_order = {}, {}   -- per client: CheckoutInitiated applied now

-- The fixed field order of a checkout hash, and each field's rank in it.
-- Fields come in the order a saga's events usually bring them (Initiated the
-- first seven, StockReserved `_items`, OrderCreated `order_id` — removing
-- `_items` —, a failure `reason`), so an in-order saga only ever appends
-- fields, replaces values in place or removes fields: HSET/HDEL of what
-- changed, never a whole rewrite. (Before layout 4, `order_id` and `reason`
-- came after `status`: such a hash is out of order here and is rewritten
-- whole, in this order, by the next batch that changes it.)
local CO_FIELDS = {'checkout_id', 'client_id', 'status', 'updated_at', 'seq', '_t', '_init', '_items', 'order_id',
  'reason'}
local F_CHECKOUT, F_CLIENT, F_STATUS, F_UPDATED, F_SEQ, F_T, F_INIT, F_ITEMS, F_ORDER, F_REASON = 1, 2, 3, 4, 5, 6, 7,
  8, 9, 10
local RANK = {}
for i, name in ipairs(CO_FIELDS) do RANK[name] = i end

-- The checkout's read model (loaded once per batch) as arrays indexed by
-- rank (F_*), false where absent: `f` as the batch changes it, `old` as
-- stored. `top` is the greatest rank stored; `whole` is set when the stored
-- hash must be rewritten whole (fields out of order or unknown, a long value).
-- A checkout not stored yet (its HGETALL is empty) shares one `old` of
-- nothing: `old` is only ever read.
local NONE = {false, false, false, false, false, false, false, false, false, false}
local function load(id, ki)
  local st = co[id]
  if st then return st end
  local flat = redis.call('HGETALL', KEYS[ki])
  local f = {false, false, false, false, false, false, false, false, false, false}
  local old = #flat == 0 and NONE or {false, false, false, false, false, false, false, false, false, false}
  local top, whole = 0, false
  for i = 1, #flat, 2 do
    local r, v = RANK[flat[i]], flat[i + 1]
    if not r or r < top or #v > SMALL then whole = true end
    if r then
      f[r] = v
      old[r] = v
      if r > top then top = r end
    end
  end
  st = {f = f, old = old, top = top, whole = whole, n = #flat, key = KEYS[ki], dirty = false}
  co[id] = st
  co_order[#co_order + 1] = id
  return st
end

-- Adds qty of every item to one counter of the stock view.
local function stock_add(items, which)
  for pid, qty in string.gmatch(items, '([^,:]+):(%d+)') do
    if not pkey[pid] then
      want('product', pid)
    else
      local s = stock[pid]
      if not s then
        s = {reserved = 0, sold = 0, released = 0}
        stock[pid] = s
        stock_order[#stock_order + 1] = pid
      end
      s[which] = s[which] + tonumber(qty)
    end
  end
end

-- es_checkout_fold's status rules, over the letters of the applied seqs
-- (by pattern, no string per letter): the last CheckoutSucceeded/Failed
-- decides; without one, a StockReserved before any failure (X, Y, T)
-- makes STOCK_RESERVED, else PENDING.
local function fold_status(t)
  local last = string.match(t, '.*([SF])')
  if last == 'S' then return SUCCEEDED end
  if last == 'F' then return FAILED end
  local r = string.find(t, 'R', 1, true)
  if not r then return PENDING end
  local x = string.find(t, '[XYT]')
  if x and x < r then return PENDING end
  return RESERVED
end

local function has(t, letter)
  return string.find(t, letter, 1, true) ~= nil
end

-- Orders-by-client, in memory: counts every OrderCreated once; "last" is the
-- order with the greatest (emitted_at, checkout id).
local function newer(em, checkout, lt, lc)
  local t_new, t_old = tonumber(em), tonumber(lt)
  return not t_old or not lc or t_new > t_old or (t_new == t_old and checkout > lc)
end
local function client_order(cid, checkout, order_id, em)
  if not ckey[cid] then
    want('client', cid)
    return
  end
  local o = orders[cid]
  if not o then
    o = {n = 0}
    orders[cid] = o
    orders_order[#orders_order + 1] = cid
  end
  o.n = o.n + 1
  if newer(em, checkout, o.em, o.checkout) then
    o.order, o.checkout, o.em = order_id, checkout, em
  end
end

local applied, dups = 0, 0
local e2e = {}

for k = 0, nev - 1 do
  local b = A_FIRST + k * EV_N
  local letter, id, seq, em = ARGV[b + EV_TYPE], ARGV[b + EV_ID], tonumber(ARGV[b + EV_SEQ]), ARGV[b + EV_EMITTED]
  local client, value, items = ARGV[b + EV_CLIENT], ARGV[b + EV_VALUE], ARGV[b + EV_ITEMS]
  local st = load(id, tonumber(ARGV[b + EV_KEY]))
  local f = st.f
  local t = f[F_T] or ''
  local at = string.sub(t, seq, seq)
  if at ~= '' and at ~= '.' then
    dups = dups + 1
  else
    applied = applied + 1
    if #t < seq then t = t .. string.rep('.', seq - #t) end
    t = string.sub(t, 1, seq - 1) .. letter .. string.sub(t, seq + 1)
    f[F_T] = t
    st.dirty = true
    f[F_CHECKOUT] = id
    if client ~= '' and not f[F_CLIENT] then f[F_CLIENT] = client end
    if seq > (tonumber(f[F_SEQ]) or 0) then
      f[F_SEQ] = ARGV[b + EV_SEQ]   -- "%lld" from C: the bytes of tostring(seq)
      f[F_UPDATED] = em
    end
    if letter == 'I' then
      f[F_INIT] = em
      if has(t, 'S') or has(t, 'F') then
        e2e[#e2e + 1] = tostring(tonumber(f[F_UPDATED]) - tonumber(em))
      end
      if client ~= '' then
        if not cckey[client] then
          want('client', client)
        else
          local s = started[client]
          if not s then
            s = {}
            started[client] = s
            started_order[#started_order + 1] = client
          end
          s[#s + 1] = em
          s[#s + 1] = id
          local x = tonumber(em)
          if not s.newest or x > s.newest then s.newest = x end
        end
      end
    elseif letter == 'R' then
      stock_add(items, 'reserved')
      if has(t, 'O') then
        stock_add(items, 'sold')
      elseif not has(t, 'F') and items ~= '' then
        f[F_ITEMS] = items
      end
    elseif letter == 'O' then
      f[F_ORDER] = value ~= '' and value or f[F_ORDER]
      if f[F_ITEMS] then
        stock_add(f[F_ITEMS], 'sold')
        f[F_ITEMS] = false
      end
      local cid = client ~= '' and client or f[F_CLIENT]
      if cid then client_order(cid, id, value, em) end
    elseif letter == 'L' then
      stock_add(items, 'released')
    elseif letter == 'S' or letter == 'F' then
      if letter == 'S' and not f[F_ORDER] and value ~= '' then f[F_ORDER] = value end
      if letter == 'F' then
        f[F_REASON] = value
        f[F_ITEMS] = false
      end
      if f[F_INIT] then
        e2e[#e2e + 1] = tostring(tonumber(em) - tonumber(f[F_INIT]))
      end
    end
  end
end

if #need > 0 then
  local out = {'need'}
  for _, v in ipairs(need) do out[#out + 1] = v end
  return out
end

-- The aggregates' current values, read before the first write: a key of a
-- foreign type fails the script here, while nothing is written yet (Redis
-- does not roll a script back), so a retried batch starts clean.
local stock_cur, client_cur = {}, {}
for _, pid in ipairs(stock_order) do
  stock_cur[pid] = redis.call('HMGET', KEYS[pkey[pid]], 'reserved', 'sold', 'released')
end
for _, cid in ipairs(orders_order) do
  client_cur[cid] = redis.call('HMGET', KEYS[ckey[cid]], 'total_orders', 'last_order_id', 'last_checkout_id',
    'last_update_ts')
end

-- ---- writes (nothing above wrote) ----

-- Writes one checkout: only what changed (HSET, HDEL) when that keeps the
-- fields in CO_FIELDS order: a field added before a stored one, or a long
-- value, rewrites the hash whole.
local function write_checkout(st)
  local f, old, whole = st.f, st.old, st.whole
  local a, gone = {}, nil
  for r = 1, #CO_FIELDS do
    local v, o = f[r], old[r]
    if v then
      if #v > SMALL or (not o and r < st.top) then whole = true end
      if v ~= o then
        a[#a + 1] = CO_FIELDS[r]
        a[#a + 1] = v
      end
    elseif o then
      gone = gone or {}
      gone[#gone + 1] = CO_FIELDS[r]
    end
  end
  if whole then
    if st.n > 0 then redis.call('DEL', st.key) end
    a = {}
    for r = 1, #CO_FIELDS do
      local v = f[r]
      if v then
        a[#a + 1] = CO_FIELDS[r]
        a[#a + 1] = v
      end
    end
    redis.call('HSET', st.key, unpack(a))
    return
  end
  if gone then redis.call('HDEL', st.key, unpack(gone)) end
  if #a > 0 then redis.call('HSET', st.key, unpack(a)) end
end

for _, id in ipairs(co_order) do
  local st = co[id]
  if st.dirty then
    local status = fold_status(st.f[F_T])
    st.f[F_STATUS] = status
    write_checkout(st)
    if ttl > 0 then
      local at = math.floor(tonumber(st.f[F_UPDATED])) + ttl
      if status == SUCCEEDED or status == FAILED or at <= now then
        redis.call('EXPIREAT', st.key, at)
      end
    end
    -- the API's long-poll waits for terminal statuses only
    if status ~= st.old[F_STATUS] and (status == SUCCEEDED or status == FAILED) then
      redis.call('PUBLISH', chan, id)
    end
  end
end

for _, pid in ipairs(stock_order) do
  local s = stock[pid]
  local key = KEYS[pkey[pid]]
  local cur = stock_cur[pid]
  if cur[1] and cur[2] and cur[3] then
    -- all three stored: add to the counters that moved (order kept)
    local a = {}
    if s.reserved ~= 0 then a[#a + 1] = 'reserved'; a[#a + 1] = tonumber(cur[1]) + s.reserved end
    if s.sold ~= 0 then a[#a + 1] = 'sold'; a[#a + 1] = tonumber(cur[2]) + s.sold end
    if s.released ~= 0 then a[#a + 1] = 'released'; a[#a + 1] = tonumber(cur[3]) + s.released end
    if #a > 0 then redis.call('HSET', key, unpack(a)) end
  else
    if cur[1] or cur[2] or cur[3] then redis.call('DEL', key) end
    redis.call('HSET', key, 'reserved', (tonumber(cur[1]) or 0) + s.reserved,
      'sold', (tonumber(cur[2]) or 0) + s.sold, 'released', (tonumber(cur[3]) or 0) + s.released)
  end
end

for _, cid in ipairs(orders_order) do
  local o = orders[cid]
  local key = KEYS[ckey[cid]]
  local cur = client_cur[cid]
  local total = (tonumber(cur[1]) or 0) + o.n
  if newer(o.em, o.checkout, cur[4], cur[3]) then
    redis.call('HSET', key, 'total_orders', total, 'last_order_id', o.order, 'last_checkout_id', o.checkout,
      'last_update_ts', o.em)
  else
    redis.call('HSET', key, 'total_orders', total)
  end
end

-- The client's newest checkouts (score: CheckoutInitiated's emitted_at).
-- ZADD answers how many members are new and ZCARD how many there are: equal
-- means the index did not exist before (an empty zset is no key), so it has
-- no expiry yet and its newest score is this batch's greatest; only an index
-- that existed is read for its newest score, and only one past its cap is
-- trimmed.
for _, cid in ipairs(started_order) do
  local key, s = KEYS[cckey[cid]], started[cid]
  local added = redis.call('ZADD', key, unpack(s))
  local n = redis.call('ZCARD', key)
  if n > client_keep then redis.call('ZREMRANGEBYRANK', key, 0, -(client_keep + 1)) end
  if ttl > 0 then
    local newest
    if n == added then
      newest = s.newest
    else
      newest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
    end
    redis.call('EXPIREAT', key, math.floor(newest) + ttl)
  end
end

-- Checkpoint: only ever forward (copies finish batches in any order). One
-- SET ... GET in the common case; the rare older batch puts the newer back.
local cand = ARGV[A_CHECKPOINT]
if cand ~= '' then
  local function id_less(a, b)
    local am, as = string.match(a, '^(%d+)-(%d+)$')
    local bm, bs = string.match(b, '^(%d+)-(%d+)$')
    if not am or not bm then return false end
    am, bm = tonumber(am), tonumber(bm)
    if am ~= bm then return am < bm end
    return tonumber(as) < tonumber(bs)
  end
  local prev = redis.call('SET', KEYS[K_CHECKPOINT], cand, 'GET')
  if prev and id_less(cand, prev) then
    redis.call('SET', KEYS[K_CHECKPOINT], prev)
  end
end

local out = {'ok', applied, dups}
for _, v in ipairs(e2e) do out[#out + 1] = v end
return out
