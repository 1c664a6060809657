/* test_runtime_cluster.c - the worker runtime on a real Redis Cluster
 * (3 masters + 3 replicas, tests/support/cluster_fixture.h) with
 * PARTITIONS=8, through real `chorus-worker test` processes
 * (workers/test_worker.c: ok, fail N times, dead, hang, crash on demand,
 * effects recorded in test:handled, test:attempts, test:by_consumer).
 *
 * Guarantees shown: events appended into every partition (whose buses live
 * on several masters) are each handled exactly once; failures are retried
 * and poison parked in its own partition's dead-letter stream, from where a
 * retry re-delivers it; a SIGKILLed worker's pending entries are resumed by
 * its restarted copy and taken over by a peer; an idle worker does not poll
 * (each master sees about one XREADGROUP per BLOCK_MS per partition it owns,
 * and the worker burns little CPU); a master SIGKILLed mid-run and replaced
 * by its replica does not stop the worker: every event is handled.
 *
 * One cluster serves the whole file (creating one takes seconds): a report
 * hook has a keeper process start it before the tests and stop it after;
 * criterion runs each test in a fresh process, so its address comes
 * through the environment.
 * Each test has its own bus name, hence its own streams and groups. The
 * failover test runs last (criterion orders a suite's tests by name): it
 * leaves one master dead.
 *
 * CHORUS_WORKER_BIN (meson env) names the chorus-worker binary. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cluster.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/deadletter.h"
#include "event_store/store.h"
#include "tests/e2e/cluster_cmd.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"

#define GROUP "test-group"
#define NPART 8
#define ENV_CLUSTER "CHORUS_RTC_CLUSTER"

enum { MAX_WORKERS = 4, MAX_EVENTS = 400 };

typedef struct worker {
    pid_t pid;            /* 0 once reaped */
    char name[64];        /* CONSUMER_NAME */
    char log[400];
    int metrics_port;
} worker;

typedef struct event_ref {
    char event_id[37];
    char entry_id[48];
    char agg[37];         /* its checkout */
    int partition;
} event_ref;

static tf_cluster CL;         /* this test process's view of it */
static cm_cluster *CC;
static es_store *S;
static char BUS[64];
static worker W[MAX_WORKERS];
static int NW;
static event_ref EV[MAX_EVENTS];
static int NEV;

/* ---- one cluster for the file ------------------------------------------- */

/* The cluster's servers must not be children of criterion's runner (it
 * would reap a killed master's wrapper as if it were a test and lose
 * track): a keeper process starts the cluster, reports its address on a
 * pipe and stops it when the runner closes the other pipe. */
static pid_t g_keeper;
static int g_keeper_fd = -1;

static void keeper_main(int report_fd, int stop_fd)
{
    tf_cluster cl;
    char env[2048] = "";
    fcntl(report_fd, F_SETFD, FD_CLOEXEC);   /* the servers must not hold the pipes */
    fcntl(stop_fd, F_SETFD, FD_CLOEXEC);
    if (tf_cluster_start(&cl, NULL) == 0) {
        /* url|port:wrapper_pid:server_pid;... for the tests' processes */
        int n = snprintf(env, sizeof env, "%s|", cl.url);
        for (int i = 0; i < TF_CLUSTER_NODES; i++)
            n += snprintf(env + n, sizeof env - (size_t)n, "%d:%d:%d;", cl.node[i].port, (int)cl.node[i].pid,
                          (int)cl.node[i].server_pid);
    }
    size_t len = strlen(env) + 1;
    if (write(report_fd, env, len) != (ssize_t)len)
        fprintf(stderr, "test_runtime_cluster: cannot report the cluster\n");
    close(report_fd);
    char c;
    while (read(stop_fd, &c, 1) > 0)   /* EOF: the runner is done */
        ;
    tf_cluster_stop(&cl);
    _exit(0);
}

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    int report[2], stop[2];
    if (pipe(report) != 0 || pipe(stop) != 0)
        return;
    g_keeper = fork();
    if (g_keeper == 0) {
        close(report[0]);
        close(stop[1]);
        keeper_main(report[1], stop[0]);
    }
    close(report[1]);
    close(stop[0]);
    g_keeper_fd = stop[1];
    fcntl(g_keeper_fd, F_SETFD, FD_CLOEXEC);   /* tests and their workers must not hold it */
    static char env[2048];
    size_t n = 0;
    ssize_t k;
    /* the report ends with its NUL */
    while (n < sizeof env - 1 && (n == 0 || env[n - 1] != '\0') &&
           (k = read(report[0], env + n, sizeof env - 1 - n)) > 0)
        n += (size_t)k;
    env[n] = '\0';
    close(report[0]);
    if (env[0])
        setenv(ENV_CLUSTER, env, 1);
    else
        fprintf(stderr, "test_runtime_cluster: cannot start the cluster\n");
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    (void)stats;
    if (g_keeper_fd >= 0)
        close(g_keeper_fd);
    if (g_keeper > 0)
        waitpid(g_keeper, NULL, 0);
}

/* Rebuilds the cluster's description from the environment; a node whose
 * server is gone (killed by an earlier test) counts as stopped. */
static void load_cluster(void)
{
    const char *env = getenv(ENV_CLUSTER);
    cr_assert_not_null(env, "no cluster: it failed to start (see the log above)");
    memset(&CL, 0, sizeof CL);
    const char *bar = strchr(env, '|');
    cr_assert_not_null(bar);
    snprintf(CL.url, sizeof CL.url, "%.*s", (int)(bar - env), env);
    const char *p = bar + 1;
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        int port = 0, pid = 0, spid = 0, used = 0;
        cr_assert_eq(sscanf(p, "%d:%d:%d;%n", &port, &pid, &spid, &used), 3, "bad %s", ENV_CLUSTER);
        p += used;
        CL.node[i].port = port;
        snprintf(CL.node[i].url, sizeof CL.node[i].url, "redis://127.0.0.1:%d", port);
        bool alive = spid > 0 && kill(spid, 0) == 0;
        CL.node[i].pid = alive ? pid : 0;
        CL.node[i].server_pid = alive ? spid : 0;
    }
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);   /* a write to a killed master is an error, not death */
    NW = 0;
    NEV = 0;
    load_cluster();
    char err[400] = "";
    CC = cm_cluster_open(CL.url, 5000, err, sizeof err);
    cr_assert_not_null(CC, "cm_cluster_open: %s", err);
    cm_cluster_set_retry(CC, 20000);   /* rides out a failover */
}

static void teardown(void)
{
    for (int i = 0; i < NW; i++) {
        if (W[i].pid > 0) {
            tf_kill(W[i].pid, SIGKILL);
            tf_wait_exit(W[i].pid, 5000, NULL);
        }
        unlink(W[i].log);
    }
    NW = 0;
    es_store_free(S);
    S = NULL;
    cm_cluster_free(CC);
    CC = NULL;
}

TestSuite(runtime_cluster, .init = setup, .fini = teardown, .timeout = 120);

/* Names this test's bus (so its streams and groups are its own) and opens
 * the store on it. */
static void use_bus(const char *name)
{
    snprintf(BUS, sizeof BUS, "rtc.%s", name);
    char err[256];
    cr_assert_eq(cm_partitions_configure(NPART, BUS, err, sizeof err), 0, "%s", err);
    S = es_store_open(CC, BUS);
}

static void dump_workers(void)
{
    for (int i = 0; i < NW; i++)
        tf_dump_file(W[i].log, W[i].name);
}

#define check(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            dump_workers();                                                                                  \
            cr_assert_fail(__VA_ARGS__);                                                                     \
        }                                                                                                    \
    } while (0)

/* Starts `chorus-worker test` as consumer `name` on the cluster with
 * PARTITIONS=8 and fast test settings, extended or overridden by the
 * NULL-terminated "K=V" list. */
static worker *spawn_worker(const char *name, ...)
{
    cr_assert_lt(NW, MAX_WORKERS);
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert_not_null(bin, "CHORUS_WORKER_BIN is not set (run through meson test)");
    worker *w = &W[NW++];
    snprintf(w->name, sizeof w->name, "%s", name);
    snprintf(w->log, sizeof w->log, "/tmp/chorus-rtc-%d-%s.log", (int)getpid(), name);
    unlink(w->log);
    w->metrics_port = tf_free_port();
    static char own[4][MAX_WORKERS][400];
    const char *env[32];
    int n = 0;
    va_list ap;
    va_start(ap, name);
    for (const char *kv = va_arg(ap, const char *); kv && n < 16; kv = va_arg(ap, const char *))
        env[n++] = kv;
    va_end(ap);
    int k = NW - 1;
    snprintf(own[0][k], sizeof own[0][k], "REDIS_URL=%s", CL.url);
    snprintf(own[1][k], sizeof own[1][k], "CONSUMER_NAME=%s", name);
    snprintf(own[2][k], sizeof own[2][k], "BUS_STREAM=%s", BUS);
    snprintf(own[3][k], sizeof own[3][k], "METRICS_PORT=%d", w->metrics_port);
    const char *defaults[] = {own[0][k], own[1][k], own[2][k], own[3][k], "PARTITIONS=8", "CLAIM_IDLE_MS=1000",
                              "RETRY_BASE_MS=50", "BLOCK_MS=100", "TEST_HANDLE_DELAY_MS=0", "TEST_NOOP=0", NULL};
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

static void kill9(worker *w)
{
    cr_assert_eq(tf_kill(w->pid, SIGKILL), 0);
    check(tf_wait_exit(w->pid, 5000, NULL) == 0, "worker %s did not die", w->name);
    w->pid = 0;
}

/* ---- Redis helpers (through the slot-routing client) --------------------- */

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

static long long handled(const char *event_id) { return tc_ll(CC, "test:handled", "HGET test:handled %s", event_id); }
static long long attempts(const char *event_id) { return tc_ll(CC, "test:attempts", "HGET test:attempts %s", event_id); }
static long long by_consumer(const char *name) { return tc_ll(CC, "test:by_consumer", "HGET test:by_consumer %s", name); }

/* The group's pending entries over every partition's bus and redelivery
 * stream (a missing group counts 0). */
static long long pending_all(void)
{
    return tc_pending_all(CC, BUS, GROUP);
}

/* Appends `per` events of type with data data_json into each partition,
 * each its own checkout; records them in EV. */
static void append_typed(const char *data_json, int per, const char *type)
{
    for (int p = 0; p < NPART; p++) {
        for (int i = 0; i < per; i++) {
            cr_assert_lt(NEV, MAX_EVENTS);
            es_append_res res;
            char agg[37];
            tc_append_to_partition(S, p, type, data_json, "test-runtime-cluster", agg, &res);
            event_ref *e = &EV[NEV++];
            snprintf(e->event_id, sizeof e->event_id, "%s", res.pos[0].event_id);
            snprintf(e->entry_id, sizeof e->entry_id, "%s", res.pos[0].entry_id);
            snprintf(e->agg, sizeof e->agg, "%s", agg);
            e->partition = p;
        }
    }
}

static void append_each_partition(const char *data_json, int per)
{
    append_typed(data_json, per, "CheckoutInitiated");
}

/* The masters (node indexes) owning the partitions' buses, counted. */
static int masters_of_partitions(int owner[NPART])
{
    int distinct = 0;
    for (int p = 0; p < NPART; p++) {
        owner[p] = tf_cluster_master_of(&CL, slot_of(cm_key_bus(BUS, p).s));
        cr_assert_geq(owner[p], 0, "no master known for partition %d", p);
        bool seen = false;
        for (int q = 0; q < p; q++)
            seen = seen || owner[q] == owner[p];
        distinct += !seen;
    }
    return distinct;
}

/* ---- waiting ------------------------------------------------------------- */

typedef struct span {
    int from, to;     /* EV[from..to) */
    long long want;   /* handled at least this often */
} span;

static bool all_handled(void *ud)
{
    const span *s = ud;
    for (int i = s->from; i < s->to; i++)
        if (handled(EV[i].event_id) < s->want)
            return false;
    return true;
}

static bool nothing_pending(void *ud)
{
    (void)ud;
    return pending_all() == 0;
}

static bool worker_dead(void *ud)
{
    worker *w = ud;
    int st;
    if (tf_wait_exit(w->pid, 1, &st) == 0) {
        w->pid = 0;
        return true;
    }
    return false;
}

static void wait_handled(int from, int to, int timeout_ms)
{
    span s = {from, to, 1};
    check(tf_wait_until(all_handled, &s, timeout_ms), "events %d..%d not all handled within %d ms", from, to,
          timeout_ms);
}

static void wait_idle(int timeout_ms)
{
    check(tf_wait_until(nothing_pending, NULL, timeout_ms), "entries still pending after %d ms: %lld", timeout_ms,
          pending_all());
}

/* The length of partition p's dead-letter stream of GROUP. */
static long long dlq_len(int p)
{
    cm_key dlq = cm_key_dlq(cm_key_bus(BUS, p).s, GROUP);
    return tc_ll(CC, dlq.s, "XLEN %s", dlq.s);
}

/* ---- tests --------------------------------------------------------------- */

/* Spawns `chorus-worker <kind>` (a real worker) on the cluster's bus. */
static worker *spawn_named(const char *kind, const char *name)
{
    worker *w = spawn_worker(name, NULL);
    /* spawn_worker started the test worker: replace it by `kind` */
    kill9(w);
    const char *bin = getenv("CHORUS_WORKER_BIN");
    char url[400], bus[100], part[32];
    snprintf(url, sizeof url, "REDIS_URL=%s", CL.url);
    snprintf(bus, sizeof bus, "BUS_STREAM=%s", BUS);
    snprintf(part, sizeof part, "PARTITIONS=%d", NPART);
    const char *env[] = {url, bus, part, "BLOCK_MS=100", "METRICS_PORT=0", "CLAIM_IDLE_MS=1000", NULL};
    const char *argv[] = {bin, kind, NULL};
    w->pid = tf_spawn(argv, env, w->log);
    cr_assert_gt(w->pid, 0);
    return w;
}

static bool notified_all(void *ud)
{
    (void)ud;
    for (int i = 0; i < NEV; i++) {
        cm_key k = cm_key_notify(EV[i].agg);
        redisReply *r = cm_cluster_command(CC, slot_of(k.s), "HGET %s status", k.s);
        bool ok = r && cm_reply_is_str(r) && !strcmp(r->str, CM_STATUS_SUCCEEDED);
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

static bool audited_all(void *ud)
{
    (void)ud;
    return tc_ll(CC, CM_KEY_AUDIT_LOG, "XLEN %s", CM_KEY_AUDIT_LOG) >= NEV;
}

/* The audit worker (its script in the {audit} slot) and the notification
 * worker (its script in each checkout's partition slot) run on the cluster:
 * every partition's terminal event is notified once and audited once. */
Test(runtime_cluster, audit_and_notification_workers_run_on_the_cluster)
{
    use_bus("an");
    spawn_named("audit", "an-audit");
    spawn_named("notification", "an-notify");
    append_typed("{\"order_id\":\"o-1\"}", 2, "CheckoutSucceeded");
    check(tf_wait_until(notified_all, NULL, 20000), "not every checkout was notified");
    check(tf_wait_until(audited_all, NULL, 20000), "not every event was audited");
    tf_sleep_ms(300);   /* a second record would come now */
    check(tc_ll(CC, CM_KEY_AUDIT_LOG, "XLEN %s", CM_KEY_AUDIT_LOG) == NEV, "audit records: %lld, want %d",
          tc_ll(CC, CM_KEY_AUDIT_LOG, "XLEN %s", CM_KEY_AUDIT_LOG), NEV);
    check(tc_ll(CC, CM_KEY_AUDIT_HEAD, "HGET %s count", CM_KEY_AUDIT_HEAD) == NEV, "audit head count is not %d", NEV);
    for (int p = 0; p < NPART; p++) {
        cm_key log = cm_key_notify_log(p);
        check(tc_ll(CC, log.s, "XLEN %s", log.s) == 2, "partition %d's notification log", p);
    }
}

/* Every partition's events, spread over several masters, are each handled
 * exactly once by two workers sharing the group; acks wait for a replica
 * (REDIS_WAIT_REPLICAS=1, a WAIT on each master acked); /metrics shows the
 * per-partition pending gauges. */
Test(runtime_cluster, every_partition_event_is_handled_exactly_once)
{
    use_bus("once");
    worker *a = spawn_worker("once-a", "REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=1000", NULL);
    spawn_worker("once-b", "REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=1000", NULL);
    append_each_partition("{\"mode\":\"ok\"}", 6);
    int owner[NPART];
    cr_assert_geq(masters_of_partitions(owner), 2, "the 8 partitions should live on several masters");
    wait_handled(0, NEV, 20000);
    wait_idle(10000);
    for (int i = 0; i < NEV; i++)
        check(handled(EV[i].event_id) == 1, "event %d (partition %d) handled %lld times", i, EV[i].partition,
              handled(EV[i].event_id));
    check(by_consumer("once-a") + by_consumer("once-b") == NEV, "effects by consumer do not add up");
    for (int p = 0; p < NPART; p++)
        cr_expect_eq(dlq_len(p), 0, "partition %d parked something", p);

    /* the worker's own metrics: lag/pending per partition and in total */
    tf_http_resp r = {0};
    bool seen = false;
    for (int t = 0; t < 50 && !seen; t++) {
        tf_http_resp_free(&r);
        memset(&r, 0, sizeof r);
        if (tf_http_request(a->metrics_port, "GET", "/metrics", NULL, NULL, &r) == 0 && r.status == 200)
            seen = strstr(r.body, "worker_partition_pending{group=\"" GROUP "\",partition=\"7\"} 0") != NULL;
        if (!seen)
            tf_sleep_ms(100);
    }
    check(seen, "no per-partition pending gauge on /metrics:\n%s", r.body ? r.body : "(none)");
    cr_expect(strstr(r.body, "worker_pending{group=\"" GROUP "\"} 0"), "no total pending gauge");
    tf_http_resp_free(&r);
    memset(&r, 0, sizeof r);
    cr_assert_eq(tf_http_request(a->metrics_port, "GET", "/health", NULL, NULL, &r), 0);
    cr_expect_eq(r.status, 200, "health: %s", r.body);
    tf_http_resp_free(&r);
}

/* A failing event is retried until it succeeds, a refused one is parked in
 * its own partition's dead-letter stream (every partition), and a parked
 * entry re-delivered through the partition's redelivery stream is handled
 * again. */
Test(runtime_cluster, failures_are_retried_and_poison_is_parked_per_partition)
{
    use_bus("park");
    spawn_worker("park-a", NULL);
    append_each_partition("{\"mode\":\"fail\",\"times\":2}", 1);
    int dead0 = NEV;
    append_each_partition("{\"mode\":\"dead\"}", 1);
    wait_handled(0, dead0, 20000);
    wait_idle(10000);
    for (int i = 0; i < dead0; i++)
        check(attempts(EV[i].event_id) == 3, "event %d (partition %d): %lld attempts, want 3", i, EV[i].partition,
              attempts(EV[i].event_id));
    for (int i = dead0; i < NEV; i++) {
        int p = EV[i].partition;
        check(dlq_len(p) == 1, "partition %d's dead-letter stream holds %lld entries", p, dlq_len(p));
        cm_key dlq = cm_key_dlq(cm_key_bus(BUS, p).s, GROUP);
        redisReply *r = tc_cmd(CC, dlq.s, "XRANGE %s - +", dlq.s);
        const redisReply *f = cm_reply_elem(cm_reply_elem(r, 0), 1);
        bool found = false;
        for (size_t j = 0; f && j + 1 < f->elements; j += 2)
            found = found || (!strcmp(f->element[j]->str, "entry_id") && !strcmp(f->element[j + 1]->str,
                                                                                   EV[i].entry_id));
        freeReplyObject(r);
        check(found, "partition %d's dead letter is not entry %s", p, EV[i].entry_id);
        cr_expect_eq(handled(EV[i].event_id), 0, "a refused event had an effect");
    }
    /* re-deliver partition 5's dead letter: the worker sees it again (and
     * parks it again, it is still refused) */
    event_ref *e = &EV[dead0 + 5];
    long long before = attempts(e->event_id);
    char err[256];
    cr_assert_eq(es_dlq_retry_oldest(CC, cm_key_bus(BUS, 5).s, GROUP, 10, err, sizeof err), 1, "%s", err);
    for (int t = 0; t < 100 && attempts(e->event_id) == before; t++)
        tf_sleep_ms(100);
    check(attempts(e->event_id) == before + 1, "the re-delivered entry was not handled again");
    wait_idle(10000);
    check(dlq_len(5) == 1, "re-delivered entry not parked again: %lld", dlq_len(5));
}

/* A worker SIGKILLed while it held entries of several partitions: a peer
 * takes over what it held (XAUTOCLAIM after CLAIM_IDLE_MS), and a copy
 * restarted under its name resumes its own in-flight entries at once. */
Test(runtime_cluster, sigkilled_worker_entries_are_claimed_and_resumed)
{
    use_bus("kill");
    /* a crashes between effect and ack on its first delivery of the crash
     * event (partition 3); it holds other partitions' entries of its round */
    worker *a = spawn_worker("kill-a", "TEST_HANDLE_DELAY_MS=20", NULL);
    append_each_partition("{\"mode\":\"ok\"}", 3);
    char agg[37];
    es_append_res res;
    tc_append_to_partition(S, 3, "CheckoutInitiated", "{\"mode\":\"crash\"}", "test-runtime-cluster", agg, &res);
    int crash = NEV++;
    snprintf(EV[crash].event_id, sizeof EV[crash].event_id, "%s", res.pos[0].event_id);
    EV[crash].partition = 3;
    append_each_partition("{\"mode\":\"ok\"}", 3);
    check(tf_wait_until(worker_dead, a, 20000), "worker a did not crash");
    check(pending_all() > 0, "the crashed worker held nothing");
    /* a peer takes over once the entries are idle past CLAIM_IDLE_MS */
    spawn_worker("kill-b", NULL);
    wait_handled(0, NEV, 20000);
    wait_idle(10000);
    check(by_consumer("kill-b") > 0, "the peer handled nothing");
    check(attempts(EV[crash].event_id) == 2, "the crash event was delivered %lld times, want 2",
          attempts(EV[crash].event_id));
    for (int i = 0; i < NEV; i++) {
        long long h = handled(EV[i].event_id);
        /* at most once more than once: handled, then the ack died with a */
        check(h >= 1 && h <= 2, "event %d handled %lld times", i, h);
    }

    /* resume: c holds entries (a long handler), is killed, and its restart
     * under the same name takes them back at once (before CLAIM_IDLE_MS,
     * set long here so no takeover can explain it) */
    kill9(&W[1]);   /* no peer from here on */
    int from = NEV;
    worker *c = spawn_worker("kill-c", "CLAIM_IDLE_MS=60000", "TEST_HANDLE_DELAY_MS=300", NULL);
    append_each_partition("{\"mode\":\"ok\"}", 2);
    for (int t = 0; t < 200 && pending_all() < 2; t++)
        tf_sleep_ms(20);
    check(pending_all() >= 2, "worker c never held entries");
    kill9(c);
    long long before = by_consumer("kill-c");
    spawn_worker("kill-c", "CLAIM_IDLE_MS=60000", NULL);
    /* well within CLAIM_IDLE_MS: only the resume at start can do it */
    wait_handled(from, NEV, 15000);
    wait_idle(10000);
    check(by_consumer("kill-c") > before, "the restarted copy handled nothing");
}

/* CPU time (user + system, in clock ticks) of process pid so far. */
static long long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    cr_assert_not_null(p);
    unsigned long long ut = 0, st = 0;
    /* fields after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st), 2);
    return (long long)(ut + st);
}

/* cmdstat_xreadgroup calls of node i (INFO commandstats). */
static long long xreadgroup_calls(int i)
{
    redisContext *c = redisConnect("127.0.0.1", CL.node[i].port);
    cr_assert(c && !c->err, "node %d", i);
    redisReply *r = redisCommand(c, "INFO commandstats");
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    long long calls = 0;
    const char *p = strstr(r->str, "cmdstat_xreadgroup:calls=");
    if (p)
        calls = atoll(p + strlen("cmdstat_xreadgroup:calls="));
    freeReplyObject(r);
    redisFree(c);
    return calls;
}

/* Idle, a worker keeps one blocking read per partition in flight and
 * nothing else: over 2 s each master sees about (2000 / BLOCK_MS) reads per
 * partition it owns (bounded here by half as much again, plus one), and the
 * worker process uses under a fifth of a core; SIGTERM stops it cleanly. */
Test(runtime_cluster, idle_worker_does_not_busy_poll)
{
    use_bus("idle");
    worker *w = spawn_worker("idle-a", "BLOCK_MS=200", NULL);
    append_each_partition("{\"mode\":\"ok\"}", 1);
    wait_handled(0, NEV, 20000);
    wait_idle(10000);
    tf_sleep_ms(500);   /* let the round in hand finish */
    int owner[NPART];
    masters_of_partitions(owner);
    long long before[TF_CLUSTER_NODES] = {0};
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        if (CL.node[i].pid > 0)
            before[i] = xreadgroup_calls(i);
    long long cpu0 = cpu_ticks(w->pid), t0 = tf_now_ms();
    tf_sleep_ms(2000);
    long long spent_ms = tf_now_ms() - t0;
    long long cpu = cpu_ticks(w->pid) - cpu0;
    long long total = 0;
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        if (CL.node[i].pid <= 0)
            continue;
        int parts = 0;
        for (int p = 0; p < NPART; p++)
            parts += owner[p] == i;
        long long calls = xreadgroup_calls(i) - before[i];
        total += calls;
        long long bound = parts * (spent_ms / 200) * 3 / 2 + 1;
        check(calls <= bound, "node %d (%d partitions): %lld XREADGROUP calls in %lld ms (bound %lld)", i, parts,
              calls, spent_ms, bound);
    }
    check(total >= NPART * 5, "only %lld reads in 2 s: the worker is not reading every partition", total);
    long long hz = sysconf(_SC_CLK_TCK);
    check(cpu * 1000 / hz < spent_ms / 5, "idle worker used %lld ms of CPU in %lld ms", cpu * 1000 / hz, spent_ms);

    /* SIGTERM: the reads in flight answer within BLOCK_MS, then a clean
     * exit (status 0: no leak reported by the sanitizers either) */
    cr_assert_eq(tf_kill(w->pid, SIGTERM), 0);
    int st = 0;
    check(tf_wait_exit(w->pid, 5000, &st) == 0, "worker did not stop on SIGTERM");
    w->pid = 0;
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker exit status %d", st);
}

/* A master owning partitions is SIGKILLed while the worker is busy; its
 * replica is promoted (cluster-node-timeout 2 s): the worker re-reads the
 * slot map, reads the partitions from the new master, and every event,
 * those appended before the kill and those after, is handled.
 * Named to run last: it leaves that master dead. */
Test(runtime_cluster, worker_survives_a_master_killed_and_its_replica_promoted)
{
    use_bus("failover");
    spawn_worker("fo-a", "TEST_HANDLE_DELAY_MS=15", NULL);
    append_each_partition("{\"mode\":\"ok\"}", 6);
    int owner[NPART];
    masters_of_partitions(owner);
    int victim = owner[0];
    int replica = tf_cluster_replica_of(&CL, victim);
    cr_assert_geq(replica, 0, "master %d has no replica", victim);
    /* the first batch is on the replica before the kill (WAIT on each
     * partition's master), so the failover cannot lose it */
    for (int p = 0; p < NPART; p++) {
        redisReply *r = cm_cluster_command(CC, slot_of(cm_key_bus(BUS, p).s), "WAIT 1 2000");
        cr_assert(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "WAIT on partition %d's master", p);
        freeReplyObject(r);
    }
    /* mid-run: the worker is still handling the first batch (15 ms each) */
    cr_assert_eq(kill(CL.node[victim].server_pid, SIGKILL), 0);
    CL.node[victim].pid = 0;
    CL.node[victim].server_pid = 0;
    append_each_partition("{\"mode\":\"ok\"}", 3);   /* the victim's partitions wait for the failover */
    cr_assert(tf_cluster_is_master(&CL, replica), "replica %d was not promoted", replica);
    wait_handled(0, NEV, 40000);
    wait_idle(15000);
    for (int i = 0; i < NEV; i++)
        check(handled(EV[i].event_id) >= 1, "event %d lost", i);
}
