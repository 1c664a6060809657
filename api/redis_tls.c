/* redis_tls.c - one Redis client (a cm_cluster: a single server or a Redis
 * Cluster, REDIS_URL decides) per server thread, made on first use; and the
 * shared Redis state with its probe thread.
 *
 * libmicrohttpd runs each connection's callbacks on one pool thread, so a
 * thread-local client needs no lock. The object is freed at thread exit
 * (a pthread key destructor), so nothing leaks when the daemon stops. The
 * client routes each command by its key's slot and reconnects a node whose
 * connection broke by itself; calls do not retry (cm_cluster_set_retry 0):
 * a node that does not answer is a 503 at once, never a request held
 * through a failover.
 *
 * Failing fast: a pool thread blocked on a hung Redis blocks every
 * connection it serves, /health included. So the first call that finds
 * Redis unreachable (I/O error, timeout, refused, LOADING...) sets one
 * shared flag, and while it is set no pool thread calls Redis: requests that
 * need it answer 503 at once (server.c, API_F_REDIS) and api_redis_get
 * refuses. Only the probe thread talks to Redis then, a PING to every master
 * every probe_ms on its own client (on a cluster after re-reading the slot
 * map, so a promoted replica is found); the first round in which every
 * master answers clears the flag, so the API recovers by itself. On a
 * cluster "reachable" thus means every slot's master answers: while one
 * master is down (killed, not yet failed over) the API answers 503. The
 * probe also sets the flag when Redis hangs or goes away while no request
 * is running. At most the calls in flight when Redis hangs wait for their
 * timeout (REDIS_TIMEOUT_MS). */
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
extern const char api_lua_saga_stats[];

static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static __thread api_redis *t_redis;

static void disconnect(api_redis *t)
{
    cm_cluster_free(t->cc);
    t->cc = NULL;
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

cm_cluster *api_cluster_open(char *err, size_t errlen)
{
    cm_cluster *cc = cm_cluster_open(g_api.redis_url, (int)g_api.redis_timeout_ms, err, errlen);
    if (cc)
        cm_cluster_set_retry(cc, 0);
    return cc;
}

static int connect_now(api_redis *t)
{
    t->cc = api_cluster_open(t->err, sizeof t->err);
    return t->cc ? 0 : -1;
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

/* One probe round on cc: the slot map re-read (a cluster), then PING to
 * every master. Returns 0, or -1 with the reason in err and *f its class. */
static int probe_once(cm_cluster *cc, char *err, size_t errlen, cm_redis_fault *f)
{
    *f = CM_REDIS_UNREACHABLE;
    if (cm_cluster_is_cluster(cc) && cm_cluster_refresh(cc) != 0) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s", cm_cluster_errstr(cc));
        return -1;
    }
    int slots[64];
    int n = cm_cluster_master_slots(cc, slots, 64);
    if (n == 0) {
        snprintf(err, errlen, "no master is known");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        redisReply *r = cm_cluster_command(cc, slots[i], "PING");
        *f = r ? cm_redis_fault_of(NULL, r) : CM_REDIS_UNREACHABLE;
        if (*f != CM_REDIS_OK) {
            cm_redis_url u;
            int port = cm_cluster_slot_addr(cc, slots[i], &u) == 0 ? u.port : 0;
            snprintf(err, errlen, "PING (master of slot %d, port %d): %s", slots[i], port,
                     r ? r->str : cm_cluster_errstr(cc));
            if (r)
                freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

/* The probe: a round every probe_ms on its own client. */
static void *probe_run(void *arg)
{
    (void)arg;
    cm_cluster *cc = NULL;
    char err[256], masked[256], why[520];
    cm_redis_url_mask(g_api.redis_url, masked, sizeof masked);
    while (!atomic_load(&g_state.stop)) {
        int64_t t0 = cm_mono_ms();
        if (!cc)
            cc = api_cluster_open(err, sizeof err);
        cm_redis_fault f = CM_REDIS_UNREACHABLE;
        if (cc && probe_once(cc, err, sizeof err, &f) == 0) {
            mark_up();
        } else if (f == CM_REDIS_UNREACHABLE) {
            /* the reason names REDIS_URL (masked) unless it does already */
            if (strstr(err, masked))
                snprintf(why, sizeof why, "%s", err);
            else
                snprintf(why, sizeof why, "%s: %s", masked, err);
            api_redis_mark_down(why);
        }
        int64_t left = t0 + g_api.probe_ms - cm_mono_ms();
        while (left > 0 && !atomic_load(&g_state.stop)) {
            cm_sleep_ms(left < 20 ? (int)left : 20);
            left = t0 + g_api.probe_ms - cm_mono_ms();
        }
    }
    cm_cluster_free(cc);
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
        t->saga_stats.src = api_lua_saga_stats;
        t_redis = t;
        pthread_setspecific(g_key, t);
    }
    /* A client made before an outage may hold dead connections and an old
     * slot map (Redis restarted, a replica promoted): after each recovery,
     * every thread reconnects instead of spending a request on finding out. */
    long epoch = atomic_load(&g_state.epoch);
    if (t->cc && t->epoch != epoch)
        disconnect(t);
    if (!api_redis_reachable()) {
        api_redis_down_reason(t_why, sizeof t_why);
        *why = t_why;
        return NULL;
    }
    t->epoch = epoch;
    if (!t->cc && connect_now(t) != 0) {
        api_redis_mark_down(t->err);
        *why = t->err;
        return NULL;
    }
    return t;
}

/* Records the failure of the last call on t (r: its reply, NULL when none
 * came) in t->err and t->fault; an unreachable Redis sets the shared state. */
static void record_failure(api_redis *t, const redisReply *r)
{
    if (r) {
        snprintf(t->err, sizeof t->err, "redis: %.*s", (int)r->len, r->str);
        t->fault = cm_redis_fault_of_error(r->str, r->len);
    } else {
        snprintf(t->err, sizeof t->err, "redis: %s", cm_cluster_errstr(t->cc));
        /* refused before sending (keys in several slots, a bad call): a bug
         * or data a retry cannot fix; anything else: no answer */
        t->fault = cm_cluster_err(t->cc) == CM_CLUSTER_EUNAVAIL ? CM_REDIS_UNREACHABLE : CM_REDIS_PERMANENT;
    }
    if (t->fault == CM_REDIS_UNREACHABLE)
        api_redis_mark_down(t->err);
}

bool api_redis_ok(api_redis *t, redisReply *r)
{
    if (r && r->type != REDIS_REPLY_ERROR) {
        t->fault = CM_REDIS_OK;
        return true;
    }
    record_failure(t, r);
    if (r)
        freeReplyObject(r);
    return false;
}

bool api_pipe_run(api_redis *t, cm_pipe *p)
{
    if (cm_pipe_exec(p) == 0)
        return true;
    record_failure(t, NULL);
    return false;
}

void api_redis_failed_call(api_req *rq, api_redis *t, const char *detail)
{
    const char *e = detail && *detail ? detail : t->err;
    if (cm_cluster_err(t->cc) == CM_CLUSTER_EUNAVAIL)
        api_redis_fail(rq, CM_REDIS_UNREACHABLE, e);
    else
        api_redis_fail(rq, cm_redis_fault_of_error(e, strlen(e)), e);
}

int api_slot(const char *key)
{
    return cm_key_slot(key, strlen(key));
}
