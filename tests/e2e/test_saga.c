/* test_saga.c - the checkout saga end to end: a private redis-server, real
 * `chorus-worker` processes (stock-reservation, order-creation,
 * stock-compensation), CheckoutInitiated appended through the event store
 * library, products set by HSET.
 *
 * Which test proves which guarantee (DESIGN.md "The saga", issue 4):
 *   success_*                 a checkout with stock ends in exactly
 *                             Initiated, Reserved, OrderCreated, Succeeded; the
 *                             reservation becomes a sale (each line's mark
 *                             sold in its product's slot); one order with the
 *                             checkout's total; duplicate lines are summed.
 *   insufficient_stock_*      all lines or none: one short line fails the whole
 *                             checkout with insufficient_stock and leaves every
 *                             product untouched: the lines held before the
 *                             refusal are undone by the reservation (marks
 *                             undone, refused ones short/unknown), so no
 *                             StockReleased (also: a product deleted from
 *                             the catalog fails the same way).
 *   order_limit_*             a total over ORDER_LIMIT_CENTS fails the order and
 *                             the compensation releases exactly what was held.
 *   injected_fault_*          FAULT_ORDER_FAIL_RATE=1 fails with injected_fault;
 *                             compensated the same way.
 *   timeout_*                 with order creation down, SAGA_TIMEOUT_MS ends the
 *                             saga with timed_out and releases the stock; order
 *                             creation coming back later stands down (no order).
 *   duplicate_*               the same CheckoutInitiated delivered twice (a copy
 *                             on the bus, before and after the saga ran): one
 *                             reservation, one order, one terminal event, nothing
 *                             dead-lettered, saga_choreo_success_total counted once
 *                             (order_limit_* checks saga_choreo_failed_total too).
 *   late_redelivery_*         a CheckoutInitiated delivered again after its
 *                             saga ended and its line marks expired holds
 *                             nothing for good (the fresh holds are undone).
 *   sigkill_*                 order creation killed with SIGKILL between effect
 *                             and ack (its batch still pending) and restarted: the
 *                             re-delivered batch changes nothing; and the whole
 *                             bus re-delivered to every group changes nothing.
 *   poison_*                  bad JSON, an unknown schema and a checkout without
 *                             items are parked in the dead-letter stream with
 *                             their reason; the worker goes on, and the saga of
 *                             the item-less checkout still ends (timed_out).
 *   short_lifetimes_*         with 1 s lifetimes every transient key family
 *                             (reservations and their line marks,
 *                             notification markers, audit marks,
 *                             closed checkouts' read models, client indexes) is
 *                             gone after the run; histories, orders, the client
 *                             and stock aggregates stay; chorus-api still
 *                             answers each checkout's status (from its history).
 * Concurrency, Redis crashes and the timeout racing a success are in
 * test_saga_faults.c. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/buf.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/deadletter.h"
#include "tests/e2e/saga_env.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"

static sg_env E;

static void setup(void)
{
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(saga, .init = setup, .fini = teardown, .timeout = 90);

#define SEQ_OK "CheckoutInitiated,StockReserved,OrderCreated,CheckoutSucceeded"
#define SEQ_RESV_FAILED "CheckoutInitiated,StockReservationFailed,CheckoutFailed"
#define SEQ_ORDER_FAILED "CheckoutInitiated,StockReserved,OrderCreationFailed,StockReleased,CheckoutFailed"
#define SEQ_TIMED_OUT "CheckoutInitiated,StockReserved,CheckoutTimedOut,StockReleased,CheckoutFailed"

static void wait_ended(char *const *ids, size_t n, int timeout_ms)
{
    if (!sg_wait_terminal(&E, ids, n, timeout_ms)) {
        sg_dump_logs(&E);
        cr_assert_fail("sagas did not end within %d ms", timeout_ms);
    }
}

static void wait_quiet(void)
{
    if (!sg_wait_quiet(&E, 20000)) {
        sg_dump_logs(&E);
        cr_assert_fail("consumer groups did not become idle");
    }
}

static void expect_types(const char *checkout, const char *want)
{
    char *got = sg_types(&E, checkout);
    cr_expect_str_eq(got, want, "history of %s", checkout);
    free(got);
}

static void expect_data(const char *checkout, const char *type, const char *key, const char *want)
{
    char *got = sg_data_str(&E, checkout, type, key);
    cr_expect(got && !strcmp(got, want), "%s %s.%s = %s, want %s", checkout, type, key, got ? got : "(none)",
              want);
    free(got);
}

static void expect_stock(const char *id, long long available, long long reserved, long long sold)
{
    long long a, r, s;
    sg_stock(&E, id, &a, &r, &s);
    cr_expect(a == available && r == reserved && s == sold,
              "product %s: available %lld reserved %lld sold %lld, want %lld %lld %lld", id, a, r, s, available,
              reserved, sold);
}

static void expect_resv_state(const char *checkout, const char *want)
{
    char *st = sg_str(&E, "HGET chorus:resv:%s state", checkout);
    cr_expect(st && !strcmp(st, want), "reservation of %s is %s, want %s", checkout, st ? st : "(none)", want);
    free(st);
}

/* The line mark of checkout's line of product (workers/lua/line.lua). */
static void expect_mark(const char *checkout, const char *product, const char *want)
{
    char *got = sg_str(&E, "GET %s", cm_key_hold(product, checkout).s);
    cr_expect(got && !strcmp(got, want), "line %s of %s: mark %s, want %s", product, checkout, got ? got : "(none)",
              want);
    free(got);
}

static long long order_exists(const char *checkout)
{
    char order_id[CM_UUID_LEN + 1];
    cm_uuid_derive(checkout, "order", order_id);
    return sg_ll(&E, "EXISTS chorus:order:%s", order_id);
}

static long long dlq_total(void)
{
    long long n = 0;
    for (int g = 0; g < CM_W_COUNT; g++)
        n += sg_dlq_len(&E, cm_group_names[g]);
    return n;
}

static void stop_clean(void)
{
    cr_expect_eq(sg_stop_workers(&E), 0, "a saga worker did not drain and exit 0 (ASan/LSan clean)");
}

Test(saga, product_ids_like_reservation_fields_keep_stock_conserved)
{
    /* product ids are free-form within [A-Za-z0-9_-]: "_state" and "state"
     * must not collide with the reservation's own state field */
    sg_product(&E, "_state", 10);
    sg_product(&E, "state", 10);
    sg_spawn_saga(&E, NULL);
    sg_line lines[] = {{"_state", 2, 100}, {"state", 3, 100}};
    sg_checkout(&E, "co-state", "client-1", lines, 2);
    char *ids[] = {"co-state"};
    wait_ended(ids, 1, 20000);
    wait_quiet();
    expect_types("co-state", SEQ_OK);
    expect_stock("_state", 8, 0, 2);
    expect_stock("state", 7, 0, 3);
    expect_resv_state("co-state", "sold");
    long long ttl = sg_ll(&E, "TTL chorus:resv:co-state");
    cr_expect(ttl > 0 && ttl <= 604800, "a sold reservation expires (RESERVATION_TTL_S, 7 days): ttl %lld", ttl);
}

Test(saga, success_reserves_sells_and_ends_with_one_order)
{
    sg_product(&E, "p1", 10);
    sg_product(&E, "p2", 5);
    sg_spawn_saga(&E, NULL);
    sg_line lines[] = {{"p1", 2, 1500}, {"p2", 1, 700}, {"p1", 1, 1500}};
    sg_checkout(&E, "co-ok", "client-1", lines, 3);
    char *ids[] = {"co-ok"};
    wait_ended(ids, 1, 20000);
    wait_quiet();

    expect_types("co-ok", SEQ_OK);
    expect_stock("p1", 7, 0, 3);
    expect_stock("p2", 4, 0, 1);
    expect_resv_state("co-ok", "sold");
    expect_mark("co-ok", "p1", "sold:3");
    expect_mark("co-ok", "p2", "sold:1");
    char *order_id = sg_data_str(&E, "co-ok", "CheckoutSucceeded", "order_id");
    cr_assert_not_null(order_id);
    char want[CM_UUID_LEN + 1];
    cm_uuid_derive("co-ok", "order", want);
    cr_expect_str_eq(order_id, want, "the order id is derived from the checkout id");
    expect_data("co-ok", "OrderCreated", "total_cents", "5200");
    expect_data("co-ok", "OrderCreated", "client_id", "client-1");
    char *total = sg_str(&E, "HGET chorus:order:%s total_cents", order_id);
    char *checkout = sg_str(&E, "HGET chorus:order:%s checkout_id", order_id);
    cr_expect(total && !strcmp(total, "5200"), "order total %s", total ? total : "(none)");
    cr_expect(checkout && !strcmp(checkout, "co-ok"));
    free(total);
    free(checkout);
    free(order_id);

    es_checkout_state st;
    sg_fold(&E, "co-ok", &st);
    cr_expect_str_eq(st.status, "SUCCEEDED");
    cr_expect_eq(st.terminal_events, 1);
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

Test(saga, insufficient_stock_fails_all_lines_and_touches_no_stock)
{
    sg_product(&E, "p1", 10);
    sg_product(&E, "p2", 2);
    sg_spawn_saga(&E, NULL);
    /* p2 has 2, the checkout wants 2 + 1 of it: short, though each line fits. */
    sg_line lines[] = {{"p1", 3, 100}, {"p2", 2, 100}, {"p2", 1, 100}};
    sg_checkout(&E, "co-short", "client-1", lines, 3);
    sg_line ghost[] = {{"p1", 1, 100}, {"ghost", 1, 100}};
    sg_checkout(&E, "co-ghost", "client-2", ghost, 2);
    char *ids[] = {"co-short", "co-ghost"};
    wait_ended(ids, 2, 20000);
    wait_quiet();

    expect_types("co-short", SEQ_RESV_FAILED);
    expect_data("co-short", "StockReservationFailed", "reason", "insufficient_stock");
    expect_data("co-short", "StockReservationFailed", "product_id", "p2");
    expect_data("co-short", "CheckoutFailed", "reason", "insufficient_stock");
    expect_types("co-ghost", SEQ_RESV_FAILED);
    expect_data("co-ghost", "StockReservationFailed", "product_id", "ghost");
    expect_data("co-ghost", "StockReservationFailed", "detail", "unknown_product");
    expect_data("co-ghost", "CheckoutFailed", "reason", "insufficient_stock");
    expect_stock("p1", 10, 0, 0);
    expect_stock("p2", 2, 0, 0);
    cr_expect_eq(sg_ll(&E, "EXISTS chorus:resv:co-short"), 0, "nothing was reserved");
    /* the lines held before the refusal were undone by the reservation
     * itself; compensation released nothing (no StockReleased) */
    expect_mark("co-short", "p1", "undone:3");
    expect_mark("co-short", "p2", "short:3");
    expect_mark("co-ghost", "p1", "undone:1");
    expect_mark("co-ghost", "ghost", "unknown:1");
    cr_expect_eq(sg_ll(&E, "EXISTS chorus:product:ghost"), 0, "no product is made up");
    cr_expect_eq(order_exists("co-short"), 0);
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

/* A checkout whose order fails for `reason` under env: compensated. */
static void order_failure_compensates(const char *const *env, const char *reason)
{
    sg_product(&E, "p1", 10);
    int port = tf_free_port();
    char metrics[32], series[96];
    snprintf(metrics, sizeof metrics, "METRICS_PORT=%d", port);
    snprintf(series, sizeof series, "saga_choreo_failed_total{reason=\"%s\"}", reason);
    const char *menv[] = {metrics, NULL};
    sg_spawn(&E, "stock-reservation", env);
    sg_spawn(&E, "order-creation", env);
    sg_spawn(&E, "stock-compensation", menv);
    sg_line lines[] = {{"p1", 4, 3000}};
    sg_checkout(&E, "co-fail", "client-1", lines, 1);
    char *ids[] = {"co-fail"};
    wait_ended(ids, 1, 20000);
    wait_quiet();

    expect_types("co-fail", SEQ_ORDER_FAILED);
    expect_data("co-fail", "OrderCreationFailed", "reason", reason);
    expect_data("co-fail", "CheckoutFailed", "reason", reason);
    expect_data("co-fail", "StockReleased", "items", "[{\"product_id\":\"p1\",\"quantity\":4}]");
    expect_stock("p1", 10, 0, 0);
    expect_resv_state("co-fail", "released");
    expect_mark("co-fail", "p1", "released:4");
    cr_expect_eq(order_exists("co-fail"), 0, "no order for a failed checkout");
    cr_expect_eq(dlq_total(), 0);
    cr_expect_eq(sg_metric(port, series), 1, "%s", series);
    stop_clean();
}

Test(saga, order_limit_fails_the_order_and_releases_the_stock)
{
    const char *env[] = {"ORDER_LIMIT_CENTS=10000", NULL};
    order_failure_compensates(env, "order_limit_exceeded");
}

Test(saga, injected_fault_fails_the_order_and_releases_the_stock)
{
    const char *env[] = {"FAULT_ORDER_FAIL_RATE=1", NULL};
    order_failure_compensates(env, "injected_fault");
}

Test(saga, timeout_ends_a_stuck_saga_and_late_order_creation_stands_down)
{
    sg_product(&E, "p1", 10);
    const char *env[] = {"SAGA_TIMEOUT_MS=300", NULL};
    sg_spawn(&E, "stock-reservation", env);
    sg_spawn(&E, "stock-compensation", env);
    sg_line lines[] = {{"p1", 3, 100}};
    sg_checkout(&E, "co-slow", "client-1", lines, 1);
    char *ids[] = {"co-slow"};
    wait_ended(ids, 1, 20000);

    expect_types("co-slow", SEQ_TIMED_OUT);
    expect_data("co-slow", "CheckoutFailed", "reason", "timed_out");
    char *after = sg_data_str(&E, "co-slow", "CheckoutTimedOut", "after_ms");
    cr_expect(after && atoll(after) >= 300, "after_ms %s", after ? after : "(none)");
    free(after);
    expect_stock("p1", 10, 0, 0);
    expect_mark("co-slow", "p1", "released:3");
    cr_expect_eq(sg_ll(&E, "ZSCORE " CM_KEY_SAGA_STARTED " co-slow"), -1, "the saga left the timeout set");

    /* Order creation comes back and sees StockReserved: its append names a
     * version the timeout moved past, so it writes nothing. */
    sg_spawn(&E, "order-creation", env);
    wait_quiet();
    expect_types("co-slow", SEQ_TIMED_OUT);
    cr_expect_eq(order_exists("co-slow"), 0, "no order for a timed-out checkout");
    expect_stock("p1", 10, 0, 0);
    expect_mark("co-slow", "p1", "released:3");
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

/* XADDs a copy of the first bus entry of type `type` (same fields). */
static void copy_bus_entry(const char *type)
{
    redisReply *r = redisCommand(E.c, "XRANGE %s - +", es_store_bus(E.s));
    cr_assert(r && r->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        if (f->elements < 2 || strcmp(f->element[1]->str, type) != 0)
            continue;
        const char *argv[16];
        size_t lens[16];
        int n = 0;
        argv[n] = "XADD", lens[n++] = 4;
        argv[n] = es_store_bus(E.s), lens[n] = strlen(argv[n]), n++;
        argv[n] = "*", lens[n++] = 1;
        for (size_t j = 0; j < f->elements && n < 16; j++)
            argv[n] = f->element[j]->str, lens[n++] = f->element[j]->len;
        redisReply *x = redisCommandArgv(E.c, n, argv, lens);
        cr_assert(x && x->type == REDIS_REPLY_STRING, "XADD copy");
        freeReplyObject(x);
        break;
    }
    freeReplyObject(r);
}

Test(saga, duplicate_checkout_initiated_reserves_and_orders_once)
{
    sg_product(&E, "p1", 10);
    sg_line lines[] = {{"p1", 2, 100}};
    sg_checkout(&E, "co-dup", "client-1", lines, 1);
    copy_bus_entry("CheckoutInitiated");   /* delivered twice, likely in one batch */
    int port = tf_free_port();
    char metrics[32];
    snprintf(metrics, sizeof metrics, "METRICS_PORT=%d", port);
    const char *menv[] = {metrics, NULL};
    sg_spawn(&E, "stock-reservation", NULL);
    sg_spawn(&E, "order-creation", menv);
    sg_spawn(&E, "stock-compensation", NULL);
    char *ids[] = {"co-dup"};
    wait_ended(ids, 1, 20000);
    wait_quiet();
    copy_bus_entry("CheckoutInitiated");   /* and once more after the saga ended */
    copy_bus_entry("StockReserved");
    wait_quiet();

    expect_types("co-dup", SEQ_OK);
    expect_stock("p1", 8, 0, 2);
    redisReply *k = redisCommand(E.c, "KEYS chorus:order:*");
    cr_assert(k && k->type == REDIS_REPLY_ARRAY);
    cr_expect_eq(k->elements, 1, "one order");
    freeReplyObject(k);
    cr_expect_eq(sg_ll(&E, "XLEN %s", es_store_bus(E.s)), 4 + 3, "4 saga events and 3 copies, nothing else");
    cr_expect_eq(dlq_total(), 0, "duplicates are acknowledged, not dead-lettered");
    cr_expect_eq(sg_metric(port, "saga_choreo_success_total"), 1, "a replayed success is not counted again");
    stop_clean();
}

static bool no_line_marks(void *ud)
{
    (void)ud;
    return sg_count_keys(&E, "chorus:hold:*") == 0;
}

Test(saga, late_redelivery_after_the_line_marks_expired_keeps_no_stock_held)
{
    /* RESERVATION_TTL_S=1: a second after the saga ended its line marks are
     * gone, so a CheckoutInitiated delivered again finds no mark and holds
     * the lines afresh; the reservation sees StockReserved already in the
     * ended saga's history and gives them straight back */
    sg_product(&E, "p1", 10);
    const char *env[] = {"RESERVATION_TTL_S=1", NULL};
    sg_spawn_saga(&E, env);
    sg_line lines[] = {{"p1", 2, 100}};
    sg_checkout(&E, "co-late", "client-1", lines, 1);
    char *ids[] = {"co-late"};
    wait_ended(ids, 1, 20000);
    wait_quiet();
    expect_stock("p1", 8, 0, 2);
    cr_assert(tf_wait_until(no_line_marks, NULL, 15000), "the line marks expire");
    copy_bus_entry("CheckoutInitiated");
    wait_quiet();
    expect_types("co-late", SEQ_OK);
    expect_stock("p1", 8, 0, 2);
    expect_mark("co-late", "p1", "undone:2");
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

Test(saga, redelivery_deciding_otherwise_still_sells_an_order_recorded_before)
{
    /* An earlier delivery of StockReserved recorded the order and stopped
     * before selling its lines (simulated: the sale undone by hand); the
     * redelivery meets a lowered ORDER_LIMIT_CENTS and decides "fail". Its
     * append conflicts with the OrderCreated of that same event, so it
     * sells the lines instead of leaving them reserved for ever. */
    sg_product(&E, "p1", 10);
    sg_spawn(&E, "stock-reservation", NULL);
    int oc = sg_spawn(&E, "order-creation", NULL);
    sg_spawn(&E, "stock-compensation", NULL);
    sg_line lines[] = {{"p1", 2, 100}};
    sg_checkout(&E, "co-relimit", "client-1", lines, 1);
    char *ids[] = {"co-relimit"};
    wait_ended(ids, 1, 20000);
    wait_quiet();
    expect_types("co-relimit", SEQ_OK);
    expect_stock("p1", 8, 0, 2);
    /* the sale never happened */
    sg_ll(&E, "SET %s held:2", cm_key_hold("p1", "co-relimit").s);
    sg_ll(&E, "HINCRBY chorus:product:p1 reserved 2");
    sg_ll(&E, "HINCRBY chorus:product:p1 sold -2");
    expect_stock("p1", 8, 2, 0);
    sg_kill9(&E, oc);
    const char *lowered[] = {"ORDER_LIMIT_CENTS=1", NULL};
    sg_spawn(&E, "order-creation", lowered);
    copy_bus_entry("StockReserved");
    wait_quiet();
    expect_types("co-relimit", SEQ_OK);
    expect_stock("p1", 8, 0, 2);
    expect_mark("co-relimit", "p1", "sold:2");
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

static bool has_order_created(void *ud)
{
    return sg_ll(&E, "EXISTS chorus:order:%s", (const char *)ud) == 1;
}

static bool has_stock_reserved(void *ud)
{
    char **ids = ud;
    for (int i = 0; ids[i]; i++) {
        char *t = sg_types(&E, ids[i]);
        bool ok = strstr(t, "StockReserved") != NULL;
        free(t);
        if (!ok)
            return false;
    }
    return true;
}

Test(saga, sigkill_between_effect_and_ack_then_redelivery_changes_nothing)
{
    enum { N = 5 };
    sg_product(&E, "p1", 100);
    sg_spawn(&E, "stock-reservation", NULL);
    sg_spawn(&E, "stock-compensation", NULL);
    char names[N][16], *ids[N + 1];
    sg_line lines[] = {{"p1", 1, 100}};
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "co-k%d", i);
        ids[i] = names[i];
        sg_checkout(&E, ids[i], "client-1", lines, 1);
    }
    ids[N] = NULL;
    cr_assert(tf_wait_until(has_stock_reserved, ids, 20000), "reservations");

    /* One batch of N StockReserved, 400 ms per event: kill once the first
     * order is written, while the whole batch is still unacknowledged. */
    const char *slow[] = {"FAULT_ORDER_DELAY_MS=400", NULL};
    int oc = sg_spawn(&E, "order-creation", slow);
    char first_order[CM_UUID_LEN + 1];
    cm_uuid_derive("co-k0", "order", first_order);
    cr_assert(tf_wait_until(has_order_created, first_order, 20000), "first order");
    sg_kill9(&E, oc);
    redisReply *p = redisCommand(E.c, "XPENDING %s choreo-order", es_store_bus(E.s));
    cr_assert(p && p->type == REDIS_REPLY_ARRAY && p->elements >= 1);
    long long pending = cm_reply_ll(p->element[0], -1);
    freeReplyObject(p);
    /* N StockReserved (and the N CheckoutInitiated it skips) in one batch */
    cr_expect_geq(pending, N, "the killed batch (effects partly applied) is still pending: %lld", pending);

    /* A new incarnation takes the batch over after CLAIM_IDLE_MS. */
    sg_restart(&E, oc);
    wait_ended(ids, N, 30000);
    wait_quiet();
    for (int i = 0; i < N; i++)
        expect_types(ids[i], SEQ_OK);
    expect_stock("p1", 100 - N, 0, N);
    long long buslen = sg_ll(&E, "XLEN %s", es_store_bus(E.s));

    /* Everything again: every group re-reads the whole bus from the start. */
    cr_expect_eq(sg_stop_workers(&E), 0);
    for (int g = 0; g < 3; g++)
        sg_ll(&E, "XGROUP SETID %s %s 0", es_store_bus(E.s), cm_group_names[g]);
    for (int i = 0; i < E.np; i++)
        sg_restart(&E, i);
    wait_quiet();
    for (int i = 0; i < N; i++)
        expect_types(ids[i], SEQ_OK);
    expect_stock("p1", 100 - N, 0, N);
    cr_expect_eq(sg_ll(&E, "XLEN %s", es_store_bus(E.s)), buslen, "re-delivery appended nothing");
    cr_expect_eq(dlq_total(), 0);
    stop_clean();
}

/* The reason field of every entry of a dead-letter stream, joined by '|'. */
static char *dlq_reasons(const char *group)
{
    char k[512];
    es_dlq_stream(es_store_bus(E.s), group, k, sizeof k);
    redisReply *r = redisCommand(E.c, "XRANGE %s - +", k);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY);
    cm_buf b = CM_BUF_INIT;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            if (!strcmp(f->element[j]->str, "reason")) {
                cm_buf_puts(&b, f->element[j + 1]->str);
                cm_buf_putc(&b, '|');
            }
    }
    freeReplyObject(r);
    cm_buf_puts(&b, "");
    return cm_buf_steal(&b);
}

Test(saga, poison_entries_are_parked_with_their_reason_and_the_worker_goes_on)
{
    sg_product(&E, "p1", 10);
    const char *bus = es_store_bus(E.s);
    sg_ll(&E, "XADD %s * type CheckoutInitiated payload %s ts 1700000000.5", bus, "{not json");
    char payload[512];
    snprintf(payload, sizeof payload,
             "{\"event_id\":\"0190f8a2-0000-7000-8000-000000000001\",\"type\":\"CheckoutInitiated\","
             "\"schema\":2,\"aggregate\":\"checkout\",\"aggregate_id\":\"co-v2\",\"seq\":1,"
             "\"correlation_id\":\"co-v2\",\"causation_id\":null,\"producer\":\"api\","
             "\"emitted_at\":1700000000.5,\"data\":{}}");
    sg_ll(&E, "XADD %s * type CheckoutInitiated payload %s ts 1700000000.5", bus, payload);
    sg_checkout(&E, "co-empty", "client-1", NULL, 0);   /* a valid envelope, but no items */
    const char *env[] = {"SAGA_TIMEOUT_MS=500", NULL};
    sg_spawn_saga(&E, env);
    sg_line lines[] = {{"p1", 1, 100}};
    sg_checkout(&E, "co-after", "client-1", lines, 1);
    char *ids[] = {"co-after", "co-empty"};
    wait_ended(ids, 2, 20000);
    wait_quiet();

    expect_types("co-after", SEQ_OK);
    expect_types("co-empty", "CheckoutInitiated,CheckoutTimedOut,CheckoutFailed");
    expect_data("co-empty", "CheckoutFailed", "reason", "timed_out");
    expect_stock("p1", 9, 0, 1);
    cr_expect_eq(sg_dlq_len(&E, "choreo-reservation"), 3);
    char *why = dlq_reasons("choreo-reservation");
    cr_expect(strstr(why, "not JSON"), "reasons: %s", why);
    cr_expect(strstr(why, "schema"), "reasons: %s", why);
    cr_expect(strstr(why, "items"), "reasons: %s", why);
    free(why);
    /* compensation also handles CheckoutInitiated (the timeout); order
     * creation skips the type without decoding it */
    cr_expect_eq(sg_dlq_len(&E, "choreo-compensation"), 2);
    cr_expect_eq(sg_dlq_len(&E, "choreo-order"), 0);
    stop_clean();
}

static bool transient_gone(void *ud)
{
    (void)ud;
    return sg_count_keys(&E, "chorus:resv:*") == 0 && sg_count_keys(&E, "chorus:notify:*") == 1 /* the log */ &&
           sg_count_keys(&E, "chorus:{audit}:seen:*") == 0 && sg_count_keys(&E, "chorus:rm:checkout:*") == 0 &&
           sg_count_keys(&E, CM_KEY_CLIENT_CHECKOUTS "*") == 0 && sg_count_keys(&E, "chorus:hold:*") == 0;
}

static int g_api_port;

static bool api_healthy(void *ud)
{
    (void)ud;
    tf_http_resp r;
    bool ok = tf_http_request(g_api_port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200;
    tf_http_resp_free(&r);
    return ok;
}

/* Starts chorus-api (CHORUS_API_BIN) on a free port against the test's Redis;
 * returns its pid (it gets SIGKILL if this test dies). */
static pid_t start_api(void)
{
    const char *bin = getenv("CHORUS_API_BIN");
    cr_assert(bin && *bin, "CHORUS_API_BIN is not set");
    for (int attempt = 0; attempt < 5; attempt++) {
        g_api_port = tf_free_port();
        char port[32], url[340], log[400];
        snprintf(port, sizeof port, "API_PORT=%d", g_api_port);
        snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
        snprintf(log, sizeof log, "%s/api.log", E.r.dir);
        const char *env[] = {port, url, "API_THREADS=2", "LOG_LEVEL=warn", "CHORUS_ADMIN_TOKEN=", NULL};
        const char *argv[] = {bin, NULL};
        pid_t pid = tf_spawn(argv, env, log);
        cr_assert_gt(pid, 0, "cannot run %s", bin);
        if (tf_wait_until(api_healthy, NULL, 15000))
            return pid;
        tf_kill(pid, SIGKILL);   /* port taken between probe and bind: another */
        tf_wait_exit(pid, 5000, NULL);
        tf_dump_file(log, "chorus-api log");
    }
    cr_assert_fail("chorus-api did not start");
    return -1;
}

/* GET /api/checkouts/<id>: asserts 200 with that status (and reason). */
static void expect_api_status(const char *id, const char *status, const char *reason)
{
    char path[128], want[64];
    snprintf(path, sizeof path, "/api/checkouts/%s", id);
    tf_http_resp r;
    cr_assert_eq(tf_http_request(g_api_port, "GET", path, NULL, NULL, &r), 0, "GET %s: no answer", path);
    cr_assert_eq(r.status, 200, "GET %s: %d %s", path, r.status, r.body);
    snprintf(want, sizeof want, "\"status\":\"%s\"", status);
    cr_expect(strstr(r.body, want), "%s: %s", id, r.body);
    cr_expect(strstr(r.body, "\"client_id\":\"client-1\""), "%s: %s", id, r.body);
    if (reason) {
        snprintf(want, sizeof want, "\"reason\":\"%s\"", reason);
        cr_expect(strstr(r.body, want), "%s: %s", id, r.body);
    }
    tf_http_resp_free(&r);
}

Test(saga, short_lifetimes_let_the_transient_families_shrink_back)
{
    /* every key family but histories, orders, the bus, the audit log and
     * the client and stock aggregates has a lifetime; with 1 s lifetimes a
     * run's marks, reservations, notification markers, closed checkouts'
     * read models and client indexes are gone shortly after its sagas end,
     * and the API still answers each checkout's status from its history */
    sg_product(&E, "p1", 100);
    const char *env[] = {"RESERVATION_TTL_S=1", "NOTIFY_TTL_S=1", "AUDIT_SEEN_TTL_S=1", "READ_MODEL_TTL_S=1", NULL};
    sg_spawn_saga(&E, env);
    sg_spawn(&E, "notification", env);
    sg_spawn(&E, "audit", env);
    sg_spawn(&E, "cqrs-projection", env);
    pid_t api = start_api();
    char *ids[6];
    char names[6][16];
    for (int i = 0; i < 6; i++) {
        snprintf(names[i], sizeof names[i], "co-life-%d", i);
        ids[i] = names[i];
        sg_line l = {"p1", i == 5 ? 1000 : 1, 100};   /* one stock failure among them */
        sg_checkout(&E, names[i], "client-1", &l, 1);
    }
    wait_ended(ids, 6, 20000);
    cr_assert(tf_wait_until(transient_gone, NULL, 15000),
              "left: %lld reservations, %lld notify keys (log included), %lld audit marks, %lld checkout read "
              "models, %lld client indexes, %lld line marks",
              sg_count_keys(&E, "chorus:resv:*"), sg_count_keys(&E, "chorus:notify:*"), sg_count_keys(&E, "chorus:{audit}:seen:*"),
              sg_count_keys(&E, "chorus:rm:checkout:*"), sg_count_keys(&E, CM_KEY_CLIENT_CHECKOUTS "*"),
              sg_count_keys(&E, "chorus:hold:*"));
    cr_expect_eq(sg_count_keys(&E, "chorus:h:checkout:co-life-*"), 6, "histories are kept");
    cr_expect_eq(sg_count_keys(&E, "chorus:order:*"), 5, "orders are kept");
    cr_expect_eq(sg_ll(&E, "EXISTS chorus:rm:client:client-1"), 1, "the client aggregate is kept");
    cr_expect_eq(sg_ll(&E, "EXISTS chorus:rm:stock:p1"), 1, "the stock aggregate is kept");
    cr_expect_eq(sg_ll(&E, "HGET chorus:rm:client:client-1 total_orders"), 5);
    expect_stock("p1", 95, 0, 5);
    /* the read models are gone: the API folds the histories */
    for (int i = 0; i < 5; i++)
        expect_api_status(names[i], "SUCCEEDED", NULL);
    expect_api_status(names[5], "FAILED", "insufficient_stock");
    tf_kill(api, SIGTERM);
    int st = -1;
    cr_expect_eq(tf_wait_exit(api, 10000, &st), 0, "chorus-api did not stop");
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "chorus-api exit status %d", st);
}
