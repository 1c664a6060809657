/* stock_reservation.c - the stock-reservation worker (group choreo-reservation).
 *
 * On CheckoutInitiated it reserves every line of the checkout or none, as an
 * outcome. Products live in their own Redis Cluster slots, so each line is
 * its own idempotent step in its product's slot (lua/line.lua hold: the
 * line's mark and the stock move together; `available` never goes below
 * zero, so concurrent checkouts never oversell). Then, in the checkout's
 * slot:
 *  - every line held: lua/reserve.lua records the reservation (state held)
 *    and appends StockReserved;
 *  - a line refused (short, or a product missing from the catalog at this
 *    stage: deleted after the intake accepted the checkout): the lines this
 *    worker held are undone (held -> undone, a state of its own, so the
 *    compensation that follows can tell it released nothing) and
 *    StockReservationFailed {reason: insufficient_stock, product_id} is
 *    appended (with "detail": "unknown_product" for a missing product);
 *  - a line already settled by compensation (void: the saga timed out before
 *    this line was held; released: after): the saga moved on without this
 *    worker; compensation owns every line, nothing is appended.
 * A batch runs in three round trips whatever its size (saga.h, prefetch):
 * every line of every checkout, then the reserve scripts and the undos,
 * then the failure appends.
 *
 * Redelivery at any point converges: each line's mark answers the same
 * (held stays held, a refusal stays refused), so the decision is the same,
 * and the append is a "dup" (or a "conflict" when the saga moved on). */
#include "workers/lua/scripts.h"
#include "common/clock.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int64_t g_resv_ttl_s;

static const cm_opt k_opts[] = {
    {"reservation-ttl-s", "RESERVATION_TTL_S", CM_OPT_INT, &g_resv_ttl_s, "604800", 0, 315360000,
     "lifetime of a refused or undone line mark (0: kept); a held one lives until settled"},
    {0},
};

/* Where a checkout's reservation went, decided from its lines' marks. */
enum decision {
    D_EREDIS,    /* a call failed: retry (the fail reason says why) */
    D_RESERVE,   /* every line held: record and append StockReserved */
    D_FAIL,      /* a line refused: undo the held ones, append StockReservationFailed */
    D_MOVED,     /* compensation settled a line first: the saga moved on */
};

/* What reserving one CheckoutInitiated takes and what came of it. */
typedef struct plan {
    wk_lines lines;
    wk_step s;                       /* StockReserved */
    wk_step f;                       /* StockReservationFailed (D_FAIL) */
    wk_line_res res[WK_SAGA_MAX_LINES];
    enum decision d;
    const char *product;             /* D_FAIL: the line named in the failure */
    bool unknown;                    /* D_FAIL: that product is not in the catalog */
    bool fresh;                      /* some line was held by this run */
    wk_outcome rc;                   /* the reserve script's or the failure append's outcome */
    wk_step_out o;
    int idx;                         /* the current phase's call in the pipe */
    size_t at[WK_SAGA_MAX_LINES];    /* each line's index in the phase's wk_line_set */
} plan;

static void plan_free(void *vp)
{
    plan *p = vp;
    wk_step_free(&p->s);
    wk_step_free(&p->f);
    free(p);
}

/* Validates ev and builds its StockReserved step into p. Returns WK_ACK, or
 * WK_DEAD after setting the fail reason (the event can never be reserved). */
static wk_result plan_make(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    if (!wk_saga_checkout(ctx, ev))
        return WK_DEAD;
    if (ev->seq != 1) {
        wk_fail_reason(ctx, "CheckoutInitiated at seq %lld: a checkout starts once", (long long)ev->seq);
        return WK_DEAD;
    }
    const char *client = es_event_data_str(ev, "client_id");
    json_t *items = json_object_get(ev->data, "items");
    char err[160];
    if (!client || wk_lines_parse(items, &p->lines, err, sizeof err) != 0) {
        wk_fail_reason(ctx, "CheckoutInitiated data: %s", client ? err : "no client_id");
        return WK_DEAD;
    }
    /* StockReserved carries the initiated lines as they were, plus the total
     * so order creation needs no history read. */
    wk_step_init(&p->s, ev, cm_worker_names[CM_W_STOCK_RESERVATION]);
    wk_step_add(&p->s, CM_EV_STOCK_RESERVED,
                json_pack("{s:s, s:O, s:I}", "client_id", client, "items", items, "total_cents",
                          checkout_total(ev)));
    return WK_ACK;
}

/* Decides p from its lines' marks (all taken). The first refused line, in
 * the checkout's order, is the one the failure names, so every delivery
 * names the same. */
static void decide(plan *p)
{
    bool gone = false;
    const char *undone = NULL;
    p->d = D_RESERVE;
    p->product = NULL;
    p->fresh = false;
    for (size_t i = 0; i < p->lines.n; i++) {
        const wk_line_res *r = &p->res[i];
        p->fresh |= r->changed && r->mark == WK_MARK_HELD;
        if ((r->mark == WK_MARK_SHORT || r->mark == WK_MARK_UNKNOWN) && !p->product) {
            p->product = p->lines.v[i].product_id;
            p->unknown = r->mark == WK_MARK_UNKNOWN;
        } else if (r->mark == WK_MARK_UNDONE && !undone) {
            undone = p->lines.v[i].product_id;   /* an earlier delivery's undo */
        } else if (r->mark == WK_MARK_VOID || r->mark == WK_MARK_RELEASED || r->mark == WK_MARK_NONE) {
            gone = true;
        }
    }
    if (!p->product && undone) {
        p->product = undone;   /* its refusal expired; the undo tells the outcome */
        p->unknown = false;
    }
    if (p->product) {
        p->d = D_FAIL;
        wk_step_init(&p->f, p->s.cause, cm_worker_names[CM_W_STOCK_RESERVATION]);
        json_t *data =
            json_pack("{s:s, s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK, "product_id", p->product);
        if (p->unknown)
            json_object_set_new(data, "detail", json_string("unknown_product"));
        wk_step_add(&p->f, CM_EV_STOCK_RESERVATION_FAILED, data);
    } else if (gone) {
        p->d = D_MOVED;
    }
}

/* Runs the plans together, one round trip per phase: (1) hold every line,
 * (2) record the reservations whose lines are all held and undo the held
 * lines of the refused ones, (3) append the failures. Each plan ends with
 * its decision and, unless D_EREDIS or D_MOVED, its append's outcome. */
static void run(wk_ctx *ctx, void *const *ps, size_t n)
{
    cm_pipe *pipe = cm_pipe_new(wk_cluster(ctx));
    wk_line_set *ls = wk_line_set_new();
    for (size_t k = 0; k < n; k++) {   /* phase 1: hold */
        plan *p = ps[k];
        wk_step_free(&p->f);
        for (size_t i = 0; i < p->lines.n; i++)
            p->at[i] = wk_line_set_add(ls, WK_LINE_HOLD, p->s.cause->aggregate_id, &p->lines.v[i]);
    }
    wk_line_set_exec(ctx, ls, pipe, g_resv_ttl_s);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        bool ok = true;
        for (size_t i = 0; i < p->lines.n; i++)
            ok = wk_line_set_res(ls, p->at[i], &p->res[i]) == 0 && ok;
        if (ok)
            decide(p);
        else
            p->d = D_EREDIS;
    }

    cm_pipe_reset(pipe);   /* phase 2: record, or undo what is held */
    wk_line_set_free(ls);
    ls = wk_line_set_new();
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        p->idx = -1;
        if (p->d == D_RESERVE)
            p->idx = wk_script_reserve_queue(ctx, pipe, &p->s, p->s.cause->aggregate_id, &p->lines);
        for (size_t i = 0; p->d == D_FAIL && i < p->lines.n; i++)
            if (p->res[i].mark == WK_MARK_HELD)
                p->at[i] = wk_line_set_add(ls, WK_LINE_UNDO, p->s.cause->aggregate_id, &p->lines.v[i]);
    }
    wk_line_set_exec(ctx, ls, pipe, g_resv_ttl_s);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (p->d == D_RESERVE)
            p->rc = wk_script_reserve_take(ctx, pipe, p->idx, &p->s, &p->o);
        for (size_t i = 0; p->d == D_FAIL && i < p->lines.n; i++) {
            wk_line_res u;
            if (p->res[i].mark == WK_MARK_HELD && wk_line_set_res(ls, p->at[i], &u) != 0)
                p->d = D_EREDIS;   /* the failure is appended only once every hold is undone */
        }
    }
    wk_line_set_free(ls);

    cm_pipe_reset(pipe);   /* phase 3: the failures */
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (p->d == D_FAIL)
            p->idx = wk_step_append_queue(ctx, pipe, &p->f);
    }
    wk_pipe_exec(ctx, pipe);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (p->d == D_FAIL)
            p->rc = wk_step_take(ctx, pipe, p->idx, &p->f, wk_no_refusals, &p->o);
    }
    cm_pipe_free(pipe);
}

/* True when cause's saga has ended (read from its history); false also
 * when the history cannot be read. */
static bool saga_ended(wk_ctx *ctx, const es_event *cause)
{
    es_event **evs = NULL;
    size_t n = 0;
    bool ended = false;
    if (es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, cause->aggregate_id, &evs, &n) == ES_OK) {
        es_checkout_state st;
        es_checkout_fold(evs, n, &st);
        ended = st.terminal;
    }
    es_events_free(evs, n);
    return ended;
}

/* Undoes the lines this run held afresh (a late delivery's: see below).
 * Returns WK_ACK, or WK_RETRY with the fail reason set. */
static wk_result undo_fresh(wk_ctx *ctx, const es_event *ev, const plan *p)
{
    wk_lines fresh = {.n = 0};
    for (size_t i = 0; i < p->lines.n; i++)
        if (p->res[i].changed && p->res[i].mark == WK_MARK_HELD)
            fresh.v[fresh.n++] = p->lines.v[i];
    wk_line_res res[WK_SAGA_MAX_LINES];
    if (fresh.n && wk_line_run(ctx, WK_LINE_UNDO, ev->aggregate_id, &fresh, g_resv_ttl_s, res) != 0)
        return WK_RETRY;
    cm_logx(CM_WARN, ev->aggregate_id, ev->event_id, NULL,
            "late redelivery held %zu lines of a settled reservation (their marks had expired): undone", fresh.n);
    return WK_ACK;
}

/* StockReserved lost to a timeout: compensation releases every line held
 * before it ran and voids the others, so nothing stays held. Only a hold
 * made after the saga ended (its void marks had expired: a delivery later
 * than RESERVATION_TTL_S) would; it is undone here. */
static wk_result reserve_conflict(wk_ctx *ctx, const es_event *ev, plan *p)
{
    wk_result out = wk_saga_moved(ctx, ev, "reserve");
    if (out != WK_ACK || !p->fresh || !saga_ended(ctx, ev))
        return out;
    return undo_fresh(ctx, ev, p);
}

/* StockReserved was already in the history, yet this run held lines afresh:
 * either this run's own append was resent after a broken connection (the
 * holds are the saga's), or the saga's marks had expired, which takes
 * RESERVATION_TTL_S after the checkout began; then, once the saga ended,
 * its stock was settled and these holds are orphans. */
static wk_result reserve_dup_fresh(wk_ctx *ctx, const es_event *ev, plan *p)
{
    if (g_resv_ttl_s <= 0 || cm_wall_s() - ev->emitted_at <= (double)g_resv_ttl_s || !saga_ended(ctx, ev))
        return WK_ACK;
    return undo_fresh(ctx, ev, p);
}

/* Acts on what run found for ev. */
static wk_result act(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    const char *checkout = ev->aggregate_id;
    wk_result out = WK_RETRY;
    switch (p->d) {
    case D_RESERVE:
        if (p->rc == WK_OUT_APPENDED) {
            wk_saga_count(ctx, &p->s, &p->o.res);
            cm_logx(CM_INFO, checkout, ev->event_id, NULL, "reserved %zu products%s", p->lines.n,
                    p->o.res.duplicate ? " (already reserved)" : "");
            out = p->o.res.duplicate && p->fresh ? reserve_dup_fresh(ctx, ev, p) : WK_ACK;
        } else if (p->rc == WK_OUT_CONFLICT) {
            out = reserve_conflict(ctx, ev, p);
        } else if (p->rc == WK_OUT_EXISTS) {
            /* A reservation without StockReserved in this history: a second
             * CheckoutInitiated for the same checkout. Never reserve twice. */
            wk_fail_reason(ctx, "checkout %s already has a reservation (state %s)", checkout, p->o.arg);
            out = WK_DEAD;
        }
        break;
    case D_FAIL:
        if (p->rc == WK_OUT_APPENDED) {
            wk_saga_count(ctx, &p->f, &p->o.res);
            const char *kv[] = {"product_id", p->product, NULL};
            cm_logx(CM_INFO, checkout, ev->event_id, kv, "stock reservation failed (%s)%s",
                    p->unknown ? "unknown product" : "insufficient stock",
                    p->o.res.duplicate ? " (already recorded)" : "");
            out = WK_ACK;
        } else if (p->rc == WK_OUT_CONFLICT) {
            out = wk_saga_moved(ctx, ev, "reservation-failed");
        }
        break;
    case D_MOVED:
        /* compensation settled a line before this worker held it */
        out = wk_saga_moved(ctx, ev, "reserve");
        break;
    case D_EREDIS:
        break;
    }
    return out;
}

static bool wants(const es_event *ev)
{
    return ev->kind == CM_EV_CHECKOUT_INITIATED;
}

static bool failed(const void *p)
{
    return ((const plan *)p)->d == D_EREDIS;
}

static const wk_plan_def k_plan = {
    .size = sizeof(plan), .wants = wants, .make = plan_make, .run = run, .failed = failed, .act = act,
    .free = plan_free,
};

/* The batch's reservations run together (saga.h, prefetch); each handler
 * then finds its plan with the outcome. */
static void prepare(wk_ctx *ctx, es_event *const *evs, size_t n)
{
    wk_prefetch_clear();
    wk_plan_prepare(ctx, &k_plan, evs, n);
}

static wk_result handle_checkout_initiated(wk_ctx *ctx, const es_event *ev)
{
    return wk_plan_handle(ctx, &k_plan, ev);
}

static const wk_handler k_handlers[] = {
    {CM_EV_CHECKOUT_INITIATED, handle_checkout_initiated},
};

const wk_def wk_stock_reservation = {
    .id = CM_W_STOCK_RESERVATION,
    .handlers = k_handlers,
    .nhandlers = sizeof k_handlers / sizeof k_handlers[0],
    .opts = k_opts,
    .prepare = prepare,
};
