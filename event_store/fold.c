/* fold.c - the replay: folding a checkout's events into its state.
 *
 * The fold is the single definition of a checkout's status; the projection
 * and the API's replay route both rely on it, and workers use it to decide
 * again after an expected-version conflict. */
#include "event_store/store.h"

#include <stdio.h>
#include <string.h>

static void copy(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

void es_checkout_init(es_checkout_state *st)
{
    memset(st, 0, sizeof *st);
    copy(st->status, sizeof st->status, CM_STATUS_PENDING);
}

void es_checkout_fold(es_event *const *evs, size_t n, es_checkout_state *st)
{
    es_checkout_init(st);
    for (size_t i = 0; i < n; i++)
        es_checkout_apply(st, evs[i]);
}

void es_checkout_apply(es_checkout_state *st, const es_event *ev)
{
    st->version = ev->seq > st->version ? ev->seq : st->version;
    if (ev->emitted_at > st->updated_at)
        st->updated_at = ev->emitted_at;
    switch (ev->kind) {
    case CM_EV_CHECKOUT_INITIATED: {
        copy(st->client_id, sizeof st->client_id, es_event_data_str(ev, "client_id"));
        json_t *t = json_object_get(ev->data, "total_cents");
        st->total_cents = json_is_integer(t) ? json_integer_value(t) : 0;
        break;
    }
    case CM_EV_STOCK_RESERVED:
        st->reserved = true;
        if (!st->terminal && !st->failing)
            copy(st->status, sizeof st->status, CM_STATUS_STOCK_RESERVED);
        break;
    case CM_EV_STOCK_RESERVATION_FAILED:
    case CM_EV_ORDER_CREATION_FAILED:
        st->failing = true;
        if (!st->reason[0])
            copy(st->reason, sizeof st->reason, es_event_data_str(ev, "reason"));
        break;
    case CM_EV_CHECKOUT_TIMED_OUT:
        st->timed_out = true;
        st->failing = true;
        if (!st->reason[0])
            copy(st->reason, sizeof st->reason, CM_REASON_TIMED_OUT);
        break;
    case CM_EV_ORDER_CREATED:
        copy(st->order_id, sizeof st->order_id, es_event_data_str(ev, "order_id"));
        st->reserved = false; /* the reservation became a sale */
        break;
    case CM_EV_STOCK_RELEASED:
        st->reserved = false;
        break;
    case CM_EV_CHECKOUT_SUCCEEDED:
        st->terminal = true;
        st->terminal_events++;
        if (!st->order_id[0])
            copy(st->order_id, sizeof st->order_id, es_event_data_str(ev, "order_id"));
        copy(st->status, sizeof st->status, CM_STATUS_SUCCEEDED);
        break;
    case CM_EV_CHECKOUT_FAILED:
        st->terminal = true;
        st->terminal_events++;
        st->failing = false;
        copy(st->reason, sizeof st->reason, es_event_data_str(ev, "reason"));
        copy(st->status, sizeof st->status, CM_STATUS_FAILED);
        break;
    default:
        break;
    }
}

void es_checkout_state_json(const es_checkout_state *st, cm_buf *out)
{
    cm_buf_puts(out, "{\"status\":");
    cm_buf_put_json_str(out, st->status, strlen(st->status));
    cm_buf_puts(out, ",\"client_id\":");
    cm_buf_put_json_str(out, st->client_id, strlen(st->client_id));
    cm_buf_puts(out, ",\"order_id\":");
    if (st->order_id[0])
        cm_buf_put_json_str(out, st->order_id, strlen(st->order_id));
    else
        cm_buf_puts(out, "null");
    cm_buf_puts(out, ",\"reason\":");
    if (st->reason[0])
        cm_buf_put_json_str(out, st->reason, strlen(st->reason));
    else
        cm_buf_puts(out, "null");
    cm_buf_printf(out, ",\"version\":%lld,\"total_cents\":%lld,\"terminal\":%s,\"updated_at\":%.6f}",
                  (long long)st->version, (long long)st->total_cents, st->terminal ? "true" : "false",
                  st->updated_at);
}
