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

/* Appends the step's follow-ups alone (a step with no effect; lua/append.lua
 * through wk_cluster). Returns WK_STEP_OK, WK_STEP_CONFLICT or
 * WK_STEP_EREDIS (the fail reason set). */
int wk_step_append(wk_ctx *ctx, wk_step *s, es_append_res *res) __attribute__((warn_unused_result));

/* What a step script answered. The append outcomes come first. */
typedef enum wk_outcome {
    WK_OUT_APPENDED = 0,   /* effect done and follow-ups appended (out.res.duplicate: already were) */
    WK_OUT_CONFLICT,       /* the saga moved: decide again (wk_saga_moved) */
    WK_OUT_EREDIS,         /* transient failure (detail in the context's fail reason): retry */
    /* refusals: nothing was written; out.arg names the product or the state */
    WK_OUT_EXISTS,         /* reserve: the checkout already has a reservation (state out.arg) */
    WK_OUT_NOT_HELD,       /* create_order: the reservation is not held (state out.arg) */
    WK_OUT_MISMATCH,       /* create_order: the reservation holds product out.arg the caller did not name */
    WK_OUT_CHANGED,        /* release: the reservation is held but the caller released nothing (state out.arg) */
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

/* No refusals: a plain append's reply (wk_step_append_queue). */
extern const wk_refusal wk_no_refusals[];

/* Step scripts go through the worker's slot-routing client (wk_cluster):
 * a caller queues any number of calls on a cm_pipe (one per phase of a
 * batch), runs cm_pipe_exec once, then takes each reply. Every step script
 * touches only its checkout's keys (one slot: the partition's hash tag), the
 * stock lines only their product's (workers/lua/line.c), so the same calls
 * run on one server and on a cluster.
 *
 * wk_step_queue queues script with KEYS = history, bus, xkeys... and ARGV =
 * the step's append arguments, xargs... (xkeys/xargs may be NULL). Returns
 * the reply's index in p, or -1 with the context's fail reason set and
 * nothing queued (an invalid append, keys spanning slots). */
int wk_step_queue(wk_ctx *ctx, cm_pipe *p, cm_script *script, wk_step *s, const cm_argv *xkeys,
                  const cm_argv *xargs);

/* Takes reply idx of p (after cm_pipe_exec; idx < 0: never queued) and maps
 * it to an outcome: an append result to APPENDED (event ids filled in) or
 * CONFLICT, a refusal named in refusals (terminated by a NULL name) to its
 * outcome with out->arg, anything else (no reply, an error) to EREDIS with
 * the context's fail reason set. */
wk_outcome wk_step_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, const wk_refusal *refusals,
                        wk_step_out *out) __attribute__((warn_unused_result));

/* Queues the step's plain append (as wk_step_append) on p; take its reply
 * with wk_step_take (no refusals). Returns the index, or -1 as
 * wk_step_queue. */
int wk_step_append_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s);

/* Runs one pipe's calls: cm_pipe_exec, with the reason of a failure set as
 * the context's fail reason (the replies that came are still taken). */
void wk_pipe_exec(wk_ctx *ctx, cm_pipe *p);

/* Prefetch: a saga worker's prepare hook plans every event of a batch and
 * runs their steps together, phase by phase (each phase one cm_pipe_exec
 * for the whole batch), storing each outcome in the event's plan
 * (wk_prefetch_note). Each handler then finds its plan (wk_prefetch_plan)
 * and acts on the outcome; an event with no plan is planned and run alone
 * by its handler, through the same code. Nothing changes but the round
 * trips: every step is idempotent. The table lives until the next
 * wk_prefetch_clear (the next batch's prepare). plan_free (may be NULL)
 * releases plan. */
void wk_prefetch_clear(void);
void wk_prefetch_note(const es_event *ev, void *plan, void (*plan_free)(void *));
void *wk_prefetch_plan(const es_event *ev);   /* the plan noted for ev (once), or NULL */

/* A worker's plans, for wk_plan_prepare and wk_plan_handle: what a plan is,
 * which events prepare plans, how one is made, run, judged and released. */
typedef struct wk_plan_def {
    size_t size;                                 /* sizeof the worker's plan, given zeroed to make */
    bool (*wants)(const es_event *ev);           /* prepare plans ev (others: their handler, alone) */
    /* WK_ACK: planned; else what the handler answers (the fail reason set) */
    wk_result (*make)(wk_ctx *ctx, const es_event *ev, void *plan);
    void (*run)(wk_ctx *ctx, void *const *plans, size_t n);   /* the plans' steps, phase by phase */
    bool (*failed)(const void *plan);            /* a call of run failed: the handler runs it again, */
    bool remake;                                 /* ... from a new plan (make) rather than the same one */
    wk_result (*act)(wk_ctx *ctx, const es_event *ev, void *plan);   /* the handler's decision on the outcome */
    void (*free)(void *plan);                    /* releases plan and what it holds */
} wk_plan_def;

/* Plans every event of evs that def wants (one allocation each, owned by the
 * prefetch table from then on), notes them and runs them together. An event
 * whose make fails is left to its handler. Call after wk_prefetch_clear. */
void wk_plan_prepare(wk_ctx *ctx, const wk_plan_def *def, es_event *const *evs, size_t n);

/* A handler's whole path: takes ev's prefetched plan, or plans and runs ev
 * alone when there is none or its run failed (def->failed), then answers
 * def->act's decision; a plan made here is freed before returning. */
wk_result wk_plan_handle(wk_ctx *ctx, const wk_plan_def *def, const es_event *ev);

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
