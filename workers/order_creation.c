/* order_creation.c - the order-creation worker (group choreo-order).
 *
 * On StockReserved it either creates the order or fails it:
 *  - total_cents over ORDER_LIMIT_CENTS: OrderCreationFailed
 *    {reason: order_limit_exceeded};
 *  - fault injection (FAULT_ORDER_FAIL_RATE, the probability per event):
 *    OrderCreationFailed {reason: injected_fault};
 *  - otherwise lua/create_order.lua, in one script in the checkout's slot:
 *    the order hash chorus:order:<order_id> is written, the reservation
 *    record becomes sold, the saga leaves the timeout set, and OrderCreated
 *    + CheckoutSucceeded are appended; then every line is sold in its
 *    product's slot (lua/line.lua sell: reserved -= q, sold += q). A
 *    redelivery that finds the append done ("dup") sells again, which is a
 *    no-op for the lines already sold, so a crash between the two steps
 *    still ends with every line sold before the event is acknowledged.
 * Either way the append names the version at StockReserved: if the saga timed
 * out meanwhile the append conflicts, nothing is written and nothing sold
 * (compensation releases the lines), and the worker re-reads the history and
 * stands down. FAULT_ORDER_DELAY_MS slows every event down before that
 * decision (to let tests race the timeout). A batch takes two round trips
 * (saga.h, prefetch): the checkout-slot scripts and failure appends, then
 * the sells.
 *
 * The order id is derived from the checkout id, so the order of a checkout is
 * the same whoever creates it and however often. The total comes from
 * StockReserved's total_cents (an extra field the reservation copies from
 * CheckoutInitiated), or from the folded history when an older producer left
 * it out. */
#include "workers/lua/scripts.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t g_limit_cents;
static double g_fail_rate;
static int64_t g_delay_ms;
static int64_t g_resv_ttl_s;

static const cm_opt k_opts[] = {
    {"order-limit-cents", "ORDER_LIMIT_CENTS", CM_OPT_INT, &g_limit_cents, "500000", 0, 1e15,
     "orders whose total exceeds this fail with order_limit_exceeded"},
    {"fault-order-fail-rate", "FAULT_ORDER_FAIL_RATE", CM_OPT_DOUBLE, &g_fail_rate, "0", 0, 1,
     "fault injection: probability that an order fails with injected_fault"},
    {"fault-order-delay-ms", "FAULT_ORDER_DELAY_MS", CM_OPT_INT, &g_delay_ms, "0", 0, 600000,
     "fault injection: delay before each order decision"},
    {"reservation-ttl-s", "RESERVATION_TTL_S", CM_OPT_INT, &g_resv_ttl_s, "604800", 0, 315360000,
     "lifetime of a sold reservation hash (0: kept); its saga has ended"},
    {0},
};

#define TOUCH_EVERY_MS 1000

/* Sleeps g_delay_ms, keeping the batch claimed and giving up on shutdown. */
static void injected_delay(wk_ctx *ctx)
{
    int64_t now = cm_mono_ms(), end = now + g_delay_ms, touched = now;
    while (now < end && !wk_stopping(ctx)) {
        cm_sleep_ms(end - now < 50 ? end - now : 50);
        now = cm_mono_ms();
        if (now - touched >= TOUCH_EVERY_MS) {
            wk_touch(ctx);
            touched = now;
        }
    }
}

/* Whether the fault injection fails the order of StockReserved event_id: a
 * pure function of the event (a keyed hash of its id against the rate), so
 * every delivery of the event decides the same. A fresh draw per delivery
 * could fail a redelivery whose first delivery created the order and then
 * stopped before selling its lines: the failure's append conflicts and the
 * lines would stay held for ever. */
static bool injected_fault(const char *event_id)
{
    if (g_fail_rate <= 0)
        return false;
    static const unsigned char key[crypto_shorthash_KEYBYTES] = "chorus-faults-01";
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)event_id, strlen(event_id), key);
    uint32_t v = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
    return v % 1000000u < (uint32_t)(g_fail_rate * 1000000.0);
}

/* Fills total and client from the folded history (older StockReserved data). */
static int totals_from_history(wk_ctx *ctx, const es_event *ev, json_int_t *total, char *client, size_t clen)
{
    es_event **evs = NULL;
    size_t n = 0;
    if (es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, ev->aggregate_id, &evs, &n) != ES_OK) {
        wk_fail_reason(ctx, "history read: %s", es_store_errstr(wk_store(ctx)));
        return -1;
    }
    es_checkout_state st;
    es_checkout_fold(evs, n, &st);
    es_events_free(evs, n);
    *total = st.total_cents;
    snprintf(client, clen, "%s", st.client_id);
    return 0;
}

/* What one StockReserved leads to, decided once (the injected fault is
 * random): the order to create, or the failure to record. */
typedef struct plan {
    const char *fail;         /* NULL: create the order; else OrderCreationFailed's reason */
    json_int_t total;
    char client[72];
    char order_id[CM_UUID_LEN + 1];
    wk_lines lines;
    wk_step s;                /* OrderCreated + CheckoutSucceeded, or OrderCreationFailed */
    char *items;              /* create: the items as JSON (owned) */
    wk_order_in in;
    /* what came of it (run) */
    int idx;                  /* the script's or the append's call in the pipe */
    wk_outcome rc;
    wk_step_out o;
    const char *checkout;     /* the event's aggregate id (borrowed) */
    bool sell;                /* its order is recorded: sell its lines */
    bool sold;                /* sell: every line's sell answered */
    wk_line_res res[WK_SAGA_MAX_LINES];
    size_t at[WK_SAGA_MAX_LINES];    /* each line's index in the sells' wk_line_set */
} plan;

static void plan_free(void *vp)
{
    plan *p = vp;
    wk_step_free(&p->s);
    free(p->items);
    free(p);
}

/* Decides ev into p: WK_ACK, or WK_DEAD (never possible) / WK_RETRY after
 * setting the fail reason. */
static wk_result plan_make(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    if (!wk_saga_checkout(ctx, ev))
        return WK_DEAD;
    p->checkout = ev->aggregate_id;
    char err[160];
    if (wk_lines_parse(json_object_get(ev->data, "items"), &p->lines, err, sizeof err) != 0) {
        wk_fail_reason(ctx, "StockReserved data: %s", err);
        return WK_DEAD;
    }
    json_t *t = json_object_get(ev->data, "total_cents");
    const char *c = es_event_data_str(ev, "client_id");
    if (json_is_integer(t) && c) {
        p->total = json_integer_value(t);
        snprintf(p->client, sizeof p->client, "%s", c);
    } else if (totals_from_history(ctx, ev, &p->total, p->client, sizeof p->client) != 0) {
        return WK_RETRY;
    }
    if (!p->client[0]) {
        wk_fail_reason(ctx, "checkout %s has no client_id", ev->aggregate_id);
        return WK_DEAD;
    }
    if (g_delay_ms > 0)
        injected_delay(ctx);
    if (p->total > g_limit_cents)
        p->fail = CM_REASON_ORDER_LIMIT;
    else if (injected_fault(ev->event_id))
        p->fail = CM_REASON_INJECTED_FAULT;
    wk_step_init(&p->s, ev, cm_worker_names[CM_W_ORDER_CREATION]);
    if (p->fail) {
        wk_step_add(&p->s, CM_EV_ORDER_CREATION_FAILED, json_pack("{s:s}", "reason", p->fail));
        return WK_ACK;
    }
    const char *checkout = ev->aggregate_id;
    cm_uuid_derive(checkout, "order", p->order_id);
    wk_step_add(&p->s, CM_EV_ORDER_CREATED, json_pack("{s:s, s:s, s:I}", "order_id", p->order_id, "client_id",
                                                      p->client, "total_cents", p->total));
    wk_step_add(&p->s, CM_EV_CHECKOUT_SUCCEEDED, json_pack("{s:s}", "order_id", p->order_id));
    p->items = json_dumps(json_object_get(ev->data, "items"), JSON_COMPACT | JSON_ENSURE_ASCII);
    p->in = (wk_order_in){.checkout_id = checkout, .order_id = p->order_id, .client_id = p->client,
                          .total_cents = (long long)p->total, .items_json = p->items ? p->items : "[]",
                          .created_at = cm_wall_s(), .resv_ttl_s = g_resv_ttl_s, .lines = &p->lines};
    return WK_ACK;
}

/* Sells, in one round trip, every line of each plan whose order is recorded
 * (p->sell); sets p->sold when every one of its lines answered. */
static void sell(wk_ctx *ctx, void *const *ps, size_t n)
{
    cm_pipe *pipe = cm_pipe_new(wk_cluster(ctx));
    wk_line_set *ls = wk_line_set_new();
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        for (size_t i = 0; p->sell && i < p->lines.n; i++)
            p->at[i] = wk_line_set_add(ls, WK_LINE_SELL, p->checkout, &p->lines.v[i]);
    }
    wk_line_set_exec(ctx, ls, pipe, g_resv_ttl_s);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (!p->sell)
            continue;
        p->sold = true;
        for (size_t i = 0; i < p->lines.n; i++)
            if (wk_line_set_res(ls, p->at[i], &p->res[i]) != 0)
                p->sold = false;
    }
    wk_line_set_free(ls);
    cm_pipe_free(pipe);
}

/* Runs the plans together, one round trip per phase: (1) in the checkouts'
 * slots, create_order.lua for the orders and the plain append of the
 * failures; (2) sell every line of each order whose append is done (now or
 * by an earlier delivery). */
static void run(wk_ctx *ctx, void *const *ps, size_t n)
{
    cm_pipe *pipe = cm_pipe_new(wk_cluster(ctx));
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        p->idx = p->fail ? wk_step_append_queue(ctx, pipe, &p->s)
                         : wk_script_create_order_queue(ctx, pipe, &p->s, &p->in);
    }
    wk_pipe_exec(ctx, pipe);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        p->rc = p->fail ? wk_step_take(ctx, pipe, p->idx, &p->s, wk_no_refusals, &p->o)
                        : wk_script_create_order_take(ctx, pipe, p->idx, &p->s, &p->o);
        p->sold = false;
        p->sell = !p->fail && p->rc == WK_OUT_APPENDED;
    }

    cm_pipe_free(pipe);
    sell(ctx, ps, n);
}

/* The order's append landed: every line must be sold now. Logs a line that
 * is not (its mark expired, or it was never held: nothing to sell). */
static void check_sold(const es_event *ev, const plan *p)
{
    for (size_t i = 0; i < p->lines.n; i++)
        if (p->res[i].mark != WK_MARK_SOLD) {
            const char *kv[] = {"product_id", p->lines.v[i].product_id, "mark", wk_mark_names[p->res[i].mark],
                                NULL};
            cm_logx(CM_WARN, ev->aggregate_id, ev->event_id, kv, "order line not sold: its mark is not held");
        }
}

/* Acts on what run found for a created order. */
static wk_result order_created(wk_ctx *ctx, const es_event *ev, plan *p)
{
    const char *checkout = ev->aggregate_id;
    switch (p->rc) {
    case WK_OUT_APPENDED: {
        wk_saga_count(ctx, &p->s, &p->o.res);
        if (!p->sold) {   /* the redelivery finds the append done and sells again */
            wk_fail_reason(ctx, "order of %s recorded, its lines not all sold yet", checkout);
            return WK_RETRY;
        }
        check_sold(ev, p);
        const char *kv[] = {"order_id", p->order_id, NULL};
        cm_logx(CM_INFO, checkout, ev->event_id, kv, "order created (total %lld cents)%s", (long long)p->total,
                p->o.res.duplicate ? " (already created)" : "");
        return WK_ACK;
    }
    case WK_OUT_CONFLICT:
        return wk_saga_moved(ctx, ev, "create-order");
    case WK_OUT_NOT_HELD:
    case WK_OUT_MISMATCH:
        /* The reservation is not held (or lists a product StockReserved does
         * not): never sell what was not reserved. The saga times out. */
        wk_fail_reason(ctx, "reservation of %s: %s %s", checkout,
                       p->rc == WK_OUT_NOT_HELD ? "not held, state" : "holds unnamed product", p->o.arg);
        return WK_DEAD;
    default:
        return WK_RETRY;
    }
}

/* The failure's append conflicted: the saga moved on. If it moved on with
 * an OrderCreated of this very event, an earlier delivery created the order
 * and stopped before selling its lines, and this one decided otherwise
 * (ORDER_LIMIT_CENTS changed meanwhile): the lines are sold now, as that
 * delivery would have, or they would stay reserved for ever. */
static wk_result order_failed_late(wk_ctx *ctx, const es_event *ev, plan *p)
{
    es_event **evs = NULL;
    size_t n = 0;
    if (es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, ev->aggregate_id, &evs, &n) != ES_OK) {
        wk_fail_reason(ctx, "history read: %s", es_store_errstr(wk_store(ctx)));
        return WK_RETRY;
    }
    const es_event *next = ev->seq >= 1 && (int64_t)n > ev->seq ? evs[ev->seq] : NULL;
    p->sell = next && next->kind == CM_EV_ORDER_CREATED && next->causation_id &&
              !strcmp(next->causation_id, ev->event_id);
    es_events_free(evs, n);
    if (!p->sell)
        return wk_saga_moved(ctx, ev, "order-failed");
    void *const one[] = {p};
    sell(ctx, one, 1);
    if (!p->sold) {
        wk_fail_reason(ctx, "order of %s recorded by an earlier delivery, its lines not all sold yet",
                       ev->aggregate_id);
        return WK_RETRY;
    }
    check_sold(ev, p);
    cm_logx(CM_INFO, ev->aggregate_id, ev->event_id, NULL,
            "order recorded by an earlier delivery (this one decided %s): its lines sold", p->fail);
    return WK_ACK;
}

/* Acts on what run found for a failed order. */
static wk_result order_failed(wk_ctx *ctx, const es_event *ev, plan *p)
{
    if (p->rc == WK_OUT_APPENDED) {
        wk_saga_count(ctx, &p->s, &p->o.res);
        const char *kv[] = {"reason", p->fail, NULL};
        cm_logx(CM_INFO, ev->aggregate_id, ev->event_id, kv, "order failed (total %lld cents)%s",
                (long long)p->total, p->o.res.duplicate ? " (already recorded)" : "");
        return WK_ACK;
    }
    if (p->rc == WK_OUT_CONFLICT)
        return order_failed_late(ctx, ev, p);
    return WK_RETRY;
}

/* Acts on what run found for ev. */
static wk_result act(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    return p->fail ? order_failed(ctx, ev, p) : order_created(ctx, ev, p);
}

/* A StockReserved with its total and client: one without needs a history
 * read, its handler plans it alone. */
static bool wants(const es_event *ev)
{
    return ev->kind == CM_EV_STOCK_RESERVED && json_is_integer(json_object_get(ev->data, "total_cents")) &&
           es_event_data_str(ev, "client_id");
}

static bool failed(const void *p)
{
    return ((const plan *)p)->rc == WK_OUT_EREDIS;
}

static const wk_plan_def k_plan = {
    .size = sizeof(plan), .wants = wants, .make = plan_make, .run = run, .failed = failed, .act = act,
    .free = plan_free,
};

/* The batch's orders run together (saga.h, prefetch); each handler then
 * finds its decision and outcome. Not with an injected delay, which tests
 * use to race each event against the timeout. */
static void prepare(wk_ctx *ctx, es_event *const *evs, size_t n)
{
    wk_prefetch_clear();
    if (g_delay_ms <= 0)
        wk_plan_prepare(ctx, &k_plan, evs, n);
}

static wk_result handle_stock_reserved(wk_ctx *ctx, const es_event *ev)
{
    return wk_plan_handle(ctx, &k_plan, ev);
}

static const wk_handler k_handlers[] = {
    {CM_EV_STOCK_RESERVED, handle_stock_reserved},
};

const wk_def wk_order_creation = {
    .id = CM_W_ORDER_CREATION,
    .handlers = k_handlers,
    .nhandlers = sizeof k_handlers / sizeof k_handlers[0],
    .opts = k_opts,
    .prepare = prepare,
};
