/* rebuild.c - rebuilding the read models from zero by replaying the bus.
 *
 * The rebuild holds every partition's lock cm_key_pj_rebuild(p) (one token,
 * a TTL it keeps extending) from before it deletes the first key until the
 * last page is applied; each live apply script checks its own partition's
 * lock (one slot). Live projections check the lock inside their apply script and
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
#include "event_store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char pj_lua_unlock[];

#define LOCK_TTL_MS 30000
#define PAGE 512

/* Deletes every chorus:rm:* key (SCAN + UNLINK per scan page). */
static int delete_read_models(redisContext *c, long long *deleted, char *err, size_t errlen)
{
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH %s* COUNT 1000", cursor, CM_KEY_RM_PREFIX);
        if (cm_reply_failed(c, r, err, errlen))
            return PJ_EREDIS;
        const redisReply *cur = cm_reply_elem(r, 0), *keys = cm_reply_elem(r, 1);
        if (!cm_reply_is_str(cur) || !keys || keys->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "unexpected SCAN reply");
            freeReplyObject(r);
            return PJ_EREDIS;
        }
        snprintf(cursor, sizeof cursor, "%s", cur->str);
        if (keys->elements) {
            cm_argv a = {0};
            cm_argv_adds(&a, "UNLINK");
            for (size_t i = 0; i < keys->elements; i++)
                if (cm_reply_is_str(keys->element[i]))
                    cm_argv_add(&a, keys->element[i]->str, keys->element[i]->len);
            redisReply *d = redisCommandArgv(c, a.n, (const char **)a.v, a.len);
            cm_argv_free(&a);
            if (cm_reply_failed(c, d, err, errlen)) {
                freeReplyObject(r);
                return PJ_EREDIS;
            }
            *deleted += cm_reply_ll(d, 0);
            freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
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

/* Replays the bus page by page through the apply script. */
static int replay(cm_cluster *cc, es_store *store, const char *bus, long long ttl_s, cm_script *unlock,
                  const char *token, pj_rebuild_stats *st, char *err, size_t errlen)
{
    pj_projection *p = pj_projection_new();
    pj_projection_set_lifetime(p, ttl_s);
    char *after = NULL;
    int rc = PJ_OK;
    for (;;) {
        es_event **evs = NULL;
        size_t n = 0;
        char *next = NULL;
        if (es_stream_page(store, bus, after, PAGE, &evs, &n, &next) != ES_OK) {
            snprintf(err, errlen, "reading the bus: %s", es_store_errstr(store));
            rc = PJ_EREDIS;
            break;
        }
        /* undecodable entries come back with no envelope: the live
         * projection never applied them (they were dead-lettered) */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (!evs[i]->event_id) {
                st->undecodable++;
                es_event_free(evs[i]);
                continue;
            }
            evs[k++] = evs[i];
        }
        pj_apply_res res;
        rc = pj_projection_apply(p, cc, bus, evs, k, PJ_REBUILD, NULL, &res, err, errlen);
        st->events += (long long)n;
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

int pj_projection_rebuild(redisContext *c, const char *bus, long long ttl_s, pj_rebuild_stats *stats, char *err,
                          size_t errlen)
{
    memset(stats, 0, sizeof *stats);
    if (!c || !bus)
        return PJ_EINVAL;
    char token[CM_UUID_LEN + 1];
    cm_uuid7(token);
    cm_script unlock = {.src = pj_lua_unlock};
    cm_cluster *cc = cm_cluster_borrow(c);
    int rc = lock_take(cc, &unlock, token, err, errlen);
    if (rc != PJ_OK) {
        cm_cluster_free(cc);
        return rc;
    }
    es_store *store = es_store_new(c, bus, err, errlen);
    rc = store ? delete_read_models(c, &stats->deleted, err, errlen) : PJ_EREDIS;
    for (int p = 0; rc == PJ_OK && p < cm_partitions(); p++)   /* each partition's bus in turn */
        rc = replay(cc, store, cm_key_bus(bus, p).s, ttl_s, &unlock, token, stats, err, errlen);
    es_store_free(store);
    char uerr[256];
    if (lock_keep(cc, &unlock, cm_partitions(), token, 0, uerr, sizeof uerr) < 0)
        cm_log(CM_WARN, "cannot release the rebuild locks (they expire in %d ms): %s", LOCK_TTL_MS, uerr);
    cm_cluster_free(cc);
    return rc;
}
