/* server.c - libmicrohttpd glue: request objects, body intake with its cap,
 * header checks, dispatch, responses, the request log and HTTP metrics.
 *
 * Every answer, errors included, is JSON (/metrics aside). Checks that only
 * need headers (route, method, Content-Type, admin token, Idempotency-Key)
 * run when the headers arrive; their answer is sent once the body is in, so
 * the connection stays usable (keep-alive). A body announced larger than
 * API_BODY_MAX gets 413 at once, without reading it (libmicrohttpd then
 * closes the connection); a chunked body that grows past the cap is drained
 * and answered 413, or the connection is closed past API_BODY_DISCARD_MAX.
 *
 * Hostile or slow clients: libmicrohttpd caps connections in total
 * (API_MAX_CONNS) and per client address (API_MAX_CONNS_PER_IP; over it a
 * new connection is closed at once) and closes connections idle for
 * API_CONN_TIMEOUT_S. Idleness is not a deadline (a client sending a byte a
 * second is never idle), so each connection also has a deadline of its own:
 * its request's headers and body must be in within API_REQUEST_TIMEOUT_S of
 * the connection opening or of its previous answer. A tracker per
 * connection (NOTIFY_CONNECTION) holds that deadline; the handler lifts it
 * once the request is in (a long-poll or an intake may then take its time)
 * and the completion callback sets it again for the next request on the
 * connection. The deadline thread shutdown(2)s the socket of every tracker
 * past its deadline; libmicrohttpd then sees the end of the stream and
 * closes the connection itself. Trackers are removed (under the lock) in the
 * CLOSED notification, which libmicrohttpd sends before it closes the
 * descriptor, so the thread never touches a descriptor that was reused.
 *
 * A hung Redis never holds an HTTP thread: the handlers of API_F_ASYNC
 * routes run on a small pool of Redis threads (as many as API_THREADS, each
 * with its own Redis client, redis_tls.c). The HTTP thread suspends the
 * connection and queues the request; a Redis thread runs the handler and
 * resumes the connection, and libmicrohttpd calls us again on the HTTP
 * thread, which queues the answer. So /health, /metrics and every 503 of a
 * known-down Redis answer at once even while Redis threads wait on a hung
 * Redis. A long-poll handler that decides to wait hands the (still
 * suspended) connection to waiters.c, which resumes it later; the request
 * then goes through the queue again. After a handler returns, the Redis
 * thread never touches the request: it may be answered and freed at once. */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"

#include <ctype.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sodium.h>

/* ---- metrics: series pointers cached so the hot path never takes the
 * registry's lock after a series' first use ---- */

static const char *const k_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER"};
#define NMETHODS ((int)(sizeof k_methods / sizeof k_methods[0]))
static const int k_statuses[] = {200, 202, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503, 0};
#define NSTATUSES ((int)(sizeof k_statuses / sizeof k_statuses[0]))
#define MAX_LABELS API_MAX_ROUTE_LABELS

static _Atomic(cm_series *) g_req_series[MAX_LABELS][NMETHODS][NSTATUSES];
static cm_series *g_dur_series[MAX_LABELS];

static int method_index(const char *m)
{
    for (int i = 0; i < NMETHODS - 1; i++)
        if (!strcmp(m, k_methods[i]))
            return i;
    return NMETHODS - 1;
}

static int status_index(int status)
{
    for (int i = 0; i < NSTATUSES - 1; i++)
        if (k_statuses[i] == status)
            return i;
    return NSTATUSES - 1;   /* "other" */
}

static void count_request(const api_req *rq, int status, double seconds)
{
    int si = status_index(status);
    _Atomic(cm_series *) *slot = &g_req_series[rq->label][rq->method_idx][si];
    cm_series *s = atomic_load_explicit(slot, memory_order_acquire);
    if (!s) {
        char st[8], labels[256];
        if (k_statuses[si])
            snprintf(st, sizeof st, "%d", status);
        else
            snprintf(st, sizeof st, "other");
        cm_metrics_labels(labels, sizeof labels, "method", k_methods[rq->method_idx], "route",
                          api_route_labels[rq->label], "status", st, (char *)NULL);
        s = cm_counter("http_requests_total", "HTTP requests by method, route template and status", labels);
        atomic_store_explicit(slot, s, memory_order_release);
    }
    cm_series_inc(s);
    cm_series_observe(g_dur_series[rq->label], seconds);
}

static void metrics_init(void)
{
    api_routes_init();
    for (int i = 0; i < api_route_nlabels && i < MAX_LABELS; i++) {
        char labels[160];
        cm_metrics_labels(labels, sizeof labels, "route", api_route_labels[i], (char *)NULL);
        g_dur_series[i] = cm_histogram("http_request_duration_seconds",
                                       "HTTP request latency by route template", labels);
    }
    /* the intake's first series exist before the first scrape */
    char labels[160];
    cm_metrics_labels(labels, sizeof labels, "method", "POST", "route", api_route_labels[0], "status", "202",
                      (char *)NULL);
    atomic_store(&g_req_series[0][method_index("POST")][status_index(202)],
                 cm_counter("http_requests_total", "HTTP requests by method, route template and status", labels));
    api_intake_metrics_init();
}

/* ---- answers ---- */

void api_reply(api_req *rq, int status)
{
    rq->status = status;
}

void api_error(api_req *rq, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : ((size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    cm_buf_reset(&rq->out);
    cm_buf_puts(&rq->out, "{\"error\":{\"code\":");
    cm_buf_put_json_str(&rq->out, code, strlen(code));
    cm_buf_puts(&rq->out, ",\"message\":");
    cm_buf_put_json_str(&rq->out, msg, len);
    if (status == 503)
        cm_buf_puts(&rq->out, ",\"retryable\":true");
    cm_buf_puts(&rq->out, "}}");
    rq->status = status;
    rq->retry_after = status == 503;
    rq->content_type = NULL;
}

void api_unavailable(api_req *rq, const char *detail)
{
    /* one fault repeats per request: one line per route and second */
    cm_log_limited(CM_WARN, api_route_labels[rq->label], "%s %s: redis unavailable: %s", k_methods[rq->method_idx],
                   api_route_labels[rq->label], detail ? detail : "?");
    api_error(rq, 503, "unavailable", "the event store is unavailable; retry (with the same Idempotency-Key)");
}

void api_redis_fail(api_req *rq, cm_redis_fault f, const char *detail)
{
    if (f == CM_REDIS_PERMANENT) {
        cm_log_limited(CM_ERROR, NULL, "%s %s: redis refused the request for good: %s", k_methods[rq->method_idx],
                       api_route_labels[rq->label], detail ? detail : "?");
        api_error(rq, 500, "internal", "the event store refused this request (stored data is inconsistent); "
                                       "retrying will not help");
        return;
    }
    if (f == CM_REDIS_UNREACHABLE)
        api_redis_mark_down(detail);
    api_unavailable(rq, detail);
}

void api_redis_failed(api_req *rq, const redisReply *r, const char *detail)
{
    char d[256];
    if (r && r->type == REDIS_REPLY_ERROR) {
        snprintf(d, sizeof d, "redis: %.*s", (int)r->len, r->str);
        detail = d;
    }
    api_redis_fail(rq, cm_redis_fault_of(NULL, r), detail);
}

const char *api_query(api_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *api_header(api_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

/* ---- header checks ---- */

static void pre_error(api_req *rq, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void pre_error(api_req *rq, int status, const char *code, const char *fmt, ...)
{
    if (rq->pre_status)
        return;   /* the first problem found is the one answered */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rq->pre_msg, sizeof rq->pre_msg, fmt, ap);
    va_end(ap);
    rq->pre_status = status;
    rq->pre_code = code;
}

/* application/json, any case, optionally followed by ";params". */
static bool content_type_json(const char *ct)
{
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1) != 0)
        return false;
    ct += sizeof want - 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

static void check_admin(api_req *rq)
{
    const char *tok = g_api.admin_token;
    if (!tok || !*tok) {
        pre_error(rq, 403, "admin_disabled", "admin routes are disabled (set CHORUS_ADMIN_TOKEN)");
        return;
    }
    const char *h = api_header(rq, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        pre_error(rq, 401, "unauthorized", "admin routes need Authorization: Bearer <token>");
        return;
    }
    h += 7;
    while (*h == ' ')
        h++;
    /* Hash both sides so the comparison takes the same time whatever the
     * lengths, then compare the digests in constant time. */
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof a, (const unsigned char *)h, strlen(h), NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)tok, strlen(tok), NULL, 0);
    if (sodium_memcmp(a, b, sizeof a) != 0)
        pre_error(rq, 401, "unauthorized", "wrong admin token");
}

static void check_idem_key(api_req *rq)
{
    const char *k = api_header(rq, "Idempotency-Key");
    if (!k)
        return;
    size_t n = strlen(k);
    bool ok = n >= 1 && n <= 128;
    for (size_t i = 0; ok && i < n; i++)
        ok = k[i] >= 0x20 && k[i] <= 0x7e;
    if (!ok) {
        pre_error(rq, 400, "invalid_request", "Idempotency-Key must be 1..128 printable ASCII characters");
        return;
    }
    memcpy(rq->idem_key, k, n + 1);
}

/* Content-Length as announced, or -1 when absent or not a plain number. */
static long long content_length(api_req *rq)
{
    const char *cl = api_header(rq, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl || !*cl)
        return -1;
    long long v = 0;
    for (const char *p = cl; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > (1LL << 50))
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* ---- per-connection deadlines (see the top) ---- */

typedef struct conn_track {
    MHD_socket fd;
    _Atomic int64_t deadline_ms;  /* monotonic; INT64_MAX: none (request in) */
    bool reaped;                  /* shut down once already */
    struct conn_track *prev, *next;
} conn_track;

static struct {
    pthread_mutex_t lock;         /* guards the list */
    conn_track *head;
    atomic_bool stop;
    pthread_t thread;
    bool started;
    cm_series *reaped;            /* http_connections_timed_out_total */
} g_conns = {.lock = PTHREAD_MUTEX_INITIALIZER};

static conn_track *track_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *i = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* Sets conn's deadline to now + the request timeout, or lifts it (off). */
static void track_deadline(struct MHD_Connection *conn, bool on)
{
    conn_track *t = track_of(conn);
    if (t)
        atomic_store(&t->deadline_ms, on ? cm_mono_ms() + g_api.request_timeout_s * 1000 : INT64_MAX);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *i = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn_track *t = cm_xcalloc(1, sizeof *t);
        t->fd = i ? i->connect_fd : MHD_INVALID_SOCKET;
        atomic_store(&t->deadline_ms, cm_mono_ms() + g_api.request_timeout_s * 1000);
        pthread_mutex_lock(&g_conns.lock);
        t->next = g_conns.head;
        if (t->next)
            t->next->prev = t;
        g_conns.head = t;
        pthread_mutex_unlock(&g_conns.lock);
        *socket_context = t;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        conn_track *t = *socket_context;
        pthread_mutex_lock(&g_conns.lock);
        if (t->prev)
            t->prev->next = t->next;
        else
            g_conns.head = t->next;
        if (t->next)
            t->next->prev = t->prev;
        pthread_mutex_unlock(&g_conns.lock);
        free(t);
        *socket_context = NULL;
    }
}

/* The deadline thread: every 100 ms, shuts down the sockets past theirs. */
static void *deadline_run(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_conns.stop)) {
        cm_sleep_ms(100);
        int64_t now = cm_mono_ms();
        int n = 0;
        pthread_mutex_lock(&g_conns.lock);
        for (conn_track *t = g_conns.head; t; t = t->next) {
            if (!t->reaped && t->fd != MHD_INVALID_SOCKET && atomic_load(&t->deadline_ms) <= now) {
                shutdown(t->fd, SHUT_RDWR);
                t->reaped = true;
                n++;
            }
        }
        pthread_mutex_unlock(&g_conns.lock);
        if (n) {
            cm_series_add(g_conns.reaped, n);
            cm_log_limited(CM_INFO, NULL, "closed %d connection(s) whose request was not in within %lld s", n,
                           (long long)g_api.request_timeout_s);
        }
    }
    return NULL;
}

/* ---- the Redis threads (see the top) ---- */

enum { EXEC_NONE, EXEC_QUEUED, EXEC_DONE };

static struct {
    pthread_mutex_t lock;         /* guards the queue and stop */
    pthread_cond_t cond;
    api_req *head, *tail;         /* FIFO through exec_next */
    bool stop;                    /* no new requests; threads leave once the queue is empty */
    pthread_t *threads;
    int n;
} g_exec = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* Suspends rq's connection and queues it for a Redis thread. Returns false
 * (nothing done) when the threads are stopping: the caller runs it itself. */
static bool exec_submit(api_req *rq)
{
    pthread_mutex_lock(&g_exec.lock);
    if (g_exec.stop || !g_exec.n) {
        pthread_mutex_unlock(&g_exec.lock);
        return false;
    }
    MHD_suspend_connection(rq->conn);
    rq->exec = EXEC_QUEUED;
    rq->held = true;
    rq->exec_next = NULL;
    if (g_exec.tail)
        g_exec.tail->exec_next = rq;
    else
        g_exec.head = rq;
    g_exec.tail = rq;
    pthread_cond_signal(&g_exec.cond);
    pthread_mutex_unlock(&g_exec.lock);
    return true;
}

static void *exec_run(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g_exec.lock);
        while (!g_exec.head && !g_exec.stop)
            pthread_cond_wait(&g_exec.cond, &g_exec.lock);
        api_req *rq = g_exec.head;
        if (rq) {
            g_exec.head = rq->exec_next;
            if (!g_exec.head)
                g_exec.tail = NULL;
        }
        pthread_mutex_unlock(&g_exec.lock);
        if (!rq)
            break;   /* stopping, and nothing left */
        struct MHD_Connection *conn = rq->conn;
        if (rq->route->fn(rq) == API_DONE) {
            rq->exec = EXEC_DONE;
            rq->held = false;
            MHD_resume_connection(conn);   /* rq is the HTTP thread's again */
        }
        /* API_SUSPENDED: waiters.c holds the connection and resumes it */
    }
    return NULL;
}

static int exec_start(char *err, size_t errlen)
{
    g_exec.stop = false;
    g_exec.threads = cm_xcalloc((size_t)g_api.threads, sizeof *g_exec.threads);
    for (int i = 0; i < (int)g_api.threads; i++) {
        if (pthread_create(&g_exec.threads[i], NULL, exec_run, NULL) != 0) {
            snprintf(err, errlen, "cannot start the Redis threads");
            return -1;
        }
        pthread_mutex_lock(&g_exec.lock);
        g_exec.n++;
        pthread_mutex_unlock(&g_exec.lock);
    }
    return 0;
}

/* Lets the threads finish what is queued, then joins them. */
static void exec_stop(void)
{
    pthread_mutex_lock(&g_exec.lock);
    g_exec.stop = true;
    pthread_cond_broadcast(&g_exec.cond);
    int n = g_exec.n;
    pthread_mutex_unlock(&g_exec.lock);
    for (int i = 0; i < n; i++)
        pthread_join(g_exec.threads[i], NULL);
    free(g_exec.threads);
    g_exec.threads = NULL;
    g_exec.n = 0;
}

/* ---- request objects ---- */

static api_req *req_new(struct MHD_Connection *conn, const char *url, const char *method)
{
    api_req *rq = cm_xcalloc(1, sizeof *rq);
    rq->t0_ns = cm_mono_ns();
    rq->conn = conn;
    rq->method_idx = method_index(method);
    rq->path = cm_xstrdup(url && *url ? url : "/");
    return rq;
}

static void req_free(api_req *rq)
{
    if (!rq)
        return;
    api_wait_disarm(&rq->w);
    api_job_free(rq->job);
    free(rq->path);
    cm_buf_free(&rq->body);
    cm_buf_free(&rq->out);
    free(rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)toe;
    req_free(*con_cls);
    *con_cls = NULL;
    track_deadline(conn, true);   /* the next request on this connection */
}

/* Routes the request and runs the header checks. */
static void on_headers(api_req *rq, const char *method)
{
    rq->route = api_route_find(rq->path, method, &rq->param, &rq->param_len, &rq->label, rq->allow,
                               sizeof rq->allow);
    if (rq->label >= MAX_LABELS)
        rq->label = api_route_nlabels - 1;
    if (!rq->route) {
        if (rq->allow[0])
            pre_error(rq, 405, "method_not_allowed", "%s is not allowed here; allowed: %s", k_methods[rq->method_idx],
                      rq->allow);
        else
            pre_error(rq, 404, "not_found", "no such route");
        return;
    }
    unsigned f = rq->route->flags;
    if (f & API_F_ADMIN)
        check_admin(rq);
    if (f & API_F_JSON && !content_type_json(api_header(rq, MHD_HTTP_HEADER_CONTENT_TYPE)))
        pre_error(rq, 415, "unsupported_media_type", "Content-Type must be application/json");
    if (f & API_F_IDEM)
        check_idem_key(rq);
}

/* Queues rq's answer. Returns libmicrohttpd's verdict. */
static enum MHD_Result respond(api_req *rq)
{
    if (!rq->status)
        api_error(rq, 500, "internal", "no answer was produced");
    if (!rq->out.len && rq->status != 204 && rq->status != 304)
        cm_buf_puts(&rq->out, "{}");
    size_t len = rq->out.len;
    char *data = cm_buf_steal(&rq->out);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            rq->content_type ? rq->content_type : "application/json");
    if (rq->location[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, rq->location);
    if (rq->status == 405 && rq->allow[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rq->allow);
    if (rq->retry_after)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (rq->replayed)
        MHD_add_response_header(r, "Idempotency-Replayed", "true");
    if (rq->asset) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, rq->asset->etag);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
    }
    enum MHD_Result ret = MHD_queue_response(rq->conn, (unsigned)rq->status, r);
    MHD_destroy_response(r);

    double secs = (double)(cm_mono_ns() - rq->t0_ns) / 1e9;
    count_request(rq, rq->status, secs);
    if (cm_log_enabled(CM_INFO)) {
        char st[8], dur[32];
        snprintf(st, sizeof st, "%d", rq->status);
        snprintf(dur, sizeof dur, "%.3f", secs * 1e3);
        const char *kv[] = {"method", k_methods[rq->method_idx], "route", api_route_labels[rq->label],
                            "status", st, "duration_ms", dur, NULL};
        cm_logx(CM_INFO, rq->checkout_id[0] ? rq->checkout_id : NULL, NULL, kv, "request");
    }
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **con_cls)
{
    (void)cls;
    (void)version;
    api_req *rq = *con_cls;
    if (!rq) {
        rq = req_new(conn, url, method);
        *con_cls = rq;
        on_headers(rq, method);
        /* A body announced too large is refused before it is read
         * (libmicrohttpd closes the connection after this answer); any
         * other answer waits until the request is in, which keeps the
         * connection open for the next request. */
        if (content_length(rq) > API_BODY_MAX) {
            if (!rq->pre_status)
                pre_error(rq, 413, "payload_too_large", "request bodies are limited to %d bytes", API_BODY_MAX);
            api_error(rq, rq->pre_status, rq->pre_code, "%s", rq->pre_msg);
            return respond(rq);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        rq->body_seen += n;
        if (rq->body_seen > API_BODY_MAX) {
            cm_buf_free(&rq->body);
            if (rq->body_seen > API_BODY_MAX + (size_t)API_BODY_DISCARD_MAX)
                return MHD_NO;   /* a client that will not stop: close */
        } else if (!rq->pre_status) {
            cm_buf_put(&rq->body, upload_data, n);
        }
        return MHD_YES;
    }
    /* The request is complete (or the connection was resumed): no deadline
     * while it is handled and answered. */
    track_deadline(conn, false);
    rq->held = false;   /* on this thread the connection is never suspended */
    if (rq->exec == EXEC_DONE) {
        rq->exec = EXEC_NONE;   /* a Redis thread produced the answer */
    } else if (rq->pre_status) {
        api_error(rq, rq->pre_status, rq->pre_code, "%s", rq->pre_msg);
    } else if (rq->body_seen > API_BODY_MAX) {
        api_error(rq, 413, "payload_too_large", "request bodies are limited to %d bytes", API_BODY_MAX);
    } else if (rq->route->flags & API_F_REDIS && !api_redis_reachable() && !rq->job && !rq->waiting) {
        char why[256];
        api_redis_down_reason(why, sizeof why);
        api_unavailable(rq, why);
    } else if (rq->route->flags & API_F_ASYNC && exec_submit(rq)) {
        return MHD_YES;
    } else if (rq->route->fn(rq) == API_SUSPENDED) {
        return MHD_YES;
    }
    return respond(rq);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    cm_log(CM_DEBUG, "libmicrohttpd: %s", msg);
}

struct MHD_Daemon *api_server_start(char *err, size_t errlen)
{
    metrics_init();
    g_conns.reaped = cm_counter("http_connections_timed_out_total",
                                "connections closed because their request was not in within API_REQUEST_TIMEOUT_S",
                                NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)g_api.port, NULL, NULL, on_request, NULL,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)g_api.threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)g_api.conn_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)g_api.max_conns,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)g_api.max_conns_per_ip,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_END);
    if (!d) {
        snprintf(err, errlen, "cannot listen on port %lld (in use? set API_PORT)", (long long)g_api.port);
        return NULL;
    }
    atomic_store(&g_conns.stop, false);
    if (pthread_create(&g_conns.thread, NULL, deadline_run, NULL) != 0) {
        snprintf(err, errlen, "cannot start the connection deadline thread");
        MHD_stop_daemon(d);
        return NULL;
    }
    g_conns.started = true;
    if (exec_start(err, errlen) != 0) {
        api_server_stop(d);
        return NULL;
    }
    return d;
}

void api_server_stop(struct MHD_Daemon *d)
{
    exec_stop();   /* answers what is queued: nothing stays suspended */
    MHD_stop_daemon(d);
    if (g_conns.started) {
        atomic_store(&g_conns.stop, true);
        pthread_join(g_conns.thread, NULL);
        g_conns.started = false;
    }
}
