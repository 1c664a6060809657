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

/* A record's mark: its seen key's KEYS index and its seq. */
typedef struct mark {
    size_t key;
    long long seq;
} mark;

static int by_key_seq(const void *a, const void *b)
{
    const mark *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Appends the runs of marks[0..n) (sorted by key, seq) to args (NULL: only
 * counts them). Returns how many. */
static long long add_runs(cm_argv *args, const mark *marks, size_t n)
{
    long long runs = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && marks[j].key == marks[i].key && marks[j].seq == marks[j - 1].seq + 1)
            j++;
        const long long v[WK_AA_RUN_NARGS] = {
            [WK_AA_RUN_SEEN] = (long long)marks[i].key,
            [WK_AA_RUN_FIRST] = marks[i].seq,
            [WK_AA_RUN_LAST] = marks[j - 1].seq,
        };
        for (int k = 0; args && k < WK_AA_RUN_NARGS; k++)
            cm_argv_addll(args, v[k]);
        runs++;
        i = j;
    }
    return runs;
}

/* Builds KEYS then ARGV into a. Returns the number of keys. */
static int build(const wk_aa_call *call, cm_argv *a)
{
    const char **seen = cm_xcalloc(call->n, sizeof *seen);
    mark *marks = cm_xcalloc(call->n, sizeof *marks);
    size_t nseen = 0;
    for (size_t i = 0; i < call->n; i++)
        marks[i] = (mark){seen_index(seen, &nseen, call->recs[i].seen_key), (long long)call->recs[i].seq};
    qsort(marks, call->n, sizeof *marks, by_key_seq);
    cm_argv_adds(a, PJ_AUDIT_LOG_KEY);    /* WK_AA_KEY_LOG */
    cm_argv_adds(a, PJ_AUDIT_HEAD_KEY);   /* WK_AA_KEY_HEAD */
    for (size_t i = 0; i < nseen; i++)
        cm_argv_adds(a, seen[i]);
    cm_argv_adds(a, call->head);                          /* WK_AA_ARG_HEAD */
    cm_argv_adds(a, call->key_id);                        /* WK_AA_ARG_KEY_ID */
    cm_argv_addll(a, call->seen_ttl_s);                   /* WK_AA_ARG_SEEN_TTL_S */
    cm_argv_addll(a, (long long)call->n);                 /* WK_AA_ARG_NRECORDS */
    cm_argv_addll(a, add_runs(NULL, marks, call->n));     /* WK_AA_ARG_NRUNS */
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
        for (int k = 0; k < WK_AA_REC_NARGS; k++)
            cm_argv_adds(a, v[k]);
    }
    (void)add_runs(a, marks, call->n);
    free(marks);
    free(seen);
    return (int)(WK_AA_KEY_FIRST_SEEN + nseen);
}

/* The script writes each record's prev itself (the hash before it), so the
 * hashes computed here must have been chained the same way; a seq is >= 1.
 * Returns the index of the first record that is not so, or call->n. */
static size_t first_unlinked(const wk_aa_call *call)
{
    const char *before = call->head[0] ? call->head : pj_audit_genesis;
    for (size_t i = 0; i < call->n; i++) {
        const wk_aa_record *r = &call->recs[i];
        if (r->seq < 1 || !r->prev || !r->hash || strcmp(r->prev, before) != 0)
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
        snprintf(err, errlen, "audit append: record %zu's %s", bad,
                 call->recs[bad].seq < 1 ? "seq is below 1"
                 : bad == 0              ? "prev is not the head the call names"
                                         : "prev is not the hash of the record before it");
        return -1;
    }
    cm_argv a = {0};
    int nkeys = build(call, &a);
    redisReply *r = cm_cluster_script(cc, &k_script, nkeys, &a);
    cm_argv_free(&a);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return -1;
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
