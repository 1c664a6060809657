/* saga.h - what the three saga workers (stock-reservation, order-creation,
 * stock-compensation) share: a checkout's lines, a step's follow-up events
 * run through a Lua script together with the step's effect, the decision
 * after an expected-version conflict, and the saga metrics.
 *
 * A step reacts to one event E of a checkout and appends its follow-ups to the
 * checkout's history naming expected_version = E.seq; their ids are derived
 * from (E.event_id, follow-up type), so re-processing E re-appends the same
 * ids and the store answers "dup" without running the effect again. */
#ifndef WK_SAGA_H
#define WK_SAGA_H

#include <jansson.h>
#include <stdint.h>

#include "workers/wk.h"

#define WK_SAGA_AGGREGATE "checkout"
#define WK_SAGA_MAX_LINES 100       /* lines of a checkout, as the intake allows */
#define WK_SAGA_MAX_QTY 1000000     /* per product after summing duplicate lines */
#define WK_SAGA_MAX_STEP 2          /* follow-ups appended by one step */

/* One product of a checkout, duplicate lines summed. */
typedef struct wk_line {
    char product_id[72];
    int64_t qty;
} wk_line;

typedef struct wk_lines {
    wk_line v[WK_SAGA_MAX_LINES];
    size_t n;
} wk_lines;

/* Parses an items array [{"product_id", "quantity", ...}] into out, summing
 * lines of the same product (first-appearance order). Returns 0, or -1 with
 * err when the array is missing or empty, or a line is malformed. */
int wk_lines_parse(const json_t *items, wk_lines *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Returns [{"product_id","quantity"}] for the lines (new reference). */
json_t *wk_lines_json(const wk_lines *l);
/* Adds the product hash key (cm_key_product) of every line to keys. */
void wk_lines_keys(const wk_lines *l, cm_argv *keys);

/* The follow-up events of one step. */
typedef struct wk_step {
    const es_event *cause;                   /* borrowed: the event reacted to */
    const char *producer;                    /* worker name */
    int64_t expected;                        /* expected version of the append */
    size_t n;
    char ids[WK_SAGA_MAX_STEP][40];
    json_t *data[WK_SAGA_MAX_STEP];          /* owned */
    es_new_event evs[WK_SAGA_MAX_STEP];
} wk_step;

/* Starts a step reacting to cause (its checkout is cause->aggregate_id),
 * expecting version cause->seq. Release with wk_step_free. */
void wk_step_init(wk_step *s, const es_event *cause, const char *producer);
/* Adds a follow-up of type t with data (reference stolen), its id derived
 * from (cause.event_id, type name). At most WK_SAGA_MAX_STEP. */
void wk_step_add(wk_step *s, enum cm_event_type t, json_t *data);
void wk_step_free(wk_step *s);

/* What a step's plain append answered. */
enum wk_step_rc {
    WK_STEP_OK = 0,         /* appended (res.duplicate: it already was) */
    WK_STEP_CONFLICT = 1,   /* the saga moved: decide again (wk_saga_moved) */
    WK_STEP_EREDIS = -1,    /* transient: retry */
};

/* Appends the step's follow-ups alone (a step with no effect). Returns
 * WK_STEP_OK, WK_STEP_CONFLICT or WK_STEP_EREDIS. */
int wk_step_append(wk_ctx *ctx, wk_step *s, es_append_res *res) __attribute__((warn_unused_result));

/* What a step script answered. The append outcomes come first. */
typedef enum wk_outcome {
    WK_OUT_APPENDED = 0,   /* effect done and follow-ups appended (out.res.duplicate: already were) */
    WK_OUT_CONFLICT,       /* the saga moved: decide again (wk_saga_moved) */
    WK_OUT_EREDIS,         /* transient failure (detail in the context's fail reason): retry */
    /* refusals: nothing was written; out.arg names the product or the state */
    WK_OUT_SHORT,          /* reserve: not enough stock of out.arg */
    WK_OUT_UNKNOWN,        /* reserve: product out.arg is not (or not validly) in the catalog */
    WK_OUT_EXISTS,         /* reserve: the checkout already has a reservation (state out.arg) */
    WK_OUT_NOT_HELD,       /* create_order: the reservation is not held (state out.arg) */
    WK_OUT_CHANGED,        /* release: the reservation changed since it was read (state out.arg) */
    WK_OUT_MISMATCH,       /* create_order/release: the reservation holds product out.arg the caller did not name */
} wk_outcome;

typedef struct wk_step_out {
    es_append_res res;     /* valid for WK_OUT_APPENDED */
    char arg[80];          /* the refusal's product id or state */
} wk_step_out;

/* A script's refusal: its reply {"<name>", arg} means outcome out. */
typedef struct wk_refusal {
    const char *name;
    wk_outcome out;
} wk_refusal;

/* Runs script with KEYS = history, bus, xkeys... and ARGV = the step's
 * append arguments, xargs... (xkeys/xargs may be NULL), and maps its reply
 * to an outcome: an append result to APPENDED (event ids filled in) or
 * CONFLICT, a refusal named in refusals (terminated by a NULL name) to its
 * outcome with out->arg, anything else to EREDIS with the context's fail
 * reason set. When the call was sent ahead with its batch
 * (wk_prefetch_add), its reply is used instead of a round trip. */
wk_outcome wk_step_outcome(wk_ctx *ctx, cm_script *script, wk_step *s, const cm_argv *xkeys,
                           const cm_argv *xargs, const wk_refusal *refusals, wk_step_out *out)
    __attribute__((warn_unused_result));

/* Prefetch: a saga worker's prepare hook plans every event of a batch and
 * queues each plan's step script (wk_prefetch_add: the call is appended to
 * the connection's output, not sent), then sends them all in one round trip
 * (wk_prefetch_run). Each handler then finds its plan (wk_prefetch_plan)
 * and wk_step_outcome finds the reply of the same call. Nothing changes but
 * the round trips: the calls are the ones the handlers would make, in stream
 * order, and every script is idempotent. The table lives until the next
 * wk_prefetch_clear (the next batch's prepare). wk_prefetch_note keeps a
 * plan with no script call for ev. plan_free (may be NULL) releases plan. */
void wk_prefetch_clear(void);
void wk_prefetch_add(wk_ctx *ctx, wk_step *s, cm_script *script, const cm_argv *xkeys, const cm_argv *xargs,
                     void *plan, void (*plan_free)(void *));
void wk_prefetch_note(const es_event *ev, void *plan, void (*plan_free)(void *));
void wk_prefetch_run(wk_ctx *ctx);
void *wk_prefetch_plan(const es_event *ev);   /* the plan queued for ev, or NULL */

/* After a conflict: re-reads the checkout's history and decides. The saga
 * moved past cause (its follow-up was already written, it timed out or ended)
 * gives WK_ACK with nothing done; a history that does not hold cause at its
 * seq gives WK_DEAD; a read failure WK_RETRY. */
wk_result wk_saga_moved(wk_ctx *ctx, const es_event *cause, const char *step);

/* Validates cause as a checkout event and returns its checkout id, or NULL
 * after setting the context's fail reason (the handler answers WK_DEAD). */
const char *wk_saga_checkout(wk_ctx *ctx, const es_event *cause);

/* Counts a step's appended events in events_published_total and, for a
 * terminal one, saga_choreo_success_total / saga_choreo_failed_total{reason}.
 * Does nothing for a duplicate append, so replays never count twice. */
void wk_saga_count(wk_ctx *ctx, const wk_step *s, const es_append_res *res);

/* Maps a failure event to the CheckoutFailed reason it causes (the DESIGN.md
 * reasons), or NULL when the event names no known reason. */
const char *wk_saga_failure_reason(const es_event *cause);

#endif
