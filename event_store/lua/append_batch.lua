-- append_batch.lua: several aggregates' appends in one call, each with its
-- own checks (duplicate id, expected version) and its own result, in order.
-- Its call is built and its reply parsed by es_append_batch_* (append.c).
--
-- KEYS: the bus, then one history per request.
-- ARGV: m, then each request's append arguments (es_argc of them).
-- Returns {result_1, ..., result_m}, each as es_append answers.
local m = tonumber(ARGV[1])
local out = {}
local i = 2
for k = 1, m do
  out[k] = es_append(KEYS[1 + k], KEYS[1], ARGV, i)
  i = i + es_argc(ARGV, i)
end
return out
