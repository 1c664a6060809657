/* append.c - the store object and atomic, idempotent appends. */
#include "event_store/store_int.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char es_lua_append[], es_lua_append_batch[];

es_store *es_store_open(cm_cluster *cc, const char *bus)
{
    es_store *s = cm_xcalloc(1, sizeof *s);
    s->cc = cc;
    s->bus = cm_xstrdup(bus && *bus ? bus : CM_BUS_STREAM_DEFAULT);
    s->append.src = es_lua_append;
    s->batch.src = es_lua_append_batch;
    return s;
}

es_store *es_store_new(redisContext *c, const char *bus, char *err, size_t errlen)
{
    es_store *s = es_store_open(cm_cluster_borrow(c), bus);
    s->c = c;
    s->own_cc = true;
    /* loaded now, so a Redis that cannot take the script is told at once */
    if (cm_script_load(c, &s->append, err, errlen) != 0) {
        es_store_free(s);
        return NULL;
    }
    return s;
}

void es_store_free(es_store *s)
{
    if (!s)
        return;
    if (s->own_cc)
        cm_cluster_free(s->cc);
    free(s->bus);
    free(s);
}

cm_cluster *es_store_cluster(const es_store *s)
{
    return s->cc;
}

/* Like cm_reply_failed for a reply of s->cc: true (r freed, s->err set)
 * when r is NULL or an error reply. */
bool es_reply_failed(es_store *s, redisReply *r)
{
    return cm_cluster_reply_failed(s->cc, r, s->err, sizeof s->err);
}

const char *es_store_bus(const es_store *s)
{
    return s->bus;
}

redisContext *es_store_redis(const es_store *s)
{
    return s->c;
}

const char *es_store_errstr(const es_store *s)
{
    return s->err;
}

void es_history_key(const char *aggregate, const char *aggregate_id, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", cm_key_history(aggregate, aggregate_id).s);
}

void es_append_keys(const es_store *s, const char *aggregate, const char *aggregate_id, cm_argv *keys)
{
    cm_argv_adds(keys, cm_key_history(aggregate, aggregate_id).s);
    cm_argv_adds(keys, cm_key_bus(s->bus, cm_partition_of(aggregate_id)).s);   /* the aggregate's partition */
}

/* True if s is a non-empty string of at most max bytes. */
static bool str_ok(const char *s, size_t max)
{
    return s && *s && strlen(s) <= max;
}

/* True if req would store only events that es_event_decode accepts back (an
 * undecodable event would make the aggregate's history unreadable), with a
 * history key that fits es_append_keys' buffer. */
static bool req_valid(const es_append_req *req)
{
    if (!str_ok(req->aggregate, 64) || !str_ok(req->aggregate_id, 256) || !str_ok(req->producer, 256) ||
        (req->correlation_id && !str_ok(req->correlation_id, 256)) || req->n < 1 || req->n > ES_MAX_BATCH ||
        !req->events)
        return false;
    for (size_t i = 0; i < req->n; i++) {
        const es_new_event *ev = &req->events[i];
        if (!ev->type || !cm_id_valid(ev->type, strlen(ev->type), 64) ||
            (ev->event_id && !cm_uuid_valid(ev->event_id)) ||
            (ev->causation_id && !str_ok(ev->causation_id, 256)) || (ev->data && !json_is_object(ev->data)))
            return false;
    }
    return true;
}

int es_append_args(const es_append_req *req, cm_argv *args)
{
    if (!req_valid(req))
        return ES_EINVAL;
    cm_argv_addll(args, req->expected_version < 0 ? -1 : req->expected_version);
    cm_argv_addll(args, (long long)req->n);
    es_encoded enc = {0};
    for (size_t i = 0; i < req->n; i++) {
        const es_new_event *ev = &req->events[i];
        es_encode(ev, req->aggregate, req->aggregate_id, req->correlation_id, req->producer, &enc);
        cm_argv_adds(args, enc.event_id);
        cm_argv_adds(args, ev->type);
        cm_argv_adds(args, enc.ts);
        if (req->expected_version >= 0) {
            /* the append happens at that version or not at all: event i's seq
             * is known, so the whole payload goes as the head (the script
             * stores it as it is) and the tail is empty */
            cm_buf_printf(&enc.head, "%lld", (long long)req->expected_version + (long long)i + 1);
            cm_buf_put(&enc.head, enc.tail.data, enc.tail.len);
            cm_argv_add(args, enc.head.data, enc.head.len);
            cm_argv_add(args, "", 0);
        } else {
            cm_argv_add(args, enc.head.data, enc.head.len);
            cm_argv_add(args, enc.tail.data, enc.tail.len);
        }
    }
    es_encoded_free(&enc);
    return ES_OK;
}

int es_append_parse(const redisReply *r, size_t n, es_append_res *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    const redisReply *st = cm_reply_elem(r, 0);
    if (!cm_reply_is_str(st) || r->elements < 2) {
        snprintf(err, errlen, "unexpected append reply");
        return ES_EREDIS;
    }
    res->version = cm_reply_ll(r->element[1], -1);
    if (!strcmp(st->str, "conflict")) {
        snprintf(err, errlen, "expected version conflict (current version %lld)", (long long)res->version);
        return ES_ECONFLICT;
    }
    if (strcmp(st->str, "ok") != 0 && strcmp(st->str, "dup") != 0) {
        snprintf(err, errlen, "unexpected append status %s", st->str);
        return ES_EREDIS;
    }
    res->duplicate = st->str[0] == 'd';
    if (r->elements < 2 + 2 * n || n > ES_MAX_BATCH) {
        snprintf(err, errlen, "short append reply");
        return ES_EREDIS;
    }
    for (size_t i = 0; i < n; i++) {
        res->pos[i].seq = cm_reply_ll(r->element[2 + 2 * i], 0);
        const redisReply *id = r->element[3 + 2 * i];
        if (cm_reply_is_str(id))
            snprintf(res->pos[i].entry_id, sizeof res->pos[i].entry_id, "%s", id->str);
    }
    return ES_OK;
}

int es_append(es_store *s, const es_append_req *req, es_append_res *res)
{
    /* Events without an id get one here, so the result can name them. */
    es_new_event evs[ES_MAX_BATCH];
    char ids[ES_MAX_BATCH][CM_UUID_LEN + 1];
    es_append_req named = *req;
    if (req->n >= 1 && req->n <= ES_MAX_BATCH && req->events) {
        for (size_t i = 0; i < req->n; i++) {
            evs[i] = req->events[i];
            if (!evs[i].event_id) {
                cm_uuid7(ids[i]);
                evs[i].event_id = ids[i];
            }
        }
        named.events = evs;
    }
    req = &named;
    cm_argv a = {0};
    es_append_keys(s, req->aggregate, req->aggregate_id, &a);
    if (es_append_args(req, &a) != ES_OK) {
        snprintf(s->err, sizeof s->err, "invalid append request");
        cm_argv_free(&a);
        return ES_EINVAL;
    }
    redisReply *r = cm_cluster_script(s->cc, &s->append, 2, &a);
    int rc;
    if (es_reply_failed(s, r)) {
        rc = ES_EREDIS;
    } else {
        rc = es_append_parse(r, req->n, res, s->err, sizeof s->err);
        freeReplyObject(r);
    }
    for (size_t i = 0; rc == ES_OK && i < req->n; i++)
        snprintf(res->pos[i].event_id, sizeof res->pos[i].event_id, "%s", req->events[i].event_id);
    cm_argv_free(&a);
    return rc;
}

int es_append_batch_args(const es_store *s, const es_append_req *reqs, size_t n, cm_argv *a, int *nkeys)
{
    if (n < 1 || n > ES_MAX_APPEND_BATCH)
        return ES_EINVAL;
    /* one bus per call: every aggregate of the batch in one partition */
    int p = cm_partition_of(reqs[0].aggregate_id);
    for (size_t i = 1; i < n; i++)
        if (cm_partition_of(reqs[i].aggregate_id) != p)
            return ES_EINVAL;
    cm_argv_adds(a, cm_key_bus(s->bus, p).s);   /* KEYS: bus, then one history per request */
    for (size_t i = 0; i < n; i++)
        cm_argv_adds(a, cm_key_history(reqs[i].aggregate ? reqs[i].aggregate : "", reqs[i].aggregate_id ?
                                                                                        reqs[i].aggregate_id : "").s);
    *nkeys = a->n;
    cm_argv_addll(a, (long long)n);   /* ARGV: m, then each request's append arguments */
    for (size_t i = 0; i < n; i++)
        if (es_append_args(&reqs[i], a) != ES_OK)
            return ES_EINVAL;
    return ES_OK;
}

int es_append_batch_parse(const redisReply *r, const es_append_req *reqs, size_t n, es_append_res *res,
                          int *rcs, char *err, size_t errlen)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        snprintf(err, errlen, "batched append: expected %zu results", n);
        return ES_EREDIS;
    }
    for (size_t i = 0; i < n; i++) {
        rcs[i] = es_append_parse(r->element[i], reqs[i].n, &res[i], err, errlen);
        if (rcs[i] != ES_OK && rcs[i] != ES_ECONFLICT)
            return ES_EREDIS;
        for (size_t k = 0; rcs[i] == ES_OK && k < reqs[i].n; k++)
            if (reqs[i].events[k].event_id)
                snprintf(res[i].pos[k].event_id, sizeof res[i].pos[k].event_id, "%s", reqs[i].events[k].event_id);
    }
    return ES_OK;
}

int es_append_batch(es_store *s, const es_append_req *reqs, size_t n, es_append_res *res, int *rcs)
{
    cm_argv a = {0};
    int nkeys = 0, rc = es_append_batch_args(s, reqs, n, &a, &nkeys);
    if (rc != ES_OK) {
        snprintf(s->err, sizeof s->err, "invalid append request in the batch");
    } else {
        redisReply *r = cm_cluster_script(s->cc, &s->batch, nkeys, &a);
        if (es_reply_failed(s, r)) {
            rc = ES_EREDIS;
        } else {
            rc = es_append_batch_parse(r, reqs, n, res, rcs, s->err, sizeof s->err);
            freeReplyObject(r);
        }
    }
    cm_argv_free(&a);
    return rc;
}

long long es_retention_trim(es_store *s, int64_t days)
{
    int64_t now = cm_wall_ms();
    if (days <= 0 || days >= now / 86400000LL) /* nothing is that old (and no overflow) */
        return 0;
    int64_t cutoff = now - days * 86400000LL;
    long long n = 0;
    bool failed = false;
    for (int p = 0; p < cm_partitions(); p++) {   /* every partition's bus */
        cm_key bus = cm_key_bus(s->bus, p);
        redisReply *r = cm_cluster_command(s->cc, cm_key_slot(bus.s, strlen(bus.s)), "XTRIM %s MINID %lld-0", bus.s,
                                           (long long)cutoff);
        if (es_reply_failed(s, r)) {
            /* in best effort an unavailable master costs its budget once and
             * is then skipped at once: the other partitions go on; else the
             * next partition would wait the whole retry deadline again */
            if (!cm_cluster_best_effort(s->cc))
                return ES_EREDIS;
            failed = true;
            continue;
        }
        n += cm_reply_ll(r, 0);
        freeReplyObject(r);
    }
    return failed ? ES_EREDIS : n;
}
