/* cluster_int.h - what cluster.c (nodes, slot map) and cluster_run.c (the
 * request engine) share. Not for use outside common/cluster*.c. */
#ifndef CM_CLUSTER_INT_H
#define CM_CLUSTER_INT_H

#include "common/cluster.h"

typedef struct node {
    char host[256];
    int port;
    redisContext *c;   /* NULL until first used and after an I/O error */
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

/* The node to send slot's commands to (CM_SLOT_ANY: any master), or -1
 * when no owner is known. */
int cm_cluster_route(const cm_cluster *cc, int slot);

#endif
