/* queries.c - event-store routes: pages of a platform stream, a checkout's
 * replay, and the orders-by-client read model.
 *
 * Only the platform's own streams can be read (each partition's bus and the
 * six groups' dead-letter streams of it): a route never reads an arbitrary
 * Redis key. GET /api/event-store/streams lists them. */
#include "api/api_int.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/deadletter.h"
#include "projections/read.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

/* The platform's streams in listing order: for each partition its bus, then
 * the six groups' dead-letter streams of that bus. Index i: partition
 * i / (1 + CM_W_COUNT); kind bus when i % (1 + CM_W_COUNT) == 0. */
#define PER_PARTITION (1 + CM_W_COUNT)
static void platform_stream_name(int i, char *out, size_t outlen)
{
    cm_key bus = cm_key_bus(g_api.bus, i / PER_PARTITION);
    int k = i % PER_PARTITION;
    if (k == 0)
        snprintf(out, outlen, "%s", bus.s);
    else
        es_dlq_stream(bus.s, cm_group_names[k - 1], out, outlen);
}

/* True if name is a partition's bus or one of its dead-letter streams. */
static bool platform_stream(const char *name)
{
    /* only names that start with the bus's base can be one */
    if (strncmp(name, g_api.bus, strlen(g_api.bus)) != 0)
        return false;
    for (int i = 0; i < cm_partitions() * PER_PARTITION; i++) {
        char s[512];
        platform_stream_name(i, s, sizeof s);
        if (!strcmp(name, s))
            return true;
    }
    return false;
}

/* GET /api/event-store/streams: every stream the stream route serves, with
 * its kind and length (0 for a stream not created yet), one pipeline. */
api_flow api_h_streams(api_req *rq)
{
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);
    if (!t) {
        api_unavailable(rq, why);
        return API_DONE;
    }
    int n = cm_partitions() * PER_PARTITION;
    cm_pipe *p = cm_pipe_new(t->cc);
    for (int i = 0; i < n; i++) {
        char s[512];
        platform_stream_name(i, s, sizeof s);
        cm_pipe_command(p, api_slot(s), "XLEN %s", s);
    }
    if (!api_pipe_run(t, p)) {
        cm_pipe_free(p);
        api_redis_fail(rq, t->fault, t->err);
        return API_DONE;
    }
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"streams\":[");
    for (int i = 0; i < n; i++) {
        redisReply *r = cm_pipe_take(p, (size_t)i);
        if (!api_redis_ok(t, r) || r->type != REDIS_REPLY_INTEGER) {
            /* an error (WRONGTYPE) or a foreign reply */
            if (t->fault == CM_REDIS_OK) {
                freeReplyObject(r);
                snprintf(t->err, sizeof t->err, "XLEN: not an integer");
                t->fault = CM_REDIS_PERMANENT;
            }
            cm_pipe_free(p);
            api_redis_fail(rq, t->fault, t->err);
            return API_DONE;
        }
        char s[512];
        platform_stream_name(i, s, sizeof s);
        if (i)
            cm_buf_putc(o, ',');
        cm_buf_puts(o, "{\"stream\":");
        cm_buf_put_json_str(o, s, strlen(s));
        cm_buf_printf(o, ",\"kind\":\"%s\",\"partition\":%d,\"length\":%lld}",
                      i % PER_PARTITION ? "dead_letters" : "bus", i / PER_PARTITION, r->integer);
        freeReplyObject(r);
    }
    cm_pipe_free(p);
    cm_buf_puts(o, "]}");
    api_reply(rq, 200);
    return API_DONE;
}

/* Maps a failed store call to 503 (Redis) or 500 (undecodable data). */
static void store_failed(api_req *rq, api_redis *t, int rc)
{
    if (rc == ES_EREDIS)
        api_redis_failed_call(rq, t, NULL);
    else
        api_error(rq, 500, "internal", "stored data cannot be decoded: %s", t->err);
}
api_flow api_h_stream_events(api_req *rq)
{
    const char *stream = rq->param;
    if (!platform_stream(stream)) {
        api_error(rq, 404, "unknown_stream",
                  "no platform stream named %s (a partition's bus, or <bus>.dlq.<group>; "
                  "GET /api/event-store/streams lists them)",
                  stream);
        return API_DONE;
    }
    const char *after = api_query(rq, "after");
    const char *count_s = api_query(rq, "count");
    int64_t count = PAGE_DEFAULT;
    if (count_s && cm_parse_int(count_s, 1, PAGE_MAX, &count) != 0) {
        api_error(rq, 400, "invalid_request", "count must be an integer in 1..%d", PAGE_MAX);
        return API_DONE;
    }
    if (after && *after && !api_stream_id_valid(after)) {
        api_error(rq, 400, "invalid_request", "after must be a stream entry id like 1700000000000-0");
        return API_DONE;
    }
    cm_buf *o = &rq->out;
    if (after && !strcmp(after, "18446744073709551615-18446744073709551615")) {
        /* nothing can follow the largest id (and Redis refuses the range) */
        cm_buf_puts(o, "{\"stream\":");
        cm_buf_put_json_str(o, stream, strlen(stream));
        cm_buf_puts(o, ",\"events\":[],\"next\":null}");
        api_reply(rq, 200);
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    es_event **evs = NULL;
    size_t n = 0;
    char *next = NULL;
    int rc = es_stream_fetch(t->cc, stream, after, (size_t)count, &evs, &n, &next, t->err, sizeof t->err);
    if (rc != ES_OK) {
        store_failed(rq, t, rc);
        return API_DONE;
    }
    cm_buf_puts(o, "{\"stream\":");
    cm_buf_put_json_str(o, stream, strlen(stream));
    cm_buf_puts(o, ",\"events\":");
    es_events_to_json(evs, n, o);
    cm_buf_puts(o, ",\"next\":");
    api_json_str_or_null(o, next, next ? strlen(next) : 0);
    cm_buf_putc(o, '}');
    free(next);
    es_events_free(evs, n);
    api_reply(rq, 200);
    return API_DONE;
}

api_flow api_h_replay(api_req *rq)
{
    const char *id = rq->param;
    if (!cm_id_valid(id, rq->param_len, API_ID_MAX)) {
        api_error(rq, 404, "not_found", "no such checkout (ids are 1..64 characters of [A-Za-z0-9_-])");
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", id);
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_fetch(t->cc, "checkout", id, &evs, &n, t->err, sizeof t->err);
    if (rc != ES_OK) {
        store_failed(rq, t, rc);
        return API_DONE;
    }
    if (n == 0) {
        es_events_free(evs, n);
        api_error(rq, 404, "not_found", "no checkout %s", id);
        return API_DONE;
    }
    es_checkout_state st;
    es_checkout_fold(evs, n, &st);
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"checkout_id\":");
    cm_buf_put_json_str(o, id, strlen(id));
    cm_buf_puts(o, ",\"events\":");
    es_events_to_json(evs, n, o);
    cm_buf_puts(o, ",\"state\":");
    es_checkout_state_json(&st, o);
    cm_buf_putc(o, '}');
    es_events_free(evs, n);
    api_reply(rq, 200);
    return API_DONE;
}

api_flow api_h_orders_by_client(api_req *rq)
{
    const char *id = rq->param;
    if (!cm_id_valid(id, rq->param_len, API_ID_MAX)) {
        api_error(rq, 400, "invalid_request", "client_id must be 1..64 characters of [A-Za-z0-9_-]");
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    /* the client's orders, summed over the partitions (projections/read.h) */
    pj_client_view v;
    char err[256];
    int rc = pj_read_client(t->cc, id, &v, err, sizeof err);
    if (rc != PJ_OK) {
        api_redis_failed_call(rq, t, err);
        return API_DONE;
    }
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"client_id\":");
    cm_buf_put_json_str(o, id, strlen(id));
    cm_buf_printf(o, ",\"total_orders\":%lld,\"last_order_id\":", v.total_orders);
    api_json_str_or_null(o, v.last_order_id[0] ? v.last_order_id : NULL, strlen(v.last_order_id));
    cm_buf_puts(o, ",\"last_checkout_id\":");
    api_json_str_or_null(o, v.last_checkout_id[0] ? v.last_checkout_id : NULL, strlen(v.last_checkout_id));
    cm_buf_puts(o, ",\"last_update_ts\":");
    api_json_num_or_str(o, v.last_update_ts[0] ? v.last_update_ts : NULL, strlen(v.last_update_ts));
    cm_buf_putc(o, '}');
    api_reply(rq, 200);
    return API_DONE;
}
