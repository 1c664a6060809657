/* scripts.h - the saga workers' Lua scripts as typed calls.
 *
 * Each script (workers/lua/<name>.lua) has one C file beside it
 * (<name>.c) that alone knows its KEYS and ARGV layout: it queues the call
 * from named inputs on a pipeline of the worker's slot-routing client
 * (saga.h: wk_step_queue, a batch's calls of one phase in one round trip)
 * and turns its reply into one of the outcomes in saga.h. The workers decide
 * on those outcomes and never see a reply array.
 *
 * Every key a script touches is passed in KEYS, and every call's keys share
 * one Redis Cluster slot: a step script only its checkout's keys (the
 * partition's hash tag), line.lua only a product's hash and marks tagged
 * with that product's key name. The names come from common/names.h. */
#ifndef WK_SCRIPTS_H
#define WK_SCRIPTS_H

#include "workers/saga.h"

/* ---- line.lua: one line of a checkout, in its product's slot ----
 * The mark cm_key_hold(product, checkout) and the product's counters move
 * together (states and transitions in line.lua); every op is idempotent. */
typedef enum wk_line_op {
    WK_LINE_HOLD,      /* absent -> held (available -> reserved), or short / unknown */
    WK_LINE_UNDO,      /* held -> undone (reserved -> available): reservation's own undo */
    WK_LINE_SELL,      /* held -> sold (reserved -> sold) */
    WK_LINE_RELEASE,   /* held -> released (reserved -> available); absent -> void */
} wk_line_op;

typedef enum wk_mark {
    WK_MARK_NONE,      /* no mark (undo or sell of a line never held) */
    WK_MARK_HELD,
    WK_MARK_SOLD,
    WK_MARK_RELEASED,
    WK_MARK_UNDONE,
    WK_MARK_SHORT,     /* refused: not enough available */
    WK_MARK_UNKNOWN,   /* refused: the product is not (validly) in the catalog */
    WK_MARK_VOID,      /* compensation found nothing held: never held afterwards */
    WK_MARK_COUNT
} wk_mark;
extern const char *const wk_mark_names[WK_MARK_COUNT];   /* as line.lua spells them */

typedef struct wk_line_res {
    wk_mark mark;      /* the mark after the op */
    int64_t qty;       /* its quantity */
    bool changed;      /* this call moved it (else an earlier call had) */
} wk_line_res;

/* A phase's line calls: lines are added one by one (any op, checkout and
 * product), then queued on a pipe as one script call per (op, product), so
 * a batch whose checkouts share products sends one call per product; each
 * line is still its own step, run in the order added. */
typedef struct wk_line_set wk_line_set;

wk_line_set *wk_line_set_new(void);   /* free with wk_line_set_free */
void wk_line_set_free(wk_line_set *s);   /* NULL ok */
/* Adds op on checkout's line. Returns its index in s (for wk_line_set_res). */
size_t wk_line_set_add(wk_line_set *s, wk_line_op op, const char *checkout, const wk_line *line);
/* Queues s's calls on p; settled marks live ttl_s seconds (0: kept), a held
 * one until it settles. A line whose call cannot be built (a product id
 * with braces) fails alone (wk_line_set_res), with the fail reason set. */
void wk_line_set_queue(wk_ctx *ctx, wk_line_set *s, cm_pipe *p, long long ttl_s);
/* After cm_pipe_exec: takes s's replies from p. */
void wk_line_set_take(wk_ctx *ctx, wk_line_set *s, cm_pipe *p);
/* The three in one: queues s's calls behind what p already holds, sends p
 * (wk_pipe_exec: one round trip for all of it) and takes s's replies; the
 * caller takes its own commands' replies from p afterwards. */
void wk_line_set_exec(wk_ctx *ctx, wk_line_set *s, cm_pipe *p, long long ttl_s);
/* Line i's result into out. Returns 0, or -1 when its call failed (no
 * reply, an error, a foreign shape: the fail reason was set; retry). */
int wk_line_set_res(const wk_line_set *s, size_t i, wk_line_res *out) __attribute__((warn_unused_result));

/* op on every line of checkout in one round trip; res[i] for lines->v[i].
 * Returns 0, or -1 with the fail reason (some lines may have moved: each
 * op is idempotent, run it again). */
int wk_line_run(wk_ctx *ctx, wk_line_op op, const char *checkout, const wk_lines *lines, long long ttl_s,
                wk_line_res *res) __attribute__((warn_unused_result));

/* reserve.lua: records checkout's reservation (state held, its lines) with
 * s's StockReserved, once every line is held. Outcomes: APPENDED, CONFLICT,
 * EXISTS, EREDIS. */
int wk_script_reserve_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const char *checkout, const wk_lines *lines);
wk_outcome wk_script_reserve_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
    __attribute__((warn_unused_result));

/* create_order.lua: marks the held reservation sold and records order
 * order_id, with s's OrderCreated + CheckoutSucceeded (the lines are then
 * sold with line.lua). Outcomes: APPENDED, CONFLICT, NOT_HELD, MISMATCH,
 * EREDIS. */
typedef struct wk_order_in {
    const char *checkout_id, *order_id, *client_id;
    long long total_cents;
    const char *items_json;   /* the order's items as JSON */
    double created_at;        /* wall clock, seconds */
    long long resv_ttl_s;     /* lifetime of the sold reservation (0: kept) */
    const wk_lines *lines;    /* the reserved products */
} wk_order_in;
int wk_script_create_order_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const wk_order_in *in);
wk_outcome wk_script_create_order_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
    __attribute__((warn_unused_result));

/* release.lua: ends checkout's saga with s's follow-ups (StockReleased when
 * released: the lines were released with line.lua just before), marks a
 * held reservation released, and leaves the timeout set. Outcomes:
 * APPENDED, CONFLICT, CHANGED, EREDIS. */
int wk_script_release_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const char *checkout, bool released,
                            long long resv_ttl_s);
wk_outcome wk_script_release_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
    __attribute__((warn_unused_result));

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
