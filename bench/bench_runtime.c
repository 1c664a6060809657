/* bench_runtime.c - chorus-bench-runtime: the worker runtime's drain rate
 * against a raw consumer-group loop.
 *
 * Starts a private redis-server (tests/support/redis_fixture.h; no RDB, no
 * AOF), fills a bus with N valid envelopes (CheckoutInitiated-shaped, each
 * encoded with es_encode, written with pipelined XADD), then in one run:
 *
 *   raw:     this process drains the bus through group "bench-raw" with
 *            XREADGROUP COUNT 500, the previous batch's XACK pipelined in
 *            front of each read, decoding nothing;
 *   runtime: one `chorus-worker test` process (BATCH_SIZE=500, TEST_NOOP=1:
 *            the handler acknowledges at once, no Redis work of its own)
 *            drains the same bus through its group "test-group"; timed from
 *            spawn until XINFO GROUPS shows every entry read and none
 *            pending. The runtime does everything it does in production:
 *            envelope decode and validation, metrics, acks, periodic jobs.
 *
 * Each side runs twice, alternating, and the best wall time counts. Prints
 * `BENCH runtime.drain_per_s`, `runtime.raw_drain_per_s`,
 * `runtime.drain_vs_raw` (wall) and `runtime.drain_vs_raw_cpu` (the same
 * ratio from CPU seconds of client + redis-server, which a busy machine
 * disturbs less). The worker binary is found beside this one
 * (../workers/chorus-worker) or named by CHORUS_WORKER_BIN. Exits non-zero
 * only when it could not run (no Redis, no worker, a drain went wrong). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/redis.h"
#include "common/xmalloc.h"
#include "event_store/event.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

enum {
    N_EVENTS = 1000000,   /* entries on the bus */
    BATCH = 500,          /* XREADGROUP COUNT, both sides */
    FILL_DEPTH = 512,     /* XADDs in flight while filling */
    DRAIN_TIMEOUT_MS = 90000,
    ROUNDS = 2,           /* raw and runtime alternate; the best of each counts */
};

#define BUS "bench.runtime.events"
#define RAW_GROUP "bench-raw"
#define WORKER_GROUP "test-group"   /* the test worker's group */

static void figure(const char *name, double v, const char *unit)
{
    if (v >= 1000)
        printf("BENCH runtime.%s %.0f %s\n", name, v, unit);
    else
        printf("BENCH runtime.%s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

/* Reads n pipelined replies, failing on the first error. */
static int replies_ok(redisContext *c, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            fprintf(stderr, "bench runtime: redis: %s\n", c->errstr);
            return -1;
        }
        if (r->type == REDIS_REPLY_ERROR && !rc) {
            fprintf(stderr, "bench runtime: redis: %s\n", r->str);
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}

/* Fills BUS with n envelopes as the store writes them (type, payload, ts):
 * one es_encode'd CheckoutInitiated as a template, with a fresh event id and
 * its own aggregate id patched in for each entry. */
static int fill(redisContext *c, int n)
{
    json_t *data = json_pack("{s:s,s:[{s:s,s:i,s:i}],s:i}", "client_id", "client-42", "items", "product_id",
                             "sku-1", "quantity", 2, "unit_price_cents", 1999, "total_cents", 3998);
    es_new_event ev = {.type = "CheckoutInitiated", .data = data};
    es_encoded enc = {0};
    es_encode(&ev, "checkout", "co-0000000", NULL, "api", &enc);
    cm_buf payload = CM_BUF_INIT;
    cm_buf_put(&payload, enc.head.data, enc.head.len);
    cm_buf_putc(&payload, '1');
    cm_buf_put(&payload, enc.tail.data, enc.tail.len);
    char *eid = strstr(payload.data, enc.event_id);
    char *agg = strstr(payload.data, "co-0000000");   /* aggregate_id, then correlation_id */
    char *corr = agg ? strstr(agg + 10, "co-0000000") : NULL;
    int inflight = 0, rc = eid && agg && corr ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++) {
        char id[CM_UUID_LEN + 1], num[16];
        cm_uuid7(id);
        memcpy(eid, id, CM_UUID_LEN);
        snprintf(num, sizeof num, "%07d", i % 10000000);
        memcpy(agg + 3, num, 7);
        memcpy(corr + 3, num, 7);
        const char *argv[] = {"XADD", BUS, "*", "type", ev.type, "payload", payload.data, "ts", enc.ts};
        size_t lens[] = {4, strlen(BUS), 1, 4, strlen(ev.type), 7, payload.len, 2, strlen(enc.ts)};
        redisAppendCommandArgv(c, 9, argv, lens);
        if (++inflight == FILL_DEPTH || i == n - 1) {
            rc = replies_ok(c, inflight);
            inflight = 0;
        }
    }
    printf("  bus %s: %d entries, payload %zu bytes each\n", BUS, n, payload.len);
    cm_buf_free(&payload);
    es_encoded_free(&enc);
    json_decref(data);
    return rc;
}

/* The raw loop: XREADGROUP COUNT BATCH with the previous batch's XACK in
 * front, until a read comes back empty. Returns entries read or -1. */
static long long raw_drain(redisContext *c)
{
    freeReplyObject(redisCommand(c, "XGROUP DESTROY %s %s", BUS, RAW_GROUP));
    redisReply *r = redisCommand(c, "XGROUP CREATE %s %s 0", BUS, RAW_GROUP);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench runtime: XGROUP CREATE: %s\n", r ? r->str : c->errstr);
        freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    const char *rd[] = {"XREADGROUP", "GROUP", RAW_GROUP, "raw", "COUNT", "500", "STREAMS", BUS, ">"};
    const char **ack = cm_xcalloc(BATCH + 3, sizeof *ack);
    size_t *acklen = cm_xcalloc(BATCH + 3, sizeof *acklen);
    ack[0] = "XACK";
    ack[1] = BUS;
    ack[2] = RAW_GROUP;
    acklen[0] = 4;
    acklen[1] = strlen(BUS);
    acklen[2] = strlen(RAW_GROUP);
    redisReply *prev = NULL;   /* the batch whose ids are acked with the next read */
    long long total = 0;
    for (;;) {
        int nack = 0;
        const redisReply *entries = prev ? cm_reply_elem(cm_reply_elem(prev, 0), 1) : NULL;
        if (entries && entries->elements) {
            for (size_t i = 0; i < entries->elements; i++) {
                const redisReply *id = cm_reply_elem(entries->element[i], 0);
                ack[3 + i] = id->str;
                acklen[3 + i] = id->len;
            }
            redisAppendCommandArgv(c, 3 + (int)entries->elements, ack, acklen);
            nack = 1;
        }
        freeReplyObject(prev);
        prev = NULL;
        redisAppendCommandArgv(c, 9, rd, NULL);
        if (replies_ok(c, nack) != 0 || redisGetReply(c, (void **)&prev) != REDIS_OK) {
            total = -1;
            break;
        }
        if (prev->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "bench runtime: XREADGROUP: %s\n", prev->str);
            total = -1;
            break;
        }
        const redisReply *got = cm_reply_elem(cm_reply_elem(prev, 0), 1);
        if (!got || got->elements == 0)
            break;
        total += (long long)got->elements;
    }
    freeReplyObject(prev);
    free(ack);
    free(acklen);
    return total;
}

/* XINFO GROUPS numbers of `group` on BUS: entries-read and pending. */
static int group_state(redisContext *c, const char *group, long long *read, long long *pending)
{
    redisReply *r = redisCommand(c, "XINFO GROUPS %s", BUS);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return -1;
    }
    *read = *pending = -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *g = r->element[i];
        bool ours = false;
        long long rd = -1, pe = -1;
        for (size_t j = 0; g->type == REDIS_REPLY_ARRAY && j + 1 < g->elements; j += 2) {
            const redisReply *k = g->element[j], *v = g->element[j + 1];
            if (!cm_reply_is_str(k))
                continue;
            if (!strcmp(k->str, "name"))
                ours = cm_reply_is_str(v) && !strcmp(v->str, group);
            else if (!strcmp(k->str, "entries-read"))
                rd = cm_reply_ll(v, -1);
            else if (!strcmp(k->str, "pending"))
                pe = cm_reply_ll(v, -1);
        }
        if (ours) {
            *read = rd;
            *pending = pe;
        }
    }
    freeReplyObject(r);
    return 0;
}

/* CPU seconds (user + system) of this process or of its reaped children. */
static double cpu_s(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds redis-server has used (INFO cpu), or -1. */
static double redis_cpu_s(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *u = strstr(r->str, "used_cpu_user:"), *s = strstr(r->str, "used_cpu_sys:");
        if (u && s)
            v = strtod(u + 14, NULL) + strtod(s + 13, NULL);
    }
    freeReplyObject(r);
    return v;
}

/* The chorus-worker binary: CHORUS_WORKER_BIN, else beside this bench. */
static void worker_path(char *out, size_t outlen)
{
    const char *env = getenv("CHORUS_WORKER_BIN");
    if (env && *env) {
        snprintf(out, outlen, "%s", env);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(self, '/');
    if (slash)
        *slash = '\0';
    snprintf(out, outlen, "%s/../workers/chorus-worker", self);
}

/* Spawns the worker on r and times its drain of n entries. Returns seconds,
 * or -1 (worker log dumped). */
static double worker_drain(const tf_redis *r, redisContext *c, long long n)
{
    char bin[PATH_MAX + 32], url[320], log[320];
    worker_path(bin, sizeof bin);
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "bench runtime: no worker binary at %s (set CHORUS_WORKER_BIN)\n", bin);
        return -1;
    }
    snprintf(url, sizeof url, "REDIS_URL=%s", r->url);
    snprintf(log, sizeof log, "%s/worker.log", r->dir);
    const char *argv[] = {bin, "test", NULL};
    const char *env[] = {url, "BUS_STREAM=" BUS, "CONSUMER_NAME=bench-worker", "BATCH_SIZE=500", "BLOCK_MS=100",
                         "TEST_NOOP=1", "METRICS_PORT=0", "EVENT_RETENTION_DAYS=0", "LOG_LEVEL=warn", NULL};
    int64_t t0 = cm_mono_ns();
    pid_t pid = tf_spawn(argv, env, log);
    if (pid < 0) {
        fprintf(stderr, "bench runtime: cannot start %s: %s\n", bin, strerror(errno));
        return -1;
    }
    double secs = -1;
    long long read = -1, pending = -1;
    while ((cm_mono_ns() - t0) / 1000000 < DRAIN_TIMEOUT_MS) {
        if (group_state(c, WORKER_GROUP, &read, &pending) != 0)
            break;
        if (read == n && pending == 0) {
            secs = (double)(cm_mono_ns() - t0) / 1e9;
            break;
        }
        if (tf_wait_exit(pid, 0, NULL) == 0) {
            pid = -1;   /* died early */
            break;
        }
        cm_sleep_ms(5);
    }
    int status = -1;
    if (pid > 0) {
        tf_kill(pid, SIGTERM);
        if (tf_wait_exit(pid, 10000, &status) != 0) {
            tf_kill(pid, SIGKILL);
            tf_wait_exit(pid, 5000, &status);
        }
    }
    if (secs < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench runtime: worker drain failed (read %lld of %lld, pending %lld, status %d)\n", read,
                n, pending, status);
        tf_dump_file(log, "worker log");
        return -1;
    }
    return secs;
}

int main(void)
{
    tf_redis r;
    if (tf_redis_start(&r, NULL) != 0) {
        fprintf(stderr, "bench runtime: cannot start redis-server\n");
        return 1;
    }
    redisContext *c = tf_redis_connect(&r);
    int rc = 1;
    printf("runtime: drain %d entries, one consumer, batches of %d (2 cores shared with redis-server)\n",
           N_EVENTS, BATCH);
    int64_t t0 = cm_mono_ns();
    double fsrv = redis_cpu_s(c), fself = cpu_s(RUSAGE_SELF);
    if (fill(c, N_EVENTS) != 0)
        goto out;
    printf("  filled in %.1f s (CPU: bench %.1f s, redis %.1f s)\n", (double)(cm_mono_ns() - t0) / 1e9,
           cpu_s(RUSAGE_SELF) - fself, redis_cpu_s(c) - fsrv);

    /* Two rounds, raw and runtime alternating, best of each: the machine
     * may be shared. CPU per entry (client and server) is printed beside the
     * wall times: it says where the time goes whatever the load. */
    double raw_s = 1e9, wk_s = 1e9, raw_cpu = 0, wk_cpu = 0;
    for (int round = 1; round <= ROUNDS; round++) {
        double srv0 = redis_cpu_s(c), self0 = cpu_s(RUSAGE_SELF);
        t0 = cm_mono_ns();
        long long got = raw_drain(c);
        double s = (double)(cm_mono_ns() - t0) / 1e9;
        double srv1 = redis_cpu_s(c), self1 = cpu_s(RUSAGE_SELF);
        if (got != N_EVENTS) {
            fprintf(stderr, "bench runtime: raw loop read %lld of %d entries\n", got, N_EVENTS);
            goto out;
        }
        printf("  round %d raw XREADGROUP+XACK loop: %.2f s; CPU per entry: client %.2f us, redis %.2f us\n",
               round, s, (self1 - self0) * 1e6 / N_EVENTS, (srv1 - srv0) * 1e6 / N_EVENTS);
        raw_s = s < raw_s ? s : raw_s;
        raw_cpu += (self1 - self0) + (srv1 - srv0);

        freeReplyObject(redisCommand(c, "XGROUP DESTROY %s %s", BUS, WORKER_GROUP));
        double kids0 = cpu_s(RUSAGE_CHILDREN);
        s = worker_drain(&r, c, N_EVENTS);
        if (s < 0)
            goto out;
        double srv2 = redis_cpu_s(c), kids1 = cpu_s(RUSAGE_CHILDREN);
        printf("  round %d chorus-worker test (TEST_NOOP=1): %.2f s from spawn to nothing pending; CPU per entry: "
               "worker %.2f us, redis %.2f us\n",
               round, s, (kids1 - kids0) * 1e6 / N_EVENTS, (srv2 - srv1) * 1e6 / N_EVENTS);
        wk_s = s < wk_s ? s : wk_s;
        wk_cpu += (kids1 - kids0) + (srv2 - srv1);
    }
    figure("drain_per_s", N_EVENTS / wk_s, "ev/s");
    figure("raw_drain_per_s", N_EVENTS / raw_s, "ev/s");
    figure("drain_vs_raw", raw_s / wk_s, "ratio");
    /* the same ratio from CPU spent (client + redis-server, all rounds):
     * what the wall ratio would be on an idle machine */
    figure("drain_vs_raw_cpu", raw_cpu / wk_cpu, "ratio");
    rc = 0;
out:
    redisFree(c);
    tf_redis_stop(&r);
    return rc;
}
