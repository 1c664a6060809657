-- saga_stats.lua: counts the saga events the bus received in the last
-- window, newest first, without shipping the entries to the caller.
--
-- KEYS[1] bus stream
-- ARGV[1] window in seconds   ARGV[2] at most this many entries looked at
-- ARGV[3..5] the types CheckoutInitiated CheckoutSucceeded CheckoutFailed
--
-- Returns {scanned, started, succeeded, failed, reason1, count1, reason2,
-- count2, ...}. The window starts at Redis' own clock (TIME) minus the
-- window, so it agrees with the entry ids. A CheckoutFailed whose payload is
-- not JSON with data.reason counts under "unknown".
local win, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local T_INIT, T_OK, T_FAIL = ARGV[3], ARGV[4], ARGV[5]
local now = redis.call('TIME')
local start_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - win * 1000
if start_ms < 0 then start_ms = 0 end
local entries = redis.call('XREVRANGE', KEYS[1], '+', string.format('%d', start_ms), 'COUNT', max)
local started, ok, failed = 0, 0, 0
local reasons, order = {}, {}
for _, e in ipairs(entries) do
  local f = e[2]
  local typ, payload
  for i = 1, #f, 2 do
    if f[i] == 'type' then typ = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
  end
  if typ == T_INIT then
    started = started + 1
  elseif typ == T_OK then
    ok = ok + 1
  elseif typ == T_FAIL then
    failed = failed + 1
    local reason = 'unknown'
    local good, env = pcall(cjson.decode, payload or '')
    if good and type(env) == 'table' and type(env.data) == 'table' and type(env.data.reason) == 'string' then
      reason = env.data.reason
    end
    if not reasons[reason] then
      reasons[reason] = 0
      order[#order + 1] = reason
    end
    reasons[reason] = reasons[reason] + 1
  end
end
local out = {#entries, started, ok, failed}
for _, r in ipairs(order) do
  out[#out + 1] = r
  out[#out + 1] = reasons[r]
end
return out
