/* reclaim.c - pending entries: own retries after backoff, resuming our own
 * entries after a restart, takeover of a dead consumer's entries, and pruning
 * consumers that have nothing pending.
 *
 * Retry: a failed entry stays in our pending list; XPENDING tells its idle
 * time and delivery count, and once idle >= backoff(count + 1) we XCLAIM it
 * back to ourselves (which counts a delivery) and handle it again. The scan
 * pages through the pending list with a cursor, so a long list of waiting
 * entries (a webhook down for an hour) is visited a page per run.
 *
 * Time budget, not a count: every number the retry schedule needs lives in
 * Redis (delivery count and idle time in the pending list, the entry id's
 * timestamp), so a restart changes nothing. The backoffs an entry has waited
 * follow from its delivery count (the jitter is a hash of id and count, the
 * same in every process); an entry is parked only when those waits and the
 * wall time since it was written both reach RETRY_BUDGET_MS, and never while
 * its failure is Redis being unavailable.
 *
 * Resume: a process that starts under the consumer name of one that died
 * (CONSUMER_NAME) first takes back the entries that one was handling (those
 * delivered once), at once; entries that had already failed keep their
 * backoff, so an event that kills its handler is retried ever more slowly
 * instead of crash-looping the worker.
 *
 * Takeover: XAUTOCLAIM moves entries idle longer than CLAIM_IDLE_MS from any
 * consumer to us. CLAIM_IDLE_MS exceeds the longest handler and the retry cap
 * (runner.c clamps RETRY_MAX_MS to half of it), and a slow batch is kept
 * fresh by wk_touch, so a live consumer's entry is never taken. Entries whose
 * stream entry was trimmed are reported by XAUTOCLAIM as deleted (and already
 * dropped from the pending list by Redis 7): we count them. */
#include "workers/runner_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/xmalloc.h"

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t wk_backoff_ms(const wk_ctx *ctx, const char *id, long long deliveries)
{
    /* `deliveries` is the number of the delivery about to be made: the
     * first retry (delivery 2) waits RETRY_BASE_MS, each later one twice
     * the previous */
    int64_t d = ctx->set.retry_base_ms;
    for (long long i = 2; i < deliveries && d < ctx->set.retry_max_ms; i++)
        d *= 2;
    if (d > ctx->set.retry_max_ms)
        d = ctx->set.retry_max_ms;
    /* deterministic jitter so every scan agrees on when an entry is due */
    unsigned char h[8];
    char key[96];
    snprintf(key, sizeof key, "%s/%lld", id, deliveries);
    crypto_generichash(h, sizeof h, (const unsigned char *)key, strlen(key), NULL, 0);
    double f = 0.5 + 0.5 * (double)(h[0] | h[1] << 8) / 65535.0;
    return (int64_t)((double)d * f);
}

bool wk_budget_spent(const wk_ctx *ctx, const char *id, long long failed)
{
    int64_t budget = ctx->set.retry_budget_ms;
    if (budget <= 0 || failed < 2)
        return false;
    /* the waits before deliveries 2..failed, as the retry scan applied them;
     * past a few thousand, each further one is at least half the cap */
    int64_t waited = 0;
    long long k = 2;
    for (; k <= failed && k < 4000 && waited < budget; k++)
        waited += wk_backoff_ms(ctx, id, k);
    if (k <= failed && waited < budget)
        waited += (int64_t)(failed - k + 1) * (ctx->set.retry_max_ms / 2);
    if (waited < budget)
        return false;
    /* and never before the budget has passed on the clock: the entry id is
     * the time it was written, so the failing cannot have begun earlier */
    long long written = strtoll(id, NULL, 10);
    return written > 0 && cm_wall_ms() - written >= budget;
}

bool wk_reason_is_unavailable(const char *reason)
{
    /* error codes (and hiredis I/O errors) that mean "Redis could not take
     * it now", as cm_reply_failed renders them: "redis: <reply or errstr>" */
    static const char *const k_codes[] = {
        "LOADING",  "BUSY ",       "MASTERDOWN", "READONLY",  "CLUSTERDOWN", "TRYAGAIN",
        "MISCONF",  "OOM ",        "NOREPLICAS", "Connection", "Server closed", "Timeout",
        "no reply", "Resource temporarily unavailable",
        /* cm_cluster's own words when no master answered in time */
        "Redis at ", "no answer within", "no node is known",
    };
    for (const char *p = reason ? strstr(reason, "redis: ") : NULL; p; p = strstr(p, "redis: ")) {
        p += 7;
        for (size_t i = 0; i < sizeof k_codes / sizeof k_codes[0]; i++)
            if (!strncmp(p, k_codes[i], strlen(k_codes[i])))
                return true;
    }
    return false;
}

/* Reads delivery counts of our pending entries between first and last. Fills
 * counts[i] for each entry of `entries` (1 when unknown). */
static int delivery_counts(wk_ctx *ctx, int s, const redisReply *entries, long long *counts)
{
    size_t n = entries->elements;
    for (size_t i = 0; i < n; i++)
        counts[i] = 1;
    const redisReply *first = cm_reply_elem(cm_reply_elem(entries, 0), 0);
    const redisReply *last = cm_reply_elem(cm_reply_elem(entries, n - 1), 0);
    if (!cm_reply_is_str(first) || !cm_reply_is_str(last))
        return 0;
    redisReply *r = cm_cluster_command(ctx->cc, ctx->slot[s], "XPENDING %s %s %s %s %lld %s", ctx->streams[s], ctx->group, first->str,
                                 last->str, (long long)n + 16, ctx->consumer);
    if (!r)
        return -1;
    for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j < r->elements; j++) {
        const redisReply *p = r->element[j];
        const redisReply *pid = cm_reply_elem(p, 0);
        if (!cm_reply_is_str(pid))
            continue;
        for (size_t i = 0; i < n; i++) {
            const redisReply *eid = cm_reply_elem(entries->element[i], 0);
            if (cm_reply_is_str(eid) && !strcmp(eid->str, pid->str)) {
                counts[i] = cm_reply_ll(cm_reply_elem(p, 3), 1);
                break;
            }
        }
    }
    freeReplyObject(r);
    return 0;
}

/* XCLAIMs the ids in a (an XCLAIM command being built) to us and handles
 * what comes back, with delivery counts read again (or all `known` when > 0).
 * `due` is how many ids a holds. */
static int claim_and_process(wk_ctx *ctx, int s, cm_argv *a, int due, long long known)
{
    redisReply *c = cm_cluster_argv(ctx->cc, ctx->slot[s], a);
    if (!c)
        return -1;
    int rc = 0;
    if (c->type == REDIS_REPLY_ARRAY && c->elements) {
        if ((size_t)due > c->elements)
            cm_series_add(ctx->m_trimmed, (uint64_t)due - c->elements);
        long long *counts = cm_xcalloc(c->elements, sizeof *counts);
        for (size_t i = 0; i < c->elements; i++)
            counts[i] = known;
        if (known > 0 || delivery_counts(ctx, s, c, counts) == 0)
            rc = wk_process(ctx, s, c, counts);
        else
            rc = -1;
        free(counts);
    } else if (c->type == REDIS_REPLY_ARRAY) {
        cm_series_add(ctx->m_trimmed, (uint64_t)due);
    } else if (c->type == REDIS_REPLY_ERROR) {
        cm_log(CM_WARN, "XCLAIM on %s: %s", ctx->streams[s], c->str);
    }
    freeReplyObject(c);
    return rc;
}

/* Starts an XCLAIM of entries of stream s to us, whatever their idle time. */
static void xclaim_start(wk_ctx *ctx, int s, cm_argv *a)
{
    cm_argv_reset(a);
    cm_argv_adds(a, "XCLAIM");
    cm_argv_adds(a, ctx->streams[s]);
    cm_argv_adds(a, ctx->group);
    cm_argv_adds(a, ctx->consumer);
    cm_argv_adds(a, "0");
}

enum { RETRY_PAGE = 100 };

/* Queues stream s's XPENDING of our entries idle past half the first
 * backoff, from the stream's retry cursor (read by retry_stream). */
static void retry_ask(wk_ctx *ctx, cm_pipe *p, int s)
{
    const char *cursor = ctx->retry_cursor[s];
    cm_pipe_command(p, ctx->slot[s], "XPENDING %s %s IDLE %lld %s + %d %s", ctx->streams[s], ctx->group,
                       (long long)(ctx->set.retry_base_ms / 2), cursor[0] ? cursor : "-", RETRY_PAGE, ctx->consumer);
}

/* Claims and runs again stream s's entries whose backoff elapsed, from r
 * (retry_ask's reply, freed here). */
static int retry_stream(wk_ctx *ctx, int s, redisReply *r, int *waiting)
{
    char *cursor = ctx->retry_cursor[s];
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return 0;
    }
    cm_argv a = {0};
    xclaim_start(ctx, s, &a);
    int due = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *p = r->element[i];
        const redisReply *id = cm_reply_elem(p, 0);
        long long idle = cm_reply_ll(cm_reply_elem(p, 2), 0);
        long long deliveries = cm_reply_ll(cm_reply_elem(p, 3), 1);
        if (!cm_reply_is_str(id))
            continue;
        if (idle >= wk_backoff_ms(ctx, id->str, deliveries + 1)) {
            cm_argv_adds(&a, id->str);
            due++;
        } else {
            (*waiting)++;
        }
    }
    /* a full page: go on after its last entry next time; else from the
     * start. Moved only once the page's due entries are claimed: a claim
     * that failed (its master unavailable) sees the same page next time. */
    const redisReply *last = r->elements ? cm_reply_elem(r->element[r->elements - 1], 0) : NULL;
    char next[sizeof ctx->retry_cursor[s]] = "";
    if (r->elements == RETRY_PAGE && cm_reply_is_str(last)) {
        snprintf(next, sizeof next, "(%s", last->str);
        (*waiting)++;   /* more to look at: keep the loop waking for retries */
    }
    freeReplyObject(r);
    int rc = due ? claim_and_process(ctx, s, &a, due, 0) : 0;
    cm_argv_free(&a);
    if (rc == 0)
        memcpy(cursor, next, sizeof next);
    else
        (*waiting)++;
    return rc;
}

int wk_retry_due(wk_ctx *ctx)
{
    /* one pipeline (one write per master) asks every partition's streams,
     * then each that answered is handled: a master that did not answer
     * (unavailable, or skipped by the job's best effort) holds back only
     * its own partitions, which count as waiting so the scan comes again */
    cm_pipe *p = cm_pipe_new(ctx->cc);
    for (int s = 0; s < ctx->nstreams; s++)
        retry_ask(ctx, p, s);
    redisReply **rs = cm_xcalloc((size_t)ctx->nstreams, sizeof *rs);
    int waiting = 0, rc = cm_pipe_exec(p) == 0 ? 0 : -1;
    for (int s = 0; s < ctx->nstreams; s++)
        rs[s] = cm_pipe_take(p, (size_t)s);
    cm_pipe_free(p);
    for (int s = 0; s < ctx->nstreams && !wk_stop_flag; s++) {
        redisReply *r = rs[s];
        rs[s] = NULL;
        if (!r) {
            waiting++;
            continue;
        }
        if (retry_stream(ctx, s, r, &waiting) != 0)
            rc = -1;
    }
    for (int s = 0; s < ctx->nstreams; s++)
        if (rs[s])
            freeReplyObject(rs[s]);
    free(rs);
    ctx->retry_waiting = waiting;
    return rc;
}

int wk_resume_own(wk_ctx *ctx)
{
    long long resumed = 0, waiting = 0;
    for (int s = 0; s < ctx->nstreams; s++) {
        char start[80] = "-";
        cm_argv a = {0};
        for (;;) {
            redisReply *r = cm_cluster_command(ctx->cc, ctx->slot[s], "XPENDING %s %s %s + %lld %s", ctx->streams[s], ctx->group, start,
                                         (long long)ctx->set.batch, ctx->consumer);
            if (!r) {
                cm_argv_free(&a);
                return -1;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
                freeReplyObject(r);
                break;
            }
            xclaim_start(ctx, s, &a);
            int due = 0;
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *id = cm_reply_elem(r->element[i], 0);
                if (!cm_reply_is_str(id))
                    continue;
                if (cm_reply_ll(cm_reply_elem(r->element[i], 3), 1) == 1) {   /* in flight when it died */
                    cm_argv_adds(&a, id->str);
                    due++;
                } else {
                    waiting++;
                }
            }
            bool more = r->elements == (size_t)ctx->set.batch;
            const redisReply *last = cm_reply_elem(r->element[r->elements - 1], 0);
            snprintf(start, sizeof start, "(%s", cm_reply_is_str(last) ? last->str : "+");
            freeReplyObject(r);
            /* the claim counts the delivery: each comes back with count 2 */
            if (due && claim_and_process(ctx, s, &a, due, 2) != 0) {
                cm_argv_free(&a);
                return -1;
            }
            resumed += due;
            if (!more || wk_stop_flag)
                break;
        }
        cm_argv_free(&a);
    }
    if (resumed || waiting)
        cm_log(CM_INFO, "resumed %lld entries this consumer held when it stopped; %lld failed ones wait for their "
               "retry", resumed, waiting);
    return 0;
}

int wk_claim_idle(wk_ctx *ctx)
{
    bool failed = false;
    for (int s = 0; s < ctx->nstreams && !wk_stop_flag; s++) {
        redisReply *r = cm_cluster_command(ctx->cc, ctx->slot[s], "XAUTOCLAIM %s %s %s %lld %s COUNT %lld", ctx->streams[s], ctx->group,
                                     ctx->consumer, (long long)ctx->set.claim_idle_ms, ctx->claim_cursor[s],
                                     (long long)ctx->set.batch);
        if (!r) {   /* its master unavailable: the other partitions go on */
            failed = true;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            cm_log(CM_WARN, "XAUTOCLAIM on %s: %s", ctx->streams[s], r->str);
            freeReplyObject(r);
            continue;
        }
        const redisReply *cursor = cm_reply_elem(r, 0);
        const redisReply *entries = cm_reply_elem(r, 1);
        const redisReply *deleted = cm_reply_elem(r, 2);
        snprintf(ctx->claim_cursor[s], sizeof ctx->claim_cursor[s], "%s",
                 cm_reply_is_str(cursor) ? cursor->str : "0-0");
        if (deleted && deleted->type == REDIS_REPLY_ARRAY && deleted->elements) {
            cm_series_add(ctx->m_trimmed, deleted->elements);
            cm_log(CM_WARN, "%zu pending entries of %s were trimmed before being handled", deleted->elements,
                   ctx->streams[s]);
        }
        int rc = 0;
        if (entries && entries->type == REDIS_REPLY_ARRAY && entries->elements) {
            cm_series_add(ctx->m_claimed, entries->elements);
            cm_log(CM_INFO, "took over %zu entries idle for more than %lld ms", entries->elements,
                   (long long)ctx->set.claim_idle_ms);
            long long *counts = cm_xcalloc(entries->elements, sizeof *counts);
            rc = delivery_counts(ctx, s, entries, counts);
            if (rc == 0)
                rc = wk_process(ctx, s, entries, counts);
            free(counts);
        }
        freeReplyObject(r);
        failed = failed || rc != 0;
    }
    return failed ? -1 : 0;
}

int wk_prune_consumers(wk_ctx *ctx)
{
    bool failed = false;
    for (int s = 0; s < ctx->nstreams; s++) {
        redisReply *r = cm_cluster_command(ctx->cc, ctx->slot[s], "XINFO CONSUMERS %s %s", ctx->streams[s],
                                           ctx->group);
        if (!r) {   /* its master unavailable: the other partitions go on */
            failed = true;
            continue;
        }
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            const redisReply *c = r->element[i];
            const char *name = NULL;
            long long pending = -1, idle = -1;
            for (size_t j = 0; c->type == REDIS_REPLY_ARRAY && j + 1 < c->elements; j += 2) {
                const redisReply *k = c->element[j], *v = c->element[j + 1];
                if (!cm_reply_is_str(k))
                    continue;
                if (!strcmp(k->str, "name") && cm_reply_is_str(v))
                    name = v->str;
                else if (!strcmp(k->str, "pending"))
                    pending = cm_reply_ll(v, -1);
                else if (!strcmp(k->str, "idle"))
                    idle = cm_reply_ll(v, -1);
            }
            /* never remove a consumer that still has pending entries */
            if (name && strcmp(name, ctx->consumer) != 0 && pending == 0 && idle > 3600000) {
                redisReply *d = cm_cluster_command(ctx->cc, ctx->slot[s], "XGROUP DELCONSUMER %s %s %s",
                                                   ctx->streams[s], ctx->group, name);
                freeReplyObject(d);
            }
        }
        freeReplyObject(r);
    }
    return failed ? -1 : 0;
}
