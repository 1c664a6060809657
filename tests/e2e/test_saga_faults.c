/* test_saga_faults.c - the checkout saga under load and faults: real
 * `chorus-worker` processes on a private redis-server.
 *
 * Which test proves which guarantee (DESIGN.md "The saga", issue 4):
 *   concurrent_*     1,000 checkouts racing for 100 units, two copies of every
 *                    worker, one copy of each SIGKILLed and restarted midway:
 *                    exactly 100 succeed, every checkout has exactly one
 *                    terminal event (and it is its last), available + sold ==
 *                    initial, reserved == 0, nothing negative, no dead letters.
 *   redis_kill9_*    redis-server SIGKILLed midway and restarted from its AOF
 *                    (appendfsync always): every event seen before the crash
 *                    is still there, in place; every saga still ends exactly
 *                    once; stock conserved.
 *   timeout_races_*  a tiny SAGA_TIMEOUT_MS against order creation slowed by
 *                    FAULT_ORDER_DELAY_MS (two compensation copies racing
 *                    their timeouts too): one terminal event per checkout, no
 *                    order (nor OrderCreated) for a timed-out checkout, no
 *                    timeout for a succeeded one, stock conserved.
 *   timeout_racing_reservation_*  SAGA_TIMEOUT_MS=1 against a backlog of
 *                    per-line reservations (50 products' slots per checkout): one
 *                    terminal event each, stock conserved per product, no
 *                    line mark left held, nothing dead-lettered.
 * Tests run one at a time (--jobs=1): they load both cores. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ids.h"
#include "tests/e2e/saga_env.h"
#include "tests/support/proc.h"

static sg_env E;

static void setup(void)
{
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(saga_faults, .init = setup, .fini = teardown, .timeout = 150);

/* Checkout ids "co-<i>", kept for the whole test. */
typedef struct idset {
    char (*names)[24];
    char **ids;
    size_t n;
} idset;

static idset ids_new(const char *prefix, size_t n)
{
    idset s = {calloc(n, sizeof *s.names), calloc(n, sizeof *s.ids), n};
    for (size_t i = 0; i < n; i++) {
        snprintf(s.names[i], sizeof s.names[i], "%s-%zu", prefix, i);
        s.ids[i] = s.names[i];
    }
    return s;
}

static void ids_free(idset *s)
{
    free(s->names);
    free(s->ids);
}

typedef struct at_least {
    idset *s;
    size_t from, n, want;
} at_least;

static bool terminal_at_least(void *ud)
{
    at_least *a = ud;
    return sg_count_terminal(&E, a->s->ids + a->from, a->n) >= a->want;
}

static void wait_ended(idset *s, size_t from, size_t n, int timeout_ms)
{
    if (!sg_wait_terminal(&E, s->ids + from, n, timeout_ms)) {
        sg_dump_logs(&E);
        cr_assert_fail("sagas did not end within %d ms", timeout_ms);
    }
}

static void wait_quiet(void)
{
    if (!sg_wait_quiet(&E, 30000)) {
        sg_dump_logs(&E);
        cr_assert_fail("consumer groups did not become idle");
    }
}

/* Outcome counts over a set of checkouts, asserting one terminal each. */
typedef struct outcome {
    size_t succeeded, failed, timed_out, bad;
} outcome;

static outcome check_outcomes(idset *s)
{
    outcome o = {0};
    for (size_t i = 0; i < s->n; i++) {
        char *t = sg_types(&E, s->ids[i]);
        es_checkout_state st;
        sg_fold(&E, s->ids[i], &st);
        size_t len = strlen(t);
        bool last_terminal = (len >= 17 && !strcmp(t + len - 17, "CheckoutSucceeded")) ||
                             (len >= 14 && !strcmp(t + len - 14, "CheckoutFailed"));
        if (st.terminal_events != 1 || !last_terminal) {
            if (o.bad++ < 5)
                fprintf(stderr, "%s: %d terminal events: %s\n", s->ids[i], st.terminal_events, t);
        }
        if (!strcmp(st.status, "SUCCEEDED")) {
            o.succeeded++;
            cr_expect(!st.timed_out, "%s succeeded after timing out: %s", s->ids[i], t);
        } else {
            o.failed++;
        }
        if (st.timed_out) {
            o.timed_out++;
            char order_id[CM_UUID_LEN + 1];
            cm_uuid_derive(s->ids[i], "order", order_id);
            cr_expect(!strstr(t, "OrderCreated"), "%s timed out yet has an order: %s", s->ids[i], t);
            cr_expect_eq(sg_ll(&E, "EXISTS chorus:order:%s", order_id), 0, "order of timed-out %s", s->ids[i]);
        }
        free(t);
    }
    cr_expect_eq(o.bad, 0, "%zu checkouts without exactly one (final) terminal event", o.bad);
    return o;
}

static void expect_conserved(const char *product, long long initial, long long want_sold)
{
    long long a, r, s;
    sg_stock(&E, product, &a, &r, &s);
    cr_expect(a >= 0 && r == 0 && s >= 0, "%s: available %lld reserved %lld sold %lld", product, a, r, s);
    cr_expect_eq(a + s, initial, "%s: available %lld + sold %lld != %lld", product, a, s, initial);
    if (want_sold >= 0)
        cr_expect_eq(s, want_sold, "%s sold", product);
}

static long long dlq_total(void)
{
    long long n = 0;
    for (int g = 0; g < CM_W_COUNT; g++)
        n += sg_dlq_len(&E, cm_group_names[g]);
    return n;
}

Test(saga_faults, concurrent_checkouts_with_crashing_workers_sell_exactly_the_stock)
{
    enum { N = 1000, STOCK = 100 };
    sg_setup(&E, NULL);
    sg_product(&E, "hot", STOCK);
    idset s = ids_new("co", N);
    const char *env[] = {"SAGA_TIMEOUT_MS=120000", NULL};
    int first[CM_W_COUNT];
    for (int copy = 0; copy < 2; copy++)
        for (int w = 0; w < CM_W_COUNT; w++) {
            int i = sg_spawn(&E, cm_worker_names[w], env);
            if (copy == 0)
                first[w] = i;
        }
    sg_line line[] = {{"hot", 1, 1999}};
    for (size_t i = 0; i < N; i++) {
        char client[24];
        snprintf(client, sizeof client, "client-%zu", i % 37);
        sg_checkout(&E, s.ids[i], client, line, 1);
    }
    /* Midway: SIGKILL one copy of every worker, let the others carry on,
     * then restart the killed ones (they reclaim what the dead held). */
    at_least quarter = {&s, 0, N, N / 4};
    cr_assert(tf_wait_until(terminal_at_least, &quarter, 60000), "a quarter of the sagas ended");
    for (int w = 0; w < CM_W_COUNT; w++)
        sg_kill9(&E, first[w]);
    at_least half = {&s, 0, N, N / 2};
    cr_assert(tf_wait_until(terminal_at_least, &half, 60000), "half of the sagas ended");
    for (int w = 0; w < CM_W_COUNT; w++)
        sg_restart(&E, first[w]);
    wait_ended(&s, 0, N, 90000);
    wait_quiet();

    outcome o = check_outcomes(&s);
    cr_expect_eq(o.succeeded, STOCK, "exactly the stock succeeds: %zu", o.succeeded);
    cr_expect_eq(o.failed, N - STOCK);
    cr_expect_eq(o.timed_out, 0);
    expect_conserved("hot", STOCK, STOCK);
    cr_expect_eq(dlq_total(), 0, "nothing dead-lettered");
    cr_expect_eq(sg_stop_workers(&E), 0);
    ids_free(&s);
}

/* Every bus entry id, in order (caller frees the reply). */
static redisReply *bus_ids(void)
{
    redisReply *r = redisCommand(E.c, "XRANGE %s - +", es_store_bus(E.s));
    cr_assert(r && r->type == REDIS_REPLY_ARRAY, "XRANGE bus");
    return r;
}

Test(saga_faults, redis_kill9_and_aof_restart_loses_no_event_and_every_saga_ends)
{
    enum { N = 200, STOCK = 60 };
    sg_setup(&E, "appendonly yes\nappendfsync always\n");
    sg_product(&E, "p", STOCK);
    idset s = ids_new("co", N);
    const char *env[] = {"FAULT_ORDER_DELAY_MS=20", NULL};   /* sagas still in flight at the crash */
    sg_spawn_saga(&E, env);
    sg_line line[] = {{"p", 1, 500}};
    for (size_t i = 0; i < N / 2; i++)
        sg_checkout(&E, s.ids[i], "client-1", line, 1);
    at_least some = {&s, 0, N / 2, N / 8};
    cr_assert(tf_wait_until(terminal_at_least, &some, 60000), "some sagas ended before the crash");

    /* What was acknowledged before the crash: the bus and every history. */
    redisReply *before = bus_ids();
    long long *hlen = calloc(N / 2, sizeof *hlen);
    for (size_t i = 0; i < N / 2; i++)
        hlen[i] = sg_ll(&E, "LLEN chorus:h:checkout:%s", s.ids[i]);
    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    cr_assert_eq(tf_redis_restart(&E.r), 0);
    sg_reconnect(&E);

    redisReply *after = bus_ids();
    cr_assert_geq(after->elements, before->elements, "bus shrank from %zu to %zu entries", before->elements,
                  after->elements);
    for (size_t i = 0; i < before->elements; i++)
        cr_assert_str_eq(after->element[i]->element[0]->str, before->element[i]->element[0]->str,
                         "bus entry %zu changed", i);
    freeReplyObject(before);
    freeReplyObject(after);
    for (size_t i = 0; i < N / 2; i++)
        cr_expect_geq(sg_ll(&E, "LLEN chorus:h:checkout:%s", s.ids[i]), hlen[i], "history of %s shrank",
                      s.ids[i]);
    free(hlen);

    /* The workers reconnect on their own; new checkouts keep coming. */
    for (size_t i = N / 2; i < N; i++)
        sg_checkout(&E, s.ids[i], "client-2", line, 1);
    wait_ended(&s, 0, N, 90000);
    wait_quiet();
    outcome o = check_outcomes(&s);
    cr_expect_eq(o.succeeded, STOCK, "succeeded %zu", o.succeeded);
    expect_conserved("p", STOCK, STOCK);
    cr_expect_eq(dlq_total(), 0);
    cr_expect_eq(sg_stop_workers(&E), 0);
    ids_free(&s);
}

Test(saga_faults, timeout_racing_success_ends_each_checkout_once_and_never_orders_after_timeout)
{
    enum { N = 40, STOCK = 1000, QTY = 2 };
    sg_setup(&E, NULL);
    sg_product(&E, "p", STOCK);
    idset s = ids_new("co", N);
    const char *env[] = {"SAGA_TIMEOUT_MS=300", "FAULT_ORDER_DELAY_MS=100", NULL};
    sg_spawn_saga(&E, env);
    sg_spawn(&E, "stock-compensation", env);   /* two timeout ticks racing each other */
    wait_quiet();                              /* every group is up */
    /* Checkouts arrive every 30 ms, orders take 100 ms each: the first ones
     * succeed, the backlog then outgrows the timeout, and around the turn the
     * timeout fires while order creation is sleeping on a decided order. */
    sg_line line[] = {{"p", QTY, 100}};
    for (size_t i = 0; i < N; i++) {
        sg_checkout(&E, s.ids[i], "client-1", line, 1);
        tf_sleep_ms(30);
    }
    wait_ended(&s, 0, N, 60000);
    wait_quiet();   /* order creation works off its backlog: all conflicts */

    outcome o = check_outcomes(&s);
    cr_expect_gt(o.succeeded, 0, "some sagas succeeded");
    cr_expect_gt(o.timed_out, 0, "some sagas timed out");
    cr_expect_eq(o.succeeded + o.timed_out, N, "every checkout succeeded or timed out");
    fprintf(stderr, "timeout race: %zu succeeded, %zu timed out\n", o.succeeded, o.timed_out);
    expect_conserved("p", STOCK, (long long)o.succeeded * QTY);
    cr_expect_eq(dlq_total(), 0);
    cr_expect_eq(sg_stop_workers(&E), 0);
    ids_free(&s);
}

/* Line marks still held (chorus:hold:* whose value starts with "held:"). */
static long long marks_held(void)
{
    redisReply *k = redisCommand(E.c, "KEYS chorus:hold:*");
    cr_assert(k && k->type == REDIS_REPLY_ARRAY);
    long long n = 0;
    for (size_t i = 0; i < k->elements; i++) {
        char *v = sg_str(&E, "GET %s", k->element[i]->str);
        n += v && !strncmp(v, "held:", 5);
        free(v);
    }
    freeReplyObject(k);
    return n;
}

Test(saga_faults, timeout_racing_reservation_leaves_no_line_held_and_stock_conserved)
{
    /* SAGA_TIMEOUT_MS=1 against a reservation backlog of checkouts of 50
     * lines each (50 products' slots): every tick (200 ms) times out the
     * sagas not ended yet, before, during or after their reservation.
     * Whichever append wins, each line is either held then released by
     * compensation, or voided first and never held, so every line ends
     * settled and every unit is accounted for. */
    enum { N = 200, P = 50, STOCK = 1000 };
    sg_setup(&E, NULL);
    char prod[P][8];
    sg_line lines[P];
    for (int p = 0; p < P; p++) {
        snprintf(prod[p], sizeof prod[p], "q%d", p);
        sg_product(&E, prod[p], STOCK);
        lines[p] = (sg_line){prod[p], 1, 100};
    }
    idset s = ids_new("co", N);
    const char *env[] = {"SAGA_TIMEOUT_MS=1", NULL};
    sg_spawn_saga(&E, env);
    sg_spawn(&E, "stock-compensation", env);   /* two ticks racing each other too */
    wait_quiet();
    for (size_t i = 0; i < N; i++)
        sg_checkout(&E, s.ids[i], "client-1", lines, P);
    wait_ended(&s, 0, N, 90000);
    wait_quiet();

    outcome o = check_outcomes(&s);   /* one terminal each, no order after a timeout */
    cr_expect_eq(o.succeeded + o.failed, N);
    cr_expect_gt(o.timed_out, 0, "some sagas timed out");
    size_t before = 0, during = 0;
    for (size_t i = 0; i < N; i++) {
        char *t = sg_types(&E, s.ids[i]);
        before += !strcmp(t, "CheckoutInitiated,CheckoutTimedOut,CheckoutFailed");
        during += !strcmp(t, "CheckoutInitiated,CheckoutTimedOut,StockReleased,CheckoutFailed");
        free(t);
    }
    fprintf(stderr,
            "reservation race: %zu succeeded, %zu timed out (%zu before any line was held, %zu with lines held "
            "before StockReserved)\n",
            o.succeeded, o.timed_out, before, during);
    for (int p = 0; p < P; p++)
        expect_conserved(prod[p], STOCK, (long long)o.succeeded);
    cr_expect_eq(marks_held(), 0, "no line stays held after every saga ended");
    cr_expect_eq(dlq_total(), 0);
    cr_expect_eq(sg_stop_workers(&E), 0);
    ids_free(&s);
}
