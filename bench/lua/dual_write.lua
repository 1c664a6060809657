-- dual_write.lua: the least any script can do to write one event to both an
-- aggregate history and the bus (no expected-version or duplicate check, no
-- seq: it is always 1). chorus-bench-store runs it with the store's own
-- append arguments (KEYS: history, bus; ARGV: expected, n, event_id, type,
-- ts, payload head, payload tail) as the floor under the store's append.
local payload = ARGV[7] == '' and ARGV[6] or ARGV[6] .. '1' .. ARGV[7]   -- whole (expected 0) or split
local id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[4], 'payload', payload, 'ts', ARGV[5])
redis.call('RPUSH', KEYS[1], ARGV[3] .. '\n' .. id .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. payload)
return {'ok', 1, 1, id}
