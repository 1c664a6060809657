/* batch.c - the intake's group commit: one thread pipelines the intake
 * scripts of every checkout waiting at that moment on one Redis connection.
 *
 * Why: driven one command at a time, Redis spends more on each command's
 * I/O (a read, a reply write, an AOF write, an event-loop turn: syscalls,
 * expensive on this VM) than on the script itself; pipelined, that cost is
 * shared by the batch (measured by chorus-bench-intake: about 90 us of Redis
 * CPU per checkout one at a time, about 40 us pipelined). The HTTP threads
 * also stop blocking on Redis round trips.
 *
 * How: the handler builds the script's arguments in its own thread, suspends
 * its connection and pushes the job on a lock-free stack (no lock on the hot
 * path); the first push onto an empty stack wakes the batcher (eventfd). The
 * batcher takes the whole stack at once, sends every job, reads the replies
 * in order, and resumes each job's connection; the handler runs again and
 * answers from job->reply. Batches grow with load by themselves: while one
 * is in flight the next accumulates. A job is pushed only after its
 * connection is suspended, so a resume always finds it suspended.
 *
 * Shutdown: api_batch_stop refuses new jobs (the handler then calls Redis
 * itself), waits until every accepted job is answered, then joins. The
 * in-flight count and the closing flag are sequentially consistent atomics,
 * so a handler either sees the flag or is counted before the stop waits. */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

extern const char api_lua_intake[];

#define RECONNECT_MS 100

static struct {
    _Atomic(api_job *) head;     /* pushed jobs, newest first */
    atomic_long inflight;        /* accepted and not yet resumed */
    atomic_bool closing;
    atomic_bool stop;
    int evfd;
    pthread_t thread;
    bool started;
    cm_series *batches, *jobs;      /* intake_batches_total, intake_batched_total */
} g = {.evfd = -1};

void api_job_free(api_job *j)
{
    if (!j)
        return;
    cm_argv_free(&j->argv);
    if (j->reply)
        freeReplyObject(j->reply);
    cm_buf_free(&j->body);
    free(j);
}

bool api_batch_submit(api_job *j)
{
    if (!g.started)
        return false;
    atomic_fetch_add(&g.inflight, 1);
    if (atomic_load(&g.closing)) {
        atomic_fetch_sub(&g.inflight, 1);
        return false;
    }
    MHD_suspend_connection(j->conn);
    api_job *old = atomic_load(&g.head);
    do
        j->next = old;
    while (!atomic_compare_exchange_weak(&g.head, &old, j));
    if (!old) {
        uint64_t one = 1;
        ssize_t w = write(g.evfd, &one, sizeof one);
        (void)w;
    }
    return true;
}

static void fail_all(api_job **jobs, size_t n, size_t from, const char *why)
{
    for (size_t i = from; i < n; i++)
        if (!jobs[i]->reply)
            snprintf(jobs[i]->err, sizeof jobs[i]->err, "%s", why);
}

void api_wait_append(redisContext *c)
{
    redisAppendCommand(c, "PUBLISH %s %s", CM_WAIT_MARK_CHANNEL, "");
    redisAppendCommand(c, "WAIT %lld %lld", (long long)g_api.wait_replicas, (long long)g_api.wait_timeout_ms);
}

long long api_wait_read(redisContext *c)
{
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)   /* PUBLISH: a count of subscribers */
        return -1;
    if (r->type == REDIS_REPLY_ERROR)   /* e.g. an ACL without the channel: the WAIT may cover less */
        cm_log_limited(CM_ERROR, "intake-wait-mark", "PUBLISH %s: %s", CM_WAIT_MARK_CHANNEL, r->str);
    freeReplyObject(r);
    r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)
        return -1;
    long long n = -1;
    if (r->type == REDIS_REPLY_INTEGER)
        n = r->integer;
    else
        cm_log_limited(CM_WARN, "intake-wait", "WAIT: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return n;
}

/* Sends jobs[from..n) marked in want (or all when want is NULL) and reads
 * their replies; with REDIS_WAIT_REPLICAS a WAIT follows the scripts in the
 * same pipeline and its answer is recorded in each job sent (the WAIT
 * covers every write the master made before it). Returns -1 when the
 * connection broke. */
static int roundtrip(redisContext *c, cm_script *sc, api_job **jobs, size_t n, const bool *want)
{
    for (size_t i = 0; i < n; i++)
        if (!want || want[i])
            cm_script_append(c, sc, jobs[i]->nkeys, &jobs[i]->argv);
    if (g_api.wait_replicas > 0)
        api_wait_append(c);
    for (size_t i = 0; i < n; i++) {
        if (want && !want[i])
            continue;
        redisReply *r = cm_script_reply(c, sc);
        if (!r) {
            char why[160];
            snprintf(why, sizeof why, "redis: %s", c->errstr[0] ? c->errstr : "no reply");
            fail_all(jobs, n, i, why);
            return -1;
        }
        jobs[i]->reply = r;
    }
    if (g_api.wait_replicas > 0) {
        long long acked = api_wait_read(c);
        for (size_t i = 0; i < n; i++)
            if (!want || want[i])
                jobs[i]->replicas = acked;
        if (acked < 0 && c->err)
            return -1;
    }
    return 0;
}

/* Runs one batch: every job ends with a reply or an err. */
static void run_batch(redisContext **cp, cm_script *sc, int64_t *retry_at, api_job **jobs, size_t n)
{
    static long conn_epoch;   /* the recovery count when *cp was made (this thread only) */
    char err[256];
    if (*cp && conn_epoch != api_redis_epoch()) {
        /* Redis recovered since this connection was made: it may be dead
         * without knowing it, and the batch would get a 503 for nothing */
        redisFree(*cp);
        *cp = NULL;
    }
    if (!*cp && cm_mono_ms() >= *retry_at) {
        conn_epoch = api_redis_epoch();
        *cp = cm_redis_connect(g_api.redis_url, (int)g_api.redis_timeout_ms, err, sizeof err);
        if (*cp && cm_script_load(*cp, sc, err, sizeof err) != 0) {
            redisFree(*cp);
            *cp = NULL;
        }
        if (!*cp) {
            *retry_at = cm_mono_ms() + RECONNECT_MS;
            cm_log(CM_WARN, "intake batcher: %s", err);
        }
    }
    if (!*cp) {
        fail_all(jobs, n, 0, "redis is not reachable");
        return;
    }
    if (roundtrip(*cp, sc, jobs, n, NULL) == 0) {
        /* Redis lost its script cache (restart, SCRIPT FLUSH): the replies
         * say NOSCRIPT and the script is now sent by source; run those again */
        bool *again = NULL;
        for (size_t i = 0; i < n; i++) {
            redisReply *r = jobs[i]->reply;
            if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
                if (!again)
                    again = cm_xcalloc(n, sizeof *again);
                again[i] = true;
                freeReplyObject(r);
                jobs[i]->reply = NULL;
            }
        }
        if (again && roundtrip(*cp, sc, jobs, n, again) != 0) {
            redisFree(*cp);
            *cp = NULL;
        }
        free(again);
        return;
    }
    redisFree(*cp);
    *cp = NULL;
}

static void *run(void *arg)
{
    (void)arg;
    redisContext *c = NULL;
    cm_script sc = {.src = api_lua_intake};
    int64_t retry_at = 0;
    size_t cap = 256;
    api_job **jobs = cm_xmalloc(cap * sizeof *jobs);
    for (;;) {
        api_job *list = atomic_exchange(&g.head, NULL);
        if (!list) {
            if (atomic_load(&g.stop) && atomic_load(&g.inflight) == 0)
                break;
            struct pollfd p = {.fd = g.evfd, .events = POLLIN};
            if (poll(&p, 1, 100) > 0) {
                uint64_t v;
                ssize_t rd = read(g.evfd, &v, sizeof v);
                (void)rd;
            }
            continue;
        }
        size_t n = 0;
        for (api_job *j = list; j; j = j->next) {
            if (n == cap) {
                cap *= 2;
                jobs = cm_xrealloc(jobs, cap * sizeof *jobs);
            }
            jobs[n++] = j;
        }
        for (size_t i = 0; i < n / 2; i++) {   /* oldest first */
            api_job *t = jobs[i];
            jobs[i] = jobs[n - 1 - i];
            jobs[n - 1 - i] = t;
        }
        run_batch(&c, &sc, &retry_at, jobs, n);
        cm_series_inc(g.batches);
        cm_series_add(g.jobs, n);
        for (size_t i = 0; i < n; i++) {
            /* after the resume the job belongs to its request again */
            struct MHD_Connection *conn = jobs[i]->conn;
            jobs[i]->done = true;
            MHD_resume_connection(conn);
            atomic_fetch_sub(&g.inflight, 1);
        }
    }
    if (c)
        redisFree(c);
    free(jobs);
    return NULL;
}

int api_batch_start(char *err, size_t errlen)
{
    g.batches = cm_counter("intake_batches_total", "pipelined batches of intake scripts sent to Redis", NULL);
    g.jobs = cm_counter("intake_batched_total", "intake scripts sent in those batches", NULL);
    g.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g.evfd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    if (pthread_create(&g.thread, NULL, run, NULL) != 0) {
        snprintf(err, errlen, "cannot start the intake batcher thread");
        close(g.evfd);
        g.evfd = -1;
        return -1;
    }
    g.started = true;
    return 0;
}

void api_batch_stop(void)
{
    if (!g.started)
        return;
    atomic_store(&g.closing, true);
    atomic_store(&g.stop, true);   /* the thread leaves once nothing is in flight */
    uint64_t one = 1;
    ssize_t w = write(g.evfd, &one, sizeof one);
    (void)w;
    pthread_join(g.thread, NULL);
    close(g.evfd);
    g.evfd = -1;
    g.started = false;
}
