/* test_scripts.c - the saga workers' script modules (workers/lua/<name>.c)
 * called directly against a real redis-server: each transition of a stock
 * line (line.lua: hold, undo, sell, release; held, refused, duplicate,
 * undone, void, sold) with `available + reserved + sold` checked after each,
 * each outcome of reserve, create_order and release, what each writes, and
 * that a refusal writes nothing. Then the same calls through a real Redis
 * Cluster (3 masters + 3 replicas): every call's KEYS share one slot, so a
 * whole saga's scripts run there as on one node. The runner is not
 * involved: a bare wk_ctx holds the connection. */
#include "common/names.h"
#include "support/cluster_fixture.h"
#include "support/redis_fixture.h"
#include "workers/lua/scripts.h"
#include "workers/runner_int.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tf_redis R;
static wk_ctx X;

static void setup(void)
{
    cr_assert_eq(tf_redis_start(&R, NULL), 0, "cannot start redis-server");
    memset(&X, 0, sizeof X);
    X.c = tf_redis_connect(&R);
    X.cc = cm_cluster_borrow(X.c);
    char err[256] = "";
    X.store = es_store_new(X.c, NULL, err, sizeof err);
    cr_assert_not_null(X.store, "es_store_new: %s", err);
}

static void teardown(void)
{
    es_store_free(X.store);
    cm_cluster_free(X.cc);
    if (X.c)
        redisFree(X.c);
    tf_redis_stop(&R);
}

TestSuite(scripts, .init = setup, .fini = teardown, .timeout = 60);

static long long num(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(X.c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r);
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

static char *str(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(X.c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r);
    char *s = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return s;
}

static void product(const char *id, long long available)
{
    num("HSET %s name %s price_cents 100 available %lld reserved 0 sold 0", cm_key_product(id).s, id, available);
}

static void expect_stock(const char *id, long long av, long long rs, long long so)
{
    cm_key k = cm_key_product(id);
    long long a = num("HGET %s available", k.s), r = num("HGET %s reserved", k.s), s = num("HGET %s sold", k.s);
    cr_expect(a == av && r == rs && s == so, "%s: %lld/%lld/%lld, want %lld/%lld/%lld", id, a, r, s, av, rs, so);
}

/* Appends an event of type t to checkout id and returns it as read back
 * (caller frees with es_events_free(ev, 1)). */
static es_event **append(const char *id, enum cm_event_type t, json_t *data)
{
    es_new_event ev = {.type = cm_event_type_names[t], .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "test",
                         .expected_version = ES_ANY_VERSION, .events = &ev, .n = 1};
    es_append_res res;
    cr_assert_eq(es_append(X.store, &req, &res), ES_OK);
    json_decref(data);
    es_event **evs = NULL;
    size_t n = 0;
    cr_assert_eq(es_history_read(X.store, "checkout", id, &evs, &n), ES_OK);
    es_event *last = evs[n - 1];
    evs[n - 1] = NULL;
    es_events_free(evs, n - 1);
    es_event **one = malloc(sizeof *one);
    one[0] = last;
    return one;
}

static long long hist_len(const char *id)
{
    return num("LLEN %s", cm_key_history("checkout", id).s);
}

static wk_lines lines2(const char *p1, long long q1, const char *p2, long long q2)
{
    wk_lines l = {.n = p2 ? 2 : 1};
    snprintf(l.v[0].product_id, sizeof l.v[0].product_id, "%s", p1);
    l.v[0].qty = q1;
    if (p2) {
        snprintf(l.v[1].product_id, sizeof l.v[1].product_id, "%s", p2);
        l.v[1].qty = q2;
    }
    return l;
}

/* available + reserved + sold of product id, each checked >= 0. */
static long long stock_total(const char *id)
{
    cm_key k = cm_key_product(id);
    long long a = num("HGET %s available", k.s), r = num("HGET %s reserved", k.s), s = num("HGET %s sold", k.s);
    cr_expect(a >= 0 && r >= 0 && s >= 0, "%s: %lld/%lld/%lld: nothing negative", id, a, r, s);
    return a + r + s;
}

/* Runs op on every line of checkout; asserts it answered. */
static void lines_run(wk_line_op op, const char *checkout, const wk_lines *l, wk_line_res *res)
{
    cr_assert_eq(wk_line_run(&X, op, checkout, l, 60, res), 0, "%s", X.reason);
}

/* Runs op on one line; returns its result. */
static wk_line_res line_op(wk_line_op op, const char *checkout, const char *product, long long qty)
{
    wk_lines l = {.n = 1};
    snprintf(l.v[0].product_id, sizeof l.v[0].product_id, "%s", product);
    l.v[0].qty = qty;
    wk_line_res r;
    lines_run(op, checkout, &l, &r);
    return r;
}

static void expect_mark(const wk_line_res *r, wk_mark mark, long long qty, bool changed)
{
    cr_expect(r->mark == mark && r->qty == qty && r->changed == changed, "mark %s:%lld changed %d, want %s:%lld %d",
              wk_mark_names[r->mark], (long long)r->qty, r->changed, wk_mark_names[mark], qty, changed);
}

Test(scripts, line_transitions_move_stock_once_and_conserve_it)
{
    product("p1", 10);
    /* hold: available -> reserved, once */
    wk_line_res r = line_op(WK_LINE_HOLD, "co-a", "p1", 3);
    expect_mark(&r, WK_MARK_HELD, 3, true);
    expect_stock("p1", 7, 3, 0);
    cr_expect_eq(num("TTL %s", cm_key_hold("p1", "co-a").s), -1, "a held mark never expires");
    r = line_op(WK_LINE_HOLD, "co-a", "p1", 3);
    expect_mark(&r, WK_MARK_HELD, 3, false);
    expect_stock("p1", 7, 3, 0);
    cr_expect_eq(stock_total("p1"), 10);
    /* sell: reserved -> sold, once; a sold line is never released */
    r = line_op(WK_LINE_SELL, "co-a", "p1", 3);
    expect_mark(&r, WK_MARK_SOLD, 3, true);
    expect_stock("p1", 7, 0, 3);
    r = line_op(WK_LINE_SELL, "co-a", "p1", 3);
    expect_mark(&r, WK_MARK_SOLD, 3, false);
    r = line_op(WK_LINE_RELEASE, "co-a", "p1", 3);
    expect_mark(&r, WK_MARK_SOLD, 3, false);
    expect_stock("p1", 7, 0, 3);
    long long ttl = num("TTL %s", cm_key_hold("p1", "co-a").s);
    cr_expect(ttl > 0 && ttl <= 60, "a settled mark expires (ttl %lld)", ttl);
    cr_expect_eq(stock_total("p1"), 10);
    /* undo (reservation's own): held -> undone, back to available, once */
    r = line_op(WK_LINE_HOLD, "co-b", "p1", 2);
    expect_mark(&r, WK_MARK_HELD, 2, true);
    expect_stock("p1", 5, 2, 3);
    r = line_op(WK_LINE_UNDO, "co-b", "p1", 2);
    expect_mark(&r, WK_MARK_UNDONE, 2, true);
    expect_stock("p1", 7, 0, 3);
    r = line_op(WK_LINE_UNDO, "co-b", "p1", 2);
    expect_mark(&r, WK_MARK_UNDONE, 2, false);
    r = line_op(WK_LINE_RELEASE, "co-b", "p1", 2);
    expect_mark(&r, WK_MARK_UNDONE, 2, false);   /* compensation released nothing */
    r = line_op(WK_LINE_HOLD, "co-b", "p1", 2);
    expect_mark(&r, WK_MARK_UNDONE, 2, false);   /* a redelivery holds nothing again */
    expect_stock("p1", 7, 0, 3);
    cr_expect_eq(stock_total("p1"), 10);
    /* release (compensation): held -> released, once */
    r = line_op(WK_LINE_HOLD, "co-c", "p1", 4);
    expect_stock("p1", 3, 4, 3);
    r = line_op(WK_LINE_RELEASE, "co-c", "p1", 4);
    expect_mark(&r, WK_MARK_RELEASED, 4, true);
    expect_stock("p1", 7, 0, 3);
    r = line_op(WK_LINE_RELEASE, "co-c", "p1", 4);
    expect_mark(&r, WK_MARK_RELEASED, 4, false);
    r = line_op(WK_LINE_SELL, "co-c", "p1", 4);
    expect_mark(&r, WK_MARK_RELEASED, 4, false);
    expect_stock("p1", 7, 0, 3);
    cr_expect_eq(stock_total("p1"), 10);
    /* void: compensation first, then a late hold holds nothing */
    r = line_op(WK_LINE_RELEASE, "co-d", "p1", 1);
    expect_mark(&r, WK_MARK_VOID, 0, true);
    r = line_op(WK_LINE_HOLD, "co-d", "p1", 1);
    expect_mark(&r, WK_MARK_VOID, 0, false);
    expect_stock("p1", 7, 0, 3);
    /* undo or sell of a line never held: nothing, no mark */
    r = line_op(WK_LINE_UNDO, "co-e", "p1", 1);
    expect_mark(&r, WK_MARK_NONE, 0, false);
    r = line_op(WK_LINE_SELL, "co-e", "p1", 1);
    expect_mark(&r, WK_MARK_NONE, 0, false);
    cr_expect_eq(num("EXISTS %s", cm_key_hold("p1", "co-e").s), 0);
    expect_stock("p1", 7, 0, 3);
    cr_expect_eq(stock_total("p1"), 10);
}

Test(scripts, line_refusals_move_no_stock_and_stay_refused)
{
    product("p1", 1);
    product("bad", 1);
    num("HSET %s available many", cm_key_product("bad").s);
    wk_line_res r = line_op(WK_LINE_HOLD, "co-short", "p1", 2);
    expect_mark(&r, WK_MARK_SHORT, 2, true);
    r = line_op(WK_LINE_HOLD, "co-ghost", "ghost", 1);
    expect_mark(&r, WK_MARK_UNKNOWN, 1, true);
    r = line_op(WK_LINE_HOLD, "co-bad", "bad", 1);
    expect_mark(&r, WK_MARK_UNKNOWN, 1, true);   /* a non-integer counter is not reservable */
    expect_stock("p1", 1, 0, 0);
    cr_expect_eq(num("EXISTS %s", cm_key_product("ghost").s), 0, "no product is made up");
    /* restocked meanwhile: a redelivery still answers the same refusal */
    num("HSET %s available 5", cm_key_product("p1").s);
    r = line_op(WK_LINE_HOLD, "co-short", "p1", 2);
    expect_mark(&r, WK_MARK_SHORT, 2, false);
    r = line_op(WK_LINE_RELEASE, "co-short", "p1", 2);
    expect_mark(&r, WK_MARK_SHORT, 2, false);
    expect_stock("p1", 5, 0, 0);
    long long ttl = num("TTL %s", cm_key_hold("p1", "co-short").s);
    cr_expect(ttl > 0 && ttl <= 60, "a refused mark expires (ttl %lld)", ttl);
}

Test(scripts, line_marks_hash_to_their_products_slot)
{
    const char *ids[] = {"p1", "state", "_state", "A-b_9", "x"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        cm_key m = cm_key_hold(ids[i], "0190f8a2-0000-7000-8000-000000000001"), p = cm_key_product(ids[i]);
        cr_expect(cm_key_ok(&m));
        cr_expect_eq(cm_key_slot(m.s, strlen(m.s)), cm_key_slot(p.s, strlen(p.s)), "%s and %s", m.s, p.s);
    }
    /* ids are [A-Za-z0-9_-]: a brace can never move the tag */
    cm_key bad = cm_key_hold("a}b", "co");
    cr_expect_not(cm_key_ok(&bad));
    bad = cm_key_hold("a{b", "co");
    cr_expect_not(cm_key_ok(&bad));
    wk_line l = {.product_id = "a}b", .qty = 1};
    wk_line_set *ls = wk_line_set_new();
    size_t i = wk_line_set_add(ls, WK_LINE_HOLD, "co", &l);
    cm_pipe *p = cm_pipe_new(X.cc);
    wk_line_set_queue(&X, ls, p, 60);
    cr_expect_eq(cm_pipe_count(p), 0, "no call for a product id with braces");
    wk_line_res r;
    cr_expect_eq(wk_line_set_res(ls, i, &r), -1);
    cm_pipe_free(p);
    wk_line_set_free(ls);
}

/* Runs reserve.lua for the checkout whose last event is cause. */
static wk_outcome reserve(es_event *cause, const wk_lines *l, wk_step_out *o)
{
    wk_step s;
    wk_step_init(&s, cause, "stock-reservation");
    wk_step_add(&s, CM_EV_STOCK_RESERVED, json_pack("{s:s}", "client_id", "c1"));
    cm_pipe *p = cm_pipe_new(X.cc);
    int idx = wk_script_reserve_queue(&X, p, &s, cause->aggregate_id, l);
    wk_pipe_exec(&X, p);
    wk_outcome rc = wk_script_reserve_take(&X, p, idx, &s, o);
    cm_pipe_free(p);
    wk_step_free(&s);
    return rc;
}

/* Holds every line of l (as stock-reservation does first), then reserve. */
static wk_outcome hold_and_reserve(es_event *cause, const wk_lines *l, wk_step_out *o)
{
    wk_line_res res[WK_SAGA_MAX_LINES];
    lines_run(WK_LINE_HOLD, cause->aggregate_id, l, res);
    for (size_t i = 0; i < l->n; i++)
        cr_assert_eq(res[i].mark, WK_MARK_HELD, "%s", l->v[i].product_id);
    return reserve(cause, l, o);
}

Test(scripts, reserve_holds_every_line_and_appends_once)
{
    product("p1", 10);
    product("p2", 5);
    es_event **init = append("co1", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines l = lines2("p1", 2, "p2", 5);
    wk_step_out o;
    cr_assert_eq(hold_and_reserve(init[0], &l, &o), WK_OUT_APPENDED, "%s", X.reason);
    cr_expect_not(o.res.duplicate);
    cr_expect_eq(o.res.pos[0].seq, 2);
    expect_stock("p1", 8, 2, 0);
    expect_stock("p2", 0, 5, 0);
    cm_key resv = cm_key_resv("co1");
    char *st = str("HGET %s state", resv.s);
    cr_expect_str_eq(st, "held");
    free(st);
    cr_expect_eq(num("HGET %s p:p1", resv.s), 2);
    cr_expect_eq(num("HGET %s p:p2", resv.s), 5);
    /* a redelivery is a duplicate: nothing reserved twice */
    cr_assert_eq(hold_and_reserve(init[0], &l, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate);
    expect_stock("p1", 8, 2, 0);
    cr_expect_eq(hist_len("co1"), 2);
    es_events_free(init, 1);
}

Test(scripts, reserve_refusals_write_nothing)
{
    product("p1", 1);
    es_event **a = append("co-short", CM_EV_CHECKOUT_INITIATED, json_object());
    es_event **b = append("co-ghost", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines l = lines2("p1", 1, NULL, 0);
    wk_step_out o;
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-short").s), 0);
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-ghost").s), 0);
    /* a reservation without its StockReserved: never a second one */
    num("HSET %s state released", cm_key_resv("co-ghost").s);
    cr_expect_eq(reserve(b[0], &l, &o), WK_OUT_EXISTS);
    cr_expect_str_eq(o.arg, "released");
    /* the saga moved past the cause: conflict, nothing written */
    es_events_free(append("co-short", CM_EV_CHECKOUT_TIMED_OUT, json_object()), 1);
    cr_expect_eq(reserve(a[0], &l, &o), WK_OUT_CONFLICT);
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-short").s), 0);
    expect_stock("p1", 1, 0, 0);
    cr_expect_eq(hist_len("co-short") + hist_len("co-ghost"), 3);
    es_events_free(a, 1);
    es_events_free(b, 1);
}

/* Reserves l for a fresh checkout id and returns its StockReserved. */
static es_event **reserved(const char *id, const wk_lines *l)
{
    es_event **init = append(id, CM_EV_CHECKOUT_INITIATED, json_object());
    wk_step_out o;
    cr_assert_eq(hold_and_reserve(init[0], l, &o), WK_OUT_APPENDED, "%s", X.reason);
    es_events_free(init, 1);
    es_event **evs = NULL;
    size_t n = 0;
    cr_assert_eq(es_history_read(X.store, "checkout", id, &evs, &n), ES_OK);
    es_event **one = malloc(sizeof *one);
    one[0] = evs[n - 1];
    evs[n - 1] = NULL;
    es_events_free(evs, n - 1);
    return one;
}

static wk_outcome create_order(es_event *cause, const wk_lines *l, wk_step_out *o)
{
    wk_step s;
    wk_step_init(&s, cause, "order-creation");
    wk_step_add(&s, CM_EV_ORDER_CREATED, json_pack("{s:s}", "order_id", "o1"));
    wk_step_add(&s, CM_EV_CHECKOUT_SUCCEEDED, json_pack("{s:s}", "order_id", "o1"));
    wk_order_in in = {.checkout_id = cause->aggregate_id, .order_id = "o1", .client_id = "c1",
                      .total_cents = 300, .items_json = "[]", .created_at = 1.5, .resv_ttl_s = 60, .lines = l};
    cm_pipe *p = cm_pipe_new(X.cc);
    int idx = wk_script_create_order_queue(&X, p, &s, &in);
    wk_pipe_exec(&X, p);
    wk_outcome rc = wk_script_create_order_take(&X, p, idx, &s, o);
    cm_pipe_free(p);
    wk_step_free(&s);
    return rc;
}

Test(scripts, create_order_sells_the_held_lines_once)
{
    product("p1", 10);
    wk_lines l = lines2("p1", 3, NULL, 0);
    es_event **sr = reserved("co-o", &l);
    wk_step_out o;
    cr_assert_eq(create_order(sr[0], &l, &o), WK_OUT_APPENDED, "%s", X.reason);
    expect_stock("p1", 7, 3, 0);   /* the sale is the lines' step, in their slots */
    wk_line_res res;
    lines_run(WK_LINE_SELL, "co-o", &l, &res);
    expect_mark(&res, WK_MARK_SOLD, 3, true);
    expect_stock("p1", 7, 0, 3);
    char *st = str("HGET %s state", cm_key_resv("co-o").s);
    cr_expect_str_eq(st, "sold");
    free(st);
    long long ttl = num("TTL %s", cm_key_resv("co-o").s);
    cr_expect(ttl > 0 && ttl <= 60, "the sold reservation expires (ttl %lld)", ttl);
    char *total = str("HGET %s total_cents", cm_key_order("co-o", "o1").s);
    cr_expect_str_eq(total, "300");
    free(total);
    cr_expect_eq(hist_len("co-o"), 4);
    cr_assert_eq(create_order(sr[0], &l, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate, "a redelivery sells nothing twice");
    lines_run(WK_LINE_SELL, "co-o", &l, &res);
    expect_mark(&res, WK_MARK_SOLD, 3, false);
    expect_stock("p1", 7, 0, 3);
    es_events_free(sr, 1);
}

Test(scripts, create_order_refuses_what_is_not_held)
{
    product("p1", 10);
    product("p2", 10);
    wk_lines both = lines2("p1", 1, "p2", 1), one = lines2("p1", 1, NULL, 0);
    es_event **sr = reserved("co-m", &both);
    wk_step_out o;
    cr_expect_eq(create_order(sr[0], &one, &o), WK_OUT_MISMATCH, "a held product the caller did not name");
    cr_expect_str_eq(o.arg, "p2");
    num("HSET %s state released", cm_key_resv("co-m").s);
    cr_expect_eq(create_order(sr[0], &both, &o), WK_OUT_NOT_HELD);
    cr_expect_str_eq(o.arg, "released");
    expect_stock("p1", 9, 1, 0);
    cr_expect_eq(num("EXISTS %s", cm_key_order("co-m", "o1").s), 0);
    cr_expect_eq(hist_len("co-m"), 2);
    es_events_free(sr, 1);
}

static wk_outcome release(es_event *cause, bool released, wk_step_out *o)
{
    wk_step s;
    wk_step_init(&s, cause, "stock-compensation");
    if (released)
        wk_step_add(&s, CM_EV_STOCK_RELEASED, json_object());
    wk_step_add(&s, CM_EV_CHECKOUT_FAILED, json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
    cm_pipe *p = cm_pipe_new(X.cc);
    int idx = wk_script_release_queue(&X, p, &s, cause->aggregate_id, released, 60);
    wk_pipe_exec(&X, p);
    wk_outcome rc = wk_script_release_take(&X, p, idx, &s, o);
    cm_pipe_free(p);
    wk_step_free(&s);
    return rc;
}

Test(scripts, release_gives_back_what_is_held_once)
{
    product("p1", 10);
    wk_lines l = lines2("p1", 4, NULL, 0);
    es_event **sr = reserved("co-r", &l);
    es_events_free(sr, 1);
    es_event **to = append("co-r", CM_EV_CHECKOUT_TIMED_OUT, json_object());
    wk_step_out o;
    cr_expect_eq(release(to[0], false, &o), WK_OUT_CHANGED, "a held record but nothing released: refused");
    cr_expect_str_eq(o.arg, "held");
    expect_stock("p1", 6, 4, 0);
    wk_line_res res;
    lines_run(WK_LINE_RELEASE, "co-r", &l, &res);
    expect_mark(&res, WK_MARK_RELEASED, 4, true);
    cr_assert_eq(release(to[0], true, &o), WK_OUT_APPENDED, "%s", X.reason);
    expect_stock("p1", 10, 0, 0);
    char *st = str("HGET %s state", cm_key_resv("co-r").s);
    cr_expect_str_eq(st, "released");
    free(st);
    cr_expect_eq(hist_len("co-r"), 5);
    lines_run(WK_LINE_RELEASE, "co-r", &l, &res);
    expect_mark(&res, WK_MARK_RELEASED, 4, false);
    cr_assert_eq(release(to[0], true, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate);
    expect_stock("p1", 10, 0, 0);
    es_events_free(to, 1);
}

Test(scripts, release_with_nothing_held_ends_the_saga_alone)
{
    /* timed out before the reservation ran: the lines are voided, the
     * record never existed, CheckoutFailed comes alone */
    product("p1", 10);
    es_event **init = append("co-n", CM_EV_CHECKOUT_INITIATED, json_object());
    es_events_free(init, 1);
    es_event **to = append("co-n", CM_EV_CHECKOUT_TIMED_OUT, json_object());
    wk_line_res res = line_op(WK_LINE_RELEASE, "co-n", "p1", 2);
    expect_mark(&res, WK_MARK_VOID, 0, true);
    wk_step_out o;
    cr_assert_eq(release(to[0], false, &o), WK_OUT_APPENDED, "%s", X.reason);
    cr_expect_eq(hist_len("co-n"), 3);
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-n").s), 0);
    res = line_op(WK_LINE_HOLD, "co-n", "p1", 2);   /* the reservation, late */
    expect_mark(&res, WK_MARK_VOID, 0, false);
    expect_stock("p1", 10, 0, 0);
    es_events_free(to, 1);
}

/* Script calls (EVAL and EVALSHA) Redis has run since CONFIG RESETSTAT. */
static long long evalsha_calls(void)
{
    redisReply *r = redisCommand(X.c, "INFO commandstats");
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    long long n = 0;
    const char *names[] = {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="};
    for (size_t i = 0; i < 2; i++) {
        const char *p = strstr(r->str, names[i]);
        n += p ? atoll(p + strlen(names[i])) : 0;
    }
    freeReplyObject(r);
    return n;
}

Test(scripts, a_batchs_calls_take_one_round_trip_and_answer_as_alone)
{
    product("p1", 3);
    product("p2", 5);
    es_event **a = append("co-pa", CM_EV_CHECKOUT_INITIATED, json_object());
    es_event **b = append("co-pb", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines two = lines2("p1", 2, "p2", 1);
    wk_step sa;
    wk_step_init(&sa, a[0], "stock-reservation");
    wk_step_add(&sa, CM_EV_STOCK_RESERVED, json_object());
    wk_line_res r = line_op(WK_LINE_HOLD, "co-pa", "p1", 2);   /* scripts loaded: calls go by SHA */
    num("CONFIG RESETSTAT");
    wk_line_set *ls = wk_line_set_new();
    size_t ia1 = wk_line_set_add(ls, WK_LINE_HOLD, "co-pa", &two.v[0]);
    size_t ia2 = wk_line_set_add(ls, WK_LINE_HOLD, "co-pa", &two.v[1]);
    size_t ib1 = wk_line_set_add(ls, WK_LINE_HOLD, "co-pb", &two.v[0]);
    size_t ib2 = wk_line_set_add(ls, WK_LINE_HOLD, "co-pb", &two.v[1]);
    cm_pipe *p = cm_pipe_new(X.cc);
    wk_line_set_queue(&X, ls, p, 60);
    cr_expect_eq(cm_pipe_count(p), 2, "one call per product, whatever the checkouts");
    int ir = wk_script_reserve_queue(&X, p, &sa, "co-pa", &two);
    wk_pipe_exec(&X, p);
    cr_expect_eq(evalsha_calls(), 3, "the calls went out together");
    wk_line_set_take(&X, ls, p);
    cr_assert_eq(wk_line_set_res(ls, ia1, &r), 0, "%s", X.reason);
    expect_mark(&r, WK_MARK_HELD, 2, false);
    cr_assert_eq(wk_line_set_res(ls, ia2, &r), 0, "%s", X.reason);
    expect_mark(&r, WK_MARK_HELD, 1, true);
    cr_assert_eq(wk_line_set_res(ls, ib1, &r), 0, "%s", X.reason);
    expect_mark(&r, WK_MARK_SHORT, 2, true);   /* in the order added: the second finds the stock taken */
    cr_assert_eq(wk_line_set_res(ls, ib2, &r), 0, "%s", X.reason);
    expect_mark(&r, WK_MARK_HELD, 1, true);
    cr_expect_eq(wk_line_set_res(ls, 4, &r), -1, "no such line");
    wk_step_out o;
    cr_expect_eq(wk_script_reserve_take(&X, p, ir, &sa, &o), WK_OUT_APPENDED, "%s", X.reason);
    cm_pipe_free(p);
    wk_line_set_free(ls);
    expect_stock("p1", 1, 2, 0);
    expect_stock("p2", 3, 2, 0);
    wk_step_free(&sa);
    es_events_free(a, 1);
    es_events_free(b, 1);
}

/* Queues set ls on a pipe of its own and runs it; asserts it sent calls calls. */
static void set_run(wk_line_set *ls, long long ttl_s, size_t calls)
{
    cm_pipe *p = cm_pipe_new(X.cc);
    wk_line_set_queue(&X, ls, p, ttl_s);
    cr_expect_eq(cm_pipe_count(p), calls, "one call per product and op");
    wk_pipe_exec(&X, p);
    wk_line_set_take(&X, ls, p);
    cm_pipe_free(p);
}

static void expect_res(const wk_line_set *ls, size_t i, wk_mark mark, long long qty, bool changed)
{
    wk_line_res r;
    cr_assert_eq(wk_line_set_res(ls, i, &r), 0, "line %zu: %s", i, X.reason);
    expect_mark(&r, mark, qty, changed);
}

Test(scripts, one_line_call_takes_a_products_lines_in_turn_as_alone)
{
    product("p1", 5);
    wk_line l2 = {.product_id = "p1", .qty = 2};
    wk_line_set *ls = wk_line_set_new();
    size_t x = wk_line_set_add(ls, WK_LINE_HOLD, "co-x", &l2);
    size_t y = wk_line_set_add(ls, WK_LINE_HOLD, "co-y", &l2);
    size_t x2 = wk_line_set_add(ls, WK_LINE_HOLD, "co-x", &l2);   /* a copied entry: the line again */
    size_t z = wk_line_set_add(ls, WK_LINE_HOLD, "co-z", &l2);
    set_run(ls, 60, 1);
    expect_res(ls, x, WK_MARK_HELD, 2, true);
    expect_res(ls, y, WK_MARK_HELD, 2, true);
    expect_res(ls, x2, WK_MARK_HELD, 2, false);   /* the first hold of the call is seen */
    expect_res(ls, z, WK_MARK_SHORT, 2, true);    /* 1 left after co-x and co-y */
    wk_line_set_free(ls);
    expect_stock("p1", 1, 4, 0);
    char *m = str("GET %s", cm_key_hold("p1", "co-x").s);
    cr_expect_str_eq(m, "held:2");
    free(m);
    cr_expect_eq(num("TTL %s", cm_key_hold("p1", "co-y").s), -1, "a held mark never expires");
    long long ttl = num("TTL %s", cm_key_hold("p1", "co-z").s);
    cr_expect(ttl > 0 && ttl <= 60, "a refused mark expires (ttl %lld)", ttl);
    /* sell one, release one, void one never held: kept marks (lifetime 0) */
    ls = wk_line_set_new();
    x = wk_line_set_add(ls, WK_LINE_SELL, "co-x", &l2);
    y = wk_line_set_add(ls, WK_LINE_RELEASE, "co-y", &l2);
    size_t w = wk_line_set_add(ls, WK_LINE_RELEASE, "co-w", &l2);
    x2 = wk_line_set_add(ls, WK_LINE_SELL, "co-x", &l2);
    set_run(ls, 0, 2);
    expect_res(ls, x, WK_MARK_SOLD, 2, true);
    expect_res(ls, x2, WK_MARK_SOLD, 2, false);
    expect_res(ls, y, WK_MARK_RELEASED, 2, true);
    expect_res(ls, w, WK_MARK_VOID, 0, true);
    wk_line_set_free(ls);
    expect_stock("p1", 3, 0, 2);
    cr_expect_eq(stock_total("p1"), 5);
    cr_expect_eq(num("TTL %s", cm_key_hold("p1", "co-x").s), -1, "lifetime 0: kept");
    cr_expect_eq(num("TTL %s", cm_key_hold("p1", "co-w").s), -1, "lifetime 0: kept");
    m = str("GET %s", cm_key_hold("p1", "co-w").s);
    cr_expect_str_eq(m, "void:0");
    free(m);
}

Test(scripts, a_line_call_on_a_broken_counter_answers_as_before)
{
    /* sold is not an integer: the steps run one by one, as they always did:
     * a hold (which reads only available and reserved) goes ahead, a sell
     * fails on HINCRBY with its line still held */
    product("p2", 4);
    num("HSET %s sold x", cm_key_product("p2").s);
    wk_line l1 = {.product_id = "p2", .qty = 1}, l5 = {.product_id = "p2", .qty = 5};
    wk_line_set *ls = wk_line_set_new();
    size_t a = wk_line_set_add(ls, WK_LINE_HOLD, "co-a", &l1);
    size_t b = wk_line_set_add(ls, WK_LINE_HOLD, "co-b", &l5);
    set_run(ls, 60, 1);
    expect_res(ls, a, WK_MARK_HELD, 1, true);
    expect_res(ls, b, WK_MARK_SHORT, 5, true);
    wk_line_set_free(ls);
    cr_expect_eq(num("HGET %s available", cm_key_product("p2").s), 3);
    cr_expect_eq(num("HGET %s reserved", cm_key_product("p2").s), 1);
    ls = wk_line_set_new();
    a = wk_line_set_add(ls, WK_LINE_SELL, "co-a", &l1);
    set_run(ls, 60, 1);
    wk_line_res r;
    cr_expect_eq(wk_line_set_res(ls, a, &r), -1, "HINCRBY on a non-integer fails the call");
    wk_line_set_free(ls);
    char *m = str("GET %s", cm_key_hold("p2", "co-a").s);
    cr_expect_str_eq(m, "held:1");
    free(m);
}

Test(scripts, a_set_of_many_products_sends_one_call_per_product_and_op)
{
    /* 300 lines over 150 products and two ops, interleaved: one call per
     * (product, op), each line answered as alone */
    enum { NP = 150 };
    wk_line lines[NP];
    for (int k = 0; k < NP; k++) {
        lines[k] = (wk_line){.qty = 2};
        snprintf(lines[k].product_id, sizeof lines[k].product_id, "m%d", k);
        product(lines[k].product_id, 5);
    }
    wk_line_set *ls = wk_line_set_new();
    size_t held[NP], undone[NP];
    for (int k = 0; k < NP; k++) {
        held[k] = wk_line_set_add(ls, WK_LINE_HOLD, "co-many", &lines[k]);
        undone[k] = wk_line_set_add(ls, WK_LINE_UNDO, "co-none", &lines[(k * 7) % NP]);
    }
    set_run(ls, 60, 2 * NP);
    for (int k = 0; k < NP; k++) {
        expect_res(ls, held[k], WK_MARK_HELD, 2, true);
        expect_res(ls, undone[k], WK_MARK_NONE, 0, false);
    }
    wk_line_set_free(ls);
    cr_expect_eq(num("HGET %s available", cm_key_product("m149").s), 3);
}

/* Holds the lines co-a (1), co-bad (1) and co-b (2) of product pid (10 in
 * stock, co-bad's mark key set up by the caller) in one call: co-a and co-b
 * are held as if alone, co-bad fails alone (why: what a state would mean)
 * and nothing moves for it. */
static void hold_around_a_bad_mark(const char *pid, const char *why)
{
    wk_line l1 = {.qty = 1}, l2 = {.qty = 2};
    snprintf(l1.product_id, sizeof l1.product_id, "%s", pid);
    snprintf(l2.product_id, sizeof l2.product_id, "%s", pid);
    wk_line_set *ls = wk_line_set_new();
    size_t a = wk_line_set_add(ls, WK_LINE_HOLD, "co-a", &l1);
    size_t bad = wk_line_set_add(ls, WK_LINE_HOLD, "co-bad", &l1);
    size_t b = wk_line_set_add(ls, WK_LINE_HOLD, "co-b", &l2);
    set_run(ls, 60, 1);
    expect_res(ls, a, WK_MARK_HELD, 1, true);
    expect_res(ls, b, WK_MARK_HELD, 2, true);
    wk_line_res r;
    cr_expect_eq(wk_line_set_res(ls, bad, &r), -1, "%s", why);
    wk_line_set_free(ls);
    cr_expect_eq(num("HGET %s available", cm_key_product(pid).s), 7);
    cr_expect_eq(num("HGET %s reserved", cm_key_product(pid).s), 3);
}

Test(scripts, a_corrupted_mark_fails_its_own_line_alone)
{
    /* a mark without a quantity (written by hand) fails its line; the other
     * lines of the same call answer as alone and nothing moves for it */
    product("p3", 10);
    num("SET %s sold:", cm_key_hold("p3", "co-bad").s);
    hold_around_a_bad_mark("p3", "a corrupted mark answered a state");
    /* any op: a held mark without its number, and a value that is no mark,
     * each fail their own line; the call's held line is sold as alone */
    num("SET %s held:", cm_key_hold("p3", "co-bad").s);
    num("SET %s junk", cm_key_hold("p3", "co-junk").s);
    wk_line l1 = {.product_id = "p3", .qty = 1};
    wk_line_set *ls = wk_line_set_new();
    size_t a = wk_line_set_add(ls, WK_LINE_SELL, "co-a", &l1);
    size_t bad = wk_line_set_add(ls, WK_LINE_SELL, "co-bad", &l1);
    size_t junk = wk_line_set_add(ls, WK_LINE_RELEASE, "co-junk", &l1);
    set_run(ls, 60, 2);
    expect_res(ls, a, WK_MARK_SOLD, 1, true);
    wk_line_res r;
    cr_expect_eq(wk_line_set_res(ls, bad, &r), -1, "a held mark without its number answered");
    cr_expect_eq(wk_line_set_res(ls, junk, &r), -1, "a value that is no mark answered");
    wk_line_set_free(ls);
    char *m = str("GET %s", cm_key_hold("p3", "co-junk").s);
    cr_expect_str_eq(m, "junk");
    free(m);
    cr_expect_eq(stock_total("p3"), 10);
}

Test(scripts, a_mark_key_of_another_type_fails_its_own_line_alone)
{
    /* a hash where a line's mark belongs (not chorus's): that line fails,
     * the key is left as it was, the call's other lines answer as alone */
    product("p4", 10);
    num("HSET %s owner someone-else", cm_key_hold("p4", "co-bad").s);
    hold_around_a_bad_mark("p4", "a hash at a mark's key answered as a mark");
    cr_expect_eq(num("HLEN %s", cm_key_hold("p4", "co-bad").s), 1, "the foreign key was overwritten");
    char *t = str("HGET %s owner", cm_key_hold("p4", "co-bad").s);
    cr_expect_str_eq(t, "someone-else");
    free(t);
    /* a sell over the same keys: the held line is sold, the foreign one fails again */
    wk_line l1 = {.product_id = "p4", .qty = 1};
    wk_line_set *ls = wk_line_set_new();
    size_t a = wk_line_set_add(ls, WK_LINE_SELL, "co-a", &l1);
    size_t bad = wk_line_set_add(ls, WK_LINE_SELL, "co-bad", &l1);
    set_run(ls, 60, 1);
    expect_res(ls, a, WK_MARK_SOLD, 1, true);
    wk_line_res r;
    cr_expect_eq(wk_line_set_res(ls, bad, &r), -1);
    wk_line_set_free(ls);
    cr_expect_eq(stock_total("p4"), 10);
}

Test(scripts, a_step_finds_its_earlier_append_after_its_cause_and_conflicts_otherwise)
{
    es_event **init = append("co-s", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_step s;
    wk_step_init(&s, init[0], "stock-reservation");
    wk_step_add(&s, CM_EV_STOCK_RESERVATION_FAILED, json_pack("{s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK));
    es_append_res first, again;
    cr_assert_eq(wk_step_append(&X, &s, &first), WK_STEP_OK, "%s", X.reason);
    cr_expect_not(first.duplicate);
    cr_expect_eq(first.pos[0].seq, 2);
    es_event **rel = append("co-s", CM_EV_CHECKOUT_FAILED, json_object());   /* the saga moved on */
    /* a redelivery: found after its cause, at the position it was stored */
    cr_assert_eq(wk_step_append(&X, &s, &again), WK_STEP_OK, "%s", X.reason);
    cr_expect(again.duplicate);
    cr_expect_eq(again.version, 3);
    cr_expect_eq(again.pos[0].seq, 2);
    cr_expect_str_eq(again.pos[0].entry_id, first.pos[0].entry_id);
    wk_step_free(&s);
    /* another step of the same cause, not appended: the history is past it */
    wk_step_init(&s, init[0], "order-creation");
    wk_step_add(&s, CM_EV_ORDER_CREATION_FAILED, json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
    cr_expect_eq(wk_step_append(&X, &s, &again), WK_STEP_CONFLICT);
    wk_step_free(&s);
    /* a cause the history has not reached yet */
    es_event ahead = *rel[0];
    ahead.seq = 7;
    wk_step_init(&s, &ahead, "stock-compensation");
    wk_step_add(&s, CM_EV_STOCK_RELEASED, json_object());
    cr_expect_eq(wk_step_append(&X, &s, &again), WK_STEP_CONFLICT);
    wk_step_free(&s);
    cr_expect_eq(hist_len("co-s"), 3, "nothing written by the conflicts");
    /* the stored payloads carry their positions */
    es_event **evs = NULL;
    size_t n = 0;
    cr_assert_eq(es_history_read(X.store, "checkout", "co-s", &evs, &n), ES_OK);
    cr_assert_eq(n, 3);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(evs[i]->seq, (int64_t)i + 1);
    cr_expect_str_eq(evs[1]->event_id, first.pos[0].event_id);
    es_events_free(evs, n);
    es_events_free(init, 1);
    es_events_free(rel, 1);
}

/* ---- the same calls through a real Redis Cluster ---- */

static tf_cluster CL;
static wk_ctx Y;

static void cluster_up(void)
{
    cr_assert_eq(cm_partitions_set(4), 0);   /* this test's process only: the checkouts' keys tagged */
    cr_assert_eq(tf_cluster_start(&CL, NULL), 0, "cluster did not start");
    memset(&Y, 0, sizeof Y);
    char err[512] = "";
    Y.cc = cm_cluster_open(CL.url, 5000, err, sizeof err);
    cr_assert_not_null(Y.cc, "cm_cluster_open: %s", err);
    Y.c = tf_redis_connect(&CL.node[0]);   /* the store only names the keys */
    Y.store = es_store_new(Y.c, NULL, err, sizeof err);
    cr_assert_not_null(Y.store, "es_store_new: %s", err);
}

static void cluster_down(void)
{
    es_store_free(Y.store);
    if (Y.c)
        redisFree(Y.c);
    cm_cluster_free(Y.cc);
    tf_cluster_stop(&CL);
}

TestSuite(scripts_cluster, .init = cluster_up, .fini = cluster_down, .timeout = 120);

static long long cnum(const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char cmd[512];
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    cm_argv a = {0};
    for (char *save = NULL, *w = strtok_r(cmd, " ", &save); w; w = strtok_r(NULL, " ", &save))
        cm_argv_adds(&a, w);
    redisReply *r = cm_cluster_argv(Y.cc, cm_key_slot(key, strlen(key)), &a);
    cm_argv_free(&a);
    cr_assert_not_null(r, "%s", cm_cluster_errstr(Y.cc));
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "%s", r->str);
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

static void cproduct(const char *id, long long available)
{
    cm_key k = cm_key_product(id);
    cnum(k.s, "HSET %s available %lld reserved 0 sold 0", k.s, available);
}

static void cexpect_stock(const char *id, long long av, long long rs, long long so)
{
    cm_key k = cm_key_product(id);
    long long a = cnum(k.s, "HGET %s available", k.s), r = cnum(k.s, "HGET %s reserved", k.s),
              s = cnum(k.s, "HGET %s sold", k.s);
    cr_expect(a == av && r == rs && s == so, "%s: %lld/%lld/%lld, want %lld/%lld/%lld", id, a, r, s, av, rs, so);
}

/* A stand-in for the event a step reacts to: checkout id at seq (its
 * follow-ups' ids derive from event_id, their append expects seq). */
static es_event cause_of(const char *checkout, const char *event_id, int64_t seq)
{
    return (es_event){.event_id = (char *)event_id, .aggregate = "checkout", .aggregate_id = (char *)checkout,
                      .seq = seq};
}

/* Appends one follow-up of cause through the cluster; asserts the outcome. */
static void cappend(es_event *cause, enum cm_event_type t, json_t *data)
{
    wk_step s;
    wk_step_init(&s, cause, "test");
    wk_step_add(&s, t, data);
    es_append_res res;
    cr_assert_eq(wk_step_append(&Y, &s, &res), WK_STEP_OK, "%s", Y.reason);
    wk_step_free(&s);
}

static void cexpect_lines(wk_line_op op, const char *checkout, const wk_lines *l, wk_mark want)
{
    wk_line_res res[WK_SAGA_MAX_LINES];
    cr_assert_eq(wk_line_run(&Y, op, checkout, l, 60, res), 0, "%s", Y.reason);
    for (size_t i = 0; i < l->n; i++)
        cr_expect_eq(res[i].mark, want, "%s of %s: %s", l->v[i].product_id, checkout, wk_mark_names[res[i].mark]);
}

Test(scripts_cluster, every_saga_call_keeps_to_one_slot_and_runs_on_a_cluster)
{
    wk_lines l = lines2("p1", 2, "p2", 3);
    cproduct("p1", 10);
    cproduct("p2", 10);
    const char *co = "co-cluster";
    /* the old layout is what a cluster refuses: a checkout key beside a product key */
    cm_key h = cm_key_history("checkout", co), pk = cm_key_product("p1");
    cr_assert_neq(cm_key_slot(h.s, strlen(h.s)), cm_key_slot(pk.s, strlen(pk.s)));
    cm_pipe *p = cm_pipe_new(Y.cc);
    cm_argv mixed = {0};
    cm_argv_adds(&mixed, h.s);
    cm_argv_adds(&mixed, pk.s);
    static cm_script probe = {.src = "return 1"};
    cr_expect_eq(cm_pipe_script(p, &probe, 2, &mixed), CM_CLUSTER_ECROSSSLOT);
    cm_argv_free(&mixed);
    cm_pipe_free(p);

    /* success: hold, reserve, order, sell */
    es_event c0 = cause_of(co, "0190f8a2-0000-7000-8000-0000000000c0", 0);
    cappend(&c0, CM_EV_CHECKOUT_INITIATED, json_object());
    cexpect_lines(WK_LINE_HOLD, co, &l, WK_MARK_HELD);
    cexpect_stock("p1", 8, 2, 0);
    es_event c1 = cause_of(co, "0190f8a2-0000-7000-8000-0000000000c1", 1);
    wk_step s;
    wk_step_init(&s, &c1, "stock-reservation");
    wk_step_add(&s, CM_EV_STOCK_RESERVED, json_object());
    wk_step_out o;
    p = cm_pipe_new(Y.cc);
    int idx = wk_script_reserve_queue(&Y, p, &s, co, &l);
    cr_assert_geq(idx, 0, "%s", Y.reason);
    wk_pipe_exec(&Y, p);
    cr_expect_eq(wk_script_reserve_take(&Y, p, idx, &s, &o), WK_OUT_APPENDED, "%s", Y.reason);
    cm_pipe_free(p);
    wk_step_free(&s);

    es_event c2 = cause_of(co, "0190f8a2-0000-7000-8000-0000000000c2", 2);
    wk_step_init(&s, &c2, "order-creation");
    wk_step_add(&s, CM_EV_ORDER_CREATED, json_object());
    wk_step_add(&s, CM_EV_CHECKOUT_SUCCEEDED, json_object());
    wk_order_in in = {.checkout_id = co, .order_id = "o-cluster", .client_id = "c1", .total_cents = 500,
                      .items_json = "[]", .created_at = 1.5, .resv_ttl_s = 60, .lines = &l};
    p = cm_pipe_new(Y.cc);
    idx = wk_script_create_order_queue(&Y, p, &s, &in);
    cr_assert_geq(idx, 0, "%s", Y.reason);
    wk_pipe_exec(&Y, p);
    cr_expect_eq(wk_script_create_order_take(&Y, p, idx, &s, &o), WK_OUT_APPENDED, "%s", Y.reason);
    cm_pipe_free(p);
    wk_step_free(&s);
    cexpect_lines(WK_LINE_SELL, co, &l, WK_MARK_SOLD);
    cexpect_stock("p1", 8, 0, 2);
    cexpect_stock("p2", 7, 0, 3);
    cr_expect_eq(cnum(h.s, "LLEN %s", h.s), 4);

    /* failure: hold, reserve, time out, release (lines, then the script) */
    const char *cf = "co-cluster-f";
    es_event f0 = cause_of(cf, "0190f8a2-0000-7000-8000-0000000000f0", 0);
    cappend(&f0, CM_EV_CHECKOUT_INITIATED, json_object());
    cexpect_lines(WK_LINE_HOLD, cf, &l, WK_MARK_HELD);
    es_event f1 = cause_of(cf, "0190f8a2-0000-7000-8000-0000000000f1", 1);
    wk_step_init(&s, &f1, "stock-reservation");
    wk_step_add(&s, CM_EV_STOCK_RESERVED, json_object());
    p = cm_pipe_new(Y.cc);
    idx = wk_script_reserve_queue(&Y, p, &s, cf, &l);
    wk_pipe_exec(&Y, p);
    cr_expect_eq(wk_script_reserve_take(&Y, p, idx, &s, &o), WK_OUT_APPENDED, "%s", Y.reason);
    cm_pipe_free(p);
    wk_step_free(&s);
    es_event f2 = cause_of(cf, "0190f8a2-0000-7000-8000-0000000000f2", 2);
    cappend(&f2, CM_EV_CHECKOUT_TIMED_OUT, json_object());
    cexpect_stock("p1", 6, 2, 2);
    cexpect_lines(WK_LINE_RELEASE, cf, &l, WK_MARK_RELEASED);
    es_event f3 = cause_of(cf, "0190f8a2-0000-7000-8000-0000000000f3", 3);
    wk_step_init(&s, &f3, "stock-compensation");
    wk_step_add(&s, CM_EV_STOCK_RELEASED, json_object());
    wk_step_add(&s, CM_EV_CHECKOUT_FAILED, json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
    p = cm_pipe_new(Y.cc);
    idx = wk_script_release_queue(&Y, p, &s, cf, true, 60);
    wk_pipe_exec(&Y, p);
    cr_expect_eq(wk_script_release_take(&Y, p, idx, &s, &o), WK_OUT_APPENDED, "%s", Y.reason);
    cm_pipe_free(p);
    wk_step_free(&s);
    cexpect_stock("p1", 8, 0, 2);
    cexpect_stock("p2", 7, 0, 3);
    cm_key hf = cm_key_history("checkout", cf);
    cr_expect_eq(cnum(hf.s, "LLEN %s", hf.s), 5);

    /* several checkouts' lines of one product: one call, one slot */
    wk_line_set *ls = wk_line_set_new();
    size_t a = wk_line_set_add(ls, WK_LINE_HOLD, "co-g1", &l.v[0]);
    size_t b = wk_line_set_add(ls, WK_LINE_HOLD, "co-g2", &l.v[0]);
    p = cm_pipe_new(Y.cc);
    wk_line_set_queue(&Y, ls, p, 60);
    cr_expect_eq(cm_pipe_count(p), 1, "%s", Y.reason);
    wk_pipe_exec(&Y, p);
    wk_line_set_take(&Y, ls, p);
    wk_line_res r;
    cr_expect(wk_line_set_res(ls, a, &r) == 0 && r.mark == WK_MARK_HELD, "%s", Y.reason);
    cr_expect(wk_line_set_res(ls, b, &r) == 0 && r.mark == WK_MARK_HELD, "%s", Y.reason);
    cm_pipe_free(p);
    wk_line_set_free(ls);
    cexpect_stock("p1", 4, 4, 2);
}
