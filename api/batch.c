/* batch.c - the intake's group commit: one thread pipelines the intake
 * scripts of every checkout waiting at that moment through one Redis client
 * (a cm_cluster: on a cluster, one pipeline per master).
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
 * batcher takes the whole stack at once, reads the prices of every product
 * the batch names (one pipelined HMGET per distinct product, each to its
 * product's slot), builds each job's event from them, sends every job's
 * script (each to its checkout's slot) and, with REDIS_WAIT_REPLICAS, a WAIT
 * behind them on each master written to, reads the replies, and resumes
 * each job's connection; the handler runs again and answers from
 * job->reply. Two round trips per batch, whatever its size. Batches grow with load by themselves: while one
 * is in flight the next accumulates. A job is pushed only after its
 * connection is suspended, so a resume always finds it suspended.
 *
 * Shutdown: api_batch_stop refuses new jobs (the handler then calls Redis
 * itself), waits until every accepted job is answered, then joins. The
 * in-flight count and the closing flag are sequentially consistent atomics,
 * so a handler either sees the flag or is counted before the stop waits. */
#include "api/api_int.h"
#include "api/lua/intake.h"
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
#define WAIT_NODES_MAX 64   /* masters one batch's WAITs go to */

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

/* Gives every job of jobs[0..n) without a reply or an error the error why. */
static void fail_rest(api_job **jobs, size_t n, const char *why)
{
    for (size_t i = 0; i < n; i++)
        if (!jobs[i]->reply && !jobs[i]->err[0])
            snprintf(jobs[i]->err, sizeof jobs[i]->err, "%.150s", why);
}

/* A product the batch names and what its price read said. */
typedef struct price_row {
    const char *id;              /* borrowed from a job's line */
    api_price_verdict verdict;
    long long price;
    char why[160];
} price_row;

static int cmp_row(const void *a, const void *b)
{
    return strcmp(((const price_row *)a)->id, ((const price_row *)b)->id);
}

/* Reads the price of every distinct product of jobs[0..n) into *rows (sorted
 * by id, *nrows of them; caller frees). Returns false when the pipeline got
 * no answer (cc's error says why). */
static bool read_prices(cm_cluster *cc, api_job **jobs, size_t n, price_row **rows, size_t *nrows)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += jobs[i]->nlines;
    price_row *r = cm_xcalloc(total ? total : 1, sizeof *r);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t l = 0; l < jobs[i]->nlines; l++)
            r[k++].id = jobs[i]->lines[l].product_id;
    qsort(r, k, sizeof *r, cmp_row);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(r[u - 1].id, r[i].id) != 0)
            r[u++] = r[i];
    cm_pipe *p = cm_pipe_new(cc);
    for (size_t i = 0; i < u; i++) {
        cm_key key = cm_key_product(r[i].id);
        cm_pipe_command(p, cm_key_slot(key.s, strlen(key.s)), "HMGET %s price_cents", key.s);
    }
    bool ok = cm_pipe_exec(p) == 0;
    for (size_t i = 0; i < u; i++) {
        redisReply *rep = cm_pipe_take(p, i);
        r[i].verdict = api_intake_price(rep, &r[i].price, r[i].why, sizeof r[i].why);
        if (rep)
            freeReplyObject(rep);
    }
    cm_pipe_free(p);
    *rows = r;
    *nrows = u;
    return ok;
}

/* Prices job j from rows and builds its call. Returns false when j cannot
 * be sent (its err set). */
static bool price_job(api_job *j, const price_row *rows, size_t nrows)
{
    for (size_t l = 0; l < j->nlines; l++) {
        price_row key = {.id = j->lines[l].product_id};
        const price_row *row = bsearch(&key, rows, nrows, sizeof *rows, cmp_row);
        if (!row || row->verdict == API_PRICE_UNAVAILABLE) {
            snprintf(j->err, sizeof j->err, "%s", row ? row->why : "price not read");
            return false;
        }
        if (row->verdict != API_PRICE_OK) {   /* refused: the script still answers a recorded key */
            j->refused_line = (int)l;
            j->refused_broken = row->verdict == API_PRICE_BROKEN;
            snprintf(j->refused_why, sizeof j->refused_why, "product %.64s: %.80s", row->id, row->why);
            break;
        }
        j->lines[l].price = row->price;
    }
    if (api_job_build(j) != 0) {
        snprintf(j->err, sizeof j->err, "cannot encode the event");
        j->permanent = true;
        return false;
    }
    return true;
}

/* A master the batch wrote to: where its WAIT goes, and that WAIT's reply. */
typedef struct wait_node {
    char host[256];
    int port;
    int slot;                    /* one slot it owns (the WAIT is routed by it) */
    size_t at;                   /* index of the WAIT in the pipeline */
    long long acked;
} wait_node;

/* The index in nodes[0..*nn) of slot's master, added when new; -1 when full
 * or unknown. */
static int wait_node_of(cm_cluster *cc, wait_node *nodes, size_t *nn, int slot)
{
    cm_redis_url u;
    if (cm_cluster_slot_addr(cc, slot, &u) != 0)
        return -1;
    for (size_t i = 0; i < *nn; i++)
        if (nodes[i].port == u.port && !strcmp(nodes[i].host, u.host))
            return (int)i;
    if (*nn == WAIT_NODES_MAX)
        return -1;
    wait_node *w = &nodes[(*nn)++];
    snprintf(w->host, sizeof w->host, "%s", u.host);
    w->port = u.port;
    w->slot = slot;
    w->acked = -1;
    return (int)(*nn - 1);
}

/* The replicas count of a WAIT reply (-1 for anything else, logged). */
static long long wait_acked(redisReply *r)
{
    long long n = -1;
    if (r && r->type == REDIS_REPLY_INTEGER)
        n = r->integer;
    else if (r)
        cm_log_limited(CM_WARN, "intake-wait", "WAIT: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    if (r)
        freeReplyObject(r);
    return n;
}

void api_intake_run(cm_cluster *cc, cm_script *sc, api_job **jobs, size_t n)
{
    price_row *rows = NULL;
    size_t nrows = 0;
    char why[200];
    if (!read_prices(cc, jobs, n, &rows, &nrows)) {
        snprintf(why, sizeof why, "redis: %s", cm_cluster_errstr(cc));
        api_redis_mark_down(why);
        fail_rest(jobs, n, why);
        free(rows);
        return;
    }
    cm_pipe *p = cm_pipe_new(cc);
    size_t *at = cm_xcalloc(n, sizeof *at);      /* pipeline index of job i's script */
    bool *sent = cm_xcalloc(n, sizeof *sent);
    int *node = cm_xcalloc(n, sizeof *node);     /* job i's master in nodes[] */
    wait_node nodes[WAIT_NODES_MAX];
    size_t nn = 0;
    for (size_t i = 0; i < n; i++) {
        api_job *j = jobs[i];
        if (!price_job(j, rows, nrows))
            continue;
        at[i] = cm_pipe_count(p);
        if (cm_pipe_script(p, sc, j->nkeys, &j->argv) != 0) {
            snprintf(j->err, sizeof j->err, "intake: %s", cm_cluster_errstr(cc));
            j->permanent = true;
            continue;
        }
        sent[i] = true;
        if (g_api.wait_replicas > 0)
            node[i] = wait_node_of(cc, nodes, &nn, cm_argv_slot(&j->argv, 0));
    }
    free(rows);
    /* Each WAIT goes behind its master's scripts on the same connection, so
     * it covers their writes, a replayed record included (the script
     * re-writes its expiry then: api_intake_call.confirm). On a single
     * server a PUBLISH (replicated) comes first as well, so the WAIT covers
     * every write the master made before it; a cluster broadcasts PUBLISH
     * instead of replicating it, so it is not sent there. */
    for (size_t k = 0; k < nn; k++) {
        if (!cm_cluster_is_cluster(cc))
            cm_pipe_command(p, nodes[k].slot, "PUBLISH %s %s", CM_WAIT_MARK_CHANNEL, "");
        nodes[k].at = cm_pipe_count(p);
        cm_pipe_command(p, nodes[k].slot, "WAIT %lld %lld", (long long)g_api.wait_replicas,
                        (long long)g_api.wait_timeout_ms);
    }
    bool ok = cm_pipe_count(p) == 0 || cm_pipe_exec(p) == 0;
    for (size_t i = 0; i < n; i++)
        if (sent[i])
            jobs[i]->reply = cm_pipe_take(p, at[i]);
    for (size_t k = 0; k < nn; k++) {
        if (!cm_cluster_is_cluster(cc)) {
            redisReply *r = cm_pipe_take(p, nodes[k].at - 1);   /* PUBLISH: a count of subscribers */
            if (r && r->type == REDIS_REPLY_ERROR)   /* e.g. an ACL without the channel */
                cm_log_limited(CM_ERROR, "intake-wait-mark", "PUBLISH %s: %s", CM_WAIT_MARK_CHANNEL, r->str);
            if (r)
                freeReplyObject(r);
        }
        nodes[k].acked = wait_acked(cm_pipe_take(p, nodes[k].at));
    }
    /* A script redirected during the pipeline (a slot migrating, a
     * failover) ran on another master than its WAIT went to: that WAIT
     * says nothing about it, so it counts as not confirmed (503). */
    for (size_t i = 0; i < n; i++)
        if (sent[i] && g_api.wait_replicas > 0)
            jobs[i]->replicas = node[i] >= 0 && cm_pipe_node(p, at[i]) == cm_pipe_node(p, nodes[node[i]].at)
                                    ? nodes[node[i]].acked
                                    : -1;
    if (!ok) {
        snprintf(why, sizeof why, "redis: %s", cm_cluster_errstr(cc));
        api_redis_mark_down(why);
        fail_rest(jobs, n, why);
    }
    cm_pipe_free(p);
    free(at);
    free(sent);
    free(node);
}

/* Runs one batch on *ccp (opened, or reopened after Redis recovered, here):
 * every job ends with a reply or an err. */
static void run_batch(cm_cluster **ccp, cm_script *sc, int64_t *retry_at, api_job **jobs, size_t n)
{
    static long cc_epoch;   /* the recovery count when *ccp was made (this thread only) */
    char err[256];
    if (*ccp && cc_epoch != api_redis_epoch()) {
        /* Redis recovered since this client was made: its connections may be
         * dead without knowing it, its slot map old */
        cm_cluster_free(*ccp);
        *ccp = NULL;
    }
    if (!*ccp && cm_mono_ms() >= *retry_at) {
        cc_epoch = api_redis_epoch();
        *ccp = api_cluster_open(err, sizeof err);
        if (!*ccp) {
            *retry_at = cm_mono_ms() + RECONNECT_MS;
            cm_log(CM_WARN, "intake batcher: %s", err);
        }
    }
    if (!*ccp) {
        fail_rest(jobs, n, "redis is not reachable");
        return;
    }
    api_intake_run(*ccp, sc, jobs, n);
}

static void *run(void *arg)
{
    (void)arg;
    cm_cluster *cc = NULL;
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
        run_batch(&cc, &sc, &retry_at, jobs, n);
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
    cm_cluster_free(cc);
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
