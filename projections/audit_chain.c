/* audit_chain.c - hashing audit records and verifying the chain. */
#include "projections/audit.h"
#include "common/buf.h"
#include "common/redis.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define PAGE 1000
#define MAX_ROUNDS 1000   /* head re-reads while audit workers keep appending */

const char pj_audit_genesis[PJ_AUDIT_HEX] = "0000000000000000000000000000000000000000000000000000000000000000";

static const char *const k_fields[] = {"event_id", "entry_id", "type", "aggregate_id", "digest"};
enum { NFIELDS = sizeof k_fields / sizeof k_fields[0] };

static void to_hex(const unsigned char *h, char out[PJ_AUDIT_HEX])
{
    sodium_bin2hex(out, PJ_AUDIT_HEX, h, crypto_generichash_BYTES);
}

void pj_audit_digest(const void *data, size_t len, char out[PJ_AUDIT_HEX])
{
    unsigned char h[crypto_generichash_BYTES];
    crypto_generichash(h, sizeof h, data, len, NULL, 0);
    to_hex(h, out);
}

static void absorb(crypto_generichash_state *st, const char *s)
{
    char len[24];
    size_t n = s ? strlen(s) : 0;
    int l = snprintf(len, sizeof len, "%zu:", n);
    crypto_generichash_update(st, (const unsigned char *)len, (size_t)l);
    crypto_generichash_update(st, (const unsigned char *)(s ? s : ""), n);
    crypto_generichash_update(st, (const unsigned char *)",", 1);
}

void pj_audit_hash(const char *prev, const pj_audit_rec *rec, char out[PJ_AUDIT_HEX])
{
    crypto_generichash_state st;
    unsigned char h[crypto_generichash_BYTES];
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)prev, strlen(prev));
    crypto_generichash_update(&st, (const unsigned char *)"chorus-audit-v1", 15);
    absorb(&st, rec->event_id);
    absorb(&st, rec->entry_id);
    absorb(&st, rec->type);
    absorb(&st, rec->aggregate_id);
    absorb(&st, rec->digest);
    crypto_generichash_final(&st, h, sizeof h);
    to_hex(h, out);
}

/* Walk state between pages and rounds. */
typedef struct walk {
    char after[48];               /* last entry id read ("" before the first) */
    char last[PJ_AUDIT_HEX];      /* hash of the last good record (the next prev) */
    long long pos;                /* records verified */
} walk;

static void bad(pj_audit_report *rep, long long pos, const char *id, const char *problem)
{
    rep->intact = false;
    rep->bad_pos = pos;
    snprintf(rep->bad_id, sizeof rep->bad_id, "%s", id ? id : "");
    snprintf(rep->problem, sizeof rep->problem, "%s", problem);
}

/* Checks one XRANGE entry against the chain. Returns true if it is good. */
static bool check_record(walk *w, const redisReply *e, pj_audit_report *rep)
{
    const redisReply *id = cm_reply_elem(e, 0), *f = cm_reply_elem(e, 1);
    const char *eid = cm_reply_is_str(id) ? id->str : "?";
    const char *val[NFIELDS] = {0}, *prev = NULL, *hash = NULL;
    for (size_t j = 0; f && f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2) {
        const redisReply *k = f->element[j], *v = f->element[j + 1];
        if (!cm_reply_is_str(k) || !cm_reply_is_str(v))
            continue;
        for (int i = 0; i < NFIELDS; i++)
            if (!strcmp(k->str, k_fields[i]))
                val[i] = v->str;
        if (!strcmp(k->str, "prev"))
            prev = v->str;
        else if (!strcmp(k->str, "hash"))
            hash = v->str;
    }
    for (int i = 0; i < NFIELDS; i++)
        if (!val[i]) {
            char msg[80];
            snprintf(msg, sizeof msg, "record has no %s field", k_fields[i]);
            bad(rep, w->pos, eid, msg);
            return false;
        }
    if (!prev || !hash) {
        bad(rep, w->pos, eid, "record has no prev or hash field");
        return false;
    }
    if (strcmp(prev, w->last) != 0) {
        bad(rep, w->pos, eid,
            "prev does not link to the record before: a record was removed, inserted or reordered here");
        return false;
    }
    pj_audit_rec rec = {val[0], val[1], val[2], val[3], val[4]};
    char h[PJ_AUDIT_HEX];
    pj_audit_hash(prev, &rec, h);
    if (strcmp(h, hash) != 0) {
        bad(rep, w->pos, eid, "hash does not match the record's contents: the record was altered");
        return false;
    }
    memcpy(w->last, h, sizeof w->last);
    w->pos++;
    return true;
}

/* Verifies records after w->after up to the end of the log. Returns -1 on a
 * Redis error, 1 when a bad record was found, 0 otherwise; *read counts the
 * records read. */
static int walk_to_end(redisContext *c, walk *w, pj_audit_report *rep, long long *read, char *err,
                       size_t errlen)
{
    *read = 0;
    for (;;) {
        redisReply *r = w->after[0]
                            ? redisCommand(c, "XRANGE %s (%s + COUNT %d", PJ_AUDIT_LOG_KEY, w->after, PAGE)
                            : redisCommand(c, "XRANGE %s - + COUNT %d", PJ_AUDIT_LOG_KEY, PAGE);
        if (cm_reply_failed(c, r, err, errlen))
            return -1;
        if (r->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "%s is not a stream", PJ_AUDIT_LOG_KEY);
            freeReplyObject(r);
            return -1;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            if (!check_record(w, r->element[i], rep)) {
                freeReplyObject(r);
                return 1;
            }
            const redisReply *id = cm_reply_elem(r->element[i], 0);
            snprintf(w->after, sizeof w->after, "%s", cm_reply_is_str(id) ? id->str : "");
            (*read)++;
        }
        freeReplyObject(r);
        if (n < PAGE)
            return 0;
    }
}

int pj_audit_verify(redisContext *c, pj_audit_report *rep, char *err, size_t errlen)
{
    memset(rep, 0, sizeof *rep);
    rep->bad_pos = -1;
    rep->intact = true;
    walk w = {.after = ""};
    memcpy(w.last, pj_audit_genesis, sizeof w.last);
    long long stalled_at = -1;
    for (int round = 0; round < MAX_ROUNDS; round++) {
        long long read;
        int rc = walk_to_end(c, &w, rep, &read, err, errlen);
        rep->count = w.pos;
        if (rc < 0)
            return -1;
        if (rc > 0)
            return 0;
        /* The head is read after the walk: every record an audit worker
         * wrote before this moment is counted in it (log and head change in
         * one script), so a log longer than the head holds foreign records. */
        redisReply *r = redisCommand(c, "HMGET %s hash count", PJ_AUDIT_HEAD_KEY);
        if (cm_reply_failed(c, r, err, errlen))
            return -1;
        const redisReply *hh = cm_reply_elem(r, 0);
        long long n = cm_reply_ll(cm_reply_elem(r, 1), 0);
        char head[PJ_AUDIT_HEX];
        snprintf(head, sizeof head, "%s", cm_reply_is_str(hh) ? hh->str : pj_audit_genesis);
        freeReplyObject(r);
        if (w.pos > n) {
            bad(rep, n, "", "records beyond the head: appended outside the audit chain");
            return 0;
        }
        if (w.pos == n) {
            if (strcmp(head, w.last) != 0)
                bad(rep, n ? n - 1 : 0, w.after, "the last record does not match the head's hash");
            return 0;
        }
        /* fewer records than the head counts: either appended since the walk
         * (walk again) or removed from the tail (nothing new appears) */
        if (read == 0 && stalled_at == n) {
            bad(rep, w.pos, "", "the log ends before the head's count: records were removed");
            return 0;
        }
        stalled_at = read == 0 ? n : -1;
    }
    snprintf(err, errlen, "the audit log kept growing for %d rounds; try again", MAX_ROUNDS);
    return -1;
}

void pj_audit_report_json(const pj_audit_report *rep, char *out, size_t outlen)
{
    cm_buf b = CM_BUF_INIT;
    cm_buf_printf(&b, "{\"intact\":%s,\"count\":%lld,\"bad_position\":", rep->intact ? "true" : "false",
                  rep->count);
    if (rep->intact)
        cm_buf_puts(&b, "null,\"bad_entry_id\":null,\"problem\":null}");
    else {
        cm_buf_printf(&b, "%lld,\"bad_entry_id\":", rep->bad_pos);
        cm_buf_put_json_str(&b, rep->bad_id, strlen(rep->bad_id));
        cm_buf_puts(&b, ",\"problem\":");
        cm_buf_put_json_str(&b, rep->problem, strlen(rep->problem));
        cm_buf_putc(&b, '}');
    }
    snprintf(out, outlen, "%s", b.data);
    cm_buf_free(&b);
}
