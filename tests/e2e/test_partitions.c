/* test_partitions.c - the checkout saga with PARTITIONS=4 on one
 * redis-server: real `chorus-worker` processes reading all four partitions'
 * bus streams (and their redelivery streams) in one XREADGROUP.
 *
 *   saga_outcomes_*  on every partition: a success (Initiated, Reserved,
 *                    OrderCreated, Succeeded; sold), a stock failure
 *                    (ReservationFailed, Failed; nothing held) and a
 *                    compensation (order over ORDER_LIMIT_CENTS: the
 *                    reservation released). The keys are the documented
 *                    layout, spelled out here: history, reservation, order
 *                    the timeout set and the bus carry "{p<p>}", the unpartitioned names are
 *                    never written, each group exists on every partition's
 *                    bus and has nothing pending, no dead letters.
 *   other_workers_*  the projection, notification and audit workers on four
 *                    partitions: each checkout's read model and notification
 *                    marker carry its tag, one notification log per
 *                    partition, one audit record per event;
 *                    chorus-projection-rebuild (PARTITIONS=4) replays every
 *                    partition's bus and restores the read models, and
 *                    chorus-audit-verify --deep finds each record's event in
 *                    its partitioned history.
 *   retries_*        `chorus-worker test` on four partitions: an event that
 *                    fails twice is retried on its own partition's bus until
 *                    it succeeds; a refused one is parked in its partition's
 *                    dead-letter stream (naming its source stream), and a
 *                    retry through es_dlq_retry comes back via that
 *                    partition's redelivery stream.
 *   sigkill_*        240 checkouts racing for 100 units over four
 *                    partitions, two copies of each saga worker, one copy of
 *                    each SIGKILLed once an eighth of the first half ended,
 *                    the second half appended while they are down, then
 *                    restarted: every checkout has
 *                    exactly one terminal event (its last), exactly 100
 *                    succeed, available + sold == 100 and reserved == 0. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/ids.h"
#include "common/names.h"
#include "event_store/deadletter.h"
#include "tests/e2e/saga_env.h"
#include "tests/support/proc.h"

#define NPART 4
#define BUS "ecommerce.checkout.events"

static sg_env E;

static void setup(void)
{
    cr_assert_eq(cm_partitions_set(NPART), 0);   /* this test process names keys as the workers do */
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(partitions, .init = setup, .fini = teardown, .timeout = 150);

static const char *const k_env[] = {"PARTITIONS=4", "ORDER_LIMIT_CENTS=100000", NULL};

static void wait_ended(char *const *ids, size_t n, int timeout_ms)
{
    if (!sg_wait_terminal(&E, ids, n, timeout_ms)) {
        sg_dump_logs(&E);
        cr_assert_fail("sagas did not end within %d ms", timeout_ms);
    }
}

static void wait_quiet(void)
{
    if (!sg_wait_quiet(&E, 30000)) {
        sg_dump_logs(&E);
        cr_assert_fail("consumer groups did not become idle on every partition");
    }
}

/* Writes into out the first id "<prefix>-<i>" in partition p. */
static void id_in(const char *prefix, int p, char *out, size_t outlen)
{
    for (int i = 0;; i++) {
        snprintf(out, outlen, "%s-%d", prefix, i);
        if (cm_partition_of(out) == p)
            return;
    }
}

static void expect_types(const char *checkout, const char *want)
{
    char *got = sg_types(&E, checkout);
    cr_expect_str_eq(got, want, "history of %s", checkout);
    free(got);
}

Test(partitions, saga_outcomes_on_every_partition_with_tagged_keys)
{
    sg_product(&E, "p-ok", 100);
    sg_product(&E, "p-short", 1);
    sg_spawn_saga(&E, k_env);
    char ok[NPART][32], short_[NPART][32], limit[NPART][32];
    char *all[3 * NPART];
    for (int p = 0; p < NPART; p++) {
        id_in("ok", p, ok[p], sizeof ok[p]);
        id_in("short", p, short_[p], sizeof short_[p]);
        id_in("limit", p, limit[p], sizeof limit[p]);
        sg_line good = {"p-ok", 1, 1000}, many = {"p-short", 5, 1000}, dear = {"p-ok", 1, 200000};
        sg_checkout(&E, ok[p], "client-1", &good, 1);
        sg_checkout(&E, short_[p], "client-2", &many, 1);
        sg_checkout(&E, limit[p], "client-3", &dear, 1);
        all[3 * p] = ok[p];
        all[3 * p + 1] = short_[p];
        all[3 * p + 2] = limit[p];
    }
    wait_ended(all, 3 * NPART, 30000);
    wait_quiet();
    for (int p = 0; p < NPART; p++) {
        expect_types(ok[p], "CheckoutInitiated,StockReserved,OrderCreated,CheckoutSucceeded");
        expect_types(short_[p], "CheckoutInitiated,StockReservationFailed,CheckoutFailed");
        expect_types(limit[p], "CheckoutInitiated,StockReserved,OrderCreationFailed,StockReleased,CheckoutFailed");
        /* the layout, spelled out (not built by names.c) */
        cr_expect_eq(sg_ll(&E, "LLEN chorus:h:checkout:{p%d}:%s", p, ok[p]), 4);
        cr_expect_eq(sg_ll(&E, "EXISTS chorus:h:checkout:%s", ok[p]), 0, "the unpartitioned history name");
        char *st = sg_str(&E, "HGET chorus:resv:{p%d}:%s state", p, ok[p]);
        cr_expect(st && !strcmp(st, "sold"), "reservation of %s: %s", ok[p], st ? st : "(none)");
        free(st);
        st = sg_str(&E, "HGET chorus:resv:{p%d}:%s state", p, limit[p]);
        cr_expect(st && !strcmp(st, "released"), "reservation of %s: %s", limit[p], st ? st : "(none)");
        free(st);
        char order_id[CM_UUID_LEN + 1];
        cm_uuid_derive(ok[p], "order", order_id);
        cr_expect_eq(sg_ll(&E, "EXISTS chorus:order:{p%d}:%s", p, order_id), 1, "order of %s", ok[p]);
        /* 4 + 3 + 5 events of this partition's three checkouts on its bus */
        cr_expect_eq(sg_ll(&E, "XLEN " BUS ":{p%d}", p), 12, "bus of partition %d", p);
        /* the timeout set of partition p holds only p's sagas (an ended saga
         * may be recorded after its end; the tick drops it later) */
        redisReply *z = redisCommand(E.c, "ZRANGE " CM_KEY_SAGA_STARTED ":{p%d} 0 -1", p);
        cr_assert(z && z->type == REDIS_REPLY_ARRAY);
        for (size_t i = 0; i < z->elements; i++)
            cr_expect_eq(cm_partition_of(z->element[i]->str), p, "%s in the timeout set of %d", z->element[i]->str, p);
        freeReplyObject(z);
        for (int g = 0; g < 3; g++) {
            redisReply *r = redisCommand(E.c, "XPENDING " BUS ":{p%d} %s", p, cm_group_names[g]);
            cr_assert(r && r->type == REDIS_REPLY_ARRAY, "group %s on partition %d", cm_group_names[g], p);
            cr_expect_eq(r->element[0]->integer, 0);
            freeReplyObject(r);
            r = redisCommand(E.c, "XPENDING " BUS ":{p%d}.retry.%s %s", p, cm_group_names[g], cm_group_names[g]);
            cr_expect(r && r->type == REDIS_REPLY_ARRAY, "redelivery stream of %s on partition %d",
                      cm_group_names[g], p);
            freeReplyObject(r);
        }
    }
    cr_expect_eq(sg_ll(&E, "EXISTS " BUS), 0, "the unpartitioned bus is never written");
    cr_expect_eq(sg_ll(&E, "EXISTS " CM_KEY_SAGA_STARTED), 0);
    long long a, r, s;
    sg_stock(&E, "p-ok", &a, &r, &s);
    cr_expect(a == 100 - NPART && r == 0 && s == NPART, "p-ok: available %lld reserved %lld sold %lld", a, r, s);
    sg_stock(&E, "p-short", &a, &r, &s);
    cr_expect(a == 1 && r == 0 && s == 0, "p-short: available %lld reserved %lld sold %lld", a, r, s);
    for (int g = 0; g < 3; g++)
        cr_expect_eq(sg_dlq_len(&E, cm_group_names[g]), 0, "dead letters of %s", cm_group_names[g]);
    cr_expect_eq(sg_stop_workers(&E), 0, "workers drained and exited 0");
}

/* Runs bin (path from env var binvar) with flags and PARTITIONS=4; returns
 * its exit status, its output in out. */
static int run_tool(const char *binvar, const char *flag, char *out, size_t outlen)
{
    const char *bin = getenv(binvar);
    cr_assert(bin && *bin, "%s is not set (run through meson test)", binvar);
    char url[340], log[400];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    snprintf(log, sizeof log, "%s/tool.log", E.r.dir);
    remove(log);
    const char *argv[] = {bin, flag, NULL};
    const char *env[] = {url, "PARTITIONS=4", "LOG_LEVEL=warn", NULL};
    pid_t pid = tf_spawn(argv, env, log);
    cr_assert_gt(pid, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 30000, &st), 0, "%s did not exit", bin);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    size_t n = fread(out, 1, outlen - 1, f);
    out[n] = '\0';
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *rm_status(const char *co, int p)
{
    return sg_str(&E, "HGET chorus:rm:checkout:{p%d}:%s status", p, co);
}

Test(partitions, other_workers_and_the_tools_use_every_partition)
{
    sg_product(&E, "p-ok", 100);
    sg_spawn_saga(&E, k_env);
    const char *more[] = {"cqrs-projection", "notification", "audit"};
    for (int i = 0; i < 3; i++)
        sg_spawn(&E, more[i], k_env);
    char ok[NPART][32], limit[NPART][32];
    char *all[2 * NPART];
    for (int p = 0; p < NPART; p++) {
        id_in("ok", p, ok[p], sizeof ok[p]);
        id_in("limit", p, limit[p], sizeof limit[p]);
        sg_line good = {"p-ok", 1, 1000}, dear = {"p-ok", 1, 200000};
        sg_checkout(&E, ok[p], "client-1", &good, 1);
        sg_checkout(&E, limit[p], "client-1", &dear, 1);
        all[2 * p] = ok[p];
        all[2 * p + 1] = limit[p];
    }
    wait_ended(all, 2 * NPART, 30000);
    wait_quiet();
    const long long events = NPART * (4 + 5);
    for (int p = 0; p < NPART; p++) {
        char *st = rm_status(ok[p], p);
        cr_expect(st && !strcmp(st, "SUCCEEDED"), "read model of %s: %s", ok[p], st ? st : "(none)");
        free(st);
        st = rm_status(limit[p], p);
        cr_expect(st && !strcmp(st, "FAILED"), "read model of %s: %s", limit[p], st ? st : "(none)");
        free(st);
        cr_expect_eq(sg_ll(&E, "EXISTS chorus:notify:{p%d}:%s", p, ok[p]), 1, "notification marker of %s", ok[p]);
        cr_expect_eq(sg_ll(&E, "XLEN " CM_KEY_NOTIFY_LOG ":{p%d}", p), 2, "notification log of partition %d", p);
    }
    cr_expect_eq(sg_ll(&E, "EXISTS " CM_KEY_NOTIFY_LOG), 0);
    cr_expect_eq(sg_ll(&E, "XLEN " CM_KEY_AUDIT_LOG), events, "one audit record per event");
    cr_expect_eq(sg_stop_workers(&E), 0);

    char out[4096];
    cr_assert_eq(run_tool("CHORUS_AUDIT_VERIFY_BIN", "--deep", out, sizeof out), 0, "chorus-audit-verify: %s", out);
    cr_expect(strstr(out, "\"intact\":true"), "%s", out);
    cr_assert_eq(run_tool("CHORUS_REBUILD_BIN", NULL, out, sizeof out), 0, "chorus-projection-rebuild: %s", out);
    char want[64];
    snprintf(want, sizeof want, "\"events\":%lld", events);
    cr_expect(strstr(out, want), "the rebuild replayed every partition's bus: %s", out);
    for (int p = 0; p < NPART; p++) {
        char *st = rm_status(ok[p], p);
        cr_expect(st && !strcmp(st, "SUCCEEDED"), "rebuilt read model of %s: %s", ok[p], st ? st : "(none)");
        free(st);
    }
}

/* Appends one event with data {"mode": mode, "times": times} to aggregate
 * "test" id; returns its event id in eid[37]. */
static void test_event(const char *id, const char *mode, int times, char *eid)
{
    json_t *data = times ? json_pack("{s:s, s:i}", "mode", mode, "times", times) : json_pack("{s:s}", "mode", mode);
    es_new_event ev = {.type = "TestEvent", .data = data};
    es_append_req req = {.aggregate = "test", .aggregate_id = id, .producer = "test",
                         .expected_version = ES_ANY_VERSION, .events = &ev, .n = 1};
    es_append_res res;
    cr_assert_eq(es_append(E.s, &req, &res), ES_OK, "%s", es_store_errstr(E.s));
    json_decref(data);
    snprintf(eid, 37, "%s", res.pos[0].event_id);
}

typedef struct handled_wait {
    char (*eids)[37];
    int n;
} handled_wait;

static bool all_handled(void *ud)
{
    handled_wait *w = ud;
    for (int i = 0; i < w->n; i++) {
        char *v = sg_str(&E, "HGET test:handled %s", w->eids[i]);
        bool ok = v && !strcmp(v, "1");
        free(v);
        if (!ok)
            return false;
    }
    return true;
}

static bool parked_everywhere(void *ud)
{
    (void)ud;
    for (int p = 0; p < NPART; p++)
        if (sg_ll(&E, "XLEN " BUS ":{p%d}.dlq.test-group", p) < 1)
            return false;
    return true;
}

Test(partitions, retries_and_dead_letters_stay_in_their_partition)
{
    sg_spawn(&E, "test", (const char *const[]){"PARTITIONS=4", "RETRY_BASE_MS=20", "RETRY_MAX_MS=100", NULL});
    char flaky[NPART][37], dead[NPART][37];
    for (int p = 0; p < NPART; p++) {
        char id[32];
        id_in("flaky", p, id, sizeof id);
        test_event(id, "fail", 2, flaky[p]);
        id_in("dead", p, id, sizeof id);
        test_event(id, "dead", 0, dead[p]);
    }
    handled_wait w = {flaky, NPART};
    if (!tf_wait_until(all_handled, &w, 20000)) {
        sg_dump_logs(&E);
        cr_assert_fail("the failing events were not retried to success");
    }
    for (int p = 0; p < NPART; p++) {
        char *a = sg_str(&E, "HGET test:attempts %s", flaky[p]);
        cr_expect(a && !strcmp(a, "3"), "event of partition %d: %s attempts, want 3", p, a ? a : "no");
        free(a);
    }
    cr_assert(tf_wait_until(parked_everywhere, NULL, 20000), "refused events not parked in each partition");
    for (int p = 0; p < NPART; p++) {
        char dlq[64], src[64];
        snprintf(dlq, sizeof dlq, BUS ":{p%d}.dlq.test-group", p);
        snprintf(src, sizeof src, BUS ":{p%d}", p);
        redisReply *r = redisCommand(E.c, "XRANGE %s - +", dlq);
        cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1, "one dead letter in %s", dlq);
        const redisReply *f = r->element[0]->element[1];
        bool src_ok = false;
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            if (!strcmp(f->element[j]->str, "stream"))
                src_ok = !strcmp(f->element[j + 1]->str, src);
        cr_expect(src_ok, "dead letter of partition %d names its source %s", p, src);
        /* re-delivered through this partition's redelivery stream: refused and parked again */
        char err[256];
        cr_assert_eq(es_dlq_retry(E.c, src, "test-group", r->element[0]->element[0]->str, err, sizeof err), ES_OK,
                     "%s", err);
        freeReplyObject(r);
    }
    cr_assert(tf_wait_until(parked_everywhere, NULL, 20000), "re-delivered events not parked again");
    for (int p = 0; p < NPART; p++) {
        char *a = sg_str(&E, "HGET test:attempts %s", dead[p]);
        cr_expect(a && !strcmp(a, "2"), "refused event of partition %d seen %s times, want 2", p, a ? a : "no");
        free(a);
        cr_expect_eq(sg_ll(&E, "XLEN " BUS ":{p%d}.retry.test-group", p), 1, "redelivered on partition %d", p);
    }
    cr_expect_eq(sg_ll(&E, "EXISTS " BUS ".dlq.test-group"), 0);
}

typedef struct at_least {
    char **ids;
    size_t n, want;
} at_least;

static bool terminal_at_least(void *ud)
{
    at_least *w = ud;
    return sg_count_terminal(&E, w->ids, w->n) >= w->want;
}

Test(partitions, sigkill_midway_leaves_one_terminal_each_and_stock_conserved)
{
    enum { N = 240, STOCK = 100 };
    sg_product(&E, "hot", STOCK);
    int first = sg_spawn_saga(&E, k_env);
    sg_spawn_saga(&E, k_env);
    static char names[N][24];
    static char *ids[N];
    int per[NPART] = {0};
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "race-%d", i);
        ids[i] = names[i];
        per[cm_partition_of(ids[i])]++;
    }
    for (int p = 0; p < NPART; p++)
        cr_assert_gt(per[p], N / NPART / 2, "partition %d has %d of the checkouts", p, per[p]);
    sg_line l = {"hot", 1, 500};
    for (int i = 0; i < N / 2; i++)
        sg_checkout(&E, ids[i], "client-r", &l, 1);
    at_least w = {ids, N / 2, N / 8};
    cr_assert(tf_wait_until(terminal_at_least, &w, 30000), "an eighth of the sagas did not end");
    for (int k = 0; k < 3; k++)
        sg_kill9(&E, first + k);   /* one copy of each saga worker, mid-run */
    for (int i = N / 2; i < N; i++)   /* the second half arrives while they are down */
        sg_checkout(&E, ids[i], "client-r", &l, 1);
    for (int k = 0; k < 3; k++)
        sg_restart(&E, first + k);
    wait_ended(ids, N, 60000);
    wait_quiet();
    size_t succeeded = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        es_checkout_state st;
        sg_fold(&E, ids[i], &st);
        char *t = sg_types(&E, ids[i]);
        size_t len = strlen(t);
        bool last_terminal = (len >= 17 && !strcmp(t + len - 17, "CheckoutSucceeded")) ||
                             (len >= 14 && !strcmp(t + len - 14, "CheckoutFailed"));
        if (st.terminal_events != 1 || !last_terminal)
            if (bad++ < 5)
                fprintf(stderr, "%s: %d terminal events: %s\n", ids[i], st.terminal_events, t);
        succeeded += !strcmp(st.status, "SUCCEEDED");
        free(t);
    }
    cr_expect_eq(bad, 0, "%zu checkouts without exactly one (final) terminal event", bad);
    cr_expect_eq(succeeded, (size_t)STOCK, "exactly the stock is sold");
    long long a, r, s;
    sg_stock(&E, "hot", &a, &r, &s);
    cr_expect(a == 0 && r == 0 && s == STOCK, "hot: available %lld reserved %lld sold %lld", a, r, s);
    for (int g = 0; g < 3; g++)
        cr_expect_eq(sg_dlq_len(&E, cm_group_names[g]), 0, "dead letters of %s", cm_group_names[g]);
    cr_expect_eq(sg_stop_workers(&E), 0, "workers drained and exited 0");
}
