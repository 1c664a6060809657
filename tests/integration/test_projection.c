/* test_projection.c - the cqrs-projection read models (projections/) with a
 * real redis-server and real `chorus-worker cqrs-projection` processes.
 *
 * Sagas are appended through the event store library (as the saga workers
 * would write them), so these tests show the projection alone:
 * each saga shape gives exactly its read model (checkout status as the fold,
 * orders by client, stock counts, checkpoint); redeliveries and duplicates
 * change nothing; events applied in any order (several projection copies)
 * give the same bytes; a rebuild from zero reproduces the read models byte
 * for byte; a live projection waits while a rebuild runs; terminal statuses
 * are published for the API's long-poll. With PARTITIONS=4 (suite
 * projection4): batches mixing partitions in any order give the same bytes,
 * the summed and merged views equal the unpartitioned models, the rebuild
 * reproduces the partitioned models, a lock pauses its partition only.
 *
 * CHORUS_WORKER_BIN and CHORUS_REBUILD_BIN (meson env) name the binaries. */
#include <criterion/criterion.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/names.h"
#include "common/redis.h"
#include "projections/projection.h"
#include "projections/read.h"
#include "tests/e2e/saga_env.h"
#include "tests/integration/saga_events.h"
#include "tests/support/proc.h"

#define BUS CM_BUS_STREAM_DEFAULT
#define GROUP "choreo-cqrs"
#define WAIT_MS 20000

static sg_env E;
static cm_cluster *E_CC;            /* E.c as the slot-routing client the projection takes */
static redisContext *E_CC_OF;       /* the connection E_CC borrows */

/* E.c as a cm_cluster (borrowed again when E.c was reconnected). */
static cm_cluster *ecc(void)
{
    if (E_CC_OF != E.c) {
        cm_cluster_free(E_CC);
        E_CC = cm_cluster_borrow(E.c);
        E_CC_OF = E.c;
    }
    return E_CC;
}

static void setup(void)
{
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    cm_cluster_free(E_CC);
    E_CC = NULL;
    E_CC_OF = NULL;
    sg_teardown(&E);
}

TestSuite(projection, .init = setup, .fini = teardown, .timeout = 120);

/* Waits until the projection applied the whole bus and acknowledged it. */
static void wait_projected(void)
{
    char last[64];
    snprintf(last, sizeof last, "%s", sx_last_id(E.c, BUS));
    bool ok = sx_wait_str(E.c, PJ_CHECKPOINT_KEY, last, WAIT_MS) && sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the projection did not reach the bus's last entry %s", last);
}

static void fmt_time(double t, char *out, size_t n)
{
    snprintf(out, n, "%.6f", t);
}

/* Asserts the checkout's read model field by field against its history. */
static void assert_checkout_rm(const char *id, const char *client, const char *status, const char *order_id,
                               const char *reason, const char *letters)
{
    size_t n;
    es_event **evs = sx_history(E.s, id, &n);
    es_checkout_state st;
    es_checkout_fold(evs, n, &st);
    cr_assert_str_eq(st.status, status, "the fold of %s disagrees with the test", id);
    char key[128], upd[32], init[32], seq[16];
    snprintf(key, sizeof key, PJ_RM_PREFIX "checkout:%s", id);
    fmt_time(evs[n - 1]->emitted_at, upd, sizeof upd);
    fmt_time(evs[0]->emitted_at, init, sizeof init);
    snprintf(seq, sizeof seq, "%zu", n);
    const char *fv[24];
    int k = 0;
    fv[k++] = "checkout_id", fv[k++] = id, fv[k++] = "client_id", fv[k++] = client;
    fv[k++] = "status", fv[k++] = status;
    fv[k++] = "updated_at", fv[k++] = upd, fv[k++] = "seq", fv[k++] = seq;
    fv[k++] = "_t", fv[k++] = letters, fv[k++] = "_init", fv[k++] = init;
    if (order_id)   /* the fields' fixed order (apply.lua's CO_FIELDS, layout 4) */
        fv[k++] = "order_id", fv[k++] = order_id;
    if (reason)
        fv[k++] = "reason", fv[k++] = reason;
    fv[k] = NULL;
    sx_assert_hash(E.c, key, fv);
    es_events_free(evs, n);
}

/* emitted_at of the first event of type in the checkout's history. */
static void event_time(const char *id, const char *type, char *out, size_t n)
{
    size_t cnt;
    es_event **evs = sx_history(E.s, id, &cnt);
    out[0] = '\0';
    for (size_t i = 0; i < cnt; i++)
        if (!strcmp(evs[i]->type, type)) {
            fmt_time(evs[i]->emitted_at, out, n);
            break;
        }
    es_events_free(evs, cnt);
    cr_assert(out[0], "%s has no %s", id, type);
}

Test(projection, each_saga_shape_gives_exactly_its_read_model)
{
    sx_saga(E.s, SX_SUCCESS, "co-ok", "c1", "p1", 2);
    sx_saga(E.s, SX_NO_STOCK, "co-nostock", "c2", "p2", 5);
    sx_saga(E.s, SX_ORDER_LIMIT, "co-limit", "c1", "p1", 3);
    sx_saga(E.s, SX_TIMEOUT, "co-timeout", "c3", "p1", 1);
    sx_saga(E.s, SX_SUCCESS, "co-ok2", "c1", "p2", 4);
    sg_spawn(&E, "cqrs-projection", NULL);
    wait_projected();

    assert_checkout_rm("co-ok", "c1", CM_STATUS_SUCCEEDED, "ord-co-ok", NULL, "IROS");
    assert_checkout_rm("co-ok2", "c1", CM_STATUS_SUCCEEDED, "ord-co-ok2", NULL, "IROS");
    assert_checkout_rm("co-nostock", "c2", CM_STATUS_FAILED, NULL, CM_REASON_INSUFFICIENT_STOCK, "IXF");
    assert_checkout_rm("co-limit", "c1", CM_STATUS_FAILED, NULL, CM_REASON_ORDER_LIMIT, "IRYLF");
    assert_checkout_rm("co-timeout", "c3", CM_STATUS_FAILED, NULL, CM_REASON_TIMED_OUT, "IRTLF");

    char ts[32];
    event_time("co-ok2", "OrderCreated", ts, sizeof ts);
    sx_assert_hash(E.c, PJ_RM_PREFIX "client:c1",
                   (const char *const[]){"total_orders", "2", "last_order_id", "ord-co-ok2", "last_checkout_id",
                                         "co-ok2", "last_update_ts", ts, NULL});
    cr_assert_eq(sg_ll(&E, "EXISTS " PJ_RM_PREFIX "client:c2"), 0, "a client without orders has no read model");
    sx_assert_hash(E.c, PJ_RM_PREFIX "stock:p1",
                   (const char *const[]){"reserved", "6", "sold", "2", "released", "4", NULL});
    sx_assert_hash(E.c, PJ_RM_PREFIX "stock:p2",
                   (const char *const[]){"reserved", "4", "sold", "4", "released", "0", NULL});
    char *cp = sg_str(&E, "GET " PJ_CHECKPOINT_KEY);
    cr_assert_str_eq(cp, sx_last_id(E.c, BUS));
    free(cp);
}

Test(projection, redelivered_and_duplicated_events_change_nothing)
{
    sx_saga(E.s, SX_SUCCESS, "co-a", "c1", "p1", 2);
    sx_saga(E.s, SX_ORDER_LIMIT, "co-b", "c1", "p1", 3);
    sg_spawn(&E, "cqrs-projection", (const char *const[]){"BATCH_SIZE=4", NULL});
    wait_projected();
    sx_dump before, after;
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &before);
    cr_assert_gt(before.n, 4);

    /* every event again: the group rewound, and copies on the group's
     * redelivery stream (as a dead-letter retry would put them) */
    char retry[256];
    snprintf(retry, sizeof retry, "%s.retry.%s", BUS, GROUP);
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", BUS);
    cr_assert(all && all->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *f = all->element[i]->element[1];
        const char *argv[16] = {"XADD", retry, "*"};
        size_t argc = 3;
        for (size_t j = 0; j < f->elements && argc < 16; j++)
            argv[argc++] = f->element[j]->str;
        freeReplyObject(redisCommandArgv(E.c, (int)argc, argv, NULL));
    }
    sg_ll(&E, "XGROUP SETID %s %s 0", BUS, GROUP);
    cr_assert(sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS) && sx_wait_group_idle(E.c, retry, GROUP, WAIT_MS),
              "the redeliveries were not consumed");
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &after);
    sx_dump_assert_eq(&before, &after);
    sx_dump_free(&after);

    /* the same events appended to the bus again under new entry ids */
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *f = all->element[i]->element[1];
        const char *argv[16] = {"XADD", BUS, "*"};
        size_t argc = 3;
        for (size_t j = 0; j < f->elements && argc < 16; j++)
            argv[argc++] = f->element[j]->str;
        freeReplyObject(redisCommandArgv(E.c, (int)argc, argv, NULL));
    }
    freeReplyObject(all);
    wait_projected();   /* the checkpoint moves to the last copy ... */
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &after);
    cr_assert_eq(after.n, before.n);
    for (size_t i = 0; i < after.n; i++)   /* ... and nothing else changes */
        if (strcmp(after.keys[i], PJ_CHECKPOINT_KEY) != 0)
            cr_assert(after.lens[i] == before.lens[i] && !memcmp(after.vals[i], before.vals[i], after.lens[i]),
                      "%s changed", after.keys[i]);
    sx_dump_free(&before);
    sx_dump_free(&after);
}

/* Deletes the read models (as a rebuild would). */
static void drop_read_models(void)
{
    sx_dump d;
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &d);
    for (size_t i = 0; i < d.n; i++)
        sg_ll(&E, "DEL %s", d.keys[i]);
    sx_dump_free(&d);
}

/* Applies evs[perm[i]] one event per call, as copies splitting a checkout
 * between their batches would. */
static void apply_each(pj_projection *p, es_event **evs, const int *perm, int n)
{
    for (int i = 0; i < n; i++) {
        pj_apply_res res;
        char err[256];
        int rc = pj_projection_apply(p, ecc(), BUS, &evs[perm[i]], 1, PJ_LIVE, NULL, &res, err, sizeof err);
        cr_assert_eq(rc, PJ_OK, "apply: %s", err);
    }
}

/* Next permutation in lexicographic order; false after the last. */
static bool next_perm(int *a, int n)
{
    int i = n - 2;
    while (i >= 0 && a[i] >= a[i + 1])
        i--;
    if (i < 0)
        return false;
    int j = n - 1;
    while (a[j] <= a[i])
        j--;
    int t = a[i];
    a[i] = a[j];
    a[j] = t;
    for (int l = i + 1, r = n - 1; l < r; l++, r--) {
        t = a[l];
        a[l] = a[r];
        a[r] = t;
    }
    return true;
}

Test(projection, events_applied_in_any_order_give_identical_bytes)
{
    static const enum sx_shape shapes[] = {SX_SUCCESS, SX_ORDER_LIMIT, SX_TIMEOUT, SX_NO_STOCK};
    pj_projection *p = pj_projection_new();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        char id[32];
        snprintf(id, sizeof id, "co-%zu", s);
        sx_saga(E.s, shapes[s], id, "c1", "p1", 3);
        size_t n;
        es_event **evs = sx_history(E.s, id, &n);
        int perm[8];
        for (size_t i = 0; i < n; i++)
            perm[i] = (int)i;
        drop_read_models();
        apply_each(p, evs, perm, (int)n);
        sx_dump in_order;
        sx_dump_take(E.c, PJ_RM_PREFIX "*", &in_order);
        int tried = 0;
        while (next_perm(perm, (int)n)) {
            drop_read_models();
            apply_each(p, evs, perm, (int)n);
            apply_each(p, evs, perm, (int)n);   /* and every event twice */
            sx_dump d;
            sx_dump_take(E.c, PJ_RM_PREFIX "*", &d);
            sx_dump_assert_eq(&in_order, &d);
            sx_dump_free(&d);
            tried++;
        }
        cr_assert_gt(tried, 0);
        sx_dump_free(&in_order);
        es_events_free(evs, n);
    }
    pj_projection_free(p);
}

/* Runs chorus-projection-rebuild against the test's Redis with one extra
 * "K=V" (or NULL); returns its exit code. */
static int run_rebuild_env(const char *extra)
{
    const char *bin = getenv("CHORUS_REBUILD_BIN");
    cr_assert(bin && *bin, "CHORUS_REBUILD_BIN is not set (run through meson test)");
    char url[340], log[400];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    snprintf(log, sizeof log, "%s/rebuild.log", E.r.dir);
    const char *argv[] = {bin, NULL};
    const char *env[] = {url, "LOG_LEVEL=warn", extra, NULL};
    pid_t pid = tf_spawn(argv, env, log);
    cr_assert_gt(pid, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 60000, &st), 0, "the rebuild did not finish");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        tf_dump_file(log, "rebuild");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run_rebuild(void)
{
    return run_rebuild_env(NULL);
}

Test(projection, rebuild_from_zero_reproduces_the_read_models_byte_for_byte)
{
    /* two copies with small batches: checkouts are split between them */
    sg_spawn(&E, "cqrs-projection", (const char *const[]){"BATCH_SIZE=3", NULL});
    sg_spawn(&E, "cqrs-projection", (const char *const[]){"BATCH_SIZE=3", NULL});
    static const enum sx_shape shapes[] = {SX_SUCCESS, SX_NO_STOCK, SX_ORDER_LIMIT, SX_TIMEOUT, SX_SUCCESS};
    for (int i = 0; i < 60; i++) {
        char id[32], client[16], product[16];
        snprintf(id, sizeof id, "co-%02d", i);
        snprintf(client, sizeof client, "c%d", i % 7);
        snprintf(product, sizeof product, "p%d", i % 3);
        sx_saga(E.s, shapes[i % 5], id, client, product, 1 + i % 4);
    }
    wait_projected();
    sx_dump before, after;
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &before);
    cr_assert_eq(before.n, 60 + 7 + 7 + 3 + 1,
                 "60 checkouts, 7 clients with orders, 7 client indexes, 3 products, the checkpoint");
    sg_ll(&E, "HSET " PJ_RM_PREFIX "checkout:stray status PENDING");   /* not in the store: must go */

    /* lifetimes (READ_MODEL_TTL_S, 7 days by default) count from the
     * events' times: the rebuild sets the same */
    long long *exp = calloc(before.n, sizeof *exp);
    size_t closed = 0;
    for (size_t i = 0; i < before.n; i++) {
        exp[i] = sg_ll(&E, "EXPIRETIME %s", before.keys[i]);
        closed += exp[i] > 0 && !strncmp(before.keys[i], PJ_RM_PREFIX "checkout:", strlen(PJ_RM_PREFIX "checkout:"));
    }
    cr_assert_eq(closed, 60, "every closed checkout's read model has its lifetime");

    cr_assert_eq(run_rebuild(), 0, "chorus-projection-rebuild failed");
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &after);
    sx_dump_assert_eq(&before, &after);
    for (size_t i = 0; i < before.n; i++)
        cr_expect_eq(sg_ll(&E, "EXPIRETIME %s", before.keys[i]), exp[i], "%s: the rebuild's lifetime differs",
                     before.keys[i]);
    free(exp);
    cr_assert_eq(sg_ll(&E, "EXISTS " PJ_REBUILD_LOCK_KEY), 0, "the rebuild released its lock");
    sx_dump_free(&before);
    sx_dump_free(&after);

    /* the live copies go on after the rebuild */
    sx_saga(E.s, SX_SUCCESS, "co-after", "c1", "p1", 1);
    wait_projected();
    assert_checkout_rm("co-after", "c1", CM_STATUS_SUCCEEDED, "ord-co-after", NULL, "IROS");
}

static bool one_pending(void *ud)
{
    (void)ud;
    redisReply *r = redisCommand(E.c, "XPENDING %s %s", BUS, GROUP);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && cm_reply_ll(r->element[0], -1) == 1;
    freeReplyObject(r);
    return ok;
}

Test(projection, live_projection_waits_while_a_rebuild_holds_the_lock)
{
    sg_spawn(&E, "cqrs-projection", NULL);
    sx_saga(E.s, SX_SUCCESS, "co-1", "c1", "p1", 1);
    wait_projected();
    sg_ll(&E, "SET " PJ_REBUILD_LOCK_KEY " someone-else PX 60000");
    sx_event(E.s, "co-2", "CheckoutInitiated", json_pack("{s:s, s:[], s:i}", "client_id", "c2", "items", "total_cents", 0));
    cr_assert(tf_wait_until(one_pending, NULL, WAIT_MS), "the worker did not take the new event");
    cr_assert_eq(sg_ll(&E, "EXISTS " PJ_RM_PREFIX "checkout:co-2"), 0, "applied while a rebuild held the lock");
    sg_ll(&E, "DEL " PJ_REBUILD_LOCK_KEY);
    wait_projected();
    char *status = sg_str(&E, "HGET " PJ_RM_PREFIX "checkout:co-2 status");
    cr_assert_str_eq(status, CM_STATUS_PENDING);
    free(status);
    cr_assert_eq(sg_dlq_len(&E, GROUP), 0, "waiting must not spend delivery attempts");
}

/* Reads the next message on sub (subscribed to the changed channel) into id. */
static void next_change(redisContext *sub, char *id, size_t n)
{
    redisReply *r = NULL;
    cr_assert_eq(redisGetReply(sub, (void **)&r), REDIS_OK, "no change message in time");
    cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 3);
    cr_assert_str_eq(r->element[1]->str, CM_RM_CHANGED_CHANNEL);
    snprintf(id, n, "%s", r->element[2]->str);
    freeReplyObject(r);
}

/* The API's long-poll waits for SUCCEEDED / FAILED only: those are published,
 * once per checkout; PENDING and STOCK_RESERVED are not (each message costs
 * every API process a wake-up). */
Test(projection, terminal_status_changes_are_published_once_for_long_polls)
{
    redisContext *sub = tf_redis_connect(&E.r);
    struct timeval tv = {10, 0};
    redisSetTimeout(sub, tv);
    redisReply *r = redisCommand(sub, "SUBSCRIBE %s", CM_RM_CHANGED_CHANNEL);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    /* one event per batch: every status is written by a batch of its own */
    sg_spawn(&E, "cqrs-projection", (const char *const[]){"BATCH_SIZE=1", NULL});
    sx_saga(E.s, SX_SUCCESS, "co-pub", "c1", "p1", 1);
    sx_saga(E.s, SX_ORDER_LIMIT, "co-fail", "c1", "p1", 1);
    char got[2][64];
    next_change(sub, got[0], sizeof got[0]);
    next_change(sub, got[1], sizeof got[1]);
    cr_assert_str_eq(got[0], "co-pub", "the first checkout to become terminal");
    cr_assert_str_eq(got[1], "co-fail");
    wait_projected();
    /* nothing else was published before this marker */
    sg_ll(&E, "PUBLISH %s marker", CM_RM_CHANGED_CHANNEL);
    char next[64];
    next_change(sub, next, sizeof next);
    cr_assert_str_eq(next, "marker", "a non-terminal status change was published");
    redisFree(sub);
    char *status = sg_str(&E, "HGET " PJ_RM_PREFIX "checkout:co-pub status");
    cr_assert_str_eq(status, CM_STATUS_SUCCEEDED);
    free(status);
}

/* Asserts the checkout's read model says what the fold of its history says. */
static void assert_rm_matches_fold(const char *id)
{
    es_checkout_state st;
    sg_fold(&E, id, &st);
    char *status = sg_str(&E, "HGET " PJ_RM_PREFIX "checkout:%s status", id);
    char *order = sg_str(&E, "HGET " PJ_RM_PREFIX "checkout:%s order_id", id);
    char *reason = sg_str(&E, "HGET " PJ_RM_PREFIX "checkout:%s reason", id);
    cr_assert(status && !strcmp(status, st.status), "%s: read model %s, fold %s", id, status ? status : "-", st.status);
    cr_assert_str_eq(order ? order : "", st.order_id, "%s order_id", id);
    if (!strcmp(st.status, CM_STATUS_FAILED))
        cr_assert_str_eq(reason ? reason : "", st.reason, "%s reason", id);
    else
        cr_assert_null(reason, "%s: a reason on a checkout that did not fail", id);
    free(status);
    free(order);
    free(reason);
}

Test(projection, read_models_agree_with_the_real_saga_workers)
{
    sg_product(&E, "p1", 5);
    sg_product(&E, "p2", 10000);
    sg_spawn_saga(&E, NULL);
    sg_spawn(&E, "cqrs-projection", NULL);
    sg_checkout(&E, "co-1", "c1", (const sg_line[]){{"p1", 3, 100}}, 1);      /* succeeds */
    sg_checkout(&E, "co-2", "c1", (const sg_line[]){{"p1", 3, 100}}, 1);      /* insufficient stock */
    sg_checkout(&E, "co-3", "c2", (const sg_line[]){{"p2", 1, 100}, {"p1", 2, 100}}, 2);   /* succeeds */
    sg_checkout(&E, "co-4", "c2", (const sg_line[]){{"p2", 5000, 1000}}, 1);  /* over the order limit */
    char *ids[] = {"co-1", "co-2", "co-3", "co-4"};
    bool ok = sg_wait_terminal(&E, ids, 4, WAIT_MS) && sg_wait_quiet(&E, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the sagas did not settle");
    wait_projected();
    for (size_t i = 0; i < 4; i++)
        assert_rm_matches_fold(ids[i]);
    const char *products[] = {"p1", "p2"};
    for (size_t i = 0; i < 2; i++) {
        long long avail, reserved, sold;
        sg_stock(&E, products[i], &avail, &reserved, &sold);
        long long r = sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s reserved", products[i]);
        long long s = sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s sold", products[i]);
        long long l = sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s released", products[i]);
        cr_assert_eq(s, sold, "%s: the stock view's sold is the catalog's", products[i]);
        cr_assert_eq(r - s - l, reserved, "%s: what is still held is the catalog's reserved", products[i]);
    }
    cr_assert_eq(sg_ll(&E, "HGET " PJ_RM_PREFIX "client:c1 total_orders"), 1);
    cr_assert_eq(sg_ll(&E, "HGET " PJ_RM_PREFIX "client:c2 total_orders"), 1);
}

/* The client index (CM_KEY_CLIENT_CHECKOUTS): each client's checkouts scored
 * by their CheckoutInitiated emitted_at, trimmed to the newest
 * CM_CLIENT_CHECKOUTS_KEEP whatever order the events are applied in. */
Test(projection, client_index_keeps_each_clients_newest_checkouts)
{
    enum { N = CM_CLIENT_CHECKOUTS_KEEP + 5 };
    es_event **evs[N];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "co-%03d", i);
        sx_event(E.s, id, "CheckoutInitiated",
                 json_pack("{s:s, s:[], s:i}", "client_id", "c-many", "items", "total_cents", 100));
        size_t n;
        evs[i] = sx_history(E.s, id, &n);
        cr_assert_eq(n, 1);
    }
    sx_saga(E.s, SX_SUCCESS, "co-other", "c-one", "p1", 1);
    size_t n_other;
    es_event **other = sx_history(E.s, "co-other", &n_other);
    pj_projection *p = pj_projection_new();
    for (int i = N - 1; i >= 0; i--) {   /* newest first: the oldest arrive after the trim */
        pj_apply_res res;
        char err[256];
        cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs[i], 1, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK,
                     "%s", err);
    }
    pj_apply_res res;
    char err[256];
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, other, n_other, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK);
    pj_projection_free(p);

    cr_assert_eq(sg_ll(&E, "ZCARD " CM_KEY_CLIENT_CHECKOUTS "c-many"), CM_CLIENT_CHECKOUTS_KEEP);
    redisReply *r = redisCommand(E.c, "ZREVRANGE " CM_KEY_CLIENT_CHECKOUTS "c-many 0 -1 WITHSCORES");
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 * CM_CLIENT_CHECKOUTS_KEEP);
    for (int k = 0; k < CM_CLIENT_CHECKOUTS_KEEP; k++) {
        const es_event *ev = evs[N - 1 - k][0];   /* appended in order: newest is the last */
        cr_assert_str_eq(r->element[2 * k]->str, ev->aggregate_id, "rank %d", k);
        cr_assert(fabs(strtod(r->element[2 * k + 1]->str, NULL) - ev->emitted_at) < 1e-5,
                  "%s scored by its emitted_at", ev->aggregate_id);
    }
    freeReplyObject(r);
    r = redisCommand(E.c, "ZRANGE " CM_KEY_CLIENT_CHECKOUTS "c-one 0 -1");
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1,
              "one entry per checkout, whatever its later events");
    cr_assert_str_eq(r->element[0]->str, "co-other");
    freeReplyObject(r);
    for (int i = 0; i < N; i++)
        es_events_free(evs[i], 1);
    es_events_free(other, n_other);
}

/* Applies evs[from..to) through p; returns the result. */
static pj_apply_res apply_range(pj_projection *p, es_event **evs, size_t from, size_t to, enum pj_source src)
{
    pj_apply_res res;
    char err[256];
    int rc = pj_projection_apply_from(p, ecc(), evs + from, to - from, PJ_LIVE, src, NULL, &res, err, sizeof err);
    cr_assert_eq(rc, PJ_OK, "apply: %s", err);
    return res;
}

Test(projection, an_order_finds_its_stock_keys_in_the_projections_memory_or_asks_once)
{
    sx_saga(E.s, SX_SUCCESS, "co-a", "c1", "p1", 2);
    sx_saga(E.s, SX_SUCCESS, "co-b", "c1", "p1", 3);
    size_t na, nb;
    es_event **a = sx_history(E.s, "co-a", &na), **b = sx_history(E.s, "co-b", &nb);
    cr_assert(na == 4 && nb == 4, "Initiated, Reserved, OrderCreated, Succeeded");
    pj_projection *p = pj_projection_new(), *other = pj_projection_new();

    /* the copy that applied the reservation passes the stock key itself */
    cr_assert_eq(apply_range(p, a, 0, 2, PJ_FROM_BUS).key_misses, 0);
    pj_apply_res res = apply_range(p, a, 2, 4, PJ_FROM_BUS);
    cr_assert_eq(res.key_misses, 0, "remembered: no second call");
    cr_assert_eq(res.applied, 2);

    /* another copy (or this one after a restart) learns it from the script */
    cr_assert_eq(apply_range(p, b, 0, 2, PJ_FROM_BUS).key_misses, 0);
    res = apply_range(other, b, 2, 4, PJ_FROM_BUS);
    cr_assert_eq(res.key_misses, 1, "p1's stock view was asked for");
    cr_assert_eq(res.applied, 2);
    cr_assert_eq(sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:p1 sold"), 5, "both orders sold what they reserved");
    assert_checkout_rm("co-b", "c1", CM_STATUS_SUCCEEDED, "ord-co-b", NULL, "IROS");
    es_events_free(a, na);
    es_events_free(b, nb);
    pj_projection_free(p);
    pj_projection_free(other);
}

Test(projection, a_batch_from_the_redelivery_stream_does_not_move_the_checkpoint)
{
    sx_saga(E.s, SX_SUCCESS, "co-a", "c1", "p1", 2);
    size_t n;
    es_event **evs = sx_history(E.s, "co-a", &n);
    pj_projection *p = pj_projection_new();
    apply_range(p, evs, 0, 2, PJ_FROM_BUS);
    char *cp = sg_str(&E, "GET " PJ_CHECKPOINT_KEY);
    cr_assert_str_eq(cp, evs[1]->entry_id);
    pj_apply_res res = apply_range(p, evs, 2, 4, PJ_FROM_REDELIVERY);
    cr_assert_eq(res.applied, 2, "applied all the same");
    char *cp2 = sg_str(&E, "GET " PJ_CHECKPOINT_KEY);
    cr_assert_str_eq(cp2, cp, "ids of the redelivery stream are not bus positions");
    free(cp);
    free(cp2);
    es_events_free(evs, n);
    pj_projection_free(p);
}

/* Redis does not roll a script back: a key of a foreign type that the batch
 * needs must fail it before anything is written, so the retried batch (once
 * the key is fixed) still applies everything, nothing counted as a duplicate. */
Test(projection, a_foreign_key_in_the_way_fails_the_batch_before_any_write)
{
    sx_saga(E.s, SX_SUCCESS, "co-x", "c1", "p1", 2);
    size_t n;
    es_event **evs = sx_history(E.s, "co-x", &n);
    freeReplyObject(redisCommand(E.c, "SET " PJ_RM_PREFIX "stock:p1 not-a-hash"));
    pj_projection *p = pj_projection_new();
    pj_apply_res res;
    char err[256];
    cr_assert_neq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK,
                  "a WRONGTYPE must fail the batch");
    cr_expect_eq(sg_ll(&E, "EXISTS " PJ_RM_PREFIX "checkout:co-x"), 0, "the checkout was written before the error");
    cr_expect_eq(sg_ll(&E, "EXISTS " PJ_RM_PREFIX "client:c1"), 0, "the client was written before the error");
    freeReplyObject(redisCommand(E.c, "DEL " PJ_RM_PREFIX "stock:p1"));
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK, "%s", err);
    cr_expect_eq(res.duplicates, 0, "the failed attempt left nothing behind");
    cr_expect_eq(sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:p1 sold"), 2);
    cr_expect_eq(sg_ll(&E, "HGET " PJ_RM_PREFIX "client:c1 total_orders"), 1);
    pj_projection_free(p);
    es_events_free(evs, n);
}

/* ---- PARTITIONS=4: the partition is the unit of atomicity ----
 * The stock, client, client-index and checkpoint models are kept per
 * partition (projection.h) and read back summed and merged
 * (projections/read.h). These tests run the test process and the workers
 * with PARTITIONS=4, so checkouts, clients and products spread over four
 * partitions' keys. */

#define NPART 4

static void setup4(void)
{
    cr_assert_eq(cm_partitions_set(NPART), 0);
    sg_setup(&E, NULL);
}

TestSuite(projection4, .init = setup4, .fini = teardown, .timeout = 120);

/* Appends n sagas (shapes cycling) of clients c0..c3 and products p0..p2
 * and returns all their events (*count; free with es_events_free). Asserts
 * they cover every partition. */
static es_event **many_sagas(int n, size_t *count)
{
    static const enum sx_shape shapes[] = {SX_SUCCESS, SX_NO_STOCK, SX_ORDER_LIMIT, SX_TIMEOUT, SX_SUCCESS};
    size_t cap = (size_t)n * 5, k = 0;
    es_event **all = calloc(cap, sizeof *all);
    bool seen[NPART] = {false};
    for (int i = 0; i < n; i++) {
        char id[32], client[16], product[16];
        snprintf(id, sizeof id, "co-%02d", i);
        snprintf(client, sizeof client, "c%d", i % 4);
        snprintf(product, sizeof product, "p%d", i % 3);
        sx_saga(E.s, shapes[i % 5], id, client, product, 1 + i % 4);
        seen[cm_partition_of(id)] = true;
        size_t m;
        es_event **evs = sx_history(E.s, id, &m);
        cr_assert_leq(k + m, cap);
        for (size_t j = 0; j < m; j++)
            all[k++] = evs[j];
        free(evs);
    }
    for (int p = 0; p < NPART; p++)
        cr_assert(seen[p], "no checkout of partition %d: pick other ids", p);
    *count = k;
    return all;
}

static void shuffle(es_event **evs, size_t n, unsigned *seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rand_r(seed) % i;
        es_event *t = evs[i - 1];
        evs[i - 1] = evs[j];
        evs[j] = t;
    }
}

/* Applies evs in batches of 1..7 events (sizes drawn from seed). */
static void apply_batches(pj_projection *p, es_event **evs, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n;) {
        size_t b = 1 + (size_t)rand_r(seed) % 7;
        if (b > n - i)
            b = n - i;
        pj_apply_res res;
        char err[256];
        int rc = pj_projection_apply(p, ecc(), BUS, evs + i, b, PJ_LIVE, NULL, &res, err, sizeof err);
        cr_assert_eq(rc, PJ_OK, "apply: %s", err);
        i += b;
    }
}

/* Number of partitions whose copy of a family's key for id exists. */
static int partitions_with(cm_key (*key)(int, const char *), const char *id)
{
    int k = 0;
    for (int p = 0; p < NPART; p++)
        k += sg_ll(&E, "EXISTS %s", key(p, id).s) == 1;
    return k;
}

Test(projection4, batches_mixing_partitions_in_any_order_with_duplicates_give_identical_models)
{
    size_t n;
    es_event **evs = many_sagas(24, &n);
    pj_projection *p = pj_projection_new();
    pj_apply_res res;
    char err[256];
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(res.applied, n);
    sx_dump ref;
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &ref);
    /* the aggregates really are split: a product's and a client's counts
     * live in several partitions, and each partition has its checkpoint */
    cr_assert_geq(partitions_with(cm_key_rm_stock, "p0"), 2, "p0's stock is in one partition only");
    cr_assert_geq(partitions_with(cm_key_rm_client_checkouts, "c0"), 2, "c0's index is in one partition only");
    for (int q = 0; q < NPART; q++)
        cr_assert_eq(sg_ll(&E, "EXISTS %s", cm_key_rm_checkpoint(q).s), 1, "partition %d has no checkpoint", q);
    cr_assert_eq(sg_ll(&E, "EXISTS " PJ_CHECKPOINT_KEY), 0, "the unpartitioned checkpoint is not written");

    unsigned seed = 7;
    for (int round = 0; round < 6; round++) {
        drop_read_models();
        /* a fresh projection every other round: it remembers no reservation,
         * so an OrderCreated's stock keys come through the 'need' protocol */
        pj_projection *q = round % 2 ? pj_projection_new() : p;
        shuffle(evs, n, &seed);
        apply_batches(q, evs, n, &seed);
        shuffle(evs, n, &seed);
        apply_batches(q, evs, n, &seed);   /* every event again, in another order */
        if (q != p)
            pj_projection_free(q);
        sx_dump d;
        sx_dump_take(E.c, PJ_RM_PREFIX "*", &d);
        sx_dump_assert_eq(&ref, &d);
        sx_dump_free(&d);
    }
    sx_dump_free(&ref);
    pj_projection_free(p);
    es_events_free(evs, n);
}

/* The summed and merged views of the partitioned models equal what the
 * unpartitioned projection (PARTITIONS=1, whose keys carry no tag and so
 * live beside the partitioned ones) makes of the same events. */
Test(projection4, summed_and_merged_views_equal_the_unpartitioned_models)
{
    size_t n;
    es_event **evs = many_sagas(20, &n);
    /* a client with more checkouts than its index keeps, over every partition */
    enum { MANY = PJ_CLIENT_CHECKOUTS_MAX + 20 };
    evs = realloc(evs, (n + MANY) * sizeof *evs);
    for (int i = 0; i < MANY; i++) {
        char id[32];
        snprintf(id, sizeof id, "cm-%03d", i);
        sx_event(E.s, id, "CheckoutInitiated",
                 json_pack("{s:s, s:[], s:i}", "client_id", "c-many", "items", "total_cents", 0));
        size_t m;
        es_event **h = sx_history(E.s, id, &m);
        evs[n++] = h[0];
        free(h);
    }
    char err[256];
    pj_apply_res res;
    pj_projection *p = pj_projection_new();
    for (size_t i = 0; i < n; i += 50)
        cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs + i, n - i < 50 ? n - i : 50, PJ_LIVE, NULL, &res, err,
                                         sizeof err),
                     PJ_OK, "%s", err);
    pj_projection_free(p);
    cr_assert_eq(cm_partitions_set(1), 0);   /* the reference: one partition, historical names */
    p = pj_projection_new();
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK, "%s", err);
    pj_projection_free(p);
    cr_assert_eq(cm_partitions_set(NPART), 0);

    for (int k = 0; k < 3; k++) {
        char pid[8];
        snprintf(pid, sizeof pid, "p%d", k);
        pj_stock_view v;
        cr_assert_eq(pj_read_stock(ecc(), pid, &v, err, sizeof err), PJ_OK, "%s", err);
        cr_assert(v.found);
        cr_expect_eq(v.reserved, sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s reserved", pid), "%s reserved", pid);
        cr_expect_eq(v.sold, sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s sold", pid), "%s sold", pid);
        cr_expect_eq(v.released, sg_ll(&E, "HGET " PJ_RM_PREFIX "stock:%s released", pid), "%s released", pid);
        cr_expect_gt(v.reserved, 0);
    }
    pj_stock_view none;
    cr_assert_eq(pj_read_stock(ecc(), "p-unknown", &none, err, sizeof err), PJ_OK, "%s", err);
    cr_expect(!none.found && none.reserved == 0 && none.sold == 0 && none.released == 0);

    int with_orders = 0;
    for (int k = 0; k < 5; k++) {
        char cid[16];
        snprintf(cid, sizeof cid, k < 4 ? "c%d" : "c-many", k);
        pj_client_view v;
        cr_assert_eq(pj_read_client(ecc(), cid, &v, err, sizeof err), PJ_OK, "%s", err);
        redisReply *r = redisCommand(E.c, "HMGET " PJ_RM_PREFIX "client:%s total_orders last_order_id "
                                          "last_checkout_id last_update_ts", cid);
        cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 4);
        cr_expect_eq(v.found, r->element[0]->type == REDIS_REPLY_STRING, "%s", cid);
        if (v.found) {
            with_orders++;
            cr_expect_eq(v.total_orders, atoll(r->element[0]->str), "%s total_orders", cid);
            cr_expect_str_eq(v.last_order_id, r->element[1]->str, "%s", cid);
            cr_expect_str_eq(v.last_checkout_id, r->element[2]->str, "%s", cid);
            cr_expect_str_eq(v.last_update_ts, r->element[3]->str, "%s", cid);
        }
        freeReplyObject(r);
    }
    cr_expect_eq(with_orders, 4, "c0..c3 ordered, c-many did not");

    /* the client index: each partition keeps its newest, the merge the newest overall */
    cr_assert_geq(partitions_with(cm_key_rm_client_checkouts, "c-many"), 3);
    pj_checkout_ref *refs;
    size_t nref;
    cr_assert_eq(pj_read_client_checkouts(ecc(), "c-many", PJ_CLIENT_CHECKOUTS_MAX, &refs, &nref, err, sizeof err),
                 PJ_OK, "%s", err);
    redisReply *z = redisCommand(E.c, "ZREVRANGE " CM_KEY_CLIENT_CHECKOUTS "c-many 0 -1 WITHSCORES");
    cr_assert(z && z->type == REDIS_REPLY_ARRAY);
    cr_assert_eq(nref, z->elements / 2);
    cr_assert_eq(nref, PJ_CLIENT_CHECKOUTS_MAX);
    for (size_t i = 0; i < nref; i++) {
        cr_assert_str_eq(refs[i].id, z->element[2 * i]->str, "position %zu", i);
        cr_assert_eq(refs[i].initiated_at, strtod(z->element[2 * i + 1]->str, NULL));
        if (i)
            cr_assert_geq(refs[i - 1].initiated_at, refs[i].initiated_at, "not newest first");
    }
    freeReplyObject(z);
    free(refs);
    cr_assert_eq(pj_read_client_checkouts(ecc(), "c1", 3, &refs, &nref, err, sizeof err), PJ_OK, "%s", err);
    cr_expect_eq(nref, 3, "count is honoured");
    free(refs);

    char cp[48];
    cr_assert_eq(pj_read_checkpoint(ecc(), cp, err, sizeof err), PJ_OK, "%s", err);
    char *want = sg_str(&E, "GET " PJ_CHECKPOINT_KEY);
    cr_expect_str_eq(cp, want, "the greatest partition checkpoint");
    free(want);
    es_events_free(evs, n);
}

/* Waits until every partition's checkpoint reached its bus's last entry and
 * the group has nothing pending on any partition. */
static void wait_projected4(void)
{
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus(BUS, p), cp = cm_key_rm_checkpoint(p);
        char last[64];
        snprintf(last, sizeof last, "%s", sx_last_id(E.c, bus.s));
        bool ok = !last[0] || (sx_wait_str(E.c, cp.s, last, WAIT_MS) && sx_wait_group_idle(E.c, bus.s, GROUP, WAIT_MS));
        if (!ok)
            sg_dump_logs(&E);
        cr_assert(ok, "partition %d: the projection did not reach %s", p, last);
    }
}

Test(projection4, rebuild_from_zero_reproduces_the_partitioned_models_byte_for_byte)
{
    const char *const env[] = {"PARTITIONS=4", "BATCH_SIZE=3", NULL};
    sg_spawn(&E, "cqrs-projection", env);
    sg_spawn(&E, "cqrs-projection", env);
    size_t n;
    es_event **evs = many_sagas(40, &n);
    es_events_free(evs, n);
    wait_projected4();
    sx_dump before, after;
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &before);
    cr_assert_gt(before.n, 40 + NPART, "40 checkouts, the partitions' checkpoints and their aggregates");
    long long *exp = calloc(before.n, sizeof *exp);
    for (size_t i = 0; i < before.n; i++)
        exp[i] = sg_ll(&E, "EXPIRETIME %s", before.keys[i]);

    cr_assert_eq(run_rebuild_env("PARTITIONS=4"), 0, "chorus-projection-rebuild failed");
    sx_dump_take(E.c, PJ_RM_PREFIX "*", &after);
    sx_dump_assert_eq(&before, &after);
    for (size_t i = 0; i < before.n; i++)
        cr_expect_eq(sg_ll(&E, "EXPIRETIME %s", before.keys[i]), exp[i], "%s: the rebuild's lifetime differs",
                     before.keys[i]);
    free(exp);
    for (int p = 0; p < NPART; p++)
        cr_assert_eq(sg_ll(&E, "EXISTS %s", cm_key_pj_rebuild(p).s), 0, "partition %d's lock was kept", p);
    sx_dump_free(&before);
    sx_dump_free(&after);
}

/* A rebuild holding one partition's lock pauses that partition's writes
 * only; the batch answers PJ_EBUSY and applies in full once it is gone. */
Test(projection4, a_rebuild_lock_pauses_its_partition)
{
    sx_saga(E.s, SX_SUCCESS, "co-l", "c1", "p1", 1);
    size_t n;
    es_event **evs = sx_history(E.s, "co-l", &n);
    int q = cm_partition_of("co-l");
    sg_ll(&E, "SET %s someone-else PX 60000", cm_key_pj_rebuild(q).s);
    pj_projection *p = pj_projection_new();
    pj_apply_res res;
    char err[256];
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_EBUSY);
    cr_assert_eq(sg_ll(&E, "EXISTS %s", cm_key_rm_checkout("co-l").s), 0, "written while its partition was locked");
    sg_ll(&E, "SET %s someone-else PX 60000", cm_key_pj_rebuild((q + 1) % NPART).s);
    sg_ll(&E, "DEL %s", cm_key_pj_rebuild(q).s);
    cr_assert_eq(pj_projection_apply(p, ecc(), BUS, evs, n, PJ_LIVE, NULL, &res, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(res.applied, n, "another partition's lock does not hold this one");
    pj_projection_free(p);
    es_events_free(evs, n);
}

/* A rebuild that finds one partition's lock held by another rebuild exits 3
 * and gives back the locks it took before it: no partition stays paused. */
Test(projection4, a_rebuild_finding_one_partition_locked_holds_no_lock)
{
    sg_ll(&E, "SET %s someone-else PX 60000", cm_key_pj_rebuild(2).s);
    cr_assert_eq(run_rebuild_env("PARTITIONS=4"), 3, "another rebuild holds partition 2");
    for (int p = 0; p < NPART; p++)
        if (p != 2)
            cr_assert_eq(sg_ll(&E, "EXISTS %s", cm_key_pj_rebuild(p).s), 0, "partition %d's lock was kept", p);
    char *owner = sg_str(&E, "GET %s", cm_key_pj_rebuild(2).s);
    cr_assert_str_eq(owner, "someone-else");
    free(owner);
}
