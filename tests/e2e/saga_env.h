/* saga_env.h - an end-to-end saga environment for tests: a private
 * redis-server, real `chorus-worker <name>` processes (path from
 * CHORUS_WORKER_BIN), a catalog, checkouts appended through the event store
 * library, and the observations the saga tests assert on (histories, stock,
 * group quiescence, dead letters).
 *
 * Helpers that cannot go on abort the test with a criterion assertion. */
#ifndef SAGA_ENV_H
#define SAGA_ENV_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "event_store/store.h"
#include "tests/support/redis_fixture.h"

#define SG_MAX_PROCS 24
#define SG_MAX_ENV 8

typedef struct sg_proc {
    char name[32];                  /* worker name, e.g. "stock-reservation" */
    char env[SG_MAX_ENV][160];      /* extra "K=V" */
    int nenv;
    char log[360];                  /* stdout+stderr of every incarnation */
    pid_t pid;                      /* 0 when not running */
} sg_proc;

typedef struct sg_env {
    tf_redis r;
    redisContext *c;
    es_store *s;
    sg_proc p[SG_MAX_PROCS];
    int np;
} sg_env;

typedef struct sg_line {
    const char *product_id;
    long long qty;
    long long unit_price_cents;
} sg_line;

/* Starts redis (extra_conf as for tf_redis_start) and connects. */
void sg_setup(sg_env *e, const char *extra_conf);
/* SIGKILLs the workers still running, stops redis. Safe to call twice. */
void sg_teardown(sg_env *e);
/* Connects the test's context and store again (after a redis restart). */
void sg_reconnect(sg_env *e);

/* Spawns `chorus-worker name` with the base env (REDIS_URL, METRICS_PORT=0,
 * CLAIM_IDLE_MS=1000, BLOCK_MS=100, LOG_LEVEL=warn) plus env (NULL-terminated
 * "K=V" list, may be NULL). Returns its index. */
int sg_spawn(sg_env *e, const char *name, const char *const *env);
/* Spawns one copy of each of the three saga workers with env; returns the
 * index of the first. */
int sg_spawn_saga(sg_env *e, const char *const *env);
void sg_kill9(sg_env *e, int i);            /* SIGKILL and reap */
void sg_restart(sg_env *e, int i);          /* spawn again with the same settings */
/* SIGTERMs every running worker and reaps it. Returns how many saga workers
 * (reservation, order, compensation) did not exit 0 (their logs are dumped). */
int sg_stop_workers(sg_env *e);
void sg_dump_logs(const sg_env *e);
/* The value of one series (full name with labels, as rendered) on a worker's
 * GET /metrics at 127.0.0.1:port, or -1 when absent. */
long long sg_metric(int port, const char *series);

/* Sets product id: name, price, available; reserved and sold 0. */
void sg_product(sg_env *e, const char *id, long long available);
void sg_stock(sg_env *e, const char *id, long long *available, long long *reserved, long long *sold);

/* Appends CheckoutInitiated for checkout_id (total = sum of the lines). */
void sg_checkout(sg_env *e, const char *checkout_id, const char *client_id, const sg_line *lines, size_t n);

/* The history's types joined with ',' (caller frees). */
char *sg_types(sg_env *e, const char *checkout_id);
/* The data member key of the first event of type in the history, as text
 * (caller frees; NULL when absent). */
char *sg_data_str(sg_env *e, const char *checkout_id, const char *type, const char *key);
/* Reads and folds a checkout's history. */
void sg_fold(sg_env *e, const char *checkout_id, es_checkout_state *st);

/* How many of the listed checkouts' histories end with a terminal event. */
size_t sg_count_terminal(sg_env *e, char *const *ids, size_t n);
/* Waits until every listed checkout's history ends with a terminal event. */
bool sg_wait_terminal(sg_env *e, char *const *ids, size_t n, int timeout_ms);
/* Waits until every consumer group of the bus has delivered everything and
 * has nothing pending (the saga workers are idle). */
bool sg_wait_quiet(sg_env *e, int timeout_ms);

/* Entries in the dead-letter stream of group. */
long long sg_dlq_len(sg_env *e, const char *group);
/* Integer reply of a command (asserts success). */
long long sg_ll(sg_env *e, const char *fmt, ...);
/* How many keys match pattern (SCAN over the whole keyspace). */
long long sg_count_keys(sg_env *e, const char *pattern);
/* String reply of a command (caller frees; NULL for nil). */
char *sg_str(sg_env *e, const char *fmt, ...);

#endif
