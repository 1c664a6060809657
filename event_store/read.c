/* read.c - reading an aggregate's history and pages of a stream, on an
 * es_store's connection or through a cm_cluster (each read is one command,
 * routed to its key's slot); both decode the reply the same way. */
#include "event_store/store_int.h"
#include "common/cluster.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void es_events_free(es_event **evs, size_t n)
{
    if (!evs)
        return;
    for (size_t i = 0; i < n; i++)
        es_event_free(evs[i]);
    free(evs);
}

/* Splits a history element "event_id\nbus_id\ntype\nts\npayload" and decodes it. */
static int decode_history_element(const char *el, size_t len, es_event **out, char *err, size_t errlen)
{
    const char *f[4];
    size_t fl[4];
    const char *p = el, *end = el + len;
    for (int i = 0; i < 4; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            snprintf(err, errlen, "malformed history element");
            return -1;
        }
        f[i] = p;
        fl[i] = (size_t)(nl - p);
        p = nl + 1;
    }
    char id[64];
    snprintf(id, sizeof id, "%.*s", (int)(fl[1] < 63 ? fl[1] : 63), f[1]);
    return es_event_decode(id, f[2], fl[2], p, (size_t)(end - p), f[3], fl[3], out, err, errlen);
}

/* Decodes an LRANGE reply of history `key` into *out / *n. Takes r. */
static int history_decode(redisReply *r, const char *key, es_event ***out, size_t *n, char *err, size_t errlen)
{
    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "%.200s is not a history list", key);
        freeReplyObject(r);
        return ES_EDECODE;
    }
    es_event **evs = cm_xcalloc(r->elements ? r->elements : 1, sizeof *evs);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || decode_history_element(e->str, e->len, &evs[i], err, errlen) != 0) {
            es_events_free(evs, i);
            freeReplyObject(r);
            return ES_EDECODE;
        }
    }
    *n = r->elements;
    *out = evs;
    freeReplyObject(r);
    return ES_OK;
}

int es_history_read(es_store *s, const char *aggregate, const char *aggregate_id, es_event ***out,
                    size_t *n)
{
    return es_history_fetch(s->cc, aggregate, aggregate_id, out, n, s->err, sizeof s->err);
}

int es_history_fetch(cm_cluster *cc, const char *aggregate, const char *aggregate_id, es_event ***out,
                     size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    char key[512];
    es_history_key(aggregate, aggregate_id, key, sizeof key);
    redisReply *r = cm_cluster_command(cc, cm_key_slot(key, strlen(key)), "LRANGE %s 0 -1", key);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return ES_EREDIS;
    return history_decode(r, key, out, n, err, errlen);
}

/* The XRANGE start of a page after `after`. */
static void page_start(const char *after, char *start, size_t len)
{
    if (!after || !*after || !strcmp(after, "0-0") || !strcmp(after, "0"))
        snprintf(start, len, "-");
    else
        snprintf(start, len, "(%s", after);
}

/* Decodes an XRANGE reply (count asked) into a page. Takes r. */
static int page_decode(redisReply *r, size_t count, es_event ***out, size_t *n, char **next)
{
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return ES_EDECODE;
    }
    es_event **evs = cm_xcalloc(r->elements ? r->elements : 1, sizeof *evs);
    size_t k = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        char err[256];
        if (es_event_from_entry(e, &evs[k], err, sizeof err) == 0) {
            k++;
            continue;
        }
        /* Keep foreign entries visible: raw fields, no envelope. */
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        es_event *ev = cm_xcalloc(1, sizeof *ev);
        ev->kind = CM_EV_UNKNOWN;
        ev->entry_id = cm_xstrdup(e->element[0]->str);
        const redisReply *f = e->element[1];
        for (size_t j = 0; f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2) {
            const redisReply *fk = f->element[j], *fv = f->element[j + 1];
            if (fk->type != REDIS_REPLY_STRING || fv->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(fk->str, "type") && !ev->type)
                ev->type = cm_xstrndup(fv->str, fv->len);
            else if (!strcmp(fk->str, "payload") && !ev->payload) {
                ev->payload = cm_xstrndup(fv->str, fv->len);
                ev->payload_len = fv->len;
            } else if (!strcmp(fk->str, "ts") && !ev->ts)
                ev->ts = cm_xstrndup(fv->str, fv->len);
        }
        if (!ev->type) ev->type = cm_xstrdup("");
        if (!ev->payload) ev->payload = cm_xstrdup("");
        if (!ev->ts) ev->ts = cm_xstrdup("");
        evs[k++] = ev;
    }
    if (r->elements == count && count > 0) {
        const redisReply *last = r->element[r->elements - 1];
        if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1 &&
            last->element[0]->type == REDIS_REPLY_STRING)
            *next = cm_xstrdup(last->element[0]->str);
    }
    freeReplyObject(r);
    *out = evs;
    *n = k;
    return ES_OK;
}

int es_stream_page(es_store *s, const char *stream, const char *after, size_t count, es_event ***out,
                   size_t *n, char **next)
{
    return es_stream_fetch(s->cc, stream, after, count, out, n, next, s->err, sizeof s->err);
}

int es_stream_fetch(cm_cluster *cc, const char *stream, const char *after, size_t count, es_event ***out,
                    size_t *n, char **next, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    *next = NULL;
    if (count < 1 || count > 10000)
        return ES_EINVAL;
    char start[80];
    page_start(after, start, sizeof start);
    redisReply *r = cm_cluster_command(cc, cm_key_slot(stream, strlen(stream)), "XRANGE %s %s + COUNT %lld",
                                       stream, start, (long long)count);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return ES_EREDIS;
    return page_decode(r, count, out, n, next);
}
