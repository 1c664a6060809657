-- append.lua (saga workers): a step's follow-up events alone, for a step with
-- no effect of its own (StockReservationFailed, OrderCreationFailed,
-- CheckoutTimedOut), so every append of the saga workers goes through the
-- slot-routing client and can share a batch's round trip. Its call is built
-- and its reply parsed by workers/saga.c (wk_step_append_queue).
--
-- KEYS: history, bus (the checkout's partition: one slot).
-- ARGV: the append arguments.
-- Returns the append result.
return es_append_after(KEYS[1], KEYS[2], ARGV, 1)
