/* bench_memory.c - chorus-bench-memory: what one saga leaves in Redis, by
 * key family.
 *
 * Starts a private redis-server (AOF everysec and 16 KB stream nodes, as the
 * e2e bench and `./chorus up`), a catalog
 * of three products, chorus-api and the six workers as real processes, and
 * posts BENCH_SAGAS (5,000) checkouts over HTTP from BENCH_CONNS (4)
 * keep-alive connections, each with an Idempotency-Key. The mix is the e2e
 * bench's: 90% success, 5% stock failure ("none": 0 in stock), 5%
 * compensated ("lux": over ORDER_LIMIT_CENTS, reserved then released).
 * Client ids are "mem-<n % BENCH_CLIENTS>" (default: one client per saga,
 * as in the e2e bench).
 *
 * Once every group has read the whole bus and holds nothing pending, it
 * SCANs the keyspace, asks MEMORY USAGE (SAMPLES 0: every element counted)
 * of each key, and sums the bytes by family (the table k_families below,
 * matched on the key name). Printed per saga:
 *   memory.<family>_bytes_per_saga   every family found
 *   memory.kept_bytes_per_saga       families kept indefinitely (histories,
 *                                    orders, the audit log and head)
 *   memory.bus_bytes_per_saga        the bus (trimmed by EVENT_RETENTION_DAYS)
 *   memory.expiring_bytes_per_saga   families with a lifetime (they shrink
 *                                    back once it has passed)
 *   memory.total_bytes_per_saga      every key (MEMORY USAGE sum)
 *   memory.used_memory_per_saga      INFO used_memory growth (allocator view,
 *                                    the e2e bench's redis_bytes_per_saga)
 *
 * With BENCH_TTL_S=N (N >= 1) the workers run with every lifetime at N
 * seconds (reservations, notification markers, audit marks, read models,
 * dead letters); the bench then waits for the expiring families to empty and
 * prints the steady state as memory.after_ttl_* lines. Idempotency records
 * keep their 24 h (the contract of DESIGN.md). BENCH_REDIS_CONF adds
 * redis.conf lines (';' separates them), to try encodings.
 *
 * Binaries are found beside this one. Exits 1 when it could not run or a
 * saga did not end. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/benchutil.h"
#include "common/clock.h"
#include "common/names.h"
#include "common/redis.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define STOCK 100000000LL
#define PRICE_OK 1000
#define PRICE_LUX 600000   /* > ORDER_LIMIT_CENTS (500000) */

static const char *const k_products[3] = {"ok", "none", "lux"};
static const long long k_stock[3] = {STOCK, 0, STOCK};

/* How long a family lives. */
enum life { KEPT, BUS, EXPIRES, BOUNDED };
static const char *const k_life_names[] = {"kept", "bus", "expires", "bounded"};

/* One key family: keys whose name (hash tags of partitions removed, see
 * normalise) starts with prefix, or equals it when exact. First match wins. */
typedef struct family {
    const char *name;      /* in the BENCH line */
    const char *prefix;
    bool exact;
    enum life life;
    const char *setting;   /* what sets its lifetime */
} family;

static const family k_families[] = {
    {"history", "chorus:h:", false, KEPT, "kept"},
    {"order", "chorus:order:", false, KEPT, "kept"},
    {"audit_log", CM_KEY_AUDIT_LOG, true, KEPT, "kept"},
    {"audit_head", CM_KEY_AUDIT_HEAD, true, KEPT, "kept"},
    {"audit_seen", CM_KEY_AUDIT_SEEN_PREFIX, false, EXPIRES, "AUDIT_SEEN_TTL_S"},
    {"idempotency", "chorus:idem:", false, EXPIRES, "24 h"},
    {"reservation", "chorus:resv:", false, EXPIRES, "RESERVATION_TTL_S"},
    {"line_mark", "chorus:hold:", false, EXPIRES, "RESERVATION_TTL_S"},
    {"notify_log", CM_KEY_NOTIFY_LOG, true, EXPIRES, "NOTIFY_TTL_S (entries)"},
    {"notify_marker", "chorus:notify:", false, EXPIRES, "NOTIFY_TTL_S"},
    {"rm_checkout", "chorus:rm:checkout:", false, EXPIRES, "READ_MODEL_TTL_S"},
    {"rm_client_checkouts", CM_KEY_CLIENT_CHECKOUTS, false, EXPIRES, "READ_MODEL_TTL_S"},
    {"rm_client", "chorus:rm:client:", false, KEPT, "kept (one per client)"},
    {"rm_stock", "chorus:rm:stock:", false, BOUNDED, "kept (one per product)"},
    {"rm_checkpoint", CM_KEY_RM_CHECKPOINT, true, BOUNDED, "kept (one)"},
    {"saga_started", CM_KEY_SAGA_STARTED, true, BOUNDED, "open sagas only"},
    {"catalog", "chorus:product", false, BOUNDED, "kept (one per product)"},
    {"dead_letters", "", false, EXPIRES, "DEAD_LETTER_TTL_S"},   /* matched in family_of */
    {"bus", CM_BUS_STREAM_DEFAULT, false, BUS, "EVENT_RETENTION_DAYS"},
    {"other", "", false, BOUNDED, "?"},                           /* anything else */
};
#define NFAM (sizeof k_families / sizeof k_families[0])
#define FAM_DLQ (NFAM - 3)
#define FAM_OTHER (NFAM - 1)

typedef struct tally {
    double bytes[NFAM];
    long long keys[NFAM];
    char other_example[128];
} tally;

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

/* key without a partition's hash tag ("chorus:{p3}:h:..." -> "chorus:h:...";
 * the audit keys' {audit} tag is part of their names and stays). */
static void normalise(const char *key, char *out, size_t outlen)
{
    const char *tag = strstr(key, "{");
    const char *end = tag ? strstr(tag, "}") : NULL;
    if (!tag || !end || !strncmp(tag, "{audit}", 7)) {
        snprintf(out, outlen, "%s", key);
        return;
    }
    size_t skip = (size_t)(end - tag) + 1;
    if (end[1] == ':' && tag > key && tag[-1] == ':')
        skip++;   /* "chorus:{p3}:h:" -> "chorus:h:" */
    snprintf(out, outlen, "%.*s%s", (int)(tag - key), key, tag + skip);
}

static size_t family_of(const char *key)
{
    char k[512];
    normalise(key, k, sizeof k);
    if (strstr(k, ".dlq.") || strstr(k, ".retry."))
        return FAM_DLQ;
    for (size_t f = 0; f < NFAM - 1; f++) {
        const family *fm = &k_families[f];
        if (!fm->prefix[0])
            continue;
        if (fm->exact ? !strcmp(k, fm->prefix) : !strncmp(k, fm->prefix, strlen(fm->prefix)))
            return f;
    }
    return FAM_OTHER;
}

/* SCANs every key and sums MEMORY USAGE by family. Returns 0 or -1. */
static int measure(redisContext *c, tally *t)
{
    memset(t, 0, sizeof *t);
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(c, "SCAN %s COUNT 1000", cursor);
        const redisReply *cur = cm_reply_elem(r, 0), *keys = cm_reply_elem(r, 1);
        if (!cm_reply_is_str(cur) || !keys || keys->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "bench memory: SCAN: %s\n", r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
            freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", cur->str);
        for (size_t i = 0; i < keys->elements; i++)
            redisAppendCommand(c, "MEMORY USAGE %b SAMPLES 0", keys->element[i]->str, keys->element[i]->len);
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *u = NULL;
            if (redisGetReply(c, (void **)&u) != REDIS_OK) {
                fprintf(stderr, "bench memory: MEMORY USAGE: %s\n", c->errstr);
                freeReplyObject(r);
                return -1;
            }
            if (u && u->type == REDIS_REPLY_INTEGER) {   /* nil: expired since the SCAN */
                size_t f = family_of(keys->element[i]->str);
                t->bytes[f] += (double)u->integer;
                t->keys[f]++;
                if (f == FAM_OTHER && !t->other_example[0])
                    snprintf(t->other_example, sizeof t->other_example, "%s", keys->element[i]->str);
            }
            freeReplyObject(u);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

static void figure(const char *name, double v, const char *unit)
{
    if (v >= 100)
        printf("BENCH memory.%s %.0f %s\n", name, v, unit);
    else
        printf("BENCH memory.%s %.1f %s\n", name, v, unit);
}

/* Prints the family table and the BENCH lines (prefix "" or "after_ttl_"). */
static void report(const tally *t, double sagas, const char *prefix)
{
    double sum[4] = {0}, total = 0;
    printf("  %-20s %8s %10s %12s  %-8s %s\n", "family", "keys", "bytes", "B/saga", "lifetime", "set by");
    for (size_t f = 0; f < NFAM; f++) {
        if (!t->keys[f])
            continue;
        const family *fm = &k_families[f];
        printf("  %-20s %8lld %10.0f %12.1f  %-8s %s%s%s\n", fm->name, t->keys[f], t->bytes[f], t->bytes[f] / sagas,
               k_life_names[fm->life], fm->setting, f == FAM_OTHER ? ", e.g. " : "",
               f == FAM_OTHER ? t->other_example : "");
        sum[fm->life] += t->bytes[f];
        total += t->bytes[f];
    }
    char name[96];
    for (size_t f = 0; f < NFAM; f++)
        if (t->keys[f] && k_families[f].life != BUS) {   /* the bus: its own line below */
            snprintf(name, sizeof name, "%s%s_bytes_per_saga", prefix, k_families[f].name);
            figure(name, t->bytes[f] / sagas, "bytes");
        }
    snprintf(name, sizeof name, "%skept_bytes_per_saga", prefix);
    figure(name, sum[KEPT] / sagas, "bytes");
    snprintf(name, sizeof name, "%sbus_bytes_per_saga", prefix);
    figure(name, sum[BUS] / sagas, "bytes");
    snprintf(name, sizeof name, "%sexpiring_bytes_per_saga", prefix);
    figure(name, sum[EXPIRES] / sagas, "bytes");
    snprintf(name, sizeof name, "%stotal_bytes_per_saga", prefix);
    figure(name, total / sagas, "bytes");
}

/* ---- the platform ---- */

#define NPROC (1 + CM_W_COUNT)
static pid_t g_pids[NPROC];
static int g_port;
static char g_ttl_env[5][64];

static pid_t spawn(const char *const av[], const char *url, const char *logpath)
{
    char url_env[340], port_env[32];
    snprintf(url_env, sizeof url_env, "REDIS_URL=%s", url);
    snprintf(port_env, sizeof port_env, "API_PORT=%d", g_port);
    /* PARTITIONS=1 whatever the caller's environment says: this bench reads
     * the unpartitioned bus and key names */
    const char *env[] = {url_env, port_env, "PARTITIONS=1", "METRICS_PORT=0", "LOG_LEVEL=warn", "CHORUS_ADMIN_TOKEN=",
                         g_ttl_env[0][0] ? g_ttl_env[0] : NULL, g_ttl_env[1], g_ttl_env[2], g_ttl_env[3],
                         g_ttl_env[4], NULL};
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

/* What start_api runs the API with. */
typedef struct api_start_args {
    const char *bin, *url, *log;
} api_start_args;

static pid_t start_api(void *ud)
{
    const api_start_args *a = ud;
    const char *av[] = {a->bin, NULL};
    return spawn(av, a->url, a->log);
}

static bool api_ready(void *ud)
{
    (void)ud;
    tf_http_resp r;
    bool ok = tf_http_request(g_port, "GET", "/ready", NULL, NULL, &r) == 0 && r.status == 200;
    tf_http_resp_free(&r);
    return ok;
}

/* ---- the load ---- */

static long g_sagas, g_clients;
static atomic_long g_next, g_accepted, g_refused;

static void *sender_main(void *arg)
{
    (void)arg;
    tf_http h;
    if (tf_http_open(&h, g_port, 5000) != 0)
        return NULL;
    char body[200], hdr[160];
    for (long n; (n = atomic_fetch_add(&g_next, 1)) < g_sagas;) {
        int p = n % 20 == 7 ? 1 : n % 20 == 13 ? 2 : 0;
        int bl = snprintf(body, sizeof body, "{\"client_id\":\"mem-%ld\",\"items\":[{\"product_id\":\"%s\",\"quantity\":1}]}",
                          n % g_clients, k_products[p]);
        snprintf(hdr, sizeof hdr, "Content-Type: application/json\r\nIdempotency-Key: mem-%ld\r\n", n);
        tf_http_resp r;
        int rc = tf_http_do(&h, "POST", "/api/checkouts", hdr, body, (size_t)bl, &r, 10000);
        if (rc == 0 && r.status == 202)
            atomic_fetch_add(&g_accepted, 1);
        else
            atomic_fetch_add(&g_refused, 1);
        bool reopen = rc != 0 || r.closed;
        tf_http_resp_free(&r);
        if (reopen) {
            tf_http_close(&h);
            if (tf_http_open(&h, g_port, 5000) != 0)
                return NULL;
        }
    }
    tf_http_close(&h);
    return NULL;
}

/* True once every group of the bus has read all of it and holds nothing
 * pending. */
static bool quiet(void *ud)
{
    redisContext *c = ud;
    redisReply *r = redisCommand(c, "XINFO GROUPS %s", CM_BUS_STREAM_DEFAULT);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == CM_W_COUNT;
    for (size_t g = 0; ok && g < r->elements; g++) {
        const redisReply *e = r->element[g];
        long long pending = -1, lag = -1;
        for (size_t i = 0; e->type == REDIS_REPLY_ARRAY && i + 1 < e->elements; i += 2) {
            const char *k = e->element[i]->str;
            if (!k)
                continue;
            if (!strcmp(k, "pending"))
                pending = cm_reply_ll(e->element[i + 1], -1);
            else if (!strcmp(k, "lag"))
                lag = cm_reply_ll(e->element[i + 1], -1);
        }
        ok = pending == 0 && lag == 0;
    }
    freeReplyObject(r);
    return ok;
}

/* Terminal events on the bus (one XRANGE walk). */
static long long count_terminals(redisContext *c)
{
    long long n = 0;
    char from[64] = "-";
    for (;;) {
        redisReply *r = redisCommand(c, "XRANGE %s %s + COUNT 5000", CM_BUS_STREAM_DEFAULT, from);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            freeReplyObject(r);
            return n;
        }
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *f = cm_reply_elem(r->element[i], 1);
            for (size_t k = 0; f && k + 1 < f->elements; k += 2)
                if (cm_reply_is_str(f->element[k]) && !strcmp(f->element[k]->str, "type") &&
                    cm_reply_is_str(f->element[k + 1]) &&
                    (!strcmp(f->element[k + 1]->str, "CheckoutSucceeded") ||
                     !strcmp(f->element[k + 1]->str, "CheckoutFailed")))
                    n++;
        }
        snprintf(from, sizeof from, "(%s", r->element[r->elements - 1]->element[0]->str);
        freeReplyObject(r);
    }
}

static long long used_memory(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO memory");
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "used_memory:");
        if (p)
            v = atoll(p + 12);
    }
    freeReplyObject(r);
    return v;
}

/* True when every per-saga key with a lifetime under BENCH_TTL_S is gone
 * (BENCH_TTL_S runs). The streams whose entries expire (notification log,
 * dead letters) stay as keys, and idempotency records keep their 24 h. */
static bool expired(void *ud)
{
    static const char *const per_saga[] = {CM_KEY_AUDIT_SEEN_PREFIX "x", "chorus:resv:x", "chorus:hold:x",
                                           "chorus:notify:x",
                                           "chorus:rm:checkout:x", CM_KEY_CLIENT_CHECKOUTS "x"};
    tally t;
    if (measure(ud, &t) != 0)
        return false;
    for (size_t i = 0; i < sizeof per_saga / sizeof per_saga[0]; i++)
        if (t.keys[family_of(per_saga[i])])
            return false;
    return true;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    char api_bin[PATH_MAX], wk_bin[PATH_MAX];
    if (bu_bin_path("../api/chorus-api", api_bin, sizeof api_bin) != 0 ||
        bu_bin_path("../workers/chorus-worker", wk_bin, sizeof wk_bin) != 0) {
        fprintf(stderr, "bench memory: chorus-api or chorus-worker not built beside this bench\n");
        return 1;
    }
    g_sagas = env_long("BENCH_SAGAS", 5000);
    g_clients = env_long("BENCH_CLIENTS", 0);
    long conns = env_long("BENCH_CONNS", 4), ttl = env_long("BENCH_TTL_S", 0);
    if (g_sagas < 1 || conns < 1 || conns > 64 || ttl < 0) {
        fprintf(stderr, "bench memory: BENCH_SAGAS >= 1, BENCH_CONNS 1..64, BENCH_TTL_S >= 0\n");
        return 1;
    }
    if (g_clients < 1 || g_clients > g_sagas)
        g_clients = g_sagas;
    if (ttl > 0) {
        const char *names[5] = {"RESERVATION_TTL_S", "NOTIFY_TTL_S", "AUDIT_SEEN_TTL_S", "READ_MODEL_TTL_S",
                                "DEAD_LETTER_TTL_S"};
        for (int i = 0; i < 5; i++)
            snprintf(g_ttl_env[i], sizeof g_ttl_env[i], "%s=%ld", names[i], ttl);
    }

    tf_redis rs;
    char conf[1024];
    const char *extra = getenv("BENCH_REDIS_CONF");   /* more redis.conf lines, ';' for newlines */
    snprintf(conf, sizeof conf,
             "appendonly yes\nappendfsync everysec\nauto-aof-rewrite-min-size 512mb\nauto-aof-rewrite-percentage 400\n"
             "stream-node-max-bytes 16384\nstream-node-max-entries 1000\n%s\n",
             extra ? extra : "");
    for (char *p = conf; *p; p++)
        if (*p == ';')
            *p = '\n';
    if (extra && *extra)
        printf("  redis.conf adds: %s\n", extra);
    if (tf_redis_start(&rs, conf) != 0) {
        fprintf(stderr, "bench memory: cannot start redis-server\n");
        return 1;
    }
    int rc = 1;
    redisContext *c = tf_redis_connect(&rs);
    for (int i = 0; i < 3; i++) {
        freeReplyObject(redisCommand(c, "HSET " CM_KEY_PREFIX "product:%s name %s price_cents %d available %lld "
                                        "reserved 0 sold 0", k_products[i], k_products[i],
                                     i == 2 ? PRICE_LUX : PRICE_OK, k_stock[i]));
        freeReplyObject(redisCommand(c, "SADD " CM_KEY_PREFIX "products %s", k_products[i]));
    }
    char log[400];
    for (int w = 0; w < CM_W_COUNT; w++) {
        snprintf(log, sizeof log, "%s/%s.log", rs.dir, cm_worker_names[w]);
        const char *av[] = {wk_bin, cm_worker_names[w], NULL};
        if ((g_pids[1 + w] = spawn(av, rs.url, log)) <= 0) {
            fprintf(stderr, "bench memory: cannot run %s: %s\n", wk_bin, strerror(errno));
            goto out;
        }
    }
    snprintf(log, sizeof log, "%s/api.log", rs.dir);
    api_start_args sa = {api_bin, rs.url, log};
    g_pids[0] = bu_start_api(&g_port, start_api, api_ready, &sa, 10000);
    if (g_pids[0] < 0) {
        fprintf(stderr, "bench memory: cannot run %s: %s\n", api_bin, strerror(errno));
        g_pids[0] = 0;
        goto out;
    }
    if (!g_pids[0]) {
        tf_dump_file(log, "chorus-api log");
        goto out;
    }
    /* wait for the six groups to exist, so "quiet" means something */
    tf_sleep_ms(500);
    long long mem0 = used_memory(c);
    printf("  redis-server %s, chorus-api on :%d, six workers; %ld checkouts from %ld clients over %ld "
           "connections%s\n", rs.url, g_port, g_sagas, g_clients, conns,
           ttl > 0 ? ", every lifetime at BENCH_TTL_S" : "");

    int64_t t0 = cm_mono_ms();
    pthread_t th[64];
    for (long i = 0; i < conns; i++)
        if (pthread_create(&th[i], NULL, sender_main, NULL) != 0) {
            fprintf(stderr, "bench memory: cannot start a sender thread\n");
            conns = i;
            break;
        }
    for (long i = 0; i < conns; i++)
        pthread_join(th[i], NULL);
    long accepted = atomic_load(&g_accepted);
    printf("  %ld accepted (202), %ld refused, in %.1f s\n", accepted, atomic_load(&g_refused),
           (double)(cm_mono_ms() - t0) / 1000.0);
    if (accepted != g_sagas) {
        fprintf(stderr, "bench memory: only %ld of %ld checkouts were accepted\n", accepted, g_sagas);
        goto out;
    }
    /* quiet, and every saga has its terminal event (a group that has not
     * fetched yet looks quiet too: polled until both hold) */
    bool settled = false;
    long long terms = 0;
    for (int64_t deadline = cm_mono_ms() + 120000; !settled && cm_mono_ms() < deadline;) {
        settled = tf_wait_until(quiet, c, 1000) && (terms = count_terminals(c)) == accepted &&
                  (tf_sleep_ms(300), quiet(c));
    }
    printf("  settled %s after %.1f s: %lld terminal events\n", settled ? "" : "NOT", (double)(cm_mono_ms() - t0) / 1e3,
           terms);
    if (!settled || terms != accepted) {
        fprintf(stderr, "bench memory: %lld terminal events for %ld sagas\n", terms, accepted);
        goto out;
    }

    tally t;
    if (measure(c, &t) != 0)
        goto out;
    long long mem1 = used_memory(c);
    report(&t, (double)accepted, "");
    figure("used_memory_per_saga", (double)(mem1 - mem0) / (double)accepted, "bytes");

    if (ttl > 0) {
        printf("  waiting for the lifetimes (%ld s) to pass...\n", ttl);
        if (!tf_wait_until(expired, c, (int)(ttl * 1000 + 30000))) {
            fprintf(stderr, "bench memory: the expiring families did not empty\n");
            goto out;
        }
        if (measure(c, &t) != 0)
            goto out;
        report(&t, (double)accepted, "after_ttl_");
    }
    rc = 0;
out:
    stop_all();
    redisFree(c);
    if (rc != 0)
        tf_redis_dump_log(&rs);
    tf_redis_stop(&rs);
    return rc;
}
