/* store_int.h - internals shared by the event store's .c files. */
#ifndef ES_STORE_INT_H
#define ES_STORE_INT_H

#include "common/cluster.h"
#include "event_store/store.h"

struct es_store {
    redisContext *c;      /* es_store_new's connection (borrowed); NULL for es_store_open */
    cm_cluster *cc;       /* every call goes through it, routed by its key's slot */
    bool own_cc;          /* es_store_new: cc borrows c and is freed with the store */
    char *bus;            /* bus stream name */
    cm_script append;     /* lua/append.lua with the append library */
    cm_script batch;      /* lua/append_batch.lua with the append library */
    char err[256];        /* last error text */
};

/* Like cm_reply_failed for a reply of s->cc: true (r freed, the reason
 * "redis: ..." in s->err) when r is NULL or an error reply. */
bool es_reply_failed(es_store *s, redisReply *r);

#endif
