-- product_put.lua: upsert a catalog product (admin), atomically.
-- KEYS: the product hash, the product set. ARGV: id, name, price_cents, available.
-- Sets name, price and available stock; keeps reserved and sold (0 when new).
-- Returns {name, price_cents, available, reserved, sold}.
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'price_cents', ARGV[3], 'available', ARGV[4])
redis.call('HSETNX', KEYS[1], 'reserved', '0')
redis.call('HSETNX', KEYS[1], 'sold', '0')
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HMGET', KEYS[1], 'name', 'price_cents', 'available', 'reserved', 'sold')
