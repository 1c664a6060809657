/* clients.c - GET /api/clients/{client_id}/checkouts?count=n: a client's
 * most recent checkouts, newest first, with their status.
 *
 * The projection keeps, per client and partition, the zset
 * cm_key_rm_client_checkouts(p, client) of checkout ids scored by their
 * CheckoutInitiated emitted_at, trimmed to the newest CM_CLIENT_CHECKOUTS_KEEP
 * (projections/lua/apply.lua). Two round trips: the ids merged newest first
 * over the partitions (pj_read_client_checkouts, one pipeline), then one
 * pipeline of HMGETs of their read models (split per node on a cluster). A
 * checkout whose read model is gone (expired) is left out. */
#include "api/api_int.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/xmalloc.h"
#include "projections/read.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_LIST_DEFAULT 20
#define CLIENT_LIST_MAX 100

/* Appends {"checkout_id","status","reason"?,"updated_at"} from an HMGET
 * status reason updated_at reply; false (nothing written) without a status. */
static bool checkout_json(cm_buf *o, const char *id, const redisReply *hm, bool comma)
{
    const redisReply *status = cm_reply_elem(hm, 0), *reason = cm_reply_elem(hm, 1), *upd = cm_reply_elem(hm, 2);
    if (!cm_reply_is_str(status))
        return false;
    if (comma)
        cm_buf_putc(o, ',');
    cm_buf_puts(o, "{\"checkout_id\":");
    cm_buf_put_json_str(o, id, strlen(id));
    cm_buf_puts(o, ",\"status\":");
    cm_buf_put_json_str(o, status->str, status->len);
    if (cm_reply_is_str(reason) && reason->len) {
        cm_buf_puts(o, ",\"reason\":");
        cm_buf_put_json_str(o, reason->str, reason->len);
    }
    cm_buf_puts(o, ",\"updated_at\":");
    api_json_num_or_str(o, cm_reply_is_str(upd) ? upd->str : NULL, cm_reply_is_str(upd) ? upd->len : 0);
    cm_buf_putc(o, '}');
    return true;
}

api_flow api_h_client_checkouts(api_req *rq)
{
    const char *client = rq->param;
    if (!cm_id_valid(client, rq->param_len, API_ID_MAX)) {
        api_error(rq, 400, "invalid_request", "client_id must be 1..64 characters of [A-Za-z0-9_-]");
        return API_DONE;
    }
    const char *count_s = api_query(rq, "count");
    int64_t count = CLIENT_LIST_DEFAULT;
    if (count_s && cm_parse_int(count_s, 1, CLIENT_LIST_MAX, &count) != 0) {
        api_error(rq, 400, "invalid_request", "count must be an integer in 1..%d", CLIENT_LIST_MAX);
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    pj_checkout_ref *ids;
    size_t n;
    char err[256];
    if (pj_read_client_checkouts(t->cc, client, (size_t)count, &ids, &n, err, sizeof err) != PJ_OK) {
        api_redis_failed_call(rq, t, err);
        return API_DONE;
    }
    cm_pipe *p = cm_pipe_new(t->cc);
    for (size_t i = 0; i < n; i++) {
        cm_key key = cm_key_rm_checkout(ids[i].id);
        cm_pipe_command(p, api_slot(key.s), "HMGET %s status reason updated_at", key.s);
    }
    redisReply **hm = cm_xcalloc(n ? n : 1, sizeof *hm);
    bool failed = !api_pipe_run(t, p);
    for (size_t i = 0; !failed && i < n; i++) {
        hm[i] = cm_pipe_take(p, i);
        if (!api_redis_ok(t, hm[i])) {   /* frees it */
            hm[i] = NULL;
            failed = true;
        }
    }
    cm_pipe_free(p);
    if (failed) {
        api_redis_fail(rq, t->fault, t->err);
    } else {
        cm_buf *o = &rq->out;
        cm_buf_puts(o, "{\"client_id\":");
        cm_buf_put_json_str(o, client, strlen(client));
        cm_buf_puts(o, ",\"checkouts\":[");
        bool any = false;
        for (size_t i = 0; i < n; i++)
            if (checkout_json(o, ids[i].id, hm[i], any))
                any = true;
        cm_buf_puts(o, "]}");
        api_reply(rq, 200);
    }
    for (size_t i = 0; i < n; i++)
        if (hm[i])
            freeReplyObject(hm[i]);
    free(hm);
    free(ids);
    return API_DONE;
}
