/* cqrs_projection.c - the cqrs-projection worker: every event of the bus
 * into the read models (projections/projection.h), one script per batch.
 *
 * The read models, their checkpoint and the notification of a checkout
 * reaching a terminal status are written by one Lua script per partition
 * the batch touches (sent together through wk_cluster: one slot each, so a
 * Redis Cluster takes them), so a crash between the scripts and the
 * acknowledgement only leads to a redelivery, which the scripts recognise per
 * (checkout, seq) and skip. While a rebuild (chorus-projection-rebuild)
 * holds its lock the worker waits, keeping its batch claimed. */
#include "workers/wk.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"
#include "projections/projection.h"

#include <stdlib.h>

#define BUSY_POLL_MS 200    /* re-check of a rebuild's lock */
#define TOUCH_EVERY_MS 1000

static int64_t g_ttl_s;

static const cm_opt k_opts[] = {
    {"read-model-ttl-s", "READ_MODEL_TTL_S", CM_OPT_INT, &g_ttl_s, PJ_READ_MODEL_TTL_DEFAULT, 0, 315360000,
     "lifetime of a closed checkout's read model and of a client's checkout index after their last event "
     "(0: kept); chorus-projection-rebuild must be given the same"},
    {0},
};

typedef struct cqrs_state {
    pj_projection *pj;
    cm_series *e2e;        /* checkout_e2e_seconds */
    cm_series *applied;    /* projection_events_applied_total */
    cm_series *dups;       /* projection_events_duplicate_total */
    cm_series *misses;     /* projection_key_misses_total */
} cqrs_state;

static int cqrs_init(wk_ctx *ctx, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    cqrs_state *st = cm_xcalloc(1, sizeof *st);
    st->pj = pj_projection_new();
    pj_projection_set_lifetime(st->pj, g_ttl_s);
    st->e2e = cm_histogram("checkout_e2e_seconds", "checkout accept to terminal event (emitted_at difference)", "");
    st->applied = cm_counter("projection_events_applied_total", "events that changed the read models", "");
    st->dups = cm_counter("projection_events_duplicate_total", "redelivered events the read models already had", "");
    st->misses = cm_counter("projection_key_misses_total",
                            "keys the apply script had to ask for (each costs its batch one more script call)", "");
    wk_set_state(ctx, st);
    return 0;
}

static void cqrs_fini(wk_ctx *ctx)
{
    cqrs_state *st = wk_state(ctx);
    if (!st)
        return;
    pj_projection_free(st->pj);
    free(st);
    wk_set_state(ctx, NULL);
}

/* Applies the batch, waiting while a rebuild runs. Returns a pj_err. */
static int apply_waiting(wk_ctx *ctx, cqrs_state *st, es_event *const *evs, size_t n, unsigned char *verdicts,
                         pj_apply_res *res, char *err, size_t errlen)
{
    int64_t touched = cm_mono_ms();
    bool said = false;
    for (;;) {
        int rc = pj_projection_apply_from(st->pj, wk_cluster(ctx), evs, n, PJ_LIVE,
                                          wk_batch_redelivered(ctx) ? PJ_FROM_REDELIVERY : PJ_FROM_BUS, verdicts,
                                          res, err, errlen);
        if (rc != PJ_EBUSY || wk_stopping(ctx))
            return rc;
        if (!said) {
            cm_log(CM_INFO, "a read-model rebuild is running; waiting for it to finish");
            said = true;
        }
        cm_sleep_ms(BUSY_POLL_MS);
        if (cm_mono_ms() - touched >= TOUCH_EVERY_MS) {
            wk_touch(ctx);
            touched = cm_mono_ms();
        }
    }
}

static void cqrs_batch(wk_ctx *ctx, es_event *const *evs, size_t n, wk_result *results)
{
    cqrs_state *st = wk_state(ctx);
    unsigned char *verdicts = cm_xcalloc(n, 1);
    pj_apply_res res;
    char err[256];
    int rc = apply_waiting(ctx, st, evs, n, verdicts, &res, err, sizeof err);
    if (rc != PJ_OK) {
        wk_fail_reason(ctx, "read-model update failed: %s", err);
        for (size_t i = 0; i < n; i++)
            results[i] = WK_RETRY;
        free(verdicts);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        results[i] = WK_ACK;
        if (verdicts[i] == PJ_REJECTED) {
            /* the per-event refusals: say why in the dead letter */
            wk_fail_reason(ctx, "seq %lld is beyond the %d events a checkout read model tracks",
                           (long long)evs[i]->seq, PJ_MAX_SEQ);
            results[i] = WK_DEAD;
        } else if (verdicts[i] == PJ_BAD_ID) {
            wk_fail_reason(ctx, "aggregate_id is not an id (1..64 of [A-Za-z0-9_-]): no read-model key for it");
            results[i] = WK_DEAD;
        }
    }
    cm_series_add(st->applied, res.applied);
    cm_series_add(st->dups, res.duplicates);
    cm_series_add(st->misses, res.key_misses);
    for (size_t i = 0; i < res.ne2e; i++)
        if (res.e2e[i] >= 0)
            cm_series_observe(st->e2e, res.e2e[i]);
    free(verdicts);
}

const wk_def wk_cqrs_projection = {
    .id = CM_W_CQRS_PROJECTION,
    .batch = cqrs_batch,
    .init = cqrs_init,
    .fini = cqrs_fini,
    .opts = k_opts,
};
