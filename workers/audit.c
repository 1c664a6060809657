/* audit.c - the audit worker: one hash-chained record per event
 * (projections/audit.h), a batch at a time.
 *
 * A batch costs two round trips: read the head and the seen marks of the
 * batch's aggregates (pipelined, head first), then one script that appends
 * the records, chained in C from that head, only if the head did not move
 * (workers/lua/audit_append.lua). When another audit copy appended in
 * between, the script refuses and the batch is re-read and re-chained.
 *
 * Why the head is read before the seen marks: any append after the head read
 * changes the head, so the compare-and-set fails; a seen mark read after the
 * head is therefore current whenever the script accepts. */
#include "workers/wk.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"
#include "projections/audit.h"
#include "projections/projection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char wk_lua_audit_append[];
static cm_script k_append = {.src = wk_lua_audit_append};

#define MAX_CAS 200   /* attempts before the batch is retried later */

typedef struct audit_state {
    cm_series *records;   /* audit_records_total */
    cm_series *races;     /* audit_cas_retries_total */
} audit_state;

/* One event of the batch and what the audit does with it. */
typedef struct item {
    const es_event *ev;
    char field[320];              /* "<aggregate>:<aggregate_id>" */
    char digest[PJ_AUDIT_HEX];
    char hash[PJ_AUDIT_HEX];
    bool write;                   /* not seen yet: gets a record */
    bool dup_in_batch;            /* same (aggregate, seq) earlier in this batch */
} item;

static int audit_init(wk_ctx *ctx, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    audit_state *st = cm_xcalloc(1, sizeof *st);
    st->records = cm_counter("audit_records_total", "audit records appended", "");
    st->races = cm_counter("audit_cas_retries_total", "batches re-chained because another audit copy appended first", "");
    wk_set_state(ctx, st);
    return 0;
}

static void audit_fini(wk_ctx *ctx)
{
    free(wk_state(ctx));
    wk_set_state(ctx, NULL);
}

/* Reads the head and, for every item, whether its event already has a
 * record. Returns 0 or -1 with err. */
static int read_state(redisContext *c, item *it, size_t n, char head[PJ_AUDIT_HEX], char *err, size_t errlen)
{
    cm_argv a = {0};
    cm_argv_adds(&a, "HMGET");
    cm_argv_adds(&a, PJ_AUDIT_SEEN_KEY);
    for (size_t i = 0; i < n; i++)
        cm_argv_adds(&a, it[i].field);
    redisAppendCommand(c, "HGET %s hash", PJ_AUDIT_HEAD_KEY);
    redisAppendCommandArgv(c, a.n, (const char **)a.v, a.len);
    cm_argv_free(&a);
    redisReply *h = NULL, *s = NULL;
    int rc = -1;
    if (redisGetReply(c, (void **)&h) != REDIS_OK || redisGetReply(c, (void **)&s) != REDIS_OK) {
        snprintf(err, errlen, "redis: %s", c->errstr);
        goto done;
    }
    if (h->type == REDIS_REPLY_ERROR || s->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", h->type == REDIS_REPLY_ERROR ? h->str : s->str);
        goto done;
    }
    if (s->type != REDIS_REPLY_ARRAY || s->elements != n) {
        snprintf(err, errlen, "unexpected HMGET reply for %s", PJ_AUDIT_SEEN_KEY);
        goto done;
    }
    snprintf(head, PJ_AUDIT_HEX, "%s", cm_reply_is_str(h) ? h->str : "");
    for (size_t i = 0; i < n; i++) {
        const redisReply *v = s->element[i];
        int64_t seq = it[i].ev->seq;
        bool seen = cm_reply_is_str(v) && (size_t)seq <= v->len && v->str[seq - 1] == '1';
        it[i].write = !seen && !it[i].dup_in_batch;
    }
    rc = 0;
done:
    freeReplyObject(h);
    freeReplyObject(s);
    return rc;
}

/* Chains the records to be written from head and appends them if the head
 * is unchanged. Returns 1 appended (or nothing to append), 0 the head moved,
 * -1 error with err. */
static int append_chain(redisContext *c, item *it, size_t n, const char *head, long long *written, char *err,
                        size_t errlen)
{
    cm_argv a = {0};
    cm_argv_adds(&a, PJ_AUDIT_LOG_KEY);
    cm_argv_adds(&a, PJ_AUDIT_HEAD_KEY);
    cm_argv_adds(&a, PJ_AUDIT_SEEN_KEY);
    cm_argv_adds(&a, head);
    cm_argv_adds(&a, "0");   /* n, set below */
    const char *prev = head[0] ? head : pj_audit_genesis;
    long long k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!it[i].write)
            continue;
        const es_event *ev = it[i].ev;
        pj_audit_rec rec = {ev->event_id, ev->entry_id, ev->type, ev->aggregate_id, it[i].digest};
        pj_audit_hash(prev, &rec, it[i].hash);
        cm_argv_adds(&a, ev->event_id);
        cm_argv_adds(&a, ev->entry_id);
        cm_argv_adds(&a, ev->type);
        cm_argv_adds(&a, ev->aggregate_id);
        cm_argv_adds(&a, it[i].digest);
        cm_argv_adds(&a, prev);
        cm_argv_adds(&a, it[i].hash);
        cm_argv_adds(&a, it[i].field);
        cm_argv_addll(&a, (long long)ev->seq);
        prev = it[i].hash;
        k++;
    }
    *written = k;
    if (k == 0) {
        cm_argv_free(&a);
        return 1;
    }
    free(a.v[4]);
    a.v[4] = cm_xasprintf("%lld", k);
    a.len[4] = strlen(a.v[4]);
    redisReply *r = cm_script_call(c, &k_append, 3, &a);
    cm_argv_free(&a);
    if (cm_reply_failed(c, r, err, errlen))
        return -1;
    const redisReply *st = cm_reply_elem(r, 0);
    int rc;
    if (cm_reply_is_str(st) && !strcmp(st->str, "ok"))
        rc = 1;
    else if (cm_reply_is_str(st) && !strcmp(st->str, "moved"))
        rc = 0;
    else {
        snprintf(err, errlen, "unexpected audit script reply");
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

/* Marks items whose (aggregate, seq) appeared earlier in the batch. */
static void mark_batch_dups(item *it, size_t n)
{
    for (size_t i = 1; i < n; i++)
        for (size_t j = 0; j < i && !it[i].dup_in_batch; j++)
            if (!it[j].dup_in_batch && it[j].ev->seq == it[i].ev->seq && !strcmp(it[j].field, it[i].field))
                it[i].dup_in_batch = true;
}

static void audit_batch(wk_ctx *ctx, es_event *const *evs, size_t n, wk_result *results)
{
    audit_state *st = wk_state(ctx);
    redisContext *c = wk_redis(ctx);
    item *it = cm_xcalloc(n, sizeof *it);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = WK_ACK;
        if (evs[i]->seq > PJ_MAX_SEQ) {
            wk_fail_reason(ctx, "seq %lld is beyond the %d events per aggregate the audit dedupe tracks",
                           (long long)evs[i]->seq, PJ_MAX_SEQ);
            results[i] = WK_DEAD;
            continue;
        }
        it[m].ev = evs[i];
        snprintf(it[m].field, sizeof it[m].field, "%s:%s", evs[i]->aggregate, evs[i]->aggregate_id);
        pj_audit_digest(evs[i]->payload, evs[i]->payload_len, it[m].digest);
        m++;
    }
    mark_batch_dups(it, m);
    if (m == 0) {
        free(it);
        return;
    }
    char err[256] = "";
    int rc = -1;
    long long written = 0;
    for (int attempt = 0; attempt < MAX_CAS && !wk_stopping(ctx); attempt++) {
        char head[PJ_AUDIT_HEX];
        if (read_state(c, it, m, head, err, sizeof err) != 0) {
            rc = -1;
            break;
        }
        rc = append_chain(c, it, m, head, &written, err, sizeof err);
        if (rc != 0)
            break;
        cm_series_inc(st->races);
        if (attempt >= 3)   /* heavy contention: step aside a little */
            cm_sleep_ms(1 + (int64_t)(rand() % 5));
    }
    if (rc == 1) {
        cm_series_add(st->records, (uint64_t)written);
    } else {
        wk_fail_reason(ctx, "audit append failed: %s", rc == 0 ? "the head kept moving" : err);
        for (size_t i = 0; i < n; i++)
            if (results[i] == WK_ACK)
                results[i] = WK_RETRY;
    }
    free(it);
}

const wk_def wk_audit = {
    .id = CM_W_AUDIT,
    .batch = audit_batch,
    .init = audit_init,
    .fini = audit_fini,
};
