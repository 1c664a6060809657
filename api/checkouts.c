/* checkouts.c - GET /api/checkouts/{id}[?wait_ms=N]: a checkout's status from
 * its read model, or from the fold of its history while the projection has
 * not caught up (a checkout we answered 202 for is never 404).
 *
 * With wait_ms the request long-polls: it is answered as soon as the status
 * is terminal, or when wait_ms has passed, whichever comes first. Waiting
 * costs no thread: the connection is suspended and woken by waiters.c when
 * the projection announces a change for this checkout. Long-polls are capped
 * (API_LONG_POLLS_MAX, waiters.c): over the cap the request is answered at
 * once with the current state, as if wait_ms were 0. */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/names.h"

#include <stdio.h>
#include <string.h>

/* Reads the checkout's status into rq->out. Returns 1 when terminal, 0 when
 * not, -1 after answering an error (404/503/500). */
static int read_status(api_req *rq, api_redis *t, const char *id)
{
    cm_key key = cm_key_rm_checkout(id);
    redisReply *r = cm_cluster_command(t->cc, api_slot(key.s), "HMGET %s client_id status order_id reason updated_at",
                                       key.s);
    if (!api_redis_ok(t, r)) {
        api_redis_fail(rq, t->fault, t->err);
        return -1;
    }
    cm_buf *o = &rq->out;
    cm_buf_reset(o);
    const redisReply *f[5];
    for (int i = 0; i < 5; i++) {
        f[i] = cm_reply_elem(r, (size_t)i);
        if (f[i] && f[i]->type != REDIS_REPLY_STRING)
            f[i] = NULL;
    }
    int terminal;
    if (f[1]) {
        cm_buf_puts(o, "{\"checkout_id\":");
        cm_buf_put_json_str(o, id, strlen(id));
        cm_buf_puts(o, ",\"client_id\":");
        api_json_str_or_null(o, f[0] ? f[0]->str : NULL, f[0] ? f[0]->len : 0);
        cm_buf_puts(o, ",\"status\":");
        cm_buf_put_json_str(o, f[1]->str, f[1]->len);
        if (f[2] && f[2]->len) {
            cm_buf_puts(o, ",\"order_id\":");
            cm_buf_put_json_str(o, f[2]->str, f[2]->len);
        }
        if (f[3] && f[3]->len) {
            cm_buf_puts(o, ",\"reason\":");
            cm_buf_put_json_str(o, f[3]->str, f[3]->len);
        }
        cm_buf_puts(o, ",\"updated_at\":");
        api_json_num_or_str(o, f[4] ? f[4]->str : NULL, f[4] ? f[4]->len : 0);
        cm_buf_putc(o, '}');
        terminal = !strcmp(f[1]->str, CM_STATUS_SUCCEEDED) || !strcmp(f[1]->str, CM_STATUS_FAILED);
        freeReplyObject(r);
        return terminal;
    }
    freeReplyObject(r);

    /* No read model yet: the history is the truth. */
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_fetch(t->cc, "checkout", id, &evs, &n, t->err, sizeof t->err);
    if (rc == ES_EREDIS) {
        api_redis_failed_call(rq, t, NULL);
        return -1;
    }
    if (rc != ES_OK) {
        api_error(rq, 500, "internal", "the history of checkout %s cannot be read", id);
        return -1;
    }
    if (n == 0) {
        es_events_free(evs, n);
        api_error(rq, 404, "not_found", "no checkout %s", id);
        return -1;
    }
    es_checkout_state st;
    es_checkout_fold(evs, n, &st);
    es_events_free(evs, n);
    cm_buf_puts(o, "{\"checkout_id\":");
    cm_buf_put_json_str(o, id, strlen(id));
    cm_buf_puts(o, ",\"client_id\":");
    cm_buf_put_json_str(o, st.client_id, strlen(st.client_id));
    cm_buf_puts(o, ",\"status\":");
    cm_buf_put_json_str(o, st.status, strlen(st.status));
    if (st.order_id[0]) {
        cm_buf_puts(o, ",\"order_id\":");
        cm_buf_put_json_str(o, st.order_id, strlen(st.order_id));
    }
    if (st.reason[0]) {
        cm_buf_puts(o, ",\"reason\":");
        cm_buf_put_json_str(o, st.reason, strlen(st.reason));
    }
    cm_buf_printf(o, ",\"updated_at\":%.6f}", st.updated_at);
    return st.terminal ? 1 : 0;
}

api_flow api_h_checkout_get(api_req *rq)
{
    const char *id = rq->param;
    if (!cm_id_valid(id, rq->param_len, API_ID_MAX)) {
        api_error(rq, 404, "not_found", "no such checkout (ids are 1..64 characters of [A-Za-z0-9_-])");
        return API_DONE;
    }
    if (!rq->waiting && !rq->wait_deadline_ms) {   /* first pass: parse wait_ms */
        snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", id);
        const char *w = api_query(rq, "wait_ms");
        int64_t ms = 0;
        if (w && cm_parse_int(w, 0, API_WAIT_MAX_MS, &ms) != 0) {
            api_error(rq, 400, "invalid_request", "wait_ms must be an integer in 0..%d", API_WAIT_MAX_MS);
            return API_DONE;
        }
        rq->waiting = ms > 0;
        rq->wait_deadline_ms = cm_mono_ms() + ms;
    }
    const char *why = NULL;
    for (;;) {
        /* arm before reading: a change after the read then finds the waiter */
        bool armed = rq->waiting && cm_mono_ms() < rq->wait_deadline_ms &&
                     api_wait_arm(&rq->w, rq->conn, id, rq->wait_deadline_ms);
        api_redis *t = api_redis_get(&why);
        int st = t ? read_status(rq, t, id) : -1;
        if (!t)
            api_unavailable(rq, why);
        if (st != 0 || !armed) {
            api_wait_disarm(&rq->w);
            if (st >= 0)
                api_reply(rq, 200);
            return API_DONE;
        }
        if (api_wait_suspend(&rq->w, rq->held))
            return API_SUSPENDED;
        /* fired between arm and suspend: read again */
    }
}
