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

#include "event_store/store.h"

/* Writes "<bus>.dlq.<group>" / "<bus>.retry.<group>" into out. */
void es_dlq_stream(const char *bus, const char *group, char *out, size_t outlen);
void es_retry_stream(const char *bus, const char *group, char *out, size_t outlen);

/* Parks the entry `entry` (an XRANGE-shaped reply [id, [k, v, ...]] read from
 * `stream`) in group's dead-letter stream and acknowledges it, atomically
 * (MULTI/EXEC). Returns 0 or ES_EREDIS with err. */
int es_dlq_park(redisContext *c, const char *bus, const char *stream, const char *group,
                const redisReply *entry, const char *reason, long long attempts, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Moves dead letter `id` of group back to its redelivery stream. Returns 0,
 * ES_ENOTFOUND when there is no such entry, or ES_EREDIS. */
int es_dlq_retry(redisContext *c, const char *bus, const char *group, const char *id, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Re-delivers up to max dead letters of group, oldest first, in chunks of at
 * most 100 per script call. Returns how many moved, or ES_EREDIS. */
long long es_dlq_retry_all(redisContext *c, const char *bus, const char *group, long long max, char *err,
                           size_t errlen);

#define ES_DLQ_RETRY_OLDEST_MAX 1000

/* Re-delivers up to count (1..ES_DLQ_RETRY_OLDEST_MAX) of group's oldest
 * dead letters in one script call (one round trip, atomic). Returns how many
 * moved (fewer when fewer are parked), ES_EINVAL for a count out of range,
 * or ES_EREDIS with err. */
long long es_dlq_retry_oldest(redisContext *c, const char *bus, const char *group, long long count, char *err,
                              size_t errlen);

#endif
