/* test_runtime_cluster_frozen.c - a frozen master does not stall the
 * worker's other partitions (workers/runner.c, run_job: a periodic job's
 * calls are best effort on a cluster).
 *
 * A private Redis Cluster (tests/support/cluster_fixture.h, 3 masters + 3
 * replicas) with cluster-node-timeout 60 s, so a master stopped with
 * SIGSTOP stays the master of its slots (no failover) for the whole test:
 * it neither answers nor refuses, the worst case for a client. One real
 * `chorus-worker test` with PARTITIONS=8 and REDIS_TIMEOUT_MS=15000; its
 * effects (test:handled, ...) are kept under one {hash tag} on a master
 * that is not frozen (TEST_KEY_PREFIX).
 *
 * Before, every periodic job's call to the frozen master blocked the
 * worker's one loop for the command timeout (15 s here; the retry job runs
 * every 50 ms), so the healthy partitions' events waited that long too.
 *
 * CHORUS_WORKER_BIN (meson env) names the chorus-worker binary. */
#include <criterion/criterion.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cluster.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/store.h"
#include "tests/e2e/cluster_cmd.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/proc.h"

#define GROUP "test-group"
#define NPART 8

enum {
    MAX_EVENTS = 600,
    FREEZE_MIN_MS = 6000,     /* the freeze lasts at least this long (the old stall: 15 s per job call) */
    WAVE_MS = 6000,           /* a wave of healthy partitions' events is handled within this, frozen or not */
    WAVE_GAP_MS = 300,        /* between waves */
    WORKER_TIMEOUT_MS = 15000 /* the worker's REDIS_TIMEOUT_MS: the old stall per job call */
};

typedef struct event_ref {
    char event_id[37];
    int partition;
} event_ref;

static tf_cluster CL;
static cm_cluster *CC;
static es_store *S;
static char BUS[64] = "rtf.frozen";
static char PREFIX[32];           /* TEST_KEY_PREFIX: "{tag}test:" */
static char K_HANDLED[64], K_ATTEMPTS[64];
static event_ref EV[MAX_EVENTS];
static int NEV;
static pid_t WORKER;
static char WLOG[200];
static pid_t FROZEN;              /* the stopped server's pid, 0 when none */

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(tf_cluster_start(&CL, "cluster-node-timeout 60000"), 0, "the cluster did not start");
    char err[400] = "";
    CC = cm_cluster_open(CL.url, 5000, err, sizeof err);
    cr_assert_not_null(CC, "cm_cluster_open: %s", err);
    cr_assert_eq(cm_partitions_configure(NPART, BUS, err, sizeof err), 0, "%s", err);
    S = es_store_open(CC, BUS);
}

static void teardown(void)
{
    if (FROZEN > 0)
        kill(FROZEN, SIGCONT);
    if (WORKER > 0) {
        tf_kill(WORKER, SIGKILL);
        tf_wait_exit(WORKER, 5000, NULL);
    }
    if (WLOG[0])
        unlink(WLOG);
    es_store_free(S);
    cm_cluster_free(CC);
    tf_cluster_stop(&CL);
}

TestSuite(runtime_cluster_frozen, .init = setup, .fini = teardown, .timeout = 120);

#define check(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            tf_dump_file(WLOG, "worker");                                                                    \
            cr_assert_fail(__VA_ARGS__);                                                                     \
        }                                                                                                    \
    } while (0)

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

static int master_of_partition(int p)
{
    return tf_cluster_master_of(&CL, slot_of(cm_key_bus(BUS, p).s));
}

static long long handled(const char *id) { return tc_ll(CC, K_HANDLED, "HGET %s %s", K_HANDLED, id); }
static long long attempts(const char *id) { return tc_ll(CC, K_ATTEMPTS, "HGET %s %s", K_ATTEMPTS, id); }

/* Appends one event with data data_json to partition p; recorded in EV. */
static void append_one(int p, const char *data_json)
{
    cr_assert_lt(NEV, MAX_EVENTS);
    char agg[37];
    es_append_res res;
    tc_append_to_partition(S, p, "CheckoutInitiated", data_json, "test-runtime-cluster-frozen", agg, &res);
    snprintf(EV[NEV].event_id, sizeof EV[NEV].event_id, "%s", res.pos[0].event_id);
    EV[NEV].partition = p;
    NEV++;
}

typedef struct span {
    int from, to;   /* EV[from..to) */
} span;

static bool all_handled(void *ud)
{
    const span *s = ud;
    for (int i = s->from; i < s->to; i++)
        if (handled(EV[i].event_id) < 1)
            return false;
    return true;
}

/* Nothing pending for the group on any partition's streams. */
static bool nothing_pending(void *ud)
{
    (void)ud;
    return tc_pending_all(CC, BUS, GROUP) == 0;
}

/* True while process pid is stopped (state T in /proc/<pid>/stat). */
static bool stopped(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' && (paren[2] == 'T' || paren[2] == 't');
}

/* Picks a {tag} for the effect keys whose slot is not on master `avoid`. */
static void pick_prefix(int avoid)
{
    for (int i = 0; i < 1000; i++) {
        snprintf(PREFIX, sizeof PREFIX, "{rtf%d}test:", i);
        char tag[16];
        snprintf(tag, sizeof tag, "rtf%d", i);
        if (tf_cluster_master_of(&CL, cm_key_slot(tag, strlen(tag))) != avoid)
            break;
    }
    snprintf(K_HANDLED, sizeof K_HANDLED, "%shandled", PREFIX);
    snprintf(K_ATTEMPTS, sizeof K_ATTEMPTS, "%sattempts", PREFIX);
    cr_assert_neq(tf_cluster_master_of(&CL, slot_of(K_HANDLED)), avoid);
}

/* Starts the worker, with one more environment entry when extra is set. */
static void spawn(const char *extra)
{
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert_not_null(bin, "CHORUS_WORKER_BIN is not set (run through meson test)");
    snprintf(WLOG, sizeof WLOG, "/tmp/chorus-rtf-%d.log", (int)getpid());
    unlink(WLOG);
    char url[400], bus[100], prefix[64], tmo[48];
    snprintf(url, sizeof url, "REDIS_URL=%s", CL.url);
    snprintf(bus, sizeof bus, "BUS_STREAM=%s", BUS);
    snprintf(prefix, sizeof prefix, "TEST_KEY_PREFIX=%s", PREFIX);
    snprintf(tmo, sizeof tmo, "REDIS_TIMEOUT_MS=%d", WORKER_TIMEOUT_MS);
    /* a failure's retry comes 1..2 s later (RETRY_BASE_MS), within the freeze */
    const char *env[] = {url, bus, prefix, tmo, "PARTITIONS=8", "CONSUMER_NAME=rtf-a", "BLOCK_MS=100",
                         "CLAIM_IDLE_MS=10000", "RETRY_BASE_MS=2000", "METRICS_PORT=0", extra, NULL};
    const char *argv[] = {bin, "test", NULL};
    WORKER = tf_spawn(argv, env, WLOG);
    cr_assert_gt(WORKER, 0, "cannot start %s: %s", bin, strerror(errno));
}

/* Once the frozen server is back: every event appended is handled, exactly
 * once, and nothing is left pending (every ack went out). */
static void all_handled_once_after_the_thaw(void)
{
    span all = {0, NEV};
    check(tf_wait_until(all_handled, &all, 40000), "not every event was handled after the thaw");
    check(tf_wait_until(nothing_pending, NULL, 30000), "entries still pending (acks held) after the thaw");
    for (int i = 0; i < NEV; i++)
        check(handled(EV[i].event_id) == 1, "event %d (partition %d) handled %lld times", i, EV[i].partition,
              handled(EV[i].event_id));
}

/* With one master frozen (SIGSTOP, no failover), the partitions on the
 * other masters go on: waves of their events, and the retry of a failed
 * one, are handled while it stays frozen; once it is thawed, its
 * partitions' retry and new events follow, and every event is handled
 * exactly once. */
Test(runtime_cluster_frozen, healthy_partitions_progress_while_a_master_is_frozen)
{
    int owner[NPART];
    for (int p = 0; p < NPART; p++) {
        owner[p] = master_of_partition(p);
        cr_assert_geq(owner[p], 0, "no master known for partition %d", p);
    }
    int victim = owner[0];
    int healthy = 0;
    for (int p = 0; p < NPART; p++)
        healthy += owner[p] != victim;
    cr_assert(healthy > 0 && healthy < NPART, "the partitions are all on one master");
    pick_prefix(victim);
    spawn(NULL);

    /* every partition is being read (each master's groups exist) */
    for (int p = 0; p < NPART; p++)
        append_one(p, "{\"mode\":\"ok\"}");
    span warm = {0, NEV};
    check(tf_wait_until(all_handled, &warm, 30000), "warm-up events not handled");

    /* the victim's partitions each hold an entry that failed once: its
     * retry falls due during the freeze */
    int vfail = NEV;
    for (int p = 0; p < NPART; p++)
        if (owner[p] == victim)
            append_one(p, "{\"mode\":\"fail\",\"times\":1}");
    int vfail_end = NEV;
    for (int i = vfail; i < vfail_end; i++)
        for (long long t0 = tf_now_ms(); attempts(EV[i].event_id) < 1;) {
            check(tf_now_ms() - t0 < 20000, "the victim's first delivery did not come");
            tf_sleep_ms(10);
        }

    FROZEN = CL.node[victim].server_pid;
    cr_assert_eq(kill(FROZEN, SIGSTOP), 0);
    long long frozen_at = tf_now_ms();

    /* healthy partitions: one that fails once (retried during the freeze),
     * then waves of events, each handled before the next is appended */
    int hfail = NEV;
    for (int p = 0; p < NPART; p++)
        if (owner[p] != victim)
            append_one(p, "{\"mode\":\"fail\",\"times\":1}");
    span hf = {hfail, NEV};
    check(tf_wait_until(all_handled, &hf, WAVE_MS), "a healthy partition's retry did not happen within %d ms "
          "while master %d is frozen", WAVE_MS, victim);
    int waves = 0;
    while (waves < 3 || tf_now_ms() - frozen_at < FREEZE_MIN_MS) {
        span w = {NEV, 0};
        for (int p = 0; p < NPART; p++)
            if (owner[p] != victim)
                append_one(p, "{\"mode\":\"ok\"}");
        w.to = NEV;
        long long t0 = tf_now_ms();
        check(tf_wait_until(all_handled, &w, WAVE_MS),
              "wave %d of the healthy partitions' events not handled within %d ms, %lld ms into the freeze",
              waves, WAVE_MS, t0 - frozen_at);
        waves++;
        tf_sleep_ms(WAVE_GAP_MS);   /* pacing the load, not waiting for anything */
    }
    check(stopped(FROZEN), "master %d was not frozen all along", victim);
    long long frozen_ms = tf_now_ms() - frozen_at;
    /* the jobs said they skipped it, at most about once a second each */
    int skips = tf_file_count(WLOG, "periodic job retry skipped", NULL);
    check(skips >= 1, "the retry job never said it skipped the frozen master");
    check(skips <= frozen_ms / 1000 + 3, "%d lines about the retry job's skips in %lld ms", skips, frozen_ms);

    cr_assert_eq(kill(FROZEN, SIGCONT), 0);
    FROZEN = 0;
    for (int p = 0; p < NPART; p++)
        append_one(p, "{\"mode\":\"ok\"}");
    all_handled_once_after_the_thaw();
    for (int i = vfail; i < vfail_end; i++)
        check(attempts(EV[i].event_id) >= 2, "the frozen partition's failed event was not retried");
    cr_log_info("%d waves handled during a %lld ms freeze", waves, frozen_ms);
}

/* With REDIS_WAIT_REPLICAS=1 and one replica frozen, the WAIT before the
 * acks comes back short after REDIS_WAIT_TIMEOUT_MS (500 ms): the acks are
 * held, and no master is given up. The WAIT a job's ack flush sends is not
 * cut at the jobs' 300 ms budget (that gave its master up, skipping its
 * partitions, and a WAIT resent on a new connection confirms nothing).
 * Once the replica is back every event is handled once and acked. */
Test(runtime_cluster_frozen, a_lagging_replica_holds_acks_without_giving_its_master_up)
{
    int owner[NPART];
    for (int p = 0; p < NPART; p++)
        owner[p] = master_of_partition(p);
    int victim = owner[0];
    int replica = tf_cluster_replica_of(&CL, victim);
    cr_assert_geq(replica, 0, "master %d has no replica", victim);
    pick_prefix(-1);
    spawn("REDIS_WAIT_REPLICAS=1");
    for (int p = 0; p < NPART; p++)
        append_one(p, "{\"mode\":\"ok\"}");
    span warm = {0, NEV};
    check(tf_wait_until(all_handled, &warm, 30000), "warm-up events not handled");

    FROZEN = CL.node[replica].server_pid;
    cr_assert_eq(kill(FROZEN, SIGSTOP), 0);
    /* each round now waits REDIS_WAIT_TIMEOUT_MS for its WAIT: slower, not stopped */
    span w = {NEV, 0};
    for (int p = 0; p < NPART; p++)
        append_one(p, "{\"mode\":\"ok\"}");
    w.to = NEV;
    check(tf_wait_until(all_handled, &w, 30000), "events not handled while replica %d is frozen", replica);
    check(stopped(FROZEN), "replica %d was not frozen all along", replica);
    check(tf_file_count(WLOG, "replicas confirmed within", NULL) >= 1, "no WAIT came back short");
    int skips = tf_file_count(WLOG, "skipped the partitions", NULL);
    check(skips == 0, "%d lines say a job gave a master up while only a replica lagged", skips);

    cr_assert_eq(kill(FROZEN, SIGCONT), 0);
    FROZEN = 0;
    all_handled_once_after_the_thaw();
}
