/* store_int.h - internals shared by the event store's .c files. */
#ifndef ES_STORE_INT_H
#define ES_STORE_INT_H

#include "event_store/store.h"

struct es_store {
    redisContext *c;      /* borrowed */
    char *bus;            /* bus stream name */
    cm_script append;     /* lua/append.lua with the append library */
    cm_script batch;      /* lua/append_batch.lua with the append library */
    char err[256];        /* last error text */
};

#endif
