/* stock_compensation.c - the stock-compensation worker (group
 * choreo-compensation): ends failed sagas, and owns the saga timeout.
 *
 * Compensation. On StockReservationFailed, OrderCreationFailed or
 * CheckoutTimedOut it reads the checkout's lines (its CheckoutInitiated in
 * the history) and releases each in its product's slot (lua/line.lua
 * release: a held line goes back to available and is marked released; a
 * line with no mark is marked void, so a reservation still in flight can
 * never hold it afterwards; refused or undone lines stay as they are). Then
 * lua/release.lua, in the checkout's slot, appends StockReleased {the
 * released lines} + CheckoutFailed {reason} when some line is released
 * (by this compensation, now or on an earlier delivery), CheckoutFailed alone
 * otherwise, marks a held reservation record released and takes the saga
 * out of the timeout set. The reason is the cause: insufficient_stock, the
 * order failure's reason, or timed_out. The append names the failure
 * event's seq and derives its ids from it, so a redelivery is a "dup"; the
 * marks make its releases no-ops and its StockReleased the same.
 *
 * Timeout. On CheckoutInitiated it records the saga in the zset
 * chorus:saga:started (ZADD NX, scored by emitted_at in ms). Every
 * TICK_MS the tick takes up to TICK_BATCH sagas older than SAGA_TIMEOUT_MS,
 * folds each one's history and, unless it ended or is already failing,
 * appends CheckoutTimedOut {after_ms} naming the version it read; that event
 * comes back through the group and is compensated like any failure. The
 * scripts that end a saga remove it from the zset.
 *
 * Why a checkout never gets two terminal events: every step appends naming
 * the version it reacted to, so of a timeout and a step racing from the same
 * version only the first append lands; the other conflicts, writes nothing,
 * and re-reads the history (the step stands down; the tick decides again on
 * its next run). In particular an order is never created after the timeout:
 * order creation names StockReserved's seq, which the timeout has moved past,
 * and it sells the lines only after its append landed. The stock follows the
 * history's decision: a timeout racing the reservation is compensated line
 * by line, and each line's step is atomic in its slot, so each line is
 * either held first (then released here) or voided first (then never held);
 * the reservation's StockReserved conflicts either way. */
#include "workers/lua/scripts.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 200
#define TICK_BATCH 100

static int64_t g_timeout_ms;
static int64_t g_resv_ttl_s;

static const cm_opt k_opts[] = {
    {"saga-timeout-ms", "SAGA_TIMEOUT_MS", CM_OPT_INT, &g_timeout_ms, "30000", 1, 86400000,
     "a saga with no terminal event after this long gets CheckoutTimedOut"},
    {"reservation-ttl-s", "RESERVATION_TTL_S", CM_OPT_INT, &g_resv_ttl_s, "604800", 0, 315360000,
     "lifetime of a released reservation hash (0: kept); its saga has ended"},
    {0},
};

/* The plan of a CheckoutInitiated recorded by prepare's batched ZADD. */
static char k_recorded;

/* True for a CheckoutInitiated of a well-formed checkout (what the batched
 * ZADD takes; anything else goes to its handler alone). */
static bool recordable(const es_event *ev)
{
    return ev->kind == CM_EV_CHECKOUT_INITIATED && ev->aggregate && !strcmp(ev->aggregate, "checkout") &&
           ev->aggregate_id && cm_id_valid(ev->aggregate_id, strlen(ev->aggregate_id), 64);
}

/* Records every new saga of the batch in the timeout set with one ZADD
 * instead of one per event; their handlers then have nothing left to do. */
static void record_started(wk_ctx *ctx, es_event *const *evs, size_t n)
{
    /* a batch comes from one partition's stream: one ZADD to its set (an
     * event of another partition is left to its handler) */
    int part = -1;
    for (size_t i = 0; i < n && part < 0; i++)
        if (recordable(evs[i]))
            part = cm_partition_of(evs[i]->aggregate_id);
    cm_argv a = {0};
    cm_argv_adds(&a, "ZADD");
    cm_argv_adds(&a, cm_key_saga_started(part < 0 ? 0 : part).s);
    cm_argv_adds(&a, "NX");
    for (size_t i = 0; i < n; i++) {
        if (!recordable(evs[i]) || cm_partition_of(evs[i]->aggregate_id) != part)
            continue;   /* its handler decides, alone */
        cm_argv_addll(&a, (long long)(evs[i]->emitted_at * 1000.0));
        cm_argv_adds(&a, evs[i]->aggregate_id);
    }
    if (a.n > 3) {
        redisReply *r = cm_cluster_argv(wk_cluster(ctx), cm_argv_slot(&a, 1), &a);
        if (r && r->type != REDIS_REPLY_ERROR)   /* on failure each handler tries alone */
            for (size_t i = 0; i < n; i++)
                if (recordable(evs[i]) && cm_partition_of(evs[i]->aggregate_id) == part)
                    wk_prefetch_note(evs[i], &k_recorded, NULL);
        if (r)
            freeReplyObject(r);
    }
    cm_argv_free(&a);
}

static wk_result handle_checkout_initiated(wk_ctx *ctx, const es_event *ev)
{
    if (wk_prefetch_plan(ev) == &k_recorded)
        return WK_ACK;
    const char *checkout = wk_saga_checkout(ctx, ev);
    if (!checkout)
        return WK_DEAD;
    cm_key started = cm_key_saga_started(cm_partition_of(checkout));
    redisReply *r = cm_cluster_command(wk_cluster(ctx), cm_key_slot(started.s, strlen(started.s)),
                                       "ZADD %s NX %lld %s", started.s, (long long)(ev->emitted_at * 1000.0),
                                       checkout);
    wk_result out = WK_ACK;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        wk_fail_reason(ctx, "ZADD saga start: %s", r ? r->str : cm_cluster_errstr(wk_cluster(ctx)));
        out = WK_RETRY;
    }
    if (r)
        freeReplyObject(r);
    return out;
}

/* Reads the lines of cause's checkout from its CheckoutInitiated (the first
 * event of its history) into lines (none when it has no valid items: then
 * nothing can have been held). Returns 0, -1 on a Redis error (retry), -2
 * when the history does not hold cause (WK_DEAD). */
static int read_lines(wk_ctx *ctx, const es_event *cause, wk_lines *lines)
{
    lines->n = 0;
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, cause->aggregate_id, &evs, &n);
    if (rc == ES_EREDIS) {
        wk_fail_reason(ctx, "history read: %s", es_store_errstr(wk_store(ctx)));
        return -1;
    }
    int out = 0;
    if (rc != ES_OK || (int64_t)n < cause->seq || strcmp(evs[cause->seq - 1]->event_id, cause->event_id)) {
        wk_fail_reason(ctx, "history of %s does not hold %s at seq %lld", cause->aggregate_id, cause->event_id,
                       (long long)cause->seq);
        out = -2;
    } else if (evs[0]->kind == CM_EV_CHECKOUT_INITIATED) {
        char err[160];
        if (wk_lines_parse(json_object_get(evs[0]->data, "items"), lines, err, sizeof err) != 0)
            lines->n = 0;   /* never reservable: nothing held */
    }
    es_events_free(evs, n);
    return out;
}

/* What compensating one failure event takes and what came of it. */
typedef struct plan {
    const es_event *ev;               /* borrowed: the failure event */
    const char *reason;               /* CheckoutFailed's reason */
    int st;                           /* 0 ok so far, -1 retry, -2 never possible (fail reason set) */
    wk_lines lines;                   /* the checkout's lines */
    wk_line_res res[WK_SAGA_MAX_LINES];
    size_t at[WK_SAGA_MAX_LINES];     /* each line's index in the releases' wk_line_set */
    wk_lines released;                /* the lines released by compensation, with their quantities */
    wk_step s;                        /* [StockReleased +] CheckoutFailed */
    int idx;
    wk_outcome rc;
    wk_step_out o;
} plan;

static void plan_free(void *p)
{
    wk_step_free(&((plan *)p)->s);
    free(p);
}

/* Checks ev and reads its lines into p. Returns WK_ACK, or WK_DEAD when ev
 * can never be compensated / WK_RETRY on a Redis error, the fail reason set. */
static wk_result plan_make(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    p->ev = ev;
    p->st = -2;
    if (!wk_saga_checkout(ctx, ev))
        return WK_DEAD;
    if (!(p->reason = wk_saga_failure_reason(ev))) {
        wk_fail_reason(ctx, "%s names no known failure reason", ev->type);
        return WK_DEAD;
    }
    p->st = read_lines(ctx, ev, &p->lines);
    return p->st == 0 ? WK_ACK : p->st == -1 ? WK_RETRY : WK_DEAD;
}

/* Runs the plans together, one round trip per phase: (1) release every
 * line of every checkout, (2) the release scripts. */
static void run(wk_ctx *ctx, void *const *ps, size_t n)
{
    cm_pipe *pipe = cm_pipe_new(wk_cluster(ctx));
    wk_line_set *ls = wk_line_set_new();
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        for (size_t i = 0; p->st == 0 && i < p->lines.n; i++)
            p->at[i] = wk_line_set_add(ls, WK_LINE_RELEASE, p->ev->aggregate_id, &p->lines.v[i]);
    }
    wk_line_set_exec(ctx, ls, pipe, g_resv_ttl_s);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        p->released.n = 0;
        for (size_t i = 0; p->st == 0 && i < p->lines.n; i++) {
            if (wk_line_set_res(ls, p->at[i], &p->res[i]) != 0)
                p->st = -1;
            else if (p->res[i].mark == WK_MARK_RELEASED) {
                p->released.v[p->released.n] = p->lines.v[i];
                p->released.v[p->released.n++].qty = p->res[i].qty;
            }
        }
    }
    wk_line_set_free(ls);

    cm_pipe_reset(pipe);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (p->st != 0)
            continue;
        wk_step_free(&p->s);
        wk_step_init(&p->s, p->ev, cm_worker_names[CM_W_STOCK_COMPENSATION]);
        if (p->released.n)
            wk_step_add(&p->s, CM_EV_STOCK_RELEASED, json_pack("{s:o}", "items", wk_lines_json(&p->released)));
        wk_step_add(&p->s, CM_EV_CHECKOUT_FAILED, json_pack("{s:s}", "reason", p->reason));
        p->idx = wk_script_release_queue(ctx, pipe, &p->s, p->ev->aggregate_id, p->released.n > 0, g_resv_ttl_s);
    }
    wk_pipe_exec(ctx, pipe);
    for (size_t k = 0; k < n; k++) {
        plan *p = ps[k];
        if (p->st == 0)
            p->rc = wk_script_release_take(ctx, pipe, p->idx, &p->s, &p->o);
    }
    cm_pipe_free(pipe);
}

static bool is_failure(const es_event *ev)
{
    return ev->kind == CM_EV_STOCK_RESERVATION_FAILED || ev->kind == CM_EV_ORDER_CREATION_FAILED ||
           ev->kind == CM_EV_CHECKOUT_TIMED_OUT;
}

/* Acts on what run found for ev. */
static wk_result act(wk_ctx *ctx, const es_event *ev, void *vp)
{
    plan *p = vp;
    if (p->st != 0)
        return WK_RETRY;
    const char *checkout = ev->aggregate_id;
    switch (p->rc) {
    case WK_OUT_APPENDED: {
        wk_saga_count(ctx, &p->s, &p->o.res);
        const char *kv[] = {"reason", p->reason, NULL};
        cm_logx(CM_INFO, checkout, ev->event_id, kv, "checkout failed%s%s",
                p->released.n ? ", reservation released" : ", nothing held",
                p->o.res.duplicate ? " (already recorded)" : "");
        return WK_ACK;
    }
    case WK_OUT_CONFLICT:
        return wk_saga_moved(ctx, ev, "compensate");
    case WK_OUT_CHANGED:
        /* a held record means every line was held before any compensation */
        wk_fail_reason(ctx, "reservation of %s is held but none of its lines was released", checkout);
        return WK_DEAD;
    default:
        return WK_RETRY;
    }
}

static bool failed(const void *p)
{
    return ((const plan *)p)->st != 0 || ((const plan *)p)->rc == WK_OUT_EREDIS;
}

/* A failed one is planned anew: its lines are read again. */
static const wk_plan_def k_plan = {
    .size = sizeof(plan), .wants = is_failure, .make = plan_make, .run = run, .failed = failed, .remake = true,
    .act = act, .free = plan_free,
};

/* Records every new saga of the batch in the timeout set with one ZADD
 * instead of one per event (their handlers then have nothing left to do),
 * and compensates the batch's failures together (saga.h, prefetch). */
static void prepare(wk_ctx *ctx, es_event *const *evs, size_t n)
{
    wk_prefetch_clear();
    record_started(ctx, evs, n);
    wk_plan_prepare(ctx, &k_plan, evs, n);
}

static wk_result compensate(wk_ctx *ctx, const es_event *ev)
{
    return wk_plan_handle(ctx, &k_plan, ev);
}

/* Decides the timeout of one expired saga. Returns true when it should leave
 * the zset (ended, failing, timed out now, or unknown). */
static bool timeout_one(wk_ctx *ctx, const char *checkout, int64_t age_ms)
{
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, checkout, &evs, &n);
    if (rc == ES_EREDIS)
        return false;
    if (rc != ES_OK || n == 0) {
        cm_logx(CM_WARN, checkout, NULL, NULL, "saga timeout: history %s; dropped from the timeout set",
                rc != ES_OK ? "unreadable" : "missing");
        es_events_free(evs, n);
        return true;
    }
    es_checkout_state st;
    es_checkout_fold(evs, n, &st);
    bool done = true;
    if (!st.terminal && !st.failing) {
        wk_step s;
        wk_step_init(&s, evs[n - 1], cm_worker_names[CM_W_STOCK_COMPENSATION]);
        s.expected = st.version;
        wk_step_add(&s, CM_EV_CHECKOUT_TIMED_OUT, json_pack("{s:I}", "after_ms", (json_int_t)age_ms));
        es_append_res res;
        int arc = wk_step_append(ctx, &s, &res);
        if (arc == WK_STEP_OK) {
            wk_saga_count(ctx, &s, &res);
            char v[24];
            snprintf(v, sizeof v, "%lld", (long long)st.version);
            const char *kv[] = {"version", v, "status", st.status, NULL};
            cm_logx(CM_INFO, checkout, s.ids[0], kv, "saga timed out after %lld ms", (long long)age_ms);
        } else {
            /* A step moved the saga meanwhile (or Redis failed): decide again
             * on the next tick. */
            done = false;
        }
        wk_step_free(&s);
    }
    es_events_free(evs, n);
    return done;
}

/* The expired sagas of partition p's timeout set. */
static void timeout_partition(wk_ctx *ctx, int p)
{
    cm_cluster *cc = wk_cluster(ctx);
    int64_t now = cm_wall_ms();
    cm_key started_key = cm_key_saga_started(p);
    int slot = cm_key_slot(started_key.s, strlen(started_key.s));
    redisReply *r = cm_cluster_command(cc, slot, "ZRANGEBYSCORE %s -inf %lld WITHSCORES LIMIT 0 %d", started_key.s,
                                       (long long)(now - g_timeout_ms), TICK_BATCH);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        /* a master down or frozen: each tick would say it again */
        cm_log_limited(CM_WARN, "wk-saga-timeout-read", "saga timeout: ZRANGEBYSCORE: %s",
                       r ? r->str : cm_cluster_errstr(cc));
        if (r)
            freeReplyObject(r);
        return;
    }
    cm_argv done = {0};
    cm_argv_adds(&done, "ZREM");
    cm_argv_adds(&done, started_key.s);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements && !wk_stopping(ctx); i += 2) {
        const redisReply *id = r->element[i];
        if (!cm_reply_is_str(id))
            continue;
        int64_t started = (int64_t)cm_reply_ll(r->element[i + 1], now);
        if (timeout_one(ctx, id->str, now - started))
            cm_argv_add(&done, id->str, id->len);
    }
    freeReplyObject(r);
    if (done.n > 2) {
        redisReply *z = cm_cluster_argv(cc, slot, &done);
        if (!z || z->type == REDIS_REPLY_ERROR)
            cm_log(CM_WARN, "saga timeout: ZREM: %s", z ? z->str : cm_cluster_errstr(cc));
        if (z)
            freeReplyObject(z);
    }
    cm_argv_free(&done);
}

static void timeout_tick(wk_ctx *ctx)
{
    for (int p = 0; p < cm_partitions() && !wk_stopping(ctx); p++)
        timeout_partition(ctx, p);
}

static const wk_handler k_handlers[] = {
    {CM_EV_CHECKOUT_INITIATED, handle_checkout_initiated},
    {CM_EV_STOCK_RESERVATION_FAILED, compensate},
    {CM_EV_ORDER_CREATION_FAILED, compensate},
    {CM_EV_CHECKOUT_TIMED_OUT, compensate},
};

const wk_def wk_stock_compensation = {
    .id = CM_W_STOCK_COMPENSATION,
    .handlers = k_handlers,
    .nhandlers = sizeof k_handlers / sizeof k_handlers[0],
    .opts = k_opts,
    .prepare = prepare,
    .tick = timeout_tick,
    .tick_ms = TICK_MS,
};
