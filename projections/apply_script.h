/* apply_script.h - the typed call of projections/lua/apply.lua: one batch of
 * checkout events applied to the read models, checkpoint included.
 *
 * This module alone knows the script's KEYS and ARGV layout (apply_script.c).
 * A caller adds typed events; the module names every key the script will
 * touch (checkpoint, rebuild lock, each checkout's read model, each client's
 * orders hash and checkouts zset, each product's stock view) through
 * common/names.h, passes them in KEYS once each, and parses the reply into a
 * pj_apply_reply.
 *
 * Keys the batch alone cannot name: an OrderCreated sells what its
 * checkout's StockReserved held, which an earlier batch stored in the
 * checkout's read model. The caller passes those products with
 * pj_apply_call_add_product when it knows them; when it does not, the script
 * writes nothing and asks for them (PJ_APPLY_NEED), and pj_apply_call_run
 * adds them and calls once more.
 *
 * A call belongs to one partition (PARTITIONS, common/names.h): it takes
 * only that partition's checkouts and names that partition's copies of the
 * stock, client and checkpoint models and of the rebuild lock, so with
 * PARTITIONS > 1 all its KEYS share one hash tag (one Redis Cluster slot). */
#ifndef PJ_APPLY_SCRIPT_H
#define PJ_APPLY_SCRIPT_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "common/cluster.h"
#include "common/names.h"
#include "projections/projection.h"

/* One line of a StockReserved / StockReleased. */
typedef struct pj_apply_item {
    const char *product_id;   /* an id (cm_id_valid, <= 64 bytes) */
    long long quantity;       /* >= 1 */
} pj_apply_item;

/* One checkout event, as the script needs it (borrowed strings). */
typedef struct pj_apply_event {
    enum cm_event_type type;     /* CM_EV_UNKNOWN: counted in _t, no effect */
    const char *checkout_id;     /* an id */
    long long seq;               /* 1..PJ_MAX_SEQ */
    double emitted_at;
    const char *client_id;       /* an id, or NULL / "" for none */
    const char *value;           /* order id (OrderCreated, CheckoutSucceeded) or
                                    reason (CheckoutFailed); NULL for none */
    const pj_apply_item *items;  /* StockReserved, StockReleased */
    size_t nitems;
} pj_apply_event;

enum pj_apply_verdict {
    PJ_APPLY_DONE = 0,   /* applied (duplicates skipped) */
    PJ_APPLY_BUSY = 1,   /* live call while a rebuild holds the lock: nothing written */
    PJ_APPLY_NEED = 2,   /* keys were missing: nothing written, they are added now */
};

typedef struct pj_apply_reply {
    enum pj_apply_verdict verdict;
    long long applied;      /* events that changed the read models */
    long long duplicates;   /* events already applied */
    const double *e2e;      /* accept-to-terminal seconds of checkouts completed now */
    size_t ne2e;            /* (owned by the call; valid until its next run or reset) */
    size_t needed;          /* keys the script asked for (PJ_APPLY_NEED, or added by a rerun) */
} pj_apply_reply;

typedef struct pj_apply_call pj_apply_call;

/* A call builder for partition (0..cm_partitions()-1; out of range: 0) in
 * mode PJ_LIVE with no events. It keeps the script's SHA across resets:
 * reuse one per partition. Free with pj_apply_call_free. */
pj_apply_call *pj_apply_call_new(int partition);
/* The partition the call was made for. */
int pj_apply_call_partition(const pj_apply_call *call);
void pj_apply_call_free(pj_apply_call *call);   /* NULL ok */
/* Forgets events, keys and the checkpoint candidate; sets the mode. */
void pj_apply_call_reset(pj_apply_call *call, enum pj_mode mode);

/* Sets the lifetime (seconds, READ_MODEL_TTL_S; <= 0: kept, the default)
 * of closed checkouts' read models and of client checkout indexes, counted
 * from the events' times (apply.lua says how). Kept across resets. */
void pj_apply_call_lifetime(pj_apply_call *call, long long ttl_s);

/* Adds ev and the keys it names (its checkout, its client's pair, its items'
 * products). Returns PJ_OK, or PJ_EINVAL (nothing added) with err naming the
 * field that is not an id or out of range, or a checkout of another
 * partition. */
int pj_apply_call_add_event(pj_apply_call *call, const pj_apply_event *ev, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Passes a product's stock view (one an OrderCreated may sell). PJ_EINVAL
 * when product_id is not an id. */
int pj_apply_call_add_product(pj_apply_call *call, const char *product_id) __attribute__((warn_unused_result));
/* Passes a client's orders hash and checkouts zset. PJ_EINVAL when not an id. */
int pj_apply_call_add_client(pj_apply_call *call, const char *client_id) __attribute__((warn_unused_result));
/* Offers a bus entry id for the checkpoint; the greatest offered is written
 * (and only if greater than the stored one). Do not offer ids of a group's
 * redelivery stream. PJ_EINVAL when not "<ms>-<seq>". */
int pj_apply_call_checkpoint(pj_apply_call *call, const char *entry_id) __attribute__((warn_unused_result));
size_t pj_apply_call_nevents(const pj_apply_call *call);
size_t pj_apply_call_nkeys(const pj_apply_call *call);   /* KEYS passed, fixed ones included */

/* Queues the script call on pipe (cm_pipe_exec sends it to its slot's
 * master; hand the reply to pj_apply_call_parse). PJ_EREDIS with err when
 * the keys span cluster slots (PARTITIONS=1 on a cluster): nothing queued. */
int pj_apply_call_queue(pj_apply_call *call, cm_pipe *pipe, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Reads the script's reply r (taken: freed here; NULL = no reply). On
 * PJ_APPLY_NEED the missing keys are added to the call (queue it again).
 * Returns PJ_OK with *out filled, PJ_EREDIS with err (an error reply, a
 * reply of the wrong shape). */
int pj_apply_call_parse(pj_apply_call *call, redisReply *r, pj_apply_reply *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Runs the script once through cc (queue, send, parse in one). Returns as
 * pj_apply_call_parse; PJ_EREDIS with err also for I/O and a call whose
 * keys span cluster slots. */
int pj_apply_call_run_once(pj_apply_call *call, cm_cluster *cc, pj_apply_reply *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Runs the script; on PJ_APPLY_NEED adds the keys and runs it once more.
 * Returns PJ_OK with verdict DONE or BUSY, PJ_EREDIS (also when it still
 * lacks keys the second time: another copy moved the checkout in between,
 * retry the batch). */
int pj_apply_call_run(pj_apply_call *call, cm_cluster *cc, pj_apply_reply *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
