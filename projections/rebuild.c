/* rebuild.c - rebuilding the read models from zero by replaying the bus.
 *
 * The rebuild holds every partition's lock cm_key_pj_rebuild(p) (one token,
 * a TTL it keeps extending) from before it deletes the first key until the
 * last page is applied; each live apply script checks its own partition's
 * lock (one slot).
 *
 * Everything goes through a cm_cluster, so the same rebuild runs on one
 * server and on a Redis Cluster: the read models are found by SCAN on every
 * master and unlinked key by key (each to its slot), each partition's bus
 * is paged with XRANGE on its slot's master. Live projections check the lock inside their apply script and
 * wait while it is held, so no live write lands between the delete and the
 * replay. Live batches that were in hand are applied after the rebuild and
 * change nothing (apply is idempotent per checkout and seq). If the rebuild
 * dies, the lock expires after LOCK_TTL_MS and the live projections resume
 * on whatever the rebuild had written: run it again. */
#include "projections/projection.h"
#include "common/cluster.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/names.h"
#include "common/redis.h"
#include "common/xmalloc.h"
#include "event_store/event.h"
#include "event_store/store.h"   /* es_events_free */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char pj_lua_unlock[];

#define LOCK_TTL_MS 30000
#define PAGE 512
#define MAX_MASTERS 1024   /* a cluster's masters the delete can visit */

/* UNLINKs keys (one command per key, each to its slot's master, in one
 * pipeline). */
static int unlink_keys(cm_cluster *cc, const redisReply *keys, long long *deleted, char *err, size_t errlen)
{
    cm_pipe *pipe = cm_pipe_new(cc);
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        if (!cm_reply_is_str(k))
            continue;
        cm_argv a = {0};
        cm_argv_adds(&a, "UNLINK");
        cm_argv_add(&a, k->str, k->len);
        cm_pipe_argv(pipe, cm_key_slot(k->str, k->len), &a);
        cm_argv_free(&a);
    }
    int rc = PJ_OK;
    if (cm_pipe_exec(pipe) != 0) {
        snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
        rc = PJ_EREDIS;
    }
    for (size_t i = 0; rc == PJ_OK && i < cm_pipe_count(pipe); i++) {
        redisReply *d = cm_pipe_take(pipe, i);
        if (!d || d->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %s", d ? d->str : "no reply to UNLINK");
            rc = PJ_EREDIS;
        } else {
            *deleted += cm_reply_ll(d, 0);
        }
        freeReplyObject(d);
    }
    cm_pipe_free(pipe);
    return rc;
}

/* Deletes every chorus:rm:* key: SCAN on every master (one server: the one),
 * UNLINK per scan page. */
static int delete_read_models(cm_cluster *cc, long long *deleted, char *err, size_t errlen)
{
    int slots[MAX_MASTERS];
    int nm = cm_cluster_master_slots(cc, slots, (int)(sizeof slots / sizeof slots[0]));
    for (int m = 0; m < nm; m++) {
        char cursor[32] = "0";
        do {
            redisReply *r =
                cm_cluster_command(cc, slots[m], "SCAN %s MATCH %s* COUNT 1000", cursor, CM_KEY_RM_PREFIX);
            const redisReply *cur = cm_reply_elem(r, 0), *keys = cm_reply_elem(r, 1);
            if (!r || !cm_reply_is_str(cur) || !keys || keys->type != REDIS_REPLY_ARRAY) {
                const char *why = !r ? cm_cluster_errstr(cc) : r->type == REDIS_REPLY_ERROR ? r->str : "not a reply";
                snprintf(err, errlen, "SCAN: %s", why);
                freeReplyObject(r);
                return PJ_EREDIS;
            }
            snprintf(cursor, sizeof cursor, "%s", cur->str);
            int rc = keys->elements ? unlink_keys(cc, keys, deleted, err, errlen) : PJ_OK;
            freeReplyObject(r);
            if (rc != PJ_OK)
                return rc;
        } while (strcmp(cursor, "0") != 0);
    }
    return PJ_OK;
}

/* One page of bus (after the entry id `after`, NULL from the start) through
 * cc: *evs the decodable entries (caller frees), *undecodable the others
 * (the live projection never applied them: they were dead-lettered), *next
 * the last entry id read when the page was full (caller frees), else NULL. */
static int bus_page(cm_cluster *cc, const char *bus, const char *after, es_event ***evs, size_t *n,
                    long long *seen, long long *undecodable, char **next, char *err, size_t errlen)
{
    *evs = NULL;
    *n = 0;
    *next = NULL;
    char start[80];
    snprintf(start, sizeof start, "%s%s", after ? "(" : "-", after ? after : "");
    redisReply *r =
        cm_cluster_command(cc, cm_key_slot(bus, strlen(bus)), "XRANGE %s %s + COUNT %d", bus, start, PAGE);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        const char *why = !r ? cm_cluster_errstr(cc) : r->type == REDIS_REPLY_ERROR ? r->str : "not a stream reply";
        snprintf(err, errlen, "reading the bus %.200s: %s", bus, why);
        freeReplyObject(r);
        return PJ_EREDIS;
    }
    *evs = cm_xcalloc(r->elements ? r->elements : 1, sizeof **evs);
    for (size_t i = 0; i < r->elements; i++) {
        char derr[256];
        if (es_event_from_entry(r->element[i], &(*evs)[*n], derr, sizeof derr) == 0)
            (*n)++;
        else
            (*undecodable)++;
    }
    *seen += (long long)r->elements;
    const redisReply *last = r->elements == PAGE ? cm_reply_elem(r->element[PAGE - 1], 0) : NULL;
    if (cm_reply_is_str(last))
        *next = cm_xstrdup(last->str);
    freeReplyObject(r);
    return PJ_OK;
}

/* Extends (ttl_ms > 0) or releases (ttl_ms == 0) our lock of every
 * partition in [0, n), in one pipeline. 1 all held, 0 one lost, <0 error. */
static int lock_keep(cm_cluster *cc, cm_script *s, int n, const char *token, long long ttl_ms, char *err,
                     size_t errlen)
{
    cm_pipe *pipe = cm_pipe_new(cc);
    int held = 1;
    for (int p = 0; p < n && held == 1; p++) {
        cm_argv a = {0};
        cm_argv_adds(&a, cm_key_pj_rebuild(p).s);
        cm_argv_adds(&a, token);
        if (ttl_ms > 0)
            cm_argv_addll(&a, ttl_ms);
        else
            cm_argv_adds(&a, "del");
        if (cm_pipe_script(pipe, s, 1, &a) != 0) {
            snprintf(err, errlen, "%s", cm_cluster_errstr(cc));
            held = PJ_EREDIS;
        }
        cm_argv_free(&a);
    }
    if (held == 1 && cm_pipe_exec(pipe) != 0) {
        snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
        held = PJ_EREDIS;
    }
    for (int p = 0; p < n && held >= 0; p++) {
        redisReply *r = cm_pipe_take(pipe, (size_t)p);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %s", r ? r->str : "no reply");
            held = PJ_EREDIS;
        } else if (cm_reply_ll(r, 0) != 1) {
            held = 0;
        }
        freeReplyObject(r);
    }
    cm_pipe_free(pipe);
    return held;
}

/* Takes every partition's lock with token. PJ_OK, PJ_EBUSY (another rebuild
 * holds one: the ones taken are released), PJ_EREDIS. */
static int lock_take(cm_cluster *cc, cm_script *unlock, const char *token, char *err, size_t errlen)
{
    int n = cm_partitions(), p, rc = PJ_OK;
    for (p = 0; p < n && rc == PJ_OK; p++) {
        cm_key k = cm_key_pj_rebuild(p);
        redisReply *r = cm_cluster_command(cc, cm_key_slot(k.s, strlen(k.s)), "SET %s %s NX PX %d", k.s, token,
                                           LOCK_TTL_MS);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %s", r ? r->str : cm_cluster_errstr(cc));
            rc = PJ_EREDIS;
        } else if (r->type != REDIS_REPLY_STATUS) {
            snprintf(err, errlen, "another rebuild holds %s", k.s);
            rc = PJ_EBUSY;
        }
        freeReplyObject(r);
    }
    if (rc != PJ_OK && p > 1) {   /* give back the ones taken before the failure */
        char uerr[256];
        if (lock_keep(cc, unlock, p - 1, token, 0, uerr, sizeof uerr) < 0)
            cm_log(CM_WARN, "cannot release the rebuild locks (they expire in %d ms): %s", LOCK_TTL_MS, uerr);
    }
    return rc;
}

/* Replays one partition's bus page by page through the apply script. */
static int replay(cm_cluster *cc, const char *bus, long long ttl_s, cm_script *unlock, const char *token,
                  pj_rebuild_stats *st, char *err, size_t errlen)
{
    pj_projection *p = pj_projection_new();
    pj_projection_set_lifetime(p, ttl_s);
    char *after = NULL;
    int rc = PJ_OK;
    for (;;) {
        es_event **evs;
        size_t k;
        char *next;
        rc = bus_page(cc, bus, after, &evs, &k, &st->events, &st->undecodable, &next, err, errlen);
        if (rc != PJ_OK)
            break;
        pj_apply_res res;
        rc = pj_projection_apply(p, cc, bus, evs, k, PJ_REBUILD, NULL, &res, err, errlen);
        st->applied += (long long)res.applied;
        es_events_free(evs, k);
        free(after);
        after = next;
        if (rc != PJ_OK)
            break;
        int held = lock_keep(cc, unlock, cm_partitions(), token, LOCK_TTL_MS, err, errlen);
        if (held <= 0) {
            if (held == 0)
                snprintf(err, errlen, "lost the rebuild lock (expired): run the rebuild again");
            rc = PJ_EREDIS;
            break;
        }
        if (!next)
            break;
    }
    free(after);
    pj_projection_free(p);
    return rc;
}

int pj_projection_rebuild(cm_cluster *cc, const char *bus, long long ttl_s, pj_rebuild_stats *stats, char *err,
                          size_t errlen)
{
    memset(stats, 0, sizeof *stats);
    if (!cc || !bus)
        return PJ_EINVAL;
    char token[CM_UUID_LEN + 1];
    cm_uuid7(token);
    cm_script unlock = {.src = pj_lua_unlock};
    int rc = lock_take(cc, &unlock, token, err, errlen);
    if (rc != PJ_OK)
        return rc;
    rc = delete_read_models(cc, &stats->deleted, err, errlen);
    for (int p = 0; rc == PJ_OK && p < cm_partitions(); p++)   /* each partition's bus in turn */
        rc = replay(cc, cm_key_bus(bus, p).s, ttl_s, &unlock, token, stats, err, errlen);
    char uerr[256];
    if (lock_keep(cc, &unlock, cm_partitions(), token, 0, uerr, sizeof uerr) < 0)
        cm_log(CM_WARN, "cannot release the rebuild locks (they expire in %d ms): %s", LOCK_TTL_MS, uerr);
    return rc;
}
