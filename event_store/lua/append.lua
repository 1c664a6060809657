-- append.lua: a plain append. KEYS: history, bus. ARGV: the append arguments.
return es_append(KEYS[1], KEYS[2], ARGV, 1)
