/* bench_e2e.c - chorus-bench-e2e: whole sagas per second, and how long one
 * takes from the checkout request to its terminal event.
 *
 * Starts a private redis-server with AOF as `./chorus up` does (fsync every
 * second unless BENCH_APPENDFSYNC says otherwise), a catalog of three
 * products, chorus-api and the six workers as real processes
 * (LOG_LEVEL=warn, metrics off). Checkouts go over HTTP
 * (bench/httpload); the mix is 90% success ("ok": stock for the whole run),
 * 5% stock failure ("none": 0 in stock) and 5% order-limit compensation
 * ("lux": price above ORDER_LIMIT_CENTS, reserved then released).
 *
 * How a saga is followed: a reader thread of this process runs XREAD BLOCK
 * on every partition's bus (ecommerce.checkout.events with PARTITIONS=1,
 * else ecommerce.checkout.events:{p<p>}) from its first entry: one XREAD
 * over all of them on one server; on a cluster one per partition, each on
 * a connection to the master of its bus's slot (XREAD refuses keys of
 * several slots), all waited on with poll(2). It maps
 * each CheckoutInitiated's aggregate_id to the request that made it (its
 * client_id is "e2e-<n>") and stops a saga's clock when it reads its
 * CheckoutSucceeded / CheckoutFailed: the terminal event is in the store and
 * visible to a client by then. Every terminal event is counted per saga.
 *
 * Phases:
 *   1. warm-up, 3 s closed loop;
 *   2. closed loop, BENCH_INFLIGHT (256) sagas in flight: a slot is taken by
 *      a request and freed when its saga's terminal event is read; 1 s + 25 s
 *      -> e2e.sagas_per_s, e2e.events_per_s, CPU per saga of every process
 *      (e2e.redis_cpu_us_per_saga, e2e.cpu_us_per_saga: API + workers +
 *      Redis), INFO commandstats per saga (e2e.commands_per_saga,
 *      e2e.script_us_per_call: EVALSHA inclusive of what the scripts run);
 *   3. open loop at BENCH_RATE (1,000) checkouts/s, 2 s + 25 s; latency from
 *      each request's *scheduled* send time (no coordinated omission) to its
 *      terminal event -> e2e.p50/p95/p99/max_ms, and to its 202 ->
 *      e2e.accept_p50_ms / accept_p99_ms; then the same at BENCH_RATE2
 *      (2,000/s; 0 skips it) -> e2e.p99_ms_at_2000 and friends;
 *   4. checks: every accepted saga has exactly one terminal event, stock is
 *      conserved (available + reserved + sold == stocked, reserved == 0)
 *      -> e2e.lost_sagas (the bench prints why and exits 1 when not 0);
 *   5. resident memory of every process, Redis memory per saga;
 *   6. raw ceiling: this process does the closed loop's appends (XADD of
 *      payloads of the measured mean size), deliveries (XREADGROUP COUNT 500
 *      by 6 groups) and acks (XACK), pipelined, per saga, with no HTTP and
 *      no logic, spread over one stream per partition (each pipeline split
 *      per node on a cluster) -> e2e.raw_sagas_per_s and e2e.sagas_vs_raw.
 *
 * PARTITIONS (default 1; 16 with BENCH_CLUSTER) reaches the daemons.
 * BENCH_CLUSTER=3 runs everything on a private Redis Cluster of 3 masters +
 * 3 replicas (tests/support/cluster_fixture.h; AOF as above on every node,
 * Redis's default 15 s node timeout) with REDIS_URL=redis-cluster://...:
 * Redis CPU (/proc of each redis-server), INFO commandstats, socket counters
 * and used_memory are summed over the masters; the replicas' CPU is given
 * apart (what replication costs); and it prints e2e.shards,
 * e2e.busiest_shard_redis_cpu_us_per_saga, e2e.shard_cpu_spread (busiest /
 * mean master over the closed loop), e2e.shard<k>_redis_cpu_us_per_saga,
 * e2e.replica_redis_cpu_us_per_saga and the raw phase's split. Before the
 * run the partition buses' slots are moved (empty) so that each master owns
 * as many partitions as the others +/- 1; BENCH_CLUSTER_BALANCE=0 keeps
 * redis-cli's even slot ranges (4, 5 and 7 of 16 partitions).
 * BENCH_CLUSTER_DRYRUN=1 starts no daemon: synthetic sagas written through
 * the slot router must all be followed by the reader, then the raw phase
 * and the per-node accounting run on the real server(s).
 *
 * Knobs: BENCH_INFLIGHT, BENCH_RATE, BENCH_RATE2, BENCH_CLOSED_S, BENCH_OPEN_S,
 * BENCH_APPENDFSYNC (everysec, the figures in BENCHMARKS.md; `up` runs
 * `always` unless CHORUS_REDIS_FSYNC says otherwise), BENCH_AOF_REWRITE (1:
 * automatic AOF rewrites as under `up`: at 512 MB, then at 5x the last
 * compacted size; 0: off), BENCH_REDIS_CONF
 * (redis.conf lines added after the bench's own, ';' between them).
 *
 * Binaries are found beside this one (../api/chorus-api,
 * ../workers/chorus-worker). Exits 1 when it could not run or lost a saga;
 * a daemon that never becomes ready (the API's /ready, every worker's group
 * on every partition's bus) ends the run with one line saying which and the
 * last line of its log. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench/benchutil.h"
#include "bench/httpload.h"
#include "common/clock.h"
#include "common/cluster.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/redis.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define MAX_SAGAS (1u << 20)       /* requests over the whole run */
#define MAP_SLOTS (1u << 22)       /* aggregate id -> saga, open addressing */
#define BIN_NS 100000000LL         /* event counters per 100 ms */
#define NBINS 12000                /* 20 minutes of bins */
#define STOCK 100000000LL
#define PRICE_OK 1000
#define PRICE_LUX 600000           /* > ORDER_LIMIT_CENTS (500000) */

static const char *const k_products[3] = {"ok", "none", "lux"};
static const long long k_stock[3] = {STOCK, 0, STOCK};

static void figure(const char *name, double v, const char *unit)
{
    if (v >= 1000)
        printf("BENCH e2e.%s %.0f %s\n", name, v, unit);
    else
        printf("BENCH e2e.%s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

/* ---- per-saga state, shared by the HTTP loop and the bus reader ---- */

static int64_t *g_origin;           /* latency origin of request n (HTTP thread) */
static int64_t *g_accept;           /* when its 202 arrived (0: none) */
static int64_t *g_term;             /* when its first terminal event was read (reader) */
static _Atomic uint8_t *g_nterm;    /* terminal events read for it */
static _Atomic uint8_t *g_ok202;    /* 1 once its 202 arrived */
static atomic_uint_fast64_t g_issued;   /* requests built so far (n < g_issued) */
static atomic_int g_inflight;       /* sagas started and not yet terminal (closed loop) */
static int g_inflight_max;
static int g_wake = -1;             /* eventfd: a slot was freed */
static atomic_uint_fast64_t g_non202;

/* reader counters */
static atomic_uint_fast64_t g_events, g_terms, g_unknown_terms, g_dup_terms, g_initiated;
static atomic_uint_fast64_t g_reason_stock, g_reason_limit, g_reason_other, g_succeeded;
static atomic_uint_fast64_t g_payload_bytes;
static _Atomic uint32_t g_bin_events[NBINS], g_bin_terms[NBINS];
static int64_t g_t0;                /* bins count from here */
static atomic_bool g_stop;

typedef struct phase {
    uint64_t base;                  /* request n = base + httpload seq */
} phase;

/* The mix: 1 in 20 out of stock, 1 in 20 over the order limit. */
static int product_of(uint64_t n)
{
    return n % 20 == 7 ? 1 : n % 20 == 13 ? 2 : 0;
}

static size_t build_checkout(void *ud, uint64_t seq, char *buf, size_t cap)
{
    const phase *ph = ud;
    uint64_t n = ph->base + seq;
    if (n >= MAX_SAGAS)
        return 0;
    uint64_t cur = atomic_load(&g_issued);
    while (cur < n + 1 && !atomic_compare_exchange_weak(&g_issued, &cur, n + 1)) {
    }
    char body[160];
    int bl = snprintf(body, sizeof body, "{\"client_id\":\"e2e-%llu\",\"items\":[{\"product_id\":\"%s\",\"quantity\":1}]}",
                      (unsigned long long)n, k_products[product_of(n)]);
    int w = snprintf(buf, cap,
                     "POST /api/checkouts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Idempotency-Key: e2e-%llu\r\nContent-Length: %d\r\n\r\n%s",
                     (unsigned long long)n, bl, body);
    return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

static void release_slot(void)
{
    atomic_fetch_sub(&g_inflight, 1);
    uint64_t one = 1;
    if (g_wake >= 0 && write(g_wake, &one, sizeof one) < 0) {
        /* the counter saturates only if nobody reads it: harmless */
    }
}

static void on_answer(void *ud, const hl_answer *a)
{
    const phase *ph = ud;
    uint64_t n = ph->base + a->seq;
    if (n >= MAX_SAGAS)
        return;
    if (a->status == 202) {
        g_origin[n] = a->origin_ns;
        g_accept[n] = a->done_ns;
        atomic_store(&g_ok202[n], 1);
    } else {
        atomic_fetch_add(&g_non202, 1);
        release_slot();   /* no saga started */
    }
}

static int gate(void *ud)
{
    (void)ud;
    int cur = atomic_load(&g_inflight);
    while (cur < g_inflight_max)
        if (atomic_compare_exchange_weak(&g_inflight, &cur, cur + 1))
            return 1;
    return 0;
}

/* ---- the bus reader ---- */

typedef struct map_slot {
    uint64_t h;      /* hash of the aggregate id, 0 = empty */
    uint32_t n;      /* the saga */
} map_slot;
static map_slot *g_map;

static uint64_t hash_id(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h ? h : 1;
}

static void map_put(uint64_t h, uint32_t n)
{
    for (uint32_t i = (uint32_t)h & (MAP_SLOTS - 1);; i = (i + 1) & (MAP_SLOTS - 1))
        if (!g_map[i].h || g_map[i].h == h) {
            g_map[i].h = h;
            g_map[i].n = n;
            return;
        }
}

static int64_t map_get(uint64_t h)
{
    for (uint32_t i = (uint32_t)h & (MAP_SLOTS - 1);; i = (i + 1) & (MAP_SLOTS - 1)) {
        if (!g_map[i].h)
            return -1;
        if (g_map[i].h == h)
            return g_map[i].n;
    }
}

/* The string value of "key":"..." in a JSON text, or NULL. */
static const char *json_str(const char *json, const char *key, size_t *len)
{
    const char *p = strstr(json, key);
    if (!p)
        return NULL;
    p += strlen(key);
    const char *e = strchr(p, '"');
    if (!e)
        return NULL;
    *len = (size_t)(e - p);
    return p;
}

static void on_entry(const redisReply *fields, int64_t now)
{
    const char *type = NULL, *payload = NULL;
    size_t plen = 0;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (!cm_reply_is_str(k) || !cm_reply_is_str(v))
            continue;
        if (!strcmp(k->str, "type"))
            type = v->str;
        else if (!strcmp(k->str, "payload")) {
            payload = v->str;
            plen = v->len;
        }
    }
    atomic_fetch_add(&g_events, 1);
    atomic_fetch_add(&g_payload_bytes, plen);
    int64_t bin = (now - g_t0) / BIN_NS;
    if (bin >= 0 && bin < NBINS)
        atomic_fetch_add(&g_bin_events[bin], 1);
    if (!type || !payload)
        return;
    size_t idl = 0;
    const char *id = json_str(payload, "\"aggregate_id\":\"", &idl);
    if (!id)
        return;
    if (!strcmp(type, "CheckoutInitiated")) {
        size_t cl = 0;
        const char *cid = json_str(payload, "\"client_id\":\"e2e-", &cl);
        if (!cid)
            return;
        unsigned long long n = strtoull(cid, NULL, 10);
        if (n < MAX_SAGAS) {
            map_put(hash_id(id, idl), (uint32_t)n);
            atomic_fetch_add(&g_initiated, 1);
        }
        return;
    }
    bool ok = !strcmp(type, "CheckoutSucceeded");
    if (!ok && strcmp(type, "CheckoutFailed") != 0)
        return;
    if (bin >= 0 && bin < NBINS)
        atomic_fetch_add(&g_bin_terms[bin], 1);
    atomic_fetch_add(&g_terms, 1);
    int64_t n = map_get(hash_id(id, idl));
    if (n < 0) {
        atomic_fetch_add(&g_unknown_terms, 1);
        return;
    }
    if (ok) {
        atomic_fetch_add(&g_succeeded, 1);
    } else {
        size_t rl = 0;
        const char *r = json_str(payload, "\"reason\":\"", &rl);
        if (r && rl == strlen(CM_REASON_INSUFFICIENT_STOCK) && !strncmp(r, CM_REASON_INSUFFICIENT_STOCK, rl))
            atomic_fetch_add(&g_reason_stock, 1);
        else if (r && rl == strlen(CM_REASON_ORDER_LIMIT) && !strncmp(r, CM_REASON_ORDER_LIMIT, rl))
            atomic_fetch_add(&g_reason_limit, 1);
        else
            atomic_fetch_add(&g_reason_other, 1);
    }
    if (atomic_fetch_add(&g_nterm[n], 1) == 0) {
        g_term[n] = now;
        release_slot();
    } else {
        atomic_fetch_add(&g_dup_terms, 1);
    }
}

/* The reader's connections: each one has one XREAD BLOCK in flight over its
 * partitions' buses (a contiguous range). On one redis-server a single
 * connection reads every partition in one XREAD; on a cluster every bus is
 * in its own slot and XREAD refuses keys of several slots, so each
 * partition has its own connection to the master owning its slot. The
 * thread sleeps in poll(2) on all of them: no busy polling. */
typedef struct rd_conn {
    cm_redis_url addr;
    int p0, np;             /* partitions p0 .. p0+np-1 */
    redisContext *c;
} rd_conn;
typedef struct rd_plan {
    rd_conn *conn;
    int n;
} rd_plan;
static char (*g_last)[48];   /* per partition: the last bus entry id read */

/* Queues and writes the next XREAD of conn. Returns 0 or -1. */
static int rd_send(rd_conn *rc)
{
    cm_argv a = {0};
    cm_argv_adds(&a, "XREAD");
    cm_argv_adds(&a, "COUNT");
    cm_argv_adds(&a, "2000");
    cm_argv_adds(&a, "BLOCK");
    cm_argv_adds(&a, "100");
    cm_argv_adds(&a, "STREAMS");
    for (int p = rc->p0; p < rc->p0 + rc->np; p++)
        cm_argv_adds(&a, cm_key_bus(CM_BUS_STREAM_DEFAULT, p).s);
    for (int p = rc->p0; p < rc->p0 + rc->np; p++)
        cm_argv_adds(&a, g_last[p]);
    int rc_ = redisAppendCommandArgv(rc->c, a.n, (const char **)a.v, a.len);
    cm_argv_free(&a);
    int done = 0;
    while (rc_ == REDIS_OK && !done)
        rc_ = redisBufferWrite(rc->c, &done);
    return rc_ == REDIS_OK ? 0 : -1;
}

/* Takes one XREAD reply: every entry of every stream in it. */
static void rd_take(const redisReply *r, int64_t now)
{
    for (size_t s = 0; r && r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        const redisReply *name = cm_reply_elem(r->element[s], 0), *entries = cm_reply_elem(r->element[s], 1);
        int p = cm_reply_is_str(name) ? cm_bus_partition(CM_BUS_STREAM_DEFAULT, name->str) : -1;
        for (size_t i = 0; p >= 0 && entries && i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            const redisReply *eid = cm_reply_elem(e, 0), *fields = cm_reply_elem(e, 1);
            if (!cm_reply_is_str(eid) || !fields || fields->type != REDIS_REPLY_ARRAY)
                continue;
            snprintf(g_last[p], sizeof g_last[p], "%s", eid->str);
            on_entry(fields, now);
        }
    }
}

static void *reader_main(void *arg)
{
    rd_plan *pl = arg;
    char err[256];
    struct pollfd *fds = calloc((size_t)pl->n, sizeof *fds);
    for (int i = 0; fds && i < pl->n; i++) {
        rd_conn *rc = &pl->conn[i];
        if (!(rc->c = cm_redis_connect_url(&rc->addr, 10000, err, sizeof err))) {
            fprintf(stderr, "bench e2e: reader: %s\n", err);
            goto out;
        }
        if (rd_send(rc) != 0) {
            fprintf(stderr, "bench e2e: reader: %s\n", rc->c->errstr);
            goto out;
        }
        fds[i] = (struct pollfd){.fd = rc->c->fd, .events = POLLIN};
    }
    while (fds && !atomic_load(&g_stop)) {
        if (poll(fds, (nfds_t)pl->n, 200) < 0 && errno != EINTR)
            break;
        int64_t now = cm_mono_ns();
        for (int i = 0; i < pl->n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            redisContext *c = pl->conn[i].c;
            redisReply *r = NULL;
            if (redisBufferRead(c) != REDIS_OK || redisReaderGetReply(c->reader, (void **)&r) != REDIS_OK) {
                fprintf(stderr, "bench e2e: reader: %s\n", c->errstr[0] ? c->errstr : c->reader->errstr);
                goto out;
            }
            if (!r)
                continue;   /* a partial reply: the rest comes with the next POLLIN */
            if (r->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "bench e2e: reader: %s\n", r->str);
                freeReplyObject(r);
                goto out;
            }
            rd_take(r, now);
            freeReplyObject(r);
            if (rd_send(&pl->conn[i]) != 0) {
                fprintf(stderr, "bench e2e: reader: %s\n", c->errstr);
                goto out;
            }
        }
    }
out:
    for (int i = 0; i < pl->n; i++) {
        redisFree(pl->conn[i].c);
        pl->conn[i].c = NULL;
    }
    free(fds);
    return NULL;
}

/* ---- the Redis servers under test ----
 * One private redis-server (one node, a master), or with BENCH_CLUSTER a
 * private cluster of 3 masters + 3 replicas (tests/support/
 * cluster_fixture.h). Every Redis figure is measured per node and summed
 * over the masters (the shards); the replicas' share, the cost of
 * replication, is reported apart. */

#define MAX_NODES TF_CLUSTER_NODES
static tf_redis g_rs;                   /* the single server */
static tf_cluster g_cl;                 /* or the cluster */
static bool g_is_cluster;
static int g_nnodes;
static tf_redis *g_node[MAX_NODES];
static bool g_master[MAX_NODES];
static int g_shard[MAX_NODES];          /* a master's shard number; a replica's: its master's */
static int g_nparts_of[MAX_NODES];      /* partitions whose bus slot a master owns */
static redisContext *g_nc[MAX_NODES];   /* the main thread's connection to each node */
static cm_cluster *g_cc;                /* the main thread's slot-routed client */
static const char *g_url;               /* REDIS_URL of the daemons */
static int g_parts = 1;                 /* PARTITIONS */

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

/* Moves the (still empty) slots of partition buses from the master owning
 * most partitions to the one owning fewest until they differ by one at most:
 * redis-cli's even slot ranges hold 4, 5 and 7 of 16 partitions, a spread
 * of placement, not of the platform. Returns how many slots moved, or -1. */
static int balance_partitions(void)
{
    int *slot = calloc((size_t)g_parts, sizeof *slot), *owner = calloc((size_t)g_parts, sizeof *owner);
    int moved = -1, count[MAX_NODES] = {0};
    if (!slot || !owner)
        goto out;
    for (int p = 0; p < g_parts; p++) {
        slot[p] = slot_of(cm_key_bus(CM_BUS_STREAM_DEFAULT, p).s);
        if ((owner[p] = tf_cluster_master_of(&g_cl, slot[p])) < 0)
            goto out;
        count[owner[p]]++;
    }
    moved = 0;
    for (int round = 0; round < g_parts; round++) {
        int hi = -1, lo = -1;
        for (int i = 0; i < g_nnodes; i++) {
            if (!g_master[i])
                continue;
            hi = hi < 0 || count[i] > count[hi] ? i : hi;
            lo = lo < 0 || count[i] < count[lo] ? i : lo;
        }
        if (hi < 0 || count[hi] - count[lo] <= 1)
            break;
        int p = 0;
        while (owner[p] != hi)
            p++;
        if (tf_cluster_migrate_slot(&g_cl, slot[p], lo, true) != 0) {
            moved = -1;
            goto out;
        }
        moved++;
        for (int q = 0; q < g_parts; q++)   /* every partition in that slot went along */
            if (slot[q] == slot[p]) {
                count[owner[q]]--;
                owner[q] = lo;
                count[lo]++;
            }
    }
    if (moved > 0 && tf_cluster_wait_ok(&g_cl, 20000) != 0)
        moved = -1;
out:
    free(slot);
    free(owner);
    return moved;
}

/* Starts the server(s) with conf, connects to each node and maps who
 * masters which partition (on a cluster, balanced first unless balance is
 * false). Returns 0 or -1 (why on stderr). */
static int backend_start(bool cluster, bool balance, const char *conf)
{
    char err[256];
    if (cluster) {
        if (tf_cluster_start(&g_cl, conf) != 0)
            return -1;
        g_is_cluster = true;
        g_nnodes = TF_CLUSTER_NODES;
        g_url = g_cl.url;
    } else {
        if (tf_redis_start(&g_rs, conf) != 0)
            return -1;
        g_nnodes = 1;
        g_url = g_rs.url;
    }
    int shards = 0;
    for (int i = 0; i < g_nnodes; i++) {
        g_node[i] = cluster ? &g_cl.node[i] : &g_rs;
        g_master[i] = !cluster || tf_cluster_is_master(&g_cl, i);
        g_shard[i] = g_master[i] ? shards++ : -1;
        g_nc[i] = tf_redis_connect(g_node[i]);
    }
    for (int i = 0; cluster && i < g_nnodes; i++) {
        int r = g_master[i] ? tf_cluster_replica_of(&g_cl, i) : -1;
        if (r >= 0)
            g_shard[r] = g_shard[i];
    }
    int moved = cluster && balance ? balance_partitions() : 0;
    if (moved < 0) {
        fprintf(stderr, "bench e2e: could not move partition slots between masters\n");
        return -1;
    }
    if (moved > 0)
        printf("  %d partition bus slot%s moved so that each master owns as many partitions as the others, "
               "+/- 1 (BENCH_CLUSTER_BALANCE=0: keep redis-cli's slot ranges)\n", moved, moved > 1 ? "s" : "");
    g_cc = cluster ? cm_cluster_open(g_url, 30000, err, sizeof err) : cm_cluster_borrow(g_nc[0]);
    if (!g_cc) {
        fprintf(stderr, "bench e2e: %s\n", err);
        return -1;
    }
    for (int p = 0; p < g_parts; p++) {
        int m = cluster ? tf_cluster_master_of(&g_cl, slot_of(cm_key_bus(CM_BUS_STREAM_DEFAULT, p).s)) : 0;
        if (m >= 0)
            g_nparts_of[m]++;
    }
    return 0;
}

/* On a cluster: true when every node still has the role it had at the
 * start (a failover would mix the shards' figures). */
static bool backend_roles_kept(void)
{
    for (int i = 0; g_is_cluster && i < g_nnodes; i++)
        if (tf_cluster_is_master(&g_cl, i) != g_master[i])
            return false;
    return true;
}

static void backend_stop(void)
{
    cm_cluster_free(g_cc);
    for (int i = 0; i < g_nnodes; i++)
        redisFree(g_nc[i]);
    if (g_is_cluster)
        tf_cluster_stop(&g_cl);
    else
        tf_redis_stop(&g_rs);
}

/* How a node is named in the report. */
static const char *node_label(int i, char *buf, size_t len)
{
    if (!g_is_cluster)
        return "redis-server";
    if (g_master[i])
        snprintf(buf, len, "shard %d master :%d", g_shard[i], g_node[i]->port);
    else
        snprintf(buf, len, "shard %d replica :%d", g_shard[i], g_node[i]->port);
    return buf;
}

/* The sum over the masters of an INFO field, or -1 when one lacks it. */
static long long masters_info(const char *section, const char *field)
{
    long long sum = 0;
    for (int i = 0; i < g_nnodes; i++) {
        if (!g_master[i])
            continue;
        long long v = bu_info_ll(g_nc[i], section, field);
        if (v < 0)
            return -1;
        sum += v;
    }
    return sum;
}

/* Sends a keyless command to every node (masters and replicas). */
static void all_nodes(const char *cmd)
{
    for (int i = 0; i < g_nnodes; i++)
        freeReplyObject(redisCommand(g_nc[i], cmd));
}

/* ---- processes ---- */

static int g_port;

/* What start_api runs the API with. */
typedef struct api_start_args {
    const char *bin, *url, *log;
} api_start_args;

static pid_t spawn(const char *const av[], const char *url, const char *logpath, const char *extra);

static pid_t start_api(void *ud)
{
    const api_start_args *a = ud;
    const char *av[] = {a->bin, NULL};
    return spawn(av, a->url, a->log, NULL);
}

static bool api_ready(void *ud)
{
    (void)ud;
    tf_http_resp r;
    bool ok = tf_http_request(g_port, "GET", "/ready", NULL, NULL, &r) == 0 && r.status == 200;
    tf_http_resp_free(&r);
    return ok;
}

#define NPROC (1 + CM_W_COUNT)
static pid_t g_pids[NPROC];
static const char *g_names[NPROC];
#define NMARK (NPROC + MAX_NODES + 1)   /* daemons, nodes, this process */
#define MARK_SELF (NPROC + g_nnodes)

/* What the daemons' readiness wait saw. */
typedef struct ready_wait {
    int exited;   /* index of a daemon that exited (-1: none) */
    int status;   /* its waitpid status */
} ready_wait;

/* Reaps a daemon that exited: its index into w->exited (-1: none). */
static void reap_exited(ready_wait *w)
{
    w->exited = -1;
    for (int i = 0; i < NPROC && w->exited < 0; i++)
        if (g_pids[i] > 0 && tf_wait_exit(g_pids[i], 0, &w->status) == 0) {
            g_pids[i] = 0;
            w->exited = i;
        }
}

/* True once every worker's consumer group exists on every partition's bus
 * (each worker creates its group on every bus at start), or as soon as a
 * daemon exited (then w->exited names it and it is reaped). */
static bool workers_ready(void *ud)
{
    ready_wait *w = ud;
    reap_exited(w);
    if (w->exited >= 0)
        return true;
    for (int p = 0; p < g_parts; p++) {
        cm_key bus = cm_key_bus(CM_BUS_STREAM_DEFAULT, p);
        redisReply *r = cm_cluster_command(g_cc, slot_of(bus.s), "XINFO GROUPS %s", bus.s);
        int found = 0;
        for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++)
            for (size_t f = 0; f + 1 < r->element[g]->elements; f += 2) {
                const redisReply *k = cm_reply_elem(r->element[g], f), *v = cm_reply_elem(r->element[g], f + 1);
                if (cm_reply_is_str(k) && cm_reply_is_str(v) && !strcmp(k->str, "name"))
                    for (int wk = 0; wk < CM_W_COUNT; wk++)
                        found += !strcmp(v->str, cm_group_names[wk]);
            }
        freeReplyObject(r);
        if (found < CM_W_COUNT)
            return false;
    }
    return true;
}

static void cpu_mark(double *out)
{
    for (int i = 0; i < NPROC; i++)
        out[i] = bu_cpu_seconds(g_pids[i]);
    for (int i = 0; i < g_nnodes; i++)
        out[NPROC + i] = bu_cpu_seconds(g_node[i]->server_pid);
    out[MARK_SELF] = bu_self_cpu();
}

/* How Redis CPU splits over the shards between two cpu_mark (nodes from
 * index NPROC), per saga. */
typedef struct shard_acct {
    int shards;
    double masters_us;    /* summed over the masters: the Redis CPU per saga */
    double replicas_us;   /* summed over the replicas: what replication costs */
    double busiest_us;    /* the busiest master's */
    double spread;        /* busiest / mean over the masters (1: even) */
} shard_acct;

/* Computes the split; on a cluster prints one line per node (label: what
 * was measured). */
static shard_acct shard_account(const char *label, const double *a, const double *b, double sagas)
{
    shard_acct s = {0};
    for (int i = 0; i < g_nnodes; i++) {
        double us = sagas > 0 ? (b[NPROC + i] - a[NPROC + i]) / sagas * 1e6 : 0;
        if (g_master[i]) {
            s.shards++;
            s.masters_us += us;
            s.busiest_us = us > s.busiest_us ? us : s.busiest_us;
        } else {
            s.replicas_us += us;
        }
    }
    double mean = s.shards ? s.masters_us / s.shards : 0;
    s.spread = mean > 0 ? s.busiest_us / mean : 0;
    if (!g_is_cluster)
        return s;
    printf("  %s: Redis CPU per saga by node (masters %.1f us in all, replicas %.1f us; busiest master %.1f us, "
           "%.2f x the mean):\n", label, s.masters_us, s.replicas_us, s.busiest_us, s.spread);
    char buf[64];
    for (int i = 0; i < g_nnodes; i++) {
        double us = sagas > 0 ? (b[NPROC + i] - a[NPROC + i]) / sagas * 1e6 : 0;
        if (g_master[i])
            printf("    %-24s %7.1f us (%4.1f%% of the masters'), owns %d of %d partition buses\n",
                   node_label(i, buf, sizeof buf), us, s.masters_us > 0 ? 100 * us / s.masters_us : 0,
                   g_nparts_of[i], g_parts);
        else
            printf("    %-24s %7.1f us (replication)\n", node_label(i, buf, sizeof buf), us);
    }
    return s;
}

/* The "some" stall total (microseconds) of /proc/pressure/cpu, or -1: how
 * long at least one task waited for a CPU. */
static double cpu_pressure_us(void)
{
    char line[256];
    FILE *f = fopen("/proc/pressure/cpu", "r");
    double v = -1;
    if (f) {
        if (fgets(line, sizeof line, f) && !strncmp(line, "some", 4)) {
            const char *t = strstr(line, "total=");
            v = t ? atof(t + 6) : -1;
        }
        fclose(f);
    }
    return v;
}

typedef struct cmdstat {
    char name[48];
    double calls, usec;
} cmdstat;

#define MAX_CMDSTATS 128

static int by_usec(const void *a, const void *b)
{
    double d = ((const cmdstat *)b)->usec - ((const cmdstat *)a)->usec;
    return d > 0 ? 1 : d < 0 ? -1 : 0;
}

/* What INFO commandstats says per saga: commands, and the script calls'
 * mean time (inclusive of the commands they run). */
typedef struct cmdsum {
    double commands_per_saga;
    double script_us_per_call;
} cmdsum;

/* Adds node c's INFO commandstats into st[0..*n), by command name. */
static void cmdstats_add(redisContext *c, cmdstat *st, int *n)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    if (!r || r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        return;
    }
    for (const char *p = strstr(r->str, "cmdstat_"); p; p = strstr(p + 1, "cmdstat_")) {
        const char *colon = strchr(p, ':');
        const char *calls = strstr(p, "calls="), *usec = strstr(p, ",usec=");
        if (!colon || !calls || !usec)
            break;
        char name[48];
        snprintf(name, sizeof name, "%.*s", (int)(colon - p - 8), p + 8);
        int k = 0;
        while (k < *n && strcmp(st[k].name, name) != 0)
            k++;
        if (k == *n) {
            if (*n == MAX_CMDSTATS)
                break;
            memset(&st[k], 0, sizeof st[k]);
            snprintf(st[k].name, sizeof st[k].name, "%s", name);
            (*n)++;
        }
        st[k].calls += atof(calls + 6);
        st[k].usec += atof(usec + 6);
    }
    freeReplyObject(r);
}

/* Prints where Redis spent its command time since the last CONFIG RESETSTAT
 * (INFO commandstats summed over the masters), per saga, biggest first;
 * fills *sum. */
static void print_cmdstats(double sagas, double redis_cpu_s, cmdsum *sum)
{
    memset(sum, 0, sizeof *sum);
    cmdstat st[MAX_CMDSTATS];
    int n = 0;
    for (int i = 0; i < g_nnodes; i++)
        if (g_master[i])
            cmdstats_add(g_nc[i], st, &n);
    double total = 0, ncalls = 0;
    for (int i = 0; i < n; i++) {
        total += st[i].usec;
        ncalls += st[i].calls;
    }
    qsort(st, (size_t)n, sizeof *st, by_usec);
    double script_calls = 0, script_usec = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(st[i].name, "evalsha") || !strcmp(st[i].name, "eval")) {
            script_calls += st[i].calls;
            script_usec += st[i].usec;
        }
    sum->commands_per_saga = sagas > 0 ? ncalls / sagas : 0;
    sum->script_us_per_call = script_calls > 0 ? script_usec / script_calls : 0;
    printf("  %s during the closed loop: %.1f us CPU per saga, of which %.1f us inside %.1f commands "
           "(the rest: socket I/O, event loop, AOF writes):\n", g_is_cluster ? "redis masters (summed)" : "redis-server",
           redis_cpu_s / sagas * 1e6, total / sagas, ncalls / sagas);
    for (int i = 0; i < n && i < 10; i++)
        printf("    %-16s %6.2f calls/saga %7.1f us/saga (%.1f us/call)\n", st[i].name, st[i].calls / sagas,
               st[i].usec / sagas, st[i].calls > 0 ? st[i].usec / st[i].calls : 0);
}

/* ---- phases ---- */

static uint64_t g_next_base;

static int load(const char *tag, double rate, int conns, int64_t warm_ms, int64_t dur_ms, hl_result *res,
                uint64_t *base)
{
    phase ph = {.base = g_next_base};
    *base = ph.base;
    hl_config cfg = {.port = g_port, .conns = conns, .rate = rate, .warmup_ms = warm_ms, .duration_ms = dur_ms,
                     .timeout_ms = 10000, .expect_status = 202, .build = build_checkout, .ud = &ph,
                     .on_answer = on_answer, .gate = rate > 0 ? NULL : gate, .wake_fd = rate > 0 ? 0 : g_wake,
                     .resend_unanswered = true};
    char err[256];
    if (hl_run(&cfg, res, err, sizeof err) != 0) {
        fprintf(stderr, "bench e2e: %s\n", err);
        return -1;
    }
    g_next_base = atomic_load(&g_issued);
    printf("  %-12s sent %llu  202 %llu  other %llu (last %d)  errors %llu  unsent %llu  resent %llu\n", tag,
           (unsigned long long)res->sent, (unsigned long long)res->ok, (unsigned long long)res->other_status,
           res->last_other_status, (unsigned long long)res->errors, (unsigned long long)res->unsent,
           (unsigned long long)res->resent);
    return 0;
}

/* Waits until every accepted request so far has a terminal event (or the
 * deadline); returns how many still have none. */
static uint64_t settle(int64_t timeout_ms)
{
    int64_t deadline = cm_mono_ms() + timeout_ms;
    uint64_t missing;
    for (;;) {
        missing = 0;
        uint64_t n = atomic_load(&g_issued);
        for (uint64_t i = 0; i < n; i++)
            missing += atomic_load(&g_ok202[i]) && !atomic_load(&g_nterm[i]);
        if (!missing || cm_mono_ms() > deadline || atomic_load(&g_stop))
            return missing;
        cm_sleep_ms(20);
    }
}

static uint64_t bins_sum(_Atomic uint32_t *bins, int64_t from_ns, int64_t to_ns)
{
    uint64_t s = 0;
    for (int64_t b = (from_ns - g_t0) / BIN_NS; b < (to_ns - g_t0) / BIN_NS && b < NBINS; b++)
        if (b >= 0)
            s += atomic_load(&bins[b]);
    return s;
}

/* ---- the raw ceiling ---- */

static const char *const k_raw_groups[CM_W_COUNT] = {"r1", "r2", "r3", "r4", "r5", "r6"};

/* Executes pp and checks that every reply came and none is an error; keeps
 * the replies for cm_pipe_take when keep. Returns 0 or -1 (why on stderr). */
static int raw_exec(cm_pipe *pp, bool keep)
{
    if (cm_pipe_exec(pp) != 0) {
        fprintf(stderr, "bench e2e: raw: %s\n", cm_cluster_errstr(g_cc));
        return -1;
    }
    for (size_t i = 0; !keep && i < cm_pipe_count(pp); i++) {
        redisReply *r = cm_pipe_take(pp, i);
        bool bad = !r || r->type == REDIS_REPLY_ERROR;
        if (bad)
            fprintf(stderr, "bench e2e: raw: %s\n", r ? r->str : "no reply");
        freeReplyObject(r);
        if (bad)
            return -1;
    }
    return 0;
}

/* nsagas sagas' worth of Redis work, spread over the partitions as the
 * platform's is (a stream per partition, "e2e.raw" itself with one): per
 * batch of 100 sagas, ev_per_saga XADDs of payload_len bytes (pipelined,
 * round robin over the partitions), then each of the 6 groups reads them
 * (XREADGROUP COUNT 500 per partition) and acknowledges them (XACK), each
 * step one pipeline split per node. Fills a and b with cpu_mark before and
 * after. Returns sagas/s, or -1. */
static double raw_rate(double ev_per_saga, size_t payload_len, int nsagas, double *a, double *b)
{
    char *payload = malloc(payload_len + 1);
    cm_key *stream = calloc((size_t)g_parts, sizeof *stream);
    int *slot = calloc((size_t)g_parts, sizeof *slot), *need = calloc((size_t)g_parts, sizeof *need);
    int *got = calloc((size_t)g_parts, sizeof *got), *q = calloc((size_t)g_parts, sizeof *q);
    redisReply **rep = calloc((size_t)g_parts, sizeof *rep);
    cm_pipe *pp = cm_pipe_new(g_cc);
    double rate = -1;
    if (!payload || !stream || !slot || !need || !got || !q || !rep) {
        fprintf(stderr, "bench e2e: raw: out of memory\n");
        goto out;
    }
    memset(payload, 'x', payload_len);
    payload[payload_len] = '\0';
    for (int p = 0; p < g_parts; p++) {
        stream[p] = cm_key_bus("e2e.raw", p);
        slot[p] = slot_of(stream[p].s);
        for (int g = 0; g < CM_W_COUNT; g++)
            cm_pipe_command(pp, slot[p], "XGROUP CREATE %s %s $ MKSTREAM", stream[p].s, k_raw_groups[g]);
    }
    if (raw_exec(pp, false) != 0)
        goto out;
    cpu_mark(a);
    int64_t t0 = cm_mono_ns();
    const int batch = 100;
    double owed = 0;
    int next = 0;   /* the partition of the next XADD */
    char ts[32];
    for (int done = 0; done < nsagas; done += batch) {
        owed += ev_per_saga * batch;
        int nev = (int)owed;
        owed -= nev;
        snprintf(ts, sizeof ts, "%.3f", cm_wall_s());
        memset(need, 0, (size_t)g_parts * sizeof *need);
        cm_pipe_reset(pp);
        for (int i = 0; i < nev; i++, next = (next + 1) % g_parts) {
            need[next]++;
            cm_pipe_command(pp, slot[next], "XADD %s * type CheckoutInitiated payload %s ts %s", stream[next].s,
                            payload, ts);
        }
        if (raw_exec(pp, false) != 0)
            goto out;
        for (int g = 0; g < CM_W_COUNT; g++) {
            memset(got, 0, (size_t)g_parts * sizeof *got);
            for (;;) {
                cm_pipe_reset(pp);
                int nq = 0;
                for (int p = 0; p < g_parts; p++)
                    if (got[p] < need[p]) {
                        cm_pipe_command(pp, slot[p], "XREADGROUP GROUP %s c COUNT 500 STREAMS %s >",
                                        k_raw_groups[g], stream[p].s);
                        q[nq++] = p;
                    }
                if (!nq)
                    break;
                if (raw_exec(pp, true) != 0)
                    goto out;
                for (int k = 0; k < nq; k++)
                    rep[k] = cm_pipe_take(pp, (size_t)k);
                cm_pipe_reset(pp);
                bool bad = false;
                for (int k = 0; k < nq && !bad; k++) {
                    const redisReply *ents = cm_reply_elem(cm_reply_elem(rep[k], 0), 1);
                    size_t ne = ents ? ents->elements : 0;
                    if (!rep[k] || rep[k]->type == REDIS_REPLY_ERROR || ne == 0) {
                        fprintf(stderr, "bench e2e: raw: XREADGROUP on %s: %s\n", stream[q[k]].s,
                                rep[k] && rep[k]->type == REDIS_REPLY_ERROR ? rep[k]->str : "fewer entries than added");
                        bad = true;
                        break;
                    }
                    cm_argv ack = {0};
                    cm_argv_adds(&ack, "XACK");
                    cm_argv_adds(&ack, stream[q[k]].s);
                    cm_argv_adds(&ack, k_raw_groups[g]);
                    for (size_t i = 0; i < ne; i++) {
                        const redisReply *id = cm_reply_elem(ents->element[i], 0);
                        cm_argv_add(&ack, id ? id->str : "0-0", id ? id->len : 3);
                    }
                    cm_pipe_argv(pp, slot[q[k]], &ack);
                    cm_argv_free(&ack);
                    got[q[k]] += (int)ne;
                }
                for (int k = 0; k < nq; k++) {
                    freeReplyObject(rep[k]);
                    rep[k] = NULL;
                }
                if (bad || raw_exec(pp, false) != 0)
                    goto out;
            }
        }
    }
    double secs = (double)(cm_mono_ns() - t0) / 1e9;
    cpu_mark(b);
    rate = nsagas / secs;
out:
    cm_pipe_free(pp);
    free(payload);
    free(stream);
    free(slot);
    free(need);
    free(got);
    free(q);
    free(rep);
    return rate;
}

/* ---- main ---- */

static pid_t spawn(const char *const av[], const char *url, const char *logpath, const char *extra)
{
    char url_env[340], port_env[32], parts_env[32];
    snprintf(url_env, sizeof url_env, "REDIS_URL=%s", url);
    snprintf(port_env, sizeof port_env, "API_PORT=%d", g_port);
    snprintf(parts_env, sizeof parts_env, "PARTITIONS=%d", g_parts);
    const char *env[] = {url_env, port_env, parts_env, "METRICS_PORT=0", "LOG_LEVEL=warn", "CHORUS_ADMIN_TOKEN=",
                         extra, NULL};
    return tf_spawn(av, env, logpath);
}

static void stop_all(void)
{
    for (int i = NPROC - 1; i >= 0; i--)
        if (g_pids[i] > 0)
            tf_kill(g_pids[i], SIGTERM);
    for (int i = NPROC - 1; i >= 0; i--)
        if (g_pids[i] > 0 && tf_wait_exit(g_pids[i], 10000, NULL) != 0) {
            tf_kill(g_pids[i], SIGKILL);
            tf_wait_exit(g_pids[i], 5000, NULL);
        }
}

/* Runs an open loop at rate for dur_ms and waits for its sagas to end;
 * fills the accept->terminal histogram of the measured window and counts
 * measured sagas with no terminal event into *unfinished. */
static int open_phase(double rate, int64_t dur_ms, hl_result *open, hl_hist *e2e, uint64_t *unfinished)
{
    uint64_t base;
    char tag[32];
    snprintf(tag, sizeof tag, "open-%.0f/s", rate);
    long long rw0 = masters_info("persistence", "aof_rewrites:");
    if (load(tag, rate, 64, 2000, dur_ms, open, &base) != 0)
        return -1;
    long long rw = masters_info("persistence", "aof_rewrites:") - rw0;
    uint64_t miss = settle(120000);   /* a backlog from an overloaded open loop drains here */
    if (miss)
        printf("  %s: %llu sagas not terminal 120 s after the last request\n", tag, (unsigned long long)miss);
    memset(e2e, 0, sizeof *e2e);
    for (uint64_t n = base; n < g_next_base; n++) {
        if (!atomic_load(&g_ok202[n]) || g_origin[n] < open->t_measure_ns || g_origin[n] >= open->t_end_ns)
            continue;
        if (!atomic_load(&g_nterm[n])) {
            (*unfinished)++;
            continue;
        }
        hl_hist_record(e2e, (uint64_t)((g_term[n] > g_origin[n] ? g_term[n] - g_origin[n] : 0) / 1000));
    }
    printf("  open-loop %.0f/s: %llu measured sagas; accept->terminal ms p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f "
           "max %.3f; 202 ms p50 %.3f p99 %.3f max %.3f; AOF rewrites started meanwhile: %lld\n",
           rate, (unsigned long long)e2e->total, hl_percentile_ms(e2e, 0.5), hl_percentile_ms(e2e, 0.9),
           hl_percentile_ms(e2e, 0.99), hl_percentile_ms(e2e, 0.999), (double)e2e->max_us / 1000.0,
           hl_percentile_ms(&open->lat, 0.5), hl_percentile_ms(&open->lat, 0.99), (double)open->lat.max_us / 1000.0,
           rw);
    return 0;
}

/* The reader's connections (see rd_conn): one for every partition on one
 * server, one per partition, to its slot's master, on a cluster. Returns
 * 0 or -1 (why on stderr). */
static int reader_plan(rd_plan *pl)
{
    pl->n = g_is_cluster ? g_parts : 1;
    pl->conn = calloc((size_t)pl->n, sizeof *pl->conn);
    g_last = calloc((size_t)g_parts, sizeof *g_last);
    if (!pl->conn || !g_last) {
        fprintf(stderr, "bench e2e: out of memory\n");
        return -1;
    }
    for (int p = 0; p < g_parts; p++)
        snprintf(g_last[p], sizeof g_last[p], "0");
    char err[256];
    for (int i = 0; i < pl->n; i++) {
        rd_conn *rc = &pl->conn[i];
        rc->p0 = g_is_cluster ? i : 0;
        rc->np = g_is_cluster ? 1 : g_parts;
        int slot = g_is_cluster ? slot_of(cm_key_bus(CM_BUS_STREAM_DEFAULT, i).s) : CM_SLOT_ANY;
        if (g_is_cluster ? cm_cluster_slot_addr(g_cc, slot, &rc->addr) != 0
                         : cm_redis_url_parse(g_url, &rc->addr, err, sizeof err) != 0) {
            fprintf(stderr, "bench e2e: no address for partition %d's bus (slot %d)\n", rc->p0, slot);
            return -1;
        }
    }
    return 0;
}

/* BENCH_CLUSTER_DRYRUN: n synthetic sagas (a CheckoutInitiated and a
 * CheckoutSucceeded each, in the bus of the partition its id belongs to),
 * written through the slot router as the daemons would; the reader must
 * follow every one to its end. Returns 0 or -1. */
static int dry_sagas(uint64_t n)
{
    cm_pipe *pp = cm_pipe_new(g_cc);
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        char id[CM_UUID_LEN + 1], init[200], term[120];
        int p = (int)(i % (uint64_t)g_parts);
        cm_partition_id(p, id);
        cm_key bus = cm_key_bus(CM_BUS_STREAM_DEFAULT, p);
        snprintf(init, sizeof init, "{\"aggregate_id\":\"%s\",\"client_id\":\"e2e-%llu\"}", id, (unsigned long long)i);
        snprintf(term, sizeof term, "{\"aggregate_id\":\"%s\"}", id);
        cm_pipe_command(pp, slot_of(bus.s), "XADD %s * type CheckoutInitiated payload %s", bus.s, init);
        cm_pipe_command(pp, slot_of(bus.s), "XADD %s * type CheckoutSucceeded payload %s", bus.s, term);
        atomic_store(&g_ok202[i], 1);
        if (cm_pipe_count(pp) >= 1000 || i + 1 == n) {
            rc = raw_exec(pp, false);
            cm_pipe_reset(pp);
        }
    }
    cm_pipe_free(pp);
    atomic_store(&g_issued, n);
    g_next_base = n;
    return rc;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    char api_bin[PATH_MAX], wk_bin[PATH_MAX], err[256], why[600] = "";
    if (bu_bin_path("../api/chorus-api", api_bin, sizeof api_bin) != 0 ||
        bu_bin_path("../workers/chorus-worker", wk_bin, sizeof wk_bin) != 0) {
        fprintf(stderr, "bench e2e: chorus-api or chorus-worker not built beside this bench\n");
        return 1;
    }
    g_inflight_max = (int)env_long("BENCH_INFLIGHT", 256);
    double rate = (double)env_long("BENCH_RATE", 1000), rate2 = (double)env_long("BENCH_RATE2", 2000);
    int64_t closed_ms = env_long("BENCH_CLOSED_S", 25) * 1000, open_ms = env_long("BENCH_OPEN_S", 25) * 1000;
    /* BENCH_CLUSTER=3: a private 3 masters + 3 replicas cluster instead of
     * the redis-server (the fixture's topology: 3 is the only count) */
    const char *bc = getenv("BENCH_CLUSTER");
    bool cluster = bc && *bc && strcmp(bc, "0") != 0;
    if (cluster && strcmp(bc, "3") != 0) {
        fprintf(stderr, "bench e2e: BENCH_CLUSTER must be 3 (3 masters + 3 replicas) or 0, not '%s'\n", bc);
        return 1;
    }
    bool dryrun = env_long("BENCH_CLUSTER_DRYRUN", 0) != 0;
    if ((g_parts = bu_partitions(cluster ? 16 : 1, err, sizeof err)) < 0) {
        fprintf(stderr, "bench e2e: %s\n", err);
        return 1;
    }

    g_origin = calloc(MAX_SAGAS, sizeof *g_origin);
    g_accept = calloc(MAX_SAGAS, sizeof *g_accept);
    g_term = calloc(MAX_SAGAS, sizeof *g_term);
    g_nterm = calloc(MAX_SAGAS, sizeof *g_nterm);
    g_ok202 = calloc(MAX_SAGAS, sizeof *g_ok202);
    g_map = calloc(MAP_SLOTS, sizeof *g_map);
    g_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!g_origin || !g_accept || !g_term || !g_nterm || !g_ok202 || !g_map || g_wake < 0) {
        fprintf(stderr, "bench e2e: out of memory\n");
        return 1;
    }

    /* AOF as under `./chorus up`; BENCH_APPENDFSYNC (everysec, the figures
     * in BENCHMARKS.md) sets the fsync policy, BENCH_AOF_REWRITE=0 turns
     * automatic AOF rewrites off, to see what they cost; a cluster's six
     * nodes all get the same */
    const char *fsync = getenv("BENCH_APPENDFSYNC") && *getenv("BENCH_APPENDFSYNC") ? getenv("BENCH_APPENDFSYNC")
                                                                                     : "everysec";
    if (strcmp(fsync, "always") != 0 && strcmp(fsync, "everysec") != 0 && strcmp(fsync, "no") != 0) {
        fprintf(stderr, "bench e2e: BENCH_APPENDFSYNC must be always, everysec or no, not '%s'\n", fsync);
        return 1;
    }
    char conf[1400];
    /* on a cluster, Redis's default node timeout (15 s) instead of the test
     * fixture's 2 s: a loaded 2-core machine must not fail a master over in
     * the middle of a measurement; BENCH_REDIS_CONF adds redis.conf lines
     * (';' between them) after these, to try a setting */
    const char *extra = getenv("BENCH_REDIS_CONF");
    int cn = snprintf(conf, sizeof conf, "appendonly yes\nappendfsync %s\n"
                      "stream-node-max-bytes 16384\nstream-node-max-entries 1000\n%s%s%s\n", fsync,
                      env_long("BENCH_AOF_REWRITE", 1) ? "auto-aof-rewrite-min-size 512mb\n"
                                                                         "auto-aof-rewrite-percentage 400\n"
                                                       : "auto-aof-rewrite-percentage 0\n",
                      cluster ? "cluster-node-timeout 15000\n" : "", extra ? extra : "");
    if (cn < 0 || (size_t)cn >= sizeof conf) {
        fprintf(stderr, "bench e2e: BENCH_REDIS_CONF is too long\n");
        return 1;
    }
    for (char *p = conf; *p; p++)
        if (*p == ';')
            *p = '\n';
    if (extra && *extra)
        printf("  redis.conf adds: %s\n", extra);
    if (backend_start(cluster, env_long("BENCH_CLUSTER_BALANCE", 1) != 0, conf) != 0) {
        fprintf(stderr, "bench e2e: cannot start %s\n", cluster ? "the redis cluster" : "redis-server");
        backend_stop();
        return 1;
    }
    int rc = 1;
    bool reader_on = false;
    pthread_t reader;
    rd_plan plan = {0};
    const char *dir = g_node[0]->dir;   /* the daemons' logs */
    for (int i = 0; i < 3; i++) {
        cm_key pk = cm_key_product(k_products[i]);
        redisReply *r = cm_cluster_command(g_cc, slot_of(pk.s), "HSET %s name %s price_cents %d available %lld "
                                           "reserved 0 sold 0", pk.s, k_products[i],
                                           i == 2 ? PRICE_LUX : PRICE_OK, k_stock[i]);
        freeReplyObject(r);
        r = cm_cluster_command(g_cc, slot_of(CM_KEY_PRODUCTS), "SADD %s %s", CM_KEY_PRODUCTS, k_products[i]);
        freeReplyObject(r);
    }
    long long mem0 = masters_info("memory", "used_memory:");
    if (reader_plan(&plan) != 0)
        goto out;
    double loadavg[3] = {0, 0, 0};
    getloadavg(loadavg, 3);
    if (g_is_cluster)
        printf("  redis cluster, 3 masters + 3 replicas (AOF %s on every node), PARTITIONS=%d; %d CPUs, load "
               "average %.2f\n  %s\n", fsync, g_parts, (int)sysconf(_SC_NPROCESSORS_ONLN), loadavg[0], g_url);

    if (dryrun) {
        /* no daemons: the reader, the raw phase and the per-node accounting
         * on the real servers, to check them before the daemons run here */
        g_t0 = cm_mono_ns();
        if (pthread_create(&reader, NULL, reader_main, &plan) != 0)
            goto out;
        reader_on = true;
        const uint64_t n = 20000;
        if (dry_sagas(n) != 0)
            goto out;
        uint64_t lost = settle(30000);
        printf("  dry run: %llu synthetic sagas over %d partition buses through the slot router; the reader (%d "
               "connection%s) followed %llu to their end, %llu duplicate terminal\n",
               (unsigned long long)n, g_parts, plan.n, plan.n > 1 ? "s" : "",
               (unsigned long long)(n - lost), (unsigned long long)atomic_load(&g_dup_terms));
        double ra[NMARK], rb[NMARK];
        double raw = raw_rate(4.0, 427, 30000, ra, rb);   /* the closed loop's mean saga (BENCHMARKS.md) */
        if (raw <= 0)
            goto out;
        shard_acct dsa = shard_account("dry run, raw phase", ra, rb, 30000);
        printf("  raw: 4.0 XADD of 427-byte payloads over %d partition%s, 24.0 XREADGROUP deliveries and XACKs per "
               "saga: %.0f sagas/s, redis %.1f us CPU per saga\n", g_parts, g_parts > 1 ? "s" : "", raw,
               dsa.masters_us);
        printf("BENCH e2e.shards %d masters\n", dsa.shards);
        figure("raw_sagas_per_s", raw, "sagas/s");
        figure("raw_redis_cpu_us_per_saga", dsa.masters_us, "us");
        figure("raw_busiest_shard_redis_cpu_us_per_saga", dsa.busiest_us, "us");
        figure("raw_shard_cpu_spread", dsa.spread, "ratio");
        figure("raw_replica_redis_cpu_us_per_saga", dsa.replicas_us, "us");
        figure("lost_sagas", (double)lost, "sagas");
        rc = lost || atomic_load(&g_dup_terms) ? 1 : 0;
        if (rc)
            snprintf(why, sizeof why, "dry run: the reader missed %llu synthetic sagas", (unsigned long long)lost);
        goto out;
    }

    char log[400];
    for (int w = 0; w < CM_W_COUNT; w++) {
        g_names[1 + w] = cm_worker_names[w];
        snprintf(log, sizeof log, "%s/%s.log", dir, cm_worker_names[w]);
        const char *av[] = {wk_bin, cm_worker_names[w], NULL};
        if ((g_pids[1 + w] = spawn(av, g_url, log, NULL)) <= 0) {
            fprintf(stderr, "bench e2e: cannot run %s: %s\n", wk_bin, strerror(errno));
            goto out;
        }
    }
    g_names[0] = "chorus-api";
    snprintf(log, sizeof log, "%s/api.log", dir);
    api_start_args sa = {api_bin, g_url, log};
    g_pids[0] = bu_start_api(&g_port, start_api, api_ready, &sa, 10000);
    if (g_pids[0] < 0) {
        fprintf(stderr, "bench e2e: cannot run %s: %s\n", api_bin, strerror(errno));
        g_pids[0] = 0;
        goto out;
    }
    ready_wait rw = {.exited = -1};
    if (!g_pids[0]) {
        /* its /ready needs every worker's groups: a worker that exited is the reason then */
        char last[400];
        reap_exited(&rw);
        if (rw.exited > 0) {
            snprintf(log, sizeof log, "%s/%s.log", dir, g_names[rw.exited]);
            bu_last_line(log, last, sizeof last);
            snprintf(why, sizeof why, "%s exited before it was ready on %s (PARTITIONS=%d): %s", g_names[rw.exited],
                     g_url, g_parts, last);
        } else {
            bu_last_line(log, last, sizeof last);
            snprintf(why, sizeof why, "chorus-api did not become ready on %s (PARTITIONS=%d; /ready needs Redis "
                     "and every worker's consumer group): %s", g_url, g_parts, last);
        }
        goto out;
    }
    if (!tf_wait_until(workers_ready, &rw, 30000) || rw.exited >= 0) {
        char last[400] = "its consumer groups are not on every partition's bus after 30 s";
        if (rw.exited >= 0) {
            snprintf(log, sizeof log, "%s/%s.log", dir, rw.exited ? g_names[rw.exited] : "api");
            bu_last_line(log, last, sizeof last);
        }
        snprintf(why, sizeof why, "%s did not become ready on %s (PARTITIONS=%d)%s: %s",
                 rw.exited >= 0 ? g_names[rw.exited] : "the workers", g_url, g_parts,
                 rw.exited >= 0 ? " (it exited)" : "", last);
        goto out;
    }
    g_t0 = cm_mono_ns();
    if (pthread_create(&reader, NULL, reader_main, &plan) != 0)
        goto out;
    reader_on = true;
    char streams[64];
    if (g_parts == 1)
        snprintf(streams, sizeof streams, "%s", CM_BUS_STREAM_DEFAULT);
    else
        snprintf(streams, sizeof streams, "%s:{p0..p%d}", CM_BUS_STREAM_DEFAULT, g_parts - 1);
    if (!g_is_cluster)
        printf("  redis-server %s (AOF %s), chorus-api on :%d, six workers; %d CPUs, load average %.2f\n"
               "  sagas followed by a reader thread: XREAD BLOCK on %s, clock stops when the\n"
               "  CheckoutSucceeded/CheckoutFailed of the saga's aggregate_id is read from the store\n",
               g_url, fsync, g_port, (int)sysconf(_SC_NPROCESSORS_ONLN), loadavg[0], streams);
    else
        printf("  chorus-api on :%d, six workers; sagas followed by a reader thread: one XREAD BLOCK per\n"
               "  partition bus (%s, each to its slot's master), clock stops when the\n"
               "  CheckoutSucceeded/CheckoutFailed of the saga's aggregate_id is read from the store\n",
               g_port, streams);

    hl_result warm, closed, open;
    uint64_t b_warm, b_closed;
    if (load("warm-up", 0, 32, 0, 3000, &warm, &b_warm) != 0)
        goto out;
    uint64_t miss = settle(30000);
    if (miss)
        printf("  warm-up: %llu sagas not terminal after 30 s\n", (unsigned long long)miss);

    /* closed loop */
    double cpu_a[NMARK], cpu_b[NMARK];
    all_nodes("CONFIG RESETSTAT");
    double press0 = cpu_pressure_us();
    int64_t wall0 = cm_mono_ns();
    cpu_mark(cpu_a);
    long long closed_rw = masters_info("persistence", "aof_rewrites:");
    if (load("closed-loop", 0, 32, 1000, closed_ms, &closed, &b_closed) != 0)
        goto out;
    cpu_mark(cpu_b);
    closed_rw = masters_info("persistence", "aof_rewrites:") - closed_rw;
    double win_s = (double)(closed.t_end_ns - closed.t_measure_ns) / 1e9;
    uint64_t c_terms = bins_sum(g_bin_terms, closed.t_measure_ns, closed.t_end_ns);
    uint64_t c_events = bins_sum(g_bin_events, closed.t_measure_ns, closed.t_end_ns);
    double sagas_per_s = (double)c_terms / win_s, events_per_s = (double)c_events / win_s;
    double ev_per_saga = c_terms ? (double)c_events / (double)c_terms : 4;
    uint64_t closed_started = g_next_base - b_closed;
    printf("  closed-loop: %d sagas in flight, %.1f events per saga, AOF rewrites started meanwhile: %lld; CPU per "
           "saga (whole phase, %llu sagas):\n",
           g_inflight_max, ev_per_saga, closed_rw, (unsigned long long)closed_started);
    double cpu_sum = 0;
    char lbuf[64];
    for (int i = 0; i <= MARK_SELF; i++) {
        printf("    %-20s %7.1f us\n", i < NPROC ? g_names[i] : i < MARK_SELF ? node_label(i - NPROC, lbuf, sizeof lbuf)
                                                                         : "bench (load+reader)",
               (cpu_b[i] - cpu_a[i]) / (double)closed_started * 1e6);
        cpu_sum += cpu_b[i] - cpu_a[i];
    }
    double wall_s = (double)(cm_mono_ns() - wall0) / 1e9;
    printf("    %-20s %7.1f us (%.2f CPUs busy; some task waited for a CPU %.0f%% of the time)\n", "total",
           cpu_sum / (double)closed_started * 1e6, cpu_sum / wall_s,
           100 * (cpu_pressure_us() - press0) / (wall_s * 1e6));
    shard_acct sh = shard_account("closed loop", cpu_a, cpu_b, (double)closed_started);
    cmdsum cs;
    print_cmdstats((double)closed_started, sh.masters_us * (double)closed_started / 1e6, &cs);
    double platform_cpu = 0;   /* API, workers and the masters: not the bench itself, nor the replicas */
    for (int i = 0; i < NPROC; i++)
        platform_cpu += cpu_b[i] - cpu_a[i];
    platform_cpu += sh.masters_us * (double)closed_started / 1e6;
    printf("  %s socket reads %.1f, writes %.1f, bytes in %.0f, out %.0f per saga (since CONFIG RESETSTAT)\n",
           g_is_cluster ? "redis masters (summed)" : "redis-server",
           (double)masters_info("stats", "total_reads_processed:") / (double)closed_started,
           (double)masters_info("stats", "total_writes_processed:") / (double)closed_started,
           (double)masters_info("stats", "total_net_input_bytes:") / (double)closed_started,
           (double)masters_info("stats", "total_net_output_bytes:") / (double)closed_started);
    miss = settle(30000);
    if (miss)
        printf("  closed-loop: %llu sagas not terminal after 30 s\n", (unsigned long long)miss);

    /* open loops: the target rate, then BENCH_RATE2 (0: skipped) */
    hl_hist e2e, e2e2;
    uint64_t unfinished = 0;
    if (open_phase(rate, open_ms, &open, &e2e, &unfinished) != 0)
        goto out;
    memset(&e2e2, 0, sizeof e2e2);
    hl_result open2 = {0};
    if (rate2 > 0 && open_phase(rate2, open_ms, &open2, &e2e2, &unfinished) != 0)
        goto out;

    /* checks */
    uint64_t accepted = 0, lost = 0, dups = 0;
    for (uint64_t n = 0; n < g_next_base; n++) {
        if (!atomic_load(&g_ok202[n]))
            continue;
        accepted++;
        uint8_t t = atomic_load(&g_nterm[n]);
        lost += t == 0;
        dups += t > 1;
    }
    bool conserved = true;
    int64_t deadline = cm_mono_ms() + 10000;
    for (int i = 0; i < 3; i++) {
        long long av = -1, re = -1, so = -1;
        cm_key pk = cm_key_product(k_products[i]);
        for (;;) {
            redisReply *r = cm_cluster_command(g_cc, slot_of(pk.s), "HMGET %s available reserved sold", pk.s);
            if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
                av = cm_reply_ll(r->element[0], -1);
                re = cm_reply_ll(r->element[1], -1);
                so = cm_reply_ll(r->element[2], -1);
            }
            freeReplyObject(r);
            if (re == 0 || cm_mono_ms() > deadline)
                break;
            cm_sleep_ms(50);
        }
        bool ok = av >= 0 && re == 0 && so >= 0 && av + re + so == k_stock[i];
        printf("  product %-4s available %lld reserved %lld sold %lld (stocked %lld)%s\n", k_products[i], av, re, so,
               k_stock[i], ok ? "" : "  NOT CONSERVED");
        conserved = conserved && ok;
    }
    cm_sleep_ms(300);   /* let the reader catch up on any late duplicate */
    printf("  %llu checkouts accepted, %llu other statuses; bus: %llu events, %llu CheckoutInitiated, %llu "
           "terminal (%llu succeeded, failed: %llu insufficient_stock, %llu order_limit_exceeded, %llu other), "
           "%llu duplicate terminal, %llu terminal for an unknown saga\n",
           (unsigned long long)accepted, (unsigned long long)atomic_load(&g_non202),
           (unsigned long long)atomic_load(&g_events), (unsigned long long)atomic_load(&g_initiated),
           (unsigned long long)atomic_load(&g_terms), (unsigned long long)atomic_load(&g_succeeded),
           (unsigned long long)atomic_load(&g_reason_stock), (unsigned long long)atomic_load(&g_reason_limit),
           (unsigned long long)atomic_load(&g_reason_other), (unsigned long long)atomic_load(&g_dup_terms),
           (unsigned long long)atomic_load(&g_unknown_terms));

    /* memory */
    long long mem1 = masters_info("memory", "used_memory:");
    printf("  resident memory at the end (VmRSS):");
    for (int i = 0; i < NPROC; i++)
        printf(" %s %.1f MiB%s", g_names[i], bu_rss_mib(g_pids[i]), ",");
    for (int i = 0; i < g_nnodes; i++)
        printf(" %s %.1f MiB%s", node_label(i, lbuf, sizeof lbuf), bu_rss_mib(g_node[i]->server_pid),
               i + 1 < g_nnodes ? "," : "");
    printf(" (used_memory%s %.1f MiB)\n", g_is_cluster ? " of the masters" : "", (double)mem1 / 1048576.0);
    printf("  AOF rewrites during the run: %lld (automatic, as under ./chorus up; each forks redis-server)\n",
           masters_info("persistence", "aof_rewrites:"));
    size_t payload_len = atomic_load(&g_events) ? atomic_load(&g_payload_bytes) / atomic_load(&g_events) : 400;

    /* raw ceiling, after the memory figures (it adds its own streams) */
    double ra[NMARK], rb[NMARK];
    double raw = raw_rate(ev_per_saga, payload_len, 30000, ra, rb);
    if (raw <= 0)
        goto out;
    shard_acct rsh = shard_account("raw", ra, rb, 30000);
    char over[48] = "";
    if (g_parts > 1)
        snprintf(over, sizeof over, " over %d partitions", g_parts);
    printf("  raw: %.1f XADD of %zu-byte payloads%s, %.1f XREADGROUP deliveries and XACKs per saga: %.0f sagas/s, "
           "%s %.1f us CPU per saga\n", ev_per_saga, payload_len, over, ev_per_saga * CM_W_COUNT, raw,
           g_is_cluster ? "redis masters" : "redis-server", rsh.masters_us);

    figure("sagas_per_s", sagas_per_s, "sagas/s");
    figure("events_per_s", events_per_s, "ev/s");
    figure("raw_sagas_per_s", raw, "sagas/s");
    figure("sagas_vs_raw", sagas_per_s / raw, "ratio");
    figure("open_rate", rate, "checkouts/s");
    figure("p50_ms", hl_percentile_ms(&e2e, 0.5), "ms");
    figure("p95_ms", hl_percentile_ms(&e2e, 0.95), "ms");
    figure("p99_ms", hl_percentile_ms(&e2e, 0.99), "ms");
    figure("max_ms", (double)e2e.max_us / 1000.0, "ms");
    figure("accept_p50_ms", hl_percentile_ms(&open.lat, 0.5), "ms");
    figure("accept_p99_ms", hl_percentile_ms(&open.lat, 0.99), "ms");
    figure("p99_ms_at_2000", rate2 > 0 ? hl_percentile_ms(&e2e2, 0.99) : 0, "ms");
    figure("p50_ms_at_2000", rate2 > 0 ? hl_percentile_ms(&e2e2, 0.5) : 0, "ms");
    figure("accept_p99_ms_at_2000", rate2 > 0 ? hl_percentile_ms(&open2.lat, 0.99) : 0, "ms");
    figure("redis_cpu_us_per_saga", sh.masters_us, "us");
    figure("cpu_us_per_saga", platform_cpu / (double)closed_started * 1e6, "us");
    figure("script_us_per_call", cs.script_us_per_call, "us");
    figure("commands_per_saga", cs.commands_per_saga, "commands");
    figure("redis_bytes_per_saga", accepted ? (double)(mem1 - mem0) / (double)accepted : 0, "bytes");
    figure("lost_sagas", (double)lost, "sagas");
    figure("duplicate_terminals", (double)dups, "sagas");
    if (!backend_roles_kept())
        printf("  WARNING: a replica took over a master during the run: the per-shard figures below mix roles\n");
    if (g_is_cluster) {
        printf("BENCH e2e.shards %d masters\n", sh.shards);
        figure("busiest_shard_redis_cpu_us_per_saga", sh.busiest_us, "us");
        figure("shard_cpu_spread", sh.spread, "ratio");
        for (int i = 0; i < g_nnodes; i++)
            if (g_master[i]) {
                char name[64];
                snprintf(name, sizeof name, "shard%d_redis_cpu_us_per_saga", g_shard[i]);
                figure(name, (cpu_b[NPROC + i] - cpu_a[NPROC + i]) / (double)closed_started * 1e6, "us");
            }
        figure("replica_redis_cpu_us_per_saga", sh.replicas_us, "us");
        figure("raw_busiest_shard_redis_cpu_us_per_saga", rsh.busiest_us, "us");
        figure("raw_shard_cpu_spread", rsh.spread, "ratio");
    }
    if (lost || dups || !conserved || unfinished) {
        printf("e2e: FAILED: %llu accepted sagas without a terminal event, %llu with more than one, stock %s\n",
               (unsigned long long)lost, (unsigned long long)dups, conserved ? "conserved" : "NOT conserved");
        goto out;
    }
    rc = 0;
out:
    atomic_store(&g_stop, true);
    if (reader_on)
        pthread_join(reader, NULL);
    stop_all();
    if (rc != 0 && !why[0])
        for (int i = 0; i < NPROC; i++)
            if (g_names[i]) {
                char p[400];
                snprintf(p, sizeof p, "%s/%s.log", dir, i ? g_names[i] : "api");
                tf_dump_file(p, g_names[i]);
            }
    backend_stop();
    if (why[0])
        fprintf(stderr, "bench e2e: %s\n", why);
    free(plan.conn);
    free(g_last);
    free(g_origin);
    free(g_accept);
    free(g_term);
    free(g_nterm);
    free(g_ok202);
    free(g_map);
    close(g_wake);
    return rc;
}
