/* audit.h - the hash-chained audit log: record hashing (shared by the audit
 * worker that appends and the verifier), the chain's key, the head file kept
 * outside Redis, and verification.
 *
 * Keys (common/names.h; one hash tag, so the append script is one Cluster slot):
 *   chorus:{audit}:log   stream  one record per event, in chain order, fields
 *                                event_id entry_id type aggregate_id digest prev hash
 *   chorus:{audit}:head  hash    hash (of the last record), count (records),
 *                                key_id (fingerprint of the chain's key; absent
 *                                or "none" while unkeyed)
 *   chorus:{audit}:seen:<aggregate>:<id>
 *                        string  one char per seq, '1' once that event has its
 *                                record (the dedupe); expires AUDIT_SEEN_TTL_S
 *                                after the aggregate's last audited event
 *
 * A record's hash is BLAKE2b-256 (libsodium crypto_generichash), hex, over
 * prev || canonical bytes, where prev is the previous record's hash (64 '0'
 * for the first) and the canonical bytes are "chorus-audit-v1" followed by
 * "<len>:<bytes>," for event_id, entry_id, type, aggregate_id and digest, in
 * that order. digest is BLAKE2b-256 of the event's payload, so a record also
 * attests to what the event said. With AUDIT_KEY the record hash is keyed
 * BLAKE2b (a MAC): someone with only Redis access cannot compute a valid
 * record. A chain may start unkeyed and become keyed (a key added later);
 * once one record is keyed, every later one must be. Changing, removing,
 * inserting or reordering any record breaks the chain at that record (or, at
 * the tail, the head; or, rolled back whole, the head file). */
#ifndef PJ_AUDIT_H
#define PJ_AUDIT_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/names.h"

#define PJ_AUDIT_LOG_KEY CM_KEY_AUDIT_LOG
#define PJ_AUDIT_HEAD_KEY CM_KEY_AUDIT_HEAD
#define PJ_AUDIT_SEEN_PREFIX CM_KEY_AUDIT_SEEN_PREFIX
#define PJ_AUDIT_AGGREGATE "checkout"   /* the aggregate whose events are audited (--deep) */
#define PJ_AUDIT_HEX 65                 /* 64 hex digits + NUL */
#define PJ_AUDIT_KEY_MIN 32             /* AUDIT_KEY bytes, at least ... */
#define PJ_AUDIT_KEY_MAX 64             /* ... and at most (BLAKE2b's key size) */
#define PJ_AUDIT_KEY_ID 17              /* key fingerprint: 16 hex digits + NUL */
#define PJ_AUDIT_UNKEYED "none"         /* key_id of an unkeyed chain */

extern const char pj_audit_genesis[PJ_AUDIT_HEX];   /* prev of the first record: 64 '0' */

/* The chain's key. len 0 means unkeyed (id "none"). */
typedef struct pj_audit_key {
    unsigned char bytes[PJ_AUDIT_KEY_MAX];
    size_t len;                   /* 0, or PJ_AUDIT_KEY_MIN..PJ_AUDIT_KEY_MAX */
    char id[PJ_AUDIT_KEY_ID];     /* public fingerprint (keyed hash of a constant) */
} pj_audit_key;

/* Parses text (surrounding whitespace ignored) as the key: hex when it is
 * only hex digits, else base64 (standard or URL-safe, padding optional);
 * PJ_AUDIT_KEY_MIN..PJ_AUDIT_KEY_MAX bytes. Returns 0, or -1 with err naming
 * `what` (e.g. "AUDIT_KEY") and the problem. */
int pj_audit_key_parse(const char *text, size_t len, const char *what, pj_audit_key *key, char *err,
                       size_t errlen) __attribute__((warn_unused_result));

/* Loads the key from value (AUDIT_KEY) or from the file at path
 * (AUDIT_KEY_FILE); both NULL or empty: unkeyed (key->len 0, id "none").
 * Both given is an error. Returns 0 or -1 with err. */
int pj_audit_key_load(const char *value, const char *path, pj_audit_key *key, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Overwrites the key's bytes (call before the key's memory is released). */
void pj_audit_key_wipe(pj_audit_key *key);

typedef struct pj_audit_rec {
    const char *event_id;
    const char *entry_id;      /* bus entry id the event was read from */
    const char *type;
    const char *aggregate_id;
    const char *digest;        /* pj_audit_digest of the payload */
} pj_audit_rec;

/* Writes the hex BLAKE2b-256 of data into out. */
void pj_audit_digest(const void *data, size_t len, char out[PJ_AUDIT_HEX]);

/* Writes the record hash of rec chained to prev (hex) into out, keyed with
 * key (NULL or len 0: unkeyed). */
void pj_audit_hash(const pj_audit_key *key, const char *prev, const pj_audit_rec *rec, char out[PJ_AUDIT_HEX]);

/* The head file (AUDIT_HEAD_FILE): the chain head written outside Redis, one
 * line "<count> <hash>\n" per appended batch, fsync'd, append-only. Several
 * audit copies may share it (O_APPEND; lines may land slightly out of count
 * order). The line with the highest count commits to every record before it. */
typedef struct pj_audit_anchor {
    long long count;              /* records the line vouches for; 0: no line */
    char hash[PJ_AUDIT_HEX];      /* the chain's hash after count records */
    long long line;               /* its line number (1-based) */
} pj_audit_anchor;

/* Opens (creates, mode 600) path for appending. Returns the fd, or -1 with err. */
int pj_audit_head_file_open(const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Appends "<count> <hash>\n" to fd in one write and fsyncs. 0 or -1 with err. */
int pj_audit_head_file_append(int fd, long long count, const char *hash, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Reads path and keeps the line with the highest count in *a (count 0 when
 * the file has none). A torn last line (no newline) is ignored; any other
 * malformed line, or a line that disagrees with the highest one at its
 * count, is an error.
 * Returns 0 or -1 with err (naming the line). */
int pj_audit_head_file_read(const char *path, pj_audit_anchor *a, char *err, size_t errlen)
    __attribute__((warn_unused_result));

typedef struct pj_audit_opts {
    const pj_audit_key *key;         /* NULL or len 0: the chain is verified as unkeyed */
    const pj_audit_anchor *anchor;   /* NULL or count 0: no head file */
    bool deep;                       /* also check every record against its stored event */
} pj_audit_opts;

typedef struct pj_audit_report {
    bool intact;           /* the whole chain verified */
    long long count;       /* records verified (up to the first bad one) */
    long long unkeyed;     /* of them, records before the keyed part (0 when no key given) */
    long long anchored;    /* the head file's count that was checked (0: none) */
    bool deep;             /* records were checked against their events */
    long long bad_pos;     /* 0-based position of the first bad record, -1 when intact */
    char bad_id[64];       /* its stream entry id ("" when the log ended early) */
    char bad_event_id[64]; /* the event a --deep problem is about ("" otherwise) */
    char problem[300];     /* what is wrong there */
} pj_audit_report;

/* Walks the log from its first record, recomputing every hash and link, and
 * checks the head (and the head file's line, and each record's event when
 * deep). Records appended concurrently by audit workers are followed until
 * the head is stable. Returns 0 with rep filled (intact or not), or -1 with
 * err when Redis could not be read or the key does not fit the chain. */
int pj_audit_verify(redisContext *c, const pj_audit_opts *o, pj_audit_report *rep, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Writes rep as JSON {"intact","count","unkeyed","anchored","deep",
 * "bad_position","bad_entry_id","bad_event_id","problem"} into out. */
void pj_audit_report_json(const pj_audit_report *rep, char *out, size_t outlen);

#endif
