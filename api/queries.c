/* queries.c - event-store routes: pages of a platform stream, a checkout's
 * replay, and the orders-by-client read model.
 *
 * Only the platform's own streams can be read (the bus and the six groups'
 * dead-letter streams): a route never reads an arbitrary Redis key. */
#include "api/api_int.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/deadletter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

/* True if name is the bus or one of the dead-letter streams. */
static bool platform_stream(const char *name)
{
    if (!strcmp(name, g_api.bus))
        return true;
    for (int i = 0; i < CM_W_COUNT; i++) {
        char dlq[512];
        es_dlq_stream(g_api.bus, cm_group_names[i], dlq, sizeof dlq);
        if (!strcmp(name, dlq))
            return true;
    }
    return false;
}

/* Maps a failed store call to 503 (Redis) or 500 (undecodable data). */
static void store_failed(api_req *rq, api_redis *t, int rc)
{
    if (rc == ES_EREDIS) {
        char e[256];
        snprintf(e, sizeof e, "%s", es_store_errstr(t->st));
        if (t->c->err)
            api_redis_drop(t);
        api_unavailable(rq, e);
    } else {
        api_error(rq, 500, "internal", "stored data cannot be decoded: %s", es_store_errstr(t->st));
    }
}

api_flow api_h_stream_events(api_req *rq)
{
    const char *stream = rq->param;
    if (!platform_stream(stream)) {
        api_error(rq, 404, "unknown_stream", "no platform stream named %s (the bus, or <bus>.dlq.<group>)",
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
    int rc = es_stream_page(t->st, stream, after, (size_t)count, &evs, &n, &next);
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
    int rc = es_history_read(t->st, "checkout", id, &evs, &n);
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
    redisReply *r = redisCommand(t->c,
                                 "HMGET %s total_orders last_order_id "
                                 "last_checkout_id last_update_ts",
                                 cm_key_rm_client(id).s);
    if (!api_redis_ok(t, r)) {
        api_unavailable(rq, t->err);
        return API_DONE;
    }
    const redisReply *f[4];
    for (int i = 0; i < 4; i++) {
        f[i] = cm_reply_elem(r, (size_t)i);
        if (f[i] && (f[i]->type != REDIS_REPLY_STRING || !f[i]->len))
            f[i] = NULL;
    }
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"client_id\":");
    cm_buf_put_json_str(o, id, strlen(id));
    cm_buf_printf(o, ",\"total_orders\":%lld,\"last_order_id\":", cm_reply_ll(f[0], 0));
    api_json_str_or_null(o, f[1] ? f[1]->str : NULL, f[1] ? f[1]->len : 0);
    cm_buf_puts(o, ",\"last_checkout_id\":");
    api_json_str_or_null(o, f[2] ? f[2]->str : NULL, f[2] ? f[2]->len : 0);
    cm_buf_puts(o, ",\"last_update_ts\":");
    api_json_num_or_str(o, f[3] ? f[3]->str : NULL, f[3] ? f[3]->len : 0);
    cm_buf_putc(o, '}');
    freeReplyObject(r);
    api_reply(rq, 200);
    return API_DONE;
}
