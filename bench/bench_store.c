/* bench_store.c - chorus-bench-store: the event store against raw Redis.
 *
 * Starts a private redis-server (tests/support/redis_fixture.h; no RDB, no
 * AOF: a pure speed measure, durability costs the same for both sides) and
 * measures in one run:
 *
 *   (a) appends: N single-event appends to distinct checkouts, pipelined in
 *       batches of DEPTH through the store's own script (es_append_keys /
 *       es_append_args + cm_script_append / cm_script_reply, client-side
 *       encoding included), against a raw pipelined XADD of the same payload
 *       bytes at the same depth (the next batch is sent before the
 *       previous one's replies are read, for both); and plain synchronous
 *       es_append calls;
 *   (b) replay: 1,000,000 valid envelopes on a bus (written with raw XADD,
 *       the events of ~235k checkouts of the four saga shapes interleaved as
 *       in production), read back in XRANGE pages of 1000 (the next page
 *       requested before this one is decoded), decoded with
 *       es_event_from_entry and folded into one state per checkout
 *       (es_checkout_apply on a hash table by aggregate_id), against the
 *       same XRANGE scan decoding nothing; and once through es_stream_page,
 *       the library's synchronous page call.
 *
 * The appends also run a floor script (bench/lua/dual_write.lua: the same
 * two writes without any check), to tell the cost of writing both the
 * history and the bus from the cost of the store's checks. Each side runs
 * in alternating rounds on an emptied Redis and its best round counts;
 * the *_cpu ratios compare Redis's own CPU time per event, which a busy
 * shared machine disturbs far less than wall time. BENCH_STORE_ONLY=
 * append|replay runs one part.
 *
 * Prints `BENCH store.<figure> <value> <unit>` lines (DESIGN.md, "Command
 * line") plus indented notes; exits non-zero only when it could not run
 * (Redis would not start, a call failed, or a replay result was wrong). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/names.h"
#include "common/redis.h"
#include "common/xmalloc.h"
#include "event_store/store.h"
#include "tests/support/redis_fixture.h"

/* The store's append script exactly as es_append runs it (event_store/
 * meson.build embeds it into the library), so the pipelined path measures
 * the same server-side work. */
extern const char es_lua_append[], es_lua_append_batch[];
/* bench/lua/dual_write.lua: XADD + RPUSH and nothing else, the floor. */
extern const char bench_lua_dual_write[];

enum {
    N_APPEND = 200000,   /* pipelined appends (and raw XADDs) per round */
    ROUNDS = 2,          /* alternating store/raw rounds; the best of each counts */
    DEPTH = 64,          /* commands in flight per batch */
    N_SYNC = 20000,      /* synchronous es_append calls */
    N_REPLAY = 1000000,  /* events on the replayed bus */
    PAGE = 1000,         /* XRANGE page size */
    CHUNK = 1000,        /* checkouts whose events interleave on the bus */
    GEN_DEPTH = 256,     /* pipeline depth while filling the replay bus */
};

#define APPEND_BUS "bench.append"
#define RAW_BUS "bench.raw"
#define REPLAY_BUS "bench.replay"

static void figure(const char *name, double v, const char *unit)
{
    if (v >= 1000)
        printf("BENCH store.%s %.0f %s\n", name, v, unit);
    else
        printf("BENCH store.%s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

/* This process's CPU time (user + sys), in seconds. */
static double self_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double secs_since(int64_t t0)
{
    return (double)(cm_mono_ns() - t0) / 1e9;
}

/* Reads n pipelined replies; each must be a non-error reply. check (may be
 * NULL) validates one. Returns 0 or -1 after printing the first problem. */
static int drain(redisContext *c, int n, cm_script *sc, int (*check)(const redisReply *))
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (sc)
            r = cm_script_reply(c, sc);
        else if (redisGetReply(c, (void **)&r) != REDIS_OK)
            r = NULL;
        if (!r) {
            fprintf(stderr, "bench store: redis: %s\n", c->errstr);
            return -1; /* the connection is unusable */
        }
        if (rc == 0 && (r->type == REDIS_REPLY_ERROR || (check && check(r) != 0))) {
            fprintf(stderr, "bench store: unexpected reply: %s\n", r->type == REDIS_REPLY_ERROR ? r->str : "?");
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}

/* Redis's own CPU time per call of cmd (INFO commandstats) since the last
 * CONFIG RESETSTAT, in microseconds; -1 if unknown. */
static double server_usec_per_call(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    double v = -1;
    char key[64];
    snprintf(key, sizeof key, "cmdstat_%s:", cmd);
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, key) : NULL;
    const char *u = p ? strstr(p, "usec_per_call=") : NULL;
    if (u)
        v = strtod(u + 14, NULL);
    freeReplyObject(r);
    return v;
}

static void reset_stats(redisContext *c)
{
    freeReplyObject(redisCommand(c, "CONFIG RESETSTAT"));
}

/* Redis's total CPU time so far (user + sys, INFO cpu), in seconds. */
static double server_cpu_s(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double v = 0;
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_sys:") : NULL;
    const char *u = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_user:") : NULL;
    if (p && u)
        v = strtod(p + 13, NULL) + strtod(u + 14, NULL);
    freeReplyObject(r);
    return v;
}

/* Sends everything buffered on c. Returns 0 or -1. */
static int flush(redisContext *c)
{
    int done = 0;
    do {
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            fprintf(stderr, "bench store: redis: %s\n", c->errstr);
            return -1;
        }
    } while (!done);
    return 0;
}

/* Appends command i of a pipelined run to c's output buffer. */
typedef int (*send_fn)(redisContext *c, void *ud, int i);

/* Runs total commands in batches of DEPTH, the next batch sent before the
 * replies of the previous one are read (so Redis works while the client
 * builds): at most 2 * DEPTH in flight. Returns 0 or -1. */
static int pipelined(redisContext *c, int total, send_fn send, void *ud, cm_script *sc,
                     int (*check)(const redisReply *))
{
    int sent = 0, got = 0;
    for (int j = 0; j < DEPTH && sent < total; j++)
        if (send(c, ud, sent++) != 0)
            return -1;
    if (flush(c) != 0)
        return -1;
    while (got < total) {
        for (int j = 0; j < DEPTH && sent < total; j++)
            if (send(c, ud, sent++) != 0)
                return -1;
        if (flush(c) != 0)
            return -1;
        int n = total - got < DEPTH ? total - got : DEPTH;
        if (drain(c, n, sc, check) != 0)
            return -1;
        got += n;
    }
    return 0;
}

static int check_append(const redisReply *r)
{
    es_append_res res;
    char err[128];
    return es_append_parse(r, 1, &res, err, sizeof err) == ES_OK && !res.duplicate && res.pos[0].seq == 1 ? 0 : -1;
}

static int flushall(redisContext *c)
{
    char err[256];
    redisReply *r = redisCommand(c, "FLUSHALL");
    if (cm_reply_failed(c, r, err, sizeof err)) {
        fprintf(stderr, "bench store: %s\n", err);
        return -1;
    }
    freeReplyObject(r);
    return 0;
}

/* The data of a typical CheckoutInitiated (two lines), new reference. */
static json_t *initiated_data(int i)
{
    char client[32];
    snprintf(client, sizeof client, "client-%d", i % 5000);
    return json_pack("{s:s, s:[{s:s, s:i, s:i}, {s:s, s:i, s:i}], s:i}", "client_id", client, "items", "product_id",
                     "sku-0042", "quantity", 2, "unit_price_cents", 1250, "product_id", "sku-0117", "quantity", 1,
                     "unit_price_cents", 4990, "total_cents", 7490);
}

/* ---- (a) appends -------------------------------------------------------- */

typedef struct append_ctx {
    int round;           /* checkouts co-<round>-<i> are new in every run */
    es_store *s;
    cm_script *sc;       /* the script run: the store's append or the floor */
    cm_argv a;           /* reused: the command is copied out when appended */
    json_t *data;
    const char *const *xv; /* raw XADD argv */
    const size_t *xl;
} append_ctx;

/* Store: append a CheckoutInitiated to checkout co-<i> (a new one). */
static int send_append(redisContext *c, void *ud, int i)
{
    append_ctx *x = ud;
    char id[32];
    snprintf(id, sizeof id, "co-%d-%d", x->round, i);
    es_new_event ev = {.type = "CheckoutInitiated", .data = x->data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "api", .expected_version = 0,
                         .events = &ev, .n = 1};
    cm_argv_reset(&x->a);
    es_append_keys(x->s, "checkout", id, &x->a);
    if (es_append_args(&req, &x->a) != ES_OK)
        return -1;
    cm_script_append(c, x->sc, 2, &x->a);
    return 0;
}

/* Batched: checkouts co-<round>-<i*BATCH ...> appended BATCH per script call. */
#define BATCH 16
static int send_append_batch(redisContext *c, void *ud, int i)
{
    append_ctx *x = ud;
    char ids[BATCH][32];
    es_new_event ev = {.type = "CheckoutInitiated", .data = x->data};
    es_append_req reqs[BATCH];
    for (int k = 0; k < BATCH; k++) {
        snprintf(ids[k], sizeof ids[k], "co-%d-%d", x->round, i * BATCH + k);
        reqs[k] = (es_append_req){.aggregate = "checkout", .aggregate_id = ids[k], .producer = "api",
                                  .expected_version = 0, .events = &ev, .n = 1};
    }
    cm_argv_reset(&x->a);
    int nkeys = 0;
    if (es_append_batch_args(x->s, reqs, BATCH, &x->a, &nkeys) != ES_OK)
        return -1;
    cm_script_append(c, x->sc, nkeys, &x->a);
    return 0;
}

static int check_append_batch(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != BATCH)
        return -1;
    for (size_t k = 0; k < r->elements; k++)
        if (check_append(r->element[k]) != 0)
            return -1;
    return 0;
}

/* Raw: the same payload bytes straight to a stream. */
static int send_xadd(redisContext *c, void *ud, int i)
{
    (void)i;
    append_ctx *x = ud;
    return redisAppendCommandArgv(c, 9, (const char **)x->xv, x->xl) == REDIS_OK ? 0 : -1;
}

static int bench_append(redisContext *c)
{
    char err[256];
    cm_script store_sc = {.src = es_lua_append}, floor_sc = {.src = bench_lua_dual_write},
              batch_sc = {.src = es_lua_append_batch};
    append_ctx x = {.data = initiated_data(7)};
    int rc = -1;
    x.s = es_store_new(c, APPEND_BUS, err, sizeof err);
    if (!x.s || cm_script_load(c, &store_sc, err, sizeof err) != 0 ||
        cm_script_load(c, &floor_sc, err, sizeof err) != 0 || cm_script_load(c, &batch_sc, err, sizeof err) != 0) {
        fprintf(stderr, "bench store: %s\n", err);
        goto done;
    }

    /* raw XADD of the same payload bytes (one encoded event, seq 1) */
    es_new_event ev = {.type = "CheckoutInitiated", .data = x.data};
    es_encoded enc = {0};
    es_encode(&ev, "checkout", "co-raw", NULL, "api", &enc);
    cm_buf payload = CM_BUF_INIT;
    cm_buf_put(&payload, enc.head.data, enc.head.len);
    cm_buf_putc(&payload, '1');
    cm_buf_put(&payload, enc.tail.data, enc.tail.len);
    const char *xv[] = {"XADD", RAW_BUS, "*", "type", ev.type, "payload", payload.data, "ts", enc.ts};
    size_t xl[9];
    for (int k = 0; k < 9; k++)
        xl[k] = strlen(xv[k]);
    xl[6] = payload.len;
    x.xv = xv;
    x.xl = xl;
    printf("  payload %zu bytes; %d appends to distinct checkouts, pipelined in batches of %d\n", payload.len,
           N_APPEND, DEPTH);

    /* ROUNDS alternating rounds of three sides: the store's append, the
     * floor script (the same writes without checks), raw XADD. The best wall
     * time of each side counts, and the server's CPU per event (Redis is the
     * bottleneck of every side, and its CPU time is what a busy shared
     * machine disturbs least) */
    enum { STORE, FLOOR, RAW, BATCHED, SIDES };
    cm_script *scs[SIDES] = {&store_sc, &floor_sc, NULL, &batch_sc};
    const char *cmds[SIDES] = {"evalsha", "evalsha", "xadd", "evalsha"};
    double wall[SIDES] = {1e9, 1e9, 1e9, 1e9}, cpu[SIDES] = {1e9, 1e9, 1e9, 1e9}, us[SIDES] = {0};
    int prc = 0;
    for (int round = 0; round < ROUNDS && prc == 0; round++) {
        for (int side = 0; side < SIDES && prc == 0; side++) {
            x.round = round * SIDES + side;
            x.sc = scs[side];
            if (flushall(c) != 0) { /* every side starts from an empty Redis */
                prc = -1;
                break;
            }
            reset_stats(c);
            double cpu0 = server_cpu_s(c);
            int64_t t0 = cm_mono_ns();
            prc = side == RAW       ? pipelined(c, N_APPEND, send_xadd, &x, NULL, NULL)
                  : side == BATCHED ? pipelined(c, N_APPEND / BATCH, send_append_batch, &x, x.sc, check_append_batch)
                                    : pipelined(c, N_APPEND, send_append, &x, x.sc, check_append);
            double t = secs_since(t0), dc = server_cpu_s(c) - cpu0;
            wall[side] = t < wall[side] ? t : wall[side];
            cpu[side] = dc < cpu[side] ? dc : cpu[side];
            us[side] = server_usec_per_call(c, cmds[side]);
            redisReply *r = redisCommand(c, "XLEN %s", side == RAW ? RAW_BUS : APPEND_BUS);
            long long stored = cm_reply_ll(r, -1);
            freeReplyObject(r);
            if (prc == 0 && stored != N_APPEND) {
                fprintf(stderr, "bench store: %lld events on the bus, expected %d\n", stored, N_APPEND);
                prc = -1;
            }
        }
    }
    cm_buf_free(&payload);
    es_encoded_free(&enc);
    if (prc != 0)
        goto done;
    printf("  redis CPU per event: append %.2f us (script %.2f), floor script %.2f us (%.2f), raw XADD %.2f us "
           "(command %.2f), batched append of %d %.2f us (script %.2f per call)\n",
           cpu[STORE] * 1e6 / N_APPEND, us[STORE], cpu[FLOOR] * 1e6 / N_APPEND, us[FLOOR],
           cpu[RAW] * 1e6 / N_APPEND, us[RAW], BATCH, cpu[BATCHED] * 1e6 / N_APPEND, us[BATCHED]);

    /* store, one call at a time */
    if (flushall(c) != 0)
        goto done;
    int64_t t0 = cm_mono_ns();
    for (int i = 0; i < N_SYNC; i++) {
        char id[32];
        snprintf(id, sizeof id, "sync-%d", i);
        es_new_event e1 = {.type = "CheckoutInitiated", .data = x.data};
        es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "api", .expected_version = 0,
                             .events = &e1, .n = 1};
        es_append_res res;
        if (es_append(x.s, &req, &res) != ES_OK) {
            fprintf(stderr, "bench store: es_append: %s\n", es_store_errstr(x.s));
            goto done;
        }
    }
    double t_sync = secs_since(t0);
    figure("append_per_s", N_APPEND / wall[STORE], "ev/s");
    figure("raw_xadd_per_s", N_APPEND / wall[RAW], "ev/s");
    figure("append_vs_raw", wall[RAW] / wall[STORE], "ratio");
    figure("append_vs_raw_cpu", cpu[RAW] / cpu[STORE], "ratio");
    figure("floor_per_s", N_APPEND / wall[FLOOR], "ev/s");
    figure("floor_vs_raw_cpu", cpu[RAW] / cpu[FLOOR], "ratio");
    figure("append_vs_floor_cpu", cpu[FLOOR] / cpu[STORE], "ratio");
    figure("append_sync_per_s", N_SYNC / t_sync, "ev/s");
    figure("append_batch_per_s", N_APPEND / wall[BATCHED], "ev/s");
    figure("append_batch_vs_raw", wall[RAW] / wall[BATCHED], "ratio");
    figure("append_batch_vs_raw_cpu", cpu[RAW] / cpu[BATCHED], "ratio");
    rc = 0;
done:
    cm_argv_free(&x.a);
    json_decref(x.data);
    es_store_free(x.s);
    return rc;
}

/* ---- (b) replay ---------------------------------------------------------- */

/* The four saga shapes of DESIGN.md and how each must fold. */
static const struct shape {
    int n;
    const char *types[5];
    const char *status, *reason;
} shapes[] = {
    {4, {"CheckoutInitiated", "StockReserved", "OrderCreated", "CheckoutSucceeded"}, CM_STATUS_SUCCEEDED, ""},
    {3, {"CheckoutInitiated", "StockReservationFailed", "CheckoutFailed"}, CM_STATUS_FAILED,
     CM_REASON_INSUFFICIENT_STOCK},
    {5, {"CheckoutInitiated", "StockReserved", "OrderCreationFailed", "StockReleased", "CheckoutFailed"},
     CM_STATUS_FAILED, CM_REASON_ORDER_LIMIT},
    {5, {"CheckoutInitiated", "StockReserved", "CheckoutTimedOut", "StockReleased", "CheckoutFailed"},
     CM_STATUS_FAILED, CM_REASON_TIMED_OUT},
};
enum { SHAPES = 4 };

/* The data of event k of shape sh (new reference). */
static json_t *shape_data(int sh, int k)
{
    const char *t = shapes[sh].types[k];
    const char *order = "ord-0190f8a2";
    if (k == 0)
        return initiated_data(sh);
    if (!strcmp(t, "StockReserved") || !strcmp(t, "StockReleased"))
        return json_pack("{s:[{s:s, s:i}]}", "items", "product_id", "sku-0042", "quantity", 2);
    if (!strcmp(t, "OrderCreated"))
        return json_pack("{s:s, s:i}", "order_id", order, "total_cents", 7490);
    if (!strcmp(t, "CheckoutSucceeded"))
        return json_pack("{s:s}", "order_id", order);
    if (!strcmp(t, "CheckoutTimedOut"))
        return json_pack("{s:i}", "after_ms", 30000);
    if (!strcmp(t, "StockReservationFailed"))
        return json_pack("{s:s, s:s}", "reason", shapes[sh].reason, "product_id", "sku-0042");
    return json_pack("{s:s}", "reason", shapes[sh].reason);
}

typedef struct expect {
    long long checkouts;            /* distinct aggregates written */
    long long terminal[SHAPES];     /* checkouts of each shape written in full */
} expect;

/* Fills REPLAY_BUS with N_REPLAY envelopes: chunks of CHUNK checkouts, the
 * k-th events of a chunk's checkouts one after the other. */
static int fill_replay_bus(redisContext *c, expect *ex)
{
    memset(ex, 0, sizeof *ex);
    char prev[CHUNK][37];
    char id[32];
    es_encoded enc = {0};
    cm_buf payload = CM_BUF_INIT;
    long long written = 0;
    int pending = 0, rc = 0;
    json_t *datas[SHAPES][5] = {{NULL}};
    for (int sh = 0; sh < SHAPES; sh++)
        for (int k = 0; k < shapes[sh].n; k++)
            datas[sh][k] = shape_data(sh, k);
    for (int base = 0; written < N_REPLAY && rc == 0; base += CHUNK) {
        for (int k = 0; k < 5 && written < N_REPLAY && rc == 0; k++) {
            for (int j = 0; j < CHUNK && written < N_REPLAY; j++) {
                int i = base + j, sh = i % SHAPES;
                if (k >= shapes[sh].n)
                    continue;
                snprintf(id, sizeof id, "co-%d", i);
                es_new_event ev = {.type = shapes[sh].types[k], .causation_id = k ? prev[j] : NULL,
                                   .data = datas[sh][k]};
                es_encode(&ev, "checkout", id, NULL, "bench", &enc);
                cm_buf_reset(&payload);
                cm_buf_put(&payload, enc.head.data, enc.head.len);
                cm_buf_printf(&payload, "%d", k + 1);
                cm_buf_put(&payload, enc.tail.data, enc.tail.len);
                memcpy(prev[j], enc.event_id, sizeof prev[j]);
                const char *v[] = {"XADD", REPLAY_BUS, "*", "type", ev.type, "payload", payload.data, "ts", enc.ts};
                size_t l[9];
                for (int x = 0; x < 9; x++)
                    l[x] = strlen(v[x]);
                l[6] = payload.len;
                redisAppendCommandArgv(c, 9, v, l);
                written++;
                if (k == 0)
                    ex->checkouts++;
                if (k == shapes[sh].n - 1)
                    ex->terminal[sh]++;
                if (++pending == GEN_DEPTH) {
                    rc = drain(c, pending, NULL, NULL);
                    pending = 0;
                    if (rc)
                        break;
                }
            }
        }
    }
    if (rc == 0 && pending)
        rc = drain(c, pending, NULL, NULL);
    cm_buf_free(&payload);
    es_encoded_free(&enc);
    for (int sh = 0; sh < SHAPES; sh++)
        for (int k = 0; k < 5; k++)
            json_decref(datas[sh][k]);
    return rc;
}

/* An open-addressing table aggregate_id -> folded state: small slots that
 * probe within a cache line or two, the states in one array in arrival order. */
typedef struct slot {
    uint64_t hash;
    char *key;               /* NULL: empty */
    es_checkout_state *st;   /* into table.states */
} slot;

typedef struct table {
    slot *v;
    size_t cap, n;           /* cap is a power of two, kept at least twice n */
    es_checkout_state *states;
    size_t states_cap;
} table;

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static es_checkout_state *table_get(table *t, const char *key)
{
    uint64_t h = hash(key);
    for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->v[i].key) {
            if (t->n == t->states_cap) { /* more checkouts than the size hint */
                fprintf(stderr, "bench store: more checkouts than expected\n");
                exit(1);
            }
            t->v[i].hash = h;
            t->v[i].key = cm_xstrdup(key);
            t->v[i].st = &t->states[t->n++];
            es_checkout_init(t->v[i].st);
            return t->v[i].st;
        }
        if (t->v[i].hash == h && !strcmp(t->v[i].key, key))
            return t->v[i].st;
    }
}

/* An empty table sized for n keys (a replayer knows roughly how many
 * checkouts a bus holds: XLEN over the events per checkout). */
static void table_init(table *t, size_t n)
{
    t->cap = 1024;
    while (t->cap < 2 * n)
        t->cap *= 2;
    t->v = cm_xcalloc(t->cap, sizeof *t->v);
    t->n = 0;
    t->states_cap = n;
    t->states = cm_xmalloc((n ? n : 1) * sizeof *t->states);
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->v[i].key);
    free(t->v);
    free(t->states);
}

/* Checks the folded states against what was written. */
static int verify(const table *t, const expect *ex, long long folded)
{
    long long done[SHAPES] = {0}, versions = 0, bad = 0;
    for (size_t i = 0; i < t->cap; i++) {
        const slot *sl = &t->v[i];
        if (!sl->key)
            continue;
        const es_checkout_state *st = sl->st;
        versions += st->version;
        int sh = atoi(sl->key + 3) % SHAPES; /* "co-<i>" */
        if (!st->terminal)
            continue;
        if (strcmp(st->status, shapes[sh].status) || strcmp(st->reason, shapes[sh].reason) ||
            st->terminal_events != 1 || st->reserved || st->version != shapes[sh].n)
            bad++;
        else
            done[sh]++;
    }
    int ok = folded == N_REPLAY && versions == N_REPLAY && (long long)t->n == ex->checkouts && bad == 0;
    for (int sh = 0; sh < SHAPES; sh++)
        ok = ok && done[sh] == ex->terminal[sh];
    if (!ok) {
        fprintf(stderr, "bench store: replay result wrong: %lld events folded, versions sum %lld, %zu checkouts "
                        "(expected %lld), %lld bad states\n",
                folded, versions, t->n, ex->checkouts, bad);
        return -1;
    }
    static bool said;
    if (!said)
        printf("  replayed %lld checkouts: %lld succeeded, %lld stock failures, %lld order failures, %lld timed out\n",
               ex->checkouts, done[0], done[1], done[2], done[3]);
    said = true;
    return 0;
}

/* Replays REPLAY_BUS into t: XRANGE pages of PAGE, the request for the next
 * page sent (its start is the last id of this one) before this page is
 * decoded (es_event_from_entry) and folded (es_checkout_apply), so Redis
 * serves while the client decodes. With t NULL, only counts the entries
 * (the raw scan). Returns the events folded (or counted), or -1. */
static long long replay_pipelined(redisContext *c, table *t)
{
    long long folded = 0;
    char err[256];
    redisAppendCommand(c, "XRANGE %s - + COUNT %d", REPLAY_BUS, PAGE);
    for (;;) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "bench store: XRANGE: %s\n", r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
            freeReplyObject(r);
            return -1;
        }
        size_t n = r->elements;
        const redisReply *last = n ? r->element[n - 1] : NULL;
        bool more = n == PAGE && last->type == REDIS_REPLY_ARRAY && last->elements == 2 &&
                    last->element[0]->type == REDIS_REPLY_STRING;
        if (more) {
            redisAppendCommand(c, "XRANGE %s (%s + COUNT %d", REPLAY_BUS, last->element[0]->str, PAGE);
            if (flush(c) != 0) {
                freeReplyObject(r);
                return -1;
            }
        }
        for (size_t i = 0; i < n && !t; i++)
            folded++; /* raw scan: nothing decoded */
        for (size_t i = 0; i < n && t; i++) {
            es_event *ev;
            if (es_event_from_entry(r->element[i], &ev, err, sizeof err) != 0)
                continue; /* a foreign entry: verify() will notice the count */
            es_checkout_apply(table_get(t, ev->aggregate_id), ev);
            es_event_free(ev);
            folded++;
        }
        freeReplyObject(r);
        if (!more)
            return folded;
    }
}

/* The same through the library's page call (one synchronous XRANGE per
 * page, as the API's stream route reads). Returns the events folded, or -1. */
static long long replay_pages(es_store *s, table *t)
{
    long long folded = 0;
    char *after = NULL;
    do {
        es_event **evs;
        size_t n;
        char *next;
        if (es_stream_page(s, REPLAY_BUS, after, PAGE, &evs, &n, &next) != ES_OK) {
            fprintf(stderr, "bench store: es_stream_page: %s\n", es_store_errstr(s));
            free(after);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            if (!evs[i]->aggregate_id)
                continue;
            es_checkout_apply(table_get(t, evs[i]->aggregate_id), evs[i]);
            folded++;
        }
        es_events_free(evs, n);
        free(after);
        after = next;
    } while (after);
    return folded;
}

static int bench_replay(redisContext *c)
{
    char err[256];
    expect ex;
    int64_t t0 = cm_mono_ns();
    if (fill_replay_bus(c, &ex) != 0)
        return -1;
    printf("  wrote %d envelopes of %lld checkouts in %.1f s (raw pipelined XADD)\n", N_REPLAY, ex.checkouts,
           secs_since(t0));
    fflush(stdout);
    es_store *s = es_store_new(c, REPLAY_BUS, err, sizeof err);
    if (!s) {
        fprintf(stderr, "bench store: %s\n", err);
        return -1;
    }
    int rc = -1;
    table t = {0}, t2 = {0};

    /* read + decode + fold, and the raw scan, alternating; best of each */
    double t_replay = 1e9, t_raw = 1e9, cpu_client = 1e9, cpu_server = 1e9;
    for (int round = 0; round < ROUNDS; round++) {
        table_free(&t);
        table_init(&t, (size_t)ex.checkouts);
        double c0 = self_cpu_s(), s0 = server_cpu_s(c);
        t0 = cm_mono_ns();
        long long folded = replay_pipelined(c, &t);
        double dt = secs_since(t0);
        double dc = self_cpu_s() - c0, ds = server_cpu_s(c) - s0;
        if (folded < 0 || verify(&t, &ex, folded) != 0)
            goto done;
        t_replay = dt < t_replay ? dt : t_replay;
        cpu_client = dc < cpu_client ? dc : cpu_client;
        cpu_server = ds < cpu_server ? ds : cpu_server;
        t0 = cm_mono_ns();
        long long scanned = replay_pipelined(c, NULL);
        dt = secs_since(t0);
        if (scanned != N_REPLAY) {
            fprintf(stderr, "bench store: raw scan saw %lld entries\n", scanned);
            goto done;
        }
        t_raw = dt < t_raw ? dt : t_raw;
    }
    /* the library's synchronous page call, once */
    table_init(&t2, (size_t)ex.checkouts);
    t0 = cm_mono_ns();
    long long folded = replay_pages(s, &t2);
    double t_pages = secs_since(t0);
    if (folded < 0 || verify(&t2, &ex, folded) != 0)
        goto done;
    printf("  replay CPU: this process %.2f s (read, decode, fold), redis-server %.2f s; they overlap\n",
           cpu_client, cpu_server);
    figure("replay_1m_s", t_replay, "s");
    figure("replay_1m_cpu_s", cpu_client > cpu_server ? cpu_client : cpu_server, "s");
    figure("replay_page_api_1m_s", t_pages, "s");
    figure("raw_scan_1m_s", t_raw, "s");
    figure("replay_vs_raw", t_replay / t_raw, "ratio");
    rc = 0;
done:
    table_free(&t);
    table_free(&t2);
    es_store_free(s);
    return rc;
}

int main(void)
{
    tf_redis r;
    if (tf_redis_start(&r, "appendonly no\nsave \"\"\n") != 0) {
        fprintf(stderr, "bench store: cannot start redis-server\n");
        return 1;
    }
    redisContext *c = tf_redis_connect(&r);
    redisReply *v = redisCommand(c, "INFO server");
    const char *ver = v && v->type == REDIS_REPLY_STRING ? strstr(v->str, "redis_version:") : NULL;
    printf("  private redis-server %.*s on 127.0.0.1:%d, AOF and RDB off (pure speed)\n",
           ver ? (int)strcspn(ver + 14, "\r\n") : 1, ver ? ver + 14 : "?", r.port);
    freeReplyObject(v);
    const char *only = getenv("BENCH_STORE_ONLY"); /* "append" or "replay": one part */
    int rc = 0;
    if (!only || !strcmp(only, "append"))
        rc = bench_append(c);
    if (rc == 0)
        rc = flushall(c);
    if (rc == 0 && (!only || !strcmp(only, "replay")))
        rc = bench_replay(c);
    redisFree(c);
    tf_redis_stop(&r);
    return rc == 0 ? 0 : 1;
}
