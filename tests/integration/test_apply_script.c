/* test_apply_script.c - projections/apply_script.h (the typed call of
 * projections/lua/apply.lua) against a real redis-server: a batch with its
 * keys is applied in one call; a key the batch cannot name (the stock of an
 * OrderCreated whose reservation an earlier batch applied) makes the script
 * ask for it and write nothing, and the second call applies; every key the
 * script touches was passed in KEYS (seen through MONITOR); duplicates
 * change nothing; a live call waits for a rebuild's lock, a rebuild call
 * does not; a batch from the redelivery stream leaves the checkpoint; the
 * client's checkout index keeps the newest PJ_CLIENT_CHECKOUTS_MAX; closed
 * checkouts' read models and client indexes expire from their events' time
 * (READ_MODEL_TTL_S), open ones and the aggregates are kept; an in-order
 * saga changes its hash in place (no whole rewrite); a hash of the layout 3
 * field order is put in order by its next batch.
 * With PARTITIONS=4 (suite apply_script4): a call's keys are all in its
 * partition's slot and it refuses another partition's checkout; the client
 * index merged over partitions is the unpartitioned one, ties included.
 * (The projection on a real cluster: test_projection_cluster.c.) */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/names.h"
#include "common/redis.h"
#include "common/cluster.h"
#include "common/ids.h"
#include "projections/apply_script.h"
#include "projections/read.h"
#include "tests/integration/saga_events.h"
#include "tests/support/redis_fixture.h"

static tf_redis R;
static redisContext *C;
static cm_cluster *CC;   /* C as the slot-routing client the projection takes */

static void setup(void)
{
    cr_assert_eq(tf_redis_start(&R, NULL), 0);
    C = tf_redis_connect(&R);
    CC = cm_cluster_borrow(C);
}

static void teardown(void)
{
    cm_cluster_free(CC);
    redisFree(C);
    tf_redis_stop(&R);
}

TestSuite(apply_script, .init = setup, .fini = teardown, .timeout = 60);

#define T0 1700000000.0
static const pj_apply_item P1x2[] = {{"p1", 2}};
static const pj_apply_item P1x2_P2x1[] = {{"p1", 2}, {"p2", 1}};

static pj_apply_event ev_init(const char *co, const char *client, double t)
{
    return (pj_apply_event){.type = CM_EV_CHECKOUT_INITIATED, .checkout_id = co, .seq = 1, .emitted_at = t,
                            .client_id = client};
}
static pj_apply_event ev_reserved(const char *co, const pj_apply_item *items, size_t n, double t)
{
    return (pj_apply_event){.type = CM_EV_STOCK_RESERVED, .checkout_id = co, .seq = 2, .emitted_at = t,
                            .items = items, .nitems = n};
}
static pj_apply_event ev_order(const char *co, const char *client, const char *order, double t)
{
    return (pj_apply_event){.type = CM_EV_ORDER_CREATED, .checkout_id = co, .seq = 3, .emitted_at = t,
                            .client_id = client, .value = order};
}
static pj_apply_event ev_succeeded(const char *co, const char *order, double t)
{
    return (pj_apply_event){.type = CM_EV_CHECKOUT_SUCCEEDED, .checkout_id = co, .seq = 4, .emitted_at = t,
                            .value = order};
}

static void add(pj_apply_call *call, pj_apply_event ev)
{
    char err[256];
    cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_OK, "add: %s", err);
}

/* Runs the call once; asserts PJ_OK and returns the reply. */
static pj_apply_reply run_once(pj_apply_call *call)
{
    pj_apply_reply r;
    char err[256];
    cr_assert_eq(pj_apply_call_run_once(call, CC, &r, err, sizeof err), PJ_OK, "run: %s", err);
    return r;
}

static long long ll(const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(C, fmt, arg);
    cr_assert(r && r->type != REDIS_REPLY_ERROR, "%s (%s)", fmt, arg);
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

/* A whole successful saga in one call. */
static void whole_saga(pj_apply_call *call, const char *co, const char *client, double t)
{
    char order[64];
    snprintf(order, sizeof order, "ord-%s", co);
    add(call, ev_init(co, client, t));
    add(call, ev_reserved(co, P1x2, 1, t + 1));
    add(call, ev_order(co, client, order, t + 2));
    add(call, ev_succeeded(co, order, t + 3));
}

Test(apply_script, a_batch_with_its_keys_is_applied_in_one_call)
{
    pj_apply_call *call = pj_apply_call_new(0);
    whole_saga(call, "co-1", "c1", T0);
    cr_assert_eq(pj_apply_call_checkpoint(call, "5-0"), PJ_OK);
    cr_assert_eq(pj_apply_call_checkpoint(call, "12-3"), PJ_OK);
    cr_assert_eq(pj_apply_call_checkpoint(call, "9-0"), PJ_OK);
    pj_apply_reply r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.applied, 4);
    cr_assert_eq(r.duplicates, 0);
    cr_assert_eq(r.needed, 0, "every key was given");
    cr_assert_eq(r.ne2e, 1);
    cr_assert_float_eq(r.e2e[0], 3.0, 1e-6, "initiated to succeeded");

    sx_assert_hash(C, CM_KEY_RM_PREFIX "checkout:co-1",
                   (const char *const[]){"checkout_id", "co-1", "client_id", "c1", "status", CM_STATUS_SUCCEEDED,
                                         "updated_at", "1700000003.000000", "seq", "4", "_t", "IROS", "_init",
                                         "1700000000.000000", "order_id", "ord-co-1", NULL});
    sx_assert_hash(C, CM_KEY_RM_PREFIX "stock:p1",
                   (const char *const[]){"reserved", "2", "sold", "2", "released", "0", NULL});
    sx_assert_hash(C, CM_KEY_RM_PREFIX "client:c1",
                   (const char *const[]){"total_orders", "1", "last_order_id", "ord-co-1", "last_checkout_id", "co-1",
                                         "last_update_ts", "1700000002.000000", NULL});
    cr_assert_eq(ll("ZSCORE " CM_KEY_RM_PREFIX "client-checkouts:c1 %s", "co-1"), 1700000000);
    redisReply *cp = redisCommand(C, "GET %s", CM_KEY_RM_CHECKPOINT);
    cr_assert(cp && cp->type == REDIS_REPLY_STRING);
    cr_assert_str_eq(cp->str, "12-3", "the greatest entry id offered");
    freeReplyObject(cp);
    pj_apply_call_free(call);
}

/* Applies I and R of co-1 (products p1, p2) in a first batch. */
static void reserve_first(void)
{
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_init("co-1", "c1", T0));
    add(call, ev_reserved("co-1", P1x2_P2x1, 2, T0 + 1));
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    pj_apply_call_free(call);
}

Test(apply_script, an_order_whose_stock_keys_were_not_given_writes_nothing_and_asks_for_them)
{
    reserve_first();
    sx_dump before, after;
    sx_dump_take(C, CM_KEY_PREFIX "*", &before);

    /* OrderCreated alone: the call does not know what co-1 reserved */
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_order("co-1", "c1", "ord-1", T0 + 2));
    size_t nkeys = pj_apply_call_nkeys(call);
    pj_apply_reply r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_NEED);
    cr_assert_eq(r.needed, 2, "p1 and p2");
    cr_assert_eq(pj_apply_call_nkeys(call), nkeys + 2, "the two stock keys were added to the call");
    sx_dump_take(C, CM_KEY_PREFIX "*", &after);
    sx_dump_assert_eq(&before, &after);   /* nothing written */
    sx_dump_free(&after);

    r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.applied, 1);
    cr_assert_eq(ll("HGET " CM_KEY_RM_PREFIX "stock:%s sold", "p1"), 2);
    cr_assert_eq(ll("HGET " CM_KEY_RM_PREFIX "stock:%s sold", "p2"), 1);
    cr_assert_eq(ll("HEXISTS " CM_KEY_RM_PREFIX "checkout:%s _items", "co-1"), 0, "the reservation is sold");
    sx_dump_free(&before);
    pj_apply_call_free(call);
}

Test(apply_script, run_adds_the_asked_keys_and_calls_once_more)
{
    reserve_first();
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_order("co-1", "c1", "ord-1", T0 + 2));
    pj_apply_reply r;
    char err[256];
    cr_assert_eq(pj_apply_call_run(call, CC, &r, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.needed, 2);
    cr_assert_eq(r.applied, 1);
    cr_assert_eq(ll("HGET " CM_KEY_RM_PREFIX "stock:%s sold", "p2"), 1);

    /* given up front (what the projection's memory of reservations does),
     * nothing is asked */
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_init("co-2", "c1", T0 + 10));
    add(call, ev_reserved("co-2", P1x2, 1, T0 + 11));
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_order("co-2", "c1", "ord-2", T0 + 12));
    cr_assert_eq(pj_apply_call_add_product(call, "p1"), PJ_OK);
    r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.needed, 0);
    cr_assert_eq(ll("HGET " CM_KEY_RM_PREFIX "stock:%s sold", "p1"), 4);
    pj_apply_call_free(call);
}

/* The i-th quoted argument of a MONITOR line (len in *n), or NULL. */
static const char *mon_arg(const char *line, size_t i, size_t *n)
{
    const char *p = strchr(line, '"');
    for (size_t k = 0; p; k++) {
        const char *e = p + 1;
        while (*e && *e != '"')
            e += e[0] == '\\' && e[1] ? 2 : 1;
        if (k == i) {
            *n = (size_t)(e - p - 1);
            return p + 1;
        }
        p = *e ? strchr(e + 1, '"') : NULL;
    }
    return NULL;
}

/* Reads MONITOR lines until the PING marker; checks the key argument of
 * every command the script ran against the KEYS of the EVALSHA calls. */
static void assert_keys_declared(redisContext *mon)
{
    char *lines[4096];
    size_t nlines = 0;
    for (;;) {
        redisReply *r = NULL;
        cr_assert_eq(redisGetReply(mon, (void **)&r), REDIS_OK, "MONITOR");
        cr_assert(cm_reply_is_str(r));
        bool end = strstr(r->str, "\"PING\" \"keys-marker\"") != NULL;
        if (!end && nlines < 4096)
            lines[nlines++] = strdup(r->str);
        freeReplyObject(r);
        if (end)
            break;
    }
    size_t nested = 0, evalshas = 0;
    for (size_t i = 0; i < nlines; i++) {
        size_t n0, n1;
        const char *cmd = mon_arg(lines[i], 0, &n0), *key = mon_arg(lines[i], 1, &n1);
        if (!strstr(lines[i], " lua] ") || !cmd || !key || !strncasecmp(cmd, "PUBLISH", 7))
            continue;
        bool found = false;
        for (size_t j = 0; j < nlines && !found; j++) {
            size_t l0, l2, lk;
            const char *c0 = mon_arg(lines[j], 0, &l0), *nk = mon_arg(lines[j], 2, &l2);
            if (!c0 || !nk || l0 != 7 || strncasecmp(c0, "EVALSHA", 7) != 0)
                continue;
            for (int k = 0; k < atoi(nk) && !found; k++) {
                const char *dk = mon_arg(lines[j], 3 + (size_t)k, &lk);
                found = dk && lk == n1 && !memcmp(dk, key, n1);
            }
        }
        cr_assert(found, "the script touched a key it was not given: %s", lines[i]);
        nested++;
    }
    for (size_t i = 0; i < nlines; i++) {
        evalshas += strstr(lines[i], "\"EVALSHA\"") != NULL;
        free(lines[i]);
    }
    cr_assert_eq(evalshas, 3, "the first batch, the call and its rerun");
    cr_assert_gt(nested, 10, "the script's commands were seen");
}

Test(apply_script, every_key_the_script_touches_is_passed_in_keys)
{
    redisContext *mon = tf_redis_connect(&R);
    redisReply *ok = redisCommand(mon, "MONITOR");
    cr_assert(ok && ok->type == REDIS_REPLY_STATUS);
    freeReplyObject(ok);

    reserve_first();
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_order("co-1", "c1", "ord-1", T0 + 2));   /* takes the 'need' path */
    add(call, ev_succeeded("co-1", "ord-1", T0 + 3));
    whole_saga(call, "co-2", "c2", T0 + 5);
    cr_assert_eq(pj_apply_call_checkpoint(call, "7-0"), PJ_OK);
    pj_apply_reply r;
    char err[256];
    cr_assert_eq(pj_apply_call_run(call, CC, &r, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.needed, 1, "p2 (p1 came with co-2's reservation)");
    freeReplyObject(redisCommand(C, "PING keys-marker"));
    assert_keys_declared(mon);
    redisFree(mon);
    pj_apply_call_free(call);
}

Test(apply_script, the_same_events_again_are_duplicates_and_change_nothing)
{
    pj_apply_call *call = pj_apply_call_new(0);
    whole_saga(call, "co-1", "c1", T0);
    cr_assert_eq(pj_apply_call_checkpoint(call, "4-0"), PJ_OK);
    cr_assert_eq(run_once(call).applied, 4);
    sx_dump before, after;
    sx_dump_take(C, CM_KEY_PREFIX "*", &before);
    pj_apply_reply r = run_once(call);   /* the very same call again */
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.applied, 0);
    cr_assert_eq(r.duplicates, 4);
    cr_assert_eq(r.ne2e, 0, "a completed checkout is reported once");
    sx_dump_take(C, CM_KEY_PREFIX "*", &after);
    sx_dump_assert_eq(&before, &after);
    sx_dump_free(&before);
    sx_dump_free(&after);
    pj_apply_call_free(call);
}

Test(apply_script, a_live_call_waits_for_the_rebuild_lock_and_a_rebuild_call_does_not)
{
    freeReplyObject(redisCommand(C, "SET %s someone PX 60000", CM_KEY_PJ_REBUILD));
    pj_apply_call *call = pj_apply_call_new(0);
    whole_saga(call, "co-1", "c1", T0);
    cr_assert_eq(pj_apply_call_checkpoint(call, "4-0"), PJ_OK);
    pj_apply_reply r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_BUSY);
    sx_dump d;
    sx_dump_take(C, CM_KEY_RM_PREFIX "*", &d);
    cr_assert_eq(d.n, 0, "a busy call writes nothing");
    sx_dump_free(&d);

    pj_apply_call_reset(call, PJ_REBUILD);
    whole_saga(call, "co-1", "c1", T0);
    cr_assert_eq(pj_apply_call_checkpoint(call, "4-0"), PJ_OK);
    r = run_once(call);
    cr_assert_eq(r.verdict, PJ_APPLY_DONE);
    cr_assert_eq(r.applied, 4);
    cr_assert_eq(ll("HGET " CM_KEY_RM_PREFIX "client:%s total_orders", "c1"), 1);
    pj_apply_call_free(call);
}

Test(apply_script, the_checkpoint_only_moves_forward_and_only_when_offered)
{
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_init("co-1", "c1", T0));
    cr_assert_eq(pj_apply_call_checkpoint(call, "20-0"), PJ_OK);
    run_once(call);
    /* a batch from the redelivery stream: no id offered */
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_reserved("co-1", P1x2, 1, T0 + 1));
    cr_assert_eq(run_once(call).applied, 1);
    /* an older bus batch (another copy was faster) */
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_init("co-2", "c1", T0 + 2));
    cr_assert_eq(pj_apply_call_checkpoint(call, "19-5"), PJ_OK);
    cr_assert_eq(run_once(call).applied, 1);
    redisReply *cp = redisCommand(C, "GET %s", CM_KEY_RM_CHECKPOINT);
    cr_assert(cp && cp->type == REDIS_REPLY_STRING);
    cr_assert_str_eq(cp->str, "20-0");
    freeReplyObject(cp);
    cr_assert_eq(pj_apply_call_checkpoint(call, "not-an-id"), PJ_EINVAL);
    pj_apply_call_free(call);
}

Test(apply_script, bad_ids_are_refused_before_any_key_is_named)
{
    pj_apply_call *call = pj_apply_call_new(0);
    size_t nkeys = pj_apply_call_nkeys(call);
    char err[256];
    pj_apply_event ev = ev_init("co:1", "c1", T0);
    cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_EINVAL);
    cr_assert(strstr(err, "checkout id"), "%s", err);
    ev = ev_init("co-1", "c 1", T0);
    cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_EINVAL);
    static const pj_apply_item bad[] = {{"p*1", 1}};
    ev = ev_reserved("co-1", bad, 1, T0);
    cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_EINVAL);
    ev = ev_init("co-1", "c1", T0);
    ev.seq = PJ_MAX_SEQ + 1;
    cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_EINVAL);
    cr_assert_eq(pj_apply_call_add_product(call, ""), PJ_EINVAL);
    cr_assert_eq(pj_apply_call_nevents(call), 0);
    cr_assert_eq(pj_apply_call_nkeys(call), nkeys);
    pj_apply_call_free(call);
}

/* Applies CheckoutInitiated of co-<i> for client c1 for every i in order[]. */
static void init_many(const int *order, int n, int per_call)
{
    pj_apply_call *call = pj_apply_call_new(0);
    for (int k = 0; k < n; k++) {
        char co[32];
        snprintf(co, sizeof co, "co-%03d", order[k]);
        add(call, ev_init(co, "c1", T0 + order[k]));
        if ((k + 1) % per_call == 0 || k == n - 1) {
            cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
            pj_apply_call_reset(call, PJ_LIVE);
        }
    }
    pj_apply_call_free(call);
}

Test(apply_script, a_clients_checkout_index_keeps_the_newest_in_any_order)
{
    enum { N = PJ_CLIENT_CHECKOUTS_MAX + 30 };
    int fwd[N], mixed[N];
    for (int i = 0; i < N; i++) {
        fwd[i] = i;
        mixed[i] = (i * 37) % N;   /* 37 and 130 are coprime: a permutation */
    }
    init_many(fwd, N, 7);
    const char *key = CM_KEY_RM_PREFIX "client-checkouts:c1";
    cr_assert_eq(ll("ZCARD %s", key), PJ_CLIENT_CHECKOUTS_MAX);
    cr_assert_eq(ll("ZRANK %s co-030", key), 0, "the oldest kept");
    cr_assert_eq(ll("EXISTS %s", CM_KEY_RM_PREFIX "checkout:co-029"), 1, "older checkouts keep their read model");
    redisReply *gone = redisCommand(C, "ZSCORE %s co-029", key);
    cr_assert(gone && gone->type == REDIS_REPLY_NIL, "co-029 is past the newest %d", PJ_CLIENT_CHECKOUTS_MAX);
    freeReplyObject(gone);
    sx_dump a, b;
    sx_dump_take(C, key, &a);
    freeReplyObject(redisCommand(C, "FLUSHALL"));
    init_many(mixed, N, 11);
    sx_dump_take(C, key, &b);
    sx_dump_assert_eq(&a, &b);
    sx_dump_free(&a);
    sx_dump_free(&b);
}

/* EXPIRETIME of key: -1 kept, -2 absent. */
static long long expiretime(const char *key)
{
    return ll("EXPIRETIME %s", key);
}

Test(apply_script, closed_checkouts_expire_from_their_events_time_open_ones_are_kept)
{
    /* READ_MODEL_TTL_S: a closed checkout's read model expires floor(its
     * newest event's time) + lifetime, whatever order or batches its events
     * came in (a rebuild sets the same); an open one is kept (its _items
     * are still needed); a client's index expires after its newest
     * checkout; the client and stock aggregates are kept; events of a
     * checkout already past its lifetime do not bring its model back */
    const long long ttl = 3600;
    double now = (double)(long long)cm_wall_s();
    const char *done = CM_KEY_RM_PREFIX "checkout:co-done", *open = CM_KEY_RM_PREFIX "checkout:co-open";
    pj_apply_call *call = pj_apply_call_new(0);
    pj_apply_call_lifetime(call, ttl);
    add(call, ev_init("co-done", "c1", now + 0.25));
    add(call, ev_reserved("co-done", P1x2, 1, now + 1.5));
    add(call, ev_init("co-open", "c1", now + 2.75));
    add(call, ev_reserved("co-open", P1x2, 1, now + 3.5));
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(done), -1, "not closed yet: kept");
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "client-checkouts:c1"), (long long)now + 2 + ttl,
                 "the index lives a lifetime past its newest checkout");

    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_succeeded("co-done", "ord-co-done", now + 5.5));   /* before its OrderCreated */
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(done), (long long)now + 5 + ttl, "closed: a lifetime past its newest event");
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_order("co-done", "c1", "ord-co-done", now + 4.5));
    cr_assert_eq(pj_apply_call_add_product(call, "p1"), PJ_OK);
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(done), (long long)now + 5 + ttl, "a late event of a lower seq moves nothing");
    cr_assert_eq(expiretime(open), -1, "an open checkout is kept");
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "client:c1"), -1, "the client aggregate is kept");
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "stock:p1"), -1, "the stock aggregate is kept");

    /* a checkout that closed longer ago than the lifetime: nothing stays */
    pj_apply_call_reset(call, PJ_LIVE);
    whole_saga(call, "co-old", "c2", T0);
    add(call, ev_reserved("co-stale", P1x2, 1, T0));   /* an open one, as old */
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "checkout:co-old"), -2, "expired at once");
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "checkout:co-stale"), -2, "a stale open model is not resurrected");
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "client-checkouts:c2"), -2);
    cr_assert_eq(ll("HGET %s total_orders", CM_KEY_RM_PREFIX "client:c2"), 1, "the aggregate still counts it");

    /* lifetime 0: kept */
    pj_apply_call_lifetime(call, 0);
    pj_apply_call_reset(call, PJ_LIVE);
    whole_saga(call, "co-kept", "c3", T0);
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "checkout:co-kept"), -1);
    cr_assert_eq(expiretime(CM_KEY_RM_PREFIX "client-checkouts:c3"), -1);
    pj_apply_call_free(call);
}

/* Calls of cmd since the last CONFIG RESETSTAT (INFO commandstats). */
static long long cmd_calls(const char *cmd)
{
    long long n = tf_redis_command_calls(C, cmd);
    cr_assert_geq(n, 0, "INFO commandstats failed");
    return n;
}

/* Applies each event in a call of its own (the stock of p1 passed). */
static void one_per_call(const pj_apply_event *evs, size_t n)
{
    pj_apply_call *call = pj_apply_call_new(0);
    pj_apply_call_lifetime(call, 3600);
    for (size_t i = 0; i < n; i++) {
        pj_apply_call_reset(call, PJ_LIVE);
        add(call, evs[i]);
        cr_assert_eq(pj_apply_call_add_product(call, "p1"), PJ_OK);
        cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    }
    pj_apply_call_free(call);
}

Test(apply_script, an_in_order_saga_changes_its_hash_in_place_and_never_rewrites_it)
{
    /* the checkout hash's field order (apply.lua's CO_FIELDS) is the order
     * a saga's events bring the fields in: a saga applied one event per
     * batch only appends, replaces and removes fields (no DEL and whole
     * rewrite), and ends byte for byte as the same events in one batch */
    double now = (double)(long long)cm_wall_s();
    const pj_apply_event ok[] = {
        ev_init("co-ok", "c1", now + 1), ev_reserved("co-ok", P1x2, 1, now + 2),
        ev_order("co-ok", "c1", "ord-co-ok", now + 3), ev_succeeded("co-ok", "ord-co-ok", now + 4)};
    const pj_apply_event limit[] = {
        ev_init("co-lim", "c2", now + 1), ev_reserved("co-lim", P1x2, 1, now + 2),
        {.type = CM_EV_ORDER_CREATION_FAILED, .checkout_id = "co-lim", .seq = 3, .emitted_at = now + 3,
         .value = "order_limit_exceeded"},
        {.type = CM_EV_STOCK_RELEASED, .checkout_id = "co-lim", .seq = 4, .emitted_at = now + 4, .items = P1x2,
         .nitems = 1},
        {.type = CM_EV_CHECKOUT_FAILED, .checkout_id = "co-lim", .seq = 5, .emitted_at = now + 5,
         .value = "order_limit_exceeded"}};
    freeReplyObject(redisCommand(C, "CONFIG RESETSTAT"));
    one_per_call(ok, 4);
    one_per_call(limit, 5);
    cr_assert_eq(cmd_calls("del"), 0, "no checkout hash was deleted to be rewritten whole");
    cr_assert_gt(cmd_calls("hset"), 0, "the script's writes were counted");
    char upd[32], init[32];
    snprintf(upd, sizeof upd, "%.6f", now + 4);
    snprintf(init, sizeof init, "%.6f", now + 1);
    sx_assert_hash(C, CM_KEY_RM_PREFIX "checkout:co-ok",
                   (const char *const[]){"checkout_id", "co-ok", "client_id", "c1", "status", CM_STATUS_SUCCEEDED,
                                         "updated_at", upd, "seq", "4", "_t", "IROS", "_init", init, "order_id",
                                         "ord-co-ok", NULL});
    snprintf(upd, sizeof upd, "%.6f", now + 5);
    sx_assert_hash(C, CM_KEY_RM_PREFIX "checkout:co-lim",
                   (const char *const[]){"checkout_id", "co-lim", "client_id", "c2", "status", CM_STATUS_FAILED,
                                         "updated_at", upd, "seq", "5", "_t", "IRYLF", "_init", init, "reason",
                                         "order_limit_exceeded", NULL});
    sx_dump a, b;
    sx_dump_take(C, CM_KEY_RM_PREFIX "*", &a);
    freeReplyObject(redisCommand(C, "FLUSHALL"));
    pj_apply_call *call = pj_apply_call_new(0);
    pj_apply_call_lifetime(call, 3600);
    for (size_t i = 0; i < 4; i++)
        add(call, ok[i]);
    for (size_t i = 0; i < 5; i++)
        add(call, limit[i]);
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    pj_apply_call_free(call);
    sx_dump_take(C, CM_KEY_RM_PREFIX "*", &b);
    sx_dump_assert_eq(&a, &b);
    sx_dump_free(&a);
    sx_dump_free(&b);
}

Test(apply_script, a_hash_in_the_layout_3_field_order_is_rewritten_in_order_by_its_next_batch)
{
    /* before layout 4 order_id and reason came right after status; the
     * first batch that changes such a hash writes it in CO_FIELDS order, the
     * bytes of the same events applied from zero */
    const char *key = CM_KEY_RM_PREFIX "checkout:co-1";
    freeReplyObject(redisCommand(C, "HSET %s checkout_id co-1 client_id c1 status %s order_id ord-co-1 "
                                    "updated_at 1700000002.000000 seq 3 _t IRO _init 1700000000.000000",
                                 key, CM_STATUS_STOCK_RESERVED));
    pj_apply_call *call = pj_apply_call_new(0);
    add(call, ev_succeeded("co-1", "ord-co-1", T0 + 3));
    cr_assert_eq(run_once(call).applied, 1);
    sx_assert_hash(C, key,
                   (const char *const[]){"checkout_id", "co-1", "client_id", "c1", "status", CM_STATUS_SUCCEEDED,
                                         "updated_at", "1700000003.000000", "seq", "4", "_t", "IROS", "_init",
                                         "1700000000.000000", "order_id", "ord-co-1", NULL});
    sx_dump a, b;
    sx_dump_take(C, key, &a);
    freeReplyObject(redisCommand(C, "FLUSHALL"));
    pj_apply_call_reset(call, PJ_LIVE);
    whole_saga(call, "co-1", "c1", T0);
    cr_assert_eq(run_once(call).applied, 4);
    sx_dump_take(C, key, &b);
    sx_dump_assert_eq(&a, &b);
    sx_dump_free(&a);
    sx_dump_free(&b);
    pj_apply_call_free(call);
}

Test(apply_script, a_client_index_that_exists_expires_after_its_newest_checkout_whatever_comes_later)
{
    /* a new index takes its expiry from its batch; one that exists moves on
     * only with a newer checkout, and ends as the same checkouts in one
     * batch; a first batch past the cap keeps the newest */
    const long long ttl = 3600;
    double now = (double)(long long)cm_wall_s();
    const char *key = CM_KEY_RM_PREFIX "client-checkouts:c1";
    const double at[] = {now + 10.5, now + 5.25, now + 20.75};
    const long long want[] = {(long long)now + 10 + ttl, (long long)now + 10 + ttl, (long long)now + 20 + ttl};
    pj_apply_call *call = pj_apply_call_new(0);
    pj_apply_call_lifetime(call, ttl);
    for (int i = 0; i < 3; i++) {
        char co[16];
        snprintf(co, sizeof co, "co-%d", i);
        pj_apply_call_reset(call, PJ_LIVE);
        add(call, ev_init(co, "c1", at[i]));
        cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
        cr_assert_eq(expiretime(key), want[i], "after co-%d", i);
    }
    sx_dump a, b;
    sx_dump_take(C, key, &a);
    freeReplyObject(redisCommand(C, "FLUSHALL"));
    pj_apply_call_reset(call, PJ_LIVE);
    add(call, ev_init("co-2", "c1", at[2]));
    add(call, ev_init("co-0", "c1", at[0]));
    add(call, ev_init("co-1", "c1", at[1]));
    cr_assert_eq(run_once(call).verdict, PJ_APPLY_DONE);
    cr_assert_eq(expiretime(key), want[2]);
    sx_dump_take(C, key, &b);
    sx_dump_assert_eq(&a, &b);
    sx_dump_free(&a);
    sx_dump_free(&b);
    pj_apply_call_free(call);

    enum { N = PJ_CLIENT_CHECKOUTS_MAX + 30 };
    int fwd[N];
    for (int i = 0; i < N; i++)
        fwd[i] = i;
    freeReplyObject(redisCommand(C, "FLUSHALL"));
    init_many(fwd, N, N);   /* one batch, past the cap, into no index */
    cr_assert_eq(ll("ZCARD %s", key), PJ_CLIENT_CHECKOUTS_MAX);
    cr_assert_eq(ll("ZRANK %s co-030", key), 0, "the oldest kept");
}

/* ---- PARTITIONS=4 ---- */

#define NPART 4

static void setup4(void)
{
    cr_assert_eq(cm_partitions_set(NPART), 0);
    setup();
}

TestSuite(apply_script4, .init = setup4, .fini = teardown, .timeout = 60);

static int slot_of(const cm_key *k)
{
    return cm_key_slot(k->s, strlen(k->s));
}

Test(apply_script4, a_partitions_keys_share_its_bus_slot_and_other_partitions_are_refused)
{
    for (int p = 0; p < NPART; p++) {
        char co[CM_UUID_LEN + 1];
        cm_partition_id(p, co);
        cm_key bus = cm_key_bus(CM_BUS_STREAM_DEFAULT, p);
        cm_key keys[] = {cm_key_rm_checkout(co),         cm_key_rm_stock(p, "p1"),  cm_key_rm_client(p, "c1"),
                         cm_key_rm_client_checkouts(p, "c1"), cm_key_rm_checkpoint(p), cm_key_pj_rebuild(p)};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            cr_assert_eq(slot_of(&keys[k]), slot_of(&bus), "%s is not in the slot of %s", keys[k].s, bus.s);

        pj_apply_call *call = pj_apply_call_new(p);
        cr_assert_eq(pj_apply_call_partition(call), p);
        char other[CM_UUID_LEN + 1], err[256];
        cm_partition_id((p + 1) % NPART, other);
        pj_apply_event ev = ev_init(other, "c1", T0);
        cr_assert_eq(pj_apply_call_add_event(call, &ev, err, sizeof err), PJ_EINVAL);
        cr_assert(strstr(err, "partition"), "%s", err);
        cr_assert_eq(pj_apply_call_nevents(call), 0, "nothing added");
        add(call, ev_init(co, "c1", T0));
        add(call, ev_reserved(co, P1x2, 1, T0 + 1));
        pj_apply_reply r = run_once(call);
        cr_assert_eq(r.verdict, PJ_APPLY_DONE);
        cr_assert_eq(ll("HGET %s reserved", cm_key_rm_stock(p, "p1").s), 2, "partition %d's stock", p);
        pj_apply_call_free(call);
    }
    pj_stock_view v;
    char err[256];
    cr_assert_eq(pj_read_stock(CC, "p1", &v, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(v.reserved, 2 * NPART, "summed over the partitions");
    cr_assert_eq(ll("EXISTS %s", CM_KEY_RM_PREFIX "stock:p1"), 0, "no unpartitioned stock key");
}

/* Applies init events of client c1 for ids[0..n) at times t[i]: with
 * PARTITIONS=4 one call per partition, else one call. */
static void init_all(char (*ids)[16], const double *t, int n)
{
    int np = cm_partitions();
    pj_apply_call *calls[NPART];
    for (int p = 0; p < np; p++)
        calls[p] = pj_apply_call_new(p);
    for (int i = 0; i < n; i++)
        add(calls[cm_partition_of(ids[i])], ev_init(ids[i], "c1", t[i]));
    for (int p = 0; p < np; p++) {
        if (pj_apply_call_nevents(calls[p]))
            cr_assert_eq(run_once(calls[p]).verdict, PJ_APPLY_DONE);
        pj_apply_call_free(calls[p]);
    }
}

Test(apply_script4, client_index_merged_over_partitions_is_the_unpartitioned_index_ties_included)
{
    enum { N = PJ_CLIENT_CHECKOUTS_MAX + 40 };
    char ids[N][16];
    double t[N];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "co-%03d", (i * 37) % N);
        t[i] = T0 + (double)(i / 3);   /* three checkouts per second: ties, split between partitions */
    }
    init_all(ids, t, N);
    cr_assert_eq(cm_partitions_set(1), 0);   /* the reference: one zset, untagged name */
    init_all(ids, t, N);
    cr_assert_eq(cm_partitions_set(NPART), 0);

    int split = 0;
    for (int p = 0; p < NPART; p++) {
        long long card = ll("ZCARD %s", cm_key_rm_client_checkouts(p, "c1").s);
        cr_assert_leq(card, PJ_CLIENT_CHECKOUTS_MAX);
        split += card > 0;
    }
    cr_assert_geq(split, 3, "the client's checkouts are in several partitions");
    size_t counts[] = {PJ_CLIENT_CHECKOUTS_MAX, 7, 1};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        pj_checkout_ref *refs;
        size_t n;
        char err[256];
        cr_assert_eq(pj_read_client_checkouts(CC, "c1", counts[c], &refs, &n, err, sizeof err), PJ_OK, "%s", err);
        redisReply *z = redisCommand(C, "ZREVRANGE %s 0 %lld WITHSCORES", CM_KEY_CLIENT_CHECKOUTS "c1",
                                    (long long)counts[c] - 1);
        cr_assert(z && z->type == REDIS_REPLY_ARRAY);
        cr_assert_eq(n, counts[c]);
        cr_assert_eq(n, z->elements / 2);
        for (size_t i = 0; i < n; i++) {
            cr_assert_str_eq(refs[i].id, z->element[2 * i]->str, "count %zu, position %zu", counts[c], i);
            cr_assert_eq(refs[i].initiated_at, strtod(z->element[2 * i + 1]->str, NULL));
        }
        freeReplyObject(z);
        free(refs);
    }
    pj_checkout_ref *refs;
    size_t n;
    char err[256];
    cr_assert_eq(pj_read_client_checkouts(CC, "nobody", 10, &refs, &n, err, sizeof err), PJ_OK, "%s", err);
    cr_assert(n == 0 && refs == NULL);
    cr_assert_eq(pj_read_client_checkouts(CC, "c1", 0, &refs, &n, err, sizeof err), PJ_EINVAL);
    cr_assert_eq(pj_read_client_checkouts(CC, "bad id", 5, &refs, &n, err, sizeof err), PJ_EINVAL);
}
