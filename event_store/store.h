/* store.h - the event store over Redis: append with expected version and
 * idempotent event id, read an aggregate's history, page through the bus,
 * fold a checkout, trim the bus by age.
 *
 * Guarantees (DESIGN.md, "Event store guarantees"): an append writes the
 * aggregate history (list chorus:h:<aggregate>:<id>) and the bus stream in one
 * Lua script, so never one without the other; seq is 1..n without gaps; an
 * expected-version mismatch writes nothing; an event id already in the
 * aggregate's history writes nothing and returns the stored position.
 * Duplicate detection is per aggregate (event ids are UUIDs and a follow-up
 * always goes to its cause's aggregate).
 *
 * All calls are synchronous and routed by their key's slot through a
 * cm_cluster (common/cluster.h), so one store serves a single server and a
 * Redis Cluster alike; an es_store is not thread-safe (use one per thread,
 * as connections are). */
#ifndef ES_STORE_H
#define ES_STORE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/redis.h"
#include "common/cluster.h"
#include "event_store/event.h"

enum es_err {
    ES_OK = 0,
    ES_ECONFLICT = -1,   /* expected version did not match; nothing written */
    ES_EREDIS = -2,      /* I/O or Redis error; transient, retry */
    ES_EINVAL = -3,      /* bad arguments */
    ES_ENOTFOUND = -4,   /* no such aggregate / entry */
    ES_EDECODE = -5,     /* a stored entry could not be decoded */
};

#define ES_ANY_VERSION (-1)
#define ES_MAX_BATCH 16   /* events per append */

typedef struct es_store es_store;

/* Creates a store on cc (borrowed; must outlive the store; a single server
 * or a cluster) for bus stream `bus` (NULL: ecommerce.checkout.events). The
 * scripts are loaded on each node at first use. Caller frees with
 * es_store_free. Never fails. */
es_store *es_store_open(cm_cluster *cc, const char *bus);
/* A store on one server's connection c (borrowed; must outlive the store),
 * wrapped in cm_cluster_borrow; loads its scripts. Returns NULL with err
 * when Redis cannot load them. Caller frees with es_store_free. */
es_store *es_store_new(redisContext *c, const char *bus, char *err, size_t errlen);
void es_store_free(es_store *s);   /* NULL ok; does not free the context or cc */

const char *es_store_bus(const es_store *s);
/* es_store_new's connection; NULL for a store made by es_store_open. */
redisContext *es_store_redis(const es_store *s);
/* The client every call goes through (borrowed by the caller). */
cm_cluster *es_store_cluster(const es_store *s);
/* The last error's text (valid until the next call on s). */
const char *es_store_errstr(const es_store *s);

typedef struct es_append_req {
    const char *aggregate;        /* e.g. "checkout" */
    const char *aggregate_id;
    const char *correlation_id;   /* NULL: aggregate_id */
    const char *producer;         /* e.g. "api", "stock-reservation" */
    int64_t expected_version;     /* events already in the history, or ES_ANY_VERSION */
    const es_new_event *events;
    size_t n;                     /* 1..ES_MAX_BATCH */
} es_append_req;

typedef struct es_position {
    int64_t seq;
    char entry_id[48];            /* bus entry id */
    char event_id[37];
} es_position;

typedef struct es_append_res {
    bool duplicate;               /* the events were already stored: nothing written */
    int64_t version;              /* aggregate version after the call (current one on conflict) */
    es_position pos[ES_MAX_BATCH];
} es_append_res;

/* Appends req's events atomically. ES_OK (res->duplicate tells a replay),
 * ES_ECONFLICT (res->version holds the current version), ES_EREDIS, ES_EINVAL. */
int es_append(es_store *s, const es_append_req *req, es_append_res *res) __attribute__((warn_unused_result));

/* For scripts that combine an effect with an append (workers, intake): adds
 * the history key and the bus key to keys, and the append arguments
 * (expected version, n, then per event id/type/ts/head/tail; with an
 * expected version >= 0 the head is the whole payload and the tail empty) to
 * args. The Lua side is event_store/lua/append_lib.lua (es_check/es_write/
 * es_append, and es_check_after for callers whose duplicates can only follow
 * the expected version), prepended to such scripts at build time. */
void es_append_keys(const es_store *s, const char *aggregate, const char *aggregate_id, cm_argv *keys);
int es_append_args(const es_append_req *req, cm_argv *args) __attribute__((warn_unused_result));
/* Parses the append result table {"ok"|"dup"|"conflict", version, seq, id,
 * ...} at r (an array reply). Returns ES_OK / ES_ECONFLICT / ES_EREDIS. */
int es_append_parse(const redisReply *r, size_t n, es_append_res *res, char *err, size_t errlen);

/* Batched append: several aggregates' appends in one script call
 * (lua/append_batch.lua), each with its own checks and result, as if
 * es_append ran for each in order. Single node only: the histories are in
 * different slots of a cluster. */
#define ES_MAX_APPEND_BATCH 256
/* Builds the call (keys first, *nkeys of them) into a. ES_OK or ES_EINVAL. */
int es_append_batch_args(const es_store *s, const es_append_req *reqs, size_t n, cm_argv *a, int *nkeys)
    __attribute__((warn_unused_result));
/* Parses its reply: rcs[i] is what es_append would return for reqs[i]
 * (ES_OK, ES_ECONFLICT), res[i] its result. ES_OK, or ES_EREDIS with err
 * when the reply is not shaped as one result per request. */
int es_append_batch_parse(const redisReply *r, const es_append_req *reqs, size_t n, es_append_res *res,
                          int *rcs, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Both, around one script call routed by the bus's slot (on a cluster the
 * histories' slots differ: refused with ES_EREDIS, nothing written). */
int es_append_batch(es_store *s, const es_append_req *reqs, size_t n, es_append_res *res, int *rcs)
    __attribute__((warn_unused_result));

/* Writes the history key of an aggregate into out. */
void es_history_key(const char *aggregate, const char *aggregate_id, char *out, size_t outlen);

/* Reads the whole history of an aggregate in seq order. *out is a new array
 * of *n events (free with es_events_free). ES_OK with *n == 0 when unknown. */
int es_history_read(es_store *s, const char *aggregate, const char *aggregate_id, es_event ***out,
                    size_t *n) __attribute__((warn_unused_result));
void es_events_free(es_event **evs, size_t n);

/* Reads up to count entries of stream after entry id `after` (NULL or "" =
 * from the start; "0-0" likewise). Entries that do not decode are returned as
 * events with kind CM_EV_UNKNOWN and NULL envelope fields (payload kept raw),
 * so a page never hides a foreign entry. *next is the last entry id read, or
 * NULL when fewer than count remain (caller frees). */
int es_stream_page(es_store *s, const char *stream, const char *after, size_t count, es_event ***out,
                   size_t *n, char **next) __attribute__((warn_unused_result));

/* es_history_read and es_stream_page through a cm_cluster (one command,
 * routed to the key's slot: a single server or a cluster alike). ES_EREDIS
 * with the reason in err ("redis: <error reply>", or the client's error when
 * no node answered: cm_cluster_err tells which). */
int es_history_fetch(cm_cluster *cc, const char *aggregate, const char *aggregate_id, es_event ***out,
                     size_t *n, char *err, size_t errlen) __attribute__((warn_unused_result));
int es_stream_fetch(cm_cluster *cc, const char *stream, const char *after, size_t count, es_event ***out,
                    size_t *n, char **next, char *err, size_t errlen) __attribute__((warn_unused_result));

/* The folded state of a checkout (the replay). */
typedef struct es_checkout_state {
    char status[16];              /* PENDING, STOCK_RESERVED, SUCCEEDED, FAILED */
    char client_id[72];
    char order_id[40];
    char reason[32];              /* CheckoutFailed / failure reason so far */
    int64_t version;              /* number of events folded */
    double updated_at;            /* emitted_at of the last event */
    int64_t total_cents;
    bool reserved;                /* StockReserved seen and not yet released/sold */
    bool failing;                 /* a failure event seen, CheckoutFailed not yet */
    bool timed_out;               /* CheckoutTimedOut seen */
    bool terminal;                /* CheckoutSucceeded or CheckoutFailed seen */
    int terminal_events;          /* how many terminal events (must be <= 1) */
} es_checkout_state;

/* Folds events (in seq order) into st. Pure; never fails. */
void es_checkout_fold(es_event *const *evs, size_t n, es_checkout_state *st);
/* The same fold one event at a time (a replay that streams the bus keeps one
 * state per checkout): init, then apply each event in seq order. */
void es_checkout_init(es_checkout_state *st);
void es_checkout_apply(es_checkout_state *st, const es_event *ev);
/* Appends st as JSON {"status","client_id","order_id","reason","version",...}. */
void es_checkout_state_json(const es_checkout_state *st, cm_buf *out);

/* Trims every partition's bus stream (each on its own slot's master) to
 * entries younger than days (0: keep forever); never touches histories.
 * Returns the number of entries removed, or ES_EREDIS: at the first failure,
 * or, with the client in best effort (cm_cluster_set_best_effort), after
 * trimming every partition whose master answered. */
long long es_retention_trim(es_store *s, int64_t days);

#endif
