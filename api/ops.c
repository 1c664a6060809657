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
#include "event_store/deadletter.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#define DLQ_LIST_MAX 1000   /* dead letters listed per group (oldest first) */
#define DLQ_RETRY_MAX ES_DLQ_RETRY_OLDEST_MAX  /* dead letters re-delivered by one bulk request */

/* XINFO GROUPS <bus>. Returns 0 with *out (caller frees; NULL when the bus
 * does not exist yet), or -1 after answering 503. */
static int groups_info(api_req *rq, api_redis *t, redisReply **out)
{
    *out = NULL;
    redisReply *r = redisCommand(t->c, "XINFO GROUPS %s", g_api.bus);
    if (r && !t->c->err && r->type == REDIS_REPLY_ERROR && strstr(r->str, "no such key")) {
        freeReplyObject(r);
        return 0;
    }
    if (!api_redis_ok(t, r)) {
        api_redis_fail(rq, t->fault, t->err);
        return -1;
    }
    *out = r;
    return 0;
}

static size_t ngroups(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
}

api_flow api_h_workers(api_req *rq)
{
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    redisReply *r;
    if (groups_info(rq, t, &r) != 0)
        return API_DONE;
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"groups\":[");
    for (size_t i = 0; i < ngroups(r); i++) {
        const redisReply *g = r->element[i];
        const redisReply *name = api_kv_field(g, "name"), *last = api_kv_field(g, "last-delivered-id");
        const redisReply *lag = api_kv_field(g, "lag");
        if (i)
            cm_buf_putc(o, ',');
        cm_buf_puts(o, "{\"group\":");
        api_json_str_or_null(o, cm_reply_is_str(name) ? name->str : NULL, cm_reply_is_str(name) ? name->len : 0);
        cm_buf_printf(o, ",\"consumers\":%lld,\"pending\":%lld,\"lag\":",
                      cm_reply_ll(api_kv_field(g, "consumers"), 0), cm_reply_ll(api_kv_field(g, "pending"), 0));
        if (lag && lag->type == REDIS_REPLY_INTEGER)
            cm_buf_printf(o, "%lld", lag->integer);
        else
            cm_buf_puts(o, "null");   /* Redis cannot tell (entries were deleted) */
        cm_buf_puts(o, ",\"last_delivered_id\":");
        api_json_str_or_null(o, cm_reply_is_str(last) ? last->str : NULL, cm_reply_is_str(last) ? last->len : 0);
        cm_buf_putc(o, '}');
    }
    cm_buf_puts(o, "]}");
    if (r)
        freeReplyObject(r);
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

api_flow api_h_dead_letters(api_req *rq)
{
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    for (int g = 0; g < CM_W_COUNT; g++) {
        char dlq[512];
        es_dlq_stream(g_api.bus, cm_group_names[g], dlq, sizeof dlq);
        redisAppendCommand(t->c, "XRANGE %s - + COUNT %d", dlq, DLQ_LIST_MAX);
    }
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"dead_letters\":[");
    bool first = true;
    int failed = 0;
    for (int g = 0; g < CM_W_COUNT; g++) {
        redisReply *r = NULL;
        if (redisGetReply(t->c, (void **)&r) != REDIS_OK) {
            snprintf(t->err, sizeof t->err, "redis: %s", t->c->errstr);
            api_redis_drop(t);
            failed = 2;
            break;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(t->err, sizeof t->err, "redis: %s", r->str);
            failed = 1;
        }
        for (size_t i = 0; !failed && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            if (!first)
                cm_buf_putc(o, ',');
            first = false;
            dead_letter_json(o, cm_group_names[g], r->element[i]);
        }
        freeReplyObject(r);
    }
    cm_buf_puts(o, "]}");
    if (failed == 2)
        api_redis_fail(rq, CM_REDIS_UNREACHABLE, t->err);
    else if (failed)
        api_redis_fail(rq, cm_redis_fault_of_error(t->err, strlen(t->err)), t->err);
    else
        api_reply(rq, 200);
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

/* Answers a failed call of an event-store function on t (its message in
 * t->err): unreachable after an I/O error (the connection is dropped), else
 * by the error's text. */
static void redis_call_failed(api_req *rq, api_redis *t)
{
    if (t->c->err) {
        api_redis_drop(t);
        api_redis_fail(rq, CM_REDIS_UNREACHABLE, t->err);
    } else {
        api_redis_fail(rq, cm_redis_fault_of_error(t->err, strlen(t->err)), t->err);
    }
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
    for (int g = 0; g < CM_W_COUNT; g++) {
        char dlq[512];
        es_dlq_stream(g_api.bus, cm_group_names[g], dlq, sizeof dlq);
        redisAppendCommand(t->c, "XRANGE %s %s %s COUNT 1", dlq, id, id);
    }
    int found = -1, failed = 0;
    for (int g = 0; g < CM_W_COUNT; g++) {
        redisReply *r = NULL;
        if (redisGetReply(t->c, (void **)&r) != REDIS_OK) {
            snprintf(t->err, sizeof t->err, "redis: %s", t->c->errstr);
            api_redis_drop(t);
            api_redis_fail(rq, CM_REDIS_UNREACHABLE, t->err);
            return API_DONE;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(t->err, sizeof t->err, "redis: %s", r->str);
            failed = 1;
        } else if (found < 0 && (only < 0 || g == only) && r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
            found = g;
        }
        freeReplyObject(r);
    }
    if (failed) {
        api_redis_fail(rq, cm_redis_fault_of_error(t->err, strlen(t->err)), t->err);
        return API_DONE;
    }
    int rc = found < 0 ? ES_ENOTFOUND
                       : es_dlq_retry(t->c, g_api.bus, cm_group_names[found], id, t->err, sizeof t->err);
    if (rc == ES_ENOTFOUND) {
        api_error(rq, 404, "not_found", "no dead letter %s", id);
    } else if (rc != ES_OK) {
        redis_call_failed(rq, t);
    } else {
        cm_buf_puts(&rq->out, "{\"id\":");
        cm_buf_put_json_str(&rq->out, id, strlen(id));
        cm_buf_puts(&rq->out, ",\"group\":");
        cm_buf_put_json_str(&rq->out, cm_group_names[found], strlen(cm_group_names[found]));
        cm_buf_puts(&rq->out, ",\"retried\":true}");
        api_reply(rq, 200);
    }
    return API_DONE;
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
    /* one script call moves them all (event_store/lua/dlq_retry.lua) */
    long long n = es_dlq_retry_oldest(t->c, g_api.bus, cm_group_names[g], (long long)json_integer_value(jc),
                                      t->err, sizeof t->err);
    if (n < 0) {
        redis_call_failed(rq, t);
        goto out;
    }
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
    if (t) {
        redisReply *p = redisCommand(t->c, "PING");
        if (api_redis_ok(t, p))
            freeReplyObject(p);
        else
            why = t->err, t = NULL;
    }
    if (!t) {
        api_error(rq, 503, "unavailable", "redis is not reachable: %s", why ? why : "?");
        return API_DONE;
    }
    redisReply *r;
    if (groups_info(rq, t, &r) != 0)
        return API_DONE;
    cm_buf *o = &rq->out;
    bool ready = true;
    cm_buf_puts(o, "{\"redis\":\"ok\",\"missing_groups\":[");
    for (int g = 0, k = 0; g < CM_W_COUNT; g++) {
        bool have = false;
        for (size_t i = 0; i < ngroups(r) && !have; i++) {
            const redisReply *name = api_kv_field(r->element[i], "name");
            have = cm_reply_is_str(name) && !strcmp(name->str, cm_group_names[g]);
        }
        if (!have) {
            if (k++)
                cm_buf_putc(o, ',');
            cm_buf_put_json_str(o, cm_group_names[g], strlen(cm_group_names[g]));
            ready = false;
        }
    }
    if (r)
        freeReplyObject(r);
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
