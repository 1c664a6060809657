/* bench_projection.c - chorus-bench-projection: what the projection's apply
 * script costs Redis per call and per saga, without the rest of the platform.
 *
 * Starts a private redis-server as `./chorus up` runs it (AOF, fsync every
 * second; automatic AOF rewrites off so none lands inside a measurement) and
 * applies synthetic sagas through pj_projection_apply (projections/
 * projection.h), as the cqrs-projection worker does, batch by batch.
 *
 * The sagas follow the e2e bench's mix (90% success: Initiated, Reserved,
 * OrderCreated, Succeeded; 5% no stock: Initiated, ReservationFailed, Failed;
 * 5% over the order limit: Initiated, Reserved, OrderCreationFailed,
 * Released, Failed), 1,000 clients, three products. Batches interleave sagas
 * the way a busy bus does: saga group g's j-th event is in batch g + j, with
 * BENCH_GROUP (2) sagas per group, so a batch holds ~8 events of ~6
 * checkouts at different stages (what the e2e bench's closed loop gives the
 * worker), and every OrderCreated comes in a later batch than its
 * StockReserved. The entries are on the bus stream too (ids "<n>-0").
 * BENCH_PARTITIONS (1) sets PARTITIONS: a batch then goes out as one apply
 * script per partition it touches (one pipeline), so calls per saga grow
 * and each call is smaller. BENCH_CLIENTS (1,000) sets how many clients the
 * sagas cycle through (the e2e bench has one per saga: BENCH_CLIENTS=
 * BENCH_SAGAS); BENCH_TTL_S (604,800, the worker's READ_MODEL_TTL_S
 * default; 0 = kept) the read models' lifetime, counted from event times
 * that start at the bench's own start.
 *
 * Figures (each the median of BENCH_ROUNDS (5) rounds of BENCH_SAGAS (4,000)
 * sagas on fresh read models):
 *   projection.apply_us_per_call   EVALSHA time per call (INFO commandstats)
 *   projection.apply_us_per_saga   the same per saga
 *   projection.calls_per_saga      script calls per saga
 *   projection.redis_cpu_us_per_saga  redis-server CPU (user + system) per saga
 *   projection.client_cpu_us_per_saga this process's CPU per saga (building
 *                                  the calls, hiredis)
 *   projection.nested_per_saga     commands the script ran per saga (every
 *                                  command but EVALSHA in commandstats),
 *                                  each command's count printed beside it
 * The source only uses pj_projection_apply, so the same file measures an
 * older tree for a before/after. Exits 1 when it could not run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/benchutil.h"
#include "common/clock.h"
#include "common/redis.h"
#include "common/xmalloc.h"
#include "event_store/store.h"
#include "projections/projection.h"
#include "tests/support/redis_fixture.h"

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    char *end;
    long x = v && *v ? strtol(v, &end, 10) : dflt;
    return v && *v && *end == '\0' && x > 0 ? x : dflt;
}

enum shape { OK, NOSTOCK, LIMIT };

static long long g_entry;   /* fake bus entry ids, increasing */
static long g_clients = 1000;

static es_event *mk(const char *co, int seq, const char *type, enum cm_event_type kind, double em, json_t *data)
{
    es_event *ev = cm_xcalloc(1, sizeof *ev);
    char id[32];
    snprintf(id, sizeof id, "%lld-0", ++g_entry);
    ev->entry_id = cm_xstrdup(id);
    ev->type = cm_xstrdup(type);
    ev->kind = kind;
    ev->aggregate = cm_xstrdup("checkout");
    ev->aggregate_id = cm_xstrdup(co);
    ev->seq = seq;
    ev->emitted_at = em;
    ev->data = data;
    return ev;
}

static json_t *items(const char *pid)
{
    return json_pack("[{s:s, s:i, s:i}]", "product_id", pid, "quantity", 1, "unit_price_cents", 100);
}

/* The events of saga i (at most 5), in order. */
static size_t saga(long i, double t0, es_event **out)
{
    char co[32], cl[32], ord[40];
    snprintf(co, sizeof co, "co-%08ld", i);
    snprintf(cl, sizeof cl, "cl-%ld", i % g_clients);
    snprintf(ord, sizeof ord, "ord-%s", co);
    enum shape s = i % 20 == 7 ? NOSTOCK : i % 20 == 13 ? LIMIT : OK;
    const char *pid = s == OK ? "ok" : s == NOSTOCK ? "none" : "lux";
    double em = t0 + (double)i * 0.001;
    size_t n = 0;
    out[n++] = mk(co, 1, "CheckoutInitiated", CM_EV_CHECKOUT_INITIATED, em,
                  json_pack("{s:s, s:o, s:i}", "client_id", cl, "items", items(pid), "total_cents", 100));
    if (s == NOSTOCK) {
        out[n++] = mk(co, 2, "StockReservationFailed", CM_EV_STOCK_RESERVATION_FAILED, em + 0.001,
                      json_pack("{s:s, s:s}", "reason", "insufficient_stock", "product_id", pid));
        out[n++] = mk(co, 3, "CheckoutFailed", CM_EV_CHECKOUT_FAILED, em + 0.002,
                      json_pack("{s:s}", "reason", "insufficient_stock"));
        return n;
    }
    out[n++] = mk(co, 2, "StockReserved", CM_EV_STOCK_RESERVED, em + 0.001,
                  json_pack("{s:s, s:o}", "client_id", cl, "items", items(pid)));
    if (s == LIMIT) {
        out[n++] = mk(co, 3, "OrderCreationFailed", CM_EV_ORDER_CREATION_FAILED, em + 0.002,
                      json_pack("{s:s}", "reason", "order_limit_exceeded"));
        out[n++] = mk(co, 4, "StockReleased", CM_EV_STOCK_RELEASED, em + 0.003,
                      json_pack("{s:o}", "items", items(pid)));
        out[n++] = mk(co, 5, "CheckoutFailed", CM_EV_CHECKOUT_FAILED, em + 0.004,
                      json_pack("{s:s}", "reason", "order_limit_exceeded"));
        return n;
    }
    out[n++] = mk(co, 3, "OrderCreated", CM_EV_ORDER_CREATED, em + 0.002,
                  json_pack("{s:s, s:s, s:i}", "order_id", ord, "client_id", cl, "total_cents", 100));
    out[n++] = mk(co, 4, "CheckoutSucceeded", CM_EV_CHECKOUT_SUCCEEDED, em + 0.003,
                  json_pack("{s:s}", "order_id", ord));
    return n;
}

typedef struct batch {
    es_event **evs;
    size_t n, cap;
} batch;

static void batch_add(batch *b, es_event *ev)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->evs = cm_xrealloc(b->evs, b->cap * sizeof *b->evs);
    }
    b->evs[b->n++] = ev;
}

/* Sagas [0, nsagas) laid out in batches (see the top comment). */
static batch *schedule(long nsagas, long group, size_t *nbatches)
{
    long ngroups = (nsagas + group - 1) / group;
    *nbatches = (size_t)ngroups + 5;
    batch *bs = cm_xcalloc(*nbatches, sizeof *bs);
    double t0 = (double)(long long)cm_wall_s();   /* read models' lifetimes count from here */
    for (long g = 0; g < ngroups; g++)
        for (long i = g * group; i < (g + 1) * group && i < nsagas; i++) {
            es_event *evs[5];
            size_t n = saga(i, t0, evs);
            for (size_t j = 0; j < n; j++)
                batch_add(&bs[g + (long)j], evs[j]);
        }
    /* bus order: entry ids increase along the batches */
    g_entry = 0;
    for (size_t k = 0; k < *nbatches; k++)
        for (size_t j = 0; j < bs[k].n; j++) {
            char id[32];
            snprintf(id, sizeof id, "%lld-0", ++g_entry);
            free(bs[k].evs[j]->entry_id);
            bs[k].evs[j]->entry_id = cm_xstrdup(id);
        }
    return bs;
}

/* EVALSHA calls and usec since the last CONFIG RESETSTAT. */
static void evalsha_stats(redisContext *c, double *calls, double *usec)
{
    *calls = *usec = 0;
    redisReply *r = redisCommand(c, "INFO commandstats");
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "cmdstat_evalsha:");
        if (p) {
            const char *cs = strstr(p, "calls="), *us = strstr(p, ",usec=");
            if (cs && us) {
                *calls = atof(cs + 6);
                *usec = atof(us + 6);
            }
        }
    }
    freeReplyObject(r);
}

/* Commands other than EVALSHA (the script's nested ones) since the last
 * CONFIG RESETSTAT: their total, and "NAME=calls ..." into list. */
static double nested_stats(redisContext *c, char *list, size_t listlen)
{
    double total = 0;
    size_t off = 0;
    list[0] = '\0';
    redisReply *r = redisCommand(c, "INFO commandstats");
    if (r && r->type == REDIS_REPLY_STRING) {
        for (const char *p = strstr(r->str, "cmdstat_"); p; p = strstr(p + 1, "cmdstat_")) {
            const char *name = p + 8, *colon = strchr(name, ':'), *cs = strstr(name, "calls=");
            if (!colon || !cs)
                break;
            int nl = (int)(colon - name);
            if ((nl == 7 && !strncmp(name, "evalsha", 7)) || (nl == 4 && !strncmp(name, "info", 4)))
                continue;
            double n = atof(cs + 6);
            total += n;
            if (off < listlen)
                off += (size_t)snprintf(list + off, listlen - off, "%s%.*s=%.0f", off ? " " : "", nl, name, n);
        }
    }
    freeReplyObject(r);
    return total;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(void)
{
    long nsagas = env_long("BENCH_SAGAS", 4000), group = env_long("BENCH_GROUP", 2);
    long rounds = env_long("BENCH_ROUNDS", 5), parts = env_long("BENCH_PARTITIONS", 1);
    g_clients = env_long("BENCH_CLIENTS", 1000);
    const char *ttl_env = getenv("BENCH_TTL_S");
    long long ttl_s = ttl_env && *ttl_env ? atoll(ttl_env) : atoll(PJ_READ_MODEL_TTL_DEFAULT);
    if (cm_partitions_set(parts) != 0) {
        fprintf(stderr, "bench projection: BENCH_PARTITIONS must be 1..%d\n", CM_PARTITIONS_MAX);
        return 1;
    }
    tf_redis rs;
    if (tf_redis_start(&rs, "appendonly yes\nappendfsync everysec\nauto-aof-rewrite-percentage 0\n") != 0) {
        fprintf(stderr, "bench projection: cannot start redis-server\n");
        return 1;
    }
    redisContext *c = tf_redis_connect(&rs);
    size_t nb;
    batch *bs = schedule(nsagas, group, &nb);
    size_t nev = 0;
    for (size_t k = 0; k < nb; k++)
        nev += bs[k].n;
    printf("  %ld sagas, %zu events in %zu batches (%.1f events per batch), %ld rounds, %ld partition(s), %ld "
           "clients, lifetime %lld s\n",
           nsagas, nev, nb, (double)nev / (double)nb, rounds, parts, g_clients, ttl_s);
    double *per_call = cm_xcalloc((size_t)rounds, sizeof *per_call);
    double *per_saga = cm_xcalloc((size_t)rounds, sizeof *per_saga);
    double *calls_saga = cm_xcalloc((size_t)rounds, sizeof *calls_saga), *cpu = cm_xcalloc((size_t)rounds, sizeof *cpu);
    double *self = cm_xcalloc((size_t)rounds, sizeof *self), *nested = cm_xcalloc((size_t)rounds, sizeof *nested);
    char nested_list[1024] = "";
    int rc = 0;
    for (long round = 0; round < rounds && rc == 0; round++) {
        freeReplyObject(redisCommand(c, "FLUSHALL"));
        /* the bus holds the entries (an older apply script looked them up) */
        size_t sent = 0;
        for (size_t k = 0; k < nb; k++)
            for (size_t j = 0; j < bs[k].n; j++, sent++)
                redisAppendCommand(c, "XADD %s %s type %s", CM_BUS_STREAM_DEFAULT, bs[k].evs[j]->entry_id,
                                   bs[k].evs[j]->type);
        for (size_t i = 0; i < sent; i++) {
            redisReply *x = NULL;
            if (redisGetReply(c, (void **)&x) != REDIS_OK || !x || x->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "bench projection: XADD failed\n");
                rc = 1;
            }
            freeReplyObject(x);
        }
        freeReplyObject(redisCommand(c, "CONFIG RESETSTAT"));
        pj_projection *p = pj_projection_new();
        pj_projection_set_lifetime(p, ttl_s);
        cm_cluster *cc = cm_cluster_borrow(c);
        double r0 = bu_cpu_seconds(rs.server_pid), s0 = bu_self_cpu();
        for (size_t k = 0; k < nb && rc == 0; k++) {
            if (!bs[k].n)
                continue;
            pj_apply_res res;
            char err[256];
            if (pj_projection_apply(p, cc, CM_BUS_STREAM_DEFAULT, bs[k].evs, bs[k].n, PJ_LIVE, NULL, &res, err,
                                    sizeof err) != PJ_OK) {
                fprintf(stderr, "bench projection: apply: %s\n", err);
                rc = 1;
            }
        }
        double r1 = bu_cpu_seconds(rs.server_pid), s1 = bu_self_cpu();
        double ecalls, eusec;
        evalsha_stats(c, &ecalls, &eusec);
        nested[round] = nested_stats(c, nested_list, sizeof nested_list) / (double)nsagas;
        pj_projection_free(p);
        cm_cluster_free(cc);
        per_call[round] = ecalls ? eusec / ecalls : 0;
        per_saga[round] = eusec / (double)nsagas;
        calls_saga[round] = ecalls / (double)nsagas;
        cpu[round] = (r1 - r0) * 1e6 / (double)nsagas;
        self[round] = (s1 - s0) * 1e6 / (double)nsagas;
        printf("  round %ld: %.1f us per call, %.1f us per saga, %.3f calls per saga, redis CPU %.1f us per saga, "
               "client CPU %.1f us per saga\n",
               round + 1, per_call[round], per_saga[round], calls_saga[round], cpu[round], self[round]);
    }
    if (rc == 0) {
        printf("BENCH projection.apply_us_per_call %.1f us\n", median(per_call, (size_t)rounds));
        printf("BENCH projection.apply_us_per_saga %.1f us\n", median(per_saga, (size_t)rounds));
        printf("BENCH projection.calls_per_saga %.3f calls\n", median(calls_saga, (size_t)rounds));
        printf("BENCH projection.redis_cpu_us_per_saga %.1f us\n", median(cpu, (size_t)rounds));
        printf("BENCH projection.client_cpu_us_per_saga %.1f us\n", median(self, (size_t)rounds));
        printf("BENCH projection.nested_per_saga %.2f commands\n", median(nested, (size_t)rounds));
        printf("  nested commands of the last round (%ld sagas): %s\n", nsagas, nested_list);
    }
    for (size_t k = 0; k < nb; k++)
        es_events_free(bs[k].evs, bs[k].n);
    free(bs);
    free(per_call);
    free(per_saga);
    free(calls_saga);
    free(cpu);
    free(self);
    free(nested);
    redisFree(c);
    tf_redis_stop(&rs);
    return rc;
}
