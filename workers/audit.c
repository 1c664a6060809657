/* audit.c - the audit worker: one hash-chained record per event
 * (projections/audit.h), a batch at a time.
 *
 * A batch usually costs one round trip: one script that appends the
 * records, chained in C from the head this worker's last append left, only
 * if the head is still that one and no record's event is marked seen
 * (workers/audit_append.{h,c} + lua/audit_append.lua). When the script
 * refuses (another audit copy appended, an event was delivered again, or the
 * worker has no head yet), the head and the seen marks of the batch's
 * aggregates are read (pipelined, head first), the records already marked
 * are dropped and the rest re-chained and sent again. After Redis accepted a
 * batch, the new head is appended to AUDIT_HEAD_FILE (fsync'd), outside Redis.
 *
 * Why the head is read before the seen marks: any append after the head read
 * changes the head, so the compare-and-set fails; a seen mark read after the
 * head is therefore current whenever the script accepts. (The script checks
 * the marks of every record itself too, so a guess is never written.)
 *
 * Lifetimes: the log and the head are kept indefinitely; an aggregate's seen
 * marks expire AUDIT_SEEN_TTL_S after its last audited event. An event
 * delivered again after that (a dead letter re-driven weeks later, a group
 * rewound) gets a second record: the log stays a faithful, verifiable record
 * of what the audit saw, at-least-once per event beyond the dedupe window and
 * exactly once within it. */
#include "workers/wk.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"
#include "projections/audit.h"
#include "projections/projection.h"
#include "workers/lua/audit_append.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CAS 200   /* attempts before the batch is retried later */
#define LEGACY_LOG CM_KEY_LEGACY_AUDIT_LOG     /* names before the {audit} hash tag */
#define LEGACY_HEAD CM_KEY_LEGACY_AUDIT_HEAD
#define LEGACY_SEEN CM_KEY_LEGACY_AUDIT_SEEN

static char *g_key, *g_key_file, *g_head_file;
static int64_t g_seen_ttl_s;

static const cm_opt k_opts[] = {
    {"audit-key", "AUDIT_KEY", CM_OPT_STR, &g_key, NULL, 0, -1,
     "key of the chain's hashes, hex or base64, 32..64 bytes (prefer AUDIT_KEY_FILE); unset: unkeyed"},
    {"audit-key-file", "AUDIT_KEY_FILE", CM_OPT_STR, &g_key_file, NULL, 0, -1, "file holding AUDIT_KEY"},
    {"audit-head-file", "AUDIT_HEAD_FILE", CM_OPT_STR, &g_head_file, NULL, 0, -1,
     "append the chain head here after each batch (fsync'd); unset: Redis only"},
    {"audit-seen-ttl-s", "AUDIT_SEEN_TTL_S", CM_OPT_INT, &g_seen_ttl_s, "604800", 1, 315360000,
     "lifetime of an aggregate's dedupe marks after its last audited event"},
    {0},
};

typedef struct audit_state {
    pj_audit_key key;
    int head_fd;              /* AUDIT_HEAD_FILE, or -1 */
    char head[PJ_AUDIT_HEX];  /* the chain's head after this worker's last batch ("" = empty log) */
    bool head_known;          /* head is worth a guess (false at start and after an error) */
    cm_series *records;       /* audit_records_total */
    cm_series *races;         /* audit_cas_retries_total */
    cm_series *file_errors;   /* audit_head_file_errors_total */
} audit_state;

/* One event of the batch and what the audit does with it. */
typedef struct item {
    const es_event *ev;
    char seen_key[400];           /* chorus:{audit}:seen:<aggregate>:<aggregate_id> */
    size_t key_ix;                /* its seen key's place among the batch's distinct ones */
    char digest[PJ_AUDIT_HEX];
    char hash[PJ_AUDIT_HEX];
    bool write;                   /* not seen yet: gets a record */
    bool dup_in_batch;            /* same (aggregate, seq) earlier in this batch */
} item;

/* The {audit} slot: the log, head and seen marks all carry the tag. */
static int audit_slot(void)
{
    return cm_key_slot(PJ_AUDIT_HEAD_KEY, strlen(PJ_AUDIT_HEAD_KEY));
}

/* Moves the log and head of a release before the {audit} hash tag to their
 * new names (once; RENAMENX keeps whatever is already there). The old seen
 * hash is dropped: a redelivery of an old event would get a second record. */
static void migrate_legacy(cm_cluster *cc)
{
    if (cm_cluster_is_cluster(cc))
        return;   /* the names before the tag never lived on a cluster (and RENAME cannot cross slots) */
    redisReply *r = cm_cluster_command(cc, CM_SLOT_ANY, "EXISTS %s", LEGACY_HEAD);
    bool old = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (!old)
        return;
    static const char *const moves[][2] = {{LEGACY_LOG, PJ_AUDIT_LOG_KEY}, {LEGACY_HEAD, PJ_AUDIT_HEAD_KEY}};
    for (size_t i = 0; i < 2; i++) {
        r = cm_cluster_command(cc, CM_SLOT_ANY, "RENAMENX %s %s", moves[i][0], moves[i][1]);
        if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != 1)
            cm_log(CM_WARN, "could not rename %s to %s (%s): move it by hand", moves[i][0], moves[i][1],
                   r && r->type == REDIS_REPLY_ERROR ? r->str : "target exists or source gone");
        else
            cm_log(CM_INFO, "renamed %s to %s", moves[i][0], moves[i][1]);
        freeReplyObject(r);
    }
    freeReplyObject(cm_cluster_command(cc, CM_SLOT_ANY, "DEL %s", LEGACY_SEEN));
}

/* Refuses to start on a chain keyed with another key. 0 or -1 with err. */
static int check_chain_key(cm_cluster *cc, const pj_audit_key *key, char *err, size_t errlen)
{
    redisReply *r = cm_cluster_command(cc, audit_slot(), "HGET %s key_id", PJ_AUDIT_HEAD_KEY);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return -1;
    int rc = 0;
    if (cm_reply_is_str(r) && strcmp(r->str, PJ_AUDIT_UNKEYED) != 0 && strcmp(r->str, key->id) != 0) {
        snprintf(err, errlen,
                 "the audit chain is keyed with key id %.32s but this worker's key id is %s: set AUDIT_KEY or "
                 "AUDIT_KEY_FILE to the chain's key",
                 r->str, key->id);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

/* Says loudly when Redis's head is behind the head file (Redis restored from
 * an older backup, or rolled back by hand): the records in between are gone
 * and chorus-audit-verify will report it. The worker goes on auditing. */
static void compare_head_file(cm_cluster *cc, const char *path)
{
    pj_audit_anchor a;
    char err[300];
    if (pj_audit_head_file_read(path, &a, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        return;
    }
    if (a.count == 0)
        return;
    redisReply *r = cm_cluster_command(cc, audit_slot(), "HMGET %s hash count", PJ_AUDIT_HEAD_KEY);
    const redisReply *h = cm_reply_elem(r, 0);
    long long n = cm_reply_ll(cm_reply_elem(r, 1), 0);
    if (r && r->type == REDIS_REPLY_ARRAY) {
        if (n < a.count)
            cm_log(CM_ERROR,
                   "the audit head in Redis counts %lld records but AUDIT_HEAD_FILE %s line %lld vouches for %lld: "
                   "Redis was rolled back or restored from an older copy",
                   n, path, a.line, a.count);
        else if (n == a.count && (!cm_reply_is_str(h) || strcmp(h->str, a.hash) != 0))
            cm_log(CM_ERROR, "the audit head in Redis does not match AUDIT_HEAD_FILE %s line %lld: the log was rewritten",
                   path, a.line);
    }
    freeReplyObject(r);
}

static int audit_init(wk_ctx *ctx, char *err, size_t errlen)
{
    audit_state *st = cm_xcalloc(1, sizeof *st);
    st->head_fd = -1;
    cm_cluster *c = wk_cluster(ctx);
    int rc = pj_audit_key_load(g_key, g_key_file, &st->key, err, errlen);
    if (g_key)
        sodium_memzero(g_key, strlen(g_key));
    if (rc != 0)
        goto fail;
    migrate_legacy(c);
    if (check_chain_key(c, &st->key, err, errlen) != 0)
        goto fail;
    if (g_head_file && *g_head_file) {
        if ((st->head_fd = pj_audit_head_file_open(g_head_file, err, errlen)) < 0)
            goto fail;
        compare_head_file(c, g_head_file);
    }
    if (st->key.len == 0)
        cm_log(CM_WARN, "AUDIT_KEY is not set: the audit chain is unkeyed, so whoever can write Redis can "
                        "recompute it; set AUDIT_KEY or AUDIT_KEY_FILE (./chorus up generates one)");
    else
        cm_log(CM_INFO, "audit chain keyed (key id %s)%s%s", st->key.id, st->head_fd >= 0 ? "; head file " : "",
               st->head_fd >= 0 ? g_head_file : "");
    st->records = cm_counter("audit_records_total", "audit records appended", "");
    st->races = cm_counter("audit_cas_retries_total", "batches re-chained because another audit copy appended first", "");
    st->file_errors = cm_counter("audit_head_file_errors_total", "batches whose head line could not be written", "");
    wk_set_state(ctx, st);
    return 0;
fail:
    pj_audit_key_wipe(&st->key);
    free(st);
    return -1;
}

static void audit_fini(wk_ctx *ctx)
{
    audit_state *st = wk_state(ctx);
    if (st) {
        if (st->head_fd >= 0)
            close(st->head_fd);
        pj_audit_key_wipe(&st->key);
    }
    free(st);
    wk_set_state(ctx, NULL);
}

/* Reads the head and, for every item, whether its event already has a
 * record (one MGET of the nkeys distinct seen keys). Returns 0 or -1 with err. */
static int read_state(cm_cluster *cc, item *it, size_t n, size_t nkeys, char head[PJ_AUDIT_HEX], char *err,
                      size_t errlen)
{
    cm_argv a = {0};
    cm_argv_adds(&a, "MGET");
    for (size_t i = 0; i < n; i++)
        if (it[i].key_ix == (size_t)a.n - 1)   /* the first item of each key, in key order */
            cm_argv_adds(&a, it[i].seen_key);
    /* head and seen marks share the {audit} tag: one slot, one round trip */
    cm_pipe *p = cm_pipe_new(cc);
    cm_pipe_command(p, audit_slot(), "HGET %s hash", PJ_AUDIT_HEAD_KEY);
    cm_pipe_argv(p, audit_slot(), &a);
    cm_argv_free(&a);
    redisReply *h = NULL, *s = NULL;
    int rc = -1;
    if (cm_pipe_exec(p) != 0 || !(h = cm_pipe_take(p, 0)) || !(s = cm_pipe_take(p, 1))) {
        snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
        goto done;
    }
    if (h->type == REDIS_REPLY_ERROR || s->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", h->type == REDIS_REPLY_ERROR ? h->str : s->str);
        goto done;
    }
    if (s->type != REDIS_REPLY_ARRAY || s->elements != nkeys) {
        snprintf(err, errlen, "unexpected MGET reply for the audit seen marks");
        goto done;
    }
    snprintf(head, PJ_AUDIT_HEX, "%s", cm_reply_is_str(h) ? h->str : "");
    for (size_t i = 0; i < n; i++) {
        const redisReply *v = s->element[it[i].key_ix];
        int64_t seq = it[i].ev->seq;
        bool seen = cm_reply_is_str(v) && (size_t)seq <= v->len && v->str[seq - 1] == '1';
        it[i].write = !seen && !it[i].dup_in_batch;
    }
    rc = 0;
done:
    cm_pipe_free(p);
    freeReplyObject(h);
    freeReplyObject(s);
    return rc;
}

/* Chains the records to be written from head and appends them if the head
 * is unchanged. Returns 1 appended (or nothing to append; *count is then
 * the chain's length, or 0), 0 refused (moved: the head now, maybe still
 * head when a record was marked already), -1 error with err. */
static int append_chain(cm_cluster *c, const audit_state *st, item *it, size_t n, const char *head,
                        long long *written, long long *count, char moved[PJ_AUDIT_HEX], char *err, size_t errlen)
{
    wk_aa_record *recs = cm_xcalloc(n, sizeof *recs);
    const char *prev = head[0] ? head : pj_audit_genesis;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!it[i].write)
            continue;
        const es_event *ev = it[i].ev;
        wk_aa_record *r = &recs[k++];
        r->rec = (pj_audit_rec){ev->event_id, ev->entry_id, ev->type, ev->aggregate_id, it[i].digest};
        pj_audit_hash(&st->key, prev, &r->rec, it[i].hash);
        r->prev = prev;
        r->hash = it[i].hash;
        r->seen_key = it[i].seen_key;
        r->seq = ev->seq;
        prev = it[i].hash;
    }
    *written = (long long)k;
    *count = 0;
    int rc = 1;
    if (k > 0) {
        wk_aa_call call = {.head = head, .key_id = st->key.id, .seen_ttl_s = g_seen_ttl_s, .recs = recs, .n = k};
        wk_aa_verdict v;
        if (wk_audit_append(c, &call, &v, err, errlen) != 0)
            rc = -1;
        else if (v.status == WK_AA_OK)
            *count = v.count;
        else if (v.status == WK_AA_MOVED) {
            snprintf(moved, PJ_AUDIT_HEX, "%s", v.head);
            rc = 0;
        }
        else {
            snprintf(err, errlen, "the audit chain is keyed with key id %s, not with this worker's (%s)", v.key_id,
                     st->key.id);
            rc = -1;
        }
    }
    free(recs);
    return rc;
}

/* Marks items whose (aggregate, seq) appeared earlier in the batch and
 * numbers the batch's distinct seen keys in order of first use. Returns how
 * many there are. */
static size_t mark_batch_dups(item *it, size_t n)
{
    size_t nkeys = 0;
    for (size_t i = 0; i < n; i++) {
        it[i].key_ix = nkeys;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(it[j].seen_key, it[i].seen_key) != 0)
                continue;
            it[i].key_ix = it[j].key_ix;
            if (!it[j].dup_in_batch && it[j].ev->seq == it[i].ev->seq) {
                it[i].dup_in_batch = true;
                break;
            }
        }
        if (it[i].key_ix == nkeys)
            nkeys++;
    }
    return nkeys;
}

/* Appends the new head to AUDIT_HEAD_FILE. A failure is logged and counted,
 * not retried: the records are in Redis, and the next line vouches for them. */
static void anchor(audit_state *st, long long count, const char *hash)
{
    char err[200];
    if (st->head_fd < 0 || count <= 0)
        return;
    if (pj_audit_head_file_append(st->head_fd, count, hash, err, sizeof err) != 0) {
        cm_series_inc(st->file_errors);
        cm_log(CM_ERROR, "%s (head %lld %s not anchored)", err, count, hash);
    }
}

static void audit_batch(wk_ctx *ctx, es_event *const *evs, size_t n, wk_result *results)
{
    audit_state *st = wk_state(ctx);
    cm_cluster *c = wk_cluster(ctx);
    item *it = cm_xcalloc(n, sizeof *it);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = WK_ACK;
        if (evs[i]->seq > PJ_MAX_SEQ) {
            wk_fail_reason(ctx, "seq %lld is beyond the %d events per aggregate the audit dedupe tracks",
                           (long long)evs[i]->seq, PJ_MAX_SEQ);
            results[i] = WK_DEAD;
            continue;
        }
        it[m].ev = evs[i];
        snprintf(it[m].seen_key, sizeof it[m].seen_key, "%s%s:%s", PJ_AUDIT_SEEN_PREFIX, evs[i]->aggregate,
                 evs[i]->aggregate_id);
        pj_audit_digest(evs[i]->payload, evs[i]->payload_len, it[m].digest);
        m++;
    }
    size_t nkeys = mark_batch_dups(it, m);
    if (m == 0) {
        free(it);
        return;
    }
    char err[256] = "";
    int rc = -1;
    long long written = 0, count = 0;
    const char *last = NULL;
    /* first a guess: the head this worker left, every event new */
    bool guess = st->head_known;
    char head[PJ_AUDIT_HEX] = "";
    for (int attempt = 0; attempt < MAX_CAS && !wk_stopping(ctx); attempt++) {
        char moved[PJ_AUDIT_HEX] = "";
        if (guess) {
            memcpy(head, st->head, sizeof head);
            for (size_t i = 0; i < m; i++)
                it[i].write = !it[i].dup_in_batch;
        } else if (read_state(c, it, m, nkeys, head, err, sizeof err) != 0) {
            rc = -1;
            break;
        }
        rc = append_chain(c, st, it, m, head, &written, &count, moved, err, sizeof err);
        if (rc != 0)
            break;
        /* refused: a race when the head moved; a guess can also miss on a mark */
        if (!guess || strcmp(moved, head) != 0)
            cm_series_inc(st->races);
        if (attempt >= 3)   /* heavy contention: step aside a little */
            cm_sleep_ms(1 + (int64_t)(rand() % 5));
        if (guess) {
            guess = false;
            attempt--;   /* the guess is not an attempt */
        }
    }
    if (rc == 1) {
        cm_series_add(st->records, (uint64_t)written);
        for (size_t i = 0; i < m; i++)
            if (it[i].write)
                last = it[i].hash;
        if (written > 0)
            anchor(st, count, last);
        snprintf(st->head, sizeof st->head, "%s", written > 0 ? last : head);
        st->head_known = true;
    } else {
        st->head_known = false;
        wk_fail_reason(ctx, "audit append failed: %s", rc == 0 ? "the head kept moving" : err);
        for (size_t i = 0; i < n; i++)
            if (results[i] == WK_ACK)
                results[i] = WK_RETRY;
    }
    free(it);
}

const wk_def wk_audit = {
    .id = CM_W_AUDIT,
    .batch = audit_batch,
    .opts = k_opts,
    .init = audit_init,
    .fini = audit_fini,
};
