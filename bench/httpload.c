/* httpload.c - the load generator of httpload.h.
 *
 * Open-loop bookkeeping needs no queue of requests: request i is due at
 * start + i/rate, so the requests waiting for a connection are exactly the
 * seq range [next_unsent, due) and each one's scheduled time is computed from
 * its seq when it finally goes out. */
#include "bench/httpload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn {
    int fd;
    bool connecting;          /* non-blocking connect in progress */
    bool busy;                /* a request is in flight */
    bool want_out;            /* EPOLLOUT registered */
    bool record;              /* the request in flight counts */
    bool answered;            /* an answer came on this connection: it is a kept-alive one */
    bool resend;              /* the request in flight goes out again once connected */
    int64_t t_ns;             /* latency origin of the request in flight */
    uint64_t seq;             /* seq of the request in flight */
    char *out;                /* request bytes */
    size_t out_len, out_off;
    char *in;                 /* response bytes */
    size_t in_len, in_cap;
} conn;

typedef struct run {
    const hl_config *cfg;
    hl_result *res;
    int ep;
    conn *c;
    int *idle;                /* stack of idle connection indexes */
    int nidle;
    int64_t t_start, t_measure, t_end;
    uint64_t seq;             /* next seq to build */
    uint64_t next_unsent;     /* open loop: first scheduled seq not sent yet */
    double interval_ns;
    int connected;            /* connections ever established */
} run;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- histogram ---- */

static int bucket_of(uint64_t us)
{
    if (us < 128)
        return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - 6;
    int b = 128 + (shift - 1) * 64 + (int)((us >> shift) - 64);
    return b < HL_BUCKETS ? b : HL_BUCKETS - 1;
}

static uint64_t bucket_value(int b)
{
    if (b < 128)
        return (uint64_t)b;
    int shift = (b - 128) / 64 + 1;
    return ((uint64_t)((b - 128) % 64) + 64) << shift;
}

void hl_hist_record(hl_hist *h, uint64_t us)
{
    h->count[bucket_of(us)]++;
    h->total++;
    h->sum_us += (double)us;
    if (us > h->max_us)
        h->max_us = us;
}

double hl_percentile_ms(const hl_hist *h, double q)
{
    if (!h->total)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->total);
    if (want >= h->total)
        return (double)h->max_us / 1000.0;
    uint64_t seen = 0;
    for (int b = 0; b < HL_BUCKETS; b++) {
        seen += h->count[b];
        if (seen > want) {
            uint64_t v = bucket_value(b);
            return (double)(v < h->max_us ? v : h->max_us) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

double hl_mean_ms(const hl_hist *h)
{
    return h->total ? h->sum_us / (double)h->total / 1000.0 : 0;
}

/* ---- connections ---- */

static void set_events(run *r, int i, bool out)
{
    conn *c = &r->c[i];
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)i};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

/* A connection is up: it sends its request to be resent, or waits idle. */
static void conn_write(run *r, int i);
static void conn_ready(run *r, int i)
{
    conn *c = &r->c[i];
    r->connected++;
    set_events(r, i, false);
    if (c->resend) {
        c->resend = false;
        c->out_off = 0;
        conn_write(r, i);
    } else {
        r->idle[r->nidle++] = i;
    }
}

static int conn_open(run *r, int i)
{
    conn *c = &r->c[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->cfg->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->connecting = connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0;
    if (c->connecting && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = true;
    c->in_len = 0;
    c->answered = false;
    if (!c->connecting)
        conn_ready(r, i);
    return 0;
}

/* Drops connection i and opens it again. Its request in flight, if any,
 * is an error, unless it may go again (closed, not timed out) and
 * resend_unanswered holds for it: see hl_config. */
static void conn_reset(run *r, int i, bool closed)
{
    conn *c = &r->c[i];
    bool again = closed && c->busy && r->cfg->resend_unanswered && c->answered && c->in_len == 0;
    if (again)
        r->res->resent++;
    else if (c->busy && c->record)
        r->res->errors++;
    if (!c->busy && !c->connecting) {   /* it was idle: take it off the stack */
        for (int k = 0; k < r->nidle; k++)
            if (r->idle[k] == i) {
                r->idle[k] = r->idle[--r->nidle];
                break;
            }
    }
    if (c->fd >= 0) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->busy = again;   /* a request to resend stays in flight: it counts for busy_count and expire */
    c->resend = again;
    if (conn_open(r, i) != 0 && again) {
        c->busy = c->resend = false;
        if (c->record)
            r->res->errors++;
    }
}

static void conn_write(run *r, int i)
{
    conn *c = &r->c[i];
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                set_events(r, i, true);
            return;
        }
        conn_reset(r, i, true);
        return;
    }
    if (c->want_out)
        set_events(r, i, false);
}

/* Sends request seq on an idle connection, with latency origin t_ns. */
static void send_on(run *r, uint64_t seq, int64_t t_ns)
{
    int i = r->idle[--r->nidle];
    conn *c = &r->c[i];
    c->out_len = r->cfg->build(r->cfg->ud, seq, c->out, r->cfg->max_request);
    c->out_off = 0;
    c->busy = true;
    c->t_ns = t_ns;
    c->seq = seq;
    c->record = t_ns >= r->t_measure && t_ns < r->t_end;
    if (c->record)
        r->res->sent++;
    conn_write(r, i);
}

/* Parses one response at the front of c->in. Returns its total length, 0
 * when incomplete, -1 when unparsable. */
static long parse_response(conn *c, int *status, bool *close_after)
{
    if (c->in_len < 16)
        return 0;
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return c->in_len > 65536 ? -1 : 0;
    size_t hlen = (size_t)(end - c->in) + 4;
    if (memcmp(c->in, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(c->in + 9);
    long clen = -1;
    *close_after = false;
    for (char *p = memchr(c->in, '\n', hlen); p && p < end; p = memchr(p + 1, '\n', (size_t)(end - p))) {
        const char *h = p + 1;
        if (!strncasecmp(h, "Content-Length:", 15))
            clen = atol(h + 15);
        else if (!strncasecmp(h, "Connection:", 11)) {
            const char *v = h + 11, *eol = memchr(v, '\r', (size_t)(end + 2 - v));
            for (; eol && v + 5 <= eol; v++)
                if (!strncasecmp(v, "close", 5))
                    *close_after = true;
        }
    }
    if (clen < 0)
        clen = (*status == 204 || *status == 304) ? 0 : -1;
    if (clen < 0)
        return -1;   /* no chunked support: the servers under test frame by length */
    if (c->in_len < hlen + (size_t)clen)
        return 0;
    return (long)(hlen + (size_t)clen);
}

static void conn_read(run *r, int i)
{
    conn *c = &r->c[i];
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 16384;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in)
                abort();
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if ((size_t)n < c->in_cap - c->in_len)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_reset(r, i, true);   /* EOF or error */
        return;
    }
    int status = 0;
    bool close_after = false;
    long len = parse_response(c, &status, &close_after);
    if (len == 0)
        return;
    if (len < 0 || !c->busy) {
        conn_reset(r, i, false);
        return;
    }
    int64_t t = now_ns();
    if (c->record) {
        int want = r->cfg->expect_status;
        if (want ? status == want : status / 100 == 2) {
            r->res->ok++;
        } else {
            r->res->other_status++;
            r->res->last_other_status = status;
        }
        hl_hist_record(&r->res->lat, (uint64_t)((t - c->t_ns) / 1000));
    }
    if (r->cfg->on_answer) {
        char *body = memmem(c->in, (size_t)len, "\r\n\r\n", 4) + 4;
        hl_answer a = {.seq = c->seq, .status = status, .body = body, .body_len = (size_t)(c->in + len - body),
                       .origin_ns = c->t_ns, .done_ns = t, .measured = c->record};
        r->cfg->on_answer(r->cfg->ud, &a);
    }
    memmove(c->in, c->in + len, c->in_len - (size_t)len);
    c->in_len -= (size_t)len;
    c->busy = false;
    c->answered = true;
    if (close_after) {
        conn_reset(r, i, false);
        return;
    }
    r->idle[r->nidle++] = i;
}

static void on_event(run *r, int i, uint32_t ev)
{
    if (i < 0) {   /* the gate's wake_fd */
        uint64_t v;
        if (read(r->cfg->wake_fd, &v, sizeof v) < 0) {
            /* nothing to drain */
        }
        return;
    }
    conn *c = &r->c[i];
    if (c->fd < 0)
        return;
    if (c->connecting) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) {
            conn_reset(r, i, false);
            return;
        }
        c->connecting = false;
        conn_ready(r, i);
        return;
    }
    if (ev & EPOLLOUT)
        conn_write(r, i);
    if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        conn_read(r, i);
}

/* Fails in-flight requests older than the timeout. */
static void expire(run *r, int64_t now)
{
    int64_t limit = r->cfg->timeout_ms * 1000000LL;
    for (int i = 0; i < r->cfg->conns; i++)
        if (r->c[i].busy && now - r->c[i].t_ns > limit)
            conn_reset(r, i, false);
}

/* Hands due requests to idle connections. */
static void dispatch(run *r, int64_t now)
{
    if (r->cfg->rate <= 0) {
        while (r->nidle > 0 && now < r->t_end && (!r->cfg->gate || r->cfg->gate(r->cfg->ud)))
            send_on(r, r->seq++, now);
        return;
    }
    int64_t until = now < r->t_end ? now : r->t_end;
    uint64_t due = until >= r->t_start ? (uint64_t)((double)(until - r->t_start) / r->interval_ns) + 1 : 0;
    while (r->nidle > 0 && r->next_unsent < due) {
        uint64_t s = r->next_unsent++;
        send_on(r, s, r->t_start + (int64_t)((double)s * r->interval_ns));
    }
}

static int busy_count(const run *r)
{
    int n = 0;
    for (int i = 0; i < r->cfg->conns; i++)
        n += r->c[i].busy;
    return n;
}

int hl_run(const hl_config *cfg_in, hl_result *out, char *err, size_t errlen)
{
    hl_config cfg = *cfg_in;
    if (cfg.timeout_ms <= 0)
        cfg.timeout_ms = 10000;
    if (cfg.max_request == 0)
        cfg.max_request = 16384;
    if (cfg.conns < 1)
        cfg.conns = 1;
    memset(out, 0, sizeof *out);
    run r = {.cfg = &cfg, .res = out};
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    r.c = calloc((size_t)cfg.conns, sizeof *r.c);
    r.idle = calloc((size_t)cfg.conns, sizeof *r.idle);
    if (r.ep < 0 || !r.c || !r.idle) {
        snprintf(err, errlen, "httpload: out of resources");
        free(r.c);
        free(r.idle);
        if (r.ep >= 0)
            close(r.ep);
        return -1;
    }
    for (int i = 0; i < cfg.conns; i++) {
        r.c[i].fd = -1;
        r.c[i].out = malloc(cfg.max_request);
        if (!r.c[i].out)
            abort();
        conn_open(&r, i);
    }
    /* connect everything before the clock starts */
    int64_t deadline = now_ns() + 5000000000LL;
    struct epoll_event evs[256];
    while (r.connected < cfg.conns && now_ns() < deadline) {
        int n = epoll_wait(r.ep, evs, 256, 50);
        for (int k = 0; k < n; k++)
            on_event(&r, (int)evs[k].data.u32, evs[k].events);
    }
    int rc = 0;
    if (r.connected == 0) {
        snprintf(err, errlen, "httpload: cannot connect to 127.0.0.1:%d", cfg.port);
        rc = -1;
        goto out;
    }
    r.t_start = now_ns();
    r.t_measure = r.t_start + cfg.warmup_ms * 1000000LL;
    r.t_end = r.t_measure + cfg.duration_ms * 1000000LL;
    r.interval_ns = cfg.rate > 0 ? 1e9 / cfg.rate : 0;
    out->t_measure_ns = r.t_measure;
    out->t_end_ns = r.t_end;
    if (cfg.wake_fd > 0) {
        struct epoll_event wev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(r.ep, EPOLL_CTL_ADD, cfg.wake_fd, &wev);
    }
    int64_t last_expire = r.t_start;
    for (;;) {
        int64_t now = now_ns();
        dispatch(&r, now);
        if (now >= r.t_end) {
            bool queued = cfg.rate > 0 && r.next_unsent <
                          (uint64_t)((double)(r.t_end - r.t_start) / r.interval_ns) + 1;
            if (!queued && busy_count(&r) == 0)
                break;
            if (now > r.t_end + cfg.timeout_ms * 1000000LL) {
                if (queued)
                    out->unsent = (uint64_t)((double)(r.t_end - r.t_start) / r.interval_ns) + 1 - r.next_unsent;
                for (int i = 0; i < cfg.conns; i++)
                    if (r.c[i].busy && r.c[i].record)
                        out->errors++;
                break;
            }
        }
        if (now - last_expire > 10000000) {
            expire(&r, now);
            last_expire = now;
        }
        /* sleep until IO, or the next scheduled send when one could go out */
        int64_t wait_ns = 10000000;
        if (cfg.rate > 0 && r.nidle > 0 && now < r.t_end) {
            int64_t next = r.t_start + (int64_t)((double)r.next_unsent * r.interval_ns);
            wait_ns = next > now ? next - now : 0;
            if (wait_ns > 10000000)
                wait_ns = 10000000;
        }
        struct timespec ts = {.tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000};
        int n = epoll_pwait2(r.ep, evs, 256, &ts, NULL);
        for (int k = 0; k < n; k++)
            on_event(&r, (int)evs[k].data.u32, evs[k].events);
    }
    out->elapsed_s = (double)cfg.duration_ms / 1000.0;
    out->ok_per_s = out->elapsed_s > 0 ? (double)out->ok / out->elapsed_s : 0;
out:
    for (int i = 0; i < cfg.conns; i++) {
        if (r.c[i].fd >= 0)
            close(r.c[i].fd);
        free(r.c[i].out);
        free(r.c[i].in);
    }
    free(r.c);
    free(r.idle);
    close(r.ep);   /* also forgets wake_fd */
    return rc;
}
