/* saga_events.h - synthetic saga event sequences for the projection, audit
 * and notification tests: they append what the saga workers would, through
 * the event store library, so those tests do not depend on the saga workers.
 * Also key dumps (DUMP, for byte-identical comparisons) and small waits.
 *
 * Helpers that cannot go on abort the test with a criterion assertion. */
#ifndef SAGA_EVENTS_H
#define SAGA_EVENTS_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "event_store/store.h"

enum sx_shape {
    SX_SUCCESS,      /* Initiated, StockReserved, OrderCreated, Succeeded */
    SX_NO_STOCK,     /* Initiated, StockReservationFailed, Failed(insufficient_stock) */
    SX_ORDER_LIMIT,  /* Initiated, StockReserved, OrderCreationFailed, StockReleased, Failed(order_limit_exceeded) */
    SX_TIMEOUT,      /* Initiated, StockReserved, TimedOut, StockReleased, Failed(timed_out) */
};

/* Appends event type with data (reference stolen) as the next event of the
 * checkout. */
void sx_event(es_store *s, const char *checkout_id, const char *type, json_t *data);
/* Appends a whole saga of shape: one line of qty units of product_id at 100
 * cents; the order id of a success is "ord-<checkout_id>". */
void sx_saga(es_store *s, enum sx_shape shape, const char *checkout_id, const char *client_id,
             const char *product_id, long long qty);
/* The events of the checkout's history (free with es_events_free). */
es_event **sx_history(es_store *s, const char *checkout_id, size_t *n);

/* Last entry id of stream, "" when empty (static buffer). */
const char *sx_last_id(redisContext *c, const char *stream);
/* Waits until GET key equals want. */
bool sx_wait_str(redisContext *c, const char *key, const char *want, int timeout_ms);
/* Waits until the integer at HGET key field (or XLEN key when field is NULL)
 * equals want. */
bool sx_wait_ll(redisContext *c, const char *key, const char *field, long long want, int timeout_ms);
/* Waits until group has delivered the whole bus and has nothing pending. */
bool sx_wait_group_idle(redisContext *c, const char *bus, const char *group, int timeout_ms);

/* A sorted set of keys with their DUMP bytes. */
typedef struct sx_dump {
    size_t n;
    char **keys;
    char **vals;
    size_t *lens;
} sx_dump;
/* DUMPs every key matching pattern. */
void sx_dump_take(redisContext *c, const char *pattern, sx_dump *d);
/* Asserts a and b hold the same keys with byte-identical values. */
void sx_dump_assert_eq(const sx_dump *a, const sx_dump *b);
void sx_dump_free(sx_dump *d);

/* Asserts that HGETALL key is exactly the NULL-terminated field/value list
 * (same fields, same values, same order). */
void sx_assert_hash(redisContext *c, const char *key, const char *const *fv);

#endif
