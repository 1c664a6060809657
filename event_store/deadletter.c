/* deadletter.c - parking poison entries and re-delivering them to one group. */
#include "event_store/deadletter.h"
#include "common/names.h"
#include "common/redis.h"

#include <stdio.h>
#include <string.h>

extern const char es_lua_dlq_retry[];
extern const char es_lua_dlq_park[];
static __thread cm_script t_retry = {.src = es_lua_dlq_retry};
static __thread cm_script t_park = {.src = es_lua_dlq_park};

void es_dlq_stream(const char *bus, const char *group, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.dlq.%s", bus, group);
}

void es_retry_stream(const char *bus, const char *group, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.retry.%s", bus, group);
}

int (es_dlq_park)(cm_cluster *cc, const char *bus, const char *stream, const char *group, const redisReply *entry,
                  const char *reason, long long attempts, char *err, size_t errlen)
{
    const redisReply *id = cm_reply_elem(entry, 0);
    const redisReply *fields = cm_reply_elem(entry, 1);
    if (!cm_reply_is_str(id)) {
        snprintf(err, errlen, "cannot park a malformed entry");
        return ES_EINVAL;
    }
    char dlq[512];
    es_dlq_stream(bus, group, dlq, sizeof dlq);
    cm_argv a = {0};   /* KEYS, then group, id and the dead letter's fields (lua/dlq_park.lua) */
    cm_argv_adds(&a, dlq);
    cm_argv_adds(&a, stream);
    cm_argv_adds(&a, group);
    cm_argv_add(&a, id->str, id->len);
    cm_argv_adds(&a, "group");
    cm_argv_adds(&a, group);
    cm_argv_adds(&a, "reason");
    cm_argv_adds(&a, reason && *reason ? reason : "unknown");
    cm_argv_adds(&a, "attempts");
    cm_argv_addll(&a, attempts);
    cm_argv_adds(&a, "stream");
    cm_argv_adds(&a, stream);
    cm_argv_adds(&a, "entry_id");
    cm_argv_add(&a, id->str, id->len);
    /* the original fields, as they were (foreign ones included) */
    for (size_t i = 0; fields && fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if ((k->len == 4 && !memcmp(k->str, "type", 4)) || (k->len == 7 && !memcmp(k->str, "payload", 7)) ||
            (k->len == 2 && !memcmp(k->str, "ts", 2))) {
            cm_argv_add(&a, k->str, k->len);
            cm_argv_add(&a, v->str, v->len);
        }
    }
    /* the dead-letter stream carries the bus's hash tag: one slot, one script */
    redisReply *r = cm_cluster_script(cc, &t_park, 2, &a);
    cm_argv_free(&a);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return ES_EREDIS;
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        snprintf(err, errlen, "redis: unexpected answer of the park script");
        rc = ES_EREDIS;
    }
    freeReplyObject(r);
    return rc;
}

/* es_dlq_retry_all moves at most this many per script call, so a huge
 * dead-letter stream never holds Redis for long. */
#define ES_DLQ_RETRY_CHUNK 100

static long long call_retry(cm_cluster *cc, const char *bus, const char *group, const char *id, long long count,
                            char *err, size_t errlen)
{
    char dlq[512], rs[512];
    es_dlq_stream(bus, group, dlq, sizeof dlq);
    es_retry_stream(bus, group, rs, sizeof rs);
    cm_argv a = {0};
    cm_argv_adds(&a, dlq);
    cm_argv_adds(&a, rs);
    cm_argv_adds(&a, id);
    cm_argv_addll(&a, count);
    redisReply *r = cm_cluster_script(cc, &t_retry, 2, &a);
    cm_argv_free(&a);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return ES_EREDIS;
    long long n = cm_reply_ll(r, 0);
    freeReplyObject(r);
    return n;
}

int (es_dlq_retry)(cm_cluster *cc, const char *bus, const char *group, const char *id, char *err, size_t errlen)
{
    if (!id || !*id || strchr(id, '*')) {
        snprintf(err, errlen, "invalid dead-letter id");
        return ES_EINVAL;
    }
    long long n = call_retry(cc, bus, group, id, 1, err, errlen);
    if (n < 0)
        return (int)n;
    if (n == 0) {
        snprintf(err, errlen, "no dead letter %s in group %s", id, group);
        return ES_ENOTFOUND;
    }
    return ES_OK;
}

long long (es_dlq_retry_oldest)(cm_cluster *cc, const char *bus, const char *group, long long count, char *err,
                              size_t errlen)
{
    if (count < 1 || count > ES_DLQ_RETRY_OLDEST_MAX) {
        snprintf(err, errlen, "count must be 1..%d", ES_DLQ_RETRY_OLDEST_MAX);
        return ES_EINVAL;
    }
    return call_retry(cc, bus, group, "*", count, err, errlen);
}

long long (es_dlq_retry_all)(cm_cluster *cc, const char *bus, const char *group, long long max, char *err,
                           size_t errlen)
{
    long long total = 0;
    while (total < max) {
        long long chunk = max - total < ES_DLQ_RETRY_CHUNK ? max - total : ES_DLQ_RETRY_CHUNK;
        long long n = call_retry(cc, bus, group, "*", chunk, err, errlen);
        if (n < 0)
            return n;
        total += n;
        if (n < chunk)
            break;
    }
    return total;
}

int es_dlq_park_conn(redisContext *c, const char *bus, const char *stream, const char *group,
                     const redisReply *entry, const char *reason, long long attempts, char *err, size_t errlen)
{
    cm_cluster *cc = cm_cluster_borrow(c);
    int rc = (es_dlq_park)(cc, bus, stream, group, entry, reason, attempts, err, errlen);
    cm_cluster_free(cc);
    return rc;
}

int es_dlq_retry_conn(redisContext *c, const char *bus, const char *group, const char *id, char *err, size_t errlen)
{
    cm_cluster *cc = cm_cluster_borrow(c);
    int rc = (es_dlq_retry)(cc, bus, group, id, err, errlen);
    cm_cluster_free(cc);
    return rc;
}

long long es_dlq_retry_all_conn(redisContext *c, const char *bus, const char *group, long long max, char *err,
                                size_t errlen)
{
    cm_cluster *cc = cm_cluster_borrow(c);
    long long n = (es_dlq_retry_all)(cc, bus, group, max, err, errlen);
    cm_cluster_free(cc);
    return n;
}

long long es_dlq_retry_oldest_conn(redisContext *c, const char *bus, const char *group, long long count,
                                   char *err, size_t errlen)
{
    cm_cluster *cc = cm_cluster_borrow(c);
    long long n = (es_dlq_retry_oldest)(cc, bus, group, count, err, errlen);
    cm_cluster_free(cc);
    return n;
}
