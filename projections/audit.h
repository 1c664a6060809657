/* audit.h - the hash-chained audit log: record hashing (shared by the audit
 * worker that appends and the verifier) and verification.
 *
 * Keys:
 *   chorus:audit:log   stream  one record per event, in chain order, fields
 *                              event_id entry_id type aggregate_id digest prev hash
 *   chorus:audit:head  hash    hash (of the last record), count (records)
 *   chorus:audit:seen  hash    "<aggregate>:<aggregate_id>" -> one char per
 *                              seq, '1' once that event has its record (the
 *                              dedupe: a few bytes per checkout, not per event)
 *
 * A record's hash is BLAKE2b-256 (libsodium crypto_generichash), hex, over
 * prev || canonical bytes, where prev is the previous record's hash (64 '0'
 * for the first) and the canonical bytes are "chorus-audit-v1" followed by
 * "<len>:<bytes>," for event_id, entry_id, type, aggregate_id and digest, in
 * that order. digest is BLAKE2b-256 of the event's payload, so a record also
 * attests to what the event said. Changing, removing, inserting or reordering
 * any record breaks the chain at that record (or, at the tail, the head). */
#ifndef PJ_AUDIT_H
#define PJ_AUDIT_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/names.h"

#define PJ_AUDIT_LOG_KEY CM_KEY_PREFIX "audit:log"
#define PJ_AUDIT_HEAD_KEY CM_KEY_PREFIX "audit:head"
#define PJ_AUDIT_SEEN_KEY CM_KEY_PREFIX "audit:seen"
#define PJ_AUDIT_HEX 65   /* 64 hex digits + NUL */

extern const char pj_audit_genesis[PJ_AUDIT_HEX];   /* prev of the first record: 64 '0' */

typedef struct pj_audit_rec {
    const char *event_id;
    const char *entry_id;      /* bus entry id the event was read from */
    const char *type;
    const char *aggregate_id;
    const char *digest;        /* pj_audit_digest of the payload */
} pj_audit_rec;

/* Writes the hex BLAKE2b-256 of data into out. */
void pj_audit_digest(const void *data, size_t len, char out[PJ_AUDIT_HEX]);

/* Writes the record hash of rec chained to prev (hex) into out. */
void pj_audit_hash(const char *prev, const pj_audit_rec *rec, char out[PJ_AUDIT_HEX]);

typedef struct pj_audit_report {
    bool intact;           /* the whole chain verified */
    long long count;       /* records verified (up to the first bad one) */
    long long bad_pos;     /* 0-based position of the first bad record, -1 when intact */
    char bad_id[64];       /* its stream entry id ("" when the log ended early) */
    char problem[200];     /* what is wrong there */
} pj_audit_report;

/* Walks the log from its first record, recomputing every hash and link, and
 * checks the head. Records appended concurrently by audit workers are
 * followed until the head is stable. Returns 0 with rep filled (intact or
 * not), or -1 with err when Redis could not be read. */
int pj_audit_verify(redisContext *c, pj_audit_report *rep, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Appends rep as JSON {"intact","count","bad_position","bad_entry_id","problem"}. */
void pj_audit_report_json(const pj_audit_report *rep, char *out, size_t outlen);

#endif
