/* waiters.c - long-poll support: a table of suspended GET /api/checkouts/{id}
 * requests, woken by the projection's change notifications or their deadline.
 *
 * One thread owns a Redis connection SUBSCRIBEd to CM_RM_CHANGED_CHANNEL (the
 * cqrs-projection PUBLISHes a checkout id there after each status change) and
 * sleeps in poll() until a message, the earliest deadline, or a wake-up on its
 * eventfd. A message resumes every waiter of that checkout; the handler then
 * re-reads the read model and answers, or waits again.
 *
 * No lost wake-up: a handler registers (arms) its waiter *before* reading the
 * read model, and suspends only if nothing fired in between; a change that
 * lands after the read is published after it too, so it finds the waiter.
 * While the subscription is down (Redis restarting) changes may be missed, so
 * every waiter is woken after each (re)subscribe to re-read.
 *
 * On a Redis Cluster a PUBLISH is broadcast to every node, so the thread
 * subscribes on any one master (found through its own cm_cluster's slot
 * map); when that connection breaks it re-reads the map and subscribes on
 * the next master in turn, so a failed master is left for a live one.
 *
 * Waiter states: IDLE (not registered), ARMED (registered, connection not yet
 * suspended), SUSPENDED, FIRED (removed from the table; the handler re-reads).
 * Only a SUSPENDED connection is ever resumed. Lock order: g.lock, then
 * libmicrohttpd's internal locks (MHD_suspend/resume_connection are called
 * under g.lock; libmicrohttpd never calls us back holding its own). */
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

enum { W_IDLE, W_ARMED, W_SUSPENDED, W_FIRED };

#define NBUCKETS 4096
#define RESUBSCRIBE_MS 250

static struct {
    pthread_mutex_t lock;
    api_waiter *buckets[NBUCKETS];  /* by checkout id */
    api_waiter **heap;              /* min-heap by deadline */
    size_t n, cap;
    bool closing;                   /* no new waiters */
    atomic_bool stop;
    int evfd;
    cm_series *gauge;               /* http_long_polls_waiting */
    cm_series *refused;             /* http_long_polls_refused_total */
    pthread_t thread;
    bool started;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .evfd = -1};

static size_t hash_id(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h & (NBUCKETS - 1);
}

static void wake_thread(void)
{
    uint64_t one = 1;
    ssize_t w = write(g.evfd, &one, sizeof one);
    (void)w;
}

/* ---- deadline heap (under g.lock) ---- */

static void heap_swap(size_t a, size_t b)
{
    api_waiter *t = g.heap[a];
    g.heap[a] = g.heap[b];
    g.heap[b] = t;
    g.heap[a]->heap_idx = a;
    g.heap[b]->heap_idx = b;
}

static void heap_up(size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (g.heap[p]->deadline_ms <= g.heap[i]->deadline_ms)
            break;
        heap_swap(i, p);
        i = p;
    }
}

static void heap_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < g.n && g.heap[l]->deadline_ms < g.heap[m]->deadline_ms)
            m = l;
        if (r < g.n && g.heap[r]->deadline_ms < g.heap[m]->deadline_ms)
            m = r;
        if (m == i)
            return;
        heap_swap(i, m);
        i = m;
    }
}

static void heap_push(api_waiter *w)
{
    if (g.n == g.cap) {
        g.cap = g.cap ? g.cap * 2 : 256;
        g.heap = cm_xrealloc(g.heap, g.cap * sizeof *g.heap);
    }
    w->heap_idx = g.n;
    g.heap[g.n++] = w;
    heap_up(w->heap_idx);
    cm_series_set(g.gauge, (double)g.n);
}

static void heap_remove(api_waiter *w)
{
    size_t i = w->heap_idx;
    g.n--;
    if (i != g.n) {
        g.heap[i] = g.heap[g.n];
        g.heap[i]->heap_idx = i;
        heap_down(i);
        heap_up(i);
    }
    cm_series_set(g.gauge, (double)g.n);
}

/* ---- table (under g.lock) ---- */

static void unlink_waiter(api_waiter *w)
{
    api_waiter **pp = &g.buckets[hash_id(w->id)];
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    if (*pp)
        *pp = w->next;
    w->next = NULL;
    heap_remove(w);
}

/* Removes w and resumes its connection if it is suspended. */
static void fire(api_waiter *w)
{
    unlink_waiter(w);
    if (w->state == W_SUSPENDED)
        MHD_resume_connection(w->conn);
    w->state = W_FIRED;
}

static void fire_all(void)
{
    while (g.n)
        fire(g.heap[0]);
}

static void fire_id(const char *id, size_t len)
{
    if (len > API_ID_MAX)
        return;
    char key[API_ID_MAX + 1];
    memcpy(key, id, len);
    key[len] = '\0';
    pthread_mutex_lock(&g.lock);
    api_waiter *w = g.buckets[hash_id(key)];
    while (w) {
        api_waiter *next = w->next;
        if (!strcmp(w->id, key))
            fire(w);
        w = next;
    }
    pthread_mutex_unlock(&g.lock);
}

/* ---- API for handlers ---- */

bool api_wait_arm(api_waiter *w, struct MHD_Connection *conn, const char *id, int64_t deadline_ms)
{
    pthread_mutex_lock(&g.lock);
    if (g.closing) {
        pthread_mutex_unlock(&g.lock);
        return false;
    }
    /* Long-polls are counted apart from connections: each pins a connection
     * and a table entry for up to API_WAIT_MAX_MS, so past the cap a request
     * is answered at once with the state it finds (the client polls again). */
    if ((int64_t)g.n >= g_api.long_polls_max) {
        pthread_mutex_unlock(&g.lock);
        cm_series_inc(g.refused);
        return false;
    }
    snprintf(w->id, sizeof w->id, "%s", id);
    w->conn = conn;
    w->deadline_ms = deadline_ms;
    w->state = W_ARMED;
    size_t b = hash_id(w->id);
    w->next = g.buckets[b];
    g.buckets[b] = w;
    heap_push(w);
    bool earliest = w->heap_idx == 0;
    pthread_mutex_unlock(&g.lock);
    if (earliest)
        wake_thread();   /* the timer must now wake sooner */
    return true;
}

bool api_wait_suspend(api_waiter *w, bool held)
{
    pthread_mutex_lock(&g.lock);
    bool suspended = false;
    if (w->state == W_ARMED) {
        if (!held)
            MHD_suspend_connection(w->conn);
        w->state = W_SUSPENDED;
        suspended = true;
    } else {
        w->state = W_IDLE;
    }
    pthread_mutex_unlock(&g.lock);
    return suspended;
}

void api_wait_disarm(api_waiter *w)
{
    if (!w->conn)
        return;   /* never armed: no lock needed */
    pthread_mutex_lock(&g.lock);
    if (w->state == W_ARMED || w->state == W_SUSPENDED)
        unlink_waiter(w);
    w->state = W_IDLE;
    w->conn = NULL;
    pthread_mutex_unlock(&g.lock);
}

/* ---- the subscriber thread ---- */

/* Connects to a master (the turn-th, modulo the masters known) and
 * SUBSCRIBEs. NULL on failure (logged); *turn then moves to the next. */
static redisContext *subscribe(cm_cluster **ccp, unsigned *turn)
{
    char err[256];
    if (!*ccp && !(*ccp = api_cluster_open(err, sizeof err))) {
        cm_log(CM_DEBUG, "long-poll subscriber: %s", err);
        return NULL;
    }
    cm_cluster *cc = *ccp;
    int slots[64];
    int n = 0;
    if (cm_cluster_is_cluster(cc) && cm_cluster_refresh(cc) != 0) {
        cm_log(CM_DEBUG, "long-poll subscriber: %s", cm_cluster_errstr(cc));
    } else {
        n = cm_cluster_master_slots(cc, slots, 64);
    }
    cm_redis_url u;
    if (n == 0 || cm_cluster_slot_addr(cc, slots[*turn % (unsigned)n], &u) != 0) {
        (*turn)++;
        return NULL;
    }
    redisContext *c = cm_redis_connect_url(&u, (int)g_api.redis_timeout_ms, err, sizeof err);
    if (!c) {
        cm_log(CM_DEBUG, "long-poll subscriber: %s", err);
        (*turn)++;
        return NULL;
    }
    redisReply *r = redisCommand(c, "SUBSCRIBE %s", CM_RM_CHANGED_CHANNEL);
    if (cm_reply_failed(c, r, err, sizeof err)) {
        cm_log(CM_WARN, "long-poll subscriber: %s", err);
        redisFree(c);
        (*turn)++;
        return NULL;
    }
    freeReplyObject(r);
    return c;
}

/* Reads what arrived and wakes the waiters named. Returns -1 when the
 * connection is broken. */
static int read_messages(redisContext *c)
{
    if (redisBufferRead(c) != REDIS_OK)
        return -1;
    for (;;) {
        redisReply *r = NULL;
        if (redisGetReplyFromReader(c, (void **)&r) != REDIS_OK)
            return -1;
        if (!r)
            return 0;
        const redisReply *kind = cm_reply_elem(r, 0), *payload = cm_reply_elem(r, 2);
        if (cm_reply_is_str(kind) && !strcmp(kind->str, "message") && cm_reply_is_str(payload))
            fire_id(payload->str, payload->len);
        freeReplyObject(r);
    }
}

static void *run(void *arg)
{
    (void)arg;
    redisContext *c = NULL;
    cm_cluster *cc = NULL;   /* only to find a master */
    unsigned turn = 0;
    int64_t next_connect = 0;
    while (!atomic_load(&g.stop)) {
        int64_t now = cm_mono_ms();
        if (!c && now >= next_connect) {
            c = subscribe(&cc, &turn);
            next_connect = now + RESUBSCRIBE_MS;
            if (c) {
                /* changes published while we were not subscribed are lost */
                pthread_mutex_lock(&g.lock);
                fire_all();
                pthread_mutex_unlock(&g.lock);
            }
        }
        int64_t timeout = 1000;
        if (!c && next_connect - now < timeout)
            timeout = next_connect - now;
        pthread_mutex_lock(&g.lock);
        if (g.n && g.heap[0]->deadline_ms - now < timeout)
            timeout = g.heap[0]->deadline_ms - now;
        pthread_mutex_unlock(&g.lock);
        if (timeout < 0)
            timeout = 0;
        struct pollfd p[2] = {{.fd = g.evfd, .events = POLLIN}, {.fd = c ? c->fd : -1, .events = POLLIN}};
        if (poll(p, 2, (int)timeout) < 0 && errno != EINTR)
            cm_log(CM_WARN, "long-poll subscriber: poll: %s", strerror(errno));
        if (p[0].revents) {
            uint64_t v;
            ssize_t rd = read(g.evfd, &v, sizeof v);
            (void)rd;
        }
        if (c && p[1].revents && read_messages(c) != 0) {
            cm_log(CM_WARN, "long-poll subscriber: connection lost (%s); resubscribing", c->errstr);
            redisFree(c);
            c = NULL;
            turn++;   /* that master may be gone: the next one first */
        }
        now = cm_mono_ms();
        pthread_mutex_lock(&g.lock);
        while (g.n && g.heap[0]->deadline_ms <= now)
            fire(g.heap[0]);
        pthread_mutex_unlock(&g.lock);
    }
    if (c)
        redisFree(c);
    cm_cluster_free(cc);
    return NULL;
}

int api_waiters_start(char *err, size_t errlen)
{
    g.gauge = cm_gauge("http_long_polls_waiting", "long-poll requests waiting for a checkout to settle", NULL);
    g.refused = cm_counter("http_long_polls_refused_total",
                           "long-polls answered at once because API_LONG_POLLS_MAX were waiting", NULL);
    g.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g.evfd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    if (pthread_create(&g.thread, NULL, run, NULL) != 0) {
        snprintf(err, errlen, "cannot start the long-poll thread");
        close(g.evfd);
        g.evfd = -1;
        return -1;
    }
    g.started = true;
    return 0;
}

void api_waiters_stop(void)
{
    if (!g.started)
        return;
    pthread_mutex_lock(&g.lock);
    g.closing = true;
    fire_all();
    pthread_mutex_unlock(&g.lock);
    atomic_store(&g.stop, true);
    wake_thread();
    pthread_join(g.thread, NULL);
    close(g.evfd);
    g.evfd = -1;
    free(g.heap);
    g.heap = NULL;
    g.n = g.cap = 0;
    g.started = false;
}
