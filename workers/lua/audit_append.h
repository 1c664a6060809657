/* audit_append.h - the C side of workers/lua/audit_append.lua: this module
 * alone knows the script's KEYS and ARGV layout (the enums below; the
 * script's constants mirror them), builds the call from named fields and
 * turns the reply into a typed verdict.
 *
 * Every key the script touches is in KEYS, and all carry the {audit} hash
 * tag (common/names.h), so the call is valid on Redis Cluster. */
#ifndef WK_AUDIT_APPEND_H
#define WK_AUDIT_APPEND_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "projections/audit.h"

/* KEYS, 0-based (Lua adds 1). The seen keys follow, one per aggregate. */
enum wk_aa_key {
    WK_AA_KEY_LOG,          /* chorus:{audit}:log */
    WK_AA_KEY_HEAD,         /* chorus:{audit}:head */
    WK_AA_KEY_FIRST_SEEN,   /* chorus:{audit}:seen:<aggregate>:<id>, ... */
};

/* ARGV, 0-based: the fixed arguments, then WK_AA_REC_NARGS per record,
 * then WK_AA_RUN_NARGS per run. */
enum wk_aa_arg {
    WK_AA_ARG_HEAD,          /* the head the records were chained to ("" = empty log) */
    WK_AA_ARG_KEY_ID,        /* the worker's key id, "none" when unkeyed */
    WK_AA_ARG_SEEN_TTL_S,    /* lifetime of the seen marks, seconds */
    WK_AA_ARG_NRECORDS,
    WK_AA_ARG_NRUNS,
    WK_AA_ARG_FIRST_RECORD,
};

/* One record's arguments, relative to its first. */
enum wk_aa_rec {
    WK_AA_REC_EVENT_ID,
    WK_AA_REC_ENTRY_ID,
    WK_AA_REC_TYPE,
    WK_AA_REC_AGGREGATE_ID,
    WK_AA_REC_DIGEST,
    WK_AA_REC_HASH,          /* (no prev: the script links each record to the hash before it) */
    WK_AA_REC_NARGS,
};

/* One run's arguments, relative to its first: seqs first..last of one
 * aggregate, each the seq of one record of the call. The records' seqs of a
 * seen key become its runs, in seq order; a seq named twice starts a run
 * that overlaps the one before (the script refuses it). */
enum wk_aa_run {
    WK_AA_RUN_SEEN,          /* 1-based index of the seen key in KEYS */
    WK_AA_RUN_FIRST,         /* first seq (>= 1) */
    WK_AA_RUN_LAST,          /* last seq (>= first) */
    WK_AA_RUN_NARGS,
};

/* A record to append (strings borrowed for the call). */
typedef struct wk_aa_record {
    pj_audit_rec rec;          /* what the hash covers */
    const char *prev;          /* hash of the record before: checked against the call's head and the
                                  record before it, not sent (the script writes the link itself) */
    const char *hash;          /* pj_audit_hash(key, prev, &rec) */
    const char *seen_key;      /* its aggregate's seen-mark key */
    int64_t seq;               /* its event's seq (1..) */
} wk_aa_record;

typedef struct wk_aa_call {
    const char *head;          /* head hash read before chaining ("" = empty log) */
    const char *key_id;        /* pj_audit_key.id ("none" = unkeyed) */
    int64_t seen_ttl_s;        /* >= 1 */
    const wk_aa_record *recs;
    size_t n;                  /* >= 1 */
} wk_aa_call;

typedef enum wk_aa_status {
    WK_AA_OK,                  /* appended; count is the chain's length now */
    WK_AA_MOVED,               /* the head moved (or a record is already marked): re-read, re-chain */
    WK_AA_WRONG_KEY,           /* the chain is keyed with key_id, not the caller's key */
} wk_aa_status;

typedef struct wk_aa_verdict {
    wk_aa_status status;
    long long count;           /* OK: records in the chain */
    char head[PJ_AUDIT_HEX];   /* MOVED: the current head ("" = empty) */
    char key_id[PJ_AUDIT_KEY_ID + 8];   /* WRONG_KEY: the chain's key id */
} wk_aa_verdict;

/* Runs the script through cc on the {audit} slot's master. Returns 0 with
 * *v filled, or -1 with err on a Redis error, a reply of another shape, a
 * seq below 1, or records not linked in order (recs[0].prev is not the head
 * — 64 '0' for "" —, or a prev is not the hash of the record before it). */
int wk_audit_append(cm_cluster *cc, const wk_aa_call *call, wk_aa_verdict *v, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Transitional: the same on one server's connection c (cm_cluster_borrow). */
int wk_audit_append_conn(redisContext *c, const wk_aa_call *call, wk_aa_verdict *v, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* One name for both: a redisContext * picks the _conn variant. */
#define wk_audit_append(c, ...)                                                                              \
    _Generic((c), redisContext *: wk_audit_append_conn, default: wk_audit_append)(c, __VA_ARGS__)

#endif
