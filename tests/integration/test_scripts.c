/* test_scripts.c - the saga workers' script modules (workers/lua/<name>.c)
 * called directly against a real redis-server: each outcome of reserve,
 * create_order and release, what each writes, and that a refusal writes
 * nothing. The runner is not involved: a bare wk_ctx holds the connection. */
#include "common/names.h"
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
    char err[256] = "";
    X.store = es_store_new(X.c, NULL, err, sizeof err);
    cr_assert_not_null(X.store, "es_store_new: %s", err);
}

static void teardown(void)
{
    es_store_free(X.store);
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

/* Runs reserve for checkout id (whose last event is cause). */
static wk_outcome reserve(es_event *cause, const wk_lines *l, wk_step_out *o)
{
    wk_step s;
    wk_step_init(&s, cause, "stock-reservation");
    wk_step_add(&s, CM_EV_STOCK_RESERVED, json_pack("{s:s}", "client_id", "c1"));
    wk_outcome rc = wk_script_reserve(&X, &s, cause->aggregate_id, l, o);
    wk_step_free(&s);
    return rc;
}

Test(scripts, reserve_holds_every_line_and_appends_once)
{
    product("p1", 10);
    product("p2", 5);
    es_event **init = append("co1", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines l = lines2("p1", 2, "p2", 5);
    wk_step_out o;
    cr_assert_eq(reserve(init[0], &l, &o), WK_OUT_APPENDED, "%s", X.reason);
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
    cr_assert_eq(reserve(init[0], &l, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate);
    expect_stock("p1", 8, 2, 0);
    cr_expect_eq(hist_len("co1"), 2);
    es_events_free(init, 1);
}

Test(scripts, reserve_refusals_write_nothing)
{
    product("p1", 1);
    product("bad", 1);
    num("HSET %s available many", cm_key_product("bad").s);
    es_event **a = append("co-short", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines l = lines2("p1", 2, NULL, 0);
    wk_step_out o;
    cr_expect_eq(reserve(a[0], &l, &o), WK_OUT_SHORT);
    cr_expect_str_eq(o.arg, "p1");
    es_event **b = append("co-ghost", CM_EV_CHECKOUT_INITIATED, json_object());
    l = lines2("p1", 1, "ghost", 1);
    cr_expect_eq(reserve(b[0], &l, &o), WK_OUT_UNKNOWN);
    cr_expect_str_eq(o.arg, "ghost");
    l = lines2("bad", 1, NULL, 0);
    cr_expect_eq(reserve(b[0], &l, &o), WK_OUT_UNKNOWN, "a non-integer counter is not reservable");
    expect_stock("p1", 1, 0, 0);
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-short").s), 0);
    cr_expect_eq(num("EXISTS %s", cm_key_resv("co-ghost").s), 0);
    cr_expect_eq(hist_len("co-short") + hist_len("co-ghost"), 2);
    /* a reservation without its StockReserved: never a second one */
    num("HSET %s state released", cm_key_resv("co-ghost").s);
    l = lines2("p1", 1, NULL, 0);
    cr_expect_eq(reserve(b[0], &l, &o), WK_OUT_EXISTS);
    cr_expect_str_eq(o.arg, "released");
    /* the saga moved past the cause: conflict, nothing written */
    es_events_free(append("co-short", CM_EV_CHECKOUT_TIMED_OUT, json_object()), 1);
    cr_expect_eq(reserve(a[0], &l, &o), WK_OUT_CONFLICT);
    expect_stock("p1", 1, 0, 0);
    es_events_free(a, 1);
    es_events_free(b, 1);
}

/* Reserves l for a fresh checkout id and returns its StockReserved. */
static es_event **reserved(const char *id, const wk_lines *l)
{
    es_event **init = append(id, CM_EV_CHECKOUT_INITIATED, json_object());
    wk_step_out o;
    cr_assert_eq(reserve(init[0], l, &o), WK_OUT_APPENDED, "%s", X.reason);
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
    wk_outcome rc = wk_script_create_order(&X, &s, &in, o);
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

static wk_outcome release(es_event *cause, bool held, const wk_lines *l, wk_step_out *o)
{
    wk_step s;
    wk_step_init(&s, cause, "stock-compensation");
    if (held)
        wk_step_add(&s, CM_EV_STOCK_RELEASED, json_object());
    wk_step_add(&s, CM_EV_CHECKOUT_FAILED, json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
    wk_outcome rc = wk_script_release(&X, &s, cause->aggregate_id, held, l, 60, o);
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
    cr_expect_eq(release(to[0], false, &l, &o), WK_OUT_CHANGED, "the caller saw nothing held: read again");
    cr_expect_str_eq(o.arg, "held");
    expect_stock("p1", 6, 4, 0);
    cr_assert_eq(release(to[0], true, &l, &o), WK_OUT_APPENDED, "%s", X.reason);
    expect_stock("p1", 10, 0, 0);
    char *st = str("HGET %s state", cm_key_resv("co-r").s);
    cr_expect_str_eq(st, "released");
    free(st);
    cr_expect_eq(hist_len("co-r"), 5);
    cr_assert_eq(release(to[0], true, &l, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate);
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

Test(scripts, prefetched_calls_take_one_round_trip_and_answer_as_alone)
{
    product("p1", 3);
    es_event **a = append("co-pa", CM_EV_CHECKOUT_INITIATED, json_object());
    es_event **b = append("co-pb", CM_EV_CHECKOUT_INITIATED, json_object());
    wk_lines two = lines2("p1", 2, NULL, 0);
    wk_step sa, sb;
    wk_step_init(&sa, a[0], "stock-reservation");
    wk_step_add(&sa, CM_EV_STOCK_RESERVED, json_object());
    wk_step_init(&sb, b[0], "stock-reservation");
    wk_step_add(&sb, CM_EV_STOCK_RESERVED, json_object());
    num("CONFIG RESETSTAT");
    wk_prefetch_clear();
    wk_script_reserve_prefetch(&X, &sa, "co-pa", &two, NULL, NULL);
    wk_script_reserve_prefetch(&X, &sb, "co-pb", &two, NULL, NULL);
    wk_prefetch_run(&X);
    cr_expect_eq(evalsha_calls(), 2, "both calls went out together");
    wk_step_out o;
    cr_expect_eq(wk_script_reserve(&X, &sa, "co-pa", &two, &o), WK_OUT_APPENDED, "%s", X.reason);
    cr_expect_eq(wk_script_reserve(&X, &sb, "co-pb", &two, &o), WK_OUT_SHORT, "the second finds the stock taken");
    cr_expect_str_eq(o.arg, "p1");
    cr_expect_eq(evalsha_calls(), 2, "the handlers used the prefetched replies");
    /* taken once: a second call for the same event goes to Redis */
    cr_expect_eq(wk_script_reserve(&X, &sa, "co-pa", &two, &o), WK_OUT_APPENDED);
    cr_expect(o.res.duplicate);
    cr_expect_eq(evalsha_calls(), 3);
    expect_stock("p1", 1, 2, 0);
    wk_prefetch_clear();
    wk_step_free(&sa);
    wk_step_free(&sb);
    es_events_free(a, 1);
    es_events_free(b, 1);
}
