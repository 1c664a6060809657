/* scripts.h - the saga workers' Lua scripts as typed calls.
 *
 * Each script (workers/lua/<name>.lua) has one C file beside it
 * (<name>.c) that alone knows its KEYS and ARGV layout: it builds the call
 * from named inputs, runs it with the step's follow-up append in front
 * (wk_step_outcome), and turns the reply into one of the outcomes in
 * saga.h. The workers decide on those outcomes and never see a reply array.
 * The *_prefetch forms queue the same call for a batch's one round trip
 * (saga.h, prefetch); the plain form then finds its reply.
 *
 * Every key a script touches is passed in KEYS (Redis Cluster requires it);
 * the names come from common/names.h. */
#ifndef WK_SCRIPTS_H
#define WK_SCRIPTS_H

#include "workers/saga.h"

/* reserve.lua: reserves every line of checkout or none, with s's StockReserved.
 * Outcomes: APPENDED, CONFLICT, SHORT, UNKNOWN, EXISTS, EREDIS. */
wk_outcome wk_script_reserve(wk_ctx *ctx, wk_step *s, const char *checkout, const wk_lines *lines,
                             wk_step_out *out) __attribute__((warn_unused_result));

void wk_script_reserve_prefetch(wk_ctx *ctx, wk_step *s, const char *checkout, const wk_lines *lines, void *plan,
                                void (*plan_free)(void *));

/* create_order.lua: turns the held reservation of the lines into a sale and
 * records order order_id, with s's OrderCreated + CheckoutSucceeded.
 * Outcomes: APPENDED, CONFLICT, NOT_HELD, MISMATCH, EREDIS. */
typedef struct wk_order_in {
    const char *checkout_id, *order_id, *client_id;
    long long total_cents;
    const char *items_json;   /* the order's items as JSON */
    double created_at;        /* wall clock, seconds */
    long long resv_ttl_s;     /* lifetime of the sold reservation (0: kept) */
    const wk_lines *lines;    /* the reserved products */
} wk_order_in;
wk_outcome wk_script_create_order(wk_ctx *ctx, wk_step *s, const wk_order_in *in, wk_step_out *out)
    __attribute__((warn_unused_result));

void wk_script_create_order_prefetch(wk_ctx *ctx, wk_step *s, const wk_order_in *in, void *plan,
                                     void (*plan_free)(void *));

/* release.lua: gives back what checkout holds (held: what the caller read,
 * lines its products) and ends the saga with s's follow-ups.
 * Outcomes: APPENDED, CONFLICT, CHANGED, MISMATCH, EREDIS. */
wk_outcome wk_script_release(wk_ctx *ctx, wk_step *s, const char *checkout, bool held, const wk_lines *lines,
                             long long resv_ttl_s, wk_step_out *out) __attribute__((warn_unused_result));

/* notify.lua: records checkout's one notification (marker + log entry) unless
 * its marker exists. Returns 0 with out filled, or -1 with err (retry). */
typedef struct wk_notify_in {
    const char *checkout_id, *status;
    const char *field, *value;   /* "order_id" or "reason", and its value */
    const char *event_id;        /* the terminal event */
    long long ttl_s;             /* lifetime of the marker and of log entries (0: kept) */
} wk_notify_in;
typedef struct wk_notify_out {
    bool fresh;                  /* recorded now (else an earlier delivery did) */
    bool delivered;              /* the webhook already answered 2xx */
} wk_notify_out;
int wk_script_notify(cm_cluster *cc, const wk_notify_in *in, wk_notify_out *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
