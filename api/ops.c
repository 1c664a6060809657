/* ops.c - operator routes: consumer groups, dead letters (list, retry one,
 * retry a group's oldest in bulk), /health, /ready, /metrics.
 *
 * /health answers from memory (no Redis call): it says the process serves
 * HTTP. /ready says whether it can do its work: Redis reachable (the shared
 * state first, so a known-down Redis costs no timeout) and the six consumer
 * groups present. */
#include "api/api_int.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/names.h"
#include "common/xmalloc.h"
#include "event_store/deadletter.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DLQ_LIST_MAX 1000   /* dead letters listed per group (oldest first) */
#define DLQ_RETRY_MAX ES_DLQ_RETRY_OLDEST_MAX  /* dead letters re-delivered by one bulk request */

/* XINFO GROUPS of every partition's bus, pipelined. Returns 0 with out[p]
 * (caller frees each with free_groups; NULL where the bus does not exist
 * yet), or -1 after answering 503. */
static int groups_info(api_req *rq, api_redis *t, redisReply **out)
{
    int np = cm_partitions();
    cm_pipe *pipe = cm_pipe_new(t->cc);
    for (int p = 0; p < np; p++) {
        out[p] = NULL;
        cm_key bus = cm_key_bus(g_api.bus, p);
        cm_pipe_command(pipe, api_slot(bus.s), "XINFO GROUPS %s", bus.s);
    }
    int rc = api_pipe_run(t, pipe) ? 0 : -1;
    for (int p = 0; rc == 0 && p < np; p++) {
        redisReply *r = cm_pipe_take(pipe, (size_t)p);
        if (r && r->type == REDIS_REPLY_ERROR && strstr(r->str, "no such key")) {
            freeReplyObject(r);
            continue;
        }
        if (!api_redis_ok(t, r)) {   /* frees r */
            rc = -1;
            break;
        }
        out[p] = r;
    }
    cm_pipe_free(pipe);
    if (rc != 0) {
        api_redis_fail(rq, t->fault, t->err);
        for (int p = 0; p < np; p++)
            if (out[p]) {
                freeReplyObject(out[p]);
                out[p] = NULL;
            }
    }
    return rc;
}

static void free_groups(redisReply **rs)
{
    for (int p = 0; p < cm_partitions(); p++)
        if (rs[p])
            freeReplyObject(rs[p]);
    free(rs);
}

static size_t ngroups(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
}

/* The entry of group `name` in one XINFO GROUPS reply, or NULL. */
static const redisReply *group_of(const redisReply *r, const char *name)
{
    for (size_t i = 0; i < ngroups(r); i++) {
        const redisReply *n = api_kv_field(r->element[i], "name");
        if (cm_reply_is_str(n) && !strcmp(n->str, name))
            return r->element[i];
    }
    return NULL;
}

#define WORKERS_GROUPS_MAX 64   /* distinct group names listed */

/* GET /api/workers: each group's totals over the partitions (consumers: the
 * most on one partition; pending and lag: sums, lag null when a partition
 * cannot tell; last_delivered_id: the greatest), and "partitions": the same
 * per partition's bus. */
api_flow api_h_workers(api_req *rq)
{
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    int np = cm_partitions();
    redisReply **rs = cm_xcalloc((size_t)np, sizeof *rs);
    if (groups_info(rq, t, rs) != 0) {
        free(rs);
        return API_DONE;
    }
    const char *names[WORKERS_GROUPS_MAX];
    size_t nn = 0;
    for (int p = 0; p < np; p++)
        for (size_t i = 0; i < ngroups(rs[p]) && nn < WORKERS_GROUPS_MAX; i++) {
            const redisReply *name = api_kv_field(rs[p]->element[i], "name");
            bool seen = !cm_reply_is_str(name);
            for (size_t k = 0; k < nn && !seen; k++)
                seen = !strcmp(names[k], name->str);
            if (!seen)
                names[nn++] = name->str;
        }
    cm_buf *o = &rq->out;
    cm_buf parts = {0};
    cm_buf_puts(o, "{\"groups\":[");
    for (size_t k = 0; k < nn; k++) {
        long long consumers = 0, pending = 0, lag = 0;
        bool lag_known = true;
        const char *last = NULL;
        cm_buf_reset(&parts);
        for (int p = 0; p < np; p++) {
            const redisReply *g = group_of(rs[p], names[k]);
            cm_key bus = cm_key_bus(g_api.bus, p);
            if (p)
                cm_buf_putc(&parts, ',');
            cm_buf_printf(&parts, "{\"partition\":%d,\"stream\":", p);
            cm_buf_put_json_str(&parts, bus.s, strlen(bus.s));
            if (!g) {   /* the group is not on this partition's bus (yet) */
                cm_buf_puts(&parts, ",\"consumers\":0,\"pending\":0,\"lag\":null,\"last_delivered_id\":null}");
                lag_known = false;
                continue;
            }
            const redisReply *lr = api_kv_field(g, "lag"), *ld = api_kv_field(g, "last-delivered-id");
            long long c = cm_reply_ll(api_kv_field(g, "consumers"), 0), pd = cm_reply_ll(api_kv_field(g, "pending"), 0);
            consumers = c > consumers ? c : consumers;
            pending += pd;
            cm_buf_printf(&parts, ",\"consumers\":%lld,\"pending\":%lld,\"lag\":", c, pd);
            if (lr && lr->type == REDIS_REPLY_INTEGER) {
                lag += lr->integer;
                cm_buf_printf(&parts, "%lld", lr->integer);
            } else {
                lag_known = false;
                cm_buf_puts(&parts, "null");   /* Redis cannot tell (entries were deleted) */
            }
            cm_buf_puts(&parts, ",\"last_delivered_id\":");
            api_json_str_or_null(&parts, cm_reply_is_str(ld) ? ld->str : NULL, cm_reply_is_str(ld) ? ld->len : 0);
            cm_buf_putc(&parts, '}');
            if (cm_reply_is_str(ld) && api_stream_id_valid(ld->str) &&
                (!last || api_stream_id_cmp(ld->str, last) > 0))
                last = ld->str;
        }
        if (k)
            cm_buf_putc(o, ',');
        cm_buf_puts(o, "{\"group\":");
        cm_buf_put_json_str(o, names[k], strlen(names[k]));
        cm_buf_printf(o, ",\"consumers\":%lld,\"pending\":%lld,\"lag\":", consumers, pending);
        if (lag_known)
            cm_buf_printf(o, "%lld", lag);
        else
            cm_buf_puts(o, "null");
        cm_buf_puts(o, ",\"last_delivered_id\":");
        api_json_str_or_null(o, last, last ? strlen(last) : 0);
        cm_buf_puts(o, ",\"partitions\":[");
        cm_buf_put(o, parts.data, parts.len);
        cm_buf_puts(o, "]}");
    }
    cm_buf_puts(o, "]}");
    cm_buf_free(&parts);
    free_groups(rs);
    api_reply(rq, 200);
    return API_DONE;
}

/* Appends one dead letter (an XRANGE entry of group's dead-letter stream). */
static void dead_letter_json(cm_buf *o, const char *group, const redisReply *e)
{
    const redisReply *id = cm_reply_elem(e, 0), *f = cm_reply_elem(e, 1);
    const redisReply *reason = api_kv_field(f, "reason"), *orig = api_kv_field(f, "entry_id");
    const redisReply *type = api_kv_field(f, "type"), *payload = api_kv_field(f, "payload");
    const redisReply *ts = api_kv_field(f, "ts"), *src = api_kv_field(f, "stream");
#define STR(r) (cm_reply_is_str(r) ? (r)->str : NULL), (cm_reply_is_str(r) ? (r)->len : 0)
    cm_buf_puts(o, "{\"id\":");
    api_json_str_or_null(o, STR(id));
    cm_buf_puts(o, ",\"group\":");
    cm_buf_put_json_str(o, group, strlen(group));
    cm_buf_puts(o, ",\"reason\":");
    api_json_str_or_null(o, STR(reason));
    cm_buf_printf(o, ",\"attempts\":%lld,\"stream\":", cm_reply_ll(api_kv_field(f, "attempts"), 0));
    api_json_str_or_null(o, STR(src));
    cm_buf_puts(o, ",\"event\":{\"id\":");
    api_json_str_or_null(o, STR(orig));
    cm_buf_puts(o, ",\"type\":");
    api_json_str_or_null(o, STR(type));
    cm_buf_puts(o, ",\"payload\":");
    json_t *pj = cm_reply_is_str(payload) ? json_loadb(payload->str, payload->len, 0, NULL) : NULL;
    if (json_is_object(pj))
        cm_buf_put(o, payload->str, payload->len);   /* the envelope, as the object it is */
    else
        api_json_str_or_null(o, STR(payload));      /* a poison payload, shown as text */
    json_decref(pj);
    cm_buf_puts(o, ",\"ts\":");
    api_json_num_or_str(o, STR(ts));
    cm_buf_puts(o, "}}");
#undef STR
}

/* Queues XRANGE start end COUNT count on each group's dead-letter stream of
 * every partition, group-major (reply k is group k / np, partition k % np),
 * each to its stream's slot; returns np. */
static int append_dlq_ranges(cm_pipe *pipe, const char *start, const char *end, const char *count)
{
    int np = cm_partitions();
    for (int g = 0; g < CM_W_COUNT; g++)
        for (int p = 0; p < np; p++) {
            char dlq[512];
            es_dlq_stream(cm_key_bus(g_api.bus, p).s, cm_group_names[g], dlq, sizeof dlq);
            cm_pipe_command(pipe, api_slot(dlq), "XRANGE %s %s %s COUNT %s", dlq, start, end, count);
        }
    return np;
}

api_flow api_h_dead_letters(api_req *rq)
{
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    char count[16];
    snprintf(count, sizeof count, "%d", DLQ_LIST_MAX);
    cm_pipe *pipe = cm_pipe_new(t->cc);
    int np = append_dlq_ranges(pipe, "-", "+", count);
    bool ok = api_pipe_run(t, pipe);
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"dead_letters\":[");
    bool first = true;
    for (int gp = 0; ok && gp < CM_W_COUNT * np; gp++) {
        int g = gp / np;
        redisReply *r = cm_pipe_take(pipe, (size_t)gp);
        if (!api_redis_ok(t, r)) {   /* frees r */
            ok = false;
            break;
        }
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            if (!first)
                cm_buf_putc(o, ',');
            first = false;
            dead_letter_json(o, cm_group_names[g], r->element[i]);
        }
        freeReplyObject(r);
    }
    cm_pipe_free(pipe);
    cm_buf_puts(o, "]}");
    if (ok)
        api_reply(rq, 200);
    else
        api_redis_fail(rq, t->fault, t->err);
    return API_DONE;
}

/* Index of consumer group name in cm_group_names, or -1. */
static int group_index(const char *name)
{
    for (int g = 0; name && g < CM_W_COUNT; g++)
        if (!strcmp(name, cm_group_names[g]))
            return g;
    return -1;
}

/* Answers a failed call of an event-store function made on c (its message
 * in t->err): unreachable after an I/O error, else by the error's text. */
static void redis_call_failed(api_req *rq, api_redis *t, const redisContext *c)
{
    if (!c || c->err)
        api_redis_fail(rq, CM_REDIS_UNREACHABLE, t->err);
    else
        api_redis_fail(rq, cm_redis_fault_of_error(t->err, strlen(t->err)), t->err);
}

/* A connection of its own to the master of slot (the dead-letter calls of
 * event_store/deadletter.c take a redisContext): NULL with t->err. The
 * caller frees it. A slot moved meanwhile answers MOVED: a 503, and the
 * retry the client makes finds the new owner. */
static redisContext *slot_conn(api_redis *t, int slot)
{
    cm_redis_url u;
    if (cm_cluster_slot_addr(t->cc, slot, &u) != 0) {
        snprintf(t->err, sizeof t->err, "no master is known for slot %d", slot);
        return NULL;
    }
    return cm_redis_connect_url(&u, (int)g_api.redis_timeout_ms, t->err, sizeof t->err);
}

/* Dead-letter ids are per stream, so two groups may hold the same id:
 * ?group=<group> names the one meant (without it, the first group in table
 * order that holds the id is retried). */
api_flow api_h_dead_letter_retry(api_req *rq)
{
    const char *id = rq->param;
    if (!strchr(id, '-') || !api_stream_id_valid(id)) {
        api_error(rq, 404, "not_found", "no dead letter %s (ids look like 1700000000000-0)", id);
        return API_DONE;
    }
    const char *only_s = api_query(rq, "group");
    int only = group_index(only_s);
    if (only_s && only < 0) {
        api_error(rq, 400, "invalid_request", "group must be one of the six consumer groups (choreo-...)");
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    cm_pipe *pipe = cm_pipe_new(t->cc);
    int np = append_dlq_ranges(pipe, id, id, "1");
    int found = -1;   /* group * np + partition */
    bool ok = api_pipe_run(t, pipe);
    for (int gp = 0; ok && gp < CM_W_COUNT * np; gp++) {
        int g = gp / np;
        redisReply *r = cm_pipe_take(pipe, (size_t)gp);
        if (!api_redis_ok(t, r)) {   /* frees r */
            ok = false;
            break;
        }
        if (found < 0 && (only < 0 || g == only) && r->type == REDIS_REPLY_ARRAY && r->elements > 0)
            found = gp;
        freeReplyObject(r);
    }
    cm_pipe_free(pipe);
    if (!ok) {
        api_redis_fail(rq, t->fault, t->err);
        return API_DONE;
    }
    const char *group = found < 0 ? NULL : cm_group_names[found / np];
    int rc = ES_ENOTFOUND;
    if (found >= 0) {
        cm_key bus = cm_key_bus(g_api.bus, found % np);
        redisContext *c = slot_conn(t, api_slot(bus.s));
        rc = c ? es_dlq_retry(c, bus.s, group, id, t->err, sizeof t->err) : ES_EREDIS;
        if (rc != ES_OK && rc != ES_ENOTFOUND) {
            redis_call_failed(rq, t, c);
            if (c)
                redisFree(c);
            return API_DONE;
        }
        redisFree(c);
    }
    if (rc == ES_ENOTFOUND) {
        api_error(rq, 404, "not_found", "no dead letter %s", id);
    } else {
        cm_buf_puts(&rq->out, "{\"id\":");
        cm_buf_put_json_str(&rq->out, id, strlen(id));
        cm_buf_puts(&rq->out, ",\"group\":");
        cm_buf_put_json_str(&rq->out, group, strlen(group));
        cm_buf_puts(&rq->out, ",\"retried\":true}");
        api_reply(rq, 200);
    }
    return API_DONE;
}

/* How many of each partition's dead letters of group are among the group's
 * `want` oldest over all partitions (by entry id). Returns a new array of
 * cm_partitions() counts, or NULL with t->err. With one partition: {want}. */
static long long *oldest_shares(api_redis *t, const char *group, long long want)
{
    int np = cm_partitions();
    long long *share = cm_xcalloc((size_t)np, sizeof *share);
    if (np == 1) {
        share[0] = want;
        return share;
    }
    cm_pipe *pipe = cm_pipe_new(t->cc);
    for (int p = 0; p < np; p++) {
        char dlq[512];
        es_dlq_stream(cm_key_bus(g_api.bus, p).s, group, dlq, sizeof dlq);
        cm_pipe_command(pipe, api_slot(dlq), "XRANGE %s - + COUNT %lld", dlq, want);
    }
    redisReply **rs = cm_xcalloc((size_t)np, sizeof *rs);
    bool ok = api_pipe_run(t, pipe);
    for (int p = 0; ok && p < np; p++) {
        rs[p] = cm_pipe_take(pipe, (size_t)p);
        if (!api_redis_ok(t, rs[p])) {   /* frees it */
            rs[p] = NULL;
            ok = false;
        } else if (rs[p]->type != REDIS_REPLY_ARRAY) {
            snprintf(t->err, sizeof t->err, "redis: XRANGE: not an array");
            t->fault = CM_REDIS_PERMANENT;
            ok = false;
        }
    }
    cm_pipe_free(pipe);
    /* merge: take the oldest head among the partitions, want times */
    size_t *at = cm_xcalloc((size_t)np, sizeof *at);
    for (long long k = 0; ok && k < want; k++) {
        int best = -1;
        const char *best_id = NULL;
        for (int p = 0; p < np; p++) {
            if (at[p] >= rs[p]->elements)
                continue;
            const redisReply *id = cm_reply_elem(rs[p]->element[at[p]], 0);
            if (cm_reply_is_str(id) && (!best_id || api_stream_id_cmp(id->str, best_id) < 0)) {
                best = p;
                best_id = id->str;
            }
        }
        if (best < 0)
            break;
        at[best]++;
        share[best]++;
    }
    free(at);
    for (int p = 0; p < np; p++)
        if (rs[p])
            freeReplyObject(rs[p]);
    free(rs);
    if (!ok) {
        free(share);
        return NULL;
    }
    return share;
}

/* POST /api/dead-letters/retry {"group", "count"}: the oldest count of a
 * group's dead letters back to its redelivery stream, in one script call. */
api_flow api_h_dead_letters_retry_bulk(api_req *rq)
{
    json_error_t jerr;
    json_t *root = json_loadb(rq->body.data ? rq->body.data : "", rq->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_error(rq, 400, "invalid_json", "malformed JSON at line %d column %d: %s", jerr.line, jerr.column,
                  jerr.text);
        return API_DONE;
    }
    json_t *jg = json_object_get(root, "group"), *jc = json_object_get(root, "count");
    int g = group_index(json_string_value(jg));
    if (!json_is_object(root) || g < 0) {
        char names[256] = "";
        for (int i = 0, o = 0; i < CM_W_COUNT && o >= 0 && (size_t)o < sizeof names; i++)
            o += snprintf(names + o, sizeof names - (size_t)o, "%s%s", i ? ", " : "", cm_group_names[i]);
        api_error(rq, 400, "invalid_request", "group must be one of %s", names);
        goto out;
    }
    if (!json_is_integer(jc) || json_integer_value(jc) < 1 || json_integer_value(jc) > DLQ_RETRY_MAX) {
        api_error(rq, 400, "invalid_request", "count must be an integer in 1..%d", DLQ_RETRY_MAX);
        goto out;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        goto out;
    /* one script call per partition moves its share (event_store/lua/dlq_retry.lua) */
    long long want = (long long)json_integer_value(jc), n = 0;
    long long *share = oldest_shares(t, cm_group_names[g], want);
    if (!share) {
        api_redis_fail(rq, t->fault, t->err);
        goto out;
    }
    for (int p = 0; p < cm_partitions(); p++) {
        if (!share[p])
            continue;
        cm_key bus = cm_key_bus(g_api.bus, p);
        redisContext *c = slot_conn(t, api_slot(bus.s));
        long long k = c ? es_dlq_retry_oldest(c, bus.s, cm_group_names[g], share[p], t->err, sizeof t->err)
                        : ES_EREDIS;
        if (k < 0) {
            free(share);
            redis_call_failed(rq, t, c);
            if (c)
                redisFree(c);
            goto out;
        }
        redisFree(c);
        n += k;
    }
    free(share);
    cm_log(CM_INFO, "re-delivered %lld dead letter(s) of %s", n, cm_group_names[g]);
    cm_buf_printf(&rq->out, "{\"retried\":%lld}", n);
    api_reply(rq, 200);
out:
    json_decref(root);
    return API_DONE;
}

api_flow api_h_health(api_req *rq)
{
    cm_buf_puts(&rq->out, "{\"status\":\"ok\"}");
    api_reply(rq, 200);
    return API_DONE;
}

api_flow api_h_ready(api_req *rq)
{
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);   /* refuses at once while Redis is known down */
    if (t) {   /* every master (a single server: the one) */
        int slots[64];
        int n = cm_cluster_master_slots(t->cc, slots, 64);
        for (int i = 0; t && i < n; i++) {
            redisReply *p = cm_cluster_command(t->cc, slots[i], "PING");
            if (api_redis_ok(t, p))
                freeReplyObject(p);
            else
                why = t->err, t = NULL;
        }
    }
    if (!t) {
        api_error(rq, 503, "unavailable", "redis is not reachable: %s", why ? why : "?");
        return API_DONE;
    }
    redisReply **rs = cm_xcalloc((size_t)cm_partitions(), sizeof *rs);
    if (groups_info(rq, t, rs) != 0) {
        free(rs);
        return API_DONE;
    }
    cm_buf *o = &rq->out;
    bool ready = true;
    cm_buf_puts(o, "{\"redis\":\"ok\",\"missing_groups\":[");
    for (int g = 0, k = 0; g < CM_W_COUNT; g++) {
        bool have = true;   /* on every partition's bus */
        for (int p = 0; p < cm_partitions() && have; p++)
            have = group_of(rs[p], cm_group_names[g]) != NULL;
        if (!have) {
            if (k++)
                cm_buf_putc(o, ',');
            cm_buf_put_json_str(o, cm_group_names[g], strlen(cm_group_names[g]));
            ready = false;
        }
    }
    free_groups(rs);
    if (ready) {
        cm_buf_puts(o, "],\"status\":\"ready\"}");
        api_reply(rq, 200);
    } else {
        cm_buf_puts(o, "],\"status\":\"not_ready\",\"error\":{\"code\":\"unavailable\",\"message\":"
                       "\"consumer groups missing on the bus (workers not started?)\"}}");
        api_reply(rq, 503);
        rq->retry_after = true;
    }
    return API_DONE;
}

api_flow api_h_metrics(api_req *rq)
{
    cm_metrics_render(&rq->out);
    rq->content_type = "text/plain; version=0.0.4; charset=utf-8";
    api_reply(rq, 200);
    return API_DONE;
}
