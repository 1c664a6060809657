/* test_runtime.c - the worker runtime (workers/runner.c, reclaim.c) with real
 * `chorus-worker test` processes against a private redis-server.
 *
 * The test worker (workers/test_worker.c) does what each event's data says
 * (ok, fail N times, dead, hang, crash) and records its effects in Redis
 * (test:handled, test:attempts, test:attempt_ms:<event_id>,
 * test:by_consumer), so every test reads the outcome where a user would: in
 * Redis, in the group's pending list, in the dead-letter stream, on /metrics.
 *
 * Guarantees shown: an entry is acknowledged only after its handler
 * succeeded; a worker killed mid-batch (SIGKILL, or a crash between effect and
 * ack) loses nothing: its pending entries are finished by a peer or by a
 * restarted process via XAUTOCLAIM, and the duplicates are bounded by one
 * batch; transient failures are retried with growing delays, for a time
 * budget rather than a count, with the schedule kept across restarts; poison
 * is parked after MAX_DELIVERIES when that optional bound is set, or once
 * RETRY_BUDGET_MS is spent (undecodable entries at once) and the group goes on;
 * a copy restarted under its consumer name resumes what it held at once;
 * parked entries can be re-delivered, one or all (in bounded chunks); three
 * copies share the load; SIGTERM drains and leaves nothing pending; /metrics
 * moves; a Redis restart is survived; pending entries whose stream entry was
 * trimmed are counted and released.
 *
 * CHORUS_WORKER_BIN (meson env) names the chorus-worker binary. Small
 * CLAIM_IDLE_MS / RETRY_BASE_MS keep the file well under 90 s. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/names.h"
#include "common/redis.h"
#include "event_store/deadletter.h"
#include "event_store/store.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define BUS CM_BUS_STREAM_DEFAULT
#define GROUP "test-group"
#define DLQ BUS ".dlq." GROUP
#define RETRY BUS ".retry." GROUP

enum { MAX_WORKERS = 8, MAX_EVENTS = 3000 };

typedef struct worker {
    pid_t pid;            /* 0 once reaped */
    char name[64];        /* CONSUMER_NAME */
    char log[400];
} worker;

typedef struct event_ref {
    char event_id[37];
    char entry_id[48];
} event_ref;

static tf_redis R;
static redisContext *C;
static es_store *S;
static worker W[MAX_WORKERS];
static int NW;
static event_ref EV[MAX_EVENTS];   /* events appended by the current test, in order */
static int NEV;

/* ---- fixture ------------------------------------------------------------ */

static void connect_store(void)
{
    C = tf_redis_connect(&R);
    char err[256] = "";
    S = es_store_new(C, BUS, err, sizeof err);
    cr_assert_not_null(S, "es_store_new: %s", err);
}

static void start(const char *extra_conf)
{
    NW = 0;
    NEV = 0;
    cr_assert_eq(tf_redis_start(&R, extra_conf), 0, "cannot start redis-server");
    connect_store();
}

static void teardown(void)
{
    for (int i = 0; i < NW; i++)
    {
        if (W[i].pid > 0) {
            tf_kill(W[i].pid, SIGKILL);
            tf_wait_exit(W[i].pid, 5000, NULL);
        }
        unlink(W[i].log);
    }
    NW = 0;
    es_store_free(S);
    S = NULL;
    if (C)
        redisFree(C);
    C = NULL;
    tf_redis_stop(&R);
}

static void setup(void)
{
    start(NULL);
}

TestSuite(runtime, .init = setup, .fini = teardown, .timeout = 90);

static void dump_workers(void)
{
    for (int i = 0; i < NW; i++)
        tf_dump_file(W[i].log, W[i].name);
}

/* cr_assert that first shows the workers' logs. */
#define check(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            dump_workers();                                                                                  \
            cr_assert_fail(__VA_ARGS__);                                                                     \
        }                                                                                                    \
    } while (0)

/* Starts `chorus-worker test` as consumer `name` with the runtime's fast test
 * settings, overridden or extended by the NULL-terminated "K=V" list. */
static worker *spawn_worker(const char *name, ...)
{
    cr_assert_lt(NW, MAX_WORKERS);
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert_not_null(bin, "CHORUS_WORKER_BIN is not set (run through meson test)");
    worker *w = &W[NW++];
    snprintf(w->name, sizeof w->name, "%s", name);
    snprintf(w->log, sizeof w->log, "/tmp/chorus-rt-%d-%s.log", (int)getpid(), name);
    unlink(w->log);

    static char own[8][400];
    const char *env[32];
    int n = 0;
    va_list ap;
    va_start(ap, name);
    for (const char *kv = va_arg(ap, const char *); kv && n < 20; kv = va_arg(ap, const char *))
        env[n++] = kv;
    va_end(ap);
    snprintf(own[0], sizeof own[0], "REDIS_URL=%s", R.url);
    snprintf(own[1], sizeof own[1], "CONSUMER_NAME=%s", name);
    const char *defaults[] = {own[0], own[1], "CLAIM_IDLE_MS=1000", "RETRY_BASE_MS=50", "BLOCK_MS=100",
                              "METRICS_PORT=0", "TEST_HANDLE_DELAY_MS=0", "TEST_NOOP=0", NULL};
    int nextra = n;
    for (int d = 0; defaults[d]; d++) {
        size_t klen = strcspn(defaults[d], "=") + 1;
        bool overridden = false;
        for (int i = 0; i < nextra; i++)
            if (!strncmp(env[i], defaults[d], klen))
                overridden = true;
        if (!overridden)
            env[n++] = defaults[d];
    }
    env[n] = NULL;
    const char *argv[] = {bin, "test", NULL};
    w->pid = tf_spawn(argv, env, w->log);
    cr_assert_gt(w->pid, 0, "cannot start %s: %s", bin, strerror(errno));
    return w;
}

/* Waits for w to exit; returns its wait status. */
static int reap(worker *w, int timeout_ms)
{
    int status = 0;
    check(tf_wait_exit(w->pid, timeout_ms, &status) == 0, "worker %s did not exit within %d ms", w->name,
          timeout_ms);
    w->pid = 0;
    return status;
}

static void kill9(worker *w)
{
    cr_assert_eq(tf_kill(w->pid, SIGKILL), 0);
    int st = reap(w, 5000);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

/* True once worker ud logged that it is connected and reading. */
static bool log_has_connected(void *ud)
{
    const worker *w = ud;
    FILE *f = fopen(w->log, "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "\"connected to ") != NULL;
    fclose(f);
    return found;
}

/* ---- Redis helpers -------------------------------------------------------- */

/* Runs a command that must succeed; caller frees the reply. */
static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(C, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", C->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    return r;
}

static long long cmd_ll(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(C, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", C->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    long long v = cm_reply_ll(r, r->type == REDIS_REPLY_NIL ? 0 : -1);
    freeReplyObject(r);
    return v;
}

static long long handled(const char *event_id) { return cmd_ll("HGET test:handled %s", event_id); }
static long long attempts(const char *event_id) { return cmd_ll("HGET test:attempts %s", event_id); }
static long long by_consumer(const char *name) { return cmd_ll("HGET test:by_consumer %s", name); }
static long long nhandled(void) { return cmd_ll("HLEN test:handled"); }
static long long xlen(const char *stream) { return cmd_ll("XLEN %s", stream); }

/* Entries of the group pending on stream (all consumers). */
static long long group_pending(const char *stream)
{
    redisReply *r = redisCommand(C, "XPENDING %s %s", stream, GROUP);
    cr_assert_not_null(r);
    long long n = r->type == REDIS_REPLY_ARRAY ? cm_reply_ll(cm_reply_elem(r, 0), 0) : 0;   /* NOGROUP: 0 */
    freeReplyObject(r);
    return n;
}

/* Entries of stream pending for one consumer. */
static long long consumer_pending(const char *stream, const char *consumer)
{
    redisReply *r = cmd("XPENDING %s %s - + 1000000 %s", stream, GROUP, consumer);
    long long n = (long long)r->elements;
    freeReplyObject(r);
    return n;
}

/* Appends n events with data `data_json` (one aggregate per 16 events),
 * recording their ids in EV[NEV...]. Returns the index of the first. */
static int append_events(const char *data_json, int n)
{
    cr_assert_leq(NEV + n, MAX_EVENTS);
    json_error_t jerr;
    json_t *data = json_loads(data_json, 0, &jerr);
    cr_assert_not_null(data, "bad test data %s", data_json);
    int first = NEV;
    static unsigned agg_seq;
    while (n > 0) {
        size_t k = n < ES_MAX_BATCH ? (size_t)n : ES_MAX_BATCH;
        es_new_event evs[ES_MAX_BATCH];
        for (size_t i = 0; i < k; i++)
            evs[i] = (es_new_event){.type = "CheckoutInitiated", .data = data};
        char agg[64];
        snprintf(agg, sizeof agg, "rt-%d-%u", (int)getpid(), agg_seq++);
        es_append_req req = {.aggregate = "checkout", .aggregate_id = agg, .producer = "test-runtime",
                             .expected_version = ES_ANY_VERSION, .events = evs, .n = k};
        es_append_res res;
        int rc = es_append(S, &req, &res);
        cr_assert_eq(rc, ES_OK, "es_append: %s", es_store_errstr(S));
        for (size_t i = 0; i < k; i++, NEV++) {
            snprintf(EV[NEV].event_id, sizeof EV[NEV].event_id, "%s", res.pos[i].event_id);
            snprintf(EV[NEV].entry_id, sizeof EV[NEV].entry_id, "%s", res.pos[i].entry_id);
        }
        n -= (int)k;
    }
    json_decref(data);
    return first;
}

/* "ms-seq" entry ids compare numerically. */
static int id_cmp(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%llu-%llu", &am, &as);
    sscanf(b, "%llu-%llu", &bm, &bs);
    return am != bm ? (am < bm ? -1 : 1) : as != bs ? (as < bs ? -1 : 1) : 0;
}

/* Value of field `key` in a flat [k, v, k, v...] reply, or NULL. */
static const redisReply *field(const redisReply *kv, const char *key)
{
    for (size_t i = 0; kv && kv->type == REDIS_REPLY_ARRAY && i + 1 < kv->elements; i += 2)
        if (cm_reply_is_str(kv->element[i]) && !strcmp(kv->element[i]->str, key))
            return kv->element[i + 1];
    return NULL;
}

/* XINFO GROUPS field of our group on the bus, as a number (-1 when absent). */
static long long group_info_ll(const char *key)
{
    redisReply *r = cmd("XINFO GROUPS %s", BUS);
    long long v = -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *name = field(r->element[i], "name");
        if (name && cm_reply_is_str(name) && !strcmp(name->str, GROUP))
            v = cm_reply_ll(field(r->element[i], key), -1);
    }
    freeReplyObject(r);
    return v;
}

/* ---- waiting -------------------------------------------------------------- */

typedef struct probe {
    long long (*fn)(const char *arg);
    const char *arg;
    long long want;
    bool at_most;   /* wait for fn <= want instead of >= */
} probe;

static bool probe_ok(void *ud)
{
    const probe *p = ud;
    long long v = p->fn(p->arg);
    return p->at_most ? v <= p->want : v >= p->want;
}

static long long p_hlen(const char *key) { return cmd_ll("HLEN %s", key); }
static long long p_xlen(const char *key) { return xlen(key); }
static long long p_pending(const char *stream) { return group_pending(stream); }
static long long p_handled(const char *event_id) { return handled(event_id); }
static long long p_by_consumer(const char *name) { return by_consumer(name); }
static long long p_attempts(const char *event_id) { return attempts(event_id); }

static bool wait_ge(long long (*fn)(const char *), const char *arg, long long want, int timeout_ms)
{
    probe p = {fn, arg, want, false};
    return tf_wait_until(probe_ok, &p, timeout_ms);
}

static bool wait_le(long long (*fn)(const char *), const char *arg, long long want, int timeout_ms)
{
    probe p = {fn, arg, want, true};
    return tf_wait_until(probe_ok, &p, timeout_ms);
}

/* Every event of EV[from, to) handled, and nothing pending in the group. */
static void wait_all_handled(int from, int to, int timeout_ms)
{
    long long want = to - from;
    check(wait_ge(p_hlen, "test:handled", want, timeout_ms), "only %lld of %lld events handled", nhandled(),
          want);
    check(wait_le(p_pending, BUS, 0, timeout_ms), "%lld entries still pending", group_pending(BUS));
}

/* ---- /metrics over a real socket ------------------------------------------ */

/* GETs path from 127.0.0.1:port; returns the whole answer (caller frees) or
 * NULL when nothing listens yet. */
static char *http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return NULL;
    }
    char req[256];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    cr_assert_eq(write(fd, req, (size_t)rl), rl);
    size_t cap = 65536, len = 0;
    char *out = malloc(cap);
    cr_assert_not_null(out);
    for (;;) {
        if (len + 4096 > cap)
            out = realloc(out, cap *= 2);
        cr_assert_not_null(out);
        ssize_t n = read(fd, out + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    out[len] = '\0';
    return out;
}

/* Sum of every series of family `name` on /metrics; -1 if unreachable. */
static long long metric_sum(int port, const char *name)
{
    char *body = http_get(port, "/metrics");
    if (!body)
        return -1;
    long long sum = 0;
    size_t nl = strlen(name);
    for (char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, nl) != 0 || (line[nl] != '{' && line[nl] != ' '))
            continue;
        char *sp = strchr(line, ' ');
        if (line[nl] == '{')
            sp = strstr(line, "} ") ? strstr(line, "} ") + 1 : NULL;
        if (sp)
            sum += strtoll(sp + 1, NULL, 10);
    }
    free(body);
    return sum;
}

static int g_metrics_port;
static long long p_metric(const char *name) { return metric_sum(g_metrics_port, name); }

/* ---- tests ---------------------------------------------------------------- */

/* While a slow batch is in progress, no entry leaves the pending list before
 * its effect is recorded; handled entries stay pending until the batch's
 * acks go out, and in the end every entry is handled once and acked. */
Test(runtime, batch_acknowledged_only_after_handler_success)
{
    append_events("{\"mode\":\"ok\"}", 6);
    spawn_worker("ack-1", "BATCH_SIZE=10", "TEST_HANDLE_DELAY_MS=150", NULL);
    long long deadline = tf_now_ms() + 15000;
    int mid_batch_seen = 0, polls = 0;
    for (;;) {
        /* one atomic snapshot: delivered position, pending ids, effects */
        redisAppendCommand(C, "MULTI");
        redisAppendCommand(C, "XINFO GROUPS %s", BUS);
        redisAppendCommand(C, "XPENDING %s %s - + 100", BUS, GROUP);
        redisAppendCommand(C, "HGETALL test:handled");
        redisAppendCommand(C, "EXEC");
        redisReply *r = NULL;
        for (int i = 0; i < 5; i++) {
            freeReplyObject(r);
            r = NULL;
            cr_assert_eq(redisGetReply(C, (void **)&r), REDIS_OK);
        }
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "EXEC failed");
        const redisReply *groups = r->element[0], *pend = r->element[1], *eff = r->element[2];
        if (groups->type != REDIS_REPLY_ARRAY || pend->type != REDIS_REPLY_ARRAY) {   /* no group yet */
            freeReplyObject(r);
            cr_assert_lt(tf_now_ms(), deadline, "the worker never created its group");
            tf_sleep_ms(10);
            continue;
        }
        const char *last = "0-0";
        for (size_t g = 0; g < groups->elements; g++) {
            const redisReply *name = field(groups->element[g], "name");
            const redisReply *ld = field(groups->element[g], "last-delivered-id");
            if (name && !strcmp(name->str, GROUP) && cm_reply_is_str(ld))
                last = ld->str;
        }
        int nh = 0;
        for (int i = 0; i < NEV; i++) {
            bool is_pending = false, was_handled = field(eff, EV[i].event_id) != NULL;
            for (size_t p = 0; p < pend->elements; p++)
                if (!strcmp(pend->element[p]->element[0]->str, EV[i].entry_id))
                    is_pending = true;
            bool delivered = id_cmp(EV[i].entry_id, last) <= 0;
            nh += was_handled;
            check(!delivered || is_pending || was_handled,
                  "entry %s was acknowledged before its handler succeeded", EV[i].entry_id);
        }
        if (nh > 0 && nh < NEV && pend->elements == (size_t)NEV)
            mid_batch_seen++;
        bool done = nh == NEV && pend->elements == 0;
        freeReplyObject(r);
        polls++;
        if (done)
            break;
        check(tf_now_ms() < deadline, "batch not finished in time (%d handled)", nh);
        tf_sleep_ms(10);
    }
    cr_log_info("%d snapshots, %d of them mid-batch with handled entries still pending", polls, mid_batch_seen);
    check(mid_batch_seen > 0, "never saw handled entries still pending mid-batch");
    for (int i = 0; i < NEV; i++)
        check(handled(EV[i].event_id) == 1, "event %d handled %lld times", i, handled(EV[i].event_id));
}

/* A handler that runs longer than CLAIM_IDLE_MS keeps its entry fresh
 * (wk_touch): a live peer polling XAUTOCLAIM never takes it, so the event is
 * delivered and handled exactly once. */
Test(runtime, long_handler_not_stolen_by_a_peer)
{
    int h = append_events("{\"mode\":\"hang\",\"ms\":2500}", 1);
    spawn_worker("slow-1", NULL);
    spawn_worker("slow-2", NULL);
    check(wait_ge(p_handled, EV[h].event_id, 1, 15000), "the long handler never finished");
    check(wait_le(p_pending, BUS, 0, 5000), "entry left pending");
    /* acknowledged now, so no later claim can happen; a steal during the
     * hang would have recorded attempt 2 at once */
    check(attempts(EV[h].event_id) == 1, "delivered %lld times: a live consumer's entry was claimed",
          attempts(EV[h].event_id));
    check(handled(EV[h].event_id) == 1, "handled %lld times", handled(EV[h].event_id));
}

/* Kills one worker mid-batch; then `finisher` (already running, or started
 * after the kill) takes its entries over. Returns after checking that every
 * event was handled, none lost, duplicates within one batch. */
static void killed_mid_batch(bool peer_running)
{
    enum { N = 500, BATCH = 50 };
    int first = append_events("{\"mode\":\"ok\"}", N);
    const char *knobs[] = {"BATCH_SIZE=50", "TEST_HANDLE_DELAY_MS=2"};
    worker *a = spawn_worker("victim", knobs[0], knobs[1], NULL);
    if (peer_running)
        spawn_worker("peer", knobs[0], knobs[1], NULL);
    /* well into its third batch */
    check(wait_ge(p_by_consumer, "victim", 2 * BATCH + BATCH / 2, 20000), "victim handled only %lld", by_consumer("victim"));
    kill9(a);
    long long left = consumer_pending(BUS, "victim");
    long long done_by_victim = by_consumer("victim");
    cr_log_info("victim killed after %lld effects with %lld entries pending", done_by_victim, left);
    check(left > 0 && left <= BATCH, "the dead consumer should hold its batch pending, holds %lld", left);
    check(nhandled() < N, "the stream was already drained: not mid-way");
    if (!peer_running)
        spawn_worker("restarted", knobs[0], knobs[1], NULL);

    wait_all_handled(first, first + N, 30000);
    long long twice = 0, effects = 0;
    for (int i = first; i < first + N; i++) {
        long long h = handled(EV[i].event_id);
        check(h >= 1, "event %d lost", i);
        twice += h > 1;
        effects += h;
    }
    cr_log_info("%s: %d events, %lld effects, %lld handled twice", peer_running ? "peer" : "restart", N,
                effects, twice);
    check(consumer_pending(BUS, "victim") == 0, "the dead consumer still holds entries");
    check(twice <= BATCH, "%lld duplicates: more than one batch (%d)", twice, BATCH);
    const char *finisher = peer_running ? "peer" : "restarted";
    check(by_consumer(finisher) >= left, "%s did not take the %lld entries over", finisher, left);
}

Test(runtime, worker_killed_mid_batch_entries_finished_by_running_peer)
{
    killed_mid_batch(true);
}

Test(runtime, worker_killed_mid_batch_entries_finished_after_restart)
{
    killed_mid_batch(false);
}

/* A process that dies between applying an effect and acknowledging it gets
 * the entry (and the rest of its batch) handled again: effects must be
 * idempotent, and here they are counted twice. */
Test(runtime, crash_between_effect_and_ack_is_redelivered)
{
    int before = append_events("{\"mode\":\"ok\"}", 3);
    int crash = append_events("{\"mode\":\"crash\"}", 1);
    int after = append_events("{\"mode\":\"ok\"}", 3);
    worker *w = spawn_worker("crash-1", "BATCH_SIZE=10", NULL);
    int st = reap(w, 15000);
    check(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the worker should have crashed (status %d)", st);
    check(handled(EV[crash].event_id) == 1, "the effect should be recorded before the crash");
    check(consumer_pending(BUS, "crash-1") == 7, "the whole batch should stay pending, %lld do",
          consumer_pending(BUS, "crash-1"));
    for (int i = after; i < after + 3; i++)
        check(handled(EV[i].event_id) == 0, "events after the crash were not reached");

    spawn_worker("crash-2", "BATCH_SIZE=10", NULL);
    wait_all_handled(0, NEV, 15000);
    check(handled(EV[crash].event_id) == 2, "crashed event handled %lld times, want 2",
          handled(EV[crash].event_id));
    check(attempts(EV[crash].event_id) == 2, "crashed event delivered %lld times, want 2",
          attempts(EV[crash].event_id));
    for (int i = before; i < before + 3; i++)
        check(handled(EV[i].event_id) == 2, "handled-not-acked event %d handled %lld times, want 2", i,
              handled(EV[i].event_id));
    for (int i = after; i < after + 3; i++)
        check(handled(EV[i].event_id) == 1, "event %d handled %lld times, want 1", i, handled(EV[i].event_id));
    check(consumer_pending(BUS, "crash-1") == 0, "crashed consumer still holds entries");
}

/* fail x3 then succeed: 4 attempts, 1 effect, and the waits between attempts
 * follow RETRY_BASE_MS * 2^k with jitter in [50%, 100%]. */
Test(runtime, transient_failures_retried_with_growing_delays)
{
    enum { BASE = 100 };
    int e = append_events("{\"mode\":\"fail\",\"times\":3}", 1);
    int ok = append_events("{\"mode\":\"ok\"}", 1);
    spawn_worker("retry-1", "RETRY_BASE_MS=100", "CLAIM_IDLE_MS=4000", NULL);
    check(wait_ge(p_handled, EV[e].event_id, 1, 15000), "the failing event never succeeded");
    check(wait_le(p_pending, BUS, 0, 5000), "entries left pending");
    check(handled(EV[ok].event_id) == 1, "the event behind the failing one was not handled");
    check(attempts(EV[e].event_id) == 4, "attempts %lld, want 4", attempts(EV[e].event_id));
    check(handled(EV[e].event_id) == 1, "effect applied %lld times", handled(EV[e].event_id));

    redisReply *r = cmd("LRANGE test:attempt_ms:%s 0 -1", EV[e].event_id);
    cr_assert_eq(r->elements, 4);
    long long t[4], gap[3];
    for (int i = 0; i < 4; i++)
        t[i] = cm_reply_ll(r->element[i], 0);
    freeReplyObject(r);
    for (int k = 0; k < 3; k++) {
        gap[k] = t[k + 1] - t[k];
        cr_log_info("gap %d: %lld ms (nominal %d)", k, gap[k], BASE << k);
        check(gap[k] >= BASE * (1 << k) / 2, "gap %d is %lld ms, below 0.5 x %d", k, gap[k], BASE << k);
    }
    check(gap[2] > gap[0], "delays did not grow: %lld then %lld", gap[0], gap[2]);
}

/* fail x5 with MAX_DELIVERIES=5: parked after the 5th attempt with reason and
 * count, acknowledged, the group goes on; re-delivered from the dead-letter
 * stream, the 6th attempt succeeds. */
Test(runtime, poison_parked_after_max_deliveries_then_redelivered)
{
    int p = append_events("{\"mode\":\"fail\",\"times\":5}", 1);
    int o1 = append_events("{\"mode\":\"ok\"}", 1);
    spawn_worker("poison-1", "MAX_DELIVERIES=5", "RETRY_BASE_MS=20", NULL);
    check(wait_ge(p_xlen, DLQ, 1, 15000), "nothing was dead-lettered");
    int o2 = append_events("{\"mode\":\"ok\"}", 1);
    check(wait_ge(p_handled, EV[o2].event_id, 1, 10000), "the group stopped after the poison entry");
    check(handled(EV[o1].event_id) == 1, "event behind the poison not handled");
    check(handled(EV[p].event_id) == 0 && attempts(EV[p].event_id) == 5, "poison: handled %lld, attempts %lld",
          handled(EV[p].event_id), attempts(EV[p].event_id));
    check(wait_le(p_pending, BUS, 0, 5000), "the parked entry is still pending");

    redisReply *r = cmd("XRANGE %s - +", DLQ);
    check(r->elements == 1, "%zu dead letters, want 1", r->elements);
    const redisReply *f = r->element[0]->element[1];
    char dl_id[48];
    snprintf(dl_id, sizeof dl_id, "%s", r->element[0]->element[0]->str);
    check(!strcmp(field(f, "group")->str, GROUP), "group field");
    check(!strcmp(field(f, "attempts")->str, "5"), "attempts field %s", field(f, "attempts")->str);
    check(!strcmp(field(f, "entry_id")->str, EV[p].entry_id), "entry_id field");
    check(!strcmp(field(f, "stream")->str, BUS), "stream field");
    check(!strcmp(field(f, "type")->str, "CheckoutInitiated"), "type field");
    check(strstr(field(f, "payload")->str, EV[p].event_id) != NULL, "payload kept");
    const char *reason = field(f, "reason")->str;
    cr_log_info("dead letter reason: %s", reason);
    check(strstr(reason, "max deliveries") && strstr(reason, "attempt 5"), "reason: %s", reason);
    freeReplyObject(r);

    char err[256];
    cr_assert_eq(es_dlq_retry(C, BUS, GROUP, "1-1", err, sizeof err), ES_ENOTFOUND);
    cr_assert_eq(es_dlq_retry(C, BUS, GROUP, dl_id, err, sizeof err), ES_OK, "%s", err);
    cr_assert_eq(xlen(DLQ), 0);
    check(wait_ge(p_handled, EV[p].event_id, 1, 10000), "the re-delivered entry was not handled");
    check(wait_le(p_pending, RETRY, 0, 5000), "the re-delivered entry stays pending");
    check(attempts(EV[p].event_id) == 6, "attempts %lld, want 6", attempts(EV[p].event_id));
    check(handled(EV[p].event_id) == 1, "handled %lld", handled(EV[p].event_id));
    check(xlen(DLQ) == 0, "parked again");
}

/* A dead letter that can never be re-delivered (parked undecodable, no type
 * or payload) stays put, and the bulk retry reads past it to the ones that
 * can: it used to answer 0 forever. */
Test(runtime, bulk_retry_reads_past_an_entry_it_cannot_redeliver)
{
    freeReplyObject(cmd("XADD %s * reason undecodable attempts 1", DLQ));
    freeReplyObject(cmd("XADD %s * type CheckoutInitiated payload {} ts 1 entry_id 1-0 reason r", DLQ));
    freeReplyObject(cmd("XADD %s * type CheckoutInitiated payload {} ts 2 entry_id 2-0 reason r", DLQ));
    char err[256] = "";
    cr_assert_eq(es_dlq_retry_oldest(C, BUS, GROUP, 1, err, sizeof err), 1, "%s", err);
    cr_assert_eq(xlen(RETRY), 1);
    cr_assert_eq(es_dlq_retry_all(C, BUS, GROUP, 100, err, sizeof err), 1, "%s", err);
    cr_assert_eq(xlen(RETRY), 2);
    cr_assert_eq(xlen(DLQ), 1, "the entry that cannot be re-delivered stays parked");
    cr_assert_eq(es_dlq_retry_all(C, BUS, GROUP, 100, err, sizeof err), 0, "%s", err);
}

/* 1,000 refused entries parked at once; es_dlq_retry_all moves them all back
 * with chunks of at most 100 per script call, and the group sees each again. */
Test(runtime, dlq_retry_all_moves_a_large_dead_letter_stream_in_bounded_chunks)
{
    enum { N = 1000 };
    append_events("{\"mode\":\"dead\"}", N);
    worker *w = spawn_worker("dlq-1", "BATCH_SIZE=200", NULL);
    check(wait_ge(p_xlen, DLQ, N, 60000), "only %lld of %d parked", xlen(DLQ), N);
    check(wait_le(p_pending, BUS, 0, 5000), "parked entries still pending");
    check(cmd_ll("HLEN test:attempts") == N, "attempts recorded for %lld", cmd_ll("HLEN test:attempts"));
    tf_kill(w->pid, SIGTERM);
    int st = reap(w, 10000);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM exit status %d", st);

    freeReplyObject(cmd("CONFIG RESETSTAT"));
    char err[256] = "";
    long long moved = es_dlq_retry_all(C, BUS, GROUP, 1000000, err, sizeof err);
    cr_assert_eq(moved, N, "moved %lld: %s", moved, err);
    redisReply *info = cmd("INFO commandstats");
    long long calls = 0;
    for (const char *k = info->str; (k = strstr(k, "cmdstat_eval")) != NULL; k++) {
        const char *c = strstr(k, "calls=");
        if (c)
            calls += strtoll(c + 6, NULL, 10);
    }
    freeReplyObject(info);
    cr_log_info("retry_all moved %lld dead letters in %lld script calls", moved, calls);
    cr_assert(calls >= N / 100 && calls <= N / 100 + 1, "%lld script calls for %d entries", calls, N);
    cr_assert_eq(xlen(DLQ), 0);
    cr_assert_eq(xlen(RETRY), N);

    spawn_worker("dlq-2", "BATCH_SIZE=200", NULL);
    check(wait_ge(p_xlen, DLQ, N, 60000), "only %lld re-delivered and parked again", xlen(DLQ));
    check(wait_le(p_pending, RETRY, 0, 5000), "re-delivered entries still pending");
    for (int i = 0; i < N; i++)
        check(attempts(EV[i].event_id) == 2, "event %d seen %lld times, want 2", i, attempts(EV[i].event_id));
    redisReply *r = cmd("XRANGE %s - + COUNT 1", DLQ);
    check(!strcmp(field(r->element[0]->element[1], "stream")->str, RETRY), "parked from the redelivery stream");
    freeReplyObject(r);
}

/* Entries a foreign producer wrote wrong are parked on their first delivery,
 * with the decoder's reason; the handler never sees them; the worker goes on. */
Test(runtime, undecodable_foreign_entries_parked_at_once)
{
    spawn_worker("junk-1", NULL);
    redisReply *ids[3];
    ids[0] = cmd("XADD %s * foo bar", BUS);
    ids[1] = cmd("XADD %s * type CheckoutInitiated payload %s ts 1.5", BUS, "{not json");
    const char *v2 = "{\"event_id\":\"0190f8a2-0000-7000-8000-000000000001\",\"type\":\"CheckoutInitiated\","
                     "\"schema\":2,\"aggregate\":\"checkout\",\"aggregate_id\":\"x\",\"seq\":1,"
                     "\"correlation_id\":\"x\",\"causation_id\":null,\"producer\":\"foreign\","
                     "\"emitted_at\":1.5,\"data\":{}}";
    ids[2] = cmd("XADD %s * type CheckoutInitiated payload %s ts 1.5", BUS, v2);
    int ok = append_events("{\"mode\":\"ok\"}", 1);
    check(wait_ge(p_handled, EV[ok].event_id, 1, 15000), "the worker stopped at the junk");
    check(wait_ge(p_xlen, DLQ, 3, 5000), "%lld parked, want 3", xlen(DLQ));
    check(wait_le(p_pending, BUS, 0, 5000), "junk left pending");
    cr_assert_eq(nhandled(), 1);
    cr_assert_eq(cmd_ll("HLEN test:attempts"), 1, "the handler saw a junk entry");

    const char *want[3] = {"missing field type", "not JSON", "schema"};
    redisReply *r = cmd("XRANGE %s - +", DLQ);
    cr_assert_eq(r->elements, 3);
    for (int i = 0; i < 3; i++) {
        const redisReply *f = r->element[i]->element[1];
        const char *reason = field(f, "reason")->str;
        cr_log_info("parked %s: %s", ids[i]->str, reason);
        check(!strcmp(field(f, "entry_id")->str, ids[i]->str), "dead letter %d is not entry %s", i, ids[i]->str);
        check(!strcmp(field(f, "attempts")->str, "1"), "attempts %s, want 1", field(f, "attempts")->str);
        check(strstr(reason, want[i]) != NULL, "reason '%s' does not name '%s'", reason, want[i]);
    }
    freeReplyObject(r);
    for (int i = 0; i < 3; i++)
        freeReplyObject(ids[i]);
}

/* Three processes of one worker: every entry handled exactly once (nobody
 * died, so nothing is stolen from a live consumer) and each did > 10%. */
Test(runtime, three_copies_share_a_group_every_entry_handled_load_spread)
{
    enum { N = 3000 };
    const char *names[3] = {"copy-1", "copy-2", "copy-3"};
    for (int i = 0; i < 3; i++)
        spawn_worker(names[i], "BATCH_SIZE=50", "TEST_HANDLE_DELAY_MS=1", NULL);
    /* let all three connect before the work arrives (Redis 7.0 lists a
     * consumer only once it was delivered something, so ask their logs) */
    for (int i = 0; i < 3; i++)
        check(tf_wait_until(log_has_connected, &W[i], 15000), "%s never connected", names[i]);
    append_events("{\"mode\":\"ok\"}", N);
    wait_all_handled(0, N, 60000);
    long long sum = 0;
    for (int i = 0; i < 3; i++) {
        long long n = by_consumer(names[i]);
        cr_log_info("%s handled %lld of %d", names[i], n, N);
        check(n > N / 10, "%s handled only %lld", names[i], n);
        sum += n;
    }
    check(sum == N, "%lld effects for %d events: a live consumer's entries were taken", sum, N);
}

/* SIGTERM mid-stream: the batch in hand is finished and acknowledged, the
 * process exits 0, and the consumer holds nothing pending. */
Test(runtime, sigterm_during_busy_stream_exits_0_nothing_pending_for_that_consumer)
{
    enum { N = 3000 };
    append_events("{\"mode\":\"ok\"}", N);
    worker *w = spawn_worker("term-1", "BATCH_SIZE=100", "TEST_HANDLE_DELAY_MS=1", NULL);
    check(wait_ge(p_hlen, "test:handled", 250, 20000), "the worker did not get going");
    cr_assert_eq(tf_kill(w->pid, SIGTERM), 0);
    int st = reap(w, 15000);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d after SIGTERM", st);
    long long n = nhandled(), read = group_info_ll("entries-read");
    cr_log_info("stopped after %lld of %d events; %lld delivered to the group", n, N, read);
    check(n < N, "the stream was drained before SIGTERM: not a busy stream");
    check(consumer_pending(BUS, "term-1") == 0, "%lld entries left pending", consumer_pending(BUS, "term-1"));
    check(read == n, "%lld entries delivered but %lld handled: the batch in hand was dropped", read, n);
    for (int i = 0; i < n; i++)
        check(handled(EV[i].event_id) == 1, "event %d handled %lld times", i, handled(EV[i].event_id));
}

/* /metrics (GET over a socket) shows consumed and dead-letter counters move
 * with the work done, and /health answers ok. */
Test(runtime, metrics_counters_move)
{
    g_metrics_port = tf_free_port();
    char port_env[32];
    snprintf(port_env, sizeof port_env, "METRICS_PORT=%d", g_metrics_port);
    spawn_worker("metrics-1", port_env, NULL);
    check(wait_ge(p_metric, "events_consumed_total", 0, 15000), "/metrics never answered");
    long long c0 = p_metric("events_consumed_total"), d0 = p_metric("dead_letters_total");
    cr_assert_eq(c0, 0);
    cr_assert_eq(d0, 0);
    append_events("{\"mode\":\"ok\"}", 10);
    append_events("{\"mode\":\"dead\"}", 2);
    check(wait_ge(p_metric, "events_consumed_total", 12, 15000), "events_consumed_total stuck at %lld",
          p_metric("events_consumed_total"));
    check(wait_ge(p_metric, "dead_letters_total", 2, 15000), "dead_letters_total stuck at %lld",
          p_metric("dead_letters_total"));
    cr_assert_eq(p_metric("events_consumed_total"), 12);
    cr_assert_eq(p_metric("dead_letters_total"), 2);
    char *health = http_get(g_metrics_port, "/health");
    cr_assert_not_null(health);
    check(strstr(health, " 200 ") && strstr(health, "\"ok\""), "health: %s", health);
    free(health);
}

/* redis-server dies (kill -9) and comes back from its AOF: the worker
 * reconnects on its own and handles what is appended afterwards. */
Test(runtime, worker_reconnects_after_redis_restart)
{
    /* this one needs a durable server: replace the suite's */
    es_store_free(S);
    S = NULL;
    redisFree(C);
    C = NULL;
    tf_redis_stop(&R);
    start("appendonly yes\nappendfsync always\n");
    worker *w = spawn_worker("restart-1", NULL);
    append_events("{\"mode\":\"ok\"}", 20);
    wait_all_handled(0, 20, 15000);

    es_store_free(S);
    S = NULL;
    redisFree(C);
    C = NULL;
    cr_assert_eq(tf_redis_kill9(&R), 0);
    cr_assert_eq(tf_redis_restart(&R), 0);
    connect_store();
    cr_assert_eq(nhandled(), 20, "effects lost with appendfsync always");

    int later = append_events("{\"mode\":\"ok\"}", 20);
    check(wait_ge(p_hlen, "test:handled", 40, 30000), "events after the restart not handled (%lld)",
          nhandled());
    check(wait_le(p_pending, BUS, 0, 5000), "entries left pending");
    for (int i = later; i < later + 20; i++)
        check(handled(EV[i].event_id) == 1, "event %d handled %lld times", i, handled(EV[i].event_id));
    check(tf_wait_exit(w->pid, 0, NULL) != 0, "the worker exited instead of reconnecting");
}

/* Entries pending on a dead consumer whose stream entries were trimmed away:
 * XAUTOCLAIM reports them deleted; the worker counts them on /metrics and
 * they leave the pending list; the surviving ones are taken over. */
Test(runtime, trimmed_pending_entries_counted_and_released)
{
    freeReplyObject(cmd("XGROUP CREATE %s %s 0 MKSTREAM", BUS, GROUP));
    append_events("{\"mode\":\"ok\"}", 10);
    redisReply *r = cmd("XREADGROUP GROUP %s ghost COUNT 10 STREAMS %s >", GROUP, BUS);
    freeReplyObject(r);
    cr_assert_eq(consumer_pending(BUS, "ghost"), 10);
    cr_assert_eq(cmd_ll("XTRIM %s MINID %s", BUS, EV[6].entry_id), 6);

    g_metrics_port = tf_free_port();
    char port_env[32];
    snprintf(port_env, sizeof port_env, "METRICS_PORT=%d", g_metrics_port);
    spawn_worker("trim-1", port_env, NULL);
    check(wait_le(p_pending, BUS, 0, 15000), "%lld entries still pending", group_pending(BUS));
    check(wait_ge(p_metric, "worker_trimmed_pending_total", 6, 5000), "trimmed count %lld, want 6",
          p_metric("worker_trimmed_pending_total"));
    cr_assert_eq(p_metric("worker_trimmed_pending_total"), 6);
    cr_assert_eq(p_metric("worker_claimed_total"), 4);
    cr_assert_eq(consumer_pending(BUS, "ghost"), 0);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(handled(EV[i].event_id), 0);
    for (int i = 6; i < 10; i++)
        check(handled(EV[i].event_id) == 1, "surviving entry %d handled %lld times", i, handled(EV[i].event_id));
}

/* ---- time budgets, consumer names, resume --------------------------------- */

/* Seven failures in a row (more than the old count limit of 5) are waited
 * out with the defaults: the eighth attempt succeeds, nothing is parked. */
Test(runtime, failures_retried_past_any_delivery_count_not_parked)
{
    int e = append_events("{\"mode\":\"fail\",\"times\":7}", 1);
    spawn_worker("count-1", NULL);
    check(wait_ge(p_handled, EV[e].event_id, 1, 30000), "the failing event never succeeded (attempts %lld)",
          attempts(EV[e].event_id));
    check(wait_le(p_pending, BUS, 0, 5000), "entry left pending");
    check(attempts(EV[e].event_id) == 8, "attempts %lld, want 8", attempts(EV[e].event_id));
    check(xlen(DLQ) == 0, "%lld dead letters: failures were counted, not timed", xlen(DLQ));
}

/* An event that always fails is parked once RETRY_BUDGET_MS is spent, never
 * before: its first attempt and the dead letter are at least the budget
 * apart, and the reason names the budget and the last failure. */
Test(runtime, retry_budget_spent_parks_with_its_reason_never_before)
{
    enum { BUDGET = 1500 };
    int e = append_events("{\"mode\":\"fail\"}", 1);
    int ok = append_events("{\"mode\":\"ok\"}", 1);
    spawn_worker("budget-1", "RETRY_BUDGET_MS=1500", NULL);
    check(wait_ge(p_xlen, DLQ, 1, 20000), "never parked (attempts %lld)", attempts(EV[e].event_id));
    check(handled(EV[ok].event_id) == 1, "the neighbour was not handled");
    redisReply *t = cmd("LINDEX test:attempt_ms:%s 0", EV[e].event_id);
    long long first = cm_reply_ll(t, 0);
    freeReplyObject(t);
    redisReply *r = cmd("XRANGE %s - +", DLQ);
    cr_assert_eq(r->elements, 1);
    long long parked = strtoll(r->element[0]->element[0]->str, NULL, 10);
    const char *reason = field(r->element[0]->element[1], "reason")->str;
    cr_log_info("parked %lld ms after the first attempt, after %lld attempts: %s", parked - first,
                attempts(EV[e].event_id), reason);
    /* (20 ms: the handler records its first attempt a moment after the delivery) */
    check(parked - first >= BUDGET - 20, "parked %lld ms after the first attempt, budget %d", parked - first,
          BUDGET);
    check(strstr(reason, "retry budget") && strstr(reason, "injected failure"), "reason: %s", reason);
    check(attempts(EV[e].event_id) > 5, "only %lld attempts", attempts(EV[e].event_id));
    freeReplyObject(r);
    check(wait_le(p_pending, BUS, 0, 5000), "the parked entry is still pending");
}

/* The backoff schedule lives in Redis (delivery count, idle time): a worker
 * killed while an entry waits for its 5th attempt and restarted at once under
 * the same name does not retry early; the count goes on from 4. */
Test(runtime, backoff_schedule_survives_a_restart_under_the_same_name)
{
    enum { BASE = 200 };
    int e = append_events("{\"mode\":\"fail\",\"times\":5}", 1);
    const char *knobs[] = {"RETRY_BASE_MS=200", "CLAIM_IDLE_MS=30000"};
    worker *w = spawn_worker("sched-1", knobs[0], knobs[1], NULL);
    check(wait_ge(p_attempts, EV[e].event_id, 4, 15000), "4 attempts never happened");
    kill9(w);
    check(attempts(EV[e].event_id) == 4, "attempt 5 before the kill; the test is too slow to show anything");
    spawn_worker("sched-1", knobs[0], knobs[1], NULL);
    check(wait_ge(p_handled, EV[e].event_id, 1, 15000), "never succeeded after the restart");
    redisReply *r = cmd("LRANGE test:attempt_ms:%s 0 -1", EV[e].event_id);
    check(r->elements == 6, "%zu attempts, want 6 (the count went on across the restart)", r->elements);
    long long gap = cm_reply_ll(r->element[4], 0) - cm_reply_ll(r->element[3], 0);
    freeReplyObject(r);
    cr_log_info("attempt 4 -> 5 across the restart: %lld ms (nominal %d)", gap, BASE * 8);
    /* the shortest jittered wait is 800 ms; a lost schedule retries at once */
    check(gap >= BASE * 8 / 2 - 50, "retried %lld ms after attempt 4: the restart lost the backoff", gap);
}

/* A worker SIGKILLed mid-batch and restarted after 1 s under the same
 * CONSUMER_NAME finishes the entries it held at once: within the restart
 * delay + a few seconds, far below CLAIM_IDLE_MS (30 s), so no takeover. */
Test(runtime, restart_under_the_same_name_resumes_held_entries_at_once)
{
    enum { N = 40, DELAY_MS = 1000 };
    append_events("{\"mode\":\"ok\"}", N);
    worker *w = spawn_worker("resume-1", "CLAIM_IDLE_MS=30000", "BATCH_SIZE=20", "TEST_HANDLE_DELAY_MS=100", NULL);
    check(wait_ge(p_by_consumer, "resume-1", 3, 15000), "the worker did not get going");
    kill9(w);
    long long held = consumer_pending(BUS, "resume-1");
    check(held > 0, "the killed worker held nothing pending");
    cr_log_info("killed holding %lld entries; restart in %d ms", held, DELAY_MS);
    tf_sleep_ms(DELAY_MS);   /* the restart delay of a supervisor */
    long long t0 = tf_now_ms();
    spawn_worker("resume-1", "CLAIM_IDLE_MS=30000", "BATCH_SIZE=20", NULL);
    check(wait_le(p_pending, BUS, 0, 20000), "%lld entries still pending", group_pending(BUS));
    check(wait_ge(p_hlen, "test:handled", N, 20000), "only %lld handled", nhandled());
    long long took = tf_now_ms() - t0;
    cr_log_info("held entries finished %lld ms after the restart", took);
    check(took < DELAY_MS + 5000, "took %lld ms: not resumed at start (CLAIM_IDLE_MS is 30000)", took);
    for (int i = 0; i < N; i++)
        check(handled(EV[i].event_id) >= 1, "event %d lost", i);
}

/* CONSUMER_NAME: {host} expands to the host name; a name outside the
 * charset, empty or too long stops the worker at start with what is wrong. */
Test(runtime, consumer_name_expands_host_and_is_validated)
{
    char host[256] = "";
    cr_assert_eq(gethostname(host, sizeof host - 1), 0);
    char want[300];
    snprintf(want, sizeof want, "c-%s", host);
    spawn_worker("c-{host}", NULL);
    int e = append_events("{\"mode\":\"ok\"}", 1);
    check(wait_ge(p_handled, EV[e].event_id, 1, 15000), "not handled");
    check(by_consumer(want) == 1, "no effect recorded by consumer %s", want);

    static const struct {
        const char *name, *says;
    } bad[] = {
        {"has space", "may only hold"},
        {"semi;colon", "may only hold"},
        {"", "empty"},
        {"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
         "xxxxxxxxxxxxxxxxxxxxxxxxxx", "longer than"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        worker *w = spawn_worker(bad[i].name, NULL);
        int st = reap(w, 10000);
        check(WIFEXITED(st) && WEXITSTATUS(st) == 2, "'%s': exit status %d", bad[i].name, st);
        FILE *f = fopen(w->log, "r");
        cr_assert_not_null(f);
        char log[4096];
        size_t n = fread(log, 1, sizeof log - 1, f);
        log[n] = '\0';
        fclose(f);
        check(strstr(log, "CONSUMER_NAME") && strstr(log, bad[i].says), "'%s': log says %s", bad[i].name, log);
    }
}

/* cmdstat_xreadgroup calls so far (INFO commandstats). */
static long long xreadgroup_calls(void)
{
    redisReply *r = cmd("INFO commandstats");
    const char *p = strstr(r->str, "cmdstat_xreadgroup:calls=");
    long long calls = p ? atoll(p + strlen("cmdstat_xreadgroup:calls=")) : 0;
    freeReplyObject(r);
    return calls;
}

/* Idle on one server, the read is one blocking XREADGROUP over every
 * stream, re-sent only when it answered: about 2000 / BLOCK_MS calls in
 * 2 s (bounded by half as much again, plus one), never a busy loop. */
Test(runtime, idle_worker_blocks_instead_of_polling)
{
    spawn_worker("idle", "BLOCK_MS=200", NULL);
    int first = append_events("{\"mode\":\"ok\"}", 3);
    wait_all_handled(first, first + 3, 15000);
    tf_sleep_ms(300);
    long long before = xreadgroup_calls(), t0 = tf_now_ms();
    tf_sleep_ms(2000);
    long long calls = xreadgroup_calls() - before, spent = tf_now_ms() - t0;
    long long bound = spent / 200 * 3 / 2 + 1;
    check(calls >= 2 && calls <= bound, "%lld XREADGROUP calls in %lld ms (bound %lld)", calls, spent, bound);
}
