/* stats.c - GET /api/stats/sagas?window_s=N: how many sagas the bus saw
 * start, succeed and fail (by reason) in the last N seconds (default 60,
 * 1..3600), for the console's overview. Counted inside Redis by
 * lua/saga_stats.lua over at most STATS_SCAN_MAX bus entries, newest first;
 * "truncated" says the window held more (the counts are then a lower bound). */
#include "api/api_int.h"
#include "common/config.h"
#include "common/names.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define STATS_WINDOW_DEFAULT 60
#define STATS_WINDOW_MAX 3600
#define STATS_SCAN_MAX 20000

api_flow api_h_saga_stats(api_req *rq)
{
    const char *w = api_query(rq, "window_s");
    int64_t win = STATS_WINDOW_DEFAULT;
    if (w && cm_parse_int(w, 1, STATS_WINDOW_MAX, &win) != 0) {
        api_error(rq, 400, "invalid_request", "window_s must be an integer in 1..%d", STATS_WINDOW_MAX);
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    /* one script call per partition's bus (each in its own slot), in one
     * pipeline; the counts summed */
    long long scanned = 0, counts[3] = {0, 0, 0};
    bool truncated = false;
    json_t *reasons = json_object();
    int np = cm_partitions();
    cm_pipe *pipe = cm_pipe_new(t->cc);
    for (int p = 0; p < np; p++) {
        cm_argv a = {0};
        cm_argv_adds(&a, cm_key_bus(g_api.bus, p).s);
        cm_argv_addll(&a, (long long)win);
        cm_argv_addll(&a, STATS_SCAN_MAX);
        cm_argv_adds(&a, cm_event_type_names[CM_EV_CHECKOUT_INITIATED]);
        cm_argv_adds(&a, cm_event_type_names[CM_EV_CHECKOUT_SUCCEEDED]);
        cm_argv_adds(&a, cm_event_type_names[CM_EV_CHECKOUT_FAILED]);
        int rc = cm_pipe_script(pipe, &t->saga_stats, 1, &a);
        cm_argv_free(&a);
        if (rc != 0)
            abort();   /* one key: cannot span slots */
    }
    bool ok = api_pipe_run(t, pipe);
    for (int p = 0; ok && p < np; p++) {
        redisReply *r = cm_pipe_take(pipe, (size_t)p);
        if (!api_redis_ok(t, r)) {
            ok = false;
            break;
        }
        long long sc = cm_reply_ll(cm_reply_elem(r, 0), 0);
        scanned += sc;
        truncated = truncated || sc >= STATS_SCAN_MAX;
        for (int i = 0; i < 3; i++)
            counts[i] += cm_reply_ll(cm_reply_elem(r, (size_t)i + 1), 0);
        for (size_t i = 4; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
            const redisReply *k = r->element[i];
            if (!cm_reply_is_str(k))
                continue;
            json_int_t prev = json_integer_value(json_object_get(reasons, k->str));
            json_object_set_new(reasons, k->str, json_integer(prev + cm_reply_ll(r->element[i + 1], 0)));
        }
        freeReplyObject(r);
    }
    cm_pipe_free(pipe);
    if (!ok) {
        json_decref(reasons);
        api_redis_fail(rq, t->fault, t->err);
        return API_DONE;
    }
    cm_buf *o = &rq->out;
    cm_buf_printf(o, "{\"window_s\":%lld,\"started\":%lld,\"succeeded\":%lld,\"failed\":%lld,\"failed_by_reason\":{",
                  (long long)win, counts[0], counts[1], counts[2]);
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach(reasons, k, v) {
        if (!first)
            cm_buf_putc(o, ',');
        first = false;
        cm_buf_put_json_str(o, k, strlen(k));
        cm_buf_printf(o, ":%lld", (long long)json_integer_value(v));
    }
    json_decref(reasons);
    cm_buf_printf(o, "},\"scanned\":%lld,\"truncated\":%s}", scanned, truncated ? "true" : "false");
    api_reply(rq, 200);
    return API_DONE;
}
