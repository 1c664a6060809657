/* timeline.c - GET /api/checkouts/{id}/timeline: a checkout's history in
 * causal order, with each event's hop latency and, for each of the six
 * consumer groups, where the event stands in that group.
 *
 * Causal order: the events form a forest by causation_id (a cause is always
 * appended before its effects, so only an earlier event of the same history
 * is accepted as a parent; anything else makes the event a root). The answer
 * walks it depth first: roots in seq order, each event followed by its
 * effects in seq order. hop_ms is the event's emitted_at minus its cause's,
 * null for a root (the saga's first event, or one whose cause is not in this
 * history). Two fields beyond DESIGN.md help the console: `depth` (causal
 * depth, 0 for a root) and `branch` ("compensation" for a failure event
 * (StockReservationFailed, OrderCreationFailed, CheckoutTimedOut) and every
 * event it caused, else "main").
 *
 * Group state of the bus entry, first match wins:
 *   parked       in the group's dead-letter stream <bus>.dlq.<group> (matched
 *                by original entry id, or by event id for an entry parked
 *                again after a retry); with reason, attempts, dead_letter_id
 *   in_flight    in the group's pending entries list; with consumer, idle_ms,
 *                deliveries
 *   undelivered  after the group's last-delivered-id, or the group does not
 *                exist yet
 *   done         delivered and acknowledged
 * An entry re-delivered through <bus>.retry.<group> is pending there, not in
 * the bus PEL: it shows as done until it is parked again.
 *
 * Redis work: LRANGE of the history, then one pipeline (one round trip) of
 * XINFO GROUPS, one XPENDING <bus> <group> <id> <id> 1 per event and group,
 * and one XREVRANGE per dead-letter stream reaching back to the checkout's
 * first entry (at most TL_DLQ_SCAN entries each). */
#include "api/api_int.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/xmalloc.h"
#include "event_store/deadletter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TL_DLQ_SCAN 1000   /* newest dead letters looked at per group */

/* Where one event stands in one group. */
typedef struct tl_state {
    const char *state;             /* "done", "in_flight", "parked", "undelivered" */
    const redisReply *pending;     /* XPENDING row [id, consumer, idle, deliveries] */
    const redisReply *dead;        /* dead-letter entry [id, [k, v...]] */
} tl_state;

/* The causal forest over evs (seq order). */
typedef struct tl_tree {
    size_t *order;    /* evs indices in causal order */
    long *parent;     /* index of the cause, -1 for a root */
    int *depth;
    bool *comp;       /* in the compensation branch */
} tl_tree;

static bool failure_event(const es_event *ev)
{
    return ev->kind == CM_EV_STOCK_RESERVATION_FAILED || ev->kind == CM_EV_ORDER_CREATION_FAILED ||
           ev->kind == CM_EV_CHECKOUT_TIMED_OUT;
}

/* Builds the forest and its depth-first order (caller frees with tree_free). */
static void tree_build(es_event *const *evs, size_t n, tl_tree *t)
{
    size_t cap = n ? n : 1;
    t->order = cm_xcalloc(cap, sizeof *t->order);
    t->parent = cm_xcalloc(cap, sizeof *t->parent);
    t->depth = cm_xcalloc(cap, sizeof *t->depth);
    t->comp = cm_xcalloc(cap, sizeof *t->comp);
    for (size_t i = 0; i < n; i++) {
        t->parent[i] = -1;
        for (size_t j = 0; evs[i]->causation_id && j < i; j++)
            if (evs[j]->event_id && !strcmp(evs[j]->event_id, evs[i]->causation_id))
                t->parent[i] = (long)j;
        long p = t->parent[i];
        t->depth[i] = p < 0 ? 0 : t->depth[p] + 1;
        t->comp[i] = failure_event(evs[i]) || (p >= 0 && t->comp[p]);
    }
    /* depth first with an explicit stack: push children in reverse seq order */
    size_t *stack = cm_xcalloc(cap, sizeof *stack), sp = 0, k = 0;
    for (size_t i = n; i-- > 0;)
        if (t->parent[i] < 0)
            stack[sp++] = i;
    while (sp > 0) {
        size_t i = stack[--sp];
        t->order[k++] = i;
        for (size_t j = n; j-- > i + 1;)
            if (t->parent[j] == (long)i)
                stack[sp++] = j;
    }
    free(stack);
}

static void tree_free(tl_tree *t)
{
    free(t->order);
    free(t->parent);
    free(t->depth);
    free(t->comp);
}

/* The group's last-delivered-id in an XINFO GROUPS reply, or NULL when the
 * group does not exist. */
static const char *last_delivered(const redisReply *info, const char *group)
{
    for (size_t i = 0; info && info->type == REDIS_REPLY_ARRAY && i < info->elements; i++) {
        const redisReply *name = api_kv_field(info->element[i], "name");
        if (cm_reply_is_str(name) && !strcmp(name->str, group)) {
            const redisReply *last = api_kv_field(info->element[i], "last-delivered-id");
            return cm_reply_is_str(last) && api_stream_id_valid(last->str) ? last->str : "0-0";
        }
    }
    return NULL;
}

/* True if dead letter d (an XREVRANGE entry) is event ev parked. */
static bool dead_letter_of(const redisReply *d, const es_event *ev)
{
    const redisReply *f = cm_reply_elem(d, 1);
    const redisReply *orig = api_kv_field(f, "entry_id"), *payload = api_kv_field(f, "payload");
    if (cm_reply_is_str(orig) && !strcmp(orig->str, ev->entry_id))
        return true;
    /* parked again after a retry: entry_id is the retry stream's; the
     * envelope still names the event (as its event_id: an effect's payload
     * names its cause too, as causation_id) */
    if (!ev->event_id || !cm_reply_is_str(payload) || strlen(ev->event_id) > 64)
        return false;
    char needle[96];
    snprintf(needle, sizeof needle, "\"event_id\":\"%s\"", ev->event_id);
    return strstr(payload->str, needle) != NULL;
}

static void put_str_field(cm_buf *o, const char *name, const redisReply *r)
{
    if (!cm_reply_is_str(r))
        return;
    cm_buf_printf(o, ",\"%s\":", name);
    cm_buf_put_json_str(o, r->str, r->len);
}

/* Appends one {"group","state",...} object. */
static void state_json(cm_buf *o, const char *group, const tl_state *s)
{
    cm_buf_puts(o, "{\"group\":");
    cm_buf_put_json_str(o, group, strlen(group));
    cm_buf_printf(o, ",\"state\":\"%s\"", s->state);
    if (s->pending) {
        put_str_field(o, "consumer", cm_reply_elem(s->pending, 1));
        cm_buf_printf(o, ",\"idle_ms\":%lld,\"deliveries\":%lld", cm_reply_ll(cm_reply_elem(s->pending, 2), 0),
                      cm_reply_ll(cm_reply_elem(s->pending, 3), 0));
    } else if (s->dead) {
        const redisReply *f = cm_reply_elem(s->dead, 1);
        put_str_field(o, "reason", api_kv_field(f, "reason"));
        cm_buf_printf(o, ",\"deliveries\":%lld", cm_reply_ll(api_kv_field(f, "attempts"), 0));
        put_str_field(o, "dead_letter_id", cm_reply_elem(s->dead, 0));
    }
    cm_buf_putc(o, '}');
}

/* Decides the state of event ev in group g from the pipeline's replies. */
static tl_state group_state(const es_event *ev, const char *last, const redisReply *pend, const redisReply *dlq)
{
    tl_state s = {.state = "done"};
    for (size_t i = 0; dlq && dlq->type == REDIS_REPLY_ARRAY && i < dlq->elements; i++) {
        if (dead_letter_of(dlq->element[i], ev)) {
            s.state = "parked";
            s.dead = dlq->element[i];
            return s;
        }
    }
    const redisReply *row = cm_reply_elem(pend, 0);
    if (row && row->type == REDIS_REPLY_ARRAY && row->elements >= 4) {
        s.state = "in_flight";
        s.pending = row;
    } else if (!last || !api_stream_id_valid(ev->entry_id) || api_stream_id_cmp(ev->entry_id, last) > 0) {
        s.state = "undelivered";
    }
    return s;
}

/* Sends the pipeline and collects its replies into r[0..nr). Returns 0, or
 * -1 with t->err (the connection is dropped when it broke). A NOGROUP or
 * missing-key error reply is kept (it means "no such group/stream yet"). */
static int pipeline(api_redis *t, es_event *const *evs, size_t n, redisReply **r, size_t nr)
{
    char dlq[512];
    cm_key bus = cm_key_bus(g_api.bus, cm_partition_of(evs[0]->aggregate_id));   /* the checkout's partition */
    int slot = api_slot(bus.s);   /* its dead-letter streams carry the same tag */
    cm_pipe *p = cm_pipe_new(t->cc);
    cm_pipe_command(p, slot, "XINFO GROUPS %s", bus.s);
    for (size_t i = 0; i < n; i++)
        for (int g = 0; g < CM_W_COUNT; g++)
            cm_pipe_command(p, slot, "XPENDING %s %s %s %s 1", bus.s, cm_group_names[g], evs[i]->entry_id,
                            evs[i]->entry_id);
    for (int g = 0; g < CM_W_COUNT; g++) {
        es_dlq_stream(bus.s, cm_group_names[g], dlq, sizeof dlq);
        cm_pipe_command(p, api_slot(dlq), "XREVRANGE %s + %s COUNT %d", dlq, evs[0]->entry_id, TL_DLQ_SCAN);
    }
    if (!api_pipe_run(t, p)) {
        cm_pipe_free(p);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < nr; i++) {
        r[i] = cm_pipe_take(p, i);
        if (r[i] && r[i]->type == REDIS_REPLY_ERROR && !strstr(r[i]->str, "NOGROUP") &&
            !strstr(r[i]->str, "no such key")) {
            if (!rc)
                snprintf(t->err, sizeof t->err, "redis: %s", r[i]->str);
            t->fault = cm_redis_fault_of_error(r[i]->str, r[i]->len);
            rc = -1;
        }
    }
    cm_pipe_free(p);
    return rc;
}

/* Appends the answer for evs (seq order, n >= 1). Returns 0, -1 (Redis) or
 * -2 (undecodable history) with t->err. */
static int timeline_json(api_redis *t, const char *id, es_event *const *evs, size_t n, cm_buf *o)
{
    /* every event id must be a stream id before it goes into a range */
    for (size_t i = 0; i < n; i++) {
        if (!evs[i]->entry_id || !api_stream_id_valid(evs[i]->entry_id)) {
            snprintf(t->err, sizeof t->err, "the history of checkout %s holds a bad bus id", id);
            return -2;
        }
    }
    size_t nr = 1 + n * CM_W_COUNT + CM_W_COUNT;
    redisReply **r = cm_xcalloc(nr, sizeof *r);
    int rc = pipeline(t, evs, n, r, nr);
    if (rc == 0) {
        const redisReply *info = r[0]->type == REDIS_REPLY_ARRAY ? r[0] : NULL;
        const char *last[CM_W_COUNT];
        for (int g = 0; g < CM_W_COUNT; g++)
            last[g] = last_delivered(info, cm_group_names[g]);
        es_checkout_state st;
        es_checkout_fold(evs, n, &st);
        tl_tree tree;
        tree_build(evs, n, &tree);
        cm_buf_puts(o, "{\"checkout_id\":");
        cm_buf_put_json_str(o, id, strlen(id));
        cm_buf_puts(o, ",\"status\":");
        cm_buf_put_json_str(o, st.status, strlen(st.status));
        if (st.reason[0]) {
            cm_buf_puts(o, ",\"reason\":");
            cm_buf_put_json_str(o, st.reason, strlen(st.reason));
        }
        cm_buf_puts(o, ",\"events\":[");
        for (size_t k = 0; k < n; k++) {
            size_t i = tree.order[k];
            long p = tree.parent[i];
            if (k)
                cm_buf_putc(o, ',');
            es_event_to_json(evs[i], o);   /* {"id","type","payload","ts"}: reopened */
            o->data[--o->len] = '\0';
            if (p >= 0)
                cm_buf_printf(o, ",\"hop_ms\":%.3f", (evs[i]->emitted_at - evs[p]->emitted_at) * 1e3);
            else
                cm_buf_puts(o, ",\"hop_ms\":null");
            cm_buf_printf(o, ",\"depth\":%d,\"branch\":\"%s\",\"groups\":[", tree.depth[i],
                          tree.comp[i] ? "compensation" : "main");
            for (int g = 0; g < CM_W_COUNT; g++) {
                tl_state s = group_state(evs[i], last[g], r[1 + i * CM_W_COUNT + (size_t)g],
                                         r[1 + n * CM_W_COUNT + (size_t)g]);
                if (g)
                    cm_buf_putc(o, ',');
                state_json(o, cm_group_names[g], &s);
            }
            cm_buf_puts(o, "]}");
        }
        cm_buf_puts(o, "]}");
        tree_free(&tree);
    }
    for (size_t i = 0; i < nr; i++)
        if (r[i])
            freeReplyObject(r[i]);
    free(r);
    return rc;
}

api_flow api_h_timeline(api_req *rq)
{
    const char *id = rq->param;
    if (!cm_id_valid(id, rq->param_len, API_ID_MAX)) {
        api_error(rq, 404, "not_found", "no such checkout (ids are 1..64 characters of [A-Za-z0-9_-])");
        return API_DONE;
    }
    snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", id);
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    es_event **evs = NULL;
    size_t n = 0;
    int rc = es_history_fetch(t->cc, "checkout", id, &evs, &n, t->err, sizeof t->err);
    if (rc == ES_EREDIS) {
        api_redis_failed_call(rq, t, NULL);
        return API_DONE;
    }
    if (rc != ES_OK) {
        api_error(rq, 500, "internal", "the history of checkout %s cannot be read", id);
        return API_DONE;
    }
    if (n == 0) {
        api_error(rq, 404, "not_found", "no checkout %s", id);
    } else if ((rc = timeline_json(t, id, evs, n, &rq->out)) == 0) {
        api_reply(rq, 200);
    } else if (rc == -2) {
        api_error(rq, 500, "internal", "%s", t->err);
    } else {
        api_redis_fail(rq, t->fault, t->err);
    }
    es_events_free(evs, n);
    return API_DONE;
}
