/* redis_tls.c - one Redis connection (and event store, and scripts) per
 * server thread, made on first use and remade after an I/O error; and the
 * shared Redis state with its probe thread.
 *
 * libmicrohttpd runs each connection's callbacks on one pool thread, so a
 * thread-local connection needs no lock. The object is freed at thread exit
 * (a pthread key destructor), so nothing leaks when the daemon stops.
 *
 * Failing fast: a pool thread blocked on a hung Redis blocks every
 * connection it serves, /health included. So the first call that finds
 * Redis unreachable (I/O error, timeout, refused, LOADING...) sets one
 * shared flag, and while it is set no pool thread calls Redis: requests that
 * need it answer 503 at once (server.c, API_F_REDIS) and api_redis_get
 * refuses. Only the probe thread talks to Redis then, a PING every
 * probe_ms on its own connection; its first PONG clears the flag, so the API
 * recovers by itself. The probe also sets the flag when Redis hangs or goes
 * away while no request is running. At most the calls in flight when Redis
 * hangs wait for their timeout (REDIS_TIMEOUT_MS). */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- the shared state ---- */

static struct {
    atomic_bool down;
    atomic_long epoch;        /* +1 each time Redis comes back */
    pthread_mutex_t lock;     /* guards why and since */
    char why[256];
    int64_t since_ms;
    atomic_bool stop;
    pthread_t thread;
    bool started;
    cm_series *up;            /* redis_up gauge: 1 reachable, 0 not */
} g_state = {.lock = PTHREAD_MUTEX_INITIALIZER};

static __thread char t_why[256];   /* api_redis_get's answer while down */

long api_redis_epoch(void)
{
    return atomic_load(&g_state.epoch);
}

bool api_redis_reachable(void)
{
    return !atomic_load_explicit(&g_state.down, memory_order_acquire);
}

void api_redis_mark_down(const char *why)
{
    pthread_mutex_lock(&g_state.lock);
    bool was_down = atomic_load(&g_state.down);
    snprintf(g_state.why, sizeof g_state.why, "%s", why && *why ? why : "no answer");
    if (!was_down)
        g_state.since_ms = cm_mono_ms();
    atomic_store_explicit(&g_state.down, true, memory_order_release);
    pthread_mutex_unlock(&g_state.lock);
    if (!was_down) {
        cm_series_set(g_state.up, 0);
        /* limited: a Redis that answers PING but not commands flaps */
        cm_log_limited(CM_WARN, "redis-down", "redis unreachable (%s): answering 503 until it answers again",
                       why ? why : "?");
    }
}

static void mark_up(void)
{
    if (!atomic_load(&g_state.down))
        return;
    pthread_mutex_lock(&g_state.lock);
    int64_t ms = cm_mono_ms() - g_state.since_ms;
    g_state.why[0] = '\0';
    atomic_fetch_add(&g_state.epoch, 1);
    atomic_store_explicit(&g_state.down, false, memory_order_release);
    pthread_mutex_unlock(&g_state.lock);
    cm_series_set(g_state.up, 1);
    cm_log_limited(CM_INFO, "redis-up", "redis reachable again after %lld ms", (long long)ms);
}

void api_redis_down_reason(char *out, size_t outlen)
{
    pthread_mutex_lock(&g_state.lock);
    snprintf(out, outlen, "%s", atomic_load(&g_state.down) ? g_state.why : "");
    pthread_mutex_unlock(&g_state.lock);
}

/* The probe: PING on its own connection every probe_ms. */
static void *probe_run(void *arg)
{
    (void)arg;
    redisContext *c = NULL;
    char err[256];
    while (!atomic_load(&g_state.stop)) {
        int64_t t0 = cm_mono_ms();
        if (!c)
            c = cm_redis_connect(g_api.redis_url, (int)g_api.redis_timeout_ms, err, sizeof err);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            cm_redis_fault f = cm_redis_fault_of(c, r);
            if (f == CM_REDIS_OK) {
                mark_up();
            } else {
                snprintf(err, sizeof err, "PING: %s", r && r->type == REDIS_REPLY_ERROR ? r->str
                                                      : c->errstr[0] ? c->errstr : "no answer");
                if (f == CM_REDIS_UNREACHABLE)
                    api_redis_mark_down(err);
            }
            if (r)
                freeReplyObject(r);
            if (c->err) {
                redisFree(c);
                c = NULL;
            }
        } else {
            api_redis_mark_down(err);
        }
        int64_t left = t0 + g_api.probe_ms - cm_mono_ms();
        while (left > 0 && !atomic_load(&g_state.stop)) {
            cm_sleep_ms(left < 20 ? (int)left : 20);
            left = t0 + g_api.probe_ms - cm_mono_ms();
        }
    }
    if (c)
        redisFree(c);
    return NULL;
}

int api_redis_probe_start(char *err, size_t errlen)
{
    g_state.up = cm_gauge("redis_up", "1 while the API reaches Redis, 0 while it answers 503 at once", NULL);
    cm_series_set(g_state.up, 1);
    atomic_store(&g_state.stop, false);
    if (pthread_create(&g_state.thread, NULL, probe_run, NULL) != 0) {
        snprintf(err, errlen, "cannot start the Redis probe thread");
        return -1;
    }
    g_state.started = true;
    return 0;
}

void api_redis_probe_stop(void)
{
    if (!g_state.started)
        return;
    atomic_store(&g_state.stop, true);
    pthread_join(g_state.thread, NULL);
    g_state.started = false;
}

/* ---- per-thread connections ---- */

api_redis *api_redis_for(api_req *rq)
{
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);
    if (!t)
        api_unavailable(rq, why);
    return t;
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
    /* A connection made before an outage may be dead without knowing it
     * (Redis restarted): after each recovery, every thread reconnects
     * instead of spending a request on finding out. */
    long epoch = atomic_load(&g_state.epoch);
    if (t->c && (t->c->err || t->epoch != epoch))
        disconnect(t);
    if (!api_redis_reachable()) {
        api_redis_down_reason(t_why, sizeof t_why);
        *why = t_why;
        return NULL;
    }
    t->epoch = epoch;
    if (!t->c && connect_now(t) != 0) {
        api_redis_mark_down(t->err);
        *why = t->err;
        return NULL;
    }
    return t;
}

void api_redis_drop(api_redis *t)
{
    disconnect(t);
}

bool api_redis_ok(api_redis *t, redisReply *r)
{
    cm_redis_fault f = cm_redis_fault_of(t->c, r);
    t->fault = f;
    if (f == CM_REDIS_OK)
        return true;
    if (!r || t->c->err) {
        snprintf(t->err, sizeof t->err, "redis: %s", t->c->err ? t->c->errstr : "no reply");
        disconnect(t);
    } else {
        snprintf(t->err, sizeof t->err, "redis: %.*s", (int)r->len, r->str);
    }
    if (f == CM_REDIS_UNREACHABLE)
        api_redis_mark_down(t->err);
    if (r)
        freeReplyObject(r);
    return false;
}
