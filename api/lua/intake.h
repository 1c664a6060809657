/* intake.h - intake.lua as a typed call, and the API's price cache.
 *
 * api/lua/intake.c alone knows the script's KEYS and ARGV: it builds the
 * whole CheckoutInitiated (data priced from the cache) and parses the reply
 * into an api_intake_verdict. The script checks every price against the
 * catalog; a stale or missing cache entry costs one more round trip
 * ("prices"), never a wrong price in an event. */
#ifndef API_LUA_INTAKE_H
#define API_LUA_INTAKE_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "common/redis.h"

#define API_INTAKE_MAX_LINES 100

typedef struct api_intake_line {
    const char *product_id;   /* borrowed, validated [A-Za-z0-9_-]{1,64} */
    long long qty;            /* 1..1000 */
    long long price;          /* unit price the event is built with; -1: not known yet */
} api_intake_line;

typedef struct api_intake_call {
    const char *checkout_id;  /* new UUIDv7 */
    const char *client_id;
    const char *idem_key;     /* "" without an Idempotency-Key */
    const char *body_hash;    /* hex, "" without a key */
    const char *answer;       /* kept in the record after the id: the route ("c" checkouts, "a" the
                                 seed alias), from which a replay rebuilds the same 202 body */
    long long idem_ttl_s;
    const char *bus;
    api_intake_line *lines;
    size_t n;                 /* 1..API_INTAKE_MAX_LINES */
} api_intake_call;

/* Builds the call into a (keys first, *nkeys of them). Returns 0, or -1 when
 * the event cannot be encoded (a caller bug, answered 500). */
int api_intake_build(const api_intake_call *in, cm_argv *a, int *nkeys) __attribute__((warn_unused_result));

typedef enum api_intake_verdict {
    API_INTAKE_ACCEPTED,      /* appended: seq 1, bus id in entry_id */
    API_INTAKE_REPLAY,        /* the key is recorded: record/record_len */
    API_INTAKE_UNKNOWN,       /* line `line` has no valid price: nothing written */
    API_INTAKE_REPRICE,       /* prices changed: lines[].price updated, call again */
    API_INTAKE_FAILED,        /* an answer the script never gives (detail in err) */
} api_intake_verdict;

typedef struct api_intake_reply {
    api_intake_verdict verdict;
    const char *record;       /* REPLAY: "<hash>\n<checkout_id>\n<body>" (borrowed from the reply) */
    size_t record_len;
    size_t line;              /* UNKNOWN: 0-based line index */
    char err[128];
} api_intake_reply;

/* Parses r (an array reply; error replies are the caller's) for in. On
 * REPRICE, in->lines[].price are set from it and the cache updated. */
void api_intake_parse(const redisReply *r, api_intake_call *in, api_intake_reply *out);

/* The price cache (process-wide, thread-safe): -1 when unknown. */
long long api_price_get(const char *product_id);
void api_price_put(const char *product_id, long long price);

#endif
