/* projection.h - the CQRS read models (DESIGN.md, cqrs-projection) and their
 * rebuild from zero.
 *
 * Read models (the API reads these keys and fields):
 *   chorus:rm:checkout:<id>  hash  checkout_id client_id status order_id?
 *                                  reason? updated_at seq, plus internal
 *                                  fields prefixed "_" (_t applied seqs, _init
 *                                  CheckoutInitiated's emitted_at, _items the
 *                                  reservation not yet sold)
 *   chorus:rm:client:<id>    hash  total_orders last_order_id last_checkout_id
 *                                  last_update_ts (from OrderCreated)
 *   chorus:rm:stock:<id>     hash  reserved sold released: cumulative units
 *                                  from StockReserved, OrderCreated (the units
 *                                  its checkout's StockReserved held) and
 *                                  StockReleased
 *   chorus:rm:checkpoint     string highest bus entry id applied
 * Times are the events' emitted_at ("%.6f"), never the wall clock, so a
 * rebuild writes the same bytes.
 *
 * A batch is applied by one Lua script (projections/lua/apply.lua) together
 * with the checkpoint. Applying is idempotent per (checkout, seq) and
 * independent of order, so duplicates, redeliveries and several projection
 * copies all converge on the same keys. While a rebuild runs it holds
 * PJ_REBUILD_LOCK_KEY and live applies answer PJ_EBUSY. */
#ifndef PJ_PROJECTION_H
#define PJ_PROJECTION_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "event_store/event.h"

#define PJ_RM_PREFIX CM_KEY_PREFIX "rm:"
#define PJ_CHECKPOINT_KEY PJ_RM_PREFIX "checkpoint"
#define PJ_REBUILD_LOCK_KEY CM_KEY_PREFIX "pj:rebuild"   /* outside rm: so a rebuild does not delete it */
#define PJ_MAX_SEQ 4096   /* events of one checkout the read model tracks */
#define PJ_CHECKOUT_AGGREGATE "checkout"   /* the aggregate the read models project */

enum pj_err {
    PJ_OK = 0,
    PJ_EREDIS = -1,   /* I/O or script error; transient */
    PJ_EBUSY = -2,    /* a rebuild holds the lock; try again later */
    PJ_EINVAL = -3,   /* bad arguments */
};

/* Per-event verdicts of an apply. */
enum pj_verdict {
    PJ_APPLIED = 0,   /* applied now, or already applied before (duplicate) */
    PJ_IGNORED = 1,   /* not a checkout event: nothing to project */
    PJ_REJECTED = 2,  /* cannot be projected (seq beyond PJ_MAX_SEQ) */
};

enum pj_mode { PJ_LIVE, PJ_REBUILD };

typedef struct pj_projection pj_projection;

/* Creates the projection's script state (no connection is kept: each call
 * takes the caller's context). Free with pj_projection_free. */
pj_projection *pj_projection_new(void);
void pj_projection_free(pj_projection *p);   /* NULL ok */

typedef struct pj_apply_res {
    size_t applied;       /* events that changed the read models */
    size_t duplicates;    /* events already applied */
    double *e2e;          /* accept-to-terminal seconds of checkouts completed now */
    size_t ne2e;          /* (owned by the projection; valid until the next call) */
} pj_apply_res;

/* Applies evs (in stream order) on c in one script call, checkpoint included.
 * verdicts (may be NULL) gets one pj_verdict per event. Returns PJ_OK,
 * PJ_EBUSY (live mode during a rebuild: nothing written), PJ_EREDIS with the
 * reason in err. */
int pj_projection_apply(pj_projection *p, redisContext *c, const char *bus, es_event *const *evs, size_t n,
                        enum pj_mode mode, unsigned char *verdicts, pj_apply_res *res, char *err,
                        size_t errlen) __attribute__((warn_unused_result));

typedef struct pj_rebuild_stats {
    long long deleted;    /* read-model keys removed */
    long long events;     /* bus entries replayed */
    long long applied;    /* of which changed the read models */
    long long undecodable;/* bus entries that could not be decoded (skipped) */
} pj_rebuild_stats;

/* Rebuilds the read models from zero: takes the rebuild lock (live
 * projections pause), deletes every chorus:rm:* key, replays the bus from its
 * first retained entry through the same apply script, releases the lock.
 * The result covers what the bus retains (EVENT_RETENTION_DAYS trims it).
 * Returns PJ_OK, PJ_EBUSY when another rebuild holds the lock, PJ_EREDIS. */
int pj_projection_rebuild(redisContext *c, const char *bus, pj_rebuild_stats *stats, char *err,
                          size_t errlen) __attribute__((warn_unused_result));

#endif
