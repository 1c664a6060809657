/* audit_append.c - builds the call of audit_append.lua from named fields and
 * parses its reply (see audit_append.h for the layout). */
#include "workers/lua/audit_append.h"
#include "common/redis.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char wk_lua_audit_append[];
static cm_script k_script = {.src = wk_lua_audit_append};

/* Returns the 1-based KEYS index of key, adding it after the seen keys so
 * far (keys[0..*nkeys) hold the distinct seen keys seen). */
static size_t seen_index(const char **keys, size_t *nkeys, const char *key)
{
    for (size_t i = 0; i < *nkeys; i++)
        if (!strcmp(keys[i], key))
            return WK_AA_KEY_FIRST_SEEN + i + 1;
    keys[*nkeys] = key;
    (*nkeys)++;
    return WK_AA_KEY_FIRST_SEEN + *nkeys;
}

/* Builds KEYS then ARGV into a. Returns the number of keys. */
static int build(const wk_aa_call *call, cm_argv *a)
{
    const char **seen = cm_xcalloc(call->n, sizeof *seen);
    size_t nseen = 0;
    cm_argv args = {0};
    cm_argv_adds(&args, call->head);             /* WK_AA_ARG_HEAD */
    cm_argv_adds(&args, call->key_id);           /* WK_AA_ARG_KEY_ID */
    cm_argv_addll(&args, call->seen_ttl_s);      /* WK_AA_ARG_SEEN_TTL_S */
    cm_argv_addll(&args, (long long)call->n);    /* WK_AA_ARG_NRECORDS */
    for (size_t i = 0; i < call->n; i++) {
        const wk_aa_record *r = &call->recs[i];
        const char *v[WK_AA_REC_NARGS] = {
            [WK_AA_REC_EVENT_ID] = r->rec.event_id,
            [WK_AA_REC_ENTRY_ID] = r->rec.entry_id,
            [WK_AA_REC_TYPE] = r->rec.type,
            [WK_AA_REC_AGGREGATE_ID] = r->rec.aggregate_id,
            [WK_AA_REC_DIGEST] = r->rec.digest,
            [WK_AA_REC_HASH] = r->hash,
        };
        char seen_ix[24], seq[24];
        snprintf(seen_ix, sizeof seen_ix, "%zu", seen_index(seen, &nseen, r->seen_key));
        snprintf(seq, sizeof seq, "%lld", (long long)r->seq);
        v[WK_AA_REC_SEEN] = seen_ix;
        v[WK_AA_REC_SEQ] = seq;
        for (int k = 0; k < WK_AA_REC_NARGS; k++)
            cm_argv_adds(&args, v[k]);
    }
    cm_argv_adds(a, PJ_AUDIT_LOG_KEY);    /* WK_AA_KEY_LOG */
    cm_argv_adds(a, PJ_AUDIT_HEAD_KEY);   /* WK_AA_KEY_HEAD */
    for (size_t i = 0; i < nseen; i++)
        cm_argv_adds(a, seen[i]);
    for (int i = 0; i < args.n; i++)
        cm_argv_add(a, args.v[i], args.len[i]);
    cm_argv_free(&args);
    free(seen);
    return (int)(WK_AA_KEY_FIRST_SEEN + nseen);
}

/* The script writes each record's prev itself (the hash before it), so the
 * hashes computed here must have been chained the same way. Returns the
 * index of the first record that was not, or call->n. */
static size_t first_unlinked(const wk_aa_call *call)
{
    const char *before = call->head[0] ? call->head : pj_audit_genesis;
    for (size_t i = 0; i < call->n; i++) {
        const wk_aa_record *r = &call->recs[i];
        if (!r->prev || !r->hash || strcmp(r->prev, before) != 0)
            return i;
        before = r->hash;
    }
    return call->n;
}

int (wk_audit_append)(cm_cluster *cc, const wk_aa_call *call, wk_aa_verdict *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    if (call->n == 0 || call->seen_ttl_s < 1) {
        snprintf(err, errlen, "audit append: no records, or a seen lifetime below 1 s");
        return -1;
    }
    size_t bad = first_unlinked(call);
    if (bad < call->n) {
        snprintf(err, errlen, "audit append: record %zu's prev is not the %s", bad,
                 bad == 0 ? "head the call names" : "hash of the record before it");
        return -1;
    }
    cm_argv a = {0};
    int nkeys = build(call, &a);
    redisReply *r = cm_cluster_script(cc, &k_script, nkeys, &a);
    cm_argv_free(&a);
    if (!r) {
        snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str);
        freeReplyObject(r);
        return -1;
    }
    const redisReply *st = cm_reply_elem(r, 0), *val = cm_reply_elem(r, 1);
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !cm_reply_is_str(st)) {
        rc = -1;
    } else if (!strcmp(st->str, "ok") && val && val->type == REDIS_REPLY_INTEGER) {
        v->status = WK_AA_OK;
        v->count = val->integer;
    } else if (!strcmp(st->str, "moved") && cm_reply_is_str(val)) {
        v->status = WK_AA_MOVED;
        snprintf(v->head, sizeof v->head, "%s", val->str);
    } else if (!strcmp(st->str, "wrong_key") && cm_reply_is_str(val)) {
        v->status = WK_AA_WRONG_KEY;
        snprintf(v->key_id, sizeof v->key_id, "%s", val->str);
    } else {
        rc = -1;
    }
    if (rc != 0)
        snprintf(err, errlen, "unexpected reply of audit_append.lua");
    freeReplyObject(r);
    return rc;
}

int wk_audit_append_conn(redisContext *c, const wk_aa_call *call, wk_aa_verdict *v, char *err, size_t errlen)
{
    cm_cluster *cc = cm_cluster_borrow(c);
    int rc = (wk_audit_append)(cc, call, v, err, errlen);
    cm_cluster_free(cc);
    return rc;
}
