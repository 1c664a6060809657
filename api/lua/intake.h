/* intake.h - intake.lua as a typed call, and the catalog price reading the
 * call is priced from.
 *
 * api/lua/intake.c alone knows the script's KEYS and ARGV: it builds the
 * whole CheckoutInitiated (data priced from the prices the caller read from
 * the catalog just before) and parses the reply into an api_intake_verdict.
 * The script touches only keys of the checkout's partition (one slot on a
 * Redis Cluster); the catalog is read apart, by api_intake_price. */
#ifndef API_LUA_INTAKE_H
#define API_LUA_INTAKE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/redis.h"

#define API_INTAKE_MAX_LINES 100
#define API_INTAKE_MAX_PRICE 1000000000LL   /* keeps totals exact */

typedef struct api_intake_line {
    const char *product_id;   /* borrowed, validated [A-Za-z0-9_-]{1,64} */
    long long qty;            /* 1..1000 */
    long long price;          /* unit price the event is built with */
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
    size_t refused;           /* 0, or 1 + the line whose product cannot be priced: the call
                                 then appends nothing (it still answers a recorded key) */
    bool confirm;             /* a WAIT follows: a replayed record is re-written (its expiry) so
                                 the WAIT covers it whoever wrote it */
} api_intake_call;

/* Builds the call into a (keys first, *nkeys of them). Returns 0, or -1 when
 * the event cannot be encoded (a caller bug, answered 500). */
int api_intake_build(const api_intake_call *in, cm_argv *a, int *nkeys) __attribute__((warn_unused_result));

typedef enum api_intake_verdict {
    API_INTAKE_ACCEPTED,      /* appended: seq 1 */
    API_INTAKE_REPLAY,        /* the key is recorded: record/record_len */
    API_INTAKE_REFUSED,       /* the refused line (in->refused) came back: nothing written */
    API_INTAKE_FAILED,        /* an answer the script never gives (detail in err) */
} api_intake_verdict;

typedef struct api_intake_reply {
    api_intake_verdict verdict;
    const char *record;       /* REPLAY: "<hash>\n<checkout_id>\n<body>" (borrowed from the reply) */
    size_t record_len;
    char err[128];
} api_intake_reply;

/* Parses r (an array reply; error replies are the caller's) for in. */
void api_intake_parse(const redisReply *r, const api_intake_call *in, api_intake_reply *out);

typedef enum api_price_verdict {
    API_PRICE_OK,             /* *price set */
    API_PRICE_UNKNOWN,        /* no such product, or no price: 422 unknown_product */
    API_PRICE_BROKEN,         /* the stored entry cannot be a price (why): 500, a retry cannot help */
    API_PRICE_UNAVAILABLE,    /* Redis could not answer now (why): 503 */
} api_price_verdict;

/* Reads a product's unit price from r, the reply of `HMGET <product key>
 * price_cents` (NULL: none came). A stored price is digits only, at most
 * API_INTAKE_MAX_PRICE; "0999" is 999. */
api_price_verdict api_intake_price(const redisReply *r, long long *price, char *why, size_t whylen);

#endif
