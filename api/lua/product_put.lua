-- product_put.lua: upsert a catalog product's hash (admin), atomically.
-- KEYS: the product hash. ARGV: name, price_cents, available.
-- Sets name, price and available stock; keeps reserved and sold (0 when new).
-- The id joins the product set (chorus:products, another slot on a cluster)
-- by the caller's SADD, sent in the same pipeline.
-- Returns {name, price_cents, available, reserved, sold}.
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'price_cents', ARGV[2], 'available', ARGV[3])
redis.call('HSETNX', KEYS[1], 'reserved', '0')
redis.call('HSETNX', KEYS[1], 'sold', '0')
return redis.call('HMGET', KEYS[1], 'name', 'price_cents', 'available', 'reserved', 'sold')
