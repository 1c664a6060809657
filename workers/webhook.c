/* webhook.c - POSTing a notification with libevent's HTTP client.
 *
 * Each call builds a private event_base and connection, runs the loop until
 * the answer (or the timeout), and frees both: the notification worker is
 * synchronous, and a webhook call is rare next to the bus traffic. */
#include "workers/webhook.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

int wk_webhook_parse(const char *url, wk_webhook *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    static const char scheme[] = "http://";
    if (!url || strncasecmp(url, scheme, sizeof scheme - 1) != 0) {
        snprintf(err, errlen, "NOTIFY_WEBHOOK_URL must look like http://host[:port]/path%s",
                 url && !strncasecmp(url, "https://", 8) ? " (https is not supported)" : "");
        return -1;
    }
    const char *p = url + sizeof scheme - 1;
    size_t al = strcspn(p, "/?#");
    if (memchr(p, '@', al)) {
        snprintf(err, errlen, "NOTIFY_WEBHOOK_URL must not carry credentials (no user:password@)");
        return -1;
    }
    size_t hl = strcspn(p, ":/?#");
    if (hl == 0 || hl >= sizeof out->host) {
        snprintf(err, errlen, "NOTIFY_WEBHOOK_URL has no host (or one longer than %zu bytes)", sizeof out->host - 1);
        return -1;
    }
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)p[i]) && p[i] != '.' && p[i] != '-') {
            snprintf(err, errlen, "NOTIFY_WEBHOOK_URL host may only hold letters, digits, '.' and '-'%s",
                     p[i] == '[' ? " (no IPv6 literals)" : "");
            return -1;
        }
    memcpy(out->host, p, hl);
    p += hl;
    out->port = 80;
    if (*p == ':') {
        p++;
        size_t dl = strspn(p, "0123456789");
        long port = 0;
        for (size_t i = 0; i < dl && i < 6; i++)
            port = port * 10 + (p[i] - '0');
        if (dl == 0 || dl > 5 || port < 1 || port > 65535) {
            snprintf(err, errlen, "NOTIFY_WEBHOOK_URL port must be 1..65535");
            return -1;
        }
        out->port = (int)port;
        p += dl;
    }
    if (*p && *p != '/') {
        snprintf(err, errlen, "NOTIFY_WEBHOOK_URL path must start with '/' (got \"%.40s\")", p);
        return -1;
    }
    const char *path = *p ? p : "/";
    size_t pl = strlen(path);
    if (pl >= sizeof out->path) {
        snprintf(err, errlen, "NOTIFY_WEBHOOK_URL path is longer than %zu bytes", sizeof out->path - 1);
        return -1;
    }
    for (size_t i = 0; i < pl; i++)
        if (path[i] <= ' ' || path[i] > '~' || path[i] == '#') {
            snprintf(err, errlen, "NOTIFY_WEBHOOK_URL path holds a space, control, non-ASCII or '#' character");
            return -1;
        }
    memcpy(out->path, path, pl + 1);
    return 0;
}

/* The outcome of one request, filled by the callbacks. */
typedef struct post_call {
    struct event_base *base;
    bool done;
    int code;                        /* HTTP status; 0 when none came */
    bool failed;
    enum evhttp_request_error why;
} post_call;

static void on_error(enum evhttp_request_error e, void *arg)
{
    post_call *pc = arg;
    pc->failed = true;
    pc->why = e;
}

static void on_done(struct evhttp_request *req, void *arg)
{
    post_call *pc = arg;
    pc->done = true;
    pc->code = req ? evhttp_request_get_response_code(req) : 0;
    event_base_loopbreak(pc->base);
}

static const char *error_text(const post_call *pc)
{
    if (!pc->failed)
        return pc->done ? "connection refused or closed before an answer" : "no answer in time";
    switch (pc->why) {
    case EVREQ_HTTP_TIMEOUT: return "timed out";
    case EVREQ_HTTP_EOF: return "connection closed before an answer (or refused)";
    case EVREQ_HTTP_INVALID_HEADER: return "invalid answer headers";
    case EVREQ_HTTP_BUFFER_ERROR: return "connection error";
    case EVREQ_HTTP_REQUEST_CANCEL: return "request cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG: return "answer too long";
    }
    return "request failed";
}

int wk_webhook_post(const wk_webhook *w, const char *body, size_t len, const char *idem_key, int timeout_ms,
                    char *err, size_t errlen)
{
    post_call pc = {0};
    struct evhttp_connection *conn = NULL;
    int rc = -1;
    pc.base = event_base_new();
    if (!pc.base) {
        snprintf(err, errlen, "cannot create an event base");
        return -1;
    }
    conn = evhttp_connection_base_new(pc.base, NULL, w->host, (unsigned short)w->port);
    if (!conn) {
        snprintf(err, errlen, "cannot create a connection to %s:%d", w->host, w->port);
        goto out;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(conn, &tv);
    evhttp_connection_set_retries(conn, 0);

    struct evhttp_request *req = evhttp_request_new(on_done, &pc);
    evhttp_request_set_error_cb(req, on_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char host[300];
    if (w->port == 80)
        snprintf(host, sizeof host, "%s", w->host);
    else
        snprintf(host, sizeof host, "%s:%d", w->host, w->port);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Idempotency-Key", idem_key);
    evhttp_add_header(h, "Connection", "close");
    evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, w->path) != 0) {   /* req is freed */
        snprintf(err, errlen, "cannot send the request to %s:%d", w->host, w->port);
        goto out;
    }
    /* a backstop in case no timeout fires (the connection's own applies first) */
    struct timeval guard = {timeout_ms / 1000 + 1, (timeout_ms % 1000) * 1000};
    event_base_loopexit(pc.base, &guard);
    event_base_dispatch(pc.base);
    if (pc.done && pc.code > 0) {
        rc = pc.code;
    } else {
        snprintf(err, errlen, "POST http://%s:%d%s: %s", w->host, w->port, w->path, error_text(&pc));
    }
out:
    if (conn)
        evhttp_connection_free(conn);
    event_base_free(pc.base);
    return rc;
}
