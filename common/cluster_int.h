/* cluster_int.h - what cluster.c (nodes, slot map) and cluster_run.c (the
 * request engine) share. Not for use outside common/cluster*.c. */
#ifndef CM_CLUSTER_INT_H
#define CM_CLUSTER_INT_H

#include "common/cluster.h"

typedef struct node {
    char host[256];
    int port;
    redisContext *c;   /* NULL until first used and after an I/O error */
    int tmo_ms;        /* the I/O timeout c was last given */
    bool given_up;     /* best effort: gave up in this run (cm_cluster_skips_begin) */
    int64_t skip_until_ms;   /* best effort: skipped until then (backoff) */
    int backoff_ms;    /* its next skip's length; 0 after a reply */
} node;

struct cm_cluster {
    cm_redis_url url;                   /* parsed REDIS_URL: credentials, seeds, single server */
    int timeout_ms;                     /* connect and per-command timeout */
    int retry_ms;                       /* how long one call retries transient failures */
    node *nodes;
    int nnodes, capnodes;
    int16_t owner[CM_CLUSTER_SLOTS];    /* node index per slot, -1 unknown */
    bool map_stale;                     /* re-read CLUSTER SLOTS before the next round */
    bool borrowed;                      /* cm_cluster_borrow: node 0's connection is the caller's */
    int budget_ms;                      /* best effort: a node's share of a call; 0 off */
    int nskipped;                       /* nodes given up or skipped in this run */
    char skipped[256];                  /* their addresses and the first reason */
    int err;                            /* last failure, a cm_cluster_err */
    char errstr[512];
};

/* Records a failure (code and text) as the call's error. */
void cm_cluster_set_err(cm_cluster *cc, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The index of host:port in the node table, added (disconnected) when new. */
int cm_cluster_node_get(cm_cluster *cc, const char *host, size_t hostlen, int port);

/* Node i's connection, opened when needed; NULL with the error set. */
redisContext *cm_cluster_node_conn(cm_cluster *cc, int i);

/* Drops node i's connection after an I/O error, recording why; in a
 * cluster, marks the map stale (a master may have failed over). */
void cm_cluster_node_drop(cm_cluster *cc, int i);

/* Re-reads the slot map from the first node that answers; 0 or
 * CM_CLUSTER_EUNAVAIL (the old map is kept, map_stale stays set). */
int cm_cluster_reload(cm_cluster *cc);

/* The I/O timeout of a call now: the open timeout, capped by the best
 * effort budget while it is on. */
int cm_cluster_io_ms(const cm_cluster *cc);

/* True when best effort is on and node i gave up in this run or is backing
 * off: its commands fail at once, nothing sent. */
bool cm_cluster_node_skipped(const cm_cluster *cc, int i);

/* Best effort: node i's commands were skipped in this run (counted and
 * named once per run; its backoff unchanged). */
void cm_cluster_node_note_skip(cm_cluster *cc, int i);

/* Best effort: node i did not answer within the budget; it is skipped for
 * the rest of the run and, after it, for a backoff. */
void cm_cluster_node_give_up(cm_cluster *cc, int i);

/* The node to send slot's commands to (CM_SLOT_ANY: any master), or -1
 * when no owner is known. */
int cm_cluster_route(const cm_cluster *cc, int slot);

#endif
