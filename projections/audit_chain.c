/* audit_chain.c - hashing audit records and verifying the chain: links and
 * hashes (keyed or not), the head in Redis, the head file's line, and with
 * deep, every record against the event it stands for.
 *
 * Keyed verification: with a key, a record must hash under that key, except
 * for an unkeyed prefix written before the key was introduced; the first
 * keyed record ends the prefix (its hash, keyed, covers the prefix's last
 * hash), and after it an unkeyed record is an error. A chain with no keyed
 * record at all fails under a key: it was written, or recomputed, without it. */
#include "projections/audit.h"
#include "common/buf.h"
#include "common/redis.h"
#include "common/xmalloc.h"
#include "event_store/store.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
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

void pj_audit_hash(const pj_audit_key *key, const char *prev, const pj_audit_rec *rec, char out[PJ_AUDIT_HEX])
{
    crypto_generichash_state st;
    unsigned char h[crypto_generichash_BYTES];
    bool keyed = key && key->len > 0;
    crypto_generichash_init(&st, keyed ? key->bytes : NULL, keyed ? key->len : 0, sizeof h);
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

/* A record of the page being walked, for the deep check (strings borrowed
 * from the page's reply). */
typedef struct drec {
    long long pos;
    const char *id;               /* audit log entry id */
    pj_audit_rec rec;
} drec;

/* Walk state between pages and rounds. */
typedef struct walk {
    const pj_audit_opts *o;
    bool keyed_given;             /* o->key holds a key */
    char after[48];               /* last entry id read ("" before the first) */
    char last[PJ_AUDIT_HEX];      /* hash of the last good record (the next prev) */
    long long pos;                /* records verified */
    bool keyed;                   /* a record hashed under the key was seen */
    long long unkeyed;            /* records of the unkeyed prefix */
    es_store *store;              /* deep: reads histories */
    drec *page;                   /* deep: the page's good records */
    bool deep_bad;                /* the problem found is a deep one */
} walk;

static void bad(pj_audit_report *rep, long long pos, const char *id, const char *problem)
{
    rep->intact = false;
    rep->bad_pos = pos;
    snprintf(rep->bad_id, sizeof rep->bad_id, "%s", id ? id : "");
    snprintf(rep->problem, sizeof rep->problem, "%s", problem);
}

/* Checks a record's hash under the key (and, before the keyed part, without
 * it). Returns true when it matches, and moves w along the key's phases. */
static bool hash_matches(walk *w, const char *prev, const pj_audit_rec *rec, const char *hash)
{
    char h[PJ_AUDIT_HEX];
    if (w->keyed_given) {
        pj_audit_hash(w->o->key, prev, rec, h);
        if (!strcmp(h, hash)) {
            w->keyed = true;
            return true;
        }
        if (w->keyed)
            return false;
    }
    pj_audit_hash(NULL, prev, rec, h);
    if (strcmp(h, hash) != 0)
        return false;
    if (w->keyed_given)
        w->unkeyed++;
    return true;
}

/* Checks one XRANGE entry against the chain; fills *d for the deep check.
 * Returns true if it is good. */
static bool check_record(walk *w, const redisReply *e, pj_audit_report *rep, drec *d)
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
    if (!hash_matches(w, prev, &rec, hash)) {
        bad(rep, w->pos, eid,
            w->keyed        ? "hash does not match the record's contents under AUDIT_KEY: the record was altered, "
                              "or rehashed without the key"
            : w->keyed_given ? "hash does not match the record's contents, with or without AUDIT_KEY: the record "
                              "was altered"
                            : "hash does not match the record's contents: the record was altered");
        return false;
    }
    const pj_audit_anchor *a = w->o->anchor;
    if (a && a->count == w->pos + 1 && strcmp(hash, a->hash) != 0) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "the chain after %lld records does not match AUDIT_HEAD_FILE line %lld: the log was rewritten",
                 a->count, a->line);
        bad(rep, w->pos, eid, msg);
        return false;
    }
    *d = (drec){w->pos, eid, rec};
    memcpy(w->last, hash, sizeof w->last);
    w->pos++;
    return true;
}

static int by_aggregate(const void *a, const void *b)
{
    const drec *x = a, *y = b;
    int c = strcmp(x->rec.aggregate_id, y->rec.aggregate_id);
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

/* What is wrong between record r and its history evs (rc: the read's
 * result), or "" when they agree. */
static void compare_event(const drec *r, int rc, const char *rerr, es_event *const *evs, size_t n, char *problem,
                          size_t plen)
{
    problem[0] = '\0';
    if (rc == ES_EDECODE) {
        snprintf(problem, plen, "the history of checkout %s no longer decodes (%s): a stored event was altered",
                 r->rec.aggregate_id, rerr);
        return;
    }
    const es_event *ev = NULL;
    for (size_t i = 0; i < n && !ev; i++)
        if (evs[i]->event_id && !strcmp(evs[i]->event_id, r->rec.event_id))
            ev = evs[i];
    if (!ev) {
        snprintf(problem, plen, "event %s is missing from the history of checkout %s: it was removed",
                 r->rec.event_id, r->rec.aggregate_id);
        return;
    }
    char digest[PJ_AUDIT_HEX];
    pj_audit_digest(ev->payload, ev->payload_len, digest);
    const char *what = strcmp(digest, r->rec.digest) ? "payload"
                       : strcmp(ev->type, r->rec.type) ? "type"
                       : strcmp(ev->entry_id, r->rec.entry_id) ? "bus entry id"
                                                               : NULL;
    if (what)
        snprintf(problem, plen,
                 "event %s (seq %lld) in the history of checkout %s differs from its audit record (%s): the "
                 "stored event was altered",
                 r->rec.event_id, (long long)ev->seq, r->rec.aggregate_id, what);
}

/* Checks the page's good records (d[0..m)) against their events, one history
 * read per aggregate. Returns 1 when one differs (the earliest is reported),
 * 0 when all agree, -1 with err when Redis could not be read. */
static int deep_page(walk *w, drec *d, size_t m, pj_audit_report *rep, char *err, size_t errlen)
{
    qsort(d, m, sizeof *d, by_aggregate);
    long long worst = -1;
    for (size_t g = 0; g < m;) {
        size_t end = g + 1;
        while (end < m && !strcmp(d[end].rec.aggregate_id, d[g].rec.aggregate_id))
            end++;
        es_event **evs = NULL;
        size_t n = 0;
        int rc = es_history_read(w->store, PJ_AUDIT_AGGREGATE, d[g].rec.aggregate_id, &evs, &n);
        if (rc != ES_OK && rc != ES_EDECODE) {
            snprintf(err, errlen, "reading the history of checkout %s: %s", d[g].rec.aggregate_id,
                     es_store_errstr(w->store));
            return -1;
        }
        for (size_t i = g; i < end; i++) {
            char problem[300];
            compare_event(&d[i], rc, es_store_errstr(w->store), evs, n, problem, sizeof problem);
            if (problem[0] && (worst < 0 || d[i].pos < worst)) {
                worst = d[i].pos;
                bad(rep, d[i].pos, d[i].id, problem);
                snprintf(rep->bad_event_id, sizeof rep->bad_event_id, "%s", d[i].rec.event_id);
            }
            if (problem[0])
                break;   /* later records of this checkout come after it */
        }
        es_events_free(evs, n);
        g = end;
    }
    if (worst < 0)
        return 0;
    w->deep_bad = true;
    return 1;
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
        size_t n = r->elements, good = 0;
        int rc = 0;
        drec scratch;
        for (size_t i = 0; i < n; i++) {
            if (!check_record(w, r->element[i], rep, w->page ? &w->page[good] : &scratch)) {
                rc = 1;
                break;
            }
            good++;
            const redisReply *id = cm_reply_elem(r->element[i], 0);
            snprintf(w->after, sizeof w->after, "%s", cm_reply_is_str(id) ? id->str : "");
            (*read)++;
        }
        if (w->page && good > 0) {
            int d = deep_page(w, w->page, good, rep, err, errlen);
            if (d != 0)
                rc = d;
        }
        freeReplyObject(r);
        if (rc != 0 || n < PAGE)
            return rc;
    }
}

/* Reads the head's key_id and refuses a key that cannot verify this chain.
 * Returns 0, or -1 with err. */
static int check_key_id(redisContext *c, const walk *w, char *err, size_t errlen)
{
    redisReply *r = redisCommand(c, "HGET %s key_id", PJ_AUDIT_HEAD_KEY);
    if (cm_reply_failed(c, r, err, errlen))
        return -1;
    char chain[PJ_AUDIT_KEY_ID + 8];
    snprintf(chain, sizeof chain, "%s", cm_reply_is_str(r) ? r->str : PJ_AUDIT_UNKEYED);
    freeReplyObject(r);
    if (!strcmp(chain, PJ_AUDIT_UNKEYED))
        return 0;
    if (!w->keyed_given) {
        snprintf(err, errlen, "the audit chain is keyed (key id %s): set AUDIT_KEY or AUDIT_KEY_FILE to verify it",
                 chain);
        return -1;
    }
    if (strcmp(chain, w->o->key->id) != 0) {
        snprintf(err, errlen, "AUDIT_KEY (key id %s) is not the audit chain's key (key id %s)", w->o->key->id,
                 chain);
        return -1;
    }
    return 0;
}

/* The checks once the walk reached the head: the head file's count, then the
 * key. */
static void check_end(const walk *w, long long n, pj_audit_report *rep)
{
    const pj_audit_anchor *a = w->o->anchor;
    char msg[300];
    if (a && a->count > n) {
        snprintf(msg, sizeof msg,
                 "the audit head in Redis counts %lld records but AUDIT_HEAD_FILE line %lld vouches for %lld: "
                 "the log and its head were rolled back",
                 n, a->line, a->count);
        bad(rep, n, "", msg);
        return;
    }
    if (w->keyed_given && n > 0 && !w->keyed) {
        snprintf(msg, sizeof msg,
                 "no record is hashed with AUDIT_KEY (key id %s): the chain was recomputed without the key, or "
                 "written by audit workers without it",
                 w->o->key->id);
        bad(rep, n - 1, w->after, msg);
    }
}

int pj_audit_verify(redisContext *c, const pj_audit_opts *o, pj_audit_report *rep, char *err, size_t errlen)
{
    pj_audit_opts opts = o ? *o : (pj_audit_opts){0};
    if (opts.anchor && opts.anchor->count <= 0)
        opts.anchor = NULL;   /* an empty head file vouches for nothing */
    memset(rep, 0, sizeof *rep);
    rep->bad_pos = -1;
    rep->intact = true;
    walk w = {.o = &opts, .after = ""};
    w.keyed_given = opts.key && opts.key->len > 0;
    memcpy(w.last, pj_audit_genesis, sizeof w.last);
    int ret = -1;
    if (check_key_id(c, &w, err, errlen) != 0)
        return -1;
    if (w.o->deep) {
        w.store = es_store_new(c, NULL, err, errlen);
        if (!w.store)
            return -1;
        w.page = cm_xcalloc(PAGE, sizeof *w.page);
        rep->deep = true;
    }
    long long stalled_at = -1;
    for (int round = 0; round < MAX_ROUNDS; round++) {
        long long read;
        int rc = walk_to_end(c, &w, rep, &read, err, errlen);
        rep->count = w.deep_bad ? rep->bad_pos : w.pos;
        rep->unkeyed = w.unkeyed;
        if (rc != 0) {
            ret = rc < 0 ? -1 : 0;
            goto done;
        }
        /* The head is read after the walk: every record an audit worker
         * wrote before this moment is counted in it (log and head change in
         * one script), so a log longer than the head holds foreign records. */
        redisReply *r = redisCommand(c, "HMGET %s hash count", PJ_AUDIT_HEAD_KEY);
        if (cm_reply_failed(c, r, err, errlen))
            goto done;
        const redisReply *hh = cm_reply_elem(r, 0);
        long long n = cm_reply_ll(cm_reply_elem(r, 1), 0);
        char head[PJ_AUDIT_HEX];
        snprintf(head, sizeof head, "%s", cm_reply_is_str(hh) ? hh->str : pj_audit_genesis);
        freeReplyObject(r);
        ret = 0;
        if (w.pos > n) {
            bad(rep, n, "", "records beyond the head: appended outside the audit chain");
            goto done;
        }
        if (w.pos == n) {
            if (strcmp(head, w.last) != 0)
                bad(rep, n ? n - 1 : 0, w.after, "the last record does not match the head's hash");
            else
                check_end(&w, n, rep);
            if (rep->intact && w.o->anchor)
                rep->anchored = w.o->anchor->count;
            goto done;
        }
        /* fewer records than the head counts: either appended since the walk
         * (walk again) or removed from the tail (nothing new appears) */
        if (read == 0 && stalled_at == n) {
            bad(rep, w.pos, "", "the log ends before the head's count: records were removed");
            goto done;
        }
        stalled_at = read == 0 ? n : -1;
        ret = -1;
    }
    snprintf(err, errlen, "the audit log kept growing for %d rounds; try again", MAX_ROUNDS);
done:
    free(w.page);
    es_store_free(w.store);
    return ret;
}

void pj_audit_report_json(const pj_audit_report *rep, char *out, size_t outlen)
{
    cm_buf b = CM_BUF_INIT;
    cm_buf_printf(&b, "{\"intact\":%s,\"count\":%lld,\"unkeyed\":%lld,\"anchored\":%lld,\"deep\":%s,\"bad_position\":",
                  rep->intact ? "true" : "false", rep->count, rep->unkeyed, rep->anchored,
                  rep->deep ? "true" : "false");
    if (rep->intact)
        cm_buf_puts(&b, "null,\"bad_entry_id\":null,\"bad_event_id\":null,\"problem\":null}");
    else {
        cm_buf_printf(&b, "%lld,\"bad_entry_id\":", rep->bad_pos);
        cm_buf_put_json_str(&b, rep->bad_id, strlen(rep->bad_id));
        cm_buf_puts(&b, ",\"bad_event_id\":");
        if (rep->bad_event_id[0])
            cm_buf_put_json_str(&b, rep->bad_event_id, strlen(rep->bad_event_id));
        else
            cm_buf_puts(&b, "null");
        cm_buf_puts(&b, ",\"problem\":");
        cm_buf_put_json_str(&b, rep->problem, strlen(rep->problem));
        cm_buf_putc(&b, '}');
    }
    snprintf(out, outlen, "%s", b.data);
    cm_buf_free(&b);
}
