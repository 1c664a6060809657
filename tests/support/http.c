/* http.c - the tests' blocking HTTP/1.1 client (see http.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tests/support/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD (256 * 1024)
#define MAX_BODY (64 * 1024 * 1024)

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline passes. 1 ready, 0 timeout. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return 1;   /* let the following call report the error */
    }
}

int tf_http_open(tf_http *h, int port, int timeout_ms)
{
    memset(h, 0, sizeof *h);
    h->fd = -1;
    h->port = port;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (!wait_fd(fd, POLLOUT, now_ms() + timeout_ms)) {
            close(fd);
            errno = ETIMEDOUT;
            return -1;
        }
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            close(fd);
            errno = err;
            return -1;
        }
    }
    h->fd = fd;
    return 0;
}

void tf_http_close(tf_http *h)
{
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    free(h->buf);
    h->buf = NULL;
    h->len = h->cap = 0;
}

int tf_http_send_raw(tf_http *h, const void *data, size_t len, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(h->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_fd(h->fd, POLLOUT, deadline)) {
                errno = ETIMEDOUT;
                return -1;
            }
            continue;
        }
        return -1;
    }
    return 0;
}

/* Reads more bytes into h->buf. Returns >0 bytes, 0 at EOF, -1 on error/timeout. */
static ssize_t fill(tf_http *h, long long deadline)
{
    if (h->len + 4096 > h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16384;
        while (cap < h->len + 4096)
            cap *= 2;
        char *nb = realloc(h->buf, cap);
        if (!nb)
            return -1;
        h->buf = nb;
        h->cap = cap;
    }
    for (;;) {
        ssize_t n = recv(h->fd, h->buf + h->len, h->cap - h->len - 1, 0);
        if (n >= 0) {
            h->len += (size_t)n;
            h->buf[h->len] = '\0';
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (!wait_fd(h->fd, POLLIN, deadline)) {
            errno = ETIMEDOUT;
            return -1;
        }
    }
}

static void consume(tf_http *h, size_t n)
{
    memmove(h->buf, h->buf + n, h->len - n);
    h->len -= n;
    if (h->buf)
        h->buf[h->len] = '\0';
}

/* Ensures at least n unread bytes. 0 ok, -1 EOF/error. */
static int need(tf_http *h, size_t n, long long deadline)
{
    while (h->len < n) {
        ssize_t r = fill(h, deadline);
        if (r <= 0) {
            if (r == 0)
                errno = ECONNRESET;
            return -1;
        }
    }
    return 0;
}

static void body_append(tf_http_resp *out, const char *p, size_t n)
{
    char *nb = realloc(out->body, out->body_len + n + 1);
    if (!nb)
        return;
    out->body = nb;
    memcpy(out->body + out->body_len, p, n);
    out->body_len += n;
    out->body[out->body_len] = '\0';
}

/* Reads a chunked body. 0 ok, -1 error. */
static int read_chunked(tf_http *h, tf_http_resp *out, long long deadline)
{
    for (;;) {
        char *eol;
        while (!(eol = h->buf ? strstr(h->buf, "\r\n") : NULL)) {
            if (h->len > 64 || fill(h, deadline) <= 0)
                return -1;
        }
        unsigned long size = strtoul(h->buf, NULL, 16);
        consume(h, (size_t)(eol - h->buf) + 2);
        if (size > MAX_BODY || need(h, size + 2, deadline) != 0)
            return -1;
        body_append(out, h->buf, size);
        consume(h, size + 2);
        if (size == 0)
            return 0;   /* trailers are not used by the servers under test */
    }
}

int tf_http_read(tf_http *h, tf_http_resp *out, bool head, int timeout_ms)
{
    memset(out, 0, sizeof *out);
    long long deadline = now_ms() + timeout_ms;
    char *end;
    while (!(end = h->buf ? strstr(h->buf, "\r\n\r\n") : NULL)) {
        if (h->len > MAX_HEAD)
            return -1;
        ssize_t r = fill(h, deadline);
        if (r <= 0) {
            if (r == 0)
                errno = ECONNRESET;
            out->closed = true;
            return -1;
        }
    }
    size_t hlen = (size_t)(end - h->buf) + 4;
    out->head = strndup(h->buf, hlen);
    consume(h, hlen);
    if (!out->head || sscanf(out->head, "HTTP/%*d.%*d %d", &out->status) != 1)
        return -1;
    char v[64];
    out->closed = tf_http_header(out, "Connection", v, sizeof v) && !strcasecmp(v, "close");
    out->body = calloc(1, 1);
    bool no_body = head || out->status == 204 || out->status == 304 || out->status / 100 == 1;
    if (no_body)
        return 0;
    if (tf_http_header(out, "Transfer-Encoding", v, sizeof v) && strcasestr(v, "chunked"))
        return read_chunked(h, out, deadline);
    if (tf_http_header(out, "Content-Length", v, sizeof v)) {
        unsigned long long n = strtoull(v, NULL, 10);
        if (n > MAX_BODY || need(h, (size_t)n, deadline) != 0)
            return -1;
        body_append(out, h->buf, (size_t)n);
        consume(h, (size_t)n);
        return 0;
    }
    /* no framing: the body runs to the end of the connection */
    for (;;) {
        body_append(out, h->buf ? h->buf : "", h->len);
        consume(h, h->len);
        ssize_t r = fill(h, deadline);
        if (r == 0) {
            out->closed = true;
            return 0;
        }
        if (r < 0)
            return -1;
    }
}

int tf_http_do(tf_http *h, const char *method, const char *path, const char *extra_headers, const char *body,
               size_t body_len, tf_http_resp *out, int timeout_ms)
{
    size_t cap = strlen(method) + strlen(path) + (extra_headers ? strlen(extra_headers) : 0) + 128 + body_len;
    char *req = malloc(cap);
    if (!req) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s", method, path, h->port,
                     extra_headers ? extra_headers : "");
    if (body)
        n += snprintf(req + n, cap - (size_t)n, "Content-Length: %zu\r\n", body_len);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (body) {
        memcpy(req + n, body, body_len);
        n += (int)body_len;
    }
    int rc = tf_http_send_raw(h, req, (size_t)n, timeout_ms);
    free(req);
    if (rc != 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    return tf_http_read(h, out, !strcmp(method, "HEAD"), timeout_ms);
}

int tf_http_request(int port, const char *method, const char *path, const char *extra_headers, const char *body,
                    tf_http_resp *out)
{
    tf_http h;
    if (tf_http_open(&h, port, 10000) != 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    int rc = tf_http_do(&h, method, path, extra_headers, body, body ? strlen(body) : 0, out, 10000);
    tf_http_close(&h);
    return rc;
}

const char *tf_http_header(const tf_http_resp *r, const char *name, char *out, size_t outlen)
{
    if (!r->head)
        return NULL;
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && !strncasecmp(p, name, nl)) {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vl = (size_t)(eol - v);
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            snprintf(out, outlen, "%.*s", (int)vl, v);
            return out;
        }
        p = eol;
    }
    return NULL;
}

void tf_http_resp_free(tf_http_resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}
