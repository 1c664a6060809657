/* read.h - the read side of the per-partition read models.
 *
 * The projection keeps a product's stock counts, a client's order counts,
 * a client's newest checkouts and the checkpoint per partition (the
 * partition of the checkouts they come from; projection.h), so that each
 * apply script stays in one Redis Cluster slot. These functions give the
 * one view a reader wants: counts summed over the partitions, the newest
 * checkouts merged newest first, the greatest checkpoint. Each reads every
 * partition's key in one pipeline through cc (on a cluster, one write per
 * node; a single server: cm_cluster_borrow). With PARTITIONS=1 they read
 * the one key as it always was.
 *
 * All return PJ_OK, PJ_EINVAL (an id that is not an id), or PJ_EREDIS with
 * err: "redis: <error reply>" when Redis answered with an error (classify
 * with cm_redis_fault_of_error), else the client's I/O error. */
#ifndef PJ_READ_H
#define PJ_READ_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cluster.h"
#include "projections/projection.h"

/* A product's stock view: units summed over partitions. */
typedef struct pj_stock_view {
    long long reserved;   /* units ever reserved */
    long long sold;       /* of which sold (OrderCreated) */
    long long released;   /* of which released (StockReleased) */
    bool found;           /* some partition has counts for the product */
} pj_stock_view;

/* Reads product_id's stock view into *out. */
int pj_read_stock(cm_cluster *cc, const char *product_id, pj_stock_view *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* A client's orders view: orders summed over partitions; the last order is
 * the one with the greatest (last_update_ts, last_checkout_id), the rule
 * apply.lua applies within a partition. Strings are "" when absent. */
typedef struct pj_client_view {
    long long total_orders;
    char last_order_id[65];
    char last_checkout_id[65];
    char last_update_ts[48];   /* the OrderCreated's emitted_at as stored ("%.6f") */
    bool found;                /* some partition has a read model for the client */
} pj_client_view;

/* Reads client_id's orders view into *out. */
int pj_read_client(cm_cluster *cc, const char *client_id, pj_client_view *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* One entry of a client's checkout index. */
typedef struct pj_checkout_ref {
    char id[65];           /* the checkout id */
    double initiated_at;   /* its CheckoutInitiated's emitted_at (the zset score) */
} pj_checkout_ref;

/* The client's newest count (1..PJ_CLIENT_CHECKOUTS_MAX) checkouts, newest
 * first (ties: the greater id first, as ZREVRANGE orders them), merged from
 * every partition's index. *out (caller frees with free(); NULL when *n is
 * 0) gets *n <= count entries. */
int pj_read_client_checkouts(cm_cluster *cc, const char *client_id, size_t count, pj_checkout_ref **out, size_t *n,
                             char *err, size_t errlen) __attribute__((warn_unused_result));

/* The greatest bus entry id any partition's checkpoint holds ("" when none)
 * into out. */
int pj_read_checkpoint(cm_cluster *cc, char out[48], char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
