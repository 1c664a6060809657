/* wk.h - the worker runtime: one consumer group, a table of handlers.
 *
 * A worker is a wk_def: a table {event type -> handler} plus optional batch
 * handler, settings, init/fini and a periodic tick. The runner (runner.c)
 * alone touches XREADGROUP/XACK/XCLAIM/XAUTOCLAIM: it reads batches, calls the
 * handlers, acknowledges an entry only after its handler returned WK_ACK (the
 * handler's effects are then durable in Redis), retries WK_RETRY with
 * exponential backoff and jitter (capped) for as long as the group's time
 * budget (RETRY_BUDGET_MS; unbounded while the failure is Redis being
 * unavailable), takes over entries idle longer than CLAIM_IDLE_MS from dead
 * consumers, and parks an entry in the group's dead-letter stream only when it
 * can never succeed: WK_DEAD, undecodable, or its budget spent (or after
 * MAX_DELIVERIES, an optional count bound, off by default). A batch handler's
 * failed batch is split until the failing events are alone, so one bad event
 * never holds back its neighbours.
 *
 * Handlers must be idempotent: delivery is at-least-once. */
#ifndef WK_H
#define WK_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/cluster.h"
#include "common/config.h"
#include "common/names.h"
#include "event_store/event.h"
#include "event_store/store.h"

typedef enum wk_result {
    WK_ACK = 0,    /* done (effects durable): acknowledge */
    WK_RETRY = 1,  /* transient failure: leave pending, retry with backoff */
    WK_DEAD = 2,   /* will never succeed: park in the dead-letter stream */
} wk_result;

typedef struct wk_ctx wk_ctx;

/* Accessors valid inside handlers, tick, init and fini. */
/* The slot-routing client (common/cluster.h) every Redis call of a worker
 * goes through: one server or a Redis Cluster (REDIS_URL redis-cluster://),
 * each command sent to its key's master. */
cm_cluster *wk_cluster(wk_ctx *ctx);
/* Deprecated: the single server's sync connection under wk_cluster, for
 * code not yet on cm_cluster; NULL on a cluster, where no one connection
 * reaches every key. */
redisContext *wk_redis(wk_ctx *ctx);
es_store *wk_store(wk_ctx *ctx);          /* event store over wk_cluster */
const char *wk_consumer(const wk_ctx *ctx);
const char *wk_group(const wk_ctx *ctx);
void *wk_state(wk_ctx *ctx);              /* what init stored */
/* Records why the current event failed (shown in logs and the dead letter). */
void wk_fail_reason(wk_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Keeps the in-flight batch's entries fresh (XCLAIM JUSTID) so a long handler
 * is never mistaken for a dead consumer; call it during long work. */
void wk_touch(wk_ctx *ctx);
/* True while the batch in hand was read from the group's redelivery stream
 * (<bus>.retry.<group>) rather than the bus: its entry ids are not bus ids. */
bool wk_batch_redelivered(const wk_ctx *ctx);
/* True once SIGTERM/SIGINT arrived: long handlers should finish quickly. */
bool wk_stopping(const wk_ctx *ctx);
/* REDIS_WAIT_REPLICAS (0: off) and REDIS_WAIT_TIMEOUT_MS of this worker. */
long long wk_wait_replicas(const wk_ctx *ctx);
long long wk_wait_timeout_ms(const wk_ctx *ctx);

typedef wk_result (*wk_handler_fn)(wk_ctx *ctx, const es_event *ev);

typedef struct wk_handler {
    enum cm_event_type type;   /* CM_EV_UNKNOWN: every type (catch-all row) */
    wk_handler_fn fn;
} wk_handler;

typedef struct wk_def {
    enum cm_worker id;                 /* names and group from common/names.h */
    const char *name, *group;          /* overrides of the id's names (test worker) */
    const wk_handler *handlers;        /* rows for the types it handles ... */
    size_t nhandlers;
    /* ... or, instead, a batch handler that receives every decoded event of a
     * batch (in stream order) and sets results[i] for each. */
    void (*batch)(wk_ctx *ctx, es_event *const *evs, size_t n, wk_result *results);
    /* Optional, with handlers: called with every decoded event of a batch
     * that has a handler (stream order) before they are handled one by one,
     * e.g. to send their Redis calls in one round trip (saga.h, prefetch). */
    void (*prepare)(wk_ctx *ctx, es_event *const *evs, size_t n);
    const cm_opt *opts;                /* worker settings (NULL-name terminated) or NULL */
    int (*init)(wk_ctx *ctx, char *err, size_t errlen);  /* may call wk_set_state */
    void (*fini)(wk_ctx *ctx);
    void (*tick)(wk_ctx *ctx);         /* periodic work, every tick_ms */
    int tick_ms;
    int64_t retry_budget_ms;           /* default RETRY_BUDGET_MS; 0: the runtime's (1 h) */
} wk_def;

void wk_set_state(wk_ctx *ctx, void *state);

/* The six workers, and a test worker whose handler can be told to fail, hang
 * or crash (tests only; see workers/test_worker.c). */
extern const wk_def wk_stock_reservation, wk_order_creation, wk_stock_compensation, wk_notification,
    wk_audit, wk_cqrs_projection, wk_test_worker;

/* Runs def until SIGTERM/SIGINT: reads settings (env, then argv flags),
 * connects, creates the group, serves /metrics and /health, loops. Returns the
 * process exit code (0 after a clean drain). */
int wk_run(const wk_def *def, int argc, char **argv);

#endif
