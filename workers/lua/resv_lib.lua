-- resv_lib.lua: reads a checkout's reservation hash (prepended at build time
-- to the scripts that settle a reservation: create_order.lua, release.lua).

-- Returns the state ("held", "sold", "released" or nil) and the held lines
-- as {{product_id, qty}, ...} (fields "p:<product_id>").
local function resv_read(key)
  local flat = redis.call('HGETALL', key)
  local state, lines = nil, {}
  for i = 1, #flat, 2 do
    if flat[i] == 'state' then
      state = flat[i + 1]
    elseif string.sub(flat[i], 1, 2) == 'p:' then
      lines[#lines + 1] = {string.sub(flat[i], 3), tonumber(flat[i + 1])}
    end
  end
  return state, lines
end

-- Returns nil when every held product is among the m product ids in ARGV
-- from index a, else the first held product the caller did not name.
local function resv_unnamed(lines, m, a)
  local named = {}
  for i = 1, m do named[ARGV[a + i - 1]] = true end
  for _, l in ipairs(lines) do
    if not named[l[1]] then return l[1] end
  end
  return nil
end
