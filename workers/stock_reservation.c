/* stock_reservation.c - the stock-reservation worker (group choreo-reservation).
 *
 * On CheckoutInitiated it reserves every line of the checkout or none:
 * lua/reserve.lua checks each product's `available` against the summed
 * quantities and, only when all suffice, moves them to `reserved`, records
 * the reservation hash (state held) and appends StockReserved, all in one
 * script. Redis runs scripts one at a time, so concurrent checkouts can never
 * oversell and `available` never goes below zero.
 *
 * When a line cannot be reserved, the script writes nothing and this worker
 * appends StockReservationFailed {reason: insufficient_stock, product_id}. A
 * product missing from the catalog at this stage (deleted after the intake
 * accepted the checkout) fails the same way, with "detail": "unknown_product".
 *
 * A redelivered CheckoutInitiated finds StockReserved's derived id in the
 * history ("dup") or, if the failure was appended, a newer version
 * ("conflict"); either way nothing is reserved twice. */
#include "workers/lua/scripts.h"
#include "common/log.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends StockReservationFailed for product_id (no effect to combine). */
static wk_result reservation_failed(wk_ctx *ctx, const es_event *ev, const char *product_id, bool unknown)
{
    wk_step s;
    wk_step_init(&s, ev, cm_worker_names[CM_W_STOCK_RESERVATION]);
    json_t *data = json_pack("{s:s, s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK, "product_id", product_id);
    if (unknown)
        json_object_set_new(data, "detail", json_string("unknown_product"));
    wk_step_add(&s, CM_EV_STOCK_RESERVATION_FAILED, data);
    es_append_res res;
    int rc = wk_step_append(ctx, &s, &res);
    wk_result out = WK_RETRY;
    if (rc == WK_STEP_OK) {
        wk_saga_count(ctx, &s, &res);
        const char *kv[] = {"product_id", product_id, NULL};
        cm_logx(CM_INFO, ev->aggregate_id, ev->event_id, kv, "stock reservation failed (%s)%s",
                unknown ? "unknown product" : "insufficient stock", res.duplicate ? " (already recorded)" : "");
        out = WK_ACK;
    } else if (rc == WK_STEP_CONFLICT) {
        out = wk_saga_moved(ctx, ev, "reservation-failed");
    }
    wk_step_free(&s);
    return out;
}

/* The total of a checkout: data.total_cents, or the sum of its lines' prices. */
static json_int_t checkout_total(const es_event *ev)
{
    json_t *t = json_object_get(ev->data, "total_cents");
    if (json_is_integer(t))
        return json_integer_value(t);
    json_int_t sum = 0;
    size_t i;
    json_t *line;
    json_array_foreach(json_object_get(ev->data, "items"), i, line) {
        json_t *q = json_object_get(line, "quantity"), *p = json_object_get(line, "unit_price_cents");
        if (json_is_integer(q) && json_is_integer(p))
            sum += json_integer_value(q) * json_integer_value(p);
    }
    return sum;
}

/* What reserving one CheckoutInitiated takes: its lines and its step. */
typedef struct plan {
    wk_lines lines;
    wk_step s;
} plan;

static void plan_free(void *p)
{
    wk_step_free(&((plan *)p)->s);
    free(p);
}

/* Validates ev and builds its StockReserved step into p. Returns false after
 * setting the fail reason (the event can never be reserved: WK_DEAD). */
static bool plan_make(wk_ctx *ctx, const es_event *ev, plan *p)
{
    if (!wk_saga_checkout(ctx, ev))
        return false;
    if (ev->seq != 1) {
        wk_fail_reason(ctx, "CheckoutInitiated at seq %lld: a checkout starts once", (long long)ev->seq);
        return false;
    }
    const char *client = es_event_data_str(ev, "client_id");
    json_t *items = json_object_get(ev->data, "items");
    char err[160];
    if (!client || wk_lines_parse(items, &p->lines, err, sizeof err) != 0) {
        wk_fail_reason(ctx, "CheckoutInitiated data: %s", client ? err : "no client_id");
        return false;
    }
    /* StockReserved carries the initiated lines as they were, plus the total
     * so order creation needs no history read. */
    wk_step_init(&p->s, ev, cm_worker_names[CM_W_STOCK_RESERVATION]);
    wk_step_add(&p->s, CM_EV_STOCK_RESERVED,
                json_pack("{s:s, s:O, s:I}", "client_id", client, "items", items, "total_cents",
                          checkout_total(ev)));
    return true;
}

/* The batch's reservations go to Redis in one round trip; each handler then
 * finds its reply (saga.h, prefetch). */
static void prepare(wk_ctx *ctx, es_event *const *evs, size_t n)
{
    wk_prefetch_clear();
    for (size_t i = 0; i < n; i++) {
        plan *p = cm_xcalloc(1, sizeof *p);
        if (evs[i]->kind != CM_EV_CHECKOUT_INITIATED || !plan_make(ctx, evs[i], p)) {
            free(p);   /* the handler decides again, alone */
            continue;
        }
        wk_script_reserve_prefetch(ctx, &p->s, evs[i]->aggregate_id, &p->lines, p, plan_free);
    }
    wk_prefetch_run(ctx);
}

static wk_result handle_checkout_initiated(wk_ctx *ctx, const es_event *ev)
{
    plan own, *p = wk_prefetch_plan(ev);
    if (!p) {
        if (!plan_make(ctx, ev, &own))
            return WK_DEAD;
        p = &own;
    }
    const char *checkout = ev->aggregate_id;
    wk_step_out o;
    wk_result out = WK_RETRY;
    wk_outcome rc = wk_script_reserve(ctx, &p->s, checkout, &p->lines, &o);
    switch (rc) {
    case WK_OUT_APPENDED:
        wk_saga_count(ctx, &p->s, &o.res);
        cm_logx(CM_INFO, checkout, ev->event_id, NULL, "reserved %zu products%s", p->lines.n,
                o.res.duplicate ? " (already reserved)" : "");
        out = WK_ACK;
        break;
    case WK_OUT_CONFLICT:
        out = wk_saga_moved(ctx, ev, "reserve");
        break;
    case WK_OUT_SHORT:
    case WK_OUT_UNKNOWN:
        out = reservation_failed(ctx, ev, o.arg, rc == WK_OUT_UNKNOWN);
        break;
    case WK_OUT_EXISTS:
        /* A reservation without StockReserved in this history: a second
         * CheckoutInitiated for the same checkout. Never reserve twice. */
        wk_fail_reason(ctx, "checkout %s already has a reservation (state %s)", checkout, o.arg);
        out = WK_DEAD;
        break;
    default:
        break;
    }
    if (p == &own)
        wk_step_free(&own.s);
    return out;
}

static const wk_handler k_handlers[] = {
    {CM_EV_CHECKOUT_INITIATED, handle_checkout_initiated},
};

const wk_def wk_stock_reservation = {
    .id = CM_W_STOCK_RESERVATION,
    .handlers = k_handlers,
    .nhandlers = sizeof k_handlers / sizeof k_handlers[0],
    .prepare = prepare,
};
