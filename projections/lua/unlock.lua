-- unlock.lua: releases (ARGV[2] = "del") or extends (ARGV[2] = ms) the lock
-- KEYS[1] only while it still holds our token ARGV[1]. Returns 1 if it did.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
