/* saga.c - helpers shared by the saga workers (see saga.h). */
#include "workers/saga.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wk_lines_parse(const json_t *items, wk_lines *out, char *err, size_t errlen)
{
    out->n = 0;
    if (!json_is_array(items) || json_array_size(items) == 0) {
        snprintf(err, errlen, "items must be a non-empty array");
        return -1;
    }
    if (json_array_size(items) > WK_SAGA_MAX_LINES) {
        snprintf(err, errlen, "more than %d lines", WK_SAGA_MAX_LINES);
        return -1;
    }
    size_t i;
    json_t *line;
    json_array_foreach(items, i, line) {
        json_t *pid = json_object_get(line, "product_id");
        json_t *qty = json_object_get(line, "quantity");
        if (!json_is_string(pid) ||
            !cm_id_valid(json_string_value(pid), json_string_length(pid), 64)) {
            snprintf(err, errlen, "line %zu: product_id must be 1..64 of [A-Za-z0-9_-]", i);
            return -1;
        }
        if (!json_is_integer(qty) || json_integer_value(qty) < 1 ||
            json_integer_value(qty) > WK_SAGA_MAX_QTY) {
            snprintf(err, errlen, "line %zu: quantity must be an integer in 1..%d", i, WK_SAGA_MAX_QTY);
            return -1;
        }
        const char *id = json_string_value(pid);
        size_t k = 0;
        while (k < out->n && strcmp(out->v[k].product_id, id) != 0)
            k++;
        if (k == out->n) {
            snprintf(out->v[k].product_id, sizeof out->v[k].product_id, "%s", id);
            out->v[k].qty = 0;
            out->n++;
        }
        out->v[k].qty += json_integer_value(qty);
        if (out->v[k].qty > WK_SAGA_MAX_QTY) {
            snprintf(err, errlen, "product %s: more than %d units", id, WK_SAGA_MAX_QTY);
            return -1;
        }
    }
    return 0;
}

json_t *wk_lines_json(const wk_lines *l)
{
    json_t *a = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(a, json_pack("{s:s, s:I}", "product_id", l->v[i].product_id, "quantity",
                                           (json_int_t)l->v[i].qty));
    return a;
}

void wk_step_init(wk_step *s, const es_event *cause, const char *producer)
{
    memset(s, 0, sizeof *s);
    s->cause = cause;
    s->producer = producer;
    s->expected = cause->seq;
}

void wk_step_add(wk_step *s, enum cm_event_type t, json_t *data)
{
    if (s->n >= WK_SAGA_MAX_STEP) { /* a programming error, never input */
        json_decref(data);
        return;
    }
    size_t i = s->n++;
    const char *type = cm_event_type_names[t];
    cm_uuid_derive(s->cause->event_id, type, s->ids[i]);
    s->data[i] = data;
    s->evs[i] = (es_new_event){
        .event_id = s->ids[i], .type = type, .causation_id = s->cause->event_id, .data = data};
}

void wk_step_free(wk_step *s)
{
    for (size_t i = 0; i < s->n; i++)
        json_decref(s->data[i]);
    s->n = 0;
}

static es_append_req step_req(const wk_step *s)
{
    return (es_append_req){
        .aggregate = WK_SAGA_AGGREGATE,
        .aggregate_id = s->cause->aggregate_id,
        .correlation_id = s->cause->aggregate_id,
        .producer = s->producer,
        .expected_version = s->expected,
        .events = s->evs,
        .n = s->n,
    };
}

/* True if r looks like an append result: an array led by ok/dup/conflict. */
static bool is_append_result(const redisReply *r)
{
    const redisReply *st = cm_reply_elem(r, 0);
    return cm_reply_is_str(st) &&
           (!strcmp(st->str, "ok") || !strcmp(st->str, "dup") || !strcmp(st->str, "conflict"));
}

/* Builds a step script's call: KEYS = history, bus, xkeys...; ARGV = the
 * step's append arguments, xargs... Returns the number of keys, or -1. */
static int step_call(wk_ctx *ctx, wk_step *s, const cm_argv *xkeys, const cm_argv *xargs, cm_argv *a)
{
    es_append_req req = step_req(s);
    es_append_keys(wk_store(ctx), WK_SAGA_AGGREGATE, s->cause->aggregate_id, a);
    for (int i = 0; xkeys && i < xkeys->n; i++)
        cm_argv_add(a, xkeys->v[i], xkeys->len[i]);
    int numkeys = a->n;
    if (es_append_args(&req, a) != ES_OK)
        return -1;
    for (int i = 0; xargs && i < xargs->n; i++)
        cm_argv_add(a, xargs->v[i], xargs->len[i]);
    return numkeys;
}

int wk_step_queue(wk_ctx *ctx, cm_pipe *p, cm_script *script, wk_step *s, const cm_argv *xkeys,
                  const cm_argv *xargs)
{
    cm_argv a = {0};
    int idx = -1;
    int numkeys = step_call(ctx, s, xkeys, xargs, &a);
    if (numkeys < 0) {
        wk_fail_reason(ctx, "invalid follow-up append");
    } else {
        idx = (int)cm_pipe_count(p);
        if (cm_pipe_script(p, script, numkeys, &a) != 0) {
            wk_fail_reason(ctx, "step script: %s", cm_cluster_errstr(wk_cluster(ctx)));
            idx = -1;
        }
    }
    cm_argv_free(&a);
    return idx;
}

/* On a Redis Cluster a phase writes to several masters (each line in its
 * product's slot, the saga's events in the checkout's), and the runner's
 * WAITs before acking come only after the whole batch. With
 * REDIS_WAIT_REPLICAS=N each master the phase wrote to must confirm N
 * replicas (WAIT on the connection the writes went through) before the saga
 * moves on: otherwise a failover to a replica that missed a hold or a sale
 * loses it while the follow-up events, on another master, survive. True
 * when confirmed or not asked (one server: replication keeps the master's
 * order, the runner's WAIT covers everything). */
static bool phase_replicated(wk_ctx *ctx, cm_pipe *p)
{
    enum { MAX_MASTERS = 64 };   /* masters WAITed per phase (a cluster past that: the first 64) */
    cm_cluster *cc = wk_cluster(ctx);
    long long want = wk_wait_replicas(ctx);
    if (want <= 0 || !cm_cluster_is_cluster(cc))
        return true;
    int slot[MAX_MASTERS], nm = 0;
    char addr[MAX_MASTERS][272];
    cm_redis_url *u = cm_xmalloc(sizeof *u);
    bool ok = true;
    for (size_t i = 0; ok && i < cm_pipe_count(p); i++) {
        int s = cm_pipe_slot(p, i);
        if (s < 0)
            continue;
        char a[272];
        ok = cm_cluster_slot_addr(cc, s, u) == 0;
        snprintf(a, sizeof a, "%s:%d", ok ? u->host : "", ok ? u->port : 0);
        int k = 0;
        while (k < nm && strcmp(addr[k], a) != 0)
            k++;
        if (ok && k == nm && nm < MAX_MASTERS) {
            slot[nm] = s;
            memcpy(addr[nm++], a, sizeof a);
        }
    }
    free(u);
    cm_pipe *w = cm_pipe_new(cc);
    for (int k = 0; ok && k < nm; k++)
        cm_pipe_command(w, slot[k], "WAIT %lld %lld", want, wk_wait_timeout_ms(ctx));
    long long got = want;
    if (ok && nm > 0 && cm_pipe_exec_blocking(w) != 0)   /* the saga tick runs as a best-effort job */
        got = -1;
    for (int k = 0; ok && got >= want && k < nm; k++) {
        redisReply *r = cm_pipe_take(w, (size_t)k);
        got = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        freeReplyObject(r);
    }
    cm_pipe_free(w);
    if (ok && got >= want)
        return true;
    wk_fail_reason(ctx, "redis: NOREPLICAS a step's writes were not confirmed by %lld replicas within %lld ms", want,
                   wk_wait_timeout_ms(ctx));
    cm_log_limited(CM_WARN, "wk-step-wait-short", "%s", "a step's writes on a master were not confirmed by "
                   "REDIS_WAIT_REPLICAS replicas in time: the step is retried");
    return false;
}

void wk_pipe_exec(wk_ctx *ctx, cm_pipe *p)
{
    if (cm_pipe_count(p) == 0)
        return;
    if (cm_pipe_exec(p) != 0)
        wk_fail_reason(ctx, "redis: %s", cm_cluster_errstr(wk_cluster(ctx)));
    else if (!phase_replicated(ctx, p))
        cm_pipe_reset(p);   /* no replies: every step of the phase is retried (each is idempotent) */
}

wk_outcome wk_step_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, const wk_refusal *refusals,
                        wk_step_out *out)
{
    char err[256];
    out->arg[0] = '\0';
    memset(&out->res, 0, sizeof out->res);
    if (idx < 0)
        return WK_OUT_EREDIS;   /* never queued: the reason is set */
    redisReply *r = cm_pipe_take(p, (size_t)idx);
    if (!r) {
        wk_fail_reason(ctx, "step script: redis: no reply (%s)", cm_cluster_errstr(wk_cluster(ctx)));
        return WK_OUT_EREDIS;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        wk_fail_reason(ctx, "step script: redis: %.200s", r->str);
        freeReplyObject(r);
        return WK_OUT_EREDIS;
    }
    wk_outcome rc = WK_OUT_EREDIS;
    if (is_append_result(r)) {
        int prc = es_append_parse(r, s->n, &out->res, err, sizeof err);
        if (prc == ES_ECONFLICT) {
            rc = WK_OUT_CONFLICT;
        } else if (prc != ES_OK) {
            wk_fail_reason(ctx, "step script: %s", err);
        } else {
            for (size_t i = 0; i < s->n; i++)
                snprintf(out->res.pos[i].event_id, sizeof out->res.pos[i].event_id, "%s", s->ids[i]);
            rc = WK_OUT_APPENDED;
        }
    } else {
        const redisReply *what = cm_reply_elem(r, 0), *arg = cm_reply_elem(r, 1);
        for (const wk_refusal *f = refusals; cm_reply_is_str(what) && f->name; f++)
            if (!strcmp(what->str, f->name)) {
                rc = f->out;
                snprintf(out->arg, sizeof out->arg, "%s", cm_reply_is_str(arg) ? arg->str : "");
                break;
            }
        if (rc == WK_OUT_EREDIS)
            wk_fail_reason(ctx, "step script: unknown answer %s", cm_reply_is_str(what) ? what->str : "?");
    }
    freeReplyObject(r);
    return rc;
}

/* ---- prefetch: a batch's plans, each handler takes its own ----
 * One worker per process, one batch at a time: a plain table does. */
typedef struct pf_item {
    char event_id[40];
    bool taken;
    void *plan;
    void (*plan_free)(void *);
} pf_item;

static struct {
    pf_item *v;
    size_t n, cap;
} g_pf;

void wk_prefetch_clear(void)
{
    for (size_t i = 0; i < g_pf.n; i++)
        if (g_pf.v[i].plan_free)
            g_pf.v[i].plan_free(g_pf.v[i].plan);
    g_pf.n = 0;
}

void wk_prefetch_note(const es_event *ev, void *plan, void (*plan_free)(void *))
{
    if (g_pf.n == g_pf.cap) {
        g_pf.cap = g_pf.cap ? 2 * g_pf.cap : 64;
        g_pf.v = cm_xrealloc(g_pf.v, g_pf.cap * sizeof *g_pf.v);
    }
    pf_item *it = &g_pf.v[g_pf.n++];
    memset(it, 0, sizeof *it);
    snprintf(it->event_id, sizeof it->event_id, "%s", ev->event_id);
    it->plan = plan;
    it->plan_free = plan_free;
}

void *wk_prefetch_plan(const es_event *ev)
{
    /* a batch may carry one event twice (a copied entry): one plan each */
    for (size_t i = 0; i < g_pf.n; i++)
        if (!g_pf.v[i].taken && !strcmp(g_pf.v[i].event_id, ev->event_id)) {
            g_pf.v[i].taken = true;
            return g_pf.v[i].plan;
        }
    return NULL;
}

void wk_plan_prepare(wk_ctx *ctx, const wk_plan_def *def, es_event *const *evs, size_t n)
{
    void **ps = cm_xcalloc(n ? n : 1, sizeof *ps);
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        if (!def->wants(evs[i]))
            continue;
        void *p = cm_xcalloc(1, def->size);
        if (def->make(ctx, evs[i], p) != WK_ACK) {
            def->free(p);   /* the handler decides again, alone */
            continue;
        }
        ps[np++] = p;
        wk_prefetch_note(evs[i], p, def->free);
    }
    if (np)
        def->run(ctx, ps, np);
    free(ps);
}

wk_result wk_plan_handle(wk_ctx *ctx, const wk_plan_def *def, const es_event *ev)
{
    void *own = NULL, *p = wk_prefetch_plan(ev);
    if (!p || def->failed(p)) {   /* not prefetched, or a call failed there: again, alone */
        if (!p || def->remake) {
            own = cm_xcalloc(1, def->size);
            wk_result rc = def->make(ctx, ev, own);
            if (rc != WK_ACK) {
                def->free(own);
                return rc;
            }
            p = own;
        }
        def->run(ctx, &p, 1);
    }
    wk_result out = def->act(ctx, ev, p);
    if (own)
        def->free(own);
    return out;
}

extern const char wk_lua_append[];
static cm_script k_append = {.src = wk_lua_append};
const wk_refusal wk_no_refusals[] = {{NULL, WK_OUT_EREDIS}};

int wk_step_append_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s)
{
    return wk_step_queue(ctx, p, &k_append, s, NULL, NULL);
}

int wk_step_append(wk_ctx *ctx, wk_step *s, es_append_res *res)
{
    cm_pipe *p = cm_pipe_new(wk_cluster(ctx));
    int idx = wk_step_append_queue(ctx, p, s);
    if (idx >= 0)
        wk_pipe_exec(ctx, p);
    wk_step_out o;
    wk_outcome rc = wk_step_take(ctx, p, idx, s, wk_no_refusals, &o);
    cm_pipe_free(p);
    *res = o.res;
    return rc == WK_OUT_APPENDED ? WK_STEP_OK : rc == WK_OUT_CONFLICT ? WK_STEP_CONFLICT : WK_STEP_EREDIS;
}

wk_result wk_saga_moved(wk_ctx *ctx, const es_event *cause, const char *step)
{
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_read(wk_store(ctx), WK_SAGA_AGGREGATE, cause->aggregate_id, &evs, &n);
    if (rc == ES_EREDIS) {
        wk_fail_reason(ctx, "history read: %s", es_store_errstr(wk_store(ctx)));
        return WK_RETRY;
    }
    wk_result out;
    if (rc != ES_OK) {
        wk_fail_reason(ctx, "history unreadable: %s", es_store_errstr(wk_store(ctx)));
        out = WK_DEAD;
    } else if ((int64_t)n <= cause->seq - 1 || strcmp(evs[cause->seq - 1]->event_id, cause->event_id)) {
        /* The history does not hold the cause where the bus says it is. */
        wk_fail_reason(ctx, "history of %s has no event %s at seq %lld", cause->aggregate_id,
                       cause->event_id, (long long)cause->seq);
        out = WK_DEAD;
    } else if ((int64_t)n == cause->seq) {
        /* Nothing after the cause: the conflict came from elsewhere; try again. */
        wk_fail_reason(ctx, "conflict but history of %s ends at the cause", cause->aggregate_id);
        out = WK_RETRY;
    } else {
        es_checkout_state st;
        es_checkout_fold(evs, n, &st);
        const char *kv[] = {"step", step, "status", st.status, NULL};
        cm_logx(CM_INFO, cause->aggregate_id, cause->event_id, kv,
                "saga moved on (version %lld, expected %lld%s): nothing to do", (long long)st.version,
                (long long)cause->seq, st.timed_out ? ", timed out" : "");
        out = WK_ACK;
    }
    es_events_free(evs, n);
    return out;
}

const char *wk_saga_checkout(wk_ctx *ctx, const es_event *cause)
{
    if (strcmp(cause->aggregate, WK_SAGA_AGGREGATE) != 0) {
        wk_fail_reason(ctx, "aggregate %s is not a checkout", cause->aggregate);
        return NULL;
    }
    if (!cm_id_valid(cause->aggregate_id, strlen(cause->aggregate_id), 64)) {
        wk_fail_reason(ctx, "checkout id is not 1..64 of [A-Za-z0-9_-]");
        return NULL;
    }
    return cause->aggregate_id;
}

void wk_saga_count(wk_ctx *ctx, const wk_step *s, const es_append_res *res)
{
    if (res->duplicate)
        return;
    char labels[256];
    for (size_t i = 0; i < s->n; i++) {
        const char *type = s->evs[i].type;
        cm_metrics_labels(labels, sizeof labels, "topic", es_store_bus(wk_store(ctx)), "type", type, NULL);
        cm_series_inc(cm_counter("events_published_total", "Events appended to the bus", labels));
        if (!strcmp(type, cm_event_type_names[CM_EV_CHECKOUT_SUCCEEDED])) {
            cm_series_inc(cm_counter("saga_choreo_success_total", "Checkouts that succeeded", NULL));
        } else if (!strcmp(type, cm_event_type_names[CM_EV_CHECKOUT_FAILED])) {
            json_t *r = json_object_get(s->data[i], "reason");
            cm_metrics_labels(labels, sizeof labels, "reason", json_is_string(r) ? json_string_value(r) : "",
                              NULL);
            cm_series_inc(cm_counter("saga_choreo_failed_total", "Checkouts that failed, by reason", labels));
        }
    }
}

const char *wk_saga_failure_reason(const es_event *cause)
{
    static const char *const known[] = {CM_REASON_INSUFFICIENT_STOCK, CM_REASON_ORDER_LIMIT,
                                        CM_REASON_INJECTED_FAULT, CM_REASON_TIMED_OUT};
    switch (cause->kind) {
    case CM_EV_CHECKOUT_TIMED_OUT:
        return CM_REASON_TIMED_OUT;
    case CM_EV_STOCK_RESERVATION_FAILED:
        return CM_REASON_INSUFFICIENT_STOCK;
    case CM_EV_ORDER_CREATION_FAILED: {
        const char *r = es_event_data_str(cause, "reason");
        for (size_t i = 0; r && i < sizeof known / sizeof known[0]; i++)
            if (!strcmp(r, known[i]))
                return known[i];
        return NULL;
    }
    default:
        return NULL;
    }
}

