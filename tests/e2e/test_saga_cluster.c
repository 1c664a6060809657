/* test_saga_cluster.c - the whole platform on a real Redis Cluster (3
 * masters + 3 replicas, tests/support/cluster_fixture.h): chorus-api and the
 * six `chorus-worker <name>` processes on redis-cluster:// with PARTITIONS=8
 * and REDIS_WAIT_REPLICAS=1 (the API's 202 and the workers' acks wait for a
 * replica), checkouts over real HTTP.
 *
 * Which test proves which guarantee (DESIGN.md "The saga", issue 11 part 8):
 *   outcomes_*        the saga's outcomes as on one node (tests/e2e/test_saga.c):
 *                     success (lines of two products, each in its own slot,
 *                     sold; one order with the total), insufficient stock
 *                     (no StockReleased: the held line undone, stock
 *                     untouched), order limit (StockReleased + CheckoutFailed,
 *                     stock given back); checkouts on every partition; each
 *                     read model (GET /api/checkouts/{id}) SUCCEEDED/FAILED
 *                     with its reason; an Idempotency-Key replay answers the
 *                     same checkout; copies of bus entries delivered after
 *                     the sagas ended change nothing.
 *   sigkilled_*       order creation SIGKILLed mid-batch (effects partly
 *                     applied, its entries pending on several partitions) and
 *                     restarted under its name: every saga ends once, one
 *                     order each; then every saga group re-reads every
 *                     partition's bus from the start: nothing changes.
 *   line_effects_*    REDIS_WAIT_REPLICAS=1 covers a step's writes on other
 *                     masters than its checkout's: with the replica of a
 *                     product's master frozen, the reservation's hold there
 *                     is not confirmed, so no StockReserved is appended (the
 *                     step is retried); thawed, the saga succeeds. Otherwise
 *                     that master failing over to its replica would lose the
 *                     hold (or a sale) of a checkout whose saga went on.
 *   load_with_*       a steady stream of checkouts over HTTP (Idempotency-Keys,
 *                     503s retried with the same key) while (a) a partition's
 *                     slot and a product's slot migrate between masters
 *                     (IMPORTING/MIGRATING, MIGRATE of every key, SETSLOT
 *                     NODE), (b) a replica takes over with
 *                     CLUSTER FAILOVER, (c) a master is SIGKILLed and its
 *                     replica promoted (the old master then rejoins as a
 *                     replica). After each: every 202-accepted checkout ends
 *                     with exactly one terminal event, the one its lines
 *                     allow (no checkout lost, none timed out), its read
 *                     model says so, an order exactly for each success; for
 *                     every product available + reserved + sold == stocked,
 *                     reserved == 0 and sold == what the successes bought;
 *                     every group has read and acked every partition (nothing
 *                     pending), nothing dead-lettered, every worker and the
 *                     API exit 0 on SIGTERM.
 *
 * Each test has its own cluster (about 2 s) started in the test's process,
 * so a fault leaves nothing behind for the next; --jobs=1. Stock is read
 * from each product hash's master (cm_cluster), histories through the API's
 * replay route.
 *
 * CHORUS_API_BIN and CHORUS_WORKER_BIN (meson env) name the binaries. */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cluster.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/store.h"
#include "tests/e2e/api_env.h"
#include "tests/e2e/cluster_cmd.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"

#define NPART 8
#define ORDER_LIMIT 10000   /* cents; every product costs 100 */
#define ADMIN "Content-Type: application/json\r\nAuthorization: Bearer " AE_TOKEN "\r\n"

enum { MAX_WORKERS = 8, MAX_ENV = 24, MAX_LOAD = 1500 };

typedef struct worker {
    char kind[32];              /* stock-reservation, ... */
    char env[4][96];            /* extra "K=V" ("" unused) */
    char log[400];
    pid_t pid;                  /* 0 when not running */
} worker;

static tf_cluster CL;
static cm_cluster *CC;          /* the test's own client */
static api_env API;
static char DIR_[64];
static worker W[MAX_WORKERS];
static int NW;

/* ---- processes ----------------------------------------------------------- */

static void dump_all(void)
{
    for (int i = 0; i < NW; i++)
        tf_dump_file(W[i].log, W[i].kind);
    tf_dump_file(API.log, "chorus-api");
}

#define check(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            dump_all();                                                                                      \
            cr_assert_fail(__VA_ARGS__);                                                                     \
        }                                                                                                    \
    } while (0)

static void spawn(worker *w)
{
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert(bin && *bin, "CHORUS_WORKER_BIN is not set (run through meson test)");
    char url[400], consumer[64], limit[48];
    snprintf(url, sizeof url, "REDIS_URL=%s", CL.url);
    snprintf(consumer, sizeof consumer, "CONSUMER_NAME=%s-%d", w->kind, (int)(w - W));
    snprintf(limit, sizeof limit, "ORDER_LIMIT_CENTS=%d", ORDER_LIMIT);
    const char *base[] = {url, consumer, limit, "PARTITIONS=8", "METRICS_PORT=0", "CLAIM_IDLE_MS=1000",
                          "BLOCK_MS=100", "RETRY_BASE_MS=50", "LOG_LEVEL=warn", "REDIS_WAIT_REPLICAS=1",
                          "REDIS_WAIT_TIMEOUT_MS=500", "SAGA_TIMEOUT_MS=300000", NULL};
    const char *env[MAX_ENV];
    int n = 0;
    for (int k = 0; k < 4; k++)
        if (w->env[k][0])
            env[n++] = w->env[k];
    int nextra = n;
    for (int b = 0; base[b]; b++) {
        size_t kl = strcspn(base[b], "=") + 1;
        bool overridden = false;
        for (int k = 0; k < nextra; k++)
            overridden = overridden || !strncmp(env[k], base[b], kl);
        if (!overridden)
            env[n++] = base[b];
    }
    env[n] = NULL;
    const char *argv[] = {bin, w->kind, NULL};
    w->pid = tf_spawn(argv, env, w->log);
    cr_assert_gt(w->pid, 0, "cannot start %s %s: %s", bin, w->kind, strerror(errno));
}

/* Starts `chorus-worker kind` with up to 4 extra settings (NULL-ended). */
static worker *start_worker(const char *kind, ...)
{
    cr_assert_lt(NW, MAX_WORKERS);
    worker *w = &W[NW++];
    memset(w, 0, sizeof *w);
    snprintf(w->kind, sizeof w->kind, "%s", kind);
    snprintf(w->log, sizeof w->log, "%s/%s-%d.log", DIR_, kind, NW - 1);
    va_list ap;
    va_start(ap, kind);
    for (int k = 0; k < 4; k++) {
        const char *kv = va_arg(ap, const char *);
        if (!kv)
            break;
        snprintf(w->env[k], sizeof w->env[k], "%s", kv);
    }
    va_end(ap);
    spawn(w);
    return w;
}

static void start_all_workers(void)
{
    for (int k = 0; k < CM_W_COUNT; k++)
        start_worker(cm_worker_names[k], NULL);
}

static void kill9(worker *w)
{
    cr_assert_gt(w->pid, 0, "%s is not running", w->kind);
    cr_assert_eq(tf_kill(w->pid, SIGKILL), 0);
    check(tf_wait_exit(w->pid, 5000, NULL) == 0, "%s did not die", w->kind);
    w->pid = 0;
}

/* SIGTERMs every running worker; returns how many did not exit 0 (their
 * logs dumped): drained, acked, no sanitizer report. */
static int stop_workers(void)
{
    int bad = 0;
    for (int i = 0; i < NW; i++)
        if (W[i].pid > 0)
            tf_kill(W[i].pid, SIGTERM);
    for (int i = 0; i < NW; i++) {
        if (W[i].pid <= 0)
            continue;
        int st = 0;
        if (tf_wait_exit(W[i].pid, 20000, &st) != 0) {
            tf_kill(W[i].pid, SIGKILL);
            tf_wait_exit(W[i].pid, 5000, NULL);
            st = -1;
        }
        W[i].pid = 0;
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad++;
            fprintf(stderr, "%s did not exit cleanly (status 0x%x)\n", W[i].kind, st);
            tf_dump_file(W[i].log, W[i].kind);
        }
    }
    return bad;
}

/* The cluster, the test's client and chorus-api on it (both waiting for a
 * replica); no workers yet. */
static void start_platform(void)
{
    signal(SIGPIPE, SIG_IGN);
    NW = 0;
    snprintf(DIR_, sizeof DIR_, "/tmp/chorus-sgc-XXXXXX");
    cr_assert_not_null(mkdtemp(DIR_));
    cr_assert_eq(tf_cluster_start(&CL, "appendonly yes\n"), 0, "the cluster did not start");
    cr_assert_eq(cm_partitions_set(NPART), 0);
    char err[256] = "";
    CC = cm_cluster_open(CL.url, 5000, err, sizeof err);
    cr_assert_not_null(CC, "cm_cluster_open: %s", err);
    cm_cluster_set_retry(CC, 20000);   /* rides out a failover */
    memset(&API, 0, sizeof API);
    snprintf(API.token, sizeof API.token, "%s", AE_TOKEN);
    snprintf(API.log, sizeof API.log, "%s/api.log", DIR_);
    snprintf(API.extra_env[0], sizeof API.extra_env[0], "REDIS_URL=%s", CL.url);
    snprintf(API.extra_env[1], sizeof API.extra_env[1], "PARTITIONS=%d", NPART);
    snprintf(API.extra_env[2], sizeof API.extra_env[2], "REDIS_WAIT_REPLICAS=1");
    snprintf(API.extra_env[3], sizeof API.extra_env[3], "REDIS_WAIT_TIMEOUT_MS=500");
    ae_start_api(&API);
}

static void thaw(void);

static void teardown(void)
{
    thaw();
    for (int i = 0; i < NW; i++) {
        if (W[i].pid > 0) {
            tf_kill(W[i].pid, SIGKILL);
            tf_wait_exit(W[i].pid, 5000, NULL);
            W[i].pid = 0;
        }
    }
    ae_teardown(&API);
    cm_cluster_free(CC);
    CC = NULL;
    tf_cluster_stop(&CL);
    for (int i = 0; i < NW; i++)
        unlink(W[i].log);
    NW = 0;
    if (DIR_[0]) {
        unlink(API.log);
        rmdir(DIR_);
    }
    DIR_[0] = '\0';
}

TestSuite(saga_cluster, .fini = teardown, .timeout = 150);

/* ---- Redis, through the slot-routing client ------------------------------ */

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

/* GET of a string key (caller frees; NULL when absent). */
static char *cmd_str(const char *key)
{
    redisReply *r = tc_cmd(CC, key, "GET %s", key);
    char *s = cm_reply_is_str(r) ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return s;
}

static void stock(const char *pid, long long *av, long long *rs, long long *sold)
{
    cm_key k = cm_key_product(pid);
    redisReply *r = tc_cmd(CC, k.s, "HMGET %s available reserved sold", k.s);
    cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 3, "HMGET %s", k.s);
    *av = cm_reply_ll(r->element[0], -999999);
    *rs = cm_reply_ll(r->element[1], -999999);
    *sold = cm_reply_ll(r->element[2], -999999);
    freeReplyObject(r);
}

static long long order_exists(const char *checkout)
{
    char order_id[CM_UUID_LEN + 1];
    cm_uuid_derive(checkout, "order", order_id);
    cm_key k = cm_key_order(checkout, order_id);
    return tc_ll(CC, k.s, "EXISTS %s", k.s);
}

static long long dlq_total(void)
{
    long long n = 0;
    for (int p = 0; p < NPART; p++)
        for (int g = 0; g < CM_W_COUNT; g++) {
            cm_key d = cm_key_dlq(cm_key_bus(AE_BUS, p).s, cm_group_names[g]);
            n += tc_ll(CC, d.s, "XLEN %s", d.s);
        }
    return n;
}

static long long bus_len_total(void)
{
    long long n = 0;
    for (int p = 0; p < NPART; p++) {
        cm_key b = cm_key_bus(AE_BUS, p);
        n += tc_ll(CC, b.s, "XLEN %s", b.s);
    }
    return n;
}

/* Pending entries of group over every partition's bus (no group: 0). */
static long long pending_of(const char *group)
{
    long long n = 0;
    for (int p = 0; p < NPART; p++) {
        cm_key b = cm_key_bus(AE_BUS, p);
        redisReply *r = cm_cluster_command(CC, slot_of(b.s), "XPENDING %s %s", b.s, group);
        cr_assert_not_null(r, "%s", cm_cluster_errstr(CC));
        if (r->type == REDIS_REPLY_ARRAY)
            n += cm_reply_ll(cm_reply_elem(r, 0), 0);
        freeReplyObject(r);
    }
    return n;
}

/* True if a history element "event_id\nbus_id\ntype\n..." is terminal. */
static bool terminal_element(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_STRING)
        return false;
    const char *a = strchr(r->str, '\n');
    const char *b = a ? strchr(a + 1, '\n') : NULL;
    return b && (!strncmp(b + 1, "CheckoutSucceeded\n", 18) || !strncmp(b + 1, "CheckoutFailed\n", 15));
}

typedef struct idlist {
    char (*ids)[64];
    int n;
} idlist;

/* True when every listed history ends with a terminal event (one pipeline;
 * false while the cluster cannot answer). */
static bool all_terminal(void *ud)
{
    const idlist *l = ud;
    cm_pipe *p = cm_pipe_new(CC);
    for (int i = 0; i < l->n; i++) {
        cm_key h = cm_key_history("checkout", l->ids[i]);
        cm_pipe_command(p, slot_of(h.s), "LINDEX %s -1", h.s);
    }
    bool all = cm_pipe_exec(p) == 0;
    for (int i = 0; all && i < l->n; i++) {
        redisReply *r = cm_pipe_take(p, (size_t)i);
        all = terminal_element(r);
        if (r)
            freeReplyObject(r);
    }
    cm_pipe_free(p);
    return all;
}

static void wait_terminal(char (*ids)[64], int n, int timeout_ms)
{
    idlist l = {ids, n};
    check(tf_wait_until(all_terminal, &l, timeout_ms), "%d sagas did not all end within %d ms", n, timeout_ms);
}

/* True when every group of every partition's bus exists, has delivered the
 * last entry and has nothing pending. */
static bool quiet(void *ud)
{
    (void)ud;
    for (int p = 0; p < NPART; p++) {
        cm_key b = cm_key_bus(AE_BUS, p);
        redisReply *last = cm_cluster_command(CC, slot_of(b.s), "XREVRANGE %s + - COUNT 1", b.s);
        redisReply *g = cm_cluster_command(CC, slot_of(b.s), "XINFO GROUPS %s", b.s);
        bool ok = last && g && last->type == REDIS_REPLY_ARRAY && g->type == REDIS_REPLY_ARRAY &&
                  g->elements == CM_W_COUNT;
        const char *last_id = ok && last->elements ? last->element[0]->element[0]->str : "0-0";
        for (size_t i = 0; ok && i < g->elements; i++) {
            const redisReply *e = g->element[i];
            long long pending = -1;
            const char *delivered = "";
            for (size_t j = 0; j + 1 < e->elements; j += 2) {
                if (!strcmp(e->element[j]->str, "pending"))
                    pending = cm_reply_ll(e->element[j + 1], -1);
                else if (!strcmp(e->element[j]->str, "last-delivered-id") && cm_reply_is_str(e->element[j + 1]))
                    delivered = e->element[j + 1]->str;
            }
            ok = pending == 0 && !strcmp(delivered, last_id);
        }
        if (last)
            freeReplyObject(last);
        if (g)
            freeReplyObject(g);
        if (!ok)
            return false;
    }
    return true;
}

static void wait_quiet(int timeout_ms)
{
    check(tf_wait_until(quiet, NULL, timeout_ms), "the consumer groups did not read and ack everything");
}

/* ---- HTTP ---------------------------------------------------------------- */

static void put_product(const char *id, long long available)
{
    char path[96], body[160];
    snprintf(path, sizeof path, "/api/products/%s", id);
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"price_cents\":100,\"available\":%lld}", id, available);
    tf_http_resp r;
    ae_req(&API, "PUT", path, ADMIN, body, &r);
    cr_assert_eq(r.status, 200, "PUT %s: %d %s", path, r.status, r.body);
    tf_http_resp_free(&r);
}

/* POSTs a checkout (items: a JSON array) with key; returns the status and
 * copies a 202's checkout id into id (status 0: no answer). Thread-safe, no
 * assertion. */
static int post_checkout(const char *client, const char *items, const char *key, char id[64])
{
    char body[1024], headers[256];
    snprintf(body, sizeof body, "{\"client_id\":\"%s\",\"items\":%s}", client, items);
    snprintf(headers, sizeof headers, "Content-Type: application/json\r\nIdempotency-Key: %s\r\n", key);
    tf_http_resp r = {0};
    int st = tf_http_request(API.port, "POST", "/api/checkouts", headers, body, &r) == 0 ? r.status : 0;
    if (st == 202) {
        json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
        json_t *v = json_object_get(j, "checkout_id");
        if (json_is_string(v) && strlen(json_string_value(v)) < 64)
            snprintf(id, 64, "%s", json_string_value(v));
        else
            st = -202;   /* a 202 without a checkout id */
        json_decref(j);
    }
    tf_http_resp_free(&r);
    return st;
}

/* POSTs until 202 (503 or no answer: again with the same key). */
static void post_accepted(const char *client, const char *items, const char *key, char id[64])
{
    long long until = tf_now_ms() + 20000;
    int st;
    while ((st = post_checkout(client, items, key, id)) != 202 && (st == 503 || st == 0) && tf_now_ms() < until)
        tf_sleep_ms(50);
    check(st == 202, "POST checkout %s: status %d", key, st);
}

/* GETs path, asserts 200, returns the body parsed (caller decrefs). */
static json_t *get_json(const char *path)
{
    tf_http_resp r;
    ae_req(&API, "GET", path, NULL, NULL, &r);
    check(r.status == 200, "GET %s: %d %s", path, r.status, r.body);
    json_t *j = ae_json(&r);
    tf_http_resp_free(&r);
    return j;
}

/* The checkout's history (replay route) as types joined by ','. */
static void history_types(const char *id, char *out, size_t outlen)
{
    char path[128];
    snprintf(path, sizeof path, "/api/event-store/replay/checkout/%s", id);
    json_t *j = get_json(path);
    json_t *evs = json_object_get(j, "events");
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(evs); i++) {
        const char *t = json_string_value(json_object_get(json_array_get(evs, i), "type"));
        off += (size_t)snprintf(out + off, outlen - off, "%s%s", i ? "," : "", t ? t : "?");
        if (off >= outlen)
            break;
    }
    json_decref(j);
}

/* Data member key of the first event of type in the history, as compact
 * JSON text (strings unquoted) into out ("" when absent). */
static void history_data(const char *id, const char *type, const char *key, char *out, size_t outlen)
{
    char path[128];
    snprintf(path, sizeof path, "/api/event-store/replay/checkout/%s", id);
    json_t *j = get_json(path);
    json_t *evs = json_object_get(j, "events");
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(evs); i++) {
        json_t *e = json_array_get(evs, i);
        json_t *payload = json_object_get(e, "payload");
        if (strcmp(json_string_value(json_object_get(e, "type")) ?: "", type) != 0)
            continue;
        json_t *v = json_object_get(json_object_get(payload, "data"), key);
        if (json_is_string(v)) {
            snprintf(out, outlen, "%s", json_string_value(v));
        } else if (v) {
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            snprintf(out, outlen, "%s", s ? s : "");
            free(s);
        }
        break;
    }
    json_decref(j);
}

/* The read model's status (GET /api/checkouts/{id}) and reason ("" none). */
static void read_model(const char *id, char *status, char *reason)
{
    char path[128];
    snprintf(path, sizeof path, "/api/checkouts/%s", id);
    json_t *j = get_json(path);
    snprintf(status, 32, "%s", json_string_value(json_object_get(j, "status")) ?: "");
    snprintf(reason, 64, "%s", json_string_value(json_object_get(j, "reason")) ?: "");
    json_decref(j);
}

typedef struct rm_wait {
    char (*ids)[64];
    int n, done;   /* ids[0..done) are known terminal in their read model */
} rm_wait;

static bool read_models_terminal(void *ud)
{
    rm_wait *w = ud;
    while (w->done < w->n) {
        char st[32], reason[64];
        read_model(w->ids[w->done], st, reason);
        if (strcmp(st, CM_STATUS_SUCCEEDED) != 0 && strcmp(st, CM_STATUS_FAILED) != 0)
            return false;
        w->done++;
    }
    return true;
}

/* ---- the saga's outcomes ------------------------------------------------- */

#define SEQ_OK "CheckoutInitiated,StockReserved,OrderCreated,CheckoutSucceeded"
#define SEQ_RESV_FAILED "CheckoutInitiated,StockReservationFailed,CheckoutFailed"
#define SEQ_ORDER_FAILED "CheckoutInitiated,StockReserved,OrderCreationFailed,StockReleased,CheckoutFailed"

static void expect_types(const char *id, const char *want)
{
    char got[1024];
    history_types(id, got, sizeof got);
    cr_expect_str_eq(got, want, "history of %s", id);
}

static void expect_data(const char *id, const char *type, const char *key, const char *want)
{
    char got[512];
    history_data(id, type, key, got, sizeof got);
    cr_expect_str_eq(got, want, "%s %s.%s", id, type, key);
}

static void expect_stock(const char *pid, long long av, long long rs, long long sold)
{
    long long a, r, s;
    stock(pid, &a, &r, &s);
    cr_expect(a == av && r == rs && s == sold, "product %s: available %lld reserved %lld sold %lld, want %lld %lld %lld",
              pid, a, r, s, av, rs, sold);
}

static void expect_mark(const char *checkout, const char *pid, const char *want)
{
    cm_key k = cm_key_hold(pid, checkout);
    char *got = cmd_str(k.s);
    cr_expect(got && !strcmp(got, want), "line %s of %s: mark %s, want %s", pid, checkout, got ? got : "(none)",
              want);
    free(got);
}

static void expect_read_model(const char *id, const char *status, const char *reason)
{
    char st[32], why[64];
    read_model(id, st, why);
    cr_expect_str_eq(st, status, "read model of %s", id);
    cr_expect_str_eq(why, reason, "read model reason of %s", id);
}

/* XADDs a copy of the first entry of type on partition p's bus. */
static void copy_bus_entry(int p, const char *type, const char *id)
{
    cm_key b = cm_key_bus(AE_BUS, p);
    redisReply *r = tc_cmd(CC, b.s, "XRANGE %s - +", b.s);
    bool copied = false;
    for (size_t i = 0; i < r->elements && !copied; i++) {
        const redisReply *f = r->element[i]->element[1];
        bool match = false;
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            match = match || (!strcmp(f->element[j]->str, "type") && !strcmp(f->element[j + 1]->str, type));
        for (size_t j = 0; match && j + 1 < f->elements; j += 2)
            if (!strcmp(f->element[j]->str, "payload") && !strstr(f->element[j + 1]->str, id))
                match = false;
        if (!match)
            continue;
        cm_argv a = {0};
        cm_argv_adds(&a, "XADD");
        cm_argv_adds(&a, b.s);
        cm_argv_adds(&a, "*");
        for (size_t j = 0; j < f->elements; j++)
            cm_argv_add(&a, f->element[j]->str, f->element[j]->len);
        redisReply *x = cm_cluster_argv(CC, slot_of(b.s), &a);
        cm_argv_free(&a);
        cr_assert(x && x->type == REDIS_REPLY_STRING, "XADD copy: %s", x && x->str ? x->str : cm_cluster_errstr(CC));
        freeReplyObject(x);
        copied = true;
    }
    freeReplyObject(r);
    cr_assert(copied, "no %s of %s on partition %d's bus", type, id, p);
}

Test(saga_cluster, outcomes_match_one_node_and_duplicates_change_nothing)
{
    start_platform();
    put_product("p1", 10);
    put_product("p2", 5);
    put_product("pshort", 2);
    put_product("plim", 200);
    put_product("pmany", 1000);
    cr_assert_neq(slot_of(cm_key_product("p1").s), slot_of(cm_key_product("p2").s));
    start_all_workers();

    char ok[64], shrt[64], lim[64];
    post_accepted("client-1", "[{\"product_id\":\"p1\",\"quantity\":2},{\"product_id\":\"p2\",\"quantity\":1},"
                              "{\"product_id\":\"p1\",\"quantity\":1}]",
                  "k-ok", ok);
    /* pshort has 2, the checkout wants 2 + 1 of it: short, though each line fits */
    post_accepted("client-1", "[{\"product_id\":\"p1\",\"quantity\":3},{\"product_id\":\"pshort\",\"quantity\":2},"
                              "{\"product_id\":\"pshort\",\"quantity\":1}]",
                  "k-short", shrt);
    /* 120 units at 100 cents: over ORDER_LIMIT_CENTS */
    post_accepted("client-1", "[{\"product_id\":\"plim\",\"quantity\":120}]", "k-limit", lim);
    enum { MANY = 24 };
    static char many[MANY + 3][64];
    for (int i = 0; i < MANY; i++) {
        char key[32];
        snprintf(key, sizeof key, "k-many-%d", i);
        post_accepted("client-2", "[{\"product_id\":\"pmany\",\"quantity\":1}]", key, many[i]);
    }
    memcpy(many[MANY], ok, 64);
    memcpy(many[MANY + 1], shrt, 64);
    memcpy(many[MANY + 2], lim, 64);
    int parts = 0;
    bool used[NPART] = {false};
    for (int i = 0; i < MANY + 3; i++)
        used[cm_partition_of(many[i])] = true;
    for (int p = 0; p < NPART; p++)
        parts += used[p];
    cr_assert_geq(parts, 5, "the checkouts landed on %d partitions only", parts);

    wait_terminal(many, MANY + 3, 30000);
    wait_quiet(20000);

    /* success: both products' lines sold in their slots, one order */
    expect_types(ok, SEQ_OK);
    expect_stock("p1", 7, 0, 3);
    expect_stock("p2", 4, 0, 1);
    expect_mark(ok, "p1", "sold:3");
    expect_mark(ok, "p2", "sold:1");
    char order_id[CM_UUID_LEN + 1];
    cm_uuid_derive(ok, "order", order_id);
    expect_data(ok, "CheckoutSucceeded", "order_id", order_id);
    expect_data(ok, "OrderCreated", "total_cents", "400");
    cm_key ok_order = cm_key_order(ok, order_id);
    cr_expect_eq(tc_ll(CC, ok_order.s, "HGET %s total_cents", ok_order.s), 400);
    expect_read_model(ok, CM_STATUS_SUCCEEDED, "");

    /* insufficient stock: nothing released (the held line was undone) */
    expect_types(shrt, SEQ_RESV_FAILED);
    expect_data(shrt, "StockReservationFailed", "reason", "insufficient_stock");
    expect_data(shrt, "StockReservationFailed", "product_id", "pshort");
    expect_data(shrt, "CheckoutFailed", "reason", "insufficient_stock");
    expect_mark(shrt, "p1", "undone:3");
    expect_mark(shrt, "pshort", "short:3");
    expect_stock("pshort", 2, 0, 0);
    cr_expect_eq(order_exists(shrt), 0);
    expect_read_model(shrt, CM_STATUS_FAILED, "insufficient_stock");

    /* order limit: compensated, the stock given back */
    expect_types(lim, SEQ_ORDER_FAILED);
    expect_data(lim, "OrderCreationFailed", "reason", "order_limit_exceeded");
    expect_data(lim, "CheckoutFailed", "reason", "order_limit_exceeded");
    expect_data(lim, "StockReleased", "items", "[{\"product_id\":\"plim\",\"quantity\":120}]");
    expect_mark(lim, "plim", "released:120");
    expect_stock("plim", 200, 0, 0);
    cr_expect_eq(order_exists(lim), 0);
    expect_read_model(lim, CM_STATUS_FAILED, "order_limit_exceeded");

    for (int i = 0; i < MANY; i++) {
        expect_types(many[i], SEQ_OK);
        cr_expect_eq(order_exists(many[i]), 1, "order of %s", many[i]);
    }
    expect_stock("pmany", 1000 - MANY, 0, MANY);
    rm_wait rw = {many, MANY + 3, 0};
    check(tf_wait_until(read_models_terminal, &rw, 20000), "read models did not all reach a terminal status");
    for (int i = 0; i < MANY; i++)
        expect_read_model(many[i], CM_STATUS_SUCCEEDED, "");

    /* duplicates: the same key answers the same checkout and starts nothing;
     * copies of entries delivered after the sagas ended change nothing */
    long long buslen = bus_len_total();
    char again[64] = "";
    post_accepted("client-1", "[{\"product_id\":\"p1\",\"quantity\":2},{\"product_id\":\"p2\",\"quantity\":1},"
                              "{\"product_id\":\"p1\",\"quantity\":1}]",
                  "k-ok", again);
    cr_expect_str_eq(again, ok, "an Idempotency-Key replay answered another checkout");
    cr_expect_eq(bus_len_total(), buslen, "a replay appended something");
    copy_bus_entry(cm_partition_of(ok), "CheckoutInitiated", ok);
    copy_bus_entry(cm_partition_of(ok), "StockReserved", ok);
    copy_bus_entry(cm_partition_of(lim), "CheckoutInitiated", lim);
    copy_bus_entry(cm_partition_of(lim), "OrderCreationFailed", lim);
    copy_bus_entry(cm_partition_of(shrt), "CheckoutInitiated", shrt);
    wait_quiet(20000);
    cr_expect_eq(bus_len_total(), buslen + 5, "the copies appended follow-ups");
    expect_types(ok, SEQ_OK);
    expect_types(shrt, SEQ_RESV_FAILED);
    expect_types(lim, SEQ_ORDER_FAILED);
    expect_stock("p1", 7, 0, 3);
    expect_stock("p2", 4, 0, 1);
    expect_stock("pshort", 2, 0, 0);
    expect_stock("plim", 200, 0, 0);
    cr_expect_eq(dlq_total(), 0, "duplicates are acknowledged, not dead-lettered");
    cr_expect_eq(stop_workers(), 0, "a worker did not drain and exit 0");
}

Test(saga_cluster, sigkilled_order_creation_mid_batch_and_full_redelivery_change_nothing)
{
    enum { N = 12 };
    start_platform();
    put_product("pk", 100);
    start_worker("stock-reservation", NULL);
    start_worker("stock-compensation", NULL);
    start_worker("notification", NULL);
    start_worker("audit", NULL);
    start_worker("cqrs-projection", NULL);
    static char ids[N][64];
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof key, "k-kill-%d", i);
        post_accepted("client-1", "[{\"product_id\":\"pk\",\"quantity\":1}]", key, ids[i]);
    }
    /* every reservation made before order creation runs */
    long long a, r, s;
    for (long long until = tf_now_ms() + 20000; tf_now_ms() < until;) {
        stock("pk", &a, &r, &s);
        if (r == N)
            break;
        tf_sleep_ms(20);
    }
    check(r == N, "reserved %lld of %d", r, N);

    /* 400 ms per order: killed once the first is written, its batches
     * (several partitions) still unacknowledged */
    worker *oc = start_worker("order-creation", "FAULT_ORDER_DELAY_MS=400", NULL);
    bool any = false;
    for (long long until = tf_now_ms() + 20000; !any && tf_now_ms() < until;) {
        for (int i = 0; i < N && !any; i++)
            any = order_exists(ids[i]) == 1;
        if (!any)
            tf_sleep_ms(10);
    }
    check(any, "no order was created");
    kill9(oc);
    long long pending = pending_of("choreo-order");
    int orders = 0;
    for (int i = 0; i < N; i++)
        orders += (int)order_exists(ids[i]);
    cr_expect_geq(pending, 1, "the killed worker held nothing");
    cr_expect_lt(orders, N, "every order was written before the kill");

    /* restarted under its name: resumes what it held at once */
    snprintf(oc->env[0], sizeof oc->env[0], "FAULT_ORDER_DELAY_MS=0");
    spawn(oc);
    wait_terminal(ids, N, 30000);
    wait_quiet(20000);
    for (int i = 0; i < N; i++) {
        expect_types(ids[i], SEQ_OK);
        cr_expect_eq(order_exists(ids[i]), 1, "order of %s", ids[i]);
    }
    expect_stock("pk", 100 - N, 0, N);
    long long buslen = bus_len_total();

    /* everything again: the saga groups re-read every partition's bus */
    cr_expect_eq(stop_workers(), 0);
    for (int p = 0; p < NPART; p++) {
        cm_key b = cm_key_bus(AE_BUS, p);
        for (int g = 0; g < 3; g++)
            freeReplyObject(tc_cmd(CC, b.s, "XGROUP SETID %s %s 0", b.s, cm_group_names[g]));
    }
    for (int i = 0; i < NW; i++)
        spawn(&W[i]);
    wait_quiet(30000);
    for (int i = 0; i < N; i++)
        expect_types(ids[i], SEQ_OK);
    expect_stock("pk", 100 - N, 0, N);
    cr_expect_eq(bus_len_total(), buslen, "re-delivery appended something");
    cr_expect_eq(dlq_total(), 0);
    for (int i = 0; i < N; i++)
        expect_read_model(ids[i], CM_STATUS_SUCCEEDED, "");
    cr_expect_eq(stop_workers(), 0, "a worker did not drain and exit 0");
}

/* ---- a step's writes on other masters ------------------------------------ */

typedef struct retried {
    const char *bus, *history;
} retried;

/* True once the history has moved past CheckoutInitiated, or the
 * reservation's entry was delivered at least twice (its step retried). */
static bool moved_or_retried(void *ud)
{
    const retried *w = ud;
    if (tc_ll(CC, w->history, "LLEN %s", w->history) > 1)
        return true;
    redisReply *r = tc_cmd(CC, w->bus, "XPENDING %s choreo-reservation - + 10", w->bus);
    bool again = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                 cm_reply_ll(cm_reply_elem(r->element[0], 3), 0) >= 2;
    freeReplyObject(r);
    return again;
}

static int g_frozen = -1;   /* a SIGSTOPped node, thawed on every path */

static void thaw(void)
{
    if (g_frozen >= 0 && CL.node[g_frozen].server_pid > 0)
        kill(CL.node[g_frozen].server_pid, SIGCONT);
    g_frozen = -1;
}

Test(saga_cluster, line_effects_on_another_master_are_replicated_before_the_saga_moves_on)
{
    start_platform();
    put_product("pf", 10);
    start_all_workers();
    int m1 = tf_cluster_master_of(&CL, slot_of(cm_key_product("pf").s));
    int r1 = m1 >= 0 ? tf_cluster_replica_of(&CL, m1) : -1;
    cr_assert_geq(r1, 0, "pf's master %d has no replica", m1);
    int p = 0;
    while (p < NPART && tf_cluster_master_of(&CL, slot_of(cm_key_bus(AE_BUS, p).s)) == m1)
        p++;
    cr_assert_lt(p, NPART, "every partition is on pf's master");
    wait_quiet(20000);   /* every group on every partition */
    cr_assert(tf_cluster_replica_caught_up(&CL, m1, 10000), "the replica of node %d never caught up", m1);

    /* pf's master keeps its replica frozen; the checkout's partition is on
     * another master, whose replica answers */
    g_frozen = r1;
    cr_assert_eq(kill(CL.node[r1].server_pid, SIGSTOP), 0);
    char id[37];
    cm_partition_id(p, id);
    es_store *st = es_store_open(CC, AE_BUS);
    json_t *data = json_pack("{s:s, s:[{s:s, s:i, s:i}], s:i}", "client_id", "client-f", "items", "product_id", "pf",
                             "quantity", 1, "unit_price_cents", 100, "total_cents", 100);
    es_new_event ev = {.type = "CheckoutInitiated", .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "api", .expected_version = 0,
                         .events = &ev, .n = 1};
    es_append_res res;
    int rc = es_append(st, &req, &res);
    json_decref(data);
    es_store_free(st);
    cr_assert_eq(rc, ES_OK, "append CheckoutInitiated");
    cm_key h = cm_key_history("checkout", id);
    cm_key bus = cm_key_bus(AE_BUS, p);
    retried w = {bus.s, h.s};
    bool seen = tf_wait_until(moved_or_retried, &w, 20000);
    char types[1024];
    history_types(id, types, sizeof types);
    thaw();
    cr_assert(seen, "the reservation neither went on nor was retried: %s", types);
    check(!strcmp(types, "CheckoutInitiated"),
          "the saga went on (%s) while pf's hold was on no replica of its master", types);

    /* thawed: the hold is confirmed, the saga ends as usual */
    static char ids[1][64];
    snprintf(ids[0], sizeof ids[0], "%s", id);
    wait_terminal(ids, 1, 30000);
    wait_quiet(20000);
    expect_types(id, SEQ_OK);
    expect_stock("pf", 9, 0, 1);
    cr_expect_eq(dlq_total(), 0);
    cr_expect_eq(stop_workers(), 0, "a worker did not drain and exit 0");
}

/* ---- under load ---------------------------------------------------------- */

/* The catalog of the load tests: 100 cents each. */
static const struct {
    const char *id;
    long long stocked;
} CATALOG[] = {{"pa", 1000000}, {"pb0", 1000000}, {"pb1", 1000000}, {"pb2", 1000000}, {"hot", 25}, {"pbig", 1000000}};
#define NCAT (sizeof CATALOG / sizeof CATALOG[0])

/* Checkout i's lines: always pa, one pb<i%3> line, every fifth the scarce
 * `hot`, every eleventh 120 pbig (over ORDER_LIMIT_CENTS). qty[k] is the
 * quantity of CATALOG[k]. */
static void lines_of(int i, long long qty[NCAT], char *json, size_t len)
{
    memset(qty, 0, sizeof(long long) * NCAT);
    qty[0] = 1;
    qty[1 + i % 3] = 1 + i % 3;
    if (i % 5 == 0)
        qty[4] = 1;
    if (i % 11 == 0)
        qty[5] = 120;
    size_t off = (size_t)snprintf(json, len, "[");
    for (size_t k = 0; k < NCAT; k++)
        if (qty[k])
            off += (size_t)snprintf(json + off, len - off, "%s{\"product_id\":\"%s\",\"quantity\":%lld}",
                                    off > 1 ? "," : "", CATALOG[k].id, qty[k]);
    snprintf(json + off, len - off, "]");
}

/* The loader thread: checkouts one after another, each with its key,
 * retried with the same key on 503 or no answer, until at least min_n were
 * accepted and `after` more since the fault was over. No assertion here:
 * the test checks what it recorded. */
typedef struct load {
    int min_n, after;
    atomic_int accepted;        /* ids[0..accepted) are set */
    atomic_bool fault_done;
    atomic_int at_fault_done;   /* accepted when the loader saw fault_done */
    atomic_int n503;
    int retries_0;              /* no answer at all */
    int replays_checked;
    atomic_bool failed;         /* err says why */
    char err[256];              /* "" : no error */
    char ids[MAX_LOAD][64];
} load;

static load LD;

static void *loader(void *ud)
{
    load *l = ud;
    int after_at = -1;
    for (int i = 0; i < MAX_LOAD; i++) {
        if (after_at < 0 && atomic_load(&l->fault_done))
            after_at = i;
        if (i >= l->min_n && after_at >= 0 && i >= after_at + l->after)
            break;
        char key[32], items[512], client[16], id[64] = "";
        long long qty[NCAT];
        snprintf(key, sizeof key, "ld-%d", i);
        snprintf(client, sizeof client, "c-%d", i % 7);
        lines_of(i, qty, items, sizeof items);
        long long until = tf_now_ms() + 60000;
        int st;
        while ((st = post_checkout(client, items, key, id)) != 202 && (st == 503 || st == 0) &&
               tf_now_ms() < until) {
            if (st == 503)
                atomic_fetch_add(&l->n503, 1);
            else
                l->retries_0++;
            tf_sleep_ms(20);
        }
        if (st != 202) {
            snprintf(l->err, sizeof l->err, "checkout %s: status %d", key, st);
            atomic_store(&l->failed, true);
            break;
        }
        if (i % 25 == 0) {   /* the key replays the same checkout */
            char again[64] = "";
            int st2 = post_checkout(client, items, key, again);
            while ((st2 == 503 || st2 == 0) && tf_now_ms() < until) {
                tf_sleep_ms(20);
                st2 = post_checkout(client, items, key, again);
            }
            if (st2 != 202 || strcmp(again, id) != 0) {
                snprintf(l->err, sizeof l->err, "replay of %s: status %d, checkout %s, first %s", key, st2, again,
                         id);
                atomic_store(&l->failed, true);
                break;
            }
            l->replays_checked++;
        }
        memcpy(l->ids[i], id, 64);
        atomic_store(&l->accepted, i + 1);
        if (after_at >= 0 && atomic_load(&l->at_fault_done) == 0)
            atomic_store(&l->at_fault_done, i + 1);
        tf_sleep_ms(5);   /* a steady stream, spread over the fault */
    }
    return NULL;
}

typedef struct count_wait {
    int want;
} count_wait;

static bool accepted_at_least(void *ud)
{
    return atomic_load(&LD.accepted) >= ((count_wait *)ud)->want || atomic_load(&LD.failed);
}

/* Starts everything, the catalog, the six workers, and the loader; returns
 * once `before` checkouts were accepted (the fault comes next). */
static pthread_t start_load(int min_n, int before)
{
    start_platform();
    for (size_t k = 0; k < NCAT; k++)
        put_product(CATALOG[k].id, CATALOG[k].stocked);
    start_all_workers();
    memset(&LD, 0, sizeof LD);
    LD.min_n = min_n;
    LD.after = 40;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, loader, &LD), 0);
    count_wait cw = {before};
    if (!tf_wait_until(accepted_at_least, &cw, 30000) || atomic_load(&LD.failed)) {
        pthread_join(t, NULL);
        check(false, "the load did not get going: %d accepted, %s", atomic_load(&LD.accepted), LD.err);
    }
    return t;
}

/* Waits until n more checkouts were accepted (the load goes on). */
static void wait_more_accepted(int n)
{
    count_wait cw = {atomic_load(&LD.accepted) + n};
    check(tf_wait_until(accepted_at_least, &cw, 60000) && !atomic_load(&LD.failed), "the load stalled at %d accepted: %s",
          atomic_load(&LD.accepted), LD.err);
}

/* Ends the fault phase, joins the loader, and checks every guarantee over
 * what it got accepted (see the file's opening comment). */
static void finish_load_and_check(pthread_t t, const char *fault)
{
    atomic_store(&LD.fault_done, true);
    pthread_join(t, NULL);
    int n = atomic_load(&LD.accepted);
    check(!LD.err[0], "%s: the load failed: %s", fault, LD.err);
    check(n >= LD.min_n, "%s: %d accepted, want %d", fault, n, LD.min_n);
    printf("saga_cluster %s: %d checkouts accepted (%d after the fault), %d answers 503, %d without answer, "
           "%d replays checked\n",
           fault, n, n - atomic_load(&LD.at_fault_done), atomic_load(&LD.n503), LD.retries_0, LD.replays_checked);

    wait_terminal(LD.ids, n, 90000);
    wait_quiet(60000);

    long long bought[NCAT] = {0};
    int succeeded = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        const char *id = LD.ids[i];
        char types[1024], reason[64] = "";
        history_types(id, types, sizeof types);
        int terminals = 0;
        for (const char *p = types; (p = strstr(p, "Checkout")); p += 8)
            terminals += !strncmp(p, "CheckoutSucceeded", 17) || !strncmp(p, "CheckoutFailed", 14);
        long long qty[NCAT];
        char items[512];
        lines_of(i, qty, items, sizeof items);
        bool ok = !strcmp(types, SEQ_OK);
        if (!ok)
            history_data(id, "CheckoutFailed", "reason", reason, sizeof reason);
        /* what its lines allow: plenty of everything but hot; pbig's 120
         * units are over the order limit */
        bool allowed;
        if (qty[5])
            allowed = (!strcmp(types, SEQ_ORDER_FAILED) && !strcmp(reason, "order_limit_exceeded")) ||
                      (qty[4] && !strcmp(types, SEQ_RESV_FAILED) && !strcmp(reason, "insufficient_stock"));
        else if (qty[4])
            allowed = ok || (!strcmp(types, SEQ_RESV_FAILED) && !strcmp(reason, "insufficient_stock"));
        else
            allowed = ok;
        if (terminals != 1 || !allowed) {
            if (bad++ < 5)
                fprintf(stderr, "%s: checkout %d (%s): %d terminal events: %s (%s)\n", fault, i, id, terminals,
                        types, reason);
            continue;
        }
        if (ok) {
            succeeded++;
            for (size_t k = 0; k < NCAT; k++)
                bought[k] += qty[k];
        }
        cr_expect_eq(order_exists(id), ok ? 1 : 0, "%s: order of %s (%s)", fault, id, types);
    }
    check(bad == 0, "%s: %d checkouts without exactly one terminal event or with an outcome their lines "
                    "do not allow",
          fault, bad);
    cr_expect_gt(succeeded, n / 2, "%s: only %d of %d succeeded", fault, succeeded, n);

    /* the read models say the same */
    rm_wait rw = {LD.ids, n, 0};
    check(tf_wait_until(read_models_terminal, &rw, 30000), "%s: read models not terminal (%d of %d)", fault, rw.done,
          n);
    for (int i = 0; i < n; i += 7) {
        char types[1024], st[32], why[64];
        history_types(LD.ids[i], types, sizeof types);
        read_model(LD.ids[i], st, why);
        cr_expect_str_eq(st, !strcmp(types, SEQ_OK) ? CM_STATUS_SUCCEEDED : CM_STATUS_FAILED, "%s: read model of %s",
                         fault, LD.ids[i]);
    }

    /* stock conserved, settled, and sold exactly what the successes bought */
    for (size_t k = 0; k < NCAT; k++) {
        long long a, r, s;
        stock(CATALOG[k].id, &a, &r, &s);
        cr_expect(a >= 0 && r == 0 && s == bought[k] && a + r + s == CATALOG[k].stocked,
                  "%s: %s: available %lld reserved %lld sold %lld (stocked %lld, bought %lld)", fault, CATALOG[k].id,
                  a, r, s, CATALOG[k].stocked, bought[k]);
    }
    cr_expect_eq(dlq_total(), 0, "%s: something was dead-lettered", fault);
    cr_expect_eq(stop_workers(), 0, "%s: a worker did not drain and exit 0", fault);
}

/* A master other than node m. */
static int other_master(int m)
{
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        if (i != m && tf_cluster_is_master(&CL, i))
            return i;
    return -1;
}

Test(saga_cluster, load_with_a_partition_slot_and_a_product_slot_migrating_loses_nothing)
{
    pthread_t t = start_load(300, 60);
    /* partition 3's slot (its bus, histories, idempotency records, ...),
     * then pa's slot (a line of every checkout) move to other masters, each
     * while checkouts keep coming: meanwhile clients get ASK and, for
     * scripts creating keys, TRYAGAIN (cm_cluster retries both) */
    int pslot = slot_of(cm_key_bus(AE_BUS, 3).s), aslot = slot_of(cm_key_product("pa").s);
    int psrc = tf_cluster_master_of(&CL, pslot);
    int pdst = other_master(psrc);
    check(psrc >= 0 && pdst >= 0, "no masters for slot %d", pslot);
    check(tf_cluster_migrate_slot(&CL, pslot, pdst, true) == 0, "migrating slot %d", pslot);
    wait_more_accepted(30);
    int asrc = tf_cluster_master_of(&CL, aslot);
    int adst = other_master(asrc);
    check(asrc >= 0 && adst >= 0, "no masters for slot %d", aslot);
    check(tf_cluster_migrate_slot(&CL, aslot, adst, true) == 0, "migrating slot %d", aslot);
    check(tf_cluster_wait_ok(&CL, 10000) == 0, "the cluster is not whole after the migrations");
    check(tf_cluster_master_of(&CL, pslot) == pdst && tf_cluster_master_of(&CL, aslot) == adst,
          "the slots did not move");
    finish_load_and_check(t, "migration");
}

Test(saga_cluster, load_with_a_cluster_failover_on_a_replica_loses_nothing)
{
    pthread_t t = start_load(300, 80);
    int m = tf_cluster_master_of(&CL, slot_of(cm_key_bus(AE_BUS, 0).s));
    int r = m >= 0 ? tf_cluster_replica_of(&CL, m) : -1;
    check(r >= 0, "partition 0's master %d has no replica", m);
    check(tf_cluster_failover(&CL, r) == 0, "CLUSTER FAILOVER on node %d", r);
    check(tf_cluster_is_master(&CL, r) && !tf_cluster_is_master(&CL, m), "node %d did not take over", r);
    finish_load_and_check(t, "failover");
}

typedef struct which {
    int node;
} which;

static bool promoted(void *ud)
{
    return tf_cluster_is_master(&CL, ((which *)ud)->node);
}

Test(saga_cluster, load_with_a_master_sigkilled_and_its_replica_promoted_loses_nothing)
{
    pthread_t t = start_load(300, 80);
    int m = tf_cluster_master_of(&CL, slot_of(cm_key_bus(AE_BUS, 0).s));
    int r = m >= 0 ? tf_cluster_replica_of(&CL, m) : -1;
    check(r >= 0, "partition 0's master %d has no replica", m);
    check(tf_redis_kill9(&CL.node[m]) == 0, "SIGKILL node %d", m);
    which w = {r};
    check(tf_wait_until(promoted, &w, 30000), "replica %d was not promoted", r);
    /* the old master comes back as the new one's replica: REDIS_WAIT_REPLICAS=1
     * needs one for partition 0's writes to be acknowledged again */
    check(tf_redis_restart(&CL.node[m]) == 0, "restart node %d", m);
    check(tf_cluster_wait_ok(&CL, 30000) == 0, "the cluster is not whole after the failover");
    finish_load_and_check(t, "master-kill");
}
