/* redis_tls.c - one Redis connection (and event store, and scripts) per
 * server thread, made on first use and remade after an I/O error.
 *
 * libmicrohttpd runs each connection's callbacks on one pool thread, so a
 * thread-local connection needs no lock. A failed connect is not retried for
 * RETRY_MS: while Redis is down, requests get their 503 at once instead of
 * each waiting for a connect timeout. The object is freed at thread exit
 * (a pthread key destructor), so nothing leaks when the daemon stops. */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/xmalloc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define RETRY_MS 100

extern const char api_lua_intake[];
extern const char api_lua_product_put[];

static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static __thread api_redis *t_redis;

static void disconnect(api_redis *t)
{
    es_store_free(t->st);
    t->st = NULL;
    if (t->c)
        redisFree(t->c);
    t->c = NULL;
}

static void destroy(void *p)
{
    api_redis *t = p;
    disconnect(t);
    free(t);
}

static void make_key(void)
{
    if (pthread_key_create(&g_key, destroy) != 0)
        abort();
}

static int connect_now(api_redis *t)
{
    t->c = cm_redis_connect(g_api.redis_url, (int)g_api.redis_timeout_ms, t->err, sizeof t->err);
    if (!t->c)
        return -1;
    t->st = es_store_new(t->c, g_api.bus, t->err, sizeof t->err);
    if (!t->st || cm_script_load(t->c, &t->intake, t->err, sizeof t->err) != 0 ||
        cm_script_load(t->c, &t->product_put, t->err, sizeof t->err) != 0) {
        disconnect(t);
        return -1;
    }
    return 0;
}

api_redis *api_redis_get(const char **why)
{
    api_redis *t = t_redis;
    if (!t) {
        pthread_once(&g_once, make_key);
        t = cm_xcalloc(1, sizeof *t);
        t->intake.src = api_lua_intake;
        t->product_put.src = api_lua_product_put;
        t_redis = t;
        pthread_setspecific(g_key, t);
    }
    if (t->c && t->c->err)
        disconnect(t);
    if (!t->c) {
        int64_t now = cm_mono_ms();
        if (now < t->retry_at_ms || connect_now(t) != 0) {
            if (now >= t->retry_at_ms) {
                t->retry_at_ms = now + RETRY_MS;
                cm_log(CM_WARN, "redis: %s", t->err);
            }
            *why = t->err;
            return NULL;
        }
        t->retry_at_ms = 0;
    }
    return t;
}

void api_redis_drop(api_redis *t)
{
    disconnect(t);
}

bool api_redis_ok(api_redis *t, redisReply *r)
{
    if (!r || t->c->err) {
        snprintf(t->err, sizeof t->err, "redis: %s", t->c->err ? t->c->errstr : "no reply");
        if (r)
            freeReplyObject(r);
        disconnect(t);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(t->err, sizeof t->err, "redis: %.*s", (int)r->len, r->str);
        freeReplyObject(r);
        return false;
    }
    return true;
}
