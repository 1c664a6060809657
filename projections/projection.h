/* projection.h - the CQRS read models (DESIGN.md, cqrs-projection) and their
 * rebuild from zero.
 *
 * Read models (the API reads these keys and fields; names from
 * common/names.h's cm_key_* functions):
 *   chorus:rm:checkout:<id>  hash  checkout_id client_id status updated_at
 *                                  seq _t _init _items? order_id? reason?
 *                                  (internal fields prefixed "_": _t applied
 *                                  seqs, _init CheckoutInitiated's emitted_at,
 *                                  _items the reservation not yet sold),
 *                                  always in this field order: the order a
 *                                  saga's events bring them (apply.lua)
 *   chorus:rm:client:<id>    hash  total_orders last_order_id last_checkout_id
 *                                  last_update_ts (from OrderCreated)
 *   chorus:rm:client-checkouts:<id> zset  the client's newest
 *                                  PJ_CLIENT_CHECKOUTS_MAX checkout ids, scored
 *                                  by their CheckoutInitiated's emitted_at
 *   chorus:rm:stock:<id>     hash  reserved sold released: cumulative units
 *                                  from StockReserved, OrderCreated (the units
 *                                  its checkout's StockReserved held) and
 *                                  StockReleased
 *   chorus:rm:checkpoint     string highest bus entry id applied
 * With PARTITIONS > 1 the checkout model carries its checkout's partition
 * tag, and the client, client-checkouts, stock and checkpoint models are
 * kept per partition (cm_key_rm_*(p, ...): counts, newest checkouts and the
 * highest entry id of that partition's checkouts and bus); the readers in
 * projections/read.h sum and merge them, so every apply script call stays
 * in one partition's slot (Redis Cluster).
 * Times are the events' emitted_at ("%.6f"), never the wall clock, so a
 * rebuild writes the same bytes. Lifetimes too (pj_projection_set_lifetime,
 * READ_MODEL_TTL_S): a closed checkout's hash expires that long after its
 * newest event, a client's checkouts zset after its newest checkout (EXPIREAT
 * from emitted_at, so a rebuild sets the same); the client and stock hashes
 * are aggregates and are kept.
 *
 * A batch is applied by one Lua script (projections/lua/apply.lua, called
 * through projections/apply_script.h) together with the checkpoint. Applying
 * is idempotent per (checkout, seq) and independent of order, so duplicates,
 * redeliveries and several projection copies all converge on the same keys.
 * A checkout reaching SUCCEEDED or FAILED is published on
 * CM_RM_CHANGED_CHANNEL (the API's long-poll waits for those only). While a
 * rebuild runs it holds every partition's cm_key_pj_rebuild(p) and live
 * applies answer PJ_EBUSY. */
#ifndef PJ_PROJECTION_H
#define PJ_PROJECTION_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/cluster.h"
#include "common/names.h"
#include "event_store/event.h"

/* Older names of common/names.h's keys (the tests use them). */
#define PJ_RM_PREFIX CM_KEY_RM_PREFIX
#define PJ_CHECKPOINT_KEY CM_KEY_RM_CHECKPOINT
#define PJ_REBUILD_LOCK_KEY CM_KEY_PJ_REBUILD
#define PJ_CLIENT_CHECKOUTS_MAX 100   /* checkouts kept per client (apply.lua) */
#define PJ_MAX_SEQ 4096   /* events of one checkout the read model tracks */
#define PJ_CHECKOUT_AGGREGATE "checkout"   /* the aggregate the read models project */
/* READ_MODEL_TTL_S's default: a closed checkout's read model and a client's
 * checkout index live 7 days after their last event (then the API folds the
 * history); the client and stock read models are aggregates and are kept. */
#define PJ_READ_MODEL_TTL_DEFAULT "604800"

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
    PJ_REJECTED = 2,  /* cannot be projected: seq beyond PJ_MAX_SEQ */
    PJ_BAD_ID = 3,    /* cannot be projected: its aggregate_id is not an id */
};

enum pj_mode { PJ_LIVE, PJ_REBUILD };

/* Where a batch was read from: the bus (its entry ids move the checkpoint)
 * or the group's redelivery stream (they do not: they are that stream's). */
enum pj_source { PJ_FROM_BUS, PJ_FROM_REDELIVERY };

typedef struct pj_projection pj_projection;

/* Creates the projection's script state (no connection is kept: each call
 * takes the caller's context). Free with pj_projection_free. */
pj_projection *pj_projection_new(void);
void pj_projection_free(pj_projection *p);   /* NULL ok */
/* Sets the lifetime (seconds; <= 0: kept, the default) of closed checkouts'
 * read models and of client checkout indexes (READ_MODEL_TTL_S). */
void pj_projection_set_lifetime(pj_projection *p, long long ttl_s);

typedef struct pj_apply_res {
    size_t applied;       /* events that changed the read models */
    size_t duplicates;    /* events already applied */
    double *e2e;          /* accept-to-terminal seconds of checkouts completed now */
    size_t ne2e;          /* (owned by the projection; valid until the next call) */
    size_t key_misses;    /* keys the script had to ask for: the projection's memory
                             of StockReserved items did not have them */
} pj_apply_res;

/* Applies evs (in stream order, read from source) through cc: one script
 * call per partition the batch touches (more for a partition with over
 * 1,024 events), all in one pipeline, each with its partition's checkpoint.
 * verdicts (may be NULL) gets one pj_verdict per event. Returns PJ_OK,
 * PJ_EBUSY (live mode during a rebuild: that partition wrote nothing),
 * PJ_EREDIS with the reason in err (other partitions may have applied: run
 * the batch again). A single server: cm_cluster_borrow(c). */
int pj_projection_apply_from(pj_projection *p, cm_cluster *cc, es_event *const *evs, size_t n, enum pj_mode mode,
                             enum pj_source source, unsigned char *verdicts, pj_apply_res *res, char *err,
                             size_t errlen) __attribute__((warn_unused_result));
/* pj_projection_apply_from for a batch read from the bus (bus must not be
 * NULL; it names the stream the events came from). */
int pj_projection_apply(pj_projection *p, cm_cluster *cc, const char *bus, es_event *const *evs, size_t n,
                        enum pj_mode mode, unsigned char *verdicts, pj_apply_res *res, char *err,
                        size_t errlen) __attribute__((warn_unused_result));

typedef struct pj_rebuild_stats {
    long long deleted;    /* read-model keys removed */
    long long events;     /* bus entries replayed */
    long long applied;    /* of which changed the read models */
    long long undecodable;/* bus entries that could not be decoded (skipped) */
} pj_rebuild_stats;

/* Rebuilds the read models from zero through cc (one server or a cluster):
 * takes every partition's rebuild lock (live projections pause), deletes
 * every chorus:rm:* key, replays the bus from its
 * first retained entry through the same apply script, releases the lock.
 * ttl_s is READ_MODEL_TTL_S (as the live projection's, so the lifetimes
 * come out the same; 0: kept). The result covers what the bus retains
 * (EVENT_RETENTION_DAYS trims it), less what has outlived ttl_s.
 * Returns PJ_OK, PJ_EBUSY when another rebuild holds the lock, PJ_EREDIS. */
int pj_projection_rebuild(cm_cluster *cc, const char *bus, long long ttl_s, pj_rebuild_stats *stats, char *err,
                          size_t errlen) __attribute__((warn_unused_result));

#endif
