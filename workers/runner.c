/* runner.c - the read loop of a worker: connect, create the group, read
 * batches, dispatch to the handler table, acknowledge with the next read,
 * run periodic jobs, drain on SIGTERM.
 *
 * Invariant: an entry id is added to the ack list only after its handler
 * returned WK_ACK (its effects are then durable in Redis) or after it was
 * parked in the dead-letter stream. Acks are sent pipelined in front of the
 * next XREADGROUP; if the connection breaks first, the entries stay pending
 * and are handled again (at-least-once; handlers are idempotent).
 *
 * A failed entry is parked only when it can never succeed: the handler said
 * WK_DEAD, it cannot be decoded, or its time budget is spent (reclaim.c); a
 * failure naming Redis being unavailable is retried for as long as it takes.
 * A batch handler's failure is narrowed down by running the failed part
 * again in halves, so the entries that fail on their own are the only ones
 * left pending. */
#include "workers/runner_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "event_store/deadletter.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile sig_atomic_t wk_stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    wk_stop_flag = 1;
}

redisContext *wk_redis(wk_ctx *ctx) { return ctx->cluster ? NULL : ctx->c; }
cm_cluster *wk_cluster(wk_ctx *ctx) { return ctx->cc; }
es_store *wk_store(wk_ctx *ctx) { return ctx->store; }
const char *wk_consumer(const wk_ctx *ctx) { return ctx->consumer; }
const char *wk_group(const wk_ctx *ctx) { return ctx->group; }
void *wk_state(wk_ctx *ctx) { return ctx->state; }
void wk_set_state(wk_ctx *ctx, void *state) { ctx->state = state; }
bool wk_stopping(const wk_ctx *ctx) { (void)ctx; return wk_stop_flag != 0; }
bool wk_batch_redelivered(const wk_ctx *ctx) { return WK_STREAM_IS_RETRY(ctx->cur_stream); }
long long wk_wait_replicas(const wk_ctx *ctx) { return (long long)ctx->set.wait_replicas; }
long long wk_wait_timeout_ms(const wk_ctx *ctx) { return (long long)ctx->set.wait_timeout_ms; }

void wk_fail_reason(wk_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->reason, sizeof ctx->reason, fmt, ap);
    va_end(ap);
}

/* XCLAIM JUSTID of the entries ids (an array of [id, fields]) of stream,
 * to this consumer: they look alive again. */
static void touch_entries(wk_ctx *ctx, const char *stream, const redisReply *entries)
{
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0)
        return;
    cm_argv a = {0};
    cm_argv_adds(&a, "XCLAIM");
    cm_argv_adds(&a, stream);
    cm_argv_adds(&a, ctx->group);
    cm_argv_adds(&a, ctx->consumer);
    cm_argv_adds(&a, "0");
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *id = cm_reply_elem(entries->element[i], 0);
        if (cm_reply_is_str(id))
            cm_argv_adds(&a, id->str);
    }
    cm_argv_adds(&a, "JUSTID");
    redisReply *r = cm_cluster_argv(ctx->cc, cm_key_slot(stream, strlen(stream)), &a);
    char err[256];
    if (!wk_reply_failed(ctx, r, err, sizeof err))
        freeReplyObject(r);
    else
        cm_log(CM_WARN, "touch of in-flight entries of %s failed: %s", stream, err);
    cm_argv_free(&a);
}

void wk_touch(wk_ctx *ctx)
{
    if (!ctx->cc || !ctx->ninflight)
        return;
    /* the round's later streams wait while this one is handled: keep them
     * fresh too, or a peer would take them over as a dead consumer's */
    for (size_t i = ctx->round_at + 1; ctx->round && i < ctx->round->elements; i++) {
        const redisReply *sr = ctx->round->element[i];
        const redisReply *name = cm_reply_elem(sr, 0);
        if (cm_reply_is_str(name))
            touch_entries(ctx, name->str, cm_reply_elem(sr, 1));
    }
    cm_argv a = {0};
    cm_argv_adds(&a, "XCLAIM");
    cm_argv_adds(&a, ctx->streams[ctx->cur_stream]);
    cm_argv_adds(&a, ctx->group);
    cm_argv_adds(&a, ctx->consumer);
    cm_argv_adds(&a, "0");
    for (size_t i = 0; i < ctx->ninflight; i++)
        cm_argv_adds(&a, ctx->inflight[i]);
    cm_argv_adds(&a, "JUSTID");
    redisReply *r = cm_cluster_argv(ctx->cc, ctx->slot[ctx->cur_stream], &a);
    char err[256];
    if (!wk_reply_failed(ctx, r, err, sizeof err))
        freeReplyObject(r);
    else
        cm_log(CM_WARN, "touch of in-flight entries failed: %s", err);
    cm_argv_free(&a);
    ctx->last_touch_ms = cm_mono_ms();
}

static const wk_handler *find_handler(const wk_def *def, enum cm_event_type kind)
{
    const wk_handler *any = NULL;
    for (size_t i = 0; i < def->nhandlers; i++) {
        if (def->handlers[i].type == kind && kind != CM_EV_UNKNOWN)
            return &def->handlers[i];
        if (def->handlers[i].type == CM_EV_UNKNOWN)
            any = &def->handlers[i];
    }
    return any;
}

/* Label index for per-type series: a DESIGN type, or the last slot for others. */
static int type_slot(enum cm_event_type k)
{
    return k == CM_EV_UNKNOWN ? CM_EV_COUNT : (int)k;
}

static void count_consumed(wk_ctx *ctx, const es_event *ev)
{
    int s = type_slot(ev->kind);
    const char *tname = s == CM_EV_COUNT ? "other" : cm_event_type_names[s];
    if (!ctx->m_consumed[s]) {
        char l[512];
        cm_metrics_labels(l, sizeof l, "topic", ctx->set.bus, "type", tname, "consumer",
                          ctx->def->name ? ctx->def->name : cm_worker_names[ctx->def->id], NULL);
        ctx->m_consumed[s] = cm_counter("events_consumed_total", "events handled by this worker", l);
        cm_metrics_labels(l, sizeof l, "topic", ctx->set.bus, "type", tname, NULL);
        ctx->m_latency[s] = cm_histogram("event_latency_seconds", "emit to consume latency", l);
        cm_metrics_labels(l, sizeof l, "group", ctx->group, "type", tname, NULL);
        ctx->m_errors[s] = cm_counter("worker_handler_errors_total", "handler failures (retry or dead)", l);
    }
    cm_series_inc(ctx->m_consumed[s]);
    cm_series_observe(ctx->m_latency[s], cm_wall_s() - ev->emitted_at);
}

int wk_park(wk_ctx *ctx, int stream, const redisReply *entry, const char *reason, long long attempts)
{
    char err[256];
    const redisReply *id = cm_reply_elem(entry, 0);
    if (es_dlq_park(ctx->cc, ctx->streams[WK_STREAM_BUS_OF(stream)], ctx->streams[stream], ctx->group, entry, reason,
                    attempts, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "cannot park entry %s: %s", cm_reply_is_str(id) ? id->str : "?", err);
        return -1;
    }
    cm_series_inc(ctx->m_dead);
    const char *kv[] = {"group", ctx->group, "entry_id", cm_reply_is_str(id) ? id->str : "?", "reason", reason,
                        NULL};
    cm_logx(CM_WARN, NULL, NULL, kv, "entry parked in the dead-letter stream after %lld attempt(s)", attempts);
    return 0;
}

/* Applies a handler's verdict to one entry (ctx->reason says why it failed). */
static int settle(wk_ctx *ctx, int stream, const redisReply *entry, const es_event *ev, wk_result res,
                  long long deliveries)
{
    const char *id = entry->element[0]->str;
    if (res == WK_ACK) {
        cm_argv_adds(&ctx->acks[stream], id);
        return 0;
    }
    cm_series_inc(ctx->m_errors[type_slot(ev->kind)]);
    const char *why = ctx->reason[0] ? ctx->reason : (res == WK_DEAD ? "handler refused the event" : "handler failed");
    char reason[400];
    if (res == WK_DEAD)
        return wk_park(ctx, stream, entry, why, deliveries);
    if (ctx->set.max_deliveries > 0 && deliveries >= ctx->set.max_deliveries) {
        snprintf(reason, sizeof reason, "max deliveries exceeded: %s", why);
        return wk_park(ctx, stream, entry, reason, deliveries);
    }
    bool unavailable = wk_reason_is_unavailable(why);
    if (!unavailable && wk_budget_spent(ctx, id, deliveries)) {
        snprintf(reason, sizeof reason, "retry budget of %lld ms spent after %lld attempts: %s",
                 (long long)ctx->set.retry_budget_ms, deliveries, why);
        return wk_park(ctx, stream, entry, reason, deliveries);
    }
    cm_series_inc(ctx->m_retries);
    ctx->retry_waiting++;
    const char *kv[] = {"group", ctx->group, "entry_id", id, NULL};
    cm_logx(CM_WARN, ev->correlation_id, ev->event_id, kv, "delivery %lld failed%s, retrying in about %lld ms: %s",
            deliveries, unavailable ? " (Redis unavailable: no time limit)" : "",
            (long long)wk_backoff_ms(ctx, id, deliveries + 1), why);
    return 0;
}

/* True when the runtime has no usable client: not connected, or (single
 * server) its connection broke. A cluster client reconnects by itself. */
static bool broken(const wk_ctx *ctx)
{
    return !ctx->cc || (ctx->c && ctx->c->err);
}

bool wk_reply_failed(wk_ctx *ctx, redisReply *r, char *err, size_t errlen)
{
    if (!r) {
        snprintf(err, errlen, "redis: %s", ctx->cc ? cm_cluster_errstr(ctx->cc) : "not connected");
        return true;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str);
        freeReplyObject(r);
        return true;
    }
    ctx->last_ok_ms = cm_mono_ms();
    return false;
}

/* Runs the handler of one decoded event and settles it. Returns -1 when the
 * connection broke (the entry stays pending) or parking failed, else 0. */
static int handle_one(wk_ctx *ctx, int stream, const redisReply *entry, const es_event *ev, long long deliveries)
{
    const wk_handler *h = find_handler(ctx->def, ev->kind);
    if (!h) {
        cm_series_inc(ctx->m_skipped);
        cm_argv_adds(&ctx->acks[stream], entry->element[0]->str);
        return 0;
    }
    count_consumed(ctx, ev);
    ctx->reason[0] = '\0';
    wk_result r = h->fn(ctx, ev);
    if (broken(ctx))
        return -1;
    int rc = settle(ctx, stream, entry, ev, r, deliveries);
    /* a slow batch keeps its entries fresh so no peer claims them */
    if (cm_mono_ms() - ctx->last_touch_ms > ctx->set.claim_idle_ms / 3)
        wk_touch(ctx);
    return rc;
}

/* Runs the batch handler on the events evs[idx[0..m)], storing each verdict
 * in res[idx[i]] and its failure reason in why[idx[i]] (NULL when acked). */
static void run_batch(wk_ctx *ctx, es_event *const *evs, const size_t *idx, size_t m, wk_result *res, char **why)
{
    es_event **sub = cm_xcalloc(m, sizeof *sub);
    wk_result *r = cm_xcalloc(m, sizeof *r);
    for (size_t i = 0; i < m; i++)
        sub[i] = evs[idx[i]];
    ctx->reason[0] = '\0';
    ctx->def->batch(ctx, sub, m, r);
    for (size_t i = 0; i < m; i++) {
        res[idx[i]] = r[i];
        free(why[idx[i]]);
        why[idx[i]] = r[i] == WK_ACK ? NULL : cm_xstrdup(ctx->reason);
    }
    free(r);
    free(sub);
}

/* The entries of idx[0..m) whose last run answered WK_RETRY for a reason
 * other than Redis being unavailable, into out; returns how many. */
static size_t failed_part(const size_t *idx, size_t m, const wk_result *res, char *const *why, size_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < m; i++)
        if (res[idx[i]] == WK_RETRY && !wk_reason_is_unavailable(why[idx[i]]))
            out[k++] = idx[i];
    return k;
}

/* One bad event must not hold back its batch: while two or more events of
 * idx failed together, run each half of them again (recursively), so the
 * good ones succeed and only events that fail on their own stay failed. A
 * failure that names Redis being unavailable is not split (every half would
 * fail the same way). Costs about 2 log2(m) handler runs per bad event. */
static void narrow_failures(wk_ctx *ctx, es_event *const *evs, const size_t *idx, size_t m, wk_result *res,
                            char **why)
{
    size_t *bad = cm_xcalloc(m ? m : 1, sizeof *bad);
    size_t k = failed_part(idx, m, res, why, bad);
    if (k >= 2) {
        size_t half = k / 2;
        const size_t *part[2] = {bad, bad + half};
        size_t len[2] = {half, k - half};
        for (int h = 0; h < 2 && !broken(ctx) && !wk_stop_flag; h++) {
            run_batch(ctx, evs, part[h], len[h], res, why);
            if (len[h] >= 2)
                narrow_failures(ctx, evs, part[h], len[h], res, why);
        }
    }
    free(bad);
}

int wk_process(wk_ctx *ctx, int stream, const redisReply *entries, const long long *deliveries)
{
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0)
        return 0;
    /* a job (retry, claim) hands entries over: their handlers' calls keep
     * the long deadline (an event that needs a master waits for it) */
    int best_effort = ctx->cc ? cm_cluster_best_effort(ctx->cc) : 0;
    if (best_effort)
        cm_cluster_set_best_effort(ctx->cc, 0);
    size_t n = entries->elements;
    ctx->cur_stream = stream;
    ctx->inflight = cm_xcalloc(n, sizeof *ctx->inflight);
    ctx->ninflight = 0;
    ctx->batch_started_ms = ctx->last_touch_ms = cm_mono_ms();
    /* the whole batch is in flight (wk_touch keeps all of it fresh) */
    for (size_t i = 0; i < n; i++) {
        const redisReply *id = cm_reply_elem(entries->element[i], 0);
        if (cm_reply_is_str(id))
            ctx->inflight[ctx->ninflight++] = id->str;
    }
    bool batch = ctx->def->batch != NULL;
    bool prepare = !batch && ctx->def->prepare != NULL;   /* decode all, prepare, then one by one */
    bool keep = batch || prepare;
    es_event **evs = keep ? cm_xcalloc(n, sizeof *evs) : NULL;
    const redisReply **evs_entry = keep ? cm_xcalloc(n, sizeof *evs_entry) : NULL;
    long long *evs_deliv = keep ? cm_xcalloc(n, sizeof *evs_deliv) : NULL;
    size_t nev = 0;
    int rc = 0;

    cm_series_inc(ctx->m_batches);
    cm_series_add(ctx->m_batch_entries, n);
    cm_series_set(ctx->m_batch_size, (double)n);

    for (size_t i = 0; i < n && rc == 0; i++) {
        const redisReply *e = entries->element[i];
        const redisReply *id = cm_reply_elem(e, 0);
        if (!cm_reply_is_str(id))
            continue;
        long long d = deliveries ? deliveries[i] : 1;
        if (ctx->set.max_deliveries > 0 && d > ctx->set.max_deliveries) {   /* crashed on its last attempt */
            if (wk_park(ctx, stream, e, "max deliveries exceeded (handler never returned)", d - 1) != 0)
                rc = -1;
            continue;
        }
        /* Skip types nobody here handles before paying for a decode. */
        if (!batch) {
            const redisReply *f = cm_reply_elem(e, 1);
            const char *type = NULL;
            for (size_t j = 0; f && f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2)
                if (cm_reply_is_str(f->element[j]) && !strcmp(f->element[j]->str, "type") &&
                    cm_reply_is_str(f->element[j + 1]))
                    type = f->element[j + 1]->str;
            if (type && !find_handler(ctx->def, cm_event_type_parse(type))) {
                cm_series_inc(ctx->m_skipped);
                cm_argv_adds(&ctx->acks[stream], id->str);
                continue;
            }
        }
        char err[400];
        es_event *ev = NULL;
        if (es_event_from_entry(e, &ev, err, sizeof err) != 0) {
            if (wk_park(ctx, stream, e, err, d) != 0)
                rc = -1;
            continue;
        }
        if (!keep) {
            /* handled and freed one at a time: the next decode reuses the
             * same memory instead of a batch's worth piling up */
            rc = handle_one(ctx, stream, e, ev, d);
            es_event_free(ev);
            continue;
        }
        evs[nev] = ev;
        evs_entry[nev] = e;
        evs_deliv[nev] = d;
        nev++;
    }

    if (rc == 0 && prepare && nev) {
        ctx->def->prepare(ctx, evs, nev);
        for (size_t i = 0; i < nev && rc == 0; i++)
            rc = handle_one(ctx, stream, evs_entry[i], evs[i], evs_deliv[i]);
    }
    if (rc == 0 && batch && nev) {
        wk_result *res = cm_xcalloc(nev, sizeof *res);
        char **why = cm_xcalloc(nev, sizeof *why);
        size_t *all = cm_xcalloc(nev, sizeof *all);
        for (size_t i = 0; i < nev; i++)
            all[i] = i;
        run_batch(ctx, evs, all, nev, res, why);
        size_t *tmp = cm_xcalloc(nev, sizeof *tmp);
        size_t failed = failed_part(all, nev, res, why, tmp);
        narrow_failures(ctx, evs, all, nev, res, why);
        if (failed >= 2)
            cm_log(CM_INFO, "%zu of a batch of %zu failed together; run again in halves, %zu still fail", failed,
                   nev, failed_part(all, nev, res, why, tmp));
        free(tmp);
        for (size_t i = 0; i < nev && rc == 0; i++) {
            count_consumed(ctx, evs[i]);
            if (broken(ctx))
                break;   /* leave them pending: the verdicts may rest on lost writes */
            snprintf(ctx->reason, sizeof ctx->reason, "%s", why[i] ? why[i] : "");
            rc = settle(ctx, stream, evs_entry[i], evs[i], res[i], evs_deliv[i]);
        }
        for (size_t i = 0; i < nev; i++)
            free(why[i]);
        free(why);
        free(all);
        free(res);
    }
    if (broken(ctx))
        rc = -1;
    es_events_free(evs, nev);
    free(evs_entry);
    free(evs_deliv);
    free(ctx->inflight);
    ctx->inflight = NULL;
    ctx->ninflight = 0;
    if (best_effort && ctx->cc)
        cm_cluster_set_best_effort(ctx->cc, best_effort);
    return rc;
}

#define WK_HELD_ACKS_MAX 65536   /* held past this, the ids are dropped: the entries stay pending */

/* Master a stream's writes and acks go to: its slot's on a cluster, the one
 * server's otherwise (every stream then shares one WAIT). */
static int wait_slot(const wk_ctx *ctx, int s)
{
    return ctx->cluster ? ctx->slot[s] : CM_SLOT_ANY;
}

/* With REDIS_WAIT_REPLICAS=N: true once N replicas of slot's master have
 * every write made so far there (the handlers' effects and follow-ups),
 * asked with one PUBLISH + WAIT on the connection the writes went through.
 * Short of N the caller holds the acks and asks again next time (the
 * entries stay pending meanwhile: a failover to a replica that missed the
 * effects redelivers them and the idempotent handlers redo them). */
static bool node_replicated(wk_ctx *ctx, int slot, long long held)
{
    /* on one server the PUBLISH makes the WAIT cover every write the master
     * made before it, also effects another consumer wrote that a
     * redelivered entry's handler found already done (it is replicated) */
    cm_pipe *p = cm_pipe_new(ctx->cc);
    size_t w = 0;   /* the WAIT's index */
    if (!ctx->cluster) {   /* a cluster broadcasts a PUBLISH instead of replicating it */
        cm_pipe_command(p, slot, "PUBLISH %s %s", CM_WAIT_MARK_CHANNEL, "");
        w = 1;
    }
    cm_pipe_command(p, slot, "WAIT %lld %lld", (long long)ctx->set.wait_replicas, (long long)ctx->set.wait_timeout_ms);
    long long got = -1;
    if (cm_pipe_exec_blocking(p) == 0) {   /* a job's best effort would cut the WAIT short */
        redisReply *r = w ? cm_pipe_take(p, 0) : NULL;
        if (r && r->type == REDIS_REPLY_ERROR)   /* e.g. an ACL without the channel: the WAIT may cover less */
            cm_log_limited(CM_ERROR, "wk-wait-mark", "PUBLISH %s: %s", CM_WAIT_MARK_CHANNEL, r->str);
        freeReplyObject(r);
        r = cm_pipe_take(p, w);
        got = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        if (r && r->type == REDIS_REPLY_ERROR)
            cm_log_limited(CM_ERROR, "wk-wait", "WAIT: %s", r->str);
        freeReplyObject(r);
    }
    cm_pipe_free(p);
    if (got >= ctx->set.wait_replicas)
        return true;
    cm_series_inc(ctx->m_wait_short);
    cm_log_limited(CM_WARN, "wk-wait-short",
                   "%lld of %lld replicas confirmed within %lld ms; %lld acks held (entries stay pending)",
                   got < 0 ? 0 : got, (long long)ctx->set.wait_replicas, (long long)ctx->set.wait_timeout_ms, held);
    return false;
}

/* Which of streams[0..n) may have their collected acks sent now: all of
 * them without REDIS_WAIT_REPLICAS; with it, on one server those whose
 * master confirmed, on a cluster all of them once every master confirmed. ok[i] is set per stream. Past
 * WK_HELD_ACKS_MAX held ids, the held ones are dropped (the retry scan
 * re-handles those entries later). */
static void acks_replicated(wk_ctx *ctx, const int *streams, int n, bool *ok)
{
    long long held = 0;
    for (int i = 0; i < n; i++) {
        ok[i] = true;
        held += ctx->acks[streams[i]].n;
    }
    if (ctx->set.wait_replicas <= 0 || !held)
        return;
    if (ctx->cluster) {
        /* A batch's effects are not all in its streams' slots: each stock
         * line is written in its product's slot, on any master. Every
         * master must confirm (a WAIT where this client wrote nothing
         * answers at once), or no ack goes. */
        int slots[64];
        int m = cm_cluster_master_slots(ctx->cc, slots, 64);
        bool all = m > 0;
        for (int k = 0; k < m && all; k++)
            all = node_replicated(ctx, slots[k], held);
        for (int i = 0; i < n; i++)
            ok[i] = all;
    }
    for (int i = 0; i < n && !ctx->cluster; i++) {
        int s = streams[i];
        if (!ctx->acks[s].n)
            continue;
        int j = 0;   /* a stream of the same master already asked? */
        while (j < i && !(ctx->acks[streams[j]].n && wait_slot(ctx, streams[j]) == wait_slot(ctx, s)))
            j++;
        ok[i] = j < i ? ok[j] : node_replicated(ctx, wait_slot(ctx, s), held);
    }
    if (held > WK_HELD_ACKS_MAX)
        for (int i = 0; i < n; i++)
            if (!ok[i])
                cm_argv_reset(&ctx->acks[streams[i]]);
}

/* The XACK of stream s's collected ids (built in a; the ids' text is
 * copied once more here, cheap beside a round trip). */
static void ack_argv(const wk_ctx *ctx, int s, cm_argv *a)
{
    cm_argv_reset(a);
    cm_argv_adds(a, "XACK");
    cm_argv_adds(a, ctx->streams[s]);
    cm_argv_adds(a, ctx->group);
    for (int i = 0; i < ctx->acks[s].n; i++)
        cm_argv_add(a, ctx->acks[s].v[i], ctx->acks[s].len[i]);
}

/* Sends every collected ack now through the sync client (one pipeline,
 * split per master) and waits for the replies: before periodic jobs (so
 * their XPENDING never sees an entry already handled) and at shutdown. A
 * stream whose XACK got no answer (its master unavailable, or skipped by a
 * job's best effort) keeps its ids for the next flush or read: XACK is
 * idempotent. */
static int flush_acks(wk_ctx *ctx)
{
    if (broken(ctx))
        return -1;
    int *all = cm_xcalloc((size_t)ctx->nstreams, sizeof *all);
    int *sent = cm_xcalloc((size_t)ctx->nstreams, sizeof *sent);   /* the stream of each command */
    bool *ok = cm_xcalloc((size_t)ctx->nstreams, sizeof *ok);
    for (int s = 0; s < ctx->nstreams; s++)
        all[s] = s;
    acks_replicated(ctx, all, ctx->nstreams, ok);
    cm_pipe *p = cm_pipe_new(ctx->cc);
    cm_argv a = {0};
    size_t k = 0;
    for (int s = 0; s < ctx->nstreams; s++) {
        if (!ok[s] || !ctx->acks[s].n)
            continue;
        ack_argv(ctx, s, &a);
        cm_pipe_argv(p, ctx->slot[s], &a);
        sent[k++] = s;
    }
    cm_argv_free(&a);
    int rc = 0;
    if (k && cm_pipe_exec(p) != 0) {
        cm_log_limited(CM_WARN, "wk-xack", "XACK failed: %s (the ids are kept and sent again)",
                       cm_cluster_errstr(ctx->cc));
        rc = -1;
    }
    for (size_t i = 0; i < k; i++) {
        redisReply *r = cm_pipe_take(p, i);
        if (!r)
            continue;   /* unanswered: kept */
        if (r->type == REDIS_REPLY_ERROR)
            cm_log(CM_ERROR, "XACK failed: %s", r->str);
        freeReplyObject(r);
        cm_argv_reset(&ctx->acks[sent[i]]);
    }
    cm_pipe_free(p);
    free(ok);
    free(sent);
    free(all);
    if (rc == 0)
        ctx->last_ok_ms = cm_mono_ms();
    return rc;
}

/* Creates the group on every stream (from the start: a new worker catches
 * up on history), one pipeline; an existing group is fine. */
static int create_groups(wk_ctx *ctx)
{
    cm_pipe *p = cm_pipe_new(ctx->cc);
    for (int s = 0; s < ctx->nstreams; s++)
        cm_pipe_command(p, ctx->slot[s], "XGROUP CREATE %s %s 0 MKSTREAM", ctx->streams[s], ctx->group);
    int rc = 0;
    if (cm_pipe_exec(p) != 0) {
        cm_log(CM_ERROR, "cannot create group %s: %s", ctx->group, cm_cluster_errstr(ctx->cc));
        rc = -1;
    }
    for (int s = 0; rc == 0 && s < ctx->nstreams; s++) {
        redisReply *r = cm_pipe_take(p, (size_t)s);
        if (!r || (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)) {
            cm_log(CM_ERROR, "cannot create group %s on %s: %s", ctx->group, ctx->streams[s],
                   r ? r->str : "no reply");
            rc = -1;
        }
        freeReplyObject(r);
    }
    cm_pipe_free(p);
    return rc;
}

/* ---- the async readers ------------------------------------------------- */

/* A reader must back off (CLUSTERDOWN, TRYAGAIN, LOADING, ASK, ...). */
static void reader_back_off(wk_reader *rd)
{
    rd->backoff_ms = rd->backoff_ms ? rd->backoff_ms * 2 : 50;
    if (rd->backoff_ms > 1000)
        rd->backoff_ms = 1000;
    rd->resume_ms = cm_mono_ms() + rd->backoff_ms;
}

/* Re-read the slot map and rebuild the readers, soon (with backoff while
 * it keeps failing: a master being failed over takes seconds). */
static void want_regroup(wk_ctx *ctx)
{
    if (ctx->regroup)
        return;
    ctx->regroup = true;
    int64_t now = cm_mono_ms();
    if (now - ctx->last_regroup_ms > 5000)   /* quiet for a while: start the backoff over */
        ctx->regroup_backoff_ms = 0;
    ctx->last_regroup_ms = now;
    ctx->regroup_backoff_ms = ctx->regroup_backoff_ms ? ctx->regroup_backoff_ms * 2 : 50;
    if (ctx->regroup_backoff_ms > 1000)
        ctx->regroup_backoff_ms = 1000;
    ctx->regroup_ms = now + ctx->regroup_backoff_ms;
}

/* Callback of a reader's XREADGROUP: keeps what came (copied) for the main
 * loop; errors decide backoff or regroup. Thin: no handler runs here. */
static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    wk_reader *rd = ac->data;
    redisReply *r = reply;
    rd->in_flight = false;
    if (rd->closing)
        return;
    wk_ctx *ctx = rd->ctx;
    if (!r) {   /* the connection went: on_disconnect says so */
        want_regroup(ctx);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        cm_log_limited(CM_ERROR, "wk-read", "XREADGROUP on %s:%d: %s", rd->addr.host, rd->addr.port, r->str);
        if (!strncmp(r->str, "MOVED", 5))
            want_regroup(ctx);
        else if (!strncmp(r->str, "NOGROUP", 7))   /* Redis lost its data: recreate */
            ctx->need_groups = true;
        reader_back_off(rd);
        return;
    }
    rd->backoff_ms = 0;
    ctx->last_ok_ms = cm_mono_ms();
    /* The stream elements are taken out of the reply, which hiredis frees
     * (freeReplyObject) when this returns: an element set to NULL is
     * skipped, so each taken one is now ours, freed after its round. No
     * copy of a batch's entries is made. */
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        if (ctx->narrived == ctx->caparrived) {
            ctx->caparrived = ctx->caparrived ? 2 * ctx->caparrived : 16;
            ctx->arrived = cm_xrealloc(ctx->arrived, ctx->caparrived * sizeof *ctx->arrived);
        }
        ctx->arrived[ctx->narrived++] = r->element[i];
        r->element[i] = NULL;
    }
}

static void on_ack(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR)
        cm_log(CM_ERROR, "XACK failed: %s", r->str);
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    wk_reader *rd = ac->data;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR && !rd->closing)
        cm_log_limited(CM_ERROR, "wk-auth", "reader connection to %s:%d: %s", rd->addr.host, rd->addr.port, r->str);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    wk_reader *rd = ac->data;
    if (status == REDIS_OK)
        return;
    /* hiredis frees ac after this callback */
    if (!rd->closing) {
        cm_log_limited(CM_WARN, "wk-connect", "reader cannot connect to %s:%d: %s", rd->addr.host, rd->addr.port,
                       ac->errstr);
        want_regroup(rd->ctx);
    }
    rd->ac = NULL;
    rd->in_flight = false;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    wk_reader *rd = ac->data;
    /* hiredis frees ac after this callback */
    if (!rd->closing && status != REDIS_OK) {
        cm_log_limited(CM_WARN, "wk-disconnect", "reader connection to %s:%d lost: %s", rd->addr.host, rd->addr.port,
                       ac->errstr);
        want_regroup(rd->ctx);
    }
    rd->ac = NULL;
    rd->in_flight = false;
}

/* Opens rd's async connection on the loop (the connect completes there;
 * commands queue meanwhile), authenticating and selecting the db first. */
static void reader_open(wk_ctx *ctx, wk_reader *rd)
{
    const cm_redis_url *u = &rd->addr;
    redisAsyncContext *ac = u->path[0] ? redisAsyncConnectUnix(u->path) : redisAsyncConnect(u->host, u->port);
    if (!ac || ac->err) {
        cm_log_limited(CM_WARN, "wk-connect", "reader cannot connect to %s:%d: %s", u->host, u->port,
                       ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        want_regroup(ctx);
        return;
    }
    ac->data = rd;
    rd->ac = ac;
    redisLibeventAttach(ac, ctx->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (u->password[0] && u->user[0])
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s %s", u->user, u->password);
    else if (u->password[0])
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", u->password);
    if (!u->cluster && u->db > 0)
        redisAsyncCommand(ac, on_auth, NULL, "SELECT %d", u->db);
}

/* Closes readers[0..n) and frees the array. A read in flight is abandoned:
 * what it delivered stays pending for this consumer and the retry scan
 * takes it back. */
static void readers_close(wk_reader *readers, int n)
{
    for (int i = 0; i < n; i++) {
        wk_reader *rd = &readers[i];
        rd->closing = true;
        if (rd->ac)
            redisAsyncFree(rd->ac);   /* runs its callbacks (NULL replies) now */
        rd->ac = NULL;
        free(rd->streams);
    }
    free(readers);
}

static void readers_free(wk_ctx *ctx)
{
    readers_close(ctx->readers, ctx->nreaders);
    ctx->readers = NULL;
    ctx->nreaders = 0;
}

/* True when old can go on serving new: same slot, same master, connected
 * and not given up on. */
static bool reader_same(const wk_reader *old, const wk_reader *new)
{
    return old->ac && !old->stale && old->slot == new->slot && old->nstreams == new->nstreams &&
           old->addr.port == new->addr.port && !strcmp(old->addr.host, new->addr.host) &&
           !strcmp(old->addr.path, new->addr.path);
}

/* Groups the streams into readers by master (and by slot on a cluster) from
 * the slot map, re-read first on a cluster. A reader whose master did not
 * change keeps its connection and its read in flight; the others are
 * closed and opened anew. */
static void readers_build(wk_ctx *ctx)
{
    ctx->regroup = false;
    char err[400];
    cm_redis_url one;
    if (!ctx->cluster && cm_redis_url_parse(ctx->set.redis_url, &one, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "REDIS_URL: %s", err);
        want_regroup(ctx);
        return;
    }
    if (ctx->cluster && cm_cluster_refresh(ctx->cc) != 0)
        cm_log_limited(CM_WARN, "wk-refresh", "slot map not re-read: %s", cm_cluster_errstr(ctx->cc));
    wk_reader *old = ctx->readers;
    int nold = ctx->nreaders;
    ctx->readers = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->readers);
    ctx->nreaders = 0;
    for (int s = 0; s < ctx->nstreams; s++) {
        int slot = ctx->cluster ? ctx->slot[s] : CM_SLOT_ANY;
        int k = 0;
        while (k < ctx->nreaders && ctx->readers[k].slot != slot)
            k++;
        wk_reader *rd = &ctx->readers[k];
        if (k == ctx->nreaders) {
            memset(rd, 0, sizeof *rd);
            rd->ctx = ctx;
            rd->slot = slot;
            if (!ctx->cluster) {
                rd->addr = one;
            } else if (cm_cluster_slot_addr(ctx->cc, slot, &rd->addr) != 0) {
                cm_log_limited(CM_WARN, "wk-slot", "no master known for slot %d of %s", slot, ctx->streams[s]);
                want_regroup(ctx);
                continue;
            }
            rd->streams = cm_xcalloc((size_t)ctx->nstreams, sizeof *rd->streams);
            ctx->nreaders++;
        }
        rd->streams[rd->nstreams++] = s;
    }
    for (int k = 0; k < ctx->nreaders; k++) {
        wk_reader *rd = &ctx->readers[k];
        int j = 0;
        while (j < nold && !reader_same(&old[j], rd))
            j++;
        if (j == nold) {
            reader_open(ctx, rd);
            continue;
        }
        /* same master: the connection and its read in flight move over */
        rd->ac = old[j].ac;
        rd->ac->data = rd;
        rd->in_flight = old[j].in_flight;
        rd->sent_ms = old[j].sent_ms;
        rd->resume_ms = old[j].resume_ms;
        rd->backoff_ms = old[j].backoff_ms;
        old[j].ac = NULL;
    }
    readers_close(old, nold);
}

/* Sends rd's collected acks (when replicated) and then its blocking read,
 * pipelined on its connection. COUNT is per stream: each partition's share
 * of BATCH_SIZE, so one round never hands over more than about twice a
 * batch (redeliveries aside), all of which wk_touch keeps fresh. */
static void reader_send(wk_ctx *ctx, wk_reader *rd)
{
    bool *ok = cm_xcalloc((size_t)rd->nstreams, sizeof *ok);
    acks_replicated(ctx, rd->streams, rd->nstreams, ok);
    for (int i = 0; i < rd->nstreams; i++) {
        int s = rd->streams[i];
        cm_argv *ids = &ctx->acks[s];
        if (!ok[i] || !ids->n)
            continue;
        /* the ids are handed to hiredis as they are (it formats the command
         * at once): no second copy of what every handled entry adds */
        size_t n = (size_t)ids->n + 3;
        const char **argv = cm_xmalloc(n * sizeof *argv);
        size_t *lens = cm_xmalloc(n * sizeof *lens);
        const char *head[3] = {"XACK", ctx->streams[s], ctx->group};
        for (int k = 0; k < 3; k++) {
            argv[k] = head[k];
            lens[k] = strlen(head[k]);
        }
        memcpy(argv + 3, ids->v, (size_t)ids->n * sizeof *argv);
        memcpy(lens + 3, ids->len, (size_t)ids->n * sizeof *lens);
        redisAsyncCommandArgv(rd->ac, on_ack, NULL, (int)n, argv, lens);
        free(argv);
        free(lens);
        cm_argv_reset(ids);
    }
    free(ok);
    long long per = ctx->set.batch / cm_partitions();
    cm_argv a = {0};
    cm_argv_adds(&a, "XREADGROUP");
    cm_argv_adds(&a, "GROUP");
    cm_argv_adds(&a, ctx->group);
    cm_argv_adds(&a, ctx->consumer);
    cm_argv_adds(&a, "COUNT");
    cm_argv_addll(&a, per > 0 ? per : 1);
    cm_argv_adds(&a, "BLOCK");
    cm_argv_addll(&a, (long long)ctx->set.block_ms);
    cm_argv_adds(&a, "STREAMS");
    for (int i = 0; i < rd->nstreams; i++)
        cm_argv_adds(&a, ctx->streams[rd->streams[i]]);
    for (int i = 0; i < rd->nstreams; i++)
        cm_argv_adds(&a, ">");
    if (redisAsyncCommandArgv(rd->ac, on_read, NULL, a.n, (const char **)a.v, a.len) == REDIS_OK) {
        rd->in_flight = true;
        rd->sent_ms = cm_mono_ms();
    }
    cm_argv_free(&a);
}

/* Starts a read on every reader that has none in flight; drops a reader
 * whose read outlived BLOCK_MS + REDIS_TIMEOUT_MS (a peer that vanished
 * without closing). */
static void readers_send(wk_ctx *ctx)
{
    int64_t now = cm_mono_ms();
    for (int i = 0; i < ctx->nreaders; i++) {
        wk_reader *rd = &ctx->readers[i];
        if (!rd->ac) {
            want_regroup(ctx);
            continue;
        }
        if (rd->in_flight && now - rd->sent_ms > ctx->set.block_ms + ctx->set.redis_timeout_ms) {
            cm_log(CM_WARN, "read on %s:%d unanswered for %lld ms; reconnecting", rd->addr.host, rd->addr.port,
                   (long long)(now - rd->sent_ms));
            rd->stale = true;
            want_regroup(ctx);
            continue;
        }
        if (!rd->in_flight && now >= rd->resume_ms)
            reader_send(ctx, rd);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Waits at most wait_ms for the readers: returns once a read answered
 * (with entries or not), a connection changed, or the time is up; the
 * partial chunks of a large reply are read here without waking the loop. */
static void readers_wait(wk_ctx *ctx, int64_t wait_ms)
{
    bool fired = false;
    size_t answered = 0;
    for (int i = 0; i < ctx->nreaders; i++)
        answered += !ctx->readers[i].in_flight;
    struct timeval tv = {(time_t)(wait_ms / 1000), (suseconds_t)(wait_ms % 1000) * 1000};
    struct event *t = evtimer_new(ctx->base, on_wake, &fired);
    evtimer_add(t, &tv);
    for (;;) {
        event_base_loop(ctx->base, EVLOOP_ONCE);
        size_t now_answered = 0;
        for (int i = 0; i < ctx->nreaders; i++)
            now_answered += !ctx->readers[i].in_flight;
        if (fired || ctx->regroup || now_answered > answered || ctx->narrived || wk_stop_flag)
            break;
    }
    event_free(t);
}

/* Handles what the readers brought, as one round over every stream that
 * answered (wk_touch keeps the round's later streams fresh meanwhile). */
static int handle_arrived(wk_ctx *ctx)
{
    if (!ctx->narrived)
        return 0;
    redisReply round = {.type = REDIS_REPLY_ARRAY, .elements = ctx->narrived, .element = ctx->arrived};
    int rc = 0;
    ctx->round = &round;
    for (size_t i = 0; i < round.elements && rc == 0 && !broken(ctx); i++) {
        const redisReply *sr = round.element[i];
        const redisReply *name = cm_reply_elem(sr, 0);
        int s = -1;
        for (int k = 0; cm_reply_is_str(name) && k < ctx->nstreams && s < 0; k++)
            if (!strcmp(name->str, ctx->streams[k]))
                s = k;
        if (s < 0) {
            cm_log(CM_ERROR, "XREADGROUP answered for a stream not asked for");
            continue;
        }
        ctx->round_at = i;
        rc = wk_process(ctx, s, cm_reply_elem(sr, 1), NULL);
    }
    ctx->round = NULL;
    /* entries of a round cut short stay pending: the retry scan takes them */
    for (size_t i = 0; i < ctx->narrived; i++)
        freeReplyObject(ctx->arrived[i]);
    ctx->narrived = 0;
    return rc;
}

static void disconnect(wk_ctx *ctx)
{
    readers_free(ctx);
    es_store_free(ctx->store);
    ctx->store = NULL;
    cm_cluster_free(ctx->cc);
    ctx->cc = NULL;
    if (ctx->c)
        redisFree(ctx->c);
    ctx->c = NULL;
    for (int s = 0; s < ctx->nstreams; s++)
        cm_argv_reset(&ctx->acks[s]);   /* unacked entries stay pending: redelivered */
    for (size_t i = 0; i < ctx->narrived; i++)
        freeReplyObject(ctx->arrived[i]);
    ctx->narrived = 0;
}

/* Connects (retrying with backoff until it works or a signal arrives):
 * a single server through one sync connection (also wk_redis), a cluster
 * through cm_cluster_open; creates the groups; the readers follow. */
static int connect_redis(wk_ctx *ctx)
{
    int64_t delay = 100;
    while (!wk_stop_flag) {
        char err[400] = "";
        int timeout = (int)ctx->set.redis_timeout_ms;
        if (ctx->cluster) {
            ctx->cc = cm_cluster_open(ctx->set.redis_url, timeout, err, sizeof err);
        } else {
            ctx->c = cm_redis_connect(ctx->set.redis_url, timeout, err, sizeof err);
            if (ctx->c)
                ctx->cc = cm_cluster_borrow(ctx->c);
        }
        if (ctx->cc && create_groups(ctx) == 0) {
            ctx->store = es_store_open(ctx->cc, ctx->set.bus);
            ctx->last_ok_ms = cm_mono_ms();
            ctx->regroup = true;
            ctx->regroup_ms = 0;
            char shown[512];   /* never the password */
            cm_redis_url_mask(ctx->set.redis_url, shown, sizeof shown);
            cm_log(CM_INFO, "connected to %s; group %s, consumer %s", shown, ctx->group, ctx->consumer);
            return 0;
        }
        cm_log(CM_ERROR, "Redis not ready (%s); retrying in %lld ms", ctx->cc ? "setup failed" : err,
               (long long)delay);
        disconnect(ctx);
        cm_sleep_ms(delay);
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    return -1;
}

/* Periodic jobs, each at its own period (redis serverCron's run_with_period). */
typedef struct job {
    const char *name;
    int (*fn)(wk_ctx *ctx);
    int64_t period_ms, next_ms;
    cm_series *m_skips;   /* runs that skipped an unavailable node */
} job;

/* A periodic job's calls to one node may take this long before the node is
 * given up for the run (at most REDIS_TIMEOUT_MS). */
#define WK_JOB_BUDGET_MS 300

/* Runs job j, the collected acks flushed first (so its XPENDING never sees
 * an entry already handled).
 *
 * Jobs under an unavailable node: the loop that runs the jobs also hands
 * the readers' entries over, so a job must not hold it for the retry
 * deadline of a master that is dead (until its replica is promoted) or
 * frozen. On a cluster a job's own calls are best effort
 * (cm_cluster_set_best_effort): a node that does not answer within
 * WK_JOB_BUDGET_MS is given up, the job's later calls to it in this run
 * fail at once (its other partitions skipped), and the next runs skip it
 * for a backoff doubling to 2 s, as a reader backs off, until it answers.
 * What a job skipped stays as it was in Redis (pending entries pending,
 * cursors not moved past them, acks kept) and is done at a later run. The
 * handlers a job hands entries to (wk_process) keep the long deadline. */
static void run_job(wk_ctx *ctx, job *j)
{
    bool best = ctx->job_budget_ms > 0 && ctx->cc != NULL;
    if (best) {
        cm_cluster_skips_begin(ctx->cc);
        cm_cluster_set_best_effort(ctx->cc, ctx->job_budget_ms);
    }
    int rc = flush_acks(ctx);
    char where[256] = "";
    if (!broken(ctx) && (rc == 0 || (best && cm_cluster_skips(ctx->cc, NULL, 0) > 0)))
        rc = j->fn(ctx);
    int skipped = best && ctx->cc ? cm_cluster_skips(ctx->cc, where, sizeof where) : 0;
    if (best && ctx->cc)
        cm_cluster_set_best_effort(ctx->cc, 0);
    if (skipped) {
        char key[48];
        snprintf(key, sizeof key, "wk-job-skip-%s", j->name);
        cm_series_inc(j->m_skips);
        cm_log_limited(CM_WARN, key,
                       "periodic job %s skipped the partitions of Redis %s (no answer within %d ms); "
                       "it tries them again at its next period",
                       j->name, where, ctx->job_budget_ms);
    } else if (rc != 0) {
        cm_log(CM_WARN, "periodic job %s failed", j->name);
    }
}

/* Trims the bus by EVENT_RETENTION_DAYS, and this group's dead-letter and
 * redelivery streams by DEAD_LETTER_TTL_S (histories are never trimmed). */
static int job_retention(wk_ctx *ctx)
{
    long long n = es_retention_trim(ctx->store, ctx->set.retention_days);
    if (n > 0)
        cm_log(CM_INFO, "retention: trimmed %lld bus entries older than %lld days", n,
               (long long)ctx->set.retention_days);
    int rc = n < 0 ? -1 : 0;   /* the side streams are trimmed all the same */
    if (ctx->set.dead_letter_ttl_s <= 0)
        return rc;
    long long minid = (long long)(cm_wall_ms() - ctx->set.dead_letter_ttl_s * 1000);
    if (minid <= 0)
        return rc;
    for (int i = 0; i < ctx->nstreams; i++) {   /* each partition's dead letters and redeliveries */
        const char *bus = ctx->streams[WK_STREAM_BUS_OF(i)];
        cm_key side[2] = {cm_key_dlq(bus, ctx->group), cm_key_retry(bus, ctx->group)};
        int k = WK_STREAM_IS_RETRY(i);
        redisReply *r = cm_cluster_command(ctx->cc, cm_key_slot(side[k].s, strlen(side[k].s)), "XTRIM %s MINID %lld-0",
                                           side[k].s, minid);
        char err[256];
        if (!r) {   /* its master unavailable: the other partitions go on */
            rc = -1;
            continue;
        }
        if (wk_reply_failed(ctx, r, err, sizeof err)) {
            cm_log(CM_WARN, "retention: XTRIM %s: %s", side[k].s, err);
            return rc;
        }
        if (r->integer > 0)
            cm_log(CM_INFO, "retention: trimmed %lld entries of %s older than %lld s", r->integer, side[k].s,
                   (long long)ctx->set.dead_letter_ttl_s);
        freeReplyObject(r);
    }
    return rc;
}

/* The group's lag and pending count in XINFO GROUPS reply r (-1 when
 * unknown). */
static void group_info(const wk_ctx *ctx, const redisReply *r, long long *lag, long long *pending)
{
    *lag = *pending = -1;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *g = r->element[i];
        const char *name = NULL;
        long long lg = -1, pd = -1;
        for (size_t j = 0; g->type == REDIS_REPLY_ARRAY && j + 1 < g->elements; j += 2) {
            const redisReply *k = g->element[j], *v = g->element[j + 1];
            if (!cm_reply_is_str(k))
                continue;
            if (!strcmp(k->str, "name") && cm_reply_is_str(v))
                name = v->str;
            else if (!strcmp(k->str, "lag"))
                lg = cm_reply_ll(v, -1);
            else if (!strcmp(k->str, "pending"))
                pd = cm_reply_ll(v, -1);
        }
        if (name && !strcmp(name, ctx->group)) {
            *lag = lg;
            *pending = pd;
        }
    }
}

/* worker_lag and worker_pending: the sums over every partition's bus, and
 * per partition (label partition="<p>"), asked in one pipeline split per
 * master. */
static int job_lag(wk_ctx *ctx)
{
    int np = ctx->nstreams / 2;
    cm_pipe *p = cm_pipe_new(ctx->cc);
    for (int s = 0; s < ctx->nstreams; s += 2)
        cm_pipe_command(p, ctx->slot[s], "XINFO GROUPS %s", ctx->streams[s]);
    /* a partition whose master did not answer keeps its last gauges, and
     * the sums wait for a run where every one answered */
    int rc = cm_pipe_exec(p) == 0 ? 0 : -1;
    long long lag = 0, pending = 0;
    bool lag_known = rc == 0, pending_known = rc == 0;
    for (int i = 0; i < np; i++) {
        redisReply *r = cm_pipe_take(p, (size_t)i);
        if (!r)
            continue;
        long long l, pd;
        group_info(ctx, r, &l, &pd);
        freeReplyObject(r);
        lag_known = lag_known && l >= 0;
        pending_known = pending_known && pd >= 0;
        lag += l;
        pending += pd;
        if (np > 1 && ctx->m_part_lag) {
            if (l >= 0)
                cm_series_set(ctx->m_part_lag[i], (double)l);
            if (pd >= 0)
                cm_series_set(ctx->m_part_pending[i], (double)pd);
        }
    }
    cm_pipe_free(p);
    if (rc != 0)
        return -1;
    ctx->last_ok_ms = cm_mono_ms();
    if (lag_known)
        cm_series_set(ctx->m_lag, (double)lag);
    if (pending_known)
        cm_series_set(ctx->m_pending, (double)pending);
    return 0;
}


static int job_tick(wk_ctx *ctx)
{
    ctx->def->tick(ctx);
    return broken(ctx) ? -1 : 0;
}

static int health(void *ud, cm_buf *out)
{
    wk_ctx *ctx = ud;
    int64_t age = cm_mono_ms() - ctx->last_ok_ms;
    bool ok = age < 3 * ctx->set.block_ms + 10000;
    cm_buf_printf(out, "{\"status\":\"%s\",\"group\":\"%s\",\"consumer\":\"%s\",\"last_redis_ok_ms_ago\":%lld}",
                  ok ? "ok" : "redis_unreachable", ctx->group, ctx->consumer, (long long)age);
    return ok ? 200 : 503;
}

static void init_metrics(wk_ctx *ctx)
{
    char l[256];
    cm_metrics_labels(l, sizeof l, "group", ctx->group, NULL);
    ctx->m_skipped = cm_counter("worker_skipped_total", "entries of types this worker does not handle", l);
    ctx->m_retries = cm_counter("worker_retries_total", "deliveries that failed and will be retried", l);
    ctx->m_dead = cm_counter("dead_letters_total", "entries parked in the dead-letter stream", l);
    ctx->m_batches = cm_counter("worker_batches_total", "batches handled", l);
    ctx->m_batch_entries = cm_counter("worker_batch_entries_total", "entries in all batches", l);
    ctx->m_batch_size = cm_gauge("worker_batch_size", "entries in the last batch", l);
    ctx->m_lag = cm_gauge("worker_lag", "entries of the bus not yet delivered to the group", l);
    ctx->m_pending = cm_gauge("worker_pending", "entries delivered and not yet acknowledged", l);
    ctx->m_claimed = cm_counter("worker_claimed_total", "entries taken over from idle consumers", l);
    ctx->m_wait_short = cm_counter("worker_replica_waits_short_total",
                                   "WAITs before acking that found fewer than REDIS_WAIT_REPLICAS replicas "
                                   "(the acks were held)", l);
    ctx->m_trimmed = cm_counter("worker_trimmed_pending_total", "pending entries whose stream entry was trimmed", l);
    int np = cm_partitions();
    if (np > 1) {   /* the same two gauges per partition */
        ctx->m_part_lag = cm_xcalloc((size_t)np, sizeof *ctx->m_part_lag);
        ctx->m_part_pending = cm_xcalloc((size_t)np, sizeof *ctx->m_part_pending);
        for (int p = 0; p < np; p++) {
            char part[16];
            snprintf(part, sizeof part, "%d", p);
            cm_metrics_labels(l, sizeof l, "group", ctx->group, "partition", part, NULL);
            ctx->m_part_lag[p] = cm_gauge("worker_partition_lag", "worker_lag of one partition's bus", l);
            ctx->m_part_pending[p] = cm_gauge("worker_partition_pending", "worker_pending of one partition's bus", l);
        }
    }
}


enum { WK_CONSUMER_MAX = 120 };

/* The consumer name: CONSUMER_NAME with each "{host}" replaced by the host
 * name, or <host>-<pid> when unset. A stable name lets a restarted copy take
 * its own pending entries back at once. Returns 0, or -1 with err naming
 * what is wrong (empty, too long, a character outside [A-Za-z0-9._:-]). */
static int consumer_name(const char *set, char *out, size_t outlen, char *err, size_t errlen)
{
    char host[256] = "host";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        snprintf(host, sizeof host, "host");
    if (!set) {
        snprintf(out, outlen, "%.64s-%ld", host, (long)getpid());
        return 0;
    }
    size_t n = 0;
    for (const char *p = set; *p; ) {
        bool tok = !strncmp(p, "{host}", 6);
        const char *piece = tok ? host : p;
        size_t len = tok ? strlen(host) : 1;
        if (n + len >= outlen || n + len > WK_CONSUMER_MAX) {
            snprintf(err, errlen, "CONSUMER_NAME is longer than %d bytes", WK_CONSUMER_MAX);
            return -1;
        }
        memcpy(out + n, piece, len);
        n += len;
        p += tok ? 6 : 1;
    }
    out[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "CONSUMER_NAME is empty (unset it for the default <host>-<pid>)");
        return -1;
    }
    size_t ok = strspn(out, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-");
    if (ok != n) {
        snprintf(err, errlen, "CONSUMER_NAME may only hold letters, digits, '.', '_', ':' and '-' (and {host}); "
                 "byte %zu is 0x%02x", ok + 1, (unsigned char)out[ok]);
        return -1;
    }
    return 0;
}

static cm_opt k_opts[] = {
    {"redis-url", "REDIS_URL", CM_OPT_STR, NULL, "redis://127.0.0.1:6379/0", 0, -1, "Redis to use"},
    {"bus", "BUS_STREAM", CM_OPT_STR, NULL, CM_BUS_STREAM_DEFAULT, 0, -1, "the bus stream"},
    {"consumer", "CONSUMER_NAME", CM_OPT_STR, NULL, NULL, 0, -1,
     "consumer name, stable across restarts ({host} = host name; default host-pid)"},
    {"metrics-port", "METRICS_PORT", CM_OPT_INT, NULL, "0", 0, 65535, "/metrics and /health port, 0 = off"},
    {"batch", "BATCH_SIZE", CM_OPT_INT, NULL, "256", 1, 10000, "entries per XREADGROUP"},
    {"block-ms", "BLOCK_MS", CM_OPT_INT, NULL, "500", 1, 60000, "XREADGROUP BLOCK"},
    {"max-deliveries", "MAX_DELIVERIES", CM_OPT_INT, NULL, "0", 0, 1000000,
     "optional: attempts before dead-lettering, 0 = no count limit (RETRY_BUDGET_MS rules)"},
    {"claim-idle-ms", "CLAIM_IDLE_MS", CM_OPT_INT, NULL, "30000", 100, 86400000, "idle time before takeover"},
    {"retry-base-ms", "RETRY_BASE_MS", CM_OPT_INT, NULL, "200", 1, 600000, "first retry delay"},
    {"retry-max-ms", "RETRY_MAX_MS", CM_OPT_INT, NULL, "60000", 1, 3600000,
     "retry delay cap (at most CLAIM_IDLE_MS / 2)"},
    {"retry-budget-ms", "RETRY_BUDGET_MS", CM_OPT_INT, NULL, NULL, 0, 2592000000.0,
     "how long a failing event is retried before it is dead-lettered, 0 = forever (Redis being unavailable "
     "never counts)"},
    {"retention-days", "EVENT_RETENTION_DAYS", CM_OPT_INT, NULL, "30", 0, 36500, "bus retention, 0 = forever"},
    {"dead-letter-ttl-s", "DEAD_LETTER_TTL_S", CM_OPT_INT, NULL, "2592000", 0, 3153600000.0,
     "lifetime of this group's dead-letter and redelivery stream entries, 0 = forever"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, NULL, "5000", 100, 600000, "connect/command timeout"},
    {"partitions", "PARTITIONS", CM_OPT_INT, NULL, "1", 1, CM_PARTITIONS_MAX, CM_PARTITIONS_HELP},
    {"redis-wait-replicas", "REDIS_WAIT_REPLICAS", CM_OPT_INT, NULL, "0", 0, 16,
     "entries are acked only once this many replicas have their effects (WAIT); 0 = off"},
    {"redis-wait-timeout-ms", "REDIS_WAIT_TIMEOUT_MS", CM_OPT_INT, NULL, "500", 1, 600000,
     "how long a WAIT may take (below REDIS_TIMEOUT_MS); short of replicas: the acks are held"},
    {NULL, NULL, 0, NULL, NULL, 0, 0, NULL},
};

#define WK_RETRY_BUDGET_MS 3600000   /* RETRY_BUDGET_MS unless the worker says otherwise */

/* Builds the settings table: the runtime's rows, then the worker's own. */
static cm_opt *settings_table(wk_ctx *ctx)
{
    void *ptrs[] = {&ctx->set.redis_url,     &ctx->set.bus,           &ctx->set.consumer,
                    &ctx->set.metrics_port,  &ctx->set.batch,         &ctx->set.block_ms,
                    &ctx->set.max_deliveries, &ctx->set.claim_idle_ms, &ctx->set.retry_base_ms,
                    &ctx->set.retry_max_ms,  &ctx->set.retry_budget_ms, &ctx->set.retention_days,
                    &ctx->set.dead_letter_ttl_s, &ctx->set.redis_timeout_ms, &ctx->set.partitions,
                    &ctx->set.wait_replicas, &ctx->set.wait_timeout_ms};
    _Static_assert(sizeof ptrs / sizeof ptrs[0] == sizeof k_opts / sizeof k_opts[0] - 1,
                   "one settings pointer per k_opts row");
    size_t nown = sizeof k_opts / sizeof k_opts[0] - 1, nextra = 0;
    for (const cm_opt *o = ctx->def->opts; o && o->name; o++)
        nextra++;
    cm_opt *t = cm_xcalloc(nown + nextra + 1, sizeof *t);
    for (size_t i = 0; i < nown; i++) {
        t[i] = k_opts[i];
        t[i].ptr = ptrs[i];
        if (!strcmp(t[i].name, "retry-budget-ms")) {   /* per worker: notification waits hours */
            snprintf(ctx->budget_def, sizeof ctx->budget_def, "%lld",
                     (long long)(ctx->def->retry_budget_ms > 0 ? ctx->def->retry_budget_ms : WK_RETRY_BUDGET_MS));
            t[i].def = ctx->budget_def;
        }
    }
    for (size_t i = 0; i < nextra; i++)
        t[nown + i] = ctx->def->opts[i];
    return t;
}

int wk_run(const wk_def *def, int argc, char **argv)
{
    static wk_ctx ctx_storage;
    /* First thing: a SIGTERM that arrives during startup still means "drain
     * and exit 0", never death by the default action. */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    wk_ctx *ctx = &ctx_storage;
    ctx->def = def;
    ctx->group = def->group ? def->group : cm_group_names[def->id];
    cm_log_init(def->name ? def->name : cm_worker_names[def->id]);

    cm_opt *opts = settings_table(ctx);
    char err[400];
    int lr = cm_config_load(opts, argc, argv, err, sizeof err);
    if (lr != 0) {
        if (lr < 0)
            fprintf(stderr, "chorus-worker %s: %s\n", argv[0], err);
        cm_config_free(opts);
        free(opts);
        return lr < 0 ? 2 : 0;
    }
    if (ctx->set.wait_replicas > 0 && ctx->set.wait_timeout_ms >= ctx->set.redis_timeout_ms) {
        fprintf(stderr, "chorus-worker %s: REDIS_WAIT_TIMEOUT_MS (%lld) must be below REDIS_TIMEOUT_MS (%lld): "
                "a WAIT blocks the connection that long\n", argv[0], (long long)ctx->set.wait_timeout_ms,
                (long long)ctx->set.redis_timeout_ms);
        cm_config_free(opts);
        free(opts);
        return 2;
    }
    if (ctx->set.retry_max_ms > ctx->set.claim_idle_ms / 2)   /* a backing-off entry is not a dead one */
        ctx->set.retry_max_ms = ctx->set.claim_idle_ms / 2;
    if (ctx->set.retry_base_ms > ctx->set.retry_max_ms)
        ctx->set.retry_base_ms = ctx->set.retry_max_ms;
    if (consumer_name(ctx->set.consumer, ctx->consumer, sizeof ctx->consumer, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-worker %s: %s\n", argv[0], err);
        cm_config_free(opts);
        free(opts);
        return 2;
    }
    if (cm_partitions_configure(ctx->set.partitions, ctx->set.bus, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-worker %s: %s\n", argv[0], err);
        cm_config_free(opts);
        free(opts);
        return 2;
    }
    ctx->nstreams = 2 * cm_partitions();
    ctx->streams = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->streams);
    ctx->acks = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->acks);
    ctx->claim_cursor = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->claim_cursor);
    ctx->retry_cursor = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->retry_cursor);
    for (int p = 0; p < cm_partitions(); p++) {
        snprintf(ctx->streams[2 * p + WK_STREAM_BUS], sizeof ctx->streams[0], "%s", cm_key_bus(ctx->set.bus, p).s);
        es_retry_stream(ctx->streams[2 * p], ctx->group, ctx->streams[2 * p + WK_STREAM_RETRY],
                        sizeof ctx->streams[0]);
    }
    for (int s = 0; s < ctx->nstreams; s++)
        snprintf(ctx->claim_cursor[s], sizeof ctx->claim_cursor[s], "0-0");
    ctx->slot = cm_xcalloc((size_t)ctx->nstreams, sizeof *ctx->slot);
    for (int s = 0; s < ctx->nstreams; s++)
        ctx->slot[s] = cm_key_slot(ctx->streams[s], strlen(ctx->streams[s]));
    cm_redis_url u;
    if (cm_redis_url_parse(ctx->set.redis_url, &u, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-worker %s: REDIS_URL: %s\n", argv[0], err);
        cm_config_free(opts);
        free(opts);
        free(ctx->slot);
        return 2;
    }
    ctx->cluster = u.cluster;
    ctx->base = event_base_new();
    if (!ctx->base) {
        fprintf(stderr, "chorus-worker %s: cannot create the event loop\n", argv[0]);
        abort();
    }
    init_metrics(ctx);

    int code = 0;
    cm_metrics_server *ms = NULL;
    if (ctx->set.metrics_port > 0) {
        ms = cm_metrics_serve((int)ctx->set.metrics_port, health, ctx, err, sizeof err);
        if (!ms) {
            cm_log(CM_ERROR, "%s", err);
            code = 1;
            goto out;
        }
    }
    if (connect_redis(ctx) != 0)
        goto out;
    if (def->init && def->init(ctx, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "init failed: %s", err);
        code = 1;
        goto out;
    }

    /* our own entries first: what a previous process under this consumer
     * name was handling when it died continues now, not after CLAIM_IDLE_MS */
    if (flush_acks(ctx) != 0 || wk_resume_own(ctx) != 0)
        cm_log(CM_WARN, "resuming this consumer's pending entries failed; the retry scan will take them");
    cm_log(CM_INFO, "retries: backoff %lld..%lld ms, budget %s%lld ms%s", (long long)ctx->set.retry_base_ms,
           (long long)ctx->set.retry_max_ms, ctx->set.retry_budget_ms ? "" : "unbounded ",
           (long long)ctx->set.retry_budget_ms,
           ctx->set.max_deliveries ? ", and at most MAX_DELIVERIES deliveries" : "");

    job jobs[] = {
        {"retry", wk_retry_due, 50, 0, NULL},
        {"claim", wk_claim_idle, ctx->set.claim_idle_ms / 4 > 100 ? ctx->set.claim_idle_ms / 4 : 100, 0, NULL},
        {"lag", job_lag, 2000, 0, NULL},
        {"retention", job_retention, 60000, 0, NULL},
        {"prune", wk_prune_consumers, 300000, 0, NULL},
        {"tick", def->tick ? job_tick : NULL, def->tick_ms > 0 ? def->tick_ms : 1000, 0, NULL},
    };
    const size_t njobs = sizeof jobs / sizeof jobs[0];
    for (size_t i = 0; i < njobs; i++) {
        if (!jobs[i].fn)
            continue;
        char l[256];
        cm_metrics_labels(l, sizeof l, "group", ctx->group, "job", jobs[i].name, NULL);
        jobs[i].m_skips = cm_counter("worker_job_skips_total",
                                     "periodic job runs that skipped an unavailable Redis node's partitions", l);
    }
    ctx->job_budget_ms = ctx->cluster ? (int)(ctx->set.redis_timeout_ms < WK_JOB_BUDGET_MS
                                                   ? ctx->set.redis_timeout_ms : WK_JOB_BUDGET_MS) : 0;
    /* The loop: periodic jobs through the sync client when due; a blocking
     * read in flight on every reader (each answers after BLOCK_MS at most,
     * or as soon as entries come); one wait on the event loop until the
     * first answer or the next job; then the round of what came. No read is
     * sent while one is in flight on the same reader: no busy polling. */
    while (!wk_stop_flag) {
        if (broken(ctx)) {
            cm_log(CM_WARN, "connection to Redis lost (%s); reconnecting", ctx->c ? ctx->c->errstr : "none");
            disconnect(ctx);
            if (connect_redis(ctx) != 0)
                break;
        }
        if (ctx->need_groups) {
            ctx->need_groups = false;
            if (create_groups(ctx) != 0)
                ctx->need_groups = true;
        }
        int64_t now = cm_mono_ms();
        int64_t wait = ctx->set.block_ms;
        for (size_t i = 0; i < njobs; i++) {
            if (!jobs[i].fn)
                continue;
            if (now >= jobs[i].next_ms) {
                run_job(ctx, &jobs[i]);
                jobs[i].next_ms = cm_mono_ms() + jobs[i].period_ms;
                if (broken(ctx))
                    break;
            }
            /* wake for the jobs that matter soon: retries and the worker's tick */
            if ((i == 0 && ctx->retry_waiting) || jobs[i].fn == job_tick) {
                int64_t until = jobs[i].next_ms - now;
                if (until < wait)
                    wait = until < 1 ? 1 : until;
            }
        }
        if (broken(ctx))
            continue;
        now = cm_mono_ms();
        if (ctx->regroup && now >= ctx->regroup_ms)
            readers_build(ctx);
        readers_send(ctx);
        for (int i = 0; i < ctx->nreaders; i++)   /* wake when a backed-off reader may read again */
            if (!ctx->readers[i].in_flight && ctx->readers[i].resume_ms - now < wait)
                wait = ctx->readers[i].resume_ms - now < 1 ? 1 : ctx->readers[i].resume_ms - now;
        if (ctx->regroup && ctx->regroup_ms - now < wait)
            wait = ctx->regroup_ms - now < 1 ? 1 : ctx->regroup_ms - now;
        readers_wait(ctx, wait);
        if (handle_arrived(ctx) != 0 && !broken(ctx))
            cm_log(CM_WARN, "batch handling interrupted");
    }
    /* Drain: reads in flight answer within BLOCK_MS; what they bring is
     * handled (handlers see wk_stopping), then every ack goes out. */
    for (int64_t end = cm_mono_ms() + ctx->set.block_ms + 1000; !broken(ctx) && cm_mono_ms() < end;) {
        bool any = false;
        for (int i = 0; i < ctx->nreaders; i++)
            any = any || (ctx->readers[i].ac && ctx->readers[i].in_flight);
        if (!any)
            break;
        readers_wait(ctx, end - cm_mono_ms() > 0 ? end - cm_mono_ms() : 1);
        if (handle_arrived(ctx) != 0)
            break;
    }
    if (!broken(ctx) && flush_acks(ctx) != 0)
        cm_log(CM_ERROR, "final acknowledgements failed; the entries will be redelivered");
    if (def->fini)
        def->fini(ctx);
    cm_log(CM_INFO, "stopped");
out:
    disconnect(ctx);
    if (ctx->base)
        event_base_free(ctx->base);
    for (int s = 0; ctx->acks && s < ctx->nstreams; s++)
        cm_argv_free(&ctx->acks[s]);
    free(ctx->acks);
    free(ctx->streams);
    free(ctx->slot);
    free(ctx->arrived);
    free(ctx->m_part_lag);
    free(ctx->m_part_pending);
    free(ctx->claim_cursor);
    free(ctx->retry_cursor);
    cm_metrics_server_free(ms);
    cm_config_free(opts);
    free(opts);
    return code;
}
