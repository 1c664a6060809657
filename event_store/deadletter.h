/* deadletter.h - dead-letter and redelivery streams of a consumer group.
 *
 * A group's poison entries are parked in "<bus>.dlq.<group>" with fields
 * group, reason, attempts, stream, entry_id (the original id), type, payload,
 * ts. Re-delivering one moves it (one Lua script: XADD + XDEL) to the group's
 * own redelivery stream "<bus>.retry.<group>", which only that group reads, so
 * the other groups never see it twice. */
#ifndef ES_DEADLETTER_H
#define ES_DEADLETTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "common/cluster.h"
#include "event_store/store.h"

/* Writes "<bus>.dlq.<group>" / "<bus>.retry.<group>" into out. */
void es_dlq_stream(const char *bus, const char *group, char *out, size_t outlen);
void es_retry_stream(const char *bus, const char *group, char *out, size_t outlen);

/* Every call goes through a cm_cluster to the master of the group's
 * streams' slot (a partition's bus, its .dlq and .retry streams share the
 * bus's {p<p>} hash tag, so parking and re-delivering stay in one slot).
 * Callers still holding one server's redisContext may pass it instead
 * (see the _Generic macros below): it is wrapped by cm_cluster_borrow for
 * the call. */

/* Parks the entry `entry` (an XRANGE-shaped reply [id, [k, v, ...]] read from
 * `stream`) in group's dead-letter stream and acknowledges it, atomically
 * (one script on the stream's master, lua/dlq_park.lua). Parking the same
 * entry of the same stream again while its dead letter is among the group's
 * newest 16 adds nothing (a resent park). Returns 0 or ES_EREDIS with err. */
int es_dlq_park(cm_cluster *cc, const char *bus, const char *stream, const char *group, const redisReply *entry,
                const char *reason, long long attempts, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Moves dead letter `id` of group back to its redelivery stream. Returns 0,
 * ES_ENOTFOUND when there is no such entry, or ES_EREDIS. */
int es_dlq_retry(cm_cluster *cc, const char *bus, const char *group, const char *id, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Re-delivers up to max dead letters of group, oldest first, in chunks of at
 * most 100 per script call. Returns how many moved, or ES_EREDIS. */
long long es_dlq_retry_all(cm_cluster *cc, const char *bus, const char *group, long long max, char *err,
                           size_t errlen);

#define ES_DLQ_RETRY_OLDEST_MAX 1000

/* Re-delivers up to count (1..ES_DLQ_RETRY_OLDEST_MAX) of group's oldest
 * dead letters in one script call (one round trip, atomic). Returns how many
 * moved (fewer when fewer are parked), ES_EINVAL for a count out of range,
 * or ES_EREDIS with err. */
long long es_dlq_retry_oldest(cm_cluster *cc, const char *bus, const char *group, long long count, char *err,
                              size_t errlen);

/* Transitional, for callers not yet on cm_cluster: the same calls on one
 * server's connection c (wrapped by cm_cluster_borrow for the call). */
int es_dlq_park_conn(redisContext *c, const char *bus, const char *stream, const char *group,
                     const redisReply *entry, const char *reason, long long attempts, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int es_dlq_retry_conn(redisContext *c, const char *bus, const char *group, const char *id, char *err,
                      size_t errlen) __attribute__((warn_unused_result));
long long es_dlq_retry_all_conn(redisContext *c, const char *bus, const char *group, long long max, char *err,
                                size_t errlen);
long long es_dlq_retry_oldest_conn(redisContext *c, const char *bus, const char *group, long long count,
                                   char *err, size_t errlen);

/* One name for both: a redisContext * picks the _conn variant. */
#define es_dlq_park(c, ...) _Generic((c), redisContext *: es_dlq_park_conn, default: es_dlq_park)(c, __VA_ARGS__)
#define es_dlq_retry(c, ...) _Generic((c), redisContext *: es_dlq_retry_conn, default: es_dlq_retry)(c, __VA_ARGS__)
#define es_dlq_retry_all(c, ...)                                                                              \
    _Generic((c), redisContext *: es_dlq_retry_all_conn, default: es_dlq_retry_all)(c, __VA_ARGS__)
#define es_dlq_retry_oldest(c, ...)                                                                           \
    _Generic((c), redisContext *: es_dlq_retry_oldest_conn, default: es_dlq_retry_oldest)(c, __VA_ARGS__)

#endif
